//! Floods of slow clients against the real server binary (a child process, so that its own
//! allocator and memory return are what is measured): 5,000 connections that stall in every
//! state before a request (no ClientHello, half a ClientHello, half a request head trickled a
//! byte at a time) while a normal client's requests keep their latency, and the server's
//! resident memory comes back once the flood is gone.
//!
//! The flood's clients run in this process on one thread with a current-thread runtime and
//! keep little per connection; the normal client runs on a thread of its own.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use http_body::Frame;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// The server's resident set (VmRSS) in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/PID/status")
}

/// Starts `portcullis serve` on ONE_SITE with `limits` (TOML lines of `[limits]`); returns the
/// process and its HTTPS address.
fn serve(env: &TestEnv, limits: &str) -> (ServeProcess, SocketAddr) {
    let cfg = env.write_config(&format!("{ONE_SITE}\n[limits]\n{limits}\n"));
    let mut p = ServeProcess::spawn(&["serve", "--config", cfg.to_str().unwrap()], &[]);
    let line = p.wait_for_line("listening on https://", Duration::from_secs(20));
    (p, parse_listen_line(&line))
}

/// The first bytes a TLS client sends (a ClientHello for alpha.test).
fn client_hello() -> Vec<u8> {
    let cfg = ClientOpts::default().build();
    let mut conn =
        rustls::ClientConnection::new(cfg, "alpha.test".try_into().unwrap()).expect("client");
    let mut out = Vec::new();
    while conn.wants_write() {
        conn.write_tls(&mut out).unwrap();
    }
    out
}

/// One stalled connection of the flood.
enum Slow {
    /// Held open, never read.
    Tcp {
        _held: TcpStream,
    },
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

/// Opens `n` slow connections of each kind: 1/5 send nothing, 1/5 half a ClientHello, 3/5
/// complete the handshake and send half a request head (the rest trickles, see
/// [`trickle`]). At most 32 connect at once, as a flood from one address would.
async fn open_flood(addr: SocketAddr, n: usize) -> Vec<Slow> {
    let hello = Arc::new(client_hello());
    let cfg = ClientOpts::default().build();
    let gate = Arc::new(tokio::sync::Semaphore::new(32));
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..n {
        let (hello, cfg, gate) = (hello.clone(), cfg.clone(), gate.clone());
        tasks.spawn(async move {
            let _permit = gate.acquire().await.unwrap();
            match i % 5 {
                0 => Slow::Tcp {
                    _held: TcpStream::connect(addr).await.expect("connect"),
                },
                1 => {
                    let mut tcp = TcpStream::connect(addr).await.expect("connect");
                    tcp.write_all(&hello[..hello.len() / 2]).await.unwrap();
                    Slow::Tcp { _held: tcp }
                }
                _ => {
                    let mut tls = tls_connect(addr, Some(ALPHA), cfg)
                        .await
                        .expect("TLS handshake of a slow client");
                    tls.write_all(b"GET / HTTP/1.1\r\nHost: alpha.test\r\nX-Slow: ")
                        .await
                        .unwrap();
                    tls.flush().await.unwrap();
                    Slow::Tls(Box::new(tls))
                }
            }
        });
    }
    let mut conns = Vec::with_capacity(n);
    while let Some(c) = tasks.join_next().await {
        conns.push(c.expect("flood task"));
    }
    conns
}

/// Sends one more byte of every half-sent request head (slowloris keeps its connections
/// "active" this way).
async fn trickle(conns: &mut [Slow]) {
    for c in conns {
        if let Slow::Tls(tls) = c {
            let _ = tls.write_all(b"a").await;
            let _ = tls.flush().await;
        }
    }
}

/// A normal client: keep-alive GETs every 5 ms on one connection (a new one when the server
/// closes it) until `stop`; returns each request's latency.
fn normal_client(
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<Vec<Duration>> {
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let cfg = ClientOpts::default().build();
            let mut latencies = Vec::new();
            let mut conn = None;
            while !stop.load(Ordering::Relaxed) {
                let started = Instant::now();
                if conn.is_none() {
                    conn = Some(
                        tls_connect(addr, Some(ALPHA), cfg.clone())
                            .await
                            .expect("normal client connects"),
                    );
                }
                let tls = conn.as_mut().unwrap();
                let resp = raw_exchange(tls, b"GET / HTTP/1.1\r\nHost: alpha.test\r\n\r\n")
                    .await
                    .expect("normal client's request is answered");
                assert_eq!(resp.status, 200);
                latencies.push(started.elapsed());
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            latencies
        })
    })
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 * p) as usize).min(sorted.len() - 1)]
}

