//! An HTTP/3 client for the tests (quinn + h3 + h3-quinn, the server's own stack, on rustls
//! verifying against the test PKI or a local CA root), and a UDP relay that reads the QUIC
//! packet types going through it.
//!
//! [`H3Client`] is one quinn endpoint (one UDP socket) with one session store: a second
//! connection to the same name resumes, and may send 0-RTT ([`H3Client::connecting`] then
//! `into_0rtt`). [`H3Conn`] is one HTTP/3 connection whose control streams are driven by a
//! task of the test's runtime. [`TicketLog`] records the session tickets the server sent.
//!
//! [`UdpRelay`] sits between a client and the server: it forwards datagrams both ways, counts
//! the long-header packets of each type in each direction (the type bits are not protected:
//! RFC 9001 §5.4.1 masks only the low four bits), and can hold the server's datagrams back so
//! that a client cannot finish its handshake before it has sent what it wanted in 0-RTT.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Buf, Bytes};
use rustls::client::{ClientSessionMemoryCache, ClientSessionStore, Tls13ClientSessionValue};
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::NamedGroup;
use tokio::net::UdpSocket;
use tokio::sync::watch;

use super::{ClientOpts, Req, IO_TIMEOUT};

/// The h3 request stream types over quinn.
pub type H3Stream = h3::client::RequestStream<h3_quinn::BidiStream<Bytes>, Bytes>;
pub type H3SendHalf = h3::client::RequestStream<h3_quinn::SendStream<Bytes>, Bytes>;
pub type H3RecvHalf = h3::client::RequestStream<h3_quinn::RecvStream, Bytes>;

// =============================================================================================
// Session tickets
// =============================================================================================

/// A session store that keeps tickets like rustls' own and records, per server name, each
/// ticket received (with the early data it allows) and each one taken for a resumption.
#[derive(Debug)]
pub struct TicketLog {
    inner: ClientSessionMemoryCache,
    /// `(server name, max_early_data_size)` of every TLS 1.3 ticket received.
    pub received: Mutex<Vec<(String, u32)>>,
    /// Server names a ticket was taken for (a resumption was offered).
    pub taken: Mutex<Vec<String>>,
}

impl TicketLog {
    fn new() -> TicketLog {
        TicketLog {
            inner: ClientSessionMemoryCache::new(64),
            received: Mutex::default(),
            taken: Mutex::default(),
        }
    }

    /// The `max_early_data_size` of the tickets received for `name`, in order.
    pub fn received_for(&self, name: &str) -> Vec<u32> {
        self.received
            .lock()
            .unwrap()
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, e)| *e)
            .collect()
    }

    /// How many tickets for `name` were taken to resume.
    pub fn taken_for(&self, name: &str) -> usize {
        self.taken
            .lock()
            .unwrap()
            .iter()
            .filter(|n| *n == name)
            .count()
    }
}

fn name_str(n: &ServerName<'_>) -> String {
    match n {
        ServerName::DnsName(d) => d.as_ref().to_string(),
        ServerName::IpAddress(ip) => IpAddr::from(*ip).to_string(),
        other => format!("{other:?}"),
    }
}

impl ClientSessionStore for TicketLog {
    fn set_kx_hint(&self, server_name: ServerName<'static>, group: NamedGroup) {
        self.inner.set_kx_hint(server_name, group)
    }
    fn kx_hint(&self, server_name: &ServerName<'_>) -> Option<NamedGroup> {
        self.inner.kx_hint(server_name)
    }
    fn set_tls12_session(
        &self,
        server_name: ServerName<'static>,
        value: rustls::client::Tls12ClientSessionValue,
    ) {
        self.inner.set_tls12_session(server_name, value)
    }
    fn tls12_session(
        &self,
        server_name: &ServerName<'_>,
    ) -> Option<rustls::client::Tls12ClientSessionValue> {
        self.inner.tls12_session(server_name)
    }
    fn remove_tls12_session(&self, server_name: &ServerName<'static>) {
        self.inner.remove_tls12_session(server_name)
    }
    fn insert_tls13_ticket(
        &self,
        server_name: ServerName<'static>,
        value: Tls13ClientSessionValue,
    ) {
        self.received
            .lock()
            .unwrap()
            .push((name_str(&server_name), value.max_early_data_size()));
        self.inner.insert_tls13_ticket(server_name, value)
    }
    fn take_tls13_ticket(
        &self,
        server_name: &ServerName<'static>,
    ) -> Option<Tls13ClientSessionValue> {
        let t = self.inner.take_tls13_ticket(server_name);
        if t.is_some() {
            self.taken.lock().unwrap().push(name_str(server_name));
        }
        t
    }
}

