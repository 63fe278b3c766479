"""ipvlan: sandboxes share the parent's MAC (for switches that allow few MACs per port).

l2 (the default) puts them on the LAN's own subnet, like macvlan. In l3 and l3s the host routes
for them: the subnet is one the LAN's router sends to this host, no gateway on the LAN is needed
(the default route is the link itself), and the host-evidence check applies as for a bridge network.
"""
from __future__ import annotations

from ..model import Endpoint, Network
from .lan import LanDriver

MODE_KEY = "ipvlan_mode"
MODE_NUMBERS = {"l2": 0, "l3": 1, "l3s": 2}   # IPVLAN_MODE_* of linux/if_link.h


class IpvlanDriver(LanDriver):
    name = "ipvlan"
    kind = "ipvlan"
    mode_key = MODE_KEY
    modes = ("l2", "l3", "l3s")
    options = LanDriver.options | {MODE_KEY}

    def on_lan(self, net: Network) -> bool:
        return self.mode(net) == "l2"

    def plan_endpoint(self, net: Network, ep: Endpoint) -> None:
        super().plan_endpoint(net, ep)
        ep.mac = self._parent_mac(net)  # every ipvlan link shows the parent's
        if not self.on_lan(net):
            ep.gateway4 = ep.gateway6 = None

    def _parent_mac(self, net: Network) -> str | None:
        return self.kernel.mac_of(self.parent(net))

    def link_options(self, net: Network, ep: Endpoint) -> dict:
        return {"ipvlan_mode": MODE_NUMBERS[self.mode(net)]}

    def configure(self, net: Network, ep: Endpoint, sandbox, default_route: bool) -> None:
        super().configure(net, ep, sandbox, default_route)
        if default_route and not self.on_lan(net):
            sandbox.default_routes_on(sandbox.index(ep.ifname), ipv4=bool(ep.ipv4), ipv6=bool(ep.ipv6))

    def notes(self, net: Network) -> list[str]:
        parent = self.parent(net)
        if self.on_lan(net):
            return [f"The host cannot reach these sandboxes through {parent}, nor they the host: the kernel does "
                    f"not pass packets between an ipvlan parent and its own ipvlan links. Other machines on the "
                    f"LAN reach them directly; all of them show {parent}'s MAC."]
        return [f"ipvlan_mode={self.mode(net)}: this host routes for the sandboxes; the LAN's router needs a route "
                f"to {', '.join(c.subnet for c in net.subnets)} via this host's address on {parent}."]
