//! The state machine driven without processes: a fake launcher records launches and kills, the tests play the
//! workers (their messages, their progress slots, their deaths) and check the records against what they compute
//! themselves.

use std::collections::{BTreeMap, HashMap};
use std::sync::mpsc as std_mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use shared::item::{Batch, BatchItems, Value};
use shared::job::{Halt, HaltThreshold, Reduce, SuperviseSpec};
use shared::progress::ProgressWriter;
use shared::protocol::{FromWorker, Isolation, Outcome, TaskError, TaskErrorKind, ToWorker, WorkerLimits};
use shared::region::SharedPage;

use super::source::Source;
use super::state::{Dispatcher, MAX_START_FAILURES, stall_deadline};
use super::{DispatchConfig, Launch, Reporter, RunOutcome, StopReason};
use crate::error::Error;
use crate::journal::Done;
use crate::pool::{Event, WorkerId, WorkerSender};
use crate::results::{FailureKind, Record, Reducer, Status};
use crate::signal::StopSignal;
use sys::process::{ExitInfo, ExitStatus, Pidfd};

/// What the fake launcher was asked to do.
#[derive(Debug, Default)]
struct Asked {
    launched: Vec<WorkerId>,
    killed: Vec<WorkerId>,
}

struct FakeLauncher(Arc<Mutex<Asked>>);

impl Launch for FakeLauncher {
    fn launch(&mut self, id: WorkerId) {
        self.0.lock().expect("lock").launched.push(id);
    }

    fn kill(&mut self, id: WorkerId, _pidfd: Option<&Pidfd>) {
        self.0.lock().expect("lock").killed.push(id);
    }
}

struct FakeReporter(Arc<Mutex<Vec<String>>>);

impl Reporter for FakeReporter {
    fn total(&mut self, total: u64) {
        self.0.lock().expect("lock").push(format!("total {total}"));
    }
    fn progress(&mut self, _done: u64, _failed: u64) {}
    fn fetched(&mut self, _fetched: u64) {}
    fn message(&mut self, text: &str) {
        self.0.lock().expect("lock").push(text.to_string());
    }
    fn finish(&mut self, _done: u64, _failed: u64) {}
}

fn config(workers: usize, batch: u64, items: u64) -> DispatchConfig {
    DispatchConfig {
        workers,
        progress_slots: true,
        task: "noop".into(),
        args_json: "{}".into(),
        batch: Some(batch),
        timeout: None,
        retries: 0,
        retry_backoff: Duration::ZERO,
        limits: WorkerLimits::default(),
        isolation: Isolation::default(),
        max_tasks: None,
        supervise: SuperviseSpec {
            max_restarts: 1000,
            within: Duration::from_secs(60),
            halt: Halt::NEVER,
            grace: Duration::from_secs(5),
            start_timeout: Duration::from_secs(3600),
        },
        span: 0..items,
        fetch: None,
    }
}

/// A worker as the test plays it.
struct Played {
    inbox: std_mpsc::Receiver<ToWorker>,
    slot: Option<ProgressWriter>,
    /// Batches received and not fully answered, in order: (batch id, next item, end).
    batches: Vec<(u64, u64, u64)>,
    attempts: Vec<(u64, u32)>,
    shutdown: bool,
}

struct Harness {
    dispatcher: Dispatcher,
    asked: Arc<Mutex<Asked>>,
    messages: Arc<Mutex<Vec<String>>>,
    played: BTreeMap<WorkerId, Played>,
    /// Every worker ever brought up (dead ones too).
    seen: std::collections::BTreeSet<WorkerId>,
    records: Vec<Record>,
}

fn pid(id: WorkerId) -> u32 {
    1000 + id as u32
}

fn ok(item: u64) -> Outcome {
    Outcome {
        elapsed_us: 10,
        result: Ok(Value::UInt(u128::from(item) * 3)),
    }
}

fn error(message: &str) -> Outcome {
    Outcome {
        elapsed_us: 10,
        result: Err(TaskError {
            kind: TaskErrorKind::Error,
            message: message.into(),
        }),
    }
}

impl Harness {
    fn new(config: DispatchConfig, items: u64) -> Harness {
        Harness::resumed(config, items, Done::default())
    }

    fn resumed(config: DispatchConfig, items: u64, prior: Done) -> Harness {
        Harness::with_source(config, Box::new(crate::input::range::Range::new(0, items, 1)), prior)
    }

    fn with_source(config: DispatchConfig, input: Box<dyn crate::input::Source>, prior: Done) -> Harness {
        Harness::built(config, input, prior, true)
    }

    /// `keep_records` false: the dispatcher makes no records (a run with no results file).
    fn built(config: DispatchConfig, input: Box<dyn crate::input::Source>, prior: Done, keep_records: bool) -> Harness {
        let asked = Arc::new(Mutex::new(Asked::default()));
        let messages = Arc::new(Mutex::new(Vec::new()));
        let source = Source::new(input);
        let mut dispatcher = Dispatcher::new(
            source,
            config,
            Reducer::new(Reduce::Sum),
            prior,
            Box::new(FakeLauncher(Arc::clone(&asked))),
            Box::new(FakeReporter(Arc::clone(&messages))),
            keep_records,
        )
        .map_err(|(error, _)| error)
        .expect("dispatcher");
        dispatcher.start();
        Harness {
            dispatcher,
            asked,
            messages,
            played: BTreeMap::new(),
            seen: std::collections::BTreeSet::new(),
            records: Vec::new(),
        }
    }

    fn launched(&self) -> Vec<WorkerId> {
        self.asked.lock().expect("lock").launched.clone()
    }

    fn killed(&self) -> Vec<WorkerId> {
        self.asked.lock().expect("lock").killed.clone()
    }

    fn messages(&self) -> Vec<String> {
        self.messages.lock().expect("lock").clone()
    }

    /// Workers launched and not brought up yet.
    fn unstarted(&self) -> Vec<WorkerId> {
        self.launched()
            .into_iter()
            .filter(|id| !self.seen.contains(id))
            .collect()
    }

    fn handle(&mut self, event: Event) {
        self.dispatcher.handle(event);
        self.records.extend(self.dispatcher.take_records());
    }

    /// Spawns `id`, connects it, maps its slot as a worker does, and says Ready.
    fn bring_up(&mut self, id: WorkerId) {
        self.seen.insert(id);
        self.handle(Event::Spawned {
            id,
            pid: pid(id),
            pidfd: None,
        });
        let (sender, inbox) = std_mpsc::channel();
        self.handle(Event::Connected {
            id,
            to_worker: WorkerSender::new(sender),
        });
        let first = inbox.try_recv();
        let Ok(ToWorker::Init { progress, .. }) = first else {
            panic!("worker {id} was not sent Init first: {first:?}");
        };
        let slot = progress.map(|path| ProgressWriter::new(SharedPage::open(&path).expect("map the slot")));
        self.played.insert(
            id,
            Played {
                inbox,
                slot,
                batches: Vec::new(),
                attempts: Vec::new(),
                shutdown: false,
            },
        );
        self.handle(Event::Message {
            id,
            message: FromWorker::Ready,
        });
        self.read_inbox(id);
    }

