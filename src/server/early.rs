//! A TLS stream that serves requests from TLS 1.3 early data (0-RTT, RFC 8446 §2.3) before the
//! handshake is complete, for sites that opt in with `early_data = true`.
//!
//! Hand-rolled because tokio-rustls's server stream cannot do it: its `Accept` future only
//! resolves once the client's Finished is in, one round trip after the early data arrived, and
//! its stream cannot be built from a `ServerConnection` mid-handshake. This stream is the same
//! loop over rustls's `ServerConnection` (read_tls / process_new_packets / write_tls), with one
//! difference: reads return the early data as soon as it is decrypted, and writes go out as
//! 0.5-RTT data (`send_half_rtt_data`), so a resumed client gets its response in one round trip.
//!
//! What makes this safe is decided elsewhere:
//! - Replay: the site's tickets are single-use server-side sessions (rustls only accepts early
//!   data with stateful resumption, and takes the session out of the cache when it is used), so
//!   a replayed ClientHello finds no session and its early data is skipped.
//! - Only safe methods are served while [`ConnState::early`] is set; others get 425 Too Early
//!   (RFC 8470), see `HttpsService`.

use std::io::{self, BufRead, Read, Write};
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use rustls::ServerConnection;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use super::conn::SyncIo;
use crate::http::ConnState;

/// A server-side TLS stream whose reads start with the client's early data.
pub struct EarlyTls {
    tcp: TcpStream,
    conn: ServerConnection,
    state: Arc<ConnState>,
    /// Early data taken out of rustls and not read yet (at most `max_early_data_size`).
    early: Vec<u8>,
    /// The peer closed its side (TCP EOF or close_notify).
    eof: bool,
}

impl EarlyTls {
    /// Wraps a connection whose ClientHello has been processed (`Accepted::into_connection`).
    pub fn new(tcp: TcpStream, conn: ServerConnection, state: Arc<ConnState>) -> Self {
        EarlyTls {
            tcp,
            conn,
            state,
            early: Vec::new(),
            eof: false,
        }
    }

    pub fn connection(&self) -> &ServerConnection {
        &self.conn
    }

    /// Runs the handshake until the application can start: the handshake is complete, or the
    /// client's early data has arrived (its Finished comes later and is read with the requests).
    pub async fn start(&mut self) -> io::Result<()> {
        // Records that came in with the ClientHello (the early data, typically) are in
        // rustls's buffer already: the socket may have nothing more to say until our answer.
        self.process()?;
        std::future::poll_fn(|cx| loop {
            ready!(self.poll_send(cx))?;
            self.take_early_data();
            if !self.conn.is_handshaking() || !self.early.is_empty() {
                self.note_progress();
                return Poll::Ready(Ok(()));
            }
            if self.eof {
                return Poll::Ready(Err(io::ErrorKind::UnexpectedEof.into()));
            }
            ready!(self.poll_receive(cx))?;
        })
        .await
    }

    /// Moves the early data rustls decrypted into our buffer (it must be read before any
    /// 1-RTT data: it comes first in the stream).
    fn take_early_data(&mut self) {
        if let Some(mut early) = self.conn.early_data() {
            // Reading from an in-memory buffer cannot fail.
            let _ = early.read_to_end(&mut self.early);
        }
    }

    /// Keeps [`ConnState::early`] true while the handshake is incomplete: whatever the
    /// application reads then is early data, which an attacker may have replayed. It is
    /// cleared once the client's Finished has been verified: from then on the peer is known
    /// to hold the session's keys.
    fn note_progress(&self) {
        self.state
            .early
            .store(self.conn.is_handshaking(), Ordering::Relaxed);
    }

    /// Reads TLS records from the socket and processes them. Ready when some were processed or
    /// the peer closed.
    fn poll_receive(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            match self.conn.read_tls(&mut SyncIo(&self.tcp)) {
                Ok(0) => {
                    self.eof = true;
                    return Poll::Ready(Ok(()));
                }
                Ok(_) => break,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    ready!(self.tcp.poll_read_ready(cx))?;
                }
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
        Poll::Ready(self.process())
    }

    /// Processes the records rustls holds; a protocol error sends rustls's alert first.
    fn process(&mut self) -> io::Result<()> {
        match self.conn.process_new_packets() {
            Ok(st) => {
                if st.peer_has_closed() {
                    self.eof = true;
                }
                self.take_early_data();
                self.note_progress();
                Ok(())
            }
            Err(e) => {
                // Best effort: the alert rustls queued.
                let _ = self.conn.write_tls(&mut SyncIo(&self.tcp));
                Err(io::Error::new(io::ErrorKind::InvalidData, e))
            }
        }
    }

    /// Writes everything rustls has queued (handshake messages, tickets, records).
    fn poll_send(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.conn.wants_write() {
            match self.conn.write_tls(&mut SyncIo(&self.tcp)) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    ready!(self.tcp.poll_write_ready(cx))?;
                }
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncRead for EarlyTls {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if !this.early.is_empty() {
                // At most MAX_EARLY_DATA bytes, usually read at once: moving the rest is cheap.
                let n = buf.remaining().min(this.early.len());
                buf.put_slice(&this.early[..n]);
                this.early.drain(..n);
                if this.early.is_empty() {
                    this.early = Vec::new();
                }
                return Poll::Ready(Ok(()));
            }
            if !this.conn.is_handshaking() {
                let mut reader = this.conn.reader();
                match reader.fill_buf() {
                    Ok(data) => {
                        let n = buf.remaining().min(data.len());
                        buf.put_slice(&data[..n]);
                        reader.consume(n);
                        return Poll::Ready(Ok(()));
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => return Poll::Ready(Err(e)),
                }
            }
            if this.eof {
                if this.conn.is_handshaking() {
                    return Poll::Ready(Err(io::ErrorKind::UnexpectedEof.into()));
                }
                // A TCP close without close_notify: end of stream, as tokio-rustls reports it.
                return Poll::Ready(Ok(()));
            }
            // Handshake messages (and tickets) go out before waiting for the peer.
            ready!(this.poll_send(cx))?;
            ready!(this.poll_receive(cx))?;
            // New records may have queued writes (e.g. the session ticket after Finished).
            if this.conn.wants_write() {
                let _ = this.poll_send(cx)?;
            }
        }
    }
}

impl AsyncWrite for EarlyTls {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.poll_write_vectored(cx, &[io::IoSlice::new(buf)])
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if bufs.iter().all(|b| b.is_empty()) {
            return Poll::Ready(Ok(0));
        }
        // Records already queued go first: rustls's buffers stay bounded.
        ready!(this.poll_send(cx))?;
        let n = this.conn.writer().write_vectored(bufs)?;
        if n == 0 {
            // Everything queued was sent and rustls still takes nothing: it cannot send
            // application data yet, which `start` rules out.
            return Poll::Ready(Err(io::Error::other(
                "TLS connection cannot send application data yet",
            )));
        }
        // Push what was just encrypted; a full socket leaves it queued for the next call
        // (with this task registered for writability).
        if let Poll::Ready(Err(e)) = this.poll_send(cx) {
            return Poll::Ready(Err(e));
        }
        Poll::Ready(Ok(n))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_mut().poll_send(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.conn.send_close_notify();
        ready!(this.poll_send(cx))?;
        Pin::new(&mut this.tcp).poll_shutdown(cx)
    }
}
