//! etcd's auth store: users, roles, key permissions, whether auth is on,
//! and the auth revision. Raft state: every member applies the same
//! changes in log order, so every member decides every check alike.
//!
//! Semantics follow etcd 3.4's `auth/store.go` and `range_perm_cache.go`:
//! * every change but AuthEnable (and a role granted twice) moves the auth
//!   revision by one; a request carries the revision its credentials were
//!   checked at, and one older than the store's is refused (clients then
//!   authenticate again);
//! * a user holding the `root` role may do anything; others need a
//!   permission of their roles covering the whole key or range asked for;
//! * `root` can be neither deleted nor lose its role while auth is on.
//!
//! Passwords arrive hashed (bcrypt, done off the raft core by the caller).

use std::collections::BTreeMap;

pub const ROOT_USER: &str = "root";
pub const ROOT_ROLE: &str = "root";

/// etcd's auth errors; the gRPC edge maps each to etcd's status and message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("auth: root user does not exist")]
    RootUserNotExist,
    #[error("auth: root user does not have root role")]
    RootRoleNotExist,
    #[error("auth: user already exists")]
    UserAlreadyExist,
    #[error("auth: user name is empty")]
    UserEmpty,
    #[error("auth: user not found")]
    UserNotFound,
    #[error("auth: role already exists")]
    RoleAlreadyExist,
    #[error("auth: role not found")]
    RoleNotFound,
    #[error("auth: role name is empty")]
    RoleEmpty,
    #[error("auth: authentication failed, invalid user ID or password")]
    AuthFailed,
    #[error("auth: authentication failed, password was given for no password user")]
    NoPasswordUser,
    #[error("auth: permission denied")]
    PermissionDenied,
    #[error("auth: role is not granted to the user")]
    RoleNotGranted,
    #[error("auth: permission is not granted to the role")]
    PermissionNotGranted,
    #[error("auth: authentication is not enabled")]
    AuthNotEnabled,
    #[error("auth: revision in header is old")]
    AuthOldRevision,
    #[error("auth: invalid auth token")]
    InvalidAuthToken,
    #[error("auth: invalid auth management")]
    InvalidAuthMgmt,
    /// RoleGrantPermission without a permission (etcd 3.5's check).
    #[error("auth: permission not given")]
    PermissionNotGiven,
}

impl AuthError {
    /// Every error, in a fixed order (peers send the position).
    pub const ALL: [AuthError; 18] = [
        AuthError::RootUserNotExist,
        AuthError::RootRoleNotExist,
        AuthError::UserAlreadyExist,
        AuthError::UserEmpty,
        AuthError::UserNotFound,
        AuthError::RoleAlreadyExist,
        AuthError::RoleNotFound,
        AuthError::RoleEmpty,
        AuthError::AuthFailed,
        AuthError::NoPasswordUser,
        AuthError::PermissionDenied,
        AuthError::RoleNotGranted,
        AuthError::PermissionNotGranted,
        AuthError::AuthNotEnabled,
        AuthError::AuthOldRevision,
        AuthError::InvalidAuthToken,
        AuthError::InvalidAuthMgmt,
        AuthError::PermissionNotGiven,
    ];
}

/// `authpb.Permission.Type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PermKind {
    Read = 0,
    Write = 1,
    ReadWrite = 2,
}

impl PermKind {
    pub fn from_wire(v: i32) -> Option<PermKind> {
        match v {
            0 => Some(PermKind::Read),
            1 => Some(PermKind::Write),
            2 => Some(PermKind::ReadWrite),
            _ => None,
        }
    }

    fn allows(self, wanted: PermKind) -> bool {
        self == PermKind::ReadWrite || self == wanted
    }
}

/// A role's permission on a key (`range_end` empty), a range
/// `[key, range_end)`, or every key from `key` on (`range_end` = `\0`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Permission {
    pub kind: PermKind,
    pub key: Vec<u8>,
    pub range_end: Vec<u8>,
}

