//! TLS 1.3 early data (0-RTT): a resumed client sends requests in its first flight, and the
//! server's real connection path ([`crate::server::conn::serve_tls`]: the ClientHello, the
//! site, [`crate::server::early::EarlyTls`], then HTTP/1.1 or our HTTP/2) answers them.
//!
//! Each run first gets a single-use session for `beta.test` (the site with `early_data`) in a
//! handshake in memory, then connects over loopback TCP (`EarlyTls` is built on a TCP socket)
//! with early data. The input chooses HTTP/1.1 or HTTP/2, the requests sent as early data and
//! those sent after the handshake, whether the client sends its Finished at all, and damage to
//! the first flight (a flipped byte, a cut, appended bytes).
//!
//! Promises checked: nothing panics and the connection always ends (within a few seconds:
//! the client closes once it has its answers); a request that may be replayed — it came in
//! early data and the client never finished the handshake, or it says `Early-Data: 1` — is
//! only served when its method is safe, else it gets 425 Too Early; a request sent after the
//! handshake is not refused as early; safe methods are never refused as early.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection, ServerConnection};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::fixture::{client_config, tls, BETA};
use super::{Input, Seed};

/// How long the client waits for an answer before it gives up and closes its side.
const QUIET: Duration = Duration::from_millis(300);

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

const METHODS: [&str; 6] = ["GET", "HEAD", "OPTIONS", "POST", "PUT", "DELETE"];
const PATHS: [&str; 4] = ["/", "/x", "/?q=1", "*"];

/// The methods served from early data (RFC 9110 §9.2.1 safe methods we answer).
fn is_safe(method: &str) -> bool {
    matches!(method, "GET" | "HEAD" | "OPTIONS")
}

/// One request the client sends.
#[derive(Debug, Clone)]
struct Req {
    method: &'static str,
    path: &'static str,
    /// `Early-Data: 1` (a proxy in front got it as early data).
    early_header: bool,
    /// Body bytes (with a matching `content-length`).
    body: usize,
    /// Sent in the first flight, as early data.
    in_early: bool,
}

impl Req {
    fn parse(input: &mut Input<'_>, in_early: bool) -> Req {
        let b = input.byte();
        Req {
            method: METHODS[usize::from(b) % METHODS.len()],
            path: PATHS[usize::from(b >> 3) % PATHS.len()],
            early_header: b & 0x40 != 0,
            body: if b & 0x80 != 0 {
                usize::from(input.byte())
            } else {
                0
            },
            in_early,
        }
    }

    fn http1(&self) -> Vec<u8> {
        let mut r = format!(
            "{} {} HTTP/1.1\r\nhost: beta.test\r\ncontent-length: {}\r\n",
            self.method, self.path, self.body
        );
        if self.early_header {
            r.push_str("early-data: 1\r\n");
        }
        r.push_str("\r\n");
        let mut r = r.into_bytes();
        r.resize(r.len() + self.body, b'b');
        r
    }
}

/// What the input asks for.
struct Plan {
    h2: bool,
    /// The client sends its Finished (and then `after`).
    finish: bool,
    early: Vec<Req>,
    /// Bytes after the early requests (may be anything).
    early_tail: Vec<u8>,
    after: Vec<Req>,
    damage: Damage,
}

enum Damage {
    None,
    Flip(usize, u8),
    Cut(usize),
    Append(Vec<u8>),
}

impl Plan {
    fn parse(data: &[u8]) -> Plan {
        let mut input = Input::new(data);
        let settings = input.byte();
        let h2 = settings & 1 != 0;
        let finish = settings & 2 != 0;
        let early = (0..input.byte() % 5)
            .map(|_| Req::parse(&mut input, true))
            .collect();
        let early_tail = if settings & 4 != 0 {
            input.short().to_vec()
        } else {
            Vec::new()
        };
        let after = (0..input.byte() % 4)
            .map(|_| Req::parse(&mut input, false))
            .collect();
        let damage = match (settings >> 3) & 7 {
            1 => Damage::Flip(input.u16() as usize, input.byte() | 1),
            2 => Damage::Cut(input.u16() as usize),
            3 => Damage::Append(input.short().to_vec()),
            _ => Damage::None,
        };
        Plan {
            h2,
            finish,
            early,
            early_tail,
            after,
            damage,
        }
    }
}

