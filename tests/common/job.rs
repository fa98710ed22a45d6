//! Writing job files: the [`Job`] builder covers the tables and keys the tests use (`[input]` of every kind with
//! its fetch keys, `[task]` builtin/command/worker, `[workers]`, `[supervise]`, `[output]`, `[shard]`), quoting
//! every value as TOML, so a test states what it runs and not how TOML escapes it. A test that writes something
//! unusual on purpose (a bad job file, a hostile one) adds raw text with [`Job::extra`] or keeps its literal TOML.
//!
//! ```ignore
//! let job = Job::range(0, 1000).chunk(10).builtin("count-primes").workers(2).results("out.jsonl").write(dir);
//! ```

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// A fresh temporary folder for one test of `suite`, removed when dropped.
pub fn temp_dir(suite: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(&format!("supervisor-{suite}-"))
        .tempdir()
        .expect("create temp dir")
}

/// `path` as text for a command line (the temporary paths are UTF-8).
pub fn path_str(path: &Path) -> &str {
    path.to_str().unwrap_or_else(|| panic!("not UTF-8: {}", path.display()))
}

/// Writes `text` to `dir/name` and returns the path.
pub fn write_file(dir: &Path, name: &str, text: impl AsRef<[u8]>) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap_or_else(|error| panic!("write {}: {error}", path.display()));
    path
}

/// A value written into a job file: strings and paths quoted, numbers and booleans as they are, [`Raw`] as given.
pub trait Toml {
    fn toml(&self) -> String;
}

/// TOML text written as it is: an inline table, an array, a number with `_` separators.
#[derive(Debug, Clone)]
pub struct Raw(pub String);

impl Toml for Raw {
    fn toml(&self) -> String {
        self.0.clone()
    }
}

impl Toml for str {
    fn toml(&self) -> String {
        quote(self)
    }
}

impl Toml for String {
    fn toml(&self) -> String {
        quote(self)
    }
}

impl Toml for Path {
    fn toml(&self) -> String {
        quote(self.to_str().unwrap_or_else(|| panic!("not UTF-8: {}", self.display())))
    }
}

impl Toml for PathBuf {
    fn toml(&self) -> String {
        self.as_path().toml()
    }
}

impl<T: Toml + ?Sized> Toml for &T {
    fn toml(&self) -> String {
        (**self).toml()
    }
}

macro_rules! plain_toml {
    ($($t:ty),*) => {$(
        impl Toml for $t {
            fn toml(&self) -> String {
                self.to_string()
            }
        }
    )*};
}

plain_toml!(u8, u16, u32, u64, u128, usize, i32, i64, bool);

impl<T: Toml> Toml for [T] {
    fn toml(&self) -> String {
        let items: Vec<String> = self.iter().map(Toml::toml).collect();
        format!("[{}]", items.join(", "))
    }
}

impl<T: Toml, const N: usize> Toml for [T; N] {
    fn toml(&self) -> String {
        self.as_slice().toml()
    }
}

impl<T: Toml> Toml for Vec<T> {
    fn toml(&self) -> String {
        self.as_slice().toml()
    }
}

