"""The engine's state: a write-through copy of the records (networks, sandboxes, endpoints), rebuilt from
the store at start so that the attach path never scans the store, and the lookups on it.

This is the one place that saves and drops records: each write goes to the store (inside the caller's
transaction, if any) and to every index here at once, and then to the listeners that keep derived state
(the resolver's feed, the address allocator, the host's tracked flows). An object here holds a record
whole; the store saves it split (store/records.py: the host-only fields under local/, the rest with this
node's id in `node`, each address as a key of its own) in the same commit.
"""
from __future__ import annotations

import secrets
from typing import Callable

from ..errors import NotFound, NsnetError
from ..model import Endpoint, Network, Sandbox, from_dict, to_dict
from ..store.records import Records


class State:
    def __init__(self, store: Records):
        self.store = store
        # This engine's id, made at its first start: the node that owns the sandboxes and endpoints it saves.
        self.node = store.meta("engine_id")
        if not self.node:
            self.node = secrets.token_hex(32)
            store.set_meta("engine_id", self.node)
        self.nets: dict[str, Network] = {d["id"]: from_dict(Network, d) for d in store.list("network")}
        self.sbs: dict[str, Sandbox] = {d["id"]: from_dict(Sandbox, d) for d in store.list("sandbox")}
        self.eps: dict[str, Endpoint] = {d["id"]: from_dict(Endpoint, d) for d in store.list("endpoint")}
        self._eps_of: dict[str, dict[str, Endpoint]] = {}  # sandbox id -> its endpoints (an index of eps)
        for ep in self.eps.values():
            self._eps_of.setdefault(ep.sandbox_id, {})[ep.id] = ep
        # A swarm's, while this host is a member (engine/swarm.py keeps them in step with the shared store):
        # the other nodes' endpoints on swarm networks, the nodes that are alive, and each node's address.
        self.remote: dict[str, Endpoint] = {}
        self.alive: set[str] = set()
        self.vteps: dict[str, str] = {}
        self.records: dict[str, dict] = {}   # "<driver>/<node id>" -> what that node publishes for the driver
        # Listeners, called after each change: (endpoint) saved, (endpoint, its network or None) dropped,
        # (network) saved, (network) dropped.
        self.endpoint_saved: list[Callable[[Endpoint], None]] = []
        self.endpoint_dropped: list[Callable[[Endpoint, Network | None], None]] = []
        self.network_saved: list[Callable[[Network], None]] = []
        self.network_dropped: list[Callable[[Network], None]] = []
        # (network ids) whose other nodes' live endpoints changed: a peer came, went, or its node died.
        self.peers_changed: list[Callable[[set[str]], None]] = []
        self.nodes_changed: list[Callable[[], None]] = []   # the nodes or their drivers' records changed

    def transaction(self):
        return self.store.transaction()

    # ---- lookups ---------------------------------------------------------------------------------

    def network(self, ref: str) -> Network:
        return _lookup(self.nets, ref, "network")

    def sandbox(self, ref: str) -> Sandbox:
        return _lookup(self.sbs, ref, "sandbox")

    def endpoints_of_sandbox(self, sb: Sandbox) -> list[Endpoint]:
        # eth2 before eth10; a CNI runtime's names (net1, ...) sort as well
        return sorted(self._eps_of.get(sb.id, {}).values(), key=lambda e: (len(e.ifname), e.ifname))

    def endpoints_of_network(self, net: Network) -> list[Endpoint]:
        """This host's endpoints on `net`."""
        return [e for e in self.eps.values() if e.network_id == net.id]

    def all_endpoints_of_network(self, net: Network) -> list[Endpoint]:
        """Every node's endpoints on `net`, alive or not: what holds its addresses."""
        return self.endpoints_of_network(net) + [e for e in self.remote.values() if e.network_id == net.id]

    def peers_of(self, net: Network) -> list[Endpoint]:
        """The endpoints on `net` of the other nodes that are alive: what this host's sandboxes can reach."""
        return [e for e in self.remote.values() if e.network_id == net.id and e.node in self.alive]

    @staticmethod
    def shared(net: Network | None) -> bool:
        return net is not None and net.scope == "swarm"

    def requested(self, sb: Sandbox, net: Network) -> bool:
        """Does `sb` ask to be on `net` (running or not)?"""
        return any(r.network_id == net.id for r in sb.requests)

    def requested_networks(self, sb: Sandbox) -> list[Network]:
        """The networks `sb` asks to be on, in its order."""
        return [self.nets[r.network_id] for r in sb.requests if r.network_id in self.nets]

    def networks_of(self, sb: Sandbox) -> list[Network]:
        """The networks of `sb`'s endpoints, in their order."""
        return [self.nets[e.network_id] for e in self.endpoints_of_sandbox(sb) if e.network_id in self.nets]

    # ---- writes ----------------------------------------------------------------------------------

    def _doc(self, obj) -> dict:
        return {**to_dict(obj), "node": self.node}

    def save_network(self, net: Network) -> None:
        self.store.put("network", net.id, to_dict(net), shared=self.shared(net))
        self.nets[net.id] = net
        for fn in self.network_saved:
            fn(net)

    def drop_network(self, net: Network) -> None:
        self.store.delete("network", net.id, shared=self.shared(net))
        self.forget_network(net)

    def forget_network(self, net: Network) -> None:
        """Gone from this engine's view, not from the store (a swarm network another node removed)."""
        self.nets.pop(net.id, None)
        for fn in self.network_dropped:
            fn(net)

    def save_sandbox(self, sb: Sandbox) -> None:
        self.store.put("sandbox", sb.id, self._doc(sb))  # split by the store: local/ holds its process
        self.sbs[sb.id] = sb

    def drop_sandbox(self, sb: Sandbox) -> None:
        self.store.delete("sandbox", sb.id)
        self.sbs.pop(sb.id, None)

    def save_endpoint(self, ep: Endpoint) -> None:
        """A new endpoint's record (endpoints are never rewritten: a changed one is a new one), with the keys
        of its addresses; one on a swarm network goes to the swarm's store."""
        self.store.put("endpoint", ep.id, self._doc(ep), shared=self.shared(self.nets.get(ep.network_id)),
                       fresh=True)
        self.eps[ep.id] = ep
        self._eps_of.setdefault(ep.sandbox_id, {})[ep.id] = ep
        for fn in self.endpoint_saved:
            fn(ep)

    def learn_endpoint(self, ep: Endpoint) -> None:
        """One of this node's endpoints read back from the swarm's store (its record is there already)."""
        self.eps[ep.id] = ep
        self._eps_of.setdefault(ep.sandbox_id, {})[ep.id] = ep
        for fn in self.endpoint_saved:
            fn(ep)

    def drop_endpoint(self, ep: Endpoint) -> None:
        self.store.delete("endpoint", ep.id, shared=self.shared(self.nets.get(ep.network_id)))
        self.forget_endpoint(ep)

    def forget_endpoint(self, ep: Endpoint) -> None:
        """Gone from this engine's view, not from the store (a new record whose commit failed: written nowhere)."""
        self.eps.pop(ep.id, None)
        mine = self._eps_of.get(ep.sandbox_id, {})
        mine.pop(ep.id, None)
        if not mine:
            self._eps_of.pop(ep.sandbox_id, None)
        for fn in self.endpoint_dropped:
            fn(ep, self.nets.get(ep.network_id))


def _lookup(table: dict, ref: str, what: str):
    """By name, full ID or unique ID prefix, as Docker does."""
    if not ref:
        raise NotFound(f"{what} name is empty")
    if ref in table:
        return table[ref]
    for obj in table.values():
        if obj.name == ref:
            return obj
    matches = [obj for key, obj in table.items() if key.startswith(ref)]
    if len(matches) == 1:
        return matches[0]
    if len(matches) > 1:
        raise NsnetError(f"{what} {ref} is ambiguous ({len(matches)} matches): give more of the ID")
    raise NotFound(f"{what} {ref} not found")

