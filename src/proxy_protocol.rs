//! The PROXY protocol (HAProxy's `proxy-protocol.txt`, versions 1 and 2): the line or block an
//! L4 load balancer puts in front of a connection's first byte to say whom it is from.
//!
//! * [`read_header`] reads one from a socket we accepted, taking exactly the header's bytes off
//!   the socket (what follows stays there for the TLS handshake or HTTP parser), bounded in
//!   size: 107 bytes for version 1, [`MAX_V2`] for version 2. Callers bound it in time.
//! * [`encode`] writes one for a backend we connect to.
//!
//! Parsing and building the header bytes is the `ppp` crate's; this module only moves them
//! to and from sockets. TLVs are neither sent nor interpreted (they are skipped when read).

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use tokio::net::TcpStream;

/// Longest version-1 header, CRLF included (the protocol's own limit).
pub const MAX_V1: usize = 107;

/// Longest version-2 header we accept, TLVs included: the 16-byte fixed part plus 4080 bytes
/// (an IPv6 address block is 36; the rest is room for TLVs such as a TLS client certificate's
/// details, which real load balancers keep well below this).
pub const MAX_V2: usize = 4096;

/// The 12-byte signature that starts a version-2 header.
const V2_SIGNATURE: &[u8] = ppp::v2::PROTOCOL_PREFIX;

/// What starts a version-1 header.
const V1_PREFIX: &[u8] = b"PROXY ";

/// How long to wait before looking again at a connection whose first bytes could still turn
/// into a header or into something else (fewer than 16 bytes so far, all matching a header's
/// start). Load balancers send the whole header in one segment, so this is rare.
const PARTIAL_RETRY: Duration = Duration::from_millis(5);

/// Protocol version, for headers we send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    /// The text line: `PROXY TCP4 1.2.3.4 5.6.7.8 1234 443\r\n`.
    V1,
    /// The binary block.
    V2,
}

impl Version {
    /// The config spelling: `"v1"` or `"v2"`.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "v1" => Some(Version::V1),
            "v2" => Some(Version::V2),
            _ => None,
        }
    }
}

impl std::fmt::Display for Version {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Version::V1 => "v1",
            Version::V2 => "v2",
        })
    }
}

/// A header read from a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub version: Version,
    /// The client's address; `None` for `PROXY UNKNOWN`, v2 `LOCAL` (a health check by the
    /// balancer itself) or a non-IP address family: the connection's own peer stands.
    pub source: Option<SocketAddr>,
    /// The address the client connected to, when given.
    pub destination: Option<SocketAddr>,
}

