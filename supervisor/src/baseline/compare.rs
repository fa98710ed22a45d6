//! `supervisor compare`: the same job under each executor, measured side by side.
//!
//! Each executor runs the job as a separate `supervisor run` process (so start-up counts, and so a crash in
//! the `thread` executor's isolation check takes down only that run). While it runs, a sampler reads the
//! memory of its process tree from /proc (RSS, and PSS, which counts shared mappings such as the input once);
//! its CPU time comes from `wait4` (which includes the workers it reaped). Every executor's results must be
//! identical, or the comparison fails. Each run prints one progress line on stderr as it ends (not with `--quiet`);
//! the conclusion is [`verdict()`]'s, from the numbers alone.

mod chart;
pub mod verdict;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;
use shared::exit;

use self::verdict::{Finding, verdict};
use super::Error;
use super::scratch::Scratch;
use super::stats::Stats;
use crate::cli::CompareArgs;
use crate::report::human_bytes;
use sys::process::{ExitStatus, Pid, signal_name, wait4};

/// The executors compared, with the `run` flags that select them.
const EXECUTORS: [(&str, &[&str]); 4] = [
    ("process", &["--executor", "process", "--start", "spawn"]),
    (
        "process/forkserver",
        &["--executor", "process", "--start", "forkserver"],
    ),
    ("thread", &["--executor", "thread"]),
    ("serial", &["--executor", "serial"]),
];

/// Interval between memory samples of a running job.
const SAMPLE_EVERY: Duration = Duration::from_millis(10);

/// One run of the job under one executor.
#[derive(Debug, Clone, Serialize)]
pub struct Sample {
    pub wall_s: f64,
    pub cpu_s: f64,
    pub peak_rss_bytes: u64,
    pub peak_pss_bytes: u64,
    /// From starting the process to the first record.
    pub first_result_s: Option<f64>,
}

