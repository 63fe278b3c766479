"""The CNI plugin against the spec, called as a runtime calls it: CNI_* in the environment, the configuration
on stdin, in the host's namespace (here a test's), on container namespaces the tests make. Real packets;
chained with Debian's reference plugins (containernetworking-plugins)."""
import json
import os
import signal
import subprocess
import sys

import pytest

from nsnet.cniplugin import launcher
from nsnet.kernel import procs

from conftest import changes, sh, wait_for

NETCHECK = os.path.join(os.path.dirname(__file__), "netcheck.py")
REFERENCE = "/usr/lib/cni"
PLUGIN_PYTHON = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else sys.executable   # as setup.sh
SRC = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", "src"))   # this tree's nsnet, as setup.sh installs it
VERSIONS = ["0.4.0", "1.0.0", "1.1.0"]


@pytest.fixture
def cni(host, tmp_path):
    return Runtime(host, str(tmp_path))


class Runtime:
    """A CNI runtime's side of the protocol: a plugin folder (nsnet's launcher, as setup.sh installs it, and
    the reference plugins), and one plugin process per call."""

    def __init__(self, host, folder: str):
        self.host = host
        self.bin = os.path.join(folder, "bin")
        os.makedirs(self.bin)
        path = os.path.join(self.bin, "nsnet")
        with open(path, "w") as f:
            f.write(launcher(PLUGIN_PYTHON, SRC, sys.executable))
        os.chmod(path, 0o755)
        if os.path.isdir(REFERENCE):
            for name in os.listdir(REFERENCE):
                os.symlink(os.path.join(REFERENCE, name), os.path.join(self.bin, name))

    def conf(self, version: str = "1.1.0", name: str = "cninet", **extra) -> dict:
        return {"cniVersion": version, "name": name, "type": "nsnet", "root": self.host.root, **extra}

    def call(self, command: str, conf: dict, cid: str | None = "c1", netns: str | None = None,
             ifname: str | None = "eth0", args: str | None = None):
        """(exit code, the JSON printed or None)."""
        env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "CNI_COMMAND": command, "CNI_PATH": self.bin,
               # hermetic: a daemon the plugin starts must not ask the machine's own Docker anything
               "DOCKER_HOST": f"unix://{self.host.root}/no-docker.sock",
               "DOCKER_HOST": f"unix://{self.host.root}/no-docker.sock"}  # the daemon it starts asks no Docker
        for key, value in (("CNI_CONTAINERID", cid), ("CNI_NETNS", netns), ("CNI_IFNAME", ifname),
                           ("CNI_ARGS", args)):
            if value is not None:
                env[key] = value
        p = subprocess.run(["ip", "netns", "exec", self.host.ns, os.path.join(self.bin, conf.get("type", "nsnet"))],
                           input=json.dumps(conf), capture_output=True, text=True, env=env, timeout=60)
        return p.returncode, json.loads(p.stdout) if p.stdout.strip() else None

    def ok(self, command: str, conf: dict, **kw):
        rc, out = self.call(command, conf, **kw)
        assert rc == 0, f"{out}\n{self.daemon_log()}"
        return out

    def daemon_log(self) -> str:
        try:
            with open(os.path.join(self.host.root, "daemon.log")) as f:
                return "the daemon's log ends:\n" + "".join(f.readlines()[-15:])
        except OSError:
            return "(no daemon log)"

    def add(self, netns: str, cid: str, conf: dict | None = None, **kw) -> dict:
        return self.ok("ADD", conf or self.conf(), cid=cid, netns=f"/run/netns/{netns}", **kw)


def address(result: dict) -> str:
    return result["ips"][0]["address"].split("/")[0]


def pings(ns: str, ip: str) -> bool:
    return sh(f"ip netns exec {ns} ping -c1 -W1 {ip}", check=False).returncode == 0


def assert_error(rc: int, out: dict, code: int, words: str, version: str = "1.1.0") -> None:
    assert rc != 0, out
    assert set(out) == {"cniVersion", "code", "msg", "details"}, out
    assert (out["code"], out["cniVersion"]) == (code, version) and words in out["msg"], out


