//! How many TCP segments the end of a connection costs, counted by the kernel (`TCP_INFO`):
//! the last response, its `close_notify` and the FIN leave in one segment.

mod common;

use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use portcullis::http::ConnState;
use portcullis::server::cork::CorkIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

fn segs_out(fd: RawFd) -> u32 {
    tcp_segments(fd).sent
}

async fn pair() -> (TcpStream, TcpStream) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let client = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
    let (server, _) = l.accept().await.unwrap();
    (server, client)
}

/// Reads to the end of the stream.
async fn to_eof(c: &mut TcpStream) -> Vec<u8> {
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), c.read_to_end(&mut out))
        .await
        .expect("EOF within 5 s")
        .unwrap();
    out
}

/// Lets delayed ACKs of what the server received go out before counting (at most 200 ms).
async fn settle() {
    tokio::time::sleep(Duration::from_millis(250)).await;
}

/// The connection's last response (marked by the service) and the `close_notify` written at
/// the shutdown leave with the FIN: one segment. A plain write then shutdown is two, which
/// shows the count tells the two apart.
#[tokio::test]
async fn the_last_response_close_notify_and_fin_are_one_segment() {
    // control: write, then shutdown
    let (mut s, mut c) = pair().await;
    settle().await;
    let before = segs_out(s.as_raw_fd());
    s.write_all(b"response").await.unwrap();
    s.shutdown().await.unwrap();
    assert_eq!(segs_out(s.as_raw_fd()) - before, 2, "data, then a FIN");
    assert_eq!(to_eof(&mut c).await, b"response");

    // the server's flight, the peer's answer, then the last response held for the close_notify
    let (s, mut c) = pair().await;
    let mut s = CorkIo::new(s);
    s.write_all(b"flight").await.unwrap();
    c.write_all(b"finished").await.unwrap();
    let mut buf = [0u8; 8];
    s.read_exact(&mut buf).await.unwrap();
    let conn = Arc::new(ConnState::default());
    s.release(conn.clone());
    conn.closing.store(true, Ordering::Relaxed);
    s.write_all(b"ticket+response").await.unwrap();
    s.flush().await.unwrap();
    s.write_all(b"close_notify").await.unwrap();
    settle().await;
    let fd = s.get_ref().as_raw_fd();
    let before = segs_out(fd);
    s.shutdown().await.unwrap();
    assert_eq!(
        segs_out(fd) - before,
        1,
        "response, close_notify and FIN in one segment"
    );
    assert_eq!(to_eof(&mut c).await, b"flightticket+responseclose_notify");
}

/// Larger than one segment: the full segments go at once, the tail with the FIN.
#[tokio::test]
async fn a_long_last_response_ends_with_the_fin() {
    let (s, mut c) = pair().await;
    let mut s = CorkIo::new(s);
    let conn = Arc::new(ConnState::default());
    s.release(conn.clone());
    // held (≤ 16 KiB) and more than the loopback MSS once: sent as one block at the shutdown
    conn.closing.store(true, Ordering::Relaxed);
    let body: Vec<u8> = (0..16_000u32).map(|i| (i % 251) as u8).collect();
    s.write_all(&body).await.unwrap();
    settle().await;
    let fd = s.get_ref().as_raw_fd();
    let before = segs_out(fd);
    s.shutdown().await.unwrap();
    let mss = socket2::SockRef::from(s.get_ref()).tcp_mss().unwrap() as usize;
    let expected = body.len().div_ceil(mss) as u32;
    assert_eq!(
        segs_out(fd) - before,
        expected,
        "{} bytes at MSS {mss}",
        body.len()
    );
    assert_eq!(to_eof(&mut c).await, body);
}

/// Against the server: a client ends a keep-alive connection with a `close_notify` (and no
/// FIN, so that all it receives afterwards is the server's answer). The server's
/// `close_notify` and FIN come back in one segment, counted on the client's socket. A server
/// slower than its own delayed-ACK timer (40 ms) sends that ACK alone first: tried up to three
/// times for a loaded machine; a close_notify sent apart from the FIN is two segments every
/// time.
#[tokio::test]
async fn a_client_that_ends_the_connection_gets_close_notify_and_fin_in_one_segment() {
    let srv = start(ONE_SITE);
    let cfg = ClientOpts::default().tls13().build();
    let mut counts = Vec::new();
    for _ in 0..3 {
        let mut tls = tls_connect(srv.https, Some("alpha.test"), cfg.clone())
            .await
            .unwrap();
        let mut buf = Vec::new();
        tls.write_all(b"GET / HTTP/1.1\r\nHost: alpha.test\r\n\r\n")
            .await
            .unwrap();
        let r = read_response(&mut tls, &mut buf, false).await.unwrap();
        assert_eq!(r.status, 200);
        settle().await;
        let fd = tls.get_ref().0.as_raw_fd();
        let before = tcp_segments(fd).received;
        // close_notify without a FIN: the server's answer is then all the client receives
        tls.get_mut().1.send_close_notify();
        tls.flush().await.unwrap();
        let mut rest = Vec::new();
        tokio::time::timeout(IO_TIMEOUT, tls.read_to_end(&mut rest))
            .await
            .expect("the server closes")
            .expect("a clean TLS close (close_notify before the FIN)");
        assert!(rest.is_empty());
        // the TLS stream ends at the close_notify: wait for the TCP FIN as well
        let mut byte = [0u8; 1];
        let n = tokio::time::timeout(IO_TIMEOUT, tls.get_mut().0.read(&mut byte))
            .await
            .expect("the server's FIN")
            .unwrap();
        assert_eq!(n, 0, "nothing after the close_notify");
        let n = tcp_segments(fd).received - before;
        counts.push(n);
        if n == 1 {
            return;
        }
    }
    panic!("segments after the client's close, per try: {counts:?} (1 expected)");
}
