//! The dispatcher's one view of the input: how many items, the batch of a span, an item's description for its
//! record, what workers are told about the input, and the URLs of a `urls` input.
//!
//! Every use of [`plan::Items`](crate::plan::Items) by the dispatcher goes through here, so that another kind of
//! item source (one that streams, with no total known in advance) replaces this file and nothing else. Listing
//! and describing inputs belong to `plan`; this module only asks.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use shared::item::{Batch, InputPlan};

use crate::fetch::Slot;
use crate::plan::Items;
use crate::results::InputDesc;

#[derive(Debug, Clone)]
pub(super) struct Source {
    items: Arc<Items>,
}

impl Source {
    pub(super) fn new(items: Arc<Items>) -> Source {
        Source { items }
    }

    /// Items of the whole input (a shard owns a span of them).
    pub(super) fn len(&self) -> u64 {
        self.items.len()
    }

    /// Largest batch this kind of input allows.
    pub(super) fn batch_cap(&self) -> u64 {
        self.items.batch_cap()
    }

    /// The batch `first .. first + len`, with each fetched body's place in the arena (a `urls` input).
    pub(super) fn batch(&self, id: u64, first: u64, len: u64, bodies: Option<&HashMap<u64, Slot>>) -> Batch {
        self.items.batch(id, first, len, |item| {
            bodies.and_then(|b| b.get(&item)).map(|slot| (slot.offset, slot.len))
        })
    }

    /// The input of `item`, for its record.
    pub(super) fn describe(&self, item: u64) -> InputDesc {
        self.items.describe(item)
    }

    /// What every worker is told about the input at `Init`.
    pub(super) fn input_plan(&self, arena: Option<&Path>) -> InputPlan {
        self.items.input_plan(arena)
    }

    /// The URLs of a `urls` input.
    pub(super) fn urls(&self) -> Option<&Arc<Vec<String>>> {
        match &*self.items {
            Items::Urls { urls, .. } => Some(urls),
            _ => None,
        }
    }

    /// Why a worker running `item` may have died of SIGBUS (its input file shrank), if that is the cause.
    pub(super) fn explain_sigbus(&self, item: u64) -> Option<String> {
        crate::sigbus::explain(&self.items, item)
    }
}