    /// Brings up every launched worker not up yet.
    fn bring_up_all(&mut self) {
        for id in self.unstarted() {
            self.bring_up(id);
        }
    }

    fn read_inbox(&mut self, id: WorkerId) {
        let Some(played) = self.played.get_mut(&id) else { return };
        while let Ok(message) = played.inbox.try_recv() {
            match message {
                ToWorker::Batch(Batch {
                    id: batch,
                    first,
                    items,
                }) => {
                    let BatchItems::Range { count } = items else {
                        panic!("a range input gives range batches")
                    };
                    played.batches.push((batch, first, first + count));
                }
                ToWorker::Attempt { item, attempt } => played.attempts.push((item, attempt)),
                ToWorker::Shutdown => played.shutdown = true,
                ToWorker::Identity { .. } => {}
                ToWorker::Init { .. } => panic!("Init sent twice to worker {id}"),
            }
        }
    }

    /// Batches `id` holds: (batch id, next item, end).
    fn held(&mut self, id: WorkerId) -> Vec<(u64, u64, u64)> {
        self.read_inbox(id);
        self.played.get(&id).map(|p| p.batches.clone()).unwrap_or_default()
    }

    fn slot(&self, id: WorkerId) -> &ProgressWriter {
        self.played[&id].slot.as_ref().expect("a slot")
    }

    /// `id` answers the next `outcomes.len()` items of its first batch.
    fn answer(&mut self, id: WorkerId, outcomes: Vec<Outcome>) {
        self.read_inbox(id);
        let played = self.played.get_mut(&id).expect("played");
        let (batch, next, end) = played.batches[0];
        let count = outcomes.len() as u64;
        if next + count == end {
            played.batches.remove(0);
        } else {
            played.batches[0].1 += count;
        }
        self.handle(Event::Message {
            id,
            message: FromWorker::Results {
                batch,
                first: next,
                outcomes,
            },
        });
        self.read_inbox(id);
    }

    /// `id` answers its whole first batch with `outcome(item)`.
    fn answer_batch(&mut self, id: WorkerId, outcome: impl Fn(u64) -> Outcome) {
        let (_, next, end) = self.held(id)[0];
        self.answer(id, (next..end).map(outcome).collect());
    }

    /// `id` dies with `status`.
    fn die(&mut self, id: WorkerId, status: ExitStatus, stderr: &str) {
        self.handle(Event::ChannelClosed { id, error: None });
        self.handle(Event::Exited {
            id,
            info: ExitInfo {
                status,
                cpu: Duration::ZERO,
                max_rss: 0,
            },
            stderr_tail: stderr.into(),
        });
        self.played.remove(&id);
    }

    /// Plays every worker, new ones included, answering with `outcome` until nothing is held; workers told to
    /// shut down exit 0.
    fn serve(&mut self, outcome: impl Fn(u64) -> Outcome) {
        for _ in 0..100_000 {
            self.bring_up_all();
            let ids: Vec<WorkerId> = self.played.keys().copied().collect();
            let mut progressed = false;
            for id in ids {
                if !self.held(id).is_empty() {
                    self.answer_batch(id, &outcome);
                    progressed = true;
                } else if self.played[&id].shutdown {
                    self.die(id, ExitStatus::Code(0), "");
                    progressed = true;
                }
            }
            if !progressed && self.unstarted().is_empty() {
                return;
            }
        }
        panic!("the job never settled");
    }

    fn outcome(self) -> Result<RunOutcome, Error> {
        self.dispatcher.into_outcome(0, 0).0
    }

    /// The records by item, each item at most once.
    fn by_item(&self) -> BTreeMap<u64, &Record> {
        let mut by_item = BTreeMap::new();
        // A `retrying` line journals a used attempt; only final records count here.
        for record in self.records.iter().filter(|record| !record.retrying) {
            assert!(
                by_item.insert(record.item, record).is_none(),
                "item {} recorded twice",
                record.item
            );
        }
        by_item
    }
}

fn sigsegv() -> ExitStatus {
    ExitStatus::Signal(libc::SIGSEGV)
}

/// Every item 0..n ok with value 3·item, exactly once.
fn assert_all_ok(harness: &Harness, n: u64) {
    let by_item = harness.by_item();
    assert_eq!(by_item.len() as u64, n);
    for (item, record) in by_item {
        assert_eq!(record.status, Status::Ok, "item {item}");
        assert_eq!(record.value, Some(Value::UInt(u128::from(item) * 3)));
        assert_eq!(record.attempts, 1);
    }
}

#[test]
fn every_item_gets_one_ok_record_and_the_sum_is_the_closed_form() {
    let n = 1000;
    let mut harness = Harness::new(config(3, 7, n), n);
    assert_eq!(harness.launched(), vec![0, 1, 2]);
    harness.serve(ok);
    assert_all_ok(&harness, n);
    assert!(harness.dispatcher.is_over(), "every worker was told to exit and did");
    let outcome = harness.outcome().expect("outcome");
    assert_eq!((outcome.ok, outcome.failed, outcome.items), (n, 0, n));
    // 3·(0 + 1 + … + n-1)
    assert_eq!(
        outcome.reducer.value(),
        Some(Value::UInt(u128::from(3 * n * (n - 1) / 2)))
    );
    assert_eq!(outcome.batches, n.div_ceil(7));
}

#[test]
fn an_empty_job_starts_no_worker_and_is_complete() {
    let harness = Harness::new(config(4, 10, 0), 0);
    assert!(harness.launched().is_empty());
    assert!(harness.dispatcher.is_complete());
    assert!(harness.dispatcher.is_over());
}

#[test]
fn no_more_workers_than_items() {
    let harness = Harness::new(config(8, 10, 2), 2);
    assert_eq!(harness.launched().len(), 2);
}

#[test]
fn only_this_runs_span_is_run() {
    let mut cfg = config(2, 4, 100);
    cfg.span = 30..50;
    let mut harness = Harness::new(cfg, 100);
    harness.serve(ok);
    let items: Vec<u64> = harness.by_item().keys().copied().collect();
    assert_eq!(items, (30..50).collect::<Vec<u64>>());
}

