//! The `proxy = { ... }` handler of a `[[site.route]]`: its TOML form ([`RawProxy`]), its checks
//! ([`spec`]) and its typed model ([`ProxySpec`]).
//!
//! Everything about the upstreams (addresses, balancing, health, timeouts, pools, TLS to the
//! backends) is carried out by [`crate::outbound`]; the header policy (forwarded headers, Host,
//! header edits, Via, body limit, WebSocket, compression) by the HTTP request path.

use std::fmt;
use std::net::{IpAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::time::Duration;

use http::{HeaderName, HeaderValue};
use ipnet::IpNet;
use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::Deserialize;
use toml::Spanned;

use super::validate::Ctx;
use super::{Location, Problem};

// =============================================================================================
// Raw: the TOML as written
// =============================================================================================

/// `proxy = { upstreams = [...], ... }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawProxy {
    /// `"http://host:port"`, `"https://..."`, `"h2c://..."`, `"unix:/abs/path"`, or tables
    /// `{ url, weight, proxy_protocol, backup }`.
    pub upstreams: Spanned<Vec<Spanned<RawUpstream>>>,
    pub policy: Option<Spanned<String>>,
    pub tls: Option<Spanned<RawUpstreamTls>>,
    pub health: Option<Spanned<RawHealth>>,
    pub passive: Option<Spanned<RawPassive>>,
    pub timeouts: Option<Spanned<RawTimeouts>>,
    pub retries: Option<Spanned<u32>>,
    pub retry_non_idempotent: Option<bool>,
    pub pool: Option<Spanned<RawPool>>,
    pub trusted_proxies: Option<Vec<Spanned<String>>>,
    pub host: Option<Spanned<String>>,
    pub request_headers: Option<Spanned<RawHeaderEdits>>,
    pub response_headers: Option<Spanned<RawHeaderEdits>>,
    pub via: Option<bool>,
    pub backend_headers_win: Option<bool>,
    pub max_body: Option<Spanned<RawSize>>,
    pub websocket: Option<bool>,
    pub compress: Option<bool>,
    pub strip_prefix: Option<bool>,
}

/// One entry of `upstreams`: a URL string or a table.
#[derive(Debug)]
pub enum RawUpstream {
    Url(String),
    Table(RawUpstreamTable),
}

/// `{ url = "...", weight = 3, proxy_protocol = "v1", backup = false }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawUpstreamTable {
    pub url: String,
    pub weight: Option<Spanned<u32>>,
    pub proxy_protocol: Option<Spanned<String>>,
    pub backup: Option<bool>,
}

/// `tls = { ca, server_name, insecure_skip_verify, client_cert, client_key }`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawUpstreamTls {
    pub ca: Option<Spanned<String>>,
    pub server_name: Option<Spanned<String>>,
    pub insecure_skip_verify: Option<bool>,
    pub client_cert: Option<Spanned<String>>,
    pub client_key: Option<Spanned<String>>,
}

/// `health = { path, status, interval, timeout, rise, fall, host }`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHealth {
    pub path: Option<Spanned<String>>,
    pub status: Option<Spanned<RawStatus>>,
    pub interval: Option<Spanned<String>>,
    pub timeout: Option<Spanned<String>>,
    pub rise: Option<Spanned<u32>>,
    pub fall: Option<Spanned<u32>>,
    pub host: Option<Spanned<String>>,
}

/// `status = 200` or `status = "2xx"`.
#[derive(Debug)]
pub enum RawStatus {
    Code(i64),
    Text(String),
}

/// `passive = { max_fails, fail_timeout, max_eject }`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPassive {
    pub max_fails: Option<Spanned<u32>>,
    pub fail_timeout: Option<Spanned<String>>,
    pub max_eject: Option<Spanned<String>>,
}

/// `timeouts = { connect, response_header, idle, total }`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTimeouts {
    pub connect: Option<Spanned<String>>,
    pub response_header: Option<Spanned<String>>,
    pub idle: Option<Spanned<String>>,
    pub total: Option<Spanned<String>>,
}

/// `pool = { max_idle_per_backend, idle_timeout, max_connections_per_backend }`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPool {
    pub max_idle_per_backend: Option<Spanned<usize>>,
    pub idle_timeout: Option<Spanned<String>>,
    pub max_connections_per_backend: Option<Spanned<usize>>,
}

/// `{ set = { Name = "value" }, add = { ... }, remove = ["Name"] }`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHeaderEdits {
    #[serde(default)]
    pub set: std::collections::BTreeMap<String, Spanned<String>>,
    #[serde(default)]
    pub add: std::collections::BTreeMap<String, Spanned<String>>,
    #[serde(default)]
    pub remove: Vec<Spanned<String>>,
}

/// A size: bytes as an integer, or a string with a unit (`"10MB"`, `"1GiB"`).
#[derive(Debug)]
pub enum RawSize {
    Bytes(i64),
    Text(String),
}

impl fmt::Display for RawStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RawStatus::Code(c) => write!(f, "{c}"),
            RawStatus::Text(t) => write!(f, "{t:?}"),
        }
    }
}

impl fmt::Display for RawSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RawSize::Bytes(n) => write!(f, "{n}"),
            RawSize::Text(t) => write!(f, "{t:?}"),
        }
    }
}

