#!/usr/bin/env bash
# Installs the Debian packages the project needs, only those that are missing.
# Usage: scripts/deps.sh [demo|test|bench]
set -euo pipefail
want=(cmake postgresql curl ca-certificates python3)
case "${1:-test}" in
  demo) ;;
  test) want+=(prometheus pebble) ;;
  bench) want+=(nginx haproxy caddy wrk nghttp2-client valgrind strace) ;;
  *) echo "usage: $0 [demo|test|bench]" >&2; exit 2 ;;
esac
missing=()
for p in "${want[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ! command -v cargo >/dev/null 2>&1; then
  echo "cargo is not installed: install Rust with rustup (https://rustup.rs) first" >&2
  exit 1
fi
[ ${#missing[@]} -eq 0 ] && exit 0
echo "installing missing packages: ${missing[*]}"
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -q || true
$SUDO apt-get install -y -q --no-install-recommends "${missing[@]}"
# Debian starts a system cluster on install; we never use it (tests run their own).
