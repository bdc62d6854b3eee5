//! HTTP/2 at the frame level (RFC 9113) against the real server over TLS (ALPN h2): the
//! connection preface and SETTINGS, PING, requests and responses on several streams, stream
//! states and identifiers, flow control in both directions, the concurrent-stream limit,
//! request bodies the server does not wait for, content-length checks, malformed requests and
//! graceful shutdown.
//!
//! The client here is hand-written: frames are built and parsed byte by byte, request headers
//! are HPACK "literal without indexing, new name" fields (no Huffman, no table), and of the
//! server's header blocks only the `:status` of the first field is decoded. Every frame sent
//! and received is recorded, and a failing assertion prints that trace.

mod common;

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

// Frame types (RFC 9113 §6).
const DATA: u8 = 0x0;
const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const PING: u8 = 0x6;
const GOAWAY: u8 = 0x7;
const WINDOW_UPDATE: u8 = 0x8;

// Flags.
const END_STREAM: u8 = 0x1;
const ACK: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY_FLAG: u8 = 0x20;

// Error codes (§7).
const NO_ERROR: u32 = 0x0;
const PROTOCOL_ERROR: u32 = 0x1;
const FLOW_CONTROL_ERROR: u32 = 0x3;
const STREAM_CLOSED: u32 = 0x5;
const REFUSED_STREAM: u32 = 0x7;
const CANCEL: u32 = 0x8;

// Settings (§6.5.2).
const SETTINGS_MAX_CONCURRENT_STREAMS: u16 = 0x3;
const SETTINGS_INITIAL_WINDOW_SIZE: u16 = 0x4;

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// The default SETTINGS_MAX_FRAME_SIZE, which our client never raises.
const MAX_FRAME: usize = 16_384;
/// How long any one expected frame may take.
const FRAME_TIMEOUT: Duration = Duration::from_secs(5);
/// How long "nothing more arrives" is watched for.
const QUIET: Duration = Duration::from_millis(300);

/// `www/small.txt`.
const SMALL: &[u8] = b"a small file, served whole in one DATA frame\n";
/// `www/big.bin`: more than one DATA frame, less than the default connection window.
const BIG_LEN: usize = 40_000;

fn big() -> Vec<u8> {
    (0..BIG_LEN).map(|i| (i % 251) as u8).collect()
}

/// Starts a server with `prefix` (top-level tables such as `[http]`) and one site, alpha,
/// serving the static directory `www` with `small.txt` and `big.bin`.
fn start_static(prefix: &str) -> TestServer {
    let env = TestEnv::new();
    env.write("www/small.txt", SMALL);
    env.write("www/big.bin", big());
    env.start(&format!(
        r#"{prefix}
[[site]]
name = "alpha"
hosts = ["alpha.test", "www.alpha.test"]
cert = "certs/alpha.pem"
key = "certs/alpha.key"
root = "www"
"#
    ))
}

// ---------------------------------------------------------------------------------------------
// Frames
// ---------------------------------------------------------------------------------------------

struct Frame {
    ty: u8,
    flags: u8,
    stream: u32,
    payload: Vec<u8>,
}

fn be32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

fn type_name(ty: u8) -> String {
    match ty {
        0x0 => "DATA".into(),
        0x1 => "HEADERS".into(),
        0x2 => "PRIORITY".into(),
        0x3 => "RST_STREAM".into(),
        0x4 => "SETTINGS".into(),
        0x5 => "PUSH_PROMISE".into(),
        0x6 => "PING".into(),
        0x7 => "GOAWAY".into(),
        0x8 => "WINDOW_UPDATE".into(),
        0x9 => "CONTINUATION".into(),
        t => format!("type {t:#x}"),
    }
}

impl Frame {
    fn has(&self, flag: u8) -> bool {
        self.flags & flag != 0
    }

    /// The error code of RST_STREAM or GOAWAY.
    fn error_code(&self) -> u32 {
        match self.ty {
            RST_STREAM if self.payload.len() == 4 => be32(&self.payload),
            GOAWAY if self.payload.len() >= 8 => be32(&self.payload[4..8]),
            _ => panic!("no error code in {self:?}"),
        }
    }

    /// GOAWAY's last-stream-id.
    fn last_stream_id(&self) -> u32 {
        assert!(self.ty == GOAWAY && self.payload.len() >= 8, "{self:?}");
        be32(&self.payload) & 0x7fff_ffff
    }

    /// A HEADERS frame's header block fragment (without padding and priority fields).
    fn header_block(&self) -> &[u8] {
        let mut p = &self.payload[..];
        let mut pad = 0;
        if self.has(PADDED) {
            pad = p[0] as usize;
            p = &p[1..];
        }
        if self.has(PRIORITY_FLAG) {
            p = &p[5..];
        }
        &p[..p.len() - pad]
    }
}

impl std::fmt::Debug for Frame {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} stream={} flags={:#04x} len={}",
            type_name(self.ty),
            self.stream,
            self.flags,
            self.payload.len()
        )?;
        let p = &self.payload;
        match self.ty {
            RST_STREAM if p.len() == 4 => write!(f, " error={}", be32(p)),
            GOAWAY if p.len() >= 8 => write!(
                f,
                " last_stream={} error={} debug={:?}",
                be32(p) & 0x7fff_ffff,
                be32(&p[4..]),
                String::from_utf8_lossy(&p[8..])
            ),
            WINDOW_UPDATE if p.len() == 4 => write!(f, " increment={}", be32(p)),
            SETTINGS => {
                for s in p.chunks(6).filter(|s| s.len() == 6) {
                    write!(
                        f,
                        " {:#x}={}",
                        u16::from_be_bytes([s[0], s[1]]),
                        be32(&s[2..])
                    )?;
                }
                Ok(())
            }
            PING => write!(f, " payload={p:02x?}"),
            HEADERS => match status_of(self.header_block()) {
                Ok(status) => write!(f, " status={status}"),
                Err(_) => Ok(()),
            },
            _ => Ok(()),
        }
    }
}

fn frame_bytes(ty: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len();
    assert!(len < 1 << 24);
    let mut out = Vec::with_capacity(9 + len);
    out.extend_from_slice(&(len as u32).to_be_bytes()[1..]);
    out.push(ty);
    out.push(flags);
    out.extend_from_slice(&(stream & 0x7fff_ffff).to_be_bytes());
    out.extend_from_slice(payload);
    out
}

// ---------------------------------------------------------------------------------------------
// HPACK, as little as needed (RFC 7541)
// ---------------------------------------------------------------------------------------------

/// An integer with an `n`-bit prefix; `first` holds the bits above the prefix (§5.1).
fn hpack_int(out: &mut Vec<u8>, mut v: usize, n: u32, first: u8) {
    let max = (1usize << n) - 1;
    if v < max {
        out.push(first | v as u8);
        return;
    }
    out.push(first | max as u8);
    v -= max;
    while v >= 128 {
        out.push((v % 128) as u8 | 0x80);
        v /= 128;
    }
    out.push(v as u8);
}

fn hpack_read_int(b: &[u8], pos: &mut usize, n: u32) -> Result<usize, String> {
    let max = (1usize << n) - 1;
    let first = *b.get(*pos).ok_or("truncated integer")? as usize & max;
    *pos += 1;
    if first < max {
        return Ok(first);
    }
    let mut v = max;
    let mut shift = 0;
    loop {
        let byte = *b.get(*pos).ok_or("truncated integer")? as usize;
        *pos += 1;
        v += (byte & 0x7f) << shift;
        shift += 7;
        if byte & 0x80 == 0 {
            return Ok(v);
        }
        if shift > 28 {
            return Err("integer too long".into());
        }
    }
}

/// A header block of "literal header field without indexing — new name" fields, raw strings.
fn hpack_block(fields: &[(&str, &str)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, value) in fields {
        out.push(0x00);
        for s in [name, value] {
            hpack_int(&mut out, s.len(), 7, 0x00);
            out.extend_from_slice(s.as_bytes());
        }
    }
    out
}

