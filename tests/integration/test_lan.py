"""Sandboxes on the LAN itself (macvlan, ipvlan, a flat bridge), on a simulated LAN: a "switch" bridge in
its own namespace with a router, another machine (pc) and the engine's host plugged into it."""
import os
import signal
import sys
from types import SimpleNamespace

import pytest

from conftest import changes, sh, wait_for

NETCHECK = os.path.join(os.path.dirname(__file__), "netcheck.py")
PY = sys.executable
LAN = "192.168.50"
SUBNET = f"{LAN}.0/24"
ROUTER, PC, HOST = f"{LAN}.1", f"{LAN}.20", f"{LAN}.2"
BEYOND = "203.0.113.1"  # an address behind the LAN's router


def build_lan(host, machines) -> SimpleNamespace:
    host.nsnet("network", "ls")  # the daemon is up: its start is no change to compare
    sw = machines.add("sw")
    sh(f"ip -n {sw} link add sw0 type bridge")
    sh(f"ip -n {sw} link set sw0 up")

    def plug(ns, cidr):
        mine, port = machines.wire(ns, cidr, sw, "")
        sh(f"ip -n {sw} link set {port} master sw0")
        return mine

    router, pc = machines.add("rt"), machines.add("pc")
    plug(router, f"{ROUTER}/24")
    sh(f"ip -n {router} addr add {BEYOND}/32 dev lo")
    pc_nic = plug(pc, f"{PC}/24")
    sh(f"ip -n {pc} route add default via {ROUTER}")
    nic = plug(host.ns, f"{HOST}/24")
    return SimpleNamespace(sw=sw, router=router, pc=pc, pc_nic=pc_nic, nic=nic)


def ip_of(host, sandbox: str, network: str) -> str:
    return host.json("inspect", sandbox)[0]["NetworkSettings"]["Networks"][network]["IPAddress"]


def run(host, name: str, *args: str) -> None:
    host.nsnet("run", "-d", "--name", name, *args, "--", "sleep", "300")


def ping_from(host, sandbox: str, ip: str) -> bool:
    return host.exec(sandbox, f"ping -c1 -W1 {ip}", check=False).returncode == 0


def ping_ns(ns: str, ip: str) -> bool:
    return sh(f"ip netns exec {ns} ping -c1 -W1 {ip}", check=False).returncode == 0


def lacks(host, kind: str) -> str:
    """The kernel option missing for `kind` links ("" when the kernel has them), probed in the host namespace."""
    code = f"from nsnet.kernel import features; print(features.missing({kind!r}) or '')"
    return host.sh(f"{PY} -c \"{code}\"").stdout.strip()


def refused(host, *args: str) -> str:
    """Run a command that must fail in one line and change nothing; return the line."""
    before = host.state()
    p = host.nsnet(*args, check=False)
    err = p.stderr.strip()
    assert p.returncode != 0 and err.startswith("Error:") and len(err.splitlines()) == 1, (args, p.stdout, err)
    assert host.state() == before, args
    return err


def macvlan(host, lan, name: str, *extra: str) -> None:
    host.nsnet("network", "create", "-d", "macvlan", "--subnet", SUBNET, "--gateway", ROUTER,
               "--ip-range", f"{LAN}.64/28", "-o", f"parent={lan.nic}", *extra, name)


def test_macvlan_sandboxes_are_machines_of_the_lan(host, machines):
    lan = build_lan(host, machines)
    host.nsnet("network", "create", "--subnet", "10.77.0.0/24", "side")
    before = host.state()
    macvlan(host, lan, "mv")
    run(host, "a", "--network", "mv")
    run(host, "b", "--network", "mv")
    a, b = ip_of(host, "a", "mv"), ip_of(host, "b", "mv")
    assert (a, b) == (f"{LAN}.64", f"{LAN}.65")
    a_mac = host.json("inspect", "a")[0]["NetworkSettings"]["Networks"]["mv"]["MacAddress"]
    assert a_mac == "02:42:c0:a8:32:40"

    # The other machine and the sandbox reach each other directly: it learns the sandbox's own MAC.
    assert ping_ns(lan.pc, a)
    assert a_mac in sh(f"ip -n {lan.pc} neigh show {a}").stdout
    assert ping_from(host, "a", PC)
    assert ping_from(host, "a", b)                 # two sandboxes of the network
    assert ping_from(host, "a", BEYOND)            # through the LAN's router, its default gateway
    assert "default via " + ROUTER in host.exec("a", "ip route").stdout
    # The known macvlan limit: not the host, and inspect says so.
    assert not host.sh(f"ping -c1 -W1 {a}", check=False).returncode == 0
    notes = " ".join(host.json("network", "inspect", "mv")[0]["Notes"])
    assert "host cannot reach" in notes and "host_shim=true" in notes
    # No bridge, no veth, no rule of nsnet's for it on the host.
    now = host.state()
    assert (now["links"], now["nft"]) == (before["links"], before["nft"])

    # Addresses already on the LAN are refused; taken ones are never handed out.
    assert "answers ARP" in refused(host, "run", "-d", "--name", "c", "--network", "mv", "--ip", PC, "--", "true")
    assert "own address" in refused(host, "run", "-d", "--name", "c", "--network", "mv", "--ip", HOST, "--", "true")
    run(host, "c", "--network", "mv", "--ip", f"{LAN}.30")
    assert ping_ns(lan.pc, f"{LAN}.30")

    # Disconnecting a live sandbox removes its macvlan link; removing everything restores the host.
    run(host, "d", "--network", "side")
    host.nsnet("network", "connect", "mv", "d")
    assert "eth1@" in host.exec("d", "ip -o link").stdout
    host.nsnet("network", "disconnect", "mv", "d")
    assert "eth1" not in host.exec("d", "ip -o link").stdout
    host.nsnet("rm", "-f", "a", "b", "c", "d")
    host.nsnet("network", "rm", "mv")
    assert host.state() == before, changes(before, host.state())


