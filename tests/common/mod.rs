//! Test harness: runs the real `keel` binary on free loopback ports with a
//! temporary data directory, and stops it (by its PID) when dropped.
//! Every wait is bounded.

#![allow(dead_code)]

pub mod proxy;

use std::io::{ErrorKind, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long a server may take to become healthy.
pub const START_TIMEOUT: Duration = Duration::from_secs(30);

/// Ports handed out in this process: the OS may return a just-released
/// port again, and two members (or a member and a peer proxy) given one
/// port ran into each other.
static GIVEN_PORTS: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());

/// Ports the harness hands out: below Linux's default ephemeral range
/// (32768-60999), so no outgoing connection (a client's, a peer's) takes
/// one between the harness finding it free and a server binding it.
const TEST_PORTS: std::ops::Range<u16> = 12000..32000;

/// A listener on a port never handed out before in this process.
pub fn fresh_listener() -> TcpListener {
    use rand::Rng;
    let mut rng = rand::thread_rng();
    for _ in 0..1000 {
        let port = rng.gen_range(TEST_PORTS);
        let mut given = GIVEN_PORTS.lock().unwrap();
        if given.contains(&port) {
            continue;
        }
        if let Ok(listener) = TcpListener::bind(("127.0.0.1", port)) {
            given.push(port);
            return listener;
        }
    }
    panic!("no unused port in 1000 tries");
}

/// A port nothing listens on now, and never handed out before in this
/// process, for a server to bind (the harness's own listeners use
/// [`fresh_listener`]).
pub fn free_port() -> u16 {
    fresh_listener().local_addr().unwrap().port()
}

/// Names another server binary to run instead of keel: an older keel, or
/// etcd (the flags the harness sets are etcd's).
pub const BINARY_VAR: &str = "KEEL_ROBUSTNESS_BINARY";

/// The binary `Server` runs: keel unless `BINARY_VAR` says otherwise.
pub fn server_binary() -> PathBuf {
    std::env::var_os(BINARY_VAR)
        .map_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_keel")), PathBuf::from)
}

pub struct Server {
    pub port: u16,
    pub peer_port: u16,
    pub dir: PathBuf,
    _tmp: Option<tempfile::TempDir>,
    pub args: Vec<String>,
    child: Option<Child>,
    pub log: PathBuf,
    /// How many times the log said "ready" before the last spawn.
    readies_before_spawn: usize,
    /// The open-file limit (soft and hard) the server starts under.
    pub open_files: Option<u64>,
    /// Environment variables the server starts with.
    pub env: Vec<(String, String)>,
    /// A command (and its arguments) that runs the server binary, which
    /// it is given after them with the server's arguments and execs.
    pub wrapper: Vec<String>,
}

/// What keel logs once it serves clients.
const READY: &str = "ready to serve client requests";

/// A plain HTTP/1.1 GET; returns (status, body).
pub fn http_get(port: u16, path: &str) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    let status = out
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = out
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((status, body))
}

impl Server {
    /// Starts a server with extra flags and waits until it is healthy.
    pub fn start(extra: &[&str]) -> Server {
        let mut s = Server::new(extra.iter().map(|s| s.to_string()).collect());
        s.spawn();
        s.wait_healthy();
        s
    }

