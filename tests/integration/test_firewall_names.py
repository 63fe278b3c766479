"""The firewall's ruleset takes any bridge name nftables can hold, and a create whose ruleset is
refused is undone whole."""
import json
import shlex
import sys

import pytest

from conftest import changes, sh

# Each broke nft's text syntax, or (a final *) made the name a wildcard nftables refused in a set.
ODD_NAMES = ['q"*;{', "a\nb", "b{c}", "d;e", "f*"]


def apply(ns_run, networks: str) -> None:
    """Render a ruleset of `networks` (Python source of FwNetwork calls) and apply it in the namespace."""
    script = ("from nsnet.firewall import FwNetwork, Ruleset, render\n"
              "from nsnet.kernel import nft\n"
              f"nft.run(render(Ruleset([{networks}])))\n")
    ns_run(f"{sys.executable} -c {shlex.quote(script)}")


def test_odd_bridge_names_render_into_a_ruleset_nftables_takes_and_match_exactly(machines):
    host, peer, world = machines.add("fw"), machines.add("peer"), machines.add("world")

    def run(cmd: str):
        return sh(f"ip netns exec {host} {cmd}")
    nets = ", ".join(f"FwNetwork({n!r}, ['10.{i}.0.0/24'], gateways=['10.{i}.0.1'], internal=True)"
                     for i, n in enumerate(ODD_NAMES, start=1))
    apply(run, nets)
    listed = json.loads(run("nft -j list set inet nsnet bridges").stdout)["nftables"]
    assert sorted(next(o["set"]["elem"] for o in listed if "set" in o)) == sorted(ODD_NAMES)   # each name, as given

    # Real packets: a sandbox behind a bridge named 'q"*;{' (an interface name the kernel takes), routed out
    # by the host to the world. The world has no route back, so a ping that returns was masqueraded.
    bridge = ODD_NAMES[0]
    run(f"ip link add {shlex.quote(bridge)} type bridge")
    run(f"ip addr add 10.1.0.1/24 dev {shlex.quote(bridge)}")
    run(f"ip link set {shlex.quote(bridge)} up")
    port, _ = machines.wire(host, "", peer, "10.1.0.2/24")
    run(f"ip link set {port} master {shlex.quote(bridge)}")
    machines.wire(host, "10.200.0.1/24", world, "10.200.0.2/24")
    sh(f"ip -n {peer} route add default via 10.1.0.1")
    run("sysctl -qw net.ipv4.ip_forward=1")
    ping = f"ip netns exec {peer} ping -c1 -W1 10.200.0.2"

    apply(run, f"FwNetwork({bridge!r}, ['10.1.0.0/24'], gateways=['10.1.0.1'])")
    assert sh(ping, check=False).returncode == 0          # out, masqueraded
    apply(run, f"FwNetwork({bridge!r}, ['10.1.0.0/24'], gateways=['10.1.0.1'], internal=True)")
    assert sh(ping, check=False).returncode != 0          # its exact name matched: dropped


@pytest.mark.parametrize("bridge", ["tcp", "abcdefghijklmn*"])
def test_a_bridge_name_no_ruleset_can_hold_is_refused_whole(host, bridge):
    """'tcp' is a constant to libnftables' JSON reader and 'abcdefghijklmn*' a wildcard with no room for
    the escape: no ruleset can hold either bridge. The create is refused (by the driver's checks, before
    anything is built; were it built, the failed apply would undo it): no bridge, no record, the ruleset in
    force untouched; the next create works."""
    host.nsnet("network", "create", "--subnet", "10.77.0.0/24", "first")
    before = host.state()
    p = host.nsnet("network", "create", "--subnet", "10.78.0.0/24", "-o", f"com.docker.network.bridge.name={bridge}",
                   "odd", check=False)
    assert p.returncode != 0
    assert len(p.stderr.strip().splitlines()) == 1 and repr(bridge) in p.stderr
    assert changes(before, host.state()) == {}
    host.nsnet("network", "create", "--subnet", "10.78.0.0/24", "second")
    assert "10.78.0.0/24" in host.sh("nft list table inet nsnet").stdout
