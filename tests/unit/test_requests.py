import pytest

from nsnet.errors import NsnetError
from nsnet.model import PortMapping
from nsnet.requests import (check_hostname, check_labels, check_name, ifname_problem, parse_network, parse_port,
                            ports_clash, subnet_configs)


@pytest.mark.parametrize("spec,want", [
    ("80", PortMapping("0.0.0.0", 0, 80, "tcp")),          # no host port: an ephemeral one, as Docker
    (":80", PortMapping("0.0.0.0", 0, 80, "tcp")),
    ("127.0.0.1::80", PortMapping("127.0.0.1", 0, 80, "tcp")),
    ("8080:80", PortMapping("0.0.0.0", 8080, 80, "tcp")),
    ("8080:80/udp", PortMapping("0.0.0.0", 8080, 80, "udp")),
    ("8080:80/UDP", PortMapping("0.0.0.0", 8080, 80, "udp")),
    ("127.0.0.1:8080:80", PortMapping("127.0.0.1", 8080, 80, "tcp")),
])
def test_port_specs(spec, want):
    assert parse_port(spec) == want


@pytest.mark.parametrize("spec,msg", [
    ("", "invalid port mapping"), ("abc", "invalid port mapping"), ("70000:80", "1 to 65535"),
    ("8080:0", "1 to 65535"), ("0:80", "1 to 65535"), ("8080:80/sctp", "tcp and udp"),
    ("1.2.3:80:80", "host IP"), ("8080:80:90", "invalid port mapping"),
    ("127.0.0.1:80", "invalid port mapping"),             # Docker: IP:PORT is no mapping (IP::PORT is)
    ("[::1]:8081:80", "IPv6"), ("[::]:8081:80", "IPv6"),  # DNAT is to the sandbox's IPv4 address
    ("8000-8010:80", "ranges"), ("8000:80-81", "ranges"), ("-:80", "invalid port mapping"),
    ("224.0.0.1:8080:80", "address of this host"), ("255.255.255.255:8080:80", "address of this host"),
    ("80\n/udp", "invalid port mapping"),
])
def test_bad_port_specs(spec, msg):
    with pytest.raises(NsnetError, match=msg):
        parse_port(spec)


def test_ephemeral_host_ports_never_clash_before_the_kernel_picks_them():
    assert not ports_clash(PortMapping("0.0.0.0", 0, 80), PortMapping("0.0.0.0", 0, 80))


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
    check_name("a" * 63 + "." + "b" * 63, "sandbox")


@pytest.mark.parametrize("name,msg", [
    ("-web", "only"), ("web\n", "only"), ("", "only"), ("we b", "only"), ("web\x00", "only"), ('we"b', "only"),
    ("a" * 64, "at most 63"), ("x." + "a" * 64, "at most 63"), ("a.." + "b", "empty label"), ("web.", "empty label"),
    (".".join(["a" * 60] * 5), "at most 253"),
])
def test_bad_names(name, msg):
    with pytest.raises(NsnetError, match=msg):
        check_name(name, "sandbox")


def test_hostnames():
    for ok in ("web", "web-1", "1web", "a.b-c.d", "a" * 63):
        check_hostname(ok)


@pytest.mark.parametrize("hostname,msg", [
    ("a" * 64, "at most 63"), ("a" * 70, "at most 63"), ("ok\n10.0.0.66 injected", "RFC 1123"),
    ("ok\x00", "RFC 1123"), ("-web", "RFC 1123"), ("web-", "RFC 1123"), ("we_b", "RFC 1123"),
    ("a..b", "RFC 1123"), ("web.", "RFC 1123"), ("we b", "RFC 1123"),
])
def test_bad_hostnames(hostname, msg):
    with pytest.raises(NsnetError, match=msg):
        check_hostname(hostname)


@pytest.mark.parametrize("name", ["br0", "br-lan", "eth0.10", "a_b", "x" * 15])
def test_interface_names(name):
    assert ifname_problem(name) is None


@pytest.mark.parametrize("name,msg", [
    ("", "empty"), ("x" * 16, "at most 15"), ('br"0', "characters"), ("br*", "characters"), ("br/0", "characters"),
    ("br:0", "characters"), ("br 0", "characters"), ("br\x00", "characters"), ("br\n", "characters"),
    ("brü", "characters"), ("all", "reserved"), ("default", "reserved"), ("..", "reserved"),
])
def test_bad_interface_names(name, msg):
    assert msg in ifname_problem(name)


def test_labels_are_one_line_with_a_key():
    check_labels({"team": "web", "a.b/c": ""})
    for bad in ({"": "x"}, {"k": "a\nb"}, {"k\x00": "v"}):
        with pytest.raises(NsnetError):
            check_labels(bad)


@pytest.mark.parametrize("subnet,msg", [
    ("127.0.0.0/8", "loopback"), ("127.0.0.0/24", "loopback"), ("224.0.0.0/4", "multicast"),
    ("239.1.0.0/16", "multicast"), ("169.254.0.0/16", "link-local"), ("0.0.0.0/0", "overlaps"),
    ("0.0.0.0/8", "this network"), ("10.0.0.0/31", "too small"), ("10.0.0.1/32", "too small"),
    ("255.255.255.252/30", "limited broadcast"),
    ("::1/128", "loopback"), ("::/0", "overlaps"), ("ff00::/8", "multicast"), ("fe80::/64", "link-local"),
    ("::ffff:0:0/96", "IPv4-mapped"), ("fd00::/127", "too small"), ("fd00::1/128", "too small"),
])
def test_subnets_the_kernel_gives_another_meaning_or_too_small(subnet, msg):
    with pytest.raises(NsnetError, match=msg):
        subnet_configs([subnet], [], [], {}, ipv6=True)


def test_smallest_subnets_hold_a_gateway_and_a_sandbox():
    subnet_configs(["10.0.0.0/30", "fd00::/126"], [], [], {}, ipv6=True)


@pytest.mark.parametrize("aux,msg", [
    ({"n": "10.1.0.0"}, "network address"), ({"b": "10.1.255.255"}, "broadcast address"),
    ({"n": "fd00:1::"}, "network address"), ({"x\ny": "10.1.0.9"}, "control characters"),
    ({"": "10.1.0.9"}, "give it a name"),
])
def test_aux_addresses_are_host_addresses(aux, msg):
    with pytest.raises(NsnetError, match=msg):
        subnet_configs(["10.1.0.0/16", "fd00:1::/64"], [], [], aux, ipv6=True)
