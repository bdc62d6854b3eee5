//! One connection, from accepted TCP socket to the last response: read the ClientHello, pick the
//! site by SNI, finish the handshake, then hand the stream to hyper (HTTP/1.1 or HTTP/2 by ALPN).

use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

use hyper_util::rt::TokioIo;
use rustls::server::{Accepted, Acceptor};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio_rustls::StartHandshake;

use super::cork::CorkIo;
use super::early::EarlyTls;
use super::io::{TimedIo, Timeouts, LINGER, LINGER_BYTES};
use super::{ConnGuard, ServerState, TlsFront, WorkerCtx};
use crate::acme::{TlsAlpnChallenges, ACME_TLS_ALPN};
use crate::config::model::{Limits, UnknownSni};
use crate::http::redirect::RedirectService;
use crate::http::{ConnState, HttpsService};
use crate::limited;
use crate::ops::access::TlsFacts;
use crate::ops::events::{self, HandshakeFailure};
use crate::ops::limit::{report_to_log, LineLimit};
use crate::ops::metrics::{self, ConnKind};

/// A fatal `unrecognized_name` alert record (TLS 1.2 record header; valid for 1.3 too).
pub(crate) const ALERT_UNRECOGNIZED_NAME: [u8; 7] = [0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x70];

/// A fatal `internal_error` alert: the site has no certificate yet (ACME order under way).
pub(crate) const ALERT_INTERNAL_ERROR: [u8; 7] = [0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x50];

/// Unix time of the last "certificate pending" warning (one per minute at most, however many
/// clients knock).
static PENDING_WARNED: std::sync::atomic::AtomicI64 = std::sync::atomic::AtomicI64::new(0);

/// Budgets of the lines any client can cause (see [`crate::ops::limit`]).
static AFTER_HANDSHAKE: LineLimit = LineLimit::new("TLS error after the handshake", report_to_log);
static NO_REQUEST: LineLimit = LineLimit::new("no request after the handshake", report_to_log);
static H2_ERROR: LineLimit = LineLimit::new("HTTP/2 connection error", report_to_log);
static H1_ERROR: LineLimit = LineLimit::new("HTTP/1.1 connection error", report_to_log);
static HTTP_ERROR: LineLimit = LineLimit::new("port 80 connection error", report_to_log);
static ACME_ALPN: LineLimit = LineLimit::new("TLS-ALPN-01 handshake", report_to_log);

/// A fatal `no_application_protocol` alert (for `acme-tls/1` with no pending challenge).
const ALERT_NO_APPLICATION_PROTOCOL: [u8; 7] = [0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x78];

/// A fatal `decode_error` alert: a ClientHello larger than the 64 KiB rustls buffers.
pub(crate) const ALERT_DECODE_ERROR: [u8; 7] = [0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x32];

/// Closes a refused connection so that its alert arrives: the write side is shut (FIN after
/// the alert), and what the client still sends is read and dropped for a moment. Closing
/// with unread input instead makes the kernel answer with a reset, which can discard the
/// alert before the client reads it ("connection reset" instead of the alert's reason).
pub(crate) async fn linger_close(tcp: &TcpStream) {
    let _ = rustix::net::shutdown(tcp, rustix::net::Shutdown::Write);
    let drain = async {
        let mut buf = [0u8; 4096];
        let mut total = 0;
        while total < LINGER_BYTES {
            if tcp.readable().await.is_err() {
                return;
            }
            match tcp.try_read(&mut buf) {
                Ok(0) => return,
                Ok(n) => total += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(_) => return,
            }
        }
    };
    let _ = tokio::time::timeout(LINGER, drain).await;
}

/// `std::io` adapters over a non-blocking tokio socket, for rustls (readiness is handled by
/// tokio: `try_read`/`try_write` clear it on `WouldBlock`, and a short read clears it too).
pub(crate) struct SyncIo<'a>(pub(crate) &'a TcpStream);

