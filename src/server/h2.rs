//! Our HTTP/2 connection (RFC 9113), driven over h2's frame codec.
//!
//! hyper's HTTP/2 server runs every stream as its own future with its own waker, behind h2's
//! shared stream store (an `Arc<Mutex>` locked per operation, per-stream send queues and a
//! priority scheduler). Most of our answers need none of that: a request for a static file,
//! a fixed response or a redirect is answered synchronously from memory or the page cache
//! ([`crate::http`], [`crate::http::Reply::Ready`]). So this connection is one state machine
//! on one task: each HEADERS frame read is answered at once when its reply is ready, its
//! HEADERS and DATA frames go into the write buffer, and everything answered during one read
//! leaves in one flush. A body larger than the flow-control windows (a large file) keeps a
//! stream open; it is sent as the client's WINDOW_UPDATEs allow, round robin.
//!
//! Replies that take time (the reverse proxy, [`crate::http::Reply::Later`]) are futures kept
//! with their stream and polled by this same task with the connection's waker, beside the
//! ready ones (no task or lock per stream). A request body goes to its handler through a
//! [`BodyPipe`]: DATA is pushed as it arrives, and its window (the stream's and the
//! connection's) is given back only as the handler takes the data, so the client's sending
//! is paced by the backend's reading and a stream buffers at most its window. A body nobody
//! reads (a static file answered to a POST) is counted and dropped, its window given back at
//! once. Response trailers (gRPC's status) end a stream as a HEADERS frame; request trailers
//! reach the handler's body. Extended CONNECT (RFC 8441, announced in SETTINGS) carries
//! WebSockets: the request body and the response body are the tunnel's two directions.
//!
//! What is h2's and what is ours: h2's [`Codec`] reads and writes frames (frame sizes, padding,
//! HPACK decoding, CONTINUATION assembly and its flood limit, header-list size, and the field
//! checks of RFC 9113 §8.2). Response header blocks are HPACK-encoded by
//! [`super::hpack`], from the response's map by reference (or a cached file's shared head,
//! [`crate::http::Body::Ready`]). This module owns the protocol state: the SETTINGS
//! exchange, stream states and identifiers (§5.1), flow control in both directions (§5.2, §6.9),
//! request validation (§8.3), responses, RST_STREAM and GOAWAY, graceful shutdown, the
//! lingering close that keeps a GOAWAY from being lost to a TCP reset (`Conn::poll_linger`),
//! and limits against abusive peers (refused streams, error resets, empty frames, streams the
//! client resets: "rapid reset", CVE-2023-44487).
//!
//! A response that is complete before the request's body ends is followed by
//! `RST_STREAM(NO_ERROR)` (§8.1).

use std::collections::VecDeque;
use std::future::{poll_fn, Future as _};
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll, Waker};

use bytes::{Bytes, BytesMut};
use futures_util::stream::Stream as _;
use h2::frame::{
    self, Data, Frame, GoAway, Headers, Ping, Pseudo, Reason, Reset, Settings, StreamId,
    WindowUpdate,
};
use h2::Codec;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Request, Response, StatusCode, Version};
use http_body::Body as _;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::sync::watch;

use super::hpack::Encoder as Hpack;
use super::io::{LINGER, LINGER_BYTES};
use crate::http::request::{BodyPipe, RequestBody};
use crate::http::{drop_connection_specific, HttpsService, TrackedBody};
use crate::ops::limit::{report_to_log, LineLimit};

/// Budgets of the lines any client can cause (see [`crate::ops::limit`]).
static H2_GOAWAY: LineLimit = LineLimit::new("HTTP/2 connection error", report_to_log);
static H2_LIMIT: LineLimit = LineLimit::new("HTTP/2 client over a limit", report_to_log);
static H2_RESET: LineLimit = LineLimit::new("HTTP/2 stream error", report_to_log);
static H2_CLIENT_GOAWAY: LineLimit = LineLimit::new("HTTP/2 client GOAWAY", report_to_log);

/// The client connection preface (RFC 9113 §3.4).
const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// The largest flow-control window (RFC 9113 §6.9.1).
const MAX_WINDOW: i64 = (1 << 31) - 1;

/// The largest stream identifier (RFC 9113 §5.1.1).
const MAX_STREAM_ID: u32 = (1 << 31) - 1;

/// The initial window of every stream and of the connection until SETTINGS say otherwise.
const DEFAULT_WINDOW: i64 = 65_535;

/// Frames waiting for room in the codec's write buffer beyond which nothing more is read or
/// produced (the client is not reading: back-pressure instead of unbounded buffering, also
/// against PING and SETTINGS floods, whose answers wait here).
const QUEUE_HIGH: usize = 32;

/// Streams we reset whose late frames are ignored rather than answered (§5.4.2, §6.4): the
/// client may have sent them before it saw the reset.
const RECENT_RESETS: usize = 64;

/// RST_STREAMs we may send for the client's stream errors before the connection is closed
/// with ENHANCE_YOUR_CALM (as hyper's `max_local_error_reset_streams`).
const MAX_ERROR_RESETS: u32 = 256;

/// Empty DATA frames (without END_STREAM) a client may send before ENHANCE_YOUR_CALM: they
/// cost work and carry nothing (CVE-2019-9518).
const MAX_EMPTY_FRAMES: u32 = 1024;

/// Streams the client resets (RST_STREAM) beyond the responses it let complete: twice the
/// SETTINGS_MAX_CONCURRENT_STREAMS, at least this many. See [`Conn::on_client_reset`].
const MIN_RESET_BUDGET: u32 = 128;

/// PING and SETTINGS acknowledgements that may wait in our queue, behind a full codec buffer and
/// socket, before a client that sends more of them is closed with ENHANCE_YOUR_CALM: one that
/// floods control frames and reads none of the answers (Netty's
/// `maxOutstandingControlFrames`), instead of leaving it to the send timeout. (Over TLS the
/// stream usually stops reading earlier, while its own output waits for the socket: then the
/// send timeout ends the connection.)
const MAX_QUEUED_ACKS: usize = 16;

/// The payload of the PING sent with the first GOAWAY of a graceful shutdown.
const GRACEFUL_PING: [u8; 8] = *b"shutdown";

/// How long a graceful shutdown waits for that PING's answer before the final GOAWAY.
const GRACEFUL_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

