//! Watchers, owned by the MVCC apply actor (no I/O: responses go out
//! through each stream's bounded channel with `try_send`).
//!
//! A watcher is *synced* when every event before the store's next revision
//! was handed to its stream; after each applied batch, synced watchers get
//! the batch's matching events at once. When a stream's channel is full the
//! watcher becomes *unsynced* (etcd's slow watcher): it keeps the first
//! revision it still needs and [`WatchHub::catch_up`], run periodically,
//! reads those revisions back from the store's history, whole revisions at a
//! time, until it is synced again, or cancels it with `compact_revision` if
//! compaction removed them. So a slow consumer never stalls writes or other
//! streams, and every watcher sees every revision once, in order, unsplit.
//!
//! Control responses (created, canceled, progress) and the remaining parts
//! of a fragmented response wait in the stream's backlog when the channel
//! is full; nothing is sent to a stream while its backlog is not empty, so
//! its responses keep their order.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::ops::Bound;
use std::time::{Duration, Instant};

use bytes::Bytes;
use keel_proto::etcdserverpb as pb;
use keel_proto::mvccpb;
use keel_storage::mvcc::revision_log::Event;
use keel_storage::mvcc::store_range::to_key_value;
use keel_storage::mvcc::{KeyRange, KvStore};
use prost::Message;
use tokio::sync::mpsc;

use crate::metrics::metrics;

pub type StreamId = u64;

/// Revisions one catch-up response covers at most (etcd's watchBatchMaxRevs).
pub const CATCH_UP_REVS: i64 = 1000;
/// Watchers one stream may hold.
pub const WATCHERS_PER_STREAM_MAX: usize = 65_536;
/// Responses one stream may hold waiting for room (control responses and
/// the remaining parts of fragmented ones).
pub const BACKLOG_MAX: usize = 4096;
/// etcd's message for a client-chosen id already in use on the stream.
pub const DUPLICATE_ID: &str = "mvcc: duplicate watch ID provided on the WatchStream";
/// etcd's message for a range that holds no key.
pub const EMPTY_RANGE: &str = "mvcc: watcher range is empty";

/// A validated WatchCreateRequest.
#[derive(Debug, Clone, Default)]
pub struct WatchSpec {
    pub key: Bytes,
    pub range_end: Bytes,
    /// 0: from the next revision.
    pub start_rev: i64,
    pub no_put: bool,
    pub no_delete: bool,
    pub prev_kv: bool,
    pub progress_notify: bool,
    pub fragment: bool,
    /// 0: the stream picks the next free id.
    pub watch_id: i64,
}

impl From<pb::WatchCreateRequest> for WatchSpec {
    fn from(r: pb::WatchCreateRequest) -> WatchSpec {
        use pb::watch_create_request::FilterType;
        WatchSpec {
            no_put: r.filters.contains(&(FilterType::Noput as i32)),
            no_delete: r.filters.contains(&(FilterType::Nodelete as i32)),
            key: r.key,
            range_end: r.range_end,
            start_rev: r.start_revision,
            prev_kv: r.prev_kv,
            progress_notify: r.progress_notify,
            fragment: r.fragment,
            watch_id: r.watch_id,
        }
    }
}

/// What the response headers carry besides the revision.
#[derive(Debug, Clone, Copy, Default)]
pub struct HeaderInfo {
    pub cluster_id: u64,
    pub member_id: u64,
    pub raft_term: u64,
}

impl HeaderInfo {
    fn at(&self, revision: i64) -> Option<pb::ResponseHeader> {
        Some(pb::ResponseHeader {
            cluster_id: self.cluster_id,
            member_id: self.member_id,
            revision,
            raft_term: self.raft_term,
        })
    }
}

struct Watcher {
    spec: WatchSpec,
    /// The first revision not yet handed to the stream.
    next_rev: i64,
    synced: bool,
    /// When this watcher last got a response (for progress notifications).
    last_sent: Instant,
}

