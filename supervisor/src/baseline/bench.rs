//! `supervisor bench`: micro-measurements of this machine that explain what the pool costs.
//!
//! Four measurements, each repeated many times and reported as median with min–max:
//!
//! 1. **Worker start** ([`start`]): from asking the real pool for a worker to its `Ready`, per start method
//!    (`spawn`, `forkserver`, a worker thread), and a bare `std::thread::spawn` + `join` for scale.
//! 2. **Round trip** ([`transfer`]): one `u64` there and back, one in flight, timed one by one (with p99):
//!    ipc-channel to a child process, std `mpsc` between two threads, and a raw pipe to a child process (the
//!    floor of any channel between processes); each unpinned, pinned to one CPU, and pinned to two CPUs.
//! 3. **Hand-off bandwidth** ([`transfer`]): 1 MiB to a child process through `IpcBytesSender` versus through a
//!    shared memfd region with only a small notification on the channel; placed as the round trips.
//! 4. **Dispatch overhead** ([`throughput`]): µs per item of the `noop` task under `supervisor run`, for batch
//!    sizes 1, 16, 256 and auto, with worker processes and with worker threads.
//!
//! Each section prints as soon as it is measured, with a one-line note that puts its numbers in relation; with
//! `--json` one object with every number is printed at the end instead. The repetition counts are chosen so
//! that the whole command takes 10–20 s in a release build; `--repeat` overrides them all, and `--quick` cuts
//! every count and size for tests.
//!
//! The fork server for the `forkserver` start method is forked first thing, while this process has a single
//! thread (see [`ForkServer::start`]); the child processes the measurements talk to are this same binary in
//! hidden modes ([`echo`]), dispatched in `main` before the command line is parsed.

pub mod echo;
pub mod start;
pub mod throughput;
pub mod transfer;

use std::sync::Arc;

use serde::Serialize;
use shared::exit;

use self::start::Workers;
use self::throughput::{DispatchPlan, DispatchRow};
use self::transfer::{BandwidthPlan, Placement, RoundTripPlan};
use super::Error;
use super::scratch::Scratch;
use super::stats::{Stats, micros, rate, ratio};
use crate::cli::BenchArgs;
use crate::forkserver::ForkServer;
use crate::pool::Starter;

/// Repetition counts and sizes of every measurement.
#[derive(Debug, Clone, Copy)]
struct Plan {
    /// Workers started per start method: spawn, forkserver, worker thread; then bare threads.
    start: [u32; 4],
    start_warmup: u32,
    round_trip: RoundTripPlan,
    bandwidth: BandwidthPlan,
    dispatch: DispatchPlan,
}

impl Plan {
    fn new(args: &BenchArgs) -> Plan {
        let n = |default: u32| args.repeat.unwrap_or(default);
        if args.quick {
            Plan {
                start: [n(5), n(5), n(20), n(100)],
                start_warmup: 1,
                round_trip: RoundTripPlan {
                    repeat: n(300),
                    warmup: 20,
                },
                bandwidth: BandwidthPlan {
                    bytes: 256 << 10,
                    repeat: n(20),
                    warmup: 2,
                },
                dispatch: DispatchPlan {
                    repeat: n(1),
                    batch_one_items: 100,
                    min_wall_s: 0.0,
                },
            }
        } else {
            Plan {
                start: [n(200), n(300), n(1000), n(5000)],
                start_warmup: 3,
                round_trip: RoundTripPlan {
                    repeat: n(5000),
                    warmup: 200,
                },
                bandwidth: BandwidthPlan {
                    bytes: 1 << 20,
                    repeat: n(500),
                    warmup: 20,
                },
                dispatch: DispatchPlan {
                    repeat: n(3),
                    batch_one_items: 3000,
                    min_wall_s: 0.3,
                },
            }
        }
    }
}

/// Everything `--json` prints. Times are in µs, bandwidths in GB/s (10⁹ bytes per second).
#[derive(Debug, Serialize)]
pub struct Report {
    pub quick: bool,
    /// CPUs this process may run on.
    pub cpus: usize,
    pub debug_build: bool,
    pub start_us: StartReport,
    pub round_trip_us: RoundTripReport,
    pub bandwidth_gb_s: BandwidthReport,
    pub dispatch: DispatchReport,
}

/// Launch to `Ready`, in µs.
#[derive(Debug, Serialize)]
pub struct StartReport {
    pub spawn: Stats,
    pub forkserver: Stats,
    pub thread: Stats,
    /// `std::thread::spawn` + `join` of an empty closure.
    pub bare_thread: Stats,
    pub note: String,
}

