//! The write-ahead log: format, scanning and recovery.
//!
//! The byte layout is specified in `docs/format.md`; the constants below are
//! that specification in code. Summary: a directory of fixed-size segment
//! files, each preallocated and zero-filled before use, starting with a
//! 4 KiB header block, followed by 32-byte aligned records
//! `[header 32 B][body][zero padding]`. Every header carries its own CRC-32C,
//! the body's chained CRC-32C, and the number of the group-commit batch
//! (flush) that wrote it.

mod record;
mod recovery;
mod segment;

pub use record::{
    decode_body, encode_record, encoded_len, scramble_payload, Body, EntryRecord, LogIdRecord,
    RecordKind, RecordSite, VoteRecord, ENTRY_FIXED_BYTES,
};
pub use recovery::{recover, segment_file_name, Recovered, SegmentInfo, TailPosition};
pub use segment::{
    encode_segment_header, random_salt, scan_segment, ScanEnd, ScannedRecord, SegmentHeader,
    SegmentScan,
};

/// Segment files start with this block; records begin right after it.
/// Also the O_DIRECT alignment for every write.
pub const BLOCK_BYTES: usize = 4096;
/// Records start at multiples of this; a record header never straddles a sector.
pub const RECORD_ALIGN: usize = 32;
/// Size of a record header.
pub const RECORD_HEADER_BYTES: usize = 32;
/// The smallest unit a disk writes atomically; torn writes are detected per sector.
pub const SECTOR_BYTES: usize = 512;
/// `KEELWAL\0`
pub const SEGMENT_MAGIC: [u8; 8] = *b"KEELWAL\0";
/// Bumped on any incompatible change to the segment or record layout.
/// 2: record header CRCs are seeded with a per-segment salt, and entry
/// payloads are stored scrambled by it. Segments of format 1 (no salt, plain
/// payloads) are still read.
pub const FORMAT_VERSION: u32 = 2;
/// Default segment size, as etcd's.
pub const DEFAULT_SEGMENT_BYTES: u64 = 64 * 1024 * 1024;

const _: () = assert!(RECORD_HEADER_BYTES <= RECORD_ALIGN);

/// Zeros to compare against: comparing slices is a `memcmp`, fast even in
/// an unoptimised (test) build, where a byte-by-byte look at a 64 MiB
/// segment took seconds of every restart.
static ZERO_BLOCK: [u8; BLOCK_BYTES] = [0; BLOCK_BYTES];

/// True if every byte of `b` is zero.
pub(crate) fn is_zero(b: &[u8]) -> bool {
    b.chunks(BLOCK_BYTES).all(|c| c == &ZERO_BLOCK[..c.len()])
}

/// The length of `b` without its trailing zero bytes.
pub(crate) fn len_without_trailing_zeros(b: &[u8]) -> usize {
    let mut end = b.len();
    while end > 0 {
        let start = end.saturating_sub(BLOCK_BYTES);
        if !is_zero(&b[start..end]) {
            return start
                + b[start..end]
                    .iter()
                    .rposition(|&x| x != 0)
                    .map_or(0, |p| p + 1);
        }
        end = start;
    }
    0
}
const _: () = assert!(SECTOR_BYTES.is_multiple_of(RECORD_ALIGN));
const _: () = assert!(BLOCK_BYTES.is_multiple_of(SECTOR_BYTES));

/// Why the WAL could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum WalError {
    /// Bytes that were acknowledged as durable are damaged. keel refuses to
    /// start rather than silently lose or invent data.
    #[error("WAL corruption in {file} at offset {offset}: {reason}")]
    Corrupt {
        file: std::path::PathBuf,
        offset: u64,
        reason: String,
    },
    #[error("WAL I/O error on {file}: {source}")]
    Io {
        file: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Rounds `v` up to a multiple of `align` (a power of two).
pub const fn align_up(v: usize, align: usize) -> usize {
    (v + align - 1) & !(align - 1)
}

/// Rounds `v` down to a multiple of `align` (a power of two).
pub const fn align_down(v: usize, align: usize) -> usize {
    v & !(align - 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trailing_zeros_are_found_across_blocks() {
        let mut b = vec![0u8; 3 * BLOCK_BYTES + 100];
        assert_eq!(len_without_trailing_zeros(&b), 0);
        assert!(is_zero(&b));
        for at in [
            0,
            1,
            BLOCK_BYTES - 1,
            BLOCK_BYTES,
            2 * BLOCK_BYTES + 7,
            b.len() - 1,
        ] {
            b[at] = 9;
            assert_eq!(len_without_trailing_zeros(&b), at + 1, "at {at}");
            assert!(!is_zero(&b));
            assert!(is_zero(&b[at + 1..]));
        }
        assert_eq!(len_without_trailing_zeros(&[]), 0);
    }
}
