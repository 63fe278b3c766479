"""Encrypted overlay networks (`--opt encrypted`): VXLAN between the hosts only inside WireGuard (here
wireguard-go: this kernel has no WireGuard module). Hosts are namespaces on one switch (swarmnet.py); a
capture on a host's switch port counts the datagrams to a UDP port and those carrying a known ping payload.
The plain overlay beside it is the positive control: the same capture sees the payload in clear there."""
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import pytest

from conftest import changes, wait_for
from swarmnet import NET, form, needs_etcd, swarm_hosts, switch_port
from test_overlay import etcd_text

HERE = os.path.dirname(__file__)
CAPTURE = os.path.join(HERE, "capture.py")
NETCHECK = os.path.join(HERE, "netcheck.py")
TCPSTREAM = os.path.join(HERE, "tcpstream.py")
MARKER = "6e736e65742d656e"   # "nsnet-en", the ping payload looked for on the underlay
VNI_KEY = "com.docker.network.driver.overlay.vxlanid_list"
WG_PORT = 51820

pytestmark = [needs_etcd, pytest.mark.skipif(not (shutil.which("wg") and shutil.which("wireguard-go")),
                                             reason="wireguard-go and wg are not installed (scripts/setup.sh)")]


def tunnel_of(host) -> str:
    return "nswg" + host.json("info")["Swarm"]["NodeID"][:8]


@pytest.fixture
def two(tag):
    with swarm_hosts(tag) as (etcd, hosts):
        try:
            form(hosts)
            etcd.tag = tag
            yield (etcd, *hosts)
        finally:
            end_tunnels(hosts)


def end_tunnels(hosts) -> None:
    """wireguard-go outlives its namespace (it ends with its link): the hosts' tunnels go before them."""
    for h in hosts:
        for name in re.findall(r"^\d+: (nswg\w+):", h.sh("ip -o link show", check=False).stdout, re.M):
            h.sh(f"ip link del {name}", check=False)


def net_of(host, sandbox, net):
    return host.json("inspect", sandbox)[0]["NetworkSettings"]["Networks"][net]


def captured(etcd, port_index: int, udp_port: int, during, seconds: float = 3.0) -> dict:
    """What host `port_index` sent and received on the switch while `during()` ran: UDP datagrams to
    `udp_port`, and how many carried MARKER."""
    cap = subprocess.Popen(["ip", "netns", "exec", etcd.ns, sys.executable, CAPTURE,
                            switch_port(etcd.tag, port_index), str(udp_port), str(seconds), MARKER],
                           stdout=subprocess.PIPE, text=True)
    try:
        assert cap.stdout.readline().strip() == "ready"
        during()
        return json.loads(cap.stdout.readline())
    finally:
        cap.kill()
        cap.wait()


def tunnel_buffers(host) -> list[tuple[int, int]]:
    """(receive, send) buffer bytes of the UDP sockets on the tunnel's port in the host's namespace."""
    out = host.sh(f"ss -uamnH sport = :{WG_PORT}").stdout
    return [(int(r), int(t)) for r, t in re.findall(r"rb(\d+),t\d+,tb(\d+)", out)]


def assert_wide(host) -> None:
    """Upstream wireguard-go's 7 MiB socket buffers (Debian's keeps the 208 KiB default, and its receiver
    dropped a tenth of a TCP stream's datagrams)."""
    def wide():
        buffers = tunnel_buffers(host)
        return buffers and all(r >= 7 << 20 and t >= 7 << 20 for r, t in buffers)
    assert wait_for(wide, timeout=3), tunnel_buffers(host)


def ping(host, sandbox, ip, ok=True):
    p = host.exec(sandbox, f"ping -c3 -i0.2 -W1 -p {MARKER} {ip}", check=False)
    assert (p.returncode == 0) == ok, p.stdout



def sealed_pair(a, b) -> None:
    """An encrypted overlay `sec` made on A, with sandbox s1 on A and s2 on B."""
    a.nsnet("network", "create", "-d", "overlay", "--attachable", "--opt", "encrypted", "sec")
    a.nsnet("run", "-d", "--name", "s1", "--network", "sec", "--", "sleep", "300")
    assert wait_for(lambda: "sec" in b.nsnet("network", "ls").stdout, timeout=2)
    b.nsnet("run", "-d", "--name", "s2", "--network", "sec", "--", "sleep", "300")

