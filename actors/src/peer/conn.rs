//! Frames on a peer connection, and the dialing side's connection pool.
//!
//! A frame is a 16-byte header (body length u32 LE, crc32c of the body u32
//! LE, 8 zero bytes) and an rkyv archive. The archive is built right after
//! the header in one buffer, so a frame is one write; the header's length
//! keeps the archive 16-byte aligned for reading in place.
//!
//! [`PeerClients`] keeps idle connections per peer and hands one to each
//! call; a call owns its connection until the response arrives, so requests
//! never interleave on a connection. A peer that refused a connection is
//! not dialed again until its backoff (doubling up to a second) has passed.

use std::cell::RefCell;
use std::collections::HashMap;
use std::io;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_lite::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use glommio::net::TcpStream;
use rkyv::util::AlignedVec;

use super::stream::PeerStream;
use super::wire::{ArchivedPeerRequest, ArchivedPeerResponse, PeerRequest, PeerResponse};
use crate::metrics::metrics;
use crate::raft::codec::decode_membership;
use crate::raft::types::{Membership, Node, NodeId};
use crate::tls::ClientTls;

pub const HEADER_BYTES: usize = 16;
/// Largest frame accepted: a full AppendEntries batch or snapshot chunk with room to spare.
pub const FRAME_MAX: usize = 256 << 20;
/// Largest greeting: nothing larger is allocated for a caller not yet known.
pub const GREETING_MAX: usize = 4096;
/// Idle connections kept per peer.
const IDLE_PER_PEER: usize = 8;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
const BACKOFF_MIN: Duration = Duration::from_millis(20);
/// A member that was down is redialed within this long of its restart, well
/// inside its election timeout, so it hears from the leader before it would
/// campaign.
const BACKOFF_MAX: Duration = Duration::from_millis(200);

/// Archives `value` after room for the frame header, then fills the header in.
fn frame_of(archive: impl FnOnce(AlignedVec) -> AlignedVec) -> AlignedVec {
    let mut buf = AlignedVec::with_capacity(256);
    buf.extend_from_slice(&[0u8; HEADER_BYTES]);
    let mut buf = archive(buf);
    let body_len = (buf.len() - HEADER_BYTES) as u32;
    let crc = crc32c::crc32c(&buf[HEADER_BYTES..]);
    buf[0..4].copy_from_slice(&body_len.to_le_bytes());
    buf[4..8].copy_from_slice(&crc.to_le_bytes());
    buf
}

pub fn request_frame(req: &PeerRequest) -> AlignedVec {
    frame_of(|buf| {
        // Archiving owned data into a growable buffer cannot fail.
        rkyv::api::high::to_bytes_in::<_, rkyv::rancor::Error>(req, buf)
            .expect("archiving a peer request")
    })
}

pub fn response_frame(resp: &PeerResponse) -> AlignedVec {
    frame_of(|buf| {
        rkyv::api::high::to_bytes_in::<_, rkyv::rancor::Error>(resp, buf)
            .expect("archiving a peer response")
    })
}

/// The body length a frame header announces (at most `max`), and its checksum.
fn parse_header(header: &[u8; HEADER_BYTES], max: usize) -> io::Result<(usize, u32)> {
    let len = u32::from_le_bytes(header[0..4].try_into().expect("4 bytes")) as usize;
    let crc = u32::from_le_bytes(header[4..8].try_into().expect("4 bytes"));
    if len > max {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("peer frame of {len} bytes exceeds the {max} byte limit"),
        ));
    }
    Ok((len, crc))
}

fn check_body(body: &[u8], crc: u32) -> io::Result<()> {
    if crc32c::crc32c(body) != crc {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "peer frame checksum mismatch",
        ));
    }
    Ok(())
}

fn body_buffer(len: usize) -> AlignedVec<16> {
    let mut body = AlignedVec::<16>::with_capacity(len);
    body.resize(len, 0);
    body
}

/// Reads one frame's body (16-byte aligned), checking its length and checksum.
pub async fn read_frame<S: AsyncRead + Unpin>(stream: &mut S) -> io::Result<AlignedVec<16>> {
    read_frame_within(stream, FRAME_MAX).await
}

