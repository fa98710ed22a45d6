//! A counting allocator for tests that bound memory: the system allocator, also counting the heap bytes live on
//! each thread and their peak. A test binary installs it with
//! `#[global_allocator] static ALLOCATOR: sys::alloc::Counting = sys::alloc::Counting;` and measures with
//! [`peak_growth`]. Counting per thread keeps other tests running at the same time out of the figure.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

thread_local! {
    static LIVE: Cell<isize> = const { Cell::new(0) };
    static PEAK: Cell<isize> = const { Cell::new(0) };
}

/// The system allocator, counting live bytes and their peak per thread.
#[derive(Debug)]
pub struct Counting;

// SAFETY: every call is forwarded to `System` with the same arguments; the counters (const thread-locals with no
// destructor, so never allocating) have no effect on memory.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded as is; the caller upholds `alloc`'s contract.
        let pointer = unsafe { System.alloc(layout) };
        if !pointer.is_null() {
            let size = isize::try_from(layout.size()).unwrap_or(isize::MAX);
            let live = LIVE.with(|live| {
                live.set(live.get().saturating_add(size));
                live.get()
            });
            PEAK.with(|peak| peak.set(peak.get().max(live)));
        }
        pointer
    }

    unsafe fn dealloc(&self, pointer: *mut u8, layout: Layout) {
        let size = isize::try_from(layout.size()).unwrap_or(isize::MAX);
        LIVE.with(|live| live.set(live.get().saturating_sub(size)));
        // SAFETY: forwarded as is; `pointer` came from `alloc` with this layout.
        unsafe { System.dealloc(pointer, layout) }
    }
}

/// Bytes this thread had allocated at the peak while `work` ran, above what was live when it started (0 unless
/// [`Counting`] is the global allocator).
pub fn peak_growth(work: impl FnOnce()) -> usize {
    let base = LIVE.with(Cell::get);
    PEAK.with(|peak| peak.set(base));
    work();
    usize::try_from(PEAK.with(Cell::get).saturating_sub(base)).unwrap_or(0)
}
