//! Snapshot files: a point-in-time copy of the store plus the caller's
//! metadata (for keel: the last applied raft log id and the membership),
//! in one file, so the applied index and the data it describes are one
//! atomic unit.
//!
//! ```text
//! file:   magic "KEELSNAP" (8) | version u32 | reserved u32 | frame*
//! frame:  body_len u32 | crc u32 (CRC-32C of body) | body
//! body:   kind u8, then by kind:
//!   1 Meta:   current_rev i64 | compact_rev i64 | app_len u32 | app bytes
//!   2 Events: count u32 | count x event
//!   3 End:    total_events u64
//!   4 Leases: count u32 | count x (id i64 | ttl i64 | remaining_ttl i64)   (version 2)
//!   5 Auth:   the auth store as `crate::auth::encode` writes it          (version 3)
//! event:  main i64 | sub i64 | create_revision i64 | version i64 | lease i64 |
//!         key_len u32 | value_len u32 | key | value      (version 0 = delete)
//! ```
//!
//! All integers little-endian. Exactly one Meta frame comes first, then (from
//! version 2) one Leases frame, then (from version 3) one Auth frame, and one
//! End frame last; version 1 files have no Leases frame (no leases), files
//! before version 3 no Auth frame (auth never set up); a file without its
//! End frame is incomplete and rejected.
//! Files are written as `<name>.tmp`, fsynced, renamed into place and the
//! directory fsynced: a crash leaves either no new snapshot or a whole one.

use std::fs;
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use bytes::Bytes;

use super::key_index::KeyVersion;
use super::lease::LeaseRecord;
use super::revision_log::{Event, LogView};
use super::{KvStore, Revision};
use crate::auth::AuthStore;

pub const SNAPSHOT_MAGIC: [u8; 8] = *b"KEELSNAP";
pub const SNAPSHOT_VERSION: u32 = 3;
/// Events are grouped into frames of about this many bytes.
const FRAME_TARGET_BYTES: usize = 1 << 20;
/// Larger frames are rejected on read: a corrupt length must not make us
/// allocate gigabytes.
const FRAME_MAX_BYTES: usize = 256 << 20;
/// Snapshots kept on disk by default; older ones are removed after a new
/// one is durable.
pub const SNAPSHOTS_KEPT: usize = 2;

/// Snapshots kept on disk (`--max-snapshots`; 0 keeps all): process-wide,
/// set once at start.
static KEPT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(SNAPSHOTS_KEPT);

/// Sets how many snapshot files are kept (0: all). At least the newest is
/// always kept.
pub fn set_snapshots_kept(n: usize) {
    let n = if n == 0 { usize::MAX } else { n };
    KEPT.store(n, std::sync::atomic::Ordering::Relaxed);
}

fn snapshots_kept() -> usize {
    KEPT.load(std::sync::atomic::Ordering::Relaxed)
}

