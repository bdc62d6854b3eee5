//! Encryption of secret values (private keys, ACME account keys) before they leave the process
//! for a shared store.
//!
//! AES-256-GCM from aws-lc-rs under a key derived (HKDF-SHA256) from the operator's 32-byte
//! key-encryption key (KEK). Each value gets a random 96-bit nonce, and the store's full key
//! name is the associated data, so a value copied under another name does not decrypt. The
//! stored form is
//!
//! ```text
//! 0x00 "pcx1" | key id (8 bytes) | nonce (12 bytes) | ciphertext | tag (16 bytes)
//! ```
//!
//! The leading NUL byte never starts a PEM, JSON or DER value, so [`is_sealed`] tells sealed
//! values from plain ones. The key id is derived from the KEK (not the KEK itself, and not the
//! AEAD key): a value sealed under another KEK is reported as exactly that, instead of as a
//! corrupt value.
//!
//! What this does not do: authenticate plain values. Whoever can write to the store can still
//! replace a value; the KEK keeps a *read* of the store from leaking keys.

use std::fmt;
use std::path::{Path, PathBuf};

use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use aws_lc_rs::hkdf;
use aws_lc_rs::rand::{SecureRandom, SystemRandom};

/// The first bytes of every sealed value (format version 1).
const MAGIC: &[u8] = b"\0pcx1";
const KEY_ID_LEN: usize = 8;
const HEADER_LEN: usize = MAGIC.len() + KEY_ID_LEN + NONCE_LEN;
const TAG_LEN: usize = 16;

/// A key-encryption key read from a file, with the AEAD key and key id derived from it.
/// `Debug` shows the file and the key id only.
pub struct Kek {
    aead: LessSafeKey,
    id: [u8; KEY_ID_LEN],
    path: PathBuf,
}

impl fmt::Debug for Kek {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Kek")
            .field("path", &self.path)
            .field("id", &super::hex(&self.id))
            .finish()
    }
}

/// Why a sealed value could not be opened.
#[derive(Debug, PartialEq, Eq)]
pub enum OpenError {
    /// The value was sealed under a KEK with another key id.
    WrongKek,
    /// Truncated, altered, or sealed under another key name.
    Corrupt,
}

/// The key id of `raw` (hex of it is shown in logs and stored beside the values).
fn derive(raw: &[u8; 32]) -> (LessSafeKey, [u8; KEY_ID_LEN]) {
    struct Len(usize);
    impl hkdf::KeyType for Len {
        fn len(&self) -> usize {
            self.0
        }
    }
    let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, b"portcullis storage").extract(raw);
    let mut key = [0u8; 32];
    let mut id = [0u8; KEY_ID_LEN];
    // Both expansions ask for lengths far below HKDF's limit (255 × 32 bytes): they cannot fail.
    prk.expand(&[b"aes-256-gcm key v1"], Len(32))
        .and_then(|okm| okm.fill(&mut key))
        .expect("HKDF output of 32 bytes");
    prk.expand(&[b"key id v1"], Len(KEY_ID_LEN))
        .and_then(|okm| okm.fill(&mut id))
        .expect("HKDF output of 8 bytes");
    let unbound = UnboundKey::new(&AES_256_GCM, &key).expect("a 32-byte AES-256 key");
    (LessSafeKey::new(unbound), id)
}

impl Kek {
    /// The KEK in `bytes` (the contents of `path`): exactly 32 raw bytes, or 64 hex digits, or
    /// the base64 of 32 bytes (surrounding white space ignored for the text forms).
    pub fn parse(bytes: &[u8], path: &Path) -> Result<Kek, String> {
        let raw = decode(bytes).ok_or_else(|| {
            format!(
                "{} holds {} bytes, not a 32-byte key (raw, 64 hex digits, or base64)",
                path.display(),
                bytes.len()
            )
        })?;
        let (aead, id) = derive(&raw);
        Ok(Kek {
            aead,
            id,
            path: path.to_path_buf(),
        })
    }

    /// Reads and parses the KEK file at `path`.
    pub fn read(path: &Path) -> Result<Kek, String> {
        let bytes = std::fs::read(path)
            .map_err(|e| format!("cannot read the key-encryption key {}: {e}", path.display()))?;
        Kek::parse(&bytes, path)
    }

    /// The file the KEK was read from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Hex of the key id: names the KEK without revealing it.
    pub fn id_hex(&self) -> String {
        super::hex(&self.id)
    }