/// 5,000 slow connections (stalled before a ClientHello, in the middle of one, and in the
/// middle of a request head that trickles in): a normal client's p99 stays under 100 ms while
/// they are held, and the server's RSS is back within 16 MiB of its start within 10 s after
/// they are gone.
#[test]
fn slowloris_flood_keeps_latency_and_memory_comes_back() {
    const FLOOD: usize = 5000;
    let env = TestEnv::new();
    let (server, addr) = serve(
        &env,
        "handshake_timeout = \"120s\"\nheader_timeout = \"120s\"\nmax_connections = 20000",
    );
    let pid = server.child.id();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    // Warm-up: the server's lazily made state (session cache, the first connections' buffers).
    rt.block_on(async {
        for _ in 0..20 {
            let r = raw_tls(
                addr,
                Some(ALPHA),
                b"GET / HTTP/1.1\r\nHost: alpha.test\r\nConnection: close\r\n\r\n",
            )
            .await;
            assert_eq!(r.expect("warm-up request").status, 200);
        }
    });
    std::thread::sleep(Duration::from_millis(500));
    let start = rss_kib(pid);

    let opened = Instant::now();
    let mut conns = rt.block_on(open_flood(addr, FLOOD));
    let open_time = opened.elapsed();
    let stop = Arc::new(AtomicBool::new(false));
    let client = normal_client(addr, stop.clone());
    // Held for 4 s, trickling a byte a second into every half-sent head.
    rt.block_on(async {
        for _ in 0..4 {
            tokio::time::sleep(Duration::from_secs(1)).await;
            trickle(&mut conns).await;
        }
    });
    stop.store(true, Ordering::Relaxed);
    let mut latencies = client.join().expect("normal client");
    let flooded = rss_kib(pid);
    latencies.sort();
    let p50 = percentile(&latencies, 0.5);
    let p99 = percentile(&latencies, 0.99);

    drop(conns);
    let closed = Instant::now();
    let mut after = rss_kib(pid);
    while after > start + 16 * 1024 && closed.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(250));
        after = rss_kib(pid);
    }
    let back_in = closed.elapsed();
    eprintln!(
        "{FLOOD} slow connections opened in {open_time:?}; normal client: {} requests, p50 \
         {p50:?}, p99 {p99:?}; server RSS: start {start} KiB, flooded {flooded} KiB \
         (+{} B per connection), {after} KiB {back_in:?} after the flood closed",
        latencies.len(),
        (flooded.saturating_sub(start) * 1024) / FLOOD as u64,
    );
    assert!(
        latencies.len() >= 100,
        "only {} requests in 4 s",
        latencies.len()
    );
    assert!(
        p99 < Duration::from_millis(100),
        "normal client's p99 {p99:?} under a slowloris flood"
    );
    assert!(
        after <= start + 16 * 1024,
        "server RSS {after} KiB is {} KiB over its start {start} KiB 10 s after the flood closed",
        after - start
    );
    // And it still serves.
    rt.block_on(async {
        let r = raw_tls(
            addr,
            Some(ALPHA),
            b"GET / HTTP/1.1\r\nHost: alpha.test\r\nConnection: close\r\n\r\n",
        )
        .await;
        assert_eq!(r.expect("request after the flood").status, 200);
    });
}

// =============================================================================================
// Request bodies that stall or trickle (limits.body_timeout, limits.min_body_rate)
// =============================================================================================

/// A proxy route to `backend` with a 1 s body window and 1 KiB/s minimum.
fn paced_proxy(backend: &common::backends::Backend) -> TestServer {
    TestEnv::new().start(&format!(
        r#"[limits]
body_timeout = "1s"
min_body_rate = "1KiB/s"

[[site]]
name = "alpha"
hosts = ["alpha.test"]
cert = "certs/alpha.pem"
key = "certs/alpha.key"
[[site.route]]
path = "/"
proxy = {{ upstreams = ["{}"] }}
"#,
        backend.url()
    ))
}

