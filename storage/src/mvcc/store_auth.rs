//! Auth at apply time, as etcd's authApplierV3: each client write is
//! checked against the auth store with the credentials it was proposed
//! with, and auth requests change or read the store.
//!
//! Every member applies the same entries to the same auth store, so every
//! member allows or refuses each write alike. Commands the members propose
//! themselves (lease expiry, checkpoints, alarms) are not checked.

use keel_proto::authpb;
use keel_proto::command::{ArchivedAuthCmd, ArchivedCommand, ArchivedOpCmd, ArchivedTxnCmd};
use keel_proto::etcdserverpb as pb;

use super::{KvStore, MvccError};
use crate::auth::{AuthError, AuthInfo, PermKind, Permission};

/// What an applied auth request answers, beside the response header.
#[derive(Debug, Clone, PartialEq)]
pub enum AuthAnswer {
    Done,
    /// `name` may have the token `<token_prefix>.<raft index>`; whoever
    /// applies the log assigns it.
    Authenticated {
        name: String,
        token_prefix: String,
    },
    /// UserList, RoleList, or a user's roles (UserGet).
    Names(Vec<String>),
    /// RoleGet.
    Perms(Vec<authpb::Permission>),
}

impl KvStore {
    /// Whether `who` may apply `cmd` (with auth off, anything may).
    pub(super) fn permit(&self, cmd: &ArchivedCommand, who: AuthInfo<'_>) -> Result<(), AuthError> {
        let auth = &self.auth;
        if !auth.enabled() {
            return Ok(());
        }
        match cmd {
            ArchivedCommand::Put(p) => {
                auth.check_write(who, &p.key, b"")?;
                self.permit_lease_keys(p.lease.to_native(), who)?;
                if p.prev_kv {
                    auth.check_read(who, &p.key, b"")?;
                }
                Ok(())
            }
            ArchivedCommand::DeleteRange(d) => {
                auth.check_write(who, &d.key, &d.range_end)?;
                if d.prev_kv {
                    auth.check_read(who, &d.key, &d.range_end)?;
                }
                Ok(())
            }
            ArchivedCommand::Txn(t) => self.permit_txn(t, who),
            ArchivedCommand::LeaseRevoke(r) => self.permit_lease_keys(r.id.to_native(), who),
            ArchivedCommand::Auth(a) => match a {
                ArchivedAuthCmd::Authenticate { .. } => Ok(()),
                // A user may read itself, and the roles it holds.
                ArchivedAuthCmd::UserGet { name } if name.as_str() == who.user => Ok(()),
                ArchivedAuthCmd::RoleGet { role } if auth.has_role(who.user, role) => Ok(()),
                _ => auth.check_admin(who),
            },
            _ => Ok(()),
        }
    }

    /// Every key attached to lease `id` must be writable (etcd's
    /// checkLeasePuts).
    fn permit_lease_keys(&self, id: i64, who: AuthInfo<'_>) -> Result<(), AuthError> {
        if let Some(lease) = self.leases().get(id) {
            for key in &lease.keys {
                self.auth.check_write(who, key, b"")?;
            }
        }
        Ok(())
    }

    /// Every compare reads; every operation of both branches, nested txns
    /// included, needs its own permission: one refused refuses the txn.
    fn permit_txn(&self, t: &ArchivedTxnCmd, who: AuthInfo<'_>) -> Result<(), AuthError> {
        let auth = &self.auth;
        for c in t.compare.iter() {
            auth.check_read(who, &c.key, &c.range_end)?;
        }
        for op in t.success.iter().chain(t.failure.iter()) {
            match op {
                ArchivedOpCmd::Range(r) => auth.check_read(who, &r.key, &r.range_end)?,
                ArchivedOpCmd::Put(p) => {
                    auth.check_write(who, &p.key, b"")?;
                    if p.prev_kv {
                        auth.check_read(who, &p.key, b"")?;
                    }
                }
                ArchivedOpCmd::DeleteRange(d) => {
                    if d.prev_kv {
                        auth.check_read(who, &d.key, &d.range_end)?;
                    }
                    auth.check_write(who, &d.key, &d.range_end)?;
                }
                ArchivedOpCmd::Txn(inner) => self.permit_txn(inner, who)?,
            }
        }
        Ok(())
    }

    /// Applies an auth request (its permission was checked by `permit`).
    pub(super) fn apply_auth(&mut self, cmd: &ArchivedAuthCmd) -> Result<AuthAnswer, MvccError> {
        let auth = &mut self.auth;
        let done = |r: Result<(), AuthError>| r.map(|()| AuthAnswer::Done);
        Ok(match cmd {
            ArchivedAuthCmd::Enable => done(auth.enable())?,
            ArchivedAuthCmd::Disable => {
                auth.disable();
                AuthAnswer::Done
            }
            ArchivedAuthCmd::Authenticate { name, token_prefix } => {
                auth.authenticate(name)?;
                AuthAnswer::Authenticated {
                    name: name.to_string(),
                    token_prefix: token_prefix.to_string(),
                }
            }
            ArchivedAuthCmd::UserAdd {
                name,
                password_hash,
            } => done(auth.user_add(name, password_hash.as_ref().map(|h| h.to_string())))?,
            ArchivedAuthCmd::UserGet { name } => {
                AuthAnswer::Names(auth.user_get(name)?.roles.clone())
            }
            ArchivedAuthCmd::UserList => AuthAnswer::Names(auth.users().keys().cloned().collect()),
            ArchivedAuthCmd::UserDelete { name } => done(auth.user_delete(name))?,
            ArchivedAuthCmd::UserChangePassword {
                name,
                password_hash,
            } => done(auth.user_change_password(name, password_hash.to_string()))?,
            ArchivedAuthCmd::UserGrantRole { user, role } => {
                done(auth.user_grant_role(user, role))?
            }
            ArchivedAuthCmd::UserRevokeRole { name, role } => {
                done(auth.user_revoke_role(name, role))?
            }
            ArchivedAuthCmd::RoleAdd { name } => done(auth.role_add(name))?,
            ArchivedAuthCmd::RoleGet { role } => AuthAnswer::Perms(
                auth.role_get(role)?
                    .perms
                    .iter()
                    .map(crate::auth::Permission::to_pb)
                    .collect(),
            ),
            ArchivedAuthCmd::RoleList => AuthAnswer::Names(auth.roles().keys().cloned().collect()),
            ArchivedAuthCmd::RoleDelete { role } => done(auth.role_delete(role))?,
            ArchivedAuthCmd::RoleGrantPermission {
                name,
                perm_type,
                key,
                range_end,
            } => {
                let kind = PermKind::from_wire(perm_type.to_native())
                    .ok_or(AuthError::PermissionNotGiven)?;
                done(auth.role_grant_permission(
                    name,
                    Permission {
                        kind,
                        key: key.to_vec(),
                        range_end: range_end.to_vec(),
                    },
                ))?
            }
            ArchivedAuthCmd::RoleRevokePermission {
                role,
                key,
                range_end,
            } => done(auth.role_revoke_permission(role, key, range_end))?,
        })
    }
}

/// The header an auth answer carries: the current revision only.
pub(super) fn auth_header(store: &KvStore) -> Option<pb::ResponseHeader> {
    Some(pb::ResponseHeader {
        revision: store.current_rev(),
        ..Default::default()
    })
}
