"""macvlan: each sandbox is a machine of its own on the LAN, with its own MAC (Docker's, from its IPv4).

The kernel never passes frames between a macvlan parent and its own macvlan links, so the host
cannot reach its sandboxes through the parent. `-o host_shim=true` gives the host a macvlan link of
its own on the parent (bridge mode, so it is switched to the sandboxes' links inside the kernel)
with a /32 address and a /32 route to each sandbox: the host's other LAN traffic is left as it was.
"""
from __future__ import annotations

import ipaddress

from ..errors import NsnetError
from ..model import Endpoint, Network, owner_alias
from .lan import PARENT_KEY, LanDriver

MODE_KEY = "macvlan_mode"
SHIM_KEY = "host_shim"
SHIM_AUX = "host_shim"        # the aux-address name under which the shim's address is kept
SHIM_TRIES = 16               # candidates probed from the top of the subnet down


def shim_name_for(network_id: str) -> str:
    return "nsshim-" + network_id[:8]


def shim_wanted(net: Network) -> bool:
    value = (net.options.get(SHIM_KEY) or "false").lower()
    return value not in ("false", "0", "no", "off")


def shim_address(net: Network) -> str | None:
    for cfg in net.subnets:
        if SHIM_AUX in cfg.aux:
            return cfg.aux[SHIM_AUX]
    return None


def shim_candidates(cfg) -> list:
    """Addresses a shim may take, highest first: sandboxes are handed the lowest ones."""
    subnet = ipaddress.ip_network(cfg.subnet)
    taken = {ipaddress.ip_address(a) for a in cfg.aux.values()}
    if cfg.gateway:
        taken.add(ipaddress.ip_address(cfg.gateway))
    out = []
    top = subnet.broadcast_address - (1 if subnet.num_addresses > 2 else 0)
    bottom = subnet.network_address + (1 if subnet.num_addresses > 2 else 0)
    addr = top
    while addr >= bottom and len(out) < SHIM_TRIES:
        if addr not in taken:
            out.append(addr)
        addr -= 1
    return out


