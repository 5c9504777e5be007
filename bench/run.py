#!/usr/bin/env python3
"""Tenant Gateway benchmark: our gateway next to nginx, HAProxy, Caddy and the
direct path, in the same run, on the same workload.

Workload: 1,000 tenants (tNNNN.myapp.bench) plus 100 custom domains; every
proxy maps Host to a tenant with its native mechanism, removes the client's
X-Tenant and sets its own, answers unknown hosts with 404, and forwards to two
nginx `return 200` backends. Each proxy gets one worker/thread pinned to CPU 0;
the load generator and the backends share CPU 1. Peers are interleaved
A B C D A B C D ... for REPS repetitions; medians are reported, with each
proxy's own CPU time per request (from /proc/<pid>/stat), the figure to
compare on a 2-core machine where the client co-limits throughput.

Run it with bench/run.sh (installs packages, builds release). Output:
bench/results-latest.md (also printed).
"""

import atexit
import json
import os
import re
import signal
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
REL = ROOT / "target" / "release"
DURATION = int(os.environ.get("BENCH_DURATION", "4"))
REPS = int(os.environ.get("BENCH_REPS", "3"))
TENANTS = 1000
CUSTOM = 100
TICK = os.sysconf("SC_CLK_TCK")
WORK = Path(tempfile.mkdtemp(prefix="tg-bench-"))
# Made when imported (every bench script imports this module); left only
# when something was written there (logs, callgrind dumps to look at).
atexit.register(lambda: WORK.exists() and not any(WORK.iterdir()) and WORK.rmdir())
PROCS = []
CLEANUP = []


def _port_range():
    """Ports below the kernel's ephemeral range (as tests/src/process.rs):
    a released bind(0) port can become an outgoing connection's source port
    before the server binds it; below that range only a listener holds one."""
    try:
        lo, hi = map(int, open("/proc/sys/net/ipv4/ip_local_port_range").read().split())
    except (OSError, ValueError):
        lo, hi = 32768, 60999
    if lo >= 12000:
        return 10000, lo
    return (hi + 1, 65535) if hi < 63000 else (10000, 32000)


def _candidate_ports():
    """Each port of the range once, from a start that differs per process."""
    lo, hi = _port_range()
    start = os.getpid() * 7919
    for i in range(hi - lo):
        yield lo + (start + i) % (hi - lo)


_PORTS = _candidate_ports()


def take_option(args, name):
    """Remove `name VALUE` from the argument list `args` and return VALUE
    (None if `name` is absent). The bench scripts' own options."""
    if name not in args:
        return None
    i = args.index(name)
    if i + 1 >= len(args):
        raise SystemExit(f"{name}: a value is needed")
    value = args[i + 1]
    del args[i:i + 2]
    return value


def free_port():
    """A port nobody listens on, handed out once per run, checked by binding."""
    for port in _PORTS:
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise SystemExit(f"no free port left in {_port_range()}")


def wait_port(port, timeout=30):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"port {port} did not open within {timeout}s")


def spawn(name, args, cpu, env=None):
    log = open(WORK / f"{name}.log", "w")
    p = subprocess.Popen(["taskset", "-c", str(cpu)] + args, stdout=log, stderr=subprocess.STDOUT,
                         env={**os.environ, **(env or {})}, start_new_session=True)
    PROCS.append(p)
    return p


