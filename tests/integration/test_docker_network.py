"""Real Docker (Debian's docker.io) running its containers on nsnet's network driver (`docker network create
-d nsnet`), in the test's host namespace (dockerd.py): names and aliases through Docker's own 127.0.0.11,
published ports, internal networks, bad input in one line, and the faults: nsnet's daemon killed and
restarted, dockerd restarted, nsnet not running when dockerd starts."""
from __future__ import annotations

import os
import signal
import sys

from conftest import changes, sh, wait_for
from dockerd import IMAGE, docker  # noqa: F401 (a fixture)
from test_docker_ipam import records
from test_lockout import PC, SSH, office

from nsnet.engine.dockernet import ENDPOINT, NETWORK_LABEL
from nsnet.engine.dockerpools import ADDRESS, POOL


def run(docker, name: str, net: str, *args: str, cmd=("sleep", "3600")) -> None:
    docker.docker("run", "-d", "--name", name, "--network", net, *args, IMAGE, *cmd)


def ping(docker, container: str, target: str) -> bool:
    return docker.docker("exec", container, "ping", "-c1", "-W2", target, check=False).returncode == 0


def nsnet_network(host, docker, name: str) -> dict:
    docker_id = docker.inspect("network", name)["Id"]
    nets = [n for n in host.json("network", "inspect", *_names(host)) if (n["Labels"] or {}).get(NETWORK_LABEL) == docker_id]
    assert len(nets) == 1, nets
    return nets[0]


def _names(host) -> list[str]:
    return host.nsnet("network", "ls", "--format", "{{.Name}}").stdout.split()


HTTPD = ("sh", "-c", "mkdir -p /www && hostname > /www/index.html && exec httpd -f -p 80 -h /www")


def http_get(host, port: int, addr: str = "127.0.0.1") -> str:
    """From the test's host namespace, where dockerd runs too."""
    return host.sh(f"curl -s --max-time 3 http://{addr}:{port}/", check=False).stdout.strip()




def test_containers_on_an_nsnet_network_reach_each_other_by_name_and_alias(host, docker):
    docker.docker("network", "create", "-d", "nsnet", "--ipam-driver", "nsnet", "app")
    run(docker, "web", "app", "--network-alias", "frontend")
    run(docker, "db", "app")
    net = nsnet_network(host, docker, "app")
    assert net["Driver"] == "bridge" and net["Name"].startswith("docker-")
    subnet = docker.inspect("network", "app")["IPAM"]["Config"][0]["Subnet"]
    assert net["IPAM"]["Config"][0]["Subnet"] == subnet
    for target in ("web", "frontend", "db"):
        assert ping(docker, "db" if target != "db" else "web", target), target
    # No docker_gwbridge: nsnet gave the gateway.
    assert "docker_gwbridge" not in docker.docker("network", "ls", "--format", "{{.Name}}").stdout
    assert len(records(host, ENDPOINT)) == 2
    db = docker.inspect("container", "db")["NetworkSettings"]["Networks"]["app"]["IPAddress"]
    # Docker's network is removed through Docker only, never by nsnet's rm or prune.
    before = host.state()
    p = host.nsnet("network", "rm", net["Name"], check=False)
    assert p.returncode != 0 and "is Docker's (docker network create -d nsnet): remove it with docker network rm" in p.stderr
    host.nsnet("network", "prune", "-f")
    # nsnet's sandboxes stay off it: Docker hands out its addresses.
    p = host.nsnet("run", "-d", "--network", net["Name"], "--", "sleep", "60", check=False)
    assert p.returncode != 0 and "nsnet's sandboxes cannot join it" in p.stderr, p.stderr
    host.nsnet("run", "-d", "--name", "own", "--", "sleep", "60")
    p = host.nsnet("network", "connect", net["Name"], "own", check=False)
    assert p.returncode != 0 and "nsnet's sandboxes cannot join it" in p.stderr, p.stderr
    host.nsnet("rm", "-f", "own")
    assert changes(before, host.state()) == {}
    web = docker.inspect("container", "web")["NetworkSettings"]["Networks"]["app"]["IPAddress"]
    doctor = host.nsnet("doctor", "--client", web).stdout      # nsnet's doctor knows the bridge and the container
    assert f"interface: bridge {net['Options']['com.docker.network.bridge.name']} of nsnet network '{net['Name']}'" in doctor
    assert {c["IPv4Address"].split("/")[0] for c in net["Containers"].values()} == {web, db}

    docker.docker("rm", "-f", "web", "db")
    assert records(host, ENDPOINT) == []
    docker.docker("network", "rm", "app")
    assert not [n for n in _names(host) if n.startswith("docker-")]



