"""The resolver with real namespaces: 127.0.0.11 inside throwaway sandboxes, real lookups.

Every namespace here is ours (named nsnt-dns-<pid>x<random>-...); the machine's own namespace is never
touched: the server's thread only enters the sandboxes to open sockets, and the "internet"
upstream is reached over a veth between two of our namespaces.
"""

import logging
import os
import secrets
import shutil
import socket
import struct
import subprocess
import threading
import time

import dns.exception
import dns.flags
import dns.message
import dns.query
import dns.rcode
import dns.rrset
import pytest

from nsnet.dns import DnsServer, Record, RecordSet
from nsnet.kernel import netns as nsmod

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces"),
    pytest.mark.skipif(shutil.which("ip") is None, reason="needs iproute2"),
]

PREFIX = "nsnt-dns-"
RUN = f"{PREFIX}{os.getpid()}x{secrets.token_hex(2)}"
LOG = logging.getLogger("test.dns")


def sh(*args, check=True, **kw):
    return subprocess.run(list(args), check=check, capture_output=True, text=True, **kw)


def _sweep_dead_runs():
    """Namespaces left by a run of this file that was killed (its pid is gone): ours to delete.
    A run still alive (another terminal, CI) keeps its own."""
    for line in sh("ip", "netns", "list", check=False).stdout.splitlines():
        name = line.split()[0] if line.split() else ""
        pid = name[len(PREFIX):].split("x", 1)[0]
        if name.startswith(PREFIX) and pid.isdigit() and not os.path.exists(f"/proc/{pid}"):
            sh("ip", "netns", "del", name, check=False)
            shutil.rmtree(f"/etc/netns/{name}", ignore_errors=True)


@pytest.fixture(scope="module")
def make_ns():
    _sweep_dead_runs()
    made = []

    def make(short):
        name = f"{RUN}-{short}"
        sh("ip", "netns", "add", name)
        made.append(name)
        sh("ip", "-n", name, "link", "set", "lo", "up")
        return name

    try:
        yield make
    finally:
        for name in made:
            sh("ip", "netns", "del", name, check=False)
            shutil.rmtree(f"/etc/netns/{name}", ignore_errors=True)


def ns_socket(ns, kind=socket.SOCK_DGRAM):
    fd = os.open(f"/run/netns/{ns}", os.O_RDONLY)
    try:
        return nsmod.socket_in(fd, socket.AF_INET, kind)
    finally:
        os.close(fd)


def ask(ns, name, rdtype="A", timeout=2.0, **kw):
    q = dns.message.make_query(name, rdtype, **kw)
    with ns_socket(ns) as s:
        s.setblocking(False)  # dnspython wants its sockets non-blocking
        return dns.query.udp(q, "127.0.0.11", timeout=timeout, sock=s)


