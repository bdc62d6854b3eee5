//! The ClientHello read before the handshake ([`crate::server::conn`]: rustls's `Acceptor`
//! fed by `read_hello_step`, then `hello_for` picks the site), and the handshake that follows
//! with the chosen site's configuration, over bytes in memory.
//!
//! Input: one byte of settings (which `unknown_sni` policy, how the bytes arrive: in one piece
//! or in small reads), then what the client sends. Promises checked: nothing panics; the
//! choice follows the configuration (a listed name gets its site; an unlisted one the default
//! site or nothing, as configured; no SNI the default site; `acme-tls/1` only the pending
//! challenge of its name); whatever the server writes is well-formed TLS records; a
//! connection that failed writes nothing more after its alert.

use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;

use rustls::pki_types::ServerName;
use rustls::server::Acceptor;

use super::fixture::{client_config, tls};
use super::{Input, Seed};
use crate::server::conn::{hello_for, read_hello_step, HelloRead};
use crate::tls::names::normalize;

/// The client's bytes, given out `chunk` at a time; what the server writes is kept.
struct Wire<'a> {
    incoming: &'a [u8],
    chunk: usize,
    out: Vec<u8>,
}

impl Read for Wire<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.incoming.is_empty() {
            return Ok(0);
        }
        let n = buf.len().min(self.chunk).min(self.incoming.len());
        buf[..n].copy_from_slice(&self.incoming[..n]);
        self.incoming = &self.incoming[n..];
        Ok(n)
    }
}

impl Write for Wire<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.out.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

const PEER: SocketAddr = SocketAddr::new(std::net::IpAddr::V4(Ipv4Addr::LOCALHOST), 1);

pub fn client_hello(data: &[u8]) {
    let mut input = Input::new(data);
    let settings = input.byte();
    let tls = tls();
    let state = &tls.states[usize::from(settings & 1)];
    let front = &state.tls;
    let chunk = match (settings >> 1) & 3 {
        0 => usize::MAX,
        1 => 1,
        2 => 5,
        _ => 100,
    };
    let mut wire = Wire {
        incoming: input.rest(),
        chunk,
        out: Vec::new(),
    };
    let mut acceptor = Acceptor::default();
    let accepted = loop {
        match read_hello_step(&mut acceptor, &mut wire, PEER) {
            Ok(HelloRead::Complete(accepted)) => break accepted,
            Ok(HelloRead::More) => continue,
            Ok(HelloRead::Gone | HelloRead::Refused(_)) => {
                check_records(&wire.out);
                return;
            }
            Err(e) => panic!("reading from memory failed: {e}"),
        }
    };
    assert!(
        wire.out.is_empty(),
        "nothing is written before the ClientHello is complete"
    );
    // What a reader of the ClientHello sees, independently of `hello_for`.
    let hello = accepted.client_hello();
    let sni = hello.server_name().map(str::to_owned);
    let acme_alpn = hello
        .alpn()
        .is_some_and(|mut p| p.any(|p| p == crate::acme::ACME_TLS_ALPN));
    let chosen = hello_for(accepted, front, &state.tls_alpn);
    assert_eq!(chosen.sni, sni);
    let listed = sni.as_deref().and_then(|n| match &*normalize(n) {
        "alpha.test" | "www.alpha.test" => Some(super::fixture::ALPHA),
        "beta.test" => Some(super::fixture::BETA),
        _ => None,
    });
    let expected_site = match (&sni, listed) {
        (None, _) => Some(front.default_site),
        (Some(_), Some(site)) => Some(site),
        (Some(_), None) => match front.unknown_sni {
            crate::config::model::UnknownSni::DefaultSite => Some(front.default_site),
            crate::config::model::UnknownSni::Reject => None,
        },
    };
    assert_eq!(chosen.site, expected_site, "site for SNI {sni:?}");
    assert_eq!(chosen.listed, sni.is_none() || listed.is_some());
    match &chosen.acme {
        None => assert!(!acme_alpn),
        Some(challenge) => {
            assert!(acme_alpn);
            let pending = sni.as_deref().is_some_and(|n| normalize(n) == "alpha.test");
            assert_eq!(challenge.is_some(), pending, "challenge for {sni:?}");
        }
    }
    let config = match (&chosen.acme, chosen.site) {
        (Some(Some(challenge)), _) => challenge.clone(),
        (Some(None), _) | (None, None) => return,
        (None, Some(site)) => front.configs[site].clone(),
    };
    handshake(*chosen.accepted, config, &mut wire);
}

