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
Docker Swarm is not run beside it here: figure 8 runs it (overlay only); its services are left for later.
"""
from __future__ import annotations

import json
import statistics
import time

from common import PY, Figure, Skip, have, sh, verdict
from fig_dataplane import _client
from fig_overlay import NET, _pct, seen_by, swarm_of
from peer_nsnet import NsnetEngine

CLIENT = r'''
import socket, sys, json, time
targets, n = sys.argv[1].split(","), int(sys.argv[2])
out, answers = {t: [] for t in targets}, {}
for i in range(n):
    for t in targets:
        t0 = time.perf_counter()
        c = socket.create_connection((t, 8080), timeout=3)
        a = c.recv(100).decode().strip()
        c.close()
        out[t].append((time.perf_counter() - t0) * 1e6)
        if t == targets[0]:
            answers[a] = answers.get(a, 0) + 1
print(json.dumps({"us": out, "answers": answers}))
'''
WHOAMI = [PY, "-c", "import socket,sys\ns=socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
                    "s.bind(('0.0.0.0', 8080)); s.listen(256); me=socket.gethostname().encode()\n"
                    "while True:\n    c,_=s.accept(); c.sendall(me); c.close()"]


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


def run(ctx) -> Figure:
    h, q = ctx.h, ctx.quick
    fig = Figure("10", "Services across two hosts (VIP, routing mesh)")
    if not have("iperf3"):
        raise Skip("iperf3 is not installed")
    n = 300 if q else 1000
    sw, (a, b) = swarm_of(h, "f10sw", ["f10a", "f10b"], ["a", "b"])
    a.create_network("ov", Driver="overlay", Attachable=True)
    seen_by(b, {"ov"})
    client = a.run("c", "ov")

    # start and spread
    _service(a, "web", 5, WHOAMI)
    started = _running(a, "web", 5)
    fig.row(measure="service create returned -> 5 tasks running", value=started * 1000, unit="ms", reps="1")
    time.sleep(1)   # every VIP table written
    doc = json.loads(sh([PY, "-c", CLIENT, _vip(a, "web"), str(n)], client, timeout=600).stdout)
    counts = sorted(doc["answers"].values())
    worst = counts[-1] / (n / 5)
    fig.row(measure="spread over 5 tasks: busiest / fair share", value=worst, unit="x", reps=f"{n} conn",
            target="<= 1.3x", verdict=verdict(worst <= 1.3 and len(counts) == 5), note=f"counts {counts}")

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
    fig.data.update(spread=counts, latency_us=us, vip_gbps=through, direct_gbps=straight, mesh_gbps=series)
    return fig
