//! Process-wide metrics: what the admin listener exports as Prometheus text and the status
//! page draws.
//!
//! The counters outlive any one configuration (a reload keeps them): they are `static`, and a
//! site is counted under its name (interned once, [`site_id`]), not under its index in a
//! configuration.
//!
//! Hot-path counters are never shared between worker threads. Each thread that records
//! something gets its own [`Shard`] (a thread-local `Arc`, also listed in a process-wide
//! registry); only that thread writes it, with a relaxed load and a store (no atomic
//! read-modify-write, no lock, no cache line bouncing between workers), and a scrape sums the
//! shards ([`totals`]). A request costs one thread-local lookup and one such add; a handshake
//! one histogram bucket and its sum. Rare events (ACME orders) use plain atomics; failures by
//! reason go into a small per-shard list behind a lock that only a scrape ever contends.
//!
//! This module counts; [`crate::ops::admin`] encodes (through the `prometheus-client` crate,
//! [`collect`]) and serves.

pub mod collect;
pub mod hist;

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime};

use hist::{LocalHistogram, Snapshot};

/// Adds `n` to a counter that only the calling thread writes: a relaxed load and store, which
/// compile to plain moves (the atomic type only makes the scrape's concurrent read defined).
#[inline]
fn bump(c: &AtomicU64, n: u64) {
    c.store(c.load(Ordering::Relaxed).wrapping_add(n), Ordering::Relaxed);
}

#[inline]
fn bump_signed(c: &AtomicI64, n: i64) {
    c.store(c.load(Ordering::Relaxed).wrapping_add(n), Ordering::Relaxed);
}

// ---------------------------------------------------------------------------------------------
// Labels.

/// A site's number in the metrics (the same for the same name across reloads).
pub type SiteId = u32;

/// Requests that no site answered (no usable `Host`, misdirected).
pub const SITE_NONE: SiteId = 0;
/// Plain-HTTP requests (port 80: redirects and ACME HTTP-01).
pub const SITE_PORT80: SiteId = 1;
/// Sites beyond [`MAX_SITES`] (never in practice).
pub const SITE_OTHER: SiteId = 2;

/// Site labels are kept for this many names.
pub const MAX_SITES: usize = CHUNK * CHUNKS;
const CHUNK: usize = 64;
const CHUNKS: usize = 64;

fn site_names() -> &'static Mutex<Vec<Arc<str>>> {
    static NAMES: OnceLock<Mutex<Vec<Arc<str>>>> = OnceLock::new();
    NAMES.get_or_init(|| Mutex::new(vec!["_none".into(), "_port80".into(), "_other".into()]))
}

/// The metrics number of the site called `name` (at configuration time, not per request).
pub fn site_id(name: &str) -> SiteId {
    let mut names = site_names().lock().unwrap_or_else(|e| e.into_inner());
    if let Some(i) = names.iter().position(|n| &**n == name) {
        return i as SiteId;
    }
    if names.len() >= MAX_SITES {
        return SITE_OTHER;
    }
    names.push(name.into());
    (names.len() - 1) as SiteId
}

/// The site name of a metrics number.
pub fn site_name(id: SiteId) -> Arc<str> {
    let names = site_names().lock().unwrap_or_else(|e| e.into_inner());
    names
        .get(id as usize)
        .cloned()
        .unwrap_or_else(|| "_other".into())
}

/// How a request came.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestProtocol {
    Http1 = 0,
    H2 = 1,
    /// Plain HTTP on the port-80 listener.
    PlainHttp = 2,
    /// HTTP/3 over QUIC.
    H3 = 3,
}

impl RequestProtocol {
    pub const ALL: [RequestProtocol; 4] = [Self::Http1, Self::H2, Self::PlainHttp, Self::H3];
    pub fn label(self) -> &'static str {
        match self {
            Self::Http1 => "http1",
            Self::H2 => "h2",
            Self::PlainHttp => "plain_http",
            Self::H3 => "h3",
        }
    }
}

/// Status classes `1xx` to `5xx`.
pub const STATUS_CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

fn class_of(status: u16) -> usize {
    usize::from(status / 100).clamp(1, 5) - 1
}

/// What an open connection is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnKind {
    /// Accepted on the HTTPS port, handshake not complete.
    TlsHandshaking = 0,
    Http1 = 1,
    H2 = 2,
    /// Port 80.
    PlainHttp = 3,
    /// A `[[stream]]` connection.
    Stream = 4,
    /// A QUIC connection (HTTP/3), handshake complete.
    H3 = 5,
}