/// All runs of one executor, summarized.
#[derive(Debug, Clone, Serialize)]
pub struct ExecutorReport {
    pub executor: String,
    /// Why this executor could not run the job (e.g. it sets a timeout, which needs processes).
    pub unavailable: Option<String>,
    pub samples: Vec<Sample>,
    pub wall_median_s: f64,
    pub wall_min_s: f64,
    pub wall_max_s: f64,
    pub cpu_median_s: f64,
    pub speedup_vs_serial: Option<f64>,
    /// Extra CPU per item compared with serial, in microseconds.
    pub overhead_us_per_item: Option<f64>,
    pub peak_rss_bytes: u64,
    pub peak_pss_bytes: u64,
    pub first_result_s: Option<f64>,
    /// Measured with `--isolation-check`: whether one crashing item took the whole job down.
    pub crash_takes_job_down: Option<bool>,
    pub isolation_detail: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct Comparison {
    pub job: PathBuf,
    pub items: u64,
    pub repeat: u32,
    pub executors: Vec<ExecutorReport>,
    /// Every executor that ran produced the same records (item, status, value, failure kind).
    pub identical: bool,
    /// Which conclusion the numbers support; `verdict` says it in words.
    pub finding: Finding,
    pub verdict: String,
}

pub fn run(args: &CompareArgs) -> Result<i32, Error> {
    let spec = crate::run::load(&args.job, None)?;
    let exe = super::scratch::this_exe()?;
    let scratch = Scratch::new("compare")?;
    // One line per run, as it ends: a comparison of slow jobs takes minutes, and says where it is.
    let progress = |line: String| {
        if !args.quiet {
            eprintln!("compare: {line}");
        }
    };
    let mut reports = Vec::new();
    let mut first_results: Vec<(String, PathBuf)> = Vec::new();
    let mut items = 0;
    for (name, flags) in EXECUTORS {
        let mut samples = Vec::new();
        let mut unavailable = None;
        for round in 0..args.repeat {
            let results = scratch.path.join(format!("{}-{round}.jsonl", name.replace('/', "-")));
            let mut command = Command::new(&exe);
            command
                .args(["run", "--quiet", "--json", "--force"])
                .arg(&spec.path)
                .arg("--results")
                .arg(&results);
            command.args(flags);
            if let Some(workers) = args.workers {
                command.arg("--workers").arg(workers.to_string());
            }
            match measure(command)? {
                Measured::Ran { sample, summary } => {
                    items = summary["items"].as_u64().unwrap_or(items);
                    progress(format!(
                        "{name} run {}/{}: {:.3}s wall, {:.2}s cpu",
                        round + 1,
                        args.repeat,
                        sample.wall_s,
                        sample.cpu_s
                    ));
                    samples.push(sample);
                    if round == 0 {
                        first_results.push((name.to_string(), results));
                    }
                }
                Measured::Refused { stderr } => {
                    let why = stderr.trim().trim_start_matches("error: ").to_string();
                    progress(format!("{name} cannot run this job: {why}"));
                    unavailable = Some(why);
                    break;
                }
                Measured::Died { what, stderr } => {
                    return Err(Error::Compare {
                        reason: format!("the {name} run {what}: {}", stderr.trim()),
                    });
                }
            }
        }
        reports.push(summarize(name, unavailable, samples));
    }
    let identical = identical_results(&first_results)?;
    if args.isolation_check {
        for report in reports.iter_mut().filter(|r| r.unavailable.is_none()) {
            let flags = EXECUTORS
                .iter()
                .find(|(name, _)| *name == report.executor)
                .map_or(&[][..], |(_, f)| f);
            let (down, detail) = isolation_check(&exe, &scratch.path, flags)?;
            let answer = if down { "yes" } else { "no" };
            progress(format!(
                "{} isolation check: crash takes the job down: {answer}: {detail}",
                report.executor
            ));
            report.crash_takes_job_down = Some(down);
            report.isolation_detail = Some(detail);
        }
    }
    derive_relative(&mut reports, items);
    let verdict = verdict(&reports, items);
    let comparison = Comparison {
        job: spec.path.clone(),
        items,
        repeat: args.repeat,
        finding: verdict.finding,
        verdict: verdict.text,
        executors: reports,
        identical: identical.is_ok(),
    };
    if let Some(path) = &args.svg {
        chart::draw(path, &comparison)?;
    }
    if args.json {
        println!("{}", serde_json::to_string(&comparison).unwrap_or_default());
    } else {
        print_table(&comparison, identical.as_ref().err());
        if let Some(path) = &args.svg {
            println!("chart: {}", path.display());
        }
    }
    match identical {
        Ok(()) => Ok(exit::OK),
        Err(difference) => {
            eprintln!("error: the executors disagree: {difference}");
            Ok(exit::ITEMS_FAILED)
        }
    }
}

enum Measured {
    Ran {
        sample: Sample,
        summary: serde_json::Value,
    },
    /// Exit 2: this executor cannot run this job.
    Refused {
        stderr: String,
    },
    Died {
        what: String,
        stderr: String,
    },
}

/// Runs one `supervisor run` process to its end, sampling its memory.
fn measure(mut command: Command) -> Result<Measured, Error> {
    let started = Instant::now();
    let child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| Error::Start { what: "a run", source })?;
    let pid = child.id() as i32;
    let done = Arc::new(AtomicBool::new(false));
    let sampler = {
        let done = Arc::clone(&done);
        std::thread::spawn(move || {
            let (mut peak_rss, mut peak_pss) = (0, 0);
            while !done.load(Ordering::Relaxed) {
                let (rss, pss) = tree_memory(pid);
                peak_rss = peak_rss.max(rss);
                peak_pss = peak_pss.max(pss);
                std::thread::sleep(SAMPLE_EVERY);
            }
            (peak_rss, peak_pss)
        })
    };
    // Read the pipes before reaping, so a chatty run cannot block on a full pipe.
    let (stdout, stderr) = read_outputs(child.stdout, child.stderr);
    let info = wait4(Pid::from_raw(pid)).map_err(|error| Error::Compare {
        reason: format!("cannot wait for a run: {error}"),
    })?;
    let wall = started.elapsed();
    done.store(true, Ordering::Relaxed);
    let (peak_rss, peak_pss) = sampler.join().unwrap_or((0, 0));
    match info.status {
        ExitStatus::Code(0 | 1) => {}
        ExitStatus::Code(2) => return Ok(Measured::Refused { stderr }),
        ExitStatus::Code(code) => {
            return Ok(Measured::Died {
                what: format!("exited with code {code}"),
                stderr,
            });
        }
        ExitStatus::Signal(signal) => {
            return Ok(Measured::Died {
                what: format!("was killed by {}", signal_name(signal)),
                stderr,
            });
        }
    }
    let summary: serde_json::Value = serde_json::from_str(&stdout).map_err(|error| Error::Compare {
        reason: format!("a run printed no JSON summary ({error}): {stdout}"),
    })?;
    let internal_wall = summary["wall_s"].as_f64().unwrap_or(0.0);
    let startup = (wall.as_secs_f64() - internal_wall).max(0.0);
    let sample = Sample {
        wall_s: wall.as_secs_f64(),
        cpu_s: info.cpu.as_secs_f64(),
        // A run shorter than a sampling interval still has the peak its own rusage saw.
        peak_rss_bytes: peak_rss.max(info.max_rss),
        peak_pss_bytes: peak_pss,
        first_result_s: summary["first_result_s"].as_f64().map(|first| first + startup),
    };
    Ok(Measured::Ran { sample, summary })
}

