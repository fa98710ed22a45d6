//! The supervisor's side of worker isolation: turning the job's `[workers]` isolation keys into the
//! [`Isolation`] a worker applies to itself at `Init` (`child::isolation` does the applying).
//!
//! Names of users and groups are resolved here, once, in the supervisor: a worker that switches user after
//! `Init` is handed numeric ids. Asking for a user without the privilege to switch to it is a job error (exit
//! code 2) located at the `user` or `group` key, found before any worker starts.

use std::ops::Range;

use shared::job::JobSpec;
use shared::protocol::{Credentials, Isolation};

use sys::user::{lookup_group, lookup_user};

use crate::error::Error;

/// The [`Isolation`] every worker process of this job gets.
pub fn resolve(spec: &JobSpec) -> Result<Isolation, Error> {
    let keys = &spec.workers.isolation;
    let credentials = match (&keys.user, &keys.group) {
        (None, None) => None,
        (user, group) => {
            let located = |span: Range<usize>, message: String| Error::Job(spec.error_at(span, &message));
            let first = user.as_ref().or(group.as_ref()).map_or(0..0, |key| key.span());
            let euid = sys::user::effective_uid();
            if euid != 0 {
                return Err(located(
                    first,
                    format!(
                        "switching workers to another user or group needs a supervisor running as root (it runs as uid {euid})"
                    ),
                ));
            }
            let (uid, primary) = match user {
                None => (euid, sys::user::effective_gid()),
                Some(user) => lookup_user(user.get_ref()).map_err(|message| located(user.span(), message))?,
            };
            let gid = match group {
                None => primary,
                Some(group) => lookup_group(group.get_ref()).map_err(|message| located(group.span(), message))?,
            };
            Some(Credentials { uid, gid })
        }
    };
    Ok(Isolation {
        open_files: Some(keys.open_files),
        env_clear: keys.env_clear,
        env: keys.env.clone(),
        credentials,
    })
}