def as_pg(args):
    return (["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []) + args


def cpu_ticks(pids):
    """(user, kernel) clock ticks of the given processes, all threads."""
    user = kernel = 0
    for pid in pids:
        try:
            fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
            user += int(fields[11])  # utime
            kernel += int(fields[12])  # stime
        except OSError:
            pass
    return user, kernel


def children(pid):
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()
    return [int(x) for x in out]


def rss_kib(pid):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def metric(admin_port, name, without=None):
    """The sum of a metric's series, leaving out those whose labels contain
    `without` (e.g. `listener="admin"`: the scrape's own connection)."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{admin_port}/metrics", timeout=10).read().decode()
    return sum(float(l.rsplit(" ", 1)[1]) for l in text.splitlines()
               if (l.startswith(name + " ") or l.startswith(name + "{")) and not (without and without in l))


# ---------------------------------------------------------------- setup

def setup_database():
    pgbin = sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=lambda p: int(p.parent.name))[-1]
    data = WORK / "pg"
    data.mkdir()
    if os.geteuid() == 0:
        shutil.chown(WORK, "postgres")
        shutil.chown(data, "postgres")
    subprocess.run(as_pg([str(pgbin / "initdb"), "-A", "trust", "-U", "postgres", "--no-sync", "-D", str(data / "d")]),
                   check=True, capture_output=True)
    port = free_port()
    # The database is a backend: CPU 1, never on the proxy's core.
    subprocess.run(["taskset", "-c", "1"] + as_pg([str(pgbin / "pg_ctl"), "-D", str(data / "d"), "-l", str(data / "log"), "-w", "-o",
                          f"-p {port} -c listen_addresses=127.0.0.1 -c unix_socket_directories='{data}' -c fsync=off",
                          "start"]), check=True, capture_output=True)
    CLEANUP.append(as_pg([str(pgbin / "pg_ctl"), "-D", str(data / "d"), "-m", "immediate", "stop"]))
    url = f"postgres://postgres@127.0.0.1:{port}/postgres"
    env = {**os.environ, "DATABASE_URL": url}
    subprocess.run([str(REL / "upstream-app"), "migrate"], check=True, env=env, capture_output=True)
    sql = f"""
      INSERT INTO public.tenants (schema_name, name)
        SELECT 't' || lpad(i::text, 4, '0'), 'Tenant ' || i FROM generate_series(1, {TENANTS}) i;
      INSERT INTO public.domains (domain, tenant_id, is_primary)
        SELECT schema_name || '.myapp.bench', id, true FROM public.tenants;
      INSERT INTO public.domains (domain, tenant_id)
        SELECT 'www.shop' || lpad(i::text, 3, '0') || '.bench', i FROM generate_series(1, {CUSTOM}) i;
    """
    subprocess.run([str(pgbin / "psql"), "-q", "-v", "ON_ERROR_STOP=1", "-d", url, "-c", sql], check=True)
    return pgbin, data, url


def make_certs():
    """One P-256 wildcard certificate for every peer. It also names 127.0.0.1:
    wrk and h2load connect to an IP and send no SNI, and Caddy only falls
    back to a certificate whose names cover the connection's address."""
    certs = WORK / "certs"
    certs.mkdir()
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                    "-keyout", str(certs / "wildcard.key"), "-out", str(certs / "wildcard.pem"), "-days", "7",
                    "-subj", "/CN=myapp.bench",
                    "-addext", "subjectAltName=DNS:*.myapp.bench,DNS:myapp.bench,IP:127.0.0.1"],
                   check=True, capture_output=True)
    return certs


def hosts():
    tenants = [(f"t{i:04d}.myapp.bench", f"t{i:04d}") for i in range(1, TENANTS + 1)]
    custom = [(f"www.shop{i:03d}.bench", f"t{i:04d}") for i in range(1, CUSTOM + 1)]
    return tenants + custom


def write_lua(host_file, name="hosts.lua", start="math.random(#hosts)", limit=None):
    """A wrk script cycling through the hosts in `host_file` (with a spoofed
    X-Tenant), starting after the Lua expression `start`. `limit`: the
    thread stops once that many responses have come back (wrk otherwise
    runs by time), so a count under valgrind spreads the connections'
    set-up over the same number of requests every run."""
    lua = WORK / name
    stop = "" if limit is None else f"""
local answered = 0
response = function(status, headers, body)
  answered = answered + 1
  if answered == {int(limit)} then wrk.thread:stop() end
end
"""
    lua.write_text(stop + f"""
local hosts = {{}}
for line in io.lines("{host_file}") do hosts[#hosts + 1] = line end
local i = {start}
request = function()
  i = i % #hosts + 1
  -- wrk.format replaces wrk.headers with this table: keep -H headers (Connection: close).
  local h = {{}}
  for k, v in pairs(wrk.headers) do h[k] = v end
  h["Host"] = hosts[i]
  h["X-Tenant"] = "spoofed"
  return wrk.format("GET", "/", h)
end
""")
    return lua


def hosts_lua(n_hosts=None, limit=None):
    """wrk's script cycling through the first `n_hosts` hosts (all by
    default); `limit`: see `write_lua`."""
    host_file = WORK / "hosts.txt"
    host_file.write_text("".join(h + "\n" for h, _ in hosts()[:n_hosts]))
    return write_lua(host_file, name="hosts.lua" if limit is None else "hosts-limited.lua", limit=limit)


def setup_rig(n_hosts=1000):
    """Database, certificates, a wrk script over the first `n_hosts` hosts and
    the two backends: what every side scenario (stress, limits) starts from."""
    pgbin, _, url = setup_database()
    certs = make_certs()
    return pgbin, url, certs, hosts_lua(n_hosts), start_backends()


# Per-tenant limits far above any load here: every request is checked, none refused.
LIMITS_ON = """
[limits.tenant]
rps = 10000000
max_concurrent = 1000000
[limits.client]
rps = 10000000
"""


def start_backends(name="backend", server='location / { return 200 "ok\\n"; }', http=""):
    """One nginx on CPU 1 with two servers, each with `server`'s directives
    besides its `listen` (by default: 200 and "ok" to anything), `http`
    added to its `http` block; their ports."""
    ports = [free_port(), free_port()]
    servers = "\n".join(f"server {{ listen 127.0.0.1:{p}; {server} }}" for p in ports)
    conf = WORK / f"{name}-nginx.conf"
    conf.write_text(f"""
worker_processes 1; daemon off; pid {WORK}/{name}.pid; error_log {WORK}/{name}-error.log;
events {{ worker_connections 4096; }}
http {{ access_log off; {http} keepalive_requests 1000000; {servers} }}
""")
    spawn(f"{name}s", ["nginx", "-c", str(conf)], 1)
    for p in ports:
        wait_port(p)
    return ports


