//! Durable results: the journal, `--resume`, `--retry-failed`, `--force` and `--keep-journal`, on the real binary
//! with real signals.
//!
//! Runs are interrupted the hard way (SIGKILL, SIGINT) at points chosen by watching the journal grow — never by
//! sleeping — and then resumed. The final results must equal those of a clean, uninterrupted run of the same job
//! record for record, but for the fields that name a process or a duration (`pid`, `elapsed_ms`); and the values
//! must equal closed forms or `wc -l`, which share no code with the supervisor. Every temporary file lives in a
//! `TempDir`, and every process started here is reaped (or killed and reaped) before the test ends.

#[path = "common/mod.rs"]
#[expect(
    dead_code,
    reason = "the helpers are shared with e2e.rs; this suite uses only some of them"
)]
mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use common::{
    Background, InputExt, Proc, Ran, Record, children_of, complete_lines, field_u64, generated_text, is_running,
    kill_survivors, raw_number, read_records, run, sum_of_squares, wait_until, wc, worker_pids, workers_claiming,
    write_file,
};
use serde_json::value::RawValue;

/// Workers per run: the machine has two cores.
const WORKERS: &str = "2";

/// Numbers per sum-squares item: about 40 ms of work in a debug build, so the journal grows item by item.
const CHUNK: u64 = 2_000_000;

/// 600 items: several seconds in a debug build on two cores.
const LONG_END: u64 = 1_200_000_000;

/// 150 items: long enough to be interrupted mid-run.
const MEDIUM_END: u64 = 300_000_000;

/// Longest wait for a run to reach a point (the suite may share two cores with other tests).
const REACH_LIMIT: Duration = Duration::from_secs(60);

fn temp_dir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("supervisor-resume-")
        .tempdir()
        .expect("create temp dir")
}

fn path_str(path: &Path) -> &str {
    path.to_str().expect("temp paths are UTF-8")
}

/// `supervisor run JOB --json --quiet --workers 2 EXTRA…`, expecting `code`. Runs from `/`, so every relative path
/// in the job file resolves against the job's folder.
fn run_job(job: &Path, extra: &[&str], code: i32) -> Ran {
    let mut args = vec!["run", path_str(job), "--json", "--quiet", "--workers", WORKERS];
    args.extend_from_slice(extra);
    run(Path::new("/"), args, code)
}

// -------------------------------------------------------------------------------------------------------------
// Jobs

/// A sum-squares job over `0..end` in items of `chunk` numbers ([`CHUNK`] by default), one item per batch, results
/// in `squares.jsonl`.
#[derive(Debug)]
struct Squares {
    job: PathBuf,
    results: PathBuf,
    journal: PathBuf,
    end: u64,
    chunk: u64,
    items: usize,
}

impl Squares {
    fn new(dir: &Path, end: u64, order: &str) -> Squares {
        Squares::chunked(dir, end, CHUNK, order)
    }

    fn chunked(dir: &Path, end: u64, chunk: u64, order: &str) -> Squares {
        let job = write_file(
            dir,
            "squares.toml",
            format!(
                "[input]\nrange = {{ start = 0, end = {end}, chunk = {chunk} }}\n\
                 [task]\nbuiltin = \"sum-squares\"\n\
                 [workers]\nbatch = 1\n\
                 [output]\nresults = \"squares.jsonl\"\nreduce = \"sum\"\norder = \"{order}\"\n"
            ),
        );
        Squares {
            job,
            results: dir.join("squares.jsonl"),
            journal: dir.join("squares.jsonl.journal"),
            end,
            chunk,
            items: end.div_ceil(chunk) as usize,
        }
    }

    fn run(&self, extra: &[&str], code: i32) -> Ran {
        run_job(&self.job, extra, code)
    }

    /// Checks the values against the closed form: each record's, and the summary's `reduced`.
    fn check(&self, ran: &Ran, results: &Path) {
        assert_eq!(
            raw_number(&ran.stdout(), "reduced"),
            sum_of_squares(0, self.end).to_string(),
            "reduced must be Σ i² for i < {}",
            self.end
        );
        let mut records = read_records::<u128>(results);
        records.sort_by_key(|r| r.item);
        assert_eq!(records.len(), self.items, "one record per item");
        for (expected, record) in records.iter().enumerate() {
            assert_eq!(record.item, expected as u64, "items must be exactly 0..{}", self.items);
            let lo = record.item * self.chunk;
            let hi = (lo + self.chunk).min(self.end);
            assert_eq!(record.input.range(), (lo, hi), "item {}", record.item);
            assert_eq!(record.status, "ok", "item {}", record.item);
            assert_eq!(record.value, Some(sum_of_squares(lo, hi)), "item {}", record.item);
        }
    }
}

/// The records of a clean, uninterrupted run of the medium job (shared by the tests that resume it).
fn medium_clean() -> &'static [Comparable] {
    static CLEAN: OnceLock<Vec<Comparable>> = OnceLock::new();
    CLEAN.get_or_init(|| {
        let dir = temp_dir();
        let job = Squares::new(dir.path(), MEDIUM_END, "input");
        let ran = job.run(&[], 0);
        job.check(&ran, &job.results);
        comparable_lines(&job.results)
    })
}

// -------------------------------------------------------------------------------------------------------------
// Records compared across runs

/// A record without the fields that differ between two runs of the same item (`pid`, `elapsed_ms`): field name →
/// its JSON text, so that integers beyond 64 bits are compared exactly.
type Comparable = BTreeMap<String, String>;

fn comparable(line: &str) -> Comparable {
    let mut fields: BTreeMap<String, Box<RawValue>> =
        serde_json::from_str(line).unwrap_or_else(|error| panic!("not a record ({error}): {line}"));
    for volatile in ["pid", "elapsed_ms"] {
        assert!(fields.remove(volatile).is_some(), "no `{volatile}` in {line}");
    }
    fields.into_iter().map(|(k, v)| (k, v.get().to_string())).collect()
}

fn item_of(record: &Comparable) -> u64 {
    record["item"].parse().expect("item is an integer")
}

