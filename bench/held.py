#!/usr/bin/env python3
"""What holding response bodies costs (after bench/run.sh has built release).

`limits.response_body_buffer_bytes` (default 8 MiB) takes a response body
of known length whole from the backend before the client has it, so a slow
reader holds no backend worker: a copy of the body into the gateway's
memory, where a streamed body goes from one socket to the other. This
measures CPU per request and latency of the gateway fetching static files
of several sizes from nginx, holding on (the default) next to holding off
(`response_body_buffer_bytes = 0`), interleaved (which goes first
alternates by round), median of BENCH_REPS. A request wrk counts as an
error stops the run: the numbers would not be of these responses.
wrk reads as fast as it can, so this is the cost, not the benefit (the
benefit is in tests/tests/hardening.rs: slow readers and backend workers).

Run: python3 bench/held.py. Output printed and written to
bench/held-latest.md.
"""

import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import run  # noqa: E402  (the benchmark's setup helpers)

SIZES = (64 << 10, 1 << 20, 8 << 20)
HOST = "t0001.myapp.bench"


def start_file_backends():
    """One nginx on CPU 1, two servers, serving `/f/<size>`: files of those sizes
    (outside the work directory, which only PostgreSQL's user may enter:
    nginx's workers read them as another user)."""
    root = Path(tempfile.mkdtemp(prefix="tg-held-"))
    root.chmod(0o755)
    run.CLEANUP.append(["rm", "-rf", str(root)])
    (root / "f").mkdir()
    for size in SIZES:
        (root / "f" / str(size)).write_bytes(os.urandom(size))
    return run.start_backends("files", f"root {root};", "sendfile on;")


def main():
    if not (run.REL / "gateway").exists():
        raise SystemExit("build first: bench/run.sh (or cargo build --release -p gateway -p upstream-app)")
    _, _, url = run.setup_database()
    certs = run.make_certs()
    backends = start_file_backends()
    # A budget of which the one client wrk is may hold sixteen responses of
    # 8 MiB (a client may hold a quarter of it): past it a body would be
    # streamed, and the row would not measure holding.
    on = run.Gateway(url, backends, certs, extra="[limits]\nresponse_body_buffer_total_mib = 512\n")
    on.name = "held (default bound)"
    off = run.Gateway(url, backends, certs, extra="[limits]\nresponse_body_buffer_bytes = 0\n")
    off.name = "streamed"
    header = [f"Host: {HOST}"]
    lines = [f"# Response bodies held ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())})", "",
             f"Each gateway: release build, 1 worker pinned to CPU 0; wrk (16 connections) and nginx "
             f"(static files, sendfile) on CPU 1; {run.DURATION} s per measurement, median of {run.REPS}, "
             "interleaved.", ""] + run.BODY_TABLE
    summary = []
    for size in SIZES:
        med = run.medians_of_two(
            (on, off), lambda g: run.wrk(f"http://127.0.0.1:{g.http}/f/{size}", 16, headers=header), f"{size} bytes")
        lines += [run.body_row(size, n, m) for n, m in med.items()]
        pct = 100.0 * (med[on.name]["cpu_us_per_req"] / med[off.name]["cpu_us_per_req"] - 1)
        summary.append(f"- {size >> 10} KiB: {pct:+.1f} % CPU per request held")
    text = "\n".join(lines + [""] + summary) + "\n"
    print(text)
    (run.ROOT / "bench" / "held-latest.md").write_text(text)
    # The held bodies were counted: the default gateway did hold them.
    held = run.metric(on.admin, "tenant_gateway_response_bodies_held_total")
    print(f"tenant_gateway_response_bodies_held_total (held gateway): {held}")
    if not held:
        raise SystemExit("the default gateway held no body: the measurement is not of holding")
    over = run.metric(on.admin, "tenant_gateway_response_bodies_over_budget_total")
    if over:
        raise SystemExit(f"{over:.0f} bodies were streamed past the budget: the rows do not measure holding")


if __name__ == "__main__":
    try:
        main()
    finally:
        run.cleanup()
