//! The `portcullis` binary: zero-config serve with the local CA, quick mode, `trust --print`,
//! and SIGTERM handling.
//!
//! Binding a privileged port as non-root is covered by `privileged_port.rs` (it needs an
//! unprivileged user, so it cannot be checked when the tests run as root without setpriv).

mod common;

use std::time::Duration;

use common::*;

const START: Duration = Duration::from_secs(20);

fn local_root(data: &std::path::Path) -> rustls::pki_types::CertificateDer<'static> {
    use rustls::pki_types::pem::PemObject;
    let pem = std::fs::read(data.join("local-ca/root.pem")).expect("local CA root.pem written");
    rustls::pki_types::CertificateDer::from_pem_slice(&pem).unwrap()
}

#[tokio::test]
async fn zero_config_serve_answers_with_a_local_ca_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut p = ServeProcess::spawn(
        &["serve", "--https-port", "0", "--http-port", "0"],
        &[("PORTCULLIS_DATA_DIR", &data)],
    );
    let line = p.wait_for_line("listening on https://", START);
    let bound = parse_listen_line(&line);
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], bound.port()));

    let mut opts = ClientOpts::default().alpn(&["h2", "http/1.1"]);
    opts.root = Some(local_root(&data));
    // Strict verification against the local CA, by name and by IP address.
    let r = request(
        addr,
        opts.build(),
        Some("localhost"),
        Req::get("localhost", "/"),
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\nstderr:\n{}", p.stderr.join("\n")));
    assert_eq!(r.status, 200);
    assert!(r.text().contains("portcullis is running"), "{}", r.text());
    assert!(r
        .header("content-type")
        .is_some_and(|c| c.starts_with("text/html")));
    let sans = r.tls.leaf_sans();
    for name in ["localhost", "127.0.0.1", "::1"] {
        assert!(sans.iter().any(|s| s == name), "SANs {sans:?} lack {name}");
    }
    let by_ip = request(addr, opts.build(), None, Req::get("127.0.0.1", "/"))
        .await
        .expect("certificate valid for 127.0.0.1");
    assert_eq!(by_ip.status, 200);
}

#[tokio::test]
async fn zero_config_serve_prints_where_the_local_ca_root_is() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut p = ServeProcess::spawn(
        &["serve", "--https-port", "0", "--http-port", "0"],
        &[("PORTCULLIS_DATA_DIR", &data)],
    );
    let line = p.wait_for_line("its root is", START);
    assert!(
        line.contains(&data.join("local-ca/root.pem").display().to_string()),
        "{line}"
    );
    let http_line = p.stderr.iter().find(|l| l.contains("listening on http://"));
    assert!(http_line.is_some(), "{}", p.stderr.join("\n"));
}

#[tokio::test]
async fn zero_config_port80_redirects_localhost_to_https() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut p = ServeProcess::spawn(
        &[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--http-listen",
            "127.0.0.1:0",
        ],
        &[("PORTCULLIS_DATA_DIR", &data)],
    );
    let https = parse_listen_line(&p.wait_for_line("listening on https://", START));
    let http = parse_listen_line(&p.wait_for_line("listening on http://", START));
    let r = raw_tcp(
        http,
        b"GET /x?y=1 HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
    )
    .await
    .unwrap();
    assert_eq!(r.status, 301);
    assert_eq!(
        r.header("location").map(str::to_string),
        Some(format!("https://localhost:{}/x?y=1", https.port()))
    );
}

#[tokio::test]
async fn quick_mode_serves_a_directory_with_given_cert_and_key() {
    let env = TestEnv::new();
    env.write("www/index.html", "quick mode index\n");
    let args = [
        "serve",
        "--domain",
        "alpha.test",
        "--cert",
        env.path("certs/alpha.pem").to_str().unwrap(),
        "--key",
        env.path("certs/alpha.key").to_str().unwrap(),
        "--root",
        env.path("www").to_str().unwrap(),
        "--listen",
        "127.0.0.1:0",
        "--no-http",
        "--workers",
        "1",
    ]
    .map(str::to_string);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let data = env.path("data");
    let mut p = ServeProcess::spawn(&args, &[("PORTCULLIS_DATA_DIR", &data)]);
    let addr = parse_listen_line(&p.wait_for_line("listening on https://", START));
    assert!(
        !p.stderr.iter().any(|l| l.contains("listening on http://")),
        "--no-http"
    );
    let r = request(
        addr,
        ClientOpts::default().build(),
        Some(ALPHA),
        Req::get(ALPHA, "/"),
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "quick mode index\n");
}

#[test]
fn trust_print_outputs_the_local_ca_root_pem() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let run = || {
        run_with_timeout(
            std::process::Command::new(bin())
                .args(["trust", "--print"])
                .env("PORTCULLIS_DATA_DIR", &data),
            Duration::from_secs(30),
        )
    };
    let out = run();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let pem = text(&out.stdout);
    assert!(
        pem.starts_with("-----BEGIN CERTIFICATE-----"),
        "stdout: {pem}"
    );
    assert!(
        pem.trim_end().ends_with("-----END CERTIFICATE-----"),
        "{pem}"
    );
    assert_eq!(pem.matches("BEGIN").count(), 1, "only the certificate");
    assert!(!pem.contains("PRIVATE KEY"));
    let on_disk = std::fs::read_to_string(data.join("local-ca/root.pem")).unwrap();
    assert_eq!(pem, on_disk);
    // The CA persists: a second run prints the same root.
    assert_eq!(text(&run().stdout), pem);
    // It is a CA certificate.
    use rustls::pki_types::pem::PemObject;
    let der = rustls::pki_types::CertificateDer::from_pem_slice(pem.as_bytes()).unwrap();
    let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
    assert!(cert.is_ca());
}

