//! Binding listening sockets, with errors that say what to do.

use std::io;
use std::net::{SocketAddr, TcpListener};

use socket2::{Domain, Protocol, Socket, Type};

/// Binds `count` TCP listeners on one address, one per worker (`SO_REUSEPORT` when more than
/// one, so the kernel spreads new connections over the workers' own accept queues instead of
/// waking every worker for each connection on one shared socket).
///
/// `SO_REUSEPORT` would also let a second server of the same user join the group silently, so
/// the address is first claimed by a plain bind, which fails with "in use" if anyone listens
/// there, and released just before the group binds.
pub fn bind_group(
    addr: SocketAddr,
    what: &str,
    count: usize,
) -> Result<Vec<TcpListener>, BindError> {
    let first = bind_one(addr, what, false)?;
    if count <= 1 {
        return Ok(vec![first.into()]);
    }
    // the real port when 0 was asked for
    let addr = first
        .local_addr()
        .ok()
        .and_then(|a| a.as_socket())
        .unwrap_or(addr);
    drop(first);
    (0..count)
        .map(|_| bind_one(addr, what, true).map(TcpListener::from))
        .collect()
}

/// Tests whether `addr` could be listened on now, as [`bind_group`] would (`SO_REUSEADDR`,
/// IPv6 v6-only), for `portcullis check`: the socket is bound and dropped without listening.
/// Bound-only sockets with `SO_REUSEADDR` may share an address, so a probe never stands in the
/// way of a server starting at the same moment, while a socket another process listens on
/// makes the bind fail with "in use".
pub fn probe(addr: SocketAddr, what: &str) -> Result<(), BindError> {
    let socket = new_socket(addr, what, false)?;
    socket
        .bind(&addr.into())
        .map_err(|e| BindError::new(addr, what, e))
}

/// A TCP socket for `addr` as every listener has it: `SO_REUSEADDR` (and `SO_REUSEPORT` when
/// asked), IPv6 sockets v6-only so that IPv4 can bind separately.
fn new_socket(addr: SocketAddr, what: &str, reuse_port: bool) -> Result<Socket, BindError> {
    let wrap = |e: io::Error| BindError::new(addr, what, e);
    let socket =
        Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP)).map_err(wrap)?;
    socket.set_reuse_address(true).map_err(wrap)?;
    if reuse_port {
        socket.set_reuse_port(true).map_err(wrap)?;
    }
    if addr.is_ipv6() {
        socket.set_only_v6(true).map_err(wrap)?;
    }
    Ok(socket)
}

/// One listening socket (`SO_REUSEADDR`, `TCP_NODELAY` for the connections it accepts, IPv6
/// sockets v6-only so IPv4 can bind separately).
fn bind_one(addr: SocketAddr, what: &str, reuse_port: bool) -> Result<Socket, BindError> {
    let wrap = |e: io::Error| BindError::new(addr, what, e);
    let socket = new_socket(addr, what, reuse_port)?;
    socket.set_nonblocking(true).map_err(wrap)?;
    // Accepted sockets inherit TCP_NODELAY from the listener on Linux: one setsockopt per
    // listener instead of one per connection (a test checks the inheritance).
    socket.set_tcp_nodelay(true).map_err(wrap)?;
    socket.bind(&addr.into()).map_err(wrap)?;
    socket.listen(4096).map_err(wrap)?;
    Ok(socket)
}

/// The UDP socket buffers HTTP/3 asks for: a burst of QUIC packets at line rate must not
/// overflow the receive queue before the worker reads it (quinn's own advice; Caddy/quic-go
/// warn below 7 MiB).
pub const UDP_BUFFER: usize = 7 * 1024 * 1024;

