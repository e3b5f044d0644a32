//! The multi-version key-value store.
//!
//! Two structures hold the same versions, sharing key and value bytes:
//!
//! * the **key index** ([`key_index`]): key → every retained version of that
//!   key, oldest first. Answers "what did key K look like at revision R".
//! * the **revision log** ([`revision_log`]): every retained version in
//!   revision order, in immutable shared chunks. Snapshots (and, later,
//!   watchers catching up) read it without stopping writes.
//!
//! [`KvStore`] keeps the two in step and implements etcd's KV semantics
//! ([`store_range`] for reads, [`store_txn`] for applying commands).
//! [`snapshot`] defines the snapshot file format.

pub mod hash;
pub mod key_index;
pub mod lease;
pub mod revision_log;
pub mod snapshot;
mod store;
mod store_auth;
pub mod store_range;
pub mod store_txn;

pub use key_index::{KeyRange, KeyVersion};
pub use lease::{LeaseRecord, Leases};
pub use revision_log::{Event, LogView};
pub use store::{KvStore, WriteTxn};
pub use store_auth::AuthAnswer;
pub use store_range::RangeArgs;
pub use store_txn::{ApplyOutcome, CommandResponse};

/// A point in the store's history: `main` is the revision of a modifying
/// request, `sub` orders the changes within it (a txn changes several keys
/// at one main revision).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Revision {
    pub main: i64,
    pub sub: i64,
}

/// Errors of the KV layer; the gRPC edge maps each to etcd's status and message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum MvccError {
    #[error("mvcc: required revision has been compacted")]
    Compacted,
    #[error("mvcc: required revision is a future revision")]
    FutureRev,
    /// ignore_value / ignore_lease on a key that does not exist.
    #[error("key not found")]
    KeyNotFound,
    #[error("lease already exists")]
    LeaseExists,
    #[error("requested lease not found")]
    LeaseNotFound,
    /// A NOSPACE alarm is raised: writes that need space are refused.
    #[error("mvcc: database space exceeded")]
    NoSpace,
    /// A CORRUPT alarm is raised: every write is refused.
    #[error("corrupt cluster")]
    Corrupt,
    /// Refused by auth, or an auth request that failed.
    #[error(transparent)]
    Auth(#[from] crate::auth::AuthError),
}