/// Every line of a results file, as [`Comparable`] records.
fn comparable_lines(path: &Path) -> Vec<Comparable> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|error| panic!("read {}: {error}", path.display()));
    assert!(
        text.is_empty() || text.ends_with('\n'),
        "{}: torn last line",
        path.display()
    );
    text.lines().map(comparable).collect()
}

/// The results file equals the clean run's, record for record and in order.
fn assert_same_as_clean(results: &Path, clean: &[Comparable]) {
    let actual = comparable_lines(results);
    for (index, (actual, clean)) in actual.iter().zip(clean).enumerate() {
        assert_eq!(actual, clean, "record {index} differs from the clean run's");
    }
    assert_eq!(
        actual.len(),
        clean.len(),
        "number of records differs from the clean run's"
    );
}

/// The records of the journal at `path` (complete lines after the header), as `(item, line)`; checks the header.
fn journal_records(path: &Path) -> Vec<(u64, String)> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|error| panic!("read {}: {error}", path.display()));
    let mut lines = text.split_inclusive('\n').filter(|line| line.ends_with('\n'));
    let header: serde_json::Value = serde_json::from_str(lines.next().expect("a header line"))
        .unwrap_or_else(|error| panic!("{}: the header is not JSON: {error}", path.display()));
    assert_eq!(header["journal"], 1, "header: {header}");
    lines
        .map(|line| {
            let record = comparable(line.trim_end());
            (item_of(&record), line.trim_end().to_string())
        })
        .collect()
}

/// The journal's records hold each item at most once, each equal to the clean run's; returns their items.
fn check_journal_against_clean(path: &Path, clean: &[Comparable]) -> BTreeSet<u64> {
    let records = journal_records(path);
    let mut items = BTreeSet::new();
    for (item, line) in &records {
        assert!(items.insert(*item), "item {item} is in the journal twice");
        assert_eq!(
            &comparable(line),
            &clean[*item as usize],
            "journal record of item {item}"
        );
    }
    items
}

// -------------------------------------------------------------------------------------------------------------
// Interrupting runs

/// Starts `supervisor run JOB --quiet --workers 2 EXTRA…` in the background (logs in `dir/tag/`) and waits until
/// `journal` has at least `lines` complete lines and two workers run. Returns the run and its workers.
fn start_until(
    dir: &Path,
    tag: &str,
    job: &Path,
    extra: &[&str],
    journal: &Path,
    lines: usize,
) -> (Background, Vec<Proc>) {
    let cwd = dir.join(tag);
    std::fs::create_dir_all(&cwd).expect("mkdir log dir");
    let mut args = vec!["run", path_str(job), "--quiet", "--workers", WORKERS];
    args.extend_from_slice(extra);
    let mut supervisor = Background::start(&cwd, &args);
    let pid = supervisor.pid();
    let reached = wait_until(REACH_LIMIT, || {
        supervisor.has_exited() || (complete_lines(journal) >= lines && children_of(pid).len() >= 2)
    });
    assert!(
        reached && !supervisor.has_exited(),
        "{tag}: the run did not reach {lines} journal lines with two workers while running"
    );
    let mut workers = children_of(pid);
    workers.extend(workers_claiming(pid));
    (supervisor, workers)
}

/// Within 5 s of its supervisor's end, none of `workers` (nor any worker claiming `pid`) runs.
fn assert_workers_gone(pid: i32, workers: &[Proc]) {
    assert!(!workers.is_empty(), "no workers were seen");
    let all_gone = wait_until(Duration::from_secs(5), || {
        workers.iter().all(|w| !is_running(*w)) && workers_claiming(pid).is_empty()
    });
    let mut survivors = workers.to_vec();
    survivors.extend(workers_claiming(pid));
    let survivors = kill_survivors(&survivors);
    assert!(
        all_gone && survivors.is_empty(),
        "workers outlived their supervisor by 5 s: {survivors:?}"
    );
}

/// SIGKILLs the supervisor and checks that its workers go with it.
fn sigkill(mut supervisor: Background, workers: &[Proc]) {
    let pid = supervisor.pid();
    supervisor.signal(libc::SIGKILL);
    let status = supervisor.wait(Duration::from_secs(10));
    assert_eq!(status.signal(), Some(libc::SIGKILL), "{}", supervisor.context());
    assert_workers_gone(pid, workers);
}

/// Starts the job, SIGKILLs it once its journal has `lines` lines; returns the items the journal records.
fn kill_at(dir: &Path, tag: &str, job: &Squares, extra: &[&str], lines: usize) -> BTreeSet<u64> {
    let (supervisor, workers) = start_until(dir, tag, &job.job, extra, &job.journal, lines);
    sigkill(supervisor, &workers);
    check_journal_against_clean(&job.journal, medium_clean())
}

fn append(path: &Path, bytes: &[u8]) {
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .open(path)
        .unwrap_or_else(|error| panic!("open {}: {error}", path.display()));
    file.write_all(bytes).expect("append");
}

// -------------------------------------------------------------------------------------------------------------
// Kill and resume

#[test]
fn sigkill_early_middle_and_late_then_resume_equals_a_clean_run() {
    let dir = temp_dir();
    let job = Squares::new(dir.path(), LONG_END, "input");
    let n = job.items;

    // The clean run writes a results file (and so a journal) of its own.
    let clean_path = dir.path().join("clean.jsonl");
    let clean_run = job.run(&["--results", path_str(&clean_path)], 0);
    job.check(&clean_run, &clean_path);
    let clean = comparable_lines(&clean_path);

    // Each kill interrupts the resumption of the previous one; the journal must keep everything recorded before.
    let kill_points = [
        ("early", 1, 0..=n / 10),
        ("middle", 1 + n / 2, n / 2..=n - 1),
        ("late", 1 + n * 9 / 10, n * 9 / 10..=n - 1),
    ];
    let mut recorded = BTreeSet::new();
    for (k, (name, lines, expected)) in kill_points.into_iter().enumerate() {
        let extra: &[&str] = if k == 0 { &[] } else { &["--resume"] };
        let (supervisor, workers) = start_until(dir.path(), name, &job.job, extra, &job.journal, lines);
        sigkill(supervisor, &workers);
        let items = check_journal_against_clean(&job.journal, &clean);
        assert!(
            expected.contains(&items.len()),
            "{name} kill: the journal holds {} records, expected {expected:?}",
            items.len()
        );
        eprintln!("{name} kill: the journal holds {} of {n} records", items.len());
        assert!(
            recorded.is_subset(&items),
            "{name} kill: records of an earlier run were lost"
        );
        assert!(!job.results.exists(), "{name} kill: a results file before the end");
        recorded = items;
    }

    let ran = job.run(&["--resume"], 0);
    let summary = ran.summary();
    assert_eq!(field_u64(&summary, "resumed"), recorded.len() as u64);
    assert_eq!(field_u64(&summary, "items"), n as u64);
    assert_eq!(field_u64(&summary, "ok"), n as u64);
    assert_eq!(field_u64(&summary, "failed"), 0);
    assert_eq!(
        raw_number(&ran.stdout(), "reduced"),
        raw_number(&clean_run.stdout(), "reduced")
    );
    job.check(&ran, &job.results);
    assert_same_as_clean(&job.results, &clean);
    assert!(
        !job.journal.exists(),
        "the journal must be removed after a complete run"
    );
}

