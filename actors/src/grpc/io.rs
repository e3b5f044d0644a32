//! Adapters between glommio and hyper: a socket implementing hyper's IO
//! traits (with bytes already read replayed first), and an executor that
//! spawns hyper's per-stream tasks as glommio local tasks.

use std::future::Future;
use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures_lite::{AsyncRead, AsyncWrite};

/// A socket for hyper. `prefix` holds bytes read while sniffing the
/// protocol; they are returned before anything else.
pub struct HyperIo<S> {
    inner: S,
    prefix: Vec<u8>,
    prefix_at: usize,
}

impl<S> HyperIo<S> {
    pub fn new(inner: S, prefix: Vec<u8>) -> HyperIo<S> {
        HyperIo {
            inner,
            prefix,
            prefix_at: 0,
        }
    }
}

impl<S: AsyncRead + Unpin> hyper::rt::Read for HyperIo<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        mut buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.prefix_at < this.prefix.len() {
            let rest = &this.prefix[this.prefix_at..];
            let n = rest.len().min(buf.remaining());
            buf.put_slice(&rest[..n]);
            this.prefix_at += n;
            return Poll::Ready(Ok(()));
        }
        // SAFETY: the slice is fully initialised (zeroed) before it is
        // viewed as `[u8]`, and `advance` is called with at most the number
        // of bytes the read wrote into it.
        unsafe {
            let raw: &mut [MaybeUninit<u8>] = buf.as_mut();
            for b in raw.iter_mut() {
                b.write(0);
            }
            let slice = &mut *(raw as *mut [MaybeUninit<u8>] as *mut [u8]);
            match Pin::new(&mut this.inner).poll_read(cx, slice) {
                Poll::Ready(Ok(n)) => {
                    buf.advance(n);
                    Poll::Ready(Ok(()))
                }
                Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
                Poll::Pending => Poll::Pending,
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> hyper::rt::Write for HyperIo<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_close(cx)
    }
}

/// Runs hyper's background futures as glommio tasks on the current core.
#[derive(Clone, Copy, Debug)]
pub struct LocalExec;

impl<F> hyper::rt::Executor<F> for LocalExec
where
    F: Future + 'static,
{
    fn execute(&self, fut: F) {
        glommio::spawn_local(fut).detach();
    }
}
