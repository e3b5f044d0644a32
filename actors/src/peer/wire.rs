//! The messages members exchange, archived with rkyv, one per frame.
//!
//! A connection opens with [`PeerRequest::Hello`], naming the cluster and
//! both members; after that the dialing side sends requests and reads one
//! response for each, in order. A snapshot is the exception: `SnapshotBegin`
//! is followed by its chunks without waiting, and answered once at the end.
//!
//! Entry payloads travel as the bytes the leader's WAL holds (an archived
//! command batch, or an encoded membership) and go into the follower's WAL
//! as they are.

use bytes::Bytes;
use keel_proto::etcdserverpb as pb;
use keel_storage::auth::AuthError;
use keel_storage::mvcc::{ApplyOutcome, AuthAnswer, CommandResponse, MvccError};
use openraft::raft::AppendEntriesResponse;
use openraft::EntryPayload;
use prost::Message;
use rkyv::{Archive, Deserialize, Serialize};

use crate::raft::codec::{decode_membership, vote_of, NO_LEADER_RECORDED, NO_VOTE};
use crate::raft::log_store::{
    aligned_bytes, payload_of, PAYLOAD_BLANK, PAYLOAD_MEMBERSHIP, PAYLOAD_NORMAL,
};
use crate::raft::types::{Entry, LogId, Node, NodeId, Proposal, Vote};

#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub struct WireLogId {
    pub term: u64,
    pub leader: u64,
    pub index: u64,
}

#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub struct WireVote {
    pub term: u64,
    pub node_id: u64,
    pub committed: bool,
}

#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct WireEntry {
    pub log_id: WireLogId,
    /// `PAYLOAD_*` of the WAL's entry records.
    pub kind: u8,
    pub payload: Vec<u8>,
}

#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
pub struct WireNode {
    pub name: String,
    pub peer_urls: Vec<String>,
    pub client_urls: Vec<String>,
}

/// A membership operation, executed by the leader.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub enum MemberChange {
    Add {
        id: u64,
        node: WireNode,
        learner: bool,
    },
    Remove {
        id: u64,
    },
    /// New peer URLs (etcd's MemberUpdate).
    UpdatePeers {
        id: u64,
        peer_urls: Vec<String>,
    },
    Promote {
        id: u64,
    },
    /// A started member announces its name and client URLs.
    Publish {
        id: u64,
        name: String,
        client_urls: Vec<String>,
    },
}

#[derive(Archive, Serialize, Deserialize, Debug)]
pub enum PeerRequest {
    /// First frame of every connection. `cluster_id` 0 asks only for the
    /// membership (a member joining an existing cluster learns its ids so).
    Hello {
        cluster_id: u64,
        from: u64,
        to: u64,
    },
    AppendEntries {
        vote: WireVote,
        prev_log_id: Option<WireLogId>,
        leader_commit: Option<WireLogId>,
        entries: Vec<WireEntry>,
    },
    Vote {
        vote: WireVote,
        last_log_id: Option<WireLogId>,
    },
    /// Starts a snapshot of `size` bytes; its chunks follow.
    SnapshotBegin {
        vote: WireVote,
        snapshot_id: String,
        /// `codec::encode_snapshot_meta`.
        meta: Vec<u8>,
        size: u64,
    },
    SnapshotChunk {
        data: Vec<u8>,
    },
    /// Clients' commands (archived `Command`s) sent to the leader by a follower.
    Forward {
        commands: Vec<Vec<u8>>,
    },
    /// A follower asks the leader for a linearizable read index.
    ReadIndex,
    Members,
    ChangeMembers(MemberChange),
    /// The leader hands over: campaign now.
    TimeoutNow,
    /// A keep-alive forwarded to the leader.
    LeaseRenew {
        id: i64,
    },
    LeaseTimeToLive {
        id: i64,
        keys: bool,
    },
    /// The member's HashKV at `revision` (corruption checks).
    HashKv {
        revision: i64,
    },
}

/// How a forwarded command ended.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub enum WireOutcome {
    /// Applied at log index `index`: the response (`kind` names its type),
    /// or etcd's MVCC error code.
    Applied {
        index: u64,
        kind: u8,
        body: Vec<u8>,
    },
    Failed {
        index: u64,
        error: u8,
    },
    NotLeader,
    Stopped,
}

