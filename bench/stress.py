#!/usr/bin/env python3
"""Hostile-client stress run (not a timed test): while attackers hold tens of
thousands of idle connections and a slowloris client trickles request heads,
measure what a well-behaved client sees, next to the same measurement with
no attack, in the same run.

Attacks (all against the gateway's public listeners, on loopback):
  idle-one-ip   20,000 idle TCP connections from one address (127.0.0.2),
                reopened as the gateway closes them: the per-address cap.
  idle-many-ip  20,000 idle TCP connections spread over 200 addresses
                (127.0.1.x, 100 each): under the per-address cap, so the
                gateway holds them until the request-head deadline.
  slowloris     500 connections sending a request head one byte every 2 s.
The well-behaved client is wrk (4 connections, keep-alive, HTTPS and HTTP)
from 127.0.0.1 over 1,000 tenants.

Run: bench/stress.sh (installs packages, builds release). Output is printed
and written to bench/stress-latest.md.
"""

import multiprocessing
import os
import resource
import selectors
import socket
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import run  # noqa: E402  (the benchmark's setup helpers)

SECONDS = int(os.environ.get("STRESS_SECONDS", "20"))
IDLE = int(os.environ.get("STRESS_IDLE", "20000"))
SLOWLORIS = 500


def raise_fd_limit(want):
    """Raise the soft limit to the hard one (and the hard one too, where the
    machine allows it); the gateway inherits it and derives its caps from it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (max(hard, want), max(hard, want)))
    except (ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[1]


class Idle(multiprocessing.Process):
    """Hold `n` idle connections from `sources`; reopen each one the gateway
    closes (so the pressure stays on for the whole run). A process of its
    own: one process's file limit would not hold them all."""

    def __init__(self, port, n, sources):
        super().__init__(daemon=True)
        self.port, self.n, self.sources = port, n, sources
        self.stop = multiprocessing.Event()
        self.held_now = multiprocessing.Value("i", 0)

    def held(self):
        return self.held_now.value

    def open_one(self, i):
        try:
            s = socket.socket()
        except OSError:
            self.failed += 1
            return
        s.setblocking(False)
        try:
            s.bind((self.sources[i % len(self.sources)], 0))
            s.connect_ex(("127.0.0.1", self.port))
            self.sel.register(s, selectors.EVENT_READ, i)
            self.opened += 1
        except OSError:
            self.failed += 1
            s.close()

    def run(self):
        raise_fd_limit(0)
        self.sel = selectors.DefaultSelector()
        self.opened = self.failed = 0
        for i in range(self.n):
            if self.stop.is_set():
                break
            self.open_one(i)
            if i % 500 == 0:
                self.held_now.value = len(self.sel.get_map())
        while not self.stop.is_set():
            for key, _ in self.sel.select(timeout=0.2):
                self.sel.unregister(key.fileobj)
                key.fileobj.close()
                self.open_one(key.data)
            self.held_now.value = len(self.sel.get_map())
        for key in list(self.sel.get_map().values()):
            key.fileobj.close()


class Slowloris(threading.Thread):
    def __init__(self, port, n, sources):
        super().__init__(daemon=True)
        self.port, self.n, self.sources = port, n, sources
        self.stop = threading.Event()
        self.cut = 0
        self.i = 0

    def connect(self):
        self.i += 1
        src = (self.sources[self.i % len(self.sources)], 0)
        s = socket.create_connection(("127.0.0.1", self.port), timeout=5, source_address=src)
        s.sendall(b"GET / HTTP/1.1\r\nHost: t0001.myapp.bench\r\n")
        return s

    def run(self):
        socks = [self.connect() for _ in range(self.n)]
        while not self.stop.wait(2.0):
            for i, s in enumerate(socks):
                try:
                    s.sendall(b"X")
                except OSError:
                    self.cut += 1
                    s.close()
                    try:
                        socks[i] = self.connect()
                    except OSError:
                        pass
        for s in socks:
            s.close()


def wrk_latency(url, lua, seconds):
    out = subprocess.run(["taskset", "-c", "1", "wrk", "-t1", "-c4", f"-d{seconds}s", "--latency", "-s", str(lua), url],
                         capture_output=True, text=True).stdout
    reqs = next((float(l.split()[1]) for l in out.splitlines() if l.startswith("Requests/sec")), 0.0)
    errors = sum(int(x) for l in out.splitlines() if "Non-2xx" in l or "Socket errors" in l
                 for x in l.replace(",", " ").split() if x.isdigit())
    return run.lat(out, "50%"), run.lat(out, "99%"), reqs, errors


