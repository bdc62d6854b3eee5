//! `portcullis probe` through a DNS server started by the test (`--dns`): the name's
//! A/AAAA records, redirect hops and the ACME readiness checks (`acme.dns`, `acme.caa`: CAA
//! records, RFC 8659) all come from its zone; and TLS 1.3 early data (`tls.early_data`)
//! against portcullis with and without `early_data`, and against a rustls server.

mod common;

use std::net::SocketAddr;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use common::probe::*;
use common::*;
use hickory_server::net::runtime::TokioRuntimeProvider;
use hickory_server::proto::rr::{LowerName, Name};
use hickory_server::proto::serialize::txt::Parser;
use hickory_server::store::in_memory::InMemoryZoneHandler;
use hickory_server::zone_handler::{AxfrPolicy, Catalog, ZoneType};
use hickory_server::Server;
use serde_json::Value;

/// The name probed through the test's DNS server (not under a special-use domain such as
/// `.test`, which the readiness checks skip as no public CA issues for it).
const SHOP: &str = "shop.example.com";

/// An authoritative DNS server (hickory) for the root zone holding `records` (zone-file
/// lines), answering on UDP and TCP at the same 127.0.0.1 port until the test ends. Being
/// authoritative for the root, it answers every name: NXDOMAIN or no data outside `records`.
async fn dns_server(records: &str) -> SocketAddr {
    let zone =
        format!("$TTL 60\n. IN SOA ns.probe. hostmaster.probe. 1 3600 600 86400 60\n{records}\n");
    let (origin, rrsets) = Parser::new(zone, None, Some(Name::root())).parse().unwrap();
    let zone = InMemoryZoneHandler::<TokioRuntimeProvider>::new(
        origin.clone(),
        rrsets,
        ZoneType::Primary,
        AxfrPolicy::Deny,
    )
    .unwrap();
    let mut catalog = Catalog::new();
    catalog.upsert(LowerName::new(&origin), vec![Arc::new(zone)]);
    let mut server = Server::new(catalog);
    // UDP on a free port, then TCP on the same one (retried if that port's TCP side is taken).
    for _ in 0..20 {
        let udp = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = udp.local_addr().unwrap();
        let Ok(tcp) = tokio::net::TcpListener::bind(addr).await else {
            continue;
        };
        server.register_socket(udp);
        server.register_listener(tcp, Duration::from_secs(5), 4096);
        tokio::spawn(async move {
            let _ = server.block_until_done().await;
        });
        return addr;
    }
    panic!("no free port for UDP and TCP");
}

/// A healthy TLS server (rustls) for [`SHOP`].
async fn shop_server() -> SocketAddr {
    let p = pki();
    let leaf = p.leaf(&[SHOP], Alg::Ecdsa);
    tls_server(&p.chain_pem(&leaf), &leaf.key_pem).await
}

/// Probes `https://shop.example.com:PORT` with the names looked up at `dns`.
async fn probe_shop(server: SocketAddr, dns: SocketAddr, args: &[&str]) -> (i32, Value) {
    let dns = dns.to_string();
    let mut all = vec!["--dns", dns.as_str()];
    all.extend_from_slice(args);
    probe(&format!("https://{SHOP}:{}", server.port()), &all).await
}

fn summary(c: &Value) -> &str {
    c["summary"].as_str().unwrap()
}