class MacvlanDriver(LanDriver):
    name = "macvlan"
    kind = "macvlan"
    mode_key = MODE_KEY
    modes = ("bridge", "private", "vepa", "passthru")
    options = LanDriver.options | {MODE_KEY, SHIM_KEY}

    def validate(self, net: Network) -> None:
        super().validate(net)
        value = net.options.get(SHIM_KEY)
        if value is not None and value.lower() not in ("true", "false", "1", "0", "yes", "no", "on", "off"):
            try:
                ipaddress.IPv4Address(value)
            except ValueError:
                raise NsnetError(f"invalid {SHIM_KEY} {value!r}: use true, false or the IPv4 address the host "
                                 f"should have on the LAN") from None
        if shim_wanted(net) and self.mode(net) != "bridge":
            raise NsnetError(f"{SHIM_KEY} needs macvlan_mode=bridge: in {self.mode(net)} mode the kernel does "
                             f"not pass frames between the host's shim and the sandboxes")

    def plan(self, net: Network, others: list[Network]) -> None:
        super().plan(net, others)
        if shim_wanted(net) and not shim_address(net):
            cfg, addr = self._pick_shim(net)
            cfg.aux[SHIM_AUX] = str(addr)

    def _pick_shim(self, net: Network):
        v4 = [c for c in net.subnets if ipaddress.ip_network(c.subnet).version == 4]
        if not v4:
            raise NsnetError(f"{SHIM_KEY} needs an IPv4 --subnet")
        value = net.options[SHIM_KEY]
        try:
            wanted = ipaddress.IPv4Address(value)
        except ValueError:
            wanted = None
        if wanted is not None:
            cfg = next((c for c in v4 if wanted in ipaddress.ip_network(c.subnet)), None)
            if cfg is None or not shim_allowed(cfg, wanted):
                raise NsnetError(f"{SHIM_KEY} address {wanted} must be a free host address of "
                                 f"{' or '.join(c.subnet for c in v4)}, not its gateway or an aux-address")
            why = self.kernel.taken_on_lan(self.parent(net), str(wanted))
            if why:
                raise NsnetError(f"cannot give the host shim {wanted}: {why}; pick another {SHIM_KEY} address")
            return cfg, wanted
        cfg = v4[0]
        for addr in shim_candidates(cfg):
            if not self.kernel.taken_on_lan(self.parent(net), str(addr)):
                return cfg, addr
        raise NsnetError(f"no free address for the host shim at the top of {cfg.subnet}: give one with "
                         f"-o {SHIM_KEY}=IP")

    def plan_endpoint(self, net: Network, ep: Endpoint) -> None:
        super().plan_endpoint(net, ep)
        if self.mode(net) == "passthru":  # the link takes over the parent, and with it the parent's MAC
            mac = self.kernel.mac_of(self.parent(net))
            if mac is not None:
                ep.mac = mac

    def link_options(self, net: Network, ep: Endpoint) -> dict:
        opts = {"macvlan_mode": self.mode(net)}
        if ep.mac and self.mode(net) != "passthru":  # setting it in passthru would change the parent's
            opts["address"] = ep.mac
        return opts

    # ---- the host shim ---------------------------------------------------------------------------

    def create_network(self, net: Network) -> None:
        super().create_network(net)
        addr = shim_address(net)
        if shim_wanted(net) and addr:
            self.kernel.ensure_shim(shim_name_for(net.id), self.parent(net), addr, alias=owner_alias(net.id))

    def delete_network(self, net: Network) -> None:
        self.kernel.delete_if_alias(shim_name_for(net.id), owner_alias(net.id))
        super().delete_network(net)

    def join(self, net: Network, ep: Endpoint, sandbox, default_route: bool) -> None:
        super().join(net, ep, sandbox, default_route)
        if shim_wanted(net) and ep.ipv4:
            self.kernel.route_to(shim_name_for(net.id), ep.ipv4)

    def leave(self, net: Network, ep: Endpoint, sandbox=None) -> None:
        if shim_wanted(net) and ep.ipv4:
            self.kernel.unroute(shim_name_for(net.id), ep.ipv4)
        super().leave(net, ep, sandbox)

    def kernel_names(self, net: Network) -> set[str]:
        names = super().kernel_names(net)
        if shim_wanted(net):
            names.add(shim_name_for(net.id))
        return names

    def notes(self, net: Network) -> list[str]:
        parent, mode = self.parent(net), self.mode(net)
        out = []
        if shim_wanted(net):
            out.append(f"The host reaches these sandboxes through {shim_name_for(net.id)} ({shim_address(net)}), "
                       f"a bridge-mode macvlan link on {parent} with a route to each sandbox; the sandboxes reach "
                       f"the host at {shim_address(net)}, not at {parent}'s own address.")
        else:
            out.append(f"The host cannot reach these sandboxes through {parent}, nor they the host: the kernel does "
                       f"not pass frames between a macvlan parent and its own macvlan links. Other machines on the "
                       f"LAN reach them directly. Create the network with -o {SHIM_KEY}=true to let the host in.")
        if mode == "private":
            out.append("macvlan_mode=private: the sandboxes of this network cannot reach each other.")
        elif mode == "vepa":
            out.append("macvlan_mode=vepa: sandboxes reach each other only if the LAN switch sends frames back "
                       "out of the port they came in (hairpin / reflective relay).")
        elif mode == "passthru":
            out.append(f"macvlan_mode=passthru: one sandbox at a time, and it takes over {parent}.")
        return out


def shim_allowed(cfg, addr) -> bool:
    """May the shim take `addr`: a host address of cfg's subnet, not its gateway or another aux-address."""
    subnet = ipaddress.ip_network(cfg.subnet)
    if addr not in subnet:
        return False
    if subnet.num_addresses > 2 and addr in (subnet.network_address, subnet.broadcast_address):
        return False
    taken = {ipaddress.ip_address(a) for k, a in cfg.aux.items() if k != SHIM_AUX}
    return addr not in taken and not (cfg.gateway and addr == ipaddress.ip_address(cfg.gateway))


__all__ = ["MacvlanDriver", "PARENT_KEY", "SHIM_KEY", "shim_name_for"]
