"""Real Docker (Debian's docker.io) using nsnet as its IPAM driver (`--ipam-driver nsnet`) with Docker's own
bridge driver, in the test's host namespace: dockerd runs there under `nsenter --net=` with a private mount
namespace (a tmpfs over /run; /run/docker/plugins and /etc/docker bind-mounted from a temp folder), as
/work/shared/recipes/dockerd-in-netns.sh does, so nothing of the machine's own Docker is touched."""
from __future__ import annotations

import http.client
import ipaddress
import json
import os
import shlex
import signal
import socket
import sqlite3

from conftest import sh
from dockerd import IMAGE, docker  # noqa: F401 (a fixture)
from test_lockout import PC, PY, SERVER_IP, SSH, office

from nsnet.engine.dockerpools import ADDRESS, POOL

def records(host, kind: str) -> list[dict]:
    con = sqlite3.connect(os.path.join(host.root, "state.db"))
    try:
        return [json.loads(v) for (v,) in con.execute("SELECT value FROM kv WHERE key LIKE ?", (f"{kind}/%",))]
    finally:
        con.close()


def subnet(docker, net: str) -> str:
    return docker.inspect("network", net)["IPAM"]["Config"][0]["Subnet"]


def address(docker, container: str, net: str) -> str:
    return docker.inspect("container", container)["NetworkSettings"]["Networks"][net]["IPAddress"]


def run(docker, name: str, net: str) -> str:
    docker.docker("run", "-d", "--name", name, "--network", net, IMAGE, "sleep", "3600")
    return address(docker, name, net)


def test_the_plugin_spec_and_info(host, tmp_path):
    d = tmp_path / "plugins"
    host.nsnet("docker-plugin", "enable", "--dir", str(d))
    sock = os.path.join(host.root, "docker-plugin.sock")
    assert (d / "nsnet.spec").read_text() == f"unix://{sock}\n"
    assert os.stat(sock).st_mode & 0o777 == 0o600
    info = host.json("info")["DockerPlugin"]
    assert info["Socket"] == sock and info["Implements"] == ["NetworkDriver", "IpamDriver"]
    assert info["Enabled"] is False    # only Docker's own folders count, and the test never writes there
    host.nsnet("docker-plugin", "disable", "--dir", str(d))
    assert not (d / "nsnet.spec").exists()


def test_docker_networks_take_nsnet_pools_and_addresses_across_a_restart(host, machines, docker):
    office(host, machines)                          # a live SSH-like session from 172.22.10.119
    host.nsnet("network", "create", "own")          # nsnet's own network: 172.18.0.0/16
    own = host.json("network", "inspect", "own")[0]["IPAM"]["Config"][0]["Subnet"]

    docker.docker("network", "create", "--ipam-driver", "nsnet", "n1")
    docker.docker("network", "create", "--ipam-driver", "nsnet", "n2")
    n1, n2 = subnet(docker, "n1"), subnet(docker, "n2")
    pools = {p["subnet"]: p for p in records(host, POOL)}
    assert set(pools) == {n1, n2} and n1 != n2
    for s in (n1, n2):
        assert not ipaddress.ip_network(s).overlaps(ipaddress.ip_network(own))
        assert ipaddress.ip_address(PC) not in ipaddress.ip_network(s)
    # ...and nsnet's next network skips the Docker pools.
    host.nsnet("network", "create", "after")
    after = ipaddress.ip_network(host.json("network", "inspect", "after")[0]["IPAM"]["Config"][0]["Subnet"])
    assert not any(after.overlaps(ipaddress.ip_network(s)) for s in (n1, n2))

    a, b = run(docker, "ca", "n1"), run(docker, "cb", "n1")
    gateway = docker.inspect("network", "n1")["IPAM"]["Config"][0]["Gateway"]
    assert gateway == pools[n1]["gateway"]
    handed = {r["address"] for r in records(host, ADDRESS) if r["pool"] == pools[n1]["id"]}
    assert {a, b} <= handed and a != b
    assert docker.docker("exec", "ca", "ping", "-c1", "-W2", b).returncode == 0   # real packets

    # nsnet dies hard and comes back; Docker replays nothing and asks for an address on the old pool.
    os.kill(host.daemon_pid(), signal.SIGKILL)
    host.nsnet("info")
    c = run(docker, "cc", "n1")
    assert c not in (a, b, gateway) and ipaddress.ip_address(c) in ipaddress.ip_network(n1)
    assert c in {r["address"] for r in records(host, ADDRESS)}
    assert docker.docker("exec", "cc", "ping", "-c1", "-W2", a).returncode == 0

    docker.docker("rm", "-f", "ca", "cb", "cc")
    docker.docker("network", "rm", "n1")
    assert [p["subnet"] for p in records(host, POOL)] == [n2]
    assert all(r["pool"] != pools[n1]["id"] for r in records(host, ADDRESS))
    # Given out again: the tracked flows of its addresses (the pings, the bridge's IGMP) went with them.
    docker.docker("network", "create", "--ipam-driver", "nsnet", "n3")
    assert subnet(docker, "n3") == n1


