#!/usr/bin/env python3
"""Instructions per request, counted by valgrind's callgrind: the gateway
next to bare Pingora (gateway/examples/bare_pingora.rs) on the same HTTP/1.1
keep-alive load. Unlike CPU time on a shared VM (±20 % run to run) the count
is the same on every run, so it is what before/after comparisons of request
path changes use (bench/RESULTS.md).

Usage: python3 bench/instructions.py [N_REQUESTS]   (after bench/run.sh has
built the release binaries and installed valgrind, h2load and PostgreSQL)
       python3 bench/instructions.py --limits [N]   the gateway with per-tenant
       limits on (far above the load) next to the same gateway with them off
       python3 bench/instructions.py --access-log [N]   the gateway with its
       access log on (RUST_LOG=info, as by default; stderr to a file)
       next to the same gateway with it off (every other count here is
       with it off, as bare Pingora writes no line per request), and the
       functions the difference is made of
       python3 bench/instructions.py --extra 'TOML' [N]   a third column: the
       gateway with TOML appended to its config (e.g. a shorter
       `[headers] forward` list)
       python3 bench/instructions.py --proto https|h2 [N]   the same three
       columns over TLS: HTTP/1.1 keep-alive, or HTTP/2 (16 connections x 8
       streams); bare Pingora serves TLS through the gateway's own listener
       as in bench/run.py, so the difference is still ours alone
       python3 bench/instructions.py --proto h1-hosts [N]   HTTP/1.1 with the
       load bench/run.py and bench/floor.py time: wrk, each request to the
       next of the 1,100 hosts (a different tenant each time, so the
       connection's memos of its first host do not apply) with a spoofed
       X-Tenant; wrk stops after N responses (a Lua counter; before the
       tenth round it ran by time, so the count and the connection set-up
       spread over it varied run to run), and the count is divided by the
       requests wrk reports
       python3 bench/instructions.py --runs K ...   each column K times,
       interleaved (bare, bare + timeouts, gateway, again): the table shows
       each column's median run and the range of the gateway's excess over
       bare Pingora across the K rounds. HTTP/2's totals move by up to
       1,800 instructions between runs of the same binaries (Pingora's
       upstream pool, bench/RESULTS.md eighth round), so one run cannot
       show a change of 1 % there; at 10,000 requests (the TLS handshakes
       and upstream connections spread thinner) three rounds agreed within
       0.5 % in the ninth round and 1.6-2.8 points in the tenth: count every
       row with N = 10000

Caveat: under valgrind the CPU reports no SHA extensions, so SHA-256 (the
stamp's HMAC) runs in software and costs several times what it costs
natively; the table shows it on a separate line.
"""

import collections
import math
import os
import re
import shutil
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import run as R  # noqa: E402

SHA = re.compile(r"sha2::sha256::")


def parse(path):
    """Self cost per function and inclusive cost per call edge."""
    names, self_cost, edges = {}, collections.Counter(), collections.Counter()
    fn = cfn = None
    pending = False

    def name(tok):
        m = re.match(r"\((\d+)\)(?:\s+(.*))?", tok)
        if not m:
            return tok
        if m.group(2):
            names[m.group(1)] = m.group(2)
        return names[m.group(1)]

    for line in open(path):
        if line.startswith("fn="):
            fn = name(line[3:].strip())
        elif line.startswith("cfn="):
            cfn = name(line[4:].strip())
        elif line.startswith("calls="):
            pending = True
        elif line[:1].isdigit() or line[:1] in "+-*":
            parts = line.split()
            if len(parts) < 2:
                continue
            if pending:
                edges[(fn, cfn)] += int(parts[1])
                pending = False
            else:
                self_cost[fn] += int(parts[1])
    return self_cost, edges


