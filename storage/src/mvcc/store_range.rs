//! etcd's Range: key/range_end, revision, limit and `more`, `count`, sort,
//! mod/create revision filters, keys_only, count_only.
//!
//! Mirrors etcd's apply layer: with sorting or filters everything in range
//! is fetched, filtered, sorted, then cut to `limit`; without them at most
//! `limit + 1` keys are fetched (the extra one sets `more`). `count` is the
//! number of live keys in range at the revision, before filters and limit.
//! Ties in a non-key sort keep key order (etcd's sort is unstable there).

use keel_proto::command::ArchivedRangeCmd;
use keel_proto::etcdserverpb as pb;
use keel_proto::mvccpb;

use super::key_index::{KeyRange, KeyVersion};
use super::{KvStore, MvccError};

/// A range request's fields, borrowed from a prost request or an archived
/// txn command.
#[derive(Debug, Clone, Copy, Default)]
pub struct RangeArgs<'a> {
    pub key: &'a [u8],
    pub range_end: &'a [u8],
    pub limit: i64,
    pub revision: i64,
    pub sort_order: i32,
    pub sort_target: i32,
    pub keys_only: bool,
    pub count_only: bool,
    pub min_mod_revision: i64,
    pub max_mod_revision: i64,
    pub min_create_revision: i64,
    pub max_create_revision: i64,
}

impl<'a> From<&'a pb::RangeRequest> for RangeArgs<'a> {
    fn from(r: &'a pb::RangeRequest) -> Self {
        RangeArgs {
            key: &r.key,
            range_end: &r.range_end,
            limit: r.limit,
            revision: r.revision,
            sort_order: r.sort_order,
            sort_target: r.sort_target,
            keys_only: r.keys_only,
            count_only: r.count_only,
            min_mod_revision: r.min_mod_revision,
            max_mod_revision: r.max_mod_revision,
            min_create_revision: r.min_create_revision,
            max_create_revision: r.max_create_revision,
        }
    }
}

impl<'a> From<&'a ArchivedRangeCmd> for RangeArgs<'a> {
    fn from(r: &'a ArchivedRangeCmd) -> Self {
        RangeArgs {
            key: r.key.as_slice(),
            range_end: r.range_end.as_slice(),
            limit: r.limit.to_native(),
            revision: r.revision.to_native(),
            sort_order: r.sort_order.to_native(),
            sort_target: r.sort_target.to_native(),
            keys_only: r.keys_only,
            count_only: r.count_only,
            min_mod_revision: r.min_mod_revision.to_native(),
            max_mod_revision: r.max_mod_revision.to_native(),
            min_create_revision: r.min_create_revision.to_native(),
            max_create_revision: r.max_create_revision.to_native(),
        }
    }
}

/// The wire form of a key's version.
pub fn to_key_value(key: &bytes::Bytes, v: &KeyVersion) -> mvccpb::KeyValue {
    mvccpb::KeyValue {
        key: key.clone(),
        create_revision: v.create_revision,
        mod_revision: v.rev.main,
        version: v.version,
        value: v.value.clone(),
        lease: v.lease,
    }
}

/// A range read under way: what the keys looked at so far gave. A large
/// range is read in steps ([`KvStore::range_step`]) so that the log goes on
/// being applied between them; it reads at the revision fixed when it
/// started, so it answers what it would have answered at once, as long as
/// no compaction step runs before it ends (the MVCC actor runs none then).
#[derive(Debug)]
pub struct RangeScan {
    /// The revision read at.
    rev: i64,
    /// The revision the reader saw as current when the read started.
    newest: i64,
    /// The smallest key the next step looks at; `None` before the first.
    resume: Option<Vec<u8>>,
    done: bool,
    /// Live keys in range at `rev` so far.
    count: i64,
    kvs: Vec<(bytes::Bytes, KeyVersion)>,
    /// Keys to keep at most: `limit + 1` (the extra one sets `more`) unless
    /// everything must be sorted or filtered first; 0 for `count_only`.
    fetch_limit: usize,
}

