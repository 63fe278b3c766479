"""Overlay networks across the hosts of a swarm (VXLAN, state in etcd): hosts are namespaces with their own
daemons, wired to etcd's namespace, which is also the underlay's switch (swarmnet.py). Real packets: ping,
TCP and names across hosts, the way out through the gateway bridge, VXLAN seen on the underlay at the data
path port; a dead daemon's sandboxes leave the other hosts' entries and names within the liveness TTL + 1 s."""
import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest

from conftest import changes, wait_for
from swarmnet import NET, form, needs_etcd, network_names, swarm_hosts, switch_port

pytestmark = needs_etcd
HERE = os.path.dirname(__file__)
NETCHECK = os.path.join(HERE, "netcheck.py")
CAPTURE = os.path.join(HERE, "capture.py")
MARKER = "6e736e65742d6f76"   # "nsnet-ov", the ping payload looked for on the underlay
VNI_KEY = "com.docker.network.driver.overlay.vxlanid_list"


@pytest.fixture
def two(tag):
    with swarm_hosts(tag) as (etcd, (a, b)):
        form([a, b])
        etcd.tag = tag
        yield etcd, a, b


def net_of(host, sandbox, net):
    return host.json("inspect", sandbox)[0]["NetworkSettings"]["Networks"][net]


def getent(host, sandbox, name):
    out = host.exec(sandbox, f"getent ahostsv4 {name}", check=False).stdout
    return sorted({line.split()[0] for line in out.splitlines()})


def peers(host, vni) -> set[tuple[str, str, str]]:
    """(mac, ip, host address) of the remote sandboxes programmed on the host's VXLAN link of `vni` (in the
    network's own namespace)."""
    fdb = dict(re.findall(r"^(\S+) dst (\S+) (?:link-netnsid \d+ )?self permanent", host.overlay_sh(f"bridge fdb show dev nsovx{vni}"), re.M))
    neigh = re.findall(r"^(\S+) lladdr (\S+) PERMANENT", host.overlay_sh(f"ip neigh show dev nsovx{vni}"), re.M)
    return {(mac, ip, fdb.get(mac)) for ip, mac in neigh}


def one_each(a, b, net="ov") -> str:
    """Sandbox s1 on host A and s2 on host B, both on `net`; s2's address there."""
    a.nsnet("run", "-d", "--name", "s1", "--network", net, "--", "sleep", "300")
    b.nsnet("run", "-d", "--name", "s2", "--network", net, "--", "sleep", "300")
    return net_of(b, "s2", net)["IPAddress"]


def create_overlay(a, b, *args):
    """Create on A; seen on B (etcd's watch)."""
    a.nsnet("network", "create", "-d", "overlay", *args)
    assert wait_for(lambda: args[-1] in network_names(b), timeout=2)