def test_macvlan_skips_addresses_the_lan_already_uses(host, machines):
    lan = build_lan(host, machines)
    sh(f"ip -n {lan.pc} addr add {LAN}.64/24 dev {lan.pc_nic}")  # the first address of the range is taken
    macvlan(host, lan, "mv")
    run(host, "a", "--network", "mv")
    assert ip_of(host, "a", "mv") == f"{LAN}.65"


def test_the_host_shim_lets_the_host_in_and_goes_with_the_network(host, machines):
    lan = build_lan(host, machines)
    before = host.state()
    macvlan(host, lan, "mv", "-o", "host_shim=true")
    net = host.json("network", "inspect", "mv")[0]
    shim = net["IPAM"]["Config"][0]["AuxiliaryAddresses"]["host_shim"]
    assert shim == f"{LAN}.254"
    assert shim in " ".join(net["Notes"])
    run(host, "a", "--network", "mv")
    a = ip_of(host, "a", "mv")
    assert host.sh(f"ping -c1 -W1 {a}", check=False).returncode == 0
    assert ping_from(host, "a", shim)
    assert ping_ns(lan.pc, a) and ping_ns(lan.pc, HOST)  # the host's own LAN address is as before
    assert f"{HOST}" in host.sh(f"ip route get {PC}").stdout  # ...and still its source towards the LAN
    # A daemon killed and restarted keeps the shim and its routes (reconcile knows them as the network's).
    os.kill(host.daemon_pid(), signal.SIGKILL)
    host.nsnet("network", "ls")
    assert host.sh(f"ping -c1 -W1 {a}", check=False).returncode == 0
    host.nsnet("rm", "-f", "a")
    assert a not in host.sh("ip route").stdout
    host.nsnet("network", "rm", "mv")
    assert host.state() == before


def test_flat_bridge_is_adopted_used_and_left_as_it_was(host, machines):
    lan = build_lan(host, machines)
    # A VM host's flat bridge: the NIC enslaved to br0, which holds the host's LAN address.
    host.sh("ip link add br0 type bridge")
    host.sh(f"ip link set {lan.nic} master br0")
    host.sh(f"ip addr del {HOST}/24 dev {lan.nic}")
    host.sh(f"ip addr add {HOST}/24 dev br0")
    host.sh("ip link set br0 up")
    assert wait_for(lambda: ping_ns(host.ns, PC))
    # IPv6 comes up on a new bridge by itself, a moment later: let it, before taking the "before".
    assert wait_for(lambda: "ff00::/8" in host.sh("ip -6 route show table local dev br0").stdout)
    machines.spawn(lan.pc, f"{PY} {NETCHECK} serve tcp 9000")
    before = host.state()
    host.nsnet("network", "create", "--driver=bridge", "--subnet", SUBNET, "--gateway", ROUTER,
               "--ip-range", f"{LAN}.128/29", "--aux-address", f"ip1={LAN}.128", "--aux-address", f"ip2={LAN}.130",
               "-o", "com.docker.network.bridge.name=br0", "flat")
    for n in ("a", "b", "c"):
        run(host, n, "--network", "flat")
    got = [ip_of(host, n, "flat") for n in ("a", "b", "c")]
    assert got == [f"{LAN}.129", f"{LAN}.131", f"{LAN}.132"]   # in the range, never an aux-address
    a = got[0]
    assert ping_from(host, "a", PC) and ping_ns(lan.pc, a)
    # Not masqueraded: the LAN machine sees the sandbox's own address.
    assert wait_for(lambda: host.exec("a", f"{PY} {NETCHECK} ask tcp {PC} 9000", check=False).stdout.strip()
                    == f"peer={a}")
    assert ping_from(host, "a", BEYOND)
    os.kill(host.daemon_pid(), signal.SIGKILL)  # a restart neither rebuilds nor removes what it does not own
    host.nsnet("network", "ls")
    assert ping_from(host, "b", PC)
    # Adopted, not owned: no address given to br0, no rule about it.
    assert host.sh("ip -o addr show dev br0").stdout.count(" inet ") == 1
    assert "br0" not in host.sh("nft list table inet nsnet").stdout
    assert "br0" in " ".join(host.json("network", "inspect", "flat")[0]["Notes"])
    host.nsnet("rm", "-f", "a", "b", "c")
    host.nsnet("network", "rm", "flat")
    assert host.state() == before
    assert "master br0" in host.sh(f"ip -o link show {lan.nic}").stdout
    assert ping_ns(host.ns, PC)


