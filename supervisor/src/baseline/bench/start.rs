//! Worker start latency: from asking the pool for a worker to the worker answering `Init` with `Ready`.
//!
//! This is the real pool: the launcher a run would use for the [`Workers`] under test (a [`ProcessLauncher`] with
//! its [`Starter`], or the [`ThreadLauncher`]), its [`Event`]s read on a small tokio runtime exactly as the
//! dispatcher reads them. Each repetition launches one worker, answers its
//! `Connected` with a trivial `Init` (the `noop` task over a one-item range), stops the clock at `Ready`, then
//! shuts the worker down and waits until it has exited and its channel closed, so that repetitions never
//! overlap. What is timed therefore includes everything a replacement worker costs the dispatcher: the
//! bootstrap server, the exec or fork, the worker's own set-up, the handshake, `Init`, and the thread hops of
//! the events. For scale, a bare `std::thread::spawn` + `join` of an empty closure.

use std::sync::Arc;
use std::time::{Duration, Instant};

use shared::item::InputPlan;
use shared::protocol::{FromWorker, ToWorker, WorkerLimits};
use tokio::sync::mpsc;

use crate::baseline::Error;
use crate::dispatch::Launch;
use crate::pool::{Event, IpcCounter, ProcessLauncher, Starter, ThreadLauncher, WorkerId, message_name};
use sys::process::Pidfd;

/// A worker that takes longer than this to start or to exit is reported as an error (and killed).
const STEP_TIMEOUT: Duration = Duration::from_secs(20);

/// The workers a measurement starts.
#[derive(Debug)]
pub enum Workers {
    /// Worker processes, started the way the `Starter` says (the `process` executor).
    Processes(Starter),
    /// Worker threads of this process (the `thread` and `serial` executors).
    Threads,
}

/// Starts `warmup + repeat` `workers` one after the other; returns the timed ones in µs.
pub fn pool_start(measurement: &'static str, workers: Workers, repeat: u32, warmup: u32) -> Result<Vec<f64>, Error> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .map_err(|source| Error::Start {
            what: "the async runtime",
            source,
        })?;
    runtime.block_on(start_workers(measurement, workers, repeat, warmup))
}

async fn start_workers(
    measurement: &'static str,
    workers: Workers,
    repeat: u32,
    warmup: u32,
) -> Result<Vec<f64>, Error> {
    let fail = move |reason: String| Error::Bench { measurement, reason };
    let (sender, mut events) = mpsc::channel(64);
    let started: std::io::Result<Box<dyn Launch>> = match workers {
        Workers::Processes(starter) => ProcessLauncher::start(sender, Arc::new(IpcCounter::default()), starter)
            .map(|launcher| Box::new(launcher) as Box<dyn Launch>),
        Workers::Threads => ThreadLauncher::start(sender).map(|launcher| Box::new(launcher) as Box<dyn Launch>),
    };
    let mut launcher = started.map_err(|error| fail(format!("cannot start the launcher: {error}")))?;
    let mut samples = Vec::with_capacity(repeat as usize);
    for id in 0..u64::from(warmup + repeat) {
        let mut worker = Worker {
            id,
            pidfd: None,
            channel_closed: false,
            exited: false,
        };
        let started = Instant::now();
        launcher.launch(id);
        let ready = worker.until_ready(&mut events).await;
        let elapsed = started.elapsed();
        let stopped = worker.stop(&mut events, ready.as_ref().ok()).await;
        ready.map_err(&fail)?;
        stopped.map_err(&fail)?;
        if id >= u64::from(warmup) {
            samples.push(elapsed.as_secs_f64() * 1e6);
        }
    }
    Ok(samples)
}

/// What the bench knows about the one worker it is starting.
struct Worker {
    id: WorkerId,
    pidfd: Option<Pidfd>,
    channel_closed: bool,
    exited: bool,
}

impl Worker {
    async fn next(&self, events: &mut mpsc::Receiver<Event>) -> Result<Event, String> {
        loop {
            let event = tokio::time::timeout(STEP_TIMEOUT, events.recv())
                .await
                .map_err(|_| format!("worker {} did not answer within {STEP_TIMEOUT:?}", self.id))?
                .ok_or("the launcher stopped")?;
            if event_id(&event) == self.id {
                return Ok(event);
            }
        }
    }

