#!/usr/bin/env python3
"""Writes fuzz/seeds/TARGET.hex from a fuzzing run's corpus (fuzz/corpus/TARGET/,
after scripts/fuzz.sh): the regressions kept in the file (each input under a
"#" line saying where it came from) stay first, then up to N (default 150)
inputs of the corpus of at most 1 KiB, spread evenly over it by size (small
ones hold a feature with little besides, larger ones combine them), one per
line in hex. fuzz/tests/replay.rs replays
them on every scripts/test.sh.

Usage: fuzz/pack_seeds.py TARGET [N]
"""

import hashlib
import sys
from pathlib import Path

FUZZ = Path(__file__).resolve().parent


def main() -> None:
    target = sys.argv[1]
    n = int(sys.argv[2]) if len(sys.argv) > 2 else 150
    seeds = FUZZ / "seeds" / f"{target}.hex"
    kept: list[str] = []
    if seeds.exists():
        lines = seeds.read_text().splitlines()
        # A regression: a line under a comment that is not the header.
        for i, line in enumerate(lines):
            if i > 0 and lines[i - 1].startswith("#") and not line.startswith("#"):
                if not lines[i - 1].startswith("# sample"):
                    kept += [lines[i - 1], line]
    seen = {line for line in kept if not line.startswith("#")}
    corpus = sorted(
        (p for p in (FUZZ / "corpus" / target).iterdir() if 0 < p.stat().st_size <= 1024),
        key=lambda p: (p.stat().st_size, p.name),
    )
    step = max(1, len(corpus) / n)
    sample: list[str] = []
    for k in range(min(n, len(corpus))):
        line = corpus[int(k * step)].read_bytes().hex()
        if line not in seen:
            seen.add(line)
            sample.append(line)
    digest = hashlib.sha256("".join(sample).encode()).hexdigest()[:12]
    out = kept + [f"# sample of a fuzzing run's corpus ({len(sample)} inputs, {digest})"] + sample
    seeds.write_text("\n".join(out) + "\n")
    print(f"{seeds}: {len(kept) // 2} regressions, {len(sample)} sampled")


if __name__ == "__main__":
    main()
