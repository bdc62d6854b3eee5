//! ACME Renewal Information (ARI, RFC 9773) and the renewal schedule.
//!
//! A CA that lists `renewalInfo` in its directory tells, per certificate, the window in which it
//! wants it renewed (earlier than usual when it must revoke, for instance). The manager asks at
//! the times the CA's `Retry-After` names (clamped to [`ARI_RECHECK_MIN`] ..
//! [`ARI_RECHECK_MAX`]), picks a uniformly random time inside the window and, when renewing,
//! names the certificate it replaces in the order. Whenever ARI is not available or its answer
//! is unusable, the lifetime rule decides: two thirds into the lifetime, with a random jitter of
//! ±[`LIFETIME_JITTER_DIVISOR`]th of the lifetime so that many certificates issued together do
//! not all renew in the same second.
//!
//! The ARI request is a plain unauthenticated GET, made here with our own HTTP client so that an
//! HTTP error is reported with its status and the CA's problem detail.

use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use x509_parser::prelude::{FromDer, ParsedExtension, X509Certificate};

/// Shortest wait before asking the CA's ARI again, whatever its `Retry-After` says.
pub const ARI_RECHECK_MIN: i64 = 3600;
/// Longest wait before asking the CA's ARI again (RFC 9773 §4.3.2 asks for at least daily).
pub const ARI_RECHECK_MAX: i64 = 24 * 3600;
/// Wait before asking again when the CA sent no `Retry-After`, or when ARI failed.
pub const ARI_RECHECK_DEFAULT: i64 = 6 * 3600;
/// The lifetime rule's jitter: ± lifetime / 50 (±2 %: ±1.8 days of a 90-day certificate,
/// ±2.9 hours of a 6-day one). The renewal time stays between 64.7 % and 68.7 % of the
/// lifetime, far from expiry.
pub const LIFETIME_JITTER_DIVISOR: i64 = 50;
/// An ARI-chosen time is never later than this fraction of the lifetime before expiry (1/10:
/// 9 days of a 90-day certificate, 14 hours of a 6-day one), leaving room for retries.
pub const ARI_SAFETY_DIVISOR: i64 = 10;

/// Longest a directory or renewalInfo request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// A uniformly random integer in `lo..=hi` (`lo` when the range is empty).
pub fn random_in(lo: i64, hi: i64) -> i64 {
    if hi <= lo {
        return lo;
    }
    let mut b = [0u8; 8];
    if aws_lc_rs::rand::fill(&mut b).is_err() {
        // No randomness: the middle of the range is a fine, deterministic choice.
        return lo + (hi - lo) / 2;
    }
    let span = (hi - lo) as u128 + 1;
    // 64 random bits modulo a span far below 2^64: the bias is negligible.
    lo + (u64::from_le_bytes(b) as u128 % span) as i64
}

/// The lifetime rule: two thirds into `not_before..not_after`, jittered by ± lifetime / 50.
pub fn lifetime_time(not_before: i64, not_after: i64) -> i64 {
    let life = (not_after - not_before).max(0);
    let base = not_after - life / 3;
    let j = life / LIFETIME_JITTER_DIVISOR;
    random_in(base - j, base + j)
}

/// The time inside an ARI window to renew at (RFC 9773 §4.3.2): a uniformly random time in
/// `start..=end`, or now when that is past; never later than a tenth of the lifetime before
/// expiry. A window that is malformed or ends after the certificate expires is refused with the
/// reason (the lifetime rule then decides).
pub fn ari_time(window: &Window, not_before: i64, not_after: i64, now: i64) -> Result<i64, String> {
    if window.end <= window.start {
        return Err(format!(
            "malformed renewal window: it ends ({}) before it starts ({})",
            crate::tls::certs::fmt_time(window.end),
            crate::tls::certs::fmt_time(window.start)
        ));
    }
    if window.end > not_after {
        return Err(format!(
            "the renewal window ends {}, after the certificate expires ({})",
            crate::tls::certs::fmt_time(window.end),
            crate::tls::certs::fmt_time(not_after)
        ));
    }
    let safe = not_after - (not_after - not_before).max(0) / ARI_SAFETY_DIVISOR;
    Ok(random_in(window.start, window.end).min(safe).max(now))
}

/// Seconds until the next ARI request, from the CA's `Retry-After` (seconds), clamped.
pub fn recheck_in(retry_after: Option<i64>) -> i64 {
    retry_after
        .unwrap_or(ARI_RECHECK_DEFAULT)
        .clamp(ARI_RECHECK_MIN, ARI_RECHECK_MAX)
}

