//! Segment header and the pure segment scanner.
//!
//! ```text
//! segment header block, 4096 bytes, little-endian:
//!   0..8    magic          "KEELWAL\0"
//!   8..12   version        u32 (FORMAT_VERSION; 1 is read too)
//!   12..16  salt           u32, random per segment, seeds every record
//!                          header's CRC (zero in format 1)
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
//!    batch can be torn, and every record after a torn one has its batch;
//! 4. (format 2) entry payloads are stored scrambled and header CRCs salted,
//!    so a written sector is never all zero and a client's bytes never pass
//!    for a record header.
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
    /// Seed of every record header's CRC in this segment.
    pub salt: u32,
}

/// A salt no one outside this process can guess: std's hasher keys come
/// from the OS's random source.
pub fn random_salt(seq: u64) -> u32 {
    use std::hash::BuildHasher;
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let h = std::collections::hash_map::RandomState::new().hash_one((seq, nanos));
    // Never 0: that is format 1's "no salt".
    ((h ^ (h >> 32)) as u32).max(1)
}

/// Encodes the 4096-byte header block of segment `seq`, whose records'
/// headers are salted with `salt`.
pub fn encode_segment_header(seq: u64, segment_bytes: u64, salt: u32) -> (Vec<u8>, SegmentHeader) {
    let mut b = vec![0u8; BLOCK_BYTES];
    b[0..8].copy_from_slice(&SEGMENT_MAGIC);
    b[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    b[12..16].copy_from_slice(&salt.to_le_bytes());
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
            salt,
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
    let salt = u32::from_le_bytes(b[12..16].try_into().expect("4 bytes"));
    match version {
        FORMAT_VERSION => {}
        // Format 1 had no salt; the field was reserved, zero.
        1 if salt == 0 => {}
        _ => {
            return Err(format!(
                "WAL format version {version}, this keel reads versions 1 and {FORMAT_VERSION}"
            ))
        }
    }
    Ok(SegmentHeader {
        seq: u64::from_le_bytes(b[16..24].try_into().expect("8 bytes")),
        segment_bytes: u64::from_le_bytes(b[24..32].try_into().expect("8 bytes")),
        crc,
        salt,
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
            let later = batches_after(buf, off, header.salt);
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
        let Some(hd) = decode_header(h, header.salt) else {
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
            let later_flush = batches_after(buf, next.min(buf.len()), header.salt)
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
fn batches_after(buf: &[u8], from: usize, salt: u32) -> Vec<u64> {
    let mut out = Vec::new();
    let mut at = from.next_multiple_of(RECORD_ALIGN);
    while at + RECORD_HEADER_BYTES <= buf.len() {
        let h = &buf[at..at + RECORD_HEADER_BYTES];
        if !is_zero(h) {
            if let Some(hd) = decode_header(h, salt) {
                out.push(hd.batch);
            }
        }
        at += RECORD_ALIGN;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::super::record::{encode_record, LogIdRecord, RecordSite};
    use super::*;

    const SEG: usize = 64 * 1024;

    /// Builds a segment holding `batches` of entries; returns it and each
    /// record's offset.
    fn build(batches: &[usize]) -> (Vec<u8>, Vec<usize>) {
        let (hdr, h) = encode_segment_header(3, SEG as u64, 0xfeed);
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
                let site = RecordSite {
                    salt: h.salt,
                    offset: off as u64,
                };
                crc = encode_record(&mut seg[off..off + len], &body, batch as u64 + 1, crc, site);
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

    /// Story: record header CRCs were unsalted, so a client's value could
    /// hold a well-formed header. A power cut that lost the first sector of
    /// the last flush left that value's fake header (claiming a later flush)
    /// standing after it, and the member refused to start: "zeroed record
    /// header followed by records of later flushes".
    #[test]
    fn a_value_imitating_a_record_header_in_a_torn_tail_stays_data() {
        let (mut seg, offs) = build(&[2]);
        let last = offs[1];
        let off = last + encoded_len(32 + 700);
        // The fake: a header for a later flush, its CRC as anyone computes
        // it without the segment's salt.
        let mut fake = [0u8; 32];
        fake[0..4].copy_from_slice(&100u32.to_le_bytes());
        fake[8..16].copy_from_slice(&9u64.to_le_bytes());
        fake[16] = 1;
        let crc = crc32c::crc32c(&fake[..28]);
        fake[28..32].copy_from_slice(&crc.to_le_bytes());
        let mut value = vec![0x33u8; 2048];
        value[1024..1056].copy_from_slice(&fake);
        let body = Body::Entry {
            log_id: LogIdRecord {
                term: 1,
                leader: 1,
                index: 3,
            },
            payload_kind: 1,
            payload: &value,
        };
        let len = encoded_len(body.body_len());
        let chain = scan_segment(&seg, seg.len()).unwrap().records[1].crc;
        let salt = scan_segment(&seg, seg.len()).unwrap().header.salt;
        let site = RecordSite {
            salt,
            offset: off as u64,
        };
        encode_record(&mut seg[off..off + len], &body, 2, chain, site);
        // The fake sits at an aligned slot, where the scanner probes.
        let fake_at = off + 64 + 1024;
        assert_eq!(fake_at % RECORD_ALIGN, 0);
        // The new record's first sector never reached the disk.
        seg[off..(off + 1).next_multiple_of(SECTOR_BYTES)].fill(0);
        assert!(fake_at >= (off + 1).next_multiple_of(SECTOR_BYTES));
        let scan = scan_segment(&seg, seg.len()).unwrap();
        assert_eq!(scan.records.len(), 2);
        assert!(
            matches!(scan.end, ScanEnd::Torn { offset, .. } if offset == off),
            "{:?}",
            scan.end
        );
    }

    /// Story: a record body holding a client's run of 512 zero bytes,
    /// damaged after it was acknowledged, was taken for a torn write (its
    /// zero sector read as "never written") and silently truncated.
    /// Payloads are stored scrambled now: it is corruption.
    #[test]
    fn a_damaged_record_with_a_zero_run_in_its_value_is_corruption() {
        let (mut seg, offs) = build(&[1]);
        let off = offs[0] + encoded_len(32 + 700);
        let value = vec![0u8; 3000];
        let body = Body::Entry {
            log_id: LogIdRecord {
                term: 1,
                leader: 1,
                index: 2,
            },
            payload_kind: 1,
            payload: &value,
        };
        let len = encoded_len(body.body_len());
        let (salt, chain) = {
            let scan = scan_segment(&seg, seg.len()).unwrap();
            (scan.header.salt, scan.records[0].crc)
        };
        let site = RecordSite {
            salt,
            offset: off as u64,
        };
        encode_record(&mut seg[off..off + len], &body, 2, chain, site);
        assert_eq!(scan_segment(&seg, seg.len()).unwrap().records.len(), 2);
        // One flipped bit in the acknowledged record.
        seg[off + 40] ^= 1;
        let scan = scan_segment(&seg, seg.len()).unwrap();
        assert!(
            matches!(scan.end, ScanEnd::Corrupt { offset, .. } if offset == off),
            "{:?}",
            scan.end
        );
    }

    #[test]
    fn format_1_segments_without_a_salt_are_read() {
        let (mut seg, _) = build(&[]);
        seg[8..12].copy_from_slice(&1u32.to_le_bytes());
        seg[12..16].fill(0);
        let crc = crc32c::crc32c(&seg[0..32]);
        seg[32..36].copy_from_slice(&crc.to_le_bytes());
        let h = decode_segment_header(&seg).unwrap();
        assert_eq!(h.salt, 0);
        // An unsalted header is what format 1 wrote.
        let body = Body::Truncate { index: 4 };
        let mut rec = vec![0u8; encoded_len(body.body_len())];
        let site = RecordSite {
            salt: 0,
            offset: BLOCK_BYTES as u64,
        };
        encode_record(&mut rec, &body, 1, h.crc, site);
        let stored = u32::from_le_bytes(rec[28..32].try_into().unwrap());
        assert_eq!(stored, crc32c::crc32c(&rec[..28]));
        // Format 1 with a salt is not format 1.
        seg[12..16].copy_from_slice(&5u32.to_le_bytes());
        let crc = crc32c::crc32c(&seg[0..32]);
        seg[32..36].copy_from_slice(&crc.to_le_bytes());
        assert!(decode_segment_header(&seg).is_err());
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
