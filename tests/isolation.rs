//! Worker isolation and least privilege, end to end: the real `supervisor` binary runs real jobs, and the tests
//! inspect its live workers through `/proc` (status, limits, descriptors, mappings, environment, working
//! directory, credentials, process group) and check what is left behind afterwards (grandchildren, temp files).
//!
//! A live worker is caught with the `fault` task: an item listed in `hang` never ends, one in `spawn` first
//! starts a `sleep 1000` child, and with `pid_dir` each listed item writes `worker=<pid> child=<pid>` to a file
//! before it misbehaves — so the tests know exactly which processes to look at, without guessing from names
//! (other test runs on this machine start `sleep` too). Each behaviour runs under both start methods (`spawn`
//! and `forkserver`) through the `start_methods!` list at the bottom. Expected values come from the test's own
//! setup (the environment it gives the supervisor, `id -u nobody`, `sha256sum`), never from the supervisor.

#![expect(
    dead_code,
    reason = "tests/common is shared by several test binaries; each uses part of it"
)]

mod common;

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fs::{self, File};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use common::procfs::{cwd, descriptors, environment, field, is_running, limit, proc_file, process_group, stat};
use common::{Job, Proc, Record, SUPERVISOR, generated_text, sha256sum, tool, wait_until, write_file};
use tempfile::TempDir;

/// Longest to wait for an event (a pid file, a process to die): a liveness bound, far above real times.
const EVENT: Duration = Duration::from_secs(30);
/// Longest any run may take.
const RUN: Duration = Duration::from_secs(90);

/// The environment the tests give the supervisor (with `TMPDIR` added): nothing inherited from the developer.
const SUPERVISOR_ENV: &[(&str, &str)] = &[
    ("HOME", "/isolation-test-home"),
    ("LANG", "C.UTF-8"),
    ("LC_MESSAGES", "C"),
    ("TZ", "UTC"),
    ("ISOLATION_TEST_SECRET", "hunter2"),
];

// ---------------------------------------------------------------------------------------------------------------
// The behaviours
// ---------------------------------------------------------------------------------------------------------------

