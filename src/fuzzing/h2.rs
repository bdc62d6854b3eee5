//! Our HTTP/2 connection ([`crate::server::h2`]) against a client sending arbitrary frames.
//!
//! The input is a script: connection limits and service settings, then operations that
//! append frames to what the client sends (requests with HPACK-encoded fields, DATA, window
//! updates, SETTINGS, PING, RST_STREAM, GOAWAY, PRIORITY, CONTINUATION, or any bytes as a
//! frame), hand what was appended so far to the server, change how much the server may write
//! before its writes block (a client that stops reading), or start a graceful shutdown. At the
//! end the client closes its side and reads everything.
//!
//! The connection runs on an in-memory stream, polled by hand and only when woken, so it is
//! deterministic and a lost wake-up shows as a hang. Promises checked:
//! - it never panics, never busy-loops, and ends once the client has closed (no timer needed);
//! - after every poll, what it holds stays within the limits: streams with a body in flight
//!   at most `max_concurrent_streams`, bounded frame queue and reset memory;
//! - everything it writes is valid HTTP/2 to h2's own frame and HPACK decoder (sizes within the
//!   client's SETTINGS_MAX_FRAME_SIZE, response fields well-formed), starting with SETTINGS,
//!   nothing after a GOAWAY for a connection error, nothing written after shutdown;
//! - flow control: DATA sent never exceeds the windows the client gave, per connection and
//!   per stream;
//! - responses only on streams the client opened, DATA only after the response's HEADERS and
//!   never after END_STREAM;
//! - every request the client completes is answered (HEADERS or RST_STREAM) unless a GOAWAY
//!   said it would not be, or the connection failed;
//! - every request's response body is released when the connection ends.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};

use bytes::Bytes;
use futures_util::stream::Stream as _;
use h2::frame::{Frame, Reason};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::fixture::frontend;
use super::{Input, Seed};
use crate::http::{ConnState, HttpsService};
use crate::server::h2::{serve_observed, Footprint, H2Limits};

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

// Frame types and flags (RFC 9113 §6).
const DATA: u8 = 0x0;
const HEADERS: u8 = 0x1;
const PRIORITY: u8 = 0x2;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const PING: u8 = 0x6;
const GOAWAY: u8 = 0x7;
const WINDOW_UPDATE: u8 = 0x8;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const ACK: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY_FLAG: u8 = 0x20;

/// Frames our connection queues beyond which it stops reading (`h2::QUEUE_HIGH`).
const QUEUE_HIGH: usize = 32;
/// Streams it remembers having reset (`h2::RECENT_RESETS`).
const RECENT_RESETS: usize = 64;

/// The in-memory stream between the scripted client and the connection.
#[derive(Default)]
struct Pipe {
    /// Bytes handed to the server and not read yet, and how many it has read in all.
    input: Vec<u8>,
    read_pos: usize,
    eof: bool,
    read_waker: Option<Waker>,
    /// Bytes the server may still write before its writes block (`None`: no limit).
    budget: Option<usize>,
    write_waker: Option<Waker>,
    out: Vec<u8>,
    shut: bool,
}

#[derive(Clone, Default)]
struct PipeIo(Rc<RefCell<Pipe>>);

impl AsyncRead for PipeIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let mut p = self.0.borrow_mut();
        let available = &p.input[p.read_pos..];
        if !available.is_empty() {
            let n = available.len().min(buf.remaining());
            buf.put_slice(&available[..n]);
            p.read_pos += n;
            return Poll::Ready(Ok(()));
        }
        if p.eof {
            return Poll::Ready(Ok(()));
        }
        p.read_waker = Some(cx.waker().clone());
        Poll::Pending
    }
}

impl AsyncWrite for PipeIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let mut p = self.0.borrow_mut();
        assert!(!p.shut, "a write after shutdown");
        let n = match p.budget {
            None => buf.len(),
            Some(0) => {
                p.write_waker = Some(cx.waker().clone());
                return Poll::Pending;
            }
            Some(b) => b.min(buf.len()),
        };
        if let Some(b) = &mut p.budget {
            *b -= n;
        }
        p.out.extend_from_slice(&buf[..n]);
        Poll::Ready(Ok(n))
    }
    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.0.borrow_mut().shut = true;
        Poll::Ready(Ok(()))
    }
}

