//! Round trips and bulk hand-offs between two processes (and, for scale, two threads).
//!
//! **Round trip**: one `u64` goes to the other side and comes back, one in flight at a time, each timed on its
//! own with a monotonic clock. Three paths: ipc-channel between this process and an echo child (typed postcard
//! messages over `SOCK_SEQPACKET`, as the pool uses), std `mpsc` between two threads of this process, and a raw
//! pipe pair to an echo child (one `write` and one `read` per direction, nothing else: the floor).
//!
//! **Hand-off**: a buffer of [`BandwidthPlan::bytes`] goes to the echo child, which touches every page (sums
//! the first byte of each) and answers with the sum; the time runs from starting the send to receiving the
//! answer, so both paths include one small acknowledgement round trip. Through ipc-channel the bytes go with
//! `IpcBytesSender` (copied into the kernel and out again; above ≈ 207 KiB fragmented over a fresh dedicated
//! channel). Through shared memory the bench copies the buffer into a memfd region both processes mapped once,
//! and only a small notification crosses the channel. Before each hand-off the first byte of every page is
//! changed, and the echo's sum is checked, so a stale or skipped page would be noticed.
//!
//! Where the two sides run decides the result more than the channel does (for hand-offs too: on one CPU the
//! bytes stay in its caches). Unpinned ([`Placement::Scheduled`],
//! what the pool gets), a 2-vCPU VM sometimes keeps a ping-pong pair on one vCPU for a whole measurement (round
//! trips of 2–4 µs) and sometimes runs them apart (30–60 µs: waking the other vCPU), so a median can differ
//! tenfold between two runs. So both are measured pinned as well: both sides on one CPU
//! ([`Placement::SameCpu`]), and on two different CPUs ([`Placement::OtherCpus`]); those numbers are stable and
//! their ratios mean something. The bench thread pins itself (and is restored after), the echo child or thread
//! is pinned by pid.
//!
//! The echo children are the same binary in a hidden mode (see [`super::echo`]); each is reaped before this
//! module returns, also on errors (killed first if need be).

use std::io::{Read, Write};
use std::path::Path;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::mpsc;
use std::thread::{self, JoinHandle};
use std::time::Instant;

use ipc_channel::ipc::{IpcBytesSender, IpcOneShotServer, IpcReceiver, IpcSender};
use shared::region::SharedRegion;

use super::echo::{Down, ECHO_ARG, PAGE, Up, touch_bytes};
use crate::baseline::Error;
use sys::cpu::{allowed_cpus, set_affinity};
use sys::process::{ExitInfo, ExitStatus, Pid, Pidfd, wait4};

/// Where the two sides of a round trip run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    /// Wherever the scheduler puts them.
    Scheduled,
    /// Both on this CPU.
    SameCpu(usize),
    /// The bench on the first CPU, the echo on the second.
    OtherCpus(usize, usize),
}

impl Placement {
    fn bench_cpu(self) -> Option<usize> {
        match self {
            Placement::Scheduled => None,
            Placement::SameCpu(cpu) | Placement::OtherCpus(cpu, _) => Some(cpu),
        }
    }

    fn echo_cpu(self) -> Option<usize> {
        match self {
            Placement::Scheduled => None,
            Placement::SameCpu(cpu) | Placement::OtherCpus(_, cpu) => Some(cpu),
        }
    }
}

/// The calling thread pinned to one CPU; its previous CPUs are restored on drop.
struct Pinned {
    previous: Vec<usize>,
}

impl Pinned {
    fn to(cpu: Option<usize>) -> Result<Option<Pinned>, Error> {
        let Some(cpu) = cpu else { return Ok(None) };
        let fail = |error: std::io::Error| failed("pinning")(format!("cannot pin the bench to CPU {cpu}: {error}"));
        let previous = allowed_cpus().map_err(fail)?;
        set_affinity(Pid::from_raw(0), &[cpu]).map_err(fail)?;
        Ok(Some(Pinned { previous }))
    }
}

impl Drop for Pinned {
    fn drop(&mut self) {
        // Cannot fail for CPUs this thread was allowed a moment ago; if it did, the rest of the bench would only
        // run pinned, which changes numbers, not results.
        let _ = set_affinity(Pid::from_raw(0), &self.previous);
    }
}

