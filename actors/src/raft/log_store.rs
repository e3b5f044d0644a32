//! openraft's log storage: an in-memory copy of the log since the last purge
//! (openraft reads entries back to apply and replicate them) made durable by
//! the WAL writer.
//!
//! `append` hands the entries to the WAL writer and returns at once; openraft
//! learns of durability through the `LogFlushed` callback, which the writer
//! calls after the batch's fdatasync. That is what lets many appends share
//! one fsync. `save_vote` waits for its fsync: a vote must be durable before
//! it is acted on.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::fmt::Debug;
use std::io;
use std::ops::{Bound, RangeBounds};
use std::rc::Rc;

use bytes::Bytes;
use keel_storage::wal::{EntryRecord, Recovered};
use openraft::storage::{LogFlushed, RaftLogStorage};
use openraft::{EntryPayload, LogState, RaftLogReader, StorageIOError};
use tokio::sync::{mpsc, oneshot};

use super::codec::{
    decode_membership, encode_membership, log_id_from, log_id_record, vote_from, vote_record,
};
use super::state_machine::DurableSnapshot;
use super::types::{Entry, LogId, Membership, NodeId, Proposal, StorageError, TypeConfig, Vote};
use crate::wal_writer::{WalCmd, WalEntry};

/// `payload_kind` values of WAL entry records.
pub const PAYLOAD_BLANK: u8 = 0;
pub const PAYLOAD_NORMAL: u8 = 1;
pub const PAYLOAD_MEMBERSHIP: u8 = 2;

/// Copies bytes into a 16-byte aligned buffer, as reading an archived
/// command in place requires.
pub fn aligned_bytes(b: &[u8]) -> Bytes {
    let mut v = rkyv::util::AlignedVec::<16>::with_capacity(b.len());
    v.extend_from_slice(b);
    Bytes::from_owner(v)
}

/// The log after the purge point, contiguous by index.
#[derive(Default)]
pub struct LogCache {
    purged: Option<LogId>,
    entries: VecDeque<Entry>,
    /// Beside each entry, the payload bytes of every entry appended up to
    /// and including it (purged ones too), so that the bytes of a stretch
    /// of the log are one subtraction.
    payload_ends: VecDeque<u64>,
    /// The same total for the entries purged so far.
    purged_payload: u64,
}

/// The bytes of an entry's client requests (membership entries, a few
/// bytes, count as none).
fn payload_len(e: &Entry) -> u64 {
    match &e.payload {
        EntryPayload::Normal(p) => p.batch.len() as u64,
        _ => 0,
    }
}

impl LogCache {
    fn first_index(&self) -> Option<u64> {
        self.entries.front().map(|e| e.log_id.index)
    }

    fn push_back(&mut self, e: Entry) {
        let before = self.payload_ends.back().copied();
        let end = before.unwrap_or(self.purged_payload) + payload_len(&e);
        self.payload_ends.push_back(end);
        self.entries.push_back(e);
    }

    fn pop_back(&mut self) {
        self.entries.pop_back();
        self.payload_ends.pop_back();
    }

    fn pop_front(&mut self) {
        self.entries.pop_front();
        if let Some(end) = self.payload_ends.pop_front() {
            self.purged_payload = end;
        }
    }

    /// The index to purge up to so that the cached entries up to `upto`
    /// carry at most `limit` payload bytes; `None` if they already do.
    fn purge_point_within(&self, upto: u64, limit: u64) -> Option<u64> {
        let first = self.first_index()?;
        let through = self.payload_bytes(first.saturating_sub(1), upto);
        if through <= limit {
            return None;
        }
        // Purge through the first entry whose running total reaches the
        // total through `upto` less `limit`: what is left carries at most
        // `limit`.
        let i = upto.checked_sub(first)?.min(self.entries.len() as u64 - 1) as usize;
        let purge_total = self.payload_ends[i] - limit;
        let n = self.payload_ends.partition_point(|&end| end < purge_total);
        Some(first + n as u64)
    }

    /// Payload bytes of the cached entries with indexes in `(after, upto]`.
    fn payload_bytes(&self, after: u64, upto: u64) -> u64 {
        let Some(first) = self.first_index() else {
            return 0;
        };
        // The total through entry `index`, clamped to the cached ones.
        let end_at = |index: u64| match index.checked_sub(first) {
            None => self.purged_payload,
            Some(i) => self.payload_ends[(i as usize).min(self.entries.len() - 1)],
        };
        end_at(upto).saturating_sub(end_at(after))
    }

