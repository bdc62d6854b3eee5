//! Session-ticket keys: AES-256-GCM, rotated on a schedule, shared by every worker thread.
//!
//! rustls's own `Ticketer` rotates every 6 h with no way to choose the interval; this one plugs an
//! AES-256-GCM ticket sealer (one AEAD pass, cheaper than RFC 5077's CBC + HMAC) into rustls's
//! [`TicketRotator`], which keeps the previous key for decryption after each rotation. Nonces are
//! a per-key counter, so a key never repeats a nonce however many tickets it seals.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use rustls::server::ProducesTickets;
use rustls::ticketer::TicketRotator;

const KEY_NAME_LEN: usize = 16;
const TAG_LEN: usize = 16;

/// A ticket sealer for one key.
struct GcmTicketKey {
    key: LessSafeKey,
    key_name: [u8; KEY_NAME_LEN],
    counter: AtomicU64,
}

impl std::fmt::Debug for GcmTicketKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GcmTicketKey").finish_non_exhaustive()
    }
}

impl GcmTicketKey {
    fn generate() -> Result<Self, rustls::crypto::GetRandomFailed> {
        let mut secret = [0u8; 32];
        let mut key_name = [0u8; KEY_NAME_LEN];
        aws_lc_rs::rand::fill(&mut secret).map_err(|_| rustls::crypto::GetRandomFailed)?;
        aws_lc_rs::rand::fill(&mut key_name).map_err(|_| rustls::crypto::GetRandomFailed)?;
        let key =
            UnboundKey::new(&AES_256_GCM, &secret).map_err(|_| rustls::crypto::GetRandomFailed)?;
        Ok(GcmTicketKey {
            key: LessSafeKey::new(key),
            key_name,
            counter: AtomicU64::new(0),
        })
    }
}

impl ProducesTickets for GcmTicketKey {
    fn enabled(&self) -> bool {
        true
    }

    fn lifetime(&self) -> u32 {
        // The rotator reports its own lifetime to clients; this one is never used.
        12 * 3600
    }

    fn encrypt(&self, plain: &[u8]) -> Option<Vec<u8>> {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let mut nonce = [0u8; NONCE_LEN];
        nonce[4..].copy_from_slice(&n.to_be_bytes());
        let mut out = Vec::with_capacity(KEY_NAME_LEN + NONCE_LEN + plain.len() + TAG_LEN);
        out.extend_from_slice(&self.key_name);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(plain);
        let (_, body) = out.split_at_mut(KEY_NAME_LEN + NONCE_LEN);
        let tag = self
            .key
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(&self.key_name),
                body,
            )
            .ok()?;
        out.extend_from_slice(tag.as_ref());
        Some(out)
    }

    fn decrypt(&self, cipher: &[u8]) -> Option<Vec<u8>> {
        if cipher.len() < KEY_NAME_LEN + NONCE_LEN + TAG_LEN
            || cipher[..KEY_NAME_LEN] != self.key_name
        {
            return None;
        }
        let nonce =
            Nonce::try_assume_unique_for_key(&cipher[KEY_NAME_LEN..KEY_NAME_LEN + NONCE_LEN])
                .ok()?;
        let mut body = cipher[KEY_NAME_LEN + NONCE_LEN..].to_vec();
        let plain_len = self
            .key
            .open_in_place(nonce, Aad::from(&self.key_name), &mut body)
            .ok()?
            .len();
        body.truncate(plain_len);
        Some(body)
    }
}

fn generate() -> Result<Box<dyn ProducesTickets>, rustls::crypto::GetRandomFailed> {
    Ok(Box::new(GcmTicketKey::generate()?))
}

/// A ticketer whose key rotates every `rotation` (seconds); tickets stay valid up to twice that.
pub fn rotating_ticketer(rotation_secs: u32) -> Result<Arc<dyn ProducesTickets>, rustls::Error> {
    Ok(Arc::new(TicketRotator::new(
        rotation_secs.max(60),
        generate,
    )?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_tamper() {
        let k = GcmTicketKey::generate().unwrap();
        let t1 = k.encrypt(b"session state").unwrap();
        let t2 = k.encrypt(b"session state").unwrap();
        assert_ne!(t1, t2, "nonces differ");
        assert_eq!(k.decrypt(&t1).unwrap(), b"session state");
        let mut bad = t1.clone();
        *bad.last_mut().unwrap() ^= 1;
        assert!(k.decrypt(&bad).is_none());
        assert!(k.decrypt(&t1[..20]).is_none());
        let other = GcmTicketKey::generate().unwrap();
        assert!(other.decrypt(&t1).is_none());
    }
}
