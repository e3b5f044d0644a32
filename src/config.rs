//! Command-line flags, named as etcd's and also read from `ETCD_*`
//! environment variables, so an etcd unit file works unchanged. keel's own
//! tunables use `KEEL_*`.

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Parser;
use keel_actors::auth::JwtSettings;
use keel_actors::compactor::AutoCompaction;
use keel_actors::node::{ActorPlacement, ClusterState, ListenUrl, NodeConfig};
use keel_actors::service::GrpcKeepalive;
use keel_actors::tls::{TlsSettings, TlsVersion};

#[derive(Parser, Debug)]
#[command(
    name = "keel",
    version,
    about = "keel: an etcd-compatible key-value store",
    long_about = "keel serves etcd's v3 gRPC API. Flags have etcd's names; each can also be set \
                  through the environment variable ETCD_<FLAG> (upper case, '-' as '_')."
)]
pub struct Flags {
    /// Human-readable name for this member.
    #[arg(long, env = "ETCD_NAME", default_value = "default")]
    pub name: String,

    /// Path to the data directory [default: <name>.keel].
    #[arg(long, env = "ETCD_DATA_DIR")]
    pub data_dir: Option<PathBuf>,

    /// Comma-separated URLs to listen on for client traffic.
    #[arg(
        long,
        env = "ETCD_LISTEN_CLIENT_URLS",
        default_value = "http://127.0.0.1:2379"
    )]
    pub listen_client_urls: String,

    /// Comma-separated client URLs advertised to the cluster [default: the listen URLs].
    #[arg(long, env = "ETCD_ADVERTISE_CLIENT_URLS")]
    pub advertise_client_urls: Option<String>,

    /// Comma-separated URLs to listen on for the /metrics and /health endpoints
    /// (https ones use the client TLS flags).
    #[arg(long, env = "ETCD_LISTEN_METRICS_URLS", default_value = "")]
    pub listen_metrics_urls: String,

    /// Comma-separated URLs to listen on for peer traffic.
    #[arg(
        long,
        env = "ETCD_LISTEN_PEER_URLS",
        default_value = "http://127.0.0.1:2380"
    )]
    pub listen_peer_urls: String,

    /// This member's peer URLs, advertised to the cluster.
    #[arg(
        long,
        env = "ETCD_INITIAL_ADVERTISE_PEER_URLS",
        default_value = "http://127.0.0.1:2380"
    )]
    pub initial_advertise_peer_urls: String,

    /// Initial cluster configuration for bootstrapping, name=peer-url,...
    /// [default: <name>=<initial-advertise-peer-urls>].
    #[arg(long, env = "ETCD_INITIAL_CLUSTER")]
    pub initial_cluster: Option<String>,

    /// new or existing.
    #[arg(long, env = "ETCD_INITIAL_CLUSTER_STATE", default_value = "new", value_parser = ["new", "existing"])]
    pub initial_cluster_state: String,

    /// Initial cluster token; distinguishes clusters with the same members.
    #[arg(
        long,
        env = "ETCD_INITIAL_CLUSTER_TOKEN",
        default_value = "etcd-cluster"
    )]
    pub initial_cluster_token: String,

    /// Maximum client request size in bytes the server will accept.
    #[arg(long, env = "ETCD_MAX_REQUEST_BYTES", default_value_t = 1_572_864, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_request_bytes: u32,

    /// Maximum number of operations permitted in a transaction.
    #[arg(long, env = "ETCD_MAX_TXN_OPS", default_value_t = 128, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_txn_ops: u32,

    /// Number of committed transactions to trigger a snapshot to disk.
    #[arg(long, env = "ETCD_SNAPSHOT_COUNT", default_value_t = 100_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub snapshot_count: u64,

    /// Also snapshot when the applied log since the last snapshot holds more bytes than this (keel).
    #[arg(long, env = "KEEL_SNAPSHOT_LOG_BYTES", default_value_t = 512 * 1024 * 1024, value_parser = clap::value_parser!(u64).range(1..))]
    pub snapshot_log_bytes: u64,

    /// Interpret --auto-compaction-retention as a period ('periodic') or a revision count ('revision').
    #[arg(long, env = "ETCD_AUTO_COMPACTION_MODE", default_value = "periodic", value_parser = ["periodic", "revision"])]
    pub auto_compaction_mode: String,

    /// Auto-compaction retention: periodic: a duration ('1h', '30m'; a bare number is hours);
    /// revision: a number of revisions. 0 disables auto-compaction.
    #[arg(long, env = "ETCD_AUTO_COMPACTION_RETENTION", default_value = "0")]
    pub auto_compaction_retention: String,

    /// Time (in milliseconds) of a heartbeat interval.
    #[arg(long, env = "ETCD_HEARTBEAT_INTERVAL", default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..))]
    pub heartbeat_interval: u64,

    /// Time (in milliseconds) for an election to timeout.
    #[arg(long, env = "ETCD_ELECTION_TIMEOUT", default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..))]
    pub election_timeout: u64,

    /// Reject reconfiguration requests that would cause quorum loss.
    #[arg(
        long,
        env = "ETCD_STRICT_RECONFIG_CHECK",
        default_value_t = true,
        action = clap::ArgAction::Set,
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "true"
    )]
    pub strict_reconfig_check: bool,

    /// Duration of periodic watch progress notifications ('10m', '5s').
    #[arg(
        long = "experimental-watch-progress-notify-interval",
        alias = "watch-progress-notify-interval",
        env = "ETCD_EXPERIMENTAL_WATCH_PROGRESS_NOTIFY_INTERVAL",
        default_value = "10m"
    )]
    pub watch_progress_notify_interval: String,

    /// Frequency duration of server-to-client pings to check if a connection is alive (0 to disable).
    #[arg(
        long = "grpc-keepalive-interval",
        env = "ETCD_GRPC_KEEPALIVE_INTERVAL",
        default_value = "2h"
    )]
    pub grpc_keepalive_interval: String,

    /// Additional duration of wait before closing a non-responsive connection (0 to disable).
    #[arg(
        long = "grpc-keepalive-timeout",
        env = "ETCD_GRPC_KEEPALIVE_TIMEOUT",
        default_value = "20s"
    )]
    pub grpc_keepalive_timeout: String,

    /// Minimum interval duration that a client should wait before pinging server.
    #[arg(
        long = "grpc-keepalive-min-time",
        env = "ETCD_GRPC_KEEPALIVE_MIN_TIME",
        default_value = "5s"
    )]
    pub grpc_keepalive_min_time: String,

    /// Duration between the leader's checkpoints of leases' remaining TTLs.
    #[arg(
        long = "experimental-lease-checkpoint-interval",
        env = "ETCD_EXPERIMENTAL_LEASE_CHECKPOINT_INTERVAL",
        default_value = "5m"
    )]
    pub lease_checkpoint_interval: String,

    /// Log level: debug, info, warn, error, panic or fatal.
    #[arg(long, env = "ETCD_LOG_LEVEL", default_value = "info", value_parser = ["debug", "info", "warn", "error", "panic", "fatal"])]
    pub log_level: String,

    /// Specify 'zap' for structured (JSON) logging or 'capnslog' (text).
    #[arg(long, env = "ETCD_LOGGER", default_value = "capnslog", value_parser = ["capnslog", "zap"])]
    pub logger: String,

    /// Comma-separated log targets: 'default' or 'stderr', 'stdout', or file paths.
    #[arg(long, env = "ETCD_LOG_OUTPUTS", default_value = "default")]
    pub log_outputs: String,

    /// Enable debug-level logging (as --log-level=debug).
    #[arg(
        long,
        env = "ETCD_DEBUG",
        default_value_t = false,
        action = clap::ArgAction::Set,
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "true"
    )]
    pub debug: bool,

    /// Number of cores to run on (one executor each) [default: all available].
    #[arg(long, env = "KEEL_CORES")]
    pub cores: Option<usize>,

    /// Where raft, WAL and MVCC actors run on multi-core hosts: packed (all on
    /// core 0) or spread (MVCC apply on core 1) (keel).
    #[arg(long, env = "KEEL_ACTOR_PLACEMENT", default_value = "packed", value_parser = ["packed", "spread"])]
    pub actor_placement: String,

    /// WAL segment file size in bytes (keel).
    #[arg(long, env = "KEEL_WAL_SEGMENT_BYTES", default_value_t = 64 * 1024 * 1024)]
    pub wal_segment_bytes: u64,

    /// Largest group-commit batch the WAL writer drains at once, in bytes (keel).
    #[arg(long, env = "KEEL_WAL_BATCH_BYTES_MAX", default_value_t = 4 * 1024 * 1024)]
    pub wal_batch_bytes_max: usize,

    /// Microseconds the WAL writer waits for more appends before a flush (keel; 0 = none).
    #[arg(long, env = "KEEL_WAL_LINGER_US", default_value_t = 0)]
    pub wal_linger_us: u64,

    /// Raft entries kept after a snapshot for slow followers (etcd's --experimental-snapshot-catchup-entries).
    #[arg(
        long = "experimental-snapshot-catchup-entries",
        alias = "snapshot-catchup-entries",
        env = "ETCD_EXPERIMENTAL_SNAPSHOT_CATCHUP_ENTRIES",
        default_value_t = 5000
    )]
    pub snapshot_catchup_entries: u64,

    /// Microseconds an idle executor spins before sleeping (keel; trades CPU for latency).
    #[arg(long, env = "KEEL_SPIN_BEFORE_PARK_US", default_value_t = 0)]
    pub spin_before_park_us: u64,

    /// Maximum concurrent gRPC streams per client connection.
    #[arg(long, env = "ETCD_MAX_CONCURRENT_STREAMS", default_value_t = 4096, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_concurrent_streams: u32,

    /// Maximum client connections per core (keel; default 16384, or fewer
    /// if the open-file limit allows fewer).
    #[arg(long, env = "KEEL_MAX_CONNECTIONS", value_parser = clap::value_parser!(u64).range(1..))]
    pub max_connections: Option<u64>,

    /// Path to the client server TLS cert file.
    #[arg(long, env = "ETCD_CERT_FILE")]
    pub cert_file: Option<PathBuf>,

    /// Path to the client server TLS key file.
    #[arg(long, env = "ETCD_KEY_FILE")]
    pub key_file: Option<PathBuf>,

    /// Path to the client server TLS trusted CA cert file.
    #[arg(long, env = "ETCD_TRUSTED_CA_FILE")]
    pub trusted_ca_file: Option<PathBuf>,

    /// Enable client cert authentication.
    #[arg(
        long,
        env = "ETCD_CLIENT_CERT_AUTH",
        default_value_t = false,
        action = clap::ArgAction::Set,
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "true"
    )]
    pub client_cert_auth: bool,

    /// Path to the client certificate revocation list file.
    #[arg(long, env = "ETCD_CLIENT_CRL_FILE")]
    pub client_crl_file: Option<PathBuf>,

    /// Client TLS using generated certificates.
    #[arg(
        long,
        env = "ETCD_AUTO_TLS",
        default_value_t = false,
        action = clap::ArgAction::Set,
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "true"
    )]
    pub auto_tls: bool,

    /// Path to the peer server TLS cert file.
    #[arg(long, env = "ETCD_PEER_CERT_FILE")]
    pub peer_cert_file: Option<PathBuf>,

    /// Path to the peer server TLS key file.
    #[arg(long, env = "ETCD_PEER_KEY_FILE")]
    pub peer_key_file: Option<PathBuf>,

    /// Path to the peer server TLS trusted CA file.
    #[arg(long, env = "ETCD_PEER_TRUSTED_CA_FILE")]
    pub peer_trusted_ca_file: Option<PathBuf>,

    /// Enable peer client cert authentication.
    #[arg(
        long,
        env = "ETCD_PEER_CLIENT_CERT_AUTH",
        default_value_t = false,
        action = clap::ArgAction::Set,
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "true"
    )]
    pub peer_client_cert_auth: bool,

    /// Path to the peer certificate revocation list file.
    #[arg(long, env = "ETCD_PEER_CRL_FILE")]
    pub peer_crl_file: Option<PathBuf>,

    /// Peer TLS using self-generated certificates if --peer-key-file and --peer-cert-file are not provided.
    #[arg(
        long,
        env = "ETCD_PEER_AUTO_TLS",
        default_value_t = false,
        action = clap::ArgAction::Set,
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "true"
    )]
    pub peer_auto_tls: bool,

    /// Allowed TLS hostname for client cert authentication.
    #[arg(long, env = "ETCD_CLIENT_CERT_ALLOWED_HOSTNAME")]
    pub client_cert_allowed_hostname: Option<String>,

    /// Required CN for client certs connecting to the peer endpoint.
    #[arg(long, env = "ETCD_PEER_CERT_ALLOWED_CN")]
    pub peer_cert_allowed_cn: Option<String>,

    /// Allowed TLS hostname for inter peer authentication.
    #[arg(long, env = "ETCD_PEER_CERT_ALLOWED_HOSTNAME")]
    pub peer_cert_allowed_hostname: Option<String>,

    /// Comma-separated list of supported TLS cipher suites between client/server and peers
    /// (empty: the TLS library's defaults).
    #[arg(long, env = "ETCD_CIPHER_SUITES", default_value = "")]
    pub cipher_suites: String,

    /// Minimum TLS version supported by etcd (TLS1.2 or TLS1.3).
    #[arg(long, env = "ETCD_TLS_MIN_VERSION", default_value = "TLS1.2")]
    pub tls_min_version: String,

    /// Maximum TLS version supported by etcd (empty: TLS1.3).
    #[arg(long, env = "ETCD_TLS_MAX_VERSION", default_value = "")]
    pub tls_max_version: String,

    /// Check data corruption (HashKV compared with the peers') before serving client traffic.
    #[arg(
        long,
        env = "ETCD_EXPERIMENTAL_INITIAL_CORRUPT_CHECK",
        default_value_t = false,
        action = clap::ArgAction::Set,
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "true"
    )]
    pub experimental_initial_corrupt_check: bool,

    /// Duration of time between cluster corruption check passes (0: none).
    #[arg(
        long,
        alias = "corrupt-check-time",
        env = "ETCD_EXPERIMENTAL_CORRUPT_CHECK_TIME",
        default_value = "0s"
    )]
    pub experimental_corrupt_check_time: String,

    /// Raise alarms when backend size exceeds the given quota (0 defaults to low space quota).
    #[arg(
        long,
        env = "ETCD_QUOTA_BACKEND_BYTES",
        default_value_t = 0,
        allow_negative_numbers = true
    )]
    pub quota_backend_bytes: i64,

    /// Specify auth token specific options.
    #[arg(long, env = "ETCD_AUTH_TOKEN", default_value = "simple")]
    pub auth_token: String,

    /// The lifetime in seconds of the auth token.
    #[arg(long, env = "ETCD_AUTH_TOKEN_TTL", default_value_t = 300)]
    pub auth_token_ttl: u64,

    /// Specify bcrypt algorithm cost factor for auth password hashing.
    #[arg(long, env = "ETCD_BCRYPT_COST", default_value_t = 10)]
    pub bcrypt_cost: u32,

    /// Path to the dedicated wal directory [default: <data-dir>/member/wal].
    #[arg(long, env = "ETCD_WAL_DIR")]
    pub wal_dir: Option<PathBuf>,

    /// Maximum number of snapshot files to retain (0 is unlimited) [default:
    /// 2; etcd's 5 counts files that hold no data, keel's each hold the store].
    #[arg(long, env = "ETCD_MAX_SNAPSHOTS")]
    pub max_snapshots: Option<usize>,

    /// Comma-separated whitelist of origins for CORS (cross-origin resource sharing).
    #[arg(long, env = "ETCD_CORS", default_value = "*")]
    pub cors: String,

    /// Comma-separated acceptable hostnames from HTTP client requests, if
    /// the server is not secure (empty means allow all).
    #[arg(long, env = "ETCD_HOST_WHITELIST", default_value = "*")]
    pub host_whitelist: String,

    /// Set level of detail for exported metrics, specify 'extensive' to
    /// include server side grpc histogram metrics.
    #[arg(long, env = "ETCD_METRICS", default_value = "basic", value_parser = ["basic", "extensive"])]
    pub metrics: String,

    /// Warning is generated if requests take more time than this duration.
    #[arg(
        long = "experimental-warning-apply-duration",
        alias = "warning-apply-duration",
        env = "ETCD_EXPERIMENTAL_WARNING_APPLY_DURATION",
        default_value = "100ms"
    )]
    pub warning_apply_duration: String,

    /// Path to the server configuration file (etcd's YAML keys). Other
    /// flags and environment variables are then ignored, as by etcd.
    #[arg(long, env = "ETCD_CONFIG_FILE")]
    pub config_file: Option<PathBuf>,

    #[command(flatten)]
    pub compat: crate::compat::CompatFlags,
}

