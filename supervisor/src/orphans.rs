//! Orphans: processes a task started that left its worker's process group and outlived their parent.
//!
//! Killing a dead worker's process group (`sys::process::reap_and_kill_group`) takes every process the task started, except
//! those that moved to another group or session (`setpgid`, `setsid`, a daemon's double fork). When such a
//! process loses its parent, the kernel hands it to the nearest ancestor that is a *child subreaper*
//! (`PR_SET_CHILD_SUBREAPER`) instead of init. `supervisor run` makes itself one ([`adopt`]), so these orphans
//! become its children, and after each worker's exit (and at the end of the run) it [`sweep`]s: every child that
//! is not one of its own workers or its fork server is SIGKILLed and reaped. Sweeps after exits run on one sweeper
//! thread and coalesce, at most one per `SWEEP_REST` (50 ms).
//!
//! The last sweep, at the end of the run ([`sweep_until_clean`]), loops until no descendant of the supervisor is
//! left at all, not merely until it finds no child to kill: a task's process killed with its group (or by a sweep)
//! dies a moment after the signal, and only then do the children it had moved to a session of their own
//! (`setsid`) become the supervisor's. A sweep that stopped at the first round without children left such
//! processes behind after 5 of 20 complete runs of the job of the regression test
//! `no_process_is_left_after_runs_whose_grandchildren_call_setsid` (commands whose grandchildren call `setsid`,
//! at once or a moment later), and after none of 20 with the loop. The loop is bounded ([`FINAL_SWEEP_LIMIT`]): a process that cannot die in that time is reported, not waited for.
//!
//! Telling orphans from workers needs care: a worker just spawned is a child before anyone knows its pid. So
//! workers are spawned while holding the registry lock ([`spawn_registered`]) and a sweep holds it too. A sweep
//! only kills and reaps processes that are its own unreaped children, by pid: their pids cannot be reused until
//! they are reaped, so no other process can be hit. What this cannot catch: orphans while their parent still
//! lives outside the group, and everything after the supervisor itself is `kill -9`ed (the subreaper is gone
//! and the orphans go to init).

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::time::{Duration, Instant};

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc as std_mpsc;
use std::sync::{Mutex, OnceLock};
use sys::process::{Pid, Signal};

/// Whether this process is a subreaper that sweeps (only `supervisor run` with worker processes).
static ADOPTING: AtomicBool = AtomicBool::new(false);

/// Children of this process that are not orphans: workers it spawned and the fork server.
static KNOWN: Mutex<BTreeSet<i32>> = Mutex::new(BTreeSet::new());

/// Makes this process a child subreaper, and sweeps from now on.
pub fn adopt() -> io::Result<()> {
    sys::process::become_subreaper()?;
    ADOPTING.store(true, Ordering::Relaxed);
    Ok(())
}

/// Starts a child with `spawn` (which returns it and its pid) and records the pid as known, with the registry
/// locked throughout, so that no sweep can take the new child for an orphan.
pub fn spawn_registered<T>(spawn: impl FnOnce() -> io::Result<(T, i32)>) -> io::Result<T> {
    let mut known = KNOWN.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let (child, pid) = spawn()?;
    known.insert(pid);
    Ok(child)
}

/// Records `pid` as a known child (the fork server).
pub fn register(pid: i32) {
    KNOWN
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .insert(pid);
}

/// Forgets a known child once it is reaped (its pid may then be reused by anyone).
pub fn forget(pid: i32) {
    KNOWN
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .remove(&pid);
}

/// Asks for a [`sweep`] soon, on the sweeper thread (started on first use): requests that come while it sweeps
/// or rests are served by one sweep, so a job whose workers die by the hundred does not pay a sweep per death.
/// Does nothing unless [`adopt`] was called.
pub fn request_sweep() {
    if !ADOPTING.load(Ordering::Relaxed) {
        return;
    }
    static SWEEPER: OnceLock<Option<std_mpsc::SyncSender<()>>> = OnceLock::new();
    let sweeper = SWEEPER.get_or_init(|| {
        let (sender, requests) = std_mpsc::sync_channel::<()>(1);
        let started = std::thread::Builder::new()
            .name("orphan-sweeper".into())
            .spawn(move || {
                while requests.recv().is_ok() {
                    sweep();
                    // Requests made meanwhile are already queued (one is enough); rest a little so they coalesce.
                    std::thread::sleep(SWEEP_REST);
                }
            });
        started.ok().map(|_| sender)
    });
    match sweeper {
        // A full queue means a sweep is already due: nothing to add.
        Some(sender) => {
            let _ = sender.try_send(());
        }
        None => {
            sweep();
        }
    }
}