#[test]
fn completion_order_kill_and_resume_has_one_record_per_item() {
    let dir = temp_dir();
    let job = Squares::new(dir.path(), MEDIUM_END, "completion");
    let clean = medium_clean();
    let recorded = kill_at(dir.path(), "first", &job, &[], 1 + job.items / 2);
    let before: Vec<u64> = journal_records(&job.journal).iter().map(|(item, _)| *item).collect();

    let ran = job.run(&["--resume"], 0);
    assert_eq!(field_u64(&ran.summary(), "resumed"), recorded.len() as u64);
    job.check(&ran, &job.results);
    let records = comparable_lines(&job.results);
    let mut by_item = BTreeMap::new();
    for record in &records {
        assert!(
            by_item.insert(item_of(record), record).is_none(),
            "item {} twice",
            item_of(record)
        );
    }
    assert_eq!(by_item.len(), job.items);
    for (item, record) in by_item {
        assert_eq!(record, &clean[item as usize], "item {item}");
    }
    // In completion order, what the first run finished comes first, in the order it finished.
    let first: Vec<u64> = records.iter().take(before.len()).map(item_of).collect();
    assert_eq!(first, before);
}

#[test]
fn killed_during_the_final_write_resume_runs_nothing_and_writes_the_results() {
    let dir = temp_dir();
    let job = Squares::new(dir.path(), 200_000_000, "input");
    let n = job.items as u64;
    job.run(&["--keep-journal"], 0);
    let complete = std::fs::read(&job.results).expect("read results");
    // As if the supervisor died after the journal was complete but before the rename of the results file.
    std::fs::remove_file(&job.results).expect("remove results");
    let stale = dir.path().join(".squares.jsonl.tmp-12345");
    std::fs::write(&stale, &complete[..complete.len() / 2]).expect("write stale temp");

    let ran = job.run(&["--resume"], 0);
    let summary = ran.summary();
    assert_eq!(field_u64(&summary, "resumed"), n);
    assert_eq!(field_u64(&summary, "ok"), n);
    assert_eq!(field_u64(&summary, "batches"), 0, "nothing is left to run");
    assert_eq!(worker_pids(&summary), Vec::<u32>::new());
    job.check(&ran, &job.results);
    assert_eq!(std::fs::read(&job.results).expect("read results"), complete);
    assert!(!job.journal.exists());
    // A temp file of another (dead) process is not ours to remove: report, do not require.
    if stale.exists() {
        eprintln!("note: the stale {} was left in place", stale.display());
    }
}

#[test]
fn a_resume_with_nothing_to_run_reports_zero_worker_cpu() {
    let dir = temp_dir();
    let job = Squares::new(dir.path(), 20_000_000, "input");
    job.run(&["--keep-journal"], 0);
    let ran = job.run(&["--resume"], 0);
    assert_eq!(raw_number(&ran.stdout(), "worker_cpu_s"), "0.0");
}

#[test]
fn a_resumed_count_reduction_counts_items_whose_value_is_null() {
    let dir = temp_dir();
    let job = write_file(
        dir.path(),
        "noop.toml",
        "[input]\nrange = { start = 0, end = 100 }\n[task]\nbuiltin = \"noop\"\n\
         [output]\nresults = \"noop.jsonl\"\nreduce = \"count\"\n",
    );
    let clean = run_job(&job, &["--keep-journal"], 0);
    assert_eq!(raw_number(&clean.stdout(), "reduced"), "100");
    let resumed = run_job(&job, &["--resume", "--keep-journal"], 0);
    assert_eq!(field_u64(&resumed.summary(), "resumed"), 100);
    assert_eq!(
        raw_number(&resumed.stdout(), "reduced"),
        "100",
        "the count of the same 100 ok items"
    );

    // Summing nulls is an error in a clean run, and must stay one when the values come from the journal.
    let sum = write_file(
        dir.path(),
        "noop-sum.toml",
        "[input]\nrange = { start = 0, end = 100 }\n[task]\nbuiltin = \"noop\"\n\
         [output]\nresults = \"noop-sum.jsonl\"\nreduce = \"sum\"\n",
    );
    let clean = run_job(&sum, &["--keep-journal"], 0);
    assert!(clean.summary()["reduced"].is_null());
    assert!(clean.summary()["reduce_error"].is_string());
    let resumed = run_job(&sum, &["--resume"], 0);
    assert_eq!(resumed.summary()["reduced"], clean.summary()["reduced"]);
    assert_eq!(resumed.summary()["reduce_error"], clean.summary()["reduce_error"]);
}

// -------------------------------------------------------------------------------------------------------------
// Damaged journals

#[test]
fn a_torn_last_record_is_dropped_and_reported_and_the_resume_is_clean() {
    let dir = temp_dir();
    let job = Squares::new(dir.path(), MEDIUM_END, "input");
    let recorded = kill_at(dir.path(), "first", &job, &[], 1 + 20);
    // The torn line is the one after the last newline (whatever the kill itself may have left there).
    let torn_line = complete_lines(&job.journal) + 1;
    append(&job.journal, b"{\"item\":12,\"sta");

    let ran = job.run(&["--resume"], 0);
    let expected = format!(
        "journal {}: dropped line {torn_line}: a torn last record",
        job.journal.display()
    );
    assert!(ran.stderr().contains(&expected), "expected {expected:?} on stderr");
    assert_eq!(field_u64(&ran.summary(), "resumed"), recorded.len() as u64);
    job.check(&ran, &job.results);
    assert_same_as_clean(&job.results, medium_clean());
}

