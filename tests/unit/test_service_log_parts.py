"""`service logs`' pure parts (engine/servicelogs.py, cli/output.py): the tail, the fair shares of an answer's
cap, the cut that keeps each log's end within etcd's request size, Docker's prefixes; the swarm watch's view
of the asks; and the requester's protocol against a store with leases (SQLite standing in for etcd)."""
import json
import os
import threading
from types import SimpleNamespace

import pytest

from nsnet.cli.output import log_prefix, service_logs
from nsnet.engine import servicelogs
from nsnet.engine.servicelogs import CUT, collect, json_len, keep_end, read_logs, shares, tail_lines
from nsnet.engine.services import Services
from nsnet.engine.swarm import View
from nsnet.errors import NotFound
from nsnet.store import Event, Op
from nsnet.store.sqlite import SqliteKV


@pytest.mark.parametrize("text, n, want", [
    ("a\nb\nc\n", 2, "b\nc\n"), ("a\nb\nc", 2, "b\nc"), ("a\nb\nc\n", 9, "a\nb\nc\n"), ("a\nb\n", 0, ""),
    ("", 3, ""), ("a\r\nb\x0cc\n", 1, "b\x0cc\n"),   # lines end at \n only, as Docker's
    ("a\n\n\n", 2, "\n\n"), ("x", None, "x")])
def test_tail_lines(text, n, want):
    assert tail_lines(text, n) == want


def test_shares_are_fair_and_what_a_small_one_leaves_goes_to_the_others():
    assert shares({"a": 10, "b": 1000, "c": 5000}, 1000) == {"a": 10, "b": 495, "c": 495}
    assert shares({"a": 10, "b": 20}, 1000) == {"a": 10, "b": 20}
    assert shares({"a": 400, "b": 400, "c": 400}, 1000) == {"a": 333, "b": 333, "c": 334}
    assert shares({}, 1000) == {}


def test_keep_end_keeps_the_end_from_a_line_start_within_the_budget_of_json():
    text = "".join(f"line {i}\n" for i in range(1000))
    assert keep_end(text, 10**6) == text
    kept = keep_end(text, 300)
    assert kept.startswith(CUT) and kept.endswith("line 999\n") and json_len(kept) <= 300
    assert kept[len(CUT):].startswith("line ")            # a whole line first
    # escapes: a byte of log may take 6 or 12 in JSON (ensure_ascii); the budget counts them
    ugly = "".join(f"é\x1b[1m\U0001F600 {i}\n" for i in range(5000))
    kept = keep_end(ugly, 2000)
    assert json_len(kept) <= 2000 and kept.endswith("4999\n") and kept[len(CUT):].startswith("é")
    assert keep_end("short\n", 1000, cut=True) == CUT + "short\n"   # the caller left some out
    assert keep_end("x" * 5000, 500).startswith(CUT + "xxx")        # one long line: its end, not nothing


def test_read_logs_caps_an_answer_fairly_and_keeps_each_end(tmp_path):
    paths = {}
    for tid, n in (("small", 3), ("big1", 50000), ("big2", 80000)):
        paths[tid] = str(tmp_path / tid)
        with open(paths[tid], "w") as f:
            f.writelines(f"{tid} {i}\n" for i in range(n))
    paths["gone"] = str(tmp_path / "gone")
    answer = read_logs(paths, None, cap=100_000)
    assert answer["missing"] == ["gone"]
    logs = answer["logs"]
    assert logs["small"] == "small 0\nsmall 1\nsmall 2\n"                 # small: whole, uncut
    for tid, last in (("big1", 49999), ("big2", 79999)):
        assert logs[tid].startswith(CUT) and logs[tid].endswith(f"{tid} {last}\n")
        assert logs[tid][len(CUT):].startswith(f"{tid} ")
        assert 45_000 < len(logs[tid]) <= 50_000                          # half of what small leaves, each
    assert sum(json_len(t) for t in logs.values()) <= 100_000
    assert len(json.dumps(answer)) < 100_000 + 200
    # --tail: the lines asked for when they fit; marked cut only when they do not
    assert read_logs(paths, 2, cap=100_000)["logs"] == {"small": "small 1\nsmall 2\n", "big1": "big1 49998\nbig1 49999\n",
                                                        "big2": "big2 79998\nbig2 79999\n"}
    tailed = read_logs({"big2": paths["big2"]}, 70000, cap=100_000)["logs"]["big2"]
    assert tailed.startswith(CUT) and tailed.endswith("big2 79999\n")


