//! Segment header and the pure segment scanner.
//!
//! ```text
//! segment header block, 4096 bytes, little-endian:
//!   0..8    magic          "KEELWAL\0"
//!   8..12   version        u32 (FORMAT_VERSION)
//!   12..16  reserved       zero
//!   16..24  seq            u64, the segment's sequence number (also its file name)
//!   24..32  segment_bytes  u64, the file's full preallocated size
//!   32..36  header_crc     u32, CRC-32C of bytes 0..32; seeds the record chain
//!   36..4096 zero
//! ```
//!
//! The scanner decides, for one segment's bytes, where valid data ends and
//! why. It relies on three facts about how the writer uses the disk:
//!
//! 1. segments are zero-filled before use, so never-written bytes read as zero;
//! 2. a sector (512 B) is written atomically, so an unwritten part of a
//!    record reads as whole zero sectors, never as garbage;
//! 3. at most one flush (batch) is in flight, so only records of the newest
//!    batch can be torn, and every record after a torn one has its batch.
//!
//! A record that fails its checksum is a *torn tail* only when part of its
//! body sits in a zero sector and nothing after it belongs to a later batch.
//! Anything else is corruption of acknowledged data.

use super::record::{decode_body, decode_header, encoded_len, Body};
use super::{
    is_zero, BLOCK_BYTES, FORMAT_VERSION, RECORD_ALIGN, RECORD_HEADER_BYTES, SECTOR_BYTES,
    SEGMENT_MAGIC,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentHeader {
    pub seq: u64,
    pub segment_bytes: u64,
    /// CRC of the header block; the seed of the segment's record chain.
    pub crc: u32,
}

/// Encodes the 4096-byte header block of segment `seq`.
pub fn encode_segment_header(seq: u64, segment_bytes: u64) -> (Vec<u8>, SegmentHeader) {
    let mut b = vec![0u8; BLOCK_BYTES];
    b[0..8].copy_from_slice(&SEGMENT_MAGIC);
    b[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    b[16..24].copy_from_slice(&seq.to_le_bytes());
    b[24..32].copy_from_slice(&segment_bytes.to_le_bytes());
    let crc = crc32c::crc32c(&b[0..32]);
    b[32..36].copy_from_slice(&crc.to_le_bytes());
    (
        b,
        SegmentHeader {
            seq,
            segment_bytes,
            crc,
        },
    )
}

pub(super) fn decode_segment_header(b: &[u8]) -> Result<SegmentHeader, String> {
    if b.len() < BLOCK_BYTES {
        return Err(format!(
            "file is {} bytes, shorter than its header block",
            b.len()
        ));
    }
    if b[0..8] != SEGMENT_MAGIC {
        return Err("not a keel WAL segment (bad magic)".into());
    }
    let crc = u32::from_le_bytes(b[32..36].try_into().expect("4 bytes"));
    if crc32c::crc32c(&b[0..32]) != crc {
        return Err("segment header checksum mismatch".into());
    }
    let version = u32::from_le_bytes(b[8..12].try_into().expect("4 bytes"));
    if version != FORMAT_VERSION {
        return Err(format!(
            "WAL format version {version}, this keel reads version {FORMAT_VERSION}"
        ));
    }
    Ok(SegmentHeader {
        seq: u64::from_le_bytes(b[16..24].try_into().expect("8 bytes")),
        segment_bytes: u64::from_le_bytes(b[24..32].try_into().expect("8 bytes")),
        crc,
    })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScannedRecord<'a> {
    /// Offset of the record header in the segment.
    pub offset: usize,
    pub batch: u64,
    pub body: Body<'a>,
    /// The record's body CRC: the chain seed for the next record.
    pub crc: u32,
}

/// Where and why a scan stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ScanEnd {
    /// Valid records end at `offset`; every byte after it is zero.
    Clean { offset: usize },
    /// Records from `offset` on are the remains of an unfinished flush.
    /// Acceptable (and truncated) in the newest segment only.
    Torn { offset: usize, reason: String },
    /// Acknowledged data is damaged at `offset`.
    Corrupt { offset: usize, reason: String },
}

#[derive(Debug)]
pub struct SegmentScan<'a> {
    pub header: SegmentHeader,
    pub records: Vec<ScannedRecord<'a>>,
    pub end: ScanEnd,
}

