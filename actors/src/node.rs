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
use std::time::Duration;

use glommio::{LocalExecutorBuilder, Placement as CpuPlacement, PoolPlacement};
use keel_storage::mvcc::snapshot::load_latest_snapshot;
use keel_storage::mvcc::KvStore;
use keel_storage::wal::recover;
use tokio::sync::{mpsc, watch};

use crate::compactor::{self, AutoCompaction};
use crate::metrics::metrics;
use crate::mvcc_actor::{HeaderIds, MvccActor};
use crate::raft::codec::decode_snapshot_meta;
use crate::raft::log_store::LogStore;
use crate::raft::network::NoPeers;
use crate::raft::state_machine::StateMachine;
use crate::raft::types::{Node, Raft, SnapshotMeta, StoredMembership};
use crate::service::{ServeConfig, ServerCtx};
use crate::wal_writer::{WalConfig, WalWriter};

/// Bound of the reactors → raft actor queue.
pub const RAFT_INBOX: usize = 8192;
/// Bound of the → MVCC actor queue.
pub const MVCC_INBOX: usize = 8192;
/// Bound of the raft → WAL writer queue.
pub const WAL_INBOX: usize = 4096;
/// How long start-up waits for this member to become leader.
const LEADER_WAIT: Duration = Duration::from_secs(30);

