//! The TLS event log: one JSON line per event worth auditing — every failed handshake (who,
//! which name, what the client offered, why it failed, in plain words), plain HTTP sent to the
//! HTTPS port, certificates loaded or replaced, renewals, OCSP refreshes, expiry warnings and
//! configuration reloads.
//!
//! Written to `[log] tls_events` (a file or standard output) through [`super::logfile`]; off
//! by default. Handshake failures are rate-limited per reason ([`super::limit`]), so a flood
//! of broken handshakes yields a bounded number of lines and a count of the others. With the
//! event log off and debug logging off, a failed handshake costs one atomic load here.
//!
//! [`HandshakeFailure`] is also what other observers (metrics) count failures by: its
//! [`HandshakeFailure::label`] is a stable snake_case name.

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;

use arc_swap::ArcSwapOption;
use rustls::{AlertDescription, CertificateError, PeerIncompatible};
use serde_json::{json, Map, Value};

use super::limit::LineLimit;
use super::logfile::LogFile;

/// Why a TLS handshake (or what came before it) failed.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum HandshakeFailure {
    /// The client offers no TLS version this server accepts (e.g. TLS 1.2 only, against the
    /// `modern` profile).
    NoSharedVersion,
    /// None of the client's cipher suites is enabled here.
    NoSharedCipherSuite,
    /// None of the client's key-exchange groups is enabled here.
    NoSharedGroup,
    /// None of the client's signature schemes fits the certificate.
    NoSharedSignatureScheme,
    /// The SNI name is not one a site serves (`tls.unknown_sni = "reject"`).
    UnknownSni,
    /// The site's certificate is still being obtained.
    CertificatePending,
    /// The client refused our certificate, with this alert (`bad_certificate`, `unknown_ca`…).
    ClientRejectedCertificate(AlertDescription),
    /// The client ended the handshake with another alert.
    ClientAlert(AlertDescription),
    /// The site asks for a client certificate and the client sent none.
    ClientCertificateMissing,
    /// The client's certificate did not verify.
    ClientCertificateInvalid(String),
    /// No complete ClientHello within the handshake timeout.
    NoClientHello,
    /// The handshake did not finish within the handshake timeout.
    HandshakeTimeout,
    /// The client closed the connection during the handshake.
    ClientClosed,
    /// The first bytes were not a TLS record.
    NotTls,
    /// The client spoke plain HTTP to the HTTPS port (answered with a 400 naming https://).
    PlainHttp,
    /// The ClientHello was larger than 64 KiB.
    ClientHelloTooLarge,
    /// The client broke the TLS protocol (a malformed or unexpected message).
    ProtocolError(String),
    /// Anything else (an I/O error, an internal error), in the words of its source.
    Other(String),
}

/// Labels, in the order of [`HandshakeFailure::index`].
const LABELS: [&str; 18] = [
    "no_shared_version",
    "no_shared_cipher_suite",
    "no_shared_group",
    "no_shared_signature_scheme",
    "unknown_sni",
    "certificate_pending",
    "client_rejected_certificate",
    "client_alert",
    "client_certificate_missing",
    "client_certificate_invalid",
    "no_client_hello",
    "handshake_timeout",
    "client_closed",
    "not_tls",
    "plain_http",
    "client_hello_too_large",
    "protocol_error",
    "other",
];

