//! How many CPUs this process may use: what `[workers] count = "auto"` resolves to.
//!
//! On a cluster node the scheduler gives a job a few of the node's CPUs, and running one worker per *node* CPU
//! would oversubscribe them. Three limits are read, and the smallest wins:
//!
//! 1. `SLURM_CPUS_PER_TASK`, set by Slurm for `--cpus-per-task` (the only limit visible when the cluster runs
//!    without CPU binding, `TaskPlugin=task/none`);
//! 2. the CPU affinity mask (`sched_getaffinity`: `taskset`, Slurm's `task/affinity`, `docker --cpuset-cpus`);
//! 3. the cgroup CPU quota, rounded up to whole CPUs (cgroup v2 `cpu.max`, v1 `cpu.cfs_quota_us` /
//!    `cpu.cfs_period_us`, of this process's cgroup and its ancestors: Kubernetes `resources.limits.cpu`,
//!    Slurm's `task/cgroup`), also as the standard library reads it (`available_parallelism`).
//!
//! `--workers` and `[workers] count = N` override all of them.

use std::path::{Path, PathBuf};

/// The CPUs this process may use, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cpus {
    pub count: usize,
    /// E.g. `SLURM_CPUS_PER_TASK=4; affinity mask: 2 CPUs; no cgroup CPU quota`.
    pub why: String,
}

/// Environment variable Slurm sets from `--cpus-per-task`.
pub const SLURM_CPUS_PER_TASK: &str = "SLURM_CPUS_PER_TASK";

/// Reads every limit (see the module documentation) and takes the smallest.
pub fn available() -> Cpus {
    let slurm = std::env::var(SLURM_CPUS_PER_TASK)
        .ok()
        .and_then(|text| text.trim().parse::<usize>().ok())
        .filter(|&n| n > 0);
    let std_count = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
    combine(slurm, affinity(), cgroup_quota(), std_count)
}

/// The smallest of the limits that are set, with each named.
fn combine(slurm: Option<usize>, affinity: Option<usize>, quota: Option<Quota>, std_count: usize) -> Cpus {
    let mut parts = Vec::new();
    let mut count = std_count.max(1);
    if let Some(n) = slurm {
        parts.push(format!("{SLURM_CPUS_PER_TASK}={n}"));
        count = count.min(n);
    }
    match affinity {
        Some(n) => {
            parts.push(format!("affinity mask: {n} CPU{}", plural(n)));
            count = count.min(n.max(1));
        }
        None => parts.push("affinity mask unreadable".into()),
    }
    match quota {
        Some(quota) => {
            let cpus = quota.cpus();
            parts.push(format!(
                "cgroup CPU quota: {} µs per {} µs = {cpus} CPU{} ({})",
                quota.quota_us,
                quota.period_us,
                plural(cpus),
                quota.file.display()
            ));
            count = count.min(cpus.max(1));
        }
        None => parts.push("no cgroup CPU quota".into()),
    }
    Cpus {
        count,
        why: parts.join("; "),
    }
}

fn plural(n: usize) -> &'static str {
    if n == 1 { "" } else { "s" }
}

/// The number of CPUs in this process's affinity mask.
fn affinity() -> Option<usize> {
    sys::cpu::allowed_cpus().ok().map(|cpus| cpus.len())
}

/// A CPU quota: `quota_us` of CPU time per `period_us` of wall time.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Quota {
    quota_us: u64,
    period_us: u64,
    file: PathBuf,
}

impl Quota {
    /// Whole CPUs, rounded up (a quota of 1.5 CPUs keeps two workers busy three quarters of the time).
    fn cpus(&self) -> usize {
        usize::try_from(self.quota_us.div_ceil(self.period_us.max(1))).unwrap_or(usize::MAX)
    }
}