def test_sandboxes_on_two_hosts_share_an_overlay(two):
    etcd, a, b = two
    create_overlay(a, b, "--attachable", "ov")
    na = {n["Name"]: n for n in a.json("network", "ls", "--format", "json")}["ov"]
    nb = {n["Name"]: n for n in b.json("network", "ls", "--format", "json")}["ov"]
    assert (na["Scope"], nb["Scope"], nb["Id"]) == ("swarm", "swarm", na["Id"])
    doc = b.json("network", "inspect", "ov")[0]
    assert (doc["Driver"], doc["Scope"], doc["Attachable"]) == ("overlay", "swarm", True)
    subnet = doc["IPAM"]["Config"][0]["Subnet"]
    assert subnet == "10.0.1.0/24", subnet          # Docker's swarm pool, 10.0.0.0/8 as /24s: the first is ingress's
    vni = doc["Options"][VNI_KEY]
    assert vni == "4097"                            # as Docker's: ingress has 4096

    b.nsnet("run", "-d", "--name", "s2", "--network", "ov", "--network-alias", "web", "--",
            sys.executable, NETCHECK, "serve", "tcp", "8080")
    a.nsnet("run", "-d", "--name", "s1", "--network", "ov", "--", "sleep", "300")
    e1, e2 = net_of(a, "s1", "ov"), net_of(b, "s2", "ov")
    ip1, ip2 = e1["IPAddress"], e2["IPAddress"]
    assert ip1 != ip2 and {ip1, ip2} <= {"10.0.1.2", "10.0.1.3"}
    assert e1["Gateway"] == ""                      # as Docker's overlay: the way out is the gateway bridge

    # the data plane: nothing learnt, nothing flooded; each host holds exactly the other's sandbox
    assert wait_for(lambda: peers(a, vni) == {(e2["MacAddress"], ip2, f"{NET}.3")}, timeout=2), peers(a, vni)
    assert peers(b, vni) == {(e1["MacAddress"], ip1, f"{NET}.2")}
    link = a.overlay_sh(f"ip -d link show nsovx{vni}")
    assert all(w in link for w in ("nolearning", "proxy", f"local {NET}.2", "dstport 4789", "mtu 1450")), link
    assert "nsov" not in a.sh("ip link").stdout     # nothing of it in the host's namespace
    assert a.overlay_sh("sysctl -n net.bridge.bridge-nf-call-iptables").strip() in ("0", "")

    # real packets across hosts, and VXLAN on the underlay at the data path port carrying them
    cap = subprocess.Popen(["ip", "netns", "exec", etcd.ns, sys.executable, CAPTURE, switch_port(etcd.tag, 1), "4789", "3", MARKER],
                           stdout=subprocess.PIPE, text=True)
    try:
        assert cap.stdout.readline().strip() == "ready"
        ping = a.exec("s1", f"ping -c3 -i0.2 -W1 -p {MARKER} {ip2}", check=False)
        assert ping.returncode == 0, ping.stdout
        seen = json.loads(cap.stdout.readline())
    finally:
        cap.kill()
        cap.wait()
    assert seen["udp"] >= 6 and seen["marker"] >= 6, seen     # 3 requests and 3 replies, in clear
    assert getent(a, "s1", "s2") == [ip2] and getent(a, "s1", "web") == [ip2]
    assert getent(b, "s2", "s1") == [ip1]
    assert a.exec("s1", f"{sys.executable} {NETCHECK} ask tcp s2 8080").stdout.strip() == f"peer={ip1}"
    # the way out: through this host's gateway bridge, NATed to its own address
    assert a.exec("s1", f"ping -c1 -W1 {NET}.1", check=False).returncode == 0
    gw = a.json("network", "inspect", "docker_gwbridge")[0]
    assert gw["Options"]["com.docker.network.bridge.enable_icc"] == "false"

    # removed once, from any node; refused while any node has a sandbox on it
    p = a.nsnet("network", "rm", "ov", check=False)
    assert p.returncode != 0 and "s2 (node" in p.stderr and len(p.stderr.strip().splitlines()) == 1, p.stderr
    a.nsnet("rm", "-f", "s1")
    b.nsnet("rm", "-f", "s2")
    assert wait_for(lambda: not peers(a, vni) and not b.overlay_holders(), timeout=2)
    assert wait_for(lambda: a.nsnet("network", "rm", "ov", check=False).returncode == 0, timeout=2)
    assert wait_for(lambda: "ov" not in network_names(b), timeout=2)


