//! etcd's backend database (`member/snap/db`, and what `etcdctl snapshot
//! save` receives): keel's store laid out in etcd 3.4's bbolt buckets.
//!
//! ```text
//! key              revision (main u64 BE | '_' | sub u64 BE [| 't' for a
//!                  tombstone]) -> mvccpb.KeyValue (a tombstone: the key only)
//! meta             consistent_index, term -> u64 BE;
//!                  scheduledCompactRev, finishedCompactRev -> revision
//! lease            id i64 BE -> leasepb.Lease { ID, TTL, RemainingTTL }
//! auth             authEnabled -> [1] or [0]; authRevision -> u64 BE
//! authUsers        name -> authpb.User;  authRoles: name -> authpb.Role
//! members          id in hex -> the member as JSON (etcd's membership.Member)
//! members_removed  id in hex -> "removed"
//! cluster          clusterVersion -> "3.4.0"
//! alarm            etcdserverpb.AlarmMember -> (empty)
//! ```

use std::fs::File;
use std::io;
use std::path::Path;

use std::collections::BTreeMap;

use keel_proto::{authpb, etcdserverpb, mvccpb};
use prost::Message;

use crate::auth::{AuthStore, PermKind, Permission, Role, User};
use crate::bolt::{BoltError, BoltReader, BoltWriter, ItemFn};
use crate::mvcc::hash::{bucket_key, stored_value};
use crate::mvcc::snapshot::StoreImage;
use crate::mvcc::{Event, KeyVersion, KvStore, LeaseRecord, Revision};

/// The cluster version snapshots carry: the lowest etcd that restores
/// them. keel reports 3.6.0 elsewhere, but etcd 3.5 refuses to start on a
/// backend whose cluster version is above its own ("cluster cannot be
/// downgraded"), and the format written is etcd 3.4's.
pub const CLUSTER_VERSION: &str = "3.4.0";

/// A member as etcd's membership store keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DbMember {
    pub id: u64,
    pub name: String,
    pub peer_urls: Vec<String>,
    pub client_urls: Vec<String>,
    pub is_learner: bool,
}

/// What etcd keeps beside the store in its backend.
#[derive(Debug, Clone, Default)]
pub struct DbMeta {
    /// The raft index the store has applied.
    pub consistent_index: u64,
    pub term: u64,
    pub members: Vec<DbMember>,
    pub removed: Vec<u64>,
    /// (member id, `etcdserverpb.AlarmType` wire value)
    pub alarms: Vec<(u64, i32)>,
}

/// etcd's 17-byte revision key, 18 with the tombstone mark.
pub fn revision_key(main: i64, sub: i64, tombstone: bool) -> Vec<u8> {
    let (k, len) = bucket_key(Revision { main, sub }, tombstone);
    k[..len].to_vec()
}

fn json_string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            // Go's encoder also escapes <, > and & for HTML.
            '<' | '>' | '&' => out.push_str(&format!("\\u{:04x}", c as u32)),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
}

fn json_strings(out: &mut String, items: &[String]) {
    out.push('[');
    for (i, s) in items.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        json_string(out, s);
    }
    out.push(']');
}

/// A member as Go's `json.Marshal(membership.Member)` writes it.
fn member_json(m: &DbMember) -> String {
    let mut out = format!("{{\"id\":{},\"peerURLs\":", m.id);
    json_strings(&mut out, &m.peer_urls);
    if m.is_learner {
        out.push_str(",\"isLearner\":true");
    }
    if !m.name.is_empty() {
        out.push_str(",\"name\":");
        json_string(&mut out, &m.name);
    }
    if !m.client_urls.is_empty() {
        out.push_str(",\"clientURLs\":");
        json_strings(&mut out, &m.client_urls);
    }
    out.push('}');
    out
}

/// Writes `image` with `meta` as an etcd backend database at `path`; its
/// size in bytes.
pub fn write_db(path: &Path, image: &StoreImage, meta: &DbMeta) -> io::Result<u64> {
    let (size, file) = write_db_to(File::create(path)?, image, meta)?;
    file.sync_all()?;
    Ok(size)
}

/// As [`write_db`], into an empty `file`; the size and the file, not
/// synced (Snapshot streams it from an unlinked file and never needs it
/// durable).
pub fn write_db_to(file: File, image: &StoreImage, meta: &DbMeta) -> io::Result<(u64, File)> {
    let mut w = BoltWriter::new(file)?;
    for (name, items) in buckets(image, meta) {
        w.bucket(name, items)?;
    }
    w.finish_file()
}