/// The waker of the connection's task: only a woken task is polled again.
#[derive(Default)]
struct Flag(AtomicBool);

impl Wake for Flag {
    fn wake(self: Arc<Self>) {
        self.0.store(true, Ordering::Relaxed);
    }
    fn wake_by_ref(self: &Arc<Self>) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// One step of the script.
enum Step {
    /// Hand these bytes to the server.
    Send(Vec<u8>),
    /// Let the server write this many more bytes (`None`: any number).
    Budget(Option<usize>),
    /// Begin a graceful shutdown.
    Shutdown,
}

pub fn h2_connection(data: &[u8]) {
    let mut input = Input::new(data);
    let settings = input.byte();
    let limits = H2Limits {
        max_concurrent_streams: input.pick(&[1, 2, 8, 128]),
        stream_window: input.pick(&[65_535, 100_000, 1 << 20, (1 << 31) - 1]),
        connection_window: input.pick(&[65_535, 1 << 20, (1 << 31) - 1]),
        max_header_list: input.pick(&[1024, 4096, 16_384]),
        send_timeout: std::time::Duration::from_secs(60),
    };
    let script = Script::parse(&mut input, settings & 1 == 0);
    let conn_state = Arc::new(ConnState::default());
    conn_state.early.store(settings & 2 != 0, Ordering::Relaxed);
    let svc = HttpsService {
        front: frontend().clone(),
        sni_site: [None, Some(0), Some(1), Some(0)][usize::from((settings >> 2) & 3)],
        conn: conn_state.clone(),
        peer: std::net::SocketAddr::from(([127, 0, 0, 1], 40000)),
        local: std::net::SocketAddr::from(([127, 0, 0, 1], 443)),
        overloaded: settings & 16 != 0,
        host_memo: Default::default(),
        client_cert: None,
        client_limits: None,
        tls: None,
    };
    let run = run(&script.steps, svc, limits);
    assert_eq!(
        conn_state.active.load(Ordering::Relaxed),
        0,
        "response bodies still held after the connection ended"
    );
    let client = ClientView::parse(&script.bytes());
    let preface_ok = script.bytes().starts_with(PREFACE);
    match &run.result {
        Ok(()) => {}
        // Only a client that is not speaking HTTP/2 at all.
        Err(e) => assert!(
            !preface_ok
                && matches!(
                    e.kind(),
                    std::io::ErrorKind::InvalidData | std::io::ErrorKind::UnexpectedEof
                ),
            "the connection failed: {e}"
        ),
    }
    check_output(&run, &client, limits, preface_ok);
}

/// What the client sent: the bytes of every step.
struct Script {
    steps: Vec<Step>,
}

impl Script {
    fn bytes(&self) -> Vec<u8> {
        let mut all = Vec::new();
        for step in &self.steps {
            if let Step::Send(b) = step {
                all.extend_from_slice(b);
            }
        }
        all
    }

