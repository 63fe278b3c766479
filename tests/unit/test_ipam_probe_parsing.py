"""The parts of nsnet.kernel.probe that need no kernel: /proc parsing, resolv.conf, the Docker
socket, and gather() over a fake netlink handle. The real thing is tests/integration/test_probe.py."""

import ipaddress
import json
import socket
import threading

from nsnet.kernel import probe

net = ipaddress.ip_network
HDR = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode"


def line(local, remote, state):
    return f"   0: {local} {remote} {state} 00000000:00000000 00:00000000 00000000     0        0 1 1 0 100 0 0 10 0"


def v4(addr, port):
    """/proc/net/tcp's spelling: the 32-bit word in little-endian host order."""
    return ipaddress.IPv4Address(addr).packed[::-1].hex().upper() + f":{port:04X}"


def test_hex_addresses_as_the_kernel_prints_them():
    assert probe._hex_addr("0100007F") == ipaddress.ip_address("127.0.0.1")
    assert probe._hex_addr("00000000000000000000000001000000") == ipaddress.ip_address("::1")
    assert probe._hex_addr("0000000000000000FFFF00000B0A16AC") == ipaddress.ip_address("172.22.10.11")
    assert probe._hex_addr("B80D0120000000000000000001000000") == ipaddress.ip_address("2001:db8::1")


def test_tcp_peers(tmp_path):
    (tmp_path / "tcp").write_text("\n".join([
        HDR,
        line(v4("0.0.0.0", 22), v4("0.0.0.0", 0), "0A"),                       # sshd listening
        line(v4("172.42.10.112", 22), v4("172.22.10.119", 51234), "01"),      # someone SSH'd in
        line(v4("172.42.10.112", 40000), v4("172.22.10.119", 443), "01"),     # same peer again
        line(v4("172.42.10.112", 41000), v4("10.9.8.7", 5432), "01"),         # we are the client
        line(v4("172.42.10.112", 41001), v4("10.9.8.8", 22), "01"),           # we SSH out
        line(v4("172.42.10.112", 22), v4("10.1.1.1", 5555), "06"),            # TIME_WAIT: gone
        line(v4("127.0.0.1", 22), v4("127.0.0.1", 5555), "01"),               # loopback never counts
    ]) + "\n")
    (tmp_path / "tcp6").write_text(HDR + "\n" + line(
        "0000000000000000FFFF0000700A2AAC:0016", "0000000000000000FFFF00000B0A16AC:C350", "01") + "\n")
    ev = {str(e.network): e.detail for e in probe.tcp_peers(str(tmp_path))}
    assert ev == {
        "172.22.10.119/32": "the peer of a live SSH connection to 172.42.10.112:22",
        "10.9.8.7/32": "the peer of a live TCP connection from 172.42.10.112:41000 to port 5432",
        "10.9.8.8/32": "the peer of a live SSH connection from 172.42.10.112:41001 to port 22",
        "172.22.10.11/32": "the peer of a live SSH connection to 172.42.10.112:22",  # v4-mapped on tcp6
    }


def test_conntrack(tmp_path):
    (tmp_path / "nf_conntrack").write_text(
        "ipv4     2 tcp      6 431999 ESTABLISHED src=172.22.10.119 dst=172.42.10.112 sport=51234 dport=22 "
        "src=172.42.10.112 dst=172.22.10.119 sport=22 dport=51234 [ASSURED] mark=0 zone=0 use=2\n"
        "ipv4     2 udp      17 20 src=172.42.10.112 dst=10.255.0.53 sport=4000 dport=53 "
        "src=10.255.0.53 dst=172.42.10.112 sport=53 dport=4000 mark=0 zone=0 use=2\n"
        "ipv4     2 icmp     1 29 src=10.0.0.9 dst=224.0.0.1 type=8 code=0 id=1 "
        "src=224.0.0.1 dst=10.0.0.9 type=0 code=0 id=1 mark=0 zone=0 use=2\n"
        # A removed bridge's own membership report, tracked for 10 minutes after it is gone: not a party.
        "ipv4     2 igmp     2 596 src=172.18.0.1 dst=224.0.0.22 src=224.0.0.22 dst=172.18.0.1 mark=0 zone=0 use=2\n")
    own = {ipaddress.ip_address("172.42.10.112")}
    ev = {str(e.network): e.detail for e in probe.conntrack(str(tmp_path), own=own)}
    assert ev == {
        "172.22.10.119/32": "a party of a tracked tcp ESTABLISHED connection 172.22.10.119:51234 to 172.42.10.112:22",
        "10.255.0.53/32": "a party of a tracked udp connection 172.42.10.112:4000 to 10.255.0.53:53",
        "10.0.0.9/32": "a party of a tracked icmp connection 10.0.0.9 to 224.0.0.1",
    }
    assert probe.conntrack(str(tmp_path / "missing")) == []


def test_resolvers(tmp_path):
    rc = tmp_path / "resolv.conf"
    rc.write_text("# comment\nnameserver 127.0.0.53\nnameserver 10.0.0.2\nnameserver fe80::1%eth0\n"
                  "nameserver 2001:db8::53\nsearch example\n")
    assert [str(e.network) for e in probe.resolvers(str(rc))] == ["10.0.0.2/32", "2001:db8::53/128"]
    assert probe.resolvers(str(tmp_path / "nope")) == []


