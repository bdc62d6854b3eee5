//! Binding 443 without the privilege to do so gives one clear line and a non-zero exit; `check`
//! without that privilege says it could not test the port, and does not call it in use.

use std::os::unix::fs::PermissionsExt;
use std::process::Command;

/// Port 443 is privileged here (else there is nothing to test).
fn port_443_is_privileged() -> bool {
    let start: u16 = std::fs::read_to_string("/proc/sys/net/ipv4/ip_unprivileged_port_start")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(1024);
    if start <= 443 {
        eprintln!("net.ipv4.ip_unprivileged_port_start = {start}: every user may bind 443 here; nothing to test");
    }
    start > 443
}

/// `portcullis ARGS` as an unprivileged user (nobody, when the tests run as root), with its
/// data directory in `dir`.
fn run_unprivileged(dir: &tempfile::TempDir, args: &[&str]) -> std::process::Output {
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let exe = env!("CARGO_BIN_EXE_portcullis");
    let mut cmd = if running_as_root() {
        // Drop to nobody without any capability, as an ordinary user would run it.
        let mut c = Command::new("setpriv");
        c.args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
            exe,
        ]);
        c
    } else {
        Command::new(exe)
    };
    cmd.args(args)
        .env("PORTCULLIS_DATA_DIR", dir.path().join("data"))
        .output()
        .expect("run portcullis (setpriv from util-linux is needed when tests run as root)")
}

#[test]
fn privileged_port_without_permission_is_one_clear_line() {
    if !port_443_is_privileged() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let out = run_unprivileged(&dir, &["serve", "--listen", "127.0.0.1:443", "--no-http"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "must fail: {stderr}");
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "one line, got: {stderr}");
    let line = lines[0];
    assert!(line.contains("127.0.0.1:443"), "{line}");
    assert!(line.contains("CAP_NET_BIND_SERVICE"), "{line}");
    assert!(line.contains("--https-port"), "{line}");
}

/// `check` is often run by an ordinary user before the service starts with the privilege: a
/// port it may not bind is one warning saying so (not "in use"), and the config still passes.
#[test]
fn check_without_permission_for_privileged_ports_warns_once_and_passes() {
    if !port_443_is_privileged() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let out = run_unprivileged(
        &dir,
        &[
            "check",
            "--listen",
            "127.0.0.1:443",
            "--http-listen",
            "127.0.0.1:80",
        ],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}{stderr}");
    assert!(stdout.contains("OK"), "{stdout}");
    assert!(!stderr.contains("in use"), "{stderr}");
    let lines: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("CAP_NET_BIND_SERVICE"))
        .collect();
    assert_eq!(lines.len(), 1, "one line for both ports: {stderr}");
    let line = lines[0];
    assert!(line.contains("warning"), "{line}");
    assert!(
        line.contains("443 (https)") && line.contains("80 (http)"),
        "{line}"
    );
    assert!(line.contains("permission denied"), "{line}");
}

fn running_as_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false)
}
