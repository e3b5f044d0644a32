//! The WAL writer actor: O_DIRECT writes through io_uring, group commit.
//!
//! Commands arrive on a bounded channel. The writer takes everything queued
//! (up to `batch_bytes_max`), encodes it into one 4 KiB-aligned DMA buffer,
//! writes it and runs one `fdatasync` (submitted together, linked); only
//! then are the commands' completions called. While that fsync runs, new commands queue up and go
//! into the next batch: never more than one fsync in flight.
//!
//! O_DIRECT needs block-aligned writes, so each flush starts at the block
//! holding the end of the previous one and rewrites that block's valid prefix
//! with identical bytes (see `docs/format.md` for why a torn rewrite cannot
//! damage acknowledged data).
//!
//! Segments are preallocated one ahead in the background: created as
//! `<seq>.wal.tmp`, zero-filled, headed, fsynced, renamed, directory fsynced.
//! When a record does not fit the current segment, the writer switches to
//! the next one and starts it with the current vote and purge point, so
//! older segments can be deleted once a snapshot covers their entries.
//!
//! A failed write or fsync stops the process: after a failed fsync the
//! page cache state is unknown and no acknowledgement may follow.
//!
//! Tests can make the writer act out a power cut at a chosen step
//! (`keel_storage::power_loss`).

use std::collections::VecDeque;
use std::io;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use glommio::io::{DmaFile, OpenOptions};
use keel_storage::wal::{
    align_down, align_up, encode_record, encode_segment_header, encoded_len, random_salt,
    segment_file_name, Body, LogIdRecord, RecordSite, SegmentHeader, SegmentInfo, TailPosition,
    VoteRecord, BLOCK_BYTES,
};
use tokio::sync::mpsc;

use keel_storage::power_loss::{self, Step};

use crate::metrics::metrics;

/// Called once the command is durable (or the WAL failed).
pub type Completion = Box<dyn FnOnce(io::Result<()>) + Send>;

/// A log entry to persist. `payload_kind` is opaque to the WAL.
pub struct WalEntry {
    pub log_id: LogIdRecord,
    pub payload_kind: u8,
    pub payload: Bytes,
}

pub enum WalCmd {
    Append {
        entries: Vec<WalEntry>,
        done: Completion,
    },
    SaveVote {
        vote: VoteRecord,
        done: Completion,
    },
    /// Entries at or after `index` are discarded (raft conflict resolution).
    Truncate {
        index: u64,
    },
    /// Entries up to `log_id` are covered by a snapshot; their segments may go.
    Purge {
        log_id: LogIdRecord,
    },
    /// Writes nothing: `done` is called once every command queued before
    /// it is durable.
    Barrier {
        done: Completion,
    },
}

impl WalCmd {
    fn bytes(&self) -> usize {
        match self {
            WalCmd::Append { entries, .. } => entries.iter().map(|e| e.payload.len() + 64).sum(),
            _ => 64,
        }
    }
}

#[derive(Debug, Clone)]
pub struct WalConfig {
    pub dir: PathBuf,
    pub segment_bytes: u64,
    /// Stop draining the queue into a batch beyond this many bytes.
    pub batch_bytes_max: usize,
    /// Wait this long for more commands before writing a batch (0: don't).
    pub linger: Duration,
}

pub struct WalWriter {
    cfg: WalConfig,
    file: Rc<DmaFile>,
    seq: u64,
    offset: u64,
    crc: u32,
    /// The current segment's record header salt.
    salt: u32,
    next_batch: u64,
    /// Valid bytes of the block holding `offset`: `[align_down(offset), offset)`.
    tail: Vec<u8>,
    segments: VecDeque<SegmentInfo>,
    vote: Option<VoteRecord>,
    purged: Option<LogIdRecord>,
    next_segment: Option<glommio::task::JoinHandle<io::Result<(DmaFile, SegmentHeader)>>>,
    /// Records that must open the current segment, not yet written.
    segment_prefix: Vec<Body<'static>>,
    /// With a power cut armed (tests only): what the disk holds for sure,
    /// the offset the last completed fdatasync covered in the current
    /// segment and the bytes of its block before it.
    durable: Option<(u64, Vec<u8>)>,
}

fn gerr(e: glommio::GlommioError<()>) -> io::Error {
    io::Error::from(e)
}

