//! Persistent workers: the Python helper (`python/supervisor_worker.py`) with its state kept across items and
//! crashes that fail only their items, and a user's own Rust worker binary (`examples/custom-worker`) reading
//! mapped input. Values are checked against closed forms and `wc -l`.

#[path = "common/mod.rs"]
#[expect(
    dead_code,
    reason = "the helpers are shared with e2e.rs; this suite uses only some of them"
)]
mod common;

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::{InputExt, Job, generated_text, read_records, run, wc, write_file};

/// The repository's root folder.
fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

fn python_available() -> bool {
    Command::new("python3")
        .arg("-c")
        .arg("pass")
        .status()
        .is_ok_and(|s| s.success())
}

/// A Python worker that keeps a counter, aborts on item 5, dereferences NULL on item 8, raises on 11, writes
/// garbage on 13, and hangs on 17 (past the timeout).
const PYTHON_WORKER: &str = r#"
import ctypes, os, sys, time
sys.path.insert(0, os.environ["HELPER_DIR"])
from supervisor_worker import serve

count = 0

def handle(input):
    global count
    count += 1
    start = input["start"]
    if start == 5:
        os.abort()
    if start == 8:
        ctypes.string_at(0)
    if start == 11:
        raise ValueError("eleven is not welcome")
    if start == 13:
        sys.__stdout__.write("not json\n")
        sys.__stdout__.flush()
    if start == 17:
        time.sleep(1000)
    print("squaring", start)  # goes to stderr, not into the protocol
    return {"square": start * start, "count": count, "pid": os.getpid()}

serve(handle)
"#;

#[test]
fn python_worker_keeps_state_and_fails_only_the_crashing_items() {
    if !python_available() {
        eprintln!("skipped: python3 is not installed");
        return;
    }
    let (dir, marker) = common::leftovers::marked_temp_dir("workers");
    write_file(dir.path(), "square.py", PYTHON_WORKER);
    let helper = repo().join("python");
    let job = Job::range(0, 40)
        .worker(&["python3", "square.py"])
        .timeout("4s")
        .env(&[("TEST_MARKER", &marker), ("HELPER_DIR", &helper.display().to_string())])
        .workers(2)
        .batch(4)
        .results("out.jsonl")
        .write(dir.path());
    run(dir.path(), [OsStr::new("run"), job.as_os_str()], 1);
    let records = read_records::<serde_json::Value>(&dir.path().join("out.jsonl"));
    assert_eq!(records.len(), 40);
    let failed: BTreeMap<u64, (String, Option<String>)> = records
        .iter()
        .filter_map(|r| {
            r.error
                .as_ref()
                .map(|e| (r.item, (e.kind.to_string(), e.signal.clone())))
        })
        .collect();
    let expected: BTreeMap<u64, (String, Option<String>)> = [
        (5, ("signal".to_string(), Some("SIGABRT".to_string()))),
        (8, ("signal".to_string(), Some("SIGSEGV".to_string()))),
        (11, ("error".to_string(), None)),
        (13, ("protocol".to_string(), None)),
        (17, ("timeout".to_string(), Some("SIGKILL".to_string()))),
    ]
    .into_iter()
    .collect();
    assert_eq!(failed, expected);
    let eleven = records
        .iter()
        .find(|r| r.item == 11)
        .and_then(|r| r.error.as_ref())
        .expect("item 11");
    assert!(eleven.message.contains("eleven is not welcome"), "{}", eleven.message);

    // State: within one Python process the counter counts the items it answered, 1, 2, 3… in item order.
    let mut by_process: BTreeMap<u64, Vec<(u64, u64)>> = BTreeMap::new();
    for record in records.iter().filter(|r| r.error.is_none()) {
        let value = record.value.as_ref().expect("value");
        let (start, _) = record.input.range();
        assert_eq!(value["square"].as_u64(), Some(start * start), "item {}", record.item);
        let pid = value["pid"].as_u64().expect("pid");
        by_process
            .entry(pid)
            .or_default()
            .push((record.item, value["count"].as_u64().expect("count")));
    }
    let mut longest = 0;
    for answers in by_process.values() {
        let counts: Vec<u64> = answers.iter().map(|(_, count)| *count).collect();
        let mut sorted = counts.clone();
        sorted.sort_unstable();
        // A process may also have answered the item that crashed it (not counted here), so counts can skip.
        assert!(sorted.windows(2).all(|w| w[0] < w[1]), "{answers:?}");
        longest = longest.max(counts.len());
    }
    assert!(longest >= 3, "no Python process answered several items: {by_process:?}");
    common::assert_no_leftovers(&marker);
}

