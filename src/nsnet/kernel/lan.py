"""Netlink verbs for sandboxes on the LAN: macvlan/ipvlan links, 802.1Q parents, the host shim."""
from __future__ import annotations

import ipaddress
import socket

from pyroute2.netlink.exceptions import NetlinkError

from . import links

ESRCH, ENOENT = 3, 2


def add_in_netns(ipr, kind: str, ifname: str, parent_index: int, netns_fd: int, *, mtu: int | None,
                 **attrs) -> None:
    """One request: a `kind` link on the parent, created directly inside the sandbox's namespace."""
    kw = dict(attrs)
    if mtu:
        kw["mtu"] = mtu
    ipr.link("add", ifname=ifname, kind=kind, link=parent_index, net_ns_fd=netns_fd, **kw)


def ensure_vlan(ipr, chan, name: str, base: str, vid: int, *, alias: str) -> int:
    """802.1Q sub-interface `name` (VLAN `vid` on `base`), marked as ours and up."""
    idx = links.index_of(ipr, name)
    if idx is None:
        idx = links.add_marked(ipr, chan, name, alias, kind="vlan", link=links.index_of(ipr, base), vlan_id=vid)
    ipr.link("set", index=idx, state="up")
    return idx


def delete_if_alias(ipr, chan, name: str, alias: str) -> bool:
    """Remove link `name` only when it carries `alias` (so a link someone else made always stays)."""
    if links.attr_of(ipr, name, "ifalias") != alias:
        return False
    return links.delete_link(chan, name)


def ensure_shim(ipr, chan, name: str, parent: str, address: str, *, alias: str) -> int:
    """A bridge-mode macvlan on the parent in the host's namespace, holding `address`/32, up.

    /32 and no subnet route: the host keeps reaching the rest of the LAN through the parent, as before.
    """
    idx = links.index_of(ipr, name)
    if idx is None:
        idx = links.add_marked(ipr, chan, name, alias, kind="macvlan", link=links.index_of(ipr, parent),
                               macvlan_mode="bridge")
    links.add_address(chan, idx, f"{address}/32")
    ipr.link("set", index=idx, state="up")
    return idx


def host_route(ipr, op: str, ifname: str, cidr: str) -> None:
    """Add ("replace") or remove ("del") the host's route to one sandbox address through `ifname`."""
    idx = links.index_of(ipr, ifname)
    if idx is None:
        return
    dst = ipaddress.ip_interface(cidr).ip
    try:
        ipr.route(op, dst=f"{dst}/{dst.max_prefixlen}", oif=idx)
    except NetlinkError as e:
        if not (op == "del" and e.code in (ESRCH, ENOENT)):
            raise


def default_routes_on(ipr, index: int, *, ipv4: bool, ipv6: bool) -> None:
    """Default routes straight out of link `index`, no gateway (ipvlan l3: the host routes for the sandbox)."""
    if ipv4:
        ipr.route("replace", dst="0.0.0.0/0", oif=index)
    if ipv6:
        ipr.route("replace", dst="::/0", oif=index, family=socket.AF_INET6)
