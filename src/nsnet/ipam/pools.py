"""Address pools (Docker's `default-address-pools`) and picking a subnet that avoids evidence.

A pool is a base range carved into equal subnets; candidates are tried in pool order, then
address order, exactly as Docker does. pick_subnet() jumps over whole runs of candidates that
an evidence range covers, so a 10.0.0.0/8 pool carved into /24s with thousands of evidence
entries costs O(evidence * log) rather than O(candidates * evidence).
"""

from __future__ import annotations

import ipaddress
from bisect import bisect_left
from dataclasses import dataclass

from nsnet.errors import NsnetError
from nsnet.facts import Evidence, Network, as_network
from nsnet.ipam.evidence import ranked, short


@dataclass(frozen=True)
class Pool:
    base: Network
    size: int  # prefix length of the subnets carved from base

    def as_dict(self) -> dict:
        return {"base": str(self.base), "size": self.size}


# Docker's ipamutils local-scope defaults, in Docker's order.
DEFAULT_POOLS: tuple[Pool, ...] = tuple(
    [Pool(ipaddress.ip_network(f"172.{i}.0.0/16"), 16) for i in range(17, 32)]
    + [Pool(ipaddress.ip_network("192.168.0.0/16"), 20)]
)


def parse_network(text, what: str = "subnet") -> Network:
    """Strict CIDR, with Docker's wording when host bits are set."""
    if isinstance(text, (ipaddress.IPv4Network, ipaddress.IPv6Network)):
        return text
    text = str(text).strip()
    try:
        return ipaddress.ip_network(text, strict=True)
    except ValueError:
        pass
    try:
        loose = ipaddress.ip_network(text, strict=False)
    except ValueError:
        raise NsnetError(f"invalid {what} {text!r}: expected a CIDR range such as 172.30.0.0/16") from None
    raise NsnetError(f"invalid {what} {text}: it should be {loose}")


def parse_pools(items, where: str = "default-address-pools") -> tuple[Pool, ...]:
    """Pools from [{"base": "10.10.0.0/16", "size": 24}, ...]; errors name the entry."""
    if not isinstance(items, (list, tuple)):
        raise NsnetError(f"{where} must be a list of {{base, size}} tables, got {type(items).__name__}")
    pools = []
    for i, item in enumerate(items):
        here = f"{where}[{i}]"
        if not isinstance(item, dict):
            raise NsnetError(f"{here} must be a table with base and size, e.g. {{base=\"10.10.0.0/16\", size=24}}")
        unknown = set(item) - {"base", "size"}
        if unknown:
            raise NsnetError(f"{here} has unknown key {sorted(unknown)[0]!r}; only base and size are allowed")
        if "base" not in item or "size" not in item:
            raise NsnetError(f"{here} needs both base and size, e.g. {{base=\"10.10.0.0/16\", size=24}}")
        base = parse_network(item["base"], f"{here}.base")
        size = item["size"]
        if isinstance(size, bool) or not isinstance(size, int):
            raise NsnetError(f"{here}.size must be a prefix length (an integer), got {size!r}")
        if not base.prefixlen <= size <= base.max_prefixlen:
            raise NsnetError(f"{here}.size {size} must be between {base.prefixlen} (the base's prefix) "
                             f"and {base.max_prefixlen}")
        pools.append(Pool(base, size))
    return tuple(pools)


def _net(start: int, prefixlen: int, version: int) -> Network:
    cls = ipaddress.IPv4Network if version == 4 else ipaddress.IPv6Network
    return cls((start, prefixlen))


def candidates(pools, size: int | None = None):
    """Every candidate subnet, in Docker's order. A `size` overrides each pool's size;
    pools too small for it are skipped."""
    for pool in pools:
        want = pool.size if size is None else size
        if not pool.base.prefixlen <= want <= pool.base.max_prefixlen:
            continue
        yield from pool.base.subnets(new_prefix=want)


class _Index:
    """Evidence of one IP version as sorted, disjoint, merged integer runs."""

    def __init__(self, evidence, version: int):
        items = sorted(((int(e.network.network_address), int(e.network.broadcast_address), e)
                        for e in evidence if e.network.version == version), key=lambda t: (t[0], t[1]))
        self.starts: list[int] = []
        self.ends: list[int] = []
        self.members: list[list[tuple[int, int, Evidence]]] = []
        for item in items:
            s, end = item[0], item[1]
            if self.ends and s <= self.ends[-1]:
                self.ends[-1] = max(self.ends[-1], end)
                self.members[-1].append(item)
            else:
                self.starts.append(s)
                self.ends.append(end)
                self.members.append([item])

    def first_reaching(self, x: int) -> int:
        """Index of the first run that ends at or after x."""
        return bisect_left(self.ends, x)

    def covering(self, lo: int, hi: int, j: int) -> list[Evidence]:
        """Evidence overlapping [lo, hi], scanning runs from j."""
        out = []
        while j < len(self.starts) and self.starts[j] <= hi:
            out += [ev for s, e, ev in self.members[j] if s <= hi and e >= lo]
            j += 1
        return out


def pick_subnet(pools, evidence, size: int | None = None):
    """The first candidate (Docker's order) overlapping no evidence, and what was skipped:
    [(skipped range, [evidence that covers it]), ...]. Raises NsnetError when nothing is free."""
    evidence = list(evidence)
    indexes: dict[int, _Index] = {}
    skipped: list[tuple[Network, list[Evidence]]] = []
    for pool in pools:
        base = pool.base
        want = pool.size if size is None else size
        if not base.prefixlen <= want <= base.max_prefixlen:
            continue
        index = indexes.get(base.version) or indexes.setdefault(base.version, _Index(evidence, base.version))
        bits = base.max_prefixlen
        blk = 1 << (bits - want)
        base_lo, base_hi = int(base.network_address), int(base.broadcast_address)
        cur = base_lo
        while cur + blk - 1 <= base_hi:
            j = index.first_reaching(cur)
            if j == len(index.starts) or index.starts[j] > cur + blk - 1:
                return _net(cur, want, base.version), skipped
            # Jump to the first aligned candidate after this run of evidence.
            nxt = base_lo + -(-(index.ends[j] + 1 - base_lo) // blk) * blk
            span_hi = min(nxt, base_hi + 1) - 1
            if span_hi - cur + 1 == blk:  # the common case: one candidate
                skipped.append((_net(cur, want, base.version), index.covering(cur, span_hi, j)))
            else:
                for net in ipaddress.summarize_address_range(_addr(cur, base.version), _addr(span_hi, base.version)):
                    skipped.append((net, index.covering(int(net.network_address), int(net.broadcast_address), j)))
            cur = nxt
    what = "the address pools" if size is None else f"the address pools (carved into /{size})"
    raise NsnetError(f"all of {what} are used or collide with this host's addresses; add a pool with "
                     "default-address-pools in config.toml, ask for a smaller network (-o size=24), or pass --subnet")


def _addr(value: int, version: int):
    return ipaddress.IPv4Address(value) if version == 4 else ipaddress.IPv6Address(value)


def skipped_summary(skipped) -> list[str]:
    """Log lines for what pick_subnet skipped."""
    lines = []
    for net, evs in skipped:
        ev = ranked(evs)
        why = "; ".join(f"{short(e.network)}: {e.detail}" for e in ev[:3])
        more = f" (+{len(ev) - 3} more)" if len(ev) > 3 else ""
        lines.append(f"skipped {net}: overlaps {why}{more}")
    return lines


__all__ = ["Pool", "DEFAULT_POOLS", "parse_network", "parse_pools", "candidates", "pick_subnet",
           "skipped_summary", "as_network"]
