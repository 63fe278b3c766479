"""Talks to the daemon's API over <root>/nsnet.sock, starting the daemon first when none runs.

Imported by the CLI on every command: standard library only, nothing slow.
"""
from __future__ import annotations

import http.client
import json
import os
import socket
import subprocess
import sys
import time

DEFAULT_ROOT = "/var/lib/nsnet"


class ApiError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float):
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(self.timeout)
        s.connect(self._path)
        self.sock = s


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
                conn = self._connection()
                conn.request(method, path, body=data, headers={"Content-Type": "application/json"} if data else {})
                resp = conn.getresponse()
                payload = resp.read()
                break
            except (FileNotFoundError, ConnectionRefusedError):
                self._conn = None
                if not self.autostart or attempt:
                    raise ApiError(503, f"no nsnet daemon answers on {self.sock}: start one with `nsnet daemon`")
                self.start_daemon()
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
                self._conn = None  # a kept-alive connection the daemon closed: ask again once
                if attempt:
                    raise
        result = json.loads(payload) if payload else None
        if resp.status >= 400:
            raise ApiError(resp.status, (result or {}).get("message", f"HTTP {resp.status}"))
        return result

    def _connection(self) -> _UnixConnection:
        if self._conn is None:
            self._conn = _UnixConnection(self.sock, self.timeout)
        return self._conn

    def get(self, path: str):
        return self.request("GET", path)

    def post(self, path: str, body=None):
        return self.request("POST", path, body if body is not None else {})

    def delete(self, path: str):
        return self.request("DELETE", path)

    def start_daemon(self, wait: float = 30.0) -> None:
        """Start `nsnet daemon` in the background for this root and wait until it answers."""
        os.makedirs(self.root, exist_ok=True)
        with open(os.path.join(self.root, "daemon.log"), "ab") as log:
            subprocess.Popen([sys.executable, "-m", "nsnet", "--root", self.root, "daemon"],
                             stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            try:
                s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                s.connect(self.sock)
                s.close()
                return
            except (FileNotFoundError, ConnectionRefusedError):
                time.sleep(0.02)
        raise ApiError(503, f"the nsnet daemon did not start within {wait:.0f} s: see {self.root}/daemon.log")
