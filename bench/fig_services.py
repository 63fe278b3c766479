"""Figure 10: services across two hosts (issue 17): the VIP and the routing mesh, each beside the direct
path to the same task in the same run.

Two nsnet hosts on a switch namespace that runs etcd (figure 8's wiring), `swarm init` / `join`, one
attachable overlay, a client sandbox on host A.
- Start: from `service create --replicas 5` returning to the service's 5 tasks running.
- Spread: N connections from the client to the VIP of the 5 tasks (each answers its host name): the
  busiest task's count over the fair share.
- Added latency per new connection (connect, one answer, close) through the VIP against the same task's own
  address, alternating, to a 1-replica service on host B: the difference of the p50s.
- Throughput: iperf3 from the client to a 1-replica iperf3 service through its VIP, and to the task's
  address (rounds of both, the share taken per round).
- The routing mesh: iperf3 from the switch's namespace (a client on neither host) to a 1-replica iperf3
  service's ingress port on the host that does not run the task (host DNAT, the ingress sandbox's DNAT and
  masquerade, VXLAN to the task) and on the host that does, against the same kind of task's port published
  with mode=host on its own host (one DNAT).
- A rolling update (`--env-add`, one task at a time) and a scale-down 5 -> 2 of the first service, each
  under a client connecting to its VIP over and over for the whole time: the failed connections.
- A dead node: B's daemon SIGKILLed and its link cut (its sandboxes run on, unreachable): time until the
  5 tasks of the first service run on A again (nsnet's liveness TTL is 10 s).
Docker Swarm, the peer, first in the same run: figure 8's two dockerd (manager A, worker B) with busybox
`nc` tasks. Its VIP and its routing mesh are IPVS, which this kernel lacks: each is tried once and what
happened is a note. Its peer values are of `--endpoint-mode dnsrr` (no IPVS): the start, the spread over
connections by name (the client asks 127.0.0.11 anew per connection), and the worker's dockerd SIGKILLed
with its link cut until the 5 tasks run on the manager (Swarm notices by its heartbeat).
"""
from __future__ import annotations

import json
import os
import signal
import statistics
import subprocess
import time
import urllib.parse

from common import PY, Figure, Skip, have, sh, verdict
from fig_dataplane import _client
from fig_overlay import NET, _pct, docker_swarm_of, seen_by, swarm_of, swarm_peer
from peer_docker import IMAGE
from peer_nsnet import NsnetEngine

CLIENT = r'''
import socket, struct, sys, json, time
targets, n = sys.argv[1].split(","), int(sys.argv[2])
out, answers = {t: [] for t in targets}, {}

def first_a(name):
    """A name, asked anew of 127.0.0.11 with one query: the answer's first address (as a client without a cache)."""
    q = struct.pack("!HHHHHH", 0x4242, 0x0100, 1, 0, 0, 0)
    q += b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\0" + struct.pack("!HH", 1, 1)
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(3)
    s.sendto(q, ("127.0.0.11", 53))
    data = s.recv(1500)
    s.close()
    at = len(q)
    for _ in range(struct.unpack("!H", data[6:8])[0]):
        while data[at] and data[at] < 0xC0:
            at += data[at] + 1
        at += 2 if data[at] else 1
        rtype, _, _, size = struct.unpack("!HHIH", data[at:at + 10])
        if rtype == 1:
            return socket.inet_ntoa(data[at + 10:at + 14])
        at += 10 + size
    raise OSError(f"{name}: no address")

for i in range(n):
    for t in targets:
        t0 = time.perf_counter()
        c = socket.create_connection((t if t[0].isdigit() else first_a(t), 8080), timeout=3)
        a = c.recv(100).decode().strip()
        c.close()
        out[t].append((time.perf_counter() - t0) * 1e6)
        if t == targets[0]:
            answers[a] = answers.get(a, 0) + 1
print(json.dumps({"us": out, "answers": answers}))
'''
LOOP = r'''
import json, socket, sys, threading
stop = threading.Event()
threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()
ok, fails = 0, []
while not stop.is_set():
    try:
        c = socket.create_connection((sys.argv[1], 8080), timeout=2)
        c.recv(100)
        c.close()
        ok += 1
    except OSError as e:
        fails.append(str(e))
print(json.dumps({"ok": ok, "fail": len(fails), "errors": sorted(set(fails))[:3]}))
'''
WHOAMI = [PY, "-c", "import socket,sys\ns=socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
                    "s.bind(('0.0.0.0', 8080)); s.listen(256); me=socket.gethostname().encode()\n"
                    "while True:\n    c,_=s.accept(); c.sendall(me); c.close()"]