/// Pause of the sweeper thread after each sweep.
const SWEEP_REST: std::time::Duration = std::time::Duration::from_millis(50);

/// SIGKILLs and reaps every child of this process that is neither a worker nor the fork server; returns how many.
/// Does nothing unless [`adopt`] was called. Cheap: it reads this process's own threads' `children` files.
pub fn sweep() -> usize {
    if !ADOPTING.load(Ordering::Relaxed) {
        return 0;
    }
    let candidates = thread_children().unwrap_or_else(children_by_scan);
    kill_unknown(&candidates)
}

/// Longest the end-of-run sweep keeps going while descendants of the supervisor remain.
pub const FINAL_SWEEP_LIMIT: Duration = Duration::from_secs(5);

/// Pause between two rounds of the end-of-run sweep: time for killed processes to die and their children to be
/// handed to this process.
const FINAL_SWEEP_ROUND: Duration = Duration::from_millis(10);

/// The end-of-run sweep: kills and reaps orphans, round after round, until no process descends from this one
/// (except known children and what they started) or [`FINAL_SWEEP_LIMIT`] has passed. Returns the pids still
/// left then (empty when clean), which the caller reports.
pub fn sweep_until_clean() -> Vec<i32> {
    if !ADOPTING.load(Ordering::Relaxed) {
        return Vec::new();
    }
    let deadline = Instant::now() + FINAL_SWEEP_LIMIT;
    loop {
        let parents = process_table();
        let children: Vec<i32> = parents
            .iter()
            .filter(|&(_, &parent)| parent == me())
            .map(|(&pid, _)| pid)
            .collect();
        kill_unknown(&children);
        let left = unknown_descendants(&process_table());
        if left.is_empty() || Instant::now() >= deadline {
            return left;
        }
        std::thread::sleep(FINAL_SWEEP_ROUND);
    }
}

/// Every process that descends from this one, except known children and their descendants, from a table of
/// parents.
fn unknown_descendants(parents: &BTreeMap<i32, i32>) -> Vec<i32> {
    let known = KNOWN.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
    let mut children: BTreeMap<i32, Vec<i32>> = BTreeMap::new();
    for (&pid, &parent) in parents {
        children.entry(parent).or_default().push(pid);
    }
    let mut found = Vec::new();
    let mut pending = vec![me()];
    while let Some(pid) = pending.pop() {
        for &child in children.get(&pid).map_or(&[][..], Vec::as_slice) {
            if !known.contains(&child) {
                found.push(child);
                pending.push(child);
            }
        }
    }
    found
}

fn me() -> i32 {
    std::process::id() as i32
}

/// Kills and reaps those of `candidates` (found without the lock) that are, with the lock held, still children of
/// this process and not known. Under the lock a new worker is either already known or not yet started, and no
/// other sweep can reap a candidate, so a pid checked here cannot be reused before it is killed.
fn kill_unknown(candidates: &[i32]) -> usize {
    let me = me();
    let known = KNOWN.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let mut killed = 0;
    for &pid in candidates {
        if known.contains(&pid) || parent_of(pid) != Some(me) {
            continue;
        }
        // `pid` is an unreaped child of this process, so it names that child.
        let _ = sys::process::signal_child(Pid::from_raw(pid), Signal::SIGKILL);
        let _ = sys::process::wait4(Pid::from_raw(pid));
        killed += 1;
    }
    drop(known);
    killed
}

/// The children of every thread of this process (`/proc/self/task/<tid>/children`), or `None` when the kernel
/// does not provide those files.
fn thread_children() -> Option<Vec<i32>> {
    let mut children = Vec::new();
    for task in std::fs::read_dir("/proc/self/task").ok()? {
        let text = std::fs::read_to_string(task.ok()?.path().join("children")).ok()?;
        children.extend(text.split_whitespace().filter_map(|pid| pid.parse::<i32>().ok()));
    }
    Some(children)
}

/// The pids whose parent is this process, from every `/proc/<pid>/stat`.
fn children_by_scan() -> Vec<i32> {
    process_table()
        .into_iter()
        .filter(|&(_, parent)| parent == me())
        .map(|(pid, _)| pid)
        .collect()
}

/// Every process of the machine with its parent, from every `/proc/<pid>/stat`.
fn process_table() -> BTreeMap<i32, i32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return BTreeMap::new();
    };
    entries
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter_map(|pid| Some((pid, parent_of(pid)?)))
        .collect()
}

fn parent_of(pid: i32) -> Option<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may contain spaces): state, then the parent's pid.
    stat[stat.rfind(')')? + 1..].split_whitespace().nth(1)?.parse().ok()
}
