//! `[[stream]]` services: TLS for any TCP service.
//!
//! A connection's ClientHello is read (bytes kept), a route is picked by SNI and ALPN
//! ([`route`]), and then either
//! * TLS is terminated with the route's certificate (held by the same resolvers, renewals and
//!   ACME manager as sites' certificates) and the plaintext is piped to the backend, or
//! * the ClientHello and everything after it go to the backend untouched (passthrough).
//!
//! Either way a PROXY protocol header may go first, and [`pipe`] moves the bytes with
//! half-close and an idle timeout. Not here: accepting (the workers' accept loops in
//! `server`), certificates (`server::Server::start`).

pub mod pipe;
pub mod route;

use std::io::{self, Write};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use std::time::Duration;

use rustls::server::{Accepted, Acceptor};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpStream, UnixStream};
use tokio_rustls::StartHandshake;

use crate::config::stream::{Stream, StreamMode, StreamRoute, Upstream};
use crate::ops::events::{self, HandshakeFailure};
use crate::ops::limit::{report_to_log, LineLimit};
use crate::server::conn::{
    linger_close, SyncIo, ALERT_DECODE_ERROR, ALERT_INTERNAL_ERROR, ALERT_UNRECOGNIZED_NAME,
};
use crate::tls::resolver::SiteCerts;

/// Most ClientHello bytes read before routing (rustls's own limit for a handshake message).
const MAX_HELLO: usize = 64 * 1024;

/// One running stream service.
pub struct StreamService {
    pub name: String,
    routes: Vec<StreamRoute>,
    /// Per route: for terminating routes, the TLS config (with the route's ALPN) and its
    /// certificates.
    tls: Vec<Option<(Arc<rustls::ServerConfig>, Arc<SiteCerts>)>>,
    connect_timeout: Duration,
    idle_timeout: Duration,
    max_connections: usize,
    open: AtomicUsize,
}

impl StreamService {
    /// `tls(cert, alpn)` gives the TLS config for the stream's certificate `cert` offering
    /// `alpn`, and that certificate's resolver.
    pub fn new<F>(stream: &Stream, mut tls: F) -> Result<Self, String>
    where
        F: FnMut(usize, &[Vec<u8>]) -> Result<(Arc<rustls::ServerConfig>, Arc<SiteCerts>), String>,
    {
        let mut configs = Vec::new();
        for r in &stream.routes {
            configs.push(match &r.mode {
                StreamMode::Terminate { cert, alpn } => Some(tls(*cert, alpn)?),
                StreamMode::Passthrough => None,
            });
        }
        Ok(StreamService {
            name: stream.name.clone(),
            routes: stream.routes.clone(),
            tls: configs,
            connect_timeout: stream.connect_timeout,
            idle_timeout: stream.idle_timeout,
            max_connections: stream.max_connections,
            open: AtomicUsize::new(0),
        })
    }

    /// Takes a connection slot, or `None` at `max_connections`.
    pub fn admit(self: &Arc<Self>) -> Option<Slot> {
        let n = self.open.fetch_add(1, Ordering::Relaxed);
        let slot = Slot(self.clone());
        (n < self.max_connections).then_some(slot)
    }

    /// Connections open now.
    pub fn open_connections(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }
}

