"""What nsnet reclaims of what it holds for Docker (engine/dockerreclaim.py): only what two looks at both sides
show Docker forgot; the round of the daemon's sweep (daemon/dockersweep.py) over a fake Docker; and the pools'
release of an address only while it is the grant the looks saw."""
from __future__ import annotations

import threading

import pytest

from nsnet.daemon import dockersweep
from nsnet.engine.dockerpools import ADDRESS, LOCAL_SPACE, DockerPools
from nsnet.engine.dockerreclaim import GAP, Held, forgotten, view_of
from nsnet.ipam.pools import DEFAULT_POOLS
from nsnet.store.records import Records
from nsnet.store.sqlite import SqliteKV

NET, EP, OTHER = "d" * 64, "e" * 64, "c" * 64
POOL, SUBNET = "p1", "10.9.0.0/24"


def inspect(endpoints=(), ipam="nsnet", subnet=SUBNET, aux=None, net=NET) -> dict:
    """A network inspect document as dockerd 20.10 answers it."""
    containers = {f"ep-{eid}" if i % 2 else f"{i:064x}": {"EndpointID": eid, "IPv4Address": f"{a}/24", "IPv6Address": ""}
                  for i, (eid, a) in enumerate(endpoints)}
    cfg = {"Subnet": subnet}
    if aux:
        cfg["AuxiliaryAddresses"] = aux
    return {"Id": net, "Driver": "nsnet", "IPAM": {"Driver": ipam, "Config": [cfg]}, "Containers": containers}


def held(endpoints=None, addresses=None) -> Held:
    return Held(endpoints=endpoints if endpoints is not None else {EP: NET},
                addresses=addresses if addresses is not None else {(POOL, "10.9.0.2"): 7},
                subnets={POOL: SUBNET})


def decide(first, second, view1, view2):
    return forgotten((first, second), (view_of(view1), view_of(view2)))


def test_what_docker_shows_at_neither_look_is_forgotten():
    assert decide(held(), held(), [inspect()], [inspect()]) == ([EP], [(POOL, "10.9.0.2")])


def test_what_docker_shows_at_either_look_is_kept():
    using = [inspect([(EP, "10.9.0.2")])]
    assert decide(held(), held(), using, [inspect()]) == ([], [])          # removal under way at the first look
    assert decide(held(), held(), [inspect()], using) == ([], [])          # a start that took long: stored by the second


def test_an_address_docker_holds_for_another_endpoint_or_as_aux_or_ipv6_is_kept():
    other = [inspect([(OTHER, "10.9.0.2")])]                               # bridge + nsnet IPAM: no record of ours
    assert decide(held(), held(), other, other) == ([EP], [])
    aux = [inspect(aux={"printer": "10.9.0.2"})]
    assert decide(held(), held(), aux, aux)[1] == []
    v6 = {(POOL, "fd00::2"): 1}
    doc = inspect(subnet="fd00::/64")
    doc["Containers"] = {"x": {"EndpointID": OTHER, "IPv4Address": "", "IPv6Address": "fd00::2/64"}}
    h = Held(endpoints={}, addresses=v6, subnets={POOL: "fd00::/64"})
    assert forgotten((h, h), (view_of([doc]), view_of([doc]))) == ([], [])


def test_a_record_not_alike_at_both_looks_is_kept():
    # Released and given again between the looks: another grant (serial), maybe a container starting now.
    assert decide(held(), held(addresses={(POOL, "10.9.0.2"): 8}), [inspect()], [inspect()])[1] == []
    # Made after the first look: never judged on one look.
    assert decide(held(endpoints={}, addresses={}), held(), [inspect()], [inspect()]) == ([], [])
    # Gone by the second look (Docker's own release landed): nothing to do.
    assert decide(held(), held(endpoints={}, addresses={}), [inspect()], [inspect()]) == ([], [])


def test_networks_or_pools_docker_does_not_show_are_left_alone():
    assert decide(held(), held(), [], [inspect()]) == ([], [])            # network created or removed meanwhile
    assert decide(held(), held(), [inspect()], []) == ([], [])
    other_ipam = [inspect(ipam="default")]                                 # same subnet, Docker's own IPAM
    assert decide(held(), held(), other_ipam, other_ipam) == ([EP], [])
    elsewhere = [inspect(subnet="10.8.0.0/24")]
    assert decide(held(), held(), elsewhere, elsewhere) == ([EP], [])


