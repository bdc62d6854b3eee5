//! portcullis: a secure-by-default HTTPS front door.
//!
//! * [`config`] — parse and validate the one config file (or command-line quick mode) into a
//!   typed model;
//! * [`tls`] — certificates, SNI, ticket keys, the local CA and the rustls configuration;
//! * [`http`] — what a request meets: routing by host and path, security headers, static files,
//!   fixed responses, redirects, and the port-80 redirector;
//! * [`server`] — listeners, worker threads, connection lifecycle and limits;
//! * [`acme`] — automatic certificates (the HTTP-01 hook so far);
//! * [`ops`] — logging;
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
pub mod proxy_protocol;
pub mod server;
pub mod storage;
pub mod stream;
pub mod tls;
