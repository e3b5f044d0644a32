//! MVCC checked against a plain model under random operations.
//!
//! The model keeps, for every revision, the whole key space as a
//! `BTreeMap<key, (value, create_revision, mod_revision, version)>`. Random
//! puts, deletes (single and range), txns with compares and compactions are
//! applied to both, through the real command path (archived rkyv commands);
//! after each step random reads at random revisions must agree, and
//! compacted or future revisions must be refused exactly when the model says.

use std::collections::BTreeMap;

use bytes::Bytes;
use keel_proto::command::{
    Command, CompactCmd, CompareCmd, CompareValue, DeleteRangeCmd, OpCmd, PutCmd, RangeCmd, TxnCmd,
};
use keel_storage::mvcc::snapshot::{read_snapshot, write_snapshot};
use keel_storage::mvcc::{CommandResponse, KvStore, MvccError, RangeArgs};
use rand::{rngs::StdRng, Rng, SeedableRng};

type State = BTreeMap<Vec<u8>, (Vec<u8>, i64, i64, i64)>;

struct Model {
    /// `history[r]` is the key space at revision r (index 0 unused).
    history: Vec<State>,
    compact: i64,
}

impl Model {
    fn current(&self) -> i64 {
        self.history.len() as i64 - 1
    }
    fn state(&self) -> &State {
        self.history.last().unwrap()
    }
}

fn key(rng: &mut StdRng) -> Vec<u8> {
    format!("k{:02}", rng.gen_range(0..20)).into_bytes()
}

fn in_range(k: &[u8], start: &[u8], end: &[u8]) -> bool {
    match end {
        [] => k == start,
        [0] => k >= start,
        e => k >= start && k < e,
    }
}

fn apply(store: &mut KvStore, cmd: &Command) -> Result<CommandResponse, MvccError> {
    let bytes = cmd.to_bytes();
    let owner = Bytes::from_owner(bytes);
    let archived = Command::access(&owner).unwrap();
    store.apply(archived, &owner)
}

fn check_reads(store: &KvStore, model: &Model, rng: &mut StdRng) {
    for _ in 0..5 {
        let rev = rng.gen_range(-1..=model.current() + 1);
        let (start, end) = match rng.gen_range(0..3) {
            0 => (key(rng), vec![]),
            1 => (key(rng), vec![0]),
            _ => {
                let (a, b) = (key(rng), key(rng));
                (a.clone().min(b.clone()), a.max(b))
            }
        };
        let args = RangeArgs {
            key: &start,
            range_end: &end,
            revision: rev,
            ..Default::default()
        };
        let got = store.range(&args, store.current_rev());
        if rev > model.current() {
            assert_eq!(got, Err(MvccError::FutureRev));
            continue;
        }
        let at = if rev <= 0 { model.current() } else { rev };
        if at < model.compact {
            assert_eq!(
                got,
                Err(MvccError::Compacted),
                "rev {at} compact {}",
                model.compact
            );
            continue;
        }
        let got = got.unwrap();
        let want: Vec<_> = model.history[at as usize]
            .iter()
            .filter(|(k, _)| in_range(k, &start, &end))
            .collect();
        assert_eq!(got.count as usize, want.len(), "count at {at}");
        for (kv, (k, (v, c, m, ver))) in got.kvs.iter().zip(want) {
            assert_eq!(&kv.key[..], &k[..]);
            assert_eq!(&kv.value[..], &v[..]);
            assert_eq!(
                (kv.create_revision, kv.mod_revision, kv.version),
                (*c, *m, *ver),
                "key {k:?} at {at}"
            );
        }
    }
}

/// Applies a model put at `rev` to `next`, based on `prev` (the pre-txn state for
/// create/version, which matches etcd since a txn never writes a key twice).
fn model_put(next: &mut State, k: &[u8], v: &[u8], rev: i64) {
    let entry = match next.get(k) {
        Some((_, c, _, ver)) => (v.to_vec(), *c, rev, ver + 1),
        None => (v.to_vec(), rev, rev, 1),
    };
    next.insert(k.to_vec(), entry);
}

