//! Helpers for the end-to-end tests: running the real `supervisor` binary, writing job files and generated
//! inputs, reading the results file and the summary, reference computations that share no code with the
//! supervisor, and watching processes through `/proc`.
//!
//! Every expected value in the tests comes from here or from a real tool (`wc`, `grep`, `sha256sum`), never from
//! the code under test.

use std::ffi::OsStr;
use std::fmt::Write as _;
use std::fs::File;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;

/// The binary under test.
pub const SUPERVISOR: &str = env!("CARGO_BIN_EXE_supervisor");

/// Bytes of stdout/stderr shown in a failure message (each).
const SHOWN_BYTES: usize = 16 << 10;

// ---------------------------------------------------------------------------------------------------------------
// Running the binary

/// A finished run of the supervisor, with what is needed to explain a failure. If the test fails while it is in
/// scope, its command, exit status, stdout and stderr are printed (shown with the failure by the test harness).
#[derive(Debug)]
pub struct Ran {
    pub command: String,
    pub output: Output,
}

impl Drop for Ran {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("while checking this run:\n{}", self.context());
        }
    }
}

impl Ran {
    pub fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.output.stdout).into_owned()
    }

    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.output.stderr).into_owned()
    }

    /// The command, its exit status, stdout and stderr, for assertion messages.
    pub fn context(&self) -> String {
        describe_output(&self.command, &self.output)
    }

    /// The `--json` summary printed on stdout.
    pub fn summary(&self) -> serde_json::Value {
        serde_json::from_str(self.stdout().trim())
            .unwrap_or_else(|error| panic!("stdout is not one JSON object ({error})\n{}", self.context()))
    }
}

/// Runs `supervisor ARGS` in `cwd` and checks that it exits with `expected`; on any other status, panics with the
/// command, the status, stdout and stderr.
pub fn run<I, S>(cwd: &Path, args: I, expected: i32) -> Ran
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let args: Vec<_> = args.into_iter().map(|a| a.as_ref().to_os_string()).collect();
    let command = command_line(SUPERVISOR, &args, cwd);
    let output = Command::new(SUPERVISOR)
        .args(&args)
        .current_dir(cwd)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|error| panic!("cannot start {command}: {error}"));
    if output.status.code() != Some(expected) {
        panic!(
            "unexpected exit status (expected {expected})\n{}",
            describe_output(&command, &output)
        );
    }
    Ran { command, output }
}

fn describe_output(command: &str, output: &Output) -> String {
    describe(
        command,
        output.status,
        &String::from_utf8_lossy(&output.stdout),
        &String::from_utf8_lossy(&output.stderr),
    )
}

fn command_line(program: &str, args: &[std::ffi::OsString], cwd: &Path) -> String {
    let mut line = format!("(cd {} && {program}", cwd.display());
    for arg in args {
        let _ = write!(line, " {}", arg.to_string_lossy());
    }
    line.push(')');
    line
}

fn describe(command: &str, status: ExitStatus, stdout: &str, stderr: &str) -> String {
    format!(
        "command: {command}\nstatus: {}\n--- stdout ---\n{}\n--- stderr ---\n{}\n--------------",
        describe_status(status),
        clip(stdout),
        clip(stderr)
    )
}

fn describe_status(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit code {code}"),
        (None, Some(signal)) => format!("killed by signal {signal}"),
        (None, None) => format!("{status:?}"),
    }
}

fn clip(text: &str) -> String {
    if text.len() <= SHOWN_BYTES {
        return text.to_string();
    }
    let mut cut = SHOWN_BYTES;
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}\n… ({} more bytes)", &text[..cut], text.len() - cut)
}

/// A supervisor started in the background (stdout and stderr go to files beside the job, so nothing can block on a
/// full pipe). Killed and reaped on drop if the test did not wait for it.
#[derive(Debug)]
pub struct Background {
    child: Option<Child>,
    command: String,
    stdout: PathBuf,
    stderr: PathBuf,
    status: Option<ExitStatus>,
}

