//! The job file: its schema, and its validation into a resolved [`JobSpec`].
//!
//! Parsing happens in two steps, like ripgrep's low- and high-level arguments. First the TOML is read into a raw
//! mirror (`raw`: every table denies unknown keys, every value keeps its location and its TOML type). Then
//! each table is checked by its own module — `input`, `task`, `workers`, `supervise`, `output`,
//! `shard` — with the rules for one value in `value` (one rule per kind of value, each applied once), and
//! this module checks what spans tables (the executor against the task) and resolves relative paths against the
//! job file's folder. Every error names the file, line and column, and what was expected.
//!
//! Nothing here touches the filesystem beyond reading the job file: whether input files, programs and `cwd`
//! exist, and whether what is at an output path may be replaced, is the supervisor's (`supervisor::spec_fs`),
//! which reports through [`JobSpec::error_at`]; so is whether the builtin exists and accepts its `args` (the
//! `child` crate owns the tasks), and whether a glob matches anything.

use std::ops::Range;
use std::path::{Path, PathBuf};

mod input;
mod output;
pub(crate) mod raw;
mod shard;
mod supervise;
mod task;
mod value;
mod workers;

pub use input::{
    DEFAULT_CHUNK_BYTES, DEFAULT_FETCH_CONCURRENCY, DEFAULT_FETCH_RETRIES, DEFAULT_FETCH_RETRY_BACKOFF,
    DEFAULT_FETCH_TIMEOUT, DEFAULT_MAX_IN_FLIGHT_BYTES, FetchSpec, InputSpec, MAX_FETCH_CONCURRENCY,
    MAX_IN_FLIGHT_BYTES, MAX_RANGE_ITEMS, MIN_IN_FLIGHT_BYTES, Split,
};
pub use output::{Order, OutputSpec, Reduce};
pub use raw::TABLE_KEYS;
pub use shard::{MAX_SHARDS, ShardSpec};
pub use supervise::{
    DEFAULT_GRACE, DEFAULT_MAX_RESTARTS, DEFAULT_RESTART_WINDOW, DEFAULT_START_TIMEOUT, Halt, HaltThreshold,
    MAX_RESTARTS, SuperviseSpec,
};
pub use task::{MAX_RETRIES, TaskSpec};
pub use value::MAX_DURATION;
pub use workers::{
    BatchSize, DEFAULT_OPEN_FILES, ENV_ALLOW_LIST, Executor, IsolationSpec, MAX_WORKERS, OPEN_FILES_RANGE, StartMethod,
    WORKER_BIN_NEEDS, WorkerCount, WorkersSpec, env_allowed,
};

use crate::usertask::UserTask;
use raw::RawJob;
use value::Problem;

/// A job file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    #[error("cannot read job file {path}: {}", read_reason(source))]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}:{line}:{column}: {message}\n{snippet}")]
    Invalid {
        path: PathBuf,
        line: usize,
        column: usize,
        message: String,
        /// The offending source line with a caret under the column.
        snippet: String,
    },
}

/// Why a job file cannot be read, in words: "stream did not contain valid UTF-8" is about a TOML file here.
fn read_reason(error: &std::io::Error) -> String {
    match error.kind() {
        std::io::ErrorKind::InvalidData => "it is not UTF-8 text: expected a TOML file".to_string(),
        std::io::ErrorKind::IsADirectory => "it is a folder: expected a TOML file".to_string(),
        _ => error.to_string(),
    }
}

/// A validated job, with every path absolute and every default applied.
#[derive(Debug, Clone)]
pub struct JobSpec {
    /// Absolute path of the job file.
    pub path: PathBuf,
    /// `name`, or the job file's stem.
    pub name: String,
    pub input: InputSpec,
    /// Where the input source (`range`, `file`, `glob` or `urls`) is written, for errors found when listing it.
    pub input_span: Range<usize>,
    pub task: TaskSpec,
    pub workers: WorkersSpec,
    pub supervise: SuperviseSpec,
    pub output: OutputSpec,
    /// `[shard]`: how the job splits over a cluster scheduler's copies.
    pub shard: ShardSpec,
    source: String,
}

