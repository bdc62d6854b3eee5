//! Response compression for proxied responses (`compress = true` on a proxy route).
//!
//! Three pieces, used in this order by [`apply`]:
//! - [`negotiate`] reads the request's `Accept-Encoding` (RFC 9110 §12.5.3) and picks a coding;
//! - [`should_compress`] decides from the response's status, fields and known size whether it is
//!   worth (and allowed) compressing;
//! - [`compress`] rewrites the response head and wraps the body in [`CompressBody`], a
//!   streaming encoder.
//!
//! What this is not: a cache of compressed responses, or compression of static files (those
//! are served from precompressed `.br`/`.gz` siblings, see `static_files`).
//!
//! # Codings and levels
//! Preference among the codings a client accepts equally (same q-value): **zstd, then br, then
//! gzip**. At the fast levels used here zstd (level 3) compresses text about as well as gzip's
//! highest levels at several times gzip's speed, and decompresses fastest; brotli (quality 4)
//! compresses a little better than gzip at about its speed; gzip (level 5, between zlib's
//! fast 1 and its default 6: nearly the ratio of 6 for less CPU) is the one every client has.
//! A higher q-value always wins over this order.
//!
//! # Memory
//! Bounded per response, whatever the body's size: the encoder's window and tables (gzip
//! about 300 KiB; brotli and zstd with 512 KiB windows, a few MiB at most) plus at most
//! [`OUT_CHUNK`] bytes of output waiting to be sent. Input is never buffered: each chunk goes
//! into the encoder as it arrives.
//!
//! # Streaming
//! The encoder takes input chunks as long as the backend has them ready, and flushes (a sync
//! flush: the output so far decodes completely) whenever the backend's body would wait, so a
//! trickling response (server-sent events, a long poll, a progress log) reaches the client as
//! it comes, never held back in the encoder. Trailers pass through after the last data.

use std::io::{self, Write as _};
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::buf::Writer;
use bytes::{BufMut as _, Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Response, StatusCode};
use http_body::{Body as _, Frame, SizeHint};

use super::body::Body;

/// A content coding this server produces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Coding {
    /// RFC 8878 Zstandard, level 3.
    Zstd,
    /// RFC 7932 Brotli, quality 4.
    Br,
    /// RFC 1952 gzip, level 5.
    Gzip,
}

impl Coding {
    /// Preference order on equal q-values (see the module docs for why).
    const PREFERENCE: [Coding; 3] = [Coding::Zstd, Coding::Br, Coding::Gzip];

    /// The coding's name in `Accept-Encoding` and `Content-Encoding`.
    pub fn as_str(self) -> &'static str {
        match self {
            Coding::Zstd => "zstd",
            Coding::Br => "br",
            Coding::Gzip => "gzip",
        }
    }
}

/// Bodies known to be smaller than this are not compressed: the saving would be a few bytes,
/// less than the coding's own framing costs in some cases, for a whole encoder's setup.
pub const MIN_SIZE: u64 = 1024;

/// Output is handed on once this much is ready, even while more input is at hand.
pub const OUT_CHUNK: usize = 32 * 1024;

/// Input taken in one poll before yielding to other tasks (cooperative scheduling: a backend
/// that always has data ready must not keep a worker thread to itself).
const POLL_BUDGET: usize = 256 * 1024;

/// gzip level (zlib scale 1–9).
const GZIP_LEVEL: u32 = 5;
/// brotli quality (0–11).
const BROTLI_QUALITY: u32 = 4;
/// brotli window: 2^19 = 512 KiB, as nginx's brotli module by default.
const BROTLI_LGWIN: u32 = 19;
/// brotli's staging buffer between the encoder and the output.
const BROTLI_BUFFER: usize = 4096;
/// zstd level (1–22).
const ZSTD_LEVEL: i32 = 3;
/// zstd window: 2^19 = 512 KiB (RFC 9659 asks decoders for at least 8 MiB; smaller is always
/// fine, and keeps the encoder's memory down).
const ZSTD_WINDOW_LOG: u32 = 19;

