//! Maintenance, Cluster and Health answers available on a single member:
//! Status, Alarm (list), MemberList, and gRPC health checks.

use keel_proto::etcdserverpb as pb;
use keel_proto::grpc_health_v1 as health;
use tokio::sync::oneshot;

use super::ServerCtx;
use crate::grpc::status::{Code, Status};
use crate::mvcc_actor::{MvccMsg, MvccStatus};
use crate::raft::actor::{RaftRequest, RaftStatus};
use crate::raft::types::Node;

pub async fn ask_raft(ctx: &ServerCtx) -> Result<RaftStatus, Status> {
    let (tx, rx) = oneshot::channel();
    ctx.raft
        .send(RaftRequest::Status { reply: tx })
        .await
        .map_err(|_| Status::stopped())?;
    rx.await.map_err(|_| Status::stopped())
}

pub async fn ask_mvcc(ctx: &ServerCtx) -> Result<MvccStatus, Status> {
    let (tx, rx) = oneshot::channel();
    ctx.mvcc
        .send(MvccMsg::Status { reply: tx })
        .await
        .map_err(|_| Status::stopped())?;
    rx.await.map_err(|_| Status::stopped())
}

pub fn header(ctx: &ServerCtx, raft: &RaftStatus, mvcc: &MvccStatus) -> Option<pb::ResponseHeader> {
    Some(pb::ResponseHeader {
        cluster_id: ctx.cfg.ids.cluster_id,
        member_id: ctx.cfg.ids.member_id,
        revision: mvcc.current_rev,
        raft_term: raft.term,
    })
}

pub async fn status(
    ctx: &ServerCtx,
    _req: pb::StatusRequest,
) -> Result<pb::StatusResponse, Status> {
    let raft = ask_raft(ctx).await?;
    let mvcc = ask_mvcc(ctx).await?;
    Ok(pb::StatusResponse {
        header: header(ctx, &raft, &mvcc),
        version: crate::API_VERSION.to_string(),
        db_size: mvcc.size_bytes as i64,
        leader: raft.leader.unwrap_or(0),
        raft_index: raft.last_log_index,
        raft_term: raft.term,
        raft_applied_index: raft.applied_index,
        // As etcd: a member without a leader says so (a leader cut off
        // from its quorum has none, see RaftHandles::leader).
        errors: if raft.leader.is_none() {
            vec![Status::no_leader().message]
        } else {
            Vec::new()
        },
        db_size_in_use: mvcc.size_bytes as i64,
        is_learner: raft.is_learner(),
        storage_version: String::new(),
        db_size_quota: 0,
        downgrade_info: None,
    })
}

pub async fn alarm(ctx: &ServerCtx, req: pb::AlarmRequest) -> Result<pb::AlarmResponse, Status> {
    if req.action != pb::alarm_request::AlarmAction::Get as i32 {
        return Err(Status::new(
            Code::Unimplemented,
            "keel: raising and clearing alarms is not implemented yet",
        ));
    }
    let raft = ask_raft(ctx).await?;
    let mvcc = ask_mvcc(ctx).await?;
    // keel raises no alarms yet (no space quota, no corruption checker).
    Ok(pb::AlarmResponse {
        header: header(ctx, &raft, &mvcc),
        alarms: Vec::new(),
    })
}

/// etcd's view of one member.
pub fn member_of(id: u64, node: &Node, learner: bool) -> pb::Member {
    pb::Member {
        id,
        name: node.name.clone(),
        peer_ur_ls: node.peer_urls.clone(),
        client_ur_ls: node.client_urls.clone(),
        is_learner: learner,
    }
}

/// Every member of the membership this member has applied, voters and learners.
pub fn members_of(raft: &RaftStatus) -> Vec<pb::Member> {
    let voters: Vec<u64> = raft.membership.voter_ids().collect();
    raft.membership
        .nodes()
        .map(|(id, node)| member_of(*id, node, !voters.contains(id)))
        .collect()
}

pub async fn member_list(
    ctx: &ServerCtx,
    _req: pb::MemberListRequest,
) -> Result<pb::MemberListResponse, Status> {
    let raft = ask_raft(ctx).await?;
    let mvcc = ask_mvcc(ctx).await?;
    Ok(pb::MemberListResponse {
        header: header(ctx, &raft, &mvcc),
        members: members_of(&raft),
    })
}

pub async fn health_check(
    ctx: &ServerCtx,
    req: health::HealthCheckRequest,
) -> Result<health::HealthCheckResponse, Status> {
    use health::health_check_response::ServingStatus;
    if !req.service.is_empty() {
        return Err(Status::new(Code::NotFound, "unknown service"));
    }
    let raft = ask_raft(ctx).await?;
    let status = if raft.leader.is_some() {
        ServingStatus::Serving
    } else {
        ServingStatus::NotServing
    };
    Ok(health::HealthCheckResponse {
        status: status as i32,
    })
}
