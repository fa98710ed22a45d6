//! Resource limits a worker applies to itself (Linux rlimits), and the CPU time it has used.
//!
//! Limits are set by the worker after it starts rather than in a `pre_exec` hook of the supervisor: a hook
//! forces the fork path for every spawn, which is slow when the supervisor's memory is large. Which limits a job
//! gets is the job spec's business; this module applies numbers.

use std::io;

use nix::sys::resource::{Resource, UsageWho, getrlimit, getrusage, setrlimit};

fn hard_limit(resource: Resource) -> io::Result<u64> {
    Ok(getrlimit(resource)?.1)
}

/// Turns core dumps off (called first thing, so that even a crash during start-up dumps no core).
pub fn disable_core_dumps() -> io::Result<()> {
    let hard = hard_limit(Resource::RLIMIT_CORE)?;
    Ok(setrlimit(Resource::RLIMIT_CORE, 0, hard)?)
}

/// Allows core dumps up to the hard limit.
pub fn enable_core_dumps() -> io::Result<()> {
    let hard = hard_limit(Resource::RLIMIT_CORE)?;
    Ok(setrlimit(Resource::RLIMIT_CORE, hard, hard)?)
}

/// Bounds the data segment (the heap: what the allocator can get) to `bytes`, soft and hard, so the task cannot
/// raise its own limit.
pub fn limit_memory(bytes: u64) -> io::Result<()> {
    Ok(setrlimit(Resource::RLIMIT_DATA, bytes, bytes)?)
}

/// CPU seconds this process has used so far (user + system), rounded down.
pub fn cpu_seconds_used() -> u64 {
    getrusage(UsageWho::RUSAGE_SELF).map_or(0, |usage| {
        (usage.user_time().tv_sec() + usage.system_time().tv_sec()).max(0) as u64
    })
}

/// Arms RLIMIT_CPU so that the next item gets `seconds` of CPU (plus the fraction of a second already begun)
/// before the kernel sends SIGXCPU.
pub fn arm_cpu_limit(seconds: u64) -> io::Result<()> {
    let hard = hard_limit(Resource::RLIMIT_CPU)?;
    let soft = cpu_seconds_used().saturating_add(seconds).saturating_add(1).min(hard);
    Ok(setrlimit(Resource::RLIMIT_CPU, soft, hard)?)
}

/// Bounds the descriptors this process may hold to `count`, soft and hard (so the task cannot raise it), or to
/// the current hard limit when that is lower (raising it would need a privilege).
pub fn limit_open_files(count: u64) -> io::Result<()> {
    let count = count.min(hard_limit(Resource::RLIMIT_NOFILE)?);
    Ok(setrlimit(Resource::RLIMIT_NOFILE, count, count)?)
}
