//! `[task] command`: one process per item. Values are checked against `wc` and `sha256sum` run by the test
//! itself and against closed forms; crashing and hanging commands must fail exactly their items, with the right
//! kind, and leave no process behind.

#[path = "common/mod.rs"]
#[expect(
    dead_code,
    reason = "the helpers are shared with e2e.rs; this suite uses only some of them"
)]
mod common;

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::{InputExt, Job, Prng, generated_text, read_records, run, tool, wc, write_file};

fn files(dir: &Path, count: usize) -> Vec<std::path::PathBuf> {
    std::fs::create_dir_all(dir.join("in")).expect("mkdir");
    let mut prng = Prng::new(7);
    (0..count)
        .map(|i| {
            let size = 1 + prng.below(40_000) as usize;
            write_file(
                &dir.join("in"),
                &format!("f{i:03}.txt"),
                generated_text(size, i as u64, i % 3 != 0),
            )
        })
        .collect()
}

#[test]
fn wc_l_per_file_matches_wc() {
    let (dir, marker) = common::leftovers::marked_temp_dir("commands");
    let inputs = files(dir.path(), 40);
    let job = Job::glob("in/*.txt")
        .command(&["sh", "-c", "wc -l < {path}"])
        .parse("json")
        .marker(&marker)
        .workers(2)
        .results("out.jsonl")
        .reduce("sum")
        .write(dir.path());
    let ran = run(
        dir.path(),
        [OsStr::new("run"), OsStr::new("--json"), job.as_os_str()],
        0,
    );
    let records = read_records::<u128>(&dir.path().join("out.jsonl"));
    assert_eq!(records.len(), inputs.len());
    let mut total = 0;
    for record in &records {
        let path = record.input.path().expect("file item");
        let expected = wc("-l", path);
        assert_eq!(record.value, Some(expected), "{}", path.display());
        total += expected;
    }
    assert_eq!(ran.summary()["reduced"].as_u64().map(u128::from), Some(total));
    common::assert_no_leftovers(&marker);
}

/// Chunks of one file reach the command both as `{path}` (a memfd) and on stdin; `sha256sum` of each chunk's
/// bytes, written out by the test, must agree.
#[test]
fn chunks_reach_the_command_as_path_and_stdin() {
    let dir = common::temp_dir("commands");
    let text = generated_text(300_000, 3, true);
    write_file(dir.path(), "big.txt", &text);
    let job = Job::file("big.txt")
        .chunk_bytes(20000)
        .command(&[
            "sh",
            "-c",
            "wc -c < {path}; sha256sum | cut -d' ' -f1; echo {offset} {len} {item}",
        ])
        .workers(2)
        .results("out.jsonl")
        .write(dir.path());
    run(dir.path(), [OsStr::new("run"), job.as_os_str()], 0);
    let records = read_records::<String>(&dir.path().join("out.jsonl"));
    assert!(records.len() >= 10, "{} chunks", records.len());
    for record in &records {
        let (offset, len) = record.input.chunk();
        let bytes = &text[offset as usize..(offset + len) as usize];
        let scratch = write_file(dir.path(), "chunk.bin", bytes);
        let digest = tool("sha256sum", &[scratch.as_os_str()], None, &[0]);
        let digest = digest.split_whitespace().next().expect("digest");
        let expected = format!("{len}\n{digest}\n{offset} {len} {}", record.item);
        assert_eq!(record.value.as_deref(), Some(expected.as_str()), "item {}", record.item);
    }
}

/// Items 3 and 11 segfault, 7 hangs past the timeout, 9 exits 4 after writing to stderr; the other items
/// succeed with 2·start, and nothing is left running.
#[test]
fn crashing_and_hanging_commands_fail_exactly_their_items() {
    crashing_and_hanging_commands(&[]);
}

#[test]
fn crashing_and_hanging_commands_fail_exactly_their_items_under_the_fork_server() {
    crashing_and_hanging_commands(&["--start", "forkserver"]);
}

