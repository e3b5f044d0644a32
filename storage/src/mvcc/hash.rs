//! etcd's HashKV, computed the way etcd 3.4 computes it over its bbolt key
//! bucket, so a keel member and an etcd member with the same history give
//! the same number (and `etcdctl endpoint hashkv` can compare them).
//!
//! etcd hashes (crc32, Castagnoli) the bucket name `key`, then every stored
//! version up to the revision, in revision order: the bucket key (8 bytes
//! main revision and 8 bytes sub revision, big-endian, joined by `_`, with
//! `t` appended for a tombstone) and the value (an `mvccpb.KeyValue`; for a
//! tombstone only its key). A version at or below the compaction revision
//! counts only if it is what its key holds at the hashed revision
//! (etcd 3.4's `kvindex.Keep(rev)`): one that a later write (up to the
//! hashed revision) replaced or deleted does not.
//!
//! keel's revision log holds, below the compaction revision, one version per
//! key (the one compaction keeps) once a compaction has finished, which is
//! why the caller hashes only then.

use std::collections::HashSet;

use bytes::Bytes;
use keel_proto::mvccpb;
use prost::Message;

use super::{Event, LogView, Revision};

/// etcd's bucket key for a version: `main` `_` `sub`, `t` for a tombstone.
pub(crate) fn bucket_key(rev: Revision, tombstone: bool) -> ([u8; 18], usize) {
    let mut k = [0u8; 18];
    k[..8].copy_from_slice(&rev.main.to_be_bytes());
    k[8] = b'_';
    k[9..17].copy_from_slice(&rev.sub.to_be_bytes());
    if tombstone {
        k[17] = b't';
        (k, 18)
    } else {
        (k, 17)
    }
}

/// The `mvccpb.KeyValue` etcd stores for a version.
pub(crate) fn stored_value(e: &Event) -> Vec<u8> {
    let kv = if e.is_delete() {
        mvccpb::KeyValue {
            key: e.key.clone(),
            ..Default::default()
        }
    } else {
        mvccpb::KeyValue {
            key: e.key.clone(),
            create_revision: e.kv.create_revision,
            mod_revision: e.kv.rev.main,
            version: e.kv.version,
            value: e.kv.value.clone(),
            lease: e.kv.lease,
        }
    };
    kv.encode_to_vec()
}

/// HashKV at `rev` over a view of a store whose compaction (at
/// `compact_rev`) has finished.
pub fn hash_kv(view: &LogView, rev: i64, compact_rev: i64) -> u32 {
    // Keys written after the compaction, up to `rev`: their versions at or
    // below the compaction revision are no longer what the key holds.
    let rewritten: HashSet<&Bytes> = view
        .iter()
        .skip_while(|e| e.rev().main <= compact_rev)
        .take_while(|e| e.rev().main <= rev)
        .map(|e| &e.key)
        .collect();
    let mut h = crc32c::crc32c(b"key");
    for e in view.iter().take_while(|e| e.rev().main <= rev) {
        if e.rev().main <= compact_rev && rewritten.contains(&e.key) {
            continue;
        }
        let (k, len) = bucket_key(e.rev(), e.is_delete());
        h = crc32c::crc32c_append(h, &k[..len]);
        h = crc32c::crc32c_append(h, &stored_value(e));
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mvcc::KvStore;

    /// The values etcd 3.4.23 gave for this history (`etcdctl endpoint
    /// hashkv --rev=N -w json`, 2026-11-30): put a=1; put b=2; a txn of
    /// put a=3, delete b, put d=x; put c=4 with lease 4660; delete a;
    /// put a=5; then compactions at 4 and at 6.
    #[test]
    fn equals_etcds_hash_for_the_same_history() {
        let mut s = KvStore::default();
        assert_eq!(
            hash_kv(&s.view(), 1, s.compact_rev()),
            1_084_519_789,
            "empty store"
        );
        let put = |s: &mut KvStore, k: &str, v: &str, lease: i64| {
            let mut t = s.begin_write();
            t.put(k.as_bytes(), Bytes::from(v.to_string()), lease);
            t.end();
        };
        put(&mut s, "a", "1", 0);
        put(&mut s, "b", "2", 0);
        let mut t = s.begin_write();
        t.put(b"a", Bytes::from_static(b"3"), 0);
        t.delete_range(crate::mvcc::KeyRange::Single(b"b"));
        t.put(b"d", Bytes::from_static(b"x"), 0);
        t.end();
        put(&mut s, "c", "4", 4660);
        let mut t = s.begin_write();
        t.delete_range(crate::mvcc::KeyRange::Single(b"a"));
        t.end();
        put(&mut s, "a", "5", 0);
        // The rest of etcd's figures are checked through the server
        // (tests/maintenance.rs).
        let etcd = [(2, 2_587_454_935), (4, 2_825_311_341), (7, 369_917_563)];
        for (rev, want) in etcd {
            assert_eq!(
                hash_kv(&s.view(), rev, s.compact_rev()),
                want,
                "at revision {rev}"
            );
        }
        s.compact(4).unwrap();
        while s.compacting() {
            s.compact_step();
        }
        assert_eq!(
            hash_kv(&s.view(), 5, 4),
            1_360_066_936,
            "at 5 after compacting at 4"
        );
        assert_eq!(
            hash_kv(&s.view(), 7, 4),
            4_121_474_603,
            "at 7 after compacting at 4"
        );
        s.compact(6).unwrap();
        while s.compacting() {
            s.compact_step();
        }
        assert_eq!(
            hash_kv(&s.view(), 7, 6),
            728_829_835,
            "at 7 after compacting at 6"
        );
    }
}