/// `--auth-token`: `simple` (None), or `jwt` with its comma-separated
/// options (`sign-method` required; `pub-key`, `priv-key` files; `ttl` a
/// duration, 5m by default), as etcd reads them.
fn auth_token(flag: &str) -> Result<Option<JwtSettings>, String> {
    let mut parts = flag.split(',');
    match parts.next().unwrap_or_default() {
        "simple" => return Ok(None),
        "jwt" => {}
        other => {
            return Err(format!(
                "--auth-token: unknown token type {other:?} (auth: invalid auth options)"
            ))
        }
    }
    let mut jwt = JwtSettings {
        sign_method: String::new(),
        pub_key: None,
        priv_key: None,
        ttl: keel_actors::auth::JWT_TTL_DEFAULT,
    };
    for opt in parts {
        let (name, value) = opt.split_once('=').unwrap_or((opt, ""));
        match name {
            "sign-method" => jwt.sign_method = value.to_string(),
            "pub-key" => jwt.pub_key = Some(PathBuf::from(value)),
            "priv-key" => jwt.priv_key = Some(PathBuf::from(value)),
            "ttl" => {
                jwt.ttl = parse_duration(value).ok_or_else(|| {
                    format!("--auth-token: ttl={value}: expected a duration like 5m or 30s (auth: invalid auth options)")
                })?
            }
            _ => tracing::warn!("unknown JWT options: {name}"),
        }
    }
    if jwt.sign_method.is_empty() {
        return Err(
            "--auth-token jwt: sign-method is required (auth: invalid auth options)".into(),
        );
    }
    Ok(Some(jwt))
}