/// A worker runs with no_new_privs, core dumps off, the job's descriptor limit, only the protocol's descriptors
/// (not even one its supervisor inherited), in `/`, in its own process group, without temp files or shared
/// memory on any filesystem; with `env_clear` it and its children see only the allow-list plus `[workers] env`.
fn a_live_worker_is_confined(start: &str) {
    let job = JobDir::new(
        fault_job(4, "spawn = [1], hang = [1]")
            .start(start)
            .workers(1)
            .worker_key("open_files", 64)
            .worker_key("env_clear", true)
            .worker_env(&[("FOO", "bar"), ("LANG", "de_DE.UTF-8")])
            .supervise("grace", "1s"),
    );
    // A descriptor without close-on-exec, left open by whoever started the supervisor.
    let inherited_path = write_file(job.dir(), "inherited-descriptor", "not for workers");
    let inherited = File::open(&inherited_path).expect("open");
    let mut run = Run::start(&job, &[], Some(&inherited));
    drop(inherited);
    let (worker, child) = run.wait_for_pids(&job, 1);

    // Privileges and limits.
    let status = proc_file(worker.pid, "status");
    assert_eq!(field(&status, "NoNewPrivs:"), "1", "{status}");
    let limits = proc_file(worker.pid, "limits");
    assert_eq!(limit(&limits, "Max open files"), ("64", "64"), "{limits}");
    assert_eq!(limit(&limits, "Max core file size").0, "0", "{limits}");
    assert_eq!(cwd(worker.pid), PathBuf::from("/"));

    // Descriptors: the supervisor has the inherited one (so the check below can fail); the worker only has
    // /dev/null, its stderr pipe, its sockets and its shared memory.
    let supervisor_fds = descriptors(run.pid());
    assert!(
        supervisor_fds
            .values()
            .any(|target| Path::new(target) == inherited_path),
        "the supervisor did not inherit the test's descriptor: {supervisor_fds:?}"
    );
    let fds = descriptors(worker.pid);
    assert_eq!(fds.get(&0).map(String::as_str), Some("/dev/null"), "{fds:?}");
    assert_eq!(fds.get(&1).map(String::as_str), Some("/dev/null"), "{fds:?}");
    assert!(fds.get(&2).is_some_and(|t| t.starts_with("pipe:")), "{fds:?}");
    for (fd, target) in fds.range(3..) {
        assert!(
            target.starts_with("socket:") || target.starts_with("/memfd:"),
            "worker fd {fd} -> {target} is neither a channel nor shared memory: {fds:?}"
        );
    }

    // No temp file or shared-memory file anywhere: every shared mapping is a memfd, and the private TMPDIR is
    // empty (ipc-channel's bootstrap socket folder is gone once the worker connected).
    for pid in [worker.pid, run.pid()] {
        for line in proc_file(pid, "maps").lines() {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let path = fields.get(5).copied().unwrap_or("");
            assert!(
                !path.starts_with("/dev/shm") && !path.starts_with(&*job.tmp().to_string_lossy()),
                "pid {pid} maps a file in /dev/shm or TMPDIR: {line}"
            );
            if fields[1].ends_with('s') && pid == worker.pid {
                assert!(
                    path.starts_with("/memfd:"),
                    "shared mapping that is not a memfd: {line}"
                );
            }
        }
    }
    assert_eq!(
        entries(&job.tmp()),
        Vec::<String>::new(),
        "TMPDIR while the worker runs"
    );

    // Process group: the worker leads one, and its child is in it.
    assert_eq!(process_group(worker.pid), worker.pid);
    assert_eq!(process_group(child.pid), worker.pid);

    // Environment: the worker's own block is wiped (a forked worker's would be the supervisor's); its child
    // sees exactly the allow-listed variables the supervisor had, plus `env` (which overrides LANG).
    let worker_env = environment(worker.pid);
    assert!(!worker_env.contains_key("ISOLATION_TEST_SECRET"), "{worker_env:?}");
    let mut expected: BTreeMap<String, String> = SUPERVISOR_ENV
        .iter()
        .filter(|(name, _)| *name != "ISOLATION_TEST_SECRET")
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    expected.insert("PATH".into(), test_path());
    expected.insert("TMPDIR".into(), job.tmp().display().to_string());
    expected.insert("FOO".into(), "bar".into());
    expected.insert("LANG".into(), "de_DE.UTF-8".into());
    if start == "spawn" {
        expected.insert("SUPERVISOR_PARENT_PID".into(), run.pid().to_string());
    }
    assert_eq!(environment(child.pid), expected);

    run.signal(libc::SIGINT);
    let finished = run.wait();
    assert_eq!(finished.status.code(), Some(130), "{finished}");
    assert_dead(&[worker, child], &finished);
    assert_eq!(entries(&job.tmp()), Vec::<String>::new(), "TMPDIR after the run");
}

/// Without `env_clear`, `[workers] env` adds to the environment the supervisor had (secrets included: that is
/// what `env_clear` is for).
fn env_without_env_clear_adds_to_the_inherited_environment(start: &str) {
    let job = JobDir::new(
        fault_job(2, "spawn = [0], hang = [0]")
            .start(start)
            .workers(1)
            .worker_env(&[("FOO", "bar")])
            .supervise("grace", "1s"),
    );
    let mut run = Run::start(&job, &[], None);
    let (worker, child) = run.wait_for_pids(&job, 0);
    let env = environment(child.pid);
    assert_eq!(env.get("FOO").map(String::as_str), Some("bar"), "{env:?}");
    assert_eq!(
        env.get("ISOLATION_TEST_SECRET").map(String::as_str),
        Some("hunter2"),
        "{env:?}"
    );
    // Unchanged limits that isolation does not touch, changed ones that it does.
    assert_eq!(
        limit(&proc_file(worker.pid, "limits"), "Max open files"),
        ("1024", "1024")
    );
    run.signal(libc::SIGINT);
    let finished = run.wait();
    assert_eq!(finished.status.code(), Some(130), "{finished}");
    assert_dead(&[worker, child], &finished);
}

