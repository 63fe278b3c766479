import json

import pytest

from nsnet.errors import NsnetError
from nsnet.firewall import FwNetwork, FwPort, Ruleset, render, render_dns_redirect, unwritable
from nsnet.kernel.nft import OR

IIF, OIF = {"meta": {"key": "iifname"}}, {"meta": {"key": "oifname"}}
ACCEPT, DROP, NOTRACK, MASQ = {"accept": None}, {"drop": None}, {"notrack": None}, {"masquerade": None}


def m(left, right, op="=="):
    return {"match": {"op": op, "left": left, "right": right}}


def f(proto, name):
    return {"payload": {"protocol": proto, "field": name}}


def prefix(addr, length):
    return {"prefix": {"addr": addr, "len": length}}


def commands(text: str) -> list[dict]:
    doc = json.loads(text)
    assert list(doc) == ["nftables"]
    return doc["nftables"]


def declared(cmds: list[dict], kind: str, name: str) -> dict:
    [obj] = [c["add"][kind] for c in cmds if kind in c.get("add", {}) and c["add"][kind]["name"] == name]
    return obj


def chain(cmds: list[dict], name: str) -> list[list[dict]]:
    return [c["add"]["rule"]["expr"] for c in cmds if "rule" in c.get("add", {}) and c["add"]["rule"]["chain"] == name]


def test_empty_ruleset_replaces_the_table_atomically():
    cmds = commands(render(Ruleset()))
    table = {"table": {"family": "inet", "name": "nsnet"}}
    assert cmds[:3] == [{"add": table}, {"delete": table}, {"add": table}]   # one buffer: one transaction
    assert declared(cmds, "set", "bridges") == {"family": "inet", "table": "nsnet", "name": "bridges", "type": "ifname"}


def test_objects_come_before_the_rules_and_elements_that_name_them():
    cmds = commands(render(Ruleset([FwNetwork("br-a", ["10.1.0.0/16"])])))
    kinds = [next(iter(c["add"])) for c in cmds[3:]]
    assert kinds == sorted(kinds, key=["chain", "set", "map", "rule"].index)


def test_masquerade_only_for_external_networks_with_it_on():
    rs = Ruleset([FwNetwork("br-a", ["10.1.0.0/16"]), FwNetwork("br-i", ["10.2.0.0/16"], internal=True),
                  FwNetwork("br-n", ["10.3.0.0/16"], masquerade=False)])
    cmds = commands(render(rs))
    post = chain(cmds, "postrouting")
    assert [m(f("ip", "saddr"), prefix("10.1.0.0", 16)), m(OIF, "br-a", "!="), MASQ] in post
    outbound = [r for r in post if m(OIF, r[1]["match"]["right"], "!=") in r]
    assert [r[0]["match"]["right"]["prefix"]["addr"] for r in outbound] == ["10.1.0.0"]
    assert [m(IIF, "br-i"), m(OIF, "br-i", "!="), DROP] in chain(cmds, "forward")
    assert [m(OIF, "br-i"), m(IIF, "br-i", "!="), DROP] in chain(cmds, "forward")


def test_isolation_rule_order_allows_same_bridge_before_dropping_cross_bridge():
    cmds = commands(render(Ruleset([FwNetwork("br-a", ["10.1.0.0/16"], leaves="nsl1-*"),
                                    FwNetwork("br-q", ["10.4.0.0/16"], icc=False)])))
    pair = {"type": ["ifname", "ifname"]}
    assert declared(cmds, "set", "within").items() >= {**pair, "elem": [{"concat": ["br-a", "br-a"]}]}.items()      # ICC on
    assert declared(cmds, "set", "isolated").items() >= {**pair, "elem": [{"concat": ["br-q", "br-q"]}]}.items()    # ICC off
    assert declared(cmds, "set", "leaves").items() >= {"type": "ifname", "flags": ["interval"], "elem": ["nsl1-*"]}.items()
    fwd = chain(cmds, "forward")
    both = {"concat": [IIF, OIF]}
    same = fwd.index([m(both, "@within"), ACCEPT])
    established = fwd.index([m({"ct": {"key": "state"}}, ["established", "related"], "in"), ACCEPT])
    assert same < fwd.index([m(IIF, "@leaves"), ACCEPT]) < established
    # ICC off: a published port (DNAT) of the network still answers its own sandboxes.
    assert fwd.index([m({"ct": {"key": "status"}}, "dnat", "in"), ACCEPT]) < fwd.index([m(both, "@isolated"), DROP])
    assert same < fwd.index([m(IIF, "@bridges"), m(OIF, "@bridges"), DROP]) < fwd.index([m(IIF, "@bridges"), ACCEPT])


