//! The command line (clap derive). Flags given here override the job file.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "supervisor",
    version,
    about = "Run CPU work in isolated worker processes, one per core."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a job file.
    Run(RunArgs),
    /// Validate a job file (and list its input) without running anything.
    Check {
        /// The job file.
        job: PathBuf,
    },
    /// List the builtin tasks with the inputs and arguments they take.
    Tasks,
    /// Run a job under each executor (process, process/forkserver, thread, serial) and compare them.
    Compare(CompareArgs),
    /// Measure this machine: worker start, message round trips, bulk hand-off bandwidth, per-item dispatch overhead.
    Bench(BenchArgs),
    /// Combine the results files of a job's shards into its results file, checking every item is there once.
    Merge(MergeArgs),
    /// Print what a cluster scheduler needs to run a job as shards: an sbatch script or a Kubernetes Job.
    #[command(subcommand)]
    Export(ExportCommand),
    /// Run one item in the foreground, in this process, to reproduce a failure (e.g. under a debugger).
    Replay {
        /// The job file.
        job: PathBuf,
        /// Index of the item to run (as in the `item` field of results).
        #[arg(long)]
        item: u64,
    },
}

/// `--executor`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ExecutorArg {
    Process,
    Thread,
    Serial,
}

impl From<ExecutorArg> for shared::job::Executor {
    fn from(arg: ExecutorArg) -> Self {
        match arg {
            ExecutorArg::Process => shared::job::Executor::Process,
            ExecutorArg::Thread => shared::job::Executor::Thread,
            ExecutorArg::Serial => shared::job::Executor::Serial,
        }
    }
}

/// `--start`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum StartArg {
    Spawn,
    Forkserver,
}

impl From<StartArg> for shared::job::StartMethod {
    fn from(arg: StartArg) -> Self {
        match arg {
            StartArg::Spawn => shared::job::StartMethod::Spawn,
            StartArg::Forkserver => shared::job::StartMethod::Forkserver,
        }
    }
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// The job file.
    pub job: PathBuf,
    /// Number of worker processes (overrides `[workers] count`).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=shared::job::MAX_WORKERS as i64))]
    pub workers: Option<u32>,
    /// Results file, relative to the current folder (overrides `[output] results`).
    #[arg(long)]
    pub results: Option<PathBuf>,
    /// What runs the task (overrides `[workers] executor`): isolated processes, threads, or one thread.
    #[arg(long, value_enum)]
    pub executor: Option<ExecutorArg>,
    /// How worker processes are started (overrides `[workers] start`).
    #[arg(long, value_enum)]
    pub start: Option<StartArg>,
    /// Items per batch (overrides `[workers] batch`).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub batch: Option<u64>,
    /// Print the summary as one JSON object on stdout.
    #[arg(long)]
    pub json: bool,
    /// No progress output on stderr.
    #[arg(long, short)]
    pub quiet: bool,
    /// Continue an interrupted run: skip every item its journal recorded, run the rest.
    #[arg(long)]
    pub resume: bool,
    /// Like --resume, and also run again the items that ended `failed`.
    #[arg(long)]
    pub retry_failed: bool,
    /// Start over even though a journal of an earlier run exists (it is discarded).
    #[arg(long, conflicts_with_all = ["resume", "retry_failed"])]
    pub force: bool,
    /// Keep the journal after a complete run (it is removed by default once the results file is written).
    #[arg(long)]
    pub keep_journal: bool,
    /// Run only shard I of N (0-based): a contiguous block of the items. Default: from SLURM_ARRAY_TASK_ID or
    /// JOB_COMPLETION_INDEX when set, else every item.
    #[arg(long, value_name = "I/N", value_parser = parse_shard)]
    pub shard: Option<crate::shard::Shard>,
    /// Number of shards when the index comes from JOB_COMPLETION_INDEX (overrides `[shard] count`).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..=crate::shard::MAX_SHARDS))]
    pub shard_count: Option<u64>,
}

fn parse_shard(text: &str) -> Result<crate::shard::Shard, String> {
    crate::shard::Shard::parse(text).map_err(|error| error.to_string())
}