/// Pins the echo (a child's pid, or 0 for the calling thread) to the placement's echo CPU, if any.
fn pin_echo(tid: i32, placement: Placement) -> Result<(), Error> {
    match placement.echo_cpu() {
        None => Ok(()),
        Some(cpu) => set_affinity(Pid::from_raw(tid), &[cpu])
            .map_err(|error| failed("pinning")(format!("cannot pin the echo to CPU {cpu}: {error}"))),
    }
}

/// Round trips per path, plus untimed warm-up ones.
#[derive(Debug, Clone, Copy)]
pub struct RoundTripPlan {
    pub repeat: u32,
    pub warmup: u32,
}

/// Hand-offs per path, of `bytes` each, plus untimed warm-up ones.
#[derive(Debug, Clone, Copy)]
pub struct BandwidthPlan {
    pub bytes: usize,
    pub repeat: u32,
    pub warmup: u32,
}

/// Round-trip samples in µs.
#[derive(Debug)]
pub struct RoundTrips {
    pub ipc_channel: Vec<f64>,
    pub socket_frames: Vec<f64>,
    pub thread_mpsc: Vec<f64>,
    pub pipe: Vec<f64>,
}

/// Hand-off samples in GB/s (10⁹ bytes per second).
#[derive(Debug)]
pub struct Bandwidths {
    pub ipc_bytes: Vec<f64>,
    pub shared_memory: Vec<f64>,
}

fn failed(measurement: &'static str) -> impl Fn(String) -> Error {
    move |reason| Error::Bench { measurement, reason }
}

/// Measures the three round trips with both sides placed as `placement` says.
pub fn round_trips(exe: &Path, plan: RoundTripPlan, placement: Placement) -> Result<RoundTrips, Error> {
    let _pinned = Pinned::to(placement.bench_cpu())?;
    let echo = IpcEcho::start(exe)?;
    pin_echo(echo.reaper.pid, placement)?;
    let ipc_channel = timed(plan.repeat, plan.warmup, |n| echo.ping(n))?;
    echo.finish()?;
    let mut frames = FramesEcho::start(exe)?;
    pin_echo(frames.child.id() as i32, placement)?;
    let socket_frames = timed(plan.repeat, plan.warmup, |n| frames.ping(n))?;
    frames.finish()?;
    let thread_mpsc = mpsc_round_trips(plan, placement)?;
    let mut pipe = PipeEcho::start(exe)?;
    pin_echo(pipe.child.id() as i32, placement)?;
    let pipe_samples = timed(plan.repeat, plan.warmup, |n| pipe.ping(n))?;
    pipe.finish()?;
    Ok(RoundTrips {
        ipc_channel,
        socket_frames,
        thread_mpsc,
        pipe: pipe_samples,
    })
}

/// Measures both hand-off paths with one echo child, both sides placed as `placement` says.
pub fn bandwidths(exe: &Path, plan: BandwidthPlan, placement: Placement) -> Result<Bandwidths, Error> {
    let fail = failed("hand-off");
    let _pinned = Pinned::to(placement.bench_cpu())?;
    let echo = IpcEcho::start(exe)?;
    pin_echo(echo.reaper.pid, placement)?;
    let mut buffer: Vec<u8> = (0..plan.bytes).map(|i| (i % 251) as u8).collect();
    let rounds = plan.warmup + plan.repeat;
    let gb_per_s = |started: Instant| plan.bytes as f64 / started.elapsed().as_secs_f64() / 1e9;

    echo.send(Down::ReceiveBytes {
        count: u64::from(rounds),
    })?;
    let mut ipc_bytes = Vec::with_capacity(plan.repeat as usize);
    for round in 0..rounds {
        let expected = stamp(&mut buffer, round);
        let started = Instant::now();
        echo.bytes
            .send(&buffer)
            .map_err(|error| fail(format!("cannot send {} bytes: {error}", plan.bytes)))?;
        echo.expect_touched(expected)?;
        if round >= plan.warmup {
            ipc_bytes.push(gb_per_s(started));
        }
    }

    let region = SharedRegion::create(plan.bytes.next_multiple_of(PAGE))
        .map_err(|error| fail(format!("cannot create a shared region: {error}")))?;
    echo.send(Down::MapShared {
        path: region.proc_path(),
    })?;
    match echo.recv()? {
        Up::Mapped => {}
        other => return Err(fail(format!("expected Mapped, got {other:?}"))),
    }
    let mut shared_memory = Vec::with_capacity(plan.repeat as usize);
    for round in 0..rounds {
        let expected = stamp(&mut buffer, round);
        let started = Instant::now();
        region
            .write(0, &buffer)
            .map_err(|error| fail(format!("cannot fill the shared region: {error}")))?;
        echo.send(Down::SharedFilled { len: plan.bytes as u64 })?;
        echo.expect_touched(expected)?;
        if round >= plan.warmup {
            shared_memory.push(gb_per_s(started));
        }
    }
    echo.finish()?;
    Ok(Bandwidths {
        ipc_bytes,
        shared_memory,
    })
}

