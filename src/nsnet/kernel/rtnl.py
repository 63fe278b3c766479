"""A small synchronous rtnetlink channel for the attach and detach path.

pyroute2 stays the engine's netlink library for everything else. On the hot path its cost is its own
machinery, not the kernel's: encoding a veth request takes ~240 µs, and every request goes through an
asyncio loop (profile: pyroute2 alone 3.4 ms per attach, the kernel 0.6 ms). Here a request is a few
`struct.pack`s, a whole step goes to the kernel in one sendmsg (the kernel runs the messages in order
and acknowledges each), and errors come back as nsnet's KernelError (with the errno as `code`).
The message layouts are checked byte for byte against pyroute2's encoder in tests/unit/test_rtnl.py.

A channel's socket lives in the namespace the calling thread was in when it was opened.
"""
from __future__ import annotations

import ipaddress
import os
import socket
import struct

from ..errors import KernelError

# <linux/netlink.h>, <linux/rtnetlink.h>, <linux/if_link.h>, <linux/if_addr.h>, <linux/veth.h>
NLMSG_ERROR = 2
NLM_F_REQUEST, NLM_F_ACK, NLM_F_REPLACE, NLM_F_EXCL, NLM_F_CREATE = 0x1, 0x4, 0x100, 0x200, 0x400
NLM_F_ACK_TLVS = 0x200            # in an error's header flags: extended-ack attributes follow
NETLINK_CAP_ACK = 10              # socket option: an error echoes only the request's header
NETLINK_EXT_ACK = 11              # socket option: the kernel says why, in words
NLMSGERR_ATTR_MSG = 1
RTM_NEWLINK, RTM_DELLINK, RTM_GETLINK, RTM_NEWADDR, RTM_NEWROUTE = 16, 17, 18, 20, 24
IFLA_ADDRESS, IFLA_IFNAME, IFLA_MTU, IFLA_LINK, IFLA_MASTER, IFLA_LINKINFO = 1, 3, 4, 5, 10, 18
IFLA_AF_SPEC, IFLA_NET_NS_FD = 26, 28
IFLA_INET6_ADDR_GEN_MODE, IN6_ADDR_GEN_MODE_NONE = 8, 1
ENODEV, EEXIST, EAFNOSUPPORT = 19, 17, 97
IFLA_INFO_KIND, IFLA_INFO_DATA, IFLA_INFO_SLAVE_KIND, IFLA_INFO_SLAVE_DATA = 1, 2, 4, 5
IFLA_BRPORT_ISOLATED = 33
VETH_INFO_PEER = 1
IFA_ADDRESS, IFA_LOCAL, IFA_BROADCAST = 1, 2, 4
IFA_F_NODAD = 0x02
RTA_DST, RTA_GATEWAY = 1, 5
RT_TABLE_MAIN, RTPROT_BOOT, RT_SCOPE_UNIVERSE, RTN_UNICAST = 254, 3, 0, 1
IFF_UP = 0x1
SOL_NETLINK = 270

_NLMSGHDR = struct.Struct("=IHHII")       # length, type, flags, seq, pid
_IFINFOMSG = struct.Struct("=BxHiII")     # family, type, index, flags, change
_IFADDRMSG = struct.Struct("=BBBBi")      # family, prefixlen, flags, scope, index
_RTMSG = struct.Struct("=BBBBBBBBI")      # family, dst_len, src_len, tos, table, protocol, scope, type, flags
_RTATTR = struct.Struct("=HH")


def _align(n: int) -> int:
    return (n + 3) & ~3


def attr(kind: int, payload: bytes) -> bytes:
    """One rtattr, padded to 4 bytes."""
    length = _RTATTR.size + len(payload)
    return _RTATTR.pack(length, kind) + payload + b"\0" * (_align(length) - length)


def attr_str(kind: int, text: str) -> bytes:
    return attr(kind, text.encode() + b"\0")


def attr_u32(kind: int, value: int) -> bytes:
    return attr(kind, struct.pack("=I", value))


def _mac(mac: str) -> bytes:
    return bytes.fromhex(mac.replace(":", ""))


class Request:
    """One netlink message before the channel gives it a sequence number."""
    __slots__ = ("type", "flags", "body")

    def __init__(self, type: int, flags: int, body: bytes):
        self.type, self.flags, self.body = type, flags, body


