//! Coalescing the end of a TLS handshake with the first response.
//!
//! After a full TLS 1.3 handshake the server has two things to send: the session ticket(s),
//! written as soon as the client's Finished is processed, and the first response (HTTP/1.1) or
//! SETTINGS frame (HTTP/2) a moment later. Sent apart they cost two `writev`s and two TCP
//! segments; on loopback and on busy servers the segment's receive processing is charged to
//! the sender too. [`CorkIo`] holds what the server writes after its first flight has been
//! answered and sends it with the next write once [`CorkIo::release`] is called, like
//! `TCP_CORK` but without its syscalls and its 200 ms timer.
//!
//! Nothing is held while the handshake waits for the peer: until the release, a read that would
//! block first sends what is held (so an unusual handshake, e.g. one with a HelloRetryRequest,
//! still completes). After the release, what is held goes with the next write, shutdown,
//! [`CorkIo::send_held`] or drop, and not with a flush or a read that would block: hyper flushes
//! and reads ahead (for the next request) before it writes the response, which sent the ticket
//! alone. The caller sends what is held before it waits for a first request (the connection
//! code does, for HTTP/1.1: a TLS 1.2 client without False Start waits for our Finished);
//! with a request in hand, the response follows.
//!
//! The same holding ends a connection in one segment: when the service marks a response as
//! the connection's last and complete in memory ([`ConnState::closing`]: HTTP/1.x with
//! `Connection: close`, as one-shot clients send), its records are held too and leave with the
//! `close_notify` at the shutdown that follows, instead of response and `close_notify` in two
//! `writev`s and two segments. A flush does not send them (hyper flushes before it shuts down);
//! should the connection wait for the peer instead, a read that would block sends them first.
//! A shutdown marks the connection closing as well (`server::io::TimedIo`), so the lone
//! `close_notify` after the peer's own close is held the same way. At the shutdown, what is
//! held is sent with `MSG_MORE` and the FIN rides on it (`poll_send_more`).

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use crate::http::ConnState;

/// Most bytes held; a larger write is sent at once (with what is held).
const MAX_HELD: usize = 16 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Writes go straight out; `wrote` once the server flight was written.
    Direct { wrote: bool },
    /// The peer answered the server's flight: writes are held.
    Holding,
    /// After the release, the connection's last response is held for its `close_notify`.
    Closing,
    /// Released: what is held goes out with the next write (or shutdown, `send_held`, drop).
    Released,
    /// Everything held was sent; plain pass-through from now on.
    Done,
}

/// A TCP stream that holds the server's post-handshake writes until the first response.
#[derive(Debug)]
pub struct CorkIo {
    inner: TcpStream,
    held: Vec<u8>,
    /// Bytes of `held` already sent.
    sent: usize,
    state: State,
    /// The connection's request state (from the release on): says when a response is the last.
    conn: Option<Arc<ConnState>>,
}

impl CorkIo {
    /// Wraps an accepted connection: writes go straight out until the peer answers the
    /// server's first flight.
    pub fn new(inner: TcpStream) -> Self {
        CorkIo {
            inner,
            held: Vec::new(),
            sent: 0,
            state: State::Direct { wrote: false },
            conn: None,
        }
    }

    /// The socket.
    pub fn get_ref(&self) -> &TcpStream {
        &self.inner
    }

    /// The handshake is over: what is held goes out with the next write. `conn` tells which
    /// response is the connection's last ([`ConnState::closing`]).
    pub fn release(&mut self, conn: Arc<ConnState>) {
        self.conn = Some(conn);
        if self.held.is_empty() {
            self.state = State::Done;
        } else {
            self.state = State::Released;
        }
    }

    /// Sends what is held now (before the connection waits for the peer).
    pub async fn send_held(&mut self) -> io::Result<()> {
        std::future::poll_fn(|cx| self.poll_send_held(cx, false)).await
    }

    /// Sends what is held. `last`: a shutdown follows at once, so the tail is sent with
    /// `MSG_MORE` (see [`poll_send_more`]) and the FIN leaves in the same segment.
    fn poll_send_held(&mut self, cx: &mut Context<'_>, last: bool) -> Poll<io::Result<()>> {
        while self.sent < self.held.len() {
            let rest = &self.held[self.sent..];
            let n = if last {
                ready!(poll_send_more(&self.inner, cx, rest))?
            } else {
                ready!(Pin::new(&mut self.inner).poll_write(cx, rest))?
            };
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.sent += n;
        }
        self.held = Vec::new();
        self.sent = 0;
        if self.state != (State::Direct { wrote: true }) {
            self.state = State::Done;
        }
        Poll::Ready(Ok(()))
    }

