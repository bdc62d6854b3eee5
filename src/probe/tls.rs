//! The TLS handshake and the certificate chain it brings.
//!
//! The handshake is made with a verifier that keeps the chain and lets the handshake finish
//! whatever is wrong with it, so that every problem of the chain can be named at once; the
//! chain is then verified, as a browser would, by rustls's WebPKI verifier against Mozilla's
//! roots (or `--ca`).

use std::sync::{Arc, Mutex};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, SignatureScheme};

use super::report::{Check, Report};
use super::{Options, Target};
use crate::outbound::NoVerify;
use crate::tls::certs::{leaf_info, unix_now, KeyKind};

/// Certificates expiring within this many days are flagged, or within the last third of
/// their lifetime when that is shorter (short-lived certificates are renewed at two thirds,
/// as ACME clients do).
const EXPIRING_SOON_DAYS: i64 = 14;

/// Keeps what the server sent; accepts it (the verdict comes from [`certificate_checks`]),
/// checking the handshake signatures as [`NoVerify`] does.
#[derive(Debug)]
struct Keep {
    chain: Mutex<Vec<CertificateDer<'static>>>,
    /// The stapled OCSP response (empty: none).
    ocsp: Mutex<Vec<u8>>,
    accept: NoVerify,
}

impl ServerCertVerifier for Keep {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let mut chain = vec![end_entity.clone().into_owned()];
        chain.extend(intermediates.iter().map(|c| c.clone().into_owned()));
        if let Ok(mut c) = self.chain.lock() {
            *c = chain;
        }
        if let Ok(mut o) = self.ocsp.lock() {
            *o = ocsp.to_vec();
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.accept.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.accept.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.accept.supported_verify_schemes()
    }
}

/// An established TLS connection and whether it speaks HTTP/2.
pub(super) type Established = (tokio_rustls::client::TlsStream<tokio::net::TcpStream>, bool);

/// The first handshake's connection, and what a second one needs to resume its session.
pub(super) struct Session {
    pub established: Established,
    pub config: Arc<rustls::ClientConfig>,
    pub name: ServerName<'static>,
    /// The chain as sent (leaf first) and the stapled OCSP response (empty: none).
    pub chain: Vec<CertificateDer<'static>>,
    pub ocsp: Vec<u8>,
}

/// A verifier that accepts any chain (for connections whose chain is judged elsewhere).
pub(super) fn accept_any() -> Arc<dyn ServerCertVerifier> {
    keeper()
}