def test_a_published_port_answers_from_the_host(host, docker):
    docker.docker("network", "create", "-d", "nsnet", "--ipam-driver", "nsnet", "app")
    run(docker, "web", "app", "-p", "8080:80", "--hostname", "web-1", cmd=HTTPD)
    assert wait_for(lambda: http_get(host, 8080) == "web-1")
    gateway = docker.inspect("network", "app")["IPAM"]["Config"][0]["Gateway"]
    assert http_get(host, 8080, gateway) == "web-1"        # a host address other than loopback
    docker.docker("rm", "-f", "web")
    assert http_get(host, 8080) == ""                       # revoked with the container
    assert "8080" not in host.sh("nft list table inet nsnet").stdout


def test_an_internal_network_has_no_way_out(host, docker):
    docker.docker("network", "create", "-d", "nsnet", "--ipam-driver", "nsnet", "out")
    docker.docker("network", "create", "-d", "nsnet", "--ipam-driver", "nsnet", "--internal", "in")
    run(docker, "o1", "out")
    run(docker, "i1", "in")
    run(docker, "i2", "in")
    assert nsnet_network(host, docker, "in")["Internal"] is True
    assert ping(docker, "i1", "i2")                                   # inside it: yes
    o1 = docker.inspect("container", "o1")["NetworkSettings"]["Networks"]["out"]["IPAddress"]
    assert ping(docker, "o1", docker.inspect("network", "out")["IPAM"]["Config"][0]["Gateway"])
    assert not ping(docker, "i1", o1)                                 # out of it: no
    assert "default" not in docker.docker("exec", "i1", "ip", "route").stdout
    assert "docker_gwbridge" not in docker.docker("network", "ls", "--format", "{{.Name}}").stdout


def test_icc_off_and_an_mtu_from_dockers_options(host, docker):
    docker.docker("network", "create", "-d", "nsnet", "--ipam-driver", "nsnet", "-o", "icc=false",
                  "-o", "com.docker.network.driver.mtu=1400", "app")
    run(docker, "c1", "app")
    run(docker, "c2", "app")
    assert "mtu 1400" in docker.docker("exec", "c1", "ip", "link", "show", "eth0").stdout
    assert ping(docker, "c1", docker.inspect("network", "app")["IPAM"]["Config"][0]["Gateway"])
    assert not ping(docker, "c1", "c2")


def test_bad_input_gets_one_line_and_changes_nothing(host, machines, docker):
    office(host, machines)
    before = host.state()
    p = docker.docker("network", "create", "-d", "nsnet", "-o", "bogus=1", "bad", check=False)
    assert p.returncode != 0 and "unknown option 'bogus' for the nsnet driver" in p.stderr
    assert len(p.stderr.strip().splitlines()) == 1
    # Docker's own IPAM with nsnet's driver: a subnet over a live peer is refused on nsnet's evidence.
    p = docker.docker("network", "create", "-d", "nsnet", "--subnet", "172.22.0.0/16", "bad", check=False)
    assert p.returncode != 0 and f"172.22.0.0/16 contains {PC}, {SSH}" in p.stderr
    assert len(p.stderr.strip().splitlines()) == 1
    p = docker.docker("network", "create", "-d", "nsnet", "-o", "com.docker.network.driver.mtu=9", "bad", check=False)
    assert p.returncode != 0 and "invalid MTU '9'" in p.stderr
    assert "bad" not in docker.docker("network", "ls", "--format", "{{.Name}}").stdout.split()
    assert changes(before, host.state()) == {}


def test_nsnet_killed_and_restarted_under_running_containers(host, docker):
    docker.docker("network", "create", "-d", "nsnet", "--ipam-driver", "nsnet", "app")
    run(docker, "web", "app", "-p", "8080:80", "--hostname", "web-1", cmd=HTTPD)
    run(docker, "c1", "app")
    assert wait_for(lambda: http_get(host, 8080) == "web-1")
    bridge = nsnet_network(host, docker, "app")["Options"]["com.docker.network.bridge.name"]
    os.kill(host.daemon_pid(), signal.SIGKILL)
    assert ping(docker, "c1", "web") and http_get(host, 8080) == "web-1"   # the kernel keeps it all
    host.sh(f"ip link del {bridge}")                       # ...until someone deletes the bridge meanwhile
    assert not ping(docker, "c1", "web")
    host.nsnet("info")                                     # a new daemon: the bridge again, the veths on it
    assert ping(docker, "c1", "web") and http_get(host, 8080) == "web-1"   # its firewall has the port too
    run(docker, "c2", "app")                                               # Docker's next calls work
    assert ping(docker, "c2", "web") and ping(docker, "web", "c2")
    docker.docker("rm", "-f", "c1")
    assert len(records(host, ENDPOINT)) == 2
    docker.docker("rm", "-f", "web")
    assert http_get(host, 8080) == ""