/// Binds `count` UDP sockets on one address for HTTP/3, one per worker, with `SO_REUSEPORT`:
/// the kernel hashes each datagram's source address and port to one socket of the group, so
/// every packet of a QUIC connection reaches the worker whose endpoint holds it (the server
/// turns active connection migration off, which would change the hash). As for TCP, the
/// address is first claimed without `SO_REUSEPORT`, so another server's socket there is an
/// "in use" error, not a silent share.
///
/// Receive and send buffers are raised to [`UDP_BUFFER`] (beyond `net.core.rmem_max` /
/// `wmem_max` where the process may: `SO_RCVBUFFORCE`); the second value says when the kernel
/// granted less, for the operator.
pub fn bind_udp_group(
    addr: SocketAddr,
    count: usize,
) -> Result<(Vec<std::net::UdpSocket>, Option<String>), BindError> {
    let what = "HTTP/3 (UDP)";
    let wrap = |e: io::Error| BindError::new(addr, what, e);
    let new = |reuse_port: bool| -> Result<Socket, BindError> {
        let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))
            .map_err(wrap)?;
        if reuse_port {
            socket.set_reuse_port(true).map_err(wrap)?;
        }
        if addr.is_ipv6() {
            socket.set_only_v6(true).map_err(wrap)?;
        }
        socket.set_nonblocking(true).map_err(wrap)?;
        Ok(socket)
    };
    let claim = new(false)?;
    claim.bind(&addr.into()).map_err(wrap)?;
    let addr = claim
        .local_addr()
        .ok()
        .and_then(|a| a.as_socket())
        .unwrap_or(addr);
    drop(claim);
    let mut sockets = Vec::new();
    let mut note = None;
    for _ in 0..count.max(1) {
        let socket = new(true)?;
        let (rcv, snd) = raise_buffers(&socket);
        if note.is_none() && (rcv < UDP_BUFFER || snd < UDP_BUFFER) {
            note = Some(format!(
                "HTTP/3 on {addr}: UDP buffers are {} KiB receive / {} KiB send, below the {} KiB asked for, so bursts may drop packets; raise them with sysctl -w net.core.rmem_max={UDP_BUFFER} net.core.wmem_max={UDP_BUFFER}",
                rcv / 1024,
                snd / 1024,
                UDP_BUFFER / 1024
            ));
        }
        socket.bind(&addr.into()).map_err(wrap)?;
        sockets.push(std::net::UdpSocket::from(socket));
    }
    Ok((sockets, note))
}

/// Raises a UDP socket's buffers to [`UDP_BUFFER`] as far as allowed; returns what the kernel
/// granted (it reports twice the usable size: bookkeeping, so half is compared).
fn raise_buffers(socket: &Socket) -> (usize, usize) {
    use rustix::net::sockopt;
    if socket.recv_buffer_size().unwrap_or(0) / 2 < UDP_BUFFER
        && sockopt::set_socket_recv_buffer_size_force(socket, UDP_BUFFER).is_err()
    {
        let _ = socket.set_recv_buffer_size(UDP_BUFFER);
    }
    if socket.send_buffer_size().unwrap_or(0) / 2 < UDP_BUFFER
        && sockopt::set_socket_send_buffer_size_force(socket, UDP_BUFFER).is_err()
    {
        let _ = socket.set_send_buffer_size(UDP_BUFFER);
    }
    (
        socket.recv_buffer_size().unwrap_or(0) / 2,
        socket.send_buffer_size().unwrap_or(0) / 2,
    )
}

/// A listener that could not be bound.
#[derive(Debug)]
pub struct BindError {
    pub addr: SocketAddr,
    pub what: String,
    pub err: io::Error,
}

impl BindError {
    fn new(addr: SocketAddr, what: &str, err: io::Error) -> BindError {
        BindError {
            addr,
            what: what.to_string(),
            err,
        }
    }

    /// IPv6 is not available on this host (for skipping default `[::]` listeners).
    pub fn is_no_ipv6(&self) -> bool {
        // EAFNOSUPPORT (97), EADDRNOTAVAIL (99) on Linux.
        self.addr.is_ipv6() && matches!(self.err.raw_os_error(), Some(97) | Some(99))
    }
}

impl std::fmt::Display for BindError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (addr, what, port) = (self.addr, &self.what, self.addr.port());
        let flag = if what == "https" {
            "--https-port 8443"
        } else {
            "--http-port 8080"
        };
        match self.err.kind() {
            io::ErrorKind::PermissionDenied => write!(
                f,
                "cannot listen on {addr} ({what}): permission denied; ports below 1024 need root or the CAP_NET_BIND_SERVICE capability (sudo setcap cap_net_bind_service=+ep $(command -v portcullis)), or use an unprivileged port with {flag}"
            ),
            io::ErrorKind::AddrInUse => write!(
                f,
                "cannot listen on {addr} ({what}): port {port} is already in use by another process (see: ss -ltnp 'sport = :{port}'); stop it or choose another port with {flag}"
            ),
            io::ErrorKind::AddrNotAvailable => write!(f, "cannot listen on {addr} ({what}): this machine has no such address; use one of its addresses or 0.0.0.0 / [::]"),
            _ => write!(f, "cannot listen on {addr} ({what}): {}", self.err),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The per-connection `set_nodelay` was dropped on the strength of this inheritance.
    /// A port another socket listens on is "in use" to a probe, also through the wildcard
    /// address; a port nobody listens on is free, and probing it does not take it.
    #[test]
    fn probe_sees_listeners_and_takes_nothing() {
        let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = held.local_addr().unwrap().port();
        for ip in ["127.0.0.1", "0.0.0.0"] {
            let addr: SocketAddr = format!("{ip}:{port}").parse().unwrap();
            let e = probe(addr, "https").expect_err("a listened-on port is in use");
            assert_eq!(e.err.kind(), io::ErrorKind::AddrInUse, "{ip}: {e}");
        }
        drop(held);
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        probe(addr, "https").expect("free after the listener is gone");
        bind_group(addr, "https", 2).expect("the probe left the port free");
    }

    #[test]
    fn accepted_sockets_inherit_tcp_nodelay() {
        let l = bind_group("127.0.0.1:0".parse().unwrap(), "test", 1)
            .unwrap()
            .remove(0);
        let _c = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (a, _) = l.accept().unwrap();
        assert!(a.nodelay().unwrap());
    }
}

