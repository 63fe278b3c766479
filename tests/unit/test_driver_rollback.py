"""Every failed driver operation, followed by the undo the engine runs, leaves the kernel as it was.

The CNI plugins' rollback discipline, tested: for each k from 1 to the number of kernel calls an operation
makes, the k-th call fails (tests/unit/fakekernel.py), the engine's undo runs (`leave` after a failed join,
`delete_network` after a failed create), and the fake kernel must hold exactly what it held before. Then
the same operation must still succeed: the driver's own bookkeeping survived the failure too.
"""
import ipaddress

import pytest

from fakekernel import ENODEV, FakeKernel

from nsnet.drivers import fabric
from nsnet.drivers.bridge import BridgeDriver, bridge_name_for
from nsnet.drivers.ipvlan import IpvlanDriver
from nsnet.drivers.macvlan import MacvlanDriver
from nsnet.errors import NsnetError
from nsnet.model import Endpoint, Network, SubnetConfig

ICC = "com.docker.network.bridge.enable_icc"


def network(driver="bridge", subnets=("10.7.0.0/24",), ipv6=False, **options):
    net = Network(id="ab" * 32, name="n1", driver=driver, created="now", ipv6=ipv6, options=dict(options))
    net.subnets = [SubnetConfig(subnet=s, gateway=str(ipaddress.ip_network(s)[1])) for s in subnets]
    if driver == "bridge":
        net.bridge = bridge_name_for(net.id)
    return net


def endpoint(net, i, host_side=True):
    v4 = next(s for s in net.subnets if ":" not in s.subnet)
    v6 = next((s for s in net.subnets if ":" in s.subnet), None)
    prefix = ipaddress.ip_network(v4.subnet).prefixlen
    return Endpoint(id=f"{i:064x}", network_id=net.id, sandbox_id=f"s{i}", ifname="eth0",
                    host_ifname=f"nsv{i:012d}" if host_side else None, mac=f"02:42:0a:07:00:{i:02x}",
                    ipv4=f"{ipaddress.ip_network(v4.subnet)[i + 1]}/{prefix}",
                    ipv6=f"{ipaddress.ip_network(v6.subnet)[i + 1]}/64" if v6 else None,
                    gateway4=v4.gateway, gateway6=v6.gateway if v6 else None)


def calls(kernel, op) -> int:
    """How many mutating kernel calls `op` makes when nothing fails."""
    kernel.fail_at = None
    op()
    return kernel.faults.steps


def each_failure(scenario, clean_undo=True) -> int:
    """For each k, in a fresh world from scenario() -> (kernel, op, undo): op fails at its k-th kernel call,
    undo runs, and the kernel must hold what it held before; then op, run again, must succeed (the driver's
    own bookkeeping survived the failure). With `clean_undo`, undo after op that succeeded must bring the
    kernel back too (disconnect, remove). Returns how many kernel calls op makes."""
    kernel, op, undo = scenario()
    before = kernel.state()
    n = calls(kernel, op)
    if clean_undo:
        undo()
        assert kernel.state() == before, "the undo of an operation that succeeded left changes"
    for k in range(1, n + 1):
        kernel, op, undo = scenario()
        before = kernel.state()
        kernel.fail_at = k
        with pytest.raises(NsnetError):
            op()
        failed = kernel.faults.log[k - 1]
        kernel.fail_at = None
        undo()
        assert kernel.state() == before, f"kernel call {k} of {n} ({failed}) failed, and the undo left changes"
        op()
    return n


# ---- bridge ---------------------------------------------------------------------------------------

def fresh_kernel() -> FakeKernel:
    k = FakeKernel()
    k.sysctls["net.ipv4.ip_forward"] = "1"   # host-wide and never undone: on as on any host with a network
    return k


@pytest.mark.parametrize("ipv6", [False, True])
def test_bridge_create_network_fails_at_each_call_and_is_undone(ipv6):
    def scenario():
        kernel = fresh_kernel()
        kernel.sysctls["net.ipv6.conf.all.forwarding"] = "1"
        net = network(subnets=("10.7.0.0/24", "fd00:7::/64") if ipv6 else ("10.7.0.0/24",), ipv6=ipv6)
        d = BridgeDriver(kernel)
        return kernel, lambda: d.create_network(net), lambda: d.delete_network(net)
    assert each_failure(scenario) >= 5   # bridge, alias, address(es), up, route_localnet, no IPv6


def bridge_with_ports(ports: int, **options):
    """A kernel with a bridge network and `ports` sandboxes on it; the driver; the network."""
    kernel = fresh_kernel()
    net = network(**options)
    d = BridgeDriver(kernel)
    d.create_network(net)
    for i in range(1, ports + 1):
        d.join(net, endpoint(net, i), kernel.sandbox(1000 + i), True)
    return kernel, d, net


