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
        seal(&self.key, &self.key_name, nonce, plain)
    }

    fn decrypt(&self, cipher: &[u8]) -> Option<Vec<u8>> {
        if key_name(cipher)? != self.key_name {
            return None;
        }
        open(&self.key, &self.key_name, cipher)
    }
}

/// A ticket: `KEY-NAME (16) | NONCE (12) | AES-256-GCM(plain) | TAG (16)`, the key name as
/// associated data.
fn seal(
    key: &LessSafeKey,
    name: &[u8; KEY_NAME_LEN],
    nonce: [u8; NONCE_LEN],
    plain: &[u8],
) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(KEY_NAME_LEN + NONCE_LEN + plain.len() + TAG_LEN);
    out.extend_from_slice(name);
    out.extend_from_slice(&nonce);
    out.extend_from_slice(plain);
    let (_, body) = out.split_at_mut(KEY_NAME_LEN + NONCE_LEN);
    let tag = key
        .seal_in_place_separate_tag(Nonce::assume_unique_for_key(nonce), Aad::from(name), body)
        .ok()?;
    out.extend_from_slice(tag.as_ref());
    Some(out)
}

/// The key name a [`seal`]ed ticket names, when it is long enough to be one.
fn key_name(cipher: &[u8]) -> Option<&[u8]> {
    (cipher.len() >= KEY_NAME_LEN + NONCE_LEN + TAG_LEN).then(|| &cipher[..KEY_NAME_LEN])
}

/// The plain text of a [`seal`]ed ticket whose key name is `name` (checked by the caller).
fn open(key: &LessSafeKey, name: &[u8; KEY_NAME_LEN], cipher: &[u8]) -> Option<Vec<u8>> {
    let nonce =
        Nonce::try_assume_unique_for_key(&cipher[KEY_NAME_LEN..KEY_NAME_LEN + NONCE_LEN]).ok()?;
    let mut body = cipher[KEY_NAME_LEN + NONCE_LEN..].to_vec();
    let plain_len = key
        .open_in_place(nonce, Aad::from(name), &mut body)
        .ok()?
        .len();
    body.truncate(plain_len);
    Some(body)
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

/// Ticket keys shared by the instances of a cluster through their shared storage
/// (`[storage] kind = "redis"`), so that a ticket issued by any instance resumes on any other.
///
/// The keys live under [`SHARED_KEYS`] (a secret value: encrypted before it reaches Redis).
/// Whichever instance finds the newest key older than the rotation interval takes the
/// `tls-ticket-keys` lock and adds a new one; every instance reads the set every
/// [`SYNC_EVERY`]. A key seals tickets only once it is [`PROPAGATION`] old, so every instance
/// has read it before any ticket sealed with it is presented elsewhere; the previous keys keep
/// opening tickets until those have expired. Nonces are random (several instances seal with
/// one key, so no per-process counter is unique across them).
///
/// Sites with early data keep stateful, single-use sessions in their instance's memory
/// instead (see `TlsShared::site_config`): a 0-RTT session resumes only on the instance that
/// issued it, which is what keeps replayed early data out across instances.
pub struct SharedTicketer {
    keys: arc_swap::ArcSwap<KeySet>,
    lifetime: u32,
}

/// Where the shared keys are kept.
pub const SHARED_KEYS: &str = "tls/ticket-keys";
/// How old a new key must be before it seals tickets.
pub const PROPAGATION: u64 = 30;
/// How often each instance reads the shared keys.
pub const SYNC_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

#[derive(Default)]
struct KeySet {
    /// The key that seals new tickets (none until a key is known).
    seal: Option<usize>,
    keys: Vec<SharedKey>,
}

struct SharedKey {
    key: LessSafeKey,
    name: [u8; KEY_NAME_LEN],
}

/// One stored key: when it was made (Unix seconds), its name and its secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredKey {
    pub created: u64,
    pub name: [u8; KEY_NAME_LEN],
    pub secret: [u8; 32],
}