/// etcd's Maintenance.Hash: a CRC-32C over every bucket name, key and
/// value of the database [`write_db`] writes, in order, leaving out what
/// differs between members with the same state (the applied index and the
/// term, as etcd 3.5 leaves them out).
pub fn hash(image: &StoreImage, meta: &DbMeta) -> u32 {
    let mut h = 0u32;
    for (name, items) in buckets(image, meta) {
        h = crc32c::crc32c_append(h, name);
        for (k, v) in items {
            if name == b"meta" && (k == b"consistent_index" || k == b"term") {
                continue;
            }
            h = crc32c::crc32c_append(h, &k);
            h = crc32c::crc32c_append(h, &v);
        }
    }
    h
}

/// A bucket's items in key order.
type Items<'a> = Box<dyn Iterator<Item = (Vec<u8>, Vec<u8>)> + 'a>;

fn sorted<'a>(mut items: Vec<(Vec<u8>, Vec<u8>)>) -> Items<'a> {
    items.sort();
    items.dedup_by(|a, b| a.0 == b.0);
    Box::new(items.into_iter())
}

/// etcd's buckets for `image` and `meta`, in name order.
fn buckets<'a>(image: &'a StoreImage, meta: &'a DbMeta) -> Vec<(&'static [u8], Items<'a>)> {
    let keys = image.view.iter().map(|e| {
        let key = revision_key(e.kv.rev.main, e.kv.rev.sub, e.is_delete());
        (key, stored_value(e))
    });

    let mut meta_items = vec![
        (
            b"consistent_index".to_vec(),
            meta.consistent_index.to_be_bytes().to_vec(),
        ),
        (b"term".to_vec(), meta.term.to_be_bytes().to_vec()),
    ];
    if image.compact_rev > 0 {
        let rev = revision_key(image.compact_rev, 0, false);
        meta_items.push((b"finishedCompactRev".to_vec(), rev.clone()));
        meta_items.push((b"scheduledCompactRev".to_vec(), rev));
    }

    let leases = image.leases.iter().map(|l| {
        let lease = LeaseMessage {
            id: l.id,
            ttl: l.ttl,
            remaining_ttl: l.remaining,
        };
        (l.id.to_be_bytes().to_vec(), lease.encode_to_vec())
    });

    let auth = &image.auth;
    let auth_items = vec![
        (b"authEnabled".to_vec(), vec![u8::from(auth.enabled())]),
        (
            b"authRevision".to_vec(),
            auth.revision().to_be_bytes().to_vec(),
        ),
    ];
    let users = auth.users().iter().map(|(name, u)| {
        let user = authpb::User {
            name: name.clone().into_bytes().into(),
            password: u.password.clone().unwrap_or_default().into_bytes().into(),
            roles: u.roles.clone(),
            options: u
                .password
                .is_none()
                .then_some(authpb::UserAddOptions { no_password: true }),
        };
        (name.clone().into_bytes(), user.encode_to_vec())
    });
    let roles = auth.roles().iter().map(|(name, r)| {
        let role = authpb::Role {
            name: name.clone().into_bytes().into(),
            key_permission: r.perms.iter().map(Permission::to_pb).collect(),
        };
        (name.clone().into_bytes(), role.encode_to_vec())
    });

    let members = meta
        .members
        .iter()
        .map(|m| {
            (
                format!("{:x}", m.id).into_bytes(),
                member_json(m).into_bytes(),
            )
        })
        .collect();
    let removed = meta
        .removed
        .iter()
        .map(|id| (format!("{id:x}").into_bytes(), b"removed".to_vec()))
        .collect();
    let alarms = meta
        .alarms
        .iter()
        .map(|&(member_id, alarm)| {
            let m = etcdserverpb::AlarmMember { member_id, alarm };
            (m.encode_to_vec(), Vec::new())
        })
        .collect();
    let cluster = vec![(
        b"clusterVersion".to_vec(),
        CLUSTER_VERSION.as_bytes().to_vec(),
    )];

    // Names in byte order, as bbolt keeps them.
    vec![
        (&b"alarm"[..], sorted(alarms)),
        (b"auth", sorted(auth_items)),
        (b"authRoles", Box::new(roles)),
        (b"authUsers", Box::new(users)),
        (b"cluster", sorted(cluster)),
        (b"key", Box::new(keys)),
        (b"lease", sorted(leases.collect())),
        (b"members", sorted(members)),
        (b"members_removed", sorted(removed)),
        (b"meta", sorted(meta_items)),
    ]
}

/// What keel takes from an etcd backend database.
pub struct DbContents {
    pub store: KvStore,
    /// The raft index the database had applied (`meta/consistent_index`).
    pub consistent_index: u64,
}

