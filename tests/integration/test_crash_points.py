"""kill -9 of the daemon at every crash point (nsnet.crashpoints.NAMES), then a restart: the host must be
as the records say, and work must go on.

One host for the whole walk (a daemon start is ~0.3 s, a fresh host several): network `red` with
sandboxes `a` (publishing a port) and `b`, network `blue` to connect to. For each point: prepare, stop
the daemon, start one armed with NSNET_CRASH_AT, run the operation that reaches the point, see the
daemon die of SIGKILL there, restart it (the next CLI call), check the invariants with kernel reads,
then retry the operation (the name, the port, the address are free again) and go back to the baseline.
"""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time

from conftest import wait_for
from nsnet.client import ApiError, Client
from nsnet.crashpoints import ENV, NAMES
from nsnet.store.records import Records
from nsnet.store.sqlite import SqliteKV

RUN_C = ("run", "-d", "--name", "c", "--network", "red", "-p", "8082:80", "--", "sleep", "7301")
RUN_FG = ("run", "--name", "c", "--network", "red", "--", "true")


def gone(pid: int) -> bool:
    """Dead, its files closed (the daemon's lock and socket with them): no process or a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except OSError:
        return True


def processes_of_c() -> list[int]:
    """Live processes of sandbox c (its command, or its first process before that): found by its argv."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
        except OSError:
            continue
        if b"7301" in argv and not gone(int(pid)):
            found.append(int(pid))
    return found


def open_store(host) -> Records:
    """The engine's records, read (or written) the way the engine does."""
    return Records(SqliteKV(os.path.join(host.root, "state.db")))


