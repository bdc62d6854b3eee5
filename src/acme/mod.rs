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
#[derive(Default)]
pub struct Http01Tokens {
    tokens: RwLock<HashMap<String, Bytes>>,
    /// With a shared store: where a token missing here is looked up.
    shared: Option<SharedLookup>,
}

/// Looking a token up in the shared store when its announcement has not arrived (this
/// instance's subscription was down when another instance placed it), as Caddy's distributed
/// solver does. Bounded: only strings shaped like ACME tokens, at most [`LOOKUPS_PER_SEC`] a
/// second (a burst of twice that) for all clients together, so random paths on port 80 cannot
/// turn into a stream of Redis reads.
struct SharedLookup {
    storage: std::sync::Arc<dyn crate::storage::Storage>,
    budget: governor::DefaultDirectRateLimiter,
}

/// Store lookups of unknown HTTP-01 tokens allowed per second.
const LOOKUPS_PER_SEC: u32 = 10;

impl std::fmt::Debug for Http01Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Http01Tokens")
            .field("shared", &self.shared.is_some())
            .finish_non_exhaustive()
    }
}

/// An answer that may still come from the shared store.
pub type SharedAnswer = std::pin::Pin<Box<dyn std::future::Future<Output = Option<Bytes>> + Send>>;

impl Http01Tokens {
    /// Tokens that, when missing here, are looked up in `storage` (shared by several
    /// instances).
    pub fn with_shared(storage: std::sync::Arc<dyn crate::storage::Storage>) -> Http01Tokens {
        let per_sec =
            std::num::NonZeroU32::new(LOOKUPS_PER_SEC).unwrap_or(std::num::NonZeroU32::MIN);
        let burst = std::num::NonZeroU32::new(2 * LOOKUPS_PER_SEC).unwrap_or(per_sec);
        Http01Tokens {
            tokens: RwLock::default(),
            shared: Some(SharedLookup {
                storage,
                budget: governor::RateLimiter::direct(
                    governor::Quota::per_second(per_sec).allow_burst(burst),
                ),
            }),
        }
    }

    /// For a token not held here: its lookup in the shared store, when there is one, the
    /// token is shaped like an ACME token (base64url, 22 to 128 characters: RFC 8555 §8.3) and
    /// the lookup budget allows. The lookup runs on the blocking pool (the store's calls
    /// block), bounded by the store's own timeouts; what it finds is kept here.
    pub fn shared_lookup(self: &std::sync::Arc<Self>, token: &str) -> Option<SharedAnswer> {
        let shared = self.shared.as_ref()?;
        let plausible = (22..=128).contains(&token.len())
            && token
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !plausible || shared.budget.check().is_err() {
            return None;
        }
        let me = self.clone();
        let token = token.to_string();
        Some(Box::pin(async move {
            let storage = me.shared.as_ref()?.storage.clone();
            let key = format!("{SHARED_CHALLENGES}/http-01/{token}");
            let value = tokio::task::spawn_blocking(move || storage.load(&key))
                .await
                .ok()?
                .ok()??;
            let key_auth = fresh_shared_challenge(&value)?;
            me.insert(token, key_auth.clone());
            Some(Bytes::from(key_auth))
        }))
    }

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
///
/// With a shared store, a challenge is answered by every instance: behind a load balancer the
/// CA's validation request reaches any of them, not necessarily the one that placed the order.
/// The holder writes each pending challenge to `acme/challenges/…` (announced at once,
/// [`crate::storage::Storage::changes`]) and every instance's [`follow`] thread puts it up in
/// memory, so answering is a memory lookup. An HTTP-01 token missing from memory (its
/// announcement was missed) is looked up in the store, within a small budget
/// ([`Http01Tokens::shared_lookup`]); TLS-ALPN-01, answered inside the handshake, has no such
/// fallback.
#[derive(Debug, Default, Clone)]
pub struct Challenges {
    pub http01: std::sync::Arc<Http01Tokens>,
    pub tls_alpn: std::sync::Arc<TlsAlpnChallenges>,
    /// DNS-01 through `acme.dns_hook`, when configured.
    pub dns: Option<std::sync::Arc<dns::DnsHook>>,
    /// The store shared with other instances, when there is one.
    pub shared: Option<std::sync::Arc<dyn crate::storage::Storage>>,
}

/// Where pending challenges are kept in a shared store.
const SHARED_CHALLENGES: &str = "acme/challenges";
/// Older shared challenges are left alone (a holder that died did not remove its own).
const SHARED_CHALLENGE_MAX_AGE: i64 = 3600;
/// Time given to the other instances to put a shared challenge up before the CA is told.
pub const SHARED_CHALLENGE_SETTLE: std::time::Duration = std::time::Duration::from_millis(300);

impl Challenges {
    /// Starts answering the HTTP-01 challenge `token` here and on every instance sharing the
    /// store.
    pub fn present_http01(&self, token: &str, key_authorization: &str) {
        self.http01
            .insert(token.to_string(), key_authorization.to_string());
        self.share(
            &format!("{SHARED_CHALLENGES}/http-01/{token}"),
            key_authorization,
        );
    }

