//! What the scan asks about: protocol versions, the cipher suites offered (by IANA id, named and
//! classified from tls-parser's copy of the IANA registry) and the named groups.

use tls_parser::{TlsCipherAu, TlsCipherEnc, TlsCipherEncMode, TlsCipherKx, TlsCipherSuite};

/// A protocol version, as `legacy_version` / `supported_versions` write it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) enum Version {
    Ssl3,
    Tls10,
    Tls11,
    Tls12,
    Tls13,
}

impl Version {
    /// Oldest first.
    pub(crate) const ALL: [Version; 5] = [
        Version::Ssl3,
        Version::Tls10,
        Version::Tls11,
        Version::Tls12,
        Version::Tls13,
    ];

    pub(crate) fn wire(self) -> u16 {
        match self {
            Version::Ssl3 => 0x0300,
            Version::Tls10 => 0x0301,
            Version::Tls11 => 0x0302,
            Version::Tls12 => 0x0303,
            Version::Tls13 => 0x0304,
        }
    }

    /// The name OpenSSL, sslyze and testssl.sh print (`TLSv1.2`).
    pub(crate) fn name(self) -> &'static str {
        match self {
            Version::Ssl3 => "SSLv3",
            Version::Tls10 => "TLSv1.0",
            Version::Tls11 => "TLSv1.1",
            Version::Tls12 => "TLSv1.2",
            Version::Tls13 => "TLSv1.3",
        }
    }
}

/// The five TLS 1.3 suites (RFC 8446 appendix B.4).
pub(crate) const TLS13_SUITES: &[u16] = &[
    0x1301, // TLS_AES_128_GCM_SHA256
    0x1302, // TLS_AES_256_GCM_SHA384
    0x1303, // TLS_CHACHA20_POLY1305_SHA256
    0x1304, // TLS_AES_128_CCM_SHA256
    0x1305, // TLS_AES_128_CCM_8_SHA256
];

/// The suites offered for SSLv3 to TLS 1.2: every key exchange a web server may have enabled
/// (ECDHE, DHE, static RSA, static ECDH/DH, anonymous) with every cipher (AES-GCM/CCM, ChaCha20,
/// AES-CBC, Camellia, ARIA, SEED, IDEA, 3DES, DES, RC4, NULL, EXPORT). PSK, SRP, Kerberos and
/// GOST suites are left out: no web server offers them to a client without a pre-shared secret.
/// Strongest first, the way browsers order them, so that a server that follows the client's
/// order picks the best suite it has.
pub(crate) const LEGACY_SUITES: &[u16] = &[
    // ECDHE and DHE with AEAD ciphers.
    0xc02b, 0xc02c, 0xcca9, // ECDHE_ECDSA AES_128_GCM, AES_256_GCM, CHACHA20_POLY1305
    0xc02f, 0xc030, 0xcca8, // ECDHE_RSA AES_128_GCM, AES_256_GCM, CHACHA20_POLY1305
    0x009e, 0x009f, 0xccaa, // DHE_RSA AES_128_GCM, AES_256_GCM, CHACHA20_POLY1305
    0x00a2, 0x00a3, // DHE_DSS AES_128_GCM, AES_256_GCM
    0xc0ac, 0xc0ad, 0xc09e, 0xc09f, // ECDHE_ECDSA / DHE_RSA AES_128_CCM, AES_256_CCM
    0xc05c, 0xc05d, 0xc060, 0xc061, 0xc052, 0xc053, // ECDHE / DHE ARIA_GCM
    // ECDHE and DHE with CBC ciphers.
    0xc023, 0xc024, 0xc009, 0xc00a, // ECDHE_ECDSA AES_CBC (SHA256/384, SHA)
    0xc027, 0xc028, 0xc013, 0xc014, // ECDHE_RSA AES_CBC (SHA256/384, SHA)
    0x0067, 0x006b, 0x0033, 0x0039, // DHE_RSA AES_CBC
    0x0040, 0x006a, 0x0032, 0x0038, // DHE_DSS AES_CBC
    0xc072, 0xc073, 0xc076, 0xc077, // ECDHE CAMELLIA_CBC
    0x00be, 0x00c4, 0x0045, 0x0088, // DHE_RSA CAMELLIA_CBC
    0x009a, // DHE_RSA SEED_CBC
    // Static RSA key exchange (no forward secrecy).
    0x009c, 0x009d, 0xc09c, 0xc09d, 0xc050, 0xc051, // RSA AES_GCM, AES_CCM, ARIA_GCM
    0x003c, 0x003d, 0x002f, 0x0035, // RSA AES_CBC
    0x00ba, 0x00c0, 0x0041, 0x0084, // RSA CAMELLIA_CBC
    0x0096, 0x0007, // RSA SEED_CBC, IDEA_CBC
    // Static ECDH and DH (no forward secrecy).
    0xc02d, 0xc02e, 0xc031, 0xc032, // ECDH AES_GCM
    0xc025, 0xc026, 0xc029, 0xc02a, 0xc004, 0xc005, 0xc00e, 0xc00f, // ECDH AES_CBC
    0x00a0, 0x00a1, 0x0031, 0x0037, 0x0030, 0x0036, // DH AES
    // 64-bit block ciphers (Sweet32) and single DES.
    0xc008, 0xc012, 0x0016, 0x0013, 0x000a, 0xc003, 0xc00d, // 3DES_EDE_CBC
    0x0015, 0x0012, 0x0009, // DES_CBC
    // RC4.
    0xc007, 0xc011, 0x0005, 0x0004, 0xc002, 0xc00c, // Anonymous (no authentication).
    0xc018, 0xc019, 0xc017, 0xc016, 0x00a6, 0x00a7, 0x006c, 0x006d, 0x0034, 0x003a, 0x001b, 0x0018,
    0x001a, 0x0046, 0x0089, // NULL encryption.
    0xc010, 0xc006, 0xc015, 0x003b, 0x0002, 0x0001, // EXPORT (40-bit).
    0x0003, 0x0006, 0x0008, 0x0014, 0x0011, 0x0017, 0x0019, 0x000b, 0x000e,
];