def test_a_subnet_over_a_live_peer_is_refused_with_nsnets_reason(host, machines, docker):
    office(host, machines)
    p = docker.docker("network", "create", "--ipam-driver", "nsnet", "--subnet", "172.22.0.0/16", "bad", check=False)
    assert p.returncode != 0
    assert f"172.22.0.0/16 contains {PC}, {SSH}; replies to it would be routed into this network's bridge." in p.stderr
    assert "pass --ipam-opt allow-overlap=true" in p.stderr
    assert "bad" not in docker.docker("network", "ls", "--format", "{{.Name}}").stdout.split()
    assert records(host, POOL) == []


class _Unix(http.client.HTTPConnection):
    def __init__(self, path: str):
        super().__init__("nsnet", timeout=10)
        self.path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(self.path)


def plugin(conn: _Unix, path: str, body: dict) -> dict:
    """One call on nsnet's plugin socket, as Docker makes it (one kept-alive connection)."""
    conn.request("POST", path, body=json.dumps(body), headers={"Content-Type": "application/json"})
    return json.loads(conn.getresponse().read())


# A second session from the PC, from an address of its own (10.77.0.5) that nothing else on the server names.
LATE_SESSION = f"""
import socket, time
c = socket.socket(); c.bind(("10.77.0.5", 0)); c.connect(("{SERVER_IP}", 22))
print(c.recv(100).decode().strip(), flush=True)
time.sleep(3600)
"""


def test_a_route_or_peer_that_appeared_a_moment_before_request_pool_is_seen(host, machines, tmp_path):
    """RequestPool reads the host's evidence at the call, not from a copy: a route made just before the
    call, and a TCP session opened just before it, refuse the subnet; the route gone, the subnet is given."""
    pc = office(host, machines)
    host.nsnet("docker-plugin", "enable", "--dir", str(tmp_path))
    conn = _Unix(os.path.join(host.root, "docker-plugin.sock"))
    ask = {"AddressSpace": "nsnet-local", "Options": {}, "V6": False}
    assert "PoolID" in plugin(conn, "/IpamDriver.RequestPool", dict(ask, Pool="10.59.0.0/24"))  # warm: the cache, if any
    for i in range(60, 65):
        host.sh(f"ip route add 10.{i}.0.0/16 via 172.42.10.1")
        refused = plugin(conn, "/IpamDriver.RequestPool", dict(ask, Pool=f"10.{i}.1.0/24"))
        assert f"a route to 10.{i}.0.0/16 via 172.42.10.1" in refused.get("Error", ""), refused
        host.sh(f"ip route del 10.{i}.0.0/16")
        given = plugin(conn, "/IpamDriver.RequestPool", dict(ask, Pool=f"10.{i}.1.0/24"))
        assert given.get("Pool") == f"10.{i}.1.0/24", given
    # A live peer from a range nothing else shows: its session is all the evidence there is.
    sh(f"ip -n {pc} addr add 10.77.0.5/32 dev lo")
    router = next(n for n in machines.names if "-router-" in n)
    sh(f"ip -n {router} route add 10.77.0.5/32 via {PC}")
    session = machines.spawn(pc, f"{PY} -c {shlex.quote(LATE_SESSION)}")
    assert session.stdout.readline().strip() == "peer=10.77.0.5"
    refused = plugin(conn, "/IpamDriver.RequestPool", dict(ask, Pool="10.77.0.0/24"))
    assert "10.77.0.0/24 contains 10.77.0.5, the peer of a live SSH connection" in refused.get("Error", ""), refused
    conn.close()
