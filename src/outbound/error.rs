//! What can go wrong on the way to a backend, in words for the log line, and the status the
//! client gets for it.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use http::StatusCode;
use rustls::{AlertDescription, CertificateError};

/// A failed exchange with a backend. `Display` is one line in plain words, naming the backend;
/// nothing here is meant for the client, who gets [`UpstreamError::status`] and a short page.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum UpstreamError {
    /// Nothing listens on the backend's port (or socket).
    #[error("{backend}: connection refused")]
    ConnectRefused { backend: Arc<str> },
    /// No connection within `timeouts.connect` (TCP, PROXY header, TLS and HTTP/2 handshake).
    #[error("{backend}: connect timed out after {}", fmt_duration(*after))]
    ConnectTimeout { backend: Arc<str>, after: Duration },
    /// Any other failure before a request could be sent: no route, name does not resolve,
    /// socket file missing...
    #[error("{backend}: cannot connect: {detail}")]
    Connect { backend: Arc<str>, detail: String },
    /// The TLS handshake with the backend failed.
    #[error("{backend}: TLS to the backend failed: {reason}")]
    Tls {
        backend: Arc<str>,
        reason: TlsFailure,
    },
    /// Every connection to the backend that `pool.max_connections_per_backend` allows is busy,
    /// and none came free within the connect timeout.
    #[error("{backend}: all {limit} connections to the backend are busy")]
    ConnectionLimit { backend: Arc<str>, limit: usize },
    /// The backend closed (or reset) the connection before it sent a response.
    #[error("{backend}: the backend closed the connection before answering")]
    ClosedEarly { backend: Arc<str> },
    /// No response headers within `timeouts.response_header`.
    #[error("{backend}: no response headers within {}", fmt_duration(*after))]
    ResponseHeaderTimeout { backend: Arc<str>, after: Duration },
    /// The response could not be parsed or broke HTTP.
    #[error("{backend}: bad response: {detail}")]
    BadResponse { backend: Arc<str>, detail: String },
    /// Every backend is down (active checks) or ejected (passive), or all were tried.
    #[error("no healthy backend ({detail})")]
    NoHealthyBackend { detail: String },
    /// The response body stopped for longer than `timeouts.idle`.
    #[error("{backend}: the response body stalled for {}", fmt_duration(*after))]
    IdleTimeout { backend: Arc<str>, after: Duration },
    /// The exchange went past `timeouts.total`.
    #[error("{backend}: the exchange took longer than {}", fmt_duration(*after))]
    TotalTimeout { backend: Arc<str>, after: Duration },
    /// The connection broke while the response body was streaming.
    #[error("{backend}: the response body broke off: {detail}")]
    BodyBroken { backend: Arc<str>, detail: String },
    /// Sending the request body failed on the client's side (the client's body errored or
    /// went past a limit); the backend is not at fault.
    #[error("{backend}: the request body failed: {detail}")]
    RequestBody { backend: Arc<str>, detail: String },
}

impl UpstreamError {
    /// The status for the client: 503 when no backend could take the request, 504 for
    /// timeouts, 502 for everything else the backend did wrong.
    pub fn status(&self) -> StatusCode {
        match self {
            UpstreamError::NoHealthyBackend { .. } | UpstreamError::ConnectionLimit { .. } => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            UpstreamError::ConnectTimeout { .. }
            | UpstreamError::ResponseHeaderTimeout { .. }
            | UpstreamError::IdleTimeout { .. }
            | UpstreamError::TotalTimeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            UpstreamError::RequestBody { .. } => StatusCode::BAD_REQUEST,
            _ => StatusCode::BAD_GATEWAY,
        }
    }

    /// The backend concerned (`host:port` or `unix:/path`), if one was.
    pub fn backend(&self) -> Option<&str> {
        match self {
            UpstreamError::ConnectRefused { backend }
            | UpstreamError::ConnectTimeout { backend, .. }
            | UpstreamError::Connect { backend, .. }
            | UpstreamError::Tls { backend, .. }
            | UpstreamError::ConnectionLimit { backend, .. }
            | UpstreamError::ClosedEarly { backend }
            | UpstreamError::ResponseHeaderTimeout { backend, .. }
            | UpstreamError::BadResponse { backend, .. }
            | UpstreamError::IdleTimeout { backend, .. }
            | UpstreamError::TotalTimeout { backend, .. }
            | UpstreamError::BodyBroken { backend, .. }
            | UpstreamError::RequestBody { backend, .. } => Some(backend),
            UpstreamError::NoHealthyBackend { .. } => None,
        }
    }