    /// A server on fresh ports and a fresh data dir, not started yet.
    pub fn new(args: Vec<String>) -> Server {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("data");
        let log = tmp.path().join("keel.log");
        Server {
            port: free_port(),
            peer_port: free_port(),
            dir,
            _tmp: Some(tmp),
            args,
            child: None,
            log,
            readies_before_spawn: 0,
            open_files: None,
            env: Vec::new(),
            wrapper: Vec::new(),
        }
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn peer_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.peer_port)
    }

    fn command(&self) -> Command {
        let mut c = match self.wrapper.split_first() {
            Some((program, args)) => {
                let mut c = Command::new(program);
                c.args(args).arg(server_binary());
                c
            }
            None => Command::new(server_binary()),
        };
        if std::env::var_os(BINARY_VAR).is_some() {
            // etcd refuses --listen-client-urls without it; keel takes it too.
            c.arg("--advertise-client-urls").arg(self.endpoint());
        }
        c.arg("--data-dir").arg(&self.dir);
        // A test may give its own listen URLs (https ones); `port` and
        // `peer_port` stay among them.
        if !self.args.iter().any(|a| a == "--listen-client-urls") {
            c.arg("--listen-client-urls").arg(self.endpoint());
        }
        if !self.args.iter().any(|a| a == "--listen-peer-urls") {
            c.arg("--listen-peer-urls").arg(self.peer_url());
        }
        if !self
            .args
            .iter()
            .any(|a| a == "--initial-advertise-peer-urls")
        {
            c.arg("--initial-advertise-peer-urls").arg(self.peer_url());
        }
        c.args(&self.args).stdin(Stdio::null());
        c.envs(self.env.iter().map(|(k, v)| (k, v)));
        if let Some(n) = self.open_files {
            use std::os::unix::process::CommandExt;
            let limit = libc::rlimit {
                rlim_cur: n,
                rlim_max: n,
            };
            // SAFETY: only setrlimit, async-signal-safe, runs in the child.
            unsafe {
                c.pre_exec(move || {
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        // The members log at their default level unless a test run asks
        // for more with KEEL_TEST_RUST_LOG (a RUST_LOG filter).
        match std::env::var_os("KEEL_TEST_RUST_LOG") {
            Some(filter) => c.env("RUST_LOG", filter),
            None => c.env_remove("RUST_LOG"),
        };
        c
    }

    pub fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        self.readies_before_spawn = self.logs().matches(READY).count();
        let child = self
            .command()
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("spawning keel");
        self.child = Some(child);
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn wait_healthy(&mut self) {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            match http_get(self.port, "/health") {
                Ok((200, body)) if body.contains("true") => return,
                // Once it serves, /health answers within 1 s even without a
                // leader; a connection taken and left unanswered then is a
                // stalled reactor. Before, the kernel queues connections
                // while recovery and joining the cluster run.
                Err(e)
                    if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut)
                        && self.logs().matches(READY).count() > self.readies_before_spawn =>
                {
                    panic!(
                        "keel took a connection but did not answer /health: {e}\n{}",
                        self.logs()
                    )
                }
                _ => {}
            }
            self.still_starting(deadline, "healthy");
        }
    }

    /// Panics if the server exited or `deadline` passed (it is not yet
    /// `what`); otherwise waits a moment before the next look.
    fn still_starting(&mut self, deadline: Instant, what: &str) {
        if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().unwrap()) {
            panic!(
                "keel exited with {status} during start-up:\n{}",
                self.logs()
            );
        }
        assert!(
            Instant::now() < deadline,
            "keel not {what} within {START_TIMEOUT:?}:\n{}",
            self.logs()
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    /// Waits until the server serves clients, healthy or not (a raised
    /// alarm makes /health false): it logged "ready" and answers /health.
    pub fn wait_serving(&mut self) {
        let deadline = Instant::now() + START_TIMEOUT;
        while self.logs().matches(READY).count() <= self.readies_before_spawn
            || http_get(self.port, "/health").is_err()
        {
            self.still_starting(deadline, "serving");
        }
    }

    /// SIGKILL: no shutdown code runs.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// The running child's process id.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// SIGSTOP: the process stays alive (sockets open) but does nothing
    /// until `resume`; a paused member looks like a very slow one.
    pub fn pause(&self) {
        self.signal(libc::SIGSTOP);
    }

    /// SIGCONT after `pause`.
    pub fn resume(&self) {
        self.signal(libc::SIGCONT);
    }

    fn signal(&self, signal: libc::c_int) {
        if let Some(pid) = self.pid().and_then(|p| libc::pid_t::try_from(p).ok()) {
            // SAFETY: kill(2) has no memory effects; the pid is our own child.
            unsafe {
                libc::kill(pid, signal);
            }
        }
    }

    /// SIGTERM, then waits (bounded by `limit`) for the process to exit;
    /// returns its exit code (None if it did not exit in time or died of a
    /// signal).
    pub fn terminate(&mut self, limit: Duration) -> Option<i32> {
        self.signal(libc::SIGTERM);
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().unwrap()) {
                self.child = None;
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        None
    }

    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| c.try_wait().unwrap().is_none())
    }

    pub fn restart(&mut self) {
        self.kill9();
        self.spawn();
        self.wait_healthy();
    }

    /// Starts the binary on this data dir and expects it to exit within a
    /// bounded time; returns (exit code, combined output).
    pub fn start_expect_exit(&mut self) -> (Option<i32>, String) {
        self.kill9();
        run_to_exit(self.command(), Duration::from_secs(30))
    }

    pub fn wal_dir(&self) -> PathBuf {
        self.dir.join("member").join("wal")
    }

    pub async fn client(&self) -> etcd_client::Client {
        etcd_client::Client::connect([self.endpoint()], None)
            .await
            .expect("connect")
    }
}