impl Watcher {
    fn range(&self) -> KeyRange<'_> {
        KeyRange::new(&self.spec.key, &self.spec.range_end)
    }

    /// Whether the watcher's filters let an event of its range through.
    fn wants(&self, e: &Event) -> bool {
        if e.is_delete() {
            !self.spec.no_delete
        } else {
            !self.spec.no_put
        }
    }

    fn matches(&self, e: &Event) -> bool {
        self.range().contains(&e.key) && self.wants(e)
    }
}

/// The events of one notification by key, so a watcher finds its own
/// without looking at every event (etcd indexes its watchers instead).
struct EventsByKey<'a> {
    by_key: BTreeMap<&'a [u8], Vec<usize>>,
}

impl<'a> EventsByKey<'a> {
    fn new(events: &[&'a Event]) -> EventsByKey<'a> {
        let mut by_key: BTreeMap<&'a [u8], Vec<usize>> = BTreeMap::new();
        for (i, e) in events.iter().enumerate() {
            by_key.entry(&e.key[..]).or_default().push(i);
        }
        EventsByKey { by_key }
    }

    /// Positions of the events in `range`, in order.
    fn in_range(&self, range: KeyRange<'_>) -> Vec<usize> {
        let mut out: Vec<usize> = match range {
            KeyRange::Single(k) => self.by_key.get(k).cloned().unwrap_or_default(),
            KeyRange::From(k) => self
                .by_key
                .range::<[u8], _>((Bound::Included(k), Bound::Unbounded))
                .flat_map(|(_, v)| v.iter().copied())
                .collect(),
            KeyRange::Between(k, end) if k < end => self
                .by_key
                .range::<[u8], _>((Bound::Included(k), Bound::Excluded(end)))
                .flat_map(|(_, v)| v.iter().copied())
                .collect(),
            KeyRange::Between(..) => Vec::new(),
        };
        out.sort_unstable();
        out
    }
}

struct Stream {
    tx: mpsc::Sender<pb::WatchResponse>,
    /// Largest response before a fragmenting watcher's events are split.
    max_bytes: usize,
    backlog: VecDeque<pb::WatchResponse>,
    watchers: HashMap<i64, Watcher>,
    next_auto_id: i64,
    /// A progress request waits until every watcher is synced.
    progress_pending: bool,
    closed: bool,
}

impl Stream {
    /// Sends backlog first; false if something is still waiting.
    fn flush(&mut self) -> bool {
        while let Some(r) = self.backlog.pop_front() {
            match self.tx.try_send(r) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(r)) => {
                    self.backlog.push_front(r);
                    return false;
                }
                Err(mpsc::error::TrySendError::Closed(_)) => {
                    self.closed = true;
                    return false;
                }
            }
        }
        true
    }

    /// Keeps a response for later. A stream whose backlog outgrows
    /// [`BACKLOG_MAX`] reads nothing at all: it is closed rather than
    /// allowed to hold memory without bound.
    fn queue(&mut self, r: pb::WatchResponse) {
        if self.backlog.len() >= BACKLOG_MAX {
            tracing::warn!("closing a watch stream whose client reads nothing");
            self.backlog.clear();
            self.closed = true;
            return;
        }
        self.backlog.push_back(r);
    }

    /// A response that must arrive (control, or the rest of a fragmented one).
    fn send_or_queue(&mut self, r: pb::WatchResponse) {
        if self.flush() {
            match self.tx.try_send(r) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(r)) => self.queue(r),
                Err(mpsc::error::TrySendError::Closed(_)) => self.closed = true,
            }
        } else if !self.closed {
            self.queue(r);
        }
    }

    /// Sends events to a watcher if the stream has room now: false if not
    /// (nothing sent). A fragmenting watcher's large response goes out in
    /// parts; parts that do not fit wait in the backlog.
    fn try_send_events(
        &mut self,
        id: i64,
        header: Option<pb::ResponseHeader>,
        events: Vec<mvccpb::Event>,
    ) -> bool {
        if !self.flush() {
            return false;
        }
        let fragment = self.watchers.get(&id).is_some_and(|w| w.spec.fragment);
        let mut parts = if fragment {
            fragments(id, header, events, self.max_bytes)
        } else {
            vec![pb::WatchResponse {
                header,
                watch_id: id,
                events,
                ..Default::default()
            }]
        };
        let first = parts.remove(0);
        match self.tx.try_send(first) {
            Ok(()) => {
                for p in parts {
                    self.queue(p);
                }
                true
            }
            Err(mpsc::error::TrySendError::Full(_)) => false,
            Err(mpsc::error::TrySendError::Closed(_)) => {
                self.closed = true;
                false
            }
        }
    }
}

