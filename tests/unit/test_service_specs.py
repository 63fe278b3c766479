"""Services' pure parts and their records in a store (SQLite here: the same protocol as etcd): placement,
the spec's checks, scale and rm as transactions, Down nodes' tasks moved once, the VIP ruleset's shape,
the restart conditions, and the swarm watch's view of services and tasks."""
import json
import threading
from types import SimpleNamespace

import pytest

from nsnet.daemon.tasks import TASK_SANDBOX, command, should_restart
from nsnet.engine.services import (TXN_OPS, Services, chunks, in_rotation, move_orphans, parse_spec, spread,
                                    task_name, updated_env)
from nsnet.engine.swarm import View
from nsnet.errors import NsnetError, NotFound
from nsnet.firewall import render_vips
from nsnet.store import Event, Op
from nsnet.store.sqlite import SqliteKV


def test_spread_fills_the_fewest_first_ties_by_name():
    ready = {"n2": "host-b", "n1": "host-a"}
    assert spread(3, ready, []) == ["n1", "n2", "n1"]
    busy = [{"node": "n1", "desired": "running"}] * 2 + [{"node": "n1", "desired": "shutdown"}]
    assert spread(3, ready, busy) == ["n2", "n2", "n1"]          # shutting-down tasks do not count
    assert spread(1, {"n1": "a"}, [{"node": "gone", "desired": "running"}]) == ["n1"]
    with pytest.raises(NsnetError, match="no node is Ready"):
        spread(1, {}, [])


@pytest.mark.parametrize("body, says", [
    ({"Name": "web", "Replicas": -1, "Cmd": ["x"]}, "invalid replicas -1"),
    ({"Name": "web", "Replicas": 10_001, "Cmd": ["x"]}, "at most 10000"),
    ({"Name": "web", "Replicas": True, "Cmd": ["x"]}, "invalid replicas True"),
    ({"Name": "we b", "Cmd": ["x"]}, "invalid service name"),
    ({"Name": "a.b", "Cmd": ["x"]}, "no dots"),
    ({"Name": "web", "EndpointMode": "ipvs", "Cmd": ["x"]}, "use vip or dnsrr"),
    ({"Name": "web", "RestartCondition": "always", "Cmd": ["x"]}, "any, on-failure or none"),
    ({"Name": "web", "Env": ["NOVALUE"], "Cmd": ["x"]}, "KEY=VALUE"),
    ({"Name": "web", "Cmd": []}, "no command given"),
])
def test_a_bad_spec_is_one_line(body, says):
    with pytest.raises(NsnetError, match=says) as e:
        parse_spec(body)
    assert "\n" not in str(e.value)


def test_a_spec_takes_dockers_defaults():
    assert parse_spec({"Name": "web", "Cmd": ["sleep", "1"]}) == {
        "replicas": 1, "endpoint_mode": "vip", "restart": "any", "env": [], "cmd": ["sleep", "1"], "networks": [],
        "ports": []}


def test_env_updates_as_dockers_env_add_and_env_rm():
    env = ["A=1", "B=2", "A=3"]
    assert updated_env(env, ["B=9", "C=4"], []) == ["A=1", "B=9", "A=3", "C=4"]   # replaced in place, else appended
    assert updated_env(env, [], ["A", "Z"]) == ["B=2"]                           # every A; an absent name is no error
    assert updated_env(env, ["A=5"], ["A"]) == ["B=2", "A=5"]                    # rm first, then add
    for add, rm, says in ((["NOVALUE"], [], "invalid env 'NOVALUE'"), (["=x"], [], "invalid env"),
                          ([], ["A=1"], "invalid --env-rm 'A=1'"), ([], [""], "invalid --env-rm")):
        with pytest.raises(NsnetError, match=says):
            updated_env(env, add, rm)


def test_restart_conditions():
    assert [should_restart(c, code) for c in ("any", "on-failure", "none") for code in (0, 3, None)] == \
        [True, True, True, False, True, True, False, False, False]
    assert command({"env": ["A=1"], "cmd": ["sh"]}) == ["env", "--", "A=1", "sh"]
    assert command({"env": [], "cmd": ["sh"]}) == ["sh"]
    t = {"slot": 2, "id": "a" * 25}
    assert TASK_SANDBOX.match(task_name("web", t)).group(1) == "a" * 25
    assert not TASK_SANDBOX.match("web.2") and not TASK_SANDBOX.match("my.web.2." + "a" * 25)