def test_attach_rules_and_bad_input(two):
    etcd, a, b = two
    create_overlay(a, b, "svc")                        # not --attachable: for services only
    for args, says in ((["run", "-d", "--network", "svc", "--", "sleep", "1"], "network svc not manually attachable"),
                       (["network", "create", "-d", "overlay", "--subnet", "10.0.0.0/16", "x"], "overlaps"),
                       (["network", "create", "-d", "overlay", "-o", f"{VNI_KEY}=4097", "y"], "VXLAN ID 4097"),
                       (["network", "create", "-d", "overlay", "-o", "bogus=1", "z"], "unknown option")):
        before = b.state()
        p = b.nsnet(*args, check=False)
        assert p.returncode != 0 and says in p.stderr and len(p.stderr.strip().splitlines()) == 1, p.stderr
        assert changes(before, b.state()) == {}
    b.nsnet("run", "-d", "--name", "c", "--", "sleep", "300")
    b.nsnet("network", "connect", "svc", "c", check=False)
    assert "svc" not in json.dumps(b.json("inspect", "c")[0]["NetworkSettings"]["Networks"])
    # leaving with a sandbox on a swarm network is refused
    create_overlay(a, b, "--attachable", "ov")
    b.nsnet("network", "connect", "ov", "c")
    p = b.nsnet("swarm", "leave", check=False)
    assert p.returncode != 0 and "sandboxes c are on its networks" in p.stderr, p.stderr
    b.nsnet("network", "disconnect", "ov", "c")
    b.nsnet("swarm", "leave")
    assert "ov" not in network_names(b)
    p = b.nsnet("network", "create", "-d", "overlay", "w", check=False)
    assert p.returncode != 0 and "need a swarm" in p.stderr, p.stderr


def test_a_dead_daemon_leaves_the_other_hosts_and_comes_back(two):
    etcd, a, b = two
    create_overlay(a, b, "--attachable", "ov")
    vni = a.json("network", "inspect", "ov")[0]["Options"][VNI_KEY]
    ip2 = one_each(a, b)
    assert wait_for(lambda: len(peers(a, vni)) == 1 and getent(a, "s1", "s2") == [ip2], timeout=3)

    os.kill(b.daemon_pid(), signal.SIGKILL)
    killed = time.monotonic()
    assert wait_for(lambda: not peers(a, vni), timeout=12, interval=0.05)
    gone_after = time.monotonic() - killed
    assert gone_after <= 11, f"B's sandbox left A's forwarding entries only after {gone_after:.1f} s"
    assert getent(a, "s1", "s2") == []
    # its address is not given to anyone else while B is only down
    a.nsnet("run", "-d", "--name", "s3", "--network", "ov", "--", "sleep", "300")
    assert net_of(a, "s3", "ov")["IPAddress"] != ip2

    b.overlay_sh(f"ip link del nsovx{vni}")       # and B's kernel loses its VXLAN link meanwhile
    b.nsnet("ps")                                  # any call starts B's daemon again: it rejoins, repairs, republishes
    assert wait_for(lambda: len(peers(a, vni)) == 1 and getent(a, "s1", "s2") == [ip2], timeout=5), peers(a, vni)
    assert len(peers(b, vni)) == 2                 # s1 and s3, both on A
    assert a.exec("s1", f"ping -c1 -W1 {ip2}", check=False).returncode == 0
    assert b.exec("s2", "ping -c1 -W1 s3", check=False).returncode == 0


def test_an_overlays_namespace_outlives_its_daemon_and_goes_with_its_last_sandbox(two):
    """The bridge and VXLAN link live in the network's own namespace, held by a process of its own: traffic
    flows while the daemon is dead; a restart finds the namespace again, and removes it when the sandboxes
    that needed it ended meanwhile."""
    etcd, a, b = two
    create_overlay(a, b, "--attachable", "ov")
    a.nsnet("run", "-d", "--name", "s1", "--network", "ov", "--", "sleep", "300")
    b.nsnet("run", "-d", "--name", "s2", "--network", "ov", "--", "sleep", "300")
    b.nsnet("run", "-d", "--name", "s3", "--network", "ov", "--", "sleep", "300")
    ip2, vni = net_of(b, "s2", "ov")["IPAddress"], a.json("network", "inspect", "ov")[0]["Options"][VNI_KEY]
    assert wait_for(lambda: len(peers(a, vni)) == 2, timeout=3)
    (holder,) = b.overlay_holders()
    os.kill(b.daemon_pid(), signal.SIGKILL)
    assert a.exec("s1", f"ping -c2 -i0.2 -W1 {ip2}", check=False).returncode == 0   # within the TTL: still on A
    b.nsnet("ps")                                  # restarted: the same namespace, adopted, nothing rebuilt
    assert b.overlay_holders() == [holder]
    assert a.exec("s1", f"ping -c1 -W1 {ip2}", check=False).returncode == 0

    pids = [b.json("inspect", name)[0]["State"]["Pid"] for name in ("s2", "s3")]   # (a CLI call starts the daemon)
    os.kill(b.daemon_pid(), signal.SIGKILL)
    for pid in pids:                               # B's sandboxes end while no daemon runs there
        os.kill(pid, signal.SIGKILL)
    b.nsnet("ps")
    assert wait_for(lambda: not b.overlay_holders() and not peers(a, vni), timeout=3), b.overlay_holders()
    assert not os.listdir(os.path.join(b.root, "overlay"))