    fn last_log_id(&self) -> Option<LogId> {
        self.entries.back().map(|e| e.log_id).or(self.purged)
    }
}

fn entry_from_record(r: EntryRecord) -> Result<Entry, String> {
    let log_id = log_id_from(&r.log_id);
    let payload = match r.payload_kind {
        PAYLOAD_BLANK => EntryPayload::Blank,
        PAYLOAD_NORMAL => EntryPayload::Normal(Proposal::from_log(aligned_bytes(&r.payload))),
        PAYLOAD_MEMBERSHIP => EntryPayload::Membership(decode_membership(&r.payload)?),
        k => {
            return Err(format!(
                "unknown entry payload kind {k} at index {}",
                log_id.index
            ))
        }
    };
    Ok(Entry { log_id, payload })
}

/// An entry's payload as the WAL and the peer transport carry it: its
/// `PAYLOAD_*` kind and bytes.
pub fn payload_of(e: &Entry) -> (u8, Bytes) {
    match &e.payload {
        EntryPayload::Blank => (PAYLOAD_BLANK, Bytes::new()),
        EntryPayload::Normal(p) => (PAYLOAD_NORMAL, p.batch.clone()),
        EntryPayload::Membership(m) => {
            let mut out = Vec::new();
            encode_membership(m, &mut out);
            (PAYLOAD_MEMBERSHIP, Bytes::from(out))
        }
    }
}

fn to_wal_entry(e: &Entry) -> WalEntry {
    let (payload_kind, payload) = payload_of(e);
    WalEntry {
        log_id: log_id_record(&e.log_id),
        payload_kind,
        payload,
    }
}

/// The vote a member restarts with: the one it saved, except that a member
/// that led when it stopped restarts as a follower, as etcd's members do.
///
/// openraft 0.9 restores a member whose saved vote is its own committed vote
/// as leader of that old term at once. Its commit index starts again from
/// what it had applied, and the term's followers still accept its
/// heartbeats until their election timers fire, so its read-index rounds
/// succeed and it would serve linearizable reads from its pre-crash state,
/// missing writes the cluster acknowledged while it was down. Uncommitted,
/// the same vote still keeps it from voting for anyone else in that term,
/// and any leader of that term or a later one outranks it; it leads again
/// only by winning a new election, whose first entry then bounds its reads.
pub fn restart_vote(saved: Vote, me: NodeId) -> Vote {
    if saved.is_committed() && saved.leader_id.voted_for() == Some(me) {
        Vote::new(saved.leader_id.term, me)
    } else {
        saved
    }
}

#[derive(Clone)]
pub struct LogReader(Rc<RefCell<LogCache>>);

impl LogReader {
    /// Payload bytes of the cached entries with indexes in `(after, upto]`.
    pub fn payload_bytes(&self, after: u64, upto: u64) -> u64 {
        self.0.borrow().payload_bytes(after, upto)
    }

    /// The index to purge up to so that the cached entries up to `upto`
    /// carry at most `limit` payload bytes; `None` if they already do.
    pub fn purge_point_within(&self, upto: u64, limit: u64) -> Option<u64> {
        self.0.borrow().purge_point_within(upto, limit)
    }
}

impl RaftLogReader<TypeConfig> for LogReader {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        let cache = self.0.borrow();
        let Some(first) = cache.first_index() else {
            return Ok(Vec::new());
        };
        let start = match range.start_bound() {
            Bound::Included(&s) => s,
            Bound::Excluded(&s) => s + 1,
            Bound::Unbounded => first,
        }
        .max(first);
        let skip = (start - first) as usize;
        Ok(cache
            .entries
            .iter()
            .skip(skip)
            .take_while(|e| range.contains(&e.log_id.index))
            .cloned()
            .collect())
    }
}

pub struct LogStore {
    cache: Rc<RefCell<LogCache>>,
    wal: mpsc::Sender<WalCmd>,
    vote: Option<Vote>,
    snapshot: DurableSnapshot,
}

fn wal_gone() -> StorageError {
    StorageIOError::write_logs(&io::Error::other("WAL writer stopped")).into()
}

