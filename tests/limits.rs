//! Per-client limits (`[limits.per_client]`) over real sockets, each client on a loopback address
//! of its own (127.0.0.0/8 is all local): a client over its request rate gets 429 with
//! `Retry-After` on HTTP/1.1 and HTTP/2 while another client is served; connection and handshake
//! rates and concurrent connections close the connection before the handshake; trusted
//! networks are never limited; behind a load balancer the PROXY protocol's client is limited;
//! a flood of distinct addresses leaves the client table at its size; refusals are logged at
//! most once per kind every 10 s; configuration mistakes are reported with their line.
//!
//! Rates are set far apart from what the tests send (one per minute, bursts of a few, dozens
//! sent), so that no assertion depends on how fast a loaded machine runs them.

mod common;

use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use portcullis::proxy_protocol::{self, Version};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_rustls::client::TlsStream;

/// The loopback address 127.0.0.`n`.
fn lo(n: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, n))
}

/// `[limits.per_client]` with `settings`, then the one site (alpha, 200 at every path).
fn with_limits(settings: &str) -> String {
    format!("[limits.per_client]\n{settings}\n{ONE_SITE}")
}

/// A TCP connection from `from` (a local address) to `to`.
async fn tcp_from(from: IpAddr, to: SocketAddr) -> io::Result<TcpStream> {
    let s = TcpSocket::new_v4()?;
    s.bind(SocketAddr::new(from, 0))?;
    s.connect(to).await
}

/// A TLS connection to alpha.test from `from`, offering `alpn`.
async fn tls_from(
    from: IpAddr,
    to: SocketAddr,
    alpn: &'static str,
) -> io::Result<TlsStream<TcpStream>> {
    let tcp = tcp_from(from, to).await?;
    let cfg = ClientOpts::default().alpn(&[alpn]).build();
    let name = ServerName::try_from(ALPHA.to_string()).unwrap();
    match tokio::time::timeout(
        IO_TIMEOUT,
        tokio_rustls::TlsConnector::from(cfg).connect(name, tcp),
    )
    .await
    {
        Ok(r) => r,
        Err(_) => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            "TLS handshake timed out",
        )),
    }
}

/// A status and its `Retry-After`.
type Answer = (u16, Option<u64>);

fn answer(resp: &http::Response<hyper::body::Incoming>) -> Answer {
    let retry = resp
        .headers()
        .get(http::header::RETRY_AFTER)
        .map(|v| v.to_str().unwrap().parse::<u64>().unwrap());
    (resp.status().as_u16(), retry)
}

fn get_alpha() -> http::Request<Empty<Bytes>> {
    http::Request::get("https://alpha.test/")
        .body(Empty::new())
        .unwrap()
}

/// `n` requests one after the other on one HTTP/1.1 keep-alive connection from `from`.
async fn h1_requests(from: IpAddr, to: SocketAddr, n: usize) -> Vec<Answer> {
    let tls = tls_from(from, to, "http/1.1").await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(conn);
    let mut out = Vec::new();
    for _ in 0..n {
        let req = http::Request::get("/")
            .header("host", ALPHA)
            .body(Empty::<Bytes>::new())
            .unwrap();
        let resp = tokio::time::timeout(IO_TIMEOUT, sender.send_request(req))
            .await
            .expect("response in time")
            .expect("HTTP/1.1 response");
        out.push(answer(&resp));
        resp.into_body().collect().await.unwrap();
    }
    out
}

