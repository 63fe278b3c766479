"""Gather evidence of the address ranges in use, from the network namespace the caller runs in.

Run gather() in the thread whose namespace you mean: netlink goes through the IPRoute you pass
(open it in that namespace), and /proc is read through /proc/thread-self/net, which follows the
calling thread's namespace (/proc/self/net would follow the main thread's).
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import socket
import struct
import sys

from nsnet.facts import Evidence, as_network
from nsnet.resolvconf import nameservers

_NUD_KEEP = {0x02: "REACHABLE", 0x04: "STALE", 0x08: "DELAY", 0x10: "PROBE", 0x80: "PERMANENT"}
_RTN_SKIP = {2, 3, 4, 5}  # local, broadcast, anycast, multicast: the host's own, shown as addresses
_RT_SCOPE_LINK = 253
_MAIN_TABLE = 254
_TCP_ESTABLISHED, _TCP_LISTEN = "01", "0A"
_SERVICES = {22: "SSH"}
_BROADCAST = ipaddress.IPv4Address("255.255.255.255")
_SPECIAL = [ipaddress.ip_network(n) for n in ("127.0.0.0/8", "169.254.0.0/16", "224.0.0.0/4", "255.255.255.255/32",
                                              "::1/128", "::/128", "fe80::/10", "ff00::/8")]


def _netdir() -> str:
    return "/proc/thread-self/net" if os.path.exists("/proc/thread-self/net") else "/proc/self/net"


def _counts(ip) -> bool:
    """Loopback, link-local, multicast, unspecified and broadcast addresses never count."""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
        ip = ip.ipv4_mapped
    if ip.is_loopback or ip.is_link_local or ip.is_multicast or ip.is_unspecified:
        return False
    return not (ip.version == 4 and ip == _BROADCAST)


def _net_counts(net) -> bool:
    """Ranges inside loopback/link-local/multicast never count; neither do default-like routes
    (OpenVPN's 0.0.0.0/1 + 128.0.0.0/1, IPv6 2000::/3), which would block every candidate."""
    if net.prefixlen < (8 if net.version == 4 else 16):
        return False
    return not any(net.version == sp.version and net.subnet_of(sp) for sp in _SPECIAL)


def _host(ip) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    return ipaddress.ip_network(ip)


# -- netlink -----------------------------------------------------------------------------------

def _links(ipr) -> dict[int, str]:
    """Interface names by index. libc's if_nameindex() asks the calling thread's namespace and
    costs ~0.1 ms; pyroute2's get_links() parses every link attribute (~3 ms)."""
    try:
        return dict(socket.if_nameindex())
    except OSError:
        return {m["index"]: m.get("ifname") or f"if{m['index']}" for m in ipr.get_links()}


def addresses(ipr, links=None, msgs=None) -> list[Evidence]:
    links = links if links is not None else _links(ipr)
    out = []
    for m in (msgs if msgs is not None else ipr.get_addr()):
        dev = links.get(m["index"], f"if{m['index']}")
        local = m.get("local") or m.get("address")
        peer = m.get("address")
        if not local:
            continue
        iface = ipaddress.ip_interface(f"{local}/{m['prefixlen']}")
        if not _net_counts(iface.network):
            continue
        out.append(Evidence("address", iface.network, f"the network of {dev}'s address {iface}"))
        if peer and peer != local:  # point-to-point: the far end is in use too
            p = ipaddress.ip_address(peer)
            if _counts(p):
                out.append(Evidence("address", _host(p), f"the point-to-point peer of {dev}"))
    return out


def routes(ipr, links=None) -> list[Evidence]:
    links = links if links is not None else _links(ipr)
    out = []
    for m in ipr.route("dump"):
        if m["dst_len"] == 0 or m["type"] in _RTN_SKIP:
            continue  # default routes; the host's own local/broadcast entries
        dst = m.get("dst")
        if not dst:
            continue
        net = ipaddress.ip_network(f"{dst}/{m['dst_len']}", strict=False)
        if not _net_counts(net):
            continue
        table = m.get("table") or m["table"]
        onlink = m["family"] == socket.AF_INET and m["scope"] == _RT_SCOPE_LINK
        via = m.get("gateway")
        dev = links.get(m.get("oif"), "")
        text = ("an on-link route" if onlink else "a route") + f" to {net}"
        text += f" via {via}" if via else ""
        text += f" dev {dev}" if dev else ""
        text += f" (table {table})" if table != _MAIN_TABLE else ""
        if m["type"] != 1:
            text += " (unreachable/blackhole)"
        out.append(Evidence("route", net, text, onlink=onlink))
    return out


def neighbours(ipr, links=None) -> list[Evidence]:
    links = links if links is not None else _links(ipr)
    out = []
    for m in ipr.get_neighbours():
        state = _NUD_KEEP.get(m["state"])
        dst = m.get("dst")
        if not state or not dst:
            continue  # INCOMPLETE, FAILED, NOARP (multicast and the like)
        ip = ipaddress.ip_address(dst)
        if _counts(ip):
            dev = links.get(m["ifindex"], f"if{m['ifindex']}")
            out.append(Evidence("neighbour", _host(ip), f"a neighbour on {dev} ({state})"))
    return out


# -- /proc -------------------------------------------------------------------------------------

def _read(path: str) -> list[str]:
    """A /proc file's lines (seq_file hands out about a page per read(): loop to the end)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        chunks = []
        while chunk := os.read(fd, 1 << 20):
            chunks.append(chunk)
    finally:
        os.close(fd)
    return b"".join(chunks).decode("ascii", "replace").splitlines()


_NETLINK_SOCK_DIAG, _SOCK_DIAG_BY_FAMILY = 4, 20
_NLM_F_REQUEST, _NLM_F_DUMP, _NLMSG_ERROR, _NLMSG_DONE = 0x1, 0x300, 2, 3


def diag_tcp(family: int) -> list[tuple]:
    """Established and listening TCP sockets of the calling thread's namespace, via sock_diag:
    one walk of the kernel's socket hash with the state filter applied in the kernel (reading
    /proc/net/tcp walks it page by page, twice as slow). Same tuples as parse_tcp()."""
    states = (1 << 1) | (1 << 10)  # TCP_ESTABLISHED, TCP_LISTEN
    req = struct.pack("=BBBBI48x", family, socket.IPPROTO_TCP, 0, 0, states)
    msg = struct.pack("=IHHII", 16 + len(req), _SOCK_DIAG_BY_FAMILY, _NLM_F_REQUEST | _NLM_F_DUMP, 1, 0) + req
    alen = 4 if family == socket.AF_INET else 16
    out = []
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, _NETLINK_SOCK_DIAG) as nl:
        nl.settimeout(2)
        nl.sendto(msg, (0, 0))
        while True:
            data = nl.recv(1 << 16)
            off = 0
            while off + 16 <= len(data):
                length, kind = struct.unpack_from("=IH", data, off)
                if kind == _NLMSG_DONE:
                    return out
                if kind == _NLMSG_ERROR:
                    err = struct.unpack_from("=i", data, off + 16)[0]
                    raise OSError(-err, "sock_diag dump failed")
                state = data[off + 17]
                sport, dport = struct.unpack_from(">HH", data, off + 20)
                src = ipaddress.ip_address(data[off + 24:off + 24 + alen])
                dst = ipaddress.ip_address(data[off + 40:off + 40 + alen])
                if isinstance(src, ipaddress.IPv6Address):
                    src, dst = src.ipv4_mapped or src, dst.ipv4_mapped or dst
                out.append((src, sport, dst, dport, f"{state:02X}"))
                off += (length + 3) & ~3
            if not data:
                return out


def _hex_addr(text: str):
    """An address as /proc/net/tcp{,6} prints it: 32-bit words in host byte order."""
    raw = bytes.fromhex(text)
    if sys.byteorder == "little":
        raw = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
    ip = ipaddress.ip_address(raw)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
        return ip.ipv4_mapped
    return ip


def parse_tcp(lines) -> list[tuple]:
    """(local ip, local port, peer ip, peer port, state) from the lines of /proc/net/tcp{,6}."""
    out = []
    for line in lines:
        f = line.split()
        if len(f) < 4 or ":" not in f[1] or f[0] == "sl":
            continue
        la, lp = f[1].split(":")
        ra, rp = f[2].split(":")
        out.append((_hex_addr(la), int(lp, 16), _hex_addr(ra), int(rp, 16), f[3]))
    return out


def tcp_peers(netdir: str | None = None) -> list[Evidence]:
    """Peers of established TCP connections. Asks sock_diag; reads /proc/net/tcp{,6} when given
    a `netdir` (tests) or when sock_diag is unavailable."""
    socks = []
    for family, name in ((socket.AF_INET, "tcp"), (socket.AF_INET6, "tcp6")):
        try:
            if netdir is None:
                socks += diag_tcp(family)
                continue
        except OSError:
            pass
        try:
            socks += parse_tcp(_read(os.path.join(netdir or _netdir(), name)))
        except OSError:
            continue

    def fmt(ip, port):
        return f"[{ip}]:{port}" if ip.version == 6 else f"{ip}:{port}"

    listening = {lp for _, lp, _, _, st in socks if st == _TCP_LISTEN}
    # A peer with several connections is named by the one it made to us (an SSH login) first.
    socks.sort(key=lambda s: (s[1] not in listening, s[1] != 22))
    out, seen = [], set()
    for lip, lport, rip, rport, st in socks:
        if st != _TCP_ESTABLISHED or not _counts(rip) or rip in seen:
            continue
        seen.add(rip)
        if lport in listening:  # the host is the server: someone came to us
            proto = _SERVICES.get(lport, "TCP")
            detail = f"the peer of a live {proto} connection to {fmt(lip, lport)}"
        else:
            proto = _SERVICES.get(rport, "TCP")
            detail = f"the peer of a live {proto} connection from {fmt(lip, lport)} to port {rport}"
        out.append(Evidence("peer", _host(rip), detail))
    return out


_CT = re.compile(r"^\S+\s+\d+\s+(\S+)\s+\d+\s+\d+\s+(?:([A-Z_]+)\s+)?src=(\S+) dst=(\S+) "
                 r"(?:sport=(\d+) dport=(\d+) )?")
_CT_ADDR = re.compile(r"(?:src|dst)=(\S+)")


def conntrack(netdir: str | None = None, own=frozenset(), limit: int = 50000) -> list[Evidence]:
    """Parties of tracked connections other than the host itself; silent when unreadable."""
    netdir = netdir or _netdir()
    out, seen = [], set(own)
    try:
        lines = _read(os.path.join(netdir, "nf_conntrack"))
    except OSError:
        return out
    for line in lines[:limit]:
        m = _CT.match(line)
        if not m:
            continue
        proto, state, src, dst, sport, dport = m.groups()
        if proto == "igmp":  # group membership reports a bridge sends itself: they outlive it by minutes
            continue
        for ip_text in _CT_ADDR.findall(line):  # the reply tuple too: DNAT'd backends
            try:
                ip = ipaddress.ip_address(ip_text)
            except ValueError:
                continue
            if ip in seen or not _counts(ip):
                continue
            seen.add(ip)
            conn = f"{src}:{sport} to {dst}:{dport}" if sport else f"{src} to {dst}"
            st = f" {state}" if state else ""
            out.append(Evidence("conntrack", _host(ip), f"a party of a tracked {proto}{st} connection {conn}"))
    return out


def resolvers(path: str = "/etc/resolv.conf") -> list[Evidence]:
    out = []
    for server in nameservers(path):
        try:
            ip = ipaddress.ip_address(server.split("%")[0])
        except ValueError:
            continue
        if _counts(ip):
            out.append(Evidence("resolver", _host(ip), f"a nameserver in {path}"))
    return out


def docker_socket() -> str | None:
    """Where Docker's engine answers, as Docker's own clients find it: DOCKER_HOST when it names a unix
    socket (another scheme: nothing we can ask), else /var/run/docker.sock."""
    host = os.environ.get("DOCKER_HOST")
    if not host:
        return "/var/run/docker.sock"
    return host[len("unix://"):] if host.startswith("unix://") else None


def docker_list(sock_path: str | None, timeout: float = 0.25) -> list[tuple]:
    """(name, id, [subnets]) of Docker's networks, when a Docker engine answers on its socket; else []."""
    if not sock_path or not os.path.exists(sock_path):
        return []
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(timeout)
            s.connect(sock_path)
            s.sendall(b"GET /networks HTTP/1.0\r\nHost: docker\r\n\r\n")
            chunks = []
            while True:
                b = s.recv(65536)
                if not b:
                    break
                chunks.append(b)
        head, _, body = b"".join(chunks).partition(b"\r\n\r\n")
        if b" 200 " not in head.split(b"\r\n", 1)[0] + b" ":
            return []
        nets = json.loads(body)
    except (OSError, ValueError):
        return []
    out = []
    for n in nets if isinstance(nets, list) else []:
        subnets = []
        for cfg in ((n.get("IPAM") or {}).get("Config") or []):
            try:
                subnets.append(ipaddress.ip_network(cfg.get("Subnet") or "", strict=False))
            except ValueError:
                continue
        out.append((str(n.get("Name", "?")), str(n.get("Id", "")), subnets))
    return out


