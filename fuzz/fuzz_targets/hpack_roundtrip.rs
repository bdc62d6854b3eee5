//! `cargo fuzz run hpack_roundtrip`: see `portcullis::fuzzing::hpack_roundtrip` for the input and what is checked.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| portcullis::fuzzing::hpack_roundtrip(data));
