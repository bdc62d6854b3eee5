//! The ACME client (RFC 8555, through `instant-acme`): an account kept in [`Storage`], and
//! certificate orders answered with HTTP-01 through the port-80 listener's token store.
//!
//! This is mechanism only: which names to order, when to renew and what to do on failure is
//! decided by the certificate manager that calls it.

use std::path::Path;
use std::time::Duration;

use instant_acme::{
    Account, AccountCredentials, AuthorizationStatus, ChallengeType, Identifier, NewAccount,
    NewOrder, OrderStatus, RetryPolicy,
};

use super::Challenges;
use crate::config::model::AcmeKeyType;
use crate::storage::Storage;

/// Why an ACME operation failed, in words that name the CA, the name and the challenge.
#[derive(Debug, thiserror::Error)]
pub enum AcmeError {
    #[error("ACME CA {directory}: {what}: {}", with_causes(source))]
    Ca {
        directory: String,
        what: &'static str,
        #[source]
        source: instant_acme::Error,
    },
    #[error("ACME CA {directory}: {name}: {challenge} challenge failed: {detail}")]
    Challenge {
        directory: String,
        name: String,
        challenge: &'static str,
        detail: String,
    },
    #[error("ACME CA {directory}: {name}: the CA offers no {challenge} challenge")]
    NoChallenge {
        directory: String,
        name: String,
        challenge: &'static str,
    },
    #[error("ACME CA {directory}: no answer within {secs} s")]
    Timeout { directory: String, secs: u64 },
    #[error("ACME CA {directory}: order ended as {status:?}")]
    Order {
        directory: String,
        status: OrderStatus,
    },
    #[error("storage: {0}")]
    Storage(#[from] std::io::Error),
    #[error("stored ACME account is corrupt ({0}); delete it to register a new one")]
    CorruptAccount(serde_json::Error),
    #[error("cannot make the certificate request: {0}")]
    Csr(#[from] rcgen::Error),
    #[error("ACME CA {directory}: profile {profile:?} is not offered (the CA offers {}); change acme.profile", offered.iter().map(|p| format!("{p:?}")).collect::<Vec<_>>().join(", "))]
    UnknownProfile {
        directory: String,
        profile: String,
        offered: Vec<String>,
    },
}

/// The challenges to try for `names`, in order: wildcards can only be proven over DNS-01;
/// other names by HTTP-01 (port 80), then TLS-ALPN-01 (port 443), then DNS-01 when a hook is
/// configured.
pub fn challenge_kinds(names: &[String], dns_hook: bool) -> Vec<ChallengeKind> {
    if names.iter().any(|n| n.starts_with("*.")) {
        return vec![ChallengeKind::Dns01];
    }
    let mut kinds = vec![ChallengeKind::Http01, ChallengeKind::TlsAlpn01];
    if dns_hook {
        kinds.push(ChallengeKind::Dns01);
    }
    kinds
}

/// What an order asks for besides the names.
#[derive(Debug, Clone, Default)]
pub struct OrderOptions {
    /// The certificate profile (`acme.profile`, e.g. `"shortlived"`). Checked against the
    /// profiles the CA's directory advertises; ignored (with a warning) when it advertises none.
    pub profile: Option<String>,
    /// The ARI id (`aki.serial`, RFC 9773 §4.1) of the certificate this order replaces; sent
    /// only when the CA offers ARI. Should the CA refuse it (e.g. already replaced), the order
    /// is placed again without it.
    pub replaces: Option<String>,
    /// The certificate's key (PEM), e.g. the pre-generated next key ([`super::pins`]); a new
    /// `key_type` key when absent.
    pub key_pem: Option<String>,
}

/// `e` and its causes on one line ("client error (Connect): tcp connect error: Connection
/// refused"): the outer message alone often hides what went wrong.
fn with_causes(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let t = c.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        cause = c.source();
    }
    s
}

/// How control of a name is proven.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChallengeKind {
    /// A token served on port 80 (`/.well-known/acme-challenge/`).
    Http01,
    /// A special certificate presented on port 443 over ALPN `acme-tls/1` (RFC 8737).
    TlsAlpn01,
    /// A TXT record `_acme-challenge.NAME` set through `acme.dns_hook` (wildcards need it).
    Dns01,
}

