//! The Maintenance service's hashes: HashKV as etcd 3.4 defines it, equal
//! to etcd's own for the same history and equal across members; and the
//! corruption checks built on it.

mod common;

use std::time::{Duration, Instant};

use common::{alarms, status_of, Cluster, Server};
use etcd_client::{
    AlarmAction, AlarmOptions, AlarmType, CompactionOptions, Compare, CompareOp, LeaseGrantOptions,
    PutOptions, Txn, TxnOp,
};

/// The history whose hashes etcd 3.4.23 gave (`etcdctl endpoint hashkv
/// --rev=N -w json`, 2026-11-30; the same figures are in
/// storage/src/mvcc/hash.rs): revisions 2 to 7.
async fn write_history(c: &mut etcd_client::Client) {
    c.put("a", "1", None).await.unwrap();
    c.put("b", "2", None).await.unwrap();
    c.txn(
        Txn::new()
            .when([Compare::value("a", CompareOp::Equal, "1")])
            .and_then([
                TxnOp::put("a", "3", None),
                TxnOp::delete("b", None),
                TxnOp::put("d", "x", None),
            ]),
    )
    .await
    .unwrap();
    c.lease_grant(600, Some(LeaseGrantOptions::new().with_id(4660)))
        .await
        .unwrap();
    c.put("c", "4", Some(PutOptions::new().with_lease(4660)))
        .await
        .unwrap();
    c.delete("a", None).await.unwrap();
    c.put("a", "5", None).await.unwrap();
}

#[tokio::test]
async fn hash_kv_equals_etcds_for_the_same_history() {
    let server = Server::start(&[]);
    let mut c = server.client().await;
    let empty = c.hash_kv(0).await.unwrap();
    assert_eq!((empty.hash(), empty.compact_version()), (1_084_519_789, -1));
    write_history(&mut c).await;
    let etcd = [
        (2, 2_587_454_935),
        (3, 1_827_592_406),
        (4, 2_825_311_341),
        (5, 3_070_838_689),
        (6, 2_421_439_420),
        (7, 369_917_563),
        (0, 369_917_563),
    ];
    for (rev, want) in etcd {
        let h = c.hash_kv(rev).await.unwrap();
        assert_eq!(h.hash(), want, "at revision {rev}");
        assert_eq!(h.header().unwrap().revision(), 7);
    }
    c.compact(4, None).await.unwrap();
    assert_eq!(c.hash_kv(5).await.unwrap().hash(), 1_360_066_936);
    let h = c.hash_kv(7).await.unwrap();
    assert_eq!((h.hash(), h.compact_version()), (4_121_474_603, 4));
    // etcd refuses the compaction revision itself, and future ones.
    let (code, msg) = status_of(c.hash_kv(4).await.unwrap_err());
    assert_eq!(
        (code, msg.as_str()),
        (
            tonic::Code::OutOfRange,
            "etcdserver: mvcc: required revision has been compacted"
        )
    );
    let (code, msg) = status_of(c.hash_kv(8).await.unwrap_err());
    assert_eq!(
        (code, msg.as_str()),
        (
            tonic::Code::OutOfRange,
            "etcdserver: mvcc: required revision is a future revision"
        )
    );
    c.compact(6, Some(CompactionOptions::new().with_physical()))
        .await
        .unwrap();
    let h = c.hash_kv(0).await.unwrap();
    assert_eq!((h.hash(), h.compact_version()), (728_829_835, 6));
}

