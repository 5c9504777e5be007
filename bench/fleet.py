#!/usr/bin/env python3
"""Numbers for scaling a gateway fleet out on one PostgreSQL (docs/operations.md,
"Scaling out"): what one gateway holds open on the database, how fast one
NOTIFY reaches N listening gateways, and how many lookups per second one
database answers for the lookup query.

Run with the test venv's Python (it has psycopg), after bench/run.sh built
release: target/python-venv/bin/python bench/fleet.py
Output printed and written to bench/fleet-latest.md.
"""

import os
import re
import statistics
import subprocess
import sys
import threading
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import run  # noqa: E402  (the benchmark's setup helpers)

try:
    import psycopg
except ImportError:
    raise SystemExit("run with target/python-venv/bin/python (scripts/python-env.sh makes it)")

LOOKUP = """\\set n random(1, 1000)
SELECT t.schema_name, t.status, t.backend_pool, t.rate_limit_rps, t.rate_limit_burst, t.max_concurrent
  FROM public.domains d JOIN public.tenants t ON t.id = d.tenant_id
 WHERE d.domain = 't' || lpad(:n::text, 4, '0') || '.myapp.bench';
"""


def connections_per_gateway(url, backends, certs, lua):
    gw = run.Gateway(url, backends, certs)
    run.wrk(f"http://127.0.0.1:{gw.http}/", 16, lua)  # every tenant looked up once, concurrently
    with psycopg.connect(url, autocommit=True) as c:
        rows = c.execute("SELECT coalesce(nullif(application_name, ''), '(listener)'), count(*) FROM pg_stat_activity "
                         "WHERE backend_type = 'client backend' AND pid <> pg_backend_pid() GROUP BY 1 ORDER BY 1").fetchall()
    os.killpg(gw.pid, 9)
    return rows


def notify_fanout(url, listeners):
    """Delivery time of one NOTIFY to `listeners` LISTENing connections."""
    conns = [psycopg.connect(url, autocommit=True) for _ in range(listeners)]
    for c in conns:
        c.execute("LISTEN fleet_bench")
    got = []
    lock = threading.Lock()

    def wait(c):
        for _ in c.notifies(timeout=10, stop_after=1):
            with lock:
                got.append(time.monotonic())

    threads = [threading.Thread(target=wait, args=(c,)) for c in conns]
    for t in threads:
        t.start()
    time.sleep(0.5)  # every listener waiting (a benchmark, not a test)
    with psycopg.connect(url, autocommit=True) as sender:
        sent = time.monotonic()
        sender.execute("NOTIFY fleet_bench, '[\"t0001.myapp.bench\"]'")
    for t in threads:
        t.join(timeout=15)
    for c in conns:
        c.close()
    lat = sorted((g - sent) * 1000 for g in got)
    return len(got), statistics.median(lat), lat[-1]


def lookups_per_second(pgbin, url, clients):
    script = run.WORK / "lookup.sql"
    script.write_text(LOOKUP)
    out = subprocess.run(["taskset", "-c", "0", str(pgbin / "pgbench"), "-n", "-f", str(script), "-c", str(clients),
                          "-j", "2", "-T", "8", "-M", "prepared", url], capture_output=True, text=True).stdout
    tps = re.search(r"tps = ([\d.]+)", out)
    return float(tps.group(1)) if tps else float("nan")


def main():
    if not (run.REL / "gateway").exists():
        raise SystemExit("build first: bench/run.sh")
    pgbin, url, certs, lua, backends = run.setup_rig()
    subprocess.run([str(pgbin / "psql"), "-q", "-d", url, "-c", "ALTER SYSTEM SET max_connections = 600"],
                   check=True, capture_output=True)
    lines = [f"# Fleet numbers ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())})", "",
             "PostgreSQL 15 on CPU 1 (the benchmark's throwaway cluster), 1,000 tenants + 100 custom domains.", "",
             "## Connections one gateway holds (default config, ACME off, after looking up 1,100 names)", "",
             "| application_name | connections |", "| --- | ---: |"]
    for name, n in connections_per_gateway(url, backends, certs, lua):
        lines.append(f"| {name} | {n} |")
    lines += ["", "## One NOTIFY to N listening gateways", "", "| listeners | delivered | median ms | slowest ms |",
              "| ---: | ---: | ---: | ---: |"]
    for n in (10, 50, 90):
        d, med, worst = notify_fanout(url, n)
        lines.append(f"| {n} | {d} | {med:.2f} | {worst:.2f} |")
    lines += ["", "## Lookups per second for the default lookup query (pgbench, prepared, 8 s, client on CPU 0)", "",
              "| clients | lookups/s |", "| ---: | ---: |"]
    for c in (1, 4, 16):
        lines.append(f"| {c} | {lookups_per_second(pgbin, url, c):,.0f} |")
    text = "\n".join(lines) + "\n"
    print(text)
    (run.ROOT / "bench" / "fleet-latest.md").write_text(text)


if __name__ == "__main__":
    try:
        main()
    finally:
        run.cleanup()
