"""A store seen under one prefix: what a driver gets (DriverContext.store), `drivers/<its name>/`.

Keys are relative to the prefix and nothing outside it can be read or written; `watch` is how a driver
hears its peers (the same driver on other hosts writing under the same prefix of a shared store). Commits go
straight to the store, not into the engine's open transaction: a driver undoes its own writes, as it does
its kernel objects.
"""
from __future__ import annotations

from dataclasses import replace
from typing import Iterable

from . import Entry, Event, Op, Store


class Scoped:
    def __init__(self, store: Store, prefix: str):
        self.kv, self.prefix = store, prefix

    def _out(self, item: Entry | Event):
        return replace(item, key=item.key[len(self.prefix):])

    def revision(self) -> int:
        return self.kv.revision()

    def get(self, key: str) -> Entry | None:
        entry = self.kv.get(self.prefix + key)
        return self._out(entry) if entry else None

    def list(self, prefix: str = "") -> list[Entry]:
        return [self._out(e) for e in self.kv.list(self.prefix + prefix)]

    def commit(self, ops: Iterable[Op]) -> int:
        return self.kv.commit([replace(op, key=self.prefix + op.key) for op in ops])

    def watch(self, prefix: str, after: int, timeout: float) -> list[Event]:
        return [self._out(e) for e in self.kv.watch(self.prefix + prefix, after, timeout)]
