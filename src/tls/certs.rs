//! Loading certificate chains and keys from PEM files, and checking them the way an admin would.
//!
//! [`load_pair`] reads a chain and its key, builds the rustls [`CertifiedKey`] once (so the
//! handshake never parses anything), and reports every problem it can find by name: key does not
//! match, chain out of order, expired, weak key, an intermediate that is missing.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use rustls::crypto::aws_lc_rs;
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::FromDer;
use x509_parser::public_key::PublicKey;

use super::names::HostPattern;
use crate::config::Severity;

/// A chain + key ready for handshakes, with what was learned about it at load time.
#[derive(Clone)]
pub struct LoadedCert {
    pub certified: Arc<CertifiedKey>,
    pub info: CertInfo,
}

impl std::fmt::Debug for LoadedCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedCert")
            .field("info", &self.info)
            .finish()
    }
}

/// Facts about a leaf certificate, for checks, logs and `portcullis certs`.
#[derive(Debug, Clone)]
pub struct CertInfo {
    pub subject: String,
    pub issuer: String,
    /// Validity window, seconds since the Unix epoch.
    pub not_before: i64,
    pub not_after: i64,
    pub dns_names: Vec<String>,
    pub ips: Vec<IpAddr>,
    pub key: KeyKind,
    /// Certificates in the served chain (leaf included).
    pub chain_len: usize,
    /// Where it came from (for messages, and watched for changes).
    pub cert_path: PathBuf,
    /// Where its key came from (watched for changes).
    pub key_path: PathBuf,
}

/// The leaf's public key type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyKind {
    EcdsaP256,
    EcdsaP384,
    Rsa(usize),
    Ed25519,
    Other(String),
}

impl std::fmt::Display for KeyKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KeyKind::EcdsaP256 => f.write_str("ECDSA P-256"),
            KeyKind::EcdsaP384 => f.write_str("ECDSA P-384"),
            KeyKind::Rsa(bits) => write!(f, "RSA-{bits}"),
            KeyKind::Ed25519 => f.write_str("Ed25519"),
            KeyKind::Other(s) => f.write_str(s),
        }
    }
}

/// One thing found about a certificate: an error (unusable) or a warning.
#[derive(Debug, Clone)]
pub struct Finding {
    pub severity: Severity,
    pub message: String,
    pub fix: String,
}

impl Finding {
    fn error(message: impl Into<String>, fix: impl Into<String>) -> Self {
        Finding {
            severity: Severity::Error,
            message: message.into(),
            fix: fix.into(),
        }
    }
    fn warning(message: impl Into<String>, fix: impl Into<String>) -> Self {
        Finding {
            severity: Severity::Warning,
            message: message.into(),
            fix: fix.into(),
        }
    }
}

/// Days before expiry from which a warning is given.
pub const EXPIRY_WARNING_DAYS: i64 = 30;

/// Reads a chain and key, checks them, and builds the [`CertifiedKey`].
///
/// `Err` holds the first fatal problem (the pair cannot be used at all); `Ok` holds the loaded
/// pair and every further finding, errors included (expired, out of order), so that the caller
/// decides whether it is fatal (`check`) or a loud warning (`serve`).
pub fn load_pair(
    cert_path: &Path,
    key_path: &Path,
    now: i64,
    extra_roots: &[Vec<u8>],
) -> Result<(LoadedCert, Vec<Finding>), Finding> {
    let cert_pem = read_file(cert_path, "certificate")?;
    let key_pem = read_file(key_path, "key")?;
    load_pem(&cert_pem, &key_pem, cert_path, key_path, now, extra_roots)
}

fn read_file(path: &Path, what: &str) -> Result<Vec<u8>, Finding> {
    std::fs::read(path).map_err(|e| {
        let fix = match e.kind() {
            std::io::ErrorKind::NotFound => {
                "check the path (relative paths are relative to the config file, or to the current directory for flags)"
            }
            std::io::ErrorKind::PermissionDenied => {
                "make the file readable by the user portcullis runs as"
            }
            _ => "check the file",
        };
        Finding::error(
            format!("cannot read {what} file {}: {e}", path.display()),
            fix,
        )
    })
}