    /// Starts answering the TLS-ALPN-01 challenge for `name` here and on every instance
    /// sharing the store.
    pub fn present_tls_alpn(&self, name: &str, key_auth_digest: &[u8]) -> Result<(), String> {
        self.tls_alpn.insert(name, key_auth_digest)?;
        self.share(
            &format!(
                "{SHARED_CHALLENGES}/tls-alpn-01/{}",
                name.to_ascii_lowercase()
            ),
            &crate::storage::hex(key_auth_digest),
        );
        Ok(())
    }

    /// Stops answering the HTTP-01 challenge `token`, everywhere.
    pub fn withdraw_http01(&self, token: &str) {
        self.http01.remove(token);
        self.unshare(&format!("{SHARED_CHALLENGES}/http-01/{token}"));
    }

    /// Stops answering the TLS-ALPN-01 challenge for `name`, everywhere.
    pub fn withdraw_tls_alpn(&self, name: &str) {
        self.tls_alpn.remove(name);
        self.unshare(&format!(
            "{SHARED_CHALLENGES}/tls-alpn-01/{}",
            name.to_ascii_lowercase()
        ));
    }

    /// Whether challenges are shared (then the CA is told after [`SHARED_CHALLENGE_SETTLE`]).
    pub fn is_shared(&self) -> bool {
        self.shared.is_some()
    }

    fn share(&self, key: &str, value: &str) {
        let Some(storage) = &self.shared else { return };
        let value = format!("{} {value}", crate::tls::certs::unix_now());
        if let Err(e) = storage.store(key, value.as_bytes(), false) {
            // This instance still answers; others may not (validation may then fail and be
            // retried).
            tracing::warn!(key, error = %e, "ACME: cannot share a challenge with the other instances");
        }
    }

    fn unshare(&self, key: &str) {
        if let Some(storage) = &self.shared {
            if let Err(e) = storage.delete(key) {
                tracing::warn!(key, error = %e, "ACME: cannot remove a shared challenge");
            }
        }
    }

    /// Puts up (or takes down) the shared challenge under `key` as the store now holds it.
    fn adopt(&self, storage: &dyn crate::storage::Storage, key: &str) {
        let Some(rest) = key
            .strip_prefix(SHARED_CHALLENGES)
            .and_then(|r| r.strip_prefix('/'))
        else {
            return;
        };
        let Some((kind, id)) = rest.split_once('/') else {
            return;
        };
        let value = match storage.load(key) {
            Ok(v) => v,
            Err(e) => {
                tracing::warn!(key, error = %e, "ACME: cannot read a shared challenge");
                return;
            }
        };
        let fresh = value.as_deref().and_then(fresh_shared_challenge);
        match (kind, fresh) {
            ("http-01", Some(key_auth)) => self.http01.insert(id.to_string(), key_auth),
            ("http-01", None) => self.http01.remove(id),
            ("tls-alpn-01", Some(digest)) => {
                let digest: Option<Vec<u8>> = (0..digest.len())
                    .step_by(2)
                    .map(|i| u8::from_str_radix(digest.get(i..i + 2)?, 16).ok())
                    .collect();
                let put = digest
                    .ok_or_else(|| "not hex".to_string())
                    .and_then(|d| self.tls_alpn.insert(id, &d));
                if let Err(e) = put {
                    tracing::warn!(key, error = %e, "ACME: cannot put up a shared challenge");
                }
            }
            ("tls-alpn-01", None) => self.tls_alpn.remove(id),
            _ => {}
        }
    }
}

/// The value of a shared challenge as stored (`UNIX-TIME VALUE`), unless it is stale.
fn fresh_shared_challenge(stored: &[u8]) -> Option<String> {
    let (at, value) = std::str::from_utf8(stored).ok()?.split_once(' ')?;
    let age = crate::tls::certs::unix_now() - at.parse::<i64>().ok()?;
    (age < SHARED_CHALLENGE_MAX_AGE).then(|| value.to_string())
}

/// Answers the challenges other instances place, on a thread of its own until `shutdown`
/// (nothing to do without a shared store).
pub fn follow(
    challenges: Challenges,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) -> std::io::Result<()> {
    let Some(storage) = challenges.shared.clone() else {
        return Ok(());
    };
    let mut changes = storage.changes();
    if changes.is_none() {
        return Ok(());
    }
    spawn_task("acme-challenges", move || async move {
        loop {
            let change = tokio::select! {
                c = crate::storage::next_change(&mut changes) => c,
                _ = shutdown.wait_for(|stop| *stop) => return,
            };
            match change {
                crate::storage::Change::Key(key) => challenges.adopt(storage.as_ref(), &key),
                crate::storage::Change::All => {
                    for key in storage.list(SHARED_CHALLENGES).unwrap_or_default() {
                        challenges.adopt(storage.as_ref(), &key);
                    }
                }
            }
        }
    })
}

/// Runs the future `make` returns on a thread of its own named `name`, with a current-thread
/// runtime of its own (made here first: failing to make it is the caller's error).
pub(crate) fn spawn_task<F>(
    name: &str,
    make: impl FnOnce() -> F + Send + 'static,
) -> std::io::Result<()>
where
    F: std::future::Future<Output = ()>,
{
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    std::thread::Builder::new()
        .name(name.into())
        .spawn(move || rt.block_on(make()))?;
    Ok(())
}
