#!/usr/bin/env python3
"""Certificates at SaaS scale (issue #18), after bench/run.sh has built release.

100,000 custom domains, each with its own real certificate (P-256, signed by
a local CA generated here, key sealed with AES-256-GCM exactly as the
gateway stores it), inserted in bulk into `tenant_gateway.certificates`,
with a domain row and an active claim each, over the benchmark's 1,000
tenants. The gateway (one thread, CPU 0) has ACME on with nothing due.
Measured, with the certificate cache bounded at 10,000:

- start-up to ready (`/readyz` answers and the TLS port accepts), also with
  10,000 names stored: it must not depend on the number of names;
- RSS at rest, after touching 10 % and 100 % of the names (one handshake
  each), and next to a gateway with 10,000 names stored, all touched;
- first handshake of a name not in memory vs. a name in memory (p50/p99,
  one handshake at a time from CPU 1);
- database statements per scan with nothing due (the ACME pool's
  statements in PostgreSQL's own log, over several scans);
- a key rotation: `gateway acme rekey` re-sealing every stored key with a
  new key while the gateway serves, and a second pass with nothing to do.

With `--before BINARY` (a gateway built from an earlier commit) the same
100,000 names are measured with it: time until its start-up load of every
certificate finishes, RSS then, statements per scan.

Run: python3 bench/certs_scale.py [--names 100000] [--before /tmp/gateway-before]
Output printed and written to bench/certs-latest.md.
"""

import argparse
import datetime
import multiprocessing
import multiprocessing.pool
import os
import re
import socket
import ssl
import subprocess
import sys
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import run  # noqa: E402  (the benchmark's setup helpers)

from cryptography import x509  # noqa: E402
from cryptography.hazmat.primitives import hashes, serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ec  # noqa: E402
from cryptography.hazmat.primitives.ciphers.aead import AESGCM  # noqa: E402
from cryptography.x509.oid import NameOID  # noqa: E402

SEAL_KEY = bytes(range(32))
CACHE = 10_000


def name_of(i):
    return f"c{i:06d}.scale.bench"


def make_ca():
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "bench scale CA")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=3650))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    return key, cert


def copy_rows(args):
    """COPY text rows for names [lo, hi): name, chain, sealed key, validity."""
    lo, hi, ca_key_pem, ca_cert_pem = args
    ca_key = serialization.load_pem_private_key(ca_key_pem, None)
    ca_cert = x509.load_pem_x509_certificate(ca_cert_pem)
    aead = AESGCM(SEAL_KEY)
    now = datetime.datetime.now(datetime.timezone.utc)
    nb, na = now - datetime.timedelta(days=1), now + datetime.timedelta(days=89)
    out = []
    for i in range(lo, hi):
        name = name_of(i)
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (x509.CertificateBuilder()
                .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
                .issuer_name(ca_cert.subject).public_key(key.public_key())
                .serial_number(x509.random_serial_number()).not_valid_before(nb).not_valid_after(na)
                .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
                .sign(ca_key, hashes.SHA256()))
        chain = cert.public_bytes(serialization.Encoding.PEM) + ca_cert_pem
        key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption())
        nonce = os.urandom(12)
        sealed = nonce + aead.encrypt(nonce, key_pem, f"cert:{name}".encode())
        chain_text = chain.decode().replace("\\", "\\\\").replace("\n", "\\n")
        out.append(f"{name}\t{chain_text}\t\\\\x{sealed.hex()}\t{nb.isoformat()}\t{na.isoformat()}\n")
    return "".join(out)