def test_the_vip_ruleset_spreads_over_the_tasks_and_refuses_without_any():
    doc = json.loads(render_vips({"10.0.0.9": ["10.0.0.3", "10.0.0.4"], "10.0.0.10": []}))["nftables"]
    rules = {r["add"]["rule"]["chain"]: r["add"]["rule"]["expr"] for r in doc if "rule" in r.get("add", {})}
    [vips] = [d["add"]["map"] for d in doc if "map" in d.get("add", {})]
    assert (vips["type"], vips["map"]) == ("ipv4_addr", "verdict")
    chains = {ip: v["goto"]["target"] for ip, v in vips["elem"]}
    pick = rules[chains["10.0.0.9"]][0]["dnat"]["addr"]["map"]
    assert pick["key"] == {"numgen": {"mode": "random", "mod": 2, "offset": 0}}
    assert pick["data"]["set"] == [[0, "10.0.0.3"], [1, "10.0.0.4"]]
    assert "reject" in rules[chains["10.0.0.10"]][0]
    [hook] = [d["add"]["chain"] for d in doc if d.get("add", {}).get("chain", {}).get("hook")]
    assert (hook["type"], hook["hook"], hook["prio"]) == ("nat", "output", -100)


def test_in_rotation_only_running_wanted_and_alive():
    t = {"desired": "running", "state": "running", "node": "n1"}
    assert in_rotation(t, {"n1"})
    assert not in_rotation(t, set())
    assert not in_rotation({**t, "desired": "shutdown"}, {"n1"})
    assert not in_rotation({**t, "state": "assigned"}, {"n1"})


def test_the_view_follows_services_and_tasks():
    v = View()
    v.apply([Event(1, "services/s1", {"id": "s1"}), Event(2, "tasks/t1", {"id": "t1"}), Event(3, "tasks/t2", {"id": "t2"})])
    v.apply([Event(4, "tasks/t1", None)])
    assert v.services == {"s1": {"id": "s1"}} and list(v.tasks) == ["t2"]


# ---- the use cases on a store ------------------------------------------------------------------------

@pytest.fixture
def svc(tmp_path):
    kv = SqliteKV(str(tmp_path / "swarm.db"))
    for node, name in (("n1", "host-a"), ("n2", "host-b")):
        kv.commit([Op(f"nodes/{node}", {"id": node, "name": name, "addr": "x"}), Op(f"alive/{node}", {})])
    state = SimpleNamespace(endpoint_saved=[], alive={"n1", "n2"}, nets={})
    engine = SimpleNamespace(swarm=SimpleNamespace(kv=kv), state=state, lock=threading.RLock(),
                             feed=SimpleNamespace(sources=[]))
    yield Services(engine), kv
    kv.close()


def tasks_of(kv) -> list[dict]:
    return sorted((e.value for e in kv.list("tasks/")), key=lambda t: t["slot"])


def test_create_scale_rm_as_transactions(svc):
    services, kv = svc
    doc = services.create({"Name": "web", "Replicas": 3, "EndpointMode": "dnsrr", "Cmd": ["sleep", "9"]})
    assert kv.get("names/service/web").value == {"id": doc["id"]}
    assert [(t["slot"], t["node"], t["desired"], t["state"]) for t in tasks_of(kv)] == [
        (1, "n1", "running", "assigned"), (2, "n2", "running", "assigned"), (3, "n1", "running", "assigned")]
    with pytest.raises(NsnetError, match="service web already exists"):
        services.create({"Name": "web", "Cmd": ["x"]})

    services.scale("web", 5)
    assert [(t["slot"], t["node"]) for t in tasks_of(kv)][3:] == [(4, "n2"), (5, "n1")]   # fewest first
    services.scale(doc["id"][:6], 2)                                                      # by ID prefix
    assert [(t["slot"], t["desired"]) for t in tasks_of(kv)] == [
        (1, "running"), (2, "running"), (3, "shutdown"), (4, "shutdown"), (5, "shutdown")]
    assert services.inspect("web")["Spec"]["Mode"]["Replicated"]["Replicas"] == 2
    with pytest.raises(NotFound, match="no such service: nope"):
        services.scale("nope", 1)

    kv.commit([Op("alive/n2", None)])          # n2 is Down: its task is deleted at rm, n1's told to stop
    services.remove("web")
    assert kv.get("names/service/web") is None and kv.list("services/") == []
    assert {(t["node"], t["desired"]) for t in tasks_of(kv)} == {("n1", "shutdown")}