def test_read_logs_replaces_bad_utf8_and_stays_within_the_cap_in_json(tmp_path):
    path = tmp_path / "log"
    path.write_bytes(b"\xff\xfe\x01" * 200_000 + b"\nend\n")
    answer = read_logs({"t": str(path)}, None, cap=50_000)
    assert answer["logs"]["t"].endswith("\nend\n") and json_len(answer["logs"]["t"]) <= 50_000


def test_docker_prefixes():
    assert log_prefix("web", 1, "a" * 25, "host-a", 3) == f"web.1.{'a' * 12}@host-a    | "
    assert log_prefix("web", 1, "a" * 25, "host-a", 3, trunc=False) == f"web.1.{'a' * 25}@host-a    | "
    assert log_prefix("web", 2, "a" * 25, "host-b", 3, task_ids=False) == "web.2@host-b    | "
    assert log_prefix("web", 3, "t" * 25, "n", 12, task_ids=False) == "web.3@n     | "   # slots up to 12 line up
    doc = {"Service": "web", "Replicas": 2, "Warnings": [],
           "Tasks": [{"ID": "1" * 25, "Slot": 1, "Node": "a", "Log": "x\ny"},
                     {"ID": "2" * 25, "Slot": 2, "Node": "b", "Log": ""},
                     {"ID": "3" * 25, "Slot": 2, "Node": "c", "Log": "z\r\n\n"}]}
    assert service_logs(doc, task_ids=False) == "web.1@a    | x\nweb.1@a    | y\nweb.2@c    | z\r\nweb.2@c    | \n"


def test_the_watch_view_holds_the_asks_not_the_answers():
    view = View()
    view.apply([Event(1, "logs/ask/n1/r1", {"tasks": ["t"], "tail": None, "lease": 7}),
                Event(2, "logs/answer/r1/n1", {"logs": {}, "missing": []})])
    assert view.asks == {"n1/r1": {"tasks": ["t"], "tail": None, "lease": 7}}
    view.apply([Event(3, "logs/ask/n1/r1", None)])
    assert view.asks == {}


class LeasedKV(SqliteKV):
    """SQLite with etcd's leases as far as servicelogs uses them; `answer`: what a node answers, at once."""

    def __init__(self, path, answer=None):
        super().__init__(path)
        self.leases: dict[int, list[str]] = {}
        self.answer = answer
        self.asks: list[tuple[str, dict]] = []

    def grant(self, ttl):
        self.leases[len(self.leases) + 1] = []
        return len(self.leases)

    def put_leased(self, key, value, lease):
        self.leases[lease].append(key)
        self.commit([Op(key, value)])
        if key.startswith("logs/ask/") and self.answer:
            self.asks.append((key, value))
            node, rid = key.split("/")[2:]
            if node in self.answer:
                self.put_leased(f"logs/answer/{rid}/{node}", self.answer[node], lease)

    def revoke(self, lease):
        self.commit([Op(k, None) for k in self.leases.pop(lease)])


def tid(i: int) -> str:
    return str(i) * 25   # a task ID is 25 hex digits (services.TASK_SANDBOX)


