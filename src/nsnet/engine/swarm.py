"""The engine in a swarm: the shared store's networks and endpoints kept in step with the engine's state.

While this host is a member, one thread (`swarm-watch`) reads the swarm's state from etcd whole once, then
follows one etcd watch from that revision, kept open (store.etcd.Stream: no gap between two batches): swarm networks (made and removed on any node), the other nodes'
endpoints on them, which nodes are alive (their lease keys) and each node's address. Each batch of changes
is applied on the engine's kernel thread (`Engine.apply_swarm`), so the drivers program the data plane
(overlay: forwarding and neighbour entries) and the resolver answers the new names before the next batch.
A watch that breaks (etcd restarted, history compacted) starts over from a full read: the state is a set
of facts, and applying one twice changes nothing. No gossip, no flooding: etcd is the only channel.

Each node also publishes its lockout evidence (`evidence/<node>`: the ranges its host finds in use) so that
a swarm network's subnet avoids them on every node.
"""
from __future__ import annotations

import ipaddress
import logging
import threading
import time
from dataclasses import dataclass, field

from ..errors import Conflict, NsnetError
from ..facts import Evidence, as_network
from ..ipam.pools import Pool, pick_subnet
from ..model import Endpoint, Network, from_dict
from ..cluster.membership import drop_endpoints
from ..store import Compacted, CompareFailed, Event, Op
from ..store.records import local_key
from . import ingress
from .addresses import endpoint_addresses

log = logging.getLogger("nsnet.swarm")

RETRY = 1.0              # s: between attempts while etcd does not answer
EVIDENCE_EVERY = 30.0    # s: how often a node publishes its evidence again


@dataclass
class View:
    """The swarm as one read (or the events since) says it is."""
    nets: dict[str, Network] = field(default_factory=dict)
    endpoints: dict[str, Endpoint] = field(default_factory=dict)   # every node's, this one's too
    alive: set[str] = field(default_factory=set)
    vteps: dict[str, str] = field(default_factory=dict)            # node id -> its advertise address
    records: dict[str, dict] = field(default_factory=dict)         # "<driver>/<node id>" -> its node record
    services: dict[str, dict] = field(default_factory=dict)        # engine/services.py's records, as stored
    tasks: dict[str, dict] = field(default_factory=dict)
    asks: dict[str, dict] = field(default_factory=dict)            # "<node>/<reqid>" -> a `service logs` ask

    def apply(self, events: list[Event]) -> None:
        for ev in events:
            kind, _, id_ = ev.key.partition("/")
            if kind == "network":
                _put(self.nets, id_, ev.value and from_dict(Network, ev.value))
            elif kind == "endpoint":
                # the shared part of the record: host_ifname is its node's own (engine.swarm.apply reads ours)
                _put(self.endpoints, id_, ev.value and from_dict(Endpoint, {"host_ifname": None, **ev.value}))
            elif kind == "alive":
                (self.alive.add if ev.value is not None else self.alive.discard)(id_)
            elif kind == "nodes":
                _put(self.vteps, id_, ev.value and ev.value["addr"])
            elif kind == "drivers":
                driver, _, rest = id_.partition("/")
                if rest.startswith("node/"):   # drivers/<driver>/node/<node id>: what a node publishes for it
                    _put(self.records, f"{driver}/{rest[5:]}", ev.value)
            elif kind in ("services", "tasks"):
                _put(getattr(self, kind), id_, ev.value)
            elif kind == "logs" and id_.startswith("ask/"):   # engine/servicelogs.py (answers: the asker's)
                _put(self.asks, id_[4:], ev.value)


def _put(table: dict, key: str, value) -> None:
    if value is None:
        table.pop(key, None)
    else:
        table[key] = value


def read(kv) -> tuple[int, View]:
    """The whole swarm state and a revision to watch from (the lists may already hold later changes:
    the watch replays them, and applying a fact twice changes nothing)."""
    revision = kv.revision()
    view = View()
    view.apply([Event(revision, e.key, e.value)
                for prefix in ("nodes/", "alive/", "network/", "endpoint/", "drivers/", "services/", "tasks/",
                               "logs/ask/")
                for e in kv.list(prefix)])
    return revision, view


@dataclass
class Member:
    """What the engine needs of its swarm membership (cluster.Settings, as the daemon hands it over)."""
    advertise_addr: str
    data_path_port: int
    pools: list[str]
    mask: int