/// The ids of the leases a member lists, sorted.
pub async fn lease_ids(c: &mut etcd_client::Client) -> Vec<i64> {
    let mut ids: Vec<i64> = c
        .leases()
        .await
        .unwrap()
        .leases()
        .iter()
        .map(|l| l.id())
        .collect();
    ids.sort();
    ids
}

/// Runs a command that should exit by itself; kills it after `limit`.
pub fn run_to_exit(mut cmd: Command, limit: Duration) -> (Option<i32>, String) {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let mut out = String::new();
            child
                .stdout
                .take()
                .unwrap()
                .read_to_string(&mut out)
                .unwrap();
            child
                .stderr
                .take()
                .unwrap()
                .read_to_string(&mut out)
                .unwrap();
            return (status.code(), out);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return (None, "did not exit in time".into());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Newest WAL segment holding data (the last file, by name).
pub fn segments(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "wal"))
        .collect();
    v.sort();
    v
}

/// The alarms raised (member id, type), as `etcdctl alarm list` shows them.
pub async fn alarms(c: &mut etcd_client::Client) -> Vec<(u64, etcd_client::AlarmType)> {
    let r = c
        .alarm(
            etcd_client::AlarmAction::Get,
            etcd_client::AlarmType::None,
            None,
        )
        .await
        .unwrap();
    r.alarms()
        .iter()
        .map(|a| (a.member_id(), a.alarm()))
        .collect()
}

/// The gRPC status code and message of an etcd-client error.
pub fn status_of(e: etcd_client::Error) -> (tonic::Code, String) {
    match e {
        etcd_client::Error::GRpcStatus(s) => (s.code(), s.message().to_string()),
        other => panic!("expected a gRPC status, got {other:?}"),
    }
}

/// A cluster of real keel processes on loopback, bootstrapped with
/// `--initial-cluster`. Members are named m0, m1, ...
pub struct Cluster {
    pub members: Vec<Server>,
    /// With `start_proxied`: the proxies in front of each member's peer port.
    proxies: Vec<proxy::PeerProxy>,
    ids: Vec<std::sync::Arc<std::sync::Mutex<u64>>>,
    partition: std::sync::Arc<proxy::Partition>,
}

impl Cluster {
    /// Starts `n` members with `extra` flags each and waits until all serve.
    pub fn start(n: usize, extra: &[&str]) -> Cluster {
        Cluster::launch(n, extra, false)
    }

    /// As `start`, with a fault-injecting proxy in every peer path (see
    /// `cut` and `heal`).
    pub async fn start_proxied(n: usize, extra: &[&str]) -> Cluster {
        let c = Cluster::launch(n, extra, true);
        for i in 0..n {
            let ep = c.members[i].endpoint();
            let mut client = etcd_client::Client::connect([ep], None).await.unwrap();
            let id = client.status().await.unwrap().header().unwrap().member_id();
            *c.ids[i].lock().unwrap() = id;
        }
        c
    }

