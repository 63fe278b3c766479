"""VXLAN links and the entries that steer them: a remote sandbox's MAC to its host's tunnel address
(forwarding database, `self`: the VXLAN device's own table) and its IP to its MAC (neighbour table, which
the device answers ARP from: `proxy`). Learning is off: nothing is flooded, nothing learnt, every entry is
programmed, with replace semantics, so an address reused by another sandbox never keeps a stale entry
(moby#52661). The bridge above it still learns a remote sandbox's MAC on the VXLAN port from its frames:
that entry goes with the peer, or a sandbox given the same address (so the same MAC) on this host would be
sent to the VXLAN port until the bridge ages it out (300 s) or the sandbox speaks first."""
from __future__ import annotations

from . import links

NUD_PERMANENT = 0x80
NTF_SELF, NTF_MASTER = 0x02, 0x04


def ensure_vxlan(ipr, chan, name: str, *, vni: int, local: str, port: int, mtu: int, master: int,
                 alias: str, maker, netns_fd: int) -> tuple[int, bool]:
    """(index, created) of VXLAN link `name` (VNI `vni`, sending from `local` to UDP `port`, no learning,
    ARP answered from its neighbour table), a port of bridge `master`, up, in the namespace of `ipr`/`chan`
    (`netns_fd`). Made by `maker`, a socket in the host's namespace: the link's UDP socket is made where the
    request came from, and so stays on the underlay."""
    idx = links.index_of(ipr, name)
    created = idx is None
    if created:
        # The source address is set, never left to the kernel's route lookup (moby#53004).
        idx = links.add_marked(ipr, chan, name, alias, maker=maker, net_ns_fd=netns_fd, kind="vxlan",
                               vxlan_id=vni, vxlan_local=local, vxlan_port=port, vxlan_learning=0,
                               vxlan_proxy=1, mtu=mtu)
    ipr.link("set", index=idx, master=master, state="up")
    return idx, created


def set_peer(ipr, index: int, *, mac: str, ip: str, vtep: str) -> None:
    ipr.fdb("replace", ifindex=index, lladdr=mac, dst=vtep, state=NUD_PERMANENT, flags=NTF_SELF)
    ipr.neigh("replace", ifindex=index, dst=ip, lladdr=mac, state=NUD_PERMANENT)


def remove_peer(ipr, index: int, *, mac: str, ip: str, vtep: str) -> None:
    for call, kw in ((ipr.neigh, {"dst": ip, "lladdr": mac}),
                     (ipr.fdb, {"lladdr": mac, "dst": vtep, "flags": NTF_SELF}),
                     (ipr.fdb, {"lladdr": mac, "flags": NTF_MASTER})):   # what the bridge learnt of it
        try:
            call("del", ifindex=index, **kw)
        except Exception as e:  # already gone: what we wanted
            if getattr(e, "code", None) not in (2, 19):   # ENOENT, ENODEV
                raise


def peers(ipr, index: int) -> set[tuple[str, str, str]]:
    """(mac, ip, vtep) of every remote sandbox programmed on the link: the neighbours joined to the
    forwarding entries by MAC."""
    vteps = {m.get_attr("NDA_LLADDR"): m.get_attr("NDA_DST") for m in ipr.fdb("dump", ifindex=index)
             if m.get_attr("NDA_DST") and m["state"] & NUD_PERMANENT}
    return {(m.get_attr("NDA_LLADDR"), m.get_attr("NDA_DST"), vteps[m.get_attr("NDA_LLADDR")])
            for m in ipr.neigh("dump", ifindex=index)
            if m["state"] & NUD_PERMANENT and m.get_attr("NDA_LLADDR") in vteps}


def mtu_of_address(ipr, address: str) -> int | None:
    """The MTU of the link that holds `address` (the underlay's, for a tunnel sent from it)."""
    for a in ipr.get_addr():
        if (a.get("address") or a.get("local")) == address:
            return ipr.get_links(a["index"])[0].get("mtu")
    return None