impl JobSpec {
    /// Reads and validates the job file at `path`.
    pub fn load(path: &Path) -> Result<JobSpec, JobError> {
        let text = std::fs::read_to_string(path).map_err(|source| JobError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let path = std::path::absolute(path).map_err(|source| JobError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        JobSpec::parse(&path, text)
    }

    /// Validates job-file `text` as if read from `path` (which must be absolute). Touches no file.
    pub fn parse(path: &Path, text: String) -> Result<JobSpec, JobError> {
        let raw: RawJob = match toml::from_str(&text) {
            Ok(raw) => raw,
            Err(error) => {
                let span = error.span().unwrap_or(0..0);
                let message = crate::toml_error::explain(&text, &span, error.message());
                return Err(located(path, &text, span, &message));
            }
        };
        match JobSpec::from_raw(path, &raw) {
            Ok(spec) => Ok(JobSpec { source: text, ..spec }),
            Err(problem) => Err(located(path, &text, problem.span, &problem.message)),
        }
    }

    /// Checks every table and what spans tables; the caller adds the text.
    fn from_raw(path: &Path, raw: &RawJob) -> Result<JobSpec, Problem> {
        let dir = path.parent().unwrap_or(Path::new("/"));
        let (input, input_span) = input::input(&raw.input, dir)?;
        let task = task::task(&raw.task, &input, dir)?;
        let raw_workers = raw.workers.as_ref();
        let workers = workers::workers(raw_workers.unwrap_or(&Default::default()))?;
        if let Some(raw_workers) = raw_workers
            && let Some(problem) = workers::executor_conflict(&workers, &task, raw_workers)
        {
            return Err(problem);
        }
        if let (Some(UserTask::WorkerBin { .. }), Some(key)) = (&task.user, workers.worker_bin_conflict()) {
            return Err(Problem::at(
                task.builtin_span.clone(),
                format!("`worker_bin` cannot be used with {key}: {WORKER_BIN_NEEDS}"),
            ));
        }
        let supervise = supervise::supervise(raw.supervise.as_ref().unwrap_or(&Default::default()))?;
        let output = output::output(raw.output.as_ref().unwrap_or(&Default::default()), dir)?;
        let shard = shard::shard(raw.shard.as_ref().unwrap_or(&Default::default()))?;
        let name = match &raw.name {
            Some(name) => value::nonempty_text("name", name, "a name such as \"thumbnails\"")?,
            None => path
                .file_stem()
                .map_or_else(|| "job".to_string(), |stem| stem.to_string_lossy().into_owned()),
        };
        Ok(JobSpec {
            path: path.to_path_buf(),
            name,
            input,
            input_span,
            task,
            workers,
            supervise,
            output,
            shard,
            source: String::new(),
        })
    }

    /// The job file's text, as read.
    pub fn source_text(&self) -> &str {
        &self.source
    }

    /// An error located at `span` of this job file (for checks made after loading, such as task arguments).
    pub fn error_at(&self, span: Range<usize>, message: &str) -> JobError {
        located(&self.path, &self.source, span, message)
    }
}

/// "a folder", "a character device"… for messages about a path that should be a regular file.
pub fn file_type_name(file_type: &std::fs::FileType) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    if file_type.is_dir() {
        "a folder"
    } else if file_type.is_char_device() {
        "a character device"
    } else if file_type.is_block_device() {
        "a block device"
    } else if file_type.is_fifo() {
        "a named pipe"
    } else if file_type.is_socket() {
        "a socket"
    } else {
        "not a regular file"
    }
}

fn located(path: &Path, source: &str, span: Range<usize>, message: &str) -> JobError {
    let start = span.start.min(source.len());
    let line_start = source[..start].rfind('\n').map_or(0, |i| i + 1);
    let line = source[..start].matches('\n').count() + 1;
    let column = source[line_start..start].chars().count() + 1;
    let line_end = source[start..].find('\n').map_or(source.len(), |i| start + i);
    let text = &source[line_start..line_end];
    let width = source[start..span.end.clamp(start, line_end)].chars().count().max(1);
    let snippet = format!(
        "{line:>4} | {text}\n     | {}{}",
        " ".repeat(column - 1),
        "^".repeat(width)
    );
    JobError::Invalid {
        path: path.to_path_buf(),
        line,
        column,
        message: message.to_string(),
        snippet,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::usertask::{Parse, StdinMode};
    use std::time::Duration;

    fn parse(text: &str) -> Result<JobSpec, JobError> {
        JobSpec::parse(Path::new("/jobs/job.toml"), text.to_string())
    }

    fn error_of(text: &str) -> (usize, usize, String) {
        match parse(text) {
            Err(JobError::Invalid {
                line, column, message, ..
            }) => (line, column, message),
            other => panic!("expected an invalid-job error, got {other:?}"),
        }
    }

    #[test]
    fn minimal_range_job_gets_defaults() {
        let spec =
            parse("[input]\nrange = { start = 0, end = 100, chunk = 7 }\n[task]\nbuiltin = \"noop\"\n").expect("valid");
        assert_eq!(spec.name, "job");
        assert_eq!(
            spec.input,
            InputSpec::Range {
                start: 0,
                end: 100,
                chunk: 7
            }
        );
        assert_eq!(spec.workers.count, WorkerCount::Auto);
        assert_eq!(spec.workers.batch, BatchSize::Auto);
        assert_eq!(spec.workers.start, StartMethod::Spawn);
        assert_eq!(
            (
                spec.workers.memory_limit,
                spec.workers.cpu_limit,
                spec.workers.max_tasks
            ),
            (None, None, None)
        );
        assert!(!spec.workers.core_dumps);
        assert_eq!(
            (spec.task.timeout, spec.task.retries, spec.task.retry_backoff),
            (None, 0, Duration::ZERO)
        );
        assert_eq!(
            spec.supervise,
            SuperviseSpec {
                max_restarts: 20,
                within: Duration::from_secs(10),
                halt: Halt::NEVER,
                grace: Duration::from_secs(5),
                start_timeout: DEFAULT_START_TIMEOUT,
            }
        );
        assert_eq!(
            spec.output,
            OutputSpec {
                results: None,
                results_span: None,
                order: Order::Input,
                reduce: Reduce::None,
                journal: true
            }
        );
        assert_eq!(spec.task.args, serde_json::json!({}));
    }

    #[test]
    fn paths_resolve_against_the_job_folder() {
        let spec = parse(
            "[input]\nglob = \"img/*.jpg\"\n[task]\nbuiltin = \"sha256\"\nargs = { x = 1 }\n\
             [output]\nresults = \"out/r.jsonl\"\norder = \"completion\"\nreduce = \"sum\"\n\
             [workers]\ncount = 3\nbatch = 16\n",
        )
        .expect("valid");
        assert_eq!(
            spec.input,
            InputSpec::Glob {
                pattern: "/jobs/img/*.jpg".into()
            }
        );
        assert_eq!(spec.output.results, Some(PathBuf::from("/jobs/out/r.jsonl")));
        assert_eq!(spec.output.order, Order::Completion);
        assert_eq!(spec.workers.count, WorkerCount::Fixed(3));
        assert_eq!(spec.workers.batch, BatchSize::Fixed(16));
        assert_eq!(spec.task.args, serde_json::json!({"x": 1}));
    }

    #[test]
    fn supervision_keys_parse() {
        let spec = parse(
            "[input]\nrange = { start = 0, end = 1 }\n[task]\nbuiltin = \"noop\"\ntimeout = \"1.5s\"\nretries = 2\n\
             retry_backoff = \"100ms\"\n[workers]\nstart = \"forkserver\"\nmemory_limit = \"256MiB\"\ncpu_limit = \"2s\"\n\
             max_tasks = 50\ncore_dumps = true\n[supervise]\nmax_restarts = 3\nwithin = \"1m\"\nhalt = \"now,fail=5%\"\ngrace = \"2s\"\n",
        )
        .expect("valid");
        assert_eq!(spec.task.timeout, Some(Duration::from_millis(1500)));
        assert_eq!(
            (spec.task.retries, spec.task.retry_backoff),
            (2, Duration::from_millis(100))
        );
        assert_eq!(spec.workers.start, StartMethod::Forkserver);
        assert_eq!(spec.workers.memory_limit, Some(256 << 20));
        assert_eq!(spec.workers.cpu_limit, Some(Duration::from_secs(2)));
        assert_eq!(spec.workers.max_tasks, Some(50));
        assert!(spec.workers.core_dumps);
        assert_eq!(spec.supervise.max_restarts, 3);
        assert_eq!(spec.supervise.within, Duration::from_secs(60));
        assert_eq!(
            spec.supervise.halt,
            Halt {
                threshold: HaltThreshold::Percent(5.0),
                now: true
            }
        );
        assert_eq!(spec.supervise.grace, Duration::from_secs(2));
    }

    #[test]
    fn shard_count_parses_and_is_checked() {
        let spec = parse("[input]\nrange = { start = 0, end = 1 }\n[task]\nbuiltin = \"noop\"\n[shard]\ncount = 16\n")
            .expect("valid");
        assert_eq!(spec.shard.count, Some(16));
        let (line, _, message) =
            error_of("[input]\nrange = { start = 0, end = 1 }\n[task]\nbuiltin = \"noop\"\n[shard]\ncount = 0\n");
        assert_eq!(line, 6);
        assert!(
            message.contains("`count` is 0: expected a whole number from 1 to 1000000"),
            "{message}"
        );
    }

    #[test]
    fn process_only_keys_conflict_with_thread_executors() {
        let spec = parse(
            "[input]\nrange = { start = 0, end = 1 }\n[task]\nbuiltin = \"noop\"\n[workers]\nexecutor = \"thread\"\n",
        )
        .expect("valid");
        assert_eq!(spec.workers.executor, Executor::Thread);
        let (line, _, message) = error_of(
            "[input]\nrange = { start = 0, end = 1 }\n[task]\nbuiltin = \"noop\"\ntimeout = \"1s\"\n[workers]\nexecutor = \"serial\"\n",
        );
        assert_eq!(line, 7);
        assert!(message.contains("[task] timeout needs worker processes"), "{message}");
    }

    #[test]
    fn isolation_keys_parse_and_bad_ones_are_located() {
        let base = "[input]\nrange = { start = 0, end = 1 }\n[task]\nbuiltin = \"noop\"\n[workers]\n";
        let spec = parse(base).expect("valid");
        assert_eq!(spec.workers.isolation.open_files, DEFAULT_OPEN_FILES);
        assert!(!spec.workers.isolation.is_set());
        let spec = parse(&format!(
            "{base}open_files = 64\nenv_clear = true\nenv = {{ B = \"2\", A = \"1\" }}\nuser = \"nobody\"\ngroup = \"nogroup\"\n"
        ))
        .expect("valid");
        let isolation = &spec.workers.isolation;
        assert_eq!(isolation.open_files, 64);
        assert!(isolation.env_clear);
        assert_eq!(
            isolation.env,
            vec![("A".to_string(), "1".to_string()), ("B".to_string(), "2".to_string())]
        );
        assert_eq!(isolation.user.as_ref().map(|u| u.get_ref().as_str()), Some("nobody"));
        assert_eq!(isolation.group.as_ref().map(|g| g.get_ref().as_str()), Some("nogroup"));

        let (line, column, message) = error_of(&format!("{base}open_files = 3\n"));
        assert_eq!((line, column), (6, 14));
        assert!(
            message.contains("`open_files` is 3: expected a whole number from 16 to 1048576"),
            "{message}"
        );
        let (line, _, message) = error_of(&format!("{base}env = {{ A = 1 }}\n"));
        assert_eq!(line, 6);
        assert!(message.contains("`env.A` is 1: expected a string"), "{message}");
        let (line, _, message) = error_of(&format!("{base}env = {{ \"A=B\" = \"x\" }}\n"));
        assert_eq!(line, 6);
        assert!(message.contains("not a variable name"), "{message}");
        let (line, _, message) = error_of(&format!("{base}user = \"\"\n"));
        assert_eq!(line, 6);
        assert!(message.contains("`user` is empty"), "{message}");
        let (line, _, message) = error_of(&format!("{base}executor = \"thread\"\nenv_clear = true\n"));
        assert_eq!(line, 6);
        assert!(
            message.contains("[workers] env_clear needs worker processes"),
            "{message}"
        );
        assert!(env_allowed("PATH") && env_allowed("LC_ALL") && !env_allowed("AWS_SECRET_ACCESS_KEY"));
    }

    #[test]
    fn halt_policies() {
        assert_eq!(Halt::parse("never"), Ok(Halt::NEVER));
        let first = Halt::parse("first-failure").expect("valid");
        assert!(!first.reached(0, 10) && first.reached(1, 10) && !first.now);
        let three = Halt::parse("soon,fail=3").expect("valid");
        assert!(!three.reached(2, 10) && three.reached(3, 10));
        let percent = Halt::parse("fail=10%").expect("valid");
        assert!(!percent.reached(9, 100) && percent.reached(10, 100));
        assert!(Halt::parse("fail=0").is_err());
        assert!(Halt::parse("fail=150%").is_err());
        assert!(Halt::parse("later,fail=1").is_err());
        assert!(Halt::parse("sometimes").is_err());
    }

    #[test]
    fn bad_durations_and_limits_are_located() {
        let (line, _, message) =
            error_of("[input]\nrange = { start = 0, end = 1 }\n[task]\nbuiltin = \"noop\"\ntimeout = \"30\"\n");
        assert_eq!(line, 5);
        assert!(message.contains("`timeout`: duration `30` has no unit"), "{message}");
        let (line, _, message) =
            error_of("[input]\nrange = { start = 0, end = 1 }\n[task]\nbuiltin = \"noop\"\ntimeout = \"0s\"\n");
        assert_eq!(line, 5);
        assert!(
            message.contains("`timeout` is \"0s\": expected a duration of more than 0"),
            "{message}"
        );
        let (line, _, message) = error_of(
            "[input]\nrange = { start = 0, end = 1 }\n[task]\nbuiltin = \"noop\"\n[workers]\nmemory_limit = \"12\"\n",
        );
        assert_eq!(line, 6);
        assert!(message.contains("expected a size of at least 1MiB"), "{message}");
        let (line, _, message) = error_of(
            "[input]\nrange = { start = 0, end = 1 }\n[task]\nbuiltin = \"noop\"\n[supervise]\nhalt = \"often\"\n",
        );
        assert_eq!(line, 6);
        assert!(message.contains("first-failure"), "{message}");
    }

    #[test]
    fn unknown_key_is_located() {
        let (line, column, message) =
            error_of("[input]\nrange = { start = 0, end = 1 }\n[task]\nbuiltin = \"noop\"\ncolour = 3\n");
        assert_eq!((line, column), (5, 1));
        assert!(message.contains("unknown key `colour` in [task]"), "{message}");
    }

    #[test]
    fn two_sources_are_rejected() {
        let (line, _, message) =
            error_of("[input]\nrange = { start = 0, end = 1 }\nglob = \"*\"\n[task]\nbuiltin = \"noop\"\n");
        assert_eq!(line, 1);
        assert!(message.contains("found: range, glob"), "{message}");
    }

    #[test]
    fn bad_values_say_what_was_expected() {
        let (line, _, message) = error_of(
            "[input]\nrange = { start = 0, end = 1 }\n[task]\nbuiltin = \"noop\"\n[workers]\ncount = \"many\"\n",
        );
        assert_eq!(line, 6);
        assert!(
            message.contains("expected \"auto\" or a whole number from 1 to 1024"),
            "{message}"
        );

        let (line, _, message) = error_of(
            "[input]\nrange = { start = 0, end = 1 }\n[task]\nbuiltin = \"noop\"\n[output]\norder = \"random\"\n",
        );
        assert_eq!(line, 6);
        assert!(
            message.contains("`order` is \"random\": expected \"input\" or \"completion\""),
            "{message}"
        );

        let (line, _, message) = error_of("[input]\nrange = { start = 9, end = 1 }\n[task]\nbuiltin = \"noop\"\n");
        assert_eq!(line, 2);
        assert!(message.contains("below its start"), "{message}");

        let (_, _, message) = error_of("[input]\nrange = { start = -1, end = 1 }\n[task]\nbuiltin = \"noop\"\n");
        assert!(message.contains("-1"), "{message}");
    }

    #[test]
    fn urls_inputs_take_fetch_keys_with_defaults_and_checks() {
        // Parsing touches no file: the urls file need not exist (the supervisor checks it, see spec_fs).
        let dir = PathBuf::from("/jobs");
        let job = |extra: &str| {
            JobSpec::parse(
                &dir.join("job.toml"),
                format!("[input]\nurls = \"urls.txt\"\n{extra}[task]\nbuiltin = \"sha256\"\n"),
            )
        };
        match job("").expect("valid").input {
            InputSpec::Urls { path, fetch } => {
                assert_eq!(path, dir.join("urls.txt"));
                assert_eq!(
                    fetch,
                    FetchSpec {
                        concurrency: DEFAULT_FETCH_CONCURRENCY,
                        timeout: DEFAULT_FETCH_TIMEOUT,
                        retries: DEFAULT_FETCH_RETRIES,
                        retry_backoff: DEFAULT_FETCH_RETRY_BACKOFF,
                        max_in_flight_bytes: DEFAULT_MAX_IN_FLIGHT_BYTES,
                    }
                );
            }
            other => panic!("expected a urls input, got {other:?}"),
        }
        let given =
            job("fetch_concurrency = 3\nfetch_timeout = \"2s\"\nfetch_retries = 0\nmax_in_flight_bytes = \"1MiB\"\n");
        let InputSpec::Urls { fetch, .. } = given.expect("valid").input else {
            panic!("expected a urls input")
        };
        assert_eq!(
            (fetch.concurrency, fetch.retries, fetch.max_in_flight_bytes),
            (3, 0, 1 << 20)
        );
        assert_eq!(fetch.timeout, Duration::from_secs(2));
        for (extra, says) in [
            ("fetch_concurrency = 0\n", "`fetch_concurrency` is 0"),
            ("fetch_timeout = \"0s\"\n", "expected a duration of more than 0"),
            ("fetch_timeout = \"8761h\"\n", "expected a duration of at most 8760h"),
            (
                "max_in_flight_bytes = 100\n",
                "`max_in_flight_bytes` is 100: expected a size of at least 4096 bytes",
            ),
        ] {
            match job(extra) {
                Err(JobError::Invalid { line, message, .. }) => {
                    assert_eq!(line, 3, "{extra}");
                    assert!(message.contains(says), "{message}");
                }
                other => panic!("{extra}: expected an error, got {other:?}"),
            }
        }
    }

    #[test]
    fn lines_inputs_resolve_against_the_job_folder_and_take_no_file_keys() {
        // Parsing touches no file: the lines file need not exist (the supervisor checks it, see spec_fs).
        let dir = PathBuf::from("/jobs");
        let job = |input: &str| {
            JobSpec::parse(
                &dir.join("job.toml"),
                format!("[input]\n{input}[task]\nbuiltin = \"line-count\"\n"),
            )
        };
        match job("lines = \"names.txt\"\n").expect("valid").input {
            InputSpec::Lines { path } => assert_eq!(path, dir.join("names.txt")),
            other => panic!("expected a lines input, got {other:?}"),
        }
        for (input, line, says) in [
            ("lines = \"\"\n", 2, "`lines` is empty: expected a path"),
            (
                "lines = \"a\"\nsplit = \"none\"\n",
                3,
                "`split` applies only to a `file` input",
            ),
            (
                "lines = \"a\"\nfetch_retries = 1\n",
                3,
                "`fetch_retries` applies only to a `urls` input",
            ),
            (
                "lines = \"a\"\nfile = \"b\"\n",
                1,
                "`range`, `file`, `glob`, `urls` or `lines` (found: file, lines)",
            ),
        ] {
            match job(input) {
                Err(JobError::Invalid { line: at, message, .. }) => {
                    assert_eq!(at, line, "{input}");
                    assert!(message.contains(says), "{message}");
                }
                other => panic!("{input}: expected an error, got {other:?}"),
            }
        }
    }

    #[test]
    fn user_tasks_resolve_with_defaults() {
        let spec = parse(
            "[input]\nglob = \"in/*.txt\"\n[task]\ncommand = [\"sh\", \"{path}\", \"{{x}}\"]\nenv = { A = \"1\" }\n",
        )
        .expect("valid");
        assert_eq!(spec.task.builtin, "");
        let Some(UserTask::Command(command)) = &spec.task.user else {
            panic!("expected a command task, got {:?}", spec.task.user);
        };
        assert_eq!(command.process.argv, ["sh", "{path}", "{{x}}"]);
        assert_eq!(command.process.cwd, PathBuf::from("/jobs"));
        assert_eq!(command.process.env.get("A").map(String::as_str), Some("1"));
        assert_eq!((command.parse, command.stdin), (Parse::Text, StdinMode::Item));
        assert_eq!(command.process.max_output, crate::usertask::DEFAULT_MAX_OUTPUT);

        let spec = parse(
            "[input]\nrange = { start = 0, end = 1 }\n[task]\nworker = [\"sh\", \"w.sh\"]\nmax_output = \"4KiB\"\n",
        )
        .expect("valid");
        assert!(matches!(&spec.task.user, Some(UserTask::Worker(p)) if p.max_output == 4096 && p.argv[0] == "sh"));
    }

    #[test]
    fn user_task_mistakes_are_located() {
        let (line, column, message) =
            error_of("[input]\nrange = { start = 0, end = 1 }\n[task]\ncommand = [\"cat\", \"{offset}\"]\n");
        assert_eq!((line, column), (4, 11));
        assert!(
            message.contains("`{offset}`") && message.contains("{item}, {start}, {end}"),
            "{message}"
        );
        let (line, _, message) = error_of("[input]\nrange = { start = 0, end = 1 }\n[task]\ncommand = []\n");
        assert_eq!(line, 4);
        assert!(message.contains("`command` is empty"), "{message}");
        let (line, _, message) =
            error_of("[input]\nrange = { start = 0, end = 1 }\n[task]\nbuiltin = \"noop\"\nenv = { A = \"1\" }\n");
        assert_eq!(line, 5);
        assert!(
            message.contains("`env` applies only to a `command` or `worker` task, not to `builtin`"),
            "{message}"
        );
        let (line, _, message) =
            error_of("[input]\nrange = { start = 0, end = 1 }\n[task]\ncommand = [\"true\"]\nargs = { x = 1 }\n");
        assert_eq!(line, 5);
        assert!(message.contains("`args` applies only to a `builtin` task"), "{message}");
        let (line, _, message) = error_of(
            "[input]\nrange = { start = 0, end = 1 }\n[task]\nworker_bin = \"/bin/sh\"\n[workers]\nexecutor = \"thread\"\n",
        );
        assert_eq!(line, 4);
        assert!(message.contains("cannot be used with executor"), "{message}");
    }

    #[test]
    fn snippet_points_at_the_column() {
        match parse("[input]\nrange = { start = 0, end = 1, chunk = 0 }\n[task]\nbuiltin = \"noop\"\n") {
            Err(error @ JobError::Invalid { .. }) => {
                let text = error.to_string();
                assert!(
                    text.starts_with("/jobs/job.toml:2:39: `range.chunk` is 0: expected a whole number of at least 1"),
                    "{text}"
                );
                assert!(text.ends_with("   2 | range = { start = 0, end = 1, chunk = 0 }\n     |                                       ^"), "{text}");
            }
            other => panic!("expected an error, got {other:?}"),
        }
    }
}
