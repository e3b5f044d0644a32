//! The store: key index and revision log kept in step, current and
//! compacted revisions, and the write transaction that gives a request its
//! single revision.

use bytes::Bytes;

use super::key_index::{KeyIndex, KeyRange, KeyVersion};
use super::lease::{LeaseRecord, Leases};
use super::revision_log::{Event, LogView, RevisionLog};
use super::{MvccError, Revision};
use crate::auth::AuthStore;

/// Estimated bytes of bookkeeping per retained version, beyond key and value.
const VERSION_OVERHEAD_BYTES: u64 = 96;

/// Keys one compaction step looks at in the key index; a step over the
/// revision log looks at one chunk. Each step takes about a millisecond.
pub const COMPACT_STEP_KEYS: usize = 4096;

/// A compaction whose versions below its revision are still being removed.
/// Reads are already bounded by `compact_rev`; what is left to remove is
/// unreachable by them.
#[derive(Debug, Clone)]
struct Compaction {
    rev: i64,
    phase: CompactPhase,
}

#[derive(Debug, Clone)]
enum CompactPhase {
    /// The revision log, from this sealed chunk on.
    Log { chunk: usize },
    /// The key index, after this key (from the first when `None`).
    Index { after: Option<Bytes> },
}

#[derive(Debug, Clone)]
pub struct KvStore {
    index: KeyIndex,
    log: RevisionLog,
    /// Revision of the newest modifying request; 1 for an empty store (etcd's).
    current_rev: i64,
    /// Reads below this revision fail with `Compacted`; -1 before any compaction.
    compact_rev: i64,
    /// Keys live at `current_rev`.
    live_keys: u64,
    /// Estimated bytes held by retained versions.
    size_bytes: u64,
    /// Granted leases and the live keys attached to each.
    leases: Leases,
    /// The compaction still removing versions, if any.
    compaction: Option<Compaction>,
    /// Users, roles and permissions (etcd's auth buckets).
    pub(super) auth: AuthStore,
}

impl Default for KvStore {
    fn default() -> Self {
        KvStore {
            index: KeyIndex::default(),
            log: RevisionLog::default(),
            current_rev: 1,
            compact_rev: -1,
            live_keys: 0,
            size_bytes: 0,
            leases: Leases::default(),
            compaction: None,
            auth: AuthStore::default(),
        }
    }
}

fn version_bytes(key: &[u8], v: &KeyVersion) -> u64 {
    (key.len() + v.value.len()) as u64 + VERSION_OVERHEAD_BYTES
}

impl KvStore {
    pub fn current_rev(&self) -> i64 {
        self.current_rev
    }

    pub fn compact_rev(&self) -> i64 {
        self.compact_rev
    }

    /// Keys live at the current revision (`etcd_debugging_mvcc_keys_total`).
    pub fn live_keys(&self) -> u64 {
        self.live_keys
    }

    /// Estimated bytes of retained data (`etcd_mvcc_db_total_size_in_bytes`).
    pub fn size_bytes(&self) -> u64 {
        self.size_bytes
    }

    pub fn index(&self) -> &KeyIndex {
        &self.index
    }

    pub fn leases(&self) -> &Leases {
        &self.leases
    }

    pub fn leases_mut(&mut self) -> &mut Leases {
        &mut self.leases
    }

    pub fn auth(&self) -> &AuthStore {
        &self.auth
    }

    pub fn set_auth(&mut self, auth: AuthStore) {
        self.auth = auth;
    }

    /// Every retained version in revision order.
    pub fn events(&self) -> impl Iterator<Item = &Event> {
        self.log.iter()
    }

    /// Retained versions from main revision `from` on, in revision order.
    pub fn events_since(&self, from: i64) -> impl Iterator<Item = &Event> {
        self.log.since(from)
    }

    /// A consistent picture for a background snapshot.
    pub fn view(&self) -> LogView {
        self.log.view()
    }

    /// Checks a read revision against the store's bounds; 0 or less means
    /// "newest". `newest` is the revision the reader sees as current.
    pub fn resolve_read_rev(&self, requested: i64, newest: i64) -> Result<i64, MvccError> {
        if requested > newest {
            return Err(MvccError::FutureRev);
        }
        let rev = if requested <= 0 { newest } else { requested };
        if rev < self.compact_rev {
            return Err(MvccError::Compacted);
        }
        Ok(rev)
    }

