//! ClientHellos built byte by byte.
//!
//! rustls (rightly) cannot send SSLv3, TLS 1.0 or 1.1 hellos, weak cipher suites, or a TLS 1.3
//! hello with an empty key share, and no maintained Rust crate writes arbitrary ClientHellos
//! (tls-parser only reads them; its optional writer needs the same fields spelled out as here),
//! so the hellos are written by hand: one function per piece, each after its RFC structure. The
//! handshake is never finished, so no key material beyond a fresh X25519 public key is needed.

use super::suites::{Version, RENEGOTIATION_SCSV};

/// What one hello offers.
#[derive(Debug, Clone)]
pub(crate) struct ClientHello<'a> {
    /// The version asked about: `legacy_version` up to TLS 1.2, `supported_versions` (with
    /// `legacy_version` TLS 1.2) for TLS 1.3.
    pub version: Version,
    /// Cipher suites, in preference order.
    pub suites: &'a [u16],
    /// `supported_groups`, in preference order.
    pub groups: &'a [u16],
    /// TLS 1.3 only: the one key share sent (group, public key); `None` sends an empty list,
    /// which makes a server that accepts one of `groups` answer with a HelloRetryRequest
    /// naming it.
    pub key_share: Option<(u16, Vec<u8>)>,
    /// The server name (SNI); `None` for IP addresses, as browsers do.
    pub sni: Option<&'a str>,
}

/// Handshake message type `client_hello` (RFC 8446 section 4).
const CLIENT_HELLO: u8 = 1;
/// Record content type `handshake`.
const HANDSHAKE: u8 = 22;

// Extension types (IANA "TLS ExtensionType Values").
const EXT_SERVER_NAME: u16 = 0;
const EXT_SUPPORTED_GROUPS: u16 = 10;
const EXT_EC_POINT_FORMATS: u16 = 11;
const EXT_SIGNATURE_ALGORITHMS: u16 = 13;
const EXT_EXTENDED_MASTER_SECRET: u16 = 23;
const EXT_SUPPORTED_VERSIONS: u16 = 43;
const EXT_PSK_KEY_EXCHANGE_MODES: u16 = 45;
const EXT_KEY_SHARE: u16 = 51;

/// Signature schemes offered in TLS 1.2 and 1.3: everything a server certificate may need,
/// SHA-1 included, so that no server refuses for want of one (the scan judges suites and
/// versions, not signatures).
const SIGNATURE_SCHEMES: &[u16] = &[
    0x0403, 0x0503, 0x0603, // ecdsa_secp256r1_sha256, secp384r1_sha384, secp521r1_sha512
    0x0807, 0x0808, // ed25519, ed448
    0x0804, 0x0805, 0x0806, // rsa_pss_rsae_sha256/384/512
    0x0809, 0x080a, 0x080b, // rsa_pss_pss_sha256/384/512
    0x0401, 0x0501, 0x0601, // rsa_pkcs1_sha256/384/512
    0x0303, 0x0301, // ecdsa_sha224, rsa_sha224
    0x0203, 0x0201, 0x0202, // ecdsa_sha1, rsa_pkcs1_sha1, dsa_sha1
    0x0402, 0x0502, 0x0602, // dsa_sha256/384/512
];

