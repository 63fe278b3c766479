from nsnet.firewall import FwNetwork, FwPort, Ruleset, render, render_dns_redirect
from nsnet.kernel.nft import OR


def rules(rs):
    return [l.strip() for l in render(rs).splitlines()]


def test_empty_ruleset_replaces_the_table_atomically():
    out = rules(Ruleset())
    assert out[:2] == ["add table inet nsnet", "delete table inet nsnet"]
    assert "set bridges { type ifname; }" in out


def test_masquerade_only_for_external_networks_with_it_on():
    rs = Ruleset([FwNetwork("br-a", ["10.1.0.0/16"]), FwNetwork("br-i", ["10.2.0.0/16"], internal=True),
                  FwNetwork("br-n", ["10.3.0.0/16"], masquerade=False)])
    out = rules(rs)
    assert 'ip saddr 10.1.0.0/16 oifname != "br-a" masquerade' in out
    outbound = [l for l in out if "!=" in l and l.endswith("masquerade")]
    assert not [l for l in outbound if "10.2.0.0/16" in l or "10.3.0.0/16" in l]
    assert 'iifname "br-i" oifname != "br-i" drop' in out


def chain(out: list[str], name: str) -> list[str]:
    start = out.index(f"chain {name} {{")
    return out[start + 1:out.index("}", start)]


def test_isolation_rule_order_allows_same_bridge_before_dropping_cross_bridge():
    out = rules(Ruleset([FwNetwork("br-a", ["10.1.0.0/16"], leaves="nsl1-*"),
                         FwNetwork("br-q", ["10.4.0.0/16"], icc=False)]))
    assert 'set within { type ifname . ifname; elements = { "br-a" . "br-a" } }' in out      # ICC on
    assert 'set isolated { type ifname . ifname; elements = { "br-q" . "br-q" } }' in out    # ICC off
    assert 'set leaves { type ifname; flags interval; elements = { "nsl1-*" } }' in out
    fwd = chain(out, "forward")
    same = fwd.index("iifname . oifname @within accept")
    assert same < fwd.index("iifname @leaves accept") < fwd.index("ct state established,related accept")
    # ICC off: a published port (DNAT) of the network still answers its own sandboxes.
    assert fwd.index("ct status dnat accept") < fwd.index("iifname . oifname @isolated drop")
    assert same < fwd.index("iifname @bridges oifname @bridges drop") < fwd.index("iifname @bridges accept")


def test_a_frame_between_sandboxes_meets_as_many_rules_on_a_host_of_fifty_networks_as_of_one():
    def per_frame(n: int) -> tuple[int, int]:
        out = rules(Ruleset([FwNetwork(f"br{i}", [f"10.{i}.0.0/24"], gateways=[f"10.{i}.0.1"], leaves=f"nsl{i}-*")
                             for i in range(n)]))
        return len(chain(out, "forward")), len(chain(out, "raw"))
    assert per_frame(1) == per_frame(50)


def test_only_sandbox_to_sandbox_traffic_is_untracked_and_hairpins_are_masqueraded_by_source():
    out = rules(Ruleset([FwNetwork("br-a", ["10.1.0.0/24", "fd00::/64"], gateways=["10.1.0.1", "fd00::1"]),
                         FwNetwork("br-b", ["10.2.0.0/24"], gateways=["10.2.0.1"])]))
    raw = chain(out, "raw")
    assert raw[0] == "type filter hook prerouting priority raw; policy accept;"
    assert "iifname vmap @untracked" in raw
    assert 'map untracked { type ifname : verdict; elements = { "br-a" : jump untracked-0, "br-b" : jump untracked-1 } }' in out
    assert chain(out, "untracked-0") == ["ip saddr 10.1.0.0/24 ip daddr 10.1.0.0/24 ip daddr != 10.1.0.1 notrack",
                                      "ip6 saddr fd00::/64 ip6 daddr fd00::/64 ip6 daddr != fd00::1 notrack"]
    assert chain(out, "untracked-1") == ["ip saddr 10.2.0.0/24 ip daddr 10.2.0.0/24 ip daddr != 10.2.0.1 notrack"]
    assert 'oifname "br-a" ip saddr 10.1.0.0/24 ct status dnat masquerade' in out
    assert 'oifname "br-a" ip6 saddr fd00::/64 ct status dnat masquerade' in out


def test_all_that_a_leaf_bridge_sees_is_untracked():
    out = rules(Ruleset([FwNetwork("br-a", ["10.1.0.0/24"], gateways=["10.1.0.1"], leaves="nsl1-*")]))
    assert chain(out, "raw")[1] == "iifname @leaves notrack"


def test_published_ports_dnat_by_family_and_host_ip():
    rs = Ruleset([FwNetwork("br-a", ["10.1.0.0/16"])],
                 [FwPort("0.0.0.0", 8080, "tcp", "10.1.0.2", 80, "br-a"),
                  FwPort("192.0.2.1", 53, "udp", "10.1.0.3", 53, "br-a"),
                  FwPort("::", 8443, "tcp", "fd00::2", 443, "br-a")])
    out = rules(rs)
    assert "meta nfproto ipv4 tcp dport 8080 dnat ip to 10.1.0.2:80" in out
    assert "meta nfproto ipv4 ip daddr 192.0.2.1 udp dport 53 dnat ip to 10.1.0.3:53" in out
    assert "meta nfproto ipv6 tcp dport 8443 dnat ip6 to [fd00::2]:443" in out


def test_dns_redirect_replaces_its_table_and_rewrites_ports_both_ways_without_nat():
    text = render_dns_redirect("127.0.0.11", 40001, 40002)
    on_loopback, on_output = text.split(OR)     # the loopback's egress hook; else, an output chain
    for ruleset, family, hook in ((on_loopback, "netdev", 'hook egress device "lo"'), (on_output, "ip", "hook output")):
        out = [l.strip() for l in ruleset.splitlines()]
        assert out[:2] == [f"add table {family} nsnet_dns", f"delete table {family} nsnet_dns"]
        assert hook in ruleset
        assert "ip daddr 127.0.0.11 udp dport 53 udp dport set 40001" in out
        assert "ip daddr 127.0.0.11 tcp dport 53 tcp dport set 40002" in out
        assert "ip saddr 127.0.0.11 udp sport 40001 udp sport set 53" in out
        assert "ip saddr 127.0.0.11 tcp sport 40002 tcp sport set 53" in out
        assert "nat" not in ruleset and " ct " not in ruleset  # nothing that makes the kernel track the sandbox's flows
