//! keel's actors on glommio: network reactors speaking gRPC and HTTP, the
//! raft actor (openraft), the WAL writer and the MVCC apply actor, and the
//! start-up code that places them on cores ([`node`]).

pub mod auth;
pub mod compactor;
pub mod corrupt;
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
pub mod tcp;
pub mod tls;
pub mod wal_writer;
pub mod watch;

/// The etcd API level keel reports (Status.version, `/version`,
/// `etcd_server_version`): the newest etcd whose API and behaviour keel
/// implements (Kubernetes gates features on it).
pub const API_VERSION: &str = "3.6.0";

/// The cluster version keel reports (`/version`'s `etcdcluster`,
/// `etcd_cluster_version`): etcd's is the members' lowest server version
/// cut to major.minor.0; all of keel's members speak `API_VERSION`.
pub const CLUSTER_VERSION: &str = "3.6.0";

/// Stops the process after an error that makes continuing unsafe (a failed
/// fsync, an unreadable log entry). Nothing unacknowledged is lost by
/// stopping; continuing could acknowledge what is not durable.
pub fn fatal(msg: &str) -> ! {
    tracing::error!("{msg}");
    eprintln!("keel: fatal: {msg}");
    std::process::exit(2)
}

/// How long a member that learned of its own removal goes on before it
/// stops: time for the answer to the removal's requester to leave (it waits
/// at most an election timeout for a read index first, see
/// `service::cluster::change`).
const REMOVED_STOP_DELAY: std::time::Duration = std::time::Duration::from_millis(1500);

/// Stops this member `REMOVED_STOP_DELAY` after it learned that it was
/// removed, whether by applying its removal or from a peer that refused it
/// as removed (a leader that removed itself may hear the latter first, and
/// must still answer its client, as etcd does). Called on a glommio
/// executor; later calls change nothing.
pub fn stop_after_removal() {
    static STOPPING: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    if STOPPING.swap(true, std::sync::atomic::Ordering::SeqCst) {
        return;
    }
    glommio::spawn_local(async {
        glommio::timer::sleep(REMOVED_STOP_DELAY).await;
        fatal("the member has been permanently removed from the cluster");
    })
    .detach();
}