# How each protocol's load is sent: h2load arguments before the URL, and the URL.
LOADS = {
    "h1": (["--h1"], lambda p: f"http://127.0.0.1:{p.http}/"),
    "https": (["--h1"], lambda p: f"https://127.0.0.1:{p.tls}/"),
    "h2": (["-m8"], lambda p: f"https://127.0.0.1:{p.tls}/"),
}
TITLES = {"h1": "HTTP/1.1 keep-alive", "https": "HTTPS (HTTP/1.1) keep-alive",
          "h2": "HTTP/2 over TLS, 8 streams per connection,",
          "h1-hosts": "HTTP/1.1 keep-alive, every request to the next of 1,100 hosts,"}


def profile(which, backends, url, certs, n, extra="", proto="h1", lua=None):
    """`lua`: wrk's script for `h1-hosts` (bench/run.py's keep-alive load)."""
    out = R.WORK / f"callgrind.{which}"
    vg = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}"]
    # A previous run's dump (`--runs`) must not be taken for this one's.
    for old in R.WORK.glob(f"callgrind.{which}.*"):
        old.unlink()

    def spawn(name, args, cpu, env=None):
        p = subprocess.Popen(vg + args, env={**os.environ, **(env or {})}, start_new_session=True,
                             stdout=subprocess.DEVNULL, stderr=open(R.WORK / f"valgrind.{which}.log", "w"))
        R.PROCS.append(p)
        return p

    spawn_before, wait_before = R.spawn, R.wait_port
    R.spawn = spawn
    R.wait_port = lambda port, timeout=30: wait_before(port, 300)  # valgrind starts slowly
    try:
        peer = (R.Gateway(url, backends, certs, extra) if which.startswith("gateway")
                else R.BarePingora(backends, timeouts=which == "bare-timeouts",
                                   certs=certs if proto not in ("h1", "h1-hosts") else None))
    finally:
        R.spawn, R.wait_port = spawn_before, wait_before

    rate = 1500.0  # many hosts: requests/s under valgrind, as last measured

    def load(count, exact=False):
        """Send about `count` requests (`exact`: that many, wrk stopping at
        the count within a duration the warm-up's rate allows for); the
        number sent."""
        nonlocal rate
        if proto == "h1-hosts":
            secs = max(2, math.ceil(count / rate * (1.3 if exact else 1.0)))
            script = R.hosts_lua(limit=count) if exact else lua
            args = ["wrk", "-t1", "-c16", f"-d{secs}s", "--timeout", "30s", "-s", str(script),
                    f"http://127.0.0.1:{peer.http}/"]
            out = subprocess.run(args, capture_output=True, text=True, timeout=secs + 120).stdout
            m = re.search(r"(\d+) requests in", out)
            if not m or "Non-2xx" in out or "Socket errors" in out:
                raise SystemExit(f"{which}: not every request succeeded:\n{out}")
            rate = max(100.0, int(m.group(1)) / secs)
            return int(m.group(1))
        flags, url_of = LOADS[proto]
        done = subprocess.run(["h2load", *flags, "-n", str(count), "-c", "16", "-H", ":authority: t0001.myapp.bench",
                               url_of(peer)], capture_output=True, text=True, timeout=600).stdout
        m = re.search(r"(\d+) succeeded", done)
        if not m or int(m.group(1)) != count:
            raise SystemExit(f"{which}: not every request succeeded:\n{done}")
        return count

    # Warm: tenant cache, upstream connections. With many hosts, until each
    # has been asked for twice (under valgrind a run of a given length sends
    # fewer requests than the hosts there are, and a host first asked for in
    # the counted window would count its database query).
    warmed, want = 0, (2 * len(R.hosts()) if proto == "h1-hosts" else 1)
    while warmed < want:
        warmed += load(2000)
    subprocess.run(["callgrind_control", "-z", str(peer.pid)], capture_output=True, check=True)
    sent = load(n, exact=True)
    subprocess.run(["callgrind_control", "-d", str(peer.pid)], capture_output=True, check=True)
    # A dump is complete once its closing `totals:` line is written.
    deadline = time.time() + 60
    dump = None
    while time.time() < deadline and dump is None:
        dump = next((p for p in sorted(R.WORK.glob(f"callgrind.{which}.*")) if "\ntotals:" in p.read_text()), None)
        time.sleep(0.2)
    os.killpg(peer.pid, 9)
    if dump is None:
        raise SystemExit(f"{which}: callgrind wrote no complete dump")
    return (*parse(dump), sent)


