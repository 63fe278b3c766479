"""macvlan, ipvlan and the flat (adopted) bridge: option checks, planning and rendering, with a fake kernel."""
import ipaddress
import struct

import pytest

from nsnet.drivers import driver_class
from nsnet.drivers.bridge import BridgeDriver
from nsnet.drivers.ipvlan import IpvlanDriver
from nsnet.drivers.lan import split_vlan
from nsnet.drivers.macvlan import MacvlanDriver, shim_candidates, shim_name_for
from nsnet.errors import Conflict, KernelFeatureMissing, NsnetError
from nsnet.ipam.addresses import AddressPool
from nsnet.kernel import arp, features, links
from nsnet.model import Endpoint, Network, SubnetConfig

PARENT_MAC = "aa:bb:cc:00:00:01"


class FakeIpr:
    def __init__(self, links, addrs):
        self._links, self._addrs = links, addrs

    def link_lookup(self, ifname):
        return [self._links[ifname]["index"]] if ifname in self._links else []

    def get_links(self, index):
        return [{"address": PARENT_MAC, "ifalias": None}]

    def get_addr(self, index=None, family=None):
        return [a for a in self._addrs if index is None or a["index"] == index]


class FakeKernel:
    """The kernel face's read verbs, over the real kernel/ functions and a fake pyroute2."""

    def __init__(self, links=None, addrs=()):
        self._links = links if links is not None else {
            "lo": {"index": 1, "kind": None, "alias": None},
            "lan0": {"index": 2, "kind": "veth", "alias": None},
        }
        self.ipr = FakeIpr(self._links, list(addrs))

    def links(self):
        return self._links

    def index(self, name):
        return links.index_of(self.ipr, name)

    def mac_of(self, name):
        return links.attr_of(self.ipr, name, "address")

    def ipv4_addresses(self, name):
        return links.addresses_of(self.ipr, name, 2)

    def taken_on_lan(self, ifname, address):
        return arp.taken_on_lan(self.ipr, ifname, address)


@pytest.fixture(autouse=True)
def kernel_like_this_one(monkeypatch):
    """macvlan yes, ipvlan and 802.1Q no: the machines these tests run on."""
    monkeypatch.setattr(features, "_cache", {"macvlan": True, "ipvlan": False, "vlan": False})
    monkeypatch.setattr(arp, "who_has", lambda ifname, ip, timeout=0.2: None)


def net(driver="macvlan", subnets=("192.168.50.0/24",), **options):
    n = Network(id="ab" * 32, name="lan", driver=driver, created="now", options=dict(options))
    n.subnets = [SubnetConfig(subnet=s, gateway=str(ipaddress.ip_network(s)[1])) for s in subnets]
    return n


def one_line(e) -> str:
    msg = str(e.value)
    assert "\n" not in msg
    return msg


# ---- option checks -----------------------------------------------------------------------------

def test_registry_knows_the_lan_drivers():
    assert driver_class("macvlan") is MacvlanDriver and driver_class("ipvlan") is IpvlanDriver


def test_macvlan_needs_a_parent_that_exists():
    d = MacvlanDriver(FakeKernel())
    with pytest.raises(NsnetError) as e:
        d.validate(net())
    assert "-o parent=IF" in one_line(e)
    with pytest.raises(NsnetError) as e:
        d.validate(net(parent="eth9"))
    assert "parent interface eth9 does not exist" in one_line(e)
    with pytest.raises(NsnetError) as e:
        d.validate(net(parent="lo"))
    assert "loopback" in one_line(e)
    d.validate(net(parent="lan0"))


def test_modes_options_and_internal_are_checked():
    d = MacvlanDriver(FakeKernel())
    with pytest.raises(NsnetError) as e:
        d.validate(net(parent="lan0", macvlan_mode="l2"))
    assert "bridge, private, vepa, passthru" in one_line(e)
    with pytest.raises(NsnetError) as e:
        d.validate(net(parent="lan0", ipvlan_mode="l2"))
    assert "unknown option 'ipvlan_mode'" in one_line(e)
    n = net(parent="lan0")
    n.internal = True
    with pytest.raises(NsnetError):
        d.validate(n)
    for mode in ("bridge", "private", "vepa", "passthru"):
        d.validate(net(parent="lan0", macvlan_mode=mode))


def test_ipvlan_on_a_kernel_without_it_names_the_missing_option():
    with pytest.raises(KernelFeatureMissing) as e:
        IpvlanDriver(FakeKernel()).validate(net("ipvlan", parent="lan0"))
    assert "CONFIG_IPVLAN" in one_line(e)
    assert e.value.status == 501


