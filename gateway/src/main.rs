//! The `gateway` binary: everything lives in the library (`gateway::cli`).

use std::process::ExitCode;

/// mimalloc: measurably cheaper than glibc malloc on the request path (see
/// bench/RESULTS.md) and less fragmentation across runtime threads.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    gateway::cli::main()
}
