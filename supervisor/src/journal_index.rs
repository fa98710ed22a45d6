//! Where each item's record lies in a journal, in memory proportional to the runs of records, not to the job.
//!
//! A journal holds records in the order items finished: groups of consecutive items (one worker's batch), the
//! groups interleaved. [`LineIndex`] keeps one segment per run of consecutive items whose final lines follow
//! each other in the file — a byte offset and a count, whatever the run's length — so that a 10^12-item job
//! stopped after a second, or 20 M records in a few thousand batches, take kilobytes. A later line for an item
//! (`--retry-failed`) splits the segment that held its earlier one; a line that is not final (a failed attempt
//! that will be retried, see [`crate::record::Record::retrying()`]) is skipped when reading. [`ItemSet`] is the
//! same idea for a set of items: sorted runs.
//!
//! This module only locates lines and reads them back in item or file order; what a line says is the caller's
//! ([`crate::journal`] recovers and finalizes from it).

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::ops::Range;
use std::path::Path;

use crate::record::Record;

/// A set of items, as sorted, disjoint, non-adjacent runs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ItemSet {
    runs: Vec<Range<u64>>,
}

/// Items in ascending order (others are ignored, as by [`ItemSet::push`]).
impl FromIterator<u64> for ItemSet {
    fn from_iter<I: IntoIterator<Item = u64>>(items: I) -> ItemSet {
        let mut set = ItemSet::default();
        for item in items {
            set.push(item);
        }
        set
    }
}

impl ItemSet {
    /// Adds `item`, which must be above every item added so far (items come in order); others are ignored.
    pub fn push(&mut self, item: u64) {
        match self.runs.last_mut() {
            Some(last) if last.end == item => last.end = item + 1,
            Some(last) if last.end > item => {}
            _ => self.runs.push(item..item + 1),
        }
    }

    pub fn contains(&self, item: u64) -> bool {
        let after = self.runs.partition_point(|run| run.start <= item);
        after > 0 && self.runs[after - 1].end > item
    }

    /// How many items the set holds.
    pub fn len(&self) -> u64 {
        self.runs.iter().map(|run| run.end - run.start).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.runs.is_empty()
    }

    /// The runs, in order.
    pub fn runs(&self) -> &[Range<u64>] {
        &self.runs
    }

    /// The items, in order.
    pub fn iter(&self) -> impl Iterator<Item = u64> + '_ {
        self.runs.iter().flat_map(Clone::clone)
    }
}

/// Final lines of consecutive items `first..end` (the map's key is `first`): starting at byte `offset`, after
/// `skip` final lines that belong to items before `first`, the next `end - first` final lines are theirs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Segment {
    end: u64,
    offset: u64,
    skip: u64,
}

/// Where the last final line of each recorded item is.
#[derive(Debug, Default)]
pub struct LineIndex {
    segments: BTreeMap<u64, Segment>,
    /// The previous final line: the first item of its segment, and its item.
    previous: Option<(u64, u64)>,
}

impl LineIndex {
    /// Notes a final line of `item` at byte `offset`; it replaces any earlier line of the item.
    pub fn push(&mut self, item: u64, offset: u64) {
        self.remove(item);
        // It continues the previous line's segment if it is the next item and that line ends its segment.
        if let Some((first, previous)) = self.previous
            && previous.checked_add(1) == Some(item)
            && let Some(segment) = self.segments.get_mut(&first)
            && segment.end == item
        {
            segment.end = item + 1;
            self.previous = Some((first, item));
            return;
        }
        let segment = Segment {
            end: item + 1,
            offset,
            skip: 0,
        };
        self.segments.insert(item, segment);
        self.previous = Some((item, item));
    }

    /// Drops `item`'s line from the index, splitting its segment.
    fn remove(&mut self, item: u64) {
        let Some((&first, &segment)) = self.segments.range(..=item).next_back() else {
            return;
        };
        if segment.end <= item {
            return;
        }
        self.segments.remove(&first);
        if first < item {
            self.segments.insert(first, Segment { end: item, ..segment });
        }
        if item + 1 < segment.end {
            self.segments.insert(
                item + 1,
                Segment {
                    end: segment.end,
                    offset: segment.offset,
                    skip: segment.skip + (item + 1 - first),
                },
            );
        }
        // The previous line's segment may have been the one split: it is no longer extended.
        if let Some((previous_first, _)) = self.previous
            && previous_first == first
        {
            self.previous = None;
        }
    }

    /// How many items have a line.
    pub fn items(&self) -> u64 {
        self.segments.iter().map(|(first, segment)| segment.end - first).sum()
    }

    /// How many items of `span` have a line.
    pub fn items_in(&self, span: Range<u64>) -> u64 {
        self.segments
            .iter()
            .map(|(&first, segment)| segment.end.min(span.end).saturating_sub(first.max(span.start)))
            .sum()
    }

    /// Whether `item` has a line.
    pub fn contains(&self, item: u64) -> bool {
        self.segments
            .range(..=item)
            .next_back()
            .is_some_and(|(_, segment)| segment.end > item)
    }

    /// The maximal runs of items of `span` that have no line.
    pub fn missing(&self, span: Range<u64>) -> Vec<Range<u64>> {
        let mut missing = Vec::new();
        let mut next = span.start;
        for (&first, segment) in self.segments.range(..span.end) {
            if segment.end <= span.start {
                continue;
            }
            if first > next {
                missing.push(next..first);
            }
            next = next.max(segment.end);
        }
        if next < span.end {
            missing.push(next..span.end);
        }
        missing
    }