    fn parse(input: &mut Input<'_>, preface: bool) -> Script {
        let mut b = Builder::default();
        let mut steps = Vec::new();
        if preface {
            b.out.extend_from_slice(PREFACE);
            // The client's SETTINGS, which must come first.
            b.frame(SETTINGS, 0, 0, &[]);
        }
        let mut ops = 0;
        while !input.is_empty() && ops < 2000 {
            ops += 1;
            match input.byte() % 16 {
                0 => {
                    let ty = input.byte() % 16;
                    let flags = input.byte();
                    let stream = b.stream(input);
                    let payload = input.short().to_vec();
                    b.frame(ty, flags, stream, &payload);
                }
                1..=3 => b.request(input),
                4 => {
                    let flags = input.byte() & (END_STREAM | PADDED);
                    let stream = b.stream(input);
                    let len = match input.byte() % 4 {
                        0 => 0,
                        1 => input.byte() as usize,
                        2 => input.u16() as usize % 16_385,
                        _ => 16_384,
                    };
                    let mut payload = vec![0u8; len];
                    if flags & PADDED != 0 && !payload.is_empty() {
                        payload[0] = input.byte() % (len as u8).max(1);
                    }
                    b.frame(DATA, flags, stream, &payload);
                }
                5 => {
                    let stream = if input.bool() { 0 } else { b.stream(input) };
                    let inc = match input.byte() % 4 {
                        0 => input.pick(&[0, 1, 16_384, 65_535, 1 << 20, (1 << 31) - 1]),
                        1 => input.u16() as u32,
                        2 => input.u32(),
                        _ => 1 << 20,
                    };
                    b.frame(WINDOW_UPDATE, 0, stream, &inc.to_be_bytes());
                }
                6 => {
                    let ack = input.byte() % 4 == 0;
                    let mut payload = Vec::new();
                    for _ in 0..input.byte() % 4 {
                        let id = input.pick(&[1u16, 2, 3, 4, 5, 6, 8, 0x10]);
                        let value = match input.byte() % 3 {
                            0 => input.pick(&[0, 1, 100, 16_384, 65_535, 1 << 24, 1 << 31]),
                            1 => input.u16() as u32,
                            _ => input.u32(),
                        };
                        payload.extend_from_slice(&id.to_be_bytes());
                        payload.extend_from_slice(&value.to_be_bytes());
                    }
                    b.frame(SETTINGS, if ack { ACK } else { 0 }, 0, &payload);
                }
                7 => {
                    let flags = input.byte() & ACK;
                    let payload: [u8; 8] = if input.bool() {
                        *b"shutdown"
                    } else {
                        input
                            .u32()
                            .to_be_bytes()
                            .repeat(2)
                            .try_into()
                            .unwrap_or([0; 8])
                    };
                    b.frame(PING, flags, 0, &payload);
                }
                8 => {
                    let stream = b.stream(input);
                    let code = input.byte() as u32 % 14;
                    b.frame(RST_STREAM, 0, stream, &code.to_be_bytes());
                }
                9 => {
                    let mut payload = input.u32().to_be_bytes().to_vec();
                    payload.extend_from_slice(&(input.byte() as u32 % 14).to_be_bytes());
                    b.frame(GOAWAY, 0, 0, &payload);
                }
                10 => {
                    let stream = b.stream(input);
                    let mut payload = (input.u32() & 0x7fff_ffff).to_be_bytes().to_vec();
                    if input.bool() {
                        // Depends on itself.
                        payload = stream.to_be_bytes().to_vec();
                    }
                    payload.push(input.byte());
                    b.frame(PRIORITY, 0, stream, &payload);
                }
                11 => {
                    let stream = b.stream(input);
                    let flags = input.byte() & END_HEADERS;
                    let block = b.fields(input);
                    b.frame(CONTINUATION, flags, stream, &block);
                }
                12 | 13 => {
                    if !b.out.is_empty() {
                        steps.push(Step::Send(std::mem::take(&mut b.out)));
                    }
                }
                14 => {
                    let budget = match input.byte() % 6 {
                        0 => Some(0),
                        1 => Some(1),
                        2 => Some(9 + input.byte() as usize),
                        3 => Some(input.u16() as usize),
                        4 => Some(16_384),
                        _ => None,
                    };
                    steps.push(Step::Budget(budget));
                }
                _ => steps.push(Step::Shutdown),
            }
        }
        if !b.out.is_empty() {
            steps.push(Step::Send(b.out));
        }
        Script { steps }
    }
}

/// Appends frames to what the client sends.
#[derive(Default)]
struct Builder {
    out: Vec<u8>,
    /// The highest stream id opened so far.
    last: u32,
}

/// Request fields the script picks from (name, values).
const FIELDS: [(&str, &[&str]); 14] = [
    (
        ":method",
        &["GET", "HEAD", "POST", "OPTIONS", "CONNECT", "PUT", "get"],
    ),
    (":scheme", &["https", "http", "ftp", ""]),
    (
        ":path",
        &[
            "/",
            "/a.txt",
            "/big.bin",
            "/sub/",
            "/sub",
            "/list/",
            "/list/sub/",
            "/fixed",
            "/go/x?q=1",
            "/out",
            "/missing",
            "*",
            "",
            "/%zz",
        ],
    ),
    (
        ":authority",
        &[
            "alpha.test",
            "beta.test",
            "www.alpha.test:443",
            "unknown.test",
            "",
            "[::1]",
        ],
    ),
    (":status", &["200"]),
    (":protocol", &["websocket"]),
    ("host", &["alpha.test", "beta.test"]),
    ("content-length", &["0", "5", "100", "x", "99999999999"]),
    ("te", &["trailers", "gzip"]),
    ("connection", &["close"]),
    ("early-data", &["1"]),
    ("accept-encoding", &["gzip, br", "identity"]),
    ("range", &["bytes=0-9", "bytes=65000-", "bytes=5-1"]),
    ("if-none-match", &["*", "\"x\""]),
];

impl Builder {
    fn frame(&mut self, ty: u8, flags: u8, stream: u32, payload: &[u8]) {
        let len = payload.len().min((1 << 24) - 1);
        self.out.extend_from_slice(&(len as u32).to_be_bytes()[1..]);
        self.out.push(ty);
        self.out.push(flags);
        self.out
            .extend_from_slice(&(stream & 0x7fff_ffff).to_be_bytes());
        self.out.extend_from_slice(&payload[..len]);
    }

