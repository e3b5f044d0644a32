//! Requests only the leader answers, run here when this member leads and
//! sent to the leader over the peer transport otherwise: forwarded write
//! batches, keep-alives, lease time-to-live, membership changes.

use std::time::Instant;

use bytes::Bytes;
use keel_storage::mvcc::ApplyOutcome;
use tokio::sync::oneshot;

use super::actor::{
    answer_applied, fail_all, reign_ends, reign_of, Leader, Origin, RaftHandles, Reign,
};
use super::members::{self, MemberError};
use super::types::{Applied, Node, NodeId, Proposal, ProposeError, ReplyTx};
use crate::grpc::status::Code;
use crate::lease::LeaseError;
use crate::metrics::metrics;
use crate::mvcc_actor::{set_member_id, LeaseMsg, LeaseTtl, MvccMsg};
use crate::peer::conn::PeerError;
use crate::peer::wire::{
    failed_from_wire, outcome_from_wire, MemberChange, PeerRequest, PeerResponse, WireOutcome,
};

/// Sends a batch to the leader of `reign`, then answers each command once
/// this member has applied it as well.
///
/// The batch lives only as long as that reign: if openraft reports another
/// leader or term before the answer comes (a dead, paused or cut-off leader
/// is noticed within two election timeouts, when this member's election
/// timer fires), the batch fails with `leader changed` (its outcome is
/// unknown) and the next batch goes to whoever leads then. The request
/// timeout bounds the rest: a leader that keeps its reign but cannot be
/// heard from on this path.
///
/// A batch that provably reached no leader (the connection failed before
/// it was sent, or the member said it does not lead) cannot have been
/// applied: it waits for the next reign and goes to that leader, or is
/// proposed here if this member won, instead of failing its clients with
/// `no leader` while the election runs (as etcd's proposals wait for a
/// leader).
pub(super) async fn forward(
    h: &RaftHandles,
    mut leader: NodeId,
    mut reign: Reign,
    node: &Node,
    commands: Vec<Bytes>,
    replies: Vec<ReplyTx>,
) {
    let deadline = Instant::now() + h.request_timeout;
    let req = PeerRequest::Forward {
        commands: commands.iter().map(|c| c.to_vec()).collect(),
    };
    let mut node = node.clone();
    let outcomes = loop {
        let answer = futures_lite::future::or(
            async { Some(h.peers.call(leader, &node, &req, h.request_timeout).await) },
            async {
                reign_ends(&h.raft, reign).await;
                None
            },
        )
        .await;
        match answer {
            Some(Ok(PeerResponse::Forwarded { outcomes })) if outcomes.len() == replies.len() => {
                break outcomes
            }
            // Nothing reached a leader: try the next one.
            Some(
                Ok(PeerResponse::NotLeader { .. })
                | Err(PeerError::Unreachable(..) | PeerError::Rejected(..)),
            ) => match next_leader(h, deadline, &replies).await {
                Some(Leader::Other(id, n)) => {
                    (leader, node, reign) = (id, n, reign_of(&h.raft));
                }
                Some(Leader::Me) => return propose_here(h, commands, replies).await,
                _ => return fail_all(replies, ProposeError::NotLeader { leader: None }),
            },
            Some(Ok(_) | Err(_)) | None => {
                metrics().proposals_failed.inc();
                return fail_all(replies, ProposeError::LeaderChanged);
            }
        }
    };
    let last = outcomes
        .iter()
        .filter_map(|o| match o {
            WireOutcome::Applied { index, .. } | WireOutcome::Failed { index, .. } => Some(*index),
            _ => None,
        })
        .max();
    if let Some(index) = last {
        // Read your writes on this member: answer once it applied them too.
        // The leader applied them already, so their outcomes stand even if
        // this wait fails: reporting a failure would invite a retry that
        // applies the write twice. A member that cannot apply them within an
        // election timeout (cut off from the leader's appends, say) answers
        // anyway, well before the client's deadline.
        let (tx, rx) = oneshot::channel();
        let waited = h
            .mvcc
            .send(MvccMsg::WaitApplied { index, reply: tx })
            .await
            .is_ok()
            && glommio::timer::timeout(h.election_timeout, async { Ok(rx.await) })
                .await
                .is_ok_and(|r| r.is_ok());
        if !waited {
            tracing::warn!(
                index,
                "answering forwarded writes the leader applied before this member applied them"
            );
        }
    }
    let me = h.raft.metrics().borrow().id;
    for (tx, o) in replies.into_iter().zip(outcomes) {
        let r = match o {
            WireOutcome::Applied { index, kind, body } => match outcome_from_wire(kind, &body) {
                Ok(mut resp) => {
                    set_member_id(&mut resp, me);
                    Ok(Applied {
                        index,
                        outcome: Ok(resp),
                    })
                }
                Err(e) => {
                    tracing::error!("undecodable forwarded outcome: {e}");
                    Err(ProposeError::Stopped)
                }
            },
            WireOutcome::Failed { index, error } => match failed_from_wire(error) {
                Ok(e) => Ok(Applied {
                    index,
                    outcome: ApplyOutcome::Err(e),
                }),
                Err(_) => Err(ProposeError::Stopped),
            },
            WireOutcome::NotLeader => Err(ProposeError::NotLeader { leader: None }),
            WireOutcome::Stopped => Err(ProposeError::Stopped),
        };
        let _ = tx.send(r);
    }
}