#[test]
fn items_recorded_by_an_earlier_run_are_never_handed_out() {
    let n = 50;
    let done: crate::journal::ItemSet = (0..n).filter(|i| i % 3 == 0).collect();
    let earlier = done.len();
    let prior = Done {
        done,
        ok: earlier,
        ..Done::default()
    };
    let mut harness = Harness::resumed(config(2, 5, n), n, prior);
    harness.serve(ok);
    let items: Vec<u64> = harness.by_item().keys().copied().collect();
    assert_eq!(items, (0..n).filter(|i| i % 3 != 0).collect::<Vec<u64>>());
    let outcome = harness.outcome().expect("outcome");
    assert_eq!((outcome.resumed, outcome.ok), (earlier, n));
}

#[test]
fn a_crash_named_by_the_slot_fails_that_item_only_and_requeues_the_rest_uncharged() {
    let n = 10;
    let mut harness = Harness::new(config(1, 10, n), n);
    harness.bring_up(0);
    let (batch, _, _) = harness.held(0)[0];
    harness.answer(0, (0..3).map(ok).collect());
    harness.slot(0).begin(batch, 5);
    harness.die(0, sigsegv(), "boom\n");
    let failed = harness.by_item()[&5].clone();
    assert_eq!(failed.status, Status::Failed);
    let error = failed.error.expect("error");
    assert_eq!(
        (error.kind, error.signal.as_deref()),
        (FailureKind::Signal, Some("SIGSEGV"))
    );
    assert_eq!(error.stderr.as_deref(), Some("boom"));
    assert_eq!(failed.pid, pid(0));
    assert_eq!(harness.launched(), vec![0, 1], "a replacement");
    harness.serve(ok);
    let by_item = harness.by_item();
    assert_eq!(by_item.len() as u64, n);
    for item in (0..n).filter(|&i| i != 5) {
        assert_eq!(
            (by_item[&item].status, by_item[&item].attempts),
            (Status::Ok, 1),
            "item {item}"
        );
    }
}

#[test]
fn a_death_between_items_makes_the_unanswered_items_suspects_run_alone() {
    let n = 8;
    let mut harness = Harness::new(config(1, 8, n), n);
    harness.bring_up(0);
    let (batch, _, _) = harness.held(0)[0];
    harness.answer(0, (0..2).map(ok).collect());
    harness.slot(0).end(batch, 1);
    harness.die(0, sigsegv(), "");
    assert_eq!(harness.records.len(), 2, "nobody is charged");
    harness.bring_up(1);
    // Each suspect runs alone, one at a time.
    for item in 2..n {
        assert_eq!(
            harness.held(1).iter().map(|b| (b.1, b.2)).collect::<Vec<_>>(),
            vec![(item, item + 1)]
        );
        harness.answer_batch(1, ok);
    }
    assert_all_ok(&harness, n);
}

#[test]
fn a_suspect_that_dies_alone_is_the_one_recorded() {
    let n = 4;
    let mut harness = Harness::new(config(1, 4, n), n);
    harness.bring_up(0);
    harness.die(0, sigsegv(), "");
    harness.bring_up(1);
    harness.answer_batch(1, ok); // item 0 alone
    assert_eq!(harness.held(1)[0].1, 1);
    // Item 1 kills its worker with no slot stamp: alone, it is to blame.
    harness.die(1, ExitStatus::Code(7), "");
    let record = harness.by_item()[&1].clone();
    let error = record.error.expect("error");
    assert_eq!((error.kind, error.code), (FailureKind::Exit, Some(7)));
    harness.serve(ok);
    let by_item = harness.by_item();
    assert_eq!(by_item.len(), 4);
    assert_eq!(by_item.values().filter(|r| r.status == Status::Failed).count(), 1);
}

#[test]
fn batches_queued_behind_the_crashing_one_go_back_uncharged() {
    let n = 40;
    let mut harness = Harness::new(config(1, 5, n), n);
    harness.bring_up(0);
    let held = harness.held(0);
    assert!(held.len() >= 2, "a worker holds more than one batch: {held:?}");
    harness.slot(0).begin(held[0].0, 2);
    harness.die(0, sigsegv(), "");
    harness.serve(ok);
    let by_item = harness.by_item();
    assert_eq!(by_item.len() as u64, n);
    let failed: Vec<u64> = by_item
        .values()
        .filter(|r| r.status == Status::Failed)
        .map(|r| r.item)
        .collect();
    assert_eq!(failed, vec![2]);
    assert!(by_item.values().all(|r| r.attempts == 1));
}

#[test]
fn a_protocol_violation_kills_the_worker_and_its_slot_is_not_trusted() {
    let n = 6;
    let mut harness = Harness::new(config(1, 6, n), n);
    harness.bring_up(0);
    let (batch, _, _) = harness.held(0)[0];
    harness.slot(0).begin(batch, 3);
    // Results for a batch it was not running.
    harness.handle(Event::Message {
        id: 0,
        message: FromWorker::Results {
            batch: batch + 100,
            first: 0,
            outcomes: vec![ok(0)],
        },
    });
    assert_eq!(harness.killed(), vec![0]);
    assert!(
        harness.messages().iter().any(|m| m.contains("protocol violation")),
        "{:?}",
        harness.messages()
    );
    harness.die(0, ExitStatus::Signal(libc::SIGKILL), "");
    assert!(harness.records.is_empty(), "the slot's item 3 is not charged");
    harness.serve(ok);
    assert_all_ok(&harness, n);
}

#[test]
fn results_out_of_order_or_repeated_are_protocol_violations() {
    let mut harness = Harness::new(config(1, 6, 6), 6);
    harness.bring_up(0);
    let (batch, _, _) = harness.held(0)[0];
    // Skips item 0.
    harness.handle(Event::Message {
        id: 0,
        message: FromWorker::Results {
            batch,
            first: 1,
            outcomes: vec![ok(1)],
        },
    });
    assert_eq!(harness.killed(), vec![0]);
    let mut harness = Harness::new(config(1, 6, 6), 6);
    harness.bring_up(0);
    harness.handle(Event::Message {
        id: 0,
        message: FromWorker::Hello {
            version: shared::protocol::PROTOCOL_VERSION,
            pid: 1,
        },
    });
    assert_eq!(harness.killed(), vec![0], "a second Hello");
}

#[test]
fn a_failed_item_is_retried_alone_with_its_attempt_number_until_it_succeeds() {
    let n = 5;
    let mut cfg = config(1, 5, n);
    cfg.retries = 3;
    let mut harness = Harness::new(cfg, n);
    harness.bring_up(0);
    harness.answer_batch(0, |item| if item == 2 { error("flaky") } else { ok(item) });
    // Attempt 2 of item 2, alone.
    assert_eq!(
        harness.held(0).iter().map(|b| (b.1, b.2)).collect::<Vec<_>>(),
        vec![(2, 3)]
    );
    assert_eq!(harness.played[&0].attempts, vec![(2, 2)]);
    harness.answer_batch(0, ok);
    let record = harness.by_item()[&2].clone();
    assert_eq!(
        (record.status, record.attempts, record.attempt_errors.len()),
        (Status::Ok, 2, 1)
    );
    assert_eq!(record.attempt_errors[0].message, "flaky");
    assert_eq!(harness.outcome().expect("outcome").retries, 1);
}

