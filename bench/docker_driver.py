"""Docker's network driver and IPAM driver answered by nsnet, against Docker's own bridge driver: the same
dockerd (Debian's docker.io), the same run, calls interleaved round-robin so drift hits every variant alike.

- `docker network create` (POST /networks/create; each network removed before the next round);
- the network part of `docker run`: POST /containers/{id}/start of a created container on the network,
  less the same on `--network none` (Docker's own work without any network), and `docker network connect`
  of a running container (CreateEndpoint, Join, the link moved into the container and configured);
- what nsnet's IPAM driver adds to `docker network create`, two ways: the median over rounds of each round's
  difference (the variants of a round run back to back, so Docker's own drift, ±10 ms here, mostly cancels),
  and the IPAM calls Docker makes for it (RequestPool, RequestAddress of the gateway) timed on nsnet's plugin
  socket alone, in the same namespace beside the same dockerd.

dockerd runs in a throwaway namespace with a private mount namespace (its /etc/docker/plugins a temp folder:
the machine's Docker and its folders are never touched); nsnet's daemon in the same namespace. Reports only
(run as root): `python bench/docker_driver.py [N]`, N rounds (default 15), p50 and p95 in ms.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time

from common import PY, REPO, Harness, ms_since, summary
from peer_docker import IMAGE, DockerError, _Unix  # noqa: F401 (IMAGE: the tag imported below)

import json

START = """mount -t tmpfs tmpfs /run && mkdir -p /run/docker/plugins
mount --bind {w}/plugins /run/docker/plugins && mount --bind {w}/etc-docker /etc/docker
exec dockerd --data-root {w}/data --exec-root {w}/exec --host unix://{w}/docker.sock --pidfile {w}/docker.pid \
  --bridge=none --storage-driver vfs --shutdown-timeout 1 --log-level warn