pub fn early_data(data: &[u8]) {
    let plan = Plan::parse(data);
    thread_local! {
        static RT: tokio::runtime::Runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        static LISTENER: std::net::TcpListener =
            std::net::TcpListener::bind("127.0.0.1:0").expect("a loopback listener");
    }
    let cfg = client(plan.h2);
    prime(&cfg);
    let mut client = ClientConnection::new(
        cfg.clone(),
        ServerName::try_from("beta.test").expect("name"),
    )
    .expect("client");
    let early_bytes = early_bytes(&plan);
    {
        let mut early = client
            .early_data()
            .expect("the session allows early data (single-use, just issued)");
        let room = early.bytes_left();
        early
            .write_all(&early_bytes[..early_bytes.len().min(room)])
            .expect("to memory");
    }
    let mut flight = Vec::new();
    while client.wants_write() {
        client.write_tls(&mut flight).expect("to memory");
    }
    let damaged = !matches!(plan.damage, Damage::None);
    match &plan.damage {
        Damage::None => {}
        Damage::Flip(at, x) => {
            let at = at % flight.len();
            flight[at] ^= x;
        }
        Damage::Cut(len) => flight.truncate(len % flight.len()),
        Damage::Append(bytes) => flight.extend_from_slice(bytes),
    }
    let outcome = RT.with(|rt| {
        LISTENER.with(|listener| {
            rt.block_on(async {
                let (server_tcp, client_tcp, peer) = connect(listener);
                let tls = tls();
                let state = tls.states[0].clone();
                let (_shutdown_tx, shutdown_rx) = tokio::sync::watch::channel(false);
                let guard = state.count_connection();
                let server = crate::server::conn::serve_tls(
                    server_tcp,
                    peer,
                    state.clone(),
                    tls.ctx.clone(),
                    shutdown_rx,
                    false,
                    guard,
                );
                let client_side = run_client(client, client_tcp, &flight, &plan);
                let both = async { tokio::join!(server, client_side).1 };
                tokio::time::timeout(Duration::from_secs(10), both).await
            })
        })
    });
    let Ok(outcome) = outcome else {
        panic!("the connection did not end within 10 s");
    };
    if damaged {
        // The server may have refused or misread anything; it only had to end.
        return;
    }
    check(&plan, &outcome);
}

/// The client configs (one per ALPN: the ticket's ALPN must match for early data).
fn client(h2: bool) -> Arc<ClientConfig> {
    static CONFIGS: OnceLock<[Arc<ClientConfig>; 2]> = OnceLock::new();
    let configs = CONFIGS.get_or_init(|| {
        [&[&b"http/1.1"[..]][..], &[&b"h2"[..]][..]]
            .map(|alpn| Arc::new(client_config(alpn, true, true)))
    });
    configs[usize::from(h2)].clone()
}

/// A full handshake in memory with `beta.test`'s configuration: the client ends up with a
/// fresh single-use session (the server keeps it in the configuration's session cache).
fn prime(cfg: &Arc<ClientConfig>) {
    let server_cfg = tls().states[0].tls.configs[BETA].clone();
    let mut server = ServerConnection::new(server_cfg).expect("server");
    let mut client = ClientConnection::new(
        cfg.clone(),
        ServerName::try_from("beta.test").expect("name"),
    )
    .expect("client");
    let mut buf = Vec::new();
    for _ in 0..10 {
        buf.clear();
        while client.wants_write() {
            client.write_tls(&mut buf).expect("to memory");
        }
        let mut rd = &buf[..];
        while !rd.is_empty() {
            server.read_tls(&mut rd).expect("from memory");
            server.process_new_packets().expect("the priming handshake");
        }
        buf.clear();
        while server.wants_write() {
            server.write_tls(&mut buf).expect("to memory");
        }
        let mut rd = &buf[..];
        while !rd.is_empty() {
            client.read_tls(&mut rd).expect("from memory");
            client.process_new_packets().expect("the priming handshake");
        }
        if !client.is_handshaking() && !server.is_handshaking() && buf.is_empty() {
            return;
        }
    }
}

