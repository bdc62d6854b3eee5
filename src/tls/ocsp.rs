//! OCSP (RFC 6960) mechanism: build the request for a leaf, fetch it from the responder named
//! in the leaf's Authority Information Access, and verify the response before it may be stapled.
//!
//! The ASN.1 is `x509-ocsp` (RustCrypto); certificates and signatures go through `x509-parser`
//! with aws-lc-rs, the same code that checks certificate chains elsewhere. What to staple and
//! when to refresh is policy and lives in [`crate::tls::stapler`].

use std::fmt;
use std::time::Duration;

use aws_lc_rs::digest;
use x509_cert::der::asn1::{Null, ObjectIdentifier, OctetString};
use x509_cert::der::{Decode, Encode};
use x509_cert::serial_number::SerialNumber;
use x509_cert::spki::AlgorithmIdentifierOwned;
use x509_ocsp::{
    BasicOcspResponse, CertId, CertStatus, OcspRequest, OcspResponse, OcspResponseStatus, Request,
    TbsRequest,
};
use x509_parser::asn1_rs::{Any, BitString};
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::oid_registry::{Oid, OID_PKIX_ACCESS_DESCRIPTOR_OCSP};
use x509_parser::prelude::FromDer;
use x509_parser::x509::AlgorithmIdentifier;

const ID_SHA1: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.14.3.2.26");
const ID_SHA256: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.16.840.1.101.3.4.2.1");
const ID_PKIX_OCSP_BASIC: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.5.5.7.48.1.1");
/// The SignedCertificateTimestampList extension of a single OCSP response (RFC 6962 §3.3).
const ID_OCSP_SCT_LIST: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.4.1.11129.2.4.5");
/// id-pe-tlsfeature (RFC 7633); its value lists `status_request` (5) for Must-Staple.
const OID_TLS_FEATURE: &str = "1.3.6.1.5.5.7.1.24";
/// id-kp-OCSPSigning, required of a delegated responder certificate.
const OID_KP_OCSP_SIGNING: &str = "1.3.6.1.5.5.7.3.9";

/// Clock skew tolerated on `thisUpdate`, seconds.
const SKEW: i64 = 300;
/// How long a response without `nextUpdate` is trusted, seconds.
pub const NO_NEXT_UPDATE_VALIDITY: i64 = 3600;
/// Responses larger than this are refused (real ones are 0.5–3 KiB).
const MAX_RESPONSE: usize = 64 * 1024;

/// Why a response cannot be stapled.
#[derive(Debug)]
pub struct OcspError(pub String);

impl fmt::Display for OcspError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for OcspError {}

fn err<T>(msg: impl Into<String>) -> Result<T, OcspError> {
    Err(OcspError(msg.into()))
}

/// The certificate's status as the responder states it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CertState {
    Good,
    /// Revoked at (Unix time), with the reason when given.
    Revoked {
        at: i64,
        reason: Option<String>,
    },
    Unknown,
}

/// A response that passed every check against one leaf and issuer.
#[derive(Debug, Clone)]
pub struct Verified {
    pub state: CertState,
    /// Unix times of the matching single response.
    pub this_update: i64,
    /// `nextUpdate`, or `thisUpdate` + [`NO_NEXT_UPDATE_VALIDITY`] when absent.
    pub next_update: i64,
    /// The single response's Certificate Transparency extension (RFC 6962 §3.3,
    /// 1.3.6.1.4.1.11129.2.4.5), as its DER OCTET STRING: SCTs delivered with the staple.
    pub sct_list: Option<Vec<u8>>,
}

impl Verified {
    /// True while the response may be stapled.
    pub fn is_fresh(&self, now: i64) -> bool {
        now < self.next_update
    }

    /// When to fetch a new response: half-way through the validity window (as certmagic and
    /// nginx do), so a responder outage of up to half the window goes unnoticed by clients.
    pub fn refresh_at(&self) -> i64 {
        self.this_update + (self.next_update - self.this_update) / 2
    }
}