def test_a_frame_between_sandboxes_meets_as_many_rules_on_a_host_of_fifty_networks_as_of_one():
    def per_frame(n: int) -> tuple[int, int]:
        cmds = commands(render(Ruleset([FwNetwork(f"br{i}", [f"10.{i}.0.0/24"], gateways=[f"10.{i}.0.1"],
                                                  leaves=f"nsl{i}-*") for i in range(n)])))
        return len(chain(cmds, "forward")), len(chain(cmds, "raw"))
    assert per_frame(1) == per_frame(50)


def test_only_sandbox_to_sandbox_traffic_is_untracked_and_hairpins_are_masqueraded_by_source():
    cmds = commands(render(Ruleset([FwNetwork("br-a", ["10.1.0.0/24", "fd00::/64"], gateways=["10.1.0.1", "fd00::1"]),
                                    FwNetwork("br-b", ["10.2.0.0/24"], gateways=["10.2.0.1"])])))
    raw = declared(cmds, "chain", "raw")
    assert (raw["type"], raw["hook"], raw["prio"], raw["policy"]) == ("filter", "prerouting", -300, "accept")
    assert [{"vmap": {"key": IIF, "data": "@untracked"}}] in chain(cmds, "raw")
    assert declared(cmds, "map", "untracked").items() >= {
        "type": "ifname", "map": "verdict",
        "elem": [["br-a", {"jump": {"target": "untracked-0"}}], ["br-b", {"jump": {"target": "untracked-1"}}]]}.items()
    assert chain(cmds, "untracked-0") == [
        [m(f("ip", "saddr"), prefix("10.1.0.0", 24)), m(f("ip", "daddr"), prefix("10.1.0.0", 24)),
         m(f("ip", "daddr"), "10.1.0.1", "!="), NOTRACK],
        [m(f("ip6", "saddr"), prefix("fd00::", 64)), m(f("ip6", "daddr"), prefix("fd00::", 64)),
         m(f("ip6", "daddr"), "fd00::1", "!="), NOTRACK]]
    assert chain(cmds, "untracked-1") == [[m(f("ip", "saddr"), prefix("10.2.0.0", 24)),
                                           m(f("ip", "daddr"), prefix("10.2.0.0", 24)),
                                           m(f("ip", "daddr"), "10.2.0.1", "!="), NOTRACK]]
    dnat = m({"ct": {"key": "status"}}, "dnat", "in")
    post = chain(cmds, "postrouting")
    assert [m(OIF, "br-a"), m(f("ip", "saddr"), prefix("10.1.0.0", 24)), dnat, MASQ] in post
    assert [m(OIF, "br-a"), m(f("ip6", "saddr"), prefix("fd00::", 64)), dnat, MASQ] in post
    assert [m(OIF, "br-a"), m(f("ip", "saddr"), prefix("127.0.0.0", 8)), MASQ] in post


def test_all_that_a_leaf_bridge_sees_is_untracked():
    cmds = commands(render(Ruleset([FwNetwork("br-a", ["10.1.0.0/24"], gateways=["10.1.0.1"], leaves="nsl1-*")])))
    assert chain(cmds, "raw")[0] == [m(IIF, "@leaves"), NOTRACK]


def test_published_ports_dnat_by_family_and_host_ip():
    rs = Ruleset([FwNetwork("br-a", ["10.1.0.0/16"])],
                 [FwPort("0.0.0.0", 8080, "tcp", "10.1.0.2", 80, "br-a"),
                  FwPort("192.0.2.1", 53, "udp", "10.1.0.3", 53, "br-a"),
                  FwPort("::", 8443, "tcp", "fd00::2", 443, "br-a")])
    nfproto = {"meta": {"key": "nfproto"}}
    assert chain(commands(render(rs)), "published") == [
        [m(nfproto, "ipv4"), m(f("tcp", "dport"), 8080), {"dnat": {"family": "ip", "addr": "10.1.0.2", "port": 80}}],
        [m(nfproto, "ipv4"), m(f("ip", "daddr"), "192.0.2.1"), m(f("udp", "dport"), 53),
         {"dnat": {"family": "ip", "addr": "10.1.0.3", "port": 53}}],
        [m(nfproto, "ipv6"), m(f("tcp", "dport"), 8443), {"dnat": {"family": "ip6", "addr": "fd00::2", "port": 443}}]]


