//! Inputs: where a job's items come from, behind one interface, [`Source`], with one file per kind.
//!
//! Each kind's file owns everything the supervisor knows about that kind: how it is listed (or read as it goes),
//! how many items it has, the descriptors a batch carries to a worker ([`shared::item::BatchItems`]), what a
//! record says about an item ([`InputDesc`]), the largest batch, what a journal's fingerprint records about the
//! input, and how a SIGBUS of a worker reading it is explained. This module only wires them: [`open`] picks the
//! kind from the job's `[input]`, [`task_input`] says which builtins accept it. The shared crate owns the job
//! keys ([`shared::job::InputSpec`]) and the descriptors; the worker (`child`) reads them.
//!
//! # Why a trait
//! The consumer (the dispatcher) holds one `Box<dyn Source>` and calls a handful of methods per batch, never per
//! byte, so dynamic dispatch costs nothing measurable; in exchange a new kind is one new file here plus one arm
//! in [`open`] and [`task_input`], instead of an arm in every match of an enum (the old `plan::Items` was matched
//! six times). A future source that is not listed from a job file (items from stdin) implements the same trait.
//!
//! # Pulling, and sources of unknown length
//! A consumer asks for items with [`Source::pull`] (`up to n more from here`: so many, none ready yet, or
//! ended), never blocking, and may forget them with [`Source::release`] once they are recorded. A source whose length is known ([`Source::known_len`] is `Some`) answers
//! from arithmetic or from its listing and keeps nothing per pulled item. A stream (length unknown until it ends:
//! `None`) reads ahead only as far as it is pulled and keeps only the items pulled and not yet released, so
//! memory is bounded by the consumer's in-flight work, not by the input: the consumer must release what it has
//! recorded. Every kind here has a known length; `lines` counts its file's lines with one `memchr` pass when
//! listed, because sharding needs the length and the pass runs at memory speed (see [`lines`]).
//!
//! # Sharding, fingerprints and resume
//! Sharding splits `0..len` into contiguous blocks, so it needs the length: a stream cannot be sharded. A journal
//! is resumed only when [`Source::fingerprint`] says the input is the one it was written from; items are named
//! by index. For a stream the meaning of resume is the source's to state: a stream over a file it can read
//! again resumes by index like a listed one (fingerprinting the file), a stream that cannot be read again
//! (stdin) refuses `--resume`.

mod blocks;
pub mod chunks;
pub mod glob;
pub mod lines;
pub mod range;
pub mod urls;

use std::path::Path;
use std::sync::Arc;

use builtins::InputKind;
use shared::item::{BatchItems, InputPlan};
use shared::job::{InputSpec, JobSpec, Split};

use crate::error::Error;
use crate::results::InputDesc;

/// Where a fetched body lies in the shared arena: `(offset, len)`, or `None` when the item has none (yet).
pub type BodyOf<'a> = &'a dyn Fn(u64) -> Option<(u64, u64)>;

/// One kind of input. Indices are global item numbers, `0 ..` in input order.
///
/// Methods that take an index may be called for any index below [`known_len`](Source::known_len) (a listed source), or for
/// any pulled and not yet released one (a stream).
pub trait Source: Send + Sync + std::fmt::Debug {
    /// The `[input]` key of this kind (`range`, `file`, `glob`, `urls`, `lines`), for messages.
    fn key(&self) -> &'static str;

    /// Number of items, when known; `None` for a stream that has not ended yet.
    fn known_len(&self) -> Option<u64>;

    /// Makes up to `max` items from `first` on available, without blocking, and says how many: `Ready(n)` with
    /// `1 <= n <= max`, `NotYet` when a stream has none ready now (its [`wake`](Source::wake) is notified when
    /// more arrive), `Ended` once the input has ended at `first` (its length is then known). A listed source
    /// answers from its length.
    fn pull(&mut self, first: u64, max: u64) -> Result<Pulled, Error> {
        let ready = self.known_len().unwrap_or(0).saturating_sub(first).min(max);
        Ok(if ready == 0 {
            Pulled::Ended
        } else {
            Pulled::Ready(ready)
        })
    }

    /// What a stream notifies when items arrive after a [`Pulled::NotYet`]: a stream fed by a reader task (stdin)
    /// hands this to the consumer's event loop, which then pulls again. `None` for sources that never answer
    /// `NotYet`.
    fn wake(&self) -> Option<Arc<tokio::sync::Notify>> {
        None
    }

    /// The consumer has recorded `item` and will not ask about it again: a stream may forget it. Listed sources
    /// keep nothing per item and ignore this.
    fn release(&mut self, _item: u64) {}

