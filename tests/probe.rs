//! `portcullis probe` against deliberately broken servers on loopback: each must get the right
//! diagnosis (check, browser error) and exit code.

mod common;

use common::probe::*;
use common::*;
use serde_json::Value;
use std::net::SocketAddr;
use std::process::Command;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test]
async fn a_healthy_server_gets_exit_code_0_and_every_check_ok() {
    let p = pki();
    let leaf = p.leaf(&[ALPHA], Alg::Ecdsa);
    let addr = tls_server(&p.chain_pem(&leaf), &leaf.key_pem).await;
    let (target, ip) = at(addr);
    let (code, r) = probe(&target, &["--ip", &ip]).await;
    assert_eq!(code, 0, "{r:#}");
    assert!(r["checks"]
        .as_array()
        .unwrap()
        .iter()
        .all(|c| c["verdict"] == "ok"));
    assert_eq!(r["facts"]["tls_version"], "TLSv1.3");
    assert_eq!(r["facts"]["alpn"], "h2");
    assert_eq!(r["facts"]["chain_length"], 2);
    check(&r, "cert.trust", "ok");
    check(&r, "cert.order", "ok");
}

#[tokio::test]
async fn expired_and_not_yet_valid_certificates_are_date_invalid() {
    let p = pki();
    let leaf = p.expired_leaf(&[ALPHA]);
    let addr = tls_server(&p.chain_pem(&leaf), &leaf.key_pem).await;
    let (target, ip) = at(addr);
    let (code, r) = probe(&target, &["--ip", &ip]).await;
    assert_eq!(code, 2);
    let c = check(&r, "cert.expiry", "error");
    assert_eq!(c["browser_error"], "NET::ERR_CERT_DATE_INVALID");
    assert!(c["summary"].as_str().unwrap().contains("expired"), "{c}");

    let leaf = p.leaf_not_yet_valid(&[ALPHA], 3);
    let addr = tls_server(&p.chain_pem(&leaf), &leaf.key_pem).await;
    let (target, ip) = at(addr);
    let (code, r) = probe(&target, &["--ip", &ip]).await;
    assert_eq!(code, 2);
    let c = check(&r, "cert.expiry", "error");
    assert_eq!(c["browser_error"], "NET::ERR_CERT_DATE_INVALID");
    assert!(
        c["summary"].as_str().unwrap().contains("not valid yet"),
        "{c}"
    );

    // Expiring soon: a warning, exit code 1.
    let leaf = p.leaf_expiring_in(&[ALPHA], 5);
    let addr = tls_server(&p.chain_pem(&leaf), &leaf.key_pem).await;
    let (target, ip) = at(addr);
    let (code, r) = probe(&target, &["--ip", &ip]).await;
    assert_eq!(code, 1, "{r:#}");
    check(&r, "cert.expiry", "warning");
}

#[tokio::test]
async fn a_certificate_for_other_names_is_common_name_invalid_and_lists_its_names() {
    let p = pki();
    let leaf = p.leaf(&[BETA], Alg::Ecdsa);
    let addr = tls_server(&p.chain_pem(&leaf), &leaf.key_pem).await;
    let (target, ip) = at(addr);
    let (code, r) = probe(&target, &["--ip", &ip]).await;
    assert_eq!(code, 2);
    let c = check(&r, "cert.name", "error");
    assert_eq!(c["browser_error"], "NET::ERR_CERT_COMMON_NAME_INVALID");
    let s = c["summary"].as_str().unwrap();
    assert!(s.contains(ALPHA) && s.contains(BETA), "{s}");
}

