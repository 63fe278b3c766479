"""Every failed use case of the engine leaves the store, the engine's caches and the kernel as they were.

The CNI plugins' rollback discipline, tested on the engine itself: it runs on the in-memory kernel face
(fakekernel.py), a real Records store on a temporary SQLite file, a fake firewall applier (it keeps the last
ruleset; it can be told to refuse), no host evidence, and real processes (`sleep`) as the sandboxes' first
processes (the kernel is fake: only their /proc entries are read). For each k from 1 to the number of
kernel calls a use case makes, the k-th call fails; the use case must raise one NsnetError line and leave
everything exactly as before, and then succeed when run again (with the same addresses: nothing leaked).
"""
import copy
import os
import socket
import subprocess

import pytest

from fakekernel import FakeKernel

from nsnet.config import Config
from nsnet.engine import Engine
from nsnet.errors import NsnetError
from nsnet.model import to_dict
from nsnet.store.records import Records
from nsnet.store.sqlite import SqliteKV


class FakeFirewall:
    """The firewall applier: keeps the last ruleset it applied; refuses while `refuse` is set."""

    def __init__(self):
        self.applied, self.refuse = None, False

    def __call__(self, ruleset):
        if self.refuse:
            raise NsnetError("nft refused the ruleset (injected)")
        self.applied = copy.deepcopy(ruleset)


class World:
    """An engine on fakes, started (its built-in networks made), and the processes its sandboxes run."""

    def __init__(self, root):
        self.root = str(root)
        self.kernel = FakeKernel()
        self.firewall = FakeFirewall()
        self.engine = Engine(kernel=self.kernel, store=Records(SqliteKV(os.path.join(self.root, "state.db"))),
                             firewall=self.firewall, evidence=lambda ask_docker=True: [], config=Config(), root=self.root)
        self.engine.start()
        self.procs = []

    def process(self) -> int:
        """A process in a network namespace of its own (the fake kernel's), as `nsnet run` hands over."""
        proc = subprocess.Popen(["sleep", "300"])
        self.procs.append(proc)
        self.kernel.sandbox(proc.pid)   # its namespace exists before nsnet plumbs it
        return proc.pid

    def run(self, name, networks=("n1",), ports=()):
        spec = {"Name": name, "Cmd": ["sleep"], "Pid": self.process(),
                "Networks": [{"Network": n} for n in networks], "Ports": list(ports)}
        return self.engine.run_sandbox(spec, launch_detached=None).sandbox

    def snapshot(self) -> dict:
        e = self.engine
        return {
            "store": {entry.key: entry.value for entry in e.store.kv.list("")},
            "nets": {k: to_dict(v) for k, v in e.state.nets.items()},
            "sbs": {k: to_dict(v) for k, v in e.state.sbs.items()},
            "eps": {k: to_dict(v) for k, v in e.state.eps.items()},
            "eps_of": {sid: sorted(e.state._eps_of[sid]) for sid in e.state._eps_of},
            "addresses": {k: sorted(map(str, v)) for k, v in e.alloc._used.items() if v},
            "port_sockets": sorted(e.port_sockets),
            "kernel": self.kernel.state(),
            "files": sorted(os.listdir(os.path.join(self.root, "sandboxes")))
            if os.path.isdir(os.path.join(self.root, "sandboxes")) else [],
            "firewall": self.firewall.applied,
        }

    def close(self):
        for p in self.procs:
            p.kill()
            p.wait()
        self.engine.store.close()


@pytest.fixture
def worlds(tmp_path):
    made = []

    def make():
        w = World(tmp_path / str(len(made)))
        made.append(w)
        return w
    yield make
    for w in made:
        w.close()


def one_line_error(op):
    with pytest.raises(NsnetError) as e:
        op()
    assert "\n" not in str(e.value) and str(e.value), repr(e.value)
    return e.value


def each_failure(worlds, setup, op, result=lambda out: out) -> int:
    """setup(world) -> context; op(world, context) -> what the use case returns. In a fresh world per k,
    fail the k-th kernel call op makes: op must raise one line and change nothing; then op must succeed and
    give what a clean run gives (`result` of it: e.g. the endpoint's addresses). Returns how many calls."""
    w = worlds()
    ctx = setup(w)
    w.kernel.fail_at = None
    clean = result(op(w, ctx))
    n = w.kernel.faults.steps
    assert n > 0
    for k in range(1, n + 1):
        w = worlds()
        ctx = setup(w)
        before = w.snapshot()
        w.kernel.fail_at = k
        one_line_error(lambda: op(w, ctx))
        failed = w.kernel.faults.log[k - 1]
        w.kernel.fail_at = None
        after = w.snapshot()
        assert after == before, (f"kernel call {k} of {n} ({failed}) failed and left changes in "
                                 f"{sorted(key for key in before if before[key] != after[key])}")
        assert result(op(w, ctx)) == clean, f"after kernel call {k} ({failed}) failed, a new try differs"
    return n


