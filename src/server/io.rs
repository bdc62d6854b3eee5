//! Connection I/O with the server's timeouts built in.
//!
//! [`TimedIo`] wraps a connection's stream and enforces, without a task or allocation of its own:
//! * header timeout (HTTP/1.1): a request head that does not arrive completely in time gets a
//!   `408 Request Timeout` and the connection is closed (hyper itself would close silently);
//! * first-request timeout: a connection that sends nothing after the handshake is closed;
//! * keep-alive idle timeout: no request in flight and nothing received → closed;
//! * send timeout: a peer that stops reading is cut off instead of holding buffers forever.
//!
//! "A request is in flight" comes from [`ConnState`], which the HTTP service updates.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use pin_project_lite::pin_project;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

use crate::http::ConnState;

/// The timeouts one connection runs with.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    pub header: Duration,
    pub idle: Duration,
    pub send: Duration,
    /// HTTP/1.x: send 408 on header timeout. (HTTP/2 has no equivalent; idle rules apply.)
    pub h1: bool,
}

const RESPONSE_408: &[u8] = b"HTTP/1.1 408 Request Timeout\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: 20\r\nConnection: close\r\n\r\n408 Request Timeout\n";

pin_project! {
    /// A stream that enforces [`Timeouts`]; see the module docs.
    pub struct TimedIo<T> {
        #[pin]
        inner: T,
        #[pin]
        read_timer: Sleep,
        #[pin]
        write_timer: Sleep,
        state: Arc<ConnState>,
        timeouts: Timeouts,
        last_activity: Instant,
        // Deadline for the current request head and the request count when it was armed.
        header_deadline: Option<(Instant, u64)>,
        // Nothing received yet on this connection.
        fresh: bool,
        write_armed: bool,
        // Some(n): the 408 is being written, n bytes so far.
        sending_408: Option<usize>,
    }
}

impl<T> TimedIo<T> {
    pub fn new(inner: T, state: Arc<ConnState>, timeouts: Timeouts) -> Self {
        let now = Instant::now();
        TimedIo {
            inner,
            read_timer: tokio::time::sleep_until(now + timeouts.header),
            write_timer: tokio::time::sleep_until(now + timeouts.send),
            state,
            timeouts,
            last_activity: now,
            header_deadline: None,
            fresh: true,
            write_armed: false,
            sending_408: None,
        }
    }

    /// The wrapped stream.
    pub fn get_ref(&self) -> &T {
        &self.inner
    }
}

impl<T: AsyncWrite> TimedIo<T> {
    /// Writes the 408 response, then reports end-of-stream to the reader (hyper), which closes.
    fn poll_send_408(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut this = self.project();
        let mut sent = this.sending_408.unwrap_or(0);
        while sent < RESPONSE_408.len() {
            match ready!(this.inner.as_mut().poll_write(cx, &RESPONSE_408[sent..])) {
                Ok(0) | Err(_) => return Poll::Ready(Ok(())),
                Ok(n) => {
                    sent += n;
                    *this.sending_408 = Some(sent);
                }
            }
        }
        let _ = ready!(this.inner.as_mut().poll_flush(cx));
        let _ = ready!(this.inner.as_mut().poll_shutdown(cx));
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncRead + AsyncWrite> AsyncRead for TimedIo<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.sending_408.is_some() {
            return self.poll_send_408(cx);
        }
        let this = self.as_mut().project();
        let before = buf.filled().len();
        if let Poll::Ready(r) = this.inner.poll_read(cx, buf) {
            if buf.filled().len() > before {
                let now = Instant::now();
                *this.last_activity = now;
                *this.fresh = false;
                if this.timeouts.h1
                    && this.header_deadline.is_none()
                    && this.state.active.load(Ordering::Relaxed) == 0
                {
                    *this.header_deadline = Some((
                        now + this.timeouts.header,
                        this.state.started.load(Ordering::Relaxed),
                    ));
                }
            }
            return Poll::Ready(r);
        }
        let mut this = self.as_mut().project();
        if let Some((_, started)) = *this.header_deadline {
            if this.state.started.load(Ordering::Relaxed) != started {
                *this.header_deadline = None;
            }
        }
        let deadline = if let Some((d, _)) = *this.header_deadline {
            d
        } else if *this.fresh {
            *this.last_activity + this.timeouts.header.min(this.timeouts.idle)
        } else if this.state.active.load(Ordering::Relaxed) == 0 {
            *this.last_activity + this.timeouts.idle
        } else {
            return Poll::Pending;
        };
        if this.read_timer.deadline() != deadline {
            this.read_timer.as_mut().reset(deadline);
        }
        ready!(this.read_timer.as_mut().poll(cx));
        if this.header_deadline.is_some() {
            tracing::debug!("request header timeout: sending 408");
            *this.sending_408 = Some(0);
            return self.poll_send_408(cx);
        }
        // Idle (or nothing ever sent): end of stream; hyper closes the connection.
        tracing::trace!("idle timeout");
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncWrite> TimedIo<T> {
    /// Common handling of a write-side poll: arms the send timer while the peer is not reading.
    fn on_write<R>(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        res: Poll<io::Result<R>>,
    ) -> Poll<io::Result<R>> {
        let mut this = self.project();
        match res {
            Poll::Ready(r) => {
                *this.write_armed = false;
                // Keep-alive idleness counts from the end of the last response too.
                *this.last_activity = Instant::now();
                Poll::Ready(r)
            }
            Poll::Pending => {
                if !*this.write_armed {
                    *this.write_armed = true;
                    this.write_timer
                        .as_mut()
                        .reset(Instant::now() + this.timeouts.send);
                }
                ready!(this.write_timer.as_mut().poll(cx));
                Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "send timeout: the peer stopped reading",
                )))
            }
        }
    }
}

impl<T: AsyncRead + AsyncWrite> AsyncWrite for TimedIo<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let res = self.as_mut().project().inner.poll_write(cx, buf);
        self.on_write(cx, res)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let res = self.as_mut().project().inner.poll_write_vectored(cx, bufs);
        self.on_write(cx, res)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let res = self.as_mut().project().inner.poll_flush(cx);
        self.on_write(cx, res)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let res = self.as_mut().project().inner.poll_shutdown(cx);
        self.on_write(cx, res)
    }
}
