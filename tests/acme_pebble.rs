//! ACME against a real CA: Debian's `pebble` on loopback, validating HTTP-01 through the
//! portcullis port-80 listener.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::acme_proxy::{AcmeProxy, AriReply, AriResponder};
use common::pebble::*;
use common::{parse_listen_line, pki, ServeProcess, TestEnv};
use portcullis::acme::client::{AcmeClient, AcmeError, ChallengeKind};
use portcullis::acme::Challenges;
use portcullis::config::model::AcmeKeyType;
use portcullis::storage::{FileStorage, Storage};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http01_issuance_from_pebble_gives_a_chain_that_verifies() {
    let env = TestEnv::new();
    let dir = env.path("acme");
    std::fs::create_dir_all(&dir).unwrap();
    let test_ca = env.write("test-root.pem", &pki().root_pem);
    let srv = env.start("[[site]]\nname = \"local\"\nhosts = [\"localhost\"]\n[[site.route]]\npath = \"/\"\nrespond = { body = \"hi\" }\n");
    let pebble = start_pebble(&dir, srv.http().port(), srv.https.port());
    let state = srv.server.as_ref().unwrap().state();
    let challenges = Challenges {
        http01: state.front.acme.clone(),
        tls_alpn: state.tls_alpn.clone(),
        dns: None,
        shared: None,
    };
    let tokens = challenges.http01.clone();
    let storage = FileStorage::new(dir.join("store"));

    let client = AcmeClient::open(&storage, &pebble.directory, Some(&test_ca), &[])
        .await
        .expect("account");
    let issued = client
        .issue(
            &["localhost".to_string()],
            &challenges,
            ChallengeKind::Http01,
            AcmeKeyType::EcdsaP256,
        )
        .await
        .unwrap_or_else(|e| panic!("issuance failed: {e}"));
    assert!(
        storage
            .list("acme")
            .unwrap()
            .iter()
            .any(|k| k.ends_with("account.json")),
        "account stored"
    );

    // The chain verifies against pebble's root, for the name ordered.
    let root = pebble_root(&dir, &pebble, &test_ca);
    let chain = dir.join("issued.pem");
    std::fs::write(&chain, &issued.chain_pem).unwrap();
    let leaf_end = issued.chain_pem.find("-----END CERTIFICATE-----").unwrap() + 25;
    std::fs::write(dir.join("leaf.pem"), &issued.chain_pem[..leaf_end]).unwrap();
    std::fs::write(dir.join("rest.pem"), &issued.chain_pem[leaf_end..]).unwrap();
    let v = Command::new("openssl")
        .args(["verify", "-CAfile"])
        .arg(&root)
        .arg("-untrusted")
        .arg(dir.join("rest.pem"))
        .args(["-verify_hostname", "localhost"])
        .arg(dir.join("leaf.pem"))
        .output()
        .unwrap();
    assert!(
        v.status.success(),
        "openssl verify: {}{}",
        String::from_utf8_lossy(&v.stdout),
        String::from_utf8_lossy(&v.stderr)
    );
    // And portcullis itself accepts it as a certificate for localhost.
    std::fs::write(dir.join("key.pem"), &issued.key_pem).unwrap();
    let (loaded, _) = portcullis::tls::certs::load_pair(
        &chain,
        &dir.join("key.pem"),
        portcullis::tls::certs::unix_now(),
        &[],
    )
    .expect("issued pair loads");
    assert!(loaded.info.dns_names.contains(&"localhost".to_string()));
    assert!(tokens.get("anything").is_none());

    // The stored account is reused, not registered again.
    let before = std::fs::read(
        dir.join("store")
            .join(storage.list("acme").unwrap()[0].as_str()),
    )
    .unwrap();
    let again = AcmeClient::open(&storage, &pebble.directory, Some(&test_ca), &[])
        .await
        .expect("stored account");
    drop(again);
    let after = std::fs::read(
        dir.join("store")
            .join(storage.list("acme").unwrap()[0].as_str()),
    )
    .unwrap();
    assert_eq!(before, after);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_challenge_that_cannot_succeed_names_the_name_and_the_challenge() {
    let env = TestEnv::new();
    let dir = env.path("acme");
    std::fs::create_dir_all(&dir).unwrap();
    let test_ca = env.write("test-root.pem", &pki().root_pem);
    let srv = env.start("[[site]]\nname = \"local\"\nhosts = [\"localhost\"]\n[[site.route]]\npath = \"/\"\nrespond = { body = \"hi\" }\n");
    let pebble = start_pebble(&dir, srv.http().port(), free_port());
    let storage = FileStorage::new(dir.join("store"));
    let client = AcmeClient::open(&storage, &pebble.directory, Some(&test_ca), &[])
        .await
        .expect("account");
    // Tokens go to a store the listener does not answer from: validation gets 404.
    let unrelated = Challenges::default();
    let err = client
        .issue(
            &["localhost".to_string()],
            &unrelated,
            ChallengeKind::Http01,
            AcmeKeyType::EcdsaP256,
        )
        .await
        .expect_err("must fail");
    let msg = err.to_string();
    assert!(matches!(err, AcmeError::Challenge { .. }), "{msg}");
    assert!(
        msg.contains("localhost") && msg.contains("http-01") && msg.contains(&pebble.directory),
        "{msg}"
    );
}

/// The whole path: `serve` with a site that has no certificate orders one from pebble in the
/// background, serves it as soon as it arrives, and serves the stored one at the next start.
#[test]
fn serve_obtains_a_certificate_and_reuses_it_after_a_restart() {
    let PebbleEnv {
        env,
        dir,
        test_ca,
        http_port,
        pebble,
    } = PebbleEnv::start();
    let config = format!(
        "workers = 2\ndata_dir = \"data\"\n[listen]\nhttps = [\"127.0.0.1:0\"]\nhttp = [\"127.0.0.1:{http_port}\"]\n\
         [acme]\nca = \"{}\"\nca_root = \"{}\"\nemail = \"admin@example.test\"\n\
         [[site]]\nname = \"pebbled\"\nhosts = [\"localhost\"]\nissuer = \"acme\"\n[[site.route]]\npath = \"/\"\nrespond = {{ body = \"acme ok\" }}\n",
        pebble.directory,
        test_ca.display()
    );
    let path = env.write_config_raw(&config);
    let root = pebble_root(&dir, &pebble, &test_ca);
    let get = |port: u16| curl_localhost(&root, port);

    let (cfg, _) = env.load(&path).unwrap_or_else(|p| {
        panic!(
            "{}",
            p.iter()
                .map(|p| p.to_string())
                .collect::<Vec<_>>()
                .join("\n")
        )
    });
    let server = portcullis::server::Server::start(cfg).expect("start");
    let port = server.https_addrs()[0].port();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = get(port);
        if out.status.success() {
            assert_eq!(String::from_utf8_lossy(&out.stdout), "acme ok");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no valid certificate after 30 s: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    server.shutdown();

    // Restarted: the stored certificate is served at once, without a new order.
    let (cfg, _) = env.load(&path).unwrap();
    let server = portcullis::server::Server::start(cfg).expect("restart");
    let out = get(server.https_addrs()[0].port());
    assert!(
        out.status.success(),
        "stored certificate not served right after restart: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    server.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_alpn01_issuance_is_answered_by_the_https_listener() {
    let env = TestEnv::new();
    let dir = env.path("acme");
    std::fs::create_dir_all(&dir).unwrap();
    let test_ca = env.write("test-root.pem", &pki().root_pem);
    let srv = env.start("[[site]]\nname = \"local\"\nhosts = [\"localhost\"]\n[[site.route]]\npath = \"/\"\nrespond = { body = \"hi\" }\n");
    // pebble validates TLS-ALPN-01 on our HTTPS port; HTTP-01 would go to a closed port.
    let pebble = start_pebble(&dir, free_port(), srv.https.port());
    let state = srv.server.as_ref().unwrap().state();
    let challenges = Challenges {
        http01: state.front.acme.clone(),
        tls_alpn: state.tls_alpn.clone(),
        dns: None,
        shared: None,
    };
    let storage = FileStorage::new(dir.join("store"));
    let client = AcmeClient::open(&storage, &pebble.directory, Some(&test_ca), &[])
        .await
        .expect("account");
    let issued = client
        .issue(
            &["localhost".to_string()],
            &challenges,
            ChallengeKind::TlsAlpn01,
            AcmeKeyType::EcdsaP256,
        )
        .await
        .unwrap_or_else(|e| panic!("tls-alpn-01 issuance failed: {e}"));
    assert!(issued.chain_pem.contains("BEGIN CERTIFICATE"));
    assert!(
        challenges.tls_alpn.get("localhost").is_none(),
        "challenge taken down afterwards"
    );
    // An acme-tls/1 handshake with no pending challenge is refused.
    let out = Command::new("openssl")
        .args([
            "s_client",
            "-connect",
            &srv.https.to_string(),
            "-servername",
            "localhost",
            "-alpn",
            "acme-tls/1",
        ])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains("BEGIN CERTIFICATE"),
        "no certificate must be presented"
    );
}

/// Two processes sharing one storage never order the same certificate at once: while another
/// holder has the order lock, the server waits and then serves the certificate that the other
/// holder stored, without ordering its own.
#[test]
fn a_server_waits_for_the_order_lock_and_serves_what_the_holder_stored() {
    let PebbleEnv {
        env,
        dir: _,
        test_ca,
        http_port,
        pebble,
    } = PebbleEnv::start();
    let config = pebbled_config(1, http_port, &pebble.directory, &test_ca, "");
    let path = env.write_config_raw(&config);
    let names = vec!["localhost".to_string()];
    // "The other process": holds the order lock on the same data directory.
    let storage = FileStorage::new(env.path("data"));
    let lock = storage
        .try_lock(&portcullis::acme::manager::order_lock(&names))
        .unwrap()
        .expect("lock");

    let (cfg, _) = env.load(&path).unwrap();
    let server = portcullis::server::Server::start(cfg).expect("start");
    let port = server.https_addrs()[0].port();
    let state = server.state().clone();
    let challenges = Challenges {
        http01: state.front.acme.clone(),
        tls_alpn: state.tls_alpn.clone(),
        dns: None,
        shared: None,
    };
    // The other process orders (answering through this server's listener, the one pebble
    // validates against) and stores the result, then releases the lock.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let issued = rt.block_on(async {
        let client = AcmeClient::open(&storage, &pebble.directory, Some(&test_ca), &[])
            .await
            .expect("account");
        client
            .issue(
                &names,
                &challenges,
                ChallengeKind::Http01,
                AcmeKeyType::EcdsaP256,
            )
            .await
            .expect("issue")
    });
    let cert_dir = portcullis::acme::manager::cert_dir(&names);
    storage
        .store(
            &format!("{cert_dir}/key.pem"),
            issued.key_pem.as_bytes(),
            true,
        )
        .unwrap();
    storage
        .store(
            &format!("{cert_dir}/chain.pem"),
            issued.chain_pem.as_bytes(),
            false,
        )
        .unwrap();
    drop(lock);

    // The server serves exactly that certificate (no order of its own).
    let leaf_of = |pem: &str| {
        let end = pem.find("-----END CERTIFICATE-----").unwrap() + 25;
        pem[..end].to_string()
    };
    let want = leaf_of(&issued.chain_pem);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let out = Command::new("openssl")
            .args([
                "s_client",
                "-connect",
                &format!("127.0.0.1:{port}"),
                "-servername",
                "localhost",
            ])
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        if let Some(start) = text.find("-----BEGIN CERTIFICATE-----") {
            assert_eq!(
                leaf_of(&text[start..]),
                want,
                "served certificate must be the one the lock holder stored"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no certificate served after the lock was released"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    server.shutdown();
}

/// A certificate that is renewed while clients keep connecting: the new one is swapped in with
/// no failed request, and served from then on.
#[test]
fn a_short_lived_certificate_is_renewed_and_hot_swapped_without_failed_requests() {
    let env = TestEnv::new();
    let dir = env.path("acme");
    std::fs::create_dir_all(&dir).unwrap();
    let test_ca = env.write("test-root.pem", &pki().root_pem);
    let http_port = free_port();
    // 24 s certificates: renewal is due 8 s before expiry (a third of the lifetime).
    let pebble = start_pebble_with(&dir, http_port, free_port(), 24);
    let config = pebbled_config(2, http_port, &pebble.directory, &test_ca, "");
    let path = env.write_config_raw(&config);
    let root = pebble_root(&dir, &pebble, &test_ca);
    let (cfg, _) = env.load(&path).unwrap();
    let server = portcullis::server::Server::start(cfg).expect("start");
    let port = server.https_addrs()[0].port();
    // Each probe: a full request with a verifying client, and the leaf it was served.
    let probe = || -> (bool, Option<String>) {
        let out = Command::new("curl")
            .args([
                "-sS",
                "--max-time",
                "3",
                "-w",
                "%{http_code}",
                "-o",
                "/dev/null",
                "--cacert",
            ])
            .arg(&root)
            .args([
                "--resolve",
                &format!("localhost:{port}:127.0.0.1"),
                &format!("https://localhost:{port}/"),
            ])
            .output()
            .unwrap();
        let ok = out.status.success() && String::from_utf8_lossy(&out.stdout) == "200";
        let s = Command::new("openssl")
            .args([
                "s_client",
                "-connect",
                &format!("127.0.0.1:{port}"),
                "-servername",
                "localhost",
            ])
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&s.stdout).to_string();
        let leaf = text.find("-----BEGIN CERTIFICATE-----").map(|i| {
            let end = text[i..].find("-----END CERTIFICATE-----").unwrap() + i;
            text[i..end].to_string()
        });
        (ok, leaf)
    };
    // First certificate.
    let deadline = Instant::now() + Duration::from_secs(20);
    let first = loop {
        if let (true, Some(leaf)) = probe() {
            break leaf;
        }
        assert!(Instant::now() < deadline, "no certificate after 20 s");
        std::thread::sleep(Duration::from_millis(200));
    };
    // Keep requesting until the served certificate changes; every request must succeed.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut requests = 0;
    loop {
        let (ok, leaf) = probe();
        requests += 1;
        assert!(ok, "request {requests} failed during renewal");
        if leaf.as_ref().is_some_and(|l| *l != first) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "certificate not renewed within 30 s ({requests} requests)"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // The replaced certificate is kept as a backup.
    let previous = env
        .path("data")
        .join(portcullis::acme::manager::cert_dir(&[
            "localhost".to_string()
        ]))
        .join("previous/chain.pem");
    assert!(
        previous.exists(),
        "previous certificate kept at {}",
        previous.display()
    );
    server.shutdown();
}

/// Changing `acme.key_type` takes effect at once: the stored ECDSA certificate is replaced by an
/// RSA one after the restart (caddy#6732 is this bug in Caddy).
#[test]
fn a_changed_key_type_replaces_the_stored_certificate() {
    let PebbleEnv {
        env,
        dir: _,
        test_ca,
        http_port,
        pebble,
    } = PebbleEnv::start();
    let config = |key_type: &str| {
        pebbled_config(
            1,
            http_port,
            &pebble.directory,
            &test_ca,
            &format!("key_type = \"{key_type}\"\n"),
        )
    };
    let served_key = |port: u16| -> String {
        let out = Command::new("openssl")
            .args([
                "s_client",
                "-connect",
                &format!("127.0.0.1:{port}"),
                "-servername",
                "localhost",
            ])
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        text.lines()
            .find(|l| l.starts_with("Server public key is"))
            .unwrap_or("")
            .to_string()
    };
    let wait_for = |port: u16, want: &str| {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let got = served_key(port);
            if got.contains(want) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "expected {want:?}, still {got:?}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    };
    let path = env.write_config_raw(&config("ecdsa-p256"));
    let (cfg, _) = env.load(&path).unwrap();
    let server = portcullis::server::Server::start(cfg).expect("start");
    wait_for(server.https_addrs()[0].port(), "256 bit");
    server.shutdown();

    let path = env.write_config_raw(&config("rsa2048"));
    let (cfg, _) = env.load(&path).unwrap();
    let server = portcullis::server::Server::start(cfg).expect("restart");
    wait_for(server.https_addrs()[0].port(), "2048 bit");
    server.shutdown();
}

/// `portcullis certs` shows each ACME certificate with its issuer, expiry and renewal time, and
/// the CA's reason when ordering failed.
#[test]
fn certs_command_shows_the_certificate_and_the_last_failure() {
    let env = TestEnv::new();
    let dir = env.path("acme");
    std::fs::create_dir_all(&dir).unwrap();
    let test_ca = env.write("test-root.pem", &pki().root_pem);
    let good_http = free_port();
    let pebble = start_pebble(&dir, good_http, free_port());
    // Site "good" is validated through our port-80 listener; site "bad" asks for a name
    // pebble cannot reach on any port we serve (its HTTP-01 and TLS-ALPN-01 both fail).
    let config = format!(
        "workers = 1\ndata_dir = \"data\"\n[listen]\nhttps = [\"127.0.0.1:0\"]\nhttp = [\"127.0.0.1:{good_http}\"]\n\
         [acme]\nca = \"{}\"\nca_root = \"{}\"\n\
         [[site]]\nname = \"good\"\nhosts = [\"localhost\"]\nissuer = \"acme\"\n[[site.route]]\npath = \"/\"\nrespond = {{ body = \"ok\" }}\n\
         [[site]]\nname = \"bad\"\nhosts = [\"unreachable.invalid\"]\nissuer = \"acme\"\n[[site.route]]\npath = \"/\"\nrespond = {{ body = \"no\" }}\n",
        pebble.directory,
        test_ca.display()
    );
    let path = env.write_config_raw(&config);
    let (cfg, _) = env.load(&path).unwrap();
    let server = portcullis::server::Server::start(cfg).expect("start");
    let certs = || {
        let out = Command::new(env!("CARGO_BIN_EXE_portcullis"))
            .args(["certs", "--config"])
            .arg(&path)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    let text = loop {
        let text = certs();
        let good = text.lines().any(|l| {
            l.starts_with("good: ACME") && l.contains("renews") && l.contains("localhost")
        });
        let bad = text.lines().any(|l| {
            l.starts_with("bad:") && l.contains("failed") && l.contains("unreachable.invalid")
        });
        if good && bad {
            break text;
        }
        assert!(
            Instant::now() < deadline,
            "certs output never showed both sites:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(300));
    };
    assert!(text.contains("no certificate yet"), "{text}");
    server.shutdown();
}

/// `portcullis revoke` revokes the stored certificate at the CA and removes it, so that the next
/// start orders a new one.
#[test]
fn revoke_command_revokes_at_the_ca() {
    let PebbleEnv {
        env,
        dir: _,
        test_ca,
        http_port,
        pebble,
    } = PebbleEnv::start();
    let config = pebbled_config(1, http_port, &pebble.directory, &test_ca, "");
    let path = env.write_config_raw(&config);
    let names = vec!["localhost".to_string()];
    let chain = env
        .path("data")
        .join(portcullis::acme::manager::cert_dir(&names))
        .join("chain.pem");
    let (cfg, _) = env.load(&path).unwrap();
    let server = portcullis::server::Server::start(cfg).expect("start");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !chain.exists() {
        assert!(Instant::now() < deadline, "no certificate stored");
        std::thread::sleep(Duration::from_millis(100));
    }
    let port = server.https_addrs()[0].port();
    let served_serial = || {
        let s = Command::new("openssl")
            .args(["s_client", "-connect", &format!("127.0.0.1:{port}")])
            .args(["-servername", "localhost"])
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let pem = String::from_utf8_lossy(&s.stdout).to_string();
        let mut x = Command::new("openssl")
            .args(["x509", "-noout", "-serial"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        x.stdin.take().unwrap().write_all(pem.as_bytes()).unwrap();
        let out = x.wait_with_output().unwrap();
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .trim_start_matches("serial=")
            .to_lowercase()
    };
    let serial = Command::new("openssl")
        .args(["x509", "-noout", "-serial", "-in"])
        .arg(&chain)
        .output()
        .unwrap();
    let serial = String::from_utf8_lossy(&serial.stdout)
        .trim()
        .trim_start_matches("serial=")
        .to_lowercase();

    let out = Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(["revoke", "--config"])
        .arg(&path)
        .args(["--site", "pebbled", "--reason", "key-compromise"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "revoke: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("revoked"));
    assert!(
        !chain.exists(),
        "the revoked certificate is removed from storage"
    );
    let status = Command::new("curl")
        .args(["-sS", "--cacert"])
        .arg(&test_ca)
        .arg(format!(
            "https://localhost:{}/cert-status-by-serial/{serial}",
            pebble.mgmt
        ))
        .output()
        .unwrap();
    let status = String::from_utf8_lossy(&status.stdout);
    assert!(
        status.contains("Revoked"),
        "pebble status for {serial}: {status}"
    );
    // The running server drops the revoked certificate: a new one is served soon.
    assert_eq!(
        served_serial(),
        serial,
        "the revoked certificate was served before"
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let now_served = served_serial();
        if !now_served.is_empty() && now_served != serial {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "still serving the revoked certificate {serial} after 30 s"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    assert!(chain.exists(), "the new certificate is stored");
    server.shutdown();

    // Unknown reason and a site without ACME are refused with a clear line.
    let out = Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(["revoke", "--config"])
        .arg(&path)
        .args(["--site", "nope"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no site named \"nope\""));
}

/// When the primary CA does not answer, the certificate comes from the fallback CA.
#[test]
fn an_unreachable_primary_ca_falls_back_to_the_next_one() {
    let PebbleEnv {
        env,
        dir,
        test_ca,
        http_port,
        pebble,
    } = PebbleEnv::start();
    let dead = format!("https://localhost:{}/dir", free_port());
    let config = format!(
        "workers = 1\ndata_dir = \"data\"\n[listen]\nhttps = [\"127.0.0.1:0\"]\nhttp = [\"127.0.0.1:{http_port}\"]\n\
         [acme]\nca = \"{dead}\"\nfallback = [\"{}\"]\nca_root = \"{}\"\n\
         [[site]]\nname = \"pebbled\"\nhosts = [\"localhost\"]\nissuer = \"acme\"\n[[site.route]]\npath = \"/\"\nrespond = {{ body = \"ok\" }}\n",
        pebble.directory,
        test_ca.display()
    );
    let path = env.write_config_raw(&config);
    let root = pebble_root(&dir, &pebble, &test_ca);
    let (cfg, _) = env.load(&path).unwrap();
    let server = portcullis::server::Server::start(cfg).expect("start");
    let port = server.https_addrs()[0].port();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = curl_localhost(&root, port);
        if out.status.success() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no certificate from the fallback CA: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    server.shutdown();
}

/// A CA that requires External Account Binding: registration works with `eab_kid` and
/// `eab_hmac_key`, and is refused without them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn external_account_binding_is_sent_when_configured() {
    let env = TestEnv::new();
    let dir = env.path("acme");
    std::fs::create_dir_all(&dir).unwrap();
    let test_ca = env.write("test-root.pem", &pki().root_pem);
    let key = "zWNDZM6eQGHWpSRTPal5eIUYFTu7EajVIoguysqZ9wG44nMEtx3MUAsUDkMTQ12W";
    let pebble = start_pebble_extra(&dir, free_port(), free_port(), &format!(", \"externalAccountBindingRequired\": true, \"externalAccountMACKeys\": {{\"kid-1\": \"{key}\"}}"));
    // Through the config, as a user writes it.
    let cfg = env.write_config_raw(&format!("data_dir = \"data\"\n[acme]\nca = \"{}\"\nca_root = \"{}\"\neab_kid = \"kid-1\"\neab_hmac_key = \"{key}\"\n[[site]]\nname = \"x\"\nhosts = [\"localhost\"]\n[[site.route]]\npath = \"/\"\nrespond = {{ body = \"x\" }}\n", pebble.directory, test_ca.display()));
    let (config, _) = env.load(&cfg).unwrap();
    let storage = FileStorage::new(dir.join("store"));
    AcmeClient::open_with_eab(
        &storage,
        &pebble.directory,
        Some(&test_ca),
        &[],
        config.acme.eab.as_ref(),
    )
    .await
    .expect("EAB registration");
    let without = FileStorage::new(dir.join("store2"));
    let err = AcmeClient::open(&without, &pebble.directory, Some(&test_ca), &[])
        .await
        .expect_err("registration without EAB must fail");
    assert!(err.to_string().contains("registering an account"), "{err}");
}

/// A corrupt certificate in storage is reported and re-obtained (not retried forever, not
/// served), and the rest of the storage (the account) is kept (certmagic#366 is this bug).
#[test]
fn a_corrupt_stored_certificate_is_re_obtained() {
    let PebbleEnv {
        env,
        dir,
        test_ca,
        http_port,
        pebble,
    } = PebbleEnv::start();
    let config = pebbled_config(1, http_port, &pebble.directory, &test_ca, "");
    let path = env.write_config_raw(&config);
    let root = pebble_root(&dir, &pebble, &test_ca);
    let chain = env
        .path("data")
        .join(portcullis::acme::manager::cert_dir(&[
            "localhost".to_string()
        ]))
        .join("chain.pem");
    let serves = |port: u16| curl_localhost(&root, port).status.success();
    let wait_served = |port: u16| {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !serves(port) {
            assert!(Instant::now() < deadline, "no valid certificate served");
            std::thread::sleep(Duration::from_millis(200));
        }
    };
    let (cfg, _) = env.load(&path).unwrap();
    let server = portcullis::server::Server::start(cfg).expect("start");
    wait_served(server.https_addrs()[0].port());
    server.shutdown();
    let accounts_before = std::fs::read_dir(env.path("data/acme")).unwrap().count();

    std::fs::write(
        &chain,
        "-----BEGIN CERTIFICATE-----\ngarbage\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    let (cfg, _) = env.load(&path).unwrap();
    let server =
        portcullis::server::Server::start(cfg).expect("restart with a corrupt certificate");
    wait_served(server.https_addrs()[0].port());
    server.shutdown();
    let fresh = std::fs::read_to_string(&chain).unwrap();
    assert!(
        !fresh.contains("garbage"),
        "the corrupt file was replaced by a new certificate"
    );
    assert_eq!(
        std::fs::read_dir(env.path("data/acme")).unwrap().count(),
        accounts_before,
        "the account is kept"
    );
}

/// The CA lost its state (here: pebble restarted, which forgets every account): the next
/// renewal registers a new account instead of failing forever, and the new certificate is served.
#[test]
fn a_ca_that_forgot_the_account_gets_a_new_registration() {
    let env = TestEnv::new();
    let (dir_a, dir_b) = (env.path("acme-a"), env.path("acme-b"));
    std::fs::create_dir_all(&dir_a).unwrap();
    std::fs::create_dir_all(&dir_b).unwrap();
    let test_ca = env.write("test-root.pem", &pki().root_pem);
    let (port, mgmt, http_port, tls_port) = (free_port(), free_port(), free_port(), free_port());
    let short = ", \"externalAccountBindingRequired\": false, \"certificateValidityPeriod\": 24";
    let pebble = start_pebble_ports(&dir_a, port, mgmt, http_port, tls_port, short);
    let config = pebbled_config(1, http_port, &pebble.directory, &test_ca, "");
    let path = env.write_config_raw(&config);
    let (cfg, _) = env.load(&path).unwrap();
    let server = portcullis::server::Server::start(cfg).expect("start");
    let https = server.https_addrs()[0].port();
    let verifies = |root: &Path| curl_localhost(root, https).status.success();
    let root_a = pebble_root(&dir_a, &pebble, &test_ca);
    let deadline = Instant::now() + Duration::from_secs(20);
    while !verifies(&root_a) {
        assert!(Instant::now() < deadline, "no first certificate");
        std::thread::sleep(Duration::from_millis(200));
    }
    // The CA restarts with no memory of our account (and a new root).
    drop(pebble);
    let pebble = start_pebble_ports(&dir_b, port, mgmt, http_port, tls_port, short);
    let root_b = pebble_root(&dir_b, &pebble, &test_ca);
    let deadline = Instant::now() + Duration::from_secs(40);
    while !verifies(&root_b) {
        assert!(
            Instant::now() < deadline,
            "the renewal after the CA lost the account never succeeded"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    server.shutdown();
}

// =============================================================================================
// ARI (RFC 9773) and profiles, through the ACME test proxy (Debian's pebble 2.4 has neither)
// =============================================================================================

/// A config with one ACME site `pebbled` (localhost) at `directory`, validated on `http_port`;
/// `acme_extra` goes into `[acme]`.
fn acme_config(http_port: u16, directory: &str, ca_root: &Path, acme_extra: &str) -> String {
    format!(
        "workers = 1\ndata_dir = \"data\"\n[listen]\nhttps = [\"127.0.0.1:0\"]\nhttp = [\"127.0.0.1:{http_port}\"]\n\
         [acme]\nca = \"{directory}\"\nca_root = \"{}\"\n{acme_extra}\
         [[site]]\nname = \"pebbled\"\nhosts = [\"localhost\"]\nissuer = \"acme\"\n[[site.route]]\npath = \"/\"\nrespond = {{ body = \"ok\" }}\n",
        ca_root.display()
    )
}

/// `portcullis certs --config path`, stdout.
fn certs_output(path: &Path) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(["certs", "--config"])
        .arg(path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).to_string()
}

/// Polls `f` every 200 ms until it returns `Some`, failing with `what` after `secs`.
fn wait_until<T>(secs: u64, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "{what} (after {secs} s)");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The first certificate of a PEM file, DER.
fn first_cert_der(pem_path: &Path) -> Vec<u8> {
    use rustls_pki_types::pem::PemObject;
    rustls_pki_types::CertificateDer::from_pem_file(pem_path)
        .unwrap_or_else(|e| panic!("{}: {e}", pem_path.display()))
        .to_vec()
}

/// The ARI id of a certificate, computed here independently of portcullis: base64url(AKI
/// keyIdentifier) "." base64url(DER serial content).
fn ari_id(der: &[u8]) -> String {
    use base64::Engine;
    use x509_parser::prelude::{FromDer, ParsedExtension, X509Certificate};
    let (_, cert) = X509Certificate::from_der(der).unwrap();
    let aki = cert
        .iter_extensions()
        .find_map(|e| match e.parsed_extension() {
            ParsedExtension::AuthorityKeyIdentifier(a) => a.key_identifier.clone(),
            _ => None,
        })
        .expect("pebble's leaves carry an AKI");
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    format!(
        "{}.{}",
        b64.encode(aki.0),
        b64.encode(cert.tbs_certificate.raw_serial())
    )
}

const DAY: i64 = 86400;

/// The CA's ARI window for the first certificate is already over: it is renewed at once (not at
/// two thirds of its 5-year lifetime), the order names it in `replaces`, and the new certificate
/// (whose window is a month away) is scheduled by ARI, as `portcullis certs` shows.
#[test]
fn an_ari_window_in_the_past_renews_at_once_and_the_order_names_the_replaced_certificate() {
    let PebbleEnv {
        env,
        dir,
        test_ca,
        http_port,
        pebble,
    } = PebbleEnv::start();
    let first_id = std::sync::Mutex::new(None::<String>);
    let proxy = AcmeProxy::start(
        &pebble.directory,
        Some(Box::new(move |id: &str| {
            let mut first = first_id.lock().unwrap();
            if first.get_or_insert_with(|| id.to_string()) == id {
                AriReply::Window {
                    start: -2 * 3600,
                    end: -3600,
                }
            } else {
                AriReply::Window {
                    start: 30 * DAY,
                    end: 31 * DAY,
                }
            }
        })),
        &[],
    );
    let path = env.write_config_raw(&acme_config(http_port, &proxy.directory, &test_ca, ""));
    let root = pebble_root(&dir, &pebble, &test_ca);
    let (cfg, _) = env.load(&path).unwrap();
    let server = portcullis::server::Server::start(cfg).expect("start");
    let port = server.https_addrs()[0].port();

    let orders = wait_until(30, "no renewal order after the past ARI window", || {
        let o = proxy.new_orders();
        (o.len() >= 2).then_some(o)
    });
    let cert_dir = env.path("data").join(portcullis::acme::manager::cert_dir(&[
        "localhost".to_string()
    ]));
    wait_until(20, "the renewed certificate is not stored", || {
        cert_dir.join("previous/chain.pem").exists().then_some(())
    });
    let replaced = ari_id(&first_cert_der(&cert_dir.join("previous/chain.pem")));
    assert!(orders[0].get("replaces").is_none(), "{:?}", orders[0]);
    assert_eq!(
        orders[1]["replaces"].as_str(),
        Some(replaced.as_str()),
        "the renewal order must name the replaced certificate: {:?}",
        orders[1]
    );
    assert_eq!(proxy.ari_requests()[0], replaced);
    assert!(curl_localhost(&root, port).status.success());

    // The new certificate is asked about too and scheduled inside its (future) window (the
    // status is rewritten once its ARI answer is in: wait for that, not for the old line).
    let current = ari_id(&first_cert_der(&cert_dir.join("chain.pem")));
    let day = |t: i64| {
        portcullis::tls::certs::fmt_time(portcullis::tls::certs::unix_now() + t)[..10].to_string()
    };
    let (in_30, in_31) = (day(30 * DAY), day(31 * DAY));
    let text = wait_until(
        20,
        "certs never showed a renewal inside the new ARI window",
        || {
            let t = certs_output(&path);
            let renews = t
                .lines()
                .find(|l| l.contains("renews"))?
                .split("renews ")
                .nth(1)?
                .get(..10)?
                .to_string();
            (proxy.ari_requests().contains(&current)
                && t.contains("(ARI window")
                && (renews == in_30 || renews == in_31))
                .then_some(t)
        },
    );
    assert!(text.contains("(ARI window"), "{text}");
    assert_eq!(proxy.new_orders().len(), 2, "no further renewal");
    server.shutdown();
}

/// Every way ARI can fail leaves the lifetime rule in charge, with one log line naming the
/// reason (the CA's detail for an HTTP error), and `portcullis certs` showing it; nothing is
/// renewed early.
#[test]
fn ari_failures_fall_back_to_the_lifetime_rule_and_say_why() {
    let PebbleEnv {
        env,
        dir: _,
        test_ca,
        http_port,
        pebble,
    } = PebbleEnv::start();
    let cases: Vec<(&str, Option<AriReply>, &str)> = vec![
        (
            "http-error",
            Some(AriReply::Error {
                status: 500,
                detail: "renewal info is on fire".into(),
            }),
            "HTTP 500: renewal info is on fire",
        ),
        (
            "malformed",
            Some(AriReply::Malformed),
            "malformed renewalInfo",
        ),
        (
            // pebble's certificates live 5 years; this window ends after that.
            "past-expiry",
            Some(AriReply::Window {
                start: DAY,
                end: 6 * 366 * DAY,
            }),
            "after the certificate expires",
        ),
        ("unsupported", None, "the CA offers no ARI"),
    ];
    for (name, reply, reason) in cases {
        let proxy = AcmeProxy::start(
            &pebble.directory,
            reply.map(|r| Box::new(move |_: &str| r.clone()) as AriResponder),
            &[],
        );
        let sub = env.path(name);
        std::fs::create_dir_all(&sub).unwrap();
        let path = sub.join("portcullis.toml");
        std::fs::write(
            &path,
            acme_config(http_port, &proxy.directory, &test_ca, ""),
        )
        .unwrap();
        let mut p = ServeProcess::spawn(&["serve", "--config", path.to_str().unwrap()], &[]);
        let line = p.wait_for_line(reason, Duration::from_secs(30));
        assert!(
            line.contains("lifetime rule") && line.contains("pebbled"),
            "{name}: {line}"
        );
        // The plan is recorded just after the log line.
        let renews = wait_until(
            10,
            &format!("{name}: certs never showed {reason:?}"),
            || {
                let text = certs_output(&path);
                let renews = text.lines().find(|l| l.contains("renews"))?.to_string();
                renews.contains(reason).then_some(renews)
            },
        );
        assert!(renews.contains("(lifetime rule"), "{name}: {renews}");
        assert_eq!(proxy.new_orders().len(), 1, "{name}: renewed early");
        if name != "unsupported" {
            assert_eq!(proxy.ari_requests().len(), 1, "{name}");
        }
        drop(p);
    }
}

/// `acme.profile` is sent in the order when the CA offers it, and a site's own `profile`
/// overrides it.
#[test]
fn the_configured_profile_is_sent_in_the_order() {
    let PebbleEnv {
        env,
        dir,
        test_ca,
        http_port,
        pebble,
    } = PebbleEnv::start();
    let root = pebble_root(&dir, &pebble, &test_ca);
    let proxy = AcmeProxy::start(
        &pebble.directory,
        None,
        &[("classic", "90 days"), ("shortlived", "6 days")],
    );
    let base = acme_config(
        http_port,
        &proxy.directory,
        &test_ca,
        "profile = \"shortlived\"\n",
    );
    let overridden = base
        .replace("data_dir = \"data\"", "data_dir = \"data2\"")
        .replace(
            "issuer = \"acme\"\n",
            "issuer = \"acme\"\nprofile = \"classic\"\n",
        );
    for (n, (config, want)) in [(base, "shortlived"), (overridden, "classic")]
        .into_iter()
        .enumerate()
    {
        let path = env.write_config_raw(&config);
        let (cfg, _) = env.load(&path).unwrap();
        assert_eq!(cfg.acme.profile.as_deref(), Some("shortlived"));
        let server = portcullis::server::Server::start(cfg).expect("start");
        let port = server.https_addrs()[0].port();
        wait_until(30, "no certificate", || {
            curl_localhost(&root, port).status.success().then_some(())
        });
        let orders = proxy.new_orders();
        assert_eq!(orders.len(), n + 1, "{orders:?}");
        assert_eq!(orders[n]["profile"].as_str(), Some(want), "{:?}", orders[n]);
        server.shutdown();
    }
}

/// A profile the CA does not offer fails the order with an error naming it and the offered
/// ones, in `portcullis certs`; nothing is ordered.
#[test]
fn an_unknown_profile_is_refused_naming_it_and_the_offered_ones() {
    let PebbleEnv {
        env,
        dir: _,
        test_ca,
        http_port,
        pebble,
    } = PebbleEnv::start();
    let proxy = AcmeProxy::start(
        &pebble.directory,
        None,
        &[("classic", "90 days"), ("shortlived", "6 days")],
    );
    let path = env.write_config_raw(&acme_config(
        http_port,
        &proxy.directory,
        &test_ca,
        "profile = \"tiny\"\n",
    ));
    let (cfg, _) = env.load(&path).unwrap();
    let server = portcullis::server::Server::start(cfg).expect("start");
    let line = wait_until(30, "certs never showed the profile error", || {
        let text = certs_output(&path);
        text.lines()
            .find(|l| l.contains("failed"))
            .map(str::to_string)
    });
    assert!(
        line.contains("profile \"tiny\" is not offered")
            && line.contains("\"classic\", \"shortlived\"")
            && line.contains("acme.profile"),
        "{line}"
    );
    assert!(proxy.new_orders().is_empty(), "{:?}", proxy.new_orders());
    server.shutdown();
}

/// The CA goes away when renewal is due: the old certificate keeps being served, the failed
/// attempts show in the log and in `portcullis certs`, are retried with backoff (shortened for
/// the test by PORTCULLIS_ACME_RETRY_MIN), and the renewal succeeds once the CA is back.
#[test]
fn a_ca_down_at_renewal_keeps_the_old_certificate_retries_visibly_and_recovers() {
    let env = TestEnv::new();
    let (dir_a, dir_b) = (env.path("acme-a"), env.path("acme-b"));
    std::fs::create_dir_all(&dir_a).unwrap();
    std::fs::create_dir_all(&dir_b).unwrap();
    let test_ca = env.write("test-root.pem", &pki().root_pem);
    let (port, mgmt, http_port, tls_port) = (free_port(), free_port(), free_port(), free_port());
    // 30-second certificates: renewal due about 20 s after issuance.
    let short = ", \"externalAccountBindingRequired\": false, \"certificateValidityPeriod\": 30";
    let pebble = start_pebble_ports(&dir_a, port, mgmt, http_port, tls_port, short);
    let path = env.write_config_raw(&acme_config(http_port, &pebble.directory, &test_ca, ""));
    let root_a = pebble_root(&dir_a, &pebble, &test_ca);
    let mut p = ServeProcess::spawn(
        &["serve", "--config", path.to_str().unwrap()],
        &[("PORTCULLIS_ACME_RETRY_MIN", Path::new("1s"))],
    );
    let https =
        parse_listen_line(&p.wait_for_line("listening on https://", Duration::from_secs(10)))
            .port();
    p.wait_for_line("certificate installed", Duration::from_secs(20));
    let chain = env
        .path("data")
        .join(portcullis::acme::manager::cert_dir(&[
            "localhost".to_string()
        ]))
        .join("chain.pem");
    let first = first_cert_der(&chain);
    assert!(curl_localhost(&root_a, https).status.success());

    // The CA goes down before renewal is due.
    drop(pebble);
    let failed = p.wait_for_line("ACME: order failed", Duration::from_secs(30));
    assert!(failed.contains("pebbled"), "{failed}");
    // Retried: a second failure a backoff later.
    p.wait_for_line("ACME: order failed", Duration::from_secs(10));
    // The status is recorded just after the log line.
    let last = wait_until(10, "no failure in certs", || {
        let text = certs_output(&path);
        let line = text.lines().find(|l| l.contains("last attempt"))?;
        line.contains("next try").then(|| line.to_string())
    });
    assert!(
        last.contains("failed")
            && last.contains(&format!("localhost:{port}"))
            && last.contains("Connection refused")
            && last.contains("next try"),
        "{last}"
    );
    // Meanwhile the old certificate is still served, and still valid.
    let out = curl_localhost(&root_a, https);
    assert!(
        out.status.success(),
        "old certificate not served during the outage: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(first_cert_der(&chain), first, "nothing replaced it");

    // The CA comes back (with no memory of our account, and a new root): renewal succeeds.
    let pebble = start_pebble_ports(&dir_b, port, mgmt, http_port, tls_port, short);
    let root_b = pebble_root(&dir_b, &pebble, &test_ca);
    wait_until(30, "no renewal after the CA came back", || {
        curl_localhost(&root_b, https)
            .status
            .success()
            .then_some(())
    });
    assert_ne!(first_cert_der(&chain), first);
    // Served first, recorded a moment later.
    let text = wait_until(10, "the failure is still shown in certs", || {
        let text = certs_output(&path);
        (!text.contains("last attempt")).then_some(text)
    });
    assert!(text.contains("renews"), "{text}");
    drop(p);
}

/// The served leaf's SPKI pin, computed by openssl alone.
fn served_pin(port: u16) -> Option<String> {
    let out = Command::new("bash")
        .args(["-o", "pipefail", "-c"])
        .arg(format!(
            "openssl s_client -connect 127.0.0.1:{port} -servername localhost </dev/null 2>/dev/null \
             | openssl x509 -pubkey -noout | openssl pkey -pubin -outform der \
             | openssl dgst -sha256 -binary | base64"
        ))
        .output()
        .unwrap();
    let b64 = String::from_utf8_lossy(&out.stdout).trim().to_string();
    (out.status.success() && b64.len() == 44).then(|| format!("pin-sha256=\"{b64}\""))
}

/// `portcullis pins`: the (current, next) pins printed for the only site.
fn printed_pins(config: &Path) -> (String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(["pins", "--config"])
        .arg(config)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let pin = |label: &str| {
        text.lines()
            .find_map(|l| l.trim().strip_prefix(label))
            .and_then(|rest| rest.split_whitespace().next())
            .unwrap_or_else(|| panic!("no {label:?} pin in:\n{text}"))
            .to_string()
    };
    (pin("current "), pin("next "))
}

/// `portcullis pins` prints the served key's pin and the pin of the pre-generated next key;
/// the renewal then puts exactly that next key into service.
#[test]
fn pins_announce_the_key_the_next_renewal_uses() {
    let env = TestEnv::new();
    let dir = env.path("acme");
    std::fs::create_dir_all(&dir).unwrap();
    let test_ca = env.write("test-root.pem", &pki().root_pem);
    let http_port = free_port();
    // 24 s certificates: renewed about 8 s before expiry.
    let pebble = start_pebble_with(&dir, http_port, free_port(), 24);
    let config = pebbled_config(2, http_port, &pebble.directory, &test_ca, "");
    let path = env.write_config_raw(&config);
    let (cfg, _) = env.load(&path).unwrap();
    let server = portcullis::server::Server::start(cfg).expect("start");
    let port = server.https_addrs()[0].port();
    let deadline = Instant::now() + Duration::from_secs(20);
    let first = loop {
        if let Some(p) = served_pin(port) {
            break p;
        }
        assert!(Instant::now() < deadline, "no certificate after 20 s");
        std::thread::sleep(Duration::from_millis(200));
    };
    let (current, next) = printed_pins(&path);
    assert_eq!(current, first, "the current pin is the served key's");
    assert_ne!(next, current);
    let deadline = Instant::now() + Duration::from_secs(40);
    let renewed = loop {
        if let Some(p) = served_pin(port).filter(|p| *p != first) {
            break p;
        }
        assert!(Instant::now() < deadline, "not renewed within 40 s");
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(renewed, next, "the renewal used the announced next key");
    let (current2, next2) = printed_pins(&path);
    assert_eq!(current2, next);
    assert!(
        next2 != next && next2 != current,
        "a fresh next key after the renewal"
    );
    server.shutdown();
}

/// The next key exists before the first order (`pins` makes it when first asked) and that first
/// order uses it; a key-type change discards it, `pins` announces a key of the new type, and the
/// certificate that replaces the old one (at once, caddy#6732) uses exactly that key.
#[test]
fn the_announced_next_key_is_used_by_the_first_order_and_follows_a_key_type_change() {
    let PebbleEnv {
        env,
        dir: _,
        test_ca,
        http_port,
        pebble,
    } = PebbleEnv::start();
    let config = |key_type: &str| {
        pebbled_config(
            1,
            http_port,
            &pebble.directory,
            &test_ca,
            &format!("key_type = \"{key_type}\"\n"),
        )
    };
    let serve_until_pin = |path: &Path, want: &str| {
        let (cfg, _) = env.load(path).unwrap();
        let server = portcullis::server::Server::start(cfg).expect("start");
        let port = server.https_addrs()[0].port();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let got = served_pin(port);
            if got.as_deref() == Some(want) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "served {got:?}, expected the announced {want}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        server.shutdown();
    };
    let path = env.write_config_raw(&config("ecdsa-p256"));
    let (current, ecdsa_next) = printed_pins(&path);
    assert!(
        !current.starts_with("pin-sha256="),
        "no certificate yet: {current}"
    );
    serve_until_pin(&path, &ecdsa_next);

    let path = env.write_config_raw(&config("rsa2048"));
    let (current, rsa_next) = printed_pins(&path);
    assert_eq!(current, ecdsa_next);
    assert_ne!(rsa_next, ecdsa_next);
    let data = env.path("data").join(portcullis::acme::manager::cert_dir(&[
        "localhost".to_string()
    ]));
    assert!(
        !data.join("next-key-ecdsa-p256.pem").exists(),
        "the ECDSA next key is discarded after the key-type change"
    );
    serve_until_pin(&path, &rsa_next);
}
