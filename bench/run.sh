#!/usr/bin/env bash
# One command: install the peers and load generators (Debian packages), build
# the gateway in release mode, run bench/run.py. Results: bench/results-latest.md.
# Env: BENCH_DURATION (seconds per measurement, default 4), BENCH_REPS (default 3).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh bench
cargo build --release -p gateway -p upstream-app --bin gateway --bin upstream-app --example bare_pingora
exec python3 bench/run.py