def test_a_bridge_name_is_a_json_string_whatever_it_holds_and_a_final_star_is_literal():
    for name in ('a"b', "a;b", "a{b", "a\nb", "#c", "x\\"):
        cmds = commands(render(Ruleset([FwNetwork(name, ["10.1.0.0/24"], internal=True)])))
        assert declared(cmds, "set", "bridges")["elem"] == [name]
        assert [m(IIF, name), m(OIF, name, "!="), DROP] in chain(cmds, "forward")
    cmds = commands(render(Ruleset([FwNetwork("br*", ["10.1.0.0/24"], leaves="nsl1-*")])))
    assert declared(cmds, "set", "bridges")["elem"] == ["br\\*"]         # nftables' escape: this one name
    assert declared(cmds, "set", "leaves")["elem"] == ["nsl1-*"]         # a pattern stays one


@pytest.mark.parametrize("name", ["@br", "tcp", "redirect", "a\\b*", "abcdefghijklmn*", "é" * 8])
def test_a_name_libnftables_cannot_read_as_that_string_is_refused_with_one_line(name):
    assert unwritable(name)
    with pytest.raises(NsnetError) as e:
        render(Ruleset([FwNetwork("br-a", ["10.1.0.0/24"]), FwNetwork(name, ["10.2.0.0/24"])]))
    assert repr(name) in str(e.value) and "\n" not in str(e.value)


def test_names_nftables_reads_as_given_are_writable():
    assert not [n for n in ("br-a", "br*", "*", "ip", "x@", 'a"b', "abcdefghijklm*", "a" * 15) if unwritable(n)]


def test_dns_redirect_replaces_its_table_and_rewrites_ports_both_ways_without_nat():
    text = render_dns_redirect("127.0.0.11", 40001, 40002)
    on_loopback, on_output = text.split(OR)     # the loopback's egress hook; else, an output chain
    for ruleset, family, hook in ((on_loopback, "netdev", {"hook": "egress", "dev": "lo"}),
                                  (on_output, "ip", {"hook": "output"})):
        cmds = commands(ruleset)
        table = {"table": {"family": family, "name": "nsnet_dns"}}
        assert cmds[:3] == [{"add": table}, {"delete": table}, {"add": table}]
        [name] = [c["add"]["chain"]["name"] for c in cmds if "chain" in c.get("add", {})]
        assert declared(cmds, "chain", name).items() >= {"type": "filter", "prio": 0, **hook}.items()

        def rewrite(end, port, proto, old, new):
            return [m(f("ip", end), "127.0.0.11"), m(f(proto, port), old),
                    {"mangle": {"key": f(proto, port), "value": new}}]
        assert chain(cmds, name) == [rewrite("daddr", "dport", "udp", 53, 40001),
                                     rewrite("daddr", "dport", "tcp", 53, 40002),
                                     rewrite("saddr", "sport", "udp", 40001, 53),
                                     rewrite("saddr", "sport", "tcp", 40002, 53)]
        # nothing that makes the kernel track the sandbox's flows
        assert "nat" not in ruleset and '"ct"' not in ruleset


def test_an_encrypted_overlays_vxlan_leaves_and_arrives_only_through_its_tunnel():
    """Matched on the VXLAN header's VNI (24 bits, 32 bits after the UDP header), whatever the route. Its
    bridge is in its own namespace: nothing of it in the host's sets, maps or NAT."""
    rs = Ruleset([FwNetwork(None, ["10.0.0.0/24"], sealed=(4789, 4097, "nswg12345678")),
                  FwNetwork("br-x", ["10.0.1.0/24"])])
    cmds = commands(render(rs))
    sets = {c["add"][k]["name"]: c["add"][k].get("elem", []) for c in cmds for k in ("set", "map") if k in c.get("add", {})}
    assert sets["bridges"] == ["br-x"] and len(sets["untracked"]) == 1
    assert "10.0.0.0" not in json.dumps(chain(cmds, "postrouting"))
    vni = {"payload": {"base": "th", "offset": 96, "len": 24}}
    assert chain(cmds, "sealed-out") == [[m(f("udp", "dport"), 4789), m(vni, 4097), m(OIF, "nswg12345678", "!="), DROP]]
    assert chain(cmds, "sealed-in") == [[m(f("udp", "dport"), 4789), m(vni, 4097), m(IIF, "nswg12345678", "!="), DROP]]
    hooks = {c["add"]["chain"]["name"]: c["add"]["chain"].get("hook") for c in cmds if "chain" in c.get("add", {})}
    assert (hooks["sealed-out"], hooks["sealed-in"]) == ("postrouting", "input")
    # no encrypted network: no such chain
    assert not chain(commands(render(Ruleset([FwNetwork("br-x", ["10.0.1.0/24"])]))), "sealed-out")