/// Decodes a Huffman-coded string of decimal digits (RFC 7541 Appendix B: '0'-'2' are the
/// 5-bit codes 00000-00010, '3'-'9' the 6-bit codes 011001-011111; padding is 1 bits).
fn huffman_digits(b: &[u8]) -> Result<String, String> {
    let mut out = String::new();
    let (mut code, mut len) = (0u32, 0u32);
    for i in 0..b.len() * 8 {
        let bit = (b[i / 8] >> (7 - i % 8)) & 1;
        code = code << 1 | u32::from(bit);
        len += 1;
        let digit = match (len, code) {
            (5, 0..=2) => Some(code),
            (6, 0b011001..=0b011111) => Some(code - 0b011001 + 3),
            _ => None,
        };
        if let Some(d) = digit {
            out.push(char::from_digit(d, 10).unwrap());
            (code, len) = (0, 0);
        } else if len > 6 && code != (1 << len) - 1 {
            return Err(format!("not a Huffman-coded digit: {b:02x?}"));
        }
    }
    if len > 7 || code != (1 << len) - 1 {
        return Err(format!("bad Huffman padding: {b:02x?}"));
    }
    Ok(out)
}

/// The `:status` of a response header block, from its first field: an indexed static entry
/// (8-14), or a literal whose name is a static `:status` entry and whose value is raw or
/// Huffman-coded. Dynamic table size updates before it are skipped. (A status the server
/// indexed in its dynamic table earlier on the connection cannot be decoded here.)
fn status_of(block: &[u8]) -> Result<u16, String> {
    const STATIC: [u16; 7] = [200, 204, 206, 304, 400, 404, 500];
    let mut pos = 0;
    while block.get(pos).is_some_and(|b| b & 0xe0 == 0x20) {
        hpack_read_int(block, &mut pos, 5)?;
    }
    let first = *block.get(pos).ok_or("empty header block")?;
    if first & 0x80 != 0 {
        let idx = hpack_read_int(block, &mut pos, 7)?;
        return match idx {
            8..=14 => Ok(STATIC[idx - 8]),
            _ => Err(format!(
                "first field is indexed entry {idx}, not a static :status"
            )),
        };
    }
    let prefix = if first & 0xc0 == 0x40 { 6 } else { 4 };
    let name = hpack_read_int(block, &mut pos, prefix)?;
    if !(8..=14).contains(&name) {
        return Err(format!("first field's name is entry {name}, not :status"));
    }
    let huffman = block.get(pos).ok_or("truncated")? & 0x80 != 0;
    let len = hpack_read_int(block, &mut pos, 7)?;
    let raw = block.get(pos..pos + len).ok_or("truncated value")?;
    let text = if huffman {
        huffman_digits(raw)?
    } else {
        String::from_utf8_lossy(raw).into_owned()
    };
    text.parse().map_err(|_| format!(":status {text:?}"))
}

#[test]
fn hpack_helpers_decode_what_they_should() {
    // RFC 7541 C.1: 1337 with a 5-bit prefix.
    let mut v = Vec::new();
    hpack_int(&mut v, 1337, 5, 0);
    assert_eq!(v, [0x1f, 0x9a, 0x0a]);
    assert_eq!(hpack_read_int(&v, &mut 0, 5), Ok(1337));
    assert_eq!(status_of(&[0x88]), Ok(200));
    assert_eq!(status_of(&[0x8d]), Ok(404));
    // Literal with incremental indexing, name :status, Huffman "302" (RFC 7541 C.6.1).
    assert_eq!(status_of(&[0x48, 0x82, 0x64, 0x02]), Ok(302));
    // Literal without indexing, raw "405".
    assert_eq!(status_of(&[0x08, 0x03, b'4', b'0', b'5']), Ok(405));
    assert!(status_of(&[0xbe]).is_err());
}

// ---------------------------------------------------------------------------------------------
// The client connection
// ---------------------------------------------------------------------------------------------

enum Next {
    Frame(Frame),
    Eof,
    Timeout,
    Error(String),
}

struct Conn {
    tls: TlsStream<TcpStream>,
    buf: Vec<u8>,
    trace: Vec<String>,
    /// The server's first SETTINGS frame's values.
    server_settings: Vec<(u16, u32)>,
}

fn request_fields<'a>(method: &'a str, path: &'a str) -> Vec<(&'a str, &'a str)> {
    vec![
        (":method", method),
        (":scheme", "https"),
        (":authority", ALPHA),
        (":path", path),
    ]
}

impl Conn {
    /// TLS with ALPN h2; nothing sent yet.
    async fn open(srv: &TestServer) -> Conn {
        Conn::open_with(srv, ClientOpts::default()).await
    }

    /// [`Conn::open`] with other client options (e.g. TLS 1.2 only).
    async fn open_with(srv: &TestServer, opts: ClientOpts) -> Conn {
        let cfg = opts.alpn(&["h2"]).build();
        let tls = tls_connect(srv.https, Some(ALPHA), cfg).await.unwrap();
        assert_eq!(
            tls.get_ref().1.alpn_protocol(),
            Some(&b"h2"[..]),
            "h2 not negotiated"
        );
        Conn {
            tls,
            buf: Vec::new(),
            trace: Vec::new(),
            server_settings: Vec::new(),
        }
    }

    /// The preface and our SETTINGS, then the exchange: the server's SETTINGS (ACKed) and its
    /// ACK of ours. Afterwards nothing is written unless a test writes it.
    async fn start(srv: &TestServer, settings: &[(u16, u32)]) -> Conn {
        let mut c = Conn::open(srv).await;
        c.write_raw(PREFACE).await;
        c.settings(settings).await;
        let (mut got_settings, mut got_ack) = (false, false);
        while !(got_settings && got_ack) {
            let f = c.next_or_fail("during the SETTINGS exchange").await;
            match f.ty {
                SETTINGS if f.has(ACK) => got_ack = true,
                SETTINGS => {
                    got_settings = true;
                    c.server_settings = f
                        .payload
                        .chunks(6)
                        .map(|s| (u16::from_be_bytes([s[0], s[1]]), be32(&s[2..])))
                        .collect();
                    c.write(SETTINGS, ACK, 0, &[]).await;
                }
                WINDOW_UPDATE if f.stream == 0 => {}
                _ => c.fail(&format!("unexpected during the SETTINGS exchange: {f:?}")),
            }
        }
        c
    }

    /// GET /small.txt on `stream`: 200 and the file, whole.
    async fn get_small(&mut self, stream: u32) {
        self.get(stream, "/small.txt").await;
        let (status, body) = self.expect_response(stream).await;
        if (status, body.as_slice()) != (200, SMALL) {
            self.fail(&format!("stream {stream}: {status}, {} bytes", body.len()));
        }
    }

    fn fail(&self, msg: &str) -> ! {
        panic!("{msg}\nframe trace:\n  {}", self.trace.join("\n  "));
    }

    async fn write_raw(&mut self, bytes: &[u8]) {
        if let Err(e) = self.tls.write_all(bytes).await {
            self.fail(&format!("write failed: {e}"));
        }
        if let Err(e) = self.tls.flush().await {
            self.fail(&format!("flush failed: {e}"));
        }
    }

    async fn write(&mut self, ty: u8, flags: u8, stream: u32, payload: &[u8]) {
        let f = Frame {
            ty,
            flags,
            stream,
            payload: payload.to_vec(),
        };
        self.trace.push(format!("-> {f:?}"));
        self.write_raw(&frame_bytes(ty, flags, stream, payload))
            .await;
    }

    async fn settings(&mut self, settings: &[(u16, u32)]) {
        let mut p = Vec::new();
        for (id, value) in settings {
            p.extend_from_slice(&id.to_be_bytes());
            p.extend_from_slice(&value.to_be_bytes());
        }
        self.write(SETTINGS, 0, 0, &p).await;
    }

