//! cargo-fuzz target: `fuzz::host` (see fuzz/src/host.rs).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| fuzz::host::run(data));