/// The helper's `read_bytes` gives a chunk's bytes (`{path, offset, len}`) and a whole file's (`{path}`): line
/// counts against `wc -l`, digests against `sha256sum`.
#[test]
fn python_worker_reads_chunks_and_whole_files() {
    if !python_available() {
        eprintln!("skipped: python3 is not installed");
        return;
    }
    let dir = common::temp_dir("workers");
    let helper = repo().join("python");
    write_file(
        dir.path(),
        "bytes.py",
        "import hashlib, os, sys\nsys.path.insert(0, os.environ['HELPER_DIR'])\n\
         from supervisor_worker import serve, read_bytes\n\
         def handle(input):\n    data = read_bytes(input)\n\
         \x20   return data.count(b'\\n') if 'offset' in input else hashlib.sha256(data).hexdigest()\n\
         serve(handle)\n",
    );
    let text = generated_text(700_000, 5, false);
    let big = write_file(dir.path(), "big.txt", &text);
    std::fs::create_dir(dir.path().join("files")).expect("mkdir");
    for i in 0..6 {
        write_file(
            &dir.path().join("files"),
            &format!("{i}.txt"),
            generated_text(1000 + i * 777, i as u64, true),
        );
    }
    let helper = helper.display().to_string();
    let bytes_worker = |job: Job| job.worker(&["python3", "bytes.py"]).env(&[("HELPER_DIR", &helper)]);
    let chunks = bytes_worker(Job::file("big.txt").chunk_bytes(50000))
        .results("chunks.jsonl")
        .reduce("sum")
        .named("chunks.toml")
        .write(dir.path());
    let ran = run(
        dir.path(),
        [OsStr::new("run"), OsStr::new("--json"), chunks.as_os_str()],
        0,
    );
    assert_eq!(ran.summary()["reduced"].as_u64().map(u128::from), Some(wc("-l", &big)));
    let files = bytes_worker(Job::glob("files/*.txt"))
        .results("files.jsonl")
        .named("files.toml")
        .write(dir.path());
    run(dir.path(), [OsStr::new("run"), files.as_os_str()], 0);
    let records = read_records::<String>(&dir.path().join("files.jsonl"));
    assert_eq!(records.len(), 6);
    for record in &records {
        let path = record.input.path().expect("file item");
        let digest = common::tool("sha256sum", &[path.as_os_str()], None, &[0]);
        assert_eq!(
            record.value.as_deref(),
            digest.split_whitespace().next(),
            "{}",
            path.display()
        );
    }
}

/// Builds the example worker with the same cargo (debug profile, the workspace's target folder).
fn build_custom_worker() -> PathBuf {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let status = Command::new(cargo)
        .args(["build", "--quiet", "-p", "custom-worker"])
        .current_dir(repo())
        .status()
        .expect("run cargo build");
    assert!(status.success(), "cargo build -p custom-worker failed");
    let bin = Path::new(common::SUPERVISOR).with_file_name("custom-worker");
    assert!(bin.is_file(), "{} was not built", bin.display());
    bin
}

#[test]
fn custom_rust_worker_counts_lines_of_mapped_chunks() {
    let bin = build_custom_worker();
    let dir = common::temp_dir("workers");
    let text = generated_text(4 << 20, 11, true);
    let big = write_file(dir.path(), "big.txt", &text);
    let job = Job::file("big.txt")
        .chunk_bytes("64KiB")
        .worker_bin(&bin)
        .workers(2)
        .results("out.jsonl")
        .reduce("sum")
        .write(dir.path());
    let ran = run(
        dir.path(),
        [OsStr::new("run"), OsStr::new("--json"), job.as_os_str()],
        0,
    );
    let summary = ran.summary();
    assert_eq!(summary["reduced"].as_u64().map(u128::from), Some(wc("-l", &big)));
    // Each chunk's count, against `wc -l` of its bytes.
    let records = read_records::<u128>(&dir.path().join("out.jsonl"));
    for record in records.iter().step_by(9) {
        let (offset, len) = record.input.chunk();
        let bytes = &text[offset as usize..(offset + len) as usize];
        assert_eq!(record.value, Some(common::wc_of_bytes("-l", dir.path(), bytes)));
    }
    // 4 MiB of input went through the mapping, not the channel: a few hundred bytes per 64 KiB item at most.
    let ipc = summary["ipc_bytes"].as_u64().expect("ipc_bytes");
    assert!(
        ipc < records.len() as u64 * 200,
        "{ipc} bytes of IPC for {} items",
        records.len()
    );
    assert!(ipc < 64 << 10, "{ipc} bytes of IPC");
}

#[test]
fn worker_bin_with_the_fork_server_is_refused() {
    let dir = common::temp_dir("workers");
    let job = Job::range(0, 3)
        .worker_bin("/bin/true")
        .start("forkserver")
        .write(dir.path());
    let ran = run(dir.path(), [OsStr::new("check"), job.as_os_str()], 2);
    assert!(
        ran.stderr()
            .contains("job.toml:4:14: `worker_bin` cannot be used with start = \"forkserver\""),
        "{}",
        ran.stderr()
    );
    let job = Job::range(0, 3).worker_bin("/bin/true").write(dir.path());
    let ran = run(
        dir.path(),
        [
            OsStr::new("run"),
            OsStr::new("--start"),
            OsStr::new("forkserver"),
            job.as_os_str(),
        ],
        2,
    );
    assert!(
        ran.stderr().contains("`worker_bin` cannot be used with"),
        "{}",
        ran.stderr()
    );
}