/// `ETCD_*` variables in `env` that name no flag, as `NAME=value`: etcd
/// warns about each (a misspelt `ETCD_CLIENT_CERT_AUTH` would otherwise
/// leave a server without the security it was meant to have, silently).
pub fn unrecognized_env(env: impl Iterator<Item = (String, String)>) -> Vec<String> {
    use clap::CommandFactory;
    let cmd = Flags::command();
    let known: Vec<String> = cmd
        .get_arguments()
        .filter_map(|a| a.get_env())
        .map(|e| e.to_string_lossy().into_owned())
        .collect();
    env.filter(|(k, _)| k.starts_with("ETCD_") && !known.contains(k))
        .map(|(k, v)| format!("{k}={v}"))
        .collect()
}

pub fn log_filter(level: &str) -> String {
    let level = match level {
        "panic" | "fatal" => "error",
        l => l,
    };
    // openraft narrates every snapshot and election at info, and logs a
    // peer that is down on every retry (twice a second, with decimal ids);
    // keel logs elections, snapshots and unreachable peers itself, the
    // last at most every 30 s per peer with its id in hex.
    if level == "debug" {
        "debug".into()
    } else {
        format!(
            "{level},openraft=warn,openraft::replication=off,openraft::engine::handler::replication_handler=off"
        )
    }
}

