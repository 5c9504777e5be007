#!/usr/bin/env python3
"""System calls per request, counted by strace: the gateway next to bare
Pingora with the gateway's upstream timeouts, on the same keep-alive load
as bench/instructions.py (h2load, 16 connections, one tenant). Callgrind
counts user-space instructions only; a system call costs about a
microsecond on this VM (bench/RESULTS.md, eighth round), so this is the
part of CPU per request that instruction counts do not show.

Usage: python3 bench/syscalls.py [--proto h1|https|h2] [N_REQUESTS]
(after bench/run.sh has built the release binaries and installed h2load
and PostgreSQL; strace comes with Debian's `strace` package, which
scripts/deps.sh bench installs).

strace attaches to every thread of the running peer after a warm-up, so
the counts are of the measured requests alone (plus the timer threads'
own calls in that window, e.g. Pingora's timer thread's 10 ms sleeps).
"""

import collections
import os
import re
import shutil
import signal
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import run as R  # noqa: E402

FLAGS = {"h1": ["--h1"], "https": ["--h1"], "h2": ["-m8"]}


def counted(pid, send, out):
    """Run `send()` under `strace -c` attached to every thread of `pid`:
    (requests sent, calls per system call name)."""
    tids = os.listdir(f"/proc/{pid}/task")
    st = subprocess.Popen(["strace", "-c", "-f", "-o", str(out)] + [a for t in tids for a in ("-p", t)],
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    # strace has attached once every thread is traced (TracerPid set).
    deadline = time.time() + 30
    while time.time() < deadline:
        traced = all(_tracer(pid, t) == st.pid for t in tids)
        if traced:
            break
        time.sleep(0.05)
    else:
        st.kill()
        raise SystemExit("strace did not attach")
    sent = send()
    st.send_signal(signal.SIGINT)
    st.wait(timeout=60)
    calls = collections.Counter()
    for line in out.read_text().splitlines():
        # % time, seconds, usecs/call, calls, [errors,] syscall
        m = re.match(r"\s*[\d.]+\s+[\d.]+\s+\d+\s+(\d+)\s+(?:\d+\s+)?(\w+)\s*$", line)
        if m and m.group(2) != "total":
            calls[m.group(2)] += int(m.group(1))
    return sent, calls


def _tracer(pid, tid):
    try:
        status = open(f"/proc/{pid}/task/{tid}/status").read()
    except OSError:
        return None
    m = re.search(r"TracerPid:\s*(\d+)", status)
    return int(m.group(1)) if m else None


def main():
    args = sys.argv[1:]
    proto = R.take_option(args, "--proto")
    proto = "h1" if proto is None else proto
    if proto not in FLAGS:
        raise SystemExit(f"--proto: one of {', '.join(FLAGS)}")
    n = int(args[0]) if args else 20_000
    if not shutil.which("strace"):
        raise SystemExit("strace is not installed (scripts/deps.sh bench installs it)")
    _, _, url = R.setup_database()
    certs = R.make_certs()
    backends = R.start_backends()
    results = {}
    for which in ("bare-timeouts", "gateway"):
        peer = (R.Gateway(url, backends, certs) if which == "gateway"
                else R.BarePingora(backends, timeouts=True, certs=None if proto == "h1" else certs))
        url_ = f"http://127.0.0.1:{peer.http}/" if proto == "h1" else f"https://127.0.0.1:{peer.tls}/"

        def send(count=n):
            out = subprocess.run(["h2load", *FLAGS[proto], "-n", str(count), "-c", "16",
                                  "-H", ":authority: t0001.myapp.bench", url_],
                                 capture_output=True, text=True, timeout=600).stdout
            if f"{count} succeeded" not in out:
                raise SystemExit(f"{which}: not every request succeeded:\n{out}")
            return count

        send(2000)  # warm: tenant cache, upstream connections
        results[which] = counted(peer.pid, send, R.WORK / f"strace.{which}")
        os.killpg(peer.pid, signal.SIGKILL)
    (nb, bare), (ng, gw) = results["bare-timeouts"], results["gateway"]
    print(f"System calls per {proto} keep-alive request ({n:,} requests, 16 connections, one tenant):\n")
    print("| system call | bare Pingora + timeouts | tenant-gateway |\n| --- | ---: | ---: |")
    for name in sorted(set(bare) | set(gw), key=lambda k: -(gw.get(k, 0) + bare.get(k, 0))):
        b, g = bare.get(name, 0) / nb, gw.get(name, 0) / ng
        if max(b, g) >= 0.005:
            print(f"| `{name}` | {b:.3f} | {g:.3f} |")
    print(f"| total | {sum(bare.values()) / nb:.3f} | {sum(gw.values()) / ng:.3f} |")


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        main()
    finally:
        R.cleanup()
