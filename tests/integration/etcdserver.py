"""etcd (Debian's etcd-server) in a throwaway network namespace, for the store's etcd backend.

Members listen on the namespace's own loopback (client port 2379 + 100*i, peer port + 1), so every packet
stays inside it; a test talks to them with its thread inside the namespace (`nsnet.kernel.netns.entered`).
With `address`, members listen on that address instead (one the test gives the namespace and routes to it
from other test namespaces: hosts of a swarm).
The data folders live under one temp folder; `stop` kills the members by PID and removes the namespace
and the folder, whatever state they are in.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import ssl
import subprocess
import tempfile
import time
import urllib.request

from nsnet.kernel import netns

ETCD = shutil.which("etcd") or "/usr/bin/etcd"


class EtcdCluster:
    def __init__(self, ns: str, members: int = 1, tls: dict | None = None, address: str = "127.0.0.1"):
        self.ns = ns
        self.address = address
        self.tls = tls   # {"ca", "cert", "key"}: clients must speak https and show a cert the CA signed
        self.workdir = tempfile.mkdtemp(prefix="nsnt-etcd-")
        self.names = [f"m{i}" for i in range(members)]
        self.procs: dict[str, subprocess.Popen] = {}
        subprocess.run(["ip", "netns", "add", ns], check=True)
        subprocess.run(["ip", "-n", ns, "link", "set", "lo", "up"], check=True)

    def endpoint(self, i: int) -> str:
        return f"{'https' if self.tls else 'http'}://{self.address}:{2379 + 100 * i}"

    @property
    def endpoints(self) -> list[str]:
        return [self.endpoint(i) for i in range(len(self.names))]

    def start(self, timeout: float = 20) -> None:
        for i in range(len(self.names)):
            self._spawn(i)
        self.wait_healthy(timeout)

    def wait_healthy(self, timeout: float = 20) -> None:
        with netns.entered(f"/run/netns/{self.ns}"):
            for i in range(len(self.names)):
                if self.names[i] in self.procs:
                    self._wait_healthy(self.endpoint(i), time.monotonic() + timeout)

    def restart(self, i: int, timeout: float = 20) -> None:
        """Member i again, on its data (after kill)."""
        self._spawn(i)
        self.wait_healthy(timeout)

    def _spawn(self, i: int) -> None:
        name = self.names[i]
        peers = ",".join(f"{n}=http://{self.address}:{2380 + 100 * j}" for j, n in enumerate(self.names))
        peer = f"http://{self.address}:{2380 + 100 * i}"
        log = open(os.path.join(self.workdir, f"{name}.log"), "a")
        self.procs[name] = subprocess.Popen(
            ["ip", "netns", "exec", self.ns, ETCD, "--name", name,
             "--data-dir", os.path.join(self.workdir, name),
             "--listen-client-urls", self.endpoint(i), "--advertise-client-urls", self.endpoint(i),
             "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
             "--initial-cluster", peers, "--initial-cluster-token", self.ns,
             "--initial-cluster-state", "new", *self._tls_args()],
            stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "ETCD_UNSUPPORTED_ARCH": ""})
        log.close()

    def _tls_args(self) -> list[str]:
        if not self.tls:
            return []
        return ["--cert-file", self.tls["cert"], "--key-file", self.tls["key"],
                "--trusted-ca-file", self.tls["ca"], "--client-cert-auth"]

    def _wait_healthy(self, endpoint: str, deadline: float) -> None:
        context = None
        if self.tls:
            context = ssl.create_default_context(cafile=self.tls["ca"])
            context.load_cert_chain(self.tls["cert"], self.tls["key"])
        while True:
            try:
                with urllib.request.urlopen(f"{endpoint}/health", timeout=1, context=context) as r:
                    if json.load(r).get("health") == "true":
                        return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"etcd at {endpoint} not healthy: {self.log()}")
            time.sleep(0.05)

    def kill(self, i: int) -> None:
        p = self.procs.pop(self.names[i])
        p.kill()
        p.wait()

    def log(self) -> str:
        out = []
        for name in self.names:
            try:
                with open(os.path.join(self.workdir, f"{name}.log")) as f:
                    out.append(f.read()[-2000:])
            except OSError:
                pass
        return "\n".join(out)

    def stop(self) -> None:
        # `ip netns exec` execs etcd, so the Popen's PID is etcd's own.
        for p in self.procs.values():
            try:
                p.send_signal(signal.SIGKILL)
            except ProcessLookupError:
                pass
            p.wait()
        self.procs.clear()
        subprocess.run(["ip", "netns", "del", self.ns], check=False)
        shutil.rmtree(self.workdir, ignore_errors=True)