    /// `value` encrypted and authenticated for the key `name`.
    pub fn seal(&self, name: &str, value: &[u8]) -> Vec<u8> {
        let mut nonce = [0u8; NONCE_LEN];
        // The system's random source failing leaves nothing safe to do.
        SystemRandom::new()
            .fill(&mut nonce)
            .expect("the system random source works");
        let mut out = Vec::with_capacity(HEADER_LEN + value.len() + TAG_LEN);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&self.id);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(value);
        let tag = self
            .aead
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(name.as_bytes()),
                &mut out[HEADER_LEN..],
            )
            .expect("AES-GCM seals any value below 64 GiB");
        out.extend_from_slice(tag.as_ref());
        out
    }

    /// The plain value of `sealed`, stored under `name`.
    pub fn open(&self, name: &str, sealed: &[u8]) -> Result<Vec<u8>, OpenError> {
        if sealed.len() < HEADER_LEN + TAG_LEN || !is_sealed(sealed) {
            return Err(OpenError::Corrupt);
        }
        let (header, body) = sealed.split_at(HEADER_LEN);
        if header[MAGIC.len()..MAGIC.len() + KEY_ID_LEN] != self.id {
            return Err(OpenError::WrongKek);
        }
        let mut nonce = [0u8; NONCE_LEN];
        nonce.copy_from_slice(&header[MAGIC.len() + KEY_ID_LEN..]);
        let mut buf = body.to_vec();
        let plain = self
            .aead
            .open_in_place(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(name.as_bytes()),
                &mut buf,
            )
            .map_err(|_| OpenError::Corrupt)?;
        Ok(plain.to_vec())
    }
}

/// Whether `value` is in the sealed format (whatever the KEK).
pub fn is_sealed(value: &[u8]) -> bool {
    value.starts_with(MAGIC)
}

/// The key id (hex) a sealed value names, if it is one.
pub fn sealed_key_id(value: &[u8]) -> Option<String> {
    (is_sealed(value) && value.len() >= MAGIC.len() + KEY_ID_LEN)
        .then(|| super::hex(&value[MAGIC.len()..MAGIC.len() + KEY_ID_LEN]))
}

fn decode(bytes: &[u8]) -> Option<[u8; 32]> {
    if let Ok(raw) = <[u8; 32]>::try_from(bytes) {
        return Some(raw);
    }
    let text = std::str::from_utf8(bytes).ok()?.trim();
    let decoded = if text.len() == 64 && text.bytes().all(|b| b.is_ascii_hexdigit()) {
        (0..32)
            .map(|i| u8::from_str_radix(&text[2 * i..2 * i + 2], 16).ok())
            .collect::<Option<Vec<u8>>>()?
    } else {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD
            .decode(text)
            .ok()?
    };
    <[u8; 32]>::try_from(decoded.as_slice()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kek(byte: u8) -> Kek {
        Kek::parse(&[byte; 32], Path::new("/etc/kek")).unwrap()
    }

    #[test]
    fn sealed_values_open_only_under_their_name_and_kek() {
        let k = kek(7);
        let pem = b"-----BEGIN PRIVATE KEY-----\nMIGH\n-----END PRIVATE KEY-----\n";
        let sealed = k.seal("p:certs/a/key.pem", pem);
        assert!(is_sealed(&sealed));
        assert!(!sealed.windows(11).any(|w| w == b"PRIVATE KEY"));
        assert_eq!(k.open("p:certs/a/key.pem", &sealed).unwrap(), pem);
        assert_ne!(
            sealed,
            k.seal("p:certs/a/key.pem", pem),
            "a fresh nonce each time"
        );
        assert_eq!(
            k.open("p:certs/b/key.pem", &sealed),
            Err(OpenError::Corrupt),
            "moved to another key"
        );
        assert_eq!(
            kek(8).open("p:certs/a/key.pem", &sealed),
            Err(OpenError::WrongKek)
        );
        assert_eq!(sealed_key_id(&sealed), Some(k.id_hex()));
        let mut flipped = sealed.clone();
        let last = flipped.len() - 1;
        flipped[last] ^= 1;
        assert_eq!(
            k.open("p:certs/a/key.pem", &flipped),
            Err(OpenError::Corrupt)
        );
        assert_eq!(
            k.open("p:certs/a/key.pem", &sealed[..20]),
            Err(OpenError::Corrupt)
        );
    }

    #[test]
    fn the_kek_file_may_be_raw_hex_or_base64() {
        let raw = [0xabu8; 32];
        let hex_text = format!("{}\n", crate::storage::hex(&raw));
        use base64::Engine;
        let b64 = base64::engine::general_purpose::STANDARD.encode(raw);
        let p = Path::new("k");
        let ids: Vec<String> = [&raw[..], hex_text.as_bytes(), b64.as_bytes()]
            .iter()
            .map(|b| Kek::parse(b, p).unwrap().id_hex())
            .collect();
        assert!(ids.iter().all(|i| *i == ids[0]), "{ids:?}");
        for bad in [
            &b""[..],
            &[1u8; 31][..],
            &[1u8; 33][..],
            b"zz",
            &[b'a'; 63][..],
        ] {
            let e = Kek::parse(bad, p).unwrap_err();
            assert!(e.contains("not a 32-byte key"), "{e}");
        }
    }

    #[test]
    fn debug_does_not_show_the_key() {
        let shown = format!("{:?}", kek(0x41));
        assert!(
            shown.contains("/etc/kek") && !shown.contains("AAAA"),
            "{shown}"
        );
    }
}
