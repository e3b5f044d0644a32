//! openraft's state machine: a thin shell over the MVCC apply actor.
//!
//! Applying forwards committed entries to the actor and returns its
//! results. Snapshots take a consistent view from the actor (its applied
//! log id travels with the data) and write it on glommio's blocking pool,
//! so neither the apply actor nor the raft core waits for the disk.
//!
//! A received snapshot becomes this member's restart point only once it is
//! checked, renamed into place and its directory synced; until then the log
//! store keeps the WAL's entries (see [`DurableSnapshot`]), so a crash in
//! between restarts from the previous snapshot and the log.

use std::cell::RefCell;
use std::path::PathBuf;
use std::rc::Rc;
use std::time::Instant;

use keel_storage::mvcc::snapshot::{
    incoming_snapshot_path, place_snapshot_file, read_snapshot, save_snapshot_file,
};
use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{EntryPayload, RaftSnapshotBuilder, StorageIOError};
use tokio::sync::{mpsc, oneshot};

use super::codec::{decode_snapshot_app, encode_snapshot_app, log_id_record};
use super::types::{
    AppliedResult, Entry, LogId, SnapshotFile, SnapshotMeta, StorageError, StoredMembership,
    TypeConfig,
};
use crate::metrics::metrics;
use crate::mvcc_actor::{ApplyEntry, ApplyPayload, MvccMsg, Restored, SnapshotView};
use crate::wal_writer::WalCmd;

/// The newest snapshot file a restart would load (renamed into place, its
/// directory synced), shared by the state machine, which sets it, and the
/// log store, which never lets the WAL forget entries past it.
#[derive(Clone, Default)]
pub struct DurableSnapshot(Rc<RefCell<Option<(SnapshotMeta, PathBuf)>>>);

impl DurableSnapshot {
    pub fn new(loaded: Option<(SnapshotMeta, PathBuf)>) -> DurableSnapshot {
        DurableSnapshot(Rc::new(RefCell::new(loaded)))
    }

    /// The last log id the durable snapshot covers.
    pub fn last_log_id(&self) -> Option<LogId> {
        self.0.borrow().as_ref().and_then(|(m, _)| m.last_log_id)
    }

    fn set(&self, meta: SnapshotMeta, path: PathBuf) {
        *self.0.borrow_mut() = Some((meta, path));
    }

    fn get(&self) -> Option<(SnapshotMeta, PathBuf)> {
        self.0.borrow().clone()
    }
}

pub struct StateMachine {
    mvcc: mpsc::Sender<MvccMsg>,
    wal: mpsc::Sender<WalCmd>,
    snap_dir: PathBuf,
    current: DurableSnapshot,
}

fn sm_err(what: &str) -> StorageError {
    StorageIOError::read_state_machine(&std::io::Error::other(what.to_string())).into()
}

/// A snapshot's id: `<term>-<index>` of the last entry it covers.
pub fn snapshot_id(applied: Option<&LogId>) -> String {
    applied.map_or("0-0".to_string(), |l| {
        format!("{}-{}", l.leader_id.term, l.index)
    })
}

impl StateMachine {
    /// `current` holds the snapshot the store was restored from at start-up.
    pub fn new(
        mvcc: mpsc::Sender<MvccMsg>,
        wal: mpsc::Sender<WalCmd>,
        snap_dir: PathBuf,
        current: DurableSnapshot,
    ) -> StateMachine {
        StateMachine {
            mvcc,
            wal,
            snap_dir,
            current,
        }
    }

    /// Waits until everything the log store queued for the WAL is durable.
    async fn wal_barrier(&self) -> Result<(), StorageError> {
        let (tx, rx) = oneshot::channel();
        let done = Box::new(move |r| {
            let _ = tx.send(r);
        });
        let gone = || sm_err("WAL writer stopped");
        self.wal
            .send(WalCmd::Barrier { done })
            .await
            .map_err(|_| gone())?;
        rx.await
            .map_err(|_| gone())?
            .map_err(|e| sm_err(&format!("WAL: {e}")))
    }

    async fn ask<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<T>) -> MvccMsg,
    ) -> Result<T, StorageError> {
        let (tx, rx) = oneshot::channel();
        self.mvcc
            .send(make(tx))
            .await
            .map_err(|_| sm_err("MVCC actor stopped"))?;
        rx.await.map_err(|_| sm_err("MVCC actor stopped"))
    }
}