/// As [`read_frame`], refusing bodies longer than `max` before allocating.
pub async fn read_frame_within<S: AsyncRead + Unpin>(
    stream: &mut S,
    max: usize,
) -> io::Result<AlignedVec<16>> {
    let mut header = [0u8; HEADER_BYTES];
    stream.read_exact(&mut header).await?;
    let (len, crc) = parse_header(&header, max)?;
    let mut body = body_buffer(len);
    stream.read_exact(&mut body).await?;
    check_body(&body, crc)?;
    Ok(body)
}

/// Asks the member at `url` for the cluster's id and membership, with
/// blocking I/O: a member joining an existing cluster does this at start-up,
/// before its executors run. `tls` is what `https://` URLs are dialed with.
pub fn ask_membership(
    url: &str,
    timeout: Duration,
    tls: Option<&ClientTls>,
) -> io::Result<(u64, Membership)> {
    let mut last = io::Error::other(format!("{url}: resolves to no address"));
    for addr in resolve_peer_url(url)? {
        let attempt = (|| -> io::Result<(u64, Membership)> {
            let s = std::net::TcpStream::connect_timeout(&addr, timeout)?;
            s.set_read_timeout(Some(timeout))?;
            s.set_write_timeout(Some(timeout))?;
            if !is_https(url) {
                return ask_members(s);
            }
            let tls = tls.ok_or_else(|| io::Error::other(NO_PEER_TLS))?;
            let name = server_name(url)?;
            let conn =
                rustls::ClientConnection::new(tls.config(), name).map_err(io::Error::other)?;
            ask_members(rustls::StreamOwned::new(conn, s))
        })();
        match attempt {
            Ok(r) => return Ok(r),
            Err(e) => last = io::Error::new(e.kind(), format!("{addr}: {e}")),
        }
    }
    Err(last)
}

/// Hello, then Members, on a blocking connection.
fn ask_members(mut s: impl std::io::Read + std::io::Write) -> io::Result<(u64, Membership)> {
    let mut exchange = |req: &PeerRequest| -> io::Result<PeerResponse> {
        s.write_all(&request_frame(req))?;
        s.flush()?;
        let mut header = [0u8; HEADER_BYTES];
        s.read_exact(&mut header)?;
        let (len, crc) = parse_header(&header, FRAME_MAX)?;
        let mut body = body_buffer(len);
        s.read_exact(&mut body)?;
        check_body(&body, crc)?;
        decode_response(&body)
    };
    let hello = PeerRequest::Hello {
        cluster_id: 0,
        from: 0,
        to: 0,
    };
    match exchange(&hello)? {
        PeerResponse::Hello { .. } => {}
        other => return Err(io::Error::other(format!("unexpected greeting {other:?}"))),
    }
    match exchange(&PeerRequest::Members)? {
        PeerResponse::Members {
            cluster_id,
            membership,
            ..
        } => Ok((
            cluster_id,
            decode_membership(&membership).map_err(io::Error::other)?,
        )),
        other => Err(io::Error::other(format!("unexpected answer {other:?}"))),
    }
}

/// The greeting a connection opens with: (cluster id, from, to), or None
/// if `body` is not a Hello frame body.
pub fn decode_hello(body: &[u8]) -> Option<(u64, NodeId, NodeId)> {
    match rkyv::access::<ArchivedPeerRequest, rkyv::rancor::Error>(body).ok()? {
        ArchivedPeerRequest::Hello {
            cluster_id,
            from,
            to,
        } => Some((cluster_id.to_native(), from.to_native(), to.to_native())),
        _ => None,
    }
}

/// The body length announced by a frame header (for tools that relay
/// frames, such as the tests' fault-injecting proxy).
pub fn frame_body_len(header: &[u8; HEADER_BYTES]) -> io::Result<usize> {
    parse_header(header, FRAME_MAX).map(|(len, _)| len)
}

pub fn decode_response(body: &[u8]) -> io::Result<PeerResponse> {
    let archived = rkyv::access::<ArchivedPeerResponse, rkyv::rancor::Error>(body)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
    rkyv::deserialize::<PeerResponse, rkyv::rancor::Error>(archived)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))
}

