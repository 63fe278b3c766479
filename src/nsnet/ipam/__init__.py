"""IPAM: pools, subnet choice that avoids evidence of addresses in use, addresses inside a subnet.

Pure logic: the evidence itself is gathered by nsnet.kernel.probe. The Compose prediction lives
in nsnet.ipam.compose (import it explicitly; it pulls in PyYAML).
"""

from nsnet.ipam.addresses import AddressPool, default_gateway, mac_for
from nsnet.facts import KINDS, Evidence
from nsnet.ipam.evidence import explain, overlapping, ranked, refusal
from nsnet.ipam.pools import DEFAULT_POOLS, Pool, candidates, parse_network, parse_pools, pick_subnet, skipped_summary

__all__ = [
    "AddressPool", "default_gateway", "mac_for",
    "KINDS", "Evidence", "explain", "overlapping", "ranked", "refusal",
    "DEFAULT_POOLS", "Pool", "candidates", "parse_network", "parse_pools", "pick_subnet", "skipped_summary",
]
