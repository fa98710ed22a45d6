//! The commands: from parsed arguments to an exit code.

use std::io::Write;
use std::path::Path;
use std::sync::Arc;

use shared::exit;
use shared::job::{BatchSize, Executor, InputSpec, JobSpec, StartMethod, WorkerCount};
use shared::protocol::WorkerLimits;
use shared::usertask::UserTask;

use crate::atomic::{RemoveOnDrop, remove_stale_temps};
use crate::cli::RunArgs;
use crate::cpus;
use crate::dispatch::{self, DispatchConfig, StopReason};
use crate::error::Error;
use crate::forkserver::ForkServer;
use crate::input::{self, Source};
use crate::journal::{self, Done, Fingerprint, Journal, JournalWriter, journal_path, staging_path};
use crate::lock::ResultsLock;
use crate::plan;
use crate::pool::{IpcCounter, ProcessLauncher, Starter, ThreadLauncher};
use crate::report::{Progress, ShardSummary, Summary};
use crate::results::{Failure, FailureKind, Record, Reducer, Status};
use crate::shard::{self, ShardFlags};

/// Loads a job file, applies the command-line overrides of `run`, and checks its task.
pub fn load(job: &Path, args: Option<&RunArgs>) -> Result<JobSpec, Error> {
    let mut spec = JobSpec::load(job)?;
    if let Some(args) = args {
        if let Some(workers) = args.workers {
            spec.workers.count = WorkerCount::Fixed(workers as usize);
        }
        if let Some(batch) = args.batch {
            spec.workers.batch = BatchSize::Fixed(batch);
        }
        if let Some(start) = args.start {
            spec.workers.start = start.into();
        }
        // The job file's own executor and start method were checked against the task when it was loaded; only
        // the flags that change them need checking again.
        if args.executor.is_some() || args.start.is_some() {
            spec.workers.executor = args.executor.map_or(spec.workers.executor, Into::into);
            if let Some(key) = spec.workers.process_only_conflict(&spec.task) {
                return Err(Error::ExecutorConflict {
                    key,
                    executor: spec.workers.executor.name(),
                });
            }
            if let (Some(UserTask::WorkerBin { .. }), Some(key)) = (&spec.task.user, spec.workers.worker_bin_conflict())
            {
                return Err(Error::WorkerBinConflict { key });
            }
        }
        if let Some(results) = &args.results {
            spec.output.results = Some(crate::spec_fs::results_flag(&spec, results)?);
            spec.output.results_span = None;
        }
    }
    crate::spec_fs::check(&spec)?;
    if let Some(info) = plan::check_task(&spec)? {
        plan::resolve_path_args(&mut spec, info);
        let paths: Vec<&str> = info
            .args
            .iter()
            .filter(|arg| arg.kind == "path")
            .map(|arg| arg.name)
            .collect();
        crate::spec_fs::check_path_args(&spec, &paths)?;
    }
    Ok(spec)
}

/// Prepares how worker processes will be started: `None` for the `thread` and `serial` executors, which start
/// none. For `forkserver` this forks the fork server, so it must run while the process is still
/// single-threaded: before the async runtime exists.
pub fn starter(spec: &JobSpec) -> Result<Option<Starter>, Error> {
    // Users and groups must exist and the supervisor must be allowed to switch to them: found before anything
    // starts. (`replay` runs no workers and does not care.)
    crate::isolation::resolve(spec)?;
    if spec.workers.executor != Executor::Process {
        return Ok(None);
    }
    // Orphaned children of tasks come to this process, which kills them (see `orphans`). Not fatal: without it
    // they go to init, as before.
    if let Err(error) = crate::orphans::adopt() {
        eprintln!("warning: cannot become a child subreaper: {error}");
    }
    if let Some(UserTask::WorkerBin { path }) = &spec.task.user {
        return Ok(Some(Starter::SpawnBin(path.clone())));
    }
    match spec.workers.start {
        StartMethod::Spawn => Ok(Some(Starter::Spawn)),
        StartMethod::Forkserver => {
            // Called from `main` before the runtime or any other thread is started (a fork needs that).
            let server = ForkServer::start().map_err(|error| Error::WorkersCannotStart {
                reason: format!("cannot start the fork server: {error}"),
            })?;
            Ok(Some(Starter::Fork(Arc::new(server))))
        }
    }
}

