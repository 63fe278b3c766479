"""The issue's lockout, built in namespaces: a developer PC (172.22.10.119) behind a router holds an
SSH-like connection to a server (172.42.10.112) that runs nsnet. nsnet must never take the PC's range
by itself, must refuse it when asked, and `nsnet doctor` must explain it when it is forced anyway."""
import ipaddress
import json
import os
import shlex
import sys

from conftest import sh
from test_engine_state import subnet_of

from nsnet.ipam.compose import Fix, apply_fix

NETCHECK = os.path.join(os.path.dirname(__file__), "netcheck.py")
PY = sys.executable
PC, SERVER_IP = "172.22.10.119", "172.42.10.112"
SSH = f"the peer of a live SSH connection to {SERVER_IP}:22"

# The server's "sshd": answers every connection with the peer it saw, and keeps it open.
SSHD = """
import socket
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", 22)); s.listen(16); print("listening", flush=True)
held = []
while True:
    c, peer = s.accept(); c.sendall(f"peer={peer[0]}\\n".encode()); held.append(c)
"""
# The developer's session: connects, then sits there.
SESSION = f"""
import socket, time
c = socket.create_connection(("{SERVER_IP}", 22), timeout=5); print(c.recv(100).decode().strip(), flush=True)
time.sleep(3600)
"""


def office(host, machines) -> str:
    """PC -- router -- server (the host namespace), with the PC's session open. Returns the PC's namespace."""
    router, pc = machines.add("router"), machines.add("pc")
    machines.wire(host.ns, f"{SERVER_IP}/24", router, "172.42.10.1/24")
    machines.wire(pc, f"{PC}/24", router, "172.22.10.1/24")
    host.sh("ip route add default via 172.42.10.1")
    sh(f"ip -n {pc} route add default via 172.22.10.1")
    sh(f"ip netns exec {router} sysctl -qw net.ipv4.ip_forward=1")  # inside the router only
    sshd = machines.spawn(host.ns, f"{PY} -c {shlex.quote(SSHD)}")
    assert sshd.stdout.readline().strip() == "listening"
    session = machines.spawn(pc, f"{PY} -c {shlex.quote(SESSION)}")
    assert session.stdout.readline().strip() == f"peer={PC}"
    return pc


def new_connection(pc: str) -> str:
    """A fresh TCP connection from the PC to the server's port 22: what it answered, or 'no answer: …'."""
    return sh(f"ip netns exec {pc} {PY} {NETCHECK} ask tcp {SERVER_IP} 22", check=False).stdout.strip()


def test_pools_skip_the_office_range_and_the_pc_keeps_reaching_the_server(host, machines):
    pc = office(host, machines)
    for i in range(1, 5):
        host.nsnet("network", "create", f"n{i}")
    assert [subnet_of(host, f"n{i}") for i in range(1, 5)] == [f"172.{i}.0.0/16" for i in range(18, 22)]
    host.nsnet("network", "create", "n5")
    assert subnet_of(host, "n5") == "172.23.0.0/16"
    log = open(os.path.join(host.root, "daemon.log")).read()
    assert f"pool candidate 172.22.0.0/16 skipped: {SSH}" in log
    assert new_connection(pc) == f"peer={PC}"  # real packets, after the networks exist
    d = host.nsnet("doctor")
    assert "No address collisions on this host." in d.stdout


def test_the_office_range_is_refused_then_forced_and_doctor_names_the_culprit(host, machines):
    pc = office(host, machines)
    host.nsnet("network", "ls")  # the daemon runs: state() below compares like with like
    before = host.state()
    p = host.nsnet("network", "create", "--subnet", "172.22.0.0/16", "bad", check=False)
    assert p.returncode != 0
    assert f"172.22.0.0/16 contains {PC}, {SSH}; replies to it would be routed into this network's bridge." in p.stderr
    assert "pass --allow-overlap" in p.stderr
    assert host.state() == before

    host.nsnet("network", "create", "--subnet", "172.22.0.0/16", "--allow-overlap", "bad")
    assert new_connection(pc).startswith("no answer")  # the PC really is cut off
    bridge = host.json("network", "inspect", "bad")[0]["Options"]["com.docker.network.bridge.name"]

    d = host.nsnet("doctor", check=False)
    assert d.returncode == 1, d.stdout + d.stderr
    assert f"172.22.0.0/16 dev {bridge} (bridge {bridge} of nsnet network 'bad') contains {PC}, {SSH}" in d.stdout
    assert f"replies to {PC} go into {bridge} instead of out by the default route (via 172.42.10.1" in d.stdout
    assert "`nsnet network rm bad`" in d.stdout
    (finding,) = json.loads(host.nsnet("doctor", "--format", "json", check=False).stdout)["Findings"]
    assert (finding["Problem"], finding["Network"], finding["Dev"]) == ("misrouted", "bad", bridge)

    c = host.nsnet("doctor", "--client", PC, check=False)
    assert c.returncode == 1
    assert f"route:     172.22.0.0/16 dev {bridge} (longest prefix match in the main table)" in c.stdout
    assert f"kernel:    dev {bridge} src 172.22.0.1 (ip route get {PC})" in c.stdout
    assert f"interface: bridge {bridge} of nsnet network 'bad'" in c.stdout
    assert f"known as:  {SSH}" in c.stdout
    assert f"reachable: no: replies to {PC} go into bridge {bridge}" in c.stdout
    path = json.loads(host.nsnet("doctor", "--client", PC, "--format", "json", check=False).stdout)["Client"]
    assert (path["Network"], path["Dev"], path["Reachable"]) == ("bad", bridge, False)

    # Following the fix brings the PC back, and doctor agrees.
    host.nsnet("network", "rm", "bad")
    assert new_connection(pc) == f"peer={PC}"
    ok = host.nsnet("doctor", "--client", PC)
    assert "reachable: yes: replies leave" in ok.stdout and "gateway 172.42.10.1" in ok.stdout


