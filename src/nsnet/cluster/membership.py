"""The swarm: hosts that share one etcd. This host's membership (init, join, leave), the nodes' records,
and the liveness that makes a node Ready.

Keys, under EtcdKV's prefix:
- `cluster`: the swarm (id, created, its address pools and data path port), created with a compare so
  that one etcd holds one swarm;
- `nodes/<node id>`: a member (name, advertise address, created); the node id is the engine's id;
- `alive/<node id>`: bound to a lease of TTL seconds that the node's daemon renews every TTL/3. A node is
  Ready while the key exists; when the daemon dies or is cut off, etcd drops the key within TTL.
"""
from __future__ import annotations

import logging
import secrets
import socket
import threading
import time
from dataclasses import replace

from ..errors import Conflict, NotFound, NsnetError
from ..store import CompareFailed, Op
from ..store.records import claims
from . import settings as swarmfile
from .settings import Settings

log = logging.getLogger("nsnet.cluster")

TTL = 10          # s: a node whose daemon stops renewing its lease is Down after at most this long
RETRY = 1.0       # s: between attempts while etcd does not answer
TXN_OPS = 100     # writes per etcd transaction (etcd refuses more than 128)


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


class Cluster:
    """`on_join(kv, settings)`: this host is a member now (at start too), the engine shares its networks;
    `on_leave()`: it is about to leave: the engine lets go of the swarm's networks, or raises to refuse;
    `on_removed()`: another node removed it: the engine lets go, whatever runs on those networks."""

    def __init__(self, root: str, node_id: str, ttl: int = TTL, on_join=None, on_leave=None, on_removed=None):
        self.root, self.node_id, self.ttl = root, node_id, ttl
        self._on_join = on_join or (lambda kv, s: None)
        self._on_leave = on_leave or (lambda: None)
        self._on_removed = on_removed or (lambda: None)
        self.settings = swarmfile.load(root)
        self.kv = None
        self._lease: int | None = None
        self._stop: threading.Event | None = None
        self._keeper: threading.Thread | None = None
        self._broken = ""   # why the settings in swarm.json could not be used
        self._lock = threading.Lock()   # init, join, leave: one at a time

    # ---- membership --------------------------------------------------------------------------------

    def start(self) -> None:
        """At the daemon's start: a member rejoins by itself, in the background (etcd may not answer yet)."""
        if not self.settings:
            return
        try:
            kv = self._connect(self.settings)
        except NsnetError as e:   # e.g. a TLS file gone: the daemon still serves its local networks
            log.error("swarm: %s; this node stays out of its swarm until that is fixed (or: swarm leave --force)", e)
            self._broken = str(e)
            return
        self._begin(kv, self.settings, lease=None)

    def init(self, req: Settings) -> str:
        with self._lock:
            self._check_not_member()
            kv = self._connect(req)
            record = {"id": secrets.token_hex(13)[:25], "created": _now(), "pools": req.pools, "mask": req.mask,
                      "data_path_port": req.data_path_port}
            try:
                kv.commit([Op("cluster", record, expect=0)])
            except CompareFailed:
                kv.close()
                raise Conflict("this store already holds a swarm: use nsnet swarm join") from None
            self._enter(kv, req, undo=[Op("cluster", None)])
            return self.node_id

    def join(self, req: Settings) -> str:
        with self._lock:
            self._check_not_member()
            kv = self._connect(req)
            found = kv.get("cluster")
            if found is None:
                kv.close()
                raise NotFound("this store holds no swarm: use nsnet swarm init")
            c = found.value
            self._enter(kv, replace(req, pools=c["pools"], mask=c["mask"], data_path_port=c["data_path_port"]), undo=[])
            return self.node_id

    def leave(self, force: bool) -> None:
        """Remove this node's records (and the swarm's, when it was the last node) and swarm.json. When etcd
        does not answer, only --force leaves, locally: the node shows Down until someone runs `node rm`."""
        with self._lock:
            if not self.settings:
                raise NsnetError("this node is not part of a swarm")
            if self.kv is not None:
                self._on_leave()   # refuses while a sandbox here is on a swarm network
            try:
                if self.kv is None:
                    raise NsnetError(self._broken)
                others = [e for e in self.kv.list("nodes/") if e.key != f"nodes/{self.node_id}"]
                ops = _node_keys(self.kv, self.node_id)
                self.kv.commit(ops + ([] if others else [Op("cluster", None)]))
            except NsnetError as e:
                if not force:
                    self._on_join(self.kv, self.settings)   # still a member
                    raise NsnetError(f"{e}: use --force to leave anyway") from None
            if self.kv is not None:
                lease = self._end()
                if lease is not None:
                    try:
                        self.kv.revoke(lease)
                    except NsnetError:
                        pass   # it expires by itself within TTL
                self.kv.close()
            swarmfile.remove(self.root)
            self.settings, self.kv, self._broken = None, None, ""

    def _check_not_member(self) -> None:
        if self.settings:
            raise Conflict("this node is already part of a swarm: use nsnet swarm leave to leave it first")

    def _connect(self, s: Settings):
        from ..store.etcd import EtcdKV   # only a member speaks etcd
        try:
            return EtcdKV(s.endpoints, **s.store_args())
        except OSError as e:   # a TLS file that cannot be read or used
            raise NsnetError(f"etcd TLS files: {e}") from None

    def _enter(self, kv, s: Settings, undo: list[Op]) -> None:
        """Register this node and keep `s` in swarm.json; on failure, drop what was written."""
        lease = None
        try:
            lease = self._register(kv, s)
            swarmfile.save(self.root, s)
        except BaseException:
            try:
                kv.commit(undo + [Op(f"nodes/{self.node_id}", None), Op(f"alive/{self.node_id}", None)])
                if lease is not None:
                    kv.revoke(lease)
            except NsnetError:
                pass
            kv.close()
            raise
        self._begin(kv, s, lease)

    def _register(self, kv, s: Settings) -> int:
        """This node's record, and its liveness key on a new lease; the lease."""
        old = kv.get(f"nodes/{self.node_id}")
        record = {"id": self.node_id, "name": s.node_name, "addr": s.advertise_addr,
                  "created": old.value["created"] if old else _now()}
        if not old or old.value != record:
            kv.commit([Op(f"nodes/{self.node_id}", record)])
        lease = kv.grant(self.ttl)
        kv.put_leased(f"alive/{self.node_id}", {"addr": s.advertise_addr}, lease)
        return lease

    # ---- liveness ----------------------------------------------------------------------------------

    def _begin(self, kv, s: Settings, lease: int | None) -> None:
        self.settings, self.kv, self._lease = s, kv, lease
        self._on_join(kv, s)
        self._stop = threading.Event()
        self._keeper = threading.Thread(target=self._keep, args=(kv, s, self._stop), name="swarm-lease", daemon=True)
        self._keeper.start()

    def _end(self) -> int | None:
        """Stop renewing; the lease it held."""
        self._stop.set()
        self._keeper.join()
        return self._lease

    def _keep(self, kv, s: Settings, stop: threading.Event) -> None:
        failing = False
        while not stop.is_set():
            try:
                if kv.get(f"nodes/{self.node_id}") is None and kv.get("cluster") is not None:
                    self._removed(kv)   # `node rm --force` from another node: out of the swarm, as it says
                    return
                if self._lease is None or kv.keepalive(self._lease) == 0:
                    self._lease = None
                    self._lease = self._register(kv, s)
                if failing:
                    log.info("swarm: etcd answers again: node %s (%s) is registered", s.node_name, self.node_id[:12])
                failing = False
            except NsnetError as e:
                if not failing:
                    log.warning("swarm: %s; local networks keep working; retrying every %.0f s", e, RETRY)
                failing = True
            stop.wait(RETRY if failing else self.ttl / 3)

    def _removed(self, kv) -> None:
        """This node's record is gone (another node removed it): leave for good, locally. A restarted daemon
        must not bring it back; a new `swarm join` does."""
        log.warning("swarm: this node was removed from its swarm (node rm on another node); leaving it: its "
                    "sandboxes lose their swarm networks")
        with self._lock:
            self._on_removed()
            try:
                if self._lease is not None:
                    kv.revoke(self._lease)
            except NsnetError:
                pass   # it expires by itself
            kv.close()
            swarmfile.remove(self.root)
            self.settings, self.kv, self._broken, self._lease = None, None, "", None

    # ---- nodes -------------------------------------------------------------------------------------

    def nodes(self) -> list[dict]:
        self._check_member()
        alive = {e.key.split("/", 1)[1] for e in self.kv.list("alive/")}
        return [self._doc(e.value, e.value["id"] in alive) for e in self.kv.list("nodes/")]

    def node(self, ref: str) -> dict:
        nodes = self.nodes()
        for match in (lambda n: n["ID"] == ref, lambda n: n["Description"]["Hostname"] == ref,
                      lambda n: n["ID"].startswith(ref)):
            found = [n for n in nodes if match(n)]
            if len(found) == 1:
                return found[0]
            if found:
                raise NsnetError(f"node {ref!r} is ambiguous: {len(found)} nodes match; use its ID")
        raise NotFound(f"no such node: {ref}")

    def remove_node(self, ref: str, force: bool) -> str:
        n = self.node(ref)
        name = n["Description"]["Hostname"]
        if n["ID"] == self.node_id:
            raise Conflict(f"node {name} is this node: use nsnet swarm leave")
        if n["Status"]["State"] == "ready" and not force:
            raise Conflict(f"node {name} is not down and can't be removed: use --force")
        drop_endpoints(self.kv, n["ID"])
        self.kv.commit(_node_keys(self.kv, n["ID"]))
        return n["ID"]

    def _doc(self, rec: dict, ready: bool) -> dict:
        """Docker's node inspect document, as far as it applies."""
        return {"ID": rec["id"], "CreatedAt": rec["created"], "Self": rec["id"] == self.node_id,
                "Description": {"Hostname": rec["name"]},
                "Status": {"State": "ready" if ready else "down", "Addr": rec["addr"]}}

    def _check_member(self) -> None:
        if not self.settings:
            raise NsnetError("this node is not part of a swarm: use nsnet swarm init or nsnet swarm join")
        if self.kv is None:
            raise NsnetError(f"swarm settings in {swarmfile.FILE} cannot be used: {self._broken}", 503)

    def info(self) -> dict:
        """`info`'s Swarm, in Docker's shape."""
        s = self.settings
        if not s:
            return {"LocalNodeState": "inactive", "NodeID": "", "NodeAddr": "", "Nodes": 0, "Error": ""}
        doc = {"LocalNodeState": "active", "NodeID": self.node_id, "NodeAddr": s.advertise_addr,
               "NodeName": s.node_name, "Store": s.endpoints, "Nodes": 0, "Error": "",
               "Cluster": {"DefaultAddrPool": s.pools, "SubnetSize": s.mask, "DataPathPort": s.data_path_port}}
        try:
            self._check_member()
            doc["Nodes"] = len(self.kv.list("nodes/"))
            c = self.kv.get("cluster")
            if c:
                doc["Cluster"].update(ID=c.value["id"], CreatedAt=c.value["created"])
        except NsnetError as e:
            doc["Error"] = str(e)
        return doc