pub async fn run(mut spec: JobSpec, args: RunArgs, starter: Option<Starter>) -> Result<i32, Error> {
    let source = input::list(&spec).await?;
    let known = source.known_len();
    let shard = choose_shard(&spec, &args)?;
    let span = match (&shard, known) {
        (None, Some(len)) => 0..len,
        // A stream's span has no end until it ends.
        (None, None) => 0..u64::MAX,
        (Some(chosen), Some(len)) => chosen.shard.span(len),
        (Some(_), None) => {
            return Err(Error::StreamNotShardable {
                what: "sharding (--shard, [shard] count, or a scheduler's array index)",
                input: source.key(),
            });
        }
    };
    if known.is_none() && (args.resume || args.retry_failed) {
        return Err(Error::StreamNotResumable { input: source.key() });
    }
    if let Some(chosen) = &shard {
        spec.output.results = spec.output.results.map(|results| chosen.shard.results_path(&results));
        if let Some(results) = &spec.output.results {
            crate::spec_fs::check_results(&spec, results, None)?;
        }
    }
    // Held to the end of the run: no other run or merge writes these results or their journal meanwhile.
    let _lock = spec.output.results.as_deref().map(ResultsLock::acquire).transpose()?;
    if let Some(results) = &spec.output.results {
        // Temporary files of runs that died: they must not fill the disk this run needs.
        remove_stale_temps(results);
        remove_stale_temps(&journal_path(results));
    }
    let _staging = match &spec.output.results {
        Some(results) if !spec.output.journal => Some(RemoveOnDrop(staging_path(results))),
        _ => None,
    };
    let mut reducer = Reducer::new(spec.output.reduce);
    let shard_summary = shard.as_ref().map(|chosen| ShardSummary {
        index: chosen.shard.index,
        count: chosen.shard.count,
        first: span.start,
        end: span.end,
        job_items: known.unwrap_or(0),
        from: chosen.why.clone(),
    });
    let (workers, workers_from) = worker_count(&spec, &args);
    if !args.quiet {
        if let Some(shard) = &shard_summary {
            eprintln!("{shard}");
        }
        if args.workers.is_none() && spec.workers.count == WorkerCount::Auto {
            eprintln!("workers: {workers} ({workers_from})");
        }
    }
    let resume = args.resume || args.retry_failed;
    let (writer, prior, source) = match &spec.output.results {
        None if resume => return Err(Error::ResumeWithoutResults),
        None => (None, Done::default(), source),
        Some(_) if !spec.output.journal && resume => return Err(Error::ResumeWithoutJournal),
        Some(results) => {
            let path = records_path(&spec, results);
            // Stats every file of a glob: off the runtime, so that a slow filesystem stalls nothing else. Done
            // before the source is handed to the dispatcher, which owns it from then on.
            let (mut fingerprint, source) = {
                let spec = spec.clone();
                let (fingerprint, source) = tokio::task::spawn_blocking(move || (fingerprint(&spec, &*source), source))
                    .await
                    .map_err(|join| Error::Internal {
                        message: format!("fingerprinting the input failed: {join}"),
                    })?;
                (fingerprint?, source)
            };
            fingerprint.shard = shard.as_ref().map(|chosen| chosen.shard);
            let mut recovered = if resume && path.exists() {
                let journal = Journal::recover(&path, &fingerprint, args.retry_failed, &mut reducer)?;
                for dropped in &journal.dropped {
                    eprintln!("journal {}: dropped {dropped}", path.display());
                }
                Some(journal)
            } else if resume {
                eprintln!("no journal at {}: starting from the beginning", path.display());
                None
            } else if path.exists() && !args.force && !journal::is_finished(&path) {
                return Err(Error::JournalExists { path });
            } else {
                None
            };
            let prior = recovered
                .as_mut()
                .map(|journal| std::mem::take(&mut journal.done))
                .unwrap_or_default();
            let writer = JournalWriter::create(&path, &fingerprint, recovered, spec.output.journal)?;
            (Some(writer), prior, source)
        }
    };
    let serial = spec.workers.executor == Executor::Serial;
    let config = DispatchConfig {
        // Serial: one thread, and the whole job as one batch.
        workers: if serial { 1 } else { workers },
        progress_slots: spec.workers.executor == Executor::Process,
        task: task_name(&spec),
        args_json: task_args_json(&spec),
        batch: match spec.workers.batch {
            // A stream's length is not known: its batches are as large as its kind allows.
            _ if serial => Some(known.unwrap_or(source.batch_cap()).max(1)),
            BatchSize::Auto => None,
            BatchSize::Fixed(n) => Some(n),
        },
        timeout: spec.task.timeout,
        retries: spec.task.retries,
        retry_backoff: spec.task.retry_backoff,
        limits: WorkerLimits {
            memory_bytes: spec.workers.memory_limit,
            cpu_seconds_per_item: spec.workers.cpu_limit.map(|limit| limit.as_secs_f64().ceil() as u64),
            core_dumps: spec.workers.core_dumps,
        },
        isolation: crate::isolation::resolve(&spec)?,
        max_tasks: spec.workers.max_tasks,
        supervise: spec.supervise.clone(),
        span: span.clone(),
        fetch: match &spec.input {
            InputSpec::Urls { fetch, .. } => Some(fetch.clone()),
            _ => None,
        },
    };
    let progress = Progress::new(
        known.map(|_| span.end - span.start),
        prior.ok + prior.failed,
        args.quiet,
    );
    let ports = ports(starter.clone(), progress)?;
    let (outcome, source) = dispatch::run(source, config, reducer, writer, prior, ports).await;
    if let Some(starter) = &starter {
        starter.shut_down();
    }
    let left = crate::orphans::sweep_until_clean();
    if !left.is_empty() {
        eprintln!(
            "warning: {} process(es) started by tasks still alive {:?} after the end of the run: {left:?}",
            left.len(),
            crate::orphans::FINAL_SWEEP_LIMIT
        );
    }
    let outcome = outcome?;
    if let Some(warning) = source.changed_during_job() {
        eprintln!("{warning}");
    }
    let mut journal_kept = None;
    if let Some(results) = &spec.output.results {
        let records = records_path(&spec, results);
        // A stream's length is known once it ended; one stopped before has no item past those it saw.
        let count = source.known_len().unwrap_or(span.start + outcome.items);
        let (from, to, order) = (records.clone(), results.clone(), spec.output.order);
        tokio::task::spawn_blocking(move || journal::finalize(&from, &to, order, count))
            .await
            .map_err(|join| Error::Internal {
                message: format!("writing results failed: {join}"),
            })??;
        // Kept when the run is unfinished (for --resume) or has failures (for --retry-failed).
        let clean = outcome.ok == outcome.items;
        if !spec.output.journal || (clean && !args.keep_journal) {
            std::fs::remove_file(&records).map_err(|source| Error::Journal {
                path: records.clone(),
                source,
            })?;
        } else {
            journal_kept = Some(records);
        }
    }
    let code = match outcome.stopped {
        Some(StopReason::Signal(signal)) => signal.exit_code(),
        Some(_) => exit::ITEMS_FAILED,
        None if outcome.failed > 0 => exit::ITEMS_FAILED,
        None => exit::OK,
    };
    let mut summary = Summary::new(spec.name.clone(), spec.output.results.clone(), outcome);
    summary.journal = journal_kept;
    summary.shard = shard_summary;
    summary.workers_from = workers_from;
    let mut out = std::io::stdout().lock();
    let printed = if args.json {
        summary.print_json(&mut out)
    } else {
        summary.print_human(&mut out)
    };
    // A closed stdout (e.g. piped into `head`) must not turn a finished job into a failure.
    let _ = printed.and_then(|()| out.flush());
    Ok(code)
}