#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub enum WireAppend {
    Success,
    PartialSuccess(Option<WireLogId>),
    Conflict,
    HigherVote(WireVote),
}

#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub enum PeerResponse {
    Hello {
        cluster_id: u64,
    },
    /// The connection is refused (another cluster, an unknown member).
    Rejected {
        reason: String,
    },
    AppendEntries(WireAppend),
    Vote {
        vote: WireVote,
        granted: bool,
        last_log_id: Option<WireLogId>,
    },
    Snapshot {
        vote: WireVote,
    },
    Forwarded {
        outcomes: Vec<WireOutcome>,
    },
    ReadIndex {
        index: u64,
    },
    Members {
        cluster_id: u64,
        leader: Option<u64>,
        /// `codec::encode_membership`.
        membership: Vec<u8>,
    },
    /// This member does not lead (`leader` is the one it knows of).
    NotLeader {
        leader: Option<u64>,
    },
    /// A membership change was refused: a gRPC code and etcd's message.
    MemberError {
        code: u8,
        message: String,
    },
    /// Done, nothing to report.
    Done,
    LeaseRenewed {
        ttl: i64,
    },
    LeaseTimeToLive {
        remaining: i64,
        granted: i64,
        keys: Vec<Vec<u8>>,
    },
    LeaseNotFound,
    /// HashKV: the member's revision (its header's), compaction and hash.
    HashKv {
        revision: i64,
        compact_revision: i64,
        hash: u32,
    },
    /// The request failed on the remote side (raft stopped, I/O error).
    Failed {
        reason: String,
    },
}

impl PeerRequest {
    /// Whether sending this request twice does what sending it once does,
    /// so a call may resend it when its connection broke before an answer:
    /// raft's own RPCs and questions. Not forwarded client commands,
    /// membership changes, keep-alives or a hand-over.
    pub fn may_repeat(&self) -> bool {
        matches!(
            self,
            PeerRequest::AppendEntries { .. }
                | PeerRequest::Vote { .. }
                | PeerRequest::ReadIndex
                | PeerRequest::Members
                | PeerRequest::LeaseTimeToLive { .. }
                | PeerRequest::HashKv { .. }
        )
    }
}

pub fn log_id_to_wire(l: &LogId) -> WireLogId {
    WireLogId {
        term: l.leader_id.term,
        leader: NO_LEADER_RECORDED,
        index: l.index,
    }
}

pub fn log_id_from_wire(l: &WireLogId) -> LogId {
    openraft::LogId::new(openraft::CommittedLeaderId::new(l.term, l.leader), l.index)
}

pub fn vote_to_wire(v: &Vote) -> WireVote {
    WireVote {
        term: v.leader_id.term,
        node_id: v.leader_id.voted_for().unwrap_or(NO_VOTE),
        committed: v.committed,
    }
}

pub fn vote_from_wire(v: &WireVote) -> Vote {
    vote_of(v.term, v.node_id, v.committed)
}

pub fn node_to_wire(n: &Node) -> WireNode {
    WireNode {
        name: n.name.clone(),
        peer_urls: n.peer_urls.clone(),
        client_urls: n.client_urls.clone(),
    }
}

pub fn node_from_wire(n: WireNode) -> Node {
    Node {
        name: n.name,
        peer_urls: n.peer_urls,
        client_urls: n.client_urls,
    }
}

pub fn entry_to_wire(e: &Entry) -> WireEntry {
    let (kind, payload) = payload_of(e);
    WireEntry {
        log_id: log_id_to_wire(&e.log_id),
        kind,
        payload: payload.to_vec(),
    }
}

/// Rebuilds an entry from its archived form; the payload is copied once,
/// into the aligned buffer the apply actor reads commands from in place.
pub fn entry_from_archived(e: &ArchivedWireEntry) -> Result<Entry, String> {
    let log_id = openraft::LogId::new(
        openraft::CommittedLeaderId::new(e.log_id.term.to_native(), e.log_id.leader.to_native()),
        e.log_id.index.to_native(),
    );
    let payload = match e.kind {
        PAYLOAD_BLANK => EntryPayload::Blank,
        PAYLOAD_NORMAL => EntryPayload::Normal(Proposal::from_log(aligned_bytes(&e.payload))),
        PAYLOAD_MEMBERSHIP => EntryPayload::Membership(decode_membership(&e.payload)?),
        k => return Err(format!("unknown entry payload kind {k}")),
    };
    Ok(Entry { log_id, payload })
}

