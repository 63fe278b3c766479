"""A service's published ports: Docker's --publish forms, the checks against what the swarm holds, placement
of host-mode tasks, the routing mesh's ruleset, and the ports' claims on a store (SQLite: etcd's protocol)."""
import json
import threading
from types import SimpleNamespace

import pytest

from nsnet.engine import ingress, publish
from nsnet.engine.services import Services, local_ports, spread, task_shape
from nsnet.errors import NsnetError
from nsnet.firewall import render_ingress
from nsnet.model import PortMapping
from nsnet.store import Op
from nsnet.store.sqlite import SqliteKV


def port(published, target, proto="tcp", mode="ingress"):
    return {"Protocol": proto, "TargetPort": target, "PublishedPort": published, "PublishMode": mode}


@pytest.mark.parametrize("spec, want", [
    ("8080:80", port(8080, 80)),
    ("8080:80/udp", port(8080, 80, "udp")),
    ("80", port(0, 80)),
    ("published=8080,target=80", port(8080, 80)),
    ("target=80,published=8080,protocol=udp,mode=host", port(8080, 80, "udp", "host")),
    ("Published=8080,TARGET=80,mode=INGRESS", port(8080, 80)),        # Docker lowercases the fields
    ("target=80", port(0, 80)),
])
def test_dockers_forms(spec, want):
    assert publish.parse(spec) == want


@pytest.mark.parametrize("spec, says", [
    ("published=8080", "missing mandatory field 'target'"),
    ("published=8080,target=80,mode=bridge", "must be either 'ingress' or 'host'"),
    ("published=8080,target=80,protocol=sctp", "invalid protocol 'sctp'"),
    ("published=8080,port=80", "invalid field key 'port'"),
    ("target=80,target=81", "target is given twice"),
    ("target=80,mode=host", "mode=host needs a published port"),
    ("8080:80,mode=host", "invalid field '8080:80'"),
    ("8080:0", "target port '0' is not a port"),
    ("70000:80", "published port '70000' is not a port"),
    ("8080-8081:80-81", "port ranges are not supported"),
    ("127.0.0.1:8080:80", "a host IP is not supported"),
    ("8080:80/sctp", "invalid protocol 'sctp'"),
    ("", "invalid publish spec"),
])
def test_bad_specs_are_one_line(spec, says):
    with pytest.raises(NsnetError, match=says) as e:
        publish.parse(spec)
    assert "\n" not in str(e.value)


def test_assign_refuses_taken_ports_and_picks_free_ones():
    taken = {("tcp", 8080): "sandbox local on node host-b", ("tcp", 30000): "service a as an ingress port"}
    with pytest.raises(NsnetError, match="port 8080/tcp is already in use by sandbox local on node host-b"):
        publish.assign([port(8080, 80)], taken)
    assert publish.assign([port(8080, 80, "udp"), port(0, 80), port(0, 81)], taken) == [
        port(8080, 80, "udp"), port(30001, 80), port(30002, 81)]        # udp is another port; 30000 is taken
    with pytest.raises(NsnetError, match="port 9000/tcp is published twice"):
        publish.assign([port(9000, 80), port(9000, 81)], {})


def test_publish_rm_by_target_port_and_by_published_port():
    ports = [port(8080, 80), port(8081, 80), port(53, 53, "udp")]
    assert publish.removing(ports, [publish.parse("80")]) == [port(53, 53, "udp")]
    assert publish.removing(ports, [publish.parse("8081:80")]) == [port(8080, 80), port(53, 53, "udp")]
    assert publish.removing(ports, [publish.parse("53/udp")]) == ports[:2]
    with pytest.raises(NsnetError, match="no published port 53/tcp to remove"):
        publish.removing(ports, [publish.parse("53")])


def test_host_mode_tasks_are_one_per_node():
    ready = {"n1": "host-a", "n2": "host-b"}
    assert spread(2, ready, [], "s") == ["n1", "n2"]
    mine = [{"node": "n1", "desired": "running", "service_id": "s"}, {"node": "n2", "desired": "running", "service_id": "o"},
            {"node": "n2", "desired": "running", "service_id": "o"}]
    assert spread(1, ready, mine, "s") == ["n2"]        # the busier node, the only one without a task of s
    assert spread(1, ready, mine) == ["n1"]             # without the rule: fewest first
    with pytest.raises(NsnetError, match="mode=host"):
        spread(2, ready, mine, "s")


def test_only_the_tasks_sandbox_decides_a_roll():
    assert task_shape({"ports": [port(8080, 80)]}) == task_shape({"ports": [port(8081, 80), port(0, 9)]})
    assert task_shape({"ports": []}) != task_shape({"ports": [port(8080, 80)]})     # joins ingress
    assert task_shape({"ports": [port(8080, 80, mode="host")]}) != task_shape({"ports": [port(8081, 80, mode="host")]})
    assert task_shape({}) == task_shape({"ports": []})                               # a spec from before ports


