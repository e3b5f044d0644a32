//! Start-up recovery: read every segment, check it, rebuild the raft log.
//!
//! Runs once, before the server serves anything, with plain blocking I/O.
//! Rules:
//! * segments must have consecutive sequence numbers; a gap is corruption;
//! * every segment but the newest must scan clean to its end;
//! * the newest may end in a torn tail (an unfinished flush). That tail is
//!   zeroed on disk, durably, and writing resumes where valid data ends;
//! * `*.wal.tmp` files are unfinished preallocations and are removed.

use std::fs;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use super::record::{scramble_payload, Body, EntryRecord, LogIdRecord, RecordSite, VoteRecord};
use super::segment::{decode_segment_header, scan_segment, ScanEnd};
use super::{WalError, BLOCK_BYTES};

/// A segment on disk and the log indexes it holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentInfo {
    pub seq: u64,
    pub path: PathBuf,
    /// Highest entry index written to this segment, if any.
    pub last_index: Option<u64>,
}

/// Where the writer continues.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TailPosition {
    pub seq: u64,
    pub path: PathBuf,
    pub segment_bytes: u64,
    /// Offset just past the last valid record.
    pub offset: u64,
    /// Chain seed for the next record.
    pub crc: u32,
    /// The segment's record header salt.
    pub salt: u32,
    /// Batch number for the next flush.
    pub next_batch: u64,
}

#[derive(Debug, Default)]
pub struct Recovered {
    pub vote: Option<VoteRecord>,
    /// The last entry known to be purged (covered by a snapshot).
    pub purged: Option<LogIdRecord>,
    /// The log after `purged`, contiguous by index.
    pub entries: Vec<EntryRecord>,
    /// Segments in sequence order; the last one is the tail.
    pub segments: Vec<SegmentInfo>,
    /// `None` for an empty directory.
    pub tail: Option<TailPosition>,
    /// Human-readable account of a torn tail that was truncated.
    pub repaired: Option<String>,
}

/// `0000000000000007.wal`
pub fn segment_file_name(seq: u64) -> String {
    format!("{seq:016x}.wal")
}

fn parse_segment_name(name: &str) -> Option<u64> {
    let hex = name.strip_suffix(".wal")?;
    if hex.len() != 16 {
        return None;
    }
    u64::from_str_radix(hex, 16).ok()
}

fn io_err(file: &Path) -> impl FnOnce(std::io::Error) -> WalError + '_ {
    move |source| WalError::Io {
        file: file.to_path_buf(),
        source,
    }
}

/// The largest segment size recovery pads a short segment file up to (from
/// a header whose checksum holds); keel writes segments of
/// `--wal-segment-bytes`, far below this.
const SEGMENT_BYTES_MAX: u64 = 1 << 40;