/// The connection's limits, from the configuration.
#[derive(Debug, Clone, Copy)]
pub struct H2Limits {
    pub max_concurrent_streams: u32,
    /// Receive window per stream (SETTINGS_INITIAL_WINDOW_SIZE).
    pub stream_window: u32,
    /// Receive window of the connection.
    pub connection_window: u32,
    /// SETTINGS_MAX_HEADER_LIST_SIZE (larger header lists get 431).
    pub max_header_list: u32,
    /// How long a response may wait for the client's flow-control window (`limits.send_timeout`)
    /// before the connection is closed with ENHANCE_YOUR_CALM: a client that opens no window
    /// would otherwise hold the response, and the connection, forever.
    pub send_timeout: std::time::Duration,
}

/// A stream whose response is not complete yet: its handler is still working (the reverse
/// proxy), or its body is held back by the flow-control windows or by the body itself. Every
/// other request is answered, and its stream closed, as its HEADERS are read.
struct Stream {
    id: u32,
    /// The client may still send DATA (no END_STREAM yet).
    recv_open: bool,
    /// The request was HEAD.
    head: bool,
    /// Where the request body goes: the handler's [`RequestBody`] (`None`: it did not take
    /// it, or the request has none; DATA is counted and discarded).
    pipe: Option<BodyPipe>,
    /// The handler's answer, or the response body still to send.
    reply: Replying,
    /// A chunk of the body taken from it but not sent yet (flow control).
    pending: Bytes,
    send_window: i64,
    recv_window: i64,
    /// Received DATA not yet given back with a WINDOW_UPDATE.
    recv_unacked: i64,
    /// The request's `content-length`, and the DATA bytes received so far.
    content_length: Option<u64>,
    received: u64,
}

/// Where a stream's response is.
enum Replying {
    /// The handler is still working.
    Waiting(crate::http::Later),
    /// The head is sent; this is the body still to send.
    Body(TrackedBody),
    /// Not started yet (a stream being set up).
    Starting,
}

/// How sending a body went.
enum Sent {
    /// Everything is sent (END_STREAM queued).
    Done,
    /// Waiting: flow control, the write buffer, or the body itself.
    Blocked,
    /// The body failed: the stream was reset.
    Failed,
}

/// One HTTP/2 connection's state; see the module docs.
struct Conn<T> {
    codec: Codec<T, Bytes>,
    svc: HttpsService,
    limits: H2Limits,
    /// Streams with a response body still to send (in no particular order: see
    /// `send_bodies`).
    streams: Vec<Stream>,
    /// Frames that found the codec's buffer full (usually empty and unallocated).
    queue: VecDeque<Frame<Bytes>>,
    /// Response header encoding: the HPACK state, and the buffer blocks are split from
    /// (released with the queue when a flush empties it).
    hpack: Hpack,
    block: BytesMut,
    /// The highest stream id the client has opened.
    last_client: u32,
    /// Send windows: the connection's, and the initial one of each stream (the peer's
    /// SETTINGS_INITIAL_WINDOW_SIZE).
    send_window: i64,
    peer_initial_window: i64,
    max_send_frame: usize,
    /// Connection receive window left, and what was received since the last WINDOW_UPDATE.
    recv_window: i64,
    recv_unacked: i64,
    /// The client's first SETTINGS frame has arrived (it must come first, §3.4).
    got_settings: bool,
    /// Streams reset by us lately (their late frames are ignored).
    recent_resets: VecDeque<u32>,
    error_resets: u32,
    empty_frames: u32,
    /// Streams the client reset, weighted, and responses completed (see
    /// [`Conn::on_client_reset`]).
    client_resets: u32,
    responses: u32,
    /// We sent GOAWAY: streams above this id are ignored; the connection ends when the streams
    /// are done (`error`: it ends as soon as the GOAWAY is written).
    goaway: Option<(u32, bool)>,
    /// The first GOAWAY of a graceful shutdown is sent (see [`Conn::announce_shutdown`]).
    announced: bool,
    /// The client sent GOAWAY (no new streams will come).
    peer_goaway: bool,
    /// No more reading: the client closed its side or the connection failed.
    read_closed: bool,
    io_error: Option<io::Error>,
    /// Our side is closed and the client's input is being dropped: until this timer fires, or
    /// after this many more bytes (see [`Conn::poll_linger`]).
    linger: Option<(Pin<Box<tokio::time::Sleep>>, usize)>,
    /// Armed while a response waits for flow-control window (none is made otherwise); reset
    /// by every WINDOW_UPDATE. See [`H2Limits::send_timeout`].
    window_stall: Option<Pin<Box<tokio::time::Sleep>>>,
}

/// Serves one HTTP/2 connection until it ends. `shutdown` begins a graceful shutdown (GOAWAY,
/// then the streams in flight are finished).
pub async fn serve<T>(
    io: T,
    svc: HttpsService,
    limits: H2Limits,
    shutdown: watch::Receiver<bool>,
) -> io::Result<()>
where
    T: AsyncRead + AsyncWrite + Unpin,
{
    serve_observed(io, svc, limits, shutdown, |_| {}).await
}

/// The state whose size the limits bound, as [`serve_observed`] reports it.
#[doc(hidden)]
#[derive(Debug, Clone, Copy)]
pub struct Footprint {
    /// Frames waiting for room in the codec's write buffer.
    pub queued: usize,
    /// Streams with a response body still to send.
    pub streams: usize,
    /// Streams remembered as reset by us.
    pub recent_resets: usize,
}

/// [`serve`], calling `observe` after every poll of the connection (for the fuzz harness,
/// `crate::fuzzing`, which checks the footprint against the limits).
#[doc(hidden)]
pub async fn serve_observed<T>(
    io: T,
    svc: HttpsService,
    limits: H2Limits,
    mut shutdown: watch::Receiver<bool>,
    mut observe: impl FnMut(Footprint),
) -> io::Result<()>
where
    T: AsyncRead + AsyncWrite + Unpin,
{
    let mut conn = Box::new(Conn::new(io, svc, limits));
    // Our SETTINGS go first, without waiting for the client (§3.4): a TLS 1.2 client waits for
    // our handshake Finished, which the TLS layer holds until our first bytes go out with it.
    // Then the client's preface, read from the stream itself (the codec has read nothing).
    let mut preface = [0u8; PREFACE.len()];
    let start = async {
        poll_fn(|cx| conn.poll_flush_all(cx)).await?;
        conn.codec.get_mut().read_exact(&mut preface).await
    };
    // A shutdown (or a reload) while the preface is on its way does not drop the connection:
    // the client may have sent its first request already. It gets the graceful GOAWAY once
    // the preface is in (bounded by the first-request timeout).
    let mut start = std::pin::pin!(start);
    let mut stopping = false;
    let started = loop {
        tokio::select! {
            r = &mut start => break r,
            r = shutdown.changed(), if !stopping => {
                stopping = true;
                if r.is_err() {
                    return Ok(());
                }
            }
        }
    };
    match started {
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::TimedOut => {
            // Nothing from the client within the first-request timeout.
            conn.idle_close();
            return poll_fn(|cx| conn.poll(cx)).await;
        }
        Err(e) => return Err(e),
    }
    if &preface != PREFACE {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "not an HTTP/2 connection preface",
        ));
    }
    if !stopping {
        let mut poll = poll_fn(|cx| conn.poll_observed(cx, &mut observe));
        tokio::select! {
            r = &mut poll => return r,
            _ = shutdown.changed() => {}
        }
    }
    // Graceful shutdown in two steps (RFC 9113 §6.8): a GOAWAY that still admits every stream,
    // with a PING; once the PING is answered (or after a second), the streams the client
    // opened meanwhile have arrived, and the final GOAWAY names the last one.
    conn.announce_shutdown();
    let mut poll = poll_fn(|cx| conn.poll_observed(cx, &mut observe));
    tokio::select! {
        r = &mut poll => return r,
        _ = tokio::time::sleep(GRACEFUL_WAIT) => {}
    }
    drop(poll);
    conn.go_away(Reason::NO_ERROR, false);
    poll_fn(|cx| conn.poll_observed(cx, &mut observe)).await
}

