//! TLS to the letter of RFC 8446 and RFC 5246, checked with raw bytes: each test sends records
//! built by hand (or, after a handshake, encrypted by hand with the extracted traffic keys) and
//! asserts the exact alert or answer.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_128_GCM};
use common::*;

const SITE: &str = r#"
[[site]]
name = "alpha"
hosts = ["alpha.test"]
cert = "certs/alpha.pem"
key = "certs/alpha.key"
[[site.route]]
path = "/"
respond = { body = "alpha" }
"#;

// Alert descriptions (RFC 8446 §6).
const UNEXPECTED_MESSAGE: u8 = 10;
const RECORD_OVERFLOW: u8 = 22;
const HANDSHAKE_FAILURE: u8 = 40;
const ILLEGAL_PARAMETER: u8 = 47;
const DECODE_ERROR: u8 = 50;
const PROTOCOL_VERSION: u8 = 70;
const MISSING_EXTENSION: u8 = 109;

// Groups and signature schemes.
const X25519: u16 = 0x001d;
const X25519MLKEM768: u16 = 0x11ec;
const ECDSA_P256_SHA256: u16 = 0x0403;
const RSA_PSS_SHA256: u16 = 0x0804;

/// The ServerHello.random of a HelloRetryRequest (RFC 8446 §4.1.3).
const HRR_RANDOM: [u8; 32] = [
    0xcf, 0x21, 0xad, 0x74, 0xe5, 0x9a, 0x61, 0x11, 0xbe, 0x1d, 0x8c, 0x02, 0x1e, 0x65, 0xb8, 0x91,
    0xc2, 0xa2, 0x11, 0x16, 0x7a, 0xbb, 0x8c, 0x5e, 0x07, 0x9e, 0x09, 0xe2, 0xc8, 0xa8, 0x33, 0x9c,
];

/// What a raw ClientHello offers.
#[derive(Clone)]
struct Hello {
    legacy_version: u16,
    supported_versions: Option<Vec<u16>>,
    suites: Vec<u16>,
    groups: Option<Vec<u16>>,
    /// Groups a key share is sent for (TLS 1.3); `None`: no key_share extension.
    shares: Option<Vec<u16>>,
    sigalgs: Option<Vec<u16>>,
    ec_point_formats: bool,
    /// Bytes of a padding extension (RFC 7685), to reach a given size.
    padding: usize,
}

impl Hello {
    fn tls13() -> Hello {
        Hello {
            legacy_version: 0x0303,
            supported_versions: Some(vec![0x0304]),
            suites: vec![0x1301, 0x1302, 0x1303],
            groups: Some(vec![X25519]),
            shares: Some(vec![X25519]),
            sigalgs: Some(vec![ECDSA_P256_SHA256, RSA_PSS_SHA256]),
            ec_point_formats: false,
            padding: 0,
        }
    }

    fn tls12() -> Hello {
        Hello {
            legacy_version: 0x0303,
            supported_versions: None,
            suites: vec![0xc02b, 0xc02f],
            groups: Some(vec![X25519]),
            shares: None,
            sigalgs: Some(vec![ECDSA_P256_SHA256, RSA_PSS_SHA256]),
            ec_point_formats: false,
            padding: 0,
        }
    }