/// Reads an etcd (or keel) backend database: every retained version, the
/// compaction, leases and auth. Members and alarms stay behind: a restored
/// member gets its membership from its flags, as etcd's restore does.
pub fn read_db(path: &Path) -> Result<DbContents, String> {
    let db = BoltReader::open(path).map_err(|e| e.to_string())?;
    let bucket = |name: &[u8]| db.bucket(name).map_err(|e| e.to_string());
    let each = |name: &[u8], f: &mut ItemFn<'_>| -> Result<(), String> {
        match bucket(name)? {
            Some(root) => db.for_each(&root, f).map_err(|e| e.to_string()),
            None => Ok(()),
        }
    };
    let bad = |what: &str, k: &[u8]| BoltError::Invalid(format!("{what} {k:02x?}"));

    let (mut consistent_index, mut finished, mut scheduled) = (0u64, -1i64, -1i64);
    each(b"meta", &mut |_, k, v| {
        let rev_main = |v: &[u8]| {
            v.get(..8)
                .map(|b| i64::from_be_bytes(b.try_into().expect("8 bytes")))
                .ok_or_else(|| bad("meta value of", k))
        };
        match k {
            b"consistent_index" => consistent_index = rev_main(v)? as u64,
            b"finishedCompactRev" => finished = rev_main(v)?,
            b"scheduledCompactRev" => scheduled = rev_main(v)?,
            _ => {}
        }
        Ok(())
    })?;
    // A compaction etcd scheduled but had not finished is run again on
    // start, as etcd does.
    let compact_rev = finished.max(scheduled);

    let mut events = Vec::new();
    let mut last_main = 0i64;
    each(b"key", &mut |_, k, v| {
        let tombstone = match k.len() {
            17 => false,
            18 if k[17] == b't' => true,
            _ => return Err(bad("revision key", k)),
        };
        let main = i64::from_be_bytes(k[..8].try_into().expect("8 bytes"));
        let sub = i64::from_be_bytes(k[9..17].try_into().expect("8 bytes"));
        let kv = mvccpb::KeyValue::decode(v).map_err(|_| bad("KeyValue at", k))?;
        let rev = Revision { main, sub };
        let version = if tombstone {
            KeyVersion::tombstone(rev)
        } else {
            KeyVersion {
                rev,
                create_revision: kv.create_revision,
                version: kv.version,
                lease: kv.lease,
                value: kv.value,
            }
        };
        last_main = main;
        events.push(Event {
            key: kv.key,
            kv: version,
        });
        Ok(())
    })?;
    // etcd's current revision: the newest version's, at least the
    // compaction's, 1 for an empty store.
    let current_rev = last_main.max(compact_rev).max(1);

    let mut leases = Vec::new();
    each(b"lease", &mut |_, k, v| {
        let l = LeaseMessage::decode(v).map_err(|_| bad("lease", k))?;
        leases.push(LeaseRecord {
            id: l.id,
            ttl: l.ttl,
            remaining: l.remaining_ttl,
        });
        Ok(())
    })?;

    let (mut enabled, mut auth_revision) = (false, 0u64);
    each(b"auth", &mut |_, k, v| {
        match k {
            b"authEnabled" => enabled = v == [1],
            b"authRevision" if v.len() == 8 => {
                auth_revision = u64::from_be_bytes(v.try_into().expect("8 bytes"))
            }
            _ => {}
        }
        Ok(())
    })?;
    let text = |b: &[u8], k: &[u8]| String::from_utf8(b.to_vec()).map_err(|_| bad("name", k));
    let mut users = BTreeMap::new();
    each(b"authUsers", &mut |_, k, v| {
        let u = authpb::User::decode(v).map_err(|_| bad("user", k))?;
        let no_password = u.options.is_some_and(|o| o.no_password) || u.password.is_empty();
        let user = User {
            password: (!no_password).then(|| text(&u.password, k)).transpose()?,
            roles: u.roles,
        };
        users.insert(text(&u.name, k)?, user);
        Ok(())
    })?;
    let mut roles = BTreeMap::new();
    each(b"authRoles", &mut |_, k, v| {
        let r = authpb::Role::decode(v).map_err(|_| bad("role", k))?;
        let perms = r
            .key_permission
            .into_iter()
            .map(|p| {
                Ok(Permission {
                    kind: PermKind::from_wire(p.perm_type)
                        .ok_or_else(|| bad("permission of", k))?,
                    key: p.key.to_vec(),
                    range_end: p.range_end.to_vec(),
                })
            })
            .collect::<Result<Vec<_>, BoltError>>()?;
        roles.insert(text(&r.name, k)?, Role { perms });
        Ok(())
    })?;

    let mut store = KvStore::restore(current_rev, compact_rev, events, &leases)?;
    store.set_auth(AuthStore::from_parts(enabled, auth_revision, users, roles));
    store.finish_compaction();
    Ok(DbContents {
        store,
        consistent_index,
    })
}

/// The main revision of the newest version in the key bucket (0 without
/// one), as `etcdctl snapshot status` reports it.
pub fn newest_revision(db: &BoltReader) -> Result<i64, BoltError> {
    let mut newest = 0;
    if let Some(root) = db.bucket(b"key")? {
        db.for_each(&root, &mut |_, k, _| {
            if let Some(main) = k.get(..8) {
                newest = i64::from_be_bytes(main.try_into().expect("8 bytes"));
            }
            Ok(())
        })?;
    }
    Ok(newest)
}

