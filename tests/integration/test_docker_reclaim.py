"""Real Docker (dockerd.py): what Docker forgets when its clean-up finds nsnet down is reclaimed by nsnet's
daemon (daemon/dockersweep.py, engine/dockerreclaim.py), and what Docker uses never is."""
from __future__ import annotations

import os
import signal
import sys
import threading
import time

from conftest import wait_for
from dockerd import IMAGE, docker  # noqa: F401 (a fixture)
from test_docker_ipam import _Unix, plugin, records
from test_docker_network import nsd_links, ping

from nsnet.engine.dockernet import ENDPOINT
from nsnet.engine.dockerpools import ADDRESS, POOL


def start_nsnet(host, docker, reclaim: str | None = None) -> None:
    """nsnet's daemon started knowing where Docker answers (as Docker's clients do: DOCKER_HOST)."""
    env = f"NSNET_DOCKER_RECLAIM={reclaim} " if reclaim else ""
    host.sh(f"env DOCKER_HOST=unix://{docker.w}/docker.sock {env}{sys.executable} -m nsnet --root {host.root} info")


def daemon_log(host) -> str:
    with open(os.path.join(host.root, "daemon.log")) as f:
        return f.read()


def addr(docker, container: str, net: str) -> str:
    return docker.inspect("container", container)["NetworkSettings"]["Networks"][net]["IPAddress"]


def given(host) -> list[str]:
    return sorted(r["address"] for r in records(host, ADDRESS))


def test_dockerd_killed_9_while_nsnet_is_down_leaks_nothing(host, docker):
    """dockerd dies hard while nsnet's daemon is down too; both come back. Docker's clean-up of its dead
    containers' endpoints (Leave, DeleteEndpoint, ReleaseAddress) finds nsnet's socket refusing and Docker
    forgets them; nsnet finds them absent from Docker's networks at two looks 20 s apart and releases them:
    the records, the veths, the addresses (on `-d nsnet` and on Docker's bridge with nsnet's IPAM)."""
    # Six addresses in each: gateway .1, five for containers. A pool that leaks runs out.
    docker.docker("network", "create", "-d", "nsnet", "--ipam-driver", "nsnet", "--subnet", "10.123.0.0/29", "app")
    docker.docker("network", "create", "--ipam-driver", "nsnet", "--subnet", "10.123.1.0/29", "own")
    for name, net in (("d1", "app"), ("d2", "app"), ("d3", "app"), ("b1", "own"), ("b2", "own")):
        docker.docker("run", "-d", "--name", name, "--network", net, IMAGE, "sleep", "3600")
    dead = {n: addr(docker, n, "app") for n in ("d1", "d2", "d3")}
    dead_own = {n: addr(docker, n, "own") for n in ("b1", "b2")}
    old_eps, old_links = {r["id"] for r in records(host, ENDPOINT)}, set(nsd_links(host))
    assert len(old_eps) == len(old_links) == 3 and len(given(host)) == 5

    docker.kill()
    os.kill(host.daemon_pid(), signal.SIGKILL)
    docker.start(timeout=240)                   # its clean-up fails on nsnet's refusing socket
    for name in dead | dead_own:
        assert not docker.inspect("container", name)["State"]["Running"], name
    start_nsnet(host, docker)
    # The leak, as it was: Docker has no endpoint on either network, nsnet still holds them all.
    for net in ("app", "own"):
        assert docker.inspect("network", net)["Containers"] == {}, net
    assert {r["id"] for r in records(host, ENDPOINT)} == old_eps and len(given(host)) == 5

    assert wait_for(lambda: records(host, ENDPOINT) == [] and given(host) == [], timeout=60), \
        (records(host, ENDPOINT), given(host), daemon_log(host)[-2000:])
    assert nsd_links(host) == []
    log = daemon_log(host)
    for eid in old_eps:
        assert f"endpoint {eid[:12]} (" in log and "reclaimed: Docker shows it nowhere" in log
    for a in list(dead.values()) + list(dead_own.values()):
        assert f"address {a} of pool" in log, a
    assert len(records(host, POOL)) == 2                     # the pools stay: their networks do

    # New containers take the freed addresses: each one by name, and the pool's five again.
    docker.docker("run", "-d", "--name", "n1", "--network", "app", "--ip", dead["d1"], IMAGE, "sleep", "3600")
    docker.docker("run", "-d", "--name", "m1", "--network", "own", "--ip", dead_own["b1"], IMAGE, "sleep", "3600")
    for i in range(2, 6):
        docker.docker("run", "-d", "--name", f"n{i}", "--network", "app", IMAGE, "sleep", "3600")
    own_gateway = next(p["gateway"] for p in records(host, POOL) if p["subnet"] == "10.123.1.0/29")
    assert ping(docker, "n5", "n1") and ping(docker, "m1", own_gateway)
    assert given(host) == sorted([addr(docker, f"n{i}", "app") for i in range(1, 6)] + [dead_own["b1"]])
    assert len(records(host, ENDPOINT)) == 5


