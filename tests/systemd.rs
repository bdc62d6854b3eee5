//! systemd readiness (`Type=notify`) around the real binary: with `NOTIFY_SOCKET` set, the
//! server says `READY=1` (and its PID) once its listeners accept connections, and
//! `STOPPING=1` when told to stop.

mod common;

use std::os::unix::net::UnixDatagram;
use std::time::Duration;

use common::*;

fn recv(sock: &UnixDatagram) -> String {
    let mut buf = [0u8; 4096];
    let n = sock
        .recv(&mut buf)
        .expect("a notification within the timeout");
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

#[test]
fn ready_once_listening_and_stopping_on_sigterm() {
    let env = TestEnv::new();
    let config = env.write_config(ONE_SITE);
    let sock_path = env.path("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut p = ServeProcess::spawn(
        &["serve", "--config", config.to_str().unwrap()],
        &[("NOTIFY_SOCKET", &sock_path)],
    );
    let line = p.wait_for_line("listening on https://", Duration::from_secs(30));
    let addr = line.rsplit("https://").next().unwrap().trim().to_string();

    let ready = recv(&sock);
    assert_eq!(
        ready,
        format!("READY=1\nMAINPID={}\n", p.child.id()),
        "the first notification"
    );
    // Ready means ready: a TLS handshake and a request succeed right away.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let r = rt.block_on(get(addr.parse().unwrap(), Some(ALPHA), "/", "h2"));
    assert_eq!(r.status, 200);

    p.signal("TERM");
    assert_eq!(recv(&sock), "STOPPING=1\n");
    let st = p.wait_exit(Duration::from_secs(30)).expect("exits");
    assert!(st.success(), "{st:?}");
}

/// Without `NOTIFY_SOCKET` (not under systemd) the functions do nothing and fail nothing;
/// with it, the reload notification is as systemd ≥ 253 wants it (`RELOADING=1` with
/// `MONOTONIC_USEC`), and the status line and main PID follow. One test: the environment is
/// the process's.
#[test]
fn notifications_without_and_with_notify_socket() {
    std::env::remove_var("NOTIFY_SOCKET");
    portcullis::ops::systemd::ready();
    portcullis::ops::systemd::reloading();
    portcullis::ops::systemd::status("serving");
    portcullis::ops::systemd::main_pid(1);
    portcullis::ops::systemd::stopping();

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("n.sock");
    let sock = UnixDatagram::bind(&path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    std::env::set_var("NOTIFY_SOCKET", &path);
    portcullis::ops::systemd::reloading();
    let msg = recv(&sock);
    let usec: u64 = msg
        .strip_prefix("RELOADING=1\nMONOTONIC_USEC=")
        .and_then(|r| r.strip_suffix('\n'))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{msg:?}"));
    let now = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    let now_usec = now.tv_sec as u64 * 1_000_000 + now.tv_nsec as u64 / 1000;
    assert!(
        usec <= now_usec && now_usec - usec < 5_000_000,
        "{usec} vs {now_usec}"
    );
    portcullis::ops::systemd::status("serving 2 sites\nfine");
    assert_eq!(recv(&sock), "STATUS=serving 2 sites fine\n");
    portcullis::ops::systemd::main_pid(4242);
    assert_eq!(recv(&sock), "MAINPID=4242\n");
    std::env::remove_var("NOTIFY_SOCKET");
}

/// The unit in `dist/systemd/` passes `systemd-analyze verify` (with ExecStart pointed at the
/// binary under test) and keeps its hardening; the logrotate snippet signals SIGUSR1.
#[test]
fn the_unit_file_verifies_and_keeps_its_hardening() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let unit = std::fs::read_to_string(root.join("dist/systemd/portcullis.service")).unwrap();
    for line in [
        "Type=notify",
        "NotifyAccess=all",
        "AmbientCapabilities=CAP_NET_BIND_SERVICE",
        "CapabilityBoundingSet=CAP_NET_BIND_SERVICE",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "ReadWritePaths=/var/lib/portcullis /var/log/portcullis",
        "ProtectHome=yes",
        "PrivateTmp=yes",
        "PrivateDevices=yes",
        "ProtectKernelTunables=yes",
        "ProtectKernelModules=yes",
        "ProtectKernelLogs=yes",
        "RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX",
        "SystemCallFilter=@system-service",
        "LimitNOFILE=",
        "ExecStart=/usr/bin/portcullis serve --config /etc/portcullis/portcullis.toml",
        "ExecReload=/usr/bin/portcullis reload --config /etc/portcullis/portcullis.toml",
    ] {
        assert!(
            unit.lines().any(|l| l.starts_with(line)),
            "unit lacks {line}"
        );
    }
    let rotate = std::fs::read_to_string(root.join("dist/logrotate/portcullis")).unwrap();
    assert!(
        rotate.contains("--signal=SIGUSR1 portcullis.service"),
        "{rotate}"
    );

    let Ok(out) = std::process::Command::new("systemd-analyze")
        .arg("--version")
        .output()
    else {
        eprintln!("systemd-analyze is not installed: the unit was not verified");
        return;
    };
    assert!(out.status.success());
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("portcullis.service");
    std::fs::write(
        &path,
        unit.replace("/usr/bin/portcullis", env!("CARGO_BIN_EXE_portcullis")),
    )
    .unwrap();
    let out = std::process::Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && text.trim().is_empty(), "{text}");
}
