"""The engine's records on a store: documents by kind and id, names and addresses unique, and the host's own
part of each record apart from what hosts could share. Writes inside `transaction()` are buffered and
committed together when it ends, or dropped when it raises, so the kernel work a use case does inside it
never holds the database.

Keys (docs/architecture.md, "What is cluster-wide and what is one host's"):
- what a store shared by hosts would hold: `network/<id>`, `sandbox/<id>`, `endpoint/<id>` (without their
  host-only fields, model.HOST_ONLY), `names/<kind>/<name>` → {"id"}, `addresses/<network id>/<ip>` → {"id"
  of the endpoint}; a name or an address is created with a compare (it must not exist), so two writers
  never both take it;
- one host's, never shared: `local/<kind>/<id>` (the host-only fields of that record), `meta/<key>`.
"""
from __future__ import annotations

import logging
import threading
from contextlib import contextmanager
from typing import Iterable

from ..errors import Conflict, NsnetError
from ..model import HOST_ONLY
from . import CompareFailed, Op, Store

log = logging.getLogger("nsnet.store")

NAMED = {"network", "sandbox"}   # kinds whose records carry a unique "name"
CLAIMING = NAMED | {"endpoint"}  # kinds whose records hold keys alone (claims)
LOCAL = "local/"                 # the host's own part of the records


def record_key(kind: str, id_: str) -> str:
    return f"{kind}/{id_}"


def local_key(kind: str, id_: str) -> str:
    return LOCAL + record_key(kind, id_)


def name_key(kind: str, name: str) -> str:
    return f"names/{kind}/{name}"


def address_key(network_id: str, ip: str) -> str:
    return f"addresses/{network_id}/{ip}"


def meta_key(key: str) -> str:
    return f"meta/{key}"


def claims(kind: str, doc: dict | None) -> list[str]:
    """The keys a record holds alone: its name, and an endpoint's addresses on its network."""
    if doc is None:
        return []
    if kind in NAMED:
        return [name_key(kind, doc["name"])]
    if kind == "endpoint":
        return [address_key(doc.get("network_id"), a.split("/")[0]) for a in (doc.get("ipv4"), doc.get("ipv6")) if a]
    return []


def split(kind: str, doc: dict) -> tuple[dict, dict | None]:
    """What a shared store may hold of a record, and the host's own part (None: the kind has none)."""
    host = HOST_ONLY.get(kind)
    if not host:
        return doc, None
    return {k: v for k, v in doc.items() if k not in host}, {k: doc.get(k) for k in host}


def _taken(key: str) -> Conflict:
    """A claim another writer committed first, as the one line a user reads."""
    kind, _, rest = key.partition("/")
    if kind == "names":
        what, _, name = rest.partition("/")
        return Conflict(f"{what} name {name} is already in use")
    if kind == "addresses":
        net, _, ip = rest.partition("/")
        return Conflict(f"address {ip} is already in use on network {net[:12]}")
    return CompareFailed(key)


