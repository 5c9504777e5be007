#!/usr/bin/env python3
"""CPU per request of the gateway over bare Pingora, interleaved: each round
measures the gateway, bare Pingora and bare Pingora with the gateway's
upstream timeouts back to back on the same load, and the ratio is taken
within the round. On this VM CPU time drifts ±20 % over minutes (bench/
RESULTS.md), more than the 10 % the target is about; a median of per-round
ratios cancels the drift that a median of separately timed runs keeps.

Usage: python3 bench/floor.py [ROUNDS]   (default 9; after bench/run.sh
has built the release binaries and installed the tools)
Env: BENCH_DURATION seconds per measurement (default 4).

Rows: every row of bench/run.py (the same load functions, taken from its
SCENARIOS): HTTP/1.1 keep-alive with 16 and 128 connections, HTTPS
keep-alive, a new TLS connection per request, HTTP/2 with one tenant and
with 8. Bare Pingora serves HTTPS through the gateway's own TLS listener
(see gateway/examples/bare_pingora.rs), so the TLS rows compare the tenancy
work alone. run.py measures each row once per peer, back to back; a row
that is off there (it has measured the 128-connection row at 1.28 and 1.34)
is read here.
"""

import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import run as R  # noqa: E402

# run.py's rows. "new TLS connection per request" is not a keep-alive
# target: the handshake's CPU against the same TLS listener without
# tenancy (resumption off on both).
SCENARIOS = R.SCENARIOS


def main():
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 9
    needed = [R.REL / "examples" / "bare_pingora", R.REL / "gateway", R.REL / "upstream-app"]
    if not all(p.exists() for p in needed):
        raise SystemExit(
            "build first: bench/run.sh (or cargo build --release -p gateway -p upstream-app"
            " --bin gateway --bin upstream-app --example bare_pingora)"
        )
    url, certs, lua, backends = R.keep_alive_rig()
    gw = R.Gateway(url, backends, certs)
    bare = R.BarePingora(backends, certs=certs)
    timed = R.BarePingora(backends, timeouts=True, certs=certs)
    peers = [gw, bare, timed]
    for p in peers:
        R.wrk(f"http://127.0.0.1:{p.http}/", 16, lua)  # warm (the gateway's tenant cache)
    print(f"CPU µs per request, {rounds} interleaved rounds of {R.DURATION} s per peer "
          "(proxy on CPU 0, load and backends on CPU 1); ratio = median of the per-round ratios:\n")
    print("| scenario | tenant-gateway | bare Pingora | bare + timeouts | gateway / bare | gateway / bare + timeouts | spread of gateway / bare (min–max) |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | --- |")
    for title, fn in SCENARIOS:
        cpu = R.interleaved(peers, fn, lua, rounds, title)
        g, b, t = cpu[gw.name], cpu[bare.name], cpu[timed.name]
        vs_bare = [x / y for x, y in zip(g, b)]
        vs_timed = [x / y for x, y in zip(g, t)]
        med = statistics.median
        print(f"| {title} | {med(g):.1f} | {med(b):.1f} | {med(t):.1f} | {med(vs_bare):.2f} | {med(vs_timed):.2f} | "
              f"{min(vs_bare):.2f}–{max(vs_bare):.2f} |", flush=True)


if __name__ == "__main__":
    try:
        main()
    finally:
        R.cleanup()
