//! OCSP stapling against a local responder (`common::ocsp`: `openssl ocsp` signs every
//! response, as the issuer or as a delegated responder). `openssl s_client -status` is the
//! client that checks what the server staples.

mod common;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::ocsp::*;
use common::*;

/// A test directory with the intermediate (`ca.pem` + key, the issuer that signs responses
/// directly), a delegated responder (`responder.pem` + key), the root, a responder, and a leaf
/// naming that responder (`certs/ocsp.pem` + key).
struct Setup {
    env: TestEnv,
    leaf: Leaf,
    responder: Responder,
}

/// Responses signed by the responder certificate (`delegated`) or the issuer itself, valid for
/// `minutes`; a Must-Staple leaf with `must_staple`.
fn setup(delegated: bool, minutes: u32, must_staple: bool) -> Setup {
    require_tool("openssl");
    let env = TestEnv::new();
    let p = pki();
    env.write("ca.pem", &p.inter_pem);
    env.write("ca.key", p.inter_key_pem());
    let signer = p.ocsp_responder();
    env.write("responder.pem", &signer.cert_pem);
    env.write("responder.key", &signer.key_pem);
    let (c, k) = if delegated {
        ("responder.pem", "responder.key")
    } else {
        ("ca.pem", "ca.key")
    };
    let responder = Responder::start(
        env.dir.path(),
        &env.path("ca.pem"),
        (&env.path(c), &env.path(k)),
        minutes,
    );
    let leaf = p.leaf_with_ocsp(&[ALPHA], &responder.url, must_staple);
    env.write_chain("ocsp", &leaf);
    Setup {
        env,
        leaf,
        responder,
    }
}

impl Setup {
    fn config(&self, extra_site: &str) -> PathBuf {
        self.env.write_config(&format!(
            "[[site]]\nname = \"alpha\"\nhosts = [\"{ALPHA}\"]\ncert = \"certs/ocsp.pem\"\nkey = \"certs/ocsp.key\"\n{extra_site}\
             [[site.route]]\npath = \"/\"\nrespond = {{ body = \"ok\" }}\n"
        ))
    }

    fn serve(&self, extra_site: &str) -> (ServeProcess, SocketAddr) {
        let cfg = self.config(extra_site);
        let mut p = ServeProcess::spawn(&["serve", "--config", cfg.to_str().unwrap()], &[]);
        let line = p.wait_for_line("listening on https://", Duration::from_secs(10));
        (p, parse_listen_line(&line))
    }

    /// `openssl s_client -status` output (stdout) for one handshake.
    fn s_client(&self, addr: SocketAddr) -> String {
        let out = run_with_timeout(
            Command::new("openssl")
                .args(["s_client", "-status", "-servername", ALPHA, "-connect"])
                .arg(addr.to_string())
                .arg("-CAfile")
                .arg(self.env.path("certs/root.pem"))
                .stdin(Stdio::null()),
            IO_TIMEOUT,
        );
        text(&out.stdout)
    }
}

fn assert_good_staple(out: &str) {
    assert!(
        out.contains("OCSP Response Status: successful") && out.contains("Cert Status: good"),
        "no good staple:\n{out}"
    );
}

/// Also checks the staple the way a client that verifies it would: a rustls client takes the
/// staple from the handshake and `openssl ocsp` verifies its signature, status and validity
/// against the root.
fn assert_good_staple_verifies(s: &Setup, addr: SocketAddr) {
    assert_good_staple(&s.s_client(addr));
    let staple = Arc::new(Mutex::new(Vec::new()));
    let opts = ClientOpts {
        staple: Some(staple.clone()),
        ..Default::default()
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async { tls_connect(addr, Some(ALPHA), opts.build()).await.unwrap() });
    let der = staple.lock().unwrap().clone();
    assert!(!der.is_empty(), "rustls saw no staple");
    let path = s.env.write("seen-staple.der", der);
    let out = Command::new("openssl")
        .args(["ocsp", "-respin"])
        .arg(&path)
        .arg("-issuer")
        .arg(s.env.path("ca.pem"))
        .arg("-cert")
        .arg(s.env.path("certs/ocsp.pem"))
        .arg("-CAfile")
        .arg(s.env.path("certs/root.pem"))
        .output()
        .unwrap();
    let all = text(&out.stdout) + &text(&out.stderr);
    assert!(
        out.status.success() && all.contains("Response verify OK") && all.contains(": good"),
        "openssl does not verify the staple:\n{all}"
    );
}