class Records:
    """The records of one host (`kv`, its own store) and, while it is a swarm member, of the networks it
    shares with the swarm's other hosts (`shared`: etcd). A record goes to one store or the other whole
    (`shared=` on put and delete: a swarm network, its endpoints and their claims); its host-only part
    always stays in the host's own store."""

    def __init__(self, store: Store):
        self.kv = store
        self.shared: Store | None = None
        self._local = threading.local()   # this thread's open transaction: {(shared, key): Op}, in order
        self._split_whole_records()

    def share(self, store: Store | None) -> None:
        """From now on records put with shared=True go to `store` (None: this host left its swarm)."""
        self.shared = store

    def _kv(self, shared: bool) -> Store:
        if not shared:
            return self.kv
        if self.shared is None:
            raise NsnetError("this node is not part of a swarm: use nsnet swarm init or nsnet swarm join")
        return self.shared

    @contextmanager
    def transaction(self):
        """All writes inside commit together or not at all; nesting joins the outer transaction. A
        transaction that writes to both stores commits the shared one first (its compares may refuse);
        the host's own store then takes the rest (a local SQLite commit fails only with the disk)."""
        outer = getattr(self._local, "ops", None) is None
        if outer:
            self._local.ops = {}
        try:
            yield self
            if outer and self._local.ops:
                for shared in (True, False):
                    ops = [op for (sh, _), op in self._local.ops.items() if sh is shared]
                    if ops:
                        self._commit(ops, shared)
        finally:
            if outer:
                self._local.ops = None

    def _commit(self, ops: Iterable[Op], shared: bool) -> None:
        try:
            self._kv(shared).commit(ops)
        except CompareFailed as e:
            raise _taken(e.key) from None

    def _write(self, shared: bool, *ops: Op) -> None:
        pending = getattr(self._local, "ops", None)
        if pending is None:
            self._commit(ops, shared)
            return
        for op in ops:
            pending.pop((shared, op.key), None)   # the last write of a key wins, in the order written
            pending[(shared, op.key)] = op

    def _current(self, key: str, shared: bool):
        """The value as this thread's transaction would leave it (its pending write, else the store's)."""
        pending = getattr(self._local, "ops", None) or {}
        if (shared, key) in pending:
            return pending[(shared, key)].value
        entry = self._kv(shared).get(key)
        return entry.value if entry else None

    def put(self, kind: str, id_: str, doc: dict, shared: bool = False, fresh: bool = False) -> None:
        """Save a record: its shared part, its host's part, and the names and addresses it takes. A claim
        held by another record raises Conflict, here or (when another writer was first) at the commit.
        `fresh`: a record made just now under a new id, so no claims of an earlier version to free (and no
        read of it first: on a swarm's store, one round trip to etcd less on every attach)."""
        shared_part, own = split(kind, doc)
        ops = [Op(record_key(kind, id_), shared_part)]
        new = claims(kind, doc)
        old = [] if fresh or kind not in CLAIMING else claims(kind, self._current(record_key(kind, id_), shared))
        ops += [Op(key, None) for key in old if key not in new]
        pending = getattr(self._local, "ops", None) or {}
        for key in new:
            if key in old:
                continue
            mine = pending.get((shared, key))
            if mine is not None and mine.value is not None and mine.value["id"] != id_:
                raise _taken(key)   # another record of this transaction holds it
            # Created only if still free when committed (expect 0): one holder, however many writers. Freed
            # earlier in this transaction: it is ours to write again.
            ops.append(Op(key, {"id": id_}, expect=None if mine is not None else 0))
        self._write(shared, *ops)
        if own is not None:
            self._write(False, Op(local_key(kind, id_), own))

    def delete(self, kind: str, id_: str, shared: bool = False) -> None:
        ops = [Op(record_key(kind, id_), None)]
        if kind in CLAIMING:
            ops += [Op(key, None) for key in claims(kind, self._current(record_key(kind, id_), shared))]
        self._write(shared, *ops)
        if kind in HOST_ONLY:
            self._write(False, Op(local_key(kind, id_), None))

    def list(self, kind: str, shared: bool = False) -> list[dict]:
        """The records of `kind` (in the shared store: every host's), each joined with this host's part."""
        own = {e.key[len(LOCAL):]: e.value for e in self.kv.list(local_key(kind, ""))} if kind in HOST_ONLY else {}
        return [{**e.value, **own.get(e.key, {})} for e in self._kv(shared).list(record_key(kind, ""))]

    def addresses(self, network_id: str, shared: bool = False) -> list[str]:
        """Every address claimed on a network, as the store holds them now (whoever holds them)."""
        prefix = address_key(network_id, "")
        return [e.key[len(prefix):] for e in self._kv(shared).list(prefix)]

    def meta(self, key: str, default: str | None = None) -> str | None:
        entry = self.kv.get(meta_key(key))
        return entry.value["value"] if entry else default

    def set_meta(self, key: str, value: str) -> None:
        self._write(False, Op(meta_key(key), {"value": value}))

    def close(self) -> None:
        self.kv.close()

    def _split_whole_records(self) -> None:
        """A store from before the split keeps each sandbox and endpoint whole under one key, and no keys
        for the addresses: each such record is rewritten split, with its claims, once, at open. One whose
        claim another holds stays whole (it still loads) and is logged."""
        for kind, host in HOST_ONLY.items():
            for entry in self.kv.list(record_key(kind, "")):
                if not any(f in entry.value for f in host):
                    continue
                id_ = entry.key[len(kind) + 1:]
                shared, own = split(kind, entry.value)
                ops = [Op(entry.key, shared, expect=entry.mod_revision), Op(local_key(kind, id_), own)]
                ops += [Op(key, {"id": id_}, expect=0) for key in claims(kind, entry.value) if self.kv.get(key) is None]
                try:
                    self.kv.commit(ops)
                except CompareFailed as e:
                    log.warning("%s: kept whole: %s", entry.key, e)
