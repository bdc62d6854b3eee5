//! On-demand TLS against pebble (names resolved to 127.0.0.1 by pebble-challtestsrv): approved
//! names get a certificate at their first handshake; refused names, floods of names and
//! restarts behave as the abuse limits say.

mod common;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::pebble::*;
use common::*;

/// An `ask` endpoint: approves names starting with `ok`, records every name asked about.
struct Ask {
    url: String,
    asked: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
}

impl Drop for Ask {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

impl Ask {
    fn start() -> Ask {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/check", l.local_addr().unwrap());
        l.set_nonblocking(true).unwrap();
        let asked = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (a, s) = (asked.clone(), stop.clone());
        std::thread::spawn(move || {
            while !s.load(Ordering::SeqCst) {
                let Ok((mut c, _)) = l.accept() else {
                    std::thread::sleep(Duration::from_millis(10));
                    continue;
                };
                c.set_nonblocking(false).unwrap();
                c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                let mut buf = [0u8; 2048];
                let n = c.read(&mut buf).unwrap_or(0);
                let head = String::from_utf8_lossy(&buf[..n]).to_string();
                let name = head
                    .split_whitespace()
                    .nth(1)
                    .and_then(|p| p.split("domain=").nth(1))
                    .unwrap_or("")
                    .to_string();
                a.lock().unwrap().push(name.clone());
                let status = if name.starts_with("ok") {
                    "200 OK"
                } else {
                    "403 Forbidden"
                };
                let _ = c.write_all(
                    format!("HTTP/1.1 {status}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                        .as_bytes(),
                );
            }
        });
        Ask { url, asked, stop }
    }

    fn asked(&self) -> Vec<String> {
        self.asked.lock().unwrap().clone()
    }
}

struct Setup {
    env: TestEnv,
    _pebble: Pebble,
    _dns: ChallTestSrv,
    root: PathBuf,
    http_port: u16,
}

fn setup() -> Setup {
    let env = TestEnv::new();
    let dir = env.path("acme");
    std::fs::create_dir_all(&dir).unwrap();
    let test_ca = env.write("test-root.pem", &pki().root_pem);
    let http_port = free_port();
    let (pebble, dns) = start_pebble_resolving(&dir, http_port, free_port());
    let root = pebble_root(&dir, &pebble, &test_ca);
    env.write(
        "acme.toml",
        format!(
            "[acme]\nca = \"{}\"\nca_root = \"{}\"\n",
            pebble.directory,
            test_ca.display()
        ),
    );
    Setup {
        env,
        _pebble: pebble,
        _dns: dns,
        root,
        http_port,
    }
}

impl Setup {
    /// Starts `portcullis serve` with an on-demand site "shops" and `on_demand` settings.
    fn serve(&self, on_demand: &str) -> (ServeProcess, u16) {
        let acme = std::fs::read_to_string(self.env.path("acme.toml")).unwrap();
        let cfg = self.env.write_config_raw(&format!(
            "workers = 2\ndata_dir = \"data\"\n[listen]\nhttps = [\"127.0.0.1:0\"]\nhttp = [\"127.0.0.1:{}\"]\n\
             [tls]\nunknown_sni = \"reject\"\n{acme}\
             [on_demand]\nsite = \"shops\"\n{on_demand}\n\
             [[site]]\nname = \"shops\"\nhosts = [\"localhost\"]\nissuer = \"local\"\n\
             [[site.route]]\npath = \"/\"\nrespond = {{ body = \"shop\" }}\n",
            self.http_port
        ));
        let mut p = ServeProcess::spawn(&["serve", "--config", cfg.to_str().unwrap()], &[]);
        let line = p.wait_for_line("listening on https://", Duration::from_secs(10));
        (p, parse_listen_line(&line).port())
    }

    /// `curl https://NAME:PORT/` to 127.0.0.1, trusting pebble's root only.
    fn curl(&self, name: &str, port: u16) -> Output {
        curl_name(&self.root, name, port, 40)
    }
}

#[test]
fn an_approved_name_gets_its_certificate_at_the_first_handshake_and_keeps_it() {
    let s = setup();
    let ask = Ask::start();
    let (mut p, port) = s.serve(&format!("ask = \"{}\"\n", ask.url));

    let out = s.curl("ok1.shops.test", port);
    assert!(
        out.status.success() && text(&out.stdout) == "shop",
        "first handshake: {}\n{}",
        text(&out.stderr),
        p.stderr.join("\n")
    );
    p.wait_for_line("on-demand: certificate obtained", Duration::from_secs(5));
    // The second connection is served from memory: no new question, no new order.
    let out = s.curl("ok1.shops.test", port);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(ask.asked(), vec!["ok1.shops.test"]);
    // Port 80 redirects the name now that it is ours.
    let out = Command::new("curl")
        .args([
            "-sS",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code} %{redirect_url}",
        ])
        .arg(format!("http://127.0.0.1:{}/x", s.http_port))
        .args(["-H", "Host: ok1.shops.test"])
        .output()
        .unwrap();
    assert!(
        text(&out.stdout).starts_with("301 https://ok1.shops.test"),
        "{}",
        text(&out.stdout)
    );
    drop(p);