def populate(pgbin, url, lo, hi):
    """Domain rows, active claims and stored certificates for names lo..=hi."""
    ca_key, ca_cert = make_ca()
    ca_key_pem = ca_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption())
    ca_cert_pem = ca_cert.public_bytes(serialization.Encoding.PEM)
    started = time.time()
    step = 2000
    chunks = [(a, min(a + step, hi + 1), ca_key_pem, ca_cert_pem) for a in range(lo, hi + 1, step)]
    data = run.WORK / "certs.copy"
    with open(data, "w") as f, multiprocessing.Pool(2) as pool:
        for text in pool.imap(copy_rows, chunks):
            f.write(text)
    generated = time.time() - started
    psql = [str(pgbin / "psql"), "-q", "-v", "ON_ERROR_STOP=1", "-d", url]
    subprocess.run(psql + ["-c", f"""
        INSERT INTO public.domains (domain, tenant_id)
          SELECT 'c' || lpad(i::text, 6, '0') || '.scale.bench', 1 + i % {run.TENANTS} FROM generate_series({lo}, {hi}) i;
        INSERT INTO tenant_gateway.custom_hostnames (name, tenant, status, method, token, verify_by, verified_at, activated_at)
          SELECT d.domain, t.schema_name, 'active', 'operator', md5(d.domain), now(), now(), now()
            FROM public.domains d JOIN public.tenants t ON t.id = d.tenant_id
           WHERE d.domain LIKE '%.scale.bench' ON CONFLICT (name) DO NOTHING;"""],
                   check=True)
    subprocess.run(psql + ["-c", "\\copy tenant_gateway.certificates (name, chain_pem, key_enc, not_before, not_after) "
                                 f"FROM '{data}'"], check=True)
    subprocess.run(psql + ["-c", "UPDATE tenant_gateway.certificates SET renew_after = "
                                 "not_before + (not_after - not_before) * 0.63 WHERE renew_after IS NULL",
                           "-c", "VACUUM ANALYZE tenant_gateway.certificates", "-c", "VACUUM ANALYZE public.domains",
                           "-c", "VACUUM ANALYZE tenant_gateway.custom_hostnames"], check=True)
    return generated, time.time() - started


def fresh_database():
    pgbin, _, url = run.setup_database()
    # The gateway's own schema, through its CLI (the migrations it applies at start).
    subprocess.run([str(run.REL / "gateway"), "--config", str(write_config(url, run.free_port(), run.free_port(),
                                                                            run.free_port(), None)),
                    "hostnames", "list"], env=gateway_env(url), check=True, capture_output=True)
    subprocess.run([str(pgbin / "psql"), "-q", "-d", url, "-c", "ALTER SYSTEM SET log_min_duration_statement = 0",
                    "-c", "ALTER SYSTEM SET log_line_prefix = '%a|'", "-c", "SELECT pg_reload_conf()"],
                   check=True, capture_output=True)
    return pgbin, url


def gateway_env(url):
    return {"DATABASE_URL": url, "TG_STAMP_KEY_K1": "bench-secret-0123456789abcdef", "RUST_LOG": "info",
            "TG_CERT_KEY": SEAL_KEY.hex()}


def write_config(url, http, tls, admin, certs, cache=CACHE, name="gateway-scale.toml", acme_extra=""):
    """`cache=None`: no `certificate_cache_size` or `load_rate` key (a gateway from before them)."""
    tls_section = "" if certs is None else f"""
[tls]
listen = "127.0.0.1:{tls}"
certificates = [{{ cert_file = "{certs}/wildcard.pem", key_file = "{certs}/wildcard.key" }}]
redirect_http = false
session_resumption = false
[acme]
enabled = true
directory_url = "https://127.0.0.1:9/dir"
check_interval_secs = 1
{"" if cache is None else f"certificate_cache_size = {cache}"}
{"" if cache is None else "load_rate = 0  # one client touches every name"}
{acme_extra}
"""
    cfg = run.WORK / name
    cfg.write_text(f"""
[listen]
http = "127.0.0.1:{http}"
admin = "127.0.0.1:{admin}"
threads = 1
shutdown_grace_secs = 1
[tenant]
base_domains = ["myapp.bench"]
{tls_section}
[pools.default]
backends = ["127.0.0.1:9"]
health_check_interval_ms = 60000
""")
    return cfg


class ScaleGateway:
    def __init__(self, binary, url, certs, cache=CACHE):
        self.http, self.tls, self.admin = run.free_port(), run.free_port(), run.free_port()
        cfg = write_config(url, self.http, self.tls, self.admin, certs, cache,
                           f"gateway-{self.tls}.toml")
        self.log = run.WORK / f"gateway-{self.tls}.log"
        self.started = started = time.time()
        self.proc = run.spawn(f"gateway-{self.tls}", [str(binary), "--config", str(cfg)], 0, gateway_env(url))
        self.pid = self.proc.pid
        deadline = started + 600
        while time.time() < deadline:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{self.admin}/healthz", timeout=1).read()
                with socket.create_connection(("127.0.0.1", self.tls), timeout=1):
                    break
            except OSError:
                time.sleep(0.01)
        self.ready_secs = time.time() - started

    def gateway_pid(self):
        # run.spawn starts `taskset -c 0 gateway`: taskset execs, same pid.
        return self.pid

    def rss_mib(self):
        return run.rss_kib(self.gateway_pid()) / 1024

    def stop(self):
        try:
            os.killpg(self.pid, 9)
        except OSError:
            pass


