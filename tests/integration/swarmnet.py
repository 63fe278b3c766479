"""Hosts of a swarm on one machine: each host a namespace with its own daemon and NSNET_ROOT, wired by a veth
to a bridge in etcd's namespace (the underlay's switch, 192.168.213.0/24, etcd at .1, host i at .2+i), etcd
started there from Debian's etcd-server. Everything is removed on the way out, whatever failed."""
import contextlib
import os

import pytest

from conftest import Host, sh
from etcdserver import ETCD, EtcdCluster

NET = "192.168.213"
STORE = f"etcd://{NET}.1:2379"
WG_RUN = "/run/wireguard"

needs_etcd = pytest.mark.skipif(not os.path.exists(ETCD), reason="etcd is not installed (Debian's etcd-server: scripts/setup.sh)")


@contextlib.contextmanager
def swarm_hosts(tag: str, count: int = 2, mtu: int | None = None, members: int = 1):
    """(etcd, [hosts]): the hosts' underlay links are `up0`; `mtu` sets theirs (and the switch ports').
    `members`: etcd's, all on the switch's address (client ports 2379, 2479, ...)."""
    etcd = EtcdCluster(f"nsnt-etcd-{tag}", members=members, address=f"{NET}.1")
    wg_dir_was_there = os.path.isdir(WG_RUN)   # wireguard-go's control sockets (encrypted overlays)
    hosts = [Host(f"{tag}{chr(ord('a') + i)}") for i in range(count)]
    try:
        sh(f"ip -n {etcd.ns} link add sw0 type bridge")
        sh(f"ip -n {etcd.ns} addr add {NET}.1/24 dev sw0")
        sh(f"ip -n {etcd.ns} link set sw0 up")
        for i, h in enumerate(hosts):
            port = switch_port(tag, i)
            sh(f"ip link add up0 netns {h.ns} type veth peer name {port} netns {etcd.ns}")
            if mtu:
                sh(f"ip -n {h.ns} link set up0 mtu {mtu}")
                sh(f"ip -n {etcd.ns} link set {port} mtu {mtu}")
            sh(f"ip -n {h.ns} addr add {NET}.{i + 2}/24 dev up0")
            sh(f"ip -n {h.ns} link set up0 up")
            sh(f"ip -n {etcd.ns} link set {port} master sw0 up")
        etcd.start()
        yield etcd, hosts
    finally:
        for h in hosts:
            h.cleanup()
        etcd.stop()
        if not wg_dir_was_there:   # made by the tests' wireguard-go: the machine's /run as it was
            try:
                os.rmdir(WG_RUN)
            except OSError:
                pass   # absent, or someone else's sockets in it


def switch_port(tag: str, i: int) -> str:
    """Host i's port on the switch (in etcd's namespace): where a capture sees what that host sends."""
    return f"p{i}{tag}"


def network_names(host: Host) -> set[str]:
    """The networks `network ls` shows on `host`, by name (a name may be a part of another row's driver or
    scope, e.g. "ov" of "overlay": the table's text is no test)."""
    return {n["Name"] for n in host.json("network", "ls", "--format", "json")}


def form(hosts: list[Host], store: str = STORE) -> None:
    """The first host inits the swarm, the others join; node names host-a, host-b, ..."""
    for i, h in enumerate(hosts):
        verb = "init" if i == 0 else "join"
        h.nsnet("swarm", verb, "--advertise-addr", f"{NET}.{i + 2}", "--store", store,
                "--node-name", f"host-{chr(ord('a') + i)}")
