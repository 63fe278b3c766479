"""Real packets through bridge networks: reachability, NAT, published ports, isolation."""
import json
import os
import signal
import sys

import pytest


from conftest import wait_for

NETCHECK = os.path.join(os.path.dirname(__file__), "netcheck.py")
PY = sys.executable


def ip_of(host, sandbox: str, network: str) -> str:
    return host.json("inspect", sandbox)[0]["NetworkSettings"]["Networks"][network]["IPAddress"]


def serve(host, name: str, network: str, *extra: str, proto: str = "tcp", port: int = 80) -> None:
    host.nsnet("run", "-d", "--name", name, "--network", network, *extra, "--", PY, NETCHECK, "serve", proto, str(port))
    assert wait_for(lambda: "listening" in host.nsnet("logs", name).stdout), host.nsnet("logs", name).stdout


def ask_from_sandbox(host, sandbox: str, proto: str, ip: str, port: int) -> str:
    return host.exec(sandbox, f"{PY} {NETCHECK} ask {proto} {ip} {port}", check=False).stdout.strip()


def ask_from_ns(ns: str, proto: str, ip: str, port: int) -> str:
    from conftest import sh

    return sh(f"ip netns exec {ns} {PY} {NETCHECK} ask {proto} {ip} {port}", check=False).stdout.strip()


def ping(host, sandbox: str, ip: str) -> bool:
    return host.exec(sandbox, f"ping -c1 -W1 {ip}", check=False).returncode == 0


def test_red_blue_reach_each_other_and_the_gateway(host):
    host.nsnet("network", "create", "red")
    for n in ("a", "b"):
        host.nsnet("run", "-d", "--name", n, "--network", "red", "--", "sleep", "300")
    b_ip = ip_of(host, "b", "red")
    gateway = host.json("network", "inspect", "red")[0]["IPAM"]["Config"][0]["Gateway"]
    assert ping(host, "a", b_ip)
    assert ping(host, "a", gateway)
    inside = host.exec("a", "ip -o -4 addr show dev eth0; hostname; cat /etc/hosts").stdout
    a_ip = ip_of(host, "a", "red")
    assert f"inet {a_ip}/16" in inside
    a_id = host.json("inspect", "a")[0]["Id"]
    assert a_id[:12] in inside  # hostname defaults to the short ID, as Docker's


def test_ipv4_network_links_carry_no_ipv6(host):
    """As Docker: no IPv6 on a container's interface of an IPv4-only network; and the bridge's ports
    (layer 2 only) get no IPv6 of their own: no address, no multicast route (a thousand ports made every
    IPv6 link event walk a thousand routes). Multicast snooping is off on nsnet's bridges."""
    host.nsnet("network", "create", "v4only")
    host.nsnet("run", "-d", "--name", "a", "--network", "v4only", "--", "sleep", "300")
    gateway = host.json("inspect", "a")[0]["NetworkSettings"]["Networks"]["v4only"]["Gateway"]
    assert ping(host, "a", gateway)  # carrier is up: a link-local address would be there by now
    assert host.exec("a", "ip -6 -o addr show dev eth0").stdout.strip() == ""
    (port_line,) = host.sh("ip -o link show type veth").stdout.splitlines()
    port = port_line.split(": ")[1].split("@")[0]
    bridge = port_line.split(" master ")[1].split()[0]
    assert host.sh(f"ip -6 -o addr show dev {port}").stdout.strip() == ""
    assert f"dev {port} " not in host.sh("ip -6 route show table all").stdout
    assert host.sh(f"cat /sys/class/net/{bridge}/bridge/multicast_snooping").stdout.strip() == "0"


