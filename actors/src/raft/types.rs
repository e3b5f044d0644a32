//! openraft type configuration and the proposal / reply types.

use std::cell::Cell;
use std::fmt;
use std::rc::Rc;

use bytes::Bytes;
use keel_storage::mvcc::ApplyOutcome;
use openraft::raft::responder::Responder;
use openraft::raft::ClientWriteResult;

use crate::runtime::GlommioRuntime;

pub type NodeId = u64;
pub type Node = openraft::BasicNode;
pub type Entry = openraft::Entry<TypeConfig>;
pub type LogId = openraft::LogId<NodeId>;
pub type Vote = openraft::Vote<NodeId>;
pub type Membership = openraft::Membership<NodeId, Node>;
pub type StoredMembership = openraft::StoredMembership<NodeId, Node>;
pub type SnapshotMeta = openraft::SnapshotMeta<NodeId, Node>;
pub type StorageError = openraft::StorageError<NodeId>;
pub type Raft = openraft::Raft<TypeConfig>;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct TypeConfig;

impl openraft::RaftTypeConfig for TypeConfig {
    type D = Proposal;
    type R = AppliedResult;
    type NodeId = NodeId;
    type Node = Node;
    type Entry = Entry;
    type SnapshotData = SnapshotFile;
    type AsyncRuntime = GlommioRuntime;
    type Responder = ReplyResponder;
}

/// What applying an entry produced: one outcome per command of its batch
/// (none for raft's own entries: blank, membership).
pub type AppliedResult = Vec<ApplyOutcome>;

/// Why a proposal produced no applied result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProposeError {
    /// This member is not the leader (`leader` is the one it knows of).
    NotLeader { leader: Option<NodeId> },
    /// The raft group stopped (shutdown or a fatal storage error).
    Stopped,
}

/// The reply a reactor awaits for one proposed command.
pub type WriteReply = Result<ApplyOutcome, ProposeError>;
pub type ReplyTx = tokio::sync::oneshot::Sender<WriteReply>;

/// Counts batches between proposal and apply, so the raft actor keeps a
/// bounded number in flight and gathers everything else into the next one.
#[derive(Default)]
pub struct InflightGate {
    inflight: Cell<usize>,
    freed: tokio::sync::Notify,
}

impl InflightGate {
    pub fn inflight(&self) -> usize {
        self.inflight.get()
    }

    pub fn acquire(self: &Rc<Self>) -> InflightPermit {
        self.inflight.set(self.inflight.get() + 1);
        InflightPermit(self.clone())
    }

    /// Resolves after a permit is released (at once if one was released
    /// since the last call).
    pub async fn freed(&self) {
        self.freed.notified().await;
    }
}

/// Held by a batch until it is applied (or dropped on failure).
pub struct InflightPermit(Rc<InflightGate>);

impl Drop for InflightPermit {
    fn drop(&mut self) {
        self.0.inflight.set(self.0.inflight.get() - 1);
        self.0.freed.notify_one();
    }
}

/// A batch of clients' commands on its way into the log: the encoded batch
/// (see `keel_proto::batch`) and, until openraft takes them out, the
/// channels the replies go to, one per command.
pub struct Proposal {
    pub batch: Bytes,
    pub replies: Vec<ReplyTx>,
    pub permit: Option<InflightPermit>,
}

impl Proposal {
    /// A proposal read back from the log: the replies went with the original.
    pub fn from_log(batch: Bytes) -> Proposal {
        Proposal {
            batch,
            replies: Vec::new(),
            permit: None,
        }
    }
}

/// A copy carries the commands, never the reply channels: only the original
/// proposal's waiters may be answered.
impl Clone for Proposal {
    fn clone(&self) -> Self {
        Proposal::from_log(self.batch.clone())
    }
}

impl fmt::Debug for Proposal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Proposal({} bytes)", self.batch.len())
    }
}

impl fmt::Display for Proposal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// Answers a proposal's waiters directly from where openraft completes it,
/// without a hop through the raft actor.
pub struct ReplyResponder {
    replies: Vec<ReplyTx>,
    _permit: Option<InflightPermit>,
}

impl Responder<TypeConfig> for ReplyResponder {
    type Receiver = ();

    fn from_app_data(mut app_data: Proposal) -> (Proposal, Self, ()) {
        let responder = ReplyResponder {
            replies: std::mem::take(&mut app_data.replies),
            _permit: app_data.permit.take(),
        };
        (app_data, responder, ())
    }

    fn send(self, result: ClientWriteResult<TypeConfig>) {
        let error = match result {
            Ok(resp) => {
                let mut outcomes = resp.data.into_iter();
                for tx in self.replies {
                    // A waiter may have given up (client gone); nothing to do then.
                    let _ = tx.send(outcomes.next().ok_or(ProposeError::Stopped));
                }
                return;
            }
            Err(openraft::error::ClientWriteError::ForwardToLeader(f)) => ProposeError::NotLeader {
                leader: f.leader_id,
            },
            Err(openraft::error::ClientWriteError::ChangeMembershipError(_)) => {
                ProposeError::Stopped
            }
        };
        for tx in self.replies {
            let _ = tx.send(Err(error.clone()));
        }
    }
}

/// A snapshot on disk (openraft's `SnapshotData`).
#[derive(Debug, Clone)]
pub struct SnapshotFile {
    pub path: std::path::PathBuf,
}