def joining(ports: int, **options):
    def scenario():
        kernel, d, net = bridge_with_ports(ports, **options)
        ep, sandbox = endpoint(net, ports + 1), kernel.sandbox(2000)
        return kernel, lambda: d.join(net, ep, sandbox, True), lambda: d.leave(net, ep, sandbox)
    return scenario


@pytest.mark.parametrize("icc", ["true", "false"])
def test_bridge_join_fails_at_each_call_and_leave_undoes_it(icc):
    assert each_failure(joining(1, **{ICC: icc})) >= 5   # veth, its host end's IPv6, address, up, route, port...


def test_bridge_join_that_builds_a_leaf_fails_at_each_call_and_is_undone(monkeypatch):
    """The network's bridge is full: the join builds leaf 1 and its uplink first. A failed join must not
    leave them behind (and the join after it builds them again)."""
    monkeypatch.setattr(fabric, "PORTS_PER_BRIDGE", 2)
    assert each_failure(joining(2), clean_undo=False) > 12   # a leaf outlives its ports: see below


def test_the_comparison_sees_a_leaf_left_behind(monkeypatch):
    """A leaf outlives its last port (it is the network's until delete_network): the state shows it."""
    monkeypatch.setattr(fabric, "PORTS_PER_BRIDGE", 2)
    before = fresh_kernel().state()["host"]
    kernel, d, net = bridge_with_ports(3)
    for i in (1, 2, 3):
        d.leave(net, endpoint(net, i))
    assert kernel.state()["host"] != before and fabric.leaf_name(net.id, 1) in kernel.state()["host"]["links"]
    d.delete_network(net)
    assert kernel.state()["host"] == before


# ---- macvlan ------------------------------------------------------------------------------------

def lan_network(**options):
    net = network("macvlan", subnets=("192.168.50.0/24",), parent="lan0", **options)
    if "host_shim" in options:
        net.subnets[0].aux["host_shim"] = "192.168.50.254"
    return net


@pytest.mark.parametrize("parent", ["lan0", "lan0.10"])
def test_macvlan_create_network_fails_at_each_call_and_is_undone(parent):
    def scenario():
        kernel = fresh_kernel()
        net = lan_network(host_shim="true")
        net.options["parent"] = parent
        d = MacvlanDriver(kernel)
        return kernel, lambda: d.create_network(net), lambda: d.delete_network(net)
    assert each_failure(scenario) >= 4   # (vlan, alias, up), shim, alias, address, up


@pytest.mark.parametrize("shim", ["true", "false"])
def test_macvlan_join_fails_at_each_call_and_leave_undoes_it(shim):
    def scenario():
        kernel = fresh_kernel()
        net = lan_network(host_shim=shim)
        d = MacvlanDriver(kernel)
        d.create_network(net)
        ep, sandbox = endpoint(net, 1, host_side=False), kernel.sandbox(2001)
        return kernel, lambda: d.join(net, ep, sandbox, True), lambda: d.leave(net, ep, sandbox)
    assert each_failure(scenario) >= 4   # the link, its address, up, the route (and the host's route to it)


@pytest.mark.parametrize("mode", ["l2", "l3"])
def test_ipvlan_join_fails_at_each_call_and_leave_undoes_it(mode):
    def scenario():
        kernel = fresh_kernel()
        net = network("ipvlan", subnets=("10.9.0.0/24", "fd00:9::/64"), ipv6=True, parent="lan0",
                      ipvlan_mode=mode)
        d = IpvlanDriver(kernel)
        d.create_network(net)
        ep, sandbox = endpoint(net, 1, host_side=False), kernel.sandbox(3001)
        d.plan_endpoint(net, ep)
        return kernel, lambda: d.join(net, ep, sandbox, True), lambda: d.leave(net, ep, sandbox)
    assert each_failure(scenario) >= 4   # the link, its addresses, up, default routes (via the link in l3)


def test_a_bridge_join_whose_bridge_seems_gone_reads_the_network_back_and_plugs_the_port():
    """ENODEV from the port's enslave means the bridge went away: the join reloads the network from the
    kernel, which plugs back every port of the network that is on no bridge, this one included."""
    kernel, d, net = bridge_with_ports(1)
    ep, sandbox = endpoint(net, 2), kernel.sandbox(2000)
    d.ctx.ports_of = lambda net: [endpoint(net, 1).host_ifname, ep.host_ifname]
    calls(kernel, lambda: d.join(net, ep, sandbox, True))
    enslave = next(k for k, what in enumerate(kernel.faults.log, 1) if what.startswith("enslave"))
    d.leave(net, ep, sandbox)
    kernel.faults.fail_code = ENODEV
    kernel.fail_at = enslave
    d.join(net, ep, sandbox, True)
    assert kernel.faults.steps > enslave   # the fault fired, and the join went on
    assert kernel.ns.links[ep.host_ifname].master == kernel.index(net.bridge)
    assert d._fabrics[net.id].root.ports == 2