def test_masquerade_shows_the_hosts_address_to_the_internet(host, machines):
    inet = machines.add("inet")
    machines.wire(host.ns, "203.0.113.1/24", inet, "203.0.113.2/24")
    machines.spawn(inet, f"{PY} {NETCHECK} serve tcp 9000")
    host.nsnet("network", "create", "red")
    host.nsnet("run", "-d", "--name", "a", "--network", "red", "--", "sleep", "300")
    assert wait_for(lambda: ask_from_sandbox(host, "a", "tcp", "203.0.113.2", 9000) == "peer=203.0.113.1")


def test_published_tcp_and_udp_answer_from_everywhere(host, machines):
    pc = machines.add("pc")
    machines.wire(host.ns, "203.0.113.1/24", pc, "203.0.113.2/24")
    host.nsnet("network", "create", "red")
    host.nsnet("network", "create", "blue")
    serve(host, "web", "red", "-p", "8080:80")
    serve(host, "dns", "red", "-p", "5353:53/udp", proto="udp", port=53)
    host.nsnet("run", "-d", "--name", "same", "--network", "red", "--", "sleep", "300")
    host.nsnet("run", "-d", "--name", "other", "--network", "blue", "--", "sleep", "300")

    # Another machine: the sandbox sees the real client address (no SNAT on the way in).
    assert ask_from_ns(pc, "tcp", "203.0.113.1", 8080) == "peer=203.0.113.2"
    assert ask_from_ns(pc, "udp", "203.0.113.1", 5353) == "peer=203.0.113.2"
    # The host itself, through its own address and through loopback.
    assert ask_from_ns(host.ns, "tcp", "203.0.113.1", 8080).startswith("peer=")
    assert ask_from_ns(host.ns, "tcp", "127.0.0.1", 8080).startswith("peer=")
    assert ask_from_ns(host.ns, "udp", "127.0.0.1", 5353).startswith("peer=")
    # Sandboxes, on the same network (hairpin) and on another one.
    assert ask_from_sandbox(host, "same", "tcp", "203.0.113.1", 8080).startswith("peer=")
    assert ask_from_sandbox(host, "other", "tcp", "203.0.113.1", 8080).startswith("peer=")
    assert ask_from_sandbox(host, "other", "udp", "203.0.113.1", 5353).startswith("peer=")
    ports = host.json("inspect", "web")[0]["NetworkSettings"]["Ports"]
    assert ports == {"80/tcp": [{"HostIp": "0.0.0.0", "HostPort": "8080"}]}

    # After rm, the port is closed again: nothing answers.
    host.nsnet("rm", "-f", "web")
    assert ask_from_ns(pc, "tcp", "203.0.113.1", 8080).startswith("no answer")


def test_published_port_on_one_host_ip_only(host, machines):
    pc = machines.add("pc")
    machines.wire(host.ns, "203.0.113.1/24", pc, "203.0.113.2/24")
    machines.wire(host.ns, "198.51.100.1/24", pc, "198.51.100.2/24")
    host.nsnet("network", "create", "red")
    serve(host, "web", "red", "-p", "198.51.100.1:8081:80")
    assert ask_from_ns(pc, "tcp", "198.51.100.1", 8081) == "peer=198.51.100.2"
    assert ask_from_ns(pc, "tcp", "203.0.113.1", 8081).startswith("no answer")


def set_br_netfilter(host, on: int) -> None:
    """Bridged frames through the IP hooks (1) or not (0), in the test host's namespace only. Without the
    module there is nothing to switch off, so only the case that needs it is skipped."""
    if not os.path.exists("/proc/sys/net/bridge/bridge-nf-call-iptables"):
        if on:
            pytest.skip("br_netfilter is not loaded on this machine (loading it would change the machine's own bridges)")
        return
    host.sh(f"sysctl -qw net.bridge.bridge-nf-call-iptables={on}")


