//! The KV service: Range, Put, DeleteRange, Txn, Compact.
//!
//! Requests are checked here with etcd's rules and messages, then writes
//! become archived commands proposed to raft, and reads go to the MVCC actor
//! (through a read-index round unless `serializable`).

use std::collections::HashSet;
use std::future::Future;

use bytes::Bytes;
use keel_proto::command::{
    AlarmCmd, AuthedCmd, Command, CompactCmd, DeleteRangeCmd, PutCmd, TxnCmd,
};
use keel_proto::etcdserverpb as pb;
use keel_storage::auth::AuthError;
use keel_storage::mvcc::CommandResponse;
use tokio::sync::oneshot;

use super::ServerCtx;
use crate::grpc::status::Status;
use crate::mvcc_actor::{MvccMsg, ReadError, ALARM_NOSPACE};
use crate::raft::actor::{Origin, RaftRequest};
use crate::raft::types::{Applied, ProposeError, WriteReply};

pub fn check_range(r: &pb::RangeRequest) -> Result<(), Status> {
    if r.key.is_empty() {
        return Err(Status::empty_key());
    }
    if pb::range_request::SortOrder::try_from(r.sort_order).is_err()
        || pb::range_request::SortTarget::try_from(r.sort_target).is_err()
    {
        return Err(Status::invalid_sort_option());
    }
    Ok(())
}

pub fn check_put(r: &pb::PutRequest) -> Result<(), Status> {
    if r.key.is_empty() {
        return Err(Status::empty_key());
    }
    if r.ignore_value && !r.value.is_empty() {
        return Err(Status::value_provided());
    }
    if r.ignore_lease && r.lease != 0 {
        return Err(Status::lease_provided());
    }
    Ok(())
}

pub fn check_delete(r: &pb::DeleteRangeRequest) -> Result<(), Status> {
    if r.key.is_empty() {
        return Err(Status::empty_key());
    }
    Ok(())
}

fn check_request_op(op: &pb::RequestOp, max_ops: usize) -> Result<(), Status> {
    use pb::request_op::Request;
    match &op.request {
        Some(Request::RequestRange(r)) => check_range(r),
        Some(Request::RequestPut(r)) => check_put(r),
        Some(Request::RequestDeleteRange(r)) => check_delete(r),
        Some(Request::RequestTxn(t)) => check_txn(t, max_ops),
        // An empty operation: etcd answers "key not found".
        None => Err(Status::key_not_found()),
    }
}

/// etcd's checkTxnRequest.
pub fn check_txn(t: &pb::TxnRequest, max_ops: usize) -> Result<(), Status> {
    let ops = t.compare.len().max(t.success.len()).max(t.failure.len());
    if ops > max_ops {
        return Err(Status::too_many_ops());
    }
    if t.compare.iter().any(|c| c.key.is_empty()) {
        return Err(Status::empty_key());
    }
    for op in t.success.iter().chain(t.failure.iter()) {
        check_request_op(op, max_ops)?;
    }
    Ok(())
}

/// A deleted interval, compared as etcd's string intervals are: a point
/// when `end` is empty, otherwise `[start, end)`.
#[derive(Debug, Clone)]
struct Interval {
    start: Bytes,
    end: Bytes,
}

impl Interval {
    fn contains(&self, k: &[u8]) -> bool {
        if self.end.is_empty() {
            k == &self.start[..]
        } else {
            k >= &self.start[..] && k < &self.end[..]
        }
    }
}

/// etcd's checkIntervals: within one txn, no key may be put twice, and no
/// put may fall in a deleted range, across nesting levels; the two branches
/// of a nested txn may put the same key (only one runs). Returns this level's
/// puts and deletes for the level above.
fn check_intervals(ops: &[pb::RequestOp]) -> Result<(HashSet<Bytes>, Vec<Interval>), Status> {
    use pb::request_op::Request;
    let mut dels: Vec<Interval> = ops
        .iter()
        .filter_map(|op| match &op.request {
            Some(Request::RequestDeleteRange(d)) => Some(Interval {
                start: d.key.clone(),
                end: d.range_end.clone(),
            }),
            _ => None,
        })
        .collect();
    let mut puts: HashSet<Bytes> = HashSet::new();
    for op in ops {
        let Some(Request::RequestTxn(t)) = &op.request else {
            continue;
        };
        let (puts_then, dels_then) = check_intervals(&t.success)?;
        let (puts_else, dels_else) = check_intervals(&t.failure)?;
        for k in &puts_then {
            if puts.contains(k) || dels.iter().any(|d| d.contains(k)) {
                return Err(Status::duplicate_key());
            }
            puts.insert(k.clone());
        }
        for k in &puts_else {
            if puts.contains(k) && !puts_then.contains(k) {
                return Err(Status::duplicate_key());
            }
            if dels.iter().any(|d| d.contains(k)) {
                return Err(Status::duplicate_key());
            }
            puts.insert(k.clone());
        }
        dels.extend(dels_then);
        dels.extend(dels_else);
    }
    for op in ops {
        let Some(Request::RequestPut(p)) = &op.request else {
            continue;
        };
        if puts.contains(&p.key) || dels.iter().any(|d| d.contains(&p.key)) {
            return Err(Status::duplicate_key());
        }
        puts.insert(p.key.clone());
    }
    Ok((puts, dels))
}

