//! openraft type configuration and the proposal / reply types.

use std::fmt;

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

/// What applying an entry produced: a command's outcome, or nothing for
/// raft's own entries (blank, membership).
pub type AppliedResult = Option<ApplyOutcome>;

/// Why a proposal produced no applied result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProposeError {
    /// This member is not the leader (`leader` is the one it knows of).
    NotLeader { leader: Option<NodeId> },
    /// The raft group stopped (shutdown or a fatal storage error).
    Stopped,
}

/// The reply a reactor awaits for a proposal.
pub type WriteReply = Result<AppliedResult, ProposeError>;
pub type ReplyTx = tokio::sync::oneshot::Sender<WriteReply>;

/// A client's command on its way into the log: the archived command bytes
/// (16-byte aligned, see `keel_proto::command`) and, until openraft takes it
/// out, the channel its reply goes to.
pub struct Proposal {
    pub command: Bytes,
    pub reply: Option<ReplyTx>,
}

impl Proposal {
    pub fn new(command: Bytes, reply: ReplyTx) -> Proposal {
        Proposal {
            command,
            reply: Some(reply),
        }
    }

    /// A proposal read back from the log: the reply went with the original.
    pub fn from_log(command: Bytes) -> Proposal {
        Proposal {
            command,
            reply: None,
        }
    }
}

/// A copy carries the command, never the reply channel: only the original
/// proposal's waiter may be answered.
impl Clone for Proposal {
    fn clone(&self) -> Self {
        Proposal::from_log(self.command.clone())
    }
}

impl fmt::Debug for Proposal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Proposal({} bytes)", self.command.len())
    }
}

impl fmt::Display for Proposal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// Answers a proposal's waiter directly from where openraft completes it,
/// without a hop through the raft actor.
pub struct ReplyResponder(Option<ReplyTx>);

impl Responder<TypeConfig> for ReplyResponder {
    type Receiver = ();

    fn from_app_data(mut app_data: Proposal) -> (Proposal, Self, ()) {
        let reply = app_data.reply.take();
        (app_data, ReplyResponder(reply), ())
    }

    fn send(self, result: ClientWriteResult<TypeConfig>) {
        let Some(tx) = self.0 else { return };
        let reply = match result {
            Ok(resp) => Ok(resp.data),
            Err(openraft::error::ClientWriteError::ForwardToLeader(f)) => {
                Err(ProposeError::NotLeader {
                    leader: f.leader_id,
                })
            }
            Err(openraft::error::ClientWriteError::ChangeMembershipError(_)) => {
                Err(ProposeError::Stopped)
            }
        };
        // The waiter may have given up (client gone); nothing to do then.
        let _ = tx.send(reply);
    }
}

/// A snapshot on disk (openraft's `SnapshotData`).
#[derive(Debug, Clone)]
pub struct SnapshotFile {
    pub path: std::path::PathBuf,
}
