//! The `urls` input: bodies fetched over HTTP(S) by async tasks, written into one shared-memory arena, and handed
//! to workers as `(offset, len)` descriptors.
//!
//! ## Shape
//! - **[`Arena`]**: one memfd created by the supervisor, twice `max_in_flight_bytes` of address space, mapped by
//!   every worker read-only at `Init`. A body is written into a free, page-aligned slot of it; the slot is freed
//!   (its pages punched out with `fallocate`, so the memory really goes back) once the item is recorded.
//! - **The budget**: a semaphore of `max_in_flight_bytes` (counted in pages). A fetch takes its body's pages from
//!   it before writing, and gives them back when the slot is freed. An exhausted budget is the backpressure:
//!   fetches wait there, with their response headers in, until workers catch up. The arena has twice the budget's
//!   address space so that a slot of any size the budget allows can (almost always) be found despite
//!   fragmentation; when it cannot, the fetch waits for the next free.
//! - **The fetcher** ([`start`]): one tokio task running at most `fetch_concurrency` requests (reqwest on rustls),
//!   each with its own timeout and retries. It reports each item to the dispatcher as a [`FetchEvent`] through a
//!   channel; the dispatcher stays the only owner of job state and never waits on the network.
//!
//! A body larger than the whole budget fails its item (kind `fetch`) instead of waiting forever. A body whose
//! length the server does not announce (chunked encoding) is read into private memory first — one such body at a
//! time, at most the budget's size — and then copied into the arena.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use shared::job::FetchSpec;
use shared::region::SharedRegion;
use tokio::sync::{Notify, Semaphore, mpsc};
use tokio::task::JoinSet;

use crate::results::{Failure, FailureKind};

/// Memory is handed out and returned in whole pages (a punched hole frees whole pages only).
const PAGE: u64 = 4096;

/// A body's place in the arena. `reserved` whole pages from `offset` belong to it until it is released.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Slot {
    pub offset: u64,
    pub len: u64,
    reserved: u64,
}

/// The shared arena of fetched bodies and its in-flight budget.
#[derive(Debug)]
pub struct Arena {
    region: SharedRegion,
    /// Free ranges: offset → length, both page multiples, never adjacent (merged on release).
    free: Mutex<BTreeMap<u64, u64>>,
    /// Pages of budget left.
    budget: Semaphore,
    budget_pages: u64,
    freed: Notify,
    in_use: AtomicU64,
    peak_in_use: AtomicU64,
}

/// A body that cannot be placed in the arena at all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TooLarge {
    pub len: u64,
    pub budget: u64,
}

