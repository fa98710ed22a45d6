//! The process environment, changed only where that is sound: in a single-threaded process.
//!
//! `setenv` and `clearenv` race with any other thread reading the environment (`getenv` in a DNS lookup, a
//! locale call), which is undefined behaviour; std marks `set_var` unsafe for that reason. The functions here
//! check that the calling process has one thread (from `/proc/self/task`) and refuse otherwise, so they are
//! safe to call. Which variables a worker keeps is the job's policy, not this module's.

use std::ffi::{OsStr, OsString};
use std::io;

/// Whether the calling process has exactly one thread. One `stat` of `/proc/self/task`, whose link count is two
/// plus the number of threads (cheap enough for the fork server to check before every fork).
pub fn single_threaded() -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self/task").is_ok_and(|task| task.nlink() == 3)
}

fn check_single_threaded(what: &str) -> io::Result<()> {
    if single_threaded() {
        Ok(())
    } else {
        Err(io::Error::other(format!(
            "cannot {what}: the process has more than one thread"
        )))
    }
}

/// Sets the variables `vars`, in order. Setting none succeeds in any process.
pub fn set_vars<'a>(vars: impl IntoIterator<Item = (&'a OsStr, &'a OsStr)>) -> io::Result<()> {
    let vars: Vec<_> = vars.into_iter().collect();
    if vars.is_empty() {
        return Ok(());
    }
    check_single_threaded("change the environment")?;
    for (name, value) in vars {
        // SAFETY: the process is single-threaded (checked above), so no other thread reads the environment.
        unsafe { std::env::set_var(name, value) };
    }
    Ok(())
}

/// Keeps only the variables whose name `keep` accepts, as fresh copies, and wipes the environment block the
/// process started with. Without the wipe a forked process (whose block is its parent's) would still show every
/// variable in `/proc/<pid>/environ`.
pub fn clear_except(keep: impl Fn(&str) -> bool) -> io::Result<()> {
    check_single_threaded("clear the environment")?;
    let kept: Vec<(OsString, OsString)> = std::env::vars_os()
        .filter(|(name, _)| name.to_str().is_some_and(&keep))
        .collect();
    // SAFETY: single-threaded (checked above). clearenv drops every pointer to the old variables.
    unsafe { nix::env::clearenv() }.map_err(|_| io::Error::other("clearenv failed"))?;
    set_vars(kept.iter().map(|(name, value)| (name.as_os_str(), value.as_os_str())))?;
    if let Some((start, end)) = environment_block() {
        // SAFETY: [start, end) is the block of environment strings the kernel placed on this process's initial
        // stack (mapped, writable, owned by no Rust object). After clearenv nothing points into it: the live
        // environment was copied into fresh memory by setenv above, and glibc copies what it keeps at start-up
        // (TZ, tunables).
        unsafe { std::ptr::write_bytes(start as *mut u8, 0, end - start) };
    }
    Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The test harness runs tests on threads: changing the environment here must be refused, not done.
    #[test]
    fn a_process_with_threads_may_not_change_its_environment() {
        let other = std::thread::spawn(|| std::thread::park_timeout(std::time::Duration::from_secs(5)));
        assert!(!single_threaded());
        let error = set_vars([(OsStr::new("SYS_TEST_VAR"), OsStr::new("1"))]).expect_err("refused");
        assert!(error.to_string().contains("more than one thread"), "{error}");
        assert!(clear_except(|_| false).is_err());
        set_vars([]).expect("setting nothing needs no check");
        assert!(std::env::var_os("PATH").is_some(), "the environment was not touched");
        other.thread().unpark();
        other.join().expect("thread");
    }
}
