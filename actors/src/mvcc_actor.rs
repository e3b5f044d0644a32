//! The MVCC apply actor: the only owner of the key-value store.
//!
//! It applies committed entries in log order, answers reads, and hands out
//! consistent views for snapshots. A linearizable read arrives with the
//! raft index it must observe; it waits here, without blocking anything
//! else, until that index is applied. It also owns the watch hub
//! (`crate::watch`) and the leader's lease clock (`crate::lease`), served
//! every [`WATCH_TICK`] by a `Tick` message. The actor never does I/O.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use keel_proto::command::{
    ArchivedAuthCmd, ArchivedCommand, Command, LeaseCheckpointInTermCmd, LeaseExpireCmd,
};
use keel_proto::etcdserverpb as pb;
use keel_storage::mvcc::snapshot::StoreImage;
use keel_storage::mvcc::store_range::RangeScan;
use keel_storage::mvcc::{
    ApplyOutcome, AuthAnswer, CommandResponse, KvStore, MvccError, RangeArgs,
};
use tokio::sync::{mpsc, oneshot};

use crate::auth::AuthShared;
use crate::lease::{LeaseClock, LeaseError, CHECKPOINTS_PER_ENTRY};
use crate::metrics::metrics;
use crate::raft::actor::RaftRequest;
use crate::raft::codec::SnapshotApp;
use crate::raft::types::{AppliedResult, LogId, Membership, StoredMembership};
use crate::watch::{HeaderInfo, StreamId, WatchHub, WatchSpec};

/// How often unsynced watchers catch up and progress notifications go out.
pub const WATCH_TICK: Duration = Duration::from_millis(100);

/// Messages the actor handles before it lets the other tasks of its core run.
pub const MESSAGES_PER_TURN: usize = 64;

/// Reads (and other waiters) that may wait for their index at once; more
/// are refused.
pub const WAITING_READS_MAX: usize = 65_536;
/// Keys a range reads per step: one step of a large range takes about a
/// millisecond, and the log is applied between steps.
pub const RANGE_STEP_KEYS: usize = 4096;
/// Large ranges read in steps at once; more are refused as too many
/// requests.
pub const RANGES_IN_STEPS_MAX: usize = 256;

/// Identity stamped on every response header.
#[derive(Debug, Clone, Copy, Default)]
pub struct HeaderIds {
    pub cluster_id: u64,
    pub member_id: u64,
}

pub enum ApplyPayload {
    Blank,
    Normal(Bytes),
    Membership(Membership),
}

pub struct ApplyEntry {
    pub log_id: LogId,
    pub payload: ApplyPayload,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadError {
    Mvcc(MvccError),
    /// Too many reads waiting for their index.
    Busy,
    /// No leader could confirm the read index.
    NoLeader,
}

pub type RangeReply = oneshot::Sender<Result<pb::RangeResponse, ReadError>>;
pub type HashKvReply = oneshot::Sender<Result<pb::HashKvResponse, ReadError>>;

/// Jobs the actor may have queued on the executor's blocking thread at
/// once: beyond it a hash is refused (`too many requests`) and a large
/// range's answer is built on the core.
const BLOCKING_JOBS_MAX: usize = 16;

/// Test mode (`KEEL_TEST_CORRUPT_HASH=1`): this member's HashKV is off by
/// one bit, as a member whose stored history was damaged would report it.
/// The corruption checks' tests start one member so.
fn test_corrupt_hash() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var_os("KEEL_TEST_CORRUPT_HASH").is_some_and(|v| v == "1"))
}

/// A consistent picture of the store for a snapshot.
pub struct SnapshotView {
    pub image: StoreImage,
    /// What the snapshot covers, and the state kept beside the store.
    pub app: SnapshotApp,
}

/// The store and the state beside it, as restored from a snapshot (or
/// empty) at start-up, or from a snapshot received from the leader.
pub struct Restored {
    pub store: KvStore,
    pub app: SnapshotApp,
}

/// The store's size and whether a NOSPACE alarm is raised, for the cores
/// that check etcd's space quota before proposing a write.
#[derive(Debug, Default)]
pub struct SpaceGauge {
    size_bytes: AtomicU64,
    nospace: AtomicBool,
}

impl SpaceGauge {
    pub fn size_bytes(&self) -> u64 {
        self.size_bytes.load(Ordering::Relaxed)
    }

    pub fn nospace(&self) -> bool {
        self.nospace.load(Ordering::Relaxed)
    }
}

/// etcd's alarm types (`pb::AlarmType` wire values).
pub const ALARM_NOSPACE: i32 = pb::AlarmType::Nospace as i32;
pub const ALARM_CORRUPT: i32 = pb::AlarmType::Corrupt as i32;

#[derive(Debug, Clone, Copy, Default)]
pub struct MvccStatus {
    pub current_rev: i64,
    pub compact_rev: i64,
    pub applied_index: u64,
    pub raft_term: u64,
    pub size_bytes: u64,
    pub live_keys: u64,
}

