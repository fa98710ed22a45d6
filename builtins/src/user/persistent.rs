//! `[task] worker`: one long-lived user process per worker, speaking JSON lines on stdin/stdout.
//!
//! The protocol (documented for users in `docs/job-file.md`, implemented for Python by
//! `python/supervisor_worker.py`): for each item the worker writes one line
//! `{"item": N, "attempt": A, "input": {...}}` to the process's stdin and reads one line back from its stdout,
//! `{"item": N, "value": ...}` or `{"item": N, "error": "..."}`. The input is `{"start", "end"}` for a range
//! item, `{"path"}` for a whole file, and `{"path", "offset", "len"}` for a chunk of a `file` input.
//!
//! The process is started at the worker's `Init` and kept for the worker's life, so it keeps its imports and
//! state. It has *started* once it waits for its first request: a thread of it (or of a process it started, as
//! `sh -c 'python3 …'` does) is blocked reading its stdin or waiting on descriptors (poll, select, epoll), as
//! `/proc/PID/task/*/syscall` shows, or it has run for
//! [`START_SETTLE`] without exiting (a program whose waiting cannot be seen). A process that exits before it has
//! started (a Python `ImportError`) fails `Init` with its exit status and the last lines of its stderr, so that
//! the run ends (exit 3) instead of starting one process per item for a job that could never work.
//!
//! When it dies while running an item, that item fails with kind `exit` or `signal` and its stderr tail; when
//! it answers something that is not the protocol, the item fails with kind `protocol` and the process is
//! killed. Either way the next item starts a fresh process: the worker itself stays (a crash costs one user
//! process, not a round of worker start-up). The process has ended when its main process has ended, even if
//! what it started still holds its pipes: that is killed with its process group (see [`super::process`]). A
//! hang is the supervisor's to time out: it kills the worker, and the user's process dies with it
//! (`PR_SET_PDEATHSIG`).

