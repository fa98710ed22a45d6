//! `supervisor export`: what a cluster scheduler needs to run a job as shards, printed on stdout.
//!
//! The supervisor does not schedule across machines: the cluster's scheduler does. `export slurm` prints an
//! sbatch script for a job array (one array task per shard); `export k8s` prints a Kubernetes Indexed Job (one
//! completion index per shard). Each copy runs `supervisor run --resume JOB`, which finds its shard in the
//! scheduler's environment ([`crate::shard`]) and its worker count in the CPUs it was given ([`crate::cpus`]),
//! so a copy that is preempted, requeued or retried continues its shard's journal instead of starting over.
//! `supervisor merge JOB` then combines the shards' results.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use shared::exit;
use shared::job::{JobSpec, WorkerCount};

use crate::cli::{ExportCommand, K8sArgs, SlurmArgs};
use crate::error::Error;

/// Runs `export slurm` or `export k8s`.
pub fn run(command: &ExportCommand) -> Result<i32, Error> {
    let text = match command {
        ExportCommand::Slurm(args) => {
            let spec = crate::run::load(&args.job, None)?;
            let supervisor = match &args.supervisor {
                Some(path) => absolute(path)?,
                None => std::env::current_exe().map_err(|error| Error::Export {
                    reason: format!("cannot find this executable's path ({error}): pass --supervisor PATH"),
                })?,
            };
            slurm_script(&spec, args, &supervisor)?
        }
        ExportCommand::K8s(args) => {
            let spec = crate::run::load(&args.job, None)?;
            k8s_manifest(&spec, args)?
        }
    };
    print!("{text}");
    Ok(exit::OK)
}

fn absolute(path: &Path) -> Result<PathBuf, Error> {
    std::path::absolute(path).map_err(|error| Error::Export {
        reason: format!("{}: {error}", path.display()),
    })
}

/// Shards write their records to their own results files, which `merge` combines: a job without one has nothing
/// to merge.
fn require_results(spec: &JobSpec) -> Result<(), Error> {
    match spec.output.results {
        Some(_) => Ok(()),
        None => Err(Error::Export {
            reason: format!(
                "{} has no [output] results: each shard's records would be lost; set one so that `supervisor merge` \
                 can combine them",
                spec.path.display()
            ),
        }),
    }
}

/// CPUs per copy: the flag, else the job's fixed `[workers] count`; `None` (with `count = "auto"` and no flag):
/// a whole node per copy.
fn cpus(spec: &JobSpec, flag: Option<u32>) -> Option<u32> {
    match (flag, spec.workers.count) {
        (Some(cpus), _) => Some(cpus),
        (None, WorkerCount::Fixed(n)) => Some(n as u32),
        (None, WorkerCount::Auto) => None,
    }
}

/// `--workers C` when the job fixes another count than the CPUs asked for (with `auto`, the supervisor follows the
/// CPUs it is given by itself).
fn workers_flag(spec: &JobSpec, cpus: Option<u32>) -> String {
    match (spec.workers.count, cpus) {
        (WorkerCount::Fixed(n), Some(cpus)) if n != cpus as usize => format!(" --workers {cpus}"),
        _ => String::new(),
    }
}

/// Quotes `text` for a POSIX shell.
fn shell_quote(text: &str) -> String {
    if !text.is_empty()
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "/._-+=:,@%".contains(c))
    {
        text.to_string()
    } else {
        format!("'{}'", text.replace('\'', "'\\''"))
    }
}

