//! `compare`'s verdict: one line that follows from the measured numbers and from nothing else.
//!
//! [`verdict`] is a pure function of the executors' reports (wall-time spreads, memory, the isolation check). It
//! judges differences against the spread of the runs, not against a fixed percentage: an executor's min–max wall
//! time is its noise band, and two executors differ only when their bands do not overlap (bands that touch
//! overlap). The questions come in order, each answered only when the one before allows it:
//!
//! 1. Does the parallel job pay for itself at all? The fastest process executor against `serial`: slower, or
//!    within noise of it, and the verdict says so, whatever threads do (threads are then no reason to isolate).
//! 2. What does isolation cost? Processes against `thread`: within noise (no measurable cost), faster, or slower
//!    beyond noise (the cost in % of wall time and in memory).
//! 3. A separate fact, from `--isolation-check`: whether one crashing item took the whole thread run down.
//!
//! Running the executors and measuring them is `compare`'s; this module only reads what they measured.

use serde::Serialize;

use super::ExecutorReport;

/// Which conclusion the numbers support (the `finding` field of `--json`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Finding {
    /// No process executor or no serial run measured anything to compare.
    NotEnoughRuns,
    /// Only process executors can run the job (threads and serial refused it): there is no in-process baseline.
    OnlyProcesses,
    /// Every process run was slower than every serial run: the parallel job does not pay for itself.
    SlowerThanSerial,
    /// Process and serial runs overlap: the parallel job gains nothing measurable.
    NoFasterThanSerial,
    /// Processes beat serial beyond noise; threads could not run the job.
    FasterThanSerial,
    /// Processes beat serial, and process and thread runs overlap: isolation costs no measurable wall time.
    WithinNoiseOfThreads,
    /// Processes beat serial but lose to threads beyond noise: the verdict says what isolation costs.
    IsolationCosts,
    /// Processes beat serial and threads beyond noise.
    FasterThanThreads,
}

/// The verdict: its finding, and the line printed after `verdict: `.
#[derive(Debug, Clone, PartialEq)]
pub struct Verdict {
    pub finding: Finding,
    pub text: String,
}

/// Where one executor's runs stand against another's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Order {
    /// Every run of the first was faster than every run of the second.
    Faster,
    /// The min–max ranges overlap (or touch): the difference is within noise.
    Overlap,
    /// Every run of the first was slower than every run of the second.
    Slower,
}

/// One executor's wall times, as the verdict uses them.
#[derive(Debug, Clone, Copy)]
struct Wall<'a> {
    report: &'a ExecutorReport,
}

impl Wall<'_> {
    fn against(self, other: Wall<'_>) -> Order {
        let (a, b) = (self.report, other.report);
        if a.wall_max_s < b.wall_min_s {
            Order::Faster
        } else if a.wall_min_s > b.wall_max_s {
            Order::Slower
        } else {
            Order::Overlap
        }
    }

    /// `other`'s median wall time divided by this one's: how many times faster this one is.
    fn speedup_over(self, other: Wall<'_>) -> f64 {
        other.report.wall_median_s / self.report.wall_median_s
    }

    /// "1.234s (1.200–1.300)", as in the table.
    fn shown(self) -> String {
        let r = self.report;
        format!("{:.3}s ({:.3}–{:.3})", r.wall_median_s, r.wall_min_s, r.wall_max_s)
    }

    fn runs(self) -> usize {
        self.report.samples.len()
    }
}

/// A report counts when its executor ran and its wall times are real numbers in order.
fn measured(report: &ExecutorReport) -> bool {
    let (min, median, max) = (report.wall_min_s, report.wall_median_s, report.wall_max_s);
    report.unavailable.is_none()
        && [min, median, max].iter().all(|t| t.is_finite() && *t > 0.0)
        && min <= median
        && median <= max
}

