//! Hostile or broken workers cannot hurt the supervisor: the real `supervisor` binary runs real jobs whose worker
//! processes misbehave on purpose (the test-only `SUPERVISOR_TEST_HOSTILE_WORKER` modes of `child::hostile`):
//! garbage, a 1 GiB message, results for batches or items they were not given, floods, values too deep or too
//! large, messages in the wrong state, a wrong protocol version, and workers that will not stop.
//!
//! For each, the test checks the exit code, the record of the item the worker misbehaved at (kind `protocol`,
//! naming what was wrong), that every other item is ok with the value of an independent closed form (Σ i²), that
//! the worker was replaced, that the supervisor's peak RSS stayed small (read from `/proc/<pid>/status` while it
//! runs), and that no process is left behind.

#[path = "common/mod.rs"]
#[expect(
    dead_code,
    reason = "the helpers are shared with e2e.rs; this suite uses only some of them"
)]
mod common;

use std::collections::BTreeSet;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, ExitStatus};
use std::time::{Duration, Instant};

use common::procfs::{Stat, descendants, status_kib};
use common::{
    EXIT_ITEMS_FAILED, EXIT_OK, EXIT_SIGINT, EXIT_WORKERS_CANNOT_START, Job, Proc, Record, kill_survivors,
    read_records, send_signal, sum_of_squares,
};
use serde_json::Value as Json;
use tempfile::TempDir;

const HOSTILE_ENV: &str = "SUPERVISOR_TEST_HOSTILE_WORKER";

/// Items of the standard job: item k is Σ i² over [10k, 10k + 10).
const ITEMS: u64 = 200;
const CHUNK: u64 = 10;
/// The item at which the hostile worker misbehaves.
const BAD_ITEM: u64 = 57;

/// A liveness bound far above real run times (the machine is shared and busy), not a timing measurement.
const RUN_DEADLINE: Duration = Duration::from_secs(120);
const POLL: Duration = Duration::from_millis(10);

/// Peak RSS the supervisor may reach in these small jobs, whatever its workers send. A debug build running a
/// 200-item job peaks at a few tens of MiB; ipc-channel, which carried these messages before, took the
/// supervisor to 2 GiB for the 1 GiB message of the `giant` mode.
const PEAK_RSS_LIMIT_KIB: u64 = 160 << 10;

// ---------------------------------------------------------------------------------------------------------------
// The behaviours

/// A job of [`ITEMS`] `sum-squares` items; the workers misbehave as `mode` says.
fn standard_job(start: &str) -> Job {
    Job::range(0, ITEMS * CHUNK)
        .chunk(CHUNK)
        .builtin("sum-squares")
        .start(start)
        .workers(2)
}

/// Runs the standard job with workers hostile at [`BAD_ITEM`] in `mode`; checks that exactly that item failed
/// with `kind` and a message containing `says`, that every other item is right, that workers were replaced, and
/// that the supervisor's memory stayed small.
fn bad_item_fails(mode: &str, kind: &str, says: &str) -> Finished {
    bad_item_fails_with(mode, "spawn", kind, says)
}

fn bad_item_fails_with(mode: &str, start: &str, kind: &str, says: &str) -> Finished {
    let run = JobDir::new(standard_job(start)).run(&format!("{mode}@{BAD_ITEM}"), None);
    run.assert_exit_code(EXIT_ITEMS_FAILED);
    let records = run.records();
    let bad = records
        .iter()
        .find(|r| r.item == BAD_ITEM)
        .expect("a record of the bad item");
    assert_eq!(bad.status, "failed", "{bad:?}\n{run}");
    let error = bad.error.as_ref().expect("an error");
    assert_eq!(error.kind, kind, "{bad:?}\n{run}");
    assert!(error.message.contains(says), "expected {says:?} in {bad:?}\n{run}");
    run.assert_others_right(records);
    if kind == "protocol" {
        run.assert_replaced();
    }
    run
}

#[test]
fn garbage_fails_its_item_with_protocol() {
    bad_item_fails("garbage", "protocol", "undecodable message");
}

#[test]
fn garbage_from_a_forked_worker_fails_its_item_with_protocol() {
    bad_item_fails_with("garbage", "forkserver", "protocol", "undecodable message");
}

#[test]
fn a_giant_message_is_refused_before_it_is_read() {
    let run = bad_item_fails(
        "giant",
        "protocol",
        "sent a message of 1073741824 bytes, more than the limit",
    );
    // The 1 GiB never reached the supervisor's memory.
    assert!(run.peak_rss_kib < 64 << 10, "peak RSS {} KiB\n{run}", run.peak_rss_kib);
}

