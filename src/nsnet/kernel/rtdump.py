"""The namespace's addresses, routes and neighbours for the lockout evidence (probe.gather), dumped over one raw
rtnetlink socket.

Docker waits on nsnet's IPAM driver while it reads the evidence. Profiled in the daemon, RequestPool took
~5 ms, 3 of them in pyroute2's dumps: its asyncio machinery per dump, not the kernel. Here a dump is one
send and a few recvs, and a message only the `struct.unpack`s of the fields probe.py reads. `Dumps` answers
the pyroute2 calls gather() makes (get_addr, route("dump"), get_neighbours, get_links) with dicts of
pyroute2's keys, so gather() reads either; tests/integration/test_probe.py compares the two.

Read fresh on every call: in Docker's own workflow nearly every call follows a change (a bridge, a veth, a
route), so a copy kept current by rtnetlink events would be reread anyway, and what was added a moment
before the call is always in the dump.
"""
from __future__ import annotations

import socket
import struct

# <linux/netlink.h>, <linux/rtnetlink.h>, <linux/if_addr.h>, <linux/neighbour.h>
NLMSG_ERROR, NLMSG_DONE = 2, 3
NLM_F_REQUEST, NLM_F_DUMP, NLM_F_DUMP_INTR = 0x1, 0x300, 0x10
RTM_GETLINK, RTM_NEWLINK, RTM_GETADDR, RTM_NEWADDR = 18, 16, 22, 20
RTM_GETROUTE, RTM_NEWROUTE, RTM_GETNEIGH, RTM_NEWNEIGH = 26, 24, 30, 28
IFLA_IFNAME = 3
IFA_ADDRESS, IFA_LOCAL = 1, 2
RTA_DST, RTA_OIF, RTA_GATEWAY, RTA_TABLE = 1, 4, 5, 15
NDA_DST = 1
ATTEMPTS = 3   # a dump a change cut across (NLM_F_DUMP_INTR) is taken again

_HDR = struct.Struct("=IHHII")       # nlmsghdr: length, type, flags, seq, pid
_IFINFO = struct.Struct("=BxHiII")   # family, type, index, flags, change
_IFADDR = struct.Struct("=BBBBi")    # family, prefixlen, flags, scope, index
_RTMSG = struct.Struct("=BBBBBBBBI")  # family, dst_len, src_len, tos, table, protocol, scope, type, flags
_NDMSG = struct.Struct("=BxxxiHBB")  # family, ifindex, state, flags, type
_RTA = struct.Struct("=HH")
_U32 = struct.Struct("=I")


def _attrs(data: bytes, off: int, end: int) -> dict[int, bytes]:
    out = {}
    while off + 4 <= end:
        length, kind = _RTA.unpack_from(data, off)
        if length < 4:
            break
        out[kind & 0x3FFF] = data[off + 4:off + length]
        off += (length + 3) & ~3
    return out


def _ip(family: int, raw: bytes | None) -> str | None:
    if raw is None:
        return None
    try:
        return socket.inet_ntop(family, raw)
    except (ValueError, OSError):
        return None


class Dumps:
    """Dumps in the namespace of the thread that made it (its socket's); used by one thread at a time."""

    def __init__(self):
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, socket.NETLINK_ROUTE)
        self.sock.bind((0, 0))
        self._seq = 0

    def close(self) -> None:
        self.sock.close()

    def _dump(self, kind: int, body: bytes, want: int, fixed: struct.Struct):
        """(header fields, attributes) of every message of type `want` the dump of `kind` answers."""
        for _ in range(ATTEMPTS):
            out, interrupted = self._dump_once(kind, body, want, fixed)
            if not interrupted:
                break
        return out

    def _dump_once(self, kind, body, want, fixed):
        self._seq += 1
        seq = self._seq
        self.sock.send(_HDR.pack(_HDR.size + len(body), kind, NLM_F_REQUEST | NLM_F_DUMP, seq, 0) + body)
        out, interrupted = [], False
        while True:
            data = self.sock.recv(1 << 16)
            off = 0
            while off + _HDR.size <= len(data):
                length, mtype, flags, mseq, _ = _HDR.unpack_from(data, off)
                if length < _HDR.size:
                    break
                if mseq == seq:
                    if mtype == NLMSG_DONE:
                        return out, interrupted or bool(flags & NLM_F_DUMP_INTR)
                    if mtype == NLMSG_ERROR:
                        (err,) = struct.unpack_from("=i", data, off + _HDR.size)
                        raise OSError(-err, f"rtnetlink dump {kind} failed")
                    interrupted = interrupted or bool(flags & NLM_F_DUMP_INTR)
                    if mtype == want:
                        start = off + _HDR.size
                        out.append((fixed.unpack_from(data, start), _attrs(data, start + fixed.size, off + length)))
                off += (length + 3) & ~3
            if not data:
                return out, True

    # ---- the calls probe.gather makes, answered as pyroute2 would ---------------------------------------

    def get_links(self) -> list[dict]:
        out = []
        for (_, _, index, _, _), attrs in self._dump(RTM_GETLINK, _IFINFO.pack(0, 0, 0, 0, 0), RTM_NEWLINK, _IFINFO):
            name = attrs.get(IFLA_IFNAME, b"").split(b"\0", 1)[0].decode(errors="replace")
            out.append({"index": index, "ifname": name})
        return out

    def get_addr(self) -> list[dict]:
        out = []
        for (family, prefixlen, _, _, index), attrs in self._dump(RTM_GETADDR, _IFADDR.pack(0, 0, 0, 0, 0),
                                                                   RTM_NEWADDR, _IFADDR):
            out.append({"family": family, "prefixlen": prefixlen, "index": index,
                        "local": _ip(family, attrs.get(IFA_LOCAL)), "address": _ip(family, attrs.get(IFA_ADDRESS))})
        return out

    def route(self, command: str) -> list[dict]:
        if command != "dump":
            raise ValueError(f"only dumps here, not {command!r}")
        out = []
        for (family, dst_len, _, _, table, _, scope, rtype, _), attrs in self._dump(
                RTM_GETROUTE, _RTMSG.pack(0, 0, 0, 0, 0, 0, 0, 0, 0), RTM_NEWROUTE, _RTMSG):
            oif = attrs.get(RTA_OIF)
            tab = attrs.get(RTA_TABLE)
            out.append({"family": family, "dst_len": dst_len, "scope": scope, "type": rtype,
                        "table": _U32.unpack(tab)[0] if tab and len(tab) == 4 else table,
                        "dst": _ip(family, attrs.get(RTA_DST)), "gateway": _ip(family, attrs.get(RTA_GATEWAY)),
                        "oif": _U32.unpack(oif)[0] if oif and len(oif) == 4 else None})
        return out

    def get_neighbours(self) -> list[dict]:
        out = []
        for family in (socket.AF_INET, socket.AF_INET6):   # not AF_UNSPEC: that adds the bridges' fdb
            try:
                found = self._dump(RTM_GETNEIGH, _NDMSG.pack(family, 0, 0, 0, 0), RTM_NEWNEIGH, _NDMSG)
            except OSError:   # a kernel without IPv6
                continue
            for (fam, ifindex, state, _, _), attrs in found:
                out.append({"family": fam, "ifindex": ifindex, "state": state, "dst": _ip(fam, attrs.get(NDA_DST))})
        return out