impl<T: AsyncRead + AsyncWrite + Unpin> Conn<T> {
    fn new(io: T, svc: HttpsService, limits: H2Limits) -> Self {
        let mut codec = Codec::new(io);
        codec.set_max_recv_header_list_size(limits.max_header_list as usize);
        let mut conn = Conn {
            codec,
            svc,
            limits,
            streams: Vec::new(),
            queue: VecDeque::new(),
            hpack: Hpack::new(),
            block: BytesMut::new(),
            last_client: 0,
            send_window: DEFAULT_WINDOW,
            peer_initial_window: DEFAULT_WINDOW,
            max_send_frame: frame::DEFAULT_MAX_FRAME_SIZE as usize,
            recv_window: DEFAULT_WINDOW,
            recv_unacked: 0,
            got_settings: false,
            recent_resets: VecDeque::new(),
            error_resets: 0,
            empty_frames: 0,
            client_resets: 0,
            responses: 0,
            goaway: None,
            announced: false,
            peer_goaway: false,
            read_closed: false,
            io_error: None,
            linger: None,
            window_stall: None,
        };
        let mut settings = Settings::default();
        settings.set_max_concurrent_streams(Some(limits.max_concurrent_streams));
        settings.set_initial_window_size(Some(limits.stream_window));
        settings.set_max_header_list_size(Some(limits.max_header_list));
        // RFC 8441: WebSockets over HTTP/2 (extended CONNECT), for the reverse proxy.
        settings.set_enable_connect_protocol(Some(1));
        conn.queue.push_back(settings.into());
        let extra = i64::from(limits.connection_window) - DEFAULT_WINDOW;
        if extra > 0 {
            conn.queue
                .push_back(WindowUpdate::new(StreamId::zero(), extra as u32).into());
            conn.recv_window += extra;
        }
        conn
    }

