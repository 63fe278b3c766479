"""Network lifecycle, Docker's shapes and pool order, refused input, and recovery after kill -9."""
import os
import signal
import sys


from conftest import changes, wait_for


def subnet_of(host, net: str) -> str:
    return host.json("network", "inspect", net)[0]["IPAM"]["Config"][0]["Subnet"]


def test_builtin_networks_and_docker_pool_order(host):
    names = [n["Name"] for n in host.json("network", "ls", "--format", "json")]
    assert names == ["bridge", "host", "none"]
    assert subnet_of(host, "bridge") == "172.17.0.0/16"
    # A route of the host over 172.20.0.0/16 (another tool's bridge, a VPN...) makes that pool unusable.
    host.sh("ip link add dummy-x type veth peer name dummy-y")
    host.sh("ip addr add 172.20.5.1/24 dev dummy-x")
    host.sh("ip link set dummy-x up")
    got = []
    for n in ("n1", "n2", "n3"):
        host.nsnet("network", "create", n)
        got.append(subnet_of(host, n))
    assert got == ["172.18.0.0/16", "172.19.0.0/16", "172.21.0.0/16"]
    log = open(os.path.join(host.root, "daemon.log")).read()
    assert "172.20.0.0/16 skipped" in log


def test_inspect_has_dockers_keys_and_values(host):
    host.nsnet("network", "create", "--subnet", "172.30.0.0/16", "--gateway", "172.30.0.254",
               "--ip-range", "172.30.5.0/24", "--aux-address", "printer=172.30.0.9", "--label", "team=web",
               "-o", "com.docker.network.driver.mtu=1400", "web")
    host.nsnet("run", "-d", "--name", "box", "--network", "web", "--network-alias", "www", "--", "sleep", "300")
    net = host.json("network", "inspect", "web")[0]
    assert len(net["Id"]) == 64 and all(c in "0123456789abcdef" for c in net["Id"])
    for key in ("Name", "Id", "Created", "Scope", "Driver", "EnableIPv6", "IPAM", "Internal", "Attachable",
                "Ingress", "ConfigFrom", "ConfigOnly", "Containers", "Options", "Labels"):
        assert key in net
    assert net["IPAM"]["Config"] == [{"Subnet": "172.30.0.0/16", "Gateway": "172.30.0.254",
                                      "IPRange": "172.30.5.0/24", "AuxiliaryAddresses": {"printer": "172.30.0.9"}}]
    assert net["Labels"] == {"team": "web"}
    (member,) = net["Containers"].values()
    assert member["Name"] == "box"
    assert member["IPv4Address"] == "172.30.5.0/16" or member["IPv4Address"].startswith("172.30.5.")
    assert member["IPv4Address"].endswith("/16")
    ip = member["IPv4Address"].split("/")[0]
    assert member["MacAddress"] == "02:42:" + ":".join(f"{int(o):02x}" for o in ip.split("."))
    # The prefix of an ID works like the name; MTU is applied on the bridge and both veth ends.
    assert host.json("network", "inspect", net["Id"][:5])[0]["Name"] == "web"
    assert "mtu 1400" in host.exec("box", "ip link show eth0").stdout
    bridge = net["Options"]["com.docker.network.bridge.name"]
    assert "mtu 1400" in host.sh(f"ip link show {bridge}").stdout
    # ls: table, -q, json, filters
    assert host.nsnet("network", "ls", "-q").stdout.split()[-1] == net["Id"][:12]
    assert [n["Name"] for n in host.json("network", "ls", "--format", "json", "--filter", "label=team=web")] == ["web"]
    assert [n["Name"] for n in host.json("network", "ls", "--format", "json", "--filter", "driver=null")] == ["none"]