def main():
    if not (run.REL / "gateway").exists():
        raise SystemExit("build first: bench/stress.sh")
    fds = raise_fd_limit(200_000)
    _, url, certs, lua, backends = run.setup_rig()
    gw = run.Gateway(url, backends, certs)
    admin = gw.admin
    # As gateway/src/config.rs derives them from the file limit.
    total = max((fds - 256) // 4, 1)
    caps = f"{total:,} connections per listener, {min(max(total // 16, 64), total):,} per address"

    def snapshot():
        return {k: run.metric(admin, k) for k in (
            "tenant_gateway_connections_open", "tenant_gateway_connections_refused_total",
            "tenant_gateway_deadline_hits_total")}

    rows = []

    def measure(label, attack):
        started = [a.start() for a in attack]
        time.sleep(3)  # let the attack ramp up before measuring (a benchmark, not a test)
        before = snapshot()
        https = wrk_latency(f"https://127.0.0.1:{gw.tls}/", lua, SECONDS // 2)
        http = wrk_latency(f"http://127.0.0.1:{gw.http}/", lua, SECONDS // 2)
        after = snapshot()
        held = sum(a.held() for a in attack if isinstance(a, Idle))
        open_now = run.metric(admin, "tenant_gateway_connections_open", without='listener="admin"')
        for a in attack:
            a.stop.set()
        for a in attack:
            a.join(timeout=30)
        rows.append((label, https, http, held, open_now, after, before, run.rss_kib(gw.pid) // 1024))
        del started
        # Let the gateway drop what the attack left before the next scenario.
        deadline = time.time() + 30
        while time.time() < deadline and run.metric(admin, "tenant_gateway_connections_open", without='listener="admin"') > 10:
            time.sleep(0.2)

    many = [f"127.0.1.{i}" for i in range(1, 201)]
    loris = [f"127.0.2.{i}" for i in range(1, 6)]
    below = min(IDLE, 2 * total) * 4 // 5  # what the listeners hold without reaching their caps

    def slowloris():
        return [Slowloris(gw.http, SLOWLORIS // 2, loris), Slowloris(gw.tls, SLOWLORIS // 2, loris)]

    measure("no attack", [])
    measure(f"{IDLE:,} idle conns from one address + slowloris x{SLOWLORIS}",
            [Idle(gw.http, IDLE // 2, ["127.0.0.2"]), Idle(gw.tls, IDLE // 2, ["127.0.0.2"])] + slowloris())
    measure(f"{below:,} idle conns from 200 addresses + slowloris x{SLOWLORIS}",
            [Idle(gw.http, below // 2, many), Idle(gw.tls, below // 2, many)] + slowloris())
    measure(f"{IDLE:,} idle conns from 200 addresses (beyond the listener caps)",
            [Idle(gw.http, IDLE // 2, many), Idle(gw.tls, IDLE // 2, many)])

    lines = [f"# Stress run ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())})", "",
             f"Gateway: release build, 1 worker thread pinned to CPU 0, file limit {fds:,} "
             f"(caps: {caps}), default "
             "[limits] (caps derived from the file limit). Well-behaved client: wrk, 4 keep-alive connections "
             f"from 127.0.0.1 over 1,000 tenants, {SECONDS // 2} s per protocol, on CPU 1 with the attackers.", "",
             "| scenario | HTTPS p50 / p99 ms | HTTPS req/s | HTTP p50 / p99 ms | HTTP req/s | errors | attack "
             "conns held open | gateway open conns | refused (during) | deadline cuts (during) | RSS MiB |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for label, https, http, held, open_now, after, before, rss in rows:
        refused = after["tenant_gateway_connections_refused_total"] - before["tenant_gateway_connections_refused_total"]
        cuts = after["tenant_gateway_deadline_hits_total"] - before["tenant_gateway_deadline_hits_total"]
        lines.append(f"| {label} | {run.fmt(https[0], 2)} / {run.fmt(https[1], 2)} | {https[2]:,.0f} | "
                     f"{run.fmt(http[0], 2)} / {run.fmt(http[1], 2)} | {http[2]:,.0f} | {https[3] + http[3]} | "
                     f"{held:,} | {open_now:,.0f} | {refused:,.0f} | {cuts:,.0f} | {rss} |")
    text = "\n".join(lines) + "\n"
    print(text)
    (run.ROOT / "bench" / "stress-latest.md").write_text(text)


if __name__ == "__main__":
    try:
        main()
    finally:
        run.cleanup()
