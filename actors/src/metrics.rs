//! Prometheus metrics under etcd's names, served at `/metrics`.
//!
//! One process-wide registry; every metric is an atomic, so actors on any
//! core update them without messages. Types follow etcd's (several of its
//! `*_total` series are gauges).

use std::sync::OnceLock;

use prometheus::{
    exponential_buckets, Encoder, Gauge, GaugeVec, Histogram, HistogramOpts, HistogramVec,
    IntCounter, IntCounterVec, IntGauge, Opts, Registry, TextEncoder,
};

pub struct Metrics {
    registry: Registry,
    pub wal_fsync_seconds: Histogram,
    pub wal_write_bytes: IntGauge,
    pub snapshot_save_seconds: Histogram,
    pub proposals_committed: IntGauge,
    pub proposals_applied: IntGauge,
    pub proposals_pending: IntGauge,
    pub proposals_failed: IntCounter,
    pub has_leader: IntGauge,
    pub is_leader: IntGauge,
    pub leader_changes: IntCounter,
    pub mvcc_put: IntCounter,
    pub mvcc_range: IntCounter,
    pub mvcc_delete: IntCounter,
    pub mvcc_txn: IntCounter,
    pub mvcc_keys: IntGauge,
    pub mvcc_db_size: IntGauge,
    pub mvcc_db_size_in_use: IntGauge,
    pub quota_backend_bytes: IntGauge,
    pub health_success: IntCounter,
    pub health_failures: IntCounter,
    pub healthcheck: GaugeVec,
    pub healthchecks: IntCounterVec,
    pub mvcc_current_revision: IntGauge,
    pub mvcc_compact_revision: IntGauge,
    pub grpc_started: IntCounterVec,
    pub grpc_handled: IntCounterVec,
    pub placement: GaugeVec,
    pub server_version: GaugeVec,
    pub cluster_version: GaugeVec,
    pub lease_granted: IntCounter,
    pub lease_revoked: IntCounter,
    pub lease_renewed: IntCounter,
    pub watchers: IntGauge,
    pub watch_streams: IntGauge,
    pub watch_slow_watchers: IntGauge,
    pub watch_pending_events: IntGauge,
    pub peer_sent_bytes: IntCounterVec,
    pub peer_received_bytes: IntCounterVec,
    pub peer_round_trip_seconds: HistogramVec,
    pub peer_sent_failures: IntCounterVec,
    pub heartbeat_send_failures: IntCounter,
    pub read_indexes_failed: IntCounter,
    pub slow_apply: IntCounter,
    pub backend_commit_seconds: Histogram,
    pub client_grpc_received_bytes: IntCounter,
    pub client_grpc_sent_bytes: IntCounter,
    pub client_requests: IntCounterVec,
    pub server_id: GaugeVec,
    pub is_learner: IntGauge,
    pub snap_db_save_seconds: Histogram,
    /// `--metrics extensive`: gRPC handling time by method.
    pub grpc_handling_seconds: HistogramVec,
    extensive: std::sync::atomic::AtomicBool,
    process: ProcessMetrics,
}

/// The `process_*` families Go's Prometheus client exports for every
/// process (etcd's dashboards and `etcdctl check datascale` read them),
/// read from /proc when /metrics is rendered.
struct ProcessMetrics {
    cpu_seconds: prometheus::Counter,
    resident_bytes: Gauge,
    virtual_bytes: Gauge,
    open_fds: Gauge,
    max_fds: Gauge,
    start_time_seconds: Gauge,
}

/// What /proc/self/stat says of the process: CPU time and start time in
/// clock ticks, virtual memory in bytes, resident memory in pages.
#[derive(Debug, PartialEq, Eq)]
struct ProcStat {
    cpu_ticks: u64,
    start_ticks: u64,
    virtual_bytes: u64,
    resident_pages: u64,
}