def test_static_ip_and_ip_range(host):
    host.nsnet("network", "create", "--subnet", "10.77.0.0/24", "--ip-range", "10.77.0.128/25", "lab")
    host.nsnet("run", "-d", "--name", "fixed", "--network", "lab", "--ip", "10.77.0.10", "--", "sleep", "300")
    host.nsnet("run", "-d", "--name", "dyn", "--network", "lab", "--", "sleep", "300")
    nets = lambda n: host.json("inspect", n)[0]["NetworkSettings"]["Networks"]["lab"]["IPAddress"]
    assert nets("fixed") == "10.77.0.10"
    assert nets("dyn") == "10.77.0.128"
    assert host.exec("dyn", "ping -c1 -W1 10.77.0.10", check=False).returncode == 0


def test_a_removed_networks_pool_is_given_out_again(host):
    """As Docker: remove a network and the next one gets its subnet back. Its sandboxes' flows tracked
    by the host (here pings to the gateway and between them) must not linger as lockout evidence."""
    host.nsnet("network", "create", "first")
    subnet = subnet_of(host, "first")
    for n in ("a", "b"):
        host.nsnet("run", "-d", "--name", n, "--network", "first", "--", "sleep", "300")
    net = host.json("inspect", "b")[0]["NetworkSettings"]["Networks"]["first"]
    host.exec("a", f"ping -c1 -W1 {net['Gateway']} && ping -c1 -W1 {net['IPAddress']}")
    tracked = host.sh("cat /proc/net/nf_conntrack").stdout
    assert f"dst={net['Gateway']}" in tracked  # the flows are there to be forgotten
    host.nsnet("rm", "-f", "a", "b")
    host.nsnet("network", "rm", "first")
    prefix = subnet.split("/")[0].rsplit(".", 2)[0] + "."
    assert f"={prefix}" not in host.sh("cat /proc/net/nf_conntrack").stdout
    host.nsnet("network", "create", "second")
    assert subnet_of(host, "second") == subnet


def test_a_bridge_deleted_behind_the_daemons_back_is_rebuilt_with_its_sandboxes_on_it(host):
    """While the daemon runs, the next attach rebuilds it; while none runs, the next start does. Either
    way the sandboxes that were on it are plugged back, not only the newcomer."""
    host.nsnet("network", "create", "--subnet", "10.78.0.0/24", "-o", "com.docker.network.bridge.name=nsbrgone", "gone")
    for name in ("a", "b"):
        host.nsnet("run", "-d", "--name", name, "--network", "gone", "--", "sleep", "300")
    ip = {n: host.json("inspect", n)[0]["NetworkSettings"]["Networks"]["gone"]["IPAddress"] for n in ("a", "b")}

    def ping(src: str, dst: str) -> bool:
        return host.exec(src, f"ping -c1 -W1 {dst}", check=False).returncode == 0

    host.sh("ip link del nsbrgone")
    host.nsnet("run", "-d", "--name", "c", "--network", "gone", "--", "sleep", "300")
    assert "10.78.0.1/24" in host.sh("ip -o addr show dev nsbrgone").stdout
    assert ping("c", "10.78.0.1") and ping("c", ip["a"]) and ping("a", ip["b"])

    os.kill(host.daemon_pid(), signal.SIGKILL)
    host.sh("ip link del nsbrgone")
    host.json("ps", "--format", "json")                    # restarts the daemon: no attach after this
    assert "nsbrgone was missing; rebuilt" in open(os.path.join(host.root, "daemon.log")).read()
    assert ping("a", ip["b"]) and ping("b", "10.78.0.1") and ping("c", ip["a"])
    assert len(host.sh("ip -o link show master nsbrgone").stdout.splitlines()) == 3


def test_rm_refuses_a_network_in_use_and_prune_keeps_it(host):
    host.nsnet("network", "create", "busy")
    host.nsnet("network", "create", "idle")
    host.nsnet("run", "-d", "--name", "worker", "--network", "busy", "--", "sleep", "300")
    p = host.nsnet("network", "rm", "busy", check=False)
    assert p.returncode != 0 and "worker" in p.stderr and len(p.stderr.strip().splitlines()) == 1
    out = host.nsnet("network", "prune", "-f").stdout
    assert "idle" in out and "busy" not in out
    assert [n["Name"] for n in host.json("network", "ls", "--format", "json")] == ["bridge", "host", "none", "busy"]
    host.nsnet("rm", "-f", "worker")
    host.nsnet("network", "rm", "busy")
    assert not [l for l in host.state()["links"] if l.startswith(("nsbr", "nsv"))]


