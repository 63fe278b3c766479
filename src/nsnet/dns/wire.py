"""DNS messages on the wire: parse a query, build our answers and errors.

Hand-written rather than dnspython because it runs for every query the cache misses and for
every forwarded query, and because we only need a question and an OPT record: parsing stays a
few microseconds, and the question is echoed byte for byte (so 0x20 case randomisation survives).
The tests check every message built here with dnspython.
"""

from __future__ import annotations

import socket
import struct
from typing import NamedTuple

HEADER = struct.Struct("!HHHHHH")
_RR = struct.Struct("!HHIH")  # type, class, ttl, rdlength
_OPT = struct.Struct("!HHBBHH")  # type, payload size, ext rcode, version, flags, rdlength

QR, AA, TC, RD, RA, CD = 0x8000, 0x0400, 0x0200, 0x0100, 0x0080, 0x0010
OPCODE_MASK = 0x7800
NOERROR, FORMERR, SERVFAIL, NXDOMAIN, NOTIMP, REFUSED, BADVERS = 0, 1, 2, 3, 4, 5, 16
CLASS_IN, TYPE_OPT = 1, 41

MIN_UDP = 512  # RFC 1035; also the floor for an EDNS payload size (RFC 6891)
TCP_MAX = 65535
OUR_PAYLOAD = 1232  # the DNS flag day 2020 value: no IP fragmentation
TTL = 60  # short: sandboxes are recreated with other addresses (aardvark-dns uses 60 too)
_MAX_NAME = 255


class Malformed(Exception):
    """A query we cannot answer normally. `reply` is the error to send, or None to drop."""

    def __init__(self, reply: bytes | None):
        super().__init__("malformed DNS query")
        self.reply = reply


class Query(NamedTuple):
    id: int
    flags: int
    qend: int  # offset just past the question: data[12:qend] is the question, verbatim
    name: str  # lowercase, dot-separated, no trailing dot ("" for the root)
    qtype: int
    qclass: int
    payload: int  # client's EDNS UDP payload size, or -1 without OPT
    version: int  # EDNS version
    do: bool  # DNSSEC OK bit, echoed as RFC 3225 asks
    options: bool  # the OPT record carried options (cookies, ...): not worth caching

    @property
    def max_udp(self) -> int:
        return max(MIN_UDP, self.payload)


def _header_error(data: bytes, rcode: int) -> bytes:
    """Error reply without a question, for queries whose question we cannot trust."""
    qid, flags = struct.unpack_from("!HH", data)
    return HEADER.pack(qid, QR | (flags & (OPCODE_MASK | RD)) | RA | rcode, 0, 0, 0, 0)


def _skip_name(data: bytes, off: int) -> int:
    """Offset past a (possibly compressed) name in the additional section."""
    while True:
        n = data[off]
        if n == 0:
            return off + 1
        if n & 0xC0 == 0xC0:
            return off + 2
        if n & 0xC0:
            raise IndexError("extended label type")
        off += n + 1


def parse_query(data: bytes) -> Query:
    """Parse what a client sent. Raises Malformed (with the reply to send, if any)."""
    if len(data) < 12:
        raise Malformed(None)  # not even a header: nothing to answer to
    qid, flags, qd, an, ns, ar = HEADER.unpack_from(data)
    if flags & QR:
        raise Malformed(None)  # a response: answering it could start a loop between servers
    if flags & OPCODE_MASK:
        raise Malformed(_header_error(data, NOTIMP))  # only QUERY (opcode 0)
    if qd != 1:
        raise Malformed(_header_error(data, FORMERR))
    try:
        labels = []
        off, size = 12, 1
        while True:
            n = data[off]
            if n == 0:
                off += 1
                break
            if n & 0xC0:  # no client compresses a lone question; pointers here are an attack
                raise Malformed(_header_error(data, FORMERR))
            size += n + 1
            if size > _MAX_NAME:
                raise Malformed(_header_error(data, FORMERR))
            label = data[off + 1 : off + 1 + n]
            if len(label) != n:
                raise IndexError("short label")
            labels.append(label.replace(b".", b"\\."))  # a dot inside a label never matches a name
            off += n + 1
        qtype, qclass = struct.unpack_from("!HH", data, off)
        qend = off + 4
        payload, version, do, options = -1, 0, False, False
        off = qend
        for _ in range(an + ns + ar):  # skip answers/authority (none expected), find OPT
            start = off
            off = _skip_name(data, off)
            rtype, rclass, ttl, rdlen = _RR.unpack_from(data, off)
            off += 10 + rdlen
            if off > len(data):
                raise IndexError("short record")
            if rtype == TYPE_OPT:
                if payload >= 0 or data[start] != 0:
                    raise Malformed(_header_error(data, FORMERR))  # two OPTs, or OPT not at root
                payload, version, do, options = rclass, (ttl >> 16) & 0xFF, bool(ttl & 0x8000), rdlen > 0
    except (IndexError, struct.error):
        raise Malformed(_header_error(data, FORMERR)) from None
    name = b".".join(labels).lower().decode("latin-1")
    return Query(qid, flags, qend, name, qtype, qclass, payload, version, do, options)