/// Creates segment `seq` ready for use: zero-filled to full size, header
/// written, durable under its final name. Returns the file and its header.
async fn prepare_segment(
    dir: PathBuf,
    seq: u64,
    segment_bytes: u64,
) -> io::Result<(DmaFile, SegmentHeader)> {
    let tmp = dir.join(format!("{}.tmp", segment_file_name(seq)));
    let path = dir.join(segment_file_name(seq));
    let file = OpenOptions::new()
        .write(true)
        .read(true)
        .create(true)
        .truncate(true)
        .dma_open(&tmp)
        .await
        .map_err(gerr)?;
    let (header, h) = encode_segment_header(seq, segment_bytes, random_salt(seq));
    const CHUNK: usize = 1 << 20;
    let mut pos = 0u64;
    while pos < segment_bytes {
        let n = CHUNK.min((segment_bytes - pos) as usize);
        let mut buf = file.alloc_dma_buffer(n);
        let b = buf.as_bytes_mut();
        b.fill(0);
        if pos == 0 {
            b[..header.len()].copy_from_slice(&header);
        }
        let written = file.write_at(buf, pos).await.map_err(gerr)?;
        if written != n {
            return Err(io::Error::other(format!(
                "short write preallocating {}",
                tmp.display()
            )));
        }
        pos += n as u64;
    }
    file.fdatasync().await.map_err(gerr)?;
    file.rename(&path).await.map_err(gerr)?;
    sync_dir(&dir).await?;
    Ok((file, h))
}

async fn sync_dir(dir: &Path) -> io::Result<()> {
    let d = glommio::io::Directory::open(dir).await.map_err(gerr)?;
    d.sync().await.map_err(gerr)?;
    d.close().await.map_err(gerr)
}

impl WalWriter {
    /// Opens the WAL for appending where recovery left it (or creates the
    /// first segment for an empty WAL).
    pub async fn open(
        cfg: WalConfig,
        tail: Option<TailPosition>,
        segments: Vec<SegmentInfo>,
        vote: Option<VoteRecord>,
        purged: Option<LogIdRecord>,
    ) -> io::Result<WalWriter> {
        let mut segments: VecDeque<SegmentInfo> = segments.into();
        let (file, seq, offset, crc, salt, next_batch, tail_bytes, prefix) = match tail {
            Some(t) => {
                let file = OpenOptions::new()
                    .write(true)
                    .read(true)
                    .dma_open(&t.path)
                    .await
                    .map_err(gerr)?;
                let block = align_down(t.offset as usize, BLOCK_BYTES) as u64;
                let head = (t.offset - block) as usize;
                let mut tail_bytes = Vec::new();
                if head > 0 {
                    let r = file
                        .read_at_aligned(block, BLOCK_BYTES)
                        .await
                        .map_err(gerr)?;
                    tail_bytes.extend_from_slice(&r[..head]);
                }
                (
                    file,
                    t.seq,
                    t.offset,
                    t.crc,
                    t.salt,
                    t.next_batch,
                    tail_bytes,
                    Vec::new(),
                )
            }
            None => {
                let (file, h) = prepare_segment(cfg.dir.clone(), 0, cfg.segment_bytes).await?;
                segments.push_back(SegmentInfo {
                    seq: 0,
                    path: cfg.dir.join(segment_file_name(0)),
                    last_index: None,
                });
                let (crc, salt) = (h.crc, h.salt);
                (
                    file,
                    0,
                    BLOCK_BYTES as u64,
                    crc,
                    salt,
                    1,
                    Vec::new(),
                    Vec::new(),
                )
            }
        };
        let mut w = WalWriter {
            cfg,
            file: Rc::new(file),
            seq,
            offset,
            crc,
            salt,
            next_batch,
            tail: tail_bytes,
            segments,
            vote,
            purged,
            next_segment: None,
            segment_prefix: prefix,
            durable: None,
        };
        if power_loss::armed() {
            w.durable = Some((w.offset, w.tail.clone()));
        }
        w.start_preparing_next();
        Ok(w)
    }

    fn start_preparing_next(&mut self) {
        let (dir, seq, bytes) = (self.cfg.dir.clone(), self.seq + 1, self.cfg.segment_bytes);
        self.next_segment = Some(glommio::spawn_local(prepare_segment(dir, seq, bytes)).detach());
    }

