//! An ACME test proxy in front of pebble, for what Debian's pebble 2.4 lacks: ACME Renewal
//! Information (RFC 9773) and profiles.
//!
//! It serves HTTPS on 127.0.0.1 with a test-PKI certificate for `localhost` (so `acme.ca_root`
//! stays the test root that pebble's own certificate chains to) and forwards every request to
//! pebble with the client's `Host` header kept: pebble builds every URL it returns (Location,
//! Link, order/authz/finalize/certificate URLs) from that header, so they all point back through
//! the proxy, and the JWS `url` the client signs matches what pebble expects.
//!
//! On top it
//! * adds `renewalInfo` (when the test gives an ARI responder) and `meta.profiles` to the
//!   directory,
//! * answers `GET /renewal-info/<id>` with what the test's responder chooses (a window relative
//!   to now, an HTTP error, a malformed body), recording the ids asked for,
//! * records the decoded JWS payload of every newOrder request, and reflects `replaces` in the
//!   new order (as an ARI CA must) since pebble ignores it.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use super::{pki, Alg};

/// What the proxy answers to a renewalInfo request.
#[derive(Debug, Clone)]
pub enum AriReply {
    /// A suggested window from `start` to `end`, in seconds relative to now (negative: past),
    /// with `Retry-After: 3600`.
    Window { start: i64, end: i64 },
    /// An error status with a problem document carrying `detail`.
    Error { status: u16, detail: String },
    /// 200 with a body that is not a RenewalInfo object.
    Malformed,
}

/// Chooses the answer for a certificate's ARI id.
pub type AriResponder = Box<dyn Fn(&str) -> AriReply + Send + Sync>;

struct Shared {
    upstream: String,
    ari: Option<AriResponder>,
    profiles: Vec<(String, String)>,
    new_orders: Mutex<Vec<serde_json::Value>>,
    ari_requests: Mutex<Vec<String>>,
    new_order_path: Mutex<Option<String>>,
    client: Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>,
}

/// The running proxy; stopped on drop.
pub struct AcmeProxy {
    /// The directory URL to configure as `acme.ca`.
    pub directory: String,
    shared: Arc<Shared>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl AcmeProxy {
    /// Starts a proxy for pebble's directory `upstream_directory`
    /// (`https://localhost:PORT/dir`). `ari`: None leaves ARI out of the directory.
    /// `profiles`: name and description pairs for `meta.profiles` (empty: none advertised).
    pub fn start(
        upstream_directory: &str,
        ari: Option<AriResponder>,
        profiles: &[(&str, &str)],
    ) -> AcmeProxy {
        let upstream = upstream_directory
            .strip_suffix("/dir")
            .expect("pebble's directory ends in /dir")
            .to_string();
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        roots.add(pki().root_der.clone()).unwrap();
        let client_tls = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(client_tls)
            .https_only()
            .enable_http1()
            .build();
        let shared = Arc::new(Shared {
            upstream,
            ari,
            profiles: profiles
                .iter()
                .map(|(n, d)| (n.to_string(), d.to_string()))
                .collect(),
            new_orders: Mutex::new(Vec::new()),
            ari_requests: Mutex::new(Vec::new()),
            new_order_path: Mutex::new(None),
            client: Client::builder(TokioExecutor::new()).build(connector),
        });

        let leaf = pki().leaf(&["localhost"], Alg::Ecdsa);
        let chain = vec![
            leaf.der.clone(),
            CertificateDer::from_pem_slice(pki().inter_pem.as_bytes()).unwrap(),
        ];
        let key = PrivateKeyDer::from_pem_slice(leaf.key_pem.as_bytes()).unwrap();
        let mut server_tls = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .unwrap();
        server_tls.alpn_protocols = vec![b"http/1.1".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server_tls));

        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
        let state = shared.clone();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                loop {
                    let (tcp, _) = tokio::select! {
                        a = listener.accept() => match a { Ok(a) => a, Err(_) => continue },
                        _ = &mut stopped => return,
                    };
                    let acceptor = acceptor.clone();
                    let state = state.clone();
                    tokio::spawn(async move {
                        let Ok(tls) = acceptor.accept(tcp).await else {
                            return;
                        };
                        let service = hyper::service::service_fn(move |req| {
                            let state = state.clone();
                            async move { Ok::<_, std::convert::Infallible>(handle(&state, req).await) }
                        });
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(TokioIo::new(tls), service)
                            .await;
                    });
                }
            });
        });
        AcmeProxy {
            directory: format!("https://localhost:{port}/dir"),
            shared,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    /// The decoded JWS payloads of the newOrder requests so far.
    pub fn new_orders(&self) -> Vec<serde_json::Value> {
        self.shared.new_orders.lock().unwrap().clone()
    }

    /// The certificate ids renewalInfo was asked for so far.
    pub fn ari_requests(&self) -> Vec<String> {
        self.shared.ari_requests.lock().unwrap().clone()
    }

    /// The proxy's address.
    pub fn addr(&self) -> SocketAddr {
        let port: u16 = self
            .directory
            .trim_start_matches("https://localhost:")
            .trim_end_matches("/dir")
            .parse()
            .unwrap();
        SocketAddr::from(([127, 0, 0, 1], port))
    }
}

