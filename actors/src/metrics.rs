//! Prometheus metrics under etcd's names, served at `/metrics`.
//!
//! One process-wide registry; every metric is an atomic, so actors on any
//! core update them without messages. Types follow etcd's (several of its
//! `*_total` series are gauges).

use std::sync::OnceLock;

use prometheus::{
    exponential_buckets, Encoder, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter,
    IntCounterVec, IntGauge, Opts, Registry, TextEncoder,
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
    pub mvcc_current_revision: IntGauge,
    pub mvcc_compact_revision: IntGauge,
    pub grpc_started: IntCounterVec,
    pub grpc_handled: IntCounterVec,
    pub placement: GaugeVec,
    pub server_version: GaugeVec,
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
                    // From 10 µs (etcd starts at 1 ms): fast disks fsync in tens of µs.
                    .buckets(exponential_buckets(0.00001, 2.0, 20).expect("valid buckets")),
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
            registry: r,
        };
        m.server_version
            .with_label_values(&[crate::API_VERSION])
            .set(1.0);
        m
    }

    /// The registry in Prometheus text format.
    pub fn render(&self) -> String {
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
