//! Input files that shrink while workers have them mapped. Reading a mapped page past the end of a file kills the
//! reader with SIGBUS; the job must carry on, fail exactly the affected items, and say why (the file shrank),
//! not just "killed by SIGBUS".
//!
//! Deterministic, no timing: the `fault` task's item 0 waits for a file the test creates (`wait`/`wait_for`),
//! and marks that it started (`once_dir`). The test waits for the mark, so the worker has mapped the input, then
//! truncates the input and releases item 0.

#[path = "common/mod.rs"]
#[expect(
    dead_code,
    reason = "the helpers are shared with e2e.rs; this suite uses only some of them"
)]
mod common;

use std::path::Path;
use std::time::Duration;

use common::{Background, InputExt, read_records, wait_until, write_file};

const PAGE: u64 = 4096;
/// Generous: the machine is shared.
const LIMIT: Duration = Duration::from_secs(120);

/// Starts `job`, waits until item 0 is running (its marker exists), runs `act`, then releases item 0 and waits for
/// the exit code, which must be 1 (some items failed).
fn run_truncating(dir: &Path, job: &Path, act: impl FnOnce()) -> Background {
    let mut supervisor = Background::start(dir, &["run", "--quiet", "--json", job.to_str().expect("UTF-8 path")]);
    assert!(
        wait_until(LIMIT, || dir.join("once/fault-0").exists()),
        "item 0 never started\n{}",
        supervisor.context()
    );
    act();
    write_file(dir, "go", "");
    let status = supervisor.wait(LIMIT);
    assert_eq!(status.code(), Some(1), "{}", supervisor.context());
    supervisor
}

#[test]
fn a_file_input_that_shrinks_fails_only_the_items_past_its_new_end() {
    let dir = tempfile::tempdir().expect("temp dir");
    let dir = dir.path();
    std::fs::create_dir(dir.join("once")).expect("once dir");
    // 16 chunks of one page each: 64 lines of 64 bytes per page, so chunk boundaries fall on page boundaries.
    let line = format!("{}\n", "x".repeat(63));
    let input = write_file(dir, "input.txt", line.repeat(16 * 64));
    let job = write_file(
        dir,
        "job.toml",
        format!(
            "[input]\nfile = \"input.txt\"\nchunk_bytes = {PAGE}\n[task]\nbuiltin = \"fault\"\n\
             args = {{ wait = [0], wait_for = \"{go}\", once_dir = \"{once}\" }}\n\
             [workers]\ncount = 1\nbatch = 1\n[output]\nresults = \"results.jsonl\"\n",
            go = dir.join("go").display(),
            once = dir.join("once").display(),
        ),
    );
    // Keep 5 pages: items 0–4 stay whole, items 5–15 are past the new end.
    let kept = 5 * PAGE;
    let supervisor = run_truncating(dir, &job, || {
        std::fs::OpenOptions::new()
            .write(true)
            .open(&input)
            .and_then(|file| file.set_len(kept))
            .expect("truncate the input");
    });

    let warning = format!("changed size during the job ({} → {kept} bytes)", 16 * PAGE);
    assert!(supervisor.context().contains(&warning), "{}", supervisor.context());
    let records = read_records::<u64>(&dir.join("results.jsonl"));
    assert_eq!(records.len(), 16, "one record per listed item");
    for record in &records {
        let (offset, len) = record.input.chunk();
        assert_eq!((offset, len), (record.item * PAGE, PAGE), "item {}", record.item);
        if offset + len <= kept {
            assert_eq!(
                record.status, "ok",
                "item {} lies before the new end: {record:?}",
                record.item
            );
            assert_eq!(record.value, Some(record.item));
            continue;
        }
        assert_eq!(record.status, "failed", "item {} lies past the new end", record.item);
        let error = record.error.as_ref().expect("a failed record has an error");
        if record.item == 5 {
            // The worker that mapped the whole file reads item 5's page, now past the end: SIGBUS.
            assert_eq!(
                (error.kind.as_str(), error.signal.as_deref()),
                ("signal", Some("SIGBUS"))
            );
            let expected = format!("shrank from {} to {kept} bytes while mapped", 16 * PAGE);
            assert!(error.message.contains(&expected), "{}", error.message);
        } else {
            // Its replacement maps the file as it is now: these items are refused before any read.
            assert_eq!(error.kind, "error", "item {}: {}", record.item, error.message);
            let expected = format!("is {kept} bytes now, but this item is bytes {offset}..{}", offset + len);
            assert!(error.message.contains(&expected), "{}", error.message);
        }
    }
}

#[test]
fn a_glob_file_truncated_while_its_item_runs_fails_that_item_only() {
    let dir = tempfile::tempdir().expect("temp dir");
    let dir = dir.path();
    std::fs::create_dir(dir.join("once")).expect("once dir");
    std::fs::create_dir(dir.join("files")).expect("files dir");
    for name in ["a", "b", "c"] {
        write_file(
            &dir.join("files"),
            &format!("{name}.txt"),
            vec![b'y'; 2 * PAGE as usize],
        );
    }
    let job = write_file(
        dir,
        "job.toml",
        format!(
            "[input]\nglob = \"files/*.txt\"\n[task]\nbuiltin = \"fault\"\n\
             args = {{ wait = [0], wait_for = \"{go}\", once_dir = \"{once}\" }}\n\
             [workers]\ncount = 1\n[output]\nresults = \"results.jsonl\"\n",
            go = dir.join("go").display(),
            once = dir.join("once").display(),
        ),
    );
    let first = dir.join("files/a.txt");
    run_truncating(dir, &job, || {
        std::fs::OpenOptions::new()
            .write(true)
            .truncate(true)
            .open(&first)
            .expect("truncate a.txt");
    });

    let records = read_records::<u64>(&dir.join("results.jsonl"));
    let statuses: Vec<&str> = records.iter().map(|r| r.status.as_str()).collect();
    assert_eq!(statuses, ["failed", "ok", "ok"]);
    let error = records[0].error.as_ref().expect("item 0 failed");
    assert_eq!(error.signal.as_deref(), Some("SIGBUS"));
    let expected = format!("SIGBUS reading input file {} (now 0 bytes)", first.display());
    assert!(error.message.contains(&expected), "{}", error.message);
    assert_eq!((records[1].value, records[2].value), (Some(1), Some(2)));
}