    async fn headers(&mut self, stream: u32, fields: &[(&str, &str)], end_stream: bool) {
        let flags = END_HEADERS | if end_stream { END_STREAM } else { 0 };
        self.write(HEADERS, flags, stream, &hpack_block(fields))
            .await;
        if let Some(line) = self.trace.last_mut() {
            let _ = write!(line, " {fields:?}");
        }
    }

    async fn get(&mut self, stream: u32, path: &str) {
        self.headers(stream, &request_fields("GET", path), true)
            .await;
    }

    async fn data(&mut self, stream: u32, payload: &[u8], end_stream: bool) {
        let flags = if end_stream { END_STREAM } else { 0 };
        self.write(DATA, flags, stream, payload).await;
    }

    async fn window_update(&mut self, stream: u32, increment: u32) {
        self.write(WINDOW_UPDATE, 0, stream, &increment.to_be_bytes())
            .await;
    }

    async fn ping(&mut self, payload: [u8; 8]) {
        self.write(PING, 0, 0, &payload).await;
    }

    /// Reads exactly one frame, waiting at most `timeout`.
    async fn next(&mut self, timeout: Duration) -> Next {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if self.buf.len() >= 9 {
                let len = u32::from_be_bytes([0, self.buf[0], self.buf[1], self.buf[2]]) as usize;
                if self.buf.len() >= 9 + len {
                    let f = Frame {
                        ty: self.buf[3],
                        flags: self.buf[4],
                        stream: be32(&self.buf[5..9]) & 0x7fff_ffff,
                        payload: self.buf[9..9 + len].to_vec(),
                    };
                    self.buf.drain(..9 + len);
                    self.trace.push(format!("<- {f:?}"));
                    return Next::Frame(f);
                }
            }
            let mut chunk = [0u8; 16 * 1024];
            match tokio::time::timeout_at(deadline, self.tls.read(&mut chunk)).await {
                Err(_) => return Next::Timeout,
                Ok(Ok(0)) if self.buf.is_empty() => {
                    self.trace.push("<- EOF".into());
                    return Next::Eof;
                }
                Ok(Ok(0)) => return Next::Error(format!("EOF within a frame: {:02x?}", self.buf)),
                Ok(Ok(n)) => self.buf.extend_from_slice(&chunk[..n]),
                Ok(Err(e)) => {
                    self.trace.push(format!("<- read error: {e}"));
                    return Next::Error(e.to_string());
                }
            }
        }
    }

    async fn next_or_fail(&mut self, what: &str) -> Frame {
        match self.next(FRAME_TIMEOUT).await {
            Next::Frame(f) => f,
            Next::Eof => self.fail(&format!("connection closed {what}")),
            Next::Timeout => self.fail(&format!("no frame within {FRAME_TIMEOUT:?} {what}")),
            Next::Error(e) => self.fail(&format!("read failed {what}: {e}")),
        }
    }

    /// Frames that do not answer anything a test asks: SETTINGS (ACKs) and the server's
    /// WINDOW_UPDATEs for what we send.
    fn housekeeping(f: &Frame) -> bool {
        matches!(f.ty, SETTINGS | WINDOW_UPDATE)
    }

    /// The next frame that is not housekeeping.
    async fn recv(&mut self, what: &str) -> Frame {
        loop {
            let f = self.next_or_fail(what).await;
            if !Self::housekeeping(&f) {
                return f;
            }
        }
    }

    /// Nothing but housekeeping arrives for [`QUIET`].
    async fn quiet(&mut self, what: &str) {
        let deadline = Instant::now() + QUIET;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return;
            }
            match self.next(left).await {
                Next::Timeout => return,
                Next::Frame(f) if Self::housekeeping(&f) => {}
                Next::Frame(f) => self.fail(&format!("{what}, but got {f:?}")),
                Next::Eof => self.fail(&format!("{what}, but the connection closed")),
                Next::Error(e) => self.fail(&format!("{what}, but reading failed: {e}")),
            }
        }
    }

    /// A response's HEADERS frame on `stream` (whole: END_HEADERS).
    async fn expect_headers_frame(&mut self, stream: u32) -> Frame {
        let what = format!("waiting for HEADERS on stream {stream}");
        let f = self.recv(&what).await;
        if f.ty != HEADERS || f.stream != stream {
            self.fail(&format!("expected HEADERS on stream {stream}, got {f:?}"));
        }
        if !f.has(END_HEADERS) {
            self.fail("a response header block that needs CONTINUATION (unexpected here)");
        }
        f
    }

    /// A response's HEADERS on `stream`; returns its status and whether it ended the stream.
    async fn expect_headers(&mut self, stream: u32) -> (u16, bool) {
        let f = self.expect_headers_frame(stream).await;
        match status_of(f.header_block()) {
            Ok(status) => (status, f.has(END_STREAM)),
            Err(e) => self.fail(&format!("no :status in {f:?}: {e}")),
        }
    }

    /// DATA on `stream` up to END_STREAM: the body.
    async fn expect_body(&mut self, stream: u32) -> Vec<u8> {
        let mut body = Vec::new();
        loop {
            let f = self
                .recv(&format!("waiting for DATA on stream {stream}"))
                .await;
            if f.ty != DATA || f.stream != stream {
                self.fail(&format!("expected DATA on stream {stream}, got {f:?}"));
            }
            if f.payload.len() > MAX_FRAME {
                self.fail(&format!("DATA larger than SETTINGS_MAX_FRAME_SIZE: {f:?}"));
            }
            body.extend_from_slice(&f.payload);
            if f.has(END_STREAM) {
                return body;
            }
        }
    }

    /// A whole response on `stream`: status and body.
    async fn expect_response(&mut self, stream: u32) -> (u16, Vec<u8>) {
        let (status, end) = self.expect_headers(stream).await;
        if end {
            return (status, Vec::new());
        }
        (status, self.expect_body(stream).await)
    }

    /// RST_STREAM on `stream`; returns its error code.
    async fn expect_rst(&mut self, stream: u32) -> u32 {
        let f = self
            .recv(&format!("waiting for RST_STREAM on stream {stream}"))
            .await;
        if f.ty != RST_STREAM || f.stream != stream || f.payload.len() != 4 {
            self.fail(&format!(
                "expected RST_STREAM on stream {stream}, got {f:?}"
            ));
        }
        f.error_code()
    }

    async fn expect_goaway(&mut self) -> Frame {
        let f = self.recv("waiting for GOAWAY").await;
        if f.ty != GOAWAY || f.stream != 0 || f.payload.len() < 8 {
            self.fail(&format!("expected GOAWAY, got {f:?}"));
        }
        f
    }

    async fn expect_ping_ack(&mut self, payload: [u8; 8]) {
        let f = self.recv("waiting for the PING ACK").await;
        if f.ty != PING || !f.has(ACK) || f.stream != 0 || f.payload != payload {
            self.fail(&format!(
                "expected PING ACK with payload {payload:02x?}, got {f:?}"
            ));
        }
    }

    /// The server closes the connection cleanly (TLS close_notify, then EOF): nothing more.
    async fn expect_eof(&mut self) {
        match self.next(FRAME_TIMEOUT).await {
            Next::Eof => {}
            Next::Frame(f) => self.fail(&format!("expected the connection to close, got {f:?}")),
            Next::Timeout => self.fail(&format!(
                "connection still open {FRAME_TIMEOUT:?} after GOAWAY"
            )),
            Next::Error(e) => self.fail(&format!("expected a clean close, got: {e}")),
        }
    }

    /// Asserts a GOAWAY with `code` (one of `codes`) and `last_stream`, then the close.
    async fn expect_connection_error(&mut self, codes: &[u32], last_stream: u32) {
        let g = self.expect_goaway().await;
        if !codes.contains(&g.error_code()) {
            self.fail(&format!("GOAWAY error code not one of {codes:?}: {g:?}"));
        }
        if g.last_stream_id() != last_stream {
            self.fail(&format!("GOAWAY last-stream-id not {last_stream}: {g:?}"));
        }
        self.expect_eof().await;
    }

    fn trace_text(&self) -> String {
        let mut s = String::new();
        for line in &self.trace {
            let _ = writeln!(s, "  {line}");
        }
        s
    }
}

