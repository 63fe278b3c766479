"""Raw HTTP/1.1 over a daemon's unix socket: the bytes a test chooses, not what the client would send."""
from __future__ import annotations

import json
import socket


def send(path: str, raw: bytes, timeout: float = 20.0) -> tuple[int, dict, bytes]:
    """Send `raw` on a new connection and read one response: (status, headers, body)."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    s.connect(path)
    try:
        try:
            s.sendall(raw)
        except BrokenPipeError:
            pass   # the daemon answered and hung up before reading it all: the answer is there to read
        buf = b""
        while b"\r\n\r\n" not in buf:
            chunk = s.recv(65536)
            if not chunk:
                raise ConnectionError(f"no response, got {buf!r}")
            buf += chunk
        head, body = buf.split(b"\r\n\r\n", 1)
        lines = head.decode("latin-1").split("\r\n")
        headers = {k.strip().lower(): v.strip() for k, _, v in (l.partition(":") for l in lines[1:])}
        length = int(headers.get("content-length", 0))
        while len(body) < length:
            chunk = s.recv(65536)
            if not chunk:
                break
            body += chunk
        return int(lines[0].split()[1]), headers, body[:length]
    finally:
        s.close()


def request(path: str, method: str, target: str, body=None, headers: dict | None = None):
    """One request; `body` is bytes as they are, or anything else as JSON. Returns (status, headers, body)."""
    data = body if isinstance(body, bytes) else (b"" if body is None else json.dumps(body).encode())
    head = f"{method} {target} HTTP/1.1\r\nHost: nsnet\r\n"
    for k, v in {"Content-Length": str(len(data)), **(headers or {})}.items():
        if v is not None:
            head += f"{k}: {v}\r\n"
    return send(path, head.encode() + b"\r\n" + data)
