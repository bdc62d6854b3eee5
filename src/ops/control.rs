//! The control socket: a unix socket in the data directory (`control.sock`, mode 0600) where
//! `portcullis reload` and `portcullis upgrade` reach the running server. Only the server's
//! user (and root) can connect, so no token is needed. HTTP/1.1 (`curl --unix-socket` works
//! too): `POST /reload`, `POST /upgrade`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::Notify;

use super::reload::Reloader;

/// The control socket's path in a data directory.
pub fn socket_path(data_dir: &Path) -> PathBuf {
    data_dir.join("control.sock")
}

/// Binds the control socket and serves it on the current tokio runtime. `exit` is notified
/// once an upgrade has handed the server over (this process is to stop). A socket left by a
/// process that is gone is replaced; one a running server answers on is left alone (a
/// warning), unless this process was started by that server's upgrade.
pub async fn serve(reloader: Arc<Reloader>, data_dir: &Path, exit: Arc<Notify>) {
    let path = socket_path(data_dir);
    let upgraded = std::env::var_os(super::reload::UPGRADE_NOTIFY_ENV).is_some();
    if path.exists() {
        if !upgraded && UnixStream::connect(&path).await.is_ok() {
            tracing::warn!(path = %path.display(), "another portcullis serves the control socket of this data directory; `portcullis reload` reaches that one");
            return;
        }
        let _ = std::fs::remove_file(&path);
    }
    if let Err(e) = std::fs::create_dir_all(data_dir) {
        tracing::warn!(path = %data_dir.display(), error = %e, "cannot create the data directory for the control socket; `portcullis reload` will not reach this server (SIGHUP still reloads)");
        return;
    }
    let listener = match bind_private(&path) {
        Ok(l) => l,
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "cannot open the control socket; `portcullis reload` will not reach this server (SIGHUP still reloads)");
            return;
        }
    };
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let reloader = reloader.clone();
            let exit = exit.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req| {
                    answer(req, reloader.clone(), exit.clone())
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
}

/// Binds with a umask-proof mode: the socket is created, then restricted to the owner
/// before anyone could have connected through a listen backlog.
fn bind_private(path: &Path) -> std::io::Result<UnixListener> {
    use std::os::unix::fs::PermissionsExt;
    let listener = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

async fn answer(
    req: Request<Incoming>,
    reloader: Arc<Reloader>,
    exit: Arc<Notify>,
) -> Result<Response<Full<Bytes>>, std::convert::Infallible> {
    let text = |status: StatusCode, body: String| {
        let mut r = Response::new(Full::new(Bytes::from(body)));
        *r.status_mut() = status;
        r.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        Ok(r)
    };
    match (req.method(), req.uri().path()) {
        (&Method::POST, "/reload") => {
            let r = reloader.clone();
            match tokio::task::spawn_blocking(move || r.reload("portcullis reload")).await {
                Ok(outcome) if outcome.applied => text(StatusCode::OK, outcome.report()),
                Ok(outcome) => text(StatusCode::UNPROCESSABLE_ENTITY, outcome.report()),
                Err(e) => text(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("reload failed: {e}\n"),
                ),
            }
        }
        (&Method::POST, "/upgrade") => {
            let r = reloader.clone();
            match tokio::task::spawn_blocking(move || r.upgrade()).await {
                Ok(Ok(pid)) => {
                    exit.notify_one();
                    text(
                        StatusCode::OK,
                        format!(
                            "portcullis: upgraded: process {pid} serves now; process {} finishes its connections and exits\n",
                            std::process::id()
                        ),
                    )
                }
                Ok(Err(e)) => text(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("portcullis: upgrade failed: {e}\n"),
                ),
                Err(e) => text(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("upgrade failed: {e}\n"),
                ),
            }
        }
        (_, "/reload" | "/upgrade") => text(StatusCode::METHOD_NOT_ALLOWED, "use POST\n".into()),
        _ => text(
            StatusCode::NOT_FOUND,
            "POST /reload or POST /upgrade\n".into(),
        ),
    }
}

/// Client side (`portcullis reload`, `portcullis upgrade`): sends `POST path` to the control
/// socket of `data_dir`; the status and the server's report. `Err`: no server answered.
pub fn request(data_dir: &Path, path: &str) -> Result<(StatusCode, String), String> {
    let socket = socket_path(data_dir);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start a runtime: {e}"))?;
    rt.block_on(async {
        let stream = UnixStream::connect(&socket).await.map_err(|e| {
            format!(
                "no running portcullis answers on {}: {e} (is it running with this data directory? SIGHUP reloads too)",
                socket.display()
            )
        })?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| format!("{}: {e}", socket.display()))?;
        tokio::spawn(conn);
        let req = Request::post(path)
            .header(http::header::HOST, "portcullis")
            .body(Full::new(Bytes::new()))
            .map_err(|e| e.to_string())?;
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| format!("{}: {e}", socket.display()))?;
        let status = resp.status();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| format!("{}: {e}", socket.display()))?
            .to_bytes();
        Ok((status, String::from_utf8_lossy(&body).into_owned()))
    })
}
