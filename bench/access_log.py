#!/usr/bin/env python3
"""What the access log costs (after bench/run.sh has built release).

Every other benchmark runs the gateway with RUST_LOG=warn, as bare Pingora
runs, so neither writes a line per request. A gateway in production logs
one access line per request (RUST_LOG's default is info). This measures
CPU per request with the access log off and on, interleaved (each round
measures every gateway back to back, the order rotated; ratio = median of
the per-round ratios): the line is formatted on the request's thread and
written by the log's own thread (gateway/src/logging.rs), both pinned to
CPU 0 with the worker; its stderr is a file here.

BENCH_BEFORE=/path/to/gateway adds another build with the access log on
(e.g. one from before a change to the log's writer).

Usage: python3 bench/access_log.py [ROUNDS]   (default 5)
Env: BENCH_DURATION seconds per measurement (default 4).
"""

import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import run as R  # noqa: E402

# HTTP/1.1 with 16 connections and HTTP/2 with one tenant: run.py's rows.
ROWS = [R.SCENARIOS[0], R.SCENARIOS[4]]


def main():
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 5
    if not (R.REL / "gateway").exists():
        raise SystemExit("build first: bench/run.sh (or cargo build --release -p gateway -p upstream-app)")
    url, certs, lua, backends = R.keep_alive_rig()
    off = R.Gateway(url, backends, certs, tag="off")
    off.name = "access log off"
    on = R.Gateway(url, backends, certs, log_filter="info,sqlx=warn,rustls=error", tag="on")
    on.name = "access log on"
    peers = [off, on]
    before = os.environ.get("BENCH_BEFORE")
    if before:
        b = R.Gateway(url, backends, certs, log_filter="info,sqlx=warn,rustls=error", binary=before, tag="before")
        b.name = "access log on (BENCH_BEFORE)"
        peers.append(b)
    for p in peers:
        R.wrk(f"http://127.0.0.1:{p.http}/", 16, lua)  # warm (the tenant cache)
    print(f"CPU µs per request, {rounds} interleaved rounds of {R.DURATION} s per gateway "
          "(gateway on CPU 0, load and backends on CPU 1); ratio = median of the per-round ratios:\n")
    head = " | ".join(p.name for p in peers)
    ratios = " | ".join(f"{p.name} / off" for p in peers[1:])
    print(f"| scenario | {head} | {ratios} |")
    print("| --- |" + " ---: |" * (2 * len(peers) - 1))
    for title, fn in ROWS:
        cpu = R.interleaved(peers, fn, lua, rounds, title)
        med = statistics.median
        base = cpu[off.name]
        cells = [f"{med(cpu[p.name]):.1f}" for p in peers]
        cells += [f"{med([x / y for x, y in zip(cpu[p.name], base)]):.2f}" for p in peers[1:]]
        print(f"| {title} | " + " | ".join(cells) + " |", flush=True)
    lines = sum(1 for line in open(R.WORK / "gateway-on.log") if " access: " in line)
    dropped = R.metric(on.admin, "tenant_gateway_log_lines_dropped_total")
    print(f"\naccess lines the 'on' gateway wrote: {lines:,}; dropped (LOG_BUFFER_LINES waiting): {dropped:,.0f}")


if __name__ == "__main__":
    try:
        main()
    finally:
        R.cleanup()
