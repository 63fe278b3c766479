"""The store protocol on SQLite: the shared protocol tests (store_contract), its compaction and migration."""
import json
import sqlite3

import pytest

from nsnet.errors import Conflict
from nsnet.store import Compacted, Op
from nsnet.store import sqlite as sqlite_mod
from nsnet.store.records import Records
from nsnet.store.sqlite import SqliteKV
from store_contract import *  # noqa: F401,F403 (the protocol's tests, run on this module's kv)


@pytest.fixture
def kv(tmp_path):
    s = SqliteKV(str(tmp_path / "state.db"))
    yield s
    s.close()


def test_watch_from_compacted_history_says_so(kv, monkeypatch):
    monkeypatch.setattr(sqlite_mod, "HISTORY", 3)
    for i in range(10):
        kv.commit([Op(f"k/{i}", {"i": i})])
    with pytest.raises(Compacted):
        kv.watch("k/", 0, timeout=0)
    assert [e.key for e in kv.watch("k/", kv.revision() - 1, timeout=0)] == ["k/9"]


def test_a_state_db_from_before_revisions_is_migrated(tmp_path):
    path = str(tmp_path / "state.db")
    db = sqlite3.connect(path)
    db.executescript("""
        CREATE TABLE docs (kind TEXT, id TEXT, name TEXT, doc TEXT, PRIMARY KEY (kind, id));
        CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);""")
    db.execute("INSERT INTO docs VALUES ('network', 'n1', 'web', ?)", (json.dumps({"id": "n1", "name": "web"}),))
    db.execute("INSERT INTO docs VALUES ('endpoint', 'e1', NULL, ?)", (json.dumps({"id": "e1"}),))
    db.execute("INSERT INTO meta VALUES ('engine_id', 'abc')")
    db.commit()
    db.close()
    rec = Records(SqliteKV(path))
    assert rec.list("network") == [{"id": "n1", "name": "web"}] and rec.list("endpoint") == [{"id": "e1"}]
    assert rec.meta("engine_id") == "abc"
    with pytest.raises(Conflict):
        rec.put("network", "n2", {"id": "n2", "name": "web"})
    rec.close()
    again = Records(SqliteKV(path))       # opened again: nothing migrates twice
    assert len(again.list("network")) == 1
    again.close()
