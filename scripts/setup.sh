#!/usr/bin/env bash
# Installs what nsnet needs on Debian 12 (as root): kernel tools from Debian, Python packages in .venv,
# and `nsnet` on PATH. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

debs=(nftables iproute2 iputils-ping dnsutils procps util-linux python3 python3-venv)
missing=()
for p in "${debs[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if [ ${#missing[@]} -gt 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${missing[@]}" >/dev/null
fi

[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/pip install -q --disable-pip-version-check -e '.[test]'
# Byte-compile now: where PYTHONDONTWRITEBYTECODE is set, every CLI call would compile nsnet again.
.venv/bin/python -m compileall -q src/nsnet
ln -sf "$PWD/.venv/bin/nsnet" /usr/local/bin/nsnet
echo "nsnet installed: $(command -v nsnet)"
