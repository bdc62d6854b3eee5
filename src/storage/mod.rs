//! State portcullis keeps (local CA, ACME accounts and certificates, OCSP staples, renewal and
//! HSTS state).
//!
//! [`Storage`] is the interface the certificate machinery uses. [`FileStorage`] keeps it in the
//! data directory (one machine); [`RedisStorage`] in Redis, shared by several instances that
//! serve as one front door, with secret values encrypted ([`crypt`]) and leased, fenced locks.
//! [`open`] builds the one the configuration's `[storage]` names. The helpers for atomic file
//! writes are here too (the local CA writes its files with them).

use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub mod crypt;
mod file;
mod redis;

pub use self::redis::{RedisLock, RedisStorage};
pub use file::FileStorage;

/// The default data directory: `$PORTCULLIS_DATA_DIR`, else `/var/lib/portcullis` for root,
/// else `$XDG_DATA_HOME/portcullis` or `~/.local/share/portcullis`.
pub fn default_data_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("PORTCULLIS_DATA_DIR") {
        return PathBuf::from(dir);
    }
    if rustix::process::geteuid().is_root() {
        return PathBuf::from("/var/lib/portcullis");
    }
    if let Some(xdg) = std::env::var_os("XDG_DATA_HOME") {
        return PathBuf::from(xdg).join("portcullis");
    }
    match std::env::var_os("HOME") {
        Some(home) => PathBuf::from(home).join(".local/share/portcullis"),
        None => PathBuf::from(".portcullis"),
    }
}

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Hex of the first `len` bytes (at most 32) of the SHA-256 of `data`.
pub fn sha256_hex(data: &[u8], len: usize) -> String {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, data);
    hex(&digest.as_ref()[..len])
}

/// A short stable file-name id for `input`: hex of the first 8 bytes of its SHA-256.
pub fn short_id(input: &str) -> String {
    sha256_hex(input.as_bytes(), 8)
}

/// The same id for a set of names, whatever their order.
pub fn names_id<S: AsRef<str>>(names: &[S]) -> String {
    let mut sorted: Vec<&str> = names.iter().map(AsRef::as_ref).collect();
    sorted.sort_unstable();
    short_id(&sorted.join(","))
}

/// Creates `dir` (and parents) with mode 0700 if missing.
pub fn ensure_private_dir(dir: &Path) -> io::Result<()> {
    if !dir.exists() {
        fs::create_dir_all(dir)?;
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700))?;
    }
    Ok(())
}

fn temp_path(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    // pid + a counter: concurrent writers (processes or threads) never share a temp file.
    static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    path.with_file_name(format!(".{name}.tmp.{}.{n}", std::process::id()))
}

fn write_temp(path: &Path, data: &[u8], mode: u32) -> io::Result<PathBuf> {
    let tmp = temp_path(path);
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)?;
    f.write_all(data)?;
    f.sync_all()?;
    Ok(tmp)
}

fn sync_parent(path: &Path) {
    if let Some(parent) = path.parent() {
        if let Ok(d) = fs::File::open(parent) {
            let _ = d.sync_all();
        }
    }
}

/// Replaces `path` atomically with `data` (mode applies to a newly written file).
pub fn write_atomic(path: &Path, data: &[u8], mode: u32) -> io::Result<()> {
    let tmp = write_temp(path, data, mode)?;
    if let Err(e) = fs::rename(&tmp, path) {
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    sync_parent(path);
    Ok(())
}

/// Creates `path` with `data` only if it does not exist yet (atomically: of two processes racing,
/// exactly one wins). Returns `Ok(false)` when the file already existed.
pub fn create_new_atomic(path: &Path, data: &[u8], mode: u32) -> io::Result<bool> {
    let tmp = write_temp(path, data, mode)?;
    let res = fs::hard_link(&tmp, path);
    let _ = fs::remove_file(&tmp);
    match res {
        Ok(()) => {
            sync_parent(path);
            Ok(true)
        }
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(false),
        Err(e) => Err(e),
    }
}

/// Refuses keys that could leave the root or that are not plain names.
pub(crate) fn check_key(key: &str) -> io::Result<()> {
    let ok = !key.is_empty()
        && !key.starts_with('/')
        && !key.ends_with('/')
        && key.split('/').all(|seg| {
            !seg.is_empty()
                && seg != "."
                && seg != ".."
                && !seg.starts_with('.')
                && seg
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.@*".contains(&b))
        });
    if ok {
        Ok(())
    } else {
        Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("invalid storage key {key:?}"),
        ))
    }
}