/// Sends an HTTP/1.1 POST /sink (the backend reads the whole body, then answers with its
/// length) announcing `len` bytes, then `chunk` bytes every `every`
/// until the server answers or the body is complete; returns the response, how long it took,
/// and whether the connection was closed after it.
async fn h1_post_paced(
    srv: &TestServer,
    len: usize,
    chunk: usize,
    every: Duration,
) -> (RawResp, Duration, bool) {
    let cfg = ClientOpts::default().build();
    let tls = tls_connect(srv.https, Some(ALPHA), cfg)
        .await
        .expect("connect");
    let (mut rd, mut wr) = tokio::io::split(tls);
    let started = Instant::now();
    let head = format!("POST /sink HTTP/1.1\r\nHost: alpha.test\r\nContent-Length: {len}\r\n\r\n");
    wr.write_all(head.as_bytes()).await.unwrap();
    wr.flush().await.unwrap();
    let writer = tokio::spawn(async move {
        let mut sent = 0;
        while sent < len {
            let n = chunk.min(len - sent);
            if chunk > 0 {
                if wr.write_all(&vec![b'x'; n]).await.is_err() || wr.flush().await.is_err() {
                    return;
                }
                sent += n;
            }
            tokio::time::sleep(every).await;
        }
        // Keep the write side open: the server decides when the connection ends.
        tokio::time::sleep(Duration::from_secs(30)).await;
        drop(wr);
    });
    let mut buf = Vec::new();
    let resp = read_response(&mut rd, &mut buf, false)
        .await
        .expect("a response to the paced POST");
    let took = started.elapsed();
    let (_, end) = read_until_close(&mut rd, Duration::from_secs(3)).await;
    writer.abort();
    (resp, took, !matches!(end, Closed::StillOpen))
}

/// HTTP/1.1, proxied: a body that stops after 10 of 100 bytes, and one trickled at 20 B/s, get
/// 408 about one body window after they slow down, and the connection closes; a body at
/// 2 KiB/s (above the 1 KiB/s minimum) for 3 s goes through whole.
#[tokio::test]
async fn h1_stalled_or_trickled_body_gets_408_and_a_steady_one_goes_through() {
    let backend = common::backends::Backend::h1("b");
    let srv = paced_proxy(&backend);

    let (resp, took, closed) = h1_post_paced(&srv, 100, 10, Duration::from_secs(60)).await;
    assert_eq!(resp.status, 408, "stalled body: {}", resp.text());
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(4),
        "stalled body answered after {took:?}"
    );
    assert!(closed, "connection still open after the 408");

    let (resp, took, closed) = h1_post_paced(&srv, 1000, 2, Duration::from_millis(100)).await;
    assert_eq!(resp.status, 408, "trickled body: {}", resp.text());
    assert!(
        took < Duration::from_secs(4),
        "trickled body answered after {took:?}"
    );
    assert!(closed, "connection still open after the 408");

    let (resp, took, _) = h1_post_paced(&srv, 6000, 200, Duration::from_millis(100)).await;
    assert_eq!(resp.status, 200, "steady body: {}", resp.text());
    assert_eq!(
        resp.text(),
        "6000",
        "the bytes the backend got of the steady body"
    );
    assert!(
        took >= Duration::from_millis(2500),
        "steady body took only {took:?}"
    );
}