fn read_outputs(
    stdout: Option<std::process::ChildStdout>,
    stderr: Option<std::process::ChildStderr>,
) -> (String, String) {
    use std::io::Read;
    let errors = std::thread::spawn(move || {
        let mut text = String::new();
        if let Some(mut stderr) = stderr {
            let _ = stderr.read_to_string(&mut text);
        }
        text
    });
    let mut out = String::new();
    if let Some(mut stdout) = stdout {
        let _ = stdout.read_to_string(&mut out);
    }
    (out, errors.join().unwrap_or_default())
}

/// RSS and PSS of `pid` and all its descendants, in bytes.
fn tree_memory(pid: i32) -> (u64, u64) {
    let mut pending = vec![pid];
    let (mut rss, mut pss) = (0, 0);
    while let Some(pid) = pending.pop() {
        if let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")) {
            rss += kib_field(&text, "Rss:");
            pss += kib_field(&text, "Pss:");
        }
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
            continue;
        };
        for task in tasks.flatten() {
            if let Ok(children) = std::fs::read_to_string(task.path().join("children")) {
                pending.extend(
                    children
                        .split_whitespace()
                        .filter_map(|child| child.parse::<i32>().ok()),
                );
            }
        }
    }
    (rss, pss)
}

fn kib_field(text: &str, field: &str) -> u64 {
    text.lines()
        .find_map(|line| line.strip_prefix(field))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|kib| kib.parse::<u64>().ok())
        .map_or(0, |kib| kib * 1024)
}

fn summarize(name: &str, unavailable: Option<String>, samples: Vec<Sample>) -> ExecutorReport {
    let wall = Stats::of(samples.iter().map(|s| s.wall_s).collect());
    let cpu = Stats::of(samples.iter().map(|s| s.cpu_s).collect());
    let firsts: Vec<f64> = samples.iter().filter_map(|s| s.first_result_s).collect();
    let first_result_s = (!firsts.is_empty()).then(|| Stats::of(firsts).median);
    ExecutorReport {
        executor: name.to_string(),
        unavailable,
        wall_median_s: wall.median,
        wall_min_s: wall.min,
        wall_max_s: wall.max,
        cpu_median_s: cpu.median,
        speedup_vs_serial: None,
        overhead_us_per_item: None,
        peak_rss_bytes: samples.iter().map(|s| s.peak_rss_bytes).max().unwrap_or(0),
        peak_pss_bytes: samples.iter().map(|s| s.peak_pss_bytes).max().unwrap_or(0),
        first_result_s,
        crash_takes_job_down: None,
        isolation_detail: None,
        samples,
    }
}

/// Fills in the columns relative to the serial run.
fn derive_relative(reports: &mut [ExecutorReport], items: u64) {
    let Some(serial) = reports
        .iter()
        .find(|r| r.executor == "serial" && r.unavailable.is_none())
        .cloned()
    else {
        return;
    };
    for report in reports.iter_mut().filter(|r| r.unavailable.is_none()) {
        if report.wall_median_s > 0.0 {
            report.speedup_vs_serial = Some(serial.wall_median_s / report.wall_median_s);
        }
        if items > 0 {
            report.overhead_us_per_item = Some((report.cpu_median_s - serial.cpu_median_s) * 1e6 / items as f64);
        }
    }
}

/// The records that must agree between executors: item, status, value, and the failure's kind/signal/code.
fn comparable_records(path: &Path) -> Result<BTreeMap<u64, String>, Error> {
    let text = std::fs::read_to_string(path).map_err(|source| Error::File {
        action: "read the results",
        path: path.to_path_buf(),
        source,
    })?;
    let mut records = BTreeMap::new();
    for line in text.lines() {
        let record: serde_json::Value = serde_json::from_str(line).map_err(|error| Error::Compare {
            reason: format!("{} has a bad line ({error})", path.display()),
        })?;
        let item = record["item"].as_u64().unwrap_or(u64::MAX);
        let error = &record["error"];
        let key = serde_json::json!([
            record["status"],
            record["value"],
            error["kind"],
            error["signal"],
            error["code"]
        ]);
        records.insert(item, key.to_string());
    }
    Ok(records)
}