impl Arena {
    /// An arena for `max_in_flight_bytes` of bodies at once.
    pub fn new(max_in_flight_bytes: u64) -> std::io::Result<Arc<Arena>> {
        let budget_pages = max_in_flight_bytes.div_ceil(PAGE).clamp(1, u64::from(u32::MAX));
        let size = budget_pages * PAGE * 2;
        let size_usize = usize::try_from(size)
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidInput, "arena too large"))?;
        let region = SharedRegion::create_arena(size_usize)?;
        Ok(Arc::new(Arena {
            region,
            free: Mutex::new(BTreeMap::from([(0, size)])),
            budget: Semaphore::new(budget_pages as usize),
            budget_pages,
            freed: Notify::new(),
            in_use: AtomicU64::new(0),
            peak_in_use: AtomicU64::new(0),
        }))
    }

    /// The path a worker opens to map the arena.
    pub fn proc_path(&self) -> std::path::PathBuf {
        self.region.proc_path()
    }

    /// The budget in bytes (`max_in_flight_bytes` rounded up to whole pages).
    pub fn budget_bytes(&self) -> u64 {
        self.budget_pages * PAGE
    }

    /// Most bytes (whole pages) held at once so far.
    pub fn peak_in_use(&self) -> u64 {
        self.peak_in_use.load(Ordering::Relaxed)
    }

    /// Waits until `len` bytes fit in the budget and a free slot is found, and takes them. This is where fetching
    /// pauses when workers fall behind.
    pub async fn reserve(&self, len: u64) -> Result<Slot, TooLarge> {
        let pages = len.div_ceil(PAGE);
        if pages > self.budget_pages {
            return Err(TooLarge {
                len,
                budget: self.budget_bytes(),
            });
        }
        if pages == 0 {
            return Ok(Slot {
                offset: 0,
                len: 0,
                reserved: 0,
            });
        }
        // `pages` ≤ budget_pages ≤ u32::MAX, checked above and in `new`.
        let permit = self
            .budget
            .acquire_many(pages as u32)
            .await
            .map_err(|_| TooLarge { len, budget: 0 })?;
        permit.forget();
        let reserved = pages * PAGE;
        loop {
            // Registered before looking, so that a release between the look and the wait is not missed.
            let notified = self.freed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(offset) = self.take_free(reserved) {
                let now = self.in_use.fetch_add(reserved, Ordering::Relaxed) + reserved;
                self.peak_in_use.fetch_max(now, Ordering::Relaxed);
                return Ok(Slot { offset, len, reserved });
            }
            notified.await;
        }
    }

    /// First fit over the free ranges.
    fn take_free(&self, size: u64) -> Option<u64> {
        let mut free = self.free.lock().ok()?;
        let (&offset, &len) = free.iter().find(|(_, len)| **len >= size)?;
        free.remove(&offset);
        if len > size {
            free.insert(offset + size, len - size);
        }
        Some(offset)
    }

    /// Copies `bytes` into `slot` at `at` (relative to the slot); refuses bytes past the slot's length.
    pub fn write(&self, slot: &Slot, at: u64, bytes: &[u8]) -> Result<(), String> {
        let end = at.checked_add(bytes.len() as u64).ok_or("body offset overflow")?;
        if end > slot.len {
            return Err(format!("the body is longer than the {} bytes announced", slot.len));
        }
        self.region
            .write((slot.offset + at) as usize, bytes)
            .map_err(|error| format!("cannot write into the arena: {error}"))
    }

    /// Frees a slot: its pages are given back to the system and to the budget.
    pub fn release(&self, slot: Slot) {
        if slot.reserved == 0 {
            return;
        }
        // A failed punch only means the pages stay resident until reused; the space is free either way.
        let _ = self.region.release(slot.offset as usize, slot.reserved as usize);
        if let Ok(mut free) = self.free.lock() {
            let mut offset = slot.offset;
            let mut len = slot.reserved;
            if let Some((&before, &before_len)) = free.range(..offset).next_back()
                && before + before_len == offset
            {
                free.remove(&before);
                offset = before;
                len += before_len;
            }
            if let Some(after_len) = free.remove(&(offset + len)) {
                len += after_len;
            }
            free.insert(offset, len);
        }
        self.in_use.fetch_sub(slot.reserved, Ordering::Relaxed);
        self.budget.add_permits((slot.reserved / PAGE) as usize);
        self.freed.notify_waiters();
    }
}

/// What the fetcher tells the dispatcher about one item.
#[derive(Debug)]
pub enum FetchEvent {
    /// The body is in the arena.
    Fetched { item: u64, slot: Slot },
    /// The fetch failed for good (after its retries): the item ends `failed` with kind `fetch`.
    Failed {
        item: u64,
        failure: Failure,
        elapsed: Duration,
    },
}

/// Counters of the fetch stage, for the summary.
#[derive(Debug, Default)]
pub struct FetchCounters {
    pub bytes: AtomicU64,
    pub requests: AtomicU64,
}

/// Why one attempt failed, and whether another attempt may succeed.
#[derive(Debug)]
struct AttemptError {
    message: String,
    status: Option<u16>,
    retryable: bool,
}

impl AttemptError {
    fn transient(message: String) -> AttemptError {
        AttemptError {
            message,
            status: None,
            retryable: true,
        }
    }
}

/// Everything one fetch needs, shared by all of them.
struct Shared {
    client: reqwest::Client,
    arena: Arc<Arena>,
    spec: FetchSpec,
    /// Bodies of unannounced length are read one at a time (see the module documentation).
    unannounced: tokio::sync::Mutex<()>,
    counters: Arc<FetchCounters>,
}