def test_dockerd_restarted_brings_its_networks_and_containers_back(host, docker):
    docker.docker("network", "create", "-d", "nsnet", "--ipam-driver", "nsnet", "app")
    for name in ("c1", "c2"):
        run(docker, name, "app", "--restart", "always")
    assert ping(docker, "c1", "c2")
    docker.restart()
    assert wait_for(lambda: docker.docker("ps", "-q").stdout.split().__len__() == 2, timeout=30)
    assert wait_for(lambda: ping(docker, "c1", "c2"), timeout=10)
    assert len(records(host, ENDPOINT)) == 2
    host_links = host.sh("ip -o link show").stdout
    assert sum(1 for line in host_links.splitlines() if ": nsd" in line) == 2   # no veth left behind


def test_nsnet_not_running_when_dockerd_starts(host, docker):
    """Docker waits 15 s on each plugin lookup and then leaves the containers it tried to start exited; nsnet's
    daemon, once started, starts those (dockerkick.py): `always`, and `on-failure` whose last run ended
    non-zero (here: killed by dockerd's shutdown), even one a user stopped, as Docker does on its own bridge."""
    docker.docker("network", "create", "-d", "nsnet", "--ipam-driver", "nsnet", "app")
    docker.docker("network", "create", "own")                # Docker's own bridge: what Docker does by itself
    run(docker, "keep", "app", "--restart", "always")
    run(docker, "once", "app")                              # no restart policy: Docker would not start it
    run(docker, "stopped", "app", "--restart", "unless-stopped")
    docker.docker("stop", "-t", "0", "stopped")             # a user stopped it: Docker would not start it
    run(docker, "failing", "app", "--restart", "on-failure")
    for name, net in (("failing-stopped", "app"), ("twin-failing-stopped", "own")):
        run(docker, name, net, "--restart", "on-failure")
        docker.docker("stop", "-t", "0", name)              # exit 137 by a user: on-failure ignores who
    run(docker, "failing-done", "app", "--restart", "on-failure", cmd=("sh", "-c", "exit 0"))
    assert wait_for(lambda: not docker.inspect("container", "failing-done")["State"]["Running"])
    os.kill(docker.proc.pid, signal.SIGTERM)
    docker.proc.wait(timeout=30)
    os.kill(host.daemon_pid(), signal.SIGKILL)              # its socket is left behind, refusing
    docker.start(timeout=240)
    tried = {"keep", "failing", "failing-stopped"}
    for name in tried:
        state = docker.inspect("container", name)["State"]
        assert not state["Running"] and "docker-plugin.sock" in state["Error"], (name, state)
    for name in ("once", "stopped", "failing-done"):       # never tried: no error
        assert docker.inspect("container", name)["State"]["Error"] == "", name
    assert docker.inspect("container", "failing-done")["State"]["ExitCode"] == 0
    assert docker.inspect("container", "twin-failing-stopped")["State"]["Running"]   # Docker's own quirk
    assert records(host, ENDPOINT) == []
    # nsnet's daemon starts, knowing where Docker answers (as Docker's clients do: DOCKER_HOST).
    host.sh(f"env DOCKER_HOST=unix://{docker.w}/docker.sock {sys.executable} -m nsnet --root {host.root} info")
    assert wait_for(lambda: all(docker.inspect("container", n)["State"]["Running"] for n in tried), timeout=30), \
        open(os.path.join(host.root, "daemon.log")).read()[-2000:]
    assert len(records(host, ENDPOINT)) == len(tried)
    run(docker, "probe", "app")
    assert ping(docker, "probe", "keep") and ping(docker, "probe", "failing")
    for name in ("once", "stopped", "failing-done"):
        assert not docker.inspect("container", name)["State"]["Running"]


def ping6(docker, container: str, target: str) -> bool:
    return docker.docker("exec", container, "ping", "-6", "-c1", "-W2", target, check=False).returncode == 0