fn connect(
    listener: &std::net::TcpListener,
) -> (tokio::net::TcpStream, tokio::net::TcpStream, SocketAddr) {
    let client = std::net::TcpStream::connect(listener.local_addr().expect("address"))
        .expect("connect over loopback");
    let (server, peer) = listener.accept().expect("accept");
    let tokio = |s: std::net::TcpStream| {
        s.set_nonblocking(true).expect("non-blocking");
        // As on the server's sockets (its listeners set it): no delayed ACK stalls a run.
        s.set_nodelay(true).expect("TCP_NODELAY");
        tokio::net::TcpStream::from_std(s).expect("registered")
    };
    (tokio(server), tokio(client), peer)
}

/// The early data: HTTP/1.1 requests, or the HTTP/2 preface, SETTINGS and one stream per
/// request.
fn early_bytes(plan: &Plan) -> Vec<u8> {
    let mut out = Vec::new();
    if plan.h2 {
        out.extend_from_slice(PREFACE);
        h2_frame(&mut out, 4, 0, 0, &[]);
        for (i, r) in plan.early.iter().enumerate() {
            h2_request(&mut out, 1 + 2 * i as u32, r);
        }
    } else {
        for r in &plan.early {
            out.extend_from_slice(&r.http1());
        }
    }
    out.extend_from_slice(&plan.early_tail);
    out
}

fn h2_frame(out: &mut Vec<u8>, ty: u8, flags: u8, stream: u32, payload: &[u8]) {
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes()[1..]);
    out.push(ty);
    out.push(flags);
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
}

fn h2_request(out: &mut Vec<u8>, stream: u32, r: &Req) {
    let mut block = Vec::new();
    let mut field = |name: &str, value: &str| {
        // Literal without indexing, literal name (RFC 7541 §6.2.2); all lengths < 127.
        block.push(0);
        block.push(name.len() as u8);
        block.extend_from_slice(name.as_bytes());
        block.push(value.len() as u8);
        block.extend_from_slice(value.as_bytes());
    };
    field(":method", r.method);
    field(":scheme", "https");
    field(":path", r.path);
    field(":authority", "beta.test");
    let len = r.body.to_string();
    field("content-length", &len);
    if r.early_header {
        field("early-data", "1");
    }
    let end_stream = if r.body == 0 { 0x1 } else { 0 };
    h2_frame(out, 1, 0x4 | end_stream, stream, &block);
    if r.body > 0 {
        h2_frame(out, 0, 0x1, stream, &vec![b'b'; r.body]);
    }
}

/// What the client saw.
struct Outcome {
    /// The server accepted the early data.
    early_accepted: bool,
    /// The client sent its Finished.
    finished: bool,
    plain: Vec<u8>,
}

