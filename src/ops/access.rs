//! The access log: one line per request, as JSON or in the combined format of Apache and
//! nginx, written when the response's body is done (so the line has the bytes sent and the
//! whole request time) by whichever path answered — at once (static files, redirects, error
//! pages) or later (the reverse proxy), over HTTP/1.1 or HTTP/2.
//!
//! Costs nothing when off: no record, no request id, no TLS facts. When on, a request gets a
//! [`Record`] (one allocation) carried by its response body, and the connection's TLS facts
//! ([`TlsFacts`]) are read once at the end of its handshake and shared by its requests.

use std::cell::RefCell;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use http::{HeaderValue, Method, Uri, Version};
use serde::Serialize;

use super::logfile::LogFile;

/// How access-log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccessFormat {
    /// One JSON object per line, with every field (see [`Record`]).
    Json,
    /// The combined log format (Apache, nginx): client, time, request line, status, bytes,
    /// referer, user agent.
    Combined,
}

/// An access log in use: its format and its file.
#[derive(Debug)]
pub struct AccessLog {
    pub format: AccessFormat,
    pub file: Arc<LogFile>,
}

/// What the TLS handshake of a connection settled, read once when it completed.
#[derive(Debug, Clone, Default)]
pub struct TlsFacts {
    /// `TLSv1.3`, `TLSv1.2`.
    pub version: &'static str,
    /// The IANA name of the cipher suite (`TLS13_AES_128_GCM_SHA256`).
    pub cipher: &'static str,
    /// The key-exchange group (`X25519MLKEM768`, `X25519`…); empty when not known (a
    /// resumed TLS 1.2 session).
    pub group: &'static str,
    /// The ALPN protocol (`h2`, `http/1.1`), empty without ALPN.
    pub alpn: &'static str,
    /// The SNI name the client sent.
    pub sni: Option<Box<str>>,
    /// The session was resumed (no full handshake).
    pub resumed: bool,
}

impl TlsFacts {
    /// The facts of a connection whose handshake is complete.
    pub fn of(conn: &rustls::CommonState, sni: Option<&str>) -> Arc<TlsFacts> {
        let version = match conn.protocol_version() {
            Some(rustls::ProtocolVersion::TLSv1_3) => "TLSv1.3",
            Some(rustls::ProtocolVersion::TLSv1_2) => "TLSv1.2",
            _ => "",
        };
        let cipher = conn
            .negotiated_cipher_suite()
            .and_then(|s| s.suite().as_str())
            .unwrap_or("");
        let group = conn
            .negotiated_key_exchange_group()
            .and_then(|g| g.name().as_str())
            .unwrap_or("");
        let alpn = match conn.alpn_protocol() {
            Some(b"h2") => "h2",
            Some(b"http/1.1") => "http/1.1",
            Some(b"http/1.0") => "http/1.0",
            Some(_) => "other",
            None => "",
        };
        Arc::new(TlsFacts {
            version,
            cipher,
            group,
            alpn,
            sni: sni.map(Into::into),
            resumed: conn.handshake_kind() == Some(rustls::HandshakeKind::Resumed),
        })
    }
}

/// What the reverse proxy learnt of a request's trip upstream.
#[derive(Debug, Default, Clone)]
pub struct Upstream {
    /// The backend that answered (`host:port`, `unix:/path`).
    pub backend: Option<Arc<str>>,
    /// From sending the request to the backend's response head (connecting included).
    pub time: Option<Duration>,
}

/// What the access log takes from a request's head.
#[derive(Clone, Copy)]
pub struct Head<'a> {
    pub method: &'a Method,
    pub uri: &'a Uri,
    pub version: Version,
    pub headers: &'a http::HeaderMap,
}

impl<'a> From<&'a http::request::Parts> for Head<'a> {
    fn from(p: &'a http::request::Parts) -> Self {
        Head {
            method: &p.method,
            uri: &p.uri,
            version: p.version,
            headers: &p.headers,
        }
    }
}

impl<'a, B> From<&'a http::Request<B>> for Head<'a> {
    fn from(r: &'a http::Request<B>) -> Self {
        Head {
            method: r.method(),
            uri: r.uri(),
            version: r.version(),
            headers: r.headers(),
        }
    }
}

/// A request on its way to the access log: filled while it is served, written when its
/// response body is done ([`Record::finish`]).
pub struct Record {
    pub log: Arc<AccessLog>,
    pub start: Instant,
    pub wall: SystemTime,
    pub client: SocketAddr,
    /// `https` or `http` (port 80).
    pub scheme: &'static str,
    /// The site's name (`-` when no site answered).
    pub site: Arc<str>,
    pub host: Option<String>,
    pub method: Method,
    pub uri: Uri,
    pub version: Version,
    pub status: u16,
    /// Body bytes sent (headers not counted, as nginx's `$body_bytes_sent`).
    pub bytes: u64,
    pub request_id: Option<HeaderValue>,
    pub user_agent: Option<HeaderValue>,
    pub referer: Option<HeaderValue>,
    pub tls: Option<Arc<TlsFacts>>,
    /// The request came in TLS 1.3 early data (0-RTT).
    pub early_data: bool,
    pub upstream: Upstream,
}