impl HandshakeFailure {
    /// Every label, for exporters that list all of them up front.
    pub const LABELS: &'static [&'static str] = &LABELS;

    fn index(&self) -> usize {
        use HandshakeFailure::*;
        match self {
            NoSharedVersion => 0,
            NoSharedCipherSuite => 1,
            NoSharedGroup => 2,
            NoSharedSignatureScheme => 3,
            UnknownSni => 4,
            CertificatePending => 5,
            ClientRejectedCertificate(_) => 6,
            ClientAlert(_) => 7,
            ClientCertificateMissing => 8,
            ClientCertificateInvalid(_) => 9,
            NoClientHello => 10,
            HandshakeTimeout => 11,
            ClientClosed => 12,
            NotTls => 13,
            PlainHttp => 14,
            ClientHelloTooLarge => 15,
            ProtocolError(_) => 16,
            Other(_) => 17,
        }
    }

    /// A stable snake_case name (a log field, a metrics label).
    pub fn label(&self) -> &'static str {
        LABELS[self.index()]
    }

    /// The alert the client sent, when it ended the handshake with one.
    pub fn alert(&self) -> Option<AlertDescription> {
        match self {
            HandshakeFailure::ClientRejectedCertificate(a) | HandshakeFailure::ClientAlert(a) => {
                Some(*a)
            }
            _ => None,
        }
    }

    /// The reason a rustls error gives.
    pub fn from_rustls(e: &rustls::Error) -> Self {
        use rustls::Error as E;
        use HandshakeFailure::*;
        match e {
            E::PeerIncompatible(p) => match p {
                PeerIncompatible::NoCipherSuitesInCommon => NoSharedCipherSuite,
                PeerIncompatible::NoKxGroupsInCommon
                | PeerIncompatible::NamedGroupsExtensionRequired
                | PeerIncompatible::KeyShareExtensionRequired
                | PeerIncompatible::NoEcPointFormatsInCommon
                | PeerIncompatible::UncompressedEcPointsRequired => NoSharedGroup,
                PeerIncompatible::NoSignatureSchemesInCommon
                | PeerIncompatible::SignatureAlgorithmsExtensionRequired => NoSharedSignatureScheme,
                PeerIncompatible::Tls12NotOffered
                | PeerIncompatible::Tls12NotOfferedOrEnabled
                | PeerIncompatible::SupportedVersionsExtensionRequired
                | PeerIncompatible::ServerDoesNotSupportTls12Or13
                | PeerIncompatible::ServerTlsVersionIsDisabledByOurConfig => NoSharedVersion,
                other => ProtocolError(format!("{other:?}")),
            },
            E::AlertReceived(a) => {
                if is_certificate_alert(*a) {
                    ClientRejectedCertificate(*a)
                } else {
                    ClientAlert(*a)
                }
            }
            E::NoCertificatesPresented => ClientCertificateMissing,
            E::InvalidCertificate(c) => ClientCertificateInvalid(certificate_error(c)),
            E::InvalidMessage(_)
            | E::InappropriateMessage { .. }
            | E::InappropriateHandshakeMessage { .. }
            | E::PeerMisbehaved(_)
            | E::DecryptError => ProtocolError(e.to_string()),
            other => Other(other.to_string()),
        }
    }

    /// The reason an I/O error from a handshake gives (rustls's errors come wrapped in one).
    pub fn from_io(e: &std::io::Error) -> Self {
        if let Some(tls) = e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
            return Self::from_rustls(tls);
        }
        use std::io::ErrorKind::*;
        match e.kind() {
            UnexpectedEof | ConnectionReset | ConnectionAborted | BrokenPipe => {
                HandshakeFailure::ClientClosed
            }
            _ => HandshakeFailure::Other(e.to_string()),
        }
    }
}

impl fmt::Display for HandshakeFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use HandshakeFailure::*;
        match self {
            NoSharedVersion => {
                f.write_str("no shared TLS version: the client offers none this server accepts")
            }
            NoSharedCipherSuite => f.write_str("no shared cipher suite"),
            NoSharedGroup => f.write_str("no shared key-exchange group"),
            NoSharedSignatureScheme => {
                f.write_str("no shared signature scheme for the certificate")
            }
            UnknownSni => f.write_str("unknown SNI name: no site serves it"),
            CertificatePending => f.write_str("the site's certificate is still being obtained"),
            ClientRejectedCertificate(a) => write!(
                f,
                "the client rejected our certificate (alert {})",
                alert_name(*a)
            ),
            ClientAlert(a) => write!(
                f,
                "the client ended the handshake (alert {})",
                alert_name(*a)
            ),
            ClientCertificateMissing => f.write_str("client certificate missing"),
            ClientCertificateInvalid(why) => write!(f, "client certificate invalid: {why}"),
            NoClientHello => f.write_str("timeout: no ClientHello"),
            HandshakeTimeout => f.write_str("timeout: the handshake did not finish"),
            ClientClosed => f.write_str("the client closed the connection"),
            NotTls => f.write_str("not TLS at all"),
            PlainHttp => f.write_str("plain HTTP sent to the HTTPS port"),
            ClientHelloTooLarge => f.write_str("ClientHello too large (over 64 KiB)"),
            ProtocolError(why) => write!(f, "TLS protocol error: {why}"),
            Other(why) => f.write_str(why),
        }
    }
}