/// Scans one segment. `buf` holds the whole segment; bytes a short file lacks
/// must be supplied as zeros by the caller, and `file_len` says where the
/// file really ended (bytes beyond it were never written).
pub fn scan_segment(buf: &[u8], file_len: usize) -> Result<SegmentScan<'_>, String> {
    let header = decode_segment_header(buf)?;
    let mut records = Vec::new();
    let mut off = BLOCK_BYTES;
    let mut prev_crc = header.crc;
    let mut last_batch: Option<u64> = None;
    let end = loop {
        if off + RECORD_HEADER_BYTES > buf.len() {
            break ScanEnd::Clean { offset: off };
        }
        let h = &buf[off..off + RECORD_HEADER_BYTES];
        if is_zero(h) {
            if is_zero(&buf[off..]) {
                break ScanEnd::Clean { offset: off };
            }
            // Data after an unwritten header: the first sector of the last
            // flush did not reach the disk, or acknowledged data was zeroed.
            let later = batches_after(buf, off);
            let single_flush = later.windows(2).all(|w| w[0] == w[1]);
            let follows_last = match (last_batch, later.first()) {
                (Some(last), Some(&b)) => b == last || b == last + 1,
                _ => true,
            };
            if single_flush && follows_last {
                break ScanEnd::Torn {
                    offset: off,
                    reason:
                        "unwritten record header followed by the remains of one unfinished flush"
                            .into(),
                };
            }
            break ScanEnd::Corrupt {
                offset: off,
                reason: "zeroed record header followed by records of later flushes".into(),
            };
        }
        let Some(hd) = decode_header(h) else {
            break ScanEnd::Corrupt {
                offset: off,
                reason: "record header checksum mismatch".into(),
            };
        };
        let body_start = off + RECORD_HEADER_BYTES;
        if hd.body_len == 0 || hd.body_len > buf.len() - body_start {
            break ScanEnd::Corrupt {
                offset: off,
                reason: format!("record length {} out of range", hd.body_len),
            };
        }
        if last_batch.is_some_and(|b| hd.batch < b) {
            break ScanEnd::Corrupt {
                offset: off,
                reason: format!("batch number {} goes backwards", hd.batch),
            };
        }
        let body = &buf[body_start..body_start + hd.body_len];
        let next = off + encoded_len(hd.body_len);
        let crc = crc32c::crc32c_append(prev_crc, body);
        if crc != hd.body_crc {
            let unwritten = body_start + hd.body_len > file_len
                || has_zero_sector_chunk(buf, body_start, hd.body_len);
            let later_flush = batches_after(buf, next.min(buf.len()))
                .iter()
                .any(|&b| b != hd.batch);
            if unwritten && !later_flush {
                break ScanEnd::Torn {
                    offset: off,
                    reason: "record body partly unwritten (torn write of the last flush)".into(),
                };
            }
            break ScanEnd::Corrupt {
                offset: off,
                reason: "record body checksum mismatch".into(),
            };
        }
        let Some(decoded) = decode_body(hd.kind, body) else {
            break ScanEnd::Corrupt {
                offset: off,
                reason: format!("malformed body for record kind {}", hd.kind),
            };
        };
        records.push(ScannedRecord {
            offset: off,
            batch: hd.batch,
            body: decoded,
            crc,
        });
        prev_crc = crc;
        last_batch = Some(hd.batch);
        off = next;
    };
    Ok(SegmentScan {
        header,
        records,
        end,
    })
}

/// True if some sector-aligned piece of `[start, start+len)` is all zero:
/// the mark of a sector that was never written.
fn has_zero_sector_chunk(buf: &[u8], start: usize, len: usize) -> bool {
    let end = start + len;
    let mut at = start;
    while at < end {
        let sector_end = ((at / SECTOR_BYTES) + 1) * SECTOR_BYTES;
        let chunk_end = sector_end.min(end);
        if is_zero(&buf[at..chunk_end]) {
            return true;
        }
        at = chunk_end;
    }
    false
}