impl Background {
    pub fn start(cwd: &Path, args: &[&str]) -> Background {
        let stdout = cwd.join("supervisor.stdout");
        let stderr = cwd.join("supervisor.stderr");
        let os_args: Vec<_> = args.iter().map(std::ffi::OsString::from).collect();
        let command = command_line(SUPERVISOR, &os_args, cwd);
        let child = Command::new(SUPERVISOR)
            .args(args)
            .current_dir(cwd)
            .stdin(Stdio::null())
            .stdout(File::create(&stdout).expect("create stdout file"))
            .stderr(File::create(&stderr).expect("create stderr file"))
            .spawn()
            .unwrap_or_else(|error| panic!("cannot start {command}: {error}"));
        Background {
            child: Some(child),
            command,
            stdout,
            stderr,
            status: None,
        }
    }

    pub fn pid(&self) -> i32 {
        let child = self.child.as_ref().expect("child handle");
        i32::try_from(child.id()).expect("pid fits i32")
    }

    /// Whether the process has exited (and reaps it if so).
    pub fn has_exited(&mut self) -> bool {
        if self.status.is_some() {
            return true;
        }
        let child = self.child.as_mut().expect("child handle");
        match child.try_wait().expect("try_wait") {
            Some(status) => {
                self.status = Some(status);
                true
            }
            None => false,
        }
    }

    /// Sends `signal` to the supervisor process only (not its group).
    pub fn signal(&self, signal: i32) {
        // SAFETY: kill(2) takes a pid and a signal number and touches no memory of ours. The pid is our unreaped
        // child, so it cannot name another process.
        let rc = unsafe { libc::kill(self.pid(), signal) };
        assert_eq!(
            rc,
            0,
            "kill({}, {signal}): {}",
            self.pid(),
            std::io::Error::last_os_error()
        );
    }

    /// Waits for the exit, polling up to `limit`; panics with the output if it does not come.
    pub fn wait(&mut self, limit: Duration) -> ExitStatus {
        let deadline = Instant::now() + limit;
        while !self.has_exited() {
            if Instant::now() > deadline {
                panic!("supervisor did not exit within {limit:?}\n{}", self.context());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        self.status.expect("status after exit")
    }

    pub fn stdout(&self) -> String {
        std::fs::read_to_string(&self.stdout).unwrap_or_default()
    }

    pub fn context(&self) -> String {
        let stderr = std::fs::read_to_string(&self.stderr).unwrap_or_default();
        match self.status {
            Some(status) => describe(&self.command, status, &self.stdout(), &stderr),
            None => format!(
                "command: {}\nstatus: still running\n--- stdout ---\n{}\n--- stderr ---\n{}\n--------------",
                self.command,
                clip(&self.stdout()),
                clip(&stderr)
            ),
        }
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take()
            && self.status.is_none()
        {
            let _ = child.kill();
            if let Ok(status) = child.wait() {
                self.status = Some(status);
            }
        }
        if std::thread::panicking() {
            eprintln!("while checking this run:\n{}", self.context());
        }
    }
}

/// Polls `condition` every few milliseconds until it holds or `limit` passes; returns whether it held.
pub fn wait_until(limit: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if condition() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Job files, results and summaries

/// Writes `text` to `dir/name` and returns the path.
pub fn write_file(dir: &Path, name: &str, text: impl AsRef<[u8]>) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap_or_else(|error| panic!("write {}: {error}", path.display()));
    path
}

/// One line of the results file: the supervisor's own record type, read with `value` as the type the test
/// expects (`u128` for counts and sums, `String` for digests, `serde_json::Value` for anything).
pub use supervisor::record::{InputDesc, Record};

/// What the tests ask of a record's input; panics name the input when it is not of the kind asked for.
pub trait InputExt {
    fn range(&self) -> (u64, u64);
    fn chunk(&self) -> (u64, u64);
    fn path(&self) -> Option<&Path>;
}

impl InputExt for InputDesc {
    fn range(&self) -> (u64, u64) {
        match self {
            InputDesc::Range { start, end } => (*start, *end),
            _ => panic!("not a range item: {self:?}"),
        }
    }

    fn chunk(&self) -> (u64, u64) {
        match self {
            InputDesc::Chunk { offset, len } => (*offset, *len),
            _ => panic!("not a chunk item: {self:?}"),
        }
    }

    fn path(&self) -> Option<&Path> {
        match self {
            InputDesc::File { path } => Some(path),
            _ => None,
        }
    }
}

/// Every line of the results file, each parsed as a [`Record`]; panics naming the first line that is not one.
pub fn read_records<V: supervisor::record::RecordValue + DeserializeOwned>(path: &Path) -> Vec<Record<V>> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|error| panic!("read results {}: {error}", path.display()));
    assert!(
        text.is_empty() || text.ends_with('\n'),
        "{}: last line is not terminated",
        path.display()
    );
    text.lines()
        .enumerate()
        .map(|(n, line)| {
            serde_json::from_str(line)
                .unwrap_or_else(|error| panic!("{}:{}: not a valid record ({error}): {line}", path.display(), n + 1))
        })
        .collect()
}