/// [`load_pair`] on PEM text already in memory (`*_path` only names the source in messages).
pub fn load_pem(
    cert_pem: &[u8],
    key_pem: &[u8],
    cert_path: &Path,
    key_path: &Path,
    now: i64,
    extra_roots: &[Vec<u8>],
) -> Result<(LoadedCert, Vec<Finding>), Finding> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| {
            Finding::error(
                format!("{}: malformed PEM: {e}", cert_path.display()),
                "the file must hold PEM \"CERTIFICATE\" blocks, leaf first",
            )
        })?;
    if chain.is_empty() {
        let fix = if PrivateKeyDer::from_pem_slice(cert_pem).is_ok() {
            "this file holds a private key: swap the cert and key paths"
        } else {
            "the file must hold PEM \"-----BEGIN CERTIFICATE-----\" blocks, leaf first"
        };
        return Err(Finding::error(
            format!("{}: no certificate found", cert_path.display()),
            fix,
        ));
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| {
        let fix = if CertificateDer::pem_slice_iter(key_pem).next().is_some() {
            "this file holds a certificate, not a key: check the key path".to_string()
        } else {
            "the key must be PEM: PKCS#8 (BEGIN PRIVATE KEY), SEC1 (BEGIN EC PRIVATE KEY) or PKCS#1 (BEGIN RSA PRIVATE KEY); encrypted keys are not supported".to_string()
        };
        Finding::error(format!("{}: no usable private key: {e}", key_path.display()), fix)
    })?;

    let parsed: Vec<X509Certificate<'_>> = chain
        .iter()
        .enumerate()
        .map(|(i, der)| {
            X509Certificate::from_der(der).map(|(_, c)| c).map_err(|e| {
                Finding::error(
                    format!(
                        "{}: certificate {} cannot be parsed: {e}",
                        cert_path.display(),
                        i + 1
                    ),
                    "replace it with the certificate your CA issued",
                )
            })
        })
        .collect::<Result<_, _>>()?;
    let leaf = &parsed[0];
    let key_kind = key_kind(leaf);

    let signing_key = aws_lc_rs::sign::any_supported_type(&key).map_err(|e| {
        Finding::error(
            format!("{}: unsupported private key ({e})", key_path.display()),
            "use ECDSA P-256/P-384, RSA ≥ 2048 bits or Ed25519",
        )
    })?;
    let certified = CertifiedKey::new(chain.clone(), signing_key.clone());
    match certified.keys_match() {
        Ok(()) => {}
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch)) => {
            // The key may belong to a certificate further down: then the chain is out of order.
            let owner = (1..chain.len()).find(|&j| {
                CertifiedKey::new(vec![chain[j].clone()], signing_key.clone())
                    .keys_match()
                    .is_ok()
            });
            if let Some(j) = owner {
                return Err(Finding::error(
                    format!(
                        "{}: chain is out of order: the key belongs to certificate {} ({}), but the file starts with {}",
                        cert_path.display(),
                        j + 1,
                        subject_of(&parsed[j]),
                        subject_of(leaf)
                    ),
                    format!("put the leaf (certificate {}) first, then its issuer, then that one's issuer", j + 1),
                ));
            }
            return Err(Finding::error(
                format!("{}: private key does not match the certificate {} ({})", key_path.display(), subject_of(leaf), cert_path.display()),
                "use the key the certificate was issued for (compare `openssl x509 -pubkey` with `openssl pkey -pubout`)",
            ));
        }
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {}
        Err(e) => {
            return Err(Finding::error(
                format!("{}: {e}", key_path.display()),
                "check the key",
            ))
        }
    }

    let mut findings = Vec::new();
    let label = cert_path.display().to_string();
    match &key_kind {
        KeyKind::Rsa(bits) if *bits < 2048 => findings.push(Finding::error(
            format!("{label}: RSA key of {bits} bits is too weak"),
            "get a certificate with an RSA ≥ 2048 or ECDSA P-256 key",
        )),
        KeyKind::Other(s) => findings.push(Finding::error(
            format!("{label}: unsupported key type {s}"),
            "use ECDSA P-256/P-384, RSA ≥ 2048 bits or Ed25519",
        )),
        _ => {}
    }
    if is_ca(leaf) && parsed.iter().skip(1).any(|c| !is_ca(c)) {
        findings.push(Finding::error(
            format!("{label}: the first certificate ({}) is a CA, but the chain holds a leaf further down", subject_of(leaf)),
            "put the leaf (server) certificate first, then its issuer, then that one's issuer",
        ));
    }
    check_order(&parsed, &label, &mut findings);
    check_validity(&parsed, &label, now, &mut findings);
    check_complete(&parsed, &label, extra_roots, &mut findings);

    let (dns_names, ips) = sans(leaf);
    let info = CertInfo {
        subject: subject_of(leaf),
        issuer: leaf.issuer().to_string(),
        not_before: leaf.validity().not_before.timestamp(),
        not_after: leaf.validity().not_after.timestamp(),
        dns_names,
        ips,
        key: key_kind,
        chain_len: chain.len(),
        cert_path: cert_path.to_path_buf(),
        key_path: key_path.to_path_buf(),
    };
    Ok((
        LoadedCert {
            certified: Arc::new(certified),
            info,
        },
        findings,
    ))
}