/// Splits a response so each part stays under `max_bytes` (a single event
/// larger than that goes alone); all parts but the last are marked `fragment`.
fn fragments(
    id: i64,
    header: Option<pb::ResponseHeader>,
    events: Vec<mvccpb::Event>,
    max_bytes: usize,
) -> Vec<pb::WatchResponse> {
    let mut parts: Vec<pb::WatchResponse> = Vec::new();
    let mut current = Vec::new();
    let mut size = 0;
    for e in events {
        let len = e.encoded_len() + 8;
        if !current.is_empty() && size + len > max_bytes {
            parts.push(pb::WatchResponse {
                header,
                watch_id: id,
                events: std::mem::take(&mut current),
                fragment: true,
                ..Default::default()
            });
            size = 0;
        }
        size += len;
        current.push(e);
    }
    parts.push(pb::WatchResponse {
        header,
        watch_id: id,
        events: current,
        ..Default::default()
    });
    parts
}

/// The wire event for `e`, with the key's previous version if asked.
fn to_pb(store: &KvStore, e: &Event, prev_kv: bool) -> mvccpb::Event {
    let kv = if e.is_delete() {
        mvccpb::KeyValue {
            key: e.key.clone(),
            mod_revision: e.rev().main,
            ..Default::default()
        }
    } else {
        to_key_value(&e.key, &e.kv)
    };
    let prev = if prev_kv {
        store
            .index()
            .get(&e.key, e.rev().main - 1)
            .filter(|v| !v.is_tombstone())
            .map(|v| to_key_value(&e.key, v))
    } else {
        None
    };
    mvccpb::Event {
        r#type: if e.is_delete() {
            mvccpb::event::EventType::Delete as i32
        } else {
            mvccpb::event::EventType::Put as i32
        },
        kv: Some(kv),
        prev_kv: prev,
    }
}

#[derive(Default)]
pub struct WatchHub {
    streams: HashMap<StreamId, Stream>,
}

impl WatchHub {
    pub fn open(&mut self, id: StreamId, tx: mpsc::Sender<pb::WatchResponse>, max_bytes: usize) {
        self.streams.insert(
            id,
            Stream {
                tx,
                max_bytes,
                backlog: VecDeque::new(),
                watchers: HashMap::new(),
                next_auto_id: 0,
                progress_pending: false,
                closed: false,
            },
        );
        self.update_gauges();
    }

    pub fn close(&mut self, id: StreamId) {
        self.streams.remove(&id);
        self.update_gauges();
    }

    pub fn is_empty(&self) -> bool {
        self.streams.is_empty()
    }

    /// After the store was replaced (a snapshot installed): every watcher
    /// re-reads from its next revision (or is canceled if that is compacted).
    pub fn resync_all(&mut self) {
        for w in self
            .streams
            .values_mut()
            .flat_map(|s| s.watchers.values_mut())
        {
            w.synced = false;
        }
    }

    /// Whether some watcher waits for `catch_up` (or a backlog for room).
    #[cfg(test)]
    pub fn needs_catch_up(&self) -> bool {
        self.streams.values().any(|s| {
            !s.backlog.is_empty() || s.progress_pending || s.watchers.values().any(|w| !w.synced)
        })
    }