    pub fn begin_write(&mut self) -> WriteTxn<'_> {
        let main = self.current_rev + 1;
        WriteTxn {
            store: self,
            main,
            changes: 0,
        }
    }

    /// Compacts history at `rev` (etcd's rules: a revision at or below the
    /// last compaction is `Compacted`, one above the current is `FutureRev`).
    /// Reads below `rev` fail from now on; the versions they could have seen
    /// are removed by [`KvStore::compact_step`]s. A newer compaction takes
    /// over the removal of an older one still running.
    pub fn compact(&mut self, rev: i64) -> Result<(), MvccError> {
        if rev <= self.compact_rev {
            return Err(MvccError::Compacted);
        }
        if rev > self.current_rev {
            return Err(MvccError::FutureRev);
        }
        self.compact_rev = rev;
        self.compaction = Some(Compaction {
            rev,
            phase: CompactPhase::Log { chunk: 0 },
        });
        Ok(())
    }

    /// Whether a compaction still has versions to remove.
    pub fn compacting(&self) -> bool {
        self.compaction.is_some()
    }

    /// Removes one bounded batch of the versions the running compaction
    /// made unreachable: one chunk of the revision log, then
    /// [`COMPACT_STEP_KEYS`] keys of the index at a time.
    pub fn compact_step(&mut self) {
        let Some(c) = self.compaction.as_mut() else {
            return;
        };
        let rev = c.rev;
        match &c.phase {
            CompactPhase::Log { chunk } => {
                let index = &self.index;
                let mut freed = 0;
                let next = self.log.compact_step(*chunk, rev, |e| {
                    let keep = index.compaction_keeps(&e.key, e.rev(), rev);
                    if !keep {
                        freed += version_bytes(&e.key, &e.kv);
                    }
                    keep
                });
                self.size_bytes -= freed;
                c.phase = match next {
                    Some(chunk) => CompactPhase::Log { chunk },
                    None => CompactPhase::Index { after: None },
                };
            }
            CompactPhase::Index { after } => {
                match self
                    .index
                    .compact_step(after.as_ref(), rev, COMPACT_STEP_KEYS)
                {
                    Some(after) => c.phase = CompactPhase::Index { after: Some(after) },
                    None => self.compaction = None,
                }
            }
        }
    }

    /// Runs the compaction's remaining steps at once (tests, restore).
    pub fn finish_compaction(&mut self) {
        while self.compacting() {
            self.compact_step();
        }
    }

    /// Rebuilds a store from a snapshot's parts. `events` must be in
    /// revision order. Versions a compaction had not yet removed when the
    /// snapshot was taken are removed by compaction steps, as they would
    /// have been.
    pub fn restore(
        current_rev: i64,
        compact_rev: i64,
        events: impl IntoIterator<Item = Event>,
        leases: &[LeaseRecord],
    ) -> Result<KvStore, String> {
        let mut s = KvStore {
            current_rev,
            compact_rev,
            ..KvStore::default()
        };
        let mut last = Revision::default();
        for e in events {
            if e.rev() <= last && last != Revision::default() {
                return Err(format!(
                    "revision {:?} out of order after {last:?}",
                    e.rev()
                ));
            }
            if e.rev().main > current_rev {
                return Err(format!(
                    "revision {} beyond current {current_rev}",
                    e.rev().main
                ));
            }
            last = e.rev();
            s.size_bytes += version_bytes(&e.key, &e.kv);
            let key = s.index.restore(e.key, e.kv.clone());
            s.log.push(Event { key, kv: e.kv });
        }
        s.live_keys = s
            .index
            .iter()
            .filter(|(_, versions)| versions.last().is_some_and(|v| !v.is_tombstone()))
            .count() as u64;
        let live = s.index.iter().filter_map(|(k, versions)| {
            let v = versions.last()?;
            (!v.is_tombstone() && v.lease != 0).then_some((k, v.lease))
        });
        s.leases = Leases::restore(leases, live);
        if compact_rev > 0 {
            s.compaction = Some(Compaction {
                rev: compact_rev,
                phase: CompactPhase::Log { chunk: 0 },
            });
        }
        Ok(s)
    }
}

/// The changes of one modifying request. All of them get main revision
/// `current + 1`, with `sub` counting up; reads inside the txn see them.
/// The store's revision moves only if something changed.
pub struct WriteTxn<'a> {
    store: &'a mut KvStore,
    main: i64,
    changes: i64,
}

