//! Start-up: recover state, decide placement, start one executor per core.
//!
//! Everything that can find damage or misconfiguration (the data-dir lock,
//! WAL recovery, the snapshot) runs first, on the calling thread, so a
//! problem is a clear start-up error rather than a half-started server.
//!
//! Data directory layout:
//!
//! ```text
//! <data-dir>/member/lock      flock'ed while a keel process uses the dir
//! <data-dir>/member/identity  member and cluster id, fixed at first start
//! <data-dir>/member/wal/      WAL segments
//! <data-dir>/member/snap/     snapshots
//! ```

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use glommio::{LocalExecutorBuilder, Placement as CpuPlacement, PoolPlacement};
use keel_storage::mvcc::snapshot::load_latest_snapshot;
use keel_storage::mvcc::KvStore;
use keel_storage::wal::recover;
use openraft::storage::RaftLogStorage;
use tokio::sync::{mpsc, oneshot, watch};

use crate::compactor::{self, AutoCompaction};
use crate::metrics::metrics;
use crate::mvcc_actor::{HeaderIds, MvccActor, MvccTiming, Restored, SpaceGauge};
use crate::peer::conn::PeerClients;
use crate::peer::server::PeerCtx;
use crate::peer::wire::MemberChange;
use crate::raft::actor::{Origin, RaftHandles, RaftRequest};
use crate::raft::codec::{decode_snapshot_app, SnapshotApp};
use crate::raft::log_store::{LogReader, LogStore};
use crate::raft::members::MemberError;
use crate::raft::network::PeerNetwork;
use crate::raft::state_machine::{snapshot_id, DurableSnapshot, StateMachine};
use crate::raft::types::{Node, NodeId, Raft, SnapshotMeta, StorageError};
use crate::raft::QuietStart;
use crate::reactor::Surface;
use crate::service::{ServeConfig, ServerCtx};
use crate::wal_writer::{WalConfig, WalWriter};

/// Bound of the reactors → raft actor queue.
pub const RAFT_INBOX: usize = 8192;
/// Bound of the → MVCC actor queue.
pub const MVCC_INBOX: usize = 8192;
/// Bound of the raft → WAL writer queue.
pub const WAL_INBOX: usize = 4096;
/// etcd's minimum lease TTL: 1.5 election timeouts, in whole seconds
/// (rounded up), so a lease outlives a leader election.
pub fn min_lease_ttl(election_timeout_ms: u64) -> i64 {
    (election_timeout_ms * 3 / 2).div_ceil(1000) as i64
}

/// Retry delays while a starting member publishes itself.
const JOIN_RETRY_MIN: Duration = Duration::from_millis(20);
const JOIN_RETRY_MAX: Duration = Duration::from_millis(500);
const JOIN_WARN_EVERY: Duration = Duration::from_secs(5);

#[derive(Debug, Clone)]
pub struct NodeConfig {
    pub name: String,
    pub data_dir: PathBuf,
    /// `--wal-dir`: the WAL somewhere else than `<data-dir>/member/wal`.
    pub wal_dir: Option<PathBuf>,
    /// `--max-snapshots`: snapshot files kept (0: all).
    pub max_snapshots: usize,
    /// `--cors`: origins the HTTP answers allow (`*`: any).
    pub cors: Vec<String>,
    /// `--host-whitelist`: Host headers plain HTTP requests may carry
    /// (`*` or empty: any).
    pub host_whitelist: Vec<String>,
    /// `--metrics extensive`: also gRPC handling-time histograms.
    pub metrics_extensive: bool,
    /// `--experimental-warning-apply-duration`: an apply slower than this
    /// is logged and counted.
    pub warning_apply_duration: Duration,
    pub listen_client: Vec<ListenUrl>,
    /// `--listen-metrics-urls`: /metrics and the health endpoints only
    /// (https ones with the client TLS settings, as etcd).
    pub listen_metrics: Vec<ListenUrl>,
    /// What `https://` client listeners serve with.
    pub client_tls: Option<crate::tls::TlsSettings>,
    /// `--auto-tls` without certificate files: generate a self-signed one
    /// for these hosts at `client_tls`'s paths if it is not there yet.
    pub client_auto_tls_hosts: Option<Vec<String>>,
    pub advertise_client_urls: Vec<String>,
    pub listen_peer: Vec<ListenUrl>,
    /// What `https://` peer listeners serve with and `https://` peer URLs
    /// are dialed with (the same certificate both ways, as etcd).
    pub peer_tls: Option<crate::tls::TlsSettings>,
    /// `--peer-auto-tls` without certificate files: as `client_auto_tls_hosts`.
    pub peer_auto_tls_hosts: Option<Vec<String>>,
    pub initial_advertise_peer_urls: Vec<String>,
    /// Members to bootstrap with (or, joining, to ask): name and peer URLs.
    pub initial_cluster: Vec<(String, Vec<String>)>,
    pub initial_cluster_state: ClusterState,
    pub initial_cluster_token: String,
    pub cores: usize,
    pub actor_placement: ActorPlacement,
    pub max_request_bytes: usize,
    pub max_txn_ops: usize,
    pub snapshot_count: u64,
    /// Also snapshot when the applied log since the last snapshot holds
    /// more payload bytes than this (keel).
    pub snapshot_log_bytes: u64,
    pub snapshot_catchup_entries: u64,
    pub auto_compaction: Option<AutoCompaction>,
    pub wal_segment_bytes: u64,
    pub wal_batch_bytes_max: usize,
    pub wal_linger: Duration,
    pub heartbeat_interval_ms: u64,
    /// How often idle watchers that asked for progress notifications get one.
    pub watch_progress_notify_interval: Duration,
    /// How often the leader checkpoints leases' remaining TTLs through raft.
    pub lease_checkpoint_interval: Duration,
    pub election_timeout_ms: u64,
    /// Refuse voter changes that would leave fewer running voters than a
    /// quorum (etcd's `--strict-reconfig-check`).
    pub strict_reconfig_check: bool,
    pub request_timeout: Duration,
    pub spin_before_park: Duration,
    pub max_concurrent_streams: u32,
    /// `--max-connections`, if given.
    pub connections_max: Option<usize>,
    pub grpc_keepalive: crate::service::GrpcKeepalive,
    /// `--experimental-initial-corrupt-check`: compare HashKV with the
    /// peers' before serving, and refuse to start on a difference.
    pub initial_corrupt_check: bool,
    /// `--experimental-corrupt-check-time`: how often the leader compares
    /// HashKV with its followers' (None: never).
    pub corrupt_check_every: Option<Duration>,
    /// `--force-new-cluster`: start as the only member of this member's
    /// cluster, with its data.
    pub force_new_cluster: bool,
    /// etcd's `--quota-backend-bytes`: 0 for the default, negative for none.
    pub quota_backend_bytes: i64,
    /// `--auth-token-ttl`: a simple token lives this long after its last use.
    pub auth_token_ttl: Duration,
    /// `--auth-token jwt,...`: JWT tokens instead of simple ones.
    pub jwt: Option<crate::auth::JwtSettings>,
    /// `--bcrypt-cost` for password hashes.
    pub bcrypt_cost: u32,
}

/// One address from `--listen-client-urls` or `--listen-peer-urls`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListenUrl {
    pub addr: SocketAddr,
    /// An `https://` URL.
    pub tls: bool,
}

impl std::fmt::Display for ListenUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let scheme = if self.tls { "https" } else { "http" };
        write!(f, "{scheme}://{}", self.addr)
    }
}

/// `--initial-cluster-state`: bootstrap a new cluster, or join a running one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClusterState {
    New,
    Existing,
}