/// A private key file that other users can read (group or others have read permission), or
/// that belongs to another user than the one running this process: what is wrong, and the
/// command that fixes it. `None` when the file is private (or cannot be examined: reading it
/// reports that).
pub fn key_file_exposure(path: &Path) -> Option<(String, String)> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(path).ok()?;
    let mode = meta.mode() & 0o777;
    let me = rustix::process::geteuid().as_raw();
    let shown = path.display();
    let mut wrong = Vec::new();
    let mut fix = Vec::new();
    if mode & 0o044 != 0 {
        let who = match (mode & 0o040 != 0, mode & 0o004 != 0) {
            (true, true) => "its group and all other users",
            (true, false) => "its group",
            _ => "all other users",
        };
        wrong.push(format!("is readable by {who} (mode {mode:04o})"));
        fix.push(format!("chmod 600 {shown}"));
    }
    if meta.uid() != me {
        wrong.push(format!(
            "belongs to user id {}, not to the server's user (id {me})",
            meta.uid()
        ));
        fix.push(format!("chown {me} {shown}"));
    }
    if wrong.is_empty() {
        return None;
    }
    Some((
        format!("private key {shown} {}", wrong.join(" and ")),
        fix.join("; "),
    ))
}

/// What a served leaf (DER) says of itself, for checks after loading: subject, issuer,
/// validity and names. The key kind and file are not known from the certificate alone
/// (`KeyKind::Other("")`, an empty path).
pub fn leaf_info(der: &[u8]) -> Option<CertInfo> {
    let (_, leaf) = X509Certificate::from_der(der).ok()?;
    let (dns_names, ips) = sans(&leaf);
    Some(CertInfo {
        subject: subject_of(&leaf),
        issuer: leaf.issuer().to_string(),
        not_before: leaf.validity().not_before.timestamp(),
        not_after: leaf.validity().not_after.timestamp(),
        dns_names,
        ips,
        key: KeyKind::Other(String::new()),
        chain_len: 1,
        cert_path: PathBuf::new(),
        key_path: PathBuf::new(),
    })
}

/// "CN=…" or the whole subject when there is no CN.
fn subject_of(cert: &X509Certificate<'_>) -> String {
    match cert
        .subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
    {
        Some(cn) => format!("CN={cn}"),
        None => cert.subject().to_string(),
    }
}

fn is_ca(cert: &X509Certificate<'_>) -> bool {
    cert.basic_constraints()
        .ok()
        .flatten()
        .map(|bc| bc.value.ca)
        .unwrap_or(false)
}

pub(crate) fn key_kind(cert: &X509Certificate<'_>) -> KeyKind {
    match cert.public_key().parsed() {
        Ok(PublicKey::EC(point)) => match point.key_size() {
            256 => KeyKind::EcdsaP256,
            384 => KeyKind::EcdsaP384,
            n => KeyKind::Other(format!("EC key of {n} bits")),
        },
        Ok(PublicKey::RSA(rsa)) => KeyKind::Rsa(rsa.key_size()),
        _ => {
            let oid = cert.public_key().algorithm.algorithm.to_id_string();
            if oid == "1.3.101.112" {
                KeyKind::Ed25519
            } else {
                KeyKind::Other(format!("key algorithm {oid}"))
            }
        }
    }
}

