//! `[[stream]]` services and the PROXY protocol, over real sockets: TLS terminated in front of
//! a TCP line server, SNI routing, passthrough to a backend with its own certificate,
//! half-close, timeouts, limits, PROXY headers both ways, and the config errors.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use portcullis::config::validate::Mode;
use portcullis::proxy_protocol::{self, Version};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

/// A TCP line server: answers each line with `prefix` + the line; after the client's FIN,
/// sends `bye` and closes. With `proxy`, first reads a PROXY header and answers
/// `from <client address>`.
async fn line_server(prefix: &'static str, proxy: bool) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((s, _)) = l.accept().await else { return };
            tokio::spawn(async move {
                let from = if proxy {
                    let h = proxy_protocol::read_header(&s, true).await;
                    Some(match h {
                        Ok(Some(h)) => format!("from {:?} {}\n", h.version, h.source.unwrap()),
                        other => format!("bad header {other:?}\n"),
                    })
                } else {
                    None
                };
                serve_lines(s, prefix, from).await;
            });
        }
    });
    addr
}

async fn serve_lines<S: AsyncRead + AsyncWrite + Unpin>(s: S, prefix: &str, first: Option<String>) {
    let (r, mut w) = tokio::io::split(s);
    if let Some(f) = first {
        let _ = w.write_all(f.as_bytes()).await;
    }
    let mut lines = BufReader::new(r).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        if w.write_all(format!("{prefix}{line}\n").as_bytes())
            .await
            .is_err()
        {
            return;
        }
    }
    let _ = w.write_all(b"bye\n").await;
    let _ = w.shutdown().await;
}

/// Sends a line and reads one back.
async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(s: &mut S, line: &str) -> String {
    s.write_all(format!("{line}\n").as_bytes()).await.unwrap();
    read_line(s).await
}

async fn read_line<S: AsyncRead + Unpin>(s: &mut S) -> String {
    let mut out = Vec::new();
    let mut b = [0u8; 1];
    loop {
        match tokio::time::timeout(IO_TIMEOUT, s.read(&mut b)).await {
            Ok(Ok(1)) if b[0] == b'\n' => break,
            Ok(Ok(1)) => out.push(b[0]),
            other => panic!("no line ({other:?}); so far {:?}", text(&out)),
        }
    }
    String::from_utf8(out).unwrap()
}

fn stream_addr(srv: &TestServer, name: &str) -> SocketAddr {
    srv.server.as_ref().unwrap().stream_addrs(name)[0]
}

fn client() -> Arc<rustls::ClientConfig> {
    ClientOpts::default().alpn(&[]).build()
}

#[tokio::test]
async fn terminates_tls_lines_both_ways_and_half_close() {
    let backend = line_server("A:", false).await;
    let srv = start(&format!(
        r#"{TWO_SITES}
[[stream]]
name = "imaps"
listen = ["127.0.0.1:0"]
hosts = ["alpha.test"]
cert = "certs/alpha.pem"
key = "certs/alpha.key"
upstream = "{backend}"
"#
    ));
    let addr = stream_addr(&srv, "imaps");
    let mut tls = tls_connect(
        addr,
        Some(ALPHA),
        ClientOpts::default().alpn(&["h2", "http/1.1"]).build(),
    )
    .await
    .expect("handshake with the stream");
    // Not an HTTPS listener: no HTTP protocol is offered.
    assert_eq!(tls_info(&tls).alpn, None);
    assert_eq!(exchange(&mut tls, "hello").await, "A:hello");
    assert_eq!(exchange(&mut tls, "again").await, "A:again");
    // Half-close: the client is done sending, the backend's last words still arrive.
    tls.write_all(b"last\n").await.unwrap();
    tls.shutdown().await.unwrap();
    let (rest, closed) = read_until_close(&mut tls, IO_TIMEOUT).await;
    assert_eq!(text(&rest), "A:last\nbye\n");
    assert!(matches!(closed, Closed::Eof), "{closed:?}");
}

