//! `portcullis probe` on what the page loads (mixed content), the certificate's revocation
//! (the OCSP staple, the responder) and its Certificate Transparency SCTs, against servers on
//! loopback. OCSP answers come from `openssl ocsp` behind the responder fixture
//! (`common::ocsp`), asked by `openssl ocsp` as the client; the responses `openssl ocsp`
//! cannot make (already expired, carrying SCTs) are built and signed here with the issuer's
//! key.

mod common;

use std::process::Command;
use std::time::Duration;

use common::ocsp::*;
use common::probe::*;
use common::*;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde_json::{json, Value};
use x509_cert::der::asn1::{BitString, GeneralizedTime, Null, ObjectIdentifier, OctetString};
use x509_cert::der::{Decode, Encode};
use x509_cert::spki::AlgorithmIdentifierOwned;
use x509_ocsp::{
    BasicOcspResponse, CertId, CertStatus, OcspGeneralizedTime, OcspRequest, OcspResponse,
    OcspResponseStatus, ResponderId, ResponseBytes, ResponseData, SingleResponse,
};

fn kinds(r: &Value) -> Vec<(String, String, String, String)> {
    r["facts"]["mixed_content"]
        .as_array()
        .unwrap_or_else(|| panic!("no mixed_content fact: {r:#}"))
        .iter()
        .map(|f| {
            let s = |k: &str| f[k].as_str().unwrap().to_owned();
            (s("element"), s("attribute"), s("url"), s("kind"))
        })
        .collect()
}

fn row(e: &str, a: &str, u: &str, k: &str) -> (String, String, String, String) {
    (e.into(), a.into(), u.into(), k.into())
}

async fn probe_page(page: &str) -> (i32, Value) {
    let p = pki();
    let leaf = p.leaf(&[ALPHA], Alg::Ecdsa);
    let addr = tls_server_page(&p.chain_pem(&leaf), &leaf.key_pem, &[], page, true).await;
    let (target, ip) = at(addr);
    probe(&target, &["--ip", &ip]).await
}

#[tokio::test]
async fn a_script_over_http_is_an_error_and_images_and_forms_are_warnings() {
    let (code, r) = probe_page(
        r#"<!doctype html><html><head>
        <script src="http://cdn.test/app.js"></script>
        <script src="https://cdn.test/safe.js"></script>
        <script src="//cdn.test/protocol-relative.js"></script>
        <link rel="stylesheet" href="/style.css">
        </head><body>
        <img src="http://img.test/logo.png">
        <a href="http://elsewhere.test/">links load nothing</a>
        <form action="http://alpha.test/login" method="post"><input name="u"></form>
        </body></html>"#,
    )
    .await;
    assert_eq!(code, 2, "{r:#}");
    let c = check(&r, "http.mixed_content", "error");
    let s = c["summary"].as_str().unwrap();
    assert!(
        s.contains("3 item(s)") && s.contains("1 blocked") && s.contains("http://cdn.test/app.js"),
        "{s}"
    );
    assert_eq!(
        kinds(&r),
        vec![
            row("script", "src", "http://cdn.test/app.js", "active"),
            row("img", "src", "http://img.test/logo.png", "passive"),
            row("form", "action", "http://alpha.test/login", "form"),
        ]
    );

    // Without the script: warnings only, exit code 1.
    let (code, r) = probe_page(
        r#"<img src="http://img.test/logo.png"><form action="http://alpha.test/login"></form>"#,
    )
    .await;
    assert_eq!(code, 1, "{r:#}");
    check(&r, "http.mixed_content", "warning");
    assert_eq!(kinds(&r).len(), 2);
}

#[tokio::test]
async fn relative_urls_under_a_base_over_http_are_caught() {
    let (code, r) = probe_page(
        r#"<html><head><base href="http://static.test/assets/"></head>
        <body><img src="logo.png"><img src="https://img.test/fine.png"></body></html>"#,
    )
    .await;
    assert_eq!(code, 1, "{r:#}");
    check(&r, "http.mixed_content", "warning");
    assert_eq!(
        kinds(&r),
        vec![
            row("base", "href", "http://static.test/assets/", "base"),
            row(
                "img",
                "src",
                "http://static.test/assets/logo.png",
                "passive"
            ),
        ]
    );
}

#[tokio::test]
async fn a_page_loading_everything_over_https_is_clean() {
    let (code, r) = probe_page(
        r#"<!doctype html><script src="/app.js"></script><link rel=stylesheet href="//cdn.test/a.css">
        <img srcset="https://img.test/a.png 1x, b.png 2x"><iframe src="https://video.test/embed"></iframe>
        <link rel="alternate" href="http://alpha.test/feed.xml">"#,
    )
    .await;
    assert_eq!(code, 0, "{r:#}");
    let c = check(&r, "http.mixed_content", "ok");
    assert!(
        c["summary"].as_str().unwrap().contains("no mixed content"),
        "{c}"
    );
    assert_eq!(r["facts"]["mixed_content"], json!([]));
}