#[test]
fn an_item_that_always_fails_is_recorded_after_its_last_attempt_with_every_cause() {
    let retries = 2;
    let mut cfg = config(1, 3, 3);
    cfg.retries = retries;
    let mut harness = Harness::new(cfg, 3);
    harness.serve(|item| {
        if item == 1 {
            error(&format!("bad {item}"))
        } else {
            ok(item)
        }
    });
    let record = harness.by_item()[&1].clone();
    assert_eq!(record.status, Status::Failed);
    assert_eq!(record.attempts, retries + 1);
    assert_eq!(record.attempt_errors.len() as u32, retries + 1);
    assert_eq!(harness.played.len(), 0);
    let outcome = harness.outcome().expect("outcome");
    assert_eq!(
        (outcome.ok, outcome.failed, outcome.retries),
        (2, 1, u64::from(retries))
    );
}

#[test]
fn a_crash_is_retried_like_an_error_and_a_crash_on_the_retry_too() {
    let mut cfg = config(1, 4, 4);
    cfg.retries = 1;
    let mut harness = Harness::new(cfg, 4);
    harness.bring_up(0);
    let (batch, _, _) = harness.held(0)[0];
    harness.slot(0).begin(batch, 1);
    harness.die(0, sigsegv(), "");
    assert!(
        harness.records.iter().all(|record| record.retrying),
        "a retry is due, nothing recorded yet but the used attempt"
    );
    harness.bring_up(1);
    // The retry runs first, alone.
    assert_eq!(harness.held(1)[0].1..harness.held(1)[0].2, 1..2);
    assert_eq!(harness.played[&1].attempts, vec![(1, 2)]);
    harness.die(1, ExitStatus::Signal(libc::SIGABRT), "");
    let record = harness.by_item()[&1].clone();
    assert_eq!((record.attempts, record.attempt_errors.len()), (2, 2));
    assert_eq!(record.error.and_then(|e| e.signal).as_deref(), Some("SIGABRT"));
    harness.serve(ok);
    assert_eq!(harness.by_item().len(), 4);
}

#[test]
fn a_retry_waits_for_its_backoff() {
    let mut cfg = config(1, 2, 2);
    cfg.retries = 1;
    cfg.retry_backoff = Duration::from_secs(3600);
    let mut harness = Harness::new(cfg, 2);
    let before = Instant::now();
    harness.bring_up(0);
    harness.answer_batch(0, |item| if item == 0 { error("x") } else { ok(item) });
    assert!(harness.held(0).is_empty(), "nothing is due for an hour");
    let due = harness.dispatcher.next_retry().expect("a retry waits");
    assert!(due >= before + Duration::from_secs(3600));
    harness.dispatcher.on_retry_due();
    assert!(harness.held(0).is_empty(), "waking early hands out nothing");
}

#[test]
fn the_backoff_doubles_from_retry_backoff() {
    let mut cfg = config(1, 1, 1);
    cfg.retry_backoff = Duration::from_millis(300);
    let harness = Harness::new(cfg, 1);
    for attempts in 1..6u32 {
        let expected = Duration::from_millis(300 * 2u64.pow(attempts - 1));
        assert_eq!(harness.dispatcher.backoff(attempts), expected);
    }
}

#[test]
fn halt_after_a_count_of_failures_stops_handing_out_work_and_lets_workers_finish() {
    let n = 100;
    let mut cfg = config(1, 5, n);
    cfg.supervise.halt = Halt {
        threshold: HaltThreshold::Count(3),
        now: false,
    };
    let mut harness = Harness::new(cfg, n);
    harness.serve(|item| if item % 2 == 1 { error("odd") } else { ok(item) });
    let failed = harness.records.iter().filter(|r| r.status == Status::Failed).count();
    assert!(failed >= 3, "{failed}");
    assert!((harness.records.len() as u64) < n, "the job stopped early");
    assert!(harness.killed().is_empty(), "a soon halt kills nobody");
    let outcome = harness.outcome().expect("outcome");
    assert!(
        matches!(outcome.stopped, Some(StopReason::Halt { failed: 3.. })),
        "{:?}",
        outcome.stopped
    );
}

#[test]
fn halt_by_percentage_counts_against_the_whole_job() {
    // 20 % of 10 items is 2 failures: one is not enough.
    let n = 10;
    let mut cfg = config(1, 1, n);
    cfg.supervise.halt = Halt {
        threshold: HaltThreshold::Percent(20.0),
        now: true,
    };
    let mut harness = Harness::new(cfg, n);
    harness.bring_up(0);
    harness.answer_batch(0, |_| error("x"));
    assert!(harness.killed().is_empty(), "1 of 10 is 10 %");
    harness.answer_batch(0, |_| error("x"));
    assert_eq!(harness.killed(), vec![0], "a now halt kills");
    harness.die(0, ExitStatus::Signal(libc::SIGKILL), "");
    let outcome = harness.outcome().expect("outcome");
    assert_eq!(outcome.stopped, Some(StopReason::Halt { failed: 2 }));
    assert_eq!(outcome.failed, 2);
}

#[test]
fn more_deaths_than_max_restarts_within_the_window_stop_the_job() {
    let n = 100;
    let mut cfg = config(1, 1, n);
    cfg.supervise.max_restarts = 2;
    let mut harness = Harness::new(cfg, n);
    for id in 0..3 {
        harness.bring_up(id);
        let (batch, first, _) = harness.held(id)[0];
        harness.slot(id).begin(batch, first);
        harness.die(id, sigsegv(), "");
    }
    let outcome_reason = {
        assert!(harness.unstarted().is_empty(), "no replacement after the third death");
        harness.outcome().expect("outcome").stopped
    };
    assert!(
        matches!(outcome_reason, Some(StopReason::RestartIntensity { deaths: 3, .. })),
        "{outcome_reason:?}"
    );
}

#[test]
fn deaths_asked_for_do_not_count_towards_restart_intensity() {
    let n = 12;
    let mut cfg = config(1, 1, n);
    cfg.supervise.max_restarts = 1;
    cfg.max_tasks = Some(2);
    let mut harness = Harness::new(cfg, n);
    harness.serve(ok);
    assert_all_ok(&harness, n);
    assert_eq!(harness.launched().len() as u64, n / 2, "one worker per two items");
    assert_eq!(harness.outcome().expect("outcome").stopped, None);
}

