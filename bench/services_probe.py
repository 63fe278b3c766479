"""Services across two hosts (issue 17), measured once, as root: `python3 bench/services_probe.py [N]`.

Two hosts of a swarm (namespaces with their own daemons, etcd in the switch's namespace: the integration
tests' swarmnet.py), one attachable overlay, a client sandbox on host A.
- start: from `service create --replicas 5` returning to `service ls` saying 5/5;
- spread: N (1,000) connections from the client to the VIP of the 5 tasks (each answers its host name):
  the busiest task's count over the fair share;
- latency per new connection (connect, one answer, close) through the VIP vs to the same task's own
  address, alternating, N each, to a 1-replica service: p50 and p99;
- throughput: iperf3 (one TCP stream, 5 s) from the client to a 1-replica iperf3 service, through its VIP
  and to the task's address;
- the routing mesh: iperf3 from outside the hosts (the switch's namespace) to a 1-replica iperf3 service's
  ingress port on the host without its task (host DNAT, ingress sandbox, VXLAN to the task) and on the host
  with it, against the same task's port published with mode=host (one DNAT on its own host).
Docker Swarm is not run beside it: its engines do not run in namespaces in this harness (issue 15's note).
"""
from __future__ import annotations

import json
import os
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests", "integration"))

from conftest import wait_for  # noqa: E402
from swarmnet import form, swarm_hosts  # noqa: E402

NETCHECK = os.path.join(HERE, "..", "tests", "integration", "netcheck.py")
PY = sys.executable

