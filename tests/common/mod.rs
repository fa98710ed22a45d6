//! The one test harness of the integration tests, shared by every file in `tests/`: running the real
//! `supervisor` binary (`run.rs`), writing job files (`job.rs`), reading the results and the summary
//! (`records.rs`), reading `/proc` (`procfs.rs`), checking that nothing is left behind (`leftovers.rs`),
//! reference computations that share no code with the supervisor (`reference.rs`) and the real tools they are
//! compared with (`tools.rs`).
//!
//! Every expected value in the tests comes from here or from a real tool (`wc`, `grep`, `sha256sum`), never from
//! the code under test.

#![allow(
    unused_imports,
    reason = "the re-exports serve every test file; each file uses only some of them"
)]

pub mod job;
pub mod leftovers;
pub mod procfs;
pub mod records;
pub mod reference;
pub mod run;
pub mod tools;

pub use job::{Job, Raw, Toml, path_str, temp_dir, write_file};
pub use leftovers::{Tracker, assert_gone, assert_no_leftovers, kill_marked, kill_survivors, marked_processes};
pub use procfs::{Proc, Stat, children_of, is_running, workers_claiming};
pub use records::*;
pub use reference::*;
pub use run::{
    Background, EXIT_BAD_INPUT, EXIT_ITEMS_FAILED, EXIT_OK, EXIT_SIGINT, EXIT_SIGTERM, EXIT_WORKERS_CANNOT_START, Ran,
    SUPERVISOR, run, run_command, send_signal, wait_until,
};
pub use tools::{sha256sum, tool, wc, wc_of_bytes};
