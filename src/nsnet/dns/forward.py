"""Forwarding without blocking: the loop sends, and the answer is just another event.

Why not a pool of threads doing blocking queries: a dead upstream would hold each thread for
the whole timeout, and a burst of lookups for external names would queue behind it (and behind
local answers). Here a query is a send from a fresh non-blocking UDP socket, served by the same
epoll loop, plus a timer; the answer, the timeout or the ICMP "port unreachable" (which a
*connected* UDP socket reports as ECONNREFUSED, so a stopped upstream fails over at once)
resolves it.

A fresh socket per query, as Docker dials one: the kernel gives each a random source port, so a
forged answer must guess the port as well as the random 16-bit ID (RFC 5452), not the ID alone.
It is made in the sandbox's namespace (its routes and firewall apply), or in the daemon's for a
loopback upstream from the host's resolv.conf. Entering a namespace costs about as much as the
rest of a forwarded query, so a sandbox's sockets are made SPARES at a time (still unbound: the
port comes at connect), and the spares of a sandbox that stopped forwarding are closed.

Each sandbox has at most MAX_PENDING queries in flight (Docker's limit, per container too): one
sandbox flooding names its upstream never answers fills only its own share.

Only the TCP fallback for truncated answers runs in a short-lived thread (rare, and a blocking
connect+send+recv with a deadline is the simplest correct code for it); it posts its result back.
"""

from __future__ import annotations

import errno
import functools
import logging
import os
import secrets
import socket
import struct
import threading
import time
from typing import Protocol

from ..kernel import netns
from . import wire
from .handler import servfail
from .loop import IN, EventLoop, Timer
from .upstream import UpstreamAddr

# Per sandbox, as Docker's resolver (libnetwork resolver.go: maxConcurrent = 1024, one resolver
# per sandbox).
MAX_PENDING = 1024
MAX_TCP_FALLBACKS = 16
SPARES = 16  # UDP sockets made per entry into a sandbox's namespace
# Upstream answers we do not pass on but try the next upstream for (Docker does the same).
_RETRY_RCODES = frozenset({wire.SERVFAIL, wire.REFUSED, wire.NOTIMP, wire.FORMERR})


class Client(Protocol):
    alive: bool

    def reply(self, data: bytes) -> None: ...


class Pending:
    __slots__ = ("client", "data", "q", "max_size", "route", "attempt", "up", "sock", "qid", "timer", "done")

    def __init__(self, client: Client, data: bytes, q: wire.Query, max_size: int, route: "Route"):
        self.client, self.data, self.q, self.max_size, self.route = client, data, q, max_size, route
        self.attempt = 0
        self.up: Upstream | None = None  # the upstream its UDP socket waits on
        self.sock: socket.socket | None = None
        self.qid = 0
        self.timer: Timer | None = None
        self.done = False


class Upstream:
    """One upstream as seen from one sandbox: where it is and the queries waiting on it."""

    __slots__ = ("addr", "pending")

    def __init__(self, addr: UpstreamAddr):
        self.addr = addr
        self.pending: set[Pending] = set()


class Route:
    """A sandbox's way out: its upstreams, its namespace (where its queries' sockets are made)
    and its queries in flight."""

    def __init__(self, ns_fd: int | None, upstreams: list[Upstream], name: str = ""):
        self.ns_fd, self.upstreams, self.name = ns_fd, upstreams, name
        self.in_flight = 0
        self.spares: dict[int, list[socket.socket]] = {}  # address family -> unused UDP sockets
        self.used = False  # spares taken since the last trim()

    @classmethod
    def open(cls, ns_fd: int | None, addrs: list[UpstreamAddr], name: str = "") -> "Route":
        """Sandbox `name`'s route, from namespace `ns_fd`, to `addrs` (tried in this order)."""
        return cls(ns_fd, [Upstream(a) for a in addrs], name)