#[test]
fn max_tasks_recycles_a_worker_once_it_answered_its_items() {
    let mut cfg = config(1, 3, 10);
    cfg.max_tasks = Some(4);
    let mut harness = Harness::new(cfg, 10);
    harness.bring_up(0);
    let held: u64 = harness.held(0).iter().map(|(_, first, end)| end - first).sum();
    assert_eq!(held, 4, "at most max_tasks items are handed to one worker");
    while !harness.held(0).is_empty() {
        harness.answer_batch(0, ok);
    }
    assert!(harness.played[&0].shutdown, "told to exit");
    assert_eq!(harness.launched(), vec![0, 1]);
    harness.serve(ok);
    assert_all_ok(&harness, 10);
}

#[test]
fn start_failures_in_a_row_abandon_the_job() {
    let mut harness = Harness::new(config(1, 1, 10), 10);
    for round in 0..MAX_START_FAILURES {
        let id = *harness.unstarted().last().expect("a launch");
        harness.seen.insert(id);
        harness.handle(Event::SpawnFailed {
            id,
            error: format!("no exec {round}"),
        });
    }
    match harness.outcome() {
        Err(Error::WorkersCannotStart { reason }) => assert!(reason.contains("no exec 2"), "{reason}"),
        other => panic!("expected WorkersCannotStart, got {other:?}"),
    }
}

#[test]
fn workers_that_die_before_ready_are_start_failures_with_their_stderr() {
    let mut harness = Harness::new(config(1, 1, 10), 10);
    for _ in 0..MAX_START_FAILURES {
        let id = *harness.unstarted().last().expect("a launch");
        harness.seen.insert(id);
        harness.handle(Event::Spawned {
            id,
            pid: pid(id),
            pidfd: None,
        });
        harness.handle(Event::ChannelClosed { id, error: None });
        harness.handle(Event::Exited {
            id,
            info: ExitInfo {
                status: ExitStatus::Code(1),
                cpu: Duration::ZERO,
                max_rss: 0,
            },
            stderr_tail: "ImportError: no module\n".into(),
        });
    }
    match harness.outcome() {
        Err(Error::WorkersCannotStart { reason }) => {
            assert!(
                reason.contains("exited with code 1") && reason.contains("ImportError"),
                "{reason}"
            );
        }
        other => panic!("expected WorkersCannotStart, got {other:?}"),
    }
}

#[test]
fn a_ready_worker_resets_the_start_failure_count() {
    let mut harness = Harness::new(config(1, 1, 10), 10);
    for _ in 0..MAX_START_FAILURES - 1 {
        let id = *harness.unstarted().last().expect("a launch");
        harness.seen.insert(id);
        harness.handle(Event::SpawnFailed { id, error: "x".into() });
    }
    harness.serve(ok);
    assert_all_ok(&harness, 10);
}

#[test]
fn init_failed_abandons_the_job_with_the_workers_message() {
    let mut harness = Harness::new(config(1, 1, 3), 3);
    harness.handle(Event::Spawned {
        id: 0,
        pid: pid(0),
        pidfd: None,
    });
    let (sender, _inbox) = std_mpsc::channel();
    harness.handle(Event::Connected {
        id: 0,
        to_worker: WorkerSender::new(sender),
    });
    harness.handle(Event::Message {
        id: 0,
        message: FromWorker::InitFailed {
            message: "no such task".into(),
        },
    });
    assert_eq!(harness.killed(), vec![0]);
    assert!(matches!(harness.outcome(), Err(Error::WorkersCannotStart { reason }) if reason == "no such task"));
}

#[test]
fn a_worker_that_never_says_hello_is_killed_at_start_timeout() {
    let mut cfg = config(1, 1, 3);
    cfg.supervise.start_timeout = Duration::from_millis(1);
    let mut harness = Harness::new(cfg, 3);
    harness.handle(Event::Spawned {
        id: 0,
        pid: pid(0),
        pidfd: None,
    });
    std::thread::sleep(Duration::from_millis(20));
    harness.dispatcher.on_tick();
    assert_eq!(harness.killed(), vec![0]);
    assert!(
        harness.messages().iter().any(|m| m.contains("never said hello")),
        "{:?}",
        harness.messages()
    );
}

#[test]
fn an_item_past_the_timeout_gets_its_worker_killed_and_a_timeout_record() {
    let mut cfg = config(1, 3, 3);
    cfg.timeout = Some(Duration::from_millis(1));
    let mut harness = Harness::new(cfg, 3);
    harness.bring_up(0);
    let (batch, _, _) = harness.held(0)[0];
    harness.answer(0, vec![ok(0)]);
    harness.slot(0).begin(batch, 1);
    std::thread::sleep(Duration::from_millis(20));
    harness.dispatcher.check_timeouts();
    assert_eq!(harness.killed(), vec![0]);
    harness.die(0, ExitStatus::Signal(libc::SIGKILL), "");
    let error = harness.by_item()[&1].error.clone().expect("error");
    assert_eq!(
        (error.kind, error.signal.as_deref()),
        (FailureKind::Timeout, Some("SIGKILL"))
    );
    harness.serve(ok);
    assert_eq!(harness.by_item().len(), 3);
}

/// The worker aborted on its own just as the timeout kill was sent: what really happened is recorded.
#[test]
fn a_worker_that_died_on_its_own_as_the_timeout_kill_landed_is_no_timeout() {
    let mut cfg = config(1, 1, 1);
    cfg.timeout = Some(Duration::from_millis(1));
    let mut harness = Harness::new(cfg, 1);
    harness.bring_up(0);
    let (batch, _, _) = harness.held(0)[0];
    harness.slot(0).begin(batch, 0);
    std::thread::sleep(Duration::from_millis(20));
    harness.dispatcher.check_timeouts();
    harness.die(0, ExitStatus::Signal(libc::SIGABRT), "");
    let error = harness.by_item()[&0].error.clone().expect("error");
    assert_eq!(
        (error.kind, error.signal.as_deref()),
        (FailureKind::Signal, Some("SIGABRT"))
    );
}

#[test]
fn the_stall_deadline_exists_without_a_timeout_and_is_never_shorter_than_it() {
    let mut cfg = config(1, 1, 1);
    cfg.supervise.start_timeout = Duration::from_secs(30);
    assert_eq!(stall_deadline(&cfg), Duration::from_secs(30));
    cfg.timeout = Some(Duration::from_secs(5));
    assert_eq!(stall_deadline(&cfg), Duration::from_secs(30));
    cfg.timeout = Some(Duration::from_secs(90));
    assert_eq!(stall_deadline(&cfg), Duration::from_secs(90));
}

