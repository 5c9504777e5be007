//! cargo-fuzz target: `fuzz::ws` (see fuzz/src/ws.rs).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| fuzz::ws::run(data));
