//! `portcullis trust --browsers-only` (and `--uninstall`) on the browsers' NSS databases of a
//! temporary HOME: a Firefox profile and Chromium's `~/.pki/nssdb`, made with NSS's own
//! `certutil` (Debian: libnss3-tools, which `.ci/run` installs). The system trust store is
//! left alone (`--browsers-only`).

mod common;

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use common::*;

fn certutil(args: &[&str]) -> Output {
    Command::new("certutil")
        .args(args)
        .output()
        .expect("certutil (Debian: apt-get install libnss3-tools; .ci/run installs it)")
}

fn new_db(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    let spec = format!("sql:{}", dir.display());
    let out = certutil(&["-N", "--empty-password", "-d", &spec]);
    assert!(out.status.success(), "{}", text(&out.stderr));
}

/// The trust flags of `nick` in the database at `dir`, or `None` when it is not there.
fn trust_flags(dir: &Path, nick: &str) -> Option<String> {
    let out = certutil(&["-L", "-d", &format!("sql:{}", dir.display())]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    text(&out.stdout)
        .lines()
        .find(|l| l.starts_with(nick))
        .map(|l| l[nick.len()..].trim().to_string())
}

fn trust(home: &Path, data: &Path, args: &[&str], path: Option<&str>) -> (bool, String) {
    let mut cmd = Command::new(bin());
    cmd.arg("trust")
        .args(args)
        .arg("--data-dir")
        .arg(data)
        .env("HOME", home)
        .env_remove("SUDO_USER");
    if let Some(p) = path {
        cmd.env("PATH", p);
    }
    let out = run_with_timeout(&mut cmd, Duration::from_secs(60));
    (out.status.success(), text(&out.stderr))
}

#[test]
fn trust_installs_into_and_uninstall_removes_from_the_browsers_nss_databases() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    let data = dir.path().join("data");
    let firefox = home.join(".mozilla/firefox/abcd1234.default-release");
    let chromium = home.join(".pki/nssdb");
    new_db(&firefox);
    new_db(&chromium);
    // A profile directory without a database (never started) is not one.
    std::fs::create_dir_all(home.join(".mozilla/firefox/Crash Reports")).unwrap();

    let (ok, err) = trust(&home, &data, &["--browsers-only"], None);
    assert!(ok, "{err}");
    let root = std::fs::read_to_string(portcullis::tls::local_ca::root_cert_path(&data)).unwrap();
    let nick = portcullis::tls::nss::nickname(&root);
    for (owner, db) in [
        ("Firefox profile", &firefox),
        ("Chromium/Chrome", &chromium),
    ] {
        let line = format!(
            "portcullis: {owner} {}: installed (\"{nick}\")",
            db.display()
        );
        assert!(
            err.lines().any(|l| l == line),
            "no line {line:?} in:\n{err}"
        );
        assert_eq!(
            trust_flags(db, &nick).as_deref(),
            Some("C,,"),
            "{}",
            db.display()
        );
    }
    assert!(!err.contains("Crash Reports"), "{err}");
    assert!(
        !err.contains("system trust store"),
        "--browsers-only: {err}"
    );

    // Again: nothing to do, and said so.
    let (ok, err) = trust(&home, &data, &["--browsers-only"], None);
    assert!(ok, "{err}");
    assert_eq!(err.matches(": already installed (").count(), 2, "{err}");

    // Uninstall: both removed, then nothing left to remove.
    let (ok, err) = trust(&home, &data, &["--uninstall", "--browsers-only"], None);
    assert!(ok, "{err}");
    assert_eq!(err.matches(": removed (").count(), 2, "{err}");
    assert_eq!(trust_flags(&firefox, &nick), None);
    assert_eq!(trust_flags(&chromium, &nick), None);
    let (ok, err) = trust(&home, &data, &["--uninstall", "--browsers-only"], None);
    assert!(ok, "{err}");
    assert_eq!(err.matches(": not installed (").count(), 2, "{err}");

    // Without certutil: the databases are named, with what to install; the exit code says so.
    let (ok, err) = trust(&home, &data, &["--browsers-only"], Some("/nonexistent"));
    assert!(!ok, "{err}");
    assert!(
        err.contains("2 certificate database(s)") && err.contains("libnss3-tools"),
        "{err}"
    );
}

#[test]
fn trust_with_no_browser_databases_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    std::fs::create_dir_all(&home).unwrap();
    let (ok, err) = trust(&home, &dir.path().join("data"), &["--browsers-only"], None);
    assert!(ok, "{err}");
    assert!(
        err.contains("no Firefox or Chromium/Chrome certificate database under"),
        "{err}"
    );
}