// =============================================================================================
// Policy
// =============================================================================================

/// Compresses a proxied response when the route has compression on: what a proxy route calls
/// with the request's method and its [`negotiate`]d coding, once the response head is final.
///
/// A response that could be compressed (see [`should_compress`]) varies with
/// `Accept-Encoding` whether or not this client gets it compressed, so it always carries
/// `Vary: Accept-Encoding`.
pub fn apply(method: &Method, resp: Response<Body>, coding: Option<Coding>) -> Response<Body> {
    let size = resp.body().size_hint();
    if !should_compress(method, resp.status(), resp.headers(), &size) {
        return resp;
    }
    match coding {
        Some(coding) => compress(resp, coding),
        None => {
            let mut resp = resp;
            add_vary(resp.headers_mut());
            resp
        }
    }
}

/// The coding to answer a request with, from its `Accept-Encoding` fields (RFC 9110 §12.5.3):
/// among zstd, br and gzip (`x-gzip` counts as gzip), those with a q-value above 0 (listed, or
/// covered by `*`); the highest q wins, ties go zstd > br > gzip.
///
/// `None` (send the content as it is) when the request has no `Accept-Encoding` (any coding
/// would be allowed then, but clients that can decode say so, and guessing breaks the rest),
/// none of the three is acceptable (`gzip;q=0`, `*;q=0`, only `deflate`...), the client rates
/// `identity` higher than the best of them, or the request carries `Cache-Control:
/// no-transform` (RFC 9111 §5.2.1.6). A client refusing `identity` (`identity;q=0`) and every
/// coding here still gets the plain content: RFC 9110 lets a server send it rather than 415.
///
/// Malformed elements (a bad q-value, a coding that is not a token) are skipped.
pub fn negotiate(req_headers: &HeaderMap) -> Option<Coding> {
    if has_directive(req_headers, "no-transform") {
        return None;
    }
    let accept = AcceptEncoding::parse(req_headers)?;
    let mut best: Option<(Coding, u16)> = None;
    for coding in Coding::PREFERENCE {
        let q = accept.q(coding.as_str());
        // Strictly greater: on a tie the earlier (preferred) coding stays.
        if q > 0 && best.is_none_or(|(_, bq)| q > bq) {
            best = Some((coding, q));
        }
    }
    let (coding, q) = best?;
    match accept.explicit("identity") {
        Some(identity) if identity > q => None,
        _ => Some(coding),
    }
}

/// Whether a response may and should be compressed.
///
/// Not for: responses to HEAD (no body to compress; its fields stay the backend's), 1xx, 204,
/// 206 (a byte range of the identity content) and 304; a response that has a
/// `Content-Encoding` already, a `Content-Range`, or `Cache-Control: no-transform`; a body
/// known (exact size hint, or `Content-Length`) to be shorter than [`MIN_SIZE`]; a media type
/// that is not in the compressible list (see [`compressible_type`]; no `Content-Type`: not
/// compressed).
pub fn should_compress(
    method: &Method,
    status: StatusCode,
    headers: &HeaderMap,
    size: &SizeHint,
) -> bool {
    if *method == Method::HEAD
        || status.is_informational()
        || matches!(
            status,
            StatusCode::NO_CONTENT | StatusCode::PARTIAL_CONTENT | StatusCode::NOT_MODIFIED
        )
    {
        return false;
    }
    if headers.contains_key(header::CONTENT_ENCODING)
        || headers.contains_key(header::CONTENT_RANGE)
        || has_directive(headers, "no-transform")
    {
        return false;
    }
    if size.exact().is_some_and(|n| n < MIN_SIZE) {
        return false;
    }
    let length = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if length.is_some_and(|n| n < MIN_SIZE) {
        return false;
    }
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(compressible_type)
}

