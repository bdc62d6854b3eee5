//! systemd readiness (`Type=notify`) around the real binary: with `NOTIFY_SOCKET` set, the
//! server says `READY=1` (and its PID) once its listeners accept connections, and
//! `STOPPING=1` when told to stop.

mod common;

use std::os::unix::net::UnixDatagram;
use std::time::Duration;

use common::*;

fn recv(sock: &UnixDatagram) -> String {
    let mut buf = [0u8; 4096];
    let n = sock.recv(&mut buf).expect("a notification within the timeout");
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

#[test]
fn ready_once_listening_and_stopping_on_sigterm() {
    let env = TestEnv::new();
    let config = env.write_config(ONE_SITE);
    let sock_path = env.path("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
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
    assert!(usec <= now_usec && now_usec - usec < 5_000_000, "{usec} vs {now_usec}");
    portcullis::ops::systemd::status("serving 2 sites\nfine");
    assert_eq!(recv(&sock), "STATUS=serving 2 sites fine\n");
    portcullis::ops::systemd::main_pid(4242);
    assert_eq!(recv(&sock), "MAINPID=4242\n");
    std::env::remove_var("NOTIFY_SOCKET");
}