/// A worker's child dies with it however the worker ends: killed for a timeout, crashed, or shut down at the
/// end of the job after a successful item.
fn grandchildren_die_with_their_worker(start: &str) {
    let job = JobDir::new(
        fault_job(6, "spawn = [1, 2, 3], hang = [1], segfault = [2]")
            .timeout("2s")
            .start(start)
            .workers(1)
            .batch(1),
    );
    let run = Run::start(&job, &[], None);
    let finished = run.wait();
    assert_eq!(finished.status.code(), Some(1), "{finished}");
    let records = records_by_item(&job);
    assert_eq!(failure_kind(&records[&1]), "timeout", "{finished}");
    assert_eq!(
        records[&2].error.as_ref().and_then(|e| e.signal.as_deref()),
        Some("SIGSEGV")
    );
    assert_eq!(records[&3].status, "ok");
    // The children were seen alive by their workers; each must be gone (a zombie not yet reaped by init is gone).
    let mut spawned = Vec::new();
    for item in [1, 2, 3] {
        let (_, child) = read_pids(&job, item).unwrap_or_else(|| panic!("no pid file for item {item}\n{finished}"));
        spawned.push(child);
    }
    assert_dead(&spawned, &finished);
}

/// A child that left its worker's process group (as a daemon would) escapes the kill of the group, but once its
/// worker is gone it is orphaned to the supervisor, a child subreaper, which kills it: after a crash, and after
/// a worker that ended normally at the end of the job.
fn children_that_left_the_group_are_killed_once_orphaned(start: &str) {
    let job = JobDir::new(
        fault_job(4, "spawn_detached = [1, 2], segfault = [1]")
            .start(start)
            .workers(1)
            .batch(1),
    );
    let finished = Run::start(&job, &[], None).wait();
    assert_eq!(finished.status.code(), Some(1), "{finished}");
    let records = records_by_item(&job);
    assert_eq!(
        records[&1].error.as_ref().and_then(|e| e.signal.as_deref()),
        Some("SIGSEGV")
    );
    assert_eq!(records[&2].status, "ok", "{finished}");
    let spawned: Vec<Proc> = [1, 2]
        .iter()
        .map(|&item| {
            read_pids(&job, item)
                .unwrap_or_else(|| panic!("no pid file for item {item}\n{finished}"))
                .1
        })
        .collect();
    assert_dead(&spawned, &finished);
}

/// `kill -9` of the supervisor takes its worker and the worker's child with it (the worker's parent-death
/// signal kills its whole process group), and leaves no temp file.
fn grandchildren_die_with_a_sigkilled_supervisor(start: &str) {
    let job = JobDir::new(fault_job(2, "spawn = [0], hang = [0]").start(start).workers(1));
    let mut run = Run::start(&job, &[], None);
    let (worker, child) = run.wait_for_pids(&job, 0);
    run.signal(libc::SIGKILL);
    let finished = run.wait();
    assert_eq!(finished.status.signal(), Some(libc::SIGKILL), "{finished}");
    assert_dead(&[worker, child], &finished);
    assert_eq!(entries(&job.tmp()), Vec::<String>::new(), "TMPDIR after kill -9");
}

/// A worker that ignores SIGTERM is not waited for: the supervisor stops workers by message, then SIGKILLs
/// whatever still runs when the grace period ends.
fn a_worker_ignoring_sigterm_is_killed_after_the_grace_period(start: &str) {
    let job = JobDir::new(
        fault_job(2, "spawn = [0], hang = [0], ignore_sigterm = [0]")
            .start(start)
            .workers(1)
            .supervise("grace", "1s"),
    );
    let mut run = Run::start(&job, &[], None);
    let (worker, child) = run.wait_for_pids(&job, 0);
    // The worker really ignores SIGTERM: sent to it directly, it stays.
    // The pid is checked alive (with its start time) just before.
    assert!(is_running(worker));
    common::send_signal(worker.pid, libc::SIGTERM);
    std::thread::sleep(Duration::from_millis(300));
    assert!(is_running(worker), "the worker did not ignore SIGTERM");
    run.signal(libc::SIGTERM);
    let finished = run.wait();
    assert_eq!(finished.status.code(), Some(143), "{finished}");
    assert_dead(&[worker, child], &finished);
}

