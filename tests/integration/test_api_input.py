"""The API refuses every malformed request in one line, with a 4xx, and changes nothing.

Real HTTP over a real daemon's unix socket, in a throwaway namespace: wrong JSON types, unknown fields,
bad query parameters, unknown methods and malformed HTTP itself.
"""
import json
import os

import pytest

from conftest import changes
from rawhttp import request, send

LONG = "x" * 5000
N = "n-new"   # a network name the refused creates would have made
CMD = ["sleep", "300"]

# (method, path, body): body is JSON-encoded unless bytes.
CASES = [
    # POST /networks: wrong types, nulls where required, unknown fields, sizes
    ("POST", "/networks", {"Name": 1}),
    ("POST", "/networks", {"Name": None}),
    ("POST", "/networks", {}),
    ("POST", "/networks", {"Name": [N]}),
    ("POST", "/networks", {"Name": N, "Internal": "no"}),
    ("POST", "/networks", {"Name": N, "Internal": 1}),
    ("POST", "/networks", {"Name": N, "Internal": 0}),
    ("POST", "/networks", {"Name": N, "EnableIPv6": "true"}),
    ("POST", "/networks", {"Name": N, "Attachable": []}),
    ("POST", "/networks", {"Name": N, "AllowOverlap": "yes"}),
    ("POST", "/networks", {"Name": N, "Subnets": "10.77.0.0/16"}),
    ("POST", "/networks", {"Name": N, "Subnets": [1]}),
    ("POST", "/networks", {"Name": N, "Subnets": [None]}),
    ("POST", "/networks", {"Name": N, "Gateways": {"a": "b"}}),
    ("POST", "/networks", {"Name": N, "IPRanges": 7}),
    ("POST", "/networks", {"Name": N, "AuxAddresses": ["a"]}),
    ("POST", "/networks", {"Name": N, "AuxAddresses": {"a": 1}}),
    ("POST", "/networks", {"Name": N, "Options": "size=24"}),
    ("POST", "/networks", {"Name": N, "Options": {"a": True}}),
    ("POST", "/networks", {"Name": N, "Labels": [["a", "b"]]}),
    ("POST", "/networks", {"Name": N, "Labels": {"a": {"b": "c"}}}),
    ("POST", "/networks", {"Name": N, "Labels": {"a": LONG}}),
    ("POST", "/networks", {"Name": N, "Labels": {f"k{i}": "v" for i in range(300)}}),
    ("POST", "/networks", {"Name": N, "Labels": {LONG: "v"}}),
    ("POST", "/networks", {"Name": N, "Driver": 5}),
    ("POST", "/networks", {"Name": N, "Bogus": True}),
    ("POST", "/networks", {"Name": "x" * 300}),
    ("POST", "/networks", {"Name": 1e400}),
    ("POST", "/networks", []),
    ("POST", "/networks", N),
    ("POST", "/networks", None),
    ("POST", "/networks", b"null"),
    ("POST", "/networks", b"{bad json"),
    ("POST", "/networks", b'{"Name": "n-new",}'),
    ("POST", "/networks", b"\xff\xfe{}"),
    ("POST", "/networks", b"[" * 100000),
    # POST /sandboxes
    ("POST", "/sandboxes", {"Cmd": "sleep 300"}),
    ("POST", "/sandboxes", {"Cmd": [1, 2]}),
    ("POST", "/sandboxes", {"Cmd": None}),
    ("POST", "/sandboxes", {"Name": "s-new"}),
    ("POST", "/sandboxes", {"Cmd": CMD, "Name": 5}),
    ("POST", "/sandboxes", {"Cmd": CMD, "AutoRemove": "yes"}),
    ("POST", "/sandboxes", {"Cmd": CMD, "AutoRemove": 1}),
    ("POST", "/sandboxes", {"Cmd": CMD, "Ports": "8080:80"}),
    ("POST", "/sandboxes", {"Cmd": CMD, "Ports": [8080]}),
    ("POST", "/sandboxes", {"Cmd": CMD, "Dns": "192.0.2.1"}),
    ("POST", "/sandboxes", {"Cmd": CMD, "Hostname": ["h"]}),
    ("POST", "/sandboxes", {"Cmd": CMD, "Networks": "net1"}),
    ("POST", "/sandboxes", {"Cmd": CMD, "Networks": ["net1"]}),
    ("POST", "/sandboxes", {"Cmd": CMD, "Networks": [{"Network": 1}]}),
    ("POST", "/sandboxes", {"Cmd": CMD, "Networks": [{}]}),
    ("POST", "/sandboxes", {"Cmd": CMD, "Networks": [{"Network": "net1", "Aliases": "a"}]}),
    ("POST", "/sandboxes", {"Cmd": CMD, "Networks": [{"Network": "net1", "IP": 10}]}),
    ("POST", "/sandboxes", {"Cmd": CMD, "Networks": [{"Network": "net1", "Bogus": 1}]}),
    ("POST", "/sandboxes", {"Cmd": CMD, "Pid": "1"}),
    ("POST", "/sandboxes", {"Cmd": CMD, "Pid": -5}),
    ("POST", "/sandboxes", {"Cmd": CMD, "Pid": 1.5}),
    ("POST", "/sandboxes", {"Cmd": CMD, "Pid": True}),
    ("POST", "/sandboxes", {"Cmd": CMD, "Image": "alpine"}),
    # connect / disconnect
    ("POST", "/networks/net1/connect", {"Sandbox": 5}),
    ("POST", "/networks/net1/connect", {}),
    ("POST", "/networks/net1/connect", {"Sandbox": "sb1", "Aliases": "x"}),
    ("POST", "/networks/net1/connect", {"Sandbox": "sb1", "IP": ["10.0.0.1"]}),
    ("POST", "/networks/net1/connect", []),
    ("POST", "/networks/net1/disconnect", {"Sandbox": "sb1", "Force": "yes"}),
    ("POST", "/networks/net1/disconnect", {"Sandbox": "sb1", "Force": 1}),
    # query parameters
    ("POST", "/sandboxes/sb1/stop?t=abc", {}),
    ("POST", "/sandboxes/sb1/stop?t=-1", {}),
    ("POST", "/sandboxes/sb1/stop?t=inf", {}),
    ("POST", "/sandboxes/sb1/stop?t=nan", {}),
    ("DELETE", "/sandboxes/sb1?force=yes", None),
    ("DELETE", "/sandboxes/sb1?force=0&force=1", None),
    ("DELETE", "/sandboxes/sb1?bogus=1", None),
    ("DELETE", "/networks/net1?force=1", None),
    ("GET", "/sandboxes?all=2", None),
    ("GET", "/networks?filters=notjson", None),
    ("GET", "/networks?filters=%5B%5D", None),
    ("GET", "/networks?filters=%7B%22name%22%3A1%7D", None),
    ("GET", "/networks?filters=%7B%22colour%22%3A%22red%22%7D", None),
    # exited: wrong types, and a running sandbox is not torn down on a client's word
    ("POST", "/sandboxes/sb1/exited", {"ExitCode": "0"}),
    ("POST", "/sandboxes/sb1/exited", {"ExitCode": 300}),
    ("POST", "/sandboxes/sb1/exited", {"ExitCode": 0}),
    # bodies where none goes, and the other way round
    ("GET", "/info", {"x": 1}),
    ("DELETE", "/sandboxes/sb1", {"force": True}),
    ("POST", "/networks/prune", {"x": 1}),
    ("POST", "/sandboxes/sb1/stop", "now"),
    # methods and paths
    ("PUT", "/networks", {"Name": N}),
    ("PATCH", "/sandboxes/sb1", {}),
    ("OPTIONS", "/networks", None),
    ("DELETE", "/networks", None),
    ("PUT", "/nowhere", None),
    ("GET", "/networks/net1/sandboxes", None),
]

