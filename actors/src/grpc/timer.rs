//! A timer for hyper's HTTP/2 keepalive pings.
//!
//! hyper asks for sleeps that are `Send + Sync`; glommio's timers belong to
//! their executor's thread. One background thread per process keeps the
//! deadlines and wakes the sleeping tasks (glommio takes wakes from other
//! threads). Keepalive sleeps are few (one per client connection) and long
//! (seconds), so a heap behind a channel is all it needs.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::future::Future;
use std::pin::Pin;
use std::sync::mpsc::{channel, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

/// hyper's timer, backed by the process's timer thread.
#[derive(Debug, Clone, Copy, Default)]
pub struct ThreadTimer;

impl hyper::rt::Timer for ThreadTimer {
    fn sleep(&self, duration: Duration) -> Pin<Box<dyn hyper::rt::Sleep>> {
        self.sleep_until(Instant::now() + duration)
    }

    fn sleep_until(&self, deadline: Instant) -> Pin<Box<dyn hyper::rt::Sleep>> {
        Box::pin(ThreadSleep {
            deadline,
            shared: Arc::default(),
            registered: false,
        })
    }
}

#[derive(Default)]
struct Shared {
    fired: bool,
    waker: Option<Waker>,
}

/// Sleeps until a deadline, woken by the timer thread.
struct ThreadSleep {
    deadline: Instant,
    shared: Arc<Mutex<Shared>>,
    registered: bool,
}

impl Future for ThreadSleep {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if Instant::now() >= self.deadline {
            return Poll::Ready(());
        }
        {
            let mut shared = self.shared.lock().unwrap_or_else(|e| e.into_inner());
            if shared.fired {
                return Poll::Ready(());
            }
            shared.waker = Some(cx.waker().clone());
        }
        if !self.registered {
            self.registered = true;
            let entry = (self.deadline, Arc::downgrade(&self.shared));
            // A timer thread that could not start leaves the sleep pending:
            // the connection then just goes without keepalive pings.
            if let Some(tx) = timer_thread() {
                let _ = tx.lock().unwrap_or_else(|e| e.into_inner()).send(entry);
            }
        }
        Poll::Pending
    }
}

impl hyper::rt::Sleep for ThreadSleep {}

type Entry = (Instant, Weak<Mutex<Shared>>);

fn timer_thread() -> Option<&'static Mutex<Sender<Entry>>> {
    static TX: OnceLock<Option<Mutex<Sender<Entry>>>> = OnceLock::new();
    TX.get_or_init(|| {
        let (tx, rx) = channel::<Entry>();
        std::thread::Builder::new()
            .name("keel-timer".into())
            .spawn(move || {
                // Deadlines in order; the sequence number breaks ties.
                let mut heap: BinaryHeap<(Reverse<Instant>, Reverse<u64>)> = BinaryHeap::new();
                let mut sleeps: std::collections::HashMap<u64, Weak<Mutex<Shared>>> =
                    std::collections::HashMap::new();
                let mut seq = 0u64;
                let mut live_after_prune = 0usize;
                loop {
                    let now = Instant::now();
                    while let Some(&(Reverse(at), Reverse(id))) = heap.peek() {
                        if at > now {
                            break;
                        }
                        heap.pop();
                        if let Some(shared) = sleeps.remove(&id).and_then(|w| w.upgrade()) {
                            let mut s = shared.lock().unwrap_or_else(|e| e.into_inner());
                            s.fired = true;
                            if let Some(w) = s.waker.take() {
                                w.wake();
                            }
                        }
                    }
                    let next = match heap.peek() {
                        Some(&(Reverse(at), _)) => {
                            rx.recv_timeout(at.saturating_duration_since(now))
                        }
                        None => rx.recv().map_err(|_| RecvTimeoutError::Disconnected),
                    };
                    match next {
                        Ok((at, shared)) => {
                            seq += 1;
                            heap.push((Reverse(at), Reverse(seq)));
                            sleeps.insert(seq, shared);
                            // A closed connection drops its sleep long before
                            // the deadline (2 h by default): forget such
                            // sleeps whenever they could be half of those
                            // kept, so connection churn cannot grow the heap.
                            if sleeps.len() >= 2 * live_after_prune + 1024 {
                                sleeps.retain(|_, w| w.strong_count() > 0);
                                heap.retain(|(_, Reverse(id))| sleeps.contains_key(id));
                                live_after_prune = sleeps.len();
                            }
                        }
                        Err(RecvTimeoutError::Timeout) => {}
                        Err(RecvTimeoutError::Disconnected) => return,
                    }
                }
            })
            .ok()
            .map(|_| Mutex::new(tx))
    })
    .as_ref()
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::rt::Timer;

    #[test]
    fn sleeps_end_at_their_deadlines_in_order() {
        let ex = glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
            .io_memory(1 << 20)
            .make()
            .expect("executor");
        ex.run(async {
            let started = Instant::now();
            let long = ThreadTimer.sleep(Duration::from_millis(120));
            let short = ThreadTimer.sleep(Duration::from_millis(30));
            let order = Rc::new(std::cell::RefCell::new(Vec::new()));
            let (o1, o2) = (order.clone(), order.clone());
            let a = glommio::spawn_local(async move {
                long.await;
                o1.borrow_mut().push("long");
            });
            let b = glommio::spawn_local(async move {
                short.await;
                o2.borrow_mut().push("short");
            });
            a.await;
            b.await;
            assert_eq!(*order.borrow(), vec!["short", "long"]);
            let took = started.elapsed();
            assert!(took >= Duration::from_millis(120), "{took:?}");
            assert!(took < Duration::from_secs(5), "{took:?}");
        });
    }

    use std::rc::Rc;
}
