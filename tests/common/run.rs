//! Running the real `supervisor` binary: to completion ([`run`], a [`Ran`] that prints its command, status and
//! output when a test fails while holding it) or in the background ([`Background`], killed on drop), and waiting
//! for events ([`wait_until`]). Job files are written by `job.rs`; processes are watched by `procfs.rs`.

use std::ffi::OsStr;
use std::fmt::Write as _;
use std::fs::File;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

/// The binary under test.
pub const SUPERVISOR: &str = env!("CARGO_BIN_EXE_supervisor");

// The documented exit codes, written out rather than imported so that a changed constant fails the tests.
pub const EXIT_OK: i32 = 0;
pub const EXIT_ITEMS_FAILED: i32 = 1;
pub const EXIT_BAD_INPUT: i32 = 2;
pub const EXIT_WORKERS_CANNOT_START: i32 = 3;
pub const EXIT_SIGINT: i32 = 130;
pub const EXIT_SIGTERM: i32 = 143;

/// Bytes of stdout/stderr shown in a failure message (each).
const SHOWN_BYTES: usize = 16 << 10;

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

pub fn describe_output(command: &str, output: &Output) -> String {
    describe(
        command,
        output.status,
        &String::from_utf8_lossy(&output.stdout),
        &String::from_utf8_lossy(&output.stderr),
    )
}

pub fn command_line(program: &str, args: &[std::ffi::OsString], cwd: &Path) -> String {
    let mut line = format!("(cd {} && {program}", cwd.display());
    for arg in args {
        let _ = write!(line, " {}", arg.to_string_lossy());
    }
    line.push(')');
    line
}

pub fn describe(command: &str, status: ExitStatus, stdout: &str, stderr: &str) -> String {
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

pub fn clip(text: &str) -> String {
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
        send_signal(self.pid(), signal);
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

/// `supervisor run JOB --results RESULTS ARGS…` with stdin from /dev/null, for a test that starts the run its own
/// way (its own environment, pipes or descriptors); [`run`] and [`Background`] are the common ways.
pub fn run_command(job: &Path, results: &Path, args: &[&str]) -> Command {
    let mut command = Command::new(SUPERVISOR);
    command
        .arg("run")
        .arg(job)
        .arg("--results")
        .arg(results)
        .args(args)
        .stdin(Stdio::null());
    command
}

/// Sends `signal` to the process `pid` (not its group); fails the test if it cannot. Callers pass a process of
/// this test: their unreaped child, or a worker they just saw in `/proc`.
pub fn send_signal(pid: i32, signal: i32) {
    let number = signal;
    let signal = nix::sys::signal::Signal::try_from(number).unwrap_or_else(|error| panic!("signal {number}: {error}"));
    if let Err(error) = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), signal) {
        panic!("kill({pid}, {signal}): {error}");
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