fn split(list: &str) -> Vec<String> {
    list.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(String::from)
        .collect()
}

/// `http://host:port` or `https://host:port` → socket addresses, and
/// whether the URL asks for TLS.
fn parse_listen_url(url: &str) -> Result<(Vec<SocketAddr>, bool), String> {
    let (rest, tls) = if let Some(r) = url.strip_prefix("http://") {
        (r, false)
    } else if let Some(r) = url.strip_prefix("https://") {
        (r, true)
    } else if url.starts_with("unix://") || url.starts_with("unixs://") {
        return Err(format!("{url}: unix sockets are not supported yet"));
    } else {
        return Err(format!("{url}: expected a URL like http://127.0.0.1:2379"));
    };
    let hostport = rest.trim_end_matches('/');
    if hostport.contains('/') {
        return Err(format!("{url}: a listen URL has no path"));
    }
    let addrs: Vec<SocketAddr> = hostport
        .to_socket_addrs()
        .map_err(|e| format!("{url}: {e}"))?
        .collect();
    if addrs.is_empty() {
        return Err(format!("{url}: resolves to no address"));
    }
    Ok((addrs, tls))
}

/// etcd's words when more than one way to find the founding members is given.
const CONFLICTING_BOOTSTRAP: &str = "multiple discovery or bootstrap flags are set. Choose one of \"initial-cluster\", \"discovery\" or \"discovery-srv\"";

impl Flags {
    /// The founding members: `--initial-cluster`, or `--discovery-srv`'s
    /// SRV records, or this member alone.
    fn initial_cluster(
        &self,
        peer_urls: &[String],
        data_dir: &Path,
    ) -> Result<Vec<(String, Vec<String>)>, String> {
        let domain = &self.compat.discovery_srv;
        if domain.is_empty() {
            let members = match &self.initial_cluster {
                Some(ic) => parse_initial_cluster(ic)?,
                None => vec![(self.name.clone(), peer_urls.to_vec())],
            };
            check_own_entry(&members, &self.name, peer_urls)?;
            return Ok(members);
        }
        if self.initial_cluster.is_some() {
            return Err(CONFLICTING_BOOTSTRAP.into());
        }
        // The founding members matter only at the first start, and etcd
        // looks them up only then: a member that has its identity starts
        // without DNS (which may be what is down). Should its raft group not
        // exist yet (a first start cut short), bootstrapping from no
        // members stops with the reason rather than forming a cluster of one.
        if data_dir.join("member").join("identity").exists() {
            tracing::info!("--discovery-srv: this member was bootstrapped before; its SRV records are not looked up");
            return Ok(Vec::new());
        }
        let members = crate::srv::discover(
            domain,
            &self.compat.discovery_srv_name,
            &self.name,
            peer_urls,
        )
        .map_err(|e| format!("--discovery-srv={domain}: {e}"))?;
        let joined: Vec<String> = members.iter().map(|(n, u)| format!("{n}={u}")).collect();
        parse_initial_cluster(&joined.join(","))
    }
}

/// The host part of a listen URL (what `--auto-tls` signs for).
fn url_host(url: &str) -> &str {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let hostport = rest.trim_end_matches('/');
    match hostport.rsplit_once(':') {
        Some((host, _)) => host.trim_start_matches('[').trim_end_matches(']'),
        None => hostport,
    }
}

/// `name=url,name=url,...` into members in order; a name given more than
/// once has several URLs, as in etcd.
pub(crate) fn parse_initial_cluster(ic: &str) -> Result<Vec<(String, Vec<String>)>, String> {
    let mut members: Vec<(String, Vec<String>)> = Vec::new();
    for m in split(ic) {
        let Some((name, url)) = m.split_once('=') else {
            return Err(format!("--initial-cluster: {m}: expected name=peer-url"));
        };
        if !url.starts_with("http://") && !url.starts_with("https://") {
            return Err(format!(
                "--initial-cluster: {url}: expected a URL like http://127.0.0.1:2380"
            ));
        }
        if members
            .iter()
            .any(|(_, urls)| urls.iter().any(|u| u == url))
        {
            return Err(format!("--initial-cluster: {url} is given twice"));
        }
        match members.iter_mut().find(|(n, _)| n == name) {
            Some((_, urls)) => urls.push(url.to_string()),
            None => members.push((name.to_string(), vec![url.to_string()])),
        }
    }
    if members.is_empty() {
        return Err("--initial-cluster is empty".into());
    }
    Ok(members)
}

/// This member's entry must be there, with exactly its advertised URLs.
pub(crate) fn check_own_entry(
    members: &[(String, Vec<String>)],
    name: &str,
    advertised: &[String],
) -> Result<(), String> {
    let Some((_, urls)) = members.iter().find(|(n, _)| n == name) else {
        return Err(format!(
            "--initial-cluster has no entry for this member's --name {name:?}"
        ));
    };
    let mut a = urls.clone();
    let mut b = advertised.to_vec();
    a.sort();
    b.sort();
    if a != b {
        return Err(format!(
            "--initial-cluster gives {} for {name}, but --initial-advertise-peer-urls is {}",
            urls.join(","),
            advertised.join(",")
        ));
    }
    Ok(())
}

/// etcd's retention syntax: a bare integer is hours (periodic) or revisions.
fn parse_retention(mode: &str, retention: &str) -> Result<Option<AutoCompaction>, String> {
    let bad = |why: &str| format!("--auto-compaction-retention={retention}: {why}");
    if mode == "revision" {
        let n: i64 = retention
            .parse()
            .map_err(|_| bad("revision mode needs a whole number"))?;
        if n < 0 {
            return Err(bad("must not be negative"));
        }
        return Ok((n > 0).then_some(AutoCompaction::Revision(n)));
    }
    let period = match retention.parse::<u64>() {
        Ok(hours) => Duration::from_secs(hours * 3600),
        Err(_) => parse_duration(retention)
            .ok_or_else(|| bad("expected a duration like 1h, 30m or 10s"))?,
    };
    Ok((!period.is_zero()).then_some(AutoCompaction::Periodic(period)))
}

