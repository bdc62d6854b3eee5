//! Live reload and binary upgrade: configurations swapped under a steady stream of requests
//! (HTTP/1.1 keep-alive, HTTP/1.1 new connections, HTTP/2), broken configurations refused
//! with their errors, certificate files replaced on disk, listeners added and removed, and
//! the binary replaced by a new process that takes over the listening sockets — all without
//! one failed request.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};

/// One site answering `gen N` on `/`, with the alpha certificate.
fn config(generation: u32) -> String {
    format!(
        "{}[[site]]\nname = \"alpha\"\nhosts = [\"alpha.test\", \"www.alpha.test\"]\ncert = \"certs/alpha.pem\"\nkey = \"certs/alpha.key\"\n[[site.route]]\npath = \"/\"\nrespond = {{ body = \"gen {generation}\" }}\n",
        TestEnv::prelude()
    )
}

/// Each a different kind of mistake, each refused with a message naming it.
fn broken(i: u32) -> (String, &'static str) {
    match i % 3 {
        0 => (
            format!("{}\n[limits]\nheader_timeout = \"soon\"\n", config(999)),
            "header_timeout",
        ),
        1 => (
            config(999).replace("certs/alpha.key", "certs/missing.key"),
            "missing.key",
        ),
        _ => (
            format!("{}\n[[site]]\nname = \"alpha\"\n", config(999)),
            "portcullis.toml",
        ),
    }
}

/// What the clients saw.
#[derive(Default)]
struct Tally {
    ok: AtomicU64,
    failed: AtomicU64,
    errors: Mutex<Vec<String>>,
    /// Latest body seen by any client.
    last: Mutex<String>,
}

impl Tally {
    fn record(&self, what: &str, r: Result<(u16, String), String>) {
        match r {
            Ok((200, body)) => {
                self.ok.fetch_add(1, Ordering::Relaxed);
                *self.last.lock().unwrap() = body;
            }
            Ok((status, body)) => {
                self.failed.fetch_add(1, Ordering::Relaxed);
                self.errors
                    .lock()
                    .unwrap()
                    .push(format!("{what}: status {status}: {body}"));
            }
            Err(e) => {
                self.failed.fetch_add(1, Ordering::Relaxed);
                self.errors.lock().unwrap().push(format!("{what}: {e}"));
            }
        }
    }
}

type Sender1 = hyper::client::conn::http1::SendRequest<Full<Bytes>>;
type Sender2 = hyper::client::conn::http2::SendRequest<Full<Bytes>>;

async fn connect(
    addr: SocketAddr,
    alpn: &'static str,
) -> Result<TokioIo<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>, String> {
    let cfg = ClientOpts::default().alpn(&[alpn]).build();
    tls_connect(addr, Some(ALPHA), cfg)
        .await
        .map(TokioIo::new)
        .map_err(|e| format!("connect: {e}"))
}

fn get() -> http::Request<Full<Bytes>> {
    http::Request::get("https://alpha.test/")
        .header(http::header::HOST, ALPHA)
        .body(Full::new(Bytes::new()))
        .unwrap()
}

async fn body_of(resp: http::Response<hyper::body::Incoming>) -> Result<(u16, String), String> {
    let status = resp.status().as_u16();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| format!("body: {e}"))?
        .to_bytes();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

