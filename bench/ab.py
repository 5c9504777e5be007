#!/usr/bin/env python3
"""Native CPU per request of two gateway builds, interleaved: the current
release build (target/release/gateway) against another binary (e.g. one
built from an earlier commit), same config, same backends, same load, each
round measuring both back to back in alternating order. The ratio is the
median of the per-round ratios, as in bench/floor.py, because CPU time on
this VM drifts more between minutes than a request-path change moves it.

Usage: python3 bench/ab.py OTHER_GATEWAY_BINARY [ROUNDS]   (default 11;
after bench/run.sh has built the release binaries and installed the tools)

To build an earlier commit's gateway next to the current one:
  git worktree add /tmp/old <commit>
  (cd /tmp/old && CARGO_TARGET_DIR=$PWD/../target cargo build --release -p gateway --bin gateway)
copy target/release/gateway away, then rebuild the current tree. A commit
before a6dae08 has no LTO in its release profile: build it with
CARGO_PROFILE_RELEASE_LTO=fat too (or the current tree with
CARGO_PROFILE_RELEASE_LTO=false), or the comparison measures LTO (6-7 %).
"""

import os
import statistics
import sys
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import run as R  # noqa: E402

SCENARIOS = [
    ("HTTP/1.1 keep-alive, 16 conns", lambda p, lua: R.wrk(f"http://127.0.0.1:{p.http}/", 16, lua)),
    ("HTTPS keep-alive, 16 conns", lambda p, lua: R.wrk(f"https://127.0.0.1:{p.tls}/", 16, lua)),
    ("HTTP/2 over TLS (h2load, 16x8 streams)", lambda p, lua: R.h2load(p.tls)),
]


def main():
    if len(sys.argv) < 2 or not Path(sys.argv[1]).is_file():
        raise SystemExit(__doc__)
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 11
    # R.Gateway runs REL/gateway: the other binary gets a directory of its own.
    other_rel = R.WORK / "other"
    other_rel.mkdir()
    (other_rel / "gateway").symlink_to(Path(sys.argv[1]).resolve())
    url, certs, lua, backends = R.keep_alive_rig()
    current = R.Gateway(url, backends, certs)
    current.name = "current"
    rel, R.REL = R.REL, other_rel
    try:
        other = R.Gateway(url, backends, certs)
        other.name = "other"
    finally:
        R.REL = rel
    peers = [current, other]
    for p in peers:
        R.wrk(f"http://127.0.0.1:{p.http}/", 16, lua)  # warm the tenant caches
    print(f"CPU µs per request, {rounds} interleaved rounds of {R.DURATION} s per build; "
          f"other = {sys.argv[1]}:\n")
    print("| scenario | current µs | other µs | current / other | spread (min–max) |")
    print("| --- | ---: | ---: | ---: | --- |")
    for title, fn in SCENARIOS:
        cpu = R.interleaved(peers, fn, lua, rounds, title)
        ratios = [a / b for a, b in zip(cpu["current"], cpu["other"])]
        med = statistics.median
        print(f"| {title} | {med(cpu['current']):.1f} | {med(cpu['other']):.1f} | {med(ratios):.3f} | "
              f"{min(ratios):.2f}–{max(ratios):.2f} |", flush=True)


if __name__ == "__main__":
    try:
        main()
    finally:
        R.cleanup()
