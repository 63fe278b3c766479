"""The engine's view of the kernel: netlink sockets in its own namespace and in each sandbox's, reused.

Two kinds per namespace: the hot path's rtnl.Channel (attach, detach), and a pyroute2 IPRoute for the
rest, opened in a sandbox only when something there asks for it (it costs ~1 ms to open).
"""
from __future__ import annotations

import logging
import os
import threading

from pyroute2 import IPRoute

from . import conntrack, links, rtnl
from .netns import entered

log = logging.getLogger("nsnet.kernel")


class SandboxNs:
    """An open handle on a sandbox's network namespace: its fd and a netlink socket inside it."""

    def __init__(self, pid: int):
        self.pid = pid
        self.fd = os.open(f"/proc/{pid}/ns/net", os.O_RDONLY)
        self.path = f"/proc/self/fd/{self.fd}"
        self._ipr = None
        with entered(self.path):
            self.rtnl = rtnl.Channel()

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


class Kernel:
    """Create and use it on one thread only (see engine.on_kernel_thread)."""

    def __init__(self):
        self._owner = threading.get_ident()
        self._ipr = IPRoute()
        self._rtnl = rtnl.Channel()
        self._ctnl: rtnl.Channel | None = None   # conntrack's netlink, opened at first use
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

    def forget(self, pid: int | None) -> None:
        with self._lock:
            ns = self._sandboxes.pop(pid, None)
        if ns is not None:
            ns.close()

    def is_own_netns(self, pid: int) -> bool:
        return os.stat(f"/proc/{pid}/ns/net").st_ino == self.own_netns_inode

    def links(self) -> dict[str, dict]:
        return links.link_names(self.ipr)

    def close(self) -> None:
        for pid in list(self._sandboxes):
            self.forget(pid)
        self._ipr.close()
        self._rtnl.close()
        if self._ctnl is not None:
            self._ctnl.close()
