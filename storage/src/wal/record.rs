//! WAL record framing.
//!
//! ```text
//! record header, 32 bytes, little-endian, at a 32-byte aligned offset:
//!   0..4    body_len    u32   length of the body, >= 1
//!   4..8    body_crc    u32   CRC-32C of the body, chained: seeded with the
//!                             previous record's body_crc (the first record of
//!                             a segment is seeded with the segment header's CRC)
//!   8..16   batch       u64   number of the group-commit flush that wrote it
//!   16      kind        u8    RecordKind
//!   17..28  reserved    zero
//!   28..32  header_crc  u32   CRC-32C of bytes 0..28, seeded with the
//!                             segment's salt (format 2; 0 in format 1)
//! body, body_len bytes; then zeros up to the next 32-byte boundary.
//! ```
//!
//! Bodies by kind (little-endian):
//!
//! ```text
//! Entry    (1): index u64, term u64, leader u64, payload_kind u8, 7 zero bytes,
//!               then the payload (for normal entries, the archived command)
//! Vote     (2): term u64, node_id u64, committed u8, 7 zero bytes
//! Truncate (3): index u64          -- entries >= index are gone
//! Purge    (4): index u64, term u64, leader u64  -- entries <= index are gone
//! ```

use super::{align_up, RECORD_ALIGN, RECORD_HEADER_BYTES};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum RecordKind {
    Entry = 1,
    Vote = 2,
    Truncate = 3,
    Purge = 4,
}

impl RecordKind {
    pub fn from_u8(v: u8) -> Option<RecordKind> {
        Some(match v {
            1 => RecordKind::Entry,
            2 => RecordKind::Vote,
            3 => RecordKind::Truncate,
            4 => RecordKind::Purge,
            _ => return None,
        })
    }
}

/// A raft log id as the WAL stores it: term and leader of the entry's
/// leadership, and its index.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LogIdRecord {
    pub term: u64,
    pub leader: u64,
    pub index: u64,
}

/// A raft vote as the WAL stores it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct VoteRecord {
    pub term: u64,
    pub node_id: u64,
    pub committed: bool,
}

/// A recovered log entry. `payload_kind` is opaque to the WAL; the raft glue
/// defines it (blank, normal, membership).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntryRecord {
    pub log_id: LogIdRecord,
    pub payload_kind: u8,
    pub payload: Vec<u8>,
}

/// A decoded record body, borrowing the payload from the scanned buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Body<'a> {
    Entry {
        log_id: LogIdRecord,
        payload_kind: u8,
        payload: &'a [u8],
    },
    Vote(VoteRecord),
    Truncate {
        index: u64,
    },
    Purge(LogIdRecord),
}

/// Bytes of an entry body before its payload.
pub const ENTRY_FIXED_BYTES: usize = 32;

impl Body<'_> {
    pub fn kind(&self) -> RecordKind {
        match self {
            Body::Entry { .. } => RecordKind::Entry,
            Body::Vote(_) => RecordKind::Vote,
            Body::Truncate { .. } => RecordKind::Truncate,
            Body::Purge(_) => RecordKind::Purge,
        }
    }

    /// The fixed part of the body and its length; the payload follows it.
    fn fixed(&self) -> ([u8; ENTRY_FIXED_BYTES], usize) {
        let mut b = [0u8; ENTRY_FIXED_BYTES];
        let len = match self {
            Body::Entry {
                log_id,
                payload_kind,
                ..
            } => {
                b[0..8].copy_from_slice(&log_id.index.to_le_bytes());
                b[8..16].copy_from_slice(&log_id.term.to_le_bytes());
                b[16..24].copy_from_slice(&log_id.leader.to_le_bytes());
                b[24] = *payload_kind;
                ENTRY_FIXED_BYTES
            }
            Body::Vote(v) => {
                b[0..8].copy_from_slice(&v.term.to_le_bytes());
                b[8..16].copy_from_slice(&v.node_id.to_le_bytes());
                b[16] = u8::from(v.committed);
                24
            }
            Body::Truncate { index } => {
                b[0..8].copy_from_slice(&index.to_le_bytes());
                8
            }
            Body::Purge(id) => {
                b[0..8].copy_from_slice(&id.index.to_le_bytes());
                b[8..16].copy_from_slice(&id.term.to_le_bytes());
                b[16..24].copy_from_slice(&id.leader.to_le_bytes());
                24
            }
        };
        (b, len)
    }

    fn payload(&self) -> &[u8] {
        match self {
            Body::Entry { payload, .. } => payload,
            _ => &[],
        }
    }

    /// Length of the body on disk.
    pub fn body_len(&self) -> usize {
        self.fixed().1 + self.payload().len()
    }
}