def test_an_encrypted_overlay_never_shows_a_payload_on_the_wire(two):
    etcd, a, b = two
    a.nsnet("network", "create", "-d", "overlay", "--attachable", "plain")
    a.nsnet("network", "create", "-d", "overlay", "--attachable", "--opt", "encrypted", "sec")
    assert wait_for(lambda: "sec" in b.nsnet("network", "ls").stdout, timeout=2)
    doc = b.json("network", "inspect", "sec")[0]
    assert doc["Options"]["encrypted"] == "", doc["Options"]
    vni = doc["Options"][VNI_KEY]

    b.nsnet("run", "-d", "--name", "s2", "--network", "sec", "--network-alias", "web", "--",
            sys.executable, NETCHECK, "serve", "tcp", "8080")
    a.nsnet("run", "-d", "--name", "s1", "--network", "sec", "--", "sleep", "300")
    b.nsnet("run", "-d", "--name", "p2", "--network", "plain", "--", "sleep", "300")
    a.nsnet("run", "-d", "--name", "p1", "--network", "plain", "--", "sleep", "300")
    ip1, ip2 = net_of(a, "s1", "sec")["IPAddress"], net_of(b, "s2", "sec")["IPAddress"]
    plain2 = net_of(b, "p2", "plain")["IPAddress"]

    # the positive control: on the plain overlay the payload crosses the underlay in clear
    assert wait_for(lambda: a.exec("p1", f"ping -c1 -W1 {plain2}", check=False).returncode == 0, timeout=5)
    seen = captured(etcd, 1, 4789, lambda: ping(a, "p1", plain2))
    assert seen["udp"] >= 6 and seen["marker"] >= 6, seen

    # the encrypted one: it answers, through WireGuard, and the payload is never on the wire
    assert wait_for(lambda: a.exec("s1", f"ping -c1 -W1 {ip2}", check=False).returncode == 0, timeout=5)
    seen = captured(etcd, 1, 4789, lambda: ping(a, "s1", ip2))
    assert seen == {"udp": 0, "marker": 0}, seen
    seen = captured(etcd, 1, WG_PORT, lambda: ping(a, "s1", ip2))
    assert seen["udp"] >= 6 and seen["marker"] == 0, seen

    # names and TCP across hosts, at the MTU that leaves room for VXLAN and WireGuard
    assert a.exec("s1", f"{sys.executable} {NETCHECK} ask tcp web 8080").stdout.strip() == f"peer={ip1}"
    assert "mtu 1390" in a.exec("s1", "ip link show eth0").stdout
    assert a.exec("s1", f"ping -c1 -W1 -M do -s {1390 - 28} {ip2}", check=False).returncode == 0
    # the VXLAN link sends from the tunnel's address, to the other node's tunnel address
    wg_b = b.sh(f"ip -4 -o addr show dev {tunnel_of(b)}").stdout.split()[3].split("/")[0]
    assert re.search(rf"dst {re.escape(wg_b)} .*self permanent", a.overlay_sh(f"bridge fdb show dev nsovx{vni}"))
    assert f"local {NET}" not in a.overlay_sh(f"ip -d link show nsovx{vni}")
    notes = " ".join(a.json("network", "inspect", "sec")[0]["Notes"])
    assert notes.count("wireguard-go") == 2, notes
    # the private key: in NSNET_ROOT, 0600, never in etcd
    key = os.path.join(a.root, "wireguard", "private.key")
    assert os.stat(key).st_mode & 0o777 == 0o600
    with open(key) as f:
        assert f.read().strip() not in etcd_text(etcd, "")


def test_a_node_whose_tunnel_is_down_sends_nothing_in_clear(two):
    """B's WireGuard link goes down while B has a default route out of the underlay: the kernel would send
    the encrypted network's VXLAN out in clear; the firewall's guard drops it. Without the guard (its chain
    deleted, the control) the same ping does leak."""
    etcd, a, b = two
    sealed_pair(a, b)
    ip1 = net_of(a, "s1", "sec")["IPAddress"]
    assert wait_for(lambda: b.exec("s2", f"ping -c1 -W1 {ip1}", check=False).returncode == 0, timeout=5)

    b.sh(f"ip route add default via {NET}.1")
    b.sh(f"ip link set {tunnel_of(b)} down")
    seen = captured(etcd, 1, 4789, lambda: ping(b, "s2", ip1, ok=False))
    assert seen == {"udp": 0, "marker": 0}, seen

    b.sh("nft delete chain inet nsnet sealed-out")     # the control: the leak the guard stops is real
    seen = captured(etcd, 1, 4789, lambda: ping(b, "s2", ip1, ok=False))
    assert seen["marker"] >= 3, seen