impl ChallengeKind {
    /// The name used by RFC 8555/8737 and in messages.
    pub fn label(self) -> &'static str {
        match self {
            ChallengeKind::Http01 => "http-01",
            ChallengeKind::TlsAlpn01 => "tls-alpn-01",
            ChallengeKind::Dns01 => "dns-01",
        }
    }

    fn acme_type(self) -> ChallengeType {
        match self {
            ChallengeKind::Http01 => ChallengeType::Http01,
            ChallengeKind::TlsAlpn01 => ChallengeType::TlsAlpn01,
            ChallengeKind::Dns01 => ChallengeType::Dns01,
        }
    }
}

impl AcmeError {
    /// The CA does not know the account (it was deleted, or the CA lost its state): the stored
    /// account must be dropped and a new one registered.
    pub fn is_unknown_account(&self) -> bool {
        match self {
            AcmeError::Ca {
                source: instant_acme::Error::Api(p),
                ..
            } => p.r#type.as_deref().is_some_and(|t| {
                t.ends_with(":accountDoesNotExist")
                    || t.ends_with(":unauthorized")
                        && p.detail.as_deref().is_some_and(|d| d.contains("account"))
            }),
            _ => false,
        }
    }
}

/// Drops the stored account for `directory` (the next [`AcmeClient::open`] registers anew).
pub fn forget_account(storage: &dyn Storage, directory: &str) -> std::io::Result<()> {
    storage.delete(&account_key(directory))
}

/// A certificate obtained from the CA.
#[derive(Debug, Clone)]
pub struct Issued {
    /// The chain, leaf first, PEM.
    pub chain_pem: String,
    /// The certificate's private key (PKCS#8 PEM).
    pub key_pem: String,
}

/// An ACME account at one CA.
pub struct AcmeClient {
    account: Account,
    directory: String,
}

impl std::fmt::Debug for AcmeClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AcmeClient")
            .field("directory", &self.directory)
            .finish()
    }
}

/// The storage key of the account for `directory`.
fn account_key(directory: &str) -> String {
    format!("acme/{}/account.json", crate::storage::short_id(directory))
}

impl AcmeClient {
    /// The account at `directory` stored in `storage`, registered (and stored) on first use.
    /// `ca_root` is an extra root to trust for the CA's own HTTPS (test CAs such as pebble).
    pub async fn open(
        storage: &dyn Storage,
        directory: &str,
        ca_root: Option<&Path>,
        contact: &[String],
    ) -> Result<Self, AcmeError> {
        Self::open_with_eab(storage, directory, ca_root, contact, None).await
    }

    /// [`AcmeClient::open`] for CAs that require External Account Binding (RFC 8555 §7.3.4):
    /// `eab` is the key id and the (decoded) HMAC key the CA handed out.
    pub async fn open_with_eab(
        storage: &dyn Storage,
        directory: &str,
        ca_root: Option<&Path>,
        contact: &[String],
        eab: Option<&(String, Vec<u8>)>,
    ) -> Result<Self, AcmeError> {
        let ca = |what, source| AcmeError::Ca {
            directory: directory.to_string(),
            what,
            source,
        };
        let builder = || match ca_root {
            Some(root) => Account::builder_with_root(root),
            None => Account::builder(),
        };
        let key = account_key(directory);
        if let Some(bytes) = storage.load(&key)? {
            let creds: AccountCredentials =
                serde_json::from_slice(&bytes).map_err(AcmeError::CorruptAccount)?;
            let account = builder()
                .map_err(|e| ca("HTTP client", e))?
                .from_credentials(creds)
                .await
                .map_err(|e| ca("loading the account", e))?;
            return Ok(AcmeClient {
                account,
                directory: directory.to_string(),
            });
        }
        let contact: Vec<&str> = contact.iter().map(String::as_str).collect();
        let new = NewAccount {
            contact: &contact,
            terms_of_service_agreed: true,
            only_return_existing: false,
        };
        let (account, creds) = builder()
            .map_err(|e| ca("HTTP client", e))?
            .create(
                &new,
                directory.to_string(),
                eab.map(|(kid, key)| instant_acme::ExternalAccountKey::new(kid.clone(), key))
                    .as_ref(),
            )
            .await
            .map_err(|e| ca("registering an account", e))?;
        let json = serde_json::to_vec_pretty(&creds).map_err(AcmeError::CorruptAccount)?;
        storage.store(&key, &json, true)?;
        tracing::info!(ca = directory, "registered a new ACME account");
        Ok(AcmeClient {
            account,
            directory: directory.to_string(),
        })
    }