use std::io::{self, Read, Write};
use std::os::fd::AsFd;
use std::process::{ChildStdin, ChildStdout, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use shared::item::Value;
use shared::protocol::{TaskError, TaskErrorKind};
use shared::usertask::ProcessSpec;

use super::json_to_value;
use super::process::{DRAIN_AFTER_EXIT, Leader, Ready, Tail, command, die_with_worker, ended, wait_for};
use child::task::{Item, ItemContext, ItemInput, Task};
use sys::guard::GroupGuard;
use sys::process::{ExitStatus, Pid, ProcessGroup};
use sys::socket::Interest;

/// How long to wait for the last stderr bytes of a dead process (a grandchild may keep the pipe open).
const STDERR_GRACE: Duration = Duration::from_millis(200);

/// How long a new process may take to be seen waiting for its first request before it is taken as started
/// anyway (a program that waits in a way `/proc` does not show, such as a futex).
pub const START_SETTLE: Duration = Duration::from_secs(3);

/// How often a starting process is looked at in `/proc` for waiting. Its exit is noticed at once (a pidfd);
/// its waiting has no event to wait for.
const START_LOOK: Duration = Duration::from_millis(5);

/// Lines of a process's stderr quoted when it fails to start.
const START_STDERR_LINES: usize = 10;

/// How long a process whose stdin was closed has to exit before it is killed.
const EXIT_GRACE: Duration = Duration::from_millis(500);

/// The persistent process of one worker.
#[derive(Debug)]
pub struct PersistentTask {
    spec: ProcessSpec,
    running: Option<Running>,
    /// Kills the process's group if this worker dies; started with the first process.
    guard: Option<GroupGuard>,
    /// The body of the current URL item, for the process to read (`/proc/<worker>/fd/N`).
    body: Option<std::fs::File>,
}

#[derive(Debug)]
struct Running {
    /// The process (our unreaped child until `sys::process::reap_and_kill_group` reaps it).
    leader: Leader,
    /// Non-blocking; `None` once closed (the polite way to ask the process to end).
    stdin: Option<ChildStdin>,
    stdout: ChildStdout,
    /// Bytes read from stdout and not yet answered (the start of the next line).
    buffered: Vec<u8>,
    stderr: Arc<Mutex<Tail>>,
    stderr_done: mpsc::Receiver<()>,
}

impl PersistentTask {
    pub fn new(spec: ProcessSpec) -> PersistentTask {
        PersistentTask {
            spec,
            running: None,
            guard: None,
            body: None,
        }
    }

    fn spawn(&mut self, context: &ItemContext) -> Result<Running, TaskError> {
        if self.guard.is_none() {
            self.guard = Some(GroupGuard::start().map_err(|e| TaskError {
                kind: TaskErrorKind::Error,
                message: format!("cannot start the process guard: {e}"),
            })?);
        }
        let mut command = command(&self.spec, &self.spec.argv, context, None);
        command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        die_with_worker(&mut command);
        let mut child = command.spawn().map_err(|e| TaskError {
            kind: TaskErrorKind::Error,
            message: format!("cannot start worker `{}`: {e}", self.spec.argv[0]),
        })?;
        let (Some(stdin), Some(stdout), Some(mut stderr)) =
            (child.stdin.take(), child.stdout.take(), child.stderr.take())
        else {
            let _ = child.kill();
            let _ = child.wait();
            return Err(TaskError {
                kind: TaskErrorKind::Error,
                message: "the worker process's pipes were not created".into(),
            });
        };
        let pid = Pid::from_raw(child.id() as i32);
        if let Some(guard) = self.guard.as_mut() {
            guard.watch(ProcessGroup::led_by(pid));
        }
        // Writes to the process's stdin must return instead of blocking when the pipe is full, so that a write
        // can wait for the process's end too.
        let leader = Leader::new(pid).and_then(|leader| sys::socket::set_nonblocking(stdin.as_fd()).map(|()| leader));
        let leader = match leader {
            Ok(leader) => leader,
            Err(e) => {
                // Abandoned: killed first, so that the reap cannot wait for a process that would never end.
                ProcessGroup::led_by(pid).kill();
                let _ = sys::process::reap_and_kill_group(pid);
                if let Some(guard) = self.guard.as_mut() {
                    guard.forget(ProcessGroup::led_by(pid));
                }
                return Err(TaskError {
                    kind: TaskErrorKind::Error,
                    message: format!("cannot watch worker `{}`: {e}", self.spec.argv[0]),
                });
            }
        };
        let tail = Arc::new(Mutex::new(Tail::default()));
        let (done, stderr_done) = mpsc::channel();
        let drained = Arc::clone(&tail);
        // The stderr drain lives as long as the process's stderr: a chatty process never blocks on it.
        let _ = std::thread::Builder::new().name("user-stderr".into()).spawn(move || {
            let mut buffer = [0u8; 4096];
            while let Ok(n @ 1..) = stderr.read(&mut buffer) {
                if let Ok(mut tail) = drained.lock() {
                    tail.push(&buffer[..n]);
                }
            }
            let _ = done.send(());
        });
        Ok(Running {
            leader,
            stdin: Some(stdin),
            stdout,
            buffered: Vec::new(),
            stderr: tail,
            stderr_done,
        })
    }

    /// A memfd of this worker holding exactly `data` (reused from item to item); its path for the process.
    fn body_file(&mut self, data: &[u8]) -> std::io::Result<String> {
        use std::os::fd::AsRawFd;
        let file = super::command::refill_memfd(&mut self.body, data)?;
        Ok(format!("/proc/{}/fd/{}", std::process::id(), file.as_raw_fd()))
    }

    fn call(&mut self, item: Item<'_>, context: &ItemContext) -> Result<Value, TaskError> {
        let body = match item.input {
            ItemInput::Fetched { data, .. } => Some(self.body_file(data).map_err(|e| TaskError {
                kind: TaskErrorKind::Error,
                message: format!("cannot copy the fetched body into a memfd: {e}"),
            })?),
            _ => None,
        };
        let running = match self.running.take() {
            Some(running) => running,
            None => self.spawn(context)?,
        };
        let running = self.running.insert(running);
        // A failure's stderr tail should be this item's, not what earlier items wrote.
        if let Ok(mut tail) = running.stderr.lock() {
            tail.take();
        }
        let request = request(item, context.attempt, body.as_deref());
        let exchanged = exchange(running, &request, self.spec.max_output);
        match exchanged {
            Ok(line) => match answer(&line, item.index) {
                Ok(result) => result,
                Err(message) => {
                    let stderr = self.stop();
                    Err(TaskError {
                        kind: TaskErrorKind::Protocol { stderr },
                        message: format!("worker `{}` broke the protocol: {message}", self.spec.argv[0]),
                    })
                }
            },
            // The process closed stdout or stdin: it ended (or is ending); its status says how.
            Err(Broken::Closed) => Err(self.died()),
            Err(Broken::TooLong) => {
                let stderr = self.stop();
                Err(TaskError {
                    kind: TaskErrorKind::Protocol { stderr },
                    message: format!(
                        "worker `{}` answered a line longer than max_output = {} bytes",
                        self.spec.argv[0], self.spec.max_output
                    ),
                })
            }
        }
    }

    /// Starts the process and waits until it has started (see the module's documentation); `Err` is the
    /// `InitFailed` message of a process that exited first.
    fn start_process(&mut self, context: &ItemContext) -> Result<(), String> {
        let running = self.spawn(context).map_err(|error| error.message)?;
        let running = self.running.insert(running);
        let deadline = Instant::now() + START_SETTLE;
        loop {
            if waits_for_input(running.leader.pid().as_raw() as u32) {
                return Ok(());
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(());
            }
            let ready = wait_for(
                [None, None],
                Some(&running.leader),
                Some((now + START_LOOK).min(deadline)),
            )
            .map_err(|e| format!("cannot wait for worker `{}` to start: {e}", self.spec.argv[0]))?;
            if ready.ended {
                break;
            }
        }
        let (status, stderr) = self.finish();
        let what = format!("worker `{}`", self.spec.argv[0]);
        let how = match status {
            Ok(status) if status.success() => "exited with code 0".to_string(),
            Ok(status) => {
                let message = ended(&what, status, String::new()).message;
                message.strip_prefix(&what).unwrap_or(&message).trim_start().to_string()
            }
            Err(e) => format!("ended (cannot wait for it: {e})"),
        };
        let lines: Vec<&str> = stderr.lines().filter(|line| !line.trim().is_empty()).collect();
        let shown = lines[lines.len().saturating_sub(START_STDERR_LINES)..].join("\n");
        Err(if shown.is_empty() {
            format!("{what} {how} before it was ready for its first request (no stderr)")
        } else {
            format!("{what} {how} before it was ready for its first request; its stderr ends:\n{shown}")
        })
    }

    /// Waits (briefly) for the process to end, kills what it leaves, reaps it: its exit status and stderr tail.
    fn finish(&mut self) -> (io::Result<ExitStatus>, String) {
        let Some(running) = self.running.take() else {
            return (Err(io::Error::other("no worker process")), String::new());
        };
        // A process that closed its stdout may still be alive: give it a moment to exit on its own (so that its
        // status says how it ended), then kill it rather than wait for ever.
        let ended = running.leader.has_ended()
            || wait_for(
                [None, None],
                Some(&running.leader),
                Some(Instant::now() + DRAIN_AFTER_EXIT),
            )
            .is_ok_and(|ready| ready.ended);
        if !ended {
            running.leader.kill_group();
        }
        let status = sys::process::reap_and_kill_group(running.leader.pid()).map(|info| info.status);
        self.forget(&running);
        (status, take_tail(&running))
    }

    /// The failure of the item whose process died under it.
    fn died(&mut self) -> TaskError {
        if self.running.is_none() {
            return TaskError {
                kind: TaskErrorKind::Error,
                message: "no worker process".into(),
            };
        }
        let (status, stderr) = self.finish();
        let what = format!("worker `{}`", self.spec.argv[0]);
        match status {
            Ok(status) if status.success() => TaskError {
                kind: TaskErrorKind::Exit { code: 0, stderr },
                message: format!("{what} exited (code 0) while running this item"),
            },
            Ok(status) => ended(&what, status, stderr),
            Err(e) => TaskError {
                kind: TaskErrorKind::Error,
                message: format!("cannot wait for {what}: {e}"),
            },
        }
    }

    /// Kills the process and its group, and returns its stderr tail.
    fn stop(&mut self) -> String {
        let Some(mut running) = self.running.take() else {
            return String::new();
        };
        running.leader.kill_group();
        drop(running.stdin.take());
        let _ = sys::process::reap_and_kill_group(running.leader.pid());
        self.forget(&running);
        let mut tail = running.stderr.lock().map(|mut t| t.take()).unwrap_or_default();
        if tail.is_empty() {
            let _ = running.stderr_done.recv_timeout(STDERR_GRACE);
            tail = running.stderr.lock().map(|mut t| t.take()).unwrap_or_default();
        }
        tail
    }
}

impl Drop for PersistentTask {
    /// A healthy process ends when its stdin closes; one that does not is killed, and always reaped.
    fn drop(&mut self) {
        if let Some(running) = self.running.as_mut() {
            // Closing stdin is the polite stop; give the process a moment before killing it.
            drop(running.stdin.take());
            let _ = wait_for([None, None], Some(&running.leader), Some(Instant::now() + EXIT_GRACE));
        }
        self.stop();
    }
}

impl PersistentTask {
    fn forget(&mut self, running: &Running) {
        if let Some(guard) = self.guard.as_mut() {
            guard.forget(ProcessGroup::led_by(running.leader.pid()));
        }
    }
}

fn take_tail(running: &Running) -> String {
    let _ = running.stderr_done.recv_timeout(STDERR_GRACE);
    running.stderr.lock().map(|mut t| t.take()).unwrap_or_default()
}

enum Broken {
    Closed,
    TooLong,
}

/// Writes one request line and reads one answer line. The process has ended (`Closed`) when its main process has
/// ended, whatever still holds its pipes.
fn exchange(running: &mut Running, request: &str, max_output: u64) -> Result<String, Broken> {
    write_request(running, request.as_bytes())?;
    read_answer(running, max_output)
}

fn write_request(running: &mut Running, mut rest: &[u8]) -> Result<(), Broken> {
    let Some(stdin) = running.stdin.as_mut() else {
        return Err(Broken::Closed);
    };
    while !rest.is_empty() {
        match stdin.write(rest) {
            Ok(0) => return Err(Broken::Closed),
            Ok(n) => rest = &rest[n..],
            Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => {
                let ready = wait_for(
                    [Some((stdin.as_fd(), Interest::Write)), None],
                    Some(&running.leader),
                    None,
                )
                .map_err(|_| Broken::Closed)?;
                if ready.ended {
                    return Err(Broken::Closed);
                }
            }
            Err(_) => return Err(Broken::Closed),
        }
    }
    Ok(())
}

fn read_answer(running: &mut Running, max_output: u64) -> Result<String, Broken> {
    let mut chunk = [0u8; 8 << 10];
    // Set once the main process has ended: what is already in the pipe is still read, for a short while.
    let mut deadline = None;
    loop {
        if let Some(end) = running.buffered.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = running.buffered.drain(..=end).collect();
            if line.len() as u64 > max_output {
                return Err(Broken::TooLong);
            }
            return Ok(String::from_utf8_lossy(&line).into_owned());
        }
        if running.buffered.len() as u64 > max_output {
            return Err(Broken::TooLong);
        }
        let fds = [Some((running.stdout.as_fd(), Interest::Read)), None];
        let ready =
            wait_for(fds, deadline.is_none().then_some(&running.leader), deadline).map_err(|_| Broken::Closed)?;
        if ready == Ready::default() {
            return Err(Broken::Closed);
        }
        if ready.ended {
            running.leader.kill_group();
            deadline = Some(Instant::now() + DRAIN_AFTER_EXIT);
        }
        if ready.fds[0] {
            match running.stdout.read(&mut chunk) {
                Ok(0) => return Err(Broken::Closed),
                Ok(n) => running.buffered.extend_from_slice(&chunk[..n]),
                Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return Err(Broken::Closed),
            }
        }
    }
}