/// The sbatch script of a job array running `spec` as `args.shards` shards.
pub fn slurm_script(spec: &JobSpec, args: &SlurmArgs, supervisor: &Path) -> Result<String, Error> {
    require_results(spec)?;
    let cpus = cpus(spec, args.cpus_per_task);
    let shards = args.shards;
    let grace = spec.supervise.grace.as_secs_f64().ceil() as u64;
    let job = spec.path.display().to_string();
    let name: String = spec
        .name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "._-".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    let example = spec
        .output
        .results
        .as_ref()
        .map_or("no results file".to_string(), |results| {
            crate::shard::Shard {
                index: 0,
                count: shards,
            }
            .results_path(results)
            .display()
            .to_string()
        });
    let mut s = String::new();
    let _ = writeln!(s, "#!/bin/bash");
    let _ = writeln!(
        s,
        "# Job `{}` ({job}) as {shards} shards: a Slurm job array, one array task per shard.",
        spec.name
    );
    let _ = writeln!(
        s,
        "# Made by `supervisor export slurm`. Submit with `sbatch THIS_FILE`; when every task has ended,"
    );
    let _ = writeln!(s, "# combine the shards with `supervisor merge {}`.", shell_quote(&job));
    let _ = writeln!(s, "#SBATCH --job-name={name}");
    match args.max_running {
        Some(limit) => {
            let _ = writeln!(s, "#SBATCH --array=0-{}%{limit}", shards - 1);
        }
        None => {
            let _ = writeln!(s, "#SBATCH --array=0-{}", shards - 1);
        }
    }
    let _ = writeln!(s, "#SBATCH --ntasks=1");
    match cpus {
        Some(cpus) => {
            let _ = writeln!(s, "#SBATCH --cpus-per-task={cpus}");
        }
        // `count = "auto"` and no --cpus-per-task: each shard takes a whole node and runs a worker per CPU of it.
        None => {
            let _ = writeln!(s, "#SBATCH --exclusive");
        }
    }
    if let Some(partition) = &args.partition {
        let _ = writeln!(s, "#SBATCH --partition={partition}");
    }
    if let Some(time) = &args.time {
        let _ = writeln!(s, "#SBATCH --time={time}");
    }
    // A preempted or failed node's task goes back in the queue; its log continues rather than restarts.
    let _ = writeln!(s, "#SBATCH --requeue");
    let _ = writeln!(s, "#SBATCH --open-mode=append");
    let _ = writeln!(s, "#SBATCH --output=slurm-%x-%A_%a.out");
    // Slurm may send it up to a minute early; the supervisor needs `grace` to let workers finish their items.
    let _ = writeln!(s, "#SBATCH --signal=B:TERM@{}", grace + 60);
    let _ = writeln!(s);
    let _ = writeln!(
        s,
        "# Each array task runs one supervisor with its workers on its node. Its shard is SLURM_ARRAY_TASK_ID of\n\
         # --shard-count (contiguous blocks of items; `sbatch --array=1,3 THIS_FILE` runs shards 1 and 3 again);\n\
         # its workers follow the CPUs Slurm gave it (SLURM_CPUS_PER_TASK, the affinity mask, the cgroup quota).\n\
         # It writes its own results file and journal ({example}).\n\
         #\n\
         # exec: the supervisor is this batch step's main process and receives SIGTERM itself: at the time limit\n\
         # (--signal above), on scancel, on preemption. It then stops within [supervise] grace = {grace}s, keeping\n\
         # its journal. --resume: a requeued task continues that journal; a first run starts from the beginning."
    );
    let _ = writeln!(s, "set -euo pipefail");
    let _ = writeln!(
        s,
        "exec {} run --resume --shard-count {shards}{} {}",
        shell_quote(&supervisor.display().to_string()),
        workers_flag(spec, cpus),
        shell_quote(&job)
    );
    Ok(s)
}

/// A Kubernetes object name: lowercase letters, digits and '-', at most 63 characters, alphanumeric at both ends.
fn k8s_name(name: &str) -> String {
    let mut out: String = name
        .to_ascii_lowercase()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    out = format!("supervisor-{}", out.trim_matches('-'));
    out.truncate(63);
    out.trim_end_matches('-').to_string()
}

