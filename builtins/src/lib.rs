//! The tasks the supervisor's own worker runs: the builtins (`[task] builtin`, see [`tasks`]) and the user's own
//! processes (`[task] command` and `[task] worker`, see [`user`]), with the registry that names them ([`build`],
//! [`all`], [`lookup`]).
//!
//! The worker loop and the task API are `child`'s; this crate is what the supervisor's `__worker` mode hands
//! that loop. It holds every heavy dependency of the worker side (image decoding, regular expressions, SHA-256),
//! so that a user's own worker binary, built on `child` alone, compiles none of them.
//!
//! Every system call it makes to start, watch and reap the user's processes goes through the `sys` crate; this
//! crate denies `unsafe_code`.

#![deny(unsafe_code)]

pub mod registry;
pub mod tasks;
pub mod user;

pub use registry::{ArgInfo, InputKind, TaskInfo, all, build, lookup, parse_args};
