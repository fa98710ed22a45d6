//! End-to-end tests: the real `supervisor` binary on real job files and generated inputs.
//!
//! Every value is compared with an independent computation — closed forms, a serial sieve, or the real `wc`,
//! `grep` and `sha256sum` — never with code of the supervisor, the child or the shared crate. Inputs are built
//! deterministically and are big enough to span many batches and both workers; every temporary file lives in a
//! `TempDir` and every process started here is reaped (or killed and reaped) before the test ends.

#[path = "common/mod.rs"]
#[expect(
    dead_code,
    reason = "the process-marker helpers are for the suites that run user commands"
)]
mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsStr;
use std::io::Write;
use std::path::Path;
use std::time::Duration;

use common::{
    Background, InputExt, Record, children_of, complete_lines, field_u64, generated_text, is_running, kill_survivors,
    primes_below_table, raw_number, read_records, run, sum_of_squares, tool, wait_until, wc, wc_of_bytes, worker_pids,
    workers_claiming, write_file,
};

/// Workers per run: the machine has two cores, and two workers are what the tests must see doing work.
const WORKERS: &str = "2";

fn temp_dir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("supervisor-e2e-")
        .tempdir()
        .expect("create temp dir")
}

fn path_str(path: &Path) -> &str {
    path.to_str().expect("temp paths are UTF-8")
}

/// `run JOB --json --workers 2 --quiet`, expecting `code`. Runs from `/`, not the job's folder, so that every
/// relative path in the job file must resolve against the job's folder.
fn run_json(job: &Path, code: i32) -> common::Ran {
    run(
        Path::new("/"),
        ["run", path_str(job), "--json", "--workers", WORKERS, "--quiet"],
        code,
    )
}

fn distinct<T: Ord + Copy>(values: impl IntoIterator<Item = T>) -> BTreeSet<T> {
    values.into_iter().collect()
}

/// Checks that the records are items `0..n` in order (order = "input").
fn assert_items_in_order<V>(records: &[Record<V>], n: usize) {
    assert_eq!(records.len(), n, "one record per item");
    for (expected, record) in records.iter().enumerate() {
        assert_eq!(record.item, expected as u64, "records out of input order");
    }
}

// -------------------------------------------------------------------------------------------------------------
// Numeric tasks over ranges

#[test]
fn sum_squares_total_beyond_u64_matches_the_closed_form() {
    let dir = temp_dir();
    let (end, chunk) = (10_000_000u64, 10_000u64);
    let job = write_file(
        dir.path(),
        "squares.toml",
        format!(
            "[input]\nrange = {{ start = 0, end = {end}, chunk = {chunk} }}\n\
             [task]\nbuiltin = \"sum-squares\"\n\
             [output]\nresults = \"squares.jsonl\"\nreduce = \"sum\"\n"
        ),
    );
    let ran = run_json(&job, 0);

    let expected = sum_of_squares(0, end);
    assert!(
        expected > u128::from(u64::MAX),
        "the test must exercise a total beyond u64"
    );
    // Compared as text: a float or a wrapped 64-bit value would both differ.
    assert_eq!(raw_number(&ran.stdout(), "reduced"), expected.to_string());
    let summary = ran.summary();
    let items = end.div_ceil(chunk) as usize;
    assert_eq!(field_u64(&summary, "items"), items as u64);
    assert_eq!(field_u64(&summary, "ok"), items as u64);
    assert_eq!(field_u64(&summary, "failed"), 0);

    let records = read_records::<u128>(&dir.path().join("squares.jsonl"));
    assert_items_in_order(&records, items);
    for record in &records {
        let lo = record.item * chunk;
        assert_eq!(record.input.range(), (lo, lo + chunk), "item {}", record.item);
        assert_eq!(record.status, "ok", "item {}", record.item);
        assert_eq!(
            record.value,
            Some(sum_of_squares(lo, lo + chunk)),
            "item {}",
            record.item
        );
    }
}

#[test]
fn sum_squares_items_beyond_u64_are_exact_including_a_short_last_chunk() {
    let dir = temp_dir();
    let (start, end, chunk) = (4_000_000_000u64, 4_000_100_500u64, 1_000u64);
    let job = write_file(
        dir.path(),
        "big-squares.toml",
        format!(
            "[input]\nrange = {{ start = {start}, end = {end}, chunk = {chunk} }}\n\
             [task]\nbuiltin = \"sum-squares\"\n\
             [output]\nresults = \"big.jsonl\"\nreduce = \"sum\"\n"
        ),
    );
    let ran = run_json(&job, 0);
    assert_eq!(
        raw_number(&ran.stdout(), "reduced"),
        sum_of_squares(start, end).to_string()
    );

    let results = dir.path().join("big.jsonl");
    let records = read_records::<u128>(&results);
    let lines: Vec<String> = std::fs::read_to_string(&results)
        .expect("read results")
        .lines()
        .map(str::to_string)
        .collect();
    assert_items_in_order(&records, (end - start).div_ceil(chunk) as usize);
    for (record, line) in records.iter().zip(&lines) {
        let lo = start + record.item * chunk;
        let hi = (lo + chunk).min(end);
        assert_eq!(record.input.range(), (lo, hi));
        let expected = sum_of_squares(lo, hi);
        assert!(expected > u128::from(u64::MAX));
        assert_eq!(raw_number(line, "value"), expected.to_string(), "{line}");
    }
    assert_eq!(records.last().map(|r| r.input.range()), Some((end - 500, end)));
}