/// Parses /proc/<pid>/stat; the command name (in parentheses) may hold
/// spaces, so fields are counted after its closing parenthesis.
fn parse_proc_stat(text: &str) -> Option<ProcStat> {
    let rest = &text[text.rfind(')')? + 1..];
    // Field 3 (state) is the first after the name.
    let f: Vec<&str> = rest.split_whitespace().collect();
    let at = |n: usize| f.get(n - 3)?.parse::<u64>().ok();
    Some(ProcStat {
        cpu_ticks: at(14)? + at(15)?,
        start_ticks: at(22)?,
        virtual_bytes: at(23)?,
        resident_pages: at(24)?,
    })
}

impl ProcessMetrics {
    fn new(r: &Registry) -> ProcessMetrics {
        let g = |name: &str, help: &str| reg(r, Gauge::new(name, help).expect("valid metric"));
        ProcessMetrics {
            cpu_seconds: reg(
                r,
                prometheus::Counter::new(
                    "process_cpu_seconds_total",
                    "Total user and system CPU time spent in seconds.",
                )
                .expect("valid metric"),
            ),
            resident_bytes: g(
                "process_resident_memory_bytes",
                "Resident memory size in bytes.",
            ),
            virtual_bytes: g(
                "process_virtual_memory_bytes",
                "Virtual memory size in bytes.",
            ),
            open_fds: g("process_open_fds", "Number of open file descriptors."),
            max_fds: g(
                "process_max_fds",
                "Maximum number of open file descriptors.",
            ),
            start_time_seconds: g(
                "process_start_time_seconds",
                "Start time of the process since unix epoch in seconds.",
            ),
        }
    }

    fn refresh(&self) {
        // SAFETY: sysconf only reads configuration values.
        let (tick, page) = unsafe {
            (
                libc::sysconf(libc::_SC_CLK_TCK).max(1) as f64,
                libc::sysconf(libc::_SC_PAGESIZE).max(1) as f64,
            )
        };
        if let Some(st) = std::fs::read_to_string("/proc/self/stat")
            .ok()
            .and_then(|t| parse_proc_stat(&t))
        {
            let cpu = st.cpu_ticks as f64 / tick;
            let grown = cpu - self.cpu_seconds.get();
            if grown > 0.0 {
                self.cpu_seconds.inc_by(grown);
            }
            self.resident_bytes.set(st.resident_pages as f64 * page);
            self.virtual_bytes.set(st.virtual_bytes as f64);
            let boot = std::fs::read_to_string("/proc/stat").ok().and_then(|t| {
                t.lines()
                    .find_map(|l| l.strip_prefix("btime ")?.trim().parse::<f64>().ok())
            });
            if let Some(boot) = boot {
                self.start_time_seconds
                    .set(boot + st.start_ticks as f64 / tick);
            }
        }
        if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
            self.open_fds.set(fds.count() as f64);
        }
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit writes into the struct it is given.
        if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0 {
            self.max_fds.set(limit.rlim_cur as f64);
        }
    }
}

fn reg<T: prometheus::core::Collector + Clone + 'static>(r: &Registry, m: T) -> T {
    r.register(Box::new(m.clone()))
        .expect("metric names are unique");
    m
}

