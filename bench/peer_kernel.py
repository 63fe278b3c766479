"""The kernel alone: nsnet's own attach messages sent from one process, with no daemon, store, IPAM or
resolver around them. A reference built by hand in the same run, like figure 7's bare bridge: what the
kernel's work for a new port costs on a bridge of that many ports, i.e. the floor under nsnet's figure."""
from __future__ import annotations

import os

from common import Harness, sh, timed_ms

from nsnet.kernel import links, rtnl
from nsnet.kernel.netns import entered


class KernelOnly:
    def __init__(self, h: Harness, tag: str, subnet_prefix: str = "10.87"):
        self.h = h
        self.tag = tag
        self.prefix = subnet_prefix
        self.host = h.netns(f"{tag}-h")
        sh(["ip", "link", "add", "br0", "type", "bridge", "mcast_snooping", "0"], self.host)
        sh(["ip", "addr", "add", f"{subnet_prefix}.0.1/16", "dev", "br0"], self.host)
        sh(["ip", "link", "set", "br0", "up"], self.host)
        with entered(f"/run/netns/{self.host}"):
            self.chan = rtnl.Channel()
        h.defer(self.chan.close)
        self.bridge = links.index_in(self.chan, "br0")
        self.sandboxes: dict[int, tuple[int, rtnl.Channel]] = {}  # id -> (netns fd, channel inside)

    def prepare(self, ids: list[int]) -> None:
        """A namespace and a netlink channel per sandbox (not timed)."""
        todo = [i for i in ids if i not in self.sandboxes]
        for i, ns in zip(todo, self.h.netns_many([f"{self.tag}-s{i}" for i in todo])):
            fd = os.open(f"/run/netns/{ns}", os.O_RDONLY)
            with entered(f"/run/netns/{ns}"):
                chan = rtnl.Channel()
            self.sandboxes[i] = (fd, chan)
            self.h.defer(chan.close)
            self.h.defer(os.close, fd)

    def _attach(self, i: int) -> None:
        fd, inside = self.sandboxes[i]
        o2, o3 = divmod(i, 250)
        with entered(f"/run/netns/{self.host}"):  # the port's sysctl is the host's
            host_index, peer = links.new_veth(self.chan, f"kv{i}", fd, "eth0", mac=None, mtu=None)
            links.configure_inside(inside, peer, addresses=[f"{self.prefix}.{o2}.{o3 + 2}/16"],
                                   gateway4=f"{self.prefix}.0.1", gateway6=None, ipv6=False)
            links.plug_in(self.chan, host_index, self.bridge, isolated=False)

    def setup_ms(self, i: int) -> float:
        return timed_ms(self._attach, i)

    def teardown_ms(self, i: int) -> float:
        return timed_ms(links.delete_link, self.chan, f"kv{i}")