/// `Ok` when every executor's results are the same; otherwise the first difference, in words.
fn identical_results(runs: &[(String, PathBuf)]) -> Result<Result<(), String>, Error> {
    let Some((first_name, first_path)) = runs.first() else {
        return Ok(Ok(()));
    };
    let reference = comparable_records(first_path)?;
    for (name, path) in &runs[1..] {
        let other = comparable_records(path)?;
        if other.len() != reference.len() {
            return Ok(Err(format!(
                "{first_name} has {} records, {name} has {}",
                reference.len(),
                other.len()
            )));
        }
        if let Some((item, expected)) = reference.iter().find(|(item, record)| other.get(item) != Some(record)) {
            let got = other.get(item).map_or("nothing", String::as_str);
            return Ok(Err(format!(
                "item {item}: {first_name} gives {expected}, {name} gives {got}"
            )));
        }
    }
    Ok(Ok(()))
}

/// Runs a small job with one segfaulting item under one executor: did the crash take the whole job down?
fn isolation_check(exe: &Path, scratch: &Path, flags: &[&str]) -> Result<(bool, String), Error> {
    let job = scratch.join("isolation.toml");
    let text = "[input]\nrange = { start = 0, end = 8 }\n[task]\nbuiltin = \"fault\"\nargs = { segfault = [3] }\n\
                [output]\nresults = \"isolation.jsonl\"\n";
    std::fs::write(&job, text).map_err(|source| Error::File {
        action: "write the job file",
        path: job.clone(),
        source,
    })?;
    let output = Command::new(exe)
        .args(["run", "--quiet", "--json", "--force"])
        .arg(&job)
        .args(flags)
        .stdin(Stdio::null())
        .output()
        .map_err(|source| Error::Start {
            what: "the isolation check",
            source,
        })?;
    use std::os::unix::process::ExitStatusExt;
    Ok(match (output.status.code(), output.status.signal()) {
        (_, Some(signal)) => (
            true,
            format!("the whole job died ({}); no item has a record", signal_name(signal)),
        ),
        (Some(1), _) => {
            let summary: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap_or_default();
            (
                false,
                format!("{} item failed, {} ok", summary["failed"], summary["ok"]),
            )
        }
        (code, _) => (true, format!("the job ended with exit code {code:?}")),
    })
}

fn print_table(comparison: &Comparison, difference: Option<&String>) {
    println!(
        "{} — {} items, median of {} runs each",
        comparison.job.display(),
        comparison.items,
        comparison.repeat
    );
    println!(
        "{:<19} {:>26} {:>8} {:>8} {:>12} {:>10} {:>10} {:>9}  crash takes job down",
        "executor", "wall (min–max)", "cpu", "speedup", "overhead/it", "peak RSS", "peak PSS", "1st res",
    );
    for r in &comparison.executors {
        if let Some(reason) = &r.unavailable {
            println!("{:<19} n/a: {reason}", r.executor);
            continue;
        }
        let speedup = r.speedup_vs_serial.map_or("-".to_string(), |s| format!("{s:.2}x"));
        let overhead = r
            .overhead_us_per_item
            .map_or("-".to_string(), |o| format!("{o:+.2} µs"));
        let first = r
            .first_result_s
            .map_or("-".to_string(), |f| format!("{:.1} ms", f * 1000.0));
        let isolation = match (&r.crash_takes_job_down, &r.isolation_detail) {
            (Some(true), Some(detail)) => format!("yes: {detail}"),
            (Some(false), Some(detail)) => format!("no: {detail}"),
            _ => "not checked (--isolation-check)".to_string(),
        };
        println!(
            "{:<19} {:>26} {:>8} {:>8} {:>12} {:>10} {:>10} {:>9}  {isolation}",
            r.executor,
            format!("{:.3}s ({:.3}–{:.3})", r.wall_median_s, r.wall_min_s, r.wall_max_s),
            format!("{:.2}s", r.cpu_median_s),
            speedup,
            overhead,
            human_bytes(r.peak_rss_bytes),
            human_bytes(r.peak_pss_bytes),
            first,
        );
    }
    match difference {
        None => println!("results: identical across executors"),
        Some(difference) => println!("results: DIFFER — {difference}"),
    }
    println!("verdict: {}", comparison.verdict);
}
