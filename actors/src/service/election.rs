//! The Lock and Election services, implemented on the server with etcd's
//! client recipes (clientv3/concurrency): a contender's key is
//! `<name>/<lease id in hex>`, bound to its lease (a request without one
//! gets a 60 s lease of its own, as etcd's session); the owner is the key
//! with the lowest create revision under `<name>/`; a waiter watches the
//! delete of the key created just before its own, so each wakes only its
//! successor. Errors reach the client as etcd's lock and election servers
//! return them: gRPC Unknown with the message.

use std::rc::Rc;

use crate::grpc::body::RequestBody;
use bytes::Bytes;
use keel_proto::etcdserverpb as pb;
use keel_proto::{mvccpb, v3electionpb as epb, v3lockpb as lpb};
use tokio::sync::mpsc;

use super::kv;
use super::ServerCtx;
use crate::grpc::body::StreamItem;
use crate::grpc::frame;
use crate::grpc::status::{Code, Status};
use crate::mvcc_actor::{MvccMsg, WatchMsg};
use crate::watch::WatchSpec;

/// Internal watches: hub responses queued.
const WAIT_QUEUE: usize = 16;

/// etcd's lock and election servers hand errors through as Unknown.
fn unknown(s: Status) -> Status {
    Status::new(Code::Unknown, s.message)
}

fn no_leader() -> Status {
    Status::new(Code::Unknown, "election: no leader")
}

fn not_leader() -> Status {
    Status::new(Code::Unknown, "election: not leader")
}

fn prefix_of(name: &[u8]) -> Vec<u8> {
    let mut p = name.to_vec();
    p.push(b'/');
    p
}

fn key_of(prefix: &[u8], lease: i64) -> Bytes {
    let mut k = prefix.to_vec();
    k.extend_from_slice(format!("{lease:x}").as_bytes());
    Bytes::from(k)
}

/// The end of the range of keys starting with `prefix`.
fn prefix_end(prefix: &[u8]) -> Bytes {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return Bytes::from(end);
        }
    }
    Bytes::from_static(b"\0")
}

/// The key under `prefix` created first (the owner / leader), or last
/// before `max_create_rev` (0: no bound) when `last` is set.
fn edge_range(prefix: &[u8], last: bool, max_create_rev: i64) -> pb::RangeRequest {
    use pb::range_request::{SortOrder, SortTarget};
    pb::RangeRequest {
        key: Bytes::copy_from_slice(prefix),
        range_end: prefix_end(prefix),
        limit: 1,
        sort_order: if last {
            SortOrder::Descend
        } else {
            SortOrder::Ascend
        } as i32,
        sort_target: SortTarget::Create as i32,
        max_create_revision: max_create_rev,
        ..Default::default()
    }
}

fn create_rev_is(key: &Bytes, rev: i64) -> pb::Compare {
    use pb::compare::{CompareResult, CompareTarget, TargetUnion};
    pb::Compare {
        result: CompareResult::Equal as i32,
        target: CompareTarget::Create as i32,
        key: key.clone(),
        range_end: Bytes::new(),
        target_union: Some(TargetUnion::CreateRevision(rev)),
    }
}

fn op_put(key: &Bytes, value: Bytes, lease: i64) -> pb::RequestOp {
    pb::RequestOp {
        request: Some(pb::request_op::Request::RequestPut(pb::PutRequest {
            key: key.clone(),
            value,
            lease,
            ..Default::default()
        })),
    }
}

fn op_range(r: pb::RangeRequest) -> pb::RequestOp {
    pb::RequestOp {
        request: Some(pb::request_op::Request::RequestRange(r)),
    }
}

fn op_delete(key: &Bytes) -> pb::RequestOp {
    pb::RequestOp {
        request: Some(pb::request_op::Request::RequestDeleteRange(
            pb::DeleteRangeRequest {
                key: key.clone(),
                ..Default::default()
            },
        )),
    }
}

fn range_of(r: &pb::ResponseOp) -> Option<&pb::RangeResponse> {
    match &r.response {
        Some(pb::response_op::Response::ResponseRange(r)) => Some(r),
        _ => None,
    }
}

