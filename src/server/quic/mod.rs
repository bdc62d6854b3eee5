//! HTTP/3 over QUIC: endpoints, admission and connection life. The HTTP/3 protocol driver is
//! [`h3`]; requests go through the same [`HttpsService`] as HTTP/1.1 and HTTP/2.
//!
//! **One endpoint per worker.** Every HTTPS address gets a group of UDP sockets with
//! `SO_REUSEPORT`, one per worker (see [`super::listener::bind_udp_group`]), and each worker
//! runs a quinn endpoint on its own socket, on its own current-thread runtime: the kernel hashes
//! a datagram's source address and port to one socket of the group, so all packets of a
//! connection reach the worker that owns it, and no packet, connection state or lock crosses
//! threads. Active migration is off (the transport parameter `disable_active_migration`): a
//! client that changed its address would hash to another worker, which does not know the
//! connection. A NAT rebinding has the same effect; the connection then ends (the other
//! worker answers with a stateless reset, keyed the same in every worker) and the client
//! reconnects, as it would after a server restart. nginx makes the same trade without its
//! eBPF steering.
//!
//! `h3_endpoints = "shared"` is the other design, kept to be measured against this one and
//! for deployments whose clients move between networks: one socket and one endpoint for the
//! process, on the first worker, which reads every packet and hands each connection's to the
//! worker running it (quinn's endpoint driver passes them over channels; the connection's
//! driver and its requests run on one worker, chosen round robin when it is accepted). Migration
//! is on then. The figures are in BENCHMARKS.md.
//!
//! quinn-udp uses UDP GSO (one `sendmsg` for a train of datagrams) and GRO where the kernel
//! has them, and ECN.
//!
//! **Admission**, in the order the cost grows: a client that has not shown it receives at its
//! address gets a Retry (always, or while more than `h3_retry_threshold` handshakes are in
//! progress: spoofed-source floods then cost one stateless packet each); then the connection
//! limit, the per-client connection limit and handshake rate (the same tables as TCP).
//!
//! **Shutdown and reload**: the connection's generation retired or the server stopping sends
//! HTTP/3 GOAWAY; requests in flight finish, then the connection closes with `H3_NO_ERROR`.

pub mod h3;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use super::{ConnGuard, Runtime, ServerState};
use crate::config::model::H3Retry;
use crate::config::Config;
use crate::http::{ConnState, HttpsService};
use crate::limited;
use crate::ops::access::TlsFacts;
use crate::ops::events::{self, HandshakeFailure};
use crate::ops::limit::{report_to_log, LineLimit};
use crate::ops::metrics::{self, ConnKind};
use crate::tls::quic::QuicCerts;

/// Budgets of the lines any client can cause.
static QUIC_ERROR: LineLimit = LineLimit::new("QUIC connection error", report_to_log);

/// `H3_NO_ERROR` (RFC 9114 §8.1): the code of a connection closed after its GOAWAY.
pub const H3_NO_ERROR: u32 = 0x100;

/// One generation's HTTP/3 side.
pub struct QuicFront {
    /// quinn's server configuration: TLS (see [`crate::tls::quic`]) and transport limits.
    pub config: Arc<quinn::ServerConfig>,
    pub certs: Arc<QuicCerts>,
    pub retry: H3Retry,
    pub retry_threshold: usize,
    /// Per site: 0-RTT requests are served (`early_data`); for the other sites, requests that
    /// arrive as 0-RTT wait until the handshake completes.
    pub site_early: Vec<bool>,
    /// The largest request head (QPACK field section) accepted.
    pub max_field_section: u64,
    /// One endpoint for the process (`h3_endpoints = "shared"`).
    pub shared: bool,
}