/// Which core runs which actor. Every core runs a network reactor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    /// The raft actor, openraft's tasks and the WAL writer (they exchange a
    /// message per append, so they share a core).
    pub raft_core: usize,
    /// The MVCC apply actor.
    pub mvcc_core: usize,
    pub cores: usize,
}

/// Where the actors go when there is more than one core.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ActorPlacement {
    /// Raft, WAL writer and MVCC apply share core 0: no cross-core message
    /// on the write path except to and from other cores' reactors.
    Packed,
    /// The MVCC apply actor gets core 1, away from raft and the WAL.
    Spread,
}

/// The CPUs in the order cores take them: `cpus` rotated by the member's
/// position in `--initial-cluster`. Core 0 (raft, WAL, MVCC) is the busiest;
/// members that share a host (a dev or test cluster, one unit file per
/// member) would otherwise all put it on the first CPU and queue behind
/// each other there while the rest stay idle. On a host of its own a
/// member's CPUs are interchangeable, so the rotation costs nothing.
pub fn cpu_order(mut cpus: Vec<usize>, member_position: usize) -> Vec<usize> {
    if !cpus.is_empty() {
        let n = cpus.len();
        cpus.rotate_left(member_position % n);
    }
    cpus
}

/// One core: everything together. More: as `how` says.
pub fn plan(cores: usize, how: ActorPlacement) -> Placement {
    assert!(cores >= 1);
    Placement {
        raft_core: 0,
        mvcc_core: if cores >= 2 && how == ActorPlacement::Spread {
            1
        } else {
            0
        },
        cores,
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{0}")]
    Config(String),
    #[error("data directory {dir}: {msg}")]
    DataDir { dir: PathBuf, msg: String },
    #[error(transparent)]
    Wal(#[from] keel_storage::wal::WalError),
    #[error(transparent)]
    Snapshot(#[from] keel_storage::mvcc::snapshot::SnapshotError),
    #[error("executor: {0}")]
    Executor(String),
}

/// 64-bit FNV-1a: stable ids from names (not a security boundary).
pub fn fnv64(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for p in parts {
        for &b in p.iter().chain(std::iter::once(&0u8)) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    h
}

/// A member's id: from its peer URLs and the cluster token, as etcd
/// derives it, so every member computes the same ids from `--initial-cluster`.
pub fn member_id_of(peer_urls: &[String], token: &str) -> u64 {
    let mut urls = peer_urls.to_vec();
    urls.sort();
    fnv64(&[urls.join(",").as_bytes(), token.as_bytes()]).max(1)
}

/// The cluster's id: from its founding members' ids and the token.
pub fn cluster_id_of(member_ids: &[u64], token: &str) -> u64 {
    let mut ids = member_ids.to_vec();
    ids.sort_unstable();
    let bytes: Vec<u8> = ids.iter().flat_map(|id| id.to_le_bytes()).collect();
    fnv64(&[&bytes, token.as_bytes()]).max(1)
}

/// The founding membership `--initial-cluster` describes (client URLs are
/// published by each member once it runs).
pub fn bootstrap_members(cfg: &NodeConfig) -> BTreeMap<NodeId, Node> {
    cfg.initial_cluster
        .iter()
        .map(|(name, urls)| {
            (
                member_id_of(urls, &cfg.initial_cluster_token),
                Node {
                    name: name.clone(),
                    peer_urls: urls.clone(),
                    client_urls: Vec::new(),
                },
            )
        })
        .collect()
}

fn same_urls(a: &[String], b: &[String]) -> bool {
    let (mut a, mut b) = (a.to_vec(), b.to_vec());
    a.sort();
    b.sort();
    a == b
}

/// A joining member asks the running members for the cluster id and finds
/// itself (added by `member add`) by its peer URLs.
fn join_identity(cfg: &NodeConfig, peer_tls: Option<&PeerTls>) -> Result<HeaderIds, StartError> {
    let mut last = String::from("--initial-cluster names no other member");
    for (name, urls) in &cfg.initial_cluster {
        if *name == cfg.name {
            continue;
        }
        for url in urls {
            let tls = peer_tls.map(|t| t.client.as_ref());
            match crate::peer::conn::ask_membership(url, Duration::from_secs(2), tls) {
                Ok((cluster_id, membership)) => {
                    let me = membership
                        .nodes()
                        .find(|(_, n)| same_urls(&n.peer_urls, &cfg.initial_advertise_peer_urls));
                    return match me {
                        Some((id, _)) => Ok(HeaderIds {
                            cluster_id,
                            member_id: *id,
                        }),
                        None => Err(StartError::Config(format!(
                            "cluster {cluster_id:x} (asked at {url}) has no member with peer URLs {}; add this member first (etcdctl member add)",
                            cfg.initial_advertise_peer_urls.join(",")
                        ))),
                    };
                }
                Err(e) => last = format!("{url}: {e}"),
            }
        }
    }
    Err(StartError::Config(format!(
        "--initial-cluster-state=existing: no member of --initial-cluster answered ({last})"
    )))
}

/// Loads the member's identity, or fixes it at first start.
fn identity(
    member_dir: &Path,
    cfg: &NodeConfig,
    peer_tls: Option<&PeerTls>,
) -> Result<HeaderIds, StartError> {
    let path = member_dir.join("identity");
    let err = |msg: String| StartError::DataDir {
        dir: member_dir.to_path_buf(),
        msg,
    };
    if let Ok(text) = std::fs::read_to_string(&path) {
        let mut ids = HeaderIds::default();
        for line in text.lines() {
            match line.split_once('=') {
                Some(("member_id", v)) => {
                    ids.member_id =
                        u64::from_str_radix(v, 16).map_err(|e| err(format!("identity: {e}")))?
                }
                Some(("cluster_id", v)) => {
                    ids.cluster_id =
                        u64::from_str_radix(v, 16).map_err(|e| err(format!("identity: {e}")))?
                }
                _ => {}
            }
        }
        if ids.member_id == 0 || ids.cluster_id == 0 {
            return Err(err(format!("{} is damaged", path.display())));
        }
        return Ok(ids);
    }
    let ids = match cfg.initial_cluster_state {
        ClusterState::New => {
            let members: Vec<NodeId> = bootstrap_members(cfg).into_keys().collect();
            // Its founding entry's URLs: the advertised ones, or those of
            // the SRV record that names this member (`--discovery-srv`).
            let own_urls = cfg
                .initial_cluster
                .iter()
                .find(|(name, _)| *name == cfg.name)
                .map_or(&cfg.initial_advertise_peer_urls, |(_, urls)| urls);
            HeaderIds {
                member_id: member_id_of(own_urls, &cfg.initial_cluster_token),
                cluster_id: cluster_id_of(&members, &cfg.initial_cluster_token),
            }
        }
        ClusterState::Existing => join_identity(cfg, peer_tls)?,
    };
    let text = format!(
        "member_id={:x}\ncluster_id={:x}\nname={}\n",
        ids.member_id, ids.cluster_id, cfg.name
    );
    keel_storage::write_file_atomically(&path, text.as_bytes())
        .map_err(|e| err(format!("writing identity: {e}")))?;
    Ok(ids)
}

/// The start-up configuration, as etcd logs it when it starts a server.
fn log_configuration(cfg: &NodeConfig) {
    let urls = |l: &[ListenUrl]| {
        l.iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(",")
    };
    let cluster: Vec<String> = cfg
        .initial_cluster
        .iter()
        .map(|(name, urls)| format!("{name}={}", urls.join(",")))
        .collect();
    tracing::info!(
        name = %cfg.name,
        data_dir = %cfg.data_dir.display(),
        wal_dir = %cfg.wal_dir.as_deref().map_or_else(String::new, |d| d.display().to_string()),
        listen_client_urls = %urls(&cfg.listen_client),
        advertise_client_urls = %cfg.advertise_client_urls.join(","),
        listen_peer_urls = %urls(&cfg.listen_peer),
        initial_advertise_peer_urls = %cfg.initial_advertise_peer_urls.join(","),
        initial_cluster = %cluster.join(","),
        initial_cluster_state = ?cfg.initial_cluster_state,
        initial_cluster_token = %cfg.initial_cluster_token,
        heartbeat_interval_ms = cfg.heartbeat_interval_ms,
        election_timeout_ms = cfg.election_timeout_ms,
        snapshot_count = cfg.snapshot_count,
        quota_backend_bytes = cfg.quota_backend_bytes,
        auto_compaction = ?cfg.auto_compaction,
        max_request_bytes = cfg.max_request_bytes,
        cores = cfg.cores,
        "starting an etcd server"
    );
}

/// An etcd data directory's mark, if `data_dir` is one: its bbolt
/// database (`member/snap/db`) or a WAL file named as etcd names them
/// (`<seq>-<index>.wal`; keel's are `<seq>.wal`).
fn etcd_files_in(data_dir: &Path) -> Option<PathBuf> {
    let db = data_dir.join("member/snap/db");
    if db.exists() {
        return Some(db);
    }
    etcd_wal_file_in(&data_dir.join("member/wal"))
}

/// A WAL file of etcd's in `dir`, if there is one.
fn etcd_wal_file_in(dir: &Path) -> Option<PathBuf> {
    std::fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.ends_with(".wal") && n.contains('-'))
        })
}

/// Keeps the data this process writes to its own user, as etcd does (0700
/// directories, 0600 files): sets the process's file-creation mask to 077,
/// which covers every file and directory created from here on, and warns,
/// with etcd's words, when an existing data directory is open to others.
fn make_private(data_dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    // SAFETY: umask only replaces the process's file-creation mask.
    unsafe { libc::umask(0o077) };
    match std::fs::metadata(data_dir) {
        Ok(m) if m.permissions().mode() & 0o077 != 0 => tracing::warn!(
            "check file permission: directory {:?} exist, but the permission is {:o}. The recommended permission is 700 to prevent possible unprivileged access to the data.",
            data_dir,
            m.permissions().mode() & 0o777
        ),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    Ok(())
}

/// Holds an exclusive lock on the data directory for the process lifetime.
fn lock_data_dir(member_dir: &Path) -> Result<std::fs::File, StartError> {
    use std::os::fd::AsRawFd;
    let path = member_dir.join("lock");
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| StartError::DataDir {
            dir: member_dir.to_path_buf(),
            msg: format!("opening lock file: {e}"),
        })?;
    // SAFETY: flock on a valid, owned file descriptor.
    let rc = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc != 0 {
        return Err(StartError::DataDir {
            dir: member_dir.to_path_buf(),
            msg: "in use by another keel process".into(),
        });
    }
    Ok(f)
}

/// Raises `resource`'s soft limit as far as allowed (unlimited if this
/// process may, else its hard limit) and returns the soft limit now in force.
fn raise_limit(resource: libc::__rlimit_resource_t) -> u64 {
    let want = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    let mut cur = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain syscalls on local structs.
    unsafe {
        if libc::setrlimit(resource, &want) != 0 && libc::getrlimit(resource, &mut cur) == 0 {
            cur.rlim_cur = cur.rlim_max;
            libc::setrlimit(resource, &cur);
        }
        if libc::getrlimit(resource, &mut cur) != 0 {
            return u64::MAX;
        }
    }
    cur.rlim_cur
}

/// File descriptors kept for everything but client connections: WAL
/// segments, snapshots, listeners, io_uring rings, the blocking pool, and
/// peer connections and snapshot transfers (`FDS_PER_MEMBER` for each member
/// of the cluster). An idle single member holds 21 (three of them stdio),
/// so 64 leaves room for segment rotation, a snapshot being written and one
/// being read at once.
pub const FDS_RESERVED: u64 = 64;
pub const FDS_PER_MEMBER: u64 = 16;

/// Client connections one core may hold: `configured`, but no more than the
/// open-file limit leaves after [`FDS_RESERVED`], shared by the cores, so
/// idle clients can never take the descriptor the next WAL segment needs.
pub fn client_connections_per_core(
    fd_limit: u64,
    cores: usize,
    members: usize,
    configured: usize,
) -> usize {
    let reserved = FDS_RESERVED + FDS_PER_MEMBER * members as u64;
    let budget = fd_limit.saturating_sub(reserved) / cores.max(1) as u64;
    configured
        .min(usize::try_from(budget).unwrap_or(usize::MAX))
        .max(1)
}

/// CPUs this process may run on, in order.
fn usable_cpus() -> Vec<usize> {
    // SAFETY: sched_getaffinity fills a local cpu_set_t.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) == 0 {
            let cpus: Vec<usize> = (0..libc::CPU_SETSIZE as usize)
                .filter(|&c| libc::CPU_ISSET(c, &set))
                .collect();
            if !cpus.is_empty() {
                return cpus;
            }
        }
    }
    (0..std::thread::available_parallelism().map_or(1, |n| n.get())).collect()
}

