//! Maintenance, Cluster and Health answers: Status, Alarm, MemberList, and
//! gRPC health checks.

use keel_proto::command::{AlarmCmd, Command};
use keel_proto::etcdserverpb as pb;
use keel_proto::grpc_health_v1 as health;
use keel_storage::mvcc::CommandResponse;
use tokio::sync::oneshot;

use super::kv::propose;
use super::ServerCtx;
use crate::grpc::status::{Code, Status};
use crate::mvcc_actor::{alarm_name, MvccMsg, MvccStatus};
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

/// Asks the MVCC actor something and waits for its answer.
async fn ask_mvcc_for<T>(
    ctx: &ServerCtx,
    make: impl FnOnce(oneshot::Sender<T>) -> MvccMsg,
) -> Result<T, Status> {
    let (tx, rx) = oneshot::channel();
    ctx.mvcc
        .send(make(tx))
        .await
        .map_err(|_| Status::stopped())?;
    rx.await.map_err(|_| Status::stopped())
}

pub async fn ask_mvcc(ctx: &ServerCtx) -> Result<MvccStatus, Status> {
    ask_mvcc_for(ctx, |reply| MvccMsg::Status { reply }).await
}

pub fn header(ctx: &ServerCtx, raft: &RaftStatus, mvcc: &MvccStatus) -> Option<pb::ResponseHeader> {
    Some(pb::ResponseHeader {
        cluster_id: ctx.cfg.ids.cluster_id,
        member_id: ctx.cfg.ids.member_id,
        revision: mvcc.current_rev,
        raft_term: raft.term,
    })
}

/// etcd's HashKV (see `keel_storage::mvcc::hash`): equal on members with
/// the same history, and equal to etcd 3.4's for the same history.
pub async fn hash_kv(
    ctx: &ServerCtx,
    req: pb::HashKvRequest,
) -> Result<pb::HashKvResponse, Status> {
    ctx.check_admin()?;
    ask_mvcc_for(ctx, |reply| MvccMsg::HashKv {
        revision: req.revision,
        reply,
    })
    .await?
    .map_err(super::kv::read_error)
}

pub async fn status(
    ctx: &ServerCtx,
    _req: pb::StatusRequest,
) -> Result<pb::StatusResponse, Status> {
    let raft = ask_raft(ctx).await?;
    let mvcc = ask_mvcc(ctx).await?;
    let alarms = ask_alarms(ctx).await?;
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
        errors: raft
            .leader
            .is_none()
            .then(|| Status::no_leader().message)
            .into_iter()
            .chain(alarms.iter().map(|(id, a)| alarm_text(*id, *a)))
            .collect(),
        db_size_in_use: mvcc.size_bytes as i64,
        is_learner: raft.is_learner(),
        storage_version: String::new(),
        db_size_quota: ctx.cfg.quota_bytes.unwrap_or(0) as i64,
        downgrade_info: None,
    })
}

/// Alarm: GET lists the alarms raised (all, or those of one type);
/// ACTIVATE and DEACTIVATE go through raft, as etcd's do.
pub async fn alarm(ctx: &ServerCtx, req: pb::AlarmRequest) -> Result<pb::AlarmResponse, Status> {
    use pb::alarm_request::AlarmAction;
    let activate = match AlarmAction::try_from(req.action) {
        Ok(AlarmAction::Activate) => true,
        Ok(AlarmAction::Deactivate) => false,
        // GET, and (as etcd answers it) an action it does not know.
        action => {
            let raft = ask_raft(ctx).await?;
            let mvcc = ask_mvcc(ctx).await?;
            let alarms = if action == Ok(AlarmAction::Get) {
                ask_alarms(ctx)
                    .await?
                    .into_iter()
                    .filter(|(_, a)| req.alarm == pb::AlarmType::None as i32 || *a == req.alarm)
                    .map(|(member_id, alarm)| pb::AlarmMember { member_id, alarm })
                    .collect()
            } else {
                Vec::new()
            };
            return Ok(pb::AlarmResponse {
                header: header(ctx, &raft, &mvcc),
                alarms,
            });
        }
    };
    let cmd = Command::Alarm(AlarmCmd {
        activate,
        member_id: req.member_id,
        alarm: req.alarm,
    });
    match propose(ctx, cmd, 0).await? {
        CommandResponse::Alarm(r) => Ok(r),
        _ => Err(super::kv::mismatch()),
    }
}

/// The alarms raised: (member id, `pb::AlarmType` wire value).
pub async fn ask_alarms(ctx: &ServerCtx) -> Result<Vec<(u64, i32)>, Status> {
    ask_mvcc_for(ctx, |reply| MvccMsg::Alarms { reply }).await
}

/// An alarm as etcd's Status lists it among its errors.
fn alarm_text(member_id: u64, alarm: i32) -> String {
    format!("memberID:{member_id} alarm:{} ", alarm_name(alarm))
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
