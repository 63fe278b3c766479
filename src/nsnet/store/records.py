"""The engine's records on a store: documents by kind and id, names unique per kind, and the host's own
settings (meta). Writes inside `transaction()` are buffered and committed together when it ends, or
dropped when it raises, so the kernel work a use case does inside it never holds the database."""
from __future__ import annotations

import threading
from contextlib import contextmanager

from ..errors import Conflict
from . import Op, Store

NAMED = {"network", "sandbox"}   # kinds whose records carry a unique "name"


def record_key(kind: str, id_: str) -> str:
    return f"{kind}/{id_}"


def name_key(kind: str, name: str) -> str:
    return f"names/{kind}/{name}"


def meta_key(key: str) -> str:
    return f"meta/{key}"


class Records:
    def __init__(self, store: Store):
        self.kv = store
        self._local = threading.local()   # this thread's open transaction: {key: Op}, in order

    @contextmanager
    def transaction(self):
        """All writes inside commit together or not at all; nesting joins the outer transaction."""
        outer = getattr(self._local, "ops", None) is None
        if outer:
            self._local.ops = {}
        try:
            yield self
            if outer and self._local.ops:
                self.kv.commit(self._local.ops.values())
        finally:
            if outer:
                self._local.ops = None

    def _write(self, *ops: Op) -> None:
        pending = getattr(self._local, "ops", None)
        if pending is None:
            self.kv.commit(ops)
            return
        for op in ops:
            pending.pop(op.key, None)   # the last write of a key wins, in the order written
            pending[op.key] = op

    def _current(self, key: str):
        """The value as this thread's transaction would leave it (its pending write, else the store's)."""
        pending = getattr(self._local, "ops", None) or {}
        if key in pending:
            return pending[key].value
        entry = self.kv.get(key)
        return entry.value if entry else None

    def put(self, kind: str, id_: str, doc: dict) -> None:
        ops = [Op(record_key(kind, id_), doc)]
        if kind in NAMED:
            old = self._current(record_key(kind, id_))
            if old is not None and old.get("name") != doc["name"]:
                ops.append(Op(name_key(kind, old["name"]), None))
            held = self._current(name_key(kind, doc["name"]))
            if held is not None and held["id"] != id_:
                raise Conflict(f"{kind} name {doc['name']} is already in use")
            if held is None:  # created only if still free when committed (expect 0): one holder, however many writers
                ops.append(Op(name_key(kind, doc["name"]), {"id": id_}, expect=0))
        self._write(*ops)

    def delete(self, kind: str, id_: str) -> None:
        ops = [Op(record_key(kind, id_), None)]
        old = self._current(record_key(kind, id_)) if kind in NAMED else None
        if old is not None:
            ops.append(Op(name_key(kind, old["name"]), None))
        self._write(*ops)

    def list(self, kind: str) -> list[dict]:
        return [e.value for e in self.kv.list(record_key(kind, ""))]

    def meta(self, key: str, default: str | None = None) -> str | None:
        entry = self.kv.get(meta_key(key))
        return entry.value["value"] if entry else default

    def set_meta(self, key: str, value: str) -> None:
        self._write(Op(meta_key(key), {"value": value}))

    def close(self) -> None:
        self.kv.close()
