//! TLS 1.3 early data (0-RTT): opt-in per site, answered before the client's Finished, only
//! for safe methods (425 Too Early otherwise, RFC 8470), never for a replayed ClientHello.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection};

/// Two sites from the standard certificates: `alpha` accepts early data, `beta` does not.
fn config(env: &TestEnv, extra_tls: &str) -> std::path::PathBuf {
    env.write_config_raw(&format!(
        r#"workers = 2
data_dir = "data"
[log]
access_log = {{ file = "access.log" }}
[listen]
https = ["127.0.0.1:0"]
http = []
[tls]
{extra_tls}

[[site]]
name = "alpha"
hosts = ["alpha.test"]
cert = "certs/alpha.pem"
key = "certs/alpha.key"
early_data = true
[[site.route]]
path = "/"
respond = {{ body = "alpha" }}

[[site]]
name = "beta"
hosts = ["beta.test"]
cert = "certs/beta.pem"
key = "certs/beta.key"
[[site.route]]
path = "/"
respond = {{ body = "beta" }}
"#
    ))
}

fn start(env: &TestEnv) -> (ServeProcess, SocketAddr) {
    let path = config(env, "");
    let mut p = ServeProcess::spawn(&["serve", "--config", path.to_str().unwrap()], &[]);
    let addr =
        parse_listen_line(&p.wait_for_line("listening on https://", Duration::from_secs(10)));
    (p, addr)
}

/// A TLS 1.3 client that keeps its tickets and sends early data when a ticket allows it.
fn client() -> Arc<ClientConfig> {
    let mut cfg = (*ClientOpts::default().tls13().build()).clone();
    cfg.enable_early_data = true;
    Arc::new(cfg)
}

fn request(method: &str, host: &str, path: &str) -> Vec<u8> {
    format!("{method} {path} HTTP/1.1\r\nHost: {host}\r\nContent-Length: 0\r\n\r\n").into_bytes()
}

/// One step of driving TLS by hand: appends whatever plaintext is available to `plain`, else
/// reads and processes records. Nothing the client queued is sent unless `send_ours`, so a
/// client Finished can be held back.
fn read_more(
    conn: &mut ClientConnection,
    tcp: &mut TcpStream,
    send_ours: bool,
    plain: &mut Vec<u8>,
) -> Result<(), String> {
    tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    if send_ours {
        while conn.wants_write() {
            conn.write_tls(tcp).map_err(|e| e.to_string())?;
        }
    }
    let mut chunk = [0u8; 16384];
    match conn.reader().read(&mut chunk) {
        Ok(0) => Err("connection closed before a response".into()),
        Ok(n) => {
            plain.extend_from_slice(&chunk[..n]);
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
            match conn.read_tls(tcp) {
                Ok(0) => return Err("TCP closed before a response".into()),
                Ok(_) => {}
                Err(e) => return Err(format!("read: {e}")),
            }
            conn.process_new_packets().map_err(|e| e.to_string())?;
            Ok(())
        }
        Err(e) => Err(format!("TLS read: {e}")),
    }
}

/// Reads one HTTP/1.1 response from a connection (see [`read_more`]).
fn read_response(
    conn: &mut ClientConnection,
    tcp: &mut TcpStream,
    send_ours: bool,
) -> Result<RawResp, String> {
    let mut plain = Vec::new();
    loop {
        read_more(conn, tcp, send_ours, &mut plain)?;
        if let Some((resp, _)) = parse_response(&plain, false, false)? {
            return Ok(resp);
        }
    }
}

/// A full handshake and one request, leaving the client with a ticket for `host`.
fn prime(cfg: &Arc<ClientConfig>, addr: SocketAddr, host: &'static str) {
    let mut conn = ClientConnection::new(cfg.clone(), ServerName::try_from(host).unwrap()).unwrap();
    let mut tcp = TcpStream::connect(addr).unwrap();
    conn.writer().write_all(&request("GET", host, "/")).unwrap();
    let resp = read_response(&mut conn, &mut tcp, true).unwrap();
    assert_eq!(resp.status, 200);
    // The ticket comes with (before) the response; let the connection end cleanly.
    conn.send_close_notify();
    let _ = conn.write_tls(&mut tcp);
}

