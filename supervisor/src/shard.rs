//! Shards: one job split over the N copies a cluster scheduler starts (a Slurm job array, a Kubernetes
//! Indexed Job), each running its own supervisor on its own node.
//!
//! ## The split
//! Shard `i` of `n` owns the contiguous block of item indices `[⌊i·M/n⌋, ⌊(i+1)·M/n⌋)` of a job of `M` items.
//! The blocks are consecutive, disjoint and cover `0..M`; their sizes differ by at most one. The split depends on
//! nothing but the item count, so it is the same for every input source (a range, file chunks, a glob, or any
//! source added later), and item indices in the results stay global. Contiguous blocks keep the dispatcher's
//! batches runs of consecutive items, as without shards.
//!
//! ## Where a shard comes from
//! In order: `--shard I/N`; Slurm's `SLURM_ARRAY_TASK_ID`, which is the shard index when the shard count is
//! given (`--shard-count` or `[shard] count`), and otherwise counted among `SLURM_ARRAY_TASK_COUNT` tasks (offset
//! by `SLURM_ARRAY_TASK_MIN` and divided by `SLURM_ARRAY_TASK_STEP` when the array does not count 0, 1, 2…);
//! Kubernetes' `JOB_COMPLETION_INDEX` with the count from `--shard-count` or `[shard] count`. Without any of
//! these the run owns every item and writes the plain results file.
//!
//! ## Files
//! Each shard writes its own results file, `results.jsonl` → `results.shard-0003-of-0016.jsonl` (the index and
//! count zero-padded to at least four digits, inserted before the extension), and its own journal beside it, so
//! `--resume` works per shard. `supervisor merge` ([`crate::merge`]) puts them back together.

use std::ops::Range;
use std::path::{Path, PathBuf};

/// Largest shard count accepted (as for `[shard] count`).
pub use shared::job::MAX_SHARDS;

/// Shard `index` of `count` (0-based).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Shard {
    pub index: u64,
    pub count: u64,
}

/// A shard, with the reason it was chosen (for the user).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chosen {
    pub shard: Shard,
    /// E.g. `--shard 3/16` or `SLURM_ARRAY_TASK_ID=3, SLURM_ARRAY_TASK_COUNT=16`.
    pub why: String,
}

/// A shard that cannot be determined.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ShardError(pub String);

impl Shard {
    /// A shard, checked: `count` from 1 to [`MAX_SHARDS`], `index` below `count`.
    pub fn new(index: u64, count: u64) -> Result<Shard, ShardError> {
        if count == 0 || count > MAX_SHARDS {
            return Err(ShardError(format!("shard count {count}: expected 1 to {MAX_SHARDS}")));
        }
        if index >= count {
            return Err(ShardError(format!(
                "shard index {index} of {count}: expected 0 to {}",
                count - 1
            )));
        }
        Ok(Shard { index, count })
    }

    /// Parses `I/N` (the form of `--shard`).
    pub fn parse(text: &str) -> Result<Shard, ShardError> {
        let bad = || {
            ShardError(format!(
                "`{text}`: expected I/N, e.g. 3/16 (shard I of N, I from 0 to N-1)"
            ))
        };
        let (index, count) = text.trim().split_once('/').ok_or_else(bad)?;
        let index = index.trim().parse().map_err(|_| bad())?;
        let count = count.trim().parse().map_err(|_| bad())?;
        Shard::new(index, count)
    }

    /// The block of item indices this shard owns in a job of `items` items.
    pub fn span(&self, items: u64) -> Range<u64> {
        let bound = |k: u64| (u128::from(k) * u128::from(items) / u128::from(self.count)) as u64;
        bound(self.index)..bound(self.index + 1)
    }

    /// The shard that owns item `item` of a job of `items` items (the inverse of [`Shard::span`]).
    pub fn owner(item: u64, items: u64, count: u64) -> u64 {
        // Estimated from the proportion, then corrected against the real bounds so rounding cannot misplace it.
        if items == 0 || count == 0 {
            return 0;
        }
        let estimate = (u128::from(item) * u128::from(count) / u128::from(items)) as u64;
        let mut shard = estimate.min(count - 1);
        while shard > 0 && (Shard { index: shard, count }).span(items).start > item {
            shard -= 1;
        }
        while shard + 1 < count && (Shard { index: shard, count }).span(items).end <= item {
            shard += 1;
        }
        shard
    }

