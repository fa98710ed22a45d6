//! Shards end to end: `run --shard I/N` (and the scheduler's environment) on every input source, `merge` and its
//! checks, a SIGTERM'ed shard resumed, the worker count under a CPU affinity mask or `SLURM_CPUS_PER_TASK`, and
//! the `export` outputs.
//!
//! Expected values come from closed forms, `wc -l` and `sha256sum`, and from a single-machine run of the same
//! job; the shards' coverage is checked item by item from the results files.

#[expect(
    dead_code,
    reason = "the helpers are shared with e2e.rs; this suite uses only some of them"
)]
mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;

/// Variables through which a scheduler would choose a shard: removed from every run here unless a test sets them.
const SCHEDULER_VARS: [&str; 6] = [
    "SLURM_ARRAY_TASK_ID",
    "SLURM_ARRAY_TASK_COUNT",
    "SLURM_ARRAY_TASK_MIN",
    "SLURM_ARRAY_TASK_STEP",
    "JOB_COMPLETION_INDEX",
    "SLURM_CPUS_PER_TASK",
];

fn temp_dir() -> tempfile::TempDir {
    common::temp_dir("shard")
}

/// Runs `supervisor ARGS` in `cwd` with `env` set (and the scheduler's variables otherwise removed); checks the
/// exit code and returns stdout and stderr.
fn run_env(cwd: &Path, args: &[&str], env: &[(&str, &str)], expected: i32) -> (String, String) {
    run_with(cwd, None, args, env, expected)
}

fn run_with(
    cwd: &Path,
    wrapper: Option<&[&str]>,
    args: &[&str],
    env: &[(&str, &str)],
    expected: i32,
) -> (String, String) {
    let mut command = match wrapper {
        Some(wrapper) => {
            let mut command = Command::new(wrapper[0]);
            command.args(&wrapper[1..]).arg(SUPERVISOR);
            command
        }
        None => Command::new(SUPERVISOR),
    };
    command.args(args).current_dir(cwd).stdin(Stdio::null());
    for var in SCHEDULER_VARS {
        command.env_remove(var);
    }
    command.envs(env.iter().copied());
    let output = command.output().expect("start supervisor");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert_eq!(
        output.status.code(),
        Some(expected),
        "supervisor {args:?} (env {env:?})\n--- stdout ---\n{stdout}\n--- stderr ---\n{stderr}"
    );
    (stdout, stderr)
}

fn json(stdout: &str) -> serde_json::Value {
    serde_json::from_str(stdout.trim()).unwrap_or_else(|error| panic!("not one JSON object ({error}): {stdout}"))
}

/// Results lines without the fields that differ between runs (pid, time): item, status, value, input.
fn comparable(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_else(|error| panic!("read {}: {error}", path.display()))
        .lines()
        .map(|line| {
            let value: serde_json::Value = serde_json::from_str(line).expect("a record");
            format!(
                "{} {} {} {}",
                value["item"], value["status"], value["value"], value["input"]
            )
        })
        .collect()
}

/// `results.jsonl` → `results.shard-0003-of-0016.jsonl`, as documented.
fn shard_file(results: &Path, index: u64, count: u64) -> PathBuf {
    let name = results.file_name().expect("file name").to_str().expect("utf-8");
    let (stem, extension) = name.rsplit_once('.').expect("an extension");
    results.with_file_name(format!("{stem}.shard-{index:04}-of-{count:04}.{extension}"))
}

/// One input source under test: its job file and the reduced value an independent tool computes.
struct Source {
    name: &'static str,
    job: PathBuf,
    results: PathBuf,
    expected: serde_json::Value,
    /// For the glob: each file's digest as `sha256sum` prints it.
    digests: BTreeMap<PathBuf, String>,
}