    /// A stream id: mostly the next new one or the last one, sometimes any.
    fn stream(&mut self, input: &mut Input<'_>) -> u32 {
        match input.byte() % 8 {
            0..=2 => self.last.max(1),
            3 => self.last + 2,
            4 => 1 + 2 * (input.byte() as u32 % 8),
            5 => 0,
            6 => input.byte() as u32,
            _ => input.u32() & 0x7fff_ffff,
        }
    }

    /// A request: HEADERS (maybe split into CONTINUATIONs), usually on a new stream.
    fn request(&mut self, input: &mut Input<'_>) {
        let flags = input.byte();
        let stream = if flags & 0x80 == 0 {
            self.last = if self.last == 0 { 1 } else { self.last + 2 };
            self.last
        } else {
            self.stream(input)
        };
        let block = self.fields(input);
        let mut hflags = flags & (END_STREAM | PADDED | PRIORITY_FLAG);
        let mut prefix = Vec::new();
        if hflags & PADDED != 0 {
            prefix.push(input.byte() % 8);
        }
        if hflags & PRIORITY_FLAG != 0 {
            prefix.extend_from_slice(&(input.u32() & 0x7fff_ffff).to_be_bytes());
            prefix.push(input.byte());
        }
        let pad = prefix.first().copied().filter(|_| hflags & PADDED != 0);
        let split = flags & 0x40 != 0 && block.len() > 1;
        let (first, rest) = block.split_at(if split { block.len() / 2 } else { block.len() });
        if !split {
            hflags |= END_HEADERS;
        }
        let mut payload = prefix;
        payload.extend_from_slice(first);
        payload.extend(std::iter::repeat_n(0, pad.unwrap_or(0) as usize));
        self.frame(HEADERS, hflags, stream, &payload);
        if split {
            self.frame(CONTINUATION, END_HEADERS, stream, rest);
        }
    }

    /// An HPACK header block (RFC 7541): usually a well-formed request, fields as literals
    /// (indexed into the client's table or not) or as references into it.
    fn fields(&mut self, input: &mut Input<'_>) -> Vec<u8> {
        let mut block = Vec::new();
        let template = input.byte();
        let pick = |input: &mut Input<'_>, i: usize| {
            let values = FIELDS[i].1;
            values[input.byte() as usize % values.len()]
        };
        if template & 1 == 0 {
            // The usual four pseudo-fields.
            for (i, (name, _)) in FIELDS.iter().enumerate().take(4) {
                let value = pick(input, i);
                literal(&mut block, name.as_bytes(), value.as_bytes(), template & 2);
            }
        }
        for _ in 0..input.byte() % 6 {
            match input.byte() % 8 {
                // A field from the list.
                0..=4 => {
                    let i = input.byte() as usize % FIELDS.len();
                    let value = pick(input, i);
                    literal(
                        &mut block,
                        FIELDS[i].0.as_bytes(),
                        value.as_bytes(),
                        input.byte() & 2,
                    );
                }
                // Any name and value.
                5 => {
                    let name = input.short().to_vec();
                    let value = input.short().to_vec();
                    literal(&mut block, &name, &value, 0);
                }
                // A large value (header list limits).
                6 => {
                    let len = input.u16() as usize % 20_000;
                    literal(&mut block, b"x-big", &vec![b'v'; len], 0);
                }
                // A reference into the static or dynamic table, or a table size update.
                _ => {
                    let b = input.byte();
                    if b & 0x80 != 0 {
                        int(&mut block, (b & 0x7f) as usize, 7, 0x80);
                    } else {
                        int(&mut block, input.u16() as usize, 5, 0x20);
                    }
                }
            }
        }
        block
    }
}