/// Waits for a log line containing `needle`, including lines already collected.
fn wait_log(p: &mut ServeProcess, needle: &str, secs: u64) -> String {
    if let Some(l) = p.stderr.iter().find(|l| l.contains(needle)) {
        return l.clone();
    }
    p.wait_for_line(needle, Duration::from_secs(secs))
}

fn assert_no_staple(out: &str) {
    assert!(
        out.contains("OCSP response: no response sent"),
        "a staple was sent:\n{out}"
    );
}

#[test]
fn a_good_response_from_a_delegated_responder_is_stapled_and_verifies() {
    let s = setup(true, 60, false);
    let (mut p, addr) = s.serve("");
    wait_log(&mut p, "OCSP: stapling a good response", 15);
    assert_good_staple_verifies(&s, addr);
    assert_eq!(s.responder.asked(), vec![cert_serial(&s.leaf.der)]);
}

#[test]
fn a_revoked_certificate_is_not_stapled_and_is_logged_as_an_error() {
    let s = setup(false, 60, false);
    s.responder.revoke(&cert_serial(&s.leaf.der));
    let (mut p, addr) = s.serve("");
    let line = p.wait_for_line("REVOKED", Duration::from_secs(15));
    assert!(line.contains("ERROR") && line.contains("alpha"), "{line}");
    assert_no_staple(&s.s_client(addr));
}

#[test]
fn unknown_garbage_or_forged_responses_are_never_stapled() {
    // Status unknown.
    let s = setup(false, 60, false);
    s.responder.set_mode(Mode::Unknown);
    let (mut p, addr) = s.serve("");
    p.wait_for_line("does not know this certificate", Duration::from_secs(15));
    assert_no_staple(&s.s_client(addr));
    drop(p);

    // Not an OCSP response at all.
    let s = setup(false, 60, false);
    s.responder.set_mode(Mode::Garbage);
    let (mut p, addr) = s.serve("");
    let line = p.wait_for_line("cannot refresh the staple", Duration::from_secs(15));
    assert!(line.contains("not an OCSP response"), "{line}");
    assert_no_staple(&s.s_client(addr));
    drop(p);

    // Signed by a key the issuer never delegated OCSP to: a responder certificate from another
    // CA, here a fresh self-signed one.
    let s = setup(false, 60, false);
    let rogue = rcgen::generate_simple_self_signed(vec!["rogue".to_string()]).unwrap();
    s.env.write("ca.key", rogue.signing_key.serialize_pem());
    s.env.write("ca-rogue.pem", rogue.cert.pem());
    let r2 = Responder::start(
        s.env.dir.path(),
        &s.env.path("ca.pem"),
        (&s.env.path("ca-rogue.pem"), &s.env.path("ca.key")),
        60,
    );
    let leaf = pki().leaf_with_ocsp(&[ALPHA], &r2.url, false);
    s.env.write_chain("ocsp", &leaf);
    let (mut p, addr) = s.serve("");
    let line = p.wait_for_line("cannot refresh the staple", Duration::from_secs(15));
    assert!(line.contains("bad signature"), "{line}");
    assert_no_staple(&s.s_client(addr));
    assert_eq!(r2.hits.load(Ordering::SeqCst), 1);
}

#[test]
fn an_unreachable_responder_leaves_the_last_good_staple_in_place() {
    // One-minute responses: refreshed after 30 s.
    let s = setup(true, 1, false);
    let (mut p, addr) = s.serve("");
    p.wait_for_line("OCSP: stapling a good response", Duration::from_secs(15));
    assert_good_staple(&s.s_client(addr));
    s.responder.set_mode(Mode::Down);
    let line = p.wait_for_line("cannot refresh the staple", Duration::from_secs(45));
    assert!(
        line.contains("keeping the last good response") && line.contains("HTTP 500"),
        "{line}"
    );
    assert_good_staple(&s.s_client(addr));
    assert!(s.responder.hits.load(Ordering::SeqCst) >= 2);
}

