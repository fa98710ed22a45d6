//! `[task] worker`: one long-lived user process per worker, speaking JSON lines on stdin/stdout.
//!
//! The protocol (documented for users in `docs/job-file.md`, implemented for Python by
//! `python/supervisor_worker.py`): for each item the worker writes one line
//! `{"item": N, "attempt": A, "input": {...}}` to the process's stdin and reads one line back from its stdout,
//! `{"item": N, "value": ...}` or `{"item": N, "error": "..."}`. The input is `{"start", "end"}` for a range
//! item, `{"path"}` for a whole file, and `{"path", "offset", "len"}` for a chunk of a `file` input.
//!
//! The process is started on the first item and kept for the worker's life, so it keeps its imports and state.
//! When it dies while running an item, that item fails with kind `exit` or `signal` and its stderr tail; when
//! it answers something that is not the protocol, the item fails with kind `protocol` and the process is
//! killed. Either way the next item starts a fresh process: the worker itself stays (a crash costs one user
//! process, not a round of worker start-up). A hang is the supervisor's to time out: it kills the worker, and
//! the user's process dies with it (`PR_SET_PDEATHSIG`).

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Child, ChildStdin, ChildStdout, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use shared::item::Value;
use shared::protocol::{TaskError, TaskErrorKind};
use shared::usertask::ProcessSpec;

use super::json_to_value;
use super::process::{Guard, Tail, command, die_with_worker, ended, has_ended, reap_group};
use child::task::{Item, ItemContext, ItemInput, Task};

/// How long to wait for the last stderr bytes of a dead process (a grandchild may keep the pipe open).
const STDERR_GRACE: Duration = Duration::from_millis(200);

/// The persistent process of one worker.
#[derive(Debug)]
pub struct PersistentTask {
    spec: ProcessSpec,
    running: Option<Running>,
    /// Kills the process's group if this worker dies; started with the first process.
    guard: Option<Guard>,
    /// The body of the current URL item, for the process to read (`/proc/<worker>/fd/N`).
    body: Option<std::fs::File>,
}

#[derive(Debug)]
struct Running {
    child: Child,
    /// `None` once closed (the polite way to ask the process to end).
    stdin: Option<ChildStdin>,
    stdout: BufReader<ChildStdout>,
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

    fn start(&mut self, context: &ItemContext) -> Result<Running, TaskError> {
        if self.guard.is_none() {
            self.guard = Some(Guard::start().map_err(|e| TaskError {
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
        if let Some(guard) = self.guard.as_mut() {
            guard.watch(child.id());
        }
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
            child,
            stdin: Some(stdin),
            stdout: BufReader::new(stdout),
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
            None => self.start(context)?,
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
                    let stderr = self.stop(true);
                    Err(TaskError {
                        kind: TaskErrorKind::Protocol { stderr },
                        message: format!("worker `{}` broke the protocol: {message}", self.spec.argv[0]),
                    })
                }
            },
            // The process closed stdout or stdin: it ended (or is ending); its status says how.
            Err(Broken::Closed) => Err(self.died()),
            Err(Broken::TooLong) => {
                let stderr = self.stop(true);
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

    /// The failure of the item whose process died under it.
    fn died(&mut self) -> TaskError {
        let Some(mut running) = self.running.take() else {
            return TaskError {
                kind: TaskErrorKind::Error,
                message: "no worker process".into(),
            };
        };
        let status = reap_group(&mut running.child);
        self.forget(&running);
        let stderr = take_tail(&running);
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

    /// Ends the process (killing it when `kill`), and returns its stderr tail.
    fn stop(&mut self, kill: bool) -> String {
        let Some(mut running) = self.running.take() else {
            return String::new();
        };
        if kill {
            // SAFETY: kill(2) touches no memory of ours; the group's leader is our unreaped child.
            unsafe { libc::kill(-(running.child.id() as i32), libc::SIGKILL) };
        }
        drop(running.stdin.take());
        let _ = reap_group(&mut running.child);
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
            let pid = running.child.id();
            for _ in 0..50 {
                if has_ended(pid) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        self.stop(true);
    }
}

impl PersistentTask {
    fn forget(&mut self, running: &Running) {
        if let Some(guard) = self.guard.as_mut() {
            guard.forget(running.child.id());
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

/// Writes one request line and reads one answer line.
fn exchange(running: &mut Running, request: &str, max_output: u64) -> Result<String, Broken> {
    let Some(stdin) = running.stdin.as_mut() else {
        return Err(Broken::Closed);
    };
    if stdin.write_all(request.as_bytes()).is_err() || stdin.flush().is_err() {
        return Err(Broken::Closed);
    }
    let mut line = Vec::new();
    let read = (&mut running.stdout).take(max_output + 1).read_until(b'\n', &mut line);
    match read {
        Ok(0) | Err(_) => Err(Broken::Closed),
        Ok(_) if line.len() as u64 > max_output => Err(Broken::TooLong),
        Ok(_) if !line.ends_with(b"\n") => Err(Broken::Closed),
        Ok(_) => Ok(String::from_utf8_lossy(&line).into_owned()),
    }
}

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
}

#[cfg(test)]
mod tests {
    use super::*;

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