/// A literal field with a literal name, indexed (`indexing != 0`) or not (RFC 7541 §6.2).
fn literal(block: &mut Vec<u8>, name: &[u8], value: &[u8], indexing: u8) {
    block.push(if indexing != 0 { 0x40 } else { 0x00 });
    int(block, name.len(), 7, 0);
    block.extend_from_slice(name);
    int(block, value.len(), 7, 0);
    block.extend_from_slice(value);
}

/// An HPACK integer with an `n`-bit prefix and the representation's `pattern` (§5.1).
fn int(block: &mut Vec<u8>, mut value: usize, n: u8, pattern: u8) {
    let max = (1usize << n) - 1;
    if value < max {
        block.push(pattern | value as u8);
        return;
    }
    block.push(pattern | max as u8);
    value -= max;
    while value >= 128 {
        block.push((value % 128) as u8 | 0x80);
        value /= 128;
    }
    block.push(value as u8);
}

/// How a run went.
struct Run {
    result: std::io::Result<()>,
    out: Vec<u8>,
    /// A graceful shutdown began before the server had read the client's preface (it then
    /// ends at once, answering nothing).
    shutdown_before_preface: bool,
}

/// Runs the connection through the script, then closes the client's side and lets the server
/// write everything.
fn run(steps: &[Step], svc: HttpsService, limits: H2Limits) -> Run {
    thread_local! {
        static RT: tokio::runtime::Runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("runtime");
    }
    RT.with(|rt| {
        // The runtime is only entered (for the graceful shutdown's timer), never driven: the
        // connection is polled here, when woken.
        let _enter = rt.enter();
        let io = PipeIo::default();
        let pipe = io.0.clone();
        let (tx, rx) = tokio::sync::watch::channel(false);
        let observe = |f: Footprint| {
            assert!(
                f.streams <= limits.max_concurrent_streams as usize,
                "{} streams in flight, limit {}",
                f.streams,
                limits.max_concurrent_streams
            );
            assert!(f.recent_resets <= RECENT_RESETS, "{f:?}");
            // Reading stops at QUEUE_HIGH frames; one frame read, or one round of bodies,
            // adds at most a few per stream.
            let bound = QUEUE_HIGH + 4 + 2 * limits.max_concurrent_streams as usize;
            assert!(f.queued <= bound, "{} frames queued (bound {bound})", f.queued);
        };
        let mut fut: Pin<&mut dyn Future<Output = std::io::Result<()>>> =
            std::pin::pin!(serve_observed(io, svc, limits, rx, observe));
        let flag = Arc::new(Flag(AtomicBool::new(true)));
        let waker = Waker::from(flag.clone());
        let mut cx = Context::from_waker(&waker);
        let mut polls = 0usize;
        let max_polls = 1000 + 16 * steps.len();
        let mut result = None;
        // Polls while woken; `Some` once the connection has ended.
        let mut settle = |fut: &mut Pin<&mut dyn Future<Output = std::io::Result<()>>>| {
            while flag.0.swap(false, Ordering::Relaxed) {
                polls += 1;
                assert!(polls <= max_polls, "more than {max_polls} polls: a busy loop");
                if let Poll::Ready(r) = fut.as_mut().poll(&mut cx) {
                    return Some(r);
                }
            }
            None
        };
        let mut shutdown_before_preface = false;
        for step in steps {
            if result.is_none() {
                result = settle(&mut fut);
            }
            if result.is_some() {
                break;
            }
            let wake = |w: Option<Waker>| {
                if let Some(w) = w {
                    w.wake();
                }
            };
            match step {
                Step::Send(bytes) => {
                    let w = {
                        let mut p = pipe.borrow_mut();
                        p.input.extend_from_slice(bytes);
                        p.read_waker.take()
                    };
                    wake(w);
                }
                Step::Budget(b) => {
                    let w = {
                        let mut p = pipe.borrow_mut();
                        p.budget = *b;
                        p.write_waker.take()
                    };
                    wake(w);
                }
                Step::Shutdown => {
                    if pipe.borrow().read_pos < PREFACE.len() {
                        shutdown_before_preface = true;
                    }
                    let _ = tx.send(true);
                }
            }
        }
        // The client closes its side and reads everything.
        let (rw, ww) = {
            let mut p = pipe.borrow_mut();
            p.eof = true;
            p.budget = None;
            (p.read_waker.take(), p.write_waker.take())
        };
        for w in [rw, ww].into_iter().flatten() {
            w.wake();
        }
        if result.is_none() {
            result = settle(&mut fut);
        }
        let Some(result) = result else {
            panic!("the connection does not end after the client closed (waiting for nothing that will come)");
        };
        let out = std::mem::take(&mut pipe.borrow_mut().out);
        Run {
            result,
            out,
            shutdown_before_preface,
        }
    })
}