pub fn append_to_wire(r: &AppendEntriesResponse<NodeId>) -> WireAppend {
    match r {
        AppendEntriesResponse::Success => WireAppend::Success,
        AppendEntriesResponse::PartialSuccess(l) => {
            WireAppend::PartialSuccess(l.as_ref().map(log_id_to_wire))
        }
        AppendEntriesResponse::Conflict => WireAppend::Conflict,
        AppendEntriesResponse::HigherVote(v) => WireAppend::HigherVote(vote_to_wire(v)),
    }
}

pub fn append_from_wire(r: &WireAppend) -> AppendEntriesResponse<NodeId> {
    match r {
        WireAppend::Success => AppendEntriesResponse::Success,
        WireAppend::PartialSuccess(l) => {
            AppendEntriesResponse::PartialSuccess(l.as_ref().map(log_id_from_wire))
        }
        WireAppend::Conflict => AppendEntriesResponse::Conflict,
        WireAppend::HigherVote(v) => AppendEntriesResponse::HigherVote(vote_from_wire(v)),
    }
}

const KIND_PUT: u8 = 0;
const KIND_DELETE: u8 = 1;
const KIND_TXN: u8 = 2;
const KIND_COMPACT: u8 = 3;
const KIND_LEASE_GRANT: u8 = 4;
const KIND_LEASE_REVOKE: u8 = 5;
const KIND_LEASE_CHECKPOINT: u8 = 6;
const KIND_ALARM: u8 = 7;
/// Auth answers: `AuthAnswer::Done` (an AuthEnableResponse carries the
/// header), `Authenticated` (an AuthUserGetResponse whose roles are the
/// name and the token prefix), `Names` (an AuthUserListResponse), `Perms`
/// (an AuthRoleGetResponse).
const KIND_AUTH_DONE: u8 = 8;
const KIND_AUTH_AUTHENTICATED: u8 = 9;
const KIND_AUTH_NAMES: u8 = 10;
const KIND_AUTH_PERMS: u8 = 11;

/// Auth errors on the wire: this plus their place in `AuthError::ALL`.
const AUTH_ERROR_BASE: u8 = 64;

/// MVCC errors on the wire: the index is the code.
const MVCC_ERRORS: [MvccError; 7] = [
    MvccError::Compacted,
    MvccError::FutureRev,
    MvccError::KeyNotFound,
    MvccError::LeaseNotFound,
    MvccError::LeaseExists,
    MvccError::NoSpace,
    MvccError::Corrupt,
];

fn mvcc_error_code(e: MvccError) -> u8 {
    if let MvccError::Auth(a) = e {
        let at = AuthError::ALL.iter().position(|x| *x == a);
        return AUTH_ERROR_BASE + at.expect("every AuthError is in the table") as u8;
    }
    MVCC_ERRORS
        .iter()
        .position(|x| *x == e)
        .expect("every MvccError is in the table") as u8
}

pub fn outcome_to_wire(index: u64, o: &ApplyOutcome) -> WireOutcome {
    match o {
        Ok(r) => {
            let (kind, body) = match r {
                CommandResponse::Put(r) => (KIND_PUT, r.encode_to_vec()),
                CommandResponse::DeleteRange(r) => (KIND_DELETE, r.encode_to_vec()),
                CommandResponse::Txn(r) => (KIND_TXN, r.encode_to_vec()),
                CommandResponse::Compact(r) => (KIND_COMPACT, r.encode_to_vec()),
                CommandResponse::LeaseGrant(r) => (KIND_LEASE_GRANT, r.encode_to_vec()),
                CommandResponse::LeaseRevoke(r) => (KIND_LEASE_REVOKE, r.encode_to_vec()),
                CommandResponse::LeaseCheckpoint(r) => (KIND_LEASE_CHECKPOINT, r.encode_to_vec()),
                CommandResponse::Alarm(r) => (KIND_ALARM, r.encode_to_vec()),
                CommandResponse::Auth { header, answer } => auth_to_wire(header, answer),
            };
            WireOutcome::Applied { index, kind, body }
        }
        Err(e) => WireOutcome::Failed {
            index,
            error: mvcc_error_code(*e),
        },
    }
}