const KIND_META: u8 = 1;
const KIND_EVENTS: u8 = 2;
const KIND_END: u8 = 3;
const KIND_LEASES: u8 = 4;
const KIND_AUTH: u8 = 5;

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("snapshot {file} is corrupt at offset {offset}: {reason}")]
    Corrupt {
        file: PathBuf,
        offset: u64,
        reason: String,
    },
    #[error("snapshot I/O error on {file}: {source}")]
    Io {
        file: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// A loaded snapshot.
pub struct LoadedSnapshot {
    pub path: PathBuf,
    pub app_meta: Vec<u8>,
    pub store: KvStore,
}

fn put_event(out: &mut Vec<u8>, e: &Event) {
    let kv = &e.kv;
    for x in [
        kv.rev.main,
        kv.rev.sub,
        kv.create_revision,
        kv.version,
        kv.lease,
    ] {
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.extend_from_slice(&(e.key.len() as u32).to_le_bytes());
    out.extend_from_slice(&(kv.value.len() as u32).to_le_bytes());
    out.extend_from_slice(&e.key);
    out.extend_from_slice(&kv.value);
}

fn write_frame(w: &mut impl Write, body: &[u8]) -> io::Result<()> {
    w.write_all(&(body.len() as u32).to_le_bytes())?;
    w.write_all(&crc32c::crc32c(body).to_le_bytes())?;
    w.write_all(body)
}

/// What a snapshot holds of a store, taken at one point (cheap: the
/// revision log's chunks are shared, not copied).
pub struct StoreImage {
    pub current_rev: i64,
    pub compact_rev: i64,
    pub view: LogView,
    pub leases: Vec<LeaseRecord>,
    pub auth: AuthStore,
}

impl KvStore {
    pub fn image(&self) -> StoreImage {
        StoreImage {
            current_rev: self.current_rev(),
            compact_rev: self.compact_rev(),
            view: self.view(),
            leases: self.leases().records(),
            auth: self.auth().clone(),
        }
    }
}

/// Writes a snapshot of `image` to `w`.
pub fn write_snapshot(w: &mut impl Write, app_meta: &[u8], image: &StoreImage) -> io::Result<()> {
    let StoreImage {
        current_rev,
        compact_rev,
        view,
        leases,
        auth,
    } = image;
    let mut head = Vec::with_capacity(16);
    head.extend_from_slice(&SNAPSHOT_MAGIC);
    head.extend_from_slice(&SNAPSHOT_VERSION.to_le_bytes());
    head.extend_from_slice(&0u32.to_le_bytes());
    w.write_all(&head)?;

    let mut meta = vec![KIND_META];
    meta.extend_from_slice(&current_rev.to_le_bytes());
    meta.extend_from_slice(&compact_rev.to_le_bytes());
    meta.extend_from_slice(&(app_meta.len() as u32).to_le_bytes());
    meta.extend_from_slice(app_meta);
    write_frame(w, &meta)?;

    let mut body = vec![KIND_LEASES];
    body.extend_from_slice(&(leases.len() as u32).to_le_bytes());
    for l in leases {
        for x in [l.id, l.ttl, l.remaining] {
            body.extend_from_slice(&x.to_le_bytes());
        }
    }
    write_frame(w, &body)?;

    let mut body = vec![KIND_AUTH];
    body.extend_from_slice(&crate::auth::encode(auth));
    write_frame(w, &body)?;

    let mut total = 0u64;
    let mut body = Vec::with_capacity(FRAME_TARGET_BYTES + 4096);
    let mut count = 0u32;
    let start_batch = |body: &mut Vec<u8>| {
        body.clear();
        body.push(KIND_EVENTS);
        body.extend_from_slice(&0u32.to_le_bytes());
    };
    start_batch(&mut body);
    for e in view.iter() {
        put_event(&mut body, e);
        count += 1;
        total += 1;
        if body.len() >= FRAME_TARGET_BYTES {
            body[1..5].copy_from_slice(&count.to_le_bytes());
            write_frame(w, &body)?;
            start_batch(&mut body);
            count = 0;
        }
    }
    if count > 0 {
        body[1..5].copy_from_slice(&count.to_le_bytes());
        write_frame(w, &body)?;
    }
    let mut end = vec![KIND_END];
    end.extend_from_slice(&total.to_le_bytes());
    write_frame(w, &end)?;
    w.flush()
}

struct Cursor<'a> {
    b: &'a [u8],
    at: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let s = self.b.get(self.at..self.at.checked_add(n)?)?;
        self.at += n;
        Some(s)
    }
    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
    }
    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }
    fn i64(&mut self) -> Option<i64> {
        Some(i64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }
}

fn parse_event(c: &mut Cursor<'_>) -> Option<Event> {
    let main = c.i64()?;
    let sub = c.i64()?;
    let create_revision = c.i64()?;
    let version = c.i64()?;
    let lease = c.i64()?;
    let key_len = c.u32()? as usize;
    let value_len = c.u32()? as usize;
    let key = Bytes::copy_from_slice(c.take(key_len)?);
    let value = Bytes::copy_from_slice(c.take(value_len)?);
    Some(Event {
        key,
        kv: KeyVersion {
            rev: Revision { main, sub },
            create_revision,
            version,
            lease,
            value,
        },
    })
}