def test_a_sandbox_that_asked_before_the_peer_existed_is_answered_at_once(two):
    """B's sandbox pings an address before A's sandbox has it: its ARP goes unanswered, and the kernel would ask
    again only after its retransmit time (5 s here, to tell the two apart). When A's sandbox arrives, B
    programs it and announces it on the overlay's bridge: the waiting sandbox has its answer at once."""
    etcd, a, b = two
    create_overlay(a, b, "--attachable", "--subnet", "10.9.0.0/24", "ov")
    b.nsnet("run", "-d", "--name", "s2", "--network", "ov", "--", "sleep", "300")
    b.exec("s2", "echo 5000 > /proc/sys/net/ipv4/neigh/eth0/retrans_time_ms")
    a.nsnet("run", "-d", "--name", "base", "--", "sleep", "300")
    ping = subprocess.Popen(["ip", "netns", "exec", b.ns, sys.executable, "-m", "nsnet", "--root", b.root, "exec", "s2",
                             "--", "ping", "-c1", "-w10", "-i0.2", "10.9.0.50"], stdout=subprocess.PIPE, text=True)
    try:
        time.sleep(0.5)                              # its ARP is out and unanswered
        a.nsnet("network", "connect", "--ip", "10.9.0.50", "ov", "base")
        connected = time.monotonic()
        out, _ = ping.communicate(timeout=15)
        answered_after = time.monotonic() - connected
    finally:
        ping.kill()
    assert ping.returncode == 0, out
    assert answered_after < 2.5, f"answered {answered_after:.1f} s after the attach: the kernel asked again"


def test_an_address_that_moves_here_from_another_host_is_reached_at_once(two):
    """s2 on B at .50 talks to s1 on A, so A's overlay bridge learns .50's MAC (derived from the address) on its
    VXLAN port. s2 goes; a silent sandbox on A takes .50, with the same MAC. s1 reaches it at once: the bridge's
    learnt entry went with the peer, or it would send to the VXLAN port for 300 s (the bridge's ageing)."""
    etcd, a, b = two
    create_overlay(a, b, "--attachable", "--subnet", "10.9.0.0/24", "ov")
    a.nsnet("run", "-d", "--name", "s1", "--network", "ov", "--", "sleep", "300")
    b.nsnet("run", "-d", "--name", "s2", "--network", "ov", "--ip", "10.9.0.50", "--", "sleep", "300")
    assert wait_for(lambda: a.exec("s1", "ping -c1 -W1 10.9.0.50", check=False).returncode == 0, timeout=5)
    b.nsnet("rm", "-f", "s2")
    vni = a.json("network", "inspect", "ov")[0]["Options"][VNI_KEY]
    assert wait_for(lambda: not any(ip == "10.9.0.50" for _, ip, _ in peers(a, vni)), timeout=3)
    a.nsnet("run", "-d", "--name", "s3", "--network", "ov", "--ip", "10.9.0.50", "--", "sleep", "300")
    p = a.exec("s1", "ping -c3 -i0.2 -W1 10.9.0.50", check=False)
    assert p.returncode == 0 and " 0% packet loss" in p.stdout, p.stdout


