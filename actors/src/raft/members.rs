//! Membership changes with etcd's rules and messages, run on the leader.
//!
//! The checks are pure ([`check`]) over the current membership; the change
//! itself is an openraft membership change (joint consensus when the voter
//! set changes), committed before the caller hears back.

use std::collections::{BTreeMap, BTreeSet};

use openraft::error::{ChangeMembershipError, ClientWriteError, RaftError};
use openraft::{ChangeMembers, CommittedLeaderId, EntryPayload};

use super::types::{Entry, LogId, Membership, Node, NodeId, Raft, Vote};
use crate::grpc::status::{Code, Status};
use crate::peer::wire::{node_from_wire, MemberChange, PeerResponse};

/// Learners a cluster may have at once (etcd's default).
pub const LEARNERS_MAX: usize = 1;

/// A refused membership change: etcd's gRPC code and message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberError {
    pub code: Code,
    pub message: String,
}

impl MemberError {
    fn new(code: Code, message: &str) -> MemberError {
        MemberError {
            code,
            message: message.to_string(),
        }
    }
    pub fn not_found() -> MemberError {
        MemberError::new(Code::NotFound, "etcdserver: member not found")
    }
    pub fn id_exists() -> MemberError {
        MemberError::new(
            Code::FailedPrecondition,
            "etcdserver: member ID already exist",
        )
    }
    pub fn peer_url_exists() -> MemberError {
        MemberError::new(
            Code::FailedPrecondition,
            "etcdserver: Peer URLs already exists",
        )
    }
    pub fn not_learner() -> MemberError {
        MemberError::new(
            Code::FailedPrecondition,
            "etcdserver: can only promote a learner member",
        )
    }
    pub fn learner_not_ready() -> MemberError {
        MemberError::new(
            Code::FailedPrecondition,
            "etcdserver: can only promote a learner member which is in sync with leader",
        )
    }
    pub fn too_many_learners() -> MemberError {
        MemberError::new(
            Code::FailedPrecondition,
            "etcdserver: too many learner members in cluster",
        )
    }
    pub fn unhealthy() -> MemberError {
        MemberError::new(Code::Unavailable, "etcdserver: unhealthy cluster")
    }
    pub fn not_leader() -> MemberError {
        MemberError::new(Code::Unavailable, "etcdserver: no leader")
    }

    pub fn stopped() -> MemberError {
        MemberError::new(Code::Unavailable, "etcdserver: server stopped")
    }

    pub fn not_leader_for_transfer() -> MemberError {
        MemberError::new(Code::FailedPrecondition, "etcdserver: not leader")
    }
    pub fn bad_transferee() -> MemberError {
        MemberError::new(
            Code::FailedPrecondition,
            "etcdserver: bad leader transferee",
        )
    }
    pub fn transfer_timed_out() -> MemberError {
        MemberError::new(
            Code::Unavailable,
            "etcdserver: request timed out, leader transfer took too long",
        )
    }

    pub fn into_wire(self) -> PeerResponse {
        PeerResponse::MemberError {
            code: self.code as u8,
            message: self.message,
        }
    }

    pub fn into_status(self) -> Status {
        Status::new(self.code, self.message)
    }
}

fn node_of(m: &Membership, id: NodeId) -> Result<&Node, MemberError> {
    m.get_node(&id).ok_or_else(MemberError::not_found)
}

fn is_voter(m: &Membership, id: NodeId) -> bool {
    m.voter_ids().any(|v| v == id)
}

fn urls_taken(m: &Membership, except: Option<NodeId>, urls: &[String]) -> bool {
    m.nodes()
        .filter(|(id, _)| Some(**id) != except)
        .any(|(_, n)| n.peer_urls.iter().any(|u| urls.contains(u)))
}

/// Which members are running, for `--strict-reconfig-check`: this member
/// and the peers that answered lately. `None` when the check is off.
pub type Running = Option<BTreeSet<NodeId>>;