/// Writing through the pointer to mapped input kills the worker with SIGSEGV and leaves the file unchanged,
/// for a chunk of a `file` input and for a whole file of a `glob` input.
fn writing_to_mapped_input_faults_and_changes_nothing(start: &str) {
    let job = JobDir::new(
        Job::file("input.txt")
            .chunk_bytes("4KiB")
            .builtin("fault")
            .args("{ write_input = [2] }")
            .start(start)
            .workers(1),
    );
    let input = write_file(job.dir(), "input.txt", generated_text(64 << 10, 7, true));
    let before = sha256sum(&input);
    let finished = Run::start(&job, &[], None).wait();
    assert_eq!(finished.status.code(), Some(1), "{finished}");
    let records = records_by_item(&job);
    assert!(records.len() > 3, "{finished}");
    for (item, record) in &records {
        if *item == 2 {
            assert_eq!(failure_kind(record), "signal", "{finished}");
            assert_eq!(record.error.as_ref().and_then(|e| e.signal.as_deref()), Some("SIGSEGV"));
        } else {
            assert_eq!(record.status, "ok", "item {item}\n{finished}");
        }
    }
    assert_eq!(sha256sum(&input), before, "the input changed");

    let glob_job = JobDir::new(
        Job::glob("files/*.txt")
            .builtin("fault")
            .args("{ write_input = [1] }")
            .start(start)
            .workers(1),
    );
    fs::create_dir(glob_job.dir().join("files")).expect("mkdir");
    let files: Vec<PathBuf> = (0..3)
        .map(|k| {
            write_file(
                &glob_job.dir().join("files"),
                &format!("{k}.txt"),
                format!("file {k}\n"),
            )
        })
        .collect();
    let before: Vec<String> = files.iter().map(|f| sha256sum(f)).collect();
    let finished = Run::start(&glob_job, &[], None).wait();
    assert_eq!(finished.status.code(), Some(1), "{finished}");
    let records = records_by_item(&glob_job);
    assert_eq!(
        records[&1].error.as_ref().and_then(|e| e.signal.as_deref()),
        Some("SIGSEGV")
    );
    assert_eq!((records[&0].status.as_str(), records[&2].status.as_str()), ("ok", "ok"));
    let after: Vec<String> = files.iter().map(|f| sha256sum(f)).collect();
    assert_eq!(after, before, "an input file changed");
}

/// With `user = "nobody"` (only when the tests run as root), workers switch user and group after `Init`, stay
/// without privileges, still run items, and still die with their supervisor (the switch clears the
/// parent-death signal; the worker asks for it again).
fn workers_switch_to_the_configured_user(start: &str) {
    if !running_as_root() {
        eprintln!("skipped: switching users needs the tests to run as root");
        return;
    }
    let (uid, gid) = (id("-u", "nobody"), id("-g", "nobody"));
    let job = JobDir::new(
        fault_job(4, "spawn = [2], hang = [2]")
            .start(start)
            .workers(1)
            .batch(1)
            .worker_key("user", "nobody"),
    );
    // The unprivileged worker must be able to write its pid file.
    fs::set_permissions(job.dir(), fs::Permissions::from_mode(0o755)).expect("chmod");
    fs::set_permissions(job.pids(), fs::Permissions::from_mode(0o777)).expect("chmod");
    let mut run = Run::start(&job, &[], None);
    let (worker, child) = run.wait_for_pids(&job, 2);
    let status = proc_file(worker.pid, "status");
    assert_eq!(
        field(&status, "Uid:"),
        format!("{uid}\t{uid}\t{uid}\t{uid}"),
        "{status}"
    );
    assert_eq!(
        field(&status, "Gid:"),
        format!("{gid}\t{gid}\t{gid}\t{gid}"),
        "{status}"
    );
    assert_eq!(field(&status, "Groups:"), gid.to_string(), "{status}");
    assert_eq!(field(&status, "NoNewPrivs:"), "1", "{status}");
    assert_eq!(
        field(&proc_file(child.pid, "status"), "Uid:").split('\t').next(),
        Some(&*uid.to_string())
    );
    run.signal(libc::SIGKILL);
    let finished = run.wait();
    assert_dead(&[worker, child], &finished);
}