/// `--grpc-keepalive-*`: pings every `interval` (none for 0), a connection
/// that answers none within `timeout` (0: never) is closed. `min_time` is
/// checked but not enforced: keel answers every client ping.
fn grpc_keepalive(interval: &str, timeout: &str, min_time: &str) -> Result<GrpcKeepalive, String> {
    let parse = |flag: &str, v: &str| {
        parse_duration(v).ok_or_else(|| {
            format!("--grpc-keepalive-{flag}={v}: expected a duration like 2h or 20s")
        })
    };
    let min_time = parse("min-time", min_time)?;
    let interval = parse("interval", interval)?;
    let timeout = parse("timeout", timeout)?;
    Ok(GrpcKeepalive {
        interval: (!interval.is_zero()).then_some(interval),
        timeout: (!timeout.is_zero()).then_some(timeout),
        // grpc-go's server takes a zero MinTime as its default, 5 minutes.
        min_time: if min_time.is_zero() {
            Duration::from_secs(300)
        } else {
            min_time
        },
    })
}

/// Go-style durations: `1h30m`, `10s`, `500ms`.
fn parse_duration(s: &str) -> Option<Duration> {
    let mut total = Duration::ZERO;
    let mut rest = s;
    if rest.is_empty() {
        return None;
    }
    // Go's one duration without a unit.
    if rest == "0" {
        return Some(Duration::ZERO);
    }
    while !rest.is_empty() {
        let num_len = rest.find(|c: char| !(c.is_ascii_digit() || c == '.'))?;
        let value: f64 = rest[..num_len].parse().ok()?;
        rest = &rest[num_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let secs = match &rest[..unit_len] {
            "h" => 3600.0,
            "m" => 60.0,
            "s" => 1.0,
            "ms" => 1e-3,
            "us" | "µs" => 1e-6,
            "ns" => 1e-9,
            _ => return None,
        };
        rest = &rest[unit_len..];
        total += Duration::from_secs_f64(value * secs);
    }
    Some(total)
}

impl Flags {
    pub fn into_node_config(self) -> Result<NodeConfig, String> {
        let mut listen = Vec::new();
        for url in split(&self.listen_client_urls) {
            let (addrs, tls) = parse_listen_url(&url)?;
            listen.extend(addrs.into_iter().map(|addr| ListenUrl { addr, tls }));
        }
        if listen.is_empty() {
            return Err("--listen-client-urls is empty".into());
        }
        let mut listen_metrics = Vec::new();
        for url in split(&self.listen_metrics_urls) {
            let (addrs, tls) =
                parse_listen_url(&url).map_err(|e| format!("--listen-metrics-urls: {e}"))?;
            listen_metrics.extend(addrs.into_iter().map(|addr| ListenUrl { addr, tls }));
        }
        let mut listen_peer = Vec::new();
        for url in split(&self.listen_peer_urls) {
            let (addrs, tls) =
                parse_listen_url(&url).map_err(|e| format!("--listen-peer-urls: {e}"))?;
            listen_peer.extend(addrs.into_iter().map(|addr| ListenUrl { addr, tls }));
        }
        let peer_urls = split(&self.initial_advertise_peer_urls);
        let auto_compaction =
            parse_retention(&self.auto_compaction_mode, &self.auto_compaction_retention)?;
        if self.election_timeout < 5 * self.heartbeat_interval {
            return Err(format!(
                "--election-timeout[{}ms] should be at least as 5 times as --heartbeat-interval[{}ms]",
                self.election_timeout, self.heartbeat_interval
            ));
        }
        let max_record = u64::from(self.max_request_bytes) + 1024 * 1024;
        if self.wal_segment_bytes < 2 * max_record || !self.wal_segment_bytes.is_multiple_of(4096) {
            return Err(format!(
                "--wal-segment-bytes must be a multiple of 4096 and at least {} (twice the largest request plus overhead)",
                2 * max_record
            ));
        }
        let cores = self
            .cores
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
        let data_dir = self
            .data_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from(format!("{}.keel", self.name)));
        let initial_cluster = self.initial_cluster(&peer_urls, &data_dir)?;
        let (client_tls, client_auto_tls_hosts) =
            self.tls_settings(&self.client_tls_flags(), &data_dir)?;
        let (peer_tls, peer_auto_tls_hosts) =
            self.tls_settings(&self.peer_tls_flags(), &data_dir)?;
        let advertise = match &self.advertise_client_urls {
            Some(a) => split(a),
            None => split(&self.listen_client_urls),
        };
        let jwt = auth_token(&self.auth_token)?;
        // etcd takes bcrypt's limits and falls back to its default cost.
        let bcrypt_cost = if (4..=31).contains(&self.bcrypt_cost) {
            self.bcrypt_cost
        } else {
            tracing::warn!(
                "use default bcrypt cost 10 instead of the invalid given cost {}",
                self.bcrypt_cost
            );
            10
        };
        self.compat.check()?;
        let warning_apply_duration =
            parse_duration(&self.warning_apply_duration).ok_or_else(|| {
                format!(
                    "--experimental-warning-apply-duration={}: expected a duration like 100ms",
                    self.warning_apply_duration
                )
            })?;
        Ok(NodeConfig {
            name: self.name,
            wal_dir: self.wal_dir,
            max_snapshots: self
                .max_snapshots
                .unwrap_or(keel_storage::mvcc::snapshot::SNAPSHOTS_KEPT),
            cors: split(&self.cors),
            host_whitelist: split(&self.host_whitelist),
            metrics_extensive: self.metrics == "extensive",
            warning_apply_duration,
            data_dir,
            listen_client: listen,
            listen_metrics,
            client_tls,
            client_auto_tls_hosts,
            advertise_client_urls: advertise,
            listen_peer,
            peer_tls,
            peer_auto_tls_hosts,
            initial_advertise_peer_urls: peer_urls,
            initial_cluster,
            initial_cluster_state: if self.initial_cluster_state == "existing" {
                ClusterState::Existing
            } else {
                ClusterState::New
            },
            initial_cluster_token: self.initial_cluster_token,
            cores,
            actor_placement: if self.actor_placement == "spread" {
                ActorPlacement::Spread
            } else {
                ActorPlacement::Packed
            },
            max_request_bytes: self.max_request_bytes as usize,
            max_txn_ops: self.max_txn_ops as usize,
            snapshot_count: self.snapshot_count,
            snapshot_log_bytes: self.snapshot_log_bytes,
            snapshot_catchup_entries: self.snapshot_catchup_entries,
            auto_compaction,
            wal_segment_bytes: self.wal_segment_bytes,
            wal_batch_bytes_max: self.wal_batch_bytes_max.max(4096),
            wal_linger: Duration::from_micros(self.wal_linger_us),
            heartbeat_interval_ms: self.heartbeat_interval,
            lease_checkpoint_interval: parse_duration(&self.lease_checkpoint_interval)
                .filter(|d| !d.is_zero())
                .ok_or_else(|| {
                    format!(
                        "--experimental-lease-checkpoint-interval={}: expected a duration like 5m or 1s",
                        self.lease_checkpoint_interval
                    )
                })?,
            watch_progress_notify_interval: parse_duration(&self.watch_progress_notify_interval)
                .filter(|d| !d.is_zero())
                .ok_or_else(|| {
                    format!(
                        "--experimental-watch-progress-notify-interval={}: expected a duration like 10m or 5s",
                        self.watch_progress_notify_interval
                    )
                })?,
            grpc_keepalive: grpc_keepalive(
                &self.grpc_keepalive_interval,
                &self.grpc_keepalive_timeout,
                &self.grpc_keepalive_min_time,
            )?,
            election_timeout_ms: self.election_timeout,
            strict_reconfig_check: self.strict_reconfig_check,
            // etcd: 5 s plus two election timeouts.
            request_timeout: Duration::from_secs(5)
                + Duration::from_millis(2 * self.election_timeout),
            spin_before_park: Duration::from_micros(self.spin_before_park_us),
            max_concurrent_streams: self.max_concurrent_streams,
            connections_max: self.max_connections.map(|n| n as usize),
            quota_backend_bytes: self.quota_backend_bytes,
            auth_token_ttl: Duration::from_secs(self.auth_token_ttl.max(1)),
            jwt,
            bcrypt_cost,
            initial_corrupt_check: self.experimental_initial_corrupt_check,
            force_new_cluster: self.compat.force_new_cluster,
            corrupt_check_every: parse_duration(&self.experimental_corrupt_check_time)
                .ok_or_else(|| {
                    format!(
                        "--experimental-corrupt-check-time={}: expected a duration like 5m or 30s",
                        self.experimental_corrupt_check_time
                    )
                })
                .map(|d| (!d.is_zero()).then_some(d))?,
        })
    }
}

