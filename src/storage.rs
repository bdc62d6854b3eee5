//! State portcullis keeps on disk (local CA, ACME accounts and certificates).
//!
//! Writes are atomic (temp file in the same directory, fsync, rename) so a crash never leaves a
//! half-written certificate or key; keys are created with mode 0600. [`Storage`] is the interface
//! the certificate machinery uses, [`FileStorage`] its implementation on a local directory.

use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

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

/// Where certificates, keys, ACME accounts and their metadata are kept.
///
/// Keys are slash-separated names such as `certs/example.com/cert.pem`. The file-system
/// implementation is [`FileStorage`]; the trait exists so that several servers can later share a
/// networked store. Every write is all-or-nothing, and [`Storage::try_lock`] keeps two processes
/// from doing the same work (e.g. ordering a certificate for the same name) at once.
pub trait Storage: Send + Sync + std::fmt::Debug {
    /// The value stored under `key`, or `None`.
    fn load(&self, key: &str) -> io::Result<Option<Vec<u8>>>;
    /// Stores `value` under `key` atomically; `secret` values are readable by the owner only.
    fn store(&self, key: &str, value: &[u8], secret: bool) -> io::Result<()>;
    /// Removes `key` (no error when it does not exist).
    fn delete(&self, key: &str) -> io::Result<()>;
    /// Keys directly or indirectly below `prefix` (a directory-like key), sorted.
    fn list(&self, prefix: &str) -> io::Result<Vec<String>>;
    /// Takes the named lock without waiting: `Ok(None)` when another holder has it. The lock is
    /// released when the returned guard is dropped (or its process dies).
    fn try_lock(&self, name: &str) -> io::Result<Option<Box<dyn StorageLock>>>;
}

/// A held [`Storage`] lock; dropping it releases the lock.
pub trait StorageLock: Send + std::fmt::Debug {}

/// [`Storage`] in a local directory (the data directory).
#[derive(Debug, Clone)]
pub struct FileStorage {
    root: PathBuf,
}

/// Refuses keys that could leave the root or that are not plain names.
fn check_key(key: &str) -> io::Result<()> {
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

impl FileStorage {
    /// A store rooted at `root` (created with mode 0700 on first write).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        FileStorage { root: root.into() }
    }

    fn path(&self, key: &str) -> io::Result<PathBuf> {
        check_key(key)?;
        Ok(self.root.join(key))
    }
}

/// An `flock(2)` on a file under `<root>/locks/`: the kernel releases it when the holder's
/// process dies, so a crash never leaves a stale lock behind.
#[derive(Debug)]
struct FileLock {
    _file: fs::File,
}

impl StorageLock for FileLock {}

impl Storage for FileStorage {
    fn load(&self, key: &str) -> io::Result<Option<Vec<u8>>> {
        match fs::read(self.path(key)?) {
            Ok(v) => Ok(Some(v)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn store(&self, key: &str, value: &[u8], secret: bool) -> io::Result<()> {
        let path = self.path(key)?;
        if let Some(parent) = path.parent() {
            ensure_private_dir(parent)?;
        }
        write_atomic(&path, value, if secret { 0o600 } else { 0o644 })?;
        if secret {
            // An existing file keeps its mode through rename of a new inode, but be explicit.
            fs::set_permissions(&path, fs::Permissions::from_mode(0o600))?;
        }
        Ok(())
    }

    fn delete(&self, key: &str) -> io::Result<()> {
        match fs::remove_file(self.path(key)?) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    fn list(&self, prefix: &str) -> io::Result<Vec<String>> {
        let base = if prefix.is_empty() {
            self.root.clone()
        } else {
            self.path(prefix)?
        };
        let mut out = Vec::new();
        let mut stack = vec![base];
        while let Some(dir) = stack.pop() {
            let entries = match fs::read_dir(&dir) {
                Ok(e) => e,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            };
            for entry in entries {
                let entry = entry?;
                let name = entry.file_name();
                let name = name.to_string_lossy();
                if name.starts_with('.') {
                    continue; // temp files of writes in progress
                }
                let path = entry.path();
                if entry.file_type()?.is_dir() {
                    stack.push(path);
                } else if let Ok(rel) = path.strip_prefix(&self.root) {
                    out.push(rel.to_string_lossy().into_owned());
                }
            }
        }
        out.sort();
        Ok(out)
    }

    fn try_lock(&self, name: &str) -> io::Result<Option<Box<dyn StorageLock>>> {
        check_key(name)?;
        let dir = self.root.join("locks");
        ensure_private_dir(&dir)?;
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(dir.join(format!("{}.lock", name.replace('/', "_"))))?;
        match rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => Ok(Some(Box::new(FileLock { _file: file }))),
            Err(rustix::io::Errno::WOULDBLOCK) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }
}

#[cfg(test)]
mod storage_tests {
    use super::*;

    #[test]
    fn store_load_list_delete() {
        let dir = tempfile::tempdir().unwrap();
        let s = FileStorage::new(dir.path().join("data"));
        assert_eq!(s.load("certs/a.example/cert.pem").unwrap(), None);
        s.store("certs/a.example/cert.pem", b"CERT", false).unwrap();
        s.store("certs/a.example/key.pem", b"KEY", true).unwrap();
        s.store("certs/*.b.example/cert.pem", b"W", false).unwrap();
        assert_eq!(
            s.load("certs/a.example/cert.pem").unwrap().as_deref(),
            Some(&b"CERT"[..])
        );
        let key_mode = fs::metadata(dir.path().join("data/certs/a.example/key.pem"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(key_mode & 0o777, 0o600, "secret values are owner-only");
        assert_eq!(
            s.list("certs").unwrap(),
            vec![
                "certs/*.b.example/cert.pem",
                "certs/a.example/cert.pem",
                "certs/a.example/key.pem"
            ]
        );
        s.store("certs/a.example/cert.pem", b"NEW", false).unwrap();
        assert_eq!(
            s.load("certs/a.example/cert.pem").unwrap().as_deref(),
            Some(&b"NEW"[..])
        );
        s.delete("certs/a.example/cert.pem").unwrap();
        s.delete("certs/a.example/cert.pem").unwrap();
        assert_eq!(s.load("certs/a.example/cert.pem").unwrap(), None);
    }

    #[test]
    fn keys_cannot_leave_the_root() {
        let dir = tempfile::tempdir().unwrap();
        let s = FileStorage::new(dir.path());
        for bad in [
            "",
            "/etc/passwd",
            "../x",
            "a/../../x",
            "a//b",
            "a/./b",
            ".hidden",
            "a/",
            "a\\b",
            "a b",
            "a\0b",
        ] {
            assert_eq!(
                s.store(bad, b"x", false).unwrap_err().kind(),
                io::ErrorKind::InvalidInput,
                "{bad:?}"
            );
            assert!(s.load(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_lock_is_exclusive_until_dropped() {
        let dir = tempfile::tempdir().unwrap();
        // Two stores on one directory stand for two processes: flock locks are per open file.
        let a = FileStorage::new(dir.path());
        let b = FileStorage::new(dir.path());
        let held = a
            .try_lock("order/example.com")
            .unwrap()
            .expect("first taker gets it");
        assert!(
            b.try_lock("order/example.com").unwrap().is_none(),
            "second taker must not"
        );
        assert!(
            b.try_lock("order/other.example").unwrap().is_some(),
            "other names are independent"
        );
        drop(held);
        assert!(
            b.try_lock("order/example.com").unwrap().is_some(),
            "released on drop"
        );
    }
}