#[test]
fn sigterm_makes_serve_exit_0_promptly() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut p = ServeProcess::spawn(
        &["serve", "--listen", "127.0.0.1:0", "--no-http"],
        &[("PORTCULLIS_DATA_DIR", &data)],
    );
    let addr = parse_listen_line(&p.wait_for_line("listening on https://", START));
    // The last start-up line, then a moment: this test is about shutdown, not start-up races
    // (see sigterm_right_after_the_listening_line_exits_0).
    p.wait_for_line("trust it with", START);
    std::thread::sleep(Duration::from_millis(300));
    p.signal("TERM");
    let started = std::time::Instant::now();
    let status = p
        .wait_exit(Duration::from_secs(5))
        .unwrap_or_else(|| panic!("still running 5 s after SIGTERM"));
    assert_eq!(status.code(), Some(0), "exit status after SIGTERM");
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(
        std::net::TcpStream::connect(addr).is_err(),
        "port still open after exit"
    );
}

#[test]
fn sigint_makes_serve_exit_0_promptly() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut p = ServeProcess::spawn(
        &["serve", "--listen", "127.0.0.1:0", "--no-http"],
        &[("PORTCULLIS_DATA_DIR", &data)],
    );
    p.wait_for_line("trust it with", START);
    std::thread::sleep(Duration::from_millis(300));
    p.signal("INT");
    let status = p
        .wait_exit(Duration::from_secs(5))
        .unwrap_or_else(|| panic!("still running 5 s after SIGINT"));
    assert_eq!(status.code(), Some(0));
}

/// Once `serve` has said it is listening, it is serving: a SIGTERM from then on must be a
/// graceful stop (exit 0), not death by the default signal action. Ten tries, since the window
/// between the announcement and the signal handlers being installed is short.
#[test]
fn sigterm_right_after_the_listening_line_exits_0() {
    use std::os::unix::process::ExitStatusExt;
    let mut killed = Vec::new();
    for i in 0..10 {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let mut p = ServeProcess::spawn(
            &["serve", "--listen", "127.0.0.1:0", "--no-http"],
            &[("PORTCULLIS_DATA_DIR", &data)],
        );
        p.wait_for_line("listening on https://", START);
        p.signal("TERM");
        // What counts is how it exits (gracefully, not killed); the bound is for a machine
        // busy with the whole suite in parallel.
        let status = p
            .wait_exit(Duration::from_secs(15))
            .unwrap_or_else(|| panic!("try {i}: still running 15 s after SIGTERM"));
        if status.code() != Some(0) {
            killed.push(format!(
                "try {i}: exit code {:?}, killed by signal {:?}",
                status.code(),
                status.signal()
            ));
        }
    }
    assert!(
        killed.is_empty(),
        "SIGTERM right after \"listening on\" did not exit gracefully:\n{}",
        killed.join("\n")
    );
}

#[test]
fn bad_listen_flag_exits_nonzero() {
    let out = run_with_timeout(
        std::process::Command::new(bin()).args(["serve", "--listen", "not-an-address"]),
        Duration::from_secs(30),
    );
    assert!(!out.status.success());
    let stderr = text(&out.stderr);
    assert!(stderr.contains("--listen"), "{stderr}");
}

#[test]
fn check_in_zero_config_mode_is_ok() {
    let dir = tempfile::tempdir().unwrap();
    let out = run_with_timeout(
        std::process::Command::new(bin())
            .arg("check")
            .env("PORTCULLIS_DATA_DIR", dir.path().join("data")),
        Duration::from_secs(30),
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("OK"));
}

/// A served certificate close to expiry is reported while serving (the 30/14/7/1-day warnings),
/// not only by `check`.
#[test]
fn serving_a_certificate_that_expires_in_ten_days_logs_a_warning() {
    let env = TestEnv::new();
    env.write_chain("soon", &pki().leaf_expiring_in(&[ALPHA], 10));
    let (cert, key) = (env.path("certs/soon.pem"), env.path("certs/soon.key"));
    let args = [
        "serve",
        "--domain",
        "alpha.test",
        "--cert",
        cert.to_str().unwrap(),
        "--key",
        key.to_str().unwrap(),
        "--listen",
        "127.0.0.1:0",
        "--no-http",
        "--workers",
        "1",
    ];
    let data = env.path("data");
    let mut p = ServeProcess::spawn(&args, &[("PORTCULLIS_DATA_DIR", &data)]);
    let line = p.wait_for_line("certificate expires soon", START);
    assert!(
        line.contains("days_left=9") || line.contains("days_left=10"),
        "{line}"
    );
    let _ = p.child.kill();
}

/// Clients that send an IP address as SNI (wrk, some scanners) must not make the server log a
/// line per connection: that would let anyone flood the log.
#[test]
fn ip_address_sni_does_not_log_per_connection() {
    let env = TestEnv::new();
    let data = env.path("data");
    let mut p = ServeProcess::spawn(
        &[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--no-http",
            "--workers",
            "1",
        ],
        &[("PORTCULLIS_DATA_DIR", &data)],
    );
    let addr = parse_listen_line(&p.wait_for_line("listening on https://", START));
    for _ in 0..5 {
        let _ = std::process::Command::new("openssl")
            .args([
                "s_client",
                "-connect",
                &addr.to_string(),
                "-servername",
                "127.0.0.1",
            ])
            .stdin(std::process::Stdio::null())
            .output()
            .expect("openssl");
    }
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &p.child.id().to_string()])
        .status();
    p.wait_for_line("stopped", START);
    let noisy: Vec<&String> = p
        .stderr
        .iter()
        .filter(|l| l.contains("SNI") || l.contains("WARN"))
        .collect();
    assert!(noisy.is_empty(), "per-connection log lines: {noisy:?}");
}