/// One small message there and back, in µs, per placement of the two sides.
#[derive(Debug, Serialize)]
pub struct RoundTripReport {
    /// Unpinned: wherever the scheduler puts them, as in the pool.
    pub scheduled: RoundTrips,
    /// Both sides pinned to one CPU.
    pub same_cpu: RoundTrips,
    /// Pinned to two different CPUs (absent when this process may use only one).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub other_cpu: Option<RoundTrips>,
    pub note: String,
}

/// The three paths of a round trip.
#[derive(Debug, Serialize)]
pub struct RoundTrips {
    pub ipc_channel: Stats,
    /// The transport workers use: postcard frames on a Unix socket (`shared::frame`).
    pub socket_frames: Stats,
    pub thread_mpsc: Stats,
    pub pipe: Stats,
}

impl RoundTrips {
    fn measure(exe: &std::path::Path, plan: RoundTripPlan, placement: Placement) -> Result<RoundTrips, Error> {
        let samples = transfer::round_trips(exe, plan, placement)?;
        Ok(RoundTrips {
            ipc_channel: Stats::latency(samples.ipc_channel),
            socket_frames: Stats::latency(samples.socket_frames),
            thread_mpsc: Stats::latency(samples.thread_mpsc),
            pipe: Stats::latency(samples.pipe),
        })
    }
}

/// Hand-off of `bytes` to another process, in GB/s, per placement of the two sides (as for round trips).
#[derive(Debug, Serialize)]
pub struct BandwidthReport {
    pub bytes: u64,
    pub scheduled: HandOffs,
    pub same_cpu: HandOffs,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub other_cpu: Option<HandOffs>,
    pub note: String,
}

/// The two paths of a hand-off.
#[derive(Debug, Serialize)]
pub struct HandOffs {
    pub ipc_bytes: Stats,
    pub shared_memory: Stats,
}

impl HandOffs {
    fn measure(exe: &std::path::Path, plan: BandwidthPlan, placement: Placement) -> Result<HandOffs, Error> {
        let samples = transfer::bandwidths(exe, plan, placement)?;
        Ok(HandOffs {
            ipc_bytes: Stats::of(samples.ipc_bytes),
            shared_memory: Stats::of(samples.shared_memory),
        })
    }
}

/// Per-item overhead of `supervisor run` on noop items.
#[derive(Debug, Serialize)]
pub struct DispatchReport {
    pub workers: u32,
    pub process: Vec<DispatchRow>,
    pub thread: Vec<DispatchRow>,
    pub note: String,
}

