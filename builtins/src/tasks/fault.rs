//! `fault`: deterministic fault injection, for tests and demos of crash isolation.
//!
//! Each argument lists item indices that misbehave in one way; every other item returns its own index. Items with
//! bytes (file chunks, whole files) have one byte of each page read first, so that a mapped input that shrank
//! under the worker faults here as it would in a real task (SIGBUS).

use serde::Deserialize;
use shared::item::Value;
use shared::units::parse_size;

use child::task::{Item, ItemInput, Task};

use crate::registry::{ArgInfo, parse_args};

pub(super) const ARGS: &[ArgInfo] = &[
    ArgInfo {
        name: "segfault",
        kind: "[int]",
        default: "[]",
        help: "items that write through a null pointer (SIGSEGV)",
    },
    ArgInfo {
        name: "abort",
        kind: "[int]",
        default: "[]",
        help: "items that call abort() (SIGABRT)",
    },
    ArgInfo {
        name: "panic",
        kind: "[int]",
        default: "[]",
        help: "items that panic (caught: the item fails, the worker lives)",
    },
    ArgInfo {
        name: "exit",
        kind: "[int]",
        default: "[]",
        help: "items that exit the worker with `exit_code`",
    },
    ArgInfo {
        name: "hang",
        kind: "[int]",
        default: "[]",
        help: "items that sleep forever",
    },
    ArgInfo {
        name: "oom",
        kind: "[int]",
        default: "[]",
        help: "items that allocate and touch memory until allocation fails or `oom_cap` is reached",
    },
    ArgInfo {
        name: "error",
        kind: "[int]",
        default: "[]",
        help: "items whose task returns an error",
    },
    ArgInfo {
        name: "exit_code",
        kind: "int",
        default: "3",
        help: "exit code for `exit` items",
    },
    ArgInfo {
        name: "oom_cap",
        kind: "size",
        default: "\"2GiB\"",
        help: "an `oom` item gives up (returns an error) after this much without a memory limit",
    },
    ArgInfo {
        name: "huge",
        kind: "[int]",
        default: "[]",
        help: "items that return a text value of `huge_size` bytes (over the 1 MiB result limit, such an item fails)",
    },
    ArgInfo {
        name: "huge_size",
        kind: "size",
        default: "\"100MiB\"",
        help: "size of the value a `huge` item returns",
    },
    ArgInfo {
        name: "wait",
        kind: "[int]",
        default: "[]",
        help: "items that wait until the file `wait_for` exists (for tests that act while an item runs)",
    },
    ArgInfo {
        name: "wait_for",
        kind: "path",
        default: "none",
        help: "the file `wait` items wait for (checked every 10 ms)",
    },
    ArgInfo {
        name: "delay_ms",
        kind: "int",
        default: "0",
        help: "every item sleeps this many milliseconds first (a deliberately slow task, e.g. to test backpressure)",
    },
    ArgInfo {
        name: "once_dir",
        kind: "path",
        default: "none",
        help: "if set, each listed item misbehaves only on its first attempt (a marker file `fault-<item>` there records it); absolute",
    },
    ArgInfo {
        name: "write_input",
        kind: "[int]",
        default: "[]",
        help: "items that write through the pointer to their mapped input bytes (SIGSEGV: the mapping is read-only)",
    },
    ArgInfo {
        name: "spawn",
        kind: "[int]",
        default: "[]",
        help: "items that first start a `sleep 1000` child process, then go on (to a crash, a hang, or their value)",
    },
    ArgInfo {
        name: "spawn_detached",
        kind: "[int]",
        default: "[]",
        help: "like `spawn`, but the child leaves the worker's process group (a process group of its own)",
    },
    ArgInfo {
        name: "ignore_sigterm",
        kind: "[int]",
        default: "[]",
        help: "items that make their worker ignore SIGTERM, then go on",
    },
    ArgInfo {
        name: "pid_dir",
        kind: "path",
        default: "none",
        help: "if set, each listed item first writes `worker=<pid> child=<pid of its spawn, or 0> child_start=<its start time>` to `item-<n>` there; absolute",
    },
];

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct FaultArgs {
    #[serde(default)]
    segfault: Vec<u64>,
    #[serde(default)]
    abort: Vec<u64>,
    #[serde(default)]
    panic: Vec<u64>,
    #[serde(default)]
    exit: Vec<u64>,
    #[serde(default)]
    hang: Vec<u64>,
    #[serde(default)]
    oom: Vec<u64>,
    #[serde(default)]
    error: Vec<u64>,
    #[serde(default)]
    wait: Vec<u64>,
    wait_for: Option<std::path::PathBuf>,
    /// An exit status is one byte: 256 would exit with 0 (a success) if it were accepted.
    exit_code: Option<u8>,
    oom_cap: Option<String>,
    once_dir: Option<std::path::PathBuf>,
    #[serde(default)]
    huge: Vec<u64>,
    huge_size: Option<String>,
    #[serde(default)]
    write_input: Vec<u64>,
    #[serde(default)]
    spawn: Vec<u64>,
    #[serde(default)]
    spawn_detached: Vec<u64>,
    #[serde(default)]
    ignore_sigterm: Vec<u64>,
    pid_dir: Option<std::path::PathBuf>,
    #[serde(default)]
    delay_ms: u64,
}

