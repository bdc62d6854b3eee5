//! Resumption and HTTP/3: a second handshake that should resume the first one's session, and
//! a QUIC handshake to the port `Alt-Svc` advertises.

use std::net::SocketAddr;
use std::sync::Arc;

use super::report::{Check, Report};
use super::Options;

/// A second connection with the session the first left: resumed or not.
pub(super) async fn resumption(
    config: Arc<rustls::ClientConfig>,
    addr: SocketAddr,
    name: rustls::pki_types::ServerName<'static>,
    opts: &Options,
    report: &mut Report,
) {
    let work = async {
        let tcp = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| e.to_string())?;
        let s = tokio_rustls::TlsConnector::from(config)
            .connect(name, tcp)
            .await
            .map_err(|e| e.to_string())?;
        Ok::<_, String>(s.get_ref().1.handshake_kind())
    };
    match tokio::time::timeout(opts.timeout, work).await {
        Ok(Ok(Some(rustls::HandshakeKind::Resumed))) => {
            report.fact("resumption", true);
            report.push(Check::ok(
                "tls.resumption",
                "session resumption works (a second connection resumed the first's session)",
            ));
        }
        Ok(Ok(_)) => {
            report.fact("resumption", false);
            report.push(
                Check::warning("tls.resumption", "no session resumption: every connection pays a full handshake")
                    .cause("session tickets and the session cache are off, or not shared between the server's processes or machines")
                    .fix("turn on session tickets (portcullis: tls.session_tickets, on by default)"),
            );
        }
        Ok(Err(e)) => report.push(Check::warning(
            "tls.resumption",
            format!("second connection failed: {e}"),
        )),
        Err(_) => report.push(Check::warning(
            "tls.resumption",
            "second connection: no answer in time",
        )),
    }
}

/// The UDP port an `Alt-Svc` value advertises for `h3` (`h3=":443"`).
pub(super) fn h3_port(alt_svc: &str) -> Option<u16> {
    alt_svc.split(',').find_map(|entry| {
        let entry = entry.trim();
        let rest = entry.strip_prefix("h3=")?;
        let value = rest.split(';').next()?.trim().trim_matches('"');
        let (host, port) = value.rsplit_once(':')?;
        host.is_empty().then_some(())?;
        port.parse().ok()
    })
}

/// A QUIC handshake (ALPN h3) to `addr`: HTTP/3 really served where it is advertised.
pub(super) async fn h3_reachable(addr: SocketAddr, sni: &str, opts: &Options, report: &mut Report) {
    let attempt = async {
        let mut crypto = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| e.to_string())?
        .dangerous()
        .with_custom_certificate_verifier(super::tls::accept_any())
        .with_no_client_auth();
        crypto.alpn_protocols = vec![b"h3".to_vec()];
        let quic =
            quinn::crypto::rustls::QuicClientConfig::try_from(crypto).map_err(|e| e.to_string())?;
        let bind: SocketAddr = if addr.is_ipv4() {
            ([0, 0, 0, 0], 0).into()
        } else {
            ([0u16; 8], 0).into()
        };
        let mut endpoint = quinn::Endpoint::client(bind).map_err(|e| e.to_string())?;
        endpoint.set_default_client_config(quinn::ClientConfig::new(Arc::new(quic)));
        let conn = endpoint
            .connect(addr, sni)
            .map_err(|e| e.to_string())?
            .await
            .map_err(|e| e.to_string())?;
        conn.close(0u32.into(), b"probe done");
        endpoint.wait_idle().await;
        Ok::<_, String>(())
    };
    match tokio::time::timeout(opts.timeout, attempt).await {
        Ok(Ok(())) => {
            report.fact("http3", true);
            report.push(Check::ok(
                "http3",
                format!("HTTP/3 advertised (Alt-Svc) and served on UDP {addr}"),
            ));
        }
        Ok(Err(e)) => {
            report.fact("http3", false);
            report.push(
                Check::warning("http3", format!("HTTP/3 advertised (Alt-Svc) but the QUIC handshake on UDP {addr} failed: {e}"))
                    .cause("the server says it speaks HTTP/3 but nothing usable answers on that UDP port")
                    .fix("serve HTTP/3 on that UDP port, or stop sending Alt-Svc h3"),
            );
        }
        Err(_) => {
            report.fact("http3", false);
            report.push(
                Check::warning("http3", format!("HTTP/3 advertised (Alt-Svc) but UDP {addr} does not answer"))
                    .cause("a firewall drops UDP, or nothing listens there: browsers that try QUIC wait before falling back to TCP")
                    .fix(format!("open UDP port {} in the firewall, or stop sending Alt-Svc h3", addr.port())),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::h3_port;

    #[test]
    fn the_h3_port_is_read_from_alt_svc() {
        assert_eq!(h3_port(r#"h3=":443"; ma=86400"#), Some(443));
        assert_eq!(h3_port(r#"h2=":443", h3=":8443""#), Some(8443));
        assert_eq!(h3_port(r#"h3-29=":443""#), None);
        // Another host: not this server's UDP port.
        assert_eq!(h3_port(r#"h3="cdn.example:443""#), None);
        assert_eq!(h3_port("clear"), None);
    }
}