def _node_keys(kv, node_id: str) -> list[Op]:
    """The deletes of a node's own keys: its record, lease key, evidence, Down mark, its sandboxes' published
    ports (engine/services.py), and what it publishes for a driver (`drivers/<driver>/node/<node id>`, e.g.
    its tunnel's public key)."""
    return ([Op(f"{kind}/{node_id}", None) for kind in ("nodes", "alive", "evidence", "down", "ports")] +
            [Op(e.key, None) for e in kv.list("drivers/") if e.key.endswith(f"/node/{node_id}")])


def drop_endpoints(kv, node_id: str) -> int:
    """A node's endpoints on swarm networks, and their address claims, out of the store (node rm, or its
    grace period over): their addresses are free again. How many."""
    gone = [e for e in kv.list("endpoint/") if e.value.get("node") == node_id]
    ops = [Op(e.key, None) for e in gone] + [Op(k, None) for e in gone for k in claims("endpoint", e.value)]
    for i in range(0, len(ops), TXN_OPS):
        kv.commit(ops[i:i + TXN_OPS])
    return len(gone)


def request(body: dict, join: bool) -> Settings:
    """The API's init/join body, checked, as the settings to keep."""
    tls = bool(body.get("StoreCA") or body.get("StoreCert"))
    s = Settings(endpoints=swarmfile.endpoints(body["Store"], tls),
                 advertise_addr=swarmfile.advertise_address(body["AdvertiseAddr"]),
                 node_name=body.get("NodeName") or socket.gethostname(),
                 ca=body.get("StoreCA"), cert=body.get("StoreCert"), key=body.get("StoreKey"),
                 user=body.get("StoreUser"), password=body.get("StorePassword"))
    if not join:
        s.mask = body.get("SubnetSize") or swarmfile.DEFAULT_MASK
        s.pools = swarmfile.pools(body.get("DefaultAddrPool") or swarmfile.DEFAULT_POOLS, s.mask)
        s.data_path_port = swarmfile.check_port(body.get("DataPathPort") or swarmfile.DATA_PATH_PORT)
    return s
