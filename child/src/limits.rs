//! Resource limits a worker applies to itself (Linux rlimits).
//!
//! Limits are set by the worker after it starts rather than in a `pre_exec` hook of the supervisor: a hook
//! forces the fork path for every spawn, which is slow when the supervisor's memory is large.

use std::io;

use shared::protocol::WorkerLimits;

fn set(resource: libc::__rlimit_resource_t, soft: u64, hard: u64) -> io::Result<()> {
    let limit = libc::rlimit {
        rlim_cur: soft,
        rlim_max: hard,
    };
    // SAFETY: setrlimit reads one rlimit struct through a valid pointer.
    if unsafe { libc::setrlimit(resource, &limit) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn get(resource: libc::__rlimit_resource_t) -> io::Result<libc::rlimit> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit struct through a valid, exclusive pointer.
    if unsafe { libc::getrlimit(resource, &mut limit) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(limit)
}

/// Turns core dumps off (called first thing, so that even a crash during start-up dumps no core).
pub fn disable_core_dumps() -> io::Result<()> {
    let hard = get(libc::RLIMIT_CORE)?.rlim_max;
    set(libc::RLIMIT_CORE, 0, hard)
}

/// Applies the limits of `Init`.
pub fn apply(limits: &WorkerLimits) -> io::Result<()> {
    if limits.core_dumps {
        let hard = get(libc::RLIMIT_CORE)?.rlim_max;
        set(libc::RLIMIT_CORE, hard, hard)?;
    }
    if let Some(bytes) = limits.memory_bytes {
        // The hard limit is lowered too, so the task cannot raise its own limit.
        set(libc::RLIMIT_DATA, bytes, bytes)?;
    }
    Ok(())
}

/// CPU seconds this process has used so far (user + system), rounded down.
fn cpu_seconds_used() -> u64 {
    // SAFETY: rusage is plain old data; getrusage fills it through a valid pointer.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: see above.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
    (usage.ru_utime.tv_sec + usage.ru_stime.tv_sec) as u64
}

/// Arms RLIMIT_CPU so that the next item gets `seconds` of CPU (plus the fraction of a second already begun)
/// before the kernel sends SIGXCPU.
pub fn arm_cpu_limit(seconds: u64) -> io::Result<()> {
    let hard = get(libc::RLIMIT_CPU)?.rlim_max;
    let soft = (cpu_seconds_used() + seconds + 1).min(hard);
    set(libc::RLIMIT_CPU, soft, hard)
}

/// Bounds the descriptors this process may hold to `count`, soft and hard (so the task cannot raise it), or to
/// the current hard limit when that is lower (raising it would need a privilege).
pub fn limit_open_files(count: u64) -> io::Result<()> {
    let hard = get(libc::RLIMIT_NOFILE)?.rlim_max;
    let count = count.min(hard);
    set(libc::RLIMIT_NOFILE, count, count)
}