# ---- overlay ------------------------------------------------------------------------------------

def overlay_world(tmp_path, local: list[Endpoint]):
    """A kernel and an overlay driver in a swarm (its store a SQLite one here), two peers on other nodes;
    `local` plays the engine's records: this host's endpoints on the network."""
    from types import SimpleNamespace

    from nsnet.drivers.base import DriverContext
    from nsnet.drivers.overlay import VNI_KEY, OverlayDriver
    from nsnet.engine.swarm import Member
    from nsnet.store.sqlite import SqliteKV

    kernel = fresh_kernel()
    swarm = SimpleNamespace(kv=SqliteKV(str(tmp_path / f"swarm{len(list(tmp_path.iterdir()))}.db")),
                            member=Member("192.0.2.1", 4789, ["10.0.0.0/8"], 24))
    peers = {("02:42:0a:07:00:10", "10.7.0.16", "192.0.2.2"), ("02:42:0a:07:00:11", "10.7.0.17", "192.0.2.3")}
    ctx = DriverContext(endpoints_of=lambda net: list(local), swarm=lambda: swarm, peers=lambda net: peers,
                        root=str(tmp_path))
    d = OverlayDriver(kernel, ctx)
    net = network("overlay", **{VNI_KEY: "4097"})
    d.create_network(net)
    return kernel, d, net


def overlay_of(kernel):
    """The one overlay namespace the fake kernel holds."""
    (ov,) = [o for o in kernel.overlays.values() if not o.removed]
    return ov


def test_overlay_first_join_fails_at_each_call_and_leave_undoes_it(tmp_path):
    """The host's first sandbox on the network builds its bridge and VXLAN link and programs the peers:
    a failure anywhere leaves none of it (and the join after it builds it all again)."""
    def scenario():
        local: list[Endpoint] = []
        kernel, d, net = overlay_world(tmp_path, local)
        ep, sandbox = endpoint(net, 1), kernel.sandbox(2000)
        d.plan_endpoint(net, ep)
        local.append(ep)   # the engine records the endpoint before the join

        def leave():
            d.leave(net, ep, sandbox)
        return kernel, lambda: d.join(net, ep, sandbox, True), leave
    assert each_failure(scenario) >= 10   # bridge (alias, up), IPv6 off, VXLAN (alias, port, up), 2 peers, veth...


def test_overlay_peers_follow_the_swarm_with_replace(tmp_path):
    local: list[Endpoint] = []
    kernel, d, net = overlay_world(tmp_path, local)
    ep = endpoint(net, 1)
    d.plan_endpoint(net, ep)
    local.append(ep)
    d.join(net, ep, kernel.sandbox(2000), True)
    ov = overlay_of(kernel)
    vx = ov.index("nsovx4097")
    assert ov.ns.by_index(vx).master == ov.index("nsovb4097") and "nsovx4097" not in kernel.links()
    assert len(ov.peers(vx)) == 2
    moved = {("02:42:0a:07:00:10", "10.7.0.16", "192.0.2.9")}   # one peer gone, the other's node moved
    d.ctx.peers = lambda net: moved
    d.peers_changed(net)
    assert ov.peers(vx) == moved
    d.leave(net, ep)
    assert ov.removed and not kernel.state()["overlays"]


# ---- overlay, encrypted (drivers/tunnel.py) ----------------------------------------------------------

def encrypted_world(tmp_path, local: list[Endpoint], records: dict):
    """An encrypted overlay on node A (192.0.2.1) of a swarm with B (192.0.2.2) and C (192.0.2.3), each with
    one sandbox on the network; `records` plays the WireGuard records the swarm's watch brought."""
    from types import SimpleNamespace

    from nsnet.drivers.base import DriverContext
    from nsnet.drivers.overlay import ENCRYPTED, VNI_KEY, OverlayDriver
    from nsnet.engine.swarm import Member
    from nsnet.store.sqlite import SqliteKV

    kernel = fresh_kernel()
    root = tmp_path / f"root{len(list(tmp_path.iterdir()))}"
    root.mkdir()
    swarm = SimpleNamespace(kv=SqliteKV(str(root / "swarm.db")), member=Member("192.0.2.1", 4789, ["10.0.0.0/8"], 24),
                            free_subnet=lambda: "10.0.9.0/24")
    nodes = {"a" * 64: "192.0.2.1", "b" * 64: "192.0.2.2", "c" * 64: "192.0.2.3"}
    peers = {("02:42:0a:07:00:10", "10.7.0.16", "192.0.2.2"), ("02:42:0a:07:00:11", "10.7.0.17", "192.0.2.3")}
    ctx = DriverContext(endpoints_of=lambda net: list(local), swarm=lambda: swarm, peers=lambda net: peers,
                        node="a" * 64, nodes=lambda: dict(nodes), root=str(root),
                        node_records=lambda: {n: r for n, r in records.items() if n in nodes})
    d = OverlayDriver(kernel, ctx)
    net = network("overlay", **{VNI_KEY: "4097", ENCRYPTED: ""})
    d.create_network(net)
    return kernel, d, net, nodes