class Walk:
    def __init__(self, host):
        self.host = host
        self.log = os.path.join(host.root, "daemon.log")

    # ---- the daemon ----------------------------------------------------------------------------

    def stop_daemon(self) -> None:
        """kill -9 at rest too (SIGTERM waits up to half a second for the server's poll)."""
        pid = self.host.daemon_pid()
        if pid:
            os.kill(pid, signal.SIGKILL)
            assert wait_for(lambda: gone(pid), timeout=10)

    def start_armed(self, point: str) -> subprocess.Popen:
        cmd = ["ip", "netns", "exec", self.host.ns, sys.executable, "-m", "nsnet", "--root", self.host.root, "daemon"]
        with open(self.log, "ab") as log:
            return subprocess.Popen(cmd, env=dict(os.environ, **{ENV: point}), stdin=subprocess.DEVNULL,
                                    stdout=log, stderr=log, start_new_session=True)

    def wait_serving(self, proc: subprocess.Popen) -> None:
        """Until this daemon answers (not one on its way out, whose socket still takes connections)."""
        def up():
            if proc.poll() is not None:
                return True
            try:
                return Client(self.host.root, autostart=False, timeout=5).get("/_ping")["pid"] == proc.pid
            except (OSError, ApiError):
                return False
        assert wait_for(up, timeout=20)

    # ---- the records and the kernel ------------------------------------------------------------

    def records(self) -> dict[str, list[dict]]:
        store = open_store(self.host)
        try:
            return {kind: store.list(kind) for kind in ("network", "sandbox", "endpoint")}
        finally:
            store.close()

    def check(self, point: str) -> None:
        """The records hang together and match the kernel: in the host, inside every running sandbox, in
        the firewall; ports no running sandbox publishes are free; two sandboxes reach each other."""
        rec = self.records()
        nets = {n["id"]: n for n in rec["network"]}
        running = {s["id"]: s for s in rec["sandbox"] if s["state"] == "running"}
        eps = rec["endpoint"]
        self.check_records(point, rec["sandbox"], running, eps)
        self.check_host(point, nets, eps)
        self.check_inside(point, running, eps)
        self.check_firewall(point, nets, running, eps)
        self.ping("a", "b")

    def check_records(self, point: str, sbs: list[dict], running: dict, eps: list[dict]) -> None:
        assert all(s["state"] in ("running", "exited") for s in sbs), (point, sbs)   # no run half made
        assert set(os.listdir(os.path.join(self.host.root, "sandboxes"))) <= {s["id"] for s in sbs}, point
        for sb in running.values():   # a running sandbox is on every network it asks for, and on no other
            on = sorted(e["network_id"] for e in eps if e["sandbox_id"] == sb["id"])
            assert on == sorted(r["network_id"] for r in sb["requests"]), (point, sb["name"])
        assert {e["sandbox_id"] for e in eps} <= set(running), point
        v4 = [e["ipv4"] for e in eps if e["ipv4"]]
        assert len(v4) == len(set(v4)), (point, v4)

    def check_host(self, point: str, nets: dict, eps: list[dict]) -> None:
        """Every bridge up; every endpoint's host end up, on its network's bridge or a leaf; nothing else of ours."""
        links = {l["ifname"]: l for l in json.loads(self.host.sh("ip -j -d link show").stdout)}
        for br in (n["bridge"] for n in nets.values() if n["driver"] == "bridge"):
            assert br in links and "UP" in links[br]["flags"], (point, br)
        for ep in eps:
            link = links.get(ep["host_ifname"])
            assert link is not None and "UP" in link["flags"], (point, ep["host_ifname"])
            master = link.get("master", "")
            assert master == nets[ep["network_id"]]["bridge"] or master.startswith("nsl"), (point, link)
        strays = {n for n in links if n.startswith("nsv")} - {e["host_ifname"] for e in eps}
        mark = "nsnet network "
        owners = {l.get("ifalias", "")[len(mark):] for l in links.values() if l.get("ifalias", "").startswith(mark)}
        assert not strays and owners <= set(nets), (point, strays, owners - set(nets))

    def check_inside(self, point: str, running: dict, eps: list[dict]) -> None:
        """In each running sandbox, read with ip -j: each endpoint's link up with its address, no other
        link, the default route via the first endpoint with a gateway."""
        own = [s for s in running.values() if s["netmode"] == "bridge"]
        script = "; ".join(f"nsenter -t {s['pid']} -n ip -j addr show; nsenter -t {s['pid']} -n ip -j route show default"
                           for s in own)
        views = [json.loads(v) for v in self.host.sh(f"sh -c '{script}'").stdout.splitlines() if v.strip()] if own else []
        for sb, addrs, routes in zip(own, views[0::2], views[1::2]):
            inside = {a["ifname"]: a for a in addrs}
            mine = sorted((e for e in eps if e["sandbox_id"] == sb["id"]), key=lambda e: int(e["ifname"][3:]))
            assert set(inside) - {"lo"} == {e["ifname"] for e in mine}, (point, sb["name"], set(inside))
            for e in mine:
                link = inside[e["ifname"]]
                assert "UP" in link["flags"], (point, sb["name"], link)
                assert e["ipv4"] in {f"{a['local']}/{a['prefixlen']}" for a in link["addr_info"]}, (point, link)
            gw = next((e["gateway4"] for e in mine if e["gateway4"]), None)
            assert gw is None or [r.get("gateway") for r in routes] == [gw], (point, sb["name"], routes)
        assert len(views) == 2 * len(own), point

    def check_firewall(self, point: str, nets: dict, running: dict, eps: list[dict]) -> None:
        """The table has every network's bridge and every running sandbox's published port, nothing else;
        8082, the crashed runs' port, is free unless a running sandbox publishes it."""
        table = self.host.sh("nft list table inet nsnet").stdout
        bridges = {n["bridge"] for n in nets.values() if n["driver"] == "bridge"}
        assert set(re.findall(r"\b(nsbr[\w-]*|nsnet0)\b", table)) == bridges, point
        want = set()
        for sb in running.values():
            ip = next((e["ipv4"].split("/")[0] for e in eps if e["sandbox_id"] == sb["id"]), None)
            want |= {(str(p["host_port"]), ip, str(p["port"])) for p in sb["ports"]}
        assert set(re.findall(r"dport (\d+) dnat ip to ([\d.]+):(\d+)", table)) == want, (point, want)
        held = {p["host_port"] for s in running.values() for p in s["ports"]}
        bind = self.host.sh(f"{sys.executable} -c 'import socket; socket.socket().bind((\"0.0.0.0\", 8082))'",
                            check=False)
        assert (bind.returncode == 0) == (8082 not in held), (point, bind.stderr)

    def ping(self, src: str, dst: str) -> None:
        ip = self.host.json("inspect", dst)[0]["NetworkSettings"]["Networks"]["red"]["IPAddress"]
        assert self.host.exec(src, f"ping -c1 -W1 {ip}", check=False).returncode == 0, (src, dst)

    # ---- what the user sees afterwards ---------------------------------------------------------

    def names(self) -> set[str]:
        return {s["Name"].lstrip("/") for s in self.host.json("ps", "-a", "--format", "json")}

    def on_blue(self, sandbox: str) -> bool:
        return "blue" in self.host.json("inspect", sandbox)[0]["NetworkSettings"]["Networks"]


