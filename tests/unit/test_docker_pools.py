"""The Docker IPAM pools' logic on a real SQLite store and made-up evidence: choice, refusal, addresses,
gateway, release, and a second DockerPools on the same store answering for the first one's pools."""
from __future__ import annotations

import ipaddress
import threading

import pytest

from nsnet.engine.dockerpools import ADDRESS, GATEWAY, LOCAL_SPACE, POOL, REQUEST_TYPE, DockerPools
from nsnet.errors import NotFound, NsnetError
from nsnet.facts import Evidence
from nsnet.ipam.pools import DEFAULT_POOLS
from nsnet.store.records import Records
from nsnet.store.sqlite import SqliteKV

PEER = Evidence("peer", ipaddress.ip_network("172.17.5.9/32"), "the peer of a live SSH connection to 10.0.0.1:22")


@pytest.fixture
def store(tmp_path):
    s = Records(SqliteKV(str(tmp_path / "state.db")))
    yield s
    s.close()


def pools_on(store, host=(PEER,)) -> DockerPools:
    dp = DockerPools(store, lambda: list(host) + dp.evidence(), DEFAULT_POOLS, threading.RLock())
    return dp


def test_pools_skip_the_evidence_and_each_other(store):
    dp = pools_on(store)
    first = dp.request_pool(LOCAL_SPACE, "", "", {}, False)
    second = dp.request_pool(LOCAL_SPACE, "", "", {}, False)
    assert first["subnet"] == "172.18.0.0/16"      # 172.17 holds the live peer
    assert second["subnet"] == "172.19.0.0/16"
    # Carved into /24s, 172.17 has room beside the peer.
    assert dp.request_pool(LOCAL_SPACE, "", "", {"size": "24"}, False)["subnet"] == "172.17.0.0/24"


def test_explicit_pool_over_a_live_peer_is_refused_in_one_line(store):
    dp = pools_on(store)
    with pytest.raises(NsnetError) as e:
        dp.request_pool(LOCAL_SPACE, "172.17.0.0/16", "", {}, False)
    msg = str(e.value)
    assert "\n" not in msg and "172.17.5.9" in msg and "--ipam-opt allow-overlap=true" in msg
    assert store.list(POOL) == []
    assert dp.request_pool(LOCAL_SPACE, "172.17.0.0/16", "", {"allow-overlap": "true"}, False)


@pytest.mark.parametrize("pool, sub, v6, why", [
    ("10.1.2.3/16", "", False, "it should be 10.1.0.0/16"),
    ("127.0.0.0/8", "", False, "loopback"),
    ("10.9.0.0/16", "10.8.0.0/24", False, "not inside subnet"),
    ("", "10.8.0.0/24", False, "needs a subnet"),
    ("", "", True, "no IPv6 pools"),
    ("10.9.0.0/16", "", True, "not an IPv6 subnet"),
])
def test_bad_pools_are_refused_and_nothing_is_saved(store, pool, sub, v6, why):
    dp = pools_on(store)
    with pytest.raises(NsnetError, match=why):
        dp.request_pool(LOCAL_SPACE, pool, sub, {}, v6)
    assert store.list(POOL) == [] and dp.pools == {}


def test_addresses_gateway_and_restart(store):
    dp = pools_on(store)
    pool = dp.request_pool(LOCAL_SPACE, "10.9.0.0/24", "", {}, False)
    pid = pool["id"]
    assert dp.request_address(pid, "", {REQUEST_TYPE: GATEWAY}) == "10.9.0.1/24"
    assert dp.request_address(pid, "", {}) == "10.9.0.2/24"
    assert dp.request_address(pid, "10.9.0.7", {}) == "10.9.0.7/24"
    with pytest.raises(NsnetError, match="already in use"):
        dp.request_address(pid, "10.9.0.7", {})
    with pytest.raises(NsnetError, match="gateway"):
        dp.request_address(pid, "10.9.0.1", {})
    # A restarted daemon: the same store, nothing replayed.
    again = pools_on(store)
    assert again.request_address(pid, "", {}) == "10.9.0.3/24"
    again.release_address(pid, "10.9.0.2")
    assert again.request_address(pid, "", {}) == "10.9.0.2/24"
    with pytest.raises(NotFound):
        again.request_address("f" * 64, "", {})
    again.release_pool(pid)
    assert store.list(POOL) == [] and store.list(ADDRESS) == []
    with pytest.raises(NotFound):
        again.release_pool(pid)


def test_explicit_gateway(store):
    dp = pools_on(store)
    pid = dp.request_pool(LOCAL_SPACE, "10.9.0.0/24", "10.9.0.128/25", {}, False)["id"]
    assert dp.request_address(pid, "10.9.0.254", {REQUEST_TYPE: GATEWAY}) == "10.9.0.254/24"
    assert dp.request_address(pid, "", {}) == "10.9.0.128/24"
    other = dp.request_pool(LOCAL_SPACE, "10.10.0.0/24", "", {}, False)["id"]
    with pytest.raises(NsnetError, match="broadcast"):
        dp.request_address(other, "10.10.0.255", {REQUEST_TYPE: GATEWAY})
    assert [p["gateway"] for p in store.list(POOL) if p["id"] == other] == [None]


def test_addresses_given_up_take_their_tracked_flows_along(store):
    forgotten = []
    dp = DockerPools(store, lambda: [], DEFAULT_POOLS, threading.RLock(), forget_flows=forgotten.extend)
    pid = dp.request_pool(LOCAL_SPACE, "10.9.0.0/24", "", {}, False)["id"]
    dp.request_address(pid, "", {REQUEST_TYPE: GATEWAY})
    dp.request_address(pid, "", {})
    dp.request_address(pid, "", {})
    dp.release_address(pid, "10.9.0.2")
    dp.release_address(pid, "10.9.0.99")    # never handed out: nothing to forget
    dp.release_pool(pid)
    assert sorted(map(str, forgotten)) == ["10.9.0.1", "10.9.0.2", "10.9.0.3"]


def test_no_pool_left_says_so_in_dockers_words(store):
    dp = DockerPools(store, lambda: [Evidence("route", ipaddress.ip_network("0.0.0.0/0"), "the default route")],
                     DEFAULT_POOLS, threading.RLock())
    with pytest.raises(NsnetError, match=r"--ipam-opt size=24"):
        dp.request_pool(LOCAL_SPACE, "", "", {}, False)


def test_a_pool_request_does_not_ask_docker_back(tmp_path):
    """Docker waits on its IPAM driver: the engine's evidence for a pool leaves Docker's socket out (asked
    back, Docker would stall the call), while a network create of nsnet's own still asks it."""
    import os

    from nsnet.config import Config
    from nsnet.engine import Engine
    from nsnet.store.records import Records
    from nsnet.store.sqlite import SqliteKV
    from fakekernel import FakeKernel

    asked = []
    engine = Engine(kernel=FakeKernel(), store=Records(SqliteKV(os.path.join(str(tmp_path), "state.db"))),
                    firewall=lambda rs: None, evidence=lambda ask_docker=True: asked.append(ask_docker) or [],
                    config=Config(), root=str(tmp_path))
    engine.docker_pools.request_pool("", "", "", {}, False)
    assert asked == [False]
    engine.create_network({"Name": "n1"})
    assert asked[-1] is True
