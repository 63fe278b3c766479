import ipaddress
import time

import pytest
from hypothesis import given, settings, strategies as st

from nsnet.errors import NsnetError
from nsnet.facts import Evidence
from nsnet.ipam.pools import DEFAULT_POOLS, Pool, candidates, parse_network, parse_pools, pick_subnet, skipped_summary

net = ipaddress.ip_network


def ev(cidr, kind="nsnet", detail="test"):
    return Evidence(kind, net(cidr, strict=False), detail)


def test_default_pools_are_dockers():
    assert [str(p.base) for p in DEFAULT_POOLS[:2]] == ["172.17.0.0/16", "172.18.0.0/16"]
    assert str(DEFAULT_POOLS[14].base) == "172.31.0.0/16"
    assert DEFAULT_POOLS[-1] == Pool(net("192.168.0.0/16"), 20)
    assert len(DEFAULT_POOLS) == 16 and all(p.size == 16 for p in DEFAULT_POOLS[:15])


def test_docker_pool_order():
    evidence = [ev("172.17.0.0/16", "docker", "the subnet of Docker network 'bridge'")]
    picked = []
    for _ in range(17):
        subnet, _ = pick_subnet(DEFAULT_POOLS, evidence)
        picked.append(str(subnet))
        evidence.append(ev(subnet))
    assert picked[:3] == ["172.18.0.0/16", "172.19.0.0/16", "172.20.0.0/16"]
    assert picked[13] == "172.31.0.0/16"
    assert picked[14:] == ["192.168.0.0/20", "192.168.16.0/20", "192.168.32.0/20"]


def test_skips_peer_and_says_why():
    evidence = [ev("172.17.0.0/16", "docker"), ev("172.18.0.0/16", "docker"),
                ev("172.19.0.0/16", "docker"), ev("172.20.0.0/16", "docker"), ev("172.21.0.0/16", "docker"),
                ev("172.22.10.119/32", "peer", "the peer of a live SSH connection to 172.42.10.112:22")]
    subnet, skipped = pick_subnet(DEFAULT_POOLS, evidence)
    assert subnet == net("172.23.0.0/16")
    assert skipped[-1][0] == net("172.22.0.0/16")
    assert skipped[-1][1][0].kind == "peer"
    assert any("172.22.10.119" in line and "SSH" in line for line in skipped_summary(skipped))


def test_smaller_size_carves_each_pool():
    subnet, _ = pick_subnet(DEFAULT_POOLS, [ev("172.17.0.0/24")], size=24)
    assert subnet == net("172.17.1.0/24")
    first = list(candidates(DEFAULT_POOLS, size=24))
    assert first[0] == net("172.17.0.0/24") and first[256] == net("172.18.0.0/24")


def test_size_larger_than_pool_skips_it():
    pools = parse_pools([{"base": "10.0.0.0/16", "size": 24}, {"base": "10.8.0.0/13", "size": 16}])
    assert pick_subnet(pools, [], size=14)[0] == net("10.8.0.0/14")


def test_nothing_free_raises_one_line():
    with pytest.raises(NsnetError) as e:
        pick_subnet([Pool(net("10.0.0.0/24"), 25)], [ev("10.0.0.0/25"), ev("10.0.0.200/32")])
    msg = str(e.value)
    assert "\n" not in msg and "add a pool" in msg and "--subnet" in msg


def test_wide_evidence_skipped_as_one_range():
    # A reserved /8 over a pool carved into /24s is one skipped range, not 65536 of them.
    pools = [Pool(net("10.0.0.0/8"), 24), Pool(net("100.64.0.0/10"), 24)]
    subnet, skipped = pick_subnet(pools, [ev("10.0.0.0/8", "reserved")])
    assert subnet == net("100.64.0.0/24")
    assert skipped == [(net("10.0.0.0/8"), [ev("10.0.0.0/8", "reserved")])]