def test_a_down_nodes_tasks_move_once(svc):
    services, kv = svc
    services.create({"Name": "web", "Replicas": 4, "EndpointMode": "dnsrr", "Cmd": ["x"]})
    kv.commit([Op("nodes/n3", {"id": "n3", "name": "host-c", "addr": "x"}), Op("alive/n3", {})])
    kv.commit([Op("alive/n2", None)])
    assert move_orphans(kv, "n2") == 0          # a node that is itself Down decides nothing
    assert move_orphans(kv, "n1") == 2
    assert move_orphans(kv, "n3") == 0          # moved already: nothing left for another node
    assert sorted(t["node"] for t in tasks_of(kv)) == ["n1", "n1", "n3", "n3"]
    assert all(t["state"] == "assigned" for t in tasks_of(kv) if t["node"] == "n3")


def test_an_update_is_taken_over_once_from_a_down_driver(svc):
    services, kv = svc
    services.e.state.node = "n1"
    doc = services.create({"Name": "web", "Replicas": 2, "EndpointMode": "dnsrr", "Cmd": ["x"]})
    update = {"state": "updating", "driver": "n2", "version": 2, "parallelism": 1, "delay": 0, "stop_first": False,
              "started": "t", "message": ""}
    kv.commit([Op(f"services/{doc['id']}", {**doc, "version": 2, "update": update})])
    assert services.take_over(kv, doc["id"]) is None            # its driver is alive
    kv.commit([Op("alive/n2", None)])
    taken = services.take_over(kv, doc["id"])
    assert taken["update"]["driver"] == "n1" and kv.get(f"services/{doc['id']}").value["update"]["driver"] == "n1"
    services.driving[doc["id"]] = 2
    assert services.take_over(kv, doc["id"]) is None            # driven here already
    services._end_update(kv, doc["id"], 1, "completed", "x")    # an earlier update's driver writes nothing
    assert kv.get(f"services/{doc['id']}").value["update"]["state"] == "updating"
    services._end_update(kv, doc["id"], 2, "paused", "a new task failed")
    status = services.inspect("web")["UpdateStatus"]
    assert (status["State"], status["Message"]) == ("paused", "a new task failed") and status["CompletedAt"]


def test_a_down_nodes_host_mode_task_moves_only_to_a_node_without_one(svc):
    services, kv = svc
    services.e.state.node = "n1"
    services._check_free_here = lambda p: None   # no host here to hold ports on
    services.e.state.sbs = {}
    services.create({"Name": "web", "Replicas": 2, "EndpointMode": "dnsrr", "Cmd": ["x"],
                     "Publish": ["published=8080,target=80,mode=host"]})
    assert sorted(t["node"] for t in tasks_of(kv)) == ["n1", "n2"]
    kv.commit([Op("alive/n2", None)])
    assert move_orphans(kv, "n1") == 0            # n1 holds 8080 for its own task already
    stuck = next(t for t in tasks_of(kv) if t["node"] == "n2")
    assert stuck["state"] == "pending" and "mode=host" in stuck["error"]
    kv.commit([Op("nodes/n3", {"id": "n3", "name": "host-c", "addr": "x"}), Op("alive/n3", {})])
    assert move_orphans(kv, "n1") == 1            # a node without one
    assert sorted(t["node"] for t in tasks_of(kv)) == ["n1", "n3"]

# ---- more tasks than one etcd transaction takes ------------------------------------------------------

def test_ops_are_cut_to_fit_etcds_transactions():
    ops = list(range(300))
    parts = chunks(ops, TXN_OPS - 4)                # 4: the first commit's own claims
    assert [len(p) for p in parts] == [124, 127, 49] and sum(parts, []) == ops   # 127: room for the condition
    assert chunks([], 10) == [[]] and chunks(ops[:5], 0) == [[], ops[:5]]
    with pytest.raises(ValueError):
        chunks(ops, -1)


class Recorded:
    """A store that keeps every commit's ops, and runs `rival()` once, ahead of its second commit."""

    def __init__(self, kv):
        self.kv, self.commits, self.rival = kv, [], None

    def commit(self, ops):
        ops = list(ops)
        if self.rival is not None and len(self.commits) == 1:
            rival, self.rival = self.rival, None
            rival()
        self.commits.append(ops)
        return self.kv.commit(ops)

    def __getattr__(self, name):
        return getattr(self.kv, name)


@pytest.fixture
def rec(svc):
    services, kv = svc
    services.e.swarm.kv = recorded = Recorded(kv)
    yield services, recorded


def wanted(kv) -> list[int]:
    return sorted(t["slot"] for t in tasks_of(kv) if t["desired"] == "running")