impl Read for SyncIo<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.0.try_read(buf)?;
        if 0 < n && n < buf.len() {
            // A short read emptied the socket's queue (epoll is edge-triggered: what arrives
            // later is a new event). Clear the read readiness now, as tokio's own `poll_read`
            // does, instead of learning it from a `recvfrom` that fails with EAGAIN: after a
            // ClientHello, the next read comes once the server's flight is out, and the
            // client's answer is a round trip away.
            let _ = self.0.try_io(tokio::io::Interest::READABLE, || {
                Err::<(), _>(io::ErrorKind::WouldBlock.into())
            });
        }
        Ok(n)
    }
}

impl Write for SyncIo<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.try_write(buf)
    }
    fn write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        self.0.try_write_vectored(bufs)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Reads until a complete ClientHello is in; returns it with its raw bytes when the TLS event
/// log keeps them. `Ok(None)`: the peer went away, sent garbage (an alert has been sent where
/// one applies) or spoke plain HTTP (answered with a 400); the failure is logged.
/// `https_port_suffix`: `""` or `":PORT"`, for the https:// address a plain-HTTP client is
/// shown.
pub(crate) async fn read_client_hello(
    tcp: &TcpStream,
    peer: SocketAddr,
    https_port_suffix: &str,
) -> io::Result<Option<(Box<Accepted>, Option<Box<[u8]>>)>> {
    // The acceptor (rustls's connection state and, once bytes come, its receive buffer) is
    // made when the first bytes are there: a connection that sends nothing holds only its
    // socket and task until the handshake timeout.
    tcp.readable().await?;
    let mut acceptor = Acceptor::default();
    let mut io = Sniff::new(tcp, events::enabled());
    let mut first = true;
    loop {
        if !first {
            tcp.readable().await?;
        }
        first = false;
        let step = read_hello_step(&mut acceptor, &mut io, peer);
        if let Some(first) = io.plain.take() {
            answer_plain_http(tcp, peer, first, https_port_suffix).await;
            return Ok(None);
        }
        let failure = match step {
            Ok(HelloRead::Complete(accepted)) => return Ok(Some((accepted, io.captured()))),
            Ok(HelloRead::More) => continue,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Ok(HelloRead::Gone) => {
                events::handshake_failed(peer, None, &HandshakeFailure::ClientClosed, None);
                return Ok(None);
            }
            Ok(HelloRead::Refused(e)) => {
                linger_close(tcp).await;
                if io.first != Some(0x16) {
                    HandshakeFailure::NotTls
                } else {
                    HandshakeFailure::from_rustls(&e)
                }
            }
            Err(e) if e.kind() == io::ErrorKind::InvalidData => {
                // rustls's buffer is full: a ClientHello over 64 KiB (its limit, and far
                // beyond any real client's).
                let _ = SyncIo(tcp).write(&ALERT_DECODE_ERROR);
                linger_close(tcp).await;
                HandshakeFailure::ClientHelloTooLarge
            }
            Err(e) => return Err(e),
        };
        let raw = io.captured();
        events::handshake_failed(peer, None, &failure, raw.as_deref());
        return Ok(None);
    }
}

/// The longest ClientHello prefix kept for the TLS event log (the offers are near the start).
const CAPTURE_MAX: usize = 4096;

/// The socket as the ClientHello reader sees it, watching the first bytes: a client that
/// speaks plain HTTP to the HTTPS port is caught before rustls reads it (the first byte of a
/// TLS record is 0x16, never a capital letter), and with the TLS event log on, the
/// ClientHello's bytes are kept to tell what the client offered if the handshake fails.
struct Sniff<'a> {
    io: SyncIo<'a>,
    /// The first byte read.
    first: Option<u8>,
    /// What a plain-HTTP client sent first (the read that showed it).
    plain: Option<Vec<u8>>,
    capture: Option<Vec<u8>>,
}

impl<'a> Sniff<'a> {
    fn new(tcp: &'a TcpStream, capture: bool) -> Self {
        Sniff {
            io: SyncIo(tcp),
            first: None,
            plain: None,
            capture: capture.then(Vec::new),
        }
    }

    fn captured(&mut self) -> Option<Box<[u8]>> {
        self.capture.take().map(Vec::into_boxed_slice)
    }
}