def test_fast_with_big_pool_and_many_evidence():
    pools = [Pool(net("10.0.0.0/8"), 24)]
    # Every /24 of 10.0.0.0/12 holds a peer; the first free /24 is 10.16.0.0/24.
    evidence = [Evidence("peer", net(f"10.{a}.{b}.7/32"), "p") for a in range(16) for b in range(256)]
    t = time.perf_counter()
    subnet, skipped = pick_subnet(pools, evidence)
    assert subnet == net("10.16.0.0/24")
    assert time.perf_counter() - t < 1.0
    assert len(skipped) == 4096


def test_ipv6_pool():
    pools = parse_pools([{"base": "fd00:10::/48", "size": 64}])
    assert pick_subnet(pools, [ev("fd00:10::/64"), ev("10.0.0.0/8")])[0] == net("fd00:10:0:1::/64")


def test_parse_pools_errors_name_the_entry():
    with pytest.raises(NsnetError, match=r"default-address-pools\[1\]\.base 10\.0\.0\.1/16: it should be 10\.0\.0\.0/16"):
        parse_pools([{"base": "10.1.0.0/16", "size": 24}, {"base": "10.0.0.1/16", "size": 24}])
    with pytest.raises(NsnetError, match=r"\[0\]\.size 8 must be between 16"):
        parse_pools([{"base": "10.1.0.0/16", "size": 8}])
    with pytest.raises(NsnetError, match="needs both base and size"):
        parse_pools([{"base": "10.1.0.0/16"}])
    with pytest.raises(NsnetError, match="unknown key 'sise'"):
        parse_pools([{"base": "10.1.0.0/16", "sise": 24}])
    with pytest.raises(NsnetError, match="integer"):
        parse_pools([{"base": "10.1.0.0/16", "size": "24"}])


def test_parse_network_like_docker():
    with pytest.raises(NsnetError, match="^invalid subnet 172.30.0.1/16: it should be 172.30.0.0/16$"):
        parse_network("172.30.0.1/16")
    with pytest.raises(NsnetError, match="invalid subnet 'nope'"):
        parse_network("nope")


# -- properties: compare with a brute-force oracle on small pools -------------------------------

@st.composite
def small_world(draw, max_size=30):
    """Pools and evidence inside 10.0.0.0/22, small enough to enumerate."""
    def cidr(min_len, max_len):
        length = draw(st.integers(min_len, max_len))
        addr = draw(st.integers(0, 1023)) >> (32 - length) << (32 - length)
        return ipaddress.IPv4Network((0x0A000000 + addr, length))

    pools = []
    for _ in range(draw(st.integers(1, 4))):
        base = cidr(22, 28)
        pools.append(Pool(base, draw(st.integers(base.prefixlen, max(base.prefixlen, max_size)))))
    evidence = [Evidence(draw(st.sampled_from(["peer", "route", "reserved"])), cidr(20, 32), "x")
                for _ in range(draw(st.integers(0, 12)))]
    size = draw(st.one_of(st.none(), st.integers(22, max_size)))
    return pools, evidence, size


def oracle(pools, evidence, size):
    for c in candidates(pools, size):
        if not any(e.network.overlaps(c) for e in evidence):
            return c
    return None


@settings(max_examples=400, deadline=None)
@given(small_world())
def test_pick_matches_oracle(world):
    pools, evidence, size = world
    want = oracle(pools, evidence, size)
    if want is None:
        with pytest.raises(NsnetError):
            pick_subnet(pools, evidence, size)
        return
    got, skipped = pick_subnet(pools, evidence, size)
    assert got == want
    assert not any(e.network.overlaps(got) for e in evidence)
    for rng, why in skipped:  # every skip is justified
        assert why and all(e.network.overlaps(rng) for e in why)


@settings(max_examples=200, deadline=None)
@given(small_world(max_size=27))  # at most a few dozen picks per example
def test_repeated_picks_never_repeat_and_exhaust_exactly(world):
    pools, evidence, size = world
    evidence = list(evidence)
    seen = []
    while True:
        want = oracle(pools, evidence, size)
        try:
            got, _ = pick_subnet(pools, evidence, size)
        except NsnetError:
            assert want is None  # finds a free one whenever one exists
            break
        assert got == want and got not in seen
        assert not any(e.network.overlaps(got) for e in evidence)
        seen.append(got)
        evidence.append(Evidence("nsnet", got, "picked"))