CLIENT = r'''
import socket, sys, time, json
targets, n = sys.argv[1].split(","), int(sys.argv[2])
out = {t: [] for t in targets}
answers = {}
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


def replicas(h, name) -> str:
    rows = [line.split() for line in h.nsnet("service", "ls").stdout.splitlines()[1:]]
    return next((r[3] for r in rows if r[1] == name), "")


def pct(values, q):
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q * (len(values) - 1))))]


def main() -> int:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 1000
    with swarm_hosts("bsv") as (etcd, (a, b)):
        form([a, b])
        a.nsnet("network", "create", "-d", "overlay", "--attachable", "ov")
        wait_for(lambda: "ov" in b.nsnet("network", "ls").stdout, timeout=5)
        a.nsnet("run", "-d", "--name", "c", "--network", "ov", "--", "sleep", "3600")
        t0 = time.monotonic()
        a.nsnet("service", "create", "--name", "web", "--replicas", "5", "--network", "ov", "--",
                PY, NETCHECK, "whoami", "8080")
        assert wait_for(lambda: replicas(a, "web") == "5/5", timeout=30, interval=0.02)
        started = time.monotonic() - t0
        vip = a.json("service", "inspect", "web")[0]["Endpoint"]["VirtualIPs"][0]["Addr"].split("/")[0]
        time.sleep(1)   # every table written
        doc = json.loads(a.exec("c", f"{PY} -c '{CLIENT}' {vip} {n}", timeout=600).stdout)
        counts = sorted(doc["answers"].values())
        worst = counts[-1] / (n / 5)

        a.nsnet("service", "create", "--name", "one", "--replicas", "1", "--network", "ov", "--",
                PY, NETCHECK, "whoami", "8080")
        assert wait_for(lambda: replicas(a, "one") == "1/1", timeout=30)
        one = a.json("service", "inspect", "one")[0]["Endpoint"]["VirtualIPs"][0]["Addr"].split("/")[0]
        [task] = a.json("service", "ps", "one", "--format", "json")
        direct = task["NetworksAttachments"][0]["Addresses"][0]
        time.sleep(1)
        lat = json.loads(a.exec("c", f"{PY} -c '{CLIENT}' {one},{direct} {n}", timeout=600).stdout)["us"]

        a.nsnet("service", "create", "--name", "perf", "--replicas", "1", "--network", "ov", "--", "iperf3", "-s")
        assert wait_for(lambda: replicas(a, "perf") == "1/1", timeout=30)
        pvip = a.json("service", "inspect", "perf")[0]["Endpoint"]["VirtualIPs"][0]["Addr"].split("/")[0]
        [ptask] = a.json("service", "ps", "perf", "--format", "json")
        pdirect = ptask["NetworksAttachments"][0]["Addresses"][0]
        time.sleep(1)
        gbps = {}
        for label, target in (("vip", pvip), ("direct", pdirect), ("vip2", pvip), ("direct2", pdirect)):
            out = json.loads(a.exec("c", f"iperf3 -J -t 5 -c {target}", timeout=60).stdout)
            gbps[label] = out["end"]["sum_received"]["bits_per_second"] / 1e9

        mesh = routing_mesh(etcd, a, b)

        print(f"start: 5 tasks running {started:.2f} s after service create returned")
        print(f"spread: {n} connections over 5 tasks: {counts} (busiest {worst:.2f}x its fair share)")
        for label, key in (("vip", one), ("direct", direct)):
            us = lat[key]
            print(f"latency {label}: p50 {statistics.median(us):.0f} us, p99 {pct(us, 0.99):.0f} us "
                  f"(task on {task['Node']}, client on host-a)")
        print(f"added per connection through the VIP at p50: {statistics.median(lat[one]) - statistics.median(lat[direct]):.0f} us")
        print("throughput (Gbit/s, task on %s): vip %.2f / %.2f, direct %.2f / %.2f -> vip/direct %.0f %%" % (
            ptask["Node"], gbps["vip"], gbps["vip2"], gbps["direct"], gbps["direct2"],
            100 * (gbps["vip"] + gbps["vip2"]) / (gbps["direct"] + gbps["direct2"])))
        print("routing mesh (Gbit/s, from outside, task on %s): via the other host %.2f / %.2f, via its host "
              "%.2f / %.2f, mode=host %.2f / %.2f -> mesh via the other host / mode=host %.0f %%" % (
                  mesh["node"], *mesh["other"], *mesh["same"], *mesh["host"],
                  100 * sum(mesh["other"]) / sum(mesh["host"])))
    return 0


def routing_mesh(etcd, a, b) -> dict:
    """iperf3 from the switch's namespace to one iperf3 task: through the mesh on each host, and to the port
    its own host publishes with mode=host. Two rounds, interleaved."""
    a.nsnet("service", "create", "--name", "meshperf", "--replicas", "1", "--network", "ov",
            "--publish", "published=5201,target=5201", "--", "iperf3", "-s")
    a.nsnet("service", "create", "--name", "hostperf", "--replicas", "1", "--network", "ov",
            "--publish", "published=5202,target=5201,mode=host", "--", "iperf3", "-s")
    assert wait_for(lambda: replicas(a, "meshperf") == "1/1" and replicas(a, "hostperf") == "1/1", timeout=30)
    [mtask] = a.json("service", "ps", "meshperf", "--format", "json")
    [htask] = a.json("service", "ps", "hostperf", "--format", "json")
    addr = {"host-a": "192.168.213.2", "host-b": "192.168.213.3"}
    other = "host-b" if mtask["Node"] == "host-a" else "host-a"
    time.sleep(2)   # the ingress sandboxes and their tables

    def iperf(target: str, port: int) -> float:
        import subprocess
        p = subprocess.run(["ip", "netns", "exec", etcd.ns, "iperf3", "-J", "-t", "5", "-c", target, "-p", str(port)],
                           capture_output=True, text=True, timeout=60)
        return json.loads(p.stdout)["end"]["sum_received"]["bits_per_second"] / 1e9

    out = {"node": mtask["Node"], "other": [], "same": [], "host": []}
    for _ in range(2):
        out["other"].append(iperf(addr[other], 5201))
        out["same"].append(iperf(addr[mtask["Node"]], 5201))
        out["host"].append(iperf(addr[htask["Node"]], 5202))
    return out


if __name__ == "__main__":
    sys.exit(main())