    /// Whether `bufs` can be held beside what already is.
    fn fits(&self, bufs: &[IoSlice<'_>]) -> bool {
        self.held.len() + bufs.iter().map(|b| b.len()).sum::<usize>() <= MAX_HELD
    }

    /// After the release: the service marked the response being written as the connection's
    /// last, to be held for its `close_notify` (see the module docs).
    fn last_response(&self) -> bool {
        self.conn
            .as_ref()
            .is_some_and(|c| c.closing.load(Ordering::Relaxed))
    }

    /// Writes `bufs` after what is held, in one `writev`; returns how many bytes of `bufs` went.
    fn poll_write_after_held(
        &mut self,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        loop {
            let rest = self.held.len() - self.sent;
            if rest == 0 {
                ready!(self.poll_send_held(cx, false))?;
                return Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
            }
            let mut slices = Vec::with_capacity(bufs.len() + 1);
            slices.push(IoSlice::new(&self.held[self.sent..]));
            slices.extend(bufs.iter().map(|b| IoSlice::new(b)));
            let n = ready!(Pin::new(&mut self.inner).poll_write_vectored(cx, &slices))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            if n < rest {
                self.sent += n;
                continue;
            }
            self.held = Vec::new();
            self.sent = 0;
            self.state = State::Done;
            let user = n - rest;
            if user > 0 || bufs.iter().all(|b| b.is_empty()) {
                return Poll::Ready(Ok(user));
            }
        }
    }

    fn hold(&mut self, bufs: &[IoSlice<'_>]) -> usize {
        let mut n = 0;
        for b in bufs {
            self.held.extend_from_slice(b);
            n += b.len();
        }
        n
    }
}

impl AsyncRead for CorkIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if this.state == (State::Direct { wrote: true }) && buf.filled().len() > before {
                    this.state = State::Holding;
                }
                Poll::Ready(Ok(()))
            }
            Poll::Pending
                if matches!(this.state, State::Holding | State::Closing)
                    && this.sent < this.held.len() =>
            {
                // Never wait for the peer with something held for it: during the handshake,
                // or when a response marked as the last was not followed by a shutdown.
                match this.poll_send_held(cx, false) {
                    Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
                    _ => Poll::Pending,
                }
            }
            other => other,
        }
    }
}

impl AsyncWrite for CorkIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.poll_write_vectored(cx, &[IoSlice::new(buf)])
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        match this.state {
            State::Direct { .. } => {
                let n = ready!(Pin::new(&mut this.inner).poll_write_vectored(cx, bufs))?;
                this.state = State::Direct { wrote: true };
                Poll::Ready(Ok(n))
            }
            State::Holding if this.fits(bufs) => Poll::Ready(Ok(this.hold(bufs))),
            State::Released | State::Done | State::Closing
                if this.last_response() && this.fits(bufs) =>
            {
                this.state = State::Closing;
                Poll::Ready(Ok(this.hold(bufs)))
            }
            State::Holding | State::Released | State::Closing => {
                this.poll_write_after_held(cx, bufs)
            }
            State::Done => Pin::new(&mut this.inner).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // What is held waits for the next write (see the module docs).
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_send_held(cx, true))?;
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
}

/// One `send` of `buf` with `MSG_MORE`, for bytes a shutdown follows at once: the kernel
/// queues the last partial segment instead of sending it, and the shutdown's FIN is set on
/// that queued segment (`tcp_send_fin` marks an unsent tail), which then leaves as one
/// segment: the response, `close_notify` and FIN in one packet instead of two. Full segments
/// go out as usual; a close instead of the shutdown pushes the tail too. (Neither tokio nor
/// socket2's stream type take send flags; rustix's `send` is the plain system call.)
fn poll_send_more(tcp: &TcpStream, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
    use rustix::net::SendFlags;
    loop {
        ready!(tcp.poll_write_ready(cx))?;
        let sent = tcp.try_io(tokio::io::Interest::WRITABLE, || {
            rustix::net::send(tcp, buf, SendFlags::MORE | SendFlags::NOSIGNAL)
                .map_err(io::Error::from)
        });
        match sent {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            other => return Poll::Ready(other),
        }
    }
}