impl<'de> Deserialize<'de> for RawUpstream {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RawUpstream;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an upstream URL string or a table { url = \"...\", weight = 1 }")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<RawUpstream, E> {
                Ok(RawUpstream::Url(v.to_string()))
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<RawUpstream, A::Error> {
                RawUpstreamTable::deserialize(de::value::MapAccessDeserializer::new(map))
                    .map(RawUpstream::Table)
            }
        }
        d.deserialize_any(V)
    }
}

impl<'de> Deserialize<'de> for RawStatus {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = RawStatus;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a status code (200) or a class (\"2xx\")")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<RawStatus, E> {
                Ok(RawStatus::Code(v))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<RawStatus, E> {
                Ok(RawStatus::Code(i64::try_from(v).unwrap_or(i64::MAX)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<RawStatus, E> {
                Ok(RawStatus::Text(v.to_string()))
            }
        }
        d.deserialize_any(V)
    }
}

impl<'de> Deserialize<'de> for RawSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = RawSize;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a size in bytes (1048576) or with a unit (\"10MB\", \"1GiB\")")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<RawSize, E> {
                Ok(RawSize::Bytes(v))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<RawSize, E> {
                Ok(RawSize::Bytes(i64::try_from(v).unwrap_or(i64::MAX)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<RawSize, E> {
                Ok(RawSize::Text(v.to_string()))
            }
        }
        d.deserialize_any(V)
    }
}

// =============================================================================================
// Model: what the server runs on
// =============================================================================================

/// A validated `proxy` handler.
#[derive(Debug, Clone)]
pub struct ProxySpec {
    /// At least one; in config order (the `first` policy and `backup` depend on it).
    pub upstreams: Vec<UpstreamSpec>,
    pub policy: Policy,
    /// TLS to `https://` upstreams.
    pub tls: UpstreamTlsSpec,
    /// Active health checks; `None`: none (only passive ejection).
    pub health: Option<HealthSpec>,
    pub passive: PassiveSpec,
    pub timeouts: TimeoutSpec,
    /// How many other backends a failed request is tried on (default 2).
    pub retries: u32,
    /// Also retry methods that are not idempotent (POST, PATCH) after they reached a backend,
    /// when their body was empty (default false).
    pub retry_non_idempotent: bool,
    pub pool: PoolSpec,
    /// Clients whose `X-Forwarded-*` / `Forwarded` headers are kept (extended); from anyone
    /// else they are replaced.
    pub trusted_proxies: Vec<IpNet>,
    pub host: HostMode,
    pub request_headers: HeaderEdits,
    pub response_headers: HeaderEdits,
    /// Add a `Via` header both ways (default false).
    pub via: bool,
    /// A header the backend sets wins over the site's header of the same name (default false:
    /// the site's security headers win).
    pub backend_headers_win: bool,
    /// Request body limit in bytes; `None`: `[limits] max_body_bytes`.
    pub max_body: Option<u64>,
    /// Pass WebSocket upgrades (HTTP/1.1 Upgrade, HTTP/2 extended CONNECT) (default true).
    pub websocket: bool,
    /// Compress compressible responses (gzip/br/zstd by Accept-Encoding) (default false); what
    /// and how: [`crate::http::compress`].
    pub compress: bool,
    /// Remove the route's prefix from the path sent upstream (default false).
    pub strip_prefix: bool,
}

/// One upstream server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamSpec {
    /// As written (for messages).
    pub url: String,
    pub addr: UpstreamAddr,
    /// Share of the traffic relative to the others, 1 or more (default 1).
    pub weight: u32,
    /// Send a PROXY protocol header with the client's address on each new connection.
    pub proxy_protocol: Option<ProxyProtocol>,
    /// Only used when no primary (non-backup) upstream is available.
    pub backup: bool,
}

/// Where an upstream is and how to talk to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UpstreamAddr {
    /// A TCP upstream: `host` is an IP literal or a DNS name (resolved at start and re-resolved
    /// periodically).
    Tcp {
        scheme: UpstreamScheme,
        host: String,
        port: u16,
    },
    /// HTTP/1.1 over a Unix domain socket (absolute path).
    Unix(PathBuf),
}

impl UpstreamAddr {
    /// `host:port` (IPv6 in brackets) or the socket path: the backend's name in logs and errors.
    pub fn label(&self) -> String {
        match self {
            UpstreamAddr::Tcp { host, port, .. } => authority(host, *port),
            UpstreamAddr::Unix(p) => format!("unix:{}", p.display()),
        }
    }
}

/// `host:port`, with an IPv6 literal in brackets.
pub fn authority(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamScheme {
    /// Plain HTTP/1.1.
    Http,
    /// TLS; HTTP/2 when the backend selects it by ALPN, else HTTP/1.1.
    Https,
    /// Plain HTTP/2 with prior knowledge (gRPC backends).
    H2c,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyProtocol {
    V1,
    V2,
}

/// How a request picks its backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Policy {
    /// Weighted round robin (smooth: weights interleave).
    RoundRobin,
    /// The fewest requests in flight relative to the weight.
    LeastConn,
    /// Two backends at random (by weight), the one with fewer requests in flight.
    RandomTwo,
    /// The first available in config order.
    First,
    /// Consistent hash (weighted rendezvous) of the client's IP address.
    IpHash,
    /// Consistent hash of a request header's value; round robin without the header.
    Header(HeaderName),
    /// Sticky by cookie: the cookie names the backend; without it (or when its backend is
    /// unavailable) round robin picks one and the response sets the cookie.
    Cookie(String),
}

/// TLS settings for `https://` upstreams.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UpstreamTlsSpec {
    /// PEM file of CA certificates to trust instead of the built-in web roots.
    pub ca: Option<PathBuf>,
    /// The name sent as SNI and expected in the backend's certificate; default: the host of
    /// the upstream URL.
    pub server_name: Option<String>,
    /// Accept any certificate (for tests; logs a warning).
    pub insecure_skip_verify: bool,
    /// Client certificate chain and key (PEM) presented to backends that ask (mTLS).
    pub client_cert: Option<(PathBuf, PathBuf)>,
}

/// Expected status of an active health check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusMatch {
    Exact(u16),
    /// `2` for "2xx".
    Class(u8),
}

