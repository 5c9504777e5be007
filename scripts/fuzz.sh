#!/usr/bin/env bash
# Fuzzes the request path's hostile-input handling (fuzz/src: the header
# policy with a connection's memos, the stamp contract, host normalisation,
# the WebSocket frame tracker, the tenant cache's host table, the redirect
# exemptions, the configuration) with cargo-fuzz, each
# target for SECONDS (default 120). Not part of scripts/test.sh, which
# replays fuzz/seeds/ and a fixed-seed sweep instead (fuzz/tests/replay.rs).
#
# Usage: scripts/fuzz.sh [SECONDS] [TARGET...]
#   targets: forward stamp host ws_frames table paths config (default: all)
# The corpus grows in fuzz/corpus/<target>/ (not committed), starting from
# the stored inputs (fuzz/seeds/<target>.hex); a failing input is written to
# fuzz/artifacts/<target>/. See it as the property reads it with
#   FUZZ_SHOW=TARGET:FILE cargo test -p fuzz --test replay -- --ignored show --nocapture
# and, once fixed, append it to fuzz/seeds/TARGET.hex under a "#" line that
# says what it found (`xxd -p FILE | tr -d '\n'`), so every test run replays
# it. fuzz/pack_seeds.py TARGET refreshes the file's sample from the corpus.
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${1:-120}"
[ $# -gt 0 ] && shift
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(forward stamp host ws_frames table paths config)
command -v cargo-fuzz >/dev/null 2>&1 || cargo install cargo-fuzz --locked
# The workspace's release profile links with whole-program LTO (for the
# benchmarks): minutes per target that fuzzing does not need.
export CARGO_PROFILE_RELEASE_LTO=false
cd fuzz
for t in "${targets[@]}"; do
  mkdir -p "corpus/$t"
  # The stored inputs, one file each (named by content, so again is a no-op).
  python3 - "$t" <<'PY'
import hashlib, sys
from pathlib import Path
t = sys.argv[1]
for line in Path(f"seeds/{t}.hex").read_text().splitlines():
    if line and not line.startswith("#"):
        data = bytes.fromhex(line)
        Path(f"corpus/{t}/seed-{hashlib.sha1(data).hexdigest()}").write_bytes(data)
PY
  echo "== $t: ${secs} s"
  # -s none: Rust is memory-safe, so no sanitizer; what is looked for is a
  # panic (a property failing, or the code itself).
  cargo fuzz run --features libfuzzer -s none "$t" "corpus/$t" -- \
    -max_total_time="$secs" -rss_limit_mb=4096 -max_len=4096 -print_final_stats=1
done