/// Reads a snapshot from `r`; `path` only names the file in errors.
pub fn read_snapshot(r: &mut impl Read, path: &Path) -> Result<(Vec<u8>, KvStore), SnapshotError> {
    let mut offset = 0u64;
    let corrupt = |offset: u64, reason: &str| SnapshotError::Corrupt {
        file: path.to_path_buf(),
        offset,
        reason: reason.to_string(),
    };
    let io_err = |source| SnapshotError::Io {
        file: path.to_path_buf(),
        source,
    };
    let mut head = [0u8; 16];
    r.read_exact(&mut head)
        .map_err(|_| corrupt(0, "file shorter than its header"))?;
    if head[0..8] != SNAPSHOT_MAGIC {
        return Err(corrupt(0, "not a keel snapshot (bad magic)"));
    }
    let version = u32::from_le_bytes(head[8..12].try_into().expect("4 bytes"));
    if !(1..=SNAPSHOT_VERSION).contains(&version) {
        return Err(corrupt(
            8,
            &format!("snapshot version {version} is not 1 to {SNAPSHOT_VERSION}"),
        ));
    }
    offset += 16;

    let mut meta: Option<(i64, i64, Vec<u8>)> = None;
    let mut events = Vec::new();
    let mut leases: Vec<LeaseRecord> = Vec::new();
    let mut auth = AuthStore::default();
    loop {
        let mut fh = [0u8; 8];
        match r.read_exact(&mut fh) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                return Err(corrupt(offset, "missing end frame (incomplete file)"))
            }
            Err(e) => return Err(io_err(e)),
        }
        let len = u32::from_le_bytes(fh[0..4].try_into().expect("4 bytes")) as usize;
        let crc = u32::from_le_bytes(fh[4..8].try_into().expect("4 bytes"));
        if len == 0 || len > FRAME_MAX_BYTES {
            return Err(corrupt(offset, &format!("frame length {len} out of range")));
        }
        let mut body = vec![0u8; len];
        r.read_exact(&mut body)
            .map_err(|_| corrupt(offset, "frame runs past the end of the file"))?;
        if crc32c::crc32c(&body) != crc {
            return Err(corrupt(offset, "frame checksum mismatch"));
        }
        let mut c = Cursor {
            b: &body[1..],
            at: 0,
        };
        match (body[0], &meta) {
            (KIND_META, None) => {
                let parsed = (|| {
                    let cur = c.i64()?;
                    let compact = c.i64()?;
                    let n = c.u32()? as usize;
                    Some((cur, compact, c.take(n)?.to_vec()))
                })();
                meta = Some(parsed.ok_or_else(|| corrupt(offset, "malformed meta frame"))?);
            }
            (KIND_LEASES, Some(_)) if version >= 2 => {
                let parsed = (|| {
                    let n = c.u32()?;
                    let mut out = Vec::new();
                    for _ in 0..n {
                        out.push(LeaseRecord {
                            id: c.i64()?,
                            ttl: c.i64()?,
                            remaining: c.i64()?,
                        });
                    }
                    Some(out)
                })();
                leases = parsed.ok_or_else(|| corrupt(offset, "malformed leases frame"))?;
            }
            (KIND_AUTH, Some(_)) if version >= 3 => {
                auth = crate::auth::decode(&body[1..])
                    .ok_or_else(|| corrupt(offset, "malformed auth frame"))?;
            }
            (KIND_EVENTS, Some(_)) => {
                let n = c
                    .u32()
                    .ok_or_else(|| corrupt(offset, "malformed events frame"))?;
                for _ in 0..n {
                    events.push(
                        parse_event(&mut c).ok_or_else(|| corrupt(offset, "malformed event"))?,
                    );
                }
            }
            (KIND_END, Some(_)) => {
                let total = c
                    .u64()
                    .ok_or_else(|| corrupt(offset, "malformed end frame"))?;
                if total != events.len() as u64 {
                    return Err(corrupt(offset, "event count does not match end frame"));
                }
                let (cur, compact, app) = meta.take().expect("matched Some");
                let mut store = KvStore::restore(cur, compact, events, &leases)
                    .map_err(|e| corrupt(offset, &e))?;
                store.set_auth(std::mem::take(&mut auth));
                return Ok((app, store));
            }
            (kind, _) => return Err(corrupt(offset, &format!("unexpected frame kind {kind}"))),
        }
        offset += 8 + len as u64;
    }
}