/// The applied index and outcome of a forwarded command.
pub fn outcome_from_wire(kind: u8, body: &[u8]) -> Result<CommandResponse, String> {
    let body = Bytes::copy_from_slice(body);
    let bad = |e: prost::DecodeError| e.to_string();
    Ok(match kind {
        KIND_PUT => CommandResponse::Put(pb::PutResponse::decode(body).map_err(bad)?),
        KIND_DELETE => {
            CommandResponse::DeleteRange(pb::DeleteRangeResponse::decode(body).map_err(bad)?)
        }
        KIND_TXN => CommandResponse::Txn(pb::TxnResponse::decode(body).map_err(bad)?),
        KIND_COMPACT => {
            CommandResponse::Compact(pb::CompactionResponse::decode(body).map_err(bad)?)
        }
        KIND_LEASE_GRANT => {
            CommandResponse::LeaseGrant(pb::LeaseGrantResponse::decode(body).map_err(bad)?)
        }
        KIND_LEASE_REVOKE => {
            CommandResponse::LeaseRevoke(pb::LeaseRevokeResponse::decode(body).map_err(bad)?)
        }
        KIND_LEASE_CHECKPOINT => CommandResponse::LeaseCheckpoint(
            pb::LeaseCheckpointResponse::decode(body).map_err(bad)?,
        ),
        KIND_ALARM => CommandResponse::Alarm(pb::AlarmResponse::decode(body).map_err(bad)?),
        KIND_AUTH_DONE => {
            let r = pb::AuthEnableResponse::decode(body).map_err(bad)?;
            auth_response(r.header, AuthAnswer::Done)
        }
        KIND_AUTH_AUTHENTICATED => {
            let r = pb::AuthUserGetResponse::decode(body).map_err(bad)?;
            let [name, token_prefix]: [String; 2] = r
                .roles
                .try_into()
                .map_err(|_| "malformed Authenticate answer".to_string())?;
            auth_response(r.header, AuthAnswer::Authenticated { name, token_prefix })
        }
        KIND_AUTH_NAMES => {
            let r = pb::AuthUserListResponse::decode(body).map_err(bad)?;
            auth_response(r.header, AuthAnswer::Names(r.users))
        }
        KIND_AUTH_PERMS => {
            let r = pb::AuthRoleGetResponse::decode(body).map_err(bad)?;
            auth_response(r.header, AuthAnswer::Perms(r.perm))
        }
        k => return Err(format!("unknown response kind {k}")),
    })
}

fn auth_response(header: Option<pb::ResponseHeader>, answer: AuthAnswer) -> CommandResponse {
    CommandResponse::Auth { header, answer }
}

fn auth_to_wire(header: &Option<pb::ResponseHeader>, answer: &AuthAnswer) -> (u8, Vec<u8>) {
    let header = *header;
    match answer {
        AuthAnswer::Done => (
            KIND_AUTH_DONE,
            pb::AuthEnableResponse { header }.encode_to_vec(),
        ),
        AuthAnswer::Authenticated { name, token_prefix } => (
            KIND_AUTH_AUTHENTICATED,
            pb::AuthUserGetResponse {
                header,
                roles: vec![name.clone(), token_prefix.clone()],
            }
            .encode_to_vec(),
        ),
        AuthAnswer::Names(users) => (
            KIND_AUTH_NAMES,
            pb::AuthUserListResponse {
                header,
                users: users.clone(),
            }
            .encode_to_vec(),
        ),
        AuthAnswer::Perms(perm) => (
            KIND_AUTH_PERMS,
            pb::AuthRoleGetResponse {
                header,
                perm: perm.clone(),
            }
            .encode_to_vec(),
        ),
    }
}

