"""nsnet doctor's analysis on hand-built host views: the issue's lockout, and the cases that must stay quiet."""
import ipaddress
import json

from nsnet.doctor import HostView, NsnetNetwork, Report, check_compose, client_path, diagnose, owner
from nsnet.facts import DockerNetwork, Evidence, KernelAnswer, Link, Neighbour, Route
from nsnet.ipam.compose import apply_fix

net, ip, iface = ipaddress.ip_network, ipaddress.ip_address, ipaddress.ip_interface
PC = "172.22.10.119"
SSH = Evidence("peer", net(f"{PC}/32"), "the peer of a live SSH connection to 172.42.10.112:22")
UPLINK = [Route(net("0.0.0.0/0"), "eth0", ip("172.42.10.1")), Route(net("172.42.10.0/24"), "eth0")]


def view(routes=(), links=(), evidence=(), neighbours=(), nsnet=(), docker=()):
    all_links = {"eth0": Link("eth0", None, None, (iface("172.42.10.112/24"),))}
    all_links.update({lk.name: lk for lk in links})
    routes = UPLINK + list(routes)
    ev = [Evidence("route", r.network, str(r), onlink=r.gateway is None) for r in routes if r.network.prefixlen]
    return HostView(all_links, routes, list(neighbours), ev + list(evidence), docker=list(docker), nsnet=list(nsnet))


def lockout(**kw):
    """The issue's host after someone forced 172.22.0.0/16 onto an nsnet bridge."""
    bad = NsnetNetwork("ab" * 32, "bad", "nsbr-abababab", (net("172.22.0.0/16"),))
    return view([Route(net("172.22.0.0/16"), "nsbr-abababab")],
                [Link("nsbr-abababab", "bridge", "nsnet network " + "ab" * 32, (iface("172.22.0.1/16"),))],
                [SSH], nsnet=[bad], **kw)


def test_the_lockout_is_named_with_what_it_breaks_and_the_fix():
    (f,) = diagnose(lockout())
    assert f.problem == "misrouted" and f.owner.name == "bad"
    assert f.what == ("172.22.0.0/16 dev nsbr-abababab (bridge nsbr-abababab of nsnet network 'bad') contains "
                      "172.22.10.119, the peer of a live SSH connection to 172.42.10.112:22")
    assert "replies to 172.22.10.119 go into nsbr-abababab instead of out by the default route " \
           "(via 172.42.10.1 dev eth0)" in f.breaks
    assert "its session hangs" in f.breaks
    # The suggested subnet avoids the PC, the uplink and the bridge's own old range.
    assert f.fix == ("move nsnet network 'bad' off 172.22.10.119: `nsnet network rm bad` (stop its sandboxes "
                     "first), then `nsnet network create --subnet 172.17.0.0/16 bad`")


def test_client_path_names_route_bridge_network_and_says_unreachable():
    c = client_path(lockout(), PC, KernelAnswer("nsbr-abababab", None, ip("172.22.0.1")))
    assert not c.reachable
    assert str(c.route) == "172.22.0.0/16 dev nsbr-abababab" and c.dev == "nsbr-abababab"
    assert c.owner.text == "bridge nsbr-abababab of nsnet network 'bad'"
    assert "Without 172.22.0.0/16 dev nsbr-abababab they would go out by the default route" in c.why
    assert [e.detail for e in c.known_as] == [SSH.detail]
    assert "nsnet network rm bad" in c.fix
    doc = json.loads(json.dumps(c.as_dict()))
    assert doc["Network"] == "bad" and doc["Reachable"] is False and doc["Kernel"]["Dev"] == "nsbr-abababab"


def test_client_path_when_healthy_or_without_route():
    v = view(neighbours=[Neighbour(ip("172.42.10.7"), "eth0", "REACHABLE")])
    assert client_path(v, PC).reachable and "gateway 172.42.10.1" in client_path(v, PC).why
    lan = client_path(v, "172.42.10.7")
    assert lan.reachable and lan.why == "yes: 172.42.10.7 is a neighbour on eth0 (REACHABLE)"
    gone = client_path(v, PC, KernelAnswer(error="network is unreachable"))
    assert not gone.reachable and "network is unreachable" in gone.why
    assert not client_path(HostView({}, [], [], []), PC).reachable