/// How deep below the started process [`waits_for_input`] looks (`sh -c 'python3 worker.py'`: the shell waits
/// for its child, which is the one that reads).
const WAIT_DEPTH: u32 = 3;

/// Whether some thread of process `pid`, or of a process it started (down to [`WAIT_DEPTH`]), is blocked waiting
/// for input: reading its stdin, or in a call that waits for descriptors (poll, select, epoll).
/// `/proc/PID/task/TID/syscall` gives the call a blocked thread is in and its arguments, and
/// `/proc/PID/task/TID/children` the processes it started; what cannot be read counts as not waiting.
fn waits_for_input(pid: u32) -> bool {
    waits_below(pid, WAIT_DEPTH)
}

fn waits_below(pid: u32, depth: u32) -> bool {
    let Ok(threads) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return false;
    };
    threads.flatten().any(|thread| {
        let path = thread.path();
        std::fs::read_to_string(path.join("syscall")).is_ok_and(|text| waiting(&text))
            || (depth > 0
                && std::fs::read_to_string(path.join("children")).is_ok_and(|children| {
                    children
                        .split_whitespace()
                        .filter_map(|child| child.parse().ok())
                        .any(|child| waits_below(child, depth - 1))
                }))
    })
}

/// Whether a `/proc/…/syscall` line (`NUMBER ARG1 …` of a blocked thread, `running` otherwise) is a wait for
/// input.
fn waiting(syscall: &str) -> bool {
    let mut fields = syscall.split_whitespace();
    let Some(Ok(number)) = fields.next().map(str::parse::<libc::c_long>) else {
        return false;
    };
    let first = fields
        .next()
        .and_then(|arg| u64::from_str_radix(arg.trim_start_matches("0x"), 16).ok());
    (number == libc::SYS_read && first == Some(0)) || WAIT_CALLS.contains(&number)
}