/// One side's TLS flags (clients' or peers'), as [`Flags::tls_settings`]
/// reads them.
struct TlsFlags<'a> {
    /// "" or "peer-": how the flags are named.
    prefix: &'static str,
    /// "client" or "peer": in messages and the `--auto-tls` directory.
    side: &'static str,
    /// The URLs whose `https://` scheme asks for TLS: listened on, and (for
    /// peers) dialed.
    listen: Vec<String>,
    dialed: Vec<String>,
    cert: &'a Option<PathBuf>,
    key: &'a Option<PathBuf>,
    trusted_ca: &'a Option<PathBuf>,
    cert_auth: bool,
    crl: &'a Option<PathBuf>,
    auto: bool,
    allowed_cn: Option<String>,
    allowed_hostname: Option<String>,
}

impl Flags {
    fn client_tls_flags(&self) -> TlsFlags<'_> {
        let mut listen = split(&self.listen_client_urls);
        listen.extend(split(&self.listen_metrics_urls));
        TlsFlags {
            prefix: "",
            side: "client",
            listen,
            dialed: Vec::new(),
            cert: &self.cert_file,
            key: &self.key_file,
            trusted_ca: &self.trusted_ca_file,
            cert_auth: self.client_cert_auth,
            crl: &self.client_crl_file,
            auto: self.auto_tls,
            allowed_cn: None,
            allowed_hostname: self.client_cert_allowed_hostname.clone(),
        }
    }

    fn peer_tls_flags(&self) -> TlsFlags<'_> {
        let mut dialed = split(&self.initial_advertise_peer_urls);
        if let Some(ic) = &self.initial_cluster {
            dialed.extend(
                split(ic)
                    .into_iter()
                    .filter_map(|m| m.split_once('=').map(|(_, u)| u.to_string())),
            );
        }
        TlsFlags {
            prefix: "peer-",
            side: "peer",
            listen: split(&self.listen_peer_urls),
            dialed,
            cert: &self.peer_cert_file,
            key: &self.peer_key_file,
            trusted_ca: &self.peer_trusted_ca_file,
            cert_auth: self.peer_client_cert_auth,
            crl: &self.peer_crl_file,
            auto: self.peer_auto_tls,
            allowed_cn: self.peer_cert_allowed_cn.clone(),
            allowed_hostname: self.peer_cert_allowed_hostname.clone(),
        }
    }

    /// TLS as etcd decides it: https URLs need the cert and key files, or
    /// auto TLS (a self-signed certificate under
    /// `<data-dir>/fixtures/<side>`); certificates given with only http
    /// URLs are ignored with a warning.
    fn tls_settings(
        &self,
        f: &TlsFlags,
        data_dir: &std::path::Path,
    ) -> Result<(Option<TlsSettings>, Option<Vec<String>>), String> {
        let p = f.prefix;
        let https_listen: Vec<&String> = f
            .listen
            .iter()
            .filter(|u| u.starts_with("https://"))
            .collect();
        let https_any = https_listen
            .iter()
            .copied()
            .chain(f.dialed.iter().filter(|u| u.starts_with("https://")))
            .next();
        let min_version = TlsVersion::parse(&self.tls_min_version)
            .map_err(|e| format!("--tls-min-version: {e}"))?;
        let max_version = match self.tls_max_version.as_str() {
            "" => TlsVersion::Tls13,
            v => TlsVersion::parse(v).map_err(|e| format!("--tls-max-version: {e}"))?,
        };
        let files = match (f.cert, f.key) {
            (Some(c), Some(k)) => Some((c.clone(), k.clone())),
            (None, None) => None,
            _ => {
                return Err(format!(
                    "--{p}cert-file and --{p}key-file must be given together"
                ))
            }
        };
        let Some(first) = https_any else {
            if files.is_some() {
                tracing::warn!(
                    "--{p}cert-file and --{p}key-file are given but no {} URL is https://; ignoring them",
                    f.side
                );
            }
            return Ok((None, None));
        };
        let ((cert_file, key_file), auto_hosts) = match files {
            Some(f) => (f, None),
            None if f.auto => {
                let dir = data_dir.join("fixtures").join(f.side);
                let mut hosts: Vec<String> = https_listen.iter().map(|u| url_host(u).to_string()).collect();
                if hosts.is_empty() {
                    hosts.push("localhost".into());
                }
                ((dir.join("cert.pem"), dir.join("key.pem")), Some(hosts))
            }
            None => {
                return Err(format!(
                    "TLS key/cert (--{p}cert-file, --{p}key-file) must be provided for {} url {first} with HTTPS scheme",
                    f.side
                ))
            }
        };
        let settings = TlsSettings {
            flag_prefix: p,
            cert_file,
            key_file,
            trusted_ca_file: f.trusted_ca.clone(),
            client_cert_auth: f.cert_auth,
            crl_file: f.crl.clone(),
            cipher_suites: split(&self.cipher_suites),
            min_version,
            max_version,
            // Self-signed peers have no CA to check each other against.
            skip_server_verification: auto_hosts.is_some() && f.side == "peer",
            allowed_cn: f.allowed_cn.clone(),
            allowed_hostname: f.allowed_hostname.clone(),
        };
        if (settings.allowed_cn.is_some() || settings.allowed_hostname.is_some())
            && !settings.client_cert_auth
        {
            let (flags, auth) = if p.is_empty() {
                ("--client-cert-allowed-hostname needs", "--client-cert-auth")
            } else {
                (
                    "--peer-cert-allowed-cn and --peer-cert-allowed-hostname need",
                    "--peer-client-cert-auth",
                )
            };
            return Err(format!(
                "{flags} {auth} (they narrow which client certificates are taken)"
            ));
        }
        settings.check()?;
        Ok((Some(settings), auto_hosts))
    }
}