    /// Creates a watcher; answers `created` (or, refused, `created` and
    /// `canceled` with etcd's reason) before any of its events.
    pub fn create(&mut self, stream: StreamId, spec: WatchSpec, store: &KvStore, h: HeaderInfo) {
        let Some(s) = self.streams.get_mut(&stream) else {
            return;
        };
        let header = h.at(store.current_rev());
        let refuse = |s: &mut Stream, id: i64, reason: &str| {
            s.send_or_queue(pb::WatchResponse {
                header,
                watch_id: id,
                created: true,
                canceled: true,
                cancel_reason: reason.to_string(),
                ..Default::default()
            })
        };
        let empty_range =
            !spec.range_end.is_empty() && spec.range_end[..] != [0] && spec.key >= spec.range_end;
        if empty_range {
            return refuse(s, -1, EMPTY_RANGE);
        }
        let id = if spec.watch_id != 0 {
            if s.watchers.contains_key(&spec.watch_id) {
                return refuse(s, -1, DUPLICATE_ID);
            }
            spec.watch_id
        } else {
            while s.watchers.contains_key(&s.next_auto_id) {
                s.next_auto_id += 1;
            }
            s.next_auto_id += 1;
            s.next_auto_id - 1
        };
        if s.watchers.len() >= WATCHERS_PER_STREAM_MAX {
            return refuse(s, -1, "keel: too many watchers on this stream");
        }
        s.send_or_queue(pb::WatchResponse {
            header,
            watch_id: id,
            created: true,
            ..Default::default()
        });
        let next_rev = if spec.start_rev > 0 {
            spec.start_rev
        } else {
            store.current_rev() + 1
        };
        s.watchers.insert(
            id,
            Watcher {
                spec,
                next_rev,
                synced: next_rev > store.current_rev(),
                last_sent: Instant::now(),
            },
        );
        // History first, now rather than at the next tick.
        catch_up_stream(s, store, h, None);
        self.update_gauges();
    }

    /// Cancels a watcher; unknown ids are ignored, as etcd does.
    pub fn cancel(&mut self, stream: StreamId, id: i64, store: &KvStore, h: HeaderInfo) {
        let Some(s) = self.streams.get_mut(&stream) else {
            return;
        };
        if s.watchers.remove(&id).is_some() {
            s.send_or_queue(pb::WatchResponse {
                header: h.at(store.current_rev()),
                watch_id: id,
                canceled: true,
                ..Default::default()
            });
        }
        self.update_gauges();
    }

    /// A progress request: answered (watch id -1) once every watcher of the
    /// stream is synced, so its revision promises all earlier events were sent.
    pub fn request_progress(&mut self, stream: StreamId, store: &KvStore, h: HeaderInfo) {
        if let Some(s) = self.streams.get_mut(&stream) {
            s.progress_pending = true;
            answer_progress(s, store, h);
        }
    }

    /// Hands the events of revisions `from..=store.current_rev()` (just
    /// applied) to every synced watcher.
    pub fn notify(&mut self, from: i64, store: &KvStore, h: HeaderInfo) {
        let to = store.current_rev();
        if from > to || self.streams.is_empty() {
            return;
        }
        let events: Vec<&Event> = store
            .events_since(from)
            .take_while(|e| e.rev().main <= to)
            .collect();
        let index = EventsByKey::new(&events);
        let header = h.at(to);
        for s in self.streams.values_mut() {
            let ids: Vec<i64> = s
                .watchers
                .iter()
                .filter(|(_, w)| w.synced)
                .map(|(id, _)| *id)
                .collect();
            for id in ids {
                let w = &s.watchers[&id];
                // A watcher may start at a future revision.
                let matched: Vec<mvccpb::Event> = index
                    .in_range(w.range())
                    .into_iter()
                    .map(|i| events[i])
                    .filter(|e| e.rev().main >= w.next_rev && w.wants(e))
                    .map(|e| to_pb(store, e, w.spec.prev_kv))
                    .collect();
                let next = w.next_rev.max(to + 1);
                if matched.is_empty() {
                    s.watchers.get_mut(&id).expect("listed").next_rev = next;
                    continue;
                }
                let sent = s.try_send_events(id, header, matched);
                let w = s.watchers.get_mut(&id).expect("listed");
                if sent {
                    w.next_rev = next;
                    w.last_sent = Instant::now();
                } else {
                    // next_rev stays: catch_up re-reads these revisions.
                    tracing::debug!(
                        watch_id = id,
                        from = w.next_rev,
                        "slow watcher: catching up from history"
                    );
                    w.synced = false;
                }
            }
        }
        self.drop_closed();
        self.update_gauges();
    }

