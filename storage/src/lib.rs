//! keel's durable formats and in-memory state, free of I/O scheduling.
//!
//! * [`wal`]: the write-ahead log's byte format (segment header, framed and
//!   checksummed records), the pure segment scanner that tells a torn tail
//!   from corruption, and start-up recovery with plain blocking reads.
//! * [`mvcc`]: the multi-version key-value store (key index, revision log,
//!   compaction), etcd's KV semantics on top of it, and the snapshot format.
//! * [`bolt`]: bbolt's file format (writer and reader), and [`etcd_db`]:
//!   etcd's backend buckets in it, for snapshots etcd's tools read and write.
//!
//! This crate knows nothing of raft, glommio or the network: it deals in byte
//! buffers, log indexes and revisions. The WAL *writer* (io_uring, O_DIRECT,
//! group commit) lives in `keel-actors` and uses the encoders here.

pub mod auth;
pub mod bolt;
pub mod etcd_db;
pub mod mvcc;
pub mod power_loss;
pub mod wal;

/// Writes `bytes` to `path` atomically: temp file, fsync, rename, fsync of
/// the directory. A crash leaves either the old file or the new one.
pub fn write_file_atomically(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let tmp = path.with_extension("tmp");
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    sync_dir(path.parent().unwrap_or(std::path::Path::new(".")))
}

/// fsyncs a directory so that renames and unlinks in it are durable.
pub fn sync_dir(dir: &std::path::Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

/// Creates `dir` and any missing parents, fsyncing the directory that holds
/// each one it creates, so that the new directory survives a power loss
/// (a file fsynced inside a directory whose own entry was never made
/// durable can vanish with it).
pub fn create_dir_durably(dir: &std::path::Path) -> std::io::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    let parent = match dir.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => std::path::Path::new("."),
    };
    create_dir_durably(parent)?;
    match std::fs::create_dir(dir) {
        Ok(()) => sync_dir(parent),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && dir.is_dir() => Ok(()),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod dir_tests {
    #[test]
    fn creates_missing_parents_and_accepts_existing() {
        let t = tempfile::tempdir().unwrap();
        let d = t.path().join("a").join("b").join("c");
        super::create_dir_durably(&d).unwrap();
        assert!(d.is_dir());
        super::create_dir_durably(&d).unwrap();
        let f = t.path().join("file");
        std::fs::write(&f, b"x").unwrap();
        assert!(super::create_dir_durably(&f.join("d")).is_err());
    }
}
