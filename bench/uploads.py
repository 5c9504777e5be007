#!/usr/bin/env python3
"""What reading request bodies whole first costs (after bench/run.sh has built release).

`limits.request_body_buffer_bytes` (default 8 MiB) reads a request body of
known length whole before a backend is chosen, so a slow sender holds no
backend worker. A body of up to 64 KiB goes into Pingora's own retry
buffer (as every body of up to 64 KiB always did); a larger one into a
copy of the gateway's, sent on in one piece (gateway/src/body.rs). This
measures CPU per request and latency of the gateway posting bodies of
several sizes to nginx, with the default next to the bound of before
(`request_body_buffer_bytes = 65536`: larger bodies streamed),
interleaved (which goes first alternates by round), median of
BENCH_REPS. A request wrk counts as an error stops the run. The 64 KiB
row is the control: both gateways read that body first the same way, so
what it shows between them is this rig's noise between two processes.
wrk sends as fast as it can, so this is the cost, not the benefit (the
benefit is in tests/tests/hardening.rs: slow senders and backend workers).

Run: python3 bench/uploads.py. Output printed and written to
bench/uploads-latest.md.
"""

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import run  # noqa: E402  (the benchmark's setup helpers)

SIZES = (64 << 10, 1 << 20, 8 << 20)
HOST = "t0001.myapp.bench"


def start_sink_backends():
    """One nginx on CPU 1, two servers answering every request 200 after
    reading its body (any size)."""
    return run.start_backends("sink", 'client_max_body_size 0; location / { return 200 "ok\\n"; }')


def post_lua(size):
    """A wrk script posting `size` bytes to the tenant's host."""
    lua = run.WORK / f"post-{size}.lua"
    lua.write_text(f"""
wrk.method = "POST"
wrk.body = string.rep("u", {size})
wrk.headers["Host"] = "{HOST}"
wrk.headers["Content-Type"] = "application/octet-stream"
""")
    return lua


def main():
    if not (run.REL / "gateway").exists():
        raise SystemExit("build first: bench/run.sh (or cargo build --release -p gateway -p upstream-app)")
    _, _, url = run.setup_database()
    certs = run.make_certs()
    backends = start_sink_backends()
    # A budget whose half for large bodies holds sixteen of 8 MiB from the
    # one client wrk is (a client may hold a quarter of it): past it a body
    # would be streamed, and the row would not measure reading first.
    budget = "request_body_buffer_total_mib = 1024\n"
    before = run.Gateway(url, backends, certs, extra=f"[limits]\nrequest_body_buffer_bytes = 65536\n{budget}")
    before.name = "over 64 KiB streamed"
    first = run.Gateway(url, backends, certs, extra=f"[limits]\n{budget}")
    first.name = "read first (default bound)"
    lines = [f"# Request bodies read first ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())})", "",
             f"Each gateway: release build, 1 worker pinned to CPU 0, request_body_buffer_total_mib = 1024; "
             f"wrk (16 connections, POST) and nginx (answers 200 after reading the body) on CPU 1; "
             f"{run.DURATION} s per measurement, median of {run.REPS}, interleaved.", ""] + run.BODY_TABLE
    summary = []
    for size in SIZES:
        lua = post_lua(size)
        med = run.medians_of_two(
            (first, before), lambda g: run.wrk(f"http://127.0.0.1:{g.http}/upload", 16, lua), f"{size} bytes")
        lines += [run.body_row(size, n, m) for n, m in med.items()]
        a, b = med[first.name], med[before.name]
        what = "the same path in both (the control)" if size <= 64 << 10 else "read first"
        summary.append(f"- {size >> 10} KiB: {100.0 * (a['cpu_us_per_req'] / b['cpu_us_per_req'] - 1):+.1f} % CPU, "
                       f"user {a['user_us_per_req'] - b['user_us_per_req']:+.0f} µs per request, {what}")
    over = run.metric(first.admin, "tenant_gateway_request_bodies_over_budget_total")
    summary.append(f"- bodies streamed past the budget by the gateway reading first: {over:.0f}")
    if over:
        raise SystemExit("bodies were streamed past the budget: the rows do not measure reading first")
    text = "\n".join(lines + [""] + summary) + "\n"
    print(text)
    (run.ROOT / "bench" / "uploads-latest.md").write_text(text)


if __name__ == "__main__":
    try:
        main()
    finally:
        run.cleanup()