/// Opens a resumed connection whose first flight carries `early` as early data. Returns the
/// connection, its socket and the exact bytes of that first flight (for a replay).
fn connect_early(
    cfg: &Arc<ClientConfig>,
    addr: SocketAddr,
    host: &'static str,
    early: &[u8],
) -> (ClientConnection, TcpStream, Vec<u8>) {
    let mut conn = ClientConnection::new(cfg.clone(), ServerName::try_from(host).unwrap()).unwrap();
    conn.early_data()
        .expect("the server's ticket allows early data")
        .write_all(early)
        .unwrap();
    let mut flight = Vec::new();
    while conn.wants_write() {
        conn.write_tls(&mut flight).unwrap();
    }
    let mut tcp = TcpStream::connect(addr).unwrap();
    tcp.write_all(&flight).unwrap();
    (conn, tcp, flight)
}

/// The access log's lines so far (after a moment for the last ones), each as
/// `path=… status=… early_data=… protocol=…`.
fn access_lines(p: &mut ServeProcess, env: &TestEnv) -> Vec<String> {
    p.drain(Duration::from_millis(500));
    std::fs::read_to_string(env.path("access.log"))
        .unwrap_or_default()
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            format!(
                "path={} status={} early_data={} protocol={}",
                v["path"].as_str().unwrap(),
                v["status"],
                v["early_data"],
                v["protocol"].as_str().unwrap()
            )
        })
        .collect()
}

/// A resumed client's GET in early data is answered before the client has sent its Finished
/// (the answer is 0.5-RTT data), and later requests on the connection are ordinary ones.
#[test]
fn a_get_in_early_data_is_answered_before_the_clients_finished() {
    let env = TestEnv::new();
    let (mut p, addr) = start(&env);
    let cfg = client();
    prime(&cfg, addr, ALPHA);

    let (mut conn, mut tcp, _) = connect_early(&cfg, addr, ALPHA, &request("GET", ALPHA, "/e"));
    // Our Finished stays queued: only a server that answers early data can respond.
    let resp = read_response(&mut conn, &mut tcp, false).expect("an answer to the early GET");
    assert_eq!((resp.status, resp.text()), (200, "alpha".to_string()));
    assert!(conn.is_early_data_accepted());
    assert!(conn.wants_write(), "the client's Finished was not sent yet");

    // Finish the handshake; the next request is an ordinary 1-RTT one.
    conn.writer()
        .write_all(&request("POST", ALPHA, "/after"))
        .unwrap();
    let resp = read_response(&mut conn, &mut tcp, true).unwrap();
    assert_eq!(resp.status, 200, "a POST after the handshake is served");

    let lines = access_lines(&mut p, &env);
    let early = lines
        .iter()
        .find(|l| l.contains("/e"))
        .expect("access line");
    assert!(early.contains("early_data=true"), "{early}");
    let after = lines
        .iter()
        .find(|l| l.contains("/after"))
        .expect("access line");
    assert!(after.contains("early_data=false"), "{after}");
}

/// A POST in early data could be a replay: 425 Too Early, and the same POST after the
/// handshake is served (RFC 8470 §5.2).
#[test]
fn an_unsafe_method_in_early_data_gets_425_too_early() {
    let env = TestEnv::new();
    let (mut p, addr) = start(&env);
    let cfg = client();
    prime(&cfg, addr, ALPHA);

    let (mut conn, mut tcp, _) = connect_early(&cfg, addr, ALPHA, &request("POST", ALPHA, "/buy"));
    let resp = read_response(&mut conn, &mut tcp, false).unwrap();
    assert!(conn.is_early_data_accepted());
    assert_eq!(resp.status, 425, "{}", resp.text());

    conn.writer()
        .write_all(&request("POST", ALPHA, "/buy"))
        .unwrap();
    let resp = read_response(&mut conn, &mut tcp, true).unwrap();
    assert_eq!(resp.status, 200);
    let lines = access_lines(&mut p, &env);
    let buys: Vec<_> = lines.iter().filter(|l| l.contains("/buy")).collect();
    assert_eq!(buys.len(), 2, "{lines:?}");
    assert!(buys[0].contains("status=425") && buys[0].contains("early_data=true"));
    assert!(buys[1].contains("status=200") && buys[1].contains("early_data=false"));
}