BAD = [
    ("network", "create", "--subnet", "172.30.0.1/16", "x"),               # not a network address
    ("network", "create", "--subnet", "300.1.0.0/16", "x"),                # invalid CIDR
    ("network", "create", "--subnet", "172.30.0.0/16", "--gateway", "10.0.0.1", "x"),   # gateway outside
    ("network", "create", "--subnet", "172.30.0.0/16", "--subnet", "172.30.8.0/24", "x"),  # overlapping
    ("network", "create", "--subnet", "172.31.0.0/16", "dup"),             # duplicate name (exists)
    ("network", "create", "--subnet", "172.29.0.0/16", "taken"),           # overlaps network `other`
    ("network", "create", "-o", "com.docker.network.bridge.name=averyveryverylongname", "x"),  # > 15 chars
    ("network", "create", "-d", "warp", "x"),                               # unknown driver
    ("network", "create", "-o", "color=blue", "x"),                         # unknown option
    ("network", "create", "-o", "com.docker.network.driver.mtu=12", "x"),   # bad MTU
    ("run", "-d", "--network", "dup", "--ip", "172.31.0.2", "--", "sleep", "1"),  # address in use
    ("run", "-d", "--network", "dup", "--ip", "10.9.9.9", "--", "sleep", "1"),    # --ip outside subnet
    ("run", "-d", "--network", "dup", "-p", "8080:80", "--", "sleep", "1"),       # port already published
    ("run", "-d", "--network", "dup", "-p", "9999:80", "--", "sleep", "1"),       # port taken on the host
    ("run", "-d", "--network", "nowhere", "--", "sleep", "1"),                    # no such network
    ("run", "-d", "--name", "holder", "--", "sleep", "1"),                        # duplicate sandbox name
    ("network", "rm", "dup"),                                                     # in use
    ("network", "connect", "dup", "ghost"),                                       # no such sandbox
    ("network", "rm", "bridge"),                                                  # pre-defined
]


def test_bad_input_is_refused_in_one_line_and_changes_nothing(host):
    host.nsnet("network", "create", "--subnet", "172.31.0.0/16", "dup")
    host.nsnet("network", "create", "--subnet", "172.29.0.0/16", "other")
    host.nsnet("run", "-d", "--name", "holder", "--network", "dup", "--ip", "172.31.0.2", "-p", "8080:80",
               "--", "sleep", "300")
    # Something else on the host holds TCP port 9999.
    squatter = host.sh(f"sh -c '{sys.executable} -c \"import socket,time; s=socket.socket(); "
                       f"s.bind((\\\"0.0.0.0\\\", 9999)); s.listen(); time.sleep(120)\" >/dev/null 2>&1 & echo $!'").stdout
    try:
        assert wait_for(lambda: ":9999" in host.sh("ss -ltn").stdout)
        before = host.state()
        for args in BAD:
            p = host.nsnet(*args, check=False)
            assert p.returncode != 0, (args, p.stdout)
            err = p.stderr.strip()
            assert err.startswith("Error:") and len(err.splitlines()) == 1, (args, err)
            assert not changes(before, host.state()), args
    finally:
        os.kill(int(squatter), signal.SIGKILL)


