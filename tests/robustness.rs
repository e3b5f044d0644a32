//! Robustness suite, after etcd's tests/robustness: clients run a KV
//! workload on a 3-member cluster of real keel processes while a nemesis
//! injects one kind of fault (kill -9, SIGSTOP, partition, MoveLeader,
//! snapshot catch-up); every operation and watch event is recorded and the
//! history is checked against a replay of the watched revisions
//! (`robustness/checker.rs` says what is checked). Lease and lock safety
//! under partitions are separate tests (`robustness/leases.rs`).
//!
//! `cargo test --test robustness` runs each fault kind once for a few
//! seconds. The long run is ignored by default:
//!
//! ```sh
//! KEEL_ROBUSTNESS_SECS=60 KEEL_ROBUSTNESS_ROUNDS=5 \
//!     cargo test --release --test robustness -- --ignored --nocapture
//! ```
//!
//! `KEEL_ROBUSTNESS_FAULTS=kill,pause` runs only those fault kinds (names as
//! in the summary lines). `KEEL_ROBUSTNESS_SEED` fixes the seed of clients and nemesis (the
//! cluster's timing still varies). `KEEL_ROBUSTNESS_BINARY` runs the same
//! scenarios against another binary (an older keel, or etcd, e.g.
//! `/usr/bin/etcd`); the peer proxy only speaks keel's peer protocol, so
//! for a binary not named keel* the partition scenario and the lease and
//! lock tests (which cut members off) are skipped.

mod common;

#[path = "robustness/checker.rs"]
mod checker;
#[path = "robustness/failover.rs"]
mod failover;
#[path = "robustness/history.rs"]
mod history;
#[path = "robustness/leases.rs"]
mod leases;
#[path = "robustness/nemesis.rs"]
mod nemesis;
#[path = "robustness/recorder.rs"]
mod recorder;

use std::collections::BTreeMap;
use std::sync::atomic::AtomicI64;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::Cluster;
use history::{nanos_since, FaultKind, FinalRead, History};
use recorder::{WatchStop, Workload};

/// Fast elections keep failovers short. The recorder's clients ping every
/// second (to notice a paused member), so the members allow pings half a
/// second apart, as an etcd operator would with such clients (etcd's
/// default minimum is 5 s).
const FAST: &[&str] = &[
    "--heartbeat-interval",
    "50",
    "--election-timeout",
    "500",
    "--grpc-keepalive-min-time",
    "500ms",
];

/// A snapshot every 200 entries keeping 20: a follower down for seconds
/// under load can only catch up through a snapshot.
const SNAPSHOT_FLAGS: &[&str] = &[
    "--snapshot-count",
    "200",
    "--experimental-snapshot-catchup-entries",
    "20",
];

/// Seconds of load per fault kind in the short run.
const SHORT_SECS: u64 = 10;
const SHORT_CLIENTS: usize = 8;
/// The longest write gap a leader fault may cause in the short run: a
/// regression guard well above what the long run measures (≤ 1.5 s with
/// `--election-timeout 500`) and well below the request timeout that
/// writes once waited out behind an unreachable leader (6 s).
const SHORT_FAILOVER_MAX: Duration = Duration::from_secs(4);

/// The scenarios start 3 processes each and are timing-sensitive: on a
/// small machine they run one at a time, whatever cargo's test threads.
pub static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// How long, after the load, the members get to agree on a final revision
/// and the watches to deliver it.
const SETTLE: Duration = Duration::from_secs(20);

/// Whether the server binary speaks keel's peer protocol, which the
/// partitioning proxy needs.
pub fn proxy_supported() -> bool {
    common::server_binary()
        .file_name()
        .is_some_and(|n| n.to_string_lossy().starts_with("keel"))
}

/// One scenario's record and verdict.
struct Run {
    kind: FaultKind,
    seed: u64,
    history: History,
    violations: Vec<String>,
    /// Each member's log, and when the run started (seconds since the
    /// epoch), for `failover::explain`.
    logs: Vec<String>,
    start_unix: f64,
}

impl Run {
    /// One line: what ran, how much, how it went.
    fn line(&self) -> String {
        let h = &self.history;
        let unknown = h
            .ops
            .iter()
            .filter(|o| matches!(o.outcome, history::Outcome::Unknown(_)))
            .count();
        let last_rev = h
            .watches
            .iter()
            .filter_map(|w| w.events.last())
            .map(history::Event::rev)
            .max()
            .unwrap_or(h.base_rev);
        let reopens: usize = h.watches.iter().map(|w| w.reopens.len() - 1).sum();
        let gaps = failover::by_kind(&failover::write_gaps(h));
        let failover = gaps
            .get(&self.kind)
            .map_or("-".into(), |(max, _)| format!("{:.1} s", max.as_secs_f64()));
        format!(
            "robustness {} (seed {}): {:.1} s, {} ops ({} acknowledged writes, {unknown} unknown), \
             {} faults, last rev {last_rev}, {reopens} watch reopens, failover max {failover}, \
             {} violations",
            self.kind.name(),
            self.seed,
            h.load_end as f64 / 1e9,
            h.ops.len(),
            h.acknowledged_writes(),
            h.faults.len(),
            self.violations.len()
        )
    }

