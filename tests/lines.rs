//! The `lines` input end to end: one item per line of a file, run by a builtin task in worker processes, with and
//! without `--shard`, resumed, and refused where it cannot work.
//!
//! Expected values come from real tools (`awk` for words per line, `wc -w`/`wc -l` for totals, `wc -w` of an
//! item's bytes) and from a serial split of the file written here, never from the supervisor's code.

#[expect(
    dead_code,
    reason = "the helpers are shared with e2e.rs; this suite uses only some of them"
)]
mod common;

use std::ffi::OsStr;
use std::path::Path;

use common::*;

fn temp_dir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("supervisor-lines-")
        .tempdir()
        .expect("create temp dir")
}

/// `(offset, len)` of every line of `text`, by a serial loop: split at `\n`, a `\r` before it not part of the
/// line, no line after a final newline.
fn serial_lines(text: &[u8]) -> Vec<(u64, u64)> {
    let mut lines = Vec::new();
    let mut start = 0;
    for (at, &byte) in text.iter().enumerate() {
        if byte == b'\n' {
            let end = if at > start && text[at - 1] == b'\r' {
                at - 1
            } else {
                at
            };
            lines.push((start as u64, (end - start) as u64));
            start = at + 1;
        }
    }
    if start < text.len() {
        lines.push((start as u64, (text.len() - start) as u64));
    }
    lines
}