/// The one-line conclusion of a comparison of `items` items, from the reports alone.
pub fn verdict(reports: &[ExecutorReport], items: u64) -> Verdict {
    let find = |name: &str| {
        reports
            .iter()
            .find(|r| r.executor == name && measured(r))
            .map(|report| Wall { report })
    };
    // Isolation is judged on the better of the two ways to start processes.
    let process = reports
        .iter()
        .filter(|r| r.executor.starts_with("process") && measured(r))
        .min_by(|a, b| a.wall_median_s.total_cmp(&b.wall_median_s))
        .map(|report| Wall { report });
    let (thread, serial) = (find("thread"), find("serial"));
    let refusal = || {
        reports
            .iter()
            .find(|r| r.executor == "thread")
            .and_then(|r| r.unavailable.clone())
            .unwrap_or_else(|| "it did not run".to_string())
    };
    let Some(process) = process else {
        return Verdict {
            finding: Finding::NotEnoughRuns,
            text: "not enough executors ran to compare: no process executor measured the job".to_string(),
        };
    };
    let name = &process.report.executor;
    let Some(serial) = serial else {
        return match thread {
            None => Verdict {
                finding: Finding::OnlyProcesses,
                text: format!(
                    "only processes can run this job (threads: {}); there is no in-process baseline to compare \
                     them with",
                    refusal()
                ),
            },
            Some(_) => Verdict {
                finding: Finding::NotEnoughRuns,
                text: "not enough executors ran to compare: the serial run, the baseline, measured nothing".to_string(),
            },
        };
    };
    let mut verdict = match process.against(serial) {
        Order::Slower => Verdict {
            finding: Finding::SlowerThanSerial,
            text: format!(
                "the parallel job does not pay for itself: {name} takes {:.1}x the serial wall time, slower in \
                 every run ({} vs serial {}){}; run it serially, or give each item more work",
                1.0 / process.speedup_over(serial),
                process.shown(),
                serial.shown(),
                threads_against_serial(thread, serial),
            ),
        },
        Order::Overlap => Verdict {
            finding: Finding::NoFasterThanSerial,
            text: format!(
                "the parallel job does not pay for itself: {name} is within noise of serial (its median time is \
                 {:.2}x serial's, but their ranges overlap: {} vs serial {}){}; run it serially, or give each item \
                 more work",
                1.0 / process.speedup_over(serial),
                process.shown(),
                serial.shown(),
                threads_against_serial(thread, serial),
            ),
        },
        Order::Faster => {
            let gain = format!(
                "{name} runs it {:.2}x faster than serial ({})",
                process.speedup_over(serial),
                serial.shown()
            );
            match thread {
                None => Verdict {
                    finding: Finding::FasterThanSerial,
                    text: format!(
                        "{gain}, in every run ({name}: {}); threads cannot run this job ({})",
                        process.shown(),
                        refusal()
                    ),
                },
                Some(thread) => against_threads(process, thread, serial, &gain, items),
            }
        }
    };
    if let Some(fact) = crash_fact(reports) {
        verdict.text.push_str("; ");
        verdict.text.push_str(&fact);
    }
    let fewest = [Some(process), thread, Some(serial)]
        .into_iter()
        .flatten()
        .map(Wall::runs)
        .min()
        .unwrap_or(0);
    if fewest < 2 {
        verdict
            .text
            .push_str(" (one run each: noise cannot be told from a difference; --repeat 3 or more to see it)");
    }
    verdict
}

