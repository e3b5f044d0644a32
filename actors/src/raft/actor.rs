//! The raft actor: owns the `Raft` handle on the raft core and serves the
//! reactors of every core (and the peer server) through one bounded inbox.
//!
//! * Proposals are batched: at most [`BATCHES_IN_FLIGHT_MAX`] batches are
//!   between proposal and apply; proposals arriving meanwhile wait here and
//!   go out together as the next batch (a `keel_proto::batch`). openraft
//!   0.9 waits for each append's flush before the next, so this is where
//!   group commit happens. A lone client's proposal goes out at once.
//! * On the leader a batch becomes one raft entry. On a follower it is
//!   forwarded to the leader in one peer request; the replies wait until
//!   this member has applied the entries too, so a client that wrote through
//!   a follower reads its write there. While no leader is known, proposals
//!   wait (bounded) and clients time out with etcd's error.
//! * Linearizable reads are batched: one read-index round is in flight at a
//!   time (asked of the leader when this member is a follower), and every
//!   read that arrived before a round started is served at that round's
//!   index, by the MVCC actor, once this member has applied it.

use std::collections::VecDeque;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use keel_proto::etcdserverpb as pb;
use openraft::error::ClientWriteError;
use tokio::sync::{mpsc, oneshot};

use super::leader::{change_members, forward, lease_renew, lease_ttl};
use super::members::MemberError;
use super::reads::{read_index_rounds, ReadWaiter};
use super::transfer::{move_leader, Hold};
use super::types::{
    Applied, InflightGate, Membership, Node, NodeId, Proposal, ProposeError, Raft, ReplyTx,
};
use crate::lease::LeaseError;
use crate::metrics::metrics;
use crate::mvcc_actor::{LeaseMsg, LeaseTtl, MvccMsg, RangeReply, ReadError};
use crate::peer::conn::PeerClients;
use crate::peer::wire::MemberChange;

/// Raft entries between proposal and apply at once. Two keep the log busy:
/// one is being flushed while the next is gathered.
pub const BATCHES_IN_FLIGHT_MAX: usize = 2;
/// Proposals waiting for a batch; beyond this the inbox fills and reactors
/// wait (backpressure).
pub const PENDING_PROPOSALS_MAX: usize = 16_384;
/// Commands in one batch at most.
pub const BATCH_COMMANDS_MAX: usize = 4096;

/// Reads queued for the next read-index round.
pub const READ_QUEUE: usize = 16_384;

/// Where a request came from: a client of this member, or a follower
/// forwarding to this member as its leader (never forwarded again).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    Client,
    Peer,
}

pub type ReadIndexReply = oneshot::Sender<Result<u64, ReadError>>;

pub enum RaftRequest {
    Propose {
        command: Bytes,
        origin: Origin,
        reply: ReplyTx,
    },
    LinearizableRange {
        req: pb::RangeRequest,
        reply: RangeReply,
    },
    /// The index a linearizable read must observe.
    ReadIndex {
        origin: Origin,
        reply: ReadIndexReply,
    },
    Status {
        reply: oneshot::Sender<RaftStatus>,
    },
    ChangeMembers {
        change: MemberChange,
        reply: oneshot::Sender<Result<(), MemberError>>,
    },
    /// A keep-alive, served by the leader's lease clock.
    LeaseRenew {
        id: i64,
        origin: Origin,
        reply: oneshot::Sender<Result<i64, LeaseError>>,
    },
    /// A lease's remaining TTL, from the leader's lease clock.
    LeaseTimeToLive {
        id: i64,
        keys: bool,
        origin: Origin,
        reply: oneshot::Sender<Result<LeaseTtl, LeaseError>>,
    },
    /// Hand leadership to `target` (this member must lead).
    MoveLeader {
        target: NodeId,
        reply: oneshot::Sender<Result<(), MemberError>>,
    },
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RaftStatus {
    pub me: NodeId,
    pub term: u64,
    pub leader: Option<NodeId>,
    pub last_log_index: u64,
    pub applied_index: u64,
    pub membership: Membership,
}

impl RaftStatus {
    pub fn is_learner(&self) -> bool {
        !self.membership.voter_ids().any(|v| v == self.me)
    }
}

pub fn status_of(raft: &Raft) -> RaftStatus {
    let m = raft.metrics().borrow().clone();
    RaftStatus {
        me: m.id,
        term: m.current_term,
        leader: m.current_leader,
        last_log_index: m.last_log_index.unwrap_or(0),
        applied_index: m.last_applied.map_or(0, |l| l.index),
        membership: m.membership_config.membership().clone(),
    }
}

/// Who leads, as far as this member knows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Leader {
    Me,
    Other(NodeId, Node),
    Unknown,
}

