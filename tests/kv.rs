//! The KV service through the `etcd-client` crate against the real binary:
//! Range, Put, DeleteRange, Txn and Compact, every option, with values,
//! revisions and headers checked.

mod common;

use common::{alarms, status_of, Server};
use etcd_client::{
    Compare, CompareOp, DeleteOptions, GetOptions, PutOptions, SortOrder, SortTarget, Txn, TxnOp,
    TxnOpResponse,
};

fn one_core() -> Server {
    Server::start(&["--cores", "1"])
}

#[tokio::test]
async fn headers_carry_ids_revision_and_term() {
    let s = one_core();
    let mut c = s.client().await;
    let empty = c.get("nothing", None).await.unwrap();
    let h = empty.header().unwrap();
    assert_eq!(h.revision(), 1, "an empty store is at revision 1, as etcd");
    assert_ne!(h.cluster_id(), 0);
    assert_ne!(h.member_id(), 0);
    assert!(h.raft_term() >= 1);
    let put = c.put("a", "1", None).await.unwrap();
    let ph = put.header().unwrap();
    assert_eq!(ph.revision(), 2);
    assert_eq!(
        (ph.cluster_id(), ph.member_id()),
        (h.cluster_id(), h.member_id())
    );
    let st = c.status().await.unwrap();
    assert_eq!(st.header().unwrap().member_id(), h.member_id());
    assert_eq!(st.leader(), h.member_id());
}

#[tokio::test]
async fn range_key_semantics_limit_count_and_history() {
    let s = one_core();
    let mut c = s.client().await;
    for (k, v) in [
        ("a", "1"),
        ("ab", "2"),
        ("abc", "3"),
        ("b", "4"),
        ("c", "5"),
    ] {
        c.put(k, v, None).await.unwrap();
    }
    // Single key.
    let r = c.get("ab", None).await.unwrap();
    assert_eq!(r.kvs().len(), 1);
    assert_eq!(r.kvs()[0].value(), b"2");
    assert_eq!(r.count(), 1);
    // Prefix.
    let r = c
        .get("ab", Some(GetOptions::new().with_prefix()))
        .await
        .unwrap();
    let keys: Vec<_> = r
        .kvs()
        .iter()
        .map(|kv| kv.key_str().unwrap().to_string())
        .collect();
    assert_eq!(keys, ["ab", "abc"]);
    // [key, range_end).
    let r = c
        .get("a", Some(GetOptions::new().with_range("b")))
        .await
        .unwrap();
    assert_eq!(r.count(), 3);
    // "\0": every key from key.
    let r = c
        .get("abc", Some(GetOptions::new().with_from_key()))
        .await
        .unwrap();
    assert_eq!(r.count(), 3);
    // All keys.
    let r = c
        .get("", Some(GetOptions::new().with_all_keys()))
        .await
        .unwrap();
    assert_eq!(r.count(), 5);
    // Limit: `more` and the full count.
    let r = c
        .get("", Some(GetOptions::new().with_all_keys().with_limit(2)))
        .await
        .unwrap();
    assert_eq!(r.kvs().len(), 2);
    assert!(r.more());
    assert_eq!(r.count(), 5);
    let r = c
        .get("", Some(GetOptions::new().with_all_keys().with_limit(5)))
        .await
        .unwrap();
    assert!(!r.more());
    // Historical read: at revision 3 only a and ab existed.
    c.put("a", "changed", None).await.unwrap();
    let r = c
        .get("", Some(GetOptions::new().with_all_keys().with_revision(3)))
        .await
        .unwrap();
    assert_eq!(r.count(), 2);
    assert_eq!(r.kvs()[0].value(), b"1");
    assert_eq!(
        r.header().unwrap().revision(),
        7,
        "header carries the current revision"
    );
    let kv = &c.get("a", None).await.unwrap().kvs()[0].clone();
    assert_eq!(
        (kv.create_revision(), kv.mod_revision(), kv.version()),
        (2, 7, 2)
    );
    // Serializable reads see the same data.
    let r = c
        .get("a", Some(GetOptions::new().with_serializable()))
        .await
        .unwrap();
    assert_eq!(r.kvs()[0].value(), b"changed");
}