/// etcd's `--strict-reconfig-check` for a voter change: adding a voter needs
/// every voter running (etcd: connected to all), since the new voter adds to
/// the quorum before it can vote; removing a running voter needs the rest
/// of the running voters to still make a quorum of those left (removing
/// one that is down is always safe).
fn strict_check(m: &Membership, change: &MemberChange, running: &BTreeSet<NodeId>) -> bool {
    let voters: Vec<NodeId> = m.voter_ids().collect();
    let up = voters.iter().filter(|v| running.contains(v)).count();
    match change {
        MemberChange::Add { learner: false, .. } => up == voters.len(),
        MemberChange::Remove { id } if is_voter(m, *id) && running.contains(id) => {
            up - 1 > (voters.len() - 1) / 2
        }
        // The learner counts as running, as etcd counts it started; with it
        // the voters number one more.
        MemberChange::Promote { .. } => {
            let after = voters.len() + 1;
            up + 1 > after / 2
        }
        _ => true,
    }
}

/// The openraft change `change` makes of membership `m`, or etcd's refusal.
/// `learner_matched` is how far the learner's log is replicated (for
/// Promote), `leader_last` the leader's last log index, and `running` which
/// members run (see [`Running`]).
pub fn check(
    m: &Membership,
    change: MemberChange,
    learner_matched: Option<u64>,
    leader_last: u64,
    running: &Running,
) -> Result<Option<ChangeMembers<NodeId, Node>>, MemberError> {
    if let Some(running) = running {
        if !strict_check(m, &change, running) {
            return Err(MemberError::unhealthy());
        }
    }
    Ok(Some(match change {
        MemberChange::Add { id, node, learner } => {
            if m.get_node(&id).is_some() {
                return Err(MemberError::id_exists());
            }
            if urls_taken(m, None, &node.peer_urls) {
                return Err(MemberError::peer_url_exists());
            }
            let node = node_from_wire(node);
            if learner {
                let learners = m.nodes().filter(|(id, _)| !is_voter(m, **id)).count();
                if learners >= LEARNERS_MAX {
                    return Err(MemberError::too_many_learners());
                }
                ChangeMembers::AddNodes(BTreeMap::from([(id, node)]))
            } else {
                ChangeMembers::AddVoters(BTreeMap::from([(id, node)]))
            }
        }
        MemberChange::Remove { id } => {
            node_of(m, id)?;
            if is_voter(m, id) {
                ChangeMembers::RemoveVoters(BTreeSet::from([id]))
            } else {
                ChangeMembers::RemoveNodes(BTreeSet::from([id]))
            }
        }
        MemberChange::UpdatePeers { id, peer_urls } => {
            let node = node_of(m, id)?;
            if urls_taken(m, Some(id), &peer_urls) {
                return Err(MemberError::peer_url_exists());
            }
            if node.peer_urls == peer_urls {
                return Ok(None);
            }
            let node = Node {
                peer_urls,
                ..node.clone()
            };
            ChangeMembers::SetNodes(BTreeMap::from([(id, node)]))
        }
        MemberChange::Promote { id } => {
            node_of(m, id)?;
            if is_voter(m, id) {
                return Err(MemberError::not_learner());
            }
            // etcd: the learner's match index must be at least 90% of the leader's.
            let matched = learner_matched.unwrap_or(0);
            if (matched as f64) < (leader_last as f64) * 0.9 {
                return Err(MemberError::learner_not_ready());
            }
            ChangeMembers::AddVoterIds(BTreeSet::from([id]))
        }
        MemberChange::Publish {
            id,
            name,
            client_urls,
        } => {
            let node = node_of(m, id)?;
            if node.name == name && node.client_urls == client_urls {
                return Ok(None);
            }
            let node = Node {
                name,
                client_urls,
                ..node.clone()
            };
            ChangeMembers::SetNodes(BTreeMap::from([(id, node)]))
        }
    }))
}

