//! Support for the `portcullis probe` tests: deliberately configurable TLS servers (rustls +
//! hyper) and running the probe binary for its JSON report.

use std::net::SocketAddr;
use std::process::Command;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde_json::Value;

use super::*;

/// A TLS server (rustls) that sends `chain` (PEM, in the order given) with `key`, and
/// completes handshakes until the test ends.
pub async fn tls_server(chain_pem: &str, key_pem: &str) -> SocketAddr {
    tls_server_with(chain_pem, key_pem, &[], true).await
}

/// [`tls_server`] with extra response headers, and without session resumption when
/// `resumption` is false.
pub async fn tls_server_with(
    chain_pem: &str,
    key_pem: &str,
    headers: &[(&'static str, String)],
    resumption: bool,
) -> SocketAddr {
    tls_server_page(chain_pem, key_pem, headers, "ok", resumption).await
}

/// [`tls_server_with`] answering every request with `body` (as `text/html`).
pub async fn tls_server_page(
    chain_pem: &str,
    key_pem: &str,
    headers: &[(&'static str, String)],
    body: &str,
    resumption: bool,
) -> SocketAddr {
    tls_server_stapling(chain_pem, key_pem, headers, body, resumption, Vec::new()).await
}

/// [`tls_server_page`] stapling `ocsp` (a DER OCSP response; empty: none) to every handshake.
pub async fn tls_server_stapling(
    chain_pem: &str,
    key_pem: &str,
    headers: &[(&'static str, String)],
    body: &str,
    resumption: bool,
    ocsp: Vec<u8>,
) -> SocketAddr {
    let body = bytes::Bytes::from(body.to_owned());
    let headers: Arc<Vec<(&'static str, String)>> = Arc::new(headers.to_vec());
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(chain_pem.as_bytes())
        .collect::<Result<_, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).unwrap();
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert_with_ocsp(chain, key, ocsp)
        .unwrap();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    if !resumption {
        config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
        config.send_tls13_tickets = 0;
    }
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            let headers = headers.clone();
            let body = body.clone();
            tokio::spawn(async move {
                if let Ok(tls) = acceptor.accept(tcp).await {
                    // A page with the headers a healthy site sends.
                    let svc = hyper::service::service_fn(move |_req| {
                        let headers = headers.clone();
                        let body = body.clone();
                        async move {
                            let mut b = hyper::Response::builder()
                                .header("strict-transport-security", "max-age=31536000")
                                .header("x-content-type-options", "nosniff")
                                .header("referrer-policy", "no-referrer")
                                .header("content-type", "text/html; charset=utf-8");
                            for (k, v) in headers.iter() {
                                b = b.header(*k, v.as_str());
                            }
                            Ok::<_, std::convert::Infallible>(
                                b.body(http_body_util::Full::new(body)).unwrap(),
                            )
                        }
                    });
                    let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
                    let io = hyper_util::rt::TokioIo::new(tls);
                    if h2 {
                        let _ = hyper::server::conn::http2::Builder::new(
                            hyper_util::rt::TokioExecutor::new(),
                        )
                        .serve_connection(io, svc)
                        .await;
                    } else {
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(io, svc)
                            .await;
                    }
                }
            });
        }
    });
    addr
}

/// Runs `portcullis probe --json` on `target` with `args`; returns the exit code and report.
pub async fn probe(target: &str, args: &[&str]) -> (i32, Value) {
    let env = TestEnv::new();
    let root = env.write("root.pem", &pki().root_pem);
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_portcullis"));
    cmd.arg("probe")
        .arg(target)
        .arg("--json")
        .arg("--ca")
        .arg(&root)
        .args(args);
    if !args.contains(&"--timeout") {
        cmd.args(["--timeout", "3s"]);
    }
    let out = tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let report: Value = serde_json::from_str(&text).unwrap_or_else(|e| {
        panic!(
            "not JSON ({e}):\n{text}\n{}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out.status.code().unwrap_or(-1), report)
}

/// The checks with `id`.
pub fn checks<'a>(report: &'a Value, id: &str) -> Vec<&'a Value> {
    report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["id"] == id)
        .collect()
}

/// The one check with `id`, which must have `verdict`.
pub fn check<'a>(report: &'a Value, id: &str, verdict: &str) -> &'a Value {
    let found = checks(report, id);
    let c = found
        .first()
        .unwrap_or_else(|| panic!("no {id} check in {report:#}"));
    assert_eq!(c["verdict"], verdict, "{id}: {c:#}\nreport: {report:#}");
    c
}

/// `alpha.test` at `addr` (no DNS: --ip).
pub fn at(addr: SocketAddr) -> (String, String) {
    (
        format!("https://{ALPHA}:{}", addr.port()),
        addr.ip().to_string(),
    )
}