def new_veth(name: str, *, peer_name: str, peer_netns_fd: int, peer_mac: str | None = None,
             mtu: int | None = None) -> Request:
    """The veth pair in one message: this end down and on no bridge yet, the peer created directly
    inside the namespace of `peer_netns_fd` (down until it is configured there)."""
    peer = attr_str(IFLA_IFNAME, peer_name) + attr_u32(IFLA_NET_NS_FD, peer_netns_fd)
    if peer_mac:
        peer += attr(IFLA_ADDRESS, _mac(peer_mac))
    if mtu:
        peer += attr_u32(IFLA_MTU, mtu)
    info = attr_str(IFLA_INFO_KIND, "veth") + attr(IFLA_INFO_DATA, attr(VETH_INFO_PEER, _IFINFOMSG.pack(0, 0, 0, 0, 0) + peer))
    body = _IFINFOMSG.pack(0, 0, 0, 0, 0) + attr_str(IFLA_IFNAME, name)
    if mtu:
        body += attr_u32(IFLA_MTU, mtu)
    body += attr(IFLA_LINKINFO, info)
    return Request(RTM_NEWLINK, NLM_F_CREATE | NLM_F_EXCL, body)


def enslave(index: int, master: int) -> Request:
    """Link `index` onto bridge (or other master) `master`."""
    return Request(RTM_NEWLINK, 0, _IFINFOMSG.pack(0, 0, index, 0, 0) + attr_u32(IFLA_MASTER, master))


def isolate_port(index: int) -> Request:
    """Bridge port `index` isolated: it forwards no frame to another isolated port (ICC off)."""
    data = attr(IFLA_BRPORT_ISOLATED, b"\x01")
    info = attr_str(IFLA_INFO_SLAVE_KIND, "bridge") + attr(IFLA_INFO_SLAVE_DATA, data)
    return Request(RTM_NEWLINK, 0, _IFINFOMSG.pack(0, 0, index, 0, 0) + attr(IFLA_LINKINFO, info))


def get_link(name: str) -> Request:
    return Request(RTM_GETLINK, 0, _IFINFOMSG.pack(0, 0, 0, 0, 0) + attr_str(IFLA_IFNAME, name))


def get_link_by_index(index: int) -> Request:
    return Request(RTM_GETLINK, 0, _IFINFOMSG.pack(0, 0, index, 0, 0))


def del_link(name: str) -> Request:
    return Request(RTM_DELLINK, 0, _IFINFOMSG.pack(0, 0, 0, 0, 0) + attr_str(IFLA_IFNAME, name))


def no_link_local(*, name: str | None = None, index: int = 0) -> Request:
    """No IPv6 link-local address on this link (addr_gen_mode none). Sent before the link has carrier,
    it keeps the link from ever starting IPv6 (DAD, router solicitations, MLD reports that a bridge
    floods to every port). Refused with EAFNOSUPPORT where the kernel runs without IPv6."""
    body = _IFINFOMSG.pack(0, 0, index, 0, 0)
    if name:
        body += attr_str(IFLA_IFNAME, name)
    spec = attr(socket.AF_INET6, attr(IFLA_INET6_ADDR_GEN_MODE, bytes([IN6_ADDR_GEN_MODE_NONE])))
    return Request(RTM_NEWLINK, 0, body + attr(IFLA_AF_SPEC, spec))


def link_up(index: int) -> Request:
    return Request(RTM_NEWLINK, 0, _IFINFOMSG.pack(0, 0, index, IFF_UP, IFF_UP))


def new_address(index: int, cidr: str) -> Request:
    """An address as `ip addr add` gives it (IPv4 with its broadcast; IPv6 without DAD: the address
    is the sandbox's alone, and DAD would hold back its first packets)."""
    iface = ipaddress.ip_interface(cidr)
    ip = iface.ip.packed
    if iface.version == 4:
        family, flags = socket.AF_INET, 0
        attrs = attr(IFA_LOCAL, ip) + attr(IFA_ADDRESS, ip)
        if iface.network.prefixlen < 31:
            attrs += attr(IFA_BROADCAST, iface.network.broadcast_address.packed)
    else:
        family, flags = socket.AF_INET6, IFA_F_NODAD
        attrs = attr(IFA_ADDRESS, ip)
    return Request(RTM_NEWADDR, NLM_F_CREATE | NLM_F_EXCL,
                   _IFADDRMSG.pack(family, iface.network.prefixlen, flags, 0, index) + attrs)


