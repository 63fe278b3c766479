"""Evidence that an address range is already in use on this host, and how to say so.

The kernel-side probe (nsnet.kernel.probe) gathers Evidence; everything here is pure
so that the allocation decisions and their wording are unit-testable.
"""

from __future__ import annotations

from nsnet.facts import KINDS, Evidence, Network, as_network

# What breaks when a new bridge takes a range that holds this evidence.
_CONSEQUENCE = {
    "peer": "replies to it would be routed into this network's bridge",
    "conntrack": "replies to it would be routed into this network's bridge",
    "neighbour": "traffic to it would be routed into this network's bridge instead of its own link",
    "resolver": "DNS queries to it would be routed into this network's bridge",
    "address": "the host already uses that range on an interface, and the two routes would compete",
    "route": "the host already routes that range elsewhere, and the two routes would compete",
    "reserved": "the operator keeps it free for hosts outside this machine",
    "docker": "both bridges would route the same addresses, so some containers become unreachable",
    "nsnet": "both bridges would route the same addresses, so some containers become unreachable",
}


def overlapping(subnet, evidence) -> list[Evidence]:
    """The evidence that overlaps `subnet`, in the order given."""
    subnet = as_network(subnet)
    return [e for e in evidence if e.network.version == subnet.version and e.network.overlaps(subnet)]


def short(network: Network) -> str:
    """A single address without its /32 (/128), a range as CIDR."""
    if network.num_addresses == 1:
        return str(network.network_address)
    return str(network)


def explain(subnet, ev: Evidence) -> str:
    """One sentence: what `subnet` overlaps, what that is, and what would break."""
    subnet = as_network(subnet)
    consequence = _CONSEQUENCE[ev.kind]
    if ev.network == subnet:
        return f"{subnet} is {ev.detail}; {consequence}."
    if ev.network.version == subnet.version and ev.network.subnet_of(subnet):
        relation = f"contains {short(ev.network)}"
    elif ev.network.version == subnet.version and subnet.subnet_of(ev.network):
        relation = f"lies inside {ev.network}"
    else:  # not overlapping at all: say so rather than invent a collision
        relation = f"does not overlap {short(ev.network)}"
    return f"{subnet} {relation}, {ev.detail}; {consequence}."


def ranked(evidence) -> list[Evidence]:
    """Unique evidence, worst first (see KINDS), then narrowest first."""
    seen: dict[tuple, Evidence] = {}
    for e in evidence:
        seen.setdefault((e.kind, e.network), e)
    return sorted(seen.values(), key=lambda e: (KINDS.index(e.kind), -e.network.prefixlen))


def refusal(subnet, evidence) -> str:
    """The one-line refusal for an explicit --subnet that overlaps `evidence`."""
    subnet = as_network(subnet)
    ev = ranked(evidence)
    if not ev:
        return f"{subnet} overlaps an address range in use on this host. Pick another subnet, or pass --allow-overlap."
    msg = explain(subnet, ev[0])
    rest = ev[1:]
    if rest:
        names = ", ".join(f"{short(e.network)} ({e.kind})" for e in rest[:3])
        more = f" and {len(rest) - 3} more" if len(rest) > 3 else ""
        msg += f" It also overlaps {names}{more}."
    return msg + " Pick another subnet, or pass --allow-overlap."