/// What the dispatcher talks to: the launcher for the executor (worker processes started by `starter`, or worker
/// threads when there is none: see [`starter`]), the stop signals, and `progress`.
fn ports(starter: Option<Starter>, progress: Progress) -> Result<dispatch::Ports, Error> {
    let (events_sender, events) = tokio::sync::mpsc::channel(1024);
    let counter = Arc::new(IpcCounter::default());
    let started: std::io::Result<Box<dyn dispatch::Launch>> = match starter {
        Some(starter) => ProcessLauncher::start(events_sender, Arc::clone(&counter), starter)
            .map(|launcher| Box::new(launcher) as Box<dyn dispatch::Launch>),
        None => ThreadLauncher::start(events_sender).map(|launcher| Box::new(launcher) as Box<dyn dispatch::Launch>),
    };
    let launcher = started.map_err(|error| Error::WorkersCannotStart {
        reason: format!("cannot start the launcher: {error}"),
    })?;
    let signals = crate::signal::listen().map_err(|error| Error::Internal {
        message: format!("cannot listen for signals: {error}"),
    })?;
    Ok(dispatch::Ports {
        launcher,
        events,
        counter,
        signals,
        reporter: Box::new(progress),
    })
}

/// This run's shard, from `--shard`, the scheduler's environment, `--shard-count` or `[shard] count`.
fn choose_shard(spec: &JobSpec, args: &RunArgs) -> Result<Option<shard::Chosen>, Error> {
    let flags = ShardFlags {
        shard: args.shard,
        count: args.shard_count,
        job_count: spec.shard.count,
    };
    shard::choose(flags, |name| std::env::var(name).ok()).map_err(|error| Error::Shard { reason: error.0 })
}