def wg_record(i: int) -> dict:
    return {"public_key": f"key-{i}", "endpoint": f"192.0.2.{i}:51820", "address": f"10.0.9.{i}", "kind": "kernel"}


def test_an_encrypted_overlay_programs_only_nodes_whose_tunnel_is_configured(tmp_path):
    records = {"b" * 64: wg_record(2)}                      # C has published nothing yet
    local: list[Endpoint] = []
    kernel, d, net, nodes = encrypted_world(tmp_path, local, records)
    ep = endpoint(net, 1)
    d.plan_endpoint(net, ep)
    local.append(ep)
    d.join(net, ep, kernel.sandbox(2000), True)
    ov = overlay_of(kernel)
    vx, wg = ov.index("nsovx4097"), kernel.ns.links["nswgaaaaaaaa"]
    assert ov.ns.by_index(vx).attrs["local"] == "10.0.9.1" and wg.addresses == {"10.0.9.1/24"}
    assert ov.peers(vx) == {("02:42:0a:07:00:10", "10.7.0.16", "10.0.9.2")}   # to B's tunnel address only
    assert wg.attrs["peers"] == {"key-2": ("192.0.2.2:51820", "10.0.9.2/32")}
    assert ov.ns.by_index(vx).mtu == 1500 - 50 - 60

    records["c" * 64] = wg_record(3)                        # C's record arrives
    d.nodes_changed()
    d.peers_changed(net)
    assert len(ov.peers(vx)) == 2 and set(wg.attrs["peers"]) == {"key-2", "key-3"}
    records["c" * 64] = {**wg_record(3), "public_key": "key-3b"}   # C rotated its key: swapped in, entries kept
    d.nodes_changed()
    d.peers_changed(net)
    assert set(wg.attrs["peers"]) == {"key-2", "key-3b"} and len(ov.peers(vx)) == 2
    del nodes["b" * 64]                                     # B removed from the swarm: its peer goes at once
    d.nodes_changed()
    d.peers_changed(net)
    assert set(wg.attrs["peers"]) == {"key-3b"}
    assert ov.peers(vx) == {("02:42:0a:07:00:11", "10.7.0.17", "10.0.9.3")}

    records["c" * 64] = {**wg_record(3), "public_key": "key-3c"}
    kernel.fail_at = 1                                      # WireGuard refuses: nothing towards anyone
    with pytest.raises(NsnetError):
        d.nodes_changed()
    kernel.fail_at = None
    d.peers_changed(net)
    assert ov.peers(vx) == set()

    d.leave(net, ep)                                        # its last encrypted network here: the tunnel goes
    assert "nswgaaaaaaaa" not in kernel.links()
    swarm = d.ctx.swarm()
    assert [e.key for e in swarm.kv.list("drivers/overlay/")] == ["drivers/overlay/vni/4097", "drivers/overlay/wg/range"]


def test_encrypted_overlay_first_join_fails_at_each_call_and_leave_undoes_it(tmp_path):
    def scenario():
        local: list[Endpoint] = []
        kernel, d, net, _ = encrypted_world(tmp_path, local, {"b" * 64: wg_record(2)})
        ep, sandbox = endpoint(net, 1), kernel.sandbox(2000)
        d.plan_endpoint(net, ep)
        local.append(ep)
        return kernel, lambda: d.join(net, ep, sandbox, True), lambda: d.leave(net, ep, sandbox)
    assert each_failure(scenario) >= 10


def test_a_join_waits_until_the_sandboxs_link_can_send(tmp_path):
    """The sandbox's link is synced (SandboxNs.ready) once its veth's other end is up on the bridge: before the
    kernel's link-watch work has run for it, a link whose carrier just came on drops what it sends (a
    sandbox's first ARP lost, sent again 1 s later)."""
    kernel, d, net = bridge_with_ports(0)
    ep, sandbox = endpoint(net, 1), kernel.sandbox(2000)
    d.join(net, ep, sandbox, True)
    assert sandbox.readied == [("eth0", True)]

    local: list[Endpoint] = []
    kernel, d, net = overlay_world(tmp_path, local)
    ep, sandbox = endpoint(net, 1), kernel.sandbox(2001)
    d.plan_endpoint(net, ep)
    local.append(ep)
    d.join(net, ep, sandbox, True)
    assert sandbox.readied == [("eth0", True)]