// ---------------------------------------------------------------------------------------------
// Preface, SETTINGS, PING
// ---------------------------------------------------------------------------------------------

/// §3.4: the client preface is followed by a SETTINGS frame; anything else first is a
/// connection error of type PROTOCOL_ERROR.
#[tokio::test]
async fn first_frame_not_settings_is_goaway_protocol_error() {
    let srv = start_static("");
    let mut c = Conn::open(&srv).await;
    let mut bytes = PREFACE.to_vec();
    bytes.extend(frame_bytes(PING, 0, 0, &[1, 2, 3, 4, 5, 6, 7, 8]));
    c.trace.push("-> preface, PING".into());
    c.write_raw(&bytes).await;
    // The server's own SETTINGS (and connection WINDOW_UPDATE) come first; no PING ACK.
    c.expect_connection_error(&[PROTOCOL_ERROR], 0).await;
}

/// §6.7: a PING is answered with a PING with ACK and the same payload; a PING that is itself
/// an ACK is not answered.
#[tokio::test]
async fn ping_is_answered_with_ack_and_same_payload() {
    let srv = start_static("");
    let mut c = Conn::start(&srv, &[]).await;
    // An unsolicited ACK first: it must be ignored, so the next answer is to the second PING.
    c.write(PING, ACK, 0, &[9; 8]).await;
    let payload = [0xde, 0xad, 0xbe, 0xef, 0x01, 0x02, 0x03, 0x04];
    c.ping(payload).await;
    c.expect_ping_ack(payload).await;
    c.quiet("nothing else after the PING ACK").await;
}

// ---------------------------------------------------------------------------------------------
// Requests and streams
// ---------------------------------------------------------------------------------------------

/// GET on stream 1: HEADERS (200), then the file in DATA ending the stream; the connection
/// serves a second GET on stream 3.
/// §3.4: the server's preface (SETTINGS) does not wait for the client's. Over TLS 1.2 the
/// client's handshake only completes with the server's Finished, which the server sends with
/// its first bytes: a server waiting for the client's preface first never completes it.
#[tokio::test]
async fn tls12_server_settings_come_before_the_client_preface() {
    let srv = start_static("");
    let connect = Conn::open_with(&srv, ClientOpts::default().tls12());
    let mut c = tokio::time::timeout(Duration::from_secs(5), connect)
        .await
        .expect("TLS 1.2 handshake with ALPN h2 did not complete");
    let f = c.next_or_fail("before the client preface").await;
    assert_eq!(f.ty, SETTINGS, "{}", c.trace_text());
    assert!(!f.has(ACK), "{}", c.trace_text());
    c.write_raw(PREFACE).await;
    c.settings(&[]).await;
    c.write(SETTINGS, ACK, 0, &[]).await;
    c.get(1, "/small.txt").await;
    let (status, body) = c.expect_response(1).await;
    assert_eq!((status, &body[..]), (200, SMALL), "{}", c.trace_text());
}

#[tokio::test]
async fn get_small_file_then_second_stream_on_same_connection() {
    let srv = start_static("");
    let mut c = Conn::start(&srv, &[]).await;
    c.get(1, "/small.txt").await;
    let (status, end) = c.expect_headers(1).await;
    assert_eq!(status, 200, "{}", c.trace_text());
    assert!(
        !end,
        "HEADERS ended a stream with a body\n{}",
        c.trace_text()
    );
    let body = c.expect_body(1).await;
    assert_eq!(body, SMALL, "{}", c.trace_text());

    c.get(3, "/big.bin").await;
    let (status, body) = c.expect_response(3).await;
    assert_eq!(status, 200, "{}", c.trace_text());
    assert!(
        body == big(),
        "stream 3: {} bytes\n{}",
        body.len(),
        c.trace_text()
    );
    c.quiet("nothing after the two responses").await;
}

/// §5.1: DATA on an idle stream is a connection error of type PROTOCOL_ERROR.
#[tokio::test]
async fn data_on_idle_stream_is_goaway_protocol_error() {
    let srv = start_static("");
    let mut c = Conn::start(&srv, &[]).await;
    c.get(1, "/small.txt").await;
    assert_eq!(c.expect_response(1).await.1, SMALL);
    // Stream 5 was never opened (nor was 3).
    c.data(5, b"hello", false).await;
    c.expect_connection_error(&[PROTOCOL_ERROR], 1).await;
}

/// §5.1.1: a client-initiated stream has an odd id; HEADERS on stream 2 is a connection error
/// of type PROTOCOL_ERROR.
#[tokio::test]
async fn headers_on_even_stream_is_goaway_protocol_error() {
    let srv = start_static("");
    let mut c = Conn::start(&srv, &[]).await;
    c.get(2, "/small.txt").await;
    c.expect_connection_error(&[PROTOCOL_ERROR], 0).await;
}

/// §5.1.1: a new stream's id must be above all the client opened before; HEADERS on stream 1
/// after stream 3 is a connection error (STREAM_CLOSED, §5.1 "closed", or PROTOCOL_ERROR).
#[tokio::test]
async fn reused_lower_stream_id_is_goaway() {
    let srv = start_static("");
    let mut c = Conn::start(&srv, &[]).await;
    c.get(1, "/small.txt").await;
    assert_eq!(c.expect_response(1).await.1, SMALL);
    c.get(3, "/small.txt").await;
    assert_eq!(c.expect_response(3).await.1, SMALL);
    c.get(1, "/small.txt").await;
    c.expect_connection_error(&[STREAM_CLOSED, PROTOCOL_ERROR], 3)
        .await;
}

/// §8.3.1: a request without `:path` is malformed: a stream error of type PROTOCOL_ERROR
/// (§8.1.1), not a connection error; the next stream is served.
#[tokio::test]
async fn request_without_path_is_rst_protocol_error_and_connection_lives_on() {
    let srv = start_static("");
    let mut c = Conn::start(&srv, &[]).await;
    c.headers(
        1,
        &[
            (":method", "GET"),
            (":scheme", "https"),
            (":authority", ALPHA),
        ],
        true,
    )
    .await;
    let code = c.expect_rst(1).await;
    assert_eq!(code, PROTOCOL_ERROR, "{}", c.trace_text());
    c.get_small(3).await;
}

/// §5.1: RST_STREAM and WINDOW_UPDATE on an idle stream are connection errors of type
/// PROTOCOL_ERROR (§6.4; only HEADERS and PRIORITY may arrive on an idle stream).
#[tokio::test]
async fn rst_stream_or_window_update_on_idle_stream_is_goaway_protocol_error() {
    let srv = start_static("");
    let mut c = Conn::start(&srv, &[]).await;
    c.write(RST_STREAM, 0, 1, &CANCEL.to_be_bytes()).await;
    c.expect_connection_error(&[PROTOCOL_ERROR], 0).await;

    let mut c = Conn::start(&srv, &[]).await;
    c.get(1, "/small.txt").await;
    assert_eq!(c.expect_response(1).await.1, SMALL);
    c.window_update(3, 1000).await;
    c.expect_connection_error(&[PROTOCOL_ERROR], 1).await;
}