/// etcd's `leasepb.Lease`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct LeaseMessage {
    #[prost(int64, tag = "1")]
    pub id: i64,
    #[prost(int64, tag = "2")]
    pub ttl: i64,
    #[prost(int64, tag = "3")]
    pub remaining_ttl: i64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn members_are_written_as_go_marshals_them() {
        let m = DbMember {
            id: 0x8e9e05c52164694d,
            name: "m<1>".into(),
            peer_urls: vec!["http://127.0.0.1:2380".into()],
            client_urls: vec![],
            is_learner: false,
        };
        assert_eq!(
            member_json(&m),
            r#"{"id":10276657743932975437,"peerURLs":["http://127.0.0.1:2380"],"name":"m\u003c1\u003e"}"#
        );
    }

    #[test]
    fn a_store_reads_back_as_it_was_written() {
        use crate::mvcc::KeyRange;
        use bytes::Bytes;
        let mut s = KvStore::default();
        s.leases_mut().grant(7, 60);
        for i in 0..300 {
            let mut t = s.begin_write();
            t.put(
                format!("k{}", i % 50).as_bytes(),
                Bytes::from(vec![i as u8; 100]),
                0,
            );
            if i % 7 == 0 {
                t.put(b"leased", Bytes::from_static(b"x"), 7);
            }
            t.end();
        }
        let mut t = s.begin_write();
        t.delete_range(KeyRange::Single(b"k3"));
        t.end();
        s.compact(250).unwrap();
        s.finish_compaction();
        let mut auth = AuthStore::default();
        auth.user_add("root", Some("$2a$10$hash".into())).unwrap();
        auth.user_add("cert-only", None).unwrap();
        auth.role_add("r").unwrap();
        auth.role_grant_permission(
            "r",
            Permission {
                kind: PermKind::ReadWrite,
                key: b"a".to_vec(),
                range_end: b"b".to_vec(),
            },
        )
        .unwrap();
        auth.user_grant_role("root", "r").unwrap();
        s.set_auth(auth);

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        let meta = DbMeta {
            consistent_index: 42,
            ..Default::default()
        };
        write_db(&path, &s.image(), &meta).unwrap();
        let back = read_db(&path).unwrap();
        assert_eq!(back.consistent_index, 42);
        let r = &back.store;
        assert_eq!(r.current_rev(), s.current_rev());
        assert_eq!(r.compact_rev(), 250);
        let events = |s: &KvStore| s.events().cloned().collect::<Vec<_>>();
        assert_eq!(events(r), events(&s));
        assert_eq!(r.leases().records(), s.leases().records());
        assert_eq!(r.auth(), s.auth());
        assert_eq!(r.live_keys(), s.live_keys());
    }

    #[test]
    fn hash_covers_the_written_database_but_the_applied_index_and_term() {
        let mut s = KvStore::default();
        let mut t = s.begin_write();
        t.put(b"k", bytes::Bytes::from_static(b"v"), 0);
        t.end();
        let meta = |ci, term| DbMeta {
            consistent_index: ci,
            term,
            members: vec![DbMember {
                id: 1,
                name: "m".into(),
                peer_urls: vec!["http://p".into()],
                client_urls: vec!["http://c".into()],
                is_learner: false,
            }],
            ..Default::default()
        };
        let h = hash(&s.image(), &meta(5, 2));
        assert_eq!(h, hash(&s.image(), &meta(9, 3)));
        // The same CRC as the written file's items, the two left out.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        write_db(&path, &s.image(), &meta(5, 2)).unwrap();
        let db = BoltReader::open(&path).unwrap();
        let mut crc = 0u32;
        for (name, root) in db.buckets().unwrap() {
            crc = crc32c::crc32c_append(crc, &name);
            db.for_each(&root, &mut |_, k, v| {
                if !(name == b"meta" && (k == b"consistent_index" || k == b"term")) {
                    crc = crc32c::crc32c_append(crc, k);
                    crc = crc32c::crc32c_append(crc, v);
                }
                Ok(())
            })
            .unwrap();
        }
        assert_eq!(h, crc);
        let mut t = s.begin_write();
        t.put(b"k", bytes::Bytes::from_static(b"w"), 0);
        t.end();
        assert_ne!(hash(&s.image(), &meta(5, 2)), h);
    }

    #[test]
    fn revision_keys_sort_as_revisions() {
        let a = revision_key(2, 0, false);
        let b = revision_key(2, 1, true);
        let c = revision_key(10, 0, false);
        assert!(a < b && b < c);
        assert_eq!(a.len(), 17);
        assert_eq!(b.len(), 18);
    }
}