    /// The request never reached the backend (it failed while connecting): sending it
    /// elsewhere is safe whatever its method.
    pub fn never_reached_backend(&self) -> bool {
        matches!(
            self,
            UpstreamError::ConnectRefused { .. }
                | UpstreamError::ConnectTimeout { .. }
                | UpstreamError::Connect { .. }
                | UpstreamError::Tls { .. }
                | UpstreamError::ConnectionLimit { .. }
        )
    }

    /// Counts against the backend's health (a busy pool or a client's bad body does not).
    pub(crate) fn backend_fault(&self) -> bool {
        !matches!(
            self,
            UpstreamError::ConnectionLimit { .. }
                | UpstreamError::NoHealthyBackend { .. }
                | UpstreamError::RequestBody { .. }
        )
    }
}

/// Why a TLS handshake with a backend failed, in words.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum TlsFailure {
    /// The backend's certificate has expired.
    Expired { not_after: Option<String> },
    /// The backend's certificate is not valid yet.
    NotValidYet,
    /// The backend's certificate does not name the expected server name.
    NameMismatch {
        expected: String,
        presented: Vec<String>,
    },
    /// The backend's certificate chain does not lead to a trusted root.
    UntrustedIssuer,
    /// The backend's certificate was revoked.
    Revoked,
    /// Any other certificate problem.
    BadCertificate(String),
    /// The backend refused our handshake (an alert), e.g. it wants a client certificate.
    Refused(String),
    /// Something else (protocol mismatch, no common cipher...).
    Other(String),
}

impl fmt::Display for TlsFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TlsFailure::Expired { not_after: Some(t) } => {
                write!(f, "the backend's certificate expired ({t})")
            }
            TlsFailure::Expired { not_after: None } => {
                write!(f, "the backend's certificate expired")
            }
            TlsFailure::NotValidYet => write!(f, "the backend's certificate is not valid yet"),
            TlsFailure::NameMismatch {
                expected,
                presented,
            } if presented.is_empty() => write!(
                f,
                "the backend's certificate is not valid for the name {expected} (set tls.server_name to the name it has)"
            ),
            TlsFailure::NameMismatch {
                expected,
                presented,
            } => write!(
                f,
                "the backend's certificate is not valid for the name {expected}, only for {} (set tls.server_name to the name it has)",
                presented.join(", ")
            ),
            TlsFailure::UntrustedIssuer => write!(
                f,
                "the backend's certificate is from an untrusted issuer (give its CA with tls.ca)"
            ),
            TlsFailure::Revoked => write!(f, "the backend's certificate is revoked"),
            TlsFailure::BadCertificate(s) => write!(f, "the backend's certificate is bad: {s}"),
            TlsFailure::Refused(s) => write!(f, "the backend refused the handshake: {s}"),
            TlsFailure::Other(s) => f.write_str(s),
        }
    }
}

impl TlsFailure {
    /// Maps a rustls error from a client handshake to words.
    pub fn from_rustls(e: &rustls::Error) -> TlsFailure {
        match e {
            rustls::Error::InvalidCertificate(c) => match c {
                CertificateError::Expired => TlsFailure::Expired { not_after: None },
                CertificateError::ExpiredContext { not_after, .. } => TlsFailure::Expired {
                    not_after: Some(unix_to_text(not_after.as_secs())),
                },
                CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                    TlsFailure::NotValidYet
                }
                CertificateError::NotValidForName => TlsFailure::NameMismatch {
                    expected: String::new(),
                    presented: Vec::new(),
                },
                CertificateError::NotValidForNameContext {
                    expected,
                    presented,
                } => TlsFailure::NameMismatch {
                    expected: server_name_text(expected),
                    presented: presented.iter().map(|p| presented_name(p)).collect(),
                },
                CertificateError::UnknownIssuer => TlsFailure::UntrustedIssuer,
                CertificateError::Revoked => TlsFailure::Revoked,
                other => TlsFailure::BadCertificate(format!("{other:?}")),
            },
            rustls::Error::AlertReceived(a) => TlsFailure::Refused(alert_words(*a)),
            rustls::Error::NoCertificatesPresented => {
                TlsFailure::BadCertificate("the backend sent no certificate".into())
            }
            other => TlsFailure::Other(other.to_string()),
        }
    }
}