/// A client configuration (TLS 1.3 and 1.2, ALPN h2 and http/1.1) whose verifier keeps the
/// chain and accepts it (the verdict is [`certificate_checks`]'s).
fn client(keep: Arc<Keep>) -> Result<rustls::ClientConfig, String> {
    let mut config = rustls::ClientConfig::builder_with_provider(keep.accept.0.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| format!("TLS client set-up failed: {e}"))?
        .dangerous()
        .with_custom_certificate_verifier(keep)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

fn keeper() -> Arc<Keep> {
    Arc::new(Keep {
        chain: Mutex::new(Vec::new()),
        ocsp: Mutex::new(Vec::new()),
        accept: NoVerify(Arc::new(rustls::crypto::aws_lc_rs::default_provider())),
    })
}

/// A TLS connection for a redirect's next hop (its chain is not judged again).
pub(super) async fn open(
    tcp: tokio::net::TcpStream,
    host: &str,
    opts: &Options,
) -> Result<Established, String> {
    let config = client(keeper())?;
    let name = ServerName::try_from(host.to_owned())
        .map_err(|_| format!("{host:?} is not a valid server name"))?;
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let s = tokio::time::timeout(opts.timeout, connector.connect(name, tcp))
        .await
        .map_err(|_| format!("no TLS handshake with {host} within {:?}", opts.timeout))?
        .map_err(|e| format!("TLS handshake with {host} failed: {e}"))?;
    let h2 = s.get_ref().1.alpn_protocol() == Some(b"h2");
    Ok((s, h2))
}

/// The handshake (TLS 1.3 and 1.2, ALPN h2 and http/1.1), then the chain's checks; the
/// connection, for the HTTP checks.
pub(super) async fn probe(
    tcp: tokio::net::TcpStream,
    target: &Target,
    sni: Option<&str>,
    opts: &Options,
    report: &mut Report,
) -> Option<Session> {
    let keep = keeper();
    let config = match client(keep.clone()) {
        Ok(c) => Arc::new(c),
        Err(e) => {
            report.push(Check::error("tls", e));
            return None;
        }
    };
    let (name, sent_sni) = match sni {
        Some(n) => match ServerName::try_from(n.to_owned()) {
            Ok(s) => (s, true),
            Err(_) => {
                report.push(Check::error(
                    "tls",
                    format!("{n:?} is not a valid server name"),
                ));
                return None;
            }
        },
        // An IP address: no SNI is sent (as browsers do).
        None => match target.host.parse::<std::net::IpAddr>() {
            Ok(ip) => (ServerName::IpAddress(ip.into()), false),
            Err(_) => {
                report.push(Check::error("tls", "no server name to send"));
                return None;
            }
        },
    };
    let connector = tokio_rustls::TlsConnector::from(config.clone());
    let t = std::time::Instant::now();
    let handshake = tokio::time::timeout(opts.timeout, connector.connect(name.clone(), tcp)).await;
    let stream = match handshake {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            report.push(handshake_failure(&e));
            return None;
        }
        Err(_) => {
            report.push(
                Check::error("tls", format!("no TLS handshake within {:?}", opts.timeout))
                    .browser("ERR_TIMED_OUT")
                    .cause("the port accepts connections but nothing answers the ClientHello (a TLS server stuck, or something that is not a TLS server)")
                    .fix("check the server's logs and that this port serves TLS"),
            );
            return None;
        }
    };
    let (_, conn) = stream.get_ref();
    let version = match conn.protocol_version() {
        Some(rustls::ProtocolVersion::TLSv1_3) => "TLSv1.3",
        Some(rustls::ProtocolVersion::TLSv1_2) => "TLSv1.2",
        _ => "?",
    };
    let cipher = conn
        .negotiated_cipher_suite()
        .and_then(|s| s.suite().as_str())
        .unwrap_or("?");
    let group = conn
        .negotiated_key_exchange_group()
        .and_then(|g| g.name().as_str())
        .unwrap_or("?");
    let alpn = conn
        .alpn_protocol()
        .map(|a| String::from_utf8_lossy(a).into_owned());
    report.fact("tls_version", version);
    report.fact("cipher", cipher);
    report.fact("group", group);
    report.fact("alpn", alpn.clone().unwrap_or_default());
    report.push(Check::ok(
        "tls",
        format!(
            "TLS handshake: {version}, {cipher}, {group} ({} ms){}",
            t.elapsed().as_millis(),
            if sent_sni { "" } else { ", no SNI sent" }
        ),
    ));
    match alpn.as_deref() {
        Some("h2") => report.push(Check::ok("alpn", "HTTP/2 offered (ALPN h2)")),
        _ => report.push(
            Check::warning("alpn", "no HTTP/2: the server did not choose ALPN h2")
                .cause("HTTP/2 is off or the server does not speak it; browsers fall back to HTTP/1.1 (slower pages with many resources)")
                .fix("turn HTTP/2 on in the server"),
        ),
    }
    let chain = keep.chain.lock().map(|c| c.clone()).unwrap_or_default();
    certificate_checks(&chain, &name, sni, opts, report);
    let ocsp = keep.ocsp.lock().map(|o| o.clone()).unwrap_or_default();
    let h2 = alpn.as_deref() == Some("h2");
    Some(Session {
        established: (stream, h2),
        config,
        name,
        chain,
        ocsp,
    })
}

/// Why a handshake failed, in the words a user would need.
fn handshake_failure(e: &std::io::Error) -> Check {
    let tls = e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>());
    match tls {
        Some(rustls::Error::InvalidMessage(rustls::InvalidMessage::InvalidContentType))
        | Some(rustls::Error::InvalidMessage(rustls::InvalidMessage::InvalidEmptyPayload)) => {
            Check::error("tls", "not TLS: the server answered the ClientHello with something else (plain HTTP?)")
                .browser("ERR_SSL_PROTOCOL_ERROR")
                .cause("this port serves plain HTTP (or another protocol), not HTTPS")
                .fix("serve TLS on this port (e.g. nginx `listen 443 ssl`), or use http:// for it")
        }
        Some(rustls::Error::AlertReceived(a)) => {
            let alert = format!("{a:?}");
            let (cause, fix) = match a {
                rustls::AlertDescription::ProtocolVersion => (
                    "no TLS version in common: the server speaks only versions browsers no longer accept (TLS 1.0/1.1, SSLv3)",
                    "enable TLS 1.2 and 1.3 on the server",
                ),
                rustls::AlertDescription::HandshakeFailure | rustls::AlertDescription::InsufficientSecurity => (
                    "no cipher suite or key exchange in common with current browsers (only weak or obsolete ones enabled)",
                    "enable ECDHE with AES-GCM or ChaCha20-Poly1305 (Mozilla's intermediate profile)",
                ),
                rustls::AlertDescription::UnrecognisedName => (
                    "the server has no certificate for this name (SNI) and refuses it",
                    "add the name to a site of the server, or check --sni",
                ),
                _ => ("the server refused the handshake", "check the server's TLS configuration and logs"),
            };
            // Chromium's mapping (net/ssl/openssl_ssl_util.cc): these two alerts are a
            // version or cipher mismatch, the rest a protocol error.
            let browser = match a {
                rustls::AlertDescription::ProtocolVersion
                | rustls::AlertDescription::InsufficientSecurity => {
                    "ERR_SSL_VERSION_OR_CIPHER_MISMATCH"
                }
                _ => "ERR_SSL_PROTOCOL_ERROR",
            };
            Check::error("tls", format!("TLS handshake refused by the server: alert {alert}"))
                .browser(browser)
                .cause(cause)
                .fix(fix)
        }
        Some(other) => Check::error("tls", format!("TLS handshake failed: {other}"))
            .browser("ERR_SSL_PROTOCOL_ERROR")
            .fix("check the server's TLS configuration and logs"),
        None if e.kind() == std::io::ErrorKind::UnexpectedEof
            || e.kind() == std::io::ErrorKind::ConnectionReset =>
        {
            Check::error("tls", format!("the server closed the connection during the handshake ({e})"))
                .browser("ERR_CONNECTION_CLOSED")
                .cause("the server accepted the connection but dropped the ClientHello: no TLS version, cipher or name it accepts, or not a TLS server")
                .fix("check the server's TLS configuration and logs")
        }
        None => Check::error("tls", format!("TLS handshake failed: {e}"))
            .browser("ERR_SSL_PROTOCOL_ERROR"),
    }
}

