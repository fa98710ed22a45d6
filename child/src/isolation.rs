//! What a worker process does to confine itself: least privilege and a clean slate.
//!
//! Everything here runs in the worker's own start-up, not in a `pre_exec` hook of the supervisor (a hook forces
//! the slow fork path for every spawn), and the same code serves exec'ed and forked workers. Two stages:
//!
//! - [`at_start`], before the worker connects: close every inherited descriptor above stderr, become the leader
//!   of a new process group (so that the supervisor can kill the worker's descendants with it), set
//!   `PR_SET_NO_NEW_PRIVS`, move to `/` (every path a worker is given is absolute), and arrange to take the whole
//!   group down when the supervisor (or fork server) dies.
//! - at `Init`: [`apply_init`] bounds `RLIMIT_NOFILE` and sets the environment the job allows; after the worker
//!   has opened its progress slot and mapped its input, [`drop_privileges`] switches to the job's user and
//!   group. The order matters: the slot is opened through `/proc/<supervisor>/fd/<n>`, which an unprivileged
//!   process may not open, and the descriptors stay valid after the switch.
//!
//! Policy (which user, which variables) is the supervisor's; this module only applies what `Init` says, through
//! the system calls of the `sys` crate.

use std::sync::atomic::{AtomicI32, Ordering};

use shared::protocol::{Credentials, Isolation, WorkerLimits};
use sys::process::{self, Pid, Signal};

/// The signal a worker asks for when its parent dies (`PR_SET_PDEATHSIG`). Not SIGKILL: its handler first
/// SIGKILLs the worker's process group, so that the task's own children die with the worker.
pub const PARENT_DEATH_SIGNAL: Signal = Signal::SIGUSR2;

/// The pid that must stay this worker's parent (0: not checked).
static PARENT: AtomicI32 = AtomicI32::new(0);

/// Start-up confinement, before anything else happens in the worker. `parent` is the process that must be the
/// worker's parent (the supervisor, or the fork server): if it is already gone, this fails.
pub fn at_start(parent: Option<i32>) -> Result<(), String> {
    // An exec'ed worker inherits whatever its supervisor's own parent left open without close-on-exec (a forked
    // worker's were already closed by the fork server); none of them is the worker's business, and the worker
    // has opened nothing yet.
    process::close_descriptors_from(3);
    process::lead_new_group().map_err(|error| format!("setpgid: {error}"))?;
    process::forbid_new_privileges().map_err(|error| format!("prctl(PR_SET_NO_NEW_PRIVS): {error}"))?;
    std::env::set_current_dir("/").map_err(|error| format!("cannot change directory to /: {error}"))?;
    process::kill_own_group_on(PARENT_DEATH_SIGNAL).map_err(|error| format!("sigaction: {error}"))?;
    PARENT.store(parent.unwrap_or(0), Ordering::Relaxed);
    die_with_parent()
}

/// Whether the worker's parent (supervisor or fork server) is gone: the worker was reparented. Always false
/// when no parent was given (worker threads, which share the supervisor's process).
pub fn parent_gone() -> bool {
    let expected = PARENT.load(Ordering::Relaxed);
    expected != 0 && process::parent() != Pid::from_raw(expected)
}

/// If the parent is gone, SIGKILLs the worker's process group and the worker: nobody is left to reap the task's
/// children. A backstop for the parent-death signal, which a task could block or ignore, and which can arrive
/// after a worker that saw its channel close has already exited. Returns only while the parent lives.
pub fn leave_if_orphaned() {
    if parent_gone() {
        process::kill_own_group(PARENT_DEATH_SIGNAL as i32);
    }
}

/// Asks the kernel for [`PARENT_DEATH_SIGNAL`] when the parent dies, then checks that the parent is still the
/// expected one (it may have died before the request was made). Called at start and again after a credential
/// change, which clears the request.
fn die_with_parent() -> Result<(), String> {
    process::signal_on_parent_death(PARENT_DEATH_SIGNAL)
        .map_err(|error| format!("prctl(PR_SET_PDEATHSIG): {error}"))?;
    if parent_gone() {
        let expected = PARENT.load(Ordering::Relaxed);
        return Err(format!("supervisor (pid {expected}) is gone before the worker started"));
    }
    Ok(())
}

/// Applies the limits and environment of `Init`. Must run while the worker is single-threaded (before its
/// flusher starts): it changes the environment (and fails if another thread exists).
pub fn apply_init(isolation: &Isolation) -> Result<(), String> {
    if let Some(open_files) = isolation.open_files {
        sys::limits::limit_open_files(open_files).map_err(|error| format!("cannot set RLIMIT_NOFILE: {error}"))?;
    }
    if isolation.env_clear {
        // Without the wipe of the original block that this does, a forked worker (whose block is the
        // supervisor's) would still show every variable in `/proc/<pid>/environ`, readable by the task itself.
        sys::env::clear_except(shared::job::env_allowed)
            .map_err(|error| format!("cannot clear the environment: {error}"))?;
    }
    sys::env::set_vars(
        isolation
            .env
            .iter()
            .map(|(name, value)| (std::ffi::OsStr::new(name), std::ffi::OsStr::new(value))),
    )
    .map_err(|error| format!("cannot set the environment: {error}"))
}

/// Applies the resource limits of `Init`.
pub fn apply_limits(limits: &WorkerLimits) -> std::io::Result<()> {
    if limits.core_dumps {
        sys::limits::enable_core_dumps()?;
    }
    if let Some(bytes) = limits.memory_bytes {
        sys::limits::limit_memory(bytes)?;
    }
    Ok(())
}

/// Switches to `credentials` for good (see `sys::user::switch_credentials`), and asks for the parent-death
/// signal again (a credential change clears it).
pub fn drop_privileges(credentials: Credentials) -> Result<(), String> {
    sys::user::switch_credentials(credentials.uid, credentials.gid)?;
    die_with_parent()
}