    /// Serves commands until every sender is gone.
    pub async fn run(mut self, mut rx: mpsc::Receiver<WalCmd>) {
        while let Some(first) = rx.recv().await {
            let mut bytes = first.bytes();
            let mut cmds = vec![first];
            if !self.cfg.linger.is_zero() {
                glommio::timer::sleep(self.cfg.linger).await;
            }
            while bytes < self.cfg.batch_bytes_max {
                match rx.try_recv() {
                    Ok(c) => {
                        bytes += c.bytes();
                        cmds.push(c);
                    }
                    Err(_) => break,
                }
            }
            if let Err(e) = self.commit(&cmds).await {
                crate::fatal(&format!("WAL write failed, stopping: {e}"));
            }
            for c in cmds {
                match c {
                    WalCmd::Append { done, .. }
                    | WalCmd::SaveVote { done, .. }
                    | WalCmd::Barrier { done } => done(Ok(())),
                    WalCmd::Truncate { .. } | WalCmd::Purge { .. } => {}
                }
            }
            if let Err(e) = self.release_purged_segments().await {
                crate::fatal(&format!("WAL segment release failed, stopping: {e}"));
            }
        }
    }

    /// Makes every record of `cmds` durable.
    async fn commit(&mut self, cmds: &[WalCmd]) -> io::Result<()> {
        // The records to write, borrowing payloads from the commands.
        let mut bodies: Vec<Body<'_>> = Vec::new();
        for c in cmds {
            match c {
                WalCmd::Append { entries, .. } => {
                    bodies.extend(entries.iter().map(|e| Body::Entry {
                        log_id: e.log_id,
                        payload_kind: e.payload_kind,
                        payload: &e.payload,
                    }))
                }
                WalCmd::SaveVote { vote, .. } => bodies.push(Body::Vote(*vote)),
                WalCmd::Truncate { index } => bodies.push(Body::Truncate { index: *index }),
                WalCmd::Purge { log_id } => bodies.push(Body::Purge(*log_id)),
                WalCmd::Barrier { .. } => {}
            }
        }
        let mut i = 0;
        while i < bodies.len() {
            let room = self.cfg.segment_bytes - self.offset;
            let prefix_len: u64 = self
                .segment_prefix
                .iter()
                .map(|b| encoded_len(b.body_len()) as u64)
                .sum();
            let mut used = prefix_len;
            let start = i;
            while i < bodies.len() {
                let n = encoded_len(bodies[i].body_len()) as u64;
                if used + n > room {
                    break;
                }
                used += n;
                i += 1;
            }
            if i == start {
                if self.offset == BLOCK_BYTES as u64 && self.segment_prefix.is_empty() {
                    return Err(io::Error::other(format!(
                        "a {}-byte record does not fit a {}-byte segment",
                        bodies[i].body_len(),
                        self.cfg.segment_bytes
                    )));
                }
                self.flush_prefix_only().await?;
                self.rotate().await?;
                continue;
            }
            let mut flush: Vec<Body<'_>> = std::mem::take(&mut self.segment_prefix);
            flush.extend_from_slice(&bodies[start..i]);
            self.write_and_sync(&flush).await?;
        }
        Ok(())
    }

    /// Writes a segment's opening records if nothing else got to.
    async fn flush_prefix_only(&mut self) -> io::Result<()> {
        if self.segment_prefix.is_empty() {
            return Ok(());
        }
        let bodies = std::mem::take(&mut self.segment_prefix);
        self.write_and_sync(&bodies).await
    }

