"""The API's HTTP/1.1 server on the unix socket: JSON in and out, the caller's credentials, and the
limits that keep one client from holding the daemon."""
from __future__ import annotations

import json
import logging
import re
import socket
import socketserver
import struct
import threading
import time
from http.server import BaseHTTPRequestHandler

from ..kernel.procs import start_time
from . import api

log = logging.getLogger("nsnet.daemon")


# Limits that keep one client from holding the daemon: a request must arrive whole within
# REQUEST_TIMEOUT (a kept-alive connection may wait that long for its next one), a body is at most
# MAX_BODY bytes, and at most MAX_CONNECTIONS connections are served at once (each is a thread).
REQUEST_TIMEOUT = 10.0
MAX_BODY = 1 << 20
MAX_CONNECTIONS = 64
CONTENT_LENGTH = re.compile(r"[0-9]{1,12}")


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # A request line too garbled to name a version still gets a status line and headers (http.server
    # would take it for HTTP/0.9 and send a bare body).
    default_request_version = "HTTP/1.0"
    dispatch = staticmethod(api.dispatch)   # -> (status, JSON); the Docker plugin (dockerplugin.py) has its own

    def setup(self) -> None:
        super().setup()
        self.peer = _peer(self.connection)

    def handle_one_request(self) -> None:
        self.server.deadlines.arm(self.connection)
        try:
            super().handle_one_request()
        finally:
            self.server.deadlines.disarm(self.connection)

    def __getattr__(self, name: str):
        # Every method reaches dispatch, which answers 405 (or 404) in JSON: PUT, PATCH, HEAD...
        if name.startswith("do_"):
            return self._serve
        raise AttributeError(name)

    def _serve(self) -> None:
        if self.headers.get("Transfer-Encoding"):
            return self._refuse(411, "send the body with a Content-Length, not in chunks")
        length = (self.headers.get("Content-Length") or "0").strip()
        if not CONTENT_LENGTH.fullmatch(length):
            return self._refuse(400, f"Content-Length must be a number of bytes, not {length[:20]!r}")
        if int(length) > MAX_BODY:
            log.info("api: refused a body of %s bytes from pid %s (at most %d)", length,
                     self.peer and self.peer[0], MAX_BODY)
            return self._refuse(413, f"the body is {length} bytes: at most {MAX_BODY} are accepted")
        body = self.rfile.read(int(length))
        if len(body) < int(length):   # the client went away, or took longer than REQUEST_TIMEOUT
            self.close_connection = True
            return
        self.server.deadlines.disarm(self.connection)   # now the work may take as long as it takes
        try:
            status, result = self.dispatch(self.server.daemon, self.command, self.path, body, self.peer)
        except Exception as e:  # a bug: say it in one line, keep serving, log the trace
            log.exception("%s %s failed", self.command, self.path)
            status, result = 500, {"message": " ".join(f"internal error: {e}".split())[:300]}   # one line
        self._reply(status, result)

    def _refuse(self, status: int, message: str) -> None:
        """Answer and hang up: whatever the client sends next cannot be told apart from this request's body."""
        self.close_connection = True
        self._reply(status, {"message": message})

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        # http.server's own refusals (a malformed request line, headers too long...) in our JSON, not HTML;
        # all are about the input (505: an HTTP version it does not speak), so all are 4xx.
        self._refuse(code if code < 500 else 400, message or self.responses.get(code, ("error",))[0])

    def _reply(self, status: int, result) -> None:
        data = json.dumps(result).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def log_message(self, fmt, *args) -> None:
        log.debug("api: " + fmt, *args)

    def address_string(self) -> str:
        return "unix"


def _peer(sock: socket.socket) -> tuple[int, int | None] | None:
    """The connecting process (pid, start time) as the kernel tells it (SO_PEERCRED), not as it claims."""
    pid, _uid, _gid = struct.unpack("3i", sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))
    return (pid, start_time(pid)) if pid > 0 else None


class Deadlines:
    """Hangs up on connections whose request is not whole REQUEST_TIMEOUT seconds after it could begin.
    One thread for all connections: a socket timeout alone is per recv, and a client sending a byte
    every few seconds would never meet it."""

    def __init__(self, timeout: float):
        self.timeout = timeout
        self._due: dict[socket.socket, float] = {}
        self._lock = threading.Lock()
        threading.Thread(target=self._run, name="api-deadlines", daemon=True).start()

    def arm(self, sock: socket.socket) -> None:
        with self._lock:
            self._due[sock] = time.monotonic() + self.timeout

    def disarm(self, sock: socket.socket) -> None:
        with self._lock:
            self._due.pop(sock, None)

    def _run(self) -> None:
        while True:
            time.sleep(min(1.0, self.timeout / 4))
            now = time.monotonic()
            with self._lock:
                late = [s for s, due in self._due.items() if due <= now]
                for s in late:   # under the lock: a request read whole and disarmed is never cut
                    del self._due[s]
                    log.info("api: hung up on a connection that sent no whole request in %.0f s", self.timeout)
                    try:
                        s.shutdown(socket.SHUT_RDWR)   # its thread's read returns at once and the thread ends
                    except OSError:
                        pass


class Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(self, path: str, handler, max_connections: int = MAX_CONNECTIONS,
                 timeout: float = REQUEST_TIMEOUT):
        super().__init__(path, handler)
        self.deadlines = Deadlines(timeout)
        self.max_connections = max_connections
        self._slots = threading.BoundedSemaphore(max_connections)
        self._full = False   # the limit was hit and said so in the log; said again after it clears

    def process_request(self, request, client_address) -> None:
        if not self._slots.acquire(blocking=False):
            if not self._full:
                self._full = True
                log.warning("api: %d connections open, the most served at once: refusing new ones until "
                            "some close", self.max_connections)
            self._turn_away(request)
            return
        self._full = False
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request, client_address) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def _turn_away(self, request) -> None:
        data = json.dumps({"message": f"the daemon serves {self.max_connections} connections at once: "
                                      "try again shortly"}).encode()
        try:
            request.settimeout(0.2)
            request.sendall(b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
                            b"Connection: close\r\nContent-Length: %d\r\n\r\n" % len(data) + data)
        except OSError:
            pass
        self.shutdown_request(request)