impl Read for Sniff<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.io.read(buf)?;
        if self.first.is_none() && n > 0 {
            self.first = Some(buf[0]);
            if buf[0].is_ascii_uppercase() {
                // `GET /`, `POST /`…: plain HTTP. Not handed to rustls.
                self.plain = Some(buf[..n].to_vec());
                return Err(io::Error::other("plain HTTP on the HTTPS port"));
            }
        }
        if let Some(c) = &mut self.capture {
            let room = CAPTURE_MAX.saturating_sub(c.len());
            c.extend_from_slice(&buf[..n.min(room)]);
        }
        Ok(n)
    }
}

impl Write for Sniff<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.io.write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Answers plain HTTP sent to the HTTPS port with a short `400 Bad Request` that names the
/// https:// address to use (as nginx's 497 does), instead of a TLS alert the user never sees.
/// `first`: what the client sent first; the rest of its request head is read for a moment to
/// learn the host.
async fn answer_plain_http(tcp: &TcpStream, peer: SocketAddr, first: Vec<u8>, port_suffix: &str) {
    let mut head = first;
    let read_head = async {
        let mut buf = [0u8; 2048];
        while head.len() < 8192 && !head.windows(4).any(|w| w == b"\r\n\r\n") {
            if tcp.readable().await.is_err() {
                return;
            }
            match tcp.try_read(&mut buf) {
                Ok(0) => return,
                Ok(n) => head.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(_) => return,
            }
        }
    };
    let _ = tokio::time::timeout(std::time::Duration::from_secs(1), read_head).await;
    let local = tcp.local_addr().ok();
    let url = https_url(&head, local, port_suffix);
    let body = format!(
        "400 Bad Request\nThis port speaks HTTPS: the request was sent as plain HTTP.\nUse {url} instead.\n"
    );
    let resp = format!(
        "HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    // Counted before the answer goes out: whoever reads the answer finds it counted.
    events::handshake_failed(peer, None, &HandshakeFailure::PlainHttp, None);
    let mut out = resp.as_bytes();
    while !out.is_empty() {
        if tcp.writable().await.is_err() {
            break;
        }
        match tcp.try_write(out) {
            Ok(n) => out = &out[n..],
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(_) => break,
        }
    }
    linger_close(tcp).await;
}

/// `https://host:port/path` for a plain-HTTP request head: the host from `Host` (only host
/// characters; else the address connected to), the path when it is a plain origin-form path.
fn https_url(head: &[u8], local: Option<SocketAddr>, port_suffix: &str) -> String {
    let text = String::from_utf8_lossy(head);
    let mut lines = text.split("\r\n");
    let path = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .filter(|p| {
            p.starts_with('/')
                && p.len() <= 256
                && p.bytes()
                    .all(|b| b.is_ascii_graphic() && !b"\"<>\\^`{|}".contains(&b))
        })
        .unwrap_or("/");
    let host = lines
        .take_while(|l| !l.is_empty())
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.trim()
                .eq_ignore_ascii_case("host")
                .then(|| value.trim())
        })
        .map(|h| match h.strip_prefix('[') {
            Some(v6) => v6
                .split(']')
                .next()
                .map(|a| format!("[{a}]"))
                .unwrap_or_default(),
            None => h.split(':').next().unwrap_or("").to_owned(),
        })
        .filter(|h| {
            !h.is_empty()
                && h.len() <= 253
                && h.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-.[]:".contains(&b))
        });
    let host = host.unwrap_or_else(|| match local.map(|a| a.ip().to_canonical()) {
        Some(std::net::IpAddr::V6(ip)) => format!("[{ip}]"),
        Some(ip) => ip.to_string(),
        None => "localhost".into(),
    });
    format!("https://{host}{port_suffix}{path}")
}

/// What one read towards the ClientHello gave.
pub(crate) enum HelloRead {
    /// Boxed: large, and kept (in [`Hello`]) across the on-demand wait.
    Complete(Box<Accepted>),
    /// More bytes are needed.
    More,
    /// The peer closed.
    Gone,
    /// The peer sent something that is not a valid ClientHello (rustls's error): the alert has
    /// been written to the stream, which is to be closed with [`linger_close`] (over a socket).
    Refused(rustls::Error),
}