@pytest.mark.parametrize("br_netfilter", [0, 1])
def test_sandbox_to_sandbox_and_hairpin_with_and_without_br_netfilter(host, machines, br_netfilter):
    """Docker or kube-proxy load br_netfilter host-wide; then frames bridged between sandboxes pass the
    IP hooks too. Both ways a sandbox reaches its neighbour and its own network's published port (the
    hairpin, which the host masquerades so replies come back through it); with br_netfilter, nsnet keeps
    sandbox-to-sandbox frames out of the host's conntrack and tracks only what its NAT needs."""
    set_br_netfilter(host, br_netfilter)
    pc = machines.add("pc")
    machines.wire(host.ns, "203.0.113.1/24", pc, "203.0.113.2/24")
    host.nsnet("network", "create", "--subnet", "10.79.0.0/24", "flat")
    serve(host, "web", "flat", "-p", "8080:80")
    host.nsnet("run", "-d", "--name", "a", "--network", "flat", "--", "sleep", "300")
    web, a = ip_of(host, "web", "flat"), ip_of(host, "a", "flat")

    assert ask_from_sandbox(host, "a", "tcp", web, 80) == f"peer={a}"
    assert ask_from_sandbox(host, "a", "tcp", "10.79.0.1", 8080) == "peer=10.79.0.1"
    assert ask_from_sandbox(host, "a", "tcp", "203.0.113.1", 8080) == "peer=10.79.0.1"
    assert ask_from_ns(pc, "tcp", "203.0.113.1", 8080) == "peer=203.0.113.2"
    if br_netfilter:
        tracked = host.sh("cat /proc/net/nf_conntrack").stdout
        assert f"src={a} dst=203.0.113.1 " in tracked
        assert f"src={a} dst={web} " not in tracked


def test_isolation_between_networks_internal_and_icc(host, machines):
    inet = machines.add("inet")
    machines.wire(host.ns, "203.0.113.1/24", inet, "203.0.113.2/24")
    host.nsnet("network", "create", "red")
    host.nsnet("network", "create", "blue")
    host.nsnet("network", "create", "--internal", "vault")
    host.nsnet("network", "create", "-o", "com.docker.network.bridge.enable_icc=false", "quiet")
    for name, net in (("r", "red"), ("b", "blue"), ("v1", "vault"), ("v2", "vault"), ("q1", "quiet"), ("q2", "quiet")):
        host.nsnet("run", "-d", "--name", name, "--network", net, "--", "sleep", "300")
    host.nsnet("run", "-d", "--name", "both", "--network", "red", "--network", "blue", "--", "sleep", "300")

    assert not ping(host, "r", ip_of(host, "b", "blue"))           # two networks: no traffic
    assert ping(host, "both", ip_of(host, "r", "red"))             # on both: reaches both
    assert ping(host, "both", ip_of(host, "b", "blue"))
    assert ping(host, "v1", ip_of(host, "v2", "vault"))            # internal: inside works
    assert ping(host, "r", "203.0.113.2")                          # a normal network reaches out
    assert not ping(host, "v1", "203.0.113.2")                     # internal: nothing out
    assert not ping(host, "q1", ip_of(host, "q2", "quiet"))        # ICC off: not to each other
    gateway = host.json("network", "inspect", "quiet")[0]["IPAM"]["Config"][0]["Gateway"]
    assert ping(host, "q1", gateway)                               # ...but to the host


def test_network_connect_and_disconnect_on_a_running_sandbox(host):
    host.nsnet("network", "create", "red")
    host.nsnet("network", "create", "blue")
    host.nsnet("run", "-d", "--name", "a", "--network", "red", "--", "sleep", "300")
    host.nsnet("run", "-d", "--name", "b", "--network", "blue", "--", "sleep", "300")
    b_ip = ip_of(host, "b", "blue")
    assert not ping(host, "a", b_ip)
    host.nsnet("network", "connect", "blue", "a")
    assert "eth1" in host.exec("a", "ip -o link").stdout
    assert ping(host, "a", b_ip)
    host.nsnet("network", "disconnect", "blue", "a")
    assert "eth1" not in host.exec("a", "ip -o link").stdout
    assert not ping(host, "a", b_ip)
    assert set(host.json("inspect", "a")[0]["NetworkSettings"]["Networks"]) == {"red"}


