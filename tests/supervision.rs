//! Crash isolation and supervision, end to end: the real `supervisor` binary runs real job files whose `fault`
//! items segfault, abort, panic, exit, hang, run out of memory or return errors, and real signals stop it.
//!
//! Each behaviour is a function taking the worker start method (`[workers] start`); the `start_methods!` list
//! at the bottom turns it into a `spawn::…` and a `forkserver::…` test. Expectations come from the fault lists
//! the tests write, never from the supervisor's own output. Events are waited for by polling with a deadline (a
//! worker process appearing, a line on stderr, the marker file a hanging `fault` item leaves behind), never by
//! sleeping a fixed time.
//!
//! Every run is watched: a thread records each descendant of the supervisor as it appears in `/proc`, and each
//! test ends by checking that none of them is left, alive or as an unreaped zombie. A failing test prints the
//! command, its exit status, stdout and stderr.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::fs;
use std::io::Read;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, PoisonError, mpsc};
use std::thread;
use std::time::{Duration, Instant};

use serde::Deserialize;
use serde_json::Value as Json;
use tempfile::TempDir;

#[expect(
    dead_code,
    reason = "the helpers are shared by every test file; this suite uses only some of them"
)]
mod common;

use common::procfs::{Proc, Stat, descendants, find, processes, stat};
use common::{EXIT_ITEMS_FAILED, EXIT_OK, EXIT_SIGINT, EXIT_SIGTERM, Job, Record, Tracker, send_signal};

/// Longest any run may take before the test kills it and fails: a liveness bound far above the real times.
const RUN_DEADLINE: Duration = Duration::from_secs(60);
/// Longest to wait for an event of a running job (workers appearing, a message on stderr).
const EVENT_DEADLINE: Duration = Duration::from_secs(20);
/// Longest to wait for the output pipes to close once the supervisor has exited.
const PIPE_DEADLINE: Duration = Duration::from_secs(10);
/// Interval between two looks at `/proc`, a folder or the child's status while polling.
const POLL: Duration = Duration::from_millis(5);

// ---------------------------------------------------------------------------------------------------------------
// The behaviours
// ---------------------------------------------------------------------------------------------------------------

/// How a faulty item must be recorded.
#[derive(Debug, Clone, Copy)]
struct Expected {
    kind: &'static str,
    signal: Option<&'static str>,
    code: Option<i32>,
}

impl Expected {
    const fn kind(kind: &'static str) -> Expected {
        Expected {
            kind,
            signal: None,
            code: None,
        }
    }

    const fn signal(name: &'static str) -> Expected {
        Expected {
            kind: "signal",
            signal: Some(name),
            code: None,
        }
    }
}

/// Thousands of items with every kind of fault among them, some adjacent and at both ends: each faulty item fails
/// with its own kind, and not one healthy item that shared a batch with a crash is failed or charged a retry.
fn fault_storm_fails_exactly_the_faulty_items(start: &str) {
    const ITEMS: u64 = 3000;
    let segfault = [0, 100, 250, 777, 1200, 1201, 1500, 2000, 2500, 2998];
    let abort = [101, 400, 1300, 1800, 2600];
    let panic = [102, 500, 1400, 1900, 2700];
    let exit = [103, 600, 1600, 2100, 2800];
    let hang = [700, 2200];
    let oom = [800, 2300];
    let error = [104, 900, 1700, 2400, 2999];
    // The timeout must leave an `oom` item time to fill its memory limit and fail. With 256 MiB that took half a
    // second on a loaded machine, and over 3 s at a load average of 15 (the item then failed with `timeout`):
    // 64 MiB is a quarter of the work.
    let job = JobDir::new();
    job.write(
        Job::range(0, ITEMS)
            .chunk(1)
            .builtin("fault")
            .timeout("3s")
            .args(format!(
                "{{ segfault = {segfault:?}, abort = {abort:?}, panic = {panic:?}, exit = {exit:?}, \
                 hang = {hang:?}, oom = {oom:?}, error = {error:?}, oom_cap = \"1GiB\" }}"
            ))
            .start(start)
            .workers(2)
            .worker_key("memory_limit", "64MiB")
            .supervise("max_restarts", 1000),
    );
    let run = job.run(&[]);
    run.assert_exit_code(EXIT_ITEMS_FAILED);

    let mut expected = HashMap::new();
    let lists: [(&[u64], Expected); 7] = [
        (&segfault, Expected::signal("SIGSEGV")),
        (&abort, Expected::signal("SIGABRT")),
        (&panic, Expected::kind("panic")),
        (
            &exit,
            Expected {
                code: Some(3),
                ..Expected::kind("exit")
            },
        ),
        (&hang, Expected::kind("timeout")),
        (&oom, Expected::kind("memory")),
        (&error, Expected::kind("error")),
    ];
    for (items, expectation) in lists {
        for &item in items {
            assert!(
                expected.insert(item, expectation).is_none(),
                "item {item} is listed twice"
            );
        }
    }

    let records = run.records_by_item(&job.results());
    assert_eq!(
        records.keys().copied().collect::<Vec<_>>(),
        (0..ITEMS).collect::<Vec<_>>(),
        "expected exactly one record per item\n{run}"
    );
    for (&item, record) in &records {
        match expected.get(&item) {
            Some(expectation) => {
                record.assert_failed_with(expectation, &run);
                assert_eq!(record.attempts, 1, "item {item}: {record:?}\n{run}");
            }
            None => record.assert_ok_first_time(item, &run),
        }
    }
}

