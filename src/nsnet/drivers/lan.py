"""What macvlan and ipvlan share: sandboxes with addresses on the LAN behind a parent interface of
the host. No bridge of ours, no NAT, no firewall rules: the subnet and its router are the LAN's.

Each endpoint is a link of the parent created straight inside the sandbox's namespace (one netlink
request). A parent like `eth0.10` that does not exist is VLAN 10 on eth0: nsnet creates it, marks
it as its own (alias), and removes it with the network. Only one network may use a parent, as
Docker has it, so "no network uses it any more" is "its network was removed".
"""
from __future__ import annotations

import ipaddress
import re

from ..errors import Conflict, NsnetError
from ..kernel import features
from ..model import Endpoint, Network, owner_alias
from ..requests import ifname_problem
from .base import MTU_KEY, Driver

PARENT_KEY = "parent"
VLAN_RE = re.compile(r"^(?P<base>.+)\.(?P<vid>\d{1,4})$")


def split_vlan(name: str) -> tuple[str, int] | None:
    """("eth0", 10) for "eth0.10"; None when the name is no VLAN sub-interface name."""
    m = VLAN_RE.match(name)
    if not m or not 1 <= int(m["vid"]) <= 4094:
        return None
    return m["base"], int(m["vid"])


class LanDriver(Driver):
    kind = ""                          # the link kind: macvlan | ipvlan
    mode_key = ""
    modes: tuple[str, ...] = ()
    options = frozenset({PARENT_KEY, MTU_KEY})

    # ---- planning (nothing built) ----------------------------------------------------------------

    def mode(self, net: Network) -> str:
        return net.options.get(self.mode_key) or self.modes[0]

    def parent(self, net: Network) -> str:
        return net.options[PARENT_KEY]

    def on_lan(self, net: Network) -> bool:
        return True

    def validate(self, net: Network) -> None:
        super().validate(net)
        features.require(self.kind, f"{self.name} networks")
        mode = self.mode(net)
        if mode not in self.modes:
            raise NsnetError(f"invalid {self.mode_key} {mode!r}: use one of {', '.join(self.modes)}")
        if net.internal:
            raise NsnetError(f"--internal is not supported on {self.name} networks: they are the LAN itself; "
                             f"use a bridge network with --internal")
        parent = net.options.get(PARENT_KEY)
        if not parent:
            raise NsnetError(f"{self.name} networks need a parent interface: add -o parent=IF, the host's "
                             f"interface on the LAN (for example -o parent=eth0)")
        why = ifname_problem(parent)
        if why:
            raise NsnetError(f"invalid parent: {why}")
        present = self.kernel.links()
        if parent == "lo" or (parent in present and present[parent]["index"] == 1):
            raise NsnetError("the loopback interface cannot be a parent: pick the host's interface on the LAN")
        if parent in present:
            return
        vlan = split_vlan(parent)
        if vlan is None:
            raise NsnetError(f"parent interface {parent} does not exist in this host's network namespace: "
                             f"pick one that `ip link` lists")
        base, vid = vlan
        if base not in present:
            raise NsnetError(f"parent {parent} would be VLAN {vid} on {base}, but {base} does not exist in this "
                             f"host's network namespace: pick one that `ip link` lists")
        features.require("vlan", f"the 802.1Q sub-interface {parent} (VLAN {vid} on {base}) for the parent")

    def plan(self, net: Network, others: list[Network]) -> None:
        parent = self.parent(net)
        for o in others:
            if o.driver in ("macvlan", "ipvlan") and o.options.get(PARENT_KEY) == parent:
                raise Conflict(f"network {o.name} is already using parent interface {parent}: one macvlan/ipvlan "
                               f"network per parent (use an 802.1Q parent such as {parent}.10 for another)")
        if self.on_lan(net) and not net.subnets:
            raise NsnetError(f"{self.name} networks use the LAN's own addresses: give its subnet with --subnet and "
                             f"its router with --gateway{self._hint(parent)}")

    def _hint(self, parent: str) -> str:
        """An example from the parent's own IPv4 address, when it has one."""
        for cidr in self.kernel.ipv4_addresses(parent):
            return f" (the LAN of {parent} looks like --subnet {ipaddress.ip_interface(cidr).network})"
        return ""

    def address_taken(self, net: Network, addr) -> str | None:
        if addr.version != 4 or not self.on_lan(net):
            return None
        return self.kernel.taken_on_lan(self.parent(net), str(addr))

    def plan_endpoint(self, net: Network, ep: Endpoint) -> None:
        ep.host_ifname = None  # the endpoint's only link lives in the sandbox: nothing of it on the host

    # ---- building --------------------------------------------------------------------------------

    def create_network(self, net: Network) -> None:
        parent = self.parent(net)
        if self.kernel.index(parent) is None and split_vlan(parent):
            base, vid = split_vlan(parent)
            self.kernel.require("vlan", f"the 802.1Q sub-interface {parent}")
            self.kernel.ensure_vlan(parent, base, vid, alias=owner_alias(net.id))

    def delete_network(self, net: Network) -> None:
        # Only a sub-interface nsnet made for this network (its alias says so) goes; a user's stays.
        self.kernel.delete_if_alias(self.parent(net), owner_alias(net.id))

    def link_options(self, net: Network, ep: Endpoint) -> dict:
        """kind-specific attributes of the endpoint's link (mode, MAC)."""
        return {}

    def join(self, net: Network, ep: Endpoint, sandbox, default_route: bool) -> None:
        parent = self.kernel.index(self.parent(net))
        if parent is None:
            raise NsnetError(f"parent interface {self.parent(net)} of network {net.name} is gone from this host")
        self.kernel.add_in_netns(self.kind, ep.ifname, parent, sandbox, mtu=self.mtu(net),
                                 **self.link_options(net, ep))
        self.configure(net, ep, sandbox, default_route)

    def configure(self, net: Network, ep: Endpoint, sandbox, default_route: bool) -> None:
        sandbox.configure(sandbox.index(ep.ifname), addresses=[a for a in (ep.ipv4, ep.ipv6) if a],
                          gateway4=ep.gateway4 if default_route else None,
                          gateway6=ep.gateway6 if default_route else None, ipv6=net.ipv6)

    def leave(self, net: Network, ep: Endpoint, sandbox=None) -> None:
        # A dying sandbox takes its link along; a disconnect from a live one must remove it.
        if sandbox is not None:
            sandbox.delete_link(ep.ifname)

    def kernel_names(self, net: Network) -> set[str]:
        parent = self.parent(net)
        return {parent} if split_vlan(parent) and self._vlan_is_ours(net) else set()

    def _vlan_is_ours(self, net: Network) -> bool:
        info = self.kernel.links().get(self.parent(net))
        return info is None or info.get("alias") == owner_alias(net.id)

    def notes(self, net: Network) -> list[str]:
        return []