/// OCSP facts about a leaf certificate.
#[derive(Debug, Clone, Default)]
pub struct LeafOcsp {
    /// The first OCSP responder URL in the Authority Information Access extension.
    pub url: Option<String>,
    /// The TLS Feature extension requires a stapled response (RFC 7633 "Must-Staple").
    pub must_staple: bool,
}

/// Reads the responder URL and the Must-Staple flag from a leaf certificate.
pub fn leaf_ocsp(leaf_der: &[u8]) -> LeafOcsp {
    let Ok((_, cert)) = X509Certificate::from_der(leaf_der) else {
        return LeafOcsp::default();
    };
    let mut out = LeafOcsp::default();
    for ext in cert.extensions() {
        match ext.parsed_extension() {
            ParsedExtension::AuthorityInfoAccess(aia) if out.url.is_none() => {
                out.url = aia
                    .accessdescs
                    .iter()
                    .filter(|d| d.access_method == OID_PKIX_ACCESS_DESCRIPTOR_OCSP)
                    .find_map(|d| match &d.access_location {
                        GeneralName::URI(u) => Some(u.to_string()),
                        _ => None,
                    });
            }
            _ if ext.oid.to_id_string() == OID_TLS_FEATURE => {
                // SEQUENCE OF INTEGER; status_request is 5.
                out.must_staple = tls_features(ext.value).contains(&5);
            }
            _ => {}
        }
    }
    out
}

fn tls_features(value: &[u8]) -> Vec<u64> {
    let Ok((_, seq)) = Any::from_der(value) else {
        return Vec::new();
    };
    let mut rest: &[u8] = seq.data;
    let mut out = Vec::new();
    while !rest.is_empty() {
        match <u64 as x509_parser::asn1_rs::FromDer<'_, x509_parser::asn1_rs::Error>>::from_der(
            rest,
        ) {
            Ok((r, v)) => {
                out.push(v);
                rest = r;
            }
            Err(_) => break,
        }
    }
    out
}

fn parse_cert<'a>(der: &'a [u8], what: &str) -> Result<X509Certificate<'a>, OcspError> {
    match X509Certificate::from_der(der) {
        Ok((_, c)) => Ok(c),
        Err(e) => err(format!("cannot parse the {what} certificate: {e}")),
    }
}

/// Hashes the issuer's name and key as a `CertId` with `alg` requires.
fn cert_id(
    leaf: &X509Certificate<'_>,
    issuer: &X509Certificate<'_>,
    alg: ObjectIdentifier,
) -> Result<CertId, OcspError> {
    let dalg = if alg == ID_SHA1 {
        &digest::SHA1_FOR_LEGACY_USE_ONLY
    } else if alg == ID_SHA256 {
        &digest::SHA256
    } else {
        return err(format!("unsupported CertID hash algorithm {alg}"));
    };
    let name_hash = digest::digest(dalg, issuer.tbs_certificate.subject.as_raw());
    let key_hash = digest::digest(dalg, &issuer.public_key().subject_public_key.data);
    let bad = |e: x509_cert::der::Error| OcspError(format!("cannot encode the CertID: {e}"));
    Ok(CertId {
        hash_algorithm: AlgorithmIdentifierOwned {
            oid: alg,
            parameters: Some(Null.into()),
        },
        issuer_name_hash: OctetString::new(name_hash.as_ref()).map_err(bad)?,
        issuer_key_hash: OctetString::new(key_hash.as_ref()).map_err(bad)?,
        serial_number: SerialNumber::new(leaf.raw_serial()).map_err(bad)?,
    })
}

/// The DER `OCSPRequest` for `leaf` (SHA-1 CertID, as RFC 5019 responders expect; no nonce, so
/// responders may serve it from their cache).
pub fn request(leaf_der: &[u8], issuer_der: &[u8]) -> Result<Vec<u8>, OcspError> {
    let leaf = parse_cert(leaf_der, "leaf")?;
    let issuer = parse_cert(issuer_der, "issuer")?;
    let req = OcspRequest {
        tbs_request: TbsRequest {
            version: Default::default(),
            requestor_name: None,
            request_list: vec![Request {
                req_cert: cert_id(&leaf, &issuer, ID_SHA1)?,
                single_request_extensions: None,
            }],
            request_extensions: None,
        },
        optional_signature: None,
    };
    req.to_der()
        .or_else(|e| err(format!("cannot encode the OCSP request: {e}")))
}

