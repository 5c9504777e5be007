#!/usr/bin/env bash
# Runs every check and test: formatting, clippy, rustdoc's link checks, that
# the benchmark and helper scripts parse, unit tests, the Python package's tests, and the
# end-to-end suites (which start their own PostgreSQL,
# upstreams, Django apps under gunicorn and gateways on loopback).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh test
scripts/python-env.sh    # target/python-venv: Django, django-tenants, gunicorn, our package
cargo fmt --all -- --check
# The benchmark scripts are not run here (they need nginx, HAProxy, Caddy,
# valgrind and minutes of a quiet machine), but they must at least parse.
python3 -c 'import ast, sys; [ast.parse(open(f).read(), f) for f in sys.argv[1:]]' bench/*.py fuzz/*.py
for f in bench/*.sh scripts/*.sh; do bash -n "$f"; done
cargo clippy --workspace --all-targets --quiet -- -D warnings
# The code's own documentation: every intra-doc link resolves.
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --document-private-items --quiet
cargo build --workspace --bins --quiet
target/python-venv/bin/pytest -q -p no:cacheprovider python/tenant-gateway-django/tests
cargo test --workspace --quiet