pub enum MvccMsg {
    Apply {
        entries: Vec<ApplyEntry>,
        reply: oneshot::Sender<Result<Vec<AppliedResult>, String>>,
    },
    /// etcd's HashKV at `revision` (0: the current one), once no
    /// compaction is running.
    HashKv {
        revision: i64,
        reply: HashKvReply,
    },
    /// Serve `req` once entries up to `min_applied` are applied.
    Range {
        req: pb::RangeRequest,
        min_applied: u64,
        reply: RangeReply,
    },
    AppliedState {
        reply: oneshot::Sender<(Option<LogId>, StoredMembership)>,
    },
    /// Whether member `id` was removed from the cluster.
    IsRemoved {
        id: u64,
        reply: oneshot::Sender<bool>,
    },
    /// Answer once entries up to `index` are applied.
    WaitApplied {
        index: u64,
        reply: oneshot::Sender<()>,
    },
    SnapshotView {
        reply: oneshot::Sender<SnapshotView>,
    },
    /// Replace the store (a snapshot was installed).
    Install {
        restored: Box<Restored>,
        reply: oneshot::Sender<()>,
    },
    Status {
        reply: oneshot::Sender<MvccStatus>,
    },
    /// The alarms raised: (member id, `pb::AlarmType` wire value).
    Alarms {
        reply: oneshot::Sender<Vec<(u64, i32)>>,
    },
    Watch(WatchMsg),
    Lease(LeaseMsg),
    /// Time for the periodic duties (see [`MvccActor::tick`]).
    Tick,
    /// Answer once the running compaction has removed every version it
    /// made unreachable (a `physical` Compact waits for this, as in etcd).
    CompactionDone {
        reply: oneshot::Sender<()>,
    },
}

/// What a lease's time-to-live query answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseTtl {
    /// Seconds left (by the leader's clock).
    pub remaining: i64,
    pub granted: i64,
    pub keys: Vec<bytes::Bytes>,
}

pub enum LeaseMsg {
    /// This member leads `term` (and has a recent quorum), or does not lead.
    Leadership {
        term: Option<u64>,
    },
    Renew {
        id: i64,
        reply: oneshot::Sender<Result<i64, LeaseError>>,
    },
    TimeToLive {
        id: i64,
        keys: bool,
        reply: oneshot::Sender<Result<LeaseTtl, LeaseError>>,
    },
    List {
        reply: oneshot::Sender<Vec<i64>>,
    },
}

/// A watch stream's requests to the hub (see `crate::watch`).
pub enum WatchMsg {
    Open {
        stream: StreamId,
        tx: mpsc::Sender<pb::WatchResponse>,
        max_bytes: usize,
    },
    Create {
        stream: StreamId,
        spec: WatchSpec,
    },
    Cancel {
        stream: StreamId,
        watch_id: i64,
    },
    Progress {
        stream: StreamId,
    },
    Close {
        stream: StreamId,
    },
}

/// Something waiting for an index to be applied.
enum Waiter {
    Range(pb::RangeRequest, RangeReply),
    Applied(oneshot::Sender<()>),
}

/// A range too large for one step, read a step at a time.
struct RangeJob {
    req: pb::RangeRequest,
    scan: RangeScan,
    reply: RangeReply,
}

pub struct MvccActor {
    store: KvStore,
    /// What the store's snapshot carries beside it: the last applied entry,
    /// the membership, the members removed (their peer connections are
    /// refused) and the alarms raised in the cluster.
    app: SnapshotApp,
    ids: HeaderIds,
    /// Term of the last applied entry, for response headers.
    term: u64,
    waiting: BTreeMap<u64, Vec<Waiter>>,
    waiting_len: usize,
    watches: WatchHub,
    /// The first revision not yet handed to the watch hub.
    unnotified_rev: i64,
    timing: MvccTiming,
    lease_clock: LeaseClock,
    space: Arc<SpaceGauge>,
    /// The auth store as every core checks it, and this member's tokens.
    auth: Arc<AuthShared>,
    /// For proposing lease revokes and checkpoints (as the leader).
    raft: mpsc::Sender<RaftRequest>,
    /// The term this member leads, if it does: stamped on what it decides.
    leading_term: Option<u64>,
    /// This member applied its own removal and stops shortly.
    stopping: bool,
    /// Physical compactions waiting for the running one to finish.
    compaction_waiters: Vec<oneshot::Sender<()>>,
    /// HashKV requests waiting for the running compaction to finish (the
    /// hash reads the revision log as it is once compaction is done).
    hash_waiters: Vec<(i64, HashKvReply)>,
    /// Jobs handed to the executor's blocking thread and not yet run (large
    /// range answers, hashes): at most [`BLOCKING_JOBS_MAX`].
    blocking_jobs: std::rc::Rc<std::cell::Cell<usize>>,
    /// Ranges being read in steps, taking turns. No compaction step runs
    /// while one is: it could remove versions they read.
    ranges: VecDeque<RangeJob>,
}

/// The MVCC actor's periodic duties.
#[derive(Debug, Clone, Copy)]
pub struct MvccTiming {
    /// How often idle watchers that asked for it get a progress notification.
    pub progress_every: Duration,
    /// How often the leader checkpoints leases' remaining TTLs.
    pub lease_checkpoint_every: Duration,
    /// An entry that takes longer to apply is logged and counted
    /// (`--experimental-warning-apply-duration`, `etcd_server_slow_apply_total`).
    pub warn_apply_after: Duration,
}

impl MvccActor {
    pub fn new(
        restored: Restored,
        ids: HeaderIds,
        timing: MvccTiming,
        raft: mpsc::Sender<RaftRequest>,
        space: Arc<SpaceGauge>,
        auth: Arc<AuthShared>,
    ) -> MvccActor {
        let Restored { store, app } = restored;
        auth.publish(store.auth());
        let term = app.applied.map_or(0, |l| l.leader_id.term);
        let unnotified_rev = store.current_rev() + 1;
        let a = MvccActor {
            store,
            app,
            ids,
            term,
            waiting: BTreeMap::new(),
            waiting_len: 0,
            unnotified_rev,
            watches: WatchHub::default(),
            timing,
            lease_clock: LeaseClock::default(),
            space,
            auth,
            raft,
            leading_term: None,
            stopping: false,
            compaction_waiters: Vec::new(),
            hash_waiters: Vec::new(),
            blocking_jobs: std::rc::Rc::default(),
            ranges: VecDeque::new(),
        };
        a.update_gauges();
        a
    }