impl StatusMatch {
    pub fn matches(self, status: u16) -> bool {
        match self {
            StatusMatch::Exact(s) => s == status,
            StatusMatch::Class(c) => status / 100 == u16::from(c),
        }
    }
}

impl fmt::Display for StatusMatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StatusMatch::Exact(s) => write!(f, "{s}"),
            StatusMatch::Class(c) => write!(f, "{c}xx"),
        }
    }
}

/// Active health checks: `GET path` on each backend every `interval`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthSpec {
    pub path: String,
    pub status: StatusMatch,
    pub interval: Duration,
    pub timeout: Duration,
    /// Consecutive successes that bring a down backend back.
    pub rise: u32,
    /// Consecutive failures that take a backend out.
    pub fall: u32,
    /// `Host` of the check; default: the upstream's host (and port).
    pub host: Option<String>,
}

/// Passive ejection after consecutive failed requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PassiveSpec {
    /// Consecutive failures that eject a backend; 0 turns passive ejection off.
    pub max_fails: u32,
    /// The first ejection's length; each further one (without a success between) doubles it.
    pub fail_timeout: Duration,
    /// The longest ejection.
    pub max_eject: Duration,
}

/// Timeouts toward backends; `Duration::ZERO` turns `idle` and `total` off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimeoutSpec {
    /// TCP connect, PROXY header, TLS handshake and HTTP/2 handshake together.
    pub connect: Duration,
    /// From the request's start until the response headers arrive.
    pub response_header: Duration,
    /// The longest wait for the next piece of the response body.
    pub idle: Duration,
    /// The whole exchange, body included.
    pub total: Duration,
}

/// Keep-alive connections per backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolSpec {
    pub max_idle_per_backend: usize,
    pub idle_timeout: Duration,
    /// 0: unlimited.
    pub max_connections_per_backend: usize,
}

/// What `Host` the backend sees.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostMode {
    /// The client's (default).
    Pass,
    /// The upstream's `host:port` (or name without the default port).
    Upstream,
    /// This value.
    Literal(HeaderValue),
}

/// Header edits, applied in the order remove, set, add.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HeaderEdits {
    pub set: Vec<(HeaderName, HeaderValue)>,
    pub add: Vec<(HeaderName, HeaderValue)>,
    pub remove: Vec<HeaderName>,
}

/// Default timeouts (`timeouts = { ... }`).
pub const DEFAULT_TIMEOUTS: TimeoutSpec = TimeoutSpec {
    connect: Duration::from_secs(5),
    response_header: Duration::from_secs(60),
    idle: Duration::from_secs(60),
    total: Duration::ZERO,
};

/// Default passive ejection (`passive = { ... }`).
pub const DEFAULT_PASSIVE: PassiveSpec = PassiveSpec {
    max_fails: 3,
    fail_timeout: Duration::from_secs(10),
    max_eject: Duration::from_secs(300),
};

/// Default pool (`pool = { ... }`). 1024 idle connections per backend (as the benchmark's
/// nginx `keepalive 1024`, Caddy's `max_idle_conns_per_host`): a pool smaller than the
/// requests in flight closes a connection after nearly every answer and opens a new one for
/// the next (with 640 requests in flight and 64, 13,000–53,000 connections were opened in 7 s,
/// against ~600 with enough room). An idle connection costs its socket and hyper's buffers,
/// ~10 KiB.
pub const DEFAULT_POOL: PoolSpec = PoolSpec {
    max_idle_per_backend: 1024,
    idle_timeout: Duration::from_secs(90),
    max_connections_per_backend: 0,
};

impl ProxySpec {
    /// A spec with every default and these upstreams (tests, programmatic use).
    pub fn with_upstreams(upstreams: Vec<UpstreamSpec>) -> ProxySpec {
        ProxySpec {
            upstreams,
            policy: Policy::RoundRobin,
            tls: UpstreamTlsSpec::default(),
            health: None,
            passive: DEFAULT_PASSIVE,
            timeouts: DEFAULT_TIMEOUTS,
            retries: 2,
            retry_non_idempotent: false,
            pool: DEFAULT_POOL,
            trusted_proxies: Vec::new(),
            host: HostMode::Pass,
            request_headers: HeaderEdits::default(),
            response_headers: HeaderEdits::default(),
            via: false,
            backend_headers_win: false,
            max_body: None,
            websocket: true,
            compress: false,
            strip_prefix: false,
        }
    }
}

// =============================================================================================
// Checks: raw -> model
// =============================================================================================

