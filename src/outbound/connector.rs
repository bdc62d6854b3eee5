//! New connections to backends: TCP (with name resolution), Unix sockets, TLS with ALPN, and
//! the PROXY protocol header sent first when the backend wants the client's address.
//!
//! What happens on the connection afterwards (HTTP/1.1 or HTTP/2) is [`super::pool`]'s.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, SignatureScheme};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpStream, UnixStream};
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use super::error::{TlsFailure, UpstreamError};
use super::ClientAddrs;
use crate::config::proxy::{ProxyProtocol, UpstreamAddr, UpstreamScheme, UpstreamTlsSpec};

/// How often names of upstreams are looked up again (tokio's resolver gives no TTLs; a
/// fixed period keeps DNS changes bounded without a resolver crate).
pub const RESOLVE_EVERY: Duration = Duration::from_secs(30);

/// A byte stream to a backend.
pub enum Io {
    Tcp(TcpStream),
    Unix(UnixStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl AsyncRead for Io {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Io::Unix(s) => Pin::new(s).poll_read(cx, buf),
            Io::Tls(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Io {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Io::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            Io::Unix(s) => Pin::new(s).poll_write(cx, buf),
            Io::Tls(s) => Pin::new(s).poll_write(cx, buf),
        }
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Io::Tcp(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Io::Unix(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Io::Tls(s) => Pin::new(s).poll_write_vectored(cx, bufs),
        }
    }
    fn is_write_vectored(&self) -> bool {
        match self {
            Io::Tcp(s) => s.is_write_vectored(),
            Io::Unix(s) => s.is_write_vectored(),
            Io::Tls(s) => s.is_write_vectored(),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Tcp(s) => Pin::new(s).poll_flush(cx),
            Io::Unix(s) => Pin::new(s).poll_flush(cx),
            Io::Tls(s) => Pin::new(s).poll_flush(cx),
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Io::Unix(s) => Pin::new(s).poll_shutdown(cx),
            Io::Tls(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

/// A new connection and the protocol to speak on it.
pub struct Connected {
    pub io: Io,
    /// HTTP/2 (h2c, or ALPN selected h2); else HTTP/1.1.
    pub h2: bool,
}

/// Where one backend is, with its last resolved addresses.
pub struct Target {
    pub addr: UpstreamAddr,
    /// Addresses of a TCP upstream; for a DNS name, refreshed every [`RESOLVE_EVERY`].
    resolved: Mutex<Resolved>,
    pub proxy_protocol: Option<ProxyProtocol>,
    server_name: Option<ServerName<'static>>,
}

struct Resolved {
    addrs: Arc<[SocketAddr]>,
    /// Rotates the first address tried among several.
    next: usize,
}

impl Target {
    pub fn new(
        addr: UpstreamAddr,
        proxy_protocol: Option<ProxyProtocol>,
        tls: &UpstreamTlsSpec,
    ) -> Target {
        let mut addrs: Arc<[SocketAddr]> = Arc::new([]);
        let mut server_name = None;
        if let UpstreamAddr::Tcp { host, port, scheme } = &addr {
            if let Ok(ip) = host.parse::<IpAddr>() {
                addrs = Arc::new([SocketAddr::new(ip, *port)]);
            }
            if *scheme == UpstreamScheme::Https {
                let name = tls.server_name.clone().unwrap_or_else(|| host.clone());
                server_name = ServerName::try_from(name).ok();
            }
        }
        Target {
            addr,
            resolved: Mutex::new(Resolved { addrs, next: 0 }),
            proxy_protocol,
            server_name,
        }
    }

    /// A DNS name (not an IP literal or a socket path): resolved, and re-resolved.
    pub fn is_name(&self) -> bool {
        matches!(&self.addr, UpstreamAddr::Tcp { host, .. } if host.parse::<IpAddr>().is_err())
    }

    /// Looks the name up again; keeps the old addresses when the lookup fails.
    pub async fn resolve(&self) -> io::Result<()> {
        let UpstreamAddr::Tcp { host, port, .. } = &self.addr else {
            return Ok(());
        };
        if !self.is_name() {
            return Ok(());
        }
        let found: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), *port))
            .await?
            .collect();
        if found.is_empty() {
            return Err(io::Error::new(io::ErrorKind::NotFound, "no addresses"));
        }
        let mut r = lock(&self.resolved);
        r.addrs = found.into();
        Ok(())
    }

    /// The addresses to try and where to start among them (rotating, so that requests
    /// spread over a name's addresses).
    fn addrs(&self) -> (Arc<[SocketAddr]>, usize) {
        let mut r = lock(&self.resolved);
        r.next = r.next.wrapping_add(1);
        (r.addrs.clone(), r.next)
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding these short locks leaves consistent data; keep going.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// TLS client settings for `https://` upstreams: one offering h2 and http/1.1 by ALPN, one
/// offering http/1.1 only (for upgrades, which need an HTTP/1.1 connection).
pub struct Connector {
    tls_any: Option<Arc<ClientConfig>>,
    tls_h1: Option<Arc<ClientConfig>>,
}

impl Connector {
    pub fn new(spec: &UpstreamTlsSpec, any_https: bool) -> Result<Connector, String> {
        if !any_https {
            return Ok(Connector {
                tls_any: None,
                tls_h1: None,
            });
        }
        let mut any = tls_client_config(spec)?;
        let mut h1 = any.clone();
        any.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        h1.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Connector {
            tls_any: Some(Arc::new(any)),
            tls_h1: Some(Arc::new(h1)),
        })
    }

    /// Opens a connection to `target`: TCP (each resolved address in turn) or the Unix
    /// socket, the PROXY header, then TLS for https. `h1_only` offers only http/1.1 by ALPN.
    /// No timeout here: the caller bounds the whole of it by `timeouts.connect`.
    pub async fn connect(
        &self,
        target: &Target,
        backend: &Arc<str>,
        client: Option<&ClientAddrs>,
        h1_only: bool,
    ) -> Result<Connected, UpstreamError> {
        let conn_err = |e: io::Error| connect_error(backend, e);
        let (mut io, scheme) = match &target.addr {
            UpstreamAddr::Unix(path) => (
                Io::Unix(
                    UnixStream::connect(path)
                        .await
                        .map_err(|e| unix_error(backend, path, e))?,
                ),
                UpstreamScheme::Http,
            ),
            UpstreamAddr::Tcp { scheme, .. } => {
                // Names are refreshed in the background (every RESOLVE_EVERY); a request
                // resolves only when there is no address yet (start, or lookups failing).
                let (mut addrs, mut start) = target.addrs();
                if addrs.is_empty() {
                    match target.resolve().await {
                        Ok(()) => (addrs, start) = target.addrs(),
                        Err(e) if addrs.is_empty() => {
                            return Err(UpstreamError::Connect {
                                backend: backend.clone(),
                                detail: format!("the name does not resolve: {e}"),
                            })
                        }
                        Err(_) => {}
                    }
                }
                let mut last = None;
                let mut stream = None;
                for i in 0..addrs.len() {
                    let a = addrs[(start + i) % addrs.len()];
                    match TcpStream::connect(a).await {
                        Ok(s) => {
                            stream = Some(s);
                            break;
                        }
                        Err(e) => last = Some(e),
                    }
                }
                let s = match stream {
                    Some(s) => s,
                    None => {
                        return Err(conn_err(last.unwrap_or_else(|| {
                            io::Error::new(io::ErrorKind::NotFound, "no addresses")
                        })))
                    }
                };
                let _ = s.set_nodelay(true);
                (Io::Tcp(s), *scheme)
            }
        };
        if let Some(version) = target.proxy_protocol {
            let header = encode_proxy_header(version, client);
            io.write_all(&header).await.map_err(conn_err)?;
        }
        match scheme {
            UpstreamScheme::Http => Ok(Connected { io, h2: false }),
            UpstreamScheme::H2c => Ok(Connected { io, h2: true }),
            UpstreamScheme::Https => {
                let Io::Tcp(tcp) = io else {
                    unreachable!("https upstreams are TCP")
                };
                let cfg = if h1_only { &self.tls_h1 } else { &self.tls_any };
                let (Some(cfg), Some(name)) = (cfg, &target.server_name) else {
                    return Err(UpstreamError::Tls {
                        backend: backend.clone(),
                        reason: TlsFailure::Other("no TLS settings for this upstream".into()),
                    });
                };
                let tls = TlsConnector::from(cfg.clone())
                    .connect(name.clone(), tcp)
                    .await
                    .map_err(|e| tls_error(backend, e))?;
                let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
                Ok(Connected {
                    io: Io::Tls(Box::new(tls)),
                    h2,
                })
            }
        }
    }
}

fn connect_error(backend: &Arc<str>, e: io::Error) -> UpstreamError {
    let backend = backend.clone();
    match e.kind() {
        io::ErrorKind::ConnectionRefused => UpstreamError::ConnectRefused { backend },
        _ => UpstreamError::Connect {
            backend,
            detail: e.to_string(),
        },
    }
}

fn unix_error(backend: &Arc<str>, path: &Path, e: io::Error) -> UpstreamError {
    match e.kind() {
        io::ErrorKind::NotFound => UpstreamError::Connect {
            backend: backend.clone(),
            detail: format!("the socket {} does not exist", path.display()),
        },
        _ => connect_error(backend, e),
    }
}

fn tls_error(backend: &Arc<str>, e: io::Error) -> UpstreamError {
    let reason = match e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
        Some(r) => TlsFailure::from_rustls(r),
        None => match e.kind() {
            io::ErrorKind::UnexpectedEof | io::ErrorKind::ConnectionReset => TlsFailure::Other(
                "the backend closed the connection during the handshake (is it speaking TLS?)"
                    .into(),
            ),
            _ => TlsFailure::Other(e.to_string()),
        },
    };
    UpstreamError::Tls {
        backend: backend.clone(),
        reason,
    }
}

/// The rustls client configuration for `https://` upstreams: trusted roots (the `ca` file, or
/// the Mozilla roots built in), the client certificate for mTLS, our crypto provider. ALPN is
/// set by the caller. Errors name the file and what is wrong with it.
pub fn tls_client_config(spec: &UpstreamTlsSpec) -> Result<ClientConfig, String> {
    let provider = Arc::new(crate::tls::provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| format!("TLS versions: {e}"))?;
    let builder = if spec.insecure_skip_verify {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerify(provider)))
    } else {
        builder.with_root_certificates(crate::tls::server_roots(spec.ca.as_deref(), "ca")?)
    };
    match &spec.client_cert {
        None => Ok(builder.with_no_client_auth()),
        Some((cert, key)) => {
            let cert_pem = std::fs::read(cert)
                .map_err(|e| format!("cannot read client_cert {}: {e}", cert.display()))?;
            let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&cert_pem)
                .collect::<Result<_, _>>()
                .map_err(|e| format!("client_cert {}: malformed PEM: {e}", cert.display()))?;
            if chain.is_empty() {
                return Err(format!(
                    "client_cert {} holds no certificate",
                    cert.display()
                ));
            }
            let key_der = PrivateKeyDer::from_pem_file(key)
                .map_err(|e| format!("client_key {}: no usable private key: {e}", key.display()))?;
            builder.with_client_auth_cert(chain, key_der).map_err(|e| {
                format!(
                    "client_cert {} and client_key {} do not go together: {e}",
                    cert.display(),
                    key.display()
                )
            })
        }
    }
}

/// `tls.insecure_skip_verify`: accepts any certificate, still checking the handshake
/// signatures (so the connection is encrypted, only not authenticated). The probe's verifier,
/// which judges the chain itself afterwards, delegates to it too.
#[derive(Debug)]
pub struct NoVerify(pub Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for NoVerify {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// The PROXY protocol header (v1 text or v2 binary) for a connection made on behalf of
/// `client`; without a client (health checks) v1 says `UNKNOWN` and v2 uses the LOCAL command,
/// which backends take as "the proxy's own connection". Mixed families (an IPv4 client on an
/// IPv6 listener) are written as IPv6, the IPv4 address mapped.
pub fn encode_proxy_header(version: ProxyProtocol, client: Option<&ClientAddrs>) -> Vec<u8> {
    let version = match version {
        ProxyProtocol::V1 => crate::proxy_protocol::Version::V1,
        ProxyProtocol::V2 => crate::proxy_protocol::Version::V2,
    };
    match client {
        Some(c) => crate::proxy_protocol::encode(version, c.peer, c.local),
        None => crate::proxy_protocol::encode_local(version),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(peer: &str, local: &str) -> ClientAddrs {
        ClientAddrs {
            peer: peer.parse().unwrap(),
            local: local.parse().unwrap(),
        }
    }

    #[test]
    fn proxy_v1() {
        let c = client("192.0.2.1:56324", "198.51.100.7:443");
        assert_eq!(
            encode_proxy_header(ProxyProtocol::V1, Some(&c)),
            b"PROXY TCP4 192.0.2.1 198.51.100.7 56324 443\r\n"
        );
        let c = client("[2001:db8::1]:1000", "[2001:db8::2]:443");
        assert_eq!(
            encode_proxy_header(ProxyProtocol::V1, Some(&c)),
            b"PROXY TCP6 2001:db8::1 2001:db8::2 1000 443\r\n"
        );
        let c = client("192.0.2.1:1000", "[2001:db8::2]:443");
        assert_eq!(
            encode_proxy_header(ProxyProtocol::V1, Some(&c)),
            b"PROXY TCP6 ::ffff:192.0.2.1 2001:db8::2 1000 443\r\n"
        );
        assert_eq!(
            encode_proxy_header(ProxyProtocol::V1, None),
            b"PROXY UNKNOWN\r\n"
        );
    }

    #[test]
    fn proxy_v2() {
        let c = client("192.0.2.1:56324", "198.51.100.7:443");
        let h = encode_proxy_header(ProxyProtocol::V2, Some(&c));
        assert_eq!(&h[..12], b"\r\n\r\n\0\r\nQUIT\n");
        assert_eq!(&h[12..16], &[0x21, 0x11, 0, 12]);
        assert_eq!(&h[16..20], &[192, 0, 2, 1]);
        assert_eq!(&h[20..24], &[198, 51, 100, 7]);
        assert_eq!(&h[24..28], &[0xdc, 0x04, 0x01, 0xbb]);
        assert_eq!(h.len(), 28);
        let c = client("[2001:db8::1]:1000", "[2001:db8::2]:443");
        let h = encode_proxy_header(ProxyProtocol::V2, Some(&c));
        assert_eq!(&h[12..16], &[0x21, 0x21, 0, 36]);
        assert_eq!(h.len(), 16 + 36);
        let h = encode_proxy_header(ProxyProtocol::V2, None);
        assert_eq!(&h[12..], &[0x20, 0x00, 0, 0]);
    }
}