/// A worker stopped between items (SIGSTOP, a stuck page fault) holds batches forever unless it is noticed.
#[test]
fn a_worker_stalled_between_items_is_killed_and_its_batches_run_again_uncharged() {
    let n = 20;
    let mut cfg = config(2, 5, n);
    cfg.supervise.start_timeout = Duration::from_millis(1);
    let mut harness = Harness::new(cfg, n);
    harness.bring_up(0);
    harness.bring_up(1);
    let (batch, _, _) = harness.held(0)[0];
    harness.answer(0, vec![ok(0)]);
    harness.slot(0).end(batch, 0);
    // Worker 1 works on; worker 0 stays between items and says nothing.
    let (other, first, _) = harness.held(1)[0];
    harness.slot(1).begin(other, first);
    harness.dispatcher.on_tick();
    std::thread::sleep(Duration::from_millis(20));
    harness.slot(1).begin(other, first + 1);
    harness.dispatcher.on_tick();
    assert_eq!(harness.killed(), vec![0], "only the silent worker between items");
    assert!(
        harness.messages().iter().any(|m| m.contains("no sign of life")),
        "{:?}",
        harness.messages()
    );
    harness.die(0, ExitStatus::Signal(libc::SIGKILL), "");
    harness.serve(ok);
    assert_all_ok(&harness, n);
}

#[test]
fn a_long_item_is_not_a_stall_and_an_idle_worker_without_work_is_not_either() {
    let mut cfg = config(2, 1, 1);
    cfg.supervise.start_timeout = Duration::from_millis(1);
    let mut harness = Harness::new(cfg, 1);
    harness.bring_up(0);
    let (batch, _, _) = harness.held(0)[0];
    harness.slot(0).begin(batch, 0);
    for _ in 0..3 {
        harness.dispatcher.on_tick();
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(harness.killed().is_empty(), "a running item is the timeout's business");
    harness.answer_batch(0, ok);
    assert!(harness.dispatcher.is_complete());
}

#[test]
fn the_first_signal_stops_gracefully_and_the_second_kills() {
    let n = 100;
    let mut harness = Harness::new(config(2, 5, n), n);
    harness.bring_up(0);
    harness.bring_up(1);
    harness.answer_batch(0, ok);
    let before = Instant::now();
    harness.dispatcher.on_signal(StopSignal::Terminate);
    for id in [0, 1] {
        harness.read_inbox(id);
        assert!(harness.played[&id].shutdown, "worker {id} asked to shut down");
    }
    let deadline = harness.dispatcher.kill_deadline().expect("a grace deadline");
    assert!(deadline >= before + Duration::from_secs(5));
    assert!(harness.messages().iter().any(|m| m.contains("SIGTERM received")));
    // What they hold may finish; nothing new is handed out.
    let held_before: Vec<_> = harness.held(0);
    harness.answer_batch(0, ok);
    assert!(harness.held(0).len() < held_before.len(), "no new batch after the stop");
    assert!(harness.killed().is_empty());
    harness.dispatcher.on_signal(StopSignal::Interrupt);
    assert_eq!(harness.killed(), vec![0, 1]);
    harness.die(0, ExitStatus::Signal(libc::SIGKILL), "");
    harness.die(1, ExitStatus::Signal(libc::SIGKILL), "");
    assert!(
        harness.records.iter().all(|r| r.status == Status::Ok),
        "a kill to stop charges nobody"
    );
    let outcome = harness.outcome().expect("outcome");
    assert_eq!(outcome.stopped, Some(StopReason::Signal(StopSignal::Terminate)));
    assert!(outcome.ok < n);
}

#[test]
fn the_grace_deadline_kills_whoever_is_left() {
    let mut harness = Harness::new(config(1, 5, 50), 50);
    harness.bring_up(0);
    harness.dispatcher.on_signal(StopSignal::Interrupt);
    assert!(harness.killed().is_empty());
    harness.dispatcher.on_kill_deadline();
    assert_eq!(harness.killed(), vec![0]);
    assert_eq!(harness.dispatcher.kill_deadline(), None);
}

#[test]
fn a_worker_spawned_after_the_stop_is_killed_at_once() {
    let mut harness = Harness::new(config(2, 5, 50), 50);
    harness.bring_up(0);
    harness.dispatcher.on_signal(StopSignal::Terminate);
    let before = harness.killed().len();
    harness.handle(Event::Spawned {
        id: 1,
        pid: pid(1),
        pidfd: None,
    });
    assert_eq!(harness.killed()[before..], [1], "killed once it can be");
}

#[test]
fn results_sent_just_before_death_count_whatever_order_the_events_come_in() {
    let mut harness = Harness::new(config(1, 4, 4), 4);
    harness.bring_up(0);
    let (batch, _, _) = harness.held(0)[0];
    harness.handle(Event::Exited {
        id: 0,
        info: ExitInfo {
            status: sigsegv(),
            cpu: Duration::ZERO,
            max_rss: 0,
        },
        stderr_tail: String::new(),
    });
    harness.slot(0).begin(batch, 2);
    harness.handle(Event::Message {
        id: 0,
        message: FromWorker::Results {
            batch,
            first: 0,
            outcomes: vec![ok(0), ok(1)],
        },
    });
    harness.handle(Event::ChannelClosed { id: 0, error: None });
    harness.played.remove(&0);
    let by_item = harness.by_item();
    assert_eq!(by_item[&0].status, Status::Ok);
    assert_eq!(by_item[&1].status, Status::Ok);
    assert_eq!(by_item[&2].status, Status::Failed, "the slot's item");
    harness.serve(ok);
    assert_eq!(harness.by_item().len(), 4);
}

#[test]
fn worker_stats_and_pids_follow_the_workers() {
    let n = 30;
    let mut harness = Harness::new(config(3, 2, n), n);
    harness.serve(ok);
    let outcome = harness.outcome().expect("outcome");
    assert_eq!(outcome.workers_started, 3);
    let mut pids = outcome.worker_pids.clone();
    pids.sort_unstable();
    assert_eq!(pids, vec![pid(0), pid(1), pid(2)]);
    assert_eq!(outcome.worker_stats.iter().map(|s| s.items).sum::<u64>(), n);
    let per_pid: HashMap<u32, u64> = outcome.worker_stats.iter().map(|s| (s.pid, s.items)).collect();
    assert_eq!(per_pid.len(), 3);
}

/// What the test stream has seen of its consumer.
#[derive(Debug, Default)]
struct StreamLog {
    /// Items the producer has made available so far.
    arrived: u64,
    /// The producer is done: once every arrived item is pulled, the stream ends.
    closed: bool,
    /// The stream said it ended (its length is known from then on).
    ended: bool,
    /// The next item a pull may give.
    next: u64,
    /// Pulled and not released yet.
    held: std::collections::BTreeSet<u64>,
    most_held: usize,
    /// Every item released, in order (unless `count_only`).
    released: Vec<u64>,
    released_count: u64,
    count_only: bool,
}

/// A test-only stream: the items `0, 1, 2, …` of a range of one number each, whose length is hidden until it
/// ends. Items arrive when the test says ([`StreamLog::arrived`], then the wake), each pull gives at most `burst`
/// of them, and it checks that the consumer asks only about items it pulled and did not release.
#[derive(Debug)]
struct TestStream {
    log: Arc<Mutex<StreamLog>>,
    burst: u64,
    wake: Arc<tokio::sync::Notify>,
}

impl TestStream {
    fn held(&self, item: u64) -> bool {
        self.log.lock().expect("lock").held.contains(&item)
    }
}

impl crate::input::Source for TestStream {
    fn key(&self) -> &'static str {
        "stream"
    }

    fn known_len(&self) -> Option<u64> {
        let log = self.log.lock().expect("lock");
        log.ended.then_some(log.arrived)
    }

    fn pull(&mut self, first: u64, max: u64) -> Result<crate::input::Pulled, Error> {
        let mut log = self.log.lock().expect("lock");
        assert_eq!(first, log.next, "pulls follow each other");
        if first < log.arrived {
            let n = max.min(self.burst).min(log.arrived - first);
            log.next += n;
            log.held.extend(first..first + n);
            log.most_held = log.most_held.max(log.held.len());
            Ok(crate::input::Pulled::Ready(n))
        } else if log.closed {
            log.ended = true;
            Ok(crate::input::Pulled::Ended)
        } else {
            Ok(crate::input::Pulled::NotYet)
        }
    }

    fn wake(&self) -> Option<Arc<tokio::sync::Notify>> {
        Some(Arc::clone(&self.wake))
    }

    fn release(&mut self, item: u64) {
        let mut log = self.log.lock().expect("lock");
        assert!(log.held.remove(&item), "released {item}, which is not held");
        log.released_count += 1;
        if !log.count_only {
            log.released.push(item);
        }
    }

    fn items(&self, first: u64, len: u64, _body: crate::input::BodyOf<'_>) -> BatchItems {
        assert!(
            (first..first + len).all(|item| self.held(item)),
            "a batch of items not held"
        );
        BatchItems::Range { count: len }
    }

    fn describe(&self, index: u64) -> crate::results::InputDesc {
        assert!(self.held(index), "described {index}, which is not held");
        crate::results::InputDesc::Range {
            start: index,
            end: index + 1,
        }
    }

    fn plan(&self, _arena: Option<&std::path::Path>) -> shared::item::InputPlan {
        shared::item::InputPlan::Range {
            start: 0,
            end: u64::MAX,
            chunk: 1,
        }
    }

    fn batch_cap(&self) -> u64 {
        1 << 20
    }

    fn fingerprint(&self) -> Result<String, Error> {
        Ok("a test stream".into())
    }
}

