//! cargo-fuzz target: `fuzz::table` (see fuzz/src/table.rs).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| fuzz::table::run(data));