/// An item that fails only on its first run (a crash, a panic, an error) ends ok on its second, and its record
/// keeps the cause of the failed attempt.
fn an_item_that_fails_once_succeeds_on_retry(start: &str) {
    const ITEMS: u64 = 20;
    let failing_once = [(5, "signal"), (9, "error"), (12, "panic")];
    let job = JobDir::new();
    let markers = job.folder("markers");
    job.write(
        Job::range(0, ITEMS)
            .builtin("fault")
            .retries(2)
            .task("retry_backoff", "10ms")
            .args(format!(
                "{{ segfault = [5], error = [9], panic = [12], once_dir = \"{}\" }}",
                markers.display()
            ))
            .start(start)
            .workers(2),
    );
    let run = job.run(&[]);
    run.assert_exit_code(EXIT_OK);

    let records = run.records_by_item(&job.results());
    assert_eq!(records.len() as u64, ITEMS, "{run}");
    for (&item, record) in &records {
        match failing_once.iter().find(|(listed, _)| *listed == item) {
            Some((_, kind)) => {
                assert_eq!(record.status, "ok", "item {item}: {record:?}\n{run}");
                assert_eq!(record.value, Some(Json::from(item)), "item {item}: {record:?}\n{run}");
                assert_eq!(record.attempts, 2, "item {item}: {record:?}\n{run}");
                let kinds: Vec<&str> = record.attempt_errors.iter().map(|f| f.kind.as_str()).collect();
                assert_eq!(kinds, [*kind], "item {item}: {record:?}\n{run}");
            }
            None => record.assert_ok_first_time(item, &run),
        }
    }
}

/// An item that fails every time runs `1 + retries` times and then fails, with the cause of every attempt.
fn an_item_that_always_fails_is_charged_every_attempt(start: &str) {
    let job = JobDir::new();
    job.write(
        Job::range(0, 20)
            .builtin("fault")
            .retries(2)
            .task("retry_backoff", "10ms")
            .args("{ error = [9] }")
            .start(start)
            .workers(2),
    );
    let run = job.run(&[]);
    run.assert_exit_code(EXIT_ITEMS_FAILED);

    let records = run.records_by_item(&job.results());
    let record = records.get(&9).unwrap_or_else(|| panic!("no record for item 9\n{run}"));
    record.assert_failed_with(&Expected::kind("error"), &run);
    assert_eq!(record.attempts, 3, "{record:?}\n{run}");
    let kinds: Vec<&str> = record.attempt_errors.iter().map(|f| f.kind.as_str()).collect();
    assert_eq!(kinds, ["error", "error", "error"], "{record:?}\n{run}");
    for (&item, record) in records.iter().filter(|(item, _)| **item != 9) {
        record.assert_ok_first_time(item, &run);
    }
}

/// `[supervise] max_restarts` of the crash-loop jobs below.
const MAX_RESTARTS: u64 = 5;
/// Workers of the crash-loop jobs below.
const CRASH_LOOP_WORKERS: u64 = 2;
/// Items of the crash-loop jobs below; every one of them segfaults.
const CRASH_LOOP_ITEMS: u64 = 200;

/// A job in which every item kills its worker.
fn crash_loop_job(start: &str) -> JobDir {
    let every_item: Vec<u64> = (0..CRASH_LOOP_ITEMS).collect();
    let job = JobDir::new();
    job.write(
        Job::range(0, CRASH_LOOP_ITEMS)
            .builtin("fault")
            .args(format!("{{ segfault = {every_item:?} }}"))
            .start(start)
            .workers(CRASH_LOOP_WORKERS)
            .supervise("max_restarts", MAX_RESTARTS)
            .supervise("within", "10s"),
    );
    job
}

/// Workers dying faster than `max_restarts` allows stop the job, and the summary says which setting did it.
fn a_crash_loop_stops_the_job_and_names_max_restarts(start: &str) {
    let job = crash_loop_job(start);
    let run = job.run(&[]);
    run.assert_exit_code(EXIT_ITEMS_FAILED);
    assert!(
        run.stdout.contains("max_restarts"),
        "stdout should name max_restarts\n{run}"
    );
}