/// How many workers a run gets, and why: `--workers`, else `[workers] count`, else the CPUs this process may use
/// (see [`crate::cpus`]).
pub fn worker_count(spec: &JobSpec, args: &RunArgs) -> (usize, String) {
    match (args.workers, spec.workers.count) {
        (Some(n), _) => (n as usize, "--workers".into()),
        (None, WorkerCount::Fixed(n)) => (n, "[workers] count".into()),
        (None, WorkerCount::Auto) => {
            let cpus = cpus::available();
            (cpus.count, format!("the CPUs this process may use: {}", cpus.why))
        }
    }
}

/// The task name sent to workers in `Init`: the builtin, or the reserved name of the user's kind of task.
fn task_name(spec: &JobSpec) -> String {
    match &spec.task.user {
        Some(user) => user.task_name().to_string(),
        None => spec.task.builtin.clone(),
    }
}

/// The task's `args` sent in `Init`: the builtin's, or the description of the user's task.
fn task_args_json(spec: &JobSpec) -> String {
    match &spec.task.user {
        Some(user) => serde_json::to_string(user).unwrap_or_default(),
        None => spec.task.args.to_string(),
    }
}

/// The task as `check` shows it and the journal fingerprint records it.
fn task_description(spec: &JobSpec) -> String {
    match &spec.task.user {
        Some(user) => user.describe(),
        None => spec.task.builtin.clone(),
    }
}

/// Where records go while the job runs: the journal, or a private staging file with `journal = false`.
fn records_path(spec: &JobSpec, results: &Path) -> std::path::PathBuf {
    if spec.output.journal {
        journal_path(results)
    } else {
        staging_path(results)
    }
}

/// What a journal must agree with to be resumed: the job file, the task, and the input as it is now (each kind
/// of input says what that is: [`crate::input::Source::fingerprint`]).
fn fingerprint(spec: &JobSpec, source: &dyn Source) -> Result<Fingerprint, Error> {
    use sha2::{Digest, Sha256};
    let hex = |digest: &[u8]| digest.iter().map(|b| format!("{b:02x}")).collect::<String>();
    Ok(Fingerprint {
        job_sha256: hex(&Sha256::digest(spec.source_text().as_bytes())),
        task: task_description(spec),
        args: task_args_json(spec),
        input: source.fingerprint()?,
        // A stream's is 0: it is never resumed (see `run`).
        items: source.known_len().unwrap_or(0),
        shard: None,
    })
}

pub async fn check(job: &Path) -> Result<i32, Error> {
    let spec = load(job, None)?;
    crate::isolation::resolve(&spec)?;
    let source = input::list(&spec).await?;
    println!(
        "{}: ok — {} items of {}, task `{}`, {} workers, results {}",
        spec.path.display(),
        source
            .known_len()
            .map_or("a stream of".to_string(), |len| len.to_string()),
        crate::input::task_input(&spec.input).describe(),
        task_description(&spec),
        match spec.workers.count {
            WorkerCount::Fixed(n) => n,
            WorkerCount::Auto => cpus::available().count,
        },
        spec.output
            .results
            .as_ref()
            .map_or("none".to_string(), |p| p.display().to_string()),
    );
    Ok(exit::OK)
}