/// Where certificates, keys, ACME accounts and their metadata are kept.
///
/// Keys are slash-separated names such as `certs/example.com/cert.pem` (checked by every
/// implementation: no empty, `.`-leading or `..` segments, ASCII letters, digits and `-_.@*`).
/// Every write is all-or-nothing, and [`Storage::try_lock`] keeps two processes (or two
/// instances sharing a store) from doing the same work, such as ordering a certificate for the
/// same name, at once.
///
/// The methods block. They are called at start and reload and from the certificate
/// machinery's own threads (ACME, on-demand issuing, OCSP, HSTS, the admin listener), never on
/// the threads that serve connections; [`RedisStorage`] bounds each call by a timeout.
pub trait Storage: Send + Sync + std::fmt::Debug {
    /// The value stored under `key`, or `None`.
    fn load(&self, key: &str) -> io::Result<Option<Vec<u8>>>;
    /// Stores `value` under `key` atomically. `secret` values (private keys) are readable by
    /// the owner only ([`FileStorage`]) or encrypted before they leave the process
    /// ([`RedisStorage`]).
    fn store(&self, key: &str, value: &[u8], secret: bool) -> io::Result<()>;
    /// Removes `key` (no error when it does not exist).
    fn delete(&self, key: &str) -> io::Result<()>;
    /// Keys directly or indirectly below `prefix` (a directory-like key), sorted.
    fn list(&self, prefix: &str) -> io::Result<Vec<String>>;
    /// Takes the named lock without waiting: `Ok(None)` when another holder has it. The lock is
    /// released when the returned guard is dropped, or when its holder dies (its process
    /// exits, or, for a shared store, its lease runs out unrenewed).
    fn try_lock(&self, name: &str) -> io::Result<Option<Box<dyn StorageLock>>>;
    /// [`Storage::store`] only while `lock` (taken from this store) is still held: a holder
    /// whose lease ran out while it worked fails here with [`io::ErrorKind::Other`] and "lock
    /// lost", and does not overwrite what a newer holder wrote. Stores that cannot lose a held
    /// lock (the file store's `flock` lasts as long as the guard) store plainly.
    fn store_fenced(
        &self,
        lock: &dyn StorageLock,
        key: &str,
        value: &[u8],
        secret: bool,
    ) -> io::Result<()> {
        let _ = lock;
        self.store(key, value, secret)
    }
    /// Who holds which lock right now, for a cluster view. Default: nothing known.
    fn lock_holders(&self) -> io::Result<Vec<LockHolder>> {
        Ok(Vec::new())
    }
    /// Several instances share this store (state kept here, such as TLS ticket keys, is
    /// cluster-wide). Default: no, one machine's own store.
    fn shared(&self) -> bool {
        false
    }
    /// The changes other instances make to a shared store, as they are made (Redis pub/sub).
    /// `None` for a store nobody else writes. A receiver that lags behind gets
    /// `RecvError::Lagged`, which it takes as [`Change::All`].
    fn changes(&self) -> Option<tokio::sync::broadcast::Receiver<Change>> {
        None
    }
}

/// The next change another instance made to a shared store, from a receiver of
/// [`Storage::changes`]: a receiver that lagged behind gets [`Change::All`]; without a
/// receiver (or once the store is gone), never.
pub async fn next_change(changes: &mut Option<tokio::sync::broadcast::Receiver<Change>>) -> Change {
    use tokio::sync::broadcast::error::RecvError;
    loop {
        let Some(rx) = changes.as_mut() else {
            return std::future::pending().await;
        };
        match rx.recv().await {
            Ok(change) => return change,
            Err(RecvError::Lagged(_)) => return Change::All,
            Err(RecvError::Closed) => *changes = None,
        }
    }
}

/// A change another instance made to a shared store ([`Storage::changes`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// `key` was stored or deleted.
    Key(String),
    /// Anything may have changed: notifications were missed while the store was unreachable.
    All,
}

/// A held [`Storage`] lock; dropping it releases the lock.
pub trait StorageLock: Send + std::fmt::Debug {
    /// The guard as `Any`, so that the store that made it can find its own data (its token for
    /// fenced writes).
    fn as_any(&self) -> &dyn std::any::Any;
    /// The fence number of this acquisition: higher than every earlier holder's of the same
    /// lock in the same store. 0 where the store has none (files).
    fn fence(&self) -> u64 {
        0
    }
    /// Whether the lock is still held as far as the guard knows (false once a renewal found
    /// the lease gone).
    fn is_held(&self) -> bool {
        true
    }
}

/// One held lock, as [`Storage::lock_holders`] reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockHolder {
    /// The lock's name, as given to [`Storage::try_lock`].
    pub name: String,
    /// The instance that holds it (host name and process id).
    pub instance: String,
    /// When it was taken, in Unix seconds.
    pub since: i64,
    /// The acquisition's fence number.
    pub fence: u64,
}

/// The name this process goes by among the instances sharing a store: `HOST:PID`.
pub fn instance_id() -> String {
    let host = rustix::system::uname()
        .nodename()
        .to_string_lossy()
        .into_owned();
    format!("{host}:{}", std::process::id())
}

/// The storage `config`'s `[storage]` names: the data directory's files (default) or Redis.
/// Opening Redis connects to it and checks the key-encryption key against the one stored
/// values were written with; the error says what failed and where.
pub fn open(config: &crate::config::model::Config) -> Result<Arc<dyn Storage>, String> {
    match &config.storage {
        crate::config::storage::StorageSettings::File => {
            Ok(Arc::new(FileStorage::new(config.data_dir.clone())))
        }
        crate::config::storage::StorageSettings::Redis(settings) => {
            let mirror = config.data_dir.join("shared-copy");
            let s = RedisStorage::open_with_copy((**settings).clone(), mirror)
                .map_err(|e| format!("[storage]: {e}"))?;
            Ok(Arc::new(s))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_writes() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("k.pem");
        assert!(create_new_atomic(&p, b"one", 0o600).unwrap());
        assert!(!create_new_atomic(&p, b"two", 0o600).unwrap());
        assert_eq!(fs::read(&p).unwrap(), b"one");
        assert_eq!(
            fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
        write_atomic(&p, b"three", 0o600).unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"three");
        assert_eq!(
            fs::read_dir(dir.path()).unwrap().count(),
            1,
            "no temp files left behind"
        );
    }
}