LISTEN = "import socket\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\ns.bind(('0.0.0.0', 7000))\n" \
         "while True:\n    print(s.recv(200).decode(errors='replace'), flush=True)\n"
FORGE = """
import socket, struct, sys
vni, mac, src, dst, word = int(sys.argv[1]), bytes.fromhex(sys.argv[2].replace(":", "")), sys.argv[3], sys.argv[4], sys.argv[5]
data = word.encode()
udp = struct.pack("!HHHH", 9999, 7000, 8 + len(data), 0) + data
ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 1, 0, 64, 17, 0, socket.inet_aton(src), socket.inet_aton(dst))
total = sum(struct.unpack("!10H", ip))
total = (total & 0xFFFF) + (total >> 16)
ip = ip[:10] + struct.pack("!H", ~((total & 0xFFFF) + (total >> 16)) & 0xFFFF) + ip[12:]
frame = mac + bytes.fromhex("02420a00aaaa") + b"\\x08\\x00" + ip + udp
vxlan = struct.pack("!II", 0x08000000, vni << 8)
socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(vxlan + frame, (sys.argv[6], 4789))
"""


def test_a_plaintext_datagram_of_an_encrypted_vni_is_dropped_on_arrival(two):
    """The guard's input side: someone on the underlay sends host A, in clear, a VXLAN datagram of the encrypted
    network's VNI addressed to A's sandbox. It never reaches it; with the guard's input chain deleted (the
    control) the same datagram does, so the kernel alone would take it."""
    etcd, a, b = two
    a.nsnet("network", "create", "-d", "overlay", "--attachable", "--opt", "encrypted", "sec")
    a.nsnet("run", "-d", "--name", "u1", "--network", "sec", "--", sys.executable, "-c", LISTEN)
    vni = int(a.json("network", "inspect", "sec")[0]["Options"][VNI_KEY])
    u1 = net_of(a, "u1", "sec")

    def forge(word):
        ip = subprocess.run(["ip", "netns", "exec", etcd.ns, sys.executable, "-c", FORGE, str(vni), u1["MacAddress"],
                             u1["IPAddress"].rsplit(".", 1)[0] + ".200", u1["IPAddress"], word, f"{NET}.2"],
                            capture_output=True, text=True)
        assert ip.returncode == 0, ip.stderr

    assert wait_for(lambda: a.json("inspect", "u1")[0]["State"]["Running"], timeout=3)
    forge("forged-one")
    time.sleep(1)
    assert "forged" not in a.nsnet("logs", "u1").stdout
    a.sh("nft delete chain inet nsnet sealed-in")            # the control
    assert wait_for(lambda: (forge("forged-two"), "forged-two" in a.nsnet("logs", "u1").stdout)[1], timeout=3)
    assert "forged-one" not in a.nsnet("logs", "u1").stdout


def test_a_removed_node_loses_its_peers_at_once(two):
    etcd, a, b = two
    sealed_pair(a, b)
    wg_a = tunnel_of(a)
    assert wait_for(lambda: len(a.sh(f"wg show {wg_a} peers").stdout.split()) == 1, timeout=5)
    os.kill(b.daemon_pid(), signal.SIGKILL)           # B's tunnel lives on (wireguard-go): only A can end it
    a.nsnet("node", "rm", "--force", "host-b")
    t = time.monotonic()
    assert wait_for(lambda: a.sh(f"wg show {wg_a} peers").stdout.split() == [], timeout=2), \
        a.sh(f"wg show {wg_a}").stdout
    assert time.monotonic() - t < 1
    vni = a.json("network", "inspect", "sec")[0]["Options"][VNI_KEY]
    fdb = a.overlay_sh(f"bridge fdb show dev nsovx{vni}")
    assert "self permanent" not in fdb and "nsovx" in a.overlay_sh("ip link"), fdb
    # A's last sandbox on an encrypted network goes: its tunnel goes (wireguard-go with it), and its record
    a.nsnet("rm", "-f", "s1")
    assert wait_for(lambda: wg_a not in a.sh("ip link").stdout, timeout=2)
    assert wait_for(lambda: subprocess.run(["pgrep", "-f", f"wireguard-go {wg_a}$"]).returncode == 1, timeout=2)
    assert "public_key" not in etcd_text(etcd, "drivers/overlay/node/")


