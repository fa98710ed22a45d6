//! `supervisor` runs CPU work in isolated worker processes, one per core.
//!
//! # Theory of operation
//!
//! **Who owns what.** The [`dispatch`]er owns all job state (pending, in-flight, done items; each worker's
//! lifecycle) and is the only code that changes it: one `select!` loop (its driver) feeds a state machine that
//! keeps the work queue, the worker table and the tallies, and asks a pure attribution function whom a death is
//! charged to. It builds nothing it talks to: [`run`] passes in the launcher, the stop signals and the reporter
//! ([`report::Progress`]), so the state machine is unit-tested with a fake launcher. The [`pool`] starts workers
//! and turns everything a worker does — its messages, its channel closing, its exit — into events for the
//! dispatcher: worker processes from one long-lived launcher thread ([`pool::process`]), or, for the `thread` and
//! `serial` executors (the baselines users compare with), worker threads of this process ([`pool::threads`]),
//! which share only those events with the process path. The [`results`] writer owns the results file. Workers
//! (the `child` crate) own nothing but the item in hand.
//!
//! **How an item flows.** The job's [`input`] is a [`input::Source`] (one file per kind): it says how many items
//! there are, when it knows (a stream knows only once it ends), and describes each (sub-ranges, line-aligned byte
//! ranges or lines of one mapped file, file paths, URLs) without listing them all where it can. The dispatcher
//! owns the source and pulls fresh items from it as workers need them (so many are ready, none yet, or the input
//! ended), groups consecutive items into batches ([`batching`] sizes them from measured per-item time) and sends
//! each batch to a worker as descriptors over its socket. The worker maps the input read-only, runs the task on
//! each item, and sends back results in item order. The dispatcher records each item exactly once (`ok` or
//! `failed`), feeds the records to the writer and the reducer, and releases the item, so that a stream keeps only
//! what is in flight; the dispatcher itself keeps nothing per item of the job. For a `urls` input, [`fetch`]
//! first fetches each body into a memory arena shared with the workers (at most `max_in_flight_bytes` at once:
//! the backpressure); the dispatcher hands out fetched items, and a batch names each body's place in the arena.
//!
//! **How a crash flows.** A dead worker is reaped at once by its waiter thread (`wait4`, with resource usage).
//! Its progress slot (a shared page it stamps before each item) names the item it was running: that item is
//! recorded as failed (or retried), with the signal or exit code and the worker's stderr tail; the items it had
//! not answered go back in the queue, uncharged. When the slot cannot be trusted, the unanswered items are re-run
//! one at a time, so that the item that kills a worker alone is the one recorded. A worker that stops making
//! progress is killed too: inside an item at its `timeout`, between items (slot idle, nothing sent, work held)
//! after the stall deadline; a stalled worker's work goes back uncharged.
//!
//! **How results last.** Records are appended to a journal as they finish; at the end the results file is
//! written from it atomically. `--resume` reads the journal back and runs only what it does not record.
//!
//! **How a stop flows.** SIGINT/SIGTERM become a [`signal::StopSignal`]; the dispatcher stops handing out work,
//! asks workers to shut down, kills them after a grace period (or at once on a second signal), writes what is
//! done, and exits 130/143. Workers also die with the supervisor through `PR_SET_PDEATHSIG`.
//!
//! **How a job spans machines.** A cluster scheduler starts one supervisor per [`shard`]: each runs a contiguous
//! block of the item indices (the dispatcher gets it as a span), with its own results file and journal, and
//! [`cpus`] sizes its pool to the CPUs the scheduler gave it. [`merge`] checks and combines the shards' results;
//! [`export`] prints the scheduler's job description.
//!
//! **How a worker is confined.** Each worker confines itself (`child::isolation`): no inherited descriptors, its
//! own process group, no new privileges, `/` as its folder; at `Init` a descriptor limit, the job's environment
//! and, as root, another user ([`isolation`] resolves it). When a worker dies, its process group is killed before
//! it is reaped (`sys::process::reap_and_kill_group`), and children of its task that left the group are killed once
//! they are orphaned to the supervisor, a child subreaper ([`orphans`]).
//!
//! **Where the system calls are.** All of them, and every `unsafe` block, are in the `sys` crate; this crate
//! denies `unsafe_code`.

#![deny(unsafe_code)]

