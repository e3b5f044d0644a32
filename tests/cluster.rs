//! 3-member clusters of real keel processes: replication, forwarding,
//! failover and catch-up, observed through the etcd-client crate.

mod common;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{status_of, Cluster};
use etcd_client::{Client, GetOptions};

/// Fast elections keep failover tests short.
const FAST: &[&str] = &["--heartbeat-interval", "50", "--election-timeout", "500"];

async fn client(endpoint: &str) -> Client {
    Client::connect([endpoint.to_string()], None)
        .await
        .expect("connect")
}

/// The id of the member serving `endpoint`.
async fn member_id(endpoint: &str) -> u64 {
    let s = client(endpoint).await.status().await.unwrap();
    s.header().unwrap().member_id()
}

/// Everything a member's store holds under `prefix`, read locally
/// (serializable) after a linearizable read made it catch up.
async fn content(endpoint: &str, prefix: &str) -> (i64, Vec<(String, String, i64, i64, i64)>) {
    let mut c = client(endpoint).await;
    c.get(
        prefix,
        Some(GetOptions::new().with_prefix().with_keys_only()),
    )
    .await
    .expect("linearizable barrier");
    let r = c
        .get(
            prefix,
            Some(GetOptions::new().with_prefix().with_serializable()),
        )
        .await
        .expect("serializable range");
    let kvs = r
        .kvs()
        .iter()
        .map(|kv| {
            (
                kv.key_str().unwrap().to_string(),
                kv.value_str().unwrap().to_string(),
                kv.create_revision(),
                kv.mod_revision(),
                kv.version(),
            )
        })
        .collect();
    (r.header().unwrap().revision(), kvs)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_and_reads_through_every_member() {
    let cluster = Cluster::start(3, FAST);
    let eps = cluster.endpoints();
    let mut member_ids = Vec::new();
    let mut cluster_ids = Vec::new();
    for (i, ep) in eps.iter().enumerate() {
        let mut c = client(ep).await;
        let r = c
            .put(format!("k/{i}"), format!("v{i}"), None)
            .await
            .unwrap();
        let h = r.header().unwrap();
        member_ids.push(h.member_id());
        cluster_ids.push(h.cluster_id());
    }
    // Every member answers with its own id and the one cluster id.
    assert!(cluster_ids.iter().all(|c| *c == cluster_ids[0] && *c != 0));
    let mut distinct = member_ids.clone();
    distinct.sort();
    distinct.dedup();
    assert_eq!(distinct.len(), 3, "{member_ids:?}");

    // A linearizable read through any member sees every write.
    for ep in &eps {
        let mut c = client(ep).await;
        let r = c
            .get("k/", Some(GetOptions::new().with_prefix()))
            .await
            .unwrap();
        let values: Vec<&str> = r.kvs().iter().map(|kv| kv.value_str().unwrap()).collect();
        assert_eq!(values, ["v0", "v1", "v2"], "through {ep}");
    }
    // A write through a follower is readable there at once, serializably.
    for (i, ep) in eps.iter().enumerate() {
        let mut c = client(ep).await;
        let put = c.put("own", format!("from {i}"), None).await.unwrap();
        let r = c
            .get("own", Some(GetOptions::new().with_serializable()))
            .await
            .unwrap();
        assert_eq!(r.kvs()[0].value_str().unwrap(), format!("from {i}"));
        assert!(r.header().unwrap().revision() >= put.header().unwrap().revision());
    }
    // Same content, same revisions everywhere.
    let first = content(&eps[0], "").await;
    for ep in &eps[1..] {
        assert_eq!(content(ep, "").await, first, "{ep} differs from {}", eps[0]);
    }

    // Membership and status agree across members.
    let mut c = client(&eps[1]).await;
    let members = c.member_list().await.unwrap();
    let mut listed: Vec<(String, Vec<String>)> = members
        .members()
        .iter()
        .map(|m| (m.name().to_string(), m.client_urls().to_vec()))
        .collect();
    listed.sort();
    let want: Vec<(String, Vec<String>)> = eps
        .iter()
        .enumerate()
        .map(|(i, ep)| (format!("m{i}"), vec![ep.clone()]))
        .collect();
    assert_eq!(listed, want);
    assert!(members.members().iter().all(|m| !m.is_learner()));
    let mut leaders = Vec::new();
    for ep in &eps {
        let s = client(ep).await.status().await.unwrap();
        leaders.push(s.leader());
        assert!(!s.is_learner());
        assert!(s.raft_applied_index() > 0);
    }
    assert!(leaders
        .iter()
        .all(|l| *l == leaders[0] && member_ids.contains(l)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_kill9_under_load_loses_no_acknowledged_write() {
    let mut cluster = Cluster::start(3, FAST);
    let eps = cluster.endpoints();
    let load = Load::start(eps.clone(), 6, "load/");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let before_kill = load.acked();
    assert!(before_kill > 0, "no write succeeded before the kill");
    let old = cluster.leader().await;
    cluster.members[old].kill9();
    let killed_at = Instant::now();

    // A new leader serves within a few election timeouts: a write through a
    // survivor succeeds.
    let survivor = (old + 1) % 3;
    let mut c = client(&eps[survivor]).await;
    let failover = loop {
        if let Ok(Ok(_)) =
            tokio::time::timeout(Duration::from_secs(2), c.put("after-failover", "1", None)).await
        {
            break killed_at.elapsed();
        }
        assert!(
            killed_at.elapsed() < Duration::from_secs(15),
            "no leader took over within 15 s"
        );
    };
    assert!(
        failover < Duration::from_secs(10),
        "failover took {failover:?}"
    );
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let acked = load.finish().await;
    assert!(
        acked.len() > before_kill,
        "no write succeeded after the kill"
    );

    for i in (0..3).filter(|i| *i != old) {
        let kvs = content(&eps[i], "load/").await.1;
        assert_has_all(&acked, kvs, &format!("survivor m{i}"));
    }
    cluster.members[old].spawn();
    cluster.members[old].wait_healthy();
    let kvs = content(&eps[old], "load/").await.1;
    assert_has_all(&acked, kvs, "the restarted old leader");
    let (rev_old, kvs_old) = content(&eps[old], "").await;
    let (rev_new, kvs_new) = content(&eps[survivor], "").await;
    assert_eq!(kvs_old, kvs_new);
    assert_eq!(rev_old, rev_new);
}

/// Keys under `prefix` with their mod revisions, read linearizably (values
/// left out: large ones would exceed a gRPC message).
async fn key_revisions(c: &mut etcd_client::Client, prefix: &str) -> Vec<(Vec<u8>, i64)> {
    let keys_only = GetOptions::new().with_prefix().with_keys_only();
    c.get(prefix, Some(keys_only))
        .await
        .expect("linearizable range")
        .kvs()
        .iter()
        .map(|kv| (kv.key().to_vec(), kv.mod_revision()))
        .collect()
}

/// 3 members snapshotting every `snapshot_count` entries and keeping
/// `catchup` entries after one, with a follower killed: (cluster, leader,
/// stopped follower). `timing` is the heartbeat and election flags.
async fn with_a_stopped_follower(
    timing: &[&'static str],
    snapshot_count: &'static str,
    catchup: &'static str,
) -> (Cluster, usize, usize) {
    let mut args = timing.to_vec();
    args.extend([
        "--snapshot-count",
        snapshot_count,
        "--experimental-snapshot-catchup-entries",
        catchup,
    ]);
    let mut cluster = Cluster::start(3, &args);
    let leader = cluster.leader().await;
    let lagging = (leader + 1) % 3;
    cluster.members[lagging].kill9();
    (cluster, leader, lagging)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopped_member_catches_up_through_a_snapshot() {
    let (mut cluster, leader, lagging) = with_a_stopped_follower(FAST, "200", "20").await;
    let eps = cluster.endpoints();
    let mut c = client(&eps[leader]).await;
    for i in 0..1000 {
        c.put(format!("snap/{i:04}"), format!("{i}"), None)
            .await
            .unwrap();
    }
    c.delete("snap/0000", None).await.unwrap();
    cluster.members[lagging].spawn();
    cluster.members[lagging].wait_healthy();
    let want = content(&eps[leader], "").await;
    let got = content(&eps[lagging], "").await;
    assert_eq!(got.1.len(), 999);
    assert_eq!(got, want);
    let logs = cluster.members[lagging].logs();
    assert!(
        logs.contains("received a snapshot from the leader"),
        "the lagging member did not install a snapshot:\n{logs}"
    );
    // It keeps following the log after the snapshot.
    c.put("snap/after", "1", None).await.unwrap();
    let mut l = client(&eps[lagging]).await;
    let r = l.get("snap/after", None).await.unwrap();
    assert_eq!(r.kvs()[0].value_str().unwrap(), "1");

    // Story: its WAL then held the entries from before its stop and, right
    // after them, those after the snapshot: the purge up to the received
    // snapshot was held back until the snapshot was durable and never
    // written after. Killed then, it did not start again ("log index N
    // follows M: entries are missing").
    cluster.members[lagging].restart();
    let got = content(&eps[lagging], "").await;
    assert_eq!(got, content(&eps[leader], "").await);
    assert_eq!(got.1.len(), 1000);
}

/// Story: the entries kept after a snapshot for lagging followers were
/// bounded by count alone (5,000), and an entry is a batch of up to 1.5 MiB:
/// up to 7.5 GiB held in memory on every member. They are bounded by bytes
/// too now (a quarter of `--snapshot-log-bytes`), so a follower that missed
/// more than that catches up through a snapshot although it missed only a
/// few dozen entries.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_kept_for_lagging_followers_are_bounded_by_bytes() {
    let mut args = FAST.to_vec();
    // Snapshots after 4 MiB of log, 1 MiB of it kept for followers.
    args.extend(["--snapshot-log-bytes", "4194304"]);
    let (mut cluster, leader, lagging) = with_a_stopped_follower(&args, "100000", "5000").await;
    let eps = cluster.endpoints();
    let mut c = client(&eps[leader]).await;
    let value = "v".repeat(512 << 10);
    for i in 0..20 {
        c.put(format!("big/{i:02}"), value.clone(), None)
            .await
            .unwrap();
    }
    // A snapshot by bytes, then the purge: each looked at every second.
    let logs = || cluster.members[leader].logs();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !logs().contains("snapshot: the log since the last one is large") {
        assert!(
            Instant::now() < deadline,
            "no snapshot by bytes:\n{}",
            logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    cluster.members[lagging].spawn();
    cluster.members[lagging].wait_healthy();
    let mut l = client(&eps[lagging]).await;
    let r = l
        .get("big/19", Some(GetOptions::new().with_keys_only()))
        .await
        .unwrap();
    assert_eq!(r.kvs().len(), 1);
    let logs = cluster.members[lagging].logs();
    assert!(
        logs.contains("received a snapshot from the leader"),
        "the follower caught up from entries the leader still held:\n{logs}"
    );
}

/// A power cut acted out while a follower installs a snapshot from the
/// leader (renamed into place, the directory not yet synced: the cut undoes
/// the rename) leaves a member that starts again and catches up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_power_cut_during_a_snapshot_install_leaves_a_member_that_catches_up() {
    let (mut cluster, leader, lagging) = with_a_stopped_follower(FAST, "10", "5").await;
    let eps = cluster.endpoints();
    let mut c = client(&eps[leader]).await;
    let value = "v".repeat(256 << 10);
    for i in 0..30 {
        c.put(format!("big/{i:02}"), value.clone(), None)
            .await
            .unwrap();
    }
    let m = &mut cluster.members[lagging];
    m.env
        .push(("KEEL_TEST_POWER_LOSS".into(), "snapshot-renamed:1".into()));
    m.spawn();
    let deadline = Instant::now() + Duration::from_secs(30);
    while m.is_running() {
        assert!(Instant::now() < deadline, "no cut came:\n{}", m.logs());
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        m.logs().contains("power cut acted out at SnapshotRenamed"),
        "{}",
        m.logs()
    );
    m.env.clear();
    m.spawn();
    m.wait_healthy();
    let want = key_revisions(&mut c, "big/").await;
    assert_eq!(want.len(), 30);
    let mut l = client(&eps[lagging]).await;
    assert_eq!(key_revisions(&mut l, "big/").await, want);
}

/// A snapshot that streams for many election timeouts still completes.
/// openraft sent the follower no heartbeat while a snapshot was in flight:
/// it campaigned mid-transfer, the next term started the transfer over,
/// and it never caught up. Heartbeats now go beside the snapshot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_streaming_for_many_election_timeouts_completes() {
    let mut args = FAST.to_vec();
    args.extend([
        "--snapshot-count",
        "20",
        "--experimental-snapshot-catchup-entries",
        "5",
    ]);
    let mut cluster = Cluster::start_proxied(3, &args).await;
    let leader = cluster.leader().await;
    let lagging = (leader + 1) % 3;
    cluster.members[lagging].kill9();
    let eps = cluster.endpoints();
    let mut c = client(&eps[leader]).await;
    let value = "v".repeat(1 << 20);
    for i in 0..30 {
        c.put(format!("big/{i:02}"), value.clone(), None)
            .await
            .unwrap();
    }
    // About 20 MiB at 4 MiB/s: ten election timeouts.
    cluster.throttle_inbound(lagging, 4 << 20);
    cluster.members[lagging].spawn();
    cluster.members[lagging].wait_serving();
    let mut l = client(&eps[lagging]).await;
    let serializable = Some(GetOptions::new().with_serializable().with_keys_only());
    let deadline = Instant::now() + Duration::from_secs(40);
    while l.get("big/29", serializable.clone()).await.unwrap().count() == 0 {
        assert!(
            Instant::now() < deadline,
            "the follower did not catch up:\n{}",
            cluster.members[lagging].logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let logs = cluster.members[lagging].logs();
    assert_eq!(
        logs.matches("received a snapshot from the leader").count(),
        1,
        "the transfer started over:\n{logs}"
    );
    cluster.heal();
    let want = key_revisions(&mut c, "big/").await;
    assert_eq!(want.len(), 30);
    assert_eq!(key_revisions(&mut l, "big/").await, want);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_quorum_requests_fail_with_etcd_errors() {
    let mut cluster = Cluster::start(3, FAST);
    let eps = cluster.endpoints();
    let leader = cluster.leader().await;
    let alone = (leader + 1) % 3;
    for i in (0..3).filter(|i| *i != alone) {
        cluster.members[i].kill9();
    }
    let mut c = client(&eps[alone]).await;
    let started = Instant::now();
    // The first write may still go to the dead leader's connection.
    let etcd_errors = [
        "etcdserver: request timed out",
        "etcdserver: no leader",
        "etcdserver: leader changed",
    ];
    for _ in 0..2 {
        let e = status_of(c.put("k", "v", None).await.unwrap_err());
        assert_eq!(e.0, tonic::Code::Unavailable, "{e:?}");
        assert!(etcd_errors.contains(&e.1.as_str()), "{e:?}");
    }
    let e = status_of(c.get("k", None).await.unwrap_err());
    assert_eq!(e.0, tonic::Code::Unavailable, "{e:?}");
    // Bounded by the request timeout (5 s + 2 election timeouts), not hanging.
    assert!(started.elapsed() < Duration::from_secs(20));
    // Serializable reads are still answered locally.
    c.get("k", Some(GetOptions::new().with_serializable()))
        .await
        .unwrap();
}

/// Writers that put unique keys through every given endpoint until
/// stopped, remembering which writes were acknowledged.
struct Load {
    acked: Arc<Mutex<BTreeMap<String, String>>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
    writers: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    fn start(endpoints: Vec<String>, writers: usize, prefix: &str) -> Load {
        let acked: Arc<Mutex<BTreeMap<String, String>>> = Arc::default();
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let handles = (0..writers)
            .map(|w| {
                let (eps, acked, stop) = (endpoints.clone(), acked.clone(), stop.clone());
                let prefix = prefix.to_string();
                tokio::spawn(async move {
                    let mut clients = Vec::new();
                    for ep in &eps {
                        clients.push(client(ep).await);
                    }
                    let mut n = 0usize;
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) && n < 1_000_000 {
                        let key = format!("{prefix}{w}/{n}");
                        let target = (n + w) % clients.len();
                        let put = tokio::time::timeout(
                            Duration::from_secs(3),
                            clients[target].put(key.clone(), "x", None),
                        )
                        .await;
                        if let Ok(Ok(_)) = put {
                            acked.lock().unwrap().insert(key, "x".into());
                        } else {
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                        n += 1;
                    }
                })
            })
            .collect();
        Load {
            acked,
            stop,
            writers: handles,
        }
    }

    fn acked(&self) -> usize {
        self.acked.lock().unwrap().len()
    }

    async fn finish(self) -> BTreeMap<String, String> {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for w in self.writers {
            w.await.unwrap();
        }
        let acked = self.acked.lock().unwrap().clone();
        acked
    }
}

fn assert_has_all(
    acked: &BTreeMap<String, String>,
    kvs: Vec<(String, String, i64, i64, i64)>,
    who: &str,
) {
    let have: BTreeMap<String, String> = kvs.into_iter().map(|k| (k.0, k.1)).collect();
    let missing: Vec<&String> = acked.keys().filter(|k| !have.contains_key(*k)).collect();
    assert!(
        missing.is_empty(),
        "{who} lost {} acknowledged writes, e.g. {:?}",
        missing.len(),
        &missing[..missing.len().min(5)]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn membership_changes_and_move_leader_under_load() {
    let mut cluster = Cluster::start(3, FAST);
    let eps = cluster.endpoints();
    let load = Load::start(eps.clone(), 4, "m/");
    let mut c = client(&eps[0]).await;

    // Add a learner and start it: it joins with --initial-cluster-state existing.
    let joiner = cluster.prepare_joiner(FAST);
    let joiner_url = cluster.members[joiner].peer_url();
    let added = c
        .member_add(
            [joiner_url.as_str()],
            Some(etcd_client::MemberAddOptions::new().with_is_learner()),
        )
        .await
        .unwrap();
    let new_id = added.member().unwrap().id();
    assert!(added.member().unwrap().is_learner());
    assert_eq!(added.member_list().len(), 4);
    // Only one learner at a time, as in etcd.
    let e = status_of(
        c.member_add(
            ["http://127.0.0.1:1"],
            Some(etcd_client::MemberAddOptions::new().with_is_learner()),
        )
        .await
        .unwrap_err(),
    );
    assert_eq!(
        e,
        (
            tonic::Code::FailedPrecondition,
            "etcdserver: too many learner members in cluster".into()
        )
    );
    cluster.members[joiner].spawn();
    cluster.members[joiner].wait_healthy();
    let joiner_ep = cluster.members[joiner].endpoint();

    // A learner serves serializable reads and Status, nothing else.
    let mut l = client(&joiner_ep).await;
    assert!(l.status().await.unwrap().is_learner());
    l.get(
        "m/",
        Some(GetOptions::new().with_serializable().with_prefix()),
    )
    .await
    .unwrap();
    let e = status_of(l.put("k", "v", None).await.unwrap_err());
    assert_eq!(
        e,
        (
            tonic::Code::Unavailable,
            "etcdserver: rpc not supported for learner".into()
        )
    );

    // Promote once it has caught up.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match c.member_promote(new_id).await {
            Ok(r) => {
                assert!(r.members().iter().all(|m| !m.is_learner()));
                break;
            }
            Err(e) => {
                let (code, msg) = status_of(e);
                // Under load a forwarded change may also meet a transient
                // Unavailable (no leader / timed out); anything else must be
                // etcd's not-in-sync refusal.
                if code != tonic::Code::Unavailable {
                    assert_eq!(
                        msg,
                        "etcdserver: can only promote a learner member which is in sync with leader",
                        "{code:?}"
                    );
                }
                assert!(
                    Instant::now() < deadline,
                    "the learner never caught up: {msg}"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    let e = status_of(c.member_promote(new_id).await.unwrap_err());
    assert_eq!(e.1, "etcdserver: can only promote a learner member");

    // Hand leadership to the new member.
    let leader = cluster.leader().await;
    let follower = (0..3).find(|i| *i != leader).unwrap();
    let e = status_of(
        client(&eps[follower])
            .await
            .move_leader(new_id)
            .await
            .unwrap_err(),
    );
    assert_eq!(
        e,
        (
            tonic::Code::FailedPrecondition,
            "etcdserver: not leader".into()
        )
    );
    client(&eps[leader])
        .await
        .move_leader(new_id)
        .await
        .unwrap();
    assert_eq!(cluster.leader().await, joiner);

    // Remove one of the founders (a follower now) and stop it.
    let removed = (0..3).find(|i| *i != leader).unwrap();
    let removed_id = member_id(&eps[removed]).await;
    let r = client(&joiner_ep)
        .await
        .member_remove(removed_id)
        .await
        .unwrap();
    assert_eq!(r.members().len(), 3);
    assert!(r.members().iter().all(|m| m.id() != removed_id));
    let e = status_of(
        client(&joiner_ep)
            .await
            .member_remove(removed_id)
            .await
            .unwrap_err(),
    );
    assert_eq!(
        e,
        (tonic::Code::NotFound, "etcdserver: member not found".into())
    );
    cluster.members[removed].kill9();

    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = load.acked();
    let acked = load.finish().await;
    assert!(before > 0);
    let remaining: Vec<usize> = (0..cluster.members.len())
        .filter(|i| *i != removed)
        .collect();
    let mut contents = Vec::new();
    for i in &remaining {
        let ep = cluster.members[*i].endpoint();
        let got = content(&ep, "").await;
        assert_has_all(&acked, got.1.clone(), &format!("m{i}"));
        contents.push(got);
    }
    assert!(contents.iter().all(|c| *c == contents[0]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitioned_member_cannot_serve_and_converges_after_healing() {
    let mut cluster = Cluster::start_proxied(3, FAST).await;
    let eps = cluster.endpoints();
    let old = cluster.leader().await;
    let majority: Vec<String> = (0..3)
        .filter(|i| *i != old)
        .map(|i| eps[i].clone())
        .collect();
    let load = Load::start(majority.clone(), 4, "p/");

    // Cut the leader off: it can no longer commit or confirm reads.
    cluster.cut(old);
    let mut isolated = client(&eps[old]).await;
    let e = status_of(isolated.put("isolated", "1", None).await.unwrap_err());
    assert_eq!(e.0, tonic::Code::Unavailable, "{e:?}");
    let e = status_of(isolated.get("p/", None).await.unwrap_err());
    assert_eq!(e.0, tonic::Code::Unavailable, "{e:?}");
    // Its local, serializable view still answers.
    isolated
        .get(
            "p/",
            Some(GetOptions::new().with_serializable().with_prefix()),
        )
        .await
        .unwrap();

    // The majority elected a new leader and kept writing meanwhile.
    let during = load.acked();
    let mut m = client(&majority[0]).await;
    m.put("majority", "1", None).await.unwrap();
    let r = m.get("majority", None).await.unwrap();
    assert_eq!(r.kvs()[0].value_str().unwrap(), "1");
    let new_leader = {
        let s = m.status().await.unwrap();
        s.leader()
    };
    assert_ne!(new_leader, member_id(&eps[old]).await);

    cluster.heal();
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let acked = load.finish().await;
    assert!(acked.len() > during);
    // All members converge; the failed write through the isolated member
    // never took effect.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let mut contents = Vec::new();
        for ep in &eps {
            contents.push(
                tokio::time::timeout(Duration::from_secs(10), content(ep, ""))
                    .await
                    .ok(),
            );
        }
        if contents.iter().all(|c| c.is_some() && *c == contents[0]) {
            let (_, kvs) = contents[0].clone().unwrap();
            assert!(kvs.iter().all(|k| k.0 != "isolated"));
            assert_has_all(&acked, kvs, "every member");
            break;
        }
        assert!(Instant::now() < deadline, "members did not converge");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn member_of_another_cluster_is_refused() {
    let cluster = Cluster::start(3, FAST);
    // Same peers, another token: a different cluster id. It campaigns, the
    // members refuse it, and it stops with the reason.
    let mut stray = common::Server::new(Vec::new());
    let mut initial: Vec<String> = cluster
        .members
        .iter()
        .enumerate()
        .map(|(i, m)| format!("m{i}={}", m.peer_url()))
        .collect();
    initial.push(format!("stray={}", stray.peer_url()));
    stray.args = [
        "--name",
        "stray",
        "--initial-cluster",
        &initial.join(","),
        "--initial-cluster-token",
        "another-token",
        "--heartbeat-interval",
        "50",
        "--election-timeout",
        "500",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let (code, out) = stray.start_expect_exit();
    assert_eq!(code, Some(2), "{out}");
    assert!(out.contains("cluster ID mismatch"), "{out}");
    assert!(out.contains("--initial-cluster-token"), "{out}");
    // The cluster is unharmed.
    let mut c = client(&cluster.members[0].endpoint()).await;
    c.put("still", "fine", None).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_metrics() {
    let cluster = Cluster::start(3, FAST);
    let eps = cluster.endpoints();
    let mut c = client(&eps[1]).await;
    for i in 0..20 {
        c.put(format!("m{i}"), "v", None).await.unwrap();
    }
    let mut leaders = 0;
    for m in &cluster.members {
        let (status, body) = common::http_get(m.port, "/metrics").unwrap();
        assert_eq!(status, 200);
        let value = |name: &str| -> f64 {
            body.lines()
                .filter(|l| l.starts_with(name))
                .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .sum()
        };
        assert_eq!(value("etcd_server_has_leader "), 1.0);
        leaders += value("etcd_server_is_leader ") as i32;
        assert!(value("etcd_server_leader_changes_seen_total ") >= 1.0);
        assert!(value("etcd_network_peer_sent_bytes_total{") > 0.0, "{body}");
        assert!(value("etcd_network_peer_received_bytes_total{") > 0.0);
        assert!(value("etcd_network_peer_round_trip_time_seconds_count{") > 0.0);
        assert!(body.contains("etcd_server_proposals_pending "));
        assert!(body.contains("etcd_server_proposals_failed_total "));
    }
    assert_eq!(leaders, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_values_replicate() {
    let cluster = Cluster::start(3, FAST);
    let eps = cluster.endpoints();
    let mut tasks = Vec::new();
    for t in 0..8 {
        let ep = eps[t % 3].clone();
        tasks.push(tokio::spawn(async move {
            let mut c = client(&ep).await;
            for i in 0..5 {
                let value = vec![b'a' + t as u8; 1_000_000];
                // 40 MB through 3 debug-built members sharing 2 cores with
                // other tests can meet a leader change or a request
                // timeout; putting the same value again is harmless.
                let mut attempts = 0;
                loop {
                    match c.put(format!("big/{t}/{i}"), value.clone(), None).await {
                        Ok(_) => break,
                        Err(e) => {
                            let (code, msg) = status_of(e);
                            attempts += 1;
                            assert!(
                                code == tonic::Code::Unavailable && attempts < 5,
                                "{code:?} {msg}"
                            );
                        }
                    }
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    // Values compared one key at a time (a 40 MB range exceeds the
    // client's message limit).
    let mut clients = Vec::new();
    for ep in &eps {
        let mut c = client(ep).await;
        c.get(
            "big/",
            Some(GetOptions::new().with_prefix().with_keys_only()),
        )
        .await
        .unwrap();
        clients.push(c);
    }
    for t in 0..8 {
        for i in 0..5 {
            let key = format!("big/{t}/{i}");
            let mut seen = Vec::new();
            for c in &mut clients {
                let r = c
                    .get(key.as_str(), Some(GetOptions::new().with_serializable()))
                    .await
                    .unwrap();
                let kv = &r.kvs()[0];
                assert_eq!(kv.value(), vec![b'a' + t as u8; 1_000_000].as_slice());
                seen.push(kv.mod_revision());
            }
            assert!(seen.iter().all(|r| *r == seen[0]), "{key}: {seen:?}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_members_survive_two_failures() {
    let mut cluster = Cluster::start(5, FAST);
    let eps = cluster.endpoints();
    client(&eps[0])
        .await
        .put("before", "1", None)
        .await
        .unwrap();
    let leader = cluster.leader().await;
    let other = (leader + 1) % 5;
    cluster.members[leader].kill9();
    cluster.members[other].kill9();
    let alive: Vec<usize> = (0..5).filter(|i| *i != leader && *i != other).collect();
    let mut c = client(&eps[alive[0]]).await;
    let deadline = Instant::now() + Duration::from_secs(15);
    while c.put("after", "2", None).await.is_err() {
        assert!(Instant::now() < deadline, "no leader among the 3 survivors");
    }
    for i in alive {
        let (_, kvs) = content(&eps[i], "").await;
        let keys: Vec<&str> = kvs.iter().map(|k| k.0.as_str()).collect();
        assert_eq!(keys, ["after", "before"], "m{i}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_member_stops_and_stays_out() {
    let mut cluster = Cluster::start(3, FAST);
    let eps = cluster.endpoints();
    let leader = cluster.leader().await;
    let gone = (leader + 1) % 3;
    let gone_id = member_id(&eps[gone]).await;
    let mut c = client(&eps[leader]).await;
    c.member_remove(gone_id).await.unwrap();
    // It learns of its removal (from the log, or when a peer refuses it)
    // and stops, as etcd's removed members do.
    let deadline = Instant::now() + Duration::from_secs(20);
    while cluster.members[gone].is_running() {
        assert!(Instant::now() < deadline, "the removed member kept running");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let logs = cluster.members[gone].logs();
    assert!(
        logs.contains("the member has been permanently removed from the cluster"),
        "{logs}"
    );
    // Restarted on its data dir, it stops again.
    let (code, out) = cluster.members[gone].start_expect_exit();
    assert_eq!(code, Some(2), "{out}");
    assert!(out.contains("permanently removed"), "{out}");
    // The two others carry on.
    c.put("after-removal", "1", None).await.unwrap();
    assert_eq!(c.member_list().await.unwrap().members().len(), 2);
}

/// Story: openraft purges the log as soon as it queues a received
/// snapshot's install, and the WAL made that purge durable within one
/// fsync, while the snapshot file was still being read back and renamed
/// into place. A member killed in that window never started again: "the
/// WAL was purged up to index N but the newest snapshot only covers None".
/// The WAL now forgets nothing past the newest durable snapshot.
///
/// The snapshot is large (about 40 MiB) so that reading it back takes
/// longer than the purge's fsync; the member is killed the moment it has
/// received the file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_killed_while_installing_a_snapshot_starts_again() {
    let (mut cluster, leader, lagging) = with_a_stopped_follower(FAST, "40", "5").await;
    let eps = cluster.endpoints();
    let mut c = client(&eps[leader]).await;
    let value = "v".repeat(1 << 20);
    for i in 0..60 {
        c.put(format!("big/{i:02}"), value.clone(), None)
            .await
            .unwrap();
    }
    cluster.members[lagging].spawn();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !cluster.members[lagging]
        .logs()
        .contains("received a snapshot from the leader")
    {
        assert!(Instant::now() < deadline, "no snapshot was sent");
        std::thread::sleep(Duration::from_millis(1));
    }
    cluster.members[lagging].kill9();
    cluster.members[lagging].spawn();
    cluster.members[lagging].wait_healthy();
    // Keys and revisions only: the values would exceed a gRPC message.
    let keys = |endpoint: String| async move {
        let mut c = client(&endpoint).await;
        let r = c
            .get(
                "big/",
                Some(GetOptions::new().with_prefix().with_keys_only()),
            )
            .await
            .expect("linearizable range");
        let kvs: Vec<(String, i64, i64)> = r
            .kvs()
            .iter()
            .map(|kv| {
                let key = kv.key_str().unwrap().to_string();
                (key, kv.mod_revision(), kv.version())
            })
            .collect();
        (r.header().unwrap().revision(), kvs)
    };
    let want = keys(eps[leader].clone()).await;
    assert_eq!(want.1.len(), 60);
    assert_eq!(keys(eps[lagging].clone()).await, want);
    let r = client(&eps[lagging])
        .await
        .get("big/59", Some(GetOptions::new().with_serializable()))
        .await
        .unwrap();
    assert_eq!(r.kvs()[0].value(), value.as_bytes());
}

/// Story: with two of three members lost for good, etcd's way back is
/// `--force-new-cluster` on the survivor, which keeps its data and becomes
/// a one-member cluster; keel refused the flag.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn force_new_cluster_makes_a_survivor_the_only_member() {
    // Snapshots every few entries: the survivor's log starts past a purge.
    let flags = [FAST, &["--snapshot-count", "4"]].concat();
    let mut cluster = Cluster::start(3, &flags);
    let eps = cluster.endpoints();
    let leader = cluster.leader().await;
    let survivor = (leader + 1) % 3;
    let mut c = client(&eps[leader]).await;
    for i in 0..20 {
        c.put(format!("k{i:02}"), format!("v{i}"), None)
            .await
            .unwrap();
    }
    let lease = c.lease_grant(600, None).await.unwrap().id();
    let leased = etcd_client::PutOptions::new().with_lease(lease);
    c.put("leased", "x", Some(leased)).await.unwrap();
    let before = content(&eps[survivor], "").await;
    let status = client(&eps[survivor]).await.status().await.unwrap();
    let (id, cluster_id) = {
        let h = status.header().unwrap();
        (h.member_id(), h.cluster_id())
    };
    for m in &mut cluster.members {
        m.kill9();
    }

    let m = &mut cluster.members[survivor];
    m.args.push("--force-new-cluster".into());
    m.spawn();
    m.wait_healthy();
    assert!(
        m.logs()
            .contains("forcing restart member as the cluster's only one"),
        "{}",
        m.logs()
    );
    assert_eq!(content(&eps[survivor], "").await, before);
    let mut c = client(&eps[survivor]).await;
    let members = c.member_list().await.unwrap();
    let ids: Vec<u64> = members.members().iter().map(|m| m.id()).collect();
    assert_eq!(ids, [id]);
    assert_eq!(members.header().unwrap().cluster_id(), cluster_id);
    let put = c.put("after", "1", None).await.unwrap();
    assert_eq!(put.header().unwrap().revision(), before.0 + 1);
    let keys = etcd_client::LeaseTimeToLiveOptions::new().with_keys();
    let ttl = c.lease_time_to_live(lease, Some(keys)).await.unwrap();
    assert!(ttl.ttl() > 0, "{ttl:?}");
    assert_eq!(ttl.keys(), [b"leased".to_vec()]);

    // Without the flag again, it stays the only member, with its data.
    m.args.pop();
    m.restart();
    let mut c = client(&eps[survivor]).await;
    assert_eq!(c.member_list().await.unwrap().members().len(), 1);
    let got = c.get("after", None).await.unwrap();
    assert_eq!(got.kvs()[0].value(), b"1");

    // A member it left behind, started again, is told it was removed and
    // stops, as etcd's are.
    let left = (survivor + 1) % 3;
    let (code, out) = cluster.members[left].start_expect_exit();
    assert!(matches!(code, Some(c) if c != 0), "{out}");
    assert!(out.contains("permanently removed"), "{out}");

    // The cluster grows again: a new member joins and gets everything.
    let joiner = cluster.prepare_joiner(FAST);
    let url = cluster.members[joiner].peer_url();
    c.member_add([url.as_str()], None).await.unwrap();
    cluster.members[joiner].spawn();
    cluster.members[joiner].wait_healthy();
    let after = content(&eps[survivor], "").await;
    assert_eq!(
        content(&cluster.members[joiner].endpoint(), "").await,
        after
    );
    assert_eq!(c.member_list().await.unwrap().members().len(), 2);
}