def bridge(w, name="n1", **extra):
    return w.engine.create_network({"Name": name, "Driver": "bridge", **extra})


def addresses(ep):
    return (ep.ipv4, ep.ipv6, ep.ifname) if ep is not None else None


# ---- networks -------------------------------------------------------------------------------------

@pytest.mark.parametrize("ipv6", [False, True])
def test_create_network_fails_at_each_kernel_call_and_changes_nothing(worlds, ipv6):
    extra = {"EnableIPv6": True, "Subnets": ["10.20.0.0/24", "fd00:20::/64"]} if ipv6 else {}
    n = each_failure(worlds, lambda w: None, lambda w, _: bridge(w, **extra), lambda net: [s.subnet for s in net.subnets])
    assert n >= 5


def test_create_network_refused_by_the_firewall_changes_nothing(worlds):
    w = worlds()
    before = w.snapshot()
    w.firewall.refuse = True
    assert "injected" in str(one_line_error(lambda: bridge(w)))
    assert w.snapshot() == before


def test_remove_network_fails_at_each_kernel_call_and_changes_nothing(worlds):
    each_failure(worlds, lambda w: bridge(w), lambda w, net: w.engine.remove_network(net.name), lambda net: net.name)


# ---- sandboxes ------------------------------------------------------------------------------------

def test_run_fails_at_each_kernel_call_and_changes_nothing(worlds):
    def setup(w):
        bridge(w, "n1")
        bridge(w, "n2", EnableIPv6=True, Subnets=["10.21.0.0/24", "fd00:21::/64"])
        return w.process()

    def run(w, pid):
        spec = {"Name": "s1", "Cmd": ["sleep"], "Pid": pid, "Networks": [{"Network": "n1"}, {"Network": "n2"}]}
        sb = w.engine.run_sandbox(spec, launch_detached=None).sandbox
        return [addresses(ep) for ep in w.engine.state.endpoints_of_sandbox(sb)]
    assert each_failure(worlds, setup, run) >= 10   # lo up, two veths and all that goes with them


def test_run_with_a_published_port_refused_by_the_firewall_changes_nothing(worlds):
    w = worlds()
    bridge(w)
    pid = w.process()
    before = w.snapshot()
    w.firewall.refuse = True
    spec = {"Name": "s1", "Cmd": ["sleep"], "Pid": pid, "Networks": [{"Network": "n1"}],
            "Ports": [f"127.0.0.1:{free_port()}:80"]}
    assert "injected" in str(one_line_error(lambda: w.engine.run_sandbox(spec, launch_detached=None)))
    assert w.snapshot() == before
    w.firewall.refuse = False
    w.engine.run_sandbox(spec, launch_detached=None)   # its port was let go: the run goes through now
    assert [p.host_port for p in w.firewall.applied.ports] == [int(spec["Ports"][0].split(":")[1])]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_connect_fails_at_each_kernel_call_and_changes_nothing(worlds):
    def setup(w):
        bridge(w, "n1")
        bridge(w, "n2", Subnets=["10.22.0.0/24"])
        return w.run("s1")
    n = each_failure(worlds, setup, lambda w, sb: w.engine.connect("n2", sb.name, ip="10.22.0.9"), addresses)
    assert n >= 4   # veth (and its host end's IPv6), inside: address, up; the port


def test_disconnect_fails_at_each_kernel_call_and_changes_nothing(worlds):
    def setup(w):
        bridge(w, "n1")
        bridge(w, "n2", Subnets=["10.22.0.0/24"])
        sb = w.run("s1", networks=("n1", "n2"))
        return sb
    each_failure(worlds, setup, lambda w, sb: w.engine.disconnect("n2", sb.name), lambda out: out)


def test_the_comparison_sees_an_undo_left_out(worlds, monkeypatch):
    """The check itself can fail: a join whose undo forgets the endpoint's record is caught."""
    from nsnet.engine import state

    monkeypatch.setattr(state.State, "drop_endpoint", lambda self, ep: None)
    with pytest.raises(AssertionError, match="left changes"):
        test_connect_fails_at_each_kernel_call_and_changes_nothing(worlds)


def test_the_comparison_sees_an_address_key_left_behind(worlds, monkeypatch):
    """The store's check covers the split records: an endpoint dropped without the keys of its addresses
    (or its local/ part) is caught."""
    from nsnet.store import Op, records

    def delete_keeping_addresses(self, kind, id_, shared=False):
        self._write(shared, Op(records.record_key(kind, id_), None), Op(records.local_key(kind, id_), None))
    monkeypatch.setattr(records.Records, "delete", delete_keeping_addresses)
    with pytest.raises(AssertionError, match=r"left changes in \['store'\]"):
        test_connect_fails_at_each_kernel_call_and_changes_nothing(worlds)