// =============================================================================================
// OCSP
// =============================================================================================

/// The issuer (`ca.pem` + key), a delegated responder certificate signing the answers, and
/// the responder fixture.
struct Ocsp {
    env: TestEnv,
    responder: Responder,
}

fn ocsp_setup() -> Ocsp {
    require_tool("openssl");
    let env = TestEnv::new();
    let p = pki();
    env.write("ca.pem", &p.inter_pem);
    env.write("ca.key", p.inter_key_pem());
    let signer = p.ocsp_responder();
    env.write("responder.pem", &signer.cert_pem);
    env.write("responder.key", &signer.key_pem);
    let responder = Responder::start(
        env.dir.path(),
        &env.path("ca.pem"),
        (&env.path("responder.pem"), &env.path("responder.key")),
        60,
    );
    Ocsp { env, responder }
}

impl Ocsp {
    /// `openssl ocsp` run with `args` about `leaf` (written as `name.pem`).
    async fn openssl(&self, leaf: &Leaf, name: &str, args: &[&str]) -> Vec<u8> {
        let cert = self.env.write(&format!("{name}.pem"), &leaf.cert_pem);
        let out = self.env.path(&format!("{name}.der"));
        let mut cmd = Command::new("openssl");
        cmd.args(["ocsp", "-no_nonce", "-issuer"])
            .arg(self.env.path("ca.pem"))
            .arg("-cert")
            .arg(&cert)
            .args(args)
            .arg(&out);
        let o = tokio::task::spawn_blocking(move || run_with_timeout(&mut cmd, IO_TIMEOUT))
            .await
            .unwrap();
        assert!(o.status.success(), "openssl ocsp: {}", text(&o.stderr));
        std::fs::read(self.env.path(&format!("{name}.der"))).unwrap()
    }

    /// The responder's DER answer about `leaf`, asked by `openssl ocsp`.
    async fn ask(&self, leaf: &Leaf, name: &str) -> Vec<u8> {
        let url = self.responder.url.clone();
        self.openssl(leaf, name, &["-url", &url, "-noverify", "-respout"])
            .await
    }

    /// The CertID `openssl ocsp` puts in a request about `leaf`.
    async fn cert_id(&self, leaf: &Leaf, name: &str) -> CertId {
        let req = self.openssl(leaf, name, &["-reqout"]).await;
        OcspRequest::from_der(&req)
            .unwrap()
            .tbs_request
            .request_list[0]
            .req_cert
            .clone()
    }
}