def test_a_nodes_own_ports_are_its_sandboxes_not_its_tasks():
    def sb(name, *ports, state="running"):
        return SimpleNamespace(name=name, state=state, ports=[PortMapping("0.0.0.0", p, 80) for p in ports])
    st = SimpleNamespace(sbs={1: sb("web", 8080), 2: sb("ingress-sbox", 9000), 3: sb("w.1." + "a" * 25, 9001),
                              4: sb("old", 7000, state="exited"), 5: sb("eph", 0)})
    assert local_ports(st) == [["tcp", 8080, "web"]]


def test_the_mesh_ruleset_spreads_each_port_and_masquerades():
    doc = json.loads(render_ingress({("tcp", 8080): (80, ["10.0.1.3", "10.0.1.4"]), ("udp", 53): (53, [])}))["nftables"]
    rules = {}
    for r in doc:
        if "rule" in r.get("add", {}):
            rules.setdefault(r["add"]["rule"]["chain"], []).append(r["add"]["rule"]["expr"])
    pre = rules["prerouting"]
    assert [(e[0]["match"]["left"]["payload"], e[0]["match"]["right"], e[1]["goto"]["target"]) for e in pre] == [
        ({"protocol": "tcp", "field": "dport"}, 8080, "port0"), ({"protocol": "udp", "field": "dport"}, 53, "port1")]
    dnat = rules["port0"][0][1]["dnat"]
    assert dnat["port"] == 80 and dnat["addr"]["map"]["data"]["set"] == [[0, "10.0.1.3"], [1, "10.0.1.4"]]
    assert "reject" in rules["port1"][0][0]
    assert rules["postrouting"] == [[{"match": {"op": "in", "left": {"ct": {"key": "status"}}, "right": "dnat"}},
                                     {"masquerade": None}]]


def test_wanted_ports_are_every_services_ingress_ports_once():
    svcs = {"a": {"spec": {"ports": [port(8080, 80), port(9000, 80, mode="host")]}},
            "b": {"spec": {"ports": [port(53, 53, "udp")]}}, "c": {"spec": {}}}
    assert ingress.wanted_ports(svcs) == [PortMapping("0.0.0.0", 8080, 8080, "tcp"), PortMapping("0.0.0.0", 53, 53, "udp")]


# ---- on a store -------------------------------------------------------------------------------------

@pytest.fixture
def svc(tmp_path):
    kv = SqliteKV(str(tmp_path / "swarm.db"))
    for node, name in (("n1", "host-a"), ("n2", "host-b")):
        kv.commit([Op(f"nodes/{node}", {"id": node, "name": name, "addr": "x"}), Op(f"alive/{node}", {})])
    mesh = SimpleNamespace(id="mesh", name="ingress")
    state = SimpleNamespace(endpoint_saved=[], alive={"n1", "n2"}, nets={"mesh": mesh}, sbs={}, node="n1",
                            shared=lambda n: True)
    engine = SimpleNamespace(swarm=SimpleNamespace(kv=kv), state=state, lock=threading.RLock(),
                             feed=SimpleNamespace(sources=[]))
    services = Services(engine)
    services._check_free_here = lambda p: None   # no bind on the machine's own host
    yield services, kv
    kv.close()


def test_ports_are_claimed_checked_across_nodes_and_given_back(svc):
    services, kv = svc
    doc = services.create({"Name": "web", "Replicas": 1, "EndpointMode": "dnsrr", "Cmd": ["x"], "Publish": ["8080:80", "80/udp"]})
    assert doc["spec"]["ports"] == [port(8080, 80), port(30000, 80, "udp")]
    assert sorted(e.key for e in kv.list("published/")) == ["published/tcp/8080", "published/udp/30000"]
    kv.commit([Op("ports/n2", {"ports": [["tcp", 9090, "local"]]})])
    before = {e.key: e.value for e in kv.list("")}
    for body, says in (({"Publish": ["published=8080,target=81"]}, "port 8080/tcp is already in use by service web as an ingress port"),
                       ({"Publish": ["9090:80"]}, "port 9090/tcp is already in use by sandbox local on node host-b"),
                       ({"Publish": ["9091:80,mode=host"]}, "invalid field"),
                       ({"Replicas": 3, "Publish": ["published=9091,target=80,mode=host"]}, "mode=host")):
        with pytest.raises(NsnetError, match=says):
            services.create({"Name": "x", "EndpointMode": "dnsrr", "Cmd": ["x"], **body})
        assert {e.key: e.value for e in kv.list("")} == before

    services.update("web", {"PublishAdd": ["8081:80"], "PublishRm": ["published=8080,target=80"]})
    assert [p["PublishedPort"] for p in services.inspect("web")["Endpoint"]["Ports"]] == [30000, 8081]
    assert sorted(e.key for e in kv.list("published/")) == ["published/tcp/8081", "published/udp/30000"]
    assert len(kv.list("tasks/")) == 1      # ingress ports only changed: the task is not replaced
    services.remove("web")
    assert kv.list("published/") == []