/// A crash loop is stopped after `max_restarts` deaths instead of starting workers until the input runs out.
fn a_crash_loop_does_not_spin(start: &str) {
    let job = crash_loop_job(start);
    let run = job.run(&["--json"]);
    run.assert_exit_code(EXIT_ITEMS_FAILED);
    let summary = run.summary();
    let stopped = summary.stopped.as_deref().unwrap_or_default();
    assert!(
        stopped.contains("max_restarts"),
        "`stopped` should name max_restarts\n{run}"
    );
    assert!(summary.not_run > 0, "{run}");
    assert!(
        summary.workers_started <= MAX_RESTARTS + 1 + CRASH_LOOP_WORKERS,
        "{} workers started\n{run}",
        summary.workers_started
    );
}

/// Every death in a crash loop is caused by an item, including the one that trips `max_restarts`: that item ran
/// and crashed, so it is failed, not "not run".
fn a_crash_loop_records_the_item_that_caused_the_last_death(start: &str) {
    let job = crash_loop_job(start);
    let run = job.run(&["--json"]);
    run.assert_exit_code(EXIT_ITEMS_FAILED);
    let summary = run.summary();
    let records = run.records_by_item(&job.results());
    assert_eq!(
        summary.failed,
        MAX_RESTARTS + 1,
        "one failed item per worker death\n{run}"
    );
    assert_eq!(records.len() as u64, MAX_RESTARTS + 1, "{run}");
    assert_eq!(summary.not_run, CRASH_LOOP_ITEMS - (MAX_RESTARTS + 1), "{run}");
}

/// `halt = "first-failure"` stops handing out work after the first failed item: the rest is reported not run.
fn halt_on_first_failure_leaves_the_rest_not_run(start: &str) {
    const ITEMS: u64 = 200_000;
    let job = JobDir::new();
    job.write(
        Job::range(0, ITEMS)
            .builtin("fault")
            .args("{ error = [50] }")
            .start(start)
            .workers(2)
            .supervise("halt", "first-failure"),
    );
    let run = job.run(&["--json"]);
    run.assert_exit_code(EXIT_ITEMS_FAILED);
    let summary = run.summary();
    let records = run.records_by_item(&job.results());
    let failed: Vec<&Record<Json>> = records.values().filter(|r| r.status == "failed").collect();
    assert!(summary.not_run > 0, "{run}");
    assert!(!failed.is_empty(), "{run}");
    assert_eq!(summary.failed, failed.len() as u64, "{run}");
    assert_eq!(records.len() as u64 + summary.not_run, ITEMS, "{run}");
    let item_50 = records
        .get(&50)
        .unwrap_or_else(|| panic!("no record for item 50\n{run}"));
    item_50.assert_failed_with(&Expected::kind("error"), &run);
}

/// `max_tasks` replaces a worker after that many items: many workers take part, none runs more than its share.
fn max_tasks_recycles_workers(start: &str) {
    const ITEMS: u64 = 1000;
    const MAX_TASKS: u64 = 50;
    let job = JobDir::new();
    job.write(
        Job::range(0, ITEMS)
            .builtin("noop")
            .start(start)
            .workers(2)
            .worker_key("max_tasks", MAX_TASKS),
    );
    let run = job.run(&["--json"]);
    run.assert_exit_code(EXIT_OK);
    let summary = run.summary();
    let records = run.records_by_item(&job.results());
    assert_eq!(records.len() as u64, ITEMS, "{run}");
    assert!(records.values().all(|r| r.status == "ok"), "{run}");
    let mut items_per_pid: BTreeMap<u32, u64> = BTreeMap::new();
    for record in records.values() {
        *items_per_pid.entry(record.pid).or_default() += 1;
    }
    let least_workers = ITEMS / MAX_TASKS;
    assert!(summary.workers_started >= least_workers, "{run}");
    assert!(
        items_per_pid.len() as u64 >= least_workers,
        "only {} distinct pids\n{run}",
        items_per_pid.len()
    );
    assert!(
        items_per_pid.values().all(|&n| n <= MAX_TASKS),
        "items per worker: {items_per_pid:?}\n{run}"
    );
}

/// An item running past `[task] timeout` fails with `timeout`; the others are unaffected.
fn an_item_past_its_timeout_fails_with_timeout(start: &str) {
    let job = JobDir::new();
    job.write(
        Job::range(0, 20)
            .builtin("fault")
            .timeout("300ms")
            .args("{ hang = [7] }")
            .start(start)
            .workers(2),
    );
    let run = job.run(&[]);
    run.assert_exit_code(EXIT_ITEMS_FAILED);
    let records = run.records_by_item(&job.results());
    assert_eq!(records.len(), 20, "{run}");
    for (&item, record) in &records {
        if item == 7 {
            record.assert_failed_with(&Expected::kind("timeout"), &run);
        } else {
            record.assert_ok_first_time(item, &run);
        }
    }
}

