//! The commands: from parsed arguments to an exit code.

use std::io::Write;
use std::path::Path;
use std::sync::Arc;

use shared::exit;
use shared::job::{BatchSize, Executor, InputSpec, JobSpec, StartMethod, WorkerCount};
use shared::protocol::{TaskErrorKind, WorkerLimits};

use crate::cli::RunArgs;
use crate::dispatch::{self, DispatchConfig, StopReason};
use crate::error::Error;
use crate::forkserver::ForkServer;
use crate::journal::{self, Done, Fingerprint, Journal, JournalWriter, journal_path, staging_path};
use crate::plan::{self, Items};
use crate::pool::Starter;
use crate::report::{Progress, Summary};
use crate::results::{Failure, FailureKind, Record, Reducer, Status};

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
        if args.executor.is_some() || args.start.is_some() {
            spec.workers.executor = args.executor.map_or(spec.workers.executor, Into::into);
            if let Some(key) = spec.workers.process_only_conflict(&spec.task) {
                return Err(Error::ExecutorConflict {
                    key,
                    executor: spec.workers.executor.name(),
                });
            }
        }
        if let Some(results) = &args.results {
            spec.output.results = Some(std::path::absolute(results).map_err(|source| Error::Results {
                path: results.clone(),
                source,
            })?);
        }
    }
    let info = plan::check_task(&spec)?;
    plan::resolve_path_args(&mut spec, info);
    Ok(spec)
}

/// Prepares how workers will be started. For `forkserver` this forks the fork server, so it must run while
/// the process is still single-threaded: before the async runtime exists.
pub fn starter(spec: &JobSpec) -> Result<Starter, Error> {
    if spec.workers.executor != Executor::Process {
        return Ok(Starter::Thread);
    }
    match spec.workers.start {
        StartMethod::Spawn => Ok(Starter::Spawn),
        StartMethod::Forkserver => {
            // SAFETY: called from `main` before the runtime or any other thread is started.
            let server = unsafe { ForkServer::start() }.map_err(|error| Error::WorkersCannotStart {
                reason: format!("cannot start the fork server: {error}"),
            })?;
            Ok(Starter::Fork(Arc::new(server)))
        }
    }
}