def _opt(q: Query, rcode: int) -> bytes:
    if q.payload < 0:
        return b""
    return b"\x00" + _OPT.pack(TYPE_OPT, OUR_PAYLOAD, rcode >> 4, 0, 0x8000 if q.do else 0, 0)


def reply(q: Query, data: bytes, rcode: int, answers: bytes = b"", count: int = 0,
          authoritative: bool = True, max_size: int = TCP_MAX) -> bytes:
    """A response to `q`: its question verbatim, `count` answer records, an OPT if it had one.
    Too big for `max_size`: no answers and TC set, so the client retries over TCP."""
    flags = QR | (q.flags & (OPCODE_MASK | RD | CD)) | RA | (rcode & 0xF)
    if authoritative:
        flags |= AA
    opt = _opt(q, rcode)
    question = data[12 : q.qend]
    msg = HEADER.pack(q.id, flags, 1, count, 0, 1 if opt else 0) + question + answers + opt
    if len(msg) > max_size:
        msg = HEADER.pack(q.id, flags | TC, 1, 0, 0, 1 if opt else 0) + question + opt
    return msg


def truncated(q: Query, data: bytes, upstream_flags: int) -> bytes:
    """An upstream answer too big for the client's UDP size: its header flags with TC set,
    the client's question, no records; the client then asks again over TCP."""
    opt = _opt(q, 0)
    return HEADER.pack(q.id, upstream_flags | TC, 1, 0, 0, 1 if opt else 0) + data[12 : q.qend] + opt


def encode_name(name: str) -> bytes:
    """`name` in wire form; ValueError if DNS cannot carry it (an empty label, a label over 63
    bytes, over 255 bytes in all, or not ASCII)."""
    out = bytearray()
    for label in name.rstrip(".").split("."):
        try:
            raw = label.encode("ascii")
        except UnicodeEncodeError:
            raise ValueError(f"DNS name {name!r} is not ASCII") from None
        if not raw or len(raw) > 63:
            raise ValueError(f"DNS name {name!r} has an empty label or one over 63 bytes")
        out += bytes((len(raw),)) + raw
    if len(out) + 1 > _MAX_NAME:
        raise ValueError(f"DNS name {name!r} is over {_MAX_NAME} bytes")
    return bytes(out) + b"\x00"


def name_fits(name: str) -> bool:
    """Whether DNS can carry `name` (encode_name's rules, without building it: every record's
    names are checked when the record is added)."""
    name = name.rstrip(".")
    if not name.isascii():
        return False
    if 0 < len(name) <= 63 and "." not in name:  # one label, as most names of sandboxes
        return True
    return len(name) < _MAX_NAME - 1 and all(0 < len(x) <= 63 for x in name.split("."))


# Answer records point at the question's name (offset 12) instead of repeating it.
_HERE = b"\xc0\x0c"


def a_record(ip: str) -> bytes:
    return _HERE + _RR.pack(1, CLASS_IN, TTL, 4) + socket.inet_pton(socket.AF_INET, ip)


def aaaa_record(ip: str) -> bytes:
    return _HERE + _RR.pack(28, CLASS_IN, TTL, 16) + socket.inet_pton(socket.AF_INET6, ip)


def ptr_record(target: str) -> bytes:
    rdata = encode_name(target)
    return _HERE + _RR.pack(12, CLASS_IN, TTL, len(rdata)) + rdata