#[tokio::test]
async fn a_missing_intermediate_is_named_and_an_unordered_chain_is_a_warning() {
    let p = pki();
    let leaf = p.leaf(&[ALPHA], Alg::Ecdsa);
    // The leaf alone.
    let addr = tls_server(&leaf.cert_pem, &leaf.key_pem).await;
    let (target, ip) = at(addr);
    let (code, r) = probe(&target, &["--ip", &ip]).await;
    assert_eq!(code, 2);
    let c = check(&r, "cert.trust", "error");
    assert_eq!(c["browser_error"], "NET::ERR_CERT_AUTHORITY_INVALID");
    let s = c["summary"].as_str().unwrap();
    assert!(
        s.contains("incomplete chain") && s.contains(INTER_CN),
        "{s}"
    );
    assert!(c["fix"].as_str().unwrap().contains("full chain"), "{c}");

    // Leaf, root, intermediate: verifies (clients sort it out) but is out of order.
    let chain = format!("{}{}{}", leaf.cert_pem, p.root_pem, p.inter_pem);
    let addr = tls_server(&chain, &leaf.key_pem).await;
    let (target, ip) = at(addr);
    let (code, r) = probe(&target, &["--ip", &ip]).await;
    assert_eq!(code, 1, "{r:#}");
    check(&r, "cert.trust", "ok");
    check(&r, "cert.order", "warning");
}

#[tokio::test]
async fn a_self_signed_certificate_is_authority_invalid() {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut params = rcgen::CertificateParams::new(vec![ALPHA.to_string()]).unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, ALPHA);
    let cert = params.self_signed(&key).unwrap();
    let addr = tls_server(&cert.pem(), &key.serialize_pem()).await;
    let (target, ip) = at(addr);
    let (code, r) = probe(&target, &["--ip", &ip]).await;
    assert_eq!(code, 2);
    let c = check(&r, "cert.trust", "error");
    assert_eq!(c["browser_error"], "NET::ERR_CERT_AUTHORITY_INVALID");
    assert!(
        c["summary"].as_str().unwrap().contains("self-signed"),
        "{c}"
    );
}

#[tokio::test]
async fn plain_http_on_the_tls_port_is_said_so() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 2048];
                let _ = tcp.read(&mut buf).await;
                let _ = tcp
                    .write_all(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                    .await;
            });
        }
    });
    let (target, ip) = at(addr);
    let (code, r) = probe(&target, &["--ip", &ip]).await;
    assert_eq!(code, 2);
    let c = check(&r, "tls", "error");
    assert_eq!(c["browser_error"], "ERR_SSL_PROTOCOL_ERROR");
    assert!(c["summary"].as_str().unwrap().contains("not TLS"), "{c}");
}

#[tokio::test]
async fn nothing_listening_is_exit_code_3_connection_refused() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let (code, r) = probe(&format!("127.0.0.1:{port}"), &[]).await;
    assert_eq!(code, 3, "{r:#}");
    assert_eq!(r["unreachable"], true);
    let c = check(&r, "tcp", "error");
    assert_eq!(c["browser_error"], "ERR_CONNECTION_REFUSED");
}

#[tokio::test]
async fn a_running_portcullis_gets_exit_code_0() {
    let srv = start(&format!("{ONE_SITE}[site.hsts]\nenabled = true\n"));
    let addr = srv.https;
    let (target, ip) = at(addr);
    let (code, r) = probe(&target, &["--ip", &ip]).await;
    assert_eq!(code, 0, "{r:#}");
    assert_eq!(r["grade"], "A+", "{r:#}");
    assert_eq!(r["grade_reasons"], serde_json::json!([]));
    // Everything, HTTP/3 and the second connection included, well under 3 s on loopback.
    assert!(r["took_ms"].as_u64().unwrap() < 3000, "{r:#}");
    assert_eq!(r["facts"]["group"], "X25519MLKEM768");
    // Tickets resume, and the HTTP/3 it advertises answers over QUIC.
    check(&r, "tls.resumption", "ok");
    check(&r, "http3", "ok");
}

#[tokio::test]
async fn no_resumption_and_http3_advertised_but_not_served_are_warnings() {
    let p = pki();
    let leaf = p.leaf(&[ALPHA], Alg::Ecdsa);
    // A UDP port nothing listens on.
    let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let free = udp.local_addr().unwrap().port();
    drop(udp);
    let addr = tls_server_with(
        &p.chain_pem(&leaf),
        &leaf.key_pem,
        &[("alt-svc", format!("h3=\":{free}\"; ma=86400"))],
        false,
    )
    .await;
    let (target, ip) = at(addr);
    let (code, r) = probe(&target, &["--ip", &ip]).await;
    assert_eq!(code, 1, "{r:#}");
    check(&r, "tls.resumption", "warning");
    let c = check(&r, "http3", "warning");
    assert!(
        c["summary"].as_str().unwrap().contains(&free.to_string()),
        "{c}"
    );
    assert_eq!(r["facts"]["resumption"], false);
    assert_eq!(r["facts"]["http3"], false);
}