pub async fn run(spec: JobSpec, args: RunArgs, starter: Starter) -> Result<i32, Error> {
    let items = Arc::new(Items::list(&spec).await?);
    let resume = args.resume || args.retry_failed;
    let (writer, prior) = match &spec.output.results {
        None if resume => return Err(Error::ResumeWithoutResults),
        None => (None, Done::default()),
        Some(_) if !spec.output.journal && resume => return Err(Error::ResumeWithoutJournal),
        Some(results) => {
            let path = records_path(&spec, results);
            // Stats every file of a glob: off the runtime, so that a slow filesystem stalls nothing else.
            let fingerprint = {
                let (spec, items) = (spec.clone(), Arc::clone(&items));
                tokio::task::spawn_blocking(move || fingerprint(&spec, &items))
                    .await
                    .map_err(|join| Error::Internal {
                        message: format!("fingerprinting the input failed: {join}"),
                    })??
            };
            let recovered = if resume && path.exists() {
                let journal = Journal::recover(&path, &fingerprint)?;
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
                .as_ref()
                .map(|j| j.done(items.len(), args.retry_failed))
                .unwrap_or_default();
            let writer = JournalWriter::create(&path, &fingerprint, recovered.as_ref(), spec.output.journal)?;
            (Some(writer), prior)
        }
    };
    let serial = spec.workers.executor == Executor::Serial;
    let config = DispatchConfig {
        // Serial: one thread, and the whole job as one batch.
        workers: if serial { 1 } else { spec.workers.count.resolve() },
        progress_slots: spec.workers.executor == Executor::Process,
        task: spec.task.builtin.clone(),
        args_json: spec.task.args.to_string(),
        batch: match spec.workers.batch {
            _ if serial => Some(items.len().max(1)),
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
        max_tasks: spec.workers.max_tasks,
        supervise: spec.supervise.clone(),
        fetch: match &spec.input {
            InputSpec::Urls { fetch, .. } => Some(fetch.clone()),
            _ => None,
        },
    };
    let progress = Progress::new(items.len(), prior.ok + prior.failed, args.quiet);
    let reducer = Reducer::new(spec.output.reduce);
    let outcome = dispatch::run(
        Arc::clone(&items),
        starter.clone(),
        config,
        reducer,
        writer,
        progress,
        prior,
    )
    .await;
    starter.shut_down();
    let outcome = outcome?;
    let mut journal_kept = None;
    if let Some(results) = &spec.output.results {
        let records = records_path(&spec, results);
        let (from, to, order, count) = (records.clone(), results.clone(), spec.output.order, items.len());
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

/// Where records go while the job runs: the journal, or a private staging file with `journal = false`.
fn records_path(spec: &JobSpec, results: &Path) -> std::path::PathBuf {
    if spec.output.journal {
        journal_path(results)
    } else {
        staging_path(results)
    }
}

/// What a journal must agree with to be resumed: the job file, the task, and the input as it is now.
fn fingerprint(spec: &JobSpec, items: &Items) -> Result<Fingerprint, Error> {
    use sha2::{Digest, Sha256};
    let hex = |digest: &[u8]| digest.iter().map(|b| format!("{b:02x}")).collect::<String>();
    let stat = |path: &Path| -> Result<(u64, u128), Error> {
        let meta = std::fs::metadata(path).map_err(|source| Error::InputUnreadable {
            path: path.to_path_buf(),
            source,
        })?;
        let modified = meta
            .modified()
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok());
        Ok((meta.len(), modified.map_or(0, |d| d.as_nanos())))
    };
    let input = match &spec.input {
        InputSpec::Range { start, end, chunk } => format!("range {start}..{end} by {chunk}"),
        InputSpec::File { path, .. } => {
            let (size, modified) = stat(path)?;
            format!("file {} of {size} bytes modified at {modified} ns", path.display())
        }
        InputSpec::Glob { pattern } => {
            let mut listing = Sha256::new();
            for path in items.files() {
                let (size, modified) = stat(path)?;
                listing.update(format!("{}\0{size}\0{modified}\n", path.display()).as_bytes());
            }
            let digest = hex(&listing.finalize());
            format!(
                "glob {pattern} matching {} files (sizes and times digest {})",
                items.len(),
                &digest[..16]
            )
        }
        // The URLs themselves, in order: what the item numbers mean. What a server answers can change between
        // runs; that is the nature of a URL, and is not checked.
        InputSpec::Urls { path, .. } => {
            let mut listing = Sha256::new();
            if let Items::Urls { urls, .. } = items {
                for url in urls.iter() {
                    listing.update(url.as_bytes());
                    listing.update(b"\n");
                }
            }
            let digest = hex(&listing.finalize());
            format!(
                "urls {} listing {} URLs (digest {})",
                path.display(),
                items.len(),
                &digest[..16]
            )
        }
    };
    Ok(Fingerprint {
        job_sha256: hex(&Sha256::digest(spec.source_text().as_bytes())),
        task: spec.task.builtin.clone(),
        args: spec.task.args.to_string(),
        input,
        items: items.len(),
    })
}

pub async fn check(job: &Path) -> Result<i32, Error> {
    let spec = load(job, None)?;
    let items = Items::list(&spec).await?;
    println!(
        "{}: ok — {} items of {}, task `{}`, {} workers, results {}",
        spec.path.display(),
        items.len(),
        plan::input_kind(&spec.input).describe(),
        spec.task.builtin,
        spec.workers.count.resolve(),
        spec.output
            .results
            .as_ref()
            .map_or("none".to_string(), |p| p.display().to_string()),
    );
    Ok(exit::OK)
}

/// Runs item `item` of the job in this process, in the foreground: a crash happens right here, where a
/// debugger can catch it (`gdb --args supervisor replay job.toml --item 17`).
pub fn replay(spec: &JobSpec, items: &Items, item: u64) -> Result<i32, Error> {
    if item >= items.len() {
        return Err(Error::ItemOutOfRange {
            item,
            items: items.len(),
        });
    }
    // A `urls` item is fetched first, into an arena of its own; a failed fetch is the item's record.
    let mut arena = None;
    let mut slot = None;
    if let (Items::Urls { urls, .. }, InputSpec::Urls { fetch, .. }) = (items, &spec.input) {
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
                    items,
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
    let batch = items.batch(0, item, 1, |_| slot.map(|s| (s.offset, s.len)));
    let outcome = child::worker::run_one(
        &spec.task.builtin,
        &spec.task.args.to_string(),
        items.input_plan(arena.as_ref().map(|a| a.proc_path()).as_deref()),
        &batch,
    )
    .map_err(|reason| Error::WorkersCannotStart { reason })?;
    let (status, value, error) = match outcome.result {
        Ok(value) => (Status::Ok, Some(value), None),
        Err(error) => {
            let (kind, message) = match error.kind {
                TaskErrorKind::Error => (FailureKind::Error, error.message),
                // The panic hook of this foreground run printed the message and location above.
                TaskErrorKind::Panic => (
                    FailureKind::Panic,
                    format!("{} (see the panic message above)", error.message),
                ),
            };
            (
                Status::Failed,
                None,
                Some(Failure {
                    kind,
                    message,
                    signal: None,
                    code: None,
                    stderr: None,
                }),
            )
        }
    };
    Ok(print_replayed(items, item, status, value, error, outcome.elapsed_us))
}

/// Prints the record of a replayed item and returns the exit code it means.
fn print_replayed(
    items: &Items,
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
        status,
        value,
        error,
        attempts: 1,
        attempt_errors: Vec::new(),
        pid: std::process::id(),
        elapsed_ms: elapsed_us as f64 / 1000.0,
        input: items.describe(item),
    };
    let line = serde_json::to_string(&record).unwrap_or_default();
    println!("{line}");
    code
}

pub fn tasks() -> i32 {
    let mut out = String::new();
    for info in child::task::builtins() {
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