#[test]
fn garbage_lines_in_the_journal_are_dropped_and_named() {
    let dir = temp_dir();
    let job = Squares::new(dir.path(), MEDIUM_END, "input");
    let n = job.items;
    let recorded = kill_at(dir.path(), "first", &job, &[], 1 + 20);
    // A well-formed record, but of an item the job does not have.
    let (last_item, last) = journal_records(&job.journal).pop().expect("a record");
    if !std::fs::read(&job.journal).expect("read journal").ends_with(b"\n") {
        // The kill tore a record: end it, so that the garbage below starts a line of its own.
        append(&job.journal, b"\n");
    }
    let garbage_line = complete_lines(&job.journal) + 1;
    let beyond = last.replacen(
        &format!("{{\"item\":{last_item},"),
        &format!("{{\"item\":{},", n + 5),
        1,
    );
    assert_ne!(beyond, last);
    append(&job.journal, format!("not json\n{beyond}\n").as_bytes());

    let ran = job.run(&["--resume"], 0);
    let stderr = ran.stderr();
    let journal = job.journal.display();
    let not_json = format!("journal {journal}: dropped line {garbage_line}: not a record");
    let too_far = format!(
        "journal {journal}: dropped line {}: item {} is beyond the job's {n} items",
        garbage_line + 1,
        n + 5
    );
    assert!(stderr.contains(&not_json), "expected {not_json:?} on stderr");
    assert!(stderr.contains(&too_far), "expected {too_far:?} on stderr");
    assert_eq!(field_u64(&ran.summary(), "resumed"), recorded.len() as u64);
    job.check(&ran, &job.results);
    assert_same_as_clean(&job.results, medium_clean());
}

// -------------------------------------------------------------------------------------------------------------
// Refusals

#[test]
fn a_changed_input_or_job_file_refuses_to_resume() {
    let dir = temp_dir();
    let input = write_file(dir.path(), "text.txt", generated_text(512 << 10, 7, true));
    let job_text = "[input]\nfile = \"text.txt\"\nchunk_bytes = \"4KiB\"\n\
                    [task]\nbuiltin = \"line-count\"\n\
                    [output]\nresults = \"lines.jsonl\"\nreduce = \"sum\"\n";
    let job = write_file(dir.path(), "lines.toml", job_text);
    let journal = dir.path().join("lines.jsonl.journal");

    let first = run_job(&job, &["--keep-journal"], 0);
    let items = field_u64(&first.summary(), "items");
    assert!(items >= 64, "expected many 4 KiB chunks, got {items}");
    assert_eq!(raw_number(&first.stdout(), "reduced"), wc("-l", &input).to_string());
    assert_eq!(complete_lines(&journal) as u64, 1 + items);

    // Unchanged: resumes, with nothing left to run.
    let same = run_job(&job, &["--resume", "--keep-journal"], 0);
    assert_eq!(field_u64(&same.summary(), "resumed"), items);
    assert_eq!(field_u64(&same.summary(), "ok"), items);
    assert_eq!(raw_number(&same.stdout(), "reduced"), wc("-l", &input).to_string());
    let kept = std::fs::read(&journal).expect("read journal");

    // The job file changed: a comment, then another reduction.
    let changed_jobs = [
        format!("# a comment\n{job_text}"),
        job_text.replace("reduce = \"sum\"", "reduce = \"count\""),
    ];
    for changed in changed_jobs {
        write_file(dir.path(), "lines.toml", &changed);
        let ran = run_job(&job, &["--resume"], 2);
        assert!(ran.stderr().contains("the job file changed"), "job file:\n{changed}");
        assert_eq!(
            std::fs::read(&journal).expect("read journal"),
            kept,
            "a refusal must not touch the journal"
        );
    }
    write_file(dir.path(), "lines.toml", job_text);

    // The input changed: one more line.
    append(&input, b"one more line\n");
    let ran = run_job(&job, &["--resume"], 2);
    let stderr = ran.stderr();
    assert!(stderr.contains("the input changed"));
    assert!(
        stderr.contains(path_str(&input)),
        "the message must name the input file"
    );
    assert_eq!(std::fs::read(&journal).expect("read journal"), kept);
}

#[test]
fn a_changed_glob_listing_refuses_to_resume() {
    let dir = temp_dir();
    let data = dir.path().join("data");
    std::fs::create_dir(&data).expect("mkdir data");
    for i in 0..5 {
        write_file(&data, &format!("f{i}.bin"), format!("file {i}\n"));
    }
    let job = write_file(
        dir.path(),
        "digests.toml",
        "[input]\nglob = \"data/*.bin\"\n[task]\nbuiltin = \"sha256\"\n[output]\nresults = \"digests.jsonl\"\n",
    );
    run_job(&job, &["--keep-journal"], 0);

    // One more file: more items, and another listing.
    write_file(&data, "f5.bin", "file 5\n");
    let ran = run_job(&job, &["--resume"], 2);
    assert!(ran.stderr().contains("the input changed"));
    assert!(ran.stderr().contains("the number of items changed: was 5, now 6"));
    std::fs::remove_file(data.join("f5.bin")).expect("remove f5");
    run_job(&job, &["--resume", "--keep-journal"], 0);

    // A file rewritten with the same size: its modification time changed.
    write_file(&data, "f2.bin", "FILE 2\n");
    let ran = run_job(&job, &["--resume"], 2);
    assert!(ran.stderr().contains("the input changed"));
    assert!(!ran.stderr().contains("the number of items changed"));
}

