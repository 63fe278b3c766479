"""A swarm's settings as `swarm init`/`join` give them: the store URL, the advertise address, the pools."""
import os
import stat

import pytest

from nsnet.cluster import request
from nsnet.cluster import settings as swarmfile
from nsnet.errors import NsnetError


def test_store_url_gives_etcd_endpoints_in_order_https_with_tls():
    assert swarmfile.endpoints("etcd://10.0.0.1:2379,etcd2:2479", tls=False) == [
        "http://10.0.0.1:2379", "http://etcd2:2479"]
    assert swarmfile.endpoints("etcd://10.0.0.1:2379", tls=True) == ["https://10.0.0.1:2379"]


@pytest.mark.parametrize("url, says", [
    ("http://10.0.0.1:2379", "unknown store URL"), ("consul://h:8500", "unknown store URL"),
    ("10.0.0.1:2379", "unknown store URL"), ("etcd://10.0.0.1", "is not HOST:PORT"),
    ("etcd://h:2379,", "is not HOST:PORT"), ("etcd://h:99999", "is not HOST:PORT"),
    ("etcd://u:p@h:2379", "is not HOST:PORT"),
])
def test_bad_store_url_is_refused(url, says):
    with pytest.raises(NsnetError, match=says):
        swarmfile.endpoints(url, tls=False)


def test_advertise_address_is_an_address_or_an_interface():
    assert swarmfile.advertise_address("192.0.2.7") == "192.0.2.7"
    assert swarmfile.advertise_address("lo") == "127.0.0.1"
    with pytest.raises(NsnetError, match="no such interface"):
        swarmfile.advertise_address("nosuch0")
    with pytest.raises(NsnetError, match="neither an IP address nor an interface"):
        swarmfile.advertise_address("10.0.0.0/8")


def test_init_takes_docker_defaults_and_checks_pools_and_port():
    s = request({"Store": "etcd://h:2379", "AdvertiseAddr": "192.0.2.7", "NodeName": "n1"}, join=False)
    assert (s.pools, s.mask, s.data_path_port, s.node_name) == (["10.0.0.0/8"], 24, 4789, "n1")
    base = {"Store": "etcd://h:2379", "AdvertiseAddr": "192.0.2.7"}
    for extra, says in (({"DefaultAddrPool": ["10.0.0.0/33"]}, "not a subnet"),
                        ({"DefaultAddrPool": ["10.0.0.0/16"], "SubnetSize": 12}, "does not fit"),
                        ({"DataPathPort": 80}, "range 1024 to 49151")):
        with pytest.raises(NsnetError, match=says):
            request({**base, **extra}, join=False)


def test_settings_file_is_private_and_round_trips(tmp_path):
    s = request({"Store": "etcd://h:2379", "AdvertiseAddr": "192.0.2.7", "NodeName": "n1",
                 "StoreUser": "root", "StorePassword": "secret"}, join=True)
    swarmfile.save(str(tmp_path), s)
    assert stat.S_IMODE(os.stat(tmp_path / "swarm.json").st_mode) == 0o600
    assert swarmfile.load(str(tmp_path)) == s
    swarmfile.remove(str(tmp_path))
    assert swarmfile.load(str(tmp_path)) is None
