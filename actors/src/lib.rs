//! keel's actors on glommio: network reactors speaking gRPC and HTTP, the
//! raft actor (openraft), the WAL writer and the MVCC apply actor, and the
//! start-up code that places them on cores ([`node`]).

pub mod compactor;
pub mod grpc;
pub mod lease;
pub mod metrics;
pub mod mvcc_actor;
pub mod node;
pub mod peer;
pub mod raft;
pub mod reactor;
pub mod runtime;
pub mod service;
pub mod wal_writer;
pub mod watch;

/// The etcd API level keel reports (Status.version, `/version`).
pub const API_VERSION: &str = "3.6.0";

/// Stops the process after an error that makes continuing unsafe (a failed
/// fsync, an unreadable log entry). Nothing unacknowledged is lost by
/// stopping; continuing could acknowledge what is not durable.
pub fn fatal(msg: &str) -> ! {
    tracing::error!("{msg}");
    eprintln!("keel: fatal: {msg}");
    std::process::exit(2)
}