    pub async fn run(mut self, mut rx: mpsc::Receiver<MvccMsg>) {
        let mut handled = 0usize;
        loop {
            let msg = if self.has_background_work() {
                match rx.try_recv() {
                    Ok(msg) => msg,
                    Err(mpsc::error::TryRecvError::Empty) => {
                        // Idle: a step of a large range or a compaction,
                        // then the core's other tasks get a turn.
                        self.background_step();
                        futures_lite::future::yield_now().await;
                        continue;
                    }
                    Err(mpsc::error::TryRecvError::Disconnected) => return,
                }
            } else {
                match rx.recv().await {
                    Some(msg) => msg,
                    None => return,
                }
            };
            self.handle(msg);
            handled += 1;
            // A receive that finds a message never yields (tokio's channel
            // has no budget outside tokio): give the core's other tasks,
            // raft and the WAL writer among them, a turn now and then.
            // Large ranges and compactions move on by a step per turn even
            // when the actor is never idle.
            if handled.is_multiple_of(MESSAGES_PER_TURN) {
                self.background_step();
                futures_lite::future::yield_now().await;
            }
        }
    }

    fn has_background_work(&self) -> bool {
        !self.ranges.is_empty() || self.store.compacting()
    }

    /// One bounded step of background work: of the next large range in
    /// turn, or else of the running compaction.
    fn background_step(&mut self) {
        if let Some(mut job) = self.ranges.pop_front() {
            let args = RangeArgs::from(&job.req);
            if self.store.range_step(&args, &mut job.scan, RANGE_STEP_KEYS) {
                self.answer_range(job);
            } else {
                self.ranges.push_back(job);
            }
            return;
        }
        if !self.store.compacting() {
            return;
        }
        self.store.compact_step();
        if !self.store.compacting() {
            self.update_gauges();
            self.answer_compaction_waiters();
        }
    }

    fn answer_compaction_waiters(&mut self) {
        if !self.store.compacting() {
            for w in self.compaction_waiters.drain(..) {
                let _ = w.send(());
            }
            for (revision, reply) in std::mem::take(&mut self.hash_waiters) {
                self.hash_kv(revision, reply);
            }
        }
    }

    /// etcd's HashKV: its revision checks, then the hash of the revision
    /// log on the executor's blocking thread (it reads every version).
    fn hash_kv(&mut self, revision: i64, reply: HashKvReply) {
        let (compacted, current) = (self.store.compact_rev(), self.store.current_rev());
        if revision > 0 && revision <= compacted {
            let _ = reply.send(Err(ReadError::Mvcc(MvccError::Compacted)));
        } else if revision > current {
            let _ = reply.send(Err(ReadError::Mvcc(MvccError::FutureRev)));
        } else if self.blocking_jobs.get() >= BLOCKING_JOBS_MAX {
            let _ = reply.send(Err(ReadError::Busy));
        } else if self.store.compacting() {
            if self.hash_waiters.len() < WAITING_READS_MAX {
                self.hash_waiters.push((revision, reply));
            } else {
                let _ = reply.send(Err(ReadError::Busy));
            }
        } else {
            let rev = if revision == 0 { current } else { revision };
            let (view, header) = (self.store.view(), self.header(current));
            let hash = move || {
                let hash = keel_storage::mvcc::hash::hash_kv(&view, rev, compacted)
                    ^ u32::from(test_corrupt_hash());
                let _ = reply.send(Ok(pb::HashKvResponse {
                    header: Some(header),
                    hash,
                    compact_revision: compacted,
                    // etcd 3.5's field (3.4 has none): the revision hashed.
                    hash_revision: rev,
                }));
            };
            self.run_blocking(hash);
        }
    }

    /// Runs `job` on the executor's blocking thread, counted in
    /// `blocking_jobs` until it has run.
    fn run_blocking(&self, job: impl FnOnce() + Send + 'static) {
        let jobs = self.blocking_jobs.clone();
        jobs.set(jobs.get() + 1);
        glommio::spawn_local(async move {
            glommio::executor().spawn_blocking(job).await;
            jobs.set(jobs.get() - 1);
        })
        .detach();
    }

    /// Sends [`MvccMsg::Tick`] every [`WATCH_TICK`] until the actor is gone.
    /// A tick that finds the inbox full is skipped: the actor is busy and
    /// the next one comes soon.
    pub async fn tick(tx: mpsc::Sender<MvccMsg>) {
        loop {
            glommio::timer::sleep(WATCH_TICK).await;
            if let Err(mpsc::error::TrySendError::Closed(_)) = tx.try_send(MvccMsg::Tick) {
                return;
            }
        }
    }

    /// Periodic duties: slow watchers, progress notifications, leases.
    fn on_tick(&mut self) {
        if !self.watches.is_empty() {
            let h = self.header_info();
            self.watches
                .catch_up(&self.store, h, self.timing.progress_every);
        }
        if self.lease_clock.active() {
            self.lease_duties();
        }
    }

    /// As the leader: propose revokes of expired leases and, now and then,
    /// a checkpoint of every lease's remaining TTL. Never waits: a proposal
    /// that does not fit the raft actor's inbox is retried later.
    fn lease_duties(&mut self) {
        let Some(term) = self.leading_term else {
            return;
        };
        let now = Instant::now();
        let mut commands: Vec<Command> = self
            .lease_clock
            .expired(now)
            .into_iter()
            .map(|id| Command::LeaseExpire(LeaseExpireCmd { id, term }))
            .collect();
        let due = self
            .lease_clock
            .checkpoint_due(now, self.timing.lease_checkpoint_every);
        commands.extend(due.chunks(CHECKPOINTS_PER_ENTRY).map(|c| {
            Command::LeaseCheckpointInTerm(LeaseCheckpointInTermCmd {
                term,
                checkpoints: c.to_vec(),
            })
        }));
        for cmd in commands {
            let _ = self.raft.try_send(RaftRequest::ProposeAsLeader {
                command: bytes::Bytes::from_owner(cmd.to_bytes()),
                term,
            });
        }
    }

