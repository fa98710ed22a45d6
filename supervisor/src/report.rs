//! What the user sees: progress while the job runs (a bar on a terminal, plain lines otherwise, on stderr) and
//! the summary at the end (human text or one JSON object, on stdout).

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::Serialize;
use shared::item::Value;

use crate::dispatch::{FetchStats, RunOutcome, StopReason, WorkerStats};
use crate::results::Failure;

/// Interval between plain progress lines when stderr is not a terminal.
const LINE_INTERVAL: Duration = Duration::from_secs(2);

#[derive(Debug)]
pub struct Progress {
    mode: Mode,
    /// Items of the run; `None` for a stream until it ends (progress is then a count, with no ETA).
    total: Option<u64>,
    /// Items an earlier run recorded (`--resume`): done, but not part of this run's rate.
    resumed: u64,
    started: Instant,
    last_line: Instant,
    /// Items whose fetch has ended (a `urls` input): the first stage, shown beside the processed count.
    fetched: Option<u64>,
}

#[derive(Debug)]
enum Mode {
    Bar(ProgressBar),
    Lines,
    Quiet,
}

impl Progress {
    /// A bar when stderr is a terminal (a spinner with a count while the total is unknown), plain lines
    /// otherwise, nothing when `quiet`. `resumed` items were recorded by an earlier run: they count as done but
    /// not in the rate.
    pub fn new(total: Option<u64>, resumed: u64, quiet: bool) -> Progress {
        let mode = if quiet {
            Mode::Quiet
        } else if std::io::stderr().is_terminal() {
            let bar = ProgressBar::with_draw_target(total, ProgressDrawTarget::stderr_with_hz(8));
            bar.set_style(bar_style(total.is_some()));
            bar.set_position(resumed);
            bar.reset_eta();
            Mode::Bar(bar)
        } else {
            Mode::Lines
        };
        let now = Instant::now();
        Progress {
            mode,
            total,
            resumed,
            started: now,
            last_line: now,
            fetched: None,
        }
    }

    /// The input ended: the count becomes a bar with a total.
    pub fn set_total(&mut self, total: u64) {
        if self.total.is_some() {
            return;
        }
        self.total = Some(total);
        if let Mode::Bar(bar) = &self.mode {
            bar.set_length(total);
            bar.set_style(bar_style(true));
        }
    }

    /// Sets how many items of a `urls` input have been fetched (or failed to, or were recorded by an earlier
    /// run), shown from the next update.
    pub fn set_fetched(&mut self, fetched: u64) {
        self.fetched = Some(fetched);
    }

    pub fn update(&mut self, done: u64, failed: u64) {
        match &self.mode {
            Mode::Bar(bar) => {
                bar.set_position(done);
                let fetched = self.fetched.map(|n| format!("fetched {n}/{}", of(self.total)));
                let failed = (failed > 0).then(|| format!("{failed} failed"));
                let message: Vec<String> = fetched.into_iter().chain(failed).collect();
                if !message.is_empty() {
                    bar.set_message(message.join(", "));
                }
            }
            Mode::Lines if self.last_line.elapsed() >= LINE_INTERVAL => {
                self.last_line = Instant::now();
                let rate = done.saturating_sub(self.resumed) as f64 / self.started.elapsed().as_secs_f64().max(1e-9);
                let fetched = self
                    .fetched
                    .map_or(String::new(), |n| format!("fetched {n}/{}, ", of(self.total)));
                let done = match self.total {
                    Some(0) => format!("{done}/0 items (100%)"),
                    Some(total) => format!("{done}/{total} items ({:.0}%)", done as f64 * 100.0 / total as f64),
                    None => format!("{done} items"),
                };
                eprintln!("progress: {fetched}{done}, {failed} failed, {rate:.0} items/s");
            }
            Mode::Lines | Mode::Quiet => {}
        }
    }

    /// A line that must not be garbled by the bar.
    pub fn message(&self, text: &str) {
        match &self.mode {
            Mode::Bar(bar) => bar.println(text),
            Mode::Lines | Mode::Quiet => eprintln!("{text}"),
        }
    }

    pub fn finish(&mut self, done: u64, failed: u64) {
        if let Mode::Bar(bar) = &self.mode {
            bar.set_position(done);
            let _ = failed;
            bar.finish_and_clear();
        }
    }
}

/// The bar's look: with a total, a bar and an ETA; without (a stream), a spinner and a count.
fn bar_style(with_total: bool) -> ProgressStyle {
    let template = if with_total {
        "{spinner} [{elapsed_precise}] {wide_bar} {pos}/{len} items ({per_sec}, eta {eta}) {msg}"
    } else {
        "{spinner} [{elapsed_precise}] {pos} items ({per_sec}) {msg}"
    };
    ProgressStyle::with_template(template).unwrap_or_else(|_| ProgressStyle::default_bar())
}

