import ipaddress
import time

import pytest
from hypothesis import given, settings, strategies as st

from nsnet.errors import Conflict, NsnetError
from nsnet.ipam.addresses import AddressPool, default_gateway, mac_for

ip = ipaddress.ip_address
net = ipaddress.ip_network


def test_default_gateway_and_mac():
    assert default_gateway("172.18.0.0/16") == ip("172.18.0.1")
    assert default_gateway(net("fd00::/64")) == ip("fd00::1")
    assert mac_for("172.17.0.2") == "02:42:ac:11:00:02"
    assert mac_for(ip("10.0.255.1")) == "02:42:0a:00:ff:01"


def test_allocates_like_docker():
    pool = AddressPool("172.30.0.0/16")
    used = set()
    first = [pool.allocate(used) for _ in range(3)]
    used.update(first)
    assert first == [ip("172.30.0.2"), ip("172.30.0.3"), ip("172.30.0.4")]
    # The lowest free address is reused, as Docker's bitmap does.
    used.discard(ip("172.30.0.3"))
    pool.release("172.30.0.3")
    assert pool.allocate(used) == ip("172.30.0.3")


def test_ip_range_gateway_and_aux_are_skipped():
    pool = AddressPool("10.1.0.0/24", gateway="10.1.0.130", ip_range="10.1.0.128/29",
                       aux={"printer": "10.1.0.129", "nas": "10.1.0.131"})
    used = {ip("10.1.0.132")}
    got = [pool.allocate(used) for _ in range(4)]
    assert got == [ip("10.1.0.128"), ip("10.1.0.133"), ip("10.1.0.134"), ip("10.1.0.135")]
    with pytest.raises(NsnetError, match="no free address left in 10.1.0.128/29"):
        pool.allocate(used)


def test_never_network_or_broadcast():
    pool = AddressPool("10.2.0.0/30", gateway="10.2.0.2")
    assert pool.allocate(set()) == ip("10.2.0.1")
    with pytest.raises(NsnetError, match="no free address"):
        pool.allocate()


def test_used_may_hold_strings_and_change_behind_our_back():
    used = {"10.3.0.2"}
    pool = AddressPool("10.3.0.0/24")
    assert pool.allocate(used) == ip("10.3.0.3")
    used.add("10.3.0.4")  # another writer took it without telling the pool
    assert pool.allocate(used) == ip("10.3.0.5")


def test_reserve_static_ip():
    pool = AddressPool("10.4.0.0/16", ip_range="10.4.1.0/24", aux={"x": "10.4.0.9"})
    used = set()
    assert pool.reserve("10.4.200.7", used) == ip("10.4.200.7")  # outside ip-range, inside subnet: fine
    with pytest.raises(Conflict, match="already in use"):
        pool.reserve("10.4.200.7", used)
    used.add(ip("10.4.1.5"))
    with pytest.raises(Conflict, match="10.4.1.5 is already in use"):
        pool.reserve("10.4.1.5", used)
    for bad, msg in [("10.5.0.1", "outside subnet"), ("10.4.0.0", "network address"),
                     ("10.4.255.255", "broadcast address"), ("10.4.0.1", "gateway"),
                     ("10.4.0.9", "aux-address x")]:
        with pytest.raises(NsnetError, match=msg):
            pool.reserve(bad, used)
    r = pool.reserve("10.4.1.0", used)  # a static inside the range is never handed out again
    assert r == ip("10.4.1.0") and pool.allocate(used) == ip("10.4.1.1")