    fn handle_lease(&mut self, msg: LeaseMsg) {
        let now = Instant::now();
        match msg {
            LeaseMsg::Leadership { term } => {
                self.leading_term = term;
                self.lease_clock
                    .set_leader(term.is_some(), self.store.leases(), now)
            }
            LeaseMsg::Renew { id, reply } => {
                let r = self.lease_clock.renew(self.store.leases(), id, now);
                if r.is_ok() {
                    metrics().lease_renewed.inc();
                }
                let _ = reply.send(r);
            }
            LeaseMsg::TimeToLive { id, keys, reply } => {
                let r = self
                    .lease_clock
                    .remaining(self.store.leases(), id, now)
                    .map(|left| {
                        let lease = self.store.leases().get(id).expect("checked");
                        LeaseTtl {
                            remaining: left,
                            granted: lease.ttl,
                            keys: if keys {
                                lease.keys.iter().cloned().collect()
                            } else {
                                Vec::new()
                            },
                        }
                    });
                let _ = reply.send(r);
            }
            LeaseMsg::List { reply } => {
                let _ = reply.send(self.store.leases().ids().collect());
            }
        }
    }

    fn header_info(&self) -> HeaderInfo {
        HeaderInfo {
            cluster_id: self.ids.cluster_id,
            member_id: self.ids.member_id,
            raft_term: self.term,
        }
    }

    fn handle_watch(&mut self, msg: WatchMsg) {
        let h = self.header_info();
        match msg {
            WatchMsg::Open {
                stream,
                tx,
                max_bytes,
            } => self.watches.open(stream, tx, max_bytes),
            WatchMsg::Create { stream, spec } => self.watches.create(stream, spec, &self.store, h),
            WatchMsg::Cancel { stream, watch_id } => {
                self.watches.cancel(stream, watch_id, &self.store, h)
            }
            WatchMsg::Progress { stream } => self.watches.request_progress(stream, &self.store, h),
            WatchMsg::Close { stream } => self.watches.close(stream),
        }
    }

    /// Hands the revisions applied since the last call to synced watchers.
    fn notify_watchers(&mut self) {
        let h = self.header_info();
        self.watches.notify(self.unnotified_rev, &self.store, h);
        self.unnotified_rev = self.store.current_rev() + 1;
    }

    fn applied_index(&self) -> u64 {
        self.app.applied.map_or(0, |l| l.index)
    }

    fn handle(&mut self, msg: MvccMsg) {
        match msg {
            MvccMsg::Apply { entries, reply } => {
                let r = self.apply(entries);
                let _ = reply.send(r);
                self.notify_watchers();
                self.serve_waiting();
                self.update_gauges();
            }
            MvccMsg::Range {
                req,
                min_applied,
                reply,
            } => {
                if min_applied <= self.applied_index() {
                    self.range(req, reply);
                } else if self.waiting_len >= WAITING_READS_MAX {
                    let _ = reply.send(Err(ReadError::Busy));
                } else {
                    self.wait(min_applied, Waiter::Range(req, reply));
                }
            }
            MvccMsg::WaitApplied { index, reply } => {
                if index <= self.applied_index() {
                    let _ = reply.send(());
                } else if self.waiting_len < WAITING_READS_MAX {
                    self.wait(index, Waiter::Applied(reply));
                }
                // else: dropping the reply tells the waiter it cannot wait here.
            }
            MvccMsg::HashKv { revision, reply } => self.hash_kv(revision, reply),
            MvccMsg::CompactionDone { reply } => {
                if !self.store.compacting() {
                    let _ = reply.send(());
                } else if self.compaction_waiters.len() < WAITING_READS_MAX {
                    self.compaction_waiters.push(reply);
                }
                // else: dropping the reply tells the waiter it cannot wait here.
            }
            MvccMsg::AppliedState { reply } => {
                let _ = reply.send((self.app.applied, self.app.membership.clone()));
            }
            MvccMsg::SnapshotView { reply } => {
                let _ = reply.send(SnapshotView {
                    image: self.store.image(),
                    app: self.app.clone(),
                });
            }
            MvccMsg::Install { restored, reply } => {
                self.finish_ranges();
                let Restored { store, app } = *restored;
                self.store = store;
                self.auth.publish(self.store.auth());
                self.unnotified_rev = self.store.current_rev() + 1;
                self.watches.resync_all();
                self.term = app.applied.map_or(self.term, |l| l.leader_id.term);
                self.app = app;
                let _ = reply.send(());
                self.serve_waiting();
                self.update_gauges();
                self.answer_compaction_waiters();
            }
            MvccMsg::Watch(w) => self.handle_watch(w),
            MvccMsg::Tick => self.on_tick(),
            MvccMsg::IsRemoved { id, reply } => {
                let _ = reply.send(self.app.removed.contains(&id));
            }
            MvccMsg::Lease(l) => self.handle_lease(l),
            MvccMsg::Alarms { reply } => {
                let _ = reply.send(self.app.alarms.iter().copied().collect());
            }
            MvccMsg::Status { reply } => {
                let _ = reply.send(MvccStatus {
                    current_rev: self.store.current_rev(),
                    compact_rev: self.store.compact_rev(),
                    applied_index: self.applied_index(),
                    raft_term: self.term,
                    size_bytes: self.store.size_bytes(),
                    live_keys: self.store.live_keys(),
                });
            }
        }
    }

