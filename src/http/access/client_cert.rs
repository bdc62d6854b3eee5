//! The client certificate of a mutual-TLS connection, as request handling sees it, and the
//! request fields that carry it to a backend.
//!
//! The certificate has been verified by the site's `client_auth` (rustls's
//! `WebPkiClientVerifier`) before a [`ClientCert`] exists: the server parses it once per
//! connection, right after the handshake (or after a resumption, which carries the
//! certificate of the original handshake), and shares it with every request of the connection.

use std::time::SystemTime;

use http::{HeaderName, HeaderValue};
use percent_encoding::{utf8_percent_encode, AsciiSet, CONTROLS};
use sha2::{Digest, Sha256};
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

/// `X-Client-Cert-Subject`: the subject's distinguished name, e.g. `CN=alice, O=Example`.
pub const SUBJECT: HeaderName = HeaderName::from_static("x-client-cert-subject");
/// `X-Client-Cert-SAN`: the subject alternative names, comma-separated, each with its type:
/// `DNS:host.example, IP:10.0.0.1, email:alice@example.com, URI:spiffe://example/alice`.
pub const SAN: HeaderName = HeaderName::from_static("x-client-cert-san");
/// `X-Client-Cert-Serial`: the serial number, upper-case hex with colons (as openssl prints it).
pub const SERIAL: HeaderName = HeaderName::from_static("x-client-cert-serial");
/// `X-Client-Cert-Fingerprint`: SHA-256 of the certificate (DER), 64 lower-case hex digits.
pub const FINGERPRINT: HeaderName = HeaderName::from_static("x-client-cert-fingerprint");
/// `X-Client-Cert-Not-After`: the end of the certificate's validity, as an HTTP date.
pub const NOT_AFTER: HeaderName = HeaderName::from_static("x-client-cert-not-after");
/// `X-Client-Cert-Verified`: `SUCCESS` (a certificate was presented and verified) or `NONE`.
pub const VERIFIED: HeaderName = HeaderName::from_static("x-client-cert-verified");

/// Every field [`forward_headers`] may set. A proxy removes all of them from the client's
/// request before adding its own, so a client can never forge them.
pub const CLIENT_CERT_HEADERS: [HeaderName; 6] =
    [SUBJECT, SAN, SERIAL, FINGERPRINT, NOT_AFTER, VERIFIED];

/// Bytes escaped in field values: control characters, non-ASCII (as UTF-8 octets) and `%`
/// itself, so that every value is a valid, unambiguous header value.
const ESCAPED: &AsciiSet = &CONTROLS.add(b'%');

/// A verified client certificate, parsed once per connection.
#[derive(Debug, Clone)]
pub struct ClientCert {
    /// The subject's distinguished name (attributes in certificate order, `, `-separated);
    /// empty when the certificate could not be parsed.
    pub subject: String,
    /// Subject alternative names with their type prefix (`DNS:`, `IP:`, `email:`, `URI:`,
    /// `DirName:`, `other`).
    pub sans: Vec<String>,
    /// Serial number, upper-case hex bytes joined by `:`.
    pub serial: String,
    /// SHA-256 of the DER certificate.
    pub fingerprint: [u8; 32],
    /// End of validity (`None`: not parsable).
    pub not_after: Option<SystemTime>,
    /// The header fields, made once (each request only clones them).
    fields: Vec<(HeaderName, HeaderValue)>,
}

impl ClientCert {
    /// Parses a client's end-entity certificate (DER). Never fails: the certificate has
    /// passed webpki's verification, and should x509-parser still refuse it, the fingerprint
    /// (which needs no parsing) is kept and the other fields are empty.
    pub fn from_der(der: &[u8]) -> ClientCert {
        let fingerprint: [u8; 32] = Sha256::digest(der).into();
        let (subject, sans, serial, not_after) = match X509Certificate::from_der(der) {
            Ok((_, cert)) => {
                let sans = cert
                    .subject_alternative_name()
                    .ok()
                    .flatten()
                    .map(|ext| ext.value.general_names.iter().map(general_name).collect())
                    .unwrap_or_default();
                let serial = cert
                    .raw_serial()
                    .iter()
                    .map(|b| format!("{b:02X}"))
                    .collect::<Vec<_>>()
                    .join(":");
                let ts = cert.validity().not_after.timestamp();
                let not_after = u64::try_from(ts)
                    .ok()
                    .map(|s| SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(s));
                (cert.subject().to_string(), sans, serial, not_after)
            }
            Err(e) => {
                tracing::debug!(error = %e, "verified client certificate not parsable: only its fingerprint is passed on");
                (String::new(), Vec::new(), String::new(), None)
            }
        };
        let mut cert = ClientCert {
            subject,
            sans,
            serial,
            fingerprint,
            not_after,
            fields: Vec::new(),
        };
        cert.fields = cert.make_fields();
        cert
    }

