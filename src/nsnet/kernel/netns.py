"""Network namespaces: entering them per thread, and sockets made inside them.

A socket keeps the namespace it was created in for its whole life (its routing, its addresses, its
bind), whichever thread later uses it. So the calling thread setns()es in, makes the socket and comes
straight back; setns() moves only the calling thread, so the daemon's other threads never move.
"""
from __future__ import annotations

import ctypes
import os
import socket
from contextlib import contextmanager
from typing import Iterator

CLONE_NEWNS = 0x00020000
CLONE_NEWUTS = 0x04000000
CLONE_NEWNET = 0x40000000

_libc = ctypes.CDLL(None, use_errno=True)


def setns(fd: int, nstype: int = CLONE_NEWNET) -> None:
    if _libc.setns(fd, nstype) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


def unshare(flags: int) -> None:
    if _libc.unshare(flags) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"unshare: {os.strerror(err)}")


def open_netns(target: str | int) -> int:
    """Our own fd for a namespace given as a path (/run/netns/X, /proc/PID/ns/net) or an fd."""
    if isinstance(target, int):
        return os.dup(target)
    return os.open(target, os.O_RDONLY | os.O_CLOEXEC)


def own_netns() -> int:
    """An fd for the calling thread's namespace."""
    # thread-self, not self: /proc/self is the main thread, which may live elsewhere.
    return os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)


@contextmanager
def inside(ns_fd: int, home: int | None = None) -> Iterator[None]:
    """Run the body with this thread in namespace `ns_fd`, and always come back (to `home`, the
    thread's own namespace, if given: a caller that enters often keeps it open)."""
    own = home if home is not None else own_netns()
    try:
        setns(ns_fd)
        try:
            yield
        finally:
            setns(own)
    finally:
        if home is None:
            os.close(own)


@contextmanager
def entered(netns_path: str) -> Iterator[None]:
    """Run the body with the calling thread inside the netns at `netns_path`."""
    target = open_netns(netns_path)
    try:
        with inside(target):
            yield
    finally:
        os.close(target)


def socket_in(ns_fd: int | None, family: int, kind: int) -> socket.socket:
    """A socket created in namespace `ns_fd` (None: the caller's own)."""
    if ns_fd is None:
        return socket.socket(family, kind)
    with inside(ns_fd):
        return socket.socket(family, kind)
