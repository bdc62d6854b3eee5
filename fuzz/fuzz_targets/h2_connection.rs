//! `cargo fuzz run h2_connection`: see `portcullis::fuzzing::h2_connection` for the input and what is checked.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| portcullis::fuzzing::h2_connection(data));
