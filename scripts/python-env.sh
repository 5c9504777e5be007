#!/usr/bin/env bash
# Creates or updates the Python venv used by the Django side of the project:
# target/python-venv with the pins of python/requirements-test.txt, plus
# ./python/tenant-gateway-django installed (non-editable, reinstalled every run).
# Fast when the pins are already installed. Prints the venv path on its last line.
# Usage: scripts/python-env.sh        (PYTHON=/path/to/python3 to choose the interpreter)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$root/target/python-venv"
req="$root/python/requirements-test.txt"
pkg="$root/python/tenant-gateway-django"

# Debian's python3 by default; any CPython >= 3.11 with the venv module will do.
python="${PYTHON:-}"
if [ -z "$python" ]; then
  if [ -x /usr/bin/python3 ]; then python=/usr/bin/python3; else python="$(command -v python3 || true)"; fi
fi
if [ -z "$python" ]; then
  echo "python3 not found: install it (apt-get install python3 python3-venv)" >&2
  exit 1
fi
if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
  echo "$python is $("$python" --version 2>&1); Python >= 3.11 is required" >&2
  exit 1
fi

ensure_venv_module() {
  # Debian ships ensurepip (needed by `python3 -m venv`) in python3-venv.
  "$python" -c 'import venv, ensurepip' >/dev/null 2>&1 && return 0
  if [ "$python" = /usr/bin/python3 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing python3-venv"
    local sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    export DEBIAN_FRONTEND=noninteractive
    $sudo apt-get update -q || true
    $sudo apt-get install -y -q --no-install-recommends python3-venv
  else
    echo "$python has no working venv/ensurepip module" >&2
    exit 1
  fi
}

# A venv made by another interpreter (or a broken one) is made anew.
want_id="$("$python" -c 'import sys; print(sys.version)' | head -n1)@$python"
if [ -x "$venv/bin/python" ] && [ "$(cat "$venv/.tg-python" 2>/dev/null)" != "$want_id" ]; then
  rm -rf "$venv"
fi
if [ ! -x "$venv/bin/python" ]; then
  ensure_venv_module
  mkdir -p "$root/target"
  "$python" -m venv "$venv"
  printf '%s\n' "$want_id" >"$venv/.tg-python"
fi

pip=("$venv/bin/python" -m pip --disable-pip-version-check -q)
stamp="$venv/.tg-requirements.sha256"
want="$(sha256sum "$req" | cut -d' ' -f1)"
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  "${pip[@]}" install -r "$req"
  printf '%s\n' "$want" >"$stamp"
fi

# The package itself: a real (non-editable) install, every run, since its
# source may have changed. pip builds in-tree: clear its leftovers first.
rm -rf "$pkg/build" "$pkg"/*.egg-info
"${pip[@]}" uninstall -y tenant-gateway-django >/dev/null 2>&1 || true
"${pip[@]}" install --no-build-isolation "$pkg"
rm -rf "$pkg/build" "$pkg"/*.egg-info
"${pip[@]}" check >/dev/null

echo "$venv"
