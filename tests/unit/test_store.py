"""The store protocol on SQLite: revisions, all-or-nothing commits with compares, watches, names."""
import json
import sqlite3
import threading

import pytest

from nsnet.errors import Conflict
from nsnet.store import CompareFailed, Compacted, Op
from nsnet.store import sqlite as sqlite_mod
from nsnet.store.records import Records
from nsnet.store.sqlite import SqliteKV


@pytest.fixture
def kv(tmp_path):
    s = SqliteKV(str(tmp_path / "state.db"))
    yield s
    s.close()


def test_revisions_count_commits_and_entries_keep_theirs(kv):
    assert kv.revision() == 0
    r1 = kv.commit([Op("a", {"n": 1}), Op("b", {"n": 2})])
    r2 = kv.commit([Op("a", {"n": 3})])
    assert (r1, r2, kv.revision()) == (1, 2, 2)
    a, b = kv.get("a"), kv.get("b")
    assert (a.value, a.create_revision, a.mod_revision) == ({"n": 3}, 1, 2)
    assert (b.create_revision, b.mod_revision) == (1, 1)
    assert kv.get("missing") is None


def test_create_if_absent_and_compare_and_swap(kv):
    kv.commit([Op("name/web", {"id": "1"}, expect=0)])
    with pytest.raises(CompareFailed):
        kv.commit([Op("name/web", {"id": "2"}, expect=0)])
    rev = kv.get("name/web").mod_revision
    kv.commit([Op("name/web", {"id": "3"}, expect=rev)])
    with pytest.raises(CompareFailed):   # a stale revision loses
        kv.commit([Op("name/web", {"id": "4"}, expect=rev)])
    assert kv.get("name/web").value == {"id": "3"}


def test_a_failed_compare_writes_nothing(kv):
    kv.commit([Op("taken", {"x": 1})])
    before = kv.revision()
    with pytest.raises(CompareFailed):
        kv.commit([Op("new", {"x": 2}), Op("taken", {"x": 3}, expect=0)])
    assert kv.get("new") is None and kv.get("taken").value == {"x": 1} and kv.revision() == before


def test_list_by_prefix_in_creation_order(kv):
    kv.commit([Op("net/b", {"i": 1})])
    kv.commit([Op("net/a", {"i": 2}), Op("netx/c", {"i": 3})])
    kv.commit([Op("net/b", {"i": 4})])   # a change keeps the place of its creation
    assert [e.key for e in kv.list("net/")] == ["net/b", "net/a"]


def test_watch_returns_changes_after_a_revision(kv):
    start = kv.revision()
    kv.commit([Op("ep/1", {"ip": "10.0.0.2"}), Op("other/1", {})])
    kv.commit([Op("ep/1", None)])
    events = kv.watch("ep/", start, timeout=0)
    assert [(e.revision, e.key, e.value) for e in events] == [(1, "ep/1", {"ip": "10.0.0.2"}), (2, "ep/1", None)]
    assert kv.watch("ep/", 2, timeout=0) == []


def test_watch_wakes_up_on_a_commit(kv):
    got = []
    t = threading.Thread(target=lambda: got.extend(kv.watch("ep/", kv.revision(), timeout=5)))
    t.start()
    kv.commit([Op("ep/9", {"ip": "10.0.0.9"})])
    t.join(5)
    assert [e.key for e in got] == ["ep/9"]


def test_watch_from_compacted_history_says_so(kv, monkeypatch):
    monkeypatch.setattr(sqlite_mod, "HISTORY", 3)
    for i in range(10):
        kv.commit([Op(f"k/{i}", {"i": i})])
    with pytest.raises(Compacted):
        kv.watch("k/", 0, timeout=0)
    assert [e.key for e in kv.watch("k/", kv.revision() - 1, timeout=0)] == ["k/9"]


def test_records_buffer_a_transaction_and_drop_it_on_error(kv):
    rec = Records(kv)
    with pytest.raises(RuntimeError):
        with rec.transaction():
            rec.put("network", "n1", {"id": "n1", "name": "web"})
            raise RuntimeError("the kernel said no")
    assert rec.list("network") == [] and kv.revision() == 0
    with rec.transaction():
        rec.put("network", "n1", {"id": "n1", "name": "web"})
        rec.put("endpoint", "e1", {"id": "e1"})
    assert kv.revision() == 1 and [d["id"] for d in rec.list("network")] == ["n1"]


def test_names_are_unique_per_kind_and_follow_renames_and_deletes(kv):
    rec = Records(kv)
    rec.put("sandbox", "s1", {"id": "s1", "name": "web"})
    rec.put("network", "n1", {"id": "n1", "name": "web"})      # another kind: its own names
    with pytest.raises(Conflict):
        rec.put("sandbox", "s2", {"id": "s2", "name": "web"})
    rec.put("sandbox", "s1", {"id": "s1", "name": "web2"})     # a rename frees the old name
    rec.put("sandbox", "s2", {"id": "s2", "name": "web"})
    rec.delete("sandbox", "s1")
    rec.put("sandbox", "s3", {"id": "s3", "name": "web2"})
    assert sorted(d["name"] for d in rec.list("sandbox")) == ["web", "web2"]


def test_two_writers_racing_for_one_name_one_wins(kv):
    """Both checked the name free; the store's compare lets only the first commit through."""
    a, b = Records(kv), Records(kv)
    with pytest.raises(Conflict, match="^sandbox name web is already in use$"):
        with a.transaction():
            a.put("sandbox", "s1", {"id": "s1", "name": "web"})
            b.put("sandbox", "s2", {"id": "s2", "name": "web"})   # commits first (no transaction)
    assert [d["id"] for d in a.list("sandbox")] == ["s2"]


def test_meta(kv):
    rec = Records(kv)
    assert rec.meta("engine_id") is None and rec.meta("engine_id", "x") == "x"
    rec.set_meta("engine_id", "abc")
    assert rec.meta("engine_id") == "abc"


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
