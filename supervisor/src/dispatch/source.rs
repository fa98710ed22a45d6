//! The dispatcher's one view of the input: the job's [`input::Source`], owned, and asked through here only.
//!
//! The state machine pulls fresh items with [`Source::pull`] as workers need them (so many are ready, none yet,
//! or the input ended, which is when a stream's length becomes known), builds batches, describes items for their
//! records, and releases each item once it is recorded, so that a stream keeps only the items in flight. Which
//! kind of input it is stays behind the trait: a new kind, or a stream fed by a reader task (stdin), changes
//! nothing here or in the state machine.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use shared::item::{Batch, InputPlan};

use crate::error::Error;
use crate::fetch::Slot;
use crate::input::{self, Pulled};
use crate::results::InputDesc;

#[derive(Debug)]
pub(super) struct Source {
    input: Box<dyn input::Source>,
}

impl Source {
    pub(super) fn new(input: Box<dyn input::Source>) -> Source {
        Source { input }
    }

    /// The input, back to the caller at the end of the run.
    pub(super) fn into_inner(self) -> Box<dyn input::Source> {
        self.input
    }

    /// Items of the whole input (a shard owns a span of them), once known.
    pub(super) fn known_len(&self) -> Option<u64> {
        self.input.known_len()
    }

    /// Up to `max` items from `first` on, without blocking (see [`input::Source::pull`]). A source that says
    /// `Ready(0)` has ended, and one that says more than `max` is held to `max`.
    pub(super) fn pull(&mut self, first: u64, max: u64) -> Result<Pulled, Error> {
        Ok(match self.input.pull(first, max)? {
            Pulled::Ready(0) => Pulled::Ended,
            Pulled::Ready(n) => Pulled::Ready(n.min(max)),
            other => other,
        })
    }

    /// What the driver waits on after a pull answered `NotYet`.
    pub(super) fn wake(&self) -> Option<Arc<tokio::sync::Notify>> {
        self.input.wake()
    }

    /// `item` has its final record: the source may forget it.
    pub(super) fn release(&mut self, item: u64) {
        self.input.release(item);
    }

    /// Largest batch this kind of input allows.
    pub(super) fn batch_cap(&self) -> u64 {
        self.input.batch_cap()
    }

    /// The batch `first .. first + len`, with each fetched body's place in the arena (a `urls` input).
    pub(super) fn batch(&self, id: u64, first: u64, len: u64, bodies: Option<&HashMap<u64, Slot>>) -> Batch {
        let body = |item| {
            bodies
                .and_then(|b| b.get(&item))
                .map(|slot: &Slot| (slot.offset, slot.len))
        };
        Batch {
            id,
            first,
            items: self.input.items(first, len, &body),
        }
    }

    /// The input of `item`, for its record.
    pub(super) fn describe(&self, item: u64) -> InputDesc {
        self.input.describe(item)
    }

    /// What every worker is told about the input at `Init`.
    pub(super) fn input_plan(&self, arena: Option<&Path>) -> InputPlan {
        self.input.plan(arena)
    }

    /// The URLs of a `urls` input, which the fetch stage fetches.
    pub(super) fn urls(&self) -> Option<&Arc<Vec<String>>> {
        self.input.urls()
    }

    /// Why a worker running `item` may have died of SIGBUS (its input file shrank), if that is the cause.
    pub(super) fn explain_sigbus(&self, item: u64) -> Option<String> {
        self.input.explain_sigbus(item)
    }
}
