//! WAL append throughput with group commit: the real WAL writer (glommio,
//! O_DIRECT, io_uring, fdatasync) in a temporary directory, fed by
//! `appenders` concurrent tasks that each wait for durability before their
//! next append. More appenders, bigger batches, fewer fsyncs per entry.
//!
//!   cargo bench --bench wal

use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use glommio::LocalExecutorBuilder;
use keel_actors::wal_writer::{WalCmd, WalConfig, WalEntry, WalWriter};
use keel_storage::wal::LogIdRecord;
use tokio::sync::{mpsc, oneshot};

fn raise_memlock() {
    let want = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: plain syscall on a local struct.
    unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &want) };
}

fn wal_append(c: &mut Criterion) {
    raise_memlock();
    let ex = LocalExecutorBuilder::default()
        .io_memory(4 << 20)
        .make()
        .expect("executor");
    let mut g = c.benchmark_group("wal_append_256B");
    g.sample_size(10).measurement_time(Duration::from_secs(5));
    for appenders in [1usize, 16, 128] {
        g.throughput(Throughput::Elements(1));
        g.bench_with_input(
            BenchmarkId::from_parameter(appenders),
            &appenders,
            |b, &appenders| {
                b.iter_custom(|iters| {
                    ex.run(async move {
                        let dir = tempfile::tempdir().unwrap();
                        let cfg = WalConfig {
                            dir: dir.path().to_path_buf(),
                            segment_bytes: 64 << 20,
                            batch_bytes_max: 4 << 20,
                            linger: Duration::ZERO,
                        };
                        let writer = WalWriter::open(cfg, None, Vec::new(), None, None)
                            .await
                            .unwrap();
                        let (tx, rx) = mpsc::channel(4096);
                        let w = glommio::spawn_local(writer.run(rx));
                        let payload = Bytes::from(vec![7u8; 256]);
                        let per = iters.div_ceil(appenders as u64);
                        let start = Instant::now();
                        let mut tasks = Vec::new();
                        for a in 0..appenders as u64 {
                            let (tx, payload) = (tx.clone(), payload.clone());
                            tasks.push(glommio::spawn_local(async move {
                                for i in 0..per {
                                    let (done_tx, done_rx) = oneshot::channel();
                                    let entry = WalEntry {
                                        log_id: LogIdRecord {
                                            term: 1,
                                            leader: 1,
                                            index: a * per + i,
                                        },
                                        payload_kind: 1,
                                        payload: payload.clone(),
                                    };
                                    tx.send(WalCmd::Append {
                                        entries: vec![entry],
                                        done: Box::new(move |r| {
                                            let _ = done_tx.send(r);
                                        }),
                                    })
                                    .await
                                    .unwrap();
                                    done_rx.await.unwrap().unwrap();
                                }
                            }));
                        }
                        for t in tasks {
                            t.await;
                        }
                        let elapsed = start.elapsed();
                        drop(tx);
                        w.await;
                        elapsed * iters as u32 / (per * appenders as u64) as u32
                    })
                })
            },
        );
    }
    g.finish();
}

criterion_group!(benches, wal_append);
criterion_main!(benches);