#[test]
fn a_giant_message_from_a_forked_worker_is_refused_before_it_is_read() {
    let run = bad_item_fails_with(
        "giant",
        "forkserver",
        "protocol",
        "sent a message of 1073741824 bytes, more than the limit",
    );
    assert!(run.peak_rss_kib < 64 << 10, "peak RSS {} KiB\n{run}", run.peak_rss_kib);
}

#[test]
fn a_flood_from_a_forked_worker_keeps_the_supervisor_small() {
    bad_item_fails_with("flood", "forkserver", "protocol", "which it was not running");
}

#[test]
fn results_for_a_batch_it_was_not_given_fail_its_item() {
    bad_item_fails("foreign-batch", "protocol", "which it was not running");
}

#[test]
fn a_result_past_the_end_of_its_batch_fails_its_item() {
    bad_item_fails("past-end", "protocol", "which it was not running");
}

#[test]
fn more_results_than_the_batch_has_fail_its_item() {
    bad_item_fails("too-many", "protocol", "which it was not running");
}

#[test]
fn a_flood_of_results_keeps_the_supervisor_small() {
    // ~1.9 MiB frames of results for items it does not have, as fast as the socket takes them.
    bad_item_fails("flood", "protocol", "which it was not running");
}

#[test]
fn a_value_nested_too_deep_fails_its_item_without_a_stack_overflow() {
    bad_item_fails("deep", "protocol", "undecodable message");
}

#[test]
fn a_value_over_the_size_limit_fails_its_item() {
    bad_item_fails("big-value", "protocol", "more than the limit of 1048576 bytes");
}

#[test]
fn a_second_hello_fails_its_item() {
    bad_item_fails("second-hello", "protocol", "unexpected Hello");
}

#[test]
fn a_late_init_failed_fails_its_item_instead_of_the_job() {
    bad_item_fails("late-init-failed", "protocol", "unexpected InitFailed");
}

#[test]
fn a_long_error_message_is_cut() {
    let run = bad_item_fails("long-error", "error", "more bytes cut");
    let records = run.records();
    let bad = records
        .iter()
        .find(|r| r.item == BAD_ITEM)
        .expect("a record of the bad item");
    let message = &bad.error.as_ref().expect("an error").message;
    // 1.5 MiB sent; at most 4 KiB and a short note kept.
    assert!(message.len() <= 4096 + 64, "{} bytes kept", message.len());
    assert!(message.starts_with("eeee"), "{}", &message[..40.min(message.len())]);
}

#[test]
fn a_repeated_result_kills_the_worker_but_costs_no_item() {
    let run = JobDir::new(standard_job("spawn")).run(&format!("repeat@{BAD_ITEM}"), None);
    // The first copy of the result was right and is kept; the copy is the violation, said on stderr.
    run.assert_exit_code(EXIT_OK);
    let records = run.records();
    run.assert_others_right(records);
    let bad = records
        .iter()
        .find(|r| r.item == BAD_ITEM)
        .expect("a record of the bad item");
    assert_eq!(bad.status, "ok", "{bad:?}\n{run}");
    assert!(
        run.stderr
            .contains(&format!("sent results for items {BAD_ITEM}..{}", BAD_ITEM + 1)),
        "{run}"
    );
    run.assert_replaced();
}

/// An honest worker whose task returns 100 MiB fails that item itself (kind `error`, not `protocol`): the value
/// never crosses, the worker lives, and the results file stays small.
#[test]
fn a_huge_value_fails_its_item_in_the_worker() {
    let job = JobDir::new(
        Job::range(0, ITEMS)
            .builtin("fault")
            .args(format!("{{ huge = [{BAD_ITEM}], huge_size = \"100MiB\" }}"))
            .workers(2),
    );
    let run = job.run_honest();
    run.assert_exit_code(EXIT_ITEMS_FAILED);
    let records = run.records();
    assert_eq!(records.len() as u64, ITEMS, "{run}");
    for record in records {
        if record.item == BAD_ITEM {
            let error = record.error.as_ref().expect("an error");
            assert_eq!(error.kind, "error", "{record:?}\n{run}");
            assert!(
                error
                    .message
                    .contains("takes 104857605 bytes encoded, more than the limit of 1048576 bytes"),
                "{record:?}\n{run}"
            );
        } else {
            // `fault` returns each healthy item's own number.
            assert_eq!(record.value, Some(Json::from(record.item)), "{record:?}\n{run}");
        }
    }
    let summary = run.summary();
    assert_eq!(summary["workers_started"].as_u64(), Some(2), "no worker died\n{run}");
    let size = std::fs::metadata(job.results()).expect("results file").len();
    assert!(size < 64 << 10, "results file of {size} bytes\n{run}");
}