/// How long start-up retries a port that is in use: a member killed a
/// moment ago may still hold its listening sockets while the kernel tears
/// its io_uring instances down.
const BIND_RETRY_FOR: Duration = Duration::from_secs(3);
const BIND_RETRY_EVERY: Duration = Duration::from_millis(50);

/// Binds one socket per address, without SO_REUSEPORT: a port another
/// process listens on is refused (after [`BIND_RETRY_FOR`]) instead of
/// silently shared. SO_REUSEADDR lets a restarted member bind while its
/// predecessor's connections linger. Every core accepts on a duplicate of
/// the same socket ([`core_listener`]). All listen at once; until the
/// member serves, client connections are reset (`reactor::serve`).
fn bind_listeners(addrs: &[SocketAddr], what: &str) -> Result<Vec<socket2::Socket>, StartError> {
    use socket2::{Domain, Protocol, Socket, Type};
    let mut out = Vec::new();
    for addr in addrs {
        let deadline = Instant::now() + BIND_RETRY_FOR;
        let socket = loop {
            let attempt = (|| -> std::io::Result<Socket> {
                let s = Socket::new(
                    Domain::for_address(*addr),
                    Type::STREAM,
                    Some(Protocol::TCP),
                )?;
                s.set_reuse_address(true)?;
                // Non-blocking for good: the cores' duplicates share one
                // file description, and glommio's accept turns O_NONBLOCK on
                // and then back to what it found around its first accept(2)
                // try. On a blocking socket two cores race there, and the
                // loser blocks its whole executor in accept(2).
                s.set_nonblocking(true)?;
                s.bind(&(*addr).into())?;
                s.listen(LISTEN_BACKLOG)?;
                Ok(s)
            })();
            match attempt {
                Ok(s) => break s,
                Err(e)
                    if e.kind() == std::io::ErrorKind::AddrInUse && Instant::now() < deadline =>
                {
                    std::thread::sleep(BIND_RETRY_EVERY)
                }
                Err(e) => {
                    return Err(StartError::Config(format!(
                        "cannot listen for {what} on {addr}: {e}"
                    )))
                }
            }
        };
        out.push(socket);
    }
    Ok(out)
}