/// A range, a file cut into line-aligned chunks, the lines of a file, a whole file, and a glob, each with its
/// independent answer.
fn sources(dir: &Path) -> Vec<Source> {
    let text = generated_text(300_000, 7, true);
    let corpus = write_file(dir, "corpus.txt", &text);
    std::fs::create_dir_all(dir.join("files")).expect("mkdir");
    let mut prng = Prng::new(11);
    for n in 0..23 {
        let len = prng.below(5000) as usize;
        write_file(&dir.join("files"), &format!("f{n:02}.txt"), prng.bytes(len));
    }
    let mut digests = BTreeMap::new();
    for n in 0..23 {
        let path = dir.join("files").join(format!("f{n:02}.txt"));
        let line = tool("sha256sum", &[path.as_os_str()], None, &[0]);
        digests.insert(path, line.split_whitespace().next().expect("digest").to_string());
    }
    let lines = wc("-l", &corpus);
    let words = wc("-w", &corpus);
    vec![
        Source {
            name: "range",
            job: Job::range(0, 1_000_003)
                .chunk(9999)
                .builtin("sum-squares")
                .results("out/range.jsonl")
                .reduce("sum")
                .named("range.toml")
                .write(dir),
            results: dir.join("out/range.jsonl"),
            expected: serde_json::Value::from(u64::try_from(sum_of_squares_below(1_000_003)).expect("fits u64")),
            digests: BTreeMap::new(),
        },
        Source {
            name: "file chunks",
            job: Job::file("corpus.txt")
                .chunk_bytes(4096)
                .builtin("line-count")
                .results("out/chunks.jsonl")
                .reduce("sum")
                .named("chunks.toml")
                .write(dir),
            results: dir.join("out/chunks.jsonl"),
            expected: serde_json::Value::from(lines as u64),
            digests: BTreeMap::new(),
        },
        Source {
            name: "glob",
            job: Job::glob("files/*.txt")
                .builtin("sha256")
                .results("out/glob.jsonl")
                .reduce("count")
                .named("glob.toml")
                .write(dir),
            results: dir.join("out/glob.jsonl"),
            expected: serde_json::Value::from(23),
            digests,
        },
        Source {
            name: "lines",
            job: Job::lines("corpus.txt")
                .builtin("word-count")
                .batch(64)
                .results("out/lines.jsonl")
                .reduce("sum")
                .named("lines.toml")
                .write(dir),
            results: dir.join("out/lines.jsonl"),
            expected: serde_json::Value::from(words as u64),
            digests: BTreeMap::new(),
        },
        Source {
            name: "whole file",
            job: Job::file("corpus.txt")
                .split("none")
                .builtin("line-count")
                .results("out/whole.jsonl")
                .reduce("sum")
                .named("whole.toml")
                .write(dir),
            results: dir.join("out/whole.jsonl"),
            expected: serde_json::Value::from(lines as u64),
            digests: BTreeMap::new(),
        },
    ]
}

/// The summary's reduced value.
fn reduced(stdout: &str) -> serde_json::Value {
    json(stdout)["reduced"].clone()
}