/// Whether a `Content-Type` names content that compresses well.
///
/// An allow list: text (`text/*`), structured text (JSON, XML, JavaScript, YAML, TOML, and
/// every `+json`/`+xml` type such as `image/svg+xml` and `application/ld+json`), WebAssembly,
/// uncompressed fonts (TrueType, OpenType, EOT) and bitmaps (ICO, BMP). Everything else is
/// left alone: formats that are compressed already (JPEG, PNG, WebP, AVIF, GIF, video,
/// audio, WOFF/WOFF2 fonts, zip/gzip/zstd/brotli archives, PDF), opaque bytes
/// (`application/octet-stream`), and types whose protocol has its own compression
/// (`application/grpc`).
pub fn compressible_type(content_type: &str) -> bool {
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    let Some((top, sub)) = essence.split_once('/') else {
        return false;
    };
    if top == "text" {
        return true;
    }
    if sub.ends_with("+json") || sub.ends_with("+xml") {
        return true;
    }
    matches!(
        (top, sub),
        (
            "application",
            "json"
                | "xml"
                | "javascript"
                | "x-javascript"
                | "ecmascript"
                | "wasm"
                | "yaml"
                | "x-yaml"
                | "toml"
                | "x-ndjson"
                | "jsonl"
                | "graphql"
                | "x-sh"
                | "rtf"
                | "vnd.ms-fontobject"
                | "x-font-ttf"
                | "x-font-otf"
                | "x-www-form-urlencoded"
        ) | ("font", "ttf" | "otf" | "sfnt" | "collection")
            | (
                "image",
                "x-icon" | "vnd.microsoft.icon" | "bmp" | "x-ms-bmp"
            )
    )
}

/// Rewrites a response for `coding`: `Content-Encoding` set; `Content-Length` gone (the size
/// is not known until the end; HTTP/1.1 sends it chunked); `Vary: Accept-Encoding` added;
/// a strong `ETag` made weak (`"x"` → `W/"x"`: the bytes differ from the identity content's,
/// but it is the same resource, so conditional requests still match weakly at the backend;
/// a malformed one is removed); `Accept-Ranges` removed (ranges are not served of the
/// compressed form); the digests of the content (`Content-Digest`, `Repr-Digest`,
/// `Content-MD5`) removed, as they describe the uncompressed bytes. The body is wrapped in
/// [`CompressBody`].
///
/// The caller decides whether to (see [`should_compress`]); this does not check again.
pub fn compress(resp: Response<Body>, coding: Coding) -> Response<Body> {
    let (mut parts, body) = resp.into_parts();
    let h = &mut parts.headers;
    h.insert(
        header::CONTENT_ENCODING,
        HeaderValue::from_static(coding.as_str()),
    );
    h.remove(header::CONTENT_LENGTH);
    h.remove(header::ACCEPT_RANGES);
    for name in [CONTENT_DIGEST, REPR_DIGEST, CONTENT_MD5] {
        h.remove(name);
    }
    add_vary(h);
    weaken_etag(h);
    let size = body.size_hint();
    let body = CompressBody::new(body, coding, size.exact());
    Response::from_parts(parts, Body::stream(body))
}

const CONTENT_DIGEST: HeaderName = HeaderName::from_static("content-digest");
const REPR_DIGEST: HeaderName = HeaderName::from_static("repr-digest");
const CONTENT_MD5: HeaderName = HeaderName::from_static("content-md5");

/// Adds `Accept-Encoding` to `Vary`: appended to the existing value (one field), unless that
/// is `*` or lists it already.
pub fn add_vary(h: &mut HeaderMap) {
    let mut listed = h.get_all(header::VARY).iter().flat_map(|v| {
        v.to_str()
            .unwrap_or("")
            .split(',')
            .map(str::trim)
            .collect::<Vec<_>>()
    });
    if listed.any(|name| name == "*" || name.eq_ignore_ascii_case("accept-encoding")) {
        return;
    }
    let existing: Vec<&str> = h
        .get_all(header::VARY)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .collect();
    let value = if existing.is_empty() {
        HeaderValue::from_static("Accept-Encoding")
    } else {
        match HeaderValue::from_str(&format!("{}, Accept-Encoding", existing.join(", "))) {
            Ok(v) => v,
            // Unreachable for values that were valid header values, each with `to_str` ok;
            // appending a separate field means the same (RFC 9110 §5.3).
            Err(_) => {
                h.append(header::VARY, HeaderValue::from_static("Accept-Encoding"));
                return;
            }
        }
    };
    h.insert(header::VARY, value);
}