/// What the server can have seen of the client's bytes, frame by frame.
#[derive(Default, Debug)]
struct ClientView {
    frames: usize,
    conn_increments: u64,
    stream_increments: BTreeMap<u32, u64>,
    /// The largest SETTINGS_INITIAL_WINDOW_SIZE / SETTINGS_MAX_FRAME_SIZE the client gave.
    max_initial_window: u64,
    max_frame_size: usize,
    /// Stream ids of requests with a complete header block that open a new stream (ids
    /// above every earlier HEADERS), in order, before any GOAWAY of the client's (after which
    /// the server may close as soon as it is idle).
    new_requests: Vec<u32>,
    /// HEADERS frames with a new odd stream id, GOAWAY or not.
    opened: usize,
    /// Every stream id of a client frame.
    ids: BTreeSet<u32>,
}

impl ClientView {
    fn parse(bytes: &[u8]) -> ClientView {
        let mut v = ClientView {
            max_initial_window: 65_535,
            max_frame_size: 16_384,
            ..Default::default()
        };
        let Some(mut rest) = bytes.strip_prefix(PREFACE) else {
            return v;
        };
        let mut highest = 0;
        let mut client_goaway = false;
        // A HEADERS whose block is not complete yet: its stream id.
        let mut open_block: Option<(u32, bool)> = None;
        while rest.len() >= 9 {
            let len = u32::from_be_bytes([0, rest[0], rest[1], rest[2]]) as usize;
            let (ty, flags) = (rest[3], rest[4]);
            let stream = u32::from_be_bytes([rest[5], rest[6], rest[7], rest[8]]) & 0x7fff_ffff;
            // The server's SETTINGS_MAX_FRAME_SIZE stays at the default: a larger frame ends
            // the connection.
            if len > 16_384 || rest.len() < 9 + len {
                break;
            }
            let payload = &rest[9..9 + len];
            rest = &rest[9 + len..];
            v.frames += 1;
            v.ids.insert(stream);
            match ty {
                GOAWAY => client_goaway = true,
                HEADERS => {
                    if stream % 2 == 1 && stream > highest {
                        v.opened += 1;
                    }
                    let new = stream % 2 == 1 && stream > highest && !client_goaway;
                    highest = highest.max(stream);
                    if flags & END_HEADERS != 0 {
                        if new {
                            v.new_requests.push(stream);
                        }
                    } else {
                        open_block = Some((stream, new));
                        continue;
                    }
                }
                CONTINUATION => {
                    if let Some((s, new)) = open_block {
                        if s == stream && flags & END_HEADERS != 0 {
                            if new {
                                v.new_requests.push(stream);
                            }
                        } else if s == stream {
                            continue;
                        }
                    }
                }
                WINDOW_UPDATE if len == 4 => {
                    let inc = u32::from_be_bytes([payload[0], payload[1], payload[2], payload[3]])
                        & 0x7fff_ffff;
                    if stream == 0 {
                        v.conn_increments += u64::from(inc);
                    } else {
                        *v.stream_increments.entry(stream).or_default() += u64::from(inc);
                    }
                }
                SETTINGS if flags & ACK == 0 => {
                    for s in payload.chunks_exact(6) {
                        let id = u16::from_be_bytes([s[0], s[1]]);
                        let value = u32::from_be_bytes([s[2], s[3], s[4], s[5]]);
                        match id {
                            4 => v.max_initial_window = v.max_initial_window.max(value.into()),
                            5 if (16_384..1 << 24).contains(&value) => {
                                v.max_frame_size = v.max_frame_size.max(value as usize)
                            }
                            _ => {}
                        }
                    }
                }
                _ => {}
            }
            open_block = None;
        }
        v
    }
}

