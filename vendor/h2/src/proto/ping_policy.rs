//! KEEL-PATCH: the server's keepalive enforcement policy, as grpc-go's
//! server applies it (`keepalive.EnforcementPolicy` with
//! `PermitWithoutStream: false`; etcd passes `--grpc-keepalive-min-time` as
//! its `MinTime`).
//!
//! A client PING that comes sooner than `min_time` after the previous one
//! (2 h when the connection has no open stream) is a strike; the server
//! forgives all strikes once it has sent HEADERS or DATA since the previous
//! ping. The third strike gets GOAWAY ENHANCE_YOUR_CALM "too_many_pings" and
//! the connection is closed.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// grpc-go's `maxPingStrikes`: strikes beyond this close the connection.
const MAX_PING_STRIKES: u32 = 2;

/// grpc-go's `defaultPingTimeout`: the least interval between pings on a
/// connection without streams.
const PING_INTERVAL_WITHOUT_STREAMS: Duration = Duration::from_secs(2 * 3600);

/// The least interval between a client's pings, in nanoseconds; 0 while the
/// policy is off (upstream h2's behaviour: every ping is answered).
static MIN_TIME_NANOS: AtomicU64 = AtomicU64::new(0);

/// Sets the process-wide policy for server connections; `None` turns it off.
pub(crate) fn set_min_time(min_time: Option<Duration>) {
    let nanos = min_time.map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX).max(1));
    MIN_TIME_NANOS.store(nanos, Ordering::Relaxed);
}

fn min_time() -> Option<Duration> {
    match MIN_TIME_NANOS.load(Ordering::Relaxed) {
        0 => None,
        nanos => Some(Duration::from_nanos(nanos)),
    }
}

/// One server connection's record of its client's pings.
#[derive(Debug, Default)]
pub(crate) struct PingStrikes {
    last_ping_at: Option<Instant>,
    strikes: u32,
}

impl PingStrikes {
    /// Records a client PING (not an ack) under the process-wide policy;
    /// true when the connection must be closed for too many pings.
    pub(crate) fn on_ping(&mut self, now: Instant, has_streams: bool, forgiven: bool) -> bool {
        match min_time() {
            Some(min_time) => self.judge(now, min_time, has_streams, forgiven),
            None => false,
        }
    }

    fn judge(&mut self, now: Instant, min_time: Duration, has_streams: bool, forgiven: bool) -> bool {
        let last = self.last_ping_at.replace(now);
        if forgiven {
            self.strikes = 0;
            return false;
        }
        let least = if has_streams {
            min_time
        } else {
            PING_INTERVAL_WITHOUT_STREAMS
        };
        if last.is_some_and(|last| now < last + least) {
            self.strikes += 1;
        }
        self.strikes > MAX_PING_STRIKES
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: Duration = Duration::from_secs(5);

    #[test]
    fn the_third_early_ping_closes_the_connection() {
        let t0 = Instant::now();
        let mut s = PingStrikes::default();
        // The first ping has nothing to be early against.
        assert!(!s.judge(t0, MIN, true, false));
        assert!(!s.judge(t0 + Duration::from_secs(1), MIN, true, false));
        assert!(!s.judge(t0 + Duration::from_secs(2), MIN, true, false));
        assert!(s.judge(t0 + Duration::from_secs(3), MIN, true, false));
    }

    #[test]
    fn pings_at_least_min_time_apart_are_never_struck() {
        let t0 = Instant::now();
        let mut s = PingStrikes::default();
        for i in 0..100 {
            assert!(!s.judge(t0 + MIN * i, MIN, true, false));
        }
    }

    #[test]
    fn without_streams_pings_must_be_two_hours_apart() {
        let t0 = Instant::now();
        let mut s = PingStrikes::default();
        assert!(!s.judge(t0, MIN, false, false));
        assert!(!s.judge(t0 + MIN * 2, MIN, false, false));
        assert!(!s.judge(t0 + MIN * 4, MIN, false, false));
        assert!(s.judge(t0 + MIN * 6, MIN, false, false));
    }

    #[test]
    fn sending_headers_or_data_forgives_the_strikes() {
        let t0 = Instant::now();
        let mut s = PingStrikes::default();
        let ms = Duration::from_millis;
        assert!(!s.judge(t0, MIN, true, false));
        assert!(!s.judge(t0 + ms(1), MIN, true, false));
        assert!(!s.judge(t0 + ms(2), MIN, true, false));
        assert!(!s.judge(t0 + ms(3), MIN, true, true));
        assert!(!s.judge(t0 + ms(4), MIN, true, false));
        assert!(!s.judge(t0 + ms(5), MIN, true, false));
        assert!(s.judge(t0 + ms(6), MIN, true, false));
    }
}