#[tokio::test]
async fn sni_routes_pick_their_backend_and_certificate() {
    let (a, b) = (
        line_server("A:", false).await,
        line_server("B:", false).await,
    );
    let srv = start(&format!(
        r#"{TWO_SITES}
[[stream]]
name = "mail"
listen = ["127.0.0.1:0"]

[[stream.route]]
sni = ["alpha.test"]
upstream = "{a}"
cert = "certs/alpha.pem"
key = "certs/alpha.key"

[[stream.route]]
sni = ["*.example.test"]
upstream = "{b}"
cert = "certs/wild.pem"
key = "certs/wild.key"
"#
    ));
    let addr = stream_addr(&srv, "mail");
    let mut tls = tls_connect(addr, Some(ALPHA), client()).await.unwrap();
    assert_eq!(tls_info(&tls).leaf_sans(), ["alpha.test", "www.alpha.test"]);
    assert_eq!(exchange(&mut tls, "x").await, "A:x");
    let mut tls = tls_connect(addr, Some("imap.example.test"), client())
        .await
        .unwrap();
    assert_eq!(tls_info(&tls).leaf_sans(), ["*.example.test"]);
    assert_eq!(exchange(&mut tls, "y").await, "B:y");
    // A name no route has (and no upstream of the stream's own): refused.
    let e = tls_connect(addr, Some(BETA), client()).await.unwrap_err();
    assert!(
        matches!(
            rustls_error(&e),
            Some(rustls::Error::AlertReceived(
                rustls::AlertDescription::UnrecognisedName
            ))
        ),
        "{e}"
    );
}

/// ALPN: a route taken by the protocol the client offers, and negotiated; the stream's own
/// `alpn` offered otherwise.
#[tokio::test]
async fn alpn_routes_and_offers() {
    let (a, b) = (
        line_server("A:", false).await,
        line_server("B:", false).await,
    );
    let srv = start(&format!(
        r#"{TWO_SITES}
[[stream]]
name = "s"
listen = ["127.0.0.1:0"]
hosts = ["alpha.test"]
cert = "certs/alpha.pem"
key = "certs/alpha.key"
upstream = "{a}"
alpn = ["imap"]

[[stream.route]]
alpn = ["xmpp-client"]
upstream = "{b}"
"#
    ));
    let addr = stream_addr(&srv, "s");
    let cfg = |alpn: &[&'static str]| ClientOpts::default().alpn(alpn).build();
    let mut tls = tls_connect(addr, Some(ALPHA), cfg(&["h2", "xmpp-client"]))
        .await
        .unwrap();
    assert_eq!(tls_info(&tls).alpn.as_deref(), Some("xmpp-client"));
    assert_eq!(exchange(&mut tls, "x").await, "B:x");
    let mut tls = tls_connect(addr, Some(ALPHA), cfg(&["imap"]))
        .await
        .unwrap();
    assert_eq!(tls_info(&tls).alpn.as_deref(), Some("imap"));
    assert_eq!(exchange(&mut tls, "y").await, "A:y");
    // Offering only what the stream does not speak: refused (no_application_protocol).
    assert!(tls_connect(addr, Some(ALPHA), cfg(&["h2"])).await.is_err());
}

/// The backend keeps its own TLS: the client sees the backend's certificate, which the
/// server has no copy of.
#[tokio::test]
async fn passthrough_delivers_the_backends_own_certificate() {
    let env = TestEnv::new();
    let leaf = pki().leaf(&["pass.example.net"], Alg::Ecdsa);
    let chain: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(pki().chain_pem(&leaf).as_bytes())
            .collect::<Result<_, _>>()
            .unwrap();
    let key = PrivateKeyDer::from_pem_slice(leaf.key_pem.as_bytes()).unwrap();
    let cfg = rustls::ServerConfig::builder_with_provider(Arc::new(default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let backend = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                if let Ok(tls) = acceptor.accept(s).await {
                    serve_lines(tls, "TLS-BACKEND:", None).await;
                }
            });
        }
    });
    let terminated = line_server("HERE:", false).await;
    let srv = env.start(&format!(
        r#"{TWO_SITES}
[[stream]]
name = "mixed"
listen = ["127.0.0.1:0"]
hosts = ["alpha.test"]
cert = "certs/alpha.pem"
key = "certs/alpha.key"
upstream = "{terminated}"

[[stream.route]]
sni = ["pass.example.net"]
upstream = "{backend}"
passthrough = true
"#
    ));
    let addr = stream_addr(&srv, "mixed");
    let mut tls = tls_connect(addr, Some("pass.example.net"), client())
        .await
        .expect("handshake with the backend through the stream");
    assert_eq!(tls_info(&tls).chain[0], leaf.der);
    assert_eq!(exchange(&mut tls, "hi").await, "TLS-BACKEND:hi");
    // Other names are terminated here and go to the stream's own upstream.
    let mut tls = tls_connect(addr, Some(ALPHA), client()).await.unwrap();
    assert_eq!(exchange(&mut tls, "hi").await, "HERE:hi");
}

