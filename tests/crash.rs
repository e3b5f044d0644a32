//! kill -9 under concurrent write load, then restart: every acknowledged
//! put must be there with the revision it was acknowledged at.

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{segments, Server};

const WRITERS: usize = 16;

/// Longest a load phase runs, whatever its targets.
const LOAD_LIMIT: Duration = Duration::from_secs(60);

/// Runs `WRITERS` concurrent writers for at least `load_for` and until
/// `min_acked` puts are acknowledged, kills the server with SIGKILL while
/// they run, restarts it and checks every acknowledged put.
type Acked = Arc<Mutex<HashMap<String, (i64, Vec<u8>)>>>;

async fn crash_under_load(
    s: &mut Server,
    load_for: Duration,
    min_acked: usize,
    value_bytes: usize,
) -> usize {
    let acked: Acked = Arc::default();
    let mut tasks = Vec::new();
    for w in 0..WRITERS {
        let mut c = s.client().await;
        let acked = acked.clone();
        tasks.push(tokio::spawn(async move {
            // Bounded: stops at the first failure (the kill) or after 100k puts.
            for i in 0..100_000u64 {
                let key = format!("w{w}/k{i}");
                let value = format!("{w}-{i}-").into_bytes().repeat(value_bytes / 6 + 1);
                match c.put(key.clone(), value.clone(), None).await {
                    Ok(r) => {
                        let rev = r.header().unwrap().revision();
                        acked.lock().unwrap().insert(key, (rev, value));
                    }
                    Err(_) => return,
                }
            }
        }));
    }
    let started = Instant::now();
    while started.elapsed() < LOAD_LIMIT
        && (started.elapsed() < load_for || acked.lock().unwrap().len() < min_acked)
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    s.kill9();
    for t in tasks {
        tokio::time::timeout(Duration::from_secs(30), t)
            .await
            .expect("writer stops")
            .unwrap();
    }
    s.restart();
    let mut c = s.client().await;
    let acked = acked.lock().unwrap().clone();
    assert!(!acked.is_empty());
    let mut revs = std::collections::HashSet::new();
    for (key, (rev, value)) in &acked {
        let r = c.get(key.as_str(), None).await.unwrap();
        assert_eq!(r.kvs().len(), 1, "acknowledged put of {key} lost");
        assert_eq!(r.kvs()[0].value(), &value[..], "{key}");
        assert_eq!(r.kvs()[0].mod_revision(), *rev, "{key}");
        assert!(revs.insert(*rev), "two puts acknowledged at revision {rev}");
    }
    // The store continues after the last acknowledged revision.
    let max = acked.values().map(|(r, _)| *r).max().unwrap();
    let next = c
        .put("after", "crash", None)
        .await
        .unwrap()
        .header()
        .unwrap()
        .revision();
    assert!(next > max);
    acked.len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn acknowledged_puts_survive_sigkill() {
    let mut s = Server::start(&[]);
    let n = crash_under_load(&mut s, Duration::from_millis(1500), 100, 64).await;
    eprintln!("{n} acknowledged puts verified");
    // And a second crash on top of the recovered log.
    let m = crash_under_load(&mut s, Duration::from_millis(800), 100, 64).await;
    eprintln!("{m} more verified after a second crash");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn acknowledged_puts_survive_sigkill_with_snapshots() {
    // Snapshots every 200 entries, tiny WAL segments: restart goes through
    // snapshot + replay, and old segments are released along the way.
    let mut s = Server::start(&[
        "--snapshot-count",
        "200",
        "--experimental-snapshot-catchup-entries",
        "50",
        "--max-request-bytes",
        "65536",
        "--wal-segment-bytes",
        "2359296",
    ]);
    let start = Instant::now();
    let n = crash_under_load(&mut s, Duration::from_millis(500), 3000, 2048).await;
    eprintln!(
        "{n} acknowledged 2 KiB puts verified in {:?}",
        start.elapsed()
    );
    let snaps: Vec<_> = std::fs::read_dir(s.dir.join("member/snap"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".snap"))
        .collect();
    assert!(!snaps.is_empty(), "snapshots were taken");
    assert!(snaps.len() <= 2, "old snapshots are pruned: {snaps:?}");
    // ~2 KiB per put fills a 2.25 MiB segment every ~1000 puts; segments
    // covered by a snapshot are released, so only the newest few remain.
    let segs = segments(&s.wal_dir());
    let head = segs
        .first()
        .unwrap()
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    assert_ne!(
        head, "0000000000000000.wal",
        "the first segment was released"
    );
    assert!(segs.len() <= 4, "{} segments remain: {segs:?}", segs.len());
}

/// Story: snapshots came only every `--snapshot-count` entries, but an
/// entry is a batch of up to 4,096 requests, so the log held in memory
/// (and replayed at start) could grow to many GiB before the first one.
/// A snapshot now also comes once the applied log since the last one holds
/// `--snapshot-log-bytes`.
#[tokio::test]
async fn a_large_log_is_snapshotted_before_the_entry_count() {
    let s = Server::start(&["--snapshot-log-bytes", "4000000"]);
    let mut c = s.client().await;
    let value = vec![b'l'; 64 << 10];
    for i in 0..100 {
        c.put(format!("log/{i}"), value.clone(), None)
            .await
            .unwrap();
    }
    let snap_dir = s.dir.join("member/snap");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let snaps = std::fs::read_dir(&snap_dir)
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .ends_with(".snap")
            })
            .count();
        if snaps > 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no snapshot after 6.4 MB of log:\n{}",
            s.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(s.logs().contains("the log since the last one is large"));
}

