//! The one system layer of `supervisor`: every `unsafe` block and every raw system call of the project lives in
//! this crate, behind small safe, typed wrappers built on `nix` (and `rustix` for pidfds, which `nix` lacks).
//!
//! - [`process`]: pidfds, reaping one child with its resource usage, process groups as a type of their own,
//!   signal names, a checked `fork`, and what a worker does to confine itself (`prctl`s, signal dispositions).
//! - [`guard`]: a process that kills the process groups it was told about when its owner dies.
//! - [`socket`]: `SOCK_SEQPACKET` pairs, messages carrying descriptors, pipes, descriptor flags, polling with a
//!   deadline.
//! - [`region`]: read-only mapped files and sealed shared memory (memfds), with `Deref<Target = [u8]>` views.
//! - [`limits`]: rlimits a worker sets on itself; [`user`]: user and group ids; [`env`](mod@env): the environment,
//!   changed only while the process is single-threaded; [`cpu`]: affinity and clocks.
//! - [`fault`]: the crashes the `fault` test task injects on purpose.
//!
//! Policy (which process to start, kill or reap, which limits a job gets) belongs to the callers; each wrapper
//! here only makes one call safe, and each `unsafe` block says why it holds in a `// SAFETY:` comment. Every other
//! crate of the workspace denies `unsafe_code`.

pub mod alloc;
pub mod cpu;
pub mod env;
pub mod fault;
pub mod guard;
pub mod limits;
pub mod process;
pub mod region;
pub mod socket;
pub mod user;
