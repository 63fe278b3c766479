"""Talks to the daemon's API over <root>/nsnet.sock, starting the daemon first when none runs.

Imported by the CLI on every command: standard library only, nothing slow.
"""
from __future__ import annotations

import json
import os
import socket
import sys
import time

from . import DEFAULT_ROOT
# RFC 3986's unreserved characters: everything else in a name is percent-encoded (urllib.parse.quote with
# safe="", without the ~2 ms its import adds to every command).
_UNRESERVED = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")


def _quote(text) -> str:
    return "".join(chr(b) if b in _UNRESERVED else f"%{b:02X}" for b in str(text).encode())


def api_path(*segments: str, **query) -> str:
    """`/a/b?k=v` with every segment and value quoted: a name is one segment whatever it holds
    (`web?force=1` must not become a query, `a b` nor `../x` a broken or another path). Query values
    that are None or False are left out."""
    path = "/" + "/".join(_quote(s) for s in segments)
    pairs = [f"{_quote(k)}={_quote('1' if v is True else v)}" for k, v in query.items()
             if v is not None and v is not False]
    return path + ("?" + "&".join(pairs) if pairs else "")


class ApiError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


class _Connection:
    """HTTP/1.1 over a unix socket, kept alive. Hand-written because http.client pulls in the email
    package, which costs the CLI ~40 ms of start-up; our daemon speaks a small, known dialect."""

    def __init__(self, path: str, timeout: float):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect(path)
        self.buf = b""

    def request(self, method: str, path: str, body: bytes | None) -> tuple[int, bytes]:
        head = f"{method} {path} HTTP/1.1\r\nHost: nsnet\r\nContent-Length: {len(body or b'')}\r\n"
        if body:
            head += "Content-Type: application/json\r\n"
        try:
            self.sock.sendall(head.encode() + b"\r\n" + (body or b""))
        except BrokenPipeError:
            pass  # refused before it read it all (e.g. a body too big): its answer is still there to read
        while b"\r\n\r\n" not in self.buf:
            self._fill()
        header, self.buf = self.buf.split(b"\r\n\r\n", 1)
        lines = header.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        length = 0
        for line in lines[1:]:
            name, _, value = line.partition(":")
            if name.strip().lower() == "content-length":
                length = int(value)
        while len(self.buf) < length:
            self._fill()
        payload, self.buf = self.buf[:length], self.buf[length:]
        return status, payload

    def _fill(self) -> None:
        chunk = self.sock.recv(65536)
        if not chunk:
            raise ConnectionResetError("the daemon closed the connection")
        self.buf += chunk

    def close(self) -> None:
        self.sock.close()


class Client:
    def __init__(self, root: str | None = None, autostart: bool = True, timeout: float = 120.0):
        self.root = root or os.environ.get("NSNET_ROOT") or DEFAULT_ROOT
        self.sock = os.path.join(self.root, "nsnet.sock")
        self.autostart = autostart
        self.timeout = timeout
        self._conn = None

    def request(self, method: str, path: str, body=None):
        data = json.dumps(body).encode() if body is not None else None
        for attempt in range(2):
            try:
                status, payload = self._connection().request(method, path, data)
                break
            except (FileNotFoundError, ConnectionRefusedError):
                self._conn = None
                if not self.autostart or attempt:
                    raise ApiError(503, f"no nsnet daemon answers on {self.sock}: start one with `nsnet daemon`")
                self.start_daemon()
            except (BrokenPipeError, ConnectionResetError):
                self._conn = None  # a kept-alive connection the daemon closed: ask again once
                if attempt:
                    raise
        result = json.loads(payload) if payload else None
        if status >= 400:
            raise ApiError(status, (result or {}).get("message", f"HTTP {status}"))
        return result

    def _connection(self) -> _Connection:
        if self._conn is None:
            self._conn = _Connection(self.sock, self.timeout)
        return self._conn

    def get(self, path: str):
        return self.request("GET", path)

    def post(self, path: str, body=None):
        return self.request("POST", path, body if body is not None else {})

    def delete(self, path: str):
        return self.request("DELETE", path)

    def start_daemon(self, wait: float = 30.0, python: str | None = None) -> None:
        """Start `nsnet daemon` in the background for this root (on `python`, this one's by default) and wait
        until it answers; if it exits first, say why at once (the last line of its log), not after `wait` seconds."""
        import subprocess  # here, not at the top: ~5 ms of every other command's start-up

        os.makedirs(self.root, mode=0o700, exist_ok=True)
        path = os.path.join(self.root, "daemon.log")
        log = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        start = os.lseek(log, 0, os.SEEK_END)
        try:
            proc = subprocess.Popen([python or sys.executable, "-m", "nsnet", "--root", self.root, "daemon"],
                                    stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True)
        finally:
            os.close(log)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            try:
                s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                s.connect(self.sock)
                s.close()
                return
            except (FileNotFoundError, ConnectionRefusedError):
                pass
            # Exited, and no other daemon holds the root (two CLIs may start one each; one wins).
            if proc.poll() is not None and not self._daemon_lock_held():
                raise ApiError(503, f"the nsnet daemon exited at start: {_last_line(path, start)} (see {path})")
            time.sleep(0.02)
        raise ApiError(503, f"the nsnet daemon did not start within {wait:.0f} s: see {path}")

    def _daemon_lock_held(self) -> bool:
        import fcntl

        try:
            fd = os.open(os.path.join(self.root, "daemon.lock"), os.O_RDONLY)
        except FileNotFoundError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            return False
        except BlockingIOError:
            return True
        finally:
            os.close(fd)


def _last_line(path: str, offset: int) -> str:
    """The last line the daemon wrote to its log after `offset`, without the logger's prefix."""
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            lines = [l for l in f.read()[-65536:].decode(errors="replace").splitlines() if l.strip()]
    except OSError:
        lines = []
    if not lines:
        return "it wrote nothing"
    line = lines[-1].strip()
    # "2026-11-30 08:00:00,123 nsnet.daemon ERROR cannot start: why" -> "why"
    parts = line.split(" ", 4)
    line = parts[4] if len(parts) == 5 and parts[3] in ("ERROR", "CRITICAL", "WARNING", "INFO") else line
    return line.removeprefix("cannot start: ")
