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
//! Policy (which user, which variables) is the supervisor's; this module only applies what `Init` says.

use std::ffi::OsString;
use std::io;
use std::sync::atomic::{AtomicI32, Ordering};

use shared::protocol::{Credentials, Isolation};

/// The signal a worker asks for when its parent dies (`PR_SET_PDEATHSIG`). Not SIGKILL: its handler first
/// SIGKILLs the worker's process group, so that the task's own children die with the worker.
pub const PARENT_DEATH_SIGNAL: libc::c_int = libc::SIGUSR2;

/// The pid that must stay this worker's parent (0: not checked).
static PARENT: AtomicI32 = AtomicI32::new(0);

/// Start-up confinement, before anything else happens in the worker. `parent` is the process that must be the
/// worker's parent (the supervisor, or the fork server): if it is already gone, this fails.
pub fn at_start(parent: Option<i32>) -> Result<(), String> {
    close_inherited_descriptors();
    // SAFETY: setpgid(0, 0) makes this process the leader of a new group; it touches no memory.
    if unsafe { libc::setpgid(0, 0) } != 0 {
        return Err(format!("setpgid: {}", io::Error::last_os_error()));
    }
    // SAFETY: prctl with PR_SET_NO_NEW_PRIVS takes integers only.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        return Err(format!("prctl(PR_SET_NO_NEW_PRIVS): {}", io::Error::last_os_error()));
    }
    std::env::set_current_dir("/").map_err(|error| format!("cannot change directory to /: {error}"))?;
    install_parent_death_handler()?;
    PARENT.store(parent.unwrap_or(0), Ordering::Relaxed);
    die_with_parent()
}

/// Closes every descriptor above 2. An exec'ed worker inherits whatever its supervisor's own parent left open
/// without close-on-exec (a forked worker's were already closed by the fork server); none of them is the
/// worker's business.
fn close_inherited_descriptors() {
    // SAFETY: close_range closes descriptors 3 and up; at this point nothing in this process owns any of them
    // (the worker has opened nothing yet; std keeps no descriptor open).
    let closed = unsafe { libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32) };
    if closed < 0 {
        for fd in 3..4096 {
            // SAFETY: as above; closing a descriptor that is not open is harmless (EBADF).
            unsafe { libc::close(fd) };
        }
    }
}

/// The handler of [`PARENT_DEATH_SIGNAL`]: SIGKILL the worker's process group (the worker and the task's
/// children that stayed in it), then the worker itself in case it is not a group leader.
extern "C" fn on_parent_death(_signal: libc::c_int) {
    // SAFETY: getpid, getpgrp and kill are async-signal-safe and take integers only.
    unsafe {
        let me = libc::getpid();
        if libc::getpgrp() == me {
            libc::kill(-me, libc::SIGKILL);
        }
        libc::kill(me, libc::SIGKILL);
    }
}

/// Whether the worker's parent (supervisor or fork server) is gone: the worker was reparented. Always false
/// when no parent was given (worker threads, which share the supervisor's process).
pub fn parent_gone() -> bool {
    let expected = PARENT.load(Ordering::Relaxed);
    // SAFETY: getppid has no preconditions.
    expected != 0 && unsafe { libc::getppid() } != expected
}

/// If the parent is gone, SIGKILLs the worker's process group and the worker: nobody is left to reap the task's
/// children. A backstop for the parent-death signal, which a task could block or ignore, and which can arrive
/// after a worker that saw its channel close has already exited. Returns only while the parent lives.
pub fn leave_if_orphaned() {
    if parent_gone() {
        on_parent_death(PARENT_DEATH_SIGNAL);
    }
}

fn install_parent_death_handler() -> Result<(), String> {
    // SAFETY: sigaction is plain old data; all-zero is a valid value (empty mask, no flags).
    let mut action: libc::sigaction = unsafe { std::mem::zeroed() };
    action.sa_sigaction = on_parent_death as extern "C" fn(libc::c_int) as libc::sighandler_t;
    // SAFETY: installs a handler that only calls async-signal-safe functions; `action` is valid for the call.
    if unsafe { libc::sigaction(PARENT_DEATH_SIGNAL, &action, std::ptr::null_mut()) } != 0 {
        return Err(format!("sigaction: {}", io::Error::last_os_error()));
    }
    Ok(())
}

/// Asks the kernel for [`PARENT_DEATH_SIGNAL`] when the parent dies, then checks that the parent is still the
/// expected one (it may have died before the request was made). Called at start and again after a credential
/// change, which clears the request.
fn die_with_parent() -> Result<(), String> {
    // SAFETY: prctl with PR_SET_PDEATHSIG takes a signal number and touches no memory of ours.
    let rc = unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, PARENT_DEATH_SIGNAL as libc::c_ulong, 0, 0, 0) };
    if rc != 0 {
        return Err(format!("prctl(PR_SET_PDEATHSIG): {}", io::Error::last_os_error()));
    }
    let expected = PARENT.load(Ordering::Relaxed);
    // SAFETY: getppid has no preconditions.
    if expected != 0 && unsafe { libc::getppid() } != expected {
        return Err(format!("supervisor (pid {expected}) is gone before the worker started"));
    }
    Ok(())
}