/// The environment variable that tells a new binary which of the sockets it was given
/// (systemd's `LISTEN_FDS` protocol: descriptors 3, 4, …) belong to which listener:
/// `KEY=I,J;KEY=K`, indexes counted from 0, keys as `server::Bound` has them
/// (`https@127.0.0.1:443#0`).
pub const INHERITED_ENV: &str = "PORTCULLIS_INHERITED";

/// Listening sockets handed over by the process that started this one (a binary upgrade), or
/// by systemd socket activation, by the address they serve. A configuration takes those it
/// names; the rest close when this is dropped.
#[derive(Default)]
pub struct Inherited {
    /// By key ([`INHERITED_ENV`]).
    keyed: Vec<(String, Vec<TcpListener>)>,
    /// By bound address (systemd socket activation).
    by_addr: Vec<(SocketAddr, Vec<TcpListener>)>,
    /// HTTP/3 UDP sockets by key (`h3@…`; binary upgrades only).
    udp: Vec<(String, Vec<std::net::UdpSocket>)>,
}

impl Inherited {
    /// Reads `LISTEN_FDS` (and [`INHERITED_ENV`]) once; later calls find nothing. Sockets
    /// passed without [`INHERITED_ENV`] (systemd) are known by their bound address.
    pub fn from_env() -> Inherited {
        static TAKEN: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
        if TAKEN.swap(true, std::sync::atomic::Ordering::Relaxed) {
            return Inherited::default();
        }
        let mut fds = listenfd::ListenFd::from_env();
        let count = fds.len();
        if count == 0 {
            return Inherited::default();
        }
        let take = |fds: &mut listenfd::ListenFd, i: usize| -> Option<TcpListener> {
            match fds.take_tcp_listener(i) {
                Ok(Some(l)) => {
                    // Not passed on to programs this one starts (DNS hooks).
                    let _ = rustix::io::fcntl_setfd(&l, rustix::io::FdFlags::CLOEXEC);
                    Some(l)
                }
                Ok(None) => None,
                Err(e) => {
                    tracing::warn!(index = i, error = %e, "ignoring a passed file descriptor that is not a TCP listening socket");
                    None
                }
            }
        };
        let mut out = Inherited::default();
        match std::env::var(INHERITED_ENV) {
            Ok(map) => {
                for entry in map.split(';').filter(|e| !e.is_empty()) {
                    let Some((key, idx)) = entry.rsplit_once('=') else {
                        continue;
                    };
                    if key.starts_with("h3@") {
                        let sockets: Vec<std::net::UdpSocket> = idx
                            .split(',')
                            .filter_map(|i| i.parse().ok())
                            .filter_map(|i| match fds.take_udp_socket(i) {
                                Ok(Some(s)) => {
                                    let _ =
                                        rustix::io::fcntl_setfd(&s, rustix::io::FdFlags::CLOEXEC);
                                    Some(s)
                                }
                                _ => None,
                            })
                            .collect();
                        if !sockets.is_empty() {
                            out.udp.push((key.to_owned(), sockets));
                        }
                        continue;
                    }
                    let sockets: Vec<TcpListener> = idx
                        .split(',')
                        .filter_map(|i| i.parse().ok())
                        .filter_map(|i| take(&mut fds, i))
                        .collect();
                    if !sockets.is_empty() {
                        out.keyed.push((key.to_owned(), sockets));
                    }
                }
            }
            Err(_) => {
                for i in 0..count {
                    let Some(l) = take(&mut fds, i) else { continue };
                    let Ok(addr) = l.local_addr() else { continue };
                    match out.by_addr.iter_mut().find(|(a, _)| *a == addr) {
                        Some((_, g)) => g.push(l),
                        None => out.by_addr.push((addr, vec![l])),
                    }
                }
            }
        }
        out
    }

    /// The UDP sockets passed for the HTTP/3 listener `key`.
    pub fn take_udp(&mut self, key: &str) -> Option<Vec<std::net::UdpSocket>> {
        let i = self.udp.iter().position(|(k, _)| k == key)?;
        Some(self.udp.swap_remove(i).1)
    }

    /// The sockets passed for the listener `key` (or, from systemd, bound to `addr`).
    pub fn take(&mut self, key: &str, addr: SocketAddr) -> Option<Vec<TcpListener>> {
        if let Some(i) = self.keyed.iter().position(|(k, _)| k == key) {
            return Some(self.keyed.swap_remove(i).1);
        }
        let i = self.by_addr.iter().position(|(a, _)| *a == addr)?;
        Some(self.by_addr.swap_remove(i).1)
    }
}
