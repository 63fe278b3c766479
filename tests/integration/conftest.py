"""Throwaway machines for integration tests: network namespaces, never the machine's own.

`host` is a namespace running its own nsnet engine (own NSNET_ROOT); `machines` makes other
namespaces (an office PC, a router, an "internet" server) wired to it with veth pairs. Everything
is removed at the end of the test, also when it fails.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
import uuid

import pytest

from nsnet.kernel import procs

if os.geteuid() != 0:
    pytest.skip("integration tests need root (network namespaces)", allow_module_level=True)


def sh(cmd: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
    p = subprocess.run(cmd, shell=True, capture_output=True, text=True, timeout=timeout)
    if check and p.returncode != 0:
        raise AssertionError(f"{cmd!r} failed ({p.returncode}):\n{p.stdout}\n{p.stderr}")
    return p


def ns_add(name: str) -> None:
    sh(f"ip netns add {name}")
    sh(f"ip -n {name} link set lo up")


def ns_del(name: str) -> None:
    for pid in sh(f"ip netns pids {name}", check=False).stdout.split():
        try:
            os.kill(int(pid), signal.SIGKILL)
        except (ProcessLookupError, ValueError):
            pass
    sh(f"ip netns del {name}", check=False)


class Machines:
    """Extra namespaces, wired together with veth pairs."""

    def __init__(self, tag: str):
        self.tag = tag
        self.names: list[str] = []
        self.bg: list[subprocess.Popen] = []

    def add(self, role: str) -> str:
        name = f"nsnt-{role}-{self.tag}"[:40]
        ns_add(name)
        self.names.append(name)
        return name

    def wire(self, a: str, a_cidr: str, b: str, b_cidr: str) -> tuple[str, str]:
        """A veth pair between namespaces a and b, addressed and up. Returns the two link names."""
        n = len(self.names) + len(self.bg) + int(time.monotonic_ns() % 100000)
        la, lb = f"tv{n}a", f"tv{n}b"
        sh(f"ip link add {la} netns {a} type veth peer name {lb} netns {b}")
        for ns, link, cidr in ((a, la, a_cidr), (b, lb, b_cidr)):
            if cidr:
                sh(f"ip -n {ns} addr add {cidr} dev {link}")
            sh(f"ip -n {ns} link set {link} up")
        return la, lb

    def spawn(self, ns: str, cmd: str) -> subprocess.Popen:
        p = subprocess.Popen(f"exec ip netns exec {ns} {cmd}", shell=True, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
        self.bg.append(p)
        return p

    def cleanup(self) -> None:
        for p in self.bg:
            p.kill()
            p.wait()
        for name in reversed(self.names):
            ns_del(name)


class Host:
    """A namespace with its own nsnet engine, driven through the real CLI."""

    # The engine's "host resolvers": `ip netns exec` shows /etc/netns/NS/resolv.conf as /etc/resolv.conf,
    # so forwarded queries go to a test namespace's address (unreachable unless a test serves it), never
    # to this machine's real resolvers.
    RESOLVER = "203.0.113.53"

    def __init__(self, tag: str):
        self.ns = f"nsnt-host-{tag}"
        self.root = tempfile.mkdtemp(prefix="nsnt-root-")
        os.makedirs(f"/etc/netns/{self.ns}", exist_ok=True)
        with open(f"/etc/netns/{self.ns}/resolv.conf", "w") as f:
            f.write(f"nameserver {self.RESOLVER}\n")
        ns_add(self.ns)

    def nsnet(self, *args: str, check: bool = True, timeout: float = 60, input: str | None = None):
        cmd = ["ip", "netns", "exec", self.ns, sys.executable, "-m", "nsnet", "--root", self.root, *args]
        # Hermetic: the engine (a Docker client for its evidence) must not ask the machine's own Docker.
        env = {**os.environ, "DOCKER_HOST": f"unix://{self.root}/no-docker.sock"}
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, input=input, env=env)
        if check and p.returncode != 0:
            raise AssertionError(f"nsnet {' '.join(args)} failed ({p.returncode}):\n{p.stdout}\n{p.stderr}")
        return p

    def json(self, *args: str):
        return json.loads(self.nsnet(*args).stdout)

    def sh(self, cmd: str, check: bool = True, timeout: float = 60):
        return sh(f"ip netns exec {self.ns} {cmd}", check=check, timeout=timeout)

    def exec(self, sandbox: str, cmd: str, check: bool = True, timeout: float = 30):
        return self.nsnet("exec", sandbox, "--", "sh", "-c", cmd, check=check, timeout=timeout)

    def overlay_holders(self) -> list[int]:
        """PIDs holding this host's overlay networks' namespaces (kernel/overlayns.py: a record each)."""
        folder, pids = os.path.join(self.root, "overlay"), []
        for name in os.listdir(folder) if os.path.isdir(folder) else []:
            try:
                with open(os.path.join(folder, name)) as f:
                    rec = json.load(f)
            except (OSError, ValueError):
                continue
            if procs.alive(rec.get("pid"), rec.get("started")):
                pids.append(rec["pid"])
        return pids

    def overlay_sh(self, cmd: str) -> str:
        """`cmd`'s output in each of this host's overlay namespaces, one after the other."""
        return "".join(sh(f"nsenter --net=/proc/{pid}/ns/net {cmd}", check=False).stdout
                       for pid in self.overlay_holders())

    def daemon_pid(self) -> int | None:
        for d in os.listdir("/proc"):
            if not d.isdigit():
                continue
            try:
                with open(f"/proc/{d}/cmdline", "rb") as f:
                    argv = f.read().split(b"\0")
            except OSError:
                continue
            if b"daemon" in argv and self.root.encode() in argv:
                return int(d)
        return None

    def state(self) -> dict:
        """What a refused command must leave unchanged: links, addresses, routes, rules, records."""
        links = json.loads(self.sh("ip -j link show").stdout)
        addrs = json.loads(self.sh("ip -j addr show").stdout)
        return {
            "links": sorted(l["ifname"] for l in links),
            "addrs": sorted((a["ifname"], i["local"]) for a in addrs for i in a.get("addr_info", [])
                            if not i["local"].startswith("fe80:")),
            # IPv6 link-local routes appear by themselves some time after a link comes up: not ours.
            # ...and "linkdown" is the carrier of the moment, not configuration.
            "routes": sorted(r.replace(" linkdown", "") for r in self.sh("ip route show table all").stdout.splitlines()
                             if "fe80::" not in r),
            "nft": self.sh("nft list ruleset").stdout,
            "networks": sorted(n["Id"] for n in self.json("network", "ls", "--format", "json")),
            "sandboxes": sorted(s["Id"] for s in self.json("ps", "-a", "--format", "json")),
        }

    def cleanup(self) -> None:
        pids = []
        db = os.path.join(self.root, "state.db")
        if os.path.exists(db):
            try:
                con = sqlite3.connect(db)
                for (doc,) in con.execute("SELECT value FROM kv WHERE key LIKE 'local/sandbox/%'"):
                    sb = json.loads(doc)
                    # Only a sandbox that still runs: an exited one's PID may be someone else's process now.
                    if procs.alive(sb.get("pid"), sb.get("pid_start")):
                        pids.append(sb["pid"])
                con.close()
            except sqlite3.Error:
                pass
        daemon = self.daemon_pid()
        if daemon:
            pids.append(daemon)
        pids += self.overlay_holders()
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        ns_del(self.ns)
        shutil.rmtree(self.root, ignore_errors=True)
        shutil.rmtree(f"/etc/netns/{self.ns}", ignore_errors=True)


@pytest.fixture
def tag() -> str:
    return uuid.uuid4().hex[:6]


@pytest.fixture
def host(tag):
    h = Host(tag)
    try:
        yield h
    finally:
        h.cleanup()


@pytest.fixture
def machines(tag):
    m = Machines(tag)
    try:
        yield m
    finally:
        m.cleanup()


def changes(before: dict, after: dict) -> dict:
    """What differs between two Host.state() snapshots: {key: (gone, new)}; empty when equal."""
    return {k: (sorted(set(before[k]) - set(after[k])), sorted(set(after[k]) - set(before[k])))
            for k in before if before[k] != after[k]}


def wait_for(fn, timeout: float = 10, interval: float = 0.05):
    deadline = time.monotonic() + timeout
    while True:
        result = fn()
        if result or time.monotonic() > deadline:
            return result
        time.sleep(interval)