#[tokio::test]
async fn range_sort_filters_keys_only_count_only() {
    let s = one_core();
    let mut c = s.client().await;
    // rev 2: x=3, rev 3: y=1, rev 4: z=2, rev 5: x=0 (x version 2)
    for (k, v) in [("x", "3"), ("y", "1"), ("z", "2"), ("x", "0")] {
        c.put(k, v, None).await.unwrap();
    }
    let keys = |r: &etcd_client::GetResponse| -> Vec<String> {
        r.kvs()
            .iter()
            .map(|kv| kv.key_str().unwrap().to_string())
            .collect()
    };
    let all = || GetOptions::new().with_prefix();
    let cases = [
        (SortTarget::Key, SortOrder::Descend, ["z", "y", "x"]),
        (SortTarget::Value, SortOrder::Ascend, ["x", "y", "z"]),
        (SortTarget::Version, SortOrder::Descend, ["x", "y", "z"]),
        (SortTarget::Create, SortOrder::Descend, ["z", "y", "x"]),
        (SortTarget::Mod, SortOrder::Ascend, ["y", "z", "x"]),
    ];
    for (target, order, want) in cases {
        let r = c
            .get("", Some(all().with_sort(target, order)))
            .await
            .unwrap();
        assert_eq!(keys(&r), want, "{target:?} {order:?}");
    }
    // Sorting by a non-key target with order NONE sorts ascending (etcd).
    let r = c
        .get(
            "",
            Some(all().with_sort(SortTarget::Value, SortOrder::None)),
        )
        .await
        .unwrap();
    assert_eq!(keys(&r), ["x", "y", "z"]);
    // Sort then limit.
    let r = c
        .get(
            "",
            Some(
                all()
                    .with_sort(SortTarget::Mod, SortOrder::Descend)
                    .with_limit(1),
            ),
        )
        .await
        .unwrap();
    assert_eq!(keys(&r), ["x"]);
    assert!(r.more());
    // Revision filters.
    let r = c
        .get("", Some(all().with_min_mod_revision(4)))
        .await
        .unwrap();
    assert_eq!(keys(&r), ["x", "z"]);
    let r = c
        .get("", Some(all().with_max_mod_revision(3)))
        .await
        .unwrap();
    assert_eq!(keys(&r), ["y"]);
    let r = c
        .get("", Some(all().with_min_create_revision(3)))
        .await
        .unwrap();
    assert_eq!(keys(&r), ["y", "z"]);
    let r = c
        .get("", Some(all().with_max_create_revision(2)))
        .await
        .unwrap();
    assert_eq!(keys(&r), ["x"]);
    // keys_only and count_only.
    let r = c.get("", Some(all().with_keys_only())).await.unwrap();
    assert!(r.kvs().iter().all(|kv| kv.value().is_empty()));
    assert_eq!(r.kvs()[0].version(), 2);
    let r = c.get("", Some(all().with_count_only())).await.unwrap();
    assert!(r.kvs().is_empty());
    assert_eq!(r.count(), 3);
}

