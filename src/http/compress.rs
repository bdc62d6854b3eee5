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
//! gzip**. At the fast levels used here zstd (level 3) typically compresses text about as well
//! as gzip at its default level or above, several times faster, and decompresses fastest;
//! brotli (quality 4) typically compresses a little better than gzip at about its speed; gzip
//! (level 5, one below zlib's default 6: nearly its ratio for less CPU) is the one every client
//! has. A higher q-value always wins over this order.
//!
//! # Memory
//! Bounded per response, whatever the body's size: the encoder's window and tables (gzip
//! about 300 KiB; brotli and zstd with 512 KiB windows, a few MiB at most) plus the output
//! waiting to be sent: [`OUT_CHUNK`], or what one flush (at most every [`FLUSH_EVERY`] bytes
//! of input) gives. Input is never buffered here: each chunk goes into the encoder as it
//! arrives.
//!
//! # Streaming
//! The encoder takes input chunks as long as the backend has them ready, and flushes (a sync
//! flush: the output so far decodes completely) whenever the backend's body would wait, and
//! after every [`FLUSH_EVERY`] bytes of input. So a trickling response (server-sent events, a
//! long poll, a progress log) reaches the client as it comes, never held back in the encoder,
//! while a body that arrives fast is compressed in large pieces. Trailers pass through after
//! the last data.

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

/// Bodies known to be shorter than this are sent as they are: a few hundred bytes saved at
/// most, for an encoder's setup and memory per response.
pub const MIN_SIZE: u64 = 1024;

/// Output is handed on once this much is ready, even while more input is at hand.
pub const OUT_CHUNK: usize = 32 * 1024;

