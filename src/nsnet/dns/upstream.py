"""Where names that are not ours go: the upstream resolvers, as Docker reaches them.

Docker's rules (libnetwork resolver.go): at most 3 upstreams, tried in order; a loopback
upstream from the host's resolv.conf (systemd-resolved's 127.0.0.53) is reached from the
daemon's namespace, every other upstream from the sandbox's own namespace (so its routes and
firewall apply: a sandbox on an --internal network cannot reach the internet through us).
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass

MAX_UPSTREAMS = 3


@dataclass(frozen=True)
class UpstreamAddr:
    family: int
    sockaddr: tuple
    host_loopback: bool  # reach it from the daemon's namespace, not the sandbox's

    def __str__(self) -> str:
        return f"{self.sockaddr[0]}:{self.sockaddr[1]}"


def parse_upstream(spec: str) -> tuple[str, int]:
    """"192.0.2.53", "192.0.2.53:5353", "2001:db8::1", "[2001:db8::1]:5353" -> (host, port)."""
    spec = spec.strip()
    if spec.startswith("["):
        host, _, rest = spec[1:].partition("]")
        return host, int(rest[1:]) if rest.startswith(":") else 53
    if spec.count(":") == 1:
        host, port = spec.split(":")
        return host, int(port)
    return spec, 53


def resolve_upstreams(specs: list[str], from_host: bool, own_address: str) -> list[UpstreamAddr]:
    """Numeric addresses only (a resolver cannot ask DNS where DNS is). `from_host`: these come
    from the host's resolv.conf, so their loopback addresses mean the host's loopback."""
    out: list[UpstreamAddr] = []
    for spec in specs:
        try:
            host, port = parse_upstream(spec)
            ip = ipaddress.ip_address(host.split("%", 1)[0])
            info = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM, flags=socket.AI_NUMERICHOST)[0]
        except (ValueError, OSError):
            continue
        loop = from_host and ip.is_loopback
        if not loop and ip.is_loopback and host == own_address:
            continue  # inside the sandbox 127.0.0.11 is ourselves: forwarding there would loop
        out.append(UpstreamAddr(info[0], info[4], loop))
        if len(out) == MAX_UPSTREAMS:
            break
    return out
