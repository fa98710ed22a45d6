//! The one reader of `/proc` for every test that looks at processes: the process list, one process's `stat`
//! fields (state, parent, process group, start time), its children and descendants, command line, environment,
//! open descriptors, working folder, `status` and `limits` lines. What "left behind" means, and killing what is,
//! belongs to `leftovers.rs`.
//!
//! Every reader returns `None` or an empty value for a process that is gone: a process can exit between listing
//! `/proc` and reading its files, and that race must not fail a test.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;

/// One process, identified by pid and start time (so that a recycled pid is not mistaken for it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Proc {
    pub pid: i32,
    /// Clock ticks after boot (`/proc/PID/stat` field 22).
    pub start_time: u64,
}

impl Proc {
    /// The process now running as `pid`, if any.
    pub fn of(pid: i32) -> Option<Proc> {
        stat(pid).map(|stat| stat.proc())
    }
}

/// The fields of `/proc/PID/stat` the tests need.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stat {
    pub pid: i32,
    pub state: char,
    pub ppid: i32,
    pub pgrp: i32,
    pub start_time: u64,
}

impl Stat {
    pub fn proc(&self) -> Proc {
        Proc {
            pid: self.pid,
            start_time: self.start_time,
        }
    }

    /// A zombie (or dead) process: it runs nothing any more, only its parent's wait is missing.
    pub fn is_zombie(&self) -> bool {
        matches!(self.state, 'Z' | 'X')
    }
}

/// `/proc/PID/stat`, or `None` if there is no such process.
pub fn stat(pid: i32) -> Option<Stat> {
    let fields = stat_fields(pid)?;
    // `fields[0]` is field 3 (state); ppid is 4, pgrp 5, starttime 22.
    Some(Stat {
        pid,
        state: fields.first()?.chars().next()?,
        ppid: fields.get(1)?.parse().ok()?,
        pgrp: fields.get(2)?.parse().ok()?,
        start_time: fields.get(19)?.parse().ok()?,
    })
}

/// The fields of `/proc/PID/stat` from field 3 on: field 2, the command name in parentheses, may itself contain
/// spaces and parentheses, so the fields start after the last ')'.
pub fn stat_fields(pid: i32) -> Option<Vec<String>> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    Some(
        text[text.rfind(')')? + 1..]
            .split_whitespace()
            .map(str::to_string)
            .collect(),
    )
}

/// The pids in `/proc` now.
pub fn all_pids() -> Vec<i32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse().ok())
        .collect()
}

/// Every process now, zombies included.
pub fn processes() -> Vec<Stat> {
    all_pids().into_iter().filter_map(stat).collect()
}

/// The process `proc` if it still exists (alive or zombie).
pub fn find(proc: Proc) -> Option<Stat> {
    stat(proc.pid).filter(|stat| stat.start_time == proc.start_time)
}

/// Whether `proc` still exists and is not a zombie.
pub fn is_running(proc: Proc) -> bool {
    find(proc).is_some_and(|stat| !stat.is_zombie())
}

/// Live (not zombie) processes whose parent is `ppid`.
pub fn children_of(ppid: i32) -> Vec<Proc> {
    processes()
        .into_iter()
        .filter(|stat| stat.ppid == ppid && !stat.is_zombie())
        .map(|stat| stat.proc())
        .collect()
}

/// The descendants of `root` now, at any depth, zombies included (a start method may put a helper between the
/// supervisor and its workers).
pub fn descendants(root: i32) -> Vec<Stat> {
    let mut children: HashMap<i32, Vec<Stat>> = HashMap::new();
    for stat in processes() {
        children.entry(stat.ppid).or_default().push(stat);
    }
    let mut found = Vec::new();
    let mut parents = vec![root];
    while let Some(parent) = parents.pop() {
        for child in children.remove(&parent).unwrap_or_default() {
            parents.push(child.pid);
            found.push(child);
        }
    }
    found
}

/// Live (not zombie) members of the process group `pgrp`.
pub fn group_members(pgrp: i32) -> Vec<Proc> {
    processes()
        .into_iter()
        .filter(|stat| stat.pgrp == pgrp && !stat.is_zombie())
        .map(|stat| stat.proc())
        .collect()
}

