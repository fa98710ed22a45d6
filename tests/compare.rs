//! `supervisor compare`: it runs a job under every executor, finds their results identical, measures each one,
//! and shows (with `--isolation-check`) that one crashing item takes a threaded job down but not a process job.
//! Timings are never asserted; only that the numbers exist and are consistent.

#[path = "common/mod.rs"]
#[expect(
    dead_code,
    reason = "the helpers are shared with e2e.rs; this suite uses only some of them"
)]
mod common;

use common::{run, sum_of_squares_below, write_file};

fn temp_dir() -> tempfile::TempDir {
    tempfile::tempdir().expect("temp dir")
}

const JOB: &str = "[input]\nrange = { start = 0, end = 2_000_000, chunk = 20_000 }\n[task]\nbuiltin = \"sum-squares\"\n\
                   [output]\nreduce = \"sum\"\n";

#[test]
fn compare_runs_every_executor_and_finds_identical_results() {
    let dir = temp_dir();
    let job = write_file(dir.path(), "job.toml", JOB);
    let chart = dir.path().join("chart.svg");
    let ran = run(
        dir.path(),
        [
            "compare",
            job.to_str().expect("utf-8"),
            "--repeat",
            "2",
            "--json",
            "--isolation-check",
            "--svg",
        ]
        .into_iter()
        .map(String::from)
        .chain([chart.to_str().expect("utf-8").to_string()]),
        0,
    );
    let comparison = ran.summary();
    assert_eq!(comparison["identical"], true, "{}", ran.context());
    assert_eq!(comparison["items"], 100);
    let executors = comparison["executors"].as_array().expect("executors");
    let names: Vec<&str> = executors.iter().filter_map(|e| e["executor"].as_str()).collect();
    assert_eq!(names, ["process", "process/forkserver", "thread", "serial"]);
    for executor in executors {
        let name = executor["executor"].as_str().unwrap_or_default();
        assert!(
            executor["unavailable"].is_null(),
            "{name} did not run: {}",
            ran.context()
        );
        assert_eq!(executor["samples"].as_array().map(Vec::len), Some(2), "{name}");
        for key in ["wall_median_s", "cpu_median_s", "speedup_vs_serial"] {
            let value = executor[key].as_f64().unwrap_or(f64::NAN);
            assert!(value.is_finite() && value > 0.0, "{name}.{key} = {value}");
        }
        let (low, median, high) = (
            executor["wall_min_s"].as_f64().unwrap_or(f64::NAN),
            executor["wall_median_s"].as_f64().unwrap_or(f64::NAN),
            executor["wall_max_s"].as_f64().unwrap_or(f64::NAN),
        );
        assert!(low <= median && median <= high, "{name}: {low} {median} {high}");
        assert!(executor["peak_rss_bytes"].as_u64().unwrap_or(0) > 0, "{name}");
        // Measured, not asserted by the code: a segfault is isolated by processes and fatal to threads.
        let isolated = !name.starts_with("process");
        assert_eq!(
            executor["crash_takes_job_down"], isolated,
            "{name}: {}",
            executor["isolation_detail"]
        );
    }
    assert_eq!(comparison["executors"][3]["speedup_vs_serial"].as_f64(), Some(1.0));
    assert!(comparison["verdict"].as_str().is_some_and(|v| !v.is_empty()));
    let svg = std::fs::read_to_string(&chart).expect("chart written");
    assert!(svg.starts_with("<svg") && svg.contains("process/forkserver") && svg.contains("wall time"));
    // Each wall-time bar carries its min–max whisker (plotters marks the median on it with a circle).
    assert_eq!(svg.matches("<circle").count(), 4, "one whisker per executor:\n{svg}");
}

#[test]
fn compare_prints_a_table_with_a_verdict() {
    let dir = temp_dir();
    let job = write_file(dir.path(), "job.toml", JOB);
    let ran = run(
        dir.path(),
        ["compare", job.to_str().expect("utf-8"), "--repeat", "1"],
        0,
    );
    let text = ran.stdout();
    for executor in ["process ", "process/forkserver", "thread ", "serial "] {
        assert!(
            text.lines().any(|line| line.starts_with(executor)),
            "no row for {executor}:\n{text}"
        );
    }
    assert!(text.contains("results: identical across executors"), "{text}");
    assert!(text.lines().any(|line| line.starts_with("verdict: ")), "{text}");
    // One progress line per run (one run each of four executors) on stderr, none on stdout.
    let progress: Vec<String> = ran
        .stderr()
        .lines()
        .filter(|line| line.starts_with("compare: "))
        .map(String::from)
        .collect();
    assert_eq!(progress.len(), 4, "{progress:?}");
    for (line, executor) in progress
        .iter()
        .zip(["process", "process/forkserver", "thread", "serial"])
    {
        assert!(line.starts_with(&format!("compare: {executor} run 1/1: ")), "{line}");
    }
    assert!(!text.contains("compare: "), "{text}");
    // The job itself still computes the right thing under the process executor.
    let check = run(
        dir.path(),
        ["run", job.to_str().expect("utf-8"), "--json", "--quiet"],
        0,
    );
    assert_eq!(
        common::raw_number(&check.stdout(), "reduced"),
        sum_of_squares_below(2_000_000).to_string()
    );
}

