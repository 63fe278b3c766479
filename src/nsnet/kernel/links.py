"""Idempotent netlink verbs on links, addresses and routes.

Every verb takes an open socket so that callers reuse one per namespace: a pyroute2 IPRoute (`ipr`)
for the cold paths, or the hot path's rtnl.Channel (`chan`) for attach and detach.
"""
from __future__ import annotations

import ipaddress
import os

from pyroute2.netlink.exceptions import NetlinkError

from . import rtnl

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


def delete_link(chan, ifname: str) -> bool:
    """Remove a link if it is there (one request, by name); True when something was removed."""
    (reply,) = chan.run(rtnl.del_link(ifname))
    if reply.error == ENODEV:
        return False
    reply.check()
    return True


def index_in(chan, ifname: str) -> int | None:
    (reply,) = chan.run(rtnl.get_link(ifname))
    if reply.error == ENODEV:
        return None
    reply.check()
    return rtnl.link_indexes(reply.data)[0]


def attach_veth(chan, host_name: str, bridge_index: int, netns_fd: int, peer_name: str,
                *, mac: str | None, mtu: int | None) -> tuple[int, int]:
    """One sendmsg: the veth pair, its peer created directly inside the sandbox, enslaved and up, and
    a lookup of the new link. Returns the host end's index and the peer's index inside the sandbox
    (its IFLA_LINK). Raises the creation's error (e.g. EXFULL from a full bridge) first."""
    _, got = chan.call(rtnl.new_veth(host_name, master=bridge_index, peer_name=peer_name, peer_netns_fd=netns_fd,
                                     peer_mac=mac, mtu=mtu),
                       rtnl.get_link(host_name))
    return rtnl.link_indexes(got.data)


def configure_inside(chan, index: int, *, addresses: list[str], gateway4: str | None,
                     gateway6: str | None) -> None:
    """Inside the sandbox, in one sendmsg: addresses on link `index` (one already there is fine), the
    link up, default routes via the gateways."""
    requests = [rtnl.new_address(index, cidr) for cidr in addresses]
    requests.append(rtnl.link_up(index))
    requests += [rtnl.default_route(gw) for gw in (gateway4, gateway6) if gw]
    for i, reply in enumerate(chan.run(*requests)):
        if not (i < len(addresses) and reply.error == EEXIST):
            reply.check()


def loopback_up(chan) -> None:
    chan.call(rtnl.link_up(1))


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
