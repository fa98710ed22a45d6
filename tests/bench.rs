//! `supervisor bench`: the real binary with `--quick --json` prints one well-formed JSON object in which every
//! expected number is present, finite and positive.
//!
//! Timings are never asserted beyond that: they depend on the machine and its load. That the measurements
//! measure the right thing is checked inside the bench itself (echoed numbers and page sums must come back
//! exactly, every noop item must end ok), which makes the command fail, and this test with it, when they do not.

#[path = "common/mod.rs"]
#[expect(
    dead_code,
    reason = "the helpers are shared with e2e.rs; this suite uses only some of them"
)]
mod common;

use std::path::Path;

use common::run;

/// Every summary of repeated measurements the report must hold, by JSON pointer.
const STATS: &[&str] = &[
    "/start_us/spawn",
    "/start_us/forkserver",
    "/start_us/thread",
    "/start_us/bare_thread",
];

/// The paths of every round-trip placement.
const ROUND_TRIPS: &[&str] = &["socket_frames", "ipc_channel", "thread_mpsc", "pipe"];

/// The paths of every hand-off placement.
const HAND_OFFS: &[&str] = &["ipc_bytes", "shared_memory"];

const NOTES: &[&str] = &[
    "/start_us/note",
    "/round_trip_us/note",
    "/bandwidth_gb_s/note",
    "/dispatch/note",
];

fn positive(report: &serde_json::Value, pointer: &str) -> f64 {
    let value = report
        .pointer(pointer)
        .unwrap_or_else(|| panic!("{pointer} is missing"));
    let number = value
        .as_f64()
        .unwrap_or_else(|| panic!("{pointer} is not a number: {value}"));
    assert!(
        number.is_finite() && number > 0.0,
        "{pointer} is {number}, not a finite positive number"
    );
    number
}

fn check_stats(report: &serde_json::Value, pointer: &str, with_p99: bool) {
    let n = positive(report, &format!("{pointer}/n"));
    assert_eq!(n.fract(), 0.0, "{pointer}/n is a count");
    let median = positive(report, &format!("{pointer}/median"));
    let min = positive(report, &format!("{pointer}/min"));
    let max = positive(report, &format!("{pointer}/max"));
    assert!(min <= median && median <= max, "{pointer}: min ≤ median ≤ max");
    if with_p99 {
        let p99 = positive(report, &format!("{pointer}/p99"));
        assert!(min <= p99 && p99 <= max, "{pointer}: min ≤ p99 ≤ max");
    }
}

#[test]
fn quick_json_report_has_every_number_finite_and_positive() {
    let ran = run(Path::new("/"), ["bench", "--quick", "--json"], 0);
    let report = ran.summary();
    assert_eq!(report["quick"], true);
    positive(&report, "/cpus");
    positive(&report, "/bandwidth_gb_s/bytes");
    positive(&report, "/dispatch/workers");
    for pointer in STATS {
        check_stats(&report, pointer, false);
    }
    // Round trips and hand-offs are pinned to two different CPUs only where this process may use two.
    let mut placements = vec!["scheduled", "same_cpu"];
    if report["cpus"].as_u64() >= Some(2) {
        placements.push("other_cpu");
    }
    for placement in placements {
        for path in ROUND_TRIPS {
            check_stats(&report, &format!("/round_trip_us/{placement}/{path}"), true);
        }
        for path in HAND_OFFS {
            check_stats(&report, &format!("/bandwidth_gb_s/{placement}/{path}"), false);
        }
    }
    for pointer in NOTES {
        let note = report
            .pointer(pointer)
            .and_then(serde_json::Value::as_str)
            .unwrap_or_else(|| panic!("{pointer} is missing"));
        assert!(
            !note.is_empty() && !note.contains("NaN") && !note.contains("n/a"),
            "{pointer}: {note}"
        );
    }
    for executor in ["process", "thread"] {
        let rows = report["dispatch"][executor]
            .as_array()
            .unwrap_or_else(|| panic!("/dispatch/{executor} is not a list"));
        let batches: Vec<&str> = rows.iter().filter_map(|row| row["batch"].as_str()).collect();
        assert_eq!(batches, ["1", "16", "256", "auto"], "/dispatch/{executor} batch sizes");
        for index in 0..rows.len() {
            let row = format!("/dispatch/{executor}/{index}");
            positive(&report, &format!("{row}/items"));
            positive(&report, &format!("{row}/items_per_batch"));
            check_stats(&report, &format!("{row}/us_per_item"), false);
            check_stats(&report, &format!("{row}/items_per_s"), false);
        }
    }
}