/// The surrounding validation's context, with the site and route a proxy table belongs to:
/// messages name both, locations, paths and durations are the validation's own.
pub(super) struct Cx<'a, 'b> {
    pub(super) ctx: &'a mut Ctx<'b>,
    /// The site's name, for messages.
    pub(super) site: &'a str,
    /// The route's prefix, for messages.
    pub(super) route: &'a str,
}

impl Cx<'_, '_> {
    fn loc<T>(&self, s: &Spanned<T>) -> Location {
        self.ctx.loc(s, "")
    }
    fn prefixed(&self, msg: impl fmt::Display) -> String {
        format!("site {:?}: route {:?}: proxy.{msg}", self.site, self.route)
    }
    fn err(&mut self, loc: Location, msg: impl fmt::Display, fix: impl Into<String>) {
        let msg = self.prefixed(msg);
        self.ctx.err(loc, msg, fix);
    }
    fn warn(&mut self, loc: Location, msg: impl fmt::Display, fix: impl Into<String>) {
        let msg = self.prefixed(msg);
        self.ctx.problems.push(Problem::warning(loc, msg).fix(fix));
    }
    fn path(&self, p: &str) -> PathBuf {
        self.ctx.path(p)
    }
    fn error_count(&self) -> usize {
        self.ctx.error_count()
    }
    /// The validation's duration check, on the value with surrounding blanks removed (proxy
    /// durations have always allowed them), its messages naming the site and route.
    fn duration(
        &mut self,
        v: &Option<Spanned<String>>,
        key: &str,
        default: Duration,
        min: Duration,
        max: Duration,
    ) -> Duration {
        let trimmed = v
            .as_ref()
            .map(|s| Spanned::new(s.span(), s.get_ref().trim().to_owned()));
        let key = self.prefixed(key);
        self.ctx.duration(&trimmed, &key, default, min, max)
    }
}

/// Checks a `proxy` table; `None` after reporting its errors to `cx.problems`.
pub(super) fn spec(cx: &mut Cx<'_, '_>, raw: &Spanned<RawProxy>) -> Option<ProxySpec> {
    let errors_before = cx.error_count();
    let r = raw.get_ref();
    let upstreams = upstreams(cx, &r.upstreams);
    let policy = r
        .policy
        .as_ref()
        .map_or(Policy::RoundRobin, |p| policy(cx, p));
    let tls = tls(cx, r.tls.as_ref(), &upstreams);
    let health = r.health.as_ref().map(|h| health(cx, h));
    let passive = r
        .passive
        .as_ref()
        .map_or(DEFAULT_PASSIVE, |p| passive(cx, p));
    let timeouts = r
        .timeouts
        .as_ref()
        .map_or(DEFAULT_TIMEOUTS, |t| timeouts(cx, t));
    let retries = r.retries.as_ref().map_or(2, |n| *n.get_ref());
    if retries > 16 {
        let loc = cx.loc(r.retries.as_ref()?);
        cx.err(
            loc,
            format!("retries = {retries} is out of range"),
            "use 0 to 16 (each retry goes to another backend)",
        );
    }
    let pool = r.pool.as_ref().map_or(DEFAULT_POOL, |p| pool(cx, p));
    let trusted_proxies = r
        .trusted_proxies
        .iter()
        .flatten()
        .filter_map(|s| cidr(cx, s))
        .collect();
    let host = r.host.as_ref().map_or(HostMode::Pass, |h| host_mode(cx, h));
    let request_headers = r
        .request_headers
        .as_ref()
        .map(|e| header_edits(cx, e, "request_headers"))
        .unwrap_or_default();
    let response_headers = r
        .response_headers
        .as_ref()
        .map(|e| header_edits(cx, e, "response_headers"))
        .unwrap_or_default();
    let max_body = r.max_body.as_ref().and_then(|m| {
        let parsed = match m.get_ref() {
            RawSize::Bytes(n) => u64::try_from(*n).ok(),
            RawSize::Text(t) => parse_size(t),
        };
        if parsed.is_none() {
            let loc = cx.loc(m);
            cx.err(
                loc,
                format!("max_body = {} is not a size", m.get_ref()),
                "write bytes (1048576) or a size with a unit: \"512KiB\", \"10MB\", \"1GiB\"",
            );
        }
        parsed
    });
    let errors = cx.error_count();
    if errors > errors_before {
        return None;
    }
    Some(ProxySpec {
        upstreams,
        policy,
        tls,
        health,
        passive,
        timeouts,
        retries,
        retry_non_idempotent: r.retry_non_idempotent.unwrap_or(false),
        pool,
        trusted_proxies,
        host,
        request_headers,
        response_headers,
        via: r.via.unwrap_or(false),
        backend_headers_win: r.backend_headers_win.unwrap_or(false),
        max_body,
        websocket: r.websocket.unwrap_or(true),
        compress: r.compress.unwrap_or(false),
        strip_prefix: r.strip_prefix.unwrap_or(false),
    })
}