#[test]
fn a_journal_of_another_version_or_without_a_header_is_refused() {
    let dir = temp_dir();
    let job = Squares::new(dir.path(), 20_000_000, "input");
    job.run(&["--keep-journal"], 0);
    let text = std::fs::read_to_string(&job.journal).expect("read journal");
    let other = text.replacen("{\"journal\":1,", "{\"journal\":2,", 1);
    assert_ne!(other, text, "the header starts with the version");
    let cases = [
        (other, "it is format version 2"),
        (String::new(), "it has no header"),
        (
            text[..text.find('\n').expect("a header line")].to_string(),
            "it has no header",
        ),
    ];
    for (journal, says) in cases {
        std::fs::write(&job.journal, &journal).expect("write journal");
        let ran = job.run(&["--resume"], 2);
        assert!(ran.stderr().contains(says), "expected {says:?} on stderr");
        assert_eq!(std::fs::read_to_string(&job.journal).expect("read journal"), journal);
    }
}

#[test]
fn an_existing_journal_without_resume_is_refused_and_force_starts_over() {
    let dir = temp_dir();
    let job = Squares::new(dir.path(), MEDIUM_END, "input");
    let n = job.items as u64;
    kill_at(dir.path(), "first", &job, &[], 1 + 20);
    let journal = std::fs::read(&job.journal).expect("read journal");

    let ran = job.run(&[], 2);
    let stderr = ran.stderr();
    assert!(stderr.contains("pass --resume to continue it, or --force to start over"));
    assert!(
        stderr.contains(path_str(&job.journal)),
        "the message must name the journal"
    );
    assert_eq!(std::fs::read(&job.journal).expect("read journal"), journal);
    assert!(!job.results.exists());

    // --force and --resume contradict each other.
    job.run(&["--force", "--resume"], 2);
    assert_eq!(std::fs::read(&job.journal).expect("read journal"), journal);

    let ran = job.run(&["--force"], 0);
    let summary = ran.summary();
    assert_eq!(field_u64(&summary, "resumed"), 0);
    assert_eq!(field_u64(&summary, "ok"), n);
    assert_eq!(field_u64(&summary, "batches"), n, "every item runs again");
    job.check(&ran, &job.results);
    assert!(!job.journal.exists());
}

#[test]
fn resume_without_a_results_file_exits_2() {
    let dir = temp_dir();
    let job = write_file(
        dir.path(),
        "nowhere.toml",
        "[input]\nrange = { start = 0, end = 10 }\n[task]\nbuiltin = \"noop\"\n",
    );
    for flag in ["--resume", "--retry-failed"] {
        let ran = run_job(&job, &[flag], 2);
        assert!(ran.stderr().contains("needs a results file"), "{flag}");
    }
    // --results gives it one.
    let results = dir.path().join("given.jsonl");
    let ran = run_job(&job, &["--resume", "--results", path_str(&results)], 0);
    assert_eq!(field_u64(&ran.summary(), "ok"), 10);
    assert_eq!(read_records::<serde_json::Value>(&results).len(), 10);
}

// -------------------------------------------------------------------------------------------------------------
// Stopping gracefully

#[test]
fn sigint_keeps_the_journal_and_the_finished_records_then_resume_completes() {
    let dir = temp_dir();
    let job = Squares::new(dir.path(), MEDIUM_END, "input");
    let n = job.items;
    let clean = medium_clean();
    let (mut supervisor, workers) = start_until(dir.path(), "first", &job.job, &[], &job.journal, 1 + 20);
    let pid = supervisor.pid();
    supervisor.signal(libc::SIGINT);
    let status = supervisor.wait(REACH_LIMIT);
    assert_eq!(status.code(), Some(130), "{}", supervisor.context());
    assert_workers_gone(pid, &workers);
    let stdout = supervisor.stdout();
    let kept = format!("journal: kept at {}", job.journal.display());
    assert!(stdout.contains(&kept), "expected {kept:?} in the summary:\n{stdout}");

    // The results file holds exactly what finished, which is what the journal holds.
    let journaled = check_journal_against_clean(&job.journal, clean);
    let records = read_records::<u128>(&job.results);
    let items: BTreeSet<u64> = records.iter().map(|r| r.item).collect();
    assert_eq!(items.len(), records.len(), "an item was recorded twice");
    assert!(!items.is_empty() && items.len() < n, "{} of {n} records", items.len());
    assert_eq!(items, journaled);
    for line in comparable_lines(&job.results) {
        assert_eq!(line, clean[item_of(&line) as usize]);
    }

    let ran = job.run(&["--resume"], 0);
    assert_eq!(field_u64(&ran.summary(), "resumed"), items.len() as u64);
    job.check(&ran, &job.results);
    assert_same_as_clean(&job.results, clean);
    assert!(!job.journal.exists());
}

#[test]
fn a_second_sigint_kills_the_items_in_flight_without_recording_them_and_resume_completes() {
    let dir = temp_dir();
    // Items of about half a second, so that the first SIGINT leaves work in flight for the second to kill.
    let job = Squares::chunked(dir.path(), 480_000_000, 24_000_000, "input");
    let (mut supervisor, workers) = start_until(dir.path(), "first", &job.job, &[], &job.journal, 1 + 2);
    let pid = supervisor.pid();
    let stderr = dir.path().join("first/supervisor.stderr");
    supervisor.signal(libc::SIGINT);
    let graceful = wait_until(REACH_LIMIT, || {
        supervisor.has_exited() || std::fs::read_to_string(&stderr).is_ok_and(|text| text.contains("SIGINT received"))
    });
    assert!(graceful, "no word of the first SIGINT on stderr");
    if supervisor.has_exited() {
        eprintln!("the run ended before the second SIGINT");
    } else {
        supervisor.signal(libc::SIGINT);
    }
    let status = supervisor.wait(REACH_LIMIT);
    assert_eq!(status.code(), Some(130), "{}", supervisor.context());
    assert_workers_gone(pid, &workers);

    // The killed items have no record: neither ok nor failed.
    let records = read_records::<u128>(&job.results);
    assert!(records.len() < job.items, "the run was not stopped early");
    for record in &records {
        assert_eq!(
            record.status, "ok",
            "item {} was recorded although it was killed",
            record.item
        );
    }
    let items: BTreeSet<u64> = records.iter().map(|r| r.item).collect();
    assert_eq!(items.len(), records.len(), "an item was recorded twice");
    let journaled: BTreeSet<u64> = journal_records(&job.journal).iter().map(|(item, _)| *item).collect();
    assert_eq!(items, journaled);

    let ran = job.run(&["--resume"], 0);
    assert_eq!(field_u64(&ran.summary(), "resumed"), items.len() as u64);
    assert_eq!(field_u64(&ran.summary(), "failed"), 0);
    job.check(&ran, &job.results);
}