def test_ipvlan_where_the_kernel_has_it(monkeypatch):
    monkeypatch.setitem(features._cache, "ipvlan", True)
    d = IpvlanDriver(FakeKernel())
    d.validate(net("ipvlan", parent="lan0", ipvlan_mode="l3s"))
    with pytest.raises(NsnetError):
        d.validate(net("ipvlan", parent="lan0", ipvlan_mode="bridge"))
    l3 = net("ipvlan", parent="lan0", ipvlan_mode="l3")
    assert not d.on_lan(l3) and d.on_lan(net("ipvlan", parent="lan0"))
    ep = Endpoint("e", l3.id, "s", "eth0", "x", None, "10.9.0.2/24", None, "10.9.0.1", None)
    d.plan_endpoint(l3, ep)
    assert ep.gateway4 is None and ep.mac == PARENT_MAC and ep.host_ifname is None
    assert d.link_options(l3, ep) == {"ipvlan_mode": 1}


def test_vlan_parent_needs_8021q_and_an_existing_base():
    d = MacvlanDriver(FakeKernel())
    assert split_vlan("lan0.10") == ("lan0", 10) and split_vlan("lan0") is None and split_vlan("a.5000") is None
    with pytest.raises(KernelFeatureMissing) as e:
        d.validate(net(parent="lan0.10"))
    assert "CONFIG_VLAN_8021Q" in one_line(e)
    with pytest.raises(NsnetError) as e:
        d.validate(net(parent="eth7.10"))
    assert "eth7 does not exist" in one_line(e)


# ---- planning ----------------------------------------------------------------------------------

def test_one_lan_network_per_parent_and_a_subnet_is_required():
    k = FakeKernel(addrs=[{"index": 2, "local": "192.168.50.2", "prefixlen": 24}])
    d = MacvlanDriver(k)
    other = net(parent="lan0")
    other.name = "first"
    with pytest.raises(Conflict) as e:
        d.plan(net(parent="lan0"), [other])
    assert "first is already using parent interface lan0" in one_line(e)
    with pytest.raises(NsnetError) as e:
        d.plan(net(parent="lan0", subnets=()), [])
    assert "--subnet 192.168.50.0/24" in one_line(e)  # the hint comes from the parent's own address


def test_shim_takes_the_highest_free_address_and_keeps_it_as_aux(monkeypatch):
    answering = {"192.168.50.254": "02:00:00:00:00:09"}
    monkeypatch.setattr(arp, "who_has", lambda ifname, ip, timeout=0.2: answering.get(ip))
    d = MacvlanDriver(FakeKernel())
    n = net(parent="lan0", host_shim="true")
    n.subnets[0].aux["printer"] = "192.168.50.253"
    d.plan(n, [])
    assert n.subnets[0].aux["host_shim"] == "192.168.50.252"
    pool = AddressPool(n.subnets[0].subnet, gateway=n.subnets[0].gateway, aux=n.subnets[0].aux)
    with pytest.raises(NsnetError):
        pool.reserve("192.168.50.252")
    assert shim_name_for(n.id) in d.kernel_names(n) and len(shim_name_for(n.id)) <= 15
    assert [str(a) for a in shim_candidates(SubnetConfig("10.0.0.0/30", "10.0.0.2"))] == ["10.0.0.1"]


def test_shim_address_given_checked_and_bridge_mode_only():
    d = MacvlanDriver(FakeKernel())
    n = net(parent="lan0", host_shim="192.168.50.200")
    d.validate(n)
    d.plan(n, [])
    assert n.subnets[0].aux["host_shim"] == "192.168.50.200"
    with pytest.raises(NsnetError) as e:
        d.plan(net(parent="lan0", host_shim="192.168.50.1"), [])
    assert "gateway" in one_line(e)
    with pytest.raises(NsnetError):
        d.validate(net(parent="lan0", host_shim="maybe"))
    with pytest.raises(NsnetError) as e:
        d.validate(net(parent="lan0", host_shim="true", macvlan_mode="private"))
    assert "macvlan_mode=bridge" in one_line(e)


def test_addresses_are_checked_on_the_lan(monkeypatch):
    k = FakeKernel(addrs=[{"index": 2, "local": "192.168.50.2", "prefixlen": 24, "label": "lan0"}])
    answering = {"192.168.50.20": "02:00:00:00:00:14"}
    monkeypatch.setattr(arp, "who_has", lambda ifname, ip, timeout=0.2: answering.get(ip))
    d = MacvlanDriver(k)
    n = net(parent="lan0")
    ip = ipaddress.ip_address
    why = d.address_taken(n, ip("192.168.50.20"))
    assert "answers ARP" in why and "02:00:00:00:00:14" in why
    assert "own address" in d.address_taken(n, ip("192.168.50.2"))
    assert d.address_taken(n, ip("192.168.50.30")) is None
    assert d.address_taken(n, ip("fd00::5")) is None


