//! keel-load: a load generator for any etcd v3 server (keel or etcd),
//! modelled on etcd's `benchmark` tool so the two can be compared with the
//! same client code.
//!
//! ```text
//! keel-load --endpoints http://127.0.0.1:2379 --conns 10 --clients 100 --total 100000 \
//!           --key-size 8 --val-size 256 put [--key-space-size N] [--sequential-keys]
//! keel-load ... range KEY [END] [--consistency l|s]
//! keel-load ... txn-put [--txn-ops N]
//! keel-load ... watch-latency
//! keel-load ... lease-keepalive
//! ```
//!
//! `watch-latency` puts `--total` keys one at a time from one client while
//! a watcher on another connection receives their events; it reports, per
//! put, the time from sending the put to receiving its event, and from the
//! put's acknowledgement to its event (0 when the event came first).
//!
//! Each of `--clients` workers shares one of `--conns` connections and
//! issues requests back to back until `--total` are done. Reported:
//! throughput and latency percentiles of successful requests.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use etcd_client::{Client, GetOptions, Txn, TxnOp};
use rand::Rng;

#[derive(Parser, Debug)]
#[command(about = "Load generator for etcd-compatible servers")]
struct Args {
    /// Comma-separated endpoints.
    #[arg(long, default_value = "http://127.0.0.1:2379")]
    endpoints: String,
    /// gRPC connections (each client uses one, round robin).
    #[arg(long, default_value_t = 1)]
    conns: usize,
    /// Concurrent clients issuing requests back to back.
    #[arg(long, default_value_t = 1)]
    clients: usize,
    /// Total requests.
    #[arg(long, default_value_t = 10_000)]
    total: u64,
    #[arg(long, default_value_t = 8)]
    key_size: usize,
    #[arg(long, default_value_t = 8)]
    val_size: usize,
    /// TLS (https endpoints): the CA that signs the server's certificate.
    #[arg(long)]
    cacert: Option<std::path::PathBuf>,
    /// TLS: the client certificate and key (mutual TLS).
    #[arg(long, requires = "key")]
    cert: Option<std::path::PathBuf>,
    #[arg(long, requires = "cert")]
    key: Option<std::path::PathBuf>,
    #[command(subcommand)]
    cmd: Cmd,
}

/// Connection options: TLS when --cacert is given.
fn connect_options(args: &Args) -> Option<etcd_client::ConnectOptions> {
    use etcd_client::{Certificate, ConnectOptions, Identity, TlsOptions};
    let read = |p: &std::path::PathBuf| {
        std::fs::read(p).unwrap_or_else(|e| {
            eprintln!("keel-load: {}: {e}", p.display());
            std::process::exit(2)
        })
    };
    let ca = args.cacert.as_ref()?;
    let mut tls = TlsOptions::new().ca_certificate(Certificate::from_pem(read(ca)));
    if let (Some(cert), Some(key)) = (&args.cert, &args.key) {
        tls = tls.identity(Identity::from_pem(read(cert), read(key)));
    }
    Some(ConnectOptions::new().with_tls(tls))
}

#[derive(Subcommand, Debug, Clone)]
enum Cmd {
    /// Puts random (or sequential) keys.
    Put {
        /// Distinct keys written (1: every put hits one key, as etcd's default).
        #[arg(long, default_value_t = 1)]
        key_space_size: u64,
        #[arg(long)]
        sequential_keys: bool,
    },
    /// Ranges over [KEY, END) (or KEY alone).
    Range {
        key: String,
        end: Option<String>,
        /// l: linearizable, s: serializable.
        #[arg(long, default_value = "l", value_parser = ["l", "s"])]
        consistency: String,
    },
    /// Watch event latency: one writer, one watcher.
    WatchLatency,
    /// Keep-alive round trips: each client renews its own lease back to back
    /// on its own keep-alive stream.
    LeaseKeepalive,
    /// Txns of --txn-ops puts each.
    TxnPut {
        #[arg(long, default_value_t = 1)]
        txn_ops: usize,
        #[arg(long, default_value_t = 1)]
        key_space_size: u64,
    },
}