/// Runs `change` on this member, which must lead; returns once committed.
pub async fn execute(
    raft: &Raft,
    change: MemberChange,
    running: &Running,
) -> Result<(), MemberError> {
    let (membership, matched, last) = {
        let m = raft.metrics();
        let m = m.borrow();
        let target = match &change {
            MemberChange::Promote { id } => Some(*id),
            _ => None,
        };
        let matched = target.and_then(|t| {
            m.replication
                .as_ref()
                .and_then(|r| r.get(&t).cloned().flatten())
                .map(|l| l.index)
        });
        (
            m.membership_config.membership().clone(),
            matched,
            m.last_log_index.unwrap_or(0),
        )
    };
    let sole_voter_adds = match &change {
        MemberChange::Add {
            id, learner: false, ..
        } => {
            let me = raft.metrics().borrow().id;
            membership.voter_ids().eq([me]).then_some((me, *id))
        }
        _ => None,
    };
    let Some(changes) = check(&membership, change, matched, last, running)? else {
        return Ok(());
    };
    match sole_voter_adds {
        Some((me, added)) => add_to_sole_voter(raft, changes, me, added).await,
        None => change_membership(raft, changes).await,
    }
}

/// Runs an openraft membership change; answers once it is committed.
async fn change_membership(
    raft: &Raft,
    changes: ChangeMembers<NodeId, Node>,
) -> Result<(), MemberError> {
    match raft.change_membership(changes, false).await {
        Ok(_) => Ok(()),
        Err(RaftError::APIError(ClientWriteError::ForwardToLeader(_))) => {
            Err(MemberError::not_leader())
        }
        Err(RaftError::APIError(ClientWriteError::ChangeMembershipError(e))) => Err(match e {
            ChangeMembershipError::LearnerNotFound(_) => MemberError::not_found(),
            ChangeMembershipError::InProgress(_) | ChangeMembershipError::EmptyMembership(_) => {
                MemberError::unhealthy()
            }
        }),
        Err(RaftError::Fatal(_)) => Err(MemberError::stopped()),
    }
}

/// A voter added to a cluster whose only voter is this member (`me`).
///
/// etcd adds a voter in one step, committed by the voters it had: the
/// answer comes at once, and the cluster then waits for the new member to
/// start. openraft's joint consensus needs the new member's acknowledgement
/// to commit the change, so the answer would wait for the member to start,
/// which it usually does only after the answer (kubeadm, etcdctl users).
/// Here the answer comes once the change is durable on this member: it can
/// then never be lost, since every election needs this member's vote and
/// it votes only for a log that holds the change. The change itself
/// commits, and the cluster serves again, once the new member runs.
async fn add_to_sole_voter(
    raft: &Raft,
    changes: ChangeMembers<NodeId, Node>,
    me: NodeId,
    added: NodeId,
) -> Result<(), MemberError> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let r = raft.clone();
    glommio::spawn_local(async move {
        let _ = tx.send(change_membership(&r, changes).await);
    })
    .detach();
    let mut metrics = raft.metrics();
    let durable_here = async {
        loop {
            {
                let m = metrics.borrow_and_update();
                let config = &m.membership_config;
                let flushed = m
                    .replication
                    .as_ref()
                    .and_then(|r| r.get(&me).cloned().flatten());
                if config.membership().voter_ids().any(|v| v == added)
                    && config.log_id().is_some()
                    && flushed >= *config.log_id()
                {
                    return Ok(());
                }
            }
            if metrics.changed().await.is_err() {
                // Raft stopped; the change's own answer says how.
                return futures_lite::future::pending().await;
            }
        }
    };
    let answered = async { rx.await.unwrap_or(Err(MemberError::stopped())) };
    futures_lite::future::or(answered, durable_here).await
}

