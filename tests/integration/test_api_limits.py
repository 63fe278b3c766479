"""One client cannot hold the daemon: a request must arrive whole in time, bodies are bounded, and so
are the connections served at once. Each limit says so in one line of the daemon's log."""
import json
import os
import socket
import threading
import time

from conftest import changes, wait_for
from rawhttp import request

from nsnet.daemon.httpd import MAX_CONNECTIONS, REQUEST_TIMEOUT as TIMEOUT


def _threads(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return int(next(l for l in f if l.startswith("Threads:")).split()[1])


def _connect(path: str) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(path)
    return s


def _log(host) -> str:
    return open(os.path.join(host.root, "daemon.log")).read()


def test_a_big_body_gets_413_in_one_line_and_is_not_read(host):
    host.nsnet("network", "create", "red")
    sock = os.path.join(host.root, "nsnet.sock")
    before = host.state()
    body = json.dumps({"Name": "big", "Labels": {"k": "x" * (2 << 20)}}).encode()
    t0 = time.monotonic()
    status, _, data = request(sock, "POST", "/networks", body)
    assert status == 413 and "\n" not in json.loads(data)["message"]
    assert time.monotonic() - t0 < 5
    assert not changes(before, host.state())
    assert "refused a body of" in _log(host)


def test_a_slow_client_does_not_hold_the_daemon(host):
    host.nsnet("network", "create", "red")
    sock = os.path.join(host.root, "nsnet.sock")
    pid = host.daemon_pid()
    baseline = _threads(pid)
    half = _connect(sock)     # half a request, then nothing
    half.sendall(b"POST /networks HTTP/1.1\r\nContent-Length: 100\r\n\r\n{\"Name\":")
    trickle = _connect(sock)  # a byte at a time: each recv is quick, the request never ends
    stop = threading.Event()

    def drip():
        for b in b"GET /info HTTP/1.1\r\nX-Slow: " + b"a" * 60:
            if stop.wait(0.5):
                return
            try:
                trickle.send(bytes([b]))
            except OSError:
                return
    threading.Thread(target=drip, daemon=True).start()
    try:
        time.sleep(1)
        assert _threads(pid) >= baseline + 2
        t0 = time.monotonic()
        assert host.json("network", "inspect", "red")[0]["Name"] == "red"   # others are answered meanwhile
        assert time.monotonic() - t0 < 5
        half.settimeout(TIMEOUT + 5)
        assert half.recv(100) == b""        # the daemon hung up on it
        trickle.settimeout(5)
        assert trickle.recv(100) == b""
        assert wait_for(lambda: _threads(pid) <= baseline, timeout=5), (_threads(pid), baseline)
    finally:
        stop.set()
        half.close()
        trickle.close()
    assert "hung up on a connection that sent no whole request" in _log(host)


def test_idle_connections_past_the_bound_are_turned_away_then_answered_once_they_time_out(host):
    host.nsnet("network", "create", "red")
    sock = os.path.join(host.root, "nsnet.sock")
    pid = host.daemon_pid()
    baseline = _threads(pid)
    idle = [_connect(sock) for _ in range(MAX_CONNECTIONS + 16)]
    try:
        t0 = time.monotonic()
        status, _, data = request(sock, "GET", "/networks")     # past the bound: refused at once, in one line
        assert status == 503 and "\n" not in json.loads(data)["message"]
        assert time.monotonic() - t0 < 2
        assert _threads(pid) <= baseline + MAX_CONNECTIONS
        assert "connections open, the most served at once" in _log(host)
        # Once the idle ones time out, requests are answered again.
        assert wait_for(lambda: request(sock, "GET", "/networks")[0] == 200, timeout=TIMEOUT + 5, interval=0.5)
        assert host.json("network", "inspect", "red")[0]["Name"] == "red"
    finally:
        for s in idle:
            s.close()


def test_the_cli_says_a_body_is_too_big_in_one_line(host):
    labels = [arg for i in range(12) for arg in ("--label", f"k{i}=" + "x" * 120_000)]   # ~1.4 MB in all
    p = host.nsnet("network", "create", *labels, "big", check=False)
    assert p.returncode == 1 and p.stderr.startswith("Error: the body is ") and len(p.stderr.splitlines()) == 1
    assert "big" not in [n["Name"] for n in host.json("network", "ls", "--format", "json")]