impl ConnKind {
    pub const ALL: [ConnKind; 6] = [
        Self::TlsHandshaking,
        Self::Http1,
        Self::H2,
        Self::PlainHttp,
        Self::Stream,
        Self::H3,
    ];
    pub fn label(self) -> &'static str {
        match self {
            Self::TlsHandshaking => "tls_handshaking",
            Self::Http1 => "http1",
            Self::H2 => "h2",
            Self::PlainHttp => "plain_http",
            Self::Stream => "stream",
            Self::H3 => "h3",
        }
    }
}

/// Handshake histograms: TLS 1.2 / 1.3 × full / resumed.
pub const HANDSHAKE_KINDS: [(&str, &str); 4] = [
    ("TLSv1.2", "full"),
    ("TLSv1.2", "resumed"),
    ("TLSv1.3", "full"),
    ("TLSv1.3", "resumed"),
];

// ---------------------------------------------------------------------------------------------
// Shards.

type SiteChunk = [[[AtomicU64; 4]; 5]; CHUNK];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Labelled {
    HandshakeFailure,
}

/// One thread's counters (see the module's documentation).
#[derive(Debug)]
struct Shard {
    conns: [AtomicI64; 6],
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
    handshakes: [LocalHistogram; 4],
    /// Requests per site (chunks of [`CHUNK`] sites, allocated at a site's first request) ×
    /// status class × protocol.
    sites: [OnceLock<Box<SiteChunk>>; CHUNKS],
    /// Counters by a free-form `&'static str` label: handshake failures by reason, rate-limit
    /// drops by kind. A short list; the lock is only ever contended by a scrape.
    labelled: Mutex<Vec<(Labelled, &'static str, u64)>>,
}

fn shards() -> &'static Mutex<Vec<Arc<Shard>>> {
    static SHARDS: OnceLock<Mutex<Vec<Arc<Shard>>>> = OnceLock::new();
    SHARDS.get_or_init(Default::default)
}

thread_local! {
    static SHARD: Arc<Shard> = {
        let shard = Arc::new(Shard::default());
        shards().lock().unwrap_or_else(|e| e.into_inner()).push(shard.clone());
        shard
    };
}

#[inline]
fn with_shard(f: impl FnOnce(&Shard)) {
    // During thread teardown the thread-local may be gone: that count is lost, nothing else.
    let _ = SHARD.try_with(|s| f(s));
}

impl Default for Shard {
    fn default() -> Self {
        Shard {
            conns: Default::default(),
            bytes_in: AtomicU64::new(0),
            bytes_out: AtomicU64::new(0),
            handshakes: Default::default(),
            sites: std::array::from_fn(|_| OnceLock::new()),
            labelled: Mutex::new(Vec::new()),
        }
    }
}

impl Shard {
    fn site_row(&self, site: SiteId) -> &[[AtomicU64; 4]; 5] {
        let i = (site as usize).min(MAX_SITES - 1);
        let chunk = self.sites[i / CHUNK]
            .get_or_init(|| Box::new(std::array::from_fn(|_| Default::default())));
        &chunk[i % CHUNK]
    }