/// Reads what `io` has into the acceptor and tries to complete the ClientHello. A `WouldBlock`
/// error: nothing to read yet.
pub(crate) fn read_hello_step<T: Read + Write>(
    acceptor: &mut Acceptor,
    io: &mut T,
    peer: SocketAddr,
) -> io::Result<HelloRead> {
    if acceptor.read_tls(io)? == 0 {
        return Ok(HelloRead::Gone);
    }
    match acceptor.accept() {
        Ok(Some(accepted)) => Ok(HelloRead::Complete(Box::new(accepted))),
        Ok(None) => Ok(HelloRead::More),
        Err((err, mut alert)) => {
            let _ = peer; // the failure is logged by the caller, who knows more
                          // Best effort: the alert is a few bytes, the socket buffer is empty.
            let _ = alert.write(io);
            Ok(HelloRead::Refused(err))
        }
    }
}

/// Answers an ACME TLS-ALPN-01 validation handshake (RFC 8737) with the challenge's certificate,
/// or refuses it when no challenge is pending for the name.
async fn answer_tls_alpn_01(
    mut tcp: TcpStream,
    accepted: Accepted,
    challenge: Option<Arc<rustls::ServerConfig>>,
    peer: SocketAddr,
    sni: Option<String>,
    timeout: std::time::Duration,
) {
    let Some(config) = challenge else {
        limited!(ACME_ALPN, debug, %peer, sni = sni.as_deref().unwrap_or(""), "acme-tls/1 handshake without a pending challenge");
        let _ = tcp.write_all(&ALERT_NO_APPLICATION_PROTOCOL).await;
        return;
    };
    let handshake = StartHandshake::from_parts(accepted, tcp).into_stream(config);
    match tokio::time::timeout(timeout, handshake).await {
        Ok(Ok(mut tls)) => {
            tracing::info!(%peer, sni = sni.as_deref().unwrap_or(""), "answered a TLS-ALPN-01 validation");
            let _ = tls.shutdown().await;
        }
        Ok(Err(e)) => limited!(ACME_ALPN, debug, %peer, error = %e, "TLS-ALPN-01 handshake failed"),
        Err(_) => limited!(ACME_ALPN, debug, %peer, "TLS-ALPN-01 handshake timeout"),
    }
}

/// What a failed handshake is logged with: the client, its SNI name and, with the TLS event
/// log on, its raw ClientHello.
#[derive(Clone, Copy)]
struct Who<'a> {
    peer: SocketAddr,
    sni: Option<&'a str>,
    raw: Option<&'a [u8]>,
}

/// An established connection: its stream, request state, whether HTTP/2 was negotiated, and
/// its TLS facts when an access log wants them.
type Ready<T> = (
    Pin<Box<TimedIo<T>>>,
    Arc<ConnState>,
    bool,
    Option<Arc<TlsFacts>>,
);

/// Completes the handshake and puts the stream into its TimedIo (a separate, boxed future: the
/// handshake's state is freed as soon as it is done). `facts`: read the connection's TLS facts
/// for the access log.
async fn establish(
    accepted: Box<Accepted>,
    tcp: TcpStream,
    config: Arc<rustls::ServerConfig>,
    limits: &Limits,
    who: Who<'_>,
    facts: bool,
) -> Option<Ready<tokio_rustls::server::TlsStream<CorkIo>>> {
    let handshake = tokio::time::timeout(
        limits.handshake_timeout,
        StartHandshake::from_parts(*accepted, CorkIo::new(tcp)).into_stream(config),
    );
    let tls = handshake_done(handshake.await, who)?;
    let conn = tls.get_ref().1;
    let h2 = conn.alpn_protocol() == Some(b"h2");
    // Access log (hook): the TLS facts, once per connection.
    let facts = facts.then(|| TlsFacts::of(conn, who.sni));
    let (io, state, h2) = timed(tls, h2, Arc::new(ConnState::default()), limits);
    Some((io, state, h2, facts))
}