    /// The fingerprint as 64 lower-case hex digits.
    pub fn fingerprint_hex(&self) -> String {
        self.fingerprint
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    fn make_fields(&self) -> Vec<(HeaderName, HeaderValue)> {
        let mut out = Vec::with_capacity(5);
        let mut push = |name: HeaderName, value: &str| {
            let escaped = utf8_percent_encode(value, ESCAPED).to_string();
            // Escaped: visible ASCII and spaces only, always a valid value.
            if let Ok(v) = HeaderValue::from_str(&escaped) {
                out.push((name, v));
            }
        };
        push(SUBJECT, &self.subject);
        push(SAN, &self.sans.join(", "));
        push(SERIAL, &self.serial);
        push(FINGERPRINT, &self.fingerprint_hex());
        if let Some(t) = self.not_after {
            push(NOT_AFTER, &httpdate::fmt_http_date(t));
        }
        out
    }
}

fn general_name(n: &GeneralName<'_>) -> String {
    match n {
        GeneralName::DNSName(s) => format!("DNS:{s}"),
        GeneralName::RFC822Name(s) => format!("email:{s}"),
        GeneralName::URI(s) => format!("URI:{s}"),
        GeneralName::IPAddress(b) => match b.len() {
            4 => format!("IP:{}", std::net::Ipv4Addr::from([b[0], b[1], b[2], b[3]])),
            16 => {
                let mut a = [0u8; 16];
                a.copy_from_slice(b);
                format!("IP:{}", std::net::Ipv6Addr::from(a))
            }
            _ => "IP:?".to_string(),
        },
        GeneralName::DirectoryName(d) => format!("DirName:{d}"),
        other => format!("{other:?}"),
    }
}

/// The request fields that tell a backend who the client is: for a verified certificate its
/// subject, SANs, serial, fingerprint, not-after and `X-Client-Cert-Verified: SUCCESS`;
/// without one only `X-Client-Cert-Verified: NONE`. Callers remove [`CLIENT_CERT_HEADERS`]
/// from the incoming request first.
pub fn forward_headers(
    cert: Option<&ClientCert>,
) -> impl Iterator<Item = (HeaderName, HeaderValue)> + '_ {
    let verified = if cert.is_some() {
        HeaderValue::from_static("SUCCESS")
    } else {
        HeaderValue::from_static("NONE")
    };
    cert.into_iter()
        .flat_map(|c| c.fields.iter().cloned())
        .chain(std::iter::once((VERIFIED, verified)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert() -> (Vec<u8>, ClientCert) {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = rcgen::CertificateParams::new(vec![
            "alice.example".to_string(),
            "10.0.0.1".to_string(),
        ])
        .unwrap();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "Alice Ünïcode");
        params
            .distinguished_name
            .push(rcgen::DnType::OrganizationName, "Example");
        params.subject_alt_names.push(rcgen::SanType::Rfc822Name(
            "alice@example.com".try_into().unwrap(),
        ));
        params.serial_number = Some(rcgen::SerialNumber::from_slice(&[0x01, 0xab, 0x7f]));
        params.not_after = rcgen::date_time_ymd(2031, 5, 6);
        let c = params.self_signed(&key).unwrap();
        let der = c.der().to_vec();
        let parsed = ClientCert::from_der(&der);
        (der, parsed)
    }

    fn field<'a>(h: &'a [(HeaderName, HeaderValue)], name: &HeaderName) -> Option<&'a str> {
        h.iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.to_str().unwrap())
    }

    #[test]
    fn a_certificate_gives_every_field_and_success() {
        let (der, c) = cert();
        let h: Vec<_> = forward_headers(Some(&c)).collect();
        assert_eq!(h.len(), 6, "{h:?}");
        assert_eq!(
            field(&h, &SUBJECT),
            Some("CN=Alice %C3%9Cn%C3%AFcode, O=Example")
        );
        assert_eq!(
            field(&h, &SAN),
            Some("DNS:alice.example, IP:10.0.0.1, email:alice@example.com")
        );
        assert_eq!(field(&h, &SERIAL), Some("01:AB:7F"));
        let want: String = Sha256::digest(&der)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(field(&h, &FINGERPRINT), Some(want.as_str()));
        assert_eq!(field(&h, &NOT_AFTER), Some("Tue, 06 May 2031 00:00:00 GMT"));
        assert_eq!(field(&h, &VERIFIED), Some("SUCCESS"));
        for (n, _) in &h {
            assert!(CLIENT_CERT_HEADERS.contains(n), "{n} not in the strip list");
        }
    }

    #[test]
    fn no_certificate_gives_only_verified_none() {
        let h: Vec<_> = forward_headers(None).collect();
        assert_eq!(h, vec![(VERIFIED, HeaderValue::from_static("NONE"))]);
    }

    #[test]
    fn an_unparsable_certificate_keeps_its_fingerprint() {
        let c = ClientCert::from_der(b"not a certificate");
        let h: Vec<_> = forward_headers(Some(&c)).collect();
        assert_eq!(field(&h, &FINGERPRINT).map(str::len), Some(64));
        assert_eq!(field(&h, &VERIFIED), Some("SUCCESS"));
        assert_eq!(field(&h, &NOT_AFTER), None);
    }
}
