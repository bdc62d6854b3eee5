//! A local certificate authority for `localhost`, IP addresses and internal names (like mkcert).
//!
//! The root (ECDSA P-256, 10 years) is created once in `<data_dir>/local-ca/` and never leaves
//! the machine; `portcullis trust` installs it. Leaves are short-lived (7 days), kept on disk, and
//! re-issued when less than a third of their lifetime is left, so a stolen leaf key is worth little.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};

use super::certs::{self, LoadedCert};
use super::names::HostPattern;
use crate::storage;

/// Lifetime of leaf certificates.
pub const LEAF_LIFETIME: Duration = Duration::from_secs(7 * 24 * 3600);
const ROOT_LIFETIME: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// The local CA: its root certificate and signing key.
pub struct LocalCa {
    dir: PathBuf,
    root_pem: String,
    root_der: Vec<u8>,
    key: KeyPair,
}

impl std::fmt::Debug for LocalCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalCa").field("dir", &self.dir).finish()
    }
}

/// `<data_dir>/local-ca`.
pub fn ca_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("local-ca")
}

/// Where the root certificate (the file to trust) lives.
pub fn root_cert_path(data_dir: &Path) -> PathBuf {
    ca_dir(data_dir).join("root.pem")
}

impl LocalCa {
    /// Opens the CA in `data_dir`, creating it on first use.
    pub fn open_or_create(data_dir: &Path) -> Result<Self, String> {
        let dir = ca_dir(data_dir);
        storage::ensure_private_dir(&dir).map_err(|e| {
            format!(
                "cannot create {}: {e} (set data_dir or --data-dir to a writable directory)",
                dir.display()
            )
        })?;
        let key_path = dir.join("root-key.pem");
        let cert_path = dir.join("root.pem");
        if !key_path.exists() {
            let (cert_pem, key_pem) =
                new_root().map_err(|e| format!("cannot create the local CA: {e}"))?;
            // Key first, then cert: a reader that sees the cert always finds its key.
            let won = storage::create_new_atomic(&key_path, key_pem.as_bytes(), 0o600)
                .map_err(|e| format!("cannot write {}: {e}", key_path.display()))?;
            if won {
                storage::write_atomic(&cert_path, cert_pem.as_bytes(), 0o644)
                    .map_err(|e| format!("cannot write {}: {e}", cert_path.display()))?;
                tracing::info!(root = %cert_path.display(), "created a new local CA");
            } else {
                // Another process created it at the same moment; give it a moment to write the cert.
                for _ in 0..50 {
                    if cert_path.exists() {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        }
        Self::open(data_dir)?.ok_or_else(|| format!("local CA in {} is incomplete: root.pem is missing; delete the directory to start a new CA", dir.display()))
    }

    /// Opens an existing CA; `Ok(None)` when none was created yet.
    pub fn open(data_dir: &Path) -> Result<Option<Self>, String> {
        let dir = ca_dir(data_dir);
        let key_path = dir.join("root-key.pem");
        let cert_path = dir.join("root.pem");
        if !key_path.exists() || !cert_path.exists() {
            return Ok(None);
        }
        let key_pem = std::fs::read_to_string(&key_path)
            .map_err(|e| format!("cannot read {}: {e}", key_path.display()))?;
        let root_pem = std::fs::read_to_string(&cert_path)
            .map_err(|e| format!("cannot read {}: {e}", cert_path.display()))?;
        let key = KeyPair::from_pem(&key_pem).map_err(|e| {
            format!(
                "{}: corrupt CA key ({e}); delete {} to start a new local CA",
                key_path.display(),
                dir.display()
            )
        })?;
        let root_der = rustls_pki_types::pem::PemObject::from_pem_slice(root_pem.as_bytes())
            .map(|c: rustls_pki_types::CertificateDer<'static>| c.to_vec())
            .map_err(|e| {
                format!(
                    "{}: corrupt CA certificate ({e}); delete {} to start a new local CA",
                    cert_path.display(),
                    dir.display()
                )
            })?;
        Ok(Some(LocalCa {
            dir,
            root_pem,
            root_der,
            key,
        }))
    }

    /// The root certificate, PEM.
    pub fn root_pem(&self) -> &str {
        &self.root_pem
    }

    /// The root's DER subject (for chain completeness checks).
    pub fn root_subject(&self) -> Option<Vec<u8>> {
        certs::subject_der(&self.root_der)
    }

    /// Issues a fresh leaf for `names`; returns (certificate PEM, key PEM).
    pub fn issue(&self, names: &[HostPattern]) -> Result<(String, String), String> {
        let mut params = CertificateParams::default();
        params.subject_alt_names = names
            .iter()
            .map(|n| match n {
                HostPattern::Ip(ip) => Ok(SanType::IpAddress(*ip)),
                other => other
                    .to_string()
                    .try_into()
                    .map(SanType::DnsName)
                    .map_err(|e| format!("{other}: {e}")),
            })
            .collect::<Result<_, _>>()?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "portcullis local CA");
        dn.push(
            DnType::CommonName,
            names
                .first()
                .map(|n| n.to_string())
                .unwrap_or_else(|| "localhost".into()),
        );
        params.distinguished_name = dn;
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::hours(1);
        params.not_after = now + LEAF_LIFETIME;
        params.serial_number = Some(random_serial());
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        let leaf_key =
            KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(|e| e.to_string())?;
        let issuer = Issuer::from_ca_cert_der(&self.root_der.clone().into(), &self.key)
            .map_err(|e| e.to_string())?;
        let cert = params
            .signed_by(&leaf_key, &issuer)
            .map_err(|e| e.to_string())?;
        Ok((cert.pem(), leaf_key.serialize_pem()))
    }

    /// The leaf for `names`: the one on disk while it covers the names and has more than a
    /// third of its lifetime left, else a newly issued one (saved for the next start).
    pub fn leaf_for(&self, names: &[HostPattern]) -> Result<LoadedCert, String> {
        let id = names_id(names);
        let leaves = self.dir.join("leaves");
        storage::ensure_private_dir(&leaves)
            .map_err(|e| format!("cannot create {}: {e}", leaves.display()))?;
        let cert_path = leaves.join(format!("{id}.pem"));
        let key_path = leaves.join(format!("{id}.key"));
        let now = certs::unix_now();
        let roots = self.root_subject().into_iter().collect::<Vec<_>>();
        if let Ok((loaded, findings)) = certs::load_pair(&cert_path, &key_path, now, &roots) {
            let fresh = needs_renewal(&loaded, now).is_none();
            let covers = names.iter().all(|n| certs::covers(&loaded.info, n));
            if fresh
                && covers
                && findings
                    .iter()
                    .all(|f| f.severity != crate::config::Severity::Error)
            {
                return Ok(loaded);
            }
        }
        let (cert_pem, key_pem) = self.issue(names)?;
        storage::write_atomic(&key_path, key_pem.as_bytes(), 0o600)
            .map_err(|e| format!("cannot write {}: {e}", key_path.display()))?;
        storage::write_atomic(&cert_path, cert_pem.as_bytes(), 0o644)
            .map_err(|e| format!("cannot write {}: {e}", cert_path.display()))?;
        certs::load_pem(
            cert_pem.as_bytes(),
            key_pem.as_bytes(),
            &cert_path,
            &key_path,
            now,
            &roots,
        )
        .map(|(l, _)| l)
        .map_err(|f| f.message)
    }
}

/// `Some(reason)` when a local leaf should be re-issued (less than a third of its life left).
pub fn needs_renewal(cert: &LoadedCert, now: i64) -> Option<&'static str> {
    let life = cert.info.not_after - cert.info.not_before;
    if cert.info.not_after - now < life / 3 {
        Some("less than a third of its lifetime left")
    } else {
        None
    }
}

fn new_root() -> Result<(String, String), rcgen::Error> {
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let mut params = CertificateParams::default();
    let host = rustix::system::uname()
        .nodename()
        .to_string_lossy()
        .into_owned();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "portcullis local CA");
    dn.push(
        DnType::CommonName,
        format!(
            "portcullis local CA {host} {}",
            crate::storage::hex(&random_bytes::<4>())
        ),
    );
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::hours(1);
    params.not_after = now + ROOT_LIFETIME;
    params.serial_number = Some(random_serial());
    let cert = params.self_signed(&key)?;
    Ok((cert.pem(), key.serialize_pem()))
}

pub(crate) fn random_bytes<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    // aws-lc's DRBG; failure here means the system has no randomness at all.
    aws_lc_rs::rand::fill(&mut b).expect("system random number generator failed");
    b
}

fn random_serial() -> rcgen::SerialNumber {
    let mut b = random_bytes::<16>();
    b[0] &= 0x7f; // positive INTEGER
    rcgen::SerialNumber::from_slice(&b)
}

/// A stable file name for a set of names.
fn names_id(names: &[HostPattern]) -> String {
    let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    storage::names_id(&names)
}
