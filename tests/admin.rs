//! The admin listener over real sockets: its configuration checks, the routes (`/health`,
//! `/config` without secrets, the status page with its CSP), and who may `POST /reload`:
//! anyone on the unix socket, over TCP only with the Bearer token.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use portcullis::config::admin::AdminListen;
use portcullis::ops::admin::Control;

fn admin_addr(srv: &TestServer) -> SocketAddr {
    srv.server
        .as_ref()
        .and_then(|s| s.admin())
        .and_then(|a| a.local_addr())
        .expect("the admin listener runs")
}

async fn call(addr: SocketAddr, method: &str, path: &str, extra: &str) -> RawResp {
    let req = format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nContent-Length: 0\r\n{extra}\r\n");
    raw_tcp(addr, req.as_bytes())
        .await
        .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
}

fn problems(env: &TestEnv, body: &str) -> Result<Vec<String>, Vec<String>> {
    let path = env.write_config(body);
    match env.load(&path) {
        Ok((_, w)) => Ok(w.iter().map(|p| p.to_string()).collect()),
        Err(p) => Err(p.iter().map(|p| p.to_string()).collect()),
    }
}

struct Fake;
impl Control for Fake {
    fn reload(&self) -> Result<String, String> {
        Ok("reloaded: 2 sites".into())
    }
    fn upgrade(&self) -> Result<String, String> {
        Err("portcullis.toml:3: no new binary at /usr/sbin/portcullis".into())
    }
}

#[test]
fn a_public_address_is_refused_unless_public_is_set() {
    let env = TestEnv::new();
    let errs = problems(
        &env,
        &format!("{ONE_SITE}\n[admin]\nlisten = \"0.0.0.0:2019\"\n"),
    )
    .expect_err("0.0.0.0 accepted");
    let text = std::fs::read_to_string(env.path("portcullis.toml")).unwrap();
    let line = text
        .lines()
        .position(|l| l.contains("0.0.0.0:2019"))
        .unwrap()
        + 1;
    let p = errs
        .iter()
        .find(|p| p.contains("admin.listen") && p.contains("not a loopback address"))
        .unwrap_or_else(|| panic!("{errs:?}"));
    assert!(p.contains(&format!("portcullis.toml:{line}: error")), "{p}");
    assert!(p.contains("admin.public = true"), "{p}");
    problems(
        &env,
        &format!("{ONE_SITE}\n[admin]\nlisten = \"0.0.0.0:2019\"\npublic = true\n"),
    )
    .expect("public = true allows it");
    let errs = problems(
        &env,
        &format!("{ONE_SITE}\n[admin]\nlisten = \"localhost:port\"\n"),
    )
    .unwrap_err();
    assert!(
        errs.iter()
            .any(|p| p.contains("admin.listen = \"localhost:port\" is not an address")),
        "{errs:?}"
    );
    let errs = problems(
        &env,
        &format!("{ONE_SITE}\n[admin]\ntoken_file = \"missing.token\"\n"),
    )
    .unwrap_err();
    assert!(
        errs.iter()
            .any(|p| p.contains("admin.token_file") && p.contains("cannot read it")),
        "{errs:?}"
    );
    env.write("short.token", "abc\n");
    let errs = problems(
        &env,
        &format!("{ONE_SITE}\n[admin]\ntoken_file = \"short.token\"\n"),
    )
    .unwrap_err();
    assert!(
        errs.iter().any(|p| p.contains("shorter than 16")),
        "{errs:?}"
    );
    let errs = problems(
        &env,
        &format!("{ONE_SITE}\n[admin]\nlisten = \"127.0.0.1:2019\"\nport = 1\n"),
    )
    .unwrap_err();
    assert!(
        errs.iter().any(|p| p.contains("unknown field `port`")),
        "{errs:?}"
    );
}

#[test]
fn default_is_loopback_2019_and_off_disables() {
    let env = TestEnv::new();
    let path = env.write_config(ONE_SITE);
    let (config, _) = env.load(&path).unwrap();
    assert_eq!(
        config.admin.listen,
        AdminListen::Tcp("127.0.0.1:2019".parse().unwrap())
    );
    let path = env.write_config(&format!("{ONE_SITE}\n[admin]\nlisten = \"off\"\n"));
    let (config, _) = env.load(&path).unwrap();
    assert_eq!(config.admin.listen, AdminListen::Off);
    let server = portcullis::server::Server::start(config).unwrap();
    assert!(server.admin().is_none());
    server.shutdown();
}

