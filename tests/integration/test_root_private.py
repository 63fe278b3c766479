"""Only root reads the engine's state and the sandboxes' logs; a sandbox's own /etc files stay readable
by the non-root users inside it."""
import os
import signal
import stat

from conftest import wait_for

NOBODY = "setpriv --reuid=65534 --regid=65534 --clear-groups"


def _mode(path: str) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def _private(root: str, sid: str) -> dict:
    paths = [root] + [os.path.join(root, n) for n in ("state.db", "state.db-wal", "state.db-shm", "daemon.log",
                                                      "daemon.lock")]
    paths.append(os.path.join(root, "sandboxes", sid, "log"))
    return {p: oct(_mode(p)) for p in paths}


def _want(root: str, sid: str) -> dict:
    return {p: ("0o700" if p == root else "0o600") for p in _private(root, sid)}


def test_state_and_logs_are_private_and_an_old_root_is_fixed_at_start(host):
    host.nsnet("network", "create", "red")
    host.nsnet("run", "-d", "--name", "talker", "--network", "red", "--", "sh", "-c",
               "echo the-secret; exec sleep 300")
    sid = host.json("inspect", "talker")[0]["Id"]
    assert wait_for(lambda: "the-secret" in host.nsnet("logs", "talker").stdout)
    assert _private(host.root, sid) == _want(host.root, sid)
    # A root from before: world-readable. The next daemon fixes it.
    os.kill(host.daemon_pid(), signal.SIGKILL)
    for p in _private(host.root, sid):
        os.chmod(p, 0o755 if p == host.root else 0o644)
    host.nsnet("ps")
    assert _private(host.root, sid) == _want(host.root, sid)
    log = os.path.join(host.root, "sandboxes", sid, "log")
    assert host.sh(f"{NOBODY} cat {log}", check=False).returncode != 0


def test_a_non_root_user_inside_a_sandbox_reads_its_etc_files(host):
    host.nsnet("network", "create", "red")
    host.nsnet("run", "-d", "--name", "web", "--hostname", "webhost", "--network", "red", "--", "sleep", "300")
    p = host.exec("web", f"{NOBODY} cat /etc/hosts /etc/resolv.conf /etc/hostname")
    assert "webhost" in p.stdout and "nameserver" in p.stdout
    p = host.nsnet("run", "--rm", "--hostname", "fghost", "--network", "red", "--", "sh", "-c",
                   f"{NOBODY} cat /etc/hosts /etc/hostname")
    assert "fghost" in p.stdout