pub fn run(args: &BenchArgs) -> Result<i32, Error> {
    // `main` calls this before the async runtime or any other thread exists, and nothing above starts one.
    let server = ForkServer::start().map_err(|source| Error::Start {
        what: "the fork server",
        source,
    })?;
    let forkserver = Starter::Fork(Arc::new(server));
    let plan = Plan::new(args);
    let exe = super::scratch::this_exe()?;
    let cpus = std::thread::available_parallelism().map_or(1, usize::from);
    let debug_build = cfg!(debug_assertions);
    let show = !args.json;
    if show {
        println!(
            "supervisor bench on {cpus} CPUs{}{}",
            if debug_build {
                " — debug build: expect everything slower"
            } else {
                ""
            },
            if args.quick { " — quick: rough numbers" } else { "" }
        );
    }

    let [spawn_n, fork_n, thread_n, bare_n] = plan.start;
    let warmup = plan.start_warmup;
    let start_us = {
        let spawn = Stats::of(start::pool_start(
            "spawn start",
            Workers::Processes(Starter::Spawn),
            spawn_n,
            warmup,
        )?);
        let fork = Stats::of(start::pool_start(
            "forkserver start",
            Workers::Processes(forkserver.clone()),
            fork_n,
            warmup,
        )?);
        forkserver.shut_down();
        let thread = Stats::of(start::pool_start("thread start", Workers::Threads, thread_n, warmup)?);
        let bare = Stats::of(start::bare_thread(bare_n, warmup * 10)?);
        StartReport {
            note: format!(
                "forkserver starts a worker {} faster than spawn; a worker thread is ready {} faster than spawn, \
                 and takes {} a bare thread spawn+join (the rest is the handshake, Init and event hops)",
                ratio(spawn.median, fork.median),
                ratio(spawn.median, thread.median),
                ratio(thread.median, bare.median),
            ),
            spawn,
            forkserver: fork,
            thread,
            bare_thread: bare,
        }
    };
    if show {
        print_start(&start_us);
    }

    // Pinned measurements use the first two CPUs this process may run on.
    let allowed = sys::cpu::allowed_cpus().map_err(|error| Error::Bench {
        measurement: "pinning",
        reason: format!("sched_getaffinity: {error}"),
    })?;
    let (first, second) = (allowed.first().copied().unwrap_or(0), allowed.get(1).copied());
    let round_trip_us = {
        let scheduled = RoundTrips::measure(&exe, plan.round_trip, Placement::Scheduled)?;
        let same_cpu = RoundTrips::measure(&exe, plan.round_trip, Placement::SameCpu(first))?;
        let other_cpu = second
            .map(|second| RoundTrips::measure(&exe, plan.round_trip, Placement::OtherCpus(first, second)))
            .transpose()?;
        RoundTripReport {
            note: round_trip_note(&scheduled, &same_cpu, other_cpu.as_ref()),
            scheduled,
            same_cpu,
            other_cpu,
        }
    };
    if show {
        print_round_trips(&round_trip_us);
    }

    let bandwidth_gb_s = {
        let plan = plan.bandwidth;
        let scheduled = HandOffs::measure(&exe, plan, Placement::Scheduled)?;
        let same_cpu = HandOffs::measure(&exe, plan, Placement::SameCpu(first))?;
        let other_cpu = second
            .map(|second| HandOffs::measure(&exe, plan, Placement::OtherCpus(first, second)))
            .transpose()?;
        BandwidthReport {
            bytes: plan.bytes as u64,
            note: hand_off_note(plan.bytes, &same_cpu, other_cpu.as_ref()),
            scheduled,
            same_cpu,
            other_cpu,
        }
    };
    if show {
        print_bandwidth(&bandwidth_gb_s);
    }

    let dispatch = {
        let scratch = Scratch::new("bench")?;
        let process = throughput::measure(&exe, &scratch.path, "process", plan.dispatch)?;
        let thread = throughput::measure(&exe, &scratch.path, "thread", plan.dispatch)?;
        DispatchReport {
            workers: throughput::WORKERS,
            note: dispatch_note(&process, &thread),
            process,
            thread,
        }
    };
    if show {
        print_dispatch(&dispatch);
    }

    if args.json {
        let report = Report {
            quick: args.quick,
            cpus,
            debug_build,
            start_us,
            round_trip_us,
            bandwidth_gb_s,
            dispatch,
        };
        let json = serde_json::to_string(&report).map_err(|error| Error::Bench {
            measurement: "report",
            reason: format!("cannot encode the report: {error}"),
        })?;
        println!("{json}");
    }
    Ok(exit::OK)
}

fn round_trip_note(scheduled: &RoundTrips, same: &RoundTrips, other: Option<&RoundTrips>) -> String {
    let ipc = same.ipc_channel.median;
    let mut note = format!(
        "on one CPU the workers' socket frames take {} per round trip, {} the raw pipe floor; ipc-channel {} ({}), \
         and threads over mpsc {}",
        micros(same.socket_frames.median),
        ratio(same.socket_frames.median, same.pipe.median),
        micros(ipc),
        ratio(ipc, same.pipe.median),
        ratio(same.thread_mpsc.median, same.pipe.median),
    );
    if let Some(other) = other {
        let across = other.ipc_channel.median;
        let unpinned = scheduled.ipc_channel.median;
        // Nearer on a log scale: the two modes are an order of magnitude apart.
        let like = if (unpinned / ipc).ln().abs() <= (unpinned / across).ln().abs() {
            "one CPU"
        } else {
            "two CPUs"
        };
        note.push_str(&format!(
            "; across two CPUs {} ({} its one-CPU time: waking the other CPU dominates); unpinned, this run's \
             ipc-channel median ({}) is like {like}",
            micros(across),
            ratio(across, ipc),
            micros(unpinned),
        ));
    }
    note
}

fn hand_off_note(bytes: usize, same: &HandOffs, other: Option<&HandOffs>) -> String {
    let size = crate::report::human_bytes(bytes as u64);
    let time = |gb_per_s: f64| micros(bytes as f64 / (gb_per_s * 1e9) * 1e6);
    let first = other.unwrap_or(same);
    let (first_ipc, first_shm) = (first.ipc_bytes.median, first.shared_memory.median);
    let mut note = format!(
        "{} a {size} hand-off takes {} through shared memory and {} through IpcBytesSender ({} as fast)",
        if other.is_some() {
            "across two CPUs"
        } else {
            "on one CPU"
        },
        time(first_shm),
        time(first_ipc),
        ratio(first_shm, first_ipc),
    );
    if other.is_some() {
        let (same_ipc, same_shm) = (same.ipc_bytes.median, same.shared_memory.median);
        note.push_str(&format!(
            "; on one CPU {} and {} ({})",
            time(same_shm),
            time(same_ipc),
            ratio(same_shm, same_ipc)
        ));
    }
    note
}