impl Permission {
    /// As etcd's `authpb.Permission`.
    pub fn to_pb(&self) -> keel_proto::authpb::Permission {
        keel_proto::authpb::Permission {
            perm_type: self.kind as i32,
            key: self.key.clone().into(),
            range_end: self.range_end.clone().into(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct User {
    /// The bcrypt hash; None for a user added with `no_password`, who can
    /// only be authenticated by a client certificate.
    pub password: Option<String>,
    /// Sorted, without duplicates.
    pub roles: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Role {
    /// Sorted by key.
    pub perms: Vec<Permission>,
}

/// Who a request runs as: the user its token or certificate named and the
/// auth revision that was current then. `user` empty and `revision` 0: no
/// credentials (etcd's empty AuthInfo).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct AuthInfo<'a> {
    pub user: &'a str,
    pub revision: u64,
}

impl AuthInfo<'_> {
    pub const NONE: AuthInfo<'static> = AuthInfo {
        user: "",
        revision: 0,
    };
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AuthStore {
    enabled: bool,
    revision: u64,
    users: BTreeMap<String, User>,
    roles: BTreeMap<String, Role>,
}

impl AuthStore {
    /// A store from its parts (an etcd database's auth buckets); user roles
    /// and role permissions are put in the order the store keeps them.
    pub fn from_parts(
        enabled: bool,
        revision: u64,
        mut users: BTreeMap<String, User>,
        mut roles: BTreeMap<String, Role>,
    ) -> AuthStore {
        for u in users.values_mut() {
            u.roles.sort();
            u.roles.dedup();
        }
        for r in roles.values_mut() {
            r.perms.sort_by(|a, b| a.key.cmp(&b.key));
        }
        AuthStore {
            enabled,
            revision,
            users,
            roles,
        }
    }

    pub fn enabled(&self) -> bool {
        self.enabled
    }

    pub fn revision(&self) -> u64 {
        self.revision
    }

    pub fn users(&self) -> &BTreeMap<String, User> {
        &self.users
    }

    pub fn roles(&self) -> &BTreeMap<String, Role> {
        &self.roles
    }

    fn changed(&mut self) {
        self.revision += 1;
    }

    /// etcd's AuthEnable: needs a root user holding the root role. Enabling
    /// twice is no error; the revision stays.
    pub fn enable(&mut self) -> Result<(), AuthError> {
        if self.enabled {
            return Ok(());
        }
        let root = self
            .users
            .get(ROOT_USER)
            .ok_or(AuthError::RootUserNotExist)?;
        if !has_root_role(root) {
            return Err(AuthError::RootRoleNotExist);
        }
        self.enabled = true;
        Ok(())
    }

    pub fn disable(&mut self) {
        if self.enabled {
            self.enabled = false;
            self.changed();
        }
    }

    /// Whether `name` may be given a token (the password was checked
    /// before proposing).
    pub fn authenticate(&self, name: &str) -> Result<(), AuthError> {
        if !self.enabled {
            return Err(AuthError::AuthNotEnabled);
        }
        match self.users.get(name) {
            Some(u) if u.password.is_some() => Ok(()),
            _ => Err(AuthError::AuthFailed),
        }
    }

    /// The bcrypt hash to check a password against, and the revision it
    /// was read at (etcd's CheckPassword, less the hashing).
    pub fn password_of(&self, name: &str) -> Result<(&str, u64), AuthError> {
        if !self.enabled {
            return Err(AuthError::AuthNotEnabled);
        }
        let user = self.users.get(name).ok_or(AuthError::AuthFailed)?;
        let hash = user.password.as_deref().ok_or(AuthError::NoPasswordUser)?;
        Ok((hash, self.revision))
    }

    pub fn user_add(&mut self, name: &str, password: Option<String>) -> Result<(), AuthError> {
        if name.is_empty() {
            return Err(AuthError::UserEmpty);
        }
        if self.users.contains_key(name) {
            return Err(AuthError::UserAlreadyExist);
        }
        self.users.insert(
            name.to_string(),
            User {
                password,
                roles: Vec::new(),
            },
        );
        self.changed();
        Ok(())
    }

    pub fn user_delete(&mut self, name: &str) -> Result<(), AuthError> {
        if self.enabled && name == ROOT_USER {
            return Err(AuthError::InvalidAuthMgmt);
        }
        self.users.remove(name).ok_or(AuthError::UserNotFound)?;
        self.changed();
        Ok(())
    }

    /// A user added without a password stays one (etcd keeps its
    /// NoPassword option): the new hash is not kept.
    pub fn user_change_password(&mut self, name: &str, password: String) -> Result<(), AuthError> {
        let user = self.users.get_mut(name).ok_or(AuthError::UserNotFound)?;
        if user.password.is_some() {
            user.password = Some(password);
        }
        self.changed();
        Ok(())
    }

    pub fn user_grant_role(&mut self, name: &str, role: &str) -> Result<(), AuthError> {
        if !self.users.contains_key(name) {
            return Err(AuthError::UserNotFound);
        }
        if role != ROOT_ROLE && !self.roles.contains_key(role) {
            return Err(AuthError::RoleNotFound);
        }
        let user = self.users.get_mut(name).expect("checked above");
        match user.roles.binary_search_by(|r| r.as_str().cmp(role)) {
            Ok(_) => Ok(()),
            Err(at) => {
                user.roles.insert(at, role.to_string());
                self.changed();
                Ok(())
            }
        }
    }

    pub fn user_revoke_role(&mut self, name: &str, role: &str) -> Result<(), AuthError> {
        if self.enabled && name == ROOT_USER && role == ROOT_ROLE {
            return Err(AuthError::InvalidAuthMgmt);
        }
        let user = self.users.get_mut(name).ok_or(AuthError::UserNotFound)?;
        let before = user.roles.len();
        user.roles.retain(|r| r != role);
        if user.roles.len() == before {
            return Err(AuthError::RoleNotGranted);
        }
        self.changed();
        Ok(())
    }

    pub fn user_get(&self, name: &str) -> Result<&User, AuthError> {
        self.users.get(name).ok_or(AuthError::UserNotFound)
    }

    pub fn role_add(&mut self, name: &str) -> Result<(), AuthError> {
        if name.is_empty() {
            return Err(AuthError::RoleEmpty);
        }
        if self.roles.contains_key(name) {
            return Err(AuthError::RoleAlreadyExist);
        }
        self.roles.insert(name.to_string(), Role::default());
        self.changed();
        Ok(())
    }

    pub fn role_get(&self, name: &str) -> Result<&Role, AuthError> {
        self.roles.get(name).ok_or(AuthError::RoleNotFound)
    }

    /// Deletes a role and takes it from every user holding it.
    pub fn role_delete(&mut self, name: &str) -> Result<(), AuthError> {
        if self.enabled && name == ROOT_ROLE {
            return Err(AuthError::InvalidAuthMgmt);
        }
        self.roles.remove(name).ok_or(AuthError::RoleNotFound)?;
        for user in self.users.values_mut() {
            user.roles.retain(|r| r != name);
        }
        self.changed();
        Ok(())
    }

    /// Adds a permission, or changes the kind of the one with the same key
    /// and range end.
    pub fn role_grant_permission(&mut self, name: &str, perm: Permission) -> Result<(), AuthError> {
        let role = self.roles.get_mut(name).ok_or(AuthError::RoleNotFound)?;
        match role
            .perms
            .iter_mut()
            .find(|p| p.key == perm.key && p.range_end == perm.range_end)
        {
            Some(p) => p.kind = perm.kind,
            None => {
                let at = role.perms.partition_point(|p| p.key <= perm.key);
                role.perms.insert(at, perm);
            }
        }
        self.changed();
        Ok(())
    }

    pub fn role_revoke_permission(
        &mut self,
        name: &str,
        key: &[u8],
        range_end: &[u8],
    ) -> Result<(), AuthError> {
        let role = self.roles.get_mut(name).ok_or(AuthError::RoleNotFound)?;
        let before = role.perms.len();
        role.perms
            .retain(|p| !(p.key == key && p.range_end == range_end));
        if role.perms.len() == before {
            return Err(AuthError::PermissionNotGranted);
        }
        self.changed();
        Ok(())
    }

    pub fn has_role(&self, user: &str, role: &str) -> bool {
        self.users
            .get(user)
            .is_some_and(|u| u.roles.iter().any(|r| r == role))
    }

    /// etcd's IsAdminPermitted: with auth on, only a user holding `root`.
    pub fn check_admin(&self, who: AuthInfo<'_>) -> Result<(), AuthError> {
        if !self.enabled {
            return Ok(());
        }
        if who.user.is_empty() {
            return Err(AuthError::UserEmpty);
        }
        let user = self.users.get(who.user).ok_or(AuthError::UserNotFound)?;
        if !has_root_role(user) {
            return Err(AuthError::PermissionDenied);
        }
        Ok(())
    }

    /// etcd's isOpPermitted: may `who` read (or write) the key `key`, or
    /// every key of `[key, range_end)`?
    pub fn check(
        &self,
        who: AuthInfo<'_>,
        key: &[u8],
        range_end: &[u8],
        wanted: PermKind,
    ) -> Result<(), AuthError> {
        if !self.enabled {
            return Ok(());
        }
        if who.revision == 0 {
            return Err(AuthError::UserEmpty);
        }
        if who.revision < self.revision {
            return Err(AuthError::AuthOldRevision);
        }
        let user = self
            .users
            .get(who.user)
            .ok_or(AuthError::PermissionDenied)?;
        if has_root_role(user) || self.covered(user, key, range_end, wanted) {
            Ok(())
        } else {
            Err(AuthError::PermissionDenied)
        }
    }

    pub fn check_read(&self, who: AuthInfo<'_>, key: &[u8], end: &[u8]) -> Result<(), AuthError> {
        self.check(who, key, end, PermKind::Read)
    }

    pub fn check_write(&self, who: AuthInfo<'_>, key: &[u8], end: &[u8]) -> Result<(), AuthError> {
        self.check(who, key, end, PermKind::Write)
    }

    /// Whether the union of the user's `wanted` permissions covers the key
    /// (a single key: [key, key\0), so any permission holding it) or the
    /// whole range, as etcd's interval tree `Contains`.
    fn covered(&self, user: &User, key: &[u8], range_end: &[u8], wanted: PermKind) -> bool {
        let mut granted: Vec<(&[u8], End)> = user
            .roles
            .iter()
            .filter_map(|r| self.roles.get(r))
            .flat_map(|r| r.perms.iter())
            .filter(|p| p.kind.allows(wanted))
            .map(|p| (p.key.as_slice(), end_of(&p.key, &p.range_end)))
            .collect();
        granted.sort_by(|a, b| a.0.cmp(b.0));
        let want_end = end_of(key, range_end);
        let mut reached = key.to_vec();
        let mut next = 0;
        loop {
            // The furthest end among permissions starting at or before what
            // is covered so far (those before `next` ended earlier).
            let mut furthest: Option<&End> = None;
            while next < granted.len() && granted[next].0 <= reached.as_slice() {
                let end = &granted[next].1;
                let past = end
                    .as_ref()
                    .is_none_or(|e| e.as_slice() > reached.as_slice());
                if past && furthest.is_none_or(|f| end_lt(f, end)) {
                    furthest = Some(end);
                }
                next += 1;
            }
            let Some(end) = furthest else {
                return false;
            };
            match end {
                Some(e) if end_lt(end, &want_end) => reached = e.clone(),
                _ => return true,
            }
        }
    }
}

/// The end of an interval: a key alone is `[key, key\0)`, a `\0` end is
/// past every key (None).
type End = Option<Vec<u8>>;

fn end_of(key: &[u8], range_end: &[u8]) -> End {
    if range_end.is_empty() {
        let mut e = key.to_vec();
        e.push(0);
        Some(e)
    } else if range_end == [0] {
        None
    } else {
        Some(range_end.to_vec())
    }
}

/// `a < b` for interval ends.
fn end_lt(a: &End, b: &End) -> bool {
    match (a, b) {
        (Some(_), None) => true,
        (None, _) => false,
        (Some(a), Some(b)) => a < b,
    }
}

fn has_root_role(user: &User) -> bool {
    user.roles.iter().any(|r| r == ROOT_ROLE)
}

/// The store as snapshot files hold it:
///
/// ```text
/// enabled u8 | revision u64 | users u32 | user* | roles u32 | role*
/// user:  name | has_password u8 | [hash] | roles u32 | name*
/// role:  name | perms u32 | (kind u8 | key | range_end)*
/// ```
///
/// Names, hashes, keys: length u32 then bytes; integers little-endian.
pub fn encode(store: &AuthStore) -> Vec<u8> {
    fn bytes(out: &mut Vec<u8>, b: &[u8]) {
        out.extend_from_slice(&(b.len() as u32).to_le_bytes());
        out.extend_from_slice(b);
    }
    let mut out = vec![u8::from(store.enabled)];
    out.extend_from_slice(&store.revision.to_le_bytes());
    out.extend_from_slice(&(store.users.len() as u32).to_le_bytes());
    for (name, user) in &store.users {
        bytes(&mut out, name.as_bytes());
        match &user.password {
            Some(hash) => {
                out.push(1);
                bytes(&mut out, hash.as_bytes());
            }
            None => out.push(0),
        }
        out.extend_from_slice(&(user.roles.len() as u32).to_le_bytes());
        for r in &user.roles {
            bytes(&mut out, r.as_bytes());
        }
    }
    out.extend_from_slice(&(store.roles.len() as u32).to_le_bytes());
    for (name, role) in &store.roles {
        bytes(&mut out, name.as_bytes());
        out.extend_from_slice(&(role.perms.len() as u32).to_le_bytes());
        for p in &role.perms {
            out.push(p.kind as u8);
            bytes(&mut out, &p.key);
            bytes(&mut out, &p.range_end);
        }
    }
    out
}

/// Reads what [`encode`] wrote; None if it is malformed.
pub fn decode(b: &[u8]) -> Option<AuthStore> {
    struct R<'a>(&'a [u8]);
    impl<'a> R<'a> {
        fn take(&mut self, n: usize) -> Option<&'a [u8]> {
            let (head, rest) = (self.0.get(..n)?, self.0.get(n..)?);
            self.0 = rest;
            Some(head)
        }
        fn u8(&mut self) -> Option<u8> {
            Some(self.take(1)?[0])
        }
        fn u32(&mut self) -> Option<u32> {
            Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
        }
        fn bytes(&mut self) -> Option<Vec<u8>> {
            let n = self.u32()? as usize;
            Some(self.take(n)?.to_vec())
        }
        fn string(&mut self) -> Option<String> {
            String::from_utf8(self.bytes()?).ok()
        }
    }
    let mut r = R(b);
    let enabled = r.u8()? != 0;
    let revision = u64::from_le_bytes(r.take(8)?.try_into().ok()?);
    let mut store = AuthStore {
        enabled,
        revision,
        ..Default::default()
    };
    for _ in 0..r.u32()? {
        let name = r.string()?;
        let password = match r.u8()? {
            0 => None,
            _ => Some(r.string()?),
        };
        let mut roles = Vec::new();
        for _ in 0..r.u32()? {
            roles.push(r.string()?);
        }
        store.users.insert(name, User { password, roles });
    }
    for _ in 0..r.u32()? {
        let name = r.string()?;
        let mut perms = Vec::new();
        for _ in 0..r.u32()? {
            let kind = PermKind::from_wire(i32::from(r.u8()?))?;
            perms.push(Permission {
                kind,
                key: r.bytes()?,
                range_end: r.bytes()?,
            });
        }
        store.roles.insert(name, Role { perms });
    }
    r.0.is_empty().then_some(store)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn perm(kind: PermKind, key: &str, end: &str) -> Permission {
        Permission {
            kind,
            key: key.as_bytes().to_vec(),
            range_end: end.as_bytes().to_vec(),
        }
    }

    /// root (root role), and alice holding role `r` with `perms`.
    fn store_with(perms: Vec<Permission>) -> AuthStore {
        let mut s = AuthStore::default();
        s.user_add("root", Some("h".into())).unwrap();
        s.user_grant_role("root", "root").unwrap();
        s.user_add("alice", Some("h".into())).unwrap();
        s.role_add("r").unwrap();
        for p in perms {
            s.role_grant_permission("r", p).unwrap();
        }
        s.user_grant_role("alice", "r").unwrap();
        s.enable().unwrap();
        s
    }

    /// `name`'s credentials as of the store's current revision.
    fn user<'a>(s: &AuthStore, name: &'a str) -> AuthInfo<'a> {
        AuthInfo {
            user: name,
            revision: s.revision(),
        }
    }

    fn alice(s: &AuthStore) -> AuthInfo<'_> {
        user(s, "alice")
    }

    #[test]
    fn enable_needs_root_with_the_root_role() {
        let mut s = AuthStore::default();
        assert_eq!(s.enable(), Err(AuthError::RootUserNotExist));
        s.user_add("root", Some("h".into())).unwrap();
        assert_eq!(s.enable(), Err(AuthError::RootRoleNotExist));
        // The root role need not exist to be granted.
        s.user_grant_role("root", "root").unwrap();
        let rev = s.revision();
        s.enable().unwrap();
        assert!(s.enabled());
        assert_eq!(s.revision(), rev, "enabling keeps the revision");
        s.enable().unwrap();
        assert_eq!(s.user_delete("root"), Err(AuthError::InvalidAuthMgmt));
        assert_eq!(
            s.user_revoke_role("root", "root"),
            Err(AuthError::InvalidAuthMgmt)
        );
        assert_eq!(s.role_delete("root"), Err(AuthError::InvalidAuthMgmt));
        s.disable();
        assert_eq!(s.revision(), rev + 1);
        assert!(s.user_delete("root").is_ok());
    }

    #[test]
    fn revisions_and_errors_as_etcd() {
        let mut s = AuthStore::default();
        assert_eq!(s.user_add("", None), Err(AuthError::UserEmpty));
        assert_eq!(s.role_add(""), Err(AuthError::RoleEmpty));
        s.user_add("u", None).unwrap();
        assert_eq!(s.revision(), 1);
        assert_eq!(s.user_add("u", None), Err(AuthError::UserAlreadyExist));
        s.role_add("r").unwrap();
        assert_eq!(s.role_add("r"), Err(AuthError::RoleAlreadyExist));
        assert_eq!(s.user_grant_role("u", "x"), Err(AuthError::RoleNotFound));
        assert_eq!(s.user_grant_role("x", "r"), Err(AuthError::UserNotFound));
        s.user_grant_role("u", "r").unwrap();
        let rev = s.revision();
        s.user_grant_role("u", "r").unwrap();
        assert_eq!(s.revision(), rev, "a role granted twice changes nothing");
        assert_eq!(s.user_revoke_role("u", "x"), Err(AuthError::RoleNotGranted));
        assert_eq!(
            s.role_revoke_permission("r", b"k", b""),
            Err(AuthError::PermissionNotGranted)
        );
        s.role_grant_permission("r", perm(PermKind::Read, "k", ""))
            .unwrap();
        s.role_grant_permission("r", perm(PermKind::Write, "k", ""))
            .unwrap();
        assert_eq!(s.role_get("r").unwrap().perms.len(), 1, "same key: updated");
        assert_eq!(s.role_get("r").unwrap().perms[0].kind, PermKind::Write);
        s.role_delete("r").unwrap();
        assert!(s.user_get("u").unwrap().roles.is_empty());
        // "u" was added without a password, and a new one does not change that.
        s.user_change_password("u", "h2".into()).unwrap();
        assert_eq!(s.user_get("u").unwrap().password, None);
        assert_eq!(s.authenticate("u"), Err(AuthError::AuthNotEnabled));
    }

    #[test]
    fn keys_ranges_and_prefixes() {
        let s = store_with(vec![
            perm(PermKind::Read, "a", ""),
            perm(PermKind::ReadWrite, "foo/", "foo0"),
            perm(PermKind::Write, "w", ""),
            perm(PermKind::Read, "x", "\0"),
        ]);
        let who = alice(&s);
        assert!(s.check_read(who, b"a", b"").is_ok());
        assert_eq!(
            s.check_write(who, b"a", b""),
            Err(AuthError::PermissionDenied)
        );
        assert_eq!(
            s.check_read(who, b"b", b""),
            Err(AuthError::PermissionDenied)
        );
        assert!(s.check_read(who, b"foo/bar", b"").is_ok());
        assert!(s.check_write(who, b"foo/", b"foo0").is_ok());
        assert!(s.check_read(who, b"foo/a", b"foo/b").is_ok());
        assert_eq!(
            s.check_read(who, b"foo/", b"foo1"),
            Err(AuthError::PermissionDenied),
            "past the granted range"
        );
        assert!(s.check_write(who, b"w", b"").is_ok());
        assert_eq!(
            s.check_read(who, b"w", b""),
            Err(AuthError::PermissionDenied)
        );
        // From-key permission covers everything after.
        assert!(s.check_read(who, b"x", b"\0").is_ok());
        assert!(s.check_read(who, b"zzz", b"").is_ok());
        assert_eq!(
            s.check_read(who, b"a", b"\0"),
            Err(AuthError::PermissionDenied),
            "a gap between a and x"
        );
        // No credentials, old credentials, unknown users, root.
        assert_eq!(
            s.check_read(AuthInfo::NONE, b"a", b""),
            Err(AuthError::UserEmpty)
        );
        let old = AuthInfo {
            user: "alice",
            revision: s.revision() - 1,
        };
        assert_eq!(
            s.check_read(old, b"a", b""),
            Err(AuthError::AuthOldRevision)
        );
        let nobody = user(&s, "bob");
        assert_eq!(
            s.check_read(nobody, b"a", b""),
            Err(AuthError::PermissionDenied)
        );
        let root = user(&s, "root");
        assert!(s.check_write(root, b"", b"\0").is_ok());
        assert!(s.check_admin(root).is_ok());
        assert_eq!(s.check_admin(who), Err(AuthError::PermissionDenied));
        assert_eq!(s.check_admin(AuthInfo::NONE), Err(AuthError::UserEmpty));
        assert_eq!(s.check_admin(nobody), Err(AuthError::UserNotFound));
    }

    #[test]
    fn adjacent_permissions_cover_a_range_together() {
        let s = store_with(vec![
            perm(PermKind::Read, "a", "c"),
            perm(PermKind::Read, "c", "e"),
            perm(PermKind::Read, "b", "d"),
        ]);
        let who = alice(&s);
        assert!(s.check_read(who, b"a", b"e").is_ok());
        assert!(s.check_read(who, b"b", b"d").is_ok());
        assert_eq!(
            s.check_read(who, b"a", b"f"),
            Err(AuthError::PermissionDenied)
        );
    }

    #[test]
    fn disabled_allows_everything() {
        let mut s = store_with(vec![]);
        s.disable();
        assert!(s.check_write(AuthInfo::NONE, b"k", b"").is_ok());
        assert!(s.check_admin(AuthInfo::NONE).is_ok());
    }

    #[test]
    fn encoding_round_trips() {
        let mut s = store_with(vec![
            perm(PermKind::Read, "a", ""),
            perm(PermKind::ReadWrite, "foo/", "foo0"),
        ]);
        s.user_add("cert-only", None).unwrap();
        let b = encode(&s);
        assert_eq!(decode(&b), Some(s));
        assert_eq!(decode(&b[..b.len() - 1]), None);
        assert_eq!(
            decode(&encode(&AuthStore::default())),
            Some(AuthStore::default())
        );
    }
}