/// The ARI certificate identifier (RFC 9773 §4.1): base64url of the leaf's Authority Key
/// Identifier `keyIdentifier`, a dot, base64url of the DER serial number's content octets.
pub fn cert_id(leaf_der: &[u8]) -> Result<String, String> {
    use base64::Engine;
    let (_, cert) = X509Certificate::from_der(leaf_der)
        .map_err(|e| format!("cannot parse the certificate: {e}"))?;
    let aki = cert
        .iter_extensions()
        .find_map(|ext| match ext.parsed_extension() {
            ParsedExtension::AuthorityKeyIdentifier(aki) => aki.key_identifier.as_ref(),
            _ => None,
        })
        .ok_or("the certificate has no Authority Key Identifier")?;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    Ok(format!(
        "{}.{}",
        b64.encode(aki.0),
        b64.encode(cert.tbs_certificate.raw_serial())
    ))
}

/// A suggested renewal window, Unix times.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Window {
    /// Start of the window (Unix time).
    pub start: i64,
    /// End of the window (Unix time).
    pub end: i64,
    /// The CA's page explaining the window, if it gave one.
    pub explanation: Option<String>,
}

/// What a CA's directory says about the extensions used here.
#[derive(Debug, Clone, Default)]
pub struct CaInfo {
    /// The `renewalInfo` URL, when the CA offers ARI.
    pub renewal_info: Option<String>,
    /// The profiles of `meta.profiles`, sorted (empty: the CA advertises none).
    pub profiles: Vec<String>,
}

/// An HTTPS client for directories and renewalInfo, trusting `ca_root` (when set) or the
/// WebPKI roots.
#[derive(Clone)]
pub struct AriHttp {
    client: Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>,
}

impl std::fmt::Debug for AriHttp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AriHttp")
    }
}

impl AriHttp {
    /// The client; fails when `ca_root` holds no usable certificate.
    pub fn new(ca_root: Option<&Path>) -> Result<Self, String> {
        use rustls_pki_types::pem::PemObject;
        let mut roots = rustls::RootCertStore::empty();
        match ca_root {
            Some(path) => {
                let certs = rustls_pki_types::CertificateDer::pem_file_iter(path)
                    .map_err(|e| format!("acme.ca_root {}: {e}", path.display()))?;
                for c in certs {
                    let c = c.map_err(|e| format!("acme.ca_root {}: {e}", path.display()))?;
                    roots
                        .add(c)
                        .map_err(|e| format!("acme.ca_root {}: {e}", path.display()))?;
                }
            }
            None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
        }
        let tls = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_only()
            .enable_http1()
            .build();
        Ok(AriHttp {
            client: Client::builder(TokioExecutor::new()).build(connector),
        })
    }

    /// GET `url`: status, `Retry-After` (seconds from now) and body.
    async fn get(&self, url: &str) -> Result<(u16, Option<i64>, Bytes), String> {
        let req = http::Request::get(url)
            .header(http::header::USER_AGENT, "portcullis")
            .body(Full::new(Bytes::new()))
            .map_err(|e| format!("bad URL {url}: {e}"))?;
        let resp = tokio::time::timeout(REQUEST_TIMEOUT, async {
            let resp = self
                .client
                .request(req)
                .await
                .map_err(|e| error_chain(&e))?;
            let status = resp.status().as_u16();
            let retry_after = resp
                .headers()
                .get(http::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(parse_retry_after);
            let body = resp
                .into_body()
                .collect()
                .await
                .map_err(|e| e.to_string())?
                .to_bytes();
            Ok::<_, String>((status, retry_after, body))
        })
        .await
        .map_err(|_| format!("no answer within {} s", REQUEST_TIMEOUT.as_secs()))??;
        Ok(resp)
    }

    /// The CA's directory at `url`: its renewalInfo URL and profiles.
    pub async fn directory(&self, url: &str) -> Result<CaInfo, String> {
        let (status, _, body) = self.get(url).await?;
        if status != 200 {
            return Err(format!("directory: {}", http_problem(status, &body)));
        }
        #[derive(serde::Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Dir {
            renewal_info: Option<String>,
            #[serde(default)]
            meta: Meta,
        }
        #[derive(serde::Deserialize, Default)]
        struct Meta {
            #[serde(default)]
            profiles: std::collections::BTreeMap<String, serde_json::Value>,
        }
        let dir: Dir =
            serde_json::from_slice(&body).map_err(|e| format!("directory is not ACME: {e}"))?;
        Ok(CaInfo {
            renewal_info: dir.renewal_info,
            profiles: dir.meta.profiles.into_keys().collect(),
        })
    }