/// Reads bytes from memory (for h2's codec reading the server's output).
struct Memory<'a>(&'a [u8]);

impl AsyncRead for Memory<'_> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let n = self.0.len().min(buf.remaining());
        buf.put_slice(&self.0[..n]);
        self.0 = &self.0[n..];
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Memory<'_> {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        b: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Poll::Ready(Ok(b.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// The server's frames, decoded by h2 as a client would.
pub(super) fn server_frames(out: &[u8], max_frame_size: usize) -> Vec<Frame> {
    let mut codec: h2::Codec<Memory<'_>, Bytes> = h2::Codec::new(Memory(out));
    codec.set_max_recv_frame_size(max_frame_size);
    codec.set_max_recv_header_list_size(1 << 20);
    let mut frames = Vec::new();
    let mut cx = Context::from_waker(Waker::noop());
    loop {
        match Pin::new(&mut codec).poll_next(&mut cx) {
            Poll::Ready(Some(Ok(f))) => frames.push(f),
            Poll::Ready(Some(Err(e))) => {
                panic!("the server wrote invalid HTTP/2 after {frames:?}: {e:?}")
            }
            Poll::Ready(None) => return frames,
            Poll::Pending => panic!("reading from memory does not wait"),
        }
    }
}

fn check_output(run: &Run, client: &ClientView, limits: H2Limits, preface_ok: bool) {
    let frames = server_frames(&run.out, client.max_frame_size);
    if std::env::var_os("PORTCULLIS_FUZZ_TRACE").is_some() {
        eprintln!(
            "client: {client:?}\nserver: {frames:#?}\nresult: {:?}",
            run.result
        );
    }
    if let Some(first) = frames.first() {
        assert!(
            matches!(first, Frame::Settings(s) if !s.is_ack()),
            "the server's first frame is {first:?}"
        );
    }
    let mut conn_data = 0u64;
    let mut stream_data: BTreeMap<u32, u64> = BTreeMap::new();
    // Streams with a response begun, and those the server ended.
    let mut responded = BTreeSet::new();
    let mut ended = BTreeSet::new();
    let mut answered = BTreeSet::new();
    let mut goaway_last: Option<u32> = None;
    let mut connection_error = false;
    let mut empty_data = 0;
    let mut non_data = 0;
    for (i, f) in frames.iter().enumerate() {
        assert!(
            !connection_error,
            "frames after a GOAWAY for a connection error: {:?}",
            &frames[i..]
        );
        if !matches!(f, Frame::Data(_)) {
            non_data += 1;
        }
        match f {
            Frame::Headers(h) => {
                let id = u32::from(h.stream_id());
                assert!(
                    id % 2 == 1 && client.ids.contains(&id),
                    "a response on stream {id}, which the client did not open"
                );
                assert!(
                    !ended.contains(&id),
                    "HEADERS on stream {id} after it ended"
                );
                responded.insert(id);
                answered.insert(id);
                if h.is_end_stream() {
                    ended.insert(id);
                }
            }
            Frame::Data(d) => {
                let id = u32::from(d.stream_id());
                assert!(
                    responded.contains(&id),
                    "DATA on stream {id} before its HEADERS"
                );
                assert!(!ended.contains(&id), "DATA on stream {id} after END_STREAM");
                let len = d.flow_controlled_len() as u64;
                if len == 0 {
                    empty_data += 1;
                }
                conn_data += len;
                *stream_data.entry(id).or_default() += len;
                if d.is_end_stream() {
                    ended.insert(id);
                }
            }
            Frame::Reset(r) => {
                let id = u32::from(r.stream_id());
                assert!(
                    id % 2 == 1 && client.ids.contains(&id),
                    "RST_STREAM on stream {id}, which the client never named"
                );
                answered.insert(id);
                ended.insert(id);
            }
            Frame::GoAway(g) => {
                let last = u32::from(g.last_stream_id());
                if let Some(prev) = goaway_last {
                    assert!(
                        last <= prev,
                        "GOAWAY's last stream id went up: {prev} → {last}"
                    );
                }
                goaway_last = Some(last);
                connection_error |= g.reason() != Reason::NO_ERROR;
            }
            Frame::PushPromise(_) | Frame::Priority(_) => {
                panic!("the server sent {f:?}")
            }
            Frame::Settings(_) | Frame::Ping(_) | Frame::WindowUpdate(_) => {}
        }
    }
    let conn_window = 65_535 + client.conn_increments;
    assert!(
        conn_data <= conn_window,
        "{conn_data} bytes of DATA, connection window {conn_window}"
    );
    for (id, sent) in &stream_data {
        let window =
            client.max_initial_window + client.stream_increments.get(id).copied().unwrap_or(0);
        assert!(
            sent <= &window,
            "{sent} bytes of DATA on stream {id}, window {window}"
        );
    }
    // Each client frame is answered by a few frames at most; every stream ends once.
    assert!(
        non_data <= 8 + 4 * client.frames,
        "{non_data} frames for {} client frames",
        client.frames
    );
    assert!(
        empty_data <= client.opened,
        "{empty_data} empty DATA frames"
    );
    if preface_ok && !connection_error && !run.shutdown_before_preface {
        for &id in &client.new_requests {
            let refused_by_goaway = goaway_last.is_some_and(|last| last < id);
            assert!(
                answered.contains(&id) || refused_by_goaway,
                "request on stream {id} neither answered nor refused (limits {limits:?})"
            );
        }
    }
}