/// Everything etcd checks on a txn before proposing it.
pub fn validate_txn(t: &pb::TxnRequest, max_ops: usize) -> Result<(), Status> {
    check_txn(t, max_ops)?;
    check_intervals(&t.success)?;
    check_intervals(&t.failure)?;
    Ok(())
}

/// Waits for `fut`, or fails with etcd's timeout after `timeout`.
pub async fn with_timeout<T>(
    timeout: std::time::Duration,
    fut: impl Future<Output = T>,
) -> Result<T, Status> {
    glommio::timer::timeout(timeout, async { Ok(fut.await) })
        .await
        .map_err(|_| Status::timeout())
}

/// etcd's estimate of the space a new key takes beyond its key and value,
/// and of a lease (or a key's attachment to one).
pub const KEY_OVERHEAD: u64 = 256;
pub const LEASE_OVERHEAD: u64 = 64;

/// etcd's cost of a put against the space quota.
pub fn cost_put(r: &pb::PutRequest) -> u64 {
    let lease = if r.lease != 0 { LEASE_OVERHEAD } else { 0 };
    KEY_OVERHEAD + r.key.len() as u64 + r.value.len() as u64 + lease
}

/// etcd's cost of a txn: the puts of its costlier branch (top level only).
pub fn cost_txn(t: &pb::TxnRequest) -> u64 {
    use pb::request_op::Request;
    let branch = |ops: &[pb::RequestOp]| -> u64 {
        ops.iter()
            .map(|op| match &op.request {
                Some(Request::RequestPut(p)) => cost_put(p),
                _ => 0,
            })
            .sum()
    };
    branch(&t.success).max(branch(&t.failure))
}

/// etcd's space quota, checked before a put, txn or lease grant is
/// proposed: one that would take the store to the quota fails with
/// "database space exceeded" and raises the NOSPACE alarm for this member
/// (once; the alarm then refuses such writes on every member as they
/// apply, until it is disarmed).
pub async fn check_space(ctx: &ServerCtx, cost: u64) -> Result<(), Status> {
    let Some(quota) = ctx.cfg.quota_bytes else {
        return Ok(());
    };
    if ctx.space.size_bytes() + cost < quota {
        return Ok(());
    }
    if !ctx.space.nospace() {
        let raise = Command::Alarm(AlarmCmd {
            activate: true,
            member_id: ctx.cfg.ids.member_id,
            alarm: ALARM_NOSPACE,
        });
        if let Err(e) = propose(ctx, raise, 0).await {
            tracing::warn!("raising the NOSPACE alarm: {}", e.message);
        }
    }
    Err(Status::no_space())
}

/// Proposes a command and waits until it is applied.
pub async fn propose(
    ctx: &ServerCtx,
    cmd: Command,
    request_bytes: usize,
) -> Result<CommandResponse, Status> {
    Ok(propose_applied(ctx, cmd, request_bytes).await?.outcome?)
}

/// Proposes a command (with the caller's credentials, if it has any) and
/// waits until it is applied; answers the outcome and the entry's index.
pub async fn propose_applied(
    ctx: &ServerCtx,
    cmd: Command,
    request_bytes: usize,
) -> Result<Applied, Status> {
    if request_bytes > ctx.cfg.max_request_bytes {
        return Err(Status::request_too_large());
    }
    let cmd = match &ctx.caller {
        Some(c) => Command::Authed(AuthedCmd {
            user: c.user.clone(),
            auth_revision: c.revision,
            command: Box::new(cmd),
        }),
        None => cmd,
    };
    let command = Bytes::from_owner(cmd.to_bytes());
    let (tx, rx) = oneshot::channel::<WriteReply>();
    ctx.raft
        .send(RaftRequest::Propose {
            command,
            origin: Origin::Client,
            reply: tx,
        })
        .await
        .map_err(|_| Status::stopped())?;
    match with_timeout(ctx.cfg.request_timeout, rx).await? {
        Err(_) => Err(Status::stopped()),
        Ok(Err(ProposeError::NotLeader { .. })) => Err(Status::no_leader()),
        Ok(Err(ProposeError::LeaderChanged)) => Err(Status::leader_changed()),
        Ok(Err(ProposeError::Stopped)) => Err(Status::stopped()),
        Ok(Ok(applied)) => Ok(applied),
    }
}