#[test]
fn every_source_splits_into_shards_that_cover_each_item_exactly_once() {
    let dir = temp_dir();
    for source in sources(dir.path()) {
        let job = path_str(&source.job);
        // The single-machine run: the reference for the merged file.
        let single = dir
            .path()
            .join(format!("single-{}.jsonl", source.name.replace(' ', "-")));
        let (stdout, _) = run_env(
            dir.path(),
            &["run", "-q", "--json", "--results", path_str(&single), job],
            &[],
            0,
        );
        let items = json(&stdout)["items"].as_u64().expect("items");
        assert!(
            items >= 7 || source.name == "whole file",
            "{}: only {items} items",
            source.name
        );
        assert_eq!(reduced(&stdout), source.expected, "{}: single-machine run", source.name);
        for count in [1u64, 2, 3, 7] {
            let mut owner: BTreeMap<u64, u64> = BTreeMap::new();
            let mut next = 0;
            for index in 0..count {
                let shard = format!("{index}/{count}");
                let (stdout, stderr) = run_env(dir.path(), &["run", "--json", "--shard", &shard, job], &[], 0);
                let summary = json(&stdout);
                assert!(stderr.contains(&format!("shard {shard}: items")), "{stderr}");
                assert_eq!(summary["shard"]["from"], format!("--shard {shard}"));
                // Contiguous blocks, in order, sizes differing by at most one.
                let file = shard_file(&source.results, index, count);
                let records = read_records::<serde_json::Value>(&file);
                assert_eq!(
                    records.len() as u64,
                    summary["items"].as_u64().expect("items"),
                    "{}",
                    file.display()
                );
                let first = records.iter().map(|r| r.item).min().unwrap_or(next);
                assert_eq!(
                    first, next,
                    "{} {shard}: not contiguous with the shard before",
                    source.name
                );
                for record in &records {
                    assert_eq!(record.status, "ok");
                    if let Some(before) = owner.insert(record.item, index) {
                        panic!(
                            "{}: item {} is in shards {before} and {index} of {count}",
                            source.name, record.item
                        );
                    }
                }
                next = first + records.len() as u64;
                let size = records.len() as u64;
                assert!(
                    size == items / count || size == items.div_ceil(count),
                    "{} {shard}: {size} items of {items}",
                    source.name
                );
            }
            assert_eq!(
                owner.len() as u64,
                items,
                "{}: {count} shards do not cover every item",
                source.name
            );
            assert_eq!(
                owner.keys().copied().collect::<Vec<_>>(),
                (0..items).collect::<Vec<_>>()
            );
            // Merged: the same records as the single-machine run, and the independent answer.
            let (stdout, _) = run_env(dir.path(), &["merge", "--json", job], &[], 0);
            let merged = json(&stdout);
            assert_eq!(merged["shards"], count);
            assert_eq!(merged["ok"].as_u64(), Some(items));
            assert_eq!(
                reduced(&stdout),
                source.expected,
                "{}: merged {count} shards",
                source.name
            );
            assert_eq!(
                comparable(&source.results),
                comparable(&single),
                "{}: {count} shards",
                source.name
            );
            if !source.digests.is_empty() {
                for record in read_records::<String>(&source.results) {
                    let path = record.input.path().expect("a file item");
                    assert_eq!(record.value.as_ref(), source.digests.get(path), "{}", path.display());
                }
            }
            for index in 0..count {
                std::fs::remove_file(shard_file(&source.results, index, count)).expect("remove shard file");
            }
        }
    }
}

/// Runs the three shards of a small range job and returns the job file and its results path.
fn three_shards(dir: &Path) -> (PathBuf, PathBuf) {
    let job = Job::range(0, 3000)
        .chunk(10)
        .builtin("sum-squares")
        .results("r.jsonl")
        .reduce("sum")
        .write(dir);
    for index in 0..3 {
        run_env(
            dir,
            &["run", "-q", "--shard", &format!("{index}/3"), path_str(&job)],
            &[],
            0,
        );
    }
    (job, dir.join("r.jsonl"))
}

#[test]
fn merge_names_a_missing_shard_and_writes_nothing() {
    let dir = temp_dir();
    let (job, results) = three_shards(dir.path());
    let missing = shard_file(&results, 1, 3);
    std::fs::remove_file(&missing).expect("remove shard 1");
    let (_, stderr) = run_env(dir.path(), &["merge", path_str(&job)], &[], 2);
    assert!(
        stderr.contains(&format!("shard 1/3 (items 100..200): {} is missing", missing.display())),
        "{stderr}"
    );
    assert!(stderr.contains("missing shards: 1 of 3"), "{stderr}");
    assert!(!results.exists(), "an incomplete merge wrote the results file");
    // Once the shard has run, the merge succeeds: Σ i² for i < 3000.
    run_env(dir.path(), &["run", "-q", "--shard", "1/3", path_str(&job)], &[], 0);
    let (stdout, _) = run_env(dir.path(), &["merge", "--json", path_str(&job)], &[], 0);
    assert_eq!(raw_number(&stdout, "reduced"), sum_of_squares_below(3000).to_string());
    assert_eq!(wc("-l", &results), 300);
}

