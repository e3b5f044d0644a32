//! Lock and Election through the etcd-client crate against the real
//! binary: mutual exclusion, hand-over on unlock and on lease expiry,
//! campaign / proclaim / observe / resign, and etcd's errors.

mod common;

use std::time::Duration;

use common::{status_of, Server};
use etcd_client::{Client, LeaderKey, LockOptions, ProclaimOptions, ResignOptions};

async fn within<T>(d: Duration, f: impl std::future::Future<Output = T>) -> Option<T> {
    tokio::time::timeout(d, f).await.ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lock_excludes_until_unlock_or_lease_expiry() {
    let s = Server::start(&[]);
    let mut c = s.client().await;
    let first = c.lease_grant(60, None).await.unwrap().id();
    let second = c.lease_grant(60, None).await.unwrap().id();
    let third = c.lease_grant(2, None).await.unwrap().id();

    let held = c
        .lock("job", Some(LockOptions::new().with_lease(first)))
        .await
        .unwrap();
    assert_eq!(held.key(), format!("job/{first:x}").as_bytes());

    // A second locker waits while the first holds the lock.
    let mut c2 = s.client().await;
    let waiter = tokio::spawn(async move {
        c2.lock("job", Some(LockOptions::new().with_lease(second)))
            .await
            .map(|r| r.key().to_vec())
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!waiter.is_finished(), "the second locker got a held lock");
    c.unlock(held.key()).await.unwrap();
    let got = within(Duration::from_secs(5), waiter)
        .await
        .expect("the second locker was not woken by the unlock")
        .unwrap()
        .unwrap();
    assert_eq!(got, format!("job/{second:x}").into_bytes());

    // A third waits on the second, whose lease is revoked: it gets the lock.
    let mut c3 = s.client().await;
    let waiter = tokio::spawn(async move {
        c3.lock("job", Some(LockOptions::new().with_lease(third)))
            .await
            .map(|r| r.key().to_vec())
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!waiter.is_finished());
    c.lease_revoke(second).await.unwrap();
    within(Duration::from_secs(5), waiter)
        .await
        .expect("the third locker was not woken by the revoke")
        .unwrap()
        .unwrap();

    // The third's lease (2 s) expires without keep-alives: a fourth gets it.
    let fourth = c.lease_grant(60, None).await.unwrap().id();
    let got = within(
        Duration::from_secs(10),
        c.lock("job", Some(LockOptions::new().with_lease(fourth))),
    )
    .await
    .expect("the lock did not pass on when the holder's lease expired")
    .unwrap();
    assert_eq!(got.key(), format!("job/{fourth:x}").as_bytes());

    // etcd's lock server returns errors as Unknown.
    let e = status_of(
        c.lock("job", Some(LockOptions::new().with_lease(0x777)))
            .await
            .unwrap_err(),
    );
    assert_eq!(
        e,
        (
            tonic::Code::Unknown,
            "etcdserver: requested lease not found".into()
        )
    );
    // Unlocking a key that is not there is fine.
    c.unlock("job/none").await.unwrap();
}

/// The lease id a lock or election key ends with (`<name>/<lease in hex>`).
fn lease_of_key(key: &[u8]) -> i64 {
    let s = std::str::from_utf8(key).unwrap();
    i64::from_str_radix(s.rsplit('/').next().unwrap(), 16).unwrap()
}

/// As etcd's lock and election servers (they open a client session for
/// the request): without a lease, each caller gets a lease of its own with
/// the session's 60 s TTL, not kept alive. So two callers never share a
/// key (and so the lock), and the key ends with its lease.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lock_and_campaign_without_a_lease_get_their_own() {
    let s = Server::start(&[]);
    let mut c = s.client().await;
    let held = c.lock("solo", None).await.unwrap();
    let lease = lease_of_key(held.key());
    assert_ne!(lease, 0, "the lock key has no lease of its own");
    let ttl = c.lease_time_to_live(lease, None).await.unwrap();
    assert_eq!(ttl.granted_ttl(), 60);
    assert!(ttl.ttl() > 0 && ttl.ttl() <= 60, "ttl {}", ttl.ttl());

    // A second caller without a lease waits for the first.
    let mut c2 = s.client().await;
    let waiter = tokio::spawn(async move { c2.lock("solo", None).await.map(|r| r.key().to_vec()) });
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(
        !waiter.is_finished(),
        "a second caller without a lease got a held lock"
    );
    c.unlock(held.key()).await.unwrap();
    let got = within(Duration::from_secs(5), waiter)
        .await
        .expect("the second caller was not woken by the unlock")
        .unwrap()
        .unwrap();
    assert_ne!(got, held.key().to_vec());
    assert_ne!(lease_of_key(&got), 0);

    let won = c.campaign("chair", "v", 0).await.unwrap();
    let leader = won.leader().unwrap();
    assert_ne!(leader.lease(), 0, "the campaign has no lease of its own");
    assert_eq!(lease_of_key(leader.key()), leader.lease());
    let ttl = c.lease_time_to_live(leader.lease(), None).await.unwrap();
    assert_eq!(ttl.granted_ttl(), 60);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn campaign_observe_proclaim_and_resign() {
    let s = Server::start(&[]);
    let mut c = s.client().await;
    let e = status_of(c.leader("pick").await.unwrap_err());
    assert_eq!(e, (tonic::Code::Unknown, "election: no leader".into()));

    let alice = c.lease_grant(60, None).await.unwrap().id();
    let bob = c.lease_grant(60, None).await.unwrap().id();
    let won = c.campaign("pick", "alice", alice).await.unwrap();
    let alice_key: LeaderKey = won.leader().unwrap().clone();
    assert_eq!(alice_key.key(), format!("pick/{alice:x}").as_bytes());

    let mut observer = s.client().await.observe("pick").await.unwrap();
    let first = within(Duration::from_secs(5), observer.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(first.kv().unwrap().value_str().unwrap(), "alice");

    // Bob campaigns and waits behind alice.
    let mut c2 = s.client().await;
    let bob_campaign = tokio::spawn(async move { c2.campaign("pick", "bob", bob).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!bob_campaign.is_finished());

    // Alice proclaims a new value: observed.
    c.proclaim(
        "alice-2",
        Some(ProclaimOptions::new().with_leader(alice_key.clone())),
    )
    .await
    .unwrap();
    let r = within(Duration::from_secs(5), observer.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(r.kv().unwrap().value_str().unwrap(), "alice-2");
    assert_eq!(
        c.leader("pick")
            .await
            .unwrap()
            .kv()
            .unwrap()
            .value_str()
            .unwrap(),
        "alice-2"
    );

    // Alice resigns: bob wins, and the observer sees him.
    c.resign(Some(ResignOptions::new().with_leader(alice_key.clone())))
        .await
        .unwrap();
    let bob_won = within(Duration::from_secs(5), bob_campaign)
        .await
        .expect("bob did not win after alice resigned")
        .unwrap()
        .unwrap();
    assert_eq!(
        bob_won.leader().unwrap().key(),
        format!("pick/{bob:x}").as_bytes()
    );
    let r = within(Duration::from_secs(5), observer.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(r.kv().unwrap().value_str().unwrap(), "bob");

    // Alice is no leader any more.
    let e = status_of(
        c.proclaim("x", Some(ProclaimOptions::new().with_leader(alice_key)))
            .await
            .unwrap_err(),
    );
    assert_eq!(e, (tonic::Code::Unknown, "election: not leader".into()));
    let e = status_of(
        Client::campaign(&mut c, "other", "v", 0x777)
            .await
            .unwrap_err(),
    );
    assert_eq!(e.1, "etcdserver: requested lease not found");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lock_and_election_across_members() {
    let mut cluster = common::Cluster::start(
        3,
        &["--heartbeat-interval", "50", "--election-timeout", "500"],
    );
    let eps = cluster.endpoints();
    let connect = |i: usize| {
        let ep = eps[i].clone();
        async move { Client::connect([ep], None).await.unwrap() }
    };
    let leader = cluster.leader().await;
    let (a, b) = ((leader + 1) % 3, (leader + 2) % 3);
    let mut ca = connect(a).await;
    let mut cb = connect(b).await;
    let la = ca.lease_grant(60, None).await.unwrap().id();
    let lb = cb.lease_grant(60, None).await.unwrap().id();
    // Held through one follower, waited for through the other.
    let held = ca
        .lock("shared", Some(LockOptions::new().with_lease(la)))
        .await
        .unwrap();
    let waiter = tokio::spawn(async move {
        cb.lock("shared", Some(LockOptions::new().with_lease(lb)))
            .await
            .map(|r| r.key().to_vec())
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!waiter.is_finished());
    // Released through the leader.
    connect(leader).await.unlock(held.key()).await.unwrap();
    let got = within(Duration::from_secs(5), waiter)
        .await
        .expect("the waiter on another member was not woken")
        .unwrap()
        .unwrap();
    assert_eq!(got, format!("shared/{lb:x}").into_bytes());

    // An observer on one follower sees a campaign won through the other,
    // and keeps observing after the leader of the cluster is killed.
    let mut observer = connect(b).await.observe("duty").await.unwrap();
    let won = ca.campaign("duty", "on-a", la).await.unwrap();
    let r = within(Duration::from_secs(5), observer.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(r.kv().unwrap().value_str().unwrap(), "on-a");
    cluster.members[leader].kill9();
    let key = won.leader().unwrap().clone();
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while ca
        .proclaim(
            "still-a",
            Some(ProclaimOptions::new().with_leader(key.clone())),
        )
        .await
        .is_err()
    {
        assert!(std::time::Instant::now() < deadline, "no new raft leader");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let r = within(Duration::from_secs(10), observer.message())
        .await
        .expect("the observer saw no proclamation after the leader change")
        .unwrap()
        .unwrap();
    assert_eq!(r.kv().unwrap().value_str().unwrap(), "still-a");
}
