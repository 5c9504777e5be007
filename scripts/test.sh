#!/usr/bin/env bash
# Runs every check and test: formatting, clippy, unit tests and the end-to-end
# suites (which start their own PostgreSQL, upstreams and gateways on loopback).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh test
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --quiet -- -D warnings
cargo build --workspace --bins --quiet
cargo test --workspace --quiet
