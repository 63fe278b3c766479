"""Docker's network driver calls on the engine's fakes (test_engine_rollback.World): each kernel call of a
CreateNetwork, Join and ProgramExternalConnectivity fails in turn; the call raises one line and leaves the
store, the kernel, the firewall and DockerNets' own records as they were, and then succeeds."""
import copy

from test_engine_rollback import each_failure, worlds  # noqa: F401 (a fixture)

from nsnet.engine.dockernet import NETWORK_LABEL

DOCKER_ID = "cd" * 32
IPV4 = [{"Pool": "10.77.0.0/24", "Gateway": "10.77.0.1/24"}]


def docker_network(w):
    return w.engine.docker_nets.create_network(DOCKER_ID, {"com.docker.network.generic": {"mtu": "1400"}}, IPV4, [])


def endpoint(w, eid="e" * 64):
    w.engine.docker_nets.create_endpoint(DOCKER_ID, eid, {"Address": "10.77.0.2/24"})
    return eid


def test_create_network_fails_at_each_kernel_call(worlds):
    net = each_failure(worlds, lambda w: None, lambda w, _: docker_network(w),
                       lambda net: (net.labels[NETWORK_LABEL], [s.subnet for s in net.subnets], net.options))
    assert net > 0


def test_join_fails_at_each_kernel_call(worlds):
    def setup(w):
        docker_network(w)
        return endpoint(w)

    def join(w, eid):
        before = copy.deepcopy(w.engine.docker_nets.eps)
        try:
            return w.engine.docker_nets.join(eid)
        except Exception:
            assert w.engine.docker_nets.eps == before   # its record still says not joined
            raise
    assert each_failure(worlds, setup, join) > 0


def test_publishing_refused_by_the_firewall_holds_no_port(worlds):
    w = worlds()
    docker_network(w)
    eid = endpoint(w)
    w.engine.docker_nets.join(eid)
    before = w.snapshot()
    w.firewall.refuse = True
    binding = {"Proto": 6, "Port": 80, "HostIP": "127.0.0.1", "HostPort": 0}
    try:
        w.engine.docker_nets.publish(eid, [binding])
    except Exception as e:
        assert "nft refused" in str(e)
    else:
        raise AssertionError("the firewall's refusal was not passed on")
    w.firewall.refuse = False
    assert w.snapshot() == before and eid not in w.engine.docker_nets.sockets
    w.engine.docker_nets.publish(eid, [binding])
    assert [p.target_ip for p in w.firewall.applied.ports] == ["10.77.0.2"]