impl Harness {
    /// A harness over a [`TestStream`] with `arrived` items available at first (all of them when `closed`).
    fn streaming(
        mut config: DispatchConfig,
        arrived: u64,
        closed: bool,
        burst: u64,
    ) -> (Harness, Arc<Mutex<StreamLog>>) {
        config.span = 0..u64::MAX;
        let log = Arc::new(Mutex::new(StreamLog {
            arrived,
            closed,
            ..StreamLog::default()
        }));
        let stream = TestStream {
            log: Arc::clone(&log),
            burst,
            wake: Arc::new(tokio::sync::Notify::new()),
        };
        (Harness::with_source(config, Box::new(stream), Done::default()), log)
    }

    /// The producer makes `more` items available (and closes the stream when `close`); the driver's wake.
    fn arrive(&mut self, log: &Mutex<StreamLog>, more: u64, close: bool) {
        {
            let mut log = log.lock().expect("lock");
            log.arrived += more;
            log.closed |= close;
        }
        if self.dispatcher.is_awaiting_input() {
            self.dispatcher.on_input();
            self.records.extend(self.dispatcher.take_records());
        }
    }

    fn totals_told(&self) -> Vec<String> {
        self.messages()
            .into_iter()
            .filter(|m| m.starts_with("total "))
            .collect()
    }
}

#[test]
fn a_stream_is_run_whole_and_its_total_is_learned_when_it_ends() {
    let n = 10_000;
    let (mut harness, log) = Harness::streaming(config(3, 7, 0), n, true, 5);
    assert_eq!(
        harness.launched(),
        vec![0, 1, 2],
        "every worker starts: the length is not known"
    );
    harness.serve(ok);
    assert_all_ok(&harness, n);
    assert!(harness.dispatcher.is_over());
    assert_eq!(harness.totals_told(), vec![format!("total {n}")]);
    let log = log.lock().expect("lock");
    assert!(log.ended && log.held.is_empty(), "every item released");
    let mut released = log.released.clone();
    released.sort_unstable();
    assert_eq!(
        released,
        (0..n).collect::<Vec<u64>>(),
        "each item released exactly once"
    );
    // What is in flight (3 workers, at most MAX_PREFETCH batches of 7 queued each, and one pulled ahead), never
    // the input.
    let bound = 3 * crate::batching::MAX_PREFETCH * 7 + 7;
    assert!(log.most_held <= bound, "{} held at once", log.most_held);
    drop(log);
    let outcome = harness.outcome().expect("outcome");
    assert_eq!((outcome.items, outcome.ok), (n, n));
    assert_eq!(
        outcome.reducer.value(),
        Some(Value::UInt(u128::from(3 * n * (n - 1) / 2)))
    );
}

#[test]
fn a_stream_that_has_no_items_yet_waits_for_its_wake_and_goes_on() {
    let (mut harness, log) = Harness::streaming(config(2, 4, 0), 0, false, 100);
    assert!(
        harness.dispatcher.is_awaiting_input(),
        "nothing arrived: the driver waits on the wake"
    );
    harness.serve(ok);
    assert!(harness.records.is_empty() && !harness.dispatcher.is_complete());
    // Bursts of items arrive while workers are idle: each is handed out on its wake.
    for burst in 0..5 {
        harness.arrive(&log, 6, false);
        harness.serve(ok);
        assert_eq!(harness.by_item().len() as u64, 6 * (burst + 1));
        assert!(!harness.dispatcher.is_complete(), "not ended yet");
        assert!(harness.totals_told().is_empty());
    }
    harness.arrive(&log, 0, true);
    assert_eq!(harness.totals_told(), vec!["total 30".to_string()]);
    assert!(harness.dispatcher.is_complete());
    harness.serve(ok);
    assert_all_ok(&harness, 30);
    assert!(harness.dispatcher.is_over());
}

