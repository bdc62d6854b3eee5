//! Readiness and state notifications to systemd (`Type=notify`, see `dist/systemd/`), through
//! the `sd-notify` crate. Every function does nothing when `NOTIFY_SOCKET` is not set (not
//! started by systemd, or by a unit of another type); a failed send is logged, never fatal:
//! the server serves whether or not its manager hears about it.

use sd_notify::NotifyState;

fn send(what: &str, states: &[NotifyState<'_>]) {
    if std::env::var_os("NOTIFY_SOCKET").is_none() {
        return;
    }
    if let Err(e) = sd_notify::notify(states) {
        tracing::warn!("cannot tell systemd {what}: {e}");
    }
}

/// The server has started: its listeners accept connections (`READY=1`, with our PID as
/// `MAINPID`, so that a process started by a binary upgrade becomes the unit's main process).
pub fn ready() {
    send(
        "READY",
        &[NotifyState::Ready, NotifyState::MainPid(std::process::id())],
    );
}

/// A reload begins (`RELOADING=1` with `MONOTONIC_USEC`, which systemd 253 and later want
/// for `Type=notify-reload`); [`ready`] ends it.
pub fn reloading() {
    match NotifyState::monotonic_usec_now() {
        Ok(now) => send("RELOADING", &[NotifyState::Reloading, now]),
        Err(_) => send("RELOADING", &[NotifyState::Reloading]),
    }
}

/// The server is shutting down (`STOPPING=1`).
pub fn stopping() {
    send("STOPPING", &[NotifyState::Stopping]);
}

/// Another process is now the service's main process (`MAINPID=`): a binary upgrade's new
/// process, announced by the old one or by itself.
pub fn main_pid(pid: u32) {
    send("MAINPID", &[NotifyState::MainPid(pid)]);
}

/// A one-line status shown by `systemctl status` (`STATUS=`); line breaks become spaces.
pub fn status(text: &str) {
    let line = text.replace(['\n', '\r'], " ");
    send("STATUS", &[NotifyState::Status(&line)]);
}