pub fn leader_of(raft: &Raft) -> Leader {
    let m = raft.metrics();
    let m = m.borrow();
    match m.current_leader {
        Some(l) if l == m.id => Leader::Me,
        Some(l) => match m.membership_config.membership().get_node(&l) {
            Some(n) => Leader::Other(l, n.clone()),
            None => Leader::Unknown,
        },
        None => Leader::Unknown,
    }
}

/// What every part of the actor shares.
#[derive(Clone)]
pub struct RaftHandles {
    pub raft: Raft,
    pub mvcc: mpsc::Sender<MvccMsg>,
    pub peers: Rc<PeerClients>,
    /// How long a request to the leader may take.
    pub request_timeout: Duration,
    pub election_timeout: Duration,
    /// Set while leadership is being handed over: proposals and reads wait.
    pub hold: Rc<Hold>,
}

/// Leadership as the proposal and read paths see it: unknown while held.
pub(super) fn usable_leader(h: &RaftHandles) -> Leader {
    if h.hold.is_on() {
        Leader::Unknown
    } else {
        leader_of(&h.raft)
    }
}

enum Event {
    Request(RaftRequest),
    Wake,
    Closed,
}

/// Serves reactors until every sender is gone. `batch_bytes_max` bounds the
/// commands of one batch (a single larger command still goes alone).
pub async fn run(h: RaftHandles, mut rx: mpsc::Receiver<RaftRequest>, batch_bytes_max: usize) {
    let (read_tx, read_rx) = mpsc::channel(READ_QUEUE);
    glommio::spawn_local(read_index_rounds(h.clone(), read_rx)).detach();
    glommio::spawn_local(watch_leadership(h.raft.clone(), h.mvcc.clone())).detach();
    let gate = Rc::new(InflightGate::default());
    let mut leader_rx = h.raft.metrics();
    let mut pending: VecDeque<(Bytes, Origin, ReplyTx)> = VecDeque::new();
    loop {
        let leader_known = usable_leader(&h) != Leader::Unknown;
        let must_wait =
            pending.is_empty() || gate.inflight() >= BATCHES_IN_FLIGHT_MAX || !leader_known;
        if must_wait {
            let event = futures_lite::future::or(
                async { rx.recv().await.map_or(Event::Closed, Event::Request) },
                futures_lite::future::or(
                    async {
                        gate.freed().await;
                        Event::Wake
                    },
                    async {
                        if leader_known {
                            std::future::pending::<()>().await;
                        }
                        futures_lite::future::or(
                            async {
                                if leader_rx.changed().await.is_err() {
                                    std::future::pending::<()>().await;
                                }
                            },
                            h.hold.released(),
                        )
                        .await;
                        Event::Wake
                    },
                ),
            )
            .await;
            match event {
                Event::Closed => return,
                Event::Wake => {}
                Event::Request(r) => handle(r, &h, &read_tx, &mut pending).await,
            }
        }
        while pending.len() < PENDING_PROPOSALS_MAX {
            match rx.try_recv() {
                Ok(r) => handle(r, &h, &read_tx, &mut pending).await,
                Err(_) => break,
            }
        }
        while !pending.is_empty() && gate.inflight() < BATCHES_IN_FLIGHT_MAX {
            let leader = usable_leader(&h);
            if leader == Leader::Unknown {
                break;
            }
            let mut commands = Vec::new();
            let mut replies = Vec::new();
            let mut bytes = 0;
            while let Some((command, _, _)) = pending.front() {
                if !commands.is_empty()
                    && (bytes + command.len() > batch_bytes_max
                        || commands.len() >= BATCH_COMMANDS_MAX)
                {
                    break;
                }
                let (command, origin, reply) = pending.pop_front().expect("front exists");
                if origin == Origin::Peer && leader != Leader::Me {
                    // A follower took us for the leader; it must ask the real one.
                    let _ = reply.send(Err(ProposeError::NotLeader {
                        leader: match &leader {
                            Leader::Other(id, _) => Some(*id),
                            _ => None,
                        },
                    }));
                    continue;
                }
                bytes += command.len();
                commands.push(command);
                replies.push(reply);
            }
            metrics().proposals_pending.set(pending.len() as i64);
            if commands.is_empty() {
                continue;
            }
            let permit = gate.acquire();
            match leader {
                Leader::Me => {
                    let proposal = Proposal::from_log(keel_proto::batch::encode(&commands));
                    match h.raft.client_write_ff(proposal).await {
                        Ok(done) => {
                            glommio::spawn_local(async move {
                                answer_applied(replies, done.await);
                                drop(permit);
                            })
                            .detach();
                        }
                        Err(_) => {
                            metrics().proposals_failed.inc();
                            fail_all(replies, ProposeError::Stopped);
                        }
                    }
                }
                Leader::Other(id, node) => {
                    let h = h.clone();
                    glommio::spawn_local(async move {
                        forward(&h, id, &node, commands, replies).await;
                        drop(permit);
                    })
                    .detach();
                }
                Leader::Unknown => unreachable!("checked above"),
            }
        }
    }
}