/// Stops the member on SIGTERM or SIGINT, as etcd does: a leader first
/// hands its leadership to the most caught-up voter (waiting at most
/// `limit`), so the cluster does not wait out an election; then the process
/// exits 0. Every acknowledged write is durable already, so nothing needs
/// flushing. The signals are blocked in every thread (executors inherit the
/// mask) and taken by one thread with sigwait(2).
fn stop_on_signals(raft: mpsc::Sender<RaftRequest>, limit: Duration) -> Result<(), StartError> {
    // SAFETY: plain libc calls on a local, initialized signal set.
    let set = unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGINT);
        let rc = libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        if rc != 0 {
            return Err(StartError::Executor(format!(
                "blocking SIGTERM and SIGINT: {}",
                std::io::Error::from_raw_os_error(rc)
            )));
        }
        set
    };
    std::thread::Builder::new()
        .name("keel-signals".into())
        .spawn(move || {
            let mut sig = 0;
            // SAFETY: waits for a signal of a set blocked in every thread.
            if unsafe { libc::sigwait(&set, &mut sig) } != 0 {
                return;
            }
            let name = if sig == libc::SIGTERM {
                "SIGTERM"
            } else {
                "SIGINT"
            };
            tracing::info!("received {name}: stopping");
            let (done, outcome) = std::sync::mpsc::channel();
            if raft.blocking_send(RaftRequest::Stop { done }).is_ok() {
                match outcome.recv_timeout(limit) {
                    Ok(what) => tracing::info!("{what}"),
                    Err(_) => tracing::warn!("leadership hand-over did not finish in {limit:?}"),
                }
            }
            tracing::info!("stopped");
            std::process::exit(0);
        })
        .map_err(|e| StartError::Executor(format!("starting the signal thread: {e}")))?;
    Ok(())
}

/// Pending connections a listening socket queues.
const LISTEN_BACKLOG: i32 = 1024;

/// This executor's handle on a shared listening socket.
fn core_listener(socket: &socket2::Socket) -> std::io::Result<glommio::net::TcpListener> {
    use std::os::fd::{FromRawFd, IntoRawFd};
    let dup = socket.try_clone()?;
    // SAFETY: a listening socket (a fresh duplicate) whose ownership moves to glommio.
    Ok(unsafe { glommio::net::TcpListener::from_raw_fd(dup.into_raw_fd()) })
}

/// etcd's default space quota (2 GiB) and the largest it recommends (8 GiB).
pub const QUOTA_BYTES_DEFAULT: u64 = 2 << 30;
pub const QUOTA_BYTES_MAX: u64 = 8 << 30;

/// `--quota-backend-bytes` as etcd reads it: 0 is the default, negative
/// turns the quota off.
fn quota_bytes(flag: i64) -> Option<u64> {
    let quota = match flag {
        0 => QUOTA_BYTES_DEFAULT,
        q if q < 0 => {
            tracing::warn!("disabled backend quota");
            metrics().quota_backend_bytes.set(flag);
            return None;
        }
        q => q as u64,
    };
    if quota > QUOTA_BYTES_MAX {
        tracing::warn!(
            quota_bytes = quota,
            max_bytes = QUOTA_BYTES_MAX,
            "quota exceeds the maximum value"
        );
    }
    metrics().quota_backend_bytes.set(quota as i64);
    Some(quota)
}

/// Client connections per core without `--max-connections`, if the
/// open-file limit allows them.
pub const CONNECTIONS_PER_CORE_DEFAULT: usize = 16_384;
/// Fewer client connections per core than this is worth a warning even when
/// `--max-connections` was not given.
pub const CONNECTIONS_PER_CORE_LOW: usize = 1024;

/// `--max-connections` (or the default), lowered to what the open-file
/// limit allows; a warning when that is less than was asked for, or when no
/// number was asked for and it is low.
fn connections_max(cfg: &NodeConfig, fd_limit: u64) -> usize {
    let members = cfg.initial_cluster.len().max(1);
    let wanted = cfg.connections_max.unwrap_or(CONNECTIONS_PER_CORE_DEFAULT);
    let per_core = client_connections_per_core(fd_limit, cfg.cores, members, wanted);
    let low = match cfg.connections_max {
        Some(asked) => per_core < asked,
        None => per_core < CONNECTIONS_PER_CORE_LOW,
    };
    if low {
        tracing::warn!(
            open_files_limit = fd_limit,
            per_core,
            "the open-file limit (ulimit -n) allows few client connections; raise it to serve more"
        );
    }
    per_core
}