/// `"x"` → `W/"x"`; weak tags stay; anything else is removed.
fn weaken_etag(h: &mut HeaderMap) {
    let Some(etag) = h.get(header::ETAG) else {
        return;
    };
    let bytes = etag.as_bytes();
    if bytes.starts_with(b"W/") {
        return;
    }
    let weak = if bytes.len() >= 2 && bytes.starts_with(b"\"") && bytes.ends_with(b"\"") {
        let mut w = Vec::with_capacity(bytes.len() + 2);
        w.extend_from_slice(b"W/");
        w.extend_from_slice(bytes);
        HeaderValue::from_bytes(&w).ok()
    } else {
        None
    };
    match weak {
        Some(w) => {
            h.insert(header::ETAG, w);
        }
        None => {
            h.remove(header::ETAG);
        }
    }
}

/// Whether a `Cache-Control` field lists `directive` (case-insensitive, arguments ignored).
fn has_directive(h: &HeaderMap, directive: &str) -> bool {
    h.get_all(header::CACHE_CONTROL).iter().any(|v| {
        v.to_str().is_ok_and(|v| {
            v.split(',').any(|d| {
                d.split('=')
                    .next()
                    .unwrap_or("")
                    .trim()
                    .eq_ignore_ascii_case(directive)
            })
        })
    })
}

/// A parsed `Accept-Encoding`: codings (lower-cased) with q-values in thousandths.
#[derive(Debug)]
struct AcceptEncoding {
    entries: Vec<(String, u16)>,
}

impl AcceptEncoding {
    /// Parses every `Accept-Encoding` field; `None` without any. Malformed elements are
    /// skipped.
    fn parse(headers: &HeaderMap) -> Option<Self> {
        let mut values = headers.get_all(header::ACCEPT_ENCODING).iter().peekable();
        values.peek()?;
        let mut entries = Vec::new();
        for value in values {
            let Ok(value) = value.to_str() else { continue };
            for element in value.split(',') {
                let mut parts = element.split(';');
                let coding = parts.next().unwrap_or("").trim();
                if coding.is_empty() || !coding.bytes().all(is_tchar) {
                    continue;
                }
                let mut q = Some(1000);
                for param in parts {
                    let Some((name, val)) = param.split_once('=') else {
                        q = None;
                        break;
                    };
                    if name.trim().eq_ignore_ascii_case("q") {
                        q = parse_qvalue(val.trim());
                    }
                }
                if let Some(q) = q {
                    entries.push((coding.to_ascii_lowercase(), q));
                }
            }
        }
        Some(AcceptEncoding { entries })
    }

    /// The explicitly listed q-value of `coding` (the highest if listed twice).
    fn explicit(&self, coding: &str) -> Option<u16> {
        self.entries
            .iter()
            .filter(|(c, _)| c == coding)
            .map(|(_, q)| *q)
            .max()
    }

    /// The q-value of a content coding: its entry, else `*`'s, else 0 (not acceptable).
    fn q(&self, coding: &str) -> u16 {
        let explicit = match coding {
            "gzip" => self.explicit("gzip").max(self.explicit("x-gzip")),
            other => self.explicit(other),
        };
        explicit.or_else(|| self.explicit("*")).unwrap_or(0)
    }
}

/// RFC 9110 `tchar`.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Parses a `qvalue` (`0[.ddd]` or `1[.000]`) into thousandths.
fn parse_qvalue(s: &str) -> Option<u16> {
    let (int, frac) = s.split_once('.').unwrap_or((s, ""));
    if frac.len() > 3 || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let mut thousandths: u16 = 0;
    for (i, b) in frac.bytes().enumerate() {
        thousandths += u16::from(b - b'0') * [100, 10, 1][i];
    }
    match int {
        "0" => Some(thousandths),
        "1" if thousandths == 0 => Some(1000),
        _ => None,
    }
}

