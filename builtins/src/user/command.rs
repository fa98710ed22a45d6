//! `[task] command`: one process per item, started by the worker, GNU parallel style.
//!
//! The worker expands the placeholders, starts the command (argv, never a shell), hands it the item's bytes as
//! a path and on stdin, captures its stdout (bounded) and the tail of its stderr, waits for it, and turns the
//! result into the item's outcome: exit 0 → the value parsed from stdout; another code → kind `exit`; a signal →
//! kind `signal`. The item ends when the command's main process ends: what it left running in its process group
//! is killed, even if it holds the command's stdout or stderr open (see [`super::process`]). A command that
//! hangs is the supervisor's to time out: it kills the worker, and the worker's guard process kills the
//! command's group.
//!
//! `{path}` of an item that is a whole file is that file. A chunk of a `file` input has no file of its own: its
//! bytes are copied into a memfd of this worker (reused from item to item), and `{path}` is
//! `/proc/self/fd/N`, the command's inherited descriptor of it.

use std::fs::File;
use std::io::{Seek, Write};
use std::os::fd::{AsFd, AsRawFd};
use std::path::Path;
use std::process::Stdio;

use shared::item::Value;
use shared::protocol::{TaskError, TaskErrorKind};
use shared::usertask::{CommandSpec, Parse, StdinMode};

use super::json_to_value;
use super::process::{Inherited, Leader, capture, command, ended, own_group};
use child::task::{Item, ItemContext, ItemInput, Task};
use sys::guard::GroupGuard;
use sys::process::{Pid, ProcessGroup};

/// Runs `command` once per item.
#[derive(Debug)]
pub struct CommandTask {
    spec: CommandSpec,
    /// Holds the bytes of the current chunk when the item is not a whole file; created on first need.
    memfd: Option<File>,
    /// Kills the commands' process groups if this worker dies; started with the first command.
    guard: Option<GroupGuard>,
}

impl CommandTask {
    pub fn new(spec: CommandSpec) -> CommandTask {
        CommandTask {
            spec,
            memfd: None,
            guard: None,
        }
    }

    fn run_command(&mut self, item: Item<'_>, context: &ItemContext) -> Result<Value, TaskError> {
        let error = |message: String| TaskError {
            kind: TaskErrorKind::Error,
            message,
        };
        // What the command can read: the item's real file, or a memfd with the chunk's bytes.
        let (path, keep_open, stdin) = match item.input {
            ItemInput::Range { .. } => (None, None, Stdio::null()),
            ItemInput::Bytes { data, path, offset } if offset == 0 && is_whole(path, data) => {
                let stdin = match self.spec.stdin {
                    StdinMode::Item => Stdio::from(
                        shared::region::open_regular(path)
                            .map_err(|e| error(format!("cannot open {}: {e}", path.display())))?,
                    ),
                    StdinMode::Null => Stdio::null(),
                };
                (Some(path.to_string_lossy().into_owned()), None, stdin)
            }
            ItemInput::Bytes { data, .. } | ItemInput::Fetched { data, .. } => {
                let file = refill_memfd(&mut self.memfd, data)
                    .map_err(|e| error(format!("cannot copy the chunk into a memfd: {e}")))?;
                let proc_path = format!("/proc/self/fd/{}", file.as_raw_fd());
                let stdin = match self.spec.stdin {
                    // A fresh open file description, at offset 0, independent of the one the command inherits.
                    StdinMode::Item => Stdio::from(
                        File::open(&proc_path).map_err(|e| error(format!("cannot reopen the chunk's memfd: {e}")))?,
                    ),
                    StdinMode::Null => Stdio::null(),
                };
                (Some(proc_path), Some(file.as_fd()), stdin)
            }
        };
        let (lo, hi) = match item.input {
            ItemInput::Range { lo, hi } => (lo, hi),
            ItemInput::Bytes { data, offset, .. } => (offset, offset + data.len() as u64),
            ItemInput::Fetched { data, .. } => (0, data.len() as u64),
        };
        let value_of = |name: &str| -> Option<String> {
            match (name, item.input) {
                ("item", _) => Some(item.index.to_string()),
                ("path", ItemInput::Bytes { .. } | ItemInput::Fetched { .. }) => path.clone(),
                ("url", ItemInput::Fetched { url, .. }) => Some(url.to_string()),
                ("start", ItemInput::Range { .. }) => Some(lo.to_string()),
                ("end", ItemInput::Range { .. }) => Some(hi.to_string()),
                ("offset", ItemInput::Bytes { .. }) => Some(lo.to_string()),
                ("len", ItemInput::Bytes { .. } | ItemInput::Fetched { .. }) => Some((hi - lo).to_string()),
                _ => None,
            }
        };
        let argv = self
            .spec
            .process
            .argv
            .iter()
            .map(|arg| shared::usertask::expand(arg, value_of))
            .collect::<Result<Vec<String>, String>>()
            .map_err(error)?;
        let mut command = command(&self.spec.process, &argv, context, Some(item.index));
        command.stdin(stdin).stdout(Stdio::piped()).stderr(Stdio::piped());
        own_group(&mut command);
        if self.guard.is_none() {
            self.guard = Some(GroupGuard::start().map_err(|e| error(format!("cannot start the process guard: {e}")))?);
        }
        let inherited = keep_open
            .map(Inherited::new)
            .transpose()
            .map_err(|e| error(format!("cannot hand the item's memfd to the command: {e}")))?;
        let spawned = command.spawn();
        drop(inherited);
        let mut child = spawned.map_err(|e| error(format!("cannot start `{}`: {e}", argv[0])))?;
        let pid = Pid::from_raw(child.id() as i32);
        let group = ProcessGroup::led_by(pid);
        if let Some(guard) = self.guard.as_mut() {
            guard.watch(group);
        }
        let (Some(stdout), Some(stderr)) = (child.stdout.take(), child.stderr.take()) else {
            let _ = child.kill();
            let _ = child.wait();
            return Err(error("the command's pipes were not created".into()));
        };
        let captured = match Leader::new(pid) {
            Ok(leader) => capture(stdout, stderr, self.spec.process.max_output, &leader),
            Err(e) => Err(std::io::Error::other(format!(
                "cannot watch the command's process: {e}"
            ))),
        };
        // Whatever the command left running in its process group goes with it.
        let status = sys::process::reap_and_kill_group(pid)
            .map_err(|e| error(format!("cannot wait for `{}`: {e}", argv[0])))?
            .status;
        if let Some(guard) = self.guard.as_mut() {
            guard.forget(group);
        }
        let mut captured = captured.map_err(|e| error(format!("cannot read the command's output: {e}")))?;
        let what = format!("command `{}`", argv[0]);
        if !status.success() {
            return Err(ended(&what, status, captured.stderr.take()));
        }
        if captured.stdout_overflow {
            return Err(error(format!(
                "{what} wrote more than max_output = {} bytes to stdout",
                self.spec.process.max_output
            )));
        }
        parse_output(&captured.stdout, self.spec.parse).map_err(|message| error(format!("{what}: {message}")))
    }
}