impl LogStore {
    /// Builds the log from what WAL recovery found; `me` is this member.
    pub fn from_recovered(
        r: &mut Recovered,
        wal: mpsc::Sender<WalCmd>,
        me: NodeId,
        snapshot: DurableSnapshot,
    ) -> Result<LogStore, String> {
        let mut cache = LogCache {
            purged: r.purged.as_ref().map(log_id_from),
            entries: VecDeque::with_capacity(r.entries.len()),
            ..LogCache::default()
        };
        for rec in std::mem::take(&mut r.entries) {
            cache.push_back(entry_from_record(rec)?);
        }
        Ok(LogStore {
            cache: Rc::new(RefCell::new(cache)),
            wal,
            vote: r.vote.as_ref().map(|v| restart_vote(vote_from(v), me)),
            snapshot,
        })
    }

    /// The newest membership the log holds, if an entry after the purge
    /// point holds one.
    pub fn last_membership(&self) -> Option<Membership> {
        self.cache
            .borrow()
            .entries
            .iter()
            .rev()
            .find_map(|e| match &e.payload {
                EntryPayload::Membership(m) => Some(m.clone()),
                _ => None,
            })
    }

    /// The last entry's log id (the purge point's if none is kept).
    pub fn last_log_id(&self) -> Option<LogId> {
        self.cache.borrow().last_log_id()
    }

    /// Appends `entry` and waits until it is durable. For start-up only,
    /// before raft runs (`--force-new-cluster`): raft's own appends learn
    /// of durability through its callback instead.
    pub async fn append_before_start(&mut self, entry: Entry) -> Result<(), StorageError> {
        let (tx, rx) = oneshot::channel();
        self.send(WalCmd::Append {
            entries: vec![to_wal_entry(&entry)],
            done: Box::new(move |r| {
                let _ = tx.send(r);
            }),
        })
        .await?;
        match rx.await {
            Ok(Ok(())) => {
                self.cache.borrow_mut().push_back(entry);
                Ok(())
            }
            Ok(Err(e)) => Err(StorageIOError::write_logs(&e).into()),
            Err(_) => Err(wal_gone()),
        }
    }

    async fn send(&self, cmd: WalCmd) -> Result<(), StorageError> {
        self.wal.send(cmd).await.map_err(|_| wal_gone())
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        LogReader(self.cache.clone())
            .try_get_log_entries(range)
            .await
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogReader;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let c = self.cache.borrow();
        Ok(LogState {
            last_purged_log_id: c.purged,
            last_log_id: c.last_log_id(),
        })
    }