#[test]
fn merge_names_duplicated_and_missing_items() {
    let dir = temp_dir();
    let (job, results) = three_shards(dir.path());
    let shard2 = shard_file(&results, 2, 3);
    let original = std::fs::read_to_string(&shard2).expect("read shard 2");
    let lines: Vec<&str> = original.lines().collect();
    // Item 250 twice in its own shard's file.
    let twice = lines
        .iter()
        .find(|l| l.starts_with("{\"item\":250,"))
        .expect("item 250");
    std::fs::write(&shard2, format!("{original}{twice}\n")).expect("write");
    let (_, stderr) = run_env(dir.path(), &["merge", path_str(&job)], &[], 2);
    assert!(
        stderr.contains(&format!("item 250 is recorded twice in {}", shard2.display())),
        "{stderr}"
    );
    assert!(!results.exists());
    // Item 5 (shard 0's) also in shard 2's file.
    let shard0 = std::fs::read_to_string(shard_file(&results, 0, 3)).expect("read shard 0");
    let stray = shard0.lines().find(|l| l.starts_with("{\"item\":5,")).expect("item 5");
    std::fs::write(&shard2, format!("{original}{stray}\n")).expect("write");
    let (_, stderr) = run_env(dir.path(), &["merge", path_str(&job)], &[], 2);
    assert!(
        stderr.contains("item 5 is recorded in shard 2/3's file (items 200..300) but belongs to shard 0/3"),
        "{stderr}"
    );
    // Items 210..213 and 299 lost from shard 2's file.
    let kept: String = lines
        .iter()
        .filter(|l| {
            !["{\"item\":210,", "{\"item\":211,", "{\"item\":212,", "{\"item\":299,"]
                .iter()
                .any(|p| l.starts_with(p))
        })
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(&shard2, kept).expect("write");
    let (_, stderr) = run_env(dir.path(), &["merge", path_str(&job)], &[], 2);
    assert!(
        stderr.contains("shard 2/3 (items 200..300): 4 items missing"),
        "{stderr}"
    );
    assert!(stderr.contains("items 210..213, 299"), "{stderr}");
    assert!(!results.exists());
}

/// Sends `signal` to `pid` and to every process whose parent it is, as Slurm does to a job's processes.
fn signal_tree(pid: i32, signal: i32) {
    let mut pids = vec![pid];
    pids.extend(children_of(pid).iter().map(|p| p.pid));
    for target in pids {
        // The pids are the supervisor (our unreaped child) and its children (its unreaped children while it
        // lives).
        let signal = nix::sys::signal::Signal::try_from(signal).expect("a signal number");
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(target), signal);
    }
}

#[test]
fn a_shard_stopped_by_sigterm_resumes_with_nothing_lost() {
    let dir = temp_dir();
    let job = Job::range(0, 1_000_000_000)
        .chunk(5000)
        .builtin("sum-squares")
        .results("slow.jsonl")
        .reduce("sum")
        .named("slow.toml")
        .write(dir.path());
    let results = dir.path().join("slow.jsonl");
    let shard_results = shard_file(&results, 1, 2);
    let journal = PathBuf::from(format!("{}.journal", shard_results.display()));
    let mut supervisor = Background::start(dir.path(), &["run", "--shard", "1/2", "--workers", "2", path_str(&job)]);
    let pid = supervisor.pid();
    let under_way = wait_until(Duration::from_secs(60), || {
        supervisor.has_exited() || (complete_lines(&journal) > 1 && children_of(pid).len() >= 2)
    });
    assert!(
        under_way && !supervisor.has_exited(),
        "the shard did not get under way\n{}",
        supervisor.context()
    );
    // Like a Slurm preemption or time limit: every process of the task gets SIGTERM at once.
    signal_tree(pid, libc::SIGTERM);
    let status = supervisor.wait(Duration::from_secs(60));
    assert_eq!(status.code(), Some(143), "{}", supervisor.context());
    assert!(
        supervisor.stdout().contains("stopped by SIGTERM"),
        "{}",
        supervisor.context()
    );
    assert!(journal.exists(), "the journal was not kept");
    let partial = read_records::<u128>(&shard_results);
    assert!(partial.len() < 100_000, "the shard was not stopped early");
    // No item failed because its worker got the SIGTERM too.
    assert!(partial.iter().all(|r| r.status == "ok"), "an item failed");

    let (stdout, _) = run_env(
        dir.path(),
        &[
            "run",
            "--json",
            "--resume",
            "--shard",
            "1/2",
            "--workers",
            "2",
            path_str(&job),
        ],
        &[],
        0,
    );
    let summary = json(&stdout);
    assert_eq!(summary["resumed"].as_u64(), Some(partial.len() as u64));
    assert_eq!(summary["ok"].as_u64(), Some(100_000));
    assert_eq!(
        raw_number(&stdout, "reduced"),
        sum_of_squares(500_000_000, 1_000_000_000).to_string()
    );
    let records = read_records::<u128>(&shard_results);
    assert_eq!(records.len(), 100_000);
    for (n, record) in records.iter().enumerate() {
        let item = 100_000 + n as u64;
        assert_eq!(record.item, item);
        assert_eq!(
            record.value,
            Some(sum_of_squares(item * 5_000, item * 5_000 + 5_000)),
            "item {item}"
        );
    }
}