def test_macvlan_link_mac_and_notes():
    d = MacvlanDriver(FakeKernel())
    ep = Endpoint("e", "n", "s", "eth0", "nsv123", "02:42:c0:a8:32:05", "192.168.50.5/24", None, "192.168.50.1", None)
    n = net(parent="lan0")
    d.plan_endpoint(n, ep)
    assert ep.host_ifname is None
    assert d.link_options(n, ep) == {"macvlan_mode": "bridge", "address": "02:42:c0:a8:32:05"}
    p = net(parent="lan0", macvlan_mode="passthru")
    d.plan_endpoint(p, ep)
    assert ep.mac == PARENT_MAC and "address" not in d.link_options(p, ep)
    assert "host_shim=true" in " ".join(d.notes(n)) and "cannot reach" in " ".join(d.notes(n))
    s = net(parent="lan0", host_shim="true")
    s.subnets[0].aux["host_shim"] = "192.168.50.254"
    assert "192.168.50.254" in " ".join(d.notes(s))


def test_arp_probe_and_reply_frames():
    src = bytes.fromhex("020000000001")
    frame = arp.probe_frame(src, "192.168.50.9")
    assert frame[:6] == b"\xff" * 6 and frame[12:14] == b"\x08\x06"
    assert frame[28:32] == b"\0\0\0\0" and frame[38:42] == bytes([192, 168, 50, 9])  # RFC 5227: sender 0.0.0.0
    them = bytes.fromhex("0242c0a83209")
    reply = src + them + b"\x08\x06" + struct.pack("!HHBBH6s4s6s4s", 1, 0x800, 6, 4, 2, them,
                                                   bytes([192, 168, 50, 9]), src, b"\0" * 4) + b"\0" * 18
    assert arp.reply_from(reply, "192.168.50.9") == "02:42:c0:a8:32:09"
    assert arp.reply_from(reply, "192.168.50.10") is None
    assert arp.reply_from(frame, "192.168.50.9") is None  # our own request is no answer


def test_missing_feature_message_is_cached_and_one_line(monkeypatch):
    calls = []
    monkeypatch.setattr(features, "_cache", {})
    monkeypatch.setattr(features, "_probe", lambda kind: calls.append(kind) or False)
    assert features.missing("ipvlan") == "CONFIG_IPVLAN"
    assert features.missing("ipvlan") == "CONFIG_IPVLAN"
    assert calls == ["ipvlan"]


# ---- the flat (adopted) bridge ------------------------------------------------------------------

def test_adopting_only_a_bridge_nobody_made_for_nsnet():
    d = BridgeDriver(FakeKernel())
    n = net("bridge")
    n.bridge = "br0"
    with pytest.raises(Conflict) as e:
        d.adopt(n, {"kind": "veth", "alias": None})
    assert "not a bridge" in one_line(e)
    with pytest.raises(Conflict):
        d.adopt(n, {"kind": "bridge", "alias": "nsnet network " + "cd" * 32})
    d.adopt(n, {"kind": "bridge", "alias": None})
    assert n.adopted


def test_adopted_bridge_has_no_rules_no_ownership_and_needs_a_subnet():
    d = BridgeDriver(FakeKernel())
    n = net("bridge")
    n.bridge, n.adopted = "br0", True
    assert d.firewall(n) is None and d.kernel_names(n) == set() and d.on_lan(n)
    assert "br0" in " ".join(d.notes(n))
    with pytest.raises(NsnetError):
        d.plan(_adopted(subnets=()), [])
    with pytest.raises(NsnetError):
        d.plan(_adopted(internal=True), [])
    with pytest.raises(NsnetError):
        d.plan(_adopted(**{"com.docker.network.bridge.enable_ip_masquerade": "true"}), [])
    d.plan(_adopted(), [])
    own = net("bridge")
    own.bridge = "nsbr-x"
    assert d.firewall(own) is not None and d.kernel_names(own) == {"nsbr-x"} and not d.on_lan(own)


def _adopted(subnets=("192.168.50.0/24",), internal=False, **options):
    n = net("bridge", subnets=subnets, **options)
    n.bridge, n.adopted, n.internal = "br0", True, internal
    return n


def test_ip_range_bounds_and_aux_addresses_are_never_handed_out():
    pool = AddressPool("192.168.2.0/24", gateway="192.168.2.1", ip_range="192.168.2.128/29",
                       aux={"ip1": "192.168.2.129", "ip2": "192.168.2.131"})
    used = set()
    got = []
    while True:
        try:
            a = pool.allocate(used)
        except NsnetError:
            break
        used.add(a)
        got.append(str(a))
    assert got == ["192.168.2.128", "192.168.2.130", "192.168.2.132", "192.168.2.133", "192.168.2.134",
                   "192.168.2.135"]
