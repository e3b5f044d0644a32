//! The accepting side of the peer transport, on the raft core.
//!
//! Each connection is greeted (cluster and member ids checked), then serves
//! one request at a time: raft RPCs go straight to openraft, forwarded
//! client commands and read-index requests to the raft actor, membership
//! changes to [`crate::raft::members`].

use std::path::PathBuf;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use futures_lite::AsyncWriteExt;
use glommio::io::{BufferedFile, StreamWriterBuilder};
use glommio::net::{TcpListener, TcpStream};
use keel_proto::command::Command;
use keel_storage::mvcc::snapshot::incoming_snapshot_path;
use openraft::raft::{AppendEntriesRequest, VoteRequest};
use openraft::storage::Snapshot;
use tokio::sync::{mpsc, oneshot};

use super::conn::{
    decode_hello, read_frame, read_frame_within, response_frame, GREETING_MAX, HEADER_BYTES,
};
use super::stream::PeerStream;
use super::wire::{
    append_to_wire, entry_from_archived, log_id_from_wire, log_id_to_wire, outcome_to_wire,
    vote_from_wire, vote_to_wire, ArchivedPeerRequest, MemberChange, PeerResponse, WireOutcome,
};
use crate::lease::LeaseError;
use crate::metrics::metrics;
use crate::mvcc_actor::MvccMsg;
use crate::raft::actor::{Origin, RaftRequest};
use crate::raft::codec::{decode_snapshot_meta, encode_membership};
use crate::raft::log_store::aligned_bytes;
use crate::raft::types::{NodeId, ProposeError, Raft, SnapshotFile, SnapshotMeta};
use crate::raft::QuietStart;
use crate::tls::ServerTls;

pub struct PeerCtx {
    pub raft: Raft,
    pub me: NodeId,
    pub cluster_id: u64,
    pub raft_tx: mpsc::Sender<RaftRequest>,
    pub mvcc: mpsc::Sender<MvccMsg>,
    pub snap_dir: PathBuf,
    pub quiet_start: QuietStart,
}

/// What a removed member is told (etcd's words); it stops on hearing it.
pub const REMOVED: &str = "the member has been permanently removed from the cluster";

async fn is_removed(ctx: &PeerCtx, id: NodeId) -> bool {
    let (tx, rx) = oneshot::channel();
    let ask = MvccMsg::IsRemoved { id, reply: tx };
    ctx.mvcc.send(ask).await.is_ok() && rx.await.unwrap_or(false)
}

/// A peer has this long to finish its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// Serves peer connections (over TLS when `tls` is given) until the
/// process ends.
pub async fn serve(listener: TcpListener, tls: Option<Arc<ServerTls>>, ctx: Rc<PeerCtx>) {
    loop {
        match listener.accept().await {
            Ok(stream) => {
                let (ctx, tls) = (ctx.clone(), tls.clone());
                glommio::spawn_local(async move {
                    let stream = match secure(stream, tls).await {
                        Ok(s) => s,
                        Err(e) => return tracing::debug!("peer TLS handshake failed: {e}"),
                    };
                    if let Err(e) = serve_connection(stream, &ctx).await {
                        tracing::debug!("peer connection ended: {e}");
                    }
                })
                .detach();
            }
            Err(e) => {
                tracing::warn!("peer accept failed: {e}");
                glommio::timer::sleep(std::time::Duration::from_millis(10)).await;
            }
        }
    }
}

/// Socket options, then the TLS handshake when the listener has TLS.
async fn secure(stream: TcpStream, tls: Option<Arc<ServerTls>>) -> std::io::Result<PeerStream> {
    let _ = stream.set_nodelay(true);
    crate::tcp::keep_alive(&stream, crate::tcp::PEER);
    let Some(tls) = tls else {
        return Ok(PeerStream::Plain(stream.buffered()));
    };
    let acceptor = futures_rustls::TlsAcceptor::from(tls.config());
    let accepted = glommio::timer::timeout(HANDSHAKE_TIMEOUT, async {
        Ok(acceptor.accept(stream).await)
    })
    .await
    .map_err(|_| std::io::Error::other("TLS handshake timed out"))??;
    Ok(PeerStream::Tls(Box::new(accepted.into())))
}

async fn reply(stream: &mut PeerStream, label: &str, resp: &PeerResponse) -> std::io::Result<()> {
    let frame = response_frame(resp);
    stream.write_all(&frame).await?;
    stream.flush().await?;
    metrics()
        .peer_sent_bytes
        .with_label_values(&[label])
        .inc_by(frame.len() as u64);
    Ok(())
}

fn invalid(e: impl std::fmt::Display) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, e.to_string())
}