/// The long names of every flag keel takes.
fn long_flags() -> Vec<String> {
    use clap::CommandFactory;
    let cmd = Flags::command();
    let mut names = Vec::new();
    for a in cmd.get_arguments() {
        names.extend(a.get_long().map(String::from));
        names.extend(a.get_all_aliases().into_iter().flatten().map(String::from));
    }
    names
}

/// Go's flag syntax, which etcd's users and unit files use: `-name x` and
/// `-name=x` as well as `--name x`. A single-dash argument that names one of
/// keel's long flags gets its second dash; everything else is left alone.
pub fn go_style(args: Vec<String>) -> Vec<String> {
    let known = long_flags();
    let mut out = Vec::with_capacity(args.len());
    let mut rest = false;
    for a in args {
        if rest || a == "--" {
            rest = true;
            out.push(a);
            continue;
        }
        let converted = a
            .strip_prefix('-')
            .filter(|r| !r.starts_with('-'))
            .filter(|r| {
                let name = r.split_once('=').map_or(*r, |(n, _)| n);
                name.len() > 1 && known.iter().any(|k| k == name)
            })
            .map(|r| format!("--{r}"));
        out.push(converted.unwrap_or(a));
    }
    out
}

/// The flag a key of a `*-transport-security` section of etcd's
/// configuration file stands for.
fn transport_flag(section: &str, key: &str) -> String {
    let peer = section == "peer-transport-security";
    match (peer, key) {
        (false, "crl-file") => "client-crl-file".into(),
        (false, "allowed-hostname") => "client-cert-allowed-hostname".into(),
        (true, "allowed-cn") => "peer-cert-allowed-cn".into(),
        (true, "allowed-hostname") => "peer-cert-allowed-hostname".into(),
        (true, k) => format!("peer-{k}"),
        (false, k) => k.into(),
    }
}

fn yaml_value(v: &serde_yaml::Value) -> Option<String> {
    use serde_yaml::Value;
    match v {
        Value::Null => None,
        Value::Bool(b) => Some(b.to_string()),
        Value::Number(n) => Some(n.to_string()),
        Value::String(s) if s.is_empty() => None,
        Value::String(s) => Some(s.clone()),
        Value::Sequence(items) => {
            let items: Vec<String> = items.iter().filter_map(yaml_value).collect();
            (!items.is_empty()).then(|| items.join(","))
        }
        Value::Mapping(_) | Value::Tagged(_) => None,
    }
}

/// The flags an etcd configuration file (`--config-file`) sets, as
/// `--key=value` arguments, and the keys keel does not know (etcd ignores
/// unknown keys too). Empty values leave a flag at its default.
pub fn config_file_args(yaml: &str) -> Result<(Vec<String>, Vec<String>), String> {
    let doc: serde_yaml::Value =
        serde_yaml::from_str(yaml).map_err(|e| format!("--config-file: {e}"))?;
    let known = long_flags();
    let mut args = Vec::new();
    let mut unknown = Vec::new();
    let mut push = |flag: String, value: &serde_yaml::Value| {
        if flag == "config-file" {
            return;
        }
        if !known.contains(&flag) {
            unknown.push(flag);
        } else if let Some(v) = yaml_value(value) {
            args.push(format!("--{flag}={v}"));
        }
    };
    let serde_yaml::Value::Mapping(map) = doc else {
        return if doc.is_null() {
            Ok((args, unknown))
        } else {
            Err("--config-file: expected a YAML mapping of etcd's configuration keys".into())
        };
    };
    for (k, v) in &map {
        let key = k.as_str().unwrap_or_default().to_string();
        match (key.as_str(), v) {
            (
                "client-transport-security" | "peer-transport-security",
                serde_yaml::Value::Mapping(sub),
            ) => {
                for (sk, sv) in sub {
                    push(transport_flag(&key, sk.as_str().unwrap_or_default()), sv);
                }
            }
            _ => push(key, v),
        }
    }
    Ok((args, unknown))
}