    /// The handshake message (type 1 with its 3-byte length).
    fn message(&self) -> Vec<u8> {
        let mut body = Vec::new();
        body.extend(self.legacy_version.to_be_bytes());
        body.extend([0x42; 32]); // random
        body.push(32);
        body.extend([0x07; 32]); // legacy_session_id
        body.extend(((self.suites.len() * 2) as u16).to_be_bytes());
        for s in &self.suites {
            body.extend(s.to_be_bytes());
        }
        body.extend([1, 0]); // null compression
        let mut exts = Vec::new();
        ext(&mut exts, 0x0000, &server_name(ALPHA));
        if let Some(v) = &self.supported_versions {
            let mut b = vec![(v.len() * 2) as u8];
            v.iter().for_each(|v| b.extend(v.to_be_bytes()));
            ext(&mut exts, 0x002b, &b);
        }
        if let Some(g) = &self.groups {
            ext(&mut exts, 0x000a, &u16_list(g));
        }
        if let Some(s) = &self.sigalgs {
            ext(&mut exts, 0x000d, &u16_list(s));
        }
        if self.ec_point_formats {
            ext(&mut exts, 0x000b, &[1, 0]);
        }
        if let Some(shares) = &self.shares {
            let mut entries = Vec::new();
            for g in shares {
                let key = key_share(*g);
                entries.extend(g.to_be_bytes());
                entries.extend((key.len() as u16).to_be_bytes());
                entries.extend(key);
            }
            let mut b = (entries.len() as u16).to_be_bytes().to_vec();
            b.extend(entries);
            ext(&mut exts, 0x0033, &b);
        }
        // Padding (RFC 7685); past one extension's limit, the rest in a GREASE extension.
        for (i, chunk) in vec![0; self.padding].chunks(60_000).enumerate() {
            ext(&mut exts, [0x0015, 0x7a7a][i.min(1)], chunk);
        }
        body.extend((exts.len() as u16).to_be_bytes());
        body.extend(exts);
        handshake(1, &body)
    }

    /// The ClientHello in one record (or more, when larger than 2^14).
    fn records(&self) -> Vec<u8> {
        records(22, &self.message(), 16384)
    }
}

fn ext(out: &mut Vec<u8>, typ: u16, data: &[u8]) {
    out.extend(typ.to_be_bytes());
    out.extend((data.len() as u16).to_be_bytes());
    out.extend(data);
}

fn u16_list(v: &[u16]) -> Vec<u8> {
    let mut b = ((v.len() * 2) as u16).to_be_bytes().to_vec();
    v.iter().for_each(|x| b.extend(x.to_be_bytes()));
    b
}

fn server_name(name: &str) -> Vec<u8> {
    let mut entry = vec![0];
    entry.extend((name.len() as u16).to_be_bytes());
    entry.extend(name.as_bytes());
    let mut b = (entry.len() as u16).to_be_bytes().to_vec();
    b.extend(entry);
    b
}

/// A public value the server accepts for `group`: X25519's base point (u = 9); for the hybrid,
/// a well-formed ML-KEM-768 encapsulation key is not needed by the tests that name it (they
/// send no share for it).
fn key_share(group: u16) -> Vec<u8> {
    assert_eq!(group, X25519, "tests send X25519 shares only");
    let mut k = vec![0u8; 32];
    k[0] = 9;
    k
}

fn handshake(typ: u8, body: &[u8]) -> Vec<u8> {
    let mut m = vec![typ];
    m.extend(&(body.len() as u32).to_be_bytes()[1..]);
    m.extend(body);
    m
}

/// `payload` as records of content type `typ`, at most `max` bytes each.
fn records(typ: u8, payload: &[u8], max: usize) -> Vec<u8> {
    let mut out = Vec::new();
    for chunk in payload.chunks(max) {
        out.extend(record(typ, chunk));
    }
    out
}

fn record(typ: u8, payload: &[u8]) -> Vec<u8> {
    let mut r = vec![typ, 0x03, 0x03];
    r.extend((payload.len() as u16).to_be_bytes());
    r.extend(payload);
    r
}

/// The server's records (type, payload), read until it closes or goes quiet for a second.
/// `closed` tells whether it ended with a FIN (not a reset or a timeout).
struct Answer {
    records: Vec<(u8, Vec<u8>)>,
    closed: bool,
}

impl Answer {
    /// The first record, which must be a plaintext fatal alert: its description.
    fn first_alert(&self) -> u8 {
        let (typ, payload) = self.records.first().expect("the server sent nothing");
        assert_eq!(
            *typ,
            21,
            "first record is not an alert: {:?}",
            self.summary()
        );
        assert_eq!(payload.len(), 2, "alert of {} bytes", payload.len());
        assert_eq!(payload[0], 2, "alert is not fatal");
        payload[1]
    }

