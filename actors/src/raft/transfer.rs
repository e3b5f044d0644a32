//! MoveLeader. openraft 0.9 has no leader transfer, so the leader goes
//! quiet (the [`Hold`]) until the followers' leader lease runs out and then
//! tells the transferee to campaign.

use std::time::Duration;

use super::actor::{Leader, RaftHandles};
use super::members::MemberError;
use super::types::{Node, NodeId};
use crate::peer::wire::{PeerRequest, PeerResponse};

/// Holds new proposals and read-index rounds while a leader transfer runs,
/// so no append or heartbeat refreshes the followers' leader lease.
#[derive(Default)]
pub struct Hold {
    on: std::cell::Cell<bool>,
    released: tokio::sync::Notify,
}

impl Hold {
    pub fn is_on(&self) -> bool {
        self.on.get()
    }

    pub(super) fn set(&self, on: bool) {
        self.on.set(on);
        if !on {
            self.released.notify_waiters();
        }
    }

    /// Resolves when a hold that is on now is released; never, if none is.
    pub(super) async fn released(&self) {
        if self.on.get() {
            self.released.notified().await;
        } else {
            std::future::pending::<()>().await;
        }
    }
}

/// Hands leadership to `target`. openraft 0.9 has no leader transfer, so
/// this leader goes quiet: new proposals and reads are held and heartbeats
/// stop once `target` has every entry; after the followers' leader lease
/// (the longest election timeout) has run out, `target` is told to
/// campaign, and wins with its up-to-date log before anyone else's timer
/// fires. Takes about two election timeouts.
pub(super) async fn move_leader(h: &RaftHandles, target: NodeId) -> Result<(), MemberError> {
    let (me, voter) = {
        let m = h.raft.metrics();
        let m = m.borrow();
        let voter = m
            .membership_config
            .membership()
            .voter_ids()
            .any(|v| v == target);
        (m.id, voter)
    };
    if h.leader() != Leader::Me {
        return Err(MemberError::not_leader_for_transfer());
    }
    if !voter {
        return Err(MemberError::bad_transferee());
    }
    if target == me {
        return Ok(());
    }
    let node = h
        .raft
        .metrics()
        .borrow()
        .membership_config
        .membership()
        .get_node(&target)
        .cloned()
        .ok_or_else(MemberError::bad_transferee)?;
    h.hold.set(true);
    let result = transfer(h, target, &node).await;
    h.raft.runtime_config().heartbeat(true);
    h.hold.set(false);
    result
}

async fn transfer(h: &RaftHandles, target: NodeId, node: &Node) -> Result<(), MemberError> {
    let timed_out = MemberError::transfer_timed_out;
    // 1. The target has every entry (it would lose the election otherwise).
    let mut rx = h.raft.metrics();
    let caught_up = glommio::timer::timeout(h.request_timeout, async {
        loop {
            {
                let m = rx.borrow_and_update();
                let last = m.last_log_index;
                let matched = m
                    .replication
                    .as_ref()
                    .and_then(|r| r.get(&target).cloned().flatten())
                    .map(|l| l.index);
                if m.current_leader != Some(m.id) {
                    return Ok(false);
                }
                if matched.is_some() && matched == last {
                    return Ok(true);
                }
            }
            if rx.changed().await.is_err() {
                return Ok(false);
            }
        }
    })
    .await;
    if !matches!(caught_up, Ok(true)) {
        return Err(timed_out());
    }
    // 2. Go quiet until the followers' lease on this leader has run out
    //    (openraft's leader lease is its election_timeout_max, which keel
    //    sets to --election-timeout; see node.rs).
    h.raft.runtime_config().heartbeat(false);
    let lease = h.election_timeout;
    glommio::timer::sleep(lease + LEASE_MARGIN).await;
    // 3. The target campaigns.
    match h
        .peers
        .call(target, node, &PeerRequest::TimeoutNow, h.request_timeout)
        .await
    {
        Ok(PeerResponse::Done) => {}
        _ => return Err(timed_out()),
    }
    let won = glommio::timer::timeout(h.election_timeout * 2, async {
        loop {
            if h.raft.metrics().borrow_and_update().current_leader == Some(target) {
                return Ok(true);
            }
            if rx.changed().await.is_err() {
                return Ok(false);
            }
        }
    })
    .await;
    if matches!(won, Ok(true)) {
        Ok(())
    } else {
        Err(timed_out())
    }
}

/// Before this member stops: if it leads, hands leadership to the voter
/// with the most of its log (etcd's TransferLeadership on shutdown), so the
/// cluster goes on within about one election timeout instead of waiting
/// out its followers' timers. Says what it did, for the log.
pub async fn hand_over(h: &RaftHandles) -> String {
    if h.leader() != Leader::Me {
        return "not the leader: nothing to hand over".into();
    }
    let target = {
        let m = h.raft.metrics();
        let m = m.borrow();
        let matched = |id: &NodeId| {
            m.replication
                .as_ref()
                .and_then(|r| r.get(id).cloned().flatten())
                .map(|l| l.index)
        };
        m.membership_config
            .membership()
            .voter_ids()
            .filter(|v| *v != m.id)
            .max_by_key(matched)
    };
    let Some(target) = target else {
        return "the only voter: nothing to hand over".into();
    };
    match move_leader(h, target).await {
        Ok(()) => format!("handed leadership to {target:x}"),
        Err(e) => format!("could not hand leadership to {target:x}: {}", e.message),
    }
}

/// Waited beyond the leader lease before the transferee campaigns.
const LEASE_MARGIN: Duration = Duration::from_millis(50);