    fn header(&self, revision: i64) -> pb::ResponseHeader {
        pb::ResponseHeader {
            cluster_id: self.ids.cluster_id,
            member_id: self.ids.member_id,
            revision,
            raft_term: self.term,
        }
    }

    /// Serves a range: at once if one step reads it, else in steps
    /// between other work.
    fn range(&mut self, req: pb::RangeRequest, reply: RangeReply) {
        metrics().mvcc_range.inc();
        let args = RangeArgs::from(&req);
        let mut scan = match self.store.start_range(&args, self.store.current_rev()) {
            Ok(scan) => scan,
            Err(e) => {
                let _ = reply.send(Err(ReadError::Mvcc(e)));
                return;
            }
        };
        if self.store.range_step(&args, &mut scan, RANGE_STEP_KEYS) {
            self.answer_range(RangeJob { req, scan, reply });
        } else if self.ranges.len() >= RANGES_IN_STEPS_MAX {
            let _ = reply.send(Err(ReadError::Busy));
        } else {
            self.ranges.push_back(RangeJob { req, scan, reply });
        }
    }

    /// Answers a range that has been read. A large one (more than a step's
    /// keys: millions take hundreds of milliseconds to sort and copy into
    /// KeyValues) is finished on the executor's blocking thread, off the
    /// core raft runs on.
    fn answer_range(&self, job: RangeJob) {
        let RangeJob { req, scan, reply } = job;
        let header = self.header(scan.newest());
        let large = scan.kept() > RANGE_STEP_KEYS;
        let finish = move || {
            let mut resp = KvStore::finish_range(&RangeArgs::from(&req), scan);
            resp.header = Some(header);
            let _ = reply.send(Ok(resp));
        };
        // Past the bound the answer is built here, as before: a range is
        // never refused for it.
        if large && self.blocking_jobs.get() < BLOCKING_JOBS_MAX {
            self.run_blocking(finish);
        } else {
            finish();
        }
    }

    /// Reads every range under way to its end (the store is about to be
    /// replaced).
    fn finish_ranges(&mut self) {
        for mut job in std::mem::take(&mut self.ranges) {
            let args = RangeArgs::from(&job.req);
            while !self.store.range_step(&args, &mut job.scan, usize::MAX) {}
            self.answer_range(job);
        }
    }

    fn wait(&mut self, index: u64, w: Waiter) {
        self.waiting.entry(index).or_default().push(w);
        self.waiting_len += 1;
    }

    fn serve_waiting(&mut self) {
        let applied = self.applied_index();
        while let Some(entry) = self.waiting.first_entry() {
            if *entry.key() > applied {
                break;
            }
            for w in entry.remove() {
                self.waiting_len -= 1;
                match w {
                    Waiter::Range(req, reply) => self.range(req, reply),
                    Waiter::Applied(reply) => {
                        let _ = reply.send(());
                    }
                }
            }
        }
    }

    fn apply(&mut self, entries: Vec<ApplyEntry>) -> Result<Vec<AppliedResult>, String> {
        let mut out = Vec::with_capacity(entries.len());
        for e in entries {
            self.term = e.log_id.leader_id.term;
            let result = match e.payload {
                ApplyPayload::Blank => Vec::new(),
                ApplyPayload::Membership(m) => {
                    let before: Vec<u64> = self
                        .app
                        .membership
                        .membership()
                        .nodes()
                        .map(|(id, _)| *id)
                        .collect();
                    for id in &before {
                        if m.get_node(id).is_none() {
                            self.app.removed.insert(*id);
                            tracing::info!(removed_member_id = format!("{id:x}"), "removed member");
                        }
                    }
                    for (id, node) in m.nodes() {
                        if !before.contains(id) {
                            tracing::info!(
                                added_member_id = format!("{id:x}"),
                                name = %node.name,
                                peer_urls = %node.peer_urls.join(","),
                                learner = !m.voter_ids().any(|v| v == *id),
                                "added member"
                            );
                        }
                    }
                    self.app.membership = StoredMembership::new(Some(e.log_id), m);
                    if self.app.removed.contains(&self.ids.member_id) && !self.stopping {
                        // Stop, but only after the change's requester was
                        // answered: a leader that removed itself answers
                        // its client first, as etcd does.
                        self.stopping = true;
                        crate::stop_after_removal();
                    }
                    Vec::new()
                }
                ApplyPayload::Normal(batch) => {
                    let started = std::time::Instant::now();
                    // The bytes were validated when proposed and are covered
                    // by WAL checksums since; failing here means a bug or
                    // undetected corruption, and applying past it would make
                    // this member diverge. Stop instead.
                    let commands = keel_proto::batch::decode(&batch)
                        .map_err(|err| format!("entry {}: {err}", e.log_id.index))?;
                    let mut outcomes = Vec::with_capacity(commands.len());
                    for bytes in commands {
                        let cmd = Command::access(&bytes)
                            .map_err(|err| format!("entry {}: {err}", e.log_id.index))?;
                        // A deposed leader's decision, committed by a
                        // successor, changes nothing: the lease may have
                        // been kept alive through the successor.
                        let (cmd, inner) = (cmd, cmd.inner());
                        let superseded = cmd
                            .decided_in_term()
                            .is_some_and(|term| term != e.log_id.leader_id.term);
                        if matches!(inner, ArchivedCommand::Compact(_)) {
                            // Watchers get the revisions of this call so far
                            // before the compaction can remove them.
                            self.notify_watchers();
                        }
                        let mut outcome = if superseded {
                            self.store.unchanged()
                        } else if let ArchivedCommand::Alarm(a) = inner {
                            Ok(self.apply_alarm(
                                a.activate,
                                a.member_id.to_native(),
                                a.alarm.to_native(),
                            ))
                        } else if self.corrupt() {
                            // As etcd's corrupt applier: no write applies
                            // until the alarm is disarmed.
                            Err(MvccError::Corrupt)
                        } else if cmd.needs_space() && self.nospace() {
                            Err(MvccError::NoSpace)
                        } else {
                            // Values may share the entry's buffer only when
                            // they are most of it (a small key kept alive
                            // must not pin a whole batch).
                            let outcome = self.store.apply(cmd, &batch);
                            self.track_leases(inner, &outcome);
                            if let ArchivedCommand::Auth(a) = inner {
                                self.auth_applied(a, &outcome, e.log_id.index);
                            }
                            outcome
                        };
                        if let (ArchivedCommand::Compact(_), Ok(_)) = (inner, &outcome) {
                            tracing::info!(
                                compact_revision = self.store.compact_rev(),
                                "store.index: compact"
                            );
                        }
                        if let Ok(resp) = &mut outcome {
                            count_ops(resp);
                            let h = header_of(resp);
                            *h = Some(self.header(h.as_ref().map_or(0, |h| h.revision)));
                        }
                        outcomes.push(outcome);
                    }
                    let took = started.elapsed();
                    // keel's "backend commit": the entry's requests applied
                    // to the store (its durability is the WAL's fsync).
                    metrics().backend_commit_seconds.observe(took.as_secs_f64());
                    if took > self.timing.warn_apply_after {
                        metrics().slow_apply.inc();
                        tracing::warn!(
                            took = ?took,
                            expected_duration = ?self.timing.warn_apply_after,
                            index = e.log_id.index,
                            requests = outcomes.len(),
                            "apply request took too long"
                        );
                    }
                    outcomes
                }
            };
            self.app.applied = Some(e.log_id);
            out.push(result);
        }
        metrics().proposals_applied.set(self.applied_index() as i64);
        Ok(out)
    }