    /// The violations and the fault log, for a failure message.
    fn report(&self) -> String {
        let mut s = format!("{}\n{}", self.line(), checker::summarize(&self.violations));
        s += "faults:\n";
        for f in &self.history.faults {
            s += &format!(
                "  {} m{}{} {:.3}s..{:.3}s {}\n",
                f.kind.name(),
                f.member,
                if f.hit_leader { " (leader)" } else { "" },
                f.start as f64 / 1e9,
                f.end as f64 / 1e9,
                f.note
            );
        }
        for w in &self.history.watches {
            for (t, m, from, why) in &w.reopens[1..] {
                s += &format!(
                    "  watch {} reopened at {:.3}s on m{m} from rev {from}: {why}\n",
                    w.id,
                    *t as f64 / 1e9
                );
            }
        }
        s
    }
}

fn seed() -> u64 {
    std::env::var("KEEL_ROBUSTNESS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random)
}

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

/// Runs the workload under `kind` faults for `load` and checks the history.
async fn run_scenario(kind: FaultKind, load: Duration, clients: usize, seed: u64) -> Run {
    let mut flags = FAST.to_vec();
    if kind == FaultKind::SnapshotCatchup {
        flags.extend(SNAPSHOT_FLAGS);
    }
    let mut cluster = if proxy_supported() {
        Cluster::start_proxied(3, &flags).await
    } else {
        Cluster::start(3, &flags)
    };
    let ids = nemesis::member_ids(&cluster).await;
    let endpoints = cluster.endpoints();
    let w = Arc::new(Workload {
        endpoints: endpoints.clone(),
        prefix: "/rb/".into(),
        keys: 8,
        op_timeout: Duration::from_secs(3),
        ops_per_client_max: 200_000,
    });
    let start = Instant::now();
    let start_unix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64());
    let base_rev = recorder::settled_rev(&endpoints, &w.prefix, Duration::from_secs(10))
        .await
        .expect("no revision before the load");
    let stop = Arc::new(WatchStop {
        target: AtomicI64::new(0),
        deadline: start + load + SETTLE + Duration::from_secs(10),
    });

    // Two watches from the first revision on different members; a third
    // joins later from a recent revision (served from the store's history).
    let mut watches = Vec::new();
    for id in 0..2 {
        let (w, stop) = (w.clone(), stop.clone());
        watches.push(tokio::spawn(recorder::run_watch(
            w,
            id,
            base_rev + 1,
            id,
            start,
            stop,
        )));
    }
    {
        let (w, stop) = (w.clone(), stop.clone());
        watches.push(tokio::spawn(async move {
            tokio::time::sleep(load / 3).await;
            let now = recorder::current_rev(&w.endpoints, &w.prefix).await;
            let from = now.map_or(base_rev + 1, |r| (r - 20).max(base_rev + 1));
            recorder::run_watch(w, 2, from, 2, start, stop).await
        }));
    }
    let deadline = Instant::now() + load;
    let invoke_end = u64::try_from((deadline - start).as_nanos()).unwrap_or(u64::MAX);
    let client_tasks: Vec<_> = (0..clients)
        .map(|c| {
            tokio::spawn(recorder::run_client(
                w.clone(),
                c,
                seed.wrapping_add(c as u64),
                start,
                deadline,
            ))
        })
        .collect();
    let (faults, mut violations) =
        nemesis::run(kind, &mut cluster, &ids, seed, start, deadline).await;
    let mut ops = Vec::new();
    for t in client_tasks {
        ops.extend(t.await.expect("a client task panicked"));
    }
    let load_end = nanos_since(start);

    for (i, m) in cluster.members.iter_mut().enumerate() {
        if !m.is_running() {
            violations.push(format!("m{i} exited by itself:\n{}", tail(&m.logs())));
        } else if m.logs().contains("panicked") {
            violations.push(format!("m{i} panicked:\n{}", tail(&m.logs())));
        }
    }
    match recorder::settled_rev(&endpoints, &w.prefix, SETTLE).await {
        Some(rev) => stop.target.store(rev, std::sync::atomic::Ordering::Relaxed),
        None => violations.push(format!(
            "no settled revision within {SETTLE:?} after the load"
        )),
    }
    let mut watch_records = Vec::new();
    for t in watches {
        watch_records.push(t.await.expect("a watch task panicked"));
    }
    let mut final_reads = Vec::new();
    for (member, ep) in endpoints.iter().enumerate() {
        let result = recorder::final_read(ep, &w.prefix).await;
        final_reads.push(FinalRead { member, result });
    }
    let history = History {
        prefix: w.prefix.clone(),
        base_rev,
        ops,
        watches: watch_records,
        faults,
        final_reads,
        load_end,
        invoke_end,
    };
    violations.extend(checker::check(&history));
    Run {
        kind,
        seed,
        history,
        violations,
        logs: cluster.members.iter().map(|m| m.logs()).collect(),
        start_unix,
    }
}