/// Alerts by which a client says it does not accept the certificate it was shown.
pub fn is_certificate_alert(a: AlertDescription) -> bool {
    matches!(
        a,
        AlertDescription::BadCertificate
            | AlertDescription::UnsupportedCertificate
            | AlertDescription::CertificateRevoked
            | AlertDescription::CertificateExpired
            | AlertDescription::CertificateUnknown
            | AlertDescription::UnknownCA
            | AlertDescription::BadCertificateStatusResponse
            | AlertDescription::BadCertificateHashValue
    )
}

fn certificate_error(c: &CertificateError) -> String {
    match c {
        CertificateError::Expired => "expired".into(),
        CertificateError::NotValidYet => "not valid yet".into(),
        CertificateError::Revoked => "revoked".into(),
        CertificateError::UnknownIssuer => "unknown issuer".into(),
        CertificateError::BadSignature => "bad signature".into(),
        other => format!("{other:?}"),
    }
}

/// An alert's IANA name (RFC 8446 §6): `bad_certificate`, `unknown_ca`…
pub fn alert_name(a: AlertDescription) -> String {
    let name = match u8::from(a) {
        0 => "close_notify",
        10 => "unexpected_message",
        20 => "bad_record_mac",
        21 => "decryption_failed",
        22 => "record_overflow",
        30 => "decompression_failure",
        40 => "handshake_failure",
        41 => "no_certificate",
        42 => "bad_certificate",
        43 => "unsupported_certificate",
        44 => "certificate_revoked",
        45 => "certificate_expired",
        46 => "certificate_unknown",
        47 => "illegal_parameter",
        48 => "unknown_ca",
        49 => "access_denied",
        50 => "decode_error",
        51 => "decrypt_error",
        60 => "export_restriction",
        70 => "protocol_version",
        71 => "insufficient_security",
        80 => "internal_error",
        86 => "inappropriate_fallback",
        90 => "user_canceled",
        100 => "no_renegotiation",
        109 => "missing_extension",
        110 => "unsupported_extension",
        111 => "certificate_unobtainable",
        112 => "unrecognized_name",
        113 => "bad_certificate_status_response",
        114 => "bad_certificate_hash_value",
        115 => "unknown_psk_identity",
        116 => "certificate_required",
        120 => "no_application_protocol",
        121 => "encrypted_client_hello_required",
        n => return format!("alert_{n}"),
    };
    name.to_owned()
}

/// What a ClientHello offered, read from its raw bytes (rustls's `ClientHello` does not show
/// the versions).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Offered {
    /// `supported_versions`, or the legacy version field without it.
    pub versions: Vec<u16>,
    /// `supported_groups`.
    pub groups: Vec<u16>,
    /// Cipher suites.
    pub ciphers: Vec<u16>,
    /// ALPN protocols.
    pub alpn: Vec<String>,
}

/// GREASE values (RFC 8701) say nothing about the client.
fn grease(v: u16) -> bool {
    v & 0x0f0f == 0x0a0a && (v >> 8) == (v & 0xff)
}

/// Reads the offers of the first ClientHello record in `raw` (a record header, then the
/// handshake message). `None` when it is not one or is cut short before the extensions.
pub fn parse_offered(raw: &[u8]) -> Option<Offered> {
    struct Cur<'a>(&'a [u8]);
    impl<'a> Cur<'a> {
        fn take(&mut self, n: usize) -> Option<&'a [u8]> {
            if self.0.len() < n {
                return None;
            }
            let (a, b) = self.0.split_at(n);
            self.0 = b;
            Some(a)
        }
        fn u8(&mut self) -> Option<usize> {
            self.take(1).map(|b| usize::from(b[0]))
        }
        fn u16(&mut self) -> Option<usize> {
            self.take(2)
                .map(|b| usize::from(u16::from_be_bytes([b[0], b[1]])))
        }
        fn vec8(&mut self) -> Option<&'a [u8]> {
            let n = self.u8()?;
            self.take(n)
        }
        fn vec16(&mut self) -> Option<&'a [u8]> {
            let n = self.u16()?;
            self.take(n)
        }
    }
    fn u16s(b: &[u8]) -> Vec<u16> {
        b.chunks_exact(2)
            .map(|c| u16::from_be_bytes([c[0], c[1]]))
            .filter(|v| !grease(*v))
            .collect()
    }
    let mut c = Cur(raw);
    if c.u8()? != 0x16 {
        return None;
    }
    c.take(4)?; // record version and length (the record may continue in a later read)
    if c.u8()? != 1 {
        return None;
    }
    c.take(3)?;
    let legacy = c.u16()? as u16;
    c.take(32)?;
    c.vec8()?;
    let ciphers = u16s(c.vec16()?);
    c.vec8()?;
    let mut out = Offered {
        versions: vec![legacy],
        ciphers,
        ..Offered::default()
    };
    let Some(exts) = c.vec16() else {
        return Some(out);
    };
    let mut e = Cur(exts);
    while let (Some(kind), Some(body)) = (e.u16(), e.vec16()) {
        let mut b = Cur(body);
        match kind {
            0x002b => {
                if let Some(v) = b.vec8() {
                    out.versions = u16s(v);
                }
            }
            0x000a => {
                if let Some(v) = b.vec16() {
                    out.groups = u16s(v);
                }
            }
            0x0010 => {
                if let Some(list) = b.vec16() {
                    let mut l = Cur(list);
                    while let Some(p) = l.vec8() {
                        out.alpn.push(String::from_utf8_lossy(p).into_owned());
                    }
                }
            }
            _ => {}
        }
    }
    Some(out)
}