    /// What an applied auth request changes beyond the store: the copy
    /// every core checks against, and this member's tokens.
    fn auth_applied(&mut self, cmd: &ArchivedAuthCmd, outcome: &ApplyOutcome, index: u64) {
        let Ok(CommandResponse::Auth { answer, .. }) = outcome else {
            return;
        };
        match (cmd, answer) {
            (_, AuthAnswer::Authenticated { name, token_prefix }) => {
                self.auth
                    .assign(format!("{token_prefix}.{index}"), name.clone());
                return;
            }
            (ArchivedAuthCmd::UserDelete { name }, _)
            | (ArchivedAuthCmd::UserChangePassword { name, .. }, _) => {
                self.auth.invalidate_user(name);
            }
            _ => {}
        }
        let published = self.auth.store();
        if published.revision() != self.store.auth().revision()
            || published.enabled() != self.store.auth().enabled()
        {
            self.auth.publish(self.store.auth());
        }
    }

    fn nospace(&self) -> bool {
        self.app.alarms.iter().any(|(_, a)| *a == ALARM_NOSPACE)
    }

    fn corrupt(&self) -> bool {
        self.app.alarms.iter().any(|(_, a)| *a == ALARM_CORRUPT)
    }

    /// etcd's alarm store: raising an alarm answers it (also when it was
    /// raised already), clearing answers the alarm cleared, if it was.
    fn apply_alarm(&mut self, activate: bool, member_id: u64, alarm: i32) -> CommandResponse {
        let changed = if activate {
            self.app.alarms.insert((member_id, alarm))
        } else {
            self.app.alarms.remove(&(member_id, alarm))
        };
        if changed {
            tracing::warn!(
                member = format!("{member_id:x}"),
                alarm = alarm_name(alarm),
                "{}",
                if activate {
                    "alarm raised"
                } else {
                    "alarm cleared"
                }
            );
        }
        let present = activate || changed;
        CommandResponse::Alarm(pb::AlarmResponse {
            header: Some(self.header(self.store.current_rev())),
            alarms: if present {
                vec![pb::AlarmMember { member_id, alarm }]
            } else {
                Vec::new()
            },
        })
    }

    /// Keeps the lease clock in step with applied grants and revokes.
    fn track_leases(&mut self, cmd: &ArchivedCommand, outcome: &keel_storage::mvcc::ApplyOutcome) {
        match (cmd, outcome) {
            (ArchivedCommand::LeaseGrant(_), Ok(CommandResponse::LeaseGrant(g))) => {
                self.lease_clock.granted(g.id, g.ttl, Instant::now())
            }
            (ArchivedCommand::LeaseRevoke(r), _) => self.lease_clock.revoked(r.id.to_native()),
            (ArchivedCommand::LeaseExpire(r), _) => self.lease_clock.revoked(r.id.to_native()),
            _ => {}
        }
    }

    fn update_gauges(&self) {
        self.space
            .size_bytes
            .store(self.store.size_bytes(), Ordering::Relaxed);
        self.space.nospace.store(self.nospace(), Ordering::Relaxed);
        let m = metrics();
        m.mvcc_keys.set(self.store.live_keys() as i64);
        m.mvcc_db_size.set(self.store.size_bytes() as i64);
        m.mvcc_db_size_in_use.set(self.store.size_bytes() as i64);
        m.mvcc_current_revision.set(self.store.current_rev());
        m.mvcc_compact_revision.set(self.store.compact_rev());
        m.proposals_applied.set(self.applied_index() as i64);
    }
}

/// etcd's name for an alarm type ("NOSPACE", "CORRUPT").
pub fn alarm_name(alarm: i32) -> &'static str {
    pb::AlarmType::try_from(alarm).map_or("UNKNOWN", |a| a.as_str_name())
}

