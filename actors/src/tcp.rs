//! TCP keepalive for the client and peer servers' sockets, so a connection
//! whose other end vanished (power loss, a partition that drops packets)
//! fails by itself instead of living on half-open with whatever it holds
//! (watch streams, a pooled peer call).

use std::time::Duration;

use glommio::net::TcpStream;

/// When a connection with no traffic is probed and given up.
#[derive(Debug, Clone, Copy)]
pub struct Liveness {
    /// Probe after this long without traffic.
    pub idle: Duration,
    pub interval: Duration,
    pub probes: u32,
    /// Data left unacknowledged this long fails the connection.
    pub user_timeout: Duration,
}

/// Peers: a dead member's connections go within seconds (calls have their
/// own deadlines; this keeps dead connections from piling up).
pub const PEER: Liveness = Liveness {
    idle: Duration::from_secs(5),
    interval: Duration::from_secs(1),
    probes: 3,
    user_timeout: Duration::from_secs(10),
};

/// Clients: as etcd's listeners (Go's default 15 s keepalive period, nine
/// probes), so an idle client that is still there is never cut off.
pub const CLIENT: Liveness = Liveness {
    idle: Duration::from_secs(15),
    interval: Duration::from_secs(15),
    probes: 9,
    user_timeout: Duration::from_secs(150),
};

/// Applies `l` to `stream`; failures are logged (the connection still works).
pub fn keep_alive(stream: &TcpStream, l: Liveness) {
    use std::os::fd::{AsRawFd, BorrowedFd};
    // SAFETY: the descriptor belongs to `stream`, which outlives `fd`.
    let fd = unsafe { BorrowedFd::borrow_raw(stream.as_raw_fd()) };
    let socket = socket2::SockRef::from(&fd);
    let keepalive = socket2::TcpKeepalive::new()
        .with_time(l.idle)
        .with_interval(l.interval)
        .with_retries(l.probes);
    if let Err(e) = socket
        .set_tcp_keepalive(&keepalive)
        .and_then(|()| socket.set_tcp_user_timeout(Some(l.user_timeout)))
    {
        tracing::debug!("socket keepalive: {e}");
    }
}