    /// One flush: write `bodies` after the current end, then fdatasync.
    async fn write_and_sync(&mut self, bodies: &[Body<'_>]) -> io::Result<()> {
        let total: usize = bodies.iter().map(|b| encoded_len(b.body_len())).sum();
        let block_start = align_down(self.offset as usize, BLOCK_BYTES);
        let head = self.offset as usize - block_start;
        debug_assert_eq!(head, self.tail.len());
        let end = self.offset as usize + total;
        let size = align_up(end - block_start, BLOCK_BYTES);
        let mut buf = self.file.alloc_dma_buffer(size);
        let b = buf.as_bytes_mut();
        b[..head].copy_from_slice(&self.tail);
        let mut at = head;
        let batch = self.next_batch;
        for body in bodies {
            let n = encoded_len(body.body_len());
            let site = RecordSite {
                salt: self.salt,
                offset: (block_start + at) as u64,
            };
            self.crc = encode_record(&mut b[at..at + n], body, batch, self.crc, site);
            at += n;
            match *body {
                Body::Entry { log_id, .. } => {
                    if let Some(seg) = self.segments.back_mut() {
                        seg.last_index = Some(log_id.index);
                    }
                }
                Body::Vote(v) => self.vote = Some(v),
                Body::Purge(id) => {
                    if self.purged.is_none_or(|p| id.index > p.index) {
                        self.purged = Some(id);
                    }
                }
                Body::Truncate { .. } => {}
            }
        }
        b[at..].fill(0);
        let new_block = align_down(end, BLOCK_BYTES);
        self.tail.clear();
        self.tail
            .extend_from_slice(&b[new_block - block_start..end - block_start]);

        // The write and its fdatasync go to the kernel as one linked chain:
        // the sync starts when the write completes, without a turn of the
        // executor between them. The fsync histogram times both, as etcd's
        // (its WAL writes go to the page cache, so its fdatasync writes the
        // data). With a power cut armed (tests), they go one at a time so
        // the cut can fall between them.
        let t = Instant::now();
        let written = if self.durable.is_some() {
            let written = self
                .file
                .write_at(buf, block_start as u64)
                .await
                .map_err(gerr)?;
            if written == size && self.power_cut_due(Step::FlushWritten) {
                self.undo_unsynced(block_start + size).await?;
                power_loss::cut(Step::FlushWritten);
            }
            if written == size {
                self.file.fdatasync().await.map_err(gerr)?;
            }
            written
        } else {
            self.file
                .write_at_and_fdatasync(buf, block_start as u64)
                .await
                .map_err(gerr)?
        };
        if written != size {
            return Err(io::Error::other(format!(
                "short WAL write: {written} of {size} bytes"
            )));
        }
        let m = metrics();
        m.wal_fsync_seconds.observe(t.elapsed().as_secs_f64());
        m.wal_write_bytes.add(size as i64);
        self.offset = end as u64;
        self.next_batch += 1;
        self.synced();
        if self.power_cut_due(Step::FlushSynced) {
            power_loss::cut(Step::FlushSynced);
        }
        Ok(())
    }

    fn power_cut_due(&mut self, step: Step) -> bool {
        self.durable.is_some() && power_loss::reached(step)
    }

    /// Notes (when a power cut is armed) that the disk holds everything up
    /// to the current offset.
    fn synced(&mut self) {
        if let Some((offset, head)) = self.durable.as_mut() {
            *offset = self.offset;
            head.clone_from(&self.tail);
        }
    }

    /// Puts back what the disk held before every write of the current
    /// segment, up to `end`, that no completed fdatasync covers: the durable
    /// head of the block the last sync ended in, and zeros after it (as the
    /// segment was preallocated).
    async fn undo_unsynced(&mut self, end: usize) -> io::Result<()> {
        let Some((synced, head)) = self.durable.as_ref() else {
            return Ok(());
        };
        let from = align_down(*synced as usize, BLOCK_BYTES);
        let size = align_up(end.max(from) - from, BLOCK_BYTES);
        if size == 0 {
            return Ok(());
        }
        let mut undo = self.file.alloc_dma_buffer(size);
        let u = undo.as_bytes_mut();
        u.fill(0);
        u[..head.len()].copy_from_slice(head);
        self.file.write_at(undo, from as u64).await.map_err(gerr)?;
        self.file.fdatasync().await.map_err(gerr)?;
        Ok(())
    }

    /// Switches to the next (preallocated) segment. The current one is
    /// durable: every flush was fsynced before this point.
    async fn rotate(&mut self) -> io::Result<()> {
        let next = match self.next_segment.take() {
            Some(h) => h
                .await
                .ok_or_else(|| io::Error::other("segment preparation cancelled"))??,
            None => {
                prepare_segment(self.cfg.dir.clone(), self.seq + 1, self.cfg.segment_bytes).await?
            }
        };
        let (file, header) = next;
        let old = std::mem::replace(&mut self.file, Rc::new(file));
        if let Ok(f) = Rc::try_unwrap(old) {
            f.close().await.map_err(gerr)?;
        }
        self.seq += 1;
        self.offset = BLOCK_BYTES as u64;
        self.crc = header.crc;
        self.salt = header.salt;
        self.tail.clear();
        self.segments.push_back(SegmentInfo {
            seq: self.seq,
            path: self.cfg.dir.join(segment_file_name(self.seq)),
            last_index: None,
        });
        if let Some(v) = self.vote {
            self.segment_prefix.push(Body::Vote(v));
        }
        if let Some(p) = self.purged {
            self.segment_prefix.push(Body::Purge(p));
        }
        self.synced();
        self.start_preparing_next();
        tracing::info!(seq = self.seq, "WAL switched to a new segment");
        if self.power_cut_due(Step::Rotated) {
            power_loss::cut(Step::Rotated);
        }
        Ok(())
    }

    /// Deletes the oldest segments whose entries a snapshot covers, one at a
    /// time with a directory fsync each, so a crash never leaves a gap.
    async fn release_purged_segments(&mut self) -> io::Result<()> {
        let Some(purged) = self.purged else {
            return Ok(());
        };
        while self.segments.len() > 1 {
            let front = &self.segments[0];
            if front.last_index.is_some_and(|i| i > purged.index) {
                break;
            }
            let path = front.path.clone();
            if self.power_cut_due(Step::Releasing) {
                // A deletion without its directory fsync is undone by a cut:
                // as if the file were never deleted.
                power_loss::cut(Step::Releasing);
            }
            glommio::io::remove(&path).await.map_err(gerr)?;
            sync_dir(&self.cfg.dir).await?;
            tracing::info!(path = %path.display(), "released WAL segment covered by a snapshot");
            self.segments.pop_front();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::sync::oneshot;

    /// Every flush goes to the kernel as a write linked to its fdatasync
    /// (`DmaFile::write_at_and_fdatasync`): what the writer acknowledged,
    /// flush after flush and across segment switches, is what recovery
    /// reads back, in order and byte for byte.
    #[test]
    fn acknowledged_flushes_are_read_back_across_segments() {
        let dir = tempfile::tempdir().unwrap();
        let wal_dir = dir.path().to_path_buf();
        let ex = glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
            .io_memory(1 << 20)
            .make()
            .expect("executor");
        let written: Vec<Vec<u8>> = (0..120u32)
            .map(|i| vec![(i % 251) as u8 + 1; 100 + (i as usize * 37) % 3000])
            .collect();
        let expected = written.clone();
        ex.run(async move {
            let cfg = WalConfig {
                dir: wal_dir,
                segment_bytes: 64 << 10,
                batch_bytes_max: 1 << 20,
                linger: Duration::ZERO,
            };
            let writer = WalWriter::open(cfg, None, Vec::new(), None, None)
                .await
                .unwrap();
            let (tx, rx) = mpsc::channel(16);
            let run = glommio::spawn_local(writer.run(rx));
            for (i, payload) in written.into_iter().enumerate() {
                let (done_tx, done_rx) = oneshot::channel();
                let entry = WalEntry {
                    log_id: LogIdRecord {
                        term: 1,
                        leader: 1,
                        index: i as u64 + 1,
                    },
                    payload_kind: 1,
                    payload: Bytes::from(payload),
                };
                let done: Completion = Box::new(move |r| {
                    let _ = done_tx.send(r);
                });
                tx.send(WalCmd::Append {
                    entries: vec![entry],
                    done,
                })
                .await
                .unwrap();
                done_rx.await.unwrap().unwrap();
            }
            drop(tx);
            run.await;
        });
        let recovered = keel_storage::wal::recover(dir.path()).unwrap();
        assert!(
            recovered.segments.len() > 2,
            "{} segments: the test must cross segment switches",
            recovered.segments.len()
        );
        assert_eq!(recovered.entries.len(), expected.len());
        for (i, (e, want)) in recovered.entries.iter().zip(&expected).enumerate() {
            assert_eq!(e.log_id.index, i as u64 + 1);
            assert_eq!(&e.payload, want, "entry {}", i + 1);
        }
    }
}