/// Words per line as `awk` counts fields, with a line's final `\r` removed first (plain ASCII text only: awk
/// splits at blanks).
fn awk_words_per_line(path: &Path) -> Vec<u128> {
    let out = tool(
        "awk",
        &[OsStr::new(r#"{ sub(/\r$/, ""); print NF }"#), path.as_os_str()],
        None,
        &[0],
    );
    out.lines().map(|n| n.parse().expect("awk prints numbers")).collect()
}

/// Plain words separated by one or more spaces or tabs, some empty lines, some CRLF endings.
fn plain_text(lines: usize, seed: u64, final_newline: bool) -> Vec<u8> {
    const WORDS: &[&str] = &["alpha", "beta", "gamma", "42", "x", "delta-epsilon"];
    let mut rng = Prng::new(seed);
    let mut out = Vec::new();
    for line in 0..lines {
        for k in 0..rng.below(9) {
            if k > 0 {
                out.extend_from_slice(if rng.below(4) == 0 { b" \t " } else { b" " });
            }
            out.extend_from_slice(WORDS[rng.below(WORDS.len() as u64) as usize].as_bytes());
        }
        if line + 1 < lines || final_newline {
            out.extend_from_slice(if rng.below(5) == 0 { b"\r\n" } else { b"\n" });
        }
    }
    out
}

fn job(dir: &Path, name: &str, input: &str, task: &str) -> std::path::PathBuf {
    write_file(
        dir,
        &format!("{name}.toml"),
        format!(
            "[input]\nlines = \"{input}\"\n[task]\nbuiltin = \"{task}\"\n[workers]\ncount = 3\nbatch = 50\n\
             [output]\nresults = \"{name}.jsonl\"\nreduce = \"sum\"\n"
        ),
    )
}

/// Checks that `records` are one per line of `text`, in item order, each with the line's place and `expected`
/// words.
fn check_records(records: &[Record<u128>], text: &[u8], expected: &[u128]) {
    let lines = serial_lines(text);
    assert_eq!(records.len(), lines.len(), "one record per line");
    assert_eq!(expected.len(), lines.len(), "awk saw another number of lines");
    for (n, record) in records.iter().enumerate() {
        assert_eq!(record.item, n as u64);
        assert_eq!(record.status, "ok", "line {}: {:?}", n + 1, record.error);
        assert_eq!(record.input.chunk(), lines[n], "line {}", n + 1);
        assert_eq!(record.value, Some(expected[n]), "line {}", n + 1);
    }
}

#[test]
fn lines_job_gives_the_words_of_each_line_as_awk_counts_them() {
    let dir = temp_dir();
    for final_newline in [true, false] {
        let text = plain_text(2_345, 5, final_newline);
        let input = write_file(dir.path(), "input.txt", &text);
        let expected = awk_words_per_line(&input);
        let job = job(dir.path(), "words", "input.txt", "word-count");
        let ran = run(
            dir.path(),
            ["run", "--json", "--force", job.to_str().expect("utf-8")],
            0,
        );
        let summary = ran.summary();
        // As many items as `wc -l` counts newlines, plus the last line when it has none.
        let items = wc("-l", &input) + u128::from(!final_newline);
        assert_eq!(u128::from(field_u64(&summary, "items")), items);
        assert_eq!(u128::from(field_u64(&summary, "reduced")), wc("-w", &input));
        check_records(&read_records(&dir.path().join("words.jsonl")), &text, &expected);
    }
}

#[test]
fn lines_job_items_are_the_bytes_wc_sees_on_awkward_text() {
    let dir = temp_dir();
    // Control bytes, non-UTF-8, `\r` inside lines, a line longer than 100 KiB, no final newline.
    let text = generated_text(200_000, 3, false);
    let input = write_file(dir.path(), "corpus.txt", &text);
    let job = job(dir.path(), "corpus", "corpus.txt", "word-count");
    let ran = run(dir.path(), ["run", "--json", job.to_str().expect("utf-8")], 0);
    assert_eq!(u128::from(field_u64(&ran.summary(), "reduced")), wc("-w", &input));
    let records: Vec<Record<u128>> = read_records(&dir.path().join("corpus.jsonl"));
    let lines = serial_lines(&text);
    assert_eq!(records.len(), lines.len());
    // `wc -w` of the exact bytes of some lines: the longest, empty ones, ones with a `\r`, and a spread.
    let longest = (0..lines.len()).max_by_key(|&n| lines[n].1).expect("lines");
    let mut sample: Vec<usize> = (0..lines.len()).step_by(lines.len() / 25 + 1).collect();
    sample.push(longest);
    sample.extend((0..lines.len()).filter(|&n| lines[n].1 == 0).take(3));
    sample.extend(
        (0..lines.len())
            .filter(|&n| text[lines[n].0 as usize..(lines[n].0 + lines[n].1) as usize].contains(&b'\r'))
            .take(3),
    );
    for n in sample {
        let (offset, len) = lines[n];
        assert_eq!(records[n].input.chunk(), (offset, len), "line {}", n + 1);
        let bytes = &text[offset as usize..(offset + len) as usize];
        assert_eq!(
            records[n].value,
            Some(wc_of_bytes("-w", dir.path(), bytes)),
            "line {}",
            n + 1
        );
    }
}

#[test]
fn lines_job_in_shards_covers_every_line_once_with_the_same_values() {
    let dir = temp_dir();
    let text = plain_text(1_001, 9, true);
    let input = write_file(dir.path(), "input.txt", &text);
    let expected = awk_words_per_line(&input);
    let job = job(dir.path(), "shards", "input.txt", "word-count");
    let job = job.to_str().expect("utf-8");
    for index in 0..3 {
        let shard = format!("{index}/3");
        let ran = run(dir.path(), ["run", "--json", "--shard", &shard, job], 0);
        let summary = ran.summary();
        // Contiguous blocks, as documented: shard k of N owns items floor(k*n/N) .. floor((k+1)*n/N), so 1001
        // lines give 333, 334, 334.
        let (first, size) = [(0, 333), (333, 334), (667, 334)][index];
        assert_eq!(field_u64(&summary, "items"), size, "shard {shard}");
        let file = dir.path().join(format!("shards.shard-{index:04}-of-0003.jsonl"));
        let records: Vec<Record<u128>> = read_records(&file);
        assert_eq!(
            records.iter().map(|r| r.item).collect::<Vec<_>>(),
            (first..first + size).collect::<Vec<_>>(),
            "shard {shard}"
        );
        for record in &records {
            assert_eq!(
                record.value,
                Some(expected[record.item as usize]),
                "line {}",
                record.item + 1
            );
        }
    }
    let merged = run(dir.path(), ["merge", "--json", job], 0);
    assert_eq!(u128::from(field_u64(&merged.summary(), "reduced")), wc("-w", &input));
    check_records(&read_records(&dir.path().join("shards.jsonl")), &text, &expected);
}

#[test]
fn lines_job_resumes_only_against_the_same_file() {
    let dir = temp_dir();
    let text = plain_text(300, 1, true);
    let input = write_file(dir.path(), "input.txt", &text);
    let job = job(dir.path(), "resume", "input.txt", "word-count");
    let job = job.to_str().expect("utf-8");
    run(dir.path(), ["run", "--json", "--keep-journal", job], 0);
    let resumed = run(dir.path(), ["run", "--json", "--resume", "--keep-journal", job], 0);
    assert_eq!(field_u64(&resumed.summary(), "resumed"), 300);
    assert_eq!(field_u64(&resumed.summary(), "batches"), 0, "nothing is left to run");
    // One more line: the items are numbered differently now, so the journal must not be used.
    let mut longer = std::fs::read(&input).expect("read");
    longer.extend_from_slice(b"one more line\n");
    std::fs::write(&input, longer).expect("write");
    let refused = run(dir.path(), ["run", "--resume", job], 2);
    assert!(refused.stderr().contains("cannot resume"), "{}", refused.stderr());
}

#[test]
fn lines_check_counts_the_lines_and_bad_lines_inputs_exit_2() {
    let dir = temp_dir();
    write_file(dir.path(), "input.txt", "a\nb\r\n\nlast");
    let job = job(dir.path(), "check", "input.txt", "line-count");
    let ran = run(dir.path(), ["check", job.to_str().expect("utf-8")], 0);
    assert!(ran.stdout().contains("4 items"), "{}", ran.stdout());

    let missing = job_text_run(dir.path(), "lines = \"nope.txt\"", "word-count");
    assert!(missing.contains("nope.txt") && missing.contains("lines"), "{missing}");
    std::fs::create_dir_all(dir.path().join("folder")).expect("mkdir");
    let folder = job_text_run(dir.path(), "lines = \"folder\"", "word-count");
    assert!(folder.contains("expected a regular file"), "{folder}");
    let whole = job_text_run(dir.path(), "lines = \"input.txt\"", "sha256");
    assert!(whole.contains("sha256") && whole.contains("file chunks"), "{whole}");
    let two = job_text_run(dir.path(), "lines = \"input.txt\"\nfile = \"input.txt\"", "word-count");
    assert!(two.contains("exactly one source") && two.contains("lines"), "{two}");
}

/// Runs `check` on a job with this `[input]` body and task, which must exit 2; returns stderr.
fn job_text_run(dir: &Path, input: &str, task: &str) -> String {
    let job = write_file(
        dir,
        "bad.toml",
        format!("[input]\n{input}\n[task]\nbuiltin = \"{task}\"\n"),
    );
    run(dir, ["check", job.to_str().expect("utf-8")], 2).stderr()
}
