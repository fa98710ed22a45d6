//! Turning how a worker died into the failure of the item it was running.
//!
//! The kind says what the user should look at: `timeout` (the supervisor killed it for taking too long, or the
//! kernel did for exceeding `cpu_limit`), `memory` (an allocation failed under `memory_limit`: Rust aborts
//! with "memory allocation of N bytes failed"), `protocol` (it sent something it should not have), `signal`
//! and `exit` for everything else.

use std::time::Duration;

use crate::results::{Failure, FailureKind};
use sys::process::{ExitStatus, signal_name};

/// Everything known about a worker's death that bears on the item it was running.
#[derive(Debug, Clone, Copy)]
pub struct Death<'a> {
    pub status: ExitStatus,
    /// The supervisor killed the worker because the item exceeded this timeout. It is the cause only if the
    /// worker died of that kill (see [`crash_failure`]).
    pub timed_out: Option<Duration>,
    pub protocol_error: Option<&'a str>,
    pub stderr_tail: &'a str,
}

/// What a Rust worker prints before aborting when an allocation fails.
const ALLOCATION_FAILED: &str = "memory allocation of";

/// Lines of stderr kept in a failure record.
const STDERR_LINES: usize = 10;

/// The last ten lines of `text`.
pub fn last_lines(text: &str) -> String {
    let lines: Vec<&str> = text.trim_end().lines().collect();
    lines[lines.len().saturating_sub(STDERR_LINES)..].join("\n")
}

/// The failure of the item a worker died running. A timeout is recorded only when the worker died of the
/// supervisor's kill (SIGKILL): a worker that died on its own just as the kill was sent (a SIGABRT, a SIGSEGV, an
/// exit) is recorded as what really happened, since the kill landed on nothing.
pub fn crash_failure(death: Death<'_>) -> Failure {
    let stderr = (!death.stderr_tail.trim().is_empty()).then(|| last_lines(death.stderr_tail));
    let signal = match death.status {
        ExitStatus::Signal(signal) => Some(signal_name(signal)),
        ExitStatus::Code(_) => None,
    };
    let code = match death.status {
        ExitStatus::Code(code) => Some(code),
        ExitStatus::Signal(_) => None,
    };
    let failure = |kind, message: String| Failure {
        kind,
        message,
        signal: signal.clone(),
        code,
        stderr: stderr.clone(),
    };
    let killed_by_us = death.status == ExitStatus::Signal(libc::SIGKILL);
    if let Some(timeout) = death.timed_out.filter(|_| killed_by_us) {
        return failure(
            FailureKind::Timeout,
            format!(
                "item ran longer than the {} timeout; its worker was killed",
                human_duration(timeout)
            ),
        );
    }
    if let Some(message) = death.protocol_error {
        return failure(FailureKind::Protocol, message.to_string());
    }
    match death.status {
        ExitStatus::Signal(libc::SIGXCPU) => failure(
            FailureKind::Timeout,
            "item exceeded the cpu_limit (killed by SIGXCPU)".to_string(),
        ),
        ExitStatus::Signal(libc::SIGABRT) if death.stderr_tail.contains(ALLOCATION_FAILED) => failure(
            FailureKind::Memory,
            "worker ran out of memory (an allocation failed under memory_limit) while running this item".to_string(),
        ),
        ExitStatus::Signal(number) => failure(
            FailureKind::Signal,
            format!("worker killed by {} while running this item", signal_name(number)),
        ),
        ExitStatus::Code(code) => failure(
            FailureKind::Exit,
            format!("worker exited with code {code} while running this item"),
        ),
    }
}

/// The failure of an item the worker reported (the worker itself is fine): a task error or panic, or how the
/// user's process that ran the item ended.
pub fn task_failure(error: shared::protocol::TaskError) -> Failure {
    use shared::protocol::TaskErrorKind;
    let stderr_of = |text: String| (!text.trim().is_empty()).then(|| last_lines(&text));
    let plain = |kind| Failure {
        kind,
        message: shared::frame::truncate_message(error.message.clone()),
        signal: None,
        code: None,
        stderr: None,
    };
    match error.kind {
        TaskErrorKind::Error => plain(FailureKind::Error),
        TaskErrorKind::Panic => plain(FailureKind::Panic),
        TaskErrorKind::Protocol { stderr } => Failure {
            stderr: stderr_of(stderr),
            ..plain(FailureKind::Protocol)
        },
        TaskErrorKind::Exit { code, stderr } => Failure {
            kind: if ran_out_of_memory(&stderr) {
                FailureKind::Memory
            } else {
                FailureKind::Exit
            },
            code: Some(code),
            stderr: stderr_of(stderr),
            ..plain(FailureKind::Exit)
        },
        // The user's process inherits the worker's limits: RLIMIT_CPU ends it with SIGXCPU.
        TaskErrorKind::Signal { signal, stderr } => Failure {
            kind: if signal == libc::SIGXCPU {
                FailureKind::Timeout
            } else if ran_out_of_memory(&stderr) {
                FailureKind::Memory
            } else {
                FailureKind::Signal
            },
            signal: Some(signal_name(signal)),
            stderr: stderr_of(stderr),
            ..plain(FailureKind::Signal)
        },
    }
}

/// What programs in common languages print when an allocation fails (the user's process inherits the worker's
/// `memory_limit`): Rust, Python, C++, and glibc's strerror.
const OUT_OF_MEMORY: &[&str] = &[
    ALLOCATION_FAILED,
    "MemoryError",
    "std::bad_alloc",
    "Cannot allocate memory",
];

fn ran_out_of_memory(stderr: &str) -> bool {
    OUT_OF_MEMORY.iter().any(|marker| stderr.contains(marker))
}

