#!/usr/bin/env bash
# Zero-downtime upgrade or config change of a gateway run by
# config/systemd/tenant-gateway@.service: start the idle instance with
# --upgrade (it waits for the sockets on listen.upgrade_sock), send SIGQUIT
# to the running one (it hands its listening sockets over, keeps serving for
# 5 s, then drains: in-flight responses say Connection: close, WebSockets get
# a close frame), and wait for it to exit. No connection is refused meanwhile.
# Usage: scripts/upgrade.sh   (as root, after installing the new binary/config)
set -euo pipefail
sock="${TG_UPGRADE_SOCK:-/tmp/tenant-gateway-upgrade.sock}"   # = listen.upgrade_sock
if systemctl is-active --quiet tenant-gateway@a; then old=a new=b; else old=b new=a; fi
systemctl is-active --quiet "tenant-gateway@$old" || { echo "no running instance" >&2; exit 1; }
# The config, checked in the service's own environment (its keys, URLs).
(set -a; . /etc/tenant-gateway/env; set +a; /usr/local/bin/gateway --config /etc/tenant-gateway/gateway.toml check-config >/dev/null)
mkdir -p /run/tenant-gateway
echo "TG_START_FLAGS=--upgrade" > "/run/tenant-gateway/$new.flags"
rm -f "$sock"
systemctl start "tenant-gateway@$new"
for _ in $(seq 1 100); do [ -S "$sock" ] && break; sleep 0.1; done
# A new process that cannot start (a bad certificate file, a key not set)
# exits before it waits on the socket: the old one is never told to go.
[ -S "$sock" ] || { echo "tenant-gateway@$new is not waiting on $sock (journalctl -u tenant-gateway@$new says why)" >&2; systemctl stop "tenant-gateway@$new"; exit 1; }
systemctl kill --signal=SIGQUIT "tenant-gateway@$old"
for _ in $(seq 1 600); do systemctl is-active --quiet "tenant-gateway@$old" || break; sleep 0.1; done
rm -f "/run/tenant-gateway/$new.flags"
systemctl is-active --quiet "tenant-gateway@$new" && echo "upgraded: tenant-gateway@$new serves, @$old exited"