def swarm(tmp_path, kv, logs_here: dict[int, str]):
    """A store with service `web`'s tasks of slots 1, 2, 3 on nodes n1 (this one), n2 and n3; n1 and n2 are
    alive. This node's task sandboxes and their logs: `logs_here` (slot -> text)."""
    svc = {"id": "s" * 25, "name": "web", "spec": {"replicas": 3}}
    ops = [Op(f"services/{svc['id']}", svc), Op("names/service/web", {"id": svc["id"]})]
    ops += [Op(f"nodes/n{i}", {"name": f"host-{i}"}) for i in (1, 2, 3)] + [Op(f"alive/n{i}", {}) for i in (1, 2)]
    ops += [Op(f"tasks/{tid(i)}", {"id": tid(i), "service_id": svc["id"], "slot": i, "node": f"n{i}",
                                   "desired": "running"}) for i in (3, 1, 2)]
    kv.commit(ops)
    sbs = {}
    for slot, text in logs_here.items():
        os.makedirs(tmp_path / f"sb{slot}")
        (tmp_path / f"sb{slot}" / "log").write_text(text)
        sbs[f"sb{slot}"] = SimpleNamespace(id=f"sb{slot}", name=f"web.{slot}.{tid(slot)}")
    state = SimpleNamespace(node="n1", sbs=sbs, endpoint_saved=[], alive=set())
    engine = SimpleNamespace(swarm=SimpleNamespace(kv=kv), state=state, lock=threading.RLock(),
                             feed=SimpleNamespace(sources=[]), root=str(tmp_path / "root"), log_path=lambda ref: str(tmp_path / ref / "log"))
    engine.services = Services(engine)
    return engine


def test_collect_asks_each_live_node_once_reads_its_own_and_leaves_no_key(tmp_path, monkeypatch):
    kv = LeasedKV(str(tmp_path / "db"), answer={"n2": {"logs": {tid(2): "two\n"}, "missing": []}})
    monkeypatch.setattr(servicelogs, "ANSWER_WAIT", 0.2)
    doc = collect(swarm(tmp_path, kv, {1: "one\nuno\n"}), "web", 1)
    assert [(t["Slot"], t["Node"], t["Log"]) for t in doc["Tasks"]] == [(1, "host-1", "uno\n"), (2, "host-2", "two\n")]
    assert doc["Warnings"] == ["node host-3 is down: logs of its tasks are not available"]
    assert [(k.rsplit("/", 1)[0], v["tasks"], v["tail"]) for k, v in kv.asks] == [("logs/ask/n2", [tid(2)], 1)]
    assert kv.list("logs/") == [] and kv.leases == {}


def test_collect_says_which_node_did_not_answer(tmp_path, monkeypatch):
    kv = LeasedKV(str(tmp_path / "db"), answer={})
    monkeypatch.setattr(servicelogs, "ANSWER_WAIT", 0.1)
    doc = collect(swarm(tmp_path, kv, {}), "web", None)
    assert doc["Tasks"] == []
    assert doc["Warnings"] == ["node host-3 is down: logs of its tasks are not available",
                               "node host-2 did not answer within 0.1 s: logs of its tasks are not available"]
    assert kv.list("logs/") == [] and kv.leases == {}
    with pytest.raises(NotFound, match="no such service: nosuch"):
        collect(swarm(tmp_path / "2", LeasedKV(str(tmp_path / "db2")), {}), "nosuch", None)


def test_an_ended_runs_log_is_kept_before_the_next_and_goes_with_its_task(tmp_path):
    from nsnet.engine.servicelogs import KEPT_CAP, forget_kept, keep, kept_path
    root, run = str(tmp_path), tmp_path / "log"
    run.write_text("run 1\n")
    keep(root, "t1", str(run))
    run.write_text("run 2\n")
    keep(root, "t1", str(run))
    run.write_text("run 3 (current)\n")
    assert read_logs({"t1": [kept_path(root, "t1"), str(run)]}, None)["logs"]["t1"] == "run 1\nrun 2\nrun 3 (current)\n"
    assert read_logs({"t1": [kept_path(root, "t1"), str(run)]}, 2)["logs"]["t1"] == "run 2\nrun 3 (current)\n"
    run.write_text("x" * 99 + "\n" + "y\n" * KEPT_CAP)                # longer than what is kept: its end, whole lines
    keep(root, "t1", str(run))
    kept = open(kept_path(root, "t1")).read()
    assert len(kept.encode()) <= KEPT_CAP and kept.startswith("y\n") and kept.endswith("y\n")
    keep(root, "t2", str(run))
    forget_kept(root, {"t2"})
    assert not os.path.exists(kept_path(root, "t1")) and os.path.exists(kept_path(root, "t2"))