async fn txn(ctx: &ServerCtx, t: pb::TxnRequest) -> Result<pb::TxnResponse, Status> {
    let len = prost::Message::encoded_len(&t);
    kv::txn(ctx, t, len).await.map_err(unknown)
}

async fn read(ctx: &ServerCtx, r: pb::RangeRequest) -> Result<pb::RangeResponse, Status> {
    kv::read(ctx, r).await.map_err(unknown)
}

/// Puts `key` for `lease` unless it exists (etcd's create-if-absent), and
/// also reads the first-created key under `prefix`. Returns the txn's
/// response, the key's create revision and the owner's.
async fn enter(
    ctx: &ServerCtx,
    prefix: &[u8],
    key: &Bytes,
    value: Bytes,
    lease: i64,
) -> Result<(pb::TxnResponse, i64, Option<mvccpb::KeyValue>), Status> {
    let owner = op_range(edge_range(prefix, false, 0));
    let get_key = op_range(pb::RangeRequest {
        key: key.clone(),
        ..Default::default()
    });
    let resp = txn(
        ctx,
        pb::TxnRequest {
            compare: vec![create_rev_is(key, 0)],
            success: vec![op_put(key, value, lease), owner.clone()],
            failure: vec![get_key, owner],
        },
    )
    .await?;
    let my_rev = if resp.succeeded {
        resp.header.as_ref().map_or(0, |h| h.revision)
    } else {
        resp.responses
            .first()
            .and_then(range_of)
            .and_then(|r| r.kvs.first())
            .map_or(0, |kv| kv.create_revision)
    };
    let owner = resp
        .responses
        .get(1)
        .and_then(range_of)
        .and_then(|r| r.kvs.first().cloned());
    Ok((resp, my_rev, owner))
}

/// A watch the server keeps for itself on the MVCC actor's hub; closed
/// when dropped, however the wait ends.
struct InternalWatch<'a> {
    ctx: &'a ServerCtx,
    stream: u64,
    rx: mpsc::Receiver<pb::WatchResponse>,
}

impl<'a> InternalWatch<'a> {
    async fn open(ctx: &'a ServerCtx, spec: WatchSpec) -> Result<InternalWatch<'a>, Status> {
        // Ids far above the client streams' (which count up from 1).
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1 << 62);
        let stream = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let (tx, rx) = mpsc::channel(WAIT_QUEUE);
        let open = WatchMsg::Open {
            stream,
            tx,
            max_bytes: usize::MAX,
        };
        for m in [open, WatchMsg::Create { stream, spec }] {
            ctx.mvcc
                .send(MvccMsg::Watch(m))
                .await
                .map_err(|_| Status::stopped())?;
        }
        Ok(InternalWatch { ctx, stream, rx })
    }

    /// Resolves at the first event (or a cancellation by compaction: the
    /// caller looks again either way).
    async fn changed(&mut self) -> Result<(), Status> {
        while let Some(r) = self.rx.recv().await {
            if !r.events.is_empty() || r.canceled {
                return Ok(());
            }
        }
        Err(Status::stopped())
    }
}

impl Drop for InternalWatch<'_> {
    fn drop(&mut self) {
        let close = WatchMsg::Close {
            stream: self.stream,
        };
        let _ = self.ctx.mvcc.try_send(MvccMsg::Watch(close));
    }
}

/// Waits until `key` is deleted after revision `rev`.
async fn wait_deleted(ctx: &ServerCtx, key: &Bytes, rev: i64) -> Result<(), Status> {
    let spec = WatchSpec {
        key: key.clone(),
        start_rev: rev + 1,
        no_put: true,
        ..Default::default()
    };
    InternalWatch::open(ctx, spec).await?.changed().await
}

/// etcd's waitDeletes: until no key under `prefix` created at or before
/// `max_create_rev` remains.
async fn wait_predecessors(
    ctx: &ServerCtx,
    prefix: &[u8],
    max_create_rev: i64,
) -> Result<(), Status> {
    loop {
        let r = read(ctx, edge_range(prefix, true, max_create_rev)).await?;
        let Some(kv) = r.kvs.first() else {
            return Ok(());
        };
        let rev = r.header.as_ref().map_or(0, |h| h.revision);
        wait_deleted(ctx, &kv.key, rev).await?;
    }
}

