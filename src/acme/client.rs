//! The ACME client (RFC 8555, through `instant-acme`): an account kept in [`Storage`], and
//! certificate orders answered with HTTP-01 through the port-80 listener's token store.
//!
//! This is mechanism only: which names to order, when to renew and what to do on failure is
//! decided by the certificate manager that calls it.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use instant_acme::{
    Account, AccountCredentials, AuthorizationStatus, ChallengeType, Identifier, NewAccount,
    NewOrder, OrderStatus, RetryPolicy,
};

use super::Http01Tokens;
use crate::storage::Storage;

/// Why an ACME operation failed, in words that name the CA, the name and the challenge.
#[derive(Debug, thiserror::Error)]
pub enum AcmeError {
    #[error("ACME CA {directory}: {what}: {source}")]
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
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, directory.as_bytes());
    let id: String = digest.as_ref()[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("acme/{id}/account.json")
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
            .create(&new, directory.to_string(), None)
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

    /// Orders a certificate for `names` (ECDSA P-256 key), proving control with HTTP-01: the
    /// key authorizations are put into `tokens`, which the port-80 listener answers from.
    pub async fn issue_http01(
        &self,
        names: &[String],
        tokens: &Arc<Http01Tokens>,
    ) -> Result<Issued, AcmeError> {
        let dir = self.directory.clone();
        let ca = |what, source| AcmeError::Ca {
            directory: dir.clone(),
            what,
            source,
        };
        let identifiers: Vec<Identifier> =
            names.iter().map(|n| Identifier::Dns(n.clone())).collect();
        let mut order = self
            .account
            .new_order(&NewOrder::new(&identifiers))
            .await
            .map_err(|e| ca("creating an order", e))?;
        let mut placed: Vec<String> = Vec::new();
        let result = async {
            let mut authzs = order.authorizations();
            while let Some(authz) = authzs.next().await {
                let mut authz = authz.map_err(|e| ca("reading an authorization", e))?;
                if authz.status != AuthorizationStatus::Pending {
                    continue;
                }
                let name = match &authz.identifier().identifier {
                    Identifier::Dns(n) => n.clone(),
                    other => format!("{other:?}"),
                };
                let mut challenge = authz.challenge(ChallengeType::Http01).ok_or_else(|| {
                    AcmeError::NoChallenge {
                        directory: dir.clone(),
                        name: name.clone(),
                        challenge: "http-01",
                    }
                })?;
                tokens.insert(
                    challenge.token.clone(),
                    challenge.key_authorization().as_str().to_string(),
                );
                placed.push(challenge.token.clone());
                challenge
                    .set_ready()
                    .await
                    .map_err(|e| ca("answering a challenge", e))?;
            }
            let retry = RetryPolicy::new().timeout(Duration::from_secs(60));
            let status = match order.poll_ready(&retry).await {
                Ok(status) => status,
                // The CA reports a failed validation as the order's problem.
                Err(instant_acme::Error::Api(problem)) => {
                    let mut failed = Vec::new();
                    let mut authzs = order.authorizations();
                    while let Some(Ok(authz)) = authzs.next().await {
                        if authz.status == AuthorizationStatus::Invalid {
                            if let Identifier::Dns(n) = &authz.identifier().identifier {
                                failed.push(n.clone());
                            }
                        }
                    }
                    let name = if failed.is_empty() {
                        names.join(", ")
                    } else {
                        failed.join(", ")
                    };
                    return Err(AcmeError::Challenge {
                        directory: dir.clone(),
                        name,
                        challenge: "http-01",
                        detail: problem.to_string(),
                    });
                }
                Err(e) => return Err(ca("waiting for validation", e)),
            };
            if status != OrderStatus::Ready {
                // Name the failed identifier and the CA's reason.
                let mut authzs = order.authorizations();
                while let Some(Ok(authz)) = authzs.next().await {
                    if authz.status == AuthorizationStatus::Invalid {
                        let name = format!("{:?}", authz.identifier().identifier);
                        let detail = authz
                            .challenges
                            .iter()
                            .filter_map(|c| c.error.as_ref())
                            .map(|p| p.to_string())
                            .next()
                            .unwrap_or_else(|| "no detail from the CA".to_string());
                        return Err(AcmeError::Challenge {
                            directory: dir.clone(),
                            name: name
                                .trim_start_matches("Dns(")
                                .trim_end_matches(')')
                                .trim_matches('"')
                                .to_string(),
                            challenge: "http-01",
                            detail,
                        });
                    }
                }
                return Err(AcmeError::Order {
                    directory: dir.clone(),
                    status,
                });
            }
            let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
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
        for t in &placed {
            tokens.remove(t);
        }
        result
    }
}