def test_docker_socket(tmp_path):
    path = str(tmp_path / "docker.sock")
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(path)
    srv.listen(1)
    body = json.dumps([{"Name": "bridge", "IPAM": {"Config": [{"Subnet": "172.17.0.0/16", "Gateway": "172.17.0.1"}]}},
                       {"Name": "host", "IPAM": {"Config": []}},
                       {"Name": "app_default", "IPAM": {"Config": [{"Subnet": "172.22.0.0/16"}]}}]).encode()

    def serve():
        conn, _ = srv.accept()
        with conn:
            assert conn.recv(4096).startswith(b"GET /networks ")
            conn.sendall(b"HTTP/1.0 200 OK\r\nContent-Type: application/json\r\n\r\n" + body)

    t = threading.Thread(target=serve)
    t.start()
    try:
        ev = probe.docker_networks(path)
    finally:
        t.join(5)
        srv.close()
    assert [(str(e.network), e.detail) for e in ev] == [
        ("172.17.0.0/16", "the subnet of Docker network 'bridge'"),
        ("172.22.0.0/16", "the subnet of Docker network 'app_default'")]
    assert probe.docker_networks(str(tmp_path / "absent.sock")) == []
    assert probe.docker_networks(None) == []


def test_docker_socket_that_does_not_answer(tmp_path):
    path = str(tmp_path / "docker.sock")
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(path)
    srv.listen(1)  # never accepts: the probe gives up after its short timeout
    try:
        assert probe.docker_networks(path, timeout=0.05) == []
    finally:
        srv.close()


class FakeIPRoute:
    def get_links(self):
        return [{"index": 1, "ifname": "lo"}, {"index": 2, "ifname": "eth0"}, {"index": 3, "ifname": "tun0"}]

    def get_addr(self):
        return [{"index": 1, "prefixlen": 8, "local": "127.0.0.1", "address": "127.0.0.1"},
                {"index": 2, "prefixlen": 24, "local": "172.42.10.112", "address": "172.42.10.112"},
                {"index": 2, "prefixlen": 64, "address": "fe80::1"},
                {"index": 3, "prefixlen": 32, "local": "10.8.0.6", "address": "10.8.0.5"}]

    def route(self, cmd):
        assert cmd == "dump"
        base = {"family": socket.AF_INET, "scope": 0, "type": 1, "table": 254}
        return [dict(base, dst_len=0, gateway="172.42.10.1", oif=2),                       # default: skipped
                dict(base, dst="172.42.10.0", dst_len=24, scope=253, oif=2),               # on-link
                dict(base, dst="10.8.0.0", dst_len=16, gateway="10.8.0.5", oif=3, table=100),
                dict(base, dst="0.0.0.0", dst_len=1, oif=3),                              # VPN def1: skipped
                dict(base, dst="172.42.10.112", dst_len=32, type=2, table=255, oif=2),    # local: skipped
                dict(base, dst="127.0.0.0", dst_len=8, type=2, table=255, oif=1),
                dict(base, family=socket.AF_INET6, dst="fe80::", dst_len=64, oif=2)]

    def get_neighbours(self):
        return [{"dst": "172.42.10.1", "state": 0x02, "ifindex": 2},
                {"dst": "172.42.10.99", "state": 0x20, "ifindex": 2},   # FAILED
                {"dst": "172.42.10.98", "state": 0x01, "ifindex": 2},   # INCOMPLETE
                {"dst": "172.42.10.97", "state": 0x04, "ifindex": 2},   # STALE
                {"dst": "ff02::1", "state": 0x40, "ifindex": 2}]        # NOARP


def test_gather_with_a_fake_kernel(tmp_path, monkeypatch):
    monkeypatch.setattr(probe, "_netdir", lambda: str(tmp_path))  # no tcp files: no peers

    def no_diag(family):
        raise OSError("no sock_diag here")

    monkeypatch.setattr(probe, "diag_tcp", no_diag)
    monkeypatch.setattr(probe, "_links", lambda ipr: {m["index"]: m["ifname"] for m in ipr.get_links()})
    rc = tmp_path / "resolv.conf"
    rc.write_text("nameserver 172.42.10.53\n")
    ev = probe.gather(FakeIPRoute(), reserved=["172.22.0.0/16"], nsnet_subnets=[("web", "172.30.0.0/16"), "172.31.0.0/16"],
                      docker_socket=None, resolv_conf=str(rc))
    got = [(e.kind, str(e.network), e.detail, e.onlink) for e in ev]
    assert got == [
        ("address", "172.42.10.0/24", "the network of eth0's address 172.42.10.112/24", False),
        ("address", "10.8.0.6/32", "the network of tun0's address 10.8.0.6/32", False),
        ("address", "10.8.0.5/32", "the point-to-point peer of tun0", False),
        ("route", "172.42.10.0/24", "an on-link route to 172.42.10.0/24 dev eth0", True),
        ("route", "10.8.0.0/16", "a route to 10.8.0.0/16 via 10.8.0.5 dev tun0 (table 100)", False),
        ("neighbour", "172.42.10.1/32", "a neighbour on eth0 (REACHABLE)", False),
        ("neighbour", "172.42.10.97/32", "a neighbour on eth0 (STALE)", False),
        ("resolver", "172.42.10.53/32", f"a nameserver in {rc}", False),
        ("reserved", "172.22.0.0/16", "a range reserved in nsnet's configuration", False),
        ("nsnet", "172.30.0.0/16", "the subnet of nsnet network 'web'", False),
        ("nsnet", "172.31.0.0/16", "the subnet of an nsnet network", False),
    ]


def test_docker_socket_follows_docker_host(monkeypatch):
    monkeypatch.delenv("DOCKER_HOST", raising=False)
    assert probe.docker_socket() == "/var/run/docker.sock"
    monkeypatch.setenv("DOCKER_HOST", "unix:///tmp/elsewhere.sock")
    assert probe.docker_socket() == "/tmp/elsewhere.sock"
    monkeypatch.setenv("DOCKER_HOST", "tcp://127.0.0.1:2375")   # not a socket we can ask
    assert probe.docker_socket() is None