fn gtime(unix: i64) -> OcspGeneralizedTime {
    OcspGeneralizedTime(
        GeneralizedTime::from_unix_duration(Duration::from_secs(unix as u64)).unwrap(),
    )
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// An OCSP response saying "good" for `cert_id` from `this_update` to `next_update` (Unix
/// times), with `sct_list` as its SCT extension, signed by the issuer (the intermediate).
fn signed_response(
    cert_id: CertId,
    this_update: i64,
    next_update: i64,
    sct_list: Option<Vec<u8>>,
) -> Vec<u8> {
    let p = pki();
    let issuer_der = CertificateDer::from_pem_slice(p.inter_pem.as_bytes()).unwrap();
    let issuer = x509_cert::Certificate::from_der(&issuer_der).unwrap();
    let single_extensions = sct_list.map(|l| {
        vec![x509_cert::ext::Extension {
            extn_id: ObjectIdentifier::new_unwrap("1.3.6.1.4.1.11129.2.4.5"),
            critical: false,
            extn_value: OctetString::new(l).unwrap(),
        }]
    });
    let tbs = ResponseData {
        version: Default::default(),
        responder_id: ResponderId::ByName(issuer.tbs_certificate.subject.clone()),
        produced_at: gtime(this_update),
        responses: vec![SingleResponse {
            cert_id,
            cert_status: CertStatus::Good(Null),
            this_update: gtime(this_update),
            next_update: Some(gtime(next_update)),
            single_extensions,
        }],
        response_extensions: None,
    };
    let key = PrivateKeyDer::from_pem_slice(p.inter_key_pem().as_bytes()).unwrap();
    let pair = aws_lc_rs::signature::EcdsaKeyPair::from_pkcs8(
        &aws_lc_rs::signature::ECDSA_P256_SHA256_ASN1_SIGNING,
        key.secret_der(),
    )
    .unwrap();
    let sig = pair
        .sign(
            &aws_lc_rs::rand::SystemRandom::new(),
            &tbs.to_der().unwrap(),
        )
        .unwrap();
    let basic = BasicOcspResponse {
        tbs_response_data: tbs,
        signature_algorithm: AlgorithmIdentifierOwned {
            oid: ObjectIdentifier::new_unwrap("1.2.840.10045.4.3.2"),
            parameters: None,
        },
        signature: BitString::from_bytes(sig.as_ref()).unwrap(),
        certs: None,
    };
    OcspResponse {
        response_status: OcspResponseStatus::Successful,
        response_bytes: Some(ResponseBytes {
            response_type: ObjectIdentifier::new_unwrap("1.3.6.1.5.5.7.48.1.1"),
            response: OctetString::new(basic.to_der().unwrap()).unwrap(),
        }),
    }
    .to_der()
    .unwrap()
}

async fn stapling(leaf: &Leaf, staple: Vec<u8>) -> (i32, Value) {
    let p = pki();
    let addr =
        tls_server_stapling(&p.chain_pem(leaf), &leaf.key_pem, &[], "ok", true, staple).await;
    let (target, ip) = at(addr);
    probe(&target, &["--ip", &ip]).await
}

#[tokio::test]
async fn a_good_staple_is_ok_and_the_responder_says_good() {
    let o = ocsp_setup();
    let leaf = pki().leaf_with_ocsp(&[ALPHA], &o.responder.url, false);
    let staple = o.ask(&leaf, "good").await;
    let (code, r) = stapling(&leaf, staple).await;
    assert_eq!(code, 0, "{r:#}");
    let c = check(&r, "cert.ocsp_staple", "ok");
    assert!(c["summary"].as_str().unwrap().contains("good"), "{c}");
    check(&r, "cert.revocation", "ok");
    assert_eq!(r["facts"]["ocsp_staple"], "good");
    assert_eq!(r["facts"]["revocation"], "good");
    assert_eq!(r["facts"]["ocsp_url"], o.responder.url.as_str());
    // One request from `openssl ocsp` for the staple, one from the probe.
    assert_eq!(o.responder.asked().len(), 2);
}

#[tokio::test]
async fn a_revoked_certificate_is_cert_revoked_in_its_staple_and_at_the_responder() {
    let o = ocsp_setup();
    let leaf = pki().leaf_with_ocsp(&[ALPHA], &o.responder.url, false);
    o.responder.revoke(&cert_serial(&leaf.der));
    let staple = o.ask(&leaf, "revoked").await;
    let (code, r) = stapling(&leaf, staple).await;
    assert_eq!(code, 2, "{r:#}");
    for id in ["cert.ocsp_staple", "cert.revocation"] {
        let c = check(&r, id, "error");
        assert_eq!(c["browser_error"], "NET::ERR_CERT_REVOKED", "{c}");
        assert!(
            c["summary"].as_str().unwrap().contains("KeyCompromise"),
            "{c}"
        );
    }
    assert_eq!(r["facts"]["ocsp_staple"], "revoked");
    assert_eq!(r["facts"]["revocation"], "revoked");

    // Without a staple, the responder alone tells.
    let (code, r) = stapling(&leaf, Vec::new()).await;
    assert_eq!(code, 2, "{r:#}");
    check(&r, "cert.ocsp_staple", "warning");
    let c = check(&r, "cert.revocation", "error");
    assert_eq!(c["browser_error"], "NET::ERR_CERT_REVOKED");
}

#[tokio::test]
async fn an_expired_staple_or_one_for_another_certificate_is_an_error() {
    let o = ocsp_setup();
    let leaf = pki().leaf_with_ocsp(&[ALPHA], &o.responder.url, false);
    let id = o.cert_id(&leaf, "expired").await;
    let t = now();
    let staple = signed_response(id, t - 2 * 86_400, t - 86_400, None);
    let (code, r) = stapling(&leaf, staple).await;
    assert_eq!(code, 2, "{r:#}");
    let c = check(&r, "cert.ocsp_staple", "error");
    assert!(c["summary"].as_str().unwrap().contains("expired"), "{c}");
    assert_eq!(r["facts"]["ocsp_staple"], "invalid");
    // The responder itself has a fresh answer.
    check(&r, "cert.revocation", "ok");

    // A fresh staple, but about another certificate.
    let other = pki().leaf_with_ocsp(&[ALPHA], &o.responder.url, false);
    let staple = o.ask(&other, "other").await;
    let (code, r) = stapling(&leaf, staple).await;
    assert_eq!(code, 2, "{r:#}");
    let c = check(&r, "cert.ocsp_staple", "error");
    assert!(
        c["summary"]
            .as_str()
            .unwrap()
            .contains("another certificate"),
        "{c}"
    );
}

#[tokio::test]
async fn no_staple_while_the_certificate_names_a_responder_is_a_warning_and_a_down_responder_too() {
    let o = ocsp_setup();
    let leaf = pki().leaf_with_ocsp(&[ALPHA], &o.responder.url, false);
    let (code, r) = stapling(&leaf, Vec::new()).await;
    assert_eq!(code, 1, "{r:#}");
    let c = check(&r, "cert.ocsp_staple", "warning");
    assert!(
        c["summary"].as_str().unwrap().contains(&o.responder.url),
        "{c}"
    );
    assert_eq!(r["facts"]["ocsp_staple"], "none");
    check(&r, "cert.revocation", "ok");

    o.responder.set_mode(Mode::Down);
    let (code, r) = stapling(&leaf, Vec::new()).await;
    assert_eq!(code, 1, "{r:#}");
    check(&r, "cert.revocation", "warning");
    assert_eq!(r["facts"]["revocation"], "unreachable");

    // A certificate without a responder: nothing to staple, nothing to ask.
    let plain = pki().leaf(&[ALPHA], Alg::Ecdsa);
    let (code, r) = stapling(&plain, Vec::new()).await;
    assert_eq!(code, 0, "{r:#}");
    let c = check(&r, "cert.ocsp_staple", "ok");
    assert!(c["summary"].as_str().unwrap().contains("no OCSP"), "{c}");
    check(&r, "cert.revocation", "ok");
    assert_eq!(r["facts"]["revocation"], "no_ocsp_url");
}

// =============================================================================================
// Certificate Transparency
// =============================================================================================

/// A DER OCTET STRING holding a SignedCertificateTimestampList (RFC 6962 §3.3) with one v1
/// SCT per log id (no extensions; an ECDSA signature nobody verifies here).
fn sct_list(logs: &[[u8; 32]]) -> Vec<u8> {
    let mut list = Vec::new();
    for id in logs {
        let mut sct = vec![0u8];
        sct.extend_from_slice(id);
        sct.extend_from_slice(&1_760_000_000_000u64.to_be_bytes());
        sct.extend_from_slice(&[0, 0, 4, 3]);
        let sig = [0x5au8; 70];
        sct.extend_from_slice(&(sig.len() as u16).to_be_bytes());
        sct.extend_from_slice(&sig);
        list.extend_from_slice(&(sct.len() as u16).to_be_bytes());
        list.extend(sct);
    }
    let mut tls = (list.len() as u16).to_be_bytes().to_vec();
    tls.extend(list);
    OctetString::new(tls).unwrap().to_der().unwrap()
}

fn log_ids(r: &Value) -> Vec<(String, String)> {
    r["facts"]["sct_logs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            (
                l["log_id"].as_str().unwrap().to_owned(),
                l["source"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

#[tokio::test]
async fn embedded_and_stapled_scts_are_counted_with_their_logs() {
    let o = ocsp_setup();
    let ext = rcgen::CustomExtension::from_oid_content(
        &[1, 3, 6, 1, 4, 1, 11129, 2, 4, 2],
        sct_list(&[[0x11; 32], [0x22; 32]]),
    );
    let leaf = pki().leaf_with_extensions(&[ALPHA], vec![ext]);
    let (code, r) = stapling(&leaf, Vec::new()).await;
    assert_eq!(code, 0, "{r:#}");
    let c = check(&r, "cert.sct", "ok");
    assert!(
        c["summary"]
            .as_str()
            .unwrap()
            .contains("2 SCT(s) in the certificate"),
        "{c}"
    );
    assert_eq!(r["facts"]["sct_count"], 2);
    let b64 = |b: u8| {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.encode([b; 32])
    };
    assert_eq!(
        log_ids(&r),
        vec![
            (b64(0x11), "certificate".to_owned()),
            (b64(0x22), "certificate".to_owned())
        ]
    );

    // One more in a (valid, issuer-signed) staple.
    let id = o.cert_id(&leaf, "sct").await;
    let t = now();
    let staple = signed_response(id, t - 60, t + 3600, Some(sct_list(&[[0x33; 32]])));
    let (code, r) = stapling(&leaf, staple).await;
    assert_eq!(code, 0, "{r:#}");
    check(&r, "cert.ocsp_staple", "ok");
    assert_eq!(r["facts"]["sct_count"], 3);
    assert_eq!(log_ids(&r)[2], (b64(0x33), "ocsp".to_owned()));
}

#[tokio::test]
async fn no_scts_under_a_private_ca_is_fine() {
    let p = pki();
    let leaf = p.leaf(&[ALPHA], Alg::Ecdsa);
    let (code, r) = stapling(&leaf, Vec::new()).await;
    assert_eq!(code, 0, "{r:#}");
    let c = check(&r, "cert.sct", "ok");
    let s = c["summary"].as_str().unwrap();
    assert!(s.contains("no SCTs") && s.contains("private CA"), "{s}");
    assert_eq!(r["facts"]["sct_count"], 0);
}
