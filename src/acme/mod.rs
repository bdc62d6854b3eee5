//! ACME (automatic certificates): the HTTP-01 token store the port-80 listener answers from, and
//! the [`client`] that orders certificates.

pub mod ari;
pub mod client;
pub mod dns;
pub mod manager;
pub mod on_demand;
pub mod pins;

use std::collections::HashMap;
use std::sync::RwLock;

use bytes::Bytes;

/// Pending HTTP-01 challenges: token → key authorization.
#[derive(Debug, Default)]
pub struct Http01Tokens {
    tokens: RwLock<HashMap<String, Bytes>>,
}

impl Http01Tokens {
    /// The key authorization to answer for `token`, if a challenge is pending.
    pub fn get(&self, token: &str) -> Option<Bytes> {
        self.tokens.read().ok()?.get(token).cloned()
    }

    /// Starts answering `token`.
    pub fn insert(&self, token: String, key_authorization: String) {
        if let Ok(mut t) = self.tokens.write() {
            t.insert(token, Bytes::from(key_authorization));
        }
    }

    /// Stops answering `token`.
    pub fn remove(&self, token: &str) {
        if let Ok(mut t) = self.tokens.write() {
            t.remove(token);
        }
    }
}

/// The ALPN protocol of TLS-ALPN-01 validation (RFC 8737).
pub const ACME_TLS_ALPN: &[u8] = b"acme-tls/1";

/// Pending TLS-ALPN-01 challenges: DNS name → the TLS config that presents the challenge
/// certificate (self-signed, with the `acmeIdentifier` extension) over ALPN `acme-tls/1`.
#[derive(Debug, Default)]
pub struct TlsAlpnChallenges {
    configs: RwLock<HashMap<String, std::sync::Arc<rustls::ServerConfig>>>,
}

impl TlsAlpnChallenges {
    /// The config answering the challenge for `name`, if one is pending.
    pub fn get(&self, name: &str) -> Option<std::sync::Arc<rustls::ServerConfig>> {
        self.configs
            .read()
            .ok()?
            .get(&name.to_ascii_lowercase())
            .cloned()
    }

    /// Starts answering the challenge for `name` with `key_auth_digest` (SHA-256 of the key
    /// authorization). Fails only when the certificate cannot be made.
    pub fn insert(&self, name: &str, key_auth_digest: &[u8]) -> Result<(), String> {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
            .map_err(|e| e.to_string())?;
        let mut params =
            rcgen::CertificateParams::new(vec![name.to_string()]).map_err(|e| e.to_string())?;
        params.custom_extensions =
            vec![rcgen::CustomExtension::new_acme_identifier(key_auth_digest)];
        let cert = params.self_signed(&key).map_err(|e| e.to_string())?;
        let key_der = rustls_pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into());
        let signer = rustls::crypto::aws_lc_rs::sign::any_supported_type(&key_der)
            .map_err(|e| e.to_string())?;
        // Not `with_single_cert`: it parses the certificate with webpki, which refuses the
        // critical acmeIdentifier extension this certificate exists to carry.
        let certified = std::sync::Arc::new(rustls::sign::CertifiedKey::new(
            vec![cert.der().clone()],
            signer,
        ));
        let mut config = rustls::ServerConfig::builder_with_provider(std::sync::Arc::new(
            crate::tls::provider(),
        ))
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_cert_resolver(std::sync::Arc::new(crate::tls::resolver::SiteCerts::new(
            vec![certified],
        )));
        config.alpn_protocols = vec![ACME_TLS_ALPN.to_vec()];
        if let Ok(mut c) = self.configs.write() {
            c.insert(name.to_ascii_lowercase(), std::sync::Arc::new(config));
        }
        Ok(())
    }

    /// Stops answering for `name`.
    pub fn remove(&self, name: &str) {
        if let Ok(mut c) = self.configs.write() {
            c.remove(&name.to_ascii_lowercase());
        }
    }
}

/// Where challenges are answered: the port-80 token store, the TLS-ALPN-01 configs and the
/// DNS hook.
#[derive(Debug, Default, Clone)]
pub struct Challenges {
    pub http01: std::sync::Arc<Http01Tokens>,
    pub tls_alpn: std::sync::Arc<TlsAlpnChallenges>,
    /// DNS-01 through `acme.dns_hook`, when configured.
    pub dns: Option<std::sync::Arc<dns::DnsHook>>,
}