def ask_tcp(ns, name, rdtype="A", timeout=2.0):
    q = dns.message.make_query(name, rdtype)
    with ns_socket(ns, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(("127.0.0.11", 53))
        s.setblocking(False)
        return dns.query.tcp(q, "127.0.0.11", timeout=timeout, sock=s)


def addrs(msg):
    return sorted(rr.to_text() for rrset in msg.answer for rr in rrset)


# --- a world of sandboxes ----------------------------------------------------------------------
# net1: web (alias "svc"), api (alias "svc"), both; net2: db, both.


def records(**changes):
    recs = {
        "web": Record("sb-web", "n1", ("web", "svc", "web-host"), "10.91.0.2", "fd91::2"),
        "api": Record("sb-api", "n1", ("api", "svc"), "10.91.0.3"),
        "db": Record("sb-db", "n2", ("db",), "10.92.0.2"),
        "both1": Record("sb-both", "n1", ("both",), "10.91.0.9"),
        "both2": Record("sb-both", "n2", ("both",), "10.92.0.9"),
    }
    recs.update(changes)
    return RecordSet([r for r in recs.values() if r], {"n1": "front", "n2": "back"})


@pytest.fixture(scope="module")
def world(make_ns):
    sbs = {k: make_ns(k) for k in ("web", "api", "db", "both")}
    srv = DnsServer(upstreams=[], log=LOG, tcp_idle=1.0)
    srv.start()
    try:
        for k, ns in sbs.items():
            srv.add_sandbox(f"sb-{k}", f"/run/netns/{ns}")
        srv.set_records(records())
        yield srv, sbs
    finally:
        srv.stop()


@pytest.fixture
def fresh_records(world):
    srv, _ = world
    yield
    srv.set_records(records())


def test_names_and_aliases(world):
    _, ns = world
    assert addrs(ask(ns["api"], "web")) == ["10.91.0.2"]
    assert addrs(ask(ns["api"], "web-host")) == ["10.91.0.2"]
    assert addrs(ask(ns["api"], "web", "AAAA")) == ["fd91::2"]
    assert addrs(ask(ns["web"], "svc")) == ["10.91.0.2", "10.91.0.3"]
    assert addrs(ask(ns["api"], "web.front")) == ["10.91.0.2"]  # name.network, as Docker


def test_round_robin(world):
    _, ns = world
    firsts = {ask(ns["both"], "svc").answer[0][0].to_text() for _ in range(4)}
    assert firsts == {"10.91.0.2", "10.91.0.3"}


def test_answers_depend_on_who_asks(world):
    _, ns = world
    assert ask(ns["web"], "db").rcode() == dns.rcode.NXDOMAIN
    assert ask(ns["db"], "web").rcode() == dns.rcode.NXDOMAIN
    assert ask(ns["db"], "svc").rcode() == dns.rcode.NXDOMAIN
    assert addrs(ask(ns["web"], "both")) == ["10.91.0.9"]
    assert addrs(ask(ns["db"], "both")) == ["10.92.0.9"]
    assert addrs(ask(ns["both"], "db")) == ["10.92.0.2"]


def test_case_is_echoed_and_cached_answers_keep_it(world):
    _, ns = world
    for name in ("WeB", "wEB", "WeB", "wEB"):  # the second pair is served from the cache
        r = ask(ns["api"], name)
        assert r.question[0].name.to_text() == name + "." and addrs(r) == ["10.91.0.2"]


def test_reverse_lookups(world):
    _, ns = world
    r = ask(ns["api"], "2.0.91.10.in-addr.arpa", "PTR")
    assert [rr.to_text() for rr in r.answer[0]] == ["web.front."]
    out = sh("ip", "netns", "exec", ns["api"], "dig", "+short", "@127.0.0.11", "-x", "fd91::2").stdout
    assert out.split() == ["web.front."]
    # db cannot see web: not ours to answer, and there is no upstream
    assert ask(ns["db"], "2.0.91.10.in-addr.arpa", "PTR").rcode() == dns.rcode.SERVFAIL


def test_dig_with_edns_cookie_and_tcp(world):
    _, ns = world
    for extra in ([], ["+tcp"], ["+noedns"], ["+nocookie"]):
        out = sh("ip", "netns", "exec", ns["web"], "dig", "+short", "+tries=1", "@127.0.0.11", *extra, "api")
        assert out.stdout.split() == ["10.91.0.3"], extra


def test_getent_through_resolv_conf(world):
    _, ns = world
    os.makedirs(f"/etc/netns/{ns['web']}", exist_ok=True)
    with open(f"/etc/netns/{ns['web']}/resolv.conf", "w") as f:
        f.write("nameserver 127.0.0.11\noptions ndots:0\n")
    out = sh("ip", "netns", "exec", ns["web"], "getent", "hosts", "api").stdout.split()
    assert out[:2] == ["10.91.0.3", "api"]
    # (ahostsv4 would ask nothing here: AI_ADDRCONFIG sees no IPv4 address but lo)
    out = sh("ip", "netns", "exec", ns["web"], "getent", "ahosts", "svc").stdout
    assert {"10.91.0.2", "10.91.0.3"} <= set(out.split())
    out = sh("ip", "netns", "exec", ns["web"], "getent", "hosts", "10.91.0.3").stdout.split()
    assert out == ["10.91.0.3", "api.front"]
    r = sh("ip", "netns", "exec", ns["web"], "getent", "hosts", "db", check=False)
    assert r.returncode == 2  # not found


def test_changes_apply_at_once(world, fresh_records):
    srv, ns = world
    assert addrs(ask(ns["web"], "api")) == ["10.91.0.3"]
    srv.set_records(records(api=None))  # rm api
    assert ask(ns["web"], "api").rcode() == dns.rcode.NXDOMAIN
    assert addrs(ask(ns["web"], "svc")) == ["10.91.0.2"]
    srv.set_records(records(api=Record("sb-api", "n1", ("api-renamed",), "10.91.0.3")))
    assert ask(ns["web"], "api").rcode() == dns.rcode.NXDOMAIN
    assert addrs(ask(ns["web"], "api-renamed")) == ["10.91.0.3"]
    # db connects to net1 too
    srv.set_records(records(db1=Record("sb-db", "n1", ("db",), "10.91.0.20")))
    assert addrs(ask(ns["web"], "db")) == ["10.91.0.20"]


def test_tcp_several_queries_per_connection_and_idle_close(world):
    _, ns = world
    with ns_socket(ns["web"], socket.SOCK_STREAM) as s:
        s.settimeout(3)
        s.connect(("127.0.0.11", 53))
        qs = [dns.message.make_query(n, "A") for n in ("api", "both", "nosuch", "api")]
        s.sendall(b"".join(struct.pack("!H", len(w)) + w for w in (q.to_wire() for q in qs)))
        got = {}
        for _ in qs:
            n = struct.unpack("!H", recv_exact(s, 2))[0]
            r = dns.message.from_wire(recv_exact(s, n))
            got[r.id] = r
        assert addrs(got[qs[0].id]) == ["10.91.0.3"] and addrs(got[qs[3].id]) == ["10.91.0.3"]
        assert got[qs[2].id].rcode() == dns.rcode.NXDOMAIN
        # tcp_idle=1.0 in this server: an idle client is closed
        assert s.recv(1) == b""
    assert addrs(ask_tcp(ns["web"], "api")) == ["10.91.0.3"]


def recv_exact(s, n):
    buf = b""
    while len(buf) < n:
        chunk = s.recv(n - len(buf))
        assert chunk, "connection closed"
        buf += chunk
    return buf


def test_malformed_packets_then_a_good_query(world):
    _, ns = world
    garbage = [
        b"",
        b"\x00",
        os.urandom(11),
        os.urandom(512),
        b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00" + b"\x3f" + b"a" * 63,  # cut
        b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00" + (b"\x3f" + b"a" * 63) * 60 + b"\x00\x00\x01\x00\x01",
        b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\xc0\x0c\x00\x01\x00\x01",  # pointer loop
        b"\x12\x34\x81\x80" + os.urandom(40),  # a "response"
        os.urandom(4000),
    ]
    with ns_socket(ns["web"]) as s:
        s.settimeout(0.5)
        s.connect(("127.0.0.11", 53))
        for g in garbage:
            s.send(g)
        answers = []
        try:
            while True:
                answers.append(s.recv(4096))
        except socket.timeout:
            pass
    for a in answers:  # whatever came back is a well-formed error
        assert dns.message.from_wire(a).rcode() in (dns.rcode.FORMERR, dns.rcode.NOTIMP)
    assert addrs(ask(ns["web"], "api")) == ["10.91.0.3"]
    # garbage over TCP: the connection is dropped, the server lives
    with ns_socket(ns["web"], socket.SOCK_STREAM) as s:
        s.settimeout(2)
        s.connect(("127.0.0.11", 53))
        s.sendall(b"\x00\x05hello" + b"\x00\x00")
        assert s.recv(100) == b""
    assert addrs(ask_tcp(ns["web"], "api")) == ["10.91.0.3"]


def test_flood_does_not_stop_the_server(world):
    _, ns = world
    with ns_socket(ns["api"]) as s:
        s.connect(("127.0.0.11", 53))
        s.setblocking(False)
        for i in range(20000):
            try:
                s.send(dns.message.make_query(f"n{i}x" + "a" * (i % 50), "A").to_wire() if i % 2 else os.urandom(40))
            except BlockingIOError:
                time.sleep(0.001)
    t0 = time.monotonic()
    assert addrs(ask(ns["web"], "api", timeout=5)) == ["10.91.0.3"]
    assert time.monotonic() - t0 < 2.0


def test_remove_and_add_again(world):
    srv, ns = world
    srv.remove_sandbox("sb-db")
    with pytest.raises(dns.exception.Timeout):
        ask(ns["db"], "both", timeout=0.5)
    srv.add_sandbox("sb-db", f"/run/netns/{ns['db']}")
    assert addrs(ask(ns["db"], "both")) == ["10.92.0.9"]


def test_restart_serves_again(make_ns):
    ns = make_ns("rst")
    rs = RecordSet([Record("a", "n", ("alpha",), "10.93.0.2"), Record("me", "n", ("me",), "10.93.0.3")])
    for _ in range(2):
        srv = DnsServer(upstreams=[], log=LOG)
        srv.start()
        try:
            srv.add_sandbox("me", f"/run/netns/{ns}")
            srv.set_records(rs)
            assert addrs(ask(ns, "alpha")) == ["10.93.0.2"]
        finally:
            srv.stop()


def test_netns_given_as_fd_and_lo_down(make_ns):
    ns = make_ns("fd")
    sh("ip", "-n", ns, "link", "set", "lo", "down")
    srv = DnsServer(upstreams=[], log=LOG)
    fd = os.open(f"/run/netns/{ns}", os.O_RDONLY)
    try:
        srv.add_sandbox("me", fd)  # before start, lo down: IP_FREEBIND still binds
    finally:
        os.close(fd)
    srv.start()
    try:
        sh("ip", "-n", ns, "link", "set", "lo", "up")
        srv.set_records(RecordSet([Record("me", "n", ("me",), "10.94.0.2")]))
        assert addrs(ask(ns, "me")) == ["10.94.0.2"]
    finally:
        srv.stop()


# --- forwarding to an upstream in an "internet" namespace ---------------------------------------


class Upstream:
    """A dnspython-built DNS server whose sockets were opened inside namespace `ns`.
    truncate: UDP answers carry TC and nothing else; TCP answers are complete."""

    def __init__(self, ns, address, truncate=False):
        self.truncate = truncate
        self.udp = ns_socket(ns)
        self.udp.bind((address, 53))
        self.tcp = ns_socket(ns, socket.SOCK_STREAM)
        self.tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.tcp.bind((address, 53))
        self.tcp.listen(8)
        self.tcp_queries = 0
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=f, daemon=True) for f in (self._serve_udp, self._serve_tcp)]
        for t in self._threads:
            t.start()

    def answer(self, data, tcp):
        q = dns.message.from_wire(data)
        r = dns.message.make_response(q)
        if self.truncate and not tcp:
            r.flags |= dns.flags.TC
        else:
            r.answer.append(dns.rrset.from_text(q.question[0].name, 30, "IN", "A", "198.51.100.7"))
        return r.to_wire()

    def _serve_udp(self):
        self.udp.settimeout(0.2)
        while not self._stop.is_set():
            try:
                data, addr = self.udp.recvfrom(4096)
            except socket.timeout:
                continue
            except OSError:
                return
            self.udp.sendto(self.answer(data, False), addr)

    def _serve_tcp(self):
        self.tcp.settimeout(0.2)
        while not self._stop.is_set():
            try:
                c, _ = self.tcp.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            with c:
                c.settimeout(2)
                data = recv_exact(c, struct.unpack("!H", recv_exact(c, 2))[0])
                self.tcp_queries += 1
                out = self.answer(data, True)
                c.sendall(struct.pack("!H", len(out)) + out)

    def stop(self):
        self._stop.set()
        for t in self._threads:
            t.join(2)
        self.udp.close()
        self.tcp.close()