/// A protocol version's name (`TLSv1.3`), as access logs write it.
pub fn version_name(v: u16) -> String {
    match v {
        0x0304 => "TLSv1.3".into(),
        0x0303 => "TLSv1.2".into(),
        0x0302 => "TLSv1.1".into(),
        0x0301 => "TLSv1".into(),
        0x0300 => "SSLv3".into(),
        other => format!("0x{other:04x}"),
    }
}

/// A named group's name (`X25519MLKEM768`, `secp256r1`), or its number.
pub fn group_name(g: u16) -> String {
    match rustls::NamedGroup::from(g).as_str() {
        Some(n) => n.to_owned(),
        None => format!("0x{g:04x}"),
    }
}

/// A cipher suite's name, or its number.
pub fn cipher_name(s: u16) -> String {
    match rustls::CipherSuite::from(s).as_str() {
        Some(n) => n.to_owned(),
        None => format!("0x{s:04x}"),
    }
}

/// The event log's file, when `[log] tls_events` is on. Process-wide: background tasks (ACME,
/// OCSP, expiry) write events without a handle on the running configuration.
static EVENTS: ArcSwapOption<LogFile> = ArcSwapOption::const_empty();

/// Sets where events go (at start; a reload sets the new configuration's file).
pub fn install(file: Option<Arc<LogFile>>) {
    EVENTS.store(file);
}

/// Whether the event log is on (ClientHello bytes are only kept for it).
pub fn enabled() -> bool {
    EVENTS.load().is_some()
}

/// Writes one event: `time` and `event` first, then `fields`.
fn emit(event: &str, fields: Value) {
    let guard = EVENTS.load();
    let Some(file) = guard.as_ref() else { return };
    file.write(event_line(event, fields));
}

fn event_line(event: &str, fields: Value) -> Vec<u8> {
    let mut m = Map::new();
    m.insert(
        "time".into(),
        Value::String(super::access::rfc3339(std::time::SystemTime::now())),
    );
    m.insert("event".into(), Value::String(event.into()));
    if let Value::Object(f) = fields {
        m.extend(f);
    }
    let mut line = serde_json::to_vec(&Value::Object(m)).unwrap_or_default();
    line.push(b'\n');
    line
}

/// A suppressed-lines summary of a handshake failure reason.
fn report_suppressed(cause: &'static str, count: u64, seconds: u64) {
    if enabled() {
        emit(
            "suppressed",
            json!({
                "cause": cause,
                "count": count,
                "seconds": seconds,
                "message": format!("{count} similar lines suppressed in the last {seconds} s"),
            }),
        );
    } else {
        super::limit::report_to_log(cause, count, seconds);
    }
}