/// Gives the first byte of every page a value new to this round; returns the sum the echo must answer.
fn stamp(buffer: &mut [u8], round: u32) -> u64 {
    for (page, chunk) in buffer.chunks_mut(PAGE).enumerate() {
        chunk[0] = (round as usize).wrapping_add(page).wrapping_mul(7) as u8;
    }
    touch_bytes(buffer)
}

/// Runs `round` for `warmup + repeat` numbers; returns the timed ones in µs.
fn timed(repeat: u32, warmup: u32, mut round: impl FnMut(u64) -> Result<(), Error>) -> Result<Vec<f64>, Error> {
    let mut samples = Vec::with_capacity(repeat as usize);
    for n in 0..u64::from(warmup + repeat) {
        let started = Instant::now();
        round(n)?;
        if n >= u64::from(warmup) {
            samples.push(started.elapsed().as_secs_f64() * 1e6);
        }
    }
    Ok(samples)
}

fn mpsc_round_trips(plan: RoundTripPlan, placement: Placement) -> Result<Vec<f64>, Error> {
    let fail = failed("thread round trip");
    let (to_echo, requests) = mpsc::channel::<u64>();
    let (answers, from_echo) = mpsc::channel::<u64>();
    let (pinned, pinning) = mpsc::channel::<Result<(), Error>>();
    let echo = thread::Builder::new()
        .name("bench-echo".into())
        .spawn(move || {
            let _ = pinned.send(pin_echo(0, placement));
            for n in requests {
                if answers.send(n).is_err() {
                    return;
                }
            }
        })
        .map_err(|error| fail(format!("cannot start a thread: {error}")))?;
    let samples = pinning
        .recv()
        .map_err(|_| fail("the echo thread is gone".to_string()))
        .and_then(|pinned| pinned)
        .and_then(|()| {
            timed(plan.repeat, plan.warmup, |n| {
                to_echo
                    .send(n)
                    .map_err(|_| fail("the echo thread is gone".to_string()))?;
                match from_echo.recv() {
                    Ok(m) if m == n => Ok(()),
                    Ok(m) => Err(fail(format!("sent {n}, got {m} back"))),
                    Err(_) => Err(fail("the echo thread is gone".to_string())),
                }
            })
        });
    drop(to_echo);
    echo.join().map_err(|_| fail("the echo thread panicked".to_string()))?;
    samples
}

/// An echo child process reached over ipc-channel.
struct IpcEcho {
    down: IpcSender<Down>,
    up: IpcReceiver<Up>,
    bytes: IpcBytesSender,
    reaper: Reaper,
}

impl IpcEcho {
    fn start(exe: &Path) -> Result<IpcEcho, Error> {
        let fail = failed("echo process");
        let (server, name) =
            IpcOneShotServer::<Up>::new().map_err(|error| fail(format!("cannot create a channel: {error}")))?;
        let child = Command::new(exe)
            .args([ECHO_ARG, "ipc", &name])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .map_err(|error| fail(format!("cannot start {}: {error}", exe.display())))?;
        let reaper = Reaper::start(child, move || {
            // The echo is dead: unblock accept() in case it never connected. Fails harmlessly otherwise.
            if let Ok(sender) = IpcSender::<Up>::connect(name) {
                let _ = sender.send(Up::NeverConnected);
            }
        })?;
        let (up, hello) = server
            .accept()
            .map_err(|error| fail(format!("handshake failed: {error}")))?;
        match hello {
            Up::Hello { down, bytes } => Ok(IpcEcho {
                down,
                up,
                bytes,
                reaper,
            }),
            Up::NeverConnected => Err(fail(format!(
                "it exited before connecting ({})",
                reaper.finish_status()
            ))),
            other => Err(fail(format!("expected Hello, got {other:?}"))),
        }
    }