/// An item using more CPU than `[workers] cpu_limit` is killed by the kernel (SIGXCPU) and fails with `timeout`.
fn an_item_past_its_cpu_limit_fails_with_sigxcpu(start: &str) {
    let job = JobDir::new();
    // Each item is 2·10⁹ loop iterations: many CPU seconds in a debug build.
    job.write(
        Job::range(0, 4_000_000_000_u64)
            .chunk(2_000_000_000)
            .builtin("sum-squares")
            .start(start)
            .workers(2)
            .worker_key("cpu_limit", "1s"),
    );
    let run = job.run(&[]);
    run.assert_exit_code(EXIT_ITEMS_FAILED);
    let records = run.records_by_item(&job.results());
    assert_eq!(records.keys().copied().collect::<Vec<_>>(), [0, 1], "{run}");
    for record in records.values() {
        record.assert_failed_with(
            &Expected {
                signal: Some("SIGXCPU"),
                ..Expected::kind("timeout")
            },
            &run,
        );
    }
}

/// A job with one item that allocates until `memory_limit` stops it.
fn oom_job(start: &str) -> JobDir {
    let job = JobDir::new();
    job.write(
        Job::range(0, 4)
            .builtin("fault")
            .args("{ oom = [1], oom_cap = \"1GiB\" }")
            .start(start)
            .workers(1)
            .worker_key("memory_limit", "256MiB"),
    );
    job
}

fn assert_oom_record_keeps_the_allocation_message(run: &Finished, job: &JobDir) {
    run.assert_exit_code(EXIT_ITEMS_FAILED);
    let records = run.records_by_item(&job.results());
    let record = records.get(&1).unwrap_or_else(|| panic!("no record for item 1\n{run}"));
    record.assert_failed_with(&Expected::kind("memory"), run);
    let stderr = record
        .error
        .as_ref()
        .and_then(|e| e.stderr.as_deref())
        .unwrap_or_default();
    assert!(
        stderr.contains("memory allocation of"),
        "the stderr tail should show the failed allocation: {record:?}\n{run}"
    );
}

/// The record of an item that ran out of memory carries the worker's last stderr lines, which name the failed
/// allocation.
fn an_oom_record_keeps_the_allocation_message_in_its_stderr_tail(start: &str) {
    let job = oom_job(start);
    let run = job.run(&[]);
    assert_oom_record_keeps_the_allocation_message(&run, &job);
}

/// The same with `RUST_BACKTRACE=1`, where the worker prints a backtrace after the allocation message.
fn an_oom_record_keeps_the_allocation_message_with_rust_backtrace_set(start: &str) {
    let job = oom_job(start);
    let run = Supervisor::start(&job, &[], &[("RUST_BACKTRACE", "1")]).finish();
    assert_oom_record_keeps_the_allocation_message(&run, &job);
}

/// Items of the slow job below; each takes tens of milliseconds in a debug build, the whole job many seconds.
const SLOW_ITEMS: u64 = 400;

/// A job that runs long enough to be interrupted while both workers are busy.
fn slow_job(start: &str) -> JobDir {
    let job = JobDir::new();
    job.write(
        Job::range(0, SLOW_ITEMS * 5_000_000)
            .chunk(5_000_000)
            .builtin("sum-squares")
            .start(start)
            .workers(2)
            .batch(1),
    );
    job
}

/// Interrupts the slow job once its workers run and checks what a signal stop leaves behind.
fn stop_slow_job_with(start: &str, signal: libc::c_int) -> Finished {
    let job = slow_job(start);
    let mut supervisor = Supervisor::start(&job, &[], &[]);
    supervisor.wait_until("the workers are running", |s| s.live_descendants().len() >= 2);
    supervisor.signal(signal);
    let run = supervisor.finish();
    // Results are flushed at the end: every line must be a whole record, each item at most once.
    let records = run.records_by_item(&job.results());
    assert!(records.keys().all(|&item| item < SLOW_ITEMS), "{run}");
    assert!(
        (records.len() as u64) < SLOW_ITEMS,
        "the job finished before the signal\n{run}"
    );
    run
}

/// SIGINT stops the run gracefully: exit 130, a summary that says so, a well-formed results file, no workers left.
fn sigint_stops_the_run_with_130(start: &str) {
    let run = stop_slow_job_with(start, libc::SIGINT);
    run.assert_exit_code(EXIT_SIGINT);
    assert!(run.stdout.contains("stopped by SIGINT"), "{run}");
}

/// SIGTERM stops the run gracefully with exit 143.
fn sigterm_stops_the_run_with_143(start: &str) {
    let run = stop_slow_job_with(start, libc::SIGTERM);
    run.assert_exit_code(EXIT_SIGTERM);
    assert!(run.stdout.contains("stopped by SIGTERM"), "{run}");
}

/// A job whose every item hangs; each leaves a marker file in `markers` when it starts hanging.
fn hanging_job(start: &str, grace: &str) -> (JobDir, PathBuf) {
    let job = JobDir::new();
    let markers = job.folder("markers");
    let every_item: Vec<u64> = (0..10).collect();
    job.write(
        Job::range(0, 10)
            .builtin("fault")
            .args(format!(
                "{{ hang = {every_item:?}, once_dir = \"{}\" }}",
                markers.display()
            ))
            .start(start)
            .workers(2)
            .supervise("grace", grace),
    );
    (job, markers)
}