    /// Orders a certificate for `names` with a `key_type` key, proving control with `kind`: HTTP-01
    /// key authorizations go into the port-80 token store, TLS-ALPN-01 certificates into the
    /// store the 443 listener consults for `acme-tls/1` handshakes.
    pub async fn issue(
        &self,
        names: &[String],
        challenges: &Challenges,
        kind: ChallengeKind,
        key_type: AcmeKeyType,
    ) -> Result<Issued, AcmeError> {
        self.issue_with(names, challenges, kind, key_type, &OrderOptions::default())
            .await
    }

    /// The profiles the CA's directory advertises (`meta.profiles`), sorted.
    pub fn profiles(&self) -> Vec<String> {
        let mut p: Vec<String> = self
            .account
            .profiles()
            .map(|m| m.name.to_string())
            .collect();
        p.sort();
        p
    }

    /// Places the order: with `options.replaces` when given, and again without it when the CA
    /// refuses that (RFC 9773 lets it, e.g. for a certificate already replaced).
    async fn new_order(
        &self,
        identifiers: &[Identifier],
        options: &OrderOptions,
    ) -> Result<instant_acme::Order, AcmeError> {
        let mut profile = None;
        if let Some(p) = &options.profile {
            let offered = self.profiles();
            if offered.is_empty() {
                tracing::warn!(
                    ca = self.directory,
                    profile = p,
                    "ACME: the CA advertises no profiles; ordering without acme.profile"
                );
            } else if offered.contains(p) {
                profile = Some(p.as_str());
            } else {
                return Err(AcmeError::UnknownProfile {
                    directory: self.directory.clone(),
                    profile: p.clone(),
                    offered,
                });
            }
        }
        let ca = |source| AcmeError::Ca {
            directory: self.directory.clone(),
            what: "creating an order",
            source,
        };
        let plain = || {
            let order = NewOrder::new(identifiers);
            match profile {
                Some(p) => order.profile(p),
                None => order,
            }
        };
        let replaces = options
            .replaces
            .as_deref()
            .and_then(|id| id.split_once('.'));
        if let Some((aki, serial)) = replaces {
            let id = instant_acme::CertificateIdentifier {
                authority_key_identifier: aki.into(),
                serial: serial.into(),
            };
            match self.account.new_order(&plain().replaces(id)).await {
                Ok(order) => return Ok(order),
                // Refused because of `replaces` (a problem document, or the CA did not reflect
                // the field): try again without it. Anything else (unreachable CA, unknown
                // account) is not about `replaces`.
                Err(e)
                    if !(matches!(&e, instant_acme::Error::Api(p)
                        if !p.r#type.as_deref().is_some_and(|t| t.ends_with(":accountDoesNotExist")))
                        || matches!(&e, instant_acme::Error::Unsupported(_))
                        || e.to_string().contains("replaces")) =>
                {
                    return Err(ca(e))
                }
                Err(e) => tracing::warn!(
                    ca = self.directory,
                    error = %e,
                    "ACME: the CA refused the order that names the certificate it replaces (ARI); ordering without `replaces`"
                ),
            }
        }
        self.account.new_order(&plain()).await.map_err(ca)
    }

    /// Orders with every challenge [`challenge_kinds`] allows, in turn, until one proves
    /// control: each attempt within `timeout`, so that a CA that stops answering cannot stall
    /// the caller. Validation failures move on to the next challenge; other errors end it.
    pub async fn issue_trying(
        &self,
        names: &[String],
        challenges: &Challenges,
        key_type: AcmeKeyType,
        options: &OrderOptions,
        timeout: Duration,
    ) -> Result<Issued, AcmeError> {
        let kinds = challenge_kinds(names, challenges.dns.is_some());
        let mut result = Err(AcmeError::NoChallenge {
            directory: self.directory.clone(),
            name: names.join(", "),
            challenge: "usable",
        });
        for (i, kind) in kinds.iter().enumerate() {
            result = match tokio::time::timeout(
                timeout,
                self.issue_with(names, challenges, *kind, key_type, options),
            )
            .await
            {
                Ok(r) => r,
                Err(_) => Err(AcmeError::Timeout {
                    directory: self.directory.clone(),
                    secs: timeout.as_secs(),
                }),
            };
            match &result {
                Err(e @ (AcmeError::Challenge { .. } | AcmeError::NoChallenge { .. }))
                    if i + 1 < kinds.len() =>
                {
                    tracing::warn!(names = names.join(", "), error = %e, "ACME: {} failed; trying {}", kind.label(), kinds[i + 1].label());
                }
                _ => break,
            }
        }
        result
    }

    /// [`AcmeClient::issue`] with a profile and/or the certificate being replaced.
    pub async fn issue_with(
        &self,
        names: &[String],
        challenges: &Challenges,
        kind: ChallengeKind,
        key_type: AcmeKeyType,
        options: &OrderOptions,
    ) -> Result<Issued, AcmeError> {
        let dir = self.directory.clone();
        let ca = |what, source| AcmeError::Ca {
            directory: dir.clone(),
            what,
            source,
        };
        let failed = |name: String, detail: String| AcmeError::Challenge {
            directory: dir.clone(),
            name,
            challenge: kind.label(),
            detail,
        };
        let identifiers: Vec<Identifier> =
            names.iter().map(|n| Identifier::Dns(n.clone())).collect();
        let mut order = self.new_order(&identifiers, options).await?;
        // What was put up, to take down afterwards: HTTP-01 tokens or TLS-ALPN-01 names, and
        // DNS-01 (name, value) pairs.
        let mut placed: Vec<String> = Vec::new();
        let mut dns_placed: Vec<(String, String)> = Vec::new();
        let dns_hook = match (kind, &challenges.dns) {
            (ChallengeKind::Dns01, None) => {
                return Err(AcmeError::NoChallenge {
                    directory: dir.clone(),
                    name: names.join(", "),
                    challenge: "dns-01 (acme.dns_hook is not set)",
                })
            }
            (_, hook) => hook.clone(),
        };
        let result = async {
            let mut authzs = order.authorizations();
            while let Some(authz) = authzs.next().await {
                let mut authz = authz.map_err(|e| ca("reading an authorization", e))?;
                if authz.status != AuthorizationStatus::Pending {
                    continue;
                }
                let name = authz.identifier().to_string();
                let mut challenge =
                    authz
                        .challenge(kind.acme_type())
                        .ok_or_else(|| AcmeError::NoChallenge {
                            directory: dir.clone(),
                            name: name.clone(),
                            challenge: kind.label(),
                        })?;
                match kind {
                    ChallengeKind::Http01 => {
                        challenges.present_http01(
                            &challenge.token,
                            challenge.key_authorization().as_str(),
                        );
                        placed.push(challenge.token.clone());
                    }
                    ChallengeKind::TlsAlpn01 => {
                        let digest = challenge.key_authorization().digest();
                        challenges
                            .present_tls_alpn(&name, digest.as_ref())
                            .map_err(|detail| failed(name.clone(), detail))?;
                        placed.push(name.clone());
                    }
                    ChallengeKind::Dns01 => {
                        // Every record is put up first; the CA is told after propagation.
                        let value = challenge.key_authorization().dns_value();
                        let hook = dns_hook
                            .as_ref()
                            .ok_or_else(|| failed(name.clone(), "no dns_hook".into()))?;
                        dns_placed.push((name.clone(), value.clone()));
                        hook.run("present", &name, &value)
                            .await
                            .map_err(|detail| failed(name.clone(), detail))?;
                        continue;
                    }
                }
                if challenges.is_shared() {
                    // The other instances put it up from the store's announcement first.
                    tokio::time::sleep(super::SHARED_CHALLENGE_SETTLE).await;
                }
                challenge
                    .set_ready()
                    .await
                    .map_err(|e| ca("answering a challenge", e))?;
            }
            if let (false, Some(hook)) = (dns_placed.is_empty(), &dns_hook) {
                tokio::time::sleep(hook.propagation).await;
                let mut authzs = order.authorizations();
                while let Some(authz) = authzs.next().await {
                    let mut authz = authz.map_err(|e| ca("reading an authorization", e))?;
                    if authz.status != AuthorizationStatus::Pending {
                        continue;
                    }
                    let name = authz.identifier().to_string();
                    let mut challenge = authz.challenge(ChallengeType::Dns01).ok_or_else(|| {
                        AcmeError::NoChallenge {
                            directory: dir.clone(),
                            name,
                            challenge: "dns-01",
                        }
                    })?;
                    challenge
                        .set_ready()
                        .await
                        .map_err(|e| ca("answering a challenge", e))?;
                }
            }
            let retry = RetryPolicy::new().timeout(Duration::from_secs(60));
            let (status, problem) = match order.poll_ready(&retry).await {
                Ok(status) => (status, None),
                // The CA reports a failed validation as the order's problem.
                Err(instant_acme::Error::Api(problem)) => {
                    (OrderStatus::Invalid, Some(problem.to_string()))
                }
                Err(e) => return Err(ca("waiting for validation", e)),
            };
            if status != OrderStatus::Ready {
                // Name the failed identifiers and the CA's reason.
                let mut bad = Vec::new();
                let mut detail = problem;
                let mut authzs = order.authorizations();
                while let Some(Ok(authz)) = authzs.next().await {
                    if authz.status == AuthorizationStatus::Invalid {
                        bad.push(authz.identifier().to_string());
                        if detail.is_none() {
                            detail = authz
                                .challenges
                                .iter()
                                .filter_map(|c| c.error.as_ref())
                                .map(|p| p.to_string())
                                .next();
                        }
                    }
                }
                if bad.is_empty() && detail.is_none() {
                    return Err(AcmeError::Order {
                        directory: dir.clone(),
                        status,
                    });
                }
                let name = if bad.is_empty() {
                    names.join(", ")
                } else {
                    bad.join(", ")
                };
                return Err(failed(
                    name,
                    detail.unwrap_or_else(|| "no detail from the CA".to_string()),
                ));
            }
            let key = match &options.key_pem {
                Some(pem) => rcgen::KeyPair::from_pem(pem)?,
                None => key_type.generate()?,
            };
            let csr = rcgen::CertificateParams::new(names.to_vec())?.serialize_request(&key)?;
            order
                .finalize_csr(csr.der())
                .await
                .map_err(|e| ca("finalizing the order", e))?;
            let chain_pem = order
                .poll_certificate(&retry)
                .await
                .map_err(|e| ca("downloading the certificate", e))?;
            Ok(Issued {
                chain_pem,
                key_pem: key.serialize_pem(),
            })
        }
        .await;
        for p in &placed {
            match kind {
                ChallengeKind::Http01 => challenges.withdraw_http01(p),
                ChallengeKind::TlsAlpn01 => challenges.withdraw_tls_alpn(p),
                ChallengeKind::Dns01 => {}
            }
        }
        if let Some(hook) = &dns_hook {
            for (name, value) in &dns_placed {
                if let Err(e) = hook.run("cleanup", name, value).await {
                    tracing::warn!(name, error = %e, "ACME: dns-01 cleanup failed; remove the TXT record by hand");
                }
            }
        }
        result
    }

    /// The CA's directory URL.
    pub fn directory(&self) -> &str {
        &self.directory
    }

    /// Revokes `cert` (DER of the leaf) at the CA, signed by this account.
    pub async fn revoke(
        &self,
        cert: &rustls_pki_types::CertificateDer<'_>,
        reason: Option<instant_acme::RevocationReason>,
    ) -> Result<(), AcmeError> {
        let request = instant_acme::RevocationRequest {
            certificate: cert,
            reason,
        };
        self.account
            .revoke(&request)
            .await
            .map_err(|source| AcmeError::Ca {
                directory: self.directory.clone(),
                what: "revoking the certificate",
                source,
            })
    }
}