    fn launch(n: usize, extra: &[&str], proxied: bool) -> Cluster {
        let mut members: Vec<Server> = (0..n).map(|_| Server::new(Vec::new())).collect();
        let partition = std::sync::Arc::new(proxy::Partition::default());
        let ids: Vec<_> = (0..n).map(|_| std::sync::Arc::default()).collect();
        let proxies: Vec<proxy::PeerProxy> = if proxied {
            members
                .iter()
                .zip(&ids)
                .map(|(m, id)| {
                    proxy::PeerProxy::start(
                        m.peer_port,
                        std::sync::Arc::clone(id),
                        partition.clone(),
                    )
                })
                .collect()
        } else {
            Vec::new()
        };
        let advertised: Vec<String> = members
            .iter()
            .enumerate()
            .map(|(i, m)| match proxies.get(i) {
                Some(p) => format!("http://127.0.0.1:{}", p.port),
                None => m.peer_url(),
            })
            .collect();
        let initial: Vec<String> = advertised
            .iter()
            .enumerate()
            .map(|(i, url)| format!("m{i}={url}"))
            .collect();
        let initial = initial.join(",");
        for (i, m) in members.iter_mut().enumerate() {
            let mut args = vec![
                "--name".to_string(),
                format!("m{i}"),
                "--initial-cluster".to_string(),
                initial.clone(),
                "--initial-cluster-token".to_string(),
                "keel-test".to_string(),
                "--initial-advertise-peer-urls".to_string(),
                advertised[i].clone(),
            ];
            args.extend(extra.iter().map(|s| s.to_string()));
            m.args = args;
            m.spawn();
        }
        for m in &mut members {
            m.wait_healthy();
        }
        Cluster {
            members,
            proxies,
            ids,
            partition,
        }
    }

    /// Cuts member `i` off from every peer (needs `start_proxied`).
    pub fn cut(&self, i: usize) {
        assert!(!self.proxies.is_empty(), "cut needs start_proxied");
        let id = *self.ids[i].lock().unwrap();
        self.partition.cut(id);
    }

    /// Cuts every connection to member `i` while it still reaches the
    /// others (needs `start_proxied`).
    pub fn cut_inbound(&self, i: usize) {
        assert!(!self.proxies.is_empty(), "cut_inbound needs start_proxied");
        let id = *self.ids[i].lock().unwrap();
        self.partition.cut_inbound(id);
    }

    /// Slows every peer connection to member `i` down to `bytes_per_sec`
    /// towards it, until `heal` (needs `start_proxied`).
    pub fn throttle_inbound(&self, i: usize, bytes_per_sec: u64) {
        assert!(
            !self.proxies.is_empty(),
            "throttle_inbound needs start_proxied"
        );
        let id = *self.ids[i].lock().unwrap();
        self.partition.throttle_inbound(id, bytes_per_sec);
    }

    pub fn heal(&self) {
        self.partition.heal();
    }

    pub fn endpoints(&self) -> Vec<String> {
        self.members.iter().map(|m| m.endpoint()).collect()
    }

    /// A member to join the running cluster (after `member add`) as
    /// `m<index>`; not started. Also appended to `members`.
    pub fn prepare_joiner(&mut self, extra: &[&str]) -> usize {
        let index = self.members.len();
        let mut joiner = Server::new(Vec::new());
        let mut initial: Vec<String> = self
            .members
            .iter()
            .enumerate()
            .map(|(i, m)| format!("m{i}={}", m.peer_url()))
            .collect();
        initial.push(format!("m{index}={}", joiner.peer_url()));
        let mut args = vec![
            "--name".to_string(),
            format!("m{index}"),
            "--initial-cluster".to_string(),
            initial.join(","),
            "--initial-cluster-state".to_string(),
            "existing".to_string(),
            "--initial-cluster-token".to_string(),
            "keel-test".to_string(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        joiner.args = args;
        self.members.push(joiner);
        index
    }

    /// The member every running member names as leader, asked with Status.
    pub async fn leader(&mut self) -> usize {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let mut seen = Vec::new();
            for i in 0..self.members.len() {
                if !self.members[i].is_running() {
                    continue;
                }
                let ep = self.members[i].endpoint();
                let Ok(mut c) = etcd_client::Client::connect([ep.clone()], None).await else {
                    continue;
                };
                if let Ok(s) = c.status().await {
                    seen.push((i, s.header().unwrap().member_id(), s.leader()));
                }
            }
            let leaders: Vec<u64> = seen.iter().map(|s| s.2).collect();
            if !leaders.is_empty() && leaders[0] != 0 && leaders.iter().all(|l| *l == leaders[0]) {
                if let Some((i, _, _)) = seen.iter().find(|s| s.1 == leaders[0]) {
                    return *i;
                }
            }
            assert!(Instant::now() < deadline, "no agreed leader: {seen:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}