#[test]
fn a_cached_response_is_stapled_at_once_after_a_restart_without_the_responder() {
    let s = setup(false, 60, false);
    let (mut p, _) = s.serve("");
    p.wait_for_line("OCSP: stapling a good response", Duration::from_secs(15));
    drop(p);
    s.responder.set_mode(Mode::Down);
    let hits = s.responder.hits.load(Ordering::SeqCst);
    let (_p, addr) = s.serve("");
    // The very first handshake carries it, and the responder was not needed.
    assert_good_staple(&s.s_client(addr));
    assert_eq!(s.responder.hits.load(Ordering::SeqCst), hits);
}

/// Asks the responder fixture once for a response to the leaf (`certs/ocsp.pem`) and stores it
/// in `path`.
fn response_file(s: &Setup, path: &str) -> PathBuf {
    response_file_for(s, "certs/ocsp.pem", path)
}

/// [`response_file`] for the leaf in `cert` (relative to the test directory).
fn response_file_for(s: &Setup, cert: &str, path: &str) -> PathBuf {
    let req = s.env.write("req.der", {
        let out = Command::new("openssl")
            .args(["ocsp", "-no_nonce", "-reqout", "/dev/stdout", "-issuer"])
            .arg(s.env.path("ca.pem"))
            .arg("-cert")
            .arg(s.env.path(cert))
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", text(&out.stderr));
        out.stdout
    });
    let out = Command::new("curl")
        .args(["-sS", "--fail", "--data-binary"])
        .arg(format!("@{}", req.display()))
        .args(["-H", "Content-Type: application/ocsp-request", "-o"])
        .arg(s.env.path(path))
        .arg(&s.responder.url)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    s.env.path(path)
}

#[test]
fn a_staple_file_replaces_fetching() {
    let s = setup(false, 60, false);
    response_file(&s, "staple.der");
    s.responder.set_mode(Mode::Down);
    let hits = s.responder.hits.load(Ordering::SeqCst);
    let (mut p, addr) = s.serve("ocsp_staple = \"staple.der\"\n");
    wait_log(&mut p, "stapling the response from the staple file", 10);
    assert_good_staple_verifies(&s, addr);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        s.responder.hits.load(Ordering::SeqCst),
        hits,
        "fetched despite the file"
    );
}

#[test]
fn check_rejects_a_staple_file_for_another_certificate() {
    let s = setup(false, 60, false);
    response_file(&s, "staple.der");
    // The site now serves another leaf: the file does not match it.
    let other = pki().leaf_with_ocsp(&[ALPHA], &s.responder.url, false);
    s.env.write_chain("ocsp", &other);
    let cfg = s.config("ocsp_staple = \"staple.der\"\n");
    let (ok, err) = check_config(&cfg);
    assert!(!ok, "{err}");
    assert!(
        err.contains("portcullis.toml:")
            && err.contains("ocsp_staple")
            && err.contains("staple.der")
            && err.contains("another certificate"),
        "{err}"
    );
    // And a staple file on an automatic site is refused.
    let cfg = s.env.write_config(
        "[[site]]\nname = \"auto\"\nhosts = [\"localhost\"]\nocsp_staple = \"staple.der\"\n",
    );
    let (ok, err) = check_config(&cfg);
    assert!(
        !ok && err.contains("ocsp_staple needs cert/key files"),
        "{err}"
    );
}

// ---------------------------------------------------------------------------------------------
// A site with an ECDSA and an RSA chain
// ---------------------------------------------------------------------------------------------

/// Writes an RSA leaf naming the responder, `certs/ocsp-rsa.{pem,key}`, beside the ECDSA one
/// of [`setup`], and returns it.
fn rsa_leaf(s: &Setup) -> Leaf {
    let rsa = pki().leaf_with_ocsp_of(Alg::Rsa, &[ALPHA], &s.responder.url, false);
    s.env.write_chain("ocsp-rsa", &rsa);
    rsa
}

/// The site keys of a dual-chain site: `extra` for the site (e.g. its `ocsp_staple`), and
/// `rsa_extra` inside the RSA pair's `certs` entry.
fn dual_site(extra: &str, rsa_extra: &str) -> String {
    format!(
        "{extra}certs = [{{ cert = \"certs/ocsp-rsa.pem\", key = \"certs/ocsp-rsa.key\"{rsa_extra} }}]\n"
    )
}

