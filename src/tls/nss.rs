//! The browsers' own certificate stores: NSS databases of Firefox profiles and the shared
//! database Chromium and Chrome use on Linux (`~/.pki/nssdb`), which ignore the system trust
//! store. `portcullis trust` adds the local CA's root to each with NSS's `certutil` (Debian:
//! `libnss3-tools`), as mkcert does, and `trust --uninstall` removes it.
//!
//! There is no maintained Rust crate that writes NSS databases (SQLite files in a format
//! private to NSS); `certutil` is NSS's own tool for it, so it is run as a child process.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// One NSS certificate database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NssDb {
    /// What it belongs to, for messages ("Firefox profile", "Chromium/Chrome").
    pub owner: &'static str,
    /// The database directory.
    pub dir: PathBuf,
    /// `sql:DIR` (cert9.db) or `dbm:DIR` (the older cert8.db), as certutil's `-d` wants it.
    pub spec: String,
}

/// The NSS databases under `home`: Firefox profiles (also the snap package's) and the shared
/// database of Chromium and Chrome (also the snap package's). Only directories holding a
/// database count: a browser never started has none yet.
pub fn databases(home: &Path) -> Vec<NssDb> {
    let mut out = Vec::new();
    let mut add = |owner: &'static str, dir: PathBuf| {
        let spec = if dir.join("cert9.db").is_file() {
            format!("sql:{}", dir.display())
        } else if dir.join("cert8.db").is_file() {
            format!("dbm:{}", dir.display())
        } else {
            return;
        };
        out.push(NssDb { owner, dir, spec });
    };
    for profiles in [".mozilla/firefox", "snap/firefox/common/.mozilla/firefox"] {
        let Ok(entries) = std::fs::read_dir(home.join(profiles)) else {
            continue;
        };
        let mut dirs: Vec<PathBuf> = entries
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .filter(|p| p.is_dir())
            .collect();
        dirs.sort();
        for dir in dirs {
            add("Firefox profile", dir);
        }
    }
    for shared in [".pki/nssdb", "snap/chromium/current/.pki/nssdb"] {
        add("Chromium/Chrome", home.join(shared));
    }
    out
}

/// `certutil` on the `PATH`, if any.
pub fn certutil() -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join("certutil"))
        .find(|p| p.is_file())
}

/// The nickname of the local CA's root in NSS databases: one per CA (the root's hash), so
/// that the roots of several data directories live side by side.
pub fn nickname(root_pem: &str) -> String {
    format!(
        "portcullis local CA {}",
        crate::storage::short_id(root_pem.trim())
    )
}

/// What was done to one database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Installed,
    AlreadyThere,
    Removed,
    NotThere,
}

/// Runs certutil with `args`; its output on failure.
fn run(certutil: &Path, args: &[&str]) -> Result<(), String> {
    // No stdin: a password-protected database fails instead of waiting for a password.
    let out = Command::new(certutil)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run {}: {e}", certutil.display()))?;
    if out.status.success() {
        return Ok(());
    }
    let text = String::from_utf8_lossy(&out.stderr).trim().to_string();
    let text = if text.is_empty() {
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    } else {
        text
    };
    Err(format!(
        "certutil {} failed ({}): {}",
        args.first().copied().unwrap_or_default(),
        out.status,
        text.lines().next().unwrap_or("no message")
    ))
}

/// Whether `db` holds a certificate named `nick`.
pub fn contains(certutil: &Path, db: &NssDb, nick: &str) -> bool {
    run(certutil, &["-L", "-d", &db.spec, "-n", nick]).is_ok()
}

/// Adds the root in `root_file` to `db` as a CA trusted for TLS servers (`-t C,,`).
pub fn install(
    certutil: &Path,
    db: &NssDb,
    nick: &str,
    root_file: &Path,
) -> Result<Outcome, String> {
    if contains(certutil, db, nick) {
        return Ok(Outcome::AlreadyThere);
    }
    let root = root_file.to_string_lossy();
    run(
        certutil,
        &["-A", "-d", &db.spec, "-t", "C,,", "-n", nick, "-i", &root],
    )?;
    if !contains(certutil, db, nick) {
        return Err("certutil reported success, but the root is not listed afterwards".into());
    }
    Ok(Outcome::Installed)
}

/// Removes the certificate named `nick` from `db`.
pub fn uninstall(certutil: &Path, db: &NssDb, nick: &str) -> Result<Outcome, String> {
    if !contains(certutil, db, nick) {
        return Ok(Outcome::NotThere);
    }
    run(certutil, &["-D", "-d", &db.spec, "-n", nick])?;
    if contains(certutil, db, nick) {
        return Err("certutil reported success, but the root is still listed".into());
    }
    Ok(Outcome::Removed)
}
