"""The bridge driver, built as Docker builds it: a Linux bridge per network holding the gateway
address, a veth pair per endpoint, NAT and isolation in nsnet's nftables table."""
from __future__ import annotations

import ipaddress

from ..errors import Conflict, KernelError, NsnetError
from ..firewall import FwNetwork, FwPort, unwritable
from ..model import Endpoint, Network, PortMapping, owner_alias
from ..requests import ifname_problem
from . import fabric, flat
from .base import MTU_KEY, SIZE_KEY, Driver, DriverContext

NAME_KEY = "com.docker.network.bridge.name"
ICC_KEY = "com.docker.network.bridge.enable_icc"
MASQ_KEY = "com.docker.network.bridge.enable_ip_masquerade"
HOST_IP_KEY = "com.docker.network.bridge.host_binding_ipv4"
DEFAULT_KEY = "com.docker.network.bridge.default_bridge"
IPV6_KEY = "com.docker.network.bridge.enable_ipv6"
BR_MAX_PORTS = 1023  # ports a Linux bridge takes (BR_MAX_PORTS is 1024 with port 0 reserved); one more: EXFULL
EXFULL = 54
EINVAL = 22
ENODEV = 19
VETH_PREFIX = "nsv"   # an endpoint's host end: nsv + the endpoint ID's first 12 hex digits
DEFAULT_BRIDGE = "nsnet0"


def bridge_name_for(network_id: str) -> str:
    return "nsbr-" + network_id[:10]


