//! Key → versions.
//!
//! Each key maps to its retained versions, oldest first. A version is a put
//! (`version >= 1`) or a tombstone (`version == 0`, written by a delete). A
//! key's *generation* runs from a put that created it (version 1) to the
//! next tombstone; a later put starts a new generation with a new
//! `create_revision`.
//!
//! Worked example: put a@2, put a@3, delete a@4, put a@6 gives
//! `[2 v1 c2] [3 v2 c2] [4 tombstone] [6 v1 c6]`. Reading at 3 sees the
//! version of revision 3; at 5 nothing (the tombstone); at 6 a fresh key.
//! Compacting at 5 keeps, of the versions at or below 5, only the newest,
//! and drops it too if it is a tombstone: `[6 v1 c6]` remains. Compacting at 3
//! instead would leave `[3 v2 c2] [4 tombstone] [6 v1 c6]`.

use std::collections::BTreeMap;
use std::ops::Bound;

use bytes::Bytes;

use super::Revision;

/// One version of a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyVersion {
    pub rev: Revision,
    /// Main revision of the put that started this generation; 0 for a tombstone.
    pub create_revision: i64,
    /// 1 for the put that created the key, +1 per later put; 0 for a tombstone.
    pub version: i64,
    pub lease: i64,
    pub value: Bytes,
}

impl KeyVersion {
    pub fn tombstone(rev: Revision) -> KeyVersion {
        KeyVersion {
            rev,
            create_revision: 0,
            version: 0,
            lease: 0,
            value: Bytes::new(),
        }
    }

    pub fn is_tombstone(&self) -> bool {
        self.version == 0
    }
}

/// The keys a request names, in etcd's encoding of `key` and `range_end`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyRange<'a> {
    /// `range_end` empty: just `key`.
    Single(&'a [u8]),
    /// `range_end` is `"\0"`: every key >= `key`.
    From(&'a [u8]),
    /// `[key, range_end)`; empty when `range_end <= key`.
    Between(&'a [u8], &'a [u8]),
}

impl<'a> KeyRange<'a> {
    pub fn new(key: &'a [u8], range_end: &'a [u8]) -> KeyRange<'a> {
        match range_end {
            [] => KeyRange::Single(key),
            [0] => KeyRange::From(key),
            end => KeyRange::Between(key, end),
        }
    }

    pub fn contains(&self, k: &[u8]) -> bool {
        match *self {
            KeyRange::Single(key) => k == key,
            KeyRange::From(key) => k >= key,
            KeyRange::Between(key, end) => k >= key && k < end,
        }
    }
}

#[derive(Debug, Default, Clone)]
pub struct KeyIndex {
    map: BTreeMap<Bytes, Vec<KeyVersion>>,
}

/// The version of a key visible at `rev`, if the key is live then.
pub(crate) fn visible_at(versions: &[KeyVersion], rev: i64) -> Option<&KeyVersion> {
    let i = versions.partition_point(|v| v.rev.main <= rev);
    let v = versions.get(i.checked_sub(1)?)?;
    (!v.is_tombstone()).then_some(v)
}

