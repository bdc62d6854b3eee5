//! Every supported key type and PEM key format loads; weak or unsupported ones are refused by
//! name. Certificates and keys are made with the `openssl` command line (as an admin would).

use std::path::Path;
use std::process::Command;

use portcullis::tls::certs::{load_pair, KeyKind};

/// Makes a self-signed certificate for `localhost` with `keygen` args; returns (cert, key).
fn make(dir: &Path, name: &str, newkey: &[&str]) -> (std::path::PathBuf, std::path::PathBuf) {
    let cert = dir.join(format!("{name}.pem"));
    let key = dir.join(format!("{name}.key"));
    let mut args = vec![
        "req",
        "-x509",
        "-nodes",
        "-days",
        "30",
        "-subj",
        "/CN=localhost",
        "-addext",
        "subjectAltName=DNS:localhost",
    ];
    args.extend_from_slice(newkey);
    let out = Command::new("openssl")
        .args(&args)
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("openssl must be installed (CI installs it)");
    assert!(
        out.status.success(),
        "openssl req: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    (cert, key)
}

/// Rewrites `key` into the traditional PEM encoding with `openssl ec` (SEC1, its default) or
/// `openssl rsa -traditional` (PKCS#1).
fn convert(key: &Path, cmd: &str, out: &Path) {
    let mut c = Command::new("openssl");
    c.args([cmd, "-in"]).arg(key).arg("-out").arg(out);
    if cmd == "rsa" {
        c.arg("-traditional");
    }
    let o = c.output().unwrap();
    assert!(
        o.status.success(),
        "openssl {cmd}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

fn now() -> i64 {
    portcullis::tls::certs::unix_now()
}

#[test]
fn ecdsa_p256_p384_rsa_and_ed25519_load_in_every_pem_key_format() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let cases: [(&str, &[&str], KeyKind); 5] = [
        (
            "p256",
            &["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"],
            KeyKind::EcdsaP256,
        ),
        (
            "p384",
            &["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-384"],
            KeyKind::EcdsaP384,
        ),
        ("rsa2048", &["-newkey", "rsa:2048"], KeyKind::Rsa(2048)),
        ("rsa4096", &["-newkey", "rsa:4096"], KeyKind::Rsa(4096)),
        ("ed25519", &["-newkey", "ed25519"], KeyKind::Ed25519),
    ];
    for (name, newkey, kind) in cases {
        let (cert, key) = make(d, name, newkey);
        let pkcs8 = std::fs::read_to_string(&key).unwrap();
        assert!(
            pkcs8.contains("BEGIN PRIVATE KEY"),
            "{name}: openssl writes PKCS#8"
        );
        let (loaded, findings) = load_pair(&cert, &key, now(), &[])
            .unwrap_or_else(|f| panic!("{name} (PKCS#8): {}", f.message));
        assert_eq!(loaded.info.key, kind, "{name}");
        assert!(
            findings
                .iter()
                .all(|f| f.severity != portcullis::config::Severity::Error),
            "{name}: {findings:?}"
        );
        // The traditional encodings: SEC1 for EC keys, PKCS#1 for RSA keys.
        let traditional = match kind {
            KeyKind::EcdsaP256 | KeyKind::EcdsaP384 => Some(("ec", "BEGIN EC PRIVATE KEY")),
            KeyKind::Rsa(_) => Some(("rsa", "BEGIN RSA PRIVATE KEY")),
            _ => None,
        };
        if let Some((cmd, marker)) = traditional {
            let other = d.join(format!("{name}-{cmd}.key"));
            convert(&key, cmd, &other);
            assert!(
                std::fs::read_to_string(&other).unwrap().contains(marker),
                "{name}: {marker}"
            );
            let (loaded, _) = load_pair(&cert, &other, now(), &[])
                .unwrap_or_else(|f| panic!("{name} ({marker}): {}", f.message));
            assert_eq!(loaded.info.key, kind, "{name} ({marker})");
        }
    }
}

#[test]
fn rsa_1024_is_refused_as_too_weak() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = make(dir.path(), "rsa1024", &["-newkey", "rsa:1024"]);
    match load_pair(&cert, &key, now(), &[]) {
        Err(f) => assert!(
            f.message.contains("1024") || f.message.contains("unsupported"),
            "{}",
            f.message
        ),
        Ok((_, findings)) => {
            let weak = findings
                .iter()
                .find(|f| f.message.contains("RSA key of 1024 bits is too weak"));
            assert!(
                weak.is_some_and(|f| f.severity == portcullis::config::Severity::Error),
                "{findings:?}"
            );
        }
    }
}

#[test]
fn encrypted_key_is_refused_with_a_fix() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = make(
        dir.path(),
        "p256",
        &["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"],
    );
    let enc = dir.path().join("enc.key");
    let o = Command::new("openssl")
        .args(["pkey", "-in"])
        .arg(&key)
        .args(["-aes256", "-passout", "pass:secret", "-out"])
        .arg(&enc)
        .output()
        .unwrap();
    assert!(o.status.success());
    let err = load_pair(&cert, &enc, now(), &[]).expect_err("an encrypted key cannot be used");
    assert!(err.message.contains("enc.key"), "{}", err.message);
    assert!(err.fix.contains("encrypted"), "{}", err.fix);
}

#[test]
fn the_example_config_parses_with_no_unknown_keys() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("portcullis.example.toml");
    if let Err(p) = portcullis::config::parse_file(&path) {
        panic!("portcullis.example.toml does not parse: {p}");
    }
}
