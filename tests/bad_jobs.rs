//! The bad-job corpus (`tests/bad-jobs/*.toml`): every malformed or hostile job file is refused before anything
//! runs, with exit code 2, no panic, and a message that names the file, the line:column and the key, and says what
//! was expected. The messages are snapshots (`tests/snapshots/bad_job@NAME.snap`, insta), so that a change to
//! any of them is seen in review. A missing or different snapshot fails `cargo test`; insta writes the new text
//! next to it as `.snap.new` (except under CI, where nothing is written).

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

#[expect(
    dead_code,
    reason = "the helpers are shared by every test file; this suite uses only some of them"
)]
mod common;

use common::SUPERVISOR;

/// The `tests/` folder: the corpus runs from here, so that paths in messages are `bad-jobs/NAME.toml`.
fn tests_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests")
        .canonicalize()
        .expect("the tests folder exists")
}

/// Runs the supervisor, killed after two minutes: a bad job that is not refused can block (a named pipe opened
/// for writing waits for a reader), and must fail the test rather than hang it.
fn supervisor(cwd: &Path, args: &[&str]) -> Output {
    Command::new("timeout")
        .args(["--signal=KILL", "120", SUPERVISOR])
        .args(args)
        .current_dir(cwd)
        .stdin(Stdio::null())
        .output()
        .expect("the supervisor binary starts")
}

/// Exit code and stderr, with absolute paths below `cwd` made relative (they differ from machine to machine).
fn transcript(cwd: &Path, args: &[&str], output: &Output) -> String {
    let stderr = String::from_utf8_lossy(&output.stderr).replace(&format!("{}/", cwd.display()), "");
    let code = output
        .status
        .code()
        .map_or("none (killed by a signal)".to_string(), |c| c.to_string());
    format!("$ supervisor {}\nexit code {code}\n{stderr}", args.join(" "))
}

/// Checks one refused command: exit code 2, no panic, a snapshot of the transcript named `name`.
fn expect_refused(cwd: &Path, args: &[&str], name: &str) -> Result<(), String> {
    let output = supervisor(cwd, args);
    let text = transcript(cwd, args, &output);
    if output.status.code() != Some(2) {
        return Err(format!("{name}: expected exit code 2\n{text}"));
    }
    if text.contains("panicked") || text.contains("RUST_BACKTRACE") {
        return Err(format!("{name}: the supervisor panicked\n{text}"));
    }
    if !text.contains("\nerror: ") {
        return Err(format!("{name}: no `error:` line\n{text}"));
    }
    let snapshot = std::panic::catch_unwind(|| {
        let mut settings = insta::Settings::clone_current();
        settings.set_snapshot_path(tests_dir().join("snapshots"));
        settings.set_prepend_module_to_snapshot(false);
        settings.set_snapshot_suffix(name);
        settings.set_omit_expression(true);
        settings.bind(|| insta::assert_snapshot!("bad_job", text));
    });
    snapshot.map_err(|_| format!("{name}: the message differs from its snapshot (see above)"))
}

fn corpus() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(tests_dir().join("bad-jobs"))
        .expect("the corpus folder exists")
        .map(|entry| entry.expect("a readable entry").path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "toml"))
        .collect();
    files.sort();
    files
}

/// Fails with every failing case listed, not just the first.
fn report(failures: Vec<String>) {
    assert!(
        failures.is_empty(),
        "{} case(s) failed:\n\n{}",
        failures.len(),
        failures.join("\n\n")
    );
}

#[test]
fn every_bad_job_is_refused_by_check_with_a_located_message() {
    let cwd = tests_dir();
    let files = corpus();
    assert!(files.len() >= 40, "the corpus has only {} files", files.len());
    let mut failures = Vec::new();
    for file in &files {
        let name = file.file_stem().and_then(|s| s.to_str()).expect("a UTF-8 name");
        let first = std::fs::read(file).expect("readable corpus file");
        if !first.starts_with(b"# ") {
            failures.push(format!(
                "{name}: the first line must be a `# ` comment saying what it tests"
            ));
            continue;
        }
        let relative = format!("bad-jobs/{name}.toml");
        if let Err(failure) = expect_refused(&cwd, &["check", &relative], name) {
            failures.push(failure);
        }
    }
    report(failures);
}

