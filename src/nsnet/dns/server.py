"""The embedded resolver: 127.0.0.11:53 inside every sandbox, all served by one daemon thread.

Each sandbox gets a UDP socket and a listening TCP socket bound to 127.0.0.11:53 *inside its
own network namespace* (netns.py); the daemon serves all of them from one epoll loop
(loop.py). A socket knows its sandbox, so the answer depends on who asks (records.py).

Hot path: a per-sandbox cache maps the query's bytes after the 2-byte ID to prebuilt answers,
so a repeated query costs recvfrom, one dict lookup, and sendto with the ID patched in. The key
holds the question verbatim (0x20 case randomisation just makes other keys) and the flags and
OPT record, so each cached answer is exact for the query that built it. A change of records
outdates every cache on the loop thread before it returns (each sandbox drops its own at its
next query): no answer from older records survives it.
"""

from __future__ import annotations

import functools
import itertools
import logging
import os
import socket
import time

from ..kernel import netns
from ..resolvconf import nameservers
from . import handler
from .forward import Forwarder, Route
from .handler import FORWARD, REPLY
from .loop import ERR, HUP, IN, OUT, EventLoop
from .ratelog import exception_site
from .records import Record, RecordSet
from .upstream import resolve_upstreams

CACHE_ENTRIES = 4096  # per sandbox and transport; a flood of distinct queries just resets it
MAX_TCP_CONNS = 64  # per sandbox
TCP_WBUF_LIMIT = 1 << 20  # a client that does not read its answers is cut off
IP_FREEBIND = 15  # bind 127.0.0.11 even before the sandbox's lo is up


class _UdpClient:
    __slots__ = ("sock", "addr")
    alive = True

    def __init__(self, sock: socket.socket, addr: tuple):
        self.sock, self.addr = sock, addr

    def reply(self, data: bytes) -> None:
        try:
            self.sock.sendto(data, self.addr)
        except OSError:
            pass


class _TcpConn:
    __slots__ = ("server", "sb", "sock", "fd", "rbuf", "wbuf", "last", "alive", "writing")

    def __init__(self, server: "DnsServer", sb: "_Sandbox", sock: socket.socket):
        self.server, self.sb, self.sock, self.fd = server, sb, sock, sock.fileno()
        self.rbuf, self.wbuf = bytearray(), bytearray()
        self.last = time.monotonic()
        self.alive = True
        self.writing = False  # registered for EPOLLOUT: an answer is waiting for buffer room

    def reply(self, data: bytes) -> None:
        self.server._tcp_write(self, data)


class _Sandbox:
    __slots__ = ("id", "ns_fd", "udp", "tcp", "route", "ucache", "tcache", "rotor", "conns", "gen")

    def __init__(self, sandbox_id: str, ns_fd: int, udp: socket.socket, tcp: socket.socket, route: Route):
        self.id, self.ns_fd, self.udp, self.tcp, self.route = sandbox_id, ns_fd, udp, tcp, route
        self.ucache: dict = {}
        self.tcache: dict = {}
        self.rotor: dict = {}  # round robin for answers that are not cached (EDNS cookies)
        self.conns: set[_TcpConn] = set()
        self.gen = 0           # the records generation its caches were filled from