#[test]
fn an_empty_stream_starts_no_worker_and_is_complete() {
    let (harness, _log) = Harness::streaming(config(4, 10, 0), 0, true, 10);
    assert!(harness.launched().is_empty());
    assert!(harness.dispatcher.is_complete() && harness.dispatcher.is_over());
    assert_eq!(harness.totals_told(), vec!["total 0".to_string()]);
}

#[test]
fn a_stream_releases_failed_and_retried_items_once_recorded() {
    let n = 40;
    let mut cfg = config(2, 4, 0);
    cfg.retries = 1;
    let (mut harness, log) = Harness::streaming(cfg, n, true, 3);
    // Items divisible by 5 fail on their first attempt, items divisible by 7 on both.
    let attempts: Mutex<HashMap<u64, u32>> = Mutex::default();
    harness.serve(|item| {
        let mut attempts = attempts.lock().expect("lock");
        let attempt = attempts.entry(item).or_default();
        *attempt += 1;
        if item % 7 == 0 || (item % 5 == 0 && *attempt == 1) {
            error("x")
        } else {
            ok(item)
        }
    });
    let by_item = harness.by_item();
    assert_eq!(by_item.len() as u64, n);
    let failed: Vec<u64> = by_item
        .iter()
        .filter(|(_, r)| r.status == Status::Failed)
        .map(|(i, _)| *i)
        .collect();
    assert_eq!(failed, (0..n).filter(|i| i % 7 == 0).collect::<Vec<u64>>());
    let log = log.lock().expect("lock");
    let mut released = log.released.clone();
    released.sort_unstable();
    assert_eq!(
        released,
        (0..n).collect::<Vec<u64>>(),
        "each item released exactly once, after its record"
    );
}

#[test]
fn halt_by_percentage_on_a_stream_counts_against_the_items_seen_and_matches_a_listed_input() {
    // 20 items in batches of 5 for one worker; items from 10 on fail; halt at 25 %. The listed input halts after
    // 5 failures (25 % of 20; the batch already queued finishes: a `soon` halt); the stream, which has seen all
    // 20 by then, after the same 5.
    let run = |stream: bool| {
        let n = 20;
        let mut cfg = config(1, 5, n);
        cfg.supervise.halt = Halt {
            threshold: HaltThreshold::Percent(25.0),
            now: false,
        };
        let mut harness = if stream {
            Harness::streaming(cfg, n, true, 5).0
        } else {
            Harness::new(cfg, n)
        };
        harness.serve(|item| if item >= 10 { error("x") } else { ok(item) });
        let failed: Vec<u64> = harness
            .by_item()
            .iter()
            .filter(|(_, r)| r.status == Status::Failed)
            .map(|(i, _)| *i)
            .collect();
        let outcome = harness.outcome().expect("outcome");
        (failed, outcome.stopped)
    };
    let listed = run(false);
    assert!(listed.0.starts_with(&[10, 11, 12, 13, 14]), "{:?}", listed.0);
    assert_eq!(listed.1, Some(StopReason::Halt { failed: 5 }));
    assert_eq!(run(true), listed);
}

#[test]
fn a_streams_tail_gets_no_fair_share_until_it_ends_but_a_listed_one_does() {
    // Automatic batch sizes after a measured item cost: a listed input's last items are shared out in small
    // batches; a stream's, whose end is not known, are not cut short for a tail it cannot see.
    let measured = |harness: &mut Harness| {
        harness.bring_up_all();
        harness.serve(ok);
    };
    let mut cfg = config(2, 1, 64);
    cfg.batch = None;
    let mut listed = Harness::new(cfg, 64);
    measured(&mut listed);
    assert_all_ok(&listed, 64);
    let mut cfg = config(2, 1, 0);
    cfg.batch = None;
    let (mut stream, _log) = Harness::streaming(cfg, 64, true, 1 << 20);
    measured(&mut stream);
    assert_all_ok(&stream, 64);
    let listed_batches = listed.outcome().expect("outcome").batches;
    let stream_batches = stream.outcome().expect("outcome").batches;
    assert!(
        listed_batches > stream_batches,
        "the listed tail is shared in smaller batches: {listed_batches} vs {stream_batches}"
    );
}

/// Counts the heap bytes live on the calling thread, and their peak: the harness drives the dispatcher on the
/// test's own thread, so other tests running meanwhile do not count.
mod counting {
    #[global_allocator]
    static ALLOCATOR: sys::alloc::Counting = sys::alloc::Counting;

    pub use sys::alloc::peak_growth;
}

/// Runs `n` items of a listed range (or of a stream when `stream`) with no records kept, as a job without a
/// results file; returns the dispatcher's peak heap growth while it ran.
fn peak_of_a_run(n: u64, stream: bool) -> usize {
    counting::peak_growth(|| {
        let cfg = config(2, 10_000, n);
        let mut log = None;
        let mut harness = if stream {
            let mut cfg = cfg;
            cfg.span = 0..u64::MAX;
            let log_of = Arc::new(Mutex::new(StreamLog {
                arrived: n,
                closed: true,
                count_only: true,
                ..StreamLog::default()
            }));
            let source = TestStream {
                log: Arc::clone(&log_of),
                burst: 10_000,
                wake: Arc::new(tokio::sync::Notify::new()),
            };
            log = Some(log_of);
            Harness::built(cfg, Box::new(source), Done::default(), false)
        } else {
            Harness::built(
                cfg,
                Box::new(crate::input::range::Range::new(0, n, 1)),
                Done::default(),
                false,
            )
        };
        harness.serve(|item| if item % 1000 == 0 { error("x") } else { ok(item) });
        if let Some(log) = &log {
            assert_eq!(log.lock().expect("lock").released_count, n, "every item released");
        }
        let outcome = harness.outcome().expect("outcome");
        assert_eq!((outcome.ok, outcome.failed), (n - n.div_ceil(1000), n.div_ceil(1000)));
    })
}

#[test]
fn the_dispatcher_holds_nothing_per_item_of_the_job() {
    // The same job at 10^5 and 10^6 items (one in 1000 failing): whatever the dispatcher kept per item (a set of
    // done items, a per-item error list, records) would make the larger run's peak grow by at least a byte per
    // item more, 0.9 MB. A batch's outcomes (10^4 of them) and the items in flight are the same in both.
    for stream in [false, true] {
        let small = peak_of_a_run(100_000, stream);
        let large = peak_of_a_run(1_000_000, stream);
        assert!(
            large < small + (512 << 10),
            "stream {stream}: peak {large} bytes for 10^6 items vs {small} for 10^5"
        );
    }
}