/// Step 2: processes pay for themselves; what does isolating them cost against threads?
fn against_threads(process: Wall<'_>, thread: Wall<'_>, serial: Wall<'_>, gain: &str, items: u64) -> Verdict {
    let memory_mib =
        (process.report.peak_pss_bytes as f64 - thread.report.peak_pss_bytes as f64) / f64::from(1u32 << 20);
    match process.against(thread) {
        Order::Overlap => Verdict {
            finding: Finding::WithinNoiseOfThreads,
            text: format!(
                "processes and threads are within noise of each other ({} vs thread {}: their ranges overlap), so \
                 isolation costs no measurable wall time here (memory: {memory_mib:+.1} MiB PSS); {gain}",
                process.shown(),
                thread.shown(),
            ),
        },
        Order::Faster => Verdict {
            finding: Finding::FasterThanThreads,
            text: format!(
                "processes beat threads in every run ({} vs thread {}), so isolation costs no wall time here \
                 (memory: {memory_mib:+.1} MiB PSS); {gain}",
                process.shown(),
                thread.shown(),
            ),
        },
        Order::Slower => {
            let cost = (1.0 / process.speedup_over(thread) - 1.0) * 100.0;
            let mut text = format!(
                "isolation costs {cost:.1}% of wall time beyond noise ({} vs thread {}) and {memory_mib:+.1} MiB \
                 PSS; {gain}",
                process.shown(),
                thread.shown(),
            );
            if let Some(hint) = ipc_hint(process, serial, items) {
                text.push_str("; ");
                text.push_str(&hint);
            }
            Verdict {
                finding: Finding::IsolationCosts,
                text,
            }
        }
    }
}

/// When processes lose to serial: do threads at least win? (It tells start-up and IPC apart from the work.)
fn threads_against_serial(thread: Option<Wall<'_>>, serial: Wall<'_>) -> String {
    match thread.map(|thread| (thread, thread.against(serial))) {
        Some((thread, Order::Faster)) => format!(
            "; threads do beat serial ({:.2}x faster): the loss is the processes' start-up and messages",
            thread.speedup_over(serial)
        ),
        Some(_) => "; threads do not beat serial either".to_string(),
        None => String::new(),
    }
}

/// When processes add more CPU per item than an item's whole work costs serially, messages dominate.
fn ipc_hint(process: Wall<'_>, serial: Wall<'_>, items: u64) -> Option<String> {
    let overhead_us = process.report.overhead_us_per_item?;
    if items == 0 {
        return None;
    }
    let work_us = serial.report.cpu_median_s * 1e6 / items as f64;
    (overhead_us > work_us).then(|| {
        format!(
            "an item's work is {work_us:.1} µs and processes add {overhead_us:.1} µs of CPU per item: messages \
             dominate, raise batch"
        )
    })
}

