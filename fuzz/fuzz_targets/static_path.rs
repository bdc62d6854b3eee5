//! `cargo fuzz run static_path`: see `portcullis::fuzzing::static_path` for the input and what is checked.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| portcullis::fuzzing::static_path(data));