/// One budget per reason (see [`LABELS`]).
static LIMITS: [LineLimit; 18] = [
    LineLimit::new("handshake_failed: no_shared_version", report_suppressed),
    LineLimit::new(
        "handshake_failed: no_shared_cipher_suite",
        report_suppressed,
    ),
    LineLimit::new("handshake_failed: no_shared_group", report_suppressed),
    LineLimit::new(
        "handshake_failed: no_shared_signature_scheme",
        report_suppressed,
    ),
    LineLimit::new("handshake_failed: unknown_sni", report_suppressed),
    LineLimit::new("handshake_failed: certificate_pending", report_suppressed),
    LineLimit::new(
        "handshake_failed: client_rejected_certificate",
        report_suppressed,
    ),
    LineLimit::new("handshake_failed: client_alert", report_suppressed),
    LineLimit::new(
        "handshake_failed: client_certificate_missing",
        report_suppressed,
    ),
    LineLimit::new(
        "handshake_failed: client_certificate_invalid",
        report_suppressed,
    ),
    LineLimit::new("handshake_failed: no_client_hello", report_suppressed),
    LineLimit::new("handshake_failed: handshake_timeout", report_suppressed),
    LineLimit::new("handshake_failed: client_closed", report_suppressed),
    LineLimit::new("handshake_failed: not_tls", report_suppressed),
    LineLimit::new("handshake_failed: plain_http", report_suppressed),
    LineLimit::new(
        "handshake_failed: client_hello_too_large",
        report_suppressed,
    ),
    LineLimit::new("handshake_failed: protocol_error", report_suppressed),
    LineLimit::new("handshake_failed: other", report_suppressed),
];

/// A failed handshake: an event (when the event log is on) and a debug line, both limited per
/// reason. `hello`: the raw ClientHello, when it was kept (event log on). Every failed
/// handshake of the HTTPS listeners and of `[[stream]]` services passes here: the one place
/// to count failures by [`HandshakeFailure::label`] (before the early return below).
pub fn handshake_failed(
    peer: SocketAddr,
    sni: Option<&str>,
    failure: &HandshakeFailure,
    hello: Option<&[u8]>,
) {
    crate::ops::metrics::handshake_failed(failure.label(), peer, sni, failure);
    let events = EVENTS.load();
    let debug = tracing::enabled!(tracing::Level::DEBUG);
    if events.is_none() && !debug {
        return;
    }
    if !LIMITS[failure.index()].admit() {
        return;
    }
    if debug {
        tracing::debug!(%peer, sni = sni.unwrap_or(""), reason = failure.label(), "TLS handshake failed: {failure}");
    }
    let Some(file) = events.as_ref() else { return };
    let mut f = json!({
        "client": peer.to_string(),
        "sni": sni,
        "reason": failure.label(),
        "detail": failure.to_string(),
    });
    if let Some(a) = failure.alert() {
        f["alert"] = Value::String(alert_name(a));
    }
    if let Some(offered) = hello.and_then(parse_offered) {
        f["offered_versions"] = offered.versions.iter().map(|v| version_name(*v)).collect();
        f["offered_groups"] = offered.groups.iter().map(|g| group_name(*g)).collect();
        f["offered_cipher_suites"] = offered.ciphers.iter().map(|c| cipher_name(*c)).collect();
        f["offered_alpn"] = offered.alpn.iter().cloned().collect();
    }
    file.write(event_line("handshake_failed", f));
}

/// Where a certificate came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CertSource {
    /// `cert`/`key` files.
    File,
    /// The ACME CA.
    Acme,
    /// The local CA.
    LocalCa,
    /// Obtained at a first handshake (on-demand TLS).
    OnDemand,
}

impl CertSource {
    fn as_str(self) -> &'static str {
        match self {
            CertSource::File => "file",
            CertSource::Acme => "acme",
            CertSource::LocalCa => "local_ca",
            CertSource::OnDemand => "on_demand",
        }
    }
}

/// A certificate was loaded (at start) or replaced one served before (`replaced`).
pub fn certificate_loaded(
    site: &str,
    source: CertSource,
    names: &[String],
    not_after: i64,
    replaced: bool,
) {
    if !enabled() {
        return;
    }
    emit(
        if replaced {
            "certificate_replaced"
        } else {
            "certificate_loaded"
        },
        json!({
            "site": site,
            "source": source.as_str(),
            "names": names,
            "not_after": super::access::rfc3339_secs(not_after),
        }),
    );
}

/// A certificate renewal (ACME, local CA) finished: `ok`, or failed with `detail`.
pub fn renewal(site: &str, source: CertSource, ok: bool, detail: &str) {
    emit(
        "renewal",
        json!({ "site": site, "source": source.as_str(), "ok": ok, "detail": detail }),
    );
}