/// §5.1: the server opens no streams, so every even stream is idle, below the client's last
/// stream too: DATA, RST_STREAM and WINDOW_UPDATE there are connection errors, not answered with
/// a RST_STREAM on the idle stream (§6.4 forbids that; found by the h2_connection fuzz target).
#[tokio::test]
async fn data_rst_stream_or_window_update_on_even_stream_is_goaway_protocol_error() {
    let srv = start_static("");
    for frame in [DATA, RST_STREAM, WINDOW_UPDATE] {
        let mut c = Conn::start(&srv, &[]).await;
        c.get(1, "/small.txt").await;
        assert_eq!(c.expect_response(1).await.1, SMALL);
        c.get(3, "/small.txt").await;
        assert_eq!(c.expect_response(3).await.1, SMALL);
        let payload = match frame {
            DATA => b"hello".to_vec(),
            RST_STREAM => CANCEL.to_be_bytes().to_vec(),
            _ => 1000u32.to_be_bytes().to_vec(),
        };
        c.write(frame, 0, 2, &payload).await;
        c.expect_connection_error(&[PROTOCOL_ERROR], 3).await;
    }
}

/// §5.1, §5.3.2: PRIORITY may be sent on an idle stream; it neither opens the stream nor
/// raises the lowest id a new stream may use, and it is not answered.
#[tokio::test]
async fn priority_on_idle_stream_is_accepted() {
    let srv = start_static("");
    let mut c = Conn::start(&srv, &[]).await;
    // Stream 5 depends on stream 0, weight 16.
    c.write(0x2, 0, 5, &[0, 0, 0, 0, 15]).await;
    let payload = [2; 8];
    c.ping(payload).await;
    c.expect_ping_ack(payload).await;
    // Stream 1 is still a valid new stream, and so is 5 afterwards.
    for id in [1, 5] {
        c.get_small(id).await;
    }
}

/// §8.2.2: a request with a connection-specific field is malformed: a stream error of type
/// PROTOCOL_ERROR (§8.1.1); the connection serves the next stream.
#[tokio::test]
async fn connection_specific_field_is_rst_protocol_error() {
    let srv = start_static("");
    let mut c = Conn::start(&srv, &[]).await;
    let mut fields = request_fields("GET", "/small.txt");
    fields.push(("connection", "keep-alive"));
    c.headers(1, &fields, true).await;
    assert_eq!(c.expect_rst(1).await, PROTOCOL_ERROR, "{}", c.trace_text());
    let mut fields = request_fields("GET", "/small.txt");
    fields.push(("te", "gzip"));
    c.headers(3, &fields, true).await;
    assert_eq!(c.expect_rst(3).await, PROTOCOL_ERROR, "{}", c.trace_text());
    c.get_small(5).await;
}

/// §8.2.1: a field name with uppercase letters makes the request malformed (§8.1.1: a stream
/// error of type PROTOCOL_ERROR, which §5.4 allows to be treated as a connection error; h2's
/// HPACK decoder rejects such a name, so here it is one). Either way the request is not served.
#[tokio::test]
async fn uppercase_field_name_is_protocol_error() {
    let srv = start_static("");
    let mut c = Conn::start(&srv, &[]).await;
    let mut fields = request_fields("GET", "/small.txt");
    fields.push(("X-Upper", "1"));
    c.headers(1, &fields, true).await;
    let f = c.recv("waiting for RST_STREAM or GOAWAY").await;
    match f.ty {
        RST_STREAM if f.stream == 1 => {
            assert_eq!(f.error_code(), PROTOCOL_ERROR, "{}", c.trace_text())
        }
        GOAWAY => {
            assert_eq!(f.error_code(), PROTOCOL_ERROR, "{}", c.trace_text());
            c.expect_eof().await;
        }
        _ => c.fail(&format!("expected RST_STREAM or GOAWAY, got {f:?}")),
    }
}

/// §5.1.1: a client's HEADERS on an even stream is a connection error of type PROTOCOL_ERROR,
/// also when its header block is malformed too (which alone would be a stream error).
#[tokio::test]
async fn malformed_headers_on_even_stream_is_goaway_protocol_error() {
    let srv = start_static("");
    let mut c = Conn::start(&srv, &[]).await;
    let mut fields = request_fields("GET", "/small.txt");
    fields.push(("connection", "keep-alive"));
    c.headers(2, &fields, true).await;
    c.expect_connection_error(&[PROTOCOL_ERROR], 0).await;
}

/// §5.1.1: a client reusing a lower stream id is a connection error, also when the reused
/// stream's header block is malformed (which alone would be a stream error).
#[tokio::test]
async fn malformed_headers_on_reused_stream_id_is_goaway() {
    let srv = start_static("");
    let mut c = Conn::start(&srv, &[]).await;
    c.get(1, "/small.txt").await;
    assert_eq!(c.expect_response(1).await.1, SMALL);
    c.get(3, "/small.txt").await;
    assert_eq!(c.expect_response(3).await.1, SMALL);
    let mut fields = request_fields("GET", "/small.txt");
    fields.push(("connection", "keep-alive"));
    c.headers(1, &fields, true).await;
    c.expect_connection_error(&[STREAM_CLOSED, PROTOCOL_ERROR], 3)
        .await;
}

/// §8.4: a client cannot push; PUSH_PROMISE from it is a connection error of type
/// PROTOCOL_ERROR.
#[tokio::test]
async fn push_promise_from_client_is_goaway_protocol_error() {
    let srv = start_static("");
    let mut c = Conn::start(&srv, &[]).await;
    let mut fields = request_fields("POST", "/small.txt");
    fields.push(("content-length", "10"));
    c.headers(1, &fields, false).await;
    let _ = c.expect_response(1).await;
    assert_eq!(c.expect_rst(1).await, NO_ERROR, "{}", c.trace_text());
    c.get(3, "/small.txt").await;
    assert_eq!(c.expect_response(3).await.1, SMALL);
    // PUSH_PROMISE (type 5) on stream 3 promising stream 2.
    let mut payload = 2u32.to_be_bytes().to_vec();
    payload.extend(hpack_block(&request_fields("GET", "/small.txt")));
    c.write(0x5, END_HEADERS, 3, &payload).await;
    c.expect_connection_error(&[PROTOCOL_ERROR], 3).await;
}

// ---------------------------------------------------------------------------------------------
// Flow control
// ---------------------------------------------------------------------------------------------

/// §6.9: with the client's SETTINGS_INITIAL_WINDOW_SIZE = 0 the server sends the response's
/// HEADERS but no DATA; a stream WINDOW_UPDATE of 1000 lets exactly 1000 bytes through; a
/// larger one the rest, ending the stream.
#[tokio::test]
async fn stream_window_zero_holds_data_until_window_update() {
    let srv = start_static("");
    let mut c = Conn::start(&srv, &[(SETTINGS_INITIAL_WINDOW_SIZE, 0)]).await;
    c.get(1, "/big.bin").await;
    let (status, end) = c.expect_headers(1).await;
    assert_eq!(status, 200, "{}", c.trace_text());
    assert!(!end, "{}", c.trace_text());
    c.quiet("no DATA with a zero stream window").await;

    c.window_update(1, 1000).await;
    let mut body = Vec::new();
    while body.len() < 1000 {
        let f = c.recv("waiting for 1000 bytes of DATA").await;
        if f.ty != DATA || f.stream != 1 || f.has(END_STREAM) {
            c.fail(&format!(
                "expected DATA on stream 1 without END_STREAM, got {f:?}"
            ));
        }
        body.extend_from_slice(&f.payload);
    }
    assert_eq!(
        body.len(),
        1000,
        "more DATA than the window allowed\n{}",
        c.trace_text()
    );
    c.quiet("no DATA beyond the 1000-byte window").await;

    // The rest and more: the connection window (65535) is not the limit either.
    c.window_update(1, (BIG_LEN - 1000 + 5000) as u32).await;
    body.extend(c.expect_body(1).await);
    assert_eq!(body.len(), BIG_LEN, "{}", c.trace_text());
    assert!(body == big(), "body corrupted\n{}", c.trace_text());
    c.quiet("nothing after END_STREAM").await;
}

