"""The store protocol on an embedded SQLite database: one host, no server.

A commit is one SQLite transaction that bumps the store's revision once and logs every change in
`events`, which is what `watch` reads; the log keeps the last HISTORY revisions (etcd compacts too).
"""
from __future__ import annotations

import json
import os
import sqlite3
import threading
from typing import Iterable

from . import CompareFailed, Compacted, Entry, Event, Op

HISTORY = 10_000

SCHEMA = """
CREATE TABLE IF NOT EXISTS kv (
    key        TEXT PRIMARY KEY,
    value      TEXT NOT NULL,
    create_rev INTEGER NOT NULL,
    mod_rev    INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS events (rev INTEGER NOT NULL, key TEXT NOT NULL, value TEXT);
CREATE INDEX IF NOT EXISTS events_rev ON events (rev);
CREATE TABLE IF NOT EXISTS revision (id INTEGER PRIMARY KEY CHECK (id = 0), rev INTEGER NOT NULL,
                                     compacted INTEGER NOT NULL);
INSERT OR IGNORE INTO revision VALUES (0, 0, 0);
"""


def _dump(value: dict | None) -> str | None:
    return None if value is None else json.dumps(value, separators=(",", ":"))


class SqliteKV:
    def __init__(self, path: str):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        # Only root reads the state; SQLite gives the -wal and -shm files the database file's mode.
        os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(SCHEMA)
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        _migrate_docs(self)

    def revision(self) -> int:
        with self._lock:
            return self._db.execute("SELECT rev FROM revision").fetchone()[0]

    def get(self, key: str) -> Entry | None:
        with self._lock:
            row = self._db.execute("SELECT key, value, create_rev, mod_rev FROM kv WHERE key=?", (key,)).fetchone()
        return _entry(row) if row else None

    def list(self, prefix: str) -> list[Entry]:
        with self._lock:
            rows = self._db.execute("SELECT key, value, create_rev, mod_rev FROM kv WHERE key >= ? AND key < ? "
                                    "ORDER BY create_rev, key", (prefix, prefix + "\uffff")).fetchall()
        return [_entry(r) for r in rows]

    def commit(self, ops: Iterable[Op]) -> int:
        ops = list(ops)
        with self._lock:
            db = self._db
            db.execute("BEGIN IMMEDIATE")
            try:
                for op in ops:
                    if op.expect is not None:
                        row = db.execute("SELECT mod_rev FROM kv WHERE key=?", (op.key,)).fetchone()
                        if (row[0] if row else 0) != op.expect:
                            raise CompareFailed(op.key)
                rev, compacted = db.execute("SELECT rev, compacted FROM revision").fetchone()
                rev += 1
                for op in (op for op in ops if op.write):
                    text = _dump(op.value)
                    if text is None:
                        db.execute("DELETE FROM kv WHERE key=?", (op.key,))
                    else:
                        db.execute("INSERT INTO kv VALUES (?, ?, ?, ?) ON CONFLICT(key) DO UPDATE SET "
                                   "value=excluded.value, mod_rev=excluded.mod_rev", (op.key, text, rev, rev))
                    db.execute("INSERT INTO events VALUES (?, ?, ?)", (rev, op.key, text))
                if rev - compacted > 2 * HISTORY:  # trim the log now and then, not at every commit
                    compacted = rev - HISTORY
                    db.execute("DELETE FROM events WHERE rev <= ?", (compacted,))
                db.execute("UPDATE revision SET rev=?, compacted=?", (rev, compacted))
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
            self._changed.notify_all()
            return rev

    def watch(self, prefix: str, after: int, timeout: float) -> list[Event]:
        with self._lock:
            events = self._events(prefix, after)
            if not events and timeout > 0:
                self._changed.wait(timeout)
                events = self._events(prefix, after)
        return events

    def _events(self, prefix: str, after: int) -> list[Event]:
        if after < self._db.execute("SELECT compacted FROM revision").fetchone()[0]:
            raise Compacted(f"revisions up to {after} are compacted: read {prefix!r} again")
        rows = self._db.execute("SELECT rev, key, value FROM events WHERE rev > ? AND key >= ? AND key < ? "
                                "ORDER BY rev, rowid", (after, prefix, prefix + "\uffff")).fetchall()
        return [Event(rev, key, json.loads(v) if v is not None else None) for rev, key, v in rows]

    def close(self) -> None:
        with self._lock:
            self._db.close()


def _entry(row) -> Entry:
    return Entry(row[0], json.loads(row[1]), row[2], row[3])


def _migrate_docs(kv: SqliteKV) -> None:
    """A state.db of nsnet before revisions (tables docs and meta) moves into kv, once, in one commit."""
    tables = {r[0] for r in kv._db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    if "docs" not in tables:
        return
    from .records import meta_key, name_key, record_key

    ops = []
    for kind, id_, name, doc in kv._db.execute("SELECT kind, id, name, doc FROM docs ORDER BY rowid").fetchall():
        ops.append(Op(record_key(kind, id_), json.loads(doc)))
        if name is not None:
            ops.append(Op(name_key(kind, name), {"id": id_}))
    if "meta" in tables:
        ops += [Op(meta_key(k), {"value": v}) for k, v in kv._db.execute("SELECT key, value FROM meta").fetchall()]
    if ops:
        kv.commit(ops)
    kv._db.executescript("DROP TABLE docs; DROP TABLE IF EXISTS meta;")