# Each point: (what to prepare with a sound daemon, the operation that reaches the point, what must hold and
# be done afterwards). Reconcile's own points have no operation: the armed daemon dies while starting, on
# a host damaged while no daemon ran.

def prepare_nothing(w): pass


def prepare_green(w):
    w.host.nsnet("network", "create", "--subnet", "10.83.0.0/24", "-o", "com.docker.network.bridge.name=nsbrgreen", "green")


def prepare_c(w):
    w.host.nsnet(*RUN_C)


def prepare_connected(w):
    w.host.nsnet("network", "connect", "blue", "a")


def damage(w):
    """While no daemon runs: a bridge deleted, a sandbox's address flushed and its link down, leftovers."""
    w.host.sh("ip link del nsbrred")
    pid = next(s["pid"] for s in w.records()["sandbox"] if s["name"] == "b")
    w.host.sh(f"nsenter -t {pid} -n sh -c 'ip addr flush dev eth0; ip link set eth0 down'")
    w.host.sh("ip link add nsvdeadbeef0001 type veth peer name strayp")
    os.makedirs(os.path.join(w.host.root, "sandboxes", "deadbeef" * 8), exist_ok=True)


def after_green_created(w, point):
    names = [n["Name"] for n in w.host.json("network", "ls", "--format", "json")]
    if "green" not in names:  # undone: the name and the bridge's name are free
        prepare_green(w)
    w.host.nsnet("network", "rm", "green")


def after_green_removed(w, point):
    names = [n["Name"] for n in w.host.json("network", "ls", "--format", "json")]
    if "green" in names:
        w.host.nsnet("network", "rm", "green")


def after_run(w, point):
    started = point == "run.after-running"
    assert ("c" in w.names()) == started, point   # a run that never started leaves nothing: no record,
    assert wait_for(lambda: bool(processes_of_c()) == started, timeout=5), point   # no process
    if not started:
        w.host.nsnet(*RUN_C)                        # the name and the port are free
    w.ping("c", "a")
    w.host.nsnet("rm", "-f", "c")


def after_run_fg(w, point):
    # A foreground run's command starts when the CLI hears back: killed before that, it never ran.
    # Killed after the record said running, the CLI ends the command, and the sandbox shows as exited.
    assert ("c" in w.names()) == (point == "run.after-running"), point
    if "c" in w.names():
        w.host.nsnet("rm", "c")
    w.host.nsnet(*RUN_FG)                           # the name is free
    w.host.nsnet("rm", "c")


def after_connect(w, point):
    if w.on_blue("a"):  # finished: it says so and its link works (checked above)
        p = w.host.nsnet("network", "connect", "blue", "a", check=False)
        assert p.returncode != 0 and "already connected" in p.stderr, point
    else:               # undone: a retry works
        w.host.nsnet("network", "connect", "blue", "a")
    w.host.nsnet("network", "disconnect", "blue", "a")