# ---------------------------------------------------------------- peers

class Peer:
    name = ""
    pid = None

    def pids(self):
        return [self.pid] + children(self.pid)


class Gateway(Peer):
    name = "tenant-gateway"

    def __init__(self, url, backends, certs, extra="", log_filter=None, binary=None, tag=None):
        """`log_filter`: RUST_LOG (default LOG_FILTER, no access lines);
        `binary`: another build's gateway; `tag`: names its log file, for
        more than one gateway at once."""
        self.http, self.tls, self.admin = free_port(), free_port(), free_port()
        cfg = WORK / "gateway.toml"
        cfg.write_text(f"""
[listen]
http = "127.0.0.1:{self.http}"
admin = "127.0.0.1:{self.admin}"
threads = 1
shutdown_grace_secs = 1
[tenant]
base_domains = ["myapp.bench"]
{extra}
[tls]
listen = "127.0.0.1:{self.tls}"
certificates = [{{ cert_file = "{certs}/wildcard.pem", key_file = "{certs}/wildcard.key" }}]
unknown_sni = "default"
default_certificate = {{ cert_file = "{certs}/wildcard.pem", key_file = "{certs}/wildcard.key" }}
redirect_http = false
session_resumption = false
# The 100 custom domains route as rows (no claims): claims are read in the
# same lookup query, so they change cache misses only, not the cached path.
[custom_domains]
verification = "none"
[pools.default]
backends = ["127.0.0.1:{backends[0]}", "127.0.0.1:{backends[1]}"]
""")
        env = {"DATABASE_URL": url, "TG_STAMP_KEY_K1": "bench-secret-0123456789abcdef",
               "RUST_LOG": log_filter or LOG_FILTER}
        self.pid = spawn(f"gateway-{tag}" if tag else "gateway", [str(binary or REL / "gateway"), "--config", str(cfg)],
                         0, env).pid
        wait_port(self.tls)
        wait_port(self.http)


# The log filter of both Pingora-based peers: the same filter, so neither
# pays for events or spans the other skips.
LOG_FILTER = "warn,rustls=error"


class BarePingora(Peer):
    """Pingora with no tenancy (gateway/examples/bare_pingora.rs): the floor
    our gateway is built on. It maps nothing, so unknown hosts are not
    refused: a reference, not a competitor. HTTPS (with certs) goes through
    the gateway's own TLS listener, as pingora-core here has no TLS."""
    name = "pingora (no tenancy)"

    def __init__(self, backends, timeouts=False, certs=None):
        self.http, self.tls = free_port(), (free_port() if certs else None)
        if timeouts:
            # The same peer with the gateway's default upstream timeouts.
            self.name = "pingora (no tenancy, upstream timeouts)"
        # HTTPS through the gateway's own TLS listener (see bare_pingora.rs).
        tls = ["--tls", f"127.0.0.1:{self.tls}", f"{certs}/wildcard.pem", f"{certs}/wildcard.key"] if certs else []
        self.pid = spawn("bare-timeouts" if timeouts else "bare",
                         [str(REL / "examples" / "bare_pingora")] + (["--timeouts"] if timeouts else []) + tls
                         + [f"127.0.0.1:{self.http}"] + [f"127.0.0.1:{b}" for b in backends], 0,
                         {"RUST_LOG": LOG_FILTER}).pid
        wait_port(self.http)
        if self.tls:
            wait_port(self.tls)


class Nginx(Peer):
    name = "nginx"

    def __init__(self, backends, certs):
        self.http, self.tls = free_port(), free_port()
        maps = "\n".join(f"{h} {t};" for h, t in hosts())
        conf = WORK / "nginx.conf"
        conf.write_text(f"""
worker_processes 1; daemon off; pid {WORK}/nginx.pid; error_log {WORK}/nginx-error.log;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  map_hash_bucket_size 128;
  map $host $tenant {{ hostnames; default ""; {maps} }}
  upstream backends {{ server 127.0.0.1:{backends[0]}; server 127.0.0.1:{backends[1]}; keepalive 64; }}
  ssl_certificate {certs}/wildcard.pem; ssl_certificate_key {certs}/wildcard.key;
  ssl_protocols TLSv1.2 TLSv1.3; ssl_session_cache off; ssl_session_tickets off;
  server {{
    listen 127.0.0.1:{self.http}; listen 127.0.0.1:{self.tls} ssl http2;
    keepalive_requests 1000000;
    location / {{
      if ($tenant = "") {{ return 404; }}
      proxy_http_version 1.1; proxy_set_header Connection "";
      proxy_set_header X-Tenant $tenant;
      proxy_pass http://backends;
    }}
  }}
}}
""")
        self.pid = spawn("nginx", ["nginx", "-c", str(conf)], 0).pid
        wait_port(self.tls)

    def pids(self):
        return children(self.pid) + [self.pid]