fn crashing_and_hanging_commands(flags: &[&str]) {
    let (dir, marker) = common::leftovers::marked_temp_dir("commands");
    let script = "case {item} in 3|11) kill -SEGV $$;; 7) sleep 1000;; 9) echo 'bad item nine' >&2; exit 4;; esac; \
                  echo $(({start} * 2))";
    let job = Job::range(100, 130)
        .command(&["sh", "-c", script])
        .parse("json")
        .timeout("3s")
        .marker(&marker)
        .workers(2)
        .results("out.jsonl")
        .write(dir.path());
    let mut args = vec![OsStr::new("run")];
    args.extend(flags.iter().map(OsStr::new));
    args.push(job.as_os_str());
    run(dir.path(), args, 1);
    let records = read_records::<u64>(&dir.path().join("out.jsonl"));
    assert_eq!(records.len(), 30);
    let failed: BTreeMap<u64, (String, Option<String>, Option<i32>)> = records
        .iter()
        .filter_map(|r| {
            let e = r.error.as_ref()?;
            Some((r.item, (e.kind.to_string(), e.signal.clone(), e.code)))
        })
        .collect();
    let expected: BTreeMap<u64, (String, Option<String>, Option<i32>)> = [
        (3, ("signal".to_string(), Some("SIGSEGV".to_string()), None)),
        (7, ("timeout".to_string(), Some("SIGKILL".to_string()), None)),
        (9, ("exit".to_string(), None, Some(4))),
        (11, ("signal".to_string(), Some("SIGSEGV".to_string()), None)),
    ]
    .into_iter()
    .collect();
    assert_eq!(failed, expected);
    for record in records.iter().filter(|r| r.error.is_none()) {
        let (start, _) = record.input.range();
        assert_eq!(record.value, Some(start * 2), "item {}", record.item);
    }
    let text = std::fs::read_to_string(dir.path().join("out.jsonl")).expect("results");
    let nine = text.lines().find(|l| l.starts_with("{\"item\":9,")).expect("item 9");
    assert!(nine.contains("\"stderr\":\"bad item nine\""), "{nine}");
    common::assert_no_leftovers(&marker);
}

/// `kill -9` of the supervisor while commands run (each starting a `sleep` of its own): the workers die with
/// it, and every command and grandchild with them.
#[test]
fn nothing_survives_a_sigkilled_supervisor() {
    let (dir, marker) = common::leftovers::marked_temp_dir("commands");
    let job = Job::range(0, 10)
        .command(&["sh", "-c", "sleep 1000; echo {item}"])
        .marker(&marker)
        .workers(2)
        .write(dir.path());
    let job = job.to_string_lossy().into_owned();
    let mut supervisor = common::Background::start(dir.path(), &["run", "--quiet", &job]);
    // Two `sh` and their two `sleep`s.
    let started = common::wait_until(Duration::from_secs(60), || common::marked_processes(&marker).len() >= 4);
    assert!(
        started,
        "the commands did not start: {:?}\n{}",
        common::marked_processes(&marker),
        supervisor.context()
    );
    supervisor.signal(libc::SIGKILL);
    supervisor.wait(Duration::from_secs(30));
    common::assert_no_leftovers(&marker);
}

/// `env`, `cwd`, `SUPERVISOR_ITEM` and `SUPERVISOR_ATTEMPT`: the first attempt of each even item fails, its
/// retry succeeds and sees attempt 2.
#[test]
fn environment_folder_and_attempts_reach_the_command() {
    let dir = common::temp_dir("commands");
    std::fs::create_dir(dir.path().join("work")).expect("mkdir");
    let script = "if [ $(({item} % 2)) = 0 ] && [ $SUPERVISOR_ATTEMPT = 1 ]; then exit 1; fi; \
                  echo $GREETING $(basename $PWD) $SUPERVISOR_ITEM $SUPERVISOR_ATTEMPT";
    let job = Job::range(0, 6)
        .command(&["sh", "-c", script])
        .env(&[("GREETING", "hello there")])
        .task("cwd", "work")
        .retries(1)
        .results("out.jsonl")
        .write(dir.path());
    run(dir.path(), [OsStr::new("run"), job.as_os_str()], 0);
    let records = read_records::<String>(&dir.path().join("out.jsonl"));
    for record in &records {
        let attempt = if record.item % 2 == 0 { 2 } else { 1 };
        let expected = format!("hello there work {} {attempt}", record.item);
        assert_eq!(record.value.as_deref(), Some(expected.as_str()));
    }
}