    fn add_labelled(&self, what: Labelled, label: &'static str) {
        let mut list = self.labelled.lock().unwrap_or_else(|e| e.into_inner());
        match list.iter_mut().find(|(w, l, _)| *w == what && *l == label) {
            Some((_, _, n)) => *n += 1,
            None => list.push((what, label, 1)),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Recording (the hooks).

/// A response was sent: `site` ([`site_id`], [`SITE_NONE`]…), its status, and how it came.
#[inline]
pub fn request(site: SiteId, status: u16, protocol: RequestProtocol) {
    with_shard(|s| bump(&s.site_row(site)[class_of(status)][protocol as usize], 1));
}

/// Application bytes read from clients (after TLS).
#[inline]
pub fn bytes_in(n: usize) {
    with_shard(|s| bump(&s.bytes_in, n as u64));
}

/// Application bytes written to clients (before TLS).
#[inline]
pub fn bytes_out(n: usize) {
    with_shard(|s| bump(&s.bytes_out, n as u64));
}

/// Counts a connection as open in `kind` while it lives.
pub struct OpenConn(ConnKind);

impl OpenConn {
    #[inline]
    pub fn new(kind: ConnKind) -> Self {
        with_shard(|s| bump_signed(&s.conns[kind as usize], 1));
        OpenConn(kind)
    }

    /// The connection moves on (the handshake is done: `tls_handshaking` → `http1`/`h2`).
    #[inline]
    pub fn become_(&mut self, kind: ConnKind) {
        if kind != self.0 {
            // Balanced per thread-sum: the decrement may land in another thread's shard only
            // if the connection moved threads, and the scrape sums all shards.
            with_shard(|s| {
                bump_signed(&s.conns[self.0 as usize], -1);
                bump_signed(&s.conns[kind as usize], 1);
            });
            self.0 = kind;
        }
    }
}

impl Drop for OpenConn {
    #[inline]
    fn drop(&mut self) {
        with_shard(|s| bump_signed(&s.conns[self.0 as usize], -1));
    }
}

/// The shared storage (`[storage] kind = "redis"`): 1 while its last call succeeded, 0 while
/// it is unreachable, -1 where there is none (then not exported).
pub static STORAGE_UP: std::sync::atomic::AtomicI64 = std::sync::atomic::AtomicI64::new(-1);
/// Calls to the shared storage that failed to reach it.
pub static STORAGE_ERRORS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// A call to the shared storage reached it (`true`) or not; the first of each change is
/// logged, since instances keep serving what they hold while it is away.
pub fn storage_reached(ok: bool, url: &str) {
    use std::sync::atomic::Ordering;
    let was = STORAGE_UP.swap(i64::from(ok), Ordering::Relaxed);
    if !ok {
        STORAGE_ERRORS.fetch_add(1, Ordering::Relaxed);
        if was != 0 {
            tracing::warn!(storage = url, "the shared storage is unreachable: serving the certificates and ticket keys held in memory until it answers again");
        }
    } else if was == 0 {
        tracing::info!(storage = url, "the shared storage answers again");
    }
}

/// QUIC Retry packets sent (rare: only under load or with `h3_retry = "always"`, so one
/// process-wide counter).
pub static QUIC_RETRIES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// A QUIC Retry was sent.
pub fn quic_retry() {
    QUIC_RETRIES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
}

/// A handshake completed after `took` (from the accepted connection to the handshake's end).
pub fn handshake_done(version: Option<rustls::ProtocolVersion>, resumed: bool, took: Duration) {
    let v = match version {
        Some(rustls::ProtocolVersion::TLSv1_2) => 0,
        _ => 2,
    };
    with_shard(|s| s.handshakes[v + usize::from(resumed)].observe(took));
}

/// A handshake failed for `reason` (a short label: `timeout`, `unknown_sni`, …).
pub fn handshake_failed(
    reason: &'static str,
    peer: SocketAddr,
    sni: Option<&str>,
    detail: &dyn std::fmt::Display,
) {
    with_shard(|s| s.add_labelled(Labelled::HandshakeFailure, reason));
    remember_failure(reason, peer, sni, detail);
}

static ACME: [[AtomicU64; 2]; 2] = [
    [AtomicU64::new(0), AtomicU64::new(0)],
    [AtomicU64::new(0), AtomicU64::new(0)],
];

/// An ACME order ended: a first certificate or a renewal, issued or failed.
pub fn acme_order(renewal: bool, issued: bool) {
    ACME[usize::from(renewal)][usize::from(!issued)].fetch_add(1, Ordering::Relaxed);
}

// ---------------------------------------------------------------------------------------------
// Recent handshake failures, for the status page.

/// How many recent failures are kept.
pub const RECENT_FAILURES: usize = 50;

/// One failed handshake.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Failure {
    /// Unix time, seconds.
    pub at: u64,
    pub peer: String,
    pub sni: Option<String>,
    pub reason: &'static str,
    pub detail: String,
}

fn recent() -> &'static Mutex<VecDeque<Failure>> {
    static RECENT: OnceLock<Mutex<VecDeque<Failure>>> = OnceLock::new();
    RECENT.get_or_init(|| Mutex::new(VecDeque::with_capacity(RECENT_FAILURES)))
}

fn remember_failure(
    reason: &'static str,
    peer: SocketAddr,
    sni: Option<&str>,
    detail: &dyn std::fmt::Display,
) {
    // Examples, not an audit log: when another thread holds the list, this one is skipped
    // rather than waited for (a flood of failures never queues workers on this lock).
    let Ok(mut list) = recent().try_lock() else {
        return;
    };
    if list.len() == RECENT_FAILURES {
        list.pop_front();
    }
    let at = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let mut detail = detail.to_string();
    if detail.len() > 200 {
        let mut end = 200;
        while !detail.is_char_boundary(end) {
            end -= 1;
        }
        detail.truncate(end);
    }
    list.push_back(Failure {
        at,
        peer: peer.to_string(),
        sni: sni.map(|s| s.chars().take(253).collect()),
        reason,
        detail,
    });
}

/// The last [`RECENT_FAILURES`] handshake failures, oldest first.
pub fn recent_failures() -> Vec<Failure> {
    recent()
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .cloned()
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Reading.

/// Every counter summed over the shards.
#[derive(Debug, Clone, Default)]
pub struct Totals {
    /// Open connections per [`ConnKind`] (index = discriminant).
    pub conns: [i64; 6],
    pub bytes_in: u64,
    pub bytes_out: u64,
    /// Per [`HANDSHAKE_KINDS`].
    pub handshakes: [Snapshot; 4],
    /// Per site that has any: status class × protocol.
    pub requests: Vec<(SiteId, [[u64; 4]; 5])>,
    pub handshake_failures: Vec<(&'static str, u64)>,
    pub rate_limited: Vec<(&'static str, u64)>,
    /// `[first, renewal][issued, failed]`.
    pub acme_orders: [[u64; 2]; 2],
}

impl Totals {
    pub fn handshakes_total(&self) -> u64 {
        self.handshakes.iter().map(Snapshot::count).sum()
    }
}

fn add_to(list: &mut Vec<(&'static str, u64)>, label: &'static str, n: u64) {
    match list.iter_mut().find(|(l, _)| *l == label) {
        Some((_, m)) => *m += n,
        None => list.push((label, n)),
    }
}

/// Sums the shards now.
pub fn totals() -> Totals {
    let shards: Vec<Arc<Shard>> = shards().lock().unwrap_or_else(|e| e.into_inner()).clone();
    let mut t = Totals::default();
    let mut requests: Vec<[[u64; 4]; 5]> = Vec::new();
    for s in &shards {
        for (o, c) in t.conns.iter_mut().zip(&s.conns) {
            *o += c.load(Ordering::Relaxed);
        }
        t.bytes_in += s.bytes_in.load(Ordering::Relaxed);
        t.bytes_out += s.bytes_out.load(Ordering::Relaxed);
        for (o, h) in t.handshakes.iter_mut().zip(&s.handshakes) {
            o.add(&h.snapshot());
        }
        for (ci, chunk) in s.sites.iter().enumerate() {
            let Some(chunk) = chunk.get() else { continue };
            for (j, row) in chunk.iter().enumerate() {
                let id = ci * CHUNK + j;
                for (k, class) in row.iter().enumerate() {
                    for (p, c) in class.iter().enumerate() {
                        let n = c.load(Ordering::Relaxed);
                        if n > 0 {
                            if requests.len() <= id {
                                requests.resize(id + 1, [[0; 4]; 5]);
                            }
                            requests[id][k][p] += n;
                        }
                    }
                }
            }
        }
        for (what, label, n) in s.labelled.lock().unwrap_or_else(|e| e.into_inner()).iter() {
            match what {
                Labelled::HandshakeFailure => add_to(&mut t.handshake_failures, label, *n),
            }
        }
    }
    t.requests = requests
        .into_iter()
        .enumerate()
        .filter(|(_, r)| r.iter().flatten().any(|&n| n > 0))
        .map(|(i, r)| (i as SiteId, r))
        .collect();
    t.handshake_failures.sort();
    // Refusals are counted once, where they are logged (process-wide, rare).
    t.rate_limited = crate::ops::limits::dropped_counts()
        .into_iter()
        .filter(|(_, n)| *n > 0)
        .collect();
    t.rate_limited.sort();
    for (o, a) in t.acme_orders.iter_mut().zip(&ACME) {
        for (o, a) in o.iter_mut().zip(a) {
            *o = a.load(Ordering::Relaxed);
        }
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_from_several_threads_sum_up() {
        let site = site_id("metrics-unit-test");
        assert_eq!(site_id("metrics-unit-test"), site);
        let before = totals();
        let row = |t: &Totals| {
            t.requests
                .iter()
                .find(|(s, _)| *s == site)
                .map_or([[0; 4]; 5], |(_, r)| *r)
        };
        let threads: Vec<_> = (0..4)
            .map(|_| {
                std::thread::spawn(move || {
                    for _ in 0..1000 {
                        request(site, 200, RequestProtocol::H2);
                    }
                    request(site, 503, RequestProtocol::Http1);
                    bytes_out(10);
                    let _c = OpenConn::new(ConnKind::Stream);
                    crate::ops::limits_dropped("request_rate");
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let after = totals();
        assert_eq!(row(&after)[1][1] - row(&before)[1][1], 4000);
        assert_eq!(row(&after)[4][0] - row(&before)[4][0], 4);
        assert!(after.bytes_out - before.bytes_out >= 40);
        assert_eq!(after.conns[ConnKind::Stream as usize], 0);
        let drops = |t: &Totals| {
            t.rate_limited
                .iter()
                .find(|(l, _)| *l == "request_rate")
                .map_or(0, |(_, n)| *n)
        };
        assert_eq!(drops(&after) - drops(&before), 4);
        assert_eq!(&*site_name(site), "metrics-unit-test");
    }

    #[test]
    fn status_classes() {
        assert_eq!(class_of(101), 0);
        assert_eq!(class_of(200), 1);
        assert_eq!(class_of(308), 2);
        assert_eq!(class_of(499), 3);
        assert_eq!(class_of(503), 4);
        assert_eq!(class_of(999), 4);
        assert_eq!(class_of(0), 0);
    }
}