#[tokio::test]
async fn idle_connections_are_closed() {
    let backend = line_server("A:", false).await;
    let srv = start(&format!(
        r#"{TWO_SITES}
[[stream]]
name = "s"
listen = ["127.0.0.1:0"]
hosts = ["alpha.test"]
cert = "certs/alpha.pem"
key = "certs/alpha.key"
upstream = "{backend}"
idle_timeout = "400ms"
"#
    ));
    let mut tls = tls_connect(stream_addr(&srv, "s"), Some(ALPHA), client())
        .await
        .unwrap();
    // Traffic keeps it open past the timeout...
    for i in 0..4 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(exchange(&mut tls, &i.to_string()).await, format!("A:{i}"));
    }
    // ...silence closes it.
    let started = Instant::now();
    let (_, closed) = read_until_close(&mut tls, Duration::from_secs(5)).await;
    let took = started.elapsed();
    assert!(
        !matches!(closed, Closed::StillOpen),
        "still open after {took:?}"
    );
    assert!(
        took >= Duration::from_millis(300) && took < Duration::from_secs(3),
        "{took:?}"
    );
}

#[tokio::test]
async fn unreachable_backend_closes_the_client_promptly() {
    let refused = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let srv = start(&format!(
        r#"{TWO_SITES}
[[stream]]
name = "s"
listen = ["127.0.0.1:0"]
hosts = ["alpha.test"]
cert = "certs/alpha.pem"
key = "certs/alpha.key"
upstream = "{refused}"
"#
    ));
    let started = Instant::now();
    let mut tls = tls_connect(stream_addr(&srv, "s"), Some(ALPHA), client())
        .await
        .unwrap();
    let (got, closed) = read_until_close(&mut tls, Duration::from_secs(5)).await;
    assert!(got.is_empty());
    assert!(matches!(closed, Closed::Eof), "{closed:?}");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
}

/// Backends by host name (resolved at connect) and by Unix socket.
#[tokio::test]
async fn host_name_and_unix_socket_backends() {
    let tcp_backend = line_server("NAMED:", false).await;
    let env = TestEnv::new();
    let sock = env.path("backend.sock");
    let ul = tokio::net::UnixListener::bind(&sock).unwrap();
    tokio::spawn(async move {
        while let Ok((s, _)) = ul.accept().await {
            tokio::spawn(serve_lines(s, "UNIX:", None));
        }
    });
    let srv = env.start(&format!(
        r#"{TWO_SITES}
[[stream]]
name = "s"
listen = ["127.0.0.1:0"]
hosts = ["alpha.test"]
cert = "certs/alpha.pem"
key = "certs/alpha.key"
upstream = "localhost:{}"

[[stream.route]]
sni = ["*.example.test"]
upstream = "unix:{}"
cert = "certs/wild.pem"
key = "certs/wild.key"
"#,
        tcp_backend.port(),
        sock.display()
    ));
    let addr = stream_addr(&srv, "s");
    let mut tls = tls_connect(addr, Some(ALPHA), client()).await.unwrap();
    assert_eq!(exchange(&mut tls, "a").await, "NAMED:a");
    let mut tls = tls_connect(addr, Some("u.example.test"), client())
        .await
        .unwrap();
    assert_eq!(exchange(&mut tls, "b").await, "UNIX:b");
    tls.shutdown().await.unwrap();
    let (rest, _) = read_until_close(&mut tls, IO_TIMEOUT).await;
    assert_eq!(text(&rest), "bye\n", "half-close over the Unix socket");
}

