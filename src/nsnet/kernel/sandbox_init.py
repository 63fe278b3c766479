"""The first process of a sandbox: `python -m nsnet.kernel.sandbox_init [options] -- CMD ...`.

It makes the sandbox's namespaces (network, mount, UTS), tells its parent they exist, waits until
the engine has built the network inside them, then puts the sandbox's own /etc/hosts,
/etc/resolv.conf and hostname in place, covers what the sandbox must not reach on the host's file
system (the engine's root, netns handles, container engines' sockets) and becomes CMD. Kept to the
standard library so that it starts fast.
"""
from __future__ import annotations

import argparse
import ctypes
import glob
import json
import os
import socket
import sys

from .. import DEFAULT_ROOT
from .netns import CLONE_NEWNET, CLONE_NEWNS, CLONE_NEWUTS, unshare

MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_NOEXEC = 8
MS_BIND = 4096
MS_REC = 0x4000
MS_PRIVATE = 1 << 18
_libc = ctypes.CDLL(None, use_errno=True)

# Ways out of the sandbox's network through the host's file system, covered when they exist: a named netns
# handle is one setns() away; an engine's socket starts a container on the host's network. Each is looked
# for under /run and /var/run (one directory on most systems); `*` is any user's (rootless engines).
ESCAPES = ("netns", "docker.sock", "docker", "containerd", "podman", "crio", "cri-dockerd.sock", "k3s",
           "user/*/netns", "user/*/docker.sock", "user/*/podman", "user/*/containerd")
ESCAPES_ELSEWHERE = ("/var/snap/lxd/common/lxd/unix.socket", "/var/lib/lxd/unix.socket")


def _mount(src: str | None, target: str, flags: int, fstype: str | None = None, data: str | None = None) -> None:
    if _libc.mount(src.encode() if src else None, target.encode(), fstype.encode() if fstype else None, flags,
                   data.encode() if data else None) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"mount {target}: {os.strerror(err)}")


def paths_to_hide(roots: list[str], escapes: list[str]) -> list[str]:
    """The existing paths among `roots` (engine roots) and `escapes` (glob patterns), resolved, without "/" and
    without any that lies inside another (covering the outer one hides it)."""
    found = set()
    for pattern in [glob.escape(r) for r in roots] + list(escapes):
        for match in glob.glob(pattern):
            real = os.path.realpath(match)
            if real != "/" and os.path.exists(real):
                found.add(real)
    outer: list[str] = []
    for path in sorted(found):
        if not any(path.startswith(o + "/") for o in outer):
            outer.append(path)
    return outer


def _cover(path: str) -> None:
    """An empty read-only tmpfs over a directory, /dev/null over anything else (a socket: connect() is refused)."""
    if os.path.isdir(path):
        _mount("nsnet-hidden", path, MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC, "tmpfs", "mode=755")
    else:
        _mount("/dev/null", path, MS_BIND)


def _hide_host(files: str | None) -> None:
    """Cover the engine's root (the sandbox's files live in <root>/sandboxes/<id>, bound over /etc already: the
    binds hold the files themselves, not the path) and the ways out in ESCAPES."""
    roots = [DEFAULT_ROOT] + ([os.environ["NSNET_ROOT"]] if os.environ.get("NSNET_ROOT") else [])
    if files:
        roots.append(os.path.dirname(os.path.dirname(os.path.abspath(files))))
    escapes = [os.path.join(d, e) for d in ("/run", "/var/run") for e in ESCAPES] + list(ESCAPES_ELSEWHERE)
    for path in paths_to_hide(roots, escapes):
        _cover(path)
    # A working directory under a cover would still reach what is beneath it: look it up again by name.
    try:
        os.chdir(os.getcwd())
    except OSError:
        os.chdir("/")


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
    try:
        _hide_host(files)
    except OSError as e:
        print(f"nsnet: cannot hide the engine's files from the sandbox: {e.strerror}", file=sys.stderr)
        return 125
    if hostname and a.netmode == "own":
        socket.sethostname(hostname)
    try:
        os.execvp(cmd[0], cmd)
    except OSError as e:
        print(f"nsnet: cannot run {cmd[0]}: {e.strerror}", file=sys.stderr)
        return 127


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