def handshake(port, name):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        with ctx.wrap_socket(s, server_hostname=name) as t:
            der = t.getpeercert(binary_form=True)
    return der is not None and name.encode() in der


def timed(port, names):
    out = []
    for n in names:
        t = time.perf_counter()
        ok = handshake(port, n)
        out.append((time.perf_counter() - t) * 1000)
        if not ok:
            raise SystemExit(f"{n}: wrong or no certificate")
    return out


def touch(port, names):
    bad = 0
    with multiprocessing.pool.ThreadPool(8) as pool:
        for ok in pool.imap_unordered(lambda n: handshake(port, n), names, chunksize=64):
            bad += not ok
    if bad:
        raise SystemExit(f"{bad} handshakes without the name's certificate")


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(len(xs) * p / 100))]


def scan_statements(gw, pg_log, scans=8):
    """ACME-pool statements per scan and their server time (ms) per scan,
    over `scans` scans with nothing due (PostgreSQL's duration log)."""
    def count():
        text = open(pg_log, errors="replace").read()
        hits = re.findall(r"^tenant-gateway-acme\|.*LOG:  duration: ([0-9.]+) ms  (?:statement|execute)", text, re.M)
        return len(hits), sum(float(h) for h in hits)
    base_scans, (base_n, base_ms) = run.metric(gw.admin, "tenant_gateway_acme_scans_total"), count()
    deadline = time.time() + 300
    while run.metric(gw.admin, "tenant_gateway_acme_scans_total") < base_scans + scans and time.time() < deadline:
        time.sleep(0.2)
    done = max(run.metric(gw.admin, "tenant_gateway_acme_scans_total") - base_scans, 1)
    n, ms = count()
    return (n - base_n) / done, (ms - base_ms) / done


def wait_log(path, pattern, timeout):
    deadline = time.time() + timeout
    while time.time() < deadline:
        m = re.search(pattern, open(path, errors="replace").read())
        if m:
            return m
        time.sleep(0.2)
    return None


