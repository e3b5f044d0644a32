//! Watch notification without I/O: one applied batch handed to many
//! watchers, most of which it does not concern.
//!
//!   cargo bench --bench watch

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use keel_actors::watch::{HeaderInfo, WatchHub, WatchSpec};
use keel_storage::mvcc::KvStore;
use tokio::sync::mpsc;

/// 10,000 single-key watchers and 1,000 prefix watchers over 100 streams.
fn hub_with_watchers(
    store: &KvStore,
) -> (
    WatchHub,
    Vec<mpsc::Receiver<keel_proto::etcdserverpb::WatchResponse>>,
) {
    let mut hub = WatchHub::default();
    let mut receivers = Vec::new();
    for stream in 0..100u64 {
        let (tx, rx) = mpsc::channel(1 << 16);
        hub.open(stream, tx, 1 << 20);
        receivers.push(rx);
        for i in 0..100 {
            let key = format!("pod/{stream:03}/{i:03}");
            hub.create(
                stream,
                WatchSpec {
                    key: Bytes::from(key),
                    ..Default::default()
                },
                store,
                HeaderInfo::default(),
            );
        }
        for i in 0..10 {
            hub.create(
                stream,
                WatchSpec {
                    key: Bytes::from(format!("node/{stream:03}/{i}/")),
                    range_end: Bytes::from(format!("node/{stream:03}/{i}0")),
                    ..Default::default()
                },
                store,
                HeaderInfo::default(),
            );
        }
    }
    (hub, receivers)
}

fn watch(c: &mut Criterion) {
    let mut g = c.benchmark_group("watch");
    g.throughput(Throughput::Elements(100));
    let store = std::cell::RefCell::new(KvStore::default());
    let (mut hub, mut receivers) = hub_with_watchers(&store.borrow());
    let mut n = 0u64;
    // A batch of 100 puts, one of which a single-key watcher wants.
    g.bench_function("notify_100_events_11k_watchers", |b| {
        b.iter_batched(
            || {
                for r in &mut receivers {
                    while r.try_recv().is_ok() {}
                }
                let mut store = store.borrow_mut();
                let from = store.current_rev() + 1;
                for i in 0..100 {
                    let mut txn = store.begin_write();
                    let key = if i == 0 {
                        format!("pod/{:03}/{:03}", n % 100, n % 97)
                    } else {
                        format!("other/{n}/{i}")
                    };
                    txn.put(key.as_bytes(), Bytes::from_static(b"v"), 0);
                    txn.end();
                }
                n += 1;
                from
            },
            |from| hub.notify(from, &store.borrow(), HeaderInfo::default()),
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

criterion_group!(benches, watch);
criterion_main!(benches);
