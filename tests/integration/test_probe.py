"""probe.gather() against the real kernel, in throwaway namespaces only.

The issue's case: a server at 172.42.10.112 and a developer PC at 172.22.10.119 holding an SSH-like
TCP connection to port 22. Gathered inside the server's namespace, the PC must show up as a live
peer, and subnet choice must then steer clear of 172.22.0.0/16.
"""
from __future__ import annotations

import ctypes
import ipaddress
import os
import subprocess
import threading
import time
import uuid

import pytest

from nsnet.facts import Evidence
from nsnet.ipam.evidence import refusal
from nsnet.ipam.pools import DEFAULT_POOLS, pick_subnet
from nsnet.kernel import probe

pytestmark = pytest.mark.integration
if os.geteuid() != 0:
    pytest.skip("needs root (network namespaces)", allow_module_level=True)

CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)

SERVER = """
import socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", 22)); s.listen(1); print("ready", flush=True)
c, _ = s.accept(); print("accepted", flush=True); sys.stdin.read()
"""
CLIENT = """
import socket, sys
c = socket.create_connection(("172.42.10.112", 22), timeout=5); print("connected", flush=True); sys.stdin.read()
"""


def sh(cmd: str) -> None:
    p = subprocess.run(cmd, shell=True, capture_output=True, text=True, timeout=30)
    assert p.returncode == 0, f"{cmd}: {p.stderr}"


def in_netns(name: str, fn):
    """Run fn() in a thread that has joined namespace `name`; the caller's thread never moves."""
    box = {}

    def run():
        fd = os.open(f"/run/netns/{name}", os.O_RDONLY)
        try:
            if _libc.setns(fd, CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), "setns failed")
        finally:
            os.close(fd)
        try:
            box["value"] = fn()
        except BaseException as e:  # handed back to the test
            box["error"] = e

    t = threading.Thread(target=run)
    t.start()
    t.join(30)
    if "error" in box:
        raise box["error"]
    return box["value"]


def gather_in(name: str, **kw):
    from pyroute2 import IPRoute

    def go():
        ipr = IPRoute()  # its netlink socket belongs to this thread's namespace
        try:
            t = time.perf_counter()
            ev = probe.gather(ipr, docker_socket=None, **kw)
            return ev, time.perf_counter() - t
        finally:
            ipr.close()

    return in_netns(name, go)


def wait_line(p: subprocess.Popen, want: str) -> None:
    line = p.stdout.readline().strip()
    assert line == want, f"expected {want!r}, got {line!r}; stderr: {p.stderr.read() if p.poll() is not None else ''}"