/// Stamps `member_id` on a response applied elsewhere (a forwarded write
/// answers with the header of the member the client asked).
pub fn set_member_id(r: &mut CommandResponse, member_id: u64) {
    if let Some(h) = header_of(r) {
        h.member_id = member_id;
    }
}

fn header_of(r: &mut CommandResponse) -> &mut Option<pb::ResponseHeader> {
    match r {
        CommandResponse::Put(r) => &mut r.header,
        CommandResponse::DeleteRange(r) => &mut r.header,
        CommandResponse::Txn(r) => &mut r.header,
        CommandResponse::Compact(r) => &mut r.header,
        CommandResponse::LeaseGrant(r) => &mut r.header,
        CommandResponse::LeaseRevoke(r) => &mut r.header,
        CommandResponse::LeaseCheckpoint(r) => &mut r.header,
        CommandResponse::Alarm(r) => &mut r.header,
        CommandResponse::Auth { header, .. } => header,
    }
}

/// Counts executed operations the way etcd's mvcc counters do: every put,
/// range and delete, also inside txns, plus one per txn.
fn count_ops(r: &CommandResponse) {
    fn txn(t: &pb::TxnResponse) {
        use pb::response_op::Response;
        let m = metrics();
        m.mvcc_txn.inc();
        for op in &t.responses {
            match &op.response {
                Some(Response::ResponsePut(_)) => m.mvcc_put.inc(),
                Some(Response::ResponseRange(_)) => m.mvcc_range.inc(),
                Some(Response::ResponseDeleteRange(_)) => m.mvcc_delete.inc(),
                Some(Response::ResponseTxn(t)) => txn(t),
                None => {}
            }
        }
    }
    match r {
        CommandResponse::Put(_) => metrics().mvcc_put.inc(),
        CommandResponse::DeleteRange(_) => metrics().mvcc_delete.inc(),
        CommandResponse::Txn(t) => txn(t),
        CommandResponse::Compact(_)
        | CommandResponse::LeaseCheckpoint(_)
        | CommandResponse::Alarm(_)
        | CommandResponse::Auth { .. } => {}
        CommandResponse::LeaseGrant(_) => metrics().lease_granted.inc(),
        CommandResponse::LeaseRevoke(_) => metrics().lease_revoked.inc(),
    }
}

#[cfg(test)]
mod tests {
    use keel_proto::command::{CompactCmd, PutCmd};

    use super::*;

    fn put(key: &str, value: &str) -> Bytes {
        Bytes::from_owner(
            Command::Put(PutCmd {
                key: key.into(),
                value: value.into(),
                ..Default::default()
            })
            .to_bytes(),
        )
    }

    /// An actor over an empty store, and what it would propose to raft.
    fn empty_actor() -> (MvccActor, mpsc::Receiver<RaftRequest>) {
        let (raft, raft_rx) = mpsc::channel(8);
        let timing = MvccTiming {
            progress_every: Duration::from_secs(600),
            lease_checkpoint_every: Duration::from_secs(300),
            warn_apply_after: Duration::from_millis(100),
        };
        let restored = Restored {
            store: KvStore::default(),
            app: SnapshotApp::default(),
        };
        let space = Arc::new(SpaceGauge::default());
        let auth = Arc::new(AuthShared::new(crate::auth::TOKEN_TTL_DEFAULT, None));
        let actor = MvccActor::new(restored, HeaderIds::default(), timing, raft, space, auth);
        (actor, raft_rx)
    }

    fn entry(index: u64, commands: &[Bytes]) -> ApplyEntry {
        ApplyEntry {
            log_id: openraft::LogId::new(openraft::CommittedLeaderId::new(1, 1), index),
            payload: ApplyPayload::Normal(keel_proto::batch::encode(commands)),
        }
    }

    /// Story: the actor's loop never yielded while its inbox held messages,
    /// so a burst of requests kept raft and the WAL writer, which share its
    /// core, waiting until the whole inbox was served.
    #[test]
    fn a_full_inbox_does_not_hold_the_core() {
        let ex = glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
            .io_memory(1 << 20)
            .make()
            .expect("executor");
        ex.run(async {
            let (actor, _raft_rx) = empty_actor();
            let (tx, rx) = mpsc::channel(4096);
            let mut replies = Vec::new();
            for _ in 0..4000 {
                let (reply, answered) = oneshot::channel();
                assert!(tx.try_send(MvccMsg::Status { reply }).is_ok());
                replies.push(answered);
            }
            let actor = glommio::spawn_local(actor.run(rx));
            let probe = glommio::spawn_local(async move {
                let mut answered = 0;
                for r in &mut replies {
                    if r.try_recv().is_ok() {
                        answered += 1;
                    }
                }
                answered
            });
            let answered_before_probe = probe.await;
            drop(tx);
            actor.await;
            assert!(
                answered_before_probe <= MESSAGES_PER_TURN,
                "{answered_before_probe} messages before another task ran"
            );
        });
    }