/// Recovers the WAL in `dir`, creating the directory if needed.
pub fn recover(dir: &Path) -> Result<Recovered, WalError> {
    fs::create_dir_all(dir).map_err(io_err(dir))?;
    let mut seqs = Vec::new();
    for ent in fs::read_dir(dir).map_err(io_err(dir))? {
        let ent = ent.map_err(io_err(dir))?;
        let name = ent.file_name();
        let name = name.to_string_lossy();
        if name.ends_with(".wal.tmp") {
            fs::remove_file(ent.path()).map_err(io_err(&ent.path()))?;
        } else if let Some(seq) = parse_segment_name(&name) {
            seqs.push(seq);
        }
    }
    seqs.sort_unstable();
    for w in seqs.windows(2) {
        if w[1] != w[0] + 1 {
            return Err(WalError::Corrupt {
                file: dir.join(segment_file_name(w[0] + 1)),
                offset: 0,
                reason: format!("segment missing between {} and {}", w[0], w[1]),
            });
        }
    }

    let mut out = Recovered::default();
    let mut log = LogBuilder::default();
    let mut tail_candidates: Vec<TailPosition> = Vec::new();
    let mut empty: Vec<bool> = Vec::new();
    let mut max_batch: Option<u64> = None;
    let mut final_purge: Option<LogIdRecord> = None;
    let mut records: Vec<(PathBuf, usize, OwnedBody)> = Vec::new();
    // A torn tail is acceptable only in the newest segment holding any data;
    // later segments may be preallocations never written to. So a torn tail
    // waits here until no later segment turns out to hold data.
    let mut pending_torn: Option<TornTail> = None;
    for &seq in &seqs {
        let path = dir.join(segment_file_name(seq));
        let mut buf = Vec::new();
        fs::File::open(&path)
            .and_then(|mut f| f.read_to_end(&mut buf))
            .map_err(io_err(&path))?;
        let file_len = buf.len();
        let last_nonzero = super::len_without_trailing_zeros(&buf);
        if last_nonzero > BLOCK_BYTES {
            if let Some(t) = pending_torn.take() {
                return Err(WalError::Corrupt {
                    file: t.path,
                    offset: t.offset as u64,
                    reason: format!("{}, in a segment that is not the newest", t.reason),
                });
            }
        }
        let corrupt = |offset: usize, reason: String| WalError::Corrupt {
            file: path.clone(),
            offset: offset as u64,
            reason,
        };
        // The header says how long the file must be; a shorter file lost its
        // end, which reads as zeros (never written). Only a header whose
        // checksum holds is trusted with that size: a damaged one is
        // reported by the scan below, never allocated for.
        if let Ok(h) = decode_segment_header(&buf) {
            if h.segment_bytes > buf.len() as u64 && h.segment_bytes <= SEGMENT_BYTES_MAX {
                buf.resize(h.segment_bytes as usize, 0);
            }
        }
        let scan = scan_segment(&buf, file_len).map_err(|r| corrupt(0, r))?;
        if scan.header.seq != seq {
            return Err(corrupt(
                16,
                format!(
                    "header names segment {}, file name says {seq}",
                    scan.header.seq
                ),
            ));
        }
        let mut info = SegmentInfo {
            seq,
            path: path.clone(),
            last_index: None,
        };
        for r in &scan.records {
            max_batch = Some(max_batch.map_or(r.batch, |m| m.max(r.batch)));
            if let Body::Purge(id) = r.body {
                final_purge = Some(
                    final_purge
                        .map_or(id, |p: LogIdRecord| if id.index > p.index { id } else { p }),
                );
            }
            if let Body::Entry { log_id, .. } = r.body {
                info.last_index = Some(log_id.index);
            }
            let site = RecordSite {
                salt: scan.header.salt,
                offset: r.offset as u64,
            };
            records.push((path.clone(), r.offset, OwnedBody::new(&r.body, site)));
        }
        let end_offset = match scan.end {
            ScanEnd::Clean { offset } => {
                if file_len < buf.len() {
                    // Clean, but the file was short: restore its full length
                    // so that later writes do not grow it.
                    zero_from(
                        &path,
                        offset,
                        last_nonzero,
                        file_len,
                        scan.header.segment_bytes,
                    )
                    .map_err(io_err(&path))?;
                }
                offset
            }
            ScanEnd::Torn { offset, reason } => {
                pending_torn = Some(TornTail {
                    path: path.clone(),
                    offset,
                    reason,
                    last_nonzero,
                    file_len,
                    segment_bytes: scan.header.segment_bytes,
                });
                offset
            }
            ScanEnd::Corrupt { offset, reason } => return Err(corrupt(offset, reason)),
        };
        {
            let last_record = scan.records.last();
            tail_candidates.push(TailPosition {
                seq,
                path: path.clone(),
                segment_bytes: scan.header.segment_bytes,
                offset: end_offset as u64,
                crc: last_record.map_or(scan.header.crc, |r| r.crc),
                salt: scan.header.salt,
                next_batch: last_record.map_or(1, |r| r.batch + 1),
            });
            empty.push(scan.records.is_empty());
        }
        out.segments.push(info);
    }
    if let Some(t) = pending_torn {
        zero_from(
            &t.path,
            t.offset,
            t.last_nonzero,
            t.file_len,
            t.segment_bytes,
        )
        .map_err(io_err(&t.path))?;
        out.repaired = Some(format!(
            "truncated torn WAL tail in {} at offset {}: {}",
            t.path.display(),
            t.offset,
            t.reason
        ));
    }
    // The writer prepares the next segment before it needs it; one that was
    // never written to is only a preallocation. Remove it and continue in
    // the segment before, which holds the latest vote and purge records.
    while out.segments.len() >= 2 && empty.last() == Some(&true) {
        let seg = out.segments.pop().expect("len >= 2");
        tail_candidates.pop();
        empty.pop();
        fs::remove_file(&seg.path).map_err(io_err(&seg.path))?;
        crate::sync_dir(dir).map_err(io_err(dir))?;
    }
    out.tail = tail_candidates.pop();
    // Batch numbers must keep rising across segments.
    if let (Some(t), Some(max)) = (out.tail.as_mut(), max_batch) {
        t.next_batch = t.next_batch.max(max + 1);
    }
    // Segments are released once a Purge record covering them is durable,
    // and that record sits in a newer segment, after entries that follow
    // the released ones. Start from the final purge point so the log is
    // checked for gaps only where entries must exist.
    log.purged = final_purge;
    // Consumed as they are replayed: each payload moves into the log
    // instead of being copied again.
    for (file, offset, body) in records {
        log.apply(body).map_err(|reason| WalError::Corrupt {
            file,
            offset: offset as u64,
            reason,
        })?;
    }
    out.vote = log.vote;
    out.purged = log.purged;
    out.entries = log.entries;
    Ok(out)
}