/// One handshake by `openssl s_client -status` offering only `sigalgs`: its stdout, which has
/// the served certificate's subject and the stapled response.
fn s_client_offering(s: &Setup, addr: SocketAddr, sigalgs: &str) -> String {
    let out = run_with_timeout(
        Command::new("openssl")
            .args([
                "s_client",
                "-status",
                "-servername",
                ALPHA,
                "-sigalgs",
                sigalgs,
            ])
            .arg("-connect")
            .arg(addr.to_string())
            .arg("-CAfile")
            .arg(s.env.path("certs/root.pem"))
            .stdin(Stdio::null()),
        IO_TIMEOUT,
    );
    text(&out.stdout)
}

const ECDSA_ONLY: &str = "ecdsa_secp256r1_sha256";
const RSA_ONLY: &str = "rsa_pss_rsae_sha256:rsa_pkcs1_sha256";

/// The client offering `sigalgs` is served `leaf` (its key type) with a good staple for that
/// very certificate (the response's serial is the leaf's).
fn assert_staple_of(s: &Setup, addr: SocketAddr, sigalgs: &str, leaf: &Leaf, kind: &str) {
    let out = s_client_offering(s, addr, sigalgs);
    assert!(
        out.contains(&format!("{ALPHA} ({kind})")),
        "not served the {kind} certificate:\n{out}"
    );
    assert_good_staple(&out);
    let serial = cert_serial(&leaf.der);
    let stapled: Vec<&str> = out
        .lines()
        .filter_map(|l| l.trim().strip_prefix("Serial Number: "))
        .collect();
    assert_eq!(
        stapled,
        vec![serial.as_str()],
        "the {kind} chain stapled another certificate's response:\n{out}"
    );
}

/// Waits until `n` log lines contain `needle`.
fn wait_log_count(p: &mut ServeProcess, needle: &str, n: usize, secs: u64) {
    let deadline = std::time::Instant::now() + Duration::from_secs(secs);
    while p.stderr.iter().filter(|l| l.contains(needle)).count() < n {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        assert!(
            !left.is_zero(),
            "fewer than {n} lines with {needle:?}:\n{}",
            p.stderr.join("\n")
        );
        p.wait_for_line(needle, left);
    }
}

/// Stops the server and asserts that it logged no ERROR line: the configuration was right.
fn assert_no_error_logged(mut p: ServeProcess) {
    p.signal("TERM");
    p.wait_exit(Duration::from_secs(10));
    p.drain(Duration::from_secs(5));
    let errors: Vec<&String> = p.stderr.iter().filter(|l| l.contains("ERROR")).collect();
    assert!(
        errors.is_empty(),
        "ERROR logged for a right configuration:\n{}",
        p.stderr.join("\n")
    );
}

/// Each chain staples its own file: the site's `ocsp_staple` is the ECDSA chain's response,
/// the RSA pair has its own; nothing is fetched, and no ERROR is logged.
#[test]
fn each_chain_of_a_dual_certificate_site_staples_its_own_file() {
    let s = setup(false, 60, false);
    let rsa = rsa_leaf(&s);
    response_file(&s, "ecdsa.der");
    response_file_for(&s, "certs/ocsp-rsa.pem", "rsa.der");
    s.responder.set_mode(Mode::Down);
    let hits = s.responder.hits.load(Ordering::SeqCst);
    let (mut p, addr) = s.serve(&dual_site(
        "ocsp_staple = \"ecdsa.der\"\n",
        ", ocsp_staple = \"rsa.der\"",
    ));
    wait_log_count(&mut p, "stapling the response from the staple file", 2, 10);
    assert_staple_of(&s, addr, ECDSA_ONLY, &s.leaf, "ECDSA");
    assert_staple_of(&s, addr, RSA_ONLY, &rsa, "RSA");
    assert_eq!(
        s.responder.hits.load(Ordering::SeqCst),
        hits,
        "fetched despite the files"
    );
    assert_no_error_logged(p);
}