#[derive(Debug, Args)]
pub struct MergeArgs {
    /// The job file.
    pub job: PathBuf,
    /// Number of shards (default: read from the names of the shard files found).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..=crate::shard::MAX_SHARDS))]
    pub shards: Option<u64>,
    /// Results file, relative to the current folder (overrides `[output] results`); shard files are found beside it.
    #[arg(long)]
    pub results: Option<PathBuf>,
    /// Print the summary as one JSON object on stdout.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Subcommand)]
pub enum ExportCommand {
    /// Print an sbatch script that runs the job as a Slurm job array, one array task per shard.
    Slurm(SlurmArgs),
    /// Print a Kubernetes Indexed Job manifest, one completion index per shard.
    K8s(K8sArgs),
}

#[derive(Debug, Args)]
pub struct SlurmArgs {
    /// The job file.
    pub job: PathBuf,
    /// Number of shards (array tasks).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..=crate::shard::MAX_SHARDS))]
    pub shards: u64,
    /// Slurm partition (`#SBATCH --partition`; default: the cluster's default partition).
    #[arg(long)]
    pub partition: Option<String>,
    /// Time limit of each array task (`#SBATCH --time`, e.g. 1:00:00).
    #[arg(long)]
    pub time: Option<String>,
    /// CPUs of each array task, which become its workers (default: `[workers] count`, required when that is auto).
    #[arg(long, value_name = "C", value_parser = clap::value_parser!(u32).range(1..=shared::job::MAX_WORKERS as i64))]
    pub cpus_per_task: Option<u32>,
    /// Array tasks that may run at once (`--array=0-N%LIMIT`; default: no limit).
    #[arg(long)]
    pub max_running: Option<u64>,
    /// The supervisor executable the nodes run (default: this one's absolute path).
    #[arg(long)]
    pub supervisor: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct K8sArgs {
    /// The job file.
    pub job: PathBuf,
    /// Number of shards (completion indexes).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..=crate::shard::MAX_SHARDS))]
    pub shards: u64,
    /// Container image that holds the `supervisor` executable on its PATH.
    #[arg(long)]
    pub image: String,
    /// CPUs requested and allowed per pod, which become its workers (default: `[workers] count`, required when
    /// that is auto).
    #[arg(long, value_name = "C", value_parser = clap::value_parser!(u32).range(1..=shared::job::MAX_WORKERS as i64))]
    pub cpus: Option<u32>,
    /// PersistentVolumeClaim (ReadWriteMany) that holds the job file, its input and its results; mounted at the
    /// job file's folder.
    #[arg(long, default_value = "supervisor-data")]
    pub volume_claim: String,
    /// Retries of one index after a crash or a lost node before it is given up (`backoffLimitPerIndex`).
    #[arg(long, default_value_t = 3)]
    pub retries: u32,
    /// Pods that may run at once (`parallelism`; default: all shards).
    #[arg(long)]
    pub parallelism: Option<u64>,
}

#[derive(Debug, Args)]
pub struct CompareArgs {
    /// The job file.
    pub job: PathBuf,
    /// Runs per executor; the table shows the median with min–max.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub repeat: u32,
    /// Number of workers for the pooled executors (default: the job's).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=shared::job::MAX_WORKERS as i64))]
    pub workers: Option<u32>,
    /// Also run a small job with one crashing item under each executor, to show whether it takes the job down.
    #[arg(long)]
    pub isolation_check: bool,
    /// Print the comparison as one JSON object.
    #[arg(long)]
    pub json: bool,
    /// Draw wall time and peak memory per executor as a grouped bar chart into this SVG file.
    #[arg(long)]
    pub svg: Option<PathBuf>,
    /// No progress lines on stderr (one per run by default).
    #[arg(long, short)]
    pub quiet: bool,
}

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Repetitions of every measurement (default: chosen per measurement, so that the whole bench takes 10–20 s).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub repeat: Option<u32>,
    /// Print every number as one JSON object.
    #[arg(long)]
    pub json: bool,
    /// Cut every repetition count and size so that the bench runs in a second or two (rough numbers; for tests).
    #[arg(long)]
    pub quick: bool,
}