/// Deletes a contender's key if its request is abandoned before it is
/// answered (the client went away), as etcd's recipes do.
struct Abandon<'a> {
    ctx: &'a ServerCtx,
    key: Option<Bytes>,
}

impl Drop for Abandon<'_> {
    fn drop(&mut self) {
        let Some(key) = self.key.take() else { return };
        let ctx = self.ctx.clone();
        glommio::spawn_local(async move {
            let req = pb::DeleteRangeRequest {
                key,
                ..Default::default()
            };
            let _ = kv::delete_range(&ctx, req, 0).await;
        })
        .detach();
    }
}

/// TTL of the lease a Lock or Campaign without one gets: the default of
/// the client session etcd's lock and election servers open per request.
const SESSION_TTL: i64 = 60;

/// `lease`, or for 0 a new lease of [`SESSION_TTL`] granted for this
/// request and not kept alive (etcd: a session with no lease grants one,
/// and the server orphans it), so that two callers never share a key and
/// the key does not outlive its caller by more than the TTL.
async fn own_lease(ctx: &ServerCtx, lease: i64) -> Result<i64, Status> {
    if lease != 0 {
        return Ok(lease);
    }
    let req = pb::LeaseGrantRequest {
        ttl: SESSION_TTL,
        id: 0,
    };
    Ok(super::lease::grant(ctx, req, 0).await.map_err(unknown)?.id)
}

pub async fn lock(ctx: &ServerCtx, req: lpb::LockRequest) -> Result<lpb::LockResponse, Status> {
    let prefix = prefix_of(&req.name);
    let lease = own_lease(ctx, req.lease).await?;
    let key = key_of(&prefix, lease);
    let mut abandon = Abandon { ctx, key: None };
    let (resp, my_rev, owner) = enter(ctx, &prefix, &key, Bytes::new(), lease).await?;
    abandon.key = Some(key.clone());
    if owner.is_none_or(|o| o.create_revision != my_rev) {
        wait_predecessors(ctx, &prefix, my_rev - 1).await?;
    }
    abandon.key = None;
    Ok(lpb::LockResponse {
        header: resp.header,
        key,
    })
}

pub async fn unlock(
    ctx: &ServerCtx,
    req: lpb::UnlockRequest,
) -> Result<lpb::UnlockResponse, Status> {
    let r = kv::delete_range(
        ctx,
        pb::DeleteRangeRequest {
            key: req.key,
            ..Default::default()
        },
        0,
    )
    .await
    .map_err(unknown)?;
    Ok(lpb::UnlockResponse { header: r.header })
}

pub async fn campaign(
    ctx: &ServerCtx,
    req: epb::CampaignRequest,
) -> Result<epb::CampaignResponse, Status> {
    let prefix = prefix_of(&req.name);
    let lease = own_lease(ctx, req.lease).await?;
    let key = key_of(&prefix, lease);
    let mut abandon = Abandon { ctx, key: None };
    let (resp, my_rev, _) = enter(ctx, &prefix, &key, req.value.clone(), lease).await?;
    abandon.key = Some(key.clone());
    let leader = epb::LeaderKey {
        name: req.name.clone(),
        key: key.clone(),
        rev: my_rev,
        lease,
    };
    if !resp.succeeded {
        // Campaigning again with the same lease: take over with the new value.
        let existing = resp
            .responses
            .first()
            .and_then(range_of)
            .and_then(|r| r.kvs.first());
        if existing.is_some_and(|kv| kv.value != req.value) {
            proclaim_value(ctx, &leader, req.value.clone()).await?;
        }
    }
    wait_predecessors(ctx, &prefix, my_rev - 1).await?;
    abandon.key = None;
    Ok(epb::CampaignResponse {
        header: resp.header,
        leader: Some(leader),
    })
}