/// The client: sends the first flight, completes the handshake when the plan says so (then
/// sends the requests for after it), and closes once it has its answers (or the server
/// closed).
async fn run_client(
    mut client: ClientConnection,
    mut tcp: tokio::net::TcpStream,
    flight: &[u8],
    plan: &Plan,
) -> Outcome {
    let mut plain = Vec::new();
    let mut finished = false;
    let mut closed = false;
    if tcp.write_all(flight).await.is_err() {
        closed = true;
    }
    if !matches!(plan.damage, Damage::None) {
        // The server may wait for the rest of a cut ClientHello: the client has no more.
        let _ = tcp.shutdown().await;
        closed = true;
    }
    let mut buf = vec![0u8; 1 << 16];
    loop {
        if !client.is_handshaking() && plan.finish && !finished {
            finished = true;
            let mut after = Vec::new();
            for (i, r) in plan.after.iter().enumerate() {
                if plan.h2 {
                    h2_request(&mut after, 1 + 2 * (plan.early.len() + i) as u32, r);
                } else {
                    after.extend_from_slice(&r.http1());
                }
            }
            if !client.is_early_data_accepted() && plan.h2 {
                // The early data (with the preface) was not delivered: start over.
                let mut again = PREFACE.to_vec();
                h2_frame(&mut again, 4, 0, 0, &[]);
                again.extend_from_slice(&after);
                after = again;
            }
            let _ = client.writer().write_all(&after);
            let mut out = Vec::new();
            while client.wants_write() {
                let _ = client.write_tls(&mut out);
            }
            if !closed && tcp.write_all(&out).await.is_err() {
                closed = true;
            }
        }
        if !closed && !client.is_handshaking() && answered(plan, &client, finished, &plain) {
            // Everything is answered: close our side (without close_notify: a client that
            // goes away), read until the server closes.
            let _ = tcp.shutdown().await;
            closed = true;
        }
        let read = if closed {
            Ok(tcp.read(&mut buf).await)
        } else {
            tokio::time::timeout(QUIET, tcp.read(&mut buf)).await
        };
        let n = match read {
            Ok(Ok(0) | Err(_)) => break,
            Ok(Ok(n)) => n,
            Err(_) => {
                // Answers the client counted on are not coming (bytes that are not requests
                // may leave the server waiting for the rest of one): the client gives up.
                let _ = tcp.shutdown().await;
                closed = true;
                continue;
            }
        };
        let mut rd = &buf[..n];
        let mut failed = false;
        while !rd.is_empty() {
            if client.read_tls(&mut rd).is_err() || client.process_new_packets().is_err() {
                failed = true;
                break;
            }
            let _ = client.reader().read_to_end(&mut plain);
        }
        if failed {
            break;
        }
    }
    Outcome {
        early_accepted: client.is_early_data_accepted(),
        finished,
        plain,
    }
}

/// Whether every request that can be answered has been.
fn answered(plan: &Plan, client: &ClientConnection, finished: bool, plain: &[u8]) -> bool {
    let accepted = client.is_early_data_accepted();
    if plan.h2 {
        let mut expected = 0;
        if accepted {
            expected += plan.early.len();
        }
        // Bytes after the early requests may hold up the frames that follow them.
        if finished && (plan.early_tail.is_empty() || !accepted) {
            expected += plan.after.len();
        }
        h2_statuses_quick(plain) >= expected
    } else {
        let reqs = h1_sequence(plan, accepted, finished);
        h1_statuses(plain, &reqs).len() >= reqs.len()
    }
}

/// The HTTP/1.1 requests the server got whose responses can be told apart, in order: what
/// follows bytes that are not requests cannot be matched.
fn h1_sequence(plan: &Plan, early_accepted: bool, finished: bool) -> Vec<&Req> {
    let mut reqs: Vec<&Req> = Vec::new();
    if early_accepted {
        reqs.extend(&plan.early);
    }
    if finished && (plan.early_tail.is_empty() || !early_accepted) {
        reqs.extend(&plan.after);
    }
    reqs
}

/// Statuses of the HTTP/1.1 responses in `plain` to `reqs`, in order (responses to HEAD have
/// no body).
fn h1_statuses(plain: &[u8], reqs: &[&Req]) -> Vec<u16> {
    let mut out = Vec::new();
    let mut rest = plain;
    while out.len() < reqs.len() {
        let Some(end) = rest.windows(4).position(|w| w == b"\r\n\r\n") else {
            return out;
        };
        let head = String::from_utf8_lossy(&rest[..end]).into_owned();
        let status: u16 = head
            .get(9..12)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("not an HTTP/1.1 response: {head:?}"));
        let length = head
            .lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case("content-length")
                    .then(|| v.trim().parse::<usize>().ok())
                    .flatten()
            })
            .unwrap_or(0);
        let head_request = reqs[out.len()].method == "HEAD";
        let body = if head_request || status == 304 || status == 204 {
            0
        } else {
            length
        };
        if rest.len() < end + 4 + body {
            return out;
        }
        out.push(status);
        rest = &rest[end + 4 + body..];
    }
    out
}