def test_bad_lan_networks_are_refused_in_one_line_and_change_nothing(host, machines):
    lan = build_lan(host, machines)
    assert "-o parent=IF" in refused(host, "network", "create", "-d", "macvlan", "--subnet", SUBNET, "x")
    assert "eth9 does not exist" in refused(host, "network", "create", "-d", "macvlan", "--subnet", SUBNET,
                                            "-o", "parent=eth9", "x")
    assert "--subnet" in refused(host, "network", "create", "-d", "macvlan", "-o", f"parent={lan.nic}", "x")
    assert "macvlan_mode" in refused(host, "network", "create", "-d", "macvlan", "--subnet", SUBNET,
                                     "-o", f"parent={lan.nic}", "-o", "macvlan_mode=l3", "x")
    assert "not a bridge" in refused(host, "network", "create", "--subnet", SUBNET,
                                     "-o", f"com.docker.network.bridge.name={lan.nic}", "x")
    macvlan(host, lan, "mv")
    assert "already using parent" in refused(host, "network", "create", "-d", "macvlan", "--subnet", "10.9.0.0/24",
                                             "-o", f"parent={lan.nic}", "y")


def test_ipvlan_where_the_kernel_lacks_it_fails_at_once(host, machines):
    lan = build_lan(host, machines)
    if not lacks(host, "ipvlan"):
        pytest.skip("this kernel has ipvlan: no error path to see")
    err = refused(host, "network", "create", "-d", "ipvlan", "--subnet", SUBNET, "-o", f"parent={lan.nic}", "iv")
    assert "CONFIG_IPVLAN" in err


def test_8021q_parent_where_the_kernel_lacks_it_fails_at_once(host, machines):
    lan = build_lan(host, machines)
    if not lacks(host, "vlan"):
        pytest.skip("this kernel has 802.1Q: no error path to see")
    err = refused(host, "network", "create", "-d", "macvlan", "--subnet", "10.10.0.0/24",
                  "-o", f"parent={lan.nic}.10", "v10")
    assert "CONFIG_VLAN_8021Q" in err


def test_ipvlan_l2_sandboxes_share_the_parents_mac(host, machines):
    lan = build_lan(host, machines)
    missing = lacks(host, "ipvlan")
    if missing:
        pytest.skip(f"this kernel lacks ipvlan ({missing} is not set)")
    before = host.state()
    host.nsnet("network", "create", "-d", "ipvlan", "--subnet", SUBNET, "--gateway", ROUTER,
               "--ip-range", f"{LAN}.64/28", "-o", f"parent={lan.nic}", "iv")
    run(host, "a", "--network", "iv")
    run(host, "b", "--network", "iv")
    a, b = ip_of(host, "a", "iv"), ip_of(host, "b", "iv")
    nic_mac = host.sh(f"cat /sys/class/net/{lan.nic}/address").stdout.strip()
    assert ping_ns(lan.pc, a) and ping_from(host, "a", b) and ping_from(host, "a", BEYOND)
    assert nic_mac in sh(f"ip -n {lan.pc} neigh show {a}").stdout
    host.nsnet("rm", "-f", "a", "b")
    host.nsnet("network", "rm", "iv")
    assert host.state() == before


def test_8021q_parent_is_made_and_removed_with_its_network(host, machines):
    lan = build_lan(host, machines)
    missing = lacks(host, "vlan")
    if missing:
        pytest.skip(f"this kernel lacks 802.1Q ({missing} is not set)")
    sh(f"ip -n {lan.pc} link add link {lan.pc_nic} name vl10 type vlan id 10")
    sh(f"ip -n {lan.pc} addr add 10.10.0.20/24 dev vl10")
    sh(f"ip -n {lan.pc} link set vl10 up")
    before = host.state()
    host.nsnet("network", "create", "-d", "macvlan", "--subnet", "10.10.0.0/24", "-o", f"parent={lan.nic}.10", "v10")
    assert f"{lan.nic}.10" in host.state()["links"]
    run(host, "a", "--network", "v10")
    assert ping_from(host, "a", "10.10.0.20")
    host.nsnet("rm", "-f", "a")
    host.nsnet("network", "rm", "v10")
    assert host.state() == before