/// Runs a member until the process is stopped.
pub fn run(cfg: NodeConfig) -> Result<(), StartError> {
    // glommio registers (locks) I/O memory per executor.
    raise_limit(libc::RLIMIT_MEMLOCK);
    let fd_limit = raise_limit(libc::RLIMIT_NOFILE);
    let position = cfg
        .initial_cluster
        .iter()
        .position(|(name, _)| *name == cfg.name)
        .unwrap_or(0);
    let cpus = cpu_order(usable_cpus(), position);
    if cfg.cores == 0 || cfg.cores > cpus.len() {
        return Err(StartError::Config(format!(
            "--cores must be between 1 and {} (the CPUs available to this process), got {}",
            cpus.len(),
            cfg.cores
        )));
    }
    let placement = plan(cfg.cores, cfg.actor_placement);
    log_configuration(&cfg);
    warn_plain_urls(&cfg);
    // grpc-go's keepalive enforcement, as etcd's gRPC server applies it
    // (`--grpc-keepalive-min-time`): process-wide in keel's patched h2.
    h2::server::enforce_ping_min_time(Some(cfg.grpc_keepalive.min_time));
    if cfg.metrics_extensive {
        crate::metrics::metrics().enable_extensive();
    }
    // Key files are read before the data dir is touched.
    let jwt = match &cfg.jwt {
        Some(settings) => Some(crate::auth::JwtKeys::load(settings).map_err(StartError::Config)?),
        None => None,
    };
    let data_dir_err = |e: std::io::Error| StartError::DataDir {
        dir: cfg.data_dir.clone(),
        msg: e.to_string(),
    };
    let etcd_files =
        etcd_files_in(&cfg.data_dir).or_else(|| cfg.wal_dir.as_deref().and_then(etcd_wal_file_in));
    if let Some(found) = etcd_files {
        return Err(StartError::DataDir {
            dir: cfg.data_dir.clone(),
            msg: format!(
                "this is an etcd data directory ({} exists); keel does not read etcd's files and writes nothing here. \
                 To move its data to keel, take a snapshot (`etcdctl snapshot save backup.db` against the running etcd, \
                 or copy member/snap/db and add --skip-hash-check below), then \
                 `keel snapshot restore backup.db --data-dir NEW_DIR --name NAME --initial-cluster ... \
                 --initial-cluster-token ... --initial-advertise-peer-urls ...` and start keel with --data-dir NEW_DIR",
                found.display()
            ),
        });
    }
    make_private(&cfg.data_dir).map_err(data_dir_err)?;
    for dir in ["member", "member/wal", "member/snap"] {
        keel_storage::create_dir_durably(&cfg.data_dir.join(dir)).map_err(data_dir_err)?;
    }
    // `--wal-dir`: the WAL on a device of its own, as etcd's.
    let wal_dir = match &cfg.wal_dir {
        Some(dir) => {
            let err = |e: std::io::Error| StartError::DataDir {
                dir: dir.clone(),
                msg: e.to_string(),
            };
            keel_storage::create_dir_durably(dir).map_err(err)?;
            Some(std::fs::canonicalize(dir).map_err(err)?)
        }
        None => None,
    };
    keel_storage::mvcc::snapshot::set_snapshots_kept(cfg.max_snapshots);
    // Absolute from here on: glommio's directory handles refuse relative
    // paths (EBADF), and the default data dir is relative (`default.keel`).
    let member_dir = std::fs::canonicalize(cfg.data_dir.join("member")).map_err(data_dir_err)?;
    let _lock = lock_data_dir(&member_dir)?;
    let client_tls = client_tls(&cfg)?;
    // Client listeners, then metrics ones: what each serves.
    let surfaces: Vec<(ListenUrl, Surface)> =
        (cfg.listen_client.iter().map(|l| (*l, Surface::Clients)))
            .chain(cfg.listen_metrics.iter().map(|l| (*l, Surface::Metrics)))
            .collect();
    let client_addrs: Vec<SocketAddr> = surfaces.iter().map(|(l, _)| l.addr).collect();
    let client_sockets = Arc::new(bind_listeners(&client_addrs, "clients")?);
    let peer_tls = peer_tls(&cfg)?;
    let peer_addrs: Vec<SocketAddr> = cfg.listen_peer.iter().map(|l| l.addr).collect();
    let peer_sockets = Arc::new(bind_listeners(&peer_addrs, "peers")?);
    let ids = identity(&member_dir, &cfg, peer_tls.as_ref())?;
    metrics()
        .server_id
        .with_label_values(&[&format!("{:x}", ids.member_id)])
        .set(1.0);
    let wal_dir = wal_dir.unwrap_or_else(|| member_dir.join("wal"));
    let snap_dir = member_dir.join("snap");

    let recovered = recover(&wal_dir)?;
    if let Some(note) = &recovered.repaired {
        tracing::warn!("{note}");
    }
    let (restored, loaded_meta) = match load_latest_snapshot(&snap_dir)? {
        Some(s) => {
            let app = decode_snapshot_app(&s.app_meta).map_err(|msg| {
                StartError::Snapshot(keel_storage::mvcc::snapshot::SnapshotError::Corrupt {
                    file: s.path.clone(),
                    offset: 0,
                    reason: msg,
                })
            })?;
            tracing::info!(path = %s.path.display(), rev = s.store.current_rev(), "loaded snapshot");
            // A snapshot that covers no raft entry is a restored store
            // (`keel snapshot restore`): the member starts as a new one on
            // top of it, and raft has no snapshot yet.
            let meta = app.applied.is_some().then(|| {
                let meta = SnapshotMeta {
                    last_log_id: app.applied,
                    last_membership: app.membership.clone(),
                    snapshot_id: snapshot_id(app.applied.as_ref()),
                };
                (meta, s.path)
            });
            let first_start = meta.is_none() && recovered.entries.is_empty();
            if first_start && !bootstrap_members(&cfg).contains_key(&ids.member_id) {
                return Err(StartError::Config(format!(
                    "this data directory was restored for member {:x}, which the flags do not name: start it with the --name, --initial-cluster, --initial-advertise-peer-urls and --initial-cluster-token it was restored with",
                    ids.member_id
                )));
            }
            let restored = Restored {
                store: s.store,
                app,
            };
            (restored, meta)
        }
        None => (
            Restored {
                store: KvStore::default(),
                app: SnapshotApp::default(),
            },
            None,
        ),
    };
    // The log must continue where the snapshot ends.
    let applied_index = restored.app.applied.map(|l| l.index);
    if let Some(purged) = recovered.purged {
        if applied_index.is_none_or(|a| a < purged.index) {
            return Err(StartError::Config(format!(
                "the WAL was purged up to index {} but the newest snapshot only covers {:?}: entries are missing",
                purged.index, applied_index
            )));
        }
    }
    tracing::info!(
        entries = recovered.entries.len(),
        segments = recovered.segments.len(),
        ?placement,
        raft_cpu = cpus[placement.raft_core],
        member_id = format!("{:x}", ids.member_id),
        "recovered; starting executors"
    );
    let m = metrics();
    m.placement
        .with_label_values(&["raft"])
        .set(placement.raft_core as f64);
    m.placement
        .with_label_values(&["wal"])
        .set(placement.raft_core as f64);
    m.placement
        .with_label_values(&["mvcc"])
        .set(placement.mvcc_core as f64);

    let serve_cfg = Arc::new(ServeConfig {
        ids,
        min_lease_ttl: min_lease_ttl(cfg.election_timeout_ms),
        max_request_bytes: cfg.max_request_bytes,
        max_txn_ops: cfg.max_txn_ops,
        request_timeout: cfg.request_timeout,
        election_timeout: Duration::from_millis(cfg.election_timeout_ms),
        max_concurrent_streams: cfg.max_concurrent_streams,
        connections_max: connections_max(&cfg, fd_limit),
        quota_bytes: quota_bytes(cfg.quota_backend_bytes),
        keepalive: cfg.grpc_keepalive,
        bcrypt_cost: cfg.bcrypt_cost,
        snap_dir: snap_dir.clone(),
        cors: cfg.cors.clone(),
        host_whitelist: cfg.host_whitelist.clone(),
    });
    let space = Arc::new(SpaceGauge::default());
    let auth = Arc::new(crate::auth::AuthShared::new(cfg.auth_token_ttl, jwt));
    let (raft_tx, raft_rx) = mpsc::channel(RAFT_INBOX);
    let (mvcc_tx, mvcc_rx) = mpsc::channel(MVCC_INBOX);
    let (ready_tx, ready_rx) = watch::channel(false);

    stop_on_signals(
        raft_tx.clone(),
        cfg.request_timeout + Duration::from_millis(2 * cfg.election_timeout_ms),
    )?;
    let mut raft_parts = Some((raft_rx, recovered, loaded_meta, ready_tx));
    let mut mvcc_parts = Some((mvcc_rx, restored));
    let mut handles = Vec::new();
    for (core, &cpu) in cpus.iter().enumerate().take(placement.cores) {
        let raft_parts = if core == placement.raft_core {
            raft_parts.take()
        } else {
            None
        };
        let mvcc_parts = if core == placement.mvcc_core {
            mvcc_parts.take()
        } else {
            None
        };
        let cfg = cfg.clone();
        let (serve_cfg, space, auth) = (serve_cfg.clone(), space.clone(), auth.clone());
        let (raft_tx, mvcc_tx, mut ready_rx) = (raft_tx.clone(), mvcc_tx.clone(), ready_rx.clone());
        let (wal_dir, snap_dir) = (wal_dir.clone(), snap_dir.clone());
        let (client_sockets, peer_sockets) = (client_sockets.clone(), peer_sockets.clone());
        let (client_tls, peer_tls) = (client_tls.clone(), peer_tls.clone());
        let surfaces = surfaces.clone();
        let handle = LocalExecutorBuilder::new(CpuPlacement::Fixed(cpu))
            .name(&format!("keel-core{core}"))
            .io_memory(4 << 20)
            .spin_before_park(cfg.spin_before_park)
            .blocking_thread_pool_placement(PoolPlacement::Unbound(1))
            .spawn(move || async move {
                if let Some((mvcc_rx, restored)) = mvcc_parts {
                    let timing = MvccTiming {
                        progress_every: cfg.watch_progress_notify_interval,
                        lease_checkpoint_every: cfg.lease_checkpoint_interval,
                        warn_apply_after: cfg.warning_apply_duration,
                    };
                    let actor = MvccActor::new(
                        restored,
                        ids,
                        timing,
                        raft_tx.clone(),
                        space.clone(),
                        auth.clone(),
                    );
                    glommio::spawn_local(actor.run(mvcc_rx)).detach();
                    glommio::spawn_local(MvccActor::tick(mvcc_tx.clone())).detach();
                }
                if let Some((raft_rx, recovered, loaded_meta, ready_tx)) = raft_parts {
                    let mut peer_listeners = Vec::new();
                    for (socket, how) in peer_sockets.iter().zip(&cfg.listen_peer) {
                        let tls = match (&peer_tls, how.tls) {
                            (Some(t), true) => Some(t.server.clone()),
                            _ => None,
                        };
                        match core_listener(socket) {
                            Ok(l) => peer_listeners.push((l, tls)),
                            Err(e) => crate::fatal(&format!("cannot listen for peers: {e}")),
                        }
                    }
                    let (raft_tx, mvcc_tx, cfg) = (raft_tx.clone(), mvcc_tx.clone(), cfg.clone());
                    let (check_cfg, check_space, check_auth) =
                        (serve_cfg.clone(), space.clone(), auth.clone());
                    glommio::spawn_local(async move {
                        let (raft, peers, quiet_start) = start_raft(
                            &cfg,
                            ids,
                            (recovered, loaded_meta),
                            wal_dir,
                            snap_dir.clone(),
                            mvcc_tx.clone(),
                            peer_tls.map(|t| t.client),
                        )
                        .await;
                        let peer_ctx = Rc::new(PeerCtx {
                            raft: raft.clone(),
                            me: ids.member_id,
                            cluster_id: ids.cluster_id,
                            raft_tx: raft_tx.clone(),
                            mvcc: mvcc_tx.clone(),
                            snap_dir,
                            quiet_start,
                        });
                        for (l, tls) in peer_listeners {
                            glommio::spawn_local(crate::peer::server::serve(
                                l,
                                tls,
                                peer_ctx.clone(),
                            ))
                            .detach();
                        }
                        let (check_raft, check_peers) = (raft.clone(), peers.clone());
                        let handles = RaftHandles {
                            raft,
                            mvcc: mvcc_tx.clone(),
                            peers,
                            request_timeout: cfg.request_timeout,
                            election_timeout: Duration::from_millis(cfg.election_timeout_ms),
                            heartbeat_interval: Duration::from_millis(cfg.heartbeat_interval_ms),
                            strict_reconfig_check: cfg.strict_reconfig_check,
                            hold: Rc::default(),
                        };
                        glommio::spawn_local(crate::raft::actor::run(
                            handles,
                            raft_rx,
                            cfg.max_request_bytes,
                        ))
                        .detach();
                        if let Some(mode) = cfg.auto_compaction {
                            glommio::spawn_local(compactor::run(
                                mode,
                                raft_tx.clone(),
                                mvcc_tx.clone(),
                            ))
                            .detach();
                        }
                        join_cluster(&cfg, ids, &raft_tx, &mvcc_tx).await;
                        let me = ids.member_id;
                        if cfg.initial_corrupt_check {
                            let checked = crate::corrupt::initial_check(
                                &mvcc_tx,
                                &check_peers,
                                &check_raft,
                                me,
                            )
                            .await;
                            if let Err(e) = checked {
                                crate::fatal(&e);
                            }
                        }
                        if let Some(every) = cfg.corrupt_check_every {
                            let ctx = Rc::new(ServerCtx {
                                raft: raft_tx.clone(),
                                mvcc: mvcc_tx.clone(),
                                cfg: check_cfg,
                                space: check_space,
                                auth: check_auth,
                                caller: None,
                                cert_user: None,
                                secure: false,
                            });
                            glommio::spawn_local(crate::corrupt::monitor(
                                every,
                                ctx,
                                check_peers,
                                check_raft,
                                me,
                            ))
                            .detach();
                        }
                        let _ = ready_tx.send(true);
                    })
                    .detach();
                }
                let mut listeners = Vec::new();
                for (socket, (how, surface)) in client_sockets.iter().zip(&surfaces) {
                    // TLS handshakes cost milliseconds of CPU each; with a
                    // core to spare they stay off the one raft runs on.
                    if how.tls && core == placement.raft_core && placement.cores > 1 {
                        continue;
                    }
                    let tls = if how.tls { client_tls.clone() } else { None };
                    match core_listener(socket) {
                        Ok(l) => listeners.push((l, tls, *surface)),
                        Err(e) => crate::fatal(&format!("cannot listen for clients: {e}")),
                    }
                }
                let ctx = Rc::new(ServerCtx {
                    raft: raft_tx,
                    mvcc: mvcc_tx,
                    cfg: serve_cfg,
                    space,
                    auth,
                    caller: None,
                    cert_user: None,
                    secure: false,
                });
                let tasks: Vec<_> = listeners
                    .into_iter()
                    .map(|(l, tls, surface)| {
                        let serve =
                            crate::reactor::serve(l, tls, surface, ctx.clone(), ready_rx.clone());
                        glommio::spawn_local(serve)
                    })
                    .collect();
                while !*ready_rx.borrow_and_update() {
                    if ready_rx.changed().await.is_err() {
                        return;
                    }
                }
                if core == 0 {
                    let urls: Vec<String> =
                        cfg.listen_client.iter().map(ToString::to_string).collect();
                    tracing::info!(
                        cluster_version = crate::CLUSTER_VERSION,
                        "enabled capabilities for version {}",
                        &crate::CLUSTER_VERSION[..crate::CLUSTER_VERSION.rfind('.').unwrap_or(0)]
                    );
                    tracing::info!(urls = %urls.join(","), "ready to serve client requests");
                    for url in cfg.listen_client.iter().filter(|u| !u.tls) {
                        tracing::info!(
                            address = %url.addr,
                            "serving client traffic insecurely; this is strongly discouraged!"
                        );
                    }
                }
                for t in tasks {
                    t.await;
                }
                // The executor ends with this future, and with it every
                // task it runs: a core may have no client listener (the
                // raft core leaves https ones to the others), and its
                // actors must go on.
                std::future::pending::<()>().await;
            })
            .map_err(|e| StartError::Executor(e.to_string()))?;
        handles.push(handle);
    }
    drop(raft_tx);
    drop(mvcc_tx);
    for h in handles {
        h.join().map_err(|e| StartError::Executor(e.to_string()))?;
    }
    Ok(())
}