    fn send(&self, message: Down) -> Result<(), Error> {
        self.down
            .send(message)
            .map_err(|error| failed("echo process")(format!("cannot send: {error}")))
    }

    fn recv(&self) -> Result<Up, Error> {
        self.up
            .recv()
            .map_err(|error| failed("echo process")(format!("cannot receive: {error}")))
    }

    fn ping(&self, n: u64) -> Result<(), Error> {
        self.send(Down::Ping(n))?;
        match self.recv()? {
            Up::Pong(m) if m == n => Ok(()),
            other => Err(failed("ipc round trip")(format!("sent Ping({n}), got {other:?}"))),
        }
    }

    fn expect_touched(&self, expected: u64) -> Result<(), Error> {
        match self.recv()? {
            Up::Touched { sum } if sum == expected => Ok(()),
            Up::Touched { sum } => Err(failed("hand-off")(format!(
                "the echo saw page sum {sum}, not {expected}: it read stale or wrong bytes"
            ))),
            other => Err(failed("hand-off")(format!("expected Touched, got {other:?}"))),
        }
    }

    /// Closes the channels (the echo exits 0 on that) and reaps it.
    fn finish(self) -> Result<(), Error> {
        let IpcEcho {
            down,
            up,
            bytes,
            reaper,
        } = self;
        drop((down, up, bytes));
        reaper.finish()
    }
}

/// Reaps one child on its own thread (`wait4` on its pid only), so that a child that dies early is noticed
/// while the bench blocks elsewhere. Dropped without [`Reaper::finish`], it kills the child and still reaps it.
struct Reaper {
    pid: i32,
    pidfd: Pidfd,
    waiter: Option<JoinHandle<std::io::Result<ExitInfo>>>,
}

impl Reaper {
    /// Starts reaping `child`; `on_exit` runs on the waiter thread right after the child was reaped.
    fn start(mut child: Child, on_exit: impl FnOnce() + Send + 'static) -> Result<Reaper, Error> {
        let fail = failed("echo process");
        let pid = child.id() as i32;
        // Nothing reaps the child before the waiter below starts, so the pid still names it here.
        let pidfd = match Pidfd::open(Pid::from_raw(pid)) {
            Ok(pidfd) => pidfd,
            Err(error) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(fail(format!("pidfd_open: {error}")));
            }
        };
        // The `Child` is dropped here without being waited for: the waiter reaps the pid.
        let waiter = thread::Builder::new().name("bench-echo-waiter".into()).spawn(move || {
            let info = wait4(Pid::from_raw(pid));
            on_exit();
            info
        });
        match waiter {
            Ok(waiter) => Ok(Reaper {
                pid,
                pidfd,
                waiter: Some(waiter),
            }),
            Err(error) => {
                pidfd.kill();
                let _ = wait4(Pid::from_raw(pid));
                Err(fail(format!("cannot start a thread: {error}")))
            }
        }
    }

    /// Waits for the child's exit (it must be on its way out) and checks that it exited 0.
    fn finish(mut self) -> Result<(), Error> {
        match self.join() {
            Ok(ExitInfo {
                status: ExitStatus::Code(0),
                ..
            }) => Ok(()),
            Ok(info) => Err(failed("echo process")(format!("it ended with {:?}", info.status))),
            Err(reason) => Err(failed("echo process")(reason)),
        }
    }

    /// How the child ended, in words, once it is known to have exited.
    fn finish_status(mut self) -> String {
        match self.join() {
            Ok(info) => format!("{:?}", info.status),
            Err(reason) => reason,
        }
    }

    fn join(&mut self) -> Result<ExitInfo, String> {
        let waiter = self.waiter.take().ok_or("already reaped")?;
        match waiter.join() {
            Ok(Ok(info)) => Ok(info),
            Ok(Err(error)) => Err(format!("wait4: {error}")),
            Err(_) => Err("its waiter thread panicked".to_string()),
        }
    }
}

impl Drop for Reaper {
    fn drop(&mut self) {
        if self.waiter.is_some() {
            self.pidfd.kill();
            let _ = self.join();
        }
    }
}

