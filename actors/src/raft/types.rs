//! openraft type configuration and the proposal / reply types.

use std::cell::Cell;
use std::fmt;
use std::rc::Rc;

use bytes::Bytes;
use keel_storage::mvcc::ApplyOutcome;

use crate::runtime::GlommioRuntime;

pub type NodeId = u64;
pub type Entry = openraft::Entry<TypeConfig>;
pub type LogId = openraft::LogId<NodeId>;
pub type Vote = openraft::Vote<NodeId>;
pub type Membership = openraft::Membership<NodeId, Node>;
pub type StoredMembership = openraft::StoredMembership<NodeId, Node>;
pub type SnapshotMeta = openraft::SnapshotMeta<NodeId, Node>;
pub type StorageError = openraft::StorageError<NodeId>;
pub type Raft = openraft::Raft<TypeConfig>;

/// What the cluster knows about a member besides its id: etcd's `Member`.
/// Client URLs are empty until the member has started and published them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Node {
    pub name: String,
    pub peer_urls: Vec<String>,
    pub client_urls: Vec<String>,
}

impl fmt::Display for Node {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}({})", self.name, self.peer_urls.join(","))
    }
}

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
    type Responder = openraft::raft::responder::OneshotResponder<TypeConfig>;
}

/// What applying an entry produced: one outcome per command of its batch
/// (none for raft's own entries: blank, membership).
pub type AppliedResult = Vec<ApplyOutcome>;

/// Why a proposal produced no applied result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProposeError {
    /// This member is not the leader (`leader` is the one it knows of).
    NotLeader { leader: Option<NodeId> },
    /// The command went to a leader that stopped answering: it may or may
    /// not have been applied.
    LeaderChanged,
    /// The raft group stopped (shutdown or a fatal storage error).
    Stopped,
}

/// A command's outcome and the log index it was applied at.
#[derive(Debug, Clone, PartialEq)]
pub struct Applied {
    pub index: u64,
    pub outcome: ApplyOutcome,
}

/// The reply a reactor awaits for one proposed command.
pub type WriteReply = Result<Applied, ProposeError>;
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

/// A batch of clients' commands as a raft entry's payload: an encoded
/// batch (see `keel_proto::batch`).
#[derive(Clone)]
pub struct Proposal {
    pub batch: Bytes,
}

impl Proposal {
    pub fn from_log(batch: Bytes) -> Proposal {
        Proposal { batch }
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

/// A snapshot on disk (openraft's `SnapshotData`).
#[derive(Debug, Clone)]
pub struct SnapshotFile {
    pub path: std::path::PathBuf,
}
