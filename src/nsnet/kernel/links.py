"""Idempotent netlink verbs on links, addresses and routes (pyroute2 IPRoute passed in).

Every verb takes an open IPRoute so that callers reuse one socket per namespace.
"""
from __future__ import annotations

import ipaddress
import os

from pyroute2.netlink.exceptions import NetlinkError

ENODEV = 19
EEXIST = 17


def index_of(ipr, ifname: str) -> int | None:
    found = ipr.link_lookup(ifname=ifname)
    return found[0] if found else None


def ensure_bridge(ipr, name: str, *, mtu: int | None, addresses: list[str], alias: str) -> int:
    """Create (or reuse) bridge `name`, give it `addresses` ("ip/prefixlen") and bring it up."""
    idx = index_of(ipr, name)
    if idx is None:
        kw = {"mtu": mtu} if mtu else {}
        ipr.link("add", ifname=name, kind="bridge", **kw)
        idx = index_of(ipr, name)
        ipr.link("set", index=idx, ifalias=alias)
    for cidr in addresses:
        add_address(ipr, idx, cidr)
    ipr.link("set", index=idx, state="up")
    return idx


def add_address(ipr, index: int, cidr: str) -> None:
    iface = ipaddress.ip_interface(cidr)
    kw = {}
    if iface.version == 6:
        kw["flags"] = 0x02  # IFA_F_NODAD: the address is ours alone; waiting for DAD delays the first packet
    try:
        ipr.addr("add", index=index, address=str(iface.ip), prefixlen=iface.network.prefixlen, **kw)
    except NetlinkError as e:
        if e.code != EEXIST:
            raise


def delete_link(ipr, ifname: str) -> bool:
    """Remove a link if it is there; True when something was removed."""
    idx = index_of(ipr, ifname)
    if idx is None:
        return False
    try:
        ipr.link("del", index=idx)
    except NetlinkError as e:
        if e.code != ENODEV:
            raise
        return False
    return True


def attach_veth(ipr, host_name: str, bridge_index: int, netns_fd: int, peer_name: str,
                *, mac: str | None, mtu: int | None) -> tuple[int | None, int | None]:
    """One netlink request: the veth pair, its peer created directly inside the sandbox, enslaved and up.
    Returns the host end's index and the peer's index inside the sandbox (its IFLA_LINK), read with one
    `get`. (Not from NLM_F_ECHO: pyroute2 then returns the echo and drops a later error, e.g. EXFULL
    from a full bridge, after which the kernel has already removed the link.)"""
    peer = {"ifname": peer_name, "net_ns_fd": netns_fd}
    kw = {}
    if mac:
        peer["address"] = mac
    if mtu:
        peer["mtu"] = mtu
        kw["mtu"] = mtu
    ipr.link("add", ifname=host_name, kind="veth", peer=peer, master=bridge_index, state="up", **kw)
    (msg,) = ipr.link("get", ifname=host_name)
    return msg["index"], msg.get("link")


def configure_inside(sipr, iface: str | int, *, addresses: list[str], gateway4: str | None,
                     gateway6: str | None) -> None:
    """Inside the sandbox: addresses on `iface` (a name, or an index when known), link up, default
    routes via the gateways."""
    idx = iface if isinstance(iface, int) else index_of(sipr, iface)
    for cidr in addresses:
        add_address(sipr, idx, cidr)
    sipr.link("set", index=idx, state="up")
    if gateway4:
        sipr.route("replace", dst="0.0.0.0/0", gateway=gateway4)
    if gateway6:
        sipr.route("replace", dst="::/0", gateway=gateway6, family=10)


def loopback_up(sipr) -> None:
    sipr.link("set", index=1, state="up")


def link_names(ipr) -> dict[str, dict]:
    """name -> {index, kind, alias, master} of every link (used by reconcile, never on the attach path)."""
    out = {}
    for link in ipr.get_links():
        info = link.get("IFLA_LINKINFO")
        out[link.get("ifname")] = {
            "index": link["index"],
            "kind": info.get("IFLA_INFO_KIND") if info else None,
            "alias": link.get("ifalias"),
            "master": link.get("master"),
        }
    return out


def open_netns_fd(pid: int) -> int:
    return os.open(f"/proc/{pid}/ns/net", os.O_RDONLY)
