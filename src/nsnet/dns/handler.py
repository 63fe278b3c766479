"""What to do with one query from one sandbox: answer it, forward it, or drop it.

Pure: bytes and a RecordSet in, an Outcome out. The server caches cacheable answers by the
query's bytes after the ID, so this runs once per distinct query, not once per packet.
"""

from __future__ import annotations

from typing import NamedTuple

from . import wire
from .records import A, AAAA, ANSWER, FORWARD as _FORWARD, NXDOMAIN, PTR, RecordSet

DROP, REPLY, FORWARD = 0, 1, 2
# Round robin without per-query work: we prebuild this many rotations of a long address list.
MAX_ROTATIONS = 16


class Outcome(NamedTuple):
    action: int
    replies: tuple[bytes, ...] = ()  # REPLY: replies[0] now, then the next rotation per query
    cacheable: bool = False
    query: wire.Query | None = None  # the parsed query (None when it did not parse)
    max_size: int = wire.MIN_UDP  # FORWARD: the largest answer the client takes


_DROP = Outcome(DROP)
_RECORD = {A: wire.a_record, AAAA: wire.aaaa_record, PTR: wire.ptr_record}


def handle(records: RecordSet, asker: str, data: bytes, tcp: bool = False) -> Outcome:
    try:
        q = wire.parse_query(data)
    except wire.Malformed as e:
        return Outcome(REPLY, (e.reply,)) if e.reply else _DROP
    max_size = wire.TCP_MAX if tcp else q.max_udp
    if q.version > 0:  # RFC 6891: we speak EDNS version 0 only
        return Outcome(REPLY, (wire.reply(q, data, wire.BADVERS, authoritative=False),))
    if q.qclass != wire.CLASS_IN:
        return Outcome(FORWARD, query=q, max_size=max_size)  # CHAOS and friends are not ours
    found = records.lookup(asker, q.name, q.qtype)
    # Queries with EDNS options (a cookie differs per client) would only fill the cache.
    cacheable = not q.options
    if found.outcome == _FORWARD:
        return Outcome(FORWARD, query=q, max_size=max_size)
    if found.outcome == NXDOMAIN:
        return Outcome(REPLY, (wire.reply(q, data, wire.NXDOMAIN),), cacheable, q)
    assert found.outcome == ANSWER
    make = _RECORD.get(q.qtype)
    values = found.values if make else ()
    if not values:  # NODATA: the name is ours, the type or family is not there
        return Outcome(REPLY, (wire.reply(q, data, wire.NOERROR),), cacheable, q)
    records_wire = [make(v) for v in values]
    n = len(records_wire)
    k = min(n, MAX_ROTATIONS)
    replies = []
    for i in range(k):
        shift = i * n // k
        body = b"".join(records_wire[shift:] + records_wire[:shift])
        replies.append(wire.reply(q, data, wire.NOERROR, body, n, max_size=max_size))
    return Outcome(REPLY, tuple(replies), cacheable, q)


def servfail(data: bytes) -> bytes | None:
    """SERVFAIL for a query we could not forward (None if it cannot even be parsed)."""
    try:
        q = wire.parse_query(data)
    except wire.Malformed as e:
        return e.reply
    return wire.reply(q, data, wire.SERVFAIL, authoritative=False)
