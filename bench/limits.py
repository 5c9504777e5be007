#!/usr/bin/env python3
"""Per-tenant limits in the benchmark (after bench/run.sh has built release):

1. Cost: CPU per request of the gateway with [limits.tenant] and
   [limits.client] on (limits far above the load, so every request pays for
   the checks and none is refused) next to the same gateway with limits off,
   interleaved, median of BENCH_REPS, over 1,000 tenants. CPU time on this
   VM moves ±10 % run to run, so the exact figure is the instruction count:
   `python3 bench/instructions.py --limits`.
2. Fairness: tenant t0002's latency (wrk, 4 connections) alone, then while
   t0001 floods with 64 connections, without limits and with t0001's plan
   limited to 200 requests/s (its row's override).

Run: python3 bench/limits.py. Output printed and written to
bench/limits-latest.md.
"""

import os
import re
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import run  # noqa: E402  (the benchmark's setup helpers)

def flood(port, host, seconds):
    """wrk on CPU 1 flooding `host` in the background."""
    return subprocess.Popen(["taskset", "-c", "1", "wrk", "-t1", "-c64", f"-d{seconds}s", "-H", f"Host: {host}",
                             f"http://127.0.0.1:{port}/"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)


def main():
    if not (run.REL / "gateway").exists():
        raise SystemExit("build first: bench/run.sh (or cargo build --release -p gateway -p upstream-app)")
    pgbin, url, certs, lua, backends = run.setup_rig()
    off = run.Gateway(url, backends, certs)
    off.name = "limits off"
    on = run.Gateway(url, backends, certs, extra=run.LIMITS_ON)
    on.name = "limits on"
    for g in (off, on):
        run.wrk(f"http://127.0.0.1:{g.http}/", 16, lua)

    lines = [f"# Per-tenant limits ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())})", "",
             f"Each gateway: release build, 1 worker pinned to CPU 0; wrk and the backends on CPU 1; "
             f"{run.DURATION} s per measurement, median of {run.REPS}, interleaved.", "",
             "## Cost per request (limits far above the load: every request checked, none refused)", "",
             "| scenario | gateway | req/s | p99 ms | CPU µs/req | user µs/req |", "| --- | --- | ---: | ---: | ---: | ---: |"]
    scenarios = [("HTTP/1.1 keep-alive, 16 conns", lambda g: run.wrk(f"http://127.0.0.1:{g.http}/", 16, lua)),
                 ("HTTPS keep-alive, 16 conns", lambda g: run.wrk(f"https://127.0.0.1:{g.tls}/", 16, lua))]
    overhead = []
    for title, fn in scenarios:
        runs = {off.name: [], on.name: []}
        for _ in range(run.REPS):
            for g in (off, on):
                runs[g.name].append(run.measure(g, lambda p, _lua: fn(p), lua))
        med = {n: {k: statistics.median([r[k] for r in rs]) for k in rs[0]} for n, rs in runs.items()}
        for n, m in med.items():
            lines.append(f"| {title} | {n} | {run.fmt(m['rps'], 0)} | {run.fmt(m['p99'], 2)} | "
                         f"{run.fmt(m['cpu_us_per_req'])} | {run.fmt(m['user_us_per_req'])} |")
        pct = 100.0 * (med[on.name]["cpu_us_per_req"] / med[off.name]["cpu_us_per_req"] - 1)
        overhead.append(f"- {title}: {pct:+.1f} % CPU per request with limits on (target ≤ 2 %)")
    lines += [""] + overhead

    # Fairness: t0001 floods, t0002 is measured; then t0001's plan is set to
    # 200 requests/s in its row (the override every gateway picks up by NOTIFY).
    lines += ["", "## Fairness under a flood (t0001: 64 connections as fast as they go; t0002: 4 connections measured)", "",
              "| setup | t0002 req/s | t0002 p50 ms | t0002 p99 ms | t0001 served req/s | t0001 refused (429) |",
              "| --- | ---: | ---: | ---: | ---: | ---: |"]
    g = off
    for label, flooding, limit in (("no flood", False, False), ("flood, no limits", True, False),
                                   ("flood, t0001 limited to 200 req/s", True, True)):
        if limit:
            subprocess.run([str(pgbin / "psql"), "-q", "-d", url, "-c",
                            "UPDATE public.tenants SET rate_limit_rps = 200, rate_limit_burst = 200 "
                            "WHERE schema_name = 't0001'"], check=True, capture_output=True)
        bg = flood(g.http, "t0001.myapp.bench", run.DURATION + 2) if flooding else None
        time.sleep(1)  # let the flood ramp up (a benchmark, not a test)
        b = run.wrk(f"http://127.0.0.1:{g.http}/", 4, headers=["Host: t0002.myapp.bench"])
        served = refused = 0
        if bg:
            out = bg.communicate(timeout=run.DURATION + 60)[0]
            total = int(re.search(r"(\d+) requests in", out).group(1))
            bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
            refused = int(bad.group(1)) if bad else 0
            served = (total - refused) / (run.DURATION + 2)
        lines.append(f"| {label} | {run.fmt(b['rps'], 0)} | {run.fmt(b['p50'], 2)} | {run.fmt(b['p99'], 2)} | "
                     f"{run.fmt(served, 0) if bg else '-'} | {refused if bg else '-'} |")
    text = "\n".join(lines) + "\n"
    print(text)
    (run.ROOT / "bench" / "limits-latest.md").write_text(text)


if __name__ == "__main__":
    try:
        main()
    finally:
        run.cleanup()
