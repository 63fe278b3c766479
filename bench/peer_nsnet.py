"""nsnet, driven the way a runtime and a user drive it: its daemon API (nsnet.client.Client) and its CLI.

Each NsnetEngine is a separate engine: its own throwaway "host" namespace and its own root folder.
The daemon is started by one CLI call made inside that namespace (so it lives there), and stopped,
with every sandbox it started, at the end.
"""
from __future__ import annotations

import json
import os
import signal
import time

from common import PY, Harness, ms_since, proc_start, rss_kb, sh

from nsnet.client import ApiError, Client
from nsnet.kernel.procs import terminate


class NsnetFailed(Exception):
    """nsnet itself refused or broke (a CLI call exited non-zero): a finding, not a harness error."""


class NsnetEngine:
    def __init__(self, h: Harness, tag: str):
        self.h = h
        self.ns = h.netns(f"{tag}")
        self.root = h.tempdir(f"root-{tag}")
        self.daemon_pid = None
        self._sandbox_pids: dict[str, tuple[int, int | None]] = {}
        h.defer(self.stop)
        self.cli(["network", "ls", "-q"])  # starts the daemon inside self.ns
        self.api = Client(self.root, autostart=False)
        self.daemon_pid = self.api.get("/info")["DaemonPid"]
        self._daemon_start = proc_start(self.daemon_pid)

    # ---- the two front doors -------------------------------------------------------------------
    def cli_cmd(self, args: list[str]) -> list[str]:
        return [PY, "-m", "nsnet", "--root", self.root] + args

    def cli(self, args: list[str], check: bool = True, timeout: float = 120):
        cp = sh(self.cli_cmd(args), self.ns, check=False, timeout=timeout)
        if check and cp.returncode != 0:
            raise NsnetFailed(f"`nsnet {' '.join(args)}` exited {cp.returncode}: "
                              f"{(cp.stderr or cp.stdout).strip()[-400:]}")
        return cp

    def cli_ms(self, args: list[str]) -> float:
        t0 = time.perf_counter()
        self.cli(args)
        return ms_since(t0)

    # ---- use cases through the API -------------------------------------------------------------
    def create_network(self, name: str, subnet: str | None = None, **extra) -> str:
        body = {"Name": name, "Subnets": [subnet] if subnet else []}
        body.update(extra)
        return self.api.post("/networks", body)["Id"]

    def remove_network(self, name: str) -> None:
        self.api.delete("/networks/" + name)

    def run(self, name: str, network: str, cmd: list[str] | None = None, ports: list[str] | None = None,
            aliases: list[str] | None = None) -> int:
        """A detached sandbox on `network`; returns its pid (the sandbox's namespace is /proc/PID/ns/net)."""
        spec = {"Name": name, "Cmd": cmd or ["sleep", "100000"],
                "Networks": [{"Network": network, "Aliases": aliases or []}], "Ports": ports or []}
        self.api.post("/sandboxes", spec)
        doc = self.api.get("/sandboxes/" + name)
        pid = doc["State"]["Pid"]
        self._sandbox_pids[name] = (pid, proc_start(pid))
        return pid

    def ip_of(self, name: str, network: str) -> str:
        doc = self.api.get("/sandboxes/" + name)
        return doc["NetworkSettings"]["Networks"][network]["IPAddress"]

    def connect(self, net: str, sb: str) -> None:
        self.api.post(f"/networks/{net}/connect", {"Sandbox": sb})

    def disconnect(self, net: str, sb: str) -> None:
        self.api.post(f"/networks/{net}/disconnect", {"Sandbox": sb})

    def rss_kb(self) -> int | None:
        return rss_kb(self.daemon_pid) if self.daemon_pid else None

    def probe_base(self, base: str, name: str) -> str:
        """Where attach probes start. nsnet (like Docker) refuses to connect a sandbox that runs on the
        `none` network, so a probe starts on a small network of its own and attach = connecting it to a
        second network (it gets eth1), the same shape Docker's `network connect` is measured in."""
        self.run(name, "none")
        try:
            self.connect(base, name)
            self.disconnect(base, name)
            return "none"
        except ApiError:
            self.api.delete(f"/sandboxes/{name}?force=1")
            self.run(name, base)
            return base

    # ---- the end ---------------------------------------------------------------------------------
    def overlay_holders(self) -> list[tuple[int, int]]:
        """(pid, start time) of the processes holding this engine's overlay namespaces (kernel/overlayns.py)."""
        folder, found = os.path.join(self.root, "overlay"), []
        for name in sorted(os.listdir(folder)) if os.path.isdir(folder) else []:
            try:
                with open(os.path.join(folder, name)) as f:
                    rec = json.load(f)
            except (OSError, ValueError):
                continue
            if proc_start(rec.get("pid")) == rec.get("started"):
                found.append((rec["pid"], rec["started"]))
        return found

    def recorded_sandboxes(self) -> list[tuple[int, int]]:
        """(pid, start time) of every sandbox in the engine's store, nsnet's own too (the API does not list a
        swarm's ingress sandbox, as Docker's `ps` does not)."""
        import sqlite3

        found = []
        try:
            con = sqlite3.connect(os.path.join(self.root, "state.db"))
            try:
                for (doc,) in con.execute("SELECT value FROM kv WHERE key LIKE 'local/sandbox/%'"):
                    sb = json.loads(doc)
                    if sb.get("pid") and sb.get("pid_start"):
                        found.append((sb["pid"], sb["pid_start"]))
            finally:
                con.close()
        except sqlite3.Error:
            pass
        return found

    def stop(self) -> None:
        """Stop the daemon and every sandbox process it ran (by pid, checked by start time)."""
        if self.daemon_pid and (proc_start(self.daemon_pid) != self._daemon_start or os.environ.get("NSNET_BENCH_DEBUG")):
            try:  # it died under us: say why, before the root folder goes
                with open(os.path.join(self.root, "daemon.log")) as f:
                    print("  nsnet daemon died; the end of its log:\n    " + "\n    ".join(f.read().splitlines()[-15:]))
            except OSError:
                pass
        pids = dict(self._sandbox_pids)
        if self.daemon_pid:
            try:
                for doc in Client(self.root, autostart=False, timeout=10).get("/sandboxes?all=1"):
                    pid = doc["State"]["Pid"]
                    if pid and doc["State"]["Running"]:
                        pids.setdefault(doc["Name"], (pid, proc_start(pid)))
            except Exception:
                pass
            terminate(self.daemon_pid, self._daemon_start, timeout=5)
            self.daemon_pid = None
        pids.update({f"overlay {pid}": (pid, started) for pid, started in self.overlay_holders()})
        pids.update({f"recorded {pid}": (pid, started) for pid, started in self.recorded_sandboxes()})
        for pid, started in pids.values():  # SIGKILL at once: `sleep` has nothing to save
            if pid and proc_start(pid) == started and started is not None:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        self._sandbox_pids.clear()
