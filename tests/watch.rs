//! Watch through the etcd-client crate against the real binary: history,
//! filters, prev_kv, cancel, compaction, progress, fragments, slow
//! consumers, and watches on a cluster across a leader change.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::{Cluster, Server};
use etcd_client::{
    Client, EventType, PutOptions, Txn, TxnOp, WatchFilterType, WatchOptions, WatchResponse,
    WatchStream,
};

/// The next response, failing the test after `limit`.
async fn next(s: &mut WatchStream, limit: Duration) -> WatchResponse {
    tokio::time::timeout(limit, s.message())
        .await
        .expect("no watch response in time")
        .expect("watch stream error")
        .expect("watch stream ended")
}

/// Collects responses until `n` events arrived (or the limit passes).
async fn events(
    s: &mut WatchStream,
    n: usize,
) -> Vec<(EventType, String, String, i64, Option<String>)> {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut out = Vec::new();
    while out.len() < n {
        let r = next(s, deadline.saturating_duration_since(Instant::now())).await;
        for e in r.events() {
            let kv = e.kv().unwrap();
            out.push((
                e.event_type(),
                kv.key_str().unwrap().to_string(),
                kv.value_str().unwrap().to_string(),
                kv.mod_revision(),
                e.prev_kv().map(|p| p.value_str().unwrap().to_string()),
            ));
        }
    }
    out
}