def test_overlay_mtu_follows_the_underlay(tag):
    with swarm_hosts(tag, mtu=1400) as (etcd, (a, b)):
        form([a, b])
        create_overlay(a, b, "--attachable", "ov")
        a.nsnet("run", "-d", "--name", "s1", "--network", "ov", "--", "sleep", "300")
        b.nsnet("run", "-d", "--name", "s2", "--network", "ov", "--", "sleep", "300")
        assert "mtu 1350" in a.exec("s1", "ip link show eth0").stdout
        ip2 = net_of(b, "s2", "ov")["IPAddress"]
        # a full-size packet crosses without fragmenting the underlay's frames (DF set)
        assert a.exec("s1", f"ping -c1 -W1 -M do -s {1350 - 28} {ip2}", check=False).returncode == 0


def test_node_rm_of_a_dead_host_frees_its_addresses(two):
    etcd, a, b = two
    create_overlay(a, b, "--attachable", "ov")
    b.nsnet("run", "-d", "--name", "s2", "--network", "ov", "--", "sleep", "300")
    ip2 = net_of(b, "s2", "ov")["IPAddress"]
    os.kill(b.daemon_pid(), signal.SIGKILL)
    p = a.nsnet("network", "rm", "ov", check=False)   # B's sandbox still holds the network while B is down
    assert p.returncode != 0 and "s2 (node" in p.stderr, p.stderr
    assert wait_for(lambda: "Down" in a.nsnet("node", "ls").stdout, timeout=12, interval=0.1)
    a.nsnet("node", "rm", "host-b")
    a.nsnet("run", "-d", "--name", "s1", "--network", "ov", "--", "sleep", "300")
    assert net_of(a, "s1", "ov")["IPAddress"] == ip2  # the lowest free one: B's, freed with B
    a.nsnet("rm", "-f", "s1")
    assert wait_for(lambda: a.nsnet("network", "rm", "ov", check=False).returncode == 0, timeout=2)


def test_etcd_down_traffic_flows_changes_fail_at_once_then_the_node_catches_up(two):
    etcd, a, b = two
    create_overlay(a, b, "--attachable", "ov")
    ip2 = one_each(a, b)
    assert wait_for(lambda: a.exec("s1", f"ping -c1 -W1 {ip2}", check=False).returncode == 0, timeout=3)

    etcd.kill(0)
    assert a.exec("s1", f"ping -c3 -i0.2 -W1 {ip2}", check=False).returncode == 0   # the data plane stays
    assert getent(a, "s1", "s2") == [ip2]                                             # and the names
    for args in (["network", "create", "-d", "overlay", "ov2"],
                 ["run", "-d", "--name", "s3", "--network", "ov", "--", "sleep", "300"]):
        before, t = a.state(), time.monotonic()
        p = a.nsnet(*args, check=False)
        took = time.monotonic() - t
        assert p.returncode != 0 and f"{NET}.1:2379" in p.stderr and len(p.stderr.strip().splitlines()) == 1, p.stderr
        assert took < 3, f"{args[0]} took {took:.1f} s to fail"
        assert changes(before, a.state()) == {}
    a.nsnet("network", "create", "loc")                                    # local networks: as ever
    a.nsnet("run", "-d", "--name", "l1", "--network", "loc", "--", "sleep", "300")

    etcd.restart(0)
    # the node catches up by itself: B's network, made as soon as etcd is back, reaches A; A attaches again
    assert wait_for(lambda: b.nsnet("network", "create", "-d", "overlay", "--attachable", "ov2",
                                    check=False).returncode == 0, timeout=15, interval=0.5)
    assert wait_for(lambda: "ov2" in network_names(a), timeout=5)
    a.nsnet("run", "-d", "--name", "s3", "--network", "ov", "--", "sleep", "300")
    assert wait_for(lambda: b.exec("s2", "ping -c1 -W1 s3", check=False).returncode == 0, timeout=5)