/// The command inherits the worker's `memory_limit`: a Python command that allocates too much fails with kind
/// `memory` (its MemoryError is in the stderr tail); the others are fine.
#[test]
fn a_command_over_the_memory_limit_fails_with_memory() {
    if !Command::new("python3")
        .arg("-c")
        .arg("pass")
        .status()
        .is_ok_and(|s| s.success())
    {
        eprintln!("skipped: python3 is not installed");
        return;
    }
    let dir = common::temp_dir("commands");
    let script = "import sys; n = int(sys.argv[1]); b = bytearray((1 << 30) if n == 2 else 1000); print(n * n)";
    let job = Job::range(0, 5)
        .command(&["python3", "-c", script, "{start}"])
        .parse("json")
        .workers(1)
        .worker_key("memory_limit", "256MiB")
        .results("out.jsonl")
        .write(dir.path());
    run(dir.path(), [OsStr::new("run"), job.as_os_str()], 1);
    let records = read_records::<u64>(&dir.path().join("out.jsonl"));
    for record in &records {
        let (start, _) = record.input.range();
        match &record.error {
            Some(error) => {
                assert_eq!((record.item, error.kind.as_str()), (2, "memory"), "{}", error.message);
                assert_eq!(error.code, Some(1));
            }
            None => assert_eq!(record.value, Some(start * start)),
        }
    }
    assert_eq!(records.iter().filter(|r| r.error.is_some()).count(), 1);
}

/// Mistakes in `[task]` are reported at their place in the job file, with exit code 2.
#[test]
fn task_mistakes_are_located() {
    let dir = common::temp_dir("commands");
    let cases = [
        (
            Job::range(0, 3).builtin("noop").command(&["true"]).text(),
            "job.toml:5:11: [task] needs exactly one of `builtin`, `command`, `worker` or `worker_bin` (found `builtin` and `command`)",
        ),
        (
            Job::range(0, 3).command(&["cat", "{path}"]).text(),
            "unknown placeholder `{path}` for a range input: expected one of {item}, {start}, {end}",
        ),
        (
            Job::range(0, 3).command(&["curl", "{url}"]).text(),
            "unknown placeholder `{url}`",
        ),
        (
            Job::range(0, 3).worker_bin("no-such-binary").text(),
            "job.toml:4:14: `worker_bin`",
        ),
        (
            Job::range(0, 3).worker(&["python3"]).parse("json").text(),
            "job.toml:5:9: `parse` applies only to a `command` task, not to `worker`",
        ),
        (
            Job::range(0, 3).timeout("1s").text(),
            "job.toml:3:1: [task] needs exactly one of",
        ),
        (
            Job::range(0, 3).command(&["no-such-program-here", "{item}"]).text(),
            "job.toml:4:11: `command`: program `no-such-program-here` is not found in PATH",
        ),
    ];
    for (text, expected) in cases {
        let job = write_file(dir.path(), "job.toml", text);
        let ran = run(dir.path(), [OsStr::new("check"), job.as_os_str()], 2);
        assert!(
            ran.stderr().contains(expected),
            "expected {expected:?} in:\n{}",
            ran.stderr()
        );
    }
}

/// Runs `job` in the background and waits (at most 30 s, far less than the 100 s its commands' leftovers would
/// hold it) for it to end with `expected`; returns its records.
fn run_within_30s(dir: &Path, job: &Path, expected: i32) -> Vec<common::Record<u64>> {
    let job = job.to_string_lossy().into_owned();
    let mut supervisor = common::Background::start(dir, &["run", "--quiet", &job]);
    let status = supervisor.wait(Duration::from_secs(30));
    assert_eq!(status.code(), Some(expected), "{}", supervisor.context());
    read_records::<u64>(&dir.join("out.jsonl"))
}

/// Regression: a command whose main process had exited but that left a background process holding its stdout
/// or stderr (`sh -c "sleep 100 & echo done"`) held its item until that process exited. The item now ends with
/// the main process, and what it left in its process group is killed. Item 0 leaves a `sleep` holding stdout,
/// stderr and stdin; item 1 one holding stderr and stdin; item 2 one holding only stdin; item 3 none.
#[test]
fn a_background_process_holding_the_commands_pipes_does_not_hold_its_item() {
    let (dir, marker) = common::leftovers::marked_temp_dir("commands");
    write_file(
        dir.path(),
        "leave.sh",
        "case \"$1\" in\n0) sleep 100 & ;;\n1) sleep 100 >/dev/null & ;;\n2) sleep 100 >/dev/null 2>&1 & ;;\nesac\n\
         echo $(($1 * 7))\n",
    );
    let job = Job::range(0, 4)
        .command(&["sh", "leave.sh", "{item}"])
        .parse("json")
        .marker(&marker)
        .workers(2)
        .results("out.jsonl")
        .write(dir.path());
    let records = run_within_30s(dir.path(), &job, 0);
    let values: BTreeMap<u64, Option<u64>> = records.iter().map(|r| (r.item, r.value)).collect();
    let expected: BTreeMap<u64, Option<u64>> = (0..4).map(|item| (item, Some(item * 7))).collect();
    assert_eq!(values, expected);
    common::assert_no_leftovers(&marker);
}