async fn proclaim_value(
    ctx: &ServerCtx,
    leader: &epb::LeaderKey,
    value: Bytes,
) -> Result<pb::TxnResponse, Status> {
    let resp = txn(
        ctx,
        pb::TxnRequest {
            compare: vec![create_rev_is(&leader.key, leader.rev)],
            success: vec![op_put(&leader.key, value, leader.lease)],
            failure: vec![],
        },
    )
    .await?;
    if !resp.succeeded {
        return Err(not_leader());
    }
    Ok(resp)
}

pub async fn proclaim(
    ctx: &ServerCtx,
    req: epb::ProclaimRequest,
) -> Result<epb::ProclaimResponse, Status> {
    let leader = req.leader.ok_or_else(not_leader)?;
    let resp = proclaim_value(ctx, &leader, req.value).await?;
    Ok(epb::ProclaimResponse {
        header: resp.header,
    })
}

pub async fn resign(
    ctx: &ServerCtx,
    req: epb::ResignRequest,
) -> Result<epb::ResignResponse, Status> {
    let leader = req.leader.unwrap_or_default();
    let resp = txn(
        ctx,
        pb::TxnRequest {
            compare: vec![create_rev_is(&leader.key, leader.rev)],
            success: vec![op_delete(&leader.key)],
            failure: vec![],
        },
    )
    .await?;
    Ok(epb::ResignResponse {
        header: resp.header,
    })
}

pub async fn leader(
    ctx: &ServerCtx,
    req: epb::LeaderRequest,
) -> Result<epb::LeaderResponse, Status> {
    let r = read(ctx, edge_range(&prefix_of(&req.name), false, 0)).await?;
    let kv = r.kvs.into_iter().next().ok_or_else(no_leader)?;
    Ok(epb::LeaderResponse {
        header: r.header,
        kv: Some(kv),
    })
}

/// Observe: the current leader, then every change of leader or of its
/// proclaimed value, until the client goes away.
pub async fn observe(body: RequestBody, ctx: Rc<ServerCtx>, out: mpsc::Sender<StreamItem>) {
    let status = match observe_loop(body, &ctx, &out).await {
        Ok(()) => return,
        Err(s) => s,
    };
    let _ = out
        .send(StreamItem::End(crate::reactor::status_trailers(&status)))
        .await;
}

async fn observe_loop(
    body: RequestBody,
    ctx: &ServerCtx,
    out: &mpsc::Sender<StreamItem>,
) -> Result<(), Status> {
    let bytes = frame::read_unary(body, ctx.cfg.max_recv_bytes()).await?;
    let req = frame::decode::<epb::LeaderRequest>(bytes)?;
    let prefix = prefix_of(&req.name);
    let mut last: Option<(Bytes, i64)> = None;
    loop {
        let r = read(ctx, edge_range(&prefix, false, 0)).await?;
        let rev = r.header.as_ref().map_or(0, |h| h.revision);
        if let Some(kv) = r.kvs.first() {
            let seen = (kv.key.clone(), kv.mod_revision);
            if last.as_ref() != Some(&seen) {
                last = Some(seen);
                let resp = epb::LeaderResponse {
                    header: r.header,
                    kv: Some(kv.clone()),
                };
                if out
                    .send(StreamItem::Message(frame::encode(&resp)))
                    .await
                    .is_err()
                {
                    return Ok(());
                }
            }
        }
        // Wait for any change under the prefix after what was read.
        if wait_change(ctx, &prefix, rev, out).await? {
            return Ok(());
        }
    }
}

/// Waits for a change under `prefix` after `rev`; true if the client left.
async fn wait_change(
    ctx: &ServerCtx,
    prefix: &[u8],
    rev: i64,
    out: &mpsc::Sender<StreamItem>,
) -> Result<bool, Status> {
    let spec = WatchSpec {
        key: Bytes::copy_from_slice(prefix),
        range_end: prefix_end(prefix),
        start_rev: rev + 1,
        ..Default::default()
    };
    let mut watch = InternalWatch::open(ctx, spec).await?;
    futures_lite::future::or(async { watch.changed().await.map(|()| false) }, async {
        out.closed().await;
        Ok(true)
    })
    .await
}