pub mod atomic;
pub mod baseline;
pub mod batching;
pub mod cli;
pub mod cpus;
pub mod dispatch;
pub mod error;
pub mod export;
pub mod failure;
pub mod fetch;
pub mod forkserver;
pub mod input;
pub mod isolation;
pub mod journal;
pub mod journal_index;
pub mod lock;
pub mod merge;
pub mod orphans;
pub mod plan;
pub mod pool;
pub mod record;
pub mod report;
pub mod results;
pub mod run;
pub mod shard;
pub mod sigbus;
pub mod signal;
pub mod spec_fs;

use clap::Parser;
use shared::exit;

use crate::cli::{Cli, Command};
use crate::error::Error;

/// The whole program: parses arguments, runs the command, and maps the outcome to an exit code.
///
/// When started as `supervisor __worker` (with its channel as stdin) it is a worker instead, and as `supervisor __bench-echo …` the far
/// side of `supervisor bench`; neither starts the async runtime.
pub fn main() -> i32 {
    let mut args = std::env::args_os();
    let mode = args.nth(1);
    if mode.as_deref() == Some(pool::WORKER_ARG.as_ref()) {
        return worker_main();
    }
    if mode.as_deref() == Some(baseline::bench::echo::ECHO_ARG.as_ref()) {
        return baseline::bench::echo::main(args);
    }
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(error) => {
            let _ = error.print();
            return if error.use_stderr() { exit::USAGE } else { exit::OK };
        }
    };
    let result = match cli.command {
        Command::Tasks => return run::tasks(),
        // The baselines have an error of their own (which wraps this crate's).
        Command::Compare(args) => {
            return baseline::compare::run(&args).unwrap_or_else(|error| fail(&error, error.exit_code()));
        }
        // Starts its fork server first thing, while this process is still single-threaded.
        Command::Bench(args) => {
            return baseline::bench::run(&args).unwrap_or_else(|error| fail(&error, error.exit_code()));
        }
        Command::Check { job } => block_on(async move { run::check(&job).await }),
        // The job is loaded and the fork server (if any) started before the runtime: the fork server must be
        // forked while this process is single-threaded.
        Command::Run(args) => run::load(&args.job, Some(&args))
            .and_then(|spec| Ok((run::starter(&spec)?, spec)))
            .and_then(|(starter, spec)| block_on(run::run(spec, args, starter))),
        Command::Merge(args) => run::load(&args.job, None).and_then(|spec| {
            if let Some(results) = &args.results {
                spec_fs::results_flag(&spec, results)?;
            }
            let source = block_on_value(input::list(&spec))??;
            // Merging joins shards, and a stream is never sharded.
            let Some(items) = source.known_len() else {
                return Err(Error::StreamNotShardable {
                    what: "merge",
                    input: source.key(),
                });
            };
            merge::run(&args, spec, items)
        }),
        Command::Export(command) => export::run(&command),
        Command::Replay { job, item } => run::load(&job, None).and_then(|spec| {
            let mut source = block_on_value(input::list(&spec))??;
            run::replay(&spec, source.as_mut(), item)
        }),
    };
    match result {
        Ok(code) => code,
        Err(error) => fail(&error, error.exit_code()),
    }
}

/// Prints `error` and its causes on stderr; returns `code`.
fn fail(error: &dyn std::error::Error, code: i32) -> i32 {
    let mut printed = error.to_string();
    eprintln!("error: {printed}");
    // Messages usually name their cause already; print only the causes they do not.
    let mut source = error.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !printed.contains(&text) {
            eprintln!("  caused by: {text}");
            printed.push_str(&text);
        }
        source = cause.source();
    }
    code
}

fn block_on(future: impl Future<Output = Result<i32, Error>>) -> Result<i32, Error> {
    block_on_value(future)?
}

/// Runs `future` on a fresh runtime, which is gone when this returns.
pub(crate) fn block_on_value<T>(future: impl Future<Output = T>) -> Result<T, Error> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|error| Error::Internal {
            message: format!("cannot start the async runtime: {error}"),
        })?
        .block_on(future))
}

fn worker_main() -> i32 {
    let parent = std::env::var(child::worker::PARENT_PID_ENV)
        .ok()
        .and_then(|pid| pid.parse().ok());
    match child::worker::run(parent, Box::new(builtins::build)) {
        Ok(()) => exit::OK,
        Err(error) => {
            eprintln!("worker: {error}");
            exit::INTERNAL
        }
    }
}
