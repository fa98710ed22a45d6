//! An example of your own worker binary: counts the lines of each item.
//!
//! Build it (`cargo build --release -p custom-worker`) and point a job at it
//! (`examples/custom-worker.toml`: `[task] worker_bin = "../target/release/custom-worker"`). The supervisor
//! starts this program once per worker; `child::serve` connects it, maps the input file read-only, and calls the
//! closure with each item's bytes as a `&[u8]` slice of that mapping — nothing is copied or sent through a pipe.
//! Crashes, timeouts, limits, retries and `--resume` work exactly as for the builtin tasks.

use child::task::{Item, bytes_of};
use shared::item::Value;

fn main() -> std::process::ExitCode {
    // `bytes_of` gives the bytes of a file chunk, a whole file or a fetched URL body, and an error for a range.
    child::serve(|item: Item<'_>| {
        let data = bytes_of("custom-worker", &item)?;
        Ok(Value::UInt(memchr::memchr_iter(b'\n', data).count() as u128))
    })
}
