//! portcullis: a secure-by-default HTTPS front door.
//!
//! * [`config`] — parse and validate the one config file (or command-line quick mode) into a
//!   typed model;
//! * [`tls`] — certificates, SNI, ticket keys, the local CA and the rustls configuration;
//! * [`http`] — what a request meets: routing by host and path, security headers, static files,
//!   fixed responses, redirects, and the port-80 redirector;
//! * [`server`] — listeners, worker threads, connection lifecycle and limits;
//! * [`stream`] — TLS for any TCP service (`[[stream]]`): termination or passthrough by SNI;
//! * [`proxy_protocol`] — PROXY protocol v1/v2 headers, read from load balancers and sent to
//!   backends;
//! * [`acme`] — automatic certificates (the HTTP-01 hook so far);
//! * [`outbound`] — the reverse proxy's upstream side: backend connections, pools, balancing,
//!   health, retries;
//! * [`ops`] — logging, metrics and the admin listener (status page, health);
//! * [`cli`] — the `portcullis` command.

#![forbid(unsafe_code)]

pub mod acme;
pub mod cli;
pub mod clock;
pub mod config;
#[doc(hidden)]
pub mod fuzzing;
pub mod http;
pub mod ops;
pub mod outbound;
pub mod probe;
pub mod proxy_protocol;
pub mod server;
pub mod storage;
pub mod stream;
pub mod tls;