#[tokio::test]
async fn put_options_and_errors() {
    let s = one_core();
    let mut c = s.client().await;
    c.put("k", "v1", None).await.unwrap();
    let r = c
        .put("k", "v2", Some(PutOptions::new().with_prev_key()))
        .await
        .unwrap();
    assert_eq!(r.prev_key().unwrap().value(), b"v1");
    let r = c
        .put("fresh", "x", Some(PutOptions::new().with_prev_key()))
        .await
        .unwrap();
    assert!(r.prev_key().is_none());
    // ignore_value keeps the value and bumps the version.
    c.put("k", "", Some(PutOptions::new().with_ignore_value()))
        .await
        .unwrap();
    let kv = c.get("k", None).await.unwrap().kvs()[0].clone();
    assert_eq!((kv.value(), kv.version()), (&b"v2"[..], 3));
    // ignore_lease keeps the (zero) lease.
    c.put("k", "v4", Some(PutOptions::new().with_ignore_lease()))
        .await
        .unwrap();
    assert_eq!(c.get("k", None).await.unwrap().kvs()[0].value(), b"v4");

    let err = |e| status_of(e);
    let e = err(c
        .put("missing", "", Some(PutOptions::new().with_ignore_value()))
        .await
        .unwrap_err());
    assert_eq!(
        e,
        (
            tonic::Code::InvalidArgument,
            "etcdserver: key not found".into()
        )
    );
    let e = err(c
        .put("k", "v", Some(PutOptions::new().with_ignore_value()))
        .await
        .unwrap_err());
    assert_eq!(
        e,
        (
            tonic::Code::InvalidArgument,
            "etcdserver: value is provided".into()
        )
    );
    let e = err(c
        .put(
            "k",
            "v",
            Some(PutOptions::new().with_ignore_lease().with_lease(5)),
        )
        .await
        .unwrap_err());
    assert_eq!(
        e,
        (
            tonic::Code::InvalidArgument,
            "etcdserver: lease is provided".into()
        )
    );
    let e = err(c
        .put("k", "v", Some(PutOptions::new().with_lease(12345)))
        .await
        .unwrap_err());
    assert_eq!(
        e,
        (
            tonic::Code::NotFound,
            "etcdserver: requested lease not found".into()
        )
    );
    let e = err(c.put("", "v", None).await.unwrap_err());
    assert_eq!(
        e,
        (
            tonic::Code::InvalidArgument,
            "etcdserver: key is not provided".into()
        )
    );
    // None of the refused puts changed anything.
    assert_eq!(
        c.get("k", None).await.unwrap().header().unwrap().revision(),
        6
    );
}

#[tokio::test]
async fn delete_range_counts_and_prev_kvs() {
    let s = one_core();
    let mut c = s.client().await;
    for k in ["p/1", "p/2", "p/3", "q"] {
        c.put(k, k, None).await.unwrap();
    }
    let r = c
        .delete(
            "p/",
            Some(DeleteOptions::new().with_prefix().with_prev_key()),
        )
        .await
        .unwrap();
    assert_eq!(r.deleted(), 3);
    let prev: Vec<_> = r
        .prev_kvs()
        .iter()
        .map(|kv| kv.value_str().unwrap().to_string())
        .collect();
    assert_eq!(prev, ["p/1", "p/2", "p/3"]);
    assert_eq!(
        r.header().unwrap().revision(),
        6,
        "one revision for the whole delete"
    );
    let r = c.delete("nothing", None).await.unwrap();
    assert_eq!(r.deleted(), 0);
    assert_eq!(
        r.header().unwrap().revision(),
        6,
        "deleting nothing makes no revision"
    );
    let r = c.delete("q", None).await.unwrap();
    assert_eq!((r.deleted(), r.header().unwrap().revision()), (1, 7));
    // Re-creating a deleted key starts a new generation.
    c.put("q", "again", None).await.unwrap();
    let kv = c.get("q", None).await.unwrap().kvs()[0].clone();
    assert_eq!((kv.create_revision(), kv.version()), (8, 1));
    let e = status_of(c.delete("", None).await.unwrap_err());
    assert_eq!(
        e,
        (
            tonic::Code::InvalidArgument,
            "etcdserver: key is not provided".into()
        )
    );
}