#[test]
fn count_primes_match_a_serial_sieve_per_item_and_in_total() {
    let dir = temp_dir();
    // Odd bounds and chunk, so that item edges fall anywhere.
    let (start, end, chunk) = (1u64, 2_000_003u64, 19_997u64);
    let job = write_file(
        dir.path(),
        "primes.toml",
        format!(
            "[input]\nrange = {{ start = {start}, end = {end}, chunk = {chunk} }}\n\
             [task]\nbuiltin = \"count-primes\"\n\
             [output]\nresults = \"primes.jsonl\"\nreduce = \"sum\"\n"
        ),
    );
    let ran = run_json(&job, 0);
    let below = primes_below_table(end as usize);
    let primes = |lo: u64, hi: u64| u128::from(below[hi as usize] - below[lo as usize]);

    assert_eq!(raw_number(&ran.stdout(), "reduced"), primes(start, end).to_string());
    let records = read_records::<u128>(&dir.path().join("primes.jsonl"));
    assert_items_in_order(&records, (end - start).div_ceil(chunk) as usize);
    for record in &records {
        let lo = start + record.item * chunk;
        let hi = (lo + chunk).min(end);
        assert_eq!(record.input.range(), (lo, hi));
        assert_eq!(record.value, Some(primes(lo, hi)), "[{lo}, {hi})");
    }
}

#[test]
fn reduce_min_max_and_count_agree_with_a_serial_sieve() {
    let dir = temp_dir();
    let (end, chunk) = (300_000u64, 3_000u64);
    let below = primes_below_table(end as usize);
    let per_item: Vec<u64> = (0..end / chunk)
        .map(|i| below[((i + 1) * chunk) as usize] - below[(i * chunk) as usize])
        .collect();
    let expected = [
        ("min", per_item.iter().min().copied()),
        ("max", per_item.iter().max().copied()),
        ("count", Some(per_item.len() as u64)),
    ];
    for (reduce, value) in expected {
        let job = write_file(
            dir.path(),
            &format!("{reduce}.toml"),
            format!(
                "[input]\nrange = {{ start = 0, end = {end}, chunk = {chunk} }}\n\
                 [task]\nbuiltin = \"count-primes\"\n[output]\nreduce = \"{reduce}\"\n"
            ),
        );
        let ran = run_json(&job, 0);
        let summary = ran.summary();
        assert_eq!(summary["reduce"], reduce);
        assert_eq!(summary["reduced"].as_u64(), value, "reduce = {reduce}");
    }
}

// An empty range (`start = end`) is a job-file error since issue 8: tests/bad-jobs/empty-range.toml.

#[test]
fn empty_file_runs_no_items_and_exits_0() {
    let dir = temp_dir();
    write_file(dir.path(), "empty.txt", "");
    let job = write_file(
        dir.path(),
        "empty-file.toml",
        "[input]\nfile = \"empty.txt\"\n[task]\nbuiltin = \"line-count\"\n\
         [output]\nresults = \"empty-file.jsonl\"\nreduce = \"sum\"\n",
    );
    let ran = run_json(&job, 0);
    assert_eq!(field_u64(&ran.summary(), "items"), 0);
    assert_eq!(raw_number(&ran.stdout(), "reduced"), "0");
    assert!(read_records::<u128>(&dir.path().join("empty-file.jsonl")).is_empty());
}

// -------------------------------------------------------------------------------------------------------------
// Text tasks over a file split into line-aligned chunks