impl StoredKey {
    fn generate(now: u64) -> Result<StoredKey, rustls::crypto::GetRandomFailed> {
        let mut k = StoredKey {
            created: now,
            name: [0; KEY_NAME_LEN],
            secret: [0; 32],
        };
        aws_lc_rs::rand::fill(&mut k.name).map_err(|_| rustls::crypto::GetRandomFailed)?;
        aws_lc_rs::rand::fill(&mut k.secret).map_err(|_| rustls::crypto::GetRandomFailed)?;
        Ok(k)
    }
}

/// The stored form: one key a line, newest first: `v1 CREATED NAME-HEX SECRET-HEX`.
pub fn encode_keys(keys: &[StoredKey]) -> Vec<u8> {
    keys.iter()
        .map(|k| {
            format!(
                "v1 {} {} {}\n",
                k.created,
                crate::storage::hex(&k.name),
                crate::storage::hex(&k.secret)
            )
        })
        .collect::<String>()
        .into_bytes()
}

/// Reads [`encode_keys`]'s form; a damaged set is an error (naming the line), not a guess.
pub fn decode_keys(data: &[u8]) -> Result<Vec<StoredKey>, String> {
    let text = std::str::from_utf8(data).map_err(|_| "not UTF-8".to_string())?;
    let hex = |s: &str, out: &mut [u8]| -> Option<()> {
        if s.len() != out.len() * 2 {
            return None;
        }
        for (i, b) in out.iter_mut().enumerate() {
            *b = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
        }
        Some(())
    };
    text.lines()
        .enumerate()
        .map(|(n, line)| {
            let f: Vec<&str> = line.split(' ').collect();
            let mut k = StoredKey {
                created: 0,
                name: [0; KEY_NAME_LEN],
                secret: [0; 32],
            };
            let ok = f.len() == 4
                && f[0] == "v1"
                && f[1].parse().map(|c| k.created = c).is_ok()
                && hex(f[2], &mut k.name).is_some()
                && hex(f[3], &mut k.secret).is_some();
            ok.then_some(k)
                .ok_or_else(|| format!("line {}: not a ticket key", n + 1))
        })
        .collect()
}

/// The key that seals at `now`: the newest at least [`PROPAGATION`] old, or, when every key
/// is newer (the first key of a new cluster), the oldest.
pub fn sealing_key(keys: &[StoredKey], now: u64) -> Option<usize> {
    keys.iter()
        .position(|k| k.created + PROPAGATION <= now)
        .or_else(|| keys.len().checked_sub(1))
}

/// The set after a rotation at `now`: a new key in front, and the keys that may still open
/// unexpired tickets. A key seals until the next newer one does ([`PROPAGATION`] after that
/// one was made), and its tickets live `rotation` (the lifetime clients are told) after that.
pub fn rotated(
    keys: &[StoredKey],
    rotation: u64,
    now: u64,
) -> Result<Vec<StoredKey>, rustls::crypto::GetRandomFailed> {
    let mut out = vec![StoredKey::generate(now)?];
    for (i, k) in keys.iter().enumerate().take(3) {
        let sealed_until = match i {
            0 => now + PROPAGATION,
            _ => keys[i - 1].created + PROPAGATION,
        };
        if sealed_until + rotation > now {
            out.push(k.clone());
        }
    }
    Ok(out)
}

impl SharedTicketer {
    /// A ticketer with no keys yet (it issues no tickets until [`SharedTicketer::install`]).
    pub fn new(rotation_secs: u32) -> SharedTicketer {
        SharedTicketer {
            keys: arc_swap::ArcSwap::from_pointee(KeySet::default()),
            lifetime: rotation_secs.max(60),
        }
    }