// =============================================================================================
// Client
// =============================================================================================

/// How an [`H3Client`] is set up.
#[derive(Clone)]
pub struct H3Opts {
    /// Trust anchor (default: the test PKI's root).
    pub root: Option<CertificateDer<'static>>,
    /// Check that the certificate covers the name (see [`ClientOpts::check_name`]).
    pub check_name: bool,
    /// The address the client's UDP socket binds (port 0).
    pub bind: IpAddr,
    /// QUIC idle timeout: also how long a handshake nobody answers takes to fail.
    pub idle_timeout: Duration,
    /// The client's receive window per stream (quinn's default: 1.25 MB).
    pub stream_window: Option<u32>,
    /// The client's receive window for the whole connection (quinn's default: unlimited).
    pub conn_window: Option<u32>,
    /// Key exchange groups offered (`None`: the provider's, X25519MLKEM768 first, whose key
    /// share makes the ClientHello span two Initial datagrams).
    pub kx: Option<Vec<&'static dyn rustls::crypto::SupportedKxGroup>>,
}

impl Default for H3Opts {
    fn default() -> Self {
        H3Opts {
            root: None,
            check_name: true,
            bind: IpAddr::V4(Ipv4Addr::LOCALHOST),
            idle_timeout: IO_TIMEOUT,
            stream_window: None,
            conn_window: None,
            kx: None,
        }
    }
}

/// One quinn client endpoint with one session store (see the module docs).
pub struct H3Client {
    pub endpoint: quinn::Endpoint,
    pub tickets: Arc<TicketLog>,
    config: quinn::ClientConfig,
}

impl H3Client {
    /// A client with the default [`H3Opts`].
    pub fn new() -> H3Client {
        Self::with(H3Opts::default())
    }

    /// A client set up by `opts`: TLS 1.3 only, ALPN `h3`, early data enabled.
    pub fn with(opts: H3Opts) -> H3Client {
        let tls = ClientOpts {
            root: opts.root.clone(),
            check_name: opts.check_name,
            kx: opts.kx.clone(),
            ..ClientOpts::default()
        }
        .tls13()
        .alpn(&["h3"])
        .build();
        let mut tls = (*tls).clone();
        let tickets = Arc::new(TicketLog::new());
        tls.resumption = rustls::client::Resumption::store(tickets.clone());
        tls.enable_early_data = true;
        let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls)
            .expect("a QUIC-capable rustls client config");
        let mut transport = quinn::TransportConfig::default();
        transport.max_idle_timeout(Some(
            opts.idle_timeout.try_into().expect("idle timeout in range"),
        ));
        if let Some(w) = opts.stream_window {
            transport.stream_receive_window(w.into());
        }
        if let Some(w) = opts.conn_window {
            transport.receive_window(w.into());
        }
        let mut config = quinn::ClientConfig::new(Arc::new(crypto));
        config.transport_config(Arc::new(transport));
        let endpoint = quinn::Endpoint::client(SocketAddr::new(opts.bind, 0))
            .expect("bind the client's UDP socket");
        H3Client {
            endpoint,
            tickets,
            config,
        }
    }

    /// Starts a QUIC handshake with `addr` for `sni` (the caller may turn it into 0-RTT).
    pub fn connecting(&self, addr: SocketAddr, sni: &str) -> Result<quinn::Connecting, String> {
        self.endpoint
            .connect_with(self.config.clone(), addr, sni)
            .map_err(|e| format!("connect: {e}"))
    }

    /// A completed QUIC handshake with `addr` for `sni` (bounded by [`IO_TIMEOUT`]).
    pub async fn quic(&self, addr: SocketAddr, sni: &str) -> Result<quinn::Connection, String> {
        let connecting = self.connecting(addr, sni)?;
        match tokio::time::timeout(IO_TIMEOUT, connecting).await {
            Ok(Ok(c)) => Ok(c),
            Ok(Err(e)) => Err(format!("QUIC handshake: {e}")),
            Err(_) => Err("QUIC handshake timed out".into()),
        }
    }

    /// A QUIC handshake, then HTTP/3 on it.
    pub async fn connect(&self, addr: SocketAddr, sni: &str) -> Result<H3Conn, String> {
        H3Conn::new(self.quic(addr, sni).await?).await
    }
}

impl Default for H3Client {
    fn default() -> Self {
        Self::new()
    }
}