    /// How many segments the index holds (its memory is proportional to this).
    pub fn segments(&self) -> usize {
        self.segments.len()
    }

    /// Calls `each(item, line)` for every indexed line of the journal at `path`, by item (`by_item`) or in file
    /// order, reading through a 1 MiB buffer (records come nearly in item order, so most seeks stay inside it).
    pub fn read(
        &self,
        path: &Path,
        by_item: bool,
        mut each: impl FnMut(u64, &[u8]) -> std::io::Result<()>,
    ) -> std::io::Result<()> {
        let mut order: Vec<(u64, Segment)> = self
            .segments
            .iter()
            .map(|(&first, &segment)| (first, segment))
            .collect();
        if !by_item {
            order.sort_unstable_by_key(|(_, segment)| (segment.offset, segment.skip));
        }
        let mut cursor = Cursor {
            reader: BufReader::with_capacity(1 << 20, File::open(path)?),
            position: 0,
            anchor: None,
            line: Vec::new(),
        };
        for (first, segment) in order {
            cursor.go_to(segment.offset, segment.skip)?;
            for item in first..segment.end {
                each(item, cursor.next_final()?)?;
            }
        }
        Ok(())
    }
}

/// Reads final lines forward from a segment's offset.
struct Cursor {
    reader: BufReader<File>,
    position: u64,
    /// The offset last sought to, and the final lines read since.
    anchor: Option<(u64, u64)>,
    line: Vec<u8>,
}

impl Cursor {
    /// Positions at the `skip`th final line after `offset`, reading on (not seeking back) when already past
    /// `offset` on the way there.
    fn go_to(&mut self, offset: u64, skip: u64) -> std::io::Result<()> {
        let mut to_skip = match self.anchor {
            Some((anchor, read)) if anchor == offset && read <= skip => skip - read,
            _ => {
                self.reader.seek_relative(offset as i64 - self.position as i64)?;
                self.position = offset;
                self.anchor = Some((offset, 0));
                skip
            }
        };
        while to_skip > 0 {
            self.next_final()?;
            to_skip -= 1;
        }
        Ok(())
    }

    /// The next final line (with its newline), skipping lines that are not final.
    fn next_final(&mut self) -> std::io::Result<&[u8]> {
        loop {
            self.line.clear();
            let len = self.reader.read_until(b'\n', &mut self.line)?;
            if len == 0 {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "the journal ended before a record it was seen to hold",
                ));
            }
            self.position += len as u64;
            if !is_retrying(&self.line) {
                if let Some((_, read)) = &mut self.anchor {
                    *read += 1;
                }
                return Ok(&self.line);
            }
        }
    }
}

/// The item of a journal line and whether the line is final. Records start with `{"item":N,` (we write them),
/// then `"retrying":true` when not final; anything else is parsed.
pub fn line_item(line: &[u8]) -> Option<(u64, bool)> {
    if let Some(rest) = line.strip_prefix(b"{\"item\":") {
        let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
        if digits > 0 && rest.get(digits) == Some(&b',') {
            let item = std::str::from_utf8(&rest[..digits]).ok()?.parse().ok()?;
            return Some((item, !rest[digits + 1..].starts_with(RETRYING)));
        }
    }
    let record: Record<serde::de::IgnoredAny> = crate::record::parse(line).ok()?;
    Some((record.item, !record.retrying))
}

const RETRYING: &[u8] = b"\"retrying\":true";

/// Whether a line we wrote is a non-final attempt line.
fn is_retrying(line: &[u8]) -> bool {
    matches!(line_item(line), Some((_, false)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_item_set_holds_runs() {
        let mut set = ItemSet::default();
        for item in [0, 1, 2, 5, 7, 8, u64::MAX - 1] {
            set.push(item);
        }
        assert_eq!(set.runs(), [0..3, 5..6, 7..9, u64::MAX - 1..u64::MAX]);
        assert_eq!(set.len(), 7);
        let members: Vec<u64> = (0..10).filter(|&item| set.contains(item)).collect();
        assert_eq!(members, [0, 1, 2, 5, 7, 8]);
        assert!(set.contains(u64::MAX - 1) && !set.contains(u64::MAX));
    }

    /// Against a plain per-item table: the last offset of each item wins, whatever the order lines came in.
    #[test]
    fn the_index_keeps_the_last_line_of_each_item_in_few_segments() {
        let mut index = LineIndex::default();
        let mut expected = std::collections::BTreeMap::new();
        // Two interleaved batches, then a re-run of some items.
        let mut lines = Vec::new();
        lines.extend(100..200u64);
        lines.extend(0..100u64);
        lines.extend([5, 6, 150]);
        for (offset, &item) in lines.iter().enumerate() {
            index.push(item, offset as u64);
            expected.insert(item, offset as u64);
        }
        assert_eq!(index.items(), 200);
        assert_eq!(index.items_in(50..120), 70);
        assert!(index.segments() <= 8, "{index:?}");
        // Every item's segment points at its last line.
        for (&item, &offset) in &expected {
            let (&first, segment) = index.segments.range(..=item).next_back().expect("segment");
            assert!(segment.end > item, "item {item}");
            // Lines of a segment's items are consecutive in file order after its skip.
            let position = segment.offset + segment.skip + (item - first);
            assert_eq!(position, offset, "item {item}: {index:?}");
        }
    }
}