#[tokio::test]
async fn a_missing_hsts_header_is_a_warning() {
    // alpha.test is a local name: no HSTS by default.
    let srv = start(ONE_SITE);
    let (target, ip) = at(srv.https);
    let (code, r) = probe(&target, &["--ip", &ip]).await;
    assert_eq!(code, 1, "{r:#}");
    let c = check(&r, "http.hsts", "warning");
    assert!(
        c["summary"]
            .as_str()
            .unwrap()
            .contains("no Strict-Transport-Security"),
        "{c}"
    );
}

const REDIRECTS: &str = r#"
[[site]]
name = "alpha"
hosts = ["alpha.test"]
cert = "certs/alpha.pem"
key = "certs/alpha.key"
[site.hsts]
enabled = true
[[site.route]]
path = "/a"
redirect = { to = "/b" }
[[site.route]]
path = "/b"
redirect = { to = "/a" }
[[site.route]]
path = "/down"
redirect = { to = "http://alpha.test/" }
[[site.route]]
path = "/ok"
redirect = { to = "/" }
[[site.route]]
path = "/"
respond = { body = "home" }
"#;

#[tokio::test]
async fn redirect_loops_and_downgrades_to_http_are_errors_and_a_redirect_that_lands_is_fine() {
    let srv = start(REDIRECTS);
    let port = srv.https.port();
    let ip = srv.https.ip().to_string();
    let (code, r) = probe(&format!("https://{ALPHA}:{port}/a"), &["--ip", &ip]).await;
    assert_eq!(code, 2, "{r:#}");
    let c = check(&r, "http.redirects", "error");
    assert_eq!(c["browser_error"], "ERR_TOO_MANY_REDIRECTS");
    let s = c["summary"].as_str().unwrap();
    assert!(s.contains("/a → ") && s.contains("/b"), "{s}");

    let (code, r) = probe(&format!("https://{ALPHA}:{port}/down"), &["--ip", &ip]).await;
    assert_eq!(code, 2, "{r:#}");
    let c = check(&r, "http.redirects", "error");
    assert!(c["summary"].as_str().unwrap().contains("plain HTTP"), "{c}");

    let (code, r) = probe(&format!("https://{ALPHA}:{port}/ok"), &["--ip", &ip]).await;
    assert_eq!(code, 0, "{r:#}");
    let c = check(&r, "http.redirects", "ok");
    assert!(c["summary"].as_str().unwrap().contains("1 redirect"), "{c}");
}

#[tokio::test]
async fn port_80_must_redirect_to_the_same_page_over_https() {
    let srv = start(&format!("{ONE_SITE}[site.hsts]\nenabled = true\n"));
    let ip = srv.https.ip().to_string();
    let http_port = srv.http().port().to_string();
    let target = format!("https://{ALPHA}:{}/some/page?x=1", srv.https.port());
    let (code, r) = probe(&target, &["--ip", &ip, "--http-port", &http_port]).await;
    assert_eq!(code, 0, "{r:#}");
    let c = check(&r, "http80", "ok");
    assert!(
        c["summary"].as_str().unwrap().contains("/some/page?x=1"),
        "{c}"
    );

    // A plain-HTTP port that serves the page instead of redirecting: a warning.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let plain = listener.local_addr().unwrap().port().to_string();
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 2048];
                let _ = tcp.read(&mut buf).await;
                let _ = tcp
                    .write_all(
                        b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok",
                    )
                    .await;
            });
        }
    });
    let (code, r) = probe(&target, &["--ip", &ip, "--http-port", &plain]).await;
    assert_eq!(code, 1, "{r:#}");
    let c = check(&r, "http80", "warning");
    assert!(
        c["summary"]
            .as_str()
            .unwrap()
            .contains("instead of redirecting"),
        "{c}"
    );
}