impl ClientHello<'_> {
    /// The hello as one TLS record, ready to write.
    pub(crate) fn to_bytes(&self) -> Vec<u8> {
        let body = self.body();
        record(self.record_version(), &handshake(CLIENT_HELLO, &body))
    }

    /// The record layer's version: SSLv3 hellos say SSLv3; every other hello says TLS 1.0,
    /// as browsers do, since some servers drop records whose version is higher than theirs.
    fn record_version(&self) -> u16 {
        match self.version {
            Version::Ssl3 => Version::Ssl3.wire(),
            _ => Version::Tls10.wire(),
        }
    }

    /// `struct { legacy_version; random; legacy_session_id; cipher_suites;
    /// legacy_compression_methods; extensions }` (RFC 8446 section 4.1.2).
    fn body(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(512);
        let legacy_version = self.version.min(Version::Tls12).wire();
        b.extend_from_slice(&legacy_version.to_be_bytes());
        b.extend_from_slice(&random::<32>());
        // TLS 1.3 "middlebox compatibility mode" (RFC 8446 appendix D.4) sends a 32-byte session
        // id; older versions send none (a fresh session).
        if self.version == Version::Tls13 {
            b.extend_from_slice(&vec8(&random::<32>()));
        } else {
            b.extend_from_slice(&vec8(&[]));
        }
        b.extend_from_slice(&self.cipher_suites());
        // Compression methods: null only.
        b.extend_from_slice(&vec8(&[0]));
        // SSLv3 hellos end here: SSLv3 servers predate extensions and some fail on them.
        if self.version > Version::Ssl3 {
            b.extend_from_slice(&vec16(&self.extensions()));
        }
        b
    }

    /// `CipherSuite cipher_suites<2..2^16-2>`, with the renegotiation SCSV up to TLS 1.2.
    fn cipher_suites(&self) -> Vec<u8> {
        let mut ids: Vec<u16> = self.suites.to_vec();
        if self.version < Version::Tls13 {
            ids.push(RENEGOTIATION_SCSV);
        }
        vec16(&u16s(&ids))
    }

    /// The extensions for the version asked about.
    fn extensions(&self) -> Vec<u8> {
        let mut e = Vec::new();
        if let Some(name) = self.sni {
            e.extend_from_slice(&server_name(name));
        }
        e.extend_from_slice(&supported_groups(self.groups));
        if self.version < Version::Tls13 {
            e.extend_from_slice(&ec_point_formats());
            e.extend_from_slice(&extension(EXT_EXTENDED_MASTER_SECRET, &[]));
        }
        // Not meaningful before TLS 1.2, and RFC 5246 forbids it there.
        if self.version >= Version::Tls12 {
            e.extend_from_slice(&signature_algorithms());
        }
        if self.version == Version::Tls13 {
            e.extend_from_slice(&supported_versions(&[Version::Tls13]));
            e.extend_from_slice(&psk_key_exchange_modes());
            e.extend_from_slice(&key_share(self.key_share.as_ref()));
        }
        e
    }
}

/// `struct { ContentType type; ProtocolVersion legacy_record_version; uint16 length;
/// opaque fragment }` (RFC 8446 section 5.1).
fn record(version: u16, fragment: &[u8]) -> Vec<u8> {
    let mut r = vec![HANDSHAKE];
    r.extend_from_slice(&version.to_be_bytes());
    r.extend_from_slice(&vec16(fragment));
    r
}

/// `struct { HandshakeType msg_type; uint24 length; body }` (RFC 8446 section 4).
fn handshake(msg_type: u8, body: &[u8]) -> Vec<u8> {
    let mut h = vec![msg_type];
    h.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
    h.extend_from_slice(body);
    h
}

/// `struct { ExtensionType extension_type; opaque extension_data<0..2^16-1> }`.
fn extension(ext_type: u16, data: &[u8]) -> Vec<u8> {
    let mut e = ext_type.to_be_bytes().to_vec();
    e.extend_from_slice(&vec16(data));
    e
}

/// `server_name` (RFC 6066 section 3): one `host_name` entry.
fn server_name(name: &str) -> Vec<u8> {
    let mut entry = vec![0]; // NameType host_name
    entry.extend_from_slice(&vec16(name.as_bytes()));
    extension(EXT_SERVER_NAME, &vec16(&entry))
}

/// `supported_groups` (RFC 8446 section 4.2.7): `NamedGroup named_group_list<2..2^16-1>`.
fn supported_groups(groups: &[u16]) -> Vec<u8> {
    extension(EXT_SUPPORTED_GROUPS, &vec16(&u16s(groups)))
}