/// A response read over HTTP/3.
#[derive(Debug)]
pub struct H3Resp {
    pub status: u16,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

impl H3Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// One HTTP/3 connection (see the module docs).
pub struct H3Conn {
    pub quic: quinn::Connection,
    send: h3::client::SendRequest<h3_quinn::OpenStreams, Bytes>,
    /// Resolves with how the connection ended (the h3 driver's `wait_idle`).
    driver: Option<tokio::task::JoinHandle<h3::error::ConnectionError>>,
}

impl H3Conn {
    /// HTTP/3 on an established (or 0-RTT) QUIC connection: opens the control and QPACK
    /// streams and drives them from a task.
    pub async fn new(quic: quinn::Connection) -> Result<H3Conn, String> {
        let (mut driver, send) = h3::client::new(h3_quinn::Connection::new(quic.clone()))
            .await
            .map_err(|e| format!("HTTP/3 set-up: {e}"))?;
        let driver = tokio::spawn(async move { driver.wait_idle().await });
        Ok(H3Conn {
            quic,
            send,
            driver: Some(driver),
        })
    }

    /// Sends `req`'s head (the body is the caller's to send, then `finish`).
    pub async fn start(&mut self, req: &Req) -> Result<H3Stream, String> {
        let mut b = http::Request::builder()
            .method(req.method.clone())
            .uri(format!("https://{}{}", req.host, req.path));
        for (k, v) in &req.headers {
            b = b.header(k, v);
        }
        let hreq = b.body(()).map_err(|e| e.to_string())?;
        tokio::time::timeout(IO_TIMEOUT, self.send.send_request(hreq))
            .await
            .map_err(|_| "sending the request head timed out".to_string())?
            .map_err(|e| format!("send_request: {e}"))
    }

    /// Sends `req` with its body while reading the response (so that a body larger than the
    /// windows flows through a server that streams it back), within [`IO_TIMEOUT`] × 3.
    pub async fn send(&mut self, req: &Req) -> Result<H3Resp, String> {
        let stream = self.start(req).await?;
        let (mut tx, mut rx) = stream.split();
        let body = req.body.clone();
        let sending = async move {
            if !body.is_empty() {
                tx.send_data(body)
                    .await
                    .map_err(|e| format!("send_data: {e}"))?;
            }
            tx.finish().await.map_err(|e| format!("finish: {e}"))
        };
        let reading = read_h3_response(&mut rx);
        let both = async { tokio::join!(sending, reading) };
        match tokio::time::timeout(IO_TIMEOUT * 3, both).await {
            Err(_) => Err("request timed out".into()),
            // The server may answer before it has read the whole body and stop the request
            // stream (RFC 9114 §4.1): a complete response is what counts, and a body that
            // did not get through shows in what the server answers.
            Ok((_sent, read)) => read,
        }
    }

    /// How the connection ended, once it has (`None`: still open after `timeout`).
    pub async fn closed(&mut self, timeout: Duration) -> Option<h3::error::ConnectionError> {
        let driver = self.driver.as_mut()?;
        match tokio::time::timeout(timeout, driver).await {
            Ok(r) => {
                self.driver = None;
                Some(r.expect("the h3 driver task"))
            }
            Err(_) => None,
        }
    }
}

impl Drop for H3Conn {
    /// Closes the connection at once (the driver task would otherwise keep it open).
    fn drop(&mut self) {
        self.quic.close(0u32.into(), b"dropped");
        if let Some(d) = &self.driver {
            d.abort();
        }
    }
}

/// Reads a response head and its whole body from a request stream.
pub async fn read_h3_response<S: h3::quic::RecvStream>(
    rx: &mut h3::client::RequestStream<S, Bytes>,
) -> Result<H3Resp, String> {
    let head = rx
        .recv_response()
        .await
        .map_err(|e| format!("recv_response: {e}"))?;
    let mut body = Vec::new();
    while let Some(mut chunk) = rx
        .recv_data()
        .await
        .map_err(|e| format!("recv_data after {} bytes: {e}", body.len()))?
    {
        body.extend_from_slice(&chunk.copy_to_bytes(chunk.remaining()));
    }
    Ok(H3Resp {
        status: head.status().as_u16(),
        headers: head.headers().clone(),
        body: body.into(),
    })
}

/// GET `path` from `sni` over a new connection of a new client (verifying the name).
pub async fn h3_get(addr: SocketAddr, sni: &str, path: &str) -> Result<H3Resp, String> {
    let client = H3Client::new();
    let mut conn = client.connect(addr, sni).await?;
    conn.send(&Req::get(sni, path)).await
}

// =============================================================================================
// UDP relay
// =============================================================================================

/// Long-header packet types of QUIC v1 (RFC 9000 §17.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PacketType {
    Initial = 0,
    ZeroRtt = 1,
    Handshake = 2,
    Retry = 3,
}