impl Metrics {
    fn new() -> Metrics {
        let r = Registry::new();
        let ig = |name: &str, help: &str| reg(&r, IntGauge::new(name, help).expect("valid metric"));
        let ic =
            |name: &str, help: &str| reg(&r, IntCounter::new(name, help).expect("valid metric"));
        let grpc_labels = ["grpc_type", "grpc_service", "grpc_method"];
        let m = Metrics {
            wal_fsync_seconds: reg(
                &r,
                Histogram::with_opts(
                    HistogramOpts::new(
                        "etcd_disk_wal_fsync_duration_seconds",
                        "The latency distributions of fsync called by WAL.",
                    )
                    // etcd's buckets, so that alert thresholds on `le` match
                    // (the mean, from _sum and _count, shows faster disks).
                    .buckets(exponential_buckets(0.001, 2.0, 14).expect("valid buckets")),
                )
                .expect("valid metric"),
            ),
            wal_write_bytes: ig("etcd_disk_wal_write_bytes_total", "Total number of bytes written in WAL."),
            snapshot_save_seconds: reg(
                &r,
                Histogram::with_opts(
                    HistogramOpts::new(
                        "etcd_debugging_snap_save_total_duration_seconds",
                        "The total latency distributions of save called by snapshot.",
                    )
                    .buckets(exponential_buckets(0.001, 2.0, 14).expect("valid buckets")),
                )
                .expect("valid metric"),
            ),
            proposals_committed: ig("etcd_server_proposals_committed_total", "The total number of consensus proposals committed."),
            proposals_applied: ig("etcd_server_proposals_applied_total", "The total number of consensus proposals applied."),
            proposals_pending: ig("etcd_server_proposals_pending", "The current number of pending proposals to commit."),
            proposals_failed: ic("etcd_server_proposals_failed_total", "The total number of failed proposals seen."),
            has_leader: ig("etcd_server_has_leader", "Whether or not a leader exists. 1 is existence, 0 is not."),
            is_leader: ig("etcd_server_is_leader", "Whether or not this member is a leader. 1 if is, 0 otherwise."),
            leader_changes: ic("etcd_server_leader_changes_seen_total", "The number of leader changes seen."),
            mvcc_put: ic("etcd_mvcc_put_total", "Total number of puts seen by this member."),
            mvcc_range: ic("etcd_mvcc_range_total", "Total number of ranges seen by this member."),
            mvcc_delete: ic("etcd_mvcc_delete_total", "Total number of deletes seen by this member."),
            mvcc_txn: ic("etcd_mvcc_txn_total", "Total number of txns seen by this member."),
            mvcc_keys: ig("etcd_debugging_mvcc_keys_total", "Total number of keys."),
            mvcc_db_size: ig("etcd_mvcc_db_total_size_in_bytes", "Total size of the underlying database physically allocated in bytes."),
            mvcc_db_size_in_use: ig("etcd_mvcc_db_total_size_in_use_in_bytes", "Total size of the underlying database logically in use in bytes."),
            quota_backend_bytes: ig("etcd_server_quota_backend_bytes", "Current backend storage quota size in bytes."),
            health_success: ic("etcd_server_health_success", "The total number of successful health checks"),
            health_failures: ic("etcd_server_health_failures", "The total number of failed health checks"),
            healthcheck: reg(
                &r,
                GaugeVec::new(
                    Opts::new("etcd_server_healthcheck", "The result of each kind of healthcheck."),
                    &["type", "name"],
                )
                .expect("valid metric"),
            ),
            healthchecks: reg(
                &r,
                IntCounterVec::new(
                    Opts::new("etcd_server_healthchecks_total", "The total number of each kind of healthcheck."),
                    &["type", "name", "status"],
                )
                .expect("valid metric"),
            ),
            mvcc_current_revision: ig("etcd_debugging_mvcc_current_revision", "The current revision of store."),
            mvcc_compact_revision: ig("etcd_debugging_mvcc_compact_revision", "The revision of the last compaction in store."),
            grpc_started: reg(
                &r,
                IntCounterVec::new(
                    Opts::new("grpc_server_started_total", "Total number of RPCs started on the server."),
                    &grpc_labels,
                )
                .expect("valid metric"),
            ),
            grpc_handled: reg(
                &r,
                IntCounterVec::new(
                    Opts::new(
                        "grpc_server_handled_total",
                        "Total number of RPCs completed on the server, regardless of success or failure.",
                    ),
                    &["grpc_type", "grpc_service", "grpc_method", "grpc_code"],
                )
                .expect("valid metric"),
            ),
            placement: reg(
                &r,
                GaugeVec::new(
                    Opts::new("keel_actor_core", "The core each actor runs on (value is the core index)."),
                    &["actor"],
                )
                .expect("valid metric"),
            ),
            server_version: reg(
                &r,
                GaugeVec::new(
                    Opts::new("etcd_server_version", "Which version is running. 1 for 'server_version' label with current version."),
                    &["server_version"],
                )
                .expect("valid metric"),
            ),
            cluster_version: reg(
                &r,
                GaugeVec::new(
                    Opts::new(
                        "etcd_cluster_version",
                        "Which version is running. 1 for 'cluster_version' label with current cluster version",
                    ),
                    &["cluster_version"],
                )
                .expect("valid metric"),
            ),
            lease_granted: ic("etcd_debugging_lease_granted_total", "The total number of granted leases."),
            lease_revoked: ic("etcd_debugging_lease_revoked_total", "The total number of revoked leases."),
            lease_renewed: ic("etcd_debugging_lease_renewed_total", "The number of renewed leases seen by the leader."),
            watchers: ig("etcd_debugging_mvcc_watcher_total", "Total number of watchers."),
            watch_streams: ig("etcd_debugging_mvcc_watch_stream_total", "Total number of watch streams."),
            watch_slow_watchers: ig("etcd_debugging_mvcc_slow_watcher_total", "Total number of unsynced slow watchers."),
            watch_pending_events: ig("etcd_debugging_mvcc_pending_events_total", "Total number of pending events to be sent."),
            peer_sent_bytes: reg(
                &r,
                IntCounterVec::new(
                    Opts::new("etcd_network_peer_sent_bytes_total", "The total number of bytes sent to peers."),
                    &["To"],
                )
                .expect("valid metric"),
            ),
            peer_received_bytes: reg(
                &r,
                IntCounterVec::new(
                    Opts::new("etcd_network_peer_received_bytes_total", "The total number of bytes received from peers."),
                    &["From"],
                )
                .expect("valid metric"),
            ),
            peer_round_trip_seconds: reg(
                &r,
                HistogramVec::new(
                    HistogramOpts::new(
                        "etcd_network_peer_round_trip_time_seconds",
                        "Round-Trip-Time histogram between peers.",
                    )
                    .buckets(exponential_buckets(0.0001, 2.0, 16).expect("valid buckets")),
                    &["To"],
                )
                .expect("valid metric"),
            ),
            peer_sent_failures: reg(
                &r,
                IntCounterVec::new(
                    Opts::new("etcd_network_peer_sent_failures_total", "The total number of send failures from peers."),
                    &["To"],
                )
                .expect("valid metric"),
            ),
            heartbeat_send_failures: ic(
                "etcd_server_heartbeat_send_failures_total",
                "The total number of leader heartbeat send failures (likely overloaded from slow disk).",
            ),
            read_indexes_failed: ic("etcd_server_read_indexes_failed_total", "The total number of failed read indexes seen."),
            slow_apply: ic("etcd_server_slow_apply_total", "The total number of slow apply requests (likely overloaded from slow disk)."),
            backend_commit_seconds: reg(
                &r,
                Histogram::with_opts(
                    HistogramOpts::new(
                        "etcd_disk_backend_commit_duration_seconds",
                        "The latency distributions of commit called by backend.",
                    )
                    .buckets(exponential_buckets(0.001, 2.0, 14).expect("valid buckets")),
                )
                .expect("valid metric"),
            ),
            client_grpc_received_bytes: ic(
                "etcd_network_client_grpc_received_bytes_total",
                "The total number of bytes received from grpc clients.",
            ),
            client_grpc_sent_bytes: ic("etcd_network_client_grpc_sent_bytes_total", "The total number of bytes sent to grpc clients."),
            client_requests: reg(
                &r,
                IntCounterVec::new(
                    Opts::new("etcd_server_client_requests_total", "The total number of client requests per client version."),
                    &["type", "client_api_version"],
                )
                .expect("valid metric"),
            ),
            server_id: reg(
                &r,
                GaugeVec::new(
                    Opts::new("etcd_server_id", "Server or member ID in hexadecimal format. 1 for 'server_id' label with current ID."),
                    &["server_id"],
                )
                .expect("valid metric"),
            ),
            is_learner: ig("etcd_server_is_learner", "Whether or not this member is a learner. 1 if is, 0 otherwise."),
            snap_db_save_seconds: reg(
                &r,
                Histogram::with_opts(
                    HistogramOpts::new(
                        "etcd_snap_db_save_total_duration_seconds",
                        "The total latency distributions of v3 snapshot save",
                    )
                    .buckets(exponential_buckets(0.1, 2.0, 10).expect("valid buckets")),
                )
                .expect("valid metric"),
            ),
            grpc_handling_seconds: HistogramVec::new(
                HistogramOpts::new(
                    "grpc_server_handling_seconds",
                    "Histogram of response latency (seconds) of gRPC that had been application-level handled by the server.",
                )
                .buckets(vec![0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]),
                &grpc_labels,
            )
            .expect("valid metric"),
            extensive: std::sync::atomic::AtomicBool::new(false),
            process: ProcessMetrics::new(&r),
            registry: r,
        };
        m.server_version
            .with_label_values(&[crate::API_VERSION])
            .set(1.0);
        m.cluster_version
            .with_label_values(&[crate::CLUSTER_VERSION])
            .set(1.0);
        m
    }