/// Number of complete (newline-terminated) lines in `path` so far; 0 if it does not exist yet.
pub fn complete_lines(path: &Path) -> usize {
    std::fs::read(path).map_or(0, |bytes| bytes.iter().filter(|&&b| b == b'\n').count())
}

/// The literal JSON text of the number after `"key":` in `json` (so that integers beyond 64 bits are compared
/// exactly, without going through a float).
pub fn raw_number<'a>(json: &'a str, key: &str) -> &'a str {
    let needle = format!("\"{key}\":");
    let at = json.find(&needle).unwrap_or_else(|| panic!("no {needle} in {json}")) + needle.len();
    let rest = &json[at..];
    let end = rest
        .find(|c: char| !(c.is_ascii_digit() || c == '-' || c == '.' || c == 'e' || c == 'E'))
        .unwrap_or(rest.len());
    &rest[..end]
}

/// `summary[key]` as a u64, with the whole summary in the panic message otherwise.
pub fn field_u64(summary: &serde_json::Value, key: &str) -> u64 {
    summary[key]
        .as_u64()
        .unwrap_or_else(|| panic!("summary has no integer `{key}`: {summary}"))
}

/// `worker_pids` of the summary.
pub fn worker_pids(summary: &serde_json::Value) -> Vec<u32> {
    summary["worker_pids"]
        .as_array()
        .unwrap_or_else(|| panic!("summary has no `worker_pids` array: {summary}"))
        .iter()
        .map(|pid| {
            pid.as_u64()
                .and_then(|pid| u32::try_from(pid).ok())
                .unwrap_or_else(|| panic!("bad pid in {summary}"))
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------------------------
// Reference computations

/// Σ i² for 0 <= i < n, by the closed form m(m+1)(2m+1)/6 with m = n-1.
pub fn sum_of_squares_below(n: u64) -> u128 {
    if n == 0 {
        return 0;
    }
    let m = u128::from(n - 1);
    m * (m + 1) * (2 * m + 1) / 6
}

/// Σ i² for lo <= i < hi.
pub fn sum_of_squares(lo: u64, hi: u64) -> u128 {
    sum_of_squares_below(hi) - sum_of_squares_below(lo)
}

/// `count[n]` = number of primes below `n`, for n in 0..=limit, from a plain sieve of Eratosthenes.
pub fn primes_below_table(limit: usize) -> Vec<u64> {
    let mut composite = vec![false; limit];
    let mut n = 2;
    while n * n < limit {
        if !composite[n] {
            let mut multiple = n * n;
            while multiple < limit {
                composite[multiple] = true;
                multiple += n;
            }
        }
        n += 1;
    }
    let mut below = Vec::with_capacity(limit + 1);
    let mut count = 0;
    below.push(0);
    for (n, &is_composite) in composite.iter().enumerate() {
        if n >= 2 && !is_composite {
            count += 1;
        }
        below.push(count);
    }
    below
}

/// SplitMix64: small, fast and deterministic.
#[derive(Debug)]
pub struct Prng(u64);

impl Prng {
    pub fn new(seed: u64) -> Prng {
        Prng(seed)
    }

    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform-ish in `0..n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    pub fn bytes(&mut self, len: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(len + 8);
        while out.len() < len {
            out.extend_from_slice(&self.next().to_le_bytes());
        }
        out.truncate(len);
        out
    }
}

/// Words of the generated text: plain words, numbers, and the awkward cases for `wc -w` and `grep` — tabs, CR,
/// vertical tab, form feed, control and non-ASCII bytes, runs of spaces.
const VOCABULARY: &[&[u8]] = &[
    b"alpha",
    b"beta",
    b"gamma",
    b"delta",
    b"error",
    b"ERROR",
    b"warn",
    b"Warning",
    b"info",
    b"x",
    b"42",
    b"1234",
    b"7",
    b"\x80\xff",
    b"caf\xc3\xa9",
    b"\x01",
    b"a\x0bb",
    b"tab\tsep",
    b"cr\r",
    b"ff\x0c",
    b"  ",
    b"",
];

/// About `size` bytes of text lines built from [`VOCABULARY`] by a PRNG seeded with `seed`: mostly short lines,
/// some empty ones, and one line longer than 100 KiB (longer than a 64 KiB chunk). Ends with a newline only if
/// `final_newline`.
pub fn generated_text(size: usize, seed: u64, final_newline: bool) -> Vec<u8> {
    let mut rng = Prng::new(seed);
    let mut out = Vec::with_capacity(size + 256);
    let long_line_at = size / 3;
    let mut long_done = false;
    while out.len() < size {
        let words = if !long_done && out.len() >= long_line_at {
            long_done = true;
            25_000
        } else {
            rng.below(14)
        };
        for k in 0..words {
            if k > 0 {
                out.push(b' ');
            }
            let word = VOCABULARY[rng.below(VOCABULARY.len() as u64) as usize];
            out.extend_from_slice(word);
        }
        out.push(b'\n');
    }
    if !final_newline {
        out.extend_from_slice(b"last line without newline 42 error 7");
    }
    out
}

/// Runs a reference tool with `LC_ALL=C`, its stdin from `stdin` if given; returns its stdout. Exit codes other
/// than those in `ok_codes` fail the test.
pub fn tool(program: &str, args: &[&OsStr], stdin: Option<&Path>, ok_codes: &[i32]) -> String {
    let os_args: Vec<_> = args.iter().map(|a| a.to_os_string()).collect();
    let mut command_text = command_line(program, &os_args, Path::new("."));
    let mut command = Command::new(program);
    command.args(args).env("LC_ALL", "C");
    match stdin {
        Some(path) => {
            command.stdin(File::open(path).expect("open stdin file"));
            let _ = write!(command_text, " < {}", path.display());
        }
        None => {
            command.stdin(Stdio::null());
        }
    }
    let output = command
        .output()
        .unwrap_or_else(|error| panic!("cannot run {command_text}: {error}"));
    let code = output.status.code().unwrap_or(-1);
    assert!(
        ok_codes.contains(&code),
        "reference tool failed\n{}",
        describe_output(&command_text, &output)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// The single number printed by `wc FLAG < path` (in the C locale).
pub fn wc(flag: &str, path: &Path) -> u128 {
    let out = tool("wc", &[OsStr::new(flag)], Some(path), &[0]);
    out.trim()
        .parse()
        .unwrap_or_else(|error| panic!("wc {flag} printed {out:?}: {error}"))
}

/// `wc FLAG` of some bytes (written to a scratch file in `dir`).
pub fn wc_of_bytes(flag: &str, dir: &Path, bytes: &[u8]) -> u128 {
    let scratch = write_file(dir, "wc-scratch.bin", bytes);
    let count = wc(flag, &scratch);
    std::fs::remove_file(&scratch).expect("remove scratch file");
    count
}

// ---------------------------------------------------------------------------------------------------------------
// Processes

/// One process, identified by pid and start time (so that a recycled pid is not mistaken for it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Proc {
    pub pid: i32,
    pub start_time: u64,
}

/// `(state, ppid, start time)` from `/proc/PID/stat`, or `None` if there is no such process.
fn stat(pid: i32) -> Option<(char, i32, u64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may itself contain spaces or parentheses: fields start after the
    // last ')'. After it: state (field 3), ppid (4), …, starttime (22).
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let state = fields.first()?.chars().next()?;
    let ppid = fields.get(1)?.parse().ok()?;
    let start = fields.get(19)?.parse().ok()?;
    Some((state, ppid, start))
}

fn all_pids() -> Vec<i32> {
    std::fs::read_dir("/proc")
        .expect("read /proc")
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse().ok())
        .collect()
}

/// Live (not zombie) processes whose parent is `ppid`.
pub fn children_of(ppid: i32) -> Vec<Proc> {
    all_pids()
        .into_iter()
        .filter_map(|pid| {
            let (state, parent, start_time) = stat(pid)?;
            (parent == ppid && state != 'Z' && state != 'X').then_some(Proc { pid, start_time })
        })
        .collect()
}

/// Whether `proc` still exists and is not a zombie.
pub fn is_running(proc: Proc) -> bool {
    matches!(stat(proc.pid), Some((state, _, start)) if start == proc.start_time && state != 'Z' && state != 'X')
}

/// SIGKILLs whichever of `procs` still run, so that a failing test leaves no process behind; returns them.
pub fn kill_survivors(procs: &[Proc]) -> Vec<Proc> {
    let survivors: Vec<Proc> = procs.iter().copied().filter(|p| is_running(*p)).collect();
    for proc in &survivors {
        // SAFETY: kill(2) touches no memory of ours. The pid was checked against its start time just above, so
        // it names the process we saw (a recycle in between is the only, tiny, risk).
        unsafe { libc::kill(proc.pid, libc::SIGKILL) };
    }
    survivors
}

/// Live worker processes started for the supervisor `pid`, wherever they were reparented: processes run as
/// `supervisor __worker …` whose environment names `pid` as their supervisor (the worker's parent-pid check).
pub fn workers_claiming(pid: i32) -> Vec<Proc> {
    let marker = format!("SUPERVISOR_PARENT_PID={pid}");
    all_pids()
        .into_iter()
        .filter_map(|candidate| {
            let cmdline = std::fs::read(format!("/proc/{candidate}/cmdline")).ok()?;
            let is_worker = cmdline.split(|&b| b == 0).nth(1) == Some(b"__worker".as_slice());
            if !is_worker {
                return None;
            }
            let environ = std::fs::read(format!("/proc/{candidate}/environ")).ok()?;
            let claims = environ.split(|&b| b == 0).any(|entry| entry == marker.as_bytes());
            let (state, _, start_time) = stat(candidate)?;
            (claims && state != 'Z' && state != 'X').then_some(Proc {
                pid: candidate,
                start_time,
            })
        })
        .collect()
}

/// Processes (other than zombies) whose environment holds `MARKER=<value>`: the user's commands of one test.
pub fn marked_processes(value: &str) -> Vec<i32> {
    let marker = format!("TEST_MARKER={value}");
    std::fs::read_dir("/proc")
        .expect("read /proc")
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
            let state = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let zombie = state
                .rsplit_once(')')
                .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'));
            !zombie && environ.split(|&b| b == 0).any(|entry| entry == marker.as_bytes())
        })
        .collect()
}

/// Asserts that no command of this test is still running (waiting a little for SIGKILLs to land), and kills
/// any that is, so that a failing test leaves nothing behind.
pub fn assert_no_leftovers(marker: &str) {
    let gone = wait_until(Duration::from_secs(10), || marked_processes(marker).is_empty());
    let left = marked_processes(marker);
    for pid in &left {
        // SAFETY: kill(2) touches no memory of ours; the pid was just seen carrying this test's marker.
        unsafe { libc::kill(*pid, libc::SIGKILL) };
    }
    assert!(gone, "processes left behind: {left:?}");
}
