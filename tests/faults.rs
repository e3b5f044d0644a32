//! Regression tests for keel under faults: each opens with the story of the
//! bug it pins. 3-member clusters of real keel processes, observed through
//! the etcd-client crate; faults are kill -9, SIGSTOP and the peer proxy's
//! partitions. The robustness suite (tests/robustness.rs) checks whole
//! histories; these pin one mechanism each.

mod common;

use std::time::{Duration, Instant};

use common::{http_get, status_of, Cluster};
use etcd_client::{Client, GetOptions, PutOptions};

/// Fast elections keep failover tests short.
const FAST: &[&str] = &["--heartbeat-interval", "50", "--election-timeout", "500"];

async fn client(endpoint: &str) -> Client {
    Client::connect([endpoint.to_string()], None)
        .await
        .expect("connect")
}

/// A member's gauge or counter from /metrics.
fn metric(port: u16, name: &str) -> f64 {
    let (_, body) = http_get(port, "/metrics").expect("metrics");
    body.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in /metrics"))
}

/// Waits (bounded) until `cond` holds; panics with `what` otherwise.
async fn eventually(limit: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !cond() {
        assert!(Instant::now() < deadline, "not within {limit:?}: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The member id behind an endpoint.
async fn member_id(endpoint: &str) -> u64 {
    let s = client(endpoint).await.status().await.unwrap();
    s.header().unwrap().member_id()
}

/// Story: a leader killed and restarted before its followers' election
/// timers fired came back as leader of its old term (openraft 0.9 restores
/// a member holding its own committed vote as leader), with its commit index
/// learned again from zero. Its term's followers still accepted its
/// heartbeats, so its read-index rounds succeeded at the term's first entry
/// and linearizable reads returned values overwritten long before the crash
/// (seen: 42 stale reads in four 60 s runs). A restarted leader must come
/// back as a follower and lead again only through a new election.
///
/// A long election timeout makes the restart land well inside the window,
/// and readers ask the restarted member from the moment it serves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_leader_serves_no_stale_linearizable_read() {
    let slow = &["--heartbeat-interval", "100", "--election-timeout", "1500"];
    let mut cluster = Cluster::start(3, slow);
    let keys = 20;
    for round in 0..4 {
        let leader = cluster.leader().await;
        let ep = cluster.members[leader].endpoint();
        let c = client(&ep).await;
        // Many entries in this term, the last value of each key last.
        for pass in 0..10 {
            let mut puts = Vec::new();
            for i in 0..keys {
                let mut c = c.clone();
                let value = if pass == 9 {
                    format!("r{round}")
                } else {
                    format!("r{round}-{pass}")
                };
                puts.push(tokio::spawn(async move {
                    c.put(format!("s/{i}"), value, None).await.unwrap();
                }));
            }
            for p in puts {
                p.await.unwrap();
            }
        }
        cluster.members[leader].kill9();
        cluster.members[leader].spawn();
        // Read from the moment the restarted member answers at all.
        let deadline = Instant::now() + Duration::from_secs(30);
        let r = loop {
            assert!(
                Instant::now() < deadline,
                "the restarted leader never served"
            );
            let read = async {
                let mut c = Client::connect([ep.clone()], None).await?;
                c.get("s/", Some(GetOptions::new().with_prefix())).await
            };
            if let Ok(Ok(r)) = tokio::time::timeout(Duration::from_secs(2), read).await {
                break r;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        };
        let stale: Vec<String> = r
            .kvs()
            .iter()
            .filter(|kv| kv.value_str().unwrap() != format!("r{round}"))
            .map(|kv| format!("{}={}", kv.key_str().unwrap(), kv.value_str().unwrap()))
            .collect();
        assert!(
            r.kvs().len() == keys && stale.is_empty(),
            "round {round}: the restarted leader served {} keys, stale values at revision {}: {stale:?}",
            r.kvs().len(),
            r.header().unwrap().revision()
        );
    }
}

/// Story: a leader cut off from its peers kept saying it led
/// (`etcd_server_has_leader 1`, IS LEADER in `endpoint status`) and kept
/// answering keep-alives for as long as it was cut off, so a lease held
/// through it outlived its expiry on the majority side. A leader that has
/// not heard from a quorum within an election timeout must stop acting as
/// one (etcd's check-quorum).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_isolated_leader_stops_acting_as_leader() {
    let mut cluster = Cluster::start_proxied(3, FAST).await;
    let leader = cluster.leader().await;
    let port = cluster.members[leader].port;
    let ep = cluster.members[leader].endpoint();
    let mut c = client(&ep).await;
    let lease = c.lease_grant(5, None).await.unwrap().id();
    c.lease_keep_alive(lease).await.unwrap();
    assert_eq!(metric(port, "etcd_server_has_leader"), 1.0);

    cluster.cut(leader);
    let cut_at = Instant::now();
    eventually(
        Duration::from_secs(3),
        "has_leader 0 on the cut-off leader",
        || metric(port, "etcd_server_has_leader") == 0.0,
    )
    .await;
    // Within about an election timeout (plus the metrics' heartbeat tick).
    assert!(
        cut_at.elapsed() < Duration::from_millis(1500),
        "{:?}",
        cut_at.elapsed()
    );
    assert_eq!(metric(port, "etcd_server_is_leader"), 0.0);
    let s = c.status().await.unwrap();
    assert_eq!(s.leader(), 0);
    assert_eq!(s.0.errors, ["etcdserver: no leader"], "{s:?}");

    // Keep-alives fail instead of renewing the lease (etcd-client waits
    // for the first answer when it opens the stream).
    let renewed = tokio::time::timeout(Duration::from_secs(10), async {
        let (mut keeper, mut responses) = c.lease_keep_alive(lease).await?;
        keeper.keep_alive().await?;
        responses.message().await
    })
    .await;
    match renewed {
        Ok(Ok(r)) => panic!("a cut-off leader renewed a lease: {r:?}"),
        Ok(Err(e)) => {
            let (code, msg) = status_of(e);
            assert_eq!(
                (code, msg.as_str()),
                (tonic::Code::Unavailable, "etcdserver: no leader")
            );
        }
        Err(_) => panic!("keep-alive neither renewed nor failed"),
    }

    // Writes and linearizable reads there get `no leader` at once, as from
    // etcd's leader that stepped down: clients go elsewhere.
    let no_leader = (
        tonic::Code::Unavailable,
        "etcdserver: no leader".to_string(),
    );
    let put = tokio::time::timeout(Duration::from_secs(2), c.put("iso", "x", None))
        .await
        .expect("a write through the cut-off leader hung");
    assert_eq!(status_of(put.unwrap_err()), no_leader);
    let get = tokio::time::timeout(Duration::from_secs(2), c.get("iso", None))
        .await
        .expect("a read through the cut-off leader hung");
    assert_eq!(status_of(get.unwrap_err()), no_leader);

    // After healing, it follows the new leader and the write never happened.
    cluster.heal();
    let mut other = client(&cluster.members[(leader + 1) % 3].endpoint()).await;
    eventually(
        Duration::from_secs(10),
        "has_leader 1 again after healing",
        || metric(port, "etcd_server_has_leader") == 1.0,
    )
    .await;
    let r = other.get("iso", None).await.unwrap();
    assert!(r.kvs().is_empty() || r.kvs()[0].value_str().unwrap() == "x");
}

/// Story: a client's write that waited in a leaderless member's queue was
/// kept after the client gave up, then forwarded to the next leader and
/// applied once the member rejoined, after (and over) the same client's
/// next write. A proposal whose client has gone is dropped before it is
/// proposed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_given_up_on_a_leaderless_member_is_never_applied() {
    let mut cluster = Cluster::start_proxied(3, FAST).await;
    let leader = cluster.leader().await;
    let alone = (leader + 1) % 3;
    let majority = (leader + 2) % 3;
    let port = cluster.members[alone].port;
    cluster.cut(alone);
    // It campaigns and knows no leader.
    eventually(
        Duration::from_secs(5),
        "the cut-off follower has no leader",
        || metric(port, "etcd_server_has_leader") == 0.0,
    )
    .await;
    // Without a leader: not healthy and not ready, but alive, and healthy
    // for a local read (etcd's /health?serializable=true).
    let health = |path: &str| common::http_get(port, path).unwrap();
    assert_eq!(health("/health").0, 503);
    assert_eq!(health("/health?serializable=true").0, 200);
    assert_eq!(health("/livez"), (200, "ok\n".to_string()));
    // etcd 3.6's answer: every check's line, the failed one with its reason.
    let (code, body) = health("/readyz");
    assert_eq!(code, 503, "{body}");
    assert!(
        body.starts_with(
            "[+]data_corruption ok\n[+]serializable_read ok\n[-]linearizable_read failed: etcdserver: "
        ) && body.ends_with("\n[+]non_learner ok\n\n"),
        "{body}"
    );
    assert_eq!(
        health("/readyz?exclude=linearizable_read"),
        (200, "ok\n".to_string())
    );
    assert_eq!(health("/readyz/serializable_read").0, 200);
    assert_eq!(health("/readyz/linearizable_read").0, 503);
    let mut c = client(&cluster.members[alone].endpoint()).await;
    let given_up =
        tokio::time::timeout(Duration::from_millis(500), c.put("across", "stale", None)).await;
    assert!(given_up.is_err() || given_up.unwrap().is_err());
    let mut m = client(&cluster.members[majority].endpoint()).await;
    let fresh = m.put("across", "fresh", None).await.unwrap();
    let fresh_rev = fresh.header().unwrap().revision();
    cluster.heal();
    eventually(Duration::from_secs(10), "the follower rejoins", || {
        metric(port, "etcd_server_has_leader") == 1.0
    })
    .await;
    // Time for anything it still held to be proposed.
    tokio::time::sleep(Duration::from_secs(2)).await;
    for ep in cluster.endpoints() {
        let r = client(&ep).await.get("across", None).await.unwrap();
        let kv = &r.kvs()[0];
        assert_eq!(
            (kv.value_str().unwrap(), kv.mod_revision()),
            ("fresh", fresh_rev),
            "the abandoned write was applied at {ep}"
        );
    }
    let _ = cluster.leader().await;
}

/// Story: a leader cut off from its peers decided by its own clock that a
/// lease had expired (its keep-alives now went to the new leader), and its
/// revoke, queued and re-proposed every second, reached the new leader
/// after the partition healed and deleted the lease's keys although the
/// lease had been kept alive all along. A leader's decision is stamped with
/// its term and changes nothing when applied under another.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deposed_leader_does_not_revoke_a_lease_kept_alive_elsewhere() {
    let mut cluster = Cluster::start_proxied(3, FAST).await;
    let leader = cluster.leader().await;
    let follower = (leader + 1) % 3;
    let mut f = client(&cluster.members[follower].endpoint()).await;
    let lease = f.lease_grant(2, None).await.unwrap().id();
    f.put("held", "v", Some(PutOptions::new().with_lease(lease)))
        .await
        .unwrap();
    cluster.cut(leader);
    // Keep the lease alive through the majority for well past the time the
    // old leader's clock says it expired, and past healing.
    let keep_until = Instant::now() + Duration::from_secs(9);
    let heal_at = Instant::now() + Duration::from_secs(5);
    let mut healed = false;
    while Instant::now() < keep_until {
        if !healed && Instant::now() >= heal_at {
            cluster.heal();
            healed = true;
        }
        if let Ok((mut k, mut s)) = f.lease_keep_alive(lease).await {
            let _ = k.keep_alive().await;
            let _ = tokio::time::timeout(Duration::from_millis(400), s.message()).await;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let r = f.get("held", None).await.unwrap();
    assert_eq!(r.kvs().len(), 1, "the lease kept alive was revoked");
    let ttl = f.lease_time_to_live(lease, None).await.unwrap();
    assert!(ttl.ttl() > 0, "{ttl:?}");
}

/// Story: with the leader frozen (SIGSTOP: its kernel still accepts
/// connections), writes through the followers stopped for 6 s, the request
/// timeout: they queued behind batches forwarded to the frozen leader,
/// although the followers elected a new leader after about two election
/// timeouts. A forwarded batch lives only as long as the leader's reign.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_resume_soon_after_the_leader_freezes() {
    let mut cluster = Cluster::start(3, FAST);
    let leader = cluster.leader().await;
    let follower = (leader + 1) % 3;
    let mut f = client(&cluster.members[follower].endpoint()).await;
    f.put("frozen", "before", None).await.unwrap();
    cluster.members[leader].pause();
    let paused_at = Instant::now();
    let mut writers = Vec::new();
    for w in 0..4 {
        let ep = cluster.members[follower].endpoint();
        writers.push(tokio::spawn(async move {
            let mut c = client(&ep).await;
            let deadline = Instant::now() + Duration::from_secs(15);
            let mut n = 0;
            while Instant::now() < deadline {
                let put = tokio::time::timeout(
                    Duration::from_secs(10),
                    c.put(format!("frozen/{w}/{n}"), "x", None),
                )
                .await;
                if let Ok(Ok(_)) = put {
                    return Some(Instant::now());
                }
                n += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            None
        }));
    }
    let mut first = None;
    for w in writers {
        if let Some(t) = w.await.unwrap() {
            first = Some(first.map_or(t, |f: Instant| f.min(t)));
        }
    }
    cluster.members[leader].resume();
    let resumed = first.expect("no write succeeded with the leader frozen") - paused_at;
    // The followers campaign 1.5-2 election timeouts after the last
    // heartbeat; well under the 6 s request timeout.
    assert!(
        resumed < Duration::from_secs(3),
        "writes resumed after {resumed:?}"
    );
    let _ = cluster.leader().await;
}

/// Story: MoveLeader held every proposal, read and keep-alive for two
/// election timeouts of openraft's leader lease (2 s here) before the
/// transferee campaigned. It now waits out one lease of one election
/// timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn move_leader_holds_requests_about_one_election_timeout() {
    let mut cluster = Cluster::start(3, FAST);
    let leader = cluster.leader().await;
    let target = (leader + 1) % 3;
    let target_id = member_id(&cluster.members[target].endpoint()).await;
    let mut c = client(&cluster.members[leader].endpoint()).await;
    c.put("mv", "before", None).await.unwrap();
    let started = Instant::now();
    c.move_leader(target_id).await.unwrap();
    let took = started.elapsed();
    assert_eq!(cluster.leader().await, target);
    eprintln!("MoveLeader took {took:?}");
    // One lease of one election timeout (500 ms) and an election; it was
    // two (1 s) before.
    assert!(
        took < Duration::from_millis(1000),
        "MoveLeader took {took:?}"
    );
    let mut t = client(&cluster.members[target].endpoint()).await;
    t.put("mv", "after", None).await.unwrap();
}

/// Story: a watch opened with clientv3's WithRequireLeader (kube-apiserver
/// opens all its watches so) stayed open on a member cut off from the
/// cluster, silently missing every write the majority went on making; etcd
/// ends such a stream with `etcdserver: no leader` so the client reconnects
/// elsewhere. A plain watch stays open, as in etcd.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_require_leader_watch_ends_when_its_member_loses_the_leader() {
    let mut cluster = Cluster::start_proxied(3, FAST).await;
    let leader = cluster.leader().await;
    let alone = (leader + 1) % 3;
    let ep = cluster.members[alone].endpoint();
    let opts = etcd_client::ConnectOptions::new().with_require_leader(true);
    let mut strict = Client::connect([ep.clone()], Some(opts)).await.unwrap();
    let (_w, mut strict_stream) = strict.watch("rl", None).await.unwrap();
    let mut plain = client(&ep).await;
    let (_p, mut plain_stream) = plain.watch("rl", None).await.unwrap();
    cluster.cut(alone);
    let cut_at = Instant::now();
    let ended = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match strict_stream.message().await {
                Ok(Some(_)) => continue,
                other => return other,
            }
        }
    })
    .await
    .expect("the require-leader watch stayed open");
    let (code, msg) = status_of(ended.expect_err("ended without a status"));
    assert_eq!(
        (code, msg.as_str()),
        (tonic::Code::Unavailable, "etcdserver: no leader")
    );
    // Three election timeouts without a leader, after the follower noticed.
    assert!(
        cut_at.elapsed() < Duration::from_secs(5),
        "{:?}",
        cut_at.elapsed()
    );
    // A new require-leader watch is refused while there is no leader.
    let refused = strict.watch("rl", None).await;
    assert!(
        refused.is_err(),
        "a require-leader watch opened without a leader"
    );
    // The plain watch is still open and sees writes once healed.
    cluster.heal();
    let _ = cluster.leader().await;
    let mut w = client(&cluster.members[leader].endpoint()).await;
    w.put("rl", "after", None).await.unwrap();
    let event = tokio::time::timeout(Duration::from_secs(10), plain_stream.message())
        .await
        .expect("the plain watch saw nothing")
        .unwrap()
        .unwrap();
    assert_eq!(
        event.events()[0].kv().unwrap().value_str().unwrap(),
        "after"
    );
}