/// How a worker ended, for messages: "was killed by SIGSEGV", "exited with code 3".
pub fn describe_exit(status: ExitStatus) -> String {
    match status {
        ExitStatus::Signal(signal) => format!("was killed by {}", signal_name(signal)),
        ExitStatus::Code(code) => format!("exited with code {code}"),
    }
}

/// `1.5s`, `250ms`, `2m`.
pub fn human_duration(duration: Duration) -> String {
    let millis = duration.as_millis();
    if millis < 1000 {
        format!("{millis}ms")
    } else if millis.is_multiple_of(60_000) {
        format!("{}m", millis / 60_000)
    } else {
        format!("{}s", duration.as_secs_f64())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn death(status: ExitStatus) -> Death<'static> {
        Death {
            status,
            timed_out: None,
            protocol_error: None,
            stderr_tail: "",
        }
    }

    #[test]
    fn kinds() {
        let segv = crash_failure(death(ExitStatus::Signal(libc::SIGSEGV)));
        assert_eq!(
            (segv.kind, segv.signal.as_deref()),
            (FailureKind::Signal, Some("SIGSEGV"))
        );
        let exit = crash_failure(death(ExitStatus::Code(3)));
        assert_eq!((exit.kind, exit.code), (FailureKind::Exit, Some(3)));
        let xcpu = crash_failure(death(ExitStatus::Signal(libc::SIGXCPU)));
        assert_eq!(xcpu.kind, FailureKind::Timeout);
        let plain_abort = crash_failure(death(ExitStatus::Signal(libc::SIGABRT)));
        assert_eq!(plain_abort.kind, FailureKind::Signal);
        let oom = crash_failure(Death {
            stderr_tail: "memory allocation of 16777216 bytes failed",
            ..death(ExitStatus::Signal(libc::SIGABRT))
        });
        assert_eq!((oom.kind, oom.stderr.is_some()), (FailureKind::Memory, true));
        // The message may be followed by a long backtrace: it is found anywhere in the tail.
        let long_tail = format!("memory allocation of 8 bytes failed\n{}", "  frame\n".repeat(40));
        let oom = crash_failure(Death {
            stderr_tail: &long_tail,
            ..death(ExitStatus::Signal(libc::SIGABRT))
        });
        assert_eq!(oom.kind, FailureKind::Memory);
        assert_eq!(oom.stderr.as_deref().map(|s| s.lines().count()), Some(10));
        let timeout = crash_failure(Death {
            timed_out: Some(Duration::from_millis(1500)),
            ..death(ExitStatus::Signal(libc::SIGKILL))
        });
        assert_eq!(timeout.kind, FailureKind::Timeout);
        assert!(timeout.message.contains("1.5s"), "{}", timeout.message);
        let protocol = crash_failure(Death {
            protocol_error: Some("garbage"),
            ..death(ExitStatus::Signal(9))
        });
        assert_eq!(protocol.kind, FailureKind::Protocol);
    }

    /// The worker aborted on its own just as its item's timeout kill was sent: the record says SIGABRT, kind
    /// `signal`, not a `timeout` carrying SIGABRT.
    #[test]
    fn a_timeout_record_never_carries_another_signal() {
        for (status, name) in [
            (ExitStatus::Signal(libc::SIGABRT), Some("SIGABRT")),
            (ExitStatus::Signal(libc::SIGSEGV), Some("SIGSEGV")),
            (ExitStatus::Code(3), None),
        ] {
            let failure = crash_failure(Death {
                timed_out: Some(Duration::from_secs(1)),
                ..death(status)
            });
            assert_ne!(failure.kind, FailureKind::Timeout, "{status:?}");
            assert_eq!(failure.signal.as_deref(), name);
            assert!(!failure.message.contains("timeout"), "{}", failure.message);
        }
        let ours = crash_failure(Death {
            timed_out: Some(Duration::from_secs(1)),
            ..death(ExitStatus::Signal(libc::SIGKILL))
        });
        assert_eq!(
            (ours.kind, ours.signal.as_deref()),
            (FailureKind::Timeout, Some("SIGKILL"))
        );
    }

    #[test]
    fn user_process_failures() {
        use shared::protocol::{TaskError, TaskErrorKind};
        let error = |kind| TaskError {
            kind,
            message: "m".into(),
        };
        let exit = task_failure(error(TaskErrorKind::Exit {
            code: 4,
            stderr: "bad\n".into(),
        }));
        assert_eq!(
            (exit.kind, exit.code, exit.stderr.as_deref()),
            (FailureKind::Exit, Some(4), Some("bad"))
        );
        let segv = task_failure(error(TaskErrorKind::Signal {
            signal: libc::SIGSEGV,
            stderr: String::new(),
        }));
        assert_eq!(
            (segv.kind, segv.signal.as_deref(), segv.stderr),
            (FailureKind::Signal, Some("SIGSEGV"), None)
        );
        let xcpu = task_failure(error(TaskErrorKind::Signal {
            signal: libc::SIGXCPU,
            stderr: String::new(),
        }));
        assert_eq!(xcpu.kind, FailureKind::Timeout);
        let python_oom = task_failure(error(TaskErrorKind::Exit {
            code: 1,
            stderr: "Traceback…\nMemoryError\n".into(),
        }));
        assert_eq!(python_oom.kind, FailureKind::Memory);
        let protocol = task_failure(error(TaskErrorKind::Protocol { stderr: "x".into() }));
        assert_eq!(protocol.kind, FailureKind::Protocol);
    }

    #[test]
    fn durations() {
        assert_eq!(human_duration(Duration::from_millis(250)), "250ms");
        assert_eq!(human_duration(Duration::from_secs(30)), "30s");
        assert_eq!(human_duration(Duration::from_secs(120)), "2m");
    }
}