/// Runs `builtin` (with `args`) over `file` in 64 KiB chunks; checks that the records are items `0..n` in input
/// order whose `offset/len` tile the file exactly, each chunk ending just after a newline or at the end of the
/// file. Returns the records and the run.
fn run_chunked(dir: &Path, file: &Path, builtin: &str, args: &str) -> (Vec<Record<u128>>, common::Ran) {
    let job = write_file(
        dir,
        &format!("{builtin}.toml"),
        format!(
            "[input]\nfile = \"{}\"\nsplit = \"lines\"\nchunk_bytes = \"64KiB\"\n\
             [task]\nbuiltin = \"{builtin}\"\n{args}\n\
             [output]\nresults = \"{builtin}.jsonl\"\nreduce = \"sum\"\norder = \"input\"\n",
            file.file_name().and_then(OsStr::to_str).expect("file name")
        ),
    );
    let ran = run_json(&job, 0);
    let records = read_records::<u128>(&dir.join(format!("{builtin}.jsonl")));
    let data = std::fs::read(file).expect("read input");
    let n = records.len();
    assert!(
        n as u64 >= data.len() as u64 / (128 << 10),
        "expected many chunks, got {n}"
    );
    assert_items_in_order(&records, n);
    let mut offset = 0u64;
    for record in &records {
        let (at, len) = record.input.chunk();
        assert_eq!(at, offset, "item {}: chunks must tile the file", record.item);
        assert!(len > 0, "item {}: empty chunk", record.item);
        offset += len;
        assert!(
            offset == data.len() as u64 || data[offset as usize - 1] == b'\n',
            "item {} ends mid-line at byte {offset}",
            record.item
        );
        assert_eq!(record.status, "ok", "item {}", record.item);
    }
    assert_eq!(offset, data.len() as u64, "chunks must cover the whole file");
    (records, ran)
}

fn chunk_of<'a>(data: &'a [u8], record: &Record<u128>) -> &'a [u8] {
    let (offset, len) = record.input.chunk();
    &data[offset as usize..(offset + len) as usize]
}

#[test]
fn line_count_matches_wc_l_across_many_chunks() {
    let dir = temp_dir();
    // No final newline: `wc -l` counts newline bytes, so the unterminated last line is not a line.
    let data = generated_text(4 << 20, 1, false);
    let file = write_file(dir.path(), "text.txt", &data);
    let (records, ran) = run_chunked(dir.path(), &file, "line-count", "");

    for record in &records {
        let newlines = chunk_of(&data, record).iter().filter(|&&b| b == b'\n').count();
        assert_eq!(record.value, Some(newlines as u128), "item {}", record.item);
    }
    assert_eq!(raw_number(&ran.stdout(), "reduced"), wc("-l", &file).to_string());
}

#[test]
fn split_none_makes_the_whole_file_one_item() {
    let dir = temp_dir();
    let data = generated_text(1 << 20, 6, true);
    let file = write_file(dir.path(), "whole.txt", &data);
    let job = write_file(
        dir.path(),
        "whole.toml",
        "[input]\nfile = \"whole.txt\"\nsplit = \"none\"\nchunk_bytes = \"4KiB\"\n\
         [task]\nbuiltin = \"word-count\"\n[output]\nresults = \"whole.jsonl\"\n",
    );
    run_json(&job, 0);
    let records = read_records::<u128>(&dir.path().join("whole.jsonl"));
    assert_items_in_order(&records, 1);
    assert_eq!(records[0].input.chunk(), (0, data.len() as u64));
    assert_eq!(records[0].value, Some(wc("-w", &file)));
}

#[test]
fn word_count_matches_c_locale_wc_w_per_chunk_and_in_total() {
    let dir = temp_dir();
    let data = generated_text(4 << 20, 2, true);
    let file = write_file(dir.path(), "words.txt", &data);
    let (records, ran) = run_chunked(dir.path(), &file, "word-count", "");

    for record in &records {
        let expected = wc_of_bytes("-w", dir.path(), chunk_of(&data, record));
        assert_eq!(record.value, Some(expected), "item {}", record.item);
    }
    assert_eq!(raw_number(&ran.stdout(), "reduced"), wc("-w", &file).to_string());
}

#[test]
fn grep_counts_match_grep_c_e_with_and_without_ignore_case() {
    let dir = temp_dir();
    let data = generated_text(3 << 20, 3, false);
    let file = write_file(dir.path(), "log.txt", &data);
    // POSIX classes rather than `\t`, which ERE and Rust regex read differently.
    let pattern = "(^|[[:space:]])(error|warn(ing)?)[[:space:]]+[0-9]+";
    let grep_count = |flags: &str| -> u128 {
        // grep exits 1 when nothing matches; the count is still printed.
        let out = tool(
            "grep",
            &[OsStr::new(flags), OsStr::new(pattern), file.as_os_str()],
            None,
            &[0, 1],
        );
        out.trim().parse().expect("grep -c prints a number")
    };

    for (ignore_case, flags) in [(false, "-cE"), (true, "-ciE")] {
        let args = format!("args = {{ pattern = '{pattern}', ignore_case = {ignore_case} }}");
        let (records, ran) = run_chunked(dir.path(), &file, "grep", &args);
        let expected = grep_count(flags);
        assert!(expected > 0, "the pattern must match something");
        assert_eq!(
            raw_number(&ran.stdout(), "reduced"),
            expected.to_string(),
            "grep {flags}"
        );
        let sum: u128 = records.iter().filter_map(|r| r.value).sum();
        assert_eq!(sum, expected, "per-record counts must add up");
    }
}

