//! cargo-fuzz target: `fuzz::stamp` (see fuzz/src/stamp.rs).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| fuzz::stamp::run(data));
