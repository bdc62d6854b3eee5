//! `cargo fuzz run client_hello`: see `portcullis::fuzzing::client_hello` for the input and what is checked.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| portcullis::fuzzing::client_hello(data));
