"""The first process of a sandbox: `python -m nsnet.kernel.sandbox_init [options] -- CMD ...`.

It makes the sandbox's namespaces (network, mount, UTS), tells its parent they exist, waits until
the engine has built the network inside them, then puts the sandbox's own /etc/hosts,
/etc/resolv.conf and hostname in place and becomes CMD. Kept to the standard library so that it
starts fast.
"""
from __future__ import annotations

import argparse
import ctypes
import json
import os
import socket
import sys

from .netns import CLONE_NEWNET, CLONE_NEWNS, CLONE_NEWUTS, unshare

MS_REC = 0x4000
MS_PRIVATE = 1 << 18
MS_BIND = 4096
_libc = ctypes.CDLL(None, use_errno=True)


def _mount(src: str | None, target: str, flags: int) -> None:
    if _libc.mount(src.encode() if src else None, target.encode(), None, flags, None) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"mount {target}: {os.strerror(err)}")


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="sandbox_init")
    p.add_argument("--netmode", choices=["own", "host"], default="own")
    p.add_argument("--ready-fd", type=int, required=True)
    p.add_argument("--go-fd", type=int, required=True)
    p.add_argument("cmd", nargs=argparse.REMAINDER)
    a = p.parse_args(argv)
    cmd = a.cmd[1:] if a.cmd[:1] == ["--"] else a.cmd

    flags = CLONE_NEWNS
    if a.netmode == "own":
        flags |= CLONE_NEWNET | CLONE_NEWUTS
    unshare(flags)
    os.write(a.ready_fd, b"1")
    os.close(a.ready_fd)
    # The engine answers with where the sandbox's files are and its hostname, or closes the pipe.
    go = os.read(a.go_fd, 65536)
    os.close(a.go_fd)
    if not go:
        return 125  # the engine refused or failed: nothing to run
    spec = json.loads(go)
    files, hostname = spec.get("files"), spec.get("hostname")
    if spec.get("nft"):
        # Applied here, by a process with few fds: libnftables' select() aborts on fds above 1023,
        # which a daemon serving hundreds of sandboxes has.
        from .nft import run_first

        run_first(spec["nft"])

    _mount(None, "/", MS_REC | MS_PRIVATE)  # our binds stay ours
    if files:
        for name in ("hosts", "resolv.conf", "hostname"):
            src = os.path.join(files, name)
            if os.path.exists(src) and os.path.exists("/etc/" + name):
                _mount(src, "/etc/" + name, MS_BIND)
    if hostname and a.netmode == "own":
        socket.sethostname(hostname)
    try:
        os.execvp(cmd[0], cmd)
    except OSError as e:
        print(f"nsnet: cannot run {cmd[0]}: {e.strerror}", file=sys.stderr)
        return 127


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