/// Bytes that are no ClientHello get an alert and a close, and never reach the backend.
#[tokio::test]
async fn not_tls_is_refused() {
    let backend = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let srv = start(&format!(
        r#"{TWO_SITES}
[[stream]]
name = "s"
listen = ["127.0.0.1:0"]
upstream = "{}"
passthrough = true
"#,
        backend.local_addr().unwrap()
    ));
    let mut tcp = TcpStream::connect(stream_addr(&srv, "s")).await.unwrap();
    tcp.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let (got, closed) = read_until_close(&mut tcp, Duration::from_secs(5)).await;
    assert!(!matches!(closed, Closed::StillOpen));
    // A TLS alert record, if anything.
    assert!(got.is_empty() || got[0] == 0x15, "{got:?}");
    let accepted = tokio::time::timeout(Duration::from_millis(200), backend.accept()).await;
    assert!(accepted.is_err(), "the backend was connected to");
}

#[tokio::test]
async fn connection_limit() {
    let backend = line_server("A:", false).await;
    let srv = start(&format!(
        r#"{TWO_SITES}
[[stream]]
name = "s"
listen = ["127.0.0.1:0"]
hosts = ["alpha.test"]
cert = "certs/alpha.pem"
key = "certs/alpha.key"
upstream = "{backend}"
max_connections = 2
"#
    ));
    let addr = stream_addr(&srv, "s");
    let mut first = tls_connect(addr, Some(ALPHA), client()).await.unwrap();
    let mut second = tls_connect(addr, Some(ALPHA), client()).await.unwrap();
    assert_eq!(exchange(&mut first, "1").await, "A:1");
    assert_eq!(exchange(&mut second, "2").await, "A:2");
    // The third is closed at once.
    assert!(tls_connect(addr, Some(ALPHA), client()).await.is_err());
    drop(first);
    // Its slot comes back once the server has seen the close.
    let deadline = Instant::now() + IO_TIMEOUT;
    loop {
        if let Ok(mut again) = tls_connect(addr, Some(ALPHA), client()).await {
            assert_eq!(exchange(&mut again, "3").await, "A:3");
            break;
        }
        assert!(Instant::now() < deadline, "the slot never came back");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(exchange(&mut second, "4").await, "A:4");
}

#[tokio::test]
async fn proxy_protocol_v1_and_v2_to_the_backend() {
    let backend = line_server("A:", true).await;
    let srv = start(&format!(
        r#"{TWO_SITES}
[[stream]]
name = "s"
listen = ["127.0.0.1:0"]
hosts = ["alpha.test"]
cert = "certs/alpha.pem"
key = "certs/alpha.key"
upstream = "{backend}"
proxy_protocol = "v1"

[[stream.route]]
sni = ["v2.example.test"]
upstream = "{backend}"
cert = "certs/wild.pem"
key = "certs/wild.key"
proxy_protocol = "v2"
"#
    ));
    let addr = stream_addr(&srv, "s");
    for (sni, version) in [(ALPHA, Version::V1), ("v2.example.test", Version::V2)] {
        let mut tls = tls_connect(addr, Some(sni), client()).await.unwrap();
        let me = tls.get_ref().0.local_addr().unwrap();
        assert_eq!(read_line(&mut tls).await, format!("from {version:?} {me}"));
        assert_eq!(exchange(&mut tls, "x").await, "A:x");
    }
}

/// A stream's names get their certificate like a site's: here from the local CA (issuer
/// "auto", local names).
#[tokio::test]
async fn local_ca_certificate_for_a_stream() {
    let backend = line_server("A:", false).await;
    let srv = start(&format!(
        r#"{TWO_SITES}
[[stream]]
name = "s"
listen = ["127.0.0.1:0"]
hosts = ["mail.test"]
upstream = "{backend}"
"#
    ));
    let root_path = srv
        .server
        .as_ref()
        .unwrap()
        .local_ca_root
        .clone()
        .expect("local CA used");
    let root = CertificateDer::from_pem_file(&root_path).unwrap();
    let cfg = ClientOpts {
        root: Some(root),
        alpn: vec![],
        ..Default::default()
    }
    .build();
    let mut tls = tls_connect(stream_addr(&srv, "s"), Some("mail.test"), cfg)
        .await
        .expect("the local CA's certificate for mail.test");
    assert_eq!(tls_info(&tls).leaf_sans(), ["mail.test"]);
    assert_eq!(exchange(&mut tls, "x").await, "A:x");
}

/// Shutdown: no new connections, open ones run on until shutdown_timeout.
#[tokio::test]
async fn shutdown_lets_open_pipes_run_until_the_timeout() {
    let backend = line_server("A:", false).await;
    let mut srv = start(&format!(
        r#"[limits]
shutdown_timeout = "1s"
{TWO_SITES}
[[stream]]
name = "s"
listen = ["127.0.0.1:0"]
hosts = ["alpha.test"]
cert = "certs/alpha.pem"
key = "certs/alpha.key"
upstream = "{backend}"
"#
    ));
    let addr = stream_addr(&srv, "s");
    let mut tls = tls_connect(addr, Some(ALPHA), client()).await.unwrap();
    assert_eq!(exchange(&mut tls, "before").await, "A:before");
    let server = srv.take();
    let started = Instant::now();
    let stopping = std::thread::spawn(move || server.shutdown());
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(exchange(&mut tls, "during").await, "A:during");
    assert!(
        tls_connect(addr, Some(ALPHA), client()).await.is_err(),
        "new connections refused"
    );
    let (_, closed) = read_until_close(&mut tls, Duration::from_secs(5)).await;
    assert!(!matches!(closed, Closed::StillOpen));
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(3),
        "{took:?}"
    );
    stopping.join().unwrap();
}