pub(super) fn fail_all(replies: Vec<ReplyTx>, e: ProposeError) {
    for tx in replies {
        let _ = tx.send(Err(e.clone()));
    }
}

type CommitResult = Result<
    Result<
        openraft::raft::ClientWriteResponse<super::types::TypeConfig>,
        ClientWriteError<NodeId, Node>,
    >,
    tokio::sync::oneshot::error::RecvError,
>;

/// Answers each command of a batch this leader proposed.
fn answer_applied(replies: Vec<ReplyTx>, result: CommitResult) {
    match result {
        Ok(Ok(resp)) => {
            let index = resp.log_id.index;
            let mut outcomes = resp.data.into_iter();
            for tx in replies {
                let r = outcomes
                    .next()
                    .map(|outcome| Applied { index, outcome })
                    .ok_or(ProposeError::Stopped);
                // A waiter may have given up (client gone); nothing to do then.
                let _ = tx.send(r);
            }
        }
        Ok(Err(ClientWriteError::ForwardToLeader(f))) => {
            metrics().proposals_failed.inc();
            fail_all(
                replies,
                ProposeError::NotLeader {
                    leader: f.leader_id,
                },
            );
        }
        Ok(Err(ClientWriteError::ChangeMembershipError(_))) | Err(_) => {
            metrics().proposals_failed.inc();
            fail_all(replies, ProposeError::Stopped);
        }
    }
}

async fn handle(
    req: RaftRequest,
    h: &RaftHandles,
    read_tx: &mpsc::Sender<ReadWaiter>,
    pending: &mut VecDeque<(Bytes, Origin, ReplyTx)>,
) {
    let queue_read = |w: ReadWaiter| async move {
        if let Err(e) = read_tx.send(w).await {
            match e.0 {
                ReadWaiter::Range(_, reply) => {
                    let _ = reply.send(Err(ReadError::NoLeader));
                }
                ReadWaiter::Index(_, reply) => {
                    let _ = reply.send(Err(ReadError::NoLeader));
                }
            }
        }
    };
    match req {
        RaftRequest::Propose {
            command,
            origin,
            reply,
        } => pending.push_back((command, origin, reply)),
        RaftRequest::LinearizableRange { req, reply } => {
            queue_read(ReadWaiter::Range(req, reply)).await
        }
        RaftRequest::ReadIndex { origin, reply } => {
            queue_read(ReadWaiter::Index(origin, reply)).await
        }
        RaftRequest::Status { reply } => {
            let _ = reply.send(status_of(&h.raft));
        }
        RaftRequest::ChangeMembers { change, reply } => {
            let h = h.clone();
            glommio::spawn_local(async move {
                let _ = reply.send(change_members(&h, change).await);
            })
            .detach();
        }
        RaftRequest::LeaseRenew { id, origin, reply } => {
            let h = h.clone();
            glommio::spawn_local(async move {
                let _ = reply.send(lease_renew(&h, id, origin).await);
            })
            .detach();
        }
        RaftRequest::LeaseTimeToLive {
            id,
            keys,
            origin,
            reply,
        } => {
            let h = h.clone();
            glommio::spawn_local(async move {
                let _ = reply.send(lease_ttl(&h, id, keys, origin).await);
            })
            .detach();
        }
        RaftRequest::MoveLeader { target, reply } => {
            let h = h.clone();
            glommio::spawn_local(async move {
                let _ = reply.send(move_leader(&h, target).await);
            })
            .detach();
        }
    }
}

/// Whether this member is a learner, for the reactors' request gate.
static IS_LEARNER: AtomicBool = AtomicBool::new(false);

pub fn is_learner() -> bool {
    IS_LEARNER.load(Ordering::Relaxed)
}

/// Mirrors leadership into etcd's server gauges, and learner status into
/// [`is_learner`], and stops the process if
/// openraft stops on a fatal error (a failed snapshot write, say): serving
/// on without a log would only answer "server stopped" forever.
async fn watch_leadership(raft: Raft, mvcc: mpsc::Sender<MvccMsg>) {
    let mut rx = raft.metrics();
    let mut last_leader = None;
    let mut was_leader = false;
    loop {
        let (leader, me, log_index) = {
            let m = rx.borrow_and_update();
            if let Err(e) = &m.running_state {
                crate::fatal(&format!("raft stopped: {e}"));
            }
            let membership = m.membership_config.membership();
            let learner =
                membership.get_node(&m.id).is_some() && !membership.voter_ids().any(|v| v == m.id);
            IS_LEARNER.store(learner, Ordering::Relaxed);
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
        let is_leader = leader == Some(me);
        if is_leader != was_leader {
            was_leader = is_leader;
            let msg = MvccMsg::Lease(LeaseMsg::Leadership { leader: is_leader });
            if mvcc.send(msg).await.is_err() {
                return;
            }
        }
        if rx.changed().await.is_err() {
            return;
        }
    }
}