def test_concurrent_attaches_on_two_hosts_never_share_an_address(two):
    from concurrent.futures import ThreadPoolExecutor
    etcd, a, b = two
    create_overlay(a, b, "--attachable", "ov")

    def run(host, i):
        host.nsnet("run", "-d", "--name", f"c{i}", "--network", "ov", "--", "sleep", "300")
        return host, f"c{i}"
    with ThreadPoolExecutor(8) as pool:
        started = list(pool.map(lambda i: run(a if i % 2 else b, i), range(16)))
    ips = [net_of(h, name, "ov")["IPAddress"] for h, name in started]
    assert len(set(ips)) == 16, sorted(ips)
    # and each host's view agrees: the other's sandboxes are its peers, one entry each
    vni = a.json("network", "inspect", "ov")[0]["Options"][VNI_KEY]
    assert wait_for(lambda: len(peers(a, vni)) == 8 and len(peers(b, vni)) == 8, timeout=3)


def test_a_three_member_etcd_with_one_member_down_changes_nothing(tag):
    with swarm_hosts(tag, members=3) as (etcd, (a, b)):
        form([a, b], store="etcd://" + ",".join(e.split("//")[1] for e in etcd.endpoints))
        create_overlay(a, b, "--attachable", "ov")
        a.nsnet("run", "-d", "--name", "s1", "--network", "ov", "--", "sleep", "300")
        etcd.kill(0)   # the member both hosts talk to first (perhaps the leader: a new one is elected)
        b.nsnet("run", "-d", "--name", "s2", "--network", "ov", "--", "sleep", "300")
        create_overlay(b, a, "--attachable", "ov2")
        a.nsnet("network", "connect", "ov2", "s1")
        assert wait_for(lambda: b.exec("s2", "ping -c1 -W1 s1", check=False).returncode == 0, timeout=5)
        assert "Down" not in a.nsnet("node", "ls").stdout


def test_a_subnet_in_use_on_any_node_is_never_an_overlays(tag):
    """Host A's users are on 10.0.0.0/24 (a link of A's holds 10.0.0.7/24): the ingress network that A's swarm
    init makes takes the next /24, 10.0.1.0/24. Host B's are on 10.0.2.0/24: an overlay created on A skips that
    /24 too, although A sees nothing there. An --internal overlay gets no way out."""
    with swarm_hosts(tag) as (etcd, (a, b)):
        for h, cidr in ((a, "10.0.0.7/24"), (b, "10.0.2.7/24")):
            h.sh("ip link add lan0 type veth peer name lan1")
            h.sh(f"ip addr add {cidr} dev lan0")
            h.sh("ip link set lan0 up")
        form([a, b])
        assert b.json("network", "inspect", "ingress")[0]["IPAM"]["Config"][0]["Subnet"] == "10.0.1.0/24"
        assert wait_for(lambda: "10.0.2.0/24" in etcd_text(etcd, "evidence/"), timeout=5)
        create_overlay(a, b, "--attachable", "ov")
        assert a.json("network", "inspect", "ov")[0]["IPAM"]["Config"][0]["Subnet"] == "10.0.3.0/24"
        p = a.nsnet("network", "create", "-d", "overlay", "--subnet", "10.0.2.0/24", "x", check=False)
        assert p.returncode != 0 and "10.0.2.0/24" in p.stderr and "host-b" in p.stderr, p.stderr

        create_overlay(a, b, "--attachable", "--internal", "inside")
        a.nsnet("run", "-d", "--name", "i1", "--network", "inside", "--hostname", "deep", "--", "sleep", "300")
        b.nsnet("run", "-d", "--name", "i2", "--network", "inside", "--", "sleep", "300")
        assert list(a.json("inspect", "i1")[0]["NetworkSettings"]["Networks"]) == ["inside"]   # no gateway bridge
        assert a.exec("i1", f"ping -c1 -W1 {NET}.1", check=False).returncode != 0
        assert wait_for(lambda: b.exec("i2", "ping -c1 -W1 deep", check=False).returncode == 0, timeout=3)