def test_containers_starting_and_stopping_meanwhile_keep_what_they_use(host, docker, tmp_path):
    """The reclaim runs round after round (looks 1 s apart) while containers start, stop and are removed in a
    loop, on `-d nsnet` and on Docker's bridge with nsnet's IPAM: every running container keeps its endpoint
    and address, and answers; what Docker never heard of (an endpoint and an address made on nsnet's plugin
    socket directly, as Docker's forgotten ones are) is reclaimed meanwhile."""
    docker.docker("network", "create", "-d", "nsnet", "--ipam-driver", "nsnet", "app")
    docker.docker("network", "create", "--ipam-driver", "nsnet", "own")
    os.kill(host.daemon_pid(), signal.SIGKILL)
    start_nsnet(host, docker, reclaim="1,0.2")
    # A forgotten endpoint and address, as Docker leaves them: on nsnet's socket, never in Docker's store.
    app = docker.inspect("network", "app")
    pool = next(p["id"] for p in records(host, POOL) if p["subnet"] == app["IPAM"]["Config"][0]["Subnet"])
    conn = _Unix(os.path.join(host.root, "docker-plugin.sock"))
    ghost_addr = plugin(conn, "/IpamDriver.RequestAddress", {"PoolID": pool, "Address": "", "Options": {}})["Address"]
    ghost = "f" * 64
    assert plugin(conn, "/NetworkDriver.CreateEndpoint", {"NetworkID": app["Id"], "EndpointID": ghost,
                                                          "Interface": {"Address": ghost_addr}}) == {"Interface": {}}
    assert "InterfaceName" in plugin(conn, "/NetworkDriver.Join", {"EndpointID": ghost})
    conn.close()

    errors = []

    def churn(net: str, prefix: str) -> None:
        try:
            for i in range(8):
                name = f"{prefix}{i}"
                docker.docker("run", "-d", "--name", name, "--network", net, IMAGE, "sleep", "3600")
                if i % 3 == 1:
                    docker.docker("stop", "-t", "0", name)
                    docker.docker("start", name)
                if i % 3 == 2:
                    docker.docker("rm", "-f", name)
        except AssertionError as e:
            errors.append(str(e))

    threads = [threading.Thread(target=churn, args=a) for a in (("app", "a"), ("own", "o"))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not errors, errors
    assert wait_for(lambda: ghost not in {r["id"] for r in records(host, ENDPOINT)}, timeout=15), daemon_log(host)[-2000:]
    running = docker.docker("ps", "--format", "{{.Names}}").stdout.split()
    assert len(running) == 12
    time.sleep(3)                                   # a few rounds more after the churn
    eps = {r["id"] for r in records(host, ENDPOINT)}
    addresses = []
    for name in running:
        net = "app" if name.startswith("a") else "own"
        info = docker.inspect("container", name)["NetworkSettings"]["Networks"][net]
        if net == "app":
            assert info["EndpointID"] in eps, name
        addresses.append(info["IPAddress"])
    assert len(set(addresses)) == len(addresses)
    assert given(host) == sorted(addresses), (given(host), sorted(addresses))
    assert ghost_addr.split("/")[0] not in given(host) or ghost_addr.split("/")[0] in addresses
    assert ping(docker, "a0", "a7") and ping(docker, "o0", addresses[running.index("o7")])
    assert f"endpoint {ghost[:12]} ({ghost_addr}, nsd{ghost[:12]}) reclaimed: Docker shows it nowhere" in daemon_log(host)