"""
VARIANTS = {   # name -> (driver, IPAM driver)
    "bridge": ("bridge", "default"),
    "bridge.nsnet-ipam": ("bridge", "nsnet"),
    "nsnet": ("nsnet", "default"),
    "nsnet.nsnet-ipam": ("nsnet", "nsnet"),
}


class Api:
    def __init__(self, sock: str):
        self.sock, self.conn = sock, None

    def call(self, method: str, path: str, body=None):
        if self.conn is None:
            self.conn = _Unix(self.sock)
        data = json.dumps(body).encode() if body is not None else None
        self.conn.request(method, "/v1.41" + path if path != "/_ping" else path, body=data,
                          headers={"Content-Type": "application/json"} if data else {})
        resp = self.conn.getresponse()
        payload = resp.read()
        if resp.status >= 400:
            raise DockerError(f"{method} {path}: {resp.status} {payload[:200]!r}")
        return json.loads(payload) if payload and payload[:1] in b"[{" else None


def start(h: Harness) -> tuple[Api, str, str]:
    ns, w = h.netns("dockerdrv"), h.tempdir("dockerdrv")
    for d in ("data", "exec", "plugins", "etc-docker/plugins", "nsnet"):
        os.makedirs(os.path.join(w, d))
    root = os.path.join(w, "nsnet")
    subprocess.run(["ip", "netns", "exec", ns, PY, "-m", "nsnet", "--root", root, "docker-plugin", "enable",
                    "--dir", os.path.join(w, "etc-docker", "plugins")], check=True, capture_output=True,
                   env={**os.environ, "DOCKER_HOST": f"unix://{w}/no-docker.sock", "PYTHONPATH": f"{REPO}/src"})
    daemon = next(int(p) for p in os.listdir("/proc") if p.isdigit() and _argv(p) and root in _argv(p) and "daemon" in _argv(p))
    h.adopt(daemon)
    with open(os.path.join(w, "start.sh"), "w") as f:
        f.write(START.format(w=w))
    h.spawn(["nsenter", f"--net=/run/netns/{ns}", "--", "unshare", "-m", "--propagation", "private", "sh",
             os.path.join(w, "start.sh")])
    api = Api(os.path.join(w, "docker.sock"))
    deadline = time.monotonic() + 60
    while True:
        try:
            api.call("GET", "/_ping")
            break
        except OSError:
            api.conn = None
            if time.monotonic() > deadline:
                raise SystemExit("dockerd did not start")
            time.sleep(0.2)
    h.defer(_clear, api)
    rootfs = os.path.join(w, "rootfs")
    os.makedirs(os.path.join(rootfs, "bin"))
    subprocess.run(["cp", "/bin/busybox", os.path.join(rootfs, "bin", "busybox")], check=True)
    os.symlink("busybox", os.path.join(rootfs, "bin", "sleep"))
    subprocess.run(f"tar -C {rootfs} -c . | docker -H unix://{w}/docker.sock import - {IMAGE}", shell=True,
                   check=True, capture_output=True)
    return api, ns, os.path.join(root, "docker-plugin.sock")


def _argv(pid: str) -> list[str]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().decode(errors="replace").split("\0")
    except OSError:
        return []


def _clear(api: Api) -> None:
    for c in api.call("GET", "/containers/json?all=1") or []:
        api.call("DELETE", f"/containers/{c['Id']}?force=1")
    for n in api.call("GET", "/networks") or []:
        if n["Name"] not in ("host", "none"):
            api.call("DELETE", f"/networks/{n['Id']}")


def create_net(api: Api, name: str, variant: str) -> float:
    driver, ipam = VARIANTS[variant]
    t0 = time.perf_counter()
    api.call("POST", "/networks/create", {"Name": name, "Driver": driver, "IPAM": {"Driver": ipam}})
    return ms_since(t0)


def container(api: Api, name: str, network: str) -> str:
    return api.call("POST", f"/containers/create?name={name}", {"Image": IMAGE, "Cmd": ["sleep", "100000"],
                                                                "HostConfig": {"NetworkMode": network}})["Id"]


def measure(api: Api, rounds: int) -> dict:
    out = {f"create {v}": [] for v in VARIANTS}
    out |= {f"start {v}": [] for v in ["none", *VARIANTS]} | {f"connect {v}": [] for v in VARIANTS}
    create_net(api, "base", "bridge")
    host = container(api, "host-c", "base")
    api.call("POST", f"/containers/{host}/start")
    for r in range(rounds):
        for v in VARIANTS:
            out[f"create {v}"].append(create_net(api, f"n-{v}", v))
        for v in ["none", *VARIANTS]:
            cid = container(api, f"c-{v}-{r}", "none" if v == "none" else f"n-{v}")
            t0 = time.perf_counter()
            api.call("POST", f"/containers/{cid}/start")
            out[f"start {v}"].append(ms_since(t0))
            api.call("DELETE", f"/containers/{cid}?force=1")
        for v in VARIANTS:
            t0 = time.perf_counter()
            api.call("POST", f"/networks/n-{v}/connect", {"Container": host})
            out[f"connect {v}"].append(ms_since(t0))
            api.call("POST", f"/networks/n-{v}/disconnect", {"Container": host})
        for v in VARIANTS:
            api.call("DELETE", f"/networks/n-{v}")
    results = {k: summary(v) for k, v in out.items()}
    for driver in ("bridge", "nsnet"):
        results[f"nsnet IPAM adds, {driver} (paired)"] = paired(out, f"create {driver}", f"create {driver}.nsnet-ipam")
    return results


def ipam_calls(plugin_sock: str, rounds: int) -> dict:
    """RequestPool and the gateway's RequestAddress as Docker sends them, on one kept-alive connection as
    Docker's; the pool released after each round (not timed)."""
    api, out = Api(plugin_sock), []
    gateway = {"RequestAddressType": "com.docker.network.gateway"}
    for _ in range(rounds):
        t0 = time.perf_counter()
        pool = _plugin(api, "/IpamDriver.RequestPool", {"AddressSpace": "nsnet-local", "Options": {}, "V6": False})
        _plugin(api, "/IpamDriver.RequestAddress", {"PoolID": pool["PoolID"], "Options": gateway})
        out.append(ms_since(t0))
        _plugin(api, "/IpamDriver.ReleasePool", {"PoolID": pool["PoolID"]})
    return summary(out)


def _plugin(api: Api, path: str, body: dict) -> dict:
    if api.conn is None:
        api.conn = _Unix(api.sock)
    api.conn.request("POST", path, body=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    answer = json.loads(api.conn.getresponse().read())
    if answer.get("Error"):
        raise DockerError(f"{path}: {answer['Error']}")
    return answer


def paired(samples: dict, a: str, b: str) -> dict:
    """The median over rounds of b - a, each pair from one round."""
    return summary([y - x for x, y in zip(samples[a], samples[b])])


def main() -> None:
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 15
    h = Harness("docker-driver")
    try:
        api, _, plugin_sock = start(h)
        results = measure(api, rounds)
        results["IPAM calls of a create"] = ipam_calls(plugin_sock, rounds * 2)
    finally:
        h.close()
    none = results["start none"]["p50"]
    for key, s in results.items():
        extra = f"   network part {s['p50'] - none:6.1f}" if key.startswith("start ") and key != "start none" else ""
        print(f"{key:34s} p50 {s['p50']:7.1f}  p95 {s['p95']:7.1f}  (n={s['n']}){extra}")


if __name__ == "__main__":
    main()
