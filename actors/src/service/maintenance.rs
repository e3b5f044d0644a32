//! Maintenance, Cluster and Health answers: Status, Alarm, MemberList, and
//! gRPC health checks.

use std::io;
use std::os::unix::fs::FileExt;
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};

use keel_proto::command::{AlarmCmd, Command};
use keel_proto::etcdserverpb as pb;
use keel_proto::grpc_health_v1 as health;
use keel_storage::etcd_db::{DbMember, DbMeta};
use keel_storage::mvcc::CommandResponse;
use sha2::{Digest, Sha256};
use tokio::sync::{mpsc, oneshot};

use super::kv::propose;
use super::ServerCtx;
use crate::grpc::body::StreamItem;
use crate::grpc::frame;
use crate::grpc::status::{Code, Status};
use crate::mvcc_actor::{alarm_name, MvccMsg, MvccStatus, SnapshotView};
use crate::raft::actor::{RaftRequest, RaftStatus};
use crate::raft::types::Node;

pub async fn ask_raft(ctx: &ServerCtx) -> Result<RaftStatus, Status> {
    ask_raft_for(ctx, |reply| RaftRequest::Status { reply }).await
}

/// Asks the raft actor something and waits for its answer.
async fn ask_raft_for<T>(
    ctx: &ServerCtx,
    make: impl FnOnce(oneshot::Sender<T>) -> RaftRequest,
) -> Result<T, Status> {
    ask(&ctx.raft, make).await
}

/// Sends an actor a request carrying a reply channel and waits for the
/// answer; a stopped actor is etcd's "server stopped".
async fn ask<M, T>(
    actor: &mpsc::Sender<M>,
    make: impl FnOnce(oneshot::Sender<T>) -> M,
) -> Result<T, Status> {
    let (tx, rx) = oneshot::channel();
    actor.send(make(tx)).await.map_err(|_| Status::stopped())?;
    rx.await.map_err(|_| Status::stopped())
}