// -------------------------------------------------------------------------------------------------------------
// --retry-failed

fn fault_job(dir: &Path, args: &str) -> PathBuf {
    write_file(
        dir,
        "fault.toml",
        format!(
            "[input]\nrange = {{ start = 0, end = 20, chunk = 1 }}\n\
             [task]\nbuiltin = \"fault\"\nargs = {args}\n\
             [output]\nresults = \"fault.jsonl\"\nreduce = \"sum\"\n"
        ),
    )
}

/// Items 3 and 7 failed with an injected error; every other item returned its index.
fn check_fault_records(results: &Path, failed: bool) -> Vec<Record<u128>> {
    let records = read_records::<u128>(results);
    assert_eq!(records.len(), 20, "one record per item");
    for (expected, record) in records.iter().enumerate() {
        assert_eq!(record.item, expected as u64);
        if failed && (record.item == 3 || record.item == 7) {
            assert_eq!(record.status, "failed", "item {}", record.item);
            assert_eq!(record.error.as_ref().map(|e| e.kind.as_str()), Some("error"));
        } else {
            assert_eq!(record.status, "ok", "item {}", record.item);
            assert_eq!(record.value, Some(u128::from(record.item)));
        }
    }
    records
}

#[test]
fn retry_failed_runs_the_failed_items_again() {
    let dir = temp_dir();
    let job = fault_job(dir.path(), "{ error = [3, 7] }");
    let results = dir.path().join("fault.jsonl");
    let journal = dir.path().join("fault.jsonl.journal");

    let first = run_job(&job, &["--keep-journal"], 1);
    assert_eq!(field_u64(&first.summary(), "failed"), 2);
    // Σ i for i < 20, without 3 and 7.
    assert_eq!(raw_number(&first.stdout(), "reduced"), "180");
    check_fault_records(&results, true);
    let first_lines: Vec<String> = std::fs::read_to_string(&results)
        .expect("read results")
        .lines()
        .map(str::to_string)
        .collect();

    let retry = run_job(&job, &["--retry-failed", "--keep-journal"], 1);
    let summary = retry.summary();
    assert_eq!(field_u64(&summary, "resumed"), 18);
    assert_eq!(field_u64(&summary, "failed"), 2);
    assert_eq!(field_u64(&summary, "ok"), 18);
    assert_eq!(raw_number(&retry.stdout(), "reduced"), "180");
    let records = check_fault_records(&results, true);
    // Items 3 and 7 ran again, in this run's workers; the others are the first run's records, byte for byte.
    let retry_pids = worker_pids(&summary);
    let first_pids = worker_pids(&first.summary());
    let text = std::fs::read_to_string(&results).expect("read results");
    let lines: Vec<&str> = text.lines().collect();
    for record in &records {
        let item = record.item as usize;
        if item == 3 || item == 7 {
            assert!(retry_pids.contains(&record.pid), "item {item} did not run again");
            assert!(!first_pids.contains(&record.pid));
        } else {
            assert_eq!(lines[item], first_lines[item], "item {item} changed");
        }
    }
    // The journal appends the new records of 3 and 7: the last line of an item counts.
    assert_eq!(complete_lines(&journal), 1 + 20 + 2);
}

#[test]
fn retry_failed_succeeds_when_the_failures_were_transient() {
    let dir = temp_dir();
    let markers = dir.path().join("markers");
    std::fs::create_dir(&markers).expect("mkdir markers");
    let job = fault_job(
        dir.path(),
        &format!("{{ error = [3, 7], once_dir = \"{}\" }}", path_str(&markers)),
    );
    let results = dir.path().join("fault.jsonl");

    run_job(&job, &["--keep-journal"], 1);
    check_fault_records(&results, true);
    assert!(markers.join("fault-3").exists() && markers.join("fault-7").exists());

    let retry = run_job(&job, &["--retry-failed"], 0);
    let summary = retry.summary();
    assert_eq!(field_u64(&summary, "resumed"), 18);
    assert_eq!(field_u64(&summary, "ok"), 20);
    assert_eq!(field_u64(&summary, "failed"), 0);
    assert_eq!(raw_number(&retry.stdout(), "reduced"), "190");
    check_fault_records(&results, false);
    assert!(!dir.path().join("fault.jsonl.journal").exists());
}

// -------------------------------------------------------------------------------------------------------------
// The journal's life

#[test]
fn resume_without_a_journal_starts_from_the_beginning() {
    let dir = temp_dir();
    let job = Squares::new(dir.path(), 20_000_000, "input");
    let ran = job.run(&["--resume"], 0);
    let expected = format!("no journal at {}: starting from the beginning", job.journal.display());
    assert!(ran.stderr().contains(&expected), "expected {expected:?} on stderr");
    let summary = ran.summary();
    assert_eq!(field_u64(&summary, "resumed"), 0);
    assert_eq!(field_u64(&summary, "ok"), job.items as u64);
    job.check(&ran, &job.results);
    assert!(!job.journal.exists());
}

#[test]
fn the_journal_is_removed_after_a_complete_run_and_kept_on_request() {
    let dir = temp_dir();
    let job = Squares::new(dir.path(), 20_000_000, "input");
    let ran = job.run(&[], 0);
    assert!(ran.summary()["journal"].is_null());
    assert!(
        !job.journal.exists(),
        "the journal must be removed after a complete run"
    );

    let ran = job.run(&["--keep-journal"], 0);
    assert_eq!(ran.summary()["journal"], path_str(&job.journal));
    job.check(&ran, &job.results);
    assert_eq!(
        wc("-l", &job.journal),
        1 + job.items as u128,
        "a header and a line per item"
    );
    let text = std::fs::read_to_string(&job.journal).expect("read journal");
    let header: serde_json::Value =
        serde_json::from_str(text.lines().next().expect("first line")).expect("the header is JSON");
    assert_eq!(header["journal"], 1, "{header}");
    assert_eq!(header["fingerprint"]["items"], job.items as u64, "{header}");
    let items: BTreeSet<u64> = journal_records(&job.journal).iter().map(|(item, _)| *item).collect();
    assert_eq!(items, (0..job.items as u64).collect());
}

