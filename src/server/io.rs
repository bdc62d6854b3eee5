//! Connection I/O with the server's timeouts built in.
//!
//! [`TimedIo`] wraps a connection's stream and enforces, without a task of its own:
//! * header timeout (HTTP/1.1): a request head that does not arrive completely in time gets a
//!   `408 Request Timeout` and the connection is closed (hyper itself would close silently);
//! * first-request timeout: a connection that sends nothing after the handshake is closed;
//! * keep-alive idle timeout: no request in flight and nothing received → closed (HTTP/1.1:
//!   the read ends as if the peer had closed; HTTP/2: it fails with [`io::ErrorKind::TimedOut`],
//!   and the connection sends GOAWAY before it closes, see [`super::h2`]);
//! * send timeout: a peer that stops reading is cut off instead of holding buffers forever.
//!
//! "A request is in flight" comes from [`ConnState`], which the HTTP service updates.
//!
//! Timers are lazy, as in nginx: activity only records a coarse timestamp (a vDSO read of
//! `CLOCK_MONOTONIC_COARSE`, no timer-wheel update); the timer stays armed at its old deadline,
//! and when it fires early the real deadline is computed and the timer re-armed. A busy
//! keep-alive connection therefore touches the timer wheel about once per idle period instead
//! of twice per request.

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

use crate::clock::coarse_ms;

/// A lingering close (as nginx's `lingering_close`): once the server has closed its side after
/// refusing a client (an alert, an error GOAWAY) or ending a connection, what the client still
/// sends is read and dropped for this long and up to this many bytes, so that the kernel does
/// not answer that input with a reset that can discard what the server said last. Used by
/// `conn::linger_close` (TCP, after a ClientHello refusal) and `h2::Conn::poll_linger`.
pub(super) const LINGER: std::time::Duration = std::time::Duration::from_secs(1);
pub(super) const LINGER_BYTES: usize = 256 * 1024;
use crate::http::ConnState;

/// The timeouts one connection runs with.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    pub header: Duration,
    pub idle: Duration,
    pub send: Duration,
    /// HTTP/1.x: send 408 on header timeout. (HTTP/2 has no equivalent; idle rules apply, and
    /// an idle read fails with `TimedOut` instead of ending.)
    pub h1: bool,
}

impl Timeouts {
    /// The configured limits, for an HTTP/1.x (`h1`) or HTTP/2 connection.
    pub fn new(limits: &crate::config::model::Limits, h1: bool) -> Self {
        Timeouts {
            header: limits.header_timeout,
            idle: limits.idle_timeout,
            send: limits.send_timeout,
            h1,
        }
    }
}

const RESPONSE_408: &[u8] = b"HTTP/1.1 408 Request Timeout\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: 20\r\nConnection: close\r\n\r\n408 Request Timeout\n";

fn ms(d: Duration) -> u64 {
    d.as_millis().min(u64::MAX as u128) as u64
}

/// What the read-side deadline is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Due {
    /// A request head started arriving and is not complete (HTTP/1.1).
    Header(u64),
    /// Nothing in flight: keep-alive idle (or nothing received at all yet).
    Idle(u64),
    /// A response is in flight (its end is not signalled here): look again later.
    Recheck(u64),
}