impl Record {
    /// Starts a record from a request's head.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        log: Arc<AccessLog>,
        start: Instant,
        parts: Head<'_>,
        client: SocketAddr,
        scheme: &'static str,
        site: Arc<str>,
        status: u16,
        request_id: Option<HeaderValue>,
    ) -> Box<Record> {
        let host = parts
            .uri
            .authority()
            .map(|a| a.as_str())
            .or_else(|| {
                parts
                    .headers
                    .get(http::header::HOST)
                    .and_then(|h| h.to_str().ok())
            })
            .map(str::to_owned);
        Box::new(Record {
            log,
            start,
            wall: SystemTime::now(),
            client,
            scheme,
            site,
            host,
            method: parts.method.clone(),
            uri: parts.uri.clone(),
            version: parts.version,
            status,
            bytes: 0,
            request_id,
            user_agent: parts.headers.get(http::header::USER_AGENT).cloned(),
            referer: parts.headers.get(http::header::REFERER).cloned(),
            tls: None,
            early_data: false,
            upstream: Upstream::default(),
        })
    }

    /// Writes the line (the response body is done or dropped).
    pub fn finish(self) {
        let elapsed = self.start.elapsed();
        let line = match self.log.format {
            AccessFormat::Json => self.json(elapsed),
            AccessFormat::Combined => self.combined(),
        };
        self.log.file.write(line);
    }

    fn path(&self) -> &str {
        self.uri.path_and_query().map_or("/", |p| p.as_str())
    }

    fn json(&self, elapsed: Duration) -> Vec<u8> {
        #[derive(Serialize)]
        struct Line<'a> {
            time: String,
            client: String,
            scheme: &'a str,
            site: &'a str,
            host: Option<&'a str>,
            method: &'a str,
            path: &'a str,
            protocol: &'a str,
            status: u16,
            bytes: u64,
            /// Seconds, millisecond precision.
            request_time: f64,
            #[serde(skip_serializing_if = "Option::is_none")]
            upstream_time: Option<f64>,
            #[serde(skip_serializing_if = "Option::is_none")]
            backend: Option<&'a str>,
            request_id: Option<&'a str>,
            user_agent: Option<&'a str>,
            referer: Option<&'a str>,
            #[serde(skip_serializing_if = "Option::is_none")]
            tls: Option<Tls<'a>>,
            early_data: bool,
        }
        #[derive(Serialize)]
        struct Tls<'a> {
            version: &'a str,
            cipher: &'a str,
            group: Option<&'a str>,
            alpn: Option<&'a str>,
            sni: Option<&'a str>,
            resumed: bool,
        }
        fn nonempty(s: &str) -> Option<&str> {
            (!s.is_empty()).then_some(s)
        }
        fn text(v: &Option<HeaderValue>) -> Option<&str> {
            v.as_ref().and_then(|v| v.to_str().ok())
        }
        let line = Line {
            time: rfc3339(self.wall),
            client: self.client.ip().to_canonical().to_string(),
            scheme: self.scheme,
            site: &self.site,
            host: self.host.as_deref(),
            method: self.method.as_str(),
            path: self.path(),
            protocol: protocol(self.version),
            status: self.status,
            bytes: self.bytes,
            request_time: seconds(elapsed),
            upstream_time: self.upstream.time.map(seconds),
            backend: self.upstream.backend.as_deref(),
            request_id: text(&self.request_id),
            user_agent: text(&self.user_agent),
            referer: text(&self.referer),
            tls: self.tls.as_deref().map(|t| Tls {
                version: t.version,
                cipher: t.cipher,
                group: nonempty(t.group),
                alpn: nonempty(t.alpn),
                sni: t.sni.as_deref(),
                resumed: t.resumed,
            }),
            early_data: self.early_data,
        };
        let mut out = serde_json::to_vec(&line).unwrap_or_default();
        out.push(b'\n');
        out
    }

    /// `client - - [07/Dec/2026:03:41:48 +0000] "GET /path HTTP/1.1" 200 1234 "referer" "agent"`
    fn combined(&self) -> Vec<u8> {
        let mut s = String::with_capacity(256);
        let t = time::OffsetDateTime::from(self.wall);
        const MONTHS: [&str; 12] = [
            "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
        ];
        let _ = write!(
            s,
            "{} - - [{:02}/{}/{:04}:{:02}:{:02}:{:02} +0000] \"",
            self.client.ip().to_canonical(),
            t.day(),
            MONTHS[usize::from(u8::from(t.month())) - 1],
            t.year(),
            t.hour(),
            t.minute(),
            t.second()
        );
        escape_into(&mut s, self.method.as_str().as_bytes());
        s.push(' ');
        escape_into(&mut s, self.path().as_bytes());
        s.push(' ');
        s.push_str(protocol(self.version));
        let _ = write!(s, "\" {} {} \"", self.status, self.bytes);
        match &self.referer {
            Some(v) => escape_into(&mut s, v.as_bytes()),
            None => s.push('-'),
        }
        s.push_str("\" \"");
        match &self.user_agent {
            Some(v) => escape_into(&mut s, v.as_bytes()),
            None => s.push('-'),
        }
        s.push_str("\"\n");
        s.into_bytes()
    }
}