class Haproxy(Peer):
    name = "haproxy"

    def __init__(self, backends, certs):
        self.http, self.tls = free_port(), free_port()
        (WORK / "hosts.map").write_text("".join(f"{h} {t}\n" for h, t in hosts()))
        pem = WORK / "haproxy.pem"
        pem.write_text((certs / "wildcard.pem").read_text() + (certs / "wildcard.key").read_text())
        conf = WORK / "haproxy.cfg"
        conf.write_text(f"""
global
  nbthread 1
  tune.ssl.cachesize 0
  maxconn 4000
defaults
  mode http
  timeout connect 5s
  timeout client 30s
  timeout server 30s
  option http-keep-alive
frontend fe
  bind 127.0.0.1:{self.http}
  bind 127.0.0.1:{self.tls} ssl crt {pem} alpn h2,http/1.1 no-tls-tickets
  http-request set-var(txn.tenant) req.hdr(host),field(1,:),lower,map_str({WORK}/hosts.map)
  http-request return status 404 if !{{ var(txn.tenant) -m found }}
  http-request del-header X-Tenant
  http-request set-header X-Tenant %[var(txn.tenant)]
  default_backend be
backend be
  balance roundrobin
  http-reuse always
  server b1 127.0.0.1:{backends[0]}
  server b2 127.0.0.1:{backends[1]}
""")
        self.pid = spawn("haproxy", ["haproxy", "-f", str(conf)], 0).pid
        wait_port(self.tls)


class Caddy(Peer):
    name = "caddy"

    def __init__(self, backends, certs):
        self.http, self.tls = free_port(), free_port()
        mappings = [{"input": h, "outputs": [t]} for h, t in hosts()]
        route = [
            {"handle": [{"handler": "map", "source": "{http.request.host}", "destinations": ["{tenant}"],
                         "mappings": mappings, "defaults": [""]}]},
            {"match": [{"expression": "{tenant} == ''"}], "handle": [{"handler": "static_response", "status_code": 404}],
             "terminal": True},
            {"handle": [{"handler": "reverse_proxy",
                         "headers": {"request": {"set": {"X-Tenant": ["{tenant}"]}, "delete": ["X-Tenant-*"]}},
                         "upstreams": [{"dial": f"127.0.0.1:{b}"} for b in backends]}]},
        ]
        cfg = {
            "admin": {"disabled": True},
            "apps": {
                "http": {"servers": {
                    "plain": {"listen": [f"127.0.0.1:{self.http}"], "routes": route, "automatic_https": {"disable": True}},
                    "tls": {"listen": [f"127.0.0.1:{self.tls}"], "routes": route, "automatic_https": {"disable": True},
                            "tls_connection_policies": [{"default_sni": "t0001.myapp.bench"}]},
                }},
                "tls": {"certificates": {"load_files": [{"certificate": str(certs / "wildcard.pem"),
                                                          "key": str(certs / "wildcard.key")}]},
                        "session_tickets": {"disabled": True}},
            },
        }
        path = WORK / "caddy.json"
        path.write_text(json.dumps(cfg))
        self.pid = spawn("caddy", ["caddy", "run", "--config", str(path)], 0,
                         {"GOMAXPROCS": "1", "HOME": str(WORK), "XDG_DATA_HOME": str(WORK)}).pid
        wait_port(self.tls)


class Direct(Peer):
    """The ceiling: the load generator straight at one backend (no proxy, no mapping)."""
    name = "direct"

    def __init__(self, backends):
        self.http, self.tls = backends[0], None
        self.pid = None

    def pids(self):
        return []


# ---------------------------------------------------------------- load

def wrk(url, conns, lua=None, headers=()):
    args = ["taskset", "-c", "1", "wrk", "-t1", f"-c{conns}", f"-d{DURATION}s", "--latency", "--timeout", "5s"]
    for h in headers:
        args += ["-H", h]
    if lua:
        args += ["-s", str(lua)]
    out = subprocess.run(args + [url], capture_output=True, text=True, timeout=DURATION + 30).stdout
    reqs = int(re.search(r"(\d+) requests in", out).group(1))
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errs = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    return {"requests": reqs, "rps": rps, "p50": lat(out, "50%"), "p99": lat(out, "99%"),
            "errors": (int(bad.group(1)) if bad else 0) + (sum(map(int, errs.groups())) if errs else 0)}


def lat(out, pct):
    m = re.search(rf"{re.escape(pct)}\s+([\d.]+)(us|ms|s)", out)
    if not m:
        return float("nan")
    return float(m.group(1)) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[m.group(2)]


def h2load(port):
    # h2load prints no percentiles. Its --log-file durations disagree with
    # its own mean and with Little's law (128 streams / req/s), so we report
    # the mean time per request and no p99.
    args = ["taskset", "-c", "1", "h2load", "-c16", "-m8", f"-D{DURATION}",
            "-H", ":authority: t0001.myapp.bench", f"https://127.0.0.1:{port}/"]
    out = subprocess.run(args, capture_output=True, text=True, timeout=DURATION + 30).stdout
    m = re.search(r"requests: \d+ total, \d+ started, (\d+) done, (\d+) succeeded, (\d+) failed", out)
    rps = float(re.search(r"finished in [\d.]+\w+, ([\d.]+) req/s", out).group(1))
    mean = re.search(r"time for request:\s+\S+\s+\S+\s+([\d.]+)(us|ms|s)", out)
    mean_ms = float(mean.group(1)) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[mean.group(2)] if mean else float("nan")
    return {"requests": int(m.group(1)), "rps": rps, "p50": mean_ms, "p99": float("nan"),
            "errors": int(m.group(3)) + (int(m.group(1)) - int(m.group(2)))}