/// Bytes a record with this body occupies, header and padding included.
pub fn encoded_len(body_len: usize) -> usize {
    align_up(RECORD_HEADER_BYTES + body_len, RECORD_ALIGN)
}

/// Where a record sits: its segment's salt and its offset in the segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordSite {
    pub salt: u32,
    pub offset: u64,
}

/// Encodes one record into `out`, which must be exactly
/// `encoded_len(body.body_len())` bytes, for `site`. Returns the record's
/// body CRC, the seed for the next record.
pub fn encode_record(
    out: &mut [u8],
    body: &Body<'_>,
    batch: u64,
    prev_crc: u32,
    site: RecordSite,
) -> u32 {
    let (fixed, fixed_len) = body.fixed();
    let payload = body.payload();
    let body_len = fixed_len + payload.len();
    assert_eq!(out.len(), encoded_len(body_len), "record buffer size");
    let body_len_u32 = u32::try_from(body_len).expect("record body fits u32");

    let body_start = RECORD_HEADER_BYTES;
    out[body_start..body_start + fixed_len].copy_from_slice(&fixed[..fixed_len]);
    let stored = &mut out[body_start + fixed_len..body_start + body_len];
    stored.copy_from_slice(payload);
    scramble_payload(site, stored);
    out[body_start + body_len..].fill(0);
    let salt = site.salt;
    let body_crc = crc32c::crc32c_append(prev_crc, &out[body_start..body_start + body_len]);

    let header = &mut out[..RECORD_HEADER_BYTES];
    header.fill(0);
    header[0..4].copy_from_slice(&body_len_u32.to_le_bytes());
    header[4..8].copy_from_slice(&body_crc.to_le_bytes());
    header[8..16].copy_from_slice(&batch.to_le_bytes());
    header[16] = body.kind() as u8;
    let header_crc = crc32c::crc32c_append(salt, &header[..28]);
    header[28..32].copy_from_slice(&header_crc.to_le_bytes());
    // Checked before write as well as on read: a record we cannot read back
    // must never reach the disk.
    debug_assert!(decode_header(header, salt).is_some());
    body_crc
}

/// Turns an entry's payload into what the disk holds, or back (XOR with a
/// keystream of the record's site): a client's value then never writes a
/// sector of zeros, so a zero sector inside a record always means "never
/// written", the mark of a torn write. Format 1 segments (salt 0) hold
/// payloads as they are.
pub fn scramble_payload(site: RecordSite, data: &mut [u8]) {
    if site.salt == 0 {
        return;
    }
    let seed = (u64::from(site.salt) << 32 | u64::from(site.salt))
        ^ site.offset.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    let mut words = data.chunks_exact_mut(8);
    let mut i = 0u64;
    for w in &mut words {
        let v = u64::from_le_bytes((&*w).try_into().expect("8 bytes"))
            ^ splitmix64(seed.wrapping_add(i));
        w.copy_from_slice(&v.to_le_bytes());
        i += 1;
    }
    let key = splitmix64(seed.wrapping_add(i)).to_le_bytes();
    for (b, k) in words.into_remainder().iter_mut().zip(key) {
        *b ^= k;
    }
}

fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A record header whose own checksum is valid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Header {
    pub body_len: usize,
    pub body_crc: u32,
    pub batch: u64,
    pub kind: u8,
}

/// Decodes a 32-byte header of a segment with `salt`; `None` if its
/// checksum does not match. The salt is random per segment and never seen
/// by clients, so bytes of a client's value cannot pass for a header.
pub(crate) fn decode_header(h: &[u8], salt: u32) -> Option<Header> {
    let stored = u32::from_le_bytes(h[28..32].try_into().ok()?);
    if crc32c::crc32c_append(salt, &h[..28]) != stored {
        return None;
    }
    Some(Header {
        body_len: u32::from_le_bytes(h[0..4].try_into().ok()?) as usize,
        body_crc: u32::from_le_bytes(h[4..8].try_into().ok()?),
        batch: u64::from_le_bytes(h[8..16].try_into().ok()?),
        kind: h[16],
    })
}

fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