/// `00000000000003e8.snap`: snapshots sort by the raft index they cover.
pub fn snapshot_file_name(index: u64) -> String {
    format!("{index:016x}.snap")
}

fn snapshot_files(dir: &Path) -> io::Result<Vec<(u64, PathBuf)>> {
    let mut out = Vec::new();
    for ent in fs::read_dir(dir)? {
        let ent = ent?;
        let name = ent.file_name();
        let name = name.to_string_lossy();
        if let Some(hex) = name.strip_suffix(".snap") {
            if let Ok(index) = u64::from_str_radix(hex, 16) {
                out.push((index, ent.path()));
            }
        }
    }
    out.sort();
    Ok(out)
}

/// Writes a snapshot file for raft index `index` atomically, then removes
/// snapshots beyond the newest kept (`--max-snapshots`). Returns the path and size.
pub fn save_snapshot_file(
    dir: &Path,
    index: u64,
    app_meta: &[u8],
    image: &StoreImage,
) -> io::Result<(PathBuf, u64)> {
    fs::create_dir_all(dir)?;
    let path = dir.join(snapshot_file_name(index));
    let tmp = path.with_extension("snap.tmp");
    {
        let f = fs::File::create(&tmp)?;
        let mut w = BufWriter::with_capacity(1 << 20, f);
        write_snapshot(&mut w, app_meta, image)?;
        let f = w.into_inner().map_err(|e| e.into_error())?;
        f.sync_all()?;
    }
    let path = place_snapshot_file(dir, &tmp, index)?;
    let size = fs::metadata(&path)?.len();
    Ok((path, size))
}

/// Makes `from`, a complete and synced snapshot file for raft index
/// `index`, the snapshot a restart loads: renames it into place, syncs the
/// directory, then removes snapshots beyond the newest kept (`--max-snapshots`).
/// Returns its new path.
pub fn place_snapshot_file(dir: &Path, from: &Path, index: u64) -> io::Result<PathBuf> {
    use crate::power_loss::{self, Step};
    let path = dir.join(snapshot_file_name(index));
    if power_loss::reached(Step::SnapshotSynced) {
        power_loss::cut(Step::SnapshotSynced);
    }
    if from != path {
        fs::rename(from, &path)?;
        if power_loss::reached(Step::SnapshotRenamed) {
            // The directory was not synced: the cut undoes the rename.
            fs::rename(&path, from)?;
            crate::sync_dir(dir)?;
            power_loss::cut(Step::SnapshotRenamed);
        }
    }
    crate::sync_dir(dir)?;
    let files = snapshot_files(dir)?;
    let kept = snapshots_kept();
    if files.len() > kept {
        for (_, old) in &files[..files.len() - kept] {
            if *old != path {
                fs::remove_file(old)?;
            }
        }
    }
    Ok(path)
}

/// A fresh name in `dir` for a snapshot being received: every transfer
/// writes its own file (`incoming-<n>.snap.tmp`), so a retry never touches
/// one still being installed. Leftovers go at the next start.
pub fn incoming_snapshot_path(dir: &Path) -> PathBuf {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    dir.join(format!("incoming-{n}.snap.tmp"))
}

