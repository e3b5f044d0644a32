//! etcd flags that keel takes so that etcd's command lines, unit files and
//! manifests start it unchanged, but that ask for nothing keel's storage or
//! process needs (bbolt's batching and freelist, Go's profiler, the v2
//! API), or for what keel always does. Each is accepted; a value that
//! would change etcd's behaviour is logged with what keel does instead, and
//! the few keel cannot honour at all (the v2 proxy and etcd's v2
//! discovery service) stop the start with a clear error. `--force-new-cluster` is here for its clap
//! definition only; the node honours it.

use clap::Args;

#[derive(Args, Debug, Clone)]
pub struct CompatFlags {
    /// bbolt's commit interval (etcd's backend; nothing to batch in keel).
    #[arg(long, env = "ETCD_BACKEND_BATCH_INTERVAL")]
    pub backend_batch_interval: Option<String>,
    /// bbolt's operations per commit (etcd's backend).
    #[arg(long, env = "ETCD_BACKEND_BATCH_LIMIT")]
    pub backend_batch_limit: Option<String>,
    /// bbolt's freelist type (etcd's backend).
    #[arg(
        long,
        alias = "backend-bbolt-freelist-type",
        env = "ETCD_EXPERIMENTAL_BACKEND_BBOLT_FREELIST_TYPE"
    )]
    pub experimental_backend_bbolt_freelist_type: Option<String>,
    /// Keys deleted per compaction batch in bbolt (keel compacts in steps
    /// of its own).
    #[arg(
        long,
        alias = "compaction-batch-limit",
        env = "ETCD_EXPERIMENTAL_COMPACTION_BATCH_LIMIT"
    )]
    pub experimental_compaction_batch_limit: Option<String>,
    /// capnslog's per-package levels (use --log-level).
    #[arg(long, env = "ETCD_LOG_PACKAGE_LEVELS")]
    pub log_package_levels: Option<String>,
    /// Go's runtime profiler (keel has none).
    #[arg(
        long,
        env = "ETCD_ENABLE_PPROF",
        default_value_t = false,
        action = clap::ArgAction::Set,
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "true"
    )]
    pub enable_pprof: bool,
    /// The v2 API (keel serves v3 only).
    #[arg(
        long,
        env = "ETCD_ENABLE_V2",
        default_value_t = false,
        action = clap::ArgAction::Set,
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "true"
    )]
    pub enable_v2: bool,
    /// v2 requests served from the v3 store (keel serves v3 only).
    #[arg(long, env = "ETCD_EXPERIMENTAL_ENABLE_V2V3")]
    pub experimental_enable_v2v3: Option<String>,
    /// Checkpoint leases' remaining TTLs (keel always does, every
    /// --experimental-lease-checkpoint-interval).
    #[arg(
        long,
        env = "ETCD_EXPERIMENTAL_ENABLE_LEASE_CHECKPOINT",
        default_value_t = false,
        action = clap::ArgAction::Set,
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "true"
    )]
    pub experimental_enable_lease_checkpoint: bool,
    /// Fast-forward election ticks at start (keel's members start quiet
    /// and campaign as soon as a peer does).
    #[arg(
        long,
        env = "ETCD_INITIAL_ELECTION_TICK_ADVANCE",
        default_value_t = true,
        action = clap::ArgAction::Set,
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "true"
    )]
    pub initial_election_tick_advance: bool,
    /// Raft's pre-vote: keel's voters always refuse candidates while
    /// they hear from a leader, which is what pre-vote protects.
    #[arg(
        long,
        env = "ETCD_PRE_VOTE",
        default_value_t = false,
        action = clap::ArgAction::Set,
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "true"
    )]
    pub pre_vote: bool,
    /// Skip the SAN check of peers' client certificates (keel checks
    /// peers' client certificates against the CA, not their SANs).
    #[arg(
        long,
        alias = "peer-skip-client-san-verification",
        env = "ETCD_EXPERIMENTAL_PEER_SKIP_CLIENT_SAN_VERIFICATION",
        default_value_t = false,
        action = clap::ArgAction::Set,
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "true"
    )]
    pub experimental_peer_skip_client_san_verification: bool,
    /// Discard the cluster's membership and start as its only member.
    #[arg(
        long,
        env = "ETCD_FORCE_NEW_CLUSTER",
        default_value_t = false,
        action = clap::ArgAction::Set,
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "true"
    )]
    pub force_new_cluster: bool,
    /// etcd's v2 proxy: off, readonly or on (keel has no proxy mode).
    #[arg(long, env = "ETCD_PROXY", default_value = "off", value_parser = ["off", "readonly", "on"])]
    pub proxy: String,
    #[arg(long, env = "ETCD_PROXY_FAILURE_WAIT")]
    pub proxy_failure_wait: Option<String>,
    #[arg(long, env = "ETCD_PROXY_REFRESH_INTERVAL")]
    pub proxy_refresh_interval: Option<String>,
    #[arg(long, env = "ETCD_PROXY_DIAL_TIMEOUT")]
    pub proxy_dial_timeout: Option<String>,
    #[arg(long, env = "ETCD_PROXY_WRITE_TIMEOUT")]
    pub proxy_write_timeout: Option<String>,
    #[arg(long, env = "ETCD_PROXY_READ_TIMEOUT")]
    pub proxy_read_timeout: Option<String>,
    /// The discovery service URL for bootstrapping (keel bootstraps from
    /// --initial-cluster).
    #[arg(long, env = "ETCD_DISCOVERY", default_value = "")]
    pub discovery: String,
    #[arg(long, env = "ETCD_DISCOVERY_FALLBACK", default_value = "proxy")]
    pub discovery_fallback: String,
    #[arg(long, env = "ETCD_DISCOVERY_PROXY", default_value = "")]
    pub discovery_proxy: String,
    /// DNS domain to bootstrap from by SRV records (see `srv.rs`).
    #[arg(long, env = "ETCD_DISCOVERY_SRV", default_value = "")]
    pub discovery_srv: String,
    #[arg(long, env = "ETCD_DISCOVERY_SRV_NAME", default_value = "")]
    pub discovery_srv_name: String,
    /// WAL files etcd keeps once snapshots cover them (keel removes a
    /// segment once a durable snapshot covers it and no lagging follower
    /// is kept waiting for its entries).
    #[arg(long, env = "ETCD_MAX_WALS")]
    pub max_wals: Option<String>,
}

