"""The hot-path netlink channel against the real kernel, in throwaway namespaces."""
import os

import pytest
from nsnet.errors import KernelError

from nsnet.kernel import rtnl
from nsnet.kernel.netns import entered

from conftest import ns_add, ns_del, sh


@pytest.fixture
def two_ns(tag):
    """A "host" namespace with a bridge, a "sandbox" namespace, a channel in each and the sandbox's fd."""
    a, b = f"nsnt-rta-{tag}", f"nsnt-rtb-{tag}"
    channels, fd = [], None
    try:
        ns_add(a)
        ns_add(b)
        sh(f"ip -n {a} link add br0 type bridge && ip -n {a} addr add 10.9.0.1/24 dev br0 && ip -n {a} link set br0 up")
        for ns in (a, b):
            with entered(f"/run/netns/{ns}"):
                channels.append(rtnl.Channel())
        fd = os.open(f"/run/netns/{b}", os.O_RDONLY)
        yield a, b, channels[0], channels[1], fd
    finally:
        for chan in channels:
            chan.close()
        if fd is not None:
            os.close(fd)
        ns_del(a)
        ns_del(b)


def test_attach_builds_a_working_path(two_ns):
    a, b, host, inside, fd = two_ns
    br = int(sh(f"ip netns exec {a} cat /sys/class/net/br0/ifindex").stdout)
    _, got = host.call(rtnl.new_veth("nsvt1", peer_name="eth7", peer_netns_fd=fd,
                                     peer_mac="02:42:0a:09:00:05", mtu=1400), rtnl.get_link("nsvt1"))
    index, peer = rtnl.link_indexes(got.data)
    assert index == int(sh(f"ip netns exec {a} cat /sys/class/net/nsvt1/ifindex").stdout)
    assert peer == int(sh(f"ip netns exec {b} cat /sys/class/net/eth7/ifindex").stdout)
    inside.call(rtnl.new_address(peer, "10.9.0.5/24"), rtnl.link_up(peer), rtnl.default_route("10.9.0.1"))
    host.call(rtnl.enslave(index, br), rtnl.isolate_port(index), rtnl.link_up(index), rtnl.get_link_by_index(index))
    assert "isolated on" in sh(f"ip -n {a} -d -o link show nsvt1").stdout
    link = sh(f"ip -n {b} -o link show eth7").stdout
    assert "mtu 1400" in link and "02:42:0a:09:00:05" in link
    assert "master br0" in sh(f"ip -n {a} -o link show nsvt1").stdout
    assert "10.9.0.5/24 brd 10.9.0.255" in sh(f"ip -n {b} -o addr show eth7").stdout
    assert "default via 10.9.0.1 dev eth7" in sh(f"ip -n {b} route").stdout
    sh(f"ip netns exec {b} ping -c1 -W2 10.9.0.1")
    host.call(rtnl.del_link("nsvt1"))
    assert "eth7" not in sh(f"ip -n {b} -o link").stdout


def test_errors_come_back_per_request(two_ns):
    a, b, host, inside, fd = two_ns
    host.call(rtnl.new_veth("nsvt2", peer_name="eth1", peer_netns_fd=fd))
    made, lookup = host.run(rtnl.new_veth("nsvt2", peer_name="eth2", peer_netns_fd=fd),
                            rtnl.get_link("nsvt2"))
    assert made.error == 17 and lookup.error == 0 and lookup.data  # EEXIST, and the next message still ran
    with pytest.raises(KernelError) as e:
        host.call(rtnl.del_link("nosuch0"))
    assert e.value.code == 19
    index = int(sh(f"ip netns exec {a} cat /sys/class/net/nsvt2/ifindex").stdout)
    with pytest.raises(KernelError) as e:  # a master that is not there
        host.call(rtnl.enslave(index, 99999))
    assert e.value.code in (19, 22)
    peer = int(sh(f"ip netns exec {b} cat /sys/class/net/eth1/ifindex").stdout)
    inside.call(rtnl.new_address(peer, "fd00:9::5/64"), rtnl.link_up(peer))
    assert "fd00:9::5/64" in sh(f"ip -n {b} -o addr show eth1").stdout
    again = inside.run(rtnl.new_address(peer, "fd00:9::5/64"))[0]
    assert again.error == 17


def test_the_kernel_face_on_a_real_kernel_refuses_with_kernel_error_only(tag):
    """The verbs drivers use, against the kernel: pyroute2's refusals and /proc/sys's come out as KernelError."""
    from nsnet.kernel.host import Kernel

    ns = f"nsnt-kf-{tag}"
    ns_add(ns)
    try:
        with entered(f"/run/netns/{ns}"):
            k = Kernel()
            try:
                idx, created = k.ensure_bridge("br9", mtu=None, addresses=["10.9.9.1/24"], alias="nsnet test")
                assert created and k.alias_of("br9") == "nsnet test" and k.ipv4_addresses("br9") == ["10.9.9.1/24"]
                up, down = k.veth_pair("vu9", "vd9", mtu=1400, alias="nsnet test")
                k.plug_in(up, idx, isolated=True)
                assert k.links()["vu9"]["master"] == idx and k.index("vd9") == down
                with pytest.raises(KernelError) as e:       # refused by pyroute2's call: EEXIST
                    k.veth_pair("vu9", "vd8", mtu=None, alias="nsnet test")
                assert e.value.code == 17
                with pytest.raises(KernelError) as e:       # a /proc/sys file of a link that is not there
                    k.link_sysctl("ipv4", "nosuch0", "arp_ignore", "8")
                assert e.value.code == 2
                assert k.delete_link("vd9") and k.index("vu9") is None   # a veth goes with its peer
                assert not k.delete_if_alias("br9", "someone else's") and k.index("br9") == idx
                assert k.delete_if_alias("br9", "nsnet test") and k.index("br9") is None
            finally:
                k.close()
    finally:
        ns_del(ns)