/// A total as progress shows it: `?` while unknown.
fn of(total: Option<u64>) -> String {
    total.map_or("?".into(), |total| total.to_string())
}

impl crate::dispatch::Reporter for Progress {
    fn total(&mut self, total: u64) {
        self.set_total(total);
    }

    fn progress(&mut self, done: u64, failed: u64) {
        self.update(done, failed);
    }

    fn fetched(&mut self, fetched: u64) {
        self.set_fetched(fetched);
    }

    fn message(&mut self, text: &str) {
        Progress::message(self, text);
    }

    fn finish(&mut self, done: u64, failed: u64) {
        Progress::finish(self, done, failed);
    }
}

/// The summary, as printed by `--json`.
#[derive(Debug, Serialize)]
pub struct Summary {
    pub job: String,
    pub items: u64,
    pub ok: u64,
    pub failed: u64,
    /// Items without a record because the run was stopped.
    pub not_run: u64,
    pub workers: usize,
    pub workers_started: u64,
    /// Distinct worker processes that returned results.
    pub worker_pids: Vec<u32>,
    pub wall_s: f64,
    pub items_per_s: f64,
    pub first_result_s: Option<f64>,
    /// Encoded bytes of every message after the handshake, both directions.
    pub ipc_bytes: u64,
    pub ipc_messages: u64,
    pub batches: u64,
    pub reduce: String,
    #[serde(serialize_with = "optional_value")]
    pub reduced: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reduce_error: Option<String>,
    pub results: Option<PathBuf>,
    /// The journal, when it was kept (the run was stopped, or `--keep-journal`).
    pub journal: Option<PathBuf>,
    /// Items recorded by an earlier run and skipped (`--resume`).
    pub resumed: u64,
    /// CPU time (user + system) of all workers.
    pub worker_cpu_s: f64,
    /// Largest peak RSS of any one worker.
    pub worker_max_rss_bytes: u64,
    /// Per worker process: pid, items answered, CPU seconds, peak RSS.
    pub worker_stats: Vec<WorkerStats>,
    /// Runs of items beyond their first (`[task] retries`).
    pub retries: u64,
    /// The signal that stopped the run, if one did.
    pub stopped_by: Option<&'static str>,
    /// Why the run stopped early, in words, if it did.
    pub stopped: Option<String>,
    /// The first failures (at most 20).
    pub failures: Vec<FailedItem>,
    /// The fetch stage of a `urls` input.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fetch: Option<FetchStats>,
    /// The shard this run was (absent when not sharded).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shard: Option<ShardSummary>,
    /// Why the run has this many workers (`--workers`, `[workers] count`, or the CPUs it may use).
    pub workers_from: String,
}

/// A sharded run's shard, for the summary.
#[derive(Debug, Clone, Serialize)]
pub struct ShardSummary {
    pub index: u64,
    pub count: u64,
    /// Its block of item indices, `first..end`, of the job's `job_items`.
    pub first: u64,
    pub end: u64,
    pub job_items: u64,
    /// Where the shard came from (`--shard 3/16`, `SLURM_ARRAY_TASK_ID=3, …`).
    pub from: String,
}

impl std::fmt::Display for ShardSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "shard {}/{}: items {}..{} of {} (from {})",
            self.index, self.count, self.first, self.end, self.job_items, self.from
        )
    }
}

#[derive(Debug, Serialize)]
pub struct FailedItem {
    pub item: u64,
    #[serde(flatten)]
    pub failure: Failure,
}

fn optional_value<S: serde::Serializer>(value: &Option<Value>, serializer: S) -> Result<S::Ok, S::Error> {
    match value {
        Some(value) => value.json().serialize(serializer),
        None => serializer.serialize_none(),
    }
}

impl Summary {
    pub fn new(job: String, results: Option<PathBuf>, outcome: RunOutcome) -> Summary {
        let wall_s = outcome.wall.as_secs_f64();
        let done = outcome.ok + outcome.failed;
        let done_now = done - outcome.resumed;
        Summary {
            job,
            items: outcome.items,
            ok: outcome.ok,
            failed: outcome.failed,
            not_run: outcome.items - done,
            workers: outcome.workers,
            workers_started: outcome.workers_started,
            worker_pids: outcome.worker_pids,
            wall_s,
            items_per_s: done_now as f64 / wall_s.max(1e-9),
            first_result_s: outcome.first_result.map(|d| d.as_secs_f64()),
            ipc_bytes: outcome.ipc_bytes,
            ipc_messages: outcome.ipc_messages,
            batches: outcome.batches,
            reduce: outcome.reducer.kind().to_string(),
            reduced: outcome.reducer.value(),
            reduce_error: outcome.reducer.problem.clone(),
            results,
            journal: None,
            resumed: outcome.resumed,
            worker_cpu_s: outcome.worker_stats.iter().fold(0.0, |total, w| total + w.cpu_s),
            worker_max_rss_bytes: outcome.worker_stats.iter().map(|w| w.max_rss_bytes).max().unwrap_or(0),
            worker_stats: outcome.worker_stats,
            retries: outcome.retries,
            stopped_by: match outcome.stopped {
                Some(StopReason::Signal(signal)) => Some(signal.name()),
                _ => None,
            },
            stopped: outcome.stopped.map(|reason| reason.to_string()),
            failures: outcome
                .failures
                .into_iter()
                .map(|(item, failure)| FailedItem { item, failure })
                .collect(),
            shard: None,
            workers_from: String::new(),
            fetch: outcome.fetch,
        }
    }