/// A connection with a PROXY header in front of its TLS (or HTTP) bytes.
async fn proxied_tcp(addr: SocketAddr, header: Option<Vec<u8>>) -> TcpStream {
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    if let Some(h) = header {
        tcp.write_all(&h).await.unwrap();
    }
    tcp
}

async fn https_get(tcp: TcpStream) -> Result<String, String> {
    let cfg = ClientOpts::default().build();
    let name = ServerName::try_from(ALPHA.to_string()).unwrap();
    let connect = tokio_rustls::TlsConnector::from(cfg).connect(name, tcp);
    let mut tls = tokio::time::timeout(IO_TIMEOUT, connect)
        .await
        .map_err(|_| "handshake timed out".to_string())?
        .map_err(|e| format!("handshake: {e}"))?;
    let resp = raw_exchange(
        &mut tls,
        b"GET / HTTP/1.1\r\nHost: alpha.test\r\nConnection: close\r\n\r\n",
    )
    .await?;
    Ok(format!("{} {}", resp.status, text(&resp.body)))
}

fn header(version: Version) -> Vec<u8> {
    proxy_protocol::encode(
        version,
        "203.0.113.9:40000".parse().unwrap(),
        "192.0.2.1:443".parse().unwrap(),
    )
}

#[tokio::test]
async fn proxy_protocol_accepted_from_trusted_addresses_only() {
    let srv = start(&format!(
        "proxy_protocol = {{ from = [\"127.0.0.0/8\"], required = true }}\n{TWO_SITES}"
    ));
    for v in [Version::V1, Version::V2] {
        let tcp = proxied_tcp(srv.https, Some(header(v))).await;
        assert_eq!(https_get(tcp).await.unwrap(), "200 alpha", "{v:?}");
    }
    // From a trusted address, a header is required.
    let tcp = proxied_tcp(srv.https, None).await;
    assert!(https_get(tcp).await.is_err());
    // Port 80 too.
    let mut tcp = proxied_tcp(srv.http(), Some(header(Version::V1))).await;
    let resp = raw_exchange(&mut tcp, b"GET /x HTTP/1.1\r\nHost: alpha.test\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(resp.status, 301);
    let mut tcp = proxied_tcp(srv.http(), None).await;
    assert!(
        raw_exchange(&mut tcp, b"GET /x HTTP/1.1\r\nHost: alpha.test\r\n\r\n")
            .await
            .is_err()
    );

    // Not trusted: a header is never read, so it spoils the handshake; plain TLS works.
    let srv = start(&format!(
        "proxy_protocol = {{ from = [\"10.0.0.0/8\"] }}\n{TWO_SITES}"
    ));
    let tcp = proxied_tcp(srv.https, Some(header(Version::V2))).await;
    assert!(https_get(tcp).await.is_err());
    let tcp = proxied_tcp(srv.https, None).await;
    assert_eq!(https_get(tcp).await.unwrap(), "200 alpha");

    // Trusted, header optional: with and without.
    let srv = start(&format!(
        "proxy_protocol = {{ from = [\"127.0.0.1\"], required = false }}\n{TWO_SITES}"
    ));
    for h in [Some(header(Version::V1)), None] {
        let tcp = proxied_tcp(srv.https, h).await;
        assert_eq!(https_get(tcp).await.unwrap(), "200 alpha");
    }
}

/// An HTTP backend that answers each request with the `X-Forwarded-For` it got.
async fn forwarded_for_backend() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut b = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut b).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&b[..n]),
                    }
                }
                let xff = text(&head)
                    .lines()
                    .find_map(|l| {
                        let (k, v) = l.split_once(':')?;
                        k.eq_ignore_ascii_case("x-forwarded-for")
                            .then(|| v.trim().to_string())
                    })
                    .unwrap_or_default();
                let resp = format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{xff}",
                    xff.len()
                );
                let _ = s.write_all(resp.as_bytes()).await;
            });
        }
    });
    addr
}

