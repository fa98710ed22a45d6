//! Batch sizing: how many items go into the next batch.
//!
//! A round trip to a worker on the other CPU costs tens of microseconds (see docs/design.md), so a batch should
//! hold enough work to make that negligible: the sizer aims at [`TARGET_BATCH`] of task time per batch, using a
//! moving average of the per-item time workers report. Near the end of the job, batches shrink so that every
//! worker gets a share of what is left instead of one worker holding the tail.

use std::time::Duration;

/// Task time a batch should hold.
pub const TARGET_BATCH: Duration = Duration::from_millis(10);

/// Work a worker's queue of batches should cover.
pub const QUEUE_TARGET: Duration = Duration::from_micros(500);
/// Batches queued per worker at the least (one running, one waiting) and at the most.
pub const MIN_PREFETCH: usize = 2;
pub const MAX_PREFETCH: usize = 32;

/// Per-item time assumed at least, so that near-free items (noop) still get finite batches.
const MIN_ITEM_NANOS: f64 = 50.0;

/// Weight of the newest observation in the moving average.
const SMOOTHING: f64 = 0.3;

#[derive(Debug, Clone)]
pub struct BatchSizer {
    fixed: Option<u64>,
    /// Largest batch the input kind allows (descriptors must stay small).
    cap: u64,
    /// Moving average of task time per item, in nanoseconds; `None` until a batch finished.
    item_nanos: Option<f64>,
}

impl BatchSizer {
    /// `fixed` is the job's `batch = N`, `cap` the largest batch the input kind allows.
    pub fn new(fixed: Option<u64>, cap: u64) -> BatchSizer {
        BatchSizer {
            fixed,
            cap: cap.max(1),
            item_nanos: None,
        }
    }

    /// Size of the next batch, given how many items are left to hand out and how many workers share them.
    pub fn next_size(&self, remaining: u64, workers: usize) -> u64 {
        if remaining == 0 {
            return 0;
        }
        if let Some(fixed) = self.fixed {
            return fixed.min(remaining);
        }
        let Some(item_nanos) = self.item_nanos else {
            // Nothing measured yet: one item tells us the cost quickly.
            return 1;
        };
        let wanted = (TARGET_BATCH.as_nanos() as f64 / item_nanos.max(MIN_ITEM_NANOS)).max(1.0) as u64;
        let fair_share = remaining.div_ceil(workers.max(1) as u64 * 4);
        wanted.min(fair_share).min(self.cap).clamp(1, remaining)
    }

    /// How many batches of `size` items a worker should hold so that its queue covers [`QUEUE_TARGET`] of work:
    /// two for batches of normal size (one running, one waiting), more for tiny ones (e.g. a fixed `batch = 1`
    /// of cheap items), so that a worker never waits a cross-CPU round trip (tens of µs) between batches.
    pub fn prefetch(&self, size: u64) -> usize {
        let Some(item_nanos) = self.item_nanos else {
            return MIN_PREFETCH;
        };
        let batch_nanos = (size.max(1) as f64 * item_nanos.max(MIN_ITEM_NANOS)).max(1.0);
        ((QUEUE_TARGET.as_nanos() as f64 / batch_nanos) as usize).clamp(MIN_PREFETCH, MAX_PREFETCH)
    }

    /// Records that `items` items took `task_micros` of task time in total.
    pub fn observe(&mut self, items: u64, task_micros: u64) {
        if items == 0 {
            return;
        }
        let sample = task_micros as f64 * 1000.0 / items as f64;
        self.item_nanos = Some(match self.item_nanos {
            None => sample,
            Some(average) => average + SMOOTHING * (sample - average),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn starts_with_one_item_then_follows_the_measured_cost() {
        let mut sizer = BatchSizer::new(None, 1 << 20);
        assert_eq!(sizer.next_size(1_000_000, 2), 1);
        sizer.observe(1, 1_000); // 1 ms per item
        assert_eq!(sizer.next_size(1_000_000, 2), 10);
        let mut cheap = BatchSizer::new(None, 1 << 20);
        cheap.observe(1000, 100); // 100 ns per item
        assert_eq!(cheap.next_size(1_000_000, 2), 100_000);
    }

    #[test]
    fn near_free_items_are_bounded_by_the_floor_and_the_cap() {
        let mut sizer = BatchSizer::new(None, 4096);
        sizer.observe(100_000, 0);
        assert_eq!(sizer.next_size(10_000_000, 2), 4096);
        let mut uncapped = BatchSizer::new(None, u64::MAX);
        uncapped.observe(100_000, 0);
        assert_eq!(uncapped.next_size(10_000_000, 2), 200_000); // 10 ms / 50 ns
    }

    #[test]
    fn the_tail_is_shared_between_workers() {
        let mut sizer = BatchSizer::new(None, 1 << 20);
        sizer.observe(1000, 100);
        // 80 items left for 2 workers: at most 10 per batch, so both get some.
        assert_eq!(sizer.next_size(80, 2), 10);
        assert_eq!(sizer.next_size(3, 2), 1);
    }

    #[test]
    fn tiny_batches_are_queued_deeper() {
        let mut sizer = BatchSizer::new(Some(1), 1 << 20);
        assert_eq!(sizer.prefetch(1), MIN_PREFETCH);
        sizer.observe(1000, 0); // ~free items: 50 ns floor → 10 000 per 500 µs
        assert_eq!(sizer.prefetch(1), MAX_PREFETCH);
        sizer.observe(10, 10_000); // 1 ms per item
        assert!(sizer.prefetch(1) <= 3, "{}", sizer.prefetch(1));
        let mut auto = BatchSizer::new(None, 1 << 20);
        auto.observe(1000, 100);
        let size = auto.next_size(1_000_000, 2);
        assert_eq!(auto.prefetch(size), MIN_PREFETCH);
    }

    #[test]
    fn fixed_size_is_honoured_but_never_exceeds_what_is_left() {
        let sizer = BatchSizer::new(Some(64), 16);
        assert_eq!(sizer.next_size(1000, 2), 64);
        assert_eq!(sizer.next_size(10, 2), 10);
        assert_eq!(sizer.next_size(0, 2), 0);
    }

    #[test]
    fn the_average_moves_towards_new_observations() {
        let mut sizer = BatchSizer::new(None, u64::MAX);
        sizer.observe(10, 10_000); // 1 ms/item
        sizer.observe(10, 100); // 10 µs/item
        let size = sizer.next_size(u64::MAX, 1);
        assert!(size > 10 && size < 1000, "{size}");
    }
}