/// HTTP/1.1 keep-alive: one connection for as long as the server keeps it; a response with
/// `Connection: close` ends it and the next request opens a new one.
async fn h1_keep_alive(addr: Arc<Mutex<SocketAddr>>, tally: Arc<Tally>, stop: Arc<AtomicBool>) {
    let mut sender: Option<Sender1> = None;
    while !stop.load(Ordering::Relaxed) {
        if sender.as_ref().is_none_or(|s| s.is_closed()) {
            let a = *addr.lock().unwrap();
            match connect(a, "http/1.1").await {
                Ok(io) => match hyper::client::conn::http1::handshake(io).await {
                    Ok((s, conn)) => {
                        tokio::spawn(conn);
                        sender = Some(s);
                    }
                    Err(e) => {
                        tally.record("h1 keep-alive", Err(format!("handshake: {e}")));
                        continue;
                    }
                },
                Err(e) => {
                    tally.record("h1 keep-alive", Err(e));
                    continue;
                }
            }
        }
        let s = sender.as_mut().unwrap();
        if s.ready().await.is_err() {
            sender = None; // closed after its last response: not a request lost
            continue;
        }
        let r = match tokio::time::timeout(IO_TIMEOUT, s.send_request(get())).await {
            Ok(Ok(resp)) => {
                let closes = resp
                    .headers()
                    .get(http::header::CONNECTION)
                    .is_some_and(|v| v == "close");
                let r = body_of(resp).await;
                if closes {
                    sender = None;
                }
                r
            }
            Ok(Err(e)) => {
                sender = None;
                Err(format!("request: {e}"))
            }
            Err(_) => Err("timeout".into()),
        };
        tally.record("h1 keep-alive", r);
    }
}

/// HTTP/1.1, a new connection for every request.
async fn h1_new(addr: Arc<Mutex<SocketAddr>>, tally: Arc<Tally>, stop: Arc<AtomicBool>) {
    while !stop.load(Ordering::Relaxed) {
        let a = *addr.lock().unwrap();
        let r = async {
            let io = connect(a, "http/1.1").await?;
            let (mut s, conn) = hyper::client::conn::http1::handshake(io)
                .await
                .map_err(|e| format!("handshake: {e}"))?;
            tokio::spawn(conn);
            let resp = s
                .send_request(get())
                .await
                .map_err(|e| format!("request: {e}"))?;
            body_of(resp).await
        };
        let r = tokio::time::timeout(IO_TIMEOUT, r)
            .await
            .unwrap_or_else(|_| Err("timeout".into()));
        tally.record("h1 new", r);
    }
}

/// HTTP/2: one connection until the server says GOAWAY (then a new one), with two requests
/// in flight at a time.
async fn h2_client(addr: Arc<Mutex<SocketAddr>>, tally: Arc<Tally>, stop: Arc<AtomicBool>) {
    let mut sender: Option<Sender2> = None;
    while !stop.load(Ordering::Relaxed) {
        if sender.as_ref().is_none_or(|s| s.is_closed()) {
            let a = *addr.lock().unwrap();
            let io = match connect(a, "h2").await {
                Ok(io) => io,
                Err(e) => {
                    tally.record("h2", Err(e));
                    continue;
                }
            };
            match hyper::client::conn::http2::handshake(TokioExecutor::new(), io).await {
                Ok((s, conn)) => {
                    tokio::spawn(conn);
                    sender = Some(s);
                }
                Err(e) => {
                    tally.record("h2", Err(format!("handshake: {e}")));
                    continue;
                }
            }
        }
        let s = sender.as_mut().unwrap();
        if s.ready().await.is_err() {
            sender = None; // GOAWAY: no new streams here, none lost
            continue;
        }
        let (a, b) = (s.send_request(get()), s.send_request(get()));
        // A request the client never sent (hyper's "canceled": the connection had received
        // GOAWAY when the stream was to open) or the server refused unprocessed
        // (REFUSED_STREAM) is safe to send again, and clients do; any other error is a lost
        // request.
        let outcome = |r: Result<http::Response<hyper::body::Incoming>, hyper::Error>| async move {
            match r {
                Ok(r) => Some(body_of(r).await),
                Err(e) if e.is_canceled() || unprocessed(&e) => None,
                Err(e) => Some(Err(format!("request: {e}"))),
            }
        };
        let both = async {
            let (a, b) = tokio::join!(a, b);
            (outcome(a).await, outcome(b).await)
        };
        match tokio::time::timeout(IO_TIMEOUT, both).await {
            Ok((a, b)) => {
                for r in [a, b] {
                    match r {
                        Some(r) => tally.record("h2", r),
                        None => sender = None,
                    }
                }
            }
            Err(_) => tally.record("h2", Err("timeout".into())),
        }
    }
}