    pub fn print_json(&self, out: &mut impl Write) -> std::io::Result<()> {
        serde_json::to_writer(&mut *out, self)?;
        writeln!(out)
    }

    pub fn print_human(&self, out: &mut impl Write) -> std::io::Result<()> {
        writeln!(
            out,
            "{}: {} items, {} ok, {} failed{} in {:.2}s ({:.0} items/s) on {} worker{}",
            self.job,
            self.items,
            self.ok,
            self.failed,
            if self.not_run > 0 {
                format!(", {} not run", self.not_run)
            } else {
                String::new()
            },
            self.wall_s,
            self.items_per_s,
            self.workers,
            if self.workers == 1 { "" } else { "s" },
        )?;
        if let Some(shard) = &self.shard {
            writeln!(out, "{shard}")?;
        }
        if let Some(reason) = &self.stopped {
            writeln!(out, "{reason}: {} items were not run", self.not_run)?;
        }
        if self.retries > 0 {
            writeln!(out, "retries: {}", self.retries)?;
        }
        write_reduced(out, &self.reduce, self.reduced.as_ref(), self.reduce_error.as_deref())?;
        if self.resumed > 0 {
            writeln!(out, "resumed: {} items were recorded by an earlier run", self.resumed)?;
        }
        if let Some(path) = &self.results {
            writeln!(out, "results: {}", path.display())?;
        }
        if let Some(path) = &self.journal {
            let hint = match (self.not_run, self.failed) {
                (1.., _) => " (run again with --resume to finish)".to_string(),
                (0, 1..) => format!(
                    " (run again with --retry-failed to retry the {} failed items)",
                    self.failed
                ),
                _ => String::new(),
            };
            writeln!(out, "journal: kept at {}{hint}", path.display())?;
        }
        writeln!(
            out,
            "ipc: {} in {} messages ({} batches); workers: {} started, {:.2}s CPU, peak RSS {}",
            human_bytes(self.ipc_bytes),
            self.ipc_messages,
            self.batches,
            self.workers_started,
            self.worker_cpu_s,
            human_bytes(self.worker_max_rss_bytes),
        )?;
        if let Some(fetch) = &self.fetch {
            writeln!(
                out,
                "fetch: {} fetched ({}), {} failed{}, {} requests; in flight at most {} of {}",
                fetch.fetched,
                human_bytes(fetch.bytes),
                fetch.failed,
                match fetch.earlier {
                    0 => String::new(),
                    earlier => format!(" this run ({earlier} recorded by an earlier run)"),
                },
                fetch.requests,
                human_bytes(fetch.peak_in_flight_bytes),
                human_bytes(fetch.max_in_flight_bytes),
            )?;
        }
        if !self.failures.is_empty() {
            writeln!(
                out,
                "failed items{}:",
                if self.failed > self.failures.len() as u64 {
                    " (first 20)"
                } else {
                    ""
                }
            )?;
            for failed in &self.failures {
                let f = &failed.failure;
                let detail = f
                    .signal
                    .clone()
                    .or(f.code.map(|c| match f.kind {
                        crate::results::FailureKind::Fetch => format!("HTTP {c}"),
                        _ => format!("code {c}"),
                    }))
                    .map_or(String::new(), |d| format!(" {d}"));
                writeln!(out, "  item {}: {}{detail}: {}", failed.item, f.kind, f.message)?;
            }
        }
        Ok(())
    }
}

/// The `reduced (KIND): VALUE` line of a summary (of a run, or of `merge`): none when nothing was reduced, the
/// problem when the reduction failed.
pub fn write_reduced(
    out: &mut impl Write,
    reduce: &str,
    reduced: Option<&Value>,
    problem: Option<&str>,
) -> std::io::Result<()> {
    match (reduced, problem) {
        (_, Some(problem)) => writeln!(out, "reduced ({reduce}): none, {problem}"),
        (Some(value), None) => {
            let text = serde_json::to_string(&value.json()).unwrap_or_default();
            writeln!(out, "reduced ({reduce}): {text}")
        }
        (None, None) => Ok(()),
    }
}

/// `1.5 MiB`, `312 B`.
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::human_bytes;

    #[test]
    fn bytes_are_human() {
        assert_eq!(human_bytes(312), "312 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(5 << 30), "5.0 GiB");
    }
}
