//! The admin listener: a small HTTP/1.1 server on its own thread (never on the workers), on a
//! loopback address or a unix socket.
//!
//! | Route            | What                                                                 |
//! |------------------|----------------------------------------------------------------------|
//! | `GET /metrics`   | Prometheus text ([`crate::ops::metrics`])                            |
//! | `GET /`          | the status page ([`status`]; its CSS and script from `/status.css`,  |
//! |                  | `/status.js`, its data from `/status.json`)                          |
//! | `GET /config`    | the running configuration, secrets redacted                          |
//! | `GET /health`    | `200 ok` while serving, `503` once shutting down                     |
//! | `POST /reload`   | [`Control::reload`]                                                  |
//! | `POST /upgrade`  | [`Control::upgrade`]                                                 |
//!
//! State-changing routes are served on the unix socket, or over TCP with
//! `Authorization: Bearer <token>` (`admin.token_file`); anything else gets 403. Over TCP the
//! `Host` must be an IP address or `localhost` (unless `admin.public`), so that a web page
//! cannot reach the listener by rebinding its own name to 127.0.0.1, and a request carrying a
//! foreign `Origin` is refused.
//!
//! What the pages show comes from the [`Generation`] published last: the server publishes
//! one at start, and a reload publishes the new one ([`AdminHandle::publish`]).

pub mod status;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::{ArcSwap, ArcSwapOption};
use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::registry::Registry;
use tokio::sync::watch;

use crate::config::admin::{AdminListen, AdminSettings, Token};
use crate::config::Config;
use crate::ops::metrics::collect;
use crate::server::ServerState;

/// What `POST /reload` and `POST /upgrade` do; the server implements it. `Ok`: a message for
/// the operator (200); `Err`: what went wrong (500), both as plain text.
pub trait Control: Send + Sync {
    fn reload(&self) -> Result<String, String>;
    fn upgrade(&self) -> Result<String, String>;
}

/// One running configuration as the admin pages see it.
pub struct Generation {
    pub state: Arc<ServerState>,
    /// Certificate holders in the order of `state.tls.certs` (sites, then streams').
    pub(crate) owners: Vec<status::Owner>,
    pub(crate) running_config: Arc<str>,
    pub(crate) storage: Arc<dyn crate::storage::Storage>,
}

impl Generation {
    /// The view of `state`, which was built from `config`.
    pub fn new(config: &Config, state: Arc<ServerState>) -> Generation {
        Generation {
            owners: status::owners(config),
            running_config: config.admin.running_config.clone(),
            storage: state.storage.clone().unwrap_or_else(|| {
                Arc::new(crate::storage::FileStorage::new(config.data_dir.clone()))
            }),
            state,
        }
    }
}

/// Shared by the listener's connections.
struct Admin {
    current: Arc<ArcSwap<Generation>>,
    control: ArcSwapOption<Box<dyn Control>>,
    token: Option<Token>,
    public: bool,
    shutting_down: AtomicBool,
    registry: Registry,
    started: std::time::Instant,
}

/// A running admin listener.
pub struct AdminHandle {
    admin: Arc<Admin>,
    addr: Option<SocketAddr>,
    path: Option<PathBuf>,
    stop: watch::Sender<bool>,
    thread: std::sync::Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl AdminHandle {
    /// The bound TCP address (with the real port when 0 was configured).
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.addr
    }

    /// The unix socket's path.
    pub fn socket_path(&self) -> Option<&std::path::Path> {
        self.path.as_deref()
    }

    /// Shows `generation` from now on (after a reload).
    pub fn publish(&self, generation: Generation) {
        self.admin.current.store(Arc::new(generation));
    }

    /// Sets what `POST /reload` and `POST /upgrade` call (501 until then).
    pub fn set_control(&self, control: Box<dyn Control>) {
        self.admin.control.store(Some(Arc::new(control)));
    }

    /// `GET /health` answers 503 from now on.
    pub fn shutting_down(&self) {
        self.admin.shutting_down.store(true, Ordering::Relaxed);
    }

    /// Stops the listener and waits for its thread (its socket file is removed).
    pub fn stop(&self) {
        let _ = self.stop.send(true);
        let thread = self.thread.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(t) = thread {
            let _ = t.join();
        }
    }
}

/// Connections served at once; more wait in the kernel's backlog.
const MAX_CONNECTIONS: usize = 64;

enum Bound {
    Tcp(std::net::TcpListener),
    Unix(std::os::unix::net::UnixListener, PathBuf),
}

