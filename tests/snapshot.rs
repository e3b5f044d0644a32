//! Backups and migration: Maintenance.Snapshot in etcd's backend format,
//! `keel snapshot status|restore`, and etcd data directories refused. The
//! round trips through real etcd 3.4.23 and etcdctl run in CI
//! (`.ci/interop-snapshot.sh`).

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::{run_to_exit, Server};
use etcd_client::{Compare, CompareOp, GetOptions, PutOptions, Txn, TxnOp};
use sha2::{Digest, Sha256};

fn keel(args: &[&str]) -> (Option<i32>, String) {
    let mut c = Command::new(env!("CARGO_BIN_EXE_keel"));
    c.args(args);
    run_to_exit(c, Duration::from_secs(60))
}

/// `keel snapshot restore FILE --data-dir DIR` with more flags.
fn restore(file: &Path, dir: &Path, more: &[&str]) -> (Option<i32>, String) {
    let (file, dir) = (file.to_str().unwrap(), dir.to_str().unwrap());
    keel(&[&["snapshot", "restore", file, "--data-dir", dir], more].concat())
}

/// Everything a client can see of a store: (key, value, create, mod, version, lease).
async fn everything(
    c: &mut etcd_client::Client,
) -> (i64, Vec<(Vec<u8>, Vec<u8>, i64, i64, i64, i64)>) {
    let r = c
        .get("", Some(GetOptions::new().with_from_key()))
        .await
        .unwrap();
    let kvs = r
        .kvs()
        .iter()
        .map(|kv| {
            (
                kv.key().to_vec(),
                kv.value().to_vec(),
                kv.create_revision(),
                kv.mod_revision(),
                kv.version(),
                kv.lease(),
            )
        })
        .collect();
    (r.header().unwrap().revision(), kvs)
}