#[test]

fn grep_counts_an_item_that_is_a_single_empty_line() {
    let dir = temp_dir();
    // With chunk_bytes = 1 the items are "a\n", "\n" and "b\n"; `^$` matches the middle one.
    let file = write_file(dir.path(), "blank.txt", "a\n\nb\n");
    let job = write_file(
        dir.path(),
        "blank.toml",
        "[input]\nfile = \"blank.txt\"\nchunk_bytes = 1\n\
         [task]\nbuiltin = \"grep\"\nargs = { pattern = \"^$\" }\n[output]\nreduce = \"sum\"\n",
    );
    let expected = tool(
        "grep",
        &[OsStr::new("-cE"), OsStr::new("^$"), file.as_os_str()],
        None,
        &[0, 1],
    );
    let ran = run_json(&job, 0);
    assert_eq!(raw_number(&ran.stdout(), "reduced"), expected.trim());
}

// -------------------------------------------------------------------------------------------------------------
// Whole files

#[test]
fn sha256_of_each_globbed_file_matches_sha256sum() {
    let dir = temp_dir();
    let data = dir.path().join("data");
    std::fs::create_dir(&data).expect("mkdir data");
    let mut rng = common::Prng::new(4);
    let mut sizes = vec![0usize, 1, 63, 64, 65, 4096, 65_537, 3 << 20];
    while sizes.len() < 50 {
        sizes.push(rng.below(300 << 10) as usize);
    }
    let mut files = Vec::new();
    for (i, size) in sizes.iter().enumerate() {
        files.push(write_file(&data, &format!("f{i:02}.bin"), rng.bytes(*size)));
    }
    // Neither may become an item: one does not match, the other matches but is a folder.
    write_file(&data, "notes.txt", "not a .bin file\n");
    std::fs::create_dir(data.join("folder.bin")).expect("mkdir folder.bin");

    let job = write_file(
        dir.path(),
        "digests.toml",
        "[input]\nglob = \"data/*.bin\"\n[task]\nbuiltin = \"sha256\"\n\
         [output]\nresults = \"digests.jsonl\"\n",
    );
    let checked = run(dir.path(), ["check", path_str(&job)], 0);
    assert!(
        checked.stdout().contains(&format!("{} items", files.len())),
        "check counts the matching regular files"
    );
    let ran = run_json(&job, 0);

    let mut args: Vec<&OsStr> = vec![OsStr::new("--")];
    args.extend(files.iter().map(|f| f.as_os_str()));
    let expected: BTreeMap<String, String> = tool("sha256sum", &args, None, &[0])
        .lines()
        .map(|line| {
            let (hash, path) = line.split_once("  ").expect("sha256sum line");
            (path.to_string(), hash.to_string())
        })
        .collect();
    assert_eq!(expected.len(), files.len());

    let records = read_records::<String>(&dir.path().join("digests.jsonl"));
    // Items are the matching regular files in sorted path order.
    assert_items_in_order(&records, files.len());
    for (record, file) in records.iter().zip(&files) {
        let path = record.input.path().expect("file item");
        assert_eq!(path, file.as_path(), "item {}", record.item);
        assert_eq!(
            record.value.as_ref(),
            Some(&expected[path_str(path)]),
            "{}",
            path.display()
        );
    }
    let total: u64 = sizes.iter().map(|&s| s as u64).sum();
    let ipc = field_u64(&ran.summary(), "ipc_bytes");
    assert!(
        ipc < total / 100,
        "ipc_bytes {ipc} is not small next to {total} bytes of input"
    );
}

#[test]
fn large_file_input_keeps_ipc_small_and_uses_two_workers() {
    let dir = temp_dir();
    // 64 MiB: a 4 MiB generated block written 16 times.
    let block = generated_text(4 << 20, 5, true);
    let file = dir.path().join("large.txt");
    {
        let mut out = std::io::BufWriter::new(std::fs::File::create(&file).expect("create"));
        for _ in 0..16 {
            out.write_all(&block).expect("write");
        }
        out.flush().expect("flush");
    }
    let size = std::fs::metadata(&file).expect("metadata").len();
    assert!(size >= 64 << 20);

    let job = write_file(
        dir.path(),
        "large.toml",
        "[input]\nfile = \"large.txt\"\nchunk_bytes = \"1MiB\"\n[task]\nbuiltin = \"line-count\"\n\
         [output]\nresults = \"large.jsonl\"\nreduce = \"sum\"\n",
    );
    let ran = run_json(&job, 0);
    let summary = ran.summary();

    assert_eq!(raw_number(&ran.stdout(), "reduced"), wc("-l", &file).to_string());
    let ipc = field_u64(&summary, "ipc_bytes");
    assert!(
        ipc * 100 < size,
        "ipc_bytes {ipc} is not under 1% of the {size}-byte input: bulk data crossed the channel"
    );

    let reported = distinct(worker_pids(&summary));
    let records = read_records::<u128>(&dir.path().join("large.jsonl"));
    let from_records = distinct(records.iter().map(|r| r.pid));
    assert!(from_records.len() >= 2, "only pids {from_records:?} did work");
    assert_eq!(
        reported, from_records,
        "worker_pids must be the pids that returned results"
    );
}