def default_route(gateway: str) -> Request:
    """`ip route replace default via GATEWAY` in the main table."""
    gw = ipaddress.ip_address(gateway)
    family = socket.AF_INET if gw.version == 4 else socket.AF_INET6
    body = _RTMSG.pack(family, 0, 0, 0, RT_TABLE_MAIN, RTPROT_BOOT, RT_SCOPE_UNIVERSE, RTN_UNICAST, 0)
    return Request(RTM_NEWROUTE, NLM_F_CREATE | NLM_F_REPLACE, body + attr(RTA_GATEWAY, gw.packed))


class Reply:
    """The kernel's answer to one request: its error code (0 = done) and any data message."""
    __slots__ = ("error", "text", "data")

    def __init__(self):
        self.error, self.text, self.data = None, "", None

    def check(self) -> None:
        if self.error:
            raise KernelError(self.error, self.text or os.strerror(self.error))


def link_indexes(data: bytes) -> tuple[int, int | None]:
    """From an RTM_NEWLINK message: the link's index and its IFLA_LINK (a veth's peer index)."""
    _, _, index, _, _ = _IFINFOMSG.unpack_from(data, _NLMSGHDR.size)
    peer = None
    off, end = _NLMSGHDR.size + _IFINFOMSG.size, len(data)
    while off + _RTATTR.size <= end:
        length, kind = _RTATTR.unpack_from(data, off)
        if length < _RTATTR.size:
            break
        if kind == IFLA_LINK:
            (peer,) = struct.unpack_from("=i", data, off + _RTATTR.size)
        off += _align(length)
    return index, peer


class Channel:
    """A netlink socket (NETLINK_ROUTE unless told) in the current thread's namespace, used by one
    thread at a time."""

    def __init__(self, protocol: int = socket.NETLINK_ROUTE):
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, protocol)
        self._texts = True  # the kernel's error texts, where both options are there to frame them
        for option in (NETLINK_CAP_ACK, NETLINK_EXT_ACK):
            try:
                self.sock.setsockopt(SOL_NETLINK, option, 1)
            except OSError:
                self._texts = False
        self.sock.bind((0, 0))
        self._seq = 0

    def close(self) -> None:
        self.sock.close()

    def run(self, *requests: Request) -> list[Reply]:
        """Send the requests in one sendmsg and return each one's reply, in order (errors not raised)."""
        out, first = [], self._seq + 1
        for r in requests:
            self._seq += 1
            out.append(_NLMSGHDR.pack(_NLMSGHDR.size + len(r.body), r.type, NLM_F_REQUEST | NLM_F_ACK | r.flags,
                                      self._seq, 0) + r.body)
        self.sock.send(b"".join(out))
        replies = [Reply() for _ in requests]
        pending = len(requests)
        while pending:
            buf = self.sock.recv(65536)
            off = 0
            while off + _NLMSGHDR.size <= len(buf):
                length, kind, flags, seq, _ = _NLMSGHDR.unpack_from(buf, off)
                i = seq - first
                if 0 <= i < len(replies):
                    reply = replies[i]
                    if kind == NLMSG_ERROR:
                        (err,) = struct.unpack_from("=i", buf, off + _NLMSGHDR.size)
                        reply.error = -err
                        if err and self._texts and flags & NLM_F_ACK_TLVS:
                            reply.text = _ext_ack_text(buf[off:off + length])
                        pending -= 1
                    else:
                        reply.data = buf[off:off + length]
                off += _align(length) if length else len(buf)
        return replies

    def call(self, *requests: Request) -> list[Reply]:
        """As run(), raising the first error."""
        replies = self.run(*requests)
        for r in replies:
            r.check()
        return replies


def _ext_ack_text(msg: bytes) -> str:
    """The kernel's extended-ack message, when it gave one (after the echoed request header:
    NETLINK_CAP_ACK keeps the echo to the header)."""
    off = _NLMSGHDR.size + 4 + _NLMSGHDR.size  # header, error code, echoed header
    while off + _RTATTR.size <= len(msg):
        length, kind = _RTATTR.unpack_from(msg, off)
        if length < _RTATTR.size:
            break
        if kind == NLMSGERR_ATTR_MSG:
            return msg[off + _RTATTR.size:off + length].split(b"\0", 1)[0].decode(errors="replace")
        off += _align(length)
    return ""