    /// Brings unsynced watchers forward from history, sends waiting
    /// backlogs, answers pending progress requests, and sends progress
    /// notifications to idle watchers that asked for them.
    pub fn catch_up(&mut self, store: &KvStore, h: HeaderInfo, progress_every: Duration) {
        for s in self.streams.values_mut() {
            catch_up_stream(s, store, h, Some(progress_every));
        }
        self.drop_closed();
        self.update_gauges();
    }

    fn drop_closed(&mut self) {
        self.streams.retain(|_, s| !s.closed && !s.tx.is_closed());
    }

    fn update_gauges(&self) {
        let m = metrics();
        m.watch_streams.set(self.streams.len() as i64);
        let watchers: usize = self.streams.values().map(|s| s.watchers.len()).sum();
        m.watchers.set(watchers as i64);
        let slow = self
            .streams
            .values()
            .flat_map(|s| s.watchers.values())
            .filter(|w| !w.synced)
            .count();
        m.watch_slow_watchers.set(slow as i64);
        let pending: usize = self
            .streams
            .values()
            .flat_map(|s| s.backlog.iter())
            .map(|r| r.events.len())
            .sum();
        m.watch_pending_events.set(pending as i64);
    }
}

/// One stream's part of [`WatchHub::catch_up`]; progress notifications
/// only when `progress_every` is given.
fn catch_up_stream(
    s: &mut Stream,
    store: &KvStore,
    h: HeaderInfo,
    progress_every: Option<Duration>,
) {
    let current = store.current_rev();
    let compacted = store.compact_rev();
    if !s.flush() {
        return;
    }
    let ids: Vec<i64> = s
        .watchers
        .iter()
        .filter(|(_, w)| !w.synced)
        .map(|(id, _)| *id)
        .collect();
    for id in ids {
        let w = &s.watchers[&id];
        if w.next_rev < compacted {
            s.watchers.remove(&id);
            // etcd's compaction response carries revision 0 in its header.
            s.send_or_queue(pb::WatchResponse {
                header: h.at(0),
                watch_id: id,
                canceled: true,
                compact_revision: compacted,
                ..Default::default()
            });
            continue;
        }
        let upto = (w.next_rev + CATCH_UP_REVS - 1).min(current);
        let matched: Vec<mvccpb::Event> = store
            .events_since(w.next_rev)
            .take_while(|e| e.rev().main <= upto)
            .filter(|e| w.matches(e))
            .map(|e| to_pb(store, e, w.spec.prev_kv))
            .collect();
        if !matched.is_empty() && !s.try_send_events(id, h.at(current), matched) {
            return;
        }
        let w = s.watchers.get_mut(&id).expect("listed");
        w.next_rev = upto + 1;
        w.last_sent = Instant::now();
        w.synced = w.next_rev > current;
    }
    answer_progress(s, store, h);
    let Some(every) = progress_every else {
        return;
    };
    for (id, w) in s.watchers.iter_mut() {
        if s.backlog.is_empty()
            && w.synced
            && w.spec.progress_notify
            && w.last_sent.elapsed() >= every
        {
            let r = pb::WatchResponse {
                header: h.at(current),
                watch_id: *id,
                ..Default::default()
            };
            if s.tx.try_send(r).is_ok() {
                w.last_sent = Instant::now();
            }
        }
    }
}