/// What outlives a generation: the Retry token key (a token issued before a reload still
/// validates after it), the stateless-reset key (the same in every worker), and the number of
/// handshakes in progress (for the Retry threshold).
pub struct QuicProcess {
    token_key: Arc<dyn quinn::crypto::HandshakeTokenKey>,
    reset_key: Arc<dyn quinn::crypto::HmacKey>,
    handshaking: AtomicUsize,
}

impl QuicProcess {
    pub fn new() -> Result<Self, String> {
        let rng = aws_lc_rs::rand::SystemRandom::new();
        let mut secret = [0u8; 32];
        aws_lc_rs::rand::SecureRandom::fill(&rng, &mut secret)
            .map_err(|_| "cannot draw the QUIC token key: no system randomness".to_string())?;
        let token_key =
            aws_lc_rs::hkdf::Salt::new(aws_lc_rs::hkdf::HKDF_SHA256, &[]).extract(&secret);
        aws_lc_rs::rand::SecureRandom::fill(&rng, &mut secret)
            .map_err(|_| "cannot draw the QUIC reset key: no system randomness".to_string())?;
        let reset_key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, &secret);
        Ok(QuicProcess {
            token_key: Arc::new(token_key),
            reset_key: Arc::new(reset_key),
            handshaking: AtomicUsize::new(0),
        })
    }

    /// Handshakes in progress now (all workers).
    pub fn handshaking(&self) -> usize {
        self.handshaking.load(Ordering::Relaxed)
    }
}

/// Counts a handshake in progress until dropped.
struct Handshaking<'a>(&'a AtomicUsize);

impl<'a> Handshaking<'a> {
    fn new(n: &'a AtomicUsize) -> Self {
        n.fetch_add(1, Ordering::Relaxed);
        Handshaking(n)
    }
}

impl Drop for Handshaking<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl QuicFront {
    /// The HTTP/3 side of a configuration; `tls` is its TLS configuration for QUIC.
    pub fn new(
        config: &Config,
        process: &QuicProcess,
        tls: Arc<rustls::ServerConfig>,
        certs: Arc<QuicCerts>,
    ) -> Result<Self, String> {
        let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls)
            .map_err(|e| format!("HTTP/3 set-up failed: {e}"))?;
        let mut transport = quinn::TransportConfig::default();
        let streams = config.http.h3_max_concurrent_streams;
        transport
            .max_concurrent_bidi_streams(quinn::VarInt::from_u32(streams))
            // The client's control stream, QPACK encoder and decoder streams, and room for
            // the unidirectional streams of extensions it may open (grease, unused by us).
            .max_concurrent_uni_streams(quinn::VarInt::from_u32(8))
            .max_idle_timeout(Some(
                quinn::IdleTimeout::try_from(
                    config.limits.idle_timeout.min(Duration::from_secs(600)),
                )
                .map_err(|e| format!("limits.idle_timeout: {e}"))?,
            ))
            // The HTTP/2 window settings serve HTTP/3 too: per stream, and for the connection
            // several streams' worth.
            .stream_receive_window(quinn::VarInt::from_u32(config.http.h2_stream_window))
            .receive_window(quinn::VarInt::from_u32(
                config.http.h2_connection_window.saturating_mul(4),
            ))
            .send_window(8 * 1024 * 1024)
            .keep_alive_interval(None);
        let mut server = quinn::ServerConfig::new(Arc::new(crypto), process.token_key.clone());
        server
            .transport_config(Arc::new(transport))
            .migration(config.http.h3_shared_endpoint)
            .retry_token_lifetime(Duration::from_secs(15))
            .max_incoming(config.limits.max_connections.clamp(64, 1 << 16));
        Ok(QuicFront {
            config: Arc::new(server),
            certs,
            retry: config.http.h3_retry,
            retry_threshold: config.http.h3_retry_threshold,
            site_early: config.sites.iter().map(|s| s.early_data).collect(),
            max_field_section: config.limits.max_header_bytes as u64,
            shared: config.http.h3_shared_endpoint,
        })
    }
}

