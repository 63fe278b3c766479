"""Who may see which name: the sandboxes' DNS records.

The engine derives one `Record` per (sandbox, network) endpoint from the store and hands a
whole `RecordSet` to the server, then each change as records added and removed; the server
applies them on its own thread, between queries, so a query is answered from one consistent
picture.

Rules (Docker's embedded resolver, libnetwork `Sandbox.ResolveName`/`ResolveIP`):
- a name resolves only for an asker that shares a network with it, to the address on that
  shared network (on several shared networks: all of them, network by network);
- `name.<network name>` resolves too, restricted to that network, if the asker is on it;
- several sandboxes with one name (an alias) give all their addresses;
- PTR for a sandbox address gives `<sandbox name>.<network name>` (Docker's answer), under the
  same visibility rule;
- a name DNS cannot carry (a label over 63 bytes, over 253 in all) is not served: a query cannot
  ask for it, and a PTR answer gives the first of the sandbox's names that fits instead (the
  set keeps a note per such record in `unservable`, for the server to log once);
- a name that exists but lacks the asked family or type is NODATA, never forwarded;
- a single-label name that is not ours is NXDOMAIN at once (see `_never_forward`); anything
  else that is not ours goes to the upstream resolvers.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Iterable, Mapping, NamedTuple

from . import wire

# Query types we answer ourselves (numbers from RFC 1035 / 3596).
A, PTR, AAAA = 1, 12, 28
# Types about a zone's delegation and keys: for a single label they concern a top-level
# domain ("com"), so they are forwarded even though the name has no dot.
_ZONE_TYPES = frozenset({2, 6, 43, 48})  # NS, SOA, DS, DNSKEY

# Outcomes of a lookup.
ANSWER, NXDOMAIN, FORWARD = "answer", "nxdomain", "forward"

_V4_ARPA = ".in-addr.arpa"
_V6_ARPA = ".ip6.arpa"


@dataclass(frozen=True)
class Record:
    """One sandbox on one network. `names`: sandbox name first, then aliases, hostname."""

    sandbox_id: str
    network_id: str
    names: tuple[str, ...]
    ipv4: str | None = None
    ipv6: str | None = None


class Lookup(NamedTuple):
    """`values`: addresses (A/AAAA) or target names (PTR), in a stable order; the server
    rotates them per query. Empty with ANSWER means NODATA."""

    outcome: str
    values: tuple[str, ...] = ()


def _norm(name: str) -> str:
    return name.rstrip(".").lower()


class RecordSet:
    """`domains` maps network_id -> network name, which makes
    `name.<network name>` resolvable and names the PTR targets; without it, bare names only."""

    def __init__(self, records: Iterable[Record] = (), domains: Mapping[str, str] | None = None):
        nets_of: dict[str, list[str]] = {}
        names: dict[str, dict[str, list[Record]]] = {}
        ptr: dict[str, list[tuple[str, str]]] = {}
        self._netname = {nid: _norm(n) for nid, n in (domains or {}).items()}
        self._netid = {n: nid for nid, n in self._netname.items()}
        # (sandbox_id, network_id) -> what of that record is not served, for the server to log once
        self.unservable: dict[tuple[str, str], str] = {}
        records = tuple(records)
        self._by_key = {(r.sandbox_id, r.network_id): r for r in records}
        for r in records:
            nets_of.setdefault(r.sandbox_id, [])
            if r.network_id not in nets_of[r.sandbox_id]:
                nets_of[r.sandbox_id].append(r.network_id)
            table = names.setdefault(r.network_id, {})
            served, target, ips = self._entries(r)
            for n in served:
                table.setdefault(n, []).append(r)
            for ip in ips:
                ptr.setdefault(ip, []).append((r.network_id, target))
        # Network order is sorted so that answers do not depend on the order of the store's rows.
        self._nets_of = {sid: tuple(sorted(nets)) for sid, nets in nets_of.items()}
        self._names = names
        self._ptr = ptr

    def update(self, add: Iterable[Record] = (), remove: Iterable[tuple[str, str]] = ()) -> None:
        """Add records and remove (sandbox_id, network_id) pairs in place, touching only the names,
        addresses and sandboxes concerned: an attach then costs the same with ten sandboxes as with a
        thousand (a copy, or a rebuild, is O(records)). Afterwards the set answers as RecordSet(all
        records) would, but alias holders keep the order they came in (the server rotates them
        anyway). Only the thread that answers from the set may update it."""
        add = list(add)
        gone = set(remove) | {(r.sandbox_id, r.network_id) for r in add}
        by_key, nets_of, names, ptr = self._by_key, self._nets_of, self._names, self._ptr
        for key in gone:
            old = by_key.pop(key, None)
            if old is None:
                continue
            self.unservable.pop(key, None)
            sid, nid = key
            nets_of[sid] = tuple(n for n in nets_of.get(sid, ()) if n != nid)
            if not nets_of[sid]:
                del nets_of[sid]
            t = names.setdefault(nid, {})
            served, _, ips = self._entries(old, note=False)
            for n in served:
                left = [x for x in t.get(n, ()) if x is not old]
                if left:
                    t[n] = left
                else:
                    t.pop(n, None)
            for ip in ips:
                left = [x for x in ptr.get(ip, ()) if x[0] != nid]
                if left:
                    ptr[ip] = left
                else:
                    ptr.pop(ip, None)
        for r in add:
            by_key[(r.sandbox_id, r.network_id)] = r
            nets_of[r.sandbox_id] = tuple(sorted(set(nets_of.get(r.sandbox_id, ())) | {r.network_id}))
            t = names.setdefault(r.network_id, {})
            served, target, ips = self._entries(r)
            for n in served:
                t[n] = t.get(n, []) + [r]
            for ip in ips:
                ptr[ip] = ptr.get(ip, []) + [(r.network_id, target)]

    def _entries(self, r: Record, note: bool = True) -> tuple[list[str], str, list[str]]:
        """What `r` is served as: its names (normalised, each once, those DNS can carry), the PTR
        target of its addresses and those addresses ([] for no PTR). `note`: what is not served
        goes to `unservable`."""
        served, bad = [], []
        for n in r.names:  # a sandbox named like its hostname counts once
            n = _norm(n)
            if n and n not in served and n not in bad:
                (served if wire.name_fits(n) else bad).append(n)
        # PTR: Docker's <sandbox name>.<network name>, or when DNS cannot carry that, the first of
        # the other names that fits.
        net = self._netname.get(r.network_id)
        target = next((t for t in (f"{n}.{net}" if net else n for n in served) if wire.name_fits(t)), "")
        ips = [_canonical(ip) for ip in (r.ipv4, r.ipv6) if ip] if target else []
        first = _norm(r.names[0]) if r.names else ""
        if note and (bad or (r.ipv4 or r.ipv6) and target != (f"{first}.{net}" if net else first)):
            why = [f"names DNS cannot carry, not served: {', '.join(bad)}"] if bad else []
            why.append(f"reverse name {target}" if target else "no reverse name")
            self.unservable[(r.sandbox_id, r.network_id)] = "; ".join(why)
        return served, target, ips

    @property
    def records(self) -> tuple[Record, ...]:
        return tuple(self._by_key.values())

    def networks_of(self, sandbox_id: str) -> tuple[str, ...]:
        return self._nets_of.get(sandbox_id, ())

    def lookup(self, asker: str, qname: str, qtype: int) -> Lookup:
        name = _norm(qname)
        nets = self._nets_of.get(asker, ())
        if qtype == PTR and (name.endswith(_V4_ARPA) or name.endswith(_V6_ARPA)):
            found = self._reverse(name, nets)
            if found is not None:
                return Lookup(ANSWER, (found,))
        recs = self._find(name, nets)
        if recs is None:
            if _never_forward(name, qtype):
                return Lookup(NXDOMAIN)
            return Lookup(FORWARD)
        if qtype == A:
            return Lookup(ANSWER, _unique(r.ipv4 for r in recs))
        if qtype == AAAA:
            return Lookup(ANSWER, _unique(r.ipv6 for r in recs))
        return Lookup(ANSWER)  # a local name asked for MX, TXT, ...: NODATA

    def _find(self, name: str, nets: tuple[str, ...]) -> list[Record] | None:
        found: list[Record] = []
        for net in nets:
            found += self._names.get(net, {}).get(name, ())
        if found:
            return found
        # Docker: for a.b.c try "a.b" on network "c", then "a" on network "b.c".
        head = name
        while "." in head:
            head, _, _ = head.rpartition(".")
            net = self._netid.get(name[len(head) + 1:])
            if net in nets:
                found = self._names.get(net, {}).get(head)
                if found:
                    return list(found)
        return None

    def _reverse(self, name: str, nets: tuple[str, ...]) -> str | None:
        ip = _arpa_to_ip(name)
        for net, target in self._ptr.get(ip, ()) if ip else ():
            if net in nets:
                return target
        return None


def _never_forward(name: str, qtype: int) -> bool:
    """A single-label name that is not ours is NXDOMAIN at once. Docker forwards it (it writes
    ndots:0 and lets the upstream say no), but an upstream can only say no, slowly, and it learns
    the sandbox's private names on the way; the stub's search list then tries the next suffix."""
    return bool(name) and "." not in name and qtype not in _ZONE_TYPES


def _canonical(ip: str) -> str:
    """The form _arpa_to_ip gives. Dotted IPv4 from the engine is canonical already, and parsing every
    address made a set of many sandboxes slow to build."""
    if ":" not in ip and ip.count(".") == 3 and all(p.isdigit() and (p == "0" or p[0] != "0") for p in ip.split(".")):
        return ip
    return ipaddress.ip_address(ip).compressed


def _unique(values: Iterable[str | None]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(v for v in values if v))


def _arpa_to_ip(name: str) -> str | None:
    try:
        if name.endswith(_V4_ARPA):
            parts = name[: -len(_V4_ARPA)].split(".")
            if len(parts) != 4:
                return None
            return str(ipaddress.IPv4Address(".".join(reversed(parts))))
        nibbles = name[: -len(_V6_ARPA)].split(".")
        if len(nibbles) != 32 or any(len(n) != 1 for n in nibbles):
            return None
        hexa = "".join(reversed(nibbles))
        return ipaddress.IPv6Address(int(hexa, 16)).compressed
    except ValueError:
        return None
