//! What a robustness run records: every client operation with its invoke
//! and return times, every watch stream's events, the faults injected, and
//! each member's final state. The checker judges these records only; the
//! recorder and the nemesis only fill them in.

use std::time::Instant;

/// Nanoseconds since the run started (one monotonic clock for everything).
pub type Nanos = u64;

pub fn nanos_since(start: Instant) -> Nanos {
    u64::try_from(start.elapsed().as_nanos()).unwrap_or(u64::MAX)
}

/// One key's state as a response or a watch event shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Kv {
    pub key: String,
    pub value: String,
    pub create_rev: i64,
    pub mod_rev: i64,
    pub version: i64,
}

#[derive(Debug, Clone)]
pub enum Request {
    Put {
        key: String,
        value: String,
    },
    /// `prefix`: the whole workload prefix (then `key` is the prefix).
    Get {
        key: String,
        prefix: bool,
        serializable: bool,
    },
    /// Txn: if mod_revision(key) == expected_mod_rev then put value else get key.
    Cas {
        key: String,
        expected_mod_rev: i64,
        value: String,
    },
    Delete {
        key: String,
    },
}

impl Request {
    /// The unique value this request would write, if it writes one.
    pub fn written_value(&self) -> Option<&str> {
        match self {
            Request::Put { value, .. } | Request::Cas { value, .. } => Some(value),
            _ => None,
        }
    }

    pub fn key(&self) -> &str {
        match self {
            Request::Put { key, .. }
            | Request::Get { key, .. }
            | Request::Cas { key, .. }
            | Request::Delete { key } => key,
        }
    }
}

#[derive(Debug, Clone)]
pub enum Response {
    Put {
        rev: i64,
    },
    Get {
        rev: i64,
        kvs: Vec<Kv>,
    },
    /// `kvs`: the else branch's get when the compare failed.
    Cas {
        rev: i64,
        succeeded: bool,
        kvs: Vec<Kv>,
    },
    Delete {
        rev: i64,
        deleted: i64,
    },
}

impl Response {
    /// The response header's revision.
    pub fn rev(&self) -> i64 {
        match self {
            Response::Put { rev }
            | Response::Get { rev, .. }
            | Response::Cas { rev, .. }
            | Response::Delete { rev, .. } => *rev,
        }
    }

    /// Whether this response says the operation created a revision.
    pub fn modified(&self) -> bool {
        match self {
            Response::Put { .. } => true,
            Response::Get { .. } => false,
            Response::Cas { succeeded, .. } => *succeeded,
            Response::Delete { deleted, .. } => *deleted > 0,
        }
    }
}

#[derive(Debug, Clone)]
pub enum Outcome {
    Ok(Response),
    /// An error etcd guarantees is returned before anything is proposed.
    Failed(String),
    /// Timeouts, lost connections, leader changes...: may or may not have
    /// been applied, at any time after the invoke.
    Unknown(String),
}

#[derive(Debug, Clone)]
pub struct Op {
    pub client: usize,
    /// Index of the member the client was connected to.
    pub member: usize,
    pub invoke: Nanos,
    /// For an unknown outcome, when the client gave up (the op may still
    /// take effect later).
    pub ret: Nanos,
    pub request: Request,
    pub outcome: Outcome,
}

impl Op {
    pub fn ok(&self) -> Option<&Response> {
        match &self.outcome {
            Outcome::Ok(r) => Some(r),
            _ => None,
        }
    }

    /// A request whose result is the member's local state: no real-time order.
    pub fn is_serializable_read(&self) -> bool {
        matches!(
            self.request,
            Request::Get {
                serializable: true,
                ..
            }
        )
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    Put,
    Delete,
}

/// A watch event. For a delete, `kv` has the key and the delete's revision
/// as `mod_rev` (etcd's tombstone), nothing else.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub kind: EventKind,
    pub kv: Kv,
}

impl Event {
    pub fn rev(&self) -> i64 {
        self.kv.mod_rev
    }
}

/// One logical watch: reopened on another member after a stream error,
/// from the revision after the last one it saw.
#[derive(Debug, Clone, Default)]
pub struct WatchRecord {
    pub id: usize,
    pub prefix: String,
    pub start_rev: i64,
    pub events: Vec<Event>,
    /// (time, member, from revision, why the previous stream ended).
    pub reopens: Vec<(Nanos, usize, i64, String)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FaultKind {
    Kill,
    Pause,
    Partition,
    MoveLeader,
    SnapshotCatchup,
}

impl FaultKind {
    pub const ALL: [FaultKind; 5] = [
        FaultKind::Kill,
        FaultKind::Pause,
        FaultKind::Partition,
        FaultKind::MoveLeader,
        FaultKind::SnapshotCatchup,
    ];

    pub fn name(self) -> &'static str {
        match self {
            FaultKind::Kill => "kill",
            FaultKind::Pause => "pause",
            FaultKind::Partition => "partition",
            FaultKind::MoveLeader => "move-leader",
            FaultKind::SnapshotCatchup => "snapshot-catchup",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Fault {
    pub kind: FaultKind,
    /// The member hit (for move-leader: the old leader).
    pub member: usize,
    pub hit_leader: bool,
    pub start: Nanos,
    pub end: Nanos,
    pub note: String,
}

/// A member's state after the run: a serializable read of the prefix made
/// after a linearizable barrier on the same member.
#[derive(Debug, Clone)]
pub struct FinalRead {
    pub member: usize,
    pub result: Result<(i64, Vec<Kv>), String>,
}

/// Everything one run recorded.
#[derive(Debug, Clone, Default)]
pub struct History {
    pub prefix: String,
    /// The store's revision before the workload wrote anything.
    pub base_rev: i64,
    pub ops: Vec<Op>,
    pub watches: Vec<WatchRecord>,
    pub faults: Vec<Fault>,
    pub final_reads: Vec<FinalRead>,
    /// When the clients stopped.
    pub load_end: Nanos,
    /// When the clients stopped starting operations (those in flight then
    /// still ran until `load_end`).
    pub invoke_end: Nanos,
}

impl History {
    /// Acknowledged writes (put, succeeded CAS, delete that deleted).
    pub fn acknowledged_writes(&self) -> usize {
        self.ops
            .iter()
            .filter(|o| o.ok().is_some_and(Response::modified))
            .count()
    }
}