/// A connection counted against its stream's `max_connections` while it lives.
pub struct Slot(Arc<StreamService>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Serves one accepted connection of `slot`'s stream from `peer` to its end.
pub async fn serve(tcp: TcpStream, peer: SocketAddr, slot: Slot, handshake_timeout: Duration) {
    let svc = &*slot.0;
    let read = tokio::time::timeout(handshake_timeout, read_hello(&tcp, peer, &svc.name));
    let (bytes, accepted) = match Box::pin(read).await {
        Ok(Some(x)) => x,
        Ok(None) => return,
        Err(_) => {
            events::handshake_failed(peer, None, &HandshakeFailure::NoClientHello, None);
            return;
        }
    };
    let hello = accepted.client_hello();
    let sni = hello.server_name().map(str::to_owned);
    let alpn: Vec<&[u8]> = hello.alpn().map(|a| a.collect()).unwrap_or_default();
    let picked = route::pick(&svc.routes, sni.as_deref(), &alpn);
    drop(alpn);
    let Some(i) = picked else {
        let failure = HandshakeFailure::UnknownSni;
        events::handshake_failed(peer, sni.as_deref(), &failure, Some(&bytes));
        let _ = SyncIo(&tcp).write(&ALERT_UNRECOGNIZED_NAME);
        linger_close(&tcp).await;
        return;
    };
    let local = tcp.local_addr().ok();
    let route = &svc.routes[i];
    match &svc.tls[i] {
        None => {
            drop(accepted);
            let Some(mut upstream) = connect(svc, route, peer, local).await else {
                return;
            };
            // The ClientHello as it came, then everything after it.
            if let Err(e) = upstream.write_all(&bytes).await {
                tracing::info!(stream = svc.name, %peer, upstream = %route.upstream, error = %e, "backend closed before taking the ClientHello");
                return;
            }
            drop(bytes);
            let mut tcp = tcp;
            finish(
                svc,
                peer,
                route,
                pipe::pipe(&mut tcp, &mut upstream, svc.idle_timeout).await,
            );
        }
        Some((config, certs)) => {
            // Kept for the TLS event log only.
            let raw = events::enabled().then_some(bytes);
            let raw = raw.as_deref();
            if certs.is_empty() {
                let failure = HandshakeFailure::CertificatePending;
                events::handshake_failed(peer, sni.as_deref(), &failure, raw);
                crate::limited!(PENDING, warn, stream = svc.name, %peer, sni = sni.as_deref().unwrap_or(""), "handshake refused (internal_error alert): the certificate is still being obtained; progress: `portcullis certs` and the ACME log lines");
                let _ = SyncIo(&tcp).write(&ALERT_INTERNAL_ERROR);
                linger_close(&tcp).await;
                return;
            }
            let handshake = StartHandshake::from_parts(*accepted, tcp).into_stream(config.clone());
            let mut tls = match tokio::time::timeout(handshake_timeout, handshake).await {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => {
                    let failure = HandshakeFailure::from_io(&e);
                    events::handshake_failed(peer, sni.as_deref(), &failure, raw);
                    return;
                }
                Err(_) => {
                    let failure = HandshakeFailure::HandshakeTimeout;
                    events::handshake_failed(peer, sni.as_deref(), &failure, raw);
                    return;
                }
            };
            let Some(mut upstream) = connect(svc, route, peer, local).await else {
                // close_notify, so the client sees an orderly end rather than a reset.
                let _ = tls.shutdown().await;
                return;
            };
            finish(
                svc,
                peer,
                route,
                pipe::pipe(&mut tls, &mut upstream, svc.idle_timeout).await,
            );
        }
    }
}

/// A stream's certificate not obtained yet: its warning, limited.
static PENDING: LineLimit = LineLimit::new("stream certificate pending", report_to_log);
static ENDED: LineLimit = LineLimit::new("stream connection ended", report_to_log);

fn finish(svc: &StreamService, peer: SocketAddr, route: &StreamRoute, r: io::Result<pipe::Ended>) {
    match r {
        Ok(pipe::Ended::Closed(up, down)) => {
            tracing::debug!(stream = svc.name, %peer, upstream = %route.upstream, up, down, "connection closed")
        }
        Ok(pipe::Ended::Idle(up, down)) => {
            tracing::debug!(stream = svc.name, %peer, upstream = %route.upstream, up, down, "idle timeout: connection closed")
        }
        Err(e) => {
            crate::limited!(ENDED, debug, stream = svc.name, %peer, upstream = %route.upstream, error = %e, "connection ended with an error")
        }
    }
}

/// Reads until the ClientHello is complete: the bytes as they came (for passthrough) and
/// rustls's view of them. `None`: the peer went away or sent no valid ClientHello (an alert
/// has been sent where one applies).
async fn read_hello(
    tcp: &TcpStream,
    peer: SocketAddr,
    name: &str,
) -> Option<(Vec<u8>, Box<Accepted>)> {
    let mut acceptor = Acceptor::default();
    let mut bytes = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        tcp.readable().await.ok()?;
        let n = match tcp.try_read(&mut chunk) {
            Ok(0) => return None,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(_) => return None,
        };
        if bytes.len() + n > MAX_HELLO {
            let _ = name;
            let failure = HandshakeFailure::ClientHelloTooLarge;
            events::handshake_failed(peer, None, &failure, None);
            let _ = SyncIo(tcp).write(&ALERT_DECODE_ERROR);
            linger_close(tcp).await;
            return None;
        }
        bytes.extend_from_slice(&chunk[..n]);
        let mut rd = &chunk[..n];
        while !rd.is_empty() {
            if let Err(e) = acceptor.read_tls(&mut rd) {
                let failure = HandshakeFailure::ProtocolError(e.to_string());
                events::handshake_failed(peer, None, &failure, Some(&bytes));
                let _ = SyncIo(tcp).write(&ALERT_DECODE_ERROR);
                linger_close(tcp).await;
                return None;
            }
        }
        match acceptor.accept() {
            Ok(Some(accepted)) => return Some((bytes, Box::new(accepted))),
            Ok(None) => {}
            Err((e, mut alert)) => {
                let failure = if bytes.first() != Some(&0x16) {
                    HandshakeFailure::NotTls
                } else {
                    HandshakeFailure::from_rustls(&e)
                };
                events::handshake_failed(peer, None, &failure, Some(&bytes));
                let _ = alert.write(&mut SyncIo(tcp));
                linger_close(tcp).await;
                return None;
            }
        }
    }
}

