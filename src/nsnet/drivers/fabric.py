"""The bridges of one bridge network: its own bridge, and leaf bridges once it holds many sandboxes.

The kernel's work to add a port to a Linux bridge grows with the ports the bridge already has: br_add_if
walks all of them (port number, adjacency list, promiscuity, features, MTU, STP port states). Measured on
a 2-core VM, an attach costs +0.05 ms at 128 ports and +0.8 ms at 950. So the network's bridge takes
its first PORTS_PER_BRIDGE ports itself; past that, sandboxes go on leaf bridges of at most as many
ports, each joined to the network's bridge by a veth uplink. A leaf is layer 2 only (no address, no
IPv6, no ARP answers, nothing tracked on it under br_netfilter): the gateway, routing and the firewall
stay on the network's bridge. With ICC off the uplinks are isolated ports of the network's bridge, as
the sandboxes' ports are on every bridge, so no two sandboxes reach each other whichever bridges they
are on. The cost: frames between a leaf's sandbox and anything off that leaf cross one more veth pair
and bridge. And a network is no longer capped at the 1,023 ports of one bridge.

Names: leaf k of network ID is nsl<ID[:8]>-<k>; its uplink is the veth pair nsu<ID[:8]>-<k> (on the
network's bridge) / nsd<ID[:8]>-<k> (on the leaf). Each carries the network's alias, so reconcile and
doctor know whose they are.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field

from ..model import owner_alias

# Ports per bridge. An environment knob so that tests can build leaves without a hundred sandboxes.
PORTS_PER_BRIDGE = max(2, int(os.environ.get("NSNET_PORTS_PER_BRIDGE", "128")))


LEAF, UP, DOWN = "nsl", "nsu", "nsd"   # name prefixes: a leaf, its uplink's end on the network's bridge, on the leaf


def leaf_name(net_id: str, k: int) -> str:
    return f"{LEAF}{net_id[:8]}-{k}"


def uplink_names(net_id: str, k: int) -> tuple[str, str]:
    """The uplink veth pair of leaf k: (the end on the network's bridge, the end on the leaf)."""
    return f"{UP}{net_id[:8]}-{k}", f"{DOWN}{net_id[:8]}-{k}"


def leaf_glob(net_id: str) -> str:
    """An nftables interface-name pattern for all leaves of a network."""
    return f"{LEAF}{net_id[:8]}-*"


def _numbered(linkmap: dict[str, dict], prefix: str, net_id: str, kind: str) -> dict[int, tuple[str, dict]]:
    """Number k -> (name, link) of the links of network `net_id` named prefix<id8>-<k>, of `kind`."""
    pattern = re.compile(re.escape(f"{prefix}{net_id[:8]}-") + r"(\d+)$")
    found = {}
    for name, info in linkmap.items():
        m = pattern.match(name)
        if m and info["kind"] == kind and info["alias"] == owner_alias(net_id):
            found[int(m.group(1))] = (name, info)
    return found


@dataclass
class Bridge:
    name: str
    index: int
    ports: int = 0     # ports in use, uplinks included


@dataclass
class Fabric:
    """A network's bridges, filled in this order: its own (`root`), then its leaves by number."""
    root: Bridge
    leaves: dict[int, Bridge] = field(default_factory=dict)   # leaf number -> leaf, in the order built
    port_of: dict[str, Bridge] = field(default_factory=dict)  # port (host end of a veth) -> its bridge

    def with_room(self) -> Bridge | None:
        if self.root.ports < PORTS_PER_BRIDGE:
            return self.root
        return next((b for b in self.leaves.values() if b.ports < PORTS_PER_BRIDGE), None)

    def took(self, port: str, bridge: Bridge) -> None:
        bridge.ports += 1
        self.port_of[port] = bridge

    def released(self, port: str) -> None:
        bridge = self.port_of.pop(port, None)
        if bridge is not None:
            bridge.ports -= 1

    def next_leaf_number(self) -> int:
        return max(self.leaves, default=0) + 1


def leaves_in(linkmap: dict[str, dict], net_id: str) -> dict[int, str]:
    """Leaf number -> leaf name, of the leaf bridges of network `net_id` in a link_names() map."""
    return {k: name for k, (name, _) in _numbered(linkmap, LEAF, net_id, "bridge").items()}


def load(linkmap: dict[str, dict], net_id: str, root: str) -> Fabric:
    """The fabric as the kernel holds it (after a restart): bridges, and the ports on each of them."""
    fab = Fabric(Bridge(root, linkmap[root]["index"]))
    for k, name in sorted(leaves_in(linkmap, net_id).items()):
        fab.leaves[k] = Bridge(name, linkmap[name]["index"])
    by_index = {b.index: b for b in (fab.root, *fab.leaves.values())}
    for name, info in linkmap.items():
        bridge = by_index.get(info["master"])
        if bridge is not None:
            fab.took(name, bridge)
    return fab


def mend_uplinks(kernel, linkmap: dict[str, dict], net_id: str, fab: Fabric, *, isolated: bool) -> None:
    """Plug back the uplinks of leaves whose network bridge was rebuilt, and remove those whose leaf is
    gone (both deleted behind our back)."""
    for k, (name, info) in _numbered(linkmap, UP, net_id, "veth").items():
        if k not in fab.leaves:
            kernel.delete_link(name)   # and its peer
            fab.released(name)
        elif info["master"] != fab.root.index:
            kernel.plug_in(info["index"], fab.root.index, isolated=isolated)
            fab.took(name, fab.root)


def build_leaf(kernel, net_id: str, k: int, root: Bridge, *, mtu: int | None, isolated: bool) -> Bridge:
    """Leaf k and its uplink, plugged into `root` (isolated there when ICC is off). All or nothing."""
    leaf = leaf_name(net_id, k)
    up, down = uplink_names(net_id, k)
    try:
        index, _ = kernel.ensure_bridge(leaf, mtu=mtu, addresses=[], alias=owner_alias(net_id))
        kernel.no_ipv6(leaf)
        # The leaf has no address, but Linux answers ARP for any of the host's addresses on any link:
        # the leaf would answer for the gateway and take the sandboxes' routed traffic itself.
        kernel.link_sysctl("ipv4", leaf, "arp_ignore", "8")
        kernel.delete_link(up)  # one left from before a crash; a leaf left is reused as it is
        up_index, down_index = kernel.veth_pair(up, down, mtu=mtu, alias=owner_alias(net_id))
        kernel.plug_in(down_index, index, isolated=False)
        kernel.plug_in(up_index, root.index, isolated=isolated)
    except BaseException:
        kernel.delete_link(up)   # and its peer
        kernel.delete_link(leaf)
        raise
    return Bridge(leaf, index, ports=1)


def remove_leaves(kernel, net_id: str, numbers) -> None:
    for k in numbers:
        kernel.delete_link(uplink_names(net_id, k)[0])   # and its peer
        kernel.delete_link(leaf_name(net_id, k))