    /// The descriptors of items `first .. first + len`, as a batch carries them. `body` gives the arena slot of
    /// a fetched item (used by `urls` only).
    fn items(&self, first: u64, len: u64, body: BodyOf<'_>) -> BatchItems;

    /// The input of item `index`, for its record.
    fn describe(&self, index: u64) -> InputDesc;

    /// What every worker is told about the input at start-up. `arena` is the fetched-body arena's path (`urls`).
    fn plan(&self, arena: Option<&Path>) -> InputPlan;

    /// Largest batch: descriptors must keep a batch message small (a range's are a count, so its cap is high).
    fn batch_cap(&self) -> u64;

    /// What a journal records of the input, to refuse resuming it against another input: the parameters, or
    /// the files' sizes and times, or a digest of the listing. Blocking: it may stat every file.
    fn fingerprint(&self) -> Result<String, Error>;

    /// Why a worker that died by SIGBUS on `index` did, when the item reads a mapped file (see
    /// [`crate::sigbus`]); `None` for items that map nothing that can shrink.
    fn explain_sigbus(&self, _index: u64) -> Option<String> {
        None
    }

    /// A warning when the one mapped input file changed size while the job ran (see [`crate::sigbus`]).
    fn changed_during_job(&self) -> Option<String> {
        None
    }

    /// The URLs of a `urls` input, which the dispatcher fetches before it hands items out (until the fetch
    /// stage is a source of its own: see the module docs of [`urls`]).
    fn urls(&self) -> Option<&Arc<Vec<String>>> {
        None
    }
}

/// The answer to [`Source::pull`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pulled {
    /// This many items from `first` on are available (at least one).
    Ready(u64),
    /// A stream has no item ready now; more may come (see [`Source::wake`]).
    NotYet,
    /// The input has no item at `first`: it ended there.
    Ended,
}

/// Opens the job's input: lists it (a glob is expanded, a urls file read, a lines file counted) or prepares to
/// read it. Blocking; [`list`] runs it off the async runtime.
pub fn open(input: &InputSpec) -> Result<Box<dyn Source>, Error> {
    Ok(match input {
        InputSpec::Range { start, end, chunk } => Box::new(range::Range::new(*start, *end, *chunk)),
        InputSpec::File {
            path,
            split,
            chunk_bytes,
        } => Box::new(chunks::Chunks::open(path, *split, *chunk_bytes)?),
        InputSpec::Glob { pattern } => Box::new(glob::Glob::list(pattern)?),
        InputSpec::Urls { path, .. } => Box::new(urls::Urls::read(path)?),
        InputSpec::Lines { path } => Box::new(lines::Lines::open(path)?),
    })
}

/// Opens the job's input on tokio's blocking pool, so that a slow filesystem stalls nothing else. An error of
/// the input (a glob that matches nothing, an unreadable file) is reported at its place in the job file.
pub async fn list(spec: &JobSpec) -> Result<Box<dyn Source>, Error> {
    let input = spec.input.clone();
    let listed = tokio::task::spawn_blocking(move || open(&input))
        .await
        .map_err(|join| Error::Internal {
            message: format!("listing input failed: {join}"),
        })?;
    listed.map_err(|error| match error {
        Error::GlobNoMatch { .. } | Error::InputUnreadable { .. } => {
            spec.error_at(spec.input_span.clone(), &error.to_string()).into()
        }
        Error::GlobInvalid { pattern, message } => {
            let message = glob::syntax_message(spec, &pattern, &message);
            spec.error_at(spec.input_span.clone(), &message).into()
        }
        other => other,
    })
}

/// The kind of items the job's input gives a builtin task. A `lines` item is a byte range of the mapped file,
/// like a chunk, so every task that reads chunks reads lines with no new code.
pub fn task_input(input: &InputSpec) -> InputKind {
    match input {
        InputSpec::Range { .. } => InputKind::Range,
        InputSpec::File {
            split: Split::Lines, ..
        }
        | InputSpec::Lines { .. } => InputKind::Chunks,
        InputSpec::File { split: Split::None, .. } | InputSpec::Glob { .. } | InputSpec::Urls { .. } => {
            InputKind::WholeFiles
        }
    }
}

/// Largest batch of byte-range items (`file` chunks, `lines`): 16 bytes of descriptor each keeps a full batch
/// message at 64 KiB.
pub(crate) const BYTE_RANGE_BATCH_CAP: u64 = 4096;

/// The record's description of a byte-range item of the one mapped file.
pub(crate) fn byte_range(chunk: shared::item::Chunk) -> InputDesc {
    InputDesc::Chunk {
        offset: chunk.offset,
        len: chunk.len,
    }
}

/// The size and modification time (ns since the epoch) of `path`, for fingerprints.
pub(crate) fn stat(path: &Path) -> Result<(u64, u128), Error> {
    let meta = std::fs::metadata(path).map_err(|source| Error::InputUnreadable {
        path: path.to_path_buf(),
        source,
    })?;
    let modified = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok());
    Ok((meta.len(), modified.map_or(0, |d| d.as_nanos())))
}

/// The first 16 hex digits of a SHA-256 digest, for fingerprints of listings.
pub(crate) fn short_hex(digest: &[u8]) -> String {
    digest.iter().take(8).map(|b| format!("{b:02x}")).collect()
}

/// Scratch files and reference tools for the tests of each kind.
#[cfg(test)]
pub(crate) mod test_files {
    use std::path::{Path, PathBuf};

    pub fn tempdir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("supervisor-input-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        dir
    }

    /// `wc -l` of a file, run as the real tool.
    pub fn wc_l(path: &Path) -> u128 {
        let out = std::process::Command::new("wc")
            .arg("-l")
            .arg(path)
            .output()
            .expect("wc runs");
        let text = String::from_utf8_lossy(&out.stdout);
        text.split_whitespace()
            .next()
            .and_then(|n| n.parse().ok())
            .expect("wc prints a count")
    }
}
