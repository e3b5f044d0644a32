//! WAL damage against the real binary: a torn tail is truncated and the
//! server starts; a flipped byte in acknowledged data refuses start-up with
//! an error naming the file and offset.

mod common;

use std::path::PathBuf;

use common::{segments, Server};

/// The newest segment that holds records, and the offset just past its last
/// non-zero byte.
fn newest_with_data(s: &Server) -> (PathBuf, usize) {
    for seg in segments(&s.wal_dir()).into_iter().rev() {
        let bytes = std::fs::read(&seg).unwrap();
        if let Some(last) = bytes[4096..].iter().rposition(|&b| b != 0) {
            return (seg, 4096 + last + 1);
        }
    }
    panic!("no segment holds data");
}

/// The offset in `segment` of `needle` inside an entry's payload (payloads
/// are stored scrambled).
fn find_in_payloads(segment: &[u8], needle: &[u8]) -> Option<usize> {
    use keel_storage::wal::{scan_segment, scramble_payload, Body, RecordSite, ENTRY_FIXED_BYTES};
    let scan = scan_segment(segment, segment.len()).unwrap();
    scan.records.iter().find_map(|r| {
        let Body::Entry { payload, .. } = r.body else {
            return None;
        };
        let mut plain = payload.to_vec();
        let site = RecordSite {
            salt: scan.header.salt,
            offset: r.offset as u64,
        };
        scramble_payload(site, &mut plain);
        let at = plain.windows(needle.len()).position(|w| w == needle)?;
        Some(r.offset + 32 + ENTRY_FIXED_BYTES + at)
    })
}

async fn put_numbered(s: &Server, n: usize, value: &str) {
    let mut c = s.client().await;
    for i in 0..n {
        c.put(format!("key{i:03}"), format!("{value}{i:03}"), None)
            .await
            .unwrap();
    }
}

#[tokio::test]
async fn torn_tail_is_truncated_and_the_server_starts() {
    let mut s = Server::start(&["--cores", "1"]);
    put_numbered(&s, 50, "value-").await;
    s.kill9();
    // The last record's final bytes never reached the disk: the file ends
    // in the middle of it.
    let (seg, end) = newest_with_data(&s);
    let f = std::fs::OpenOptions::new().write(true).open(&seg).unwrap();
    f.set_len((end - 20) as u64).unwrap();
    drop(f);
    s.restart();
    assert!(s.logs().contains("truncated torn WAL tail"), "{}", s.logs());
    let mut c = s.client().await;
    for i in 0..49 {
        let r = c.get(format!("key{i:03}"), None).await.unwrap();
        assert_eq!(r.kvs()[0].value_str().unwrap(), format!("value-{i:03}"));
    }
    // The torn put is gone, and writing resumes cleanly.
    assert!(c.get("key049", None).await.unwrap().kvs().is_empty());
    c.put("after", "repair", None).await.unwrap();
    drop(c);
    s.restart();
    let mut c = s.client().await;
    assert_eq!(
        c.get("after", None).await.unwrap().kvs()[0].value(),
        b"repair"
    );
    assert_eq!(
        s.logs().matches("truncated torn WAL tail").count(),
        1,
        "the second start is clean"
    );
}

#[tokio::test]
async fn flipped_byte_mid_log_refuses_to_start() {
    let mut s = Server::start(&["--cores", "1"]);
    put_numbered(&s, 30, "MARKER-").await;
    s.kill9();
    let (seg, _) = newest_with_data(&s);
    let mut bytes = std::fs::read(&seg).unwrap();
    let at = find_in_payloads(&bytes, b"MARKER-010").expect("value in the WAL");
    bytes[at + 3] ^= 0x01;
    std::fs::write(&seg, &bytes).unwrap();
    let (code, out) = s.start_expect_exit();
    assert_eq!(code, Some(1), "{out}");
    let name = seg.file_name().unwrap().to_string_lossy().into_owned();
    assert!(out.contains("WAL corruption"), "{out}");
    assert!(out.contains(&name), "{out}");
    // The offset named is the start of the damaged record, just before the value.
    let offset: usize = out
        .split("at offset ")
        .nth(1)
        .and_then(|r| r.split(':').next())
        .and_then(|n| n.trim().parse().ok())
        .expect("an offset in the message");
    assert!(
        offset < at && at - offset < 256,
        "offset {offset}, value at {at}: {out}"
    );
    // Nothing was changed by the refused start.
    assert_eq!(std::fs::read(&seg).unwrap(), bytes);
}