    /// The handshake messages of the plaintext handshake records, in order.
    fn handshake_messages(&self) -> Vec<(u8, Vec<u8>)> {
        let mut bytes = Vec::new();
        for (typ, p) in &self.records {
            if *typ == 22 {
                bytes.extend(p);
            }
        }
        let mut out = Vec::new();
        let mut at = 0;
        while at + 4 <= bytes.len() {
            let len = u32::from_be_bytes([0, bytes[at + 1], bytes[at + 2], bytes[at + 3]]) as usize;
            let end = (at + 4 + len).min(bytes.len());
            out.push((bytes[at], bytes[at + 4..end].to_vec()));
            at = end;
        }
        out
    }

    /// The ServerHello (or HelloRetryRequest) body.
    fn server_hello(&self) -> ServerHello {
        let (typ, body) = self
            .handshake_messages()
            .into_iter()
            .next()
            .unwrap_or_else(|| panic!("no handshake message: {:?}", self.summary()));
        assert_eq!(typ, 2, "first handshake message is not a ServerHello");
        ServerHello::parse(&body)
    }

    fn summary(&self) -> Vec<String> {
        self.records
            .iter()
            .map(|(t, p)| match t {
                21 if p.len() == 2 => format!("alert({},{})", p[0], p[1]),
                22 => format!(
                    "handshake[{}](type {})",
                    p.len(),
                    p.first().copied().unwrap_or(0)
                ),
                _ => format!("type {t}[{}]", p.len()),
            })
            .collect()
    }
}

struct ServerHello {
    random: [u8; 32],
    extensions: Vec<(u16, Vec<u8>)>,
}

impl ServerHello {
    fn parse(b: &[u8]) -> ServerHello {
        let random: [u8; 32] = b[2..34].try_into().unwrap();
        let sid = b[34] as usize;
        let mut at = 35 + sid + 3; // suite, compression
        let mut extensions = Vec::new();
        if at + 2 <= b.len() {
            let end = at + 2 + u16::from_be_bytes([b[at], b[at + 1]]) as usize;
            at += 2;
            while at + 4 <= end {
                let typ = u16::from_be_bytes([b[at], b[at + 1]]);
                let len = u16::from_be_bytes([b[at + 2], b[at + 3]]) as usize;
                extensions.push((typ, b[at + 4..at + 4 + len].to_vec()));
                at += 4 + len;
            }
        }
        ServerHello { random, extensions }
    }

    fn is_retry(&self) -> bool {
        self.random == HRR_RANDOM
    }

    fn extension(&self, typ: u16) -> Option<&[u8]> {
        self.extensions
            .iter()
            .find(|(t, _)| *t == typ)
            .map(|(_, d)| d.as_slice())
    }

    /// The group of the key_share extension (a ServerHello's entry or an HRR's selected group).
    fn key_share_group(&self) -> u16 {
        let d = self.extension(0x0033).expect("no key_share extension");
        u16::from_be_bytes([d[0], d[1]])
    }
}

/// Reads records until the server closes or is quiet for a second.
fn read_answer(tcp: &mut TcpStream) -> Answer {
    tcp.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
    let mut bytes = Vec::new();
    let mut buf = [0u8; 16384];
    let deadline = Instant::now() + Duration::from_secs(10);
    let closed = loop {
        match tcp.read(&mut buf) {
            Ok(0) => break true,
            Ok(n) => bytes.extend(&buf[..n]),
            Err(_) => break false,
        }
        if Instant::now() > deadline {
            break false;
        }
    };
    let mut records = Vec::new();
    let mut at = 0;
    while at + 5 <= bytes.len() {
        let len = u16::from_be_bytes([bytes[at + 3], bytes[at + 4]]) as usize;
        let end = (at + 5 + len).min(bytes.len());
        records.push((bytes[at], bytes[at + 5..end].to_vec()));
        at = end;
    }
    Answer { records, closed }
}

/// Sends `bytes` on a new connection and reads the answer.
fn exchange(addr: SocketAddr, bytes: &[u8]) -> Answer {
    let mut tcp = TcpStream::connect(addr).unwrap();
    // The server may refuse before reading everything (that is what some tests check).
    let _ = tcp.write_all(bytes);
    read_answer(&mut tcp)
}