def test_doctor_reports_a_hand_made_bridge_over_a_reserved_range(host):
    config = os.path.join(host.root, "config.toml")
    with open(config, "w") as f:  # before the first nsnet call: the daemon reads it at start
        f.write('default-address-pools = [{base = "10.200.0.0/16", size = 24}]\nreserved = ["10.99.0.0/16"]\n')
    host.sh("ip link add br-hand type bridge")  # as Docker, libvirt or a script would
    host.sh("ip addr add 10.99.1.1/24 dev br-hand")
    host.sh("ip link set br-hand up")

    d = host.nsnet("doctor", check=False)
    assert d.returncode == 1, d.stdout + d.stderr
    assert ("10.99.1.0/24 dev br-hand (bridge br-hand, made neither by nsnet nor by Docker) overlaps 10.99.0.0/16, "
            "a range reserved in nsnet's configuration") in d.stdout
    assert "`ip addr del 10.99.1.1/24 dev br-hand`" in d.stdout
    assert host.daemon_pid() is None  # doctor works without a daemon, and does not start one

    assert host.json("info")["Config"] == {
        "ConfigFile": config, "DefaultAddressPools": [{"base": "10.200.0.0/16", "size": 24}],
        "DefaultAddressPoolsSource": "config", "Reserved": ["10.99.0.0/16"], "SwarmAddressGrace": 86400.0,
        "SwarmKeyRotation": 43200.0}
    host.nsnet("network", "create", "small")
    assert subnet_of(host, "small") == "10.200.0.0/24"
    host.nsnet("network", "create", "-o", "size=26", "tiny")  # no need to burn a whole pool subnet
    assert subnet_of(host, "tiny") == "10.200.1.0/26"
    bad = host.nsnet("network", "create", "-o", "size=big", "huge", check=False)
    assert bad.returncode != 0 and "invalid size 'big'" in bad.stderr
    # With the daemon up, the finding is the same (the bridge is still nobody's).
    assert "br-hand, made neither by nsnet nor by Docker" in host.nsnet("doctor", check=False).stdout


def test_doctor_compose_prints_a_fix_that_clears_the_collision(host, machines, tmp_path):
    office(host, machines)
    for i in range(1, 5):  # with nsnet's own bridge: 172.17-172.21 are on-link routes, which Docker skips
        host.nsnet("network", "create", f"n{i}")
    compose = tmp_path / "shop" / "docker-compose.yml"
    compose.parent.mkdir()
    compose.write_text("services:\n  web:\n    image: nginx\n")

    d = host.nsnet("doctor", "--compose", str(compose), check=False)
    assert d.returncode == 1, d.stdout + d.stderr
    assert "shop_default" in d.stdout
    assert f"collides: 172.22.0.0/16 contains {PC}, {SSH}" in d.stdout
    assert "ipam:" in d.stdout and "subnet: 172.23.0.0/16" in d.stdout and '"default-address-pools"' in d.stdout

    fix = json.loads(host.nsnet("doctor", "--compose", str(compose), "--format", "json", check=False).stdout)
    fix = fix["Compose"]["Fix"]
    subnets = {k: ipaddress.ip_network(v) for k, v in fix["Subnets"].items()}
    compose.write_text(apply_fix(compose.read_text(), Fix(subnets, fix["ComposeYaml"], None, fix["DaemonJson"])))
    ok = host.nsnet("doctor", "--compose", str(compose), "--format", "json")
    assert json.loads(ok.stdout)["Compose"]["Networks"] == [
        {"Network": "default", "Name": "shop_default", "Subnet": "172.23.0.0/16", "Source": "explicit",
         "Collisions": []}]