// -------------------------------------------------------------------------------------------------------------
// Two runs at once

/// A second run of a job whose first run is still writing is refused, with every flag, naming the first run's
/// pid and never suggesting `--force`; the first run, undisturbed, ends with every record.
#[test]
fn a_second_run_while_the_first_writes_is_refused_and_loses_it_nothing() {
    let dir = temp_dir();
    let job = Squares::new(dir.path(), LONG_END, "input");
    let (mut first, _workers) = start_until(dir.path(), "first", &job.job, &["--json"], &job.journal, 1 + 5);
    let pid = first.pid();
    for flags in [&[][..], &["--force"], &["--resume"], &["--retry-failed"]] {
        let second = job.run(flags, 2);
        let stderr = second.stderr();
        assert!(
            stderr.contains(&format!("another run (pid {pid}) is writing")),
            "{flags:?}: the holder must be named\n{}",
            second.context()
        );
        assert!(
            !stderr.contains("--force") && !stderr.contains("--resume"),
            "{flags:?}: a live run's refusal must not suggest a flag that would start a second writer\n{}",
            second.context()
        );
        assert!(
            first.stdout().is_empty() && !first.has_exited(),
            "{flags:?}: the first run ended early"
        );
    }
    let status = first.wait(Duration::from_secs(600));
    assert_eq!(status.code(), Some(0), "{}", first.context());
    let reduced = raw_number(&first.stdout(), "reduced").to_string();
    assert_eq!(reduced, sum_of_squares(0, job.end).to_string());
    let mut records = read_records::<u128>(&job.results);
    records.sort_by_key(|r| r.item);
    assert_eq!(records.len(), job.items, "one record per item");
    for (expected, record) in records.iter().enumerate() {
        assert_eq!(record.item, expected as u64);
        let lo = record.item * job.chunk;
        let hi = (lo + job.chunk).min(job.end);
        assert_eq!(record.value, Some(sum_of_squares(lo, hi)), "item {}", record.item);
    }
    assert!(!job.journal.exists() && !dir.path().join("squares.jsonl.lock").exists());
}

// -------------------------------------------------------------------------------------------------------------
// A retry pending at a graceful stop

/// A job whose every item fails its first attempt (exit 3) and succeeds on the next: the command leaves a marker
/// the first time. `backoff` is the wait before the retry.
fn retry_job(dir: &Path, backoff: &str) -> (PathBuf, PathBuf) {
    std::fs::create_dir_all(dir).expect("mkdir");
    let job = write_file(
        dir,
        "retry.toml",
        format!(
            "[input]\nrange = {{ start = 0, end = 4 }}\n\
             [task]\ncommand = [\"sh\", \"-c\", \"test -e m{{item}} && echo {{item}} && exit 0; touch m{{item}}; exit 3\"]\n\
             retries = 1\nretry_backoff = \"{backoff}\"\n\
             [output]\nresults = \"retry.jsonl\"\n"
        ),
    );
    (job, dir.join("retry.jsonl"))
}

/// One item's outcome: item, status, value, attempts, and the kind and code of each failed attempt.
type History = (u64, String, Option<String>, u32, Vec<(String, Option<i32>)>);

/// Each item's [`History`], by item.
fn attempt_history(results: &Path) -> Vec<History> {
    let text = std::fs::read_to_string(results).expect("read results");
    let mut history: Vec<_> = text
        .lines()
        .map(|line| {
            let record: supervisor::record::Record<String> =
                serde_json::from_str(line).unwrap_or_else(|error| panic!("not a record ({error}): {line}"));
            let errors = record
                .attempt_errors
                .iter()
                .map(|failure| (failure.kind.to_string(), failure.code))
                .collect();
            (
                record.item,
                record.status.as_str().to_string(),
                record.value,
                record.attempts,
                errors,
            )
        })
        .collect();
    history.sort();
    history
}

#[test]
fn a_retry_pending_at_sigterm_continues_after_resume_as_if_never_stopped() {
    let dir = temp_dir();
    let (clean_job, clean_results) = retry_job(&dir.path().join("clean"), "10ms");
    run_job(&clean_job, &[], 0);
    let clean = attempt_history(&clean_results);
    assert_eq!(clean.len(), 4);
    for (item, status, value, attempts, errors) in &clean {
        assert_eq!((status.as_str(), attempts), ("ok", &2), "item {item}");
        assert_eq!(value.as_deref(), Some(item.to_string().as_str()));
        assert_eq!(errors, &[("exit".to_string(), Some(3))], "item {item}");
    }

    // Stopped while every item waits for its retry.
    let stopped = dir.path().join("stopped");
    let (job, results) = retry_job(&stopped, "10m");
    let journal = stopped.join("retry.jsonl.journal");
    let cwd = stopped.join("log");
    std::fs::create_dir_all(&cwd).expect("mkdir");
    let mut supervisor = Background::start(&cwd, &["run", path_str(&job), "--quiet", "--workers", WORKERS]);
    let all_failed_once = wait_until(REACH_LIMIT, || {
        (0..4).all(|item| stopped.join(format!("m{item}")).exists())
    });
    assert!(all_failed_once, "{}", supervisor.context());
    // The failed attempts reach the journal (before the fix nothing did: this wait then runs out).
    wait_until(Duration::from_secs(10), || complete_lines(&journal) > 4);
    supervisor.signal(libc::SIGTERM);
    let status = supervisor.wait(REACH_LIMIT);
    assert_eq!(status.code(), Some(143), "{}", supervisor.context());

    let resumed = run_job(&job, &["--resume"], 0);
    assert_eq!(
        attempt_history(&results),
        clean,
        "after a stop and a resume, the results must equal an uninterrupted run's\n{}",
        resumed.context()
    );
}

// -------------------------------------------------------------------------------------------------------------
// Memory follows what was recorded, not the job's size

