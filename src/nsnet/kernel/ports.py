"""Published ports hold a bound socket on the host, so that nothing else can take the port while
the sandbox has it, and a port already taken is refused before anything is built. A mapping without
a host port (`-p 127.0.0.1::80`) gets the free ephemeral port the kernel binds it to, as Docker's."""
from __future__ import annotations

import errno
import ipaddress
import socket

from ..errors import Conflict
from ..model import PortMapping


def hold(p: PortMapping, shared: bool = False) -> socket.socket:
    """`shared`: with SO_REUSEADDR, for a CNI runtime that binds the port itself to reserve it (Podman): its
    socket and ours may both hold it (ours never listens). So may any other program that sets SO_REUSEADDR;
    the DNAT rules still send the port's traffic to the container."""
    ip = ipaddress.ip_address(p.host_ip)
    family = socket.AF_INET if ip.version == 4 else socket.AF_INET6
    kind = socket.SOCK_STREAM if p.proto == "tcp" else socket.SOCK_DGRAM
    s = socket.socket(family, kind)
    if shared:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if family == socket.AF_INET6:
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    try:
        s.bind((p.host_ip, p.host_port))
    except OSError as e:
        s.close()
        if e.errno == errno.EADDRINUSE:
            raise Conflict(f"cannot publish {p.host_ip}:{p.host_port}/{p.proto}: the port is already in use on the host") from None
        if e.errno == errno.EADDRNOTAVAIL:
            raise Conflict(f"cannot publish on {p.host_ip}: it is not an address of this host") from None
        raise
    if p.host_port == 0:
        p.host_port = s.getsockname()[1]
    return s