def etcd_text(etcd, prefix: str) -> str:
    from nsnet.kernel import netns
    from nsnet.store.etcd import EtcdKV
    with netns.entered(f"/run/netns/{etcd.ns}"):
        kv = EtcdKV(etcd.endpoints)
        try:
            return json.dumps([e.value for e in kv.list(prefix)])
        finally:
            kv.close()


def test_a_node_down_past_the_grace_period_gives_its_addresses_back(tag):
    with swarm_hosts(tag) as (etcd, (a, b)):
        with open(os.path.join(a.root, "config.toml"), "w") as f:
            f.write("swarm-address-grace = 2\n")     # a day by default
        form([a, b])
        create_overlay(a, b, "--attachable", "ov")
        b.nsnet("run", "-d", "--name", "s2", "--network", "ov", "--", "sleep", "300")
        ip2 = net_of(b, "s2", "ov")["IPAddress"]
        os.kill(b.daemon_pid(), signal.SIGKILL)
        assert wait_for(lambda: "Down" in a.nsnet("node", "ls").stdout, timeout=12, interval=0.1)
        a.nsnet("run", "-d", "--name", "s1", "--network", "ov", "--", "sleep", "300")
        assert net_of(a, "s1", "ov")["IPAddress"] != ip2     # still B's, within the grace period
        assert wait_for(lambda: "endpoint/" not in etcd_text(etcd, "endpoint/") and
                        ip2 not in etcd_text(etcd, "endpoint/"), timeout=6)
        a.nsnet("run", "-d", "--name", "s3", "--network", "ov", "--", "sleep", "300")
        assert net_of(a, "s3", "ov")["IPAddress"] == ip2     # freed after it
        assert "host-b" in a.nsnet("node", "ls").stdout      # B stays listed, Down


def test_a_host_cut_off_leaves_the_others_and_comes_back(two):
    etcd, a, b = two
    create_overlay(a, b, "--attachable", "ov")
    vni = a.json("network", "inspect", "ov")[0]["Options"][VNI_KEY]
    ip2 = one_each(a, b)
    assert wait_for(lambda: len(peers(a, vni)) == 1, timeout=3)
    b.sh("ip link set up0 down")                   # B's daemon runs on, but reaches nothing
    cut = time.monotonic()
    assert wait_for(lambda: not peers(a, vni), timeout=12, interval=0.05)
    assert time.monotonic() - cut <= 11
    assert getent(a, "s1", "s2") == []
    b.sh("ip link set up0 up")
    # B's lease is taken anew and its watch reconnects: its sandbox is back on A, and traffic flows
    assert wait_for(lambda: len(peers(a, vni)) == 1 and getent(a, "s1", "s2") == [ip2], timeout=20, interval=0.2)
    assert wait_for(lambda: b.exec("s2", "ping -c1 -W1 s1", check=False).returncode == 0, timeout=10)


def test_a_node_removed_by_force_leaves_for_good(two):
    etcd, a, b = two
    create_overlay(a, b, "--attachable", "ov")
    b.nsnet("run", "-d", "--name", "s2", "--network", "ov", "--", "sleep", "300")
    a.nsnet("node", "rm", "--force", "host-b")
    # B notices at its next lease renewal (every TTL/3): out of the swarm, its sandbox off the overlay
    assert wait_for(lambda: b.json("info")["Swarm"]["LocalNodeState"] == "inactive", timeout=6, interval=0.2)
    assert "ov" not in b.json("inspect", "s2")[0]["NetworkSettings"]["Networks"]
    assert not b.overlay_holders()
    os.kill(b.daemon_pid(), signal.SIGKILL)
    b.nsnet("ps")                                  # a restarted B stays out
    time.sleep(1)
    assert "host-b" not in a.nsnet("node", "ls").stdout
