//! Applying archived commands with etcd's semantics.
//!
//! Put, DeleteRange, Txn and Compact arrive as rkyv-archived
//! [`Command`](keel_proto::command::Command)s read in place from the raft
//! entry. Values are taken from the entry buffer without copying when they
//! make up most of it (a large put); small values inside large txns are
//! copied, so one surviving key does not pin a whole txn buffer.
//!
//! A txn follows etcd exactly: every compare on the chosen path (nested txns
//! included) is evaluated first against the store as it was before the txn;
//! then, for txns that write, every put on that path is checked (ignore_* on
//! a missing key, unknown lease), then every range (revision bounds); only
//! then are the operations executed, all at one revision.

use bytes::Bytes;
use keel_proto::command::{
    ArchivedCommand, ArchivedCompareCmd, ArchivedCompareValue, ArchivedDeleteRangeCmd,
    ArchivedOpCmd, ArchivedPutCmd, ArchivedTxnCmd,
};
use keel_proto::etcdserverpb as pb;

use super::key_index::KeyRange;
use super::store_range::{to_key_value, RangeArgs};
use super::{KvStore, MvccError, WriteTxn};
use crate::auth::AuthInfo;

/// The response to an applied command. Headers carry the revision only.
#[derive(Debug, Clone, PartialEq)]
pub enum CommandResponse {
    Put(pb::PutResponse),
    DeleteRange(pb::DeleteRangeResponse),
    Txn(pb::TxnResponse),
    Compact(pb::CompactionResponse),
    LeaseGrant(pb::LeaseGrantResponse),
    LeaseRevoke(pb::LeaseRevokeResponse),
    LeaseCheckpoint(pb::LeaseCheckpointResponse),
    Alarm(pb::AlarmResponse),
    Auth {
        header: Option<pb::ResponseHeader>,
        answer: super::AuthAnswer,
    },
}

pub type ApplyOutcome = Result<CommandResponse, MvccError>;

fn header(revision: i64) -> Option<pb::ResponseHeader> {
    Some(pb::ResponseHeader {
        revision,
        ..Default::default()
    })
}

/// A slice of the entry buffer as `Bytes`: shared when it is most of the
/// buffer, copied otherwise.
fn share_or_copy(owner: &Bytes, part: &[u8]) -> Bytes {
    let inside = {
        let o = owner.as_ptr() as usize;
        let p = part.as_ptr() as usize;
        p >= o && p + part.len() <= o + owner.len()
    };
    if inside && part.len() * 2 >= owner.len() {
        owner.slice_ref(part)
    } else {
        Bytes::copy_from_slice(part)
    }
}

impl KvStore {
    /// Applies one command. `owner` is the buffer `cmd` was read from (the
    /// whole allocation: a value shares it only when it is most of it).
    pub fn apply(&mut self, cmd: &ArchivedCommand, owner: &Bytes) -> ApplyOutcome {
        self.apply_as(cmd, owner, AuthInfo::NONE)
    }

