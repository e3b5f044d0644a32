//! The raft actor: owns the `Raft` handle on the raft core and serves the
//! reactors of every core (and the peer server) through one bounded inbox.
//!
//! * Leadership comes from openraft alone ([`RaftHandles::leader`]): its
//!   current leader and term, and for this member's own leadership a
//!   quorum heard from within an election timeout (etcd's check-quorum). A
//!   batch is bound to the leader and term it was sent to; when they change
//!   it fails with `leader changed` instead of waiting on or being carried
//!   over (see ARCHITECTURE.md, "Leadership and terms").
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
use super::transfer::{hand_over, move_leader, Hold};
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
    /// What this member decided as leader of `term` by its own clock (lease
    /// expiry, checkpoints): proposed only while it still leads that term,
    /// and applied only in that term. Nobody waits for it.
    ProposeAsLeader {
        command: Bytes,
        term: u64,
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
        origin: Origin,
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
    /// Take a snapshot now (Maintenance.Defragment: the WAL then releases
    /// the segments it covers). Answers once a snapshot covers what was
    /// applied when asked, or false when none did within the request
    /// timeout.
    Snapshot {
        reply: oneshot::Sender<bool>,
    },
    /// The member is stopping: if it leads, hand leadership to the most
    /// caught-up voter first. Answers (from another thread's view) with
    /// what was done, for the log.
    Stop {
        done: std::sync::mpsc::Sender<String>,
    },
}

/// Builds a snapshot of what is applied now; true once one is in place.
async fn snapshot_now(h: &RaftHandles) -> bool {
    let applied = h
        .raft
        .metrics()
        .borrow()
        .last_applied
        .map_or(0, |l| l.index);
    if h.raft.trigger().snapshot().await.is_err() {
        return false;
    }
    h.raft
        .wait(Some(h.request_timeout))
        .metrics(
            |m| m.snapshot.is_some_and(|l| l.index >= applied),
            "a snapshot of what was applied",
        )
        .await
        .is_ok()
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

/// This member's raft status, with the leader as [`RaftHandles::leader`]
/// sees it: a leader cut off from its quorum reports none.
pub fn status_of(h: &RaftHandles) -> RaftStatus {
    let m = h.raft.metrics().borrow().clone();
    RaftStatus {
        me: m.id,
        term: m.current_term,
        leader: acting_leader(&m, h.election_timeout),
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

type Metrics = openraft::RaftMetrics<NodeId, Node>;

/// Whether a leader last heard from a quorum recently enough to act as one
/// (etcd's check-quorum): within an election timeout, after which the
/// followers may have elected another leader.
pub fn quorum_recent(millis_since_quorum_ack: Option<u64>, election_timeout: Duration) -> bool {
    millis_since_quorum_ack.is_some_and(|ms| u128::from(ms) < election_timeout.as_millis())
}

/// The leader as a client may rely on it: openraft's current leader, except
/// that this member counts as leader only while its quorum is recent.
pub fn acting_leader(m: &Metrics, election_timeout: Duration) -> Option<NodeId> {
    match m.current_leader {
        Some(l) if l == m.id && !quorum_recent(m.millis_since_quorum_ack, election_timeout) => None,
        other => other,
    }
}

fn leader_in(m: &Metrics, election_timeout: Duration) -> Leader {
    match acting_leader(m, election_timeout) {
        Some(l) if l == m.id => Leader::Me,
        Some(l) => match m.membership_config.membership().get_node(&l) {
            Some(n) => Leader::Other(l, n.clone()),
            None => Leader::Unknown,
        },
        None => Leader::Unknown,
    }
}

/// Who leads in which term, as openraft reports it: what a forwarded batch
/// or a read-index round is bound to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reign {
    pub leader: Option<NodeId>,
    pub term: u64,
}

pub fn reign_of(raft: &Raft) -> Reign {
    let m = raft.metrics();
    let m = m.borrow();
    Reign {
        leader: m.current_leader,
        term: m.current_term,
    }
}

/// Resolves once openraft reports another leader or term than `reign`
/// (or stops).
pub async fn reign_ends(raft: &Raft, reign: Reign) {
    let mut rx = raft.metrics();
    loop {
        {
            let m = rx.borrow_and_update();
            if m.current_leader != reign.leader || m.current_term != reign.term {
                return;
            }
        }
        if rx.changed().await.is_err() {
            return;
        }
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
    pub heartbeat_interval: Duration,
    /// etcd's `--strict-reconfig-check`: refuse voter changes that would
    /// leave fewer running voters than a quorum.
    pub strict_reconfig_check: bool,
    /// Set while leadership is being handed over: proposals and reads wait.
    pub hold: Rc<Hold>,
}

impl RaftHandles {
    /// Leadership as the proposal, read and lease paths act on it: this
    /// member leads only with a recent quorum, and nobody leads while a
    /// leader transfer holds requests.
    pub fn leader(&self) -> Leader {
        if self.hold.is_on() {
            Leader::Unknown
        } else {
            leader_in(&self.raft.metrics().borrow(), self.election_timeout)
        }
    }

    /// Whether this member still leads in openraft's eyes but has not heard
    /// from a quorum within an election timeout: cut off, it must not act
    /// as leader, and what asks it to gets `no leader` at once (as etcd's
    /// check-quorum leader steps down) rather than waiting for a leader
    /// that may come back only when the partition heals.
    /// (Not while a leader transfer holds requests: its heartbeats stop on
    /// purpose, and what waits goes to the new leader.)
    pub fn lost_quorum(&self) -> bool {
        if self.hold.is_on() {
            return false;
        }
        let m = self.raft.metrics();
        let m = m.borrow();
        m.current_leader == Some(m.id) && acting_leader(&m, self.election_timeout).is_none()
    }

    /// Resolves when leadership may have changed: openraft reported
    /// something, a hold was released, or a heartbeat interval passed (a
    /// leader's quorum goes stale without any report).
    pub async fn leadership_may_change(&self, rx: &mut tokio::sync::watch::Receiver<Metrics>) {
        futures_lite::future::or(
            async {
                if rx.changed().await.is_err() {
                    std::future::pending::<()>().await;
                }
            },
            futures_lite::future::or(self.hold.released(), async {
                glommio::timer::sleep(self.heartbeat_interval).await
            }),
        )
        .await
    }
}

/// One proposal waiting for a batch, and who waits for its outcome.
enum Pending {
    /// A client of this member (or one of its own tasks, e.g. compaction).
    Client(Bytes, ReplyTx),
    /// A follower's client: proposed only while this member leads.
    Peer(Bytes, ReplyTx),
    /// This member's decision as leader of a term (see
    /// [`RaftRequest::ProposeAsLeader`]).
    Leader(Bytes, u64),
}

impl Pending {
    fn command(&self) -> &Bytes {
        match self {
            Pending::Client(c, _) | Pending::Peer(c, _) | Pending::Leader(c, _) => c,
        }
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
    glommio::spawn_local(watch_leadership(h.clone())).detach();
    let gate = Rc::new(InflightGate::default());
    let mut leader_rx = h.raft.metrics();
    let mut pending: VecDeque<Pending> = VecDeque::new();
    loop {
        if h.lost_quorum() && !pending.is_empty() {
            fail_pending(&mut pending);
        }
        let leader_known = h.leader() != Leader::Unknown;
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
                        h.leadership_may_change(&mut leader_rx).await;
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
            let leader = h.leader();
            if leader == Leader::Unknown {
                break;
            }
            // The batch is bound to this leader and term from here on.
            let reign = reign_of(&h.raft);
            let (commands, replies) = next_batch(&mut pending, &leader, reign, batch_bytes_max);
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
                        forward(&h, id, reign, &node, commands, replies).await;
                        drop(permit);
                    })
                    .detach();
                }
                Leader::Unknown => unreachable!("checked above"),
            }
        }
    }
}