// -------------------------------------------------------------------------------------------------------------
// Items, ordering, crashes

#[test]
fn noop_runs_every_item_exactly_once() {
    let dir = temp_dir();
    let n = 200_000usize;
    let job = write_file(
        dir.path(),
        "noop.toml",
        format!(
            "[input]\nrange = {{ start = 0, end = {n} }}\n[task]\nbuiltin = \"noop\"\n\
             [output]\nresults = \"noop.jsonl\"\n"
        ),
    );
    let ran = run_json(&job, 0);
    let summary = ran.summary();
    assert_eq!(field_u64(&summary, "items"), n as u64);
    assert_eq!(field_u64(&summary, "ok"), n as u64);

    let records = read_records::<serde_json::Value>(&dir.path().join("noop.jsonl"));
    assert_eq!(records.len(), n);
    let mut seen = vec![false; n];
    for record in &records {
        let slot = &mut seen[usize::try_from(record.item).expect("index")];
        assert!(!*slot, "item {} recorded twice", record.item);
        *slot = true;
        assert_eq!(record.status, "ok");
        assert_eq!(record.value, None, "noop returns null");
    }
}

#[test]
fn completion_order_still_yields_exactly_one_record_per_item() {
    let dir = temp_dir();
    let n = 50_000u64;
    let job = write_file(
        dir.path(),
        "completion.toml",
        format!(
            "[input]\nrange = {{ start = 0, end = {n} }}\n[task]\nbuiltin = \"fault\"\n\
             [output]\nresults = \"completion.jsonl\"\norder = \"completion\"\nreduce = \"sum\"\n"
        ),
    );
    let ran = run_json(&job, 0);
    // `fault` with nothing to inject returns each item's index: Σ i for i < n.
    let expected = u128::from(n) * u128::from(n - 1) / 2;
    assert_eq!(raw_number(&ran.stdout(), "reduced"), expected.to_string());

    let records = read_records::<u128>(&dir.path().join("completion.jsonl"));
    assert_eq!(records.len() as u64, n);
    let items = distinct(records.iter().map(|r| r.item));
    assert_eq!(items.len() as u64, n, "an item was recorded twice");
    assert_eq!(items.first(), Some(&0));
    assert_eq!(items.last(), Some(&(n - 1)));
    for record in &records {
        assert_eq!(record.value, Some(u128::from(record.item)));
        assert_eq!(record.input.range(), (record.item, record.item + 1));
    }
}

#[test]
fn crashes_fail_only_the_item_that_crashed() {
    let dir = temp_dir();
    let n = 2000u64;
    // batch = 50: every crashing item shares its first batch with healthy ones.
    let job = write_file(
        dir.path(),
        "fault.toml",
        format!(
            "[input]\nrange = {{ start = 0, end = {n}, chunk = 1 }}\n\
             [task]\nbuiltin = \"fault\"\n\
             args = {{ segfault = [3, 17], panic = [5], abort = [7], exit = [9], error = [11] }}\n\
             [workers]\nbatch = 50\n\
             [output]\nresults = \"fault.jsonl\"\n"
        ),
    );
    let ran = run_json(&job, 1);
    let summary = ran.summary();
    assert_eq!(field_u64(&summary, "items"), n);
    assert_eq!(field_u64(&summary, "failed"), 6);
    assert_eq!(field_u64(&summary, "ok"), n - 6);

    let records = read_records::<u128>(&dir.path().join("fault.jsonl"));
    assert_items_in_order(&records, n as usize);
    for record in &records {
        let item = record.item;
        let expected: Option<(&str, Option<&str>, Option<i32>)> = match item {
            3 | 17 => Some(("signal", Some("SIGSEGV"), None)),
            7 => Some(("signal", Some("SIGABRT"), None)),
            5 => Some(("panic", None, None)),
            9 => Some(("exit", None, Some(3))),
            11 => Some(("error", None, None)),
            _ => None,
        };
        match expected {
            None => {
                assert_eq!(record.status, "ok", "item {item}: {record:?}");
                assert_eq!(record.value, Some(u128::from(item)), "item {item}");
            }
            Some((kind, signal, code)) => {
                assert_eq!(record.status, "failed", "item {item}: {record:?}");
                let error = record.error.as_ref().expect("failed record has an error");
                assert_eq!(error.kind, kind, "item {item}: {error:?}");
                assert_eq!(error.signal.as_deref(), signal, "item {item}: {error:?}");
                assert_eq!(error.code, code, "item {item}: {error:?}");
                assert!(!error.message.is_empty());
                assert_eq!(record.value, None);
            }
        }
    }
}