def rekey(url, certs):
    """Seconds and output of two `gateway acme rekey` passes: the new key
    seals, the benchmark's (SEAL_KEY) only opens. `--force`: the serving
    gateway still seals with SEAL_KEY, which a real rotation's pass refuses
    (docs/operations.md); the benchmark measures the re-sealing alone."""
    cfg = write_config(url, run.free_port(), run.free_port(), run.free_port(), certs, name="gateway-rekey.toml",
                       acme_extra='decrypt_key_envs = ["TG_CERT_KEY_OLD"]')
    env = dict(gateway_env(url), TG_CERT_KEY=bytes(range(32, 64)).hex(), TG_CERT_KEY_OLD=SEAL_KEY.hex())
    passes = []
    for _ in range(2):
        started = time.time()
        out = subprocess.run([str(run.REL / "gateway"), "--config", str(cfg), "acme", "rekey", "--force"], env=env,
                             capture_output=True, text=True)
        if out.returncode != 0:
            raise SystemExit(f"gateway acme rekey failed:\n{out.stdout}{out.stderr}")
        passes.append((time.time() - started, out.stdout))
    return passes


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--names", type=int, default=100_000)
    ap.add_argument("--before", help="a gateway binary from an earlier commit, measured on the same names")
    args = ap.parse_args()
    if not (run.REL / "gateway").exists():
        raise SystemExit("build first: bench/run.sh (or cargo build --release -p gateway -p upstream-app)")
    os.sched_setaffinity(0, {1})
    certs = run.make_certs()
    lines = []
    try:
        pgbin, url = fresh_database()
        pg_log = run.WORK / "pg" / "log"
        # ---- 10,000 names stored: the reference for start-up and memory.
        ref_n = min(CACHE, args.names)
        gen_small, _ = populate(pgbin, url, 1, ref_n)
        small = ScaleGateway(run.REL / "gateway", url, certs)
        ref_ready = small.ready_secs
        touch(small.tls, [name_of(i) for i in range(1, ref_n + 1)])
        ref_rss = small.rss_mib()
        small.stop()

        # ---- all names stored.
        gen_rest, populated = populate(pgbin, url, ref_n + 1, args.names)
        gw = ScaleGateway(run.REL / "gateway", url, certs)
        ready = gw.ready_secs
        time.sleep(2)
        rest = gw.rss_mib()
        per_scan, scan_ms = scan_statements(gw, pg_log)
        sample = [name_of(i) for i in range(1, args.names + 1, max(1, args.names // 2000))][:2000]
        cold = timed(gw.tls, sample)
        warm = timed(gw.tls, sample)
        tenth = [name_of(i) for i in range(1, args.names // 10 + 1)]
        touch(gw.tls, tenth)
        rss_10 = gw.rss_mib()
        touch(gw.tls, [name_of(i) for i in range(args.names // 10 + 1, args.names + 1)])
        rss_100 = gw.rss_mib()
        in_memory = run.metric(gw.admin, "tenant_gateway_certificates_in_memory")
        loads = run.metric(gw.admin, "tenant_gateway_certificate_loads_total")
        # A key rotation's re-sealing, while the gateway serves.
        (rekey_secs, rekey_out), (again_secs, again_out) = rekey(url, certs)
        resealed = re.search(r"re-sealed with acme.key_env's key: (\d+)", rekey_out)
        current = re.search(r"already sealed with it: (\d+)", again_out)
        gw.stop()

        lines += [
            f"# Certificates at scale: {args.names:,} stored, cache bounded at {CACHE:,}", "",
            f"{args.names:,} real certificates (P-256, a local CA) generated in {gen_small + gen_rest:.0f} s and "
            "stored with their domain rows and active claims. Gateway: one thread on CPU 0; the client "
            "(one handshake at a time for latencies, 8 threads for touching) and PostgreSQL on CPU 1.", "",
            "| Measure | Value |", "| --- | --- |",
            f"| Start-up to ready, {args.names:,} names stored | {ready:.2f} s |",
            f"| Start-up to ready, {ref_n:,} names stored | {ref_ready:.2f} s |",
            f"| RSS at rest | {rest:.1f} MiB |",
            f"| RSS after touching 10 % ({len(tenth):,} names) | {rss_10:.1f} MiB |",
            f"| RSS after touching 100 % | {rss_100:.1f} MiB ({int(in_memory):,} certificates in memory, "
            f"{int(loads):,} loads) |",
            f"| RSS with {ref_n:,} names stored, all touched | {ref_rss:.1f} MiB |",
            f"| RSS at 100 % / RSS with {ref_n:,} stored | {rss_100 / ref_rss:.2f} |",
            f"| First handshake, not in memory: p50 / p99 | {pct(cold, 50):.2f} / {pct(cold, 99):.2f} ms |",
            f"| Handshake, in memory: p50 / p99 | {pct(warm, 50):.2f} / {pct(warm, 99):.2f} ms |",
            f"| p99 difference | {pct(cold, 99) - pct(warm, 99):.2f} ms |",
            f"| Statements per scan, nothing due (server time) | {per_scan:.1f} ({scan_ms:.2f} ms) |",
            f"| `gateway acme rekey`: {int(resealed.group(1)) if resealed else 0:,} keys re-sealed | "
            f"{rekey_secs:.1f} s |",
            f"| `gateway acme rekey` again: {int(current.group(1)) if current else 0:,} already sealed | "
            f"{again_secs:.1f} s |",
        ]

        if args.before:
            old = ScaleGateway(args.before, url, certs, cache=None)
            m = wait_log(old.log, r"stored certificates loaded", 1800)
            old_loaded = (time.time() - old.started) if m else float("nan")
            old_rss = old.rss_mib()
            old_scan, old_ms = scan_statements(old, pg_log, scans=3)
            old.stop()
            lines += [
                "", f"Before (`{args.before}`), the same {args.names:,} names:", "",
                "| Measure | Value |", "| --- | --- |",
                f"| Start-up to listening | {old.ready_secs:.2f} s |",
                f"| Until every stored certificate is loaded | {old_loaded:.1f} s |",
                f"| RSS then | {old_rss:.1f} MiB |",
                f"| Statements per scan, nothing due (server time) | {old_scan:.1f} ({old_ms:.2f} ms) |",
            ]
    finally:
        run.cleanup()
    text = "\n".join(lines) + "\n"
    print(text)
    (run.ROOT / "bench" / "certs-latest.md").write_text(text)


if __name__ == "__main__":
    main()
