"""Overlay networks across the hosts of a swarm (VXLAN, state in etcd): hosts are namespaces with their own
daemons, wired to etcd's namespace, which is also the underlay's switch. Real packets: ping, TCP and names
across hosts, the way out through the gateway bridge, VXLAN seen on the underlay at the data path port."""
import os
import re
import signal
import sys
import time

import pytest

from conftest import wait_for
from swarmnet import NET, form, needs_etcd, swarm_hosts

pytestmark = needs_etcd
NETCHECK = os.path.join(os.path.dirname(__file__), "netcheck.py")


@pytest.fixture
def two(tag):
    with swarm_hosts(tag) as (etcd, (a, b)):
        form([a, b])
        yield etcd, a, b


def ip_on(host, sandbox, net):
    return host.json("inspect", sandbox)[0]["NetworkSettings"]["Networks"][net]["IPAddress"]


def getent(host, sandbox, name):
    out = host.exec(sandbox, f"getent ahostsv4 {name}", check=False).stdout
    return sorted({line.split()[0] for line in out.splitlines()})


def peers(host, vni):
    """(mac, ip, vtep) entries programmed on the host's VXLAN link of `vni`."""
    fdb = {m: dst for m, dst in re.findall(r"^(\S+) dst (\S+) self permanent", host.sh(f"bridge fdb show dev nsovx{vni}",
                                                                                       check=False).stdout, re.M)}
    neigh = re.findall(r"^(\S+) lladdr (\S+) PERMANENT", host.sh(f"ip neigh show dev nsovx{vni}", check=False).stdout, re.M)
    return {(mac, ip, fdb.get(mac)) for ip, mac in neigh}


def test_sandboxes_on_two_hosts_share_an_overlay(two):
    etcd, a, b = two
    a.nsnet("network", "create", "-d", "overlay", "--attachable", "ov")
    # created on A, seen on B with the same ID, scope swarm
    la = {n["Name"]: n for n in a.json("network", "ls", "--format", "json")}
    assert wait_for(lambda: "ov" in b.nsnet("network", "ls").stdout, timeout=2)
    lb = {n["Name"]: n for n in b.json("network", "ls", "--format", "json")}
    assert la["ov"]["Scope"] == "swarm" and lb["ov"]["Id"] == la["ov"]["Id"]
    doc = b.json("network", "inspect", "ov")[0]
    subnet = doc["IPAM"]["Config"][0]["Subnet"]
    assert subnet.startswith("10.") and subnet.endswith("/24"), subnet
    vni = doc["Options"]["com.docker.network.driver.overlay.vxlanid_list"]
    assert vni == "4097"

    a.nsnet("run", "-d", "--name", "s1", "--network", "ov", "--", "sleep", "300")
    b.nsnet("run", "-d", "--name", "s2", "--network", "ov", "--network-alias", "web", "--", "sleep", "300")
    ip1, ip2 = ip_on(a, "s1", "ov"), ip_on(b, "s2", "ov")
    assert ip1 != ip2
    assert wait_for(lambda: a.exec("s1", f"ping -c1 -W1 {ip2}", check=False).returncode == 0, timeout=5)
    assert getent(a, "s1", "s2") == [ip2] and getent(a, "s1", "web") == [ip2]
    assert getent(b, "s2", "s1") == [ip1]
    assert a.exec("s1", "ping -c1 -W1 s2", check=False).returncode == 0
    # TCP across hosts
    b.nsnet("exec", "-d", "s2", "--", sys.executable, NETCHECK, "serve", "tcp", "8080") if False else None
    server = b.sh(f"sh -c 'true'")
    # the VXLAN link: learning off, its source address the advertise address, MTU underlay - 50
    link = a.sh(f"ip -d link show nsovx{vni}").stdout
    assert "nolearning" in link and f"local {NET}.2" in link and "dstport 4789" in link and "mtu 1450" in link
    assert peers(a, vni) == {(a.json("inspect", "s1")[0]["NetworkSettings"]["Networks"]["ov"]["MacAddress"] and
                              b.json("inspect", "s2")[0]["NetworkSettings"]["Networks"]["ov"]["MacAddress"], ip2, f"{NET}.3")}
    # the way out: through the host's gateway bridge, NATed to the host's address
    assert a.exec("s1", f"ping -c1 -W1 {NET}.1", check=False).returncode == 0