/// Asking for a user without the privilege to switch is a job error (exit 2) naming the key, before any worker
/// starts. The supervisor runs as `nobody` here (only possible when the tests run as root).
fn a_user_switch_without_privilege_is_refused(start: &str) {
    if !running_as_root() {
        eprintln!("skipped: running the supervisor as another user needs the tests to run as root");
        return;
    }
    let job = JobDir::new(Job::range(0, 4).builtin("noop").start(start).worker_key("user", "root"));
    fs::set_permissions(job.dir(), fs::Permissions::from_mode(0o777)).expect("chmod");
    let nobody = id("-u", "nobody").parse::<u32>().expect("uid");
    let output = match Command::new(SUPERVISOR)
        .arg("run")
        .arg(job.path())
        .uid(nobody)
        .gid(nobody)
        .env_clear()
        .env("PATH", test_path())
        .current_dir("/")
        .stdin(Stdio::null())
        .output()
    {
        Ok(output) => output,
        // A checkout under a private folder (such as /root) is not reachable for `nobody`.
        Err(error) if error.kind() == std::io::ErrorKind::PermissionDenied => {
            eprintln!("skipped: `nobody` cannot execute {SUPERVISOR}: {error}");
            return;
        }
        Err(error) => panic!("cannot run the supervisor as nobody: {error}"),
    };
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    // Located at the value of `user` (column 8), on whichever line the job file has it.
    let text = fs::read_to_string(job.path()).expect("read the job file");
    let line = 1 + text
        .lines()
        .position(|line| line.starts_with("user = "))
        .expect("the job sets a user");
    assert!(stderr.contains(&format!("job.toml:{line}:8")), "{stderr}");
    assert!(stderr.contains("needs a supervisor running as root"), "{stderr}");
}

/// An unknown user or group is a job error at its key (exit 2), found by `check` before anything runs.
#[test]
fn an_unknown_user_or_group_is_located() {
    if !running_as_root() {
        eprintln!("skipped: without root the missing privilege is reported first");
        return;
    }
    for (key, value, column) in [("user", "no-such-user-7f3a", 8), ("group", "no-such-group-7f3a", 9)] {
        let job = JobDir::new(Job::range(0, 1).builtin("noop").worker_key(key, value));
        let output = Command::new(SUPERVISOR)
            .arg("check")
            .arg(job.path())
            .stdin(Stdio::null())
            .output()
            .expect("run supervisor check");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{stderr}");
        assert!(stderr.contains(&format!("job.toml:6:{column}")), "{stderr}");
        assert!(stderr.contains(&format!("no {key} named \"{value}\"")), "{stderr}");
    }
}

/// Turns each behaviour `fn name(start: &str)` into the tests `spawn::name` and `forkserver::name`.
macro_rules! start_methods {
    ($($name:ident,)*) => {
        mod spawn {
            $(
                #[test]
                fn $name() {
                    super::$name("spawn");
                }
            )*
        }

        mod forkserver {
            $(
                #[test]
                fn $name() {
                    super::$name("forkserver");
                }
            )*
        }
    };
}