def test_add_check_del_two_containers_that_ping_each_other(host, machines, cni):
    c1, c2 = machines.add("c1"), machines.add("c2")
    r1, r2 = cni.add(c1, "c1"), cni.add(c2, "c2")
    # The spec's shape: the interface inside carries the runtime's namespace; its IP points at it.
    inside = r1["interfaces"][r1["ips"][0]["interface"]]
    assert (inside["name"], inside["sandbox"]) == ("eth0", f"/run/netns/{c1}") and r1["cniVersion"] == "1.1.0"
    assert r1["routes"] == [{"dst": "0.0.0.0/0", "gw": r1["ips"][0]["gateway"]}]
    assert [i.get("sandbox", "") for i in r1["interfaces"]] == ["", "", f"/run/netns/{c1}"]
    assert f"inet {r1['ips'][0]['address']}" in sh(f"ip -n {c1} -o addr show eth0").stdout
    assert pings(c1, address(r2)) and pings(c2, r1["ips"][0]["gateway"])

    # nsnet's own views see them: ps (the container ID as the name), inspect, the network.
    ps = {s["Name"]: s for s in host.json("ps", "--format", "json")}
    assert ps["/c1"]["Cni"] == {"ContainerID": "c1", "IfName": "eth0", "Netns": f"/run/netns/{c1}", "Network": "cninet"}
    assert ps["/c2"]["NetworkSettings"]["Networks"]["cninet"]["IPAddress"] == address(r2)
    assert host.json("network", "inspect", "cninet")[0]["Labels"] == {"nsnet.cni": "true"}
    doctor = host.nsnet("doctor", "--client", address(r2), check=False).stdout   # the attachments as doctor sees them
    assert "of nsnet network 'cninet'" in doctor and f"reachable: yes: {address(r2)}" in doctor, doctor
    assert f"CNI container c2 (netns /run/netns/{c2}" in doctor, doctor    # which runtime container it is

    assert cni.ok("CHECK", dict(cni.conf(), prevResult=r1), netns=f"/run/netns/{c1}") is None
    assert cni.ok("STATUS", cni.conf(), cid=None, ifname=None) is None

    before_veths = host.sh("ip -o link show type veth").stdout.count("\n")
    for _ in range(2):   # DEL is idempotent
        assert cni.ok("DEL", dict(cni.conf(), prevResult=r1), netns=f"/run/netns/{c1}") is None
    assert sh(f"ip -n {c1} -o link show eth0", check=False).returncode != 0
    assert host.sh("ip -o link show type veth").stdout.count("\n") == before_veths - 1
    assert "/c1" not in {s["Name"] for s in host.json("ps", "-a", "--format", "json")}
    assert not pings(c2, address(r1))
    rc, out = cni.call("CHECK", cni.conf(), netns=f"/run/netns/{c1}")
    assert_error(rc, out, 3, "has no eth0")
    # Its address is free again: the next container gets it.
    c3 = machines.add("c3")
    assert address(cni.add(c3, "c3")) == address(r1)


def test_del_after_the_namespace_is_gone_frees_everything(host, machines, cni):
    c1 = machines.add("c1")
    r1 = cni.add(c1, "c1")
    sh(f"ip netns del {c1}")
    machines.names.remove(c1)
    for _ in range(2):
        assert cni.ok("DEL", cni.conf(), netns=f"/run/netns/{c1}") is None
    assert cni.ok("DEL", cni.conf(), netns=None) is None   # no CNI_NETNS at all: still fine
    assert host.json("ps", "-a", "--format", "json") == []
    assert host.sh("ip -o link show type veth").stdout == ""
    c2 = machines.add("c2")
    assert address(cni.add(c2, "c2")) == address(r1)


