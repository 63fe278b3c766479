"""Docker Engine (Debian's docker.io), its daemon started for this run only, inside a throwaway network
namespace, with every folder of its own under /tmp; stopped and removed at the end.

dockerd is entered into the namespace with setns() alone (as `nsenter --net` does), not `ip netns exec`:
the latter also remounts /sys, which hides the cgroup mounts dockerd needs ("Devices cgroup isn't mounted").
Containers run a tiny image imported from local files (a static busybox, or `sleep` and its libraries):
no registry is contacted. Only with busybox does the image hold more than `sleep` (BOX_TOOLS).
"""
from __future__ import annotations

import http.client
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import tarfile
import time

from common import Harness, Skip, have, ms_since, proc_start, sh

from nsnet.kernel.procs import terminate

DOCKERD = "/usr/sbin/dockerd"
IMAGE = "nsbench-box:1"
BOX_TOOLS = ("sleep", "sh", "nc", "hostname")   # busybox's applets in the image (a swarm task's server: nc -ll)
API = "/v1.41"


class _Unix(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float = 120):
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(self.timeout)
        s.connect(self._path)
        self.sock = s


class DockerError(Exception):
    pass


class Docker:
    def __init__(self, h: Harness, ns: str | None = None):
        """`ns`: a namespace of the caller's to run in (a swarm's host), else a fresh one."""
        self.h = h
        self.cli_bin = "/usr/bin/docker" if have("/usr/bin/docker") else have("docker")
        if not have(DOCKERD) or not self.cli_bin:
            raise Skip("dockerd or the docker CLI is missing (apt-get install docker.io)")
        for tool in ("containerd", "runc"):
            if not have(tool):
                raise Skip(f"{tool} is missing, dockerd cannot run containers (apt-get install docker.io)")
        self.ns = ns or h.netns("dockerd")
        self.dir = h.tempdir("docker")
        # Its containers' cgroups under one parent of its own: runc leaves them behind here even when dockerd
        # removes a container, and stop() removes the parent's tree.
        self.cgroup_parent = "/" + os.path.basename(self.dir)
        self.sock = os.path.join(self.dir, "docker.sock")
        self.pid = None
        self._conn = None
        h.defer(self.stop)
        self.log_path = os.path.join(self.dir, "dockerd.log")
        log = open(self.log_path, "wb")
        # A private mount namespace with a tmpfs over /run: dockerd and its containerd keep sockets there
        # (/run/docker/plugins, /run/containerd/s) whatever their roots are, and the machine's /run is not ours.
        dockerd = [DOCKERD, "--data-root", f"{self.dir}/data", "--exec-root", f"{self.dir}/exec",
                   "--pidfile", f"{self.dir}/dockerd.pid", "-H", f"unix://{self.sock}",
                   "--storage-driver", "vfs", "--shutdown-timeout", "1", "--log-level", "warn",
                   "--cgroup-parent", self.cgroup_parent]
        self.proc = h.spawn(["unshare", "-m", "--propagation", "private", "sh", "-c",
                             'mount -t tmpfs tmpfs /run && exec "$@"', "dockerd", *dockerd],
                            self.ns, stdout=log, stderr=log,
                            # a swarm task's image is the local one: without this its agent asks a registry first
                            env={**os.environ, "DOCKER_SERVICE_PREFER_OFFLINE_IMAGE": "1"})
        log.close()
        deadline = time.monotonic() + 45
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise Skip("dockerd exited at start: " + self._log_tail())
            try:
                self.get("/_ping")
                break
            except (OSError, DockerError, http.client.HTTPException):
                self._conn = None
                time.sleep(0.2)
        else:
            raise Skip("dockerd did not answer within 45 s: " + self._log_tail())
        self.pid = self.proc.pid
        self.version = self.get("/version").get("Version", "?")
        self._import_image()

    def _log_tail(self) -> str:
        try:
            with open(self.log_path, errors="replace") as f:
                lines = [l.strip() for l in f if l.strip()]
            return " | ".join(lines[-2:])[-400:]
        except OSError:
            return "(no log)"

    # ---- API ----------------------------------------------------------------------------------
    def request(self, method: str, path: str, body=None, raw: bytes | None = None, headers=None):
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        hdrs = dict(headers or {})
        if body is not None:
            hdrs["Content-Type"] = "application/json"
        for attempt in range(2):
            if self._conn is None:
                self._conn = _Unix(self.sock)
            try:
                self._conn.request(method, (API + path) if path != "/_ping" else path, body=data, headers=hdrs)
                resp = self._conn.getresponse()
                payload = resp.read()
                break
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
                self._conn = None
                if attempt:
                    raise
        if resp.status >= 400:
            try:
                msg = json.loads(payload).get("message")
            except Exception:
                msg = payload[:200]
            raise DockerError(f"{method} {path}: {resp.status} {msg}")
        if not payload:
            return None
        try:
            return json.loads(payload)
        except ValueError:
            return payload.decode(errors="replace")

    def get(self, path):
        return self.request("GET", path)

    def post(self, path, body=None):
        return self.request("POST", path, body if body is not None else {})

    def delete(self, path):
        return self.request("DELETE", path)

    def cli(self, args: list[str]) -> float:
        """Wall time of one `docker` CLI call, in ms."""
        t0 = time.perf_counter()
        sh([self.cli_bin, "-H", f"unix://{self.sock}"] + args)
        return ms_since(t0)

    # ---- image ----------------------------------------------------------------------------------
    def _import_image(self) -> None:
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tar:
            busybox = have("busybox")
            self.busybox = bool(busybox) and "statically linked" in sh(["file", "-L", busybox], check=False).stdout
            if self.busybox:
                tar.add(busybox, "bin/busybox")
                for name in BOX_TOOLS:
                    info = tarfile.TarInfo(f"bin/{name}")
                    info.type, info.linkname = tarfile.SYMTYPE, "busybox"
                    tar.addfile(info)
            else:  # `sleep` and the libraries ldd names
                sleep = shutil.which("sleep")
                tar.add(sleep, "bin/sleep")
                for line in sh(["ldd", sleep]).stdout.splitlines():
                    path = line.split("=>")[-1].split("(")[0].strip()
                    if path.startswith("/"):
                        tar.add(os.path.realpath(path), path.lstrip("/"))
        self.request("POST", f"/images/create?fromSrc=-&repo={IMAGE.split(':')[0]}&tag={IMAGE.split(':')[1]}",
                     raw=buf.getvalue(), headers={"Content-Type": "application/x-tar"})

    # ---- use cases ----------------------------------------------------------------------------
    def run(self, name: str, network: str) -> str:
        cid = self.post(f"/containers/create?name={name}",
                        {"Image": IMAGE, "Cmd": ["/bin/sleep", "100000"], "HostConfig": {"NetworkMode": network}})["Id"]
        self.post(f"/containers/{cid}/start")
        return cid

    def remove(self, name: str) -> None:
        self.delete(f"/containers/{name}?force=1")

    def create_network(self, name: str, subnet: str | None = None) -> str:
        body = {"Name": name, "CheckDuplicate": True}
        if subnet:
            body["IPAM"] = {"Config": [{"Subnet": subnet}]}
        return self.post("/networks/create", body)["Id"]

    def remove_network(self, name: str) -> None:
        self.delete(f"/networks/{name}")

    def connect(self, net: str, container: str) -> None:
        self.post(f"/networks/{net}/connect", {"Container": container})

    def disconnect(self, net: str, container: str) -> None:
        self.post(f"/networks/{net}/disconnect", {"Container": container})

    def clear(self) -> None:
        """Remove every container and user network (between figures)."""
        for c in self.get("/containers/json?all=1") or []:
            try:
                self.remove(c["Id"])
            except DockerError:
                pass
        for n in self.get("/networks") or []:
            if n["Name"] not in ("bridge", "host", "none"):
                try:
                    self.remove_network(n["Id"])
                except DockerError:
                    pass

    def rss_kb(self) -> int | None:
        from common import rss_kb
        return rss_kb(self.proc.pid)

    def stop(self) -> None:
        if self.proc.poll() is None:
            try:
                self.clear()
            except Exception:
                pass
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        # containerd shims started for this daemon name our folder in their command line: end those (by pid).
        for pid in _pids_mentioning(self.dir):
            terminate(pid, proc_start(pid), timeout=2)
        _remove_cgroups(self.cgroup_parent)