#[tokio::test]
async fn the_whole_probe_goes_through_dns_and_caa_naming_the_ca_is_ok() {
    let server = shop_server().await;
    let dns = dns_server(&format!(
        "{SHOP}. IN A 127.0.0.1\n{SHOP}. IN CAA 0 issue \"letsencrypt.org\""
    ))
    .await;
    let (code, r) = probe_shop(server, dns, &[]).await;
    assert_eq!(code, 0, "{r:#}");
    assert!(
        summary(check(&r, "dns", "ok")).contains("127.0.0.1"),
        "{r:#}"
    );
    check(&r, "cert.trust", "ok");
    check(&r, "http", "ok");
    check(&r, "acme.dns", "ok");
    let c = check(&r, "acme.caa", "ok");
    assert!(summary(c).contains("allows letsencrypt.org"), "{c}");
    assert_eq!(r["facts"]["caa"]["name"], SHOP);
    assert_eq!(
        r["facts"]["caa"]["records"],
        serde_json::json!(["0 issue \"letsencrypt.org\""])
    );
    assert_eq!(r["facts"]["caa_allows"], true);
    assert_eq!(r["facts"]["dns_ipv4"], 1);
    assert!(r["took_ms"].as_u64().unwrap() < 3000, "{r:#}");

    // Allowed under conditions (RFC 8657): said.
    let dns = dns_server(&format!(
        "{SHOP}. IN A 127.0.0.1\n{SHOP}. IN CAA 0 issue \"letsencrypt.org; validationmethods=dns-01\""
    ))
    .await;
    let (code, r) = probe_shop(server, dns, &[]).await;
    assert_eq!(code, 0, "{r:#}");
    let c = check(&r, "acme.caa", "ok");
    assert!(summary(c).contains("validation methods dns-01"), "{c}");

    // No CAA anywhere: any CA may issue.
    let dns = dns_server(&format!("{SHOP}. IN A 127.0.0.1")).await;
    let (code, r) = probe_shop(server, dns, &[]).await;
    assert_eq!(code, 0, "{r:#}");
    let c = check(&r, "acme.caa", "ok");
    assert!(summary(c).contains("any CA may issue"), "{c}");
    assert_eq!(r["facts"]["caa"], Value::Null);
    assert_eq!(r["facts"]["caa_allows"], true);
}

#[tokio::test]
async fn caa_naming_only_another_ca_is_a_warning_with_the_record_to_add() {
    let server = shop_server().await;
    let dns = dns_server(&format!(
        "{SHOP}. IN A 127.0.0.1\n{SHOP}. IN CAA 0 issue \"pki.goog\""
    ))
    .await;
    let (code, r) = probe_shop(server, dns, &[]).await;
    assert_eq!(code, 1, "{r:#}");
    let c = check(&r, "acme.caa", "warning");
    assert!(summary(c).contains("pki.goog"), "{c}");
    assert_eq!(
        c["fix"],
        format!("add the DNS record: {SHOP}. CAA 0 issue \"letsencrypt.org\"")
    );
    assert_eq!(r["facts"]["caa_allows"], false);

    // The same records for a portcullis configured with Google Trust Services: allowed.
    let (code, r) = probe_shop(
        server,
        dns,
        &["--acme-ca", "https://dv.acme-v02.api.pki.goog/directory"],
    )
    .await;
    assert_eq!(code, 0, "{r:#}");
    assert!(summary(check(&r, "acme.caa", "ok")).contains("allows pki.goog"));

    // A CA whose CAA domain is not known: the records are shown, no verdict.
    let (code, r) = probe_shop(server, dns, &["--acme-ca", "https://127.0.0.1:14000/dir"]).await;
    assert_eq!(code, 0, "{r:#}");
    let c = check(&r, "acme.caa", "ok");
    assert!(summary(c).contains("not known"), "{c}");
    assert_eq!(r["facts"]["caa_allows"], Value::Null);
    assert_eq!(r["facts"]["caa"]["name"], SHOP);
}

#[tokio::test]
async fn the_relevant_caa_set_is_found_by_climbing_to_the_parents() {
    let server = shop_server().await;
    // Only the parent has CAA, and it names another CA: the parent's set applies.
    let dns = dns_server(&format!(
        "{SHOP}. IN A 127.0.0.1\nexample.com. IN CAA 0 issue \"pki.goog\""
    ))
    .await;
    let (code, r) = probe_shop(server, dns, &[]).await;
    assert_eq!(code, 1, "{r:#}");
    let c = check(&r, "acme.caa", "warning");
    assert_eq!(
        c["fix"],
        "add the DNS record: example.com. CAA 0 issue \"letsencrypt.org\""
    );
    assert_eq!(r["facts"]["caa"]["name"], "example.com");

    // The parent allows the CA: fine.
    let dns = dns_server(&format!(
        "{SHOP}. IN A 127.0.0.1\nexample.com. IN CAA 0 issue \"letsencrypt.org\""
    ))
    .await;
    let (code, r) = probe_shop(server, dns, &[]).await;
    assert_eq!(code, 0, "{r:#}");
    check(&r, "acme.caa", "ok");
    assert_eq!(r["facts"]["caa"]["name"], "example.com");

    // The closest non-empty set wins: the name's own records override the parent's.
    let dns = dns_server(&format!(
        "{SHOP}. IN A 127.0.0.1\n{SHOP}. IN CAA 0 issue \"letsencrypt.org\"\nexample.com. IN CAA 0 issue \"pki.goog\""
    ))
    .await;
    let (code, r) = probe_shop(server, dns, &[]).await;
    assert_eq!(code, 0, "{r:#}");
    check(&r, "acme.caa", "ok");
    assert_eq!(r["facts"]["caa"]["name"], SHOP);
}