/// The first flight of a 0-RTT connection, replayed byte for byte on new connections, gets
/// its early data ignored: the session was single-use.
#[test]
fn a_replayed_first_flight_gets_no_answer_from_early_data() {
    let env = TestEnv::new();
    let (mut p, addr) = start(&env);
    let cfg = client();
    prime(&cfg, addr, ALPHA);

    let (mut conn, mut tcp, flight) =
        connect_early(&cfg, addr, ALPHA, &request("GET", ALPHA, "/once"));
    assert_eq!(
        read_response(&mut conn, &mut tcp, true).unwrap().status,
        200
    );
    assert!(conn.is_early_data_accepted());

    // An attacker replays it twice: the server does a full handshake the replay cannot
    // finish, and waits for a Finished that never comes.
    for _ in 0..2 {
        let mut replay = TcpStream::connect(addr).unwrap();
        replay.write_all(&flight).unwrap();
        replay
            .set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        let mut got = Vec::new();
        let deadline = Instant::now() + Duration::from_millis(800);
        let mut buf = [0u8; 4096];
        while Instant::now() < deadline {
            match replay.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(_) => break,
            }
        }
        assert!(!got.is_empty(), "the server answers the ClientHello");
    }
    let lines = access_lines(&mut p, &env);
    let once: Vec<_> = lines.iter().filter(|l| l.contains("/once")).collect();
    assert_eq!(once.len(), 1, "the replays were served: {lines:?}");
}

/// A site without `early_data` never offers it: its tickets allow none, and resumption
/// still works.
#[test]
fn a_site_without_early_data_does_not_offer_it() {
    let env = TestEnv::new();
    let (_p, addr) = start(&env);
    let cfg = client();
    prime(&cfg, addr, BETA);
    let mut conn = ClientConnection::new(cfg.clone(), ServerName::try_from(BETA).unwrap()).unwrap();
    assert!(
        conn.early_data().is_none(),
        "beta's ticket allows early data"
    );
    let mut tcp = TcpStream::connect(addr).unwrap();
    conn.writer().write_all(&request("GET", BETA, "/")).unwrap();
    let resp = read_response(&mut conn, &mut tcp, true).unwrap();
    assert_eq!(resp.text(), "beta");
    assert_eq!(
        conn.handshake_kind(),
        Some(rustls::HandshakeKind::Resumed),
        "session tickets still resume"
    );
}

/// A request that came in early data at a proxy in front (`Early-Data: 1`, RFC 8470 §5.1) is
/// treated the same way: unsafe methods get 425, safe ones are served.
#[test]
fn early_data_header_from_a_proxy_makes_unsafe_methods_425() {
    let env = TestEnv::new();
    let (_p, addr) = start(&env);
    let cfg = client();
    for (method, host, want) in [
        ("POST", BETA, 425),
        ("GET", BETA, 200),
        ("DELETE", ALPHA, 425),
    ] {
        let mut conn =
            ClientConnection::new(cfg.clone(), ServerName::try_from(host).unwrap()).unwrap();
        let mut tcp = TcpStream::connect(addr).unwrap();
        let req = format!(
            "{method} / HTTP/1.1\r\nHost: {host}\r\nEarly-Data: 1\r\nContent-Length: 0\r\n\r\n"
        );
        conn.writer().write_all(req.as_bytes()).unwrap();
        let resp = read_response(&mut conn, &mut tcp, true).unwrap();
        assert_eq!(resp.status, want, "{method} {host}");
    }
}

/// openssl s_client, an outside client, resumes and has its early data accepted and answered.
#[test]
fn openssl_s_client_gets_early_data_accepted() {
    let openssl = require_tool("openssl");
    let env = TestEnv::new();
    let (_p, addr) = start(&env);
    let sess = env.path("sess.pem");
    let early = env.write(
        "early.txt",
        format!("GET /openssl HTTP/1.1\r\nHost: {ALPHA}\r\nConnection: close\r\n\r\n"),
    );
    let root = env.path("certs/root.pem");
    let run = |extra: &[&str]| {
        let mut cmd = std::process::Command::new(&openssl);
        cmd.args([
            "s_client",
            "-connect",
            &addr.to_string(),
            "-servername",
            ALPHA,
        ])
        .args(["-tls1_3", "-CAfile", root.to_str().unwrap(), "-ign_eof"])
        .args(extra)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
        let mut child = cmd.spawn().unwrap();
        let mut stdin = child.stdin.take().unwrap();
        // The first run sends its request after the handshake; the ticket comes with the answer.
        let _ = stdin.write_all(
            format!("GET / HTTP/1.1\r\nHost: {ALPHA}\r\nConnection: close\r\n\r\n").as_bytes(),
        );
        drop(stdin);
        let out = wait_output(child, Duration::from_secs(10), "openssl s_client");
        text(&out.stdout) + &text(&out.stderr)
    };
    let first = run(&["-sess_out", sess.to_str().unwrap()]);
    assert!(first.contains("alpha"), "{first}");
    let second = run(&[
        "-sess_in",
        sess.to_str().unwrap(),
        "-early_data",
        early.to_str().unwrap(),
    ]);
    assert!(second.contains("Reused, TLSv1.3"), "{second}");
    assert!(second.contains("Early data was accepted"), "{second}");
    assert!(second.contains("HTTP/1.1 200"), "{second}");
}