/// An echo child process reached the way workers are: framed postcard messages on a Unix socket (its stdin).
struct FramesEcho {
    child: Child,
    socket: Option<std::os::unix::net::UnixStream>,
    buffer: Vec<u8>,
}

impl FramesEcho {
    fn start(exe: &Path) -> Result<FramesEcho, Error> {
        let fail = failed("echo process");
        let (ours, theirs) = std::os::unix::net::UnixStream::pair()
            .map_err(|error| fail(format!("cannot create a socket pair: {error}")))?;
        let child = Command::new(exe)
            .args([ECHO_ARG, "frames"])
            .stdin(Stdio::from(std::os::fd::OwnedFd::from(theirs)))
            .spawn()
            .map_err(|error| fail(format!("cannot start {}: {error}", exe.display())))?;
        Ok(FramesEcho {
            child,
            socket: Some(ours),
            buffer: Vec::new(),
        })
    }

    fn ping(&mut self, n: u64) -> Result<(), Error> {
        let fail = failed("socket frames round trip");
        let socket = self
            .socket
            .as_ref()
            .ok_or_else(|| fail("the socket is closed".to_string()))?;
        shared::frame::write(socket, &Down::Ping(n)).map_err(|error| fail(format!("cannot write: {error}")))?;
        shared::frame::read_into(socket, shared::frame::MAX_FROM_WORKER, &mut self.buffer)
            .map_err(|error| fail(format!("cannot read: {error}")))?;
        match postcard::from_bytes::<Up>(&self.buffer) {
            Ok(Up::Pong(m)) if m == n => Ok(()),
            other => Err(fail(format!("sent ping {n}, got {other:?}"))),
        }
    }

    /// Closes the socket (it exits 0 on EOF) and reaps it.
    fn finish(mut self) -> Result<(), Error> {
        self.socket = None;
        reap_echo(&mut self.child)
    }
}

impl Drop for FramesEcho {
    fn drop(&mut self) {
        kill_echo(&mut self.child);
    }
}

/// An echo child process reached over a pipe pair (its stdin and stdout).
struct PipeEcho {
    child: Child,
    input: Option<ChildStdin>,
    output: ChildStdout,
}

impl PipeEcho {
    fn start(exe: &Path) -> Result<PipeEcho, Error> {
        let fail = failed("echo process");
        let mut child = Command::new(exe)
            .args([ECHO_ARG, "pipe"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .map_err(|error| fail(format!("cannot start {}: {error}", exe.display())))?;
        match (child.stdin.take(), child.stdout.take()) {
            (Some(input), Some(output)) => Ok(PipeEcho {
                child,
                input: Some(input),
                output,
            }),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                Err(fail("its pipes were not created".to_string()))
            }
        }
    }

    fn ping(&mut self, n: u64) -> Result<(), Error> {
        let fail = failed("pipe round trip");
        let input = self
            .input
            .as_mut()
            .ok_or_else(|| fail("the pipe is closed".to_string()))?;
        input
            .write_all(&n.to_le_bytes())
            .map_err(|error| fail(format!("cannot write: {error}")))?;
        let mut word = [0u8; 8];
        self.output
            .read_exact(&mut word)
            .map_err(|error| fail(format!("cannot read: {error}")))?;
        match u64::from_le_bytes(word) {
            m if m == n => Ok(()),
            m => Err(fail(format!("sent {n}, got {m} back"))),
        }
    }

    /// Closes its stdin (it exits 0 on EOF) and reaps it.
    fn finish(mut self) -> Result<(), Error> {
        self.input = None;
        reap_echo(&mut self.child)
    }
}

impl Drop for PipeEcho {
    fn drop(&mut self) {
        kill_echo(&mut self.child);
    }
}

/// Waits for an echo child whose input was closed; it must have exited 0.
fn reap_echo(child: &mut Child) -> Result<(), Error> {
    let fail = failed("echo process");
    let status = child.wait().map_err(|error| fail(format!("wait: {error}")))?;
    if status.success() {
        Ok(())
    } else {
        Err(fail(format!("it ended with {status}")))
    }
}

/// Kills and reaps an echo child still running: an error cut the measurement short (after `finish`, it is
/// reaped already and this does nothing).
fn kill_echo(child: &mut Child) {
    if let Ok(None) = child.try_wait() {
        let _ = child.kill();
        let _ = child.wait();
    }
}