def test_foreground_run_streams_output_and_returns_the_exit_code(host):
    host.nsnet("network", "create", "red")
    p = host.nsnet("run", "--rm", "--network", "red", "--hostname", "box", "--", "sh", "-c",
                   "hostname; ip -o -4 addr show dev eth0 | wc -l; exit 7", check=False)
    assert p.returncode == 7
    assert p.stdout.split() == ["box", "1"]
    assert host.json("ps", "-a", "--format", "json") == []          # --rm: gone
    assert not [l for l in host.state()["links"] if l.startswith("nsv")]


def test_host_and_none_networks(host):
    p = host.nsnet("run", "--rm", "--network", "none", "--", "ip", "-o", "link")
    assert [l.split(":")[1].strip() for l in p.stdout.splitlines()] == ["lo"]
    own = host.sh("ip -o link").stdout
    p = host.nsnet("run", "--rm", "--network", "host", "--", "ip", "-o", "link")
    assert p.stdout.split("\n")[0] == own.split("\n")[0] and "nsnet0" in p.stdout


def test_ipv6_network_gives_both_families(host):
    host.nsnet("network", "create", "--ipv6", "--subnet", "fd00:77::/64", "--subnet", "10.66.0.0/24", "dual")
    for n in ("a", "b"):
        host.nsnet("run", "-d", "--name", n, "--network", "dual", "--", "sleep", "300")
    net = host.json("inspect", "b")[0]["NetworkSettings"]["Networks"]["dual"]
    assert net["IPAddress"] == "10.66.0.3" and net["GlobalIPv6Address"] == "fd00:77::3"
    assert net["IPv6Gateway"] == "fd00:77::1"
    assert ping(host, "a", "fd00:77::3")
    assert ping(host, "a", "fd00:77::1")
    assert "default via fd00:77::1" in host.exec("a", "ip -6 route").stdout
    assert "inet6 fe80::" in host.exec("a", "ip -6 -o addr show dev eth0").stdout  # link-local kept for IPv6


def _bridge_of(host, port: str) -> str:
    return host.sh(f"ip -j link show {port}").stdout.split('"master":"')[1].split('"')[0]


def _ports_of(host, sandbox: str, network: str) -> str:
    """The host end of a sandbox's veth on `network`, found by the peer's ifindex."""
    peer = host.exec(sandbox, "ip -o link show eth0").stdout.split("@if")[1].split(":")[0]
    for link in json.loads(host.sh("ip -j link show type veth").stdout):
        if str(link["ifindex"]) == peer:
            return link["ifname"]
    raise AssertionError(f"no host end for {sandbox}")


