"""The store protocol: what nsnet keeps, as JSON documents under string keys, with revisions.

The shape is etcd's, so that an etcd backend can sit behind the same calls when hosts share networks:
- every committed change set gets the next store-wide revision; each key keeps the revision that created
  it and the one that last changed it (`Entry.mod_revision`);
- `commit` applies a set of writes all or nothing, after comparing each key's revision where asked
  (`Op.expect`: 0 = the key must not exist; N = it must still be at revision N). That is create-if-absent
  and compare-and-swap, and what keeps names and addresses unique when several writers race;
- `watch` returns the changes under a prefix after a revision, so a reader that fell behind catches up
  from where it was; `Compacted` says that history is gone and the reader must re-read everything.

Backends: `sqlite.SqliteKV` (one host, embedded) and `etcd.EtcdKV` (hosts that share networks: etcd v3).
`records.Records` is the engine's view: records by kind and id, with unique names.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Protocol

from ..errors import Conflict, NsnetError


@dataclass(frozen=True)
class Entry:
    key: str
    value: dict
    create_revision: int
    mod_revision: int


@dataclass(frozen=True)
class Op:
    """One write of a commit: `value` None deletes the key. `expect` compares first (None: no compare).
    `write` False: the key is only compared (compare_only)."""
    key: str
    value: dict | None
    expect: int | None = None
    write: bool = True


def compare_only(key: str, revision: int) -> Op:
    """A commit's condition on a key it does not write: the key still at `revision` (0: still absent)."""
    return Op(key, None, revision, write=False)


@dataclass(frozen=True)
class Event:
    revision: int
    key: str
    value: dict | None               # None: the key was deleted


class CompareFailed(Conflict):
    """A commit's compare did not hold: someone else changed `key` first. Nothing was written."""

    def __init__(self, key: str):
        super().__init__(f"{key} was changed by another writer")
        self.key = key


class Compacted(NsnetError):
    """The history a watch asked for is gone: re-read the whole prefix, then watch from its revision."""


class Store(Protocol):
    def revision(self) -> int: ...

    def get(self, key: str) -> Entry | None: ...

    def list(self, prefix: str) -> list[Entry]: ...

    def commit(self, ops: Iterable[Op]) -> int:
        """Apply `ops` all or nothing; the new revision. Raises CompareFailed, writing nothing."""

    def watch(self, prefix: str, after: int, timeout: float) -> list[Event]:
        """The changes under `prefix` with a revision above `after`, oldest first; waits up to `timeout`
        for the first one. Raises Compacted when `after` is older than the history kept."""

    def close(self) -> None: ...
