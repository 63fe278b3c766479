"""The engine's records on the store: split into what hosts could share and the host's own part (local/),
addresses taken as keys, records saved whole by an older nsnet split at open, and a driver's scoped view."""
import threading

import pytest

from nsnet.errors import Conflict
from nsnet.model import HOST_ONLY, Endpoint, Sandbox, to_dict
from nsnet.store import Op
from nsnet.store.records import Records
from nsnet.store.scoped import Scoped
from nsnet.store.sqlite import SqliteKV

HOST_FIELDS = {f for fields in HOST_ONLY.values() for f in fields}


@pytest.fixture
def kv(tmp_path):
    s = SqliteKV(str(tmp_path / "state.db"))
    yield s
    s.close()


def sandbox(id_="s1", name="web", **kw) -> dict:
    return to_dict(Sandbox(id=id_, name=name, hostname=name, created="now", cmd=["sleep"], pid=4242, pid_start=7,
                           dns_ports=[40001, 40002], **kw))


def endpoint(id_="e1", net="n1", ipv4="10.0.0.2/24", ipv6=None, sb="s1") -> dict:
    return to_dict(Endpoint(id=id_, network_id=net, sandbox_id=sb, ifname="eth0", host_ifname="nsv" + id_,
                            mac="02:42:0a:00:00:02", ipv4=ipv4, ipv6=ipv6, gateway4="10.0.0.1", gateway6=None))


def keys(kv) -> dict:
    return {e.key: e.value for e in kv.list("")}


def host_only_outside_local(kv) -> list[str]:
    return [k for k, v in keys(kv).items() if not k.startswith("local/") and HOST_FIELDS & set(v)]


# ---- the split -------------------------------------------------------------------------------------

def test_a_record_is_saved_split_and_read_back_whole(kv):
    rec = Records(kv)
    with rec.transaction():
        rec.put("sandbox", "s1", sandbox())
        rec.put("endpoint", "e1", endpoint())
    assert host_only_outside_local(kv) == []
    got = keys(kv)
    assert got["local/sandbox/s1"] == {"pid": 4242, "pid_start": 7, "dns_ports": [40001, 40002], "cni": None}
    assert got["local/endpoint/e1"] == {"host_ifname": "nsve1"}
    assert got["endpoint/e1"]["ipv4"] == "10.0.0.2/24" and got["sandbox/s1"]["name"] == "web"
    assert kv.revision() == 1                         # one commit for both parts of both
    assert rec.list("sandbox") == [sandbox()] and rec.list("endpoint") == [endpoint()]
    rec.delete("sandbox", "s1")
    rec.delete("endpoint", "e1")
    assert keys(kv) == {}                              # local part, name and addresses go with them


def test_a_record_saved_whole_by_an_older_nsnet_is_split_at_open(kv):
    """Before the split every field was under sandbox/ID or endpoint/ID, and addresses had no keys."""
    kv.commit([Op("sandbox/s1", sandbox()), Op("names/sandbox/web", {"id": "s1"}),
               Op("endpoint/e1", endpoint(ipv6="fd00::2/64")), Op("network/n1", {"id": "n1", "name": "n1"}),
               Op("names/network/n1", {"id": "n1"})])
    rec = Records(kv)
    assert host_only_outside_local(kv) == []
    assert rec.list("sandbox") == [sandbox()] and rec.list("endpoint") == [endpoint(ipv6="fd00::2/64")]
    assert keys(kv)["addresses/n1/10.0.0.2"] == {"id": "e1"} and keys(kv)["addresses/n1/fd00::2"] == {"id": "e1"}
    rev = kv.revision()
    Records(kv)                                        # opened again: nothing left to split
    assert kv.revision() == rev
    with pytest.raises(Conflict, match="address 10.0.0.2 is already in use"):
        rec.put("endpoint", "e2", endpoint("e2", sb="s2"))
    rec.delete("endpoint", "e1")
    assert not [k for k in keys(kv) if k.startswith("addresses/")]


# ---- addresses as keys ----------------------------------------------------------------------------

def test_an_address_is_held_by_one_endpoint_per_network(kv):
    rec = Records(kv)
    rec.put("endpoint", "e1", endpoint())
    with pytest.raises(Conflict, match="^address 10.0.0.2 is already in use on network n1$"):
        rec.put("endpoint", "e2", endpoint("e2", sb="s2"))
    rec.put("endpoint", "e3", endpoint("e3", net="n2", sb="s2"))    # the same address on another network
    rec.put("endpoint", "e1", endpoint())                            # saved again: still its own
    with pytest.raises(Conflict), rec.transaction():              # two of one transaction
        rec.put("endpoint", "e4", endpoint("e4", net="n9", ipv4="10.9.0.2/24"))
        rec.put("endpoint", "e5", endpoint("e5", net="n9", ipv4="10.9.0.2/24"))
    rec.delete("endpoint", "e1")
    rec.put("endpoint", "e2", endpoint("e2", sb="s2"))               # freed with its endpoint
    assert sorted(k for k in keys(kv) if k.startswith("addresses/")) == ["addresses/n1/10.0.0.2",
                                                                        "addresses/n2/10.0.0.2"]


def test_two_writers_racing_for_one_address_one_wins(kv):
    """Both allocators saw 10.0.0.2 free (later: two hosts); the store's compare lets only the first commit
    through, and the other's whole transaction (its sandbox too) writes nothing."""
    a, b = Records(kv), Records(kv)
    go, b_done = threading.Event(), threading.Event()

    def other():
        go.wait(5)
        b.put("endpoint", "e2", endpoint("e2", sb="s2"))
        b_done.set()
    t = threading.Thread(target=other)
    t.start()
    with pytest.raises(Conflict, match="^address 10.0.0.2 is already in use on network n1$"):
        with a.transaction():
            a.put("sandbox", "s1", sandbox())
            a.put("endpoint", "e1", endpoint())
            go.set()
            assert b_done.wait(5)          # the other writer commits while this one still buffers
    t.join(5)
    assert [d["id"] for d in a.list("endpoint")] == ["e2"] and a.list("sandbox") == []
    assert keys(kv)["addresses/n1/10.0.0.2"] == {"id": "e2"}


# ---- a driver's view -----------------------------------------------------------------------------

def test_a_drivers_view_sees_and_writes_its_own_prefix_only(kv):
    view = Scoped(kv, "drivers/overlay/")
    kv.commit([Op("network/n1", {"id": "n1"})])
    start = view.revision()
    view.commit([Op("vteps/node-a", {"ip": "192.0.2.1"}, expect=0)])
    assert view.get("vteps/node-a").value == {"ip": "192.0.2.1"} and kv.get("drivers/overlay/vteps/node-a")
    assert view.get("../../network/n1") is None and [e.key for e in view.list("")] == ["vteps/node-a"]
    got = []
    t = threading.Thread(target=lambda: got.extend(view.watch("vteps/", view.revision(), timeout=5)))
    t.start()
    kv.commit([Op("drivers/bridge/x", {}), Op("drivers/overlay/vteps/node-b", {"ip": "192.0.2.2"})])   # a peer's
    t.join(5)
    assert [(e.key, e.value) for e in got] == [("vteps/node-b", {"ip": "192.0.2.2"})]
    assert [e.key for e in view.watch("", start, timeout=0)] == ["vteps/node-a", "vteps/node-b"]