/// Step 3, a separate fact: what one crashing item did to the thread run and to the process runs.
fn crash_fact(reports: &[ExecutorReport]) -> Option<String> {
    let thread = reports.iter().find(|r| r.executor == "thread")?;
    let processes_survived = reports
        .iter()
        .filter(|r| r.executor.starts_with("process"))
        .all(|r| r.crash_takes_job_down == Some(false));
    match thread.crash_takes_job_down? {
        true if processes_survived => Some(
            "and isolation holds where threads do not: one crashing item took the whole thread run down, while \
             the process runs recorded it as failed and went on"
                .to_string(),
        ),
        true => Some("one crashing item took the whole thread run down".to_string()),
        false => Some("one crashing item did not take the thread run down".to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::super::Sample;
    use super::*;

    /// A report of `runs` runs whose wall times are spread evenly over `min..=max` (median in the middle).
    fn report(executor: &str, min: f64, max: f64) -> ExecutorReport {
        runs(executor, &[min, (min + max) / 2.0, max])
    }

    fn runs(executor: &str, walls: &[f64]) -> ExecutorReport {
        let mut sorted = walls.to_vec();
        sorted.sort_by(f64::total_cmp);
        let median = sorted[sorted.len() / 2];
        ExecutorReport {
            executor: executor.to_string(),
            unavailable: None,
            samples: walls
                .iter()
                .map(|&wall_s| Sample {
                    wall_s,
                    cpu_s: wall_s,
                    peak_rss_bytes: 8 << 20,
                    peak_pss_bytes: 4 << 20,
                    first_result_s: None,
                })
                .collect(),
            wall_median_s: median,
            wall_min_s: sorted[0],
            wall_max_s: sorted[sorted.len() - 1],
            cpu_median_s: median,
            speedup_vs_serial: None,
            overhead_us_per_item: None,
            peak_rss_bytes: 8 << 20,
            peak_pss_bytes: 4 << 20,
            first_result_s: None,
            crash_takes_job_down: None,
            isolation_detail: None,
        }
    }

    fn refused(executor: &str, why: &str) -> ExecutorReport {
        let mut report = report(executor, 1.0, 1.0);
        report.samples.clear();
        report.unavailable = Some(why.to_string());
        report
    }

    /// Process, forkserver, thread and serial with these min–max wall ranges.
    fn four(process: (f64, f64), fork: (f64, f64), thread: (f64, f64), serial: (f64, f64)) -> Vec<ExecutorReport> {
        vec![
            report("process", process.0, process.1),
            report("process/forkserver", fork.0, fork.1),
            report("thread", thread.0, thread.1),
            report("serial", serial.0, serial.1),
        ]
    }

    fn assert_not_worth_it(verdict: &Verdict) {
        assert!(!verdict.text.contains("worth"), "{}", verdict.text);
    }

    /// The case that was reported: processes 20x slower than serial, thread and process ranges overlapping.
    #[test]
    fn processes_slower_than_serial_with_overlapping_threads_is_not_worth_it() {
        let reports = four((0.95, 1.10), (0.98, 1.20), (1.00, 1.05), (0.049, 0.051));
        let verdict = verdict(&reports, 1000);
        assert_eq!(verdict.finding, Finding::SlowerThanSerial, "{}", verdict.text);
        assert!(verdict.text.contains("does not pay for itself"), "{}", verdict.text);
        // The ratio is the process median over the serial median: 1.025 / 0.05.
        assert!(verdict.text.contains("20.5x the serial wall time"), "{}", verdict.text);
        assert!(
            verdict.text.contains("threads do not beat serial either"),
            "{}",
            verdict.text
        );
        assert_not_worth_it(&verdict);
    }

    #[test]
    fn processes_overlapping_serial_do_not_pay_for_themselves() {
        let reports = four((0.9, 1.1), (0.95, 1.2), (0.5, 0.6), (1.05, 1.3));
        let verdict = verdict(&reports, 100);
        assert_eq!(verdict.finding, Finding::NoFasterThanSerial, "{}", verdict.text);
        assert!(verdict.text.contains("within noise of serial"), "{}", verdict.text);
        // Medians 1.0 (process) and 1.175 (serial).
        assert!(
            verdict.text.contains("median time is 0.85x serial's"),
            "{}",
            verdict.text
        );
        // Threads do win here, which says where the loss is.
        assert!(verdict.text.contains("threads do beat serial"), "{}", verdict.text);
        assert_not_worth_it(&verdict);
    }

    #[test]
    fn serial_fastest_of_all_is_slower_than_serial_whatever_threads_do() {
        // Threads beat processes beyond noise, but both lose to serial: the first question decides.
        let reports = four((2.0, 2.2), (2.1, 2.3), (1.5, 1.6), (1.0, 1.1));
        let verdict = verdict(&reports, 100);
        assert_eq!(verdict.finding, Finding::SlowerThanSerial, "{}", verdict.text);
        assert!(!verdict.text.contains("isolation costs"), "{}", verdict.text);
    }

    #[test]
    fn a_process_range_touching_serials_is_within_noise() {
        // Boundary: the slowest serial run equals the fastest process run.
        let reports = four((1.0, 1.2), (1.1, 1.3), (0.8, 0.9), (0.8, 1.0));
        assert_eq!(verdict(&reports, 10).finding, Finding::NoFasterThanSerial);
        // Just past the boundary, every process run is slower.
        let reports = four((1.0001, 1.2), (1.1, 1.3), (0.8, 0.9), (0.8, 1.0));
        assert_eq!(verdict(&reports, 10).finding, Finding::SlowerThanSerial);
        // And just short of it the other way, every process run is faster than every serial run.
        let reports = four((0.5, 0.7999), (0.6, 0.9), (0.5, 0.7), (0.8, 1.0));
        assert_ne!(verdict(&reports, 10).finding, Finding::NoFasterThanSerial);
    }

    #[test]
    fn overlapping_process_and_thread_ranges_are_within_noise() {
        let reports = four((0.50, 0.60), (0.52, 0.62), (0.45, 0.51), (1.0, 1.1));
        let verdict = verdict(&reports, 100);
        assert_eq!(verdict.finding, Finding::WithinNoiseOfThreads, "{}", verdict.text);
        assert!(verdict.text.contains("within noise of each other"), "{}", verdict.text);
        // The speedup is of the faster process executor (process, median 0.55) over serial (median 1.05).
        assert!(
            verdict.text.contains("process runs it 1.91x faster than serial"),
            "{}",
            verdict.text
        );
        assert_not_worth_it(&verdict);
    }

    #[test]
    fn touching_process_and_thread_ranges_are_within_noise() {
        let reports = four((0.60, 0.70), (0.65, 0.75), (0.50, 0.60), (1.0, 1.1));
        assert_eq!(verdict(&reports, 100).finding, Finding::WithinNoiseOfThreads);
    }

    #[test]
    fn processes_losing_to_threads_beyond_noise_say_what_isolation_costs() {
        let mut reports = four((0.60, 0.64), (0.61, 0.65), (0.48, 0.52), (1.0, 1.1));
        reports[0].peak_pss_bytes = 6 << 20;
        reports[2].peak_pss_bytes = 4 << 20;
        let verdict = verdict(&reports, 100);
        assert_eq!(verdict.finding, Finding::IsolationCosts, "{}", verdict.text);
        // 0.62 / 0.50 − 1 = 24 %, and 6 − 4 MiB.
        assert!(
            verdict.text.contains("isolation costs 24.0% of wall time"),
            "{}",
            verdict.text
        );
        assert!(verdict.text.contains("+2.0 MiB PSS"), "{}", verdict.text);
        assert!(
            !verdict.text.contains("raise batch"),
            "no overhead figure, no hint: {}",
            verdict.text
        );
    }

    #[test]
    fn isolation_cost_from_messages_says_to_raise_batch() {
        let mut reports = four((0.60, 0.64), (0.61, 0.65), (0.48, 0.52), (1.0, 1.1));
        // Serial CPU 1.05 s over 1000 items: 1050 µs of work per item; 2000 µs of overhead exceeds it.
        reports[0].overhead_us_per_item = Some(2000.0);
        let verdict = verdict(&reports, 1000);
        assert!(verdict.text.contains("raise batch"), "{}", verdict.text);
        assert!(verdict.text.contains("1050.0 µs"), "{}", verdict.text);
        reports[0].overhead_us_per_item = Some(1000.0);
        assert!(!super::verdict(&reports, 1000).text.contains("raise batch"));
    }

    #[test]
    fn processes_faster_than_threads_beyond_noise() {
        let reports = four((0.40, 0.45), (0.41, 0.46), (0.50, 0.55), (1.0, 1.1));
        let verdict = verdict(&reports, 100);
        assert_eq!(verdict.finding, Finding::FasterThanThreads, "{}", verdict.text);
    }

    #[test]
    fn the_faster_process_executor_is_the_one_judged() {
        // Spawned processes lose to serial, the fork server's win: the job pays for itself when forked.
        let reports = four((1.2, 1.3), (0.50, 0.55), (0.50, 0.56), (1.0, 1.1));
        let verdict = verdict(&reports, 100);
        assert_eq!(verdict.finding, Finding::WithinNoiseOfThreads, "{}", verdict.text);
        assert!(verdict.text.contains("process/forkserver runs it"), "{}", verdict.text);
    }

    #[test]
    fn a_crash_taking_the_thread_run_down_is_a_separate_fact() {
        let mut reports = four((0.9, 1.1), (0.95, 1.2), (0.5, 0.6), (1.05, 1.3));
        for report in &mut reports {
            report.crash_takes_job_down = Some(!report.executor.starts_with("process"));
        }
        let verdict = verdict(&reports, 100);
        // The crash does not change the finding on speed: the job still does not pay for itself.
        assert_eq!(verdict.finding, Finding::NoFasterThanSerial, "{}", verdict.text);
        assert!(
            verdict
                .text
                .contains("one crashing item took the whole thread run down, while the process runs"),
            "{}",
            verdict.text
        );
        reports[0].crash_takes_job_down = Some(true);
        let verdict = super::verdict(&reports, 100);
        assert!(
            verdict
                .text
                .ends_with("one crashing item took the whole thread run down"),
            "{}",
            verdict.text
        );
    }

    #[test]
    fn without_the_isolation_check_no_crash_fact_is_claimed() {
        let reports = four((0.50, 0.60), (0.52, 0.62), (0.45, 0.51), (1.0, 1.1));
        assert!(!verdict(&reports, 100).text.contains("crash"));
    }

    #[test]
    fn only_processes_can_run_a_job_with_a_timeout() {
        let why = "timeout needs worker processes; it cannot apply to --executor thread";
        let reports = vec![
            report("process", 0.5, 0.6),
            report("process/forkserver", 0.5, 0.6),
            refused("thread", why),
            refused("serial", why),
        ];
        let verdict = verdict(&reports, 100);
        assert_eq!(verdict.finding, Finding::OnlyProcesses, "{}", verdict.text);
        assert!(verdict.text.contains(why), "{}", verdict.text);
    }

    #[test]
    fn threads_refused_but_serial_measured() {
        let reports = vec![
            report("process", 0.5, 0.6),
            refused("thread", "no threads today"),
            report("serial", 1.0, 1.1),
        ];
        let verdict = verdict(&reports, 100);
        assert_eq!(verdict.finding, Finding::FasterThanSerial, "{}", verdict.text);
        assert!(verdict.text.contains("no threads today"), "{}", verdict.text);
    }

    #[test]
    fn no_process_run_or_no_serial_run_is_not_enough() {
        let reports = vec![
            refused("process", "no"),
            report("thread", 1.0, 1.1),
            report("serial", 1.0, 1.1),
        ];
        assert_eq!(verdict(&reports, 100).finding, Finding::NotEnoughRuns);
        let reports = vec![
            report("process", 1.0, 1.1),
            report("thread", 1.0, 1.1),
            refused("serial", "no"),
        ];
        assert_eq!(verdict(&reports, 100).finding, Finding::NotEnoughRuns);
        assert_eq!(verdict(&[], 0).finding, Finding::NotEnoughRuns);
    }

    #[test]
    fn unusable_numbers_count_as_not_measured() {
        // A zero or NaN wall time cannot be divided by or ordered: such a serial run is no baseline.
        let mut reports = four((0.5, 0.6), (0.5, 0.6), (0.5, 0.6), (1.0, 1.1));
        reports[3].wall_min_s = 0.0;
        assert_eq!(verdict(&reports, 100).finding, Finding::NotEnoughRuns);
        reports[3].wall_min_s = f64::NAN;
        assert_eq!(verdict(&reports, 100).finding, Finding::NotEnoughRuns);
    }

    #[test]
    fn single_runs_say_that_noise_is_unknown() {
        let reports = vec![runs("process", &[0.5]), runs("thread", &[0.4]), runs("serial", &[1.0])];
        let verdict = verdict(&reports, 100);
        assert_eq!(verdict.finding, Finding::IsolationCosts, "{}", verdict.text);
        assert!(verdict.text.contains("one run each"), "{}", verdict.text);
        let three = four((0.50, 0.60), (0.52, 0.62), (0.45, 0.51), (1.0, 1.1));
        assert!(!super::verdict(&three, 100).text.contains("one run each"));
    }
}
