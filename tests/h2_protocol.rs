//! HTTP/2 at the frame level (RFC 9113) against the real server over TLS (ALPN h2): the
//! connection preface and SETTINGS, PING, frame sizes, requests and responses on several
//! streams, stream states and identifiers, header blocks (HPACK errors, invalid fields), flow
//! control in both directions, the concurrent-stream limit, rapid reset (CVE-2023-44487),
//! request bodies the server does not wait for, content-length checks, malformed requests,
//! graceful shutdown and the idle timeout.
//!
//! The client here is hand-written: frames are built and parsed byte by byte, request headers
//! are HPACK "literal without indexing, new name" fields (no Huffman, no table; tests of the
//! dynamic table build their blocks by hand), and of the server's header blocks only the
//! `:status` of the first field is decoded. Every frame sent
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
const PRIORITY: u8 = 0x2;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const PING: u8 = 0x6;
const GOAWAY: u8 = 0x7;
const WINDOW_UPDATE: u8 = 0x8;
const CONTINUATION: u8 = 0x9;

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
const FRAME_SIZE_ERROR: u32 = 0x6;
const REFUSED_STREAM: u32 = 0x7;
const CANCEL: u32 = 0x8;
const COMPRESSION_ERROR: u32 = 0x9;
const ENHANCE_YOUR_CALM: u32 = 0xb;

// Settings (§6.5.2).
const SETTINGS_ENABLE_PUSH: u16 = 0x2;
const SETTINGS_MAX_CONCURRENT_STREAMS: u16 = 0x3;
const SETTINGS_INITIAL_WINDOW_SIZE: u16 = 0x4;
const SETTINGS_MAX_FRAME_SIZE: u16 = 0x5;

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

/// A raw (not Huffman-coded) string literal (§5.2).
fn hpack_str(out: &mut Vec<u8>, s: &str) {
    hpack_int(out, s.len(), 7, 0x00);
    out.extend_from_slice(s.as_bytes());
}

/// A header block of "literal header field without indexing — new name" fields, raw strings.
fn hpack_block(fields: &[(&str, &str)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, value) in fields {
        out.push(0x00);
        hpack_str(&mut out, name);
        hpack_str(&mut out, value);
    }
    out
}