/// The chain: trust, validity, name, order, key and signature.
fn certificate_checks(
    chain: &[CertificateDer<'static>],
    name: &ServerName<'static>,
    sni: Option<&str>,
    opts: &Options,
    report: &mut Report,
) {
    let Some(leaf) = chain.first() else {
        report.push(Check::error("cert", "the server sent no certificate"));
        return;
    };
    let Some(info) = leaf_info(leaf) else {
        report.push(Check::error(
            "cert",
            "the server's certificate cannot be parsed",
        ));
        return;
    };
    let mut names: Vec<String> = info.dns_names.clone();
    names.extend(info.ips.iter().map(|i| i.to_string()));
    report.fact("cert_subject", info.subject.clone());
    report.fact("cert_issuer", info.issuer.clone());
    report.fact("cert_names", names.clone());
    report.fact("cert_not_after", info.not_after);
    report.fact("chain_length", chain.len());

    // Validity period.
    let now = unix_now();
    let days_left = (info.not_after - now).div_euclid(86_400);
    let soon = (EXPIRING_SOON_DAYS * 86_400).min((info.not_after - info.not_before) / 3);
    if info.not_after <= now {
        report.push(
            Check::error("cert.expiry", format!("certificate expired {} ({} days ago)", crate::tls::certs::fmt_time(info.not_after), -days_left))
                .browser("NET::ERR_CERT_DATE_INVALID")
                .cause("the certificate was not renewed")
                .fix("renew it (portcullis renews ACME certificates by itself; certbot renew; or install the new certificate) and reload the server"),
        );
    } else if info.not_before > now {
        report.push(
            Check::error("cert.expiry", format!("certificate not valid yet: from {}", crate::tls::certs::fmt_time(info.not_before)))
                .browser("NET::ERR_CERT_DATE_INVALID")
                .cause("the certificate was issued for the future, or this machine's or the server's clock is wrong")
                .fix("check both clocks (timedatectl), or install a certificate valid now"),
        );
    } else if info.not_after - now < soon {
        report.push(
            Check::warning(
                "cert.expiry",
                format!(
                    "certificate expires in {days_left} days ({})",
                    crate::tls::certs::fmt_time(info.not_after)
                ),
            )
            .cause("renewal has not happened yet, or is failing")
            .fix("renew it now and check that renewal runs by itself"),
        );
    } else {
        report.push(Check::ok(
            "cert.expiry",
            format!(
                "certificate valid until {} ({days_left} days)",
                crate::tls::certs::fmt_time(info.not_after)
            ),
        ));
    }

    // Trust, as a browser decides it.
    let roots = match crate::tls::server_roots(opts.ca.as_deref(), "--ca") {
        Ok(r) => r,
        Err(e) => {
            report.push(Check::error("cert.trust", e));
            return;
        }
    };
    let verifier = match rustls::client::WebPkiServerVerifier::builder_with_provider(
        Arc::new(roots),
        Arc::new(rustls::crypto::aws_lc_rs::default_provider()),
    )
    .build()
    {
        Ok(v) => v,
        Err(e) => {
            report.push(Check::error(
                "cert.trust",
                format!("cannot build the verifier: {e}"),
            ));
            return;
        }
    };
    let verdict = verifier.verify_server_cert(leaf, &chain[1..], name, &[], UnixTime::now());
    let self_signed = info.subject == info.issuer;
    let host = sni.map(str::to_owned).unwrap_or_else(|| match name {
        ServerName::IpAddress(ip) => std::net::IpAddr::from(*ip).to_string(),
        _ => String::new(),
    });
    match verdict {
        Ok(_) => {
            report.push(Check::ok(
                "cert.trust",
                format!("chain verifies to a trusted root ({} certificates sent; issuer: {})", chain.len(), info.issuer),
            ));
            report.push(Check::ok(
                "cert.name",
                format!("the certificate covers {host}"),
            ));
        }
        Err(rustls::Error::InvalidCertificate(e)) => match e {
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
                report.push(
                    Check::error("cert.name", format!("the certificate does not cover {host}; it covers: {}", names.join(", ")))
                        .browser("NET::ERR_CERT_COMMON_NAME_INVALID")
                        .cause("the certificate was made for other names (another site's certificate, or the name is missing from it)")
                        .fix(format!("get a certificate that includes {host} (or add the name to the site)")),
                );
            }
            CertificateError::UnknownIssuer if self_signed => report.push(
                Check::error("cert.trust", format!("self-signed certificate ({})", info.subject))
                    .browser("NET::ERR_CERT_AUTHORITY_INVALID")
                    .cause("the certificate signs itself: no browser trusts it")
                    .fix("use a certificate from a public CA (portcullis gets one from Let's Encrypt by itself), or --ca with your private root if this is intended"),
            ),
            CertificateError::UnknownIssuer => {
                let missing = chain.len() == 1;
                let check = Check::error(
                    "cert.trust",
                    if missing {
                        format!("incomplete chain: only the certificate was sent, without its intermediate (issuer: {})", info.issuer)
                    } else {
                        format!("the chain does not lead to a trusted root (issuer: {})", info.issuer)
                    },
                )
                .browser("NET::ERR_CERT_AUTHORITY_INVALID");
                report.push(if missing {
                    check
                        .cause(format!("the server sends the leaf certificate only; browsers without {} cached fail, other clients (curl, apps) always do", info.issuer))
                        .fix("serve the full chain (fullchain.pem: the certificate followed by its intermediates)")
                } else {
                    check
                        .cause("the issuer is not a public CA (a private or test CA), or an intermediate is missing")
                        .fix("use a certificate from a public CA, or --ca with your private root if this is intended")
                });
            }
            CertificateError::Expired | CertificateError::ExpiredContext { .. } | CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                // Said above with the dates.
            }
            other => report.push(
                Check::error("cert.trust", format!("the chain does not verify: {other:?}"))
                    .browser("NET::ERR_CERT_INVALID"),
            ),
        },
        Err(other) => report.push(Check::error("cert.trust", format!("the chain does not verify: {other}"))),
    }

    // Order: each certificate is issued by the next one.
    if chain.len() > 1 {
        let parsed: Vec<_> = chain
            .iter()
            .filter_map(|c| x509_parser::parse_x509_certificate(c).ok().map(|(_, x)| x))
            .collect();
        let in_order = parsed
            .windows(2)
            .all(|w| w[0].issuer().as_raw() == w[1].subject().as_raw());
        if in_order {
            report.push(Check::ok("cert.order", "chain sent in order"));
        } else {
            report.push(
                Check::warning("cert.order", "chain out of order: a certificate is not followed by its issuer")
                    .cause("the certificate file lists the intermediates in the wrong order (or holds unrelated certificates)")
                    .fix("order the file: leaf first, then each issuer in turn (what fullchain.pem has)"),
            );
        }
    }

    // Key and signature.
    let key = x509_parser::parse_x509_certificate(leaf)
        .map(|(_, x)| crate::tls::certs::key_kind(&x))
        .unwrap_or(KeyKind::Other("unknown key".into()));
    report.fact("cert_key", key.to_string());
    match &key {
        KeyKind::Rsa(bits) if *bits < 2048 => report.push(
            Check::error("cert.key", format!("weak key: RSA-{bits}"))
                .browser("NET::ERR_CERT_WEAK_KEY")
                .fix("get a certificate with an ECDSA P-256 or RSA-2048+ key"),
        ),
        k => report.push(Check::ok("cert.key", format!("key: {k}"))),
    }
    if let Ok((_, x)) = x509_parser::parse_x509_certificate(leaf) {
        let sha1 = matches!(
            x.signature_algorithm.algorithm.to_id_string().as_str(),
            "1.2.840.113549.1.1.5" | "1.2.840.10045.4.1"
        );
        if sha1 {
            report.push(
                Check::error("cert.signature", "the certificate is signed with SHA-1")
                    .browser("NET::ERR_CERT_WEAK_SIGNATURE_ALGORITHM")
                    .fix("reissue the certificate (any current CA signs with SHA-256 or better)"),
            );
        }
    }
}