/// A torn tail found by the scan, repaired once it proves to be the newest data.
struct TornTail {
    path: PathBuf,
    offset: usize,
    reason: String,
    last_nonzero: usize,
    file_len: usize,
    segment_bytes: u64,
}

/// Zeroes `[from, last_nonzero)`, restores the file to its full length, and
/// fsyncs.
fn zero_from(
    path: &Path,
    from: usize,
    last_nonzero: usize,
    file_len: usize,
    segment_bytes: u64,
) -> std::io::Result<()> {
    let mut f = fs::OpenOptions::new().write(true).open(path)?;
    if last_nonzero > from {
        f.seek(SeekFrom::Start(from as u64))?;
        f.write_all(&vec![0u8; last_nonzero - from])?;
    }
    if (file_len as u64) < segment_bytes {
        // Extend with written zeros (not a hole) so later overwrites need no
        // allocation.
        f.seek(SeekFrom::Start(file_len as u64))?;
        let zeros = vec![0u8; 1 << 20];
        let mut left = segment_bytes - file_len as u64;
        while left > 0 {
            let n = left.min(zeros.len() as u64) as usize;
            f.write_all(&zeros[..n])?;
            left -= n as u64;
        }
    }
    f.sync_all()
}

/// A record body copied out of its segment buffer.
enum OwnedBody {
    Entry(LogIdRecord, u8, Vec<u8>),
    Vote(VoteRecord),
    Truncate(u64),
    Purge(LogIdRecord),
}

impl OwnedBody {
    /// Copies the body of the record at `site`, unscrambling its payload.
    fn new(b: &Body<'_>, site: RecordSite) -> Self {
        match *b {
            Body::Entry {
                log_id,
                payload_kind,
                payload,
            } => {
                let mut payload = payload.to_vec();
                scramble_payload(site, &mut payload);
                OwnedBody::Entry(log_id, payload_kind, payload)
            }
            Body::Vote(v) => OwnedBody::Vote(v),
            Body::Truncate { index } => OwnedBody::Truncate(index),
            Body::Purge(id) => OwnedBody::Purge(id),
        }
    }
}

/// Replays records into the raft log's state.
#[derive(Default)]
struct LogBuilder {
    vote: Option<VoteRecord>,
    purged: Option<LogIdRecord>,
    entries: Vec<EntryRecord>,
}