#[cfg(target_arch = "x86_64")]
const WAIT_CALLS: &[libc::c_long] = &[
    libc::SYS_poll,
    libc::SYS_ppoll,
    libc::SYS_select,
    libc::SYS_pselect6,
    libc::SYS_epoll_wait,
    libc::SYS_epoll_pwait,
];

#[cfg(not(target_arch = "x86_64"))]
const WAIT_CALLS: &[libc::c_long] = &[libc::SYS_ppoll, libc::SYS_pselect6, libc::SYS_epoll_pwait];

/// The request line for `item`.
///
/// A URL item's body is in a memfd of the worker, `body` (`/proc/<worker>/fd/N`), which the process reads as a
/// whole file.
fn request(item: Item<'_>, attempt: u32, body: Option<&str>) -> String {
    let input = match item.input {
        ItemInput::Range { lo, hi } => serde_json::json!({ "start": lo, "end": hi }),
        ItemInput::Bytes { data, path, offset } => {
            let whole = offset == 0 && super::command::is_whole(path, data);
            if whole {
                serde_json::json!({ "path": path })
            } else {
                serde_json::json!({ "path": path, "offset": offset, "len": data.len() })
            }
        }
        ItemInput::Fetched { url, .. } => serde_json::json!({ "url": url, "path": body }),
    };
    let mut line = serde_json::json!({ "item": item.index, "attempt": attempt, "input": input }).to_string();
    line.push('\n');
    line
}