/// Nothing arrives within `d`.
async fn quiet(s: &mut WatchStream, d: Duration) {
    if let Ok(r) = tokio::time::timeout(d, s.message()).await {
        panic!("unexpected watch response: {r:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_filters_prev_kv_and_cancel() {
    let s = Server::start(&[]);
    let mut c = s.client().await;
    c.put("a", "1", None).await.unwrap(); // rev 2
    c.put("a", "2", None).await.unwrap(); // rev 3
    c.delete("a", None).await.unwrap(); // rev 4
    c.put("b", "1", None).await.unwrap(); // rev 5

    // Historical replay from revision 2, inclusive, with previous values.
    let opts = WatchOptions::new().with_start_revision(2).with_prev_key();
    let (mut w, mut stream) = c.watch("a", Some(opts)).await.unwrap();
    let got = events(&mut stream, 3).await;
    assert_eq!(
        got,
        vec![
            (EventType::Put, "a".into(), "1".into(), 2, None),
            (EventType::Put, "a".into(), "2".into(), 3, Some("1".into())),
            (
                EventType::Delete,
                "a".into(),
                "".into(),
                4,
                Some("2".into())
            ),
        ]
    );
    // Then live events, and nothing for other keys.
    c.put("a", "3", None).await.unwrap(); // rev 6
    assert_eq!(
        events(&mut stream, 1).await,
        vec![(EventType::Put, "a".into(), "3".into(), 6, None)]
    );

    // Filters on a second watcher of the same stream, over all keys.
    let no_put = WatchOptions::new()
        .with_all_keys()
        .with_filters([WatchFilterType::NoPut]);
    w.watch("", Some(no_put)).await.unwrap();
    let created = next(&mut stream, Duration::from_secs(5)).await;
    assert!(created.created());
    let filtered_id = created.watch_id();
    assert_ne!(filtered_id, w.watch_id());
    c.put("b", "2", None).await.unwrap(); // rev 7: no watcher wants it
    c.delete("b", None).await.unwrap(); // rev 8: the filtered watcher only
    let r = next(&mut stream, Duration::from_secs(5)).await;
    assert_eq!(r.watch_id(), filtered_id);
    assert_eq!(r.events().len(), 1);
    assert_eq!(r.events()[0].event_type(), EventType::Delete);
    assert_eq!(r.events()[0].kv().unwrap().mod_revision(), 8);
    assert_eq!(r.header().unwrap().revision(), 8);

    // NODELETE from the start of history.
    let (_w2, mut puts) = c
        .watch(
            "",
            Some(
                WatchOptions::new()
                    .with_all_keys()
                    .with_start_revision(1)
                    .with_filters([WatchFilterType::NoDelete]),
            ),
        )
        .await
        .unwrap();
    let got = events(&mut puts, 5).await;
    let revs: Vec<i64> = got.iter().map(|e| e.3).collect();
    assert_eq!(revs, [2, 3, 5, 6, 7]);
    assert!(got.iter().all(|e| e.0 == EventType::Put));

    let (_, metrics) = common::http_get(s.port, "/metrics").unwrap();
    assert!(
        metrics.contains("etcd_debugging_mvcc_watch_stream_total 2"),
        "{metrics}"
    );
    assert!(metrics.contains("etcd_debugging_mvcc_watcher_total 3"));
    assert!(metrics.contains("etcd_debugging_mvcc_slow_watcher_total 0"));
    assert!(metrics.contains("etcd_debugging_mvcc_pending_events_total 0"));

    // Cancel: answered with canceled, then silence.
    w.cancel_by_id(filtered_id).await.unwrap();
    let r = next(&mut stream, Duration::from_secs(5)).await;
    assert!(r.canceled());
    assert_eq!(r.watch_id(), filtered_id);
    c.delete("nothing-here", None).await.unwrap();
    c.put("zzz", "1", None).await.unwrap();
    quiet(&mut stream, Duration::from_millis(300)).await;
    // An unknown id is ignored, as etcd does.
    w.cancel_by_id(12345).await.unwrap();
    quiet(&mut stream, Duration::from_millis(300)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compacted_start_duplicate_ids_empty_range_and_progress() {
    let s = Server::start(&[]);
    let mut c = s.client().await;
    for v in ["1", "2", "3"] {
        c.put("a", v, None).await.unwrap(); // revs 2..4
    }
    c.compact(3, None).await.unwrap();

    // Below the compaction point: created, then canceled with compact_revision.
    let (mut w, mut stream) = c
        .watch("a", Some(WatchOptions::new().with_start_revision(2)))
        .await
        .unwrap();
    let r = next(&mut stream, Duration::from_secs(5)).await;
    assert!(r.canceled());
    assert_eq!(r.compact_revision(), 3);
    assert_eq!(r.watch_id(), w.watch_id());
    // As etcd 3.4.23 answers (checked against it).
    assert_eq!(r.header().unwrap().revision(), 0);
    assert!(r.events().is_empty());

    // At the compaction point: history from there.
    let (_w, mut at) = c
        .watch("a", Some(WatchOptions::new().with_start_revision(3)))
        .await
        .unwrap();
    let got = events(&mut at, 2).await;
    assert_eq!(got.iter().map(|e| e.3).collect::<Vec<_>>(), [3, 4]);

    // A client-chosen id, then the same id again: refused with etcd's reason.
    w.watch("a", Some(WatchOptions::new().with_watch_id(7)))
        .await
        .unwrap();
    let r = next(&mut stream, Duration::from_secs(5)).await;
    assert!(r.created() && !r.canceled());
    assert_eq!(r.watch_id(), 7);
    w.watch("a", Some(WatchOptions::new().with_watch_id(7)))
        .await
        .unwrap();
    let r = next(&mut stream, Duration::from_secs(5)).await;
    assert!(r.created() && r.canceled());
    assert_eq!(r.watch_id(), -1);
    assert_eq!(
        r.cancel_reason(),
        "mvcc: duplicate watch ID provided on the WatchStream"
    );

    // key >= range_end: nothing to watch.
    w.watch("b", Some(WatchOptions::new().with_range("a")))
        .await
        .unwrap();
    let r = next(&mut stream, Duration::from_secs(5)).await;
    assert!(r.created() && r.canceled());
    assert_eq!(r.cancel_reason(), "mvcc: watcher range is empty");

    // Progress: watch id -1, at the current revision, after every event.
    c.put("a", "4", None).await.unwrap(); // rev 5
    let e = next(&mut stream, Duration::from_secs(5)).await;
    assert_eq!(e.watch_id(), 7);
    w.request_progress().await.unwrap();
    let r = next(&mut stream, Duration::from_secs(5)).await;
    assert_eq!(r.watch_id(), -1);
    assert!(r.events().is_empty() && !r.created() && !r.canceled());
    assert_eq!(r.header().unwrap().revision(), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn progress_notify_and_fragments() {
    let s = Server::start(&[
        "--experimental-watch-progress-notify-interval",
        "200ms",
        "--max-request-bytes",
        "10000",
    ]);
    let mut c = s.client().await;
    let (w, mut stream) = c
        .watch("p", Some(WatchOptions::new().with_progress_notify()))
        .await
        .unwrap();
    let r = next(&mut stream, Duration::from_secs(3)).await;
    assert_eq!(r.watch_id(), w.watch_id());
    assert!(r.events().is_empty() && !r.canceled());

    // One revision whose events (3 KB values with 3 KB previous values)
    // exceed --max-request-bytes, from a txn that does not.
    for i in 0..3 {
        c.put(format!("f/{i}"), vec![b'o'; 3000], None)
            .await
            .unwrap();
    }
    let ops: Vec<TxnOp> = (0..3)
        .map(|i| TxnOp::put(format!("f/{i}"), vec![b'n'; 3000], None))
        .collect();
    let (_wf, mut frag) = c
        .watch(
            "f/",
            Some(
                WatchOptions::new()
                    .with_prefix()
                    .with_fragment()
                    .with_prev_key(),
            ),
        )
        .await
        .unwrap();
    let (_wn, mut whole) = c
        .watch(
            "f/",
            Some(WatchOptions::new().with_prefix().with_prev_key()),
        )
        .await
        .unwrap();
    c.txn(Txn::new().and_then(ops)).await.unwrap();
    let mut parts = Vec::new();
    loop {
        let r = next(&mut frag, Duration::from_secs(5)).await;
        parts.push((r.0.fragment, r.events().len()));
        if !r.0.fragment {
            break;
        }
    }
    assert!(parts.len() > 1, "{parts:?}");
    assert_eq!(parts.iter().map(|p| p.1).sum::<usize>(), 3);
    let r = next(&mut whole, Duration::from_secs(5)).await;
    assert!(!r.0.fragment);
    assert_eq!(r.events().len(), 3);
}

/// What one writer did: (revision, is_delete, key), for acknowledged
/// changes only (a delete of nothing makes no revision).
type Ops = Vec<(i64, bool, String)>;

async fn write_randomly(ep: String, writer: usize, ops: usize, value_bytes: usize) -> Ops {
    let mut c = Client::connect([ep], None).await.unwrap();
    let mut done = Vec::new();
    let mut seed = writer as u64 * 7919 + 1;
    for i in 0..ops {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let key = format!("chk/{}", (seed >> 33) % 40);
        if (seed >> 20).is_multiple_of(4) {
            let r = c.delete(key.as_str(), None).await.unwrap();
            if r.deleted() > 0 {
                done.push((r.header().unwrap().revision(), true, key));
            }
        } else {
            let r = c
                .put(
                    key.as_str(),
                    format!("{writer}-{i}-{}", "v".repeat(value_bytes)),
                    Some(PutOptions::new()),
                )
                .await
                .unwrap();
            done.push((r.header().unwrap().revision(), false, key));
        }
    }
    done
}

/// Reads a watch until the revision `last` sends (once known) was seen;
/// a `stalled` reader reads nothing before then (the slowest consumer).
/// Returns the (revision, is_delete, key) of every event.
async fn record(
    mut s: WatchStream,
    mut last: tokio::sync::watch::Receiver<i64>,
    stalled: bool,
) -> Ops {
    if stalled {
        let _ = last.wait_for(|l| *l > 0).await;
    }
    let mut seen: Ops = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let target = *last.borrow_and_update();
        if target > 0 && seen.last().is_some_and(|e| e.0 >= target) {
            return seen;
        }
        assert!(
            Instant::now() < deadline,
            "watch did not reach revision {target}"
        );
        let Ok(r) = tokio::time::timeout(Duration::from_millis(100), s.message()).await else {
            continue;
        };
        let r = r.expect("watch stream error").expect("watch stream ended");
        assert!(!r.canceled(), "watch canceled: {r:?}");
        for e in r.events() {
            let kv = e.kv().unwrap();
            seen.push((
                kv.mod_revision(),
                e.event_type() == EventType::Delete,
                kv.key_str().unwrap().to_string(),
            ));
        }
    }
}

/// A fixed target for `record`.
fn target(rev: i64) -> tokio::sync::watch::Receiver<i64> {
    tokio::sync::watch::channel(rev).1
}

/// The expected stream: every acknowledged change in revision order.
fn history(all: Vec<Ops>) -> Ops {
    let mut by_rev: BTreeMap<i64, (bool, String)> = BTreeMap::new();
    for ops in all {
        for (rev, del, key) in ops {
            assert!(
                by_rev.insert(rev, (del, key)).is_none(),
                "two writes at {rev}"
            );
        }
    }
    by_rev.into_iter().map(|(r, (d, k))| (r, d, k)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_checker_with_a_slow_watcher() {
    let s = Server::start(&[]);
    let mut c = s.client().await;
    let start = c
        .put("chk-start", "", None)
        .await
        .unwrap()
        .header()
        .unwrap()
        .revision()
        + 1;
    // Three watchers; two read while the writers write, the first reads
    // nothing until they are done, so its queue fills and it must catch up.
    let (last_tx, last_rx) = tokio::sync::watch::channel(0i64);
    let mut readers = Vec::new();
    for i in 0..3 {
        let (w, stream) = c
            .watch("chk/", Some(WatchOptions::new().with_prefix()))
            .await
            .unwrap();
        let last = last_rx.clone();
        readers.push(tokio::spawn(async move {
            let _keep = w;
            record(stream, last, i == 0).await
        }));
    }
    // 4 KB values: far more than the stalled stream's queues and HTTP/2
    // windows hold, so the hub must turn it into a slow watcher.
    let writers: Vec<_> = (0..4)
        .map(|w| tokio::spawn(write_randomly(s.endpoint(), w, 1500, 4096)))
        .collect();
    let mut done = Vec::new();
    for w in writers {
        done.push(w.await.unwrap());
    }
    let want = history(done);
    let last = want.last().unwrap().0;
    assert!(want.first().unwrap().0 >= start);
    let (_, metrics) = common::http_get(s.port, "/metrics").unwrap();
    assert!(
        metrics.contains("etcd_debugging_mvcc_slow_watcher_total 1"),
        "the stalled watcher should be a slow watcher now"
    );
    last_tx.send(last).unwrap();
    for (i, r) in readers.into_iter().enumerate() {
        let got = r.await.unwrap();
        assert_eq!(got.len(), want.len(), "watcher {i}: count");
        assert!(got == want, "watcher {i}: stream differs from the history");
    }
    // A watch replayed from history sees the same stream.
    let (_w, replay) = c
        .watch(
            "chk/",
            Some(WatchOptions::new().with_prefix().with_start_revision(start)),
        )
        .await
        .unwrap();
    assert!(record(replay, target(last), false).await == want);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watches_on_every_member_survive_a_leader_change() {
    let mut cluster = Cluster::start(
        3,
        &["--heartbeat-interval", "50", "--election-timeout", "500"],
    );
    let eps = cluster.endpoints();
    let leader = cluster.leader().await;
    let follower = (leader + 1) % 3;
    let mut wc = Client::connect([eps[follower].clone()], None)
        .await
        .unwrap();
    let (_w, stream) = wc
        .watch("chk/", Some(WatchOptions::new().with_prefix()))
        .await
        .unwrap();
    let first = write_randomly(eps[leader].clone(), 0, 200, 16).await;
    cluster.members[leader].kill9();
    let survivor = (0..3).find(|i| *i != leader && *i != follower).unwrap();
    // Writes through the other survivor once a new leader serves.
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut c = Client::connect([eps[survivor].clone()], None)
        .await
        .unwrap();
    while c.put("chk-barrier", "", None).await.is_err() {
        assert!(Instant::now() < deadline, "no new leader");
    }
    let second = write_randomly(eps[survivor].clone(), 1, 200, 16).await;
    let want = history(vec![first, second]);
    let last = want.last().unwrap().0;
    let got = record(stream, target(last), false).await;
    assert!(got == want, "the follower's watch differs from the history");
}

/// Story: a follower cut off from its peers learned, when the cut healed,
/// several writes to one key and a compaction past them in one go. It
/// applied them together and told its watch hub only afterwards, when the
/// compaction had already removed the overwritten versions: a synced
/// watcher on it skipped them, without being canceled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_catching_up_past_a_compaction_sends_every_event() {
    let mut cluster = Cluster::start_proxied(
        3,
        &["--heartbeat-interval", "50", "--election-timeout", "500"],
    )
    .await;
    let eps = cluster.endpoints();
    let leader = cluster.leader().await;
    let follower = (leader + 1) % 3;
    let mut lc = Client::connect([eps[leader].clone()], None).await.unwrap();
    let mut fc = Client::connect([eps[follower].clone()], None)
        .await
        .unwrap();
    let first = lc.put("cw", "0", None).await.unwrap();
    let first = first.header().unwrap().revision();
    let (_w, mut stream) = fc
        .watch("cw", Some(WatchOptions::new().with_start_revision(first)))
        .await
        .unwrap();
    // The follower has applied `first` once its watch delivers it.
    assert_eq!(events(&mut stream, 1).await[0].3, first);
    cluster.cut(follower);
    let mut last = first;
    for i in 1..=5 {
        let r = lc.put("cw", i.to_string(), None).await.unwrap();
        last = r.header().unwrap().revision();
    }
    lc.compact(last, None).await.unwrap();
    cluster.heal();
    let got: Vec<(String, i64)> = events(&mut stream, 5)
        .await
        .into_iter()
        .map(|(_, _, value, rev, _)| (value, rev))
        .collect();
    let want: Vec<(String, i64)> = (1..=5).map(|i| (i.to_string(), first + i)).collect();
    assert_eq!(got, want);
}
