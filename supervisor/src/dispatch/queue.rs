//! The work not handed out yet, and what an earlier run already recorded.
//!
//! In the order it is handed out: *suspects* and due *retries* (each run alone, so that a death is
//! attributable), *requeued* spans (work of a dead worker it never finished, uncharged), then *fresh* items in
//! input order, skipping items an earlier run recorded. Which worker gets what, and when, is the state
//! machine's decision; this module only keeps the lists.

use crate::journal::ItemSet;
use std::collections::VecDeque;
use std::time::Instant;

#[derive(Debug)]
pub(super) struct WorkQueue {
    /// First item of this run's span.
    start: u64,
    /// Next fresh item never handed out.
    next_item: u64,
    /// End of the items pulled from the source: `next_item .. pulled` are ready to hand out.
    pulled: u64,
    /// End of this run's span, once known: from the start for an input of known length, when the source says
    /// it ended for a stream.
    end: Option<u64>,
    /// Items recorded by an earlier run (`--resume`), never handed out. Read only through [`Self::is_done_before`].
    done_before: ItemSet,
    /// How many of them lie in `next_item .. end` (once the end is known): fresh items left are counted exactly.
    done_ahead: u64,
    /// Spans `(first, len)` to hand out again before new items.
    requeued: VecDeque<(u64, u64)>,
    /// Items to run alone to find which one kills its worker.
    suspects: VecDeque<u64>,
    /// Failed items waiting for a retry, with when they may run.
    retry_at: Vec<(Instant, u64)>,
}

impl WorkQueue {
    /// The queue of `span`, whose end is known when `known` (else `span.end` is only a bound: the input is a
    /// stream). `fresh` is false when items arrive another way (fetched items of a `urls` input): then no item
    /// of the span is fresh.
    pub(super) fn new(span: std::ops::Range<u64>, known: bool, done_before: ItemSet, fresh: bool) -> WorkQueue {
        let next_item = if fresh { span.start } else { span.end };
        let mut queue = WorkQueue {
            start: span.start,
            next_item,
            pulled: next_item,
            end: (known || !fresh).then_some(span.end),
            done_before,
            done_ahead: 0,
            requeued: VecDeque::new(),
            suspects: VecDeque::new(),
            retry_at: Vec::new(),
        };
        queue.count_done_ahead();
        queue
    }

    /// Counts the items an earlier run recorded in `next_item .. end`, by runs.
    fn count_done_ahead(&mut self) {
        let Some(end) = self.end else { return };
        let span = self.next_item..end;
        let runs = self.done_before.runs();
        let from = runs.partition_point(|run| run.end <= span.start);
        self.done_ahead = runs[from..]
            .iter()
            .take_while(|run| run.start < span.end)
            .map(|run| run.end.min(span.end) - run.start.max(span.start))
            .sum();
    }

    /// Whether an earlier run recorded `item` (the one place that reads it).
    pub(super) fn is_done_before(&self, item: u64) -> bool {
        self.done_before.contains(item)
    }