/// A range of 10^12 items stopped after some thousand records: finalize and resume hold what was recorded (the
/// old per-item tables needed 16 TB), and every record is the closed form's.
#[test]
fn a_job_of_a_trillion_items_stopped_early_finalizes_and_resumes() {
    let dir = temp_dir();
    let end: u64 = 1_000_000_000_000;
    let job = write_file(
        dir.path(),
        "huge.toml",
        format!(
            "[input]\nrange = {{ start = 0, end = {end} }}\n[task]\nbuiltin = \"sum-squares\"\n\
             [output]\nresults = \"huge.jsonl\"\nreduce = \"sum\"\n"
        ),
    );
    let results = dir.path().join("huge.jsonl");
    let journal = dir.path().join("huge.jsonl.journal");
    let check = |least: usize| -> usize {
        let records = read_records::<u128>(&results);
        let items: BTreeSet<u64> = records.iter().map(|r| r.item).collect();
        assert_eq!(items.len(), records.len(), "an item was recorded twice");
        assert!(
            records.len() >= least,
            "{} records, expected at least {least}",
            records.len()
        );
        for record in &records {
            assert_eq!(record.status, "ok", "item {}", record.item);
            assert_eq!(record.input.range(), (record.item, record.item + 1));
            assert_eq!(record.value, Some(sum_of_squares(record.item, record.item + 1)));
        }
        records.len()
    };
    let mut recorded = 0;
    for (round, flags) in [&[][..], &["--resume"]].into_iter().enumerate() {
        let tag = format!("round{round}");
        let (mut supervisor, _workers) = start_until(dir.path(), &tag, &job, flags, &journal, recorded + 2000);
        supervisor.signal(libc::SIGTERM);
        let status = supervisor.wait(REACH_LIMIT);
        assert_eq!(status.code(), Some(143), "{}", supervisor.context());
        recorded = check(recorded + 1000);
    }
}

// -------------------------------------------------------------------------------------------------------------
// Temporary files on a full disk

/// A tmpfs of `size` mounted at `dir` for one test, unmounted (and its files gone) on drop. `None` where this
/// process may not mount (not root): the test then says so and checks nothing.
struct SmallDisk {
    path: PathBuf,
}

impl SmallDisk {
    fn mount(dir: &Path, size: &str) -> Option<SmallDisk> {
        let path = dir.join("disk");
        std::fs::create_dir_all(&path).expect("mkdir");
        let mounted = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs", path_str(&path)])
            .status()
            .is_ok_and(|status| status.success());
        if !mounted {
            eprintln!("cannot mount a tmpfs here (not root?): skipping");
            return None;
        }
        Some(SmallDisk { path })
    }

    /// Names of the temporary files (`.tmp-`, `.staging-`) on the disk.
    fn temps(&self) -> Vec<String> {
        std::fs::read_dir(&self.path)
            .expect("read dir")
            .map(|entry| entry.expect("entry").file_name().to_string_lossy().into_owned())
            .filter(|name| name.contains(".tmp-") || name.contains(".staging-"))
            .collect()
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.path).status();
    }
}

/// A noop job of `items` items on `disk`, results in `r.jsonl` there.
fn noop_job(disk: &SmallDisk, items: u64, extra: &str) -> PathBuf {
    write_file(
        &disk.path,
        "noop.toml",
        format!(
            "[input]\nrange = {{ start = 0, end = {items} }}\n[task]\nbuiltin = \"noop\"\n[output]\nresults = \"r.jsonl\"\n{extra}"
        ),
    )
}

/// The temporary files a killed run left fill the disk: the next run removes them before it needs the room.
#[test]
fn stale_temps_of_a_dead_run_are_removed_before_they_block_a_resume_on_a_full_disk() {
    let dir = temp_dir();
    let Some(disk) = SmallDisk::mount(dir.path(), "2m") else {
        return;
    };
    let job = noop_job(&disk, 3000, "");
    run_job(&job, &["--keep-journal"], 0);
    let journal = disk.path.join("r.jsonl.journal");
    // The rest of the disk, but for a few KiB, held by temporaries of pids that cannot be alive (above 2^22).
    let free = {
        let out = std::process::Command::new("df")
            .args(["--output=avail", "-B1", path_str(&disk.path)])
            .output();
        let text = String::from_utf8(out.expect("df").stdout).expect("utf-8");
        text.lines()
            .nth(1)
            .expect("df line")
            .trim()
            .parse::<usize>()
            .expect("a number")
    };
    std::fs::write(disk.path.join(".r.jsonl.journal.tmp-4194400"), vec![b'x'; free / 2]).expect("fill");
    std::fs::write(disk.path.join(".r.jsonl.tmp-4194401"), vec![b'x'; free / 2 - 8192]).expect("fill");
    let resumed = run_job(&job, &["--resume"], 0);
    assert_eq!(disk.temps(), Vec::<String>::new(), "{}", resumed.context());
    assert_eq!(wc("-l", &disk.path.join("r.jsonl")), 3000);
    assert!(!journal.exists());
}

/// Writing the results file runs out of room: the run fails, keeps its journal for `--resume`, and leaves no
/// temporary file (nor, with `journal = false`, its staging file).
#[test]
fn a_results_write_that_fails_on_a_full_disk_leaves_no_temporary_file() {
    let dir = temp_dir();
    let Some(disk) = SmallDisk::mount(dir.path(), "1m") else {
        return;
    };
    // About 720 KB of journal: it fits, but not twice.
    let job = noop_job(&disk, 6000, "");
    let failed = run_job(&job, &[], 3);
    assert!(failed.stderr().contains("r.jsonl"), "{}", failed.context());
    assert_eq!(disk.temps(), Vec::<String>::new(), "{}", failed.context());
    assert_eq!(complete_lines(&disk.path.join("r.jsonl.journal")), 1 + 6000);
    std::fs::remove_file(disk.path.join("r.jsonl.journal")).expect("remove");

    let job = noop_job(&disk, 20_000, "journal = false\n");
    let failed = run_job(&job, &[], 3);
    assert_eq!(disk.temps(), Vec::<String>::new(), "{}", failed.context());
}