/// The client a load balancer's header names is the client from then on: the reverse proxy
/// forwards it in `X-Forwarded-For`.
#[tokio::test]
async fn the_client_named_by_the_proxy_header_is_forwarded_to_backends() {
    let backend = forwarded_for_backend().await;
    let srv = start(&format!(
        r#"proxy_protocol = {{ from = ["127.0.0.1"] }}
[[site]]
name = "app"
hosts = ["alpha.test"]
cert = "certs/alpha.pem"
key = "certs/alpha.key"
[[site.route]]
path = "/"
proxy = {{ upstreams = ["http://{backend}"] }}
"#
    ));
    for v in [Version::V1, Version::V2] {
        let tcp = proxied_tcp(srv.https, Some(header(v))).await;
        assert_eq!(https_get(tcp).await.unwrap(), "200 203.0.113.9", "{v:?}");
    }
    // Without the load balancer in front (other addresses), the connection's own peer.
    let srv = start(&format!(
        r#"proxy_protocol = {{ from = ["10.0.0.0/8"] }}
[[site]]
name = "app"
hosts = ["alpha.test"]
cert = "certs/alpha.pem"
key = "certs/alpha.key"
[[site.route]]
path = "/"
proxy = {{ upstreams = ["http://{backend}"] }}
"#
    ));
    let tcp = proxied_tcp(srv.https, None).await;
    assert_eq!(https_get(tcp).await.unwrap(), "200 127.0.0.1");
}

/// `portcullis certs` and `pins` list stream certificates beside the sites'.
#[test]
fn certs_and_pins_list_stream_certificates() {
    let env = TestEnv::new();
    let path = env.write_config(&format!(
        r#"{TWO_SITES}
[[stream]]
name = "imaps"
listen = ["127.0.0.1:0"]
hosts = ["alpha.test"]
cert = "certs/alpha.pem"
key = "certs/alpha.key"
upstream = "127.0.0.1:143"

[[stream.route]]
sni = ["mail.test"]
upstream = "127.0.0.1:1143"
"#
    ));
    let run = |cmd: &str| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_portcullis"))
            .args([cmd, "--config"])
            .arg(&path)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", text(&out.stderr));
        text(&out.stdout)
    };
    let certs = run("certs");
    assert!(
        certs
            .lines()
            .any(|l| l.starts_with("stream \"imaps\": file ") && l.contains("alpha.pem")),
        "{certs}"
    );
    assert!(
        certs
            .lines()
            .any(|l| l.starts_with("stream \"imaps\" route 1: local CA")),
        "{certs}"
    );
    let pins = run("pins");
    assert!(pins.lines().any(|l| l == "stream \"imaps\":"), "{pins}");
    assert!(pins.lines().any(|l| l == "site alpha:"), "{pins}");
}

// ---------------------------------------------------------------------------------------------
// Config errors: each names the file and line.

fn refused(env: &TestEnv, body: &str) -> (String, Vec<String>) {
    let text = format!("{}{body}", TestEnv::prelude());
    let path = env.write_config_raw(&text);
    match portcullis::config::load(&path, &Default::default(), Mode::Serve) {
        Ok(_) => panic!("config accepted:\n{text}"),
        Err(p) => (text, p.iter().map(|p| p.to_string()).collect()),
    }
}

