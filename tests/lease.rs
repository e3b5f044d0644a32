//! Leases through the etcd-client crate against the real binary: grant
//! rules and errors, attached keys, revoke, expiry (and its DELETE events),
//! keep-alive, persistence across kill -9, and the remaining TTL across a
//! leader change.

mod common;

use std::time::{Duration, Instant};

use common::{status_of, Cluster, Server};
use etcd_client::{
    Client, EventType, GetOptions, LeaseGrantOptions, LeaseTimeToLiveOptions, PutOptions,
    WatchOptions,
};

async fn keys(c: &mut Client, prefix: &str) -> Vec<String> {
    c.get(
        prefix,
        Some(GetOptions::new().with_prefix().with_keys_only()),
    )
    .await
    .unwrap()
    .kvs()
    .iter()
    .map(|kv| kv.key_str().unwrap().to_string())
    .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grant_attach_revoke_and_errors() {
    let s = Server::start(&[]);
    let mut c = s.client().await;

    // etcd's minimum TTL: 1.5 election timeouts (1 s by default), rounded up.
    let g = c.lease_grant(1, None).await.unwrap();
    assert_eq!(g.ttl(), 2);
    assert!(g.id() > 0);
    let chosen = c
        .lease_grant(600, Some(LeaseGrantOptions::new().with_id(0x1234)))
        .await
        .unwrap();
    assert_eq!((chosen.id(), chosen.ttl()), (0x1234, 600));
    let e = status_of(
        c.lease_grant(600, Some(LeaseGrantOptions::new().with_id(0x1234)))
            .await
            .unwrap_err(),
    );
    assert_eq!(
        e,
        (
            tonic::Code::FailedPrecondition,
            "etcdserver: lease already exists".into()
        )
    );
    let e = status_of(c.lease_grant(9_000_000_001, None).await.unwrap_err());
    assert_eq!(
        e,
        (
            tonic::Code::OutOfRange,
            "etcdserver: too large lease TTL".into()
        )
    );

    // Keys attached; an unknown lease is refused.
    let with = |id| Some(PutOptions::new().with_lease(id));
    c.put("l/a", "1", with(0x1234)).await.unwrap();
    c.put("l/b", "1", with(0x1234)).await.unwrap();
    c.put("l/c", "1", None).await.unwrap();
    let e = status_of(c.put("l/x", "1", with(0x999)).await.unwrap_err());
    assert_eq!(
        e,
        (
            tonic::Code::NotFound,
            "etcdserver: requested lease not found".into()
        )
    );
    // ignore_lease keeps the key's lease.
    c.put("l/b", "2", Some(PutOptions::new().with_ignore_lease()))
        .await
        .unwrap();
    let t = c
        .lease_time_to_live(0x1234, Some(LeaseTimeToLiveOptions::new().with_keys()))
        .await
        .unwrap();
    assert_eq!(t.granted_ttl(), 600);
    assert!(t.ttl() > 590 && t.ttl() <= 600, "{}", t.ttl());
    let mut attached: Vec<&[u8]> = t.keys().iter().map(|k| k.as_slice()).collect();
    attached.sort();
    assert_eq!(attached, [b"l/a".as_slice(), b"l/b"]);
    let unknown = c.lease_time_to_live(0x999, None).await.unwrap();
    assert_eq!(unknown.ttl(), -1);
    let listed = common::lease_ids(&mut c).await;
    let mut want = vec![g.id(), 0x1234];
    want.sort();
    assert_eq!(listed, want);

    // Revoke: every attached key goes in one revision, one DELETE each.
    let (_w, mut stream) = c
        .watch("l/", Some(WatchOptions::new().with_prefix()))
        .await
        .unwrap();
    let r = c.lease_revoke(0x1234).await.unwrap();
    let rev = r.header().unwrap().revision();
    let w = tokio::time::timeout(Duration::from_secs(5), stream.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let events: Vec<(EventType, String, i64)> = w
        .events()
        .iter()
        .map(|e| {
            let kv = e.kv().unwrap();
            (
                e.event_type(),
                kv.key_str().unwrap().to_string(),
                kv.mod_revision(),
            )
        })
        .collect();
    assert_eq!(
        events,
        [
            (EventType::Delete, "l/a".to_string(), rev),
            (EventType::Delete, "l/b".to_string(), rev)
        ]
    );
    assert_eq!(keys(&mut c, "l/").await, ["l/c"]);
    let e = status_of(c.lease_revoke(0x1234).await.unwrap_err());
    assert_eq!(e.0, tonic::Code::NotFound);
    assert_eq!(e.1, "etcdserver: requested lease not found");

    let (_, metrics) = common::http_get(s.port, "/metrics").unwrap();
    assert!(metrics.contains("etcd_debugging_lease_granted_total 2"));
    assert!(metrics.contains("etcd_debugging_lease_revoked_total 1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expiry_deletes_keys_and_keep_alive_holds_them() {
    let s = Server::start(&[]);
    let mut c = s.client().await;
    let short = c.lease_grant(2, None).await.unwrap().id();
    let kept = c.lease_grant(2, None).await.unwrap().id();
    c.put("e/short", "1", Some(PutOptions::new().with_lease(short)))
        .await
        .unwrap();
    c.put("e/kept", "1", Some(PutOptions::new().with_lease(kept)))
        .await
        .unwrap();
    let (_w, mut stream) = c.watch("e/short", None).await.unwrap();
    let (mut keeper, mut responses) = c.lease_keep_alive(kept).await.unwrap();
    let started = Instant::now();
    // Keep one alive for 4 s (twice its TTL); the other expires meanwhile.
    while started.elapsed() < Duration::from_secs(4) {
        keeper.keep_alive().await.unwrap();
        let r = responses.message().await.unwrap().unwrap();
        assert_eq!((r.id(), r.ttl()), (kept, 2));
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let w = tokio::time::timeout(Duration::from_secs(5), stream.message())
        .await
        .expect("the expiry's DELETE event")
        .unwrap()
        .unwrap();
    assert_eq!(w.events()[0].event_type(), EventType::Delete);
    assert_eq!(keys(&mut c, "e/").await, ["e/kept"]);
    let gone = c.lease_time_to_live(short, None).await.unwrap();
    assert_eq!(gone.ttl(), -1);
    // An expired lease answers keep-alives with TTL 0, which the client
    // reports as "lease not found".
    let e = c.lease_keep_alive(short).await.unwrap_err();
    assert!(e.to_string().contains("lease not found"), "{e}");
    drop(keeper);
    // Without keep-alives the other one expires too, within its TTL plus
    // the expiry check's granularity.
    let deadline = Instant::now() + Duration::from_secs(6);
    while !keys(&mut c, "e/").await.is_empty() {
        assert!(Instant::now() < deadline, "the lease did not expire");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (_, metrics) = common::http_get(s.port, "/metrics").unwrap();
    let renewed: f64 = metrics
        .lines()
        .find(|l| l.starts_with("etcd_debugging_lease_renewed_total "))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap();
    assert!(renewed >= 8.0, "{renewed}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_survive_kill9() {
    let mut s = Server::start(&["--snapshot-count", "50"]);
    let mut c = s.client().await;
    let id = c.lease_grant(600, None).await.unwrap().id();
    c.put("p/a", "1", Some(PutOptions::new().with_lease(id)))
        .await
        .unwrap();
    // Enough entries for a snapshot, so both the snapshot and the WAL
    // carry lease state.
    for i in 0..80 {
        c.put(format!("p/x{i}"), "v", None).await.unwrap();
    }
    let other = c.lease_grant(600, None).await.unwrap().id();
    c.put("p/b", "1", Some(PutOptions::new().with_lease(other)))
        .await
        .unwrap();
    s.restart();
    let mut c = s.client().await;
    for (lease, key) in [(id, "p/a"), (other, "p/b")] {
        let t = c
            .lease_time_to_live(lease, Some(LeaseTimeToLiveOptions::new().with_keys()))
            .await
            .unwrap();
        assert_eq!(t.granted_ttl(), 600);
        assert!(t.ttl() > 0);
        assert_eq!(t.keys(), [key.as_bytes().to_vec()]);
    }
    c.lease_revoke(id).await.unwrap();
    assert!(!keys(&mut c, "p/").await.contains(&"p/a".to_string()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remaining_ttl_survives_a_leader_change() {
    let mut cluster = Cluster::start(
        3,
        &[
            "--heartbeat-interval",
            "50",
            "--election-timeout",
            "500",
            "--experimental-lease-checkpoint-interval",
            "500ms",
        ],
    );
    let eps = cluster.endpoints();
    let leader = cluster.leader().await;
    let follower = (leader + 1) % 3;
    let mut c = Client::connect([eps[follower].clone()], None)
        .await
        .unwrap();
    // Granted and kept alive through a follower.
    let id = c.lease_grant(30, None).await.unwrap().id();
    let (mut keeper, mut responses) = c.lease_keep_alive(id).await.unwrap();
    keeper.keep_alive().await.unwrap();
    assert_eq!(responses.message().await.unwrap().unwrap().ttl(), 30);
    c.put("t/k", "1", Some(PutOptions::new().with_lease(id)))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(4)).await;
    let before = c.lease_time_to_live(id, None).await.unwrap().ttl();
    assert!(before <= 26, "{before}");
    cluster.members[leader].kill9();
    let deadline = Instant::now() + Duration::from_secs(15);
    let after = loop {
        if let Ok(t) = c.lease_time_to_live(id, None).await {
            break t.ttl();
        }
        assert!(Instant::now() < deadline, "no new leader answered");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    // Not reset to 30: the new leader started from the last checkpoint
    // (taken at most 0.5 s before, in whole seconds rounded up).
    assert!(
        after <= before + 1 && after < 29 && after > 0,
        "before {before}, after {after}"
    );
    assert_eq!(keys(&mut c, "t/").await, ["t/k"]);
}