/// Starts the hanging job and returns once both workers are stuck in an item.
fn start_hanging(job: &JobDir, markers: &Path) -> Supervisor {
    let mut supervisor = Supervisor::start(job, &[], &[]);
    supervisor.wait_until("both workers hang in an item", |_| files_in(markers) >= 2);
    supervisor
}

/// A second SIGINT does not wait for the grace period: workers stuck in items are killed and the run ends.
fn a_second_sigint_kills_at_once(start: &str) {
    let (job, markers) = hanging_job(start, "30s");
    let mut supervisor = start_hanging(&job, &markers);
    supervisor.signal(libc::SIGINT);
    // Also checks that the first SIGINT did not end the run: `wait_until` fails if the supervisor exits.
    supervisor.wait_until("the supervisor acknowledged the first SIGINT", |s| {
        s.stderr_so_far().contains("SIGINT received")
    });
    supervisor.signal(libc::SIGINT);
    // Well before the 30 s grace period: a liveness bound, not a timing measurement.
    let run = supervisor.finish_within(Duration::from_secs(20));
    run.assert_exit_code(EXIT_SIGINT);
}

/// Workers die with their supervisor, even when it is killed with SIGKILL and cannot stop them itself.
fn workers_die_with_a_sigkilled_supervisor(start: &str) {
    let (job, markers) = hanging_job(start, "5s");
    let supervisor = start_hanging(&job, &markers);
    let workers = supervisor.live_descendants();
    assert!(!workers.is_empty(), "no workers found");
    supervisor.signal(libc::SIGKILL);
    let run = supervisor.wait_exit(RUN_DEADLINE);
    assert_eq!(run.status.and_then(|s| s.signal()), Some(libc::SIGKILL), "{run}");
    // A zombie counts as gone: the orphaned workers' new parent reaps them, not the dead supervisor.
    let alive = || -> Vec<Stat> {
        workers
            .iter()
            .filter_map(|worker| find(worker.proc()))
            .filter(|stat| !stat.is_zombie())
            .collect()
    };
    let gone = common::wait_until(Duration::from_secs(5), || alive().is_empty());
    assert!(
        gone,
        "workers outlived their SIGKILLed supervisor: {:?}\n{run}",
        alive()
    );
}

/// Issue 13: a fork server stopped with SIGSTOP wedged the supervisor, and SIGINT/SIGTERM no longer stopped it:
/// it waited without end for the fork server's reports of its workers' exits. Now every wait on the fork server has
/// a deadline (`forkserver::DEADLINE`), a fork server that misses one is killed, and SIGTERM ends the run with 143
/// within the grace period plus that deadline, leaving no process (the fork server and its workers included).
#[test]
fn a_stopped_fork_server_does_not_keep_sigterm_from_ending_the_run() {
    let job = slow_job("forkserver");
    let mut supervisor = Supervisor::start(&job, &[], &[]);
    supervisor.wait_until("the workers are running", |s| s.live_descendants().len() >= 3);
    // The fork server is the supervisor's only child; the workers are its children.
    let children: Vec<Stat> = processes().into_iter().filter(|s| s.ppid == supervisor.pid()).collect();
    let [fork_server] = children.as_slice() else {
        supervisor.abort(&format!(
            "expected the fork server as the only child, found {children:?}"
        ));
    };
    let stopped = nix::unistd::Pid::from_raw(fork_server.pid);
    nix::sys::signal::kill(stopped, nix::sys::signal::Signal::SIGSTOP).expect("SIGSTOP the fork server");
    supervisor.wait_until("the fork server is stopped", |_| {
        stat(fork_server.pid).is_some_and(|s| s.state == 'T')
    });
    supervisor.signal(libc::SIGTERM);
    // A liveness bound (grace 5 s + the fork server's deadline 5 s + slack for a loaded machine), not a timing
    // measurement.
    let run = supervisor.finish_within(Duration::from_secs(40));
    run.assert_exit_code(EXIT_SIGTERM);
    assert!(run.stdout.contains("stopped by SIGTERM"), "{run}");
}