// -------------------------------------------------------------------------------------------------------------
// Job files and the command line

struct BadJob {
    name: &'static str,
    text: &'static str,
    /// Where the error must point, if it is in the job file.
    at: Option<(usize, usize)>,
    /// Text the message must contain.
    says: &'static [&'static str],
}

const BAD_JOBS: &[BadJob] = &[
    BadJob {
        name: "unknown-key",
        text: "[input]\nrange = { start = 0, end = 10 }\n[task]\nbuiltin = \"noop\"\ncolour = 3\n",
        at: Some((5, 1)),
        says: &["unknown key `colour` in [task]"],
    },
    BadJob {
        name: "two-sources",
        text: "[input]\nrange = { start = 0, end = 10 }\nglob = \"*.bin\"\n[task]\nbuiltin = \"noop\"\n",
        at: Some((1, 1)),
        says: &["exactly one source", "range, glob"],
    },
    BadJob {
        name: "count-many",
        text: "[input]\nrange = { start = 0, end = 10 }\n[task]\nbuiltin = \"noop\"\n\
               [workers]\ncount = \"many\"\n",
        at: Some((6, 9)),
        says: &["\"many\"", "expected \"auto\" or a whole number"],
    },
    BadJob {
        name: "unknown-builtin",
        text: "[input]\nrange = { start = 0, end = 10 }\n[task]\nbuiltin = \"nope\"\n",
        at: Some((4, 11)),
        says: &[
            "unknown builtin `nope`",
            "sum-squares",
            "count-primes",
            "line-count",
            "word-count",
            "grep",
            "sha256",
            "thumbnail",
            "noop",
            "fault",
        ],
    },
    BadJob {
        name: "grep-without-pattern",
        text: "[input]\nfile = \"data.txt\"\n[task]\nbuiltin = \"grep\"\n",
        at: Some((4, 11)),
        says: &["grep", "pattern"],
    },
    BadJob {
        name: "grep-misspelt-arg",
        text: "[input]\nfile = \"data.txt\"\n[task]\nbuiltin = \"grep\"\nargs = { patern = \"x\" }\n",
        at: Some((5, 8)),
        says: &["unknown argument `patern`"],
    },
    BadJob {
        name: "sha256-on-lines",
        text: "[input]\nfile = \"data.txt\"\nsplit = \"lines\"\n[task]\nbuiltin = \"sha256\"\n",
        at: Some((5, 11)),
        says: &["sha256", "whole files"],
    },
    BadJob {
        name: "missing-input",
        text: "[input]\nfile = \"missing.txt\"\n[task]\nbuiltin = \"line-count\"\n",
        at: Some((2, 8)),
        says: &["missing.txt"],
    },
    BadJob {
        name: "glob-matches-nothing",
        text: "[input]\nglob = \"nothing/*.bin\"\n[task]\nbuiltin = \"sha256\"\n",
        at: None,
        says: &["nothing/*.bin", "matched no files"],
    },
];

#[test]
fn bad_job_files_exit_2_naming_file_line_and_column_and_write_nothing() {
    let dir = temp_dir();
    write_file(dir.path(), "data.txt", "one\ntwo\n");
    for bad in BAD_JOBS {
        let out_dir = format!("out-{}", bad.name);
        let job = write_file(
            dir.path(),
            &format!("{}.toml", bad.name),
            format!("{}[output]\nresults = \"{out_dir}/results.jsonl\"\n", bad.text),
        );
        for command in ["run", "check"] {
            let ran = run(dir.path(), [command, path_str(&job)], 2);
            let stderr = ran.stderr();
            if let Some((line, column)) = bad.at {
                let location = format!("{}:{line}:{column}:", job.display());
                assert!(
                    stderr.contains(&location),
                    "{}: expected the location {location}",
                    bad.name
                );
            }
            for text in bad.says {
                assert!(stderr.contains(text), "{}: expected {text:?} in the message", bad.name);
            }
            assert!(
                !dir.path().join(&out_dir).exists(),
                "{}: a bad job must write nothing",
                bad.name
            );
        }
    }
    let missing = dir.path().join("missing.txt");
    let ran = run(dir.path(), ["run", "missing-input.toml"], 2);
    assert!(
        ran.stderr().contains(path_str(&missing)),
        "the missing file is named by its absolute path"
    );
}

