"""What the engine saves: each sandbox and endpoint split into what hosts could share (with the node that
owns it) and the host's own part under local/, each address as a key of its own, all in the commit of the
record; a state saved whole by an older nsnet loads the same; each driver gets its own view of the store.
On the fake kernel of test_engine_rollback."""
import os

from test_engine_rollback import World, bridge, one_line_error, worlds  # noqa: F401  (worlds: the fixture)

from nsnet.engine.state import State
from nsnet.model import HOST_ONLY, to_dict
from nsnet.store import Op
from nsnet.store.records import Records
from nsnet.store.scoped import Scoped
from nsnet.store.sqlite import SqliteKV

HOST_FIELDS = {f for fields in HOST_ONLY.values() for f in fields}


class FakeResolver:
    """The resolver as the engine's DNS feed sees it: ports per sandbox, records ignored."""
    address = "127.0.0.11"

    def __init__(self):
        self.served = {}

    def sandboxes(self):
        return list(self.served)

    def add_sandbox(self, sid, netns, upstreams=None, ports=None):
        self.served[sid] = ports or (50000 + len(self.served), 50100 + len(self.served))

    def ports(self, sid):
        return self.served[sid]

    def remove_sandbox(self, sid):
        self.served.pop(sid, None)

    def set_records(self, records):
        pass

    def change_records(self, add, remove):
        pass


def entries(w: World) -> dict:
    return {e.key: e for e in w.engine.store.kv.list("")}


def test_a_running_sandbox_is_saved_split_with_its_node_and_its_address_keys(worlds):
    w = worlds()
    w.engine.serve_dns(FakeResolver())
    bridge(w, "n1")
    sb = w.run("s1")
    [ep] = w.engine.state.endpoints_of_sandbox(sb)
    got = entries(w)
    assert [k for k, e in got.items() if not k.startswith("local/") and HOST_FIELDS & set(e.value)] == []
    assert got[f"local/sandbox/{sb.id}"].value == {"pid": sb.pid, "pid_start": sb.pid_start,
                                                   "dns_ports": [50000, 50100], "cni": None}
    assert got[f"local/endpoint/{ep.id}"].value == {"host_ifname": ep.host_ifname} and ep.host_ifname
    node = w.engine.store.meta("engine_id")
    assert got[f"sandbox/{sb.id}"].value["node"] == node and got[f"endpoint/{ep.id}"].value["node"] == node
    ip = ep.ipv4.split("/")[0]
    address = got[f"addresses/{ep.network_id}/{ip}"]
    assert address.value == {"id": ep.id}
    # One commit: the record, its host part and its address (a crash cannot leave one without the others).
    assert {got[f"endpoint/{ep.id}"].create_revision, got[f"local/endpoint/{ep.id}"].create_revision,
            address.create_revision} == {got[f"endpoint/{ep.id}"].create_revision}
    w.engine.stop_sandbox(sb.id)
    assert not [k for k in entries(w) if k.startswith(("addresses/", "local/endpoint/", "endpoint/"))]


def test_a_state_saved_whole_by_an_older_nsnet_loads_the_same_and_is_split(worlds):
    w = worlds()
    bridge(w, "n1")
    sb = w.run("s1")
    state = w.engine.state
    before = {kind: {k: to_dict(v) for k, v in table.items()} for kind, table in
              (("nets", state.nets), ("sbs", state.sbs), ("eps", state.eps))}
    kv = w.engine.store.kv
    # As nsnet saved them before the split: each record whole, no node, no local part, no address keys.
    old = [Op(f"sandbox/{s.id}", to_dict(s)) for s in state.sbs.values()]
    old += [Op(f"endpoint/{e.id}", to_dict(e)) for e in state.eps.values()]
    old += [Op(e.key, None) for e in kv.list("local/") + kv.list("addresses/")]
    kv.commit(old)
    assert "pid" in kv.get(f"sandbox/{sb.id}").value

    again = State(Records(SqliteKV(os.path.join(w.root, "state.db"))))
    try:
        assert before == {kind: {k: to_dict(v) for k, v in table.items()} for kind, table in
                          (("nets", again.nets), ("sbs", again.sbs), ("eps", again.eps))}
        keys = {e.key: e.value for e in again.store.kv.list("")}
        assert [k for k, v in keys.items() if not k.startswith("local/") and HOST_FIELDS & set(v)] == []
        assert keys[f"local/sandbox/{sb.id}"]["pid"] == sb.pid
        assert len([k for k in keys if k.startswith("addresses/")]) == len(state.eps)
    finally:
        again.store.close()