impl RangeScan {
    /// The revision the response's header carries.
    pub fn newest(&self) -> i64 {
        self.newest
    }

    /// Key-values kept so far (what the response will be built from).
    pub fn kept(&self) -> usize {
        self.kvs.len()
    }
}

impl KvStore {
    /// Serves a range as a reader at revision `newest` sees the store.
    /// The response header carries only the revision; the edge fills the rest.
    pub fn range(&self, args: &RangeArgs<'_>, newest: i64) -> Result<pb::RangeResponse, MvccError> {
        let mut scan = self.start_range(args, newest)?;
        while !self.range_step(args, &mut scan, usize::MAX) {}
        Ok(KvStore::finish_range(args, scan))
    }

    /// Starts a range read (checks its revision); [`KvStore::range_step`]
    /// reads it, [`KvStore::finish_range`] answers it.
    pub fn start_range(&self, args: &RangeArgs<'_>, newest: i64) -> Result<RangeScan, MvccError> {
        use pb::range_request::SortOrder;

        let rev = self.resolve_read_rev(args.revision, newest)?;
        let fetch_all = SortOrder::try_from(args.sort_order).unwrap_or(SortOrder::None)
            != SortOrder::None
            || is_filtered(args);
        let fetch_limit = if args.count_only {
            0
        } else if fetch_all || args.limit <= 0 {
            usize::MAX
        } else {
            usize::try_from(args.limit)
                .unwrap_or(usize::MAX)
                .saturating_add(1)
        };
        Ok(RangeScan {
            rev,
            newest,
            resume: None,
            done: false,
            count: 0,
            kvs: Vec::new(),
            fetch_limit,
        })
    }

    /// Looks at up to `max_keys` more live keys of the range (`args` must be
    /// the ones it started with). True once every key was looked at.
    pub fn range_step(&self, args: &RangeArgs<'_>, scan: &mut RangeScan, max_keys: usize) -> bool {
        if scan.done {
            return true;
        }
        let range = match (
            KeyRange::new(args.key, args.range_end),
            scan.resume.as_deref(),
        ) {
            (r, None) => r,
            (KeyRange::Between(_, end), Some(from)) => KeyRange::Between(from, end),
            (_, Some(from)) => KeyRange::From(from),
        };
        let mut seen = 0;
        let mut last = None;
        for (k, v) in self.index().range(range, scan.rev).take(max_keys) {
            seen += 1;
            if scan.kvs.len() < scan.fetch_limit {
                scan.kvs.push((k.clone(), v.clone()));
            }
            last = Some(k);
        }
        scan.count += seen as i64;
        match last {
            Some(k) if seen == max_keys && !matches!(range, KeyRange::Single(_)) => {
                // The next key after `k`.
                let mut next = Vec::with_capacity(k.len() + 1);
                next.extend_from_slice(k);
                next.push(0);
                scan.resume = Some(next);
            }
            _ => scan.done = true,
        }
        scan.done
    }