/// The last lines of a member's log.
fn tail(log: &str) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

/// The short run of one fault kind: no violation allowed.
async fn short(kind: FaultKind) {
    if kind == FaultKind::Partition && !proxy_supported() {
        println!("partition skipped: the proxy speaks only keel's peer protocol");
        return;
    }
    let _serial = SERIAL.lock().await;
    let run = run_scenario(kind, Duration::from_secs(SHORT_SECS), SHORT_CLIENTS, seed()).await;
    println!("{}", run.report());
    assert!(run.violations.is_empty(), "{}", run.report());
    assert!(
        run.history.acknowledged_writes() > 0,
        "no write succeeded:\n{}",
        run.report()
    );
    for (kind, gap) in failover::write_gaps(&run.history) {
        assert!(
            gap <= SHORT_FAILOVER_MAX,
            "writes stopped for {gap:?} around a {} fault:\n{}{}",
            kind.name(),
            run.report(),
            failover::explain(&run.history, SHORT_FAILOVER_MAX, &run.logs, run.start_unix)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill() {
    short(FaultKind::Kill).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause() {
    short(FaultKind::Pause).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partition() {
    short(FaultKind::Partition).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn move_leader() {
    short(FaultKind::MoveLeader).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_catchup() {
    short(FaultKind::SnapshotCatchup).await;
}

/// Every fault kind `KEEL_ROBUSTNESS_ROUNDS` times for
/// `KEEL_ROBUSTNESS_SECS` each, with `KEEL_ROBUSTNESS_CLIENTS` clients;
/// one line per run and per kind, then an overall line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "long: run with --ignored (see the file's doc comment)"]
async fn long() {
    let _serial = SERIAL.lock().await;
    let secs = env_or("KEEL_ROBUSTNESS_SECS", 60);
    let rounds = env_or("KEEL_ROBUSTNESS_ROUNDS", 5);
    let clients = usize::try_from(env_or("KEEL_ROBUSTNESS_CLIENTS", 16)).unwrap_or(16);
    let base_seed = seed();
    let mut runs = Vec::new();
    let mut failed = String::new();
    // KEEL_ROBUSTNESS_FAULTS=kill,pause,... runs only those kinds.
    let only = std::env::var("KEEL_ROBUSTNESS_FAULTS").ok();
    for kind in FaultKind::ALL {
        if only
            .as_deref()
            .is_some_and(|o| !o.split(',').any(|k| k.trim() == kind.name()))
        {
            continue;
        }
        if kind == FaultKind::Partition && !proxy_supported() {
            println!("partition skipped: the proxy speaks only keel's peer protocol");
            continue;
        }
        let mut kind_runs = Vec::new();
        for round in 0..rounds {
            let run = run_scenario(
                kind,
                Duration::from_secs(secs),
                clients,
                base_seed.wrapping_add(round),
            )
            .await;
            println!("{}", run.line());
            if std::env::var_os("KEEL_ROBUSTNESS_TRACE").is_some() {
                print!(
                    "{}",
                    failover::explain(
                        &run.history,
                        Duration::from_millis(1500),
                        &run.logs,
                        run.start_unix
                    )
                );
            }
            if !run.violations.is_empty() {
                failed += &run.report();
            }
            kind_runs.push(run);
        }
        println!("{}", summary(kind.name(), &kind_runs));
        runs.extend(kind_runs);
    }
    println!("{}", summary("", &runs));
    assert!(failed.is_empty(), "{failed}");
}

/// `robustness[ kind]: N runs, V violations, ops, writes, failover max and
/// median per fault kind`.
fn summary(name: &str, runs: &[Run]) -> String {
    let violations: usize = runs.iter().map(|r| r.violations.len()).sum();
    let ops: usize = runs.iter().map(|r| r.history.ops.len()).sum();
    let writes: usize = runs.iter().map(|r| r.history.acknowledged_writes()).sum();
    let gaps: Vec<_> = runs
        .iter()
        .flat_map(|r| failover::write_gaps(&r.history))
        .collect();
    let mut beyond: BTreeMap<FaultKind, Duration> = BTreeMap::new();
    for (kind, d) in runs.iter().flat_map(|r| failover::beyond_fault(&r.history)) {
        let w = beyond.entry(kind).or_default();
        *w = (*w).max(d);
    }
    let failover: Vec<String> = failover::by_kind(&gaps)
        .iter()
        .map(|(k, (max, median))| {
            format!(
                "{} {:.1} s (median {:.1} s, at most {:.1} s beyond the fault)",
                k.name(),
                max.as_secs_f64(),
                median.as_secs_f64(),
                beyond.get(k).copied().unwrap_or_default().as_secs_f64()
            )
        })
        .collect();
    let label = if name.is_empty() {
        "robustness:".to_string()
    } else {
        format!("robustness {name}:")
    };
    format!(
        "{label} {} runs, {violations} violations, {ops} ops ({writes} acknowledged writes), \
         failover max {}",
        runs.len(),
        if failover.is_empty() {
            "-".to_string()
        } else {
            failover.join(", ")
        }
    )
}
