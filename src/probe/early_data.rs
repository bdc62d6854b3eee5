//! TLS 1.3 early data (0-RTT): whether the server's session tickets offer it, and whether a
//! GET sent as early data on a resumed connection is taken.
//!
//! Informational: 0-RTT saves a round trip on repeat visits, at the price of replayable
//! requests, which is why only idempotent ones should be served from early data.
//!
//! Two connections of its own: the first, a full handshake and one request, leaves tickets in
//! a session store kept for this check (so the resumption check's tickets are not used up);
//! the second resumes and sends its GET before the handshake completes.

use std::pin::Pin;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use super::report::{Check, Report};
use super::{authority, http, Options, Target};

/// Whether the server took the early data: unknown until the handshake completes.
const PENDING: u8 = 0;
const ACCEPTED: u8 = 1;
const REJECTED: u8 = 2;

/// What the second connection found.
enum Found {
    /// The connection did not resume: no ticket, so no 0-RTT either.
    NotResumed,
    /// Resumed, but the ticket allows no early data.
    NotOffered,
    /// Early data sent; the TLS layer took it or not; the GET's status.
    Sent {
        accepted: bool,
        status: ::http::StatusCode,
    },
}

/// The `tls.early_data` check against `addr`, with `sni` (none for an IP address).
pub(super) async fn check(
    addr: std::net::SocketAddr,
    sni: Option<&str>,
    target: &Target,
    opts: &Options,
    report: &mut Report,
) {
    let version = report
        .facts
        .get("tls_version")
        .and_then(|v| v.as_str())
        .unwrap_or("?")
        .to_owned();
    if version != "TLSv1.3" {
        report.fact("early_data", "not offered");
        report.push(Check::ok(
            "tls.early_data",
            format!("0-RTT not offered (early data needs TLS 1.3; the server spoke {version})"),
        ));
        return;
    }
    // The page could not be fetched (reported by the HTTP check): nothing to send early.
    if !report.facts.contains_key("http_status") {
        return;
    }
    let name = sni.unwrap_or(target.host.as_str());
    let Ok(name) = ServerName::try_from(name.to_owned()) else {
        return;
    };
    let attempt = tokio::time::timeout(
        opts.timeout.saturating_mul(2),
        attempt(addr, name, target, opts),
    )
    .await;
    match attempt {
        Ok(Ok(Found::NotResumed)) => {
            report.fact("early_data", "not offered");
            report.push(Check::ok(
                "tls.early_data",
                "0-RTT not offered (no session resumption, so no early data)",
            ));
        }
        Ok(Ok(Found::NotOffered)) => {
            report.fact("early_data", "not offered");
            report.push(Check::ok(
                "tls.early_data",
                "0-RTT not offered (the session tickets allow no early data)",
            ));
        }
        Ok(Ok(Found::Sent {
            accepted: true,
            status,
        })) if status != ::http::StatusCode::TOO_EARLY => {
            report.fact("early_data", "accepted");
            report.push(Check::ok(
                "tls.early_data",
                format!("0-RTT accepted: a GET sent as early data was answered {status} (early data can be replayed: only idempotent requests should be served from it; portcullis answers others with 425 Too Early)"),
            ));
        }
        Ok(Ok(Found::Sent { accepted, status })) => {
            report.fact("early_data", "offered");
            let how = if accepted {
                format!("the GET sent as early data was answered {status}")
            } else {
                format!("the server declined the early data (the GET was sent again after the handshake: {status})")
            };
            report.push(Check::ok(
                "tls.early_data",
                format!("0-RTT offered by the session tickets, but {how}"),
            ));
        }
        Ok(Err(e)) => report.push(Check::warning(
            "tls.early_data",
            format!("0-RTT not checked: {e}"),
        )),
        Err(_) => report.push(Check::warning(
            "tls.early_data",
            "0-RTT not checked: no answer in time",
        )),
    }
}

/// A TLS 1.3 client offering early data, with its own session store, verifying nothing (the
/// chain is judged by the certificate checks).
fn client() -> Result<rustls::ClientConfig, String> {
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])
    .map_err(|e| e.to_string())?
    .dangerous()
    .with_custom_certificate_verifier(super::tls::accept_any())
    .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    config.enable_early_data = true;
    config.resumption = rustls::client::Resumption::in_memory_sessions(8);
    Ok(config)
}

async fn attempt(
    addr: std::net::SocketAddr,
    name: ServerName<'static>,
    target: &Target,
    opts: &Options,
) -> Result<Found, String> {
    let mut config = client()?;
    let host = authority(&target.host, target.port);
    // The first connection: a full handshake; the request makes sure its tickets arrive.
    let tcp = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("{addr}: {e}"))?;
    let first = tokio_rustls::TlsConnector::from(Arc::new(config.clone()))
        .connect(name.clone(), tcp)
        .await
        .map_err(|e| format!("TLS 1.3 handshake: {e}"))?;
    let alpn = first.get_ref().1.alpn_protocol().map(<[u8]>::to_vec);
    http::get(
        first,
        alpn.as_deref() == Some(b"h2"),
        &host,
        &target.path,
        opts,
    )
    .await?;
    // The early data is sent before the server's ALPN choice is known: offer only the
    // protocol the session was made with (the server takes early data only for that one).
    config.alpn_protocols = alpn.iter().cloned().collect();
    let tcp = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("{addr}: {e}"))?;
    let mut second = tokio_rustls::TlsConnector::from(Arc::new(config))
        .early_data(true)
        .connect(name, tcp)
        .await
        .map_err(|e| format!("resumed handshake: {e}"))?;
    let conn = second.get_mut().1;
    if conn.early_data().is_none() {
        // No early data possible: the handshake is already complete.
        return Ok(match conn.handshake_kind() {
            Some(rustls::HandshakeKind::Resumed) => Found::NotOffered,
            _ => Found::NotResumed,
        });
    }
    let verdict = Arc::new(AtomicU8::new(PENDING));
    let watched = Watched {
        inner: second,
        verdict: verdict.clone(),
    };
    let answer = http::get(
        watched,
        alpn.as_deref() == Some(b"h2"),
        &host,
        &target.path,
        opts,
    )
    .await?;
    Ok(Found::Sent {
        accepted: verdict.load(Ordering::Relaxed) == ACCEPTED,
        status: answer.status,
    })
}

/// A TLS stream that notes, once its handshake has completed, whether the server accepted
/// the early data (the stream itself goes to the HTTP client, which keeps it).
struct Watched {
    inner: TlsStream<TcpStream>,
    verdict: Arc<AtomicU8>,
}

impl Watched {
    fn note(&self) {
        let conn = self.inner.get_ref().1;
        if !conn.is_handshaking() && self.verdict.load(Ordering::Relaxed) == PENDING {
            let v = if conn.is_early_data_accepted() {
                ACCEPTED
            } else {
                REJECTED
            };
            self.verdict.store(v, Ordering::Relaxed);
        }
    }
}

impl AsyncRead for Watched {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        self.note();
        r
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.note();
        r
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.note();
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let r = Pin::new(&mut self.inner).poll_flush(cx);
        self.note();
        r
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let r = Pin::new(&mut self.inner).poll_shutdown(cx);
        self.note();
        r
    }
}
