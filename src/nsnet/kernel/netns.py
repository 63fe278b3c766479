"""Network namespaces: entering them per thread, and netlink sockets bound inside them.

A socket keeps the namespace it was created in, so a thread setns()es in, opens the socket and
comes straight back. setns() affects only the calling thread, so the daemon's other threads are
never moved.
"""
from __future__ import annotations

import ctypes
import os
from contextlib import contextmanager

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


@contextmanager
def entered(netns_path: str):
    """Run the body with the calling thread inside the netns at `netns_path`."""
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    target = os.open(netns_path, os.O_RDONLY)
    try:
        setns(target)
        try:
            yield
        finally:
            setns(home)
    finally:
        os.close(target)
        os.close(home)
