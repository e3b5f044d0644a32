//! Request handlers, one module per etcd service. Handlers validate at the
//! edge (etcd's checks and messages), then talk to the actors.

pub mod auth;
pub mod cluster;
pub mod election;
pub mod gateway;
mod go_json;
pub mod http;
pub mod kv;
pub mod lease;
pub mod maintenance;
pub mod watch;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;

use crate::auth::{AuthShared, Caller};
use crate::mvcc_actor::{HeaderIds, MvccMsg, SpaceGauge};
use crate::raft::actor::RaftRequest;

/// What every core's reactor knows about its member.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    pub ids: HeaderIds,
    /// Leases granted shorter are given this TTL, in seconds.
    pub min_lease_ttl: i64,
    pub max_request_bytes: usize,
    pub max_txn_ops: usize,
    /// How long a write or linearizable read may take before
    /// "etcdserver: request timed out".
    pub request_timeout: Duration,
    pub election_timeout: Duration,
    pub max_concurrent_streams: u32,
    pub connections_max: usize,
    /// etcd's space quota (`--quota-backend-bytes`); None when turned off.
    pub quota_bytes: Option<u64>,
    pub keepalive: GrpcKeepalive,
    /// `--bcrypt-cost`.
    pub bcrypt_cost: u32,
    /// Where Maintenance.Snapshot writes the database it streams (an
    /// unlinked file, gone when the stream ends or the process dies).
    pub snap_dir: std::path::PathBuf,
    /// `--cors`: origins HTTP answers allow (`*`: any).
    pub cors: Vec<String>,
    /// `--host-whitelist`: Host headers plain HTTP requests may carry
    /// (`*` or none: any).
    pub host_whitelist: Vec<String>,
}

/// HTTP/2 keepalive on client connections (`--grpc-keepalive-interval` and
/// `--grpc-keepalive-timeout`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GrpcKeepalive {
    /// How long a connection may be quiet before the server pings it.
    pub interval: Option<Duration>,
    /// How long a ping may go unanswered before the connection is closed.
    pub timeout: Option<Duration>,
    /// The least interval between a client's pings (`--grpc-keepalive-min-time`);
    /// a client that pings more often is sent GOAWAY ENHANCE_YOUR_CALM
    /// "too_many_pings", as grpc-go's enforcement policy does for etcd.
    pub min_time: Duration,
}

impl Default for GrpcKeepalive {
    /// etcd's defaults: a ping after 2 h of quiet, 20 s to answer it,
    /// clients' pings at least 5 s apart.
    fn default() -> Self {
        GrpcKeepalive {
            interval: Some(Duration::from_secs(2 * 3600)),
            timeout: Some(Duration::from_secs(20)),
            min_time: Duration::from_secs(5),
        }
    }
}

/// gRPC accepts messages this much larger than `--max-request-bytes`, as
/// etcd does; writes are then checked against the limit itself.
pub const GRPC_OVERHEAD_BYTES: usize = 512 * 1024;

impl ServeConfig {
    pub fn max_recv_bytes(&self) -> usize {
        self.max_request_bytes + GRPC_OVERHEAD_BYTES
    }
}

/// One core's handles to the actors; for a request with credentials, a
/// copy naming its caller.
#[derive(Clone)]
pub struct ServerCtx {
    pub raft: mpsc::Sender<RaftRequest>,
    pub mvcc: mpsc::Sender<MvccMsg>,
    pub cfg: Arc<ServeConfig>,
    /// The store's size and alarm state, for the space quota.
    pub space: Arc<SpaceGauge>,
    /// The applied auth store and this member's tokens.
    pub auth: Arc<AuthShared>,
    /// Who sent the request being served (None: no credentials). Writes
    /// proposed for it carry it, and auth checks them as they apply.
    pub caller: Option<Caller>,
    /// The common name of the connection's verified client certificate:
    /// the user of its requests that carry no token.
    pub cert_user: Option<String>,
    /// The connection is TLS (the Host whitelist guards plain HTTP only).
    pub secure: bool,
}

impl ServerCtx {
    /// etcd's IsAdminPermitted for the caller (always true with auth off).
    pub fn check_admin(&self) -> Result<(), crate::grpc::status::Status> {
        Ok(self.auth.check_admin(self.caller.as_ref())?)
    }
}
