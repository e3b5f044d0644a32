//! `--discovery-srv`: members that find each other through DNS SRV records.
//!
//! The records come from a small DNS server this test runs on a loopback
//! address's port 53. Each member runs in a mount namespace of its own
//! (`unshare -m`) where `/etc/resolv.conf` names that server, so keel's
//! SRV lookups and the system resolver's address lookups both reach it.

mod common;

use std::collections::HashMap;
use std::net::{Ipv4Addr, UdpSocket};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{run_to_exit, Server};

const DOMAIN: &str = "keel.test";
const FAST: &[&str] = &["--heartbeat-interval", "50", "--election-timeout", "500"];

#[derive(Clone)]
enum Record {
    Srv { port: u16, target: String },
    A(Ipv4Addr),
}

/// Answers A and SRV questions from `records` (by lower-case name); any
/// other name is NXDOMAIN, any other type an empty answer.
struct DnsServer {
    ip: Ipv4Addr,
    records: Arc<Mutex<HashMap<String, Vec<Record>>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

fn encode_name(out: &mut Vec<u8>, name: &str) {
    for label in name.trim_end_matches('.').split('.') {
        out.push(label.len() as u8);
        out.extend_from_slice(label.as_bytes());
    }
    out.push(0);
}

/// The reply to `query`, or `None` if it cannot be read.
fn answer(query: &[u8], records: &HashMap<String, Vec<Record>>) -> Option<Vec<u8>> {
    let mut at = 12;
    let mut labels = Vec::new();
    loop {
        let len = *query.get(at)? as usize;
        at += 1;
        if len == 0 {
            break;
        }
        labels.push(String::from_utf8_lossy(query.get(at..at + len)?).to_lowercase());
        at += len;
    }
    let qtype = u16::from_be_bytes([*query.get(at)?, *query.get(at + 1)?]);
    let question_end = at + 4;
    let found = records.get(&labels.join("."));
    let answers: Vec<&Record> = found
        .into_iter()
        .flatten()
        .filter(|r| matches!((r, qtype), (Record::Srv { .. }, 33) | (Record::A(_), 1)))
        .collect();
    let mut m = query.get(..question_end)?.to_vec();
    let rcode = if found.is_some() { 0 } else { 3 };
    m[2..4].copy_from_slice(&(0x8180u16 | rcode).to_be_bytes());
    m[6..8].copy_from_slice(&(answers.len() as u16).to_be_bytes());
    m[8..12].fill(0);
    for r in answers {
        m.extend_from_slice(&[0xC0, 12]);
        let mut rdata = Vec::new();
        let rtype: u16 = match r {
            Record::Srv { port, target } => {
                rdata.extend_from_slice(&[0, 0, 0, 0]);
                rdata.extend_from_slice(&port.to_be_bytes());
                encode_name(&mut rdata, target);
                33
            }
            Record::A(ip) => {
                rdata.extend_from_slice(&ip.octets());
                1
            }
        };
        m.extend_from_slice(&rtype.to_be_bytes());
        m.extend_from_slice(&1u16.to_be_bytes());
        m.extend_from_slice(&5u32.to_be_bytes());
        m.extend_from_slice(&(rdata.len() as u16).to_be_bytes());
        m.extend_from_slice(&rdata);
    }
    Some(m)
}

impl DnsServer {
    fn start() -> DnsServer {
        // Port 53 on a loopback address of its own (root may bind it).
        let mut socket = None;
        for i in 0..50u32 {
            let seed = std::process::id().wrapping_mul(31).wrapping_add(i * 7919);
            let ip = Ipv4Addr::new(
                127,
                53,
                (seed % 250) as u8 + 1,
                (seed / 250 % 250) as u8 + 1,
            );
            if let Ok(s) = UdpSocket::bind((ip, 53)) {
                socket = Some((s, ip));
                break;
            }
        }
        let (socket, ip) = socket.expect("no loopback address with port 53 free");
        socket
            .set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let records: Arc<Mutex<HashMap<String, Vec<Record>>>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (records, stop) = (records.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut buf = [0u8; 512];
                while !stop.load(Ordering::Relaxed) {
                    let Ok((n, from)) = socket.recv_from(&mut buf) else {
                        continue;
                    };
                    let reply = answer(&buf[..n], &records.lock().unwrap());
                    if let Some(reply) = reply {
                        let _ = socket.send_to(&reply, from);
                    }
                }
            })
        };
        DnsServer {
            ip,
            records,
            stop,
            thread: Some(thread),
        }
    }

    fn set(&self, name: &str, records: Vec<Record>) {
        self.records
            .lock()
            .unwrap()
            .insert(name.to_string(), records);
    }

    fn remove(&self, name: &str) {
        self.records.lock().unwrap().remove(name);
    }

    /// Runs a server in a mount namespace whose resolv.conf names this
    /// DNS server.
    fn wrap(&self, server: &mut Server, dir: &Path) {
        let conf = dir.join(format!("resolv.conf.{}", server.port));
        std::fs::write(&conf, format!("nameserver {}\n", self.ip)).unwrap();
        server.wrapper = [
            "unshare",
            "-m",
            "--propagation",
            "private",
            "sh",
            "-c",
            "mount --bind \"$0\" /etc/resolv.conf && exec \"$@\"",
        ]
        .iter()
        .map(|s| s.to_string())
        .chain([conf.display().to_string()])
        .collect();
    }
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_found_through_srv_records_form_a_cluster() {
    let dns = DnsServer::start();
    let tmp = tempfile::tempdir().unwrap();
    let mut members: Vec<Server> = (0..3).map(|_| Server::new(Vec::new())).collect();
    let srv: Vec<Record> = members
        .iter()
        .enumerate()
        .map(|(i, m)| Record::Srv {
            port: m.peer_port,
            target: format!("m{i}.{DOMAIN}."),
        })
        .collect();
    dns.set(&format!("_etcd-server._tcp.{DOMAIN}"), srv);
    for i in 0..3 {
        dns.set(
            &format!("m{i}.{DOMAIN}"),
            vec![Record::A(Ipv4Addr::LOCALHOST)],
        );
    }
    for (i, m) in members.iter_mut().enumerate() {
        // m0 advertises its address, the others their names: a record is
        // matched to this member by address.
        let advertised = if i == 0 {
            m.peer_url()
        } else {
            format!("http://m{i}.{DOMAIN}:{}", m.peer_port)
        };
        m.args = ["--name", &format!("m{i}"), "--discovery-srv", DOMAIN]
            .iter()
            .map(|s| s.to_string())
            .chain(["--initial-advertise-peer-urls".into(), advertised])
            .chain(FAST.iter().map(|s| s.to_string()))
            .collect();
        dns.wrap(m, tmp.path());
        m.spawn();
    }
    for m in &mut members {
        m.wait_healthy();
    }
    let logs = members[1].logs();
    assert!(
        logs.contains("got bootstrap from DNS for etcd-server")
            && logs.contains("m1=http://m1.keel.test:"),
        "{logs}"
    );

    // Every member publishes its name; the peer URLs are the records'.
    let mut c = members[0].client().await;
    let want: Vec<(String, Vec<String>)> = members
        .iter()
        .enumerate()
        .map(|(i, m)| {
            (
                format!("m{i}"),
                vec![format!("http://m{i}.{DOMAIN}:{}", m.peer_port)],
            )
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let list = c.member_list().await.unwrap();
        let mut got: Vec<(String, Vec<String>)> = list
            .members()
            .iter()
            .map(|m| (m.name().to_string(), m.peer_urls().to_vec()))
            .collect();
        got.sort();
        if got == want {
            break;
        }
        assert!(Instant::now() < deadline, "members: {got:?}, want {want:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    c.put("found", "by-srv", None).await.unwrap();
    let mut c2 = members[2].client().await;
    let got = c2.get("found", None).await.unwrap();
    assert_eq!(got.kvs()[0].value(), b"by-srv");

    // The records are needed at the first start only: a member restarted
    // after they are gone starts as before (etcd looks them up only then).
    dns.remove(&format!("_etcd-server._tcp.{DOMAIN}"));
    members[1].restart();
    assert!(
        members[1]
            .logs()
            .contains("its SRV records are not looked up"),
        "{}",
        members[1].logs()
    );
    let mut c1 = members[1].client().await;
    assert_eq!(c1.get("found", None).await.unwrap().kvs().len(), 1);

    // A new member with no records for it stops with etcd's error.
    let mut lost = Server::new(
        ["--name", "lost", "--discovery-srv", "nothing.test"]
            .iter()
            .map(|s| s.to_string())
            .collect(),
    );
    dns.wrap(&mut lost, tmp.path());
    let (code, out) = lost.start_expect_exit();
    assert!(matches!(code, Some(c) if c != 0), "{out}");
    let want = format!(
        "error querying DNS SRV records for _etcd-server-ssl lookup _etcd-server-ssl._tcp.nothing.test on {}:53: no such host",
        dns.ip
    );
    assert!(out.contains(&want), "{out}");
}

/// `--discovery-srv` with `--initial-cluster` is refused, in etcd's words.
#[test]
fn discovery_srv_and_initial_cluster_conflict() {
    let tmp = tempfile::tempdir().unwrap();
    let mut cmd = std::process::Command::new(common::server_binary());
    cmd.arg("--data-dir")
        .arg(tmp.path().join("d"))
        .args(["--discovery-srv", DOMAIN])
        .args(["--initial-cluster", "default=http://127.0.0.1:2380"]);
    let (code, out) = run_to_exit(cmd, Duration::from_secs(20));
    assert!(matches!(code, Some(c) if c != 0), "{out}");
    assert!(
        out.contains("multiple discovery or bootstrap flags are set. Choose one of \"initial-cluster\", \"discovery\" or \"discovery-srv\""),
        "{out}"
    );
}