#[tokio::test]
async fn txn_compares_every_target_and_result() {
    let s = one_core();
    let mut c = s.client().await;
    c.put("t", "v", None).await.unwrap(); // rev 2
    c.put("t", "w", None).await.unwrap(); // rev 3, version 2
    let check = |cmp: Compare, want: bool| (cmp, want);
    let cases = vec![
        check(Compare::value("t", CompareOp::Equal, "w"), true),
        check(Compare::value("t", CompareOp::NotEqual, "w"), false),
        check(Compare::value("t", CompareOp::Greater, "a"), true),
        check(Compare::value("t", CompareOp::Less, "a"), false),
        check(Compare::version("t", CompareOp::Equal, 2), true),
        check(Compare::version("t", CompareOp::Greater, 2), false),
        check(Compare::create_revision("t", CompareOp::Equal, 2), true),
        check(Compare::create_revision("t", CompareOp::Less, 2), false),
        check(Compare::mod_revision("t", CompareOp::Equal, 3), true),
        check(Compare::mod_revision("t", CompareOp::NotEqual, 3), false),
        check(Compare::lease("t", CompareOp::Equal, 0), true),
        check(Compare::lease("t", CompareOp::Greater, 0), false),
        // Missing keys compare as zero values; a value compare fails.
        check(Compare::version("missing", CompareOp::Equal, 0), true),
        check(
            Compare::create_revision("missing", CompareOp::Equal, 0),
            true,
        ),
        check(Compare::value("missing", CompareOp::Equal, ""), false),
    ];
    for (cmp, want) in cases {
        let dbg = format!("{cmp:?}");
        let r = c.txn(Txn::new().when([cmp])).await.unwrap();
        assert_eq!(r.succeeded(), want, "{dbg}");
    }
    // Range compares: every key in range must match.
    c.put("r/1", "same", None).await.unwrap();
    c.put("r/2", "same", None).await.unwrap();
    let r = c
        .txn(Txn::new().when([Compare::value("r/", CompareOp::Equal, "same").with_prefix()]))
        .await
        .unwrap();
    assert!(r.succeeded());
    c.put("r/3", "other", None).await.unwrap();
    let r = c
        .txn(Txn::new().when([Compare::value("r/", CompareOp::Equal, "same").with_prefix()]))
        .await
        .unwrap();
    assert!(!r.succeeded());
    let r = c
        .txn(
            Txn::new().when([Compare::mod_revision("r/1", CompareOp::Less, 100).with_range("r/3")]),
        )
        .await
        .unwrap();
    assert!(r.succeeded());
}

#[tokio::test]
async fn txn_is_one_revision_and_nests() {
    let s = one_core();
    let mut c = s.client().await;
    c.put("n", "1", None).await.unwrap(); // rev 2
    let inner = Txn::new()
        .when([Compare::value("n", CompareOp::Equal, "nope")])
        .and_then([TxnOp::put("inner-then", "x", None)])
        .or_else([TxnOp::put("inner-else", "y", None), TxnOp::get("n", None)]);
    let outer = Txn::new()
        .when([Compare::value("n", CompareOp::Equal, "1")])
        .and_then([
            TxnOp::put("a", "1", None),
            TxnOp::put("b", "2", None),
            TxnOp::get("a", None),
            TxnOp::delete("n", Some(DeleteOptions::new().with_prev_key())),
            TxnOp::txn(inner),
        ])
        .or_else([TxnOp::put("never", "x", None)]);
    let r = c.txn(outer).await.unwrap();
    assert!(r.succeeded());
    assert_eq!(r.header().unwrap().revision(), 3);
    let ops = r.op_responses();
    assert_eq!(ops.len(), 5);
    match &ops[2] {
        TxnOpResponse::Get(g) => {
            assert_eq!(
                g.kvs()[0].value(),
                b"1",
                "a read in a txn sees the txn's earlier writes"
            );
            assert_eq!(g.kvs()[0].mod_revision(), 3);
        }
        other => panic!("{other:?}"),
    }
    match &ops[3] {
        TxnOpResponse::Delete(d) => assert_eq!(d.deleted(), 1),
        other => panic!("{other:?}"),
    }
    match &ops[4] {
        TxnOpResponse::Txn(t) => {
            assert!(!t.succeeded());
            match &t.op_responses()[1] {
                // The nested compare saw the store before the outer txn ran.
                TxnOpResponse::Get(g) => {
                    assert!(g.kvs().is_empty(), "n was deleted earlier in the txn")
                }
                other => panic!("{other:?}"),
            }
        }
        other => panic!("{other:?}"),
    }
    // Every change has the one revision.
    for k in ["a", "b", "inner-else"] {
        let kv = c.get(k, None).await.unwrap().kvs()[0].clone();
        assert_eq!(kv.mod_revision(), 3, "{k}");
    }
    assert!(c.get("inner-then", None).await.unwrap().kvs().is_empty());
    assert!(c.get("never", None).await.unwrap().kvs().is_empty());
    // A read-only txn makes no revision.
    let r = c
        .txn(Txn::new().and_then([TxnOp::get("a", None)]))
        .await
        .unwrap();
    assert_eq!(r.header().unwrap().revision(), 3);
}