/// Why an `https://` peer URL cannot be dialed.
const NO_PEER_TLS: &str =
    "an https:// peer URL, but no peer TLS is configured (--peer-cert-file and --peer-key-file, or --peer-auto-tls)";

/// `http://host:port` or `https://host:port` → its `host:port`.
fn peer_host_port(url: &str) -> io::Result<&str> {
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))
        .ok_or_else(|| io::Error::other(format!("peer URL {url}: expected http:// or https://")))?;
    Ok(rest.trim_end_matches('/'))
}

pub fn is_https(url: &str) -> bool {
    url.starts_with("https://")
}

/// The name a peer's certificate is checked against: the URL's host.
fn server_name(url: &str) -> io::Result<rustls::pki_types::ServerName<'static>> {
    let hostport = peer_host_port(url)?;
    let host = hostport
        .rsplit_once(':')
        .map_or(hostport, |(h, _)| h)
        .trim_start_matches('[')
        .trim_end_matches(']');
    rustls::pki_types::ServerName::try_from(host.to_string())
        .map_err(|e| io::Error::other(format!("peer URL {url}: {e}")))
}

/// A peer URL → socket addresses.
pub fn resolve_peer_url(url: &str) -> io::Result<Vec<SocketAddr>> {
    Ok(peer_host_port(url)?.to_socket_addrs()?.collect())
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum PeerError {
    /// No connection could be made (or the peer is in backoff).
    #[error("peer {0:x} unreachable: {1}")]
    Unreachable(NodeId, String),
    /// The connection failed mid-call: the request may or may not have arrived.
    #[error("peer {0:x}: {1}")]
    Io(NodeId, String),
    #[error("peer {0:x} did not answer within {1:?}")]
    Timeout(NodeId, Duration),
    #[error("peer {0:x} refused the connection: {1}")]
    Rejected(NodeId, String),
}

/// An open, greeted connection to one peer.
pub struct PeerConn {
    target: NodeId,
    label: String,
    stream: PeerStream,
}

impl PeerConn {
    pub async fn send(&mut self, frame: &[u8]) -> io::Result<()> {
        let sent = async {
            self.stream.write_all(frame).await?;
            // TLS holds records until flushed.
            self.stream.flush().await
        }
        .await;
        if let Err(e) = sent {
            metrics()
                .peer_sent_failures
                .with_label_values(&[&self.label])
                .inc();
            return Err(e);
        }
        metrics()
            .peer_sent_bytes
            .with_label_values(&[&self.label])
            .inc_by(frame.len() as u64);
        Ok(())
    }

    pub async fn recv(&mut self) -> io::Result<PeerResponse> {
        let body = read_frame(&mut self.stream).await?;
        metrics()
            .peer_received_bytes
            .with_label_values(&[&self.label])
            .inc_by((body.len() + HEADER_BYTES) as u64);
        decode_response(&body)
    }
}

/// Sends a request frame and reads the response, within `timeout`
/// (`Err(_)` when it ran out).
async fn exchange(
    conn: &mut PeerConn,
    frame: &[u8],
    timeout: Duration,
) -> Result<io::Result<PeerResponse>, glommio::GlommioError<()>> {
    let round_trip = async {
        conn.send(frame).await?;
        conn.recv().await
    };
    glommio::timer::timeout(timeout, async { Ok(round_trip.await) }).await
}

/// Called when a peer refuses this member (another cluster, say).
pub type OnRejected = Box<dyn Fn(NodeId, &str)>;

#[derive(Default, Clone, Copy)]
struct Backoff {
    until: Option<Instant>,
    delay: Duration,
    /// When this peer's being unreachable was last logged.
    warned: Option<Instant>,
}

/// A peer that stays unreachable is logged at most this often.
const UNREACHABLE_WARN_EVERY: Duration = Duration::from_secs(30);

/// The dialing side of the peer transport, shared by everything on the
/// raft core that talks to other members.
pub struct PeerClients {
    me: NodeId,
    cluster_id: u64,
    idle: RefCell<HashMap<NodeId, Vec<PeerConn>>>,
    backoff: RefCell<HashMap<NodeId, Backoff>>,
    /// When each peer last answered a call.
    answered: RefCell<HashMap<NodeId, Instant>>,
    on_rejected: OnRejected,
    /// What `https://` peer URLs are dialed with.
    tls: Option<Arc<ClientTls>>,
}

impl PeerClients {
    pub fn new(
        me: NodeId,
        cluster_id: u64,
        on_rejected: OnRejected,
        tls: Option<Arc<ClientTls>>,
    ) -> Self {
        PeerClients {
            me,
            cluster_id,
            idle: RefCell::default(),
            backoff: RefCell::default(),
            answered: RefCell::default(),
            on_rejected,
            tls,
        }
    }

    fn in_backoff(&self, target: NodeId) -> bool {
        self.backoff
            .borrow()
            .get(&target)
            .and_then(|b| b.until)
            .is_some_and(|u| Instant::now() < u)
    }

    fn failed(&self, target: NodeId, why: &PeerError) {
        let mut map = self.backoff.borrow_mut();
        let b = map.entry(target).or_default();
        if b.warned
            .is_none_or(|w| w.elapsed() >= UNREACHABLE_WARN_EVERY)
        {
            b.warned = Some(Instant::now());
            tracing::warn!(
                remote_peer_id = format!("{target:x}"),
                "peer unreachable (logged at most every {}s): {why}",
                UNREACHABLE_WARN_EVERY.as_secs()
            );
        }
        b.delay = (b.delay * 2).clamp(BACKOFF_MIN, BACKOFF_MAX);
        b.until = Some(Instant::now() + b.delay);
        self.idle.borrow_mut().remove(&target);
    }

    fn succeeded(&self, target: NodeId) {
        self.backoff.borrow_mut().remove(&target);
        self.answered.borrow_mut().insert(target, Instant::now());
    }

    /// Whether `target` answered a call within `window`: a running member
    /// is heard from every heartbeat interval (etcd: an active connection).
    pub fn answered_within(&self, target: NodeId, window: Duration) -> bool {
        self.answered
            .borrow()
            .get(&target)
            .is_some_and(|t| t.elapsed() < window)
    }

    /// Opens and greets a new connection to `target`.
    pub async fn connect(&self, target: NodeId, node: &Node) -> Result<PeerConn, PeerError> {
        if self.in_backoff(target) {
            return Err(PeerError::Unreachable(target, "backing off".into()));
        }
        let conn = self.dial(target, node).await;
        if let Err(e) = &conn {
            self.failed(target, e);
        }
        conn
    }

    async fn dial(&self, target: NodeId, node: &Node) -> Result<PeerConn, PeerError> {
        let unreachable = |e: String| PeerError::Unreachable(target, e);
        let mut last = String::from("no peer URL");
        for url in &node.peer_urls {
            let addrs = match resolve_peer_url(url) {
                Ok(a) => a,
                Err(e) => {
                    last = e.to_string();
                    continue;
                }
            };
            for addr in addrs {
                match TcpStream::connect_timeout(addr, CONNECT_TIMEOUT).await {
                    Ok(stream) => {
                        let _ = stream.set_nodelay(true);
                        crate::tcp::keep_alive(&stream, crate::tcp::PEER);
                        let stream = match self.secure(url, stream).await {
                            Ok(s) => s,
                            Err(e) => {
                                last = format!("{addr}: {e}");
                                continue;
                            }
                        };
                        let label = format!("{target:x}");
                        // The peer's failure series exists from the first
                        // connection on, at 0, as alert expressions expect.
                        metrics().peer_sent_failures.with_label_values(&[&label]);
                        let mut conn = PeerConn {
                            target,
                            label,
                            stream,
                        };
                        return self.greet(&mut conn).await.map(|()| conn);
                    }
                    Err(e) => last = format!("{addr}: {e}"),
                }
            }
        }
        Err(unreachable(last))
    }

    /// A TLS handshake for an `https://` URL (the caller's deadline bounds
    /// it); a plain stream otherwise.
    async fn secure(&self, url: &str, stream: TcpStream) -> io::Result<PeerStream> {
        if !is_https(url) {
            return Ok(PeerStream::Plain(stream.buffered()));
        }
        let tls = self
            .tls
            .as_ref()
            .ok_or_else(|| io::Error::other(NO_PEER_TLS))?;
        let connector = futures_rustls::TlsConnector::from(tls.config());
        let stream = connector.connect(server_name(url)?, stream).await?;
        Ok(PeerStream::Tls(Box::new(stream.into())))
    }

    async fn greet(&self, conn: &mut PeerConn) -> Result<(), PeerError> {
        let target = conn.target;
        let hello = request_frame(&PeerRequest::Hello {
            cluster_id: self.cluster_id,
            from: self.me,
            to: target,
        });
        let io_err = |e: io::Error| PeerError::Unreachable(target, e.to_string());
        conn.send(&hello).await.map_err(io_err)?;
        match conn.recv().await.map_err(io_err)? {
            PeerResponse::Hello { .. } => Ok(()),
            PeerResponse::Rejected { reason } => {
                (self.on_rejected)(target, &reason);
                Err(PeerError::Rejected(target, reason))
            }
            other => Err(PeerError::Unreachable(
                target,
                format!("unexpected greeting {other:?}"),
            )),
        }
    }

    /// A new greeted connection to `target`, or an error after `timeout`.
    async fn dial_within(
        &self,
        target: NodeId,
        node: &Node,
        timeout: Duration,
    ) -> Result<PeerConn, PeerError> {
        let dialed =
            glommio::timer::timeout(timeout, async { Ok(self.connect(target, node).await) }).await;
        dialed.unwrap_or_else(|_| {
            let e = PeerError::Unreachable(target, format!("no greeting within {timeout:?}"));
            self.failed(target, &e);
            Err(e)
        })
    }

    /// Sends `req` to `target` and waits up to `timeout` for its response,
    /// dialing and greeting included: a peer whose kernel still completes
    /// handshakes while the process is frozen must not hold a call longer.
    ///
    /// An idle connection can be dead without anyone knowing (the peer
    /// restarted, or a proxy dropped it): when one fails before any answer,
    /// the peer's other idle connections are dropped too, and a request
    /// that may be sent twice ([`PeerRequest::may_repeat`]) is sent again
    /// on a new connection within the same deadline.
    pub async fn call(
        &self,
        target: NodeId,
        node: &Node,
        req: &PeerRequest,
        timeout: Duration,
    ) -> Result<PeerResponse, PeerError> {
        let started = Instant::now();
        let frame = request_frame(req);
        let pooled = self
            .idle
            .borrow_mut()
            .get_mut(&target)
            .and_then(|v| v.pop());
        let from_pool = pooled.is_some();
        let mut conn = match pooled {
            Some(c) => c,
            None => self.dial_within(target, node, timeout).await?,
        };
        let left = |started: Instant| timeout.saturating_sub(started.elapsed());
        let mut result = exchange(&mut conn, &frame, left(started)).await;
        if let (true, Ok(Err(e))) = (from_pool, &result) {
            self.idle.borrow_mut().remove(&target);
            if !req.may_repeat() {
                return Err(PeerError::Io(target, e.to_string()));
            }
            conn = self.dial_within(target, node, left(started)).await?;
            result = exchange(&mut conn, &frame, left(started)).await;
        }
        match result {
            Err(_) => Err(PeerError::Timeout(target, timeout)),
            Ok(Err(e)) => {
                let e = PeerError::Io(target, e.to_string());
                self.failed(target, &e);
                Err(e)
            }
            Ok(Ok(PeerResponse::Rejected { reason })) => {
                (self.on_rejected)(target, &reason);
                Err(PeerError::Rejected(target, reason))
            }
            Ok(Ok(resp)) => {
                metrics()
                    .peer_round_trip_seconds
                    .with_label_values(&[&conn.label])
                    .observe(started.elapsed().as_secs_f64());
                self.succeeded(target);
                let mut idle = self.idle.borrow_mut();
                let list = idle.entry(target).or_default();
                if list.len() < IDLE_PER_PEER {
                    list.push(conn);
                }
                Ok(resp)
            }
        }
    }
}