/// An OCSP response was fetched (`ok`) or could not be (`detail` says why).
pub fn ocsp_refresh(site: &str, subject: &str, ok: bool, detail: &str) {
    emit(
        "ocsp_refresh",
        json!({ "site": site, "subject": subject, "ok": ok, "detail": detail }),
    );
}

/// A served certificate is near its end (`days_left` ≤ a threshold) or past it (negative).
pub fn expiry_warning(site: &str, subject: &str, days_left: i64, not_after: i64) {
    emit(
        "expiry_warning",
        json!({
            "site": site,
            "subject": subject,
            "days_left": days_left,
            "not_after": super::access::rfc3339_secs(not_after),
        }),
    );
}

/// A configuration reload: applied (`ok`) or refused, with what happened in `detail`.
pub fn reload_event(ok: bool, detail: &str) {
    emit("reload", json!({ "ok": ok, "detail": detail }));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_stable_and_distinct() {
        let all = [
            HandshakeFailure::NoSharedVersion,
            HandshakeFailure::ClientRejectedCertificate(AlertDescription::UnknownCA),
            HandshakeFailure::PlainHttp,
            HandshakeFailure::Other("x".into()),
        ];
        let labels: Vec<_> = all.iter().map(|f| f.label()).collect();
        assert_eq!(
            labels,
            [
                "no_shared_version",
                "client_rejected_certificate",
                "plain_http",
                "other"
            ]
        );
        let mut sorted = LABELS.to_vec();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted.len(), LABELS.len());
        assert_eq!(
            HandshakeFailure::ClientRejectedCertificate(AlertDescription::UnknownCA).to_string(),
            "the client rejected our certificate (alert unknown_ca)"
        );
    }

    #[test]
    fn rustls_errors_map_to_reasons() {
        let r = |e: rustls::Error| HandshakeFailure::from_rustls(&e).label();
        assert_eq!(
            r(rustls::Error::PeerIncompatible(
                PeerIncompatible::NoCipherSuitesInCommon
            )),
            "no_shared_cipher_suite"
        );
        assert_eq!(
            r(rustls::Error::AlertReceived(
                AlertDescription::BadCertificate
            )),
            "client_rejected_certificate"
        );
        assert_eq!(
            r(rustls::Error::AlertReceived(AlertDescription::UserCanceled)),
            "client_alert"
        );
        assert_eq!(
            r(rustls::Error::NoCertificatesPresented),
            "client_certificate_missing"
        );
    }

    #[test]
    fn offered_from_raw_hello() {
        // A TLS 1.3 ClientHello: supported_versions [GREASE, 1.3, 1.2], groups [x25519, P-256],
        // ALPN [h2].
        let mut exts = Vec::new();
        exts.extend([
            0x00, 0x2b, 0x00, 0x07, 0x06, 0x3a, 0x3a, 0x03, 0x04, 0x03, 0x03,
        ]);
        exts.extend([0x00, 0x0a, 0x00, 0x06, 0x00, 0x04, 0x00, 0x1d, 0x00, 0x17]);
        exts.extend([0x00, 0x10, 0x00, 0x05, 0x00, 0x03, 0x02, b'h', b'2']);
        let mut body = vec![0x03, 0x03];
        body.extend([0u8; 32]);
        body.push(0);
        body.extend([0x00, 0x02, 0x13, 0x01]);
        body.extend([0x01, 0x00]);
        body.extend((exts.len() as u16).to_be_bytes());
        body.extend(exts);
        let mut raw = vec![0x16, 0x03, 0x01];
        raw.extend(((body.len() + 4) as u16).to_be_bytes());
        raw.push(1);
        raw.extend(&(body.len() as u32).to_be_bytes()[1..]);
        raw.extend(body);
        let o = parse_offered(&raw).unwrap();
        assert_eq!(o.versions, [0x0304, 0x0303]);
        assert_eq!(o.groups, [0x001d, 0x0017]);
        assert_eq!(o.ciphers, [0x1301]);
        assert_eq!(o.alpn, ["h2"]);
        assert_eq!(group_name(0x001d), "X25519");
        // Cut anywhere: no panic.
        for n in 0..raw.len() {
            let _ = parse_offered(&raw[..n]);
        }
        assert_eq!(parse_offered(b"GET / HTTP/1.1\r\n"), None);
    }
}