/// §6.9.1: a WINDOW_UPDATE that takes the connection's send window above 2^31-1 is a
/// connection error of type FLOW_CONTROL_ERROR.
#[tokio::test]
async fn connection_window_overflow_is_goaway_flow_control_error() {
    let srv = start_static("");
    let mut c = Conn::start(&srv, &[]).await;
    c.window_update(0, 0x7fff_ffff).await;
    c.expect_connection_error(&[FLOW_CONTROL_ERROR], 0).await;
}

/// §6.9.2: a change of SETTINGS_INITIAL_WINDOW_SIZE moves the window of every open stream by
/// the difference, possibly below zero (§6.9.2): 0 → 1000 lets 1000 bytes through; 1000 → 0
/// then leaves the stream at -1000, so a WINDOW_UPDATE of 1000 still sends nothing; a larger
/// one the rest.
#[tokio::test]
async fn initial_window_size_change_applies_to_open_streams() {
    let srv = start_static("");
    let mut c = Conn::start(&srv, &[(SETTINGS_INITIAL_WINDOW_SIZE, 0)]).await;
    c.get(1, "/big.bin").await;
    let (status, end) = c.expect_headers(1).await;
    assert_eq!((status, end), (200, false), "{}", c.trace_text());
    c.quiet("no DATA with a zero stream window").await;

    c.settings(&[(SETTINGS_INITIAL_WINDOW_SIZE, 1000)]).await;
    let mut body = Vec::new();
    while body.len() < 1000 {
        let f = c.recv("waiting for 1000 bytes of DATA").await;
        if f.ty != DATA || f.stream != 1 || f.has(END_STREAM) {
            c.fail(&format!(
                "expected DATA on stream 1 without END_STREAM, got {f:?}"
            ));
        }
        body.extend_from_slice(&f.payload);
    }
    assert_eq!(body.len(), 1000, "{}", c.trace_text());
    c.quiet("no DATA beyond the 1000-byte window").await;

    c.settings(&[(SETTINGS_INITIAL_WINDOW_SIZE, 0)]).await;
    c.window_update(1, 1000).await;
    c.quiet("no DATA while the stream window is -1000 + 1000 = 0")
        .await;

    c.window_update(1, (BIG_LEN - 1000) as u32).await;
    body.extend(c.expect_body(1).await);
    assert!(body == big(), "{} bytes\n{}", body.len(), c.trace_text());
}

// ---------------------------------------------------------------------------------------------
// Limits
// ---------------------------------------------------------------------------------------------

/// §5.1.2: a stream above SETTINGS_MAX_CONCURRENT_STREAMS is refused with RST_STREAM
/// REFUSED_STREAM; once a stream closes, a new one is served.
#[tokio::test]
async fn stream_over_max_concurrent_streams_is_refused() {
    let srv = start_static("[http]\nh2_max_concurrent_streams = 2\n");
    let mut c = Conn::start(&srv, &[(SETTINGS_INITIAL_WINDOW_SIZE, 0)]).await;
    assert!(
        c.server_settings
            .contains(&(SETTINGS_MAX_CONCURRENT_STREAMS, 2)),
        "server SETTINGS: {:?}",
        c.server_settings
    );
    // Two streams held open by the zero window.
    for id in [1, 3] {
        c.get(id, "/big.bin").await;
        let (status, end) = c.expect_headers(id).await;
        assert_eq!((status, end), (200, false), "{}", c.trace_text());
    }
    c.get(5, "/big.bin").await;
    let code = c.expect_rst(5).await;
    assert_eq!(code, REFUSED_STREAM, "{}", c.trace_text());
    c.quiet("nothing more after the refusal").await;

    // Cancelling stream 1 makes room for stream 7.
    c.write(RST_STREAM, 0, 1, &CANCEL.to_be_bytes()).await;
    c.get(7, "/big.bin").await;
    let (status, end) = c.expect_headers(7).await;
    assert_eq!((status, end), (200, false), "{}", c.trace_text());
    // Stream 3 is still served in full when its window opens.
    c.window_update(3, BIG_LEN as u32).await;
    let body = c.expect_body(3).await;
    assert!(
        body == big(),
        "stream 3: {} bytes\n{}",
        body.len(),
        c.trace_text()
    );
}

// ---------------------------------------------------------------------------------------------
// Request bodies
// ---------------------------------------------------------------------------------------------

/// §8.1: a response complete before the request's body ends is followed by
/// RST_STREAM(NO_ERROR); the body's DATA that still arrives on that stream is ignored (§5.4.2,
/// §6.4), not a connection error.
#[tokio::test]
async fn response_before_request_body_ends_then_rst_no_error() {
    let srv = start_static("");
    let mut c = Conn::start(&srv, &[]).await;
    let mut fields = request_fields("POST", "/small.txt");
    fields.push(("content-length", "100"));
    c.headers(1, &fields, false).await;
    let (status, _body) = c.expect_response(1).await;
    assert!(status >= 200, "{}", c.trace_text());
    let code = c.expect_rst(1).await;
    assert_eq!(code, NO_ERROR, "{}", c.trace_text());

    // The body, sent as if the reset had crossed it in flight.
    c.data(1, &[b'x'; 100], true).await;
    let payload = [7, 6, 5, 4, 3, 2, 1, 0];
    c.ping(payload).await;
    // The PING ACK comes next: no GOAWAY, nor RST_STREAM for the late DATA.
    c.expect_ping_ack(payload).await;
    c.get_small(3).await;
}

/// §8.1.1: DATA that does not add up to the request's content-length is a stream error of
/// type PROTOCOL_ERROR, whether longer or shorter. The streams are still tracked by the
/// server because their responses' bodies wait for window (client window 0).
#[tokio::test]
async fn content_length_mismatch_is_rst_protocol_error() {
    let srv = start_static("");
    let mut c = Conn::start(&srv, &[(SETTINGS_INITIAL_WINDOW_SIZE, 0)]).await;
    let mut fields = request_fields("POST", "/small.txt");
    fields.push(("content-length", "5"));
    for id in [1, 3] {
        c.headers(id, &fields, false).await;
        // (The second response's :status may be indexed in the server's dynamic table,
        // which this client does not keep: only the flags are checked.)
        let f = c.expect_headers_frame(id).await;
        if f.has(END_STREAM) {
            c.fail(&format!(
                "the response on stream {id} has no body, so the stream is not held open \
                 (the test needs a response body blocked by the zero window)"
            ));
        }
    }
    c.quiet("no DATA with a zero stream window").await;

    // Longer than content-length.
    c.data(1, &[b'x'; 10], true).await;
    let code = c.expect_rst(1).await;
    assert_eq!(code, PROTOCOL_ERROR, "{}", c.trace_text());
    // Shorter than content-length.
    c.data(3, &[b'x'; 3], true).await;
    let code = c.expect_rst(3).await;
    assert_eq!(code, PROTOCOL_ERROR, "{}", c.trace_text());

    // The reset streams are forgotten: opening their windows sends nothing; the connection
    // lives on.
    c.window_update(1, 100_000).await;
    c.window_update(3, 100_000).await;
    let payload = [1; 8];
    c.ping(payload).await;
    c.expect_ping_ack(payload).await;
    c.quiet("no DATA on reset streams").await;
}