class SwarmLink:
    def __init__(self, engine, kv, member: Member):
        self.engine, self.kv, self.member = engine, kv, member
        self.node = engine.state.node
        self.loaded = threading.Event()    # set once the first full read is applied
        self._stop = threading.Event()
        self._stream = None                # the watch being read
        self.view = View()                 # the last view applied (its `service logs` asks: servicelogs.Answerer)
        self._thread = threading.Thread(target=self._run, name="swarm-watch", daemon=True)
        self._evidence_thread = threading.Thread(target=self._housekeeping, name="swarm-housekeeping", daemon=True)

    def start(self) -> None:
        self._thread.start()
        self._evidence_thread.start()

    def stop(self) -> None:
        """The threads end (the watch's connection is closed under it); the engine ignores what they send
        meanwhile."""
        self._stop.set()
        stream = self._stream
        if stream is not None:
            stream.close()

    # ---- the watch loop (its own thread) ------------------------------------------------------------------

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                revision, view = read(self.kv)
                self.view = view
                self.engine.apply_swarm(self, view, None)
                self._stream = self.kv.stream("", revision)
                if self._stop.is_set():
                    return
                for events in self._stream.batches():
                    view = _copy(view)
                    view.apply(events)
                    self.view = view
                    gone = {ev.key.split("/", 1)[1] for ev in events if ev.value is None and ev.key.startswith("network/")}
                    self.engine.apply_swarm(self, view, gone)
            except Compacted:
                continue   # read everything again
            except NsnetError as e:
                # The membership's lease thread says so once (cluster/membership.py); said here only at debug.
                log.debug("swarm: %s; overlay traffic keeps flowing; retrying every %.0f s", e, RETRY)
            except Exception:
                log.exception("swarm: applying the swarm's state failed; reading it again")
            self._stop.wait(RETRY)

    def _housekeeping(self) -> None:
        """Its own thread: this host's evidence, published every EVIDENCE_EVERY when it changed; and the
        nodes that are Down past the grace period, whose addresses are freed."""
        grace = self.engine.config.address_grace
        tick = max(min(EVIDENCE_EVERY, grace / 4), 0.2)
        last, published = None, 0.0
        while not self._stop.is_set():
            try:
                if time.monotonic() - published >= EVIDENCE_EVERY or last is None:
                    doc = {"ranges": sorted([str(e.network), e.kind, e.detail] for e in self.engine.host_evidence())}
                    if doc != last and not self._stop.is_set():
                        self.kv.commit([Op(f"evidence/{self.node}", doc)])
                    last, published = doc, time.monotonic()
                self._sweep(grace)
            except NsnetError as e:
                log.debug("swarm: housekeeping: %s", e)
                last = None
            self._stop.wait(tick)

    def _sweep(self, grace: float) -> None:
        """A node that is Down gets `down/<node>` (when it was first seen so, by whichever node saw it); past
        `grace`, its endpoints and their addresses go (cluster.drop_endpoints, as node rm does; the node
        stays listed, Down). A node alive again loses its mark."""
        alive = {e.key.split("/", 1)[1] for e in self.kv.list("alive/")}
        down = {e.key.split("/", 1)[1]: e for e in self.kv.list("down/")}
        for entry in self.kv.list("nodes/"):
            node = entry.key.split("/", 1)[1]
            if node in alive or node == self.node:
                if node in down:
                    self.kv.commit([Op(f"down/{node}", None, expect=down[node].mod_revision)])
                continue
            if node not in down:
                try:
                    self.kv.commit([Op(f"down/{node}", {"since": time.time()}, expect=0)])
                except CompareFailed:
                    pass   # another node marked it first
            elif time.time() - down[node].value["since"] >= grace and not down[node].value.get("freed"):
                n = drop_endpoints(self.kv, node)
                self.kv.commit([Op(f"down/{node}", {**down[node].value, "freed": True})])
                log.warning("swarm: node %s has been down for %.0f s: its %d endpoints' addresses are free again",
                            entry.value.get("name"), grace, n)

    # ---- reads for the engine ---------------------------------------------------------------------------

    def pools(self) -> list[Pool]:
        """The swarm's address pools (swarm init's --default-addr-pool, as /mask subnets)."""
        return [Pool(ipaddress.ip_network(p), self.member.mask) for p in self.member.pools]

    def evidence(self) -> list[Evidence]:
        """The ranges the other nodes find in use (a swarm network's subnet must avoid them on every node),
        and those the swarm holds itself (`evidence/swarm-*`, e.g. a driver's tunnel range)."""
        out = []
        names = {e.key.split("/", 1)[1]: e.value.get("name") for e in self.kv.list("nodes/")}
        for entry in self.kv.list("evidence/"):
            node = entry.key.split("/", 1)[1]
            if node == self.node:
                continue
            where = "in the swarm" if node.startswith("swarm-") else f"on node {names.get(node) or node[:12]}"
            out += [Evidence(kind, as_network(cidr), f"{detail} {where}")
                    for cidr, kind, detail in entry.value.get("ranges", [])]
        return out

    def free_subnet(self) -> str:
        """A subnet of the swarm's pools clear of every node's evidence and every network, for a range the
        swarm holds (publish it as `evidence/swarm-<what>` with its claim, so no network takes it later)."""
        subnet, _ = pick_subnet(self.pools(), self.engine.swarm_evidence())
        return str(subnet)


def _copy(view: View) -> View:
    return View(dict(view.nets), dict(view.endpoints), set(view.alive), dict(view.vteps), dict(view.records),
                dict(view.services), dict(view.tasks), dict(view.asks))