def limits_cost(n):
    """Instructions per request with limits on vs off (every request checked)."""
    _, _, url = R.setup_database()
    certs = R.make_certs()
    backends = R.start_backends()
    runs = {"off": profile("gateway", backends, url, certs, n), "on": profile("gateway-limits", backends, url, certs, n, R.LIMITS_ON)}
    total = {w: sum(s.values()) / n for w, (s, _, _) in runs.items()}
    sha = {w: sum(c for f, c in s.items() if SHA.search(f)) / n for w, (s, _, _) in runs.items()}
    print(f"Instructions per HTTP/1.1 keep-alive request ({n:,} requests, 16 connections, one tenant):\n")
    print("| | limits off | limits on | difference |\n| --- | ---: | ---: | ---: |")
    d = total["on"] - total["off"]
    print(f"| total | {total['off']:,.0f} | {total['on']:,.0f} | {d:+,.0f} ({100 * d / total['off']:+.2f} %) |")
    ns = {w: total[w] - sha[w] for w in total}
    d = ns["on"] - ns["off"]
    print(f"| without SHA-256 | {ns['off']:,.0f} | {ns['on']:,.0f} | {d:+,.0f} ({100 * d / ns['off']:+.2f} %) |")
    s, _, _ = runs["on"]
    print("\nThe limiter's own functions (self cost per request):\n")
    for f, c in collections.Counter(s).most_common():
        if re.search(r"(governor|gateway::limits|tokio::sync::semaphore|dashmap)", f) and c / n >= 10:
            print(f"- {c / n:,.0f}  {f}")


def access_log_cost(n):
    """Instructions per request with the access log on vs off (HTTP/1.1),
    the log's own thread included."""
    _, _, url = R.setup_database()
    certs = R.make_certs()
    backends = R.start_backends()
    runs = {"off": profile("gateway", backends, url, certs, n)}
    default_filter = R.LOG_FILTER
    R.LOG_FILTER = "info,sqlx=warn,rustls=error"  # the gateway's default
    try:
        runs["on"] = profile("gateway-logged", backends, url, certs, n)
    finally:
        R.LOG_FILTER = default_filter
    per = {w: {f: c / sent for f, c in s.items() if not SHA.search(f)} for w, (s, _, sent) in runs.items()}
    total = {w: sum(p.values()) for w, p in per.items()}
    d = total["on"] - total["off"]
    print(f"Instructions per HTTP/1.1 keep-alive request without SHA-256 ({n:,} requests, 16 connections, one tenant):\n")
    print("| access log off | access log on | difference |\n| ---: | ---: | ---: |")
    print(f"| {total['off']:,.0f} | {total['on']:,.0f} | {d:+,.0f} ({100 * d / total['off']:+.1f} %) |")
    diff = collections.Counter({f: per["on"].get(f, 0) - per["off"].get(f, 0) for f in set(per["on"]) | set(per["off"])})
    print("\nWhat the difference is made of (self cost per request, the largest):\n")
    for f, c in diff.most_common(15):
        print(f"- {c:+,.0f}  {f[:140]}")