    /// `--metrics extensive`: gRPC handling-time histograms too.
    pub fn enable_extensive(&self) {
        if !self
            .extensive
            .swap(true, std::sync::atomic::Ordering::Relaxed)
        {
            let _ = self
                .registry
                .register(Box::new(self.grpc_handling_seconds.clone()));
        }
    }

    /// Records how long a gRPC call took, with `--metrics extensive`.
    pub fn observe_handling(&self, labels: &[&str; 3], started: std::time::Instant) {
        if self.extensive.load(std::sync::atomic::Ordering::Relaxed) {
            self.grpc_handling_seconds
                .with_label_values(labels)
                .observe(started.elapsed().as_secs_f64());
        }
    }

    /// The registry in Prometheus text format.
    pub fn render(&self) -> String {
        self.process.refresh();
        self.is_learner
            .set(i64::from(crate::raft::actor::is_learner()));
        let mut out = Vec::new();
        // Encoding gathered families into a Vec cannot fail.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        String::from_utf8(out).unwrap_or_default()
    }
}

pub fn metrics() -> &'static Metrics {
    static M: OnceLock<Metrics> = OnceLock::new();
    M.get_or_init(Metrics::new)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_stat_fields_are_counted_after_the_command_name() {
        let line = "4242 (keel (a) b) S 1 4242 4242 0 -1 4194560 100 0 0 0 70 30 0 0 20 0 4 0 \
                    123456 987654321 2048 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0";
        assert_eq!(
            parse_proc_stat(line),
            Some(ProcStat {
                cpu_ticks: 100,
                start_ticks: 123456,
                virtual_bytes: 987654321,
                resident_pages: 2048,
            })
        );
        assert_eq!(parse_proc_stat("1 (x) S 1 2"), None);
    }

    #[test]
    fn the_process_families_are_rendered() {
        // Enough CPU time to show at the kernel's tick (10 ms at 100 Hz).
        let started = std::time::Instant::now();
        let mut x = 0u64;
        while started.elapsed() < std::time::Duration::from_millis(60) {
            x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
        }
        let text = metrics().render();
        for family in [
            "process_cpu_seconds_total",
            "process_resident_memory_bytes",
            "process_virtual_memory_bytes",
            "process_open_fds",
            "process_max_fds",
            "process_start_time_seconds",
        ] {
            let value: f64 = text
                .lines()
                .find_map(|l| l.strip_prefix(&format!("{family} ")))
                .unwrap_or_else(|| panic!("{family} missing"))
                .parse()
                .unwrap();
            assert!(value > 0.0, "{family} {value}");
        }
    }
}