pub(crate) fn read_error(e: ReadError) -> Status {
    match e {
        ReadError::Mvcc(m) => m.into(),
        ReadError::Busy => Status::too_many_requests(),
        ReadError::NoLeader => Status::no_leader(),
    }
}

/// Serves a range: serializable ones locally, others after a read-index
/// round. With auth on, the caller must be allowed to read the whole range,
/// and an auth change while it was read refuses it (etcd's doSerialize).
pub async fn read(ctx: &ServerCtx, req: pb::RangeRequest) -> Result<pb::RangeResponse, Status> {
    if !ctx.auth.enabled() {
        return read_unchecked(ctx, req).await;
    }
    let caller = ctx.caller.as_ref();
    ctx.auth.check_read(caller, &req.key, &req.range_end)?;
    let resp = read_unchecked(ctx, req).await?;
    if caller.is_some_and(|c| c.revision != ctx.auth.store().revision()) {
        return Err(AuthError::AuthOldRevision.into());
    }
    Ok(resp)
}

/// [`read`] without auth: for the member's own reads (its health check).
pub async fn read_unchecked(
    ctx: &ServerCtx,
    req: pb::RangeRequest,
) -> Result<pb::RangeResponse, Status> {
    let (tx, rx) = oneshot::channel();
    if req.serializable {
        ctx.mvcc
            .send(MvccMsg::Range {
                req,
                min_applied: 0,
                reply: tx,
            })
            .await
            .map_err(|_| Status::stopped())?;
    } else {
        ctx.raft
            .send(RaftRequest::LinearizableRange { req, reply: tx })
            .await
            .map_err(|_| Status::stopped())?;
    }
    match with_timeout(ctx.cfg.request_timeout, rx).await? {
        Ok(r) => r.map_err(read_error),
        Err(_) => Err(Status::stopped()),
    }
}

pub async fn range(ctx: &ServerCtx, req: pb::RangeRequest) -> Result<pb::RangeResponse, Status> {
    check_range(&req)?;
    if !req.serializable && crate::raft::actor::is_learner() {
        return Err(Status::learner_unsupported());
    }
    read(ctx, req).await
}

pub async fn put(
    ctx: &ServerCtx,
    req: pb::PutRequest,
    len: usize,
) -> Result<pb::PutResponse, Status> {
    check_put(&req)?;
    check_space(ctx, cost_put(&req)).await?;
    match propose(ctx, Command::Put(PutCmd::from(req)), len).await? {
        CommandResponse::Put(r) => Ok(r),
        _ => Err(mismatch()),
    }
}

pub async fn delete_range(
    ctx: &ServerCtx,
    req: pb::DeleteRangeRequest,
    len: usize,
) -> Result<pb::DeleteRangeResponse, Status> {
    check_delete(&req)?;
    match propose(ctx, Command::DeleteRange(DeleteRangeCmd::from(req)), len).await? {
        CommandResponse::DeleteRange(r) => Ok(r),
        _ => Err(mismatch()),
    }
}

pub async fn txn(
    ctx: &ServerCtx,
    req: pb::TxnRequest,
    len: usize,
) -> Result<pb::TxnResponse, Status> {
    validate_txn(&req, ctx.cfg.max_txn_ops)?;
    check_space(ctx, cost_txn(&req)).await?;
    match propose(ctx, Command::Txn(TxnCmd::from(req)), len).await? {
        CommandResponse::Txn(r) => Ok(r),
        _ => Err(mismatch()),
    }
}

pub async fn compact(
    ctx: &ServerCtx,
    req: pb::CompactionRequest,
    len: usize,
) -> Result<pb::CompactionResponse, Status> {
    let physical = req.physical;
    let CommandResponse::Compact(r) =
        propose(ctx, Command::Compact(CompactCmd::from(req)), len).await?
    else {
        return Err(mismatch());
    };
    if physical {
        // As etcd, a physical compaction answers once this member has
        // removed what it compacted (keel does so in steps, after the apply).
        let (tx, rx) = tokio::sync::oneshot::channel();
        if ctx
            .mvcc
            .send(crate::mvcc_actor::MvccMsg::CompactionDone { reply: tx })
            .await
            .is_ok()
        {
            let _ = rx.await;
        }
    }
    Ok(r)
}