/// etcd's warnings for http URLs next to TLS settings, which do not apply
/// to them.
fn warn_plain_urls(cfg: &NodeConfig) {
    for url in cfg.listen_client.iter().filter(|u| !u.tls) {
        if let Some(tls) = &cfg.client_tls {
            tracing::warn!(
                client_url = %url,
                "scheme is HTTP while key and cert files are present; ignoring key and cert files"
            );
            if tls.client_cert_auth {
                tracing::warn!(
                    client_url = %url,
                    "scheme is HTTP while --client-cert-auth is enabled; ignoring client cert auth for this URL"
                );
            }
        }
    }
    if cfg.peer_tls.is_some() {
        for url in cfg.listen_peer.iter().filter(|u| !u.tls) {
            tracing::warn!(
                peer_url = %url,
                "scheme is HTTP while key and cert files are present; ignoring key and cert files"
            );
        }
    }
}

/// With `--auto-tls` or `--peer-auto-tls` and no certificate files: makes
/// (once) the self-signed certificate `settings` names.
fn self_signed_if_asked(
    settings: &crate::tls::TlsSettings,
    hosts: Option<&Vec<String>>,
) -> Result<(), StartError> {
    if let Some(hosts) = hosts {
        let dir = settings.cert_file.parent().unwrap_or(Path::new("."));
        crate::tls::self_signed(dir, hosts).map_err(StartError::Config)?;
        tracing::info!(cert = %settings.cert_file.display(), "--{}auto-tls: using a self-signed certificate", settings.flag_prefix);
    }
    Ok(())
}