def test_300_tasks_are_created_scaled_and_removed_in_commits_of_128(rec):
    services, kv = rec
    doc = services.create({"Name": "web", "Replicas": 300, "EndpointMode": "dnsrr", "Cmd": ["x"]})
    assert wanted(kv) == list(range(1, 301))
    assert {n: sum(t["node"] == n for t in tasks_of(kv)) for n in ("n1", "n2")} == {"n1": 150, "n2": 150}
    first, *later = kv.commits
    assert first[0].key == "names/service/web" and len(later) == 2
    for ops in later:   # each later commit holds only while the service is as the first one left it
        assert ops[0].key == f"services/{doc['id']}" and not ops[0].write and ops[0].expect > 0
    assert all(len(ops) <= TXN_OPS for ops in kv.commits)

    for n, want in ((130, list(range(1, 131))), (400, list(range(1, 401))), (2, [1, 2])):
        kv.commits.clear()
        services.scale("web", n)
        assert wanted(kv) == want and all(len(ops) <= TXN_OPS for ops in kv.commits)
    assert len(kv.commits) == 4   # 398 told to stop: 127 beside the service's revision, 127, 127, 17

    kv.commits.clear()
    services.remove("web")
    assert kv.list("services/") == [] and wanted(kv) == [] and len(kv.commits) == 1   # 2 to tell: one commit


def test_a_scale_during_a_create_wins_and_counts_what_the_create_wrote(rec):
    services, kv = rec
    kv.rival = lambda: services.scale("web", 5)      # ahead of the create's second commit
    services.create({"Name": "web", "Replicas": 300, "EndpointMode": "dnsrr", "Cmd": ["x"]})
    assert wanted(kv) == [1, 2, 3, 4, 5] and len(tasks_of(kv)) == TXN_OPS - 2   # the create wrote no more
    assert services.inspect("web")["Spec"]["Mode"]["Replicated"]["Replicas"] == 5


def test_an_rm_during_a_create_wins_and_no_task_is_left_wanting_to_run(rec):
    services, kv = rec
    kv.rival = lambda: services.remove("web")
    with pytest.raises(NotFound, match="service web was removed while its tasks were being created"):
        services.create({"Name": "web", "Replicas": 300, "EndpointMode": "dnsrr", "Cmd": ["x"]})
    assert kv.list("services/") == [] and wanted(kv) == [] and len(tasks_of(kv)) == TXN_OPS - 2


def test_a_create_cut_short_is_finished_by_the_next_scale(rec):
    services, kv = rec

    def die():
        raise SystemExit("the daemon died between two commits")
    kv.rival = die
    with pytest.raises(SystemExit):
        services.create({"Name": "web", "Replicas": 300, "EndpointMode": "dnsrr", "Cmd": ["x"]})
    assert len(wanted(kv)) == TXN_OPS - 2
    services.scale("web", 300)
    assert wanted(kv) == list(range(1, 301))


def test_a_down_nodes_tasks_of_a_removed_service_are_deleted(svc):
    services, kv = svc
    doc = services.create({"Name": "web", "Replicas": 2, "EndpointMode": "dnsrr", "Cmd": ["x"]})
    kv.commit([Op(f"services/{doc['id']}", None), Op("alive/n2", None)])   # an rm cut short before its tasks
    assert move_orphans(kv, "n1") == 0
    assert [t["node"] for t in tasks_of(kv)] == ["n1"]   # n1's own runner deletes its own


def test_a_rolls_big_batch_is_written_in_commits_and_stops_at_the_services_removal(rec):
    services, kv = rec
    doc = services.create({"Name": "web", "Replicas": 1, "EndpointMode": "dnsrr", "Cmd": ["x"]})
    fresh = [Op(f"tasks/new{i}", {"id": f"new{i}", "service_id": doc["id"]}, expect=0) for i in range(300)]
    kv.commits.clear()
    Services._add_tasks(kv, doc, fresh)
    assert [len(ops) for ops in kv.commits] == [128, 128, 47]   # each: the service's revision and 127 tasks
    assert all(ops[0].key == f"services/{doc['id']}" and not ops[0].write for ops in kv.commits)

    kv.commits.clear()
    kv.rival = lambda: kv.kv.commit([Op(f"services/{doc['id']}", None)])   # removed after the first commit
    with pytest.raises(NotFound, match="service web was removed during its update"):
        Services._add_tasks(kv, doc, [Op(f"tasks/more{i}", {"id": i}, expect=0) for i in range(300)])
    assert len([e for e in kv.list("tasks/") if e.key.startswith("tasks/more")]) == 127
