//! `[shard]`: how a job splits over the copies a cluster scheduler starts. Only `count` is a key (for a
//! Kubernetes Indexed Job, whose `JOB_COMPLETION_INDEX` gives the index but not the count); which shard this
//! copy is and which items it takes are the supervisor's (`supervisor::shard`).

use super::raw::RawShard;
use super::value::{self, Checked};

/// `[shard]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ShardSpec {
    /// `count`: the number of shards, for a Kubernetes Indexed Job (`JOB_COMPLETION_INDEX` gives only the index).
    pub count: Option<u64>,
}

/// Largest `[shard] count`.
pub const MAX_SHARDS: u64 = 1_000_000;

/// `[shard]` resolved.
pub(crate) fn shard(raw: &RawShard) -> Checked<ShardSpec> {
    Ok(ShardSpec {
        count: raw
            .count
            .as_ref()
            .map(|count| value::whole("count", count, 1, MAX_SHARDS))
            .transpose()?,
    })
}