/// The tightest CPU quota of this process's cgroup and its ancestors, v2 or v1.
fn cgroup_quota() -> Option<Quota> {
    let membership = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    let mut tightest: Option<Quota> = None;
    for line in membership.lines() {
        let mut fields = line.splitn(3, ':');
        let (Some(_), Some(controllers), Some(path)) = (fields.next(), fields.next(), fields.next()) else {
            continue;
        };
        let candidates: Vec<Quota> = if controllers.is_empty() {
            ancestors(Path::new("/sys/fs/cgroup"), path)
                .iter()
                .filter_map(|dir| read_v2(&dir.join("cpu.max")))
                .collect()
        } else if controllers.split(',').any(|c| c == "cpu") {
            [
                "/sys/fs/cgroup/cpu,cpuacct",
                "/sys/fs/cgroup/cpu",
                "/sys/fs/cgroup/cpuacct,cpu",
            ]
            .iter()
            .flat_map(|root| ancestors(Path::new(root), path))
            .filter_map(|dir| read_v1(&dir))
            .collect()
        } else {
            continue;
        };
        for quota in candidates {
            if tightest.as_ref().is_none_or(|t| quota.cpus() < t.cpus()) {
                tightest = Some(quota);
            }
        }
    }
    tightest
}

/// `root/a/b/c`, `root/a/b`, `root/a`, `root` for the cgroup path `/a/b/c`.
fn ancestors(root: &Path, cgroup: &str) -> Vec<PathBuf> {
    let mut dir = root.join(cgroup.trim_start_matches('/'));
    let mut dirs = vec![dir.clone()];
    while dir != root && dir.pop() {
        dirs.push(dir.clone());
    }
    dirs
}

/// cgroup v2 `cpu.max`: `max 100000` (no quota) or `200000 100000`.
fn read_v2(file: &Path) -> Option<Quota> {
    let text = std::fs::read_to_string(file).ok()?;
    let mut fields = text.split_whitespace();
    let quota_us = fields.next()?.parse().ok()?;
    let period_us = fields.next()?.parse().ok()?;
    Some(Quota {
        quota_us,
        period_us,
        file: file.to_path_buf(),
    })
}

/// cgroup v1 `cpu.cfs_quota_us` (−1: no quota) and `cpu.cfs_period_us`.
fn read_v1(dir: &Path) -> Option<Quota> {
    let read = |name: &str| std::fs::read_to_string(dir.join(name)).ok();
    let quota: i64 = read("cpu.cfs_quota_us")?.trim().parse().ok()?;
    let period: u64 = read("cpu.cfs_period_us")?.trim().parse().ok()?;
    Some(Quota {
        quota_us: u64::try_from(quota).ok().filter(|&q| q > 0)?,
        period_us: period,
        file: dir.join("cpu.cfs_quota_us"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_smallest_limit_wins_and_each_is_named() {
        let quota = Quota {
            quota_us: 150_000,
            period_us: 100_000,
            file: PathBuf::from("/sys/fs/cgroup/x/cpu.max"),
        };
        let cpus = combine(Some(4), Some(8), Some(quota.clone()), 8);
        assert_eq!(cpus.count, 2, "{}", cpus.why);
        assert!(cpus.why.contains("SLURM_CPUS_PER_TASK=4"), "{}", cpus.why);
        assert!(cpus.why.contains("= 2 CPUs"), "{}", cpus.why);
        assert_eq!(combine(Some(3), Some(8), None, 8).count, 3);
        assert_eq!(combine(None, Some(1), Some(quota), 8).count, 1);
        assert_eq!(combine(None, None, None, 6).count, 6);
    }

    #[test]
    fn ancestors_walk_up_to_the_root() {
        let dirs = ancestors(Path::new("/sys/fs/cgroup"), "/a/b");
        assert_eq!(
            dirs,
            vec![
                PathBuf::from("/sys/fs/cgroup/a/b"),
                PathBuf::from("/sys/fs/cgroup/a"),
                PathBuf::from("/sys/fs/cgroup")
            ]
        );
        assert_eq!(
            ancestors(Path::new("/sys/fs/cgroup"), "/"),
            vec![PathBuf::from("/sys/fs/cgroup")]
        );
    }

    #[test]
    fn this_process_has_at_least_one_cpu() {
        let cpus = available();
        assert!(cpus.count >= 1, "{}", cpus.why);
        assert!(affinity().is_some_and(|n| n >= 1));
    }
}
