//! Linearizable reads: batched read-index rounds, one in flight, each
//! confirmed by this member as leader or asked of the leader; the MVCC
//! actor serves every read of a round once the round's index is applied.

use keel_proto::etcdserverpb as pb;
use tokio::sync::mpsc;

use super::actor::{leader_of, usable_leader, Leader, Origin, RaftHandles, ReadIndexReply};
use crate::mvcc_actor::{MvccMsg, RangeReply, ReadError};
use crate::peer::wire::{PeerRequest, PeerResponse};

/// Reads served by one read-index round at most.
pub const READ_BATCH_MAX: usize = 4096;

pub(super) enum ReadWaiter {
    Range(pb::RangeRequest, RangeReply),
    Index(Origin, ReadIndexReply),
}

/// The index a linearizable read must see applied: confirmed by this
/// member as leader, or asked of the leader. Waits up to the request
/// timeout for a leader to be known.
async fn read_index(h: &RaftHandles, may_forward: bool) -> Result<u64, ReadError> {
    let mut rx = h.raft.metrics();
    let waited = glommio::timer::timeout(h.request_timeout, async {
        loop {
            let leader = usable_leader(h);
            if leader != Leader::Unknown {
                return Ok(leader);
            }
            let changed = futures_lite::future::or(async { rx.changed().await.is_ok() }, async {
                h.hold.released().await;
                true
            })
            .await;
            if !changed {
                return Ok(Leader::Unknown);
            }
        }
    })
    .await;
    match waited {
        Ok(Leader::Me) => match h.raft.get_read_log_id().await {
            Ok((read_log_id, _)) => Ok(read_log_id.map_or(0, |l| l.index)),
            Err(_) => Err(ReadError::NoLeader),
        },
        Ok(Leader::Other(id, node)) if may_forward => {
            match h
                .peers
                .call(id, &node, &PeerRequest::ReadIndex, h.request_timeout)
                .await
            {
                Ok(PeerResponse::ReadIndex { index }) => Ok(index),
                _ => Err(ReadError::NoLeader),
            }
        }
        _ => Err(ReadError::NoLeader),
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
        let am_leader = leader_of(&h.raft) == Leader::Me;
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