@pytest.fixture(scope="module")
def internet(make_ns):
    """sandbox <-veth-> inet; the upstream listens in inet (192.0.2.53, TEST-NET-1)."""
    sb, inet = make_ns("fwd"), make_ns("inet")
    sh("ip", "-n", sb, "link", "add", "v0", "type", "veth", "peer", "name", "v1", "netns", inet)
    sh("ip", "-n", sb, "addr", "add", "192.0.2.1/24", "dev", "v0")
    sh("ip", "-n", inet, "addr", "add", "192.0.2.53/24", "dev", "v1")
    sh("ip", "-n", sb, "link", "set", "v0", "up")
    sh("ip", "-n", inet, "link", "set", "v1", "up")
    return sb, inet


@pytest.fixture
def fwd_server(internet):
    sb, inet = internet
    srv = DnsServer(upstreams=[], log=LOG, timeout=1.0)
    srv.start()
    srv.add_sandbox("sb-fwd", f"/run/netns/{sb}", upstreams=["192.0.2.53"])  # its --dns
    srv.set_records(RecordSet([Record("sb-fwd", "n", ("me",), "10.95.0.2")]))
    try:
        yield srv, sb, inet
    finally:
        srv.stop()


def test_forwarded_answer(fwd_server):
    _, sb, inet = fwd_server
    up = Upstream(inet, "192.0.2.53")
    try:
        assert addrs(ask(sb, "www.example.com")) == ["198.51.100.7"]
        assert addrs(ask(sb, "me")) == ["10.95.0.2"]  # local names never leave
        assert ask(sb, "nosuch").rcode() == dns.rcode.NXDOMAIN  # single label: not forwarded
        out = sh("ip", "netns", "exec", sb, "dig", "+short", "@127.0.0.11", "www.example.org").stdout
        assert out.split() == ["198.51.100.7"]
        assert addrs(ask_tcp(sb, "www.example.net")) == ["198.51.100.7"]
    finally:
        up.stop()