#[tokio::test]
async fn a_port_whose_listener_never_accepts_is_filtered_exit_code_3() {
    // A listener with a backlog of 0 whose queue is full: the kernel drops further SYNs, as a
    // firewall that drops packets does.
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    sock.bind(&"127.0.0.1:0".parse::<SocketAddr>().unwrap().into())
        .unwrap();
    sock.listen(0).unwrap();
    let addr = sock.local_addr().unwrap().as_socket().unwrap();
    let mut fillers = Vec::new();
    for _ in 0..2 {
        if let Ok(Ok(t)) = tokio::time::timeout(
            std::time::Duration::from_millis(300),
            tokio::net::TcpStream::connect(addr),
        )
        .await
        {
            fillers.push(t);
        }
    }
    let (target, ip) = at(addr);
    let started = std::time::Instant::now();
    let (code, r) = probe(&target, &["--ip", &ip, "--timeout", "1s"]).await;
    assert_eq!(code, 3, "{r:#}");
    let c = check(&r, "tcp", "error");
    assert_eq!(c["browser_error"], "ERR_CONNECTION_TIMED_OUT");
    assert!(c["summary"].as_str().unwrap().contains("filtered"), "{c:#}");
    assert!(c["cause"].as_str().unwrap().contains("firewall"), "{c:#}");
    assert!(r["grade"].is_null(), "no grade without a connection: {r:#}");
    assert!(started.elapsed() < std::time::Duration::from_secs(3));
    drop(sock);
}

#[tokio::test]
async fn every_site_of_a_config_is_probed_and_wildcards_are_listed_as_not_probed() {
    let p = pki();
    let env = TestEnv::new();
    let sites = format!(
        "{TWO_SITES}\n[[site]]\nname = \"gamma\"\nhosts = [\"*.example.test\"]\ncert = \"certs/wild.pem\"\nkey = \"certs/wild.key\"\n[site.hsts]\nenabled = true\n[[site.route]]\npath = \"/\"\nrespond = {{ status = 200, body = \"gamma\" }}\n"
    );
    let srv = env.start(&sites);
    let (https, http) = (srv.https.port(), srv.http.unwrap().port());
    // The config as deployed: the same sites at fixed ports.
    let config = srv.env.write(
        "deployed.toml",
        format!("data_dir = \"data\"\n[listen]\nhttps = [\"127.0.0.1:{https}\"]\nhttp = [\"127.0.0.1:{http}\"]\n{sites}"),
    );
    let root = srv.env.write("root.pem", &p.root_pem);
    let run = |args: Vec<String>| async move {
        let out = tokio::task::spawn_blocking(move || {
            Command::new(env!("CARGO_BIN_EXE_portcullis"))
                .arg("probe")
                .args(args)
                .output()
                .unwrap()
        })
        .await
        .unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    let base = vec![
        "--config".to_owned(),
        config.display().to_string(),
        "--ip".to_owned(),
        "127.0.0.1".to_owned(),
        "--ca".to_owned(),
        root.display().to_string(),
        "--timeout".to_owned(),
        "3s".to_owned(),
    ];
    let mut json = base.clone();
    json.push("--json".to_owned());
    let (code, text) = run(json).await;
    let r: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
    let reports = r["reports"].as_array().unwrap();
    let targets: Vec<&str> = reports
        .iter()
        .map(|r| r["target"].as_str().unwrap())
        .collect();
    assert_eq!(
        targets,
        [
            format!("alpha.test:{https}"),
            format!("www.alpha.test:{https}"),
            format!("beta.test:{https}")
        ],
        "{r:#}"
    );
    for report in reports {
        check(report, "cert.trust", "ok");
        check(report, "cert.name", "ok");
        // The redirect from the config's plain-HTTP port keeps the page.
        check(report, "http80", "ok");
    }
    assert_eq!(reports[0]["facts"]["site"], "alpha");
    assert_eq!(reports[2]["facts"]["site"], "beta");
    let skipped = r["skipped"].as_array().unwrap();
    assert_eq!(skipped.len(), 1, "{r:#}");
    assert!(skipped[0].as_str().unwrap().contains("*.example.test"));
    let worst = reports
        .iter()
        .map(|r| r["grade"].as_str().unwrap())
        .collect::<Vec<_>>();
    // No HSTS on alpha and beta (.test names get none by default): warnings, grade A.
    assert_eq!(worst, ["A", "A", "A"], "{r:#}");
    assert_eq!(code, 1);
    // The same for people: one report per name and the tally.
    let (code, text) = run(base).await;
    assert_eq!(code, 1);
    assert!(
        text.contains(
            "3 name(s) probed: 0 good, 3 with warnings, 0 with errors, 0 could not connect"
        ),
        "{text}"
    );
    assert!(text.contains("not probed: *.example.test"), "{text}");
    // Piped: no colour codes (and the progress line is for terminals only).
    assert!(!text.contains('\x1b'), "{text:?}");
    assert!(text.contains("grade: A\n    capped by: no HSTS"), "{text}");

    // A config that does not load is one clear error and exit code 3.
    let broken = srv.env.write("broken.toml", "[listen]\nhttps = 5\n");
    let (code, _) = run(vec!["--config".into(), broken.display().to_string()]).await;
    assert_eq!(code, 3);
}

#[tokio::test]
async fn a_local_ca_site_is_checked_against_the_local_ca_without_ca() {
    let srv = start("[[site]]\nname = \"dev\"\nhosts = [\"localhost\"]\n[site.hsts]\nenabled = true\n[[site.route]]\npath = \"/\"\nrespond = { status = 200, body = \"dev\" }\n");
    let https = srv.https.port();
    let config = srv.env.write(
        "deployed.toml",
        format!("data_dir = \"data\"\n[listen]\nhttps = [\"127.0.0.1:{https}\"]\nhttp = []\n[[site]]\nname = \"dev\"\nhosts = [\"localhost\"]\n[site.hsts]\nenabled = true\n[[site.route]]\npath = \"/\"\nrespond = {{ status = 200, body = \"dev\" }}\n"),
    );
    let out = tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_portcullis"))
            .args(["probe", "--json", "--ip", "127.0.0.1", "--config"])
            .arg(&config)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let r: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stderr)));
    let report = &r["reports"][0];
    check(report, "cert.trust", "ok");
    assert_eq!(report["grade"], "A+", "{r:#}");
    assert_eq!(out.status.code(), Some(0), "{r:#}");
}