/// `ec_point_formats` (RFC 8422 section 5.1.2): uncompressed only.
fn ec_point_formats() -> Vec<u8> {
    extension(EXT_EC_POINT_FORMATS, &vec8(&[0]))
}

/// `signature_algorithms` (RFC 8446 section 4.2.3).
fn signature_algorithms() -> Vec<u8> {
    extension(EXT_SIGNATURE_ALGORITHMS, &vec16(&u16s(SIGNATURE_SCHEMES)))
}

/// `supported_versions` (RFC 8446 section 4.2.1): `ProtocolVersion versions<2..254>`.
fn supported_versions(versions: &[Version]) -> Vec<u8> {
    let ids: Vec<u16> = versions.iter().map(|v| v.wire()).collect();
    extension(EXT_SUPPORTED_VERSIONS, &vec8(&u16s(&ids)))
}

/// `psk_key_exchange_modes` (RFC 8446 section 4.2.9): `psk_dhe_ke`, as browsers send.
fn psk_key_exchange_modes() -> Vec<u8> {
    extension(EXT_PSK_KEY_EXCHANGE_MODES, &vec8(&[1]))
}

/// `key_share` (RFC 8446 section 4.2.8): `KeyShareEntry client_shares<0..2^16-1>`, each
/// `struct { NamedGroup group; opaque key_exchange<1..2^16-1> }`; empty when `share` is `None`.
fn key_share(share: Option<&(u16, Vec<u8>)>) -> Vec<u8> {
    let mut entries = Vec::new();
    if let Some((group, key)) = share {
        entries.extend_from_slice(&group.to_be_bytes());
        entries.extend_from_slice(&vec16(key));
    }
    extension(EXT_KEY_SHARE, &vec16(&entries))
}

/// A fresh X25519 public key (the private half is dropped: the handshake is never finished).
pub(crate) fn x25519_public_key() -> Option<Vec<u8>> {
    let rng = aws_lc_rs::rand::SystemRandom::new();
    let private =
        aws_lc_rs::agreement::EphemeralPrivateKey::generate(&aws_lc_rs::agreement::X25519, &rng)
            .ok()?;
    let public = private.compute_public_key().ok()?;
    Some(public.as_ref().to_vec())
}

/// `N` random bytes (the hello's random and session id).
fn random<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    // Should the system's generator fail, zeros still make a well-formed hello: nothing secret
    // depends on them.
    let _ = aws_lc_rs::rand::fill(&mut b);
    b
}

/// Big-endian u16s.
fn u16s(v: &[u16]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_be_bytes()).collect()
}

/// `opaque x<0..2^8-1>`: a one-byte length, then the bytes.
fn vec8(b: &[u8]) -> Vec<u8> {
    let mut v = vec![b.len() as u8];
    v.extend_from_slice(b);
    v
}

/// `opaque x<0..2^16-1>`: a two-byte length, then the bytes.
fn vec16(b: &[u8]) -> Vec<u8> {
    let mut v = (b.len() as u16).to_be_bytes().to_vec();
    v.extend_from_slice(b);
    v
}

#[cfg(test)]
mod tests {
    use super::super::suites::{LEGACY_SUITES, TLS13_SUITES};
    use super::*;
    use tls_parser::{
        parse_tls_client_hello_extensions, parse_tls_plaintext, TlsExtension, TlsMessage,
        TlsMessageHandshake,
    };

    /// The hello parsed back by tls-parser: legacy version, suites, extensions.
    fn parse(bytes: &[u8]) -> (u16, Vec<u16>, Vec<TlsExtension<'_>>) {
        let (rest, plain) = parse_tls_plaintext(bytes).expect("a TLS record");
        assert!(rest.is_empty());
        let [TlsMessage::Handshake(TlsMessageHandshake::ClientHello(ch))] = &plain.msg[..] else {
            panic!("not one ClientHello: {:?}", plain.msg);
        };
        let exts = ch
            .ext
            .map(|e| parse_tls_client_hello_extensions(e).expect("extensions").1)
            .unwrap_or_default();
        (ch.version.0, ch.ciphers.iter().map(|c| c.0).collect(), exts)
    }