/// The encoder is flushed after at most this much input, even while more is at hand: brotli
/// at the levels used here would otherwise gather up to a megabyte of input into one
/// meta-block before writing anything, holding its output (and the client) back that long.
pub const FLUSH_EVERY: usize = 256 * 1024;

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
/// coding here still gets the content plain: the backend saw the same `Accept-Encoding` and
/// answered it (with a 406 if it wanted to refuse).
///
/// Malformed elements (a bad q-value, a coding that is not a token) are skipped.
pub fn negotiate(req_headers: &HeaderMap) -> Option<Coding> {
    if has_directive(req_headers, "no-transform") {
        return None;
    }
    // Without the field no coding has a q-value: the content goes as it is.
    let accept = AcceptEncoding::parse(req_headers);
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

/// A parsed `Accept-Encoding`: codings (lower-cased) with q-values in thousandths. Also what
/// static files choose their precompressed variants by.
#[derive(Debug, Default)]
pub(crate) struct AcceptEncoding {
    entries: Vec<(String, u16)>,
}

impl AcceptEncoding {
    /// Parses every `Accept-Encoding` field (none: no entries, so no coding is acceptable).
    /// Malformed elements are skipped.
    pub(crate) fn parse(headers: &HeaderMap) -> Self {
        let mut entries = Vec::new();
        for value in headers.get_all(header::ACCEPT_ENCODING) {
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
        AcceptEncoding { entries }
    }

    /// The explicitly listed q-value of `coding` (the highest if listed twice).
    pub(crate) fn explicit(&self, coding: &str) -> Option<u16> {
        self.entries
            .iter()
            .filter(|(c, _)| c == coding)
            .map(|(_, q)| *q)
            .max()
    }

    /// The q-value of a content coding: its entry, else `*`'s, else 0 (not acceptable).
    pub(crate) fn q(&self, coding: &str) -> u16 {
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
pub(crate) fn parse_qvalue(s: &str) -> Option<u16> {
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
    /// Input written since the last flush, in bytes.
    unflushed: usize,
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
            unflushed: 0,
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

    /// Flushes the encoder: all input so far can be decoded from the output.
    fn flush(&mut self) -> io::Result<()> {
        self.unflushed = 0;
        match self.encoder.as_mut() {
            Some(e) => e.flush(),
            None => Ok(()),
        }
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
                    if this.unflushed > 0 {
                        if let Err(e) = this.flush() {
                            this.state = State::Done;
                            return Poll::Ready(Some(Err(e)));
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
                        this.unflushed += data.len();
                        let mut written = match this.encoder.as_mut() {
                            Some(e) => e.write(&data),
                            None => Ok(()),
                        };
                        if written.is_ok() && this.unflushed >= FLUSH_EVERY {
                            written = this.flush();
                        }
                        if let Err(e) = written {
                            this.state = State::Done;
                            return Poll::Ready(Some(Err(e)));
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

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::io::Write as _;
    use std::task::Waker;

    use super::*;

    // ---------------------------------------------------------------------------------------
    // Negotiation
    // ---------------------------------------------------------------------------------------

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    fn neg(accept: &str) -> Option<Coding> {
        negotiate(&headers(&[("accept-encoding", accept)]))
    }

    #[test]
    fn negotiation_table() {
        use Coding::*;
        let table: &[(&str, Option<Coding>)] = &[
            // Browsers: all at q=1, our preference decides.
            ("gzip, deflate, br, zstd", Some(Zstd)),
            ("gzip, deflate, br", Some(Br)),
            ("gzip, deflate", Some(Gzip)),
            ("GZIP", Some(Gzip)),
            ("x-gzip", Some(Gzip)),
            (" br ;  q=1 ", Some(Br)),
            // A higher q-value beats the preference order.
            ("br;q=0.5, gzip;q=0.8", Some(Gzip)),
            ("zstd;q=0.1, gzip", Some(Gzip)),
            ("zstd;q=0.5, br;q=0.5, gzip;q=0.5", Some(Zstd)),
            ("*;q=0.5, gzip", Some(Gzip)),
            // Refusals.
            ("gzip;q=0", None),
            ("gzip;q=0, br", Some(Br)),
            ("zstd;q=0, br;q=0, *", Some(Gzip)),
            ("gzip;q=0, *", Some(Zstd)),
            ("*;q=0", None),
            ("*;q=0, br", Some(Br)),
            ("x-gzip;q=0.3, gzip;q=0", Some(Gzip)),
            // `*` covers what is not listed.
            ("*", Some(Zstd)),
            ("deflate, *;q=0.2", Some(Zstd)),
            // Nothing we produce.
            ("deflate", None),
            ("compress, identity", None),
            ("", None),
            // identity: refusing it changes nothing; preferring it wins.
            ("identity;q=0", None),
            ("gzip, identity;q=0", Some(Gzip)),
            ("gzip;q=0.5, identity", None),
            ("gzip;q=0.5, identity;q=0.5", Some(Gzip)),
            // Malformed elements are skipped, the rest counts.
            ("gzip;q=1.5", None),
            ("gzip;q=0.0001", None),
            ("gzip;q=abc, br", Some(Br)),
            ("gz/ip, br", Some(Br)),
            ("gzip;level, br;q=0.9", Some(Br)),
            ("gzip;q=0.001", Some(Gzip)),
        ];
        for (accept, want) in table {
            assert_eq!(neg(accept), *want, "Accept-Encoding: {accept:?}");
        }
    }

    #[test]
    fn negotiation_without_header_or_with_no_transform() {
        assert_eq!(negotiate(&HeaderMap::new()), None);
        // Two fields count as one list.
        let two = headers(&[("accept-encoding", "gzip;q=0.2"), ("accept-encoding", "br")]);
        assert_eq!(negotiate(&two), Some(Coding::Br));
        let nt = headers(&[
            ("accept-encoding", "gzip, br"),
            ("cache-control", "max-age=0, No-Transform"),
        ]);
        assert_eq!(negotiate(&nt), None);
    }

    // ---------------------------------------------------------------------------------------
    // What to compress
    // ---------------------------------------------------------------------------------------

    fn should(method: Method, status: u16, pairs: &[(&str, &str)], size: Option<u64>) -> bool {
        let size = size.map_or_else(SizeHint::default, SizeHint::with_exact);
        should_compress(
            &method,
            StatusCode::from_u16(status).unwrap(),
            &headers(pairs),
            &size,
        )
    }

    #[test]
    fn should_compress_by_type() {
        let yes = [
            "text/html",
            "text/html; charset=utf-8",
            "TEXT/CSS",
            "text/plain",
            "text/event-stream",
            "text/csv",
            "application/json",
            "application/json; charset=utf-8",
            "application/problem+json",
            "application/ld+json",
            "application/manifest+json",
            "application/xml",
            "application/atom+xml",
            "application/xhtml+xml",
            "application/javascript",
            "application/x-javascript",
            "application/wasm",
            "application/yaml",
            "image/svg+xml",
            "image/x-icon",
            "image/bmp",
            "font/ttf",
            "font/otf",
            "application/vnd.ms-fontobject",
        ];
        for ct in yes {
            assert!(
                should(Method::GET, 200, &[("content-type", ct)], None),
                "{ct} should be compressed"
            );
        }
        let no = [
            "image/png",
            "image/jpeg",
            "image/webp",
            "image/avif",
            "image/gif",
            "video/mp4",
            "audio/mpeg",
            "font/woff",
            "font/woff2",
            "application/font-woff",
            "application/zip",
            "application/gzip",
            "application/x-gzip",
            "application/zstd",
            "application/x-brotli",
            "application/octet-stream",
            "application/pdf",
            "application/grpc",
            "multipart/form-data; boundary=x",
            "nonsense",
            "",
        ];
        for ct in no {
            assert!(
                !should(Method::GET, 200, &[("content-type", ct)], None),
                "{ct} should not be compressed"
            );
        }
        // No Content-Type at all.
        assert!(!should(Method::GET, 200, &[], None));
    }

    #[test]
    fn should_compress_by_status_method_fields_and_size() {
        let json = ("content-type", "application/json");
        assert!(should(Method::GET, 200, &[json], Some(100_000)));
        assert!(should(Method::POST, 201, &[json], None));
        assert!(should(Method::GET, 404, &[json], None));
        assert!(should(Method::GET, 500, &[json], None));
        for status in [101, 103, 204, 206, 304] {
            assert!(!should(Method::GET, status, &[json], None), "{status}");
        }
        assert!(!should(Method::HEAD, 200, &[json], None));
        for field in [
            ("content-encoding", "gzip"),
            ("content-encoding", "identity"),
            ("content-range", "bytes 0-99/5000"),
            ("cache-control", "public, no-transform"),
            ("cache-control", "NO-TRANSFORM"),
        ] {
            assert!(!should(Method::GET, 200, &[json, field], None), "{field:?}");
        }
        assert!(should(
            Method::GET,
            200,
            &[json, ("cache-control", "no-cache")],
            None
        ));
        // Known small bodies are not worth it; unknown or large ones are.
        assert!(!should(Method::GET, 200, &[json], Some(0)));
        assert!(!should(Method::GET, 200, &[json], Some(MIN_SIZE - 1)));
        assert!(should(Method::GET, 200, &[json], Some(MIN_SIZE)));
        assert!(!should(
            Method::GET,
            200,
            &[json, ("content-length", "12")],
            None
        ));
        assert!(should(
            Method::GET,
            200,
            &[json, ("content-length", "5000")],
            None
        ));
    }

    // ---------------------------------------------------------------------------------------
    // The response head
    // ---------------------------------------------------------------------------------------

    fn response(pairs: &[(&str, &str)], body: Body) -> Response<Body> {
        let mut r = Response::new(body);
        *r.headers_mut() = headers(pairs);
        r
    }

    fn all(h: &HeaderMap, name: &str) -> Vec<String> {
        h.get_all(name)
            .iter()
            .map(|v| v.to_str().unwrap().to_owned())
            .collect()
    }

    #[test]
    fn compress_rewrites_the_head() {
        let r = compress(
            response(
                &[
                    ("content-type", "text/html"),
                    ("content-length", "5000"),
                    ("etag", "\"abc\""),
                    ("accept-ranges", "bytes"),
                    ("content-digest", "sha-256=:xyz=:"),
                    ("vary", "Origin"),
                ],
                Body::full(vec![b'a'; 5000]),
            ),
            Coding::Br,
        );
        let h = r.headers();
        assert_eq!(all(h, "content-encoding"), ["br"]);
        assert_eq!(all(h, "content-length"), Vec::<String>::new());
        assert_eq!(all(h, "accept-ranges"), Vec::<String>::new());
        assert_eq!(all(h, "content-digest"), Vec::<String>::new());
        assert_eq!(all(h, "etag"), ["W/\"abc\""]);
        assert_eq!(all(h, "vary"), ["Origin, Accept-Encoding"]);
        assert_eq!(all(h, "content-type"), ["text/html"]);
    }

    #[test]
    fn vary_and_etag_cases() {
        let mut h = headers(&[]);
        add_vary(&mut h);
        assert_eq!(all(&h, "vary"), ["Accept-Encoding"]);
        let mut h = headers(&[("vary", "*")]);
        add_vary(&mut h);
        assert_eq!(all(&h, "vary"), ["*"]);
        let mut h = headers(&[("vary", "origin, accept-encoding")]);
        add_vary(&mut h);
        assert_eq!(all(&h, "vary"), ["origin, accept-encoding"]);
        let mut h = headers(&[("vary", "Origin"), ("vary", "Cookie")]);
        add_vary(&mut h);
        assert_eq!(all(&h, "vary"), ["Origin, Cookie, Accept-Encoding"]);

        for (etag, want) in [
            ("\"x\"", Some("W/\"x\"")),
            ("W/\"x\"", Some("W/\"x\"")),
            ("\"\"", Some("W/\"\"")),
            ("x", None),
            ("\"x", None),
        ] {
            let mut h = headers(&[("etag", etag)]);
            weaken_etag(&mut h);
            assert_eq!(
                h.get("etag").map(|v| v.to_str().unwrap()),
                want,
                "ETag {etag}"
            );
        }
    }

    #[test]
    fn apply_compresses_or_only_varies() {
        let big = || Body::stream(Script::new(vec![Step::Data(vec![b'x'; 4096])]));
        let json = [("content-type", "application/json")];
        let r = apply(&Method::GET, response(&json, big()), Some(Coding::Gzip));
        assert_eq!(all(r.headers(), "content-encoding"), ["gzip"]);
        // The client takes no coding: plain, but the response varies all the same.
        let r = apply(&Method::GET, response(&json, big()), None);
        assert_eq!(all(r.headers(), "content-encoding"), Vec::<String>::new());
        assert_eq!(all(r.headers(), "vary"), ["Accept-Encoding"]);
        // Not compressible: untouched.
        let png = [("content-type", "image/png")];
        let r = apply(&Method::GET, response(&png, big()), Some(Coding::Gzip));
        assert!(r.headers().get("content-encoding").is_none());
        assert!(r.headers().get("vary").is_none());
        // Small: untouched.
        let r = apply(
            &Method::GET,
            response(&json, Body::full("{}")),
            Some(Coding::Zstd),
        );
        assert!(r.headers().get("content-encoding").is_none());
        // HEAD: untouched.
        let r = apply(&Method::HEAD, response(&json, big()), Some(Coding::Br));
        assert!(r.headers().get("content-encoding").is_none());
    }

    // ---------------------------------------------------------------------------------------
    // The encoder body
    // ---------------------------------------------------------------------------------------

    enum Step {
        Data(Vec<u8>),
        Trailers(HeaderMap),
        /// `Poll::Pending` once (without a wake-up: the test polls again itself).
        Pending,
        Fail,
    }

    struct Script {
        steps: VecDeque<Step>,
        /// How often the body was polled.
        polls: usize,
    }

    impl Script {
        fn new(steps: Vec<Step>) -> Self {
            Script {
                steps: steps.into(),
                polls: 0,
            }
        }
    }

    impl http_body::Body for Script {
        type Data = Bytes;
        type Error = io::Error;

        fn poll_frame(
            self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
            let this = self.get_mut();
            this.polls += 1;
            match this.steps.pop_front() {
                None => Poll::Ready(None),
                Some(Step::Data(d)) => Poll::Ready(Some(Ok(Frame::data(Bytes::from(d))))),
                Some(Step::Trailers(t)) => Poll::Ready(Some(Ok(Frame::trailers(t)))),
                Some(Step::Pending) => Poll::Pending,
                Some(Step::Fail) => Poll::Ready(Some(Err(io::Error::other("backend went away")))),
            }
        }
    }

    /// What one poll gave.
    #[derive(Debug)]
    enum Polled {
        Data(Bytes),
        Trailers(HeaderMap),
        Pending,
        Error(String),
        End,
    }

    fn poll_once<B>(body: &mut B) -> Polled
    where
        B: http_body::Body<Data = Bytes, Error = io::Error> + Unpin,
    {
        let mut cx = Context::from_waker(Waker::noop());
        match Pin::new(body).poll_frame(&mut cx) {
            Poll::Pending => Polled::Pending,
            Poll::Ready(None) => Polled::End,
            Poll::Ready(Some(Err(e))) => Polled::Error(e.to_string()),
            Poll::Ready(Some(Ok(f))) => match f.into_data() {
                Ok(d) => Polled::Data(d),
                Err(f) => Polled::Trailers(f.into_trailers().unwrap()),
            },
        }
    }

    /// Polls to the end (through any number of pending steps); the data frames and trailers.
    fn drain<B>(body: &mut B) -> (Vec<Bytes>, Option<HeaderMap>)
    where
        B: http_body::Body<Data = Bytes, Error = io::Error> + Unpin,
    {
        let mut data = Vec::new();
        let mut trailers = None;
        for _ in 0..100_000 {
            match poll_once(body) {
                Polled::Data(d) => {
                    assert!(trailers.is_none(), "data after trailers");
                    data.push(d)
                }
                Polled::Trailers(t) => trailers = Some(t),
                Polled::Pending => {}
                Polled::Error(e) => panic!("body error: {e}"),
                Polled::End => return (data, trailers),
            }
        }
        panic!("body never ended");
    }

    /// A decoder for `coding` fed piece by piece; `decoded()` is everything decodable so far.
    enum Decoder {
        Gzip(Box<flate2::write::GzDecoder<Vec<u8>>>),
        Br(Box<brotli::DecompressorWriter<Vec<u8>>>),
        /// Also every byte fed, to check the whole frame at the end.
        Zstd(zstd::stream::write::Decoder<'static, Vec<u8>>, Vec<u8>),
    }

    impl Decoder {
        fn new(coding: Coding) -> Self {
            match coding {
                Coding::Gzip => Decoder::Gzip(Box::new(flate2::write::GzDecoder::new(Vec::new()))),
                Coding::Br => {
                    Decoder::Br(Box::new(brotli::DecompressorWriter::new(Vec::new(), 4096)))
                }
                Coding::Zstd => Decoder::Zstd(
                    zstd::stream::write::Decoder::new(Vec::new()).unwrap(),
                    Vec::new(),
                ),
            }
        }

        fn feed(&mut self, data: &[u8]) -> &[u8] {
            match self {
                Decoder::Gzip(d) => {
                    d.write_all(data).unwrap();
                    d.flush().unwrap();
                    d.get_ref()
                }
                Decoder::Br(d) => {
                    d.write_all(data).unwrap();
                    d.flush().unwrap();
                    d.get_ref()
                }
                Decoder::Zstd(d, fed) => {
                    fed.extend_from_slice(data);
                    d.write_all(data).unwrap();
                    d.flush().unwrap();
                    d.get_ref()
                }
            }
        }

        /// The whole decoded content; fails unless the stream ended properly.
        fn finish(self) -> Vec<u8> {
            match self {
                Decoder::Gzip(d) => d.finish().unwrap(),
                Decoder::Br(d) => d.into_inner().expect("brotli stream complete"),
                Decoder::Zstd(_, fed) => {
                    zstd::stream::decode_all(&fed[..]).expect("zstd frame complete")
                }
            }
        }
    }

    fn decode(coding: Coding, chunks: &[Bytes]) -> Vec<u8> {
        let mut d = Decoder::new(coding);
        for c in chunks {
            d.feed(c);
        }
        d.finish()
    }

    /// Text that compresses, in `n` bytes.
    fn json(n: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(n + 64);
        let mut i = 0u64;
        while out.len() < n {
            out.extend_from_slice(
                format!("{{\"id\":{i},\"name\":\"item {i}\",\"tags\":[\"a\",\"b\"]}},").as_bytes(),
            );
            i = i
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407)
                % 100_000;
        }
        out.truncate(n);
        out
    }

    const CODINGS: [Coding; 3] = [Coding::Gzip, Coding::Br, Coding::Zstd];

    #[test]
    fn round_trip_each_coding() {
        let content = json(300_000);
        for coding in CODINGS {
            // In uneven chunks, some empty, with pending steps between some.
            let mut steps = Vec::new();
            let mut at = 0;
            for (i, len) in [1usize, 0, 700, 16_384, 5, 65_536, 100_000]
                .into_iter()
                .cycle()
                .enumerate()
            {
                if at >= content.len() {
                    break;
                }
                let end = (at + len).min(content.len());
                steps.push(Step::Data(content[at..end].to_vec()));
                at = end;
                if i % 3 == 0 {
                    steps.push(Step::Pending);
                }
            }
            let mut body = CompressBody::new(Script::new(steps), coding, None);
            let (chunks, trailers) = drain(&mut body);
            assert!(trailers.is_none());
            let compressed: usize = chunks.iter().map(|c| c.len()).sum();
            assert!(
                compressed < content.len() / 3,
                "{coding:?}: {compressed} bytes from {}",
                content.len()
            );
            assert_eq!(decode(coding, &chunks), content, "{coding:?}");
            assert!(body.is_end_stream());
        }
    }

    #[test]
    fn known_size_and_empty_bodies() {
        for coding in CODINGS {
            let content = json(50_000);
            let mut body = CompressBody::new(
                Script::new(vec![Step::Data(content.clone())]),
                coding,
                Some(content.len() as u64),
            );
            let (chunks, _) = drain(&mut body);
            assert_eq!(decode(coding, &chunks), content, "{coding:?} sized");

            // An empty body still yields a valid (empty) stream.
            let mut body = CompressBody::new(Script::new(vec![]), coding, None);
            let (chunks, _) = drain(&mut body);
            assert!(!chunks.is_empty(), "{coding:?}: the stream's framing");
            assert_eq!(decode(coding, &chunks), b"", "{coding:?} empty");
        }
    }

    #[test]
    fn trailers_pass_through() {
        for coding in CODINGS {
            let mut t = HeaderMap::new();
            t.insert("grpc-status", HeaderValue::from_static("0"));
            t.insert("x-checksum", HeaderValue::from_static("abc"));
            let content = json(20_000);
            let mut body = CompressBody::new(
                Script::new(vec![
                    Step::Data(content[..10_000].to_vec()),
                    Step::Pending,
                    Step::Data(content[10_000..].to_vec()),
                    Step::Trailers(t.clone()),
                ]),
                coding,
                None,
            );
            let (chunks, trailers) = drain(&mut body);
            assert_eq!(trailers.as_ref(), Some(&t), "{coding:?}");
            assert_eq!(decode(coding, &chunks), content, "{coding:?}");
        }
    }

    #[test]
    fn a_pending_backend_gets_the_first_chunk_out() {
        for coding in CODINGS {
            let first = b"data: {\"event\": 1, \"text\": \"first event\"}\n\n".to_vec();
            let second = b"data: {\"event\": 2, \"text\": \"second event\"}\n\n".to_vec();
            let mut body = CompressBody::new(
                Script::new(vec![
                    Step::Data(first.clone()),
                    Step::Pending,
                    Step::Data(second.clone()),
                ]),
                coding,
                None,
            );
            let mut decoder = Decoder::new(coding);
            // One poll: the backend's first chunk, then it waits; the first chunk is out,
            // decodable on its own.
            let Polled::Data(out) = poll_once(&mut body) else {
                panic!("{coding:?}: nothing sent while the backend waits");
            };
            assert_eq!(decoder.feed(&out), first, "{coding:?}");
            // Then the rest, to the end.
            let (rest, _) = drain(&mut body);
            for c in &rest {
                decoder.feed(c);
            }
            let mut all = first.clone();
            all.extend_from_slice(&second);
            assert_eq!(decoder.finish(), all, "{coding:?}");
        }
    }

    #[test]
    fn nothing_new_sends_nothing() {
        // A backend that is pending from the start: no frame, no flush of an empty encoder.
        let mut body = CompressBody::new(Script::new(vec![Step::Pending]), Coding::Gzip, None);
        assert!(matches!(poll_once(&mut body), Polled::Pending));
    }

    #[test]
    fn bulk_output_is_bounded_and_polls_yield() {
        // Content that does not compress (pseudo-random bytes) in 64 KiB chunks, all ready:
        // output comes out in bounded pieces, and a poll never takes more than its budget.
        let mut x = 0x9e3779b97f4a7c15u64;
        let content: Vec<u8> = (0..2 * 1024 * 1024)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        for coding in CODINGS {
            let steps = content
                .chunks(65_536)
                .map(|c| Step::Data(c.to_vec()))
                .collect();
            let mut body = CompressBody::new(Script::new(steps), coding, None);
            let mut chunks = Vec::new();
            loop {
                let before = body.inner.polls;
                let polled = poll_once(&mut body);
                assert!(
                    body.inner.polls - before <= POLL_BUDGET / 65_536 + 2,
                    "{coding:?}: one poll read {} chunks",
                    body.inner.polls - before
                );
                match polled {
                    Polled::Data(d) => {
                        assert!(
                            d.len() <= OUT_CHUNK.max(FLUSH_EVERY) + 65_536 + 1024,
                            "{coding:?}: {} bytes at once",
                            d.len()
                        );
                        chunks.push(d);
                    }
                    Polled::Pending => {}
                    Polled::End => break,
                    other => panic!("{other:?}"),
                }
            }
            assert_eq!(decode(coding, &chunks), content, "{coding:?}");
        }
    }

    #[test]
    fn a_backend_failure_ends_the_body_with_an_error() {
        let mut body = CompressBody::new(
            Script::new(vec![Step::Data(json(5000)), Step::Fail]),
            Coding::Zstd,
            None,
        );
        let mut saw_error = false;
        for _ in 0..10 {
            match poll_once(&mut body) {
                Polled::Error(e) => {
                    assert!(e.contains("backend went away"), "{e}");
                    saw_error = true;
                }
                Polled::End => break,
                _ => {}
            }
        }
        assert!(saw_error);
        assert!(matches!(poll_once(&mut body), Polled::End));
    }
}
