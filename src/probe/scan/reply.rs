//! One question: a fresh TCP connection, one hand-built ClientHello, and the server's first
//! answer parsed with tls-parser (a ServerHello, a HelloRetryRequest, an alert, or something
//! that is not TLS). Reading stops as soon as that answer is complete.

use std::net::SocketAddr;
use std::time::Duration;

use tls_parser::{
    parse_tls_message_alert, parse_tls_message_handshake, parse_tls_raw_record,
    parse_tls_server_hello_extensions, TlsExtension, TlsMessage, TlsMessageHandshake,
    TlsRecordType,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::hello::ClientHello;

/// `ServerHello.random` of a HelloRetryRequest: SHA-256("HelloRetryRequest") (RFC 8446
/// section 4.1.3).
const HELLO_RETRY_RANDOM: [u8; 32] = [
    0xcf, 0x21, 0xad, 0x74, 0xe5, 0x9a, 0x61, 0x11, 0xbe, 0x1d, 0x8c, 0x02, 0x1e, 0x65, 0xb8, 0x91,
    0xc2, 0xa2, 0x11, 0x16, 0x7a, 0xbb, 0x8c, 0x5e, 0x07, 0x9e, 0x09, 0xe2, 0xc8, 0xa8, 0x33, 0x9c,
];

/// More than any ServerHello needs (it comes first, in the first record or two).
const MAX_READ: usize = 64 * 1024;

/// What the server chose.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ServerHello {
    /// The negotiated version (`supported_versions` when present, else `legacy_version`).
    pub version: u16,
    pub suite: u16,
    /// TLS 1.3: the key share's group (ServerHello) or the group asked for (HelloRetryRequest).
    pub group: Option<u16>,
    /// A HelloRetryRequest: the server wants another key share.
    pub retry: bool,
}

/// The server's answer to one ClientHello.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Answer {
    Hello(ServerHello),
    /// A TLS alert (its description code).
    Alert(u8),
    /// The connection closed (or was reset) without an answer.
    Closed,
    /// An HTTP response: plain HTTP on this port.
    PlainHttp,
    /// Something that is not TLS, or a TLS message other than a ServerHello first.
    NotTls(String),
    /// No answer within the timeout.
    TimedOut,
    /// The TCP connection could not be made.
    NoConnection(String),
}

impl Answer {
    /// The server accepted the hello (a ServerHello or a HelloRetryRequest).
    pub(crate) fn hello(&self) -> Option<ServerHello> {
        match self {
            Answer::Hello(h) => Some(*h),
            _ => None,
        }
    }

    /// The question went unanswered, so it says nothing about the server's TLS settings.
    pub(crate) fn untested(&self) -> bool {
        matches!(self, Answer::TimedOut | Answer::NoConnection(_))
    }

    /// In words, for facts and summaries (`alert protocol_version`).
    pub(crate) fn describe(&self) -> String {
        match self {
            Answer::Hello(h) if h.retry => "accepted (HelloRetryRequest)".into(),
            Answer::Hello(_) => "accepted".into(),
            Answer::Alert(code) => format!("refused: alert {}", alert_name(*code)),
            Answer::Closed => "refused: connection closed".into(),
            Answer::PlainHttp => "not TLS: plain HTTP answered".into(),
            Answer::NotTls(what) => format!("not TLS: {what}"),
            Answer::TimedOut => "not tested: no answer in time".into(),
            Answer::NoConnection(e) => format!("not tested: {e}"),
        }
    }
}

/// Asks one question: connects to `addr`, sends `hello`, reads the first answer; all within
/// `timeout`.
pub(crate) async fn ask(addr: SocketAddr, hello: &ClientHello<'_>, timeout: Duration) -> Answer {
    let bytes = hello.to_bytes();
    let exchange = async {
        let mut tcp = match tokio::net::TcpStream::connect(addr).await {
            Ok(t) => t,
            Err(e) => return Answer::NoConnection(format!("{addr}: {e}")),
        };
        let _ = tcp.set_nodelay(true);
        if tcp.write_all(&bytes).await.is_err() {
            return Answer::Closed;
        }
        read_answer(&mut tcp).await
    };
    tokio::time::timeout(timeout, exchange)
        .await
        .unwrap_or(Answer::TimedOut)
}

