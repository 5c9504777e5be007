//! cargo-fuzz target: `fuzz::paths` (see fuzz/src/paths.rs).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| fuzz::paths::run(data));