/// Builds the HTTP client: rustls (ring), redirects followed (up to 10), no proxy from the environment (a job's
/// URLs are fetched directly, so that what a run contacts is what its urls file says).
pub fn client() -> Result<reqwest::Client, String> {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::limited(10))
        .no_proxy()
        .user_agent(concat!("supervisor/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|error| format!("cannot build the HTTP client: {error}"))
}

/// Starts fetching `todo` (item numbers, in order; `urls[item]` is each one's URL) and reports every item on
/// `events`. Dropping or aborting the returned task stops every fetch in progress.
pub fn start(
    urls: Arc<Vec<String>>,
    todo: Vec<u64>,
    spec: FetchSpec,
    arena: Arc<Arena>,
    counters: Arc<FetchCounters>,
    events: mpsc::Sender<FetchEvent>,
) -> Result<tokio::task::JoinHandle<()>, String> {
    let shared = Arc::new(Shared {
        client: client()?,
        arena,
        spec,
        unannounced: tokio::sync::Mutex::new(()),
        counters,
    });
    Ok(tokio::spawn(async move {
        let slots = Arc::new(Semaphore::new(shared.spec.concurrency));
        let mut running = JoinSet::new();
        for item in todo {
            let Ok(permit) = Arc::clone(&slots).acquire_owned().await else {
                return;
            };
            // Reap finished fetches as we go, so the set does not grow with the job.
            while running.try_join_next().is_some() {}
            let shared = Arc::clone(&shared);
            let url = urls.get(item as usize).cloned().unwrap_or_default();
            let events = events.clone();
            running.spawn(async move {
                let event = fetch_item(&shared, item, &url).await;
                drop(permit);
                let _ = events.send(event).await;
            });
        }
        while running.join_next().await.is_some() {}
    }))
}

/// Fetches the body of one URL, with its retries, into `arena` (for `supervisor replay`).
pub async fn fetch_one(item: u64, url: &str, spec: &FetchSpec, arena: Arc<Arena>) -> Result<FetchEvent, String> {
    let shared = Shared {
        client: client()?,
        arena,
        spec: spec.clone(),
        unannounced: tokio::sync::Mutex::new(()),
        counters: Arc::default(),
    };
    Ok(fetch_item(&shared, item, url).await)
}

/// Fetches one item with its retries.
async fn fetch_item(shared: &Shared, item: u64, url: &str) -> FetchEvent {
    let started = Instant::now();
    let mut attempt = 0;
    loop {
        attempt += 1;
        shared.counters.requests.fetch_add(1, Ordering::Relaxed);
        match fetch_once(shared, url).await {
            Ok(slot) => {
                shared.counters.bytes.fetch_add(slot.len, Ordering::Relaxed);
                return FetchEvent::Fetched { item, slot };
            }
            Err(error) if error.retryable && attempt <= shared.spec.retries => {
                let backoff = shared.spec.retry_backoff.saturating_mul(1 << (attempt - 1).min(16));
                tokio::time::sleep(backoff).await;
            }
            Err(error) => {
                let tries = if attempt == 1 {
                    String::new()
                } else {
                    format!(" (after {attempt} attempts)")
                };
                return FetchEvent::Failed {
                    item,
                    failure: Failure {
                        kind: FailureKind::Fetch,
                        message: format!("{url}: {}{tries}", error.message),
                        signal: None,
                        code: error.status.map(i32::from),
                        stderr: None,
                    },
                    elapsed: started.elapsed(),
                };
            }
        }
    }
}

/// One request: headers within the timeout, then room in the budget (untimed), then the body within what is left
/// of the timeout.
async fn fetch_once(shared: &Shared, url: &str) -> Result<Slot, AttemptError> {
    let limit = shared.spec.timeout;
    let started = Instant::now();
    let timed_out = || AttemptError::transient(format!("timed out after {}", crate::failure::human_duration(limit)));
    let mut response = tokio::time::timeout(limit, shared.client.get(url).send())
        .await
        .map_err(|_| timed_out())?
        .map_err(|error| AttemptError::transient(describe(error)))?;
    let status = response.status();
    if !status.is_success() {
        let code = status.as_u16();
        return Err(AttemptError {
            message: format!("HTTP status {status}"),
            status: Some(code),
            retryable: status.is_server_error() || code == 408 || code == 429,
        });
    }
    let too_large = |len: u64| AttemptError {
        message: format!(
            "the body ({len} bytes) is larger than max_in_flight_bytes ({} bytes)",
            shared.arena.budget_bytes()
        ),
        status: None,
        retryable: false,
    };
    match response.content_length() {
        Some(len) => {
            if len > shared.arena.budget_bytes() {
                return Err(too_large(len));
            }
            let before_wait = started.elapsed();
            let slot = shared.arena.reserve(len).await.map_err(|e| too_large(e.len))?;
            // The wait for room does not count against the timeout.
            let read = tokio::time::timeout(limit.saturating_sub(before_wait), async {
                let mut at = 0;
                while let Some(chunk) = response.chunk().await.map_err(describe)? {
                    shared.arena.write(&slot, at, &chunk)?;
                    at += chunk.len() as u64;
                }
                Ok::<u64, String>(at)
            })
            .await;
            match read {
                Ok(Ok(got)) if got == len => Ok(slot),
                Ok(Ok(got)) => {
                    shared.arena.release(slot);
                    Err(AttemptError::transient(format!(
                        "the body ended after {got} of {len} bytes"
                    )))
                }
                Ok(Err(message)) => {
                    shared.arena.release(slot);
                    Err(AttemptError::transient(format!("reading the body: {message}")))
                }
                Err(_) => {
                    shared.arena.release(slot);
                    Err(timed_out())
                }
            }
        }
        None => {
            let _one_at_a_time = shared.unannounced.lock().await;
            let cap = shared.arena.budget_bytes();
            let body = tokio::time::timeout(limit.saturating_sub(started.elapsed()), async {
                let mut body = Vec::new();
                while let Some(chunk) = response.chunk().await.map_err(describe)? {
                    if (body.len() + chunk.len()) as u64 > cap {
                        return Err(format!("the body is larger than max_in_flight_bytes ({cap} bytes)"));
                    }
                    body.extend_from_slice(&chunk);
                }
                Ok::<Vec<u8>, String>(body)
            })
            .await
            .map_err(|_| timed_out())?
            .map_err(|message| AttemptError {
                retryable: !message.contains("max_in_flight_bytes"),
                message: format!("reading the body: {message}"),
                status: None,
            })?;
            let slot = shared
                .arena
                .reserve(body.len() as u64)
                .await
                .map_err(|e| too_large(e.len))?;
            if let Err(message) = shared.arena.write(&slot, 0, &body) {
                shared.arena.release(slot);
                return Err(AttemptError::transient(message));
            }
            Ok(slot)
        }
    }
}

/// A reqwest error with its causes (reqwest's own text often hides the useful part, e.g. "connection refused"),
/// without the URL (the item's message starts with it already).
fn describe(error: reqwest::Error) -> String {
    let error = error.without_url();
    let mut text = error.to_string();
    let mut source = std::error::Error::source(&error);
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn slots_are_page_aligned_reused_and_bounded_by_the_budget() {
        let arena = Arena::new(3 * PAGE).expect("memfd");
        let a = arena.reserve(PAGE + 1).await.expect("fits");
        assert_eq!((a.offset, a.reserved), (0, 2 * PAGE));
        let b = arena.reserve(10).await.expect("fits");
        assert_eq!(b.offset, 2 * PAGE);
        assert_eq!(
            arena.reserve(4 * PAGE).await,
            Err(TooLarge {
                len: 4 * PAGE,
                budget: 3 * PAGE
            })
        );
        // The budget is spent: the next reservation waits until a release.
        let waiting = tokio::time::timeout(Duration::from_millis(50), arena.reserve(PAGE)).await;
        assert!(waiting.is_err(), "reserved past the budget");
        arena.write(&a, 0, b"hello").expect("inside");
        assert!(arena.write(&b, 5, &[0; 6]).is_err(), "past the body's length");
        arena.release(a);
        let c = arena.reserve(2 * PAGE).await.expect("room again");
        assert_eq!(c.offset, 0, "first fit reuses the freed range");
        arena.release(b);
        arena.release(c);
        assert_eq!(
            arena.free.lock().expect("lock").len(),
            1,
            "free ranges merge back into one"
        );
        assert_eq!(arena.peak_in_use(), 3 * PAGE);
        assert_eq!(arena.reserve(0).await.expect("empty").len, 0);
    }
}