    /// The CA's renewal window for the certificate `id` (see [`cert_id`]) and its
    /// `Retry-After` in seconds.
    pub async fn renewal_info(
        &self,
        renewal_info_url: &str,
        id: &str,
    ) -> Result<(Window, Option<i64>), String> {
        let url = format!("{}/{id}", renewal_info_url.trim_end_matches('/'));
        let (status, retry_after, body) = self.get(&url).await?;
        if status != 200 {
            return Err(http_problem(status, &body));
        }
        Ok((parse_window(&body)?, retry_after))
    }
}

/// Parses a RenewalInfo object (RFC 9773 §4.2).
pub fn parse_window(body: &[u8]) -> Result<Window, String> {
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Info {
        suggested_window: SuggestedWindow,
        #[serde(rename = "explanationURL")]
        explanation_url: Option<String>,
    }
    #[derive(serde::Deserialize)]
    struct SuggestedWindow {
        start: String,
        end: String,
    }
    let info: Info = serde_json::from_slice(body)
        .map_err(|e| format!("malformed renewalInfo ({e}): {}", snippet(body)))?;
    let time = |s: &str| {
        time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
            .map(|t| t.unix_timestamp())
            .map_err(|e| format!("malformed renewalInfo time {s:?}: {e}"))
    };
    Ok(Window {
        start: time(&info.suggested_window.start)?,
        end: time(&info.suggested_window.end)?,
        explanation: info.explanation_url,
    })
}

/// `Retry-After`: delay-seconds or an HTTP date, as seconds from now.
fn parse_retry_after(v: &str) -> Option<i64> {
    let v = v.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(secs.min(i64::MAX as u64) as i64);
    }
    let at = httpdate::parse_http_date(v).ok()?;
    Some(
        at.duration_since(std::time::SystemTime::now())
            .map_or(0, |d| d.as_secs() as i64),
    )
}

/// "HTTP 500: <detail> (<type>)" from an error response, the body itself when it is no
/// problem document.
fn http_problem(status: u16, body: &[u8]) -> String {
    #[derive(serde::Deserialize)]
    struct Problem {
        #[serde(rename = "type")]
        kind: Option<String>,
        detail: Option<String>,
    }
    match serde_json::from_slice::<Problem>(body) {
        Ok(Problem {
            kind,
            detail: Some(detail),
        }) => match kind {
            Some(kind) => format!("HTTP {status}: {detail} ({kind})"),
            None => format!("HTTP {status}: {detail}"),
        },
        _ if body.is_empty() => format!("HTTP {status}"),
        _ => format!("HTTP {status}: {}", snippet(body)),
    }
}