async fn serve_connection(mut stream: PeerStream, ctx: &PeerCtx) -> std::io::Result<()> {
    let hello = read_frame_within(&mut stream, GREETING_MAX).await?;
    let (cluster_id, from, to) =
        decode_hello(&hello).ok_or_else(|| invalid("peer connection did not start with Hello"))?;
    let label = format!("{from:x}");
    // cluster id 0: a member joining an existing cluster, asking who is in it.
    let membership_only = cluster_id == 0;
    let refusal = if !membership_only && cluster_id != ctx.cluster_id {
        Some(format!(
            "cluster ID mismatch: member {:x} belongs to cluster {:x}, the caller {from:x} to cluster {cluster_id:x} (check --initial-cluster and --initial-cluster-token)",
            ctx.me, ctx.cluster_id
        ))
    } else if !membership_only && to != ctx.me {
        Some(format!(
            "member ID mismatch: this is member {:x}, the caller expected {to:x}",
            ctx.me
        ))
    } else if !membership_only && is_removed(ctx, from).await {
        Some(REMOVED.to_string())
    } else {
        None
    };
    if let Some(reason) = refusal {
        tracing::warn!(from = format!("{from:x}"), "refused a peer: {reason}");
        return reply(&mut stream, &label, &PeerResponse::Rejected { reason }).await;
    }
    reply(
        &mut stream,
        &label,
        &PeerResponse::Hello {
            cluster_id: ctx.cluster_id,
        },
    )
    .await?;
    loop {
        let body = read_frame(&mut stream).await?;
        metrics()
            .peer_received_bytes
            .with_label_values(&[&label])
            .inc_by((body.len() + HEADER_BYTES) as u64);
        let req =
            rkyv::access::<ArchivedPeerRequest, rkyv::rancor::Error>(&body).map_err(invalid)?;
        if membership_only && !matches!(req, ArchivedPeerRequest::Members) {
            return Err(invalid("only Members may be asked before joining"));
        }
        // A removed member campaigns once the leader stops talking to it,
        // on connections made before its removal: tell it at its first vote.
        if matches!(req, ArchivedPeerRequest::Vote { .. }) && is_removed(ctx, from).await {
            let reason = REMOVED.to_string();
            return reply(&mut stream, &label, &PeerResponse::Rejected { reason }).await;
        }
        let resp = match req {
            ArchivedPeerRequest::SnapshotBegin {
                vote,
                snapshot_id,
                meta,
                size,
            } => {
                receive_snapshot(
                    &mut stream,
                    ctx,
                    &label,
                    vote_from_wire(
                        &rkyv::deserialize::<_, rkyv::rancor::Error>(vote).map_err(invalid)?,
                    ),
                    snapshot_id.as_str(),
                    meta,
                    size.to_native(),
                )
                .await?
            }
            other => handle(other, ctx).await.map_err(invalid)?,
        };
        reply(&mut stream, &label, &resp).await?;
    }
}

