//! CPUs and clocks: which CPUs a thread may run on (`sched_getaffinity`/`sched_setaffinity`, with which
//! `supervisor bench` pins the two ends of a round trip and the pool sizes itself), and the clocks the progress
//! slot and the thread executor read.
//!
//! How many workers to run, and where, is the caller's choice.

use std::io;
use std::time::Duration;

use nix::sched::{CpuSet, sched_getaffinity, sched_setaffinity};
use nix::time::{ClockId, clock_gettime};
use nix::unistd::Pid;

/// The CPUs thread `tid` (0: the calling thread) may run on, in increasing order.
pub fn allowed_cpus_of(tid: Pid) -> io::Result<Vec<usize>> {
    let set = sched_getaffinity(tid)?;
    Ok((0..CpuSet::count())
        .filter(|&cpu| set.is_set(cpu).unwrap_or(false))
        .collect())
}

/// The CPUs the calling thread may run on, in increasing order.
pub fn allowed_cpus() -> io::Result<Vec<usize>> {
    allowed_cpus_of(Pid::from_raw(0))
}

/// Restricts thread `tid` (0: the calling thread; a process's pid names its main thread) to `cpus`. Threads it
/// starts later inherit the restriction.
pub fn set_affinity(tid: Pid, cpus: &[usize]) -> io::Result<()> {
    let mut set = CpuSet::new();
    for &cpu in cpus {
        set.set(cpu)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, format!("no CPU {cpu}")))?;
    }
    sched_setaffinity(tid, &set)?;
    Ok(())
}

/// CPU time the calling thread has used.
pub fn thread_cpu_time() -> Duration {
    clock_gettime(ClockId::CLOCK_THREAD_CPUTIME_ID).map_or(Duration::ZERO, Duration::from)
}

/// `CLOCK_MONOTONIC` now, in nanoseconds: the same clock in every process of the machine.
pub fn monotonic_ns() -> u64 {
    clock_gettime(ClockId::CLOCK_MONOTONIC).map_or(0, |now| now.tv_sec() as u64 * 1_000_000_000 + now.tv_nsec() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn affinity_pins_a_thread_and_is_restored() {
        // On a thread of its own, so that no other test runs pinned.
        std::thread::spawn(|| {
            let me = Pid::from_raw(0);
            let cpus = allowed_cpus().expect("sched_getaffinity");
            assert!(!cpus.is_empty());
            set_affinity(me, &cpus[..1]).expect("pin");
            assert_eq!(allowed_cpus().expect("sched_getaffinity"), &cpus[..1]);
            set_affinity(me, &cpus).expect("restore");
            assert_eq!(allowed_cpus().expect("sched_getaffinity"), cpus);
            assert!(set_affinity(me, &[CpuSet::count()]).is_err());
        })
        .join()
        .expect("the test thread");
    }

    #[test]
    fn clocks_move_forward() {
        let before = monotonic_ns();
        let cpu = thread_cpu_time();
        let mut x = 0u64;
        for i in 0..1_000_000u64 {
            x = std::hint::black_box(x.wrapping_add(i));
        }
        assert!(monotonic_ns() >= before && before > 0);
        assert!(thread_cpu_time() >= cpu);
    }
}