/// Connects to the route's backend within the connect timeout and sends the PROXY header.
/// Failures are logged with what failed.
async fn connect(
    svc: &StreamService,
    route: &StreamRoute,
    peer: SocketAddr,
    local: Option<SocketAddr>,
) -> Option<Backend> {
    let attempt = async {
        match &route.upstream {
            Upstream::Addr(a) => TcpStream::connect(a).await.map(Backend::Tcp),
            Upstream::Host(h, p) => TcpStream::connect((h.as_str(), *p)).await.map(Backend::Tcp),
            Upstream::Unix(path) => UnixStream::connect(path).await.map(Backend::Unix),
        }
    };
    let mut backend = match tokio::time::timeout(svc.connect_timeout, attempt).await {
        Ok(Ok(b)) => b,
        Ok(Err(e)) => {
            tracing::warn!(stream = svc.name, %peer, upstream = %route.upstream, error = %e, "cannot connect to the backend");
            return None;
        }
        Err(_) => {
            tracing::warn!(stream = svc.name, %peer, upstream = %route.upstream, timeout = ?svc.connect_timeout, "connecting to the backend timed out");
            return None;
        }
    };
    if let Backend::Tcp(t) = &backend {
        let _ = t.set_nodelay(true);
    }
    if let Some(version) = route.proxy_protocol {
        let header = match local {
            Some(local) => crate::proxy_protocol::encode(version, peer, local),
            None => crate::proxy_protocol::encode_local(version),
        };
        if let Err(e) = backend.write_all(&header).await {
            tracing::warn!(stream = svc.name, %peer, upstream = %route.upstream, error = %e, "backend closed before taking the PROXY header");
            return None;
        }
    }
    Some(backend)
}

/// A backend connection: the reverse proxy's byte stream to a backend (TCP or Unix here).
use crate::outbound::Io as Backend;
