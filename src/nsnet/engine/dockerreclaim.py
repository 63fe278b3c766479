"""What nsnet holds for Docker that Docker has forgotten: the decision, from two looks at both sides.

Docker forgets endpoints and addresses when its clean-up cannot reach the plugin: dockerd killed -9 while
nsnet's daemon was down too, both started again; Docker's "Removing stale sandbox" (Leave, DeleteEndpoint,
ReleaseAddress) fails on the refused socket and Docker drops its own records anyway.

Docker's view is its network inspect (`GET /networks/<id>`): `Containers` lists every endpoint libnetwork has
stored on the network, one without a container too (keyed `ep-<id>`), with its addresses; `IPAM.Config`
has the gateway and the `--aux-address`es Docker asked its IPAM driver for. What it means:
- an endpoint of `-d nsnet` (a record here) is Docker's while its network's inspect lists its EndpointID;
- an address of `--ipam-driver nsnet` (on Docker's bridge or on `-d nsnet`) is Docker's while a network whose
  IPAM driver is nsnet and whose subnet is the pool's lists it as a container's address, an aux address or
  its gateway. Docker never tells its IPAM driver the network or endpoint an address is for (ReleaseAddress
  names the pool and the address only), so the pool's subnet is the link.
A network Docker does not show, or a pool no Docker network shows, is left alone: Docker may be creating or
removing it, and its records go with its DeleteNetwork/ReleasePool.

Docker's view lags nsnet's records in two windows, both inside one call path of Docker's: a start (libnetwork
asks RequestAddress, then the driver's CreateEndpoint, and stores the endpoint only then) and a removal (it
deletes its record first, then calls DeleteEndpoint and ReleaseAddress). A plugin call Docker began while
nsnet was down is retried for at most 15 s (pkg/plugins: 1+2+4+8 s of backoff within 30 s) and then given up.
So a record is reclaimed only when it is the same record in nsnet at both looks (an address given again
between them is another record: its serial differs) and absent from Docker's view at both, the looks GAP
apart with GAP past those 15 s: a start or a removal under way at the first look has ended by the second.
"""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

GAP = 20.0   # s between the two looks: past Docker's 15 s of retrying a plugin call, and its ms-long windows


@dataclass
class Held:
    """What nsnet holds for Docker at one moment."""
    endpoints: dict[str, str] = field(default_factory=dict)        # endpoint id -> Docker's network id
    addresses: dict[tuple, int] = field(default_factory=dict)      # (pool id, address) -> the serial of its grant
    subnets: dict[str, str] = field(default_factory=dict)          # pool id -> its subnet


@dataclass
class DockerNet:
    endpoints: set = field(default_factory=set)    # endpoint ids libnetwork stored
    addresses: set = field(default_factory=set)    # the addresses it holds from its IPAM driver
    nsnet_ipam: bool = False
    subnets: set = field(default_factory=set)


def view_of(inspects: list[dict]) -> dict[str, DockerNet]:
    """Docker's networks (their inspect documents) as what each holds, by Docker's network id."""
    out = {}
    for doc in inspects:
        ipam = doc.get("IPAM") or {}
        net = DockerNet(nsnet_ipam=ipam.get("Driver") == "nsnet")
        for cfg in ipam.get("Config") or []:
            subnet = _network(cfg.get("Subnet"))
            if subnet:
                net.subnets.add(subnet)
            net.addresses.update(_address(a) for a in [cfg.get("Gateway"), *(cfg.get("AuxiliaryAddresses") or {}).values()])
        for ep in (doc.get("Containers") or {}).values():
            net.endpoints.add(ep.get("EndpointID"))
            net.addresses.update(_address(ep.get(k)) for k in ("IPv4Address", "IPv6Address"))
        net.addresses.discard(None)
        net.endpoints.discard(None)
        out[doc.get("Id")] = net
    return out


def forgotten(held: tuple[Held, Held], views: tuple[dict, dict]) -> tuple[list[str], list[tuple]]:
    """The endpoints and the (pool id, address)es Docker has forgotten: held alike at both looks, used in
    neither of Docker's views, in networks Docker shows at both."""
    first, second = held
    endpoints = sorted(eid for eid, net in first.endpoints.items()
                       if second.endpoints.get(eid) == net and all(_unused_endpoint(v, net, eid) for v in views))
    addresses = sorted(key for key, serial in first.addresses.items()
                       if second.addresses.get(key) == serial
                       and all(_unused_address(v, first.subnets.get(key[0]), key[1]) for v in views))
    return endpoints, addresses


def _unused_endpoint(view: dict, docker_net: str, eid: str) -> bool:
    net = view.get(docker_net)
    return net is not None and eid not in net.endpoints


def _unused_address(view: dict, subnet: str | None, address: str) -> bool:
    nets = [n for n in view.values() if n.nsnet_ipam and subnet in n.subnets]
    return bool(nets) and not any(address in n.addresses for n in nets)


def _network(text) -> str | None:
    try:
        return str(ipaddress.ip_network(text, strict=False))
    except (TypeError, ValueError):
        return None


def _address(text) -> str | None:
    """An address as nsnet's records write it (Docker's may carry a prefix length)."""
    try:
        return str(ipaddress.ip_interface(text).ip)
    except (TypeError, ValueError):
        return None