/// Reads until the first answer is complete (or the peer closes).
async fn read_answer(tcp: &mut tokio::net::TcpStream) -> Answer {
    let mut buf = Vec::with_capacity(4096);
    let mut chunk = [0u8; 4096];
    loop {
        match tcp.read(&mut chunk).await {
            Ok(0) | Err(_) => {
                // What came before the close may still be an answer (an alert, then FIN).
                return match parse(&buf) {
                    Some(a) => a,
                    None if buf.is_empty() => Answer::Closed,
                    None => Answer::NotTls("the answer was cut short".into()),
                };
            }
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
        if let Some(answer) = parse(&buf) {
            return answer;
        }
        if buf.len() > MAX_READ {
            return Answer::NotTls("no ServerHello in the first 64 KiB".into());
        }
    }
}

/// The answer in `buf`, or `None` while it is incomplete.
pub(crate) fn parse(buf: &[u8]) -> Option<Answer> {
    // An HTTP server answers a ClientHello with a 400 response: its status line starts so.
    if buf.len() >= 5 && buf.starts_with(b"HTTP/") {
        return Some(Answer::PlainHttp);
    }
    let mut rest = buf;
    // The handshake messages, which may span records (or share one).
    let mut handshake = Vec::new();
    loop {
        // A record starts with a content type (20 to 24) and a major version of 3; checked
        // before the length is trusted, so that other protocols are named at once instead of
        // being waited on for a "record" of their text's length.
        if (!rest.is_empty() && !(20..=24).contains(&rest[0])) || (rest.len() >= 2 && rest[1] != 3)
        {
            return Some(Answer::NotTls(not_tls(buf)));
        }
        let record = match parse_tls_raw_record(rest) {
            Ok((r, record)) => {
                rest = r;
                record
            }
            Err(tls_parser::Err::Incomplete(_)) => return None,
            Err(_) => return Some(Answer::NotTls(not_tls(buf))),
        };
        match record.hdr.record_type {
            TlsRecordType::Alert => {
                return Some(match parse_tls_message_alert(record.data) {
                    Ok((_, TlsMessage::Alert(a))) => Answer::Alert(a.code.0),
                    _ => Answer::NotTls("a malformed alert".into()),
                });
            }
            TlsRecordType::Handshake => {
                handshake.extend_from_slice(record.data);
                if let Some(a) = first_handshake_message(&handshake) {
                    return Some(a);
                }
            }
            // A TLS 1.3 server may send change_cipher_spec early (middlebox compatibility).
            TlsRecordType::ChangeCipherSpec => {}
            other => {
                return Some(Answer::NotTls(format!(
                    "a {other:?} record before the ServerHello"
                )))
            }
        }
    }
}

/// The first handshake message, once complete: it must be a ServerHello (or a
/// HelloRetryRequest, which is written as one).
fn first_handshake_message(hs: &[u8]) -> Option<Answer> {
    if hs.len() < 4 {
        return None;
    }
    let len = u32::from_be_bytes([0, hs[1], hs[2], hs[3]]) as usize;
    if hs.len() < 4 + len {
        return None;
    }
    let sh = match parse_tls_message_handshake(&hs[..4 + len]) {
        Ok((_, TlsMessage::Handshake(TlsMessageHandshake::ServerHello(sh)))) => sh,
        Ok((_, TlsMessage::Handshake(other))) => {
            return Some(Answer::NotTls(format!(
                "{} instead of a ServerHello",
                message_name(&other)
            )))
        }
        _ => return Some(Answer::NotTls("a malformed ServerHello".into())),
    };
    let mut hello = ServerHello {
        version: sh.version.0,
        suite: sh.cipher.0,
        group: None,
        retry: sh.random == HELLO_RETRY_RANDOM,
    };
    let exts = match sh.ext.map(parse_tls_server_hello_extensions) {
        None => Vec::new(),
        Some(Ok((_, exts))) => exts,
        Some(Err(_)) => return Some(Answer::NotTls("malformed ServerHello extensions".into())),
    };
    for e in exts {
        match e {
            TlsExtension::SupportedVersions(v) => {
                if let Some(v) = v.first() {
                    hello.version = v.0;
                }
            }
            // ServerHello: `KeyShareEntry server_share` (group, then the key); HelloRetryRequest:
            // `NamedGroup selected_group`. Both start with the group.
            TlsExtension::KeyShare(k) if k.len() >= 2 => {
                hello.group = Some(u16::from_be_bytes([k[0], k[1]]));
            }
            _ => {}
        }
    }
    Some(Answer::Hello(hello))
}

/// What came instead of TLS, for the report.
fn not_tls(buf: &[u8]) -> String {
    let head: String = buf
        .iter()
        .take(16)
        .map(|&b| {
            if b.is_ascii_graphic() || b == b' ' {
                b as char
            } else {
                '.'
            }
        })
        .collect();
    format!("the server answered {head:?}")
}

fn message_name(m: &TlsMessageHandshake<'_>) -> &'static str {
    match m {
        TlsMessageHandshake::HelloRequest => "a HelloRequest",
        TlsMessageHandshake::ClientHello(_) => "a ClientHello",
        TlsMessageHandshake::Certificate(_) => "a Certificate",
        TlsMessageHandshake::ServerKeyExchange(_) => "a ServerKeyExchange",
        TlsMessageHandshake::ServerDone(_) => "a ServerHelloDone",
        _ => "another handshake message",
    }
}

/// An alert's name as the RFCs write it (`protocol_version`).
pub(crate) fn alert_name(code: u8) -> String {
    let name = match code {
        0 => "close_notify",
        10 => "unexpected_message",
        20 => "bad_record_mac",
        22 => "record_overflow",
        40 => "handshake_failure",
        42 => "bad_certificate",
        47 => "illegal_parameter",
        48 => "unknown_ca",
        50 => "decode_error",
        51 => "decrypt_error",
        70 => "protocol_version",
        71 => "insufficient_security",
        80 => "internal_error",
        86 => "inappropriate_fallback",
        90 => "user_canceled",
        109 => "missing_extension",
        110 => "unsupported_extension",
        112 => "unrecognized_name",
        120 => "no_application_protocol",
        _ => return format!("{code}"),
    };
    name.to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_read_from_records() {
        // A fatal protocol_version alert.
        assert_eq!(parse(&[21, 3, 3, 0, 2, 2, 70]), Some(Answer::Alert(70)));
        // Incomplete: more to read.
        assert_eq!(parse(&[21, 3, 3, 0, 2, 2]), None);
        assert_eq!(
            parse(b"HTTP/1.1 400 Bad Request\r\n"),
            Some(Answer::PlainHttp)
        );
        assert!(matches!(
            parse(b"SSH-2.0-OpenSSH_9.2"),
            Some(Answer::NotTls(_))
        ));

        // A TLS 1.3 HelloRetryRequest selecting X25519MLKEM768, split over two records.
        let mut body = vec![3, 3];
        body.extend_from_slice(&HELLO_RETRY_RANDOM);
        body.push(0); // session id
        body.extend_from_slice(&[0x13, 0x01, 0]); // suite, compression
        let exts = [0, 43, 0, 2, 3, 4, 0, 51, 0, 2, 0x11, 0xec];
        body.extend_from_slice(&(exts.len() as u16).to_be_bytes());
        body.extend_from_slice(&exts);
        let mut msg = vec![2, 0, 0, body.len() as u8];
        msg.extend_from_slice(&body);
        let (a, b) = msg.split_at(10);
        let mut wire = vec![22, 3, 3, 0, a.len() as u8];
        wire.extend_from_slice(a);
        assert_eq!(parse(&wire), None);
        wire.extend_from_slice(&[22, 3, 3, 0, b.len() as u8]);
        wire.extend_from_slice(b);
        assert_eq!(
            parse(&wire),
            Some(Answer::Hello(ServerHello {
                version: 0x0304,
                suite: 0x1301,
                group: Some(0x11ec),
                retry: true
            }))
        );
    }
}