def test_keys_rotate_under_a_running_tcp_stream(tag):
    with swarm_hosts(tag) as (etcd, hosts):
        a, b = hosts
        try:
            for h in hosts:
                with open(os.path.join(h.root, "config.toml"), "w") as f:
                    f.write("swarm-key-rotation = 2\n")
            form(hosts)
            a.nsnet("network", "create", "-d", "overlay", "--attachable", "--opt", "encrypted", "sec")
            assert wait_for(lambda: "sec" in b.nsnet("network", "ls").stdout, timeout=2)
            b.nsnet("run", "-d", "--name", "s2", "--network", "sec", "--", sys.executable, TCPSTREAM, "echo", "9000")
            a.nsnet("run", "-d", "--name", "s1", "--network", "sec", "--", "sleep", "300")
            ip2 = net_of(b, "s2", "sec")["IPAddress"]
            assert wait_for(lambda: a.exec("s1", f"ping -c1 -W1 {ip2}", check=False).returncode == 0, timeout=5)
            wg_a = tunnel_of(a)
            keys = set()
            stream = subprocess.Popen(["ip", "netns", "exec", a.ns, sys.executable, "-m", "nsnet", "--root", a.root,
                                       "exec", "s1", "--", sys.executable, TCPSTREAM, "send", ip2, "9000", "7"],
                                      stdout=subprocess.PIPE, text=True)
            while stream.poll() is None:
                keys.add(a.sh(f"wg show {wg_a} public-key").stdout.strip())
                time.sleep(0.3)
            result = json.loads(stream.stdout.read())
            assert len(keys) >= 3, keys                    # rotated at least twice during the stream
            assert result["error"] is None and result["echoed"] == result["sent"] > 100 * 1024, result
            # and B follows A's newest key
            assert wait_for(lambda: a.sh(f"wg show {wg_a} public-key").stdout.strip()
                            in b.sh(f"wg show {tunnel_of(b)} peers").stdout, timeout=2)
            print("longest stall during rotation:", result["stall"], "s")
        finally:
            end_tunnels(hosts)


def test_bad_input_changes_nothing(two, monkeypatch, tmp_path):
    etcd, a, b = two
    before = a.state()
    p = a.nsnet("network", "create", "-d", "overlay", "-o", "encrypted=maybe", "x", check=False)
    assert p.returncode != 0 and "encrypted" in p.stderr and len(p.stderr.strip().splitlines()) == 1, p.stderr
    assert changes(before, a.state()) == {}

    # a host without WireGuard: no kernel module here, and no wireguard-go on its daemon's PATH
    bin_ = tmp_path / "bin"
    bin_.mkdir()
    for d in ("/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin"):
        for name in os.listdir(d) if os.path.isdir(d) else []:
            if name != "wireguard-go" and not (bin_ / name).exists():
                (bin_ / name).symlink_to(os.path.join(d, name))
    os.kill(b.daemon_pid(), signal.SIGTERM)
    assert wait_for(lambda: b.daemon_pid() is None, timeout=5)
    monkeypatch.setenv("PATH", str(bin_))
    b.nsnet("ps")                                       # its daemon starts again, without wireguard-go
    assert wait_for(lambda: "Ready" in b.nsnet("node", "ls").stdout, timeout=5)
    before = b.state()
    p = b.nsnet("network", "create", "-d", "overlay", "--opt", "encrypted", "y", check=False)
    assert p.returncode != 0 and "wireguard-go" in p.stderr and len(p.stderr.strip().splitlines()) == 1, p.stderr
    assert changes(before, b.state()) == {}


def test_a_killed_daemon_leaves_its_tunnel_up_and_a_restart_keeps_its_key(two):
    etcd, a, b = two
    sealed_pair(a, b)
    ip2 = net_of(b, "s2", "sec")["IPAddress"]
    assert wait_for(lambda: a.exec("s1", f"ping -c1 -W1 {ip2}", check=False).returncode == 0, timeout=5)
    wg_b = tunnel_of(b)
    key = b.sh(f"wg show {wg_b} public-key").stdout.strip()
    assert_wide(b)

    os.kill(b.daemon_pid(), signal.SIGKILL)
    ping(a, "s1", ip2)                                  # the data plane stays, encrypted
    b.nsnet("ps")                                       # B's daemon again: it adopts its tunnel and key
    assert wait_for(lambda: "Down" not in a.nsnet("node", "ls").stdout, timeout=5)
    seen = captured(etcd, 1, 4789, lambda: ping(a, "s1", ip2))   # and it never stopped
    assert seen == {"udp": 0, "marker": 0}, seen
    assert b.sh(f"wg show {wg_b} public-key").stdout.strip() == key
    assert len(b.sh(f"wg show {wg_b} peers").stdout.split()) == 1
    assert_wide(b)                                      # the restart's `wg set` opened new sockets
