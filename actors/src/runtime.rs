//! openraft's `AsyncRuntime` on glommio.
//!
//! openraft (with `singlethreaded`) drives its core, state machine worker
//! and timers through this trait. Tasks are glommio local tasks on the
//! calling executor; timers are glommio timers; one-shot channels are
//! tokio's runtime-independent ones. Nothing here needs a tokio runtime.

use std::fmt;
use std::future::Future;
use std::ops::{Add, AddAssign, Sub, SubAssign};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use openraft::{AsyncRuntime, OptionalSend};

#[derive(Debug, Default, PartialEq, Eq, Clone, Copy)]
pub struct GlommioRuntime;

/// A monotonic instant (openraft's `Instant` trait needs a local type).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct MonoInstant(pub std::time::Instant);

impl Add<Duration> for MonoInstant {
    type Output = MonoInstant;
    fn add(self, d: Duration) -> MonoInstant {
        MonoInstant(self.0 + d)
    }
}

impl AddAssign<Duration> for MonoInstant {
    fn add_assign(&mut self, d: Duration) {
        self.0 += d;
    }
}

impl Sub<Duration> for MonoInstant {
    type Output = MonoInstant;
    fn sub(self, d: Duration) -> MonoInstant {
        MonoInstant(self.0 - d)
    }
}

impl Sub<MonoInstant> for MonoInstant {
    type Output = Duration;
    fn sub(self, other: MonoInstant) -> Duration {
        self.0.saturating_duration_since(other.0)
    }
}

impl SubAssign<Duration> for MonoInstant {
    fn sub_assign(&mut self, d: Duration) {
        self.0 -= d;
    }
}

impl openraft::Instant for MonoInstant {
    fn now() -> Self {
        MonoInstant(std::time::Instant::now())
    }
}

/// A task that was cancelled before it finished.
#[derive(Debug)]
pub struct Cancelled;

impl fmt::Display for Cancelled {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("task cancelled")
    }
}

pub struct JoinHandle<T>(glommio::task::JoinHandle<T>);

impl<T> Future for JoinHandle<T> {
    type Output = Result<T, Cancelled>;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.0).poll(cx).map(|r| r.ok_or(Cancelled))
    }
}

pub struct Sleep(glommio::timer::Timer);

impl Future for Sleep {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        Pin::new(&mut self.0).poll(cx).map(|_| ())
    }
}

#[derive(Debug)]
pub struct Elapsed;

impl fmt::Display for Elapsed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("deadline elapsed")
    }
}

/// `future` raced against a timer.
pub struct Timeout<F> {
    future: Pin<Box<F>>,
    timer: glommio::timer::Timer,
}

impl<R, F: Future<Output = R>> Future for Timeout<F> {
    type Output = Result<R, Elapsed>;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        if let Poll::Ready(v) = self.future.as_mut().poll(cx) {
            return Poll::Ready(Ok(v));
        }
        match Pin::new(&mut self.timer).poll(cx) {
            Poll::Ready(_) => Poll::Ready(Err(Elapsed)),
            Poll::Pending => Poll::Pending,
        }
    }
}

pub struct OneshotSender<T>(tokio::sync::oneshot::Sender<T>);

impl<T> fmt::Debug for OneshotSender<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("OneshotSender")
    }
}

impl<T: OptionalSend> openraft::async_runtime::AsyncOneshotSendExt<T> for OneshotSender<T> {
    fn send(self, t: T) -> Result<(), T> {
        self.0.send(t)
    }
}

fn until(deadline: MonoInstant) -> Duration {
    deadline
        .0
        .saturating_duration_since(std::time::Instant::now())
}

