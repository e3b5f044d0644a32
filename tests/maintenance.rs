//! The Maintenance service's hashes: HashKV as etcd 3.4 defines it, equal
//! to etcd's own for the same history and equal across members.

mod common;

use common::{status_of, Cluster, Server};
use etcd_client::{
    CompactionOptions, Compare, CompareOp, LeaseGrantOptions, PutOptions, Txn, TxnOp,
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
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        assert!(applied, "{} did not apply revision 7", m.endpoint());
        assert_eq!(mc.hash_kv(7).await.unwrap().hash(), 4_121_474_603);
    }
    cluster.members[1].restart();
    let mut mc = cluster.members[1].client().await;
    assert_eq!(mc.hash_kv(7).await.unwrap().hash(), 4_121_474_603);
}