#[test]
fn random_operations_match_the_model() {
    for seed in 0..20u64 {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut store = KvStore::default();
        let mut model = Model {
            history: vec![State::new(), State::new()],
            compact: -1,
        };
        for step in 0..400 {
            let rev = model.current() + 1;
            let mut next = model.state().clone();
            let mut changed = false;
            match rng.gen_range(0..10) {
                0..=4 => {
                    let (k, v) = (key(&mut rng), format!("v{step}").into_bytes());
                    apply(
                        &mut store,
                        &Command::Put(PutCmd {
                            key: k.clone(),
                            value: v.clone(),
                            ..Default::default()
                        }),
                    )
                    .unwrap();
                    model_put(&mut next, &k, &v, rev);
                    changed = true;
                }
                5 | 6 => {
                    let (k, end) = if rng.gen_bool(0.5) {
                        (key(&mut rng), vec![])
                    } else {
                        let (a, b) = (key(&mut rng), key(&mut rng));
                        (a.clone().min(b.clone()), a.max(b))
                    };
                    let r = apply(
                        &mut store,
                        &Command::DeleteRange(DeleteRangeCmd {
                            key: k.clone(),
                            range_end: end.clone(),
                            prev_kv: true,
                        }),
                    )
                    .unwrap();
                    let doomed: Vec<_> = next
                        .keys()
                        .filter(|x| in_range(x, &k, &end))
                        .cloned()
                        .collect();
                    let CommandResponse::DeleteRange(d) = r else {
                        panic!()
                    };
                    assert_eq!(d.deleted as usize, doomed.len());
                    assert_eq!(d.prev_kvs.len(), doomed.len());
                    for x in &doomed {
                        next.remove(x);
                    }
                    changed = !doomed.is_empty();
                }
                7 | 8 => {
                    // txn: if version(k) == n then put a, put b else delete c
                    let k = key(&mut rng);
                    let n = rng.gen_range(0..3);
                    let (a, b, c) = (key(&mut rng), key(&mut rng), key(&mut rng));
                    let b = if a == b { b"zz".to_vec() } else { b };
                    let cmd = Command::Txn(TxnCmd {
                        compare: vec![CompareCmd {
                            result: 0,
                            target: 0,
                            key: k.clone(),
                            range_end: vec![],
                            value: CompareValue::Version(n),
                        }],
                        success: vec![
                            OpCmd::Put(PutCmd {
                                key: a.clone(),
                                value: b"ta".to_vec(),
                                ..Default::default()
                            }),
                            OpCmd::Range(RangeCmd {
                                key: a.clone(),
                                ..Default::default()
                            }),
                            OpCmd::Put(PutCmd {
                                key: b.clone(),
                                value: b"tb".to_vec(),
                                ..Default::default()
                            }),
                        ],
                        failure: vec![OpCmd::DeleteRange(DeleteRangeCmd {
                            key: c.clone(),
                            ..Default::default()
                        })],
                    });
                    let ok = model.state().get(&k).map_or(0, |e| e.3) == n;
                    let CommandResponse::Txn(t) = apply(&mut store, &cmd).unwrap() else {
                        panic!()
                    };
                    assert_eq!(t.succeeded, ok);
                    if ok {
                        model_put(&mut next, &a, b"ta", rev);
                        model_put(&mut next, &b, b"tb", rev);
                        changed = true;
                        // The range inside the txn saw the put before it.
                        let Some(keel_proto::etcdserverpb::response_op::Response::ResponseRange(r)) =
                            &t.responses[1].response
                        else {
                            panic!()
                        };
                        assert_eq!(&r.kvs[0].value[..], b"ta");
                    } else {
                        changed = next.remove(&c).is_some();
                    }
                    assert_eq!(
                        t.header.unwrap().revision,
                        if changed { rev } else { rev - 1 }
                    );
                }
                _ => {
                    let at = rng.gen_range(-1..=model.current() + 1);
                    let got = apply(
                        &mut store,
                        &Command::Compact(CompactCmd {
                            revision: at,
                            physical: false,
                        }),
                    );
                    if at <= model.compact {
                        assert_eq!(got, Err(MvccError::Compacted));
                    } else if at > model.current() {
                        assert_eq!(got, Err(MvccError::FutureRev));
                    } else {
                        got.unwrap();
                        model.compact = at;
                    }
                }
            }
            if changed {
                model.history.push(next);
            }
            assert_eq!(
                store.current_rev(),
                model.current(),
                "seed {seed} step {step}"
            );
            assert_eq!(store.live_keys() as usize, model.state().len());
            check_reads(&store, &model, &mut rng);
            // A compaction removes versions in steps between requests: the
            // answers never depend on how far it got.
            for _ in 0..rng.gen_range(0..2) {
                store.compact_step();
            }
            if step % 97 == 96 {
                // Restart from a snapshot: the restored store answers the same.
                let mut buf = Vec::new();
                write_snapshot(&mut buf, b"", &store.image()).unwrap();
                store = read_snapshot(&mut &buf[..], std::path::Path::new("mem"))
                    .unwrap()
                    .1;
                check_reads(&store, &model, &mut rng);
            }
        }
    }
}