impl WriteTxn<'_> {
    /// The revision reads inside this txn see.
    pub fn read_rev(&self) -> i64 {
        if self.changes > 0 {
            self.main
        } else {
            self.main - 1
        }
    }

    /// The revision the txn gets if it changes anything.
    pub fn write_rev(&self) -> i64 {
        self.main
    }

    pub fn changed(&self) -> bool {
        self.changes > 0
    }

    pub fn store(&self) -> &KvStore {
        self.store
    }

    fn next_rev(&mut self) -> Revision {
        let rev = Revision {
            main: self.main,
            sub: self.changes,
        };
        self.changes += 1;
        rev
    }

    /// Stores a new version of `key`; `before` is the lease of the version
    /// it replaces (0: none), so the lease table follows the key.
    fn record(&mut self, key: &[u8], kv: KeyVersion, before: i64) {
        let after = if kv.is_tombstone() { 0 } else { kv.lease };
        self.store.size_bytes += version_bytes(key, &kv);
        let key = self.store.index.push(key, kv.clone());
        self.store.leases.reattach(&key, before, after);
        self.store.log.push(Event { key, kv });
    }

    /// Puts `key`; returns the txn's revision.
    pub fn put(&mut self, key: &[u8], value: Bytes, lease: i64) -> i64 {
        let prev = self
            .store
            .index
            .get(key, self.read_rev())
            .map(|v| (v.create_revision, v.version, v.lease));
        let rev = self.next_rev();
        let prev_lease = prev.map_or(0, |p| p.2);
        let (create_revision, version) = match prev {
            Some((create, version, _)) => (create, version + 1),
            None => {
                self.store.live_keys += 1;
                (rev.main, 1)
            }
        };
        self.record(
            key,
            KeyVersion {
                rev,
                create_revision,
                version,
                lease,
                value,
            },
            prev_lease,
        );
        rev.main
    }

    /// Deletes the live keys of `range`; returns how many.
    pub fn delete_range(&mut self, range: KeyRange<'_>) -> i64 {
        let read_rev = self.read_rev();
        let keys: Vec<(Bytes, i64)> = self
            .store
            .index
            .range(range, read_rev)
            .map(|(k, v)| (k.clone(), v.lease))
            .collect();
        for (k, lease) in &keys {
            let rev = self.next_rev();
            self.record(k, KeyVersion::tombstone(rev), *lease);
            self.store.live_keys -= 1;
        }
        keys.len() as i64
    }

    /// Ends the txn; returns the store's revision after it.
    pub fn end(self) -> i64 {
        if self.changes > 0 {
            self.store.current_rev = self.main;
        }
        self.store.current_rev
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_txn_is_one_revision() {
        let mut s = KvStore::default();
        let mut t = s.begin_write();
        assert_eq!(t.put(b"a", Bytes::from_static(b"1"), 0), 2);
        assert_eq!(t.put(b"b", Bytes::from_static(b"2"), 0), 2);
        assert_eq!(t.read_rev(), 2, "reads inside see the txn's writes");
        assert_eq!(t.end(), 2);
        let subs: Vec<_> = s.events().map(|e| (e.rev().main, e.rev().sub)).collect();
        assert_eq!(subs, vec![(2, 0), (2, 1)]);
        assert_eq!(s.live_keys(), 2);
    }

    #[test]
    fn deleting_nothing_keeps_the_revision() {
        let mut s = KvStore::default();
        let mut t = s.begin_write();
        assert_eq!(t.delete_range(KeyRange::Single(b"none")), 0);
        assert_eq!(t.end(), 1);
    }

    #[test]
    fn versions_and_generations() {
        let mut s = KvStore::default();
        for v in ["1", "2"] {
            let mut t = s.begin_write();
            t.put(b"k", Bytes::from(v), 0);
            t.end();
        }
        let mut t = s.begin_write();
        t.delete_range(KeyRange::Single(b"k"));
        t.end();
        let mut t = s.begin_write();
        t.put(b"k", Bytes::from_static(b"3"), 0);
        t.end();
        let v = s.index().get(b"k", 5).unwrap();
        assert_eq!((v.create_revision, v.version), (5, 1));
        let v = s.index().get(b"k", 3).unwrap();
        assert_eq!((v.create_revision, v.version), (2, 2));
        assert_eq!(s.index().get(b"k", 4), None);
        assert_eq!(s.live_keys(), 1);
    }

    #[test]
    fn compaction_bounds() {
        let mut s = KvStore::default();
        assert_eq!(s.compact(0), Ok(()));
        assert_eq!(s.compact(0), Err(MvccError::Compacted));
        assert_eq!(s.compact(5), Err(MvccError::FutureRev));
        let mut t = s.begin_write();
        t.put(b"a", Bytes::new(), 0);
        t.end();
        assert_eq!(s.compact(2), Ok(()));
        assert_eq!(s.resolve_read_rev(2, 2), Ok(2));
        assert_eq!(s.resolve_read_rev(1, 2), Err(MvccError::Compacted));
        assert_eq!(s.resolve_read_rev(3, 2), Err(MvccError::FutureRev));
        assert_eq!(s.resolve_read_rev(0, 2), Ok(2));
    }

    #[test]
    fn restore_rebuilds_an_equal_store() {
        let mut s = KvStore::default();
        for i in 0..50 {
            let mut t = s.begin_write();
            if i % 7 == 3 {
                t.delete_range(KeyRange::From(b"k1"));
            } else {
                t.put(
                    format!("k{}", i % 9).as_bytes(),
                    Bytes::from(format!("v{i}")),
                    0,
                );
            }
            t.end();
        }
        s.compact(20).unwrap();
        // Taken while the compaction still removes versions: the restored
        // store removes them too.
        s.compact_step();
        let view = s.view();
        s.finish_compaction();
        let mut r =
            KvStore::restore(s.current_rev(), s.compact_rev(), view.iter().cloned(), &[]).unwrap();
        assert!(r.compacting());
        r.finish_compaction();
        assert_eq!(r.live_keys(), s.live_keys());
        assert_eq!(r.size_bytes(), s.size_bytes());
        let a: Vec<_> = s
            .index()
            .iter()
            .map(|(k, v)| (k.clone(), v.to_vec()))
            .collect();
        let b: Vec<_> = r
            .index()
            .iter()
            .map(|(k, v)| (k.clone(), v.to_vec()))
            .collect();
        assert_eq!(a, b);
    }
}
