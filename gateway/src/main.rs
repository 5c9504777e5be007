//! The `gateway` binary: everything lives in the library (`gateway::cli`).

use std::process::ExitCode;

/// mimalloc: measurably cheaper than glibc malloc on the request path (see
/// bench/RESULTS.md) and less fragmentation across runtime threads. The
/// crate's default (v3) line, not its `v2` feature: v2 measured ~1 % less
/// CPU per request (v3 over-allocates some blocks the crate asks for with
/// their alignment), but held 6 MiB more after 100,000 certificate loads
/// through a 10,000-entry cache, which broke #18's memory bound
/// (bench/RESULTS.md, sixth round).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    gateway::cli::main()
}