fn upstreams(cx: &mut Cx<'_, '_>, list: &Spanned<Vec<Spanned<RawUpstream>>>) -> Vec<UpstreamSpec> {
    if list.get_ref().is_empty() {
        let loc = cx.loc(list);
        cx.err(
            loc,
            "upstreams is empty",
            "list at least one backend, e.g. upstreams = [\"http://127.0.0.1:8080\"]",
        );
    }
    let mut out: Vec<UpstreamSpec> = Vec::new();
    for entry in list.get_ref() {
        let loc = cx.loc(entry);
        let (url, weight, pp, backup) = match entry.get_ref() {
            RawUpstream::Url(u) => (u.as_str(), None, None, false),
            RawUpstream::Table(t) => (
                t.url.as_str(),
                t.weight.as_ref(),
                t.proxy_protocol.as_ref(),
                t.backup.unwrap_or(false),
            ),
        };
        let addr = match parse_upstream_url(url) {
            Ok(a) => a,
            Err(why) => {
                cx.err(loc, format!("upstreams: {url:?} {why}"), "write upstreams as \"http://host:port\", \"https://host:port\", \"h2c://host:port\" or \"unix:/absolute/path.sock\"");
                continue;
            }
        };
        let weight = match weight {
            None => 1,
            Some(w) if (1..=10_000).contains(w.get_ref()) => *w.get_ref(),
            Some(w) => {
                let wl = cx.loc(w);
                cx.err(
                    wl,
                    format!("upstreams: {url:?}: weight = {} is out of range", w.get_ref()),
                    "use 1 to 10000 (remove the upstream to send it nothing, or mark it backup = true)",
                );
                continue;
            }
        };
        let proxy_protocol = match pp {
            None => None,
            Some(p) => match p.get_ref().as_str() {
                "v1" => Some(ProxyProtocol::V1),
                "v2" => Some(ProxyProtocol::V2),
                other => {
                    let pl = cx.loc(p);
                    cx.err(
                        pl,
                        format!("upstreams: {url:?}: proxy_protocol = {other:?} is not a version"),
                        "use \"v1\" (text) or \"v2\" (binary), whichever the backend accepts",
                    );
                    continue;
                }
            },
        };
        if let UpstreamAddr::Tcp { host, port, .. } = &addr {
            if host.parse::<IpAddr>().is_err() && (host.as_str(), *port).to_socket_addrs().is_err()
            {
                cx.warn(
                    loc.clone(),
                    format!("upstreams: {url:?}: the name {host:?} does not resolve now"),
                    "the name is resolved again every 30 seconds; check the name or the DNS if this persists",
                );
            }
        }
        if out.iter().any(|u| u.addr == addr) {
            cx.err(
                loc,
                format!("upstreams: {url:?} is listed twice"),
                "list each backend once; use weight to give it a bigger share",
            );
            continue;
        }
        out.push(UpstreamSpec {
            url: url.to_string(),
            addr,
            weight,
            proxy_protocol,
            backup,
        });
    }
    if !out.is_empty() && out.iter().all(|u| u.backup) {
        let loc = cx.loc(list);
        cx.err(
            loc,
            "upstreams: every upstream is a backup",
            "backups only take traffic when no other upstream is available: mark at least one backup = false",
        );
    }
    out
}

/// Parses one upstream URL; the error completes "`"<url>"` ...".
pub fn parse_upstream_url(url: &str) -> Result<UpstreamAddr, String> {
    if let Some(path) = url.strip_prefix("unix:") {
        let path = path.strip_prefix("//").unwrap_or(path);
        if !path.starts_with('/') {
            return Err("is not an absolute socket path".into());
        }
        return Ok(UpstreamAddr::Unix(PathBuf::from(path)));
    }
    let uri: http::Uri = url.parse().map_err(|e| format!("is not a URL ({e})"))?;
    let scheme = match uri.scheme_str() {
        Some("http") => UpstreamScheme::Http,
        Some("https") => UpstreamScheme::Https,
        Some("h2c") => UpstreamScheme::H2c,
        Some(other) => return Err(format!("has the unsupported scheme {other:?}")),
        None => return Err("has no scheme".into()),
    };
    let auth = uri.authority().ok_or("has no host")?;
    if auth.as_str().contains('@') {
        return Err("has user information, which upstreams do not take".into());
    }
    if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
        return Err("has a path or query; upstreams are host and port only (use strip_prefix or a route for paths)".into());
    }
    let host = auth.host().trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return Err("has no host".into());
    }
    let port = auth.port_u16().unwrap_or(match scheme {
        UpstreamScheme::Https => 443,
        UpstreamScheme::Http | UpstreamScheme::H2c => 80,
    });
    if port == 0 {
        return Err("has port 0".into());
    }
    Ok(UpstreamAddr::Tcp {
        scheme,
        host: host.to_ascii_lowercase(),
        port,
    })
}

fn policy(cx: &mut Cx<'_, '_>, p: &Spanned<String>) -> Policy {
    let s = p.get_ref().as_str();
    let parsed = match s {
        "round_robin" => Some(Policy::RoundRobin),
        "least_conn" => Some(Policy::LeastConn),
        "random_two" => Some(Policy::RandomTwo),
        "first" => Some(Policy::First),
        "ip_hash" => Some(Policy::IpHash),
        _ => {
            if let Some(h) = s.strip_prefix("header:") {
                HeaderName::from_bytes(h.as_bytes())
                    .ok()
                    .map(Policy::Header)
            } else if let Some(c) = s.strip_prefix("cookie:") {
                (!c.is_empty() && c.bytes().all(is_cookie_name_byte))
                    .then(|| Policy::Cookie(c.to_string()))
            } else {
                None
            }
        }
    };
    parsed.unwrap_or_else(|| {
        let loc = cx.loc(p);
        cx.err(
            loc,
            format!("policy = {s:?} is not a balancing policy"),
            "use round_robin, least_conn, random_two, first, ip_hash, \"header:<Header-Name>\" or \"cookie:<name>\"",
        );
        Policy::RoundRobin
    })
}

