//! MVCC store costs without I/O: applying archived puts, ranges over a
//! populated store, and compaction (whole, and its longest step).
//!
//!   cargo bench --bench mvcc

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use keel_proto::command::{Command, PutCmd};
use keel_storage::mvcc::{KvStore, RangeArgs};

fn put_cmd(i: u64) -> Bytes {
    Bytes::from_owner(
        Command::Put(PutCmd {
            key: format!("key/{:08}", i % 100_000).into_bytes(),
            value: vec![b'v'; 256],
            ..Default::default()
        })
        .to_bytes(),
    )
}

fn populated(n: u64) -> KvStore {
    let mut s = KvStore::default();
    for i in 0..n {
        let b = put_cmd(i);
        s.apply(Command::access(&b).unwrap(), &b).unwrap();
    }
    s
}

fn mvcc(c: &mut Criterion) {
    let mut g = c.benchmark_group("mvcc");
    g.throughput(Throughput::Elements(1000));
    let cmds: Vec<Bytes> = (0..1000).map(put_cmd).collect();
    g.bench_function("apply_put_256B", |b| {
        b.iter_batched(
            || populated(10_000),
            |mut s| {
                for c in &cmds {
                    s.apply(Command::access(c).unwrap(), c).unwrap();
                }
                s
            },
            BatchSize::LargeInput,
        )
    });
    let s = populated(100_000);
    g.throughput(Throughput::Elements(1));
    g.bench_function("range_one_key_of_100k", |b| {
        let args = RangeArgs {
            key: b"key/00050000",
            ..Default::default()
        };
        b.iter(|| s.range(&args, s.current_rev()).unwrap())
    });
    g.throughput(Throughput::Elements(100));
    g.bench_function("range_100_keys_of_100k", |b| {
        let args = RangeArgs {
            key: b"key/00050000",
            range_end: b"key/00050100",
            ..Default::default()
        };
        b.iter(|| s.range(&args, s.current_rev()).unwrap())
    });
    g.finish();
}

criterion_group!(benches, mvcc);
criterion_main!(benches, compact_benches);

/// A store of `keys` keys, each put twice: a full compaction drops half.
fn overwritten(keys: u64) -> KvStore {
    let mut s = KvStore::default();
    for round in 0..2 {
        for i in 0..keys {
            let b = Bytes::from_owner(
                Command::Put(PutCmd {
                    key: format!("key/{i:08}").into_bytes(),
                    value: format!("v{round}").into_bytes(),
                    ..Default::default()
                })
                .to_bytes(),
            );
            s.apply(Command::access(&b).unwrap(), &b).unwrap();
        }
    }
    s
}

fn compaction(c: &mut Criterion) {
    let mut g = c.benchmark_group("compact");
    g.sample_size(10);
    g.bench_function("full_2m_keys", |b| {
        b.iter_custom(|iters| {
            let mut total = std::time::Duration::ZERO;
            for _ in 0..iters {
                let mut s = overwritten(2_000_000);
                let rev = s.current_rev();
                let started = std::time::Instant::now();
                s.compact(rev).unwrap();
                s.finish_compaction();
                total += started.elapsed();
            }
            total
        })
    });
    // What the MVCC actor (and the raft core beside it) waits for at most:
    // the longest single step of that compaction.
    g.bench_function("longest_step_of_2m_keys", |b| {
        b.iter_custom(|iters| {
            let mut total = std::time::Duration::ZERO;
            for _ in 0..iters {
                let mut s = overwritten(2_000_000);
                s.compact(s.current_rev()).unwrap();
                let mut longest = std::time::Duration::ZERO;
                while s.compacting() {
                    let started = std::time::Instant::now();
                    s.compact_step();
                    longest = longest.max(started.elapsed());
                }
                total += longest;
            }
            total
        })
    });
    g.finish();
}

criterion_group!(compact_benches, compaction);
