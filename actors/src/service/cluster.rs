//! The Cluster service's changes (MemberAdd, MemberRemove, MemberUpdate,
//! MemberPromote) and Maintenance.MoveLeader: checked here, run by the
//! leader (see `raft::members`), answered with the membership this member
//! has applied once the change reached it.

use keel_proto::etcdserverpb as pb;
use tokio::sync::oneshot;

use super::maintenance::{ask_mvcc, ask_raft, cluster_header, header, member_of, members_of};
use super::ServerCtx;
use crate::grpc::status::{Code, Status};
use crate::mvcc_actor::MvccMsg;
use crate::peer::wire::{node_to_wire, MemberChange};
use crate::raft::actor::{Origin, RaftRequest, RaftStatus};
use crate::raft::types::Node;

fn bad_urls() -> Status {
    Status::new(
        Code::InvalidArgument,
        "etcdserver: given member URLs are invalid",
    )
}

/// etcd accepts only absolute http(s) URLs with a host and port.
fn check_urls(urls: &[String]) -> Result<(), Status> {
    if urls.is_empty() {
        return Err(bad_urls());
    }
    for u in urls {
        let Some(rest) = u.strip_prefix("http://").or(u.strip_prefix("https://")) else {
            return Err(bad_urls());
        };
        let hostport = rest.trim_end_matches('/');
        match hostport.rsplit_once(':') {
            Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => {}
            _ => return Err(bad_urls()),
        }
    }
    Ok(())
}

/// A fresh member id for `urls` (etcd mixes in the time the same way).
fn new_member_id(ctx: &ServerCtx, urls: &[String]) -> u64 {
    let mut sorted = urls.to_vec();
    sorted.sort();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    crate::node::fnv64(&[
        sorted.join(",").as_bytes(),
        &ctx.cfg.ids.cluster_id.to_le_bytes(),
        &now.to_le_bytes(),
    ])
    .max(1)
}

/// A membership change as the Cluster calls answer it: proposed, applied
/// on this member, then the response header and the membership after it.
struct Changed {
    header: Option<pb::ResponseHeader>,
    members: Vec<pb::Member>,
}

async fn change(ctx: &ServerCtx, change: MemberChange) -> Result<Changed, Status> {
    let (tx, rx) = oneshot::channel();
    ctx.raft
        .send(RaftRequest::ChangeMembers {
            change,
            origin: Origin::Client,
            reply: tx,
        })
        .await
        .map_err(|_| Status::stopped())?;
    super::kv::with_timeout(ctx.cfg.request_timeout, rx)
        .await?
        .map_err(|_| Status::stopped())?
        .map_err(|e| e.into_status())?;
    // The change is committed. Listing the membership after it needs this
    // member to have applied it: wait for that through a read index, but
    // not past an election timeout, since a leader that just removed itself
    // has no quorum to confirm one (it applied the change already) and
    // stops soon after.
    let election_timeout = ctx.cfg.election_timeout;
    let raft =
        match glommio::timer::timeout(election_timeout, async { Ok(caught_up(ctx).await) }).await {
            Ok(Ok(raft)) => raft,
            _ => ask_raft(ctx).await?,
        };
    Ok(Changed {
        header: cluster_header(ctx, &raft),
        members: members_of(&raft),
    })
}

/// Waits until this member has applied everything committed so far, then
/// returns its raft view (so a response lists the membership just changed).
pub async fn caught_up(ctx: &ServerCtx) -> Result<RaftStatus, Status> {
    let (tx, rx) = oneshot::channel();
    ctx.raft
        .send(RaftRequest::ReadIndex {
            origin: Origin::Client,
            reply: tx,
        })
        .await
        .map_err(|_| Status::stopped())?;
    let index = super::kv::with_timeout(ctx.cfg.request_timeout, rx)
        .await?
        .map_err(|_| Status::stopped())?
        .map_err(|_| Status::no_leader())?;
    let (tx, rx) = oneshot::channel();
    ctx.mvcc
        .send(MvccMsg::WaitApplied { index, reply: tx })
        .await
        .map_err(|_| Status::stopped())?;
    super::kv::with_timeout(ctx.cfg.request_timeout, rx)
        .await?
        .map_err(|_| Status::stopped())?;
    ask_raft(ctx).await
}

