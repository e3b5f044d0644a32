//! keel-load: a load generator for any etcd v3 server (keel or etcd),
//! modelled on etcd's `benchmark` tool so the two can be compared with the
//! same client code.
//!
//! ```text
//! keel-load --endpoints http://127.0.0.1:2379 --conns 10 --clients 100 --total 100000 \
//!           --key-size 8 --val-size 256 put [--key-space-size N] [--sequential-keys]
//! keel-load ... range KEY [END] [--consistency l|s]
//! keel-load ... txn-put [--txn-ops N]
//! ```
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
    #[command(subcommand)]
    cmd: Cmd,
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
        match Client::connect(endpoints.clone(), None).await {
            Ok(c) => conns.push(c),
            Err(e) => {
                eprintln!("keel-load: connecting to {}: {e}", args.endpoints);
                std::process::exit(1);
            }
        }
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
