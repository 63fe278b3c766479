"""A host's swarm settings: what `swarm init`/`join` asked for, checked, and kept in `$NSNET_ROOT/swarm.json`
(0600: it may hold etcd's password) so that a restarted daemon rejoins by itself."""
from __future__ import annotations

import fcntl
import ipaddress
import json
import os
import socket
import struct
from dataclasses import asdict, dataclass, field

from ..errors import NsnetError

FILE = "swarm.json"
DEFAULT_POOLS = ["10.0.0.0/8"]   # Docker's default-addr-pool and its mask length
DEFAULT_MASK = 24
DATA_PATH_PORT = 4789            # VXLAN's IANA port, Docker's default
SIOCGIFADDR = 0x8915


@dataclass
class Settings:
    endpoints: list[str]             # http(s)://host:port, tried in order
    advertise_addr: str              # an address, resolved from an interface name when one was given
    node_name: str
    ca: str | None = None
    cert: str | None = None
    key: str | None = None
    user: str | None = None
    password: str | None = None
    pools: list[str] = field(default_factory=lambda: list(DEFAULT_POOLS))
    mask: int = DEFAULT_MASK
    data_path_port: int = DATA_PATH_PORT

    def store_args(self) -> dict:
        """EtcdKV's keyword arguments."""
        return {"ca": self.ca, "cert": self.cert, "key": self.key, "user": self.user, "password": self.password}


def endpoints(url: str, tls: bool) -> list[str]:
    """`etcd://HOST:PORT[,HOST:PORT…]` → etcd's endpoints (https when TLS files are given)."""
    scheme, sep, rest = url.partition("://")
    if not sep or scheme != "etcd":
        raise NsnetError(f"unknown store URL {url[:200]!r}: use etcd://HOST:PORT[,HOST:PORT…]")
    out = []
    for hostport in rest.rstrip("/").split(","):
        host, _, port = hostport.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536 or "/" in hostport or "@" in hostport:
            raise NsnetError(f"store URL {url[:200]!r}: {hostport[:100]!r} is not HOST:PORT")
        out.append(f"{'https' if tls else 'http'}://{host}:{port}")
    return out


def advertise_address(addr: str) -> str:
    """An IP address as given, or an interface's (first IPv4) address."""
    try:
        return str(ipaddress.ip_address(addr))
    except ValueError:
        pass
    if not addr or len(addr) > 15 or "/" in addr:
        raise NsnetError(f"advertise address {addr[:100]!r} is neither an IP address nor an interface name")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            raw = fcntl.ioctl(s.fileno(), SIOCGIFADDR, struct.pack("256s", addr.encode()))
        except OSError as e:
            why = "no such interface" if e.errno == 19 else "it has no IPv4 address" if e.errno == 99 else e.strerror
            raise NsnetError(f"advertise address {addr!r}: {why}") from None
    return socket.inet_ntoa(raw[20:24])


def pools(cidrs: list[str], mask: int) -> list[str]:
    out = []
    for cidr in cidrs:
        try:
            net = ipaddress.ip_network(cidr)
        except ValueError:
            raise NsnetError(f"default address pool {cidr[:100]!r} is not a subnet (e.g. 10.0.0.0/8)") from None
        if mask < net.prefixlen or mask > net.max_prefixlen:
            raise NsnetError(f"default address pool mask length {mask} does not fit in pool {net}")
        out.append(str(net))
    return out


def check_port(port: int) -> int:
    if not 1024 <= port <= 49151:   # Docker's bounds for --data-path-port
        raise NsnetError(f"data path port {port} must be in the range 1024 to 49151")
    return port


def load(root: str) -> Settings | None:
    try:
        with open(os.path.join(root, FILE)) as f:
            return Settings(**json.load(f))
    except FileNotFoundError:
        return None


def save(root: str, settings: Settings) -> None:
    path = os.path.join(root, FILE)
    tmp = f"{path}.tmp{os.getpid()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(asdict(settings), f, indent=2)
    os.replace(tmp, path)   # a crash leaves the old file or the new one, never half of one


def remove(root: str) -> None:
    try:
        os.unlink(os.path.join(root, FILE))
    except FileNotFoundError:
        pass