async fn handle(req: &ArchivedPeerRequest, ctx: &PeerCtx) -> Result<PeerResponse, String> {
    let de = |e: rkyv::rancor::Error| e.to_string();
    Ok(match req {
        ArchivedPeerRequest::AppendEntries {
            vote,
            prev_log_id,
            leader_commit,
            entries,
        } => {
            let rpc = AppendEntriesRequest {
                vote: vote_from_wire(
                    &rkyv::deserialize::<_, rkyv::rancor::Error>(vote).map_err(de)?,
                ),
                prev_log_id: rkyv::deserialize::<_, rkyv::rancor::Error>(prev_log_id)
                    .map_err(de)?
                    .as_ref()
                    .map(log_id_from_wire),
                leader_commit: rkyv::deserialize::<_, rkyv::rancor::Error>(leader_commit)
                    .map_err(de)?
                    .as_ref()
                    .map(log_id_from_wire),
                entries: entries
                    .iter()
                    .map(entry_from_archived)
                    .collect::<Result<_, _>>()?,
            };
            match ctx.raft.append_entries(rpc).await {
                Ok(r) => PeerResponse::AppendEntries(append_to_wire(&r)),
                Err(e) => PeerResponse::Failed {
                    reason: e.to_string(),
                },
            }
        }
        ArchivedPeerRequest::Vote { vote, last_log_id } => {
            let rpc = VoteRequest {
                vote: vote_from_wire(
                    &rkyv::deserialize::<_, rkyv::rancor::Error>(vote).map_err(de)?,
                ),
                last_log_id: rkyv::deserialize::<_, rkyv::rancor::Error>(last_log_id)
                    .map_err(de)?
                    .as_ref()
                    .map(log_id_from_wire),
            };
            ctx.quiet_start.on_vote_request(rpc.vote.leader_id.term);
            match ctx.raft.vote(rpc).await {
                Ok(r) => PeerResponse::Vote {
                    vote: vote_to_wire(&r.vote),
                    granted: r.vote_granted,
                    last_log_id: r.last_log_id.as_ref().map(log_id_to_wire),
                },
                Err(e) => PeerResponse::Failed {
                    reason: e.to_string(),
                },
            }
        }
        ArchivedPeerRequest::Forward { commands } => forward(ctx, commands).await,
        ArchivedPeerRequest::ReadIndex => {
            let (tx, rx) = oneshot::channel();
            let sent = ctx
                .raft_tx
                .send(RaftRequest::ReadIndex {
                    origin: Origin::Peer,
                    reply: tx,
                })
                .await;
            match (sent, rx.await) {
                (Ok(()), Ok(Ok(index))) => PeerResponse::ReadIndex { index },
                _ => not_leader(ctx),
            }
        }
        ArchivedPeerRequest::Members => {
            let m = ctx.raft.metrics().borrow().clone();
            let mut membership = Vec::new();
            encode_membership(m.membership_config.membership(), &mut membership);
            PeerResponse::Members {
                cluster_id: ctx.cluster_id,
                leader: m.current_leader,
                membership,
            }
        }
        ArchivedPeerRequest::ChangeMembers(change) => {
            let change: MemberChange =
                rkyv::deserialize::<_, rkyv::rancor::Error>(change).map_err(de)?;
            let (tx, rx) = oneshot::channel();
            let sent = ctx
                .raft_tx
                .send(RaftRequest::ChangeMembers {
                    change,
                    origin: Origin::Peer,
                    reply: tx,
                })
                .await;
            match (sent, rx.await) {
                (Ok(()), Ok(Ok(()))) => PeerResponse::Members {
                    cluster_id: ctx.cluster_id,
                    leader: Some(ctx.me),
                    membership: Vec::new(),
                },
                (Ok(()), Ok(Err(e))) => e.into_wire(),
                _ => not_leader(ctx),
            }
        }
        ArchivedPeerRequest::LeaseRenew { id } => {
            let id = id.to_native();
            lease_clock(
                ctx,
                |reply| RaftRequest::LeaseRenew {
                    id,
                    origin: Origin::Peer,
                    reply,
                },
                |ttl| PeerResponse::LeaseRenewed { ttl },
            )
            .await
        }
        ArchivedPeerRequest::LeaseTimeToLive { id, keys } => {
            let (id, keys) = (id.to_native(), *keys);
            lease_clock(
                ctx,
                |reply| RaftRequest::LeaseTimeToLive {
                    id,
                    keys,
                    origin: Origin::Peer,
                    reply,
                },
                |t| PeerResponse::LeaseTimeToLive {
                    remaining: t.remaining,
                    granted: t.granted,
                    keys: t.keys.iter().map(|k| k.to_vec()).collect(),
                },
            )
            .await
        }
        ArchivedPeerRequest::HashKv { revision } => {
            let (reply, answer) = oneshot::channel();
            let revision = revision.to_native();
            let asked = ctx.mvcc.send(MvccMsg::HashKv { revision, reply }).await;
            match (asked, answer.await) {
                (Ok(()), Ok(Ok(resp))) => PeerResponse::HashKv {
                    revision: resp.header.map_or(0, |h| h.revision),
                    compact_revision: resp.compact_revision,
                    hash: resp.hash,
                },
                (Ok(()), Ok(Err(e))) => PeerResponse::Failed {
                    reason: crate::service::kv::read_error(e).message,
                },
                _ => PeerResponse::Failed {
                    reason: "the MVCC actor stopped".into(),
                },
            }
        }
        ArchivedPeerRequest::TimeoutNow => {
            tracing::info!("the leader hands over leadership: campaigning");
            match ctx.raft.trigger().elect().await {
                Ok(()) => PeerResponse::Done,
                Err(e) => PeerResponse::Failed {
                    reason: e.to_string(),
                },
            }
        }
        ArchivedPeerRequest::Hello { .. }
        | ArchivedPeerRequest::SnapshotBegin { .. }
        | ArchivedPeerRequest::SnapshotChunk { .. } => return Err("unexpected peer request".into()),
    })
}

/// A follower's lease question, answered by this member's lease clock if
/// it still leads.
async fn lease_clock<T>(
    ctx: &PeerCtx,
    make: impl FnOnce(oneshot::Sender<Result<T, LeaseError>>) -> RaftRequest,
    ok: impl FnOnce(T) -> PeerResponse,
) -> PeerResponse {
    let (tx, rx) = oneshot::channel();
    if ctx.raft_tx.send(make(tx)).await.is_err() {
        return not_leader(ctx);
    }
    match rx.await {
        Ok(Ok(t)) => ok(t),
        Ok(Err(LeaseError::NotFound)) => PeerResponse::LeaseNotFound,
        _ => not_leader(ctx),
    }
}