def test_the_kernels_answer_wins_over_the_main_table():
    # A policy rule sends the PC's replies into the bridge although the main table says default.
    v = view([Route(net("172.22.0.0/16"), "br-x", table=100)], [Link("br-x", "bridge")], [SSH])
    c = client_path(v, PC, KernelAnswer("br-x"))
    assert str(c.route).startswith("default") and c.dev == "br-x" and not c.reachable


def test_peers_that_live_where_they_are_routed_are_not_collisions():
    web = NsnetNetwork("cd" * 32, "web", "nsbr-cdcdcdcd", (net("172.18.0.0/16"),), (ip("172.18.0.3"),))
    v = view([Route(net("172.18.0.0/16"), "nsbr-cdcdcdcd"), Route(net("192.168.1.0/24"), "br0",
                                                                  ip("192.168.1.1"))],
             [Link("nsbr-cdcdcdcd", "bridge", "nsnet network " + "cd" * 32), Link("br0", "bridge")],
             [Evidence("peer", net("172.18.0.2/32"), "a container with a neighbour entry"),
              Evidence("peer", net("172.18.0.3/32"), "a sandbox of web, no neighbour entry yet"),
              Evidence("peer", net("172.42.10.50/32"), "someone on the LAN"),
              Evidence("resolver", net("10.255.255.53/32"), "a nameserver in /etc/resolv.conf")],
             [Neighbour(ip("172.18.0.2"), "nsbr-cdcdcdcd", "REACHABLE")], nsnet=[web])
    assert diagnose(v) == []


def test_a_neighbour_on_the_lan_shadowed_by_a_bridge_and_a_resolver_routed_into_one():
    v = view([Route(net("172.42.0.0/16"), "br-0123456789ab"), Route(net("10.255.0.0/16"), "virbr0")],
             [Link("br-0123456789ab", "bridge"), Link("virbr0", "bridge")],
             [Evidence("neighbour", net("172.42.9.9/32"), "a neighbour on eth0 (STALE)"),
              Evidence("resolver", net("10.255.255.53/32"), "a nameserver in /etc/resolv.conf")],
             [Neighbour(ip("172.42.9.9"), "eth0", "STALE")],
             docker=[DockerNetwork("shop_default", "0123456789ab" + "0" * 52, (net("172.42.0.0/16"),))])
    found = {(f.problem, f.route.dev): f for f in diagnose(v)}
    dns = found[("misrouted", "virbr0")]
    assert "DNS queries to 10.255.255.53 go into virbr0" in dns.breaks
    assert dns.owner.text == "bridge virbr0, made neither by nsnet nor by Docker"
    lan = found[("misrouted", "br-0123456789ab")]
    assert lan.owner.text == "bridge br-0123456789ab of Docker network 'shop_default'"
    assert "172.42.9.9 is a neighbour on eth0, not on br-0123456789ab" in lan.breaks
    assert "docker network rm shop_default" in lan.fix and "daemon.json" in lan.fix
    # The Docker bridge also overlaps the host's own LAN: the LAN's /24 wins, the bridge loses it.
    over = found[("overlap", "br-0123456789ab")]
    assert "172.42.10.0/24 dev eth0" in over.what
    assert "everything for 172.42.10.0/24 to eth0" in over.breaks


def test_a_hand_made_bridge_over_a_reserved_range():
    reserved = Evidence("reserved", net("10.99.0.0/16"), "a range reserved in nsnet's configuration")
    vpn = Evidence("reserved", net("10.8.0.0/24"), "a range reserved in nsnet's configuration")
    v = view([Route(net("10.99.1.0/24"), "br-hand"), Route(net("10.8.0.0/24"), "tun0")],
             [Link("br-hand", "bridge", None, (iface("10.99.1.1/24"),)), Link("tun0", "tun")],
             [reserved, vpn])
    (f,) = diagnose(v)  # the VPN's own route to its reserved range is how the office is reached: fine
    assert f.problem == "reserved" and f.route.dev == "br-hand" and f.owner.kind == "other"
    assert f.what.endswith("overlaps 10.99.0.0/16, a range reserved in nsnet's configuration")
    assert "`ip addr del 10.99.1.1/24 dev br-hand`" in f.fix


