//! The one leftover check: after a run, no process of this test may be left. A test finds its processes by the
//! marker in their environment ([`assert_no_leftovers`]), by the processes it saw ([`assert_gone`], with a
//! [`Tracker`] that records a supervisor's descendants as they appear), by process group
//! ([`assert_group_empty`]), or by parent ([`assert_nothing_left_of`], which checks once: its caller knows the run
//! is over). The others wait a little for kills already sent to land. Every check SIGKILLs whatever it still finds,
//! so that a failing test leaves nothing behind, and fails naming it. Reading `/proc` is `procfs.rs`'s.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::common::procfs::{Proc, Stat, descendants, environ, find, is_running, processes, workers_claiming};
use crate::common::run::wait_until;

/// How long a check waits for processes already being killed to go.
pub const SETTLE: Duration = Duration::from_secs(10);

/// The environment variable that tags the user's commands of one test (set through `[task] env`).
pub const MARKER_VAR: &str = "TEST_MARKER";

/// A fresh temporary folder for a test of `suite` that runs commands, and the marker for those commands (the
/// folder's path, so no other test's commands carry it), for [`crate::common::Job::marker`] and
/// [`assert_no_leftovers`].
pub fn marked_temp_dir(suite: &str) -> (tempfile::TempDir, String) {
    let dir = crate::common::job::temp_dir(suite);
    let marker = dir.path().to_string_lossy().into_owned();
    (dir, marker)
}

/// SIGKILLs `pid`. A failing kill (the process is already gone) is no error here: callers pass a pid they just saw
/// as a process of this test (for a `Proc`, checked against its start time), so only a pid recycled in between
/// could be hit, a tiny risk.
fn kill(pid: i32) {
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
}

/// SIGKILLs whichever of `procs` still run, so that a failing test leaves no process behind; returns them.
pub fn kill_survivors(procs: &[Proc]) -> Vec<Proc> {
    let survivors: Vec<Proc> = procs.iter().copied().filter(|p| is_running(*p)).collect();
    for proc in &survivors {
        kill(proc.pid);
    }
    survivors
}

/// Waits (up to [`SETTLE`]) until none of `procs` runs (a zombie waiting for init counts as gone); kills and names
/// the survivors otherwise, with `context` (the run's command and output) in the message.
pub fn assert_gone(procs: &[Proc], context: &dyn std::fmt::Display) {
    let gone = wait_until(SETTLE, || procs.iter().all(|p| !is_running(*p)));
    let survivors = kill_survivors(procs);
    assert!(gone, "still running after the run: {survivors:?}\n{context}");
}

/// Live processes whose environment holds `TEST_MARKER=<value>`: the user's commands of one test.
pub fn marked_processes(value: &str) -> Vec<i32> {
    let marker = format!("{MARKER_VAR}={value}");
    processes()
        .into_iter()
        .filter(|stat| !stat.is_zombie() && environ(stat.pid).contains(&marker))
        .map(|stat| stat.pid)
        .collect()
}

/// Asserts that no command carrying this test's marker is still running (waiting a little for SIGKILLs to land),
/// and kills any that is.
pub fn assert_no_leftovers(marker: &str) {
    let gone = wait_until(SETTLE, || marked_processes(marker).is_empty());
    let left = kill_marked(marker);
    assert!(gone, "processes left behind: {left:?}");
}

/// SIGKILLs every process marked with `marker` (see [`marked_processes`]); returns their pids.
pub fn kill_marked(marker: &str) -> Vec<i32> {
    let left = marked_processes(marker);
    for &pid in &left {
        kill(pid);
    }
    left
}

/// Live members of the process group `pgrp`; waits until there are none, kills and names them otherwise.
pub fn assert_group_empty(pgrp: i32, context: &dyn std::fmt::Display) {
    let members = || crate::common::procfs::group_members(pgrp);
    let gone = wait_until(SETTLE, || members().is_empty());
    let left = members();
    for proc in &left {
        kill(proc.pid);
    }
    assert!(gone, "process group {pgrp} still has {left:?}\n{context}");
}

/// No process of the exited supervisor `pid` is left: none of those `seen` during the run (alive or an unreaped
/// zombie), none still naming it as parent, and no worker whose environment names it as its supervisor (which
/// catches a short-lived worker nobody saw). Checked once, without waiting: the caller knows the run is over.
pub fn assert_nothing_left_of(pid: i32, seen: &BTreeSet<Proc>, context: &dyn std::fmt::Display) {
    let mut left: BTreeMap<i32, String> = BTreeMap::new();
    for proc in seen {
        if let Some(stat) = find(*proc) {
            left.insert(stat.pid, format!("a process it started (state {})", stat.state));
        }
    }
    for stat in processes() {
        if stat.ppid == pid {
            left.insert(stat.pid, format!("a child (state {})", stat.state));
        }
    }
    for proc in workers_claiming(pid) {
        left.entry(proc.pid)
            .or_insert_with(|| "a worker it started".to_string());
    }
    for pid in left.keys() {
        kill(*pid);
    }
    assert!(
        left.is_empty(),
        "processes left after the supervisor exited: {left:?}\n{context}"
    );
}

/// Records every descendant of a process as it appears, on its own thread, until stopped: what a run started, for
/// the leftover check after it (a descendant may be reparented to init before the run ends).
#[derive(Debug)]
pub struct Tracker {
    seen: Arc<Mutex<BTreeSet<Proc>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Tracker {
    /// Starts looking at the descendants of `root` every `every`.
    pub fn start(root: i32, every: Duration) -> Tracker {
        let seen = Arc::new(Mutex::new(BTreeSet::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (seen, stop) = (Arc::clone(&seen), Arc::clone(&stop));
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let found = descendants(root);
                    seen.lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .extend(found.iter().map(Stat::proc));
                    std::thread::sleep(every);
                }
            })
        };
        Tracker {
            seen,
            stop,
            thread: Some(thread),
        }
    }

    /// Stops tracking and returns every descendant seen.
    pub fn stop(&mut self) -> BTreeSet<Proc> {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        self.seen.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }
}

impl Drop for Tracker {
    fn drop(&mut self) {
        let seen = self.stop();
        let seen: Vec<Proc> = seen.into_iter().collect();
        kill_survivors(&seen);
    }
}