def after_disconnect(w, point):
    if w.on_blue("a"):
        w.host.nsnet("network", "disconnect", "blue", "a")
    assert not w.on_blue("a"), point


def after_stop(w, point):
    assert w.host.json("inspect", "c")[0]["State"]["Status"] == "exited", point
    w.host.nsnet("rm", "c")


def after_rm(w, point):
    assert "c" not in w.names(), point


def after_nothing(w, point):
    pass


def case(point):
    if point.startswith("network-create."):
        return prepare_nothing, ("network", "create", "--subnet", "10.83.0.0/24", "-o",
                                 "com.docker.network.bridge.name=nsbrgreen", "green"), after_green_created
    if point.startswith("network-rm."):
        return prepare_green, ("network", "rm", "green"), after_green_removed
    if point.startswith("run."):
        return prepare_nothing, RUN_C, after_run
    if point.startswith(("join.", "connect.")):
        return prepare_nothing, ("network", "connect", "blue", "a"), after_connect
    if point.startswith("disconnect."):
        return prepare_connected, ("network", "disconnect", "blue", "a"), after_disconnect
    if point.startswith(("stop.", "exited.")):
        return prepare_c, ("stop", "-t", "1", "c"), after_stop
    if point.startswith("rm."):
        return prepare_c, ("rm", "-f", "c"), after_rm
    assert point.startswith("reconcile."), point
    return prepare_nothing, None, after_nothing


# The foreground run's own points (the CLI, not the daemon, starts its process), and a run whose join is cut.
EXTRA = [("run.after-record", RUN_FG, after_run_fg), ("run.after-join", RUN_FG, after_run_fg),
         ("run.after-running", RUN_FG, after_run_fg), ("join.after-veth", RUN_C, after_run)]


def test_a_kill_at_every_crash_point_then_a_restart_leaves_the_host_as_the_records_say(host):
    w = Walk(host)
    host.nsnet("network", "create", "--subnet", "10.81.0.0/24", "-o", "com.docker.network.bridge.name=nsbrred", "red")
    host.nsnet("network", "create", "--subnet", "10.82.0.0/24", "-o", "com.docker.network.bridge.name=nsbrblue", "blue")
    host.nsnet("run", "-d", "--name", "a", "--network", "red", "-p", "8081:80", "--", "sleep", "600")
    host.nsnet("run", "-d", "--name", "b", "--network", "red", "--", "sleep", "600")
    w.check("baseline")

    walk = [(p, *case(p)) for p in NAMES]
    walk += [(p, prepare_nothing, op, after) for p, op, after in EXTRA]
    started = time.monotonic()
    for point, prepare, op, after in walk:
        prepare(w)
        w.stop_daemon()
        if op is None:
            damage(w)
        logged = os.path.getsize(w.log)
        proc = w.start_armed(point)
        if op is not None:
            w.wait_serving(proc)
            assert proc.poll() is None, f"{point}: the armed daemon died before the operation"
            p = host.nsnet(*op, check=False)
            assert p.returncode != 0, f"{point}: {op} did not reach the crash point\n{p.stdout}"
        try:
            code = proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise AssertionError(f"{point}: never reached") from None
        assert code == -signal.SIGKILL, point
        with open(w.log) as f:
            f.seek(logged)
            assert f"crash point {point} reached" in f.read(), point
        host.json("ps", "-a", "--format", "json")          # restarts the daemon, unarmed
        w.check(point)
        after(w, point)
    print(f"\n{len(walk)} crash points walked ({len(NAMES)} named) in {time.monotonic() - started:.1f} s")
    assert {p for p, *_ in walk} == set(NAMES)