def test_two_bridges_over_one_range():
    v = view([Route(net("172.17.0.0/16"), "nsnet0"), Route(net("172.17.0.0/16"), "docker0")],
             [Link("nsnet0", "bridge", "nsnet network " + "ef" * 32), Link("docker0", "bridge")])
    (f,) = diagnose(v)
    assert f.problem == "overlap" and f.route.dev == "docker0"
    assert "(bridge docker0 of Docker network 'bridge') overlaps 172.17.0.0/16 dev nsnet0 (bridge nsnet0 of " \
           "nsnet network efefefefefef)" in f.what
    assert "--subnet 172.18.0.0/16" in f.fix  # not the range the other bridge keeps


def test_owner_names():
    v = view(links=[Link("brq", "bridge", "nsnet network " + "12" * 32), Link("br-aaaaaaaaaaaa", "bridge"),
                    Link("wg0", "wireguard")])
    assert owner(v, "brq").text == "bridge brq of nsnet network 121212121212"
    assert owner(v, "br-aaaaaaaaaaaa").kind == "docker"
    assert owner(v, "wg0").text == "wireguard wg0" and owner(v, "eth0").text == "interface eth0"


COMPOSE = """
name: shop
services:
  web: {image: nginx}
"""


def test_compose_check_flags_the_default_network_and_the_fix_applies_cleanly():
    # The first five of Docker's pools are on-link routes here (Docker skips those): default lands on the PC.
    routes = [Route(net(f"172.{i}.0.0/16"), f"nsbr-{i}") for i in range(17, 22)]
    v = view(routes, [Link(f"nsbr-{i}", "bridge") for i in range(17, 22)], [SSH])
    cc = check_compose(v, COMPOSE, "compose.yml", None)
    (p,) = cc.predictions
    assert (p.docker_name, str(p.subnet), [e.kind for e in p.collisions]) == ("shop_default", "172.22.0.0/16", ["peer"])
    assert cc.broken and cc.fix.subnets == {"default": net("172.23.0.0/16")}
    fixed = check_compose(v, apply_fix(COMPOSE, cc.fix), "compose.yml", None)
    assert not fixed.broken and fixed.fix is None
    assert str(fixed.predictions[0].subnet) == "172.23.0.0/16" and fixed.predictions[0].source == "explicit"
    assert check_compose(v, "services: {web: {image: x}}\n", "c.yml", None, fallback_project="Shop").predictions[0] \
        .docker_name == "shop_default"


def test_report_broken_and_json():
    assert not Report([]).broken
    r = Report(diagnose(lockout()), client_path(lockout(), PC))
    doc = json.loads(json.dumps(r.as_dict()))
    assert doc["Broken"] and doc["Findings"][0]["Network"] == "bad" and doc["Findings"][0]["Problem"] == "misrouted"
    assert doc["Findings"][0]["CollidesWith"][0]["Range"] == "172.22.10.119/32"


def test_an_overlay_subnet_over_what_this_host_talks_to_is_reported():
    """An overlay has no route on the host (its bridge has no address), but its sandboxes have one: a peer
    of this host inside its subnet is out of their reach. A swarm network clear of the evidence, and a local
    network, stay quiet here."""
    ov = NsnetNetwork("cd" * 32, "ov", "nsovb4097", (net("172.22.0.0/16"),), scope="swarm")
    fine = NsnetNetwork("ef" * 32, "ok", "nsovb4098", (net("10.0.0.0/24"),), scope="swarm")
    (f,) = diagnose(view(evidence=[SSH], nsnet=[ov, fine]))
    assert f.problem == "overlay" and f.owner.name == "ov"
    assert f.what == ("172.22.0.0/16 (overlay network 'ov' of the swarm) overlaps 172.22.10.119, the peer of a "
                      "live SSH connection to 172.42.10.112:22")
    assert "cannot reach 172.22.10.119" in f.breaks and "nsnet network rm ov" in f.fix
    assert f.as_dict()["Problem"] == "overlay"
    assert diagnose(view(evidence=[SSH], nsnet=[fine])) == []
