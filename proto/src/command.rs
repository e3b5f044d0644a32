//! Commands carried by the raft log.
//!
//! A client's modifying request (Put, DeleteRange, Txn, Compact) is validated
//! at the network edge, converted once into a [`Command`] and archived with
//! rkyv. Those archived bytes are the raft entry payload: they are written to
//! the WAL, sent to followers and read in place by the MVCC apply actor,
//! never re-encoded. Reads are not commands; they never enter the log.
//!
//! The enum discriminants and field order are part of the WAL format: change
//! them only together with the WAL format version.

use rkyv::{Archive, Deserialize, Serialize};

use crate::etcdserverpb as pb;

/// One modifying request, as it is stored in the raft log.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
pub enum Command {
    Put(PutCmd),
    DeleteRange(DeleteRangeCmd),
    Txn(TxnCmd),
    Compact(CompactCmd),
    LeaseGrant(LeaseGrantCmd),
    LeaseRevoke(LeaseRevokeCmd),
    LeaseCheckpoint(LeaseCheckpointCmd),
    /// A revoke the leader decided by its own clock (the lease expired).
    LeaseExpire(LeaseExpireCmd),
    /// Remaining TTLs the leader recorded by its own clock. Replaces
    /// `LeaseCheckpoint` (still applied when read from an older log).
    LeaseCheckpointInTerm(LeaseCheckpointInTermCmd),
    /// Raises or clears an alarm (etcd's AlarmRequest ACTIVATE/DEACTIVATE).
    Alarm(AlarmCmd),
    /// A change to the auth store, or a read of it (etcd serializes every
    /// auth request through raft).
    Auth(AuthCmd),
    /// A client's command with the credentials it was sent with (etcd's
    /// RequestHeader username and auth revision), checked when applied. A
    /// client command without credentials is not wrapped.
    Authed(AuthedCmd),
}

#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[rkyv(serialize_bounds(
    __S: rkyv::ser::Writer + rkyv::ser::Allocator,
    __S::Error: rkyv::rancor::Source,
))]
#[rkyv(deserialize_bounds(__D::Error: rkyv::rancor::Source))]
#[rkyv(bytecheck(bounds(__C: rkyv::validation::ArchiveContext, __C::Error: rkyv::rancor::Source)))]
pub struct AuthedCmd {
    pub user: String,
    pub auth_revision: u64,
    #[rkyv(omit_bounds)]
    pub command: Box<Command>,
}

/// etcd's auth requests. Passwords travel hashed (bcrypt), never in clear.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
pub enum AuthCmd {
    Enable,
    Disable,
    /// Gives `name` (whose password was checked) the simple token
    /// `<token_prefix>.<raft index>` on every member.
    Authenticate {
        name: String,
        token_prefix: String,
    },
    UserAdd {
        name: String,
        /// None: a user without a password (certificate auth only).
        password_hash: Option<String>,
    },
    UserGet {
        name: String,
    },
    UserList,
    UserDelete {
        name: String,
    },
    UserChangePassword {
        name: String,
        password_hash: String,
    },
    UserGrantRole {
        user: String,
        role: String,
    },
    UserRevokeRole {
        name: String,
        role: String,
    },
    RoleAdd {
        name: String,
    },
    RoleGet {
        role: String,
    },
    RoleList,
    RoleDelete {
        role: String,
    },
    RoleGrantPermission {
        name: String,
        /// `authpb.Permission.Type` as its wire value.
        perm_type: i32,
        key: Vec<u8>,
        range_end: Vec<u8>,
    },
    RoleRevokePermission {
        role: String,
        key: Vec<u8>,
        range_end: Vec<u8>,
    },
}

#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Default)]
pub struct PutCmd {
    pub key: Vec<u8>,
    pub value: Vec<u8>,
    pub lease: i64,
    pub prev_kv: bool,
    pub ignore_value: bool,
    pub ignore_lease: bool,
}