/// One worker's endpoint on one UDP socket of the listener `id`, until the listener is removed
/// by a reload, the server stops, or a new binary took over.
pub(super) async fn endpoint_loop(socket: std::net::UdpSocket, id: u64, rt: Arc<Runtime>) {
    let local = socket
        .local_addr()
        .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
    let mut state = rt.current.load_full();
    let Some(config) = state.quic.as_ref().map(|q| (*q.config).clone()) else {
        return;
    };
    let endpoint_config = quinn::EndpointConfig::new(rt.process.quic.reset_key.clone());
    let spread = state
        .quic
        .as_ref()
        .is_some_and(|q| q.shared)
        .then(|| Arc::new(Spread::new(rt.clone())));
    let runtime: Arc<dyn quinn::Runtime> = match &spread {
        Some(s) => s.clone(),
        None => Arc::new(quinn::TokioRuntime),
    };
    let endpoint = match quinn::Endpoint::new(endpoint_config, Some(config), socket, runtime) {
        Ok(e) => e,
        Err(e) => {
            tracing::error!(%local, error = %e, "cannot start the HTTP/3 endpoint; HTTP/3 is not served there");
            return;
        }
    };
    let mut stop = rt.stop.subscribe();
    let mut accepting = rt.accepting.subscribe();
    let mut changed = rt.listeners_changed.subscribe();
    loop {
        let incoming = tokio::select! {
            biased;
            _ = stop.wait_for(|stop| *stop) => break,
            _ = accepting.wait_for(|on| !*on) => break,
            r = changed.changed() => {
                if r.is_err() || rt.current.load().kind_of(id).is_none() {
                    break; // removed by a reload
                }
                continue;
            }
            i = endpoint.accept() => match i {
                Some(i) => i,
                None => break,
            },
        };
        let now = rt.current.load_full();
        if !Arc::ptr_eq(&now, &state) {
            state = now;
            if let Some(q) = &state.quic {
                endpoint.set_server_config(Some((*q.config).clone()));
            }
        }
        admit(incoming, &state, &rt, local, &stop, spread.as_deref());
    }
    // New connections are refused from here; the open ones finish (the endpoint's driver
    // lives while they do).
    endpoint.set_server_config(None);
}

/// Decides what a new connection attempt gets: a Retry, a refusal, or a connection.
fn admit(
    incoming: quinn::Incoming,
    state: &Arc<ServerState>,
    rt: &Arc<Runtime>,
    local: SocketAddr,
    stop: &watch::Receiver<bool>,
    spread: Option<&Spread>,
) {
    let Some(q) = &state.quic else {
        incoming.refuse();
        return;
    };
    let peer = incoming.remote_address();
    if !incoming.remote_address_validated() && incoming.may_retry() {
        let busy = rt.process.quic.handshaking() >= q.retry_threshold;
        if q.retry == H3Retry::Always || busy {
            // Stateless: the client comes back with a token that proves its address.
            if let Err(e) = incoming.retry() {
                tracing::debug!(%peer, error = %e, "QUIC Retry not sent");
            }
            metrics::quic_retry();
            return;
        }
    }
    let max = state.limits.max_connections;
    let (mut guard, n) = ConnGuard::new(&state.conns);
    if n > max {
        crate::ops::limits_dropped("max_connections");
        incoming.refuse();
        return;
    }
    if !guard.admit(state, peer.ip()) {
        incoming.refuse();
        return;
    }
    if let Err(refused) = state.client_limits.handshake(peer.ip()) {
        tracing::debug!(%peer, "QUIC handshake refused: per-client handshake rate");
        crate::ops::limits_dropped(refused.kind());
        incoming.refuse();
        return;
    }
    match incoming.accept_with(q.config.clone()) {
        Ok(connecting) => {
            let conn = serve(
                connecting,
                state.clone(),
                rt.clone(),
                guard,
                peer,
                local,
                stop.clone(),
            );
            match spread.and_then(Spread::last) {
                // Beside the connection's driver, which quinn just spawned there.
                Some(h) => drop(h.spawn(conn)),
                None => drop(tokio::spawn(conn)),
            }
        }
        Err(e) => {
            limited!(QUIC_ERROR, debug, %peer, error = %e, "QUIC connection not accepted");
        }
    }
}