/// RFC 6265 cookie-name: a token (visible ASCII without separators).
fn is_cookie_name_byte(b: u8) -> bool {
    b.is_ascii_graphic() && !b"()<>@,;:\\\"/[]?={}".contains(&b)
}

fn tls(
    cx: &mut Cx<'_, '_>,
    raw: Option<&Spanned<RawUpstreamTls>>,
    upstreams: &[UpstreamSpec],
) -> UpstreamTlsSpec {
    let Some(raw) = raw else {
        return UpstreamTlsSpec::default();
    };
    let loc = cx.loc(raw);
    let t = raw.get_ref();
    let any_https = upstreams.iter().any(|u| {
        matches!(
            u.addr,
            UpstreamAddr::Tcp {
                scheme: UpstreamScheme::Https,
                ..
            }
        )
    });
    if !any_https && !upstreams.is_empty() {
        cx.warn(
            loc.clone(),
            "tls is set but no upstream is https://",
            "remove tls, or write the upstreams as https://",
        );
    }
    let mut spec = UpstreamTlsSpec {
        insecure_skip_verify: t.insecure_skip_verify.unwrap_or(false),
        ..Default::default()
    };
    let file = |cx: &mut Cx<'_, '_>, v: &Spanned<String>, key: &str| -> Option<PathBuf> {
        let p = cx.path(v.get_ref());
        match std::fs::metadata(&p) {
            Ok(m) if m.is_file() => Some(p),
            Ok(_) => {
                let l = cx.loc(v);
                cx.err(
                    l,
                    format!("tls.{key} {} is not a file", p.display()),
                    "point it at a PEM file",
                );
                None
            }
            Err(e) => {
                let l = cx.loc(v);
                cx.err(
                    l,
                    format!("tls.{key}: cannot read {}: {e}", p.display()),
                    "fix the path (relative paths are relative to the config file)",
                );
                None
            }
        }
    };
    if let Some(ca) = &t.ca {
        spec.ca = file(cx, ca, "ca");
    }
    match (&t.client_cert, &t.client_key) {
        (Some(c), Some(k)) => {
            if let (Some(c), Some(k)) = (file(cx, c, "client_cert"), file(cx, k, "client_key")) {
                spec.client_cert = Some((c, k));
            }
        }
        (Some(v), None) | (None, Some(v)) => {
            let l = cx.loc(v);
            cx.err(
                l,
                "tls: client_cert and client_key go together",
                "give both the certificate chain and its key, or neither",
            );
        }
        (None, None) => {}
    }
    if let Some(n) = &t.server_name {
        if rustls_pki_types::ServerName::try_from(n.get_ref().as_str()).is_err() {
            let l = cx.loc(n);
            cx.err(
                l,
                format!(
                    "tls.server_name = {:?} is not a DNS name or IP address",
                    n.get_ref()
                ),
                "write the name the backend's certificate is issued for",
            );
        } else {
            spec.server_name = Some(n.get_ref().clone());
        }
    }
    if spec.insecure_skip_verify {
        cx.warn(
            loc.clone(),
            "tls.insecure_skip_verify = true: backends' certificates are not checked, so anyone on the path can read and change the traffic",
            "give the backend's CA with tls.ca instead",
        );
    }
    let errors = cx.error_count() > 0;
    if !errors {
        // Loads the files as serving will: unreadable PEM, a key that does not fit its
        // certificate, an empty CA file are reported here, not at the first request.
        if let Err(e) = crate::outbound::tls_client_config(&spec) {
            cx.err(loc, format!("tls: {e}"), "fix the files named in tls");
        }
    }
    spec
}

fn health(cx: &mut Cx<'_, '_>, raw: &Spanned<RawHealth>) -> HealthSpec {
    let h = raw.get_ref();
    let path = match &h.path {
        None => "/".to_string(),
        Some(p) => {
            let s = p.get_ref();
            if !s.starts_with('/') || s.parse::<http::uri::PathAndQuery>().is_err() {
                let l = cx.loc(p);
                cx.err(
                    l,
                    format!("health.path = {s:?} does not start with '/'"),
                    "write the path of the check, e.g. \"/healthz\"",
                );
            }
            s.clone()
        }
    };
    let status = match &h.status {
        None => StatusMatch::Exact(200),
        Some(s) => {
            let parsed = match s.get_ref() {
                RawStatus::Code(c) if (100..600).contains(c) => Some(StatusMatch::Exact(*c as u16)),
                RawStatus::Text(t) => {
                    let b = t.as_bytes();
                    (b.len() == 3
                        && (b'1'..=b'5').contains(&b[0])
                        && t[1..].eq_ignore_ascii_case("xx"))
                    .then(|| StatusMatch::Class(b[0] - b'0'))
                }
                _ => None,
            };
            parsed.unwrap_or_else(|| {
                let l = cx.loc(s);
                cx.err(
                    l,
                    format!("health.status = {} is not a status or class", s.get_ref()),
                    "write a code such as 200 or a class such as \"2xx\"",
                );
                StatusMatch::Exact(200)
            })
        }
    };
    let interval = cx.duration(
        &h.interval,
        "health.interval",
        Duration::from_secs(5),
        Duration::from_millis(50),
        Duration::from_secs(3600),
    );
    let timeout = cx.duration(
        &h.timeout,
        "health.timeout",
        Duration::from_secs(2),
        Duration::from_millis(10),
        Duration::from_secs(600),
    );
    if timeout > interval {
        if let Some(t) = &h.timeout {
            let l = cx.loc(t);
            cx.err(
                l,
                format!(
                    "health.timeout ({}) is longer than health.interval ({})",
                    humantime::format_duration(timeout),
                    humantime::format_duration(interval)
                ),
                "make the timeout shorter than the interval",
            );
        }
    }
    let count = |cx: &mut Cx<'_, '_>, v: &Option<Spanned<u32>>, key: &str, default: u32| match v {
        None => default,
        Some(n) if (1..=100).contains(n.get_ref()) => *n.get_ref(),
        Some(n) => {
            let l = cx.loc(n);
            cx.err(
                l,
                format!("health.{key} = {} is out of range", n.get_ref()),
                "use 1 to 100 consecutive checks",
            );
            default
        }
    };
    let rise = count(cx, &h.rise, "rise", 2);
    let fall = count(cx, &h.fall, "fall", 3);
    let host = h.host.as_ref().and_then(|v| {
        if HeaderValue::from_str(v.get_ref()).is_ok() && !v.get_ref().is_empty() {
            Some(v.get_ref().clone())
        } else {
            let l = cx.loc(v);
            cx.err(
                l,
                format!("health.host = {:?} is not a valid Host value", v.get_ref()),
                "write a host name, e.g. \"app.internal\"",
            );
            None
        }
    });
    HealthSpec {
        path,
        status,
        interval,
        timeout,
        rise,
        fall,
        host,
    }
}

