//! Certificate choice inside one site: the first unexpired chain whose key can sign with a
//! scheme the client offers (ECDSA before Ed25519 before RSA), swappable at run time without a
//! restart.

use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::SignatureAlgorithm;

/// A site's chains, in preference order, with each leaf's expiry.
#[derive(Debug, Default)]
pub struct Chains {
    certs: Vec<Arc<CertifiedKey>>,
    /// `notAfter` of each chain's leaf (Unix time; `i64::MAX` when unreadable).
    not_after: Vec<i64>,
}

impl std::ops::Deref for Chains {
    type Target = Vec<Arc<CertifiedKey>>;
    fn deref(&self) -> &Self::Target {
        &self.certs
    }
}

fn not_after(ck: &CertifiedKey) -> i64 {
    use x509_parser::prelude::FromDer;
    ck.cert
        .first()
        .and_then(|c| x509_parser::certificate::X509Certificate::from_der(c).ok())
        .map_or(i64::MAX, |(_, c)| c.validity().not_after.timestamp())
}

/// A site's chains, in preference order.
#[derive(Debug)]
pub struct SiteCerts {
    certs: ArcSwap<Chains>,
    /// Told when the chains are replaced (the OCSP stapler staples new ones at once).
    on_change: std::sync::OnceLock<Arc<tokio::sync::Notify>>,
}

fn rank(ck: &CertifiedKey) -> u8 {
    match ck.key.algorithm() {
        SignatureAlgorithm::ECDSA => 0,
        SignatureAlgorithm::ED25519 => 1,
        SignatureAlgorithm::RSA => 2,
        _ => 3,
    }
}

fn sorted(mut certs: Vec<Arc<CertifiedKey>>) -> Chains {
    certs.sort_by_key(|c| rank(c));
    let not_after = certs.iter().map(|c| not_after(c)).collect();
    Chains { certs, not_after }
}

impl SiteCerts {
    pub fn new(certs: Vec<Arc<CertifiedKey>>) -> Self {
        SiteCerts {
            certs: ArcSwap::from_pointee(sorted(certs)),
            on_change: std::sync::OnceLock::new(),
        }
    }

    /// Replaces the chains; handshakes already under way finish with the old ones.
    pub fn replace(&self, certs: Vec<Arc<CertifiedKey>>) {
        self.certs.store(Arc::new(sorted(certs)));
        if let Some(n) = self.on_change.get() {
            n.notify_one();
        }
    }

    /// Has `notify` told whenever [`SiteCerts::replace`] runs (one listener per site).
    pub fn notify_changes(&self, notify: Arc<tokio::sync::Notify>) {
        let _ = self.on_change.set(notify);
    }

    /// The chains served now.
    pub fn current(&self) -> Arc<Chains> {
        self.certs.load_full()
    }

    /// Staples `ocsp` (or removes the staple, with `None`) on the chain whose leaf is `leaf`.
    /// Returns false when no served chain has that leaf any more (it was replaced meanwhile).
    pub fn set_ocsp(&self, leaf: &[u8], ocsp: Option<&[u8]>) -> bool {
        let mut found = false;
        self.certs.rcu(|chains| {
            found = false;
            let mut out = Vec::with_capacity(chains.len());
            for ck in chains.iter() {
                if ck.cert.first().map(|c| c.as_ref()) == Some(leaf) {
                    found = true;
                    if ck.ocsp.as_deref() != ocsp {
                        let mut new = CertifiedKey::clone(ck);
                        new.ocsp = ocsp.map(|o| o.to_vec());
                        out.push(Arc::new(new));
                        continue;
                    }
                }
                out.push(ck.clone());
            }
            Chains {
                certs: out,
                not_after: chains.not_after.clone(),
            }
        });
        found
    }

    /// True when the site has at least one chain.
    pub fn is_empty(&self) -> bool {
        self.certs.load().is_empty()
    }
}

impl ResolvesServerCert for SiteCerts {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let chains = self.certs.load();
        let schemes = hello.signature_schemes();
        let usable = |c: &&Arc<CertifiedKey>| c.key.choose_scheme(schemes).is_some();
        // Never an expired chain while a valid one the client can use exists (caddy#7589).
        let now = crate::tls::certs::unix_now();
        chains
            .iter()
            .zip(&chains.not_after)
            .find(|(c, &until)| until > now && usable(c))
            .map(|(c, _)| c)
            .or_else(|| chains.iter().find(usable))
            .or_else(|| chains.first())
            .cloned()
    }
}

/// Certificates by exact name, added at run time (on-demand TLS), served in front of a site's
/// own chains.
#[derive(Debug, Default)]
pub struct NamedCerts {
    certs: std::sync::RwLock<std::collections::HashMap<String, Arc<CertifiedKey>>>,
    /// Told when a certificate is added or replaced (the OCSP stapler staples it at once).
    on_change: std::sync::OnceLock<Arc<tokio::sync::Notify>>,
}

impl NamedCerts {
    /// The certificate for `name` (lower-case), if one was added.
    pub fn get(&self, name: &str) -> Option<Arc<CertifiedKey>> {
        self.certs.read().ok()?.get(name).cloned()
    }

    /// True when `name` (lower-case) has a certificate.
    pub fn contains(&self, name: &str) -> bool {
        self.certs.read().is_ok_and(|c| c.contains_key(name))
    }

    /// Adds or replaces the certificate for `name`.
    pub fn insert(&self, name: &str, cert: Arc<CertifiedKey>) {
        if let Ok(mut c) = self.certs.write() {
            c.insert(name.to_string(), cert);
        }
        if let Some(n) = self.on_change.get() {
            n.notify_one();
        }
    }

    /// Has `notify` told whenever [`NamedCerts::insert`] runs.
    pub fn notify_changes(&self, notify: Arc<tokio::sync::Notify>) {
        let _ = self.on_change.set(notify);
    }

    /// Staples `ocsp` (or removes the staple) on every certificate whose leaf is `leaf`.
    pub fn set_ocsp(&self, leaf: &[u8], ocsp: Option<&[u8]>) -> bool {
        let Ok(mut c) = self.certs.write() else {
            return false;
        };
        let mut found = false;
        for ck in c.values_mut() {
            if ck.cert.first().map(|c| c.as_ref()) == Some(leaf) {
                found = true;
                if ck.ocsp.as_deref() != ocsp {
                    let mut new = CertifiedKey::clone(ck);
                    new.ocsp = ocsp.map(|o| o.to_vec());
                    *ck = Arc::new(new);
                }
            }
        }
        found
    }

    /// How many names have a certificate.
    pub fn len(&self) -> usize {
        self.certs.read().map_or(0, |c| c.len())
    }

    /// True when no name has a certificate.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every name with its certificate.
    pub fn all(&self) -> Vec<(String, Arc<CertifiedKey>)> {
        self.certs.read().map_or_else(
            |_| Vec::new(),
            |c| c.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        )
    }
}

/// A site's resolver when it also serves on-demand names: the name's own certificate first,
/// the site's chains otherwise.
#[derive(Debug)]
pub struct WithNamed {
    pub named: Arc<NamedCerts>,
    pub site: Arc<SiteCerts>,
}

impl ResolvesServerCert for WithNamed {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        if let Some(name) = hello.server_name() {
            let lower = name.to_ascii_lowercase();
            if let Some(c) = self.named.get(&lower) {
                return Some(c);
            }
        }
        self.site.resolve(hello)
    }
}
