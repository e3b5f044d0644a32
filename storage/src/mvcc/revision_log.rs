//! Every retained version in revision order.
//!
//! Stored as sealed chunks of [`CHUNK_EVENTS`] events behind `Arc`s plus one
//! open chunk. Appending never touches a sealed chunk, so a [`LogView`]
//! (cloning the chunk list and copying the open chunk, at most
//! `CHUNK_EVENTS` cheap clones) is a consistent, immutable picture of the
//! store that a background task can write to disk while the store moves on.
//!
//! A compaction removes events one chunk per [`RevisionLog::compact_step`],
//! so it never holds the store for long; sealed chunks may then hold fewer
//! than [`CHUNK_EVENTS`] events (never none).

use std::sync::Arc;

use bytes::Bytes;

use super::{KeyVersion, Revision};

/// Events per sealed chunk: bounds the cost of taking a view.
pub const CHUNK_EVENTS: usize = 4096;

/// One version of one key: a put, or a delete (tombstone).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub key: Bytes,
    pub kv: KeyVersion,
}

impl Event {
    pub fn rev(&self) -> Revision {
        self.kv.rev
    }

    pub fn is_delete(&self) -> bool {
        self.kv.is_tombstone()
    }
}

#[derive(Debug, Default, Clone)]
pub struct RevisionLog {
    /// Non-empty chunks, in revision order.
    sealed: Vec<Arc<Vec<Event>>>,
    open: Vec<Event>,
    /// Events in `sealed` and `open`.
    len: usize,
}

/// An immutable picture of the revision log.
#[derive(Debug, Clone, Default)]
pub struct LogView {
    chunks: Vec<Arc<Vec<Event>>>,
}

impl LogView {
    pub fn iter(&self) -> impl Iterator<Item = &Event> {
        self.chunks.iter().flat_map(|c| c.iter())
    }