class BridgeDriver(Driver):
    name = "bridge"
    options = frozenset({NAME_KEY, ICC_KEY, MASQ_KEY, HOST_IP_KEY, DEFAULT_KEY, MTU_KEY, SIZE_KEY,
                         IPV6_KEY})
    link_prefix = VETH_PREFIX

    def __init__(self, kernel, ctx: DriverContext | None = None):
        super().__init__(kernel, ctx)
        self._fabrics: dict[str, fabric.Fabric] = {}   # network id -> its bridges, loaded once

    def builtin(self) -> dict:
        """Docker's default bridge network (its subnet is taken from the pools when 172.17/16 is in use)."""
        return {"name": "bridge", "bridge": DEFAULT_BRIDGE, "subnet": "172.17.0.0/16",
                "options": {DEFAULT_KEY: "true", ICC_KEY: "true", MASQ_KEY: "true", HOST_IP_KEY: "0.0.0.0",
                            NAME_KEY: DEFAULT_BRIDGE}}

    def validate(self, net: Network) -> None:
        super().validate(net)
        name = net.options.get(NAME_KEY)
        if name is not None:
            # nftables must be able to name it too: a few valid interface names are its keywords.
            why = ifname_problem(name) or (f"nftables cannot name {name!r}: {unwritable(name)}" if unwritable(name) else None)
            if why:
                raise NsnetError(f"invalid bridge name: {why}")
        for key in (ICC_KEY, MASQ_KEY, IPV6_KEY, DEFAULT_KEY):
            v = net.options.get(key)
            if v is not None and v.lower() not in ("true", "false", "1", "0"):
                raise NsnetError(f"invalid value {v!r} for {key}: use true or false")
        host_ip = net.options.get(HOST_IP_KEY)
        if host_ip is not None:
            try:
                ipaddress.IPv4Address(host_ip)
            except ValueError:
                raise NsnetError(f"invalid {HOST_IP_KEY} {host_ip!r}: give an IPv4 address") from None

    # An adopted (flat) bridge is the LAN's, not ours: see flat.py.
    def adopt(self, net: Network, link: dict) -> None:
        flat.adopt(net, link)

    def on_lan(self, net: Network) -> bool:
        return net.adopted

    def claim(self, net: Network, others: list[Network]) -> None:
        net.bridge = net.options.get(NAME_KEY) or bridge_name_for(net.id)
        if net.bridge in {n.bridge for n in others}:
            raise Conflict(f"bridge {net.bridge} is already used by another nsnet network")
        link = self.kernel.links().get(net.bridge)
        if link is not None:  # a bridge nsnet did not make is adopted (a flat LAN bridge); anything else refused
            self.adopt(net, link)

    def plan(self, net: Network, others: list[Network]) -> None:
        if net.adopted:
            flat.plan(net)

    def plan_endpoint(self, net: Network, ep: Endpoint) -> None:
        ep.host_ifname = VETH_PREFIX + ep.id[:12]

    def address_taken(self, net: Network, addr) -> str | None:
        return flat.address_taken(self.kernel, net, addr) if net.adopted else None

    def notes(self, net: Network) -> list[str]:
        return flat.notes(net) if net.adopted else []

    def create_network(self, net: Network) -> None:
        if net.adopted:
            return
        kernel = self.kernel
        addrs = []
        for s in net.subnets:
            if s.gateway:
                addrs.append(f"{s.gateway}/{ipaddress.ip_network(s.subnet).prefixlen}")
        index, created = kernel.ensure_bridge(net.bridge, mtu=self.mtu(net), addresses=addrs,
                                              alias=owner_alias(net.id))
        # A new bridge of a new network has no ports and no leaves: the first join need not read them
        # from the kernel. A bridge rebuilt under sandboxes or leaves has them read back, and plugged
        # back in, by whoever rebuilt it (_fabric on an attach, mend at the daemon's start).
        self._fabrics.pop(net.id, None)
        if created and not self.ctx.ports_of(net) and kernel.index(fabric.leaf_name(net.id, 1)) is None:
            self._fabrics[net.id] = fabric.Fabric(fabric.Bridge(net.bridge, index))
        kernel.sysctl("net.ipv4.ip_forward", "1")
        # 127.0.0.1:PORT published ports are DNATed out of this bridge: the kernel must route them.
        kernel.link_sysctl("ipv4", net.bridge, "route_localnet", "1")
        if net.ipv6:
            kernel.sysctl("net.ipv6.conf.all.forwarding", "1")
        else:  # as its ports and its sandboxes' links: an IPv4-only network carries no IPv6 at all
            kernel.no_ipv6(net.bridge)

    def delete_network(self, net: Network) -> None:
        fab = self._fabrics.pop(net.id, None)
        if not net.adopted:
            # Its leaves as this daemon knows them, or else as the kernel holds them (one link dump).
            leaves = fab.leaves if fab is not None else fabric.leaves_in(self.kernel.links(), net.id)
            fabric.remove_leaves(self.kernel, net.id, leaves)
            self.kernel.delete_link(net.bridge)

    def join(self, net: Network, ep: Endpoint, sandbox, default_route: bool) -> None:
        kernel = self.kernel
        isolated = not net.flag(ICC_KEY, True)
        new_leaf = None
        try:
            fab, bridge, new_leaf = self._bridge_with_room(net)
            host_index, peer_index = kernel.new_veth(ep.host_ifname, sandbox, ep.ifname, mac=ep.mac,
                                                     mtu=self.mtu(net))
            self.ctx.crashpoint("join.after-veth")
            addrs = [a for a in (ep.ipv4, ep.ipv6) if a]
            sandbox.configure(peer_index, addresses=addrs,
                              gateway4=ep.gateway4 if default_route else None,
                              gateway6=ep.gateway6 if default_route else None, ipv6=net.ipv6)
            self.ctx.crashpoint("join.after-inside")
            try:
                kernel.plug_in(host_index, bridge.index, isolated=isolated)
                fab.took(ep.host_ifname, bridge)
            except KernelError as e:
                if e.code not in (ENODEV, EINVAL):  # EINVAL: a master index that is no longer there
                    raise
                # A bridge went away behind our back. Reading the network back from the kernel rebuilds
                # it, and plugs back every port of the network that is on no bridge: this one too.
                self._fabrics.pop(net.id, None)
                self._fabric(net)
            sandbox.ready(peer_index)
        except BaseException as e:
            if new_leaf is not None:  # built for this port alone: it goes with the failed join
                self._remove_leaf(net, new_leaf)
            if isinstance(e, KernelError) and e.code == EXFULL:
                raise NsnetError(f"network {net.name} is full: its Linux bridge {net.bridge} already has "
                                 f"{BR_MAX_PORTS} ports, the kernel's limit; put more sandboxes on another network") from None
            raise

    def _bridge_with_room(self, net: Network) -> tuple[fabric.Fabric, fabric.Bridge, int | None]:
        """The bridge a new port goes on: the network's own while it has room, else a leaf (a new one
        when all are full; its number is returned too). An adopted bridge is the LAN's: it never gets leaves."""
        fab = self._fabric(net)
        bridge = fab.root if net.adopted else fab.with_room()
        if bridge is not None:
            return fab, bridge, None
        k = fab.next_leaf_number()
        bridge = fabric.build_leaf(self.kernel, net.id, k, fab.root, mtu=self.mtu(net),
                                   isolated=not net.flag(ICC_KEY, True))
        fab.took(fabric.uplink_names(net.id, k)[0], fab.root)
        fab.leaves[k] = bridge
        return fab, bridge, k

    def _remove_leaf(self, net: Network, k: int) -> None:
        fabric.remove_leaves(self.kernel, net.id, [k])
        fab = self._fabrics.get(net.id)  # read again: a join that found its bridge gone reloaded it
        if fab is not None:
            fab.released(fabric.uplink_names(net.id, k)[0])
            fab.leaves.pop(k, None)

    def _fabric(self, net: Network) -> fabric.Fabric:
        """The network's bridges and their ports, read from the kernel once per daemon (a dump of all
        links, never on the attach path after the first)."""
        fab = self._fabrics.get(net.id)
        if fab is None:
            linkmap = self.kernel.links()
            if net.bridge not in linkmap:
                if net.adopted:
                    raise NsnetError(f"bridge {net.bridge}, which network {net.name} uses, is gone from this host")
                self.create_network(net)  # deleted behind our back: rebuild it rather than fail
                return self._fabric(net)
            fab, _ = self._load(net, linkmap)
        return fab

    def mend(self, net: Network, linkmap: dict[str, dict]) -> list[str]:
        if net.bridge not in linkmap:
            return []
        _, plugged = self._load(net, linkmap)
        return [f"{port} was on no bridge; plugged back" for port in plugged]

    def _load(self, net: Network, linkmap: dict[str, dict]) -> tuple[fabric.Fabric, list[str]]:
        """Read the fabric from `linkmap`; mend what was deleted behind our back: uplinks, and sandbox
        ports on none of its bridges (theirs was rebuilt, or was a leaf that is gone)."""
        fab = self._fabrics[net.id] = fabric.load(linkmap, net.id, net.bridge)
        isolated = not net.flag(ICC_KEY, True)
        fabric.mend_uplinks(self.kernel, linkmap, net.id, fab, isolated=isolated)
        plugged = []
        for port in self.ctx.ports_of(net):
            if port in linkmap and port not in fab.port_of:
                _, bridge, _ = self._bridge_with_room(net)
                self.kernel.plug_in(linkmap[port]["index"], bridge.index, isolated=isolated)
                fab.took(port, bridge)
                plugged.append(port)
        return fab, plugged

    def leave(self, net: Network, ep: Endpoint, sandbox=None) -> None:
        if ep.host_ifname:
            self.kernel.delete_link(ep.host_ifname)
            fab = self._fabrics.get(net.id)
            if fab is not None:
                fab.released(ep.host_ifname)

    def firewall(self, net: Network) -> FwNetwork | None:
        if net.adopted:  # out of the isolation set: its sandboxes and the LAN must reach each other
            return None
        return FwNetwork(
            bridge=net.bridge,
            subnets=[s.subnet for s in net.subnets],
            internal=net.internal,
            icc=net.flag(ICC_KEY, True),
            masquerade=net.flag(MASQ_KEY, True),
            gateways=[s.gateway for s in net.subnets if s.gateway],
            leaves=fabric.leaf_glob(net.id),
        )

    def published(self, net: Network, ep: Endpoint, ports: list[PortMapping]) -> list[FwPort] | None:
        """DNAT from the host's ports to the endpoint's IPv4 address, hairpin through the bridge."""
        if not ep.ipv4:
            return None
        default_ip = net.option(HOST_IP_KEY, "0.0.0.0")
        return [FwPort(p.host_ip if p.host_ip not in ("0.0.0.0", "") else default_ip, p.host_port, p.proto,
                       ep.ipv4.split("/")[0], p.port, net.bridge) for p in ports]

    def shown_options(self, net: Network) -> dict[str, str]:
        return {NAME_KEY: net.bridge}

    def kernel_names(self, net: Network) -> set[str]:
        return set() if net.adopted else {net.bridge}