    /// Takes `keys` (newest first) as the current set.
    pub fn install(&self, keys: &[StoredKey], now: u64) {
        let set = KeySet {
            seal: sealing_key(keys, now),
            keys: keys
                .iter()
                .filter_map(|k| {
                    Some(SharedKey {
                        key: LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &k.secret).ok()?),
                        name: k.name,
                    })
                })
                .collect(),
        };
        self.keys.store(Arc::new(set));
    }

    /// One round of the cluster's key keeping: reads the set, rotates it if due (under the
    /// lock, as one instance), and installs it. Errors leave the installed keys as they were.
    pub fn sync(
        &self,
        storage: &dyn crate::storage::Storage,
        rotation: u64,
        now: u64,
    ) -> std::io::Result<()> {
        let read = |storage: &dyn crate::storage::Storage| -> std::io::Result<Vec<StoredKey>> {
            match storage.load(SHARED_KEYS)? {
                Some(data) => decode_keys(&data).map_err(|e| {
                    std::io::Error::new(
                        std::io::ErrorKind::InvalidData,
                        format!("{SHARED_KEYS}: {e}"),
                    )
                }),
                None => Ok(Vec::new()),
            }
        };
        let due = |keys: &[StoredKey]| keys.first().is_none_or(|k| k.created + rotation <= now);
        let keys = read(storage)?;
        // What was read serves even when the rotation below cannot be made (the store's
        // lock needs Redis; the read may have come from this machine's copy).
        if !keys.is_empty() {
            self.install(&keys, now);
        }
        if due(&keys) {
            if let Some(lock) = storage.try_lock("tls-ticket-keys")? {
                let mut keys = read(storage)?;
                if due(&keys) {
                    keys = rotated(&keys, rotation, now)
                        .map_err(|_| std::io::Error::other("no randomness for a ticket key"))?;
                    storage.store_fenced(lock.as_ref(), SHARED_KEYS, &encode_keys(&keys), true)?;
                }
                self.install(&keys, now);
            }
        }
        Ok(())
    }

    /// Whether any key is installed (without one, no tickets are issued).
    pub fn has_keys(&self) -> bool {
        self.keys.load().seal.is_some()
    }
}

impl std::fmt::Debug for SharedTicketer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedTicketer").finish_non_exhaustive()
    }
}

impl ProducesTickets for SharedTicketer {
    fn enabled(&self) -> bool {
        true
    }

    fn lifetime(&self) -> u32 {
        self.lifetime
    }

    fn encrypt(&self, plain: &[u8]) -> Option<Vec<u8>> {
        let set = self.keys.load();
        let k = set.keys.get(set.seal?)?;
        // Random nonces: several instances seal with the same key, so no counter is unique.
        let mut nonce = [0u8; NONCE_LEN];
        aws_lc_rs::rand::fill(&mut nonce).ok()?;
        seal(&k.key, &k.name, nonce, plain)
    }

    fn decrypt(&self, cipher: &[u8]) -> Option<Vec<u8>> {
        let name = key_name(cipher)?;
        let set = self.keys.load();
        let k = set.keys.iter().find(|k| name == k.name)?;
        open(&k.key, &k.name, cipher)
    }
}

/// A [`SharedTicketer`] kept in sync with `storage` by a thread of its own (which ends when
/// the ticketer is dropped): every [`SYNC_EVERY`], and at once when another instance stores
/// new keys. The first round runs before this returns, so the first tickets are already the
/// cluster's; when the store cannot be reached then (and this machine holds no copy of the
/// keys), the instance starts without tickets (full handshakes) and takes the cluster's keys
/// when the store answers.
pub fn shared_ticketer(
    storage: Arc<dyn crate::storage::Storage>,
    rotation_secs: u32,
) -> Result<Arc<SharedTicketer>, String> {
    let rotation = u64::from(rotation_secs.max(60));
    let ticketer = Arc::new(SharedTicketer::new(rotation_secs));
    let mut failing = false;
    if let Err(e) = ticketer.sync(storage.as_ref(), rotation, unix_now()) {
        failing = true;
        match ticketer.has_keys() {
            true => {
                tracing::warn!(error = %e, "TLS ticket keys: the shared storage cannot be reached; using this machine's copy of the cluster's keys")
            }
            false => {
                tracing::warn!(error = %e, "TLS ticket keys: the shared storage cannot be reached and no copy is held; no session tickets until it answers")
            }
        }
    }
    let mut changes = storage.changes();
    let weak = Arc::downgrade(&ticketer);
    std::thread::Builder::new()
        .name("ticket-keys".into())
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    tracing::error!(error = %e, "TLS ticket keys: cannot follow the shared storage");
                    return;
                }
            };
            loop {
                rt.block_on(next_sync(&mut changes));
                let Some(t) = weak.upgrade() else { return };
                match t.sync(storage.as_ref(), rotation, unix_now()) {
                    Ok(()) if failing => {
                        failing = false;
                        tracing::info!("TLS ticket keys: the shared storage answers again");
                    }
                    Ok(()) => {}
                    Err(e) if !failing => {
                        failing = true;
                        tracing::warn!(error = %e, "TLS ticket keys: cannot read the shared storage; the keys held keep serving");
                    }
                    Err(_) => {}
                }
            }
        })
        .map_err(|e| format!("cannot start the ticket-key thread: {e}"))?;
    Ok(ticketer)
}