/// The `https://` client listeners' TLS, loaded (and with `--auto-tls`
/// generated) once here so a bad certificate is a start-up error.
fn client_tls(cfg: &NodeConfig) -> Result<Option<Arc<crate::tls::ServerTls>>, StartError> {
    let Some(settings) = &cfg.client_tls else {
        return Ok(None);
    };
    self_signed_if_asked(settings, cfg.client_auto_tls_hosts.as_ref())?;
    let tls = crate::tls::ServerTls::server(settings.clone())
        .map_err(|e| StartError::Config(format!("client TLS: {e}")))?;
    Ok(Some(Arc::new(tls)))
}

/// Peer TLS: what this member's https peer listeners serve with, and what
/// it dials https peer URLs with.
#[derive(Clone)]
pub struct PeerTls {
    pub server: Arc<crate::tls::ServerTls>,
    pub client: Arc<crate::tls::ClientTls>,
}

fn peer_tls(cfg: &NodeConfig) -> Result<Option<PeerTls>, StartError> {
    let Some(settings) = &cfg.peer_tls else {
        return Ok(None);
    };
    self_signed_if_asked(settings, cfg.peer_auto_tls_hosts.as_ref())?;
    let bad = |e: String| StartError::Config(format!("peer TLS: {e}"));
    Ok(Some(PeerTls {
        server: Arc::new(crate::tls::ServerTls::server(settings.clone()).map_err(bad)?),
        client: Arc::new(crate::tls::ClientTls::client(settings.clone()).map_err(bad)?),
    }))
}

/// Opens the WAL writer and starts openraft (bootstrapping a new cluster's
/// membership on first start).
async fn start_raft(
    cfg: &NodeConfig,
    ids: HeaderIds,
    (mut recovered, loaded_meta): (
        keel_storage::wal::Recovered,
        Option<(SnapshotMeta, PathBuf)>,
    ),
    wal_dir: PathBuf,
    snap_dir: PathBuf,
    mvcc_tx: mpsc::Sender<crate::mvcc_actor::MvccMsg>,
    peer_tls: Option<Arc<crate::tls::ClientTls>>,
) -> (Raft, Rc<PeerClients>, QuietStart) {
    let (wal_tx, wal_rx) = mpsc::channel(WAL_INBOX);
    let wal_cfg = WalConfig {
        dir: wal_dir,
        segment_bytes: cfg.wal_segment_bytes,
        batch_bytes_max: cfg.wal_batch_bytes_max,
        linger: cfg.wal_linger,
    };
    let writer = WalWriter::open(
        wal_cfg,
        recovered.tail.take(),
        std::mem::take(&mut recovered.segments),
        recovered.vote,
        recovered.purged,
    )
    .await
    .unwrap_or_else(|e| crate::fatal(&format!("opening the WAL for writing: {e}")));
    glommio::spawn_local(writer.run(wal_rx)).detach();

    let snapshot_meta = loaded_meta.as_ref().map(|(meta, _)| meta.clone());
    let snapshot = DurableSnapshot::new(loaded_meta);
    let mut log_store = LogStore::from_recovered(
        &mut recovered,
        wal_tx.clone(),
        ids.member_id,
        snapshot.clone(),
    )
    .unwrap_or_else(|e| crate::fatal(&format!("rebuilding the raft log: {e}")));
    if cfg.force_new_cluster {
        force_new_cluster(&mut log_store, snapshot_meta, ids.member_id)
            .await
            .unwrap_or_else(|e| crate::fatal(&e));
    }
    let log = log_store.get_log_reader().await;
    let sm = StateMachine::new(mvcc_tx, wal_tx, snap_dir, snapshot.clone());
    let raft_config = openraft::Config {
        cluster_name: cfg.initial_cluster_token.clone(),
        heartbeat_interval: cfg.heartbeat_interval_ms,
        // openraft's follower waits its leader lease (election_timeout_max)
        // plus a random timeout in [min, max) after the last heartbeat before
        // it campaigns. With min = E/2 and max = E that is [1.5E, 2E): close
        // to etcd's [E, 2E) from the last heartbeat, where E is
        // --election-timeout. The lease (E) is also how long a voter refuses
        // to vote while it hears from a leader, and what MoveLeader waits out.
        election_timeout_min: cfg.election_timeout_ms / 2,
        election_timeout_max: cfg.election_timeout_ms,
        snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(cfg.snapshot_count),
        max_in_snapshot_log_to_keep: cfg.snapshot_catchup_entries,
        ..Default::default()
    }
    .validate()
    .unwrap_or_else(|e| crate::fatal(&format!("raft configuration: {e}")));
    // A member that never saw a leader and is refused by a peer was pointed
    // at the wrong cluster: stop with the reason instead of retrying forever.
    // A removed member stops too, but only after a grace period
    // (`stop_after_removal`): a leader that removed itself may be told so
    // by a peer before it has answered the client that removed it.
    let on_rejected = Box::new(|peer: NodeId, reason: &str| {
        if metrics().leader_changes.get() == 0 {
            crate::fatal(&format!("member {peer:x} refused this member: {reason}"));
        }
        tracing::error!("member {peer:x} refused this member: {reason}");
        if reason == crate::peer::server::REMOVED {
            crate::stop_after_removal();
        }
    });
    let peers = Rc::new(PeerClients::new(
        ids.member_id,
        ids.cluster_id,
        on_rejected,
        peer_tls,
    ));
    let network = PeerNetwork {
        peers: peers.clone(),
    };
    let raft = Raft::new(ids.member_id, Arc::new(raft_config), network, log_store, sm)
        .await
        .unwrap_or_else(|e| crate::fatal(&format!("starting raft: {e}")));
    glommio::spawn_local(snapshot_by_log_bytes(
        raft.clone(),
        log,
        snapshot,
        cfg.snapshot_log_bytes,
    ))
    .detach();
    let initialized = raft
        .is_initialized()
        .await
        .unwrap_or_else(|e| crate::fatal(&format!("starting raft: {e}")));
    if !initialized && cfg.initial_cluster_state == ClusterState::New {
        if cfg.initial_cluster.is_empty() {
            crate::fatal(
                "this member has an identity but no raft log (its first start was cut short); \
                 remove its data directory and start it again",
            );
        }
        raft.initialize(bootstrap_members(cfg))
            .await
            .unwrap_or_else(|e| crate::fatal(&format!("bootstrapping the raft group: {e}")));
    }
    let sole_voter = {
        let m = raft.metrics();
        let m = m.borrow();
        let voters: Vec<NodeId> = m.membership_config.membership().voter_ids().collect();
        voters == [ids.member_id]
    };
    let quiet_start = if sole_voter {
        // A single voter need not wait out an election timeout.
        let _ = raft.trigger().elect().await;
        QuietStart::none(&raft)
    } else {
        QuietStart::begin(&raft, Duration::from_millis(2 * cfg.election_timeout_ms))
    };
    (raft, peers, quiet_start)
}