/// A `worker_bin` that is not a worker (it never says hello) does not hang the run: each start times out after
/// `[supervise] start_timeout`, and after three start failures in a row the run ends with exit 3, naming why.
/// Nothing it started is left behind.
#[test]
fn a_worker_bin_that_never_says_hello_times_out_instead_of_hanging() {
    let (dir, marker) = common::leftovers::marked_temp_dir("workers");
    let script = write_file(
        dir.path(),
        "not-a-worker.sh",
        format!("#!/bin/sh\nexport TEST_MARKER='{marker}'\nexec sleep 1000\n"),
    );
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).expect("chmod");
    let job = Job::range(0, 3)
        .worker_bin("not-a-worker.sh")
        .supervise("start_timeout", "500ms")
        .write(dir.path());
    let ran = run(dir.path(), [OsStr::new("run"), job.as_os_str()], 3);
    assert!(
        ran.stderr().contains("never said hello within start_timeout = 500ms"),
        "{}",
        ran.stderr()
    );
    common::assert_no_leftovers(&marker);
}

/// Regression: a persistent process that exited while a process it started still held its stdout held the item
/// until that process exited (100 s here). The item now fails as soon as the worker process has ended (exit 3,
/// its stderr tail kept), what it started is killed with its process group, and the next item starts a fresh
/// process. The worker is a shell script answering `7 × item`; on item 3 it leaves a `sleep` behind and exits.
#[test]
fn a_persistent_process_that_exits_while_a_child_holds_its_pipes_fails_only_its_item() {
    let (dir, marker) = common::leftovers::marked_temp_dir("workers");
    write_file(
        dir.path(),
        "answer.sh",
        "while read -r line; do\n  item=$(echo \"$line\" | sed 's/.*\"item\":\\([0-9]*\\).*/\\1/')\n\
         \x20 if [ \"$item\" = 3 ]; then sleep 100 & echo 'leaving a sleep behind' >&2; exit 3; fi\n\
         \x20 echo \"{\\\"item\\\":$item,\\\"value\\\":$((item * 7))}\"\ndone\n",
    );
    let job = Job::range(0, 8)
        .worker(&["sh", "answer.sh"])
        .marker(&marker)
        .workers(1)
        .results("out.jsonl")
        .write(dir.path());
    let job = job.to_string_lossy().into_owned();
    // Far less than the 100 s the leftover `sleep` would hold the item.
    let mut supervisor = common::Background::start(dir.path(), &["run", "--quiet", &job]);
    let status = supervisor.wait(std::time::Duration::from_secs(30));
    assert_eq!(status.code(), Some(1), "{}", supervisor.context());
    let records = read_records::<u64>(&dir.path().join("out.jsonl"));
    assert_eq!(records.len(), 8);
    for record in &records {
        match &record.error {
            Some(error) => {
                assert_eq!((record.item, error.kind.as_str(), error.code), (3, "exit", Some(3)));
            }
            None => assert_eq!(record.value, Some(record.item * 7), "item {}", record.item),
        }
    }
    let text = std::fs::read_to_string(dir.path().join("out.jsonl")).expect("results");
    assert!(text.contains("leaving a sleep behind"), "{text}");
    common::assert_no_leftovers(&marker);
}

/// Regression: a persistent worker that fails at start (a Python `ImportError`) was started again for every
/// item: 200 starts for a job that could never work. A process that exits before it waits for its first
/// request now fails the worker's start, and the run ends with exit 3 after a few starts, quoting the
/// `ImportError` from its stderr.
#[test]
fn a_persistent_worker_that_fails_at_start_ends_the_run() {
    if !python_available() {
        eprintln!("skipped: python3 is not installed");
        return;
    }
    let (dir, marker) = common::leftovers::marked_temp_dir("workers");
    write_file(
        dir.path(),
        "broken.py",
        "import os, sys\nwith open('starts.txt', 'a') as f:\n    f.write('started\\n')\n\
         sys.path.insert(0, os.environ['HELPER_DIR'])\nfrom supervisor_worker import serve\n\
         import no_such_module_for_this_test\nserve(lambda input: 0)\n",
    );
    let job = Job::range(0, 200)
        .worker(&["python3", "broken.py"])
        .env(&[
            ("TEST_MARKER", &marker),
            ("HELPER_DIR", &repo().join("python").display().to_string()),
        ])
        .workers(2)
        .batch(1)
        .write(dir.path());
    let ran = run(dir.path(), [OsStr::new("run"), job.as_os_str()], 3);
    assert!(
        ran.stderr().contains("No module named 'no_such_module_for_this_test'"),
        "{}",
        ran.stderr()
    );
    let starts = std::fs::read_to_string(dir.path().join("starts.txt")).unwrap_or_default();
    // One per worker, and perhaps a replacement each; never one per item.
    assert!(
        starts.lines().count() <= 4,
        "{} starts\n{}",
        starts.lines().count(),
        ran.context()
    );
    common::assert_no_leftovers(&marker);
}
