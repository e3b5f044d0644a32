//! Linearizable reads: batched read-index rounds, one in flight, each
//! confirmed by this member as leader or asked of the leader; the MVCC
//! actor serves every read of a round once the round's index is applied.

use std::time::Instant;

use keel_proto::etcdserverpb as pb;
use tokio::sync::mpsc;

use super::actor::{reign_ends, reign_of, Leader, Origin, RaftHandles, ReadIndexReply};
use crate::mvcc_actor::{MvccMsg, RangeReply, ReadError};
use crate::peer::wire::{PeerRequest, PeerResponse};

/// Reads served by one read-index round at most.
pub const READ_BATCH_MAX: usize = 4096;

pub(super) enum ReadWaiter {
    Range(pb::RangeRequest, RangeReply),
    Index(Origin, ReadIndexReply),
}

/// The index a linearizable read must see applied: confirmed by this
/// member as leader, or asked of the leader. Tries until the request
/// timeout: each attempt waits for a leader, and an attempt that asks
/// another member is bound to that leader's reign and to an election
/// timeout, so a dead or cut-off leader delays reads by about one election,
/// not a request timeout; the next attempt asks whoever leads then.
///
/// This member as leader answers with openraft's read index: the greater of
/// its commit index and its term's first entry, confirmed by a quorum
/// heartbeat round. Served once that index is applied, a read sees every
/// write acknowledged before it, since this term's first entry commits only
/// after everything committed in earlier terms (ARCHITECTURE.md, invariants).
///
/// Rounds asked for by peers only (`may_forward` false) get one election
/// timeout: the asking follower gives up after that.
async fn read_index(h: &RaftHandles, may_forward: bool) -> Result<u64, ReadError> {
    let patience = if may_forward {
        h.request_timeout
    } else {
        h.election_timeout
    };
    let deadline = Instant::now() + patience;
    let mut rx = h.raft.metrics();
    loop {
        let leader = loop {
            let leader = h.leader();
            if leader != Leader::Unknown {
                break leader;
            }
            if Instant::now() >= deadline || h.lost_quorum() {
                return Err(ReadError::NoLeader);
            }
            h.leadership_may_change(&mut rx).await;
        };
        let reign = reign_of(&h.raft);
        let attempt = match leader {
            Leader::Me => h
                .raft
                .get_read_log_id()
                .await
                .ok()
                .map(|(read_log_id, _)| read_log_id.map_or(0, |l| l.index)),
            Leader::Other(id, node) if may_forward => {
                let ask = h
                    .peers
                    .call(id, &node, &PeerRequest::ReadIndex, h.election_timeout);
                let answer = futures_lite::future::or(async { Some(ask.await) }, async {
                    reign_ends(&h.raft, reign).await;
                    None
                })
                .await;
                match answer {
                    Some(Ok(PeerResponse::ReadIndex { index })) => Some(index),
                    _ => None,
                }
            }
            // A peer asked this member as its leader: it does not lead.
            _ => return Err(ReadError::NoLeader),
        };
        if let Some(index) = attempt {
            return Ok(index);
        }
        if Instant::now() >= deadline {
            return Err(ReadError::NoLeader);
        }
        // Not confirmed: wait for news of leadership (or a heartbeat
        // interval) before the next attempt, so it does not spin.
        if reign_of(&h.raft) == reign {
            h.leadership_may_change(&mut rx).await;
        }
    }
}

pub(super) async fn read_index_rounds(h: RaftHandles, mut rx: mpsc::Receiver<ReadWaiter>) {
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        while batch.len() < READ_BATCH_MAX {
            match rx.try_recv() {
                Ok(r) => batch.push(r),
                Err(_) => break,
            }
        }
        // Peers ask this member as their leader; they are not forwarded on.
        let only_peers = batch
            .iter()
            .all(|w| matches!(w, ReadWaiter::Index(Origin::Peer, _)));
        let index = read_index(&h, !only_peers).await;
        if index.is_err() {
            crate::metrics::metrics().read_indexes_failed.inc();
        }
        let am_leader = h.leader() == Leader::Me;
        for w in batch {
            match w {
                ReadWaiter::Index(origin, reply) => {
                    let r = if origin == Origin::Peer && !am_leader {
                        Err(ReadError::NoLeader)
                    } else {
                        index
                    };
                    let _ = reply.send(r);
                }
                ReadWaiter::Range(req, reply) => match index {
                    Ok(min_applied) => {
                        if let Err(e) = h
                            .mvcc
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
                    Err(e) => {
                        let _ = reply.send(Err(e));
                    }
                },
            }
        }
    }
}
