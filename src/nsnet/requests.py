"""Parsing and checking what users ask for (pure: no kernel, no store).

Every frontend (CLI, API) reaches the engine, and the engine checks a request here before it saves
or builds anything: a bad value is refused once, in one line, with what to give instead.
"""
from __future__ import annotations

import ipaddress
import re

from .errors import NsnetError
from .model import PortMapping, SubnetConfig

# Docker's rule for container and network names. fullmatch: `$` would also match before a final "\n".
NAME_RE = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_.-]*")
# RFC 1123 host name label: letters, digits, hyphens inside; a digit may lead.
LABEL_RE = re.compile(r"[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?")
MAX_LABEL = 63          # RFC 1035: one label of a DNS name
MAX_DNS_NAME = 253      # RFC 1035: a whole name, written with dots
MAX_HOSTNAME = 63       # the UTS host name: the kernel takes 64 bytes; 63 keeps it one DNS label long too
IFNAMSIZ = 15           # bytes of an interface name (the kernel's IFNAMSIZ is 16 with the NUL)
# Interface names: what Docker effectively lets through. The kernel takes more (quotes, '*', '@'...),
# but a name ends up in nftables rules (where '*' is a wildcard and '"' ends the string), /proc/sys
# paths and log lines.
IFNAME_RE = re.compile(r"[a-zA-Z0-9_.-]+")
# Names the kernel reserves in /proc/sys/net/*/conf: a link named so would get the host-wide settings.
RESERVED_IFNAMES = frozenset({".", "..", "all", "default"})
CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")
RESTART_CONDITIONS = ("any", "on-failure", "none")   # a service's tasks: Docker's --restart-condition


def check_name(name: str, what: str) -> None:
    """A sandbox, network or alias name: Docker's characters, and a DNS name (each is looked up by the
    embedded resolver: a label over 63 bytes or an empty one could never be asked for)."""
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        raise NsnetError(f"invalid {what} name {name!r}: only [a-zA-Z0-9][a-zA-Z0-9_.-] are allowed")
    why = _dns_name_problem(name)
    if why:
        raise NsnetError(f"invalid {what} name {name!r}: {why}")


def _dns_name_problem(name: str) -> str | None:
    if len(name) > MAX_DNS_NAME:
        return f"it is {len(name)} characters; a DNS name has at most {MAX_DNS_NAME}"
    for label in name.split("."):
        if not label:
            return "it has an empty label (two dots in a row, or a dot at the end)"
        if len(label) > MAX_LABEL:
            return f"its label {label[:12]}… is {len(label)} characters; a DNS label has at most {MAX_LABEL}"
    return None


def check_hostname(hostname: str) -> None:
    """The sandbox's UTS host name, also written into its /etc/hosts and served by the resolver:
    an RFC 1123 host name that fits the kernel."""
    if not isinstance(hostname, str) or not hostname:
        raise NsnetError(f"invalid hostname {hostname!r}: give a host name such as web-1")
    if len(hostname.encode()) > MAX_HOSTNAME:
        raise NsnetError(f"invalid hostname {hostname[:20]!r}…: it is {len(hostname.encode())} bytes; "
                         f"at most {MAX_HOSTNAME}")
    for label in hostname.split("."):
        if not LABEL_RE.fullmatch(label):
            raise NsnetError(f"invalid hostname {hostname!r}: each dot-separated part must be letters, digits "
                             f"and inner hyphens (RFC 1123)")


def ifname_problem(name: str) -> str | None:
    """Why `name` cannot be an interface name nsnet makes or uses, or None."""
    if not isinstance(name, str) or not name:
        return f"interface name {name!r} is empty"
    if len(name.encode()) > IFNAMSIZ:
        return f"interface name {name!r} is {len(name.encode())} bytes; the kernel allows at most {IFNAMSIZ}"
    if not IFNAME_RE.fullmatch(name):
        return f"interface name {name!r} may only have the characters [A-Za-z0-9_.-]"
    if name in RESERVED_IFNAMES:
        return f"interface name {name!r} is reserved by the kernel"
    return None


def check_text(value, what: str) -> None:
    """Free text that is stored and shown (labels, option values): a string, one line."""
    if not isinstance(value, str):
        raise NsnetError(f"invalid {what} {value!r}: give a string")
    if CONTROL_RE.search(value):
        raise NsnetError(f"invalid {what} {value!r}: control characters (newline, NUL…) are not allowed")


def check_labels(labels: dict, what: str = "label") -> None:
    for key, value in labels.items():
        check_text(key, f"{what} key")
        if not key:
            raise NsnetError(f"invalid {what} {key}={value!r}: the key is empty")
        check_text(value, f"{what} value of {key}")


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


# Ranges no network may overlap: the kernel (or every host) gives them another meaning.
SPECIAL = [(ipaddress.ip_network(n), why) for n, why in (
    ("0.0.0.0/8", "\"this network\" (0.0.0.0/8): no host may have these addresses"),
    ("127.0.0.0/8", "loopback: the kernel keeps it on lo (127.0.0.11 is the sandboxes' resolver)"),
    ("169.254.0.0/16", "link-local: the kernel and clouds use it per link (169.254.169.254 is the metadata service)"),
    ("224.0.0.0/4", "multicast: no host may have these addresses"),
    ("255.255.255.255/32", "the limited broadcast address"),
    ("::/127", "the unspecified and loopback IPv6 addresses"),
    ("::ffff:0:0/96", "IPv4-mapped IPv6 addresses: sockets use them for IPv4"),
    ("fe80::/10", "IPv6 link-local: every link has these addresses of its own"),
    ("ff00::/8", "IPv6 multicast: no host may have these addresses"),
)]
# A subnet must hold its gateway and at least one sandbox beside the network (IPv6: subnet-router
# anycast) and broadcast addresses.
MAX_PREFIX = {4: 30, 6: 126}