    /// The response to a range read every key of which was looked at.
    /// Builds the response (filter, sort, limit, copy into KeyValues). It
    /// needs nothing of the store, so a large one can be built on another
    /// thread.
    pub fn finish_range(args: &RangeArgs<'_>, scan: RangeScan) -> pb::RangeResponse {
        use pb::range_request::{SortOrder, SortTarget};

        debug_assert!(scan.done, "a range answered before it was read");
        let mut resp = pb::RangeResponse {
            header: Some(pb::ResponseHeader {
                revision: scan.newest,
                ..Default::default()
            }),
            count: scan.count,
            ..Default::default()
        };
        if args.count_only {
            return resp;
        }
        let mut kvs = scan.kvs;
        if is_filtered(args) {
            kvs.retain(|(_, v)| {
                !(args.max_mod_revision != 0 && v.rev.main > args.max_mod_revision
                    || args.min_mod_revision != 0 && v.rev.main < args.min_mod_revision
                    || args.max_create_revision != 0
                        && v.create_revision > args.max_create_revision
                    || args.min_create_revision != 0
                        && v.create_revision < args.min_create_revision)
            });
        }
        let mut order = SortOrder::try_from(args.sort_order).unwrap_or(SortOrder::None);
        let target = SortTarget::try_from(args.sort_target).unwrap_or(SortTarget::Key);
        if target != SortTarget::Key && order == SortOrder::None {
            order = SortOrder::Ascend;
        }
        if order != SortOrder::None {
            let cmp = |a: &(bytes::Bytes, KeyVersion), b: &(bytes::Bytes, KeyVersion)| match target
            {
                SortTarget::Key => a.0.cmp(&b.0),
                SortTarget::Version => a.1.version.cmp(&b.1.version),
                SortTarget::Create => a.1.create_revision.cmp(&b.1.create_revision),
                SortTarget::Mod => a.1.rev.main.cmp(&b.1.rev.main),
                SortTarget::Value => a.1.value.cmp(&b.1.value),
            };
            match order {
                SortOrder::Descend => kvs.sort_by(|a, b| cmp(b, a)),
                _ => kvs.sort_by(cmp),
            }
        }
        if args.limit > 0 && kvs.len() as i64 > args.limit {
            kvs.truncate(args.limit as usize);
            resp.more = true;
        }
        resp.kvs = kvs
            .into_iter()
            .map(|(k, v)| {
                let mut kv = to_key_value(&k, &v);
                if args.keys_only {
                    kv.value = bytes::Bytes::new();
                }
                kv
            })
            .collect();
        resp
    }
}