/// The established stream in its TimedIo, with the timeouts of its protocol. One allocation per
/// connection: hyper needs an `Unpin` stream and TimedIo holds timers.
fn timed<T>(
    tls: T,
    h2: bool,
    conn_state: Arc<ConnState>,
    limits: &Limits,
) -> (Pin<Box<TimedIo<T>>>, Arc<ConnState>, bool) {
    let io = Box::pin(TimedIo::new(
        tls,
        conn_state.clone(),
        Timeouts::new(limits, !h2),
    ));
    (io, conn_state, h2)
}

/// The outcome of a handshake run under the handshake timeout; failures are logged.
fn handshake_done<T>(
    outcome: Result<io::Result<T>, tokio::time::error::Elapsed>,
    who: Who<'_>,
) -> Option<T> {
    let failure = match outcome {
        Ok(Ok(t)) => return Some(t),
        Ok(Err(e)) => HandshakeFailure::from_io(&e),
        Err(_) => HandshakeFailure::HandshakeTimeout,
    };
    events::handshake_failed(who.peer, who.sni, &failure, who.raw);
    None
}

/// [`establish`] for a site that accepts 0-RTT: the stream is ready once the handshake is
/// complete or the client's early data is in.
async fn establish_early(
    accepted: Box<Accepted>,
    tcp: TcpStream,
    config: Arc<rustls::ServerConfig>,
    limits: &Limits,
    who: Who<'_>,
    facts: bool,
) -> Option<Ready<EarlyTls>> {
    let conn = match accepted.into_connection(config) {
        Ok(c) => c,
        Err((e, mut alert)) => {
            let _ = alert.write(&mut SyncIo(&tcp));
            let failure = HandshakeFailure::from_rustls(&e);
            events::handshake_failed(who.peer, who.sni, &failure, who.raw);
            return None;
        }
    };
    let conn_state = Arc::new(ConnState::default());
    let mut tls = EarlyTls::new(tcp, conn, conn_state.clone());
    let started = tokio::time::timeout(limits.handshake_timeout, tls.start()).await;
    handshake_done(started, who)?;
    let h2 = tls.connection().alpn_protocol() == Some(b"h2");
    // Access log (hook): the TLS facts, once per connection.
    let facts = facts.then(|| TlsFacts::of(tls.connection(), who.sni));
    let (io, state, h2) = timed(tls, h2, conn_state, limits);
    Some((io, state, h2, facts))
}

/// What the ClientHello decides.
pub(crate) struct Hello {
    /// Boxed: large, and alive across the on-demand wait.
    pub(crate) accepted: Box<Accepted>,
    pub(crate) sni: Option<String>,
    /// The site whose configuration answers, if any.
    pub(crate) site: Option<usize>,
    /// A pending TLS-ALPN-01 challenge for this name, when the client asked for `acme-tls/1`.
    pub(crate) acme: Option<Option<Arc<rustls::ServerConfig>>>,
    /// The SNI name is one a site lists (or there is none).
    pub(crate) listed: bool,
    /// The raw ClientHello, kept for the TLS event log (when it is on).
    pub(crate) raw: Option<Box<[u8]>>,
}

/// Reads the ClientHello and picks the site (or the ACME challenge) it is for.
async fn read_hello(
    tcp: &TcpStream,
    peer: SocketAddr,
    state: &ServerState,
) -> io::Result<Option<Hello>> {
    let hello = read_client_hello(tcp, peer, &state.front.https_port_suffix).await?;
    let Some((accepted, raw)) = hello else {
        return Ok(None);
    };
    let mut hello = hello_for(accepted, &state.tls, &state.tls_alpn);
    hello.raw = raw;
    Ok(Some(hello))
}