/// etcd's precedence: with `--config-file` (or `ETCD_CONFIG_FILE`), the
/// file's settings are the configuration and other flags and `ETCD_*`
/// variables are ignored. Returns the arguments to parse, and the keys of
/// the file keel does not know; the caller clears the `ETCD_*` variables.
pub fn with_config_file(args: Vec<String>) -> Result<(Vec<String>, Option<Vec<String>>), String> {
    let mut file = std::env::var("ETCD_CONFIG_FILE").ok();
    let mut it = args.iter().skip(1);
    while let Some(a) = it.next() {
        if let Some(v) = a.strip_prefix("--config-file=") {
            file = Some(v.to_string());
        } else if a == "--config-file" {
            file = it.next().cloned();
        }
    }
    let Some(file) = file.filter(|f| !f.is_empty()) else {
        return Ok((args, None));
    };
    let text = std::fs::read_to_string(&file).map_err(|e| format!("--config-file={file}: {e}"))?;
    let (from_file, unknown) = config_file_args(&text)?;
    let mut out = vec![args[0].clone(), format!("--config-file={file}")];
    out.extend(from_file);
    Ok((out, Some(unknown)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retention_syntax() {
        assert_eq!(parse_retention("periodic", "0"), Ok(None));
        assert_eq!(
            parse_retention("periodic", "1"),
            Ok(Some(AutoCompaction::Periodic(Duration::from_secs(3600))))
        );
        assert_eq!(
            parse_retention("periodic", "1h30m"),
            Ok(Some(AutoCompaction::Periodic(Duration::from_secs(5400))))
        );
        assert_eq!(
            parse_retention("periodic", "2s"),
            Ok(Some(AutoCompaction::Periodic(Duration::from_secs(2))))
        );
        assert_eq!(
            parse_retention("revision", "1000"),
            Ok(Some(AutoCompaction::Revision(1000)))
        );
        assert!(parse_retention("revision", "1h").is_err());
        assert!(parse_retention("periodic", "soon").is_err());
    }

    #[test]
    fn listen_urls() {
        assert_eq!(
            parse_listen_url("http://127.0.0.1:2379").unwrap().0[0].port(),
            2379
        );
        assert!(parse_listen_url("https://127.0.0.1:2379").unwrap().1);
        assert_eq!(url_host("https://[::1]:2379"), "::1");
        assert_eq!(url_host("https://localhost:2379/"), "localhost");
        assert!(parse_listen_url("127.0.0.1:2379").is_err());
        assert!(parse_listen_url("http://127.0.0.1:notaport").is_err());
    }

    #[test]
    fn defaults_follow_etcd() {
        let f = Flags::parse_from(["keel"]);
        let c = f.into_node_config().unwrap();
        assert_eq!(c.data_dir, PathBuf::from("default.keel"));
        assert_eq!(c.max_request_bytes, 1_572_864);
        assert_eq!(c.max_txn_ops, 128);
        assert_eq!(c.listen_client[0].to_string(), "http://127.0.0.1:2379");
        assert_eq!(
            c.initial_cluster,
            vec![(
                "default".to_string(),
                vec!["http://127.0.0.1:2380".to_string()]
            )]
        );
        let missing = Flags::parse_from(["keel", "--initial-cluster", "a=http://x:1,b=http://y:2"]);
        assert!(missing.into_node_config().unwrap_err().contains("no entry"));
    }

    #[test]
    fn unknown_etcd_variables_are_named() {
        let env = [
            ("ETCD_CLIENT_CERT_AUTH", "true"),
            ("ETCD_CLIENT_CERT_AUTHH", "true"),
            ("ETCDCTL_API", "3"),
            ("PATH", "/bin"),
        ]
        .map(|(k, v)| (k.to_string(), v.to_string()));
        assert_eq!(
            unrecognized_env(env.into_iter()),
            vec!["ETCD_CLIENT_CERT_AUTHH=true".to_string()]
        );
    }

    #[test]
    fn initial_cluster_syntax() {
        let m = parse_initial_cluster("a=http://h:1,b=http://h:2,a=http://h:3").unwrap();
        assert_eq!(
            m[0],
            ("a".into(), vec!["http://h:1".into(), "http://h:3".into()])
        );
        assert_eq!(m[1], ("b".into(), vec!["http://h:2".into()]));
        assert!(parse_initial_cluster("a=http://h:1,b=http://h:1").is_err());
        assert!(parse_initial_cluster("a").is_err());
        assert!(parse_initial_cluster("a=h:1").is_err());
        assert!(check_own_entry(&m, "b", &["http://h:2".into()]).is_ok());
        assert!(check_own_entry(&m, "b", &["http://h:9".into()])
            .unwrap_err()
            .contains("--initial-advertise-peer-urls"));
    }

    #[test]
    fn go_style_single_dash_flags_get_their_second_dash() {
        let args: Vec<String> = [
            "keel",
            "-name",
            "m1",
            "-data-dir=/d",
            "--debug",
            "-x",
            "-1",
            "--",
            "-name",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        assert_eq!(
            go_style(args),
            [
                "keel",
                "--name",
                "m1",
                "--data-dir=/d",
                "--debug",
                "-x",
                "-1",
                "--",
                "-name"
            ]
        );
    }

    #[test]
    fn a_configuration_file_becomes_flags() {
        let yaml = r#"
name: 'm1'
data-dir:
snapshot-count: 10000
listen-client-urls: http://localhost:2379
max-snapshots: 5
cors:
initial-cluster-state: 'new'
strict-reconfig-check: false
log-outputs: [stderr]
cipher-suites: [
  TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
  TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384
]
client-transport-security:
  cert-file: /c.crt
  client-cert-auth: false
  auto-tls: false
peer-transport-security:
  cert-file: /p.crt
  client-cert-auth: true
  allowed-cn: etcd
self-signed-cert-validity: 1
"#;
        let (args, unknown) = config_file_args(yaml).unwrap();
        assert_eq!(
            args,
            [
                "--name=m1",
                "--snapshot-count=10000",
                "--listen-client-urls=http://localhost:2379",
                "--max-snapshots=5",
                "--initial-cluster-state=new",
                "--strict-reconfig-check=false",
                "--log-outputs=stderr",
                "--cipher-suites=TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384",
                "--cert-file=/c.crt",
                "--client-cert-auth=false",
                "--auto-tls=false",
                "--peer-cert-file=/p.crt",
                "--peer-client-cert-auth=true",
                "--peer-cert-allowed-cn=etcd",
            ]
        );
        assert_eq!(unknown, ["self-signed-cert-validity"]);
        let mut all = vec!["keel".to_string()];
        all.extend(args);
        assert!(Flags::try_parse_from(all).is_ok());
        assert!(config_file_args("- a list").is_err());
    }
}