/// `run` refuses the same files with the same message as `check`: nothing is listed differently, no worker starts.
#[test]
fn run_refuses_every_bad_job_as_check_does() {
    let cwd = tests_dir();
    let mut failures = Vec::new();
    for file in corpus() {
        let relative = format!("bad-jobs/{}", file.file_name().and_then(|s| s.to_str()).expect("UTF-8"));
        let check = supervisor(&cwd, &["check", &relative]);
        let run = supervisor(&cwd, &["run", "--quiet", &relative]);
        if run.status.code() != Some(2) || run.stderr != check.stderr {
            failures.push(format!(
                "{relative}: `run` and `check` differ\n{}\n{}",
                transcript(&cwd, &["check", &relative], &check),
                transcript(&cwd, &["run", "--quiet", &relative], &run)
            ));
        }
    }
    report(failures);
}

/// Cases that are not a job file's content: the job file itself missing or a folder, bad flags.
#[test]
fn bad_job_paths_and_flags_are_refused() {
    let cwd = tests_dir();
    let good = "bad-jobs/data/good.toml";
    assert!(
        cwd.join(good).is_file(),
        "{good} exists: the flags cases need a valid job"
    );
    let cases: &[(&str, &[&str])] = &[
        ("job-file-missing", &["check", "bad-jobs/no-such-job.toml"]),
        ("job-file-is-folder", &["check", "bad-jobs/data"]),
        (
            "results-flag-is-folder",
            &["run", "--quiet", "--results", "bad-jobs/data", good],
        ),
        ("workers-flag-zero", &["run", "--quiet", "--workers", "0", good]),
        ("batch-flag-negative", &["run", "--quiet", "--batch", "-3", good]),
        (
            "executor-flag-conflict",
            &["run", "--quiet", "--executor", "thread", "bad-jobs/data/timeout.toml"],
        ),
        ("replay-item-out-of-range", &["replay", "--item", "10", good]),
    ];
    let mut failures = Vec::new();
    for (name, args) in cases {
        if let Err(failure) = expect_refused(&cwd, args, name) {
            failures.push(failure);
        }
    }
    report(failures);
}

/// An input file the supervisor may not read. Root reads any file whatever its mode, so this cannot be set up
/// when the tests run as root (as in CI here): the test says so and checks nothing then. (Folders and devices,
/// which root cannot use as input either, are in the corpus: file-is-directory, file-is-device.)
#[test]
fn unreadable_input_file_is_refused() {
    if nix::unistd::geteuid().is_root() {
        eprintln!("skipped: running as root, which can read a file of mode 000");
        return;
    }
    use std::os::unix::fs::PermissionsExt;
    let dir = common::temp_dir("bad-jobs");
    let input = dir.path().join("secret.txt");
    std::fs::write(&input, "a\nb\n").expect("write the input");
    std::fs::set_permissions(&input, std::fs::Permissions::from_mode(0o000)).expect("chmod 000");
    std::fs::write(
        dir.path().join("job.toml"),
        "# An input file without read permission.\n[input]\nfile = \"secret.txt\"\n[task]\nbuiltin = \"line-count\"\n",
    )
    .expect("write the job");
    let result = expect_refused(dir.path(), &["check", "job.toml"], "unreadable-input");
    report(result.err().into_iter().collect());
}

/// What is at a path the run writes, for the test below.
fn file_kind(path: &Path) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    match std::fs::symlink_metadata(path).map(|meta| meta.file_type()) {
        Ok(kind) if kind.is_symlink() => "symlink",
        Ok(kind) if kind.is_fifo() => "fifo",
        Ok(kind) if kind.is_socket() => "socket",
        Ok(kind) if kind.is_char_device() => "char device",
        Ok(kind) if kind.is_file() => "file",
        Ok(_) => "other",
        Err(_) => "missing",
    }
}