struct Fault {
    args: FaultArgs,
    exit_code: u8,
    oom_cap: u64,
    huge_size: usize,
}

impl Task for Fault {
    fn run(&mut self, item: Item<'_>) -> Result<Value, String> {
        let index = item.index;
        let a = &self.args;
        if a.delay_ms > 0 {
            std::thread::sleep(std::time::Duration::from_millis(a.delay_ms));
        }
        if let Some(dir) = &a.once_dir {
            // create_new fails when the marker exists: this item already misbehaved once, so it behaves now.
            let marker = dir.join(format!("fault-{index}"));
            if a.listed(index) && std::fs::File::create_new(&marker).is_err() {
                return Ok(Value::UInt(u128::from(index)));
            }
        }
        if a.wait.contains(&index)
            && let Some(path) = &a.wait_for
        {
            while !path.exists() {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
        }
        if let ItemInput::Bytes { data, .. } = item.input {
            let pages = data.iter().step_by(4096).chain(data.last());
            std::hint::black_box(pages.fold(0u8, |sum, b| sum.wrapping_add(*b)));
        }
        if a.ignore_sigterm.contains(&index) {
            sys::process::ignore(sys::process::Signal::SIGTERM)
                .map_err(|error| format!("fault: cannot ignore SIGTERM: {error}"))?;
        }
        let spawned = if a.spawn.contains(&index) {
            Some(spawn_sleeper(false)?)
        } else if a.spawn_detached.contains(&index) {
            Some(spawn_sleeper(true)?)
        } else {
            None
        };
        if let Some(dir) = a.pid_dir.as_ref().filter(|_| a.listed(index)) {
            let child = spawned.as_ref().map_or(0, std::process::Child::id);
            record_pids(dir, index, child)?;
        }
        // The child is neither waited for nor killed: whether it outlives the worker is what the test is about.
        drop(spawned);
        if a.write_input.contains(&index) {
            write_through_input(&item);
        }
        if a.segfault.contains(&index) {
            sys::fault::write_through_null();
        }
        if a.abort.contains(&index) {
            std::process::abort();
        }
        if a.panic.contains(&index) {
            panic!("fault: injected panic at item {index}");
        }
        if a.exit.contains(&index) {
            std::process::exit(i32::from(self.exit_code));
        }
        if a.hang.contains(&index) {
            loop {
                std::thread::sleep(std::time::Duration::from_secs(3600));
            }
        }
        if a.oom.contains(&index) {
            return Err(allocate_until_failure(self.oom_cap));
        }
        if a.error.contains(&index) {
            return Err(format!("fault: injected error at item {index}"));
        }
        if a.huge.contains(&index) {
            return Ok(Value::Text("h".repeat(self.huge_size)));
        }
        Ok(Value::UInt(u128::from(index)))
    }
}

impl FaultArgs {
    /// Whether item `index` is in any of the lists.
    fn listed(&self, index: u64) -> bool {
        [
            &self.segfault,
            &self.abort,
            &self.panic,
            &self.exit,
            &self.hang,
            &self.oom,
            &self.error,
            &self.huge,
            &self.wait,
            &self.write_input,
            &self.spawn,
            &self.spawn_detached,
            &self.ignore_sigterm,
        ]
        .iter()
        .any(|list| list.contains(&index))
    }
}

/// Starts `sleep 1000` with no standard streams: a grandchild of the supervisor that would outlive its worker
/// unless something kills it. A `detached` one leads a process group of its own, out of reach of a kill of the
/// worker's group.
fn spawn_sleeper(detached: bool) -> Result<std::process::Child, String> {
    use std::os::unix::process::CommandExt;
    use std::process::{Command, Stdio};
    let mut command = Command::new("sleep");
    if detached {
        command.process_group(0);
    }
    command
        .arg("1000")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|error| format!("fault: cannot start `sleep 1000`: {error}"))
}