start_methods! {
    a_live_worker_is_confined,
    env_without_env_clear_adds_to_the_inherited_environment,
    grandchildren_die_with_their_worker,
    grandchildren_die_with_a_sigkilled_supervisor,
    children_that_left_the_group_are_killed_once_orphaned,
    a_worker_ignoring_sigterm_is_killed_after_the_grace_period,
    writing_to_mapped_input_faults_and_changes_nothing,
    workers_switch_to_the_configured_user,
    a_user_switch_without_privilege_is_refused,
}

/// A job of `items` range items of the `fault` task with these arguments (inline-table keys), each item that
/// spawns recording its pids in the job's `pids/`.
fn fault_job(items: u64, args: &str) -> Job {
    Job::range(0, items)
        .builtin("fault")
        .args(format!("{{ {args}, pid_dir = \"{PIDS_PLACEHOLDER}\" }}"))
}

/// The `fault` task's `pid_dir` in job texts; replaced with the job's own folder by [`JobDir::new`].
const PIDS_PLACEHOLDER: &str = "@PIDS@";

// ---------------------------------------------------------------------------------------------------------------
// Jobs and runs
// ---------------------------------------------------------------------------------------------------------------

/// A job file in a fresh folder, with a `pids/` folder for the `fault` task and a private `tmp/` for TMPDIR.
struct JobDir {
    dir: TempDir,
}

impl JobDir {
    fn new(job: Job) -> JobDir {
        let dir = common::temp_dir("isolation");
        fs::create_dir(dir.path().join("pids")).expect("mkdir pids");
        fs::create_dir(dir.path().join("tmp")).expect("mkdir tmp");
        let job_dir = JobDir { dir };
        let text = job
            .text()
            .replace(PIDS_PLACEHOLDER, &job_dir.pids().display().to_string());
        let job = job_dir;
        write_file(job.dir(), "job.toml", text);
        job
    }

    fn dir(&self) -> &Path {
        self.dir.path()
    }

    fn path(&self) -> PathBuf {
        self.dir().join("job.toml")
    }

    fn pids(&self) -> PathBuf {
        self.dir().join("pids")
    }

    fn tmp(&self) -> PathBuf {
        self.dir().join("tmp")
    }

    fn results(&self) -> PathBuf {
        self.dir().join("results.jsonl")
    }
}

/// A supervisor running a job in the background, with a fixed environment; stdout and stderr go to files.
/// Killed and reaped on drop if the test did not wait for it, and any worker or child it recorded is killed.
struct Run {
    child: Option<Child>,
    command: String,
    dir: PathBuf,
    seen: Vec<Proc>,
}

impl Run {
    /// Starts `supervisor run JOB --results … ARGS`; `inherit` is passed on without close-on-exec.
    fn start(job: &JobDir, args: &[&str], inherit: Option<&File>) -> Run {
        let mut command = common::run_command(&job.path(), &job.results(), args);
        command
            .env_clear()
            .envs(SUPERVISOR_ENV.iter().copied())
            .env("PATH", test_path())
            .env("TMPDIR", job.tmp())
            .current_dir(job.dir())
            .stdout(File::create(job.dir().join("stdout")).expect("stdout file"))
            .stderr(File::create(job.dir().join("stderr")).expect("stderr file"));
        let shown = format!("{command:?}");
        // A plain dup has no close-on-exec: the supervisor inherits it. Closed again right after the spawn.
        let leaked = inherit.map(|file| nix::unistd::dup(file).expect("dup"));
        let child = command.spawn();
        drop(leaked);
        let child = child.unwrap_or_else(|error| panic!("cannot start {shown}: {error}"));
        Run {
            child: Some(child),
            command: shown,
            dir: job.dir().to_path_buf(),
            seen: Vec::new(),
        }
    }

    fn pid(&self) -> i32 {
        self.child.as_ref().map_or(0, |child| child.id() as i32)
    }

    fn signal(&self, signal: libc::c_int) {
        common::send_signal(self.pid(), signal);
    }

