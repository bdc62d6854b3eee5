//! ACME (automatic certificates): the HTTP-01 token store the port-80 listener answers from, and
//! the [`client`] that orders certificates.

pub mod client;
pub mod manager;

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