def docker_evidence(listing) -> list[Evidence]:
    return [Evidence("docker", net, f"the subnet of Docker network '{name}'") for name, _, subnets in listing
            for net in subnets]


def docker_networks(sock_path: str | None, timeout: float = 0.25) -> list[Evidence]:
    """Subnets of Docker's networks, when a Docker engine answers on its socket; else nothing."""
    return docker_evidence(docker_list(sock_path, timeout))


def _named(items, kind: str, label) -> list[Evidence]:
    out = []
    for item in items:
        if isinstance(item, tuple):
            name, net = item
            out.append(Evidence(kind, as_network(net), label(name)))
        else:
            out.append(Evidence(kind, as_network(item), label(None)))
    return out


def gather(ipr, *, reserved=(), nsnet_subnets=(), docker_socket: str | None,
           resolv_conf="/etc/resolv.conf") -> list[Evidence]:
    """All evidence of ranges in use, as seen from the calling thread's network namespace.
    `reserved` and `nsnet_subnets` take networks or (name, network) pairs."""
    links = _links(ipr)
    addr_msgs = list(ipr.get_addr())
    ev = addresses(ipr, links, addr_msgs)
    # The host's own addresses are not peers (a connection to itself over eth0).
    own = {ipaddress.ip_address(m.get("local") or m.get("address")) for m in addr_msgs
           if m.get("local") or m.get("address")}
    ev += routes(ipr, links)
    ev += [e for e in tcp_peers() if e.network.network_address not in own]
    ev += conntrack(own=own)
    ev += neighbours(ipr, links)
    ev += resolvers(resolv_conf)
    ev += docker_networks(docker_socket)
    ev += _named(reserved, "reserved", lambda n: "a range reserved in nsnet's configuration"
                 + (f" ({n})" if n else ""))
    ev += _named(nsnet_subnets, "nsnet", lambda n: f"the subnet of nsnet network '{n}'" if n
                 else "the subnet of an nsnet network")
    return ev