/// Why no usable header could be read.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("the connection closed before a complete PROXY protocol header")]
    Closed,
    #[error("no PROXY protocol header (the first bytes are not one)")]
    Missing,
    #[error("PROXY protocol v1 header longer than {MAX_V1} bytes")]
    V1TooLong,
    #[error("PROXY protocol v2 header of {0} bytes, more than the {MAX_V2} accepted")]
    V2TooLong(usize),
    #[error("bad PROXY protocol v1 header: {0}")]
    V1(#[source] ppp::v1::BinaryParseError),
    #[error("bad PROXY protocol v2 header: {0}")]
    V2(#[source] ppp::v2::ParseError),
    #[error("reading the PROXY protocol header: {0}")]
    Io(#[from] io::Error),
}

/// Reads a PROXY protocol header (either version) from the start of `tcp`, consuming exactly
/// its bytes.
///
/// `Ok(None)`: the connection does not start with a header (nothing was consumed), which is
/// an error instead when `required`. Waits as long as the peer takes: bound it with a
/// timeout.
pub async fn read_header(tcp: &TcpStream, required: bool) -> Result<Option<Header>, ProxyError> {
    // Which version, from a peek: nothing is consumed until the bytes are known to be a
    // header, so that a connection without one is served as if it had never been looked at.
    let mut first = [0u8; 16];
    let v2 = loop {
        let n = tcp.peek(&mut first).await?;
        if n == 0 {
            return Err(ProxyError::Closed);
        }
        let seen = &first[..n];
        let maybe_v1 = V1_PREFIX.starts_with(&seen[..n.min(V1_PREFIX.len())]);
        let maybe_v2 = V2_SIGNATURE.starts_with(&seen[..n.min(V2_SIGNATURE.len())]);
        match (maybe_v1, maybe_v2) {
            (false, false) if required => return Err(ProxyError::Missing),
            (false, false) => return Ok(None),
            (true, _) if n >= V1_PREFIX.len() => break false,
            (_, true) if n >= 16 => break true,
            // A prefix of a header so far: peeking again at once would see the same bytes.
            _ => tokio::time::sleep(PARTIAL_RETRY).await,
        }
    };
    if v2 {
        read_v2(tcp).await.map(Some)
    } else {
        read_v1(tcp).await.map(Some)
    }
}

async fn read_v2(tcp: &TcpStream) -> Result<Header, ProxyError> {
    let mut fixed = [0u8; 16];
    read_exact(tcp, &mut fixed).await?;
    let len = 16 + usize::from(u16::from_be_bytes([fixed[14], fixed[15]]));
    if len > MAX_V2 {
        return Err(ProxyError::V2TooLong(len));
    }
    let mut all = vec![0u8; len];
    all[..16].copy_from_slice(&fixed);
    read_exact(tcp, &mut all[16..]).await?;
    let header = ppp::v2::Header::try_from(&all[..]).map_err(ProxyError::V2)?;
    let (source, destination) = match (header.command, header.addresses) {
        (ppp::v2::Command::Local, _) => (None, None),
        (_, ppp::v2::Addresses::IPv4(a)) => (
            Some(SocketAddr::from((a.source_address, a.source_port))),
            Some(SocketAddr::from((
                a.destination_address,
                a.destination_port,
            ))),
        ),
        (_, ppp::v2::Addresses::IPv6(a)) => (
            Some(SocketAddr::from((a.source_address, a.source_port))),
            Some(SocketAddr::from((
                a.destination_address,
                a.destination_port,
            ))),
        ),
        _ => (None, None),
    };
    Ok(Header {
        version: Version::V2,
        source,
        destination,
    })
}

async fn read_v1(tcp: &TcpStream) -> Result<Header, ProxyError> {
    let mut line = [0u8; MAX_V1];
    let mut have = 0;
    loop {
        if have == MAX_V1 {
            return Err(ProxyError::V1TooLong);
        }
        // Peek, then take up to the line's end: the bytes after it are not ours.
        let n = tcp.peek(&mut line[have..]).await?;
        if n == 0 {
            return Err(ProxyError::Closed);
        }
        let end = line[have..have + n].iter().position(|&b| b == b'\n');
        let take = end.map_or(n, |p| p + 1);
        read_exact(tcp, &mut line[have..have + take]).await?;
        have += take;
        if end.is_some() {
            break;
        }
    }
    let header = ppp::v1::Header::try_from(&line[..have]).map_err(ProxyError::V1)?;
    let (source, destination) = match header.addresses {
        ppp::v1::Addresses::Tcp4(a) => (
            Some(SocketAddr::from((a.source_address, a.source_port))),
            Some(SocketAddr::from((
                a.destination_address,
                a.destination_port,
            ))),
        ),
        ppp::v1::Addresses::Tcp6(a) => (
            Some(SocketAddr::from((a.source_address, a.source_port))),
            Some(SocketAddr::from((
                a.destination_address,
                a.destination_port,
            ))),
        ),
        ppp::v1::Addresses::Unknown => (None, None),
    };
    Ok(Header {
        version: Version::V1,
        source,
        destination,
    })
}

/// `read_exact` that reports a short read as [`ProxyError::Closed`].
async fn read_exact(tcp: &TcpStream, buf: &mut [u8]) -> Result<(), ProxyError> {
    // Through `try_read` on the shared socket: a read never takes more than `buf` holds.
    let mut at = 0;
    while at < buf.len() {
        tcp.readable().await?;
        match tcp.try_read(&mut buf[at..]) {
            Ok(0) => return Err(ProxyError::Closed),
            Ok(n) => at += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// The header announcing a connection from `source` to `destination` (the address the client
/// reached us at). Mixed families are sent as IPv6 (IPv4-mapped), which both versions carry.
pub fn encode(version: Version, source: SocketAddr, destination: SocketAddr) -> Vec<u8> {
    let (source, destination) = same_family(source, destination);
    match version {
        Version::V1 => ppp::v1::Addresses::from((source, destination))
            .to_string()
            .into_bytes(),
        Version::V2 => build_v2(
            ppp::v2::Command::Proxy,
            ppp::v2::Addresses::from((source, destination)),
        ),
    }
}

/// A header that announces no client: `PROXY UNKNOWN` (v1) or `LOCAL` (v2), for connections
/// the proxy makes on its own behalf (health checks).
pub fn encode_local(version: Version) -> Vec<u8> {
    match version {
        Version::V1 => ppp::v1::Addresses::Unknown.to_string().into_bytes(),
        Version::V2 => build_v2(ppp::v2::Command::Local, ppp::v2::Addresses::Unspecified),
    }
}

fn build_v2(command: ppp::v2::Command, addresses: ppp::v2::Addresses) -> Vec<u8> {
    let protocol = match addresses {
        ppp::v2::Addresses::Unspecified => ppp::v2::Protocol::Unspecified,
        _ => ppp::v2::Protocol::Stream,
    };
    // Writing into a Vec cannot fail.
    ppp::v2::Builder::with_addresses(ppp::v2::Version::Two | command, protocol, addresses)
        .build()
        .unwrap_or_default()
}

fn same_family(a: SocketAddr, b: SocketAddr) -> (SocketAddr, SocketAddr) {
    if a.is_ipv4() == b.is_ipv4() {
        return (a, b);
    }
    let v6 = |s: SocketAddr| match s.ip() {
        IpAddr::V4(ip) => SocketAddr::from((ip.to_ipv6_mapped(), s.port())),
        IpAddr::V6(_) => s,
    };
    (v6(a), v6(b))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn pair() -> (TcpStream, TcpStream) {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let c = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let (s, _) = l.accept().await.unwrap();
        (c, s)
    }

    /// The header's bytes are taken and the rest is left, both versions, in one or several
    /// segments.
    #[tokio::test]
    async fn reads_exactly_the_header() {
        let src: SocketAddr = "203.0.113.7:51000".parse().unwrap();
        let dst: SocketAddr = "192.0.2.1:443".parse().unwrap();
        for version in [Version::V1, Version::V2] {
            for split in [false, true] {
                let (mut c, s) = pair().await;
                let mut bytes = encode(version, src, dst);
                bytes.extend_from_slice(b"\x16\x03\x01rest");
                if split {
                    c.write_all(&bytes[..3]).await.unwrap();
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                c.write_all(&bytes[if split { 3 } else { 0 }..])
                    .await
                    .unwrap();
                let h = read_header(&s, true).await.unwrap().unwrap();
                assert_eq!(h.version, version);
                assert_eq!(h.source, Some(src));
                assert_eq!(h.destination, Some(dst));
                let mut rest = [0u8; 7];
                let mut s = s;
                s.read_exact(&mut rest).await.unwrap();
                assert_eq!(&rest, b"\x16\x03\x01rest");
            }
        }
    }

    #[tokio::test]
    async fn ipv6_local_and_unknown() {
        let src: SocketAddr = "[2001:db8::7]:4000".parse().unwrap();
        let dst: SocketAddr = "[2001:db8::1]:993".parse().unwrap();
        for version in [Version::V1, Version::V2] {
            let (mut c, s) = pair().await;
            c.write_all(&encode(version, src, dst)).await.unwrap();
            let h = read_header(&s, false).await.unwrap().unwrap();
            assert_eq!((h.source, h.destination), (Some(src), Some(dst)));
            let (mut c, s) = pair().await;
            c.write_all(&encode_local(version)).await.unwrap();
            let h = read_header(&s, false).await.unwrap().unwrap();
            assert_eq!((h.version, h.source), (version, None));
        }
        // Mixed families go out as IPv6 with the IPv4 address mapped.
        let line = encode(Version::V1, "10.0.0.1:1".parse().unwrap(), dst);
        assert_eq!(
            line,
            b"PROXY TCP6 ::ffff:10.0.0.1 2001:db8::1 1 993\r\n".to_vec()
        );
    }

    /// Without a header, nothing is consumed (optional) or the connection is refused
    /// (required); `PUT` and `PRI` start like `PROXY` and are told apart.
    #[tokio::test]
    async fn no_header() {
        for start in [
            &b"\x16\x03\x01\x02\x00"[..],
            b"PUT / HTTP/1.1\r\n",
            b"PRI * HTTP/2.0\r\n",
        ] {
            let (mut c, s) = pair().await;
            c.write_all(start).await.unwrap();
            assert!(read_header(&s, false).await.unwrap().is_none());
            let mut back = vec![0u8; start.len()];
            let mut s = s;
            s.read_exact(&mut back).await.unwrap();
            assert_eq!(back, start);
            let (mut c, s) = pair().await;
            c.write_all(start).await.unwrap();
            let e = read_header(&s, true).await.unwrap_err();
            assert!(matches!(e, ProxyError::Missing), "{e}");
        }
    }

    #[tokio::test]
    async fn bad_headers() {
        let cases: [(&[u8], &str); 4] = [
            (b"PROXY TCP4 1.2.3.999 5.6.7.8 1 2\r\n", "bad PROXY protocol v1 header"),
            (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 and far more text than fits in one header line, which is one hundred and seven bytes\r\n", "longer than 107"),
            (b"PROXY TCP4 1.2", "closed before"),
            (b"\r\n\r\n\0\r\nQUIT\n\x21\x11\xff\xff", "more than the 4096"),
        ];
        for (bytes, want) in cases {
            let (mut c, s) = pair().await;
            c.write_all(bytes).await.unwrap();
            c.shutdown().await.unwrap();
            let e = read_header(&s, true).await.unwrap_err().to_string();
            assert!(e.contains(want), "{e:?} should say {want:?}");
        }
    }
}