/// A results path that is not a regular file — a named pipe, a socket, a device, a symlink to one — or such a file
/// where the journal goes (all made in a temp folder: a test that wrote to `/dev/null` itself would, on a
/// regression, replace the machine's `/dev/null` with a regular file), is refused before anything runs (exit 2, located at `[output] results` or naming the
/// `--results` path), and left as it was. Before, the final rename replaced it with a regular file (as root), and
/// a pipe at the journal's path blocked the run in `open`.
#[test]
fn non_regular_results_paths_are_refused_and_left_untouched() {
    use std::os::unix::fs::symlink;
    use std::os::unix::net::UnixListener;
    let dir = common::temp_dir("bad-jobs");
    let cwd = dir.path();
    let job = |results: &str| {
        std::fs::write(
            cwd.join("job.toml"),
            format!(
                "# Results to a path that is not a regular file.\n[input]\nrange = {{ start = 0, end = 4 }}\n\
                 [task]\nbuiltin = \"noop\"\n[workers]\ncount = 1\n[output]\nresults = \"{results}\"\n"
            ),
        )
        .expect("write the job");
    };
    let mkfifo = |name: &str| {
        let status = Command::new("mkfifo")
            .arg(cwd.join(name))
            .status()
            .expect("mkfifo runs");
        assert!(status.success(), "mkfifo {name}");
    };
    mkfifo("fifo.jsonl");
    let _socket = UnixListener::bind(cwd.join("socket.jsonl")).expect("bind a socket");
    symlink("/dev/null", cwd.join("null-link.jsonl")).expect("symlink to /dev/null");
    std::fs::write(cwd.join("plain.jsonl"), "").expect("write a file");
    mkfifo("plain.jsonl.journal");
    symlink(cwd.join("fifo.jsonl"), cwd.join("fifo-link.jsonl")).expect("symlink to the fifo");
    let mut failures = Vec::new();
    let cases: &[(&str, &str, &str)] = &[
        ("results-fifo", "fifo.jsonl", "fifo"),
        ("results-socket", "socket.jsonl", "socket"),
        ("results-symlink-to-device", "null-link.jsonl", "symlink"),
        ("results-symlink-to-fifo", "fifo-link.jsonl", "symlink"),
        ("results-journal-fifo", "plain.jsonl", "file"),
    ];
    for (name, results, kind) in cases {
        job(results);
        for (how, args) in [
            ("job", vec!["run", "--quiet", "job.toml"]),
            ("flag", vec!["run", "--quiet", "--results", results, "job.toml"]),
        ] {
            if let Err(failure) = expect_refused(cwd, &args, &format!("{name}-{how}")) {
                failures.push(failure);
            }
            if file_kind(&cwd.join(results)) != *kind {
                failures.push(format!(
                    "{name}-{how}: {results} is now a {}",
                    file_kind(&cwd.join(results))
                ));
            }
        }
    }
    // `merge` writes the results file too: its `--results` is checked like `run`'s.
    job("absent.jsonl");
    if let Err(failure) = expect_refused(
        cwd,
        &["merge", "--results", "fifo.jsonl", "job.toml"],
        "results-fifo-merge",
    ) {
        failures.push(failure);
    }
    if file_kind(&cwd.join("fifo.jsonl")) != "fifo" {
        failures.push(format!(
            "merge: fifo.jsonl is now a {}",
            file_kind(&cwd.join("fifo.jsonl"))
        ));
    }
    if file_kind(&cwd.join("plain.jsonl.journal")) != "fifo" {
        failures.push("the fifo at the journal's path was replaced".to_string());
    }
    // A device node made here, as root can (mknod c 1 3 is /dev/null's): refused like the others.
    if sys::user::effective_uid() == 0 {
        let status = Command::new("mknod")
            .arg(cwd.join("device.jsonl"))
            .args(["c", "1", "3"])
            .status()
            .expect("mknod runs");
        assert!(status.success(), "mknod");
        job("device.jsonl");
        if let Err(failure) = expect_refused(cwd, &["run", "--quiet", "job.toml"], "results-device-job") {
            failures.push(failure);
        }
        if file_kind(&cwd.join("device.jsonl")) != "char device" {
            failures.push("the device node was replaced".to_string());
        }
    }
    // A symlink to a regular file is fine: the run writes its results.
    std::fs::write(cwd.join("target.jsonl"), "").expect("write a file");
    symlink(cwd.join("target.jsonl"), cwd.join("link.jsonl")).expect("symlink to a file");
    job("link.jsonl");
    let output = supervisor(cwd, &["run", "--quiet", "job.toml"]);
    if output.status.code() != Some(0) {
        failures.push(format!(
            "a symlink to a regular file was refused\n{}",
            transcript(cwd, &["run", "--quiet", "job.toml"], &output)
        ));
    }
    report(failures);
}
