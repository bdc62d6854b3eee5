//! `cargo fuzz run config`: see `portcullis::fuzzing::config` for the input and what is checked.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| portcullis::fuzzing::config(data));