    /// Applies `cmd` for `who` (a client command without credentials runs
    /// as nobody, and is refused while auth is on).
    fn apply_as(
        &mut self,
        cmd: &ArchivedCommand,
        owner: &Bytes,
        who: AuthInfo<'_>,
    ) -> ApplyOutcome {
        self.permit(cmd, who)?;
        match cmd {
            ArchivedCommand::Authed(a) => {
                let who = AuthInfo {
                    user: a.user.as_str(),
                    revision: a.auth_revision.to_native(),
                };
                self.apply_as(&a.command, owner, who)
            }
            ArchivedCommand::Auth(a) => {
                let answer = self.apply_auth(a)?;
                Ok(CommandResponse::Auth {
                    header: super::store_auth::auth_header(self),
                    answer,
                })
            }
            ArchivedCommand::Put(p) => {
                let lease = p.lease.to_native();
                if lease != 0 && !self.leases().exists(lease) {
                    return Err(MvccError::LeaseNotFound);
                }
                let mut txn = self.begin_write();
                if (p.ignore_value || p.ignore_lease) && !key_exists(&txn, p.key.as_slice()) {
                    return Err(MvccError::KeyNotFound);
                }
                let resp = put(&mut txn, p, owner);
                txn.end();
                Ok(CommandResponse::Put(resp))
            }
            ArchivedCommand::DeleteRange(d) => {
                let mut txn = self.begin_write();
                let resp = delete_range(&mut txn, d);
                txn.end();
                Ok(CommandResponse::DeleteRange(resp))
            }
            ArchivedCommand::Txn(t) => self.apply_txn(t, owner).map(CommandResponse::Txn),
            ArchivedCommand::Compact(c) => {
                self.compact(c.revision.to_native())?;
                Ok(CommandResponse::Compact(pb::CompactionResponse {
                    header: header(self.current_rev()),
                }))
            }
            ArchivedCommand::LeaseGrant(g) => {
                let (id, ttl) = (g.id.to_native(), g.ttl.to_native());
                if !self.leases_mut().grant(id, ttl) {
                    return Err(MvccError::LeaseExists);
                }
                Ok(CommandResponse::LeaseGrant(pb::LeaseGrantResponse {
                    header: header(self.current_rev()),
                    id,
                    ttl,
                    error: String::new(),
                }))
            }
            ArchivedCommand::LeaseRevoke(r) => self.revoke(r.id.to_native()),
            ArchivedCommand::LeaseExpire(r) => self.revoke(r.id.to_native()),
            ArchivedCommand::LeaseCheckpoint(c) => self.checkpoint(
                c.checkpoints
                    .iter()
                    .map(|cp| (cp.0.to_native(), cp.1.to_native())),
            ),
            ArchivedCommand::LeaseCheckpointInTerm(c) => self.checkpoint(
                c.checkpoints
                    .iter()
                    .map(|cp| (cp.0.to_native(), cp.1.to_native())),
            ),
            // Alarms are kept beside the store, by whoever applies the log.
            ArchivedCommand::Alarm(_) => self.unchanged(),
        }
    }

    /// Revokes a lease: every attached key goes in one revision, one event each.
    fn revoke(&mut self, id: i64) -> ApplyOutcome {
        let lease = self
            .leases_mut()
            .remove(id)
            .ok_or(MvccError::LeaseNotFound)?;
        let mut txn = self.begin_write();
        for key in &lease.keys {
            txn.delete_range(KeyRange::Single(key));
        }
        let rev = txn.end();
        Ok(CommandResponse::LeaseRevoke(pb::LeaseRevokeResponse {
            header: header(rev),
        }))
    }

    /// Records leases' remaining TTLs: (lease id, seconds).
    fn checkpoint(&mut self, checkpoints: impl Iterator<Item = (i64, i64)>) -> ApplyOutcome {
        for (id, remaining) in checkpoints {
            self.leases_mut().checkpoint(id, remaining);
        }
        self.unchanged()
    }

    /// What a command that takes no effect answers (a leader's decision
    /// applied outside the term it was made in): nothing changed.
    pub fn unchanged(&self) -> ApplyOutcome {
        Ok(CommandResponse::LeaseCheckpoint(
            pb::LeaseCheckpointResponse {
                header: header(self.current_rev()),
            },
        ))
    }

    fn apply_txn(
        &mut self,
        t: &ArchivedTxnCmd,
        owner: &Bytes,
    ) -> Result<pb::TxnResponse, MvccError> {
        let before = self.current_rev();
        let mut path = Vec::new();
        compare_to_path(self, before, t, &mut path);
        if !is_read_only(t) {
            check_requests(t, &path, &mut |op| check_put(self, before, op))?;
        }
        check_requests(t, &path, &mut |op| check_range(self, before, op))?;

        let mut txn = self.begin_write();
        let (mut resp, _) = exec_txn(&mut txn, t, &path, owner);
        let rev = if txn.changed() {
            txn.write_rev()
        } else {
            txn.read_rev()
        };
        txn.end();
        resp.header = header(rev);
        Ok(resp)
    }
}

fn key_exists(txn: &WriteTxn<'_>, key: &[u8]) -> bool {
    txn.store().index().get(key, txn.read_rev()).is_some()
}