/// A quoted field of the combined format, escaped as nginx does: `"`, `\` and bytes outside
/// printable ASCII as `\xHH` (a client cannot end the field or forge a line).
fn escape_into(s: &mut String, bytes: &[u8]) {
    for &b in bytes {
        if b == b'"' || b == b'\\' || !(0x20..0x7f).contains(&b) {
            let _ = write!(s, "\\x{b:02X}");
        } else {
            s.push(char::from(b));
        }
    }
}

/// `HTTP/1.1`, `HTTP/2.0` (as nginx's `$server_protocol`).
fn protocol(v: Version) -> &'static str {
    match v {
        Version::HTTP_09 => "HTTP/0.9",
        Version::HTTP_10 => "HTTP/1.0",
        Version::HTTP_11 => "HTTP/1.1",
        Version::HTTP_2 => "HTTP/2.0",
        Version::HTTP_3 => "HTTP/3.0",
        _ => "HTTP",
    }
}

fn seconds(d: Duration) -> f64 {
    (d.as_micros() as f64 / 1000.0).round() / 1000.0
}

/// `2026-12-07T03:41:48.123Z`.
pub fn rfc3339(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let mut s = rfc3339_secs(d.as_secs() as i64);
    // Insert the milliseconds before the `Z`.
    s.pop();
    let _ = write!(s, ".{:03}Z", d.subsec_millis());
    s
}

/// `2026-12-07T03:41:48Z` for a Unix time.
pub fn rfc3339_secs(unix: i64) -> String {
    match time::OffsetDateTime::from_unix_timestamp(unix) {
        Ok(t) => format!(
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
            t.year(),
            u8::from(t.month()),
            t.day(),
            t.hour(),
            t.minute(),
            t.second()
        ),
        Err(_) => unix.to_string(),
    }
}

/// A request id: unique in this process and unlikely to repeat across restarts (a random
/// prefix per worker thread, then the thread's own counter: no counter shared between
/// threads). 16 hex digits.
pub fn new_request_id() -> HeaderValue {
    thread_local! {
        static NEXT: std::cell::Cell<(u32, u32)> = std::cell::Cell::new({
            let mut b = [0u8; 4];
            let _ = aws_lc_rs::rand::fill(&mut b);
            (u32::from_be_bytes(b), 0)
        });
    }
    let (prefix, n) = NEXT.with(|c| {
        let (p, n) = c.get();
        c.set((p, n.wrapping_add(1)));
        (p, n)
    });
    let mut id = [0u8; 16];
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let v = (u64::from(prefix) << 32) | u64::from(n);
    for (i, b) in id.iter_mut().enumerate() {
        *b = HEX[((v >> (60 - 4 * i)) & 0xf) as usize];
    }
    HeaderValue::from_bytes(&id).expect("hex is a valid header value")
}

thread_local! {
    /// The id of the request being routed on this thread (access log on): error pages made
    /// while routing show it.
    static CURRENT_ID: RefCell<Option<HeaderValue>> = const { RefCell::new(None) };
}

/// Runs `f` (routing, synchronous) with `id` as the current request's id.
pub fn with_request_id<T>(id: &HeaderValue, f: impl FnOnce() -> T) -> T {
    struct Reset;
    impl Drop for Reset {
        fn drop(&mut self) {
            CURRENT_ID.with(|c| c.borrow_mut().take());
        }
    }
    CURRENT_ID.with(|c| *c.borrow_mut() = Some(id.clone()));
    let _reset = Reset;
    f()
}

/// The id of the request being routed on this thread, if the access log gave it one.
pub fn current_request_id() -> Option<HeaderValue> {
    CURRENT_ID.with(|c| c.borrow().clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_differ() {
        let a = new_request_id();
        let b = new_request_id();
        assert_ne!(a, b);
        assert_eq!(a.len(), 16);
    }

    #[test]
    fn combined_escapes() {
        let mut s = String::new();
        escape_into(&mut s, b"a\"b\\c\nd");
        assert_eq!(s, "a\\x22b\\x5Cc\\x0Ad");
    }

    #[test]
    fn times() {
        assert_eq!(rfc3339_secs(0), "1970-01-01T00:00:00Z");
        let t = UNIX_EPOCH + Duration::from_millis(1_500);
        assert_eq!(rfc3339(t), "1970-01-01T00:00:01.500Z");
    }
}