#[tokio::test]
async fn both_address_families_are_checked_once_one_answers() {
    let p = pki();
    let leaf = p.leaf(&["localhost"], Alg::Ecdsa);
    let v4 = tls_server(&p.chain_pem(&leaf), &leaf.key_pem).await;
    // `localhost` has both ::1 and 127.0.0.1 (hosts file): first the IPv6 side refuses.
    let (code, r) = probe(&format!("https://localhost:{}", v4.port()), &[]).await;
    assert_eq!(code, 1, "{r:#}");
    let tcp = checks(&r, "tcp");
    assert_eq!(tcp.len(), 2, "{r:#}");
    let refused = tcp
        .iter()
        .find(|c| c["summary"].as_str().unwrap().contains("[::1]"))
        .unwrap();
    assert_eq!(refused["verdict"], "warning", "{r:#}");
    assert_eq!(refused["browser_error"], "ERR_CONNECTION_REFUSED");
    // Then the server answers on ::1 at that port too (relayed): both families open.
    let v6 = tokio::net::TcpListener::bind(("::1", v4.port()))
        .await
        .expect("IPv6 loopback (::1) is needed for this test");
    let relay = tokio::spawn(async move {
        while let Ok((mut client, _)) = v6.accept().await {
            tokio::spawn(async move {
                if let Ok(mut server) = tokio::net::TcpStream::connect(v4).await {
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                }
            });
        }
    });
    let (code, r) = probe(&format!("https://localhost:{}", v4.port()), &[]).await;
    let tcp = checks(&r, "tcp");
    assert!(
        tcp.iter().all(|c| c["verdict"] == "ok") && tcp.len() == 2,
        "{r:#}"
    );
    assert!(
        tcp.iter()
            .any(|c| c["summary"].as_str().unwrap().contains("open too")),
        "{r:#}"
    );
    assert_eq!(code, 0, "{r:#}");
    relay.abort();
}