/// Workers that break the protocol before they are ready cannot run the job: after three, the run ends with
/// "workers cannot start", naming the violation.
fn cannot_start(mode: &str, says: &str) -> Finished {
    let run = JobDir::new(standard_job("spawn")).run(mode, None);
    run.assert_exit_code(EXIT_WORKERS_CANNOT_START);
    assert!(run.stderr.contains(says), "expected {says:?} on stderr\n{run}");
    run
}

#[test]
fn a_wrong_protocol_version_cannot_start() {
    cannot_start("wrong-version", "speaks protocol version 99, the supervisor 2");
}

#[test]
fn results_before_ready_cannot_start() {
    cannot_start("early-results", "which it was not running");
}

#[test]
fn a_long_init_failed_message_is_cut() {
    let run = cannot_start("long-init-failed", "more bytes cut");
    // The worker sent 1 MiB; what is printed is about 4 KiB.
    assert!(run.stderr.len() < 64 << 10, "{} bytes of stderr", run.stderr.len());
}

/// Workers that ignore SIGTERM and hang on Shutdown are SIGKILLed after the grace period, at the end of a run.
#[test]
fn workers_that_will_not_stop_are_killed_after_the_grace_period() {
    let job = standard_job("spawn").supervise("grace", "1s");
    let run = JobDir::new(job).run("ignore-stop", None);
    run.assert_exit_code(EXIT_OK);
    run.assert_others_right(run.records());
}

/// The same on SIGINT: one worker hangs in an item, the other is idle and ignores Shutdown; both are killed
/// once the 1 s grace period is over, and the supervisor exits 130.
#[test]
fn sigint_kills_workers_that_ignore_shutdown_after_the_grace_period() {
    let job = JobDir::new(
        Job::range(0, 50)
            .builtin("fault")
            .args("{ hang = [0] }")
            .workers(2)
            .supervise("grace", "1s"),
    );
    // Most items are done (the header is a line too): the run is well under way, one worker hangs in item 0.
    let journal = job.journal();
    let ready = move || common::complete_lines(&journal) >= 41;
    let run = job.run("ignore-stop", Some((Box::new(ready), libc::SIGINT)));
    run.assert_exit_code(EXIT_SIGINT);
    assert!(run.stderr.contains("SIGINT received"), "{run}");
}

// ---------------------------------------------------------------------------------------------------------------
// Running the supervisor

/// A job file and its results in a temporary folder.
struct JobDir {
    dir: TempDir,
}

/// A condition polled while the supervisor runs, and the signal to send it once the condition holds.
type SignalWhen = Option<(Box<dyn Fn() -> bool>, libc::c_int)>;

impl JobDir {
    fn new(job: Job) -> JobDir {
        let dir = common::temp_dir("hostile");
        job.write(dir.path());
        JobDir { dir }
    }

    fn results(&self) -> PathBuf {
        self.dir.path().join("results.jsonl")
    }

    fn journal(&self) -> PathBuf {
        self.dir.path().join("results.jsonl.journal")
    }

    /// Runs the job with well-behaved workers.
    fn run_honest(&self) -> Finished {
        self.run("", None)
    }

    /// Runs the job with workers in hostile `mode` (none if empty), watching the supervisor's peak RSS and its descendants;
    /// sends a signal when asked. Fails the test if the run outlives [`RUN_DEADLINE`] or leaves a process.
    fn run(&self, mode: &str, signal_when: SignalWhen) -> Finished {
        let stdout_path = self.dir.path().join("stdout");
        let stderr_path = self.dir.path().join("stderr");
        let mut command = common::run_command(&self.dir.path().join("job.toml"), &self.results(), &["--json"]);
        command
            .env_remove(HOSTILE_ENV)
            .env_remove("RUST_BACKTRACE")
            .stdout(File::create(&stdout_path).expect("stdout file"))
            .stderr(File::create(&stderr_path).expect("stderr file"));
        if !mode.is_empty() {
            command.env(HOSTILE_ENV, mode);
        }
        let shown = format!("{command:?}");
        let mut child = command
            .spawn()
            .unwrap_or_else(|error| panic!("cannot start {shown}: {error}"));
        let pid = child.id() as i32;
        let mut watch = Watch::default();
        let mut signalled = false;
        let deadline = Instant::now() + RUN_DEADLINE;
        let status = loop {
            watch.look(pid);
            if let Some((ready, signal)) = &signal_when
                && !signalled
                && ready()
            {
                send_signal(pid, *signal);
                signalled = true;
            }
            match child.try_wait() {
                Ok(Some(status)) => break status,
                Ok(None) if Instant::now() < deadline => std::thread::sleep(POLL),
                _ => {
                    kill_and_reap(&mut child);
                    kill_survivors(&watch.seen);
                    panic!(
                        "the supervisor was still running after {RUN_DEADLINE:?}: {shown}\nstderr:\n{}",
                        std::fs::read_to_string(&stderr_path).unwrap_or_default()
                    );
                }
            }
        };
        let read = |path: &Path| std::fs::read_to_string(path).unwrap_or_default();
        let finished = Finished {
            command: shown,
            status,
            stdout: read(&stdout_path),
            stderr: read(&stderr_path),
            peak_rss_kib: watch.peak_rss_kib,
            records: if self.results().exists() {
                read_records(&self.results())
            } else {
                Vec::new()
            },
            descendants: watch.seen,
        };
        finished.assert_nothing_left();
        finished.assert_memory_bounded();
        finished
    }
}