/// `TLS_EMPTY_RENEGOTIATION_INFO_SCSV` (RFC 5746): says "secure renegotiation supported"
/// without an extension; some servers refuse hellos without it.
pub(crate) const RENEGOTIATION_SCSV: u16 = 0x00ff;

/// The IANA name of a suite (`TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256`), or its id in hex.
pub(crate) fn suite_name(id: u16) -> String {
    TlsCipherSuite::from_id(id)
        .map(|s| s.name.to_owned())
        .unwrap_or_else(|| format!("0x{id:04x}"))
}

/// How bad a suite is, worst first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Weakness {
    /// Broken or offering no protection: NULL, EXPORT, anonymous, RC4, DES, 3DES and the
    /// other 64-bit block ciphers.
    Broken(&'static str),
    /// Static RSA / DH / ECDH key exchange: whoever gets the server's key later decrypts
    /// every recorded session.
    NoForwardSecrecy,
    /// CBC with HMAC (MAC-then-encrypt): the source of padding oracles (Lucky13 and kin).
    Cbc,
}

/// What is wrong with a suite (nothing, one broken part, or no forward secrecy and/or CBC).
pub(crate) fn weaknesses(id: u16) -> Vec<Weakness> {
    let Some(s) = TlsCipherSuite::from_id(id) else {
        return Vec::new();
    };
    let broken = if s.enc == TlsCipherEnc::Null {
        Some("NULL (no encryption)")
    } else if s.name.contains("EXPORT") {
        Some("EXPORT (40-bit keys)")
    } else if s.au == TlsCipherAu::Null {
        Some("anonymous (no authentication)")
    } else {
        match s.enc {
            TlsCipherEnc::Rc4 => Some("RC4"),
            TlsCipherEnc::Des => Some("DES"),
            TlsCipherEnc::TripleDes => Some("3DES (Sweet32)"),
            TlsCipherEnc::Rc2 => Some("RC2"),
            TlsCipherEnc::Idea => Some("IDEA (Sweet32)"),
            _ => None,
        }
    };
    // A broken suite is named for its worst part only.
    if let Some(why) = broken {
        return vec![Weakness::Broken(why)];
    }
    let mut w = Vec::new();
    if matches!(s.kx, TlsCipherKx::Rsa | TlsCipherKx::Dh | TlsCipherKx::Ecdh) {
        w.push(Weakness::NoForwardSecrecy);
    }
    if s.enc_mode == TlsCipherEncMode::Cbc {
        w.push(Weakness::Cbc);
    }
    w
}