# ---- applying a view to the engine's state (on the kernel thread, under the engine's lock) --------------

def apply(e, view: View, gone: set[str] | None) -> bool:
    """Make the engine's state say what `view` says: swarm networks, this node's endpoints on them (after a
    restart they are read back from the swarm's store), the other nodes' endpoints, who is alive and where.
    The networks whose live peers changed are told (drivers program them, the allocator and the resolver
    read them again).

    A view may be older than this engine's own last write (read, then a network created here, then the
    view applied): a network is forgotten only when the watch saw it deleted (`gone`), or, after a full
    read (`gone` None), when etcd confirms it is no longer there. Says whether the networks changed (the
    firewall names every network's bridge)."""
    st = e.state
    before = _live_peers(st)
    nets_changed = False
    for id_, net in view.nets.items():
        if st.nets.get(id_) != net:
            st.nets[id_] = net
            nets_changed = True
            for fn in st.network_saved:
                fn(net)
    for net in [n for n in st.nets.values() if st.shared(n) and n.id not in view.nets]:
        if (net.id in gone) if gone is not None else e.swarm.kv.get(f"network/{net.id}") is None:
            st.forget_network(net)   # removed on another node: it had no sandbox anywhere, none here either
            nets_changed = True
    for id_, ep in view.endpoints.items():
        if ep.node == st.node and id_ not in st.eps and ep.network_id in st.nets:
            own = st.store.kv.get(local_key("endpoint", id_))
            if own is not None:
                ep.host_ifname = own.value.get("host_ifname")
            st.learn_endpoint(ep)
    remote = {i: ep for i, ep in view.endpoints.items() if ep.node != st.node}
    # Addresses taken or freed on another node (a dead node's too, by node rm), told to the allocator.
    for i in remote.keys() ^ st.remote.keys():
        ep = remote.get(i) or st.remote[i]
        net = st.nets.get(ep.network_id)
        if net is not None:
            (e.alloc.mark_taken if i in remote else e.alloc.release)(net, endpoint_addresses(ep))
    st.remote = remote
    nodes_before = (st.vteps, st.records)
    st.alive, st.vteps, st.records = set(view.alive), dict(view.vteps), dict(view.records)
    if (st.vteps, st.records) != nodes_before:
        for fn in st.nodes_changed:
            fn()
    after = _live_peers(st)
    moved = [i for i in before.keys() | after.keys() if before.get(i) != after.get(i)]
    for i in moved:   # the resolver gets these records only, not all of them again
        e.feed.peer_changed(after[i][0] if i in after else before[i][0], i in after)
    changed = {(after.get(i) or before[i])[0].network_id for i in moved}
    if changed:
        for fn in st.peers_changed:
            fn(changed)
    e.services.learn(dict(view.services), dict(view.tasks))
    return nets_changed


def _live_peers(st) -> dict[str, tuple]:
    """endpoint id -> (endpoint, its node's address) of the other nodes' live endpoints: what changed, by
    comparing two of them."""
    return {ep.id: (ep, st.vteps.get(ep.node)) for ep in st.remote.values() if ep.node in st.alive}


def check_can_leave(st) -> None:
    """Refused while a sandbox of the user's is on a swarm network (the ingress sandbox is nsnet's own)."""
    on = sorted({sb.name for sb in st.sbs.values() for net in st.requested_networks(sb)
                 if st.shared(net) and sb.name != ingress.SANDBOX})
    if on:
        raise Conflict(f"cannot leave the swarm: sandboxes {', '.join(on)} are on its networks; remove them "
                       f"or disconnect them first")


def drop_local_endpoints(e) -> None:
    """This host's sandboxes leave every swarm network (the host was removed from the swarm): their links
    go, their records and requests too (a record etcd no longer has is dropped here all the same)."""
    st = e.state
    for sb in list(st.sbs.values()):
        shared = {n.id for n in st.requested_networks(sb) if st.shared(n)}
        if not shared:
            continue
        for ep in [ep for ep in st.endpoints_of_sandbox(sb) if ep.network_id in shared]:
            net = st.nets[ep.network_id]
            try:
                e.driver(net).leave(net, ep, e.kernel.sandbox(sb.pid) if sb.state == "running" else None)
                st.drop_endpoint(ep)
            except NsnetError as err:
                log.warning("swarm: sandbox %s leaving %s: %s (reconcile retries)", sb.name, net.name, err)
        sb.requests = [r for r in sb.requests if r.network_id not in shared]
        with st.transaction():
            st.save_sandbox(sb)
        log.warning("swarm: sandbox %s is off the swarm's networks", sb.name)


def forget_all(e) -> None:
    """This host left: the swarm's networks leave its view (none of its sandboxes is on them)."""
    st = e.state
    for net in [n for n in st.nets.values() if st.shared(n)]:
        st.forget_network(net)
    st.remote, st.alive, st.vteps, st.records = {}, set(), {}, {}
    for fn in st.nodes_changed:
        fn()
    e.services.forget()
    e.feed.refresh()
