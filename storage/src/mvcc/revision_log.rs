//! Every retained version in revision order.
//!
//! Stored as sealed chunks of [`CHUNK_EVENTS`] events behind `Arc`s plus one
//! open chunk. Appending never touches a sealed chunk, so a [`LogView`]
//! (cloning the chunk list and copying the open chunk, at most
//! `CHUNK_EVENTS` cheap clones) is a consistent, immutable picture of the
//! store that a background task can write to disk while the store moves on.

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
    sealed: Vec<Arc<Vec<Event>>>,
    open: Vec<Event>,
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
        self.sealed.len() * CHUNK_EVENTS + self.open.len()
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

    /// Keeps only the events `keep` accepts, rebuilding the chunks.
    pub fn retain(&mut self, mut keep: impl FnMut(&Event) -> bool) {
        let old = std::mem::take(self);
        for e in old.iter() {
            if keep(e) {
                self.push(e.clone());
            }
        }
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

    #[test]
    fn retain_rechunks() {
        let mut log = RevisionLog::default();
        for i in 1..=10_000 {
            log.push(ev(i));
        }
        log.retain(|e| e.rev().main % 2 == 0);
        assert_eq!(log.len(), 5000);
        assert_eq!(log.iter().next().unwrap().rev().main, 2);
    }
}