def check_subnet(net) -> None:
    for special, why in SPECIAL:
        if net.version == special.version and net.overlaps(special):
            raise NsnetError(f"subnet {net} cannot be used: it overlaps {special}, {why}")
    if net.prefixlen > MAX_PREFIX[net.version]:
        raise NsnetError(f"subnet {net} is too small: it must hold a gateway and a sandbox besides its network "
                         f"{'and broadcast addresses' if net.version == 4 else 'address'}; give /"
                         f"{MAX_PREFIX[net.version]} or larger")


def subnet_configs(subnets: list[str], gateways: list[str], ranges: list[str],
                   aux: dict[str, str], ipv6: bool) -> list[SubnetConfig]:
    """Pair each --gateway, --ip-range and --aux-address with the --subnet that holds it, as Docker does."""
    nets = [parse_network(s, "subnet") for s in subnets]
    for i, a in enumerate(nets):
        check_subnet(a)
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
        check_text(name, "auxiliary address name")
        if not name:
            raise NsnetError(f"invalid auxiliary address ={a}: give it a name, e.g. --aux-address printer={a}")
        addr = parse_address(a, "auxiliary address")
        cfg = holder(addr, "auxiliary address", a)
        subnet = ipaddress.ip_network(cfg.subnet)
        edges = {subnet.network_address: "network"}
        if subnet.version == 4:
            edges[subnet.broadcast_address] = "broadcast"
        if subnet.num_addresses > 2 and addr in edges:
            which = edges[addr]
            raise NsnetError(f"auxiliary address {name}={a} is the {which} address of {subnet}: it is never "
                             f"handed out anyway; give a host address")
        cfg.aux[name] = a
    return list(configs.values())


# [HOSTIP:][HOSTPORT]:PORT[/PROTO] or PORT[/PROTO], as Docker writes them. A host IP has dots (IPv4) or
# brackets (IPv6), a port has neither; ranges (8000-8010) are matched only to be refused by name.
PORT_RE = re.compile(r"(?:(?P<ip>\[[^\]]*\]|\d+\.[\d.]+):)?(?:(?P<hport>\d+(?:-\d+)?)?(?P<hsep>:))?"
                     r"(?P<port>\d+(?:-\d+)?)(?:/(?P<proto>\w+))?")
PROTOCOLS = ("tcp", "udp")
EPHEMERAL = 0  # host port 0: the kernel picks a free one when the port is held (kernel/ports.py)


def parse_port(spec: str, default_host_ip: str = "0.0.0.0") -> PortMapping:
    """`[HOSTIP:][HOSTPORT]:PORT[/PROTO]` or `PORT[/PROTO]`. Without a host port (`-p 80`, `-p 127.0.0.1::80`)
    the host port is a free ephemeral one, as Docker has it."""
    usage = "use [HOSTIP:][HOSTPORT:]PORT[/tcp|udp], e.g. 8080:80 or 127.0.0.1::80"
    m = PORT_RE.fullmatch(spec.strip()) if isinstance(spec, str) else None
    if not m or (m["ip"] and not m["hsep"]):
        raise NsnetError(f"invalid port mapping {spec!r}: {usage}")
    if "-" in m["port"] or "-" in (m["hport"] or ""):
        raise NsnetError(f"invalid port mapping {spec!r}: port ranges are not supported; publish each port with "
                         f"its own -p")
    proto = (m["proto"] or "tcp").lower()
    if proto not in PROTOCOLS:
        raise NsnetError(f"invalid protocol {proto!r} in {spec!r}: nsnet publishes tcp and udp ports")
    port = int(m["port"])
    host_port = int(m["hport"]) if m["hport"] else EPHEMERAL
    for p in (port, host_port) if m["hport"] else (port,):
        if not 1 <= p <= 65535:
            raise NsnetError(f"invalid port {p} in {spec!r}: ports go from 1 to 65535")
    host_ip = m["ip"] or default_host_ip
    if host_ip.startswith("["):
        raise NsnetError(f"cannot publish on the IPv6 address {host_ip} in {spec!r}: nsnet publishes ports on IPv4 "
                         f"(DNAT to the sandbox's IPv4 address); give an IPv4 host IP or none")
    ip = parse_address(host_ip, "host IP")
    if ip.is_multicast or ip == ipaddress.IPv4Address("255.255.255.255"):
        raise NsnetError(f"cannot publish on {ip} in {spec!r}: give an address of this host, or none for all")
    return PortMapping(host_ip=host_ip, host_port=host_port, port=port, proto=proto)


def ports_clash(a: PortMapping, b: PortMapping) -> bool:
    """Would two publications fight over the same host socket?"""
    if a.proto != b.proto or a.host_port != b.host_port or a.host_port == EPHEMERAL:
        return False  # ephemeral ports are picked free by the kernel
    wild = ("0.0.0.0", "::")
    return a.host_ip == b.host_ip or a.host_ip in wild or b.host_ip in wild