#[test]
fn a_plaintext_record_over_2_14_bytes_gets_record_overflow() {
    let srv = start(SITE);
    let mut hello = Hello::tls13();
    hello.padding = 16300;
    let message = hello.message();
    assert!(message.len() > 16384 && message.len() < 16500);
    // The same ClientHello in one oversized record: refused.
    let one = exchange(srv.https, &record(22, &message));
    assert_eq!(one.first_alert(), RECORD_OVERFLOW, "{:?}", one.summary());
    // In two records within the limit: answered.
    let two = exchange(srv.https, &records(22, &message, 16384));
    assert!(!two.server_hello().is_retry());
}

#[test]
fn a_record_over_2_14_plus_2048_bytes_gets_record_overflow() {
    let srv = start(SITE);
    let a = exchange(srv.https, &record(22, &vec![0; 16384 + 2049]));
    assert_eq!(a.first_alert(), RECORD_OVERFLOW, "{:?}", a.summary());
}

#[test]
fn a_legacy_version_of_ssl3_or_below_with_tls13_offered_gets_protocol_version() {
    let srv = start(SITE);
    for legacy in [0x0300u16, 0x0200, 0x0103, 0x0000] {
        let mut hello = Hello::tls13();
        hello.legacy_version = legacy;
        let a = exchange(srv.https, &hello.records());
        assert_eq!(
            a.first_alert(),
            PROTOCOL_VERSION,
            "legacy_version {legacy:#06x}"
        );
    }
    // TLS 1.0..1.2 as legacy_version with supported_versions stay accepted (§4.2.1).
    for legacy in [0x0301u16, 0x0302, 0x0303] {
        let mut hello = Hello::tls13();
        hello.legacy_version = legacy;
        let a = exchange(srv.https, &hello.records());
        let sh = a.server_hello();
        assert!(!sh.is_retry());
        assert_eq!(
            sh.extension(0x002b),
            Some(&[0x03, 0x04][..]),
            "{legacy:#06x}"
        );
    }
}

#[test]
fn a_client_offering_only_tls10_or_tls11_gets_protocol_version() {
    let srv = start(SITE);
    // As TLS 1.0/1.1 clients send it: the version in legacy_version, no signature_algorithms.
    for legacy in [0x0301u16, 0x0302] {
        let mut hello = Hello::tls12();
        hello.legacy_version = legacy;
        hello.suites = vec![0xc009, 0xc013, 0x002f]; // ECDHE-ECDSA-AES128-SHA ...
        hello.sigalgs = None;
        let a = exchange(srv.https, &hello.records());
        assert_eq!(a.first_alert(), PROTOCOL_VERSION, "{legacy:#06x}");
    }
    // Or listed in supported_versions.
    let mut hello = Hello::tls13();
    hello.supported_versions = Some(vec![0x0302, 0x0301]);
    let a = exchange(srv.https, &hello.records());
    assert_eq!(a.first_alert(), PROTOCOL_VERSION);
}

#[test]
fn a_tls13_client_hello_without_key_share_gets_missing_extension() {
    let srv = start(SITE);
    let mut hello = Hello::tls13();
    hello.shares = None;
    let a = exchange(srv.https, &hello.records());
    assert_eq!(a.first_alert(), MISSING_EXTENSION, "{:?}", a.summary());
}

#[test]
fn no_usable_signature_scheme_is_refused_before_the_key_exchange() {
    let srv = start(SITE); // an ECDSA P-256 certificate
    let mut hello = Hello::tls13();
    hello.sigalgs = Some(vec![RSA_PSS_SHA256]);
    let a = exchange(srv.https, &hello.records());
    // The first thing sent is the alert: no ServerHello (whose key share would have cost the
    // key exchange), and so the alert is in plaintext.
    assert_eq!(a.first_alert(), HANDSHAKE_FAILURE, "{:?}", a.summary());
    // TLS 1.2 as well.
    let mut hello = Hello::tls12();
    hello.sigalgs = Some(vec![RSA_PSS_SHA256]);
    hello.suites = vec![0xc02b];
    let a = exchange(srv.https, &hello.records());
    assert_eq!(a.first_alert(), HANDSHAKE_FAILURE, "{:?}", a.summary());
}

