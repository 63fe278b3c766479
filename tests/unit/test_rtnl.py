"""The hot path's hand-packed netlink messages, checked byte for byte against pyroute2's encoder."""
import struct

import pytest
from pyroute2.netlink.rtnl.ifaddrmsg import ifaddrmsg
from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg
from pyroute2.netlink.rtnl.rtmsg import rtmsg

from nsnet.kernel import rtnl


def pyroute2_bytes(msg, fields: dict, attrs: list) -> bytes:
    """The body pyroute2 encodes for the same message (header stripped)."""
    for k, v in fields.items():
        msg[k] = v
    msg["attrs"] = attrs
    msg.encode()
    return bytes(msg.data)[16:]


def test_veth_matches_pyroute2():
    req = rtnl.new_veth("nsv1234", peer_name="eth1", peer_netns_fd=42, peer_mac="02:42:ac:11:00:02", mtu=1400)
    peer = {"attrs": [("IFLA_IFNAME", "eth1"), ("IFLA_NET_NS_FD", 42), ("IFLA_ADDRESS", "02:42:ac:11:00:02"),
                      ("IFLA_MTU", 1400)]}
    want = pyroute2_bytes(ifinfmsg(), {}, [
        ("IFLA_IFNAME", "nsv1234"), ("IFLA_MTU", 1400),
        ("IFLA_LINKINFO", {"attrs": [("IFLA_INFO_KIND", "veth"),
                                     ("IFLA_INFO_DATA", {"attrs": [("VETH_INFO_PEER", peer)]})]})])
    assert req.type == rtnl.RTM_NEWLINK
    assert req.flags & rtnl.NLM_F_EXCL and req.flags & rtnl.NLM_F_CREATE
    assert req.body == want


def test_veth_without_mac_or_mtu():
    req = rtnl.new_veth("nsv1", peer_name="eth0", peer_netns_fd=9)
    peer = {"attrs": [("IFLA_IFNAME", "eth0"), ("IFLA_NET_NS_FD", 9)]}
    want = pyroute2_bytes(ifinfmsg(), {}, [
        ("IFLA_IFNAME", "nsv1"),
        ("IFLA_LINKINFO", {"attrs": [("IFLA_INFO_KIND", "veth"),
                                     ("IFLA_INFO_DATA", {"attrs": [("VETH_INFO_PEER", peer)]})]})])
    assert req.body == want


def test_enslave_and_isolate_match_pyroute2():
    assert rtnl.enslave(12, 7).body == pyroute2_bytes(ifinfmsg(), {"index": 12}, [("IFLA_MASTER", 7)])
    want = pyroute2_bytes(ifinfmsg(), {"index": 12}, [
        ("IFLA_LINKINFO", {"attrs": [("IFLA_INFO_SLAVE_KIND", "bridge"),
                                     ("IFLA_INFO_SLAVE_DATA", {"attrs": [("IFLA_BRPORT_ISOLATED", 1)]})]})])
    assert rtnl.isolate_port(12).body == want
    assert rtnl.get_link_by_index(12).body == pyroute2_bytes(ifinfmsg(), {"index": 12}, [])


def test_ipv4_address_has_broadcast():
    req = rtnl.new_address(5, "172.18.0.2/16")
    want = pyroute2_bytes(ifaddrmsg(), {"family": 2, "prefixlen": 16, "index": 5}, [
        ("IFA_LOCAL", "172.18.0.2"), ("IFA_ADDRESS", "172.18.0.2"), ("IFA_BROADCAST", "172.18.255.255")])
    assert req.body == want


def test_point_to_point_ipv4_has_no_broadcast():
    assert struct.pack("=HH", 8, rtnl.IFA_BROADCAST) not in rtnl.new_address(5, "10.0.0.1/31").body


def test_ipv6_address_skips_dad():
    req = rtnl.new_address(5, "fd00:1::2/64")
    want = pyroute2_bytes(ifaddrmsg(), {"family": 10, "prefixlen": 64, "index": 5, "flags": rtnl.IFA_F_NODAD},
                          [("IFA_ADDRESS", "fd00:1::2")])
    assert req.body == want


@pytest.mark.parametrize("gw,family", [("172.18.0.1", 2), ("fd00:1::1", 10)])
def test_default_route(gw, family):
    req = rtnl.default_route(gw)
    want = pyroute2_bytes(rtmsg(), {"family": family, "table": 254, "proto": 3, "scope": 0, "type": 1},
                          [("RTA_GATEWAY", gw)])
    assert req.body == want
    assert req.flags & rtnl.NLM_F_REPLACE


def test_link_indexes_reads_peer():
    msg = ifinfmsg()
    msg["index"] = 31
    msg["attrs"] = [("IFLA_IFNAME", "nsv1"), ("IFLA_MTU", 1500), ("IFLA_LINK", 4)]
    msg.encode()
    assert rtnl.link_indexes(bytes(msg.data)) == (31, 4)
    msg = ifinfmsg()
    msg["index"] = 8
    msg["attrs"] = [("IFLA_IFNAME", "br0")]
    msg.encode()
    assert rtnl.link_indexes(bytes(msg.data)) == (8, None)


def test_no_link_local_matches_pyroute2():
    req = rtnl.no_link_local(name="nsv1")
    want = pyroute2_bytes(ifinfmsg(), {}, [
        ("IFLA_IFNAME", "nsv1"), ("IFLA_AF_SPEC", {"attrs": [("AF_INET6", {"attrs": [("IFLA_INET6_ADDR_GEN_MODE", 1)]})]})])
    assert req.body == want
    assert rtnl.no_link_local(index=4).body[4:8] == struct.pack("=i", 4)