impl AsyncRuntime for GlommioRuntime {
    type JoinError = Cancelled;
    type JoinHandle<T: OptionalSend + 'static> = JoinHandle<T>;
    type Sleep = Sleep;
    type Instant = MonoInstant;
    type TimeoutError = Elapsed;
    type Timeout<R, T: Future<Output = R> + OptionalSend> = Timeout<T>;
    type ThreadLocalRng = rand::rngs::ThreadRng;
    type OneshotSender<T: OptionalSend> = OneshotSender<T>;
    type OneshotReceiverError = tokio::sync::oneshot::error::RecvError;
    type OneshotReceiver<T: OptionalSend> = tokio::sync::oneshot::Receiver<T>;

    fn spawn<T>(future: T) -> Self::JoinHandle<T::Output>
    where
        T: Future + OptionalSend + 'static,
        T::Output: OptionalSend + 'static,
    {
        JoinHandle(glommio::spawn_local(future).detach())
    }

    fn sleep(duration: Duration) -> Self::Sleep {
        Sleep(glommio::timer::Timer::new(duration))
    }

    fn sleep_until(deadline: Self::Instant) -> Self::Sleep {
        Sleep(glommio::timer::Timer::new(until(deadline)))
    }

    fn timeout<R, F: Future<Output = R> + OptionalSend>(
        duration: Duration,
        future: F,
    ) -> Self::Timeout<R, F> {
        Timeout {
            future: Box::pin(future),
            timer: glommio::timer::Timer::new(duration),
        }
    }

    fn timeout_at<R, F: Future<Output = R> + OptionalSend>(
        deadline: Self::Instant,
        future: F,
    ) -> Self::Timeout<R, F> {
        Self::timeout(until(deadline), future)
    }

    fn is_panic(_: &Self::JoinError) -> bool {
        // A panicking glommio task takes its executor down; a JoinHandle
        // only ever reports cancellation.
        false
    }

    fn thread_rng() -> Self::ThreadLocalRng {
        rand::thread_rng()
    }

    fn oneshot<T: OptionalSend>() -> (Self::OneshotSender<T>, Self::OneshotReceiver<T>) {
        let (tx, rx) = tokio::sync::oneshot::channel();
        (OneshotSender(tx), rx)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    /// Reactors and the raft core wake each other across threads (tokio
    /// channels, glommio's remote wakers) while the other executor sleeps.
    /// `vendor/glommio` orders the sleeper's "wake me" flag against those
    /// wakes with two fences instead of a process-wide membarrier
    /// (KEEL-PATCH.md); a wake lost there leaves an executor asleep for
    /// good and this ping-pong stuck.
    #[test]
    fn remote_wakes_between_sleeping_executors_are_never_lost() {
        const ROUNDS: u32 = 20_000;
        let (ping_tx, mut ping_rx) = tokio::sync::mpsc::channel::<u32>(1);
        let (pong_tx, mut pong_rx) = tokio::sync::mpsc::channel::<u32>(1);
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        let spawn = |name: &str, body: Box<dyn FnOnce() + Send>| {
            std::thread::Builder::new()
                .name(name.into())
                .spawn(body)
                .unwrap()
        };
        let executor = || {
            glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
                .io_memory(1 << 20)
                .make()
                .expect("executor")
        };
        let done = done_tx.clone();
        let a = spawn(
            "pinger",
            Box::new(move || {
                executor().run(async move {
                    for i in 0..ROUNDS {
                        ping_tx.send(i).await.unwrap();
                        assert_eq!(pong_rx.recv().await, Some(i));
                    }
                });
                let _ = done.send("pinger");
            }),
        );
        let b = spawn(
            "ponger",
            Box::new(move || {
                executor().run(async move {
                    while let Some(i) = ping_rx.recv().await {
                        if pong_tx.send(i).await.is_err() {
                            break;
                        }
                    }
                });
                let _ = done_tx.send("ponger");
            }),
        );
        for _ in 0..2 {
            done_rx
                .recv_timeout(Duration::from_secs(120))
                .expect("an executor slept through a wake: the ping-pong stalled");
        }
        a.join().unwrap();
        b.join().unwrap();
    }
}
