"""Which link kinds the running kernel can build: probed, never assumed, and remembered.

/sys/module lists built-in drivers only when they have parameters, /proc/config.gz is often absent
and says nothing of loadable modules: the one reliable answer is to create the link. That is done
in a throwaway network namespace (held only by the probe's netlink socket), on a veth made there,
so nothing of the host is touched. The kernel loads a missing module by itself on the way.
"""
from __future__ import annotations

import os
import threading

from pyroute2.netlink.exceptions import NetlinkError

from ..errors import KernelFeatureMissing
from .netns import CLONE_NEWNET, setns, unshare

EOPNOTSUPP = 95

CONFIG = {"macvlan": "CONFIG_MACVLAN", "ipvlan": "CONFIG_IPVLAN", "vlan": "CONFIG_VLAN_8021Q"}
WHAT = {"macvlan": "macvlan", "ipvlan": "ipvlan", "vlan": "802.1Q VLAN"}
_EXTRA = {"macvlan": {"macvlan_mode": "bridge"}, "ipvlan": {"ipvlan_mode": 0}, "vlan": {"vlan_id": 10}}

_cache: dict[str, bool] = {}
_lock = threading.Lock()


def supported(kind: str) -> bool:
    with _lock:
        if kind not in _cache:
            _cache[kind] = _probe(kind)
        return _cache[kind]


def missing(kind: str) -> str | None:
    """The kernel option `kind` needs when this kernel lacks it (e.g. "CONFIG_IPVLAN"), else None."""
    return None if supported(kind) else CONFIG[kind]


def require(kind: str, what: str) -> None:
    """Raise the one-line refusal when the kernel lacks `kind`; `what` is what could not be created."""
    if not supported(kind):
        raise KernelFeatureMissing(
            f"cannot create {what}: this kernel has no {WHAT[kind]} support ({CONFIG[kind]} is not set, and no "
            f"module could be loaded); use a kernel built with {CONFIG[kind]}")


def _throwaway_iproute():
    """An IPRoute whose socket lives in a new, empty namespace; the thread itself goes back home."""
    from pyroute2 import IPRoute

    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    try:
        unshare(CLONE_NEWNET)
        try:
            return IPRoute()
        finally:
            setns(home)
    finally:
        os.close(home)


def _probe(kind: str) -> bool:
    ipr = _throwaway_iproute()
    try:
        ipr.link("add", ifname="probe0", kind="veth", peer={"ifname": "probe1"})
        parent = ipr.link_lookup(ifname="probe0")[0]
        try:
            ipr.link("add", ifname="probe2", kind=kind, link=parent, **_EXTRA[kind])
        except NetlinkError as e:
            if e.code == EOPNOTSUPP:  # "Unknown device type": neither built in nor loadable
                return False
            raise
        return True
    finally:
        ipr.close()  # the socket was the namespace's last reference: it goes, with what the probe made


def forget() -> None:
    """Drop cached answers (tests)."""
    with _lock:
        _cache.clear()