impl LogBuilder {
    fn apply(&mut self, body: OwnedBody) -> Result<(), String> {
        match body {
            OwnedBody::Vote(v) => self.vote = Some(v),
            OwnedBody::Purge(id) => {
                if self.purged.is_none_or(|p| id.index > p.index) {
                    self.purged = Some(id);
                    self.entries.retain(|e| e.log_id.index > id.index);
                }
            }
            OwnedBody::Truncate(index) => self.entries.retain(|e| e.log_id.index < index),
            OwnedBody::Entry(log_id, payload_kind, payload) => {
                if self.purged.is_some_and(|p| log_id.index <= p.index) {
                    return Ok(());
                }
                let expected = self
                    .entries
                    .last()
                    .map(|e| e.log_id.index + 1)
                    .or(self.purged.map(|p| p.index + 1));
                match expected {
                    Some(next) if log_id.index > next => {
                        return Err(format!(
                            "log index {} follows {}: entries are missing",
                            log_id.index,
                            next - 1
                        ))
                    }
                    // A rewrite of an index replaces it and everything after.
                    Some(next) if log_id.index < next => {
                        self.entries.retain(|e| e.log_id.index < log_id.index)
                    }
                    _ => {}
                }
                self.entries.push(EntryRecord {
                    log_id,
                    payload_kind,
                    payload,
                });
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::record::{encode_record, encoded_len};
    use super::super::segment::encode_segment_header;
    use super::*;

    const SEG: u64 = 64 * 1024;

    struct Writer {
        buf: Vec<u8>,
        off: usize,
        crc: u32,
        salt: u32,
        batch: u64,
    }

    impl Writer {
        fn new(seq: u64) -> Writer {
            let (hdr, h) = encode_segment_header(seq, SEG, 0x51 + seq as u32);
            let mut buf = vec![0u8; SEG as usize];
            buf[..BLOCK_BYTES].copy_from_slice(&hdr);
            Writer {
                buf,
                off: BLOCK_BYTES,
                crc: h.crc,
                salt: h.salt,
                batch: 1,
            }
        }
        fn put(&mut self, body: Body<'_>) -> usize {
            let len = encoded_len(body.body_len());
            let at = self.off;
            let site = RecordSite {
                salt: self.salt,
                offset: at as u64,
            };
            self.crc = encode_record(
                &mut self.buf[at..at + len],
                &body,
                self.batch,
                self.crc,
                site,
            );
            self.batch += 1;
            self.off += len;
            at
        }
        fn entry(&mut self, index: u64, data: &[u8]) -> usize {
            self.put(Body::Entry {
                log_id: LogIdRecord {
                    term: 1,
                    leader: 1,
                    index,
                },
                payload_kind: 1,
                payload: data,
            })
        }
    }

    /// A segment whose header is damaged, and so claims any size, is
    /// reported as corrupt; recovery must not first make room for that size
    /// (it used to pad the file to whatever the header declared).
    #[test]
    fn a_damaged_header_is_reported_not_allocated_for() {
        let dir = tempfile::tempdir().unwrap();
        let mut a = Writer::new(0);
        a.entry(1, b"x");
        a.buf[24..32].copy_from_slice(&(1u64 << 40).to_le_bytes());
        fs::write(
            dir.path().join(segment_file_name(0)),
            &a.buf[..BLOCK_BYTES * 2],
        )
        .unwrap();
        match recover(dir.path()) {
            Err(WalError::Corrupt { reason, .. }) => {
                assert!(reason.contains("checksum"), "{reason}")
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn recovers_entries_vote_truncate_and_purge_across_segments() {
        let dir = tempfile::tempdir().unwrap();
        let mut a = Writer::new(0);
        a.put(Body::Vote(VoteRecord {
            term: 1,
            node_id: 1,
            committed: true,
        }));
        for i in 1..=5 {
            a.entry(i, b"x");
        }
        a.put(Body::Truncate { index: 4 });
        a.entry(4, b"y");
        fs::write(dir.path().join(segment_file_name(0)), &a.buf).unwrap();
        let mut b = Writer::new(1);
        b.put(Body::Purge(LogIdRecord {
            term: 1,
            leader: 1,
            index: 2,
        }));
        b.entry(5, b"z");
        fs::write(dir.path().join(segment_file_name(1)), &b.buf).unwrap();
        fs::write(dir.path().join("0000000000000002.wal.tmp"), b"junk").unwrap();

        let r = recover(dir.path()).unwrap();
        let idx: Vec<_> = r.entries.iter().map(|e| e.log_id.index).collect();
        assert_eq!(idx, vec![3, 4, 5]);
        assert_eq!(r.entries[1].payload, b"y");
        assert_eq!(r.purged.unwrap().index, 2);
        assert!(r.vote.unwrap().committed);
        assert_eq!(r.segments.len(), 2);
        assert_eq!(r.segments[0].last_index, Some(4));
        let tail = r.tail.unwrap();
        assert_eq!(tail.seq, 1);
        assert_eq!(tail.offset as usize, b.off);
        assert_eq!(tail.crc, b.crc);
        assert!(!dir.path().join("0000000000000002.wal.tmp").exists());
    }

    #[test]
    fn torn_tail_is_truncated_and_zeroed_on_disk() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = Writer::new(0);
        w.entry(1, &[7u8; 100]);
        let last = w.entry(2, &[7u8; 3000]);
        let path = dir.path().join(segment_file_name(0));
        // The file ends in the middle of the last record: its tail sectors
        // never reached the disk.
        fs::write(&path, &w.buf[..last + 1024]).unwrap();
        let r = recover(dir.path()).unwrap();
        assert_eq!(r.entries.len(), 1);
        assert!(r.repaired.unwrap().contains("torn"));
        assert_eq!(r.tail.unwrap().offset as usize, last);
        let after = fs::read(&path).unwrap();
        assert_eq!(after.len() as u64, SEG, "file restored to full length");
        assert!(after[last..].iter().all(|&b| b == 0));
        // A second recovery is clean.
        let again = recover(dir.path()).unwrap();
        assert!(again.repaired.is_none());
        assert_eq!(again.entries.len(), 1);
    }

    #[test]
    fn corruption_names_file_and_offset() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = Writer::new(0);
        w.entry(1, b"aaaa");
        let victim = w.entry(2, b"bbbb");
        w.entry(3, b"cccc");
        w.buf[victim + 33] ^= 4;
        fs::write(dir.path().join(segment_file_name(0)), &w.buf).unwrap();
        let err = recover(dir.path()).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("0000000000000000.wal"), "{msg}");
        assert!(msg.contains(&format!("offset {victim}")), "{msg}");
    }

    /// Regression: a crash mid-flush while the next segment was already
    /// preallocated (empty) was refused as "torn write in a segment that is
    /// not the newest".
    #[test]
    fn torn_tail_before_an_empty_preallocated_segment() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = Writer::new(0);
        w.entry(1, &[7u8; 100]);
        let last = w.entry(2, &[7u8; 3000]);
        w.buf[last + 1024..].fill(0);
        fs::write(dir.path().join(segment_file_name(0)), &w.buf).unwrap();
        fs::write(dir.path().join(segment_file_name(1)), &Writer::new(1).buf).unwrap();
        let r = recover(dir.path()).unwrap();
        assert_eq!(r.entries.len(), 1);
        assert!(r.repaired.is_some());
        assert_eq!(r.tail.unwrap().seq, 0);
        assert_eq!(r.segments.len(), 1);
    }

    #[test]
    fn torn_write_in_older_segment_is_corruption() {
        let dir = tempfile::tempdir().unwrap();
        let mut a = Writer::new(0);
        a.entry(1, &[1u8; 2000]);
        a.buf[BLOCK_BYTES + 1024..BLOCK_BYTES + 1536].fill(0);
        fs::write(dir.path().join(segment_file_name(0)), &a.buf).unwrap();
        let mut b = Writer::new(1);
        b.entry(2, b"x");
        fs::write(dir.path().join(segment_file_name(1)), &b.buf).unwrap();
        assert!(matches!(recover(dir.path()), Err(WalError::Corrupt { .. })));
    }

    #[test]
    fn missing_segment_is_corruption() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join(segment_file_name(0)), &Writer::new(0).buf).unwrap();
        fs::write(dir.path().join(segment_file_name(2)), &Writer::new(2).buf).unwrap();
        let err = recover(dir.path()).unwrap_err().to_string();
        assert!(err.contains("segment missing"), "{err}");
    }

