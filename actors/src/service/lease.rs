//! The Lease service. Grant and Revoke are raft commands (every member
//! applies them); keep-alives and time-to-live questions go to the
//! leader's lease clock (forwarded by a follower); the lease list is this
//! member's applied state.

use std::rc::Rc;

use crate::grpc::body::RequestBody;
use keel_proto::command::{Command, LeaseGrantCmd, LeaseRevokeCmd};
use keel_proto::etcdserverpb as pb;
use keel_storage::mvcc::lease::MAX_LEASE_TTL;
use keel_storage::mvcc::CommandResponse;
use rand::Rng;
use tokio::sync::{mpsc, oneshot};

use super::kv::{check_space, mismatch, propose, with_timeout, LEASE_OVERHEAD};
use super::maintenance::{ask_mvcc, header};
use super::ServerCtx;
use crate::grpc::body::StreamItem;
use crate::grpc::frame::{self, MessageReader};
use crate::grpc::status::{Code, Status};
use crate::lease::LeaseError;
use crate::mvcc_actor::{LeaseMsg, LeaseTtl, MvccMsg};
use crate::raft::actor::{Origin, RaftRequest, RaftStatus};

fn lease_error(e: LeaseError) -> Status {
    match e {
        LeaseError::NotFound => Status::lease_not_found(),
        LeaseError::NotLeader => Status::no_leader(),
    }
}

/// A header for answers that are not raft commands.
async fn current_header(ctx: &ServerCtx) -> Result<Option<pb::ResponseHeader>, Status> {
    let mvcc = ask_mvcc(ctx).await?;
    let raft = RaftStatus {
        term: mvcc.raft_term,
        ..Default::default()
    };
    Ok(header(ctx, &raft, &mvcc))
}

pub async fn grant(
    ctx: &ServerCtx,
    req: pb::LeaseGrantRequest,
    len: usize,
) -> Result<pb::LeaseGrantResponse, Status> {
    check_space(ctx, LEASE_OVERHEAD).await?;
    if req.ttl > MAX_LEASE_TTL {
        return Err(Status::lease_ttl_too_large());
    }
    // The id is fixed before proposing, so every member applies the same.
    let id = if req.id != 0 {
        req.id
    } else {
        rand::thread_rng().gen_range(1..i64::MAX)
    };
    let ttl = req.ttl.max(ctx.cfg.min_lease_ttl);
    match propose(ctx, Command::LeaseGrant(LeaseGrantCmd { id, ttl }), len).await? {
        CommandResponse::LeaseGrant(r) => Ok(r),
        _ => Err(mismatch()),
    }
}

pub async fn revoke(
    ctx: &ServerCtx,
    req: pb::LeaseRevokeRequest,
    len: usize,
) -> Result<pb::LeaseRevokeResponse, Status> {
    let cmd = Command::LeaseRevoke(LeaseRevokeCmd { id: req.id });
    match propose(ctx, cmd, len).await? {
        CommandResponse::LeaseRevoke(r) => Ok(r),
        _ => Err(mismatch()),
    }
}

async fn ask_raft<T>(
    ctx: &ServerCtx,
    make: impl FnOnce(oneshot::Sender<Result<T, LeaseError>>) -> RaftRequest,
) -> Result<Result<T, LeaseError>, Status> {
    let (tx, rx) = oneshot::channel();
    ctx.raft
        .send(make(tx))
        .await
        .map_err(|_| Status::stopped())?;
    with_timeout(ctx.cfg.request_timeout, rx)
        .await?
        .map_err(|_| Status::stopped())
}

pub async fn time_to_live(
    ctx: &ServerCtx,
    req: pb::LeaseTimeToLiveRequest,
) -> Result<pb::LeaseTimeToLiveResponse, Status> {
    let answer = ask_raft(ctx, |reply| RaftRequest::LeaseTimeToLive {
        id: req.id,
        keys: req.keys,
        origin: Origin::Client,
        reply,
    })
    .await?;
    match answer {
        Ok(LeaseTtl {
            remaining,
            granted,
            keys,
        }) => {
            // With auth on, the keys are shown only to who may read them all.
            for k in &keys {
                ctx.auth.check_read(ctx.caller.as_ref(), k, b"")?;
            }
            Ok(pb::LeaseTimeToLiveResponse {
                header: current_header(ctx).await?,
                id: req.id,
                ttl: remaining,
                granted_ttl: granted,
                keys,
            })
        }
        // etcd answers an unknown lease with TTL -1.
        Err(LeaseError::NotFound) => Ok(pb::LeaseTimeToLiveResponse {
            header: current_header(ctx).await?,
            id: req.id,
            ttl: -1,
            ..Default::default()
        }),
        Err(e) => Err(lease_error(e)),
    }
}

pub async fn leases(
    ctx: &ServerCtx,
    _req: pb::LeaseLeasesRequest,
) -> Result<pb::LeaseLeasesResponse, Status> {
    let (tx, rx) = oneshot::channel();
    ctx.mvcc
        .send(MvccMsg::Lease(LeaseMsg::List { reply: tx }))
        .await
        .map_err(|_| Status::stopped())?;
    let ids = rx.await.map_err(|_| Status::stopped())?;
    Ok(pb::LeaseLeasesResponse {
        header: current_header(ctx).await?,
        leases: ids.into_iter().map(|id| pb::LeaseStatus { id }).collect(),
    })
}

/// One LeaseKeepAlive stream: a renewal per request, answered in order.
pub async fn keep_alive(body: RequestBody, ctx: Rc<ServerCtx>, out: mpsc::Sender<StreamItem>) {
    let mut reader = MessageReader::new(body, ctx.cfg.max_recv_bytes());
    let end = loop {
        let bytes = match reader.next().await {
            Ok(Some(b)) => b,
            Ok(None) => break None,
            Err(s) => break (s.code != Code::Internal).then_some(s),
        };
        let req = match frame::decode::<pb::LeaseKeepAliveRequest>(bytes) {
            Ok(r) => r,
            Err(s) => break Some(s),
        };
        let answer = match ask_raft(&ctx, |reply| RaftRequest::LeaseRenew {
            id: req.id,
            origin: Origin::Client,
            reply,
        })
        .await
        {
            Ok(a) => a,
            Err(s) => break Some(s),
        };
        let ttl = match answer {
            Ok(ttl) => ttl,
            // etcd answers an unknown (or expired) lease with TTL 0.
            Err(LeaseError::NotFound) => 0,
            Err(e) => break Some(lease_error(e)),
        };
        let header = match current_header(&ctx).await {
            Ok(h) => h,
            Err(s) => break Some(s),
        };
        let resp = pb::LeaseKeepAliveResponse {
            header,
            id: req.id,
            ttl,
        };
        if out
            .send(StreamItem::Message(frame::encode(&resp)))
            .await
            .is_err()
        {
            return;
        }
    };
    let status = end.unwrap_or_else(|| Status::new(Code::Ok, ""));
    let _ = out
        .send(StreamItem::End(crate::reactor::status_trailers(&status)))
        .await;
}