async fn header_now(
    ctx: &ServerCtx,
    raft: &RaftStatus,
) -> Result<Option<pb::ResponseHeader>, Status> {
    let mvcc = ask_mvcc(ctx).await?;
    Ok(header(ctx, raft, &mvcc))
}

pub async fn member_add(
    ctx: &ServerCtx,
    req: pb::MemberAddRequest,
) -> Result<pb::MemberAddResponse, Status> {
    ctx.check_admin()?;
    check_urls(&req.peer_ur_ls)?;
    let id = new_member_id(ctx, &req.peer_ur_ls);
    let added = Node {
        name: String::new(),
        peer_urls: req.peer_ur_ls,
        client_urls: Vec::new(),
    };
    let node = node_to_wire(&added);
    let learner = req.is_learner;
    let done = change(ctx, MemberChange::Add { id, node, learner }).await?;
    Ok(pb::MemberAddResponse {
        header: done.header,
        member: Some(member_of(id, &added, learner)),
        members: done.members,
    })
}

pub async fn member_remove(
    ctx: &ServerCtx,
    req: pb::MemberRemoveRequest,
) -> Result<pb::MemberRemoveResponse, Status> {
    ctx.check_admin()?;
    let done = change(ctx, MemberChange::Remove { id: req.id }).await?;
    Ok(pb::MemberRemoveResponse {
        header: done.header,
        members: done.members,
    })
}

pub async fn member_update(
    ctx: &ServerCtx,
    req: pb::MemberUpdateRequest,
) -> Result<pb::MemberUpdateResponse, Status> {
    ctx.check_admin()?;
    check_urls(&req.peer_ur_ls)?;
    let (id, peer_urls) = (req.id, req.peer_ur_ls);
    let done = change(ctx, MemberChange::UpdatePeers { id, peer_urls }).await?;
    Ok(pb::MemberUpdateResponse {
        header: done.header,
        members: done.members,
    })
}

pub async fn member_promote(
    ctx: &ServerCtx,
    req: pb::MemberPromoteRequest,
) -> Result<pb::MemberPromoteResponse, Status> {
    ctx.check_admin()?;
    let done = change(ctx, MemberChange::Promote { id: req.id }).await?;
    Ok(pb::MemberPromoteResponse {
        header: done.header,
        members: done.members,
    })
}

/// Maintenance.MoveLeader: sent to the leader, as etcd requires.
pub async fn move_leader(
    ctx: &ServerCtx,
    req: pb::MoveLeaderRequest,
) -> Result<pb::MoveLeaderResponse, Status> {
    let (tx, rx) = oneshot::channel();
    ctx.raft
        .send(RaftRequest::MoveLeader {
            target: req.target_id,
            reply: tx,
        })
        .await
        .map_err(|_| Status::stopped())?;
    super::kv::with_timeout(ctx.cfg.request_timeout, rx)
        .await?
        .map_err(|_| Status::stopped())?
        .map_err(|e| e.into_status())?;
    let raft = ask_raft(ctx).await?;
    Ok(pb::MoveLeaderResponse {
        header: header_now(ctx, &raft).await?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn member_urls() {
        let ok = |u: &str| check_urls(&[u.to_string()]).is_ok();
        assert!(ok("http://127.0.0.1:2380"));
        assert!(ok("http://node-a:2380/"));
        assert!(!ok("127.0.0.1:2380"));
        assert!(!ok("http://127.0.0.1"));
        assert!(!ok("http://:2380"));
        assert!(check_urls(&[]).is_err());
    }
}