/// One QUIC connection: the handshake, then HTTP/3 until it ends.
async fn serve(
    mut connecting: quinn::Connecting,
    state: Arc<ServerState>,
    rt: Arc<Runtime>,
    _guard: ConnGuard,
    peer: SocketAddr,
    local: SocketAddr,
    stop: watch::Receiver<bool>,
) {
    let Some(q) = &state.quic else { return };
    let limits = &state.limits;
    let started = Instant::now();
    let mut open = metrics::OpenConn::new(ConnKind::TlsHandshaking); // metrics
    let handshaking = Handshaking::new(&rt.process.quic.handshaking);
    // The ClientHello is read: its SNI names the site.
    let sni =
        match tokio::time::timeout(limits.handshake_timeout, connecting.handshake_data()).await {
            Ok(Ok(data)) => data
                .downcast::<quinn::crypto::rustls::HandshakeData>()
                .ok()
                .and_then(|d| d.server_name),
            Ok(Err(e)) => {
                failed(peer, None, &e);
                return;
            }
            Err(_) => {
                events::handshake_failed(peer, None, &HandshakeFailure::NoClientHello, None);
                return;
            }
        };
    let Some(site) = q.certs.site_of(sni.as_deref()) else {
        // The resolver refused the handshake already (unrecognized name).
        events::handshake_failed(peer, sni.as_deref(), &HandshakeFailure::UnknownSni, None);
        return;
    };
    let conn_state = Arc::new(ConnState::default());
    let conn = if q.site_early[site] {
        // 0-RTT: requests are served before the handshake completes; those that may not be
        // repeated get 425 Too Early (`ConnState::early`, as on TCP) until it has.
        let Ok((conn, established)) = connecting.into_0rtt() else {
            return; // a server connection always converts
        };
        conn_state.early.store(true, Ordering::Relaxed);
        let early = conn_state.clone();
        let watch = conn.clone();
        let timeout = limits.handshake_timeout;
        tokio::spawn(async move {
            if tokio::time::timeout(timeout, established).await.is_err() {
                watch.close(quinn::VarInt::from_u32(0), b"handshake timeout");
            }
            early.early.store(false, Ordering::Relaxed);
        });
        conn
    } else {
        // 0-RTT data of a site that does not accept it waits, in quinn's stream buffers, for
        // the handshake to complete (an attacker replaying it cannot complete it).
        match tokio::time::timeout(limits.handshake_timeout, connecting).await {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => {
                failed(peer, sni.as_deref(), &e);
                return;
            }
            Err(_) => {
                events::handshake_failed(
                    peer,
                    sni.as_deref(),
                    &HandshakeFailure::HandshakeTimeout,
                    None,
                );
                return;
            }
        }
    };
    drop(handshaking);
    // metrics: quinn does not tell whether the session was resumed; QUIC handshakes count as
    // TLS 1.3 full ones.
    metrics::handshake_done(
        Some(rustls::ProtocolVersion::TLSv1_3),
        false,
        started.elapsed(),
    );
    open.become_(ConnKind::H3);
    let tls = state.front.logs_on.then(|| {
        Arc::new(TlsFacts {
            version: "TLSv1.3",
            cipher: "",
            group: "",
            alpn: "h3",
            sni: sni.as_deref().map(Into::into),
            resumed: false,
        })
    });
    let overloaded = state.open_connections() > state.limits.max_connections;
    let svc = HttpsService {
        front: state.front.clone(),
        sni_site: sni.as_ref().map(|_| site),
        conn: conn_state,
        peer,
        local,
        overloaded,
        host_memo: Default::default(),
        client_cert: None,
        client_limits: state.client_limits.for_requests(peer.ip()),
        tls,
    };
    h3::serve(
        conn,
        svc,
        q.max_field_section,
        limits,
        stop,
        state.retired(),
    )
    .await;
}