#[test]
fn resuming_another_shards_journal_is_refused() {
    let dir = temp_dir();
    let (job, results) = three_shards(dir.path());
    run_env(
        dir.path(),
        &[
            "run",
            "-q",
            "--force",
            "--keep-journal",
            "--shard",
            "0/3",
            path_str(&job),
        ],
        &[],
        0,
    );
    let journal0 = PathBuf::from(format!("{}.journal", shard_file(&results, 0, 3).display()));
    let journal1 = PathBuf::from(format!("{}.journal", shard_file(&results, 1, 3).display()));
    std::fs::copy(&journal0, &journal1).expect("copy journal");
    let (_, stderr) = run_env(
        dir.path(),
        &["run", "--resume", "--shard", "1/3", path_str(&job)],
        &[],
        2,
    );
    assert!(
        stderr.contains("the shard changed: the journal is of shard 0/3, this run is shard 1/3"),
        "{stderr}"
    );
}

#[test]
fn the_shard_comes_from_the_schedulers_environment() {
    let dir = temp_dir();
    let job = Job::range(0, 1000)
        .chunk(10)
        .builtin("sum-squares")
        .results("r.jsonl")
        .reduce("sum")
        .write(dir.path());
    let results = dir.path().join("r.jsonl");
    // A Slurm array --array=10-12: task 12 is shard 2 of 3.
    let slurm = [
        ("SLURM_ARRAY_TASK_ID", "12"),
        ("SLURM_ARRAY_TASK_COUNT", "3"),
        ("SLURM_ARRAY_TASK_MIN", "10"),
    ];
    let (stdout, stderr) = run_env(dir.path(), &["run", path_str(&job)], &slurm, 0);
    assert!(
        stderr.contains(
            "shard 2/3: items 66..100 of 100 (from SLURM_ARRAY_TASK_ID=12, SLURM_ARRAY_TASK_COUNT=3, SLURM_ARRAY_TASK_MIN=10)"
        ),
        "{stderr}"
    );
    assert!(stdout.contains("shard 2/3: items 66..100"), "{stdout}");
    let records = read_records::<u128>(&shard_file(&results, 2, 3));
    assert_eq!(
        records.iter().map(|r| r.item).collect::<Vec<_>>(),
        (66..100).collect::<Vec<_>>()
    );
    // --shard wins over the environment.
    let (_, stderr) = run_env(dir.path(), &["run", "--shard", "0/3", path_str(&job)], &slurm, 0);
    assert!(
        stderr.contains("shard 0/3: items 0..33 of 100 (from --shard 0/3)"),
        "{stderr}"
    );
    // Kubernetes: the index alone is not enough; with a count it is.
    let k8s = [("JOB_COMPLETION_INDEX", "1")];
    let (_, stderr) = run_env(dir.path(), &["run", path_str(&job)], &k8s, 2);
    assert!(stderr.contains("pass --shard-count N or set [shard] count"), "{stderr}");
    let (stdout, _) = run_env(
        dir.path(),
        &["run", "--json", "-q", "--shard-count", "3", path_str(&job)],
        &k8s,
        0,
    );
    let summary = json(&stdout);
    assert_eq!(
        (summary["shard"]["index"].as_u64(), summary["shard"]["count"].as_u64()),
        (Some(1), Some(3))
    );
    assert_eq!(summary["shard"]["from"], "JOB_COMPLETION_INDEX=1, --shard-count 3");
    // All three shards ran (two from the environment): the merge has every item.
    let (stdout, _) = run_env(dir.path(), &["merge", "--json", path_str(&job)], &[], 0);
    assert_eq!(raw_number(&stdout, "reduced"), sum_of_squares_below(1000).to_string());
    // A bad shard is a usage error.
    let (_, stderr) = run_env(dir.path(), &["run", "--shard", "3/3", path_str(&job)], &[], 2);
    assert!(stderr.contains("shard index 3 of 3: expected 0 to 2"), "{stderr}");
}