    /// Runs the connection: reads and answers frames, sends bodies, flushes.
    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.linger.is_some() {
            return self.poll_linger(cx);
        }
        loop {
            if let Some(e) = self.io_error.take() {
                return Poll::Ready(Err(e));
            }
            let mut progress = self.drain(cx);
            // Read and answer everything that has arrived, while the client reads our answers.
            while !self.read_closed && !self.goaway_error() && self.queue.len() < QUEUE_HIGH {
                match Pin::new(&mut self.codec).poll_next(cx) {
                    Poll::Ready(Some(Ok(frame))) => {
                        progress = true;
                        self.on_frame(frame);
                    }
                    Poll::Ready(Some(Err(e))) => {
                        progress = true;
                        self.on_codec_error(e);
                    }
                    Poll::Ready(None) => {
                        // The client closed its side: nothing more will be asked or acknowledged.
                        progress = true;
                        self.read_closed = true;
                        self.streams.clear();
                    }
                    Poll::Pending => break,
                }
                if self.io_error.is_some() {
                    break;
                }
            }
            if self.io_error.is_some() {
                continue;
            }
            progress |= self.poll_replies(cx);
            progress |= self.give_back_windows(cx);
            progress |= self.send_bodies(cx);
            progress |= self.drain(cx);
            if self.io_error.is_some() {
                continue;
            }
            if !progress && self.poll_window_stall(cx) {
                self.calm_down(b"flow-control window closed past the send timeout");
                continue;
            }
            if self.queue.is_empty() {
                match self.codec.flush(cx) {
                    Poll::Ready(Ok(())) => {}
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Pending => return Poll::Pending,
                }
                if self.done() {
                    if self.read_closed {
                        // The peer is gone or going: a best-effort close.
                        let _ = self.codec.shutdown(cx);
                        return Poll::Ready(Ok(()));
                    }
                    // close_notify and FIN, then the lingering close.
                    if let Err(e) = ready!(self.codec.shutdown(cx)) {
                        return Poll::Ready(Err(e));
                    }
                    self.linger = Some((Box::pin(tokio::time::sleep(LINGER)), LINGER_BYTES));
                    return self.poll_linger(cx);
                }
            }
            if !progress {
                return Poll::Pending;
            }
        }
    }

    /// The lingering close (as nginx's `lingering_close`): the server has said its last (GOAWAY,
    /// TLS close_notify, FIN), and what the client still sends, such as frames it wrote before
    /// it read the GOAWAY, is read and dropped, for [`LINGER`] and [`LINGER_BYTES`] at most,
    /// or until the client closes too. A socket closed with unread input is reset by the
    /// kernel instead (RST): the client's writes fail, and a client that gives up on that, or
    /// whose kernel discards what it had not read yet, loses the GOAWAY (RFC 9113 §6.8, §5.4.1:
    /// the GOAWAY is what tells it which requests were not processed).
    fn poll_linger(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let Some((timer, left)) = &mut self.linger else {
            return Poll::Ready(Ok(()));
        };
        if timer.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Ok(()));
        }
        let mut buf = [0u8; 8192];
        while *left > 0 {
            let mut read = ReadBuf::new(&mut buf);
            match Pin::new(self.codec.get_mut()).poll_read(cx, &mut read) {
                Poll::Ready(Ok(())) if !read.filled().is_empty() => {
                    *left = left.saturating_sub(read.filled().len());
                }
                // The client closed too, or the connection failed: nothing more to wait for.
                Poll::Ready(_) => return Poll::Ready(Ok(())),
                Poll::Pending => return Poll::Pending,
            }
        }
        Poll::Ready(Ok(()))
    }

    fn poll_observed(
        &mut self,
        cx: &mut Context<'_>,
        observe: &mut impl FnMut(Footprint),
    ) -> Poll<io::Result<()>> {
        let r = self.poll(cx);
        observe(Footprint {
            queued: self.queue.len(),
            streams: self.streams.len(),
            recent_resets: self.recent_resets.len(),
        });
        r
    }

    /// Writes out everything queued.
    fn poll_flush_all(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.drain(cx);
        if let Some(e) = self.io_error.take() {
            return Poll::Ready(Err(e));
        }
        if !self.queue.is_empty() {
            return Poll::Pending;
        }
        self.codec.flush(cx)
    }

    /// Whether a response has waited for the client's window for the whole send timeout. The
    /// timer is made when a stream with data to send finds no window, and dropped when none
    /// waits (or a WINDOW_UPDATE came, see [`Conn::on_window_update`]).
    fn poll_window_stall(&mut self, cx: &mut Context<'_>) -> bool {
        let conn_window = self.send_window;
        let blocked = !self.goaway_error()
            && self.streams.iter().any(|s| {
                matches!(s.reply, Replying::Body(_))
                    && !s.pending.is_empty()
                    && (s.send_window <= 0 || conn_window <= 0)
            });
        if !blocked {
            self.window_stall = None;
            return false;
        }
        let timeout = self.limits.send_timeout;
        let timer = self
            .window_stall
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        if timer.as_mut().poll(cx).is_ready() {
            self.window_stall = None;
            return true;
        }
        false
    }

    /// Nothing left to do on this connection.
    fn done(&self) -> bool {
        if self.goaway_error() || self.read_closed {
            return true;
        }
        (self.goaway.is_some() || self.peer_goaway) && self.streams.is_empty()
    }

    fn goaway_error(&self) -> bool {
        matches!(self.goaway, Some((_, true)))
    }

    /// Queues a frame: into the codec's buffer when it has room, else into our queue.
    fn send(&mut self, frame: Frame<Bytes>) {
        if self.queue.is_empty() && self.codec_ready() {
            self.buffer(frame);
        } else {
            self.queue.push_back(frame);
        }
    }

    /// Hands a frame to the codec (which has room: `poll_ready` said so). Returns whether it
    /// took it.
    fn buffer(&mut self, frame: Frame<Bytes>) -> bool {
        match self.codec.buffer(frame) {
            Ok(()) => true,
            Err(e) => {
                self.io_error = Some(io::Error::other(format!("HTTP/2 frame not sent: {e}")));
                false
            }
        }
    }

    /// Whether the codec can take a frame now without waiting (it may flush to make room).
    fn codec_ready(&mut self) -> bool {
        let mut cx = Context::from_waker(Waker::noop());
        match self.codec.poll_ready(&mut cx) {
            Poll::Ready(Ok(())) => true,
            Poll::Ready(Err(e)) => {
                self.io_error = Some(e);
                false
            }
            Poll::Pending => false,
        }
    }

    /// Moves queued frames into the codec while it has room. Returns whether any moved.
    fn drain(&mut self, cx: &mut Context<'_>) -> bool {
        let mut moved = false;
        while !self.queue.is_empty() {
            match self.codec.poll_ready(cx) {
                Poll::Ready(Ok(())) => {}
                Poll::Ready(Err(e)) => {
                    self.io_error = Some(e);
                    return true;
                }
                Poll::Pending => return moved,
            }
            let frame = self.queue.pop_front().expect("queue is not empty");
            if !self.buffer(frame) {
                return true;
            }
            moved = true;
        }
        if self.queue.capacity() > 0 {
            // An idle connection keeps no queue.
            self.queue = VecDeque::new();
        }
        if self.block.capacity() > 0 {
            self.block = BytesMut::new();
        }
        moved
    }

    /// The first step of a graceful shutdown: GOAWAY with the largest stream id (streams on
    /// their way are still served) and a PING whose answer triggers the final GOAWAY.
    fn announce_shutdown(&mut self) {
        if self.goaway.is_some() {
            return;
        }
        self.announced = true;
        self.send(GoAway::new(StreamId::from(MAX_STREAM_ID), Reason::NO_ERROR).into());
        self.send(Ping::new(GRACEFUL_PING).into());
    }

    /// Sends GOAWAY (once). `error`: a connection error; the connection closes once it is
    /// written. Otherwise streams above the last one opened are ignored and the connection
    /// closes when the open ones are done.
    fn go_away(&mut self, reason: Reason, error: bool) {
        self.go_away_with(reason, error, Bytes::new());
    }

    fn go_away_with(&mut self, reason: Reason, error: bool, debug: Bytes) {
        match self.goaway {
            Some((_, true)) => return,
            Some((_, false)) if !error => return,
            _ => {}
        }
        if error {
            if reason != Reason::NO_ERROR {
                crate::limited!(H2_GOAWAY, debug, reason = ?reason, "HTTP/2 connection error: sending GOAWAY");
            }
            self.streams.clear();
            self.queue.clear();
        }
        // The last stream id never goes up (§6.8): streams opened after an earlier GOAWAY were
        // ignored, and the client may be retrying them elsewhere already.
        let last = match self.goaway {
            Some((earlier, _)) => earlier.min(self.last_client),
            None => self.last_client,
        };
        self.goaway = Some((last, error));
        self.send(GoAway::with_debug_data(StreamId::from(last), reason, debug).into());
    }

    /// Closes the connection after the idle timeout (`TimedIo`): GOAWAY(NO_ERROR) first, naming
    /// the last stream processed, so the client knows that no request was lost and that it
    /// should not send more on this connection (§6.8).
    fn idle_close(&mut self) {
        tracing::trace!("HTTP/2 idle timeout: sending GOAWAY");
        self.go_away(Reason::NO_ERROR, true);
    }

    /// Closes the connection of a client that exceeded a limit (GOAWAY ENHANCE_YOUR_CALM).
    fn calm_down(&mut self, why: &'static [u8]) {
        crate::limited!(H2_LIMIT, debug, why = %String::from_utf8_lossy(why), "HTTP/2 client over a limit: closing");
        self.go_away_with(Reason::ENHANCE_YOUR_CALM, true, Bytes::from_static(why));
    }

    /// Resets a stream for one of the client's stream errors (§5.4.2).
    fn stream_error(&mut self, id: u32, reason: Reason) {
        crate::limited!(H2_RESET, debug, stream = id, reason = ?reason, "HTTP/2 stream error: sending RST_STREAM");
        self.error_resets += 1;
        if self.error_resets > MAX_ERROR_RESETS {
            self.calm_down(b"too many stream errors");
            return;
        }
        self.reset(id, reason);
    }

    /// Sends RST_STREAM and forgets the stream. An idle stream (reset for a bad PRIORITY
    /// frame) is not remembered: it may still be opened.
    fn reset(&mut self, id: u32, reason: Reason) {
        if let Some(i) = self.find(id) {
            self.streams.remove(i);
        }
        if !self.idle(id) {
            if self.recent_resets.len() == RECENT_RESETS {
                self.recent_resets.pop_front();
            }
            self.recent_resets.push_back(id);
        }
        self.send(Reset::new(StreamId::from(id), reason).into());
    }

    /// A response is fully sent. A client still sending its request body is asked to stop
    /// (RST_STREAM(NO_ERROR), §8.1); nothing is owed otherwise.
    fn response_sent(&mut self, id: u32, recv_open: bool) {
        self.responses = self.responses.saturating_add(1);
        if recv_open {
            self.reset(id, Reason::NO_ERROR);
        }
    }

    /// The client reset one of its streams: one whose response was `in_flight`, or one already
    /// complete (the client may not have read it yet). Rapid reset (CVE-2023-44487) opens
    /// streams and resets them at once, over and over: the work for each is done for nothing,
    /// and a reset stream frees its place under SETTINGS_MAX_CONCURRENT_STREAMS at once.
    /// Browsers cancel too (navigating away, an aborted fetch), but among requests whose
    /// responses they take. So the streams the client resets may outnumber the responses it
    /// took (responses completed, less those whose streams it reset afterwards) by a budget:
    /// twice SETTINGS_MAX_CONCURRENT_STREAMS (every stream it may open cancelled twice before
    /// anything completes), at least [`MIN_RESET_BUDGET`]. Beyond it the connection is closed
    /// with ENHANCE_YOUR_CALM: a flood of HEADERS and RST_STREAM pairs is cut off after the
    /// budget's worth of pairs (256 with the default 128 streams), its responses completing
    /// or not. Hence the weights: a reset counts once, and once more when it takes back a
    /// completed response.
    fn on_client_reset(&mut self, in_flight: bool) {
        let weight = if in_flight { 1 } else { 2 };
        self.client_resets = self.client_resets.saturating_add(weight);
        let budget = self
            .limits
            .max_concurrent_streams
            .saturating_mul(2)
            .max(MIN_RESET_BUDGET);
        if u64::from(self.client_resets) > u64::from(budget) + u64::from(self.responses) {
            self.calm_down(b"too many streams reset");
        }
    }

    fn find(&self, id: u32) -> Option<usize> {
        self.streams.iter().position(|s| s.id == id)
    }

    /// Whether stream `id` is idle (§5.1): the server opens no streams (even ids, §5.1.1), the
    /// client has not used `id` or a higher one yet.
    fn idle(&self, id: u32) -> bool {
        id % 2 == 0 || id > self.last_client
    }

    fn on_codec_error(&mut self, e: h2::proto::Error) {
        match e {
            h2::proto::Error::Reset(id, reason, _) => {
                let id = u32::from(id);
                match self.codec.failed_frame_kind() {
                    // A self-dependent PRIORITY (§5.3.1) or one of the wrong length (§6.3): a
                    // stream error in whatever state the stream is, but PRIORITY never opens a
                    // stream (§5.1), so `last_client` stays. §6.4 has no RST_STREAM on an idle
                    // stream, yet a stream error is one (§5.4.2), and what h2spec 5.3.1 expects;
                    // a client that takes it for a connection error loses nothing it had.
                    // On an even id (a stream only the server could open, and it opens none)
                    // the bad PRIORITY is dropped: there is no stream to reset.
                    frame::Kind::Priority if id % 2 == 0 => {}
                    frame::Kind::Priority => self.stream_error(id, reason),
                    // An increment of 0 (§6.9): a stream error, but any WINDOW_UPDATE on an idle
                    // stream is a connection error (§5.1).
                    frame::Kind::WindowUpdate if self.idle(id) => {
                        self.go_away(Reason::PROTOCOL_ERROR, true);
                    }
                    frame::Kind::WindowUpdate => self.stream_error(id, reason),
                    // A header block that is malformed (§8.1.1) or makes its stream depend on
                    // itself (§5.3.1): it opens the stream, which the error closes; unless the
                    // stream id is wrong itself, which the frame's own handling would have found
                    // (§5.1.1): an even id, or a lower one than the client used before.
                    _ => {
                        if id % 2 == 0 {
                            self.go_away(Reason::PROTOCOL_ERROR, true);
                        } else if id > self.last_client {
                            self.last_client = id;
                            self.stream_error(id, reason);
                        } else if self.find(id).is_some() {
                            self.stream_error(id, reason);
                        } else if !self.recent_resets.contains(&id) {
                            self.go_away(Reason::PROTOCOL_ERROR, true);
                        }
                    }
                }
            }
            h2::proto::Error::GoAway(debug, reason, _) => self.go_away_with(reason, true, debug),
            // The idle timeout (`TimedIo`; or the network's, and then the GOAWAY is not sent).
            h2::proto::Error::Io(io::ErrorKind::TimedOut, _) => self.idle_close(),
            h2::proto::Error::Io(kind, msg) => {
                self.io_error = Some(match msg {
                    Some(m) => io::Error::new(kind, m),
                    None => kind.into(),
                });
            }
        }
    }

    fn on_frame(&mut self, frame: Frame) {
        if !self.got_settings {
            match &frame {
                Frame::Settings(s) if !s.is_ack() => self.got_settings = true,
                _ => {
                    // §3.4: the preface's SETTINGS frame comes first.
                    self.go_away(Reason::PROTOCOL_ERROR, true);
                    return;
                }
            }
        }
        match frame {
            Frame::Headers(h) => self.on_headers(h),
            Frame::Data(d) => self.on_data(d),
            Frame::Settings(s) => self.on_settings(s),
            Frame::Ping(p) => {
                if !p.is_ack() {
                    if self.acks_piled_up() {
                        return;
                    }
                    self.send(Ping::pong(p.into_payload()).into());
                } else if self.announced && *p.payload() == GRACEFUL_PING {
                    // The client has seen the first GOAWAY of a graceful shutdown.
                    self.go_away(Reason::NO_ERROR, false);
                }
            }
            Frame::WindowUpdate(w) => self.on_window_update(w),
            Frame::Reset(r) => {
                let id = u32::from(r.stream_id());
                if id == 0 || self.idle(id) {
                    // §6.4: never on stream 0 or an idle stream.
                    self.go_away(Reason::PROTOCOL_ERROR, true);
                } else {
                    let in_flight = self.find(id).map(|i| self.streams.remove(i));
                    self.on_client_reset(in_flight.is_some());
                }
            }
            Frame::GoAway(g) => {
                if g.reason() != Reason::NO_ERROR {
                    crate::limited!(H2_CLIENT_GOAWAY, debug, reason = ?g.reason(), "HTTP/2 client sent GOAWAY with an error");
                }
                self.peer_goaway = true;
            }
            // Deprecated (§5.3.2); h2 has checked its form.
            Frame::Priority(_) => {}
            // Clients do not push (§8.4).
            Frame::PushPromise(_) => self.go_away(Reason::PROTOCOL_ERROR, true),
        }
    }

    fn on_settings(&mut self, s: Settings) {
        if s.is_ack() || self.acks_piled_up() {
            return;
        }
        if let Some(size) = s.header_table_size() {
            self.hpack.set_peer_table_size(size as usize);
        }
        if let Some(size) = s.max_frame_size() {
            // h2 has checked the range (§6.5.2).
            self.codec.set_max_send_frame_size(size as usize);
            self.max_send_frame = size as usize;
        }
        if let Some(window) = s.initial_window_size() {
            self.window_stall = None;
            // §6.9.2: open streams' windows move by the difference, possibly below zero.
            let delta = i64::from(window) - self.peer_initial_window;
            self.peer_initial_window = i64::from(window);
            for s in &mut self.streams {
                s.send_window += delta;
                if s.send_window > MAX_WINDOW {
                    self.go_away(Reason::FLOW_CONTROL_ERROR, true);
                    return;
                }
            }
        }
        self.send(Settings::ack().into());
    }

    /// The client sends PINGs or SETTINGS and reads none of our acknowledgements: more than
    /// [`MAX_QUEUED_ACKS`] of them wait behind a full socket. Closes the connection (GOAWAY
    /// ENHANCE_YOUR_CALM) and returns `true` then.
    fn acks_piled_up(&mut self) -> bool {
        if self.queue.len() < MAX_QUEUED_ACKS {
            return false;
        }
        let acks = self
            .queue
            .iter()
            .filter(|f| match f {
                Frame::Ping(p) => p.is_ack(),
                Frame::Settings(s) => s.is_ack(),
                _ => false,
            })
            .count();
        if acks < MAX_QUEUED_ACKS {
            return false;
        }
        self.calm_down(b"too many PING/SETTINGS frames whose answers go unread");
        true
    }

    fn on_window_update(&mut self, w: WindowUpdate) {
        // The client opens window: a response waiting for it is not stalled.
        self.window_stall = None;
        let id = u32::from(w.stream_id());
        let inc = i64::from(w.size_increment());
        if id == 0 {
            self.send_window += inc;
            if self.send_window > MAX_WINDOW {
                self.go_away(Reason::FLOW_CONTROL_ERROR, true);
            }
            return;
        }
        if let Some(i) = self.find(id) {
            let s = &mut self.streams[i];
            s.send_window += inc;
            if s.send_window > MAX_WINDOW {
                self.stream_error(id, Reason::FLOW_CONTROL_ERROR);
            }
        } else if self.idle(id) {
            // §5.1: only HEADERS and PRIORITY may arrive on an idle stream.
            self.go_away(Reason::PROTOCOL_ERROR, true);
        }
        // A closed stream: frames in flight are expected (§6.9).
    }

    fn on_data(&mut self, d: Data) {
        let id = u32::from(d.stream_id());
        let len = d.flow_controlled_len() as i64;
        let eos = d.is_end_stream();
        // The connection window counts every DATA frame, whatever its stream's state (§6.9).
        self.recv_window -= len;
        if self.recv_window < 0 {
            self.go_away(Reason::FLOW_CONTROL_ERROR, true);
            return;
        }
        if len == 0 && !eos {
            self.empty_frames += 1;
            if self.empty_frames > MAX_EMPTY_FRAMES {
                self.calm_down(b"too many empty frames");
                return;
            }
        }
        let Some(i) = self.find(id) else {
            self.credit_connection(len);
            if self.idle(id) {
                // §5.1: DATA on an idle stream.
                self.go_away(Reason::PROTOCOL_ERROR, true);
            } else if !self.recent_resets.contains(&id) {
                self.stream_error(id, Reason::STREAM_CLOSED);
            }
            return;
        };
        let s = &mut self.streams[i];
        let stream_error = if !s.recv_open {
            // §5.1: half-closed (remote).
            Some(Reason::STREAM_CLOSED)
        } else {
            s.recv_window -= len;
            s.received += d.payload().len() as u64;
            let length_ok = match s.content_length {
                Some(cl) if eos => s.received == cl,
                Some(cl) => s.received <= cl,
                None => true,
            };
            if s.recv_window < 0 {
                Some(Reason::FLOW_CONTROL_ERROR)
            } else if !length_ok {
                // §8.1.1: content-length does not match the DATA.
                Some(Reason::PROTOCOL_ERROR)
            } else {
                None
            }
        };
        if let Some(reason) = stream_error {
            self.credit_connection(len);
            self.stream_error(id, reason);
            return;
        }
        // Padding is given back at once; the data when the handler has taken it (the pipe's
        // back-pressure), or at once when nobody reads it.
        let data = d.into_payload();
        let mut credit = len - data.len() as i64;
        let piped = s.pipe.as_ref().is_some_and(|p| p.push(data.clone()));
        if !piped {
            s.pipe = None;
            credit = len;
        }
        if eos {
            s.recv_open = false;
            if let Some(p) = &s.pipe {
                p.finish(None);
            }
        }
        self.credit_connection(credit);
        if !eos {
            self.credit_stream(i, credit);
        }
    }

    /// Gives `n` bytes of the connection's receive window back (WINDOW_UPDATE once half the
    /// window is owed).
    fn credit_connection(&mut self, n: i64) {
        self.recv_unacked += n;
        if self.recv_unacked > 0
            && self.recv_unacked >= i64::from(self.limits.connection_window) / 2
        {
            let inc = self.recv_unacked;
            self.recv_unacked = 0;
            self.recv_window += inc;
            self.send(WindowUpdate::new(StreamId::zero(), inc as u32).into());
        }
    }

    /// Gives `n` bytes of stream `streams[i]`'s receive window back, while the client may still
    /// send.
    fn credit_stream(&mut self, i: usize, n: i64) {
        let half = i64::from(self.limits.stream_window) / 2;
        let s = &mut self.streams[i];
        s.recv_unacked += n;
        if s.recv_open && s.recv_unacked > 0 && s.recv_unacked >= half {
            let inc = s.recv_unacked;
            s.recv_unacked = 0;
            s.recv_window += inc;
            let id = s.id;
            self.send(WindowUpdate::new(StreamId::from(id), inc as u32).into());
        }
    }

    /// Gives back the windows of request data the handlers have read. Returns whether any
    /// WINDOW_UPDATE was sent.
    fn give_back_windows(&mut self, cx: &mut Context<'_>) -> bool {
        let mut sent = false;
        for i in 0..self.streams.len() {
            let Some(pipe) = &self.streams[i].pipe else {
                continue;
            };
            let (n, gone) = pipe.take_consumed(cx);
            if gone {
                self.streams[i].pipe = None;
            }
            if n > 0 {
                let before = self.queue.len();
                self.credit_connection(n as i64);
                self.credit_stream(i, n as i64);
                sent |= self.queue.len() != before || n > 0;
            }
        }
        sent
    }

    /// Polls the handlers still working; a finished one's response starts. Returns whether
    /// any finished.
    fn poll_replies(&mut self, cx: &mut Context<'_>) -> bool {
        if !self
            .streams
            .iter()
            .any(|s| matches!(s.reply, Replying::Waiting(_)))
        {
            return false;
        }
        let mut progress = false;
        let mut streams = std::mem::take(&mut self.streams);
        streams.retain_mut(|s| {
            if self.goaway_error() {
                return true;
            }
            let Replying::Waiting(f) = &mut s.reply else {
                return true;
            };
            let Poll::Ready(resp) = f.as_mut().poll(cx) else {
                return true;
            };
            progress = true;
            match self.start_response(s, resp, cx) {
                Sent::Done => {
                    self.response_sent(s.id, s.recv_open);
                    false
                }
                Sent::Failed => false,
                Sent::Blocked => true,
            }
        });
        if !self.goaway_error() {
            // Streams opened while the handlers were polled (none: polling reads no frames).
            streams.append(&mut self.streams);
            self.streams = streams;
        }
        progress
    }

    /// Sends a response's head, and what can go of its body now.
    fn start_response(
        &mut self,
        s: &mut Stream,
        resp: Response<TrackedBody>,
        cx: &mut Context<'_>,
    ) -> Sent {
        let (mut parts, body) = resp.into_parts();
        let end = body.is_end_stream();
        let frame = match body.ready_head() {
            // A cached head, shared: encoded as it is, with the current date.
            Some(fields) => {
                let date = crate::http::date::now();
                self.response_head(s.id, parts.status, fields, Some(&date), end)
            }
            None => {
                clean_response_headers(&mut parts.headers, parts.status, s.head, &body);
                self.response_head(s.id, parts.status, &parts.headers, None, end)
            }
        };
        self.send(frame);
        if end {
            return Sent::Done;
        }
        s.reply = Replying::Body(body);
        self.send_body(s, cx)
    }

    /// A response's HEADERS frame, encoded by our HPACK encoder (see [`super::hpack`]), with
    /// `date` in place of the map's `Date`. It must be sent before the next one is made: the
    /// encoder's table follows the wire order.
    fn response_head(
        &mut self,
        id: u32,
        status: StatusCode,
        fields: &HeaderMap,
        date: Option<&HeaderValue>,
        end_stream: bool,
    ) -> Frame<Bytes> {
        self.block.reserve(1024);
        self.hpack.encode(status, fields, date, &mut self.block);
        Headers::encoded(StreamId::from(id), self.block.split(), end_stream).into()
    }

    fn on_headers(&mut self, h: Headers) {
        let id = u32::from(h.stream_id());
        if id % 2 == 0 {
            // Clients use odd ids (§5.1.1).
            self.go_away(Reason::PROTOCOL_ERROR, true);
            return;
        }
        if id <= self.last_client {
            if let Some(i) = self.find(id) {
                // Trailers: they end the request (§8.1).
                let s = &mut self.streams[i];
                if !s.recv_open {
                    self.stream_error(id, Reason::STREAM_CLOSED);
                } else if !h.is_end_stream() || s.content_length.is_some_and(|cl| cl != s.received)
                {
                    // Trailers must end the stream, after exactly the announced body.
                    self.stream_error(id, Reason::PROTOCOL_ERROR);
                } else {
                    s.recv_open = false;
                    let (pseudo, fields) = h.into_parts();
                    if pseudo.method.is_some()
                        || pseudo.path.is_some()
                        || pseudo.status.is_some()
                        || pseudo.scheme.is_some()
                        || pseudo.authority.is_some()
                        || pseudo.protocol.is_some()
                    {
                        // §8.1: trailers carry no pseudo-fields.
                        self.stream_error(id, Reason::PROTOCOL_ERROR);
                    } else if let Some(pipe) = &s.pipe {
                        pipe.finish(Some(fields));
                    }
                }
            } else if !self.recent_resets.contains(&id) {
                // §5.1.1: a new stream's id must be higher than every id the client used (a
                // stream the server reset lately may see trailers sent before the reset).
                self.go_away(Reason::PROTOCOL_ERROR, true);
            }
            return;
        }
        self.last_client = id;
        if self.goaway.is_some() {
            // Opened after our GOAWAY: ignored, the client retries elsewhere (§6.8).
            return;
        }
        if self.streams.len() >= self.limits.max_concurrent_streams as usize {
            self.stream_error(id, Reason::REFUSED_STREAM);
            return;
        }
        let eos = h.is_end_stream();
        if h.is_over_size() {
            // The decoded header list is over our SETTINGS_MAX_HEADER_LIST_SIZE.
            let resp = self.response_head(
                id,
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                &HeaderMap::new(),
                None,
                true,
            );
            self.send(resp);
            self.response_sent(id, !eos);
            return;
        }
        let (pseudo, fields) = h.into_parts();
        let Some(req) = request(pseudo, fields) else {
            self.stream_error(id, Reason::PROTOCOL_ERROR);
            return;
        };
        let content_length = match req.headers().get(header::CONTENT_LENGTH) {
            None => None,
            Some(v) => match v.to_str().ok().and_then(|v| v.parse::<u64>().ok()) {
                Some(n) if !(eos && n != 0) => Some(n),
                _ => {
                    // Unparsable, or a body announced where there is none (§8.1.1).
                    self.stream_error(id, Reason::PROTOCOL_ERROR);
                    return;
                }
            },
        };
        let head = req.method() == Method::HEAD;
        let (pipe, body) = if eos {
            (None, RequestBody::Empty)
        } else {
            let (pipe, body) = BodyPipe::new(content_length);
            (Some(pipe), body)
        };
        let mut stream = Stream {
            id,
            recv_open: !eos,
            head,
            pipe,
            reply: Replying::Starting,
            pending: Bytes::new(),
            send_window: self.peer_initial_window,
            recv_window: i64::from(self.limits.stream_window),
            recv_unacked: 0,
            content_length,
            received: 0,
        };
        match self.svc.handle(req.map(|()| body)).now() {
            Ok(resp) => {
                // Small bodies leave right away, without the stream being stored.
                let mut cx = Context::from_waker(Waker::noop());
                match self.start_response(&mut stream, resp, &mut cx) {
                    Sent::Done => self.response_sent(id, stream.recv_open),
                    Sent::Failed => {}
                    Sent::Blocked => self.streams.push(stream),
                }
            }
            Err(later) => {
                // Polled with the connection's waker by `poll_replies`, in this same poll.
                stream.reply = Replying::Waiting(later);
                self.streams.push(stream);
            }
        }
    }

    /// Sends DATA for the streams with a body, round robin, as the windows allow. Returns
    /// whether any stream finished or sent something.
    fn send_bodies(&mut self, cx: &mut Context<'_>) -> bool {
        if self.streams.is_empty() {
            return false;
        }
        let mut progress = false;
        let mut streams = std::mem::take(&mut self.streams);
        // Round robin: whoever went first last time goes last now (order is not otherwise
        // significant: streams are looked up by id).
        streams.rotate_left(1);
        streams.retain_mut(|s| {
            if self.goaway_error() {
                return true;
            }
            match self.send_body(s, cx) {
                Sent::Done => {
                    progress = true;
                    self.response_sent(s.id, s.recv_open);
                    false
                }
                Sent::Failed => {
                    progress = true;
                    false
                }
                Sent::Blocked => true,
            }
        });
        if !self.goaway_error() && !streams.is_empty() {
            self.streams = streams;
        }
        progress
    }

    /// Sends what the windows allow of one stream's body (the stream is not in `streams`).
    fn send_body(&mut self, s: &mut Stream, cx: &mut Context<'_>) -> Sent {
        let Replying::Body(body) = &mut s.reply else {
            return Sent::Blocked;
        };
        loop {
            if s.pending.is_empty() {
                match Pin::new(&mut *body).poll_frame(cx) {
                    Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                        Ok(data) => {
                            s.pending = data;
                            if s.pending.is_empty() && !body.is_end_stream() {
                                continue;
                            }
                        }
                        Err(frame) => {
                            // Trailers (gRPC's status) end the stream.
                            let mut trailers = frame.into_trailers().unwrap_or_default();
                            drop_connection_specific(&mut trailers);
                            self.block.reserve(256);
                            self.hpack.encode_trailers(&trailers, &mut self.block);
                            let frame =
                                Headers::encoded(StreamId::from(s.id), self.block.split(), true);
                            self.send(frame.into());
                            return Sent::Done;
                        }
                    },
                    Poll::Ready(None) => {
                        let mut end = Data::new(StreamId::from(s.id), Bytes::new());
                        end.set_end_stream(true);
                        self.send(end.into());
                        return Sent::Done;
                    }
                    Poll::Ready(Some(Err(e))) => {
                        tracing::warn!(stream = s.id, error = %e, "response body failed: resetting the HTTP/2 stream");
                        self.reset(s.id, Reason::INTERNAL_ERROR);
                        return Sent::Failed;
                    }
                    Poll::Pending => return Sent::Blocked,
                }
            }
            let window = self
                .send_window
                .min(s.send_window)
                .min(self.max_send_frame as i64);
            if (window <= 0 && !s.pending.is_empty()) || self.queue.len() >= QUEUE_HIGH {
                return Sent::Blocked;
            }
            let n = s.pending.len().min(window.max(0) as usize);
            let chunk = s.pending.split_to(n);
            self.send_window -= n as i64;
            s.send_window -= n as i64;
            let eos = s.pending.is_empty() && body.is_end_stream();
            let mut data = Data::new(StreamId::from(s.id), chunk);
            data.set_end_stream(eos);
            self.send(data.into());
            if eos {
                return Sent::Done;
            }
        }
    }
}

