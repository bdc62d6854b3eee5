//! Binding 443 without the privilege to do so gives one clear line and a non-zero exit.

use std::os::unix::fs::PermissionsExt;
use std::process::Command;

#[test]
fn privileged_port_without_permission_is_one_clear_line() {
    let start: u16 = std::fs::read_to_string("/proc/sys/net/ipv4/ip_unprivileged_port_start")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(1024);
    if start <= 443 {
        eprintln!("net.ipv4.ip_unprivileged_port_start = {start}: every user may bind 443 here; nothing to test");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
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
    let out = cmd
        .args(["serve", "--listen", "127.0.0.1:443", "--no-http"])
        .env("PORTCULLIS_DATA_DIR", dir.path().join("data"))
        .output()
        .expect("run portcullis (setpriv from util-linux is needed when tests run as root)");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "must fail: {stderr}");
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "one line, got: {stderr}");
    let line = lines[0];
    assert!(line.contains("127.0.0.1:443"), "{line}");
    assert!(line.contains("CAP_NET_BIND_SERVICE"), "{line}");
    assert!(line.contains("--https-port"), "{line}");
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