fn put(txn: &mut WriteTxn<'_>, p: &ArchivedPutCmd, owner: &Bytes) -> pb::PutResponse {
    let key = p.key.as_slice();
    let prev = if p.ignore_value || p.ignore_lease || p.prev_kv {
        txn.store().index().get(key, txn.read_rev()).map(|v| {
            (
                v.value.clone(),
                v.lease,
                to_key_value(&Bytes::copy_from_slice(key), v),
            )
        })
    } else {
        None
    };
    let value = match (&prev, p.ignore_value) {
        (Some((v, _, _)), true) => v.clone(),
        _ => share_or_copy(owner, p.value.as_slice()),
    };
    let lease = match (&prev, p.ignore_lease) {
        (Some((_, l, _)), true) => *l,
        _ => p.lease.to_native(),
    };
    let rev = txn.put(key, value, lease);
    pb::PutResponse {
        header: header(rev),
        prev_kv: if p.prev_kv {
            prev.map(|(_, _, kv)| kv)
        } else {
            None
        },
    }
}

fn delete_range(txn: &mut WriteTxn<'_>, d: &ArchivedDeleteRangeCmd) -> pb::DeleteRangeResponse {
    let range = KeyRange::new(d.key.as_slice(), d.range_end.as_slice());
    let prev_kvs = if d.prev_kv {
        txn.store()
            .index()
            .range(range, txn.read_rev())
            .map(|(k, v)| to_key_value(k, v))
            .collect()
    } else {
        Vec::new()
    };
    let deleted = txn.delete_range(range);
    let rev = if txn.changed() {
        txn.write_rev()
    } else {
        txn.read_rev()
    };
    pb::DeleteRangeResponse {
        header: header(rev),
        deleted,
        prev_kvs,
    }
}

/// etcd's compareToPath: the outcome of this txn's compares, then of every
/// nested txn on the chosen branch, depth first.
fn compare_to_path(store: &KvStore, rev: i64, t: &ArchivedTxnCmd, path: &mut Vec<bool>) {
    let ok = t.compare.iter().all(|c| compare(store, rev, c));
    path.push(ok);
    let ops = if ok { &t.success } else { &t.failure };
    for op in ops.iter() {
        if let ArchivedOpCmd::Txn(nested) = op {
            compare_to_path(store, rev, nested, path);
        }
    }
}

fn compare(store: &KvStore, rev: i64, c: &ArchivedCompareCmd) -> bool {
    use pb::compare::CompareTarget as T;
    let range = KeyRange::new(c.key.as_slice(), c.range_end.as_slice());
    let target = T::try_from(c.target.to_native()).ok();
    let mut any = false;
    for (_, v) in store.index().range(range, rev) {
        any = true;
        let kv = CmpKv {
            value: &v.value,
            create: v.create_revision,
            modified: v.rev.main,
            version: v.version,
            lease: v.lease,
        };
        if !compare_kv(c, target, &kv) {
            return false;
        }
    }
    if !any {
        // A value compare against a missing key always fails: gRPC cannot
        // tell an empty value from none.
        if target == Some(T::Value) {
            return false;
        }
        return compare_kv(c, target, &CmpKv::default());
    }
    true
}

#[derive(Default)]
struct CmpKv<'a> {
    value: &'a [u8],
    create: i64,
    modified: i64,
    version: i64,
    lease: i64,
}

/// etcd's compareKV: the union is read only if its member matches the target.
fn compare_kv(
    c: &ArchivedCompareCmd,
    target: Option<pb::compare::CompareTarget>,
    kv: &CmpKv<'_>,
) -> bool {
    use pb::compare::{CompareResult as R, CompareTarget as T};
    use std::cmp::Ordering;
    let int = |want: fn(&ArchivedCompareValue) -> Option<i64>| want(&c.value).unwrap_or(0);
    let ord = match target {
        Some(T::Value) => {
            let v: &[u8] = match &c.value {
                ArchivedCompareValue::Value(v) => v.as_slice(),
                _ => &[],
            };
            kv.value.cmp(v)
        }
        Some(T::Create) => kv.create.cmp(&int(|v| match v {
            ArchivedCompareValue::CreateRevision(x) => Some(x.to_native()),
            _ => None,
        })),
        Some(T::Mod) => kv.modified.cmp(&int(|v| match v {
            ArchivedCompareValue::ModRevision(x) => Some(x.to_native()),
            _ => None,
        })),
        Some(T::Version) => kv.version.cmp(&int(|v| match v {
            ArchivedCompareValue::Version(x) => Some(x.to_native()),
            _ => None,
        })),
        Some(T::Lease) => kv.lease.cmp(&int(|v| match v {
            ArchivedCompareValue::Lease(x) => Some(x.to_native()),
            _ => None,
        })),
        None => Ordering::Equal,
    };
    match R::try_from(c.result.to_native()) {
        Ok(R::Equal) => ord == Ordering::Equal,
        Ok(R::NotEqual) => ord != Ordering::Equal,
        Ok(R::Greater) => ord == Ordering::Greater,
        Ok(R::Less) => ord == Ordering::Less,
        Err(_) => true,
    }
}

