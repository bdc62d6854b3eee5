//! `cargo fuzz run early_data`: see `portcullis::fuzzing::early_data` for the input and what is checked.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| portcullis::fuzzing::early_data(data));
