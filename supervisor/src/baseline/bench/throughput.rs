//! Per-item dispatch overhead of the real pool: what an item that does nothing costs, by batch size.
//!
//! Each configuration runs the real binary as a subprocess — `supervisor run --json --quiet --workers 2
//! --batch N` on a generated job of the `noop` task over a range, with no results file — so what is measured is
//! exactly what a user's run pays: batching, IPC, the dispatcher's bookkeeping and the reduction, without the
//! writer. µs per item is the run's own `wall_s` (from the dispatcher's start, workers' start-up included, to
//! the last record; the process's own start is not) divided by its items.
//!
//! A configuration first runs on a guessed number of items; if that run is shorter than
//! [`DispatchPlan::min_wall_s`], the count is scaled up from the measured rate and the short run is discarded.
//! Every kept run of a configuration has the same number of items. The job files live in a private temp folder,
//! removed at the end.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde::Serialize;

use crate::baseline::Error;
use crate::baseline::stats::Stats;

/// Workers of every run.
pub const WORKERS: u32 = 2;

/// Batch sizes measured, `None` for the job's default (`auto`).
pub const BATCHES: [Option<u64>; 4] = [Some(1), Some(16), Some(256), None];

/// Most items a calibrated run may have.
const MAX_ITEMS: u64 = 500_000_000;

/// How to run each configuration.
#[derive(Debug, Clone, Copy)]
pub struct DispatchPlan {
    /// Kept runs per configuration.
    pub repeat: u32,
    /// Items of the first run at batch 1 (the slowest per item); other batch sizes start at 20 times this.
    pub batch_one_items: u64,
    /// Runs shorter than this are discarded and redone with more items (0: keep the first run).
    pub min_wall_s: f64,
}

/// One configuration: an executor at one batch size.
#[derive(Debug, Clone, Serialize)]
pub struct DispatchRow {
    /// `1`, `16`, `256` or `auto`.
    pub batch: String,
    /// Items of each kept run.
    pub items: u64,
    pub us_per_item: Stats,
    pub items_per_s: Stats,
    /// Items per batch the dispatcher actually sent, on average (batches are cut short at the end of the input,
    /// and `auto` sizes them from measured per-item time).
    pub items_per_batch: f64,
}

/// One `supervisor run`, from its JSON summary.
struct Run {
    items: u64,
    wall_s: f64,
    batches: u64,
}

/// Measures every batch size under `executor` (`process` or `thread`).
pub fn measure(exe: &Path, scratch: &Path, executor: &str, plan: DispatchPlan) -> Result<Vec<DispatchRow>, Error> {
    BATCHES
        .iter()
        .map(|&batch| measure_one(exe, scratch, executor, batch, plan))
        .collect()
}

fn measure_one(
    exe: &Path,
    scratch: &Path,
    executor: &str,
    batch: Option<u64>,
    plan: DispatchPlan,
) -> Result<DispatchRow, Error> {
    let mut items = match batch {
        Some(1) => plan.batch_one_items,
        _ => plan.batch_one_items * 20,
    };
    let mut runs = Vec::new();
    while runs.len() < plan.repeat as usize {
        let run = run_once(exe, scratch, executor, batch, items)?;
        if runs.is_empty() && run.wall_s < plan.min_wall_s && items < MAX_ITEMS {
            // Too short to trust: scale up from the rate it showed, with a margin, at least doubling.
            let per_item = run.wall_s.max(1e-6) / items as f64;
            let wanted = (plan.min_wall_s * 1.2 / per_item).ceil() as u64;
            items = wanted.clamp(items.saturating_mul(2), MAX_ITEMS);
            continue;
        }
        runs.push(run);
    }
    let us_per_item = Stats::of(runs.iter().map(|run| run.wall_s * 1e6 / run.items as f64).collect());
    let batches: u64 = runs.iter().map(|run| run.batches).sum();
    let all_items: u64 = runs.iter().map(|run| run.items).sum();
    Ok(DispatchRow {
        batch: batch.map_or("auto".to_string(), |n| n.to_string()),
        items,
        items_per_s: us_per_item.map(|us| 1e6 / us),
        us_per_item,
        items_per_batch: all_items as f64 / batches.max(1) as f64,
    })
}

fn run_once(exe: &Path, scratch: &Path, executor: &str, batch: Option<u64>, items: u64) -> Result<Run, Error> {
    let fail = |reason: String| Error::Bench {
        measurement: "dispatch",
        reason,
    };
    let job = write_job(scratch, items)?;
    let mut command = Command::new(exe);
    command
        .current_dir(scratch)
        .args(["run", "--json", "--quiet", "--workers", &WORKERS.to_string()])
        .args(["--executor", executor])
        .arg(&job);
    if executor == "process" {
        command.args(["--start", "spawn"]);
    }
    if let Some(batch) = batch {
        command.args(["--batch", &batch.to_string()]);
    }
    let output = command
        .stdin(Stdio::null())
        .output()
        .map_err(|error| fail(format!("cannot start {}: {error}", exe.display())))?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        return Err(fail(format!(
            "`supervisor run` on {items} noop items ({executor}, batch {batch:?}) ended with {}: {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        )));
    }
    let summary: serde_json::Value = serde_json::from_str(&stdout)
        .map_err(|error| fail(format!("`supervisor run` printed no JSON summary ({error}): {stdout}")))?;
    let number = |key: &str| {
        summary[key]
            .as_f64()
            .ok_or_else(|| fail(format!("the run's summary has no `{key}`: {stdout}")))
    };
    let (ok, wall_s, batches) = (number("ok")?, number("wall_s")?, number("batches")?);
    if ok as u64 != items {
        return Err(fail(format!("{ok} of {items} noop items ended ok: {stdout}")));
    }
    Ok(Run {
        items,
        wall_s,
        batches: batches as u64,
    })
}

/// Writes the job file for `items` noop items; returns its path.
fn write_job(scratch: &Path, items: u64) -> Result<PathBuf, Error> {
    let path = scratch.join("noop.toml");
    let text = format!(
        "# Written by `supervisor bench`: {items} items that do nothing, no results file.\n\
         name = \"bench-noop\"\n[input]\nrange = {{ start = 0, end = {items} }}\n[task]\nbuiltin = \"noop\"\n"
    );
    std::fs::write(&path, text).map_err(|source| Error::File {
        action: "write the job file",
        path: path.clone(),
        source,
    })?;
    Ok(path)
}