#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Default)]
pub struct DeleteRangeCmd {
    pub key: Vec<u8>,
    pub range_end: Vec<u8>,
    pub prev_kv: bool,
}

/// A range inside a txn. Stand-alone ranges are reads and never become commands.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Default)]
pub struct RangeCmd {
    pub key: Vec<u8>,
    pub range_end: Vec<u8>,
    pub limit: i64,
    pub revision: i64,
    pub sort_order: i32,
    pub sort_target: i32,
    pub keys_only: bool,
    pub count_only: bool,
    pub min_mod_revision: i64,
    pub max_mod_revision: i64,
    pub min_create_revision: i64,
    pub max_create_revision: i64,
}

/// The `target_union` of an etcd `Compare`, exactly as the client sent it.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
pub enum CompareValue {
    None,
    Version(i64),
    CreateRevision(i64),
    ModRevision(i64),
    Value(Vec<u8>),
    Lease(i64),
}

/// One compare of a txn. `target` and `value` are kept apart, as on the wire:
/// etcd reads the union only when its member matches `target`, and compares
/// against the target's zero value otherwise.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct CompareCmd {
    /// `pb::compare::CompareResult` as its wire value.
    pub result: i32,
    /// `pb::compare::CompareTarget` as its wire value.
    pub target: i32,
    pub key: Vec<u8>,
    pub range_end: Vec<u8>,
    pub value: CompareValue,
}

#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[rkyv(serialize_bounds(
    __S: rkyv::ser::Writer + rkyv::ser::Allocator,
    __S::Error: rkyv::rancor::Source,
))]
#[rkyv(deserialize_bounds(__D::Error: rkyv::rancor::Source))]
#[rkyv(bytecheck(bounds(__C: rkyv::validation::ArchiveContext, __C::Error: rkyv::rancor::Source)))]
pub enum OpCmd {
    Range(RangeCmd),
    Put(PutCmd),
    DeleteRange(DeleteRangeCmd),
    Txn(#[rkyv(omit_bounds)] TxnCmd),
}

#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Default)]
#[rkyv(serialize_bounds(
    __S: rkyv::ser::Writer + rkyv::ser::Allocator,
    __S::Error: rkyv::rancor::Source,
))]
#[rkyv(deserialize_bounds(__D::Error: rkyv::rancor::Source))]
#[rkyv(bytecheck(bounds(__C: rkyv::validation::ArchiveContext, __C::Error: rkyv::rancor::Source)))]
pub struct TxnCmd {
    pub compare: Vec<CompareCmd>,
    #[rkyv(omit_bounds)]
    pub success: Vec<OpCmd>,
    #[rkyv(omit_bounds)]
    pub failure: Vec<OpCmd>,
}

#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Default)]
pub struct CompactCmd {
    pub revision: i64,
    pub physical: bool,
}

/// Grants lease `id` (chosen before proposing, so every member agrees)
/// with `ttl` seconds (already raised to the minimum TTL).
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Default)]
pub struct LeaseGrantCmd {
    pub id: i64,
    pub ttl: i64,
}

/// Revokes a lease: deletes its keys in one revision.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Default)]
pub struct LeaseRevokeCmd {
    pub id: i64,
}

/// The leader's record of leases' remaining TTLs, so they survive a
/// leader change.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Default)]
pub struct LeaseCheckpointCmd {
    /// (lease id, remaining TTL in seconds)
    pub checkpoints: Vec<(i64, i64)>,
}

/// A lease the leader of `term` found expired: revoked (its keys deleted in
/// one revision) only if the entry is applied in that same term. A leader
/// that was deposed before its revoke was committed may have lost the
/// lease's keep-alives to its successor; applied under another term, the
/// command changes nothing.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Default)]
pub struct LeaseExpireCmd {
    pub id: i64,
    pub term: u64,
}

/// The remaining TTLs the leader of `term` recorded, applied only in that
/// term (see [`LeaseExpireCmd`]).
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Default)]
pub struct LeaseCheckpointInTermCmd {
    pub term: u64,
    /// (lease id, remaining TTL in seconds)
    pub checkpoints: Vec<(i64, i64)>,
}