fn passive(cx: &mut Cx<'_, '_>, raw: &Spanned<RawPassive>) -> PassiveSpec {
    let p = raw.get_ref();
    let max_fails = p
        .max_fails
        .as_ref()
        .map_or(DEFAULT_PASSIVE.max_fails, |m| *m.get_ref());
    let fail_timeout = cx.duration(
        &p.fail_timeout,
        "passive.fail_timeout",
        DEFAULT_PASSIVE.fail_timeout,
        Duration::from_millis(10),
        Duration::from_secs(86400),
    );
    let max_eject = cx.duration(
        &p.max_eject,
        "passive.max_eject",
        DEFAULT_PASSIVE.max_eject.max(fail_timeout),
        Duration::from_millis(10),
        Duration::from_secs(86400),
    );
    if max_eject < fail_timeout {
        if let Some(m) = &p.max_eject {
            let l = cx.loc(m);
            cx.err(
                l,
                "passive.max_eject is shorter than passive.fail_timeout",
                "max_eject caps the doubling ejections: make it at least fail_timeout",
            );
        }
    }
    PassiveSpec {
        max_fails,
        fail_timeout,
        max_eject,
    }
}

fn timeouts(cx: &mut Cx<'_, '_>, raw: &Spanned<RawTimeouts>) -> TimeoutSpec {
    let t = raw.get_ref();
    let day = Duration::from_secs(86400);
    TimeoutSpec {
        connect: cx.duration(
            &t.connect,
            "timeouts.connect",
            DEFAULT_TIMEOUTS.connect,
            Duration::from_millis(1),
            Duration::from_secs(600),
        ),
        response_header: cx.duration(
            &t.response_header,
            "timeouts.response_header",
            DEFAULT_TIMEOUTS.response_header,
            Duration::from_millis(1),
            day,
        ),
        idle: cx.duration(
            &t.idle,
            "timeouts.idle",
            DEFAULT_TIMEOUTS.idle,
            Duration::ZERO,
            day,
        ),
        total: cx.duration(
            &t.total,
            "timeouts.total",
            DEFAULT_TIMEOUTS.total,
            Duration::ZERO,
            day,
        ),
    }
}

fn pool(cx: &mut Cx<'_, '_>, raw: &Spanned<RawPool>) -> PoolSpec {
    let p = raw.get_ref();
    let max_idle = p
        .max_idle_per_backend
        .as_ref()
        .map_or(DEFAULT_POOL.max_idle_per_backend, |m| *m.get_ref());
    let max_conns = p
        .max_connections_per_backend
        .as_ref()
        .map_or(0, |m| *m.get_ref());
    if max_conns != 0 && max_idle > max_conns {
        if let Some(m) = &p.max_idle_per_backend {
            let l = cx.loc(m);
            cx.err(
                l,
                format!("pool.max_idle_per_backend = {max_idle} is more than max_connections_per_backend = {max_conns}"),
                "keep at most as many idle connections as connections",
            );
        }
    }
    PoolSpec {
        max_idle_per_backend: max_idle,
        idle_timeout: cx.duration(
            &p.idle_timeout,
            "pool.idle_timeout",
            DEFAULT_POOL.idle_timeout,
            Duration::from_millis(10),
            Duration::from_secs(3600),
        ),
        max_connections_per_backend: max_conns,
    }
}

fn cidr(cx: &mut Cx<'_, '_>, s: &Spanned<String>) -> Option<IpNet> {
    let t = s.get_ref().trim();
    let parsed = t
        .parse::<IpNet>()
        .ok()
        .or_else(|| t.parse::<IpAddr>().ok().map(IpNet::from));
    if parsed.is_none() {
        let l = cx.loc(s);
        cx.err(
            l,
            format!("trusted_proxies: {t:?} is not an IP address or CIDR"),
            "write addresses or networks like \"10.0.0.0/8\", \"192.168.1.10\" or \"::1\"",
        );
    }
    parsed.map(|n| n.trunc())
}