class Forwarder:
    def __init__(self, loop: EventLoop, log: logging.Logger, timeout: float):
        self.loop, self.log, self.timeout = loop, log, timeout
        self.count = 0  # in flight, all sandboxes
        self._tcp_active = 0
        self._home: int | None = None  # the loop thread's namespace, kept open: entered back often

    def close(self) -> None:
        if self._home is not None:
            os.close(self._home)
            self._home = None

    # --- on the loop thread ------------------------------------------------------------------
    def detach(self, route: Route) -> None:
        """The sandbox is gone: forget its queries (their clients are gone too)."""
        for up in route.upstreams:
            for p in list(up.pending):
                self._drop(p)
        route.used = False
        self.trim(route)

    def trim(self, route: Route) -> None:
        """Close the spare sockets of a sandbox that took none since the last call (once a second)."""
        if not route.used:
            for socks in route.spares.values():
                for s in socks:
                    s.close()
            route.spares.clear()
        route.used = False

    # --- forwarding ------------------------------------------------------------------------
    def forward(self, client: Client, data: bytes, q: wire.Query, max_size: int, route: Route) -> None:
        if route.in_flight >= MAX_PENDING:
            self._warn(("limit", route.name), "dns: sandbox %s has %d forwarded queries in flight; answering "
                       "SERVFAIL", route.name, MAX_PENDING)
            self._reply(client, servfail(data))
            return
        p = Pending(client, data, q, max_size, route)
        self.count += 1
        route.in_flight += 1
        self._try(p)

    def _try(self, p: Pending) -> None:
        """Send to the next upstream that takes it; none left: SERVFAIL."""
        ups = p.route.upstreams
        while p.attempt < len(ups):
            if self._send(p, ups[p.attempt]):
                attempt = p.attempt
                p.timer = self.loop.call_later(self.timeout, lambda: self._on_timeout(p, attempt))
                return
            p.attempt += 1
        self._finish(p, servfail(p.data))

    def _send(self, p: Pending, up: Upstream) -> bool:
        sock = None
        try:
            sock = self._socket(p.route, up.addr)
            # connect() binds a random free port (the kernel's ephemeral port choice is random)
            # and routes in the socket's own namespace, whichever thread calls it.
            sock.connect(up.addr.sockaddr)
            qid = secrets.randbits(16)
            sock.send(struct.pack("!H", qid) + p.data[2:])
        except OSError as e:
            if sock is not None:
                sock.close()
            self._warn(("unreachable", str(up.addr)), "dns: upstream %s unreachable from sandbox %s: %s",
                       up.addr, p.route.name, e)
            return False
        p.up, p.sock, p.qid = up, sock, qid
        up.pending.add(p)
        self.loop.register(sock.fileno(), functools.partial(self._on_readable, p), IN)
        return True

    def _socket(self, route: Route, addr: UpstreamAddr) -> socket.socket:
        kind = socket.SOCK_DGRAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC
        if addr.host_loopback or route.ns_fd is None:
            return socket.socket(addr.family, kind)
        spares = route.spares.setdefault(addr.family, [])
        if not spares:
            if self._home is None:
                self._home = netns.own_netns()
            try:
                with netns.inside(route.ns_fd, self._home):
                    for _ in range(SPARES):
                        spares.append(socket.socket(addr.family, kind))
            except OSError:
                if not spares:  # out of descriptors: this query fails, not only the spares
                    raise
        route.used = True
        return spares.pop()

    def _unlink(self, p: Pending) -> None:
        if p.up is not None:
            p.up.pending.discard(p)
            p.up = None
        if p.sock is not None:
            self.loop.unregister(p.sock.fileno())
            p.sock.close()
            p.sock = None
        if p.timer is not None:
            p.timer.cancel()
            p.timer = None

    def _next(self, p: Pending) -> None:
        self._unlink(p)
        p.attempt += 1
        self._try(p)

    def _on_timeout(self, p: Pending, attempt: int) -> None:
        if not p.done and p.attempt == attempt and p.up is not None:
            self._warn(("timeout", str(p.up.addr)), "dns: upstream %s did not answer within %.1fs",
                       p.up.addr, self.timeout)
            self._next(p)

    def _on_readable(self, p: Pending, _events: int) -> None:
        up, sock = p.up, p.sock
        # The socket is connected: only the upstream's address and port reach it.
        while p.sock is sock and sock is not None:
            try:
                data = sock.recv(65535)
            except BlockingIOError:
                return
            except OSError as e:
                self._warn(("failed", str(up.addr)), "dns: upstream %s failed: %s", up.addr, e)
                # ICMP port unreachable: this upstream is down for the sandbox's other queries too.
                for failed in list(up.pending) if e.errno == errno.ECONNREFUSED else [p]:
                    self._next(failed)
                return
            if len(data) < 12 or struct.unpack_from("!H", data)[0] != p.qid or not self._matches(p, data):
                continue  # late, duplicate or forged
            flags = struct.unpack_from("!H", data, 2)[0]
            if flags & wire.TC:
                self._unlink(p)
                self._start_tcp(p, up)
            elif flags & 0xF in _RETRY_RCODES:
                self._next(p)
            else:
                self._finish(p, data)
            return

    @staticmethod
    def _matches(p: Pending, data: bytes) -> bool:
        """An answer to our question: QR set, same question (case-insensitively)."""
        question = p.data[12 : p.q.qend]
        return bool(data[2] & 0x80) and data[12 : 12 + len(question)].lower() == question.lower()

    # --- TCP fallback ------------------------------------------------------------------------
    def _start_tcp(self, p: Pending, up: Upstream) -> None:
        if self._tcp_active >= MAX_TCP_FALLBACKS:
            self._next(p)
            return
        self._tcp_active += 1
        ns_fd = None if up.addr.host_loopback else p.route.ns_fd
        msg = struct.pack("!H", p.qid) + p.data[2:]
        threading.Thread(target=self._tcp_worker, args=(p, up, ns_fd, msg), daemon=True,
                         name="nsnet-dns-tcp").start()

    def _tcp_worker(self, p: Pending, up: Upstream, ns_fd: int | None, msg: bytes) -> None:
        answer, error = None, None
        try:
            answer = tcp_exchange(ns_fd, up.addr, msg, self.timeout)
        except Exception as e:  # reported on the loop thread
            error = e
        self.loop.post(lambda: self._tcp_done(p, up, answer, error))

    def _tcp_done(self, p: Pending, up: Upstream, answer: bytes | None, error: Exception | None) -> None:
        self._tcp_active -= 1
        if p.done:
            return
        if answer is None or answer[:2] != struct.pack("!H", p.qid) or not self._matches(p, answer):
            self._warn(("tcp", str(up.addr)), "dns: TCP to upstream %s failed: %s", up.addr, error or "bad answer")
            self._next(p)
        elif answer[3] & 0xF in _RETRY_RCODES:
            self._next(p)
        else:
            self._finish(p, answer)

    # --- the end -----------------------------------------------------------------------------
    def _finish(self, p: Pending, answer: bytes | None) -> None:
        if p.done:
            return
        self._drop(p)
        if answer is None:
            return
        answer = p.data[:2] + answer[2:]  # the client's own ID back
        if len(answer) > p.max_size:
            answer = wire.truncated(p.q, p.data, struct.unpack_from("!H", answer, 2)[0])
        self._reply(p.client, answer)

    def _drop(self, p: Pending) -> None:
        if not p.done:
            p.done = True
            self.count -= 1
            p.route.in_flight -= 1
            self._unlink(p)

    @staticmethod
    def _reply(client: Client, answer: bytes | None) -> None:
        if answer is not None and client.alive:
            client.reply(answer)

    def _warn(self, cause: tuple, fmt: str, *args: object) -> None:
        # A dead upstream or a flood fails every query alike: one line per cause a minute.
        self.loop.ratelog.warning(cause, fmt, *args)


def tcp_exchange(ns_fd: int | None, addr: UpstreamAddr, msg: bytes, timeout: float) -> bytes:
    """One query over TCP, from namespace `ns_fd`, within `timeout` seconds in all."""
    deadline = time.monotonic() + timeout
    with netns.socket_in(ns_fd, addr.family, socket.SOCK_STREAM) as s:

        def left() -> float:
            rest = deadline - time.monotonic()
            if rest <= 0:
                raise TimeoutError("upstream TCP timeout")
            return rest

        s.settimeout(left())
        s.connect(addr.sockaddr)
        s.settimeout(left())
        s.sendall(struct.pack("!H", len(msg)) + msg)
        head = _recv_exact(s, 2, left)
        return _recv_exact(s, struct.unpack("!H", head)[0], left)


def _recv_exact(s: socket.socket, n: int, left) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        s.settimeout(left())
        chunk = s.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("upstream closed the TCP connection")
        buf += chunk
    return bytes(buf)