impl Drop for AcmeProxy {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

type Resp = hyper::Response<Full<Bytes>>;

fn reply(status: u16, headers: &[(&str, &str)], body: impl Into<Bytes>) -> Resp {
    let mut b = hyper::Response::builder().status(status);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    b.body(Full::new(body.into())).unwrap()
}

fn rfc3339(offset: i64) -> String {
    (time::OffsetDateTime::now_utc() + time::Duration::seconds(offset))
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap()
}

/// The JSON payload of a JWS request body (flattened JSON serialization).
fn jws_payload(body: &[u8]) -> Option<serde_json::Value> {
    use base64::Engine;
    let jws: serde_json::Value = serde_json::from_slice(body).ok()?;
    let payload = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(jws.get("payload")?.as_str()?)
        .ok()?;
    serde_json::from_slice(&payload).ok()
}

async fn handle(state: &Shared, req: hyper::Request<hyper::body::Incoming>) -> Resp {
    let (parts, body) = req.into_parts();
    let body = match body.collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => return reply(400, &[], format!("proxy: reading the request: {e}")),
    };
    let path = parts.uri.path().to_string();
    let host = parts
        .headers
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("localhost")
        .to_string();

    if let (Some(ari), Some(id)) = (&state.ari, path.strip_prefix("/renewal-info/")) {
        state.ari_requests.lock().unwrap().push(id.to_string());
        return match ari(id) {
            AriReply::Window { start, end } => reply(
                200,
                &[
                    ("content-type", "application/json"),
                    ("retry-after", "3600"),
                ],
                serde_json::json!({
                    "suggestedWindow": {"start": rfc3339(start), "end": rfc3339(end)},
                    "explanationURL": "https://ca.test/why"
                })
                .to_string(),
            ),
            AriReply::Error { status, detail } => reply(
                status,
                &[("content-type", "application/problem+json")],
                serde_json::json!({
                    "type": "urn:ietf:params:acme:error:serverInternal",
                    "detail": detail,
                })
                .to_string(),
            ),
            AriReply::Malformed => reply(
                200,
                &[
                    ("content-type", "application/json"),
                    ("retry-after", "3600"),
                ],
                "{\"suggestedWindow\": \"whenever\"}",
            ),
        };
    }

    let is_new_order = parts.method == http::Method::POST
        && state.new_order_path.lock().unwrap().as_deref() == Some(path.as_str());
    let payload = if is_new_order {
        let p = jws_payload(&body).unwrap_or(serde_json::Value::Null);
        state.new_orders.lock().unwrap().push(p.clone());
        Some(p)
    } else {
        None
    };

    // Forward, keeping Host (pebble builds its URLs from it).
    let uri = format!(
        "{}{}",
        state.upstream,
        parts.uri.path_and_query().map_or("/", |p| p.as_str())
    );
    let mut fwd = hyper::Request::builder()
        .method(parts.method.clone())
        .uri(uri);
    for (k, v) in &parts.headers {
        fwd = fwd.header(k, v);
    }
    let fwd = fwd.body(Full::new(body)).unwrap();
    let resp = match state.client.request(fwd).await {
        Ok(r) => r,
        Err(e) => return reply(502, &[], format!("proxy: pebble: {e}")),
    };
    let (rparts, rbody) = resp.into_parts();
    let mut rbody = match rbody.collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => return reply(502, &[], format!("proxy: pebble's body: {e}")),
    };

    if parts.method == http::Method::GET && path == "/dir" && rparts.status == 200 {
        if let Ok(mut dir) = serde_json::from_slice::<serde_json::Value>(&rbody) {
            if let Some(p) = dir
                .get("newOrder")
                .and_then(|u| u.as_str())
                .and_then(|u| u.parse::<http::Uri>().ok())
            {
                *state.new_order_path.lock().unwrap() = Some(p.path().to_string());
            }
            if state.ari.is_some() {
                dir["renewalInfo"] = format!("https://{host}/renewal-info").into();
            }
            if !state.profiles.is_empty() {
                let profiles: serde_json::Map<String, serde_json::Value> = state
                    .profiles
                    .iter()
                    .map(|(n, d)| (n.clone(), d.clone().into()))
                    .collect();
                if !dir.get("meta").is_some_and(|m| m.is_object()) {
                    dir["meta"] = serde_json::json!({});
                }
                dir["meta"]["profiles"] = profiles.into();
            }
            rbody = Bytes::from(dir.to_string());
        }
    }
    if let Some(payload) = &payload {
        // An ARI CA reflects `replaces` (and a profiles CA `profile`) in the order.
        if let Ok(mut order) = serde_json::from_slice::<serde_json::Value>(&rbody) {
            if order.is_object() {
                for field in ["replaces", "profile"] {
                    if let Some(v) = payload.get(field) {
                        order[field] = v.clone();
                    }
                }
                rbody = Bytes::from(order.to_string());
            }
        }
    }
    let mut out = hyper::Response::builder().status(rparts.status);
    for (k, v) in &rparts.headers {
        if k != http::header::CONTENT_LENGTH && k != http::header::TRANSFER_ENCODING {
            out = out.header(k, v);
        }
    }
    out.body(Full::new(rbody)).unwrap()
}
