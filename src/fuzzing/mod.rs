//! Fuzz targets: each function takes arbitrary bytes, runs them through one part of the server
//! and checks that part's promises, panicking when one is broken.
//!
//! The same functions run under libFuzzer (`fuzz/fuzz_targets/*.rs`, thin shims; see the
//! README's "Fuzzing") and in the test suite, which replays the committed corpora and the
//! inputs of fixed findings (`tests/fuzz_corpora.rs`). Nothing here is used by the server.
//!
//! * [`config`] — TOML text → parse → validate → the model and the request side built from it;
//! * [`h2_connection`] — a client's arbitrary frame sequence against our HTTP/2 connection;
//! * [`hpack_roundtrip`] — our HPACK response encoder against h2's decoder;
//! * [`static_path`] — static-file path resolution never leaves the document root;
//! * [`client_hello`] — the ClientHello read before the handshake, the site choice, and the
//!   handshake that follows;
//! * [`early_data`] — TLS 1.3 0-RTT: [`crate::server::early::EarlyTls`] and which requests are
//!   served from early data.
//!
//! Inputs are decoded by [`Input`], which never fails: missing bytes read as zero, so every
//! input means something and small mutations make small changes. With `PORTCULLIS_FUZZ_TRACE`
//! set, `h2_connection` prints what the client sent and the server's frames.

mod client_hello;
mod config;
mod early;
mod fixture;
mod h2;
mod hpack;
mod static_path;

pub use client_hello::client_hello;
pub use config::config;
pub use early::early_data;
pub use h2::h2_connection;
pub use hpack::hpack_roundtrip;
pub use static_path::static_path;

/// A fuzz target: runs one input, panics when a promise is broken.
pub type Target = fn(&[u8]);

/// Every target, by the name of its corpus directory (`fuzz/corpus/<name>`).
pub const TARGETS: [(&str, Target); 6] = [
    ("config", config),
    ("h2_connection", h2_connection),
    ("hpack_roundtrip", hpack_roundtrip),
    ("static_path", static_path),
    ("client_hello", client_hello),
    ("early_data", early_data),
];

/// Seed inputs for a target (well-formed examples the fuzzer starts from), by name.
pub fn seeds(target: &str) -> Vec<Vec<u8>> {
    match target {
        "config" => config::seeds(),
        "h2_connection" => h2::seeds(),
        "hpack_roundtrip" => hpack::seeds(),
        "static_path" => static_path::seeds(),
        "client_hello" => client_hello::seeds(),
        "early_data" => early::seeds(),
        _ => Vec::new(),
    }
}

/// Removes the files the targets made (the document root of [`fixture::tree`]), if any;
/// for a process that is about to end.
pub fn remove_fixture() {
    fixture::remove_tree();
}

/// A reader of fuzz input that never fails: past the end, every byte is zero.
pub(crate) struct Input<'a> {
    data: &'a [u8],
}

impl<'a> Input<'a> {
    pub(crate) fn new(data: &'a [u8]) -> Self {
        Input { data }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    pub(crate) fn byte(&mut self) -> u8 {
        match self.data.split_first() {
            Some((&b, rest)) => {
                self.data = rest;
                b
            }
            None => 0,
        }
    }

    pub(crate) fn bool(&mut self) -> bool {
        self.byte() & 1 == 1
    }

    pub(crate) fn u16(&mut self) -> u16 {
        u16::from_be_bytes([self.byte(), self.byte()])
    }

    pub(crate) fn u32(&mut self) -> u32 {
        u32::from_be_bytes([self.byte(), self.byte(), self.byte(), self.byte()])
    }

    /// Up to `n` bytes (fewer at the end of the input).
    pub(crate) fn bytes(&mut self, n: usize) -> &'a [u8] {
        let (a, b) = self.data.split_at(n.min(self.data.len()));
        self.data = b;
        a
    }

    /// A slice whose length (0..=255) is the next byte.
    pub(crate) fn short(&mut self) -> &'a [u8] {
        let n = self.byte() as usize;
        self.bytes(n)
    }

    /// One of `options` (which must not be empty).
    pub(crate) fn pick<T: Clone>(&mut self, options: &[T]) -> T {
        options[self.byte() as usize % options.len()].clone()
    }

    /// Everything left.
    pub(crate) fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.data)
    }
}

/// Builds inputs for [`Input`]: the seeds' writer.
#[derive(Default)]
pub(crate) struct Seed(pub(crate) Vec<u8>);

impl Seed {
    pub(crate) fn byte(&mut self, b: u8) -> &mut Self {
        self.0.push(b);
        self
    }
    pub(crate) fn u16(&mut self, v: u16) -> &mut Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    pub(crate) fn u32(&mut self, v: u32) -> &mut Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    pub(crate) fn raw(&mut self, b: &[u8]) -> &mut Self {
        self.0.extend_from_slice(b);
        self
    }
    pub(crate) fn short(&mut self, b: &[u8]) -> &mut Self {
        let b = &b[..b.len().min(255)];
        self.byte(b.len() as u8).raw(b)
    }
    pub(crate) fn take(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.0)
    }
}
