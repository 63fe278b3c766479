"""Forgetting the kernel's tracked flows of an address that nsnet gives up, as Docker does on
endpoint removal.

A flow outlives its endpoint: a stale NAT entry keeps steering a UDP client to an address that is gone
(or has gone to another sandbox), and the old address keeps showing up as a "party of a tracked
connection" in the lockout evidence, so a removed network's pool would not be given out again.
One ctnetlink request per address and direction: a delete carrying CTA_FILTER flushes, in the kernel,
every flow whose tuple matches (Linux 6.3 and newer; older kernels refuse it and flows time out).
"""
from __future__ import annotations

import ipaddress
import logging
import socket
import struct

from .rtnl import Request, attr

log = logging.getLogger("nsnet.kernel")

NETLINK_NETFILTER = 12
NLA_F_NESTED = 0x8000
IPCTNL_MSG_CT_DELETE = (1 << 8) | 2   # NFNL_SUBSYS_CTNETLINK, IPCTNL_MSG_CT_DELETE
CTA_TUPLE_ORIG, CTA_TUPLE_REPLY, CTA_FILTER = 1, 2, 25
CTA_TUPLE_IP = 1
CTA_IP_V4_SRC, CTA_IP_V4_DST, CTA_IP_V6_SRC, CTA_IP_V6_DST = 1, 2, 3, 4
CTA_FILTER_ORIG_FLAGS, CTA_FILTER_REPLY_FLAGS = 1, 2
CTA_FILTER_FLAG_IP_SRC, CTA_FILTER_FLAG_IP_DST = 1, 2

# Where an endpoint's address shows in a flow: its own traffic (orig src), traffic to it (orig dst),
# a published port's DNAT (reply src) and a masqueraded return path (reply dst).
SIDES = (("orig", "src"), ("orig", "dst"), ("reply", "src"), ("reply", "dst"))


def _nest(kind: int, payload: bytes) -> bytes:
    return attr(kind | NLA_F_NESTED, payload)


def flush_matching(ip, direction: str, side: str) -> Request:
    """Delete every flow whose `direction` tuple has `ip` as its `side` address."""
    ip = ipaddress.ip_address(ip)
    family = socket.AF_INET if ip.version == 4 else socket.AF_INET6
    ip_attr = {(4, "src"): CTA_IP_V4_SRC, (4, "dst"): CTA_IP_V4_DST,
               (6, "src"): CTA_IP_V6_SRC, (6, "dst"): CTA_IP_V6_DST}[(ip.version, side)]
    tuple_kind, flags_kind = ((CTA_TUPLE_ORIG, CTA_FILTER_ORIG_FLAGS) if direction == "orig"
                              else (CTA_TUPLE_REPLY, CTA_FILTER_REPLY_FLAGS))
    flag = CTA_FILTER_FLAG_IP_SRC if side == "src" else CTA_FILTER_FLAG_IP_DST
    body = struct.pack("=BBH", family, 0, 0)  # nfgenmsg: family, version 0, res_id
    body += _nest(tuple_kind, _nest(CTA_TUPLE_IP, attr(ip_attr, ip.packed)))
    body += _nest(CTA_FILTER, attr(flags_kind, struct.pack("=I", flag)))
    return Request(IPCTNL_MSG_CT_DELETE, 0, body)


def forget(chan, ips) -> None:
    """Flush every tracked flow that involves any of `ips` (one sendmsg). Best effort: a kernel
    without filtered flush or without conntrack leaves them to time out."""
    requests = [flush_matching(ip, d, s) for ip in ips for d, s in SIDES]
    if not requests:
        return
    errors = {r.error for r in chan.run(*requests) if r.error}
    if errors:
        log.debug("conntrack flush of %s refused (errno %s): flows time out instead", ips, sorted(errors))
