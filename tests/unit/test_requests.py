import pytest

from nsnet.errors import NsnetError
from nsnet.model import PortMapping
from nsnet.requests import check_name, parse_network, parse_port, ports_clash, subnet_configs


@pytest.mark.parametrize("spec,want", [
    ("80", PortMapping("0.0.0.0", 80, 80, "tcp")),
    ("8080:80", PortMapping("0.0.0.0", 8080, 80, "tcp")),
    ("8080:80/udp", PortMapping("0.0.0.0", 8080, 80, "udp")),
    ("127.0.0.1:8080:80", PortMapping("127.0.0.1", 8080, 80, "tcp")),
    ("[::1]:8080:80/tcp", PortMapping("::1", 8080, 80, "tcp")),
])
def test_port_specs(spec, want):
    assert parse_port(spec) == want


@pytest.mark.parametrize("spec", ["", "abc", "70000:80", "8080:0", "8080:80/sctp", "1.2.3:80:80", "8080:80:90"])
def test_bad_port_specs(spec):
    with pytest.raises(NsnetError):
        parse_port(spec)


def test_port_clash_needs_same_proto_port_and_overlapping_address():
    a = PortMapping("0.0.0.0", 8080, 80, "tcp")
    assert ports_clash(a, PortMapping("10.0.0.1", 8080, 81, "tcp"))
    assert not ports_clash(a, PortMapping("0.0.0.0", 8080, 80, "udp"))
    assert not ports_clash(PortMapping("10.0.0.1", 8080, 80), PortMapping("10.0.0.2", 8080, 80))


def test_strict_cidr_says_what_it_should_be():
    with pytest.raises(NsnetError, match="it should be 172.30.0.0/16"):
        parse_network("172.30.0.1/16", "subnet")


def test_gateway_range_and_aux_pair_with_their_subnet():
    cfgs = subnet_configs(["10.1.0.0/16", "fd00:1::/64"], ["fd00:1::1", "10.1.0.254"], ["10.1.8.0/24"],
                          {"printer": "10.1.0.9"}, ipv6=True)
    v4, v6 = cfgs
    assert (v4.gateway, v4.ip_range, v4.aux) == ("10.1.0.254", "10.1.8.0/24", {"printer": "10.1.0.9"})
    assert v6.gateway == "fd00:1::1"


@pytest.mark.parametrize("args,msg", [
    ((["10.1.0.0/16"], ["10.2.0.1"], [], {}), "no matching subnet for gateway"),
    ((["10.1.0.0/16", "10.1.4.0/24"], [], [], {}), "overlap"),
    ((["fd00::/64"], [], [], {}), "pass --ipv6"),
    ((["10.1.0.0/16"], ["10.1.0.1", "10.1.0.2"], [], {}), "two gateways"),
])
def test_subnet_config_errors(args, msg):
    with pytest.raises(NsnetError, match=msg):
        subnet_configs(*args, ipv6=False)


def test_names():
    check_name("web-1.prod_x", "network")
    with pytest.raises(NsnetError):
        check_name("-web", "network")
