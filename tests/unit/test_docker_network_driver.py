"""Docker's network driver calls as the daemon answers them (refusals as {"Err": one line}, the network
driver's key) and how a CreateNetwork request becomes nsnet's network request (pure: a fake engine)."""
from __future__ import annotations

import json
import threading
from types import SimpleNamespace

import pytest

from nsnet.daemon.dockerplugin import dispatch
from nsnet.drivers.base import MTU_KEY
from nsnet.drivers.bridge import ICC_KEY, NAME_KEY
from nsnet.engine.dockernet import NETWORK_LABEL, DockerNets, _mapping
from nsnet.errors import NsnetError

DOCKER_ID = "ab" * 32


class FakeEngine:
    def __init__(self, pools=()):
        self.thread, self.lock, self.asked = None, threading.RLock(), []
        self.store = SimpleNamespace(list=lambda kind: [])
        self.state = SimpleNamespace(nets={})
        self.docker_pools = SimpleNamespace(pools={str(i): {"subnet": s} for i, s in enumerate(pools)})

    def create_network(self, req, ask_docker=True):
        self.asked.append((req, ask_docker))
        return SimpleNamespace(id="n1", **req)


def create(engine, options, ipv4=({"Pool": "10.9.0.0/24", "Gateway": "10.9.0.1/24"},)):
    DockerNets(engine).create_network(DOCKER_ID, options, list(ipv4), [])
    return engine.asked[-1]


def test_docker_options_become_the_bridge_drivers():
    req, ask_docker = create(FakeEngine(), {"com.docker.network.generic": {"mtu": "1400", ICC_KEY: "false",
                                                                           NAME_KEY: "br-app"},
                                            "com.docker.network.internal": True})
    assert ask_docker is False          # Docker waits on this call: it would not answer
    assert req["Options"] == {MTU_KEY: "1400", ICC_KEY: "false", NAME_KEY: "br-app"} and req["Internal"] is True
    assert req["Subnets"] == ["10.9.0.0/24"] and req["Gateways"] == ["10.9.0.1"]
    assert req["Labels"] == {NETWORK_LABEL: DOCKER_ID} and req["Name"] == "docker-" + DOCKER_ID[:12]
    assert req["AllowOverlap"] is False  # Docker's own IPAM: nsnet's evidence decides


def test_a_subnet_from_nsnets_ipam_is_not_evidence_against_itself():
    req, _ = create(FakeEngine(pools=["10.9.0.0/24"]), {})
    assert req["AllowOverlap"] is True


@pytest.mark.parametrize("options, ipv4, why", [
    ({"com.docker.network.generic": {"bogus": "1"}}, ({"Pool": "10.9.0.0/24"},), "unknown option 'bogus'"),
    ({"com.docker.network.generic": "x"}, ({"Pool": "10.9.0.0/24"},), "must be a JSON object"),
    ({}, (), "no IPv4 subnet"),
    ({}, ("10.9.0.0/24",), "lists of objects with a Pool"),
])
def test_create_network_refusals(options, ipv4, why):
    engine = FakeEngine()
    with pytest.raises(NsnetError, match=why):
        create(engine, options, ipv4)
    assert engine.asked == []


def test_port_bindings_in_dockers_shape():
    p = _mapping({"Proto": 6, "IP": "", "Port": 80, "HostIP": "", "HostPort": 8080, "HostPortEnd": 8080})
    assert (p.host_ip, p.host_port, p.port, p.proto) == ("0.0.0.0", 8080, 80, "tcp")
    assert _mapping({"Proto": 17, "Port": 53, "HostIP": "127.0.0.1", "HostPort": 53}).proto == "udp"
    for bad in ({"Proto": 1, "Port": 80}, {"Proto": 6, "Port": 0}, {"Proto": 6, "Port": 80, "HostIP": "x"}, []):
        with pytest.raises(NsnetError):
            _mapping(bad)


def post(daemon, path, body):
    return dispatch(daemon, "POST", path, json.dumps(body).encode())


def test_the_network_driver_answers_and_refuses_with_err():
    def refuse(*args):
        raise NsnetError("no such\nthing")
    nets = SimpleNamespace(create_endpoint=refuse, join=refuse)
    daemon = SimpleNamespace(engine=SimpleNamespace(docker_nets=nets))
    assert post(daemon, "/NetworkDriver.GetCapabilities", {})[1]["Scope"] == "local"
    assert post(daemon, "/NetworkDriver.DiscoverNew", {"DiscoveryType": 1}) == (200, {})
    assert post(daemon, "/NetworkDriver.Join", {"EndpointID": "e"}) == (200, {"Err": "no such thing"})
    assert post(daemon, "/NetworkDriver.CreateEndpoint", {"Interface": "x"}) == \
        (200, {"Err": "Interface must be a JSON object"})
    assert set(post(daemon, "/NetworkDriver.Nope", {})[1]) == {"Err"}
    assert post(daemon, "/NetworkDriver.ProgramExternalConnectivity",
                {"Options": {"com.docker.network.portmap": {"a": 1}}})[1]["Err"].endswith("must be a list of port bindings")


def test_nsnet_starts_only_what_docker_would_have_started():
    from nsnet.daemon.dockerkick import should_start
    sock = "/var/lib/nsnet/docker-plugin.sock"
    failed = {"Running": False, "Error": f'legacy plugin: Post "http://x/Plugin.Activate": dial unix {sock}: connect: connection refused'}

    def doc(policy, state):
        return {"HostConfig": {"RestartPolicy": {"Name": policy}}, "State": state}
    assert should_start(doc("always", failed), sock) and should_start(doc("unless-stopped", failed), sock)
    assert not should_start(doc("no", failed), sock)                          # Docker would not either
    assert should_start(doc("on-failure", failed), sock)      # Docker tried it: its last run ended non-zero
    assert not should_start(doc("on-failure", {"Running": False, "Error": ""}), sock)   # exited 0: never tried
    assert not should_start(doc("always", {"Running": False, "Error": ""}), sock)   # a user stopped it
    assert not should_start(doc("always", dict(failed, Error="legacy plugin: … /other.sock …")), sock)
    assert not should_start({}, sock)