    /// This shard's results file: `results.jsonl` → `results.shard-0003-of-0016.jsonl`.
    pub fn results_path(&self, results: &Path) -> PathBuf {
        let tag = self.tag();
        let name = results
            .file_name()
            .map(|name| name.to_string_lossy().into_owned())
            .unwrap_or_default();
        let named = match name.rsplit_once('.') {
            Some((stem, extension)) if !stem.is_empty() => format!("{stem}.{tag}.{extension}"),
            _ => format!("{name}.{tag}"),
        };
        results.with_file_name(named)
    }

    /// `shard-0003-of-0016`.
    pub fn tag(&self) -> String {
        let width = self.count.to_string().len().max(4);
        format!("shard-{:0width$}-of-{:0width$}", self.index, self.count)
    }
}

impl std::fmt::Display for Shard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

/// Where a run's shard may come from besides the environment.
#[derive(Debug, Clone, Copy, Default)]
pub struct ShardFlags {
    /// `--shard I/N`.
    pub shard: Option<Shard>,
    /// `--shard-count N`.
    pub count: Option<u64>,
    /// `[shard] count` of the job file.
    pub job_count: Option<u64>,
}

/// Environment variables read, in the order they are consulted.
pub const SLURM_ID: &str = "SLURM_ARRAY_TASK_ID";
pub const SLURM_COUNT: &str = "SLURM_ARRAY_TASK_COUNT";
pub const SLURM_MIN: &str = "SLURM_ARRAY_TASK_MIN";
pub const SLURM_STEP: &str = "SLURM_ARRAY_TASK_STEP";
pub const K8S_INDEX: &str = "JOB_COMPLETION_INDEX";

/// Chooses this run's shard from the flags, then the environment (`env` looks a variable up). `None`: not
/// sharded.
pub fn choose(flags: ShardFlags, env: impl Fn(&str) -> Option<String>) -> Result<Option<Chosen>, ShardError> {
    if let Some(shard) = flags.shard {
        return Ok(Some(Chosen {
            shard,
            why: format!("--shard {shard}"),
        }));
    }
    let number = |name: &str| -> Result<Option<u64>, ShardError> {
        match env(name) {
            None => Ok(None),
            Some(text) if text.trim().is_empty() => Ok(None),
            Some(text) => text
                .trim()
                .parse()
                .map(Some)
                .map_err(|_| ShardError(format!("{name}={text}: expected a non-negative integer"))),
        }
    };
    if let Some(id) = number(SLURM_ID)? {
        return slurm_shard(id, fixed_count(flags), &number).map(Some);
    }
    if let Some(index) = number(K8S_INDEX)? {
        let (count, from) = match fixed_count(flags) {
            Some(given) => given,
            None => {
                return Err(ShardError(format!(
                    "{K8S_INDEX}={index} is set (a Kubernetes Indexed Job) but the number of shards is unknown: \
                     pass --shard-count N or set [shard] count in the job file"
                )));
            }
        };
        let shard = Shard::new(index, count).map_err(|error| ShardError(format!("{K8S_INDEX}={index}: {error}")))?;
        return Ok(Some(Chosen {
            shard,
            why: format!("{K8S_INDEX}={index}, {from}"),
        }));
    }
    if let Some(count) = flags.count {
        return Err(ShardError(format!(
            "--shard-count {count} given, but neither {K8S_INDEX} nor {SLURM_ID} is set: pass --shard I/{count}"
        )));
    }
    Ok(None)
}

/// The shard count given by `--shard-count` or `[shard] count`, with where it came from.
fn fixed_count(flags: ShardFlags) -> Option<(u64, String)> {
    match (flags.count, flags.job_count) {
        (Some(count), _) => Some((count, format!("--shard-count {count}"))),
        (None, Some(count)) => Some((count, format!("[shard] count = {count}"))),
        (None, None) => None,
    }
}