impl Task for CommandTask {
    fn run(&mut self, item: Item<'_>) -> Result<Value, String> {
        let context = ItemContext { worker: 0, attempt: 1 };
        self.run_command(item, &context).map_err(|error| error.message)
    }

    fn run_detailed(&mut self, item: Item<'_>, context: &ItemContext) -> Result<Value, TaskError> {
        self.run_command(item, context)
    }
}

/// Whether `data` is all of the file at `path` (a whole-file item, or a file input split into one chunk).
pub(super) fn is_whole(path: &Path, data: &[u8]) -> bool {
    std::fs::metadata(path).is_ok_and(|meta| meta.len() == data.len() as u64)
}

/// The value of a command's stdout.
pub fn parse_output(stdout: &[u8], parse: Parse) -> Result<Value, String> {
    match parse {
        Parse::Text => {
            let text = String::from_utf8_lossy(stdout);
            let text = text.strip_suffix('\n').unwrap_or(&text);
            let text = text.strip_suffix('\r').unwrap_or(text);
            Ok(Value::Text(text.to_string()))
        }
        Parse::Json => {
            let json: serde_json::Value =
                serde_json::from_slice(stdout).map_err(|e| format!("stdout is not JSON (parse = \"json\"): {e}"))?;
            Ok(json_to_value(json))
        }
    }
}

/// The memfd in `slot` (created on first use, then reused from item to item), now holding exactly `data`: the
/// bytes of a chunk or a fetched body, for a user process to read as a file.
pub(super) fn refill_memfd<'a>(slot: &'a mut Option<File>, data: &[u8]) -> std::io::Result<&'a File> {
    let file = match slot.take() {
        Some(file) => file,
        // Close-on-exec: it is handed to a command by clearing the flag around the spawn only.
        None => sys::region::memfd(c"supervisor-item", false)?,
    };
    let file = slot.insert(file);
    file.set_len(0)?;
    file.rewind()?;
    file.write_all(data)?;
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_parses_as_text_or_json() {
        assert_eq!(parse_output(b"42 x\n", Parse::Text), Ok(Value::Text("42 x".into())));
        assert_eq!(parse_output(b"a\n\n", Parse::Text), Ok(Value::Text("a\n".into())));
        assert_eq!(parse_output(b" 42\n", Parse::Json), Ok(Value::UInt(42)));
        assert_eq!(
            parse_output(br#"{"n":-1,"f":0.5}"#, Parse::Json),
            Ok(Value::Map(vec![
                ("f".into(), Value::Float(0.5)),
                ("n".into(), Value::Int(-1))
            ]))
        );
        assert!(parse_output(b"nope", Parse::Json).is_err());
    }
}