/// `--force-new-cluster`: makes this member the only one of its cluster,
/// keeping its data, its member id and its cluster id (etcd's recovery
/// from a lost quorum). Every entry the member holds is kept: keel does not
/// persist the commit index, so entries past it, which etcd would drop,
/// commit with the new membership (writes whose clients heard no answer).
async fn force_new_cluster(
    log: &mut LogStore,
    snapshot: Option<SnapshotMeta>,
    me: NodeId,
) -> Result<(), String> {
    let write_err = |e: StorageError| format!("--force-new-cluster: writing the WAL: {e}");
    let (snapshot_membership, snapshot_last) = match snapshot {
        Some(s) => (Some(s.last_membership.membership().clone()), s.last_log_id),
        None => (None, None),
    };
    // A snapshot newer than the log (a crash right after one was received)
    // covers the log: forget it first, as openraft would at start-up, so
    // that the new entry follows the snapshot without a gap and the
    // membership is the newer one.
    let log_last_index = log.last_log_id().map(|l| l.index);
    if let Some(covered) = snapshot_last.filter(|s| log_last_index < Some(s.index)) {
        log.purge(covered).await.map_err(write_err)?;
    }
    let (Some(membership), Some(last)) = (
        log.last_membership().or(snapshot_membership),
        log.last_log_id().max(snapshot_last),
    ) else {
        // A new member: there is no cluster to leave yet.
        return Ok(());
    };
    let vote = log.read_vote().await.map_err(|e| e.to_string())?;
    let Some((vote, entry)) = crate::raft::members::force_sole_member(me, &membership, last, vote)?
    else {
        tracing::info!("--force-new-cluster: this member is already the cluster's only one");
        return Ok(());
    };
    let removed: Vec<String> = membership
        .nodes()
        .filter(|(id, _)| **id != me)
        .map(|(id, n)| format!("{id:x}({})", n.name))
        .collect();
    log.save_vote(&vote).await.map_err(write_err)?;
    log.append_before_start(entry).await.map_err(write_err)?;
    tracing::warn!(
        removed = removed.join(","),
        "forcing restart member as the cluster's only one (--force-new-cluster)"
    );
    Ok(())
}

/// How often the log's size since the last snapshot is looked at.
pub const LOG_BYTES_CHECK_EVERY: Duration = Duration::from_secs(1);

/// The entries a snapshot covers that are kept for lagging followers
/// (`--experimental-snapshot-catchup-entries`) carry at most this share of
/// `--snapshot-log-bytes`.
pub const CATCHUP_SHARE_OF_SNAPSHOT_LOG_BYTES: u64 = 4;

/// Bounds the log held in memory by bytes, not only by entries:
/// `--snapshot-count` and `--experimental-snapshot-catchup-entries` count
/// entries, but an entry is a batch of up to 4,096 requests or 1.5 MiB, so
/// by count alone the log could grow to many GiB.
///
/// * Takes a snapshot when the applied entries since the last one carry
///   more than `limit` payload bytes.
/// * Forgets entries the durable snapshot covers once those kept for
///   lagging followers carry more than a quarter of `limit`: 5,000 batches
///   of 1.5 MiB would be 7.5 GiB. A follower further behind gets the
///   snapshot.
async fn snapshot_by_log_bytes(raft: Raft, log: LogReader, snapshot: DurableSnapshot, limit: u64) {
    let catchup_limit = limit / CATCHUP_SHARE_OF_SNAPSHOT_LOG_BYTES;
    loop {
        glommio::timer::sleep(LOG_BYTES_CHECK_EVERY).await;
        let applied = raft.metrics().borrow().last_applied.map_or(0, |l| l.index);
        let since = snapshot.last_log_id().map_or(0, |l| l.index);
        let bytes = log.payload_bytes(since, applied);
        if bytes > limit {
            tracing::info!(
                bytes,
                limit,
                "snapshot: the log since the last one is large"
            );
            if raft.trigger().snapshot().await.is_err() {
                return;
            }
        }
        if let Some(upto) = log.purge_point_within(since, catchup_limit) {
            tracing::debug!(upto, catchup_limit, "forgetting catch-up entries");
            if raft.trigger().purge_log(upto).await.is_err() {
                return;
            }
        }
    }
}

/// Publishes this member's name and client URLs through raft (as etcd
/// does before serving), then waits until it has applied everything the
/// cluster had committed: only then does it serve clients.
async fn join_cluster(
    cfg: &NodeConfig,
    ids: HeaderIds,
    raft_tx: &mpsc::Sender<RaftRequest>,
    mvcc_tx: &mpsc::Sender<crate::mvcc_actor::MvccMsg>,
) {
    let change = MemberChange::Publish {
        id: ids.member_id,
        name: cfg.name.clone(),
        client_urls: cfg.advertise_client_urls.clone(),
    };
    let mut delay = JOIN_RETRY_MIN;
    let mut last_warning = Instant::now();
    loop {
        let (tx, rx) = oneshot::channel();
        let request = RaftRequest::ChangeMembers {
            change: change.clone(),
            origin: Origin::Client,
            reply: tx,
        };
        if raft_tx.send(request).await.is_err() {
            return;
        }
        match rx.await {
            Ok(Ok(())) => {
                tracing::info!(
                    local_member_id = format!("{:x}", ids.member_id),
                    cluster_id = format!("{:x}", ids.cluster_id),
                    name = %cfg.name,
                    client_urls = %cfg.advertise_client_urls.join(","),
                    "published local member to cluster through raft"
                );
                break;
            }
            Ok(Err(e)) if e == MemberError::not_found() => {
                crate::fatal("this member is not in the cluster's membership (was it removed?)")
            }
            Ok(Err(e)) => {
                if last_warning.elapsed() >= JOIN_WARN_EVERY {
                    tracing::warn!(
                        "waiting to publish this member to the cluster: {}",
                        e.message
                    );
                    last_warning = Instant::now();
                }
            }
            Err(_) => return,
        }
        glommio::timer::sleep(delay).await;
        delay = (delay * 2).min(JOIN_RETRY_MAX);
    }
    let mut delay = JOIN_RETRY_MIN;
    loop {
        let (tx, rx) = oneshot::channel();
        let request = RaftRequest::ReadIndex {
            origin: Origin::Client,
            reply: tx,
        };
        if raft_tx.send(request).await.is_err() {
            return;
        }
        if let Ok(Ok(index)) = rx.await {
            let (tx, rx) = oneshot::channel();
            let wait = crate::mvcc_actor::MvccMsg::WaitApplied { index, reply: tx };
            if mvcc_tx.send(wait).await.is_err() || rx.await.is_err() {
                return;
            }
            return;
        }
        glommio::timer::sleep(delay).await;
        delay = (delay * 2).min(JOIN_RETRY_MAX);
    }
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsRawFd;

    #[test]
    fn client_connections_leave_descriptors_for_the_wal() {
        use super::client_connections_per_core as per_core;
        // The common soft limit of 1024, 2 cores, 3 members: 64 + 48 kept.
        assert_eq!(per_core(1024, 2, 3, 16_384), 456);
        // `ulimit -n 256`, one member: 176 connections in all.
        assert_eq!(per_core(256, 2, 1, 16_384), 88);
        // A generous limit leaves --max-connections as it is.
        assert_eq!(per_core(1 << 20, 2, 3, 16_384), 16_384);
        // A limit below the reserve still serves one connection per core.
        assert_eq!(per_core(60, 2, 1, 16_384), 1);
    }

    #[test]
    fn members_sharing_a_host_start_on_different_cpus() {
        assert_eq!(super::cpu_order(vec![0, 1], 0), vec![0, 1]);
        assert_eq!(super::cpu_order(vec![0, 1], 1), vec![1, 0]);
        assert_eq!(super::cpu_order(vec![0, 1], 2), vec![0, 1]);
        assert_eq!(super::cpu_order(vec![2, 5, 7], 4), vec![5, 7, 2]);
        assert_eq!(super::cpu_order(vec![3], 2), vec![3]);
        assert_eq!(super::cpu_order(vec![], 1), Vec::<usize>::new());
    }

    #[test]
    fn listening_sockets_are_non_blocking() {
        let sockets = super::bind_listeners(&["127.0.0.1:0".parse().unwrap()], "clients").unwrap();
        // SAFETY: F_GETFL on an open descriptor.
        let flags = unsafe { libc::fcntl(sockets[0].as_raw_fd(), libc::F_GETFL) };
        assert_ne!(flags & libc::O_NONBLOCK, 0, "flags {flags:#x}");
    }
}