/// Story: `etcdctl snapshot save` answered Unimplemented, so keel had no
/// backups. Snapshot now streams the store as etcd's backend database in
/// etcd's chunks (at most 32 KiB, with the bytes still to come) and ends
/// with the SHA-256 of what came before; `keel snapshot status` reads it as
/// etcdctl does, and `keel snapshot restore` makes a data directory that a
/// member serves the same keys, revisions, versions and leases from.
#[tokio::test]
async fn a_snapshot_restores_into_a_member_with_the_same_history() {
    let server = Server::start(&[]);
    let mut c = server.client().await;
    let lease = c.lease_grant(600, None).await.unwrap().id();
    for i in 0..2_000 {
        let value = format!("value {i} {}", "x".repeat(i % 200));
        c.put(format!("key/{:04}", i % 700), value, None)
            .await
            .unwrap();
    }
    c.put("leased", "l", Some(PutOptions::new().with_lease(lease)))
        .await
        .unwrap();
    c.delete("key/0003", None).await.unwrap();
    c.txn(
        Txn::new()
            .when([Compare::version("key/0001", CompareOp::Greater, 0)])
            .and_then([
                TxnOp::put("txn/a", "1", None),
                TxnOp::delete("key/0002", None),
            ]),
    )
    .await
    .unwrap();
    c.compact(1_500, None).await.unwrap();
    let before = everything(&mut c).await;

    let mut stream = c.snapshot().await.unwrap();
    let mut blobs: Vec<(u64, Vec<u8>)> = Vec::new();
    while let Some(m) = tokio::time::timeout(Duration::from_secs(30), stream.message())
        .await
        .expect("snapshot stream stalled")
        .unwrap()
    {
        blobs.push((m.remaining_bytes(), m.blob().to_vec()));
    }
    let (last_remaining, sha) = blobs.pop().expect("blobs");
    assert_eq!(last_remaining, 0);
    let mut db = Vec::new();
    for (remaining, blob) in &blobs {
        assert!(
            !blob.is_empty() && blob.len() <= 32 * 1024,
            "{}",
            blob.len()
        );
        db.extend_from_slice(blob);
        assert_eq!(
            *remaining as usize,
            blobs.iter().map(|b| b.1.len()).sum::<usize>() - db.len()
        );
    }
    assert_eq!(db.len() % 4096, 0, "whole bbolt pages");
    assert_eq!(
        sha,
        Sha256::digest(&db).to_vec(),
        "the last blob is the SHA-256"
    );
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("backup.db");
    std::fs::write(&file, [db.as_slice(), &sha].concat()).unwrap();

    let (code, out) = keel(&["snapshot", "status", file.to_str().unwrap(), "-w", "json"]);
    assert_eq!(code, Some(0), "{out}");
    let status: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(status["revision"], before.0, "{out}");
    assert_eq!(status["totalSize"], db.len(), "{out}");

    // Restored into a member of its own, started with the same flags.
    let mut restored = Server::new(Vec::new());
    let cluster = format!("default={}", restored.peer_url());
    let peer_url = restored.peer_url();
    let (code, out) = restore(
        &file,
        &restored.dir,
        &[
            "--initial-cluster",
            &cluster,
            "--initial-advertise-peer-urls",
            &peer_url,
        ],
    );
    assert_eq!(code, Some(0), "{out}");
    restored.spawn();
    restored.wait_healthy();
    let mut r = restored.client().await;
    assert_eq!(everything(&mut r).await, before);
    assert_eq!(common::lease_ids(&mut r).await, [lease]);
    // The compaction came along: older revisions are gone, newer ones read.
    let err = r
        .get("key/0001", Some(GetOptions::new().with_revision(1_000)))
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("required revision has been compacted"),
        "{err}"
    );
    let old = r
        .get("key/0010", Some(GetOptions::new().with_revision(1_600)))
        .await
        .unwrap();
    let now = c
        .get("key/0010", Some(GetOptions::new().with_revision(1_600)))
        .await
        .unwrap();
    let fields = |r: &etcd_client::GetResponse| {
        r.kvs()
            .iter()
            .map(|kv| (kv.value().to_vec(), kv.mod_revision(), kv.version()))
            .collect::<Vec<_>>()
    };
    assert_eq!(fields(&old), fields(&now));
    assert_eq!(fields(&old).len(), 1);
    // And the restored member writes on from there, across a restart.
    let put = r.put("after", "restore", None).await.unwrap();
    assert_eq!(put.header().unwrap().revision(), before.0 + 1);
    restored.restart();
    let mut r = restored.client().await;
    assert_eq!(
        r.get("after", None).await.unwrap().kvs()[0].value(),
        b"restore"
    );

    // Restoring over an existing directory, or a damaged file, is refused.
    let (code, out) = restore(&file, &restored.dir, &[]);
    assert_eq!(code, Some(1));
    assert!(out.contains("exists"), "{out}");
    let mut damaged = std::fs::read(&file).unwrap();
    let middle = damaged.len() / 2;
    damaged[middle] ^= 0xff;
    std::fs::write(&file, &damaged).unwrap();
    let fresh = dir.path().join("fresh");
    let (code, out) = restore(&file, &fresh, &[]);
    assert_eq!(code, Some(1));
    assert!(out.contains("expected sha256"), "{out}");
    assert!(!fresh.exists());
}

fn listing(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for e in walk(dir) {
        out.push(e.strip_prefix(dir).unwrap().display().to_string());
    }
    out.sort();
    out
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        }
        out.push(p);
    }
    out
}

/// Story: started on an etcd data directory, keel came up empty and wrote
/// 128 MiB of its own WAL into etcd's member/wal. It now refuses, names the
/// migration, and leaves the directory as it was.
#[test]
fn an_etcd_data_directory_is_refused_and_left_alone() {
    for marker in [
        "member/snap/db",
        "member/wal/0000000000000000-0000000000000000.wal",
    ] {
        let mut server = Server::new(Vec::new());
        let path = server.dir.join(marker);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, b"etcd's bytes").unwrap();
        let before = listing(&server.dir);
        let (code, out) = server.start_expect_exit();
        assert_eq!(code, Some(1), "{out}");
        assert!(out.contains("this is an etcd data directory"), "{out}");
        assert!(out.contains("keel snapshot restore"), "{out}");
        assert_eq!(listing(&server.dir), before);
        assert_eq!(std::fs::read(&path).unwrap(), b"etcd's bytes");
    }
}
