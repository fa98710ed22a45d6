//! The supervisor's side of worker isolation: turning the job's `[workers]` isolation keys into the
//! [`Isolation`] a worker applies to itself at `Init` (`child::isolation` does the applying).
//!
//! Names of users and groups are resolved here, once, in the supervisor: a worker that switches user after
//! `Init` is handed numeric ids. Asking for a user without the privilege to switch to it is a job error (exit
//! code 2) located at the `user` or `group` key, found before any worker starts.

use std::ffi::CString;
use std::ops::Range;

use shared::job::JobSpec;
use shared::protocol::{Credentials, Isolation};

use crate::error::Error;

/// The [`Isolation`] every worker process of this job gets.
pub fn resolve(spec: &JobSpec) -> Result<Isolation, Error> {
    let keys = &spec.workers.isolation;
    let credentials = match (&keys.user, &keys.group) {
        (None, None) => None,
        (user, group) => {
            let located = |span: Range<usize>, message: String| Error::Job(spec.error_at(span, &message));
            let first = user.as_ref().or(group.as_ref()).map_or(0..0, |key| key.span());
            // SAFETY: geteuid has no preconditions.
            let euid = unsafe { libc::geteuid() };
            if euid != 0 {
                return Err(located(
                    first,
                    format!(
                        "switching workers to another user or group needs a supervisor running as root (it runs as uid {euid})"
                    ),
                ));
            }
            let (uid, primary) = match user {
                // SAFETY: as above, and getegid likewise.
                None => (euid, unsafe { libc::getegid() }),
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

/// A user's id and primary group, from a name or a numeric id.
fn lookup_user(name: &str) -> Result<(u32, u32), String> {
    let by_id = name.parse::<u32>().ok();
    let c_name = CString::new(name).map_err(|_| format!("`user` {name:?} contains NUL"))?;
    // SAFETY: passwd is plain old data; all-zero is valid.
    let mut entry: libc::passwd = unsafe { std::mem::zeroed() };
    let mut result: *mut libc::passwd = std::ptr::null_mut();
    let mut buffer = vec![0 as libc::c_char; 16 << 10];
    // SAFETY: the out-pointers and buffer are valid for the call; on success `result` points at `entry`, whose
    // strings point into `buffer`, and only the numeric fields are read.
    let rc = unsafe {
        match by_id {
            Some(uid) => libc::getpwuid_r(uid, &mut entry, buffer.as_mut_ptr(), buffer.len(), &mut result),
            None => libc::getpwnam_r(
                c_name.as_ptr(),
                &mut entry,
                buffer.as_mut_ptr(),
                buffer.len(),
                &mut result,
            ),
        }
    };
    match (rc, result.is_null(), by_id) {
        (0, false, _) => Ok((entry.pw_uid, entry.pw_gid)),
        // A numeric id without a passwd entry is still an id; its primary group is the same number.
        (0, true, Some(uid)) => Ok((uid, uid)),
        (0, true, None) => Err(format!("`user`: no user named {name:?} on this machine")),
        (error, ..) => Err(format!(
            "`user`: cannot look up {name:?}: {}",
            std::io::Error::from_raw_os_error(error)
        )),
    }
}

/// A group's id, from a name or a numeric id.
fn lookup_group(name: &str) -> Result<u32, String> {
    if let Ok(gid) = name.parse::<u32>() {
        return Ok(gid);
    }
    let c_name = CString::new(name).map_err(|_| format!("`group` {name:?} contains NUL"))?;
    // SAFETY: group is plain old data; all-zero is valid.
    let mut entry: libc::group = unsafe { std::mem::zeroed() };
    let mut result: *mut libc::group = std::ptr::null_mut();
    let mut buffer = vec![0 as libc::c_char; 64 << 10];
    // SAFETY: as in `lookup_user`.
    let rc = unsafe {
        libc::getgrnam_r(
            c_name.as_ptr(),
            &mut entry,
            buffer.as_mut_ptr(),
            buffer.len(),
            &mut result,
        )
    };
    match (rc, result.is_null()) {
        (0, false) => Ok(entry.gr_gid),
        (0, true) => Err(format!("`group`: no group named {name:?} on this machine")),
        (error, _) => Err(format!(
            "`group`: cannot look up {name:?}: {}",
            std::io::Error::from_raw_os_error(error)
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_and_numeric_ids_resolve() {
        assert_eq!(lookup_user("root"), Ok((0, 0)));
        assert_eq!(lookup_user("4242"), Ok((4242, 4242)));
        assert_eq!(lookup_group("root"), Ok(0));
        assert_eq!(lookup_group("77"), Ok(77));
        let missing = lookup_user("no-such-user-here").expect_err("missing");
        assert!(missing.contains("no user named"), "{missing}");
        assert!(lookup_group("no-such-group-here").is_err());
    }
}
