"""State of one engine: an embedded SQLite document store.

Every record is a JSON document under (kind, id), with a unique name per kind where it has one.
The interface is small on purpose (get/put/delete/list inside transactions) so that an etcd
backend can sit behind the same calls when hosts share networks.
"""
from __future__ import annotations

import json
import os
import sqlite3
import threading
from contextlib import contextmanager

SCHEMA = """
CREATE TABLE IF NOT EXISTS docs (
    kind TEXT NOT NULL,
    id   TEXT NOT NULL,
    name TEXT,
    doc  TEXT NOT NULL,
    PRIMARY KEY (kind, id)
);
CREATE UNIQUE INDEX IF NOT EXISTS docs_name ON docs (kind, name) WHERE name IS NOT NULL;
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


class SqliteStore:
    def __init__(self, path: str):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        # Only root reads the state; SQLite gives the -wal and -shm files the database file's mode.
        os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(SCHEMA)
        self._lock = threading.RLock()
        self._depth = 0

    @contextmanager
    def transaction(self):
        """All writes inside commit together or not at all; nesting joins the outer transaction."""
        with self._lock:
            outer = self._depth == 0
            if outer:
                self._db.execute("BEGIN IMMEDIATE")
            self._depth += 1
            try:
                yield self
            except BaseException:
                self._depth -= 1
                if outer:
                    self._db.execute("ROLLBACK")
                raise
            self._depth -= 1
            if outer:
                self._db.execute("COMMIT")

    def put(self, kind: str, id: str, doc: dict, name: str | None = None) -> None:
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO docs(kind, id, name, doc) VALUES (?, ?, ?, ?)",
                (kind, id, name, json.dumps(doc, separators=(",", ":"))),
            )

    def get(self, kind: str, id: str) -> dict | None:
        with self._lock:
            row = self._db.execute("SELECT doc FROM docs WHERE kind=? AND id=?", (kind, id)).fetchone()
        return json.loads(row[0]) if row else None

    def find_id(self, kind: str, name: str) -> str | None:
        with self._lock:
            row = self._db.execute("SELECT id FROM docs WHERE kind=? AND name=?", (kind, name)).fetchone()
        return row[0] if row else None

    def ids_with_prefix(self, kind: str, prefix: str) -> list[str]:
        with self._lock:
            rows = self._db.execute(
                "SELECT id FROM docs WHERE kind=? AND id >= ? AND id < ?", (kind, prefix, prefix + "\uffff")
            ).fetchall()
        return [r[0] for r in rows]

    def delete(self, kind: str, id: str) -> None:
        with self._lock:
            self._db.execute("DELETE FROM docs WHERE kind=? AND id=?", (kind, id))

    def list(self, kind: str) -> list[dict]:
        with self._lock:
            rows = self._db.execute("SELECT doc FROM docs WHERE kind=? ORDER BY rowid", (kind,)).fetchall()
        return [json.loads(r[0]) for r in rows]

    def meta(self, key: str, default: str | None = None) -> str | None:
        with self._lock:
            row = self._db.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return row[0] if row else default

    def set_meta(self, key: str, value: str) -> None:
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)", (key, value))

    def close(self) -> None:
        self._db.close()
