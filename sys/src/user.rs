//! Users and groups: resolving names to ids (in the supervisor, once), and switching a worker's credentials for
//! good (in the worker, at `Init`).
//!
//! Whether a job may switch user is the supervisor's policy; this module only looks up and applies ids.

use nix::unistd::{Gid, Group, Uid, User};

/// The effective user id of the calling process.
pub fn effective_uid() -> u32 {
    Uid::effective().as_raw()
}

/// The effective group id of the calling process.
pub fn effective_gid() -> u32 {
    Gid::effective().as_raw()
}

/// A user's id and primary group, from a name or a numeric id.
pub fn lookup_user(name: &str) -> Result<(u32, u32), String> {
    let by_id = name.parse::<u32>().ok();
    if name.contains('\0') {
        return Err(format!("`user` {name:?} contains NUL"));
    }
    let found = match by_id {
        Some(uid) => User::from_uid(Uid::from_raw(uid)),
        None => User::from_name(name),
    };
    match (found, by_id) {
        (Ok(Some(user)), _) => Ok((user.uid.as_raw(), user.gid.as_raw())),
        // A numeric id without a passwd entry is still an id; its primary group is the same number.
        (Ok(None), Some(uid)) => Ok((uid, uid)),
        (Ok(None), None) => Err(format!("`user`: no user named {name:?} on this machine")),
        (Err(error), _) => Err(format!(
            "`user`: cannot look up {name:?}: {}",
            std::io::Error::from(error)
        )),
    }
}

/// A group's id, from a name or a numeric id.
pub fn lookup_group(name: &str) -> Result<u32, String> {
    if let Ok(gid) = name.parse::<u32>() {
        return Ok(gid);
    }
    if name.contains('\0') {
        return Err(format!("`group` {name:?} contains NUL"));
    }
    match Group::from_name(name) {
        Ok(Some(group)) => Ok(group.gid.as_raw()),
        Ok(None) => Err(format!("`group`: no group named {name:?} on this machine")),
        Err(error) => Err(format!(
            "`group`: cannot look up {name:?}: {}",
            std::io::Error::from(error)
        )),
    }
}

/// Switches to `uid` and `gid` for good: supplementary groups, group, then user (in that order: once the user is
/// switched, the group can no longer be), then checks that the switch holds and cannot be undone.
pub fn switch_credentials(uid: u32, gid: u32) -> Result<(), String> {
    let os = |what: &str, error: nix::errno::Errno| format!("{what}: {}", std::io::Error::from(error));
    let (user, group) = (Uid::from_raw(uid), Gid::from_raw(gid));
    nix::unistd::setgroups(&[group]).map_err(|e| os("setgroups", e))?;
    nix::unistd::setgid(group).map_err(|e| os(&format!("setgid({gid})"), e))?;
    nix::unistd::setuid(user).map_err(|e| os(&format!("setuid({uid})"), e))?;
    let uids = nix::unistd::getresuid().map_err(|e| os("getresuid", e))?;
    let gids = nix::unistd::getresgid().map_err(|e| os("getresgid", e))?;
    let (r, e, s) = (uids.real.as_raw(), uids.effective.as_raw(), uids.saved.as_raw());
    let (rg, eg, sg) = (gids.real.as_raw(), gids.effective.as_raw(), gids.saved.as_raw());
    if [r, e, s] != [uid; 3] || [rg, eg, sg] != [gid; 3] {
        return Err(format!(
            "credentials did not switch: uids {r}/{e}/{s}, gids {rg}/{eg}/{sg}, expected {uid} and {gid}"
        ));
    }
    let groups = nix::unistd::getgroups().map_err(|e| os("getgroups", e))?;
    if groups.iter().any(|&g| g != group) {
        return Err("supplementary groups did not switch".to_string());
    }
    if uid != 0 && nix::unistd::setuid(Uid::from_raw(0)).is_ok() {
        return Err("privileges can be regained after the switch".to_string());
    }
    Ok(())
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