# Malformed HTTP itself.
RAW = [
    b"POST /networks HTTP/1.1\r\nContent-Length: abc\r\n\r\n{}",
    b"POST /networks HTTP/1.1\r\nContent-Length: -1\r\n\r\n{}",
    b"POST /networks HTTP/1.1\r\nContent-Length: 1_0\r\n\r\n{}",
    b"POST /networks HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n",
    b"GARBAGE\r\n\r\n",
    b"GET /info HTTP/9.9\r\n\r\n",
    b"GET /" + b"a" * 70000 + b" HTTP/1.1\r\n\r\n",
]


@pytest.fixture
def engine(host):
    host.nsnet("network", "create", "--subnet", "172.31.0.0/16", "net1")
    host.nsnet("run", "-d", "--name", "sb1", "--network", "net1", "--", "sleep", "300")
    return host


def _one_line_refusal(status: int, headers: dict, body: bytes, what) -> None:
    assert 400 <= status < 500, (what, status, body[:300])
    assert headers.get("content-type") == "application/json", (what, headers)
    message = json.loads(body)["message"]
    assert message and "\n" not in message and len(message) < 400, (what, message)


def test_every_malformed_request_gets_a_4xx_in_one_line_and_changes_nothing(engine):
    sock = os.path.join(engine.root, "nsnet.sock")
    pid = engine.daemon_pid()
    before = engine.state()
    assert len(CASES) + len(RAW) >= 60
    for method, path, body in CASES:
        status, headers, data = request(sock, method, path, body)
        _one_line_refusal(status, headers, data, (method, path, body if not isinstance(body, bytes) else body[:40]))
        assert not changes(before, engine.state()), (method, path, body)
    for raw in RAW:
        status, headers, data = send(sock, raw)
        _one_line_refusal(status, headers, data, raw[:60])
        assert not changes(before, engine.state()), raw[:60]
    assert engine.daemon_pid() == pid
    assert engine.json("inspect", "sb1")[0]["State"]["Running"]
    log = open(os.path.join(engine.root, "daemon.log")).read()
    assert "Traceback" not in log and "internal error" not in log


def test_well_formed_requests_still_work_over_raw_http(engine):
    """The schemas accept what the CLI sends, nulls for options not given included."""
    sock = os.path.join(engine.root, "nsnet.sock")
    status, _, body = request(sock, "POST", "/networks", {
        "Name": "n2", "Driver": None, "Subnets": ["172.30.0.0/16"], "Gateways": [], "IPRanges": None,
        "AuxAddresses": {}, "Options": {}, "Labels": {"team": "web"}, "Internal": True, "Attachable": False,
        "EnableIPv6": False, "AllowOverlap": None})
    assert status == 200, body
    assert engine.json("network", "inspect", "n2")[0]["Internal"] is True
    status, _, body = request(sock, "POST", "/networks/n2/connect", {"Sandbox": "sb1", "IP": None, "Aliases": ["a1"]})
    assert status == 200, body
    status, _, body = request(sock, "GET", "/networks?filters=%7B%22label%22%3A%22team%3Dweb%22%7D")
    assert status == 200 and [n["Name"] for n in json.loads(body)] == ["n2"]
    status, _, body = request(sock, "POST", "/networks/n2/disconnect", {"Sandbox": "sb1", "Force": True})
    assert status == 200, body
    status, _, body = request(sock, "DELETE", "/sandboxes/sb1?force=true")
    assert status == 200, body
