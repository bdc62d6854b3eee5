//! Revocation and Certificate Transparency of the certificate the server sent: the OCSP
//! response it staples, the answer of the OCSP responder the certificate names (asked
//! directly), and the Signed Certificate Timestamps (SCTs) that browsers require.
//!
//! OCSP requests, responses and their verification are the server's own stapling code
//! ([`crate::tls::ocsp`]); only the verdicts are made here. SCTs are read from the
//! certificate's extension and from the stapled OCSP response. SCTs in the TLS extension
//! (`signed_certificate_timestamp`) cannot be seen: rustls does not ask for them. SCTs are
//! counted, not verified: that needs the browsers' list of CT logs and their keys, which
//! portcullis does not ship; nor are log operators told apart.

use base64::Engine;
use rustls::pki_types::CertificateDer;
use serde_json::json;
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::{
    parse_ct_signed_certificate_timestamp_list, ParsedExtension, SignedCertificateTimestamp,
};
use x509_parser::prelude::FromDer;

use super::report::{Check, Report, Verdict};
use super::Options;
use crate::tls::certs::{fmt_time, unix_now};
use crate::tls::ocsp::{self, CertState};

/// The OCSP staple, the responder's answer and the SCTs of `chain` (leaf first, as sent),
/// given the `staple` the handshake brought (empty: none).
pub(super) async fn checks(
    chain: &[CertificateDer<'static>],
    staple: &[u8],
    opts: &Options,
    report: &mut Report,
) {
    let Some(leaf) = chain.first() else { return };
    let issuer = issuer_of(chain);
    let info = ocsp::leaf_ocsp(leaf);
    report.fact("ocsp_url", info.url.clone());
    report.fact("must_staple", info.must_staple);
    let now = unix_now();
    let stapled = staple_check(
        leaf,
        issuer,
        staple,
        info.url.as_deref(),
        info.must_staple,
        now,
        report,
    );
    if let Some(url) = &info.url {
        revocation_check(leaf, issuer, url, opts, now, report).await;
    } else {
        report.fact("revocation", "no_ocsp_url");
        report.push(Check::ok(
            "cert.revocation",
            "revocation not asked: the certificate names no OCSP responder",
        ));
    }
    sct_check(
        leaf,
        stapled.and_then(|v| v.sct_list).as_deref(),
        opts,
        report,
    );
}

/// The certificate in `chain` that issued the leaf (by name), wherever the server put it.
fn issuer_of<'a>(chain: &'a [CertificateDer<'static>]) -> Option<&'a [u8]> {
    let (_, leaf) = X509Certificate::from_der(chain.first()?).ok()?;
    chain[1..]
        .iter()
        .find(|c| {
            X509Certificate::from_der(c)
                .is_ok_and(|(_, x)| x.subject().as_raw() == leaf.issuer().as_raw())
        })
        .map(|c| c.as_ref())
}

/// `cert.ocsp_staple`; returns the staple when it verified.
fn staple_check(
    leaf: &[u8],
    issuer: Option<&[u8]>,
    staple: &[u8],
    url: Option<&str>,
    must_staple: bool,
    now: i64,
    report: &mut Report,
) -> Option<ocsp::Verified> {
    const ID: &str = "cert.ocsp_staple";
    if staple.is_empty() {
        report.fact("ocsp_staple", "none");
        match (url, must_staple) {
            (_, true) => report.push(
                Check::error(ID, "no OCSP staple, but the certificate is Must-Staple")
                    .browser("MOZILLA_PKIX_ERROR_REQUIRED_TLS_FEATURE_MISSING")
                    .cause("the certificate requires a stapled OCSP response (TLS Feature extension) and the server sends none: Firefox refuses the site")
                    .fix("turn OCSP stapling on (portcullis staples by itself; nginx: ssl_stapling on), or get a certificate without Must-Staple"),
            ),
            (Some(url), false) => report.push(
                Check::warning(ID, format!("no OCSP staple, though the certificate names a responder ({url})"))
                    .cause("the server does not staple the responder's answer: browsers that check revocation ask the responder themselves (a slower first visit, and the CA learns who visits)")
                    .fix("turn OCSP stapling on (portcullis staples by itself; nginx: ssl_stapling on)"),
            ),
            (None, false) => report.push(Check::ok(
                ID,
                "no OCSP: the certificate names no OCSP responder, so there is nothing to staple (Let's Encrypt ended OCSP in 2025)",
            )),
        }
        return None;
    }
    let Some(issuer) = issuer else {
        report.fact("ocsp_staple", "unchecked");
        report.push(
            Check::warning(
                ID,
                "an OCSP staple was sent but cannot be checked: the chain lacks the issuer's certificate",
            )
            .fix("serve the full chain (the certificate followed by its intermediates)"),
        );
        return None;
    };
    match ocsp::verify(staple, leaf, issuer, now) {
        Ok(v) => {
            report.fact("ocsp_staple_this_update", v.this_update);
            report.fact("ocsp_staple_next_update", v.next_update);
            match &v.state {
                CertState::Good => {
                    report.fact("ocsp_staple", "good");
                    report.push(Check::ok(
                        ID,
                        format!(
                            "OCSP staple: good (issued {}, valid until {})",
                            fmt_time(v.this_update),
                            fmt_time(v.next_update)
                        ),
                    ));
                }
                CertState::Revoked { at, reason } => {
                    report.fact("ocsp_staple", "revoked");
                    report.push(revoked(
                        ID,
                        "the stapled OCSP response",
                        *at,
                        reason.as_deref(),
                    ));
                }
                CertState::Unknown => {
                    report.fact("ocsp_staple", "unknown");
                    report.push(
                        Check::warning(ID, "the OCSP staple says \"unknown\": the responder does not know this certificate")
                            .cause("the staple comes from another CA's responder, or the certificate is too new for the responder")
                            .fix("check that the server staples the answer of the certificate's own CA"),
                    );
                }
            }
            Some(v)
        }
        Err(e) => {
            report.fact("ocsp_staple", "invalid");
            report.push(
                Check::error(ID, format!("invalid OCSP staple: {e}"))
                    .cause("the server staples a response that is stale (not refreshed), for another certificate, or not signed by the CA: Firefox refuses such a staple")
                    .fix("let the server refresh its staple from the CA's responder (portcullis does by itself), or turn stapling off"),
            );
            None
        }
    }
}

/// A revoked certificate, as `what` says.
fn revoked(id: &'static str, what: &str, at: i64, reason: Option<&str>) -> Check {
    let reason = reason.map(|r| format!(", reason: {r}")).unwrap_or_default();
    Check::error(
        id,
        format!(
            "the certificate is REVOKED (since {}{reason}), says {what}",
            fmt_time(at)
        ),
    )
    .browser("NET::ERR_CERT_REVOKED")
    .cause(
        "the CA revoked the certificate (key compromise, mis-issuance, or at the owner's request)",
    )
    .fix("install a new certificate (with a new key if the old one leaked) and reload the server")
}

/// `cert.revocation`: the responder at `url`, asked about the leaf.
async fn revocation_check(
    leaf: &[u8],
    issuer: Option<&[u8]>,
    url: &str,
    opts: &Options,
    now: i64,
    report: &mut Report,
) {
    const ID: &str = "cert.revocation";
    let unreachable = |report: &mut Report, why: String| {
        report.fact("revocation", "unreachable");
        report.push(
            Check::warning(ID, format!("revocation not known: {why}"))
                .cause("the CA's OCSP responder does not answer: browsers that check revocation stall or give up")
                .fix("check the responder URL in the certificate; if it is down, it is the CA's to fix"),
        );
    };
    let Some(issuer) = issuer else {
        report.fact("revocation", "unchecked");
        report.push(Check::warning(
            ID,
            format!(
                "cannot ask the OCSP responder {url}: the chain lacks the issuer's certificate"
            ),
        ));
        return;
    };
    let request = match ocsp::request(leaf, issuer) {
        Ok(r) => r,
        Err(e) => {
            report.fact("revocation", "unchecked");
            report.push(Check::warning(
                ID,
                format!("cannot ask the OCSP responder {url}: {e}"),
            ));
            return;
        }
    };
    let response = match ocsp::fetch(url, request, opts.timeout).await {
        Ok(r) => r,
        Err(e) => return unreachable(report, e.to_string()),
    };
    match ocsp::verify(&response, leaf, issuer, now) {
        Ok(v) => {
            match v.state {
                CertState::Good => {
                    report.fact("revocation", "good");
                    report.push(Check::ok(
                        ID,
                        format!(
                            "not revoked: the OCSP responder {url} says good (as of {})",
                            fmt_time(v.this_update)
                        ),
                    ));
                }
                CertState::Revoked { at, reason } => {
                    report.fact("revocation", "revoked");
                    report.push(revoked(
                        ID,
                        &format!("the OCSP responder {url}"),
                        at,
                        reason.as_deref(),
                    ));
                }
                CertState::Unknown => {
                    report.fact("revocation", "unknown");
                    report.push(
                    Check::warning(
                        ID,
                        format!("the OCSP responder {url} does not know the certificate (\"unknown\")"),
                    )
                    .cause("the certificate names a responder of another CA, or is too new for it")
                    .fix("check with the CA that issued it"),
                );
                }
            }
        }
        Err(e) => unreachable(
            report,
            format!("the OCSP responder {url} answered, but {e}"),
        ),
    }
}

/// Where an SCT came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SctSource {
    /// The certificate's SCT list extension (1.3.6.1.4.1.11129.2.4.2).
    Certificate,
    /// The stapled OCSP response.
    Ocsp,
}

/// How many SCTs Chromium's Certificate Transparency policy asks of a publicly trusted
/// certificate valid for `lifetime_days`, by where they come from: embedded in the
/// certificate, 2 up to 180 days of validity and 3 beyond; delivered in the handshake (TLS
/// extension or OCSP staple), 2.
pub fn scts_required(source: SctSource, lifetime_days: i64) -> usize {
    match source {
        SctSource::Certificate if lifetime_days > 180 => 3,
        _ => 2,
    }
}

/// Whether `embedded` SCTs in a certificate valid `lifetime_days` days, or `stapled` ones,
/// satisfy the policy (the two kinds are not added up).
pub fn ct_compliant(embedded: usize, stapled: usize, lifetime_days: i64) -> bool {
    embedded >= scts_required(SctSource::Certificate, lifetime_days)
        || stapled >= scts_required(SctSource::Ocsp, lifetime_days)
}

/// `cert.sct`: the SCTs of the leaf and of the verified staple's `sct_list` (its extension's
/// DER OCTET STRING), judged when the chain ends at a public root.
fn sct_check(leaf: &[u8], stapled: Option<&[u8]>, opts: &Options, report: &mut Report) {
    const ID: &str = "cert.sct";
    let Ok((_, cert)) = X509Certificate::from_der(leaf) else {
        return;
    };
    let embedded: Vec<SignedCertificateTimestamp<'_>> = cert
        .extensions()
        .iter()
        .find_map(|e| match e.parsed_extension() {
            ParsedExtension::SCT(list) => Some(list.clone()),
            _ => None,
        })
        .unwrap_or_default();
    let from_ocsp: Vec<SignedCertificateTimestamp<'_>> = stapled
        .and_then(|b| parse_ct_signed_certificate_timestamp_list(b).ok())
        .map(|(_, l)| l)
        .unwrap_or_default();
    let b64 = base64::engine::general_purpose::STANDARD;
    let logs: Vec<serde_json::Value> = embedded
        .iter()
        .map(|s| (s, "certificate"))
        .chain(from_ocsp.iter().map(|s| (s, "ocsp")))
        .map(|(s, source)| {
            json!({
                "log_id": b64.encode(s.id.key_id),
                "timestamp": fmt_time((s.timestamp / 1000) as i64),
                "source": source,
            })
        })
        .collect();
    let count = embedded.len() + from_ocsp.len();
    report.fact("sct_count", count);
    report.fact("sct_logs", logs);
    let lifetime_days = (cert.validity().not_after.timestamp()
        - cert.validity().not_before.timestamp())
    .div_euclid(86_400);
    let found = match (embedded.len(), from_ocsp.len()) {
        (0, 0) => "no SCTs".to_owned(),
        (e, 0) => format!("{e} SCT(s) in the certificate"),
        (0, o) => format!("{o} SCT(s) in the OCSP staple"),
        (e, o) => format!("{e} SCT(s) in the certificate, {o} in the OCSP staple"),
    };
    if opts.ca.is_some() {
        report.push(Check::ok(
            ID,
            format!("Certificate Transparency: {found}; none needed for a private CA (--ca): browsers require SCTs only of publicly trusted certificates"),
        ));
        return;
    }
    let trusted = report
        .checks
        .iter()
        .any(|c| c.id == "cert.trust" && c.verdict == Verdict::Ok);
    if !trusted {
        report.push(Check::ok(
            ID,
            format!("Certificate Transparency: {found}; not judged, the chain does not verify to a public root"),
        ));
        return;
    }
    if ct_compliant(embedded.len(), from_ocsp.len(), lifetime_days) {
        report.push(Check::ok(
            ID,
            format!("Certificate Transparency: {found} (not verified against the CT log list)"),
        ));
    } else {
        let need = scts_required(SctSource::Certificate, lifetime_days);
        report.push(
            Check::error(ID, format!("Certificate Transparency: {found}; Chromium requires {need} in a certificate valid {lifetime_days} days (or 2 delivered in the handshake)"))
                .browser("NET::ERR_CERTIFICATE_TRANSPARENCY_REQUIRED")
                .cause("the certificate was not logged in Certificate Transparency logs (public CAs embed the SCTs when they issue)")
                .fix("reissue the certificate from a public CA that logs it (every public CA does: Let's Encrypt, ZeroSSL…)"),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chromium_asks_two_or_three_embedded_scts_by_lifetime_or_two_in_the_handshake() {
        assert!(ct_compliant(2, 0, 90));
        assert!(ct_compliant(2, 0, 180));
        assert!(!ct_compliant(2, 0, 181));
        assert!(ct_compliant(3, 0, 398));
        assert!(!ct_compliant(1, 1, 90), "the two sources are not added up");
        assert!(ct_compliant(0, 2, 398));
        assert!(!ct_compliant(0, 0, 90));
    }
}