def test_a_subnet_shared_by_two_docker_networks_keeps_the_address_either_uses():
    two = [inspect(), inspect([(OTHER, "10.9.0.2")], net="a" * 64)]
    assert decide(held(), held(), two, two) == ([EP], [])


class FakeDocker:
    """Docker's API over a list of network inspect documents (the test changes them between the looks)."""

    def __init__(self, docs):
        self.docs = docs

    def call(self, sock, method, path, timeout=10.0):
        if path == "/networks":
            return 200, [{"Id": d["Id"], "Driver": d["Driver"], "IPAM": d["IPAM"]} for d in self.docs]
        doc = next((d for d in self.docs if path == f"/networks/{d['Id']}"), None)
        return (200, doc) if doc else (404, "no such network")


class FakeEngine:
    def __init__(self, pools: DockerPools):
        self.docker_pools, self.dropped = pools, []
        self.docker_nets = type("Nets", (), {"held": lambda _: {EP: NET},
                                             "reclaim": lambda _, eid: self.dropped.append(eid) or True})()


@pytest.fixture
def pools(tmp_path):
    store = Records(SqliteKV(str(tmp_path / "state.db")))
    dp = DockerPools(store, lambda: [], DEFAULT_POOLS, threading.RLock())
    yield dp
    store.close()


def test_a_round_releases_what_docker_forgot_and_a_grant_made_between_the_looks_survives(pools, monkeypatch):
    pool = pools.request_pool(LOCAL_SPACE, SUBNET, "", {}, False)
    forgotten_addr = pools.request_address(pool["id"], "", {}).split("/")[0]
    used = pools.request_address(pool["id"], "", {}).split("/")[0]
    engine = FakeEngine(pools)
    docker = FakeDocker([inspect([(OTHER, used)])])
    monkeypatch.setattr(dockersweep, "call", docker.call)
    regranted = []

    def between_the_looks(gap):
        # Docker releases one address and a start takes it again, not yet stored by Docker.
        assert gap == GAP
        pools.release_address(pool["id"], used)
        regranted.append(pools.request_address(pool["id"], used, {}).split("/")[0])
        docker.docs = [inspect()]

    assert dockersweep.sweep(engine, "/sock", sleep=between_the_looks) == ([EP], [(pool["id"], forgotten_addr)])
    assert engine.dropped == [EP] and regranted == [used]
    assert [r["address"] for r in pools.store.list(ADDRESS)] == [used]
    assert pools.request_address(pool["id"], "", {}).split("/")[0] == forgotten_addr   # given out again


def test_docker_answering_an_error_reclaims_nothing(pools, monkeypatch):
    engine = FakeEngine(pools)
    monkeypatch.setattr(dockersweep, "call", lambda *a, **k: (500, "daemon busy"))
    assert dockersweep.sweep(engine, "/sock", sleep=lambda s: None) == ([], [])
    assert engine.dropped == []


def test_a_stale_serial_reclaims_nothing(pools):
    pool = pools.request_pool(LOCAL_SPACE, SUBNET, "", {}, False)
    a = pools.request_address(pool["id"], "", {}).split("/")[0]
    serial = pools.held()[0][(pool["id"], a)]
    pools.release_address(pool["id"], a)
    pools.request_address(pool["id"], a, {})
    assert not pools.reclaim(pool["id"], a, serial)
    assert (pool["id"], a) in pools.held()[0]
    assert pools.reclaim(pool["id"], a, pools.held()[0][(pool["id"], a)])
    assert pools.held()[0] == {} and pools.store.list(ADDRESS) == []


def test_timings_from_the_environment():
    assert dockersweep.timings(None) == (GAP, dockersweep.PERIOD)
    assert dockersweep.timings("1,0.2") == (1.0, 0.2)
    assert dockersweep.timings("5") == (5.0, dockersweep.PERIOD)
    for bad in ("x", "0", "1,2,3", "-1", ""):
        assert dockersweep.timings(bad) == (GAP, dockersweep.PERIOD), bad
