//! SPKI pins (RFC 7469: `pin-sha256="base64(sha256(SubjectPublicKeyInfo))"`) and the
//! pre-generated next key of each ACME certificate.
//!
//! The next key is made when a certificate is installed (or when `portcullis pins` first asks
//! for it), kept 0600 beside the certificate as `next-key-<type>.pem`, and used for the CSR of
//! the next order, after which a fresh one is made. Pinning clients can therefore be given the
//! next pin before the renewal that puts it into service. A key-type change makes the stored
//! next key unusable; it is replaced by one of the new type.

use base64::Engine;
use rcgen::PublicKeyData;
use x509_parser::prelude::FromDer;

use super::manager::cert_dir;
use crate::config::model::AcmeKeyType;
use crate::storage::Storage;

/// The RFC 7469 pin of a DER SubjectPublicKeyInfo.
pub fn spki_pin(spki_der: &[u8]) -> String {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, spki_der);
    format!(
        "pin-sha256=\"{}\"",
        base64::engine::general_purpose::STANDARD.encode(digest.as_ref())
    )
}

/// The pin of a DER certificate's key.
pub fn cert_pin(cert_der: &[u8]) -> Option<String> {
    let (_, cert) = x509_parser::certificate::X509Certificate::from_der(cert_der).ok()?;
    Some(spki_pin(cert.public_key().raw))
}

/// The pin of a PEM private key's public half.
pub fn key_pin(key_pem: &str) -> Result<String, rcgen::Error> {
    let key = rcgen::KeyPair::from_pem(key_pem)?;
    Ok(spki_pin(&key.subject_public_key_info()))
}

fn next_key_path(names: &[String], key_type: AcmeKeyType) -> String {
    format!("{}/next-key-{}.pem", cert_dir(names), key_type.as_str())
}

/// The pre-generated key the next order for `names` will use: the stored one, or a new one
/// (stored 0600) when there is none of `key_type` yet. Next keys of other types are removed.
pub fn next_key(
    storage: &dyn Storage,
    names: &[String],
    key_type: AcmeKeyType,
) -> Result<String, String> {
    let path = next_key_path(names, key_type);
    for other in AcmeKeyType::ALL {
        if other != key_type {
            let _ = storage.delete(&next_key_path(names, other));
        }
    }
    match storage.load(&path) {
        Ok(Some(pem)) => match String::from_utf8(pem) {
            Ok(pem) if rcgen::KeyPair::from_pem(&pem).is_ok() => return Ok(pem),
            _ => tracing::warn!(path, "the stored next key is unreadable; making a new one"),
        },
        Ok(None) => {}
        Err(e) => return Err(format!("cannot read {path}: {e}")),
    }
    new_next_key(storage, names, key_type)
}

/// Replaces the next key with a fresh one (after an order used it).
pub fn new_next_key(
    storage: &dyn Storage,
    names: &[String],
    key_type: AcmeKeyType,
) -> Result<String, String> {
    let path = next_key_path(names, key_type);
    let pem = key_type
        .generate()
        .map_err(|e| format!("cannot make a {} key: {e}", key_type.as_str()))?
        .serialize_pem();
    storage
        .store(&path, pem.as_bytes(), true)
        .map_err(|e| format!("cannot store {path}: {e}"))?;
    Ok(pem)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::FileStorage;

    #[test]
    fn the_next_key_is_kept_until_replaced_and_follows_the_key_type() {
        let dir = tempfile::tempdir().unwrap();
        let st = FileStorage::new(dir.path());
        let names = vec!["example.com".to_string()];
        let a = next_key(&st, &names, AcmeKeyType::EcdsaP256).unwrap();
        assert_eq!(next_key(&st, &names, AcmeKeyType::EcdsaP256).unwrap(), a);
        let b = new_next_key(&st, &names, AcmeKeyType::EcdsaP256).unwrap();
        assert_ne!(a, b);
        assert_eq!(next_key(&st, &names, AcmeKeyType::EcdsaP256).unwrap(), b);
        // Another key type: a new key, and the old type's file is gone.
        let c = next_key(&st, &names, AcmeKeyType::EcdsaP384).unwrap();
        assert_ne!(c, b);
        let path = next_key_path(&names, AcmeKeyType::EcdsaP256);
        assert!(st.load(&path).unwrap().is_none());
        assert!(key_pin(&c).unwrap().starts_with("pin-sha256=\""));
    }

    #[test]
    fn a_key_pin_equals_the_pin_of_a_certificate_for_that_key() {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["a.example".to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        assert_eq!(
            cert_pin(cert.der()).unwrap(),
            key_pin(&key.serialize_pem()).unwrap()
        );
    }
}
