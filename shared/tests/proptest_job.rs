//! Property tests of the job-file parser: whatever the text, `JobSpec::parse` returns a job or an error located
//! inside the text — it never panics. Two generators: arbitrary strings (mostly syntax errors), and well-formed
//! TOML that uses the schema's own tables and keys with random values of random types (which reaches the
//! validation code behind the syntax).

use std::path::Path;

use proptest::prelude::*;
use shared::item::range_item_count;
use shared::job::{
    InputSpec, JobError, JobSpec, MAX_DURATION, MAX_RANGE_ITEMS, MAX_RETRIES, MAX_WORKERS, TABLE_KEYS, WorkerCount,
};
use shared::units::{parse_duration, parse_size};

/// Parses `text`; an error must be located in the text (line and column within it) and display without panic.
fn check(text: &str) -> Result<(), TestCaseError> {
    match JobSpec::parse(Path::new("/nonexistent-jobs/job.toml"), text.to_string()) {
        Ok(_) => {}
        Err(error @ JobError::Invalid { .. }) => {
            let JobError::Invalid { line, column, .. } = &error else {
                unreachable!()
            };
            let lines = text.split('\n').count();
            prop_assert!(*line >= 1 && *line <= lines, "line {line} of {lines}: {error}");
            prop_assert!(*column >= 1, "column {column}: {error}");
            let shown = error.to_string();
            prop_assert!(shown.starts_with("/nonexistent-jobs/job.toml:"), "{shown}");
        }
        Err(error) => prop_assert!(false, "parse returned a read error: {error}"),
    }
    Ok(())
}

/// A TOML value of any type, biased towards the edges: extremes, zero, negatives, empty and odd strings.
fn value() -> impl Strategy<Value = String> {
    let leaf = prop_oneof![
        prop_oneof![
            Just(0i64),
            Just(1),
            Just(-1),
            Just(i64::MAX),
            Just(i64::MIN),
            Just(1024),
            Just(1025),
            any::<i64>()
        ]
        .prop_map(|n| n.to_string()),
        prop_oneof![
            Just(f64::NAN),
            Just(f64::INFINITY),
            Just(-0.0),
            Just(1e300),
            any::<f64>()
        ]
        .prop_map(|f| format!("{f:?}").replace("NaN", "nan")),
        any::<bool>().prop_map(|b| b.to_string()),
        prop_oneof![
            Just(String::new()),
            Just("auto".to_string()),
            Just("-1s".to_string()),
            Just("0s".to_string()),
            Just("12XB".to_string()),
            Just("1.5GiB".to_string()),
            Just("99999999999TiB".to_string()),
            Just("1e308h".to_string()),
            Just("now,fail=0%".to_string()),
            Just("fail=100%".to_string()),
            Just("first-failure".to_string()),
            Just("/dev/null".to_string()),
            Just("/".to_string()),
            Just("[".to_string()),
            Just("**/*".to_string()),
            Just("thread".to_string()),
            Just("forkserver".to_string()),
            "\\PC{0,12}",
        ]
        .prop_map(|s| format!("{s:?}")),
        Just("1979-05-27T07:32:00Z".to_string()),
    ];
    leaf.prop_recursive(2, 8, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(|items| format!("[{}]", items.join(", "))),
            prop::collection::vec((key(), inner), 0..4).prop_map(|pairs| {
                let mut seen = std::collections::HashSet::new();
                let pairs: Vec<String> = pairs
                    .into_iter()
                    .filter(|(k, _)| seen.insert(k.clone()))
                    .map(|(k, v)| format!("{k} = {v}"))
                    .collect();
                format!("{{ {} }}", pairs.join(", "))
            }),
        ]
    })
}

/// Every key the schema knows (and one it does not), so that most documents get past "unknown key".
fn key() -> impl Strategy<Value = String> {
    prop::sample::select(vec![
        "name",
        "range",
        "file",
        "glob",
        "split",
        "chunk_bytes",
        "start",
        "end",
        "chunk",
        "builtin",
        "args",
        "timeout",
        "retries",
        "retry_backoff",
        "count",
        "batch",
        "executor",
        "memory_limit",
        "cpu_limit",
        "max_tasks",
        "core_dumps",
        "max_restarts",
        "within",
        "halt",
        "grace",
        "results",
        "order",
        "reduce",
        "journal",
        "pattern",
        "segfault",
        "oom_cap",
        "colour",
    ])
    .prop_map(str::to_string)
}

/// The keys of each table, so that documents are mostly schema-shaped: the schema's own list, every key.
fn table_keys(table: &str) -> Vec<&'static str> {
    TABLE_KEYS
        .iter()
        .find(|(name, _)| *name == table)
        .map_or_else(Vec::new, |(_, keys)| keys.to_vec())
}