/// Story: SIGTERM on a leader just exited, and the cluster took 3.2 s (its
/// followers' election timers) to write again, with nothing in the log;
/// etcd hands leadership over first (0.02 s of no writes). A member stopped
/// with SIGTERM hands its leadership to a caught-up voter, says so, and
/// exits 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_on_the_leader_hands_leadership_over_and_exits_0() {
    let mut cluster = Cluster::start(3, FAST);
    let leader = cluster.leader().await;
    let follower = (leader + 1) % 3;
    let mut f = client(&cluster.members[follower].endpoint()).await;
    f.put("term", "before", None).await.unwrap();
    let started = Instant::now();
    let code = cluster.members[leader].terminate(Duration::from_secs(15));
    let stopped_after = started.elapsed();
    assert_eq!(code, Some(0), "{}", cluster.members[leader].logs());
    let logs = cluster.members[leader].logs();
    assert!(logs.contains("received SIGTERM: stopping"), "{logs}");
    assert!(logs.contains("handed leadership to"), "{logs}");
    // About one election timeout of hold (the followers' lease), not the
    // request timeout.
    assert!(stopped_after < Duration::from_secs(2), "{stopped_after:?}");
    // The survivors have a leader already and write at once.
    let put = tokio::time::timeout(Duration::from_secs(1), f.put("term", "after", None)).await;
    assert!(matches!(put, Ok(Ok(_))), "{put:?}");
    // A follower stopped with SIGTERM exits 0 too.
    let other = cluster.leader().await;
    let rest = (0..3).find(|i| *i != leader && *i != other).unwrap();
    let code = cluster.members[rest].terminate(Duration::from_secs(15));
    assert_eq!(code, Some(0), "{}", cluster.members[rest].logs());
}