    async fn get_log_reader(&mut self) -> LogReader {
        LogReader(self.cache.clone())
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), StorageError> {
        let (tx, rx) = oneshot::channel();
        self.send(WalCmd::SaveVote {
            vote: vote_record(vote),
            done: Box::new(move |r| {
                let _ = tx.send(r);
            }),
        })
        .await?;
        match rx.await {
            Ok(Ok(())) => {
                self.vote = Some(*vote);
                Ok(())
            }
            Ok(Err(e)) => Err(StorageIOError::write_vote(&e).into()),
            Err(_) => Err(wal_gone()),
        }
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, StorageError> {
        Ok(self.vote)
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry>,
    {
        let mut wal_entries = Vec::new();
        {
            let mut c = self.cache.borrow_mut();
            for e in entries {
                wal_entries.push(to_wal_entry(&e));
                c.push_back(e);
            }
        }
        self.send(WalCmd::Append {
            entries: wal_entries,
            done: Box::new(move |r| callback.log_io_completed(r)),
        })
        .await
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        {
            let mut c = self.cache.borrow_mut();
            while c
                .entries
                .back()
                .is_some_and(|e| e.log_id.index >= log_id.index)
            {
                c.pop_back();
            }
        }
        self.send(WalCmd::Truncate {
            index: log_id.index,
        })
        .await
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        {
            let mut c = self.cache.borrow_mut();
            while c
                .entries
                .front()
                .is_some_and(|e| e.log_id.index <= log_id.index)
            {
                c.pop_front();
            }
            c.purged = Some(log_id);
        }
        match durable_purge_point(log_id, self.snapshot.last_log_id()) {
            Some(upto) => {
                self.send(WalCmd::Purge {
                    log_id: log_id_record(&upto),
                })
                .await
            }
            None => Ok(()),
        }
    }
}

/// How far the WAL may forget entries when openraft purges up to `wanted`:
/// never past the durable snapshot, which is what a restart starts from.
/// openraft purges as soon as it queues a received snapshot's install,
/// while the file is still being checked and renamed into place; what is
/// held back then is purged by the install once the file is durable
/// (`state_machine::install_snapshot`).
fn durable_purge_point(wanted: LogId, snapshot: Option<LogId>) -> Option<LogId> {
    let snapshot = snapshot?;
    Some(if snapshot.index < wanted.index {
        snapshot
    } else {
        wanted
    })
}

#[cfg(test)]
mod tests {
    use super::{durable_purge_point, restart_vote, LogCache, LogId, Vote};
    use crate::raft::types::{Entry, Proposal};
    use openraft::EntryPayload;

    #[test]
    fn the_log_knows_its_bytes_without_a_walk() {
        let entry = |index: u64, bytes: usize| Entry {
            log_id: log_id(1, index),
            payload: match bytes {
                0 => EntryPayload::Blank,
                n => EntryPayload::Normal(Proposal::from_log(bytes::Bytes::from(vec![0u8; n]))),
            },
        };
        let mut c = LogCache::default();
        for (index, bytes) in [(1, 0), (2, 10), (3, 20), (4, 40)] {
            c.push_back(entry(index, bytes));
        }
        assert_eq!(c.payload_bytes(0, 4), 70);
        assert_eq!(c.payload_bytes(1, 3), 30);
        assert_eq!(c.payload_bytes(3, 100), 40);
        assert_eq!(c.payload_bytes(4, 4), 0);
        c.pop_front();
        c.pop_front();
        // Entries gone from the front count as nothing.
        assert_eq!(c.payload_bytes(0, 4), 60);
        c.pop_back();
        c.push_back(entry(4, 5));
        assert_eq!(c.payload_bytes(0, 4), 25);
        assert_eq!(c.payload_bytes(3, 4), 5);
    }

    #[test]
    fn catch_up_entries_are_bounded_by_bytes() {
        let mut c = LogCache::default();
        for index in 1..=10 {
            c.push_back(Entry {
                log_id: log_id(1, index),
                payload: EntryPayload::Normal(Proposal::from_log(bytes::Bytes::from(vec![
                    0u8;
                    100
                ]))),
            });
        }
        // Entries 1..=8 carry 800 bytes; keeping 350 of them keeps 6..=8.
        assert_eq!(c.purge_point_within(8, 350), Some(5));
        assert_eq!(c.purge_point_within(8, 300), Some(5));
        assert_eq!(c.purge_point_within(8, 299), Some(6));
        assert_eq!(c.purge_point_within(8, 800), None);
        assert_eq!(c.purge_point_within(8, 10_000), None);
        for _ in 0..5 {
            c.pop_front();
        }
        assert_eq!(c.purge_point_within(8, 150), Some(7));
        assert_eq!(c.purge_point_within(8, 300), None);
    }

    fn log_id(term: u64, index: u64) -> LogId {
        openraft::LogId::new(openraft::CommittedLeaderId::new(term, 1), index)
    }

    #[test]
    fn the_wal_forgets_nothing_past_the_durable_snapshot() {
        // No snapshot on disk yet: nothing may go.
        assert_eq!(durable_purge_point(log_id(2, 500), None), None);
        // A received snapshot at 900 is not durable yet: up to the old one.
        assert_eq!(
            durable_purge_point(log_id(3, 900), Some(log_id(2, 400))),
            Some(log_id(2, 400))
        );
        // Behind the durable snapshot: as asked.
        assert_eq!(
            durable_purge_point(log_id(3, 880), Some(log_id(3, 900))),
            Some(log_id(3, 880))
        );
    }

    #[test]
    fn a_restarted_leader_comes_back_as_a_follower() {
        // It led term 7: restarted, it still holds its vote, uncommitted.
        assert_eq!(restart_vote(Vote::new_committed(7, 1), 1), Vote::new(7, 1));
        // A vote for another member's leadership stays as it was.
        let other = Vote::new_committed(7, 2);
        assert_eq!(restart_vote(other, 1), other);
        // So does a vote it cast for itself that never won.
        assert_eq!(restart_vote(Vote::new(8, 1), 1), Vote::new(8, 1));
        // Any leader of the same term or later outranks it.
        assert!(Vote::new_committed(7, 2) > restart_vote(Vote::new_committed(7, 1), 1));
        assert!(Vote::new_committed(8, 3) > restart_vote(Vote::new_committed(7, 1), 1));
    }
}