pub fn failed_from_wire(error: u8) -> Result<MvccError, String> {
    if let Some(at) = error.checked_sub(AUTH_ERROR_BASE) {
        return AuthError::ALL
            .get(at as usize)
            .map(|a| MvccError::Auth(*a))
            .ok_or_else(|| format!("unknown auth error code {error}"));
    }
    MVCC_ERRORS
        .get(error as usize)
        .copied()
        .ok_or_else(|| format!("unknown mvcc error code {error}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(req: &PeerRequest) -> PeerRequest {
        let bytes = rkyv::to_bytes::<rkyv::rancor::Error>(req).unwrap();
        rkyv::from_bytes::<PeerRequest, rkyv::rancor::Error>(&bytes).unwrap()
    }

    #[test]
    fn entries_keep_their_payload_bytes() {
        let batch = keel_proto::batch::encode(&[Bytes::from_static(b"0123456789abcdef")]);
        let e = Entry {
            log_id: log_id_from_wire(&WireLogId {
                term: 2,
                leader: 9,
                index: 17,
            }),
            payload: EntryPayload::Normal(Proposal::from_log(batch.clone())),
        };
        let req = PeerRequest::AppendEntries {
            vote: vote_to_wire(&openraft::Vote::new_committed(2, 9)),
            prev_log_id: None,
            leader_commit: None,
            entries: vec![entry_to_wire(&e)],
        };
        let bytes = rkyv::to_bytes::<rkyv::rancor::Error>(&req).unwrap();
        let archived = rkyv::access::<ArchivedPeerRequest, rkyv::rancor::Error>(&bytes).unwrap();
        let ArchivedPeerRequest::AppendEntries { entries, .. } = archived else {
            panic!("wrong variant");
        };
        let back = entry_from_archived(&entries[0]).unwrap();
        assert_eq!(back.log_id, e.log_id);
        let EntryPayload::Normal(p) = back.payload else {
            panic!("wrong payload");
        };
        assert_eq!(p.batch, batch);
        assert_eq!(p.batch.as_ptr() as usize % 16, 0);
        assert!(matches!(
            round_trip(&req),
            PeerRequest::AppendEntries { .. }
        ));
    }

    #[test]
    fn every_mvcc_error_has_a_code() {
        for e in MVCC_ERRORS {
            // Exhaustive: a new MvccError does not compile until it is listed.
            match e {
                MvccError::Compacted
                | MvccError::FutureRev
                | MvccError::KeyNotFound
                | MvccError::LeaseNotFound
                | MvccError::LeaseExists
                | MvccError::NoSpace
                | MvccError::Corrupt => {}
                // Sent by their place in AuthError::ALL.
                MvccError::Auth(_) => {}
            }
            assert_eq!(failed_from_wire(mvcc_error_code(e)), Ok(e));
        }
        assert_eq!(MVCC_ERRORS.len(), 7);
        for a in AuthError::ALL {
            let e = MvccError::Auth(a);
            assert_eq!(failed_from_wire(mvcc_error_code(e)), Ok(e));
        }
        assert!(failed_from_wire(AUTH_ERROR_BASE + AuthError::ALL.len() as u8).is_err());
    }

    #[test]
    fn outcomes_round_trip() {
        let put = CommandResponse::Put(pb::PutResponse {
            header: Some(pb::ResponseHeader {
                revision: 5,
                ..Default::default()
            }),
            prev_kv: None,
        });
        let WireOutcome::Applied { index, kind, body } = outcome_to_wire(3, &Ok(put.clone()))
        else {
            panic!("not applied");
        };
        assert_eq!(index, 3);
        assert_eq!(outcome_from_wire(kind, &body).unwrap(), put);
        let WireOutcome::Failed { error, .. } = outcome_to_wire(4, &Err(MvccError::Compacted))
        else {
            panic!("not failed");
        };
        assert_eq!(failed_from_wire(error).unwrap(), MvccError::Compacted);
        assert!(outcome_from_wire(99, &[]).is_err());
        let header = Some(pb::ResponseHeader {
            revision: 9,
            ..Default::default()
        });
        for answer in [
            AuthAnswer::Done,
            AuthAnswer::Authenticated {
                name: "alice".into(),
                token_prefix: "abcdef".into(),
            },
            AuthAnswer::Names(vec!["a".into(), "b".into()]),
            AuthAnswer::Perms(vec![keel_proto::authpb::Permission {
                perm_type: 2,
                key: Bytes::from_static(b"k"),
                range_end: Bytes::from_static(b"l"),
            }]),
        ] {
            let r = CommandResponse::Auth { header, answer };
            let WireOutcome::Applied { kind, body, .. } = outcome_to_wire(5, &Ok(r.clone())) else {
                panic!("not applied");
            };
            assert_eq!(outcome_from_wire(kind, &body).unwrap(), r);
        }
    }
}
