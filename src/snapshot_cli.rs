//! `keel snapshot status|restore`: etcd's snapshot tools (`etcdctl snapshot`
//! in 3.4, `etcdutl snapshot` later) for keel. A snapshot is an etcd backend
//! database with a SHA-256 trailer, from `etcdctl snapshot save` against
//! etcd or keel; restore makes a keel data directory from it.

use std::io::Read;
use std::path::{Path, PathBuf};

use clap::{Parser, Subcommand, ValueEnum};
use keel_actors::node::{cluster_id_of, member_id_of};
use keel_actors::raft::codec::{encode_snapshot_app, SnapshotApp};
use keel_storage::bolt::{self, BoltReader};
use keel_storage::etcd_db;
use keel_storage::mvcc::snapshot::save_snapshot_file;
use sha2::{Digest, Sha256};

#[derive(Parser, Debug)]
#[command(
    name = "keel snapshot",
    about = "Reads etcd snapshots and restores them into keel data directories"
)]
pub struct SnapshotCli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Prints a snapshot's hash, revision, total keys and size.
    Status {
        /// The snapshot file.
        file: PathBuf,
        /// Output format: simple, table or json (as etcdctl's -w).
        #[arg(short = 'w', long = "write-out", value_enum, default_value = "simple")]
        write_out: Format,
    },
    /// Makes a keel data directory from a snapshot (etcd's or keel's).
    Restore(RestoreArgs),
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Format {
    Simple,
    Table,
    Json,
}

#[derive(Parser, Debug)]
struct RestoreArgs {
    /// The snapshot file.
    file: PathBuf,
    /// The data directory to create [default: <name>.keel].
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// The restored member's name.
    #[arg(long, default_value = "default")]
    name: String,
    /// The cluster the restored members form, name=peer-url,...
    #[arg(long, default_value = "default=http://localhost:2380")]
    initial_cluster: String,
    /// The new cluster's token.
    #[arg(long, default_value = "etcd-cluster")]
    initial_cluster_token: String,
    /// This member's peer URLs, as in --initial-cluster.
    #[arg(long, default_value = "http://localhost:2380")]
    initial_advertise_peer_urls: String,
    /// Skip the SHA-256 check (for a db file copied from a data directory,
    /// which has no trailer).
    #[arg(long)]
    skip_hash_check: bool,
}

/// Runs `keel snapshot ...` with `args` (after "keel"); the exit code.
pub fn main(args: impl IntoIterator<Item = String>) -> i32 {
    let cli = match SnapshotCli::try_parse_from(args) {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() { 2 } else { 0 };
        }
    };
    let result = match cli.command {
        Command::Status { file, write_out } => status(&file, write_out),
        Command::Restore(args) => restore(&args),
    };
    match result {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("Error: {e}");
            1
        }
    }
}

/// Go's `humanize.Bytes`: SI units, one decimal below 10.
fn human_bytes(n: u64) -> String {
    if n < 10 {
        return format!("{n} B");
    }
    const UNITS: [&str; 7] = ["B", "kB", "MB", "GB", "TB", "PB", "EB"];
    let e = ((n as f64).ln() / 1000f64.ln()).floor() as usize;
    let val = (n as f64 / 1000f64.powi(e as i32) * 10.0 + 0.5).floor() / 10.0;
    if val < 10.0 {
        format!("{val:.1} {}", UNITS[e])
    } else {
        format!("{val:.0} {}", UNITS[e])
    }
}

fn status(file: &Path, format: Format) -> Result<(), String> {
    let db = BoltReader::open(file).map_err(|e| e.to_string())?;
    let s = bolt::status(&db).map_err(|e| e.to_string())?;
    let revision = etcd_db::newest_revision(&db).map_err(|e| e.to_string())?;
    match format {
        Format::Simple => println!(
            "{:x}, {revision}, {}, {}",
            s.hash,
            s.total_keys,
            human_bytes(s.total_size)
        ),
        Format::Json => println!(
            "{{\"hash\":{},\"revision\":{revision},\"totalKey\":{},\"totalSize\":{}}}",
            s.hash, s.total_keys, s.total_size
        ),
        Format::Table => {
            let cells = [
                format!("{:x}", s.hash),
                revision.to_string(),
                s.total_keys.to_string(),
                human_bytes(s.total_size),
            ];
            let heads = ["HASH", "REVISION", "TOTAL KEYS", "TOTAL SIZE"];
            let widths: Vec<usize> = heads
                .iter()
                .zip(&cells)
                .map(|(h, c)| h.len().max(c.len()) + 2)
                .collect();
            let rule: String = widths
                .iter()
                .map(|w| format!("+{}", "-".repeat(*w)))
                .collect();
            let center = |s: &str, w: usize| {
                let left = (w - s.len()) / 2;
                format!("{}{s}{}", " ".repeat(left), " ".repeat(w - s.len() - left))
            };
            println!("{rule}+");
            let head: String = heads
                .iter()
                .zip(&widths)
                .map(|(h, w)| format!("|{}", center(h, *w)))
                .collect();
            println!("{head}|");
            println!("{rule}+");
            let row: String = cells
                .iter()
                .zip(&widths)
                .map(|(c, w)| format!("|{}{c} ", " ".repeat(w - c.len() - 1)))
                .collect();
            println!("{row}|");
            println!("{rule}+");
        }
    }
    Ok(())
}