fn is_filtered(args: &RangeArgs<'_>) -> bool {
    args.min_mod_revision != 0
        || args.max_mod_revision != 0
        || args.min_create_revision != 0
        || args.max_create_revision != 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn store() -> KvStore {
        // rev 2: a=3, rev 3: b=1, rev 4: c=2, rev 5: a=0 (a version 2)
        let mut s = KvStore::default();
        for (k, v) in [("a", "3"), ("b", "1"), ("c", "2"), ("a", "0")] {
            let mut t = s.begin_write();
            t.put(k.as_bytes(), Bytes::from(v), 0);
            t.end();
        }
        s
    }

    fn keys(r: &pb::RangeResponse) -> Vec<&[u8]> {
        r.kvs.iter().map(|kv| &kv.key[..]).collect()
    }

    /// A range read in steps, with writes, deletes and a (logical)
    /// compaction applied between them, answers what it would have at once.
    #[test]
    fn a_range_in_steps_answers_as_at_its_start() {
        let mut s = KvStore::default();
        for i in 0..50 {
            let mut t = s.begin_write();
            t.put(
                format!("k{i:02}").as_bytes(),
                Bytes::from(format!("v{i}")),
                0,
            );
            t.end();
        }
        let cases = [
            RangeArgs {
                key: b"k",
                range_end: b"l",
                ..Default::default()
            },
            RangeArgs {
                key: b"k10",
                range_end: b"\0",
                limit: 9,
                ..Default::default()
            },
            RangeArgs {
                key: b"k",
                range_end: b"l",
                count_only: true,
                ..Default::default()
            },
            RangeArgs {
                key: b"k",
                range_end: b"l",
                sort_order: 2,
                sort_target: 3,
                limit: 5,
                ..Default::default()
            },
            RangeArgs {
                key: b"k07",
                ..Default::default()
            },
        ];
        for args in cases {
            let mut s = s.clone();
            let newest = s.current_rev();
            let want = s.range(&args, newest).unwrap();
            let mut scan = s.start_range(&args, newest).unwrap();
            let mut i = 0;
            while !s.range_step(&args, &mut scan, 7) {
                let mut t = s.begin_write();
                t.put(format!("k{:02}", 49 - i).as_bytes(), Bytes::from("new"), 0);
                t.put(format!("k{i:02}a").as_bytes(), Bytes::from("new"), 0);
                t.delete_range(KeyRange::Single(format!("k{:02}", i * 3).as_bytes()));
                t.end();
                s.compact(s.current_rev()).unwrap();
                i += 1;
            }
            assert_eq!(KvStore::finish_range(&args, scan), want, "{args:?}");
        }
    }

    #[test]
    fn limit_sets_more_and_count_is_total() {
        let s = store();
        let args = RangeArgs {
            key: b"a",
            range_end: b"\0",
            limit: 2,
            ..Default::default()
        };
        let r = s.range(&args, 5).unwrap();
        assert_eq!(keys(&r), vec![b"a", b"b"]);
        assert!(r.more);
        assert_eq!(r.count, 3);
        assert_eq!(r.header.unwrap().revision, 5);
    }

    #[test]
    fn sort_by_value_descending_and_default_ascending() {
        let s = store();
        let mut args = RangeArgs {
            key: b"a",
            range_end: b"d",
            sort_order: 2,
            sort_target: 4,
            ..Default::default()
        };
        assert_eq!(keys(&s.range(&args, 5).unwrap()), vec![b"c", b"b", b"a"]);
        args.sort_order = 0; // target VALUE with order NONE sorts ascending
        assert_eq!(keys(&s.range(&args, 5).unwrap()), vec![b"a", b"b", b"c"]);
        args.sort_target = 3; // MOD
        args.sort_order = 2;
        assert_eq!(keys(&s.range(&args, 5).unwrap()), vec![b"a", b"c", b"b"]);
    }

    #[test]
    fn historical_read_and_filters() {
        let s = store();
        let args = RangeArgs {
            key: b"a",
            revision: 3,
            ..Default::default()
        };
        let r = s.range(&args, 5).unwrap();
        assert_eq!(&r.kvs[0].value[..], b"3");
        assert_eq!(
            r.header.unwrap().revision,
            5,
            "header carries the newest revision"
        );
        let args = RangeArgs {
            key: b"a",
            range_end: b"\0",
            min_mod_revision: 4,
            ..Default::default()
        };
        let r = s.range(&args, 5).unwrap();
        assert_eq!(keys(&r), vec![b"a", b"c"]);
        assert_eq!(r.count, 3, "count ignores filters");
        let args = RangeArgs {
            key: b"a",
            range_end: b"\0",
            max_create_revision: 3,
            ..Default::default()
        };
        assert_eq!(keys(&s.range(&args, 5).unwrap()), vec![b"a", b"b"]);
    }

    #[test]
    fn count_only_and_keys_only() {
        let s = store();
        let r = s
            .range(
                &RangeArgs {
                    key: b"\0",
                    range_end: b"\0",
                    count_only: true,
                    limit: 1,
                    ..Default::default()
                },
                5,
            )
            .unwrap();
        assert!(r.kvs.is_empty());
        assert_eq!(r.count, 3);
        assert!(!r.more);
        let r = s
            .range(
                &RangeArgs {
                    key: b"a",
                    keys_only: true,
                    ..Default::default()
                },
                5,
            )
            .unwrap();
        assert!(r.kvs[0].value.is_empty());
        assert_eq!(r.kvs[0].version, 2);
    }

    #[test]
    fn revision_errors() {
        let mut s = store();
        let fut = RangeArgs {
            key: b"a",
            revision: 6,
            ..Default::default()
        };
        assert_eq!(s.range(&fut, 5), Err(MvccError::FutureRev));
        s.compact(4).unwrap();
        let old = RangeArgs {
            key: b"a",
            revision: 3,
            ..Default::default()
        };
        assert_eq!(s.range(&old, 5), Err(MvccError::Compacted));
        let at = RangeArgs {
            key: b"a",
            revision: 4,
            ..Default::default()
        };
        assert_eq!(&s.range(&at, 5).unwrap().kvs[0].value[..], b"3");
    }
}