fn dispatch_note(process: &[DispatchRow], thread: &[DispatchRow]) -> String {
    let find = |rows: &[DispatchRow], batch: &str| {
        rows.iter()
            .find(|row| row.batch == batch)
            .map_or(f64::NAN, |row| row.us_per_item.median)
    };
    let auto_batch = process
        .iter()
        .find(|row| row.batch == "auto")
        .map_or(f64::NAN, |row| row.items_per_batch);
    let (one, big, auto) = (find(process, "1"), find(process, "256"), find(process, "auto"));
    let thread_one = find(thread, "1");
    format!(
        "processes at batch 1 pay {} per item; batch 256 cuts that {}, and auto ({:.0} items per batch) costs {} \
         of batch 256; worker threads at batch 1 pay {}, {} the processes' cost",
        micros(one),
        ratio(one, big),
        auto_batch,
        ratio(auto, big),
        micros(thread_one),
        ratio(thread_one, one),
    )
}

fn range(stats: &Stats, show: impl Fn(f64) -> String) -> String {
    format!("({} – {})", show(stats.min), show(stats.max))
}

fn print_start(report: &StartReport) {
    println!();
    println!("worker start: launch to Ready through the real pool (median, min–max)");
    for (name, stats) in [
        ("spawn", &report.spawn),
        ("forkserver", &report.forkserver),
        ("worker thread", &report.thread),
        ("bare thread spawn+join", &report.bare_thread),
    ] {
        println!(
            "  {name:<24} {:>10}  {:<24} n={}",
            micros(stats.median),
            range(stats, micros),
            stats.n
        );
    }
    println!("  → {}", report.note);
}

fn print_round_trips(report: &RoundTripReport) {
    println!();
    println!("round trip of one u64, one in flight (median, min–max, p99)");
    let placements = [
        ("unpinned", Some(&report.scheduled)),
        ("pinned to one CPU", Some(&report.same_cpu)),
        ("pinned to two CPUs", report.other_cpu.as_ref()),
    ];
    for (placement, paths) in placements {
        let Some(paths) = paths else { continue };
        println!("  {placement}");
        for (name, stats) in [
            ("socket frames (workers)", &paths.socket_frames),
            ("ipc-channel (processes)", &paths.ipc_channel),
            ("std mpsc (threads)", &paths.thread_mpsc),
            ("raw pipe (processes)", &paths.pipe),
        ] {
            println!(
                "    {name:<24} {:>10}  {:<24} p99 {:>9}  n={}",
                micros(stats.median),
                range(stats, micros),
                micros(stats.p99.unwrap_or(0.0)),
                stats.n
            );
        }
    }
    println!("  → {}", report.note);
}

fn print_bandwidth(report: &BandwidthReport) {
    println!();
    println!(
        "hand-off of {} to another process, until it touched every page (median, min–max)",
        crate::report::human_bytes(report.bytes)
    );
    let gb = |value: f64| format!("{value:.2}");
    let placements = [
        ("unpinned", Some(&report.scheduled)),
        ("pinned to one CPU", Some(&report.same_cpu)),
        ("pinned to two CPUs", report.other_cpu.as_ref()),
    ];
    for (placement, paths) in placements {
        let Some(paths) = paths else { continue };
        println!("  {placement}");
        for (name, stats) in [
            ("IpcBytesSender", &paths.ipc_bytes),
            ("shared memory", &paths.shared_memory),
        ] {
            println!(
                "    {name:<24} {:>10}  {:<24} n={}",
                format!("{} GB/s", gb(stats.median)),
                range(stats, gb),
                stats.n
            );
        }
    }
    println!("  → {}", report.note);
}

fn print_dispatch(report: &DispatchReport) {
    println!();
    println!(
        "dispatch overhead: noop items through `supervisor run`, {} workers (median, min–max)",
        report.workers
    );
    println!(
        "  {:<9} {:>5} {:>10}  {:<24} {:>11} {:>11} {:>11}  runs",
        "executor", "batch", "per item", "", "items/s", "items/batch", "items/run"
    );
    for (executor, rows) in [("process", &report.process), ("thread", &report.thread)] {
        for row in rows {
            println!(
                "  {executor:<9} {:>5} {:>10}  {:<24} {:>11} {:>11.1} {:>11}  {}",
                row.batch,
                micros(row.us_per_item.median),
                range(&row.us_per_item, micros),
                rate(row.items_per_s.median),
                row.items_per_batch,
                row.items,
                row.us_per_item.n
            );
        }
    }
    println!("  → {}", report.note);
}