/// A "literal header field with incremental indexing — new name" (§6.2.1): the field enters
/// the decoder's dynamic table at index 62, moving the entries there by one.
fn hpack_indexed_literal(out: &mut Vec<u8>, name: &str, value: &str) {
    out.push(0x40);
    hpack_str(out, name);
    hpack_str(out, value);
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

/// The first whole frame in `buf`, removed from it.
fn take_frame(buf: &mut Vec<u8>) -> Option<Frame> {
    if buf.len() < 9 {
        return None;
    }
    let len = u32::from_be_bytes([0, buf[0], buf[1], buf[2]]) as usize;
    if buf.len() < 9 + len {
        return None;
    }
    let f = Frame {
        ty: buf[3],
        flags: buf[4],
        stream: be32(&buf[5..9]) & 0x7fff_ffff,
        payload: buf[9..9 + len].to_vec(),
    };
    buf.drain(..9 + len);
    Some(f)
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

    /// A connection whose stream 1 stays open: GET /big.bin with initial stream windows of 0,
    /// so its 200 head comes and its body waits for window.
    async fn with_stream_1_held(srv: &TestServer) -> Conn {
        let mut c = Conn::start(srv, &[(SETTINGS_INITIAL_WINDOW_SIZE, 0)]).await;
        c.get(1, "/big.bin").await;
        assert_eq!(
            c.expect_headers(1).await,
            (200, false),
            "{}",
            c.trace_text()
        );
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

    /// HEADERS ending the stream, with a header block built by the test; `what` describes it
    /// in the trace.
    async fn send_block(&mut self, stream: u32, block: &[u8], what: &str) {
        self.write(HEADERS, END_HEADERS | END_STREAM, stream, block)
            .await;
        if let Some(line) = self.trace.last_mut() {
            let _ = write!(line, " ({what})");
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
            if let Some(f) = take_frame(&mut self.buf) {
                self.trace.push(format!("<- {f:?}"));
                return Next::Frame(f);
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

/// §6.7: a PING whose length is not 8 octets is a connection error of type FRAME_SIZE_ERROR
/// (an ACK too): GOAWAY naming the last stream served, no PING ACK, and the connection closes.
#[tokio::test]
async fn ping_of_wrong_length_is_goaway_frame_size_error() {
    let srv = start_static("");
    for (flags, len) in [(0, 7), (0, 9), (0, 0), (ACK, 4)] {
        let mut c = Conn::start(&srv, &[]).await;
        c.get_small(1).await;
        c.write(PING, flags, 0, &vec![1; len]).await;
        c.expect_connection_error(&[FRAME_SIZE_ERROR], 1).await;
    }
}

/// §4.2: a frame whose length is wrong for its type's fixed fields is a connection error of
/// type FRAME_SIZE_ERROR: SETTINGS not a multiple of 6 octets, or an ACK with a payload
/// (§6.5); WINDOW_UPDATE (§6.9) or RST_STREAM (§6.4) other than 4 octets; GOAWAY shorter than
/// its 8 octets of fields (§6.8).
#[tokio::test]
async fn control_frames_of_wrong_length_are_goaway_frame_size_error() {
    let srv = start_static("");
    let cases: [(&str, u8, u8, u32, usize); 8] = [
        ("SETTINGS of 5 octets", SETTINGS, 0, 0, 5),
        ("SETTINGS of 8 octets", SETTINGS, 0, 0, 8),
        ("SETTINGS ACK with a payload", SETTINGS, ACK, 0, 6),
        ("WINDOW_UPDATE of 3 octets", WINDOW_UPDATE, 0, 0, 3),
        (
            "WINDOW_UPDATE of 5 octets on a stream",
            WINDOW_UPDATE,
            0,
            1,
            5,
        ),
        ("RST_STREAM of 3 octets", RST_STREAM, 0, 1, 3),
        ("RST_STREAM of 5 octets", RST_STREAM, 0, 1, 5),
        ("GOAWAY of 7 octets", GOAWAY, 0, 0, 7),
    ];
    for (what, ty, flags, stream, len) in cases {
        let mut c = Conn::start(&srv, &[]).await;
        c.get_small(1).await;
        c.trace.push(format!("({what})"));
        c.write(ty, flags, stream, &vec![1; len]).await;
        c.expect_connection_error(&[FRAME_SIZE_ERROR], 1).await;
    }
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

/// §5.1.1: a new stream's id must be above all the client opened before; a HEADERS frame
/// on a lower id is a connection error of type PROTOCOL_ERROR: stream 1 again after stream 3,
/// and stream 3 after stream 5 when 3 was never used (h2spec 5.1.1; the first use of 5 closed
/// it, §5.1.1).
#[tokio::test]
async fn reused_lower_stream_id_is_goaway_protocol_error() {
    let srv = start_static("");
    let mut c = Conn::start(&srv, &[]).await;
    c.get(1, "/small.txt").await;
    assert_eq!(c.expect_response(1).await.1, SMALL);
    c.get(3, "/small.txt").await;
    assert_eq!(c.expect_response(3).await.1, SMALL);
    c.get(1, "/small.txt").await;
    c.expect_connection_error(&[PROTOCOL_ERROR], 3).await;

    let mut c = Conn::start(&srv, &[]).await;
    c.get(5, "/small.txt").await;
    c.get(3, "/small.txt").await;
    assert_eq!(c.expect_response(5).await.1, SMALL);
    c.expect_connection_error(&[PROTOCOL_ERROR], 5).await;
}

/// §5.1: DATA on a stream in the half-closed (remote) state (the request ended, the response
/// is still being sent) is a stream error of type STREAM_CLOSED, and so is DATA on a stream
/// closed after both sides ended it; the connection goes on.
#[tokio::test]
async fn data_after_end_stream_is_rst_stream_closed() {
    let srv = start_static("");
    let mut c = Conn::with_stream_1_held(&srv).await;
    c.data(1, b"late", false).await;
    assert_eq!(c.expect_rst(1).await, STREAM_CLOSED, "{}", c.trace_text());
    c.settings(&[(SETTINGS_INITIAL_WINDOW_SIZE, 65_535)]).await;
    c.quiet("no DATA for the reset stream once the window opens")
        .await;
    c.get_small(3).await;
    c.data(3, b"late", true).await;
    assert_eq!(c.expect_rst(3).await, STREAM_CLOSED, "{}", c.trace_text());
    c.get_small(5).await;
}

/// §5.1: the server opens no streams (it does not push), so even-numbered streams stay idle:
/// DATA, RST_STREAM or WINDOW_UPDATE on one is a connection error of type PROTOCOL_ERROR, also
/// below the client's highest stream id.
#[tokio::test]
async fn frames_on_even_streams_are_goaway_protocol_error() {
    let srv = start_static("");
    let cases: [(&str, u8, Vec<u8>); 3] = [
        ("DATA", DATA, b"data".to_vec()),
        ("RST_STREAM", RST_STREAM, CANCEL.to_be_bytes().to_vec()),
        (
            "WINDOW_UPDATE",
            WINDOW_UPDATE,
            1000u32.to_be_bytes().to_vec(),
        ),
    ];
    for (what, ty, payload) in cases {
        let mut c = Conn::start(&srv, &[]).await;
        c.get_small(3).await;
        c.trace.push(format!("({what} on stream 2)"));
        c.write(ty, 0, 2, &payload).await;
        c.expect_connection_error(&[PROTOCOL_ERROR], 3).await;
    }
}

/// §6.10: a header block continues in CONTINUATION frames of the same stream and nothing else
/// may come between: a CONTINUATION of another stream, any other frame, or a CONTINUATION
/// with no header block open is a connection error of type PROTOCOL_ERROR (the unfinished
/// request is not served). A block split properly is.
#[tokio::test]
async fn interleaved_or_stray_continuation_is_goaway_protocol_error() {
    let srv = start_static("");
    let block = hpack_block(&request_fields("GET", "/small.txt"));
    let (first, rest) = block.split_at(10);
    let mut c = Conn::start(&srv, &[]).await;
    c.write(HEADERS, END_STREAM, 1, first).await;
    c.write(CONTINUATION, END_HEADERS, 1, rest).await;
    let (status, body) = c.expect_response(1).await;
    assert_eq!((status, &body[..]), (200, SMALL), "{}", c.trace_text());

    let cases: [(&str, u8, u8, u32, Vec<u8>); 4] = [
        (
            "CONTINUATION of stream 5",
            CONTINUATION,
            END_HEADERS,
            5,
            rest.to_vec(),
        ),
        (
            "HEADERS of stream 5",
            HEADERS,
            END_HEADERS | END_STREAM,
            5,
            block.clone(),
        ),
        ("PING", PING, 0, 0, vec![0; 8]),
        ("DATA of stream 3", DATA, END_STREAM, 3, vec![]),
    ];
    for (what, ty, flags, stream, payload) in cases {
        let mut c = Conn::start(&srv, &[]).await;
        c.get_small(1).await;
        c.write(HEADERS, END_STREAM, 3, first).await;
        c.trace
            .push(format!("({what} within stream 3's header block)"));
        c.write(ty, flags, stream, &payload).await;
        c.expect_connection_error(&[PROTOCOL_ERROR], 1).await;
    }
    let mut c = Conn::start(&srv, &[]).await;
    c.get_small(1).await;
    c.write(CONTINUATION, END_HEADERS, 3, rest).await;
    c.expect_connection_error(&[PROTOCOL_ERROR], 1).await;
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

/// §8.3.1: `:authority` may be left out, but then no `Host` names a site either: 400 (what
/// HTTP/1.0 may do without Host does not apply), and the connection lives on.
#[tokio::test]
async fn request_without_authority_is_400() {
    let srv = start_static("");
    let mut c = Conn::start(&srv, &[]).await;
    c.headers(
        1,
        &[
            (":method", "GET"),
            (":scheme", "https"),
            (":path", "/small.txt"),
        ],
        true,
    )
    .await;
    let (status, body) = c.expect_response(1).await;
    assert_eq!(status, 400, "{}", c.trace_text());
    assert_ne!(body, SMALL, "served without :authority");
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
    c.write(PRIORITY, 0, 5, &[0, 0, 0, 0, 15]).await;
    let payload = [2; 8];
    c.ping(payload).await;
    c.expect_ping_ack(payload).await;
    // Stream 1 is still a valid new stream, and so is 5 afterwards.
    for id in [1, 5] {
        c.get_small(id).await;
    }
}

/// The payload of a PRIORITY frame, or of a HEADERS frame's priority fields: stream
/// `dependency`, weight 16, not exclusive (§6.3).
fn priority_fields(dependency: u32) -> Vec<u8> {
    let mut p = dependency.to_be_bytes().to_vec();
    p.push(15);
    p
}

/// §5.3.1 (RFC 7540 §5.3.1): a stream cannot depend on itself: a PRIORITY frame that says so
/// is a stream error of type PROTOCOL_ERROR, answered with RST_STREAM(PROTOCOL_ERROR) also
/// on an idle stream (what h2spec 5.3.1 expects). But a PRIORITY frame never opens a stream
/// (§5.1): afterwards both a lower and a higher stream id are new streams the server serves.
#[tokio::test]
async fn self_dependent_priority_on_idle_stream_is_rst_protocol_error_and_opens_no_stream() {
    let srv = start_static("");
    let mut c = Conn::start(&srv, &[]).await;
    c.write(PRIORITY, 0, 5, &priority_fields(5)).await;
    assert_eq!(c.expect_rst(5).await, PROTOCOL_ERROR, "{}", c.trace_text());
    c.quiet("nothing else after the RST_STREAM").await;
    for id in [1, 7] {
        c.get_small(id).await;
    }
}

/// A self-dependent PRIORITY on an even stream id, which only the server could open (it opens
/// none): no stream to reset, so nothing is sent, and the connection serves on (found by the
/// h2_connection fuzz target's check: RST_STREAM on a stream the client could never have).
#[tokio::test]
async fn self_dependent_priority_on_an_even_stream_is_dropped() {
    let srv = start_static("");
    let mut c = Conn::start(&srv, &[]).await;
    c.write(PRIORITY, 0, 2, &priority_fields(2)).await;
    c.quiet("no RST_STREAM on an even stream").await;
    c.get_small(1).await;
}

/// §5.3.1: a self-dependent PRIORITY is a stream error of type PROTOCOL_ERROR on an open
/// stream (its response stops: RST_STREAM, no more DATA) and on a closed one (PRIORITY may
/// arrive in any state, §6.3); either way the connection serves the next stream.
#[tokio::test]
async fn self_dependent_priority_on_open_or_closed_stream_is_rst_protocol_error() {
    let srv = start_static("");
    let mut c = Conn::with_stream_1_held(&srv).await;
    c.write(PRIORITY, 0, 1, &priority_fields(1)).await;
    assert_eq!(c.expect_rst(1).await, PROTOCOL_ERROR, "{}", c.trace_text());
    c.settings(&[(SETTINGS_INITIAL_WINDOW_SIZE, 65_535)]).await;
    c.quiet("no DATA for the reset stream once the window opens")
        .await;
    c.get_small(3).await;
    c.write(PRIORITY, 0, 3, &priority_fields(3)).await;
    assert_eq!(c.expect_rst(3).await, PROTOCOL_ERROR, "{}", c.trace_text());
    c.get_small(5).await;
}

/// §6.3: a PRIORITY frame of other than 5 octets is a stream error of type FRAME_SIZE_ERROR,
/// not a connection error: on a closed stream (as h2spec 6.3 sends it) and on an idle one,
/// which it does not open; lower and higher stream ids are served afterwards.
#[tokio::test]
async fn priority_of_wrong_length_is_rst_frame_size_error() {
    let srv = start_static("");
    let mut c = Conn::start(&srv, &[]).await;
    c.get_small(1).await;
    c.write(PRIORITY, 0, 1, &[0x80, 0, 0, 1]).await;
    assert_eq!(
        c.expect_rst(1).await,
        FRAME_SIZE_ERROR,
        "{}",
        c.trace_text()
    );
    c.write(PRIORITY, 0, 7, &[0, 0, 0, 1, 15, 0]).await;
    assert_eq!(
        c.expect_rst(7).await,
        FRAME_SIZE_ERROR,
        "{}",
        c.trace_text()
    );
    c.quiet("nothing else after the RST_STREAMs").await;
    for id in [3, 9] {
        c.get_small(id).await;
    }
}

/// §5.3.1: a HEADERS frame whose stream depends on itself is a stream error of type
/// PROTOCOL_ERROR (the stream is opened and reset, h2spec 5.3.1). Its field block is still
/// decoded (§4.3): a field it inserts into the dynamic table is there for the next block,
/// which refers to it by index and is served.
#[tokio::test]
async fn self_dependent_headers_is_rst_protocol_error_and_its_block_is_decoded() {
    let srv = start_static("");
    let mut c = Conn::start(&srv, &[]).await;
    let mut payload = priority_fields(1);
    hpack_indexed_literal(&mut payload, "x-probe", "one");
    payload.extend(hpack_block(&request_fields("GET", "/small.txt")));
    c.write(
        HEADERS,
        END_HEADERS | END_STREAM | PRIORITY_FLAG,
        1,
        &payload,
    )
    .await;
    assert_eq!(c.expect_rst(1).await, PROTOCOL_ERROR, "{}", c.trace_text());
    // Index 62: "x-probe: one", inserted by the reset stream's block.
    let block = request_block(&[], &[0xbe]);
    c.send_block(3, &block, "x-probe by index 62").await;
    let (status, body) = c.expect_response(3).await;
    assert_eq!((status, &body[..]), (200, SMALL), "{}", c.trace_text());
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

/// §5.1.1: a client reusing a lower stream id is a connection error of type PROTOCOL_ERROR,
/// also when the reused stream's header block is malformed (which alone would be a stream
/// error).
#[tokio::test]
async fn malformed_headers_on_reused_stream_id_is_goaway_protocol_error() {
    let srv = start_static("");
    let mut c = Conn::start(&srv, &[]).await;
    c.get(1, "/small.txt").await;
    assert_eq!(c.expect_response(1).await.1, SMALL);
    c.get(3, "/small.txt").await;
    assert_eq!(c.expect_response(3).await.1, SMALL);
    let mut fields = request_fields("GET", "/small.txt");
    fields.push(("connection", "keep-alive"));
    c.headers(1, &fields, true).await;
    c.expect_connection_error(&[PROTOCOL_ERROR], 3).await;
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
// Header blocks: HPACK (RFC 7541) and field validity
// ---------------------------------------------------------------------------------------------

/// A GET of `/small.txt` whose header block is `before`, the request's fields, then `after`.
fn request_block(before: &[u8], after: &[u8]) -> Vec<u8> {
    let mut block = before.to_vec();
    block.extend(hpack_block(&request_fields("GET", "/small.txt")));
    block.extend_from_slice(after);
    block
}

fn size_update(size: usize) -> Vec<u8> {
    let mut out = Vec::new();
    hpack_int(&mut out, size, 5, 0x20);
    out
}

/// RFC 7541 §4.2, §6.3: a dynamic table size update above the maximum the decoder allows
/// (SETTINGS_HEADER_TABLE_SIZE; the server announces none, so 4096) is a decoding error, and so
/// is one after the first field of a block: a connection error of type COMPRESSION_ERROR
/// (RFC 9113 §4.3). Updates to the maximum or below are accepted.
#[tokio::test]
async fn dynamic_table_size_update_above_the_limit_is_goaway_compression_error() {
    let srv = start_static("");
    let mut c = Conn::start(&srv, &[]).await;
    for (id, size) in [(1, 4096), (3, 0), (5, 4096)] {
        let block = request_block(&size_update(size), &[]);
        c.send_block(id, &block, &format!("table size update to {size}"))
            .await;
        let (status, body) = c.expect_response(id).await;
        assert_eq!((status, &body[..]), (200, SMALL), "{}", c.trace_text());
    }

    let cases = [
        (
            "table size update to 4097",
            request_block(&size_update(4097), &[]),
        ),
        (
            "table size update after a field",
            request_block(&[], &size_update(100)),
        ),
    ];
    for (what, block) in cases {
        let mut c = Conn::start(&srv, &[]).await;
        c.get_small(1).await;
        c.send_block(3, &block, what).await;
        c.expect_connection_error(&[COMPRESSION_ERROR], 1).await;
    }
}

/// RFC 9113 §4.3: a field block that cannot be decoded is a connection error of type
/// COMPRESSION_ERROR: index 0 (RFC 7541 §6.1), an index beyond both tables (§2.3.3), a string
/// longer than what is left of the block, a Huffman string with the EOS symbol (§5.2).
#[tokio::test]
async fn undecodable_field_block_is_goaway_compression_error() {
    let srv = start_static("");
    let cases = [
        ("indexed field 0", request_block(&[0x80], &[])),
        (
            "indexed field 62, the dynamic table empty",
            request_block(&[0xbe], &[]),
        ),
        (
            "a name of 10 octets, 1 left",
            request_block(&[], &[0x00, 0x0a, b'x']),
        ),
        (
            "a Huffman-coded name with EOS",
            request_block(&[], &[0x00, 0x84, 0xff, 0xff, 0xff, 0xff, 0x01, b'v']),
        ),
    ];
    for (what, block) in cases {
        let mut c = Conn::start(&srv, &[]).await;
        c.get_small(1).await;
        c.send_block(3, &block, what).await;
        c.expect_connection_error(&[COMPRESSION_ERROR], 1).await;
    }
}

/// §8.3, §8.1.1: an unknown pseudo-header field (`:foo`) makes the request malformed: a stream
/// error of type PROTOCOL_ERROR that leaves the other streams alone: one whose response is
/// still being sent (its body waits for window), and those opened afterwards. A `:foo` the
/// client's encoder put into its dynamic table (RFC 7541 §6.2.1) is in the server's table
/// too: a block that refers to it (by index, or its name) is malformed as well, and the
/// entries inserted after it keep their indices.
#[tokio::test]
async fn unknown_pseudo_header_is_rst_protocol_error_and_other_streams_go_on() {
    let srv = start_static("");
    let mut c = Conn::with_stream_1_held(&srv).await;
    let head = hpack_block(&request_fields("HEAD", "/small.txt"));
    let with = |extra: &[u8]| {
        let mut block = head.clone();
        block.extend_from_slice(extra);
        block
    };
    let mut foo_indexed = Vec::new();
    hpack_indexed_literal(&mut foo_indexed, ":foo", "bar");
    let mut x_a = Vec::new();
    hpack_indexed_literal(&mut x_a, "x-a", "1");
    // Literal with incremental indexing, name: dynamic entry 63, value "baz".
    let mut foo_by_name = Vec::new();
    hpack_int(&mut foo_by_name, 63, 6, 0x40);
    hpack_str(&mut foo_by_name, "baz");
    let mut pseudo_first = hpack_block(&[(":foo", "bar")]);
    pseudo_first.extend(&head);
    // (block, what, answered): answered = 200 to the HEAD, else RST_STREAM(PROTOCOL_ERROR).
    let steps: [(Vec<u8>, &str, bool); 7] = [
        (with(&hpack_block(&[(":foo", "bar")])), ":foo last", false),
        (pseudo_first, ":foo first", false),
        // Table: [:foo: bar].
        (with(&foo_indexed), ":foo, indexed", false),
        // Table: [x-a: 1, :foo: bar].
        (with(&x_a), "x-a: 1, indexed", true),
        (with(&[0x80 | 63]), "dynamic entry 63 (:foo: bar)", false),
        // Table: [:foo: baz, x-a: 1, :foo: bar].
        (
            with(&foo_by_name),
            "name of entry 63 (:foo), indexed",
            false,
        ),
        (with(&[0x80 | 63]), "dynamic entry 63 (x-a: 1)", true),
    ];
    let mut id = 3;
    for (block, what, answered) in steps {
        c.send_block(id, &block, what).await;
        if answered {
            assert_eq!(
                c.expect_headers(id).await,
                (200, true),
                "{}",
                c.trace_text()
            );
        } else {
            assert_eq!(c.expect_rst(id).await, PROTOCOL_ERROR, "{}", c.trace_text());
        }
        id += 2;
    }
    // Stream 1 is still served in full, and so is a new stream.
    c.window_update(1, BIG_LEN as u32).await;
    assert!(c.expect_body(1).await == big(), "{}", c.trace_text());
    c.get(id, "/small.txt").await;
    assert_eq!(
        c.expect_headers(id).await,
        (200, false),
        "{}",
        c.trace_text()
    );
    c.window_update(id, 1000).await;
    assert_eq!(c.expect_body(id).await, SMALL, "{}", c.trace_text());
}

/// §8.2.1: a field that is not a valid HTTP field (a name with uppercase letters, an empty
/// name, a value with CR or LF) makes the request malformed (§8.1.1): a stream error of type
/// PROTOCOL_ERROR; the connection serves the next stream.
#[tokio::test]
async fn invalid_field_is_rst_protocol_error_and_connection_lives_on() {
    let srv = start_static("");
    let mut c = Conn::start(&srv, &[]).await;
    let mut id = 1;
    for (name, value) in [("X-Upper", "1"), ("", "1"), ("x-crlf", "a\r\nb: c")] {
        let mut fields = request_fields("GET", "/small.txt");
        fields.push((name, value));
        c.headers(id, &fields, true).await;
        assert_eq!(c.expect_rst(id).await, PROTOCOL_ERROR, "{}", c.trace_text());
        c.get_small(id + 2).await;
        id += 4;
    }
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

/// §6.9: a WINDOW_UPDATE with an increment of 0 on a stream is a stream error of type
/// PROTOCOL_ERROR: on an open stream (whose response then stops) and on a closed one; the
/// connection serves the next stream. On stream 0 it is a connection error of type
/// PROTOCOL_ERROR, and so it is on an idle stream (§5.1).
#[tokio::test]
async fn window_update_of_zero_is_rst_on_a_stream_and_goaway_on_the_connection() {
    let srv = start_static("");
    let mut c = Conn::with_stream_1_held(&srv).await;
    c.window_update(1, 0).await;
    assert_eq!(c.expect_rst(1).await, PROTOCOL_ERROR, "{}", c.trace_text());
    c.settings(&[(SETTINGS_INITIAL_WINDOW_SIZE, 65_535)]).await;
    c.quiet("no DATA for the reset stream once the window opens")
        .await;
    c.get_small(3).await;
    c.window_update(3, 0).await;
    assert_eq!(c.expect_rst(3).await, PROTOCOL_ERROR, "{}", c.trace_text());
    c.get_small(5).await;
    c.window_update(0, 0).await;
    c.expect_connection_error(&[PROTOCOL_ERROR], 5).await;

    let mut c = Conn::start(&srv, &[]).await;
    c.get_small(1).await;
    c.window_update(3, 0).await;
    c.expect_connection_error(&[PROTOCOL_ERROR], 1).await;
}

/// §6.9.1: a WINDOW_UPDATE that takes a stream's send window above 2^31-1 is a stream error of
/// type FLOW_CONTROL_ERROR (the connection serves the next stream); §6.9.2: a change of
/// SETTINGS_INITIAL_WINDOW_SIZE that does the same to an open stream is a connection error of
/// type FLOW_CONTROL_ERROR. (Each pair of frames goes in one write, so no DATA leaves between.)
#[tokio::test]
async fn stream_window_overflow_is_flow_control_error() {
    let srv = start_static("");
    let mut c = Conn::with_stream_1_held(&srv).await;
    let mut bytes = frame_bytes(WINDOW_UPDATE, 0, 1, &0x7fff_ffffu32.to_be_bytes());
    bytes.extend(frame_bytes(WINDOW_UPDATE, 0, 1, &1u32.to_be_bytes()));
    c.trace
        .push("-> WINDOW_UPDATE stream=1 increment=2147483647, increment=1".into());
    c.write_raw(&bytes).await;
    assert_eq!(
        c.expect_rst(1).await,
        FLOW_CONTROL_ERROR,
        "{}",
        c.trace_text()
    );
    c.settings(&[(SETTINGS_INITIAL_WINDOW_SIZE, 65_535)]).await;
    c.get_small(3).await;

    let mut c = Conn::with_stream_1_held(&srv).await;
    let mut bytes = frame_bytes(WINDOW_UPDATE, 0, 1, &1u32.to_be_bytes());
    let mut s = SETTINGS_INITIAL_WINDOW_SIZE.to_be_bytes().to_vec();
    s.extend(0x7fff_ffffu32.to_be_bytes());
    bytes.extend(frame_bytes(SETTINGS, 0, 0, &s));
    c.trace.push(
        "-> WINDOW_UPDATE stream=1 increment=1, SETTINGS INITIAL_WINDOW_SIZE=2147483647".into(),
    );
    c.write_raw(&bytes).await;
    c.expect_connection_error(&[FLOW_CONTROL_ERROR], 1).await;
}

/// §6.5.2: SETTINGS_INITIAL_WINDOW_SIZE above 2^31-1 is a connection error of type
/// FLOW_CONTROL_ERROR; SETTINGS_MAX_FRAME_SIZE outside 2^14..2^24-1 and SETTINGS_ENABLE_PUSH
/// other than 0 or 1 are connection errors of type PROTOCOL_ERROR. The limits themselves are
/// accepted (SETTINGS ACK, and the connection serves the next stream).
#[tokio::test]
async fn settings_values_out_of_range_are_goaway() {
    let srv = start_static("");
    let bad = [
        (
            SETTINGS_INITIAL_WINDOW_SIZE,
            0x8000_0000,
            FLOW_CONTROL_ERROR,
        ),
        (SETTINGS_INITIAL_WINDOW_SIZE, u32::MAX, FLOW_CONTROL_ERROR),
        (SETTINGS_MAX_FRAME_SIZE, 16_383, PROTOCOL_ERROR),
        (SETTINGS_MAX_FRAME_SIZE, 1 << 24, PROTOCOL_ERROR),
        (SETTINGS_MAX_FRAME_SIZE, 0, PROTOCOL_ERROR),
        (SETTINGS_ENABLE_PUSH, 2, PROTOCOL_ERROR),
    ];
    for (id, value, code) in bad {
        let mut c = Conn::start(&srv, &[]).await;
        c.get_small(1).await;
        c.settings(&[(id, value)]).await;
        c.expect_connection_error(&[code], 1).await;
    }
    let good = [
        (SETTINGS_INITIAL_WINDOW_SIZE, 0x7fff_ffff),
        (SETTINGS_MAX_FRAME_SIZE, 16_384),
        (SETTINGS_MAX_FRAME_SIZE, (1 << 24) - 1),
        (SETTINGS_ENABLE_PUSH, 0),
        (SETTINGS_ENABLE_PUSH, 1),
    ];
    let mut c = Conn::start(&srv, &[]).await;
    for (n, (id, value)) in good.into_iter().enumerate() {
        c.settings(&[(id, value)]).await;
        let f = c.next_or_fail("waiting for the SETTINGS ACK").await;
        if f.ty != SETTINGS || !f.has(ACK) {
            c.fail(&format!("expected SETTINGS ACK, got {f:?}"));
        }
        c.get_small(2 * n as u32 + 1).await;
    }
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

/// CVE-2023-44487 ("rapid reset"): a client that opens streams and resets them at once,
/// 20,000 times on one connection, is cut off with GOAWAY(ENHANCE_YOUR_CALM) long before the
/// end: the GOAWAY names a stream among the first thousand, it is the last frame, and the
/// connection closes.
#[tokio::test]
async fn rapid_reset_flood_is_goaway_enhance_your_calm() {
    const PAIRS: u32 = 20_000;
    let srv = start_static("");
    let Conn { tls, mut buf, .. } = Conn::start(&srv, &[]).await;
    let (mut rd, mut wr) = tokio::io::split(tls);
    // The flood is written while the answers are read (a client that does not read would be
    // held back by the server's back-pressure instead).
    let writer = tokio::spawn(async move {
        let req = hpack_block(&request_fields("GET", "/small.txt"));
        let mut written = 0;
        while written < PAIRS {
            let mut batch = Vec::new();
            for id in (written..written + 100).map(|n| 2 * n + 1) {
                batch.extend(frame_bytes(HEADERS, END_HEADERS | END_STREAM, id, &req));
                batch.extend(frame_bytes(RST_STREAM, 0, id, &CANCEL.to_be_bytes()));
            }
            if wr.write_all(&batch).await.is_err() || wr.flush().await.is_err() {
                break;
            }
            written += 100;
        }
        written
    });
    let mut responses = 0;
    let mut goaway: Option<Frame> = None;
    let mut after_goaway = Vec::new();
    let end = loop {
        while let Some(f) = take_frame(&mut buf) {
            match (&goaway, f.ty) {
                (Some(_), _) => after_goaway.push(f),
                (None, HEADERS) => responses += 1,
                (None, GOAWAY) => goaway = Some(f),
                _ => {}
            }
        }
        let mut chunk = [0u8; 16 * 1024];
        match tokio::time::timeout(Duration::from_secs(5), rd.read(&mut chunk)).await {
            Err(_) => break "still open 5 s after the last bytes".to_string(),
            Ok(Ok(0)) => break "closed".to_string(),
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
            Ok(Err(e)) => break format!("closed: {e}"),
        }
    };
    writer.abort();
    let written = writer.await.unwrap_or(0);
    let summary = format!(
        "{responses} responses, {written} of {PAIRS} HEADERS+RST_STREAM pairs written, \
         GOAWAY: {goaway:?}, then: {after_goaway:?}, end: {end}"
    );
    eprintln!("rapid reset: {summary}");
    let g = goaway.unwrap_or_else(|| panic!("no GOAWAY: {summary}"));
    assert_eq!(g.error_code(), ENHANCE_YOUR_CALM, "{summary}");
    assert!(g.last_stream_id() < 2 * 1000, "{summary}");
    assert!(responses < 1000, "{summary}");
    assert!(after_goaway.is_empty(), "{summary}");
    // A clean end (TLS close_notify), not a reset: the server lingers after its GOAWAY.
    assert_eq!(end, "closed", "{summary}");
}

/// `n` PING frames in one buffer: what a client may still write after the server's GOAWAY.
fn pings(n: usize) -> Vec<u8> {
    (0..n)
        .flat_map(|_| frame_bytes(PING, 0, 0, &[7; 8]))
        .collect()
}

/// After a connection error the server closes without a TCP reset (a lingering close, as
/// nginx's): GOAWAY, then TLS close_notify and FIN, and what the client still sends is read
/// and dropped. A socket closed with unread input is reset by the kernel instead: the
/// client's next write fails ("broken pipe", "connection reset"), and a client that then
/// gives up, or whose kernel drops the data it had not read yet, never sees the GOAWAY. Here
/// the client reads the GOAWAY, goes on writing 64 KiB for 150 ms (frames it had in flight),
/// every write succeeding, and reads a clean end. The lingering is bounded: a client that
/// trickles data on is cut off about a second after the GOAWAY, and one that floods once
/// 256 KiB are read, well before that second.
#[tokio::test]
async fn connection_error_closes_without_reset_while_the_client_still_writes() {
    let srv = start_static("");
    let mut c = Conn::start(&srv, &[]).await;
    c.get_small(1).await;
    c.data(5, b"on an idle stream", false).await;
    let g = c.expect_goaway().await;
    assert_eq!(g.error_code(), PROTOCOL_ERROR, "{}", c.trace_text());
    let goaway_at = Instant::now();
    let chunk = pings(240); // 4080 bytes
    for i in 0..16 {
        let wrote = c.tls.write_all(&chunk).await;
        if let Err(e) = wrote.and(c.tls.flush().await) {
            c.fail(&format!(
                "write {i} of 16 after the GOAWAY failed ({:?} after it): {e}",
                goaway_at.elapsed()
            ));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    c.expect_eof().await;

    // Trickling on: about 80 KiB/s, less than the byte limit allows in a second.
    let cut_off = loop {
        let wrote = c.tls.write_all(&chunk).await;
        if wrote.and(c.tls.flush().await).is_err() {
            break goaway_at.elapsed();
        }
        if goaway_at.elapsed() > Duration::from_secs(5) {
            c.fail("still accepting data 5 s after the GOAWAY");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        cut_off > Duration::from_millis(800) && cut_off < Duration::from_secs(3),
        "trickling client cut off {cut_off:?} after the GOAWAY, expected about 1 s"
    );

    // Flooding: cut off by the byte limit.
    let mut c = Conn::start(&srv, &[]).await;
    c.data(5, b"on an idle stream", false).await;
    c.expect_connection_error(&[PROTOCOL_ERROR], 0).await;
    let start = Instant::now();
    let big = pings(3855); // 65535 bytes
    let mut written = 0;
    while c.tls.write_all(&big).await.is_ok() && c.tls.flush().await.is_ok() {
        written += big.len();
        if start.elapsed() > Duration::from_secs(5) {
            c.fail(&format!("{written} bytes accepted in 5 s after the close"));
        }
    }
    eprintln!(
        "lingering close: trickling client cut off after {cut_off:?}, flooding client after \
         {:?} and {written} bytes",
        start.elapsed()
    );
    assert!(
        start.elapsed() < Duration::from_millis(700),
        "flooding client cut off after {:?} ({written} bytes), expected at 256 KiB",
        start.elapsed()
    );
}

impl Conn {
    /// Frames until every stream of `wanted` has its whole response (200 and /small.txt);
    /// frames of the `cancelled` streams are ignored, anything else fails.
    async fn expect_small_responses(&mut self, wanted: &[u32], cancelled: &[u32]) {
        let mut left: Vec<u32> = wanted.to_vec();
        let mut bodies: std::collections::HashMap<u32, Vec<u8>> = Default::default();
        while !left.is_empty() {
            let f = self.recv(&format!("waiting for streams {left:?}")).await;
            if cancelled.contains(&f.stream) && matches!(f.ty, HEADERS | DATA) {
                continue;
            }
            if !left.contains(&f.stream) {
                self.fail(&format!("unexpected {f:?} (waiting for streams {left:?})"));
            }
            match f.ty {
                HEADERS => {
                    let status = status_of(f.header_block());
                    if status != Ok(200) || f.has(END_STREAM) {
                        self.fail(&format!("expected 200 with a body: {f:?}"));
                    }
                    bodies.insert(f.stream, Vec::new());
                }
                DATA if bodies.contains_key(&f.stream) => {
                    let body = bodies.get_mut(&f.stream).unwrap();
                    body.extend_from_slice(&f.payload);
                    if f.has(END_STREAM) {
                        if body != SMALL {
                            self.fail(&format!("stream {}: {} bytes", f.stream, body.len()));
                        }
                        left.retain(|&s| s != f.stream);
                    }
                }
                _ => self.fail(&format!("unexpected {f:?} (waiting for streams {left:?})")),
            }
        }
    }

    /// A page navigation: `n` GETs on new streams from `*next`, all cancelled. `in_flight`:
    /// once the server has answered their HEADERS, their bodies waiting for window (the
    /// client's initial window is 0); else right behind the requests, which the server has
    /// answered in full by the time it reads the resets.
    async fn cancel_burst(&mut self, next: &mut u32, n: u32, in_flight: bool) -> Vec<u32> {
        let ids: Vec<u32> = (0..n).map(|k| *next + 2 * k).collect();
        *next += 2 * n;
        let req = hpack_block(&request_fields("GET", "/small.txt"));
        let mut bytes = Vec::new();
        for &id in &ids {
            bytes.extend(frame_bytes(HEADERS, END_HEADERS | END_STREAM, id, &req));
        }
        if in_flight {
            self.trace.push(format!("-> {n} GETs on streams {ids:?}"));
            self.write_raw(&bytes).await;
            for &id in &ids {
                assert_eq!(
                    self.expect_headers(id).await,
                    (200, false),
                    "{}",
                    self.trace_text()
                );
            }
            bytes.clear();
        }
        for &id in &ids {
            bytes.extend(frame_bytes(RST_STREAM, 0, id, &CANCEL.to_be_bytes()));
        }
        self.trace
            .push(format!("-> RST_STREAM(CANCEL) on streams {ids:?}"));
        self.write_raw(&bytes).await;
        ids
    }
}

/// A client that cancels streams now and then is no rapid-reset attacker, and keeps its
/// connection: a page navigation that cancels as many streams as SETTINGS_MAX_CONCURRENT_STREAMS
/// allows before any response of its own completed, then 200 requests of which every tenth is
/// cancelled, another navigation of 50 streams, and 50 more requests. The cancelled responses
/// are in flight (the client's initial window is 0: they wait after their HEADERS), or, on a
/// second connection, already complete. Every request not cancelled is answered in full, and
/// no GOAWAY comes.
#[tokio::test]
async fn occasional_cancels_keep_the_connection() {
    let srv = start_static("");
    for in_flight in [true, false] {
        let window = if in_flight { 0 } else { 65_535 };
        let mut c = Conn::start(&srv, &[(SETTINGS_INITIAL_WINDOW_SIZE, window)]).await;
        let max = c
            .server_settings
            .iter()
            .find(|s| s.0 == SETTINGS_MAX_CONCURRENT_STREAMS)
            .map(|s| s.1)
            .expect("SETTINGS_MAX_CONCURRENT_STREAMS");
        let mut next = 1;
        // Every stream cancelled: their responses, when complete, are ignored.
        let mut cancelled = c.cancel_burst(&mut next, max, in_flight).await;
        let mut answered = 0;
        for requests in [200, 0, 50] {
            if requests == 0 {
                cancelled.extend(c.cancel_burst(&mut next, 50, in_flight).await);
                continue;
            }
            for _ in 0..requests / 10 {
                let ids: Vec<u32> = (0..10).map(|k| next + 2 * k).collect();
                next += 20;
                // The first is cancelled: its response, if sent, comes before the others'.
                let (cancel, wanted) = ids.split_at(1);
                cancelled.push(cancel[0]);
                let req = hpack_block(&request_fields("GET", "/small.txt"));
                let mut bytes = Vec::new();
                for &id in &ids {
                    bytes.extend(frame_bytes(HEADERS, END_HEADERS | END_STREAM, id, &req));
                }
                bytes.extend(frame_bytes(RST_STREAM, 0, cancel[0], &CANCEL.to_be_bytes()));
                if in_flight {
                    for &id in wanted {
                        bytes.extend(frame_bytes(WINDOW_UPDATE, 0, id, &1000u32.to_be_bytes()));
                    }
                }
                c.trace.clear();
                c.trace.push(format!(
                    "-> GETs on streams {ids:?}, RST_STREAM(CANCEL) on {cancel:?} \
                     (in flight: {in_flight})"
                ));
                c.write_raw(&bytes).await;
                c.expect_small_responses(wanted, &cancelled).await;
                answered += wanted.len();
            }
        }
        assert_eq!(answered, 225);
        let payload = [4; 8];
        c.ping(payload).await;
        c.expect_ping_ack(payload).await;
        c.quiet("no GOAWAY after the cancels").await;
    }
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
    let mut c = Conn::with_stream_1_held(&srv).await;
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
// Idle timeout
// ---------------------------------------------------------------------------------------------

/// §6.8: a connection the server closes for its idle timeout gets GOAWAY(NO_ERROR) first,
/// naming the last stream served, so the client knows no request was lost; then it closes.
/// The same without any request (last-stream-id 0), and before the client's preface.
#[tokio::test]
async fn idle_timeout_sends_goaway_no_error_then_closes() {
    let srv = start_static("[limits]\nidle_timeout = \"1s\"\n");
    let mut c = Conn::start(&srv, &[]).await;
    c.get_small(1).await;
    c.get_small(3).await;
    let started = Instant::now();
    let g = c.expect_goaway().await;
    let elapsed = started.elapsed();
    assert_eq!(
        (g.error_code(), g.last_stream_id()),
        (NO_ERROR, 3),
        "{}",
        c.trace_text()
    );
    assert!(
        elapsed >= Duration::from_millis(800) && elapsed < Duration::from_secs(3),
        "GOAWAY after {elapsed:?}, expected about 1 s"
    );
    c.expect_eof().await;

    let mut c = Conn::start(&srv, &[]).await;
    c.expect_connection_error(&[NO_ERROR], 0).await;

    // Nothing from the client after the handshake: the server's SETTINGS, then GOAWAY.
    let mut c = Conn::open(&srv).await;
    let f = c.next_or_fail("before the client preface").await;
    assert!(f.ty == SETTINGS && !f.has(ACK), "{}", c.trace_text());
    c.expect_connection_error(&[NO_ERROR], 0).await;
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
    // The site's headers are in the cached head (alpha.test is a local name: no HSTS).
    assert_eq!(small.1["x-content-type-options"], "nosniff");
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
        assert_eq!(h1["x-content-type-options"], "nosniff");
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

// ---------------------------------------------------------------------------------------------
// Abuse: CONTINUATION, control-frame and WINDOW_UPDATE floods, huge header lists, closed
// windows. Each offending connection is closed (or its stream refused) while another
// connection, opened before, goes on being served.
// ---------------------------------------------------------------------------------------------

/// A HEADERS frame (no END_HEADERS) whose block ends in a field value announced as 1 MiB long,
/// then `frames` CONTINUATION frames of `frame_len` bytes of that value: a header block that
/// never ends. The server closes with GOAWAY(ENHANCE_YOUR_CALM) after a few frames
/// (CVE-2024-27316 and kin), whether the frames are tiny or full-size, holding at most a few
/// frames of it; the other connection is served after each flood.
#[tokio::test]
async fn continuation_floods_are_goaway_enhance_your_calm() {
    let srv = start_static("");
    let mut good = Conn::start(&srv, &[]).await;
    let mut next_good = 1;
    for (what, frames, frame_len) in [("tiny", 2000, 1), ("full-size", 12, MAX_FRAME)] {
        let mut c = Conn::start(&srv, &[]).await;
        let mut block = hpack_block(&request_fields("GET", "/small.txt"));
        block.push(0x00);
        hpack_str(&mut block, "x-flood");
        hpack_int(&mut block, 1 << 20, 7, 0x00);
        c.write(HEADERS, END_STREAM, 1, &block).await;
        let flood: Vec<u8> = (0..frames)
            .flat_map(|_| frame_bytes(CONTINUATION, 0, 1, &vec![b'a'; frame_len]))
            .collect();
        c.trace.push(format!(
            "-> {frames} CONTINUATION frames of {frame_len} bytes"
        ));
        // The server may have closed before all of it is written.
        let _ = c.tls.write_all(&flood).await;
        let _ = c.tls.flush().await;
        let g = c.expect_goaway().await;
        assert!(
            [ENHANCE_YOUR_CALM, COMPRESSION_ERROR].contains(&g.error_code()),
            "{what}: {g:?}\n{}",
            c.trace_text()
        );
        assert_eq!(g.last_stream_id(), 0, "{what}: the stream never opened");
        good.get_small(next_good).await;
        next_good += 2;
    }
}

/// A header list over SETTINGS_MAX_HEADER_LIST_SIZE (16 KiB by default) in HEADERS +
/// CONTINUATION is answered 431 and the connection serves its next stream (RFC 9113 §10.5.1);
/// the other connection is served meanwhile.
#[tokio::test]
async fn huge_header_list_is_431_and_the_connection_lives_on() {
    let srv = start_static("");
    let mut good = Conn::start(&srv, &[]).await;
    let mut c = Conn::start(&srv, &[]).await;
    let big = "a".repeat(20_000);
    let mut fields = request_fields("GET", "/small.txt");
    fields.push(("x-big", &big));
    let block = hpack_block(&fields);
    let (first, rest) = block.split_at(MAX_FRAME);
    c.write(HEADERS, END_STREAM, 1, first).await;
    c.write(CONTINUATION, END_HEADERS, 1, rest).await;
    let (status, _) = c.expect_response(1).await;
    assert_eq!(status, 431, "{}", c.trace_text());
    good.get_small(1).await;
    c.get_small(3).await;
}

/// A client that sends PINGs or empty SETTINGS without end and reads none of the
/// acknowledgements: the server stops reading once the acknowledgements fill its buffers (the
/// client can write only so much: memory stays bounded), and the connection is closed once the
/// client has not read for the send timeout; the other connection is served meanwhile.
#[tokio::test]
async fn unread_ping_or_settings_floods_are_bounded_and_cut_off() {
    let srv = start_static("[limits]\nsend_timeout = \"2s\"\n");
    let mut good = Conn::start(&srv, &[]).await;
    let mut next_good = 1;
    for (what, frame) in [
        ("PING", frame_bytes(PING, 0, 0, &[1; 8])),
        ("SETTINGS", frame_bytes(SETTINGS, 0, 0, &[])),
    ] {
        let Conn { tls, .. } = Conn::start(&srv, &[]).await;
        let (mut rd, mut wr) = tokio::io::split(tls);
        let batch = frame.repeat(1000);
        let started = Instant::now();
        let writer = tokio::spawn(async move {
            let mut written = 0usize;
            while written < 64 << 20 {
                match tokio::time::timeout(Duration::from_millis(500), wr.write_all(&batch)).await {
                    Ok(Ok(())) => written += batch.len(),
                    _ => break, // blocked (the server reads no more) or closed
                }
            }
            (written, wr)
        });
        let (written, _wr) = writer.await.unwrap();
        // The client's writes blocked at least 500 ms ago (the writer's timeout); the server's
        // writes of acknowledgements blocked before that.
        let blocked = Instant::now();
        assert!(
            written < 64 << 20,
            "{what}: the server took {written} bytes of a flood whose answers nobody reads"
        );
        good.get_small(next_good).await;
        next_good += 2;
        // Not reading for the send timeout (2 s) ends the connection: what the client reads
        // then ends (after some acknowledgements) with a close or a reset, not with more
        // waiting. Reading earlier would count as reading, so the client waits the timeout
        // from when the server's writes blocked, and a margin: reading before the server gave
        // up would keep the connection alive, rightly.
        tokio::time::sleep(Duration::from_millis(2500).saturating_sub(blocked.elapsed())).await;
        let ended = loop {
            let mut chunk = [0u8; 64 * 1024];
            match tokio::time::timeout(FRAME_TIMEOUT, rd.read(&mut chunk)).await {
                Ok(Ok(0)) | Ok(Err(_)) => break started.elapsed(),
                Ok(Ok(_)) => {}
                Err(_) => panic!("{what}: the flooding connection is still open"),
            }
        };
        eprintln!("{what} flood: {written} bytes taken, connection ended after {ended:?}");
        good.get_small(next_good).await;
        next_good += 2;
    }
}

/// 100,000 WINDOW_UPDATEs of 1 on the connection (far from overflowing it) cost little and
/// change nothing: the PING after them is answered, and both connections serve requests.
#[tokio::test]
async fn window_update_flood_is_absorbed() {
    let srv = start_static("");
    let mut good = Conn::start(&srv, &[]).await;
    let mut c = Conn::start(&srv, &[]).await;
    let flood: Vec<u8> = (0..100_000)
        .flat_map(|_| frame_bytes(WINDOW_UPDATE, 0, 0, &1u32.to_be_bytes()))
        .collect();
    c.trace.push("-> 100000 WINDOW_UPDATE(0, 1)".into());
    let started = Instant::now();
    c.write_raw(&flood).await;
    c.ping([5; 8]).await;
    c.expect_ping_ack([5; 8]).await;
    good.get_small(1).await;
    c.get_small(1).await;
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
}

/// A client that keeps its window at 0 while a response waits for it holds that response (and
/// its connection) until the send timeout: then GOAWAY(ENHANCE_YOUR_CALM) and the close. The
/// other connection is served meanwhile.
#[tokio::test]
async fn response_held_by_a_closed_window_is_cut_off_after_the_send_timeout() {
    let srv = start_static("[limits]\nsend_timeout = \"1s\"\n");
    let mut good = Conn::start(&srv, &[]).await;
    let started = Instant::now();
    let mut c = Conn::with_stream_1_held(&srv).await;
    good.get_small(1).await;
    let g = c.expect_goaway().await;
    let after = started.elapsed();
    assert_eq!(g.error_code(), ENHANCE_YOUR_CALM, "{}", c.trace_text());
    assert!(
        after >= Duration::from_millis(900) && after < Duration::from_secs(4),
        "GOAWAY after {after:?}, expected about the 1 s send timeout"
    );
    c.expect_eof().await;
    good.get_small(3).await;
}

/// HPACK table games: a block that opens with 1,000 table size updates (each within the
/// limit) is decoded in bounded time, answered or refused with COMPRESSION_ERROR, never
/// left hanging; 200 requests each inserting a 4,000-byte field into the dynamic table
/// (evicting the one before: the table stays within its 4,096 bytes) are all answered. The
/// other connection is served meanwhile.
#[tokio::test]
async fn hpack_table_size_games_stay_bounded() {
    let srv = start_static("");
    let mut good = Conn::start(&srv, &[]).await;

    let mut c = Conn::start(&srv, &[]).await;
    let updates: Vec<u8> = (0..1000)
        .flat_map(|i| size_update(if i % 2 == 0 { 0 } else { 4096 }))
        .collect();
    c.send_block(1, &request_block(&updates, &[]), "1000 table size updates")
        .await;
    let f = c.recv("the answer to 1000 size updates").await;
    match f.ty {
        HEADERS => assert_eq!(status_of(f.header_block()), Ok(200), "{}", c.trace_text()),
        GOAWAY => assert_eq!(f.error_code(), COMPRESSION_ERROR, "{}", c.trace_text()),
        _ => c.fail(&format!("unexpected answer {f:?}")),
    }
    good.get_small(1).await;

    let mut c = Conn::start(&srv, &[]).await;
    let value = "v".repeat(4000);
    for i in 0..200u32 {
        let mut after = Vec::new();
        hpack_indexed_literal(&mut after, "x-big", &value);
        let id = 2 * i + 1;
        c.send_block(id, &request_block(&[], &after), "a 4000-byte field indexed")
            .await;
        let (status, body) = c.expect_response(id).await;
        assert_eq!(
            (status, &body[..]),
            (200, SMALL),
            "request {i}: {}",
            c.trace_text()
        );
    }
    good.get_small(3).await;
}
