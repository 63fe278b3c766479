"""Real Docker (Debian's docker.io) for the tests of nsnet's Docker plugin: dockerd in the test's host namespace,
run under `nsenter --net=` with a private mount namespace (a tmpfs over /run; /run/docker/plugins and
/etc/docker bind-mounted from a temp folder), as /work/shared/recipes/dockerd-in-netns.sh does, so nothing of
the machine's own Docker is touched (`ip netns exec` remounts /sys, and runc then finds no cgroup mount).
An image `local/busybox:1` is imported from Debian's busybox-static."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
import time

import pytest

from conftest import sh

BUSYBOX = "/bin/busybox"
IMAGE = "local/busybox:1"
APPLETS = ("sh", "ping", "sleep", "ip", "nc", "httpd", "wget", "cat", "echo", "nslookup", "hostname", "mkdir")
if not (shutil.which("dockerd") and os.path.exists(BUSYBOX)):
    pytest.skip("needs dockerd and busybox (Debian's docker.io and busybox-static: scripts/setup.sh installs them)",
                allow_module_level=True)

DOCKERD = """exec dockerd --data-root {w}/data --exec-root {w}/exec --host unix://{w}/docker.sock --pidfile {w}/docker.pid \
  --bridge=none --storage-driver vfs --shutdown-timeout 2
"""
# A sleeper keeps the private mount namespace (its /run: containerd's shim sockets) for dockerd started again,
# after a stop or a kill: as on a real host, where /run outlives dockerd.
START = """mount -t tmpfs tmpfs /run && mkdir -p /run/docker/plugins
mount --bind {w}/plugins /run/docker/plugins && mount --bind {w}/etc-docker /etc/docker
sleep 2147483647 & echo $! > {w}/mounts.pid
""" + DOCKERD


class Docker:
    """dockerd in the host's namespace, its state under a temp folder; `docker -H` talks to it."""

    def __init__(self, host):
        self.host = host
        self.w = tempfile.mkdtemp(prefix="nsnt-docker-")
        self.plugins = os.path.join(self.w, "etc-docker", "plugins")
        for d in ("data", "exec", "plugins", "etc-docker/plugins", "rootfs/bin"):
            os.makedirs(os.path.join(self.w, d))
        with open(os.path.join(self.w, "start.sh"), "w") as f:
            f.write(START.format(w=self.w))
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 30) -> None:
        """dockerd in a private mount namespace: the first start makes it, a later one enters it again."""
        log = open(os.path.join(self.w, "dockerd.log"), "a")
        mounts = self._mounts()
        if mounts:
            self._wait_containerd_gone()
            cmd = ["nsenter", f"--net=/run/netns/{self.host.ns}", f"--mount={mounts}", "--", "sh", "-c",
                   DOCKERD.format(w=self.w)]
        else:
            cmd = ["nsenter", f"--net=/run/netns/{self.host.ns}", "--", "unshare", "-m", "--propagation", "private",
                   "sh", os.path.join(self.w, "start.sh")]
        self.proc = subprocess.Popen(cmd, stdout=log, stderr=log, start_new_session=True)
        deadline = time.monotonic() + timeout
        while not self._answers():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                tail = open(os.path.join(self.w, "dockerd.log")).read()[-1500:]
                self.stop()
                pytest.skip(f"dockerd did not start here: {tail}")
            time.sleep(0.2)
        rootfs = os.path.join(self.w, "rootfs")
        if os.path.exists(os.path.join(rootfs, "bin", "busybox")):
            return   # a restart: the image is there
        shutil.copy(BUSYBOX, os.path.join(rootfs, "bin", "busybox"))
        for app in APPLETS:
            os.symlink("busybox", os.path.join(rootfs, "bin", app))
        sh(f"tar -C {rootfs} -c . | docker -H unix://{self.w}/docker.sock import - {IMAGE}")

    def _mounts(self) -> str | None:
        """The mount namespace the first start made, while its sleeper lives."""
        try:
            with open(os.path.join(self.w, "mounts.pid")) as f:
                path = f"/proc/{int(f.read().strip())}/ns/mnt"
            return path if os.path.exists(path) else None
        except (OSError, ValueError):
            return None

    def _wait_containerd_gone(self, timeout: float = 20) -> None:
        """The last dockerd's containerd gone, even as a zombie (it dies with dockerd: a parent-death signal):
        the next dockerd would take its pid for a containerd still running, and time out on its socket."""
        try:
            with open(os.path.join(self.w, "exec", "containerd", "containerd.pid")) as f:
                pid = int(f.read().strip())
        except (OSError, ValueError):
            return
        deadline = time.monotonic() + timeout
        while os.path.exists(f"/proc/{pid}") and time.monotonic() < deadline:
            time.sleep(0.1)

    def _answers(self) -> bool:
        """Whether dockerd's API answers (at its start it may stall on plugin lookups for minutes)."""
        try:
            return self.docker("version", check=False, timeout=20).returncode == 0
        except subprocess.TimeoutExpired:
            return False

    def docker(self, *args: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
        p = subprocess.run(["docker", "-H", f"unix://{self.w}/docker.sock", *args], capture_output=True,
                           text=True, timeout=timeout)
        if check and p.returncode != 0:
            raise AssertionError(f"docker {' '.join(args)} failed ({p.returncode}):\n{p.stdout}\n{p.stderr}")
        return p

    def inspect(self, kind: str, name: str) -> dict:
        return json.loads(self.docker(kind, "inspect", name).stdout)[0]

    def stop(self) -> None:
        """Containers first (their init, by PID: that ends their PID namespace), then dockerd and what it
        started (containerd, the shims: all in the host's namespace, which the host fixture then empties)."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            ids = self.docker("ps", "-q", check=False, timeout=20).stdout.split()
            for cid in ids:
                pid = self.docker("inspect", "-f", "{{.State.Pid}}", cid, check=False, timeout=20).stdout.strip()
                if pid.isdigit() and int(pid) > 0:
                    _kill(int(pid))
            _kill(self.proc.pid, signal.SIGTERM)   # dockerd (unshare exec'd sh, which exec'd it)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                _kill(self.proc.pid)
                self.proc.wait()
        for pid in sh(f"ip netns pids {self.host.ns}", check=False).stdout.split():
            if int(pid) != self.host.daemon_pid():
                _kill(int(pid))
        self.proc = None

    def restart(self) -> None:
        """dockerd stopped as a service manager stops it (SIGTERM: it stops its containers) and started again."""
        os.kill(self.proc.pid, signal.SIGTERM)
        self.proc.wait(timeout=30)
        self.start()

    def kill(self) -> None:
        """dockerd killed -9 (an OOM kill, a crash): the shims and the containers are left as they are."""
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)

    def log(self) -> str:
        with open(os.path.join(self.w, "dockerd.log")) as f:
            return f.read()

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.w, ignore_errors=True)


def _kill(pid: int, sig: int = signal.SIGKILL) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


@pytest.fixture
def docker(host):
    d = Docker(host)
    try:
        host.nsnet("docker-plugin", "enable", "--dir", d.plugins)   # starts nsnet's daemon too
        d.start()
        yield d
    finally:
        d.cleanup()
