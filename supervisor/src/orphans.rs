//! Orphans: processes a task started that left its worker's process group and outlived their parent.
//!
//! Killing a dead worker's process group (`linux::kill_worker_group`) takes every process the task started, except
//! those that moved to another group or session (`setpgid`, `setsid`, a daemon's double fork). When such a
//! process loses its parent, the kernel hands it to the nearest ancestor that is a *child subreaper*
//! (`PR_SET_CHILD_SUBREAPER`) instead of init. `supervisor run` makes itself one ([`adopt`]), so these orphans
//! become its children, and after each worker's exit (and at the end of the run) it [`sweep`]s: every child that
//! is not one of its own workers or its fork server is SIGKILLed and reaped. Sweeps after exits run on one sweeper
//! thread and coalesce, at most one per `SWEEP_REST` (50 ms); the last one, at the end, scans all of `/proc`.
//!
//! Telling orphans from workers needs care: a worker just spawned is a child before anyone knows its pid. So
//! workers are spawned while holding the registry lock ([`spawn_registered`]) and a sweep holds it too. A sweep
//! only kills and reaps processes that are its own unreaped children, by pid: their pids cannot be reused until
//! they are reaped, so no other process can be hit. What this cannot catch: orphans while their parent still
//! lives outside the group, and everything after the supervisor itself is `kill -9`ed (the subreaper is gone
//! and the orphans go to init).

use std::collections::BTreeSet;
use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc as std_mpsc;
use std::sync::{Mutex, OnceLock};

/// Whether this process is a subreaper that sweeps (only `supervisor run` with worker processes).
static ADOPTING: AtomicBool = AtomicBool::new(false);

/// Children of this process that are not orphans: workers it spawned and the fork server.
static KNOWN: Mutex<BTreeSet<i32>> = Mutex::new(BTreeSet::new());

/// Makes this process a child subreaper, and sweeps from now on.
pub fn adopt() -> io::Result<()> {
    // SAFETY: prctl with PR_SET_CHILD_SUBREAPER takes integers only.
    if unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) } != 0 {
        return Err(io::Error::last_os_error());
    }
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

/// Sweeps with a full scan of `/proc` until a sweep finds nothing (at most a few rounds a short while apart): a
/// process killed by one sweep may leave orphans of its own, which reach this process only after it died.
pub fn sweep_until_clean() {
    if !ADOPTING.load(Ordering::Relaxed) {
        return;
    }
    for _ in 0..5 {
        if kill_unknown(&children_by_scan()) == 0 {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// Kills and reaps those of `candidates` (found without the lock) that are, with the lock held, still children of
/// this process and not known. Under the lock a new worker is either already known or not yet started, and no
/// other sweep can reap a candidate, so a pid checked here cannot be reused before it is killed.
fn kill_unknown(candidates: &[i32]) -> usize {
    let me = std::process::id() as i32;
    let known = KNOWN.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let mut killed = 0;
    for &pid in candidates {
        if known.contains(&pid) || parent_of(pid) != Some(me) {
            continue;
        }
        // SAFETY: kill takes integers. `pid` is an unreaped child of this process, so it names that child.
        unsafe { libc::kill(pid, libc::SIGKILL) };
        let _ = crate::linux::wait4(pid);
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
    let me = std::process::id() as i32;
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&pid| parent_of(pid) == Some(me))
        .collect()
}

fn parent_of(pid: i32) -> Option<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may contain spaces): state, then the parent's pid.
    stat[stat.rfind(')')? + 1..].split_whitespace().nth(1)?.parse().ok()
}