/// Batch numbers of every intact record header at or after `from`, found by
/// probing each aligned slot (lengths after a damaged record cannot be trusted).
fn batches_after(buf: &[u8], from: usize) -> Vec<u64> {
    let mut out = Vec::new();
    let mut at = from.next_multiple_of(RECORD_ALIGN);
    while at + RECORD_HEADER_BYTES <= buf.len() {
        let h = &buf[at..at + RECORD_HEADER_BYTES];
        if !is_zero(h) {
            if let Some(hd) = decode_header(h) {
                out.push(hd.batch);
            }
        }
        at += RECORD_ALIGN;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::super::record::{encode_record, LogIdRecord};
    use super::*;

    const SEG: usize = 64 * 1024;

    /// Builds a segment holding `batches` of entries; returns it and each
    /// record's offset.
    fn build(batches: &[usize]) -> (Vec<u8>, Vec<usize>) {
        let (hdr, h) = encode_segment_header(3, SEG as u64);
        let mut seg = vec![0u8; SEG];
        seg[..BLOCK_BYTES].copy_from_slice(&hdr);
        let mut off = BLOCK_BYTES;
        let mut crc = h.crc;
        let mut offsets = Vec::new();
        let mut index = 1;
        for (batch, &n) in batches.iter().enumerate() {
            for _ in 0..n {
                let payload = vec![0x5Au8; 700];
                let body = Body::Entry {
                    log_id: LogIdRecord {
                        term: 1,
                        leader: 1,
                        index,
                    },
                    payload_kind: 1,
                    payload: &payload,
                };
                let len = encoded_len(body.body_len());
                crc = encode_record(&mut seg[off..off + len], &body, batch as u64 + 1, crc);
                offsets.push(off);
                off += len;
                index += 1;
            }
        }
        (seg, offsets)
    }

    #[test]
    fn clean_segment_scans_fully() {
        let (seg, offs) = build(&[2, 3]);
        let scan = scan_segment(&seg, seg.len()).unwrap();
        assert_eq!(scan.records.len(), 5);
        assert_eq!(scan.header.seq, 3);
        let end = offs[4] + encoded_len(32 + 700);
        assert_eq!(scan.end, ScanEnd::Clean { offset: end });
    }

    #[test]
    fn empty_segment_is_clean_at_first_block() {
        let (seg, _) = build(&[]);
        let scan = scan_segment(&seg, seg.len()).unwrap();
        assert!(scan.records.is_empty());
        assert_eq!(
            scan.end,
            ScanEnd::Clean {
                offset: BLOCK_BYTES
            }
        );
    }

    #[test]
    fn unwritten_sector_in_last_record_is_a_torn_tail() {
        let (mut seg, offs) = build(&[2, 2]);
        // The last record's second half never reached the disk.
        let last = offs[3];
        let cut = (last + 32 + 100).next_multiple_of(SECTOR_BYTES);
        assert!(cut < last + encoded_len(32 + 700));
        seg[cut..].fill(0);
        let scan = scan_segment(&seg, seg.len()).unwrap();
        assert_eq!(scan.records.len(), 3);
        assert!(matches!(scan.end, ScanEnd::Torn { offset, .. } if offset == last));
    }

    #[test]
    fn torn_record_followed_by_its_own_flush_is_still_torn() {
        let (mut seg, offs) = build(&[1, 3]);
        // Middle record of the last flush lost a sector; its successors
        // (same flush) reached the disk.
        let victim = offs[2];
        let s = (victim + 32 + 100).next_multiple_of(SECTOR_BYTES);
        seg[s..s + SECTOR_BYTES].fill(0);
        let scan = scan_segment(&seg, seg.len()).unwrap();
        assert!(matches!(scan.end, ScanEnd::Torn { offset, .. } if offset == victim));
    }

    #[test]
    fn zero_sector_in_an_older_flush_is_corruption() {
        let (mut seg, offs) = build(&[2, 2]);
        // A record of the first (acknowledged) flush lost a sector, and a
        // later flush follows: that is damage, not a torn write.
        let victim = offs[0];
        let s = (victim + 32 + 100).next_multiple_of(SECTOR_BYTES);
        seg[s..s + SECTOR_BYTES].fill(0);
        let scan = scan_segment(&seg, seg.len()).unwrap();
        assert!(matches!(scan.end, ScanEnd::Corrupt { offset, .. } if offset == victim));
    }

    #[test]
    fn record_crossing_the_end_of_a_short_file_is_torn() {
        let (mut seg, offs) = build(&[2, 2]);
        let cut = offs[3] + 100;
        seg[cut..].fill(0);
        let scan = scan_segment(&seg, cut).unwrap();
        assert!(matches!(scan.end, ScanEnd::Torn { offset, .. } if offset == offs[3]));
    }

    #[test]
    fn flipped_byte_mid_log_is_corruption() {
        let (mut seg, offs) = build(&[2, 2]);
        seg[offs[1] + 200] ^= 0x01;
        let scan = scan_segment(&seg, seg.len()).unwrap();
        assert_eq!(scan.records.len(), 1);
        assert!(matches!(
            scan.end,
            ScanEnd::Corrupt { offset, ref reason } if offset == offs[1] && reason.contains("body checksum")
        ));
    }

    #[test]
    fn flipped_byte_in_last_record_is_corruption() {
        let (mut seg, offs) = build(&[2]);
        seg[offs[1] + 40] ^= 0x80;
        let scan = scan_segment(&seg, seg.len()).unwrap();
        assert!(matches!(scan.end, ScanEnd::Corrupt { .. }));
    }

    #[test]
    fn flipped_header_byte_is_corruption() {
        let (mut seg, offs) = build(&[3]);
        seg[offs[1] + 2] ^= 0x10;
        let scan = scan_segment(&seg, seg.len()).unwrap();
        assert!(matches!(
            scan.end,
            ScanEnd::Corrupt { ref reason, .. } if reason.contains("header checksum")
        ));
    }

    #[test]
    fn lost_first_sector_of_last_flush_is_torn() {
        let (mut seg, offs) = build(&[2, 3]);
        let victim = offs[2];
        seg[victim..victim + 32].fill(0);
        let scan = scan_segment(&seg, seg.len()).unwrap();
        assert_eq!(scan.records.len(), 2);
        assert!(matches!(scan.end, ScanEnd::Torn { offset, .. } if offset == victim));
    }

    #[test]
    fn zeroed_header_before_later_flushes_is_corruption() {
        let (mut seg, offs) = build(&[1, 1, 1, 1]);
        seg[offs[1]..offs[1] + 32].fill(0);
        let scan = scan_segment(&seg, seg.len()).unwrap();
        assert!(matches!(scan.end, ScanEnd::Corrupt { .. }));
    }

    #[test]
    fn bad_magic_and_version_are_reported() {
        let (mut seg, _) = build(&[]);
        seg[0] = b'X';
        assert!(scan_segment(&seg, seg.len()).unwrap_err().contains("magic"));
        let (mut seg, _) = build(&[]);
        seg[8] = 9;
        assert!(scan_segment(&seg, seg.len()).is_err());
    }
}