impl TlsFailure {
    /// A TLS alert from the backend that reached us only as text: h2 keeps an I/O error's
    /// message, not the error, so a refusal after the handshake (TLS 1.3 client certificates)
    /// arrives as "received fatal alert: CertificateRequired".
    pub(crate) fn from_alert_text(text: &str) -> Option<TlsFailure> {
        const KNOWN: [AlertDescription; 13] = [
            AlertDescription::CertificateRequired,
            AlertDescription::BadCertificate,
            AlertDescription::UnknownCA,
            AlertDescription::CertificateUnknown,
            AlertDescription::CertificateExpired,
            AlertDescription::CertificateRevoked,
            AlertDescription::UnsupportedCertificate,
            AlertDescription::AccessDenied,
            AlertDescription::HandshakeFailure,
            AlertDescription::ProtocolVersion,
            AlertDescription::UnrecognisedName,
            AlertDescription::NoApplicationProtocol,
            AlertDescription::DecryptError,
        ];
        let name = text.split("received fatal alert: ").nth(1)?;
        let name = name.split(|c: char| !c.is_ascii_alphanumeric()).next()?;
        KNOWN
            .into_iter()
            .find(|a| format!("{a:?}") == name)
            .map(|a| TlsFailure::Refused(alert_words(a)))
    }
}

fn alert_words(a: AlertDescription) -> String {
    match a {
        AlertDescription::CertificateRequired => {
            "it requires a client certificate (set tls.client_cert and tls.client_key)".into()
        }
        AlertDescription::BadCertificate
        | AlertDescription::UnknownCA
        | AlertDescription::CertificateUnknown
        | AlertDescription::AccessDenied => {
            format!("it did not accept our client certificate ({a:?})")
        }
        AlertDescription::ProtocolVersion => "no common TLS version".into(),
        AlertDescription::HandshakeFailure => {
            "no common cipher suite or parameters (handshake_failure)".into()
        }
        AlertDescription::UnrecognisedName => {
            "it does not know the server name we sent (set tls.server_name)".into()
        }
        AlertDescription::NoApplicationProtocol => "no common application protocol (ALPN)".into(),
        other => format!("alert {other:?}"),
    }
}

/// rustls lists presented names as `DnsName("a.example")` / `IpAddress(10.0.0.1)`: the name
/// alone reads better in a log line.
fn presented_name(p: &str) -> String {
    for prefix in ["DnsName(", "IpAddress(", "UniformResourceIdentifier("] {
        if let Some(rest) = p.strip_prefix(prefix).and_then(|r| r.strip_suffix(')')) {
            return rest.trim_matches('"').to_string();
        }
    }
    p.to_string()
}

fn server_name_text(n: &rustls::pki_types::ServerName<'_>) -> String {
    match n {
        rustls::pki_types::ServerName::DnsName(d) => d.as_ref().to_string(),
        rustls::pki_types::ServerName::IpAddress(ip) => std::net::IpAddr::from(*ip).to_string(),
        other => format!("{other:?}"),
    }
}

fn unix_to_text(secs: u64) -> String {
    let t = std::time::UNIX_EPOCH + Duration::from_secs(secs);
    format!("not after {}", httpdate::fmt_http_date(t))
}

fn fmt_duration(d: Duration) -> String {
    humantime::format_duration(d).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses() {
        let b: Arc<str> = "10.0.0.1:80".into();
        assert_eq!(
            UpstreamError::ConnectRefused { backend: b.clone() }.status(),
            StatusCode::BAD_GATEWAY
        );
        assert_eq!(
            UpstreamError::ResponseHeaderTimeout {
                backend: b.clone(),
                after: Duration::from_secs(1)
            }
            .status(),
            StatusCode::GATEWAY_TIMEOUT
        );
        assert_eq!(
            UpstreamError::NoHealthyBackend {
                detail: "2 down".into()
            }
            .status(),
            StatusCode::SERVICE_UNAVAILABLE
        );
    }

    #[test]
    fn words() {
        let e = rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer);
        assert!(TlsFailure::from_rustls(&e)
            .to_string()
            .contains("untrusted issuer"));
        let e = rustls::Error::InvalidCertificate(CertificateError::Expired);
        assert!(TlsFailure::from_rustls(&e).to_string().contains("expired"));
        assert_eq!(presented_name("DnsName(\"a.example\")"), "a.example");
        assert_eq!(presented_name("IpAddress(10.0.0.1)"), "10.0.0.1");
        let t = TlsFailure::from_alert_text("connection error: received fatal alert: UnknownCA");
        assert!(t
            .unwrap()
            .to_string()
            .contains("did not accept our client certificate"));
        assert_eq!(TlsFailure::from_alert_text("connection reset"), None);
        let e = rustls::Error::AlertReceived(AlertDescription::CertificateRequired);
        assert!(TlsFailure::from_rustls(&e)
            .to_string()
            .contains("requires a client certificate"));
    }
}
