#!/usr/bin/env bash
# Installs what nsnet needs on Debian 12 (as root): kernel tools from Debian, Python packages in .venv,
# and `nsnet` on PATH. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

debs=(nftables iproute2 iputils-ping dnsutils procps util-linux python3 python3-venv etcd-server)
missing=()
for p in "${debs[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if [ ${#missing[@]} -gt 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  # etcd-server's install starts etcd on this machine (invoke-rc.d, or systemd) and enables it at boot.
  # Only the tests start etcd, each in a throwaway namespace: policy-rc.d (which both ask first) says no
  # while installing, unless the machine already has one, and the service is disabled afterwards.
  policy=""
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    policy=/usr/sbin/policy-rc.d
    printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod 755 "$policy"
    trap 'rm -f "$policy"' EXIT
  fi
  apt-get update -qq
  apt-get install -y -qq "${missing[@]}" >/dev/null
  if [ -n "$policy" ]; then rm -f "$policy"; trap - EXIT; fi
fi
if [ -e /etc/init.d/etcd ]; then
  update-rc.d etcd disable >/dev/null 2>&1 || true
  deb-systemd-helper disable etcd.service >/dev/null 2>&1 || true
fi

[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/pip install -q --disable-pip-version-check -e '.[test]'
# Byte-compile now: where PYTHONDONTWRITEBYTECODE is set, every CLI call would compile nsnet again.
.venv/bin/python -m compileall -q src/nsnet
ln -sf "$PWD/.venv/bin/nsnet" /usr/local/bin/nsnet
echo "nsnet installed: $(command -v nsnet)"