fn key_bytes(n: u64, size: usize) -> Vec<u8> {
    let mut k = vec![b'0'; size.max(1)];
    let s = n.to_string();
    let s = s.as_bytes();
    let take = s.len().min(k.len());
    let at = k.len() - take;
    k[at..].copy_from_slice(&s[s.len() - take..]);
    k
}

async fn one(
    c: &mut Client,
    cmd: &Cmd,
    args: &Args,
    i: u64,
    value: &[u8],
) -> Result<(), etcd_client::Error> {
    match cmd {
        Cmd::Put {
            key_space_size,
            sequential_keys,
        } => {
            let n = if *sequential_keys {
                i % key_space_size
            } else {
                rand::thread_rng().gen_range(0..*key_space_size)
            };
            c.put(key_bytes(n, args.key_size), value.to_vec(), None)
                .await
                .map(|_| ())
        }
        Cmd::Range {
            key,
            end,
            consistency,
        } => {
            let mut o = GetOptions::new();
            if let Some(e) = end {
                o = o.with_range(e.as_bytes());
            }
            if consistency == "s" {
                o = o.with_serializable();
            }
            c.get(key.as_bytes(), Some(o)).await.map(|_| ())
        }
        Cmd::WatchLatency | Cmd::LeaseKeepalive => {
            unreachable!("streaming commands have their own loops")
        }
        Cmd::TxnPut {
            txn_ops,
            key_space_size,
        } => {
            let base = rand::thread_rng().gen_range(0..*key_space_size);
            let ops: Vec<_> = (0..*txn_ops as u64)
                .map(|j| {
                    TxnOp::put(
                        key_bytes(base * *txn_ops as u64 + j, args.key_size),
                        value.to_vec(),
                        None,
                    )
                })
                .collect();
            c.txn(Txn::new().and_then(ops)).await.map(|_| ())
        }
    }
}

#[tokio::main]
async fn main() {
    let args = Arc::new(Args::parse());
    let endpoints: Vec<String> = args.endpoints.split(',').map(String::from).collect();
    let mut conns = Vec::new();
    for _ in 0..args.conns.max(1) {
        match Client::connect(endpoints.clone(), connect_options(&args)).await {
            Ok(c) => conns.push(c),
            Err(e) => {
                eprintln!("keel-load: connecting to {}: {e}", args.endpoints);
                std::process::exit(1);
            }
        }
    }
    if let Cmd::WatchLatency = args.cmd {
        let watcher = Client::connect(endpoints.clone(), connect_options(&args))
            .await
            .expect("connecting the watcher");
        return watch_latency(&args, conns[0].clone(), watcher).await;
    }
    if let Cmd::LeaseKeepalive = args.cmd {
        return lease_keepalive(args, conns).await;
    }
    let issued = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let value: Arc<Vec<u8>> = Arc::new(vec![b'v'; args.val_size]);
    let started = Instant::now();
    let mut workers = Vec::new();
    for w in 0..args.clients.max(1) {
        let mut c = conns[w % conns.len()].clone();
        let (args, issued, errors, value) =
            (args.clone(), issued.clone(), errors.clone(), value.clone());
        workers.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            loop {
                let i = issued.fetch_add(1, Ordering::Relaxed);
                if i >= args.total {
                    return lat;
                }
                let t = Instant::now();
                match one(&mut c, &args.cmd, &args, i, &value).await {
                    Ok(()) => lat.push(t.elapsed()),
                    Err(e) => {
                        if errors.fetch_add(1, Ordering::Relaxed) < 5 {
                            eprintln!("request failed: {e}");
                        }
                    }
                }
            }
        }));
    }
    let mut lat: Vec<Duration> = Vec::new();
    for w in workers {
        lat.extend(w.await.expect("worker"));
    }
    let elapsed = started.elapsed();
    lat.sort_unstable();
    report(&args, &lat, elapsed, errors.load(Ordering::Relaxed));
}

