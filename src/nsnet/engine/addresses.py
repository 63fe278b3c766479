"""Address allocation per network, behind the Allocator protocol: `LocalAllocator` (this host's, over
ipam.AddressPool) today; a cluster-wide allocator (addresses taken in the shared store) implements the same
calls when hosts share networks."""
from __future__ import annotations

import ipaddress
import logging
from typing import Callable, Iterable, Protocol

from ..errors import NsnetError
from ..ipam.addresses import AddressPool, mac_for
from ..model import Endpoint, Network, NetworkRequest, SubnetConfig

log = logging.getLogger("nsnet.engine")

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
# Why an address is not free outside nsnet's records (a driver's address_taken), or None.
TakenElsewhere = Callable[[Address], "str | None"]


class Allocator(Protocol):
    def check(self, net: Network, addr: Address) -> None:
        """Raise (one line) unless `addr` could be given to a new endpoint of `net`; takes nothing."""

    def reserve(self, net: Network, addr: Address) -> None:
        """Take `addr` (a static --ip) on `net`; raise when it is not free."""

    def allocate(self, net: Network, cfg: SubnetConfig, taken_elsewhere: TakenElsewhere) -> Address:
        """Take the lowest free address of subnet `cfg` that `taken_elsewhere` does not refuse."""

    def release(self, net: Network | None, addrs: Iterable[Address]) -> None:
        """Give addresses back (`net` None: the network is gone already)."""

    def mark_taken(self, net: Network, addrs: Iterable[Address]) -> None:
        """Addresses the store says are held (e.g. by another node whose records have not arrived yet)."""

    def forget(self, net: Network) -> None:
        """The network is gone: drop what is kept for it."""


def subnet_for(net: Network, addr) -> SubnetConfig | None:
    for cfg in net.subnets:
        if addr in ipaddress.ip_network(cfg.subnet):
            return cfg
    return None


def endpoint_addresses(ep: Endpoint) -> list[Address]:
    return [ipaddress.ip_interface(a).ip for a in (ep.ipv4, ep.ipv6) if a]


class LocalAllocator:
    """One host's addresses: per network the set taken (derived from its endpoints at first use) and one
    AddressPool per subnet, kept, so that an attach does not index the set again."""

    def __init__(self, endpoints_of: Callable[[Network], Iterable[Endpoint]]):
        self._endpoints_of = endpoints_of
        self._used: dict[str, set] = {}                 # network id -> addresses taken
        self._pools: dict[tuple, AddressPool] = {}      # (network id, subnet) -> its pool over _used

    def used(self, net: Network) -> set:
        used = self._used.get(net.id)
        if used is None:
            used = self._used[net.id] = {a for ep in self._endpoints_of(net) for a in endpoint_addresses(ep)}
        return used

    def _pool(self, net: Network, cfg: SubnetConfig) -> AddressPool:
        key = (net.id, cfg.subnet)
        pool = self._pools.get(key)
        if pool is None:
            pool = self._pools[key] = AddressPool(cfg.subnet, gateway=cfg.gateway, ip_range=cfg.ip_range,
                                                  aux=cfg.aux)
        return pool

    def _subnet(self, net: Network, addr) -> SubnetConfig:
        cfg = subnet_for(net, addr)
        if cfg is None:
            raise NsnetError(f"{addr} is not in any subnet of network {net.name}")
        return cfg

    def check(self, net: Network, addr) -> None:
        pool = self._pool(net, self._subnet(net, addr))
        pool.reserve(addr, self.used(net))  # raises when taken, reserved or outside
        pool.release(addr)

    def reserve(self, net: Network, addr) -> None:
        used = self.used(net)
        self._pool(net, self._subnet(net, addr)).reserve(addr, used)
        used.add(addr)

    def allocate(self, net: Network, cfg: SubnetConfig, taken_elsewhere: TakenElsewhere):
        """The lowest free address; on a LAN, the lowest one nobody there answers for (ARP)."""
        used, pool = self.used(net), self._pool(net, cfg)
        skipped = []
        try:
            while True:
                addr = pool.allocate(used)
                why = taken_elsewhere(addr)
                if not why:
                    used.add(addr)
                    return addr
                log.info("network %s: skipping %s: %s", net.name, addr, why)
                skipped.append(addr)
        finally:
            for a in skipped:  # asked again next time: the machine may have left the LAN
                pool.release(a)

    def release(self, net: Network | None, addrs: Iterable) -> None:
        for ip in addrs:
            if net is None:
                continue
            used = self._used.get(net.id)
            if used is not None:
                used.discard(ip)
            cfg = subnet_for(net, ip)
            if cfg is not None and (net.id, cfg.subnet) in self._pools:
                self._pools[(net.id, cfg.subnet)].release(ip)

    def mark_taken(self, net: Network, addrs: Iterable) -> None:
        self.used(net).update(addrs)   # allocate skips them (AddressPool marks what it finds in `used`)

    def forget(self, net: Network) -> None:
        self._used.pop(net.id, None)
        for key in [k for k in self._pools if k[0] == net.id]:
            del self._pools[key]


def address(alloc: Allocator, net: Network, ep: Endpoint, req: NetworkRequest,
            taken_elsewhere: TakenElsewhere) -> None:
    """Give `ep` one address per family on `net` (the static ones asked for, else allocated), and its
    gateways and MAC. All or nothing: when one cannot be had, those taken are given back."""
    taken = []
    try:
        for cfg in net.subnets:
            subnet = ipaddress.ip_network(cfg.subnet)
            static = req.ip if subnet.version == 4 else req.ip6
            if static:
                addr = ipaddress.ip_address(static)
                if addr not in subnet:
                    continue
                alloc.reserve(net, addr)
            else:
                addr = alloc.allocate(net, cfg, taken_elsewhere)
            taken.append(addr)
            if subnet.version == 4 and ep.ipv4 is None:
                ep.ipv4, ep.gateway4 = f"{addr}/{subnet.prefixlen}", cfg.gateway
                ep.mac = mac_for(addr)
            elif subnet.version == 6 and ep.ipv6 is None:
                ep.ipv6, ep.gateway6 = f"{addr}/{subnet.prefixlen}", cfg.gateway
    except BaseException:
        alloc.release(net, taken)
        raise