/// Power cuts acted out at each step of the WAL writer's flush, segment
/// switch and segment release, and of a snapshot's save
/// (`KEEL_TEST_POWER_LOSS`: the member puts back what the disk held before
/// every write no completed fsync covers, then aborts). kill -9 cannot show a missing fdatasync; this can. After
/// each cut the member starts, and every acknowledged put is there.
#[tokio::test]
async fn acknowledged_puts_survive_a_power_cut_at_each_storage_step() {
    // Small segments (3 MiB; 64 KiB requests allow them) so a few thousand
    // puts switch segments, and snapshots often enough to release them.
    let args = [
        "--cores",
        "1",
        "--max-request-bytes",
        "65536",
        "--wal-segment-bytes",
        "3145728",
        "--snapshot-count",
        "200",
        "--experimental-snapshot-catchup-entries",
        "20",
    ];
    for (step, nth) in [
        ("flush-written", 40),
        ("flush-synced", 40),
        ("rotated", 1),
        ("releasing", 1),
        ("snapshot-synced", 1),
        ("snapshot-renamed", 2),
    ] {
        let mut s = Server::new(args.iter().map(|a| a.to_string()).collect());
        s.env
            .push(("KEEL_TEST_POWER_LOSS".to_string(), format!("{step}:{nth}")));
        s.spawn();
        s.wait_healthy();
        let mut c = s.client().await;
        let value = "v".repeat(2000);
        let mut acked = Vec::new();
        // Bounded: 6,000 puts of 2 KB fill four segments.
        for i in 0..6000 {
            match c
                .put(format!("k{i:05}"), format!("{i}-{value}"), None)
                .await
            {
                Ok(_) => acked.push(i),
                Err(_) => break,
            }
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while s.is_running() {
            assert!(Instant::now() < deadline, "{step}: no power cut came");
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(
            s.logs().contains("power cut acted out at"),
            "{step}: {}",
            s.logs()
        );
        s.env.clear();
        s.spawn();
        s.wait_healthy();
        let mut c = s.client().await;
        for &i in &acked {
            let r = c.get(format!("k{i:05}"), None).await.unwrap();
            let want = format!("{i}-{value}");
            assert_eq!(
                r.kvs().first().map(|kv| kv.value() == want.as_bytes()),
                Some(true),
                "{step}: acknowledged put {i} of {} is gone or changed",
                acked.len()
            );
        }
    }
}