/// Whether HTTP/2 says the server did not process the stream: refused (REFUSED_STREAM), or
/// above the last stream id of a graceful GOAWAY (NO_ERROR) — RFC 9113 §8.7: safe to retry,
/// and clients do.
fn unprocessed(e: &hyper::Error) -> bool {
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        if let Some(h2) = s.downcast_ref::<h2::Error>() {
            return h2.reason() == Some(h2::Reason::REFUSED_STREAM)
                || (h2.is_go_away()
                    && h2.is_remote()
                    && h2.reason() == Some(h2::Reason::NO_ERROR));
        }
        source = s.source();
    }
    false
}

/// Starts the three clients; they run until `stop`.
fn start_clients(
    rt: &tokio::runtime::Runtime,
    addr: Arc<Mutex<SocketAddr>>,
    tally: &Arc<Tally>,
    stop: &Arc<AtomicBool>,
) -> Vec<tokio::task::JoinHandle<()>> {
    vec![
        rt.spawn(h1_keep_alive(addr.clone(), tally.clone(), stop.clone())),
        rt.spawn(h1_new(addr.clone(), tally.clone(), stop.clone())),
        rt.spawn(h2_client(addr, tally.clone(), stop.clone())),
    ]
}

/// Waits until a fresh request sees `want` as the body.
fn wait_body(rt: &tokio::runtime::Runtime, addr: SocketAddr, want: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let resp = rt.block_on(common::get(addr, Some(ALPHA), "/", "http/1.1"));
        if resp.text() == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "still {:?} instead of {want:?}",
            resp.text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn portcullis(args: &[&str]) -> (i32, String) {
    let out = run_with_timeout(Command::new(bin()).args(args), Duration::from_secs(60));
    (
        out.status.code().unwrap_or(-1),
        format!("{}{}", text(&out.stdout), text(&out.stderr)),
    )
}

/// The leaf certificate a fresh handshake presents.
fn served_leaf(rt: &tokio::runtime::Runtime, addr: SocketAddr) -> Vec<u8> {
    let cfg = ClientOpts::default().build();
    let tls = rt
        .block_on(tls_connect(addr, Some(ALPHA), cfg))
        .expect("handshake");
    tls_info(&tls).chain[0].to_vec()
}

fn kill(pid: u32) {
    let _ = Command::new("kill").arg(pid.to_string()).status();
}

#[test]
fn twenty_reloads_a_replaced_certificate_and_a_binary_upgrade_lose_no_request() {
    let env = TestEnv::new();
    let path = env.write_config_raw(&config(0));
    let cfg = path.to_str().unwrap().to_owned();
    let mut srv = ServeProcess::spawn(&["serve", "--config", &cfg], &[]);
    let addr =
        parse_listen_line(&srv.wait_for_line("listening on https://", Duration::from_secs(30)));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let tally = Arc::new(Tally::default());
    let stop = Arc::new(AtomicBool::new(false));
    let clients = start_clients(&rt, Arc::new(Mutex::new(addr)), &tally, &stop);
    std::thread::sleep(Duration::from_millis(300));

    // 20 reloads, valid and broken in turn; every fourth through SIGHUP instead of the command.
    let mut applied = 0;
    for i in 1..=20u32 {
        if i % 2 == 1 {
            env.write_config_raw(&config(i));
            if i % 4 == 1 {
                srv.signal("HUP");
                srv.wait_for_line("configuration reloaded", Duration::from_secs(20));
            } else {
                let (code, out) = portcullis(&["reload", "--config", &cfg]);
                assert_eq!(code, 0, "reload {i} of a valid config: {out}");
                assert!(out.contains("configuration reloaded"), "{out}");
            }
            wait_body(&rt, addr, &format!("gen {i}"));
            applied = i;
        } else {
            let (text, names) = broken(i);
            env.write_config_raw(&text);
            let (code, out) = portcullis(&["reload", "--config", &cfg]);
            assert_eq!(
                code, 1,
                "reload {i} of a broken config must be refused: {out}"
            );
            assert!(out.contains(names), "the refusal names {names:?}: {out}");
            assert!(out.contains("reload refused"), "{out}");
            // The old configuration still answers.
            wait_body(&rt, addr, &format!("gen {applied}"));
        }
    }
    env.write_config_raw(&config(applied));

    // A certificate replaced on disk is served without a reload command...
    let before = served_leaf(&rt, addr);
    env.write_chain("alpha", &pki().leaf(&[ALPHA, ALPHA_WWW], Alg::Ecdsa));
    let deadline = Instant::now() + Duration::from_secs(15);
    while served_leaf(&rt, addr) == before {
        assert!(
            Instant::now() < deadline,
            "the new certificate file was not picked up"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let replaced = served_leaf(&rt, addr);
    // ...and a broken one is refused, the last good one kept.
    env.write(
        "certs/alpha.key",
        "-----BEGIN PRIVATE KEY-----\nbroken\n-----END PRIVATE KEY-----\n",
    );
    srv.wait_for_line("reload refused", Duration::from_secs(15));
    assert_eq!(
        served_leaf(&rt, addr),
        replaced,
        "the broken pair replaced the good one"
    );
    env.write_chain("alpha", &pki().leaf(&[ALPHA, ALPHA_WWW], Alg::Ecdsa));
    srv.wait_for_line("configuration reloaded", Duration::from_secs(15));

    // Binary upgrade: a new process takes the sockets over, the old one exits.
    let old_pid = srv.child.id();
    let (code, out) = portcullis(&["upgrade", "--config", &cfg]);
    assert_eq!(code, 0, "upgrade: {out}");
    let new_pid: u32 = out
        .split("process ")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no PID in {out:?}"));
    assert_ne!(new_pid, old_pid);
    let exited = srv.wait_exit(Duration::from_secs(30));
    assert!(
        exited.is_some_and(|s| s.success()),
        "the old process exits cleanly: {exited:?}"
    );
    std::thread::sleep(Duration::from_millis(500));
    wait_body(&rt, addr, &format!("gen {applied}"));
    // The new process reloads too.
    env.write_config_raw(&config(100));
    let (code, out) = portcullis(&["reload", "--config", &cfg]);
    assert_eq!(code, 0, "reload after the upgrade: {out}");
    wait_body(&rt, addr, "gen 100");

    stop.store(true, Ordering::Relaxed);
    for c in clients {
        let _ = rt.block_on(c);
    }
    kill(new_pid);
    let ok = tally.ok.load(Ordering::Relaxed);
    let failed = tally.failed.load(Ordering::Relaxed);
    let errors = tally.errors.lock().unwrap().clone();
    eprintln!("{ok} requests served, {failed} failed");
    assert_eq!(failed, 0, "failed requests: {errors:#?}");
    assert!(ok > 200, "only {ok} requests went through");
}

/// Starts an in-process server on `body` and returns it with its environment.
fn in_process(env: &TestEnv, text: &str) -> (portcullis::server::Server, std::path::PathBuf) {
    let path = env.write_config_raw(text);
    let (cfg, _) = env.load(&path).expect("config loads");
    (portcullis::server::Server::start(cfg).expect("start"), path)
}

fn reload(
    server: &portcullis::server::Server,
    env: &TestEnv,
    path: &Path,
    text: &str,
) -> Result<(), String> {
    env.write_config_raw(text);
    let (cfg, _) = env.load(path).map_err(|p| format!("{p:?}"))?;
    server.reload(cfg).map(|_| ())
}

#[test]
fn reload_adds_and_removes_listeners() {
    let env = TestEnv::new();
    let (server, path) = in_process(&env, &config(1));
    assert_eq!(server.https_addrs().len(), 1);
    let two = config(2).replace(
        "https = [\"127.0.0.1:0\"]",
        "https = [\"127.0.0.1:0\", \"127.0.0.1:0\"]",
    );
    reload(&server, &env, &path, &two).unwrap();
    let addrs = server.https_addrs();
    assert_eq!(addrs.len(), 2, "{addrs:?}");
    let rt = tokio::runtime::Runtime::new().unwrap();
    for a in &addrs {
        assert_eq!(
            rt.block_on(common::get(*a, Some(ALPHA), "/", "http/1.1"))
                .text(),
            "gen 2"
        );
    }
    // Back to one: the second address stops taking connections.
    reload(&server, &env, &path, &config(3)).unwrap();
    assert_eq!(server.https_addrs(), vec![addrs[0]]);
    let deadline = Instant::now() + Duration::from_secs(5);
    while std::net::TcpStream::connect(addrs[1]).is_ok() {
        assert!(Instant::now() < deadline, "{} still accepts", addrs[1]);
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        rt.block_on(common::get(addrs[0], Some(ALPHA), "/", "http/1.1"))
            .text(),
        "gen 3"
    );
    server.shutdown();
}

#[test]
fn a_reload_that_cannot_bind_changes_nothing() {
    let env = TestEnv::new();
    let (server, path) = in_process(&env, &config(1));
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let clash = config(2).replace(
        "https = [\"127.0.0.1:0\"]",
        &format!("https = [\"127.0.0.1:0\", \"127.0.0.1:{port}\"]"),
    );
    let err = reload(&server, &env, &path, &clash).unwrap_err();
    assert!(err.contains(&port.to_string()), "{err}");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let a = server.https_addrs()[0];
    assert_eq!(
        rt.block_on(common::get(a, Some(ALPHA), "/", "http/1.1"))
            .text(),
        "gen 1"
    );
    server.shutdown();
}

#[test]
fn sessions_resume_across_a_reload() {
    let env = TestEnv::new();
    let (server, path) = in_process(&env, &config(1));
    let addr = server.https_addrs()[0];
    let cfg = ClientOpts::default().tls13().build();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        // A whole exchange: the ticket(s) that follow the handshake are read.
        let tls = tls_connect(addr, Some(ALPHA), cfg.clone()).await.unwrap();
        let resp = common::send(tls, Req::get(ALPHA, "/")).await.unwrap();
        assert_eq!(resp.text(), "gen 1");
    });
    reload(&server, &env, &path, &config(2)).unwrap();
    let resumed = rt.block_on(async {
        let tls = tls_connect(addr, Some(ALPHA), cfg.clone()).await.unwrap();
        tls_info(&tls).kind
    });
    assert_eq!(
        resumed,
        Some(rustls::HandshakeKind::Resumed),
        "a ticket from before the reload resumes"
    );
    server.shutdown();
}

#[test]
fn keep_alive_connection_closes_after_its_next_response_on_reload() {
    let env = TestEnv::new();
    let (server, path) = in_process(&env, &config(1));
    let addr = server.https_addrs()[0];
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let io = connect(addr, "http/1.1").await.unwrap();
        let (mut s, conn) = hyper::client::conn::http1::handshake(io).await.unwrap();
        tokio::spawn(conn);
        let r = s.send_request(get()).await.unwrap();
        assert!(r.headers().get(http::header::CONNECTION).is_none());
        assert_eq!(body_of(r).await.unwrap().1, "gen 1");
        reload(&server, &env, &path, &config(2)).unwrap();
        // The idle connection was not closed under the client: its next request is served
        // (by the configuration it was made with) and is its last.
        s.ready().await.expect("still open after the reload");
        let r = s.send_request(get()).await.unwrap();
        assert_eq!(r.headers().get(http::header::CONNECTION).unwrap(), "close");
        assert_eq!(body_of(r).await.unwrap().1, "gen 1");
        // A new connection gets the new configuration.
        assert_eq!(
            common::get(addr, Some(ALPHA), "/", "http/1.1").await.text(),
            "gen 2"
        );
    });
    server.shutdown();
}