/// `early_data` needs the server-side session cache.
#[test]
fn early_data_without_the_session_cache_is_a_config_error() {
    let env = TestEnv::new();
    let path = config(&env, "session_cache_size = 0");
    let (ok, out) = check_config(&path);
    assert!(!ok, "{out}");
    assert!(
        out.contains("early_data") && out.contains("session_cache_size"),
        "{out}"
    );
}

/// HTTP/2 frames for a GET of `/` on stream 1 (END_STREAM | END_HEADERS), after the client
/// preface and an empty SETTINGS frame. HPACK by hand: `:method GET`, `:scheme https`,
/// `:path /` from the static table, `:authority` as a literal.
fn h2_get(host: &str) -> Vec<u8> {
    let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    out.extend_from_slice(&[0, 0, 0, 4, 0, 0, 0, 0, 0]);
    let mut block = vec![0x82, 0x87, 0x84, 0x41, host.len() as u8];
    block.extend_from_slice(host.as_bytes());
    let len = block.len();
    out.extend_from_slice(&[
        (len >> 16) as u8,
        (len >> 8) as u8,
        len as u8,
        1,
        0x05,
        0,
        0,
        0,
        1,
    ]);
    out.extend_from_slice(&block);
    out
}

/// Reads HTTP/2 frames until stream 1's HEADERS and DATA are in (see [`read_more`]). Returns the HEADERS block and the DATA payload.
fn h2_response(
    conn: &mut ClientConnection,
    tcp: &mut TcpStream,
    send_ours: bool,
) -> Result<(Vec<u8>, Vec<u8>), String> {
    let mut plain = Vec::new();
    let (mut headers, mut data) = (None, Vec::new());
    loop {
        read_more(conn, tcp, send_ours, &mut plain)?;
        while plain.len() >= 9 {
            let len = (plain[0] as usize) << 16 | (plain[1] as usize) << 8 | plain[2] as usize;
            if plain.len() < 9 + len {
                break;
            }
            let (kind, flags) = (plain[3], plain[4]);
            let stream = u32::from_be_bytes([plain[5], plain[6], plain[7], plain[8]]) & 0x7fff_ffff;
            let payload = plain[9..9 + len].to_vec();
            plain.drain(..9 + len);
            if stream == 1 && kind == 1 {
                headers = Some(payload);
            } else if stream == 1 && kind == 0 {
                data.extend_from_slice(&payload);
                if flags & 1 != 0 {
                    return Ok((headers.unwrap_or_default(), data));
                }
            }
        }
    }
}

/// HTTP/2 in early data: the preface, SETTINGS and a GET ride in the first flight and stream 1
/// is answered before the client's Finished.
#[test]
fn http2_requests_in_early_data_are_answered_before_the_clients_finished() {
    let env = TestEnv::new();
    let (mut p, addr) = start(&env);
    let mut cfg = (*ClientOpts::default().tls13().alpn(&["h2"]).build()).clone();
    cfg.enable_early_data = true;
    let cfg = Arc::new(cfg);
    // A first HTTP/2 connection leaves a ticket for h2.
    {
        let mut conn =
            ClientConnection::new(cfg.clone(), ServerName::try_from(ALPHA).unwrap()).unwrap();
        let mut tcp = TcpStream::connect(addr).unwrap();
        conn.writer().write_all(&h2_get(ALPHA)).unwrap();
        let (_, body) = h2_response(&mut conn, &mut tcp, true).unwrap();
        assert_eq!(body, b"alpha");
    }
    let (mut conn, mut tcp, _) = connect_early(&cfg, addr, ALPHA, &h2_get(ALPHA));
    let (headers, body) = h2_response(&mut conn, &mut tcp, false).expect("stream 1 answered");
    assert!(conn.is_early_data_accepted());
    assert_eq!(conn.alpn_protocol(), Some(&b"h2"[..]));
    assert_eq!(headers.first(), Some(&0x88), ":status 200 (HPACK index 8)");
    assert_eq!(body, b"alpha");
    assert!(conn.wants_write(), "the client's Finished was not sent yet");
    let lines = access_lines(&mut p, &env);
    assert!(
        lines
            .iter()
            .any(|l| l.contains("early_data=true") && l.contains("HTTP/2")),
        "{lines:?}"
    );
}