    /// Answers `Connected` with `Init` and returns the worker's sender once it said `Ready`.
    async fn until_ready(&mut self, events: &mut mpsc::Receiver<Event>) -> Result<crate::pool::WorkerSender, String> {
        let mut to_worker = None;
        loop {
            match decoded(self.next(events).await?)? {
                Event::Spawned { pidfd, .. } => self.pidfd = pidfd,
                Event::SpawnFailed { error, .. } => {
                    self.exited = true;
                    self.channel_closed = true;
                    return Err(format!("cannot start a worker: {error}"));
                }
                Event::Connected { to_worker: sender, .. } => {
                    sender.send(ToWorker::Init {
                        task: "noop".to_string(),
                        args_json: "{}".to_string(),
                        input: InputPlan::Range {
                            start: 0,
                            end: 1,
                            chunk: 1,
                        },
                        limits: WorkerLimits::default(),
                        progress: None,
                        isolation: Default::default(),
                    });
                    to_worker = Some(sender);
                }
                Event::Message {
                    message: FromWorker::Ready,
                    ..
                } => return to_worker.ok_or_else(|| "the worker said Ready before Init".to_string()),
                Event::Message {
                    message: FromWorker::InitFailed { message },
                    ..
                } => return Err(format!("Init failed: {message}")),
                Event::Message { message, .. } => {
                    return Err(format!("unexpected {} before Ready", message_name(&message)));
                }
                Event::Frame { .. } => return Err("a frame that was not decoded".to_string()),
                Event::ChannelClosed { error, .. } => {
                    self.channel_closed = true;
                    return Err(format!(
                        "the worker closed its channel before Ready{}",
                        error.map(|e| format!(": {e}")).unwrap_or_default()
                    ));
                }
                Event::Exited { info, stderr_tail, .. } => {
                    self.exited = true;
                    return Err(format!(
                        "the worker exited before Ready ({:?}): {}",
                        info.status,
                        stderr_tail.trim()
                    ));
                }
            }
        }
    }

    /// Shuts the worker down (kills it if it is not ready) and waits until it exited and its channel closed.
    async fn stop(
        &mut self,
        events: &mut mpsc::Receiver<Event>,
        to_worker: Option<&crate::pool::WorkerSender>,
    ) -> Result<(), String> {
        match to_worker {
            Some(sender) => {
                sender.send(ToWorker::Shutdown);
            }
            None => self.kill(),
        }
        let mut killed = to_worker.is_none();
        while !(self.exited && self.channel_closed) {
            let event = match self.next(events).await {
                Ok(event) => event,
                Err(error) if !killed => {
                    // A worker that does not exit when told: kill it, and still wait for the reaping.
                    self.kill();
                    killed = true;
                    eprintln!("bench: {error}; killed it");
                    continue;
                }
                Err(error) => return Err(error),
            };
            match event {
                Event::Spawned { pidfd, .. } => {
                    self.pidfd = pidfd;
                    self.kill();
                }
                Event::SpawnFailed { .. } => (self.exited, self.channel_closed) = (true, true),
                Event::ChannelClosed { .. } => self.channel_closed = true,
                Event::Exited { .. } => self.exited = true,
                Event::Connected { .. } | Event::Message { .. } | Event::Frame { .. } => {}
            }
        }
        Ok(())
    }

    fn kill(&self) {
        if let Some(pidfd) = &self.pidfd {
            pidfd.kill();
        }
    }
}

/// A worker process's frame as the message it holds (the bench's own workers are trusted).
fn decoded(event: Event) -> Result<Event, String> {
    match event {
        Event::Frame { id, frame } => match frame.decode() {
            Ok(message) => Ok(Event::Message { id, message }),
            Err(error) => Err(format!("undecodable message from the worker: {error}")),
        },
        other => Ok(other),
    }
}

fn event_id(event: &Event) -> WorkerId {
    match event {
        Event::Spawned { id, .. }
        | Event::SpawnFailed { id, .. }
        | Event::Connected { id, .. }
        | Event::Message { id, .. }
        | Event::Frame { id, .. }
        | Event::ChannelClosed { id, .. }
        | Event::Exited { id, .. } => *id,
    }
}

/// `std::thread::spawn` of an empty closure and `join`, `warmup + repeat` times; returns the timed ones in µs.
pub fn bare_thread(repeat: u32, warmup: u32) -> Result<Vec<f64>, Error> {
    let mut samples = Vec::with_capacity(repeat as usize);
    for round in 0..warmup + repeat {
        let started = Instant::now();
        std::thread::Builder::new()
            .spawn(|| {})
            .map_err(|error| Error::Bench {
                measurement: "bare thread",
                reason: format!("cannot start a thread: {error}"),
            })?
            .join()
            .map_err(|_| Error::Bench {
                measurement: "bare thread",
                reason: "an empty thread panicked".to_string(),
            })?;
        if round >= warmup {
            samples.push(started.elapsed().as_secs_f64() * 1e6);
        }
    }
    Ok(samples)
}