/// Binds the admin listener and starts its thread. `Err`: why it could not (the server runs
/// on without it; the caller warns).
pub fn start(settings: &AdminSettings, generation: Generation) -> Result<AdminHandle, String> {
    let bound = match &settings.listen {
        AdminListen::Off => return Err("admin listener is off".into()),
        AdminListen::Tcp(addr) => {
            let l = std::net::TcpListener::bind(addr)
                .map_err(|e| format!("admin listener: cannot listen on {addr}: {e}"))?;
            l.set_nonblocking(true).map_err(|e| e.to_string())?;
            Bound::Tcp(l)
        }
        AdminListen::Unix(path) => Bound::Unix(bind_unix(path)?, path.clone()),
    };
    let (addr, path) = match &bound {
        Bound::Tcp(l) => (l.local_addr().ok(), None),
        Bound::Unix(_, p) => (None, Some(p.clone())),
    };
    let (stop, mut stop_rx) = watch::channel(false);
    let current = Arc::new(ArcSwap::from_pointee(generation));
    // The registry reads the generation current at each scrape.
    let facts: collect::FactSource = {
        let current = current.clone();
        Arc::new(move || status::facts(&current.load()))
    };
    let admin = Arc::new(Admin {
        current,
        control: ArcSwapOption::empty(),
        token: settings.token.clone(),
        public: settings.public,
        shutting_down: AtomicBool::new(false),
        registry: collect::registry(facts),
        started: std::time::Instant::now(),
    });
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("admin listener: cannot start its runtime: {e}"))?;
    let served = admin.clone();
    let thread = std::thread::Builder::new()
        .name("portcullis-admin".into())
        .spawn(move || {
            rt.block_on(async move {
                let open = Arc::new(AtomicUsize::new(0));
                match bound {
                    Bound::Tcp(l) => {
                        let Ok(l) = tokio::net::TcpListener::from_std(l) else {
                            return;
                        };
                        loop {
                            tokio::select! {
                                _ = stop_rx.wait_for(|s| *s) => break,
                                r = l.accept() => if let Ok((s, _)) = r {
                                    let _ = s.set_nodelay(true);
                                    spawn_conn(s, Peer::Tcp, &served, &open);
                                },
                            }
                        }
                    }
                    Bound::Unix(l, path) => {
                        let Ok(l) = tokio::net::UnixListener::from_std(l) else {
                            return;
                        };
                        loop {
                            tokio::select! {
                                _ = stop_rx.wait_for(|s| *s) => break,
                                r = l.accept() => if let Ok((s, _)) = r {
                                    spawn_conn(s, Peer::Unix, &served, &open);
                                },
                            }
                        }
                        let _ = std::fs::remove_file(path);
                    }
                }
            })
        })
        .map_err(|e| format!("admin listener: cannot start its thread: {e}"))?;
    Ok(AdminHandle {
        admin,
        addr,
        path,
        stop,
        thread: std::sync::Mutex::new(Some(thread)),
    })
}

/// Binds a unix socket at `path`, replacing a stale socket file (one nobody listens on) but
/// never a live one or anything that is not a socket. Only the owner may connect (0600).
fn bind_unix(path: &std::path::Path) -> Result<std::os::unix::net::UnixListener, String> {
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    let shown = path.display();
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if !meta.file_type().is_socket() {
            return Err(format!(
                "admin listener: {shown} exists and is not a socket; not replacing it"
            ));
        }
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(format!(
                "admin listener: {shown} is in use by another process"
            ));
        }
        let _ = std::fs::remove_file(path);
    }
    let l = std::os::unix::net::UnixListener::bind(path)
        .map_err(|e| format!("admin listener: cannot listen on {shown}: {e}"))?;
    let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600));
    l.set_nonblocking(true).map_err(|e| e.to_string())?;
    Ok(l)
}

#[derive(Clone, Copy)]
enum Peer {
    Tcp,
    Unix,
}

fn spawn_conn<S>(stream: S, peer: Peer, admin: &Arc<Admin>, open: &Arc<AtomicUsize>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    if open.fetch_add(1, Ordering::Relaxed) >= MAX_CONNECTIONS {
        open.fetch_sub(1, Ordering::Relaxed);
        return;
    }
    let (admin, open) = (admin.clone(), open.clone());
    tokio::spawn(async move {
        let svc = hyper::service::service_fn(move |req| {
            let admin = admin.clone();
            async move { Ok::<_, Infallible>(handle(&admin, peer, req)) }
        });
        let conn = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(Duration::from_secs(10))
            .serve_connection(TokioIo::new(stream), svc);
        let _ = tokio::time::timeout(Duration::from_secs(300), conn).await;
        open.fetch_sub(1, Ordering::Relaxed);
    });
}

/// The Content-Security-Policy of every answer: nothing but this listener's own script, style
/// and JSON.
pub const CSP: &str = "default-src 'none'; style-src 'self'; script-src 'self'; img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'";

type Answer = Response<Full<Bytes>>;

fn answer(status: StatusCode, content_type: &'static str, body: impl Into<Bytes>) -> Answer {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    r
}

fn text(status: StatusCode, body: impl Into<String>) -> Answer {
    let mut b = body.into();
    if !b.ends_with('\n') {
        b.push('\n');
    }
    answer(status, "text/plain; charset=utf-8", b)
}