@pytest.mark.parametrize("version", VERSIONS)
def test_version_negotiation(host, machines, cni, version):
    c1 = machines.add("c1")
    rc, out = cni.call("VERSION", {"cniVersion": version}, cid=None, ifname=None)
    assert rc == 0 and out == {"cniVersion": version, "supportedVersions": VERSIONS}
    conf = cni.conf(version)
    result = cni.add(c1, "c1", conf)
    assert result["cniVersion"] == version
    assert [ip.get("version") for ip in result["ips"]] == (["4"] if version == "0.4.0" else [None])
    assert cni.ok("CHECK", dict(conf, prevResult=result), netns=f"/run/netns/{c1}") is None
    for command in ("STATUS", "GC"):
        rc, out = cni.call(command, conf, cid=None, ifname=None)
        if version == "1.1.0":
            assert rc == 0
        else:
            assert_error(rc, out, 1, f"does not allow {command}", version)
    assert cni.ok("DEL", dict(conf, prevResult=result), netns=f"/run/netns/{c1}") is None
    rc, out = cni.call("ADD", cni.conf("0.3.1"), netns=f"/run/netns/{c1}")
    assert_error(rc, out, 1, "incompatible CNI versions")


def test_refusals_have_the_specs_shape_and_change_nothing(host, machines, cni):
    c1, c2, lan = machines.add("c1"), machines.add("c2"), machines.add("lan")
    machines.wire(host.ns, "10.77.0.1/24", lan, "10.77.0.2/24")   # the host is on 10.77.0.0/24
    r1 = cni.add(c1, "c1", cni.conf(subnet="10.88.0.0/16"))
    before = host.state()
    path = f"/run/netns/{c2}"
    cases = [
        # (command, conf, variables, code, words)
        ("ADD", cni.conf(name="lan", subnet="10.77.0.0/16"), {}, 7, "10.77.0.0/16"),          # collides
        ("ADD", cni.conf(subnet="10.99.0.0/16"), {}, 7, "exists with subnet 10.88.0.0/16"),
        ("ADD", cni.conf(name="other", mtu="big"), {}, 7, "mtu"),
        ("ADD", cni.conf(name="other", ipMasq="yes"), {}, 7, "ipMasq"),
        ("ADD", cni.conf(runtimeConfig={"mac": "zz"}), {}, 7, "invalid mac"),
        ("ADD", cni.conf(runtimeConfig={"ips": ["10.1.0.9/24"]}), {}, 100, "not in any subnet"),
        ("ADD", cni.conf(runtimeConfig={"ips": [r1["ips"][0]["address"]]}), {}, 100, "in use"),
        ("ADD", cni.conf(runtimeConfig={"portMappings": [{"hostPort": 80}]}), {}, 7, "containerPort"),
        ("ADD", cni.conf(), {"netns": "/run/netns/nsnt-none"}, 3, "does not exist"),
        ("ADD", cni.conf(), {"netns": "/proc/self/ns/net"}, 4, "own network namespace"),
        ("ADD", cni.conf(), {"ifname": "a/b"}, 4, "CNI_IFNAME"),
        ("ADD", cni.conf(), {"cid": "c1", "netns": f"/run/netns/{c1}"}, 102, "already has eth0"),
        ("ADD", cni.conf(), {"netns": f"/run/netns/{c1}", "cid": "c9"}, 102, "already exists in"),
        ("ADD", cni.conf(), {"args": "IP"}, 4, "CNI_ARGS"),
        ("CHECK", cni.conf(), {"cid": "c9"}, 3, "has no eth0"),
        ("GC", dict(cni.conf(), **{"cni.dev/valid-attachments": "all"}), {}, 7, "valid-attachments"),
    ]
    for command, conf, kw, code, words in cases:
        kw = {"netns": path, "cid": "c2", **kw}
        rc, out = cni.call(command, conf, **kw)
        assert_error(rc, out, code, words)
    assert changes(before, host.state()) == {}
    # A CHECK finds what broke inside.
    sh(f"ip -n {c1} addr flush dev eth0")
    rc, out = cni.call("CHECK", cni.conf(), netns=f"/run/netns/{c1}")
    assert_error(rc, out, 101, "lacks " + r1["ips"][0]["address"])