/// Runs item `item` of the job in this process, in the foreground: a crash happens right here, where a
/// debugger can catch it (`gdb --args supervisor replay job.toml --item 17`).
pub fn replay(spec: &JobSpec, source: &mut dyn Source, item: u64) -> Result<i32, Error> {
    // A stream is pulled up to the item (a listed source answers from its length).
    let mut pulled = 0;
    while pulled <= item {
        match source.pull(pulled, item + 1 - pulled)? {
            input::Pulled::Ready(n) => pulled += n,
            input::Pulled::NotYet => std::thread::sleep(std::time::Duration::from_millis(10)),
            input::Pulled::Ended => break,
        }
    }
    if item >= pulled {
        return Err(Error::ItemOutOfRange { item, items: pulled });
    }
    let source: &dyn Source = source;
    if let Some(UserTask::WorkerBin { path }) = &spec.task.user {
        return Err(Error::ReplayWorkerBin { path: path.clone() });
    }
    // A `urls` item is fetched first, into an arena of its own; a failed fetch is the item's record.
    let mut arena = None;
    let mut slot = None;
    if let (Some(urls), InputSpec::Urls { fetch, .. }) = (source.urls(), &spec.input) {
        let made = crate::fetch::Arena::new(fetch.max_in_flight_bytes).map_err(|error| Error::Internal {
            message: format!("cannot create the shared arena for the fetched body: {error}"),
        })?;
        let url = urls[item as usize].clone();
        let event = crate::block_on_value(crate::fetch::fetch_one(item, &url, fetch, Arc::clone(&made)))?
            .map_err(|message| Error::Internal { message })?;
        match event {
            crate::fetch::FetchEvent::Fetched { slot: fetched, .. } => slot = Some(fetched),
            crate::fetch::FetchEvent::Failed { failure, elapsed, .. } => {
                let elapsed_us = elapsed.as_micros() as u64;
                return Ok(print_replayed(
                    source,
                    item,
                    Status::Failed,
                    None,
                    Some(failure),
                    elapsed_us,
                ));
            }
        }
        arena = Some(made);
    }
    let batch = shared::item::Batch {
        id: 0,
        first: item,
        items: source.items(item, 1, &|_| slot.map(|s| (s.offset, s.len))),
    };
    let outcome = child::worker::run_one(
        &task_name(spec),
        &task_args_json(spec),
        source.plan(arena.as_ref().map(|a| a.proc_path()).as_deref()),
        &batch,
        Box::new(builtins::build),
    )
    .map_err(|reason| Error::WorkersCannotStart { reason })?;
    let (status, value, error) = match outcome.result {
        Ok(value) => (Status::Ok, Some(value), None),
        Err(error) => {
            let mut failure = crate::failure::task_failure(error);
            if failure.kind == FailureKind::Panic {
                // The panic hook of this foreground run printed the message and location above.
                failure.message = format!("{} (see the panic message above)", failure.message);
            }
            (Status::Failed, None, Some(failure))
        }
    };
    Ok(print_replayed(source, item, status, value, error, outcome.elapsed_us))
}

/// Prints the record of a replayed item and returns the exit code it means.
fn print_replayed(
    source: &dyn Source,
    item: u64,
    status: Status,
    value: Option<shared::item::Value>,
    error: Option<Failure>,
    elapsed_us: u64,
) -> i32 {
    let code = if status == Status::Ok {
        exit::OK
    } else {
        exit::ITEMS_FAILED
    };
    let record = Record {
        item,
        retrying: false,
        status,
        value,
        error,
        attempts: 1,
        attempt_errors: Vec::new(),
        pid: std::process::id(),
        elapsed_ms: elapsed_us as f64 / 1000.0,
        input: source.describe(item),
    };
    let line = serde_json::to_string(&record).unwrap_or_default();
    println!("{line}");
    code
}

pub fn tasks() -> i32 {
    let mut out = String::new();
    for info in builtins::all() {
        let inputs: Vec<&str> = info.inputs.iter().map(|kind| kind.describe()).collect();
        out.push_str(&format!(
            "{}\n    {}\n    input: {}\n",
            info.name,
            info.summary,
            inputs.join(", ")
        ));
        if info.args.is_empty() {
            out.push_str("    args: none\n");
        }
        for arg in info.args {
            out.push_str(&format!(
                "    args.{} ({}, default {}): {}\n",
                arg.name, arg.kind, arg.default, arg.help
            ));
        }
    }
    print!("{out}");
    exit::OK
}