/// Loads the newest snapshot in `dir`, if any, after removing unfinished
/// `.tmp` files. A damaged newest snapshot is an error: the log it replaced
/// may already be gone, so falling back could lose acknowledged writes.
pub fn load_latest_snapshot(dir: &Path) -> Result<Option<LoadedSnapshot>, SnapshotError> {
    let io_err = |source| SnapshotError::Io {
        file: dir.to_path_buf(),
        source,
    };
    if !dir.exists() {
        return Ok(None);
    }
    for ent in fs::read_dir(dir).map_err(io_err)? {
        let ent = ent.map_err(io_err)?;
        if ent.file_name().to_string_lossy().ends_with(".tmp") {
            fs::remove_file(ent.path()).map_err(io_err)?;
        }
    }
    let Some((_, path)) = snapshot_files(dir).map_err(io_err)?.pop() else {
        return Ok(None);
    };
    let f = fs::File::open(&path).map_err(|source| SnapshotError::Io {
        file: path.clone(),
        source,
    })?;
    let (app_meta, store) = read_snapshot(&mut BufReader::with_capacity(1 << 20, f), &path)?;
    Ok(Some(LoadedSnapshot {
        path,
        app_meta,
        store,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mvcc::KeyRange;

    fn sample() -> KvStore {
        let mut s = KvStore::default();
        s.leases_mut().grant(1, 60);
        s.leases_mut().grant(2, 30);
        s.leases_mut().checkpoint(2, 17);
        for i in 0..3000 {
            let mut t = s.begin_write();
            if i % 11 == 5 {
                t.delete_range(KeyRange::Single(format!("key{}", i % 13).as_bytes()));
            } else {
                t.put(
                    format!("key{}", i % 13).as_bytes(),
                    Bytes::from(vec![b'x'; i % 700]),
                    i as i64 % 3,
                );
            }
            t.end();
        }
        s.compact(1000).unwrap();
        let mut auth = AuthStore::default();
        auth.user_add("root", Some("hash".into())).unwrap();
        auth.user_grant_role("root", "root").unwrap();
        auth.enable().unwrap();
        s.set_auth(auth);
        s
    }

    #[test]
    fn round_trip_preserves_store_and_meta() {
        let s = sample();
        let mut buf = Vec::new();
        write_snapshot(&mut buf, b"raft-meta", &s.image()).unwrap();
        let (meta, r) = read_snapshot(&mut &buf[..], Path::new("x")).unwrap();
        assert_eq!(meta, b"raft-meta");
        assert_eq!(r.leases().records(), s.leases().records());
        for id in [1, 2] {
            assert_eq!(r.leases().get(id), s.leases().get(id), "lease {id}");
            assert!(!s.leases().get(id).unwrap().keys.is_empty());
        }
        assert_eq!(r.current_rev(), s.current_rev());
        assert_eq!(r.compact_rev(), 1000);
        assert_eq!(r.auth(), s.auth());
        assert!(r.auth().enabled());
        let a: Vec<_> = s.events().cloned().collect();
        let b: Vec<_> = r.events().cloned().collect();
        assert_eq!(a, b);
    }

    #[test]
    fn any_damage_is_detected() {
        let s = sample();
        let mut buf = Vec::new();
        write_snapshot(&mut buf, b"m", &s.image()).unwrap();
        // Truncation anywhere.
        for cut in [10, 20, buf.len() / 2, buf.len() - 1] {
            assert!(
                read_snapshot(&mut &buf[..cut], Path::new("x")).is_err(),
                "cut {cut}"
            );
        }
        // A flipped byte anywhere.
        let mut rng = 12345u64;
        for _ in 0..50 {
            rng = rng
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let at = (rng >> 33) as usize % buf.len();
            let mut b = buf.clone();
            b[at] ^= 0x20;
            assert!(
                read_snapshot(&mut &b[..], Path::new("x")).is_err(),
                "flip at {at}"
            );
        }
    }

    #[test]
    fn files_are_atomic_and_pruned() {
        let dir = tempfile::tempdir().unwrap();
        let s = sample();
        for index in [10, 20, 30] {
            save_snapshot_file(dir.path(), index, b"m", &s.image()).unwrap();
        }
        fs::write(dir.path().join("0000000000000040.snap.tmp"), b"partial").unwrap();
        let names: Vec<_> = snapshot_files(dir.path())
            .unwrap()
            .into_iter()
            .map(|(i, _)| i)
            .collect();
        assert_eq!(names, vec![20, 30]);
        let loaded = load_latest_snapshot(dir.path()).unwrap().unwrap();
        assert!(loaded.path.ends_with(snapshot_file_name(30)));
        assert!(!dir.path().join("0000000000000040.snap.tmp").exists());
        // A damaged newest snapshot refuses to load.
        let p = dir.path().join(snapshot_file_name(30));
        let mut b = fs::read(&p).unwrap();
        let n = b.len();
        b[n - 3] ^= 1;
        fs::write(&p, b).unwrap();
        assert!(load_latest_snapshot(dir.path()).is_err());
    }
}