    /// The items of `span` an earlier run recorded, in order.
    pub(super) fn done_before_in(&self, span: std::ops::Range<u64>) -> impl Iterator<Item = u64> + '_ {
        let runs = self.done_before.runs();
        let from = runs.partition_point(|run| run.end <= span.start);
        runs[from..]
            .iter()
            .take_while(move |run| run.start < span.end)
            .flat_map(move |run| run.start.max(span.start)..run.end.min(span.end))
    }

    /// Items of this run, once known.
    pub(super) fn total(&self) -> Option<u64> {
        self.end.map(|end| end - self.start)
    }

    /// Items of this run pulled from the source so far: the whole run once the input has ended.
    pub(super) fn seen(&self) -> u64 {
        self.end.unwrap_or(self.pulled) - self.start
    }

    /// Where to pull from next, and at most how many (up to `want`): `None` once every item was pulled.
    pub(super) fn to_pull(&self, want: u64) -> Option<(u64, u64)> {
        let left = self.end.map_or(u64::MAX, |end| end - self.pulled);
        (left > 0 && want > 0).then_some((self.pulled, want.min(left)))
    }

    /// `n` more items were pulled.
    pub(super) fn pulled(&mut self, n: u64) {
        self.pulled += n;
    }

    /// The source ended where the next pull would have started: the run's length is now known.
    pub(super) fn ended(&mut self) {
        self.end = Some(self.pulled);
        self.count_done_ahead();
    }

    /// Fresh items not handed out yet (items an earlier run recorded not counted), when the end is known;
    /// `None` for a stream that has not ended.
    pub(super) fn fresh_left(&mut self) -> Option<u64> {
        self.skip_done_before();
        self.end.map(|end| end - self.next_item - self.done_ahead)
    }

    /// Fresh items pulled and ready to hand out.
    pub(super) fn fresh_ready(&mut self) -> u64 {
        self.skip_done_before();
        self.pulled - self.next_item
    }

    /// Items of requeued spans.
    pub(super) fn requeued_len(&self) -> u64 {
        self.requeued.iter().map(|(_, len)| len).sum()
    }

    /// Items queued to run again (requeued, suspects, retries), not counting fresh ones.
    pub(super) fn queued(&self) -> u64 {
        self.requeued_len() + self.suspects.len() as u64 + self.retry_at.len() as u64
    }

    /// Whether anything but fresh items is left (a retry not due yet counts).
    pub(super) fn has_queued(&self) -> bool {
        !self.requeued.is_empty() || !self.suspects.is_empty() || !self.retry_at.is_empty()
    }

    /// Puts spans back at the front, in the given order, ahead of everything requeued before.
    pub(super) fn requeue_front(&mut self, spans: Vec<(u64, u64)>) {
        for span in spans.into_iter().rev().filter(|(_, len)| *len > 0) {
            self.requeued.push_front(span);
        }
    }

    /// Marks items to be run alone.
    pub(super) fn suspect(&mut self, items: std::ops::Range<u64>) {
        self.suspects.extend(items);
    }

    pub(super) fn schedule_retry(&mut self, at: Instant, item: u64) {
        self.retry_at.push((at, item));
    }

    /// When the earliest retry is due.
    pub(super) fn next_retry(&self) -> Option<Instant> {
        self.retry_at.iter().map(|(at, _)| *at).min()
    }

    /// Whether a single item (a suspect, or a retry due by `now`) waits to run alone.
    pub(super) fn has_single(&self, now: Instant) -> bool {
        !self.suspects.is_empty() || self.retry_at.iter().any(|(at, _)| *at <= now)
    }

    /// The next item to run alone: a suspect first, then a retry due by `now`.
    pub(super) fn take_single(&mut self, now: Instant) -> Option<u64> {
        if let Some(item) = self.suspects.pop_front() {
            return Some(item);
        }
        let index = self.retry_at.iter().position(|(at, _)| *at <= now)?;
        Some(self.retry_at.swap_remove(index).1)
    }

    /// Up to `size` items of the first requeued span.
    pub(super) fn take_requeued(&mut self, size: u64) -> Option<(u64, u64)> {
        let (first, len) = self.requeued.front_mut()?;
        let take = size.min(*len);
        let span = (*first, take);
        *first += take;
        *len -= take;
        if *len == 0 {
            self.requeued.pop_front();
        }
        Some(span)
    }

    /// Up to `size` consecutive fresh items of those pulled, none recorded by an earlier run.
    pub(super) fn take_fresh(&mut self, size: u64) -> Option<(u64, u64)> {
        self.skip_done_before();
        if self.next_item >= self.pulled {
            return None;
        }
        let first = self.next_item;
        let mut end = first + 1;
        while end < self.pulled && end - first < size && !self.is_done_before(end) {
            end += 1;
        }
        self.next_item = end;
        Some((first, end - first))
    }

    fn skip_done_before(&mut self) {
        while self.next_item < self.pulled && self.is_done_before(self.next_item) {
            self.next_item += 1;
            self.done_ahead = self.done_ahead.saturating_sub(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fresh_batches_skip_items_recorded_before_and_stop_at_them() {
        // Items 2 and 5 of 0..8 were recorded by an earlier run.
        let done: ItemSet = [2, 5].into_iter().collect();
        let mut queue = WorkQueue::new(0..8, true, done, true);
        assert_eq!(queue.fresh_left(), Some(6), "the two recorded before are not fresh");
        queue.pulled(8);
        let mut taken = Vec::new();
        while let Some(span) = queue.take_fresh(10) {
            taken.push(span);
        }
        assert_eq!(taken, vec![(0, 2), (3, 2), (6, 2)]);
        assert_eq!(queue.fresh_left(), Some(0));
    }

    #[test]
    fn only_pulled_items_are_handed_out_and_a_stream_learns_its_end_when_it_ends() {
        let mut queue = WorkQueue::new(5..u64::MAX, false, ItemSet::default(), true);
        assert_eq!((queue.total(), queue.fresh_left()), (None, None));
        assert_eq!(queue.to_pull(3), Some((5, 3)));
        assert_eq!(queue.take_fresh(10), None, "nothing pulled yet");
        queue.pulled(3);
        assert_eq!(queue.take_fresh(2), Some((5, 2)));
        assert_eq!(queue.take_fresh(10), Some((7, 1)));
        assert_eq!(queue.to_pull(4), Some((8, 4)));
        queue.ended();
        assert_eq!((queue.total(), queue.seen(), queue.fresh_left()), (Some(3), 3, Some(0)));
        assert_eq!(queue.to_pull(4), None);
        // A shard's span of a known input pulls no further than its end.
        let bounded = WorkQueue::new(10..12, true, ItemSet::default(), true);
        assert_eq!(bounded.to_pull(100), Some((10, 2)));
    }

    #[test]
    fn requeued_spans_come_back_in_order_and_in_pieces() {
        let mut queue = WorkQueue::new(0..0, true, ItemSet::default(), true);
        queue.requeue_front(vec![(10, 3), (20, 0), (30, 2)]);
        queue.requeue_front(vec![(5, 1)]);
        assert_eq!(queue.requeued_len(), 6);
        let mut taken = Vec::new();
        while let Some(span) = queue.take_requeued(2) {
            taken.push(span);
        }
        assert_eq!(taken, vec![(5, 1), (10, 2), (12, 1), (30, 2)]);
    }

    #[test]
    fn suspects_run_before_due_retries_and_retries_wait_for_their_time() {
        let now = Instant::now();
        let later = now + std::time::Duration::from_secs(3600);
        let mut queue = WorkQueue::new(0..0, true, ItemSet::default(), true);
        queue.schedule_retry(later, 7);
        queue.schedule_retry(now, 8);
        queue.suspect(3..5);
        assert_eq!(queue.queued(), 4);
        let order: Vec<u64> = std::iter::from_fn(|| queue.take_single(now)).collect();
        assert_eq!(order, vec![3, 4, 8]);
        assert!(!queue.has_single(now), "the retry due in an hour is not due");
        assert_eq!(queue.next_retry(), Some(later));
        assert_eq!(queue.take_single(later), Some(7));
    }
}
