//! etcd's corruption checks, on HashKV (`keel_storage::mvcc::hash`):
//!
//! * `--experimental-initial-corrupt-check`: before serving, this member's
//!   hash at its revision is compared with its peers' at the same revision;
//!   a difference where the compaction revisions agree stops the member
//!   ("found data inconsistency with peers"), as etcd refuses to start.
//! * `--experimental-corrupt-check-time`: the leader compares, every so
//!   often, its hash with its followers' and raises the CORRUPT alarm for a
//!   member whose history cannot be its own (through raft, so every member
//!   refuses writes until it is disarmed).
//!
//! The verdicts are pure functions of the hashes (etcd 3.4's rules); the
//! tasks only gather them.

use std::rc::Rc;
use std::time::Duration;

use keel_proto::command::{AlarmCmd, Command};
use keel_proto::etcdserverpb as pb;
use tokio::sync::{mpsc, oneshot};

use crate::mvcc_actor::MvccMsg;
use crate::peer::conn::PeerClients;
use crate::peer::wire::{PeerRequest, PeerResponse};
use crate::raft::types::{NodeId, Raft};
use crate::service::ServerCtx;

/// A member's HashKV: the revision its header carried, its compaction
/// revision and the hash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KvHash {
    pub revision: i64,
    pub compact_revision: i64,
    pub hash: u32,
}

/// etcd's initial check: the peers whose hash differs from ours although
/// their compaction revision is ours.
pub fn initial_mismatches(own: &KvHash, peers: &[(NodeId, KvHash)]) -> Vec<NodeId> {
    peers
        .iter()
        .filter(|(_, p)| p.hash != own.hash && p.compact_revision == own.compact_revision)
        .map(|(id, _)| *id)
        .collect()
}

/// etcd's periodic check on the leader (`me`), given its hash before and
/// after asking the followers for theirs at `before.revision`: the member
/// to raise CORRUPT for, if any. The leader itself, if its hash changed
/// without its revision changing; a follower whose revision or compaction
/// is ahead of the leader's, or whose hash differs at the same compaction.
pub fn periodic_mismatch(
    me: NodeId,
    before: &KvHash,
    after: &KvHash,
    peers: &[(NodeId, KvHash)],
) -> Option<NodeId> {
    if after.hash != before.hash
        && after.revision == before.revision
        && after.compact_revision == before.compact_revision
    {
        return Some(me);
    }
    peers.iter().find_map(|(id, p)| {
        let bad = p.revision > after.revision
            || p.compact_revision > after.compact_revision
            || (p.compact_revision == before.compact_revision && p.hash != before.hash);
        bad.then_some(*id)
    })
}

/// This member's HashKV at `revision` (0: the current one).
async fn own_hash(mvcc: &mpsc::Sender<MvccMsg>, revision: i64) -> Result<KvHash, String> {
    let (reply, answer) = oneshot::channel();
    mvcc.send(MvccMsg::HashKv { revision, reply })
        .await
        .map_err(|_| "the MVCC actor stopped".to_string())?;
    let resp = answer
        .await
        .map_err(|_| "the MVCC actor stopped".to_string())?
        .map_err(|e| crate::service::kv::read_error(e).message)?;
    Ok(KvHash {
        revision: resp.header.map_or(0, |h| h.revision),
        compact_revision: resp.compact_revision,
        hash: resp.hash,
    })
}

/// How long one peer may take to answer a hash request (it reads every
/// version it holds).
const PEER_HASH_TIMEOUT: Duration = Duration::from_secs(10);

/// The other members' hashes at `revision`; those that do not answer (or
/// cannot hash that revision) are logged and left out, as etcd does.
async fn peer_hashes(
    peers: &PeerClients,
    raft: &Raft,
    me: NodeId,
    revision: i64,
) -> Vec<(NodeId, KvHash)> {
    let nodes: Vec<_> = {
        let m = raft.metrics().borrow().clone();
        m.membership_config
            .membership()
            .nodes()
            .filter(|(id, _)| **id != me)
            .map(|(id, n)| (*id, n.clone()))
            .collect()
    };
    let mut out = Vec::new();
    for (id, node) in nodes {
        let req = PeerRequest::HashKv { revision };
        match peers.call(id, &node, &req, PEER_HASH_TIMEOUT).await {
            Ok(PeerResponse::HashKv {
                revision,
                compact_revision,
                hash,
            }) => out.push((
                id,
                KvHash {
                    revision,
                    compact_revision,
                    hash,
                },
            )),
            Ok(PeerResponse::Failed { reason }) => {
                tracing::warn!(
                    peer = format!("{id:x}"),
                    revision,
                    "cannot fetch hash from remote peer: {reason}"
                )
            }
            Ok(other) => tracing::warn!(
                peer = format!("{id:x}"),
                "unexpected answer to HashKV: {other:?}"
            ),
            Err(e) => tracing::warn!(
                peer = format!("{id:x}"),
                "cannot fetch hash from remote peer: {e}"
            ),
        }
    }
    out
}