def test_static_ip_mac_and_options(host, machines, cni):
    c1 = machines.add("c1")
    conf = cni.conf(subnet="10.66.0.0/24", mtu=1400, ipMasq=False,
                    runtimeConfig={"ips": ["10.66.0.50/24"], "mac": "02:00:00:aa:bb:cc"})
    result = cni.add(c1, "c1", conf)
    assert result["ips"][0]["address"] == "10.66.0.50/24"
    link = sh(f"ip -n {c1} -o link show eth0").stdout
    assert "link/ether 02:00:00:aa:bb:cc" in link and "mtu 1400" in link
    assert result["interfaces"][2]["mtu"] == 1400
    opts = host.json("network", "inspect", "cninet")[0]["Options"]
    assert opts["com.docker.network.bridge.enable_ip_masquerade"] == "false"
    # CNI_ARGS IP= is the older convention for the same.
    c2 = machines.add("c2")
    assert address(cni.add(c2, "c2", args="IgnoreUnknown=1;IP=10.66.0.60")) == "10.66.0.60"


def test_the_resolver_answers_the_networks_names_when_asked_for(host, machines, cni):
    c1, c2 = machines.add("c1"), machines.add("c2")
    conf = cni.conf(resolver=True)
    r1, r2 = cni.add(c1, "c1", conf), cni.add(c2, "web", conf)
    assert r1["dns"] == {"nameservers": ["127.0.0.11"]}
    dig = f"ip netns exec {c1} dig +short +time=2 +tries=1 @127.0.0.11"
    assert wait_for(lambda: sh(f"{dig} web", check=False).stdout.strip() == address(r2))
    assert sh(f"{dig} c1.cninet", check=False).stdout.strip() == address(r1)
    cni.ok("DEL", conf, cid="web", netns=f"/run/netns/{c2}")
    assert sh(f"{dig} web", check=False).stdout.strip() == ""
    assert "dns" not in cni.add(c2, "plain")   # without "resolver": the runtime's own resolv.conf


def test_published_port_answers_and_goes_with_del(host, machines, cni):
    pc, c1 = machines.add("pc"), machines.add("c1")
    machines.wire(host.ns, "203.0.113.1/24", pc, "203.0.113.2/24")
    conf = cni.conf(runtimeConfig={"portMappings": [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}]})
    cni.add(c1, "c1", conf)
    machines.spawn(c1, f"{sys.executable} {NETCHECK} serve tcp 80")
    ask = f"{sys.executable} {NETCHECK} ask tcp 203.0.113.1 8080"
    assert wait_for(lambda: sh(f"ip netns exec {pc} {ask}", check=False).stdout.strip() == "peer=203.0.113.2")
    ports = host.json("inspect", "c1")[0]["NetworkSettings"]["Ports"]
    assert ports == {"80/tcp": [{"HostIp": "0.0.0.0", "HostPort": "8080"}]}
    cni.ok("DEL", conf, netns=f"/run/netns/{c1}")
    assert sh(f"ip netns exec {pc} {ask}", check=False).stdout.startswith("no answer")


def test_gc_removes_what_the_runtime_no_longer_lists(host, machines, cni):
    c1, c2 = machines.add("c1"), machines.add("c2")
    cni.add(c1, "c1")
    cni.add(c2, "c2")
    other = cni.conf(name="othernet")
    cni.add(c1, "c1", other, ifname="net1")
    gc = dict(cni.conf(), **{"cni.dev/valid-attachments": [{"containerID": "c2", "ifname": "eth0"}]})
    assert cni.ok("GC", gc, cid=None, ifname=None) is None
    names = {(s["Cni"]["ContainerID"], s["Cni"]["IfName"], s["Cni"]["Network"]) for s in host.json("ps", "--format", "json")}
    assert names == {("c2", "eth0", "cninet"), ("c1", "net1", "othernet")}   # GC is per network
    assert sh(f"ip -n {c1} -o link show eth0", check=False).returncode != 0
    assert sh(f"ip -n {c1} -o link show net1", check=False).returncode == 0