#[test]
fn a_client_preferring_mlkem_that_sent_an_x25519_share_gets_x25519_without_a_retry() {
    let srv = start(SITE);
    let mut hello = Hello::tls13();
    hello.groups = Some(vec![X25519MLKEM768, X25519]);
    hello.shares = Some(vec![X25519]);
    let sh = exchange(srv.https, &hello.records()).server_hello();
    assert!(
        !sh.is_retry(),
        "HelloRetryRequest instead of using the X25519 share"
    );
    assert_eq!(sh.key_share_group(), X25519);
}

#[test]
fn a_site_requiring_post_quantum_asks_for_an_mlkem_share() {
    let srv = start(&SITE.replace(
        "key = \"certs/alpha.key\"\n",
        "key = \"certs/alpha.key\"\nrequire_post_quantum = true\n",
    ));
    let mut hello = Hello::tls13();
    hello.groups = Some(vec![X25519MLKEM768, X25519]);
    hello.shares = Some(vec![X25519]);
    let sh = exchange(srv.https, &hello.records()).server_hello();
    assert!(sh.is_retry());
    assert_eq!(sh.key_share_group(), X25519MLKEM768);
    // A client without ML-KEM still connects.
    let mut hello = Hello::tls13();
    hello.groups = Some(vec![X25519]);
    let sh = exchange(srv.https, &hello.records()).server_hello();
    assert!(!sh.is_retry());
    assert_eq!(sh.key_share_group(), X25519);
}

#[test]
fn tls12_server_hello_answers_ec_point_formats_when_the_client_sent_it() {
    let srv = start(SITE);
    let mut hello = Hello::tls12();
    hello.ec_point_formats = true;
    let sh = exchange(srv.https, &hello.records()).server_hello();
    assert_eq!(sh.extension(0x000b), Some(&[1, 0][..]), "uncompressed only");
    let sh = exchange(srv.https, &Hello::tls12().records()).server_hello();
    assert_eq!(sh.extension(0x000b), None, "not sent unasked");
}

#[test]
fn a_client_hello_over_64_kib_gets_an_alert_and_a_clean_close() {
    let srv = start(SITE);
    let mut hello = Hello::tls13();
    hello.padding = 66000; // the message exceeds 64 KiB with the rest of the hello
    let message = hello.message();
    assert!(message.len() > 65536);
    let a = exchange(srv.https, &records(22, &message, 16384));
    assert!(
        [DECODE_ERROR, ILLEGAL_PARAMETER].contains(&a.first_alert()),
        "{:?}",
        a.summary()
    );
    assert!(
        a.closed,
        "connection reset instead of closed after the alert"
    );
    // Also when the length field alone says more than 64 KiB (the first record reveals it).
    let mut huge = handshake(1, &[]);
    huge[1..4].copy_from_slice(&[0x01, 0x00, 0x00]);
    huge.extend(vec![0; 16000]);
    let a = exchange(srv.https, &record(22, &huge));
    assert_eq!(a.first_alert(), DECODE_ERROR, "{:?}", a.summary());
    assert!(a.closed);
}

#[test]
fn an_empty_alert_record_gets_unexpected_message() {
    let srv = start(SITE);
    let a = exchange(srv.https, &record(21, &[]));
    assert_eq!(a.first_alert(), UNEXPECTED_MESSAGE, "{:?}", a.summary());
    // In the middle of a handshake too.
    let mut tcp = tls12_to_server_hello_done(srv.https);
    tcp.write_all(&record(21, &[])).unwrap();
    let a = read_answer(&mut tcp);
    assert_eq!(a.first_alert(), UNEXPECTED_MESSAGE, "{:?}", a.summary());
}

/// A TLS 1.2 handshake by hand, up to the server's ServerHelloDone.
fn tls12_to_server_hello_done(addr: SocketAddr) -> TcpStream {
    let mut tcp = TcpStream::connect(addr).unwrap();
    let mut hello = Hello::tls12();
    hello.suites = vec![0xc02b];
    tcp.write_all(&hello.records()).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 8192];
    while !flight_done(&got) {
        let n = tcp.read(&mut buf).unwrap();
        assert!(n > 0, "closed before ServerHelloDone");
        got.extend(&buf[..n]);
    }
    tcp
}

