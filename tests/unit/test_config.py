import ipaddress

import pytest

from nsnet.config import Config, load
from nsnet.errors import NsnetError
from nsnet.ipam.pools import DEFAULT_POOLS, Pool


def write(tmp_path, text):
    (tmp_path / "config.toml").write_text(text)
    return str(tmp_path)


def test_missing_file_means_docker_defaults(tmp_path):
    cfg = load(str(tmp_path))
    assert cfg == Config() and cfg.pools == DEFAULT_POOLS and cfg.reserved == ()
    d = cfg.as_dict()
    assert d["ConfigFile"] is None and d["DefaultAddressPoolsSource"] == "default"
    assert d["DefaultAddressPools"][0] == {"base": "172.17.0.0/16", "size": 16}


def test_pools_and_reserved(tmp_path):
    root = write(tmp_path, '''
default-address-pools = [{base = "10.10.0.0/16", size = 24}, {base = "10.20.0.0/16", size = 26}]
reserved = ["172.22.0.0/16", "10.8.0.0/24", "192.0.2.7"]
''')
    cfg = load(root)
    assert cfg.pools == (Pool(ipaddress.ip_network("10.10.0.0/16"), 24), Pool(ipaddress.ip_network("10.20.0.0/16"), 26))
    assert [str(n) for n in cfg.reserved] == ["172.22.0.0/16", "10.8.0.0/24", "192.0.2.7/32"]
    d = cfg.as_dict()
    assert d["ConfigFile"].endswith("config.toml") and d["DefaultAddressPoolsSource"] == "config"
    assert d["Reserved"] == ["172.22.0.0/16", "10.8.0.0/24", "192.0.2.7/32"]


def test_reserved_alone_keeps_default_pools(tmp_path):
    cfg = load(write(tmp_path, 'reserved = ["172.22.0.0/16"]\n'))
    assert cfg.pools == DEFAULT_POOLS


@pytest.mark.parametrize("text, fragment", [
    ('reserverd = ["172.22.0.0/16"]', "unknown key 'reserverd'"),
    ('reserved = ["172.22.0.1/16"]', "reserved[0] 172.22.0.1/16: it should be 172.22.0.0/16"),
    ('reserved = "172.22.0.0/16"', "reserved must be a list"),
    ('reserved = [16]', "reserved[0] must be a string"),
    ('default-address-pools = [{base = "10.10.0.0/16", size = 8}]', "default-address-pools[0].size 8"),
    ('default-address-pools = [{base = "10.10.0.0/16"}]', "default-address-pools[0] needs both base and size"),
    ('default-address-pools = []', "default-address-pools is empty"),
    ('reserved = [', "cannot parse"),
    ('swarm-key-rotation = 0', "swarm-key-rotation must be a number of seconds, at least 1"),
    ('swarm-key-rotation = "12h"', "swarm-key-rotation must be a number of seconds"),
])
def test_bad_config_names_file_and_key(tmp_path, text, fragment):
    root = write(tmp_path, text + "\n")
    with pytest.raises(NsnetError) as e:
        load(root)
    msg = str(e.value)
    assert fragment in msg and str(tmp_path / "config.toml") in msg and "\n" not in msg


def test_key_rotation_defaults_to_docker_s_12_hours_and_takes_seconds(tmp_path):
    assert load(str(tmp_path)).key_rotation == 43200
    assert load(write(tmp_path, "swarm-key-rotation = 2\n")).key_rotation == 2
