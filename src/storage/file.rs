//! [`Storage`] in a local directory (the data directory): one machine's store.
//!
//! Writes are atomic (temp file in the same directory, fsync, rename) so a crash never leaves a
//! half-written certificate or key; secret values get mode 0600. Locks are `flock(2)`s.

use std::fs::{self, OpenOptions};
use std::io;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::PathBuf;

use super::{check_key, ensure_private_dir, write_atomic, Storage, StorageLock};

/// [`Storage`] in a local directory (the data directory).
#[derive(Debug, Clone)]
pub struct FileStorage {
    root: PathBuf,
}

impl FileStorage {
    /// A store rooted at `root` (created with mode 0700 on first write).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        FileStorage { root: root.into() }
    }

    /// Whether `key` was stored as a secret (readable by the owner only).
    pub fn is_secret(&self, key: &str) -> bool {
        self.path(key)
            .and_then(fs::metadata)
            .is_ok_and(|m| m.permissions().mode() & 0o077 == 0)
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

impl StorageLock for FileLock {
    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

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