/// Raises (`activate`) or clears alarm `alarm` (`pb::AlarmType` as its wire
/// value) of member `member_id`.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Default)]
pub struct AlarmCmd {
    pub activate: bool,
    pub member_id: u64,
    pub alarm: i32,
}

impl ArchivedCommand {
    /// The command itself, without the credentials it may carry.
    pub fn inner(&self) -> &ArchivedCommand {
        match self {
            ArchivedCommand::Authed(a) => a.command.inner(),
            other => other,
        }
    }

    /// Whether a NOSPACE alarm refuses this command, as etcd's capped
    /// applier does: puts, lease grants, and txns that do more than read.
    pub fn needs_space(&self) -> bool {
        match self.inner() {
            ArchivedCommand::Put(_) | ArchivedCommand::LeaseGrant(_) => true,
            ArchivedCommand::Txn(t) => t
                .success
                .iter()
                .chain(t.failure.iter())
                .any(|op| !matches!(op, ArchivedOpCmd::Range(_))),
            _ => false,
        }
    }

    /// The leader term a command was decided in, for commands a leader
    /// decides by its own clock: such a command takes effect only when its
    /// entry belongs to that term.
    pub fn decided_in_term(&self) -> Option<u64> {
        match self.inner() {
            ArchivedCommand::LeaseExpire(c) => Some(c.term.to_native()),
            ArchivedCommand::LeaseCheckpointInTerm(c) => Some(c.term.to_native()),
            _ => None,
        }
    }
}

/// Why archived bytes could not be read as a [`Command`].
#[derive(Debug)]
pub struct InvalidCommand(pub String);

impl std::fmt::Display for InvalidCommand {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "invalid archived command: {}", self.0)
    }
}

impl std::error::Error for InvalidCommand {}

impl Command {
    /// Archives the command. The buffer is 16-byte aligned, as reading it in
    /// place requires.
    pub fn to_bytes(&self) -> rkyv::util::AlignedVec {
        // Serializing plain owned data into a growable buffer cannot fail.
        rkyv::to_bytes::<rkyv::rancor::Error>(self).expect("archiving a command into memory")
    }

    /// Validates archived bytes and returns a view of them, without copying.
    /// `bytes` must start at a 16-byte aligned address.
    pub fn access(bytes: &[u8]) -> Result<&ArchivedCommand, InvalidCommand> {
        rkyv::access::<ArchivedCommand, rkyv::rancor::Error>(bytes)
            .map_err(|e| InvalidCommand(e.to_string()))
    }
}

impl From<pb::PutRequest> for PutCmd {
    fn from(r: pb::PutRequest) -> Self {
        PutCmd {
            key: r.key.into(),
            value: r.value.into(),
            lease: r.lease,
            prev_kv: r.prev_kv,
            ignore_value: r.ignore_value,
            ignore_lease: r.ignore_lease,
        }
    }
}

impl From<pb::DeleteRangeRequest> for DeleteRangeCmd {
    fn from(r: pb::DeleteRangeRequest) -> Self {
        DeleteRangeCmd {
            key: r.key.into(),
            range_end: r.range_end.into(),
            prev_kv: r.prev_kv,
        }
    }
}

impl From<pb::RangeRequest> for RangeCmd {
    fn from(r: pb::RangeRequest) -> Self {
        RangeCmd {
            key: r.key.into(),
            range_end: r.range_end.into(),
            limit: r.limit,
            revision: r.revision,
            sort_order: r.sort_order,
            sort_target: r.sort_target,
            keys_only: r.keys_only,
            count_only: r.count_only,
            min_mod_revision: r.min_mod_revision,
            max_mod_revision: r.max_mod_revision,
            min_create_revision: r.min_create_revision,
            max_create_revision: r.max_create_revision,
        }
    }
}

