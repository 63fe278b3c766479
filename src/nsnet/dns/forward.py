"""Forwarding without blocking: the loop sends, and the answer is just another event.

Why not a pool of threads doing blocking queries: a dead upstream would hold each thread for
the whole timeout, and a burst of lookups for external names would queue behind it (and behind
local answers). Here each sandbox has one connected, non-blocking UDP socket per upstream,
served by the same epoll loop: a query is a send plus an entry in a pending table keyed by a
fresh random ID; the answer, the timeout or the ICMP "port unreachable" (which a *connected* UDP
socket reports as ECONNREFUSED, so a stopped upstream fails over at once) resolves it.

Only the TCP fallback for truncated answers runs in a short-lived thread (rare, and a blocking
connect+send+recv with a deadline is the simplest correct code for it); it posts its result back.
"""

from __future__ import annotations

import logging
import secrets
import socket
import struct
import threading
import time
from typing import Protocol

from . import netns, wire
from .handler import servfail
from .loop import IN, EventLoop, Timer
from .upstream import UpstreamAddr

MAX_PENDING = 1024  # Docker's limit on concurrent forwarded queries
MAX_TCP_FALLBACKS = 16
# Upstream answers we do not pass on but try the next upstream for (Docker does the same).
_RETRY_RCODES = frozenset({wire.SERVFAIL, wire.REFUSED, wire.NOTIMP, wire.FORMERR})


class Client(Protocol):
    alive: bool

    def reply(self, data: bytes) -> None: ...


class Pending:
    __slots__ = ("client", "data", "q", "max_size", "route", "attempt", "up", "qid", "timer", "done")

    def __init__(self, client: Client, data: bytes, q: wire.Query, max_size: int, route: "Route"):
        self.client, self.data, self.q, self.max_size, self.route = client, data, q, max_size, route
        self.attempt = 0
        self.up: Upstream | None = None
        self.qid = 0
        self.timer: Timer | None = None
        self.done = False


class Upstream:
    """One upstream as seen from one sandbox: a connected UDP socket and its pending queries."""

    __slots__ = ("addr", "sock", "connected", "pending")

    def __init__(self, addr: UpstreamAddr, sock: socket.socket):
        self.addr, self.sock, self.connected = addr, sock, False
        self.pending: dict[int, Pending] = {}


class Route:
    """A sandbox's way out: its upstreams, and its namespace for the TCP fallback's sockets."""

    def __init__(self, ns_fd: int | None, upstreams: list[Upstream]):
        self.ns_fd, self.upstreams = ns_fd, upstreams

    @classmethod
    def open(cls, ns_fd: int, addrs: list[UpstreamAddr]) -> "Route":
        """Create the sockets; call from the daemon's namespace (loopback upstreams stay there)."""
        ups: list[Upstream] = []
        try:
            for a in addrs:
                s = netns.socket_in(None if a.host_loopback else ns_fd, a.family, socket.SOCK_DGRAM)
                s.setblocking(False)
                ups.append(Upstream(a, s))
        except BaseException:
            for u in ups:
                u.sock.close()
            raise
        return cls(ns_fd, ups)


class Forwarder:
    def __init__(self, loop: EventLoop, log: logging.Logger, timeout: float):
        self.loop, self.log, self.timeout = loop, log, timeout
        self.count = 0
        self._tcp_active = 0
        self._last_warn = 0.0

    # --- wiring, on the loop thread --------------------------------------------------------
    def attach(self, route: Route) -> None:
        for up in route.upstreams:
            self.loop.register(up.sock.fileno(), lambda ev, up=up: self._on_readable(up), IN)

    def detach(self, route: Route) -> None:
        """The sandbox is gone: forget its queries (their clients are gone too), close sockets."""
        for up in route.upstreams:
            for p in list(up.pending.values()):
                self._drop(p)
            self.loop.unregister(up.sock.fileno())
            up.sock.close()

    # --- forwarding ------------------------------------------------------------------------
    def forward(self, client: Client, data: bytes, q: wire.Query, max_size: int, route: Route) -> None:
        if self.count >= MAX_PENDING:
            self._warn("more than %d forwarded queries in flight; answering SERVFAIL", MAX_PENDING)
            self._reply(client, servfail(data))
            return
        p = Pending(client, data, q, max_size, route)
        self.count += 1
        self._try(p)

    def _try(self, p: Pending) -> None:
        """Send to the next upstream that takes it; none left: SERVFAIL."""
        ups = p.route.upstreams
        while p.attempt < len(ups):
            up = ups[p.attempt]
            if self._send(p, up):
                p.timer = self.loop.call_later(self.timeout, lambda: self._on_timeout(p, up))
                return
            p.attempt += 1
        self._finish(p, servfail(p.data))

    def _send(self, p: Pending, up: Upstream) -> bool:
        try:
            if not up.connected:
                # connect() routes in the socket's own namespace, whichever thread calls it;
                # retried per query, so a sandbox that gains a route later starts working.
                up.sock.connect(up.addr.sockaddr)
                up.connected = True
            # Unpredictable IDs: the socket's port is fixed for its life, so the ID (and the
            # question, checked on return) is what stands between a sandbox and forged answers.
            qid = secrets.randbits(16)
            while qid in up.pending:
                qid = secrets.randbits(16)
            up.sock.send(struct.pack("!H", qid) + p.data[2:])
        except OSError as e:
            self._warn("dns: upstream %s unreachable: %s", up.addr, e)
            return False
        p.up, p.qid = up, qid
        up.pending[qid] = p
        return True

    def _unlink(self, p: Pending) -> None:
        if p.up is not None and p.up.pending.get(p.qid) is p:
            del p.up.pending[p.qid]
        p.up = None
        if p.timer is not None:
            p.timer.cancel()
            p.timer = None

    def _next(self, p: Pending) -> None:
        self._unlink(p)
        p.attempt += 1
        self._try(p)

    def _on_timeout(self, p: Pending, up: Upstream) -> None:
        if not p.done and p.up is up:
            self._warn("dns: upstream %s did not answer within %.1fs", up.addr, self.timeout)
            self._next(p)

    def _on_readable(self, up: Upstream) -> None:
        for _ in range(256):
            try:
                data = up.sock.recv(65535)
            except BlockingIOError:
                return
            except OSError as e:
                # ICMP unreachable for an earlier send: this upstream is down for everyone.
                self._warn("dns: upstream %s failed: %s", up.addr, e)
                for p in list(up.pending.values()):
                    self._next(p)
                continue
            if len(data) < 12:
                continue
            p = up.pending.get(struct.unpack_from("!H", data)[0])
            if p is None or not self._matches(p, data):
                continue  # late, duplicate or forged
            flags = struct.unpack_from("!H", data, 2)[0]
            if flags & wire.TC:
                self._unlink(p)
                self._start_tcp(p, up)
            elif flags & 0xF in _RETRY_RCODES:
                self._next(p)
            else:
                self._finish(p, data)

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
            self._warn("dns: TCP to upstream %s failed: %s", up.addr, error or "bad answer")
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
            self._unlink(p)

    @staticmethod
    def _reply(client: Client, answer: bytes | None) -> None:
        if answer is not None and client.alive:
            client.reply(answer)

    def _warn(self, fmt: str, *args: object) -> None:
        now = time.monotonic()
        if now - self._last_warn > 2.0:  # a dead upstream must not flood the log
            self._last_warn = now
            self.log.warning(fmt, *args)


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
