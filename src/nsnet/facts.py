"""What nsnet reads of a host, as plain data: evidence that an address range is in use, links, routes,
neighbours, the kernel's route lookup, Docker's networks.

The kernel-side readers (nsnet.kernel.probe, nsnet.kernel.hostview) build these; the pure logic above them
(nsnet.ipam, nsnet.doctor) judges them. Kept here, below both, so that `kernel` imports nothing above it.
"""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address
MAIN_TABLE = 254
RTN_UNICAST = 1
ROUTE_TYPE_NAMES = {6: "blackhole", 7: "unreachable", 8: "prohibit", 9: "throw"}

# Ordered by how bad it is to break: a live peer (the person typing) first.
KINDS = ("peer", "resolver", "neighbour", "conntrack", "address", "route",
         "reserved", "docker", "nsnet")

def as_network(value) -> Network:
    """A network from a network, an address (as a /32 or /128) or their text (host bits allowed)."""
    if isinstance(value, (ipaddress.IPv4Network, ipaddress.IPv6Network)):
        return value
    return ipaddress.ip_network(value, strict=False)


@dataclass(frozen=True)
class Evidence:
    """One range seen in use. `detail` is a noun phrase ("the peer of a live SSH connection to
    172.42.10.112:22") so explain() can build a sentence. `onlink` marks an IPv4 on-link route:
    Docker's own allocator avoids those, which the Compose prediction needs to know."""

    kind: str
    network: Network
    detail: str
    onlink: bool = field(default=False, compare=False)

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"unknown evidence kind {self.kind!r}; expected one of {', '.join(KINDS)}")
        if not isinstance(self.network, (ipaddress.IPv4Network, ipaddress.IPv6Network)):
            object.__setattr__(self, "network", as_network(self.network))


@dataclass(frozen=True)
class Link:
    name: str
    kind: str | None = None          # IFLA_INFO_KIND ("bridge", "veth", ...); None for a plain NIC
    alias: str | None = None
    addresses: tuple = ()            # ipaddress interfaces


@dataclass(frozen=True)
class Route:
    network: Network
    dev: str | None = None
    gateway: Address | None = None
    table: int = MAIN_TABLE
    type: int = RTN_UNICAST
    metric: int = 0

    def __str__(self) -> str:
        out = "default" if self.network.prefixlen == 0 else str(self.network)
        if self.type != RTN_UNICAST:
            out = f"{ROUTE_TYPE_NAMES.get(self.type, f'type {self.type}')} {out}"
        out += f" via {self.gateway}" if self.gateway else ""
        out += f" dev {self.dev}" if self.dev else ""
        return out + (f" table {self.table}" if self.table != MAIN_TABLE else "")

    def as_dict(self) -> dict:
        return {"Route": str(self), "Destination": str(self.network), "Dev": self.dev,
                "Gateway": str(self.gateway) if self.gateway else None, "Table": self.table}


@dataclass(frozen=True)
class Neighbour:
    ip: Address
    dev: str
    state: str


@dataclass(frozen=True)
class KernelAnswer:
    """The kernel's own route lookup for one destination (RTM_GETROUTE, `ip route get`)."""
    dev: str | None = None
    gateway: Address | None = None
    source: Address | None = None
    error: str | None = None         # "Network is unreachable" and the like

    def __str__(self) -> str:
        if self.error:
            return self.error
        out = f"via {self.gateway} " if self.gateway else ""
        out += f"dev {self.dev}" if self.dev else ""
        return out + (f" src {self.source}" if self.source else "")


@dataclass(frozen=True)
class DockerNetwork:
    name: str
    id: str
    subnets: tuple = ()


@dataclass
class HostFacts:
    """Everything one read of a host's kernel gives `nsnet doctor`."""
    links: dict[str, Link]
    routes: list[Route]
    neighbours: list[Neighbour]
    evidence: list[Evidence]
    docker: list[DockerNetwork] = field(default_factory=list)