#[derive(Debug, Clone)]
pub struct NodeConfig {
    pub name: String,
    pub data_dir: PathBuf,
    pub listen_client: Vec<SocketAddr>,
    pub advertise_client_urls: Vec<String>,
    pub initial_advertise_peer_urls: Vec<String>,
    pub initial_cluster_token: String,
    pub cores: usize,
    pub actor_placement: ActorPlacement,
    pub max_request_bytes: usize,
    pub max_txn_ops: usize,
    pub snapshot_count: u64,
    pub snapshot_catchup_entries: u64,
    pub auto_compaction: Option<AutoCompaction>,
    pub wal_segment_bytes: u64,
    pub wal_batch_bytes_max: usize,
    pub wal_linger: Duration,
    pub heartbeat_interval_ms: u64,
    pub election_timeout_ms: u64,
    pub request_timeout: Duration,
    pub spin_before_park: Duration,
    pub max_concurrent_streams: u32,
    pub connections_max: usize,
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
fn fnv64(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for p in parts {
        for &b in p.iter().chain(std::iter::once(&0u8)) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    h
}

/// Loads the member's identity, or fixes it at first start.
fn identity(member_dir: &Path, cfg: &NodeConfig) -> Result<HeaderIds, StartError> {
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
    let mut peers = cfg.initial_advertise_peer_urls.clone();
    peers.sort();
    let peers = peers.join(",");
    let member_id = fnv64(&[peers.as_bytes(), cfg.initial_cluster_token.as_bytes()]).max(1);
    let cluster_id = fnv64(&[
        &member_id.to_le_bytes(),
        cfg.initial_cluster_token.as_bytes(),
    ])
    .max(1);
    let text = format!(
        "member_id={member_id:x}\ncluster_id={cluster_id:x}\nname={}\n",
        cfg.name
    );
    keel_storage::write_file_atomically(&path, text.as_bytes())
        .map_err(|e| err(format!("writing identity: {e}")))?;
    Ok(HeaderIds {
        cluster_id,
        member_id,
    })
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

/// glommio registers (locks) I/O memory per executor; raise the limit.
fn raise_memlock_limit() {
    let want = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: plain syscalls on a local struct.
    unsafe {
        if libc::setrlimit(libc::RLIMIT_MEMLOCK, &want) != 0 {
            let mut cur = libc::rlimit {
                rlim_cur: 0,
                rlim_max: 0,
            };
            if libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut cur) == 0 {
                cur.rlim_cur = cur.rlim_max;
                libc::setrlimit(libc::RLIMIT_MEMLOCK, &cur);
            }
        }
    }
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

/// Runs a member until the process is stopped.
pub fn run(cfg: NodeConfig) -> Result<(), StartError> {
    raise_memlock_limit();
    let cpus = usable_cpus();
    if cfg.cores == 0 || cfg.cores > cpus.len() {
        return Err(StartError::Config(format!(
            "--cores must be between 1 and {} (the CPUs available to this process), got {}",
            cpus.len(),
            cfg.cores
        )));
    }
    let placement = plan(cfg.cores, cfg.actor_placement);
    let data_dir_err = |e: std::io::Error| StartError::DataDir {
        dir: cfg.data_dir.clone(),
        msg: e.to_string(),
    };
    std::fs::create_dir_all(cfg.data_dir.join("member")).map_err(data_dir_err)?;
    // Absolute from here on: glommio's directory handles refuse relative
    // paths (EBADF), and the default data dir is relative (`default.keel`).
    let member_dir = std::fs::canonicalize(cfg.data_dir.join("member")).map_err(data_dir_err)?;
    let _lock = lock_data_dir(&member_dir)?;
    let ids = identity(&member_dir, &cfg)?;
    let wal_dir = member_dir.join("wal");
    let snap_dir = member_dir.join("snap");

    let recovered = recover(&wal_dir)?;
    if let Some(note) = &recovered.repaired {
        tracing::warn!("{note}");
    }
    let (store, applied, membership, loaded_meta) = match load_latest_snapshot(&snap_dir)? {
        Some(s) => {
            let (applied, membership) = decode_snapshot_meta(&s.app_meta).map_err(|msg| {
                StartError::Snapshot(keel_storage::mvcc::snapshot::SnapshotError::Corrupt {
                    file: s.path.clone(),
                    offset: 0,
                    reason: msg,
                })
            })?;
            tracing::info!(path = %s.path.display(), rev = s.store.current_rev(), "loaded snapshot");
            let meta = SnapshotMeta {
                last_log_id: applied,
                last_membership: membership.clone(),
                snapshot_id: applied.map_or("0-0".into(), |l| {
                    format!("{}-{}", l.leader_id.term, l.index)
                }),
            };
            (s.store, applied, membership, Some((meta, s.path)))
        }
        None => (KvStore::default(), None, StoredMembership::default(), None),
    };
    // The log must continue where the snapshot ends.
    let applied_index = applied.map(|l| l.index);
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
        name: cfg.name.clone(),
        ids,
        client_urls: cfg.advertise_client_urls.clone(),
        peer_urls: cfg.initial_advertise_peer_urls.clone(),
        max_request_bytes: cfg.max_request_bytes,
        max_txn_ops: cfg.max_txn_ops,
        request_timeout: cfg.request_timeout,
        max_concurrent_streams: cfg.max_concurrent_streams,
        connections_max: cfg.connections_max,
    });
    let (raft_tx, raft_rx) = mpsc::channel(RAFT_INBOX);
    let (mvcc_tx, mvcc_rx) = mpsc::channel(MVCC_INBOX);
    let (ready_tx, ready_rx) = watch::channel(false);

    let mut raft_parts = Some((raft_rx, recovered, loaded_meta, ready_tx));
    let mut mvcc_parts = Some((mvcc_rx, store, applied, membership));
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
        let serve_cfg = serve_cfg.clone();
        let (raft_tx, mvcc_tx, mut ready_rx) = (raft_tx.clone(), mvcc_tx.clone(), ready_rx.clone());
        let (wal_dir, snap_dir) = (wal_dir.clone(), snap_dir.clone());
        let handle = LocalExecutorBuilder::new(CpuPlacement::Fixed(cpu))
            .name(&format!("keel-core{core}"))
            .io_memory(4 << 20)
            .spin_before_park(cfg.spin_before_park)
            .blocking_thread_pool_placement(PoolPlacement::Unbound(1))
            .spawn(move || async move {
                if let Some((mvcc_rx, store, applied, membership)) = mvcc_parts {
                    let actor = MvccActor::new(store, applied, membership, ids);
                    glommio::spawn_local(actor.run(mvcc_rx)).detach();
                }
                if let Some((raft_rx, recovered, loaded_meta, ready_tx)) = raft_parts {
                    let (raft_tx, mvcc_tx, cfg) = (raft_tx.clone(), mvcc_tx.clone(), cfg.clone());
                    glommio::spawn_local(async move {
                        let raft = start_raft(
                            &cfg,
                            ids,
                            recovered,
                            loaded_meta,
                            wal_dir,
                            snap_dir,
                            mvcc_tx.clone(),
                        )
                        .await;
                        if let Some(mode) = cfg.auto_compaction {
                            glommio::spawn_local(compactor::run(mode, raft_tx, mvcc_tx.clone()))
                                .detach();
                        }
                        let _ = ready_tx.send(true);
                        crate::raft::actor::run(raft, mvcc_tx, raft_rx, cfg.max_request_bytes)
                            .await;
                    })
                    .detach();
                }
                let mut listeners = Vec::new();
                for addr in &cfg.listen_client {
                    match glommio::net::TcpListener::bind(addr) {
                        Ok(l) => listeners.push(l),
                        Err(e) => {
                            crate::fatal(&format!("cannot listen for clients on {addr}: {e}"))
                        }
                    }
                }
                while !*ready_rx.borrow_and_update() {
                    if ready_rx.changed().await.is_err() {
                        return;
                    }
                }
                let ctx = Rc::new(ServerCtx {
                    raft: raft_tx,
                    mvcc: mvcc_tx,
                    cfg: serve_cfg,
                });
                if core == 0 {
                    tracing::info!(addrs = ?cfg.listen_client, "ready to serve client requests");
                }
                let tasks: Vec<_> = listeners
                    .into_iter()
                    .map(|l| glommio::spawn_local(crate::reactor::serve(l, ctx.clone())))
                    .collect();
                for t in tasks {
                    t.await;
                }
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

/// Opens the WAL writer and starts openraft; returns once this member leads.
async fn start_raft(
    cfg: &NodeConfig,
    ids: HeaderIds,
    mut recovered: keel_storage::wal::Recovered,
    loaded_meta: Option<(SnapshotMeta, PathBuf)>,
    wal_dir: PathBuf,
    snap_dir: PathBuf,
    mvcc_tx: mpsc::Sender<crate::mvcc_actor::MvccMsg>,
) -> Raft {
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

    let log_store = LogStore::from_recovered(&mut recovered, wal_tx)
        .unwrap_or_else(|e| crate::fatal(&format!("rebuilding the raft log: {e}")));
    let sm = StateMachine::new(mvcc_tx, snap_dir, loaded_meta);
    let raft_config = openraft::Config {
        cluster_name: cfg.initial_cluster_token.clone(),
        heartbeat_interval: cfg.heartbeat_interval_ms,
        election_timeout_min: cfg.election_timeout_ms,
        election_timeout_max: cfg.election_timeout_ms * 2,
        snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(cfg.snapshot_count),
        max_in_snapshot_log_to_keep: cfg.snapshot_catchup_entries,
        ..Default::default()
    }
    .validate()
    .unwrap_or_else(|e| crate::fatal(&format!("raft configuration: {e}")));
    let raft = Raft::new(ids.member_id, Arc::new(raft_config), NoPeers, log_store, sm)
        .await
        .unwrap_or_else(|e| crate::fatal(&format!("starting raft: {e}")));
    let initialized = raft
        .is_initialized()
        .await
        .unwrap_or_else(|e| crate::fatal(&format!("starting raft: {e}")));
    if !initialized {
        let addr = cfg
            .initial_advertise_peer_urls
            .first()
            .cloned()
            .unwrap_or_default();
        let members = BTreeMap::from([(ids.member_id, Node { addr })]);
        raft.initialize(members)
            .await
            .unwrap_or_else(|e| crate::fatal(&format!("bootstrapping the raft group: {e}")));
    }
    // A single voter need not wait out an election timeout.
    let _ = raft.trigger().elect().await;
    let me = ids.member_id;
    if let Err(e) = raft
        .wait(Some(LEADER_WAIT))
        .metrics(
            |m| {
                m.current_leader == Some(me)
                    && m.last_applied
                        .is_some_and(|a| Some(a.index) >= m.last_log_index)
            },
            "leader and applied",
        )
        .await
    {
        crate::fatal(&format!(
            "this member did not become leader within {LEADER_WAIT:?}: {e}"
        ));
    }
    raft
}