/// Turns each behaviour `fn name(start: &str)` into the tests `spawn::name` and `forkserver::name`. Attributes
/// written before a name (such as `#[ignore = "…"]`) apply to both.
/// A worker stopped (SIGSTOP) while it holds work must not hang the job: one stopped between items is noticed
/// by its silence (its slot says idle while its batches wait) and replaced, its work run again uncharged; one
/// stopped inside an item is killed at the item's `timeout` (SIGKILL ends a stopped process) and the item
/// retried. Batches of one item keep the worker between items nearly all the time (it waits on its channel), so
/// the stop lands there; either way every item must end `ok` and the run exit 0.
fn a_worker_stopped_between_items_does_not_hang_the_job(start: &str) {
    const ITEMS: u64 = 20_000;
    let job = JobDir::new();
    job.write(
        Job::range(0, ITEMS)
            .builtin("noop")
            .timeout("2s")
            .retries(1)
            .start(start)
            .workers(2)
            .batch(1)
            .supervise("start_timeout", "2s"),
    );
    let journal = {
        let mut name = job.results().into_os_string();
        name.push(".journal");
        PathBuf::from(name)
    };
    let mut supervisor = Supervisor::start(&job, &[], &[]);
    // Ready workers answer items, which the journal shows.
    supervisor.wait_until("workers answer items", |_| {
        fs::read(&journal).is_ok_and(|bytes| bytes.iter().filter(|&&b| b == b'\n').count() > 10)
    });
    // A worker is a descendant with no child of its own (under `forkserver` the fork server is their parent).
    let descendants = supervisor.live_descendants();
    let parents: BTreeSet<i32> = descendants.iter().map(|s| s.ppid).collect();
    let victim = descendants
        .iter()
        .map(|s| s.pid)
        .find(|pid| !parents.contains(pid))
        .expect("a worker");
    // `victim` is a live worker of this supervisor.
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(victim), nix::sys::signal::Signal::SIGSTOP)
        .unwrap_or_else(|error| panic!("SIGSTOP {victim}: {error}"));
    let run = supervisor.finish();
    run.assert_exit_code(EXIT_OK);
    let records = run.records_by_item(&job.results());
    assert_eq!(records.len() as u64, ITEMS, "{run}");
    assert!(records.values().all(|r| r.status == "ok"), "{run}");
    assert!(
        stat(victim).is_none_or(|s| s.is_zombie()),
        "the stopped worker {victim} is still there\n{run}"
    );
    // Either way the stopped worker was noticed: as stalled (between items), or by the timeout of its item,
    // which then ran again.
    let stalled = run.stderr.contains("showed no sign of life");
    let timed_out = records
        .values()
        .any(|r| r.attempts == 2 && r.attempt_errors.first().is_some_and(|e| e.kind == "timeout"));
    assert!(stalled || timed_out, "the stopped worker was never noticed\n{run}");
}

/// A worker stopped (SIGSTOP) inside an item is still killed at the item's `timeout` (SIGKILL ends a stopped
/// process): that item fails with `timeout` and the run ends.
fn a_worker_stopped_inside_an_item_is_killed_at_the_timeout(start: &str) {
    let job = JobDir::new();
    let pids = job.folder("pids");
    job.write(
        Job::range(0, 20)
            .builtin("fault")
            .timeout("1s")
            .args(format!("{{ hang = [7], pid_dir = \"{}\" }}", pids.display()))
            .start(start)
            .workers(2),
    );
    let mut supervisor = Supervisor::start(&job, &[], &[]);
    let marker = pids.join("item-7");
    supervisor.wait_until("item 7 has started", |_| marker.exists());
    let text = fs::read_to_string(&marker).expect("read the pid record");
    let worker: i32 = text
        .split_whitespace()
        .find_map(|field| field.strip_prefix("worker="))
        .and_then(|pid| pid.parse().ok())
        .unwrap_or_else(|| panic!("no worker pid in {text:?}"));
    // `worker` is a live worker of this supervisor, hanging in item 7.
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(worker), nix::sys::signal::Signal::SIGSTOP)
        .unwrap_or_else(|error| panic!("SIGSTOP {worker}: {error}"));
    let run = supervisor.finish();
    run.assert_exit_code(EXIT_ITEMS_FAILED);
    let records = run.records_by_item(&job.results());
    assert_eq!(records.len(), 20, "{run}");
    for (&item, record) in &records {
        if item == 7 {
            record.assert_failed_with(
                &Expected {
                    kind: "timeout",
                    signal: Some("SIGKILL"),
                    code: None,
                },
                &run,
            );
        } else {
            record.assert_ok_first_time(item, &run);
        }
    }
}