    pub fn len(&self) -> usize {
        self.chunks.iter().map(|c| c.len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl RevisionLog {
    pub fn push(&mut self, e: Event) {
        debug_assert!(
            self.last_rev().is_none_or(|r| r < e.rev()),
            "revisions ascend"
        );
        self.open.push(e);
        self.len += 1;
        if self.open.len() == CHUNK_EVENTS {
            let full = std::mem::replace(&mut self.open, Vec::with_capacity(CHUNK_EVENTS));
            self.sealed.push(Arc::new(full));
        }
    }

    fn last_rev(&self) -> Option<Revision> {
        self.open
            .last()
            .or_else(|| self.sealed.last().and_then(|c| c.last()))
            .map(Event::rev)
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn view(&self) -> LogView {
        let mut chunks = self.sealed.clone();
        if !self.open.is_empty() {
            chunks.push(Arc::new(self.open.clone()));
        }
        LogView { chunks }
    }

    pub fn iter(&self) -> impl Iterator<Item = &Event> {
        self.sealed
            .iter()
            .flat_map(|c| c.iter())
            .chain(self.open.iter())
    }

    /// Events with main revision `from` or later, in order (a binary search
    /// finds the start: chunks and events ascend).
    pub fn since(&self, from: i64) -> impl Iterator<Item = &Event> {
        let before = |e: &Event| e.rev().main < from;
        let chunk = self
            .sealed
            .partition_point(|c| c.last().is_some_and(before));
        let (sealed_tail, open_start) = if chunk < self.sealed.len() {
            let at = self.sealed[chunk].partition_point(before);
            (Some((chunk, at)), 0)
        } else {
            (None, self.open.partition_point(before))
        };
        let sealed = sealed_tail.into_iter().flat_map(move |(c, at)| {
            self.sealed[c][at..]
                .iter()
                .chain(self.sealed[c + 1..].iter().flat_map(|c| c.iter()))
        });
        sealed.chain(self.open[open_start..].iter())
    }

    /// One step of a compaction at `rev`: of the events of main revision
    /// `rev` or older in the sealed chunk at `cursor` (the open chunk once
    /// `cursor` is past the sealed ones), keeps those `keep` accepts.
    /// Returns the cursor of the next step, or `None` when no older event is
    /// left to look at. A chunk left small joins the one before it when
    /// both fit in one; views taken earlier keep the old chunks.
    pub fn compact_step(
        &mut self,
        cursor: usize,
        rev: i64,
        mut keep: impl FnMut(&Event) -> bool,
    ) -> Option<usize> {
        let mut keep = |e: &Event| e.rev().main > rev || keep(e);
        let Some(chunk) = self.sealed.get(cursor) else {
            let before = self.open.len();
            self.open.retain(|e| keep(e));
            self.len -= before - self.open.len();
            return None;
        };
        if chunk.first().is_some_and(|e| e.rev().main > rev) {
            return None;
        }
        let kept: Vec<Event> = chunk.iter().filter(|e| keep(e)).cloned().collect();
        self.len -= chunk.len() - kept.len();
        if kept.is_empty() {
            self.sealed.remove(cursor);
            return Some(cursor);
        }
        if let Some(prev) = cursor.checked_sub(1).map(|p| &self.sealed[p]) {
            if prev.len() + kept.len() <= CHUNK_EVENTS {
                let mut joined = Vec::with_capacity(prev.len() + kept.len());
                joined.extend(prev.iter().cloned());
                joined.extend(kept);
                self.sealed[cursor - 1] = Arc::new(joined);
                self.sealed.remove(cursor);
                return Some(cursor);
            }
        }
        self.sealed[cursor] = Arc::new(kept);
        Some(cursor + 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_starts_at_the_first_event_of_a_revision() {
        let mut log = RevisionLog::default();
        for main in 1..=(2 * CHUNK_EVENTS as i64 + 10) {
            log.push(ev(main));
        }
        let mains = |from| log.since(from).map(|e| e.rev().main).collect::<Vec<_>>();
        assert_eq!(mains(1).len(), 2 * CHUNK_EVENTS + 10);
        assert_eq!(mains(CHUNK_EVENTS as i64)[0], CHUNK_EVENTS as i64);
        assert_eq!(mains(CHUNK_EVENTS as i64 + 1)[0], CHUNK_EVENTS as i64 + 1);
        let last = 2 * CHUNK_EVENTS as i64 + 10;
        assert_eq!(mains(last), vec![last]);
        assert!(mains(last + 1).is_empty());
        assert_eq!(mains(-5).len(), 2 * CHUNK_EVENTS + 10);
    }

    fn ev(main: i64) -> Event {
        Event {
            key: Bytes::from_static(b"k"),
            kv: KeyVersion::tombstone(Revision { main, sub: 0 }),
        }
    }

    #[test]
    fn view_is_unaffected_by_later_pushes() {
        let mut log = RevisionLog::default();
        for i in 1..=(CHUNK_EVENTS as i64 + 10) {
            log.push(ev(i));
        }
        let view = log.view();
        for i in 0..100 {
            log.push(ev(CHUNK_EVENTS as i64 + 100 + i));
        }
        assert_eq!(view.len(), CHUNK_EVENTS + 10);
        assert_eq!(log.len(), CHUNK_EVENTS + 110);
        let revs: Vec<i64> = view.iter().map(|e| e.rev().main).collect();
        assert!(revs.windows(2).all(|w| w[0] < w[1]));
    }

    /// Runs a whole compaction at `rev` in steps; returns the step count.
    fn compact(log: &mut RevisionLog, rev: i64, keep: impl Fn(&Event) -> bool) -> usize {
        let (mut cursor, mut steps) = (0, 0);
        while let Some(next) = log.compact_step(cursor, rev, &keep) {
            (cursor, steps) = (next, steps + 1);
        }
        steps + 1
    }

    #[test]
    fn compaction_steps_keep_order_and_rejoin_small_chunks() {
        let n = 5 * CHUNK_EVENTS as i64 + 100;
        let mut log = RevisionLog::default();
        for i in 1..=n {
            log.push(ev(i));
        }
        let view = log.view();
        let rev = 4 * CHUNK_EVENTS as i64 + 7;
        compact(&mut log, rev, |e| e.rev().main % 2 == 0);
        let want: Vec<i64> = (1..=n).filter(|m| m % 2 == 0 || *m > rev).collect();
        let got: Vec<i64> = log.iter().map(|e| e.rev().main).collect();
        assert_eq!(got, want);
        assert_eq!(log.len(), want.len());
        // Halved chunks were joined in pairs; none is empty or over-full.
        assert!(log
            .sealed
            .iter()
            .all(|c| !c.is_empty() && c.len() <= CHUNK_EVENTS));
        assert!(log.sealed.len() < 5);
        // Reads from a revision find their start in the rebuilt chunks.
        for from in [1, 2, 3, rev - 1, rev, rev + 1, n] {
            let first = log.since(from).next().map(|e| e.rev().main);
            assert_eq!(
                first,
                want.iter().copied().find(|m| *m >= from),
                "from {from}"
            );
        }
        // A view taken before is untouched.
        assert_eq!(view.len(), n as usize);
        // Pushing goes on after it.
        log.push(ev(n + 1));
        assert_eq!(log.len(), want.len() + 1);
    }

    #[test]
    fn compaction_removing_everything_old_reaches_into_the_open_chunk() {
        let mut log = RevisionLog::default();
        for i in 1..=(CHUNK_EVENTS as i64 + 10) {
            log.push(ev(i));
        }
        let rev = CHUNK_EVENTS as i64 + 5;
        let steps = compact(&mut log, rev, |_| false);
        assert_eq!(steps, 2);
        let got: Vec<i64> = log.iter().map(|e| e.rev().main).collect();
        assert_eq!(
            got,
            ((rev + 1)..=(CHUNK_EVENTS as i64 + 10)).collect::<Vec<_>>()
        );
        assert_eq!(log.len(), 5);
        assert!(log.sealed.is_empty());
    }
}
