//! The contract between the `supervisor` process and its workers.
//!
//! Both sides link this crate and nothing here does I/O beyond reading a job file or mapping an input file:
//!
//! - [`job`]: the job file schema — a raw serde mirror of the TOML, then a validated, resolved [`job::JobSpec`].
//! - [`protocol`]: the messages exchanged with a worker ([`protocol::ToWorker`], [`protocol::FromWorker`]).
//! - [`frame`]: how they are framed on the worker's socket, and the limits on what a worker may send.
//! - [`item`]: item descriptors (what crosses the channel instead of bulk bytes) and result [`item::Value`]s.
//! - [`region`]: read-only memory-mapped files and sealed shared pages (re-exported from the `sys` crate, which
//!   holds the project's `unsafe`).
//! - [`progress`]: the per-worker progress slot in a shared page: which item is running, since when.
//! - [`units`]: human sizes (`4MiB`) and durations (`30s`).
//! - [`usertask`]: the user's own work — `command`, persistent `worker`, `worker_bin` — and placeholders.
//! - [`exit`]: the process exit codes the CLI documents.

#![deny(unsafe_code)]

pub mod exit;
pub mod frame;
pub mod item;
pub mod job;
pub mod progress;
pub mod protocol;
pub use sys::region;
mod toml_error;
pub mod units;
pub mod usertask;