/// `text` as a TOML basic string.
pub fn quote(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if c.is_control() => {
                let _ = write!(out, "\\u{:04X}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// An inline table `{ K = "V", … }` of strings (an `env`, say).
pub fn inline_strings(pairs: &[(&str, &str)]) -> Raw {
    let entries: Vec<String> = pairs.iter().map(|(k, v)| format!("{k} = {}", quote(v))).collect();
    Raw(format!("{{ {} }}", entries.join(", ")))
}

/// A job file being built: its tables in the order first touched, each with its keys in the order set.
#[derive(Debug, Clone, Default)]
pub struct Job {
    top: Vec<(String, String)>,
    tables: Vec<(String, Vec<(String, String)>)>,
    range: Option<(String, String, Option<String>)>,
    extra: String,
    file_name: Option<String>,
}

impl Job {
    /// A job with no input yet (for [`Job::input`] with a key of its own).
    pub fn new() -> Job {
        Job::default()
    }

    /// `[input] range = { start, end }` (add [`Job::chunk`]).
    pub fn range(start: impl Toml, end: impl Toml) -> Job {
        let mut job = Job::new();
        job.range = Some((start.toml(), end.toml(), None));
        job.table("input");
        job
    }

    /// The `chunk` of a `range` input.
    pub fn chunk(mut self, chunk: impl Toml) -> Job {
        let range = self.range.as_mut().expect("chunk applies to a range input");
        range.2 = Some(chunk.toml());
        self
    }

    /// `[input] file = PATH`.
    pub fn file(path: impl Toml) -> Job {
        Job::new().input("file", path)
    }

    /// `[input] glob = PATTERN`.
    pub fn glob(pattern: impl Toml) -> Job {
        Job::new().input("glob", pattern)
    }

    /// `[input] urls = PATH`.
    pub fn urls(path: impl Toml) -> Job {
        Job::new().input("urls", path)
    }

    /// `[input] lines = PATH`.
    pub fn lines(path: impl Toml) -> Job {
        Job::new().input("lines", path)
    }

    /// `name = NAME` at the top level.
    pub fn name(mut self, name: &str) -> Job {
        self.top.push(("name".to_string(), quote(name)));
        self
    }

    /// Any key of any table: `[table] key = value`.
    pub fn set(mut self, table: &str, key: &str, value: impl Toml) -> Job {
        let value = value.toml();
        let keys = self.table(table);
        match keys.iter_mut().find(|(k, _)| k == key) {
            Some(entry) => entry.1 = value,
            None => keys.push((key.to_string(), value)),
        }
        self
    }

    fn table(&mut self, name: &str) -> &mut Vec<(String, String)> {
        let at = match self.tables.iter().position(|(t, _)| t == name) {
            Some(at) => at,
            None => {
                self.tables.push((name.to_string(), Vec::new()));
                self.tables.len() - 1
            }
        };
        &mut self.tables[at].1
    }

    /// `[input] key = value` (`split`, `chunk_bytes`, `fetch_concurrency`, …).
    pub fn input(self, key: &str, value: impl Toml) -> Job {
        self.set("input", key, value)
    }

    /// `[input] split`.
    pub fn split(self, split: &str) -> Job {
        self.input("split", split)
    }

    /// `[input] chunk_bytes`: a number of bytes or a size string.
    pub fn chunk_bytes(self, size: impl Toml) -> Job {
        self.input("chunk_bytes", size)
    }

    /// `[input] fetch_KEY = value` (`concurrency`, `timeout`, `retries`, `retry_backoff`).
    pub fn fetch(self, key: &str, value: impl Toml) -> Job {
        self.input(&format!("fetch_{key}"), value)
    }

    /// `[task] key = value`.
    pub fn task(self, key: &str, value: impl Toml) -> Job {
        self.set("task", key, value)
    }

    /// `[task] builtin = NAME`.
    pub fn builtin(self, name: &str) -> Job {
        self.task("builtin", name)
    }

    /// `[task] args = { … }`, raw TOML.
    pub fn args(self, inline_table: impl AsRef<str>) -> Job {
        self.task("args", Raw(inline_table.as_ref().to_string()))
    }

    /// `[task] command = [ARGV…]`.
    pub fn command(self, argv: &[&str]) -> Job {
        self.task("command", argv)
    }

    /// `[task] worker = [ARGV…]`.
    pub fn worker(self, argv: &[&str]) -> Job {
        self.task("worker", argv)
    }

    /// `[task] worker_bin = PATH`.
    pub fn worker_bin(self, path: impl Toml) -> Job {
        self.task("worker_bin", path)
    }

    /// `[task] parse`.
    pub fn parse(self, parse: &str) -> Job {
        self.task("parse", parse)
    }

    /// `[task] env = { … }`.
    pub fn env(self, vars: &[(&str, &str)]) -> Job {
        self.task("env", inline_strings(vars))
    }

    /// `[task] env = { TEST_MARKER = MARKER }`: tags the commands of one test for the leftover check.
    pub fn marker(self, marker: &str) -> Job {
        self.env(&[(crate::common::leftovers::MARKER_VAR, marker)])
    }

    /// `[task] timeout`.
    pub fn timeout(self, timeout: &str) -> Job {
        self.task("timeout", timeout)
    }

    /// `[task] retries`.
    pub fn retries(self, retries: impl Toml) -> Job {
        self.task("retries", retries)
    }

    /// `[workers] count`.
    pub fn workers(self, count: impl Toml) -> Job {
        self.set("workers", "count", count)
    }

    /// `[workers] key = value` (`batch`, `start`, `memory_limit`, …).
    pub fn worker_key(self, key: &str, value: impl Toml) -> Job {
        self.set("workers", key, value)
    }

    /// `[workers] env = { … }`: variables set in every worker.
    pub fn worker_env(self, vars: &[(&str, &str)]) -> Job {
        self.worker_key("env", inline_strings(vars))
    }

    /// `[workers] batch`.
    pub fn batch(self, batch: impl Toml) -> Job {
        self.worker_key("batch", batch)
    }

    /// `[workers] start`.
    pub fn start(self, method: &str) -> Job {
        self.worker_key("start", method)
    }

    /// `[supervise] key = value`.
    pub fn supervise(self, key: &str, value: impl Toml) -> Job {
        self.set("supervise", key, value)
    }

    /// `[output] key = value`.
    pub fn output(self, key: &str, value: impl Toml) -> Job {
        self.set("output", key, value)
    }

    /// `[output] results`.
    pub fn results(self, path: impl Toml) -> Job {
        self.output("results", path)
    }

    /// `[output] reduce`.
    pub fn reduce(self, reduce: &str) -> Job {
        self.output("reduce", reduce)
    }

    /// `[output] order`.
    pub fn order(self, order: &str) -> Job {
        self.output("order", order)
    }

    /// `[output] journal`.
    pub fn journal(self, journal: bool) -> Job {
        self.output("journal", journal)
    }

    /// `[shard] key = value`.
    pub fn shard(self, key: &str, value: impl Toml) -> Job {
        self.set("shard", key, value)
    }

    /// Raw TOML appended after the tables (a table of its own, a deliberate mistake).
    pub fn extra(mut self, text: &str) -> Job {
        self.extra.push_str(text);
        if !text.ends_with('\n') {
            self.extra.push('\n');
        }
        self
    }

    /// The file name [`Job::write`] uses (default `job.toml`).
    pub fn named(mut self, file_name: &str) -> Job {
        self.file_name = Some(file_name.to_string());
        self
    }

    /// The job file's text.
    pub fn text(&self) -> String {
        let mut out = String::new();
        for (key, value) in &self.top {
            let _ = writeln!(out, "{key} = {value}");
        }
        for (table, keys) in &self.tables {
            let _ = writeln!(out, "[{table}]");
            if table == "input"
                && let Some((start, end, chunk)) = &self.range
            {
                let chunk = chunk.as_ref().map(|c| format!(", chunk = {c}")).unwrap_or_default();
                let _ = writeln!(out, "range = {{ start = {start}, end = {end}{chunk} }}");
            }
            for (key, value) in keys {
                let _ = writeln!(out, "{key} = {value}");
            }
        }
        out.push_str(&self.extra);
        out
    }

    /// Writes the job file into `dir` (as `job.toml` unless [`Job::named`]) and returns its path.
    pub fn write(&self, dir: &Path) -> PathBuf {
        write_file(dir, self.file_name.as_deref().unwrap_or("job.toml"), self.text())
    }
}
