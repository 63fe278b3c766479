"""What `nsnet doctor` reads from the kernel: links, routes, neighbours and the evidence of the
calling thread's network namespace, plus the kernel's own route lookup. Read only: it changes nothing.
"""
from __future__ import annotations

import ipaddress

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from ..facts import DockerNetwork, HostFacts, KernelAnswer, Link, Neighbour, Route
from . import links as links_mod
from . import probe

_ROUTE_ERRORS = {22: "a blackhole or prohibit route drops it", 101: "network is unreachable",
                 113: "an unreachable route rejects it"}


def _links(ipr, infos: dict[str, dict]) -> dict[str, Link]:
    addrs: dict[int, list] = {}
    for m in ipr.get_addr():
        local = m.get("local") or m.get("address")
        if local:
            addrs.setdefault(m["index"], []).append(ipaddress.ip_interface(f"{local}/{m['prefixlen']}"))
    return {name: Link(name, info["kind"], info["alias"], tuple(addrs.get(info["index"], ())))
            for name, info in infos.items()}


def _routes(ipr, names: dict[int, str]) -> list[Route]:
    out = []
    for m in ipr.route("dump"):
        if m["type"] in probe._RTN_SKIP:
            continue  # the host's own local/broadcast/multicast entries
        dst = m.get("dst") or ("0.0.0.0" if m["family"] == 2 else "::")
        net = ipaddress.ip_network(f"{dst}/{m['dst_len']}", strict=False)
        if net.prefixlen and not probe._net_counts(net):
            continue  # loopback, link-local, multicast: never a collision
        gw = m.get("gateway")
        out.append(Route(net, names.get(m.get("oif")), ipaddress.ip_address(gw) if gw else None,
                                m.get("table") or m["table"], m["type"], m.get("priority") or 0))
    return out


def _neighbours(ipr, names: dict[int, str]) -> list[Neighbour]:
    out = []
    for m in ipr.get_neighbours():
        state, dst = probe._NUD_KEEP.get(m["state"]), m.get("dst")
        if state and dst:
            out.append(Neighbour(ipaddress.ip_address(dst), names.get(m["ifindex"], "?"), state))
    return out


def read(*, reserved=(), nsnet_subnets=(), route_to=None, resolv_conf="/etc/resolv.conf") -> tuple[HostFacts, KernelAnswer | None]:
    """The host as it is, and the kernel's route to `route_to` when given. `nsnet_subnets` are
    (network name, subnet) pairs of nsnet's networks (from the daemon when one answers)."""
    with IPRoute() as ipr:
        infos = links_mod.link_names(ipr)
        names = {info["index"]: name for name, info in infos.items()}
        evidence = probe.gather(ipr, reserved=reserved, nsnet_subnets=nsnet_subnets, docker_socket=None,
                                resolv_conf=resolv_conf)
        listing = probe.docker_list(probe.docker_socket())  # asked once: for the evidence and to name Docker's bridges
        evidence += probe.docker_evidence(listing)
        facts = HostFacts(_links(ipr, infos), _routes(ipr, names), _neighbours(ipr, names), evidence,
                          [DockerNetwork(name, nid, tuple(subnets)) for name, nid, subnets in listing])
        return facts, (route_get(ipr, route_to) if route_to is not None else None)


def route_get(ipr, ip) -> KernelAnswer:
    """The kernel's answer for `ip` (RTM_GETROUTE, as `ip route get`)."""
    try:
        m = ipr.route("get", dst=str(ip))[0]
    except NetlinkError as e:
        return KernelAnswer(error=_ROUTE_ERRORS.get(e.code, str(e)))
    oif = m.get("oif")
    dev = next((l.get("ifname") for l in ipr.get_links(oif)), None) if oif else None
    gw, src = m.get("gateway"), m.get("prefsrc")
    return KernelAnswer(dev, ipaddress.ip_address(gw) if gw else None, ipaddress.ip_address(src) if src else None)