#[test]
fn workers_follow_the_cpus_the_scheduler_gave() {
    let dir = temp_dir();
    let job = Job::range(0, 100_000)
        .chunk(10)
        .builtin("sum-squares")
        .write(dir.path());
    let job = path_str(&job);
    // One CPU in the affinity mask: one worker, whatever the machine has.
    let (stdout, _) = run_with(
        dir.path(),
        Some(&["taskset", "-c", "0"]),
        &["run", "--json", job],
        &[],
        0,
    );
    let summary = json(&stdout);
    assert_eq!(summary["workers"], 1, "{stdout}");
    assert!(
        summary["workers_from"]
            .as_str()
            .expect("text")
            .contains("affinity mask: 1 CPU"),
        "{stdout}"
    );
    // SLURM_CPUS_PER_TASK=1 (a Slurm node without CPU binding): one worker.
    let (stdout, _) = run_env(dir.path(), &["run", "--json", job], &[("SLURM_CPUS_PER_TASK", "1")], 0);
    let summary = json(&stdout);
    assert_eq!(summary["workers"], 1, "{stdout}");
    assert!(
        summary["workers_from"]
            .as_str()
            .expect("text")
            .contains("SLURM_CPUS_PER_TASK=1"),
        "{stdout}"
    );
    // --workers overrides all of them.
    let (stdout, _) = run_with(
        dir.path(),
        Some(&["taskset", "-c", "0"]),
        &["run", "--json", "--workers", "2", job],
        &[("SLURM_CPUS_PER_TASK", "1")],
        0,
    );
    assert_eq!(json(&stdout)["workers"], 2, "{stdout}");
}

