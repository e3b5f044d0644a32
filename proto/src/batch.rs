//! A batch of archived commands: the payload of one raft entry.
//!
//! The raft actor gathers the proposals that queue up while earlier ones are
//! being made durable into one entry, so one WAL flush commits many client
//! requests (group commit above raft; openraft 0.9 appends entries one
//! flush at a time). Each command keeps its own revision when applied.
//!
//! ```text
//! count u32 | count x len u32 | zero padding to 16 | command 0 | pad to 16 | command 1 | ...
//! ```
//!
//! Every command starts at a 16-byte aligned offset, so a batch read into a
//! 16-byte aligned buffer yields commands that rkyv can read in place.

use bytes::Bytes;

use crate::command::InvalidCommand;

const ALIGN: usize = 16;

fn align(v: usize) -> usize {
    v.next_multiple_of(ALIGN)
}

/// Encodes `commands` (each an archived command) into one aligned buffer.
pub fn encode(commands: &[Bytes]) -> Bytes {
    let head = align(4 + 4 * commands.len());
    let total = head + commands.iter().map(|c| align(c.len())).sum::<usize>();
    let mut out = rkyv::util::AlignedVec::<16>::with_capacity(total);
    out.extend_from_slice(&(commands.len() as u32).to_le_bytes());
    for c in commands {
        out.extend_from_slice(&(c.len() as u32).to_le_bytes());
    }
    out.resize(head, 0);
    for c in commands {
        out.extend_from_slice(c);
        let padded = align(out.len());
        out.resize(padded, 0);
    }
    debug_assert_eq!(out.len(), total);
    Bytes::from_owner(out)
}

/// Splits a batch into its commands, as slices of `batch` (no copy).
pub fn decode(batch: &Bytes) -> Result<Vec<Bytes>, InvalidCommand> {
    let bad = |why: &str| InvalidCommand(format!("command batch: {why}"));
    let u32_at = |at: usize| -> Result<usize, InvalidCommand> {
        let b = batch
            .get(at..at + 4)
            .ok_or_else(|| bad("truncated header"))?;
        Ok(u32::from_le_bytes(b.try_into().expect("4 bytes")) as usize)
    };
    let count = u32_at(0)?;
    if count > batch.len() / 4 {
        return Err(bad("count exceeds the buffer"));
    }
    let mut at = align(4 + 4 * count);
    let mut out = Vec::with_capacity(count);
    for i in 0..count {
        let len = u32_at(4 + 4 * i)?;
        let end = at
            .checked_add(len)
            .filter(|&e| e <= batch.len())
            .ok_or_else(|| bad("command runs past the end"))?;
        out.push(batch.slice(at..end));
        at = align(end);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::{Command, CompactCmd, PutCmd};

    #[test]
    fn round_trip_keeps_commands_aligned_and_readable() {
        let cmds: Vec<Bytes> = (0..5)
            .map(|i| {
                let c = if i % 2 == 0 {
                    Command::Put(PutCmd {
                        key: vec![b'k'; i * 7 + 1],
                        value: vec![b'v'; i * 13],
                        ..Default::default()
                    })
                } else {
                    Command::Compact(CompactCmd {
                        revision: i as i64,
                        physical: false,
                    })
                };
                Bytes::from_owner(c.to_bytes())
            })
            .collect();
        let batch = encode(&cmds);
        assert_eq!(batch.as_ptr() as usize % 16, 0);
        let back = decode(&batch).unwrap();
        assert_eq!(back, cmds);
        for b in &back {
            assert_eq!(b.as_ptr() as usize % 16, 0);
            Command::access(b).unwrap();
        }
    }

    #[test]
    fn damaged_batches_are_refused() {
        let batch = encode(&[Bytes::from_static(&[1u8; 40])]);
        assert!(
            decode(&batch.slice(..50)).is_err(),
            "cut inside the command"
        );
        assert!(
            decode(&batch.slice(..batch.len() - 1)).is_ok(),
            "only padding lost"
        );
        assert!(decode(&Bytes::from_static(&[0xff, 0xff, 0xff, 0x7f])).is_err());
        assert!(decode(&Bytes::from_static(&[1])).is_err());
        assert_eq!(decode(&encode(&[])).unwrap().len(), 0);
    }
}