fn unix(t: &x509_ocsp::OcspGeneralizedTime) -> i64 {
    t.0.to_unix_duration().as_secs() as i64
}

fn strip_zeros(b: &[u8]) -> &[u8] {
    let n = b.iter().take_while(|&&x| x == 0).count();
    &b[n.min(b.len().saturating_sub(1))..]
}

/// The raw `tbsResponseData`, signature algorithm and signature of a `BasicOCSPResponse`: the
/// signature covers the bytes as received, so they are taken from the input rather than
/// re-encoded.
fn signed_parts(
    basic: &[u8],
) -> Result<(&[u8], AlgorithmIdentifier<'_>, BitString<'_>), OcspError> {
    let bad = |e: &dyn fmt::Display| OcspError(format!("malformed BasicOCSPResponse: {e}"));
    let (_, outer) = Any::from_der(basic).map_err(|e| bad(&e))?;
    let content: &[u8] = outer.data;
    let (rest, _) = Any::from_der(content).map_err(|e| bad(&e))?;
    let tbs = &content[..content.len() - rest.len()];
    let (rest, alg) = AlgorithmIdentifier::from_der(rest).map_err(|e| bad(&e))?;
    let (_, sig) = BitString::from_der(rest).map_err(|e| bad(&e))?;
    Ok((tbs, alg, sig))
}

fn has_eku(cert: &X509Certificate<'_>, oid: &str) -> bool {
    cert.extensions()
        .iter()
        .any(|ext| match ext.parsed_extension() {
            ParsedExtension::ExtendedKeyUsage(eku) => {
                eku.ocsp_signing || eku.other.iter().any(|o: &Oid| o.to_id_string() == oid)
            }
            _ => false,
        })
}

/// The `BasicOCSPResponse` of a successful DER `OCSPResponse`: its DER (the signature covers
/// it as received) and its decoded form.
fn basic_response(response: &[u8]) -> Result<(Vec<u8>, BasicOcspResponse), OcspError> {
    let resp = match OcspResponse::from_der(response) {
        Ok(r) => r,
        Err(e) => return err(format!("not an OCSP response: {e}")),
    };
    if resp.response_status != OcspResponseStatus::Successful {
        return err(format!("responder answered {:?}", resp.response_status));
    }
    let Some(bytes) = resp.response_bytes else {
        return err("successful response without a body");
    };
    if bytes.response_type != ID_PKIX_OCSP_BASIC {
        return err(format!("unsupported response type {}", bytes.response_type));
    }
    let basic_der = bytes.response.as_bytes().to_vec();
    match BasicOcspResponse::from_der(&basic_der) {
        Ok(b) => Ok((basic_der, b)),
        Err(e) => err(format!("malformed BasicOCSPResponse: {e}")),
    }
}

/// The single response whose CertID names `leaf` issued by `issuer`.
fn single_for<'a>(
    basic: &'a BasicOcspResponse,
    leaf: &X509Certificate<'_>,
    issuer: &X509Certificate<'_>,
) -> Option<&'a x509_ocsp::SingleResponse> {
    let serial = strip_zeros(leaf.raw_serial());
    basic.tbs_response_data.responses.iter().find(|single| {
        cert_id(leaf, issuer, single.cert_id.hash_algorithm.oid).is_ok_and(|want| {
            strip_zeros(single.cert_id.serial_number.as_bytes()) == serial
                && single.cert_id.issuer_name_hash == want.issuer_name_hash
                && single.cert_id.issuer_key_hash == want.issuer_key_hash
        })
    })
}

/// Whether a DER `OCSPResponse` is about `leaf` issued by `issuer` (has a single response with
/// its CertID), whatever its signature, status or validity: which of several certificates a
/// response file belongs to. Errors when it is not a successful OCSP response at all.
pub fn is_for(response: &[u8], leaf_der: &[u8], issuer_der: &[u8]) -> Result<bool, OcspError> {
    let leaf = parse_cert(leaf_der, "leaf")?;
    let issuer = parse_cert(issuer_der, "issuer")?;
    let (_, basic) = basic_response(response)?;
    Ok(single_for(&basic, &leaf, &issuer).is_some())
}