/// `--force-new-cluster`, decided without I/O: the vote and the entry that
/// make `me` the cluster's only member, to be written after the log's last
/// entry `last` before raft starts; `None` if it already is.
///
/// etcd appends configuration changes removing every other member in the
/// current term. Here the entry is a new term's, led by `me` (so no two
/// entries of one term claim different leaders), and the vote for that
/// term is written first: raft never sees an entry newer than its vote.
/// The member then elects itself as the sole voter and commits the entry.
pub fn force_sole_member(
    me: NodeId,
    membership: &Membership,
    last: LogId,
    vote: Option<Vote>,
) -> Result<Option<(Vote, Entry)>, String> {
    let node = membership.get_node(&me).ok_or_else(|| {
        format!("--force-new-cluster: member {me:x} is not in the cluster's membership")
    })?;
    if membership.voter_ids().eq([me]) && membership.nodes().count() == 1 {
        return Ok(None);
    }
    let term = vote
        .map_or(0, |v| v.leader_id.term)
        .max(last.leader_id.term)
        + 1;
    let sole = Membership::new(
        vec![BTreeSet::from([me])],
        BTreeMap::from([(me, node.clone())]),
    );
    let entry = Entry {
        log_id: LogId::new(CommittedLeaderId::new(term, me), last.index + 1),
        payload: EntryPayload::Membership(sole),
    };
    Ok(Some((Vote::new(term, me), entry)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::peer::wire::WireNode;

    fn node(name: &str, port: u16) -> Node {
        Node {
            name: name.into(),
            peer_urls: vec![format!("http://127.0.0.1:{port}")],
            client_urls: vec![],
        }
    }

    fn three_voters_one_learner() -> Membership {
        let nodes = BTreeMap::from([
            (1, node("a", 1)),
            (2, node("b", 2)),
            (3, node("c", 3)),
            (4, node("d", 4)),
        ]);
        Membership::new(vec![BTreeSet::from([1, 2, 3])], nodes)
    }

    #[test]
    fn etcd_refusals() {
        let m = three_voters_one_learner();
        let add = |id, port, learner| MemberChange::Add {
            id,
            node: WireNode {
                name: String::new(),
                peer_urls: vec![format!("http://127.0.0.1:{port}")],
                client_urls: vec![],
            },
            learner,
        };
        assert_eq!(
            check(&m, add(2, 9, false), None, 0, &None),
            Err(MemberError::id_exists())
        );
        assert_eq!(
            check(&m, add(9, 3, false), None, 0, &None),
            Err(MemberError::peer_url_exists())
        );
        assert_eq!(
            check(&m, add(9, 9, true), None, 0, &None),
            Err(MemberError::too_many_learners())
        );
        assert!(matches!(
            check(&m, add(9, 9, false), None, 0, &None),
            Ok(Some(ChangeMembers::AddVoters(_)))
        ));
        assert_eq!(
            check(&m, MemberChange::Remove { id: 7 }, None, 0, &None),
            Err(MemberError::not_found())
        );
        assert!(matches!(
            check(&m, MemberChange::Remove { id: 4 }, None, 0, &None),
            Ok(Some(ChangeMembers::RemoveNodes(_)))
        ));
        assert!(matches!(
            check(&m, MemberChange::Remove { id: 1 }, None, 0, &None),
            Ok(Some(ChangeMembers::RemoveVoters(_)))
        ));
        assert_eq!(
            check(&m, MemberChange::Promote { id: 1 }, None, 0, &None),
            Err(MemberError::not_learner())
        );
        assert_eq!(
            check(&m, MemberChange::Promote { id: 4 }, Some(80), 100, &None),
            Err(MemberError::learner_not_ready())
        );
        assert!(matches!(
            check(&m, MemberChange::Promote { id: 4 }, Some(95), 100, &None),
            Ok(Some(ChangeMembers::AddVoterIds(_)))
        ));
        let update = |id, port| MemberChange::UpdatePeers {
            id,
            peer_urls: vec![format!("http://127.0.0.1:{port}")],
        };
        assert_eq!(
            check(&m, update(1, 2), None, 0, &None),
            Err(MemberError::peer_url_exists())
        );
        assert_eq!(check(&m, update(1, 1), None, 0, &None), Ok(None));
        assert!(check(&m, update(1, 11), None, 0, &None).unwrap().is_some());
    }

    #[test]
    fn strict_reconfiguration_keeps_a_running_quorum() {
        let m = three_voters_one_learner();
        let add_voter = MemberChange::Add {
            id: 9,
            node: WireNode {
                name: String::new(),
                peer_urls: vec!["http://127.0.0.1:9".into()],
                client_urls: vec![],
            },
            learner: false,
        };
        let all: Running = Some(BTreeSet::from([1, 2, 3]));
        let one_down: Running = Some(BTreeSet::from([1, 2]));
        let two_down: Running = Some(BTreeSet::from([1]));
        let unhealthy = Err(MemberError::unhealthy());
        assert!(check(&m, add_voter.clone(), None, 0, &all).is_ok());
        assert_eq!(check(&m, add_voter.clone(), None, 0, &one_down), unhealthy);
        // Without the check, anything goes.
        assert!(check(&m, add_voter, None, 0, &None).is_ok());
        let remove = |id| MemberChange::Remove { id };
        // A running voter may go while the rest still make a quorum...
        assert!(check(&m, remove(2), None, 0, &all).is_ok());
        // ... not when one of the rest is down: 1 of the remaining 2 runs.
        assert_eq!(check(&m, remove(2), None, 0, &one_down), unhealthy);
        // The one that is down may always go; learners too.
        assert!(check(&m, remove(3), None, 0, &one_down).is_ok());
        assert!(check(&m, remove(4), None, 0, &two_down).is_ok());
        // Promote: the learner and the running voters make a quorum of 4.
        let promote = MemberChange::Promote { id: 4 };
        assert!(check(&m, promote.clone(), Some(100), 100, &one_down).is_ok());
        assert_eq!(check(&m, promote, Some(100), 100, &two_down), unhealthy);
    }

    #[test]
    fn publishing_the_same_attributes_changes_nothing() {
        let m = three_voters_one_learner();
        let publish = |name: &str| MemberChange::Publish {
            id: 1,
            name: name.into(),
            client_urls: vec![],
        };
        assert_eq!(check(&m, publish("a"), None, 0, &None), Ok(None));
        assert!(check(&m, publish("z"), None, 0, &None).unwrap().is_some());
    }

    #[test]
    fn force_new_cluster_leaves_only_this_member() {
        let m = three_voters_one_learner();
        let last = LogId::new(CommittedLeaderId::new(7, 2), 41);
        let (vote, entry) = force_sole_member(3, &m, last, Some(Vote::new_committed(8, 2)))
            .unwrap()
            .unwrap();
        // A term past both the vote's and the last entry's, led by this member.
        assert_eq!(vote, Vote::new(9, 3));
        assert_eq!(entry.log_id, LogId::new(CommittedLeaderId::new(9, 3), 42));
        let EntryPayload::Membership(sole) = &entry.payload else {
            panic!("{entry:?}")
        };
        assert_eq!(sole.voter_ids().collect::<Vec<_>>(), [3]);
        assert_eq!(sole.nodes().collect::<Vec<_>>(), [(&3, &node("c", 3))]);
        // Started again with the flag: nothing more to do.
        assert!(matches!(
            force_sole_member(3, sole, entry.log_id, Some(vote)),
            Ok(None)
        ));
        // A learner left alone is made the voter.
        let (_, entry) = force_sole_member(4, &m, last, None).unwrap().unwrap();
        let EntryPayload::Membership(sole) = &entry.payload else {
            panic!("{entry:?}")
        };
        assert_eq!(sole.voter_ids().collect::<Vec<_>>(), [4]);
        // A member the membership does not hold has nothing to force.
        assert!(force_sole_member(9, &m, last, None)
            .unwrap_err()
            .contains("member 9 is not in the cluster's membership"));
    }
}