/// The problem containing `needle`, checked to be an error at the line of `at` in `text`.
fn error_at(env: &TestEnv, body: &str, needle: &str, at: &str) {
    let (text, problems) = refused(env, body);
    // The last line with `at` (the streams come after the sites).
    let lines: Vec<&str> = text.lines().collect();
    let line = lines
        .iter()
        .rposition(|l| l.contains(at))
        .unwrap_or_else(|| panic!("{at:?} not in config"))
        + 1;
    let want = format!("{}:{line}: error:", env.path("portcullis.toml").display());
    let p = problems
        .iter()
        .find(|p| p.contains(needle) && p.contains(": error: "))
        .unwrap_or_else(|| panic!("no error with {needle:?} in:\n{}", problems.join("\n")));
    assert!(p.starts_with(&want), "{p} (expected at line {line})");
    assert!(p.contains("(fix: "), "{p}");
}

#[test]
fn config_errors_name_file_and_line() {
    let env = TestEnv::new();
    let stream = |extra: &str| {
        format!(
            "{TWO_SITES}\n[[stream]]\nname = \"s\"\nlisten = [\"127.0.0.1:0\"]\nhosts = [\"alpha.test\"]\ncert = \"certs/alpha.pem\"\nkey = \"certs/alpha.key\"\n{extra}"
        )
    };
    // Port collisions: with the HTTPS listener, and with another stream.
    let body = format!(
        "{}\n[[stream]]\nname = \"s2\"\nlisten = [\"127.0.0.1:18993\"]\nupstream = \"127.0.0.1:1\"\npassthrough = true\n",
        stream("upstream = \"127.0.0.1:1\"\n")
    );
    let https_clash = format!(
        "https = [\"127.0.0.1:18443\"]\n{}",
        body.replace(
            "listen = [\"127.0.0.1:0\"]\nhosts",
            "listen = [\"0.0.0.0:18443\"]\nhosts"
        )
    );
    // (the prelude's [listen] table continues with the first line of the body)
    let text = format!("workers = 1\ndata_dir = \"data\"\n[listen]\nhttp = []\n{https_clash}");
    let path = env.write_config_raw(&text);
    let problems: Vec<String> = portcullis::config::load(&path, &Default::default(), Mode::Serve)
        .expect_err("refused")
        .iter()
        .map(|p| p.to_string())
        .collect();
    let line = text
        .lines()
        .position(|l| l.contains("0.0.0.0:18443"))
        .unwrap()
        + 1;
    assert!(
        problems.iter().any(
            |p| p.starts_with(&format!("{}:{line}: error:", path.display()))
                && p.contains("collides with listen.https 127.0.0.1:18443")
        ),
        "{problems:?}"
    );
    let two = format!(
        "{}\n[[stream]]\nname = \"s3\"\nlisten = [\"127.0.0.1:18993\"]\nupstream = \"127.0.0.1:1\"\npassthrough = true\n",
        body
    );
    let (text, problems) = refused(&env, &two);
    let lines: Vec<&str> = text.lines().collect();
    let line = lines
        .iter()
        .rposition(|l| l.contains("127.0.0.1:18993"))
        .unwrap()
        + 1;
    assert!(
        problems.iter().any(|p| p.contains(&format!("portcullis.toml:{line}: error: stream \"s3\": listen 127.0.0.1:18993 collides with stream \"s2\""))),
        "{problems:?}"
    );

    // Overlapping SNI routes: the same exact name, the same wildcard (same ALPN condition).
    for name in ["a.example.test", "*.example.test"] {
        let body = stream(&format!(
            "[[stream.route]]\nsni = [\"{name}\", \"other.example.net\"]\nupstream = \"127.0.0.1:1\"\npassthrough = true\n[[stream.route]]\nsni = [\"{name}\"]\nupstream = \"127.0.0.1:2\"\npassthrough = true\n"
        ));
        error_at(&env, &body, "overlaps the route at", "127.0.0.1:2");
    }
    // Same name with different ALPN conditions is fine.
    let ok = stream("upstream = \"127.0.0.1:9\"\n[[stream.route]]\nsni = [\"a.example.test\"]\nalpn = [\"imap\"]\nupstream = \"127.0.0.1:1\"\npassthrough = true\n[[stream.route]]\nsni = [\"a.example.test\"]\nupstream = \"127.0.0.1:2\"\npassthrough = true\n");
    let path = env.write_config_raw(&format!("{}{ok}", TestEnv::prelude()));
    if let Err(p) = portcullis::config::load(&path, &Default::default(), Mode::Serve) {
        panic!("{p:?}");
    }

    // A passthrough route with certificate settings.
    error_at(
        &env,
        &stream("[[stream.route]]\nsni = [\"a.example.test\"]\nupstream = \"127.0.0.1:1\"\npassthrough = true\ncert = \"certs/wild.pem\"\n"),
        "passthrough forwards TLS untouched",
        "cert = \"certs/wild.pem\"",
    );
    // Bad upstream addresses.
    for bad in [
        "127.0.0.1",
        "http://127.0.0.1:143",
        "unix:relative.sock",
        "mail:99999",
    ] {
        error_at(
            &env,
            &stream(&format!("upstream = \"{bad}\"\n")),
            "bad upstream",
            &format!("upstream = \"{bad}\""),
        );
    }
    // Unknown keys, in the stream and in a route.
    error_at(
        &env,
        &stream("upstream = \"127.0.0.1:1\"\nupstreams = [\"x\"]\n"),
        "unknown field `upstreams`",
        "upstreams = ",
    );
    error_at(
        &env,
        &stream("upstream = \"127.0.0.1:1\"\n[[stream.route]]\nsnis = [\"a.example.test\"]\nupstream = \"127.0.0.1:2\"\n"),
        "unknown field `snis`",
        "snis = ",
    );
    // A bad PROXY protocol version, a bad timeout, a certificate that does not cover the names.
    error_at(
        &env,
        &stream("upstream = \"127.0.0.1:1\"\nproxy_protocol = \"v3\"\n"),
        "is not a PROXY protocol version",
        "\"v3\"",
    );
    error_at(
        &env,
        &stream("upstream = \"127.0.0.1:1\"\nidle_timeout = \"soon\"\n"),
        "idle_timeout",
        "\"soon\"",
    );
    error_at(
        &env,
        &stream("upstream = \"127.0.0.1:1\"\n")
            .replace("hosts = [\"alpha.test\"]", "hosts = [\"beta.test\"]"),
        "does not cover beta.test",
        "cert = \"certs/alpha.pem\"",
    );
    // A terminating upstream without a certificate, and a stream with nowhere to go.
    error_at(
        &env,
        &format!("{TWO_SITES}\n[[stream]]\nname = \"n\"\nlisten = [\"127.0.0.1:0\"]\nupstream = \"127.0.0.1:1\"\n"),
        "has no hosts",
        "upstream = \"127.0.0.1:1\"",
    );
    error_at(
        &env,
        &format!("{TWO_SITES}\n[[stream]]\nname = \"n\"\nlisten = [\"127.0.0.1:0\"]\n"),
        "nowhere to send",
        "name = \"n\"",
    );
    // check: a stream port another process listens on.
    let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = held.local_addr().unwrap().port();
    let body = stream("upstream = \"127.0.0.1:1\"\n").replace(
        "listen = [\"127.0.0.1:0\"]\nhosts",
        &format!("listen = [\"127.0.0.1:{port}\"]\nhosts"),
    );
    let text = format!("{}{body}", TestEnv::prelude());
    let path = env.write_config_raw(&text);
    let problems =
        portcullis::config::load(&path, &Default::default(), Mode::Check).expect_err("refused");
    let line = text
        .lines()
        .position(|l| l.contains(&format!(":{port}")))
        .unwrap()
        + 1;
    assert!(
        problems.iter().any(|p| p.to_string().starts_with(&format!(
            "{}:{line}: error: stream \"s\": port {port} on 127.0.0.1 is in use",
            path.display()
        ))),
        "{problems:?}"
    );
    drop(held);
    // [listen] proxy_protocol: a bad address.
    error_at(
        &env,
        &format!("proxy_protocol = {{ from = [\"10.0.0.0/33\"] }}\n{TWO_SITES}"),
        "is not an IP address or CIDR",
        "10.0.0.0/33",
    );
}
