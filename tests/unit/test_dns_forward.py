"""Forwarding, against fake upstreams on this namespace's loopback (no root needed: loopback
upstreams from the host's resolv.conf are reached from the daemon's namespace, no setns)."""

import logging
import os
import queue
import selectors
import socket
import struct
import threading
import time

import dns.message
import dns.rcode
import dns.flags
import dns.rdata
import dns.rrset
import pytest

from nsnet.dns import forward as fwdmod, wire
from nsnet.dns.forward import Forwarder, Route
from nsnet.dns.loop import EventLoop
from nsnet.dns.upstream import parse_upstream, resolve_upstreams
from nsnet.resolvconf import nameservers


class FakeUpstream:
    """A dnspython-built upstream on 127.0.0.1 (UDP and TCP on one port).
    mode: answer | truncate (TC over UDP, full over TCP) | servfail | silent | wrong-question."""

    def __init__(self, mode="answer", address="203.0.113.7", txt_size=0):
        self.mode, self.address, self.txt_size = mode, address, txt_size
        self.udp_queries = self.tcp_queries = 0
        self.peers = []  # where each UDP query came from
        for _ in range(20):
            self.udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            self.udp.bind(("127.0.0.1", 0))
            self.port = self.udp.getsockname()[1]
            self.tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            try:
                self.tcp.bind(("127.0.0.1", self.port))
                break
            except OSError:
                self.udp.close()
                self.tcp.close()
        self.tcp.listen(8)
        self._stop = False
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def spec(self):
        return f"127.0.0.1:{self.port}"

    def answer(self, wire_q, tcp):
        q = dns.message.from_wire(wire_q)
        r = dns.message.make_response(q)
        if self.mode == "servfail":
            r.set_rcode(dns.rcode.SERVFAIL)
            return r.to_wire()
        if self.mode == "wrong-question":
            r = dns.message.make_response(dns.message.make_query("other.example", "A"))
            r.id = q.id
            return r.to_wire()
        if self.mode == "truncate" and not tcp:
            r.flags |= dns.flags.TC
            return r.to_wire()
        name = q.question[0].name
        if q.question[0].rdtype == 16:
            r.answer.append(dns.rrset.from_text(name, 30, "IN", "TXT", '"' + "x" * 200 + '"'))
            for i in range(self.txt_size):
                r.answer[0].add(dns.rdata.from_text("IN", "TXT", f'"{i:04d}' + "z" * 200 + '"'))
        else:
            r.answer.append(dns.rrset.from_text(name, 30, "IN", "A", self.address))
        return r.to_wire()

    def _serve(self):
        sel = selectors.DefaultSelector()
        sel.register(self.udp, selectors.EVENT_READ)
        sel.register(self.tcp, selectors.EVENT_READ)
        while not self._stop:
            for key, _ in sel.select(0.1):
                if key.fileobj is self.udp:
                    data, addr = self.udp.recvfrom(4096)
                    self.udp_queries += 1
                    self.peers.append(addr)
                    if self.mode != "silent":
                        self.udp.sendto(self.answer(data, False), addr)
                else:
                    c, _ = self.tcp.accept()
                    with c:
                        c.settimeout(2)
                        n = struct.unpack("!H", c.recv(2))[0]
                        data = b""
                        while len(data) < n:
                            data += c.recv(n - len(data))
                        self.tcp_queries += 1
                        out = self.answer(data, True)
                        c.sendall(struct.pack("!H", len(out)) + out)
        sel.close()

    def stop(self):
        self._stop = True
        self._thread.join(2)
        self.udp.close()
        self.tcp.close()


class Client:
    alive = True

    def __init__(self):
        self.q = queue.Queue()

    def reply(self, data):
        self.q.put((time.monotonic(), data))


@pytest.fixture
def loop():
    lp = EventLoop(logging.getLogger("test"))
    lp.start()
    yield lp
    lp.stop()
    lp.close()


def forward(loop, specs, name="www.example.com", rdtype="A", timeout=3.0, max_size=512, **kw):
    fwd = Forwarder(loop, logging.getLogger("test"), timeout)
    route = Route.open(None, resolve_upstreams(specs, from_host=True, own_address="127.0.0.11"))
    q = dns.message.make_query(name, rdtype, **kw)
    data = q.to_wire()
    client = Client()
    t0 = time.monotonic()
    loop.call(lambda: fwd.forward(client, data, wire.parse_query(data), max_size, route))
    when, answer = client.q.get(timeout=timeout * 4 + 2)
    loop.call(lambda: fwd.detach(route))
    assert fwd.count == 0
    return q, dns.message.from_wire(answer), when - t0


