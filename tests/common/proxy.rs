//! A fault-injecting TCP proxy in front of each member's peer port.
//!
//! Members advertise the proxy's port; the proxy relays to the member's
//! real peer listener. It reads the Hello frame each connection opens with
//! to learn the dialing member, so cutting member X off refuses (and closes)
//! every connection to X and every connection from X, in both directions.
//! It can also slow every connection to a member down to a byte rate.
//! Threads and sockets end when the proxy is dropped.

use std::collections::{HashMap, HashSet};
use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use keel_actors::peer::conn::{decode_hello, frame_body_len, HEADER_BYTES};
use keel_actors::raft::log_store::aligned_bytes;

/// Which members are cut off, shared by every proxy of a cluster.
#[derive(Default)]
pub struct Partition {
    /// Member ids cut off from everyone.
    cut: Mutex<HashSet<u64>>,
    /// Member ids nobody can reach, while they still reach the others.
    unreachable: Mutex<HashSet<u64>>,
    /// Open relays, closed when either end is cut. The proxied member's id is read at cut time: a
    /// connection made before the cluster's ids were learned has it as 0
    /// when it opens.
    open: Mutex<Vec<Relay>>,
    /// Bytes per second each connection to a member may carry.
    rates: Mutex<HashMap<u64, u64>>,
}

/// An open relay: (from, the proxied member, both sockets).
type Relay = (u64, Arc<Mutex<u64>>, TcpStream, TcpStream);

impl Partition {
    pub fn cut(&self, member: u64) {
        self.cut.lock().unwrap().insert(member);
        let mut open = self.open.lock().unwrap();
        open.retain(|(from, to, a, b)| {
            if *from == member || *to.lock().unwrap() == member {
                let _ = a.shutdown(Shutdown::Both);
                let _ = b.shutdown(Shutdown::Both);
                false
            } else {
                true
            }
        });
    }

    /// Cuts the connections made to `member` only: it still dials out.
    pub fn cut_inbound(&self, member: u64) {
        self.unreachable.lock().unwrap().insert(member);
        let mut open = self.open.lock().unwrap();
        open.retain(|(_, to, a, b)| {
            if *to.lock().unwrap() == member {
                let _ = a.shutdown(Shutdown::Both);
                let _ = b.shutdown(Shutdown::Both);
                false
            } else {
                true
            }
        });
    }

    pub fn heal(&self) {
        self.cut.lock().unwrap().clear();
        self.unreachable.lock().unwrap().clear();
        self.rates.lock().unwrap().clear();
    }

    /// Limits every connection to `member`, open or new, to
    /// `bytes_per_sec` towards it.
    pub fn throttle_inbound(&self, member: u64, bytes_per_sec: u64) {
        self.rates.lock().unwrap().insert(member, bytes_per_sec);
    }

    fn rate_to(&self, member: u64) -> Option<u64> {
        self.rates.lock().unwrap().get(&member).copied()
    }

    fn allows(&self, from: u64, to: u64) -> bool {
        let cut = self.cut.lock().unwrap();
        !cut.contains(&from)
            && !cut.contains(&to)
            && !self.unreachable.lock().unwrap().contains(&to)
    }
}

pub struct PeerProxy {
    pub port: u16,
    stop: Arc<AtomicBool>,
}

impl PeerProxy {
    /// Relays connections on a fresh port to `target_port`, where member
    /// `target` (its id is learned once known: 0 until then) listens.
    pub fn start(target_port: u16, target: Arc<Mutex<u64>>, partition: Arc<Partition>) -> Self {
        let listener = super::fresh_listener();
        let port = listener.local_addr().unwrap().port();
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if stop2.load(Ordering::Relaxed) {
                    return;
                }
                let Ok(conn) = conn else { continue };
                let (target, partition) = (target.clone(), partition.clone());
                std::thread::spawn(move || relay(conn, target_port, target, partition));
            }
        });
        PeerProxy { port, stop }
    }
}

impl Drop for PeerProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Wake the accept loop so it sees the flag.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

fn relay(mut inbound: TcpStream, target_port: u16, target: Arc<Mutex<u64>>, p: Arc<Partition>) {
    let _ = inbound.set_read_timeout(Some(Duration::from_secs(5)));
    let mut header = [0u8; HEADER_BYTES];
    if inbound.read_exact(&mut header).is_err() {
        return;
    }
    let Ok(len) = frame_body_len(&header) else {
        return;
    };
    let mut body = vec![0u8; len];
    if inbound.read_exact(&mut body).is_err() {
        return;
    }
    // The archive is read in place: copy it to an aligned buffer first.
    let from = decode_hello(&aligned_bytes(&body)).map_or(0, |h| h.1);
    let to = *target.lock().unwrap();
    if !p.allows(from, to) {
        return;
    }
    let Ok(mut outbound) = TcpStream::connect(("127.0.0.1", target_port)) else {
        return;
    };
    let _ = inbound.set_read_timeout(None);
    let _ = outbound.set_nodelay(true);
    let _ = inbound.set_nodelay(true);
    if outbound.write_all(&header).is_err() || outbound.write_all(&body).is_err() {
        return;
    }
    {
        let mut open = p.open.lock().unwrap();
        // Re-check under the lock: a cut that raced this connection wins.
        if !p.allows(from, to) {
            return;
        }
        open.push((
            from,
            target.clone(),
            inbound.try_clone().unwrap(),
            outbound.try_clone().unwrap(),
        ));
    }
    let (mut in2, mut out2) = (inbound.try_clone().unwrap(), outbound.try_clone().unwrap());
    let back = std::thread::spawn(move || {
        let _ = std::io::copy(&mut out2, &mut in2);
        let _ = in2.shutdown(Shutdown::Both);
    });
    let _ = copy_towards(&mut inbound, &mut outbound, &target, &p);
    let _ = outbound.shutdown(Shutdown::Both);
    let _ = back.join();
}

/// Copies `from` to `to` (the proxied member) until either end closes, at
/// no more than the member's throttle rate while one is set.
fn copy_towards(
    from: &mut TcpStream,
    to: &mut TcpStream,
    member: &Mutex<u64>,
    p: &Partition,
) -> std::io::Result<()> {
    let mut buf = vec![0u8; 16 << 10];
    // Bytes sent since `since`, while throttled at the current rate.
    let (mut since, mut sent) = (Instant::now(), 0u64);
    loop {
        let n = from.read(&mut buf)?;
        if n == 0 {
            return Ok(());
        }
        to.write_all(&buf[..n])?;
        match p.rate_to(*member.lock().unwrap()) {
            Some(rate) => {
                sent += n as u64;
                let due = since + Duration::from_secs_f64(sent as f64 / rate as f64);
                if let Some(wait) = due.checked_duration_since(Instant::now()) {
                    std::thread::sleep(wait);
                }
            }
            None => (since, sent) = (Instant::now(), 0),
        }
    }
}