impl CompatFlags {
    /// Refuses what keel cannot do; logs what it does instead of what
    /// was asked. Runs once logging is set up.
    pub fn check(&self) -> Result<(), String> {
        if self.proxy != "off" {
            return Err(format!(
                "--proxy={}: keel has no v2 proxy mode; point clients at the members",
                self.proxy
            ));
        }
        if !self.discovery.is_empty() {
            return Err(format!(
                "--discovery={}: keel has no v2 discovery service client; list the members in --initial-cluster or publish SRV records for --discovery-srv",
                self.discovery
            ));
        }
        let storage = [
            ("backend-batch-interval", &self.backend_batch_interval),
            ("backend-batch-limit", &self.backend_batch_limit),
            (
                "experimental-backend-bbolt-freelist-type",
                &self.experimental_backend_bbolt_freelist_type,
            ),
            (
                "experimental-compaction-batch-limit",
                &self.experimental_compaction_batch_limit,
            ),
        ];
        for (flag, value) in storage {
            if let Some(v) = value {
                tracing::warn!(
                    "--{flag}={v} is ignored: it tunes etcd's bbolt backend, which keel does not have"
                );
            }
        }
        if let Some(v) = &self.max_wals {
            tracing::warn!("--max-wals={v} is ignored: keel removes a WAL segment once a durable snapshot covers its entries and no lagging follower is kept waiting for them");
        }
        if let Some(v) = &self.log_package_levels {
            tracing::warn!("--log-package-levels={v} is ignored: set --log-level");
        }
        if self.enable_pprof {
            tracing::warn!("--enable-pprof is ignored: keel has no Go profiler");
        }
        if self.enable_v2 || self.experimental_enable_v2v3.is_some() {
            tracing::warn!("--enable-v2 and --experimental-enable-v2v3 are ignored: keel serves the v3 API only");
        }
        if !self.initial_election_tick_advance {
            tracing::info!("--initial-election-tick-advance=false: keel's members always start quiet until a peer campaigns");
        }
        if self.pre_vote {
            tracing::info!(
                "--pre-vote: keel's voters always refuse candidates while they hear from a leader"
            );
        }
        Ok(())
    }
}