/// Takes the next batch off `pending` for `leader` in `reign`: commands and
/// who waits for each. Drops what must not be proposed now: proposals whose
/// client has gone (it timed out or hung up: its write must not be applied
/// after it was told it failed), a follower's proposals when this member
/// does not lead, and this member's leader decisions from another term.
fn next_batch(
    pending: &mut VecDeque<Pending>,
    leader: &Leader,
    reign: Reign,
    batch_bytes_max: usize,
) -> (Vec<Bytes>, Vec<ReplyTx>) {
    let mut commands = Vec::new();
    let mut replies = Vec::new();
    let mut bytes = 0;
    while let Some(next) = pending.front() {
        let len = next.command().len();
        if !commands.is_empty()
            && (bytes + len > batch_bytes_max || commands.len() >= BATCH_COMMANDS_MAX)
        {
            break;
        }
        let (command, reply) = match pending.pop_front().expect("front exists") {
            Pending::Client(_, reply) if reply.is_closed() => continue,
            Pending::Peer(_, reply) if *leader != Leader::Me => {
                // A follower took us for the leader; it must ask the real one.
                let leader = match leader {
                    Leader::Other(id, _) => Some(*id),
                    _ => None,
                };
                let _ = reply.send(Err(ProposeError::NotLeader { leader }));
                continue;
            }
            Pending::Leader(_, term) if *leader != Leader::Me || term != reign.term => continue,
            Pending::Client(command, reply) | Pending::Peer(command, reply) => (command, reply),
            // Nobody waits: the outcome goes nowhere.
            Pending::Leader(command, _) => (command, oneshot::channel().0),
        };
        bytes += len;
        commands.push(command);
        replies.push(reply);
    }
    (commands, replies)
}