def _remove_cgroups(parent: str) -> None:
    """The containers' processes still in cgroup `parent` killed (a container dockerd did not stop, or whose
    dockerd was killed, outlives it: its shim's end does not end it), then the parent's folders in every
    hierarchy (cgroup v1's, or v2's one), deepest first."""
    root = "/sys/fs/cgroup"
    tops = [t for t in [root + parent] + [os.path.join(root, h) + parent for h in os.listdir(root)] if os.path.isdir(t)]
    folders = sorted((f for top in tops for f, _, _ in os.walk(top)), key=len, reverse=True)
    deadline = time.monotonic() + 5
    while True:
        pids = set()
        for folder in folders:
            try:
                with open(os.path.join(folder, "cgroup.procs")) as f:
                    pids.update(int(p) for p in f.read().split())
            except OSError:
                pass
        if not pids or time.monotonic() > deadline:
            break
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.1)
    for folder in folders:
        try:
            os.rmdir(folder)
        except OSError:
            pass


def _pids_mentioning(text: str) -> list[int]:
    out = []
    for d in os.listdir("/proc"):
        if not d.isdigit() or int(d) == os.getpid():
            continue
        try:
            with open(f"/proc/{d}/cmdline", "rb") as f:
                if text.encode() in f.read():
                    out.append(int(d))
        except OSError:
            pass
    return out