/// `n` requests at once, as concurrent streams of one HTTP/2 connection from `from`.
async fn h2_requests(from: IpAddr, to: SocketAddr, n: usize) -> Vec<Answer> {
    let tls = tls_from(from, to, "h2").await.unwrap();
    let (sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .unwrap();
    tokio::spawn(conn);
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..n {
        let mut sender = sender.clone();
        set.spawn(async move {
            let resp = sender
                .send_request(get_alpha())
                .await
                .expect("HTTP/2 response");
            assert_eq!(resp.version(), http::Version::HTTP_2);
            let a = answer(&resp);
            resp.into_body().collect().await.unwrap();
            a
        });
    }
    let mut out = Vec::new();
    while let Some(a) = tokio::time::timeout(IO_TIMEOUT, set.join_next())
        .await
        .unwrap()
    {
        out.push(a.unwrap());
    }
    out
}

fn count(answers: &[Answer], status: u16) -> usize {
    answers.iter().filter(|a| a.0 == status).count()
}

/// Whether the server closed `tcp` (EOF or reset) without sending anything.
async fn closed_silently(tcp: &mut TcpStream) -> bool {
    let mut b = [0u8; 64];
    match tokio::time::timeout(IO_TIMEOUT, tcp.read(&mut b)).await {
        Ok(Ok(0)) => true,
        Ok(Err(e)) => e.kind() == io::ErrorKind::ConnectionReset,
        Ok(Ok(_)) | Err(_) => false,
    }
}

/// Whether `tcp` is still open a moment later (the server has not closed it: it waits for
/// the client to speak).
async fn still_open(tcp: &mut TcpStream) -> bool {
    let mut b = [0u8; 64];
    tokio::time::timeout(Duration::from_millis(300), tcp.read(&mut b))
        .await
        .is_err()
}

/// Polls `cond` every 20 ms until it holds, or fails after 10 s with `what`.
async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(Instant::now() < deadline, "not within 10 s: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_client_over_its_request_rate_gets_429_on_h1_and_h2_while_another_is_served() {
    let srv = start(&with_limits(
        "requests = { rate = \"1/m\", burst = 5 }\ntrusted = []",
    ));
    let before = portcullis::ops::limits::dropped("request_rate");
    // Client 2: 30 requests over three HTTP/1.1 connections; the limit is over all of them.
    let mut a = Vec::new();
    for _ in 0..3 {
        a.extend(h1_requests(lo(2), srv.https, 10).await);
    }
    assert_eq!((count(&a, 200), count(&a, 429)), (5, 25), "{a:?}");
    assert!(
        a[..5].iter().all(|x| x.0 == 200),
        "the burst comes first: {a:?}"
    );
    for (_, retry) in a.iter().filter(|x| x.0 == 429) {
        let retry = retry.expect("a 429 has Retry-After");
        assert!((1..=60).contains(&retry), "Retry-After {retry}");
    }
    // Client 3, unaffected by client 2: 30 concurrent HTTP/2 streams, 5 served.
    let b = h2_requests(lo(3), srv.https, 30).await;
    assert_eq!((count(&b, 200), count(&b, 429)), (5, 25), "{b:?}");
    assert!(b.iter().filter(|x| x.0 == 429).all(|x| x.1.is_some()));
    // Client 4 is served; client 2 is still refused, over HTTP/2 as well.
    assert_eq!(h1_requests(lo(4), srv.https, 1).await[0].0, 200);
    assert_eq!(count(&h2_requests(lo(2), srv.https, 3).await, 429), 3);
    // Counted for the metrics (at least: other tests of this process may count too).
    assert!(portcullis::ops::limits::dropped("request_rate") >= before + 53);
}

#[tokio::test]
async fn connection_and_handshake_rates_close_before_the_handshake() {
    let srv = start(&with_limits(
        "new_connections = { rate = \"1/m\", burst = 3 }\ntrusted = []",
    ));
    for i in 0..3 {
        let r = h1_requests(lo(5), srv.https, 1).await;
        assert_eq!(r[0].0, 200, "connection {i}");
    }
    // The fourth: closed at once, nothing sent (no TLS alert, no 503 page).
    let mut tcp = tcp_from(lo(5), srv.https).await.unwrap();
    assert!(closed_silently(&mut tcp).await);
    assert!(tls_from(lo(5), srv.https, "h2").await.is_err());
    // Another client connects.
    assert_eq!(h2_requests(lo(6), srv.https, 1).await[0].0, 200);
    // Plain HTTP (port 80) connections count too.
    let mut tcp = tcp_from(lo(5), srv.http()).await.unwrap();
    assert!(closed_silently(&mut tcp).await);

    // Handshakes: counted at the ClientHello, refused before the server's first flight.
    let srv = start(&with_limits(
        "handshakes = { rate = \"1/m\", burst = 2 }\ntrusted = []",
    ));
    for _ in 0..2 {
        assert!(tls_from(lo(7), srv.https, "h2").await.is_ok());
    }
    let before = portcullis::ops::limits::dropped("handshake_rate");
    let err = tls_from(lo(7), srv.https, "h2").await.unwrap_err();
    assert!(
        rustls_error(&err).is_none(),
        "closed, not a TLS alert: {err}"
    );
    assert!(portcullis::ops::limits::dropped("handshake_rate") > before);
    // A TCP connection that sends nothing is not a handshake: it is not refused.
    let mut idle = tcp_from(lo(7), srv.https).await.unwrap();
    assert!(still_open(&mut idle).await);
    assert!(tls_from(lo(8), srv.https, "h2").await.is_ok());
}

#[tokio::test]
async fn concurrent_connections_are_capped_per_client_on_https_and_streams() {
    let backend = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let backend_addr = backend.local_addr().unwrap();
    let mut srv = start(&format!(
        "[limits.per_client]\nconcurrent_connections = 3\ntrusted = []\n{ONE_SITE}\n\
         [[stream]]\nname = \"raw\"\nlisten = [\"127.0.0.1:0\"]\nupstream = \"{backend_addr}\"\npassthrough = true\n"
    ));
    let server = srv.take();
    let held: Vec<_> = {
        let mut v = Vec::new();
        for _ in 0..3 {
            v.push(tls_from(lo(9), srv.https, "h2").await.unwrap());
        }
        v
    };
    eventually("three connections counted", || {
        server.state().client_limits.table().len() == 1
    })
    .await;
    let mut fourth = tcp_from(lo(9), srv.https).await.unwrap();
    assert!(closed_silently(&mut fourth).await);
    // Others are not affected.
    assert_eq!(h2_requests(lo(10), srv.https, 1).await[0].0, 200);
    // One closes: a slot is free again (once the server has seen the close).
    drop(held);
    let mut served = false;
    for _ in 0..100 {
        if let Ok(tls) = tls_from(lo(9), srv.https, "h2").await {
            drop(tls);
            served = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(served, "no connection after the others closed");

    // A stream listener counts the same client's connections, in the same table.
    let stream = server.stream_addrs("raw")[0];
    let mut conns = Vec::new();
    for _ in 0..3 {
        conns.push(tcp_from(lo(11), stream).await.unwrap());
    }
    for c in &mut conns {
        assert!(still_open(c).await);
    }
    let mut fourth = tcp_from(lo(11), stream).await.unwrap();
    assert!(closed_silently(&mut fourth).await);
    drop(conns);
    std::thread::spawn(move || server.shutdown());
}

#[tokio::test]
async fn trusted_networks_are_never_limited() {
    let srv = start(&with_limits(
        "new_connections = { rate = \"1/m\", burst = 1 }\n\
         handshakes = { rate = \"1/m\", burst = 1 }\n\
         requests = { rate = \"1/m\", burst = 1 }\n\
         concurrent_connections = 1\n\
         trusted = [\"127.0.0.12/31\", \"2001:db8::/32\"]",
    ));
    let mut held = Vec::new();
    for n in [12, 13] {
        for _ in 0..5 {
            held.push(tls_from(lo(n), srv.https, "h2").await.unwrap());
        }
        let a = h2_requests(lo(n), srv.https, 20).await;
        assert_eq!(count(&a, 200), 20, "127.0.0.{n}: {a:?}");
        let a = h1_requests(lo(n), srv.https, 20).await;
        assert_eq!(count(&a, 200), 20, "127.0.0.{n}: {a:?}");
    }
    // Just outside the network: limited.
    let a = h2_requests(lo(14), srv.https, 3).await;
    assert_eq!((count(&a, 200), count(&a, 429)), (1, 2), "{a:?}");
    assert!(tls_from(lo(14), srv.https, "h2").await.is_err());
}

#[tokio::test]
async fn behind_a_load_balancer_the_proxy_protocol_client_is_limited() {
    let srv = start(&format!(
        "proxy_protocol = {{ from = [\"127.0.0.1\"] }}\n{}",
        with_limits("new_connections = { rate = \"1/m\", burst = 2 }")
    ));
    // The balancer (127.0.0.1, trusted by default) speaks for two clients.
    let https = srv.https;
    let via_balancer = |client: &str| {
        let header = proxy_protocol::encode(
            Version::V2,
            format!("{client}:40000").parse().unwrap(),
            "192.0.2.1:443".parse().unwrap(),
        );
        async move {
            let mut tcp = tcp_from(lo(1), https).await.unwrap();
            tcp.write_all(&header).await.unwrap();
            tcp
        }
    };
    for _ in 0..2 {
        let mut tcp = via_balancer("203.0.113.5").await;
        tcp.write_all(&client_hello_bytes()).await.unwrap();
        assert!(still_open(&mut tcp).await, "the first two are served");
    }
    let mut third = via_balancer("203.0.113.5").await;
    assert!(closed_silently(&mut third).await, "the third is refused");
    let mut other = via_balancer("203.0.113.6").await;
    assert!(still_open(&mut other).await, "another client is not");
}

/// The start of a ClientHello record (the server waits for the rest).
fn client_hello_bytes() -> Vec<u8> {
    vec![
        0x16, 0x03, 0x01, 0x00, 0x80, 0x01, 0x00, 0x00, 0x7c, 0x03, 0x03,
    ]
}

#[tokio::test]
async fn a_flood_of_distinct_addresses_keeps_the_client_table_at_its_size() {
    let mut srv = start(&with_limits(
        "new_connections = { rate = \"1/m\", burst = 1 }\nmax_clients = 1024\ntrusted = []",
    ));
    let server = srv.take();
    let limits = server.state().client_limits.clone();
    assert_eq!(limits.table().capacity(), 1024);
    // 4096 clients, one connection each, 64 at a time: 127.1.x.y.
    let addrs: Vec<IpAddr> = (0..4096u32)
        .map(|i| IpAddr::V4(Ipv4Addr::new(127, 1, (i >> 8) as u8, i as u8)))
        .collect();
    let mut most = 0;
    for chunk in addrs.chunks(64) {
        let mut set = tokio::task::JoinSet::new();
        for &a in chunk {
            let to = srv.https;
            set.spawn(async move {
                let mut tcp = tcp_from(a, to).await.unwrap();
                let _ = tcp.shutdown().await;
                let _ = tcp.read(&mut [0u8; 16]).await;
            });
        }
        while set.join_next().await.is_some() {}
        most = most.max(limits.table().len());
    }
    // Full (a full shard forgets an eighth of its clients at once), never beyond, and its
    // memory bounded with it.
    eventually("the table filled", || limits.table().len() >= 1024 * 7 / 8).await;
    assert!(most <= 1024, "{most} clients tracked");
    assert!(limits.table().len() <= 1024);
    assert!(limits.table().heap_bytes() <= 200 * 1024);
    // The limits still work: a new client gets its one connection, then is refused.
    assert_eq!(h1_requests(lo(20), srv.https, 1).await[0].0, 200);
    let mut tcp = tcp_from(lo(20), srv.https).await.unwrap();
    assert!(closed_silently(&mut tcp).await);
    std::thread::spawn(move || server.shutdown());
}

#[test]
fn refusals_are_logged_at_most_once_per_kind_every_10_seconds_with_a_count() {
    let env = TestEnv::new();
    let cfg = env.write_config(&with_limits(
        "requests = { rate = \"1/m\", burst = 1 }\ntrusted = []",
    ));
    let mut p = ServeProcess::spawn(&["serve", "--config", cfg.to_str().unwrap()], &[]);
    let line = p.wait_for_line("listening on https://", Duration::from_secs(10));
    let addr = parse_listen_line(&line);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let started = Instant::now();
    let a = rt.block_on(h1_requests(lo(21), addr, 40));
    let elapsed = started.elapsed();
    assert_eq!((count(&a, 200), count(&a, 429)), (1, 39));
    p.wait_for_line("requests answered 429", Duration::from_secs(10));
    p.drain(Duration::from_millis(500));
    let lines: Vec<&String> = p
        .stderr
        .iter()
        .filter(|l| l.contains("requests answered 429"))
        .collect();
    let allowed = 1 + elapsed.as_secs() as usize / 10;
    assert!(lines.len() <= allowed, "{lines:?}");
    assert!(lines[0].contains("count=1"), "{lines:?}");
}

#[test]
fn configuration_mistakes_name_the_line() {
    let cases: [(&str, &[&str]); 8] = [
        (
            "requests = { rate = \"20\" }",
            &[
                "limits.per_client.requests.rate = \"20\" is not a rate",
                "e.g. \"20/s\"",
            ],
        ),
        (
            "handshakes = { rate = \"0/s\" }",
            &["limits.per_client.handshakes.rate", "at least 1"],
        ),
        (
            "new_connections = { rate = \"5/fortnight\" }",
            &[
                "limits.per_client.new_connections.rate",
                "period \"fortnight\"",
            ],
        ),
        (
            "requests = { rate = \"5/s\", burst = 0 }",
            &["limits.per_client.requests.burst must be at least 1"],
        ),
        (
            "trusted = [\"10.0.0.0/33\"]",
            &["limits.per_client.trusted: \"10.0.0.0/33\" is not an IP address or CIDR"],
        ),
        (
            "max_clients = 10",
            &["limits.per_client.max_clients = 10 is out of range", "1024"],
        ),
        (
            "requests = \"5/s\"",
            &["expected a rate table like { rate = \"20/s\", burst = 40 }"],
        ),
        ("request = { rate = \"5/s\" }", &["unknown field `request`"]),
    ];
    for (setting, needles) in cases {
        let env = TestEnv::new();
        let path = env.write_config(&with_limits(setting));
        let text = std::fs::read_to_string(&path).unwrap();
        let line = text
            .lines()
            .position(|l| l.starts_with(setting.split(' ').next().unwrap()))
            .unwrap()
            + 1;
        let (ok, out) = check_config(&path);
        assert!(!ok, "{setting}: accepted");
        assert!(
            needles.iter().all(|n| out.contains(n)),
            "{setting}: {needles:?} not in\n{out}"
        );
        assert!(
            out.contains(&format!("portcullis.toml:{line}")),
            "{setting}: line {line} not in\n{out}"
        );
    }
    // The defaults: concurrent connections capped, rates off, loopback trusted.
    let env = TestEnv::new();
    let path = env.write_config(ONE_SITE);
    let (config, _) = env.load(&path).unwrap();
    let pc = &config.limits.per_client;
    assert_eq!(pc.concurrent_connections, Some(1000));
    assert!(pc.new_connections.is_none() && pc.handshakes.is_none() && pc.requests.is_none());
    assert_eq!(pc.trusted.len(), 2);
    // 0: no concurrent-connection limit.
    let path = env.write_config(&with_limits("concurrent_connections = 0"));
    assert_eq!(
        env.load(&path)
            .unwrap()
            .0
            .limits
            .per_client
            .concurrent_connections,
        None
    );
}