/// §6.9: the server gives back the window a request body uses, for the stream and the
/// connection, so a body several times the advertised windows arrives whole: the client here
/// sends only what the windows allow and waits for WINDOW_UPDATEs otherwise. (The response,
/// a 405 with a body, waits for the client's zero window, so the stream stays open.)
#[tokio::test]
async fn request_body_larger_than_windows_flows_with_window_updates() {
    const LEN: usize = 3 * 1024 * 1024;
    let srv = start_static("");
    let mut c = Conn::start(&srv, &[(SETTINGS_INITIAL_WINDOW_SIZE, 0)]).await;
    let initial = c
        .server_settings
        .iter()
        .find(|(id, _)| *id == SETTINGS_INITIAL_WINDOW_SIZE)
        .map_or(65_535, |(_, v)| i64::from(*v));
    let mut conn_window: i64 = 65_535;
    let mut stream_window = initial;
    // The server's connection WINDOW_UPDATE of the SETTINGS exchange.
    for line in &c.trace {
        if let Some(inc) =
            line.strip_prefix("<- WINDOW_UPDATE stream=0 flags=0x00 len=4 increment=")
        {
            conn_window += inc.parse::<i64>().unwrap();
        }
    }
    assert!(
        (conn_window as usize) < LEN && (stream_window as usize) < LEN,
        "the test needs a body larger than the windows ({conn_window}, {stream_window})"
    );
    let len = LEN.to_string();
    let mut fields = request_fields("POST", "/small.txt");
    fields.push(("content-length", &len));
    c.headers(1, &fields, false).await;
    let f = c.expect_headers_frame(1).await;
    assert!(
        !f.has(END_STREAM),
        "the response must have a body\n{}",
        c.trace_text()
    );

    let mut sent = 0;
    let chunk = vec![b'b'; MAX_FRAME];
    while sent < LEN {
        let room = conn_window.min(stream_window).min(MAX_FRAME as i64);
        if room > 0 {
            let n = (room as usize).min(LEN - sent);
            sent += n;
            c.data(1, &chunk[..n], sent == LEN).await;
            conn_window -= n as i64;
            stream_window -= n as i64;
            continue;
        }
        let what = format!("waiting for WINDOW_UPDATE after {sent} bytes of the body");
        let f = c.next_or_fail(&what).await;
        match (f.ty, f.stream) {
            (WINDOW_UPDATE, 0) => conn_window += i64::from(be32(&f.payload)),
            (WINDOW_UPDATE, 1) => stream_window += i64::from(be32(&f.payload)),
            (SETTINGS, _) => {}
            _ => c.fail(&format!("{what}: got {f:?}")),
        }
    }
    // The body was accepted: no RST_STREAM; the response is sent once its window opens.
    c.window_update(1, 1 << 20).await;
    let body = c.expect_body(1).await;
    assert!(!body.is_empty(), "{}", c.trace_text());
    let payload = [3; 8];
    c.ping(payload).await;
    c.expect_ping_ack(payload).await;
}

// ---------------------------------------------------------------------------------------------
// Shutdown
// ---------------------------------------------------------------------------------------------

/// The largest stream id: the last-stream-id of a GOAWAY that still admits every stream.
const MAX_STREAM_ID: u32 = 0x7fff_ffff;

/// Starts the server's graceful shutdown (which blocks until its connections are done).
fn begin_shutdown(srv: &mut TestServer) -> tokio::task::JoinHandle<()> {
    let server = srv.take();
    tokio::task::spawn_blocking(move || server.shutdown())
}

async fn shutdown_returns(shutdown: tokio::task::JoinHandle<()>) {
    tokio::time::timeout(Duration::from_secs(5), shutdown)
        .await
        .expect("shutdown() did not return after the connection closed")
        .unwrap();
}

impl Conn {
    /// A PING from the server (not an ACK); returns its payload.
    async fn expect_ping(&mut self) -> [u8; 8] {
        let f = self.recv("waiting for the server's PING").await;
        if f.ty != PING || f.has(ACK) || f.stream != 0 || f.payload.len() != 8 {
            self.fail(&format!("expected a PING (not an ACK), got {f:?}"));
        }
        f.payload.try_into().unwrap()
    }

    /// The first GOAWAY of a two-step graceful shutdown (§6.8): NO_ERROR, last-stream-id
    /// 2^31-1, followed by a PING; returns the PING's payload.
    async fn expect_shutdown_announcement(&mut self) -> [u8; 8] {
        let g = self.expect_goaway().await;
        if g.error_code() != NO_ERROR || g.last_stream_id() != MAX_STREAM_ID {
            self.fail(&format!(
                "expected GOAWAY(NO_ERROR) with last-stream-id 2^31-1 first, got {g:?}"
            ));
        }
        self.expect_ping().await
    }
}

/// §6.8: a graceful shutdown ends with GOAWAY(NO_ERROR) naming the last stream processed, then
/// the idle connection closes. (A first GOAWAY with last-stream-id 2^31-1 and a PING may come
/// before it, the two-step shutdown §6.8 recommends: the PING is answered.)
#[tokio::test]
async fn graceful_shutdown_sends_goaway_no_error_then_closes() {
    let mut srv = start_static("");
    let mut c = Conn::start(&srv, &[]).await;
    c.get(1, "/small.txt").await;
    assert_eq!(c.expect_response(1).await, (200, SMALL.to_vec()));
    let shutdown = begin_shutdown(&mut srv);
    let mut g = c.expect_goaway().await;
    assert_eq!(g.error_code(), NO_ERROR, "{}", c.trace_text());
    if g.last_stream_id() == MAX_STREAM_ID {
        let ping = c.expect_ping().await;
        c.write(PING, ACK, 0, &ping).await;
        g = c.expect_goaway().await;
        assert_eq!(g.error_code(), NO_ERROR, "{}", c.trace_text());
    }
    assert_eq!(g.last_stream_id(), 1, "{}", c.trace_text());
    c.expect_eof().await;
    shutdown_returns(shutdown).await;
}

/// The two-step shutdown: a request sent after the first GOAWAY but before the PING's answer
/// (one that crossed the GOAWAY in flight) is served, and the final GOAWAY, which the answer
/// triggers at once, names it.
#[tokio::test]
async fn graceful_shutdown_serves_a_stream_opened_before_the_ping_answer() {
    let mut srv = start_static("");
    let mut c = Conn::start(&srv, &[]).await;
    c.get(1, "/small.txt").await;
    assert_eq!(c.expect_response(1).await, (200, SMALL.to_vec()));
    let shutdown = begin_shutdown(&mut srv);
    let ping = c.expect_shutdown_announcement().await;
    c.get(3, "/small.txt").await;
    c.write(PING, ACK, 0, &ping).await;
    let acked = Instant::now();
    // The response and the final GOAWAY, in either order.
    let (mut status, mut body, mut done, mut goaway) = (None, Vec::new(), false, None);
    while !(done && goaway.is_some()) {
        let f = c
            .recv("waiting for stream 3's response and the final GOAWAY")
            .await;
        match (f.ty, f.stream) {
            (HEADERS, 3) if status.is_none() => {
                status = status_of(f.header_block()).ok();
                done = f.has(END_STREAM);
            }
            (DATA, 3) if status.is_some() && !done => {
                body.extend_from_slice(&f.payload);
                done = f.has(END_STREAM);
            }
            (GOAWAY, 0) if goaway.is_none() => goaway = Some((f, acked.elapsed())),
            _ => c.fail(&format!("unexpected {f:?}")),
        }
    }
    assert_eq!(status, Some(200), "{}", c.trace_text());
    assert_eq!(body, SMALL, "{}", c.trace_text());
    let (g, after) = goaway.unwrap();
    assert_eq!(g.error_code(), NO_ERROR, "{}", c.trace_text());
    assert_eq!(g.last_stream_id(), 3, "{}", c.trace_text());
    assert!(
        after < Duration::from_millis(700),
        "final GOAWAY {after:?} after the PING's answer: not triggered by it\n{}",
        c.trace_text()
    );
    c.expect_eof().await;
    shutdown_returns(shutdown).await;
}