/// The server's side of the handshake after the ClientHello, until the input runs out or the
/// connection fails.
fn handshake(
    accepted: rustls::server::Accepted,
    config: Arc<rustls::ServerConfig>,
    wire: &mut Wire<'_>,
) {
    let mut conn = match accepted.into_connection(config) {
        Ok(conn) => conn,
        Err((_, mut alert)) => {
            let _ = alert.write(wire);
            check_records(&wire.out);
            return;
        }
    };
    let mut failed = false;
    for _ in 0..10_000 {
        while conn.wants_write() {
            conn.write_tls(wire).expect("writing to memory");
        }
        if failed {
            break;
        }
        match conn.read_tls(wire) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) => panic!("reading from memory failed: {e}"),
        }
        match conn.process_new_packets() {
            Ok(state) => {
                let mut plain = Vec::new();
                let _ = conn.reader().read_to_end(&mut plain);
                if state.peer_has_closed() {
                    break;
                }
            }
            Err(_) => failed = true,
        }
    }
    let before = wire.out.len();
    if failed {
        // Nothing more after the alert.
        let _ = conn.write_tls(wire);
        assert_eq!(
            wire.out.len(),
            before,
            "records written after a fatal alert"
        );
    }
    check_records(&wire.out);
}

/// `out` is a sequence of whole TLS records (RFC 8446 §5.1), and nothing follows a plaintext
/// fatal alert.
fn check_records(out: &[u8]) {
    let mut rest = out;
    while !rest.is_empty() {
        assert!(rest.len() >= 5, "a truncated record header: {rest:02x?}");
        let ty = rest[0];
        let version = u16::from_be_bytes([rest[1], rest[2]]);
        let len = u16::from_be_bytes([rest[3], rest[4]]) as usize;
        assert!((20..=23).contains(&ty), "record type {ty}");
        assert!(
            version == 0x0303 || version == 0x0301,
            "record version {version:#06x}"
        );
        assert!(len <= 16_384 + 256, "record of {len} bytes");
        assert!(rest.len() >= 5 + len, "a truncated record");
        let fatal_alert = ty == 21 && len == 2 && rest[5] == 2;
        rest = &rest[5 + len..];
        assert!(
            !fatal_alert || rest.is_empty(),
            "records after a fatal alert"
        );
    }
}

/// Real ClientHellos (and the client's first flight): every combination of SNI, ALPN and
/// protocol versions the fixture treats differently.
pub(super) fn seeds() -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let alpns: [&[&[u8]]; 4] = [&[], &[b"h2", b"http/1.1"], &[b"http/1.1"], &[b"acme-tls/1"]];
    let names = [
        "alpha.test",
        "beta.test",
        "WWW.Alpha.Test",
        "unknown.test",
        "127.0.0.1",
    ];
    for (i, name) in names.iter().enumerate() {
        for (j, alpn) in alpns.iter().enumerate() {
            let tls13 = (i + j) % 2 == 0;
            let cfg = Arc::new(client_config(alpn, tls13, false));
            let server_name = ServerName::try_from(name.to_string()).expect("name");
            let Ok(mut conn) = rustls::ClientConnection::new(cfg, server_name) else {
                continue;
            };
            let mut flight = Vec::new();
            while conn.wants_write() {
                conn.write_tls(&mut flight).expect("to memory");
            }
            let settings = ((i + j) % 8) as u8;
            let mut s = Seed::default();
            s.byte(settings).raw(&flight);
            out.push(s.take());
        }
    }
    // No SNI at all.
    let mut cfg = client_config(&[b"h2"], false, false);
    cfg.enable_sni = false;
    let mut conn =
        rustls::ClientConnection::new(Arc::new(cfg), ServerName::try_from("alpha.test").unwrap())
            .expect("client");
    let mut flight = Vec::new();
    while conn.wants_write() {
        conn.write_tls(&mut flight).expect("to memory");
    }
    out.push(Seed::default().byte(0).raw(&flight).take());
    // A ClientHello followed by garbage records.
    let mut with_garbage = out[0].clone();
    with_garbage.extend_from_slice(&[22, 3, 3, 0, 4, 1, 2, 3, 4, 23, 3, 3, 0, 1, 0]);
    out.push(with_garbage);
    out
}