/// Checks a DER `OCSPResponse` for `leaf` issued by `issuer` at time `now` (Unix seconds):
/// successful, a basic response signed by the issuer or by a responder certificate the issuer
/// delegated OCSP signing to, a single response for exactly this certificate, and a validity
/// window that contains `now`. The status itself (good, revoked, unknown) is returned, not
/// judged.
pub fn verify(
    response: &[u8],
    leaf_der: &[u8],
    issuer_der: &[u8],
    now: i64,
) -> Result<Verified, OcspError> {
    let leaf = parse_cert(leaf_der, "leaf")?;
    let issuer = parse_cert(issuer_der, "issuer")?;
    let (basic_der, basic) = basic_response(response)?;

    // Signature: the issuer itself, or a delegated responder certificate (RFC 6960 §4.2.2.2).
    let (tbs, alg, sig) = signed_parts(&basic_der)?;
    let by_issuer =
        x509_parser::verify::verify_signature(issuer.public_key(), &alg, &sig, tbs).is_ok();
    if !by_issuer {
        let mut why = String::from("signed neither by the issuer nor by a delegated responder");
        let mut ok = false;
        for c in basic.certs.iter().flatten() {
            let Ok(der) = c.to_der() else { continue };
            let Ok((_, rc)) = X509Certificate::from_der(&der) else {
                continue;
            };
            if x509_parser::verify::verify_signature(rc.public_key(), &alg, &sig, tbs).is_err() {
                continue;
            }
            if rc.verify_signature(Some(issuer.public_key())).is_err() {
                why = "the responder certificate is not issued by the certificate's issuer".into();
                continue;
            }
            if !has_eku(&rc, OID_KP_OCSP_SIGNING) {
                why = "the responder certificate lacks the OCSPSigning extended key usage".into();
                continue;
            }
            let v = rc.validity();
            if now < v.not_before.timestamp() || now > v.not_after.timestamp() {
                why = "the responder certificate is expired or not yet valid".into();
                continue;
            }
            ok = true;
            break;
        }
        if !ok {
            return err(format!("bad signature: {why}"));
        }
    }

    // The single response for this very certificate.
    let Some(single) = single_for(&basic, &leaf, &issuer) else {
        return err("the response is for another certificate");
    };

    let this_update = unix(&single.this_update);
    let next_update = match &single.next_update {
        Some(t) => unix(t),
        None => this_update + NO_NEXT_UPDATE_VALIDITY,
    };
    if this_update > now + SKEW {
        return err("the response's thisUpdate is in the future (clock skew?)");
    }
    if next_update <= now {
        return err(format!(
            "the response expired at {}",
            crate::tls::certs::fmt_time(next_update)
        ));
    }
    let state = match &single.cert_status {
        CertStatus::Good(_) => CertState::Good,
        CertStatus::Revoked(info) => CertState::Revoked {
            at: unix(&info.revocation_time),
            reason: info.revocation_reason.map(|r| format!("{r:?}")),
        },
        CertStatus::Unknown(_) => CertState::Unknown,
    };
    let sct_list = single
        .single_extensions
        .iter()
        .flatten()
        .find(|e| e.extn_id == ID_OCSP_SCT_LIST)
        .map(|e| e.extn_value.as_bytes().to_vec());
    Ok(Verified {
        state,
        this_update,
        next_update,
        sct_list,
    })
}

/// POSTs `request` to the responder at `url` (plain HTTP, as RFC 6960 responders are) and
/// returns the body, within `timeout`.
pub async fn fetch(url: &str, request: Vec<u8>, timeout: Duration) -> Result<Vec<u8>, OcspError> {
    let (status, body) = crate::http::client::request(
        http::Method::POST,
        url,
        Some("application/ocsp-request"),
        request,
        MAX_RESPONSE,
        timeout,
    )
    .await
    .map_err(|e| OcspError(format!("responder {e}")))?;
    if status != http::StatusCode::OK {
        return err(format!("responder {url} answered HTTP {status}"));
    }
    Ok(body.to_vec())
}