/// quinn's runtime for a shared endpoint: the endpoint's own driver runs on the worker that
/// made it, each connection's driver on the next worker in turn.
struct Spread {
    rt: Arc<Runtime>,
    next: AtomicUsize,
    /// The worker given the last connection (its requests go there too).
    last: std::sync::Mutex<Option<tokio::runtime::Handle>>,
}

impl Spread {
    fn new(rt: Arc<Runtime>) -> Self {
        Spread {
            rt,
            next: AtomicUsize::new(0),
            last: std::sync::Mutex::new(None),
        }
    }

    fn last(&self) -> Option<tokio::runtime::Handle> {
        self.last.lock().ok()?.take()
    }
}

impl std::fmt::Debug for Spread {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Spread").finish_non_exhaustive()
    }
}

impl quinn::Runtime for Spread {
    fn new_timer(&self, i: Instant) -> std::pin::Pin<Box<dyn quinn::AsyncTimer>> {
        quinn::TokioRuntime.new_timer(i)
    }

    fn spawn(&self, future: std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>) {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let handle = {
            let handles = self.rt.handles.lock().unwrap_or_else(|p| p.into_inner());
            let up: Vec<_> = handles.iter().flatten().collect();
            // The first spawn is the endpoint's driver: it stays here.
            (n > 0 && !up.is_empty()).then(|| up[n % up.len()].clone())
        };
        match handle {
            Some(h) => {
                h.spawn(future);
                if let Ok(mut last) = self.last.lock() {
                    *last = Some(h);
                }
            }
            None => drop(tokio::spawn(future)),
        }
    }

    fn wrap_udp_socket(
        &self,
        t: std::net::UdpSocket,
    ) -> std::io::Result<Arc<dyn quinn::AsyncUdpSocket>> {
        quinn::TokioRuntime.wrap_udp_socket(t)
    }
}

/// Logs a failed QUIC handshake with its reason.
fn failed(peer: SocketAddr, sni: Option<&str>, e: &quinn::ConnectionError) {
    events::handshake_failed(peer, sni, &failure(e), None);
}

/// The reason a QUIC connection error gives for a failed handshake.
pub fn failure(e: &quinn::ConnectionError) -> HandshakeFailure {
    use quinn::ConnectionError as E;
    match e {
        E::TimedOut => HandshakeFailure::HandshakeTimeout,
        E::TransportError(t) => match crypto_alert(t.code) {
            // Our TLS stack failed the handshake: its words.
            Some(_) => HandshakeFailure::ProtocolError(t.reason.clone()),
            None => HandshakeFailure::ProtocolError(t.to_string()),
        },
        E::ConnectionClosed(c) => match crypto_alert(c.error_code) {
            Some(alert) => {
                let alert = rustls::AlertDescription::from(alert);
                if events::is_certificate_alert(alert) {
                    HandshakeFailure::ClientRejectedCertificate(alert)
                } else {
                    HandshakeFailure::ClientAlert(alert)
                }
            }
            None => HandshakeFailure::ClientClosed,
        },
        E::ApplicationClosed(_) | E::Reset => HandshakeFailure::ClientClosed,
        other => HandshakeFailure::Other(other.to_string()),
    }
}

/// The TLS alert a QUIC `CRYPTO_ERROR` code carries (0x0100–0x01ff, RFC 9001 §4.8).
fn crypto_alert(code: quinn::TransportErrorCode) -> Option<u8> {
    let code = u64::from(code);
    (0x100..=0x1ff)
        .contains(&code)
        .then(|| (code - 0x100) as u8)
}
