"""WireGuard links: the kernel's (`ip link add type wireguard`) where the kernel has the module, else
wireguard-go's (a TUN link served by a process of its own), both configured with `wg` (wireguard-tools).

wireguard-go keeps its control socket in /var/run/wireguard/NAME.sock, one folder for every namespace of
the machine: link names must be unique machine-wide (the overlay names its link after the node id). It
stays when its process's namespace goes and ends when its link is deleted, so a link is removed by
deleting it, whatever its kind. Keys are handed to `wg` as files (`private-key PATH`), never on a command
line.

wireguard-go up to v0.0.20220316 (Debian 12's) leaves its UDP sockets at the kernel's default buffers (208 KiB):
under one TCP stream the receiving node's socket overflowed on about a tenth of the datagrams, and TCP paid for
each. Upstream sets 7 MiB with SO_RCVBUFFORCE/SO_SNDBUFFORCE since 2023 (conn/controlfns_linux.go); nsnet sets
the same on the process's sockets from outside (`widen_buffers`, through pidfd_getfd), which changes nothing
for a wireguard-go that already does.
"""
from __future__ import annotations

import logging
import os
import shutil
import socket
import subprocess
import tempfile
import time
import uuid

from ..errors import KernelError, NsnetError

KERNEL, USERSPACE = "kernel", "wireguard-go"
EIO = 5
SOCKET_BUFFER = 7 << 20          # upstream wireguard-go's socketBufferSize
SO_SNDBUFFORCE, SO_RCVBUFFORCE = 32, 33
SYS_PIDFD_GETFD = 438            # x86-64 and the generic table alike

log = logging.getLogger("nsnet.wireguard")

_kind: list[str | None] = []   # the probe's answer, once per process


def _run(*argv: str, input: str | None = None) -> str:
    p = subprocess.run(argv, capture_output=True, text=True, input=input, timeout=10)
    if p.returncode != 0:
        raise KernelError(EIO, f"{' '.join(argv[:3])}: {(p.stderr or p.stdout).strip() or f'exit {p.returncode}'}")
    return p.stdout


def missing() -> str | None:
    """What keeps WireGuard from this host, in one sentence, or None."""
    if shutil.which("wg") is None:
        return "WireGuard's wg tool is missing (Debian: apt install wireguard-tools)"
    if kind() is None:
        return ("this kernel has no WireGuard module and wireguard-go is not installed "
                "(Debian: apt install wireguard-go)")
    return None


def kind() -> str | None:
    """`kernel` when `ip link add type wireguard` works here, else `wireguard-go` when installed, else None."""
    if not _kind:
        probe = "nswgprobe" + uuid.uuid4().hex[:6]
        if subprocess.run(["ip", "link", "add", probe, "type", "wireguard"], capture_output=True).returncode == 0:
            subprocess.run(["ip", "link", "del", probe], capture_output=True)
            _kind.append(KERNEL)
        else:
            _kind.append(USERSPACE if shutil.which("wireguard-go") else None)
    return _kind[0]


def generate_key(path: str) -> str:
    """A new private key written to `path` (0600, replaced whole); its public key."""
    private = _run("wg", "genkey").strip()
    tmp = path + ".new"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(private + "\n")
    os.replace(tmp, path)
    return public_key(path)


def public_key(path: str) -> str:
    with open(path) as f:
        return _run("wg", "pubkey", input=f.read()).strip()


def ensure(name: str, how: str, *, key: str, port: int, address: str, mtu: int) -> bool:
    """Link `name` of kind `how`, with the private key in file `key`, listening on UDP `port`, holding
    `address` (ip/prefix: the route to the tunnel range goes through it), MTU `mtu`, up. True when made."""
    # Asked of the kernel, not of /sys: that shows the namespace /sys was mounted in.
    made = subprocess.run(["ip", "link", "show", name], capture_output=True).returncode != 0
    if made:
        if how == KERNEL:
            _run("ip", "link", "add", name, "type", "wireguard")
        elif how == USERSPACE:
            # It daemonizes once its link and control socket exist. Its output goes to a file, not a pipe:
            # the process that stays would hold a pipe open, and the wait for its end would never end.
            env = {**os.environ, "LOG_LEVEL": "error", "WG_I_PREFER_BUGGY_USERSPACE_TO_POLISHED_KMOD": "1"}
            with tempfile.TemporaryFile("w+") as out:
                code = subprocess.run(["wireguard-go", name], stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                                      env=env, timeout=10).returncode
                if code != 0:
                    out.seek(0)
                    raise KernelError(EIO, f"wireguard-go {name}: {out.read().strip() or f'exit {code}'}")
        else:
            raise NsnetError(missing() or "no WireGuard")
    try:
        _run("wg", "set", name, "private-key", key, "listen-port", str(port))
        _run("ip", "link", "set", name, "mtu", str(mtu))
        _run("ip", "address", "replace", address, "dev", name)
        _run("ip", "link", "set", name, "up")
    except BaseException:
        if made:
            delete(name)
        raise
    if how == USERSPACE:
        widen_buffers(name, port)
    return made


