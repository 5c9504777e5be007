//! The `upstream-app` binary: everything lives in the library (`upstream_app::cli`).

fn main() -> std::process::ExitCode {
    upstream_app::cli::main()
}
