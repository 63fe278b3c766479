"""Peers from Debian's packages (installed only when missing), and the Python pieces the suite uses
(matplotlib for the plots, py-spy for the attach profile) into the running interpreter's environment."""
from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

from common import have

# package -> a file it installs that the suite runs
DEBIAN = {
    "netavark": "/usr/lib/podman/netavark",
    "aardvark-dns": "/usr/lib/podman/aardvark-dns",
    "containernetworking-plugins": "/usr/lib/cni/bridge",
    "dnsperf": "/usr/bin/dnsperf",
    "iperf3": "/usr/bin/iperf3",
    "docker.io": "/usr/sbin/dockerd",
    "linux-perf": "/usr/bin/perf",  # the data-plane profile
    "busybox-static": None,  # a static busybox makes the Docker image (else `sleep` and its libraries do)
}


def _candidate(pkg: str) -> bool:
    cp = subprocess.run(["apt-cache", "policy", pkg], capture_output=True, text=True)
    for line in cp.stdout.splitlines():
        if line.strip().startswith("Candidate:"):
            return line.split(":", 1)[1].strip() not in ("", "(none)")
    return False


def _installed(pkg: str) -> bool:
    cp = subprocess.run(["dpkg-query", "-W", "-f=${Status}", pkg], capture_output=True, text=True)
    return cp.returncode == 0 and "install ok installed" in cp.stdout


def debian_peers(log) -> dict[str, str]:
    """Install what is missing; returns {package: why it is not there} for what could not be installed."""
    missing = [p for p, f in DEBIAN.items() if not (have(f) if f else _installed(p))]
    if not missing:
        return {}
    if not have("apt-get"):
        return {p: "apt-get is not available" for p in missing}
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    if not all(_candidate(p) for p in missing):
        log("  apt-get update")
        subprocess.run(["apt-get", "update"], env=env, capture_output=True, text=True)
    ok = [p for p in missing if _candidate(p)]
    failed = {p: "no such package in the configured Debian archive" for p in missing if p not in ok}
    if ok:
        log(f"  apt-get install -y {' '.join(ok)}")
        cp = subprocess.run(["apt-get", "install", "-y", "--no-install-recommends"] + ok, env=env,
                            capture_output=True, text=True)
        if cp.returncode != 0:
            for p in ok:  # one at a time, so that one broken package does not take the others down
                c = subprocess.run(["apt-get", "install", "-y", "--no-install-recommends", p], env=env,
                                   capture_output=True, text=True)
                if c.returncode != 0:
                    failed[p] = (c.stderr.strip().splitlines() or ["apt-get failed"])[-1][:200]
    return failed


def python_tools(log) -> dict[str, str]:
    failed = {}
    for module, pkg in (("matplotlib", "matplotlib"), (None, "py-spy")):
        if module and importlib.util.find_spec(module):
            continue
        if module is None and have(os.path.join(os.path.dirname(sys.executable), "py-spy")):
            continue
        log(f"  pip install {pkg}")
        cp = subprocess.run([sys.executable, "-m", "pip", "install", "-q", pkg], capture_output=True, text=True)
        if cp.returncode != 0:
            failed[pkg] = (cp.stderr.strip().splitlines() or ["pip failed"])[-1][:200]
    importlib.invalidate_caches()
    return failed
