"""The kernel's face: the verbs drivers (and the engine) use on the host's namespace (`Kernel`) and on a
sandbox's (`SandboxNs`), with nsnet's errors only.

Behind the verbs, two netlink sockets per namespace, reused: the hot path's rtnl.Channel (attach, detach),
and a pyroute2 IPRoute for the rest, opened in a sandbox only when something there asks for it (it costs
~1 ms to open). A verb is a thin method over the module functions of links.py, lan.py, arp.py, sysctl.py
and features.py: the attach path stays one sendmsg per namespace per step.
"""
from __future__ import annotations

import functools
import logging
import os
import socket
import threading

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from ..errors import KernelError
from . import arp, conntrack, features, lan, links, probe, rtdump, rtnl, sysctl, vxlan, wireguard
from .netns import entered

log = logging.getLogger("nsnet.kernel")


def verb(fn):
    """The one place where the libraries' refusals become nsnet's: pyroute2's NetlinkError and the OSError
    of a /proc/sys write come out of every verb as KernelError (errno in `code`)."""
    @functools.wraps(fn)
    def wrapped(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except NetlinkError as e:
            text = e.args[1] if len(e.args) > 1 and e.args[1] else os.strerror(e.code)
            raise KernelError(e.code, str(text)) from None
        except OSError as e:
            if e.errno is None:
                raise
            raise KernelError(e.errno, e.strerror or os.strerror(e.errno)) from None
    return wrapped


class SandboxNs:
    """An open handle on a sandbox's network namespace: its fd, netlink sockets inside it, and the verbs
    drivers use there."""

    def __init__(self, pid: int | None, path: str | None = None):
        self.pid = pid
        self.fd = os.open(path or f"/proc/{pid}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        self.path = f"/proc/self/fd/{self.fd}"
        self._ipr = None
        try:
            with entered(self.path):  # EINVAL when `path` is not a network namespace
                self.rtnl = rtnl.Channel()
        except BaseException:
            os.close(self.fd)
            raise

    @property
    def ipr(self):
        if self._ipr is None:
            with entered(self.path):
                self._ipr = IPRoute()
        return self._ipr

    def close(self) -> None:
        # Each holds the namespace alive: close them so it dies with its last process.
        if self._ipr is not None:
            self._ipr.close()
        self.rtnl.close()
        os.close(self.fd)

    # ---- verbs --------------------------------------------------------------------------------------

    @verb
    def index(self, name: str) -> int | None:
        return links.index_in(self.rtnl, name)

    @verb
    def configure(self, index: int, *, addresses: list[str], gateway4: str | None, gateway6: str | None,
                  ipv6: bool) -> None:
        """Addresses, link up and default routes via the gateways, in one sendmsg (links.configure_inside)."""
        links.configure_inside(self.rtnl, index, addresses=addresses, gateway4=gateway4, gateway6=gateway6,
                               ipv6=ipv6)

    @verb
    def ready(self, index: int) -> None:
        """Link `index` sends when this returns. A link whose carrier just came on (its veth's other end came
        up) drops what it sends until the kernel's link-watch work has run for it (its queue is attached
        then), which under load came up to 1 s late: a sandbox's first ARP lost and sent again a second
        later. A getlink runs that work for the link now (rtnl_getlink syncs it)."""
        self.rtnl.call(rtnl.get_link_by_index(index))

    @verb
    def default_routes_on(self, index: int, *, ipv4: bool, ipv6: bool) -> None:
        lan.default_routes_on(self.ipr, index, ipv4=ipv4, ipv6=ipv6)

    @verb
    def delete_link(self, name: str) -> bool:
        return links.delete_link(self.rtnl, name)

    @verb
    def loopback_up(self) -> None:
        links.loopback_up(self.rtnl)

    @verb
    def view(self) -> dict:
        """Its links, addresses and IPv4 default gateways (links.netns_view), for reconcile to compare."""
        return links.netns_view(self.ipr)


class Kernel:
    """Create and use it on one thread only (see engine.on_kernel_thread)."""

    def __init__(self):
        self._owner = threading.get_ident()
        self._ipr = IPRoute()
        self._rtnl = rtnl.Channel()
        self._ctnl: rtnl.Channel | None = None   # conntrack's netlink, opened at first use
        self._dumps = rtdump.Dumps()             # the evidence's netlink reads
        self._sandboxes: dict[int, SandboxNs] = {}
        self._lock = threading.Lock()
        self.own_netns_inode = os.stat("/proc/thread-self/ns/net").st_ino

    def _on_owner(self) -> None:
        # pyroute2 would silently give another thread a new socket in whatever namespace it is in,
        # and two threads on one Channel would mix up their replies.
        if threading.get_ident() != self._owner:
            raise RuntimeError("netlink used off the kernel thread")

    @property
    def ipr(self):
        self._on_owner()
        return self._ipr

    @property
    def rtnl(self) -> rtnl.Channel:
        self._on_owner()
        return self._rtnl

    def forget_flows(self, ips) -> None:
        """Flush the host's tracked flows of addresses nsnet has given up (see kernel/conntrack.py)."""
        self._on_owner()
        if self._ctnl is None:
            try:
                self._ctnl = rtnl.Channel(conntrack.NETLINK_NETFILTER)
            except OSError as e:  # no nfnetlink in this kernel: nothing is tracked by it either
                log.debug("no conntrack netlink: %s", e)
                return
        conntrack.forget(self._ctnl, ips)

    def sandbox(self, pid: int) -> SandboxNs:
        with self._lock:
            ns = self._sandboxes.get(pid)
            if ns is None:
                ns = self._sandboxes[pid] = SandboxNs(pid)
            return ns

    @verb
    def netns(self, path: str) -> SandboxNs:
        """A handle on the network namespace at `path` (a CNI runtime's), not kept: the caller closes it."""
        self._on_owner()
        return SandboxNs(None, path)

    def forget(self, pid: int | None) -> None:
        with self._lock:
            ns = self._sandboxes.pop(pid, None)
        if ns is not None:
            ns.close()

    def is_own_netns(self, pid: int) -> bool:
        return os.stat(f"/proc/{pid}/ns/net").st_ino == self.own_netns_inode

    # ---- verbs on the host's namespace: the only way drivers touch it ----------------------------------

    @verb
    def evidence(self, *, reserved, docker_socket: str | None) -> list:
        """Evidence of the ranges in use on this host (kernel/probe.py), read in this namespace."""
        self._on_owner()
        return probe.gather(self._dumps, reserved=reserved, docker_socket=docker_socket)

    @verb
    def links(self) -> dict[str, dict]:
        """name -> {index, kind, alias, master} of every link (one dump; never on the attach path)."""
        return links.link_names(self.ipr)

    @verb
    def index(self, name: str) -> int | None:
        return links.index_in(self.rtnl, name)

    @verb
    def mac_of(self, name: str) -> str | None:
        return links.attr_of(self.ipr, name, "address")

    @verb
    def alias_of(self, name: str) -> str | None:
        return links.attr_of(self.ipr, name, "ifalias")

    @verb
    def ipv4_addresses(self, name: str) -> list[str]:
        return links.addresses_of(self.ipr, name, socket.AF_INET)

    @verb
    def taken_on_lan(self, ifname: str, address: str) -> str | None:
        """Why IPv4 `address` is not free on the LAN behind `ifname` (the host's own, or it answers ARP)."""
        return arp.taken_on_lan(self.ipr, ifname, address)

    @verb
    def require(self, kind: str, what: str) -> None:
        """KernelFeatureMissing when this kernel cannot build `kind` links (features.require)."""
        features.require(kind, what)

    @verb
    def sysctl(self, key: str, value: str) -> None:
        sysctl.write(key, value)

    @verb
    def link_sysctl(self, family: str, name: str, key: str, value: str) -> None:
        sysctl.write_iface(family, name, key, value)

    @verb
    def no_ipv6(self, name: str) -> None:
        links.no_ipv6(name)

    @verb
    def delete_link(self, name: str) -> bool:
        """Remove a link if it is there (a veth takes its peer along); True when something was removed."""
        return links.delete_link(self.rtnl, name)

    @verb
    def delete_if_alias(self, name: str, alias: str) -> bool:
        """Remove link `name` only when it carries `alias`."""
        return lan.delete_if_alias(self.ipr, self.rtnl, name, alias)

    @verb
    def ensure_bridge(self, name: str, *, mtu: int | None, addresses: list[str], alias: str) -> tuple[int, bool]:
        """(index, created) of bridge `name`, made if missing (marked with `alias`, or not left at all),
        with `addresses`, up."""
        return links.ensure_bridge(self.ipr, self.rtnl, name, mtu=mtu, addresses=addresses, alias=alias)

    @verb
    def new_veth(self, host_name: str, sandbox: SandboxNs, peer_name: str, *, mac: str | None,
                 mtu: int | None) -> tuple[int, int]:
        """A veth from the host into `sandbox`, in one sendmsg: (host end's index, peer's index in there).
        The host end gets no IPv6 at all: a bridge port is layer 2 only, and each port with IPv6 adds a
        multicast route that every IPv6 link event walks past (a thousand ports made each attach walk a
        thousand routes)."""
        indexes = links.new_veth(self.rtnl, host_name, sandbox.fd, peer_name, mac=mac, mtu=mtu)
        links.no_ipv6(host_name)
        return indexes

    @verb
    def plug_in(self, index: int, bridge_index: int, *, isolated: bool) -> None:
        """Port `index` onto the bridge, up, in one sendmsg (links.plug_in)."""
        links.plug_in(self.rtnl, index, bridge_index, isolated=isolated)

    @verb
    def veth_pair(self, name: str, peer: str, *, mtu: int | None, alias: str) -> tuple[int, int]:
        """A veth pair inside the host (a leaf's uplink): both ends' indexes."""
        return links.veth_pair(self.ipr, self.rtnl, name, peer, mtu=mtu, alias=alias)

    @verb
    def add_in_netns(self, kind: str, name: str, parent_index: int, sandbox: SandboxNs, *, mtu: int | None,
                     **attrs) -> None:
        """A `kind` link (macvlan, ipvlan) of host link `parent_index`, made directly inside `sandbox`."""
        lan.add_in_netns(self.ipr, kind, name, parent_index, sandbox.fd, mtu=mtu, **attrs)

    @verb
    def ensure_vlan(self, name: str, base: str, vid: int, *, alias: str) -> int:
        """802.1Q link `name` on `base`, made if missing (marked with `alias`, or not left at all), up."""
        return lan.ensure_vlan(self.ipr, self.rtnl, name, base, vid, alias=alias)

    @verb
    def ensure_shim(self, name: str, parent: str, address: str, *, alias: str) -> int:
        """The host's macvlan link on `parent`, made if missing (marked with `alias`, or not left at all),
        holding `address`/32, up."""
        return lan.ensure_shim(self.ipr, self.rtnl, name, parent, address, alias=alias)

    @verb
    def ensure_vxlan(self, name: str, *, vni: int, local: str, port: int, mtu: int, master: int,
                     alias: str, inside: SandboxNs) -> tuple[int, bool]:
        """(index, created) of VXLAN link `name` on bridge `master` in namespace `inside` (an overlay's),
        made from here so that its socket is the host's (vxlan.ensure_vxlan: no learning)."""
        return vxlan.ensure_vxlan(inside.ipr, inside.rtnl, name, vni=vni, local=local, port=port, mtu=mtu,
                                  master=master, alias=alias, maker=self.ipr, netns_fd=inside.fd)

    @verb
    def overlay_ns(self, record: str, *, make: bool):
        """The overlay namespace `record` names (kernel/overlayns.py): the live one, else a new one when
        `make`, else None."""
        from .overlayns import OverlayNs
        return OverlayNs.adopt(record) or (OverlayNs.make(record) if make else None)

    @verb
    def discard_overlay_ns(self, record: str) -> None:
        """Its holder killed (the namespace goes with it) and `record` removed."""
        from .overlayns import OverlayNs
        OverlayNs.discard(record)

    @verb
    def mtu_of_address(self, address: str) -> int | None:
        return vxlan.mtu_of_address(self.ipr, address)

    # ---- WireGuard (kernel/wireguard.py: `wg`, and wireguard-go where the kernel has no module) ----

    @verb
    def wireguard_missing(self) -> str | None:
        """What keeps WireGuard from this host (one sentence), or None."""
        return wireguard.missing()

    @verb
    def wireguard_kind(self) -> str | None:
        return wireguard.kind()

    @verb
    def wireguard_key(self, path: str) -> str:
        """A new private key in file `path` (0600); its public key."""
        return wireguard.generate_key(path)

    @verb
    def wireguard_public_key(self, path: str) -> str:
        return wireguard.public_key(path)

    @verb
    def ensure_wireguard(self, name: str, *, key: str, port: int, address: str, mtu: int) -> bool:
        """WireGuard link `name` (the probed kind), keyed from file `key`, on UDP `port`, holding `address`, up;
        True when made."""
        return wireguard.ensure(name, wireguard.kind(), key=key, port=port, address=address, mtu=mtu)

    @verb
    def wireguard_set_key(self, name: str, key: str) -> None:
        wireguard.set_key(name, key)

    @verb
    def wireguard_peers(self, name: str) -> dict[str, tuple[str, str]]:
        return wireguard.peers(name)

    @verb
    def wireguard_set_peers(self, name: str, add: list[tuple[str, str, str]], remove: list[str]) -> None:
        wireguard.set_peers(name, add, remove)

    @verb
    def route_to(self, ifname: str, cidr: str) -> None:
        """The host's route to one sandbox address through `ifname` (none when the link is gone)."""
        lan.host_route(self.ipr, "replace", ifname, cidr)

    @verb
    def unroute(self, ifname: str, cidr: str) -> None:
        lan.host_route(self.ipr, "del", ifname, cidr)

    def close(self) -> None:
        for pid in list(self._sandboxes):
            self.forget(pid)
        self._ipr.close()
        self._rtnl.close()
        self._dumps.close()
        if self._ctnl is not None:
            self._ctnl.close()