/// How many streams have a response (HEADERS or RST_STREAM) so far.
fn h2_statuses_quick(plain: &[u8]) -> usize {
    let mut streams = std::collections::BTreeSet::new();
    let mut rest = plain;
    while rest.len() >= 9 {
        let len = u32::from_be_bytes([0, rest[0], rest[1], rest[2]]) as usize;
        if rest.len() < 9 + len {
            break;
        }
        let stream = u32::from_be_bytes([rest[5], rest[6], rest[7], rest[8]]) & 0x7fff_ffff;
        if matches!(rest[3], 1 | 3) {
            streams.insert(stream);
        }
        rest = &rest[9 + len..];
    }
    streams.len()
}

/// Statuses by stream, decoded by h2 (RST_STREAM: 0).
fn h2_statuses(plain: &[u8]) -> BTreeMap<u32, u16> {
    let mut out = BTreeMap::new();
    for f in super::h2::server_frames(plain, 16_384) {
        match f {
            h2::frame::Frame::Headers(h) => {
                let id = u32::from(h.stream_id());
                let (pseudo, _) = h.into_parts();
                if let Some(s) = pseudo.status {
                    out.entry(id).or_insert(s.as_u16());
                }
            }
            h2::frame::Frame::Reset(r) => {
                out.entry(u32::from(r.stream_id())).or_insert(0);
            }
            _ => {}
        }
    }
    out
}

fn check(plan: &Plan, outcome: &Outcome) {
    // The requests the server got and their statuses.
    let early = plan.early.iter().filter(|_| outcome.early_accepted);
    let after = plan.after.iter().filter(|_| outcome.finished);
    let statuses: Vec<(&Req, u16)> = if plan.h2 {
        let by_stream = h2_statuses(&outcome.plain);
        let first_after = plan.early.len();
        early
            .enumerate()
            .map(|(i, r)| (1 + 2 * i as u32, r))
            .chain(
                after
                    .enumerate()
                    .map(|(i, r)| (1 + 2 * (first_after + i) as u32, r)),
            )
            .filter_map(|(id, r)| by_stream.get(&id).map(|s| (r, *s)))
            .collect()
    } else {
        let reqs = h1_sequence(plan, outcome.early_accepted, outcome.finished);
        let statuses = h1_statuses(&outcome.plain, &reqs);
        reqs.into_iter().zip(statuses).collect()
    };
    for (req, status) in statuses {
        if status == 0 {
            continue;
        }
        let replayable = (req.in_early && !outcome.finished) || req.early_header;
        if replayable && !is_safe(req.method) {
            assert_eq!(
                status, 425,
                "{req:?} may be a replay and was served (finished: {})",
                outcome.finished
            );
        }
        if !req.in_early && !req.early_header {
            assert_ne!(
                status, 425,
                "{req:?}, sent after the handshake, refused as early"
            );
        }
        if is_safe(req.method) {
            assert_ne!(status, 425, "{req:?}: a safe method refused as early");
        }
    }
}

pub(super) fn seeds() -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for settings in [0u8, 1, 2, 3, 6, 8 | 2, 16 | 3, 24] {
        let mut s = Seed::default();
        s.byte(settings);
        // Early: GET /, POST /x with a body, PUT with Early-Data: 1.
        s.byte(3).byte(0).byte(0x80 | 8 | 3).byte(10).byte(0x40 | 4);
        if settings & 4 != 0 {
            s.short(b"GET / HTTP/1.1\r\nhost: beta.test\r\n\r\n");
        }
        // After: DELETE, HEAD.
        s.byte(2).byte(5).byte(1);
        match (settings >> 3) & 7 {
            1 => {
                s.u16(300).byte(0x10);
            }
            2 => {
                s.u16(200);
            }
            3 => {
                s.short(&[23, 3, 3, 0, 1, 0]);
            }
            _ => {}
        }
        out.push(s.take());
    }
    out
}