/// Picks the site (or the ACME challenge) a ClientHello is for.
pub(crate) fn hello_for(
    accepted: Box<Accepted>,
    tls: &TlsFront,
    tls_alpn: &TlsAlpnChallenges,
) -> Hello {
    let hello = accepted.client_hello();
    let sni = hello.server_name().map(str::to_owned);
    // One table lookup: whether a site lists the name, and which site answers.
    let listed_site = sni.as_ref().and_then(|n| tls.sni.get(n).copied());
    let listed = sni.is_none() || listed_site.is_some();
    let site = match &sni {
        None => Some(tls.default_site),
        Some(_) => listed_site.or(match tls.unknown_sni {
            UnknownSni::DefaultSite => Some(tls.default_site),
            UnknownSni::Reject => None,
        }),
    };
    // ACME TLS-ALPN-01 validation (RFC 8737): answered from the challenge store, never a site.
    let acme = hello
        .alpn()
        .is_some_and(|mut p| p.any(|p| p == ACME_TLS_ALPN));
    let acme = acme.then(|| sni.as_deref().and_then(|n| tls_alpn.get(n)));
    Hello {
        accepted,
        sni,
        site,
        acme,
        listed,
        raw: None,
    }
}

/// An automatic certificate not obtained yet: a definite alert and a log line that says why,
/// instead of rustls's generic handshake_failure.
async fn refuse_pending(
    mut tcp: TcpStream,
    peer: SocketAddr,
    state: &ServerState,
    site: usize,
    sni: Option<&str>,
) {
    let now = crate::tls::certs::unix_now();
    let last = PENDING_WARNED.load(std::sync::atomic::Ordering::Relaxed);
    let name = state.front.sites.get(site).map_or("", |s| s.name.as_str());
    if now - last >= 60
        && PENDING_WARNED
            .compare_exchange(
                last,
                now,
                std::sync::atomic::Ordering::Relaxed,
                std::sync::atomic::Ordering::Relaxed,
            )
            .is_ok()
    {
        tracing::warn!(%peer, site = name, sni = sni.unwrap_or(""), "handshake refused (internal_error alert): the site's certificate is still being obtained; progress: `portcullis certs` and the ACME log lines");
    } else {
        tracing::debug!(%peer, site = name, "handshake refused: certificate pending");
    }
    let _ = tcp.write_all(&ALERT_INTERNAL_ERROR).await;
}