/// The site's `ocsp_staple` applies to the chain whose certificate it is for (here the RSA
/// one, the second); the other chain gets its response fetched, and no ERROR is logged.
#[test]
fn a_site_staple_file_serves_its_own_chain_and_the_other_is_fetched() {
    let s = setup(false, 60, false);
    let rsa = rsa_leaf(&s);
    response_file_for(&s, "certs/ocsp-rsa.pem", "rsa.der");
    let asked_before = s.responder.asked().len();
    let (mut p, addr) = s.serve(&dual_site("ocsp_staple = \"rsa.der\"\n", ""));
    wait_log(&mut p, "stapling the response from the staple file", 10);
    wait_log(&mut p, "OCSP: stapling a good response", 15);
    assert_staple_of(&s, addr, ECDSA_ONLY, &s.leaf, "ECDSA");
    assert_staple_of(&s, addr, RSA_ONLY, &rsa, "RSA");
    assert_eq!(
        s.responder.asked()[asked_before..],
        [cert_serial(&s.leaf.der)],
        "only the ECDSA certificate is fetched for"
    );
    assert_no_error_logged(p);
}

/// Fetched responses are per certificate too: each chain staples the response for its own leaf.
#[test]
fn each_chain_of_a_dual_certificate_site_gets_its_own_fetched_response() {
    let s = setup(true, 60, false);
    let rsa = rsa_leaf(&s);
    let (mut p, addr) = s.serve(&dual_site("", ""));
    wait_log_count(&mut p, "OCSP: stapling a good response", 2, 15);
    assert_staple_of(&s, addr, ECDSA_ONLY, &s.leaf, "ECDSA");
    assert_staple_of(&s, addr, RSA_ONLY, &rsa, "RSA");
    let mut asked = s.responder.asked();
    asked.sort();
    let mut want = vec![cert_serial(&s.leaf.der), cert_serial(&rsa.der)];
    want.sort();
    assert_eq!(asked, want);
    assert_no_error_logged(p);
}

/// A staple file for none of a dual site's certificates, a pair's own file for another
/// certificate, or two files for one certificate is an error naming the file and what to do.
#[test]
fn check_rejects_staple_files_that_are_not_for_their_chains() {
    let s = setup(false, 60, false);
    rsa_leaf(&s);
    response_file(&s, "ecdsa.der");
    // A response for a third certificate, which the site does not serve.
    let other = pki().leaf_with_ocsp(&[ALPHA], &s.responder.url, false);
    s.env.write_chain("other", &other);
    response_file_for(&s, "certs/other.pem", "other.der");

    let cfg = s.config(&dual_site("ocsp_staple = \"other.der\"\n", ""));
    let (ok, err) = check_config(&cfg);
    assert!(!ok, "{err}");
    let line = err
        .lines()
        .find(|l| l.contains("other.der"))
        .unwrap_or_else(|| panic!("{err}"));
    assert!(
        line.contains("portcullis.toml:")
            && line.contains("ocsp_staple")
            && line.contains("none of the site's certificates")
            && line.contains("ocsp.pem")
            && line.contains("ocsp-rsa.pem")
            && line.contains("fix:"),
        "{line}"
    );

    // The ECDSA chain's response given to the RSA pair.
    let cfg = s.config(&dual_site("", ", ocsp_staple = \"ecdsa.der\""));
    let (ok, err) = check_config(&cfg);
    assert!(!ok, "{err}");
    let line = err
        .lines()
        .find(|l| l.contains("ecdsa.der"))
        .unwrap_or_else(|| panic!("{err}"));
    assert!(
        line.contains("portcullis.toml:")
            && line.contains("ocsp-rsa.pem")
            && line.contains("another certificate"),
        "{line}"
    );

    // The RSA chain's response twice: on the site and in the RSA pair.
    response_file_for(&s, "certs/ocsp-rsa.pem", "rsa.der");
    let cfg = s.config(&dual_site(
        "ocsp_staple = \"rsa.der\"\n",
        ", ocsp_staple = \"rsa.der\"",
    ));
    let (ok, err) = check_config(&cfg);
    assert!(
        !ok && err.contains("which has its own ocsp_staple") && err.contains("remove one"),
        "{err}"
    );

    // Right files pass.
    let cfg = s.config(&dual_site(
        "ocsp_staple = \"ecdsa.der\"\n",
        ", ocsp_staple = \"rsa.der\"",
    ));
    let (ok, out) = check_config(&cfg);
    assert!(ok, "{out}");
}