/// §6.8: GOAWAY's last-stream-id never goes up. A stream opened after the final graceful GOAWAY
/// is ignored; a connection error after that still names the stream the graceful GOAWAY named,
/// not the ignored one (found by the h2_connection fuzz target).
#[tokio::test]
async fn connection_error_after_graceful_goaway_keeps_its_last_stream_id() {
    let mut srv = start_static("");
    // A zero stream window keeps stream 1's body, and so the connection, waiting.
    let mut c = Conn::start(&srv, &[(SETTINGS_INITIAL_WINDOW_SIZE, 0)]).await;
    c.get(1, "/big.bin").await;
    assert_eq!(
        c.expect_headers(1).await,
        (200, false),
        "{}",
        c.trace_text()
    );
    let shutdown = begin_shutdown(&mut srv);
    let ping = c.expect_shutdown_announcement().await;
    c.write(PING, ACK, 0, &ping).await;
    let g = c.expect_goaway().await;
    assert_eq!(
        (g.error_code(), g.last_stream_id()),
        (NO_ERROR, 1),
        "{}",
        c.trace_text()
    );
    c.get(3, "/small.txt").await;
    // DATA on an idle stream: a connection error.
    c.data(7, b"x", false).await;
    c.expect_connection_error(&[PROTOCOL_ERROR], 1).await;
    shutdown_returns(shutdown).await;
}

/// The two-step shutdown with a client that does not answer the PING: the final GOAWAY comes
/// anyway, about a second later, then the close.
#[tokio::test]
async fn graceful_shutdown_without_ping_answer_still_ends() {
    let mut srv = start_static("");
    let mut c = Conn::start(&srv, &[]).await;
    c.get(1, "/small.txt").await;
    assert_eq!(c.expect_response(1).await, (200, SMALL.to_vec()));
    let shutdown = begin_shutdown(&mut srv);
    c.expect_shutdown_announcement().await;
    let announced = Instant::now();
    let g = c.expect_goaway().await;
    let after = announced.elapsed();
    assert_eq!(g.error_code(), NO_ERROR, "{}", c.trace_text());
    assert_eq!(g.last_stream_id(), 1, "{}", c.trace_text());
    assert!(
        after >= Duration::from_millis(500) && after < Duration::from_secs(3),
        "final GOAWAY {after:?} after the first one (expected about 1 s)\n{}",
        c.trace_text()
    );
    c.expect_eof().await;
    shutdown_returns(shutdown).await;
}

// ---------------------------------------------------------------------------------------------
// Response heads over one connection (HPACK state)
// ---------------------------------------------------------------------------------------------

/// Response heads stay exact over many requests on one connection, whatever the HPACK
/// encoder's state: the same response twice in a row, different responses in turn (fields
/// indexed, literal, inserted), and a new `date` each second (a table insertion that evicts
/// nothing but shifts every dynamic index). Decoded by h2's client decoder (hyper), compared
/// with the first round's heads.
#[tokio::test]
async fn response_heads_stay_exact_over_one_connection() {
    use http_body_util::{BodyExt, Empty};
    let srv = start_static("");
    let cfg = ClientOpts::default().alpn(&["h2"]).build();
    let tls = tls_connect(srv.https, Some(ALPHA), cfg).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
            .handshake(hyper_util::rt::TokioIo::new(tls))
            .await
            .unwrap();
    tokio::spawn(conn);
    let mut etag = None;
    let mut dates = std::collections::BTreeSet::new();
    let mut first: Vec<Option<(u16, http::HeaderMap, bytes::Bytes)>> = vec![None; 8];
    let started = Instant::now();
    let mut rounds = 0;
    // Over a second boundary at least once (a new `date`).
    while rounds < 10 || started.elapsed() < Duration::from_millis(1300) {
        rounds += 1;
        let plan: [(&str, &str, bool); 8] = [
            ("GET", "/small.txt", false),
            ("GET", "/small.txt", false),
            ("GET", "/big.bin", false),
            ("HEAD", "/small.txt", false),
            ("HEAD", "/small.txt", false),
            ("GET", "/missing.txt", false),
            ("GET", "/small.txt", true),
            ("GET", "/small.txt", true),
        ];
        for (k, (method, path, conditional)) in plan.into_iter().enumerate() {
            let mut req = http::Request::builder()
                .method(method)
                .uri(format!("https://{ALPHA}{path}"));
            if conditional {
                req = req.header("if-none-match", etag.clone().expect("etag of round 1"));
            }
            let req = req.body(Empty::<bytes::Bytes>::new()).unwrap();
            let resp = tokio::time::timeout(FRAME_TIMEOUT, sender.send_request(req))
                .await
                .expect("no response")
                .unwrap_or_else(|e| panic!("round {rounds}, {method} {path}: {e}"));
            let status = resp.status().as_u16();
            let mut headers = resp.headers().clone();
            let body = resp.into_body().collect().await.unwrap().to_bytes();
            let date = headers.remove("date").expect("a date header");
            dates.insert(date.clone());
            let date = httpdate::parse_http_date(date.to_str().unwrap()).expect("an HTTP-date");
            let age = std::time::SystemTime::now()
                .duration_since(date)
                .unwrap_or_default();
            assert!(age < Duration::from_secs(3), "stale date: {age:?}");
            if k == 0 && etag.is_none() {
                etag = headers.get("etag").cloned();
            }
            match &first[k] {
                None => first[k] = Some((status, headers, body)),
                Some((s, h, b)) => {
                    assert_eq!(
                        (status, &headers),
                        (*s, h),
                        "round {rounds}, {method} {path} (conditional: {conditional})"
                    );
                    assert_eq!(&body, b, "round {rounds}, {method} {path}");
                }
            }
        }
    }
    // Repeated heads were not frozen: the date moved on.
    assert!(dates.len() >= 2, "one date over {rounds} rounds: {dates:?}");
    let statuses: Vec<u16> = first.iter().map(|f| f.as_ref().unwrap().0).collect();
    assert_eq!(statuses, [200, 200, 200, 200, 200, 404, 304, 304]);
    let small = first[0].as_ref().unwrap();
    assert_eq!(small.2, SMALL);
    assert_eq!(small.1["content-length"], SMALL.len().to_string().as_str());
    assert!(small.1.contains_key("strict-transport-security"));
    let head = first[3].as_ref().unwrap();
    assert!(head.2.is_empty());
    assert_eq!(head.1, small.1, "HEAD and GET heads differ");
}

/// A cached file's 200 over HTTP/2 (its head shared from the cache, not copied) carries exactly
/// the fields HTTP/1.1 gets, `date` aside; a site header HTTP/2 forbids (`connection`) is left
/// out there and kept for HTTP/1.1.
#[tokio::test]
async fn cached_file_heads_match_http1_and_leave_out_forbidden_site_fields() {
    for forbidden in [false, true] {
        let env = TestEnv::new();
        env.write("www/small.txt", SMALL);
        let extra = if forbidden {
            "\"Connection\" = \"keep-alive\"\n"
        } else {
            ""
        };
        let srv = env.start(&format!(
            r#"
[[site]]
name = "alpha"
hosts = ["alpha.test"]
cert = "certs/alpha.pem"
key = "certs/alpha.key"
root = "www"
[site.headers]
"X-Custom" = "hello"
{extra}"#
        ));
        let mut heads = Vec::new();
        for alpn in ["http/1.1", "h2"] {
            for _ in 0..3 {
                let r = get(srv.https, Some(ALPHA), "/small.txt", alpn).await;
                assert_eq!((r.status, &r.body[..]), (200, SMALL), "{alpn}");
                let mut h = r.headers.clone();
                assert!(h.remove("date").is_some(), "{alpn}: no date");
                heads.push((alpn, h));
            }
        }
        let (_, h1) = heads[0].clone();
        assert_eq!(h1["x-custom"], "hello");
        assert!(h1.contains_key("strict-transport-security"));
        assert_eq!(h1.contains_key("connection"), forbidden);
        for (alpn, h) in &heads {
            let mut want = h1.clone();
            if *alpn == "h2" {
                want.remove("connection");
            }
            assert_eq!(h, &want, "{alpn} (forbidden site field: {forbidden})");
        }
    }
}