/// Writes `worker=<pid> child=<pid> child_start=<start time>` to `<dir>/item-<index>`, atomically (a reader
/// never sees half of it). The child's start time (field 22 of its `/proc/<pid>/stat`, 0 if unknown) lets a
/// reader tell it from a later process that reuses its pid.
fn record_pids(dir: &std::path::Path, index: u64, child: u32) -> Result<(), String> {
    let start = std::fs::read_to_string(format!("/proc/{child}/stat"))
        .ok()
        .and_then(|stat| {
            let fields = stat.get(stat.rfind(')')? + 1..)?;
            fields.split_whitespace().nth(22 - 3)?.parse::<u64>().ok()
        })
        .unwrap_or(0);
    let text = format!("worker={} child={child} child_start={start}\n", std::process::id());
    let staged = dir.join(format!(".item-{index}.tmp"));
    std::fs::write(&staged, text)
        .and_then(|()| std::fs::rename(&staged, dir.join(format!("item-{index}"))))
        .map_err(|error| format!("fault: cannot record pids in {}: {error}", dir.display()))
}

/// Writes one byte through the pointer to the item's mapped input. The mapping is read-only, so the write
/// faults and the kernel kills the worker with SIGSEGV; the file is never changed. An item without bytes (a
/// range item, an empty file) returns and succeeds.
fn write_through_input(item: &Item<'_>) {
    if let ItemInput::Bytes { data, .. } = item.input {
        sys::fault::write_to_read_only(data);
    }
}

/// Allocates and touches 16 MiB blocks. Under a memory limit the allocator fails and Rust aborts the process;
/// without one, gives up at `cap` bytes and returns the message to report.
fn allocate_until_failure(cap: u64) -> String {
    const BLOCK: usize = 16 << 20;
    let mut blocks: Vec<Vec<u8>> = Vec::new();
    let mut total = 0u64;
    while total < cap {
        blocks.push(vec![1u8; BLOCK]);
        total += BLOCK as u64;
    }
    std::hint::black_box(&blocks);
    format!("fault: allocated {total} bytes without hitting a memory limit (oom_cap)")
}

pub(super) fn build(args: &serde_json::Value) -> Result<Box<dyn Task>, String> {
    let args: FaultArgs = parse_args("fault", args)?;
    let oom_cap = match &args.oom_cap {
        None => 2 << 30,
        Some(text) => parse_size(text).map_err(|error| format!("bad args for task `fault`: `oom_cap`: {error}"))?,
    };
    let huge_size = match &args.huge_size {
        None => 100 << 20,
        Some(text) => parse_size(text)
            .map_err(|error| format!("bad args for task `fault`: `huge_size`: {error}"))
            .and_then(|size| {
                usize::try_from(size).map_err(|_| format!("bad args for task `fault`: `huge_size` {size} is too large"))
            })?,
    };
    if !args.wait.is_empty() && args.wait_for.is_none() {
        return Err("bad args for task `fault`: `wait` needs `wait_for`, the file to wait for".to_string());
    }
    let exit_code = args.exit_code.unwrap_or(3);
    // Workers run in `/`: a relative folder would not mean what the job file's author meant.
    for (key, dir) in [("once_dir", &args.once_dir), ("pid_dir", &args.pid_dir)] {
        if let Some(dir) = dir
            && !dir.is_absolute()
        {
            return Err(format!(
                "bad args for task `fault`: `{key}` = {:?} must be an absolute path (workers run in /)",
                dir.display().to_string()
            ));
        }
    }
    Ok(Box::new(Fault {
        args,
        exit_code,
        oom_cap,
        huge_size,
    }))
}