def h2load_many(port, tenants=8):
    """HTTP/2 with many tenants: one h2load per tenant (h2load sends one
    :authority per run), all at once, 2 connections × 8 streams each;
    requests and req/s summed, the mean time per request averaged."""
    procs = [subprocess.Popen(["taskset", "-c", "1", "h2load", "-c2", "-m8", f"-D{DURATION}",
                               "-H", f":authority: t{i:04d}.myapp.bench", f"https://127.0.0.1:{port}/"],
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
             for i in range(1, tenants + 1)]
    total = {"requests": 0, "rps": 0.0, "errors": 0}
    means = []
    for p in procs:
        out = p.communicate(timeout=DURATION + 30)[0]
        m = re.search(r"requests: \d+ total, \d+ started, (\d+) done, (\d+) succeeded, (\d+) failed", out)
        total["requests"] += int(m.group(1))
        total["errors"] += int(m.group(3)) + (int(m.group(1)) - int(m.group(2)))
        total["rps"] += float(re.search(r"finished in [\d.]+\w+, ([\d.]+) req/s", out).group(1))
        mean = re.search(r"time for request:\s+\S+\s+\S+\s+([\d.]+)(us|ms|s)", out)
        if mean:
            means.append(float(mean.group(1)) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[mean.group(2)])
    return {**total, "p50": statistics.mean(means) if means else float("nan"), "p99": float("nan")}


PEER_NAMES = ("nginx", "haproxy", "caddy")

SCENARIOS = [
    ("HTTP/1.1 keep-alive, 16 conns", lambda p, lua: wrk(f"http://127.0.0.1:{p.http}/", 16, lua)),
    ("HTTP/1.1 keep-alive, 128 conns", lambda p, lua: wrk(f"http://127.0.0.1:{p.http}/", 128, lua)),
    ("HTTPS keep-alive, 16 conns", lambda p, lua: wrk(f"https://127.0.0.1:{p.tls}/", 16, lua)),
    ("new TLS connection per request", lambda p, lua: wrk(f"https://127.0.0.1:{p.tls}/", 16, lua, ["Connection: close"])),
    ("HTTP/2 over TLS (h2load, 16x8 streams)", lambda p, lua: h2load(p.tls)),
    ("HTTP/2 over TLS, 8 tenants (8 h2load x 2x8 streams)", lambda p, lua: h2load_many(p.tls)),
]


def measure(peer, fn, lua):
    pids = peer.pids()
    (u0, k0), t0 = cpu_ticks(pids), time.monotonic()
    r = fn(peer, lua)
    (u1, k1), wall = cpu_ticks(pids), time.monotonic() - t0
    user, kernel = (u1 - u0) / TICK, (k1 - k0) / TICK
    per_req = lambda secs: secs * 1e6 / r["requests"] if pids and r["requests"] else float("nan")
    r["cpu_pct"] = 100.0 * (user + kernel) / wall if pids else float("nan")
    r["cpu_us_per_req"] = per_req(user + kernel)
    # The split shows what no proxy can avoid: the kernel's share (socket
    # calls and loopback TCP) is about the same for every proxy doing the
    # same reads and writes; the user share is the proxy's own code.
    r["user_us_per_req"] = per_req(user)
    r["kernel_us_per_req"] = per_req(kernel)
    return r


def keep_alive_rig():
    """What an interleaved comparison starts from: (database URL,
    certificates, wrk's Lua script over the tenants' hosts, backend ports)."""
    _, _, url = setup_database()
    certs = make_certs()
    return url, certs, hosts_lua(), start_backends()


def interleaved(peers, fn, lua, rounds, title):
    """CPU µs per request of each peer (by name) over `rounds` rounds, each
    measuring every peer back to back, the order rotated so that no peer
    always runs first: a ratio within a round cancels the VM's drift."""
    cpu = {p.name: [] for p in peers}
    for i in range(rounds):
        k = i % len(peers)
        for p in peers[k:] + peers[:k]:
            r = measure(p, fn, lua)
            if r["errors"]:
                raise SystemExit(f"{p.name}: {r['errors']} errors in {title}")
            cpu[p.name].append(r["cpu_us_per_req"])
    return cpu


def medians_of_two(pair, go, what):
    """Each of the two gateways in `pair` (by name): the medians of REPS
    measurements of `go(peer)` (wrk's result), after a warm-up of each,
    which goes first alternating by round. A measurement wrk counts errors
    in stops the run (`what` names the load): its numbers would not be of
    these responses."""
    for p in pair:
        go(p)
    runs = {p.name: [] for p in pair}
    for i in range(REPS):
        for p in (pair if i % 2 == 0 else pair[::-1]):
            r = measure(p, lambda q, _lua: go(q), None)
            if r["errors"]:
                raise SystemExit(f"{p.name}, {what}: wrk counted {r['errors']} errors")
            runs[p.name].append(r)
    return {n: {k: statistics.median([r[k] for r in rs]) for k in rs[0]} for n, rs in runs.items()}


def body_row(size, name, m):
    """A table row of a body's size and one gateway's medians (bench/held.py, bench/uploads.py)."""
    return (f"| {size >> 10} KiB | {name} | {fmt(m['rps'], 0)} | {fmt(m['p50'], 2)} | {fmt(m['p99'], 2)} | "
            f"{fmt(m['cpu_us_per_req'])} | {fmt(m['user_us_per_req'])} | {m['errors']:.0f} |")


BODY_TABLE = ["| body | gateway | req/s | p50 ms | p99 ms | CPU µs/req | user µs/req | errors |",
              "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |"]


def peer_rows(items):
    """A scenario's rows of the other proxies (not us, not the no-tenancy
    floor, not the direct ceiling) that had no errors."""
    return [(n, m) for n, m in items if n in PEER_NAMES and not m["errors"]]


def cheapest_peer(items):
    """(name, row) of the peer with the least CPU per request, or None."""
    measured = [(n, m) for n, m in peer_rows(items) if m["cpu_us_per_req"] == m["cpu_us_per_req"]]
    return min(measured, key=lambda x: x[1]["cpu_us_per_req"], default=None)


def fmt(x, nd=1):
    return "n/a" if x != x else f"{x:,.{nd}f}"


def main():
    if not (REL / "gateway").exists():
        raise SystemExit("build first: cargo build --release (bench/run.sh does)")
    started = time.time()
    pgbin, pgdata, url = setup_database()
    certs = make_certs()
    lua = hosts_lua()
    backends = start_backends()
    if "--lookup-only" in sys.argv:
        # Only the gateway's own runs: lookup-bound and memory.
        cold = cold_cache(url, backends, certs, lua)
        mem = memory(url, backends, certs, pgbin)
        print(f"## Lookup-bound run\n\n{cold}\n\n## Memory\n\n{mem}")
        return
    peers = [Gateway(url, backends, certs), Nginx(backends, certs), Haproxy(backends, certs)]
    try:
        peers.append(Caddy(backends, certs))
    except SystemExit as e:
        print(f"caddy did not start ({e}); see {WORK}/caddy.log", file=sys.stderr)
    direct = Direct(backends)
    bares = [BarePingora(backends, certs=certs), BarePingora(backends, timeouts=True, certs=certs)]
    if "--serve" in sys.argv:
        # For profiling: leave everything running until interrupted.
        for p in peers + bares:
            print(f"{p.name}: pid {p.pid} http {p.http} tls {p.tls}", flush=True)
        print(f"lua script: {lua}; database: {url}", flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            return
    # Warm every proxy (and the gateway's tenant cache) once.
    for p in peers + bares:
        wrk(f"http://127.0.0.1:{p.http}/", 16, lua)

    rows = []
    for title, fn in SCENARIOS:
        runs = {p.name: [] for p in peers + bares + [direct]}
        for _ in range(REPS):
            for p in peers + bares + ([direct] if "HTTP/1.1" in title else []):
                runs[p.name].append(measure(p, fn, lua if p is not direct else None))
        for name, rs in runs.items():
            if not rs:
                continue
            med = {k: statistics.median([r[k] for r in rs]) for k in rs[0]}
            rows.append((title, name, med))
        print(f"done: {title}", file=sys.stderr)

    # Lookup-bound: 100,000 distinct hosts, most unknown, against a cold gateway.
    cold = cold_cache(url, backends, certs, lua)
    mem = memory(url, backends, certs, pgbin)

    lines = [f"# Benchmark results ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())})", "",
             f"Machine: {os.cpu_count()} cores, {open('/proc/cpuinfo').read().split('model name')[1].split(':')[1].splitlines()[0].strip()}; "
             f"{DURATION}s per measurement, median of {REPS}; proxy pinned to CPU 0 with 1 worker, wrk/h2load and backends on CPU 1.",
             "", "| scenario | peer | req/s | p50 ms | p99 ms | proxy CPU % | CPU µs/req | user µs/req | kernel µs/req | CPU/req vs best peer | req/s vs best peer | errors |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    by_scn = {}
    for title, name, med in rows:
        by_scn.setdefault(title, []).append((name, med))
    for title, items in by_scn.items():
        best = cheapest_peer(items)
        best_cpu = best[1]["cpu_us_per_req"] if best else float("nan")
        best_rps = max((m["rps"] for _, m in peer_rows(items)), default=float("nan"))
        for name, m in items:
            cpu_ratio = m["cpu_us_per_req"] / best_cpu
            rps_ratio = m["rps"] / best_rps
            lines.append(f"| {title} | {name} | {fmt(m['rps'], 0)} | {fmt(m['p50'], 2)} | {fmt(m['p99'], 2)} | "
                         f"{fmt(m['cpu_pct'])} | {fmt(m['cpu_us_per_req'], 1)} | {fmt(m['user_us_per_req'], 1)} | "
                         f"{fmt(m['kernel_us_per_req'], 1)} | {fmt(cpu_ratio, 2)} | {fmt(rps_ratio, 2)} | "
                         f"{int(m['errors'])} |")
    lines += ["", "tenant-gateway's CPU per request over bare Pingora (target ≤ 1.10), same run:", ""]
    for title, items in by_scn.items():
        row = dict(items)
        ours = row.get(Gateway.name)
        floors = [(n, m) for n, m in items if n.startswith("pingora (no tenancy")]
        if ours and floors:
            lines.append(f"- {title}: " + "; ".join(
                f"{fmt(ours['cpu_us_per_req'] / m['cpu_us_per_req'], 2)}× {n} ({fmt(m['cpu_us_per_req'])} µs)"
                for n, m in floors))
    lines += ["", "What 0.8× the best peer leaves for user-space work (if the proxy's kernel time equalled the best peer's):", ""]
    for title, items in by_scn.items():
        best = cheapest_peer(items)
        if not best:
            continue
        n, m = best
        ours = dict(items).get(Gateway.name)
        room = 0.8 * m["cpu_us_per_req"] - m["kernel_us_per_req"]
        lines.append(f"- {title}: best peer {n} {fmt(m['cpu_us_per_req'])} µs ({fmt(m['kernel_us_per_req'])} in the kernel); "
                     f"0.8× leaves {fmt(room)} µs of user time; tenant-gateway uses "
                     f"{fmt(ours['user_us_per_req']) if ours else 'n/a'} µs user, {fmt(ours['kernel_us_per_req']) if ours else 'n/a'} µs kernel.")
    lines += ["", "HTTP/2 rows: one tenant per h2load (it sends one :authority per run; the 8-tenant row runs eight at once); the p50 column is h2load's mean time per request, no p99.", "",
              "## Lookup-bound run (gateway only)", "", cold, "", "## Memory with 100,000 cached domains", "", mem, "",
              f"Total run time: {time.time() - started:.0f}s"]
    text = "\n".join(lines) + "\n"
    print(text)
    (ROOT / "bench" / "results-latest.md").write_text(text)


def start_walker(port, lua):
    """16 connections walking the distinct-host list once, on CPU 1."""
    return subprocess.Popen(["taskset", "-c", "1", "wrk", "-t1", "-c16", f"-d{DURATION}s", "-s", str(lua),
                             f"http://127.0.0.1:{port}/"], stdout=subprocess.PIPE, text=True)


def cold_cache(url, backends, certs, lua):
    gw = Gateway(url, backends, certs)
    distinct = WORK / "cold.txt"
    known = [h for h, _ in hosts()]
    names = [f"u{i:06d}.unknown.bench" for i in range(100_000 - len(known))] + known
    import random
    random.Random(7).shuffle(names)
    distinct.write_text("".join(n + "\n" for n in names))
    cold_lua = write_lua(distinct, "cold.lua", "0")
    q0 = metric(gw.admin, "tenant_gateway_db_queries_total")
    wrk(f"http://127.0.0.1:{gw.http}/", 16, lua)  # warms the known tenants
    q1 = metric(gw.admin, "tenant_gateway_db_queries_total")
    warm = wrk(f"http://127.0.0.1:{gw.http}/", 4, lua)  # warm-cache p99, same load as below
    # Known-tenant latency while a second client walks 100,000 distinct hosts.
    walker = start_walker(gw.http, cold_lua)
    during = wrk(f"http://127.0.0.1:{gw.http}/", 4, lua)
    walked = walker.communicate()[0]
    walked_reqs = int(re.search(r"(\d+) requests in", walked).group(1))
    q2 = metric(gw.admin, "tenant_gateway_db_queries_total")
    distinct_seen = min(walked_reqs, len(names))
    # The rig's own floor: the same load without the gateway in the known
    # path (straight to a backend) while a fresh walker runs against a fresh
    # gateway. On 2 cores the walker's client and the database share CPU 1
    # with the known-tenant client and the backends, which moves p99 by itself.
    os.killpg(gw.pid, 9)
    gw = Gateway(url, backends, certs)
    direct_warm = wrk(f"http://127.0.0.1:{backends[0]}/", 4, lua)
    walker = start_walker(gw.http, cold_lua)
    direct_during = wrk(f"http://127.0.0.1:{backends[0]}/", 4, lua)
    walker.communicate()
    os.killpg(gw.pid, 9)
    return (f"- Warm-up over the 1,100 known hosts: {int(q1 - q0)} queries.\n"
            f"- Walker: {walked_reqs:,} requests over {distinct_seen:,} distinct hosts (~{100 * (1 - len(known) / len(names)):.0f}% unknown): "
            f"{int(q2 - q1)} database queries (target: at most one per distinct name).\n"
            f"- Known tenants through the gateway: warm {fmt(warm['rps'], 0)} req/s, p50 {fmt(warm['p50'], 2)} ms, "
            f"p99 {fmt(warm['p99'], 2)} ms; during the walk {fmt(during['rps'], 0)} req/s, p50 {fmt(during['p50'], 2)} ms, "
            f"p99 {fmt(during['p99'], 2)} ms (p99 {during['p99'] / warm['p99']:.1f}x; target: within 2x).\n"
            f"- Rig floor, the same known-tenant load straight to a backend: p99 {fmt(direct_warm['p99'], 2)} ms alone, "
            f"{fmt(direct_during['p99'], 2)} ms while a walker runs against the gateway.")


def memory(url, backends, certs, pgbin):
    """RSS growth per cached domain, two ways: from a warmed-up gateway with a
    few thousand domains to 100,000 (includes the tables' spare capacity), and
    the slope between half and all of them (fixed costs cancel out, but a
    table that doubled just before the first sample hides its growth). The
    larger one is held against the target. Every extra domain has its own tenant,
    so the per-domain tenant record counts as overhead."""
    extra = 100_000 - TENANTS - CUSTOM
    subprocess.run([str(pgbin / "psql"), "-q", "-v", "ON_ERROR_STOP=1", "-d", url, "-c", f"""
        INSERT INTO public.tenants (schema_name, name)
          SELECT 'm' || lpad(i::text, 6, '0'), 'Mem ' || i FROM generate_series(1, {extra}) i;
        INSERT INTO public.domains (domain, tenant_id, is_primary)
          SELECT schema_name || '.mem.bench', id, true FROM public.tenants WHERE schema_name LIKE 'm%';"""],
                   check=True)
    names = [(h, t) for h, t in hosts()] + [(f"m{i:06d}.mem.bench", f"m{i:06d}") for i in range(1, extra + 1)]
    f = WORK / "mem.txt"
    f.write_text("".join(n + "\n" for n, _ in names))
    # One pass over the list, continuing where the previous wrk run stopped.
    mem_lua = write_lua(f, "mem.lua", 'tonumber(os.getenv("START") or "0")')
    # Per-tenant metric series are a separately bounded cost (metrics.max_tenant_labels,
    # ~0.6 KB of counters per label plus its share of every /metrics response, which
    # this run polls); keep them small so the figure is the cache's.
    gw = Gateway(url, backends, certs, "[tenant.cache]\nmax_entries = 200000\n[metrics]\nmax_tenant_labels = 100")
    # Warm-up: one short pass (lookups, proxying, upstream connections, the
    # allocator's per-thread heaps) so that the first sample has paid the
    # fixed costs; it caches the first few thousand domains.
    out = subprocess.run(["taskset", "-c", "1", "wrk", "-t1", "-c8", "-d2s", "-s", str(mem_lua),
                          f"http://127.0.0.1:{gw.http}/"], capture_output=True, text=True,
                         env={**os.environ, "START": "0"}).stdout
    done = int(re.search(r"(\d+) requests in", out).group(1))
    half = len(names) // 2
    samples = {0: (metric(gw.admin, "tenant_gateway_cache_entries"), rss_kib(gw.pid))}
    deadline = time.time() + 180
    for target in (half, len(names)):
        while metric(gw.admin, "tenant_gateway_cache_entries") < target and time.time() < deadline:
            out = subprocess.run(["taskset", "-c", "1", "wrk", "-t1", "-c8", "-d2s", "-s", str(mem_lua),
                                  f"http://127.0.0.1:{gw.http}/"], capture_output=True, text=True,
                                 env={**os.environ, "START": str(done)}).stdout
            done += int(re.search(r"(\d+) requests in", out).group(1))
        samples[target] = (metric(gw.admin, "tenant_gateway_cache_entries"), rss_kib(gw.pid))
    os.killpg(gw.pid, 9)
    (e0, r0), (e1, r1), (e2, r2) = samples[0], samples[half], samples[len(names)]
    strings = sum(len(n) + len(t) for n, t in names) / len(names)  # host key + schema name
    whole = (r2 - r0) * 1024 / max(e2 - e0, 1)
    slope = (r2 - r1) * 1024 / max(e2 - e1, 1)
    per = max(whole, slope)
    return (f"- {int(e0):,} → {int(e1):,} → {int(e2):,} cached domains (each its own tenant): RSS {r0 / 1024:.1f} → "
            f"{r1 / 1024:.1f} → {r2 / 1024:.1f} MiB: {whole:.0f} bytes per domain from the first sample, {slope:.0f} on the second "
            f"half; of each, {strings:.0f} are the host and schema strings: "
            f"**{per - strings:.0f} bytes of overhead per domain** (the larger; target: under 200).")


def cleanup():
    """Stop everything this run started (by process group) and the database."""
    for p in PROCS:
        try:
            os.killpg(p.pid, 9)
        except OSError:
            pass
    for cmd in CLEANUP:
        subprocess.run(cmd, capture_output=True)


if __name__ == "__main__":
    # SIGTERM (and SIGINT, which a shell's background job ignores) must
    # still stop every peer: exit through `finally`.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        main()
    finally:
        cleanup()