#[tokio::test]
async fn caa_follows_cnames_and_a_wildcard_certificate_is_judged_by_issuewild() {
    let server = shop_server().await;
    // The name is an alias: the CAA records at its target are the relevant set (they are
    // where the record goes), the parent's are not consulted.
    let dns = dns_server(&format!(
        "{SHOP}. IN CNAME edge.example.net.\nedge.example.net. IN A 127.0.0.1\nedge.example.net. IN CAA 0 issue \"pki.goog\"\nexample.com. IN CAA 0 issue \"letsencrypt.org\""
    ))
    .await;
    let (code, r) = probe_shop(server, dns, &[]).await;
    assert_eq!(code, 1, "{r:#}");
    let c = check(&r, "acme.caa", "warning");
    assert_eq!(
        c["fix"],
        "add the DNS record: edge.example.net. CAA 0 issue \"letsencrypt.org\""
    );
    assert_eq!(r["facts"]["caa"]["name"], "edge.example.net");

    // A server with a wildcard certificate: issuewild governs when there is one…
    let p = pki();
    let leaf = p.leaf(&["*.example.com"], Alg::Ecdsa);
    let wild = tls_server(&p.chain_pem(&leaf), &leaf.key_pem).await;
    let dns = dns_server(&format!(
        "{SHOP}. IN A 127.0.0.1\nexample.com. IN CAA 0 issue \"letsencrypt.org\"\nexample.com. IN CAA 0 issuewild \"pki.goog\""
    ))
    .await;
    let (code, r) = probe_shop(wild, dns, &[]).await;
    assert_eq!(code, 1, "{r:#}");
    let c = check(&r, "acme.caa", "warning");
    assert!(summary(c).contains("*.example.com"), "{c}");
    assert_eq!(
        c["fix"],
        "add the DNS record: example.com. CAA 0 issuewild \"letsencrypt.org\""
    );
    // … and issue when there is none.
    let dns = dns_server(&format!(
        "{SHOP}. IN A 127.0.0.1\nexample.com. IN CAA 0 issue \"letsencrypt.org\""
    ))
    .await;
    let (code, r) = probe_shop(wild, dns, &[]).await;
    assert_eq!(code, 0, "{r:#}");
    check(&r, "acme.caa", "ok");
}

#[tokio::test]
async fn an_empty_issuer_and_an_unknown_critical_property_forbid_issuance() {
    let server = shop_server().await;
    let dns = dns_server(&format!(
        "{SHOP}. IN A 127.0.0.1\nexample.com. IN CAA 0 issue \";\""
    ))
    .await;
    let (code, r) = probe_shop(server, dns, &[]).await;
    assert_eq!(code, 1, "{r:#}");
    let c = check(&r, "acme.caa", "warning");
    assert!(summary(c).contains("no CA"), "{c}");
    assert_eq!(r["facts"]["caa_allows"], false);

    // The CA is named, but a critical property no CA knows stops every CA.
    let dns = dns_server(&format!(
        "{SHOP}. IN A 127.0.0.1\n{SHOP}. IN CAA 0 issue \"letsencrypt.org\"\n{SHOP}. IN CAA 128 tbs \"unknown\""
    ))
    .await;
    let (code, r) = probe_shop(server, dns, &[]).await;
    assert_eq!(code, 1, "{r:#}");
    let c = check(&r, "acme.caa", "warning");
    assert!(summary(c).contains("critical"), "{c}");
    assert!(
        c["fix"].as_str().unwrap().contains("128 tbs \"unknown\""),
        "{c}"
    );
    assert_eq!(r["facts"]["caa_allows"], false);
}

