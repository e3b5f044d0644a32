//! Clients that run the workload and record every operation, and watchers
//! that record every event. A client error is data here: it becomes the
//! op's outcome, never a panic. Every call has a deadline and every loop a
//! bound in count and time, so a run ends even if the cluster does not
//! answer.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, EventType, GetOptions, Txn, TxnOp, TxnOpResponse,
    WatchOptions,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::history::{
    nanos_since, Event, EventKind, Kv, Op, Outcome, Request, Response, WatchRecord,
};

/// What the clients do and for how long.
#[derive(Debug, Clone)]
pub struct Workload {
    pub endpoints: Vec<String>,
    /// Keys are `<prefix>k0..k<keys-1>`.
    pub prefix: String,
    pub keys: usize,
    /// Deadline of every client call; past it the outcome is unknown.
    pub op_timeout: Duration,
    /// Upper bound on the ops of one client, whatever the duration.
    pub ops_per_client_max: usize,
}

/// A client bound to one member, so that a fault there hits it.
pub async fn connect(endpoint: &str) -> Option<Client> {
    let options = ConnectOptions::new()
        .with_connect_timeout(Duration::from_secs(1))
        .with_keep_alive(Duration::from_secs(1), Duration::from_secs(1));
    tokio::time::timeout(
        Duration::from_secs(2),
        Client::connect([endpoint.to_string()], Some(options)),
    )
    .await
    .ok()?
    .ok()
}

/// etcd answers these before proposing anything (request validation), so
/// only they mean "definitely not applied". Everything else may have been.
pub fn classify(e: etcd_client::Error) -> Outcome {
    use tonic::Code;
    match e {
        etcd_client::Error::GRpcStatus(s) => {
            let text = format!("{:?}: {}", s.code(), s.message());
            match s.code() {
                Code::InvalidArgument
                | Code::OutOfRange
                | Code::PermissionDenied
                | Code::Unauthenticated
                | Code::Unimplemented => Outcome::Failed(text),
                _ => Outcome::Unknown(text),
            }
        }
        etcd_client::Error::InvalidArgs(a) => Outcome::Failed(format!("invalid args: {a}")),
        other => Outcome::Unknown(other.to_string()),
    }
}

fn kv_of(kv: &etcd_client::KeyValue) -> Kv {
    Kv {
        key: String::from_utf8_lossy(kv.key()).into_owned(),
        value: String::from_utf8_lossy(kv.value()).into_owned(),
        create_rev: kv.create_revision(),
        mod_rev: kv.mod_revision(),
        version: kv.version(),
    }
}

/// A response without a header gets revision -1, which the checker reports.
fn rev_of(h: Option<&etcd_client::ResponseHeader>) -> i64 {
    h.map_or(-1, etcd_client::ResponseHeader::revision)
}

async fn execute(
    c: &mut Client,
    prefix: &str,
    req: &Request,
) -> Result<Response, etcd_client::Error> {
    Ok(match req {
        Request::Put { key, value } => {
            let r = c.put(key.as_str(), value.as_str(), None).await?;
            Response::Put {
                rev: rev_of(r.header()),
            }
        }
        Request::Get {
            key,
            prefix: whole,
            serializable,
        } => {
            let mut o = GetOptions::new();
            if *whole {
                o = o.with_prefix();
            }
            if *serializable {
                o = o.with_serializable();
            }
            let target = if *whole { prefix } else { key.as_str() };
            let r = c.get(target, Some(o)).await?;
            Response::Get {
                rev: rev_of(r.header()),
                kvs: r.kvs().iter().map(kv_of).collect(),
            }
        }
        Request::Cas {
            key,
            expected_mod_rev,
            value,
        } => {
            let txn = Txn::new()
                .when([Compare::mod_revision(
                    key.as_str(),
                    CompareOp::Equal,
                    *expected_mod_rev,
                )])
                .and_then([TxnOp::put(key.as_str(), value.as_str(), None)])
                .or_else([TxnOp::get(key.as_str(), None)]);
            let r = c.txn(txn).await?;
            let kvs = r
                .op_responses()
                .iter()
                .flat_map(|o| match o {
                    TxnOpResponse::Get(g) => g.kvs().iter().map(kv_of).collect(),
                    _ => Vec::new(),
                })
                .collect();
            Response::Cas {
                rev: rev_of(r.header()),
                succeeded: r.succeeded(),
                kvs,
            }
        }
        Request::Delete { key } => {
            let r = c.delete(key.as_str(), None).await?;
            Response::Delete {
                rev: rev_of(r.header()),
                deleted: r.deleted(),
            }
        }
    })
}