/// An admin address already taken: the server serves anyway, with a warning.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_taken_admin_address_is_a_warning_not_a_failure() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let env = TestEnv::new();
    let path = env.write_config(&format!("{ONE_SITE}\n[admin]\nlisten = \"{addr}\"\n"));
    let (config, _) = env.load(&path).unwrap();
    let server =
        portcullis::server::Server::start(config).expect("starts without its admin listener");
    assert!(server.admin().is_none());
    let note = server
        .notes
        .iter()
        .map(|n| n.to_string())
        .find(|n| n.contains("admin listener"));
    let note = note.unwrap_or_else(|| panic!("{:?}", server.notes));
    assert!(
        note.contains(&addr.to_string()) && note.contains("warning"),
        "{note}"
    );
    let https = server.https_addrs()[0];
    assert_eq!(get(https, Some("alpha.test"), "/", "h2").await.status, 200);
    std::thread::spawn(move || server.shutdown());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_over_tcp_needs_the_token() {
    let env = TestEnv::new();
    let token = "0123456789abcdef0123456789abcdef";
    env.write("admin.token", format!("{token}\n"));
    let mut srv = env.start(&format!(
        "{ONE_SITE}\n[admin]\nlisten = \"127.0.0.1:0\"\ntoken_file = \"admin.token\"\n"
    ));
    let admin = admin_addr(&srv);
    let bearer = format!("Authorization: Bearer {token}\r\n");
    let r = call(admin, "POST", "/reload", "").await;
    assert_eq!(r.status, 403, "{}", r.text());
    assert!(r.text().contains("Bearer"), "{}", r.text());
    let r = call(
        admin,
        "POST",
        "/reload",
        "Authorization: Bearer 0123456789abcdef0123456789abcdeX\r\n",
    )
    .await;
    assert_eq!(r.status, 403);
    assert!(r.text().contains("wrong admin token"));
    // With the token, and nothing to call yet: 501.
    let r = call(admin, "POST", "/reload", &bearer).await;
    assert_eq!(r.status, 501, "{}", r.text());
    let server = srv.take();
    server.admin().unwrap().set_control(Box::new(Fake));
    let r = call(admin, "POST", "/reload", &bearer).await;
    assert_eq!((r.status, r.text().trim()), (200, "reloaded: 2 sites"));
    let r = call(admin, "POST", "/upgrade", &bearer).await;
    assert_eq!(r.status, 500);
    assert!(r.text().contains("no new binary"));
    // GET is not how to reload; POST is not how to read.
    assert_eq!(call(admin, "GET", "/reload", &bearer).await.status, 405);
    assert_eq!(call(admin, "POST", "/metrics", &bearer).await.status, 405);
    // A browser page elsewhere cannot reach it: a foreign Origin, or a name that is not local.
    let r = call(
        admin,
        "POST",
        "/reload",
        &format!("{bearer}Origin: http://evil.example\r\n"),
    )
    .await;
    assert_eq!(r.status, 403);
    let r = raw_tcp(
        admin,
        b"GET /config HTTP/1.1\r\nHost: rebound.evil.example:2019\r\nConnection: close\r\n\r\n",
    )
    .await
    .unwrap();
    assert_eq!(r.status, 403);
    std::thread::spawn(move || server.shutdown());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_without_a_token_file_is_refused_over_tcp() {
    let srv = start(&format!("{ONE_SITE}\n[admin]\nlisten = \"127.0.0.1:0\"\n"));
    let r = call(
        admin_addr(&srv),
        "POST",
        "/reload",
        "Authorization: Bearer anything-at-all-here\r\n",
    )
    .await;
    assert_eq!(r.status, 403);
    assert!(r.text().contains("token_file"), "{}", r.text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_unix_socket_allows_reload_without_a_token() {
    let env = TestEnv::new();
    let sock = env.path("admin.sock");
    let mut srv = env.start(&format!(
        "{ONE_SITE}\n[admin]\nlisten = \"unix:{}\"\n",
        sock.display()
    ));
    let server = srv.take();
    let handle = server.admin().expect("admin on the socket");
    assert_eq!(handle.socket_path(), Some(sock.as_path()));
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&sock).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let unix_call = |req: &'static [u8]| {
        let sock = sock.clone();
        async move {
            let mut s = tokio::net::UnixStream::connect(&sock).await.unwrap();
            raw_exchange(&mut s, req).await.unwrap()
        }
    };
    let r = unix_call(b"POST /reload HTTP/1.1\r\nHost: localhost\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").await;
    assert_eq!(r.status, 501);
    handle.set_control(Box::new(Fake));
    let r = unix_call(b"POST /reload HTTP/1.1\r\nHost: localhost\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").await;
    assert_eq!(r.status, 200);
    let r =
        unix_call(b"GET /health HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").await;
    assert_eq!((r.status, r.text().trim()), (200, "ok"));
    server.shutdown();
    assert!(!sock.exists(), "socket file left behind");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_is_shown_without_secrets() {
    let env = TestEnv::new();
    let token = "tok-3f9a1c0e5b7d2468ace13579bdf02468";
    env.write("admin.token", token);
    let hash = "$2b$04$Zf5JrFGSOzAnoR0YKB7OFeRLbkwLxsV3yFLHkBbm1wPv6Jq1ALMle";
    let srv = env.start(&format!(
        r#"
[acme]
email = "ops@alpha.test"
eab_kid = "kid-visible"
eab_hmac_key = "aG1hYy1zZWNyZXQta2V5LXZhbHVl"

[[site]]
name = "alpha"
hosts = ["alpha.test"]
cert = "certs/alpha.pem"
key = "certs/alpha.key"
[site.basic_auth]
users = {{ alice = "{hash}" }}
[[site.route]]
path = "/"
respond = {{ status = 200, body = "hi" }}

[admin]
listen = "127.0.0.1:0"
token_file = "admin.token"
"#
    ));
    let r = call(admin_addr(&srv), "GET", "/config", "").await;
    assert_eq!(r.status, 200);
    let shown = r.text();
    for secret in [hash, "aG1hYy1zZWNyZXQta2V5LXZhbHVl", token] {
        assert!(!shown.contains(secret), "{secret} in /config:\n{shown}");
    }
    let key_pem = std::fs::read_to_string(srv.env.path("certs/alpha.key")).unwrap();
    let key_line = key_pem.lines().nth(1).unwrap();
    assert!(!shown.contains(key_line), "key material in /config");
    for kept in [
        "kid-visible",
        "alice",
        "certs/alpha.key",
        "<redacted>",
        "admin.token",
    ] {
        assert!(
            shown.contains(kept),
            "{kept} missing from /config:\n{shown}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_is_ok_while_serving_and_503_while_shutting_down() {
    let mut srv = start(&format!(
        "{ONE_SITE}\n[limits]\nhandshake_timeout = \"3s\"\n[admin]\nlisten = \"127.0.0.1:0\"\n"
    ));
    let admin = admin_addr(&srv);
    let r = call(admin, "GET", "/health", "").await;
    assert_eq!((r.status, r.text().trim()), (200, "ok"));
    // A connection that never sends its ClientHello keeps the server draining for a while.
    let _slow = tokio::net::TcpStream::connect(srv.https).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let server = srv.take();
    let stopping = std::thread::spawn(move || server.shutdown());
    let mut seen = 0;
    for _ in 0..100 {
        seen = call(admin, "GET", "/health", "").await.status;
        if seen == 503 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(seen, 503);
    tokio::task::spawn_blocking(move || stopping.join().unwrap())
        .await
        .unwrap();
    // Stopped with the server.
    let mut refused = false;
    for _ in 0..50 {
        if tokio::net::TcpStream::connect(admin).await.is_err() {
            refused = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(refused, "admin listener still accepting after shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_page_and_its_assets_carry_a_strict_csp() {
    let srv = start(&format!("{TWO_SITES}\n[admin]\nlisten = \"127.0.0.1:0\"\n"));
    let admin = admin_addr(&srv);
    for (path, ty) in [
        ("/", "text/html"),
        ("/status.css", "text/css"),
        ("/status.js", "text/javascript"),
        ("/status.json", "application/json"),
    ] {
        let r = call(admin, "GET", path, "").await;
        assert_eq!(r.status, 200, "{path}");
        assert!(r.header("content-type").unwrap().starts_with(ty), "{path}");
        let csp = r.header("content-security-policy").unwrap();
        assert!(csp.starts_with("default-src 'none'; style-src 'self'; script-src 'self'; img-src 'self' data:; connect-src 'self'"), "{csp}");
        assert_eq!(r.header("x-content-type-options"), Some("nosniff"));
    }
    let page = call(admin, "GET", "/", "").await.text();
    assert!(
        !page.contains("<style") && !page.contains(" style=") && !page.contains("<script>"),
        "inline code in the page"
    );
    let json: serde_json::Value =
        serde_json::from_str(&call(admin, "GET", "/status.json", "").await.text()).unwrap();
    let sites: Vec<&str> = json["sites"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(sites, ["alpha", "beta"]);
    let cert = &json["sites"][0]["certs"][0];
    assert!(
        cert["names"]
            .as_array()
            .unwrap()
            .iter()
            .any(|n| n == "alpha.test"),
        "{cert}"
    );
    assert!(cert["not_after"].as_i64().unwrap() > json["now"].as_i64().unwrap());
    assert_eq!(call(admin, "GET", "/nope", "").await.status, 404);
}