#[test]
fn export_slurm_prints_a_job_array_script() {
    let dir = temp_dir();
    let job = Job::range(0, 1000)
        .name("squares")
        .chunk(10)
        .builtin("sum-squares")
        .supervise("grace", "20s")
        .results("r.jsonl")
        .write(dir.path());
    let (script, _) = run_env(
        dir.path(),
        &[
            "export",
            "slurm",
            path_str(&job),
            "--shards",
            "16",
            "--partition",
            "batch",
            "--time",
            "2:00:00",
            "--cpus-per-task",
            "8",
        ],
        &[],
        0,
    );
    for line in [
        "#!/bin/bash",
        "#SBATCH --job-name=squares",
        "#SBATCH --array=0-15",
        "#SBATCH --cpus-per-task=8",
        "#SBATCH --partition=batch",
        "#SBATCH --time=2:00:00",
        "#SBATCH --requeue",
        "#SBATCH --signal=B:TERM@80",
        &format!("exec {SUPERVISOR} run --resume --shard-count 16 {}", job.display()),
    ] {
        assert!(script.lines().any(|l| l == line), "no line `{line}` in:\n{script}");
    }
    let script_file = write_file(dir.path(), "job.sbatch", &script);
    tool("bash", &["-n".as_ref(), script_file.as_os_str()], None, &[0]);
    // With `count = "auto"` and no --cpus-per-task, each shard takes a whole node.
    let (script, _) = run_env(
        dir.path(),
        &["export", "slurm", path_str(&job), "--shards", "4"],
        &[],
        0,
    );
    assert!(script.lines().any(|l| l == "#SBATCH --exclusive"), "{script}");
    assert!(!script.contains("--cpus-per-task="), "{script}");
    // Without a results file there is nothing to merge.
    let no_results = Job::range(0, 10)
        .builtin("noop")
        .named("nothing.toml")
        .write(dir.path());
    let (_, stderr) = run_env(
        dir.path(),
        &[
            "export",
            "slurm",
            path_str(&no_results),
            "--shards",
            "4",
            "--cpus-per-task",
            "1",
        ],
        &[],
        2,
    );
    assert!(stderr.contains("has no [output] results"), "{stderr}");
}

#[test]
fn export_k8s_prints_an_indexed_job() {
    let dir = temp_dir();
    let job = Job::range(0, 1000)
        .name("Squares")
        .chunk(10)
        .builtin("sum-squares")
        .workers(4)
        .results("r.jsonl")
        .write(dir.path());
    let (manifest, _) = run_env(
        dir.path(),
        &[
            "export",
            "k8s",
            path_str(&job),
            "--shards",
            "8",
            "--image",
            "registry.example/supervisor:1",
        ],
        &[],
        0,
    );
    for line in [
        "kind: Job",
        "  name: supervisor-squares",
        "  completionMode: Indexed",
        "  completions: 8",
        "  backoffLimitPerIndex: 3",
        "      - action: FailIndex",
        "          values: [1]",
        "      - action: FailJob",
        "          values: [2]",
        "          - type: DisruptionTarget",
        "      restartPolicy: Never",
        "              cpu: \"4\"",
    ] {
        assert!(manifest.lines().any(|l| l == line), "no line `{line}` in:\n{manifest}");
    }
    // It is valid YAML with the structure Kubernetes expects (checked with Python's yaml, independent of us).
    let manifest_file = write_file(dir.path(), "job.yaml", &manifest);
    let check = "import sys, yaml\n\
                 job = yaml.safe_load(open(sys.argv[1]))\n\
                 spec = job['spec']\n\
                 assert spec['completionMode'] == 'Indexed' and spec['completions'] == 8\n\
                 rules = spec['podFailurePolicy']['rules']\n\
                 assert [r['action'] for r in rules] == ['FailIndex', 'FailJob', 'Ignore']\n\
                 c = spec['template']['spec']['containers'][0]\n\
                 print(' '.join(c['command']))\n";
    let has_yaml = Command::new("python3")
        .args(["-c", "import yaml"])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    // With `count = "auto"` and no --cpus: no CPU resources, and a comment saying so.
    let auto = Job::range(0, 1000)
        .chunk(10)
        .builtin("sum-squares")
        .results("r.jsonl")
        .named("auto.toml")
        .write(dir.path());
    let (auto_manifest, _) = run_env(
        dir.path(),
        &["export", "k8s", path_str(&auto), "--shards", "2", "--image", "img"],
        &[],
        0,
    );
    assert!(!auto_manifest.contains("resources:"), "{auto_manifest}");
    assert!(auto_manifest.contains("Pass --cpus C"), "{auto_manifest}");
    if has_yaml {
        let command = tool(
            "python3",
            &["-c".as_ref(), check.as_ref(), manifest_file.as_os_str()],
            None,
            &[0],
        );
        assert_eq!(
            command.trim(),
            format!("supervisor run --resume --shard-count 8 {}", job.display())
        );
    } else {
        eprintln!("NOTE: python3 yaml is not installed: the manifest's YAML structure was not parsed");
    }
}