/// The shard of a Slurm array task. With a shard count given, the task id is the shard index, so a subset of
/// the shards can be submitted again (`sbatch --array=1,3`); otherwise it is `(ID − MIN) / STEP` of `COUNT`.
fn slurm_shard(
    id: u64,
    fixed: Option<(u64, String)>,
    number: &impl Fn(&str) -> Result<Option<u64>, ShardError>,
) -> Result<Chosen, ShardError> {
    if let Some((count, from)) = fixed {
        let why = format!("{SLURM_ID}={id}, {from}");
        let shard = Shard::new(id, count).map_err(|error| ShardError(format!("{why}: {error}")))?;
        return Ok(Chosen { shard, why });
    }
    let count = number(SLURM_COUNT)?.ok_or_else(|| {
        ShardError(format!(
            "{SLURM_ID}={id} is set but {SLURM_COUNT} is not: cannot tell how many shards the array has \
             (pass --shard I/N)"
        ))
    })?;
    let min = number(SLURM_MIN)?.unwrap_or(0);
    let step = number(SLURM_STEP)?.unwrap_or(1).max(1);
    let mut why = format!("{SLURM_ID}={id}, {SLURM_COUNT}={count}");
    if min != 0 {
        why.push_str(&format!(", {SLURM_MIN}={min}"));
    }
    if step != 1 {
        why.push_str(&format!(", {SLURM_STEP}={step}"));
    }
    let offset = id.checked_sub(min).filter(|offset| offset % step == 0).ok_or_else(|| {
        ShardError(format!(
            "{why}: the task id is not MIN + k·STEP; shards need an array of consecutive ids such as \
             --array=0-{}",
            count.saturating_sub(1)
        ))
    })?;
    let shard = Shard::new(offset / step, count).map_err(|error| ShardError(format!("{why}: {error}")))?;
    Ok(Chosen { shard, why })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env<'a>(vars: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |name| {
            vars.iter()
                .find(|(key, _)| *key == name)
                .map(|(_, value)| value.to_string())
        }
    }

    #[test]
    fn blocks_cover_every_item_once_and_differ_by_at_most_one() {
        for items in [0u64, 1, 2, 5, 7, 10, 100, 1001] {
            for count in [1u64, 2, 3, 7, 16] {
                let mut next = 0;
                let mut sizes = Vec::new();
                for index in 0..count {
                    let span = Shard { index, count }.span(items);
                    assert_eq!(span.start, next, "{items} items, shard {index}/{count}");
                    for item in span.clone() {
                        assert_eq!(
                            Shard::owner(item, items, count),
                            index,
                            "item {item} of {items}, {count} shards"
                        );
                    }
                    sizes.push(span.end - span.start);
                    next = span.end;
                }
                assert_eq!(next, items);
                let (lo, hi) = (sizes.iter().min().copied(), sizes.iter().max().copied());
                assert!(hi.unwrap_or(0) - lo.unwrap_or(0) <= 1, "{sizes:?}");
            }
        }
        // Large counts do not overflow.
        let span = Shard { index: 2, count: 3 }.span(u64::MAX);
        assert_eq!(span.end, u64::MAX);
    }

    #[test]
    fn parse_accepts_i_of_n_and_explains_mistakes() {
        assert_eq!(Shard::parse("3/16"), Ok(Shard { index: 3, count: 16 }));
        assert!(
            Shard::parse("16/16")
                .expect_err("an error")
                .0
                .contains("expected 0 to 15")
        );
        assert!(Shard::parse("0/0").expect_err("an error").0.contains("shard count 0"));
        assert!(Shard::parse("3").expect_err("an error").0.contains("expected I/N"));
        assert!(Shard::parse("a/b").expect_err("an error").0.contains("expected I/N"));
    }

    #[test]
    fn results_files_are_named_per_shard() {
        let shard = Shard { index: 3, count: 16 };
        assert_eq!(
            shard.results_path(Path::new("/r/results.jsonl")),
            Path::new("/r/results.shard-0003-of-0016.jsonl")
        );
        assert_eq!(
            shard.results_path(Path::new("/r/out")),
            Path::new("/r/out.shard-0003-of-0016")
        );
        assert_eq!(
            Shard {
                index: 12345,
                count: 20000
            }
            .results_path(Path::new("a.b.json")),
            Path::new("a.b.shard-12345-of-20000.json")
        );
    }

    #[test]
    fn the_flag_wins_then_slurm_then_kubernetes() {
        let flags = ShardFlags {
            shard: Some(Shard { index: 1, count: 4 }),
            ..ShardFlags::default()
        };
        let slurm = [(SLURM_ID, "2"), (SLURM_COUNT, "4"), (K8S_INDEX, "3")];
        assert_eq!(
            choose(flags, env(&slurm)).expect("no error").map(|c| c.shard),
            flags.shard
        );
        let chosen = choose(ShardFlags::default(), env(&slurm))
            .expect("no error")
            .expect("sharded");
        assert_eq!(chosen.shard, Shard { index: 2, count: 4 });
        assert_eq!(chosen.why, "SLURM_ARRAY_TASK_ID=2, SLURM_ARRAY_TASK_COUNT=4");
        assert_eq!(choose(ShardFlags::default(), env(&[])).expect("no error"), None);
    }

    #[test]
    fn slurm_arrays_not_starting_at_zero_are_offset() {
        let vars = [(SLURM_ID, "12"), (SLURM_COUNT, "4"), (SLURM_MIN, "10")];
        let chosen = choose(ShardFlags::default(), env(&vars))
            .expect("no error")
            .expect("sharded");
        assert_eq!(chosen.shard, Shard { index: 2, count: 4 });
        assert!(chosen.why.contains("SLURM_ARRAY_TASK_MIN=10"));
        let stepped = [
            (SLURM_ID, "14"),
            (SLURM_COUNT, "4"),
            (SLURM_MIN, "10"),
            (SLURM_STEP, "2"),
        ];
        assert_eq!(
            choose(ShardFlags::default(), env(&stepped))
                .expect("no error")
                .map(|c| c.shard),
            Some(Shard { index: 2, count: 4 })
        );
        let beyond = [(SLURM_ID, "4"), (SLURM_COUNT, "4")];
        assert!(
            choose(ShardFlags::default(), env(&beyond))
                .expect_err("an error")
                .0
                .contains("expected 0 to 3")
        );
        let no_count = [(SLURM_ID, "1")];
        assert!(
            choose(ShardFlags::default(), env(&no_count))
                .expect_err("an error")
                .0
                .contains("SLURM_ARRAY_TASK_COUNT")
        );
    }

    #[test]
    fn kubernetes_needs_a_count_from_the_flag_or_the_job() {
        let vars = [(K8S_INDEX, "5")];
        let error = choose(ShardFlags::default(), env(&vars)).expect_err("an error");
        assert!(error.0.contains("--shard-count"), "{error}");
        let from_job = ShardFlags {
            job_count: Some(8),
            ..ShardFlags::default()
        };
        let chosen = choose(from_job, env(&vars)).expect("no error").expect("sharded");
        assert_eq!(chosen.shard, Shard { index: 5, count: 8 });
        assert_eq!(chosen.why, "JOB_COMPLETION_INDEX=5, [shard] count = 8");
        let from_flag = ShardFlags {
            count: Some(6),
            job_count: Some(8),
            ..ShardFlags::default()
        };
        assert_eq!(
            choose(from_flag, env(&vars)).expect("no error").map(|c| c.shard),
            Some(Shard { index: 5, count: 6 })
        );
        assert!(choose(from_flag, env(&[])).expect_err("an error").0.contains("neither"));
    }

    #[test]
    fn with_a_shard_count_a_slurm_task_id_is_the_shard_index() {
        // `sbatch --array=3 job.sh` runs shard 3 again, although the array has one task starting at 3.
        let vars = [(SLURM_ID, "3"), (SLURM_COUNT, "1"), (SLURM_MIN, "3")];
        let flags = ShardFlags {
            count: Some(4),
            ..ShardFlags::default()
        };
        let chosen = choose(flags, env(&vars)).expect("no error").expect("sharded");
        assert_eq!(chosen.shard, Shard { index: 3, count: 4 });
        assert_eq!(chosen.why, "SLURM_ARRAY_TASK_ID=3, --shard-count 4");
        let beyond = [(SLURM_ID, "4"), (SLURM_COUNT, "1")];
        assert!(
            choose(flags, env(&beyond))
                .expect_err("an error")
                .0
                .contains("expected 0 to 3")
        );
    }
}