/// A job file: the schema's tables, each with a random subset of its keys set to random values.
fn job_document() -> impl Strategy<Value = String> {
    const TABLES: [&str; 6] = ["input", "task", "workers", "supervise", "output", "shard"];
    let sections: Vec<_> = TABLES
        .iter()
        .map(|table| {
            let keys = table_keys(table);
            let n = keys.len();
            (
                any::<bool>(),
                prop::sample::subsequence(keys, 0..=n),
                prop::collection::vec(value(), n),
            )
                .prop_map(move |(present, keys, values)| {
                    if !present && *table != "input" && *table != "task" {
                        return String::new();
                    }
                    let lines: Vec<String> = keys
                        .iter()
                        .zip(values)
                        .map(|(key, value)| format!("{key} = {value}"))
                        .collect();
                    format!("[{table}]\n{}\n", lines.join("\n"))
                })
        })
        .collect();
    (prop::option::of(value()), sections).prop_map(|(name, sections)| {
        let name = name.map(|n| format!("name = {n}\n")).unwrap_or_default();
        format!("{name}{}", sections.concat())
    })
}

/// A job that is valid except for one key, which gets a random value.
fn one_bad_key() -> impl Strategy<Value = String> {
    let base = [
        ("input", "range", "{ start = 0, end = 100, chunk = 7 }"),
        ("task", "builtin", "\"fault\""),
        ("task", "timeout", "\"5s\""),
        ("task", "retries", "1"),
        ("task", "args", "{ exit = [1] }"),
        ("workers", "count", "2"),
        ("workers", "env", "{ A = \"1\" }"),
        ("workers", "batch", "\"auto\""),
        ("workers", "memory_limit", "\"256MiB\""),
        ("supervise", "halt", "\"fail=3\""),
        ("output", "reduce", "\"sum\""),
    ];
    (0..base.len(), value()).prop_map(move |(bad, value)| {
        let mut text = String::new();
        let mut table = "";
        for (i, (t, k, v)) in base.iter().enumerate() {
            if *t != table {
                text.push_str(&format!("[{t}]\n"));
                table = t;
            }
            let v = if i == bad { value.as_str() } else { v };
            text.push_str(&format!("{k} = {v}\n"));
        }
        text
    })
}

/// What an accepted job may hold: every value in its documented range (strict parsing: a value outside it, or of
/// another type, is refused rather than read as something else).
fn check_ranges(text: &str) -> Result<(), TestCaseError> {
    let Ok(spec) = JobSpec::parse(Path::new("/nonexistent-jobs/job.toml"), text.to_string()) else {
        return Ok(());
    };
    let durations = [
        spec.task.timeout,
        Some(spec.task.retry_backoff),
        spec.workers.cpu_limit,
        Some(spec.supervise.within),
        Some(spec.supervise.grace),
        Some(spec.supervise.start_timeout),
    ];
    for duration in durations.into_iter().flatten() {
        prop_assert!(duration <= MAX_DURATION, "{duration:?} accepted in\n{text}");
    }
    for positive in [spec.task.timeout, spec.workers.cpu_limit].into_iter().flatten() {
        prop_assert!(!positive.is_zero(), "a zero duration accepted in\n{text}");
    }
    prop_assert!(spec.task.retries <= MAX_RETRIES, "{text}");
    if let WorkerCount::Fixed(n) = spec.workers.count {
        prop_assert!((1..=MAX_WORKERS).contains(&n), "{text}");
    }
    if let Some(limit) = spec.workers.memory_limit {
        prop_assert!(limit >= 1 << 20, "{text}");
    }
    if let InputSpec::Range { start, end, chunk } = spec.input {
        prop_assert!(start < end && chunk >= 1, "{text}");
        prop_assert!(range_item_count(start, end, chunk) <= MAX_RANGE_ITEMS, "{text}");
    }
    // A datetime read as a table would show the TOML reader's private key.
    let shown = format!("{:?} {:?}", spec.task.args, spec.workers.isolation.env);
    prop_assert!(
        !shown.contains("toml_private"),
        "a datetime accepted as a table in\n{text}"
    );
    prop_assert!(!shown.contains("Null"), "a null (nan, inf) accepted in args in\n{text}");
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_text_never_panics(text in "\\PC*") {
        check(&text)?;
    }

    #[test]
    fn arbitrary_bytes_as_text_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        check(&String::from_utf8_lossy(&bytes))?;
    }

    #[test]
    fn schema_shaped_documents_never_panic(text in job_document()) {
        check(&text)?;
    }

    #[test]
    fn accepted_documents_hold_values_in_range(text in job_document()) {
        check_ranges(&text)?;
    }

    #[test]
    fn one_wrong_value_is_refused_or_in_range(text in one_bad_key()) {
        check_ranges(&text)?;
    }

    #[test]
    fn one_wrong_value_never_panics(text in one_bad_key()) {
        check(&text)?;
    }

    #[test]
    fn sizes_and_durations_never_panic(text in "[-+0-9._ eE]{0,12}[a-zA-Z]{0,4}") {
        let _ = parse_size(&text);
        let _ = parse_duration(&text);
    }
}