/// Asks the MVCC actor something and waits for its answer.
async fn ask_mvcc_for<T>(
    ctx: &ServerCtx,
    make: impl FnOnce(oneshot::Sender<T>) -> MvccMsg,
) -> Result<T, Status> {
    ask(&ctx.mvcc, make).await
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

/// etcd's Maintenance.Hash: a CRC-32C over the backend database keel's
/// Snapshot would send (`keel_storage::etcd_db::hash`), leaving out the
/// applied index and the term; computed off the core.
pub async fn hash(ctx: &ServerCtx, _req: pb::HashRequest) -> Result<pb::HashResponse, Status> {
    ctx.check_admin()?;
    let view = ask_mvcc_for(ctx, |reply| MvccMsg::SnapshotView { reply }).await?;
    let raft = ask_raft(ctx).await?;
    let revision = view.image.current_rev;
    let meta = db_meta(&view, raft.term);
    let hash = glommio::executor()
        .spawn_blocking(move || keel_storage::etcd_db::hash(&view.image, &meta))
        .await;
    Ok(pb::HashResponse {
        header: Some(pb::ResponseHeader {
            cluster_id: ctx.cfg.ids.cluster_id,
            member_id: ctx.cfg.ids.member_id,
            revision,
            raft_term: raft.term,
        }),
        hash,
    })
}

/// etcd's Defragment rewrites its database file to give back the pages
/// compaction freed. keel keeps the store in memory and on disk as WAL
/// and snapshots, so what gives space back is the compaction finishing
/// its removal steps and a snapshot that lets the WAL release the
/// segments it covers: Defragment waits for both, then answers as etcd.
pub async fn defragment(
    ctx: &ServerCtx,
    _req: pb::DefragmentRequest,
) -> Result<pb::DefragmentResponse, Status> {
    ctx.check_admin()?;
    tracing::info!("starting defragment");
    ask_mvcc_for(ctx, |reply| MvccMsg::CompactionDone { reply }).await?;
    let done = ask_raft_for(ctx, |reply| RaftRequest::Snapshot { reply }).await?;
    if !done {
        return Err(Status::timeout());
    }
    tracing::info!("finished defragment");
    let raft = ask_raft(ctx).await?;
    let mvcc = ask_mvcc(ctx).await?;
    Ok(pb::DefragmentResponse {
        header: header(ctx, &raft, &mvcc),
    })
}

/// Snapshots being written or sent at once; past it a request is refused
/// (each holds a copy of the store on disk and a thread).
const SNAPSHOTS_MAX: usize = 4;
static SNAPSHOTS_RUNNING: AtomicUsize = AtomicUsize::new(0);

/// etcd's chunk size for Snapshot's blobs.
const SNAPSHOT_CHUNK_BYTES: usize = 32 * 1024;

/// Maintenance.Snapshot: the store at one applied index, as the etcd 3.4
/// backend database `etcdctl snapshot save` expects (`keel_storage::etcd_db`),
/// in 32 KiB blobs with the bytes remaining, then its SHA-256 as a last blob.
/// The picture is taken on the MVCC actor (shared chunks, no copy); the
/// database is written to an unlinked file in the snap directory and sent
/// from a thread of its own, so neither the cores nor writes wait for it.
pub async fn snapshot(ctx: Rc<ServerCtx>, out: mpsc::Sender<StreamItem>) {
    let started = async {
        let view = ask_mvcc_for(&ctx, |reply| MvccMsg::SnapshotView { reply }).await?;
        let raft = ask_raft(&ctx).await?;
        Ok::<_, Status>((view, raft.term))
    }
    .await;
    let (view, term) = match started {
        Ok(v) => v,
        Err(s) => {
            let _ = out
                .send(StreamItem::End(crate::reactor::status_trailers(&s)))
                .await;
            return;
        }
    };
    if SNAPSHOTS_RUNNING.fetch_add(1, Ordering::AcqRel) >= SNAPSHOTS_MAX {
        SNAPSHOTS_RUNNING.fetch_sub(1, Ordering::AcqRel);
        let s = Status::new(
            Code::ResourceExhausted,
            format!("keel: {SNAPSHOTS_MAX} snapshots are already being sent"),
        );
        let _ = out
            .send(StreamItem::End(crate::reactor::status_trailers(&s)))
            .await;
        return;
    }
    let dir = ctx.cfg.snap_dir.clone();
    let spawned = std::thread::Builder::new()
        .name("keel-snapshot".into())
        .spawn(move || {
            let status = send_snapshot(&dir, view, term, &out).unwrap_or_else(|e| {
                tracing::warn!("snapshot for a client failed: {e}");
                Status::new(Code::Internal, format!("keel: writing the snapshot: {e}"))
            });
            SNAPSHOTS_RUNNING.fetch_sub(1, Ordering::AcqRel);
            let _ = out.blocking_send(StreamItem::End(crate::reactor::status_trailers(&status)));
        });
    if let Err(e) = spawned {
        SNAPSHOTS_RUNNING.fetch_sub(1, Ordering::AcqRel);
        tracing::warn!("snapshot for a client: no thread: {e}");
    }
}

/// What etcd keeps in its backend beside the store, from the applied state.
fn db_meta(view: &SnapshotView, term: u64) -> DbMeta {
    let membership = view.app.membership.membership();
    let voters: Vec<u64> = membership.voter_ids().collect();
    DbMeta {
        consistent_index: view.app.applied.map_or(0, |l| l.index),
        term,
        members: membership
            .nodes()
            .map(|(id, node)| DbMember {
                id: *id,
                name: node.name.clone(),
                peer_urls: node.peer_urls.clone(),
                client_urls: node.client_urls.clone(),
                is_learner: !voters.contains(id),
            })
            .collect(),
        removed: view.app.removed.iter().copied().collect(),
        alarms: view.app.alarms.iter().copied().collect(),
    }
}

/// Writes the database and streams it; the status to end the stream with
/// (Ok, or Cancelled when the client went away).
fn send_snapshot(
    dir: &std::path::Path,
    view: SnapshotView,
    term: u64,
    out: &mpsc::Sender<StreamItem>,
) -> io::Result<Status> {
    let path = dir.join(format!(
        "client-snapshot-{}-{:x}.db.tmp",
        std::process::id(),
        rand::random::<u64>()
    ));
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&path)?;
    // Unlinked at once: nothing is left behind, whatever happens next.
    std::fs::remove_file(&path)?;
    let started = std::time::Instant::now();
    let meta = db_meta(&view, term);
    let (total, file) = keel_storage::etcd_db::write_db_to(file, &view.image, &meta)?;
    let rev = view.image.current_rev;
    drop(view);
    tracing::info!(
        total_bytes = total,
        revision = rev,
        took = ?started.elapsed(),
        "sending database snapshot to client"
    );
    let mut sha = Sha256::new();
    let mut buf = vec![0u8; SNAPSHOT_CHUNK_BYTES];
    let mut sent = 0u64;
    while sent < total {
        let n = (total - sent).min(SNAPSHOT_CHUNK_BYTES as u64) as usize;
        file.read_exact_at(&mut buf[..n], sent)?;
        sent += n as u64;
        sha.update(&buf[..n]);
        let resp = pb::SnapshotResponse {
            header: None,
            remaining_bytes: total - sent,
            blob: buf[..n].to_vec().into(),
            // etcd 3.5's field; 3.4 sends none.
            version: String::new(),
        };
        if out
            .blocking_send(StreamItem::Message(frame::encode(&resp)))
            .is_err()
        {
            return Ok(Status::new(Code::Cancelled, "context canceled"));
        }
    }
    let resp = pb::SnapshotResponse {
        header: None,
        remaining_bytes: 0,
        blob: sha.finalize().to_vec().into(),
        version: String::new(),
    };
    if out
        .blocking_send(StreamItem::Message(frame::encode(&resp)))
        .is_err()
    {
        return Ok(Status::new(Code::Cancelled, "context canceled"));
    }
    tracing::info!(total_bytes = total, "sent database snapshot to client");
    Ok(Status::new(Code::Ok, ""))
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

/// The Cluster service's header: etcd's carries no revision.
pub fn cluster_header(ctx: &ServerCtx, raft: &RaftStatus) -> Option<pb::ResponseHeader> {
    Some(pb::ResponseHeader {
        cluster_id: ctx.cfg.ids.cluster_id,
        member_id: ctx.cfg.ids.member_id,
        revision: 0,
        raft_term: raft.term,
    })
}

pub async fn member_list(
    ctx: &ServerCtx,
    _req: pb::MemberListRequest,
) -> Result<pb::MemberListResponse, Status> {
    let raft = ask_raft(ctx).await?;
    Ok(pb::MemberListResponse {
        header: cluster_header(ctx, &raft),
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