impl Drop for CorkIo {
    fn drop(&mut self) {
        // A handshake that failed after the peer's answer may have its alert held: one
        // non-blocking attempt to send it.
        if self.sent < self.held.len() {
            let _ = self.inner.try_write(&self.held[self.sent..]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn pair() -> (CorkIo, TcpStream) {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let (server, _) = l.accept().await.unwrap();
        (CorkIo::new(server), client)
    }

    /// The server's flight, answered by the peer (`finished`, read by the server): what the
    /// server writes next is held.
    async fn answered(s: &mut CorkIo, c: &mut TcpStream) {
        s.write_all(b"flight").await.unwrap();
        s.flush().await.unwrap();
        c.write_all(b"finished").await.unwrap();
        let mut buf = [0u8; 8];
        s.read_exact(&mut buf).await.unwrap();
    }

    /// Reads what arrives within 200 ms.
    async fn arrived(c: &mut TcpStream) -> Vec<u8> {
        let mut out = Vec::new();
        let mut buf = [0u8; 256];
        while let Ok(Ok(n)) =
            tokio::time::timeout(Duration::from_millis(200), c.read(&mut buf)).await
        {
            if n == 0 {
                break;
            }
            out.extend_from_slice(&buf[..n]);
        }
        out
    }

    /// Server flight, the peer's answer, then the handshake's last writes: held until the
    /// release and sent with the next write, in order.
    #[tokio::test]
    async fn writes_after_the_answer_go_out_with_the_first_response() {
        let (mut s, mut c) = pair().await;
        answered(&mut s, &mut c).await;
        assert_eq!(arrived(&mut c).await, b"flight");
        s.write_all(b"ticket").await.unwrap();
        s.flush().await.unwrap();
        assert_eq!(arrived(&mut c).await, b"", "held while the handshake ends");
        s.release(Arc::default());
        // hyper flushes and reads ahead before it writes the response
        s.flush().await.unwrap();
        let mut one = [0u8; 1];
        let ahead = tokio::time::timeout(Duration::from_millis(100), s.read(&mut one)).await;
        assert!(ahead.is_err(), "nothing to read yet");
        assert_eq!(arrived(&mut c).await, b"", "held until the response");
        s.write_all(b"response").await.unwrap();
        assert_eq!(arrived(&mut c).await, b"ticketresponse");
        s.write_all(b"more").await.unwrap();
        assert_eq!(arrived(&mut c).await, b"more");
    }

    /// Nothing stays held while the connection waits for the peer: a read that would block
    /// sends it (a handshake with a second client flight), and so does send_held.
    #[tokio::test]
    async fn nothing_is_held_while_waiting_for_the_peer() {
        let (mut s, mut c) = pair().await;
        s.write_all(b"hrr").await.unwrap();
        c.write_all(b"hello2").await.unwrap();
        let mut buf = [0u8; 6];
        s.read_exact(&mut buf).await.unwrap();
        s.write_all(b"flight").await.unwrap();
        let mut one = [0u8; 1];
        let waiting = tokio::time::timeout(Duration::from_millis(100), s.read(&mut one)).await;
        assert!(waiting.is_err(), "nothing to read yet");
        assert_eq!(arrived(&mut c).await, b"hrrflight");

        let (mut s, mut c) = pair().await;
        answered(&mut s, &mut c).await;
        s.write_all(b"finished").await.unwrap();
        s.release(Arc::default());
        s.send_held().await.unwrap();
        assert_eq!(arrived(&mut c).await, b"flightfinished");
    }

    /// The connection's last response (marked by the service) waits for the close_notify and
    /// leaves with it at the shutdown; a flush does not send it.
    #[tokio::test]
    async fn the_last_response_leaves_with_the_close_notify() {
        let (mut s, mut c) = pair().await;
        answered(&mut s, &mut c).await;
        s.write_all(b"ticket").await.unwrap();
        let conn = Arc::new(ConnState::default());
        s.release(conn.clone());
        conn.closing.store(true, Ordering::Relaxed);
        s.write_all(b"response").await.unwrap();
        s.flush().await.unwrap();
        s.write_all(b"close_notify").await.unwrap();
        assert_eq!(arrived(&mut c).await, b"flight", "held until the shutdown");
        s.shutdown().await.unwrap();
        // everything, then the end of the stream (arrived stops at EOF)
        assert_eq!(arrived(&mut c).await, b"ticketresponseclose_notify");
    }

    /// A response marked as the last but followed by a wait for the peer (the connection
    /// stayed open after all) is sent before the wait; an unmarked one goes out at once.
    #[tokio::test]
    async fn a_last_response_without_shutdown_is_not_stuck() {
        let (mut s, mut c) = pair().await;
        let conn = Arc::new(ConnState::default());
        s.release(conn.clone());
        conn.closing.store(true, Ordering::Relaxed);
        s.write_all(b"response").await.unwrap();
        s.flush().await.unwrap();
        let mut one = [0u8; 1];
        let waiting = tokio::time::timeout(Duration::from_millis(100), s.read(&mut one)).await;
        assert!(waiting.is_err(), "nothing to read yet");
        assert_eq!(arrived(&mut c).await, b"response");
        conn.closing.store(false, Ordering::Relaxed);
        s.write_all(b"next").await.unwrap();
        assert_eq!(arrived(&mut c).await, b"next");
        // too large to hold: sent at once
        conn.closing.store(true, Ordering::Relaxed);
        let big = vec![b'x'; MAX_HELD + 1];
        s.write_all(&big).await.unwrap();
        let got = arrived(&mut c).await;
        assert_eq!(got.len(), big.len());
    }

    /// A connection dropped with something held (an alert) still tries to send it.
    #[tokio::test]
    async fn held_bytes_are_attempted_on_drop() {
        let (mut s, mut c) = pair().await;
        answered(&mut s, &mut c).await;
        s.write_all(b"alert").await.unwrap();
        drop(s);
        assert_eq!(arrived(&mut c).await, b"flightalert");
    }
}