    #[test]
    fn index_gap_is_corruption() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = Writer::new(0);
        w.entry(1, b"a");
        w.entry(3, b"c");
        fs::write(dir.path().join(segment_file_name(0)), &w.buf).unwrap();
        assert!(recover(dir.path())
            .unwrap_err()
            .to_string()
            .contains("missing"));
    }

    /// Regression: segment 1 opened with purge point 2 (current at its
    /// rotation); entries 3..=5 lived in segment 0, which was released after
    /// a later Purge(5) record, written in segment 1 after entry 6. Replaying
    /// in order with the stale purge point saw a gap (6 after 2) and refused
    /// to start.
    #[test]
    fn purge_record_after_a_released_segment_covers_the_gap() {
        let dir = tempfile::tempdir().unwrap();
        let id = |index| LogIdRecord {
            term: 1,
            leader: 1,
            index,
        };
        let mut b = Writer::new(1);
        b.put(Body::Purge(id(2)));
        b.entry(6, b"six");
        b.put(Body::Purge(id(5)));
        b.entry(7, b"seven");
        fs::write(dir.path().join(segment_file_name(1)), &b.buf).unwrap();
        let r = recover(dir.path()).unwrap();
        assert_eq!(r.purged.unwrap().index, 5);
        let idx: Vec<_> = r.entries.iter().map(|e| e.log_id.index).collect();
        assert_eq!(idx, vec![6, 7]);
        // A gap the purge point does not cover is still corruption.
        let mut c = Writer::new(1);
        c.put(Body::Purge(id(2)));
        c.entry(6, b"six");
        fs::write(dir.path().join(segment_file_name(1)), &c.buf).unwrap();
        assert!(recover(dir.path()).is_err());
    }

    #[test]
    fn unused_preallocated_segment_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let mut a = Writer::new(0);
        a.entry(1, b"x");
        fs::write(dir.path().join(segment_file_name(0)), &a.buf).unwrap();
        fs::write(dir.path().join(segment_file_name(1)), &Writer::new(1).buf).unwrap();
        let r = recover(dir.path()).unwrap();
        assert_eq!(r.segments.len(), 1);
        let t = r.tail.unwrap();
        assert_eq!((t.seq, t.offset as usize), (0, a.off));
        assert_eq!(t.next_batch, 2);
        assert!(!dir.path().join(segment_file_name(1)).exists());
    }

    #[test]
    fn empty_dir_has_no_tail() {
        let dir = tempfile::tempdir().unwrap();
        let r = recover(&dir.path().join("wal")).unwrap();
        assert!(r.tail.is_none());
        assert!(r.entries.is_empty());
    }
}