macro_rules! start_methods {
    ($($(#[$attribute:meta])* $name:ident,)*) => {
        mod spawn {
            $(
                #[test]
                $(#[$attribute])*
                fn $name() {
                    super::$name("spawn");
                }
            )*
        }

        mod forkserver {
            $(
                #[test]
                $(#[$attribute])*
                fn $name() {
                    super::$name("forkserver");
                }
            )*
        }
    };
}

start_methods! {
    fault_storm_fails_exactly_the_faulty_items,
    an_item_that_fails_once_succeeds_on_retry,
    an_item_that_always_fails_is_charged_every_attempt,
    a_crash_loop_stops_the_job_and_names_max_restarts,
    a_crash_loop_does_not_spin,
    a_crash_loop_records_the_item_that_caused_the_last_death,
    halt_on_first_failure_leaves_the_rest_not_run,
    max_tasks_recycles_workers,
    an_item_past_its_timeout_fails_with_timeout,
    an_item_past_its_cpu_limit_fails_with_sigxcpu,
    an_oom_record_keeps_the_allocation_message_in_its_stderr_tail,
    an_oom_record_keeps_the_allocation_message_with_rust_backtrace_set,
    sigint_stops_the_run_with_130,
    sigterm_stops_the_run_with_143,
    a_second_sigint_kills_at_once,
    workers_die_with_a_sigkilled_supervisor,
    a_worker_stopped_between_items_does_not_hang_the_job,
    a_worker_stopped_inside_an_item_is_killed_at_the_timeout,
}

// ---------------------------------------------------------------------------------------------------------------
// Job files and results
// ---------------------------------------------------------------------------------------------------------------

/// A job file in its own temporary folder, with the results file next to it. The folder goes with the value.
struct JobDir {
    dir: TempDir,
}

impl JobDir {
    fn new() -> JobDir {
        JobDir {
            dir: common::temp_dir("supervision"),
        }
    }

    fn path(&self) -> PathBuf {
        self.dir.path().join("job.toml")
    }

    fn results(&self) -> PathBuf {
        self.dir.path().join("results.jsonl")
    }

    fn write(&self, job: Job) {
        fs::write(self.path(), job.text()).expect("write the job file");
    }

    /// An empty folder inside the job's folder.
    fn folder(&self, name: &str) -> PathBuf {
        let path = self.dir.path().join(name);
        fs::create_dir(&path).expect("create a folder");
        path
    }

    /// Runs the job to the end and checks that it left no process behind.
    fn run(&self, args: &[&str]) -> Finished {
        Supervisor::start(self, args, &[]).finish()
    }
}

/// The checks these tests make of the shared [`Record`] of a `fault` item.
trait FaultRecord {
    fn assert_failed_with(&self, expected: &Expected, run: &Finished);
    fn assert_ok_first_time(&self, item: u64, run: &Finished);
}

impl FaultRecord for Record<Json> {
    fn assert_failed_with(&self, expected: &Expected, run: &Finished) {
        let item = self.item;
        assert_eq!(self.status, "failed", "item {item}: {self:?}\n{run}");
        let error = self
            .error
            .as_ref()
            .unwrap_or_else(|| panic!("item {item} failed without an error: {self:?}\n{run}"));
        assert_eq!(error.kind, expected.kind, "item {item}: {self:?}\n{run}");
        if let Some(signal) = expected.signal {
            assert_eq!(error.signal.as_deref(), Some(signal), "item {item}: {self:?}\n{run}");
        }
        if let Some(code) = expected.code {
            assert_eq!(error.code, Some(code), "item {item}: {self:?}\n{run}");
        }
    }

    /// Ok on its first run, with the `fault` task's value for a healthy item: its own index.
    fn assert_ok_first_time(&self, item: u64, run: &Finished) {
        assert_eq!(self.status, "ok", "item {item}: {self:?}\n{run}");
        assert_eq!(self.value, Some(Json::from(item)), "item {item}: {self:?}\n{run}");
        assert_eq!(self.attempts, 1, "item {item}: {self:?}\n{run}");
    }
}

/// The `--json` summary (the fields these tests look at).
#[derive(Debug, Deserialize)]
struct Summary {
    failed: u64,
    not_run: u64,
    workers_started: u64,
    stopped: Option<String>,
}

// ---------------------------------------------------------------------------------------------------------------
// Running the supervisor
// ---------------------------------------------------------------------------------------------------------------

/// A running `supervisor run`. Dropping it (a test panicked) kills it, and with it its workers through their
/// parent-death signal.
struct Supervisor {
    child: Child,
    command: String,
    stdout: mpsc::Receiver<String>,
    /// Everything written to stderr so far.
    stderr: Arc<Mutex<String>>,
    stderr_closed: mpsc::Receiver<()>,
    tracker: Tracker,
}

impl Supervisor {
    fn start(job: &JobDir, args: &[&str], env: &[(&str, &str)]) -> Supervisor {
        let mut command = common::run_command(&job.path(), &job.results(), args);
        command
            // Worker stderr ends up in failure records: keep it independent of the developer's environment.
            .env_remove("RUST_BACKTRACE")
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let shown = format!("{command:?}");
        let mut child = command
            .spawn()
            .unwrap_or_else(|error| panic!("cannot start {shown}: {error}"));
        let tracker = Tracker::start(child.id() as i32, POLL);

        let (stdout_sender, stdout) = mpsc::channel();
        let mut stdout_pipe = child.stdout.take().expect("stdout is piped");
        thread::spawn(move || {
            let mut text = String::new();
            let _ = stdout_pipe.read_to_string(&mut text);
            let _ = stdout_sender.send(text);
        });
        let stderr = Arc::new(Mutex::new(String::new()));
        let (closed_sender, stderr_closed) = mpsc::channel();
        let mut stderr_pipe = child.stderr.take().expect("stderr is piped");
        let shared = Arc::clone(&stderr);
        thread::spawn(move || {
            let mut buffer = [0u8; 4096];
            while let Ok(n @ 1..) = stderr_pipe.read(&mut buffer) {
                let mut text = shared.lock().unwrap_or_else(PoisonError::into_inner);
                text.push_str(&String::from_utf8_lossy(&buffer[..n]));
            }
            let _ = closed_sender.send(());
        });

        Supervisor {
            child,
            command: shown,
            stdout,
            stderr,
            stderr_closed,
            tracker,
        }
    }

    fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    fn signal(&self, signal: libc::c_int) {
        send_signal(self.pid(), signal);
    }

    fn stderr_so_far(&self) -> String {
        self.stderr.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// The supervisor's descendants that are alive now (its workers).
    fn live_descendants(&self) -> Vec<Stat> {
        descendants(self.pid()).into_iter().filter(|s| !s.is_zombie()).collect()
    }

    /// Polls `ready` until it holds; fails the test if the supervisor exits first or [`EVENT_DEADLINE`] passes.
    fn wait_until(&mut self, what: &str, mut ready: impl FnMut(&Supervisor) -> bool) {
        let deadline = Instant::now() + EVENT_DEADLINE;
        while !ready(self) {
            if let Ok(Some(status)) = self.child.try_wait() {
                let run = self.collect(Some(status));
                panic!("the supervisor exited before {what}\n{run}");
            }
            if Instant::now() >= deadline {
                self.abort(&format!("timed out after {EVENT_DEADLINE:?} waiting until {what}"));
            }
            thread::sleep(POLL);
        }
    }

    /// Waits for the supervisor to exit, within `deadline` (else kills it and fails the test).
    fn wait_exit(mut self, deadline: Duration) -> Finished {
        let end = Instant::now() + deadline;
        loop {
            match self.child.try_wait() {
                Ok(Some(status)) => return self.collect(Some(status)),
                Ok(None) if Instant::now() < end => thread::sleep(POLL),
                Ok(None) => self.abort(&format!("the supervisor was still running after {deadline:?}")),
                Err(error) => self.abort(&format!("cannot wait for the supervisor: {error}")),
            }
        }
    }

    /// Waits for the supervisor to exit within `deadline` and checks that it left no process behind.
    fn finish_within(self, deadline: Duration) -> Finished {
        let run = self.wait_exit(deadline);
        run.assert_nothing_left();
        run
    }

    fn finish(self) -> Finished {
        self.finish_within(RUN_DEADLINE)
    }

    /// Kills the supervisor and fails the test, showing everything it wrote.
    fn abort(&mut self, why: &str) -> ! {
        let _ = self.child.kill();
        let status = self.child.wait().ok();
        let run = self.collect(status);
        panic!("{why}\n{run}");
    }

    fn collect(&mut self, status: Option<ExitStatus>) -> Finished {
        let descendants = self.tracker.stop();
        // The pipes close when the supervisor exits, unless a process it left behind holds them open.
        let stdout = self
            .stdout
            .recv_timeout(PIPE_DEADLINE)
            .unwrap_or_else(|_| "<stdout still open: a leftover process holds it>".to_string());
        let _ = self.stderr_closed.recv_timeout(PIPE_DEADLINE);
        Finished {
            command: self.command.clone(),
            status,
            stdout,
            stderr: self.stderr_so_far(),
            pid: self.pid(),
            descendants,
        }
    }
}

impl Drop for Supervisor {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        self.tracker.stop();
    }
}

/// A supervisor run that has ended.
struct Finished {
    command: String,
    status: Option<ExitStatus>,
    stdout: String,
    stderr: String,
    pid: i32,
    /// Every descendant seen while it ran.
    descendants: BTreeSet<Proc>,
}

impl fmt::Display for Finished {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let status = self
            .status
            .map_or("exit status: unknown".to_string(), |s| s.to_string());
        write!(
            f,
            "command: {}\n{status}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.command, self.stdout, self.stderr
        )
    }
}

impl Finished {
    fn assert_exit_code(&self, expected: i32) {
        assert_eq!(
            self.status.and_then(|s| s.code()),
            Some(expected),
            "unexpected exit status\n{self}"
        );
    }

    fn summary(&self) -> Summary {
        serde_json::from_str(self.stdout.trim())
            .unwrap_or_else(|error| panic!("stdout is not a summary: {error}\n{self}"))
    }

    /// The results file, by item; fails on a line that is not a record and on a second record of an item.
    fn records_by_item(&self, path: &Path) -> BTreeMap<u64, Record<Json>> {
        common::records_by_item(path, &self.to_string())
    }

    /// No process of this run is left: none it started (alive or an unreaped zombie), none still naming it as
    /// parent, and no worker whose environment names it as its supervisor.
    fn assert_nothing_left(&self) {
        common::leftovers::assert_nothing_left_of(self.pid, &self.descendants, self);
    }
}

fn files_in(folder: &Path) -> usize {
    fs::read_dir(folder).map_or(0, |entries| entries.count())
}
