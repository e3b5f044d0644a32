//! Lease commands applied to the store: grant, attach, revoke, checkpoint.

use bytes::Bytes;
use keel_proto::command::{
    Command, DeleteRangeCmd, LeaseCheckpointCmd, LeaseGrantCmd, LeaseRevokeCmd, PutCmd,
};
use keel_storage::mvcc::{CommandResponse, KvStore, MvccError, RangeArgs};

fn apply(store: &mut KvStore, cmd: Command) -> Result<CommandResponse, MvccError> {
    let owner = Bytes::from_owner(cmd.to_bytes());
    let archived = Command::access(&owner).unwrap();
    store.apply(archived, &owner)
}

fn put(store: &mut KvStore, key: &str, lease: i64) -> Result<CommandResponse, MvccError> {
    apply(
        store,
        Command::Put(PutCmd {
            key: key.into(),
            value: b"v".to_vec(),
            lease,
            ..Default::default()
        }),
    )
}

fn keys(store: &KvStore) -> Vec<String> {
    let args = RangeArgs {
        key: b"\0",
        range_end: b"\0",
        ..Default::default()
    };
    store
        .range(&args, store.current_rev())
        .unwrap()
        .kvs
        .iter()
        .map(|kv| String::from_utf8(kv.key.to_vec()).unwrap())
        .collect()
}

#[test]
fn grant_attach_revoke_in_one_revision() {
    let mut s = KvStore::default();
    let grant = |id, ttl| Command::LeaseGrant(LeaseGrantCmd { id, ttl });
    let CommandResponse::LeaseGrant(g) = apply(&mut s, grant(7, 30)).unwrap() else {
        panic!("wrong response");
    };
    assert_eq!((g.id, g.ttl), (7, 30));
    assert_eq!(s.current_rev(), 1, "a grant makes no revision");
    assert_eq!(apply(&mut s, grant(7, 30)), Err(MvccError::LeaseExists));
    assert_eq!(put(&mut s, "x", 8), Err(MvccError::LeaseNotFound));

    put(&mut s, "a", 7).unwrap();
    put(&mut s, "b", 7).unwrap();
    put(&mut s, "c", 7).unwrap();
    put(&mut s, "plain", 0).unwrap();
    // Re-put without the lease detaches; deleting detaches.
    put(&mut s, "b", 0).unwrap();
    apply(
        &mut s,
        Command::DeleteRange(DeleteRangeCmd {
            key: b"c".to_vec(),
            ..Default::default()
        }),
    )
    .unwrap();
    put(&mut s, "d", 7).unwrap();
    let attached: Vec<&[u8]> = s
        .leases()
        .get(7)
        .unwrap()
        .keys
        .iter()
        .map(|k| &k[..])
        .collect();
    assert_eq!(attached, [b"a".as_slice(), b"d"]);

    let before = s.current_rev();
    let CommandResponse::LeaseRevoke(r) =
        apply(&mut s, Command::LeaseRevoke(LeaseRevokeCmd { id: 7 })).unwrap()
    else {
        panic!("wrong response");
    };
    assert_eq!(r.header.unwrap().revision, before + 1);
    let deletes: Vec<(i64, Vec<u8>)> = s
        .events_since(before + 1)
        .map(|e| (e.rev().main, e.key.to_vec()))
        .collect();
    assert_eq!(
        deletes,
        [(before + 1, b"a".to_vec()), (before + 1, b"d".to_vec())]
    );
    assert_eq!(keys(&s), ["b", "plain"]);
    assert!(!s.leases().exists(7));
    assert_eq!(
        apply(&mut s, Command::LeaseRevoke(LeaseRevokeCmd { id: 7 })),
        Err(MvccError::LeaseNotFound)
    );

    // A lease without keys is revoked without a revision.
    apply(&mut s, grant(9, 5)).unwrap();
    let rev = s.current_rev();
    apply(&mut s, Command::LeaseRevoke(LeaseRevokeCmd { id: 9 })).unwrap();
    assert_eq!(s.current_rev(), rev);
}

#[test]
fn checkpoints_record_remaining_ttl() {
    let mut s = KvStore::default();
    apply(
        &mut s,
        Command::LeaseGrant(LeaseGrantCmd { id: 1, ttl: 100 }),
    )
    .unwrap();
    apply(
        &mut s,
        Command::LeaseCheckpoint(LeaseCheckpointCmd {
            checkpoints: vec![(1, 42), (2, 5)],
        }),
    )
    .unwrap();
    assert_eq!(s.leases().get(1).unwrap().remaining, 42);
    assert!(!s.leases().exists(2));
}