def test_a_restart_neither_leaks_nor_gives_an_address_twice(host, machines, cni):
    c1, c2 = machines.add("c1"), machines.add("c2")
    r1 = cni.add(c1, "c1")
    kill_daemon(host)
    r2 = cni.add(c2, "c2")   # the plugin starts a daemon again
    assert address(r2) != address(r1) and pings(c2, address(r1))
    # c1's namespace goes while no daemon runs (a reboot does that to all): the next daemon frees it.
    kill_daemon(host)
    sh(f"ip netns del {c1}")
    machines.names.remove(c1)
    assert cni.ok("STATUS", cni.conf(), cid=None, ifname=None) is None
    assert [s["Name"] for s in host.json("ps", "-a", "--format", "json")] == ["/c2"]
    c3 = machines.add("c3")
    assert address(cni.add(c3, "c3")) == address(r1)


def kill_daemon(host) -> None:
    """SIGKILL, and wait until the process has ended (gone or a zombie): an exiting one has no cmdline any
    more (daemon_pid() says None) while its listening socket still takes connections, which its exit then
    resets (the plugin's ADD got ECONNRESET under load)."""
    pid = host.daemon_pid()
    started = procs.start_time(pid)
    os.kill(pid, signal.SIGKILL)
    assert wait_for(lambda: not procs.alive(pid, started))


@pytest.mark.skipif(not os.path.exists(f"{REFERENCE}/portmap"), reason="containernetworking-plugins is missing")
def test_chained_with_the_reference_plugins(host, machines, cni):
    """nsnet first, then portmap, tuning, bandwidth and firewall, each given the previous result (a conflist's ADD);
    DEL in reverse order. nsnet after the loopback plugin passes its result on."""
    pc, c1 = machines.add("pc"), machines.add("c1")
    machines.wire(host.ns, "203.0.113.1/24", pc, "203.0.113.2/24")
    netns = f"/run/netns/{c1}"
    base = {"cniVersion": "1.0.0", "name": "cninet"}
    chain = [
        cni.conf("1.0.0"),
        dict(base, type="portmap", capabilities={"portMappings": True},
             runtimeConfig={"portMappings": [{"hostPort": 9090, "containerPort": 90, "protocol": "tcp"}]}),
        dict(base, type="tuning", sysctl={"net.ipv4.conf.eth0.rp_filter": "2"}),
        dict(base, type="bandwidth", capabilities={"bandwidth": True},
             runtimeConfig={"bandwidth": {"ingressRate": 8_000_000, "ingressBurst": 1_000_000}}),
        dict(base, type="firewall", backend="iptables"),
    ]
    prev, results = None, []
    for conf in chain:
        out = cni.ok("ADD", dict(conf, prevResult=prev) if prev else conf, netns=netns)
        assert out["ips"] == results[0]["ips"] if results else True
        results.append(out)
        prev = out
    machines.spawn(c1, f"{sys.executable} {NETCHECK} serve tcp 90")
    ask = f"{sys.executable} {NETCHECK} ask tcp 203.0.113.1 9090"
    assert wait_for(lambda: sh(f"ip netns exec {pc} {ask}", check=False).stdout.strip().startswith("peer="))
    assert sh(f"ip netns exec {c1} sysctl -n net.ipv4.conf.eth0.rp_filter").stdout.strip() == "2"
    assert address(results[0]) in host.sh("iptables -S CNI-FORWARD").stdout
    host_veth = results[0]["interfaces"][1]["name"]   # bandwidth found nsnet's host end in prevResult
    assert "tbf" in host.sh(f"tc qdisc show dev {host_veth}").stdout
    for conf in reversed(chain):
        cni.ok("DEL", dict(conf, prevResult=prev), netns=netns)
    assert host.json("ps", "-a", "--format", "json") == []
    assert sh(f"ip netns exec {pc} {ask}", check=False).stdout.startswith("no answer")

    # nsnet later in a chain: the loopback plugin's result comes first and stays.
    lo = cni.ok("ADD", dict(base, type="loopback"), netns=netns, ifname="lo")
    out = cni.ok("ADD", dict(cni.conf("1.0.0"), prevResult=lo), netns=netns)
    assert out["interfaces"][:len(lo["interfaces"])] == lo["interfaces"]
    assert out["ips"][:len(lo["ips"])] == lo["ips"]
    mine = out["ips"][len(lo["ips"]):]
    assert [out["interfaces"][ip["interface"]]["name"] for ip in mine] == ["eth0"]