/// The next request: mostly writes and reads of one key, sometimes the
/// whole prefix; a CAS compares with the last mod revision this client saw.
fn next_request(
    rng: &mut StdRng,
    w: &Workload,
    client: usize,
    seq: usize,
    last_mod: &HashMap<String, i64>,
) -> Request {
    let key = format!("{}k{}", w.prefix, rng.gen_range(0..w.keys));
    let value = format!("c{client}-{seq}");
    let whole = rng.gen_bool(0.2);
    match rng.gen_range(0..100) {
        0..=29 => Request::Put { key, value },
        30..=49 => Request::Get {
            key: if whole { w.prefix.clone() } else { key },
            prefix: whole,
            serializable: false,
        },
        50..=61 => Request::Get {
            key: if whole { w.prefix.clone() } else { key },
            prefix: whole,
            serializable: true,
        },
        62..=84 => Request::Cas {
            expected_mod_rev: last_mod.get(&key).copied().unwrap_or(0),
            key,
            value,
        },
        _ => Request::Delete { key },
    }
}

/// Remembers what a response says about each key's mod revision.
fn learn(last_mod: &mut HashMap<String, i64>, req: &Request, r: &Response) {
    match (req, r) {
        (Request::Get { key, prefix, .. }, Response::Get { kvs, .. }) => {
            if !prefix && kvs.is_empty() {
                last_mod.insert(key.clone(), 0);
            }
            for kv in kvs {
                last_mod.insert(kv.key.clone(), kv.mod_rev);
            }
        }
        (Request::Put { key, .. }, Response::Put { rev })
        | (
            Request::Cas { key, .. },
            Response::Cas {
                succeeded: true,
                rev,
                ..
            },
        ) => {
            last_mod.insert(key.clone(), *rev);
        }
        (Request::Cas { key, .. }, Response::Cas { kvs, .. }) => {
            last_mod.insert(key.clone(), kvs.first().map_or(0, |kv| kv.mod_rev));
        }
        (Request::Delete { key }, Response::Delete { .. }) => {
            last_mod.insert(key.clone(), 0);
        }
        _ => {}
    }
}