impl From<pb::Compare> for CompareCmd {
    fn from(c: pb::Compare) -> Self {
        use pb::compare::TargetUnion;
        let value = match c.target_union {
            None => CompareValue::None,
            Some(TargetUnion::Version(v)) => CompareValue::Version(v),
            Some(TargetUnion::CreateRevision(v)) => CompareValue::CreateRevision(v),
            Some(TargetUnion::ModRevision(v)) => CompareValue::ModRevision(v),
            Some(TargetUnion::Value(v)) => CompareValue::Value(v.into()),
            Some(TargetUnion::Lease(v)) => CompareValue::Lease(v),
        };
        CompareCmd {
            result: c.result,
            target: c.target,
            key: c.key.into(),
            range_end: c.range_end.into(),
            value,
        }
    }
}

impl From<pb::TxnRequest> for TxnCmd {
    fn from(t: pb::TxnRequest) -> Self {
        TxnCmd {
            compare: t.compare.into_iter().map(CompareCmd::from).collect(),
            success: t
                .success
                .into_iter()
                .filter_map(OpCmd::from_request_op)
                .collect(),
            failure: t
                .failure
                .into_iter()
                .filter_map(OpCmd::from_request_op)
                .collect(),
        }
    }
}

impl OpCmd {
    /// Converts one txn operation. An empty operation has no command; the
    /// edge rejects it before conversion (etcd: "key not found").
    pub fn from_request_op(op: pb::RequestOp) -> Option<OpCmd> {
        use pb::request_op::Request;
        Some(match op.request? {
            Request::RequestRange(r) => OpCmd::Range(r.into()),
            Request::RequestPut(r) => OpCmd::Put(r.into()),
            Request::RequestDeleteRange(r) => OpCmd::DeleteRange(r.into()),
            Request::RequestTxn(t) => OpCmd::Txn(t.into()),
        })
    }
}

impl From<pb::CompactionRequest> for CompactCmd {
    fn from(r: pb::CompactionRequest) -> Self {
        CompactCmd {
            revision: r.revision,
            physical: r.physical,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nested_txn_round_trips_through_archive() {
        let inner = TxnCmd {
            compare: vec![CompareCmd {
                result: 0,
                target: 3,
                key: b"k".to_vec(),
                range_end: vec![],
                value: CompareValue::Value(b"v".to_vec()),
            }],
            success: vec![OpCmd::Put(PutCmd {
                key: b"a".to_vec(),
                value: b"1".to_vec(),
                ..Default::default()
            })],
            failure: vec![],
        };
        let cmd = Command::Txn(TxnCmd {
            compare: vec![],
            success: vec![OpCmd::Txn(inner.clone())],
            failure: vec![OpCmd::Range(RangeCmd::default())],
        });
        let bytes = cmd.to_bytes();
        let archived = Command::access(&bytes).unwrap();
        let back: Command = rkyv::deserialize::<Command, rkyv::rancor::Error>(archived).unwrap();
        assert_eq!(back, cmd);
    }

    #[test]
    fn garbage_is_rejected_not_trusted() {
        let mut bytes = Command::Compact(CompactCmd::default()).to_bytes();
        let last = bytes.len() - 1;
        bytes[last] ^= 0xff;
        bytes[0] ^= 0xff;
        // Either invalid, or (if the flips hit padding) still a valid command:
        // never undefined behaviour.
        let _ = Command::access(&bytes);
        assert!(Command::access(&[1, 2, 3]).is_err());
    }

    #[test]
    fn compare_keeps_target_and_union_apart() {
        let c = pb::Compare {
            result: 0,
            target: pb::compare::CompareTarget::Mod as i32,
            key: b"k".to_vec().into(),
            range_end: Default::default(),
            target_union: Some(pb::compare::TargetUnion::Version(7)),
        };
        let cmd = CompareCmd::from(c);
        assert_eq!(cmd.target, pb::compare::CompareTarget::Mod as i32);
        assert_eq!(cmd.value, CompareValue::Version(7));
    }
}