def test_truncated_upstream_answer_falls_back_to_tcp(fwd_server):
    _, sb, inet = fwd_server
    up = Upstream(inet, "192.0.2.53", truncate=True)
    try:
        r = ask(sb, "big.example.com")
        assert not r.flags & dns.flags.TC and addrs(r) == ["198.51.100.7"]
        assert up.tcp_queries == 1
    finally:
        up.stop()


def test_upstream_down_is_servfail_quickly_and_others_are_served(fwd_server):
    _, sb, inet = fwd_server
    up = Upstream(inet, "192.0.2.53")
    assert addrs(ask(sb, "www.example.com")) == ["198.51.100.7"]
    up.stop()
    t0 = time.monotonic()
    assert ask(sb, "www.example.com", timeout=5).rcode() == dns.rcode.SERVFAIL
    assert time.monotonic() - t0 < 2.0
    # an upstream that drops everything (link down): the 1 s timeout, and local names meanwhile
    sh("ip", "-n", inet, "link", "set", "v1", "down")
    try:
        result = {}
        t = threading.Thread(target=lambda: result.update(r=ask(sb, "slow.example.com", timeout=5)))
        t0 = time.monotonic()
        t.start()
        assert addrs(ask(sb, "me")) == ["10.95.0.2"]
        assert time.monotonic() - t0 < 0.5
        t.join()
        assert result["r"].rcode() == dns.rcode.SERVFAIL and time.monotonic() - t0 < 2.5
    finally:
        sh("ip", "-n", inet, "link", "set", "v1", "up")


