#!/usr/bin/env bash
# Sets up and runs the demo on this machine: installs missing packages, builds,
# starts a private PostgreSQL cluster under .demo/, migrates, creates tenants
# ferrari and mclaren (subdomains of myapp.localhost plus a custom domain each),
# starts two upstream-apps and the gateway in front of them, seeds a project per
# tenant through the gateway, and prints what to curl. Ctrl-C stops everything.
#
# Ports (override with env): DEMO_HTTP_PORT=8080 DEMO_HTTPS_PORT=8443
# DEMO_ADMIN_PORT=9090 DEMO_APP_PORTS="8081 8082" DEMO_PG_PORT=54329
# Also: DEMO_ROOT (state: database, logs, configs; default .demo),
# DEMO_CERTS (the dev CA and certificates; default certs/dev), DEMO_BIN (use
# the gateway and upstream-app binaries there instead of building; the
# end-to-end test of this script runs it so, under `cargo test`).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="${DEMO_ROOT:-$PWD/.demo}"
CERTS="${DEMO_CERTS:-certs/dev}"
HTTP_PORT="${DEMO_HTTP_PORT:-8080}"
HTTPS_PORT="${DEMO_HTTPS_PORT:-8443}"
ADMIN_PORT="${DEMO_ADMIN_PORT:-9090}"
APP_PORTS=(${DEMO_APP_PORTS:-8081 8082})
PG_PORT="${DEMO_PG_PORT:-54329}"

scripts/deps.sh demo
if [ -n "${DEMO_BIN:-}" ]; then
  BIN="$DEMO_BIN"
else
  cargo build --workspace --bins
  BIN="$PWD/target/debug"
fi

# Dev CA, wildcard for *.myapp.localhost, and a certificate for ferrari's custom domain.
"$BIN/gateway" certs dev --dir "$CERTS" --domain myapp.localhost >/dev/null
mkdir -p "$CERTS/custom"
[ -f "$CERTS/custom/ferrari-cars.pem" ] || \
  "$BIN/gateway" certs issue --dir "$CERTS" --name www.ferrari-cars.localhost --out "$CERTS/custom/ferrari-cars" >/dev/null
CERTS="$(cd "$CERTS" && pwd)"