def _process_of(name: str) -> int | None:
    """The wireguard-go process serving link `name` (names are unique on the machine)."""
    want = ["wireguard-go", name]
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    argv = f.read().decode(errors="replace").split("\0")[:-1]
            except OSError:
                continue
            if argv and [os.path.basename(argv[0]), *argv[1:]] == want:
                return int(entry)
    return None


def _widen_bound(pid: int, port: int, done: set[int]) -> int:
    """SO_*BUFFORCE on the process's UDP sockets bound to `port` not in `done` (their inodes, added to it);
    how many are bound now."""
    import ctypes
    syscall = ctypes.CDLL(None, use_errno=True).syscall
    pidfd = os.pidfd_open(pid)
    bound = 0
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if not target.startswith("socket:"):
                continue
            mine = syscall(SYS_PIDFD_GETFD, pidfd, int(fd), 0)
            if mine < 0:
                raise OSError(ctypes.get_errno(), "pidfd_getfd")
            with socket.socket(fileno=mine) as sock:   # our duplicate: closing it leaves theirs open
                if (sock.family not in (socket.AF_INET, socket.AF_INET6) or sock.type != socket.SOCK_DGRAM
                        or sock.getsockname()[1] != port):
                    continue
                bound += 1
                inode = os.fstat(mine).st_ino
                if inode not in done:
                    sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, SOCKET_BUFFER)
                    sock.setsockopt(socket.SOL_SOCKET, SO_SNDBUFFORCE, SOCKET_BUFFER)
                    done.add(inode)
    finally:
        os.close(pidfd)
    return bound


def widen_buffers(name: str, port: int, timeout: float = 2.0) -> int:
    """Upstream's 7 MiB buffers on the UDP sockets of link `name`'s wireguard-go; how many it widened. It binds
    them when it sees its link come up, after `ip link set up` has returned: wait for them, then one more look
    for the IPv6 one it opens right after. A failure costs speed, not function: logged, not raised."""
    done: set[int] = set()
    deadline = time.monotonic() + timeout
    settled = False
    try:
        pid = _process_of(name)
        while pid is not None:
            bound = _widen_bound(pid, port, done)
            if bound and settled:
                break
            settled = bool(bound)
            if time.monotonic() > deadline:
                log.warning("wireguard-go %s: no socket on port %d appeared; its buffers are left as they are",
                            name, port)
                break
            time.sleep(0.02)
    except OSError as e:
        log.warning("wireguard-go %s: could not widen its socket buffers: %s", name, e)
    return len(done)


def set_key(name: str, key: str) -> None:
    _run("wg", "set", name, "private-key", key)


def peers(name: str) -> dict[str, tuple[str, str]]:
    """public key -> (endpoint, allowed ips) of the link's peers."""
    out = {}
    for line in _run("wg", "show", name, "dump").splitlines()[1:]:
        pub, _psk, endpoint, allowed, *_ = line.split("\t")
        out[pub] = (endpoint, allowed)
    return out


def set_peers(name: str, add: list[tuple[str, str, str]], remove: list[str]) -> None:
    """One `wg set`: the peers `remove` (public keys) go, `add` ((public key, endpoint, allowed ip)) come
    or are updated."""
    argv = ["wg", "set", name]
    for pub in remove:
        argv += ["peer", pub, "remove"]
    for pub, endpoint, allowed in add:
        argv += ["peer", pub, "endpoint", endpoint, "allowed-ips", allowed]
    if len(argv) > 3:
        _run(*argv)


def delete(name: str) -> bool:
    """Remove the link (wireguard-go's process ends with it); True when it was there."""
    return subprocess.run(["ip", "link", "del", name], capture_output=True).returncode == 0