class DnsServer:
    def __init__(self, upstreams: list[str] | None = None, log: logging.Logger | None = None, *,
                 timeout: float = 4.0, address: str = "127.0.0.11", port: int = 53,
                 tcp_idle: float = 10.0, resolv_conf: str = "/etc/resolv.conf"):
        """`upstreams`: the host's resolvers (default: nameservers of `resolv_conf`, read now);
        `timeout`: per upstream try, as Docker's 4 s; `tcp_idle`: idle client connections close."""
        self.log = log or logging.getLogger("nsnet.dns")
        self.address, self.port, self.tcp_idle = address, port, tcp_idle
        if upstreams is None:
            upstreams = nameservers(resolv_conf)
        self._default_upstreams = resolve_upstreams(upstreams, from_host=True, own_address=address)
        if not self._default_upstreams:
            self.log.warning("dns: no upstream resolvers; names that are not local get SERVFAIL")
        self._loop = EventLoop(self.log)
        self._fwd = Forwarder(self._loop, self.log, timeout)
        self._records = RecordSet()
        self._records_gen = 0  # bumped by each change of records; see _fresh()
        self._sandboxes: dict[str, _Sandbox] = {}
        self._sweep_gen = 0

    # --- API ---------------------------------------------------------------------------------
    def start(self) -> None:
        self._loop.start()
        self._sweep_gen += 1
        gen = self._sweep_gen
        self._loop.post(lambda: self._sweep(gen))

    def stop(self) -> None:
        for sid in list(self._sandboxes):
            self.remove_sandbox(sid)
        self._sweep_gen += 1
        self._loop.stop()

    def close(self) -> None:
        """stop() and release the loop's own descriptors (the server cannot restart after)."""
        self.stop()
        self._fwd.close()
        self._loop.close()

    def set_records(self, records: RecordSet) -> None:
        """Answer from `records` (now the server's own) from the moment this returns."""
        self._log_unservable(self._loop.call(lambda: self._apply(records)))

    def change_records(self, add: list[Record], remove: list[tuple[str, str]]) -> None:
        """Records added and (sandbox id, network id) pairs removed, in effect when this returns."""
        def change():
            self._records.update(add, remove)
            self._records_gen += 1
            notes = self._records.unservable
            return {key: notes[key] for key in ((r.sandbox_id, r.network_id) for r in add) if key in notes}
        self._log_unservable(self._loop.call(change))

    def _log_unservable(self, notes: dict[tuple[str, str], str]) -> None:
        """Once per record added, here rather than per query (on the caller's thread, not the loop's)."""
        for (sandbox_id, network_id), why in notes.items():
            self.log.warning("dns: sandbox %s on network %s: %s", sandbox_id, network_id, why)

    def sandboxes(self) -> list[str]:
        return list(self._sandboxes)

    def add_sandbox(self, sandbox_id: str, netns_path_or_fd: str | int,
                    upstreams: list[str] | None = None, ports: tuple[int, int] | None = None) -> None:
        """Serve 127.0.0.11:53 (UDP and TCP) inside that namespace. `upstreams`: the sandbox's
        own --dns servers (reached from its namespace), else the host's. `ports`: UDP and TCP
        ports to bind instead of the server's port (to serve again where a previous daemon did).
        Again for a known sandbox: its sockets are replaced."""
        if sandbox_id in self._sandboxes:
            self.remove_sandbox(sandbox_id)
        addrs = (resolve_upstreams(upstreams, from_host=False, own_address=self.address)
                 if upstreams else self._default_upstreams)
        ns_fd = netns.open_netns(netns_path_or_fd)
        udp = tcp = None
        try:
            with netns.inside(ns_fd):
                udp = self._listener(socket.SOCK_DGRAM, ports[0] if ports else self.port)
                tcp = self._listener(socket.SOCK_STREAM, ports[1] if ports else self.port)
            route = Route.open(ns_fd, addrs, sandbox_id)
            sb = _Sandbox(sandbox_id, ns_fd, udp, tcp, route)
            self._loop.call(lambda: self._attach(sb))
        except BaseException:
            for s in (udp, tcp):
                if s is not None:
                    s.close()
            netns_close(ns_fd)
            raise

    def ports(self, sandbox_id: str) -> tuple[int, int]:
        """The UDP and TCP ports the resolver listens on inside that sandbox (for port=0)."""
        sb = self._sandboxes[sandbox_id]
        return sb.udp.getsockname()[1], sb.tcp.getsockname()[1]

    def remove_sandbox(self, sandbox_id: str) -> None:
        self._loop.call(lambda: self._detach(sandbox_id))

    def stats(self) -> dict:
        return {"sandboxes": len(self._sandboxes), "forwarding": self._fwd.count}

    # --- loop-thread side ------------------------------------------------------------------
    def _listener(self, kind: int, port: int) -> socket.socket:
        s = socket.socket(socket.AF_INET, kind)
        try:
            s.setsockopt(socket.SOL_IP, IP_FREEBIND, 1)
            if kind == socket.SOCK_STREAM:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            else:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)  # ride out bursts
            s.bind((self.address, port))
            if kind == socket.SOCK_STREAM:
                s.listen(128)
            s.setblocking(False)
        except BaseException:
            s.close()
            raise
        return s

    def _apply(self, records: RecordSet) -> dict[tuple[str, str], str]:
        """Returns the notes on unservable records that the old set did not have (to log)."""
        # Caches are dropped lazily, by the next query of each sandbox (_fresh): an attach must not
        # cost a walk over a thousand sandboxes.
        old, self._records = self._records.unservable, records
        self._records_gen += 1
        return {k: why for k, why in records.unservable.items() if old.get(k) != why}

    def _fresh(self, sb: _Sandbox) -> None:
        """Drop `sb`'s cached answers if they come from older records."""
        if sb.gen != self._records_gen:
            sb.ucache, sb.tcache, sb.rotor = {}, {}, {}
            sb.gen = self._records_gen

    def _attach(self, sb: _Sandbox) -> None:
        self._sandboxes[sb.id] = sb
        self._loop.register(sb.udp.fileno(), functools.partial(self._on_udp, sb))
        self._loop.register(sb.tcp.fileno(), functools.partial(self._on_accept, sb))

    def _detach(self, sandbox_id: str) -> None:
        sb = self._sandboxes.pop(sandbox_id, None)
        if sb is None:
            return
        for conn in list(sb.conns):
            self._tcp_close(conn)
        self._fwd.detach(sb.route)
        for s in (sb.udp, sb.tcp):
            self._loop.unregister(s.fileno())
            s.close()
        netns_close(sb.ns_fd)

    def _sweep(self, gen: int) -> None:
        """Close idle TCP clients and unused forwarding sockets, and report the counts of log
        lines held back, once a second (one chain of timers per start())."""
        if gen != self._sweep_gen:
            return
        self._loop.ratelog.flush()
        limit = time.monotonic() - self.tcp_idle
        for sb in self._sandboxes.values():
            for conn in [c for c in sb.conns if c.last < limit]:
                self._tcp_close(conn)
            self._fwd.trim(sb.route)
        self._loop.call_later(1.0, lambda: self._sweep(gen))

    # UDP: the hot path. Drains up to 256 datagrams per wakeup (epoll is level-triggered, so
    # the rest wait for the next round and other sandboxes get their turn).
    def _on_udp(self, sb: _Sandbox, _events: int) -> None:
        self._fresh(sb)
        sock = sb.udp
        recvfrom, sendto, cache = sock.recvfrom, sock.sendto, sb.ucache
        for _ in range(256):
            try:
                data, addr = recvfrom(4096)
            except OSError:  # drained (BlockingIOError) or a socket error: wait for epoll
                return
            hit = cache.get(data[2:])
            if hit is not None:
                try:
                    sendto(data[:2] + next(hit), addr)
                except OSError:
                    pass
                continue
            self._slow(sb, data, _UdpClient(sock, addr), False)

    def _slow(self, sb: _Sandbox, data: bytes, client, tcp: bool) -> None:
        try:
            out = handler.handle(self._records, sb.id, data, tcp)
        except Exception as e:  # a bug for one record must not cost every query a traceback
            self._loop.ratelog.exception(exception_site(e), "dns: a query from sandbox %s failed; "
                                         "answering SERVFAIL", sb.id)
            answer = handler.servfail(data)
            if answer is not None:
                client.reply(answer)
            return
        if out.action == REPLY:
            replies = out.replies
            if len(replies) > 1 and not out.cacheable:
                key = (out.query.name, out.query.qtype)
                if key not in sb.rotor and len(sb.rotor) >= CACHE_ENTRIES:
                    sb.rotor.clear()
                turn = sb.rotor.get(key, 0)
                sb.rotor[key] = turn + 1
                client.reply(replies[turn % len(replies)])
                return
            client.reply(replies[0])
            if out.cacheable:
                cache = sb.tcache if tcp else sb.ucache
                if len(cache) >= CACHE_ENTRIES:
                    cache.clear()
                rotations = itertools.cycle([r[2:] for r in out.replies])
                next(rotations)  # replies[0] just went out
                cache[data[2:]] = rotations
        elif out.action == FORWARD:
            if sb.route.upstreams:
                self._fwd.forward(client, data, out.query, out.max_size, sb.route)
            else:
                answer = handler.servfail(data)
                if answer is not None:
                    client.reply(answer)

    # TCP: length-prefixed messages, several per connection, answered in any order (RFC 7766).
    def _on_accept(self, sb: _Sandbox, _events: int) -> None:
        for _ in range(64):
            try:
                s, _addr = sb.tcp.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            if len(sb.conns) >= MAX_TCP_CONNS:
                s.close()
                continue
            s.setblocking(False)
            conn = _TcpConn(self, sb, s)
            sb.conns.add(conn)
            self._loop.register(conn.fd, functools.partial(self._on_conn, conn))

    def _on_conn(self, conn: _TcpConn, events: int) -> None:
        if events & OUT:
            self._tcp_flush(conn)
        if not conn.alive or not events & (IN | ERR | HUP):
            return
        try:
            chunk = conn.sock.recv(65536)
        except BlockingIOError:
            return
        except OSError:
            chunk = b""
        if not chunk:
            self._tcp_close(conn)
            return
        conn.last = time.monotonic()
        buf = conn.rbuf
        buf += chunk
        while len(buf) >= 2 and conn.alive:
            n = (buf[0] << 8) | buf[1]
            if n < 12:  # not even a header: the stream cannot be trusted any more
                self._tcp_close(conn)
                return
            if len(buf) < 2 + n:
                break
            data = bytes(buf[2 : 2 + n])
            del buf[: 2 + n]
            self._fresh(conn.sb)
            hit = conn.sb.tcache.get(data[2:])
            if hit is not None:
                self._tcp_write(conn, data[:2] + next(hit))
            else:
                self._slow(conn.sb, data, conn, True)

    def _tcp_write(self, conn: _TcpConn, data: bytes) -> None:
        if not conn.alive:
            return
        conn.wbuf += len(data).to_bytes(2, "big") + data
        if len(conn.wbuf) > TCP_WBUF_LIMIT:
            self._tcp_close(conn)
            return
        self._tcp_flush(conn)

    def _tcp_flush(self, conn: _TcpConn) -> None:
        try:
            sent = conn.sock.send(conn.wbuf) if conn.wbuf else 0
        except BlockingIOError:
            sent = 0
        except OSError:
            self._tcp_close(conn)
            return
        del conn.wbuf[:sent]
        conn.last = time.monotonic()
        if bool(conn.wbuf) != conn.writing:
            conn.writing = bool(conn.wbuf)
            self._loop.modify(conn.fd, IN | OUT if conn.writing else IN)

    def _tcp_close(self, conn: _TcpConn) -> None:
        if not conn.alive:
            return
        conn.alive = False
        conn.sb.conns.discard(conn)
        self._loop.unregister(conn.fd)
        conn.sock.close()


def netns_close(fd: int) -> None:
    try:
        os.close(fd)
    except OSError:
        pass
