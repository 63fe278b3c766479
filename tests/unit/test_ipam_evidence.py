import ipaddress

import pytest

from nsnet.facts import Evidence
from nsnet.ipam.evidence import explain, overlapping, ranked, refusal

net = ipaddress.ip_network
SSH = Evidence("peer", net("172.22.10.119/32"), "the peer of a live SSH connection to 172.42.10.112:22")


def test_explain_the_seed_case():
    assert explain("172.22.0.0/16", SSH) == (
        "172.22.0.0/16 contains 172.22.10.119, the peer of a live SSH connection to 172.42.10.112:22; "
        "replies to it would be routed into this network's bridge.")


def test_explain_relations():
    office = Evidence("reserved", net("172.16.0.0/12"), "a range reserved in nsnet's configuration")
    assert explain("172.22.0.0/16", office).startswith(
        "172.22.0.0/16 lies inside 172.16.0.0/12, a range reserved in nsnet's configuration; ")
    docker = Evidence("docker", "172.22.0.0/16", "the subnet of Docker network 'app_default'")
    assert explain(net("172.22.0.0/16"), docker).startswith(
        "172.22.0.0/16 is the subnet of Docker network 'app_default'; both bridges")
    route = Evidence("route", "172.22.8.0/21", "a route to 172.22.8.0/21 via 10.0.0.1 dev eth0")
    assert "contains 172.22.8.0/21, a route to" in explain("172.22.0.0/16", route)


def test_evidence_checks_kind_and_coerces_network():
    assert Evidence("resolver", "10.0.0.53", "x").network == net("10.0.0.53/32")
    with pytest.raises(ValueError):
        Evidence("rumour", net("10.0.0.0/8"), "x")


def test_overlapping_ignores_other_family_and_disjoint():
    ev = [SSH, Evidence("address", net("fd00::/64"), "v6"), Evidence("route", net("10.0.0.0/8"), "r")]
    assert overlapping("172.22.0.0/16", ev) == [SSH]
    assert overlapping("172.23.0.0/16", ev) == []


def test_refusal_is_one_line_worst_first():
    ev = [Evidence("route", net("172.22.0.0/24"), "an on-link route to 172.22.0.0/24 dev eth1"),
          SSH, SSH,
          Evidence("resolver", net("172.22.0.53/32"), "a nameserver in /etc/resolv.conf")]
    msg = refusal("172.22.0.0/16", ev)
    assert "\n" not in msg
    assert msg.startswith("172.22.0.0/16 contains 172.22.10.119, the peer of a live SSH connection")
    assert "It also overlaps 172.22.0.53 (resolver), 172.22.0.0/24 (route)." in msg
    assert msg.endswith("Pick another subnet, or pass --allow-overlap.")
    assert len(ranked(ev)) == 3


def test_refusal_counts_the_rest():
    ev = [Evidence("neighbour", net(f"10.1.0.{i}/32"), "a neighbour on eth0 (REACHABLE)") for i in range(1, 7)]
    assert " and 2 more." in refusal("10.1.0.0/24", ev)