/// Answers every pending proposal with `no leader` (a cut-off leader's).
fn fail_pending(pending: &mut VecDeque<Pending>) {
    metrics().proposals_failed.inc_by(pending.len() as u64);
    for p in pending.drain(..) {
        if let Pending::Client(_, reply) | Pending::Peer(_, reply) = p {
            let _ = reply.send(Err(ProposeError::NotLeader { leader: None }));
        }
    }
    metrics().proposals_pending.set(0);
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
pub(super) fn answer_applied(replies: Vec<ReplyTx>, result: CommitResult) {
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
    pending: &mut VecDeque<Pending>,
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
            origin: Origin::Client,
            reply,
        } => pending.push_back(Pending::Client(command, reply)),
        RaftRequest::Propose {
            command,
            origin: Origin::Peer,
            reply,
        } => pending.push_back(Pending::Peer(command, reply)),
        RaftRequest::ProposeAsLeader { command, term } => {
            pending.push_back(Pending::Leader(command, term))
        }
        RaftRequest::LinearizableRange { req, reply } => {
            queue_read(ReadWaiter::Range(req, reply)).await
        }
        RaftRequest::ReadIndex { origin, reply } => {
            queue_read(ReadWaiter::Index(origin, reply)).await
        }
        RaftRequest::Status { reply } => {
            let _ = reply.send(status_of(h));
        }
        RaftRequest::ChangeMembers {
            change,
            origin,
            reply,
        } => {
            let h = h.clone();
            glommio::spawn_local(async move {
                let _ = reply.send(change_members(&h, change, origin).await);
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
        RaftRequest::Snapshot { reply } => {
            let h = h.clone();
            glommio::spawn_local(async move {
                let _ = reply.send(snapshot_now(&h).await);
            })
            .detach();
        }
        RaftRequest::Stop { done } => {
            let h = h.clone();
            glommio::spawn_local(async move {
                let _ = done.send(hand_over(&h).await);
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

/// Whether this member knows a leader it may rely on (as `has_leader`), for
/// the reactors' require-leader streams.
static HAS_LEADER: AtomicBool = AtomicBool::new(false);

pub fn has_leader() -> bool {
    HAS_LEADER.load(Ordering::Relaxed)
}

/// Mirrors leadership into etcd's server gauges, into the MVCC actor's
/// lease clock (which acts only while this member leads with a recent
/// quorum, and stamps its decisions with the term) and learner status into
/// [`is_learner`]; and stops the process if openraft stops on a fatal error
/// (a failed snapshot write, say): serving on without a log would only
/// answer "server stopped" forever. Looks again every heartbeat interval,
/// since a leader's quorum goes stale without openraft reporting anything.
/// Woken by openraft's server metrics (leader, vote, state, membership),
/// not by every appended or applied entry.
async fn watch_leadership(h: RaftHandles) {
    let mut rx = h.raft.server_metrics();
    let mut last_leader = None;
    let mut leading_term = None;
    loop {
        rx.borrow_and_update();
        let (leader, me, term, log_index) = {
            let m = h.raft.metrics();
            let m = m.borrow();
            if let Err(e) = &m.running_state {
                crate::fatal(&format!("raft stopped: {e}"));
            }
            let membership = m.membership_config.membership();
            let learner =
                membership.get_node(&m.id).is_some() && !membership.voter_ids().any(|v| v == m.id);
            IS_LEARNER.store(learner, Ordering::Relaxed);
            let leader = acting_leader(&m, h.election_timeout);
            (leader, m.id, m.current_term, m.last_log_index.unwrap_or(0))
        };
        let mx = metrics();
        HAS_LEADER.store(leader.is_some(), Ordering::Relaxed);
        mx.has_leader.set(i64::from(leader.is_some()));
        mx.is_leader.set(i64::from(leader == Some(me)));
        mx.proposals_committed.set(log_index as i64);
        if leader != last_leader {
            if leader.is_some() {
                mx.leader_changes.inc();
            }
            match leader {
                Some(l) if l == me => tracing::info!(term, "this member leads"),
                Some(l) => tracing::info!(term, leader = format!("{l:x}"), "following a leader"),
                None if last_leader == Some(me) => {
                    tracing::warn!(
                        term,
                        "this member stopped leading (no recent quorum, or a higher term)"
                    )
                }
                None => tracing::info!(term, "no leader"),
            }
        }
        last_leader = leader;
        let now_leading = (leader == Some(me)).then_some(term);
        if now_leading != leading_term {
            leading_term = now_leading;
            let msg = MvccMsg::Lease(LeaseMsg::Leadership { term: now_leading });
            if h.mvcc.send(msg).await.is_err() {
                return;
            }
        }
        let changed = futures_lite::future::or(async { rx.changed().await.is_ok() }, async {
            glommio::timer::sleep(h.heartbeat_interval).await;
            true
        })
        .await;
        if !changed {
            // openraft stopped; it says why in its full metrics.
            if let Err(e) = &h.raft.metrics().borrow().running_state {
                crate::fatal(&format!("raft stopped: {e}"));
            }
            return;
        }
    }
}