@pytest.mark.parametrize("br_netfilter", [0, 1])
def test_a_network_past_one_bridges_ports_spreads_over_leaf_bridges(host, machines, monkeypatch, br_netfilter):
    """Past PORTS_PER_BRIDGE ports (3 here; 128 by default) sandboxes go on leaf bridges under the
    network's bridge: every sandbox still reaches every other, the gateway and a published port (the
    hairpin too, with and without br_netfilter); with ICC off none reaches another, whichever bridges
    they are on; leaves survive a kill -9 of the daemon and go with the network."""
    set_br_netfilter(host, br_netfilter)
    monkeypatch.setenv("NSNET_PORTS_PER_BRIDGE", "3")
    pc = machines.add("pc")
    machines.wire(host.ns, "203.0.113.1/24", pc, "203.0.113.2/24")
    host.nsnet("network", "create", "--subnet", "10.77.0.0/24", "wide")
    bridge = host.json("network", "inspect", "wide")[0]["Options"]["com.docker.network.bridge.name"]
    for i in range(6):
        host.nsnet("run", "-d", "--name", f"w{i}", "--network", "wide", "--", "sleep", "300")
    serve(host, "web", "wide", "-p", "8080:80")   # the 7th sandbox: on leaf 2
    bridges = [_bridge_of(host, _ports_of(host, s, "wide")) for s in ("w0", "w1", "w2", "w3", "w4", "w5", "web")]
    assert bridges[:3] == [bridge] * 3                      # the network's own bridge first
    assert len(set(bridges[3:])) == 2 and bridge not in bridges[3:]   # then leaves of 2 sandboxes + uplink
    leaf = bridges[-1]
    assert host.sh(f"ip -o addr show dev {leaf}").stdout.strip() == ""  # layer 2 only

    for target in ("w0", "w3", "w5"):                       # own bridge, leaf 1, same leaf
        assert ping(host, "web", ip_of(host, target, "wide")), target
    assert ping(host, "w0", "10.77.0.1")
    w1 = ip_of(host, "w1", "wide")
    assert ask_from_sandbox(host, "w1", "tcp", ip_of(host, "web", "wide"), 80) == f"peer={w1}"
    assert ask_from_ns(pc, "tcp", "203.0.113.1", 8080) == "peer=203.0.113.2"
    assert ask_from_sandbox(host, "w3", "tcp", "203.0.113.1", 8080) == "peer=10.77.0.1"   # hairpin from a leaf
    gateway_mac = json.loads(host.sh(f"ip -j link show {bridge}").stdout)[0]["address"]
    assert f"lladdr {gateway_mac} " in host.exec("w3", "ip neigh show 10.77.0.1").stdout   # no leaf answered

    host.nsnet("network", "create", "-o", "com.docker.network.bridge.enable_icc=false", "quiet")
    for i in range(5):
        host.nsnet("run", "-d", "--name", f"q{i}", "--network", "quiet", "--", "sleep", "300")
    gateway = host.json("network", "inspect", "quiet")[0]["IPAM"]["Config"][0]["Gateway"]
    assert ping(host, "q4", gateway)                        # a leaf's sandbox reaches the host...
    for other in ("q0", "q3"):                              # ...but no sandbox on any bridge
        assert not ping(host, "q4", ip_of(host, other, "quiet")), other

    os.kill(host.daemon_pid(), signal.SIGKILL)              # a new daemon reads the leaves from the kernel
    host.nsnet("run", "-d", "--name", "late", "--network", "wide", "--", "sleep", "300")
    assert leaf in host.state()["links"]
    assert _bridge_of(host, _ports_of(host, "late", "wide")) not in (bridge, *bridges[3:])  # all were full
    assert ping(host, "late", ip_of(host, "w0", "wide"))
    os.kill(host.daemon_pid(), signal.SIGKILL)              # the network's bridge goes while no daemon runs:
    host.sh(f"ip link del {bridge}")                        # the next one rebuilds it and plugs the leaves'
    host.nsnet("run", "-d", "--name", "later", "--network", "wide", "--", "sleep", "300")   # uplinks back in
    for target in ("w0", "w3", "web", "late"):             # w0: a sandbox of the rebuilt bridge
        assert ping(host, "later", ip_of(host, target, "wide")), target
    os.kill(host.daemon_pid(), signal.SIGKILL)              # a leaf goes while no daemon runs: its
    host.sh(f"ip link del {leaf}")                          # sandboxes are plugged back elsewhere, and
    assert ping(host, "later", ip_of(host, "web", "wide"))  # its uplink leaves the network's bridge
    k = leaf.rsplit("-", 1)[1]                              # (it kept their MACs in the bridge's table)
    assert not [l for l in host.state()["links"] if l.startswith(("nsu", "nsd")) and l.endswith(f"-{k}")]

    host.nsnet("rm", "-f", "web", "late", "later", *[f"w{i}" for i in range(6)])
    host.nsnet("network", "rm", "wide")
    assert not [l for l in host.state()["links"] if l.startswith(("nsl", "nsu", "nsd"))
                and host.json("network", "inspect", "quiet")[0]["Id"][:8] not in l]