// =============================================================================================
// Mechanism: the streaming encoder body
// =============================================================================================

/// One encoder writing into a shared output buffer. Writing into a `BytesMut` cannot fail, so
/// an error here is the codec's own (which none of the three has for valid input).
enum Encoder {
    Gzip(flate2::write::GzEncoder<Writer<BytesMut>>),
    // Boxed: brotli's encoder state is a few KiB inline.
    Br(Box<brotli::CompressorWriter<Writer<BytesMut>>>),
    Zstd(zstd::stream::write::Encoder<'static, Writer<BytesMut>>),
}

impl Encoder {
    fn new(coding: Coding, size: Option<u64>) -> io::Result<Encoder> {
        let out = BytesMut::new().writer();
        Ok(match coding {
            Coding::Gzip => Encoder::Gzip(flate2::write::GzEncoder::new(
                out,
                flate2::Compression::new(GZIP_LEVEL),
            )),
            Coding::Br => Encoder::Br(Box::new(brotli::CompressorWriter::new(
                out,
                BROTLI_BUFFER,
                BROTLI_QUALITY,
                BROTLI_LGWIN,
            ))),
            Coding::Zstd => {
                let mut e = zstd::stream::write::Encoder::new(out, ZSTD_LEVEL)?;
                e.window_log(ZSTD_WINDOW_LOG)?;
                if let Some(n) = size {
                    // A known size lets zstd size its tables to the content and records the
                    // size in the frame; the body ends with an error if the backend then
                    // sends another length (hyper already fails such a body).
                    e.set_pledged_src_size(Some(n))?;
                }
                Encoder::Zstd(e)
            }
        })
    }

    fn write(&mut self, data: &[u8]) -> io::Result<()> {
        match self {
            Encoder::Gzip(e) => e.write_all(data),
            Encoder::Br(e) => e.write_all(data),
            Encoder::Zstd(e) => e.write_all(data),
        }
    }

    /// Sync flush: everything written so far can be decoded from the output.
    fn flush(&mut self) -> io::Result<()> {
        match self {
            Encoder::Gzip(e) => e.flush(),
            Encoder::Br(e) => e.flush(),
            Encoder::Zstd(e) => e.flush(),
        }
    }

    /// The output produced so far.
    fn out(&mut self) -> &mut BytesMut {
        match self {
            Encoder::Gzip(e) => e.get_mut().get_mut(),
            Encoder::Br(e) => e.get_mut().get_mut(),
            Encoder::Zstd(e) => e.get_mut().get_mut(),
        }
    }

    /// Ends the stream; the rest of the output.
    fn finish(self) -> io::Result<BytesMut> {
        Ok(match self {
            Encoder::Gzip(e) => e.finish()?.into_inner(),
            // `into_inner` finishes the stream (brotli's writer has no fallible finish; its
            // only failure would be an encoder in an invalid state, which valid use never
            // reaches).
            Encoder::Br(e) => e.into_inner().into_inner(),
            Encoder::Zstd(e) => e.finish()?.into_inner(),
        })
    }
}

enum State {
    /// Taking the inner body's data.
    Reading,
    /// The inner body ended with these trailers; the encoder is finished.
    Trailers(HeaderMap),
    /// Nothing more to send.
    Done,
}

/// A body compressed as it streams: see the module docs for the flush policy and memory.
pub struct CompressBody<B> {
    inner: B,
    /// `None` once finished (or if it could not be created: the error is the body's first
    /// frame).
    encoder: Option<Encoder>,
    /// Output left over after the encoder was finished.
    tail: Option<Bytes>,
    /// Input written since the last flush.
    unflushed: bool,
    state: State,
    /// An encoder setup error, reported as the body's first frame.
    error: Option<io::Error>,
}

impl<B> CompressBody<B> {
    /// Wraps `inner`; `size` is its exact length when known (zstd uses it to size itself).
    pub fn new(inner: B, coding: Coding, size: Option<u64>) -> Self {
        let (encoder, error) = match Encoder::new(coding, size) {
            Ok(e) => (Some(e), None),
            Err(e) => (None, Some(e)),
        };
        CompressBody {
            inner,
            encoder,
            tail: None,
            unflushed: false,
            state: State::Reading,
            error,
        }
    }

