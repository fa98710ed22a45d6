//! `fault`: deterministic fault injection, for tests and demos of crash isolation.
//!
//! Each argument lists item indices that misbehave in one way; every other item returns its own index.

use serde::Deserialize;
use shared::item::Value;
use shared::units::parse_size;

use crate::task::{ArgInfo, Item, Task, parse_args};

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
        name: "delay_ms",
        kind: "int",
        default: "0",
        help: "every item sleeps this many milliseconds first (a deliberately slow task, e.g. to test backpressure)",
    },
    ArgInfo {
        name: "once_dir",
        kind: "path",
        default: "none",
        help: "if set, each listed item misbehaves only on its first attempt (a marker file `fault-<item>` there records it)",
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
    exit_code: Option<i32>,
    oom_cap: Option<String>,
    once_dir: Option<std::path::PathBuf>,
    #[serde(default)]
    huge: Vec<u64>,
    huge_size: Option<String>,
    #[serde(default)]
    delay_ms: u64,
}

struct Fault {
    args: FaultArgs,
    exit_code: i32,
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
            let listed = [
                &a.segfault,
                &a.abort,
                &a.panic,
                &a.exit,
                &a.hang,
                &a.oom,
                &a.error,
                &a.huge,
            ]
            .iter()
            .any(|list| list.contains(&index));
            if listed && std::fs::File::create_new(&marker).is_err() {
                return Ok(Value::UInt(u128::from(index)));
            }
        }
        if a.segfault.contains(&index) {
            let address = std::hint::black_box(std::ptr::null_mut::<u8>());
            // SAFETY: not safe, on purpose: this is the injected crash. The write faults on the unmapped zero
            // page and the kernel kills the worker with SIGSEGV.
            unsafe { address.write_volatile(1) };
            unreachable!("a write through a null pointer returned");
        }
        if a.abort.contains(&index) {
            std::process::abort();
        }
        if a.panic.contains(&index) {
            panic!("fault: injected panic at item {index}");
        }
        if a.exit.contains(&index) {
            std::process::exit(self.exit_code);
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
    let exit_code = args.exit_code.unwrap_or(3);
    Ok(Box::new(Fault {
        args,
        exit_code,
        oom_cap,
        huge_size,
    }))
}