/// Whether current Chrome would negotiate this TLS 1.2 suite: ECDHE with AES-GCM,
/// ChaCha20-Poly1305 or AES-CBC (Chrome dropped DHE in version 53 and static RSA key exchange
/// in version 131).
pub(crate) fn browser_tls12(id: u16) -> bool {
    TlsCipherSuite::from_id(id).is_some_and(|s| {
        s.kx == TlsCipherKx::Ecdhe
            && matches!(s.au, TlsCipherAu::Ecdsa | TlsCipherAu::Rsa)
            && matches!(s.enc, TlsCipherEnc::Aes | TlsCipherEnc::Chacha20_Poly1305)
            && s.enc_mode != TlsCipherEncMode::Ccm
    })
}

/// Whether a suite uses ECDHE (for the TLS 1.2 group questions).
pub(crate) fn is_ecdhe(id: u16) -> bool {
    TlsCipherSuite::from_id(id).is_some_and(|s| s.kx == TlsCipherKx::Ecdhe)
}

/// A named group (RFC 8446 section 4.2.7, RFC 7919, draft-ietf-tls-ecdhe-mlkem).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Group {
    pub id: u16,
    /// The IANA name.
    pub name: &'static str,
    /// Usable with ECDHE suites in TLS 1.2 (an elliptic curve).
    pub ec: bool,
}

/// The groups asked about, in the order reported.
pub(crate) const GROUPS: &[Group] = &[
    Group {
        id: 0x11ec,
        name: "X25519MLKEM768",
        ec: false,
    },
    Group {
        id: 0x11eb,
        name: "SecP256r1MLKEM768",
        ec: false,
    },
    Group {
        id: 0x11ed,
        name: "SecP384r1MLKEM1024",
        ec: false,
    },
    Group {
        id: 0x001d,
        name: "x25519",
        ec: true,
    },
    Group {
        id: 0x0017,
        name: "secp256r1",
        ec: true,
    },
    Group {
        id: 0x0018,
        name: "secp384r1",
        ec: true,
    },
    Group {
        id: 0x0019,
        name: "secp521r1",
        ec: true,
    },
    Group {
        id: 0x001e,
        name: "x448",
        ec: true,
    },
    Group {
        id: 0x0100,
        name: "ffdhe2048",
        ec: false,
    },
    Group {
        id: 0x0101,
        name: "ffdhe3072",
        ec: false,
    },
    Group {
        id: 0x0102,
        name: "ffdhe4096",
        ec: false,
    },
    Group {
        id: 0x0103,
        name: "ffdhe6144",
        ec: false,
    },
    Group {
        id: 0x0104,
        name: "ffdhe8192",
        ec: false,
    },
];

/// X25519: the key share sent with the TLS 1.3 questions.
pub(crate) const X25519: u16 = 0x001d;
/// The groups Chrome offers; a TLS 1.3 server with none of them gets no handshake from it.
pub(crate) const BROWSER_GROUPS: &[u16] = &[0x11ec, 0x001d, 0x0017, 0x0018];

pub(crate) fn group_name(id: u16) -> String {
    GROUPS
        .iter()
        .find(|g| g.id == id)
        .map(|g| g.name.to_owned())
        .unwrap_or_else(|| format!("0x{id:04x}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_offered_suite_is_in_the_registry_once_and_classified() {
        let mut seen = std::collections::HashSet::new();
        for &id in LEGACY_SUITES.iter().chain(TLS13_SUITES) {
            let s = TlsCipherSuite::from_id(id).unwrap_or_else(|| panic!("0x{id:04x} unknown"));
            assert!(seen.insert(id), "{} twice", s.name);
            assert_eq!(
                s.kx == TlsCipherKx::Tls13,
                TLS13_SUITES.contains(&id),
                "{}",
                s.name
            );
        }
        assert_eq!(weaknesses(0xc02f), []);
        assert_eq!(weaknesses(0x1301), []);
        assert_eq!(weaknesses(0xc013), [Weakness::Cbc]);
        assert_eq!(weaknesses(0x009c), [Weakness::NoForwardSecrecy]);
        assert_eq!(
            weaknesses(0x0035),
            [Weakness::NoForwardSecrecy, Weakness::Cbc]
        );
        assert_eq!(weaknesses(0xc031), [Weakness::NoForwardSecrecy]);
        for broken in [0x000a, 0x0005, 0x0003, 0x00a6, 0x003b, 0x0007] {
            assert!(
                matches!(weaknesses(broken)[..], [Weakness::Broken(_)]),
                "0x{broken:04x}"
            );
        }
        assert!(browser_tls12(0xc02b) && browser_tls12(0xc014));
        assert!(!browser_tls12(0x009c) && !browser_tls12(0x009e) && !browser_tls12(0xc0ac));
        assert_eq!(suite_name(0xc02f), "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256");
    }
}
