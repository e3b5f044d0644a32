//! The raft actor: owns the `Raft` handle on the raft core and serves the
//! reactors of every core through one bounded inbox.
//!
//! * Proposals go straight into openraft; the reply travels with the
//!   proposal and is sent by openraft's responder once the entry is applied.
//! * Linearizable reads are batched: one read-index round is in flight at a
//!   time, and every read that arrived before a round started is served at
//!   that round's index (by the MVCC actor, once the index is applied).

use bytes::Bytes;
use keel_proto::etcdserverpb as pb;
use tokio::sync::{mpsc, oneshot};

use super::types::{NodeId, Proposal, Raft, ReplyTx};
use crate::metrics::metrics;
use crate::mvcc_actor::{MvccMsg, RangeReply, ReadError};

/// Reads served by one read-index round at most.
pub const READ_BATCH_MAX: usize = 4096;
/// Reads queued for the next read-index round.
pub const READ_QUEUE: usize = 16_384;

pub enum RaftRequest {
    Propose {
        command: Bytes,
        reply: ReplyTx,
    },
    LinearizableRange {
        req: pb::RangeRequest,
        reply: RangeReply,
    },
    Status {
        reply: oneshot::Sender<RaftStatus>,
    },
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RaftStatus {
    pub term: u64,
    pub leader: Option<NodeId>,
    pub last_log_index: u64,
    pub applied_index: u64,
}

pub fn status_of(raft: &Raft) -> RaftStatus {
    let m = raft.metrics().borrow().clone();
    RaftStatus {
        term: m.current_term,
        leader: m.current_leader,
        last_log_index: m.last_log_index.unwrap_or(0),
        applied_index: m.last_applied.map_or(0, |l| l.index),
    }
}

pub async fn run(raft: Raft, mvcc: mpsc::Sender<MvccMsg>, mut rx: mpsc::Receiver<RaftRequest>) {
    let (read_tx, read_rx) = mpsc::channel(READ_QUEUE);
    glommio::spawn_local(read_index_rounds(raft.clone(), mvcc, read_rx)).detach();
    glommio::spawn_local(watch_leadership(raft.clone())).detach();
    while let Some(req) = rx.recv().await {
        match req {
            RaftRequest::Propose { command, reply } => {
                // On failure openraft drops the proposal, and with it the
                // reply channel: the waiter sees the group stopped.
                if raft
                    .client_write_ff(Proposal::new(command, reply))
                    .await
                    .is_err()
                {
                    metrics().proposals_failed.inc();
                }
            }
            RaftRequest::LinearizableRange { req, reply } => {
                if let Err(e) = read_tx.send((req, reply)).await {
                    let (_, reply) = e.0;
                    let _ = reply.send(Err(ReadError::NoLeader));
                }
            }
            RaftRequest::Status { reply } => {
                let _ = reply.send(status_of(&raft));
            }
        }
    }
}

async fn read_index_rounds(
    raft: Raft,
    mvcc: mpsc::Sender<MvccMsg>,
    mut rx: mpsc::Receiver<(pb::RangeRequest, RangeReply)>,
) {
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        while batch.len() < READ_BATCH_MAX {
            match rx.try_recv() {
                Ok(r) => batch.push(r),
                Err(_) => break,
            }
        }
        match raft.get_read_log_id().await {
            Ok((read_log_id, _)) => {
                let min_applied = read_log_id.map_or(0, |l| l.index);
                for (req, reply) in batch {
                    if let Err(e) = mvcc
                        .send(MvccMsg::Range {
                            req,
                            min_applied,
                            reply,
                        })
                        .await
                    {
                        if let MvccMsg::Range { reply, .. } = e.0 {
                            let _ = reply.send(Err(ReadError::NoLeader));
                        }
                    }
                }
            }
            Err(_) => {
                for (_, reply) in batch {
                    let _ = reply.send(Err(ReadError::NoLeader));
                }
            }
        }
    }
}

/// Mirrors leadership into etcd's server gauges.
async fn watch_leadership(raft: Raft) {
    let mut rx = raft.metrics();
    let mut last_leader = None;
    loop {
        let (leader, me, log_index) = {
            let m = rx.borrow_and_update();
            (m.current_leader, m.id, m.last_log_index.unwrap_or(0))
        };
        let mx = metrics();
        mx.has_leader.set(i64::from(leader.is_some()));
        mx.is_leader.set(i64::from(leader == Some(me)));
        mx.proposals_committed.set(log_index as i64);
        if leader.is_some() && leader != last_leader {
            mx.leader_changes.inc();
        }
        last_leader = leader;
        if rx.changed().await.is_err() {
            return;
        }
    }
}
