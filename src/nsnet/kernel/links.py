"""Idempotent netlink verbs on links, addresses and routes.

Every verb takes an open socket so that callers reuse one per namespace: a pyroute2 IPRoute (`ipr`)
for the cold paths, or the hot path's rtnl.Channel (`chan`) for attach and detach.
"""
from __future__ import annotations

import os

from . import rtnl, sysctl

ENODEV, EEXIST = rtnl.ENODEV, rtnl.EEXIST


def index_of(ipr, ifname: str) -> int | None:
    found = ipr.link_lookup(ifname=ifname)
    return found[0] if found else None


def attr_of(ipr, ifname: str, key: str):
    """One attribute of a link as pyroute2 names it ("address", "ifalias"), or None when there is no link."""
    idx = index_of(ipr, ifname)
    return None if idx is None else ipr.get_links(idx)[0].get(key)


def addresses_of(ipr, ifname: str, family: int) -> list[str]:
    """The addresses ("ip/prefixlen") of a link, of one family."""
    idx = index_of(ipr, ifname)
    if idx is None:
        return []
    return [f"{m.get('local') or m.get('address')}/{m['prefixlen']}" for m in ipr.get_addr(index=idx, family=family)]


def ensure_bridge(ipr, chan, name: str, *, mtu: int | None, addresses: list[str], alias: str) -> tuple[int, bool]:
    """Create (or reuse) bridge `name`, give it `addresses` ("ip/prefixlen") and bring it up. Returns
    its index, and whether it was created (a new bridge has no ports).

    The bridge gets a random MAC address of its own, as Docker's do: otherwise it takes the lowest of
    its ports' and changes as ports come and go (and each port's join walks all ports to find it).

    Multicast snooping is off: with no querier on the bridge (Docker's never have one) the kernel
    floods multicast to every port either way, but with snooping on it also walks every port on each
    port's join and leave, which costs an attach ~1 ms on a 1,000-port bridge."""
    idx = index_of(ipr, name)
    created = idx is None
    if created:
        kw = {"mtu": mtu} if mtu else {}
        idx = add_marked(ipr, chan, name, alias, kind="bridge", address=random_mac(), br_mcast_snooping=0, **kw)
    for cidr in addresses:
        add_address(chan, idx, cidr)
    ipr.link("set", index=idx, state="up")
    return idx, created


def add_marked(ipr, chan, name: str, alias: str, *, maker=None, **link) -> int:
    """Create link `name` marked as nsnet's with `alias`, or leave nothing: the kernel ignores an alias in
    the creating request, and a link left without its mark would be no one's (delete_if_alias spares it).
    `maker`: the socket that makes it when not `ipr`'s (a link made from another namespace into this one)."""
    (maker or ipr).link("add", ifname=name, **link)
    idx = index_of(ipr, name)
    try:
        ipr.link("set", index=idx, ifalias=alias)
    except BaseException:
        delete_link(chan, name)
        raise
    return idx


def random_mac() -> str:
    """A random unicast, locally administered MAC address."""
    b = bytearray(os.urandom(6))
    b[0] = (b[0] & 0xFE) | 0x02
    return ":".join(f"{x:02x}" for x in b)


def add_address(chan, index: int, cidr: str) -> None:
    """Give link `index` an address ("ip/prefixlen"); one already there is fine."""
    (reply,) = chan.run(rtnl.new_address(index, cidr))
    if reply.error != EEXIST:
        reply.check()


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


def new_veth(chan, host_name: str, netns_fd: int, peer_name: str, *, mac: str | None,
             mtu: int | None) -> tuple[int, int]:
    """The veth pair, its peer created directly inside the sandbox, and a lookup of it, in one sendmsg.
    Returns the near end's index and the peer's index inside the sandbox (its IFLA_LINK). The near end
    stays down and off the bridge (see plug_in())."""
    made, got = chan.run(
        rtnl.new_veth(host_name, peer_name=peer_name, peer_netns_fd=netns_fd, peer_mac=mac, mtu=mtu),
        rtnl.get_link(host_name))
    made.check()
    got.check()
    return rtnl.link_indexes(got.data)


def veth_pair(ipr, chan, name: str, peer: str, *, mtu: int | None, alias: str) -> tuple[int, int]:
    """A veth pair in this namespace (a leaf's uplink), both ends marked with `alias` and without IPv6,
    down. Returns both ends' indexes."""
    kw = {"mtu": mtu} if mtu else {}
    ipr.link("add", ifname=name, kind="veth", peer={"ifname": peer, **kw}, **kw)
    indexes = []
    for end in (name, peer):
        ipr.link("set", ifname=end, ifalias=alias)
        no_ipv6(end)
        indexes.append(index_in(chan, end))
    return indexes[0], indexes[1]


def no_ipv6(ifname: str) -> None:
    """No IPv6 at all on a layer-2-only link (a bridge port, a leaf bridge)."""
    try:
        sysctl.write_iface("ipv6", ifname, "disable_ipv6", "1")
    except FileNotFoundError:  # a kernel without IPv6
        pass


def plug_in(chan, index: int, bridge_index: int, *, isolated: bool) -> None:
    """One sendmsg: the host end of a veth whose peer is up joins the bridge (isolated first if asked),
    then goes up. Last, so that the port arrives with carrier: on a bridge of a thousand ports each
    carrier change of a port costs a walk over all of them (STP port-state selection). The closing
    lookup makes the kernel apply the carrier change now (the port forwards when this returns), not
    from its link-watch worker later. Raises the bridge's error first (EXFULL when it is full)."""
    requests = [rtnl.enslave(index, bridge_index)]
    if isolated:
        requests.append(rtnl.isolate_port(index))
    requests += [rtnl.link_up(index), rtnl.get_link_by_index(index)]
    for reply in chan.run(*requests):
        reply.check()


def configure_inside(chan, index: int, *, addresses: list[str], gateway4: str | None,
                     gateway6: str | None, ipv6: bool) -> None:
    """Inside the sandbox, in one sendmsg: addresses on link `index` (one already there is fine), the
    link up, default routes via the gateways. Without `ipv6` the link gets no IPv6 at all, as Docker
    gives a container on an IPv4-only network."""
    requests = [rtnl.new_address(index, cidr) for cidr in addresses]
    quiet = None if ipv6 else rtnl.no_link_local(index=index)
    if quiet:
        requests.append(quiet)
    requests.append(rtnl.link_up(index))
    requests += [rtnl.default_route(gw) for gw in (gateway4, gateway6) if gw]
    for req, reply in zip(requests, chan.run(*requests)):
        if req.type == rtnl.RTM_NEWADDR and reply.error == EEXIST:
            continue
        if req is quiet and reply.error == rtnl.EAFNOSUPPORT:  # a kernel without IPv6: nothing to turn off
            continue
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


def netns_view(ipr) -> dict:
    """A namespace's links (name -> (index, up)), addresses ((index, "ip/prefixlen")) and IPv4 default
    gateways, for reconcile to compare with the records (three dumps: never on the attach path)."""
    return {
        "links": {link.get("ifname"): (link["index"], bool(link["flags"] & rtnl.IFF_UP)) for link in ipr.get_links()},
        "addrs": {(a["index"], f"{a.get('address')}/{a['prefixlen']}") for a in ipr.get_addr()},
        "gateways": {r.get("gateway") for r in ipr.get_routes(family=2, table=254) if r["dst_len"] == 0},
    }
