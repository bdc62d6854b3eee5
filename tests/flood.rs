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

use common::*;
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