/// HTTP/2, proxied: a stream whose body stops after 10 bytes gets 408 about a body window
/// later, while another stream on the same connection, opened after it, is answered at once;
/// then a stream whose body trickles at 20 B/s gets 408 too.
#[tokio::test]
async fn h2_stream_with_a_stalled_body_gets_408_while_other_streams_are_served() {
    use http_body_util::BodyExt as _;
    let backend = common::backends::Backend::h1("b");
    let srv = paced_proxy(&backend);
    let cfg = ClientOpts::default().alpn(&["h2"]).build();
    let tls = tls_connect(srv.https, Some(ALPHA), cfg)
        .await
        .expect("connect");
    let (mut send, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tls),
    )
    .await
    .expect("h2 handshake");
    tokio::spawn(conn);

    let (tx, rx) =
        tokio::sync::mpsc::channel::<Result<http_body::Frame<bytes::Bytes>, std::io::Error>>(4);
    tx.send(Ok(http_body::Frame::data(bytes::Bytes::from_static(
        b"0123456789",
    ))))
    .await
    .unwrap();
    let body = http_body_util::StreamBody::new(tokio_stream_from(rx));
    let req = http::Request::post("https://alpha.test/sink")
        .header("content-length", "100")
        .body(body)
        .unwrap();
    let started = Instant::now();
    let stalled = send.send_request(req);
    let stalled = tokio::spawn(stalled);

    tokio::time::sleep(Duration::from_millis(200)).await;
    send.ready().await.expect("connection still usable");
    let get = http::Request::get("https://alpha.test/name")
        .body(http_body_util::StreamBody::new(tokio_stream_from(
            tokio::sync::mpsc::channel(1).1,
        )))
        .unwrap();
    let other = send
        .send_request(get)
        .await
        .expect("the other stream's response");
    assert!(
        started.elapsed() < Duration::from_millis(900),
        "the other stream waited"
    );
    assert_eq!(other.status(), 200);

    let resp = stalled
        .await
        .unwrap()
        .expect("a response to the stalled stream");
    let took = started.elapsed();
    assert_eq!(resp.status(), 408);
    let _ = resp.into_body().collect().await;
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(4),
        "stalled stream answered after {took:?}"
    );
    drop(tx);

    // A body trickled at 20 B/s (below the 1 KiB/s minimum) on the same connection: 408 too.
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, std::io::Error>>(4);
    let trickle = tokio::spawn(async move {
        for _ in 0..100 {
            let chunk = Frame::data(Bytes::from_static(b"xx"));
            if tx.send(Ok(chunk)).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    send.ready().await.expect("connection still usable");
    let req = http::Request::post("https://alpha.test/sink")
        .header("content-length", "200")
        .body(http_body_util::StreamBody::new(tokio_stream_from(rx)))
        .unwrap();
    let started = Instant::now();
    let resp = send
        .send_request(req)
        .await
        .expect("a response to the trickled stream");
    assert_eq!(resp.status(), 408);
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "trickled stream answered after {:?}",
        started.elapsed()
    );
    trickle.abort();
}

/// A stream of the frames an mpsc receiver gets.
fn tokio_stream_from<T>(
    mut rx: tokio::sync::mpsc::Receiver<T>,
) -> impl futures_util::Stream<Item = T> {
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

// =============================================================================================
// HTTP/1.1 framing tricks (raw bytes over TLS) in front of a proxied route
// =============================================================================================

/// Sends `bytes` on a fresh TLS connection and reads until the server closes (or 5 s pass);
/// returns every response status found, in order, and whether the connection was closed.
async fn raw_framing(srv: &TestServer, bytes: &[u8]) -> (Vec<u16>, bool, String) {
    let cfg = ClientOpts::default().build();
    let mut tls = tls_connect(srv.https, Some(ALPHA), cfg)
        .await
        .expect("connect");
    let _ = tls.write_all(bytes).await;
    let _ = tls.flush().await;
    let (out, end) = read_until_close(&mut tls, Duration::from_secs(5)).await;
    let text = String::from_utf8_lossy(&out).into_owned();
    let statuses = text
        .match_indices("HTTP/1.1 ")
        .filter_map(|(i, _)| text.get(i + 9..i + 12)?.parse().ok())
        .collect();
    (statuses, !matches!(end, Closed::StillOpen), text)
}

/// Requests whose framing is ambiguous or broken — conflicting Content-Lengths, bad chunk sizes, endless chunk extensions, obs-fold, an oversized
/// request line or header line, too many fields — each followed by a second request that a
/// server reading the framing differently would serve ("smuggled"): every one is answered 400
/// (431/414 for sizes) and the connection closed, no second response, and the backend behind
/// the route never sees a request.
#[tokio::test]
async fn h1_framing_tricks_get_400_and_nothing_is_smuggled() {
    let backend = common::backends::Backend::h1("b");
    let srv = paced_proxy(&backend);
    let smuggled = "GET /smuggled HTTP/1.1\r\nHost: alpha.test\r\n\r\n";
    let long = "a".repeat(20_000);
    let many: String = (0..200).map(|i| format!("X-{i}: v\r\n")).collect();
    let ext = ";e=".to_string() + &"x".repeat(100_000);
    let cases: Vec<(&str, String, &[u16])> = vec![
        (
            "two different Content-Lengths",
            format!("POST /sink HTTP/1.1\r\nHost: alpha.test\r\nContent-Length: 5\r\nContent-Length: 45\r\n\r\nhello{smuggled}"),
            &[400],
        ),
        (
            "a chunk size that is not hex",
            format!("POST /sink HTTP/1.1\r\nHost: alpha.test\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n{smuggled}"),
            &[400],
        ),
        (
            "a chunk size that overflows",
            format!("POST /sink HTTP/1.1\r\nHost: alpha.test\r\nTransfer-Encoding: chunked\r\n\r\nffffffffffffffffff1\r\nhello\r\n0\r\n\r\n{smuggled}"),
            &[400],
        ),
        (
            "100 KB of chunk extensions",
            format!("POST /sink HTTP/1.1\r\nHost: alpha.test\r\nTransfer-Encoding: chunked\r\n\r\n5{ext}\r\nhello\r\n0\r\n\r\n{smuggled}"),
            &[400],
        ),
        (
            "Transfer-Encoding other than chunked",
            format!("POST /sink HTTP/1.1\r\nHost: alpha.test\r\nTransfer-Encoding: gzip\r\n\r\n{smuggled}"),
            &[400, 501],
        ),
        (
            "obs-fold",
            format!("GET /name HTTP/1.1\r\nHost: alpha.test\r\nX-Folded: a\r\n b\r\n\r\n{smuggled}"),
            &[400],
        ),
        (
            "a 20 KB request line",
            format!("GET /{long} HTTP/1.1\r\nHost: alpha.test\r\n\r\n{smuggled}"),
            &[400, 414, 431],
        ),
        (
            "a 20 KB header line",
            format!("GET /name HTTP/1.1\r\nHost: alpha.test\r\nX-Long: {long}\r\n\r\n{smuggled}"),
            &[431],
        ),
        (
            "200 header fields",
            format!("GET /name HTTP/1.1\r\nHost: alpha.test\r\n{many}\r\n{smuggled}"),
            &[431],
        ),
        (
            "a space before the colon",
            format!("GET /name HTTP/1.1\r\nHost: alpha.test\r\nContent-Length : 45\r\n\r\n{smuggled}"),
            &[400],
        ),
    ];
    let mut failures = Vec::new();
    for (what, bytes, allowed) in &cases {
        let (statuses, closed, text) = raw_framing(&srv, bytes.as_bytes()).await;
        let ok = statuses.len() == 1 && allowed.contains(&statuses[0]) && closed;
        if !ok {
            failures.push(format!(
                "{what}: statuses {statuses:?}, closed: {closed}, answer: {:?}",
                text.chars().take(300).collect::<String>()
            ));
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
    assert_eq!(
        backend.requests(),
        0,
        "the backend saw requests from malformed framing"
    );
}

/// Content-Length with Transfer-Encoding: chunked (RFC 9112 §6.3): the chunked framing is
/// the one read (hyper drops the Content-Length), the request is answered and the connection
/// closed after it, as the RFC requires, so the request hidden behind the body that the
/// Content-Length would have implied is never served, nor sent to the backend.
#[tokio::test]
async fn h1_content_length_with_chunked_closes_after_one_request() {
    let backend = common::backends::Backend::h1("b");
    let srv = paced_proxy(&backend);
    let (statuses, closed, text) = raw_framing(
        &srv,
        b"POST /sink HTTP/1.1\r\nHost: alpha.test\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: alpha.test\r\n\r\n",
    )
    .await;
    assert!(
        statuses.len() == 1 && closed,
        "CL + TE: {statuses:?}, closed {closed}: {text:?}"
    );
    assert!(
        backend.requests() <= 1,
        "the smuggled request reached the backend"
    );
}

/// Bare LF line endings (RFC 9112 §2.2 lets a recipient accept them): a head with bare LFs
/// is read as one request — the backend sees exactly the requests the client framed, never
/// a second one hidden in it — and a chunked body whose chunk lines end in bare LF is refused.
#[tokio::test]
async fn h1_bare_lf_is_read_one_way_and_never_smuggles() {
    let backend = common::backends::Backend::h1("b");
    let srv = paced_proxy(&backend);
    let (statuses, _, text) = raw_framing(
        &srv,
        b"GET /name HTTP/1.1\nHost: alpha.test\nConnection: close\n\n",
    )
    .await;
    assert!(
        statuses == [200] || statuses == [400],
        "bare-LF head: {statuses:?} {text:?}"
    );
    let before = backend.requests();
    let (statuses, closed, text) = raw_framing(
        &srv,
        b"POST /sink HTTP/1.1\r\nHost: alpha.test\r\nTransfer-Encoding: chunked\r\n\r\n5\nhello\n0\n\nGET /smuggled HTTP/1.1\r\nHost: alpha.test\r\n\r\n",
    )
    .await;
    assert!(
        statuses == [400] && closed,
        "bare-LF chunk lines: {statuses:?}, closed {closed}: {text:?}"
    );
    assert_eq!(
        backend.requests(),
        before,
        "a bare-LF chunked body reached the backend"
    );
}

// =============================================================================================
// A stalled connection in every state before a request is dropped within its timeout
// =============================================================================================

/// Reads until the server closes; `Some(elapsed since start)` when it did within 6 s.
async fn closed_after<S: tokio::io::AsyncRead + Unpin>(
    s: &mut S,
    start: Instant,
) -> Option<Duration> {
    match read_until_close(s, Duration::from_secs(6)).await {
        (_, Closed::StillOpen) => None,
        _ => Some(start.elapsed()),
    }
}

/// With 1 s timeouts, connections that stall before a ClientHello, in the middle of one,
/// after the handshake (HTTP/1.1 and HTTP/2) and in the middle of a request head are all
/// closed about 1 s after they stalled (the half head with a 408).
#[tokio::test]
async fn stalled_connections_in_every_state_are_dropped_in_time() {
    let srv = TestEnv::new().start(&format!(
        "[limits]\nhandshake_timeout = \"1s\"\nheader_timeout = \"1s\"\nidle_timeout = \"1s\"\n{ONE_SITE}"
    ));
    let addr = srv.https;
    let hello = client_hello();
    let h1 = ClientOpts::default().build();
    let h2 = ClientOpts::default().alpn(&["h2"]).build();
    let (silent, half_hello, h1_idle, h2_idle, half_head) = tokio::join!(
        async {
            let mut tcp = TcpStream::connect(addr).await.unwrap();
            closed_after(&mut tcp, Instant::now()).await
        },
        async {
            let mut tcp = TcpStream::connect(addr).await.unwrap();
            tcp.write_all(&hello[..hello.len() / 2]).await.unwrap();
            closed_after(&mut tcp, Instant::now()).await
        },
        async {
            let mut tls = tls_connect(addr, Some(ALPHA), h1).await.unwrap();
            closed_after(&mut tls, Instant::now()).await
        },
        async {
            let mut tls = tls_connect(addr, Some(ALPHA), h2).await.unwrap();
            closed_after(&mut tls, Instant::now()).await
        },
        async {
            let cfg = ClientOpts::default().build();
            let mut tls = tls_connect(addr, Some(ALPHA), cfg).await.unwrap();
            let start = Instant::now();
            tls.write_all(b"GET / HTTP/1.1\r\nHost: alpha.test\r\nX-Half: ")
                .await
                .unwrap();
            tls.flush().await.unwrap();
            let (out, end) = read_until_close(&mut tls, Duration::from_secs(6)).await;
            let ok = String::from_utf8_lossy(&out).starts_with("HTTP/1.1 408");
            (!matches!(end, Closed::StillOpen) && ok).then(|| start.elapsed())
        },
    );
    let all = [
        ("no ClientHello", silent),
        ("half a ClientHello", half_hello),
        ("HTTP/1.1, no request", h1_idle),
        ("HTTP/2, no preface", h2_idle),
        ("half a request head (408)", half_head),
    ];
    eprintln!("{all:?}");
    for (what, t) in all {
        let t = t.unwrap_or_else(|| panic!("{what}: not closed within 6 s"));
        assert!(
            t >= Duration::from_millis(800) && t < Duration::from_secs(4),
            "{what}: closed after {t:?}, expected about 1 s"
        );
    }
}