/// A TLS 1.2 handshake by hand up to the client's key exchange with a truncated public value.
#[test]
fn a_truncated_ecdh_public_value_in_tls12_gets_decode_error() {
    let srv = start(SITE);
    let mut tcp = tls12_to_server_hello_done(srv.https);
    // ECPoint: length 32, but 10 bytes.
    let mut body = vec![32];
    body.extend([9; 10]);
    tcp.write_all(&record(22, &handshake(16, &body))).unwrap();
    let a = read_answer(&mut tcp);
    assert_eq!(a.first_alert(), DECODE_ERROR, "{:?}", a.summary());
}

/// The server's TLS 1.2 flight ends with ServerHelloDone (type 14, empty).
fn flight_done(bytes: &[u8]) -> bool {
    let mut hs = Vec::new();
    let mut at = 0;
    while at + 5 <= bytes.len() {
        let len = u16::from_be_bytes([bytes[at + 3], bytes[at + 4]]) as usize;
        if at + 5 + len > bytes.len() {
            break;
        }
        if bytes[at] == 22 {
            hs.extend(&bytes[at + 5..at + 5 + len]);
        }
        at += 5 + len;
    }
    hs.ends_with(&[14, 0, 0, 0])
}

/// One direction of an established TLS 1.3 connection (AES-128-GCM), keys from rustls.
struct Direction {
    key: LessSafeKey,
    iv: [u8; 12],
    seq: u64,
}

impl Direction {
    fn new(secrets: (u64, rustls::ConnectionTrafficSecrets)) -> Direction {
        let (seq, rustls::ConnectionTrafficSecrets::Aes128Gcm { key, iv }) = secrets else {
            panic!("not AES-128-GCM");
        };
        Direction {
            key: LessSafeKey::new(UnboundKey::new(&AES_128_GCM, key.as_ref()).unwrap()),
            iv: iv.as_ref().try_into().unwrap(),
            seq,
        }
    }

    fn nonce(&mut self) -> Nonce {
        let mut n = self.iv;
        for (b, s) in n[4..].iter_mut().zip(self.seq.to_be_bytes()) {
            *b ^= s;
        }
        self.seq += 1;
        Nonce::assume_unique_for_key(n)
    }

    /// A TLSCiphertext record carrying `inner` (TLSInnerPlaintext: content, type, padding).
    fn seal(&mut self, inner: &[u8]) -> Vec<u8> {
        let len = (inner.len() + 16) as u16;
        let header = [23, 3, 3, (len >> 8) as u8, len as u8];
        let mut data = inner.to_vec();
        let nonce = self.nonce();
        self.key
            .seal_in_place_append_tag(nonce, Aad::from(header), &mut data)
            .unwrap();
        let mut r = header.to_vec();
        r.extend(data);
        r
    }

    /// Decrypts an application-data record: (inner content type, content).
    fn open(&mut self, payload: &[u8]) -> (u8, Vec<u8>) {
        let len = payload.len() as u16;
        let header = [23, 3, 3, (len >> 8) as u8, len as u8];
        let mut data = payload.to_vec();
        let nonce = self.nonce();
        let plain = self
            .key
            .open_in_place(nonce, Aad::from(header), &mut data)
            .expect("server record does not decrypt");
        let end = plain
            .iter()
            .rposition(|b| *b != 0)
            .expect("no content type");
        (plain[end], plain[..end].to_vec())
    }
}

/// A TLS 1.3 connection after one request and its answer, as raw socket and keys.
struct Established {
    tcp: TcpStream,
    tx: Direction,
    rx: Direction,
}