#[test]
fn an_executor_that_cannot_run_the_job_is_reported_not_fatal() {
    let dir = temp_dir();
    let job = write_file(
        dir.path(),
        "job.toml",
        format!("{JOB}[supervise]\ngrace = \"1s\"\n").replace(
            "builtin = \"sum-squares\"\n",
            "builtin = \"sum-squares\"\ntimeout = \"10s\"\n",
        ),
    );
    let ran = run(
        dir.path(),
        ["compare", job.to_str().expect("utf-8"), "--repeat", "1", "--json"],
        0,
    );
    let comparison = ran.summary();
    let executors = comparison["executors"].as_array().expect("executors");
    let stderr = ran.stderr();
    for executor in ["thread", "serial"] {
        assert!(
            stderr.contains(&format!("compare: {executor} cannot run this job: ")),
            "{stderr}"
        );
    }
    for executor in executors {
        let name = executor["executor"].as_str().unwrap_or_default();
        let unavailable = executor["unavailable"].as_str();
        if name.starts_with("process") {
            assert!(unavailable.is_none(), "{name}: {unavailable:?}");
        } else {
            assert!(
                unavailable.is_some_and(|why| why.contains("timeout")),
                "{name}: {unavailable:?}"
            );
        }
    }
}

/// 200 items that do nothing: a process run pays the workers' start-up and the messages, a serial run neither.
const NOOP_JOB: &str = "[input]\nrange = { start = 0, end = 200, chunk = 1 }\n[task]\nbuiltin = \"noop\"\n";

/// How one executor's min–max wall range stands against another's, computed here from the JSON numbers.
fn order(a: &serde_json::Value, b: &serde_json::Value) -> std::cmp::Ordering {
    let wall = |e: &serde_json::Value, key: &str| e[key].as_f64().unwrap_or(f64::NAN);
    if wall(a, "wall_max_s") < wall(b, "wall_min_s") {
        std::cmp::Ordering::Less
    } else if wall(a, "wall_min_s") > wall(b, "wall_max_s") {
        std::cmp::Ordering::Greater
    } else {
        std::cmp::Ordering::Equal
    }
}

/// Regression (issue 13): `compare` said "isolation is worth it" for a job whose processes were 20x slower than
/// serial, because its verdict looked only at processes against threads, by median. On a job where processes
/// cannot win, the verdict must say that the parallel job does not pay for itself, judged by the runs' ranges.
#[test]
fn compare_verdict_on_a_job_processes_cannot_win_says_it_does_not_pay() {
    let dir = temp_dir();
    let job = write_file(dir.path(), "job.toml", NOOP_JOB);
    let ran = run(
        dir.path(),
        [
            "compare",
            job.to_str().expect("utf-8"),
            "--repeat",
            "3",
            "--workers",
            "2",
            "--json",
        ],
        0,
    );
    let comparison = ran.summary();
    let verdict = comparison["verdict"].as_str().unwrap_or_default();
    assert!(!verdict.contains("worth"), "{verdict}");
    let executors = comparison["executors"].as_array().expect("executors");
    let named = |name: &str| {
        executors
            .iter()
            .find(|e| e["executor"] == name)
            .unwrap_or_else(|| panic!("no {name} executor"))
    };
    // The process executor the verdict judges is the faster of the two by median; its range against serial's
    // decides the finding.
    let process = ["process", "process/forkserver"]
        .map(named)
        .into_iter()
        .min_by(|a, b| {
            a["wall_median_s"]
                .as_f64()
                .unwrap_or(f64::NAN)
                .total_cmp(&b["wall_median_s"].as_f64().unwrap_or(f64::NAN))
        })
        .expect("two process executors");
    let expected = match order(process, named("serial")) {
        std::cmp::Ordering::Greater => "slower_than_serial",
        std::cmp::Ordering::Equal => "no_faster_than_serial",
        std::cmp::Ordering::Less => panic!(
            "processes beat serial beyond noise on 200 no-op items: {}",
            ran.context()
        ),
    };
    assert_eq!(comparison["finding"], expected, "{verdict}");
    assert!(verdict.contains("does not pay for itself"), "{verdict}");
}

#[test]
fn compare_prints_one_progress_line_per_run_unless_quiet() {
    let dir = temp_dir();
    let job = write_file(dir.path(), "job.toml", NOOP_JOB);
    let job = job.to_str().expect("utf-8");
    let ran = run(
        dir.path(),
        ["compare", job, "--repeat", "2", "--json", "--isolation-check"],
        0,
    );
    let lines: Vec<String> = ran.stderr().lines().map(String::from).collect();
    let mut expected = Vec::new();
    for executor in ["process", "process/forkserver", "thread", "serial"] {
        for round in 1..=2 {
            expected.push(format!("compare: {executor} run {round}/2: "));
        }
    }
    for executor in ["process", "process/forkserver", "thread", "serial"] {
        expected.push(format!(
            "compare: {executor} isolation check: crash takes the job down: "
        ));
    }
    assert_eq!(lines.len(), expected.len(), "{lines:#?}");
    for (line, start) in lines.iter().zip(&expected) {
        assert!(line.starts_with(start.as_str()), "{line:?} should start with {start:?}");
    }
    let quiet = run(dir.path(), ["compare", job, "--repeat", "1", "--json", "--quiet"], 0);
    assert_eq!(quiet.stderr(), "", "{}", quiet.context());
}

/// The baselines' own error wraps the core's: a bad job file still exits 2 with its located message.
#[test]
fn compare_of_a_bad_job_exits_2_naming_the_file_and_line() {
    let dir = temp_dir();
    let job = write_file(
        dir.path(),
        "job.toml",
        "[input]\nrange = { start = 0, end = 5 }\n[task]\nbuiltin = \"nope\"\n",
    );
    let ran = run(dir.path(), ["compare", job.to_str().expect("utf-8")], 2);
    let stderr = ran.stderr();
    assert!(stderr.contains("job.toml:4:"), "{stderr}");
    assert!(stderr.contains("nope"), "{stderr}");
    assert!(ran.stdout().is_empty(), "{}", ran.context());
}