    #[test]
    fn a_tls12_hello_parses_back_with_its_suites_and_extensions() {
        let hello = ClientHello {
            version: Version::Tls12,
            suites: LEGACY_SUITES,
            groups: &[0x001d, 0x0017],
            key_share: None,
            sni: Some("alpha.test"),
        };
        let bytes = hello.to_bytes();
        assert_eq!(&bytes[..3], &[22, 3, 1]);
        let (version, suites, exts) = parse(&bytes);
        assert_eq!(version, 0x0303);
        let mut want = LEGACY_SUITES.to_vec();
        want.push(RENEGOTIATION_SCSV);
        assert_eq!(suites, want);
        assert!(exts.contains(&TlsExtension::SNI(vec![(
            tls_parser::SNIType::HostName,
            &b"alpha.test"[..]
        )])));
        assert!(exts.contains(&TlsExtension::EllipticCurves(vec![
            tls_parser::NamedGroup(0x001d),
            tls_parser::NamedGroup(0x0017)
        ])));
        assert!(exts.contains(&TlsExtension::EcPointFormats(&[0])));
        assert!(exts.contains(&TlsExtension::ExtendedMasterSecret));
        assert!(exts.contains(&TlsExtension::SignatureAlgorithms(
            SIGNATURE_SCHEMES.to_vec()
        )));
        assert!(!exts
            .iter()
            .any(|e| matches!(e, TlsExtension::SupportedVersions(_))));
    }

    #[test]
    fn a_tls13_hello_carries_supported_versions_and_its_key_share() {
        let key = x25519_public_key().unwrap();
        assert_eq!(key.len(), 32);
        let hello = ClientHello {
            version: Version::Tls13,
            suites: TLS13_SUITES,
            groups: &[0x001d],
            key_share: Some((0x001d, key.clone())),
            sni: None,
        };
        let bytes = hello.to_bytes();
        let (version, suites, exts) = parse(&bytes);
        assert_eq!(version, 0x0303);
        assert_eq!(suites, TLS13_SUITES);
        assert!(exts.contains(&TlsExtension::SupportedVersions(vec![
            tls_parser::TlsVersion::Tls13
        ])));
        let mut share = vec![0x00, 0x1d, 0x00, 32];
        share.extend_from_slice(&key);
        // tls-parser keeps the key_share list as it came, with its length.
        let mut list = vec![0x00, 36];
        list.extend_from_slice(&share);
        assert!(exts.contains(&TlsExtension::KeyShare(&list)), "{exts:?}");
        assert!(!exts.iter().any(|e| matches!(e, TlsExtension::SNI(_))));

        // No share: an empty client_shares list.
        let hello = ClientHello {
            key_share: None,
            ..hello
        };
        let bytes = hello.to_bytes();
        let (_, _, exts) = parse(&bytes);
        assert!(exts.contains(&TlsExtension::KeyShare(&[0, 0])), "{exts:?}");
    }

    #[test]
    fn an_sslv3_hello_has_no_extensions() {
        let hello = ClientHello {
            version: Version::Ssl3,
            suites: &[0x002f],
            groups: &[0x001d],
            key_share: None,
            sni: Some("alpha.test"),
        };
        let bytes = hello.to_bytes();
        assert_eq!(&bytes[..3], &[22, 3, 0]);
        let (version, suites, exts) = parse(&bytes);
        assert_eq!(version, 0x0300);
        assert_eq!(suites, vec![0x002f, RENEGOTIATION_SCSV]);
        assert!(exts.is_empty());
    }
}