/// The leader to try next after one failed to take a batch: whoever
/// leads once openraft reported something or a heartbeat interval passed
/// (the same leader again if its reign goes on: the connection may have
/// failed only once). None at `deadline`, or when every waiting client has
/// gone.
async fn next_leader(h: &RaftHandles, deadline: Instant, replies: &[ReplyTx]) -> Option<Leader> {
    let mut rx = h.raft.metrics();
    rx.borrow_and_update();
    loop {
        h.leadership_may_change(&mut rx).await;
        if Instant::now() >= deadline || replies.iter().all(|r| r.is_closed()) {
            return None;
        }
        match h.leader() {
            Leader::Unknown => {}
            leader => return Some(leader),
        }
    }
}

/// Proposes a batch that was meant for another leader here, this member
/// having become leader meanwhile.
async fn propose_here(h: &RaftHandles, commands: Vec<Bytes>, replies: Vec<ReplyTx>) {
    let proposal = Proposal::from_log(keel_proto::batch::encode(&commands));
    match h.raft.client_write_ff(proposal).await {
        Ok(done) => answer_applied(replies, done.await),
        Err(_) => {
            metrics().proposals_failed.inc();
            fail_all(replies, ProposeError::Stopped);
        }
    }
}

/// Asks the leader's lease clock: this member's if it leads, else the
/// leader's over the peer transport (a peer's request is never passed on).
async fn ask_lease_clock<T>(
    h: &RaftHandles,
    origin: Origin,
    local: impl FnOnce(oneshot::Sender<Result<T, LeaseError>>) -> LeaseMsg,
    remote: PeerRequest,
    answer: impl FnOnce(PeerResponse) -> Option<T>,
) -> Result<T, LeaseError> {
    match h.leader() {
        Leader::Me => {
            let (tx, rx) = oneshot::channel();
            let msg = MvccMsg::Lease(local(tx));
            h.mvcc.send(msg).await.map_err(|_| LeaseError::NotLeader)?;
            rx.await.map_err(|_| LeaseError::NotLeader)?
        }
        Leader::Other(leader, node) if origin == Origin::Client => {
            match h
                .peers
                .call(leader, &node, &remote, h.election_timeout)
                .await
            {
                Ok(PeerResponse::LeaseNotFound) => Err(LeaseError::NotFound),
                Ok(resp) => answer(resp).ok_or(LeaseError::NotLeader),
                Err(_) => Err(LeaseError::NotLeader),
            }
        }
        _ => Err(LeaseError::NotLeader),
    }
}

/// A keep-alive: the lease's TTL.
pub(super) async fn lease_renew(
    h: &RaftHandles,
    id: i64,
    origin: Origin,
) -> Result<i64, LeaseError> {
    ask_lease_clock(
        h,
        origin,
        |reply| LeaseMsg::Renew { id, reply },
        PeerRequest::LeaseRenew { id },
        |resp| match resp {
            PeerResponse::LeaseRenewed { ttl } => Some(ttl),
            _ => None,
        },
    )
    .await
}

pub(super) async fn lease_ttl(
    h: &RaftHandles,
    id: i64,
    keys: bool,
    origin: Origin,
) -> Result<LeaseTtl, LeaseError> {
    ask_lease_clock(
        h,
        origin,
        |reply| LeaseMsg::TimeToLive { id, keys, reply },
        PeerRequest::LeaseTimeToLive { id, keys },
        |resp| match resp {
            PeerResponse::LeaseTimeToLive {
                remaining,
                granted,
                keys,
            } => Some(LeaseTtl {
                remaining,
                granted,
                keys: keys.into_iter().map(Bytes::from).collect(),
            }),
            _ => None,
        },
    )
    .await
}

/// Which members run, for `--strict-reconfig-check`: this one, and the
/// peers that answered within two election timeouts (they are sent a
/// heartbeat every heartbeat interval).
fn running_members(h: &RaftHandles) -> members::Running {
    if !h.strict_reconfig_check {
        return None;
    }
    let m = h.raft.metrics().borrow().clone();
    let window = h.election_timeout * 2;
    Some(
        m.membership_config
            .membership()
            .nodes()
            .map(|(id, _)| *id)
            .filter(|id| *id == m.id || h.peers.answered_within(*id, window))
            .collect(),
    )
}

/// Runs a membership change here if this member leads, else on the leader
/// (a peer's request is never passed on).
pub(super) async fn change_members(
    h: &RaftHandles,
    change: MemberChange,
    origin: Origin,
) -> Result<(), MemberError> {
    match h.leader() {
        Leader::Me => members::execute(&h.raft, change, &running_members(h)).await,
        Leader::Unknown => Err(MemberError::not_leader()),
        Leader::Other(..) if origin == Origin::Peer => Err(MemberError::not_leader()),
        Leader::Other(id, node) => {
            let req = PeerRequest::ChangeMembers(change);
            match h.peers.call(id, &node, &req, h.request_timeout).await {
                Ok(PeerResponse::Members { .. }) => Ok(()),
                Ok(PeerResponse::MemberError { code, message }) => Err(MemberError {
                    code: Code::from_u8(code),
                    message,
                }),
                Ok(PeerResponse::NotLeader { .. }) | Err(_) | Ok(_) => {
                    Err(MemberError::not_leader())
                }
            }
        }
    }
}