# --- what must never break answering, nor flood the log -----------------------------------------


def test_a_name_too_long_for_dns_gives_way_to_one_that_fits_and_is_logged_once(make_ns, caplog):
    """A 64-character sandbox name: its PTR answers give its alias (Docker's <name>.<network> cannot
    be encoded), from every sandbox; one warning when the record comes, nothing per query."""
    caplog.set_level(logging.INFO, logger=LOG.name)
    ns = {k: make_ns(k) for k in ("long", "peer")}
    srv = DnsServer(upstreams=[], log=LOG)
    srv.start()
    try:
        for k, n in ns.items():
            srv.add_sandbox(f"sb-{k}", f"/run/netns/{n}")
        srv.set_records(RecordSet([Record("sb-long", "n1", ("x" * 64, "alias"), "10.96.0.2"),
                                   Record("sb-peer", "n1", ("peer",), "10.96.0.3")], {"n1": "front"}))
        srv.change_records([Record("sb-peer", "n1", ("peer", "y" * 64), "10.96.0.3")], [])
        for _ in range(50):
            for asker in ns.values():
                r = ask(asker, "2.0.96.10.in-addr.arpa", "PTR", timeout=1.0)
                assert [rr.to_text() for rr in r.answer[0]] == ["alias.front."]
                assert addrs(ask(asker, "alias", timeout=1.0)) == ["10.96.0.2"]
        lines = [r.getMessage() for r in caplog.records if r.name == LOG.name and "upstream" not in r.getMessage()]
        assert lines == [f"dns: sandbox sb-long on network n1: names DNS cannot carry, not served: {'x' * 64}; "
                         "reverse name alias.front",
                         f"dns: sandbox sb-peer on network n1: names DNS cannot carry, not served: {'y' * 64}; "
                         "reverse name peer.front"]
    finally:
        srv.stop()


def test_a_query_that_fails_is_answered_servfail_and_logged_once(make_ns, caplog):
    """Whatever raises while answering (here a record the engine never makes: an address out of range) costs that
    query a SERVFAIL and the log one traceback per cause a minute, never one per query."""
    caplog.set_level(logging.INFO, logger=LOG.name)
    ns = make_ns("bad")
    srv = DnsServer(upstreams=[], log=LOG)
    srv.start()
    try:
        srv.add_sandbox("sb-bad", f"/run/netns/{ns}")
        srv.set_records(RecordSet([Record("sb-bad", "n1", ("me",), "10.97.0.2"),
                                   Record("sb-x", "n1", ("broken",), "999.0.0.1")]))
        for i in range(200):
            assert ask(ns, "broken" if i % 2 else "BROKEN", timeout=1.0).rcode() == dns.rcode.SERVFAIL
        assert addrs(ask(ns, "me")) == ["10.97.0.2"]
        errors = [r for r in caplog.records if r.name == LOG.name and r.levelno >= logging.ERROR]
        assert len(errors) == 1 and errors[0].exc_info, [r.getMessage() for r in errors]
    finally:
        srv.stop()
