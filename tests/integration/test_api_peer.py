"""The daemon takes a PID only from the process that owns it, and sees by itself when a sandbox exits."""
import json
import os
import signal
import subprocess

import pytest

from conftest import changes, wait_for
from rawhttp import request


def _links_of(pid: int) -> list[str]:
    out = subprocess.run(["nsenter", "-t", str(pid), "-n", "ip", "-j", "link", "show"], capture_output=True,
                         text=True, check=True).stdout
    return sorted(l["ifname"] for l in json.loads(out))


@pytest.fixture
def stranger():
    """A process in a network namespace of its own that is not ours: its parent is gone, so it is
    nobody's descendant but init's."""
    out = subprocess.run(["sh", "-c", "unshare -n sleep 300 >/dev/null 2>&1 & echo $!"], capture_output=True,
                         text=True, check=True).stdout
    pid = int(out)
    wait_for(lambda: os.readlink(f"/proc/{pid}/ns/net") != os.readlink("/proc/self/ns/net"))
    yield pid
    os.kill(pid, signal.SIGKILL)


def test_a_pid_that_is_not_the_callers_is_refused_and_nothing_is_plumbed(host, stranger):
    host.nsnet("network", "create", "red")
    sock = os.path.join(host.root, "nsnet.sock")
    before = host.state()
    for pid in (stranger, 1):
        status, _, body = request(sock, "POST", "/sandboxes", {"Cmd": ["sleep", "1"], "Pid": pid,
                                                               "Networks": [{"Network": "red"}]})
        message = json.loads(body)["message"]
        assert status == 403 and "\n" not in message and f"process {pid} " in message, (status, message)
        assert not changes(before, host.state())
    assert _links_of(stranger) == ["lo"]


def test_a_child_of_the_caller_is_taken_and_a_false_exit_report_does_not_tear_it_down(host):
    host.nsnet("network", "create", "red")
    sock = os.path.join(host.root, "nsnet.sock")
    child = subprocess.Popen(["unshare", "-n", "sleep", "300"])
    try:
        wait_for(lambda: os.readlink(f"/proc/{child.pid}/ns/net") != os.readlink("/proc/self/ns/net"))
        status, _, body = request(sock, "POST", "/sandboxes", {"Name": "mine", "Cmd": ["sleep", "300"],
                                                               "Pid": child.pid, "Networks": [{"Network": "red"}]})
        assert status == 200, body
        assert "eth0" in _links_of(child.pid)
        before = host.state()
        status, _, body = request(sock, "POST", "/sandboxes/mine/exited", {"ExitCode": 0})
        assert status == 409 and "still running" in json.loads(body)["message"]
        assert not changes(before, host.state())
        assert "eth0" in _links_of(child.pid)
        assert host.json("inspect", "mine")[0]["State"]["Running"]
        child.kill()           # the daemon sees it go by itself, before anyone reports it
        assert wait_for(lambda: host.json("inspect", "mine")[0]["State"]["Status"] == "exited")
        assert not [l for l in host.state()["links"] if l.startswith("nsv")]
    finally:
        child.kill()
        child.wait()


def test_foreground_run_still_hands_over_its_child_and_reports_the_exit_code(host):
    """Also after longer than the API's request timeout: the CLI's kept-alive connection was hung up on
    meanwhile, and the exit code goes on a new one."""
    host.nsnet("network", "create", "red")
    p = host.nsnet("run", "--name", "fg", "--network", "red", "--", "sh", "-c", "sleep 11; exit 7", check=False)
    assert p.returncode == 7, p.stderr
    state = host.json("inspect", "fg")[0]["State"]
    assert state["Status"] == "exited" and state["ExitCode"] == 7
    assert host.nsnet("run", "--rm", "--network", "red", "--", "true", check=False).returncode == 0