#[test]

fn glob_matching_nothing_is_located_in_the_job_file() {
    let dir = temp_dir();
    let job = write_file(
        dir.path(),
        "empty-glob.toml",
        "[input]\nglob = \"nothing/*.bin\"\n[task]\nbuiltin = \"sha256\"\n",
    );
    let ran = run(dir.path(), ["run", path_str(&job)], 2);
    let location = format!("{}:2:8:", job.display());
    assert!(ran.stderr().contains(&location), "expected {location}");
}

#[test]
fn check_reports_the_item_count_without_running_anything() {
    let dir = temp_dir();
    let (start, end, chunk) = (3u64, 10_000u64, 7u64);
    let job = write_file(
        dir.path(),
        "valid.toml",
        format!(
            "[input]\nrange = {{ start = {start}, end = {end}, chunk = {chunk} }}\n\
             [task]\nbuiltin = \"count-primes\"\n[output]\nresults = \"never.jsonl\"\n"
        ),
    );
    let ran = run(dir.path(), ["check", path_str(&job)], 0);
    let items = (end - start).div_ceil(chunk);
    assert!(
        ran.stdout().contains(&format!("{items} items")),
        "expected the item count {items}"
    );
    assert!(!dir.path().join("never.jsonl").exists(), "check must not run the job");
}

#[test]
fn tasks_lists_every_builtin() {
    let dir = temp_dir();
    let ran = run(dir.path(), ["tasks"], 0);
    let stdout = ran.stdout();
    let names: Vec<&str> = stdout
        .lines()
        .filter(|line| !line.is_empty() && !line.starts_with(char::is_whitespace))
        .collect();
    assert_eq!(
        names,
        [
            "sum-squares",
            "count-primes",
            "line-count",
            "word-count",
            "grep",
            "sha256",
            "thumbnail",
            "noop",
            "fault"
        ]
    );
}

#[test]
fn bad_command_lines_exit_2_and_write_nothing() {
    let dir = temp_dir();
    let job = write_file(
        dir.path(),
        "fine.toml",
        "[input]\nrange = { start = 0, end = 10 }\n[task]\nbuiltin = \"noop\"\n\
         [output]\nresults = \"fine.jsonl\"\n",
    );
    let job = path_str(&job);
    for (args, says) in [
        (vec!["run", job, "--workers", "0"], "--workers"),
        (vec!["run", job, "--batch", "0"], "--batch"),
        (vec!["run", job, "--colour"], "--colour"),
        (vec!["run"], "<JOB>"),
        (vec!["frobnicate"], "frobnicate"),
        (vec!["run", "no-such-job.toml"], "no-such-job.toml"),
    ] {
        let ran = run(dir.path(), &args, 2);
        assert!(ran.stderr().contains(says), "expected {says:?} in the message");
        assert!(!dir.path().join("fine.jsonl").exists());
    }
}

#[test]
fn workers_results_and_batch_flags_override_the_job_file() {
    let dir = temp_dir();
    let n = 1000u64;
    let job = write_file(
        dir.path(),
        "flags.toml",
        format!(
            "[input]\nrange = {{ start = 0, end = {n} }}\n[task]\nbuiltin = \"fault\"\n\
             [workers]\ncount = 1\nbatch = 100\n\
             [output]\nresults = \"from-job.jsonl\"\n"
        ),
    );
    // --results is relative to the current folder, not the job's.
    let cwd = dir.path().join("elsewhere");
    std::fs::create_dir(&cwd).expect("mkdir");
    let ran = run(
        &cwd,
        [
            "run",
            path_str(&job),
            "--json",
            "--quiet",
            "--workers",
            "3",
            "--batch",
            "7",
            "--results",
            "sub/override.jsonl",
        ],
        0,
    );
    let summary = ran.summary();
    let override_path = cwd.join("sub/override.jsonl");
    assert_eq!(field_u64(&summary, "workers"), 3);
    assert_eq!(field_u64(&summary, "batches"), n.div_ceil(7));
    assert_eq!(summary["results"], path_str(&override_path));
    assert_eq!(read_records::<u128>(&override_path).len() as u64, n);
    assert!(
        !dir.path().join("from-job.jsonl").exists(),
        "--results must replace the job's results file"
    );

    // Without flags the job file's values apply, and its relative results path is relative to the job's folder.
    let ran = run(&cwd, ["run", path_str(&job), "--json", "--quiet"], 0);
    let summary = ran.summary();
    assert_eq!(field_u64(&summary, "workers"), 1);
    assert_eq!(field_u64(&summary, "batches"), n.div_ceil(100));
    assert_eq!(worker_pids(&summary).len(), 1);
    assert!(!cwd.join("from-job.jsonl").exists());
    let records = read_records::<u128>(&dir.path().join("from-job.jsonl"));
    assert_eq!(records.len() as u64, n);
    assert_eq!(distinct(records.iter().map(|r| r.pid)).len(), 1);
}