/// HashKV and Hash (etcd's hash of the whole backend database: keys,
/// leases, members, auth, alarms) are equal on every member that applied
/// the same entries and survive a restart; Defragment answers as etcd and
/// changes neither.
#[tokio::test]
async fn hash_kv_is_equal_on_every_member_and_after_a_restart() {
    let mut cluster = Cluster::start(3, &[]);
    let mut c = cluster.members[0].client().await;
    write_history(&mut c).await;
    c.compact(4, None).await.unwrap();
    // A serializable read on each member shows it applied revision 7.
    for m in &cluster.members {
        let mut mc = m.client().await;
        let mut applied = false;
        for _ in 0..100 {
            let r = mc
                .get(
                    "a",
                    Some(etcd_client::GetOptions::new().with_serializable()),
                )
                .await
                .unwrap();
            if r.header().unwrap().revision() == 7 {
                applied = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(applied, "{} did not apply revision 7", m.endpoint());
        assert_eq!(mc.hash_kv(7).await.unwrap().hash(), 4_121_474_603);
    }
    let hashes = |cluster: &Cluster| {
        let endpoints: Vec<String> = cluster.members.iter().map(|m| m.endpoint()).collect();
        async move {
            let mut out = Vec::new();
            for e in endpoints {
                let mut mc = etcd_client::Client::connect([e], None).await.unwrap();
                let h = mc.hash().await.unwrap();
                assert_eq!(h.header().unwrap().revision(), 7);
                out.push(h.hash());
            }
            out
        }
    };
    let before = hashes(&cluster).await;
    assert!(before.iter().all(|h| *h == before[0]), "{before:?}");
    cluster.members[1].restart();
    let mut mc = cluster.members[1].client().await;
    assert_eq!(mc.hash_kv(7).await.unwrap().hash(), 4_121_474_603);
    assert_eq!(hashes(&cluster).await, before);
    for m in &cluster.members {
        m.client().await.defragment().await.unwrap();
    }
    assert_eq!(hashes(&cluster).await, before);
    c.put("a", "changed", None).await.unwrap();
    assert_ne!(c.hash().await.unwrap().hash(), before[0]);
}

/// The test mode that makes a member report a damaged history (its HashKV
/// off by one bit).
fn corrupt_hash(m: &mut Server) {
    m.env.push(("KEEL_TEST_CORRUPT_HASH".into(), "1".into()));
}

/// `--experimental-corrupt-check-time`: the leader compares its HashKV
/// with its followers' and raises CORRUPT for one whose history differs;
/// writes then fail with etcd's "etcdserver: corrupt cluster" on every
/// member while reads go on, until the alarm is disarmed.
#[tokio::test]
async fn the_leader_raises_corrupt_for_a_member_whose_history_differs() {
    let mut cluster = Cluster::start(3, &["--experimental-corrupt-check-time", "1s"]);
    let leader = cluster.leader().await;
    let victim = (leader + 1) % 3;
    corrupt_hash(&mut cluster.members[victim]);
    cluster.members[victim].restart();
    let mut v = cluster.members[victim].client().await;
    let victim_id = v.status().await.unwrap().header().unwrap().member_id();
    let mut c = cluster.members[leader].client().await;
    c.put("k", "v", None).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !alarms(&mut c)
        .await
        .contains(&(victim_id, AlarmType::Corrupt))
    {
        assert!(
            Instant::now() < deadline,
            "no CORRUPT alarm for {victim_id:x}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for m in &cluster.members {
        let mut mc = m.client().await;
        assert_eq!(
            status_of(mc.put("k", "w", None).await.unwrap_err()),
            (tonic::Code::DataLoss, "etcdserver: corrupt cluster".into()),
            "{}",
            m.endpoint()
        );
    }
    assert_eq!(c.get("k", None).await.unwrap().kvs()[0].value(), b"v");
    // Not ready (etcd 3.6's data_corruption check), but alive.
    let port = cluster.members[leader].port;
    let (code, body) = common::http_get(port, "/readyz").unwrap();
    assert_eq!(code, 503, "{body}");
    assert!(
        body.starts_with("[-]data_corruption failed: alarm activated: CORRUPT\n"),
        "{body}"
    );
    assert_eq!(
        common::http_get(port, "/livez").unwrap(),
        (200, "ok\n".into())
    );
    // With the damaged member gone, the alarm can be disarmed for good.
    cluster.members[victim].kill9();
    let mut opts = AlarmOptions::new();
    opts.with_member(victim_id);
    c.alarm(AlarmAction::Deactivate, AlarmType::Corrupt, Some(opts))
        .await
        .unwrap();
    c.put("k", "w", None).await.unwrap();
}

/// `--experimental-initial-corrupt-check` (kubeadm's etcd manifest passes
/// it, and keel refused to start on it): a member whose history matches
/// its peers' starts after checking; one whose history differs refuses to
/// start, with etcd's message.
#[tokio::test]
async fn the_initial_corrupt_check_stops_a_member_whose_history_differs() {
    let mut cluster = Cluster::start(3, &["--experimental-initial-corrupt-check"]);
    let mut c = cluster.members[0].client().await;
    c.put("k", "v", None).await.unwrap();
    cluster.members[2].restart();
    assert!(
        cluster.members[2]
            .logs()
            .contains("initial corruption checking passed"),
        "{}",
        cluster.members[2].logs()
    );
    corrupt_hash(&mut cluster.members[1]);
    let (code, out) = cluster.members[1].start_expect_exit();
    assert_eq!(code, Some(2), "{out}");
    assert!(out.contains("found data inconsistency with peers"), "{out}");
}