def test_validate_like_docker():
    with pytest.raises(NsnetError, match="^invalid subnet 172.30.0.1/16: it should be 172.30.0.0/16$"):
        AddressPool("172.30.0.1/16")
    with pytest.raises(NsnetError, match="invalid ip-range 172.30.1.1/24: it should be 172.30.1.0/24"):
        AddressPool("172.30.0.0/16", ip_range="172.30.1.1/24")
    cases = [
        (dict(gateway="10.0.0.1"), "gateway 10.0.0.1 is outside subnet"),
        (dict(gateway="172.30.255.255"), "broadcast address"),
        (dict(ip_range="172.31.0.0/24"), "ip-range 172.31.0.0/24 is not inside subnet"),
        (dict(ip_range="172.30.0.0/8"), "invalid ip-range"),
        (dict(aux={"a": "10.0.0.1"}), "aux-address a=10.0.0.1 is outside subnet"),
        (dict(aux={"a": "172.30.0.1"}), "is the gateway"),
        (dict(aux={"a": "172.30.0.9", "b": "172.30.0.9"}), "both 172.30.0.9"),
        (dict(gateway="fd00::1"), "outside subnet"),
    ]
    for kwargs, msg in cases:
        with pytest.raises(NsnetError, match=msg) as e:
            AddressPool("172.30.0.0/16", **kwargs)
        assert "\n" not in str(e.value)


def test_ipv6_pool():
    pool = AddressPool("fd00:1::/64")
    used = set()
    assert pool.gateway == ip("fd00:1::1")
    assert pool.allocate(used) == ip("fd00:1::2")
    # A far-away static address does not make the bitmap huge.
    assert pool.reserve("fd00:1::ffff:ffff:ffff:fff0", used)
    assert pool.allocate(used) == ip("fd00:1::3")
    assert len(pool._bm) <= 4096


def test_a_new_used_set_is_the_new_truth():
    pool = AddressPool("10.6.0.0/24")
    assert pool.allocate({ip("10.6.0.2")}) == ip("10.6.0.3")
    assert pool.allocate(set()) == ip("10.6.0.2")  # rebuilt from the set given


def test_fast_in_a_slash_8_with_many_used():
    pool = AddressPool("10.0.0.0/8")
    used = {ip(int(ip("10.0.0.0")) + i) for i in range(2, 200_002)}  # 200k containers
    t = time.perf_counter()
    for _ in range(2000):  # churn: release one deep inside, allocate, which takes it back
        a = pool.allocate(used)
        used.add(a)
        victim = ip("10.1.0.0") + (int(a) * 7919) % 100_000
        used.discard(victim)
        pool.release(victim)
    elapsed = time.perf_counter() - t
    assert elapsed < 2.0, elapsed
    assert len(used) == 200_000


# -- properties ---------------------------------------------------------------------------------

@st.composite
def plan(draw):
    length = draw(st.integers(24, 30))
    subnet = ipaddress.IPv4Network((0x0A000000, length))
    hosts = list(subnet)
    gateway = draw(st.sampled_from(hosts[1:-1]))
    rng = None
    if draw(st.booleans()):
        rlen = draw(st.integers(length, 32))
        start = draw(st.integers(0, subnet.num_addresses - 1)) >> (32 - rlen) << (32 - rlen)
        rng = ipaddress.IPv4Network((0x0A000000 + start, rlen))
    aux_ips = draw(st.lists(st.sampled_from(hosts), max_size=4, unique=True))
    aux = {f"a{i}": a for i, a in enumerate(aux_ips) if a != gateway}
    used = set(draw(st.lists(st.sampled_from(hosts), max_size=subnet.num_addresses)))
    ops = draw(st.lists(st.tuples(st.sampled_from(["alloc", "release"]), st.sampled_from(hosts)), max_size=40))
    return subnet, gateway, rng, aux, used, ops


def lowest_free(subnet, gateway, rng, aux, used):
    banned = {gateway, *aux.values()}
    if subnet.num_addresses > 2:
        banned |= {subnet.network_address, subnet.broadcast_address}
    for a in (rng or subnet):
        if a not in banned and a not in used:
            return a
    return None


@settings(max_examples=300, deadline=None)
@given(plan())
def test_allocator_matches_oracle(p):
    subnet, gateway, rng, aux, used, ops = p
    pool = AddressPool(subnet, gateway=gateway, ip_range=rng, aux=aux)
    for op, addr in ops:
        if op == "release":
            used.discard(addr)
            pool.release(addr)
            continue
        want = lowest_free(subnet, gateway, rng, aux, used)
        if want is None:
            with pytest.raises(NsnetError):
                pool.allocate(used)
            continue
        got = pool.allocate(used)
        assert got == want  # never gateway/aux/used/out of range, and finds one whenever one exists
        used.add(got)
