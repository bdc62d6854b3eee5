//! DNS-01 through `acme.dns_hook` against pebble, with pebble-challtestsrv as the DNS server
//! pebble asks: the hook sets and clears TXT records through challtestsrv's management API,
//! as a real hook would through a DNS provider's API.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::pebble::*;
use common::*;

/// Writes an executable hook script that logs every call to `hook.log` and then runs `body`.
fn hook(env: &TestEnv, body: &str) -> PathBuf {
    let path = env.write(
        "hook.sh",
        format!(
            "#!/bin/sh\necho \"$1 $2 $3 zone=$PORTCULLIS_DNS_ZONE_RECORD $PORTCULLIS_DNS_RECORD\" >> '{}'\n{body}\n",
            env.path("hook.log").display()
        ),
    );
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

fn config(env: &TestEnv, pebble: &Pebble, http_port: u16, hook: &Path) -> PathBuf {
    let test_ca = env.write("test-root.pem", &pki().root_pem);
    env.write_config_raw(&format!(
        "workers = 2\ndata_dir = \"data\"\n[listen]\nhttps = [\"127.0.0.1:0\"]\nhttp = [\"127.0.0.1:{http_port}\"]\n\
         [acme]\nca = \"{}\"\nca_root = \"{}\"\ndns_hook = \"{}\"\ndns_propagation = \"0s\"\n\
         [[site]]\nname = \"wild\"\nhosts = [\"*.example.test\", \"example.test\"]\nissuer = \"acme\"\n\
         [[site.route]]\npath = \"/\"\nrespond = {{ body = \"wild\" }}\n",
        pebble.directory,
        test_ca.display(),
        hook.display()
    ))
}

#[test]
fn a_wildcard_certificate_is_issued_through_the_dns_hook() {
    let env = TestEnv::new();
    let dir = env.path("acme");
    std::fs::create_dir_all(&dir).unwrap();
    let http_port = free_port();
    let (pebble, dns) = start_pebble_resolving(&dir, http_port, free_port());
    let m = &dns.management;
    let hook = hook(
        &env,
        &format!(
            "case \"$1\" in\n\
             present) curl -sf -X POST -d \"{{\\\"host\\\":\\\"$PORTCULLIS_DNS_RECORD.\\\",\\\"value\\\":\\\"$3\\\"}}\" {m}/set-txt ;;\n\
             cleanup) curl -sf -X POST -d \"{{\\\"host\\\":\\\"$PORTCULLIS_DNS_RECORD.\\\"}}\" {m}/clear-txt ;;\n\
             esac"
        ),
    );
    let cfg = config(&env, &pebble, http_port, &hook);
    let root = pebble_root(&dir, &pebble, &env.path("test-root.pem"));
    let mut p = ServeProcess::spawn(&["serve", "--config", cfg.to_str().unwrap()], &[]);
    let line = p.wait_for_line("listening on https://", Duration::from_secs(10));
    let port = parse_listen_line(&line).port();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = curl_name(&root, "a.example.test", port, 5);
        if out.status.success() {
            assert_eq!(text(&out.stdout), "wild");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no wildcard certificate after 30 s: {}\n{}",
            text(&out.stderr),
            p.stderr.join("\n")
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    // The apex is in the same certificate, and another label verifies too.
    for name in ["example.test", "other.example.test"] {
        let out = curl_name(&root, name, port, 5);
        assert!(out.status.success(), "{name}: {}", text(&out.stderr));
    }
    // Both authorizations (the wildcard's and the apex's) were presented and cleaned up.
    let log = std::fs::read_to_string(env.path("hook.log")).unwrap();
    let count = |action: &str| log.lines().filter(|l| l.starts_with(action)).count();
    assert_eq!((count("present"), count("cleanup")), (2, 2), "{log}");
    assert!(
        log.lines().all(|l| l.contains(" example.test ")
            && l.ends_with(" zone=_acme-challenge.example.test _acme-challenge.example.test")),
        "{log}"
    );
}

#[test]
fn a_failing_hook_is_reported_with_the_name_the_challenge_and_its_stderr() {
    let env = TestEnv::new();
    let dir = env.path("acme");
    std::fs::create_dir_all(&dir).unwrap();
    let http_port = free_port();
    let (pebble, _dns) = start_pebble_resolving(&dir, http_port, free_port());
    let hook = hook(
        &env,
        "[ \"$1\" = present ] && { echo 'provider said: no API token' >&2; exit 3; }\nexit 0",
    );
    let cfg = config(&env, &pebble, http_port, &hook);
    let mut p = ServeProcess::spawn(&["serve", "--config", cfg.to_str().unwrap()], &[]);
    let line = p.wait_for_line("order failed", Duration::from_secs(20));
    for part in [
        "example.test",
        "dns-01",
        "present",
        "exit status: 3",
        "no API token",
    ] {
        assert!(line.contains(part), "{part:?} missing in: {line}");
    }
    // cleanup runs after a failed present too.
    std::thread::sleep(Duration::from_millis(300));
    let log = std::fs::read_to_string(env.path("hook.log")).unwrap();
    assert!(log.lines().any(|l| l.starts_with("cleanup")), "{log}");
}

/// A hook that hangs is killed after `acme.dns_hook_timeout`; the order fails with an error
/// saying so (naming the hook, the name and the challenge), and cleanup still runs.
#[test]
fn a_hanging_hook_is_killed_after_the_configured_timeout() {
    let env = TestEnv::new();
    let dir = env.path("acme");
    std::fs::create_dir_all(&dir).unwrap();
    let http_port = free_port();
    let (pebble, _dns) = start_pebble_resolving(&dir, http_port, free_port());
    let hook = hook(&env, "[ \"$1\" = present ] && exec sleep 60\nexit 0");
    let cfg = config(&env, &pebble, http_port, &hook);
    let text = std::fs::read_to_string(&cfg).unwrap();
    let cfg = env.write_config_raw(&text.replace(
        "dns_propagation = \"0s\"\n",
        "dns_propagation = \"0s\"\ndns_hook_timeout = \"1s\"\n",
    ));
    let started = Instant::now();
    let mut p = ServeProcess::spawn(&["serve", "--config", cfg.to_str().unwrap()], &[]);
    // Well before the 2-minute default.
    let line = p.wait_for_line("order failed", Duration::from_secs(30));
    assert!(started.elapsed() < Duration::from_secs(30));
    for part in [
        "example.test",
        "dns-01",
        "present",
        &hook.display().to_string(),
        "did not finish within 1s and was killed",
        "acme.dns_hook_timeout",
    ] {
        assert!(line.contains(part), "{part:?} missing in: {line}");
    }
    std::thread::sleep(Duration::from_millis(300));
    let log = std::fs::read_to_string(env.path("hook.log")).unwrap();
    assert!(log.lines().any(|l| l.starts_with("cleanup")), "{log}");
    // The timeout is validated like every duration.
    let bad = env.write_config_raw(&text.replace(
        "dns_propagation = \"0s\"\n",
        "dns_propagation = \"0s\"\ndns_hook_timeout = \"soon\"\n",
    ));
    let (ok, out) = check_config(&bad);
    assert!(
        !ok && out.contains("acme.dns_hook_timeout = \"soon\" is not a duration"),
        "{out}"
    );
}

#[test]
fn wildcards_without_a_hook_and_unusable_hooks_are_config_errors() {
    let env = TestEnv::new();
    let site = "[[site]]\nname = \"wild\"\nhosts = [\"*.example.com\"]\n\
                [[site.route]]\npath = \"/\"\nrespond = { body = \"x\" }\n";
    let cfg = env.write_config(site);
    let (ok, out) = check_config(&cfg);
    assert!(!ok, "{out}");
    assert!(
        out.contains("portcullis.toml:") && out.contains("*.example.com needs a DNS-01 challenge"),
        "{out}"
    );
    let plain = env.write("not-executable.sh", "#!/bin/sh\n");
    let cfg = env.write_config(&format!(
        "[acme]\ndns_hook = \"{}\"\n{site}",
        plain.display()
    ));
    let (ok, out) = check_config(&cfg);
    assert!(!ok && out.contains("is not executable"), "{out}");
    let cfg = env.write_config(&format!("[acme]\ndns_hook = \"/nonexistent/hook\"\n{site}"));
    let (ok, out) = check_config(&cfg);
    assert!(
        !ok && out.contains("cannot use acme.dns_hook /nonexistent/hook"),
        "{out}"
    );
}