impl Due {
    fn at(self) -> u64 {
        match self {
            Due::Header(t) | Due::Idle(t) | Due::Recheck(t) => t,
        }
    }
}

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
        // Coarse ms of the last byte received or sent.
        last_activity: u64,
        // When the current request head started (coarse ms) and the request count then.
        header_started: Option<(u64, u64)>,
        // Nothing received yet on this connection.
        fresh: bool,
        // Coarse ms the read timer is armed for (None: not armed).
        read_armed: Option<u64>,
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
            read_timer: tokio::time::sleep_until(now),
            write_timer: tokio::time::sleep_until(now),
            state,
            timeouts,
            last_activity: coarse_ms(),
            header_started: None,
            fresh: true,
            read_armed: None,
            write_armed: false,
            sending_408: None,
        }
    }

    /// The wrapped stream.
    pub fn get_ref(&self) -> &T {
        &self.inner
    }

    /// The wrapped stream, mutably.
    pub fn inner_mut(self: Pin<&mut Self>) -> Pin<&mut T> {
        self.project().inner
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
                crate::ops::metrics::bytes_in(buf.filled().len() - before); // metrics
                let now = coarse_ms();
                *this.last_activity = now;
                *this.fresh = false;
                if this.timeouts.h1
                    && this.header_started.is_none()
                    && this.state.active.load(Ordering::Relaxed) == 0
                {
                    *this.header_started = Some((now, this.state.started.load(Ordering::Relaxed)));
                }
            }
            return Poll::Ready(r);
        }
        loop {
            let mut this = self.as_mut().project();
            if let Some((_, started)) = *this.header_started {
                if this.state.started.load(Ordering::Relaxed) != started {
                    *this.header_started = None;
                }
            }
            let due = if let Some((t, _)) = *this.header_started {
                Due::Header(t + ms(this.timeouts.header))
            } else if *this.fresh {
                Due::Idle(*this.last_activity + ms(this.timeouts.header.min(this.timeouts.idle)))
            } else if this.state.active.load(Ordering::Relaxed) == 0 {
                Due::Idle(*this.last_activity + ms(this.timeouts.idle))
            } else {
                // A response is being produced (the write side has its own timer). Nothing
                // wakes this read when it ends, so look again after an idle period; the
                // connection then closes at most one idle period late.
                Due::Recheck(coarse_ms() + ms(this.timeouts.idle))
            };
            // Arm only when the timer would fire too late (or is not armed); firing early is
            // handled below by re-arming.
            if this
                .read_armed
                .is_none_or(|armed| armed > due.at() && !matches!(due, Due::Recheck(_)))
            {
                let now = coarse_ms();
                let wait = Duration::from_millis(due.at().saturating_sub(now));
                this.read_timer.as_mut().reset(Instant::now() + wait);
                *this.read_armed = Some(due.at());
            }
            ready!(this.read_timer.as_mut().poll(cx));
            *this.read_armed = None;
            if coarse_ms() < due.at() || matches!(due, Due::Recheck(_)) {
                continue; // fired for an older deadline, or time to look again: re-arm
            }
            if let Due::Header(_) = due {
                crate::limited!(HEADER_TIMEOUT, debug, "request header timeout: sending 408");
                *this.sending_408 = Some(0);
                return self.poll_send_408(cx);
            }
            // Idle (or nothing ever sent): end of stream; hyper closes the connection. Our HTTP/2
            // connection says goodbye first (GOAWAY): it needs to know why the read ended.
            tracing::trace!("idle timeout");
            if !this.timeouts.h1 {
                return Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, "idle timeout")));
            }
            return Poll::Ready(Ok(()));
        }
    }
}

impl<T: AsyncWrite> TimedIo<T> {
    /// Common handling of a write-side poll: arms the send timer while the peer is not reading.
    /// `progress`: bytes were written (a flush with nothing to send is no activity: hyper
    /// flushes on every wake-up, which must not keep an idle connection alive).
    fn on_write<R>(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        res: Poll<io::Result<R>>,
        progress: bool,
    ) -> Poll<io::Result<R>> {
        let mut this = self.project();
        match res {
            Poll::Ready(r) => {
                *this.write_armed = false;
                if progress {
                    // Keep-alive idleness counts from the end of the last response too.
                    *this.last_activity = coarse_ms();
                }
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
        let progress = matches!(res, Poll::Ready(Ok(n)) if n > 0);
        if let Poll::Ready(Ok(n)) = res {
            crate::ops::metrics::bytes_out(n); // metrics
        }
        self.on_write(cx, res, progress)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let res = self.as_mut().project().inner.poll_write_vectored(cx, bufs);
        let progress = matches!(res, Poll::Ready(Ok(n)) if n > 0);
        if let Poll::Ready(Ok(n)) = res {
            crate::ops::metrics::bytes_out(n); // metrics
        }
        self.on_write(cx, res, progress)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let res = self.as_mut().project().inner.poll_flush(cx);
        self.on_write(cx, res, false)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // Nothing but the TLS `close_notify` follows: it can wait for the shutdown and leave
        // with the FIN (`server::cork`), also when the peer ended the connection.
        self.state.closing.store(true, Ordering::Relaxed);
        let res = self.as_mut().project().inner.poll_shutdown(cx);
        self.on_write(cx, res, false)
    }
}

/// The budget of the 408 lines (any client can cause them; see [`crate::ops::limit`]).
static HEADER_TIMEOUT: crate::ops::limit::LineLimit =
    crate::ops::limit::LineLimit::new("request header timeout", crate::ops::limit::report_to_log);