def test_a_record_that_breaks_a_step_is_reported_and_the_daemon_serves_the_rest(host):
    """As netavark's teardown: a network the kernel cannot build (a bridge name over 15 characters, written
    into the store behind the daemon's back) fails its steps, the rest of reconcile goes on."""
    host.nsnet("network", "create", "--subnet", "10.81.0.0/24", "red")
    host.nsnet("run", "-d", "--name", "a", "--network", "red", "--", "sleep", "300")
    pid = host.daemon_pid()
    os.kill(pid, signal.SIGKILL)
    assert wait_for(lambda: gone(pid))
    store = open_store(host)
    red = next(n for n in store.list("network") if n["name"] == "red")
    bad = dict(red, id="f" * 64, name="broken", bridge="nsbr-far-too-long-a-name",
               subnets=[{"subnet": "10.99.0.0/24", "gateway": "10.99.0.1", "ip_range": None, "aux": {}}])
    store.put("network", bad["id"], bad)
    store.close()
    host.sh("ip link add nsvdeadbeef0002 type veth peer name strayq")   # work for a later step

    names = {n["Name"] for n in host.json("network", "ls", "--format", "json")}   # the daemon starts
    assert {"red", "broken"} <= names
    log = open(os.path.join(host.root, "daemon.log")).read()
    assert "reconcile: network broken: failed:" in log
    assert "reconcile: apply_firewall: failed:" in log                   # nftables cannot hold its name either
    assert "nsvdeadbeef0002" not in host.state()["links"]                 # the steps after it ran
    host.nsnet("run", "-d", "--name", "b", "--network", "red", "--", "sleep", "300")
    ip = host.json("inspect", "a")[0]["NetworkSettings"]["Networks"]["red"]["IPAddress"]
    assert host.exec("b", f"ping -c1 -W1 {ip}", check=False).returncode == 0


def test_a_sandbox_link_left_half_plumbed_is_plumbed_again_at_restart(host):
    """What a kill -9 inside an attach can leave (issue item 8): the endpoint recorded, its host end on the
    bridge, but inside the sandbox the link down with no address and no default route."""
    host.nsnet("network", "create", "--subnet", "10.81.0.0/24", "red")
    for n in ("a", "b"):
        host.nsnet("run", "-d", "--name", n, "--network", "red", "--", "sleep", "300")
    ip = host.json("inspect", "a")[0]["NetworkSettings"]["Networks"]["red"]["IPAddress"]
    pid = host.json("inspect", "b")[0]["State"]["Pid"]
    daemon = host.daemon_pid()
    os.kill(daemon, signal.SIGKILL)
    assert wait_for(lambda: gone(daemon))
    host.sh(f"nsenter -t {pid} -n sh -c 'ip addr flush dev eth0; ip link set eth0 down'")

    host.json("ps", "--format", "json")                                     # restarts the daemon
    inside = json.loads(host.sh(f"nsenter -t {pid} -n ip -j addr show dev eth0").stdout)[0]
    assert "UP" in inside["flags"] and any(a["local"].startswith("10.81.0.") for a in inside["addr_info"])
    assert "default via 10.81.0.1" in host.sh(f"nsenter -t {pid} -n ip route").stdout
    assert host.exec("b", f"ping -c1 -W1 {ip}", check=False).returncode == 0
    assert "b: eth0 on red lacked" in open(os.path.join(host.root, "daemon.log")).read()


def test_a_failed_run_leaves_no_folder_and_frees_its_name(host):
    squatter = host.sh(f"sh -c '{sys.executable} -c \"import socket,time; s=socket.socket(); "
                       f"s.bind((\\\"0.0.0.0\\\", 9998)); s.listen(); time.sleep(60)\" >/dev/null 2>&1 & echo $!'").stdout
    try:
        assert wait_for(lambda: ":9998" in host.sh("ss -ltn").stdout)
        p = host.nsnet("run", "-d", "--name", "c", "-p", "9998:80", "--", "sleep", "300", check=False)
        assert p.returncode != 0
    finally:
        os.kill(int(squatter), signal.SIGKILL)
    assert os.listdir(os.path.join(host.root, "sandboxes")) == []
    host.nsnet("run", "-d", "--name", "c", "--", "sleep", "300")