fn kill_and_reap(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// What is seen of a running supervisor through `/proc`.
#[derive(Default)]
struct Watch {
    peak_rss_kib: u64,
    /// Every descendant seen (workers, the fork server and its workers).
    seen: Vec<Proc>,
}

impl Watch {
    fn look(&mut self, pid: i32) {
        // VmHWM is the peak so far: the last look before the exit covers the whole run but its last moment.
        if let Some(kib) = status_kib(pid, "VmHWM:") {
            self.peak_rss_kib = self.peak_rss_kib.max(kib);
        }
        for proc in descendants(pid).iter().filter(|stat| !stat.is_zombie()).map(Stat::proc) {
            if !self.seen.contains(&proc) {
                self.seen.push(proc);
            }
        }
    }
}

/// A supervisor run that ended.
struct Finished {
    command: String,
    status: ExitStatus,
    stdout: String,
    stderr: String,
    peak_rss_kib: u64,
    /// The results file's records (none if it was not written).
    records: Vec<Record<Json>>,
    descendants: Vec<Proc>,
}

impl std::fmt::Display for Finished {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "command: {}\nstatus: {}\npeak RSS: {} KiB\nstdout:\n{}\nstderr:\n{}",
            self.command, self.status, self.peak_rss_kib, self.stdout, self.stderr
        )
    }
}

impl Finished {
    fn assert_exit_code(&self, expected: i32) {
        assert_eq!(self.status.code(), Some(expected), "{self}");
    }

    fn summary(&self) -> Json {
        serde_json::from_str(self.stdout.trim()).unwrap_or_else(|error| panic!("stdout is not JSON ({error})\n{self}"))
    }

    fn records(&self) -> &[Record<Json>] {
        &self.records
    }

    /// Every item but [`BAD_ITEM`] has one record, ok, with Σ i² over its range by the closed form.
    fn assert_others_right(&self, records: &[Record<Json>]) {
        let items: BTreeSet<u64> = records.iter().map(|r| r.item).collect();
        assert_eq!(items, (0..ITEMS).collect(), "one record per item\n{self}");
        assert_eq!(records.len() as u64, ITEMS, "one record per item\n{self}");
        for record in records.iter().filter(|r| r.item != BAD_ITEM) {
            let lo = record.item * CHUNK;
            let expected = sum_of_squares(lo, lo + CHUNK);
            assert_eq!(record.status, "ok", "{record:?}\n{self}");
            let value = record.value.as_ref().and_then(Json::as_u64).map(u128::from);
            assert_eq!(value, Some(expected), "item {}: {record:?}\n{self}", record.item);
        }
    }

    /// More worker processes were started than the job runs at once: the hostile one was replaced.
    fn assert_replaced(&self) {
        let started = self.summary()["workers_started"].as_u64().expect("workers_started");
        assert!(started > 2, "workers_started = {started}\n{self}");
    }

    fn assert_memory_bounded(&self) {
        assert!(
            self.peak_rss_kib > 0,
            "the supervisor's peak RSS was never read\n{self}"
        );
        assert!(
            self.peak_rss_kib < PEAK_RSS_LIMIT_KIB,
            "peak RSS {} KiB, limit {PEAK_RSS_LIMIT_KIB} KiB\n{self}",
            self.peak_rss_kib
        );
    }

    /// No worker (or fork server) outlives the run. Orphans die by their parent-death signal, asynchronously:
    /// give them a moment.
    fn assert_nothing_left(&self) {
        common::assert_gone(&self.descendants, self);
    }
}