@pytest.fixture
def ssh_case():
    tag = uuid.uuid4().hex[:6]
    srv, pc = f"nsnt-srv-{tag}", f"nsnt-pc-{tag}"
    procs: list[subprocess.Popen] = []
    made: list[str] = []
    try:
        for ns in (srv, pc):
            sh(f"ip netns add {ns}")
            made.append(ns)
            sh(f"ip -n {ns} link set lo up")
        # Created inside the server namespace with its peer in the PC's: never in the machine's own.
        sh(f"ip -n {srv} link add eth0 type veth peer name eth0 netns {pc}")
        sh(f"ip -n {srv} addr add 172.42.10.112/24 dev eth0")
        sh(f"ip -n {pc} addr add 172.22.10.119/24 dev eth0")
        for ns in (srv, pc):
            sh(f"ip -n {ns} link set eth0 up")
        # The PC is not on the server's subnet: each reaches the other by a host route (the
        # server's route to the PC is what a bridge over 172.22.0.0/16 would shadow).
        sh(f"ip -n {srv} route add 172.22.10.119/32 dev eth0")
        sh(f"ip -n {pc} route add 172.42.10.112/32 dev eth0")
        server = subprocess.Popen(["ip", "netns", "exec", srv, "python3", "-c", SERVER], stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        procs.append(server)
        wait_line(server, "ready")
        client = subprocess.Popen(["ip", "netns", "exec", pc, "python3", "-c", CLIENT], stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        procs.append(client)
        wait_line(client, "connected")
        wait_line(server, "accepted")
        yield srv, pc
    finally:
        for p in procs:
            p.kill()
            p.wait(5)
        for ns in made:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def test_gather_sees_the_ssh_peer(ssh_case):
    srv, pc = ssh_case
    ev, elapsed = gather_in(srv, reserved=["10.8.0.0/24"], nsnet_subnets=[("web", "172.30.0.0/16")])
    by = {(e.kind, str(e.network)): e for e in ev}

    peer = by[("peer", "172.22.10.119/32")]
    assert peer.detail == "the peer of a live SSH connection to 172.42.10.112:22"
    assert by[("address", "172.42.10.0/24")].detail == "the network of eth0's address 172.42.10.112/24"
    route = by[("route", "172.22.10.119/32")]
    assert route.onlink and route.detail == "an on-link route to 172.22.10.119/32 dev eth0"
    assert ("neighbour", "172.22.10.119/32") in by
    assert ("reserved", "10.8.0.0/24") in by and ("nsnet", "172.30.0.0/16") in by
    for e in ev:  # loopback and link-local never count
        assert not (e.network.network_address.is_loopback or e.network.network_address.is_link_local), e
    assert elapsed < 0.5, elapsed

    # The decision the engine makes with it: the seed case cannot happen with the defaults.
    taken = [Evidence("docker", ipaddress.ip_network(f"172.{i}.0.0/16"), "taken") for i in range(17, 22)]
    subnet, skipped = pick_subnet(DEFAULT_POOLS, taken + ev)
    assert subnet == ipaddress.ip_network("172.23.0.0/16")
    assert any(s == ipaddress.ip_network("172.22.0.0/16") and peer in why for s, why in skipped)
    assert refusal("172.22.0.0/16", ev).startswith(
        "172.22.0.0/16 contains 172.22.10.119, the peer of a live SSH connection to 172.42.10.112:22; "
        "replies to it would be routed into this network's bridge.")


def test_sock_diag_and_proc_agree(ssh_case):
    srv, _ = ssh_case
    via_diag, via_proc = in_netns(srv, lambda: (probe.tcp_peers(), probe.tcp_peers("/proc/thread-self/net")))
    assert via_diag == via_proc
    assert [str(e.network) for e in via_diag] == ["172.22.10.119/32"]


def test_gather_follows_the_calling_threads_namespace(ssh_case):
    srv, pc = ssh_case
    ev, _ = gather_in(pc)
    peers = {str(e.network): e.detail for e in ev if e.kind == "peer"}
    assert peers == {"172.42.10.112/32": peers["172.42.10.112/32"]}
    assert peers["172.42.10.112/32"].startswith("the peer of a live SSH connection from 172.22.10.119:")
    # The server's own view is not mixed in: its address is not the PC's.
    assert not any(e.kind == "address" and str(e.network) == "172.42.10.0/24" for e in ev)


def test_the_raw_dumps_read_what_pyroute2_reads(ssh_case):
    """The daemon's evidence reads addresses, routes and neighbours over its own dumps (kernel/rtdump.py):
    the evidence must be the same as over pyroute2, with every kind of message it takes apart."""
    from pyroute2 import IPRoute

    from nsnet.kernel.rtdump import Dumps

    srv, _ = ssh_case
    sh(f"ip -n {srv} addr add fd00:42::112/64 dev eth0 nodad")
    sh(f"ip -n {srv} route add 10.8.0.0/16 via 172.42.10.1 table 100")
    sh(f"ip -n {srv} route add blackhole 10.9.0.0/16")
    sh(f"ip -n {srv} route add fd00:99::/48 via fd00:42::1")
    sh(f"ip -n {srv} neigh add 172.42.10.7 lladdr 02:00:00:00:00:07 dev eth0 nud permanent")
    sh(f"ip -n {srv} -6 neigh add fd00:42::7 lladdr 02:00:00:00:00:07 dev eth0 nud reachable")
    # Enough routes for a dump of many parts (the kernel fills a recv with at most 32 KiB).
    batch = "".join(f"route add 10.{100 + i // 250}.{i % 250}.0/24 via 172.42.10.1\n" for i in range(1500))
    subprocess.run(["ip", "-n", srv, "-batch", "-"], input=batch, text=True, check=True)

    def both():
        with IPRoute() as ipr:
            slow = probe.gather(ipr, docker_socket=None)
        raw = Dumps()
        try:
            return slow, probe.gather(raw, docker_socket=None)
        finally:
            raw.close()

    slow, raw = in_netns(srv, both)
    kinds = {(e.kind, str(e.network)) for e in raw}
    assert {("route", "10.8.0.0/16"), ("route", "10.9.0.0/16"), ("route", "fd00:99::/48"),
            ("address", "fd00:42::/64"), ("neighbour", "172.42.10.7/32"), ("neighbour", "fd00:42::7/128"),
            ("peer", "172.22.10.119/32"), ("route", "10.105.249.0/24")} <= kinds
    assert [(e.kind, str(e.network), e.detail, e.onlink) for e in raw] == \
           [(e.kind, str(e.network), e.detail, e.onlink) for e in slow]