/// `--experimental-initial-corrupt-check`: Err (etcd's message) if a peer
/// holds a different history at this member's revision.
pub async fn initial_check(
    mvcc: &mpsc::Sender<MvccMsg>,
    peers: &PeerClients,
    raft: &Raft,
    me: NodeId,
) -> Result<(), String> {
    tracing::info!(
        local_member_id = format!("{me:x}"),
        "starting initial corruption check"
    );
    let own = own_hash(mvcc, 0).await?;
    let theirs = peer_hashes(peers, raft, me, own.revision).await;
    let mismatched = initial_mismatches(&own, &theirs);
    for id in &mismatched {
        tracing::warn!(
            local_member_id = format!("{me:x}"),
            remote_peer_id = format!("{id:x}"),
            revision = own.revision,
            compact_revision = own.compact_revision,
            "found different hash values from remote peer"
        );
    }
    if !mismatched.is_empty() {
        return Err(format!("{me:x} found data inconsistency with peers"));
    }
    tracing::info!(
        local_member_id = format!("{me:x}"),
        peers = theirs.len(),
        "initial corruption checking passed; no corruption"
    );
    Ok(())
}

/// `--experimental-corrupt-check-time`: while this member leads, compares
/// hashes every `period` and raises CORRUPT for a member that fails.
pub async fn monitor(
    period: Duration,
    ctx: Rc<ServerCtx>,
    peers: Rc<PeerClients>,
    raft: Raft,
    me: NodeId,
) {
    loop {
        glommio::timer::sleep(period).await;
        let leads = {
            let m = raft.metrics().borrow().clone();
            m.current_leader == Some(me)
        };
        if !leads {
            continue;
        }
        let Ok(before) = own_hash(&ctx.mvcc, 0).await else {
            continue;
        };
        let theirs = peer_hashes(&peers, &raft, me, before.revision).await;
        let Ok(after) = own_hash(&ctx.mvcc, 0).await else {
            continue;
        };
        let Some(corrupt) = periodic_mismatch(me, &before, &after, &theirs) else {
            continue;
        };
        tracing::error!(
            member_id = format!("{corrupt:x}"),
            revision = before.revision,
            "found data inconsistency: raising the CORRUPT alarm"
        );
        let raise = Command::Alarm(AlarmCmd {
            activate: true,
            member_id: corrupt,
            alarm: pb::AlarmType::Corrupt as i32,
        });
        if let Err(e) = crate::service::kv::propose(&ctx, raise, 0).await {
            tracing::warn!("raising the CORRUPT alarm: {}", e.message);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(revision: i64, compact_revision: i64, hash: u32) -> KvHash {
        KvHash {
            revision,
            compact_revision,
            hash,
        }
    }

    #[test]
    fn the_initial_check_counts_differences_at_the_same_compaction() {
        let own = h(10, 4, 7);
        assert!(initial_mismatches(&own, &[(2, h(12, 4, 7)), (3, h(10, 4, 7))]).is_empty());
        assert_eq!(
            initial_mismatches(&own, &[(2, h(12, 4, 8)), (3, h(10, 4, 7))]),
            vec![2]
        );
        // Another compaction revision: the hashes cannot be compared.
        assert!(initial_mismatches(&own, &[(2, h(12, 6, 8))]).is_empty());
    }

    #[test]
    fn the_periodic_check_follows_etcd() {
        let leader = h(10, 4, 7);
        assert_eq!(
            periodic_mismatch(1, &leader, &leader, &[(2, h(10, 4, 7))]),
            None
        );
        // A follower behind (its header is older) with the same hash at
        // the leader's revision is fine.
        assert_eq!(
            periodic_mismatch(1, &leader, &leader, &[(2, h(9, 4, 7))]),
            None
        );
        assert_eq!(
            periodic_mismatch(1, &leader, &leader, &[(2, h(10, 4, 9))]),
            Some(2)
        );
        assert_eq!(
            periodic_mismatch(1, &leader, &leader, &[(2, h(11, 4, 7))]),
            Some(2)
        );
        assert_eq!(
            periodic_mismatch(1, &leader, &leader, &[(2, h(10, 5, 7))]),
            Some(2)
        );
        // The leader's own hash moved without a new revision.
        assert_eq!(periodic_mismatch(1, &leader, &h(10, 4, 8), &[]), Some(1));
        // It moved with a new revision: nothing to say.
        assert_eq!(periodic_mismatch(1, &leader, &h(11, 4, 8), &[]), None);
    }
}