/// True if no operation anywhere in the txn (either branch) writes.
fn is_read_only(t: &ArchivedTxnCmd) -> bool {
    t.success.iter().chain(t.failure.iter()).all(|op| match op {
        ArchivedOpCmd::Range(_) => true,
        ArchivedOpCmd::Txn(nested) => is_read_only(nested),
        ArchivedOpCmd::Put(_) | ArchivedOpCmd::DeleteRange(_) => false,
    })
}

/// Runs `f` on every non-txn operation along `path`; returns how many nested
/// txns it walked (so the caller can skip their path entries).
fn check_requests(
    t: &ArchivedTxnCmd,
    path: &[bool],
    f: &mut dyn FnMut(&ArchivedOpCmd) -> Result<(), MvccError>,
) -> Result<usize, MvccError> {
    let ops = if path[0] { &t.success } else { &t.failure };
    let mut rest = &path[1..];
    let mut walked = 0;
    for op in ops.iter() {
        if let ArchivedOpCmd::Txn(nested) = op {
            let n = check_requests(nested, rest, f)?;
            walked += n + 1;
            rest = &rest[n + 1..];
        } else {
            f(op)?;
        }
    }
    Ok(walked)
}

fn check_put(store: &KvStore, rev: i64, op: &ArchivedOpCmd) -> Result<(), MvccError> {
    let ArchivedOpCmd::Put(p) = op else {
        return Ok(());
    };
    if (p.ignore_value || p.ignore_lease) && store.index().get(p.key.as_slice(), rev).is_none() {
        return Err(MvccError::KeyNotFound);
    }
    let lease = p.lease.to_native();
    if lease != 0 && !store.leases().exists(lease) {
        return Err(MvccError::LeaseNotFound);
    }
    Ok(())
}

fn check_range(store: &KvStore, rev: i64, op: &ArchivedOpCmd) -> Result<(), MvccError> {
    let ArchivedOpCmd::Range(r) = op else {
        return Ok(());
    };
    let want = r.revision.to_native();
    if want == 0 {
        Ok(())
    } else if want > rev {
        Err(MvccError::FutureRev)
    } else if want < store.compact_rev() {
        Err(MvccError::Compacted)
    } else {
        Ok(())
    }
}

/// Executes the chosen branch; returns the response and the number of
/// nested txns walked.
fn exec_txn(
    txn: &mut WriteTxn<'_>,
    t: &ArchivedTxnCmd,
    path: &[bool],
    owner: &Bytes,
) -> (pb::TxnResponse, usize) {
    use pb::response_op::Response;
    let succeeded = path[0];
    let ops = if succeeded { &t.success } else { &t.failure };
    let mut rest = &path[1..];
    let mut walked = 0;
    let mut responses = Vec::with_capacity(ops.len());
    for op in ops.iter() {
        let r = match op {
            ArchivedOpCmd::Range(r) => {
                let args = RangeArgs::from(r);
                // Revision bounds were checked before any write; the range
                // cannot fail now. An empty answer stands in for the
                // impossible error rather than abandoning half a txn.
                let resp = txn
                    .store()
                    .range(&args, txn.read_rev())
                    .unwrap_or_else(|_| pb::RangeResponse {
                        header: header(txn.read_rev()),
                        ..Default::default()
                    });
                Response::ResponseRange(resp)
            }
            ArchivedOpCmd::Put(p) => Response::ResponsePut(put(txn, p, owner)),
            ArchivedOpCmd::DeleteRange(d) => Response::ResponseDeleteRange(delete_range(txn, d)),
            ArchivedOpCmd::Txn(nested) => {
                let (mut sub, n) = exec_txn(txn, nested, rest, owner);
                sub.header = Some(pb::ResponseHeader::default());
                walked += n + 1;
                rest = &rest[n + 1..];
                Response::ResponseTxn(sub)
            }
        };
        responses.push(pb::ResponseOp { response: Some(r) });
    }
    (
        pb::TxnResponse {
            header: None,
            succeeded,
            responses,
        },
        walked,
    )
}