fn handle<B>(admin: &Admin, peer: Peer, req: Request<B>) -> Answer {
    if let Peer::Tcp = peer {
        if !admin.public && !host_is_local(&req) {
            return text(
                StatusCode::FORBIDDEN,
                "the admin listener answers requests for localhost or an IP address only",
            );
        }
        if let Some(origin) = req.headers().get(header::ORIGIN) {
            if !origin_matches_host(origin, &req) {
                return text(StatusCode::FORBIDDEN, "cross-origin requests are refused");
            }
        }
    }
    let path = req.uri().path();
    let method = req.method();
    let get = method == Method::GET || method == Method::HEAD;
    let mut resp = match path {
        "/" | "/status" if get => answer(
            StatusCode::OK,
            "text/html; charset=utf-8",
            status::PAGE_HTML,
        ),
        "/status.css" if get => answer(StatusCode::OK, "text/css; charset=utf-8", status::PAGE_CSS),
        "/status.js" if get => answer(
            StatusCode::OK,
            "text/javascript; charset=utf-8",
            status::PAGE_JS,
        ),
        "/favicon.svg" | "/favicon.ico" if get => {
            answer(StatusCode::OK, "image/svg+xml", status::FAVICON)
        }
        "/status.json" if get => {
            let current = admin.current.load();
            let json = status::json(
                &current,
                admin.started.elapsed(),
                admin.shutting_down.load(Ordering::Relaxed),
            );
            answer(StatusCode::OK, "application/json", json)
        }
        "/metrics" if get => answer(
            StatusCode::OK,
            collect::CONTENT_TYPE,
            collect::encode(&admin.registry),
        ),
        "/config" if get => {
            let current = admin.current.load();
            answer(
                StatusCode::OK,
                "text/plain; charset=utf-8",
                current.running_config.to_string(),
            )
        }
        "/health" if get => {
            if admin.shutting_down.load(Ordering::Relaxed) {
                text(StatusCode::SERVICE_UNAVAILABLE, "shutting down")
            } else {
                text(StatusCode::OK, "ok")
            }
        }
        "/reload" | "/upgrade" if method == Method::POST => {
            if let Err(why) = authorized(admin, peer, &req) {
                return text(StatusCode::FORBIDDEN, why);
            }
            let control = admin.control.load();
            let Some(control) = control.as_ref() else {
                return text(
                    StatusCode::NOT_IMPLEMENTED,
                    format!("{path} is not available in this server"),
                );
            };
            let result = if path == "/reload" {
                control.reload()
            } else {
                control.upgrade()
            };
            match result {
                Ok(msg) => text(StatusCode::OK, msg),
                Err(msg) => text(StatusCode::INTERNAL_SERVER_ERROR, msg),
            }
        }
        "/" | "/status" | "/status.css" | "/status.js" | "/status.json" | "/metrics"
        | "/config" | "/health" => {
            let mut r = text(StatusCode::METHOD_NOT_ALLOWED, "use GET");
            r.headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
            r
        }
        "/reload" | "/upgrade" => {
            let mut r = text(StatusCode::METHOD_NOT_ALLOWED, "use POST");
            r.headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static("POST"));
            r
        }
        _ => text(
            StatusCode::NOT_FOUND,
            "not found; see / for the status page, /metrics, /config, /health",
        ),
    };
    if method == Method::HEAD {
        *resp.body_mut() = Full::new(Bytes::new());
    }
    resp
}

/// The `Host` (or absent, HTTP/1.0) names this machine by address or as `localhost`.
fn host_is_local<B>(req: &Request<B>) -> bool {
    let Some(host) = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
    else {
        return true;
    };
    let Some(name) = crate::tls::names::host_from_authority(host) else {
        return false;
    };
    let name = name.trim_start_matches('[').trim_end_matches(']');
    name.eq_ignore_ascii_case("localhost") || name.parse::<std::net::IpAddr>().is_ok()
}

/// A browser's `Origin` names the same host and port as `Host`.
fn origin_matches_host<B>(origin: &HeaderValue, req: &Request<B>) -> bool {
    let (Ok(origin), Some(host)) = (
        origin.to_str(),
        req.headers()
            .get(header::HOST)
            .and_then(|h| h.to_str().ok()),
    ) else {
        return false;
    };
    origin
        .strip_prefix("http://")
        .is_some_and(|o| o.eq_ignore_ascii_case(host))
}

/// State-changing requests: always on the unix socket (its file mode guards it), over TCP with
/// the configured Bearer token.
fn authorized<B>(admin: &Admin, peer: Peer, req: &Request<B>) -> Result<(), &'static str> {
    if let Peer::Unix = peer {
        return Ok(());
    }
    let Some(token) = &admin.token else {
        return Err("state-changing requests over TCP need admin.token_file; or use the unix socket (admin.listen = \"unix:/path\")");
    };
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    let Some(given) = given else {
        return Err("missing Authorization: Bearer <token> (the token in admin.token_file)");
    };
    // Compared as SHA-256 digests: the comparison's time depends only on the digests, whose
    // common prefix tells nothing about the token.
    let digest = |s: &str| aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, s.as_bytes());
    if digest(given).as_ref() == digest(&token.0).as_ref() {
        Ok(())
    } else {
        Err("wrong admin token")
    }
}