/// The process group of `pid`; panics if there is no such process.
pub fn process_group(pid: i32) -> i32 {
    stat(pid).unwrap_or_else(|| panic!("no process {pid}")).pgrp
}

/// The arguments of `pid` (empty for a zombie or a gone process).
pub fn cmdline(pid: i32) -> Vec<String> {
    nul_separated(pid, "cmdline")
}

/// The environment entries of `pid` as `NAME=value` (empty entries, as left by a wiped block, are skipped).
pub fn environ(pid: i32) -> Vec<String> {
    nul_separated(pid, "environ")
}

/// Whether the environment of `pid` holds exactly the entry `NAME=value`.
pub fn has_env(pid: i32, entry: &str) -> bool {
    environ(pid).iter().any(|e| e == entry)
}

/// The environment of `pid` as a map.
pub fn environment(pid: i32) -> BTreeMap<String, String> {
    environ(pid)
        .iter()
        .filter_map(|entry| {
            let (name, value) = entry.split_once('=')?;
            Some((name.to_string(), value.to_string()))
        })
        .collect()
}

fn nul_separated(pid: i32, file: &str) -> Vec<String> {
    std::fs::read(format!("/proc/{pid}/{file}"))
        .unwrap_or_default()
        .split(|&b| b == 0)
        .filter(|entry| !entry.is_empty())
        .map(|entry| String::from_utf8_lossy(entry).into_owned())
        .collect()
}

/// Every open descriptor of `pid` and what it points at.
pub fn descriptors(pid: i32) -> BTreeMap<i32, String> {
    let Ok(entries) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return BTreeMap::new();
    };
    entries
        .filter_map(|entry| {
            let entry = entry.ok()?;
            let fd = entry.file_name().to_str()?.parse().ok()?;
            let target = std::fs::read_link(entry.path()).ok()?;
            Some((fd, target.to_string_lossy().into_owned()))
        })
        .collect()
}

/// The working folder of `pid`; panics if it cannot be read.
pub fn cwd(pid: i32) -> PathBuf {
    std::fs::read_link(format!("/proc/{pid}/cwd")).unwrap_or_else(|error| panic!("/proc/{pid}/cwd: {error}"))
}

/// The text of `/proc/PID/NAME`; panics if it cannot be read (for a process the test knows is alive).
pub fn proc_file(pid: i32, name: &str) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/{name}")).unwrap_or_else(|error| panic!("/proc/{pid}/{name}: {error}"))
}

/// The value after `key` (e.g. `"Uid:"`) in a `/proc/PID/status` text, trimmed; panics if the line is missing.
pub fn field(status: &str, key: &str) -> String {
    status
        .lines()
        .find_map(|line| line.strip_prefix(key))
        .unwrap_or_else(|| panic!("no {key} in {status}"))
        .trim()
        .to_string()
}

/// A `/proc/PID/status` size in KiB (`VmHWM:`, `VmRSS:`), `None` if the process or the line is missing.
pub fn status_kib(pid: i32, key: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|line| line.starts_with(key))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// The soft and hard value of the limit named `name` (e.g. `"Max open files"`) in a `/proc/PID/limits` text.
pub fn limit<'a>(limits: &'a str, name: &str) -> (&'a str, &'a str) {
    let line = limits
        .lines()
        .find(|line| line.starts_with(name))
        .unwrap_or_else(|| panic!("no {name} in {limits}"));
    let mut values = line[name.len()..].split_whitespace();
    (values.next().unwrap_or(""), values.next().unwrap_or(""))
}

/// Live worker processes started for the supervisor `pid`, wherever they were reparented: processes run as
/// `supervisor __worker …` whose environment names `pid` as their supervisor (the worker's parent-pid check).
pub fn workers_claiming(pid: i32) -> Vec<Proc> {
    let marker = format!("{}={pid}", child::worker::PARENT_PID_ENV);
    processes()
        .into_iter()
        .filter(|stat| !stat.is_zombie())
        .filter(|stat| cmdline(stat.pid).iter().any(|arg| arg == supervisor::pool::WORKER_ARG))
        .filter(|stat| has_env(stat.pid, &marker))
        .map(|stat| stat.proc())
        .collect()
}