pub(super) fn mismatch() -> Status {
    Status::new(
        crate::grpc::status::Code::Internal,
        "response does not match the request",
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use pb::request_op::Request;

    fn put(k: &str) -> pb::RequestOp {
        pb::RequestOp {
            request: Some(Request::RequestPut(pb::PutRequest {
                key: Bytes::from(k.to_string()),
                ..Default::default()
            })),
        }
    }

    fn del(k: &str, end: &str) -> pb::RequestOp {
        pb::RequestOp {
            request: Some(Request::RequestDeleteRange(pb::DeleteRangeRequest {
                key: Bytes::from(k.to_string()),
                range_end: Bytes::from(end.to_string()),
                ..Default::default()
            })),
        }
    }

    fn txn(success: Vec<pb::RequestOp>, failure: Vec<pb::RequestOp>) -> pb::TxnRequest {
        pb::TxnRequest {
            compare: vec![],
            success,
            failure,
        }
    }

    fn nested(success: Vec<pb::RequestOp>, failure: Vec<pb::RequestOp>) -> pb::RequestOp {
        pb::RequestOp {
            request: Some(Request::RequestTxn(txn(success, failure))),
        }
    }

    #[test]
    fn duplicate_puts_and_put_in_deleted_range() {
        assert_eq!(
            validate_txn(&txn(vec![put("a"), put("a")], vec![]), 128),
            Err(Status::duplicate_key())
        );
        assert_eq!(
            validate_txn(&txn(vec![del("a", "c"), put("b")], vec![]), 128),
            Err(Status::duplicate_key())
        );
        assert_eq!(
            validate_txn(&txn(vec![del("a", ""), put("a")], vec![]), 128),
            Err(Status::duplicate_key())
        );
        assert!(validate_txn(&txn(vec![del("a", ""), put("b")], vec![]), 128).is_ok());
        // Success and failure branches are checked separately.
        assert!(validate_txn(&txn(vec![put("a")], vec![put("a")]), 128).is_ok());
        // etcd quirk: a "\0" range end makes an empty interval here.
        assert!(validate_txn(&txn(vec![del("a", "\0"), put("b")], vec![]), 128).is_ok());
    }

    #[test]
    fn nesting_rules() {
        // A nested txn's branches may put the same key.
        assert!(validate_txn(
            &txn(vec![nested(vec![put("a")], vec![put("a")])], vec![]),
            128
        )
        .is_ok());
        // But not one the outer level also puts.
        assert_eq!(
            validate_txn(
                &txn(vec![nested(vec![put("a")], vec![]), put("a")], vec![]),
                128
            ),
            Err(Status::duplicate_key())
        );
        // Nor one an outer delete covers.
        assert_eq!(
            validate_txn(
                &txn(vec![del("a", "z"), nested(vec![], vec![put("b")])], vec![]),
                128
            ),
            Err(Status::duplicate_key())
        );
    }

    #[test]
    fn op_limits_and_empty_parts() {
        let ops: Vec<_> = (0..129).map(|i| put(&format!("k{i}"))).collect();
        assert_eq!(
            validate_txn(&txn(ops, vec![]), 128),
            Err(Status::too_many_ops())
        );
        assert_eq!(
            validate_txn(&txn(vec![pb::RequestOp { request: None }], vec![]), 128),
            Err(Status::key_not_found())
        );
        assert_eq!(
            validate_txn(&txn(vec![put("")], vec![]), 128),
            Err(Status::empty_key())
        );
        let mut t = txn(vec![], vec![]);
        t.compare.push(pb::Compare::default());
        assert_eq!(validate_txn(&t, 128), Err(Status::empty_key()));
    }

    #[test]
    fn put_and_range_checks() {
        let p = pb::PutRequest {
            key: Bytes::from_static(b"k"),
            value: Bytes::from_static(b"v"),
            ignore_value: true,
            ..Default::default()
        };
        assert_eq!(check_put(&p), Err(Status::value_provided()));
        let p = pb::PutRequest {
            key: Bytes::from_static(b"k"),
            lease: 5,
            ignore_lease: true,
            ..Default::default()
        };
        assert_eq!(check_put(&p), Err(Status::lease_provided()));
        let r = pb::RangeRequest {
            key: Bytes::from_static(b"k"),
            sort_order: 7,
            ..Default::default()
        };
        assert_eq!(check_range(&r), Err(Status::invalid_sort_option()));
    }
}