/// Checks the SHA-256 trailer `etcdctl snapshot save` leaves, as etcd's
/// restore does: a file whose size modulo 512 is 32 has one.
fn check_hash(file: &Path, skip: bool) -> Result<(), String> {
    let len = std::fs::metadata(file)
        .map_err(|e| format!("{}: {e}", file.display()))?
        .len();
    let has_hash = len % 512 == 32;
    if !has_hash {
        return if skip {
            Ok(())
        } else {
            Err("snapshot missing hash but --skip-hash-check=false".into())
        };
    }
    if skip {
        return Ok(());
    }
    let mut f = std::fs::File::open(file).map_err(|e| e.to_string())?;
    let mut sha = Sha256::new();
    let mut left = len - 32;
    let mut buf = vec![0u8; 1 << 20];
    while left > 0 {
        let n = left.min(buf.len() as u64) as usize;
        f.read_exact(&mut buf[..n]).map_err(|e| e.to_string())?;
        sha.update(&buf[..n]);
        left -= n as u64;
    }
    let mut trailer = [0u8; 32];
    f.read_exact(&mut trailer).map_err(|e| e.to_string())?;
    let got = sha.finalize();
    if got[..] != trailer {
        return Err(format!(
            "expected sha256 {:?}, got {:?}",
            trailer.to_vec(),
            got.to_vec()
        ));
    }
    Ok(())
}

fn restore(args: &RestoreArgs) -> Result<(), String> {
    let data_dir = args
        .data_dir
        .clone()
        .unwrap_or_else(|| PathBuf::from(format!("{}.keel", args.name)));
    if data_dir.exists() {
        return Err(format!(
            "data-dir {:?} exists",
            data_dir.display().to_string()
        ));
    }
    let members = crate::config::parse_initial_cluster(&args.initial_cluster)?;
    let peer_urls: Vec<String> = args
        .initial_advertise_peer_urls
        .split(',')
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect();
    crate::config::check_own_entry(&members, &args.name, &peer_urls)?;
    check_hash(&args.file, args.skip_hash_check)?;
    let contents = etcd_db::read_db(&args.file)?;
    let ids: Vec<u64> = members
        .iter()
        .map(|(_, urls)| member_id_of(urls, &args.initial_cluster_token))
        .collect();
    let member_id = member_id_of(&peer_urls, &args.initial_cluster_token);
    let cluster_id = cluster_id_of(&ids, &args.initial_cluster_token);

    // The data directory: private, as the server makes it.
    // SAFETY: umask only replaces the process's file-creation mask.
    unsafe { libc::umask(0o077) };
    let err = |e: std::io::Error| format!("{}: {e}", data_dir.display());
    for dir in ["member", "member/wal", "member/snap"] {
        keel_storage::create_dir_durably(&data_dir.join(dir)).map_err(err)?;
    }
    // The store as a snapshot that covers no raft entry: the member starts
    // as a new one (its membership from its flags) on top of this data.
    let app = encode_snapshot_app(&SnapshotApp::default());
    let image = contents.store.image();
    save_snapshot_file(&data_dir.join("member/snap"), 0, &app, &image).map_err(err)?;
    let identity = format!(
        "member_id={member_id:x}\ncluster_id={cluster_id:x}\nname={}\n",
        args.name
    );
    keel_storage::write_file_atomically(&data_dir.join("member/identity"), identity.as_bytes())
        .map_err(err)?;
    eprintln!(
        "restored snapshot {} (revision {}, {} keys) into {} as member {member_id:x} of cluster {cluster_id:x}",
        args.file.display(),
        contents.store.current_rev(),
        contents.store.live_keys(),
        data_dir.display()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::human_bytes;

    #[test]
    fn sizes_print_as_go_humanize_prints_them() {
        assert_eq!(human_bytes(5), "5 B");
        assert_eq!(human_bytes(57_344), "57 kB");
        assert_eq!(human_bytes(1_234), "1.2 kB");
        assert_eq!(human_bytes(20_480), "20 kB");
        assert_eq!(human_bytes(2_147_483_648), "2.1 GB");
    }
}