#[test]
fn a_must_staple_certificate_without_a_staple_is_reported_loudly() {
    let s = setup(false, 60, true);
    s.responder.set_mode(Mode::Down);
    let (mut p, addr) = s.serve("");
    let line = wait_log(&mut p, "Must-Staple", 15);
    assert!(
        line.contains("ERROR") && line.contains("browsers refuse it"),
        "{line}"
    );
    assert_no_staple(&s.s_client(addr));
}

#[test]
fn certificates_without_a_responder_get_no_staple_and_no_ocsp_log_lines() {
    let env = TestEnv::new();
    let cfg = env.write_config(&format!(
        "[[site]]\nname = \"alpha\"\nhosts = [\"{ALPHA}\"]\ncert = \"certs/alpha.pem\"\nkey = \"certs/alpha.key\"\n\
         [[site.route]]\npath = \"/\"\nrespond = {{ body = \"ok\" }}\n"
    ));
    let mut p = ServeProcess::spawn(&["serve", "--config", cfg.to_str().unwrap()], &[]);
    let line = p.wait_for_line("listening on https://", Duration::from_secs(10));
    let addr = parse_listen_line(&line);
    let out = run_with_timeout(
        Command::new("openssl")
            .args(["s_client", "-status", "-servername", ALPHA, "-connect"])
            .arg(addr.to_string())
            .stdin(Stdio::null()),
        IO_TIMEOUT,
    );
    assert_no_staple(&text(&out.stdout));
    p.signal("TERM");
    p.wait_exit(Duration::from_secs(10));
    p.drain(Duration::from_secs(5));
    assert!(
        !p.stderr.iter().any(|l| l.contains("OCSP")),
        "{}",
        p.stderr.join("\n")
    );
}

/// An ACME certificate the CA's responder calls revoked is replaced at once, and the new one
/// gets a good staple (pebble puts our responder's URL in what it issues; `openssl ocsp` signs
/// with pebble's intermediate key).
#[test]
fn a_revoked_acme_certificate_is_replaced_at_once_and_the_new_one_stapled() {
    use common::pebble::*;
    require_tool("openssl");
    let env = TestEnv::new();
    let dir = env.path("acme");
    std::fs::create_dir_all(&dir).unwrap();
    let test_ca = env.write("test-root.pem", &pki().root_pem);
    let (inter, inter_key) = (env.path("pebble-inter.pem"), env.path("pebble-inter.key"));
    let responder = Responder::start(env.dir.path(), &inter, (&inter, &inter_key), 60);
    responder.state.lock().unwrap().revoke_first = true;
    let http_port = free_port();
    let pebble = start_pebble_extra(
        &dir,
        http_port,
        free_port(),
        &format!(
            ", \"externalAccountBindingRequired\": false, \"ocspResponderURL\": \"{}\"",
            responder.url
        ),
    );
    for (what, to) in [
        ("intermediates/0", &inter),
        ("intermediate-keys/0", &inter_key),
    ] {
        let st = Command::new("curl")
            .args(["-sS", "--fail", "--cacert"])
            .arg(&test_ca)
            .arg(format!("https://localhost:{}/{what}", pebble.mgmt))
            .arg("-o")
            .arg(to)
            .status()
            .unwrap();
        assert!(st.success(), "cannot fetch pebble's {what}");
    }
    let cfg = env.write_config_raw(&pebbled_config(
        2,
        http_port,
        &pebble.directory,
        &test_ca,
        "",
    ));
    let mut p = ServeProcess::spawn(&["serve", "--config", cfg.to_str().unwrap()], &[]);
    let line = p.wait_for_line("listening on https://", Duration::from_secs(10));
    let addr = parse_listen_line(&line);
    let revoked = wait_log(&mut p, "REVOKED", 30);
    assert!(
        revoked.contains("ordering a new certificate now"),
        "{revoked}"
    );
    wait_log(&mut p, "OCSP: stapling a good response", 30);
    let asked = responder.asked();
    assert!(
        asked.len() >= 2 && asked[1..].iter().all(|s| *s != asked[0]),
        "no new certificate asked about: {asked:?}"
    );
    let out = run_with_timeout(
        Command::new("openssl")
            .args([
                "s_client",
                "-status",
                "-servername",
                "localhost",
                "-connect",
            ])
            .arg(addr.to_string())
            .stdin(Stdio::null()),
        IO_TIMEOUT,
    );
    assert_good_staple(&text(&out.stdout));
}