/// Applies the limits and environment of `Init`. Must run while the worker is single-threaded (before its
/// flusher starts): it changes the environment.
pub fn apply_init(isolation: &Isolation) -> Result<(), String> {
    if let Some(open_files) = isolation.open_files {
        crate::limits::limit_open_files(open_files).map_err(|error| format!("cannot set RLIMIT_NOFILE: {error}"))?;
    }
    if isolation.env_clear {
        clear_environment();
    }
    for (name, value) in &isolation.env {
        // SAFETY: the worker is single-threaded here (see above), so no other thread reads the environment.
        unsafe { std::env::set_var(name, value) };
    }
    Ok(())
}

/// Keeps only the allowed variables, as fresh copies, and wipes the environment block the process started
/// with. Without the wipe a forked worker (whose block is the supervisor's) would still show every variable in
/// `/proc/<pid>/environ`, readable by the task itself.
fn clear_environment() {
    let kept: Vec<(OsString, OsString)> = std::env::vars_os()
        .filter(|(name, _)| name.to_str().is_some_and(shared::job::env_allowed))
        .collect();
    // SAFETY: single-threaded (see `apply_init`). clearenv drops every pointer to the old variables; setenv
    // (std's set_var) copies the kept ones into fresh memory, so nothing refers to the old block any more.
    unsafe {
        libc::clearenv();
        for (name, value) in &kept {
            std::env::set_var(name, value);
        }
    }
    if let Some((start, end)) = environment_block() {
        // SAFETY: [start, end) is the block of environment strings the kernel placed on this process's initial
        // stack (mapped, writable, owned by no Rust object). After clearenv nothing points into it: the live
        // environment was copied above, and glibc copies what it keeps at start-up (TZ, tunables).
        unsafe { std::ptr::write_bytes(start as *mut u8, 0, end - start) };
    }
}

/// The `env_start` and `env_end` addresses of this process (fields 50 and 51 of `/proc/self/stat`).
fn environment_block() -> Option<(usize, usize)> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name (which may contain spaces) start at field 3.
    let fields: Vec<&str> = stat[stat.rfind(')')? + 1..].split_whitespace().collect();
    let start: usize = fields.get(50 - 3)?.parse().ok()?;
    let end: usize = fields.get(51 - 3)?.parse().ok()?;
    (start != 0 && end > start).then_some((start, end))
}

/// Switches to `credentials` for good: supplementary groups, group, then user (in that order: once the user is
/// switched, the group can no longer be), then checks that the switch holds and cannot be undone, and asks
/// for the parent-death signal again (a credential change clears it).
pub fn drop_privileges(credentials: Credentials) -> Result<(), String> {
    let Credentials { uid, gid } = credentials;
    let os = |what: &str| format!("{what}: {}", io::Error::last_os_error());
    // SAFETY: setgroups reads one gid through a valid pointer; setgid/setuid take integers.
    unsafe {
        if libc::setgroups(1, &gid) != 0 {
            return Err(os("setgroups"));
        }
        if libc::setgid(gid) != 0 {
            return Err(os(&format!("setgid({gid})")));
        }
        if libc::setuid(uid) != 0 {
            return Err(os(&format!("setuid({uid})")));
        }
    }
    let (mut r, mut e, mut s) = (0, 0, 0);
    let (mut rg, mut eg, mut sg) = (0, 0, 0);
    // SAFETY: getresuid/getresgid write three ids through valid, exclusive pointers.
    unsafe {
        libc::getresuid(&mut r, &mut e, &mut s);
        libc::getresgid(&mut rg, &mut eg, &mut sg);
    }
    if [r, e, s] != [uid; 3] || [rg, eg, sg] != [gid; 3] {
        return Err(format!(
            "credentials did not switch: uids {r}/{e}/{s}, gids {rg}/{eg}/{sg}, expected {uid} and {gid}"
        ));
    }
    let mut groups = [0 as libc::gid_t; 4];
    // SAFETY: getgroups writes at most `groups.len()` ids into the valid array.
    let count = unsafe { libc::getgroups(groups.len() as libc::c_int, groups.as_mut_ptr()) };
    if count < 0 || groups[..count as usize].iter().any(|&g| g != gid) {
        return Err("supplementary groups did not switch".to_string());
    }
    // SAFETY: setuid takes an integer; it must fail now that every uid is unprivileged.
    if uid != 0 && unsafe { libc::setuid(0) } == 0 {
        return Err("privileges can be regained after the switch".to_string());
    }
    die_with_parent()
}