    /// Story: a range over every key built its whole answer in one go,
    /// holding the core (and raft beside it) for as long as that took. A
    /// large range is now read in steps with applies between them, answers
    /// as of the revision it started at, and its answer (sorting, copying
    /// into KeyValues) is built on the executor's blocking thread.
    #[test]
    fn a_large_range_lets_the_log_be_applied_meanwhile() {
        let ex = glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
            .io_memory(1 << 20)
            .make()
            .expect("executor");
        ex.run(async {
            let (mut actor, _raft_rx) = empty_actor();
            let n = 3 * RANGE_STEP_KEYS;
            let puts: Vec<Bytes> = (0..n).map(|i| put(&format!("k{i:06}"), "old")).collect();
            let (reply, _applied) = oneshot::channel();
            actor.handle(MvccMsg::Apply {
                entries: vec![entry(1, &puts)],
                reply,
            });
            let (reply, mut answer) = oneshot::channel();
            actor.handle(MvccMsg::Range {
                req: pb::RangeRequest {
                    key: Bytes::from_static(b"k"),
                    range_end: Bytes::from_static(b"l"),
                    ..Default::default()
                },
                min_applied: 0,
                reply,
            });
            assert!(answer.try_recv().is_err(), "answered in one step");
            let compact = Bytes::from_owner(
                Command::Compact(CompactCmd {
                    revision: 3,
                    physical: false,
                })
                .to_bytes(),
            );
            let last = format!("k{:06}", n - 1);
            let (reply, mut applied) = oneshot::channel();
            actor.handle(MvccMsg::Apply {
                entries: vec![entry(2, &[put(&last, "new"), compact])],
                reply,
            });
            assert!(applied.try_recv().is_ok(), "the apply waited for the range");
            let mut steps = 0;
            while actor.has_background_work() {
                actor.background_step();
                steps += 1;
            }
            assert!(steps > 2, "{steps} steps");
            // Handed to the blocking thread: counted until its task runs
            // again, which it cannot before this task yields. (Whether the
            // answer has arrived yet is a race with that thread: glommio
            // polls a spawned task once at once, so the job may be done.)
            assert_eq!(
                actor.blocking_jobs.get(),
                1,
                "a large range's answer was built on the actor's core"
            );
            let resp = glommio::timer::timeout(Duration::from_secs(10), async { Ok(answer.await) })
                .await
                .expect("the answer within 10 s")
                .unwrap()
                .unwrap();
            assert_eq!(resp.count, n as i64);
            assert_eq!(resp.kvs.len(), n);
            assert_eq!(resp.kvs[n - 1].value, "old".as_bytes());
            assert_eq!(resp.header.unwrap().revision, n as i64 + 1);
        });
    }

    /// Review finding: every HashKV and every large range answer went to
    /// the blocking thread with no bound. Past `BLOCKING_JOBS_MAX` queued
    /// jobs a hash is refused as busy.
    #[test]
    fn hashes_queued_off_the_core_are_bounded() {
        let ex = glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
            .io_memory(1 << 20)
            .make()
            .expect("executor");
        ex.run(async {
            let (mut actor, _raft_rx) = empty_actor();
            actor.blocking_jobs.set(BLOCKING_JOBS_MAX);
            let (reply, mut answer) = oneshot::channel();
            actor.handle(MvccMsg::HashKv { revision: 0, reply });
            assert!(matches!(answer.try_recv(), Ok(Err(ReadError::Busy))));
            actor.blocking_jobs.set(0);
            let (reply, answer) = oneshot::channel();
            actor.handle(MvccMsg::HashKv { revision: 0, reply });
            assert_eq!(actor.blocking_jobs.get(), 1);
            let resp = answer.await.unwrap().unwrap();
            assert_eq!(resp.hash, 1_084_519_789, "the empty store's hash");
            glommio::yield_if_needed().await;
        });
    }

    /// Story: values were kept as slices of their command when they were
    /// most of it, but a command is a slice of its entry's batch, so one
    /// live key of a few KiB pinned a batch of up to 1.5 MiB in memory.
    #[test]
    fn a_value_does_not_pin_its_batch() {
        let (mut actor, _raft_rx) = empty_actor();
        let value = "v".repeat(1000);
        let (reply, _applied) = oneshot::channel();
        let commands = [put("a", &value), put("b", &value), put("c", &value)];
        let e = entry(1, &commands);
        let ApplyPayload::Normal(batch) = &e.payload else {
            unreachable!()
        };
        let range = batch.as_ptr() as usize..batch.as_ptr() as usize + batch.len();
        actor.handle(MvccMsg::Apply {
            entries: vec![e],
            reply,
        });
        let kept = actor.store.index().get(b"b", 3).expect("b").value.clone();
        assert_eq!(kept, value.as_bytes());
        assert!(
            !range.contains(&(kept.as_ptr() as usize)),
            "the value still points into its batch"
        );
    }

    /// Story: a follower that learned the commit index late applied writes
    /// and a compaction in one call; the hub was told only afterwards, when
    /// the compaction had removed the overwritten versions, and synced
    /// watchers skipped them without being canceled.
    #[test]
    fn watchers_see_the_revisions_a_compaction_in_the_same_apply_removes() {
        let (mut actor, _raft_rx) = empty_actor();
        let (tx, mut rx) = mpsc::channel(16);
        actor.handle(MvccMsg::Watch(WatchMsg::Open {
            stream: 1,
            tx,
            max_bytes: 1 << 20,
        }));
        actor.handle(MvccMsg::Watch(WatchMsg::Create {
            stream: 1,
            spec: WatchSpec {
                key: Bytes::from_static(b"k"),
                ..Default::default()
            },
        }));
        let compact = Bytes::from_owner(
            Command::Compact(CompactCmd {
                revision: 4,
                physical: false,
            })
            .to_bytes(),
        );
        let (reply, mut applied) = oneshot::channel();
        actor.handle(MvccMsg::Apply {
            entries: vec![
                entry(1, &[put("k", "a"), put("k", "b")]),
                entry(2, &[put("k", "c"), compact]),
            ],
            reply,
        });
        let outcomes = applied.try_recv().unwrap().unwrap();
        assert!(outcomes[1][1].is_ok(), "{:?}", outcomes[1][1]);
        let mut revs = Vec::new();
        while let Ok(r) = rx.try_recv() {
            assert!(!r.canceled, "{r:?}");
            revs.extend(r.events.iter().map(|e| e.kv.as_ref().unwrap().mod_revision));
        }
        // The first write is revision 2, as in etcd.
        assert_eq!(revs, vec![2, 3, 4]);
    }
}