pub struct SnapshotBuilder {
    mvcc: mpsc::Sender<MvccMsg>,
    snap_dir: PathBuf,
    current: DurableSnapshot,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError> {
        let (tx, rx) = oneshot::channel();
        self.mvcc
            .send(MvccMsg::SnapshotView { reply: tx })
            .await
            .map_err(|_| sm_err("MVCC actor stopped"))?;
        let SnapshotView { image, app } = rx.await.map_err(|_| sm_err("MVCC actor stopped"))?;
        let (applied, membership) = (app.applied, app.membership.clone());
        let app = encode_snapshot_app(&app);
        let dir = self.snap_dir.clone();
        let index = applied.map_or(0, |l| l.index);
        let started = Instant::now();
        let (path, size) = glommio::executor()
            .spawn_blocking(move || save_snapshot_file(&dir, index, &app, &image))
            .await
            .map_err(|e| StorageError::from(StorageIOError::write_snapshot(None, &e)))?;
        metrics()
            .snapshot_save_seconds
            .observe(started.elapsed().as_secs_f64());
        tracing::info!(path = %path.display(), size, index, "snapshot saved");
        let meta = SnapshotMeta {
            last_log_id: applied,
            last_membership: membership,
            snapshot_id: snapshot_id(applied.as_ref()),
        };
        self.current.set(meta.clone(), path.clone());
        Ok(Snapshot {
            meta,
            snapshot: Box::new(SnapshotFile { path }),
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), StorageError> {
        self.ask(|reply| MvccMsg::AppliedState { reply }).await
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<AppliedResult>, StorageError>
    where
        I: IntoIterator<Item = Entry>,
    {
        let entries: Vec<ApplyEntry> = entries
            .into_iter()
            .map(|e| ApplyEntry {
                log_id: e.log_id,
                payload: match e.payload {
                    EntryPayload::Blank => ApplyPayload::Blank,
                    EntryPayload::Normal(p) => ApplyPayload::Normal(p.batch),
                    EntryPayload::Membership(m) => ApplyPayload::Membership(m),
                },
            })
            .collect();
        let n = entries.len();
        let result = self.ask(|reply| MvccMsg::Apply { entries, reply }).await?;
        let results = result.map_err(|e| {
            StorageError::from(StorageIOError::apply(
                openraft::LogId::default(),
                &std::io::Error::other(e),
            ))
        })?;
        debug_assert_eq!(results.len(), n);
        Ok(results)
    }

    async fn get_snapshot_builder(&mut self) -> SnapshotBuilder {
        SnapshotBuilder {
            mvcc: self.mvcc.clone(),
            snap_dir: self.snap_dir.clone(),
            current: self.current.clone(),
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<SnapshotFile>, StorageError> {
        Ok(Box::new(SnapshotFile {
            path: incoming_snapshot_path(&self.snap_dir),
        }))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Box<SnapshotFile>,
    ) -> Result<(), StorageError> {
        let index = meta.last_log_id.map_or(0, |l| l.index);
        // openraft queued the truncation of a conflicting log before this
        // install: it must be durable before the snapshot is, or a restart
        // would find the snapshot beside entries it contradicts.
        self.wal_barrier().await?;
        let dir = self.snap_dir.clone();
        let from = snapshot.path.clone();
        let started = std::time::Instant::now();
        let loaded = glommio::executor()
            .spawn_blocking(move || -> Result<_, String> {
                let f = std::fs::File::open(&from).map_err(|e| e.to_string())?;
                let (app, store) = read_snapshot(&mut std::io::BufReader::new(f), &from)
                    .map_err(|e| e.to_string())?;
                let app = decode_snapshot_app(&app)?;
                let path = place_snapshot_file(&dir, &from, index).map_err(|e| e.to_string())?;
                Ok((app, store, path))
            })
            .await
            .map_err(|e| sm_err(&format!("installing snapshot: {e}")))?;
        // etcd's figure for a snapshot received from the leader and saved.
        crate::metrics::metrics()
            .snap_db_save_seconds
            .observe(started.elapsed().as_secs_f64());
        let (app, store, path) = loaded;
        // From here a restart loads this snapshot, and the WAL forgets what
        // it covers: openraft's purge for this install came while the file
        // was not yet durable and was held back (`log_store::purge`). The
        // purge goes before any entry that follows the snapshot, which
        // openraft appends only after this install; without it the WAL
        // would hold those entries right after older ones, a gap recovery
        // refuses.
        self.current.set(meta.clone(), path);
        if let Some(last) = meta.last_log_id {
            self.wal
                .send(WalCmd::Purge {
                    log_id: log_id_record(&last),
                })
                .await
                .map_err(|_| sm_err("installing snapshot: the WAL writer stopped"))?;
        }
        self.ask(|reply| MvccMsg::Install {
            restored: Box::new(Restored { store, app }),
            reply,
        })
        .await?;
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError> {
        Ok(self.current.get().map(|(meta, path)| Snapshot {
            meta,
            snapshot: Box::new(SnapshotFile { path }),
        }))
    }
}
