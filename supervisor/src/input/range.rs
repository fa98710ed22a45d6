//! The `range` input: item `i` is the sub-range `[start + i*chunk, min(start + (i+1)*chunk, end))`.
//!
//! Nothing is listed: every answer is arithmetic, so a range of 10^12 items costs the same as one of 10. A batch
//! carries only a count; the worker derives each sub-range from the [`InputPlan`] it got at start-up.

use std::path::Path;

use shared::item::{BatchItems, InputPlan, range_item_count};

use super::{BodyOf, Source};
use crate::error::Error;
use crate::results::InputDesc;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Range {
    start: u64,
    end: u64,
    chunk: u64,
}

impl Range {
    pub fn new(start: u64, end: u64, chunk: u64) -> Range {
        Range { start, end, chunk }
    }

    fn plan_of(&self) -> InputPlan {
        InputPlan::Range {
            start: self.start,
            end: self.end,
            chunk: self.chunk,
        }
    }
}

impl Source for Range {
    fn key(&self) -> &'static str {
        "range"
    }

    fn known_len(&self) -> Option<u64> {
        Some(range_item_count(self.start, self.end, self.chunk))
    }

    fn items(&self, _first: u64, len: u64, _body: BodyOf<'_>) -> BatchItems {
        BatchItems::Range { count: len }
    }

    fn describe(&self, index: u64) -> InputDesc {
        // Indices below `len` never overflow: the same arithmetic as the worker's (`InputPlan::range_item`).
        let (start, end) = self.plan_of().range_item(index).unwrap_or((self.end, self.end));
        InputDesc::Range { start, end }
    }

    fn plan(&self, _arena: Option<&Path>) -> InputPlan {
        self.plan_of()
    }

    fn batch_cap(&self) -> u64 {
        1 << 20
    }

    fn fingerprint(&self) -> Result<String, Error> {
        Ok(format!("range {}..{} by {}", self.start, self.end, self.chunk))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::input::Pulled;

    fn bounds(source: &Range, index: u64) -> (u64, u64) {
        match source.describe(index) {
            InputDesc::Range { start, end } => (start, end),
            other => panic!("expected a range, got {other:?}"),
        }
    }

    #[test]
    fn range_items_tile_the_range_and_the_last_one_is_cut_at_end() {
        for (start, end, chunk) in [(0, 100, 7), (5, 28, 10), (3, 4, 1), (0, 64, 64), (10, 11, 1000)] {
            let source = Range::new(start, end, chunk);
            let len = source.known_len().expect("known");
            // Independent: the number of multiples of `chunk` needed to cover `end - start`.
            let mut expected_len = 0;
            while start + expected_len * chunk < end {
                expected_len += 1;
            }
            assert_eq!(len, expected_len, "{start}..{end} by {chunk}");
            let mut at = start;
            for index in 0..len {
                let (lo, hi) = bounds(&source, index);
                assert_eq!(lo, at);
                assert!(hi > lo && hi - lo <= chunk && hi <= end);
                at = hi;
            }
            assert_eq!(at, end);
        }
    }

    #[test]
    fn range_items_at_the_top_of_u64_do_not_overflow() {
        let source = Range::new(u64::MAX - 5, u64::MAX, 2);
        assert_eq!(source.known_len(), Some(3));
        assert_eq!(bounds(&source, 0), (u64::MAX - 5, u64::MAX - 3));
        assert_eq!(bounds(&source, 2), (u64::MAX - 1, u64::MAX));
    }

    #[test]
    fn pulling_a_range_stops_at_its_end() {
        let mut source = Range::new(0, 10, 3);
        assert_eq!(source.pull(0, 2).expect("pull"), Pulled::Ready(2));
        assert_eq!(source.pull(2, 100).expect("pull"), Pulled::Ready(2));
        assert_eq!(source.pull(4, 1).expect("pull"), Pulled::Ended);
        assert_eq!(source.items(1, 3, &|_| None), BatchItems::Range { count: 3 });
    }
}