#[tokio::test]
async fn txn_refusals() {
    let s = Server::start(&["--cores", "1", "--max-txn-ops", "4"]);
    let mut c = s.client().await;
    let dup = Txn::new().and_then([TxnOp::put("d", "1", None), TxnOp::put("d", "2", None)]);
    assert_eq!(
        status_of(c.txn(dup).await.unwrap_err()),
        (
            tonic::Code::InvalidArgument,
            "etcdserver: duplicate key given in txn request".into()
        )
    );
    let put_in_deleted = Txn::new().and_then([
        TxnOp::delete("a", Some(DeleteOptions::new().with_range("z"))),
        TxnOp::put("m", "1", None),
    ]);
    assert_eq!(
        status_of(c.txn(put_in_deleted).await.unwrap_err()).1,
        "etcdserver: duplicate key given in txn request"
    );
    let nested_dup = Txn::new().and_then([
        TxnOp::put("x", "1", None),
        TxnOp::txn(Txn::new().and_then([TxnOp::put("x", "2", None)])),
    ]);
    assert_eq!(
        status_of(c.txn(nested_dup).await.unwrap_err()).1,
        "etcdserver: duplicate key given in txn request"
    );
    // Then/else may put the same key.
    let ok = Txn::new()
        .and_then([TxnOp::put("x", "1", None)])
        .or_else([TxnOp::put("x", "2", None)]);
    assert!(c.txn(ok).await.unwrap().succeeded());
    let many: Vec<_> = (0..5)
        .map(|i| TxnOp::put(format!("k{i}"), "v", None))
        .collect();
    assert_eq!(
        status_of(c.txn(Txn::new().and_then(many)).await.unwrap_err()),
        (
            tonic::Code::InvalidArgument,
            "etcdserver: too many operations in txn request".into()
        )
    );
    let empty_key = Txn::new().when([Compare::version("", CompareOp::Equal, 0)]);
    assert_eq!(
        status_of(c.txn(empty_key).await.unwrap_err()).1,
        "etcdserver: key is not provided"
    );
    let lease = Txn::new().and_then([TxnOp::put("l", "v", Some(PutOptions::new().with_lease(77)))]);
    assert_eq!(
        status_of(c.txn(lease).await.unwrap_err()),
        (
            tonic::Code::NotFound,
            "etcdserver: requested lease not found".into()
        )
    );
    let future =
        Txn::new().and_then([TxnOp::get("x", Some(GetOptions::new().with_revision(1000)))]);
    assert_eq!(
        status_of(c.txn(future).await.unwrap_err()),
        (
            tonic::Code::OutOfRange,
            "etcdserver: mvcc: required revision is a future revision".into()
        )
    );
    // Nothing refused changed the store: only the then/else txn wrote.
    assert_eq!(
        c.get("x", None).await.unwrap().header().unwrap().revision(),
        2
    );
}

#[tokio::test]
async fn compaction_and_revision_errors() {
    let s = one_core();
    let mut c = s.client().await;
    for i in 0..5 {
        c.put("c", format!("v{i}"), None).await.unwrap(); // revs 2..=6
    }
    let e = status_of(
        c.get("c", Some(GetOptions::new().with_revision(7)))
            .await
            .unwrap_err(),
    );
    assert_eq!(
        e,
        (
            tonic::Code::OutOfRange,
            "etcdserver: mvcc: required revision is a future revision".into()
        )
    );
    let r = c
        .compact(
            4,
            Some(etcd_client::CompactionOptions::new().with_physical()),
        )
        .await
        .unwrap();
    assert_eq!(r.header().unwrap().revision(), 6);
    let e = status_of(
        c.get("c", Some(GetOptions::new().with_revision(3)))
            .await
            .unwrap_err(),
    );
    assert_eq!(
        e,
        (
            tonic::Code::OutOfRange,
            "etcdserver: mvcc: required revision has been compacted".into()
        )
    );
    // The compaction revision itself is still readable.
    let r = c
        .get("c", Some(GetOptions::new().with_revision(4)))
        .await
        .unwrap();
    assert_eq!(r.kvs()[0].value(), b"v2");
    assert_eq!(
        status_of(c.compact(4, None).await.unwrap_err()).1,
        "etcdserver: mvcc: required revision has been compacted"
    );
    assert_eq!(
        status_of(c.compact(99, None).await.unwrap_err()).1,
        "etcdserver: mvcc: required revision is a future revision"
    );
    // Compaction survives a restart.
    drop(c);
    let mut s = s;
    s.restart();
    let mut c = s.client().await;
    let e = status_of(
        c.get("c", Some(GetOptions::new().with_revision(3)))
            .await
            .unwrap_err(),
    );
    assert_eq!(e.0, tonic::Code::OutOfRange);
    assert_eq!(c.get("c", None).await.unwrap().kvs()[0].value(), b"v4");
}