/// The item's result from an answer line; `Err` when the line is not the protocol.
fn answer(line: &str, index: u64) -> Result<Result<Value, TaskError>, String> {
    let shown: String = line.trim_end().chars().take(200).collect();
    let json: serde_json::Value =
        serde_json::from_str(line).map_err(|e| format!("answered `{shown}`, not a JSON line ({e})"))?;
    let serde_json::Value::Object(mut map) = json else {
        return Err(format!("answered `{shown}`, not a JSON object"));
    };
    match map.get("item").and_then(serde_json::Value::as_u64) {
        Some(answered) if answered == index => {}
        Some(answered) => return Err(format!("answered item {answered} while running item {index}")),
        None => return Err(format!("answered `{shown}` without an \"item\" number")),
    }
    match (map.remove("value"), map.remove("error")) {
        (Some(value), None) => Ok(Ok(json_to_value(value))),
        (None, Some(serde_json::Value::String(message))) => Ok(Err(TaskError {
            kind: TaskErrorKind::Error,
            message,
        })),
        (None, Some(other)) => Ok(Err(TaskError {
            kind: TaskErrorKind::Error,
            message: other.to_string(),
        })),
        _ => Err(format!(
            "answered `{shown}`: expected exactly one of \"value\" or \"error\""
        )),
    }
}

impl Task for PersistentTask {
    fn run(&mut self, item: Item<'_>) -> Result<Value, String> {
        let context = ItemContext { worker: 0, attempt: 1 };
        self.call(item, &context).map_err(|error| error.message)
    }

    fn run_detailed(&mut self, item: Item<'_>, context: &ItemContext) -> Result<Value, TaskError> {
        self.call(item, context)
    }

    fn has_start(&self) -> bool {
        true
    }

    fn start(&mut self, context: &ItemContext) -> Result<(), String> {
        self.start_process(context)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocked_reads_of_stdin_and_waits_on_descriptors_are_waiting_for_input() {
        assert!(waiting(&format!(
            "{} 0x0 0x7ffd1000 0x2000 0x0 0x0 0x0 0x7ffd 0x7f00",
            libc::SYS_read
        )));
        assert!(!waiting(&format!(
            "{} 0x3 0x7ffd1000 0x2000 0x0 0x0 0x0 0x7ffd 0x7f00",
            libc::SYS_read
        )));
        assert!(waiting(&format!(
            "{} 0x5 0x7ffd1000 0x10 0xffffffff 0x0 0x0 0x7ffd 0x7f00",
            libc::SYS_epoll_pwait
        )));
        assert!(!waiting(&format!(
            "{} 0x0 0x0 0x0 0x0 0x0 0x0 0x7ffd 0x7f00",
            libc::SYS_wait4
        )));
        assert!(!waiting("running"));
        assert!(!waiting("-1 0x7ffd 0x7f00"));
    }

    #[test]
    fn answers_are_checked() {
        assert_eq!(answer("{\"item\":3,\"value\":7}\n", 3), Ok(Ok(Value::UInt(7))));
        assert!(matches!(answer("{\"item\":3,\"error\":\"bad\"}\n", 3), Ok(Err(e)) if e.message == "bad"));
        assert!(answer("{\"item\":4,\"value\":7}\n", 3).is_err());
        assert!(answer("hello\n", 3).is_err());
        assert!(answer("{\"item\":3}\n", 3).is_err());
        assert!(answer("[1]\n", 3).is_err());
    }
}