/// Counts per direction and packet type (index: [`PacketType`] as usize).
#[derive(Debug, Default)]
pub struct RelayCounts {
    pub from_client: [AtomicUsize; 4],
    pub from_server: [AtomicUsize; 4],
    /// Datagrams each way.
    pub client_datagrams: AtomicUsize,
    pub server_datagrams: AtomicUsize,
}

impl RelayCounts {
    pub fn client(&self, t: PacketType) -> usize {
        self.from_client[t as usize].load(Ordering::SeqCst)
    }
    pub fn server(&self, t: PacketType) -> usize {
        self.from_server[t as usize].load(Ordering::SeqCst)
    }
}

/// A UDP relay for one client (see the module docs). Stops when dropped.
pub struct UdpRelay {
    /// Where the client sends to.
    pub addr: SocketAddr,
    pub counts: Arc<RelayCounts>,
    hold: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl UdpRelay {
    /// A relay on 127.0.0.1 to `server`.
    pub async fn start(server: SocketAddr) -> UdpRelay {
        let front = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let back = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        back.connect(server).await.unwrap();
        let addr = front.local_addr().unwrap();
        let counts = Arc::new(RelayCounts::default());
        let (hold, mut hold_rx) = watch::channel(false);
        let c = counts.clone();
        let task = tokio::spawn(async move {
            let mut client: Option<SocketAddr> = None;
            let mut held: Vec<Vec<u8>> = Vec::new();
            let mut a = vec![0u8; 65536];
            let mut b = vec![0u8; 65536];
            loop {
                tokio::select! {
                    r = front.recv_from(&mut a) => {
                        let Ok((n, from)) = r else { continue };
                        client = Some(from);
                        c.client_datagrams.fetch_add(1, Ordering::SeqCst);
                        count_packets(&a[..n], &c.from_client);
                        let _ = back.send(&a[..n]).await;
                    }
                    r = back.recv(&mut b) => {
                        // A refused send (ICMP) shows up here as an error: ignore it.
                        let Ok(n) = r else { continue };
                        c.server_datagrams.fetch_add(1, Ordering::SeqCst);
                        count_packets(&b[..n], &c.from_server);
                        if *hold_rx.borrow() {
                            held.push(b[..n].to_vec());
                        } else if let Some(to) = client {
                            let _ = front.send_to(&b[..n], to).await;
                        }
                    }
                    r = hold_rx.changed() => {
                        if r.is_err() {
                            return;
                        }
                        if !*hold_rx.borrow_and_update() {
                            if let Some(to) = client {
                                for d in held.drain(..) {
                                    let _ = front.send_to(&d, to).await;
                                }
                            }
                        }
                    }
                }
            }
        });
        UdpRelay {
            addr,
            counts,
            hold,
            task,
        }
    }

    /// Holds the server's datagrams back (`true`) or sends them on, held ones first (`false`).
    pub fn hold(&self, on: bool) {
        self.hold.send_replace(on);
    }
}

impl Drop for UdpRelay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A QUIC variable-length integer at the start of `b`: (value, its length).
fn varint(b: &[u8]) -> Option<(u64, usize)> {
    let first = *b.first()?;
    let len = 1usize << (first >> 6);
    if b.len() < len {
        return None;
    }
    let mut v = u64::from(first & 0x3f);
    for x in &b[1..len] {
        v = (v << 8) | u64::from(*x);
    }
    Some((v, len))
}

/// Counts the long-header packets coalesced in one datagram (RFC 9000 §12.2, §17.2).
fn count_packets(mut d: &[u8], into: &[AtomicUsize; 4]) {
    while d.len() > 6 && d[0] & 0x80 != 0 {
        if d[1..5] == [0, 0, 0, 0] {
            return; // Version Negotiation
        }
        let kind = (d[0] >> 4) & 0x03;
        into[kind as usize].fetch_add(1, Ordering::SeqCst);
        if kind == PacketType::Retry as u8 {
            return; // a Retry runs to the end of its datagram
        }
        let mut p = 5;
        let Some(&dcid) = d.get(p) else { return };
        p += 1 + dcid as usize;
        let Some(&scid) = d.get(p) else { return };
        p += 1 + scid as usize;
        if kind == PacketType::Initial as u8 {
            let Some((token, l)) = d.get(p..).and_then(varint) else {
                return;
            };
            p += l + token as usize;
        }
        let Some((len, l)) = d.get(p..).and_then(varint) else {
            return;
        };
        p += l + len as usize;
        if p > d.len() {
            return;
        }
        d = &d[p..];
    }
}