fn answer_progress(s: &mut Stream, store: &KvStore, h: HeaderInfo) {
    if s.progress_pending && s.watchers.values().all(|w| w.synced) {
        s.progress_pending = false;
        s.send_or_queue(pb::WatchResponse {
            header: h.at(store.current_rev()),
            watch_id: -1,
            ..Default::default()
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(store: &mut KvStore, key: &str, value: &str) {
        let mut txn = store.begin_write();
        txn.put(key.as_bytes(), Bytes::from(value.to_string()), 0);
        txn.end();
    }

    fn spec(prefix: &str) -> WatchSpec {
        let mut end = prefix.as_bytes().to_vec();
        *end.last_mut().unwrap() += 1;
        WatchSpec {
            key: Bytes::from(prefix.to_string()),
            range_end: Bytes::from(end),
            ..Default::default()
        }
    }

    /// Drains the channel: the revisions of the events received.
    fn drain(
        rx: &mut mpsc::Receiver<pb::WatchResponse>,
        revs: &mut Vec<i64>,
    ) -> Vec<pb::WatchResponse> {
        let mut all = Vec::new();
        while let Ok(r) = rx.try_recv() {
            revs.extend(r.events.iter().map(|e| e.kv.as_ref().unwrap().mod_revision));
            all.push(r);
        }
        all
    }

    #[test]
    fn a_full_stream_falls_behind_and_catches_up_from_history() {
        let mut store = KvStore::default();
        let h = HeaderInfo::default();
        let mut hub = WatchHub::default();
        // Room for the created response and one more.
        let (tx, mut rx) = mpsc::channel(2);
        hub.open(1, tx, 1 << 20);
        hub.create(1, spec("k/"), &store, h);
        let mut revs = Vec::new();
        for i in 0..50 {
            let from = store.current_rev() + 1;
            put(&mut store, &format!("k/{}", i % 7), "v");
            put(&mut store, "other", "v");
            hub.notify(from, &store, h);
        }
        assert!(
            hub.needs_catch_up(),
            "the watcher should have fallen behind"
        );
        let mut rounds = 0;
        loop {
            drain(&mut rx, &mut revs);
            if !hub.needs_catch_up() {
                break;
            }
            hub.catch_up(&store, h, Duration::from_secs(3600));
            rounds += 1;
            assert!(rounds < 200);
        }
        // Every put under k/ once, in order: revisions 2, 4, 6, ...
        let want: Vec<i64> = (0..50).map(|i| 2 + 2 * i).collect();
        assert_eq!(revs, want);
        // Synced again: the next write arrives at once.
        let from = store.current_rev() + 1;
        put(&mut store, "k/x", "v");
        hub.notify(from, &store, h);
        drain(&mut rx, &mut revs);
        assert_eq!(*revs.last().unwrap(), store.current_rev());
    }

    /// The events each watcher gets from the by-key index equal those of
    /// looking at every event, for single keys, ranges, from-key ranges
    /// and filters, over random batches of puts and deletes.
    #[test]
    fn indexed_notification_matches_every_event_scan() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let mut store = KvStore::default();
        let h = HeaderInfo::default();
        let mut hub = WatchHub::default();
        let (tx, mut rx) = mpsc::channel(1 << 16);
        hub.open(1, tx, 1 << 30);
        let keys: Vec<String> = (0..20).map(|i| format!("k{i:02}")).collect();
        let mut specs = Vec::new();
        for i in 0..60 {
            let a = &keys[rng.gen_range(0..keys.len())];
            let b = &keys[rng.gen_range(0..keys.len())];
            let range_end: Vec<u8> = match i % 4 {
                0 => Vec::new(),
                1 => vec![0],
                _ if a < b => b.as_bytes().to_vec(),
                _ => format!("{a}\u{7f}").into_bytes(),
            };
            let spec = WatchSpec {
                key: Bytes::from(a.clone()),
                range_end: Bytes::from(range_end),
                no_put: i % 7 == 3,
                no_delete: i % 5 == 2,
                watch_id: i + 1,
                ..Default::default()
            };
            hub.create(1, spec.clone(), &store, h);
            specs.push(spec);
        }
        for _ in 0..50 {
            let from = store.current_rev() + 1;
            for _ in 0..rng.gen_range(1..6) {
                let k = &keys[rng.gen_range(0..keys.len())];
                let mut txn = store.begin_write();
                if rng.gen_bool(0.3) {
                    txn.delete_range(KeyRange::Single(k.as_bytes()));
                } else {
                    txn.put(k.as_bytes(), Bytes::from_static(b"v"), 0);
                }
                txn.end();
            }
            hub.notify(from, &store, h);
        }
        let mut got: HashMap<i64, Vec<i64>> = HashMap::new();
        while let Ok(r) = rx.try_recv() {
            let revs = got.entry(r.watch_id).or_default();
            revs.extend(r.events.iter().map(|e| e.kv.as_ref().unwrap().mod_revision));
        }
        for spec in specs {
            let w = Watcher {
                spec: spec.clone(),
                next_rev: 0,
                synced: true,
                last_sent: Instant::now(),
            };
            let want: Vec<i64> = store
                .events_since(1)
                .filter(|e| w.matches(e))
                .map(|e| e.rev().main)
                .collect();
            let got = got.remove(&spec.watch_id).unwrap_or_default();
            assert_eq!(got, want, "watch {spec:?}");
        }
    }

    #[test]
    fn a_watcher_behind_the_compaction_point_is_canceled() {
        let mut store = KvStore::default();
        let h = HeaderInfo::default();
        let mut hub = WatchHub::default();
        let (tx, mut rx) = mpsc::channel(1);
        hub.open(1, tx, 1 << 20);
        hub.create(1, spec("k/"), &store, h);
        for i in 0..5 {
            let from = store.current_rev() + 1;
            put(&mut store, &format!("k/{i}"), "v");
            hub.notify(from, &store, h);
        }
        store.compact(4).unwrap();
        let mut revs = Vec::new();
        let created = drain(&mut rx, &mut revs);
        assert!(created[0].created);
        hub.catch_up(&store, h, Duration::from_secs(3600));
        let r = drain(&mut rx, &mut revs);
        assert_eq!(r.len(), 1);
        assert!(r[0].canceled);
        assert_eq!(r[0].compact_revision, 4);
        assert!(revs.is_empty());
        assert!(!hub.needs_catch_up());
    }

    #[test]
    fn a_stream_that_reads_nothing_is_closed_not_buffered_without_bound() {
        let store = KvStore::default();
        let h = HeaderInfo::default();
        let mut hub = WatchHub::default();
        let (tx, rx) = mpsc::channel(1);
        hub.open(1, tx, 1 << 20);
        // Every create of a taken id queues a refusal the client never reads.
        let taken = WatchSpec {
            watch_id: 5,
            ..spec("k/")
        };
        for _ in 0..BACKLOG_MAX + 10 {
            hub.create(1, taken.clone(), &store, h);
        }
        hub.catch_up(&store, h, Duration::from_secs(3600));
        assert!(hub.is_empty(), "the stream should have been closed");
        drop(rx);
    }

    #[test]
    fn fragments_keep_every_event_and_mark_all_but_the_last() {
        let events: Vec<mvccpb::Event> = (0..10)
            .map(|i| mvccpb::Event {
                kv: Some(mvccpb::KeyValue {
                    key: Bytes::from(format!("k{i}")),
                    value: Bytes::from(vec![0u8; 100]),
                    ..Default::default()
                }),
                ..Default::default()
            })
            .collect();
        let parts = fragments(3, None, events, 350);
        assert!(parts.len() > 1);
        assert_eq!(parts.iter().map(|p| p.events.len()).sum::<usize>(), 10);
        assert!(parts[..parts.len() - 1].iter().all(|p| p.fragment));
        assert!(!parts.last().unwrap().fragment);
        assert!(parts.iter().all(|p| p.watch_id == 3));
    }
}