impl Established {
    fn new(addr: SocketAddr) -> Established {
        let mut provider = default_provider();
        provider.cipher_suites =
            vec![rustls::crypto::aws_lc_rs::cipher_suite::TLS13_AES_128_GCM_SHA256];
        let mut roots = rustls::RootCertStore::empty();
        roots.add(pki().root_der.clone()).unwrap();
        let mut cfg = rustls::ClientConfig::builder_with_provider(Arc::new(provider))
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        cfg.enable_secret_extraction = true;
        cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
        let mut conn =
            rustls::ClientConnection::new(Arc::new(cfg), ALPHA.try_into().unwrap()).unwrap();
        let mut tcp = TcpStream::connect(addr).unwrap();
        tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        {
            // A whole request and answer: the session ticket before it is processed too, so
            // the extracted receive sequence number is that of the next record.
            let mut s = rustls::Stream::new(&mut conn, &mut tcp);
            s.write_all(b"GET / HTTP/1.1\r\nHost: alpha.test\r\n\r\n")
                .unwrap();
            let mut got = Vec::new();
            let mut buf = [0u8; 4096];
            while !got.ends_with(b"alpha") {
                let n = s.read(&mut buf).unwrap();
                assert!(n > 0);
                got.extend(&buf[..n]);
            }
        }
        let secrets = conn.dangerous_extract_secrets().unwrap();
        Established {
            tcp,
            tx: Direction::new(secrets.tx),
            rx: Direction::new(secrets.rx),
        }
    }

    fn send(&mut self, inner: &[u8]) {
        let r = self.tx.seal(inner);
        self.tcp.write_all(&r).unwrap();
    }

    /// The alert the server ends with (decrypted), and whether it closed cleanly.
    fn final_alert(&mut self) -> u8 {
        let a = read_answer(&mut self.tcp);
        let mut alerts = Vec::new();
        for (typ, payload) in &a.records {
            assert_eq!(*typ, 23, "plaintext record after the handshake");
            let (inner, content) = self.rx.open(payload);
            if inner == 21 {
                alerts.push(content);
            }
        }
        let alert = alerts.last().expect("no alert before the close");
        assert_eq!(alert[0], 2, "not fatal: {alert:?}");
        alert[1]
    }
}

#[test]
fn an_inner_plaintext_without_content_type_gets_unexpected_message() {
    let srv = start(SITE);
    for inner in [&[0u8; 8][..], &[0u8][..]] {
        let mut c = Established::new(srv.https);
        c.send(inner);
        assert_eq!(c.final_alert(), UNEXPECTED_MESSAGE, "{inner:?}");
    }
}

#[test]
fn an_encrypted_empty_alert_gets_unexpected_message() {
    let srv = start(SITE);
    let mut c = Established::new(srv.https);
    c.send(&[21]); // content type alert, no content
    assert_eq!(c.final_alert(), UNEXPECTED_MESSAGE);
}

#[test]
fn application_data_between_pieces_of_a_handshake_message_gets_unexpected_message() {
    let srv = start(SITE);
    let mut c = Established::new(srv.https);
    // KeyUpdate (type 24, length 1, update_not_requested) split after two bytes.
    c.send(&[24, 0, 22]);
    c.send(b"GET / HTTP/1.1\r\n\x17");
    c.send(&[0, 1, 0, 22]);
    assert_eq!(c.final_alert(), UNEXPECTED_MESSAGE);
}

#[test]
fn a_ciphertext_record_over_2_14_plus_256_bytes_gets_record_overflow() {
    let srv = start(SITE);
    let mut c = Established::new(srv.https);
    // 2^14 + 257 bytes of ciphertext (it need not decrypt: its length alone is refused).
    let mut r = vec![23, 3, 3];
    r.extend(((16384 + 257) as u16).to_be_bytes());
    r.extend(vec![0x55; 16384 + 257]);
    c.tcp.write_all(&r).unwrap();
    assert_eq!(c.final_alert(), RECORD_OVERFLOW);
    // A record at the limit that does not decrypt still gets bad_record_mac (20).
    let mut c = Established::new(srv.https);
    let mut r = vec![23, 3, 3];
    r.extend(((16384 + 256) as u16).to_be_bytes());
    r.extend(vec![0x55; 16384 + 256]);
    c.tcp.write_all(&r).unwrap();
    assert_eq!(c.final_alert(), 20);
}
