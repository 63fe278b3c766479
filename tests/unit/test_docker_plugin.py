"""Docker's plugin protocol as the daemon answers it: the handshake, field checks, and refusals as
{"Error": one line} with status 200 (libnetwork's remote IPAM reads Error, not the status)."""
from __future__ import annotations

import json
import threading
from types import SimpleNamespace

import pytest

from nsnet.daemon.dockerplugin import dispatch
from nsnet.engine.dockerpools import DockerPools
from nsnet.ipam.pools import DEFAULT_POOLS
from nsnet.store.records import Records
from nsnet.store.sqlite import SqliteKV


@pytest.fixture
def daemon(tmp_path):
    store = Records(SqliteKV(str(tmp_path / "state.db")))
    pools = DockerPools(store, lambda: pools.evidence(), DEFAULT_POOLS, threading.RLock())
    yield SimpleNamespace(engine=SimpleNamespace(docker_pools=pools))
    store.close()


def post(daemon, path, body):
    return dispatch(daemon, "POST", path, json.dumps(body).encode())


def test_handshake_and_a_network_lifecycle(daemon):
    assert post(daemon, "/Plugin.Activate", None) == (200, {"Implements": ["NetworkDriver", "IpamDriver"]})
    assert post(daemon, "/IpamDriver.GetCapabilities", None)[1]["RequiresRequestReplay"] is False
    spaces = post(daemon, "/IpamDriver.GetDefaultAddressSpaces", None)[1]
    pool = post(daemon, "/IpamDriver.RequestPool", {"AddressSpace": spaces["LocalDefaultAddressSpace"],
                                                    "Pool": "", "SubPool": "", "Options": {}, "V6": False})[1]
    assert pool["Pool"] == "172.17.0.0/16" and len(pool["PoolID"]) == 64
    gw = post(daemon, "/IpamDriver.RequestAddress", {"PoolID": pool["PoolID"], "Address": "",
                                                     "Options": {"RequestAddressType": "com.docker.network.gateway"}})
    assert gw == (200, {"Address": "172.17.0.1/16", "Data": {}})
    ep = post(daemon, "/IpamDriver.RequestAddress", {"PoolID": pool["PoolID"], "Address": "", "Options": None})
    assert ep[1]["Address"] == "172.17.0.2/16"
    assert post(daemon, "/IpamDriver.ReleaseAddress", {"PoolID": pool["PoolID"], "Address": "172.17.0.2"}) == (200, {})
    assert post(daemon, "/IpamDriver.ReleasePool", {"PoolID": pool["PoolID"]}) == (200, {})


@pytest.mark.parametrize("path, body, why", [
    ("/IpamDriver.RequestPool", {"AddressSpace": 5}, "AddressSpace must be a string"),
    ("/IpamDriver.RequestPool", {"AddressSpace": "nsnet-global"}, "local networks"),
    ("/IpamDriver.RequestPool", {"Options": {"a": 1}}, "Options must map strings to strings"),
    ("/IpamDriver.RequestPool", {"V6": "yes"}, "V6 must be true or false"),
    ("/IpamDriver.RequestPool", {"Pool": "x" * 300}, "at most 255"),
    ("/IpamDriver.RequestPool", {"Pool": "10.0.0.0/33"}, "invalid subnet"),
    ("/IpamDriver.RequestAddress", {"PoolID": "nope"}, "not one of nsnet's IPAM pools"),
    ("/IpamDriver.RequestPool", [], "must be a JSON object"),
    ("/IpamDriver.Nope", {}, "does not implement"),
])
def test_refusals_are_one_line_errors(daemon, path, body, why):
    status, reply = post(daemon, path, body)
    assert status == 200 and set(reply) == {"Error"}
    assert why in reply["Error"] and "\n" not in reply["Error"]
    assert daemon.engine.docker_pools.pools == {}


def test_not_json_and_not_post(daemon):
    assert dispatch(daemon, "POST", "/IpamDriver.RequestPool", b"{")[1] == {"Error": "the body is not JSON"}
    assert dispatch(daemon, "GET", "/Plugin.Activate", b"")[0] == 405