#[tokio::test]
async fn a_name_pointing_elsewhere_than_the_probed_address_is_a_warning() {
    let server = shop_server().await;
    // The name still points at the old machine (a documentation address, never contacted:
    // --ip sends the probe to the new one).
    let dns = dns_server(&format!("{SHOP}. IN A 192.0.2.10")).await;
    let ip = server.ip().to_string();
    let (code, r) = probe_shop(server, dns, &["--ip", &ip]).await;
    assert_eq!(code, 1, "{r:#}");
    let c = check(&r, "acme.dns", "warning");
    assert!(summary(c).contains("the name points elsewhere"), "{c}");
    assert!(summary(c).contains("192.0.2.10"), "{c}");
    let fix = c["fix"].as_str().unwrap();
    assert!(fix.contains(&format!("{SHOP}. A 127.0.0.1")), "{fix}");
    assert!(fix.contains(&format!("{SHOP}. A 192.0.2.10")), "{fix}");

    // Pointing at it: fine.
    let dns = dns_server(&format!("{SHOP}. IN A 127.0.0.1")).await;
    let (code, r) = probe_shop(server, dns, &["--ip", &ip]).await;
    assert_eq!(code, 0, "{r:#}");
    check(&r, "acme.dns", "ok");

    // No record at all yet.
    let dns = dns_server("other.example.com. IN A 127.0.0.1").await;
    let (code, r) = probe_shop(server, dns, &["--ip", &ip]).await;
    assert_eq!(code, 1, "{r:#}");
    let c = check(&r, "acme.dns", "warning");
    assert!(summary(c).contains("no A/AAAA record"), "{c}");
}

#[tokio::test]
async fn a_name_the_dns_server_does_not_know_cannot_be_reached() {
    let server = shop_server().await;
    let dns = dns_server("other.example.com. IN A 127.0.0.1").await;
    let (code, r) = probe_shop(server, dns, &[]).await;
    assert_eq!(code, 3, "{r:#}");
    let c = check(&r, "dns", "error");
    assert_eq!(c["browser_error"], "DNS_PROBE_FINISHED_NXDOMAIN");
    assert!(summary(c).contains("does not resolve"), "{c}");
}

#[tokio::test]
async fn redirect_hops_are_resolved_through_the_same_dns_server() {
    let env = TestEnv::new();
    let p = pki();
    env.write_chain("shop", &p.leaf(&[SHOP], Alg::Ecdsa));
    // Port 1 (tcpmux) has no listener: the hop's connection is refused after its name
    // resolved, which the message shows by the address.
    let srv = env.start(&format!(
        r#"[[site]]
name = "shop"
hosts = ["{SHOP}"]
cert = "certs/shop.pem"
key = "certs/shop.key"
[[site.route]]
path = "/"
redirect = {{ to = "https://www.example.com:1/" }}
"#
    ));
    let dns = dns_server(&format!(
        "{SHOP}. IN A 127.0.0.1\nwww.example.com. IN A 127.0.0.1"
    ))
    .await;
    let (_, r) = probe_shop(srv.https, dns, &[]).await;
    let c = check(&r, "http.redirects", "error");
    assert!(summary(c).contains("127.0.0.1:1"), "{c}");

    // Not in the zone: the hop does not resolve (the system's resolver is not asked).
    let dns = dns_server(&format!("{SHOP}. IN A 127.0.0.1")).await;
    let (_, r) = probe_shop(srv.https, dns, &[]).await;
    let c = check(&r, "http.redirects", "error");
    assert!(
        summary(c).contains("www.example.com does not resolve"),
        "{c}"
    );
}

#[tokio::test]
async fn bad_dns_and_acme_ca_values_are_one_line_errors_naming_the_flag() {
    for (flag, value) in [("--dns", "ns1.example.com"), ("--acme-ca", "letsencrypt")] {
        let out = Command::new(env!("CARGO_BIN_EXE_portcullis"))
            .args(["probe", "https://shop.example.com", flag, value])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2));
        let err = String::from_utf8_lossy(&out.stderr);
        let first = err.lines().next().unwrap();
        assert!(first.contains(flag) && first.contains(value), "{err}");
        assert!(out.stdout.is_empty());
    }
}