/// Story: MemberAdd of a voter that was not started yet answered `context
/// deadline exceeded` after 5 s although the member had been added; etcd
/// answers as soon as the change is committed, whether or not the new
/// member runs (3 of 4 voters still make a quorum).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn member_add_of_an_unstarted_voter_answers_once_committed() {
    let mut cluster = Cluster::start(3, FAST);
    let leader = cluster.leader().await;
    let mut c = client(&cluster.members[(leader + 1) % 3].endpoint()).await;
    let url = format!("http://127.0.0.1:{}", common::free_port());
    let started = Instant::now();
    let added = tokio::time::timeout(Duration::from_secs(5), c.member_add([url.as_str()], None))
        .await
        .expect("MemberAdd did not answer within 5 s")
        .unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(added.member_list().len(), 4);
    let id = added.member().unwrap().id();
    c.put("after-add", "v", None).await.unwrap();
    // A member that never started is safe to remove.
    c.member_remove(id).await.unwrap();
    assert_eq!(c.member_list().await.unwrap().members().len(), 3);
}

/// Story: adding or removing a voter while another voter was down was
/// accepted, and then every write blocked (the new configuration had no
/// quorum of running members). etcd (`--strict-reconfig-check`, on by
/// default) refuses with `etcdserver: unhealthy cluster`; removing the
/// member that is down stays allowed.
/// Story: on a one-member cluster, `member add` of a voter timed out
/// after 5 s (though the member was added): openraft's joint consensus
/// needed the new member's acknowledgement, and the member is started only
/// after the answer (kubeadm grows a cluster from one member so). etcd
/// answers at once; so does keel now, once the change is durable. As in
/// etcd, the cluster then waits for the new member before it writes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn member_add_on_a_one_member_cluster_answers_at_once() {
    let mut cluster = Cluster::start(1, FAST);
    let mut c = client(&cluster.members[0].endpoint()).await;
    c.put("before", "1", None).await.unwrap();
    let joiner = cluster.prepare_joiner(FAST);
    let url = cluster.members[joiner].peer_url();
    let started = Instant::now();
    let added = c.member_add([url.as_str()], None).await.unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(added.member_list().len(), 2);
    let new = added.member().unwrap();
    assert!(!new.is_learner());
    cluster.members[joiner].spawn();
    cluster.members[joiner].wait_healthy();
    c.put("after", "2", None).await.unwrap();
    let mut j = client(&cluster.members[joiner].endpoint()).await;
    let got = j.get("before", None).await.unwrap();
    assert_eq!(got.kvs()[0].value(), b"1");
    let list = j.member_list().await.unwrap();
    assert_eq!(list.members().len(), 2);
    assert!(list.members().iter().all(|m| !m.is_learner()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strict_reconfiguration_refuses_changes_that_would_lose_quorum() {
    let mut cluster = Cluster::start(3, FAST);
    let leader = cluster.leader().await;
    let up = (leader + 1) % 3;
    let down = (leader + 2) % 3;
    let down_id = member_id(&cluster.members[down].endpoint()).await;
    let up_id = member_id(&cluster.members[up].endpoint()).await;
    cluster.members[down].kill9();
    let mut c = client(&cluster.members[leader].endpoint()).await;
    let unhealthy = (
        tonic::Code::Unavailable,
        "etcdserver: unhealthy cluster".to_string(),
    );
    // The leader counts a member as running while it answered within two
    // election timeouts (etcd: an active connection).
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let url = format!("http://127.0.0.1:{}", common::free_port());
    let e = c.member_add([url.as_str()], None).await.unwrap_err();
    assert_eq!(status_of(e), unhealthy);
    let e = c.member_remove(up_id).await.unwrap_err();
    assert_eq!(status_of(e), unhealthy);
    assert_eq!(c.member_list().await.unwrap().members().len(), 3);
    c.member_remove(down_id).await.unwrap();
    assert_eq!(c.member_list().await.unwrap().members().len(), 2);
    c.put("after-remove", "v", None).await.unwrap();
}

/// Story: MemberRemove of the current leader removed it, but the client was
/// told `etcdserver: no leader` (the leader stopped as it applied its own
/// removal, before answering). etcd answers success, then the removed
/// leader stops and the others elect a new one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removing_the_leader_answers_success_and_the_rest_go_on() {
    let mut cluster = Cluster::start(3, FAST);
    let leader = cluster.leader().await;
    let leader_id = member_id(&cluster.members[leader].endpoint()).await;
    let mut c = client(&cluster.members[leader].endpoint()).await;
    c.put("before", "v", None).await.unwrap();
    let removed = c.member_remove(leader_id).await.unwrap();
    assert_eq!(removed.members().len(), 2);
    // The removed leader stops by itself.
    let deadline = Instant::now() + Duration::from_secs(10);
    while cluster.members[leader].is_running() {
        assert!(Instant::now() < deadline, "the removed leader kept running");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(cluster.members[leader]
        .logs()
        .contains("the member has been permanently removed from the cluster"));
    let mut f = client(&cluster.members[(leader + 1) % 3].endpoint()).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while f.put("after", "v", None).await.is_err() {
        assert!(
            Instant::now() < deadline,
            "no write after the leader's removal"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(f.member_list().await.unwrap().members().len(), 2);
}

/// Story: a write forwarded by a follower that the leader applied was
/// reported to the client as `etcdserver: server stopped` when the follower
/// could not apply it itself in time (its local wait for read-your-writes
/// failed), and clients that retried applied it twice. The follower here
/// can reach the leader but the leader cannot reach it, so it never gets
/// the entry: the client must still be told the write succeeded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forwarded_write_the_leader_applied_is_reported_applied() {
    let mut cluster = Cluster::start_proxied(3, FAST).await;
    let leader = cluster.leader().await;
    let lagging = (leader + 1) % 3;
    let mut f = client(&cluster.members[lagging].endpoint()).await;
    f.put("fwd", "before", None).await.unwrap();
    cluster.cut_inbound(lagging);
    let put = tokio::time::timeout(Duration::from_secs(15), f.put("fwd", "once", None))
        .await
        .expect("no answer");
    let rev = match put {
        Ok(r) => r.header().unwrap().revision(),
        Err(e) => panic!("an applied write was reported as {:?}", status_of(e)),
    };
    let mut l = client(&cluster.members[leader].endpoint()).await;
    let r = l.get("fwd", None).await.unwrap();
    assert_eq!(r.kvs()[0].value_str().unwrap(), "once");
    assert_eq!(r.kvs()[0].mod_revision(), rev);
    cluster.heal();
    let _ = cluster.leader().await;
}
