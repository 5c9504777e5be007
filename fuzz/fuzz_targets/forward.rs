//! cargo-fuzz target: `fuzz::forward` (see fuzz/src/forward.rs).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| fuzz::forward::run(data));