def main():
    if "--access-log" in sys.argv:
        rest = [a for a in sys.argv[1:] if a != "--access-log"]
        return access_log_cost(int(rest[0]) if rest else 10_000)
    if "--limits" in sys.argv:
        rest = [a for a in sys.argv[1:] if a != "--limits"]
        return limits_cost(int(rest[0]) if rest else 10_000)
    args = sys.argv[1:]
    proto = R.take_option(args, "--proto")
    proto = "h1" if proto is None else proto
    if proto not in TITLES:
        raise SystemExit(f"--proto: one of {', '.join(TITLES)}")
    runs = R.take_option(args, "--runs")
    runs = 1 if runs is None else int(runs)
    if runs < 1:
        raise SystemExit("--runs: at least 1")
    extra = R.take_option(args, "--extra")
    n = int(args[0]) if args else 10_000
    if not shutil.which("valgrind"):
        raise SystemExit("valgrind is not installed (bench/run.sh installs it)")
    _, _, url = R.setup_database()
    certs = R.make_certs()
    lua = R.hosts_lua() if proto == "h1-hosts" else None
    backends = R.start_backends()
    rounds = [{w: profile(w, backends, url, certs, n, proto=proto, lua=lua) for w in ("bare", "bare-timeouts", "gateway")}
              for _ in range(runs)]

    def without_sha(r):
        s, _, sent = r
        return sum(c for f, c in s.items() if not SHA.search(f)) / sent

    # Each column's median run (by its count without SHA-256).
    results = {w: sorted((r[w] for r in rounds), key=without_sha)[(runs - 1) // 2] for w in rounds[0]}
    if extra is not None:
        results["gateway-extra"] = profile("gateway-extra", backends, url, certs, n, extra, proto, lua)
    total = {w: sum(s.values()) / sent for w, (s, _, sent) in results.items()}
    sha = {w: sum(c for f, c in s.items() if SHA.search(f)) / sent for w, (s, _, sent) in results.items()}
    counts = {w: r[2] for w, r in results.items()}
    who = "1,100 tenants" if proto == "h1-hosts" else "one tenant"
    print(f"Instructions per {TITLES[proto]} request ({', '.join(f'{c:,}' for c in counts.values())} requests, "
          f"16 connections, {who}):\n")
    cols = ("bare", "bare-timeouts", "gateway")
    print("| | bare Pingora | bare Pingora, the gateway's upstream timeouts | tenant-gateway |\n| --- | ---: | ---: | ---: |")
    print("| total | " + " | ".join(f"{total[w]:,.0f}" for w in cols) + " |")
    print("| of which SHA-256 (software under valgrind) | " + " | ".join(f"{sha[w]:,.0f}" for w in cols) + " |")
    ns = {w: total[w] - sha[w] for w in cols}
    print("| without SHA-256 | " + " | ".join(f"{ns[w]:,.0f}" for w in cols) + " |")
    for floor in ("bare", "bare-timeouts"):
        d = ns["gateway"] - ns[floor]
        print(f"\nOver {floor}: {d:,.0f} ({100 * d / ns[floor]:+.1f} %) without SHA-256, "
              f"{total['gateway'] - total[floor]:,.0f} ({100 * (total['gateway'] - total[floor]) / total[floor]:+.1f} %) with it.")
    if runs > 1:
        over = sorted(100 * (without_sha(r["gateway"]) / without_sha(r["bare"]) - 1) for r in rounds)
        gw = sorted(without_sha(r["gateway"]) for r in rounds)
        bare = sorted(without_sha(r["bare"]) for r in rounds)
        print(f"\n{runs} rounds: the gateway over bare {over[0]:+.1f} to {over[-1]:+.1f} % without SHA-256 "
              f"(gateway {gw[0]:,.0f}-{gw[-1]:,.0f}, bare {bare[0]:,.0f}-{bare[-1]:,.0f}); the table shows each "
              "column's median run.")
    if extra is not None:
        ours = {w: total[w] - sha[w] - (total["bare"] - sha["bare"]) for w in ("gateway", "gateway-extra")}
        print(f"\nWith `{extra.strip()}`: {total['gateway-extra']:,.0f} in all, "
              f"{total['gateway-extra'] - sha['gateway-extra']:,.0f} without SHA-256; our work on top of bare "
              f"Pingora {ours['gateway-extra']:,.0f} (default config: {ours['gateway']:,.0f}).")
    s, edges, n = results["gateway"]
    inclusive = collections.Counter(s)
    for (caller, callee), c in edges.items():
        if caller != callee:
            inclusive[caller] += c
    print("\nThe gateway's own hooks and helpers (inclusive, per request):\n")
    for f, c in inclusive.most_common():
        if re.search(r"^(<)?(gateway|stamp|tenancy)::", f) and "drop_in_place" not in f and c / n >= 100:
            print(f"- {c / n:,.0f}  {f}")


if __name__ == "__main__":
    try:
        main()
    finally:
        R.cleanup()