def _looping(h, ns, target: str, during) -> dict:
    """A client connecting to target:8080 over and over (one answer, close) from `ns` while `during()` runs,
    and a second after: {"ok": n, "fail": m, "errors": [...]}."""
    loop = h.spawn([PY, "-c", LOOP, target], ns, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    time.sleep(0.5)
    during()
    time.sleep(1)
    return json.loads(loop.communicate(input="", timeout=30)[0])


def _service(eng: NsnetEngine, name: str, replicas: int, cmd: list[str], *publish: str) -> None:
    args = ["service", "create", "--name", name, "--replicas", str(replicas), "--network", "ov"]
    for p in publish:
        args += ["--publish", p]
    eng.cli(args + ["--"] + cmd)


def _running(eng: NsnetEngine, name: str, want: int, timeout: float = 30) -> float:
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < timeout:
        doc = next((s for s in eng.api.get("/services") if s["Spec"]["Name"] == name), None)
        if doc and doc["Running"] == want:
            return time.perf_counter() - t0
        time.sleep(0.01)
    raise RuntimeError(f"service {name}: {want} tasks not running after {timeout:.0f} s")


def _vip(eng: NsnetEngine, name: str) -> str:
    return eng.api.get(f"/services/{name}")["Endpoint"]["VirtualIPs"][0]["Addr"].split("/")[0]


def _task(eng: NsnetEngine, name: str) -> dict:
    [task] = eng.api.get(f"/services/{name}/tasks")
    return task


# ---- Docker Swarm, the peer ----------------------------------------------------------------------------
NC_WHOAMI = ["/bin/nc", "-ll", "-p", "8080", "-e", "/bin/hostname"]   # busybox: one hostname per connection
TRY = r'''
import socket, sys
for target in sys.argv[1:]:
    host, port = target.rsplit(":", 1)
    try:
        c = socket.create_connection((host, int(port)), timeout=2)
        print(target, "answered", c.recv(100).decode().strip() or "(nothing)")
        c.close()
    except OSError as e:
        print(target, type(e).__name__, e.strerror or e)
'''


def _tries(ns, *targets: str) -> str:
    """One TCP connection to each "host:port" from `ns`: what each did ("answered NAME", the error)."""
    return "; ".join(sh([PY, "-c", TRY, *targets], ns, timeout=60).stdout.splitlines())


def _swarm_service(d, name: str, replicas: int, mode: str = "vip", publish: int | None = None) -> None:
    endpoint: dict = {"Mode": mode}
    if publish:
        endpoint["Ports"] = [{"Protocol": "tcp", "TargetPort": 8080, "PublishedPort": publish}]
    d.post("/services/create", {"Name": name, "Mode": {"Replicated": {"Replicas": replicas}}, "EndpointSpec": endpoint,
                                "TaskTemplate": {"ContainerSpec": {"Image": IMAGE, "Command": NC_WHOAMI},
                                                 "Networks": [{"Target": "ov"}]}})


def _swarm_tasks(d, name: str) -> list[dict]:
    """The service's tasks meant to run (the manager's view)."""
    return d.get("/tasks?filters=" + urllib.parse.quote(json.dumps({"service": [name], "desired-state": ["running"]})))


def _swarm_running(d, name: str, want: int, node: str | None = None, timeout: float = 60) -> float:
    """Seconds until `want` of the service's tasks run (all on `node`, if given)."""
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < timeout:
        up = [t for t in _swarm_tasks(d, name) if t["Status"]["State"] == "running"]
        if len(up) == want and (node is None or {t["NodeID"] for t in up} == {node}):
            return time.perf_counter() - t0
        time.sleep(0.02)
    raise RuntimeError(f"Docker Swarm: service {name}: {want} tasks not running{' on one node' if node else ''} "
                       f"after {timeout:.0f} s")


def _ipvs_said(d) -> str:
    """dockerd's first complaint about IPVS in its log."""
    with open(d.log_path, errors="replace") as f:
        said = next((line for line in f if "ipvs" in line.lower() and "level=error" in line), "")
    return said.split('msg="', 1)[-1].split('"', 1)[0] if said else "(nothing about IPVS in its log)"


def _docker_swarm(ctx, n: int) -> dict:
    """Docker Swarm's services, as far as they run here (figure 8's two dockerd), measured as nsnet's are."""
    h = ctx.h
    sw, (a, b) = docker_swarm_of(h, "f10dsw", ["f10da", "f10db"])
    if not a.busybox:
        raise Skip("no static busybox for the tasks' image (nc, hostname)")
    out: dict = {"version": a.version}
    a.run("cl", "ov")
    client = a.get("/containers/cl/json")["State"]["Pid"]

    # VIP mode (the default) and a published port through the routing mesh: both are IPVS in Swarm
    _swarm_service(a, "vip", 5)
    out["vip_start_s"] = _swarm_running(a, "vip", 5)
    _swarm_service(a, "mesh", 1, publish=8081)
    _swarm_running(a, "mesh", 1)
    time.sleep(2)
    vip = a.get("/services/vip")["Endpoint"]["VirtualIPs"][0]["Addr"].split("/")[0]
    task_ip = _swarm_tasks(a, "vip")[0]["NetworksAttachments"][0]["Addresses"][0].split("/")[0]
    out["vip"] = _tries(client, f"{vip}:8080", f"{vip}:8080", f"{task_ip}:8080")
    out["mesh"] = _tries(sw, f"{NET}.2:8081", f"{NET}.3:8081")
    out["mesh_dnat"] = "8081" in sh(["iptables-save", "-t", "nat"], a.ns, check=False).stdout
    out["ipvs"] = _ipvs_said(a)
    for name in ("vip", "mesh"):
        a.delete(f"/services/{name}")

    # dnsrr needs no IPVS: start, spread by name, a dead node's tasks
    _swarm_service(a, "rr", 5, mode="dnsrr")
    out["start_s"] = _swarm_running(a, "rr", 5)
    time.sleep(1)
    doc = json.loads(sh([PY, "-c", CLIENT, "rr", str(n)], client, timeout=600).stdout)
    out["spread"] = sorted(doc["answers"].values())
    nodes = {d: d.get("/info")["Swarm"]["NodeID"] for d in (a, b)}
    out["on_b"] = sum(1 for t in _swarm_tasks(a, "rr") if t["NodeID"] == nodes[b])
    os.kill(b.proc.pid, signal.SIGKILL)
    sh(["ip", "link", "set", "up0", "down"], b.ns)
    out["resched_s"] = _swarm_running(a, "rr", 5, node=nodes[a], timeout=120)
    return out


def _swarm_notes(fig: Figure, peer: dict) -> None:
    fig.notes.append(f"Docker Swarm: dockerd {peer['version']} x 2 (manager A, worker B), swarm mode, an attachable "
                     f"overlay; its tasks run busybox `nc -ll -p 8080 -e hostname`")
    fig.notes.append(f"Docker Swarm, VIP mode (the default): 5 tasks ran after {peer['vip_start_s']:.1f} s, but from "
                     f"a container on the overlay: {peer['vip']} (VIP twice, then a task's own address). "
                     f"dockerd logs: \"{peer['ipvs']}\" - Swarm's VIP is an IPVS service, and this kernel has no IPVS; "
                     f"so no VIP rows for Swarm")
    fig.notes.append(f"Docker Swarm, routing mesh (a published port, ingress): from the switch's namespace "
                     f"{peer['mesh']}; host A's nat table {'has' if peer['mesh_dnat'] else 'has no'} rule for port "
                     f"8081 - dockerd writes the port's DNAT to its ingress sandbox together with that sandbox's "
                     f"IPVS service, and stops at IPVS; so no mesh rows for Swarm")
    fig.notes.append("Docker Swarm's peer values are of --endpoint-mode dnsrr (no IPVS): the client resolves the "
                     "name anew per connection (one query to 127.0.0.11, no cache) and takes the answer's first "
                     "address; Docker's resolver shuffles the tasks' addresses")


def run(ctx) -> Figure:
    h, q = ctx.h, ctx.quick
    fig = Figure("10", "Services across two hosts (VIP, routing mesh)")
    if not have("iperf3"):
        raise Skip("iperf3 is not installed")
    n = 300 if q else 1000
    peer = swarm_peer(ctx, fig, _docker_swarm, n)
    if peer:
        _swarm_notes(fig, peer)
    swarm = "Docker Swarm (dnsrr)" if peer else ""
    sw, (a, b) = swarm_of(h, "f10sw", ["f10a", "f10b"], ["a", "b"])
    a.create_network("ov", Driver="overlay", Attachable=True)
    seen_by(b, {"ov"})
    client = a.run("c", "ov")

    # start and spread
    _service(a, "web", 5, WHOAMI)
    started = _running(a, "web", 5)
    fig.row(measure="service create returned -> 5 tasks running", value=started * 1000, unit="ms", reps="1",
            peer=swarm, peer_value=peer["start_s"] * 1000 if peer else None)
    time.sleep(1)   # every VIP table written
    doc = json.loads(sh([PY, "-c", CLIENT, _vip(a, "web"), str(n)], client, timeout=600).stdout)
    counts = sorted(doc["answers"].values())
    worst = counts[-1] / (n / 5)
    theirs = peer.get("spread", [])
    fig.row(measure="spread over 5 tasks: busiest / fair share", value=worst, unit="x", reps=f"{n} conn",
            peer=swarm, peer_value=theirs[-1] / (n / 5) if theirs else None,
            target="<= 1.3x", verdict=verdict(worst <= 1.3 and len(counts) == 5),
            note=f"counts {counts}; nsnet through the VIP" + (f", Swarm by name: counts {theirs}" if peer else ""))

    # added latency per new connection, the task on the other host
    _service(b, "one", 1, WHOAMI)
    _running(a, "one", 1)
    vip, task = _vip(a, "one"), _task(a, "one")
    direct = task["NetworksAttachments"][0]["Addresses"][0]
    time.sleep(1)
    us = json.loads(sh([PY, "-c", CLIENT, f"{vip},{direct}", str(n)], client, timeout=600).stdout)["us"]
    added = statistics.median(us[vip]) - statistics.median(us[direct])
    fig.row(measure="VIP: added per new connection (p50)", value=added,
            unit="us", reps=f"{n} conn", peer="direct to the task", peer_value=statistics.median(us[direct]),
            note=f"task on host {task['Node']}; VIP p50 {statistics.median(us[vip]):.0f} us, p99 {_pct(us[vip], 0.99):.0f} us; "
                 f"direct p99 {_pct(us[direct], 0.99):.0f} us",
            target="<= 50 us", verdict=verdict(added <= 50))

    # throughput through the VIP vs to the task's address
    _service(a, "perf", 1, ["iperf3", "-s"])
    _running(a, "perf", 1)
    pvip, ptask = _vip(a, "perf"), _task(a, "perf")
    pdirect = ptask["NetworksAttachments"][0]["Addresses"][0]
    time.sleep(1)
    through, straight, shares = [], [], []
    for _ in range(ctx.iperf_reps):
        v, d = _client(client, pvip, 5201, ctx.iperf_seconds), _client(client, pdirect, 5201, ctx.iperf_seconds)
        through.append(v)
        straight.append(d)
        shares.append(v / d)
    s = statistics.median(shares)
    fig.row(measure="TCP through the VIP", value=statistics.median(through), note=f"task on host {ptask['Node']}",
            unit="Gbit/s", reps=f"{len(through)}x{ctx.iperf_seconds}s", peer="direct to the task",
            peer_value=statistics.median(straight), ratio=s, ratio_text=f"{s * 100:.0f}% of direct",
            target=">= 90% of direct", verdict=verdict(s >= 0.9))

    # the routing mesh from outside the hosts vs the task's own port (mode=host)
    _service(a, "meshperf", 1, ["iperf3", "-s"], "published=5201,target=5201")
    _service(a, "hostperf", 1, ["iperf3", "-s"], "published=5202,target=5201,mode=host")
    _running(a, "meshperf", 1)
    _running(a, "hostperf", 1)
    addr = {"a": f"{NET}.2", "b": f"{NET}.3"}
    mnode, hnode = _task(a, "meshperf")["Node"], _task(a, "hostperf")["Node"]
    other = "b" if mnode == "a" else "a"
    time.sleep(2)   # both hosts' ingress sandboxes and their tables
    series = {"other": [], "same": [], "host": []}
    for _ in range(ctx.iperf_reps):
        series["other"].append(_client(sw, addr[other], 5201, ctx.iperf_seconds))
        series["same"].append(_client(sw, addr[mnode], 5201, ctx.iperf_seconds))
        series["host"].append(_client(sw, addr[hnode], 5202, ctx.iperf_seconds))
    host_med = statistics.median(series["host"])
    for key, where in (("other", "a host without the task"), ("same", "the task's host")):
        shares = [m / d for m, d in zip(series[key], series["host"])]
        s = statistics.median(shares)
        fig.row(measure=f"mesh TCP via {where}", value=statistics.median(series[key]),
                unit="Gbit/s", reps=f"{len(shares)}x{ctx.iperf_seconds}s", peer="mode=host on the task's host",
                peer_value=host_med, ratio=s, ratio_text=f"{s * 100:.0f}% of mode=host",
                note="client outside the hosts (the switch's namespace)", verdict="INFO")
    fig.data.update(spread=counts, latency_us=us, vip_gbps=through, direct_gbps=straight, mesh_gbps=series, swarm=peer)

    # a rolling update and a scale-down of "web" under a client looping over its VIP for the whole time
    web = _vip(a, "web")
    rolled = _looping(h, client, web, lambda: a.cli(["service", "update", "--env-add", "ROLLED=1", "web"]))
    fig.row(measure="rolling update of 5 tasks (1 at a time): failed requests", value=rolled["fail"], unit="",
            reps=f"{rolled['ok'] + rolled['fail']} req", target="0", verdict=verdict(rolled["fail"] == 0),
            note="client looping over the VIP through `service update --env-add`" + (
                f"; errors: {rolled['errors']}" if rolled["fail"] else "")
                 + ("; Swarm not beside it: its VIP needs IPVS" if peer else ""))
    def scale_down():
        a.cli(["service", "scale", "web=2"])
        t0 = time.perf_counter()   # until the 3 stopped tasks are gone, not only out of rotation
        while len(a.api.get("/services/web/tasks")) > 2 and time.perf_counter() - t0 < 30:
            time.sleep(0.05)
    scaled = _looping(h, client, web, scale_down)
    fig.row(measure="scale-down 5 -> 2: failed requests", value=scaled["fail"], unit="",
            reps=f"{scaled['ok'] + scaled['fail']} req", target="0", verdict=verdict(scaled["fail"] == 0),
            note="client looping over the VIP" + (f"; errors: {scaled['errors']}" if scaled["fail"] else ""))
    fig.data.update(rolling_update=rolled, scale_down=scaled)
    a.cli(["service", "scale", "web=5"])
    _running(a, "web", 5)

    # a dead node: B's daemon killed and its link cut (its sandboxes run on, unreachable); "web"'s 5 tasks all on A
    on_b = sum(1 for t in a.api.get("/services/web/tasks") if t["Node"] == "b" and t["DesiredState"] == "running")
    os.kill(b.daemon_pid, signal.SIGKILL)
    sh(["ip", "link", "set", "up0", "down"], b.ns)
    b.daemon_pid = None   # killed on purpose: its stop() must not report it
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < 60:
        up = [t["Node"] for t in a.api.get("/services/web/tasks")
              if t["DesiredState"] == "running" and t["Status"]["State"] == "running"]
        if up == ["a"] * 5:
            break
        time.sleep(0.05)
    else:
        raise RuntimeError(f"B's tasks of web were not running on A 60 s after B died: {up}")
    back = time.perf_counter() - t0
    fig.row(measure="dead node: its tasks running on the other again", value=back, unit="s", reps="1",
            peer=swarm, peer_value=peer.get("resched_s"), target="<= TTL + 5 s (15 s)", verdict=verdict(back <= 15),
            note=f"B's daemon SIGKILLed and its link cut, {on_b} of 5 tasks on B"
                 + (f"; Swarm: the worker's dockerd, the same, {peer['on_b']} of 5 on B" if peer else ""))
    return fig