#[tokio::test]
async fn ip_addresses_and_special_use_names_are_not_checked_for_acme() {
    let p = pki();
    let leaf = p.leaf(&[ALPHA, "127.0.0.1"], Alg::Ecdsa);
    let addr = tls_server(&p.chain_pem(&leaf), &leaf.key_pem).await;
    let (code, r) = probe(&format!("https://127.0.0.1:{}", addr.port()), &[]).await;
    assert_eq!(code, 0, "{r:#}");
    for id in ["acme.dns", "acme.caa"] {
        assert!(
            summary(check(&r, id, "ok")).contains("is an IP address"),
            "{r:#}"
        );
    }
    let (target, ip) = at(addr);
    let (code, r) = probe(&target, &["--ip", &ip]).await;
    assert_eq!(code, 0, "{r:#}");
    assert!(summary(check(&r, "acme.caa", "ok")).contains("special-use"));
}

/// Two portcullis sites from the standard certificates: `alpha` takes early data, `beta`
/// does not.
const EARLY: &str = r#"[[site]]
name = "alpha"
hosts = ["alpha.test"]
cert = "certs/alpha.pem"
key = "certs/alpha.key"
early_data = true
[[site.route]]
path = "/"
respond = { body = "alpha" }

[[site]]
name = "beta"
hosts = ["beta.test"]
cert = "certs/beta.pem"
key = "certs/beta.key"
[[site.route]]
path = "/"
respond = { body = "beta" }
"#;

#[tokio::test]
async fn early_data_is_reported_accepted_or_not_offered() {
    let srv = start(EARLY);
    let ip = srv.https.ip().to_string();
    let port = srv.https.port();
    let (_, r) = probe(&format!("https://{ALPHA}:{port}"), &["--ip", &ip]).await;
    let c = check(&r, "tls.early_data", "ok");
    assert_eq!(r["facts"]["early_data"], "accepted", "{r:#}");
    assert!(summary(c).contains("200 OK"), "{c}");
    assert!(summary(c).contains("425"), "{c}");

    let (_, r) = probe(&format!("https://{BETA}:{port}"), &["--ip", &ip]).await;
    check(&r, "tls.early_data", "ok");
    assert_eq!(r["facts"]["early_data"], "not offered", "{r:#}");

    // TLS 1.2 only: no early data, said without trying.
    let addr = tls12_server().await;
    let (target, ip) = at(addr);
    let (_, r) = probe(&target, &["--ip", &ip]).await;
    let c = check(&r, "tls.early_data", "ok");
    assert!(summary(c).contains("needs TLS 1.3"), "{c}");
    assert_eq!(r["facts"]["early_data"], "not offered", "{r:#}");

    // A rustls server: tickets without early data, then no resumption at all.
    let p = pki();
    let leaf = p.leaf(&[ALPHA], Alg::Ecdsa);
    for resumption in [true, false] {
        let addr = tls_server_with(&p.chain_pem(&leaf), &leaf.key_pem, &[], resumption).await;
        let (target, ip) = at(addr);
        let (_, r) = probe(&target, &["--ip", &ip]).await;
        let c = check(&r, "tls.early_data", "ok");
        assert_eq!(r["facts"]["early_data"], "not offered", "{r:#}");
        let why = if resumption {
            "allow no early data"
        } else {
            "no session resumption"
        };
        assert!(summary(c).contains(why), "{c}");
    }
}

/// A rustls server speaking only TLS 1.2 (ALPN http/1.1) that answers each connection's
/// first request with a small page.
async fn tls12_server() -> SocketAddr {
    use rustls::pki_types::pem::PemObject;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let p = pki();
    let leaf = p.leaf(&[ALPHA], Alg::Ecdsa);
    let chain = rustls::pki_types::CertificateDer::pem_slice_iter(p.chain_pem(&leaf).as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = rustls::pki_types::PrivateKeyDer::from_pem_slice(leaf.key_pem.as_bytes()).unwrap();
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(default_provider()))
        .with_protocol_versions(&[&rustls::version::TLS12])
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .unwrap();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let mut buf = [0u8; 4096];
                let _ = tls.read(&mut buf).await;
                let _ = tls
                    .write_all(
                        b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok",
                    )
                    .await;
                let _ = tls.shutdown().await;
            });
        }
    });
    addr
}