/// One client: connected to member `client % members`; after an op with
/// an unknown outcome it moves to the next member (a real client would
/// fail over too). Runs until `deadline` or its op budget.
pub async fn run_client(
    w: Arc<Workload>,
    client: usize,
    seed: u64,
    start: Instant,
    deadline: Instant,
) -> Vec<Op> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut ops = Vec::new();
    let mut last_mod = HashMap::new();
    let members = w.endpoints.len();
    let mut member = client % members;
    let mut conn: Option<Client> = None;
    for seq in 0..w.ops_per_client_max {
        if Instant::now() >= deadline {
            break;
        }
        let Some(c) = conn.as_mut() else {
            conn = connect(&w.endpoints[member]).await;
            if conn.is_none() {
                member = (member + 1) % members;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            continue;
        };
        let request = next_request(&mut rng, &w, client, seq, &last_mod);
        let invoke = nanos_since(start);
        let result = tokio::time::timeout(w.op_timeout, execute(c, &w.prefix, &request)).await;
        let ret = nanos_since(start);
        let outcome = match result {
            Ok(Ok(r)) => {
                learn(&mut last_mod, &request, &r);
                Outcome::Ok(r)
            }
            Ok(Err(e)) => classify(e),
            Err(_) => Outcome::Unknown(format!("no answer within {:?}", w.op_timeout)),
        };
        let unknown = matches!(outcome, Outcome::Unknown(_));
        ops.push(Op {
            client,
            member,
            invoke,
            ret,
            request,
            outcome,
        });
        if unknown {
            conn = None;
            member = (member + 1) % members;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    ops
}

/// When a watcher may stop: once it has seen `target` (set after the load
/// ended and the revision settled), or at `deadline` in any case.
#[derive(Debug)]
pub struct WatchStop {
    pub target: AtomicI64,
    pub deadline: Instant,
}

impl WatchStop {
    fn reached(&self, seen: i64) -> bool {
        let target = self.target.load(Ordering::Relaxed);
        (target > 0 && seen >= target) || Instant::now() >= self.deadline
    }
}

/// A stream that delivered nothing for this long is reopened elsewhere:
/// its member may be paused or cut off.
const WATCH_IDLE: Duration = Duration::from_secs(2);

/// Upper bound on streams one watch opens.
const WATCH_REOPENS_MAX: usize = 1000;

/// Watches the workload prefix from `start_rev` on `member`; on a stream
/// error, cancel or silence, reopens on the next member from the revision
/// after the last one seen, so the record must still have no gap and no
/// duplicate.
pub async fn run_watch(
    w: Arc<Workload>,
    id: usize,
    start_rev: i64,
    mut member: usize,
    start: Instant,
    stop: Arc<WatchStop>,
) -> WatchRecord {
    let mut record = WatchRecord {
        id,
        prefix: w.prefix.clone(),
        start_rev,
        ..WatchRecord::default()
    };
    let mut next_rev = start_rev;
    let mut why = String::from("first stream");
    for _ in 0..WATCH_REOPENS_MAX {
        if stop.reached(next_rev - 1) {
            break;
        }
        record
            .reopens
            .push((nanos_since(start), member, next_rev, why.clone()));
        why = watch_stream(&w, member, &mut next_rev, &mut record.events, &stop).await;
        member = (member + 1) % w.endpoints.len();
        if !stop.reached(next_rev - 1) {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    record
}

/// One stream of a watch; returns why it ended.
async fn watch_stream(
    w: &Workload,
    member: usize,
    next_rev: &mut i64,
    events: &mut Vec<Event>,
    stop: &WatchStop,
) -> String {
    let Some(mut c) = connect(&w.endpoints[member]).await else {
        return format!("m{member}: connect failed");
    };
    let options = WatchOptions::new()
        .with_prefix()
        .with_start_revision(*next_rev);
    let opened =
        tokio::time::timeout(w.op_timeout, c.watch(w.prefix.as_str(), Some(options))).await;
    let (_watcher, mut stream) = match opened {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return format!("m{member}: open: {e}"),
        Err(_) => return format!("m{member}: open timed out"),
    };
    loop {
        if stop.reached(*next_rev - 1) {
            return "done".into();
        }
        let r = match tokio::time::timeout(WATCH_IDLE, stream.message()).await {
            Ok(Ok(Some(r))) => r,
            Ok(Ok(None)) => return format!("m{member}: stream ended"),
            Ok(Err(e)) => return format!("m{member}: {e}"),
            Err(_) => return format!("m{member}: silent for {WATCH_IDLE:?}"),
        };
        for e in r.events() {
            let Some(kv) = e.kv() else { continue };
            let kind = match e.event_type() {
                EventType::Put => EventKind::Put,
                EventType::Delete => EventKind::Delete,
            };
            let event = Event {
                kind,
                kv: kv_of(kv),
            };
            *next_rev = (*next_rev).max(event.rev() + 1);
            events.push(event);
        }
        if r.canceled() {
            return format!(
                "m{member}: canceled (compact {}): {}",
                r.compact_revision(),
                r.cancel_reason()
            );
        }
    }
}

/// The current revision, read linearizably through any member that answers.
pub async fn current_rev(endpoints: &[String], prefix: &str) -> Option<i64> {
    for ep in endpoints {
        let Some(mut c) = connect(ep).await else {
            continue;
        };
        let read = tokio::time::timeout(
            Duration::from_secs(3),
            c.get(
                prefix,
                Some(GetOptions::new().with_prefix().with_keys_only()),
            ),
        )
        .await;
        if let Ok(Ok(r)) = read {
            if let Some(h) = r.header() {
                return Some(h.revision());
            }
        }
    }
    None
}

/// Waits until the revision stops moving (a request whose client gave up
/// may still be applied for a few seconds), up to `limit`.
pub async fn settled_rev(endpoints: &[String], prefix: &str, limit: Duration) -> Option<i64> {
    let deadline = Instant::now() + limit;
    let mut last = None;
    while Instant::now() < deadline {
        let now = current_rev(endpoints, prefix).await;
        if now.is_some() && now == last {
            return now;
        }
        last = now;
        tokio::time::sleep(Duration::from_millis(1000)).await;
    }
    last
}

/// A member's final state: a linearizable barrier on it (so it has applied
/// everything committed), then its local, serializable view.
pub async fn final_read(endpoint: &str, prefix: &str) -> Result<(i64, Vec<Kv>), String> {
    let mut c = connect(endpoint).await.ok_or("connect failed")?;
    let mut last_error = String::new();
    for _ in 0..10 {
        let barrier = tokio::time::timeout(
            Duration::from_secs(3),
            c.get(
                prefix,
                Some(GetOptions::new().with_prefix().with_keys_only()),
            ),
        )
        .await;
        match barrier {
            Ok(Ok(_)) => {
                let local = tokio::time::timeout(
                    Duration::from_secs(3),
                    c.get(
                        prefix,
                        Some(GetOptions::new().with_prefix().with_serializable()),
                    ),
                )
                .await;
                return match local {
                    Ok(Ok(r)) => Ok((rev_of(r.header()), r.kvs().iter().map(kv_of).collect())),
                    Ok(Err(e)) => Err(format!("serializable read: {e}")),
                    Err(_) => Err("serializable read timed out".into()),
                };
            }
            Ok(Err(e)) => last_error = format!("barrier: {e}"),
            Err(_) => last_error = "barrier timed out".into(),
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    Err(last_error)
}