@pytest.fixture
def upstreams():
    made = []

    def make(mode="answer", **kw):
        made.append(FakeUpstream(mode, **kw))
        return made[-1]

    yield make
    for u in made:
        u.stop()


def dead_port():
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nobody listens: the kernel answers ICMP port unreachable
    return f"127.0.0.1:{port}"


def test_answer_is_relayed_with_the_clients_id_and_case(loop, upstreams):
    up = upstreams()
    q, r, _ = forward(loop, [up.spec()], name="WwW.Example.com")
    assert r.id == q.id and r.rcode() == dns.rcode.NOERROR
    assert r.question[0].name.to_text() == "WwW.Example.com."
    assert [rr.address for rr in r.answer[0]] == ["203.0.113.7"]


def test_dead_upstream_is_servfail_at_once(loop):
    q, r, took = forward(loop, [dead_port()], timeout=3.0)
    assert r.rcode() == dns.rcode.SERVFAIL and r.id == q.id
    assert took < 1.0  # ICMP port unreachable, not the 3 s timer


def test_next_upstream_after_a_dead_one(loop, upstreams):
    up = upstreams()
    _, r, took = forward(loop, [dead_port(), up.spec()], timeout=3.0)
    assert [rr.address for rr in r.answer[0]] == ["203.0.113.7"] and took < 1.0


def test_silent_upstream_times_out_to_servfail(loop, upstreams):
    up = upstreams("silent")
    _, r, took = forward(loop, [up.spec()], timeout=0.3)
    assert r.rcode() == dns.rcode.SERVFAIL and 0.25 < took < 1.5
    assert up.udp_queries == 1


def test_servfail_from_upstream_tries_the_next(loop, upstreams):
    bad, good = upstreams("servfail"), upstreams()
    _, r, _ = forward(loop, [bad.spec(), good.spec()])
    assert r.rcode() == dns.rcode.NOERROR and bad.udp_queries == 1 and good.udp_queries == 1


def test_forged_answer_is_ignored(loop, upstreams):
    up = upstreams("wrong-question")
    _, r, _ = forward(loop, [up.spec()], timeout=0.3)
    assert r.rcode() == dns.rcode.SERVFAIL


def test_truncated_answer_falls_back_to_tcp(loop, upstreams):
    up = upstreams("truncate")
    _, r, _ = forward(loop, [up.spec()])
    assert not r.flags & dns.flags.TC
    assert [rr.address for rr in r.answer[0]] == ["203.0.113.7"]
    assert up.udp_queries == 1 and up.tcp_queries == 1


def test_tcp_answer_too_big_for_the_udp_client_is_truncated(loop, upstreams):
    up = upstreams("truncate", txt_size=5)
    _, r, _ = forward(loop, [up.spec()], rdtype="TXT", max_size=512)
    assert r.flags & dns.flags.TC and not r.answer
    _, r, _ = forward(loop, [up.spec()], rdtype="TXT", max_size=65535)
    assert not r.flags & dns.flags.TC and len(r.answer[0]) == 6


@pytest.fixture(params=["daemon", "sandbox"])
def route_to(request):
    """A route to one upstream, its sockets made in the daemon's namespace (a loopback upstream of
    the host's) or, as for a sandbox, entering a namespace: this process's own, which needs root."""
    in_sandbox = request.param == "sandbox"
    if in_sandbox and os.geteuid() != 0:
        pytest.skip("entering a namespace needs root")
    fds = []

    def make(spec):
        ns_fd = None
        if in_sandbox:
            ns_fd = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
            fds.append(ns_fd)
        return Route.open(ns_fd, resolve_upstreams([spec], from_host=not in_sandbox, own_address="127.0.0.11"))

    yield make
    for fd in fds:
        os.close(fd)


