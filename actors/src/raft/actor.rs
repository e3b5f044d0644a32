//! The raft actor: owns the `Raft` handle on the raft core and serves the
//! reactors of every core through one bounded inbox.
//!
//! * Proposals are batched: at most [`BATCHES_IN_FLIGHT_MAX`] raft entries
//!   are between proposal and apply; proposals arriving meanwhile wait here
//!   and go out together as the next entry (a `keel_proto::batch`). openraft
//!   0.9 waits for each append's flush before the next, so this is where
//!   group commit happens. A lone client's proposal goes out at once. Replies
//!   travel with the entry and are sent by openraft's responder after apply.
//! * Linearizable reads are batched: one read-index round is in flight at a
//!   time, and every read that arrived before a round started is served at
//!   that round's index (by the MVCC actor, once the index is applied).

use std::collections::VecDeque;
use std::rc::Rc;

use bytes::Bytes;
use keel_proto::etcdserverpb as pb;
use tokio::sync::{mpsc, oneshot};

use super::types::{InflightGate, NodeId, Proposal, Raft, ReplyTx};
use crate::metrics::metrics;
use crate::mvcc_actor::{MvccMsg, RangeReply, ReadError};

/// Raft entries between proposal and apply at once. Two keep the log busy:
/// one is being flushed while the next is gathered.
pub const BATCHES_IN_FLIGHT_MAX: usize = 2;
/// Proposals waiting for a batch; beyond this the inbox fills and reactors
/// wait (backpressure).
pub const PENDING_PROPOSALS_MAX: usize = 16_384;
/// Commands in one batch at most.
pub const BATCH_COMMANDS_MAX: usize = 4096;

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

enum Event {
    Request(RaftRequest),
    Freed,
    Closed,
}

/// Serves reactors until every sender is gone. `batch_bytes_max` bounds the
/// commands of one batch (a single larger command still goes alone).
pub async fn run(
    raft: Raft,
    mvcc: mpsc::Sender<MvccMsg>,
    mut rx: mpsc::Receiver<RaftRequest>,
    batch_bytes_max: usize,
) {
    let (read_tx, read_rx) = mpsc::channel(READ_QUEUE);
    glommio::spawn_local(read_index_rounds(raft.clone(), mvcc, read_rx)).detach();
    glommio::spawn_local(watch_leadership(raft.clone())).detach();
    let gate = Rc::new(InflightGate::default());
    let mut pending: VecDeque<(Bytes, ReplyTx)> = VecDeque::new();
    loop {
        let must_wait = pending.is_empty() || gate.inflight() >= BATCHES_IN_FLIGHT_MAX;
        if must_wait {
            let event = futures_lite::future::or(
                async { rx.recv().await.map_or(Event::Closed, Event::Request) },
                async {
                    gate.freed().await;
                    Event::Freed
                },
            )
            .await;
            match event {
                Event::Closed => return,
                Event::Freed => {}
                Event::Request(r) => handle(r, &raft, &read_tx, &mut pending).await,
            }
        }
        while pending.len() < PENDING_PROPOSALS_MAX {
            match rx.try_recv() {
                Ok(r) => handle(r, &raft, &read_tx, &mut pending).await,
                Err(_) => break,
            }
        }
        while !pending.is_empty() && gate.inflight() < BATCHES_IN_FLIGHT_MAX {
            let mut commands = Vec::new();
            let mut replies = Vec::new();
            let mut bytes = 0;
            while let Some((command, _)) = pending.front() {
                if !commands.is_empty()
                    && (bytes + command.len() > batch_bytes_max
                        || commands.len() >= BATCH_COMMANDS_MAX)
                {
                    break;
                }
                bytes += command.len();
                let (command, reply) = pending.pop_front().expect("front exists");
                commands.push(command);
                replies.push(reply);
            }
            let proposal = Proposal {
                batch: keel_proto::batch::encode(&commands),
                replies,
                permit: Some(gate.acquire()),
            };
            metrics().proposals_pending.set(pending.len() as i64);
            // On failure openraft drops the proposal, and with it the reply
            // channels and the permit: the waiters see the group stopped.
            if raft.client_write_ff(proposal).await.is_err() {
                metrics().proposals_failed.inc();
            }
        }
    }
}

async fn handle(
    req: RaftRequest,
    raft: &Raft,
    read_tx: &mpsc::Sender<(pb::RangeRequest, RangeReply)>,
    pending: &mut VecDeque<(Bytes, ReplyTx)>,
) {
    match req {
        RaftRequest::Propose { command, reply } => pending.push_back((command, reply)),
        RaftRequest::LinearizableRange { req, reply } => {
            if let Err(e) = read_tx.send((req, reply)).await {
                let (_, reply) = e.0;
                let _ = reply.send(Err(ReadError::NoLeader));
            }
        }
        RaftRequest::Status { reply } => {
            let _ = reply.send(status_of(raft));
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

/// Mirrors leadership into etcd's server gauges, and stops the process if
/// openraft stops on a fatal error (a failed snapshot write, say): serving
/// on without a log would only answer "server stopped" forever.
async fn watch_leadership(raft: Raft) {
    let mut rx = raft.metrics();
    let mut last_leader = None;
    loop {
        let (leader, me, log_index) = {
            let m = rx.borrow_and_update();
            if let Err(e) = &m.running_state {
                crate::fatal(&format!("raft stopped: {e}"));
            }
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