fn not_leader(ctx: &PeerCtx) -> PeerResponse {
    PeerResponse::NotLeader {
        leader: ctx.raft.metrics().borrow().current_leader,
    }
}

/// Proposes a follower's commands here (they join this leader's batches)
/// and answers with each one's outcome and log index.
async fn forward(
    ctx: &PeerCtx,
    commands: &rkyv::vec::ArchivedVec<rkyv::vec::ArchivedVec<u8>>,
) -> PeerResponse {
    let mut waiting = Vec::with_capacity(commands.len());
    for c in commands.iter() {
        let command = aligned_bytes(c);
        // What this leader proposes, every member applies: never let
        // bytes that do not decode into the log.
        if Command::access(&command).is_err() {
            waiting.push(None);
            continue;
        }
        let (tx, rx) = oneshot::channel();
        if ctx
            .raft_tx
            .send(RaftRequest::Propose {
                command,
                origin: Origin::Peer,
                reply: tx,
            })
            .await
            .is_err()
        {
            waiting.push(None);
            continue;
        }
        waiting.push(Some(rx));
    }
    let mut outcomes = Vec::with_capacity(waiting.len());
    for w in waiting {
        let outcome = match w {
            None => WireOutcome::Stopped,
            Some(rx) => match rx.await {
                Ok(Ok(applied)) => outcome_to_wire(applied.index, &applied.outcome),
                Ok(Err(ProposeError::NotLeader { .. })) => WireOutcome::NotLeader,
                Ok(Err(_)) | Err(_) => WireOutcome::Stopped,
            },
        };
        outcomes.push(outcome);
    }
    PeerResponse::Forwarded { outcomes }
}

/// Writes the `size` bytes of a snapshot's chunks to a new file at `path`
/// and syncs it.
async fn receive_snapshot_file(
    stream: &mut PeerStream,
    path: &std::path::Path,
    label: &str,
    size: u64,
) -> std::io::Result<()> {
    let file = BufferedFile::create(path).await?;
    let mut writer = StreamWriterBuilder::new(file).build();
    let mut received = 0u64;
    while received < size {
        let body = read_frame(stream).await?;
        metrics()
            .peer_received_bytes
            .with_label_values(&[label])
            .inc_by((body.len() + HEADER_BYTES) as u64);
        let req =
            rkyv::access::<ArchivedPeerRequest, rkyv::rancor::Error>(&body).map_err(invalid)?;
        let ArchivedPeerRequest::SnapshotChunk { data } = req else {
            return Err(invalid("expected a snapshot chunk"));
        };
        received += data.len() as u64;
        if received > size {
            return Err(invalid("snapshot longer than announced"));
        }
        writer.write_all(data).await?;
    }
    // Closing syncs the file: it must be durable before raft relies on it.
    writer.close().await
}

/// Reads a snapshot's chunks into a file of its own, then hands it to
/// openraft.
async fn receive_snapshot(
    stream: &mut PeerStream,
    ctx: &PeerCtx,
    label: &str,
    vote: crate::raft::types::Vote,
    snapshot_id: &str,
    meta: &rkyv::vec::ArchivedVec<u8>,
    size: u64,
) -> std::io::Result<PeerResponse> {
    let (last_log_id, last_membership) = decode_snapshot_meta(meta).map_err(invalid)?;
    let meta = SnapshotMeta {
        last_log_id,
        last_membership,
        snapshot_id: snapshot_id.to_string(),
    };
    std::fs::create_dir_all(&ctx.snap_dir)?;
    let path = incoming_snapshot_path(&ctx.snap_dir);
    if let Err(e) = receive_snapshot_file(stream, &path, label, size).await {
        let _ = std::fs::remove_file(&path);
        return Err(e);
    }
    let index = meta.last_log_id.map_or(0, |l| l.index);
    tracing::info!(size, index, "received a snapshot from the leader");
    let result = ctx
        .raft
        .install_full_snapshot(
            vote,
            Snapshot {
                meta,
                snapshot: Box::new(SnapshotFile { path: path.clone() }),
            },
        )
        .await;
    // Installed snapshots were renamed; an outdated one is dropped here.
    let _ = std::fs::remove_file(&path);
    Ok(match result {
        Ok(r) => PeerResponse::Snapshot {
            vote: vote_to_wire(&r.vote),
        },
        Err(e) => PeerResponse::Failed {
            reason: e.to_string(),
        },
    })
}