def test_each_driver_gets_the_store_under_its_own_name_and_the_node_id(worlds):
    w = worlds()
    for name, driver in w.engine.drivers.items():
        assert isinstance(driver.ctx.store, Scoped) and driver.ctx.store.prefix == f"drivers/{name}/"
        assert driver.ctx.node == w.engine.state.node == w.engine.store.meta("engine_id")


# ---- a claim another writer commits first (later: another host) ------------------------------------

def racing(w: World, driver: str, method: str, take) -> None:
    """Make another writer commit `take(records, *args)` while the engine is inside `driver.method`."""
    d = w.engine.drivers[driver]
    real = getattr(d, method)
    other = Records(w.engine.store.kv)

    def first_the_other(*args):
        take(other, *args)
        return real(*args)
    setattr(d, method, first_the_other)


def without(snapshot: dict, prefix_of_others: tuple) -> dict:
    return {**snapshot, "store": {k: v for k, v in snapshot["store"].items() if not k.startswith(prefix_of_others)}}


def test_a_connect_whose_address_another_writer_takes_first_fails_in_one_line_and_changes_nothing(worlds):
    w = worlds()
    bridge(w, "n1")
    bridge(w, "n2", Subnets=["10.22.0.0/24"])
    sb = w.run("s1")
    before = w.snapshot()
    racing(w, "bridge", "plan_endpoint", lambda rec, net, ep: rec.put(
        "endpoint", "f" * 64, {"id": "f" * 64, "network_id": net.id, "ipv4": ep.ipv4, "node": "another"}))
    error = one_line_error(lambda: w.engine.connect("n2", sb.name))
    assert "address 10.22.0.2 is already in use" in str(error)
    theirs = ("endpoint/" + "f" * 64, "local/endpoint/" + "f" * 64, "addresses/")
    assert without(w.snapshot(), theirs) == without(before, theirs)
    assert w.engine.store.kv.get(f"addresses/{w.engine.state.network('n2').id}/10.22.0.2").value == {"id": "f" * 64}


def test_a_network_whose_name_another_writer_takes_first_fails_in_one_line_and_changes_nothing(worlds):
    """The one use case with kernel work inside its transaction: the commit at its end fails, the network
    built and the firewall applied meanwhile are undone."""
    w = worlds()
    before = w.snapshot()
    racing(w, "bridge", "create_network", lambda rec, net: rec.put("network", "f" * 64, {"id": "f" * 64,
                                                                                         "name": net.name}))
    error = one_line_error(lambda: bridge(w, "n1"))
    assert "network name n1 is already in use" in str(error)
    theirs = ("network/" + "f" * 64, "names/network/n1")
    assert without(w.snapshot(), theirs) == without(before, theirs)


def test_a_run_whose_name_another_writer_takes_first_fails_in_one_line_and_changes_nothing(worlds):
    w = worlds()
    bridge(w, "n1")
    pid = w.process()
    before = w.snapshot()
    other = Records(w.engine.store.kv)
    real = w.engine.files.make

    def make(sb):   # the engine has planned the sandbox (its name free) and makes its folder: the other is first
        other.put("sandbox", "f" * 64, {"id": "f" * 64, "name": sb.name, "pid": 1})
        return real(sb)
    w.engine.files.make = make
    spec = {"Name": "s1", "Cmd": ["sleep"], "Pid": pid, "Networks": [{"Network": "n1"}]}
    assert str(one_line_error(lambda: w.engine.run_sandbox(spec, launch_detached=None))) == \
        "sandbox name s1 is already in use"
    theirs = ("sandbox/" + "f" * 64, "local/sandbox/" + "f" * 64, "names/sandbox/s1")
    assert without(w.snapshot(), theirs) == without(before, theirs)