/// A command whose background process left its process group (`setsid`) and so survives the kill of the group,
/// still holding the command's stdout: the item still ends, once what was in the pipe has been read for a short
/// while, and the process is killed once orphaned to the supervisor (its end-of-run sweep).
#[test]
fn a_background_process_that_left_the_group_does_not_hold_its_item() {
    let (dir, marker) = common::leftovers::marked_temp_dir("commands");
    write_file(
        dir.path(),
        "escape.sh",
        "if [ \"$1\" = 1 ]; then setsid sleep 100 & fi\necho $(($1 * 7))\n",
    );
    let job = Job::range(0, 3)
        .command(&["sh", "escape.sh", "{item}"])
        .parse("json")
        .marker(&marker)
        .workers(1)
        .results("out.jsonl")
        .write(dir.path());
    let records = run_within_30s(dir.path(), &job, 0);
    let values: BTreeMap<u64, Option<u64>> = records.iter().map(|r| (r.item, r.value)).collect();
    let expected: BTreeMap<u64, Option<u64>> = (0..3).map(|item| (item, Some(item * 7))).collect();
    assert_eq!(values, expected);
    common::assert_no_leftovers(&marker);
}

/// A command that times out after starting a background process: the worker is killed for the timeout, and the
/// command's whole process group (the background `sleep` too) with it; the other items are not affected.
#[test]
fn a_timed_out_command_leaves_nothing_of_its_process_group() {
    let (dir, marker) = common::leftovers::marked_temp_dir("commands");
    write_file(
        dir.path(),
        "hang.sh",
        "if [ \"$1\" = 2 ]; then sleep 100 & sleep 100 >/dev/null 2>&1 & sleep 1000; fi\necho $(($1 * 7))\n",
    );
    let job = Job::range(0, 4)
        .command(&["sh", "hang.sh", "{item}"])
        .parse("json")
        .timeout("2s")
        .marker(&marker)
        .workers(2)
        .results("out.jsonl")
        .write(dir.path());
    let records = run_within_30s(dir.path(), &job, 1);
    assert_eq!(records.len(), 4);
    for record in &records {
        match &record.error {
            Some(error) => assert_eq!((record.item, error.kind.as_str()), (2, "timeout")),
            None => assert_eq!(record.value, Some(record.item * 7), "item {}", record.item),
        }
    }
    common::assert_no_leftovers(&marker);
}

/// Regression: a globbed file replaced by a FIFO after the job listed it blocked its worker in `open()` for
/// ever. Every input is now opened without blocking and refused unless it is a regular file: that item fails
/// with kind `error`, naming the FIFO, and the others are fine. Item 0 waits until the test has made the FIFO,
/// so that the swap happens after the listing and before the worker reaches it.
#[test]
fn a_globbed_file_that_became_a_fifo_fails_its_item_instead_of_blocking_the_worker() {
    let dir = common::temp_dir("commands");
    std::fs::create_dir(dir.path().join("in")).expect("mkdir");
    for i in 0..6 {
        write_file(&dir.path().join("in"), &format!("f{i}.txt"), "x\n".repeat(i + 1));
    }
    let fifo = dir.path().join("in/f4.txt");
    // Item 0 says it runs (the listing is done), then waits (at most 60 s) for the FIFO.
    let script = "if [ {item} = 0 ]; then touch started; n=0; while [ ! -p in/f4.txt ] && [ $n -lt 1200 ]; do \
                  sleep 0.05; n=$((n+1)); done; fi; wc -l < {path}";
    let job = Job::glob("in/*.txt")
        .command(&["sh", "-c", script])
        .parse("json")
        .workers(1)
        .batch(1)
        .results("out.jsonl")
        .write(dir.path());
    let job = job.to_string_lossy().into_owned();
    let mut supervisor = common::Background::start(dir.path(), &["run", "--quiet", &job]);
    let started = common::wait_until(Duration::from_secs(60), || dir.path().join("started").exists());
    assert!(started, "item 0 did not start\n{}", supervisor.context());
    std::fs::remove_file(&fifo).expect("remove f4.txt");
    let made = Command::new("mkfifo").arg(&fifo).status().expect("run mkfifo");
    assert!(made.success(), "mkfifo failed");
    let status = supervisor.wait(Duration::from_secs(30));
    assert_eq!(status.code(), Some(1), "{}", supervisor.context());
    let records = read_records::<u64>(&dir.path().join("out.jsonl"));
    assert_eq!(records.len(), 6);
    for record in &records {
        let path = record.input.path().expect("file item");
        if path.ends_with("f4.txt") {
            let error = record.error.as_ref().expect("the FIFO's item failed");
            assert_eq!(error.kind, "error");
            assert!(
                error.message.contains("a FIFO, not a regular file"),
                "{}",
                error.message
            );
        } else {
            assert_eq!(record.value.map(u128::from), Some(wc("-l", path)), "{}", path.display());
        }
    }
}

