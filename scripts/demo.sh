#!/usr/bin/env bash
# The demo: a throwaway "host" namespace with its own nsnet engine, a user network, two sandboxes
# that reach each other, a published port reached from the host, and what nsnet built.
# It never touches this machine's own network namespace, and removes everything at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
H=nsnet-demo-host
ROOT=$(mktemp -d /tmp/nsnet-demo.XXXX)
PY=$PWD/.venv/bin/python
n() { ip netns exec $H "$PY" -m nsnet --root "$ROOT" "$@"; }
step() { printf '\n\033[1m$ nsnet %s\033[0m\n' "$*"; n "$@"; }
cleanup() {
  n rm -f red blue web >/dev/null 2>&1 || true
  # The daemon is whatever runs in the demo's own namespace (the sandboxes have theirs, removed above).
  for pid in $(ip netns pids $H 2>/dev/null); do kill "$pid" 2>/dev/null || true; done
  ip netns del $H 2>/dev/null || true
  rm -rf "$ROOT"
}
trap cleanup EXIT
ip netns del $H 2>/dev/null || true
ip netns add $H && ip -n $H link set lo up

step network create --subnet 172.30.0.0/16 demo-net
step run -d --name red --network demo-net -- sleep 600
step run -d --name blue --network demo-net -- sleep 600
step exec red -- ping -c 2 -W 1 blue          # by name: the embedded resolver at 127.0.0.11
step exec red -- getent hosts blue
step run -d --name web --network demo-net -p 8080:80 -- "$PY" -m http.server 80
for i in $(seq 50); do ip netns exec $H "$PY" -c 'import socket; socket.create_connection(("127.0.0.1", 8080), 0.2)' 2>/dev/null && break; sleep 0.1; done
printf '\n\033[1m$ curl http://127.0.0.1:8080/  (from the host, through the published port)\033[0m\n'
ip netns exec $H "$PY" -c 'import urllib.request; r = urllib.request.urlopen("http://127.0.0.1:8080/", timeout=5); print(r.status, r.reason, len(r.read()), "bytes")'
step ps
step network inspect demo-net
printf '\n\033[1mWhat nsnet built in the host namespace:\033[0m\n'
ip -n $H -br link
ip netns exec $H nft list table inet nsnet | sed -n '1,40p'