    /// The encoder's output so far, if any, as one chunk.
    fn take_output(&mut self) -> Option<Bytes> {
        let out = self.encoder.as_mut()?.out();
        (!out.is_empty()).then(|| out.split().freeze())
    }

    fn pending_output(&mut self) -> usize {
        self.encoder.as_mut().map_or(0, |e| e.out().len())
    }

    /// Finishes the encoder; its output not yet taken, with the end of the stream, goes to
    /// `tail`.
    fn finish(&mut self) -> io::Result<()> {
        if let Some(e) = self.encoder.take() {
            let rest = e.finish()?;
            if !rest.is_empty() {
                self.tail = Some(rest.freeze());
            }
        }
        Ok(())
    }
}

impl<B> http_body::Body for CompressBody<B>
where
    B: http_body::Body<Data = Bytes, Error = io::Error> + Unpin,
{
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        let this = self.get_mut();
        if let Some(e) = this.error.take() {
            this.state = State::Done;
            return Poll::Ready(Some(Err(e)));
        }
        let mut taken = 0usize;
        loop {
            match &mut this.state {
                State::Done => {
                    return Poll::Ready(this.tail.take().map(|b| Ok(Frame::data(b))));
                }
                State::Trailers(_) => {
                    if let Some(b) = this.tail.take() {
                        return Poll::Ready(Some(Ok(Frame::data(b))));
                    }
                    let State::Trailers(t) = std::mem::replace(&mut this.state, State::Done) else {
                        unreachable!("matched above")
                    };
                    return Poll::Ready(Some(Ok(Frame::trailers(t))));
                }
                State::Reading => {}
            }
            if this.pending_output() >= OUT_CHUNK {
                return Poll::Ready(this.take_output().map(|b| Ok(Frame::data(b))));
            }
            if taken >= POLL_BUDGET {
                if let Some(b) = this.take_output() {
                    return Poll::Ready(Some(Ok(Frame::data(b))));
                }
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            match Pin::new(&mut this.inner).poll_frame(cx) {
                Poll::Pending => {
                    // The backend has nothing more for now: what it sent so far goes out.
                    if this.unflushed {
                        this.unflushed = false;
                        if let Some(e) = this.encoder.as_mut() {
                            if let Err(e) = e.flush() {
                                this.state = State::Done;
                                return Poll::Ready(Some(Err(e)));
                            }
                        }
                    }
                    return match this.take_output() {
                        Some(b) => Poll::Ready(Some(Ok(Frame::data(b)))),
                        None => Poll::Pending,
                    };
                }
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(data) => {
                        if data.is_empty() {
                            continue;
                        }
                        taken += data.len();
                        this.unflushed = true;
                        if let Some(e) = this.encoder.as_mut() {
                            if let Err(e) = e.write(&data) {
                                this.state = State::Done;
                                return Poll::Ready(Some(Err(e)));
                            }
                        }
                    }
                    Err(frame) => {
                        // Trailers end the body: finish the encoding first.
                        if let Err(e) = this.finish() {
                            this.state = State::Done;
                            return Poll::Ready(Some(Err(e)));
                        }
                        this.state = match frame.into_trailers() {
                            Ok(t) => State::Trailers(t),
                            // A frame kind http-body may add later: nothing to pass on.
                            Err(_) => State::Done,
                        };
                    }
                },
                Poll::Ready(Some(Err(e))) => {
                    // The backend failed mid-body: the client's response ends abruptly too.
                    this.state = State::Done;
                    this.encoder = None;
                    return Poll::Ready(Some(Err(e)));
                }
                Poll::Ready(None) => {
                    if let Err(e) = this.finish() {
                        this.state = State::Done;
                        return Poll::Ready(Some(Err(e)));
                    }
                    this.state = State::Done;
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self.state, State::Done) && self.tail.is_none() && self.error.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}