def test_ipv6_containers_reach_each_other_by_address_and_name(host, docker):
    """`--ipv6` on an nsnet network, with Docker's IPAM (its own IPv4 pool) and with nsnet's (both of nsnet's)."""
    for i, ipam in enumerate(("default", "nsnet")):
        net, subnet = f"v6{ipam}", f"fd42:{i + 7}::/64"
        docker.docker("network", "create", "-d", "nsnet", "--ipam-driver", ipam, "--ipv6", "--subnet", subnet, net)
        a, b = f"a{i}", f"b{i}"
        run(docker, a, net)
        run(docker, b, net)
        addr = docker.inspect("container", a)["NetworkSettings"]["Networks"][net]["GlobalIPv6Address"]
        assert addr.startswith(subnet.split("/")[0].rstrip(":")), addr
        nsnet_net = nsnet_network(host, docker, net)
        assert nsnet_net["EnableIPv6"] is True
        assert subnet in [c["Subnet"] for c in nsnet_net["IPAM"]["Config"]]
        assert ping6(docker, b, addr), docker.docker("exec", b, "ip", "-6", "addr").stdout
        assert ping6(docker, b, a)                                  # Docker's 127.0.0.11 answers AAAA
        gateway6 = next(c["Gateway"] for c in nsnet_net["IPAM"]["Config"] if ":" in c["Subnet"])
        assert f"default via {gateway6}" in docker.docker("exec", a, "ip", "-6", "route").stdout
        assert ping6(docker, a, gateway6)
        assert ping(docker, a, b)                                   # and IPv4 still
    other = docker.inspect("container", "b1")["NetworkSettings"]["Networks"]["v6nsnet"]["GlobalIPv6Address"]
    assert not ping6(docker, "a0", other)                           # networks stay apart in IPv6 too
    docker.docker("rm", "-f", "a0", "b0", "a1", "b1")
    docker.docker("network", "rm", "v6default", "v6nsnet")
    assert records(host, ENDPOINT) == [] and records(host, POOL) == [] and records(host, ADDRESS) == []
    assert not [n for n in _names(host) if n.startswith("docker-")]


def nsd_links(host) -> list[str]:
    return [line.split(":")[1].strip().split("@")[0] for line in host.sh("ip -o link show").stdout.splitlines()
            if ": nsd" in line]


def in_container(docker, pid: int, cmd: str) -> bool:
    """`cmd` run in a container's network namespace by the host's tools: dockerd need not be there."""
    return sh(f"nsenter --net=/proc/{pid}/ns/net {cmd}", check=False).returncode == 0


def test_dockerd_killed_9_under_running_containers(host, docker):
    """dockerd dies hard and is started again (as systemd's Restart= does). Docker itself then stops the
    containers still running (no live-restore), tells the drivers to remove their endpoints ("Removing stale
    sandbox": Leave, DeleteEndpoint, ReleaseAddress) and starts again those its restart policy says: `always`,
    and `on-failure` (the stop was exit 137), not `unless-stopped` (that stop counts as a manual one), exactly
    as for a twin on Docker's own bridge driver."""
    docker.docker("network", "create", "-d", "nsnet", "--ipam-driver", "nsnet", "app")
    docker.docker("network", "create", "own")                    # Docker's bridge driver, Docker's IPAM
    for name, policy in (("c1", "always"), ("c2", "unless-stopped"), ("c3", "on-failure")):
        run(docker, name, "app", "--restart", policy)
        run(docker, f"twin-{name}", "own", "--restart", policy)
    run(docker, "once", "app")                                   # no restart policy
    assert ping(docker, "c1", "c2")
    old_links, old_eps = set(nsd_links(host)), {r["id"] for r in records(host, ENDPOINT)}
    assert len(old_links) == len(old_eps) == 4
    pid1 = docker.inspect("container", "c1")["State"]["Pid"]
    c2 = docker.inspect("container", "c2")["NetworkSettings"]["Networks"]["app"]["IPAddress"]
    docker.kill()
    assert in_container(docker, pid1, f"ping -c1 -W2 {c2}")      # dockerd gone: the kernel keeps the traffic
    docker.start()

    def running() -> set:
        return set(docker.docker("ps", "--format", "{{.Names}}").stdout.split())

    want = {"c1", "c3", "twin-c1", "twin-c3"}
    assert wait_for(lambda: running() == want, timeout=30), docker.docker("ps", "-a").stdout
    for name in ("c2", "twin-c2", "once"):                       # stopped by Docker, left so, nsnet or not
        state = docker.inspect("container", name)["State"]
        assert state["ExitCode"] == 137 and state["Error"] == "", (name, state)
    assert ping(docker, "c1", "c3") and ping(docker, "c3", "c1")
    # nsnet holds the new endpoints only: the dead ones' records, veths and addresses are gone.
    eps = records(host, ENDPOINT)
    assert len(eps) == 2 and not old_eps & {r["id"] for r in eps}
    assert set(nsd_links(host)) == {r["host_ifname"] for r in eps} and not old_links & set(nsd_links(host))
    given = sorted(r["address"] for r in records(host, ADDRESS))
    assert given == sorted(docker.inspect("container", c)["NetworkSettings"]["Networks"]["app"]["IPAddress"]
                           for c in ("c1", "c3"))
    docker.docker("start", "c2")                                  # and what was left starts as ever
    assert ping(docker, "c2", "c1")
    docker.docker("rm", "-f", "c1", "c2", "c3", "once")
    docker.docker("network", "rm", "app")
    assert records(host, ENDPOINT) == [] and records(host, POOL) == [] and nsd_links(host) == []