async fn watch_latency(args: &Args, mut writer: Client, mut watcher: Client) {
    use etcd_client::WatchOptions;
    let (_w, mut stream) = watcher
        .watch("wl/", Some(WatchOptions::new().with_prefix()))
        .await
        .expect("creating the watch");
    let total = args.total as usize;
    let receiver = tokio::spawn(async move {
        let mut got = vec![None; total];
        let mut n = 0;
        while n < total {
            let Some(r) = stream.message().await.expect("watch stream") else {
                break;
            };
            let now = Instant::now();
            for e in r.events() {
                let key = e.kv().expect("event kv").key_str().expect("utf-8 key");
                let i: usize = key[3..].parse().expect("key index");
                if i < total && got[i].is_none() {
                    got[i] = Some(now);
                    n += 1;
                }
            }
        }
        got
    });
    let value = vec![b'v'; args.val_size];
    let started = Instant::now();
    let mut sent = Vec::with_capacity(total);
    for i in 0..total {
        let t0 = Instant::now();
        writer
            .put(format!("wl/{i}"), value.clone(), None)
            .await
            .expect("put");
        sent.push((t0, Instant::now()));
    }
    let got = tokio::time::timeout(Duration::from_secs(60), receiver)
        .await
        .expect("events within a minute")
        .expect("receiver");
    let elapsed = started.elapsed();
    let mut from_send = Vec::new();
    let mut from_ack = Vec::new();
    for ((t0, t1), t2) in sent.iter().zip(got) {
        let t2 = t2.expect("every event arrives");
        from_send.push(t2.saturating_duration_since(*t0));
        from_ack.push(t2.saturating_duration_since(*t1));
    }
    from_send.sort_unstable();
    from_ack.sort_unstable();
    println!("put sent -> event received:");
    report(args, &from_send, elapsed, 0);
    println!("put acknowledged -> event received:");
    report(args, &from_ack, elapsed, 0);
}

async fn lease_keepalive(args: Arc<Args>, conns: Vec<Client>) {
    let issued = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut workers = Vec::new();
    for w in 0..args.clients.max(1) {
        let mut c = conns[w % conns.len()].clone();
        let (args, issued) = (args.clone(), issued.clone());
        workers.push(tokio::spawn(async move {
            let id = c.lease_grant(600, None).await.expect("lease grant").id();
            let (mut keeper, mut stream) = c.lease_keep_alive(id).await.expect("keep-alive");
            let mut lat = Vec::new();
            while issued.fetch_add(1, Ordering::Relaxed) < args.total {
                let t = Instant::now();
                keeper.keep_alive().await.expect("send keep-alive");
                stream
                    .message()
                    .await
                    .expect("keep-alive response")
                    .expect("stream open");
                lat.push(t.elapsed());
            }
            lat
        }));
    }
    let mut lat = Vec::new();
    for w in workers {
        lat.extend(w.await.expect("worker"));
    }
    let elapsed = started.elapsed();
    lat.sort_unstable();
    report(&args, &lat, elapsed, 0);
}

fn report(args: &Args, lat: &[Duration], elapsed: Duration, errors: u64) {
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let pct = |p: f64| -> Duration {
        if lat.is_empty() {
            return Duration::ZERO;
        }
        let i = ((lat.len() as f64 * p / 100.0).ceil() as usize).clamp(1, lat.len()) - 1;
        lat[i]
    };
    let mean = lat.iter().map(|d| d.as_secs_f64()).sum::<f64>() / lat.len().max(1) as f64;
    println!(
        "Summary ({:?}, conns={}, clients={}):",
        args.cmd, args.conns, args.clients
    );
    println!("  Total:        {:.4} s", elapsed.as_secs_f64());
    println!("  Requests:     {} ok, {} failed", lat.len(), errors);
    println!(
        "  Requests/sec: {:.1}",
        lat.len() as f64 / elapsed.as_secs_f64()
    );
    println!("  Average:      {:.4} ms", mean * 1000.0);
    println!(
        "  Fastest:      {:.4} ms",
        ms(lat.first().copied().unwrap_or_default())
    );
    for p in [50.0, 90.0, 99.0, 99.9] {
        println!("  p{p:<5}        {:.4} ms", ms(pct(p)));
    }
    println!(
        "  Slowest:      {:.4} ms",
        ms(lat.last().copied().unwrap_or_default())
    );
}
