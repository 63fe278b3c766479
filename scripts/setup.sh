#!/usr/bin/env bash
# Installs what nsnet needs on Debian 12 (as root): kernel tools from Debian, Python packages in .venv,
# and `nsnet` on PATH. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

# docker.io and busybox-static: the Docker plugin's tests run real dockerd (in a throwaway namespace) on a busybox
# image; docker-compose (v1, a Docker client only) brings a Compose file up on it.
# containernetworking-plugins: the CNI reference plugins the CNI plugin's tests chain nsnet with (portmap, bandwidth, …).
# wireguard-tools (wg) and wireguard-go: encrypted overlays' tunnels, wireguard-go where the kernel has no module.
debs=(nftables iproute2 iputils-ping dnsutils procps util-linux python3 python3-venv etcd-server busybox-static
      docker-compose containernetworking-plugins wireguard-tools wireguard-go)
# A Docker the machine has already (docker-ce, say, which conflicts with docker.io) serves the tests as it is.
command -v dockerd >/dev/null || debs+=(docker.io)
missing=()
for p in "${debs[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if [ ${#missing[@]} -gt 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  # etcd-server's and docker.io's installs start etcd, dockerd and containerd on this machine (invoke-rc.d,
  # or systemd) and enable them at boot. Only the tests start them, each in a throwaway namespace:
  # policy-rc.d (which both ask first) says no while installing, unless the machine already has one, and
  # the services are disabled afterwards (Docker only when this script installed it: a Docker the machine
  # had before is its owner's).
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
units=(etcd.service)
if [[ " ${missing[*]} " == *" docker.io "* ]]; then units+=(docker.service docker.socket containerd.service); fi
for unit in "${units[@]}"; do
  if [ "${unit%.service}" != "$unit" ]; then update-rc.d "${unit%.service}" disable >/dev/null 2>&1 || true; fi
  deb-systemd-helper disable "$unit" >/dev/null 2>&1 || true
done

# Podman 4.3 for the CNI plugin's runtime test, unpacked under .podman/ rather than installed: its package would
# add /etc/cni/net.d/87-podman-bridge.conflist and /etc/containers to the machine. A podman on PATH is used as is.
if ! command -v podman >/dev/null && [ ! -x .podman/usr/bin/podman ]; then
  debs_dir=$(mktemp -d)
  (cd "$debs_dir" && apt-get download -qq podman conmon golang-github-containers-common libgpgme11 libsubid4 2>/dev/null)
  for deb in "$debs_dir"/*.deb; do dpkg -x "$deb" .podman; done
  rm -rf "$debs_dir"
fi

[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/pip install -q --disable-pip-version-check -e '.[test]'
# Byte-compile now: where PYTHONDONTWRITEBYTECODE is set, every CLI call would compile nsnet again.
.venv/bin/python -m compileall -q src/nsnet
ln -sf "$PWD/.venv/bin/nsnet" /usr/local/bin/nsnet
# The CNI plugin `nsnet` where runtimes look for plugins: a launcher of this tree's source on Debian's Python
# (the plugin needs only the standard library; a daemon it starts runs on .venv's), see nsnet.cniplugin.launcher.
# The reference plugins beside it, where missing.
mkdir -p /opt/cni/bin
.venv/bin/python -c 'import sys; from nsnet.cniplugin import launcher; print(launcher(*sys.argv[1:]), end="")' \
  /usr/bin/python3 "$PWD/src" "$PWD/.venv/bin/python" >/opt/cni/bin/.nsnet.tmp
chmod 755 /opt/cni/bin/.nsnet.tmp && mv -f /opt/cni/bin/.nsnet.tmp /opt/cni/bin/nsnet
for plugin in /usr/lib/cni/*; do [ -e "/opt/cni/bin/${plugin##*/}" ] || ln -s "$plugin" /opt/cni/bin/; done
echo "nsnet installed: $(command -v nsnet), CNI plugin /opt/cni/bin/nsnet"