impl KeyIndex {
    /// Number of keys with at least one retained version.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    pub fn get(&self, key: &[u8], rev: i64) -> Option<&KeyVersion> {
        visible_at(self.map.get(key)?, rev)
    }

    /// Live keys of `range` at `rev`, in key order.
    pub fn range<'s>(
        &'s self,
        range: KeyRange<'s>,
        rev: i64,
    ) -> impl Iterator<Item = (&'s Bytes, &'s KeyVersion)> + 's {
        type Bounds<'b> = (Bound<&'b [u8]>, Bound<&'b [u8]>);
        let bounds: Option<Bounds<'_>> = match range {
            KeyRange::Single(k) => Some((Bound::Included(k), Bound::Included(k))),
            KeyRange::From(k) => Some((Bound::Included(k), Bound::Unbounded)),
            KeyRange::Between(k, end) if end > k => {
                Some((Bound::Included(k), Bound::Excluded(end)))
            }
            KeyRange::Between(..) => None,
        };
        bounds
            .into_iter()
            .flat_map(move |b| self.map.range::<[u8], _>(b))
            .filter_map(move |(k, versions)| Some((k, visible_at(versions, rev)?)))
    }

    /// Appends a version; its revision must be newer than the key's others.
    /// Returns the stored key (shared with the revision log).
    pub fn push(&mut self, key: &[u8], v: KeyVersion) -> Bytes {
        if let Some((k, _)) = self.map.get_key_value(key) {
            let k = k.clone();
            let versions = self.map.get_mut(key).expect("just found");
            debug_assert!(versions.last().is_none_or(|last| last.rev < v.rev));
            versions.push(v);
            return k;
        }
        let k = Bytes::copy_from_slice(key);
        self.map.insert(k.clone(), vec![v]);
        k
    }

    /// Inserts a version restored from a snapshot, in revision order.
    pub(crate) fn restore(&mut self, key: Bytes, v: KeyVersion) -> Bytes {
        match self.map.get_key_value(&key[..]) {
            Some((k, _)) => {
                let k = k.clone();
                self.map.get_mut(&key[..]).expect("present").push(v);
                k
            }
            None => {
                self.map.insert(key.clone(), vec![v]);
                key
            }
        }
    }

    /// Drops versions made obsolete by compacting at `at` (see the module
    /// docs). Records the surviving versions at or below `at` in `kept`.
    /// Whether a compaction at `at` keeps the version of `key` at `rev`
    /// (with main revision `at` or older): only the newest such version of a
    /// key is kept, and not if it is a tombstone. Answers the same before and
    /// after the key's own versions are compacted.
    pub fn compaction_keeps(&self, key: &[u8], rev: Revision, at: i64) -> bool {
        let Some(versions) = self.map.get(key) else {
            return false;
        };
        let newer = versions.partition_point(|v| v.rev.main <= at);
        newer
            .checked_sub(1)
            .is_some_and(|i| versions[i].rev == rev && !versions[i].is_tombstone())
    }

    /// One step of a compaction at `at`: drops the versions it does not keep
    /// (see [`KeyIndex::compaction_keeps`]) of at most `max_keys` keys after
    /// `after` (from the first key when `None`), and keys left with none.
    /// Returns the last key looked at, or `None` once every key was.
    pub fn compact_step(
        &mut self,
        after: Option<&Bytes>,
        at: i64,
        max_keys: usize,
    ) -> Option<Bytes> {
        let keys = match after {
            None => self.map.range_mut::<Bytes, _>(..),
            Some(k) => self
                .map
                .range_mut::<Bytes, _>((Bound::Excluded(k), Bound::Unbounded)),
        };
        let (mut seen, mut last, mut emptied) = (0, None, Vec::new());
        for (key, versions) in keys.take(max_keys) {
            seen += 1;
            last = Some(key);
            let newer = versions.partition_point(|v| v.rev.main <= at);
            let Some(newest_old) = newer.checked_sub(1) else {
                continue;
            };
            let keep_from = if versions[newest_old].is_tombstone() {
                newer
            } else {
                newest_old
            };
            versions.drain(..keep_from);
            if versions.is_empty() {
                emptied.push(key.clone());
            }
        }
        let last = last.filter(|_| seen == max_keys).cloned();
        for key in emptied {
            self.map.remove(&key);
        }
        last
    }

    /// Every retained version of every key, for checks and tests.
    pub fn iter(&self) -> impl Iterator<Item = (&Bytes, &[KeyVersion])> {
        self.map.iter().map(|(k, v)| (k, v.as_slice()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(rev: i64, create: i64, version: i64) -> KeyVersion {
        KeyVersion {
            rev: Revision { main: rev, sub: 0 },
            create_revision: create,
            version,
            lease: 0,
            value: Bytes::from(format!("v{rev}")),
        }
    }

    fn example() -> KeyIndex {
        let mut ix = KeyIndex::default();
        ix.push(b"a", put(2, 2, 1));
        ix.push(b"a", put(3, 2, 2));
        ix.push(b"a", KeyVersion::tombstone(Revision { main: 4, sub: 0 }));
        ix.push(b"a", put(6, 6, 1));
        ix
    }

    #[test]
    fn worked_example_reads() {
        let ix = example();
        assert_eq!(ix.get(b"a", 1), None);
        assert_eq!(ix.get(b"a", 3).unwrap().version, 2);
        assert_eq!(ix.get(b"a", 5), None);
        assert_eq!(ix.get(b"a", 6).unwrap().create_revision, 6);
    }

    fn compact(ix: &mut KeyIndex, at: i64) {
        let mut after = None;
        while let Some(k) = ix.compact_step(after.as_ref(), at, 1) {
            after = Some(k);
        }
    }

    fn revs(ix: &KeyIndex) -> Vec<i64> {
        ix.iter()
            .next()
            .unwrap()
            .1
            .iter()
            .map(|v| v.rev.main)
            .collect()
    }

    #[test]
    fn worked_example_compactions() {
        let rev = |main| Revision { main, sub: 0 };
        let mut ix = example();
        assert!(!ix.compaction_keeps(b"a", rev(4), 5));
        assert!(!ix.compaction_keeps(b"a", rev(3), 5));
        compact(&mut ix, 5);
        assert_eq!(revs(&ix), vec![6]);

        let mut ix = example();
        assert!(ix.compaction_keeps(b"a", rev(3), 3));
        assert!(!ix.compaction_keeps(b"a", rev(2), 3));
        compact(&mut ix, 3);
        assert_eq!(revs(&ix), vec![3, 4, 6]);
        // The same answer once the key is compacted.
        assert!(ix.compaction_keeps(b"a", rev(3), 3));
    }

    #[test]
    fn fully_deleted_key_disappears_on_compaction() {
        let mut ix = KeyIndex::default();
        ix.push(b"k", put(2, 2, 1));
        ix.push(b"k", KeyVersion::tombstone(Revision { main: 3, sub: 0 }));
        compact(&mut ix, 3);
        assert!(ix.is_empty());
    }

    #[test]
    fn compaction_steps_cover_every_key_once() {
        let mut ix = KeyIndex::default();
        for (i, k) in [&b"a"[..], b"b", b"c", b"d", b"e"].iter().enumerate() {
            let i = i as i64 * 3;
            ix.push(k, put(i + 2, i + 2, 1));
            ix.push(
                k,
                KeyVersion::tombstone(Revision {
                    main: i + 3,
                    sub: 0,
                }),
            );
            ix.push(k, put(i + 4, i + 4, 1));
        }
        let first = ix.compact_step(None, 100, 2);
        assert_eq!(first.as_deref(), Some(&b"b"[..]));
        let second = ix.compact_step(first.as_ref(), 100, 2);
        assert_eq!(second.as_deref(), Some(&b"d"[..]));
        assert_eq!(ix.compact_step(second.as_ref(), 100, 2), None);
        assert_eq!(ix.len(), 5);
        assert!(ix.iter().all(|(_, v)| v.len() == 1));
    }

    #[test]
    fn ranges() {
        let mut ix = KeyIndex::default();
        for (i, k) in [&b"a"[..], b"ab", b"b", b"c"].iter().enumerate() {
            ix.push(k, put(i as i64 + 2, i as i64 + 2, 1));
        }
        let keys = |r: KeyRange<'_>| -> Vec<Vec<u8>> {
            ix.range(r, 100).map(|(k, _)| k.to_vec()).collect()
        };
        assert_eq!(keys(KeyRange::new(b"a", b"")), vec![b"a".to_vec()]);
        assert_eq!(keys(KeyRange::new(b"a", b"b")).len(), 2);
        assert_eq!(keys(KeyRange::new(b"ab", b"\0")).len(), 3);
        assert_eq!(keys(KeyRange::new(b"\0", b"\0")).len(), 4);
        assert!(
            keys(KeyRange::new(b"c", b"a")).is_empty(),
            "inverted range is empty"
        );
        assert!(keys(KeyRange::new(b"a", b"a")).is_empty());
        // Revision 3 sees only the first two puts.
        assert_eq!(ix.range(KeyRange::From(b"a"), 3).count(), 2);
    }
}