pub(crate) fn sans(cert: &X509Certificate<'_>) -> (Vec<String>, Vec<IpAddr>) {
    let mut dns = Vec::new();
    let mut ips = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            match name {
                GeneralName::DNSName(n) => dns.push(n.to_ascii_lowercase()),
                GeneralName::IPAddress(b) => match b.len() {
                    4 => ips.push(IpAddr::from(<[u8; 4]>::try_from(*b).unwrap_or_default())),
                    16 => ips.push(IpAddr::from(<[u8; 16]>::try_from(*b).unwrap_or_default())),
                    _ => {}
                },
                _ => {}
            }
        }
    }
    (dns, ips)
}

/// Each certificate must be issued (name and signature) by the next one.
fn check_order(parsed: &[X509Certificate<'_>], label: &str, out: &mut Vec<Finding>) {
    for i in 0..parsed.len().saturating_sub(1) {
        let (child, parent) = (&parsed[i], &parsed[i + 1]);
        if child.issuer().as_raw() != parent.subject().as_raw() {
            let real = parsed
                .iter()
                .position(|c| c.subject().as_raw() == child.issuer().as_raw());
            let fix = match real {
                Some(j) => format!("certificate {} is its issuer: order the file leaf first, then each certificate's issuer", j + 1),
                None => "order the file leaf first, then each certificate's issuer (the intermediate), and drop unrelated certificates".to_string(),
            };
            out.push(Finding::error(
                format!("{label}: chain is out of order: certificate {} ({}) did not issue certificate {} ({})", i + 2, subject_of(parent), i + 1, subject_of(child)),
                fix,
            ));
            return;
        }
        if child.verify_signature(Some(parent.public_key())).is_err() {
            out.push(Finding::error(
                format!("{label}: certificate {} ({}) has the issuer name of certificate {} ({}) but its signature does not verify with that key", i + 1, subject_of(child), i + 2, subject_of(parent)),
                "use the intermediate certificate your CA published for this certificate",
            ));
            return;
        }
    }
}

fn check_validity(parsed: &[X509Certificate<'_>], label: &str, now: i64, out: &mut Vec<Finding>) {
    for (i, cert) in parsed.iter().enumerate() {
        let which = if i == 0 {
            "the certificate".to_string()
        } else {
            format!("chain certificate {} ({})", i + 1, subject_of(cert))
        };
        let nb = cert.validity().not_before.timestamp();
        let na = cert.validity().not_after.timestamp();
        if na < now {
            out.push(Finding::error(
                format!(
                    "{label}: {which} expired on {} ({} days ago)",
                    fmt_time(na),
                    (now - na) / 86400
                ),
                "renew it (or remove cert/key to let portcullis obtain one)",
            ));
        } else if nb > now {
            out.push(Finding::error(
                format!("{label}: {which} is not valid before {}", fmt_time(nb)),
                "check the system clock, or wait until it becomes valid",
            ));
        } else if na - now < EXPIRY_WARNING_DAYS * 86400 {
            out.push(Finding::warning(
                format!(
                    "{label}: {which} expires on {} (in {} days)",
                    fmt_time(na),
                    (na - now) / 86400
                ),
                "renew it soon",
            ));
        }
    }
}

/// Warns when the last certificate is not a root and its issuer is no known root: the
/// intermediate is most likely missing from the file (browsers then say "untrusted").
fn check_complete(
    parsed: &[X509Certificate<'_>],
    label: &str,
    extra_roots: &[Vec<u8>],
    out: &mut Vec<Finding>,
) {
    let last = &parsed[parsed.len() - 1];
    if last.issuer().as_raw() == last.subject().as_raw() {
        if parsed.len() > 1 {
            out.push(Finding::warning(format!("{label}: the chain includes the root certificate ({}); clients already have it", subject_of(last)), "drop the root from the chain file to save bytes in every handshake"));
        }
        return;
    }
    let issuer = last.issuer().as_raw();
    let known = known_root_subjects()
        .iter()
        .chain(extra_roots.iter())
        .any(|s| s.as_slice() == issuer);
    if !known {
        if parsed.len() > 1 && is_ca(last) {
            // The intermediate is there; its root is simply not a public one.
            out.push(Finding::warning(
                format!("{label}: the chain ends at {} whose issuer ({}) is not a well-known root: only clients that trust that root (a private CA) will accept it", subject_of(last), last.issuer()),
                "fine for a private CA whose root your clients have installed; for public sites use a certificate from a public CA",
            ));
        } else {
            out.push(Finding::warning(
                format!("{label}: chain may be incomplete: the file holds only {} and its issuer ({}) is neither in the file nor a well-known root", subject_of(last), last.issuer()),
                "append the intermediate certificate(s) from your CA to the chain file (use the CA's \"fullchain\" file)",
            ));
        }
    }
}

/// DER subjects (with the SEQUENCE header) of the roots clients commonly trust: Mozilla's list
/// (webpki-roots) plus the system bundle when present.
fn known_root_subjects() -> &'static [Vec<u8>] {
    static ROOTS: OnceLock<Vec<Vec<u8>>> = OnceLock::new();
    ROOTS.get_or_init(|| {
        let mut out: Vec<Vec<u8>> = webpki_roots::TLS_SERVER_ROOTS
            .iter()
            .map(|ta| {
                // webpki stores the Name's contents without the outer SEQUENCE header.
                let body: &[u8] = ta.subject.as_ref();
                let mut der = vec![0x30];
                push_der_len(&mut der, body.len());
                der.extend_from_slice(body);
                der
            })
            .collect();
        for bundle in [
            "/etc/ssl/certs/ca-certificates.crt",
            "/etc/pki/tls/certs/ca-bundle.crt",
        ] {
            if let Ok(pem) = std::fs::read(bundle) {
                for der in CertificateDer::pem_slice_iter(&pem).flatten() {
                    if let Ok((_, c)) = X509Certificate::from_der(&der) {
                        out.push(c.subject().as_raw().to_vec());
                    }
                }
                break;
            }
        }
        out
    })
}

fn push_der_len(out: &mut Vec<u8>, len: usize) {
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes = len.to_be_bytes();
        let skip = bytes.iter().take_while(|&&b| b == 0).count();
        out.push(0x80 | (bytes.len() - skip) as u8);
        out.extend_from_slice(&bytes[skip..]);
    }
}

/// The DER subject of a CA certificate, for [`load_pair`]'s `extra_roots`.
pub fn subject_der(cert_der: &[u8]) -> Option<Vec<u8>> {
    X509Certificate::from_der(cert_der)
        .ok()
        .map(|(_, c)| c.subject().as_raw().to_vec())
}

/// Whether the leaf's SANs cover `pattern` (wildcard SANs cover one label; a wildcard pattern
/// needs a wildcard SAN of the same suffix).
pub fn covers(info: &CertInfo, pattern: &HostPattern) -> bool {
    match pattern {
        HostPattern::Ip(ip) => info.ips.contains(ip),
        HostPattern::Exact(name) => info.dns_names.iter().any(|san| san_matches(san, name)),
        HostPattern::Wildcard(suffix) => info
            .dns_names
            .iter()
            .any(|san| san.strip_prefix("*.") == Some(suffix.as_str())),
    }
}

fn san_matches(san: &str, name: &str) -> bool {
    let san = san.trim_end_matches('.');
    match san.strip_prefix("*.") {
        Some(suffix) => name
            .split_once('.')
            .is_some_and(|(first, rest)| !first.is_empty() && rest == suffix),
        None => san == name,
    }
}

/// `2026-01-31 12:00 UTC`.
pub fn fmt_time(unix: i64) -> String {
    match time::OffsetDateTime::from_unix_timestamp(unix) {
        Ok(t) => format!(
            "{:04}-{:02}-{:02} {:02}:{:02} UTC",
            t.year(),
            u8::from(t.month()),
            t.day(),
            t.hour(),
            t.minute()
        ),
        Err(_) => unix.to_string(),
    }
}

/// Seconds since the Unix epoch, now.
pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// The DNS and IP names of the first certificate in a PEM file (for quick mode without --domain).
pub fn names_in_pem_file(path: &Path) -> Option<Vec<String>> {
    let pem = std::fs::read(path).ok()?;
    let der = CertificateDer::pem_slice_iter(&pem).next()?.ok()?;
    let (_, cert) = X509Certificate::from_der(&der).ok()?;
    let (dns, ips) = sans(&cert);
    Some(
        dns.into_iter()
            .chain(ips.into_iter().map(|i| i.to_string()))
            .collect(),
    )
}