// -------------------------------------------------------------------------------------------------------------
// Stopping

/// A job of 800 000 sum-squares items that takes tens of seconds on two cores and writes results early.
fn slow_job(dir: &Path) -> std::path::PathBuf {
    write_file(
        dir,
        "slow.toml",
        "[input]\nrange = { start = 0, end = 4_000_000_000, chunk = 5_000 }\n\
         [task]\nbuiltin = \"sum-squares\"\n\
         [output]\nresults = \"slow.jsonl\"\nreduce = \"sum\"\n",
    )
}

/// Starts the slow job and waits until its journal holds records (the run is under way) and both workers exist.
/// (While a job runs its records go to the journal; the results file is written from it at the end.)
fn start_slow_job(dir: &Path) -> Background {
    let job = slow_job(dir);
    let mut supervisor = Background::start(dir, &["run", path_str(&job), "--workers", WORKERS]);
    let journal = dir.join("slow.jsonl.journal");
    let pid = supervisor.pid();
    let under_way = wait_until(Duration::from_secs(30), || {
        supervisor.has_exited() || (complete_lines(&journal) > 1 && children_of(pid).len() >= 2)
    });
    assert!(under_way && !supervisor.has_exited(), "the run did not get under way");
    supervisor
}

/// Stops the slow job with `signal` and checks the exit code, the summary and the results file.
fn stop_with(signal: i32, name: &str, code: i32) {
    let dir = temp_dir();
    let mut supervisor = start_slow_job(dir.path());
    let pid = supervisor.pid();
    let workers = children_of(pid);

    supervisor.signal(signal);
    let status = supervisor.wait(Duration::from_secs(60));
    assert_eq!(status.code(), Some(code));
    let stdout = supervisor.stdout();
    assert!(stdout.contains(&format!("stopped by {name}")));

    // Every line is a valid record, each item once, each value right; fewer than all items ran.
    let records = read_records::<u128>(&dir.path().join("slow.jsonl"));
    assert!(!records.is_empty());
    assert!((records.len() as u64) < 800_000, "the run was not stopped early");
    let items = distinct(records.iter().map(|r| r.item));
    assert_eq!(items.len(), records.len(), "an item was recorded twice");
    for record in &records {
        let (lo, hi) = record.input.range();
        assert_eq!((lo, hi), (record.item * 5_000, record.item * 5_000 + 5_000));
        assert_eq!(record.value, Some(sum_of_squares(lo, hi)), "item {}", record.item);
    }
    // The summary counts what the file holds: "N items, OK ok, F failed, …".
    let ok: usize = stdout
        .split(", ")
        .find_map(|part| part.strip_suffix(" ok"))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no ok count in the summary"));
    assert_eq!(records.len(), ok);

    // The supervisor reaped its workers before exiting: none is left, under it or reparented.
    assert!(!workers.is_empty());
    let mut survivors = workers.clone();
    survivors.extend(workers_claiming(pid));
    assert_eq!(kill_survivors(&survivors), [], "workers survived the stop");
    assert_eq!(children_of(pid), [], "processes still have the supervisor as parent");
    assert_eq!(workers_claiming(pid), [], "workers of the supervisor are still running");
}

#[test]
fn sigint_mid_run_exits_130_keeps_finished_records_and_leaves_no_worker() {
    stop_with(libc::SIGINT, "SIGINT", 130);
}

#[test]
fn sigterm_mid_run_exits_143_keeps_finished_records_and_leaves_no_worker() {
    stop_with(libc::SIGTERM, "SIGTERM", 143);
}

#[test]
fn killed_supervisor_takes_its_workers_with_it() {
    let dir = temp_dir();
    let mut supervisor = start_slow_job(dir.path());
    let pid = supervisor.pid();
    let workers = children_of(pid);
    assert!(workers.len() >= 2, "workers: {workers:?}");

    supervisor.signal(libc::SIGKILL);
    let status = supervisor.wait(Duration::from_secs(10));
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(libc::SIGKILL)
    );
    let all_gone = wait_until(Duration::from_secs(5), || {
        workers.iter().all(|w| !is_running(*w)) && workers_claiming(pid).is_empty()
    });
    let mut survivors = workers.clone();
    survivors.extend(workers_claiming(pid));
    let survivors = kill_survivors(&survivors);
    assert!(
        all_gone && survivors.is_empty(),
        "workers outlived their supervisor by 5 s: {survivors:?}"
    );
}
