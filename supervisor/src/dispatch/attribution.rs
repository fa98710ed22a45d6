//! Crash attribution: which item a dead worker's death is charged to.
//!
//! A pure function of what is known when the worker is gone: the batch it was running and which of its items
//! were not answered, its progress-slot snapshot, and why the dispatcher killed it (if it did). What happens to
//! the items then (a failure or a retry, requeued or suspect spans) is the state machine's business.
//!
//! The rule: a timeout names its item. Otherwise the slot names the item it was running, if it can be trusted
//! (the worker kept the protocol) and agrees with the dispatcher (the batch at the head of the worker's queue,
//! an unanswered item). An item run alone is to blame for any death. A worker the dispatcher killed as stalled
//! between items is nobody's fault. Anything else is unknown: each unanswered item is re-run alone.

use std::ops::Range;

use shared::progress::Snapshot;

use super::workers::KillCause;

/// What is known about a dead worker's current batch.
#[derive(Debug, Clone)]
pub(super) struct DeathFacts<'a> {
    /// The id of the batch at the head of its queue (the one it was running).
    pub batch: u64,
    /// Items of that batch it did not answer.
    pub unanswered: Range<u64>,
    /// The batch is one item run alone.
    pub isolated: bool,
    /// Its progress slot, read after its death.
    pub snapshot: Option<Snapshot>,
    /// Why the dispatcher killed it, if it did.
    pub killed: Option<&'a KillCause>,
}

/// Whom a death is charged to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Blame {
    /// This item killed its worker. `slot` is the slot's view of it, when the slot named it.
    Item { item: u64, slot: Option<Snapshot> },
    /// Unknown: each unanswered item runs again alone.
    Suspects,
    /// Nobody: every unanswered item runs again, uncharged.
    Nobody,
}

pub(super) fn blame(facts: &DeathFacts<'_>) -> Blame {
    let in_batch = |item: u64| facts.unanswered.contains(&item);
    let trusted = !matches!(facts.killed, Some(KillCause::Protocol(_)));
    match facts.killed {
        Some(KillCause::Stalled) => return Blame::Nobody,
        Some(KillCause::Timeout { item }) if in_batch(*item) => {
            return Blame::Item {
                item: *item,
                slot: facts.snapshot.filter(|s| s.running && s.item == *item),
            };
        }
        _ => {}
    }
    let running = facts
        .snapshot
        .filter(|s| trusted && s.running && s.batch == facts.batch && in_batch(s.item));
    if let Some(slot) = running {
        return Blame::Item {
            item: slot.item,
            slot: Some(slot),
        };
    }
    if facts.isolated && in_batch(facts.unanswered.start) {
        return Blame::Item {
            item: facts.unanswered.start,
            slot: None,
        };
    }
    Blame::Suspects
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slot(batch: u64, item: u64, running: bool) -> Option<Snapshot> {
        Some(Snapshot {
            batch,
            item,
            started_ns: 1,
            running,
        })
    }

    fn facts(snapshot: Option<Snapshot>, killed: Option<&KillCause>) -> DeathFacts<'_> {
        DeathFacts {
            batch: 4,
            unanswered: 10..20,
            isolated: false,
            snapshot,
            killed,
        }
    }

    #[test]
    fn a_running_slot_of_the_current_batch_names_the_item() {
        let got = blame(&facts(slot(4, 13, true), None));
        assert_eq!(
            got,
            Blame::Item {
                item: 13,
                slot: slot(4, 13, true)
            }
        );
    }

    #[test]
    fn a_slot_that_disagrees_with_the_dispatcher_is_not_believed() {
        // Another batch, an answered item, a slot between items, no slot at all: nobody can be named.
        for snapshot in [slot(3, 13, true), slot(4, 9, true), slot(4, 13, false), None] {
            assert_eq!(blame(&facts(snapshot, None)), Blame::Suspects, "{snapshot:?}");
        }
    }

    #[test]
    fn a_protocol_breaker_s_slot_is_not_trusted_but_an_item_alone_is_still_to_blame() {
        let cause = KillCause::Protocol("garbage".into());
        assert_eq!(blame(&facts(slot(4, 13, true), Some(&cause))), Blame::Suspects);
        let alone = DeathFacts {
            unanswered: 12..13,
            isolated: true,
            ..facts(slot(4, 13, true), Some(&cause))
        };
        assert_eq!(blame(&alone), Blame::Item { item: 12, slot: None });
    }

    #[test]
    fn a_timeout_names_its_item_even_when_the_slot_moved_on() {
        let cause = KillCause::Timeout { item: 15 };
        assert_eq!(
            blame(&facts(slot(4, 16, true), Some(&cause))),
            Blame::Item { item: 15, slot: None }
        );
    }

    #[test]
    fn a_stalled_worker_is_nobody_s_fault_whatever_its_slot_says() {
        let cause = KillCause::Stalled;
        assert_eq!(blame(&facts(slot(4, 13, true), Some(&cause))), Blame::Nobody);
    }
}