/// Issue 13: a task could kill the supervisor with SIGBUS by truncating the shared memory it maps (the progress
/// pages), reachable as `/proc/<supervisor>/fd/N` by any process of the same user. Each command here walks up its
/// ancestors (worker, fork server, supervisor) and tries to resize every memfd the project made (grow, then
/// truncate to nothing); every attempt must fail, and the run must end normally, under both start methods.
#[test]
fn a_task_cannot_truncate_the_supervisors_shared_memory() {
    for start in ["spawn", "forkserver"] {
        let dir = common::temp_dir("commands");
        // Prints how many of the project's memfds it found and how many it managed to resize.
        let script = "found=0; resized=0; p=$PPID; \
                      while [ $p -gt 1 ]; do \
                        for fd in /proc/$p/fd/*; do \
                          case $(readlink $fd 2>/dev/null) in /memfd:supervisor-*) \
                            found=$((found + 1)); \
                            truncate -s 1M $fd 2>/dev/null && resized=$((resized + 1)); \
                            truncate -s 0 $fd 2>/dev/null && resized=$((resized + 1));; \
                          esac; \
                        done; \
                        p=$(cut -d' ' -f4 /proc/$p/stat); \
                      done; \
                      sleep 0.2; echo $((found * 1000 + resized))";
        let job = Job::range(0, 8)
            .command(&["sh", "-c", script])
            .parse("json")
            .timeout("60s")
            .workers(2)
            .batch(1)
            .start(start)
            .results("out.jsonl")
            .write(dir.path());
        let ran = run(
            dir.path(),
            [OsStr::new("run"), OsStr::new("--json"), job.as_os_str()],
            0,
        );
        let records = read_records::<u64>(&dir.path().join("out.jsonl"));
        assert_eq!(records.len(), 8, "{start}\n{}", ran.context());
        for record in &records {
            let value = record
                .value
                .unwrap_or_else(|| panic!("{start}: item {} failed\n{}", record.item, ran.context()));
            // At least the worker's progress page and the supervisor's (the same memfd, open in both).
            assert!(
                value / 1000 >= 2,
                "{start}: item {} found only {} memfds",
                record.item,
                value / 1000
            );
            assert_eq!(value % 1000, 0, "{start}: item {} resized a shared memfd", record.item);
        }
    }
}

/// Issue 13: processes were left after a normal, complete run when a command's grandchildren moved to sessions of
/// their own (`setsid`) while the command ended: they outlive the worker's process group and reach the supervisor
/// (a child subreaper) only once their parent has died, which the end-of-run sweep could miss. Twenty runs, each
/// checked through `/proc` at once after the supervisor exits: nothing marked may remain.
#[test]
fn no_process_is_left_after_runs_whose_grandchildren_call_setsid() {
    let (dir, marker) = common::leftovers::marked_temp_dir("commands");
    // One grandchild leaves at once, one after its parent has gone, one from a subshell that is itself killed with
    // the group; none holds the command's output open.
    let script = "setsid sleep 300 </dev/null >/dev/null 2>&1 & \
                  (sleep 0.05; exec setsid sleep 300) </dev/null >/dev/null 2>&1 & \
                  (setsid sh -c 'sleep 300' &) </dev/null >/dev/null 2>&1; \
                  echo {item}";
    let job = Job::range(0, 6)
        .command(&["sh", "-c", script])
        .parse("json")
        .marker(&marker)
        .workers(2)
        .write(dir.path());
    let mut dirty = Vec::new();
    for round in 0..20 {
        let args = if round % 2 == 0 {
            vec!["run", "--quiet"]
        } else {
            vec!["run", "--quiet", "--start", "forkserver"]
        };
        let mut args: Vec<&OsStr> = args.into_iter().map(OsStr::new).collect();
        args.push(job.as_os_str());
        run(dir.path(), args, 0);
        let left = common::marked_processes(&marker);
        if !left.is_empty() {
            dirty.push((round, left));
            // Clean up before the next round, so that each round is judged on its own.
            common::kill_marked(&marker);
        }
    }
    assert!(
        dirty.is_empty(),
        "processes left after {} of 20 runs: {dirty:?}",
        dirty.len()
    );
}