def test_kill_9_of_the_daemon_then_restart_loses_and_leaks_nothing(host):
    host.nsnet("network", "create", "red")
    host.nsnet("run", "-d", "--name", "keep", "--network", "red", "-p", "8088:80", "--", "sleep", "300")
    host.nsnet("run", "-d", "--name", "dies", "--network", "red", "--", "sleep", "300")
    keep_ip = host.json("inspect", "keep")[0]["NetworkSettings"]["Networks"]["red"]["IPAddress"]
    dies_pid = host.json("inspect", "dies")[0]["State"]["Pid"]
    os.kill(host.daemon_pid(), signal.SIGKILL)
    os.kill(dies_pid, signal.SIGKILL)                     # a sandbox dies while no daemon watches
    host.sh("ip link add nsvdeadbeef0001 type veth peer name strayp")  # a leftover with nsnet's mark
    host.sh("ip link del nsnet0")                          # a kernel object lost behind our back

    sandboxes = {s["Name"].lstrip("/"): s for s in host.json("ps", "-a", "--format", "json")}   # restarts the daemon
    assert sandboxes["keep"]["State"]["Running"]
    assert not sandboxes["dies"]["State"]["Running"]
    links = host.state()["links"]
    assert "nsvdeadbeef0001" not in links and "nsnet0" in links
    veths = [l for l in links if l.startswith("nsv")]
    assert len(veths) == 1                                 # keep's, and nothing else
    assert host.exec("keep", f"ping -c1 -W1 {keep_ip.rsplit('.', 1)[0]}.1", check=False).returncode == 0
    assert "dport 8088" in host.sh("nft list table inet nsnet").stdout
    log = open(os.path.join(host.root, "daemon.log")).read()
    assert "reconcile: sandbox dies" in log and "nsvdeadbeef0001" in log
    # Work goes on: the freed address is handed out again, and the network can be removed at the end.
    host.nsnet("rm", "dies")
    host.nsnet("run", "-d", "--name", "new", "--network", "red", "--", "sleep", "300")
    host.nsnet("rm", "-f", "keep", "new")
    host.nsnet("network", "rm", "red")


def test_detached_logs_stop_exit_code_and_rm(host):
    host.nsnet("network", "create", "red")
    host.nsnet("run", "-d", "--name", "talker", "--network", "red", "--", "sh", "-c",
               "echo hello from $(hostname); exec sleep 300")
    assert wait_for(lambda: "hello from" in host.nsnet("logs", "talker").stdout)
    host.nsnet("run", "-d", "--name", "quitter", "--network", "red", "--", "sh", "-c", "exit 3")
    assert wait_for(lambda: host.json("inspect", "quitter")[0]["State"]["Status"] == "exited")
    assert host.json("inspect", "quitter")[0]["State"]["ExitCode"] == 3
    host.nsnet("stop", "-t", "1", "talker")
    state = host.json("inspect", "talker")[0]["State"]
    assert state["Status"] == "exited" and not state["Running"]
    assert host.nsnet("ps", "-q").stdout.strip() == ""
    assert len(host.nsnet("ps", "-aq").stdout.split()) == 2
    assert not [l for l in host.state()["links"] if l.startswith("nsv")]     # stopped: no endpoints
    p = host.nsnet("rm", "talker", "quitter")
    assert p.stdout.split() == ["talker", "quitter"]
    assert host.json("ps", "-a", "--format", "json") == []


def test_a_full_bridge_is_refused_clearly_and_changes_nothing(host):
    host.nsnet("network", "create", "--subnet", "10.88.0.0/16", "big")
    bridge = host.json("network", "inspect", "big")[0]["Options"]["com.docker.network.bridge.name"]
    # Fill the bridge to the kernel's limit (1,023 ports) by hand, fast, leaving nsnet no room.
    batch = os.path.join(host.root, "fill.batch")
    with open(batch, "w") as f:
        for i in range(1023):
            f.write(f"link add tf{i}a type veth peer name tf{i}b\nlink set tf{i}a master {bridge}\n")
    host.sh(f"ip -batch {batch}", timeout=120)
    before = host.state()
    p = host.nsnet("run", "-d", "--network", "big", "--", "sleep", "300", check=False)
    assert p.returncode != 0
    assert "is full" in p.stderr, open(os.path.join(host.root, "daemon.log")).read()[-3000:]
    assert "is full" in p.stderr and "1023 ports" in p.stderr and len(p.stderr.strip().splitlines()) == 1
    assert not changes(before, host.state())