#[tokio::test]
async fn request_too_large() {
    let s = Server::start(&["--cores", "1", "--max-request-bytes", "10000"]);
    let mut c = s.client().await;
    let e = status_of(c.put("big", vec![b'x'; 20_000], None).await.unwrap_err());
    assert_eq!(
        e,
        (
            tonic::Code::InvalidArgument,
            "etcdserver: request is too large".into()
        )
    );
    // Beyond the gRPC limit (limit + 512 KiB) the transport refuses it.
    let e = status_of(c.put("huge", vec![b'x'; 600_000], None).await.unwrap_err());
    assert_eq!(e.0, tonic::Code::ResourceExhausted);
    assert!(
        e.1.starts_with("grpc: received message larger than max"),
        "{}",
        e.1
    );
    c.put("small", vec![b'x'; 5_000], None).await.unwrap();
}

/// etcd's space quota, as etcd 3.4.23 answers (checked side by side): a
/// write past `--quota-backend-bytes` fails with "database space exceeded"
/// and raises NOSPACE; while it is raised, puts, lease grants and writing
/// txns fail on every member, reads, deletes and read-only txns work,
/// Status lists it among its errors and /health says false; it survives a
/// restart and goes only when disarmed.
#[tokio::test]
async fn space_quota_raises_nospace_until_disarmed() {
    use etcd_client::{AlarmAction, AlarmOptions, AlarmType};
    let mut s = Server::start(&["--cores", "1", "--quota-backend-bytes", "200000"]);
    let mut c = s.client().await;
    let no_space = (
        tonic::Code::ResourceExhausted,
        "etcdserver: mvcc: database space exceeded".to_string(),
    );
    let value = vec![b'x'; 20_000];
    let mut stored = 0;
    loop {
        match c.put(format!("q/{stored}"), value.clone(), None).await {
            Ok(_) => stored += 1,
            Err(e) => {
                assert_eq!(status_of(e), no_space);
                break;
            }
        }
        assert!(stored < 20, "no quota after {stored} puts of 20 kB");
    }
    assert!(stored >= 5, "refused after only {stored} puts");
    let me = c.status().await.unwrap().header().unwrap().member_id();
    assert_eq!(alarms(&mut c).await, vec![(me, AlarmType::Nospace)]);
    let status = c.status().await.unwrap();
    assert_eq!(status.errors(), [format!("memberID:{me} alarm:NOSPACE ")]);
    let (code, body) = common::http_get(s.port, "/health").unwrap();
    assert_eq!((code, body.as_str()), (503, "{\"health\":\"false\"}\n"));
    // etcd's exclude: the alarm named is ignored; serializable reads locally.
    for path in [
        "/health?exclude=NOSPACE",
        "/health?exclude=NOSPACE&serializable=true",
    ] {
        let (code, body) = common::http_get(s.port, path).unwrap();
        assert_eq!(
            (code, body.as_str()),
            (200, r#"{"health":"true"}"#),
            "{path}"
        );
    }
    let (code, _) = common::http_get(s.port, "/health?exclude=CORRUPT").unwrap();
    assert_eq!(code, 503);
    // NOSPACE leaves a member alive and ready (reads work).
    assert_eq!(
        common::http_get(s.port, "/livez").unwrap(),
        (200, "ok\n".into())
    );
    assert_eq!(
        common::http_get(s.port, "/readyz?verbose").unwrap(),
        (
            200,
            "[+]data_corruption ok\n[+]serializable_read ok\n[+]linearizable_read ok\n[+]non_learner ok\nok\n"
                .into()
        )
    );
    // Refused while the alarm is up, even small writes.
    assert_eq!(
        status_of(c.put("small", "x", None).await.unwrap_err()),
        no_space
    );
    assert_eq!(
        status_of(c.lease_grant(10, None).await.unwrap_err()),
        no_space
    );
    let write = Txn::new().and_then([TxnOp::put("t", "v", None)]);
    assert_eq!(status_of(c.txn(write).await.unwrap_err()), no_space);
    // Reads, deletes and read-only txns work.
    let read = Txn::new().and_then([TxnOp::get("q/0", None)]);
    assert!(c.txn(read).await.unwrap().succeeded());
    assert_eq!(c.get("q/0", None).await.unwrap().kvs().len(), 1);
    let deleted = c
        .delete("q/", Some(DeleteOptions::new().with_prefix()))
        .await
        .unwrap();
    assert_eq!(deleted.deleted(), stored);
    let rev = deleted.header().unwrap().revision();
    c.compact(rev, None).await.unwrap();
    assert_eq!(
        status_of(c.put("small", "x", None).await.unwrap_err()),
        no_space
    );
    // Raft state: still raised after a restart.
    s.kill9();
    s.spawn();
    s.wait_serving();
    let mut c = s.client().await;
    assert_eq!(alarms(&mut c).await, vec![(me, AlarmType::Nospace)]);
    assert_eq!(
        status_of(c.put("small", "x", None).await.unwrap_err()),
        no_space
    );
    // Disarmed (as `etcdctl alarm disarm` does), writes work again.
    let mut opts = AlarmOptions::new();
    opts.with_member(me);
    let r = c
        .alarm(AlarmAction::Deactivate, AlarmType::Nospace, Some(opts))
        .await
        .unwrap();
    assert_eq!(r.alarms().len(), 1);
    assert!(alarms(&mut c).await.is_empty());
    c.put("small", "x", None).await.unwrap();
    c.lease_grant(10, None).await.unwrap();
    let (code, _) = common::http_get(s.port, "/health").unwrap();
    assert_eq!(code, 200);
}

/// Ranges of more keys than one step reads (4,096) are read in steps and
/// their answers built and encoded off the raft core: the answer is the
/// same as a small range's would be, sorted, limited and counted.
#[tokio::test]
async fn a_range_of_many_keys_is_whole_sorted_and_limited() {
    let server = Server::start(&[]);
    let mut c = server.client().await;
    let n = 10_000usize;
    for chunk in (0..n).collect::<Vec<_>>().chunks(100) {
        let ops: Vec<TxnOp> = chunk
            .iter()
            .map(|i| TxnOp::put(format!("many/{i:05}"), format!("{}", n - i), None))
            .collect();
        c.txn(Txn::new().and_then(ops)).await.unwrap();
    }
    let all = c
        .get("many/", Some(GetOptions::new().with_prefix()))
        .await
        .unwrap();
    assert_eq!(
        (all.count(), all.kvs().len(), all.more()),
        (n as i64, n, false)
    );
    assert!(all.kvs().windows(2).all(|w| w[0].key() < w[1].key()));
    assert_eq!(
        all.kvs()[n - 1].key(),
        format!("many/{:05}", n - 1).as_bytes()
    );
    // Sorted by key, descending, limited: the whole range is sorted first.
    let newest = c
        .get(
            "many/",
            Some(
                GetOptions::new()
                    .with_prefix()
                    .with_sort(SortTarget::Key, SortOrder::Descend)
                    .with_limit(3),
            ),
        )
        .await
        .unwrap();
    let keys: Vec<&str> = newest
        .kvs()
        .iter()
        .map(|kv| kv.key_str().unwrap())
        .collect();
    assert_eq!(keys, ["many/09999", "many/09998", "many/09997"]);
    assert_eq!((newest.count(), newest.more()), (n as i64, true));
    let keys_only = c
        .get(
            "many/",
            Some(GetOptions::new().with_prefix().with_keys_only()),
        )
        .await
        .unwrap();
    assert_eq!(keys_only.kvs().len(), n);
    assert!(keys_only.kvs().iter().all(|kv| kv.value().is_empty()));
}