/// The start of `body` as one line of text.
fn snippet(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(&body[..body.len().min(200)]);
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// An error and its sources on one line ("connection refused" is usually the innermost).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(inner) = src {
        let t = inner.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        src = inner.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: i64 = 86400;

    #[test]
    fn random_in_stays_in_range_and_varies() {
        let mut seen = std::collections::HashSet::new();
        for _ in 0..200 {
            let v = random_in(10, 20);
            assert!((10..=20).contains(&v), "{v}");
            seen.insert(v);
        }
        assert!(seen.len() > 5, "not random: {seen:?}");
        assert_eq!(random_in(5, 5), 5);
        assert_eq!(random_in(7, 3), 7);
    }

    #[test]
    fn lifetime_rule_is_two_thirds_with_bounded_jitter_for_any_lifetime() {
        // 90-day, 6-day ("shortlived") and 30-second certificates alike.
        for life in [90 * DAY, 6 * DAY, 30] {
            let nb = 1_700_000_000;
            let na = nb + life;
            let mut distinct = std::collections::HashSet::new();
            for _ in 0..100 {
                let t = lifetime_time(nb, na);
                let lo = na - life / 3 - life / 50;
                let hi = na - life / 3 + life / 50;
                assert!(t >= lo && t <= hi, "life {life}: {t} not in {lo}..={hi}");
                assert!(na - t >= life / 4, "too close to expiry");
                distinct.insert(t);
            }
            if life > 100 {
                assert!(distinct.len() > 1, "no jitter for life {life}");
            }
        }
    }

    #[test]
    fn ari_window_in_the_past_means_now_and_a_future_window_is_respected() {
        let (nb, na) = (0, 90 * DAY);
        let now = 10 * DAY;
        let past = Window {
            start: 5 * DAY,
            end: 6 * DAY,
            explanation: None,
        };
        assert_eq!(ari_time(&past, nb, na, now).unwrap(), now);
        let future = Window {
            start: 60 * DAY,
            end: 62 * DAY,
            explanation: None,
        };
        for _ in 0..50 {
            let t = ari_time(&future, nb, na, now).unwrap();
            assert!((60 * DAY..=62 * DAY).contains(&t), "{t}");
        }
    }

    #[test]
    fn bad_ari_windows_are_refused_with_the_reason() {
        let (nb, na) = (0, 90 * DAY);
        let backwards = Window {
            start: 60 * DAY,
            end: 59 * DAY,
            explanation: None,
        };
        let e = ari_time(&backwards, nb, na, 0).unwrap_err();
        assert!(e.contains("malformed"), "{e}");
        let late = Window {
            start: 80 * DAY,
            end: 91 * DAY,
            explanation: None,
        };
        let e = ari_time(&late, nb, na, 0).unwrap_err();
        assert!(e.contains("after the certificate expires"), "{e}");
    }

    #[test]
    fn ari_never_gets_closer_to_expiry_than_a_tenth_of_the_lifetime() {
        let (nb, na) = (0, 100 * DAY);
        let w = Window {
            start: 95 * DAY,
            end: 100 * DAY,
            explanation: None,
        };
        for _ in 0..20 {
            assert_eq!(ari_time(&w, nb, na, 0).unwrap(), 90 * DAY);
        }
    }

    #[test]
    fn recheck_is_clamped() {
        assert_eq!(recheck_in(None), ARI_RECHECK_DEFAULT);
        assert_eq!(recheck_in(Some(5)), ARI_RECHECK_MIN);
        assert_eq!(recheck_in(Some(7200)), 7200);
        assert_eq!(recheck_in(Some(30 * DAY)), ARI_RECHECK_MAX);
    }

    #[test]
    fn renewal_info_bodies_parse_or_fail_clearly() {
        let w = parse_window(
            br#"{"suggestedWindow":{"start":"2025-01-02T04:00:00Z","end":"2025-01-03T04:00:00.5+00:00"},"explanationURL":"https://ca.example/why"}"#,
        )
        .unwrap();
        assert_eq!(w.start, 1_735_790_400);
        assert_eq!(w.end, 1_735_790_400 + DAY);
        assert_eq!(w.explanation.as_deref(), Some("https://ca.example/why"));
        let e = parse_window(b"{\"suggestedWindow\": 3}").unwrap_err();
        assert!(e.contains("malformed renewalInfo"), "{e}");
        let e = parse_window(br#"{"suggestedWindow":{"start":"soon","end":"later"}}"#).unwrap_err();
        assert!(e.contains("\"soon\""), "{e}");
    }

    #[test]
    fn http_errors_carry_status_and_detail() {
        let p = http_problem(
            500,
            br#"{"type":"urn:ietf:params:acme:error:serverInternal","detail":"ARI is down"}"#,
        );
        assert_eq!(
            p,
            "HTTP 500: ARI is down (urn:ietf:params:acme:error:serverInternal)"
        );
        assert_eq!(http_problem(404, b""), "HTTP 404");
        assert_eq!(
            http_problem(502, b"<html> bad\n gateway </html>"),
            "HTTP 502: <html> bad gateway </html>"
        );
        assert_eq!(parse_retry_after(" 120 "), Some(120));
        assert!(parse_retry_after("Fri, 31 Dec 1999 23:59:59 GMT") == Some(0));
        assert_eq!(parse_retry_after("whenever"), None);
    }

    #[test]
    fn cert_id_is_aki_dot_serial() {
        // A leaf signed by a CA, with an AKI and a known serial.
        let ca_key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let issuer = rcgen::Issuer::new(ca, ca_key);
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut leaf = rcgen::CertificateParams::new(vec!["a.test".to_string()]).unwrap();
        leaf.use_authority_key_identifier_extension = true;
        leaf.serial_number = Some(rcgen::SerialNumber::from_slice(&[0x00, 0x87, 0x65, 0x43]));
        let cert = leaf.signed_by(&key, &issuer).unwrap();
        let id = cert_id(cert.der()).unwrap();
        let (aki, serial) = id.split_once('.').unwrap();
        assert_eq!(serial, "AIdlQw");
        assert!(aki.len() >= 20, "{aki}");
        // Without an AKI there is no id.
        let mut plain = rcgen::CertificateParams::new(vec!["a.test".to_string()]).unwrap();
        plain.use_authority_key_identifier_extension = false;
        let selfsigned = plain.self_signed(&key).unwrap();
        let e = cert_id(selfsigned.der()).unwrap_err();
        assert!(e.contains("Authority Key Identifier"), "{e}");
    }
}