/// Waits [`SYNC_EVERY`], or less when another instance stores the keys (or changes were
/// missed).
async fn next_sync(changes: &mut Option<tokio::sync::broadcast::Receiver<crate::storage::Change>>) {
    use crate::storage::Change;
    let deadline = tokio::time::Instant::now() + SYNC_EVERY;
    loop {
        match tokio::time::timeout_at(deadline, crate::storage::next_change(changes)).await {
            Err(_) => return, // the regular round
            Ok(Change::Key(k)) if k != SHARED_KEYS => continue,
            Ok(_) => return,
        }
    }
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
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

    #[test]
    fn shared_keys_round_trip_and_seal_only_once_propagated() {
        let a = StoredKey::generate(1_000).unwrap();
        let b = StoredKey::generate(2_000).unwrap();
        let keys = vec![b.clone(), a.clone()];
        assert_eq!(decode_keys(&encode_keys(&keys)).unwrap(), keys);
        assert!(decode_keys(b"v1 12 zz 00\n").is_err());
        // The newest key seals once it is PROPAGATION old; before that, the previous one.
        assert_eq!(sealing_key(&keys, 2_000 + PROPAGATION - 1), Some(1));
        assert_eq!(sealing_key(&keys, 2_000 + PROPAGATION), Some(0));
        // A new cluster's only key seals at once.
        assert_eq!(sealing_key(&keys[..1], 2_000), Some(0));
        assert_eq!(sealing_key(&[], 2_000), None);
        // Rotation keeps the keys whose tickets may still be unexpired, newest first.
        let r = rotated(&keys, 600, 2_600).unwrap();
        assert_eq!(r.len(), 3);
        assert_eq!(r[0].created, 2_600);
        assert_eq!(r[1..], keys[..]);
        // a sealed until b did (2_000 + PROPAGATION); its tickets are gone 600 s later.
        let r = rotated(&keys, 600, 2_000 + PROPAGATION + 600).unwrap();
        assert_eq!(r[1..], keys[..1], "a's tickets have all expired");
    }

    #[test]
    fn instances_with_the_same_keys_open_each_others_tickets() {
        let keys = vec![StoredKey::generate(1_000).unwrap()];
        let (a, b) = (SharedTicketer::new(600), SharedTicketer::new(600));
        assert!(a.encrypt(b"x").is_none(), "no key, no ticket");
        a.install(&keys, 1_000);
        b.install(&keys, 1_000);
        let t = a.encrypt(b"session").unwrap();
        assert_eq!(b.decrypt(&t).unwrap(), b"session");
        let mut bad = t.clone();
        *bad.last_mut().unwrap() ^= 1;
        assert!(b.decrypt(&bad).is_none());
        let other = SharedTicketer::new(600);
        other.install(&[StoredKey::generate(1_000).unwrap()], 1_000);
        assert!(other.decrypt(&t).is_none());
    }
}
