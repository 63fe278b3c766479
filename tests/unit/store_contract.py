"""The store protocol, for every backend: revisions, all-or-nothing commits with compares, watches, names.

Each backend's test module imports these tests and gives them its own `kv` fixture (tests/unit/test_store.py:
SQLite; tests/integration/test_store_etcd.py: etcd). A backend may start at any revision (etcd's is shared by
everything in it), so revisions are counted from the one the test starts at.
"""
import threading

import pytest

from nsnet.errors import Conflict
from nsnet.store import CompareFailed, Op, compare_only
from nsnet.store.records import Records


def test_revisions_count_commits_and_entries_keep_theirs(kv):
    r0 = kv.revision()
    r1 = kv.commit([Op("a", {"n": 1}), Op("b", {"n": 2})])
    r2 = kv.commit([Op("a", {"n": 3})])
    assert (r1, r2, kv.revision()) == (r0 + 1, r0 + 2, r0 + 2)
    a, b = kv.get("a"), kv.get("b")
    assert (a.value, a.create_revision, a.mod_revision) == ({"n": 3}, r1, r2)
    assert (b.create_revision, b.mod_revision) == (r1, r1)
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


def test_a_key_only_compared_is_not_written(kv):
    rev = kv.commit([Op("svc", {"v": 1})])
    kv.commit([compare_only("svc", rev), Op("task/1", {"x": 1}, expect=0)])
    assert kv.get("svc").mod_revision == rev and kv.get("task/1") is not None
    kv.commit([Op("svc", {"v": 2})])   # a newer writer: a later commit on the old revision writes nothing
    with pytest.raises(CompareFailed) as failed:
        kv.commit([compare_only("svc", rev), Op("task/2", {"x": 2}, expect=0)])
    assert failed.value.key == "svc" and kv.get("task/2") is None
    kv.commit([compare_only("gone", 0), Op("task/3", {"x": 3})])   # 0: the key still absent
    assert kv.get("gone") is None and kv.get("task/3") is not None


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
    assert [(e.revision, e.key, e.value) for e in events] == [(start + 1, "ep/1", {"ip": "10.0.0.2"}),
                                                             (start + 2, "ep/1", None)]
    assert kv.watch("ep/", start + 2, timeout=0) == []


def test_watch_wakes_up_on_a_commit(kv):
    got, start = [], kv.revision()
    t = threading.Thread(target=lambda: got.extend(kv.watch("ep/", start, timeout=5)))
    t.start()
    kv.commit([Op("ep/9", {"ip": "10.0.0.9"})])
    t.join(5)
    assert [e.key for e in got] == ["ep/9"]


def test_records_buffer_a_transaction_and_drop_it_on_error(kv):
    rec, start = Records(kv), kv.revision()
    with pytest.raises(RuntimeError):
        with rec.transaction():
            rec.put("network", "n1", {"id": "n1", "name": "web"})
            raise RuntimeError("the kernel said no")
    assert rec.list("network") == [] and kv.revision() == start
    with rec.transaction():
        rec.put("network", "n1", {"id": "n1", "name": "web"})
        rec.put("endpoint", "e1", {"id": "e1"})
    assert kv.revision() == start + 1 and [d["id"] for d in rec.list("network")] == ["n1"]


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