/// Decodes a body whose checksum has already been verified. `None` means the
/// body does not have the shape its kind requires.
pub fn decode_body(kind: u8, body: &[u8]) -> Option<Body<'_>> {
    let log_id_at = |at: usize| -> Option<LogIdRecord> {
        Some(LogIdRecord {
            index: u64_at(body, at)?,
            term: u64_at(body, at + 8)?,
            leader: u64_at(body, at + 16)?,
        })
    };
    match RecordKind::from_u8(kind)? {
        RecordKind::Entry => {
            if body.len() < ENTRY_FIXED_BYTES {
                return None;
            }
            Some(Body::Entry {
                log_id: log_id_at(0)?,
                payload_kind: body[24],
                payload: &body[ENTRY_FIXED_BYTES..],
            })
        }
        RecordKind::Vote => (body.len() == 24).then(|| {
            Body::Vote(VoteRecord {
                term: u64_at(body, 0).unwrap_or(0),
                node_id: u64_at(body, 8).unwrap_or(0),
                committed: body[16] != 0,
            })
        }),
        RecordKind::Truncate => (body.len() == 8).then(|| Body::Truncate {
            index: u64_at(body, 0).unwrap_or(0),
        }),
        RecordKind::Purge => {
            if body.len() != 24 {
                return None;
            }
            Some(Body::Purge(log_id_at(0)?))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(body: Body<'_>) {
        let mut buf = vec![0xAA; encoded_len(body.body_len())];
        let site = RecordSite {
            salt: 0x5a17,
            offset: 4096,
        };
        let crc = encode_record(&mut buf, &body, 7, 99, site);
        let h = decode_header(&buf[..32], 0x5a17).unwrap();
        assert!(decode_header(&buf[..32], 0).is_none(), "another salt");
        assert_eq!(h.body_crc, crc);
        assert_eq!(h.batch, 7);
        let b = &buf[32..32 + h.body_len];
        assert_eq!(crc32c::crc32c_append(99, b), crc);
        let mut plain = b.to_vec();
        if let Body::Entry { .. } = body {
            scramble_payload(site, &mut plain[ENTRY_FIXED_BYTES..]);
        }
        assert_eq!(decode_body(h.kind, &plain).unwrap(), body);
        assert_eq!(buf.len() % RECORD_ALIGN, 0);
        assert!(
            buf[32 + h.body_len..].iter().all(|&x| x == 0),
            "padding is zero"
        );
    }

    #[test]
    fn every_kind_round_trips() {
        round_trip(Body::Entry {
            log_id: LogIdRecord {
                term: 3,
                leader: 9,
                index: 42,
            },
            payload_kind: 1,
            payload: b"hello world",
        });
        round_trip(Body::Entry {
            log_id: LogIdRecord::default(),
            payload_kind: 0,
            payload: &[],
        });
        round_trip(Body::Vote(VoteRecord {
            term: 5,
            node_id: 1,
            committed: true,
        }));
        round_trip(Body::Truncate { index: 77 });
        round_trip(Body::Purge(LogIdRecord {
            term: 1,
            leader: 2,
            index: 3,
        }));
    }

    /// A value of zeros leaves no zero sector on disk (a zero sector marks
    /// an unwritten one); format 1 segments (salt 0) are left as they are.
    #[test]
    fn payloads_are_stored_scrambled() {
        let zeros = vec![0u8; 4096 + 13];
        let body = Body::Entry {
            log_id: LogIdRecord::default(),
            payload_kind: 1,
            payload: &zeros,
        };
        let mut buf = vec![0; encoded_len(body.body_len())];
        let site = RecordSite {
            salt: 9,
            offset: 4096,
        };
        encode_record(&mut buf, &body, 1, 0, site);
        let stored = &buf[32 + ENTRY_FIXED_BYTES..32 + ENTRY_FIXED_BYTES + zeros.len()];
        assert!(stored.chunks(512).all(|s| s.iter().any(|&b| b != 0)));
        let mut back = stored.to_vec();
        scramble_payload(site, &mut back);
        assert_eq!(back, zeros);
        // Another site, another keystream.
        let mut other = zeros.clone();
        scramble_payload(
            RecordSite {
                salt: 9,
                offset: 4128,
            },
            &mut other,
        );
        assert_ne!(other, stored);
        let mut unsalted = zeros.clone();
        scramble_payload(
            RecordSite {
                salt: 0,
                offset: 4096,
            },
            &mut unsalted,
        );
        assert_eq!(unsalted, zeros);
    }

    #[test]
    fn any_header_flip_is_detected() {
        let body = Body::Truncate { index: 1 };
        let mut buf = vec![0; encoded_len(body.body_len())];
        let site = RecordSite {
            salt: 77,
            offset: 8192,
        };
        encode_record(&mut buf, &body, 1, 0, site);
        for byte in 0..32 {
            for bit in 0..8 {
                let mut b = buf.clone();
                b[byte] ^= 1 << bit;
                assert!(decode_header(&b[..32], 77).is_none(), "flip {byte}:{bit}");
            }
        }
    }
}
