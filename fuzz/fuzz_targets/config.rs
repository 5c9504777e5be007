//! cargo-fuzz target: `fuzz::config` (see fuzz/src/config.rs).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| fuzz::config::run(data));