    /// Waits until item `item` recorded its worker's pid and its child's; returns both.
    fn wait_for_pids(&mut self, job: &JobDir, item: u64) -> (Proc, Proc) {
        let mut found = None;
        let appeared = wait_until(EVENT, || {
            found = read_pids(job, item);
            found.is_some() || self.exited()
        });
        let Some((worker, child)) = found.filter(|_| appeared) else {
            panic!("item {item} never recorded its pids\n{}", self.context(None));
        };
        self.seen.extend([worker, child]);
        (worker, child)
    }

    fn exited(&mut self) -> bool {
        self.child
            .as_mut()
            .is_none_or(|child| matches!(child.try_wait(), Ok(Some(_))))
    }

    /// Waits for the supervisor to exit (within [`RUN`]).
    fn wait(mut self) -> Finished {
        // What outlives the supervisor is for the test to check (and kill), not for this run's drop.
        self.seen.clear();
        let mut child = self.child.take().expect("running");
        let mut status = None;
        let exited = wait_until(RUN, || {
            status = child.try_wait().ok().flatten();
            status.is_some()
        });
        if !exited {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the supervisor did not exit within {RUN:?}\n{}", self.context(None));
        }
        let status = status.expect("status");
        Finished {
            context: self.context(Some(status)),
            status,
        }
    }

    fn context(&self, status: Option<ExitStatus>) -> String {
        let read = |name: &str| fs::read_to_string(self.dir.join(name)).unwrap_or_default();
        format!(
            "command: {}\nstatus: {status:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.command,
            read("stdout"),
            read("stderr")
        )
    }
}

impl Drop for Run {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        common::kill_survivors(&self.seen);
    }
}

/// A supervisor that exited.
struct Finished {
    status: ExitStatus,
    context: String,
}

impl std::fmt::Display for Finished {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.context)
    }
}

fn records_by_item(job: &JobDir) -> BTreeMap<u64, Record<serde_json::Value>> {
    common::records_by_item(&job.results(), "")
}

fn failure_kind(record: &Record<serde_json::Value>) -> &str {
    record.error.as_ref().map_or("(none)", |error| error.kind.as_str())
}

/// The worker and child pids item `item` recorded in `pids/item-<item>`, with their start times.
fn read_pids(job: &JobDir, item: u64) -> Option<(Proc, Proc)> {
    let text = fs::read_to_string(job.pids().join(format!("item-{item}"))).ok()?;
    let number = |key: &str| -> Option<i32> {
        text.split_whitespace()
            .find_map(|word| word.strip_prefix(key))?
            .parse()
            .ok()
    };
    let worker = number("worker=")?;
    // The child's start time comes from the file: it may be long gone by the time the file is read.
    let child = Proc {
        pid: number("child=")?,
        start_time: text
            .split_whitespace()
            .find_map(|word| word.strip_prefix("child_start="))?
            .parse()
            .ok()?,
    };
    // The worker is read while it runs (when it matters) or never looked at again.
    let worker = Proc {
        pid: worker,
        start_time: stat(worker).map_or(0, |stat| stat.start_time),
    };
    Some((worker, child))
}

// ---------------------------------------------------------------------------------------------------------------
// /proc
// ---------------------------------------------------------------------------------------------------------------

/// Waits until none of `procs` is alive (a zombie waiting for init counts as dead); fails naming survivors.
fn assert_dead(procs: &[Proc], finished: &Finished) {
    common::assert_gone(procs, finished);
}

// ---------------------------------------------------------------------------------------------------------------
// Reference facts
// ---------------------------------------------------------------------------------------------------------------

fn entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .expect("read dir")
        .filter_map(|entry| Some(entry.ok()?.file_name().to_string_lossy().into_owned()))
        .collect();
    names.sort();
    names
}

/// `id FLAG USER`, e.g. the uid of `nobody`.
fn id(flag: &str, user: &str) -> String {
    tool("id", &[OsStr::new(flag), OsStr::new(user)], None, &[0])
        .trim()
        .to_string()
}

fn running_as_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// The PATH the supervisor gets: where `sleep` and `sha256sum` are.
fn test_path() -> String {
    "/usr/local/bin:/usr/bin:/bin".to_string()
}