/// The request of a HEADERS frame (RFC 9113 §8.3.1), or `None` when it is malformed. h2 has
/// checked the fields themselves (§8.2: lowercase names, no connection-specific fields, `te`
/// only `trailers`, pseudo-fields first and known).
fn request(pseudo: Pseudo, fields: HeaderMap) -> Option<Request<()>> {
    let method = pseudo.method?;
    if pseudo.status.is_some() {
        // No response fields in a request.
        return None;
    }
    // RFC 8441 §4: an extended CONNECT names its protocol (a WebSocket, for the reverse
    // proxy) and has the fields of a request; a plain CONNECT (a forward proxy's) is not served.
    let protocol = match (method == Method::CONNECT, pseudo.protocol) {
        (true, Some(p)) => Some(hyper::ext::Protocol::from(p.as_str())),
        (false, None) => None,
        _ => return None,
    };
    if protocol.is_some() && pseudo.authority.is_none() {
        return None;
    }
    let scheme = pseudo.scheme?;
    let path = pseudo.path?;
    if path.is_empty() {
        return None;
    }
    let mut uri = http::uri::Parts::default();
    uri.path_and_query = Some(http::uri::PathAndQuery::from_maybe_shared(path.into_inner()).ok()?);
    if let Some(authority) = pseudo.authority {
        uri.authority = Some(http::uri::Authority::from_maybe_shared(authority.into_inner()).ok()?);
        uri.scheme = Some(scheme.parse().ok()?);
    } else {
        // Validated even when it cannot be part of the URI (it needs an authority).
        let _: http::uri::Scheme = scheme.parse().ok()?;
    }
    let uri = http::Uri::from_parts(uri).ok()?;
    let mut req = Request::new(());
    *req.method_mut() = method;
    *req.uri_mut() = uri;
    *req.version_mut() = Version::HTTP_2;
    *req.headers_mut() = fields;
    if let Some(protocol) = protocol {
        req.extensions_mut().insert(protocol);
    }
    Some(req)
}

/// Makes a response head valid for HTTP/2 (as hyper does) and HTTP/3 (RFC 9114 §4.2, the
/// same rules): no connection-specific fields (§8.2.2), a `date`, and `content-length` when the
/// body's length is known.
pub(crate) fn clean_response_headers(
    h: &mut HeaderMap,
    status: StatusCode,
    head: bool,
    body: &TrackedBody,
) {
    drop_connection_specific(h);
    if let header::Entry::Vacant(slot) = h.entry(header::DATE) {
        slot.insert(crate::http::date::now());
    }
    if !head
        && !status.is_informational()
        && status != StatusCode::NO_CONTENT
        && status != StatusCode::NOT_MODIFIED
    {
        if let (header::Entry::Vacant(slot), Some(len)) =
            (h.entry(header::CONTENT_LENGTH), body.size_hint().exact())
        {
            slot.insert(HeaderValue::from(len));
        }
    }
}