pub(super) fn seeds() -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut s = Seed::default();
    let get = |s: &mut Seed, path: u8, authority: u8, end_stream: bool| {
        // op request, flags, template (pseudo-fields, literal), method GET, scheme https,
        // path, authority, no extra fields.
        s.byte(1)
            .byte(if end_stream { END_STREAM } else { 0 })
            .byte(0)
            .byte(0)
            .byte(0)
            .byte(path)
            .byte(authority)
            .byte(0);
    };
    // A few requests in one piece: small file, big file, listing, fixed answer, redirect.
    s.byte(0).byte(0).byte(0).byte(0).byte(0);
    for path in [1, 2, 5, 7, 8] {
        get(&mut s, path, 0, true);
    }
    s.byte(12);
    out.push(s.take());
    // The big file with window updates, a client that reads slowly, then a graceful shutdown
    // with the client answering the PING.
    s.byte(0).byte(2).byte(1).byte(0).byte(0);
    get(&mut s, 2, 0, true);
    s.byte(12).byte(14).byte(2).byte(100).byte(12);
    s.byte(5).byte(1).byte(0).byte(1).byte(0).byte(5); // stream WINDOW_UPDATE 1 MiB
    s.byte(5).byte(0).byte(3); // connection WINDOW_UPDATE 1 MiB
    s.byte(12)
        .byte(14)
        .byte(5)
        .byte(15)
        .byte(7)
        .byte(ACK)
        .byte(1)
        .byte(12);
    out.push(s.take());
    // A POST with a body on beta, trailers, a PING, SETTINGS changing windows and frame size.
    s.byte(0).byte(1).byte(0).byte(1).byte(1);
    s.byte(1)
        .byte(0)
        .byte(0)
        .byte(2)
        .byte(0)
        .byte(7)
        .byte(1)
        .byte(1);
    s.byte(0).byte(7).byte(1).byte(0); // content-length: 5
    s.byte(4).byte(0).byte(0).byte(1).byte(5);
    s.byte(11).byte(0).byte(END_HEADERS).byte(1).byte(0);
    s.byte(7).byte(0).byte(0).u32(0x0102_0304);
    s.byte(6)
        .byte(1)
        .byte(2)
        .byte(4)
        .byte(1)
        .u16(0)
        .byte(5)
        .byte(0)
        .byte(0)
        .byte(3);
    s.byte(12);
    out.push(s.take());
    // Many streams at once against a limit of 1, resets, a GOAWAY.
    s.byte(0).byte(0).byte(0).byte(0).byte(0);
    for _ in 0..6 {
        get(&mut s, 2, 0, false);
    }
    s.byte(8).byte(0).byte(3).byte(12);
    s.byte(9).u32(0).byte(0).byte(12);
    out.push(s.take());
    out
}