    // Restarted: taken from storage at the first handshake, without asking or ordering.
    let (mut p, port) = s.serve(&format!("ask = \"{}\"\n", ask.url));
    let out = s.curl("ok1.shops.test", port);
    assert!(out.status.success(), "{}", text(&out.stderr));
    p.wait_for_line(
        "on-demand: certificate loaded from storage",
        Duration::from_secs(5),
    );
    assert_eq!(ask.asked(), vec!["ok1.shops.test"]);
}

#[test]
fn a_refused_name_is_asked_about_once_and_gets_no_certificate() {
    let s = setup();
    let ask = Ask::start();
    let (mut p, port) = s.serve(&format!("ask = \"{}\"\n", ask.url));
    for _ in 0..3 {
        let out = s.curl("evil.shops.test", port);
        assert!(!out.status.success());
        assert!(
            text(&out.stderr).contains("unrecognized name"),
            "{}",
            text(&out.stderr)
        );
    }
    let line = p.wait_for_line("name not approved", Duration::from_secs(5));
    assert!(line.contains("403"), "{line}");
    assert_eq!(ask.asked(), vec!["evil.shops.test"]);
    // Implausible names never reach the ask endpoint.
    for bad in ["UPPER_case.test", "nodot"] {
        let _ = Command::new("openssl")
            .args(["s_client", "-servername", bad, "-connect"])
            .arg(format!("127.0.0.1:{port}"))
            .stdin(Stdio::null())
            .output()
            .unwrap();
    }
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(ask.asked(), vec!["evil.shops.test"]);
}

#[test]
fn a_flood_of_allowed_names_is_held_to_the_order_rate() {
    let s = setup();
    let (mut p, port) = s.serve("allow = [\"*.shops.test\"]\norders_per_minute = 2\n");
    let names: Vec<String> = (0..6).map(|i| format!("n{i}.shops.test")).collect();
    let root = s.root.clone();
    let handles: Vec<_> = names
        .iter()
        .map(|n| {
            let (n, root) = (n.clone(), root.clone());
            std::thread::spawn(move || curl_name(&root, &n, port, 40).status.success())
        })
        .collect();
    let ok = handles
        .into_iter()
        .map(|h| h.join().unwrap())
        .filter(|&b| b)
        .count();
    assert_eq!(ok, 2, "{}", p.stderr.join("\n"));
    p.drain(Duration::from_millis(500));
    let obtained = p
        .stderr
        .iter()
        .filter(|l| l.contains("on-demand: certificate obtained"))
        .count();
    let limited = p
        .stderr
        .iter()
        .filter(|l| l.contains("order rate limit reached"))
        .count();
    assert_eq!((obtained, limited), (2, 4), "{}", p.stderr.join("\n"));
    // Names outside the allow list (and no ask endpoint) are refused without an order.
    let out = s.curl("x.other.test", port);
    assert!(!out.status.success());
}

#[test]
fn on_demand_without_ask_or_allow_is_a_config_error() {
    let env = TestEnv::new();
    let cfg = env.write_config(
        "[on_demand]\nsite = \"alpha\"\n\
         [[site]]\nname = \"alpha\"\nhosts = [\"alpha.test\"]\ncert = \"certs/alpha.pem\"\nkey = \"certs/alpha.key\"\n\
         [[site.route]]\npath = \"/\"\nrespond = { body = \"ok\" }\n",
    );
    let (ok, all) = check_config(&cfg);
    assert!(!ok, "{all}");
    assert!(
        all.contains("portcullis.toml:") && all.contains("on_demand needs ask or allow"),
        "{all}"
    );
    let cfg = env.write_config(
        "[on_demand]\nsite = \"nope\"\nallow = [\"a.test\"]\n\
         [[site]]\nname = \"alpha\"\nhosts = [\"alpha.test\"]\ncert = \"certs/alpha.pem\"\nkey = \"certs/alpha.key\"\n\
         [[site.route]]\npath = \"/\"\nrespond = { body = \"ok\" }\n",
    );
    let (ok, all) = check_config(&cfg);
    assert!(
        !ok && all.contains("on_demand.site = \"nope\" is not the name of any site"),
        "{all}"
    );
}

#[test]
fn max_names_caps_the_certificates_obtained_on_demand() {
    let s = setup();
    let (mut p, port) = s.serve("allow = [\"*.shops.test\"]\nmax_names = 1\n");
    assert!(s.curl("first.shops.test", port).status.success());
    let out = s.curl("second.shops.test", port);
    assert!(!out.status.success());
    let line = p.wait_for_line("max_names reached", Duration::from_secs(5));
    assert!(line.contains("second.shops.test"), "{line}");
    // The first name keeps working.
    assert!(s.curl("first.shops.test", port).status.success());
}

/// On-demand certificates are watched for expiry like every other served certificate.
#[test]
fn on_demand_certificates_are_in_the_expiry_monitor() {
    let s = setup();
    let acme = std::fs::read_to_string(s.env.path("acme.toml")).unwrap();
    let cfg = s.env.write_config_raw(&format!(
        "workers = 2\ndata_dir = \"data\"\n[listen]\nhttps = [\"127.0.0.1:0\"]\nhttp = [\"127.0.0.1:{}\"]\n{acme}\
         [on_demand]\nsite = \"shops\"\nallow = [\"*.shops.test\"]\n\
         [[site]]\nname = \"shops\"\nhosts = [\"localhost\"]\nissuer = \"local\"\n\
         [[site.route]]\npath = \"/\"\nrespond = {{ body = \"shop\" }}\n",
        s.http_port
    ));
    let (config, _) = s.env.load(&cfg).unwrap_or_else(|p| panic!("{p:?}"));
    let server = portcullis::server::Server::start(config).unwrap();
    let port = server.https_addrs()[0].port();
    assert!(s.curl("watched.shops.test", port).status.success());
    let served = portcullis::ops::expiry::served(&server.state());
    assert!(
        served.iter().any(
            |(site, _, not_before, not_after)| site == "shops (on demand)"
                && not_after > not_before
        ),
        "{served:?}"
    );
    server.shutdown();
}
