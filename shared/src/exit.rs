//! Process exit codes of the `supervisor` binary, documented in the README.

/// Every item ended `ok`.
pub const OK: i32 = 0;
/// The job ran, but at least one item ended `failed`.
pub const ITEMS_FAILED: i32 = 1;
/// A bad job file, bad flags, or an input that cannot be read: nothing ran.
pub const USAGE: i32 = 2;
/// The supervisor itself failed while running (e.g. it could not start any worker).
pub const INTERNAL: i32 = 3;
