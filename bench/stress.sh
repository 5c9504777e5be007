#!/usr/bin/env bash
# One command: install wrk and friends (Debian packages), build the gateway in
# release mode, run bench/stress.py. Results: bench/stress-latest.md.
# Env: STRESS_SECONDS (per scenario, default 20), STRESS_IDLE (default 20000).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh bench
cargo build --release -p gateway -p upstream-app --bin gateway --bin upstream-app
exec python3 bench/stress.py