PGBIN="$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)"
as_pg() { if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
mkdir -p "$ROOT/pg" "$ROOT/logs"
[ "$(id -u)" -eq 0 ] && chown postgres:postgres "$ROOT/pg"
if [ ! -f "$ROOT/pg/data/PG_VERSION" ]; then
  as_pg "$PGBIN/initdb" -A trust -U postgres -E UTF8 --locale=C -D "$ROOT/pg/data" >/dev/null
fi
as_pg "$PGBIN/pg_ctl" -D "$ROOT/pg/data" -l "$ROOT/pg/server.log" -w -t 60 \
  -o "-p $PG_PORT -c listen_addresses=127.0.0.1 -c unix_socket_directories='$ROOT/pg'" start >/dev/null

PIDS=()
cleanup() {
  echo; echo "stopping demo..."
  for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  as_pg "$PGBIN/pg_ctl" -D "$ROOT/pg/data" -m fast -w stop >/dev/null 2>&1 || true
}
trap cleanup EXIT INT TERM

export DATABASE_URL="postgres://postgres@127.0.0.1:$PG_PORT/postgres"
# The stamp secret shared by gateway and backends: generated once, kept locally.
[ -f "$ROOT/stamp-secret" ] || head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' > "$ROOT/stamp-secret"
export TG_STAMP_KEY_K1="$(cat "$ROOT/stamp-secret")"

"$BIN/upstream-app" migrate
create_tenant() { # schema name domains...
  local schema="$1" name="$2"; shift 2
  local args=(); for d in "$@"; do args+=(--domain "$d"); done
  if ! "$BIN/upstream-app" tenant list | cut -f1 | grep -qx "$schema"; then
    "$BIN/upstream-app" tenant create "$schema" --name "$name" "${args[@]}"
  fi
}
create_tenant ferrari "Ferrari" ferrari.myapp.localhost www.ferrari-cars.localhost
create_tenant mclaren "McLaren" mclaren.myapp.localhost mclaren-racing.localhost

backends=""
for port in "${APP_PORTS[@]}"; do
  printf 'listen = "127.0.0.1:%s"\n' "$port" > "$ROOT/upstream-app-$port.toml"
  "$BIN/upstream-app" --config "$ROOT/upstream-app-$port.toml" serve > "$ROOT/logs/upstream-app-$port.log" 2>&1 &
  PIDS+=($!)
  backends+="\"127.0.0.1:$port\", "
done
cat > "$ROOT/gateway.toml" <<TOML
[listen]
http = "127.0.0.1:$HTTP_PORT"
admin = "127.0.0.1:$ADMIN_PORT"
shutdown_grace_secs = 2

[tenant]
base_domains = ["myapp.localhost"]

[tls]
listen = "127.0.0.1:$HTTPS_PORT"
certificates = [{ cert_file = "$CERTS/wildcard.pem", key_file = "$CERTS/wildcard.key" }]
cert_dir = "$CERTS/custom"
redirect_exempt = ["/healthz"]

[pools.default]
backends = [${backends%, }]
TOML
"$BIN/gateway" --config "$ROOT/gateway.toml" > "$ROOT/logs/gateway.log" 2>&1 &
PIDS+=($!)

wait_for() { # url
  for _ in $(seq 1 300); do curl -fsS -o /dev/null "$1" 2>/dev/null && return 0; sleep 0.1; done
  echo "timed out waiting for $1 (logs in $ROOT/logs)" >&2; exit 1
}
for port in "${APP_PORTS[@]}"; do wait_for "http://127.0.0.1:$port/healthz"; done
wait_for "http://127.0.0.1:$ADMIN_PORT/readyz"
gw() { curl -fsS --cacert "$CERTS/ca.pem" --resolve "$1:$HTTPS_PORT:127.0.0.1" "https://$1:$HTTPS_PORT$2" "${@:3}"; }

# Custom domains route only with an active claim ([custom_domains]
# verification = "required", the default). The demo's operator vouches for
# its own two (logged as preverified); a tenant-typed domain would get a
# pending claim and instructions instead: `gateway hostnames add NAME --tenant T`.
"$BIN/gateway" --config "$ROOT/gateway.toml" hostnames add www.ferrari-cars.localhost --tenant ferrari --preverified >/dev/null
"$BIN/gateway" --config "$ROOT/gateway.toml" hostnames add mclaren-racing.localhost --tenant mclaren --preverified >/dev/null
for _ in $(seq 1 300); do
  [ "$(gw www.ferrari-cars.localhost /whoami -o /dev/null -w '%{http_code}' 2>/dev/null)" = 200 ] && break
  sleep 0.1
done

for t in ferrari mclaren; do
  if [ "$(gw "$t.myapp.localhost" /projects)" = "[]" ]; then
    gw "$t.myapp.localhost" /projects -X POST -H 'content-type: application/json' \
      -d "{\"name\": \"$t demo project\"}" >/dev/null
  fi
done

# Shown as given when it is the default, so the lines can be pasted from the checkout.
CA="$CERTS/ca.pem"
[ "$CERTS" = "$PWD/certs/dev" ] && CA="certs/dev/ca.pem"
cat <<TXT

Tenant Gateway demo is running (logs: $ROOT/logs, Ctrl-C to stop).

  curl --cacert $CA https://ferrari.myapp.localhost:$HTTPS_PORT/projects
  curl --cacert $CA https://mclaren.myapp.localhost:$HTTPS_PORT/whoami
  curl --cacert $CA https://www.ferrari-cars.localhost:$HTTPS_PORT/projects   # custom domain, own cert
  curl --cacert $CA -H 'X-Tenant: mclaren' https://ferrari.myapp.localhost:$HTTPS_PORT/whoami  # spoof ignored
  curl -i --cacert $CA https://nobody.myapp.localhost:$HTTPS_PORT/       # 404 from the gateway
  curl -i http://ferrari.myapp.localhost:$HTTP_PORT/projects                          # 308 to HTTPS
  curl http://127.0.0.1:$ADMIN_PORT/metrics

Operator CLI (same database):
  DATABASE_URL=$DATABASE_URL $BIN/upstream-app tenant list
  DATABASE_URL=$DATABASE_URL TG_STAMP_KEY_K1=... $BIN/gateway --config $ROOT/gateway.toml hostnames list

TXT
wait "${PIDS[-1]}"
