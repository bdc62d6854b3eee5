//! Operations: logging and certificate-expiry monitoring; metrics, reload and the status page
//! later.

pub mod expiry;

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

/// Libraries whose per-connection messages would let any client flood the log (rustls warns
/// about every ClientHello that carries an IP address as SNI): errors only. Handshake failures
/// are logged by portcullis itself, with the peer.
const QUIET: &str = "rustls=error,tokio_rustls=error,hyper=error,h2=error";

/// Sets up logging to stderr. `RUST_LOG` wins over the configured level.
pub fn init_logging(level: &str) {
    let filter = std::env::var("RUST_LOG")
        .ok()
        .and_then(|f| EnvFilter::try_new(f).ok())
        .or_else(|| EnvFilter::try_new(format!("{level},{QUIET}")).ok())
        .unwrap_or_else(|| EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false)
        .compact()
        .try_init();
}