def test_each_query_leaves_from_its_own_random_port(loop, upstreams, route_to):
    """Not one socket per upstream: a forger would have only the 16-bit ID to guess (RFC 5452)."""
    up = upstreams()
    fwd = Forwarder(loop, logging.getLogger("test"), 3.0)
    route = route_to(up.spec())
    for i in range(4):
        ask(loop, fwd, route, f"q{i}.example.com").q.get(timeout=3)
    ports = [port for _, port in up.peers]
    assert len(ports) == 4 and len(set(ports)) == 4, ports
    # a sandbox's sockets are made several at a time; once it stops forwarding, the spares go
    spares = sum(map(len, route.spares.values()))
    assert spares == (fwdmod.SPARES - 4 if route.ns_fd is not None else 0)
    loop.call(lambda: fwd.trim(route))
    assert sum(map(len, route.spares.values())) == spares  # it forwarded since the last trim
    loop.call(lambda: fwd.trim(route))
    assert route.spares == {}
    loop.call(lambda: fwd.detach(route))
    fwd.close()


def ask(loop, fwd, route, name):
    data = dns.message.make_query(name, "A").to_wire()
    client = Client()
    loop.call(lambda: fwd.forward(client, data, wire.parse_query(data), 512, route))
    return client


def test_the_limit_on_queries_in_flight_is_per_sandbox(loop, upstreams, monkeypatch):
    """A sandbox flooding names its upstream never answers fills its own share, not another's."""
    monkeypatch.setattr(fwdmod, "MAX_PENDING", 20)
    silent, good = upstreams("silent"), upstreams()
    fwd = Forwarder(loop, logging.getLogger("test"), 5.0)
    flooder = Route.open(None, resolve_upstreams([silent.spec()], from_host=True, own_address="127.0.0.11"))
    other = Route.open(None, resolve_upstreams([good.spec()], from_host=True, own_address="127.0.0.11"))
    flood = [ask(loop, fwd, flooder, f"n{i}.flood.example") for i in range(25)]
    refused = [dns.message.from_wire(c.q.get(timeout=2)[1]) for c in flood[20:]]  # over its share: at once
    assert {r.rcode() for r in refused} == {dns.rcode.SERVFAIL}
    _, answer = ask(loop, fwd, other, "www.example.com").q.get(timeout=2)
    assert [rr.address for rr in dns.message.from_wire(answer).answer[0]] == ["203.0.113.7"]
    assert all(c.q.empty() for c in flood[:20])  # still waiting on the silent upstream
    loop.call(lambda: (fwd.detach(flooder), fwd.detach(other)))
    assert fwd.count == 0


def test_no_upstream_left_is_servfail(loop):
    _, r, _ = forward(loop, [])
    assert r.rcode() == dns.rcode.SERVFAIL


# --- configuration -----------------------------------------------------------------------------


def test_parse_upstream():
    assert parse_upstream("192.0.2.53") == ("192.0.2.53", 53)
    assert parse_upstream("192.0.2.53:5353") == ("192.0.2.53", 5353)
    assert parse_upstream("2001:db8::1") == ("2001:db8::1", 53)
    assert parse_upstream("[2001:db8::1]:5353") == ("2001:db8::1", 5353)


def test_nameservers_of_a_resolv_conf(tmp_path):
    p = tmp_path / "resolv.conf"
    p.write_text("# comment\nsearch example.com\nnameserver 192.0.2.1\nnameserver  2001:db8::53 # v6\n"
                 "options ndots:2\nnameserver 127.0.0.53\n")
    assert nameservers(str(p)) == ["192.0.2.1", "2001:db8::53", "127.0.0.53"]
    assert nameservers(str(tmp_path / "missing")) == []


def test_resolve_upstreams_docker_rules():
    ups = resolve_upstreams(["127.0.0.53", "bogus", "192.0.2.1", "2001:db8::1", "192.0.2.4"],
                            from_host=True, own_address="127.0.0.11")
    assert [str(u) for u in ups] == ["127.0.0.53:53", "192.0.2.1:53", "2001:db8::1:53"]  # at most 3
    assert [u.host_loopback for u in ups] == [True, False, False]
    # a sandbox's own --dns: reached from its namespace; 127.0.0.11 there is ourselves
    ups = resolve_upstreams(["127.0.0.11", "127.0.0.1", "192.0.2.1"], from_host=False, own_address="127.0.0.11")
    assert [(str(u), u.host_loopback) for u in ups] == [("127.0.0.1:53", False), ("192.0.2.1:53", False)]