fn host_mode(cx: &mut Cx<'_, '_>, h: &Spanned<String>) -> HostMode {
    match h.get_ref().as_str() {
        "pass" => HostMode::Pass,
        "upstream" => HostMode::Upstream,
        lit => match HeaderValue::from_str(lit) {
            Ok(v) if !lit.is_empty() && lit.parse::<http::uri::Authority>().is_ok() => {
                HostMode::Literal(v)
            }
            _ => {
                let l = cx.loc(h);
                cx.err(
                    l,
                    format!("host = {lit:?} is not \"pass\", \"upstream\" or a host name"),
                    "write \"pass\" (the client's Host), \"upstream\" (the upstream's) or a name such as \"app.internal\"",
                );
                HostMode::Pass
            }
        },
    }
}

fn header_edits(cx: &mut Cx<'_, '_>, raw: &Spanned<RawHeaderEdits>, key: &str) -> HeaderEdits {
    let e = raw.get_ref();
    let mut out = HeaderEdits::default();
    let pairs = |cx: &mut Cx<'_, '_>,
                 map: &std::collections::BTreeMap<String, Spanned<String>>,
                 what: &str|
     -> Vec<(HeaderName, HeaderValue)> {
        let mut v = Vec::new();
        for (name, value) in map {
            let l = cx.loc(value);
            let Ok(n) = HeaderName::from_bytes(name.as_bytes()) else {
                cx.err(
                    l,
                    format!("{key}.{what}: {name:?} is not a valid header name"),
                    "use letters, digits and '-'",
                );
                continue;
            };
            if is_framing(&n) {
                cx.err(
                    l,
                    format!("{key}.{what}: {n} frames the message and cannot be edited"),
                    "remove it; the proxy frames each message itself",
                );
                continue;
            }
            match HeaderValue::from_str(value.get_ref()) {
                Ok(hv) => v.push((n, hv)),
                Err(_) => cx.err(
                    l,
                    format!("{key}.{what}: the value of {n} is not a valid header value"),
                    "use visible ASCII without line breaks",
                ),
            }
        }
        v
    };
    out.set = pairs(cx, &e.set, "set");
    out.add = pairs(cx, &e.add, "add");
    for r in &e.remove {
        let l = cx.loc(r);
        match HeaderName::from_bytes(r.get_ref().as_bytes()) {
            Ok(n) => out.remove.push(n),
            Err(_) => cx.err(
                l,
                format!("{key}.remove: {:?} is not a valid header name", r.get_ref()),
                "use letters, digits and '-'",
            ),
        }
    }
    out
}

fn is_framing(n: &HeaderName) -> bool {
    n == http::header::CONTENT_LENGTH || n == http::header::TRANSFER_ENCODING
}

/// `"10MB"` → 10_000_000, `"1GiB"` → 1 << 30, `"512"` → 512 (units: B, K/KB, KiB, M/MB, MiB,
/// G/GB, GiB; case-insensitive; decimal units are powers of 1000).
pub fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().ok()?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" => 1000,
        "kib" => 1 << 10,
        "m" | "mb" => 1_000_000,
        "mib" => 1 << 20,
        "g" | "gb" => 1_000_000_000,
        "gib" => 1 << 30,
        _ => return None,
    };
    n.checked_mul(mult)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstream_urls() {
        assert_eq!(
            parse_upstream_url("http://127.0.0.1:8080"),
            Ok(UpstreamAddr::Tcp {
                scheme: UpstreamScheme::Http,
                host: "127.0.0.1".into(),
                port: 8080
            })
        );
        assert_eq!(
            parse_upstream_url("https://App.Internal"),
            Ok(UpstreamAddr::Tcp {
                scheme: UpstreamScheme::Https,
                host: "app.internal".into(),
                port: 443
            })
        );
        assert_eq!(
            parse_upstream_url("h2c://[::1]:50051/"),
            Ok(UpstreamAddr::Tcp {
                scheme: UpstreamScheme::H2c,
                host: "::1".into(),
                port: 50051
            })
        );
        assert_eq!(
            parse_upstream_url("unix:/run/app.sock"),
            Ok(UpstreamAddr::Unix("/run/app.sock".into()))
        );
        for (bad, why) in [
            ("unix:run/app.sock", "absolute"),
            ("ftp://host", "unsupported scheme"),
            ("127.0.0.1:8080", "scheme"),
            ("http://host/app", "path"),
            ("http://user@host", "user"),
            ("http://host:0", "port 0"),
        ] {
            let e = parse_upstream_url(bad).unwrap_err();
            assert!(e.contains(why), "{bad}: {e}");
        }
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("512"), Some(512));
        assert_eq!(parse_size("10MB"), Some(10_000_000));
        assert_eq!(parse_size("1GiB"), Some(1 << 30));
        assert_eq!(parse_size("64 KiB"), Some(65536));
        assert_eq!(parse_size("ten"), None);
        assert_eq!(parse_size("5XB"), None);
    }

    #[test]
    fn status_classes() {
        assert!(StatusMatch::Class(2).matches(204));
        assert!(!StatusMatch::Class(2).matches(301));
        assert!(StatusMatch::Exact(200).matches(200));
        assert!(!StatusMatch::Exact(200).matches(204));
    }
}