/// A YAML double-quoted scalar (JSON string syntax is valid YAML).
fn yaml_string(text: &str) -> String {
    serde_json::to_string(text).unwrap_or_else(|_| "\"\"".into())
}

/// The Indexed Job manifest running `spec` as `args.shards` shards.
pub fn k8s_manifest(spec: &JobSpec, args: &K8sArgs) -> Result<String, Error> {
    require_results(spec)?;
    let cpus = cpus(spec, args.cpus);
    let shards = args.shards;
    let grace = spec.supervise.grace.as_secs_f64().ceil() as u64;
    let job = spec.path.display().to_string();
    let folder = spec.path.parent().unwrap_or(Path::new("/")).display().to_string();
    let name = k8s_name(&spec.name);
    let outside: Vec<String> = [spec.output.results.clone(), input_path(spec)]
        .into_iter()
        .flatten()
        .filter(|path| !path.starts_with(&folder))
        .map(|path| path.display().to_string())
        .collect();
    let mut command = vec![
        "supervisor".to_string(),
        "run".into(),
        "--resume".into(),
        "--shard-count".into(),
        shards.to_string(),
    ];
    if let (WorkerCount::Fixed(n), Some(cpus)) = (spec.workers.count, cpus)
        && n != cpus as usize
    {
        command.extend(["--workers".to_string(), cpus.to_string()]);
    }
    command.push(job.clone());
    let command = command.iter().map(|a| yaml_string(a)).collect::<Vec<_>>().join(", ");
    let mut s = String::new();
    let _ = writeln!(
        s,
        "# Job `{}` ({job}) as {shards} shards: a Kubernetes Indexed Job, one completion index per shard.",
        spec.name
    );
    let _ = writeln!(
        s,
        "# Made by `supervisor export k8s`. Needs Kubernetes 1.29 or newer (backoffLimitPerIndex)."
    );
    let _ = writeln!(
        s,
        "# The PersistentVolumeClaim `{}` (ReadWriteMany) must hold the job file, its input and its results: it is",
        args.volume_claim
    );
    let _ = writeln!(
        s,
        "# mounted at the job file's folder, {folder}, so the job file's paths resolve as on the machine that exported it."
    );
    for path in &outside {
        let _ = writeln!(
            s,
            "# WARNING: {path} is outside that folder: mount it into the pod yourself."
        );
    }
    let _ = writeln!(
        s,
        "# Apply with `kubectl apply -f THIS_FILE`; when the Job has finished, combine the shards with\n\
         # `supervisor merge {job}`.\n\
         #\n\
         # Each pod runs one supervisor with its workers. It takes its shard from JOB_COMPLETION_INDEX and\n\
         # --shard-count, and its workers from its CPU limit (the cgroup quota). On deletion or eviction it gets\n\
         # SIGTERM and stops within [supervise] grace = {grace}s, keeping its journal; a retried index continues\n\
         # that journal (--resume)."
    );
    let _ = writeln!(s, "apiVersion: batch/v1");
    let _ = writeln!(s, "kind: Job");
    let _ = writeln!(s, "metadata:");
    let _ = writeln!(s, "  name: {name}");
    let _ = writeln!(s, "spec:");
    let _ = writeln!(s, "  completionMode: Indexed");
    let _ = writeln!(s, "  completions: {shards}");
    let _ = writeln!(s, "  parallelism: {}", args.parallelism.unwrap_or(shards).min(shards));
    let _ = writeln!(s, "  backoffLimitPerIndex: {}", args.retries);
    let _ = writeln!(s, "  podFailurePolicy:");
    let _ = writeln!(s, "    rules:");
    let _ = writeln!(
        s,
        "      # Exit 1: the shard ran and recorded every item, and some items failed. A retry would change nothing\n\
         \x20     # (the journal records them): fail this index at once and let the others go on. `supervisor merge`\n\
         \x20     # lists the failed items; `supervisor run --retry-failed --shard I/{shards} JOB` runs them again."
    );
    let _ = writeln!(s, "      - action: FailIndex");
    let _ = writeln!(s, "        onExitCodes:");
    let _ = writeln!(s, "          containerName: supervisor");
    let _ = writeln!(s, "          operator: In");
    let _ = writeln!(s, "          values: [1]");
    let _ = writeln!(
        s,
        "      # Exit 2: the job file, its input or the flags are wrong: every index would fail the same way."
    );
    let _ = writeln!(s, "      - action: FailJob");
    let _ = writeln!(s, "        onExitCodes:");
    let _ = writeln!(s, "          containerName: supervisor");
    let _ = writeln!(s, "          operator: In");
    let _ = writeln!(s, "          values: [2]");
    let _ = writeln!(
        s,
        "      # Evicted or preempted (node drain, spot reclaim): not the shard's fault; retried without counting.\n\
         \x20     # Any other end (exit 3, killed by the OOM killer, a crash, a lost node) counts against\n\
         \x20     # backoffLimitPerIndex and is retried; every retry resumes from the shard's journal."
    );
    let _ = writeln!(s, "      - action: Ignore");
    let _ = writeln!(s, "        onPodConditions:");
    let _ = writeln!(s, "          - type: DisruptionTarget");
    let _ = writeln!(s, "  template:");
    let _ = writeln!(s, "    metadata:");
    let _ = writeln!(s, "      labels:");
    let _ = writeln!(s, "        app.kubernetes.io/name: {name}");
    let _ = writeln!(s, "    spec:");
    let _ = writeln!(s, "      restartPolicy: Never");
    let _ = writeln!(s, "      terminationGracePeriodSeconds: {}", grace + 10);
    let _ = writeln!(s, "      containers:");
    let _ = writeln!(s, "        - name: supervisor");
    let _ = writeln!(s, "          image: {}", yaml_string(&args.image));
    let _ = writeln!(s, "          command: [{command}]");
    match cpus {
        Some(cpus) => {
            let _ = writeln!(s, "          resources:");
            let _ = writeln!(s, "            requests:");
            let _ = writeln!(s, "              cpu: \"{cpus}\"");
            let _ = writeln!(s, "            limits:");
            let _ = writeln!(s, "              cpu: \"{cpus}\"");
        }
        None => {
            let _ = writeln!(
                s,
                "          # No CPU request or limit ([workers] count is \"auto\" and no --cpus was given): the pod runs a\n\
                 \x20         # worker per CPU of its node. Pass --cpus C to give each pod C CPUs and C workers."
            );
        }
    }
    let _ = writeln!(s, "          volumeMounts:");
    let _ = writeln!(s, "            - name: data");
    let _ = writeln!(s, "              mountPath: {}", yaml_string(&folder));
    let _ = writeln!(s, "      volumes:");
    let _ = writeln!(s, "        - name: data");
    let _ = writeln!(s, "          persistentVolumeClaim:");
    let _ = writeln!(s, "            claimName: {}", yaml_string(&args.volume_claim));
    Ok(s)
}

/// The input file or glob of the job, for the check that it lies in the mounted folder.
fn input_path(spec: &JobSpec) -> Option<PathBuf> {
    match &spec.input {
        shared::job::InputSpec::File { path, .. } | shared::job::InputSpec::Lines { path } => Some(path.clone()),
        shared::job::InputSpec::Glob { pattern } => Some(PathBuf::from(pattern)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_quotes_are_safe() {
        assert_eq!(k8s_name("Primes: 10^9!"), "supervisor-primes--10-9");
        assert!(k8s_name(&"x".repeat(100)).len() <= 63);
        assert_eq!(shell_quote("/a/b.toml"), "/a/b.toml");
        assert_eq!(shell_quote("/a b/it's"), "'/a b/it'\\''s'");
        assert_eq!(yaml_string("a\"b"), "\"a\\\"b\"");
    }
}
