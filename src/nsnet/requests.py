"""Parsing and checking what users ask for (pure: no kernel, no store)."""
from __future__ import annotations

import ipaddress
import re

from .errors import NsnetError
from .model import PortMapping, SubnetConfig

NAME_RE = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]*$")


def check_name(name: str, what: str) -> None:
    if not NAME_RE.match(name or ""):
        raise NsnetError(f"invalid {what} name {name!r}: only [a-zA-Z0-9][a-zA-Z0-9_.-] are allowed")


def parse_network(text: str, what: str):
    """A strict CIDR: `172.30.0.1/16` is refused with the network it should have been, as Docker does."""
    try:
        iface = ipaddress.ip_interface(text)
    except ValueError:
        raise NsnetError(f"invalid {what} {text!r}: give a CIDR such as 172.30.0.0/16") from None
    if "/" not in text:
        raise NsnetError(f"invalid {what} {text!r}: give a CIDR such as 172.30.0.0/16")
    if iface.ip != iface.network.network_address:
        raise NsnetError(f"invalid {what} {text}: it should be {iface.network}")
    return iface.network


def parse_address(text: str, what: str):
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        raise NsnetError(f"invalid {what} {text!r}: not an IP address") from None


def subnet_configs(subnets: list[str], gateways: list[str], ranges: list[str],
                   aux: dict[str, str], ipv6: bool) -> list[SubnetConfig]:
    """Pair each --gateway, --ip-range and --aux-address with the --subnet that holds it, as Docker does."""
    nets = [parse_network(s, "subnet") for s in subnets]
    for i, a in enumerate(nets):
        if a.version == 6 and not ipv6:
            raise NsnetError(f"subnet {a} is IPv6: pass --ipv6 to create a network with IPv6")
        for b in nets[:i]:
            if a.overlaps(b):
                raise NsnetError(f"subnets {b} and {a} overlap: give subnets that do not")
    configs = {n: SubnetConfig(subnet=str(n)) for n in nets}

    def holder(addr_or_net, what: str, value: str):
        for n in nets:
            inside = addr_or_net.subnet_of(n) if hasattr(addr_or_net, "subnet_of") else addr_or_net in n
            if addr_or_net.version == n.version and inside:
                return configs[n]
        raise NsnetError(f"no matching subnet for {what} {value}: it must lie inside one of the --subnet values")

    for g in gateways:
        cfg = holder(parse_address(g, "gateway"), "gateway", g)
        if cfg.gateway:
            raise NsnetError(f"cannot give two gateways for subnet {cfg.subnet}")
        cfg.gateway = g
    for r in ranges:
        cfg = holder(parse_network(r, "ip-range"), "range", r)
        if cfg.ip_range:
            raise NsnetError(f"cannot give two ip ranges for subnet {cfg.subnet}")
        cfg.ip_range = r
    for name, a in aux.items():
        cfg = holder(parse_address(a, "auxiliary address"), "auxiliary address", a)
        cfg.aux[name] = a
    return list(configs.values())


# [HOSTIP:][HOSTPORT:]PORT[/PROTO]; a host IP has dots (IPv4) or brackets (IPv6), a port has neither.
PORT_RE = re.compile(r"^(?:(?P<ip>\[[0-9a-fA-F:.]+\]|\d+\.[\d.]+):)?(?:(?P<hport>\d+)?:)?(?P<port>\d+)(?:/(?P<proto>\w+))?$")


def parse_port(spec: str, default_host_ip: str = "0.0.0.0") -> PortMapping:
    """`[HOSTIP:]HOSTPORT:PORT[/PROTO]` (or `PORT`, published on the same port number)."""
    m = PORT_RE.match(spec.strip())
    if not m:
        raise NsnetError(f"invalid port mapping {spec!r}: use [HOSTIP:]HOSTPORT:PORT[/tcp|udp]")
    proto = (m["proto"] or "tcp").lower()
    if proto not in ("tcp", "udp"):
        raise NsnetError(f"invalid protocol {proto!r} in {spec!r}: use tcp or udp")
    port = int(m["port"])
    host_port = int(m["hport"]) if m["hport"] else port
    for p in (port, host_port):
        if not 1 <= p <= 65535:
            raise NsnetError(f"invalid port {p} in {spec!r}: ports go from 1 to 65535")
    host_ip = (m["ip"] or default_host_ip).strip("[]")
    parse_address(host_ip, "host IP")
    return PortMapping(host_ip=host_ip, host_port=host_port, port=port, proto=proto)


def ports_clash(a: PortMapping, b: PortMapping) -> bool:
    """Would two publications fight over the same host socket?"""
    if a.proto != b.proto or a.host_port != b.host_port:
        return False
    wild = ("0.0.0.0", "::")
    return a.host_ip == b.host_ip or a.host_ip in wild or b.host_ip in wild
