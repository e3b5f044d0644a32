//! The raft group: openraft configured for keel.
//!
//! * [`types`]: the type configuration, proposals and replies;
//! * [`codec`]: byte encodings of raft metadata for the WAL and snapshots;
//! * [`log_store`]: openraft's log storage over the WAL writer;
//! * [`state_machine`]: openraft's state machine over the MVCC apply actor;
//! * [`network`]: openraft's RPCs over the peer transport (`crate::peer`);
//! * [`members`]: membership changes with etcd's rules;
//! * [`actor`]: the raft actor that owns the `Raft` handle and serves reactors
//!   (proposal batching), with [`leader`] (what only the leader answers, run
//!   here or forwarded), [`reads`] (read-index rounds) and [`transfer`]
//!   (MoveLeader).

pub mod actor;
pub mod codec;
pub mod leader;
pub mod log_store;
pub mod members;
pub mod network;
pub mod reads;
pub mod state_machine;
pub mod transfer;
pub mod types;