pub async fn serve_tls(
    tcp: TcpStream,
    peer: SocketAddr,
    state: Arc<ServerState>,
    ctx: Arc<WorkerCtx>,
    mut shutdown: watch::Receiver<bool>,
    overloaded: bool,
    _guard: ConnGuard,
) {
    // Memory: this future lives as long as the connection, so it is sized by its largest
    // state. Everything large and short-lived (the ClientHello read, the handshake, rustls's
    // `Accepted`) is boxed and freed when done, and the TLS stream goes into its (boxed)
    // TimedIo right after the handshake: an idle connection's task holds pointers only.
    let limits = &state.limits;
    // metrics: handshake duration from here; the connection counts as handshaking.
    let started = std::time::Instant::now();
    let mut open = metrics::OpenConn::new(ConnKind::TlsHandshaking);
    let hello = Box::pin(tokio::time::timeout(
        limits.handshake_timeout,
        read_hello(&tcp, peer, &state),
    ));
    let Hello {
        accepted,
        sni,
        site,
        acme,
        listed,
        raw,
    } = match hello.await {
        Ok(Ok(Some(x))) => x,
        Ok(Ok(None)) => return,
        Ok(Err(e)) => {
            events::handshake_failed(peer, None, &HandshakeFailure::from_io(&e), None);
            return;
        }
        Err(_) => {
            events::handshake_failed(peer, None, &HandshakeFailure::NoClientHello, None);
            return;
        }
    };
    let who = Who {
        peer,
        sni: sni.as_deref(),
        raw: raw.as_deref(),
    };
    let mut site = site;
    if let Some(challenge) = acme {
        Box::pin(answer_tls_alpn_01(
            tcp,
            *accepted,
            challenge,
            peer,
            sni,
            limits.handshake_timeout,
        ))
        .await;
        return;
    }
    // Over the client's handshake rate: closed before the server's first flight (an ACME
    // validation above is never refused: the CA's validators share addresses).
    if let Err(refused) = state.client_limits.handshake(peer.ip()) {
        drop(accepted);
        tracing::debug!(%peer, "TLS handshake refused: per-client handshake rate");
        crate::ops::limits_dropped(refused.kind());
        Box::pin(linger_close(&tcp)).await;
        return;
    }
    let mut on_demand = false;
    if let (Some(od), Some(name), false) = (&state.tls.on_demand, &sni, listed) {
        // On-demand TLS: an approved name gets its certificate now.
        if Box::pin(od.admit(name, crate::acme::on_demand::HANDSHAKE_WAIT)).await {
            site = Some(od.settings.site);
            on_demand = true;
        }
    }
    let Some(site) = site else {
        drop(accepted);
        events::handshake_failed(peer, who.sni, &HandshakeFailure::UnknownSni, who.raw);
        let mut tcp = tcp;
        let _ = tcp.write_all(&ALERT_UNRECOGNIZED_NAME).await;
        return;
    };
    if !on_demand && state.tls.certs[site].is_empty() {
        drop(accepted);
        events::handshake_failed(
            peer,
            who.sni,
            &HandshakeFailure::CertificatePending,
            who.raw,
        );
        Box::pin(refuse_pending(tcp, peer, &state, site, sni.as_deref())).await;
        return;
    }
    let config = state.tls.configs[site].clone();
    let local = tcp
        .local_addr()
        .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
    let client_limits = state.client_limits.for_requests(peer.ip());
    let sni_site = sni.as_ref().map(|_| site);
    let svc = |conn, client_cert, tls| HttpsService {
        front: state.front.clone(),
        sni_site,
        conn,
        peer,
        local,
        overloaded,
        host_memo: Default::default(),
        client_cert,
        client_limits: client_limits.clone(),
        tls,
    };
    let facts = state.front.logs_on;
    if config.max_early_data_size > 0 {
        let established = Box::pin(establish_early(accepted, tcp, config, limits, who, facts));
        let Some((io, conn_state, h2, tls)) = established.await else {
            return;
        };
        handshake_metrics(io.get_ref().connection(), started, h2, &mut open); // metrics
                                                                              // No client certificate: the configuration refuses early data with client_auth.
        let svc = svc(conn_state, None, tls);
        drop(raw);
        drop(sni);
        serve_https(io, h2, svc, &ctx, shutdown, state.retired(), peer).await;
        return;
    }
    let established = Box::pin(establish(accepted, tcp, config, limits, who, facts));
    let Some((mut io, conn_state, h2, tls_facts)) = established.await else {
        return;
    };
    handshake_metrics(io.get_ref().get_ref().1, started, h2, &mut open); // metrics
    drop(raw);
    let tls = io.as_mut().inner_mut().get_mut();
    // Verified by the site's client_auth during the handshake (or carried by the resumed
    // session); parsed once for all requests of the connection.
    let client_cert = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .map(|c| Arc::new(crate::http::access::ClientCert::from_der(c)));
    // The session ticket(s) go out with the first response (or SETTINGS frame).
    tls.get_mut().0.release(conn_state.clone());
    if !h2 {
        // HTTP/1.1: wait for the request's first bytes before handing the connection to hyper,
        // so a connection that sits idle after its handshake holds no HTTP buffers (nginx
        // allocates its request buffer the same way). Records rustls already holds count.
        let buffered = match tls.get_mut().1.process_new_packets() {
            Ok(io) => io.plaintext_bytes_to_read() > 0 || io.peer_has_closed(),
            Err(_) => true, // let hyper read and report the error
        };
        // A read that finds nothing also lets rustls release its receive buffer (patched
        // rustls, vendor/rustls/PORTCULLIS.md): the connection waits without it.
        let buffered = buffered
            || {
                let (cork, conn) = tls.get_mut();
                match conn.read_tls(&mut SyncIo(cork.get_ref())) {
                    Ok(0) => return,
                    Ok(_) => {
                        // Processed here: the stream's first read would not process what is
                        // already in rustls's buffer.
                        if let Err(e) = conn.process_new_packets() {
                            limited!(AFTER_HANDSHAKE, debug, %peer, error = %e, "TLS error after the handshake");
                            let _ = conn.write_tls(&mut SyncIo(cork.get_ref())); // the alert
                            return;
                        }
                        true
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => false,
                    Err(_) => return,
                }
            };
        if !buffered {
            // Nothing is held while waiting for the peer (a TLS 1.2 client waits for our
            // Finished).
            if tls.get_mut().0.send_held().await.is_err() {
                return;
            }
            let wait = limits.header_timeout.min(limits.idle_timeout);
            let readable = io.get_ref().get_ref().0.get_ref().readable();
            tokio::select! {
                r = tokio::time::timeout(wait, readable) => match r {
                    Ok(Ok(())) => {}
                    Ok(Err(_)) => return,
                    Err(_) => {
                        limited!(NO_REQUEST, debug, %peer, "no request after the handshake: closing");
                        return;
                    }
                },
                _ = shutdown.changed() => return,
            }
        }
    }
    let svc = svc(conn_state, client_cert, tls_facts);
    drop(sni);
    serve_https(io, h2, svc, &ctx, shutdown, state.retired(), peer).await;
}

/// metrics: a completed handshake (version, full or resumed, time since `started`), and the
/// connection now counts as HTTP/1.1 or HTTP/2.
fn handshake_metrics(
    conn: &rustls::ServerConnection,
    started: std::time::Instant,
    h2: bool,
    open: &mut metrics::OpenConn,
) {
    let resumed = conn.handshake_kind() == Some(rustls::HandshakeKind::Resumed);
    metrics::handshake_done(conn.protocol_version(), resumed, started.elapsed());
    open.become_(if h2 { ConnKind::H2 } else { ConnKind::Http1 });
}

/// Serves HTTP/1.1 or HTTP/2 over an established TLS stream until the connection ends.
/// `shutdown`: the server stops (HTTP/1.1 closes idle connections and after the current
/// response); `retire`: the connection's configuration is retired (HTTP/2 says GOAWAY, and
/// the service marks HTTP/1.1's next response as the last).
async fn serve_https<T>(
    io: Pin<Box<TimedIo<T>>>,
    h2: bool,
    svc: HttpsService,
    ctx: &WorkerCtx,
    mut shutdown: watch::Receiver<bool>,
    retire: watch::Receiver<bool>,
    peer: SocketAddr,
) where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + 'static,
{
    if h2 {
        // Our own HTTP/2 connection (server::h2); it handles the shutdown signal itself.
        if let Err(e) = super::h2::serve(io, svc, ctx.h2_limits, retire).await {
            limited!(H2_ERROR, debug, %peer, error = %e, "HTTP/2 connection ended with an error");
        }
        return;
    }
    let io = TokioIo::new(io);
    // Overloaded connections get a 503 with `Connection: close` (see HttpsService).
    // With upgrades: a proxied WebSocket takes the connection over after its 101.
    let mut conn = Box::pin(ctx.h1.serve_connection(io, svc).with_upgrades());
    let result = tokio::select! {
        r = conn.as_mut() => r,
        _ = shutdown.changed() => { conn.as_mut().graceful_shutdown(); conn.await }
    };
    if let Err(e) = result {
        limited!(H1_ERROR, debug, %peer, error = %e, "connection ended with an error");
    }
}

/// Serves one plain-HTTP (port 80) connection: redirects and ACME HTTP-01.
pub async fn serve_http(
    tcp: TcpStream,
    peer: SocketAddr,
    state: Arc<ServerState>,
    ctx: Arc<WorkerCtx>,
    mut shutdown: watch::Receiver<bool>,
    _guard: ConnGuard,
) {
    let limits = &state.limits;
    let _open = metrics::OpenConn::new(ConnKind::PlainHttp); // metrics
    let conn_state = Arc::new(ConnState::default());
    let timeouts = Timeouts::new(limits, true);
    let io = TokioIo::new(Box::pin(TimedIo::new(tcp, conn_state.clone(), timeouts)));
    let svc = RedirectService {
        front: state.front.clone(),
        conn: conn_state,
        peer,
    };
    let conn = ctx.h1.serve_connection(io, svc);
    tokio::pin!(conn);
    let result = tokio::select! {
        r = conn.as_mut() => r,
        _ = shutdown.changed() => { conn.as_mut().graceful_shutdown(); conn.await }
    };
    if let Err(e) = result {
        limited!(HTTP_ERROR, debug, %peer, error = %e, "http connection ended with an error");
    }
}
