//! Operations: logging and certificate-expiry monitoring; metrics, reload and the status page
//! later.

pub mod control;
pub mod expiry;
pub mod limits;
pub mod reload;

pub use limits::limits_dropped;

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

/// Libraries whose per-connection messages would let any client flood the log (rustls warns
/// about every ClientHello that carries an IP address as SNI): errors only. Handshake failures
/// are logged by portcullis itself, with the peer.
const QUIET: &str = "rustls=error,tokio_rustls=error,hyper=error,h2=error";

/// A log filter (`log_level`, `RUST_LOG`): comma-separated directives as
/// `EnvFilter::try_new` reads them, each trimmed first. tracing-subscriber 0.3 walks a
/// directive's trimmed text but slices the untrimmed one with those positions, so white space
/// before a multi-byte character (`" [é]"`) panics inside it.
pub fn env_filter(spec: &str) -> Result<EnvFilter, tracing_subscriber::filter::ParseError> {
    let directives: Vec<&str> = spec.split(',').map(str::trim).collect();
    EnvFilter::try_new(directives.join(","))
}

/// Sets up logging to stderr. `RUST_LOG` wins over the configured level.
pub fn init_logging(level: &str) {
    let filter = std::env::var("RUST_LOG")
        .ok()
        .and_then(|f| env_filter(&f).ok())
        .or_else(|| env_filter(&format!("{level},{QUIET}")).ok())
        .unwrap_or_else(|| EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false)
        .compact()
        .try_init();
}
