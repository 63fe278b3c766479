"""Figure 8: overlay networks across two hosts (issue 15), beside a bare VXLAN pair in the same run.

Two nsnet hosts (namespaces with their own daemons) joined by veths to a switch namespace, which also runs
etcd (Debian's etcd-server); `swarm init` / `join`; one attachable overlay.
- Throughput: iperf3 TCP (one stream, pinned as in figure 7) from a sandbox on host B to one on host A,
  against a bare VXLAN pair built by hand between the same two host namespaces (a VXLAN link each, learning
  off, one static forwarding entry, addresses on the links themselves): the kernel's own cost of VXLAN.
- Overlay attach through the API: a running sandbox on host A connected to the overlay
  (`POST /networks/ov/connect`, as figure 1 measures a bridge attach).
- Convergence: from that call returning on A to (a) an ICMP echo from a sandbox on B answering and (b) the
  sandbox's name resolving at 127.0.0.11 on B (a prober inside B's sandbox: raw sockets, 5 ms per try; the
  name is checked after the ping answered, so (b) is at least (a)).
- A dead host: host B's daemon killed; time until A holds no forwarding entry of B's sandboxes
  (the liveness TTL is 10 s).
- Scale: 10 hosts (4 in a quick run) with 50 sandboxes each (10) on one overlay: attach and convergence
  (from the first host to a prober on the last) over the first and the last 10 sandboxes, and the
  daemons' memory per sandbox.
- Docker Swarm, the peer, in the same run and the same shape: two dockerd (Debian's docker.io) in two host
  namespaces on the same kind of switch, `swarm init` / `join`, one attachable overlay; the same iperf3
  pair (in the containers' namespaces), the same attach (`network connect` of a running container) and
  the same prober in a container on B (Docker's own resolver at 127.0.0.11 answers there).
"""
from __future__ import annotations

import http.client
import os
import shutil
import signal
import statistics
import subprocess
import time

from types import SimpleNamespace

from common import PY, Figure, Skip, cpu_s, have, ms_since, sh, share, verdict
from fig_dataplane import _client
from peer_docker import Docker, DockerError
from peer_nsnet import NsnetEngine

NET = "192.168.218"
HERE = os.path.dirname(os.path.abspath(__file__))


def _pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q * (len(values) - 1))))]


def _etcd(h, sw: str) -> None:
    etcd = shutil.which("etcd") or "/usr/bin/etcd"
    if not os.path.exists(etcd):
        raise Skip("etcd is not installed (Debian's etcd-server)")
    data = h.tempdir("etcd")
    url = f"http://{NET}.1:2379"
    h.spawn([etcd, "--data-dir", data, "--listen-client-urls", url, "--advertise-client-urls", url,
             "--listen-peer-urls", "http://127.0.0.1:2380", "--initial-advertise-peer-urls", "http://127.0.0.1:2380",
             "--initial-cluster", "default=http://127.0.0.1:2380"], sw,
            env={**os.environ, "ETCD_UNSUPPORTED_ARCH": ""})
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if sh([PY, "-c", f"import urllib.request; urllib.request.urlopen('{url}/health', timeout=1)"], sw,
              check=False).returncode == 0:
            return
        time.sleep(0.1)
    raise Skip("etcd did not start")


def _wire(h, sw: str, hosts: list[NsnetEngine]) -> None:
    sh(["ip", "link", "add", "sw0", "type", "bridge"], sw)
    sh(["ip", "addr", "add", f"{NET}.1/24", "dev", "sw0"], sw)
    sh(["ip", "link", "set", "sw0", "up"], sw)
    for i, eng in enumerate(hosts):
        port = f"f8p{i}"
        sh(["ip", "link", "add", "up0", "type", "veth", "peer", "name", port, "netns", f"/run/netns/{sw}"], eng.ns)
        sh(["ip", "addr", "add", f"{NET}.{i + 2}/24", "dev", "up0"], eng.ns)
        sh(["ip", "link", "set", "up0", "up"], eng.ns)
        sh(["ip", "link", "set", port, "master", "sw0", "up"], sw)


def swarm_of(h, switch: str, tags: list[str], nodes: list[str]) -> tuple[str, list[NsnetEngine]]:
    """nsnet hosts (engine tags `tags`) on one switch namespace that also runs etcd, formed into one swarm:
    host i at NET.(i+2) named nodes[i], the first one by `swarm init`. (The switch's namespace, the hosts.)"""
    sw = h.netns(switch)
    hosts = [NsnetEngine(h, tag) for tag in tags]
    _wire(h, sw, hosts)
    _etcd(h, sw)
    for i, (eng, node) in enumerate(zip(hosts, nodes)):
        verb = "init" if i == 0 else "join"
        for attempt in range(5):   # the underlay's first connection has now and then waited out etcd's 1 s connect
            if eng.cli(["swarm", verb, "--advertise-addr", f"{NET}.{i + 2}", "--store", f"etcd://{NET}.1:2379",
                        "--node-name", node], check=attempt == 4).returncode == 0:
                break
            time.sleep(0.5)
    return sw, hosts


def seen_by(b: NsnetEngine, names: set[str], timeout: float = 5.0) -> None:
    """Wait until host B lists the swarm networks `names` (made on another host)."""
    deadline = time.monotonic() + timeout
    while not names <= {n["Name"] for n in b.api.get("/networks")} and time.monotonic() < deadline:
        time.sleep(0.02)


def _bare_vxlan(h, a: NsnetEngine, b: NsnetEngine) -> str:
    """A VXLAN pair between the two host namespaces, by hand; A's address on it (iperf3 server there)."""
    for i, (eng, other) in enumerate(((a, b), (b, a))):
        me, peer = f"{NET}.{2 + i}", f"{NET}.{3 - i}"
        sh(["ip", "link", "add", "f8vx", "type", "vxlan", "id", "99", "local", me, "dstport", "4790", "nolearning"], eng.ns)
        sh(["bridge", "fdb", "append", "00:00:00:00:00:00", "dev", "f8vx", "dst", peer], eng.ns)
        sh(["ip", "link", "set", "f8vx", "mtu", "1450", "up"], eng.ns)
        sh(["ip", "addr", "add", f"10.99.0.{1 + i}/24", "dev", "f8vx"], eng.ns)
    h.spawn(["iperf3", "-s", "-p", "5202"], a.ns)
    return "10.99.0.1"


def _attach_and_converge(h, probe_ns: int, n: int, engine, base: str, address_of) -> tuple[list, list, list]:
    """`n` sandboxes of `engine` (nsnet's or Docker's), running on network `base`, connected to the overlay
    "ov", each timed,
    then from the prober in `probe_ns` (a sandbox on the other host): ms until it answers a ping and until
    its name resolves. (attach, ping, dns) in ms; -1 where the prober gave up."""
    prober = h.spawn([PY, os.path.join(HERE, "overlay_probe.py")], probe_ns, stdin=subprocess.PIPE,
                     stdout=subprocess.PIPE, text=True)
    attach, ping, dns = [], [], []
    for i in range(n):
        engine.run(f"c{i}", base)
        t0 = time.perf_counter()
        engine.connect("ov", f"c{i}")
        attach.append(ms_since(t0))
        prober.stdin.write(f"{address_of(f'c{i}')} c{i}\n")
        prober.stdin.flush()
        p_ms, d_ms = map(float, prober.stdout.readline().split())
        ping.append(p_ms)
        dns.append(d_ms)
    prober.stdin.close()
    return attach, ping, dns


def docker_swarm_of(h, switch: str, tags: list[str]) -> tuple[str, list[Docker]]:
    """Docker Swarm in figure 8's shape: a dockerd in each of two host namespaces (names `tags`) on one
    switch namespace, A (NET.2) the manager by `swarm init`, B (NET.3) a worker by `swarm join`, and one
    attachable overlay "ov". Each leaves the swarm (forced) before its daemon stops. (The switch, [A, B].)"""
    sw = h.netns(switch)
    hosts = [SimpleNamespace(ns=h.netns(tag)) for tag in tags]
    _wire(h, sw, hosts)
    a, b = Docker(h, hosts[0].ns), Docker(h, hosts[1].ns)
    for d in (a, b):
        h.defer(_leave, d)
    a.post("/swarm/init", {"ListenAddr": f"{NET}.2:2377", "AdvertiseAddr": f"{NET}.2"})
    token = a.get("/swarm")["JoinTokens"]["Worker"]
    b.post("/swarm/join", {"ListenAddr": f"{NET}.3:2377", "AdvertiseAddr": f"{NET}.3",
                           "RemoteAddrs": [f"{NET}.2:2377"], "JoinToken": token})
    a.post("/networks/create", {"Name": "ov", "Driver": "overlay", "Attachable": True})
    return sw, [a, b]


def _leave(d: Docker) -> None:
    if d.proc.poll() is None:
        d._conn = None   # a request cut short (an error of the figure's) leaves the connection unusable
        try:
            d.post("/swarm/leave?force=1")
        except (DockerError, OSError, http.client.HTTPException):
            pass


def _docker_swarm(ctx, n: int) -> dict:
    """Docker Swarm's figures, measured as nsnet's are below: throughput, attach, convergence."""
    h = ctx.h
    _, (a, b) = docker_swarm_of(h, "f8dsw", ["f8da", "f8db"])

    def pid_ip(d: Docker, name: str) -> tuple[int, str]:
        doc = d.get(f"/containers/{name}/json")
        return doc["State"]["Pid"], doc["NetworkSettings"]["Networks"]["ov"]["IPAddress"]
    a.run("srv", "ov")
    b.run("cli", "ov")
    srv_pid, srv_ip = pid_ip(a, "srv")
    cli_pid, _ = pid_ip(b, "cli")
    h.spawn(["iperf3", "-s", "-p", "5201"], srv_pid)
    gbps = [_client(cli_pid, srv_ip, 5201, ctx.iperf_seconds) for _ in range(ctx.iperf_reps)]
    attach, ping, dns = _attach_and_converge(h, cli_pid, n, a, "bridge", lambda name: pid_ip(a, name)[1])
    return {"gbps": gbps, "attach": attach, "ping": ping, "dns": dns, "version": a.version}


def swarm_peer(ctx, fig: Figure, measure, *args) -> dict:
    """Docker Swarm's figures, `measure(ctx, *args)`, made and removed in a scope of their own; {} when Swarm
    cannot run here (why: in the figure's skipped list)."""
    with ctx.h.scope(fig, "Docker Swarm", catch=(Skip, DockerError, RuntimeError, OSError)):
        return measure(ctx, *args)
    return {}


def run(ctx) -> Figure:
    h, q = ctx.h, ctx.quick
    fig = Figure("8", "Overlay across two hosts (VXLAN, etcd)")
    if not have("iperf3"):
        raise Skip("iperf3 is not installed")
    n = 10 if q else 40
    peer = swarm_peer(ctx, fig, _docker_swarm, n)
    if peer:
        fig.notes.append(f"Docker Swarm: dockerd {peer['version']} x 2, swarm mode, an attachable overlay")
    mark = h.mark()
    _, (a, b) = swarm_of(h, "f8sw", ["f8a", "f8b"], ["a", "b"])
    a.create_network("ov", Driver="overlay", Attachable=True)
    seen_by(b, {"ov"})

    # throughput, rounds of (overlay, bare VXLAN), the share taken per round
    a.run("srv", "ov", ["iperf3", "-s", "-p", "5201"])
    client = b.run("cli", "ov")
    srv_ip = a.ip_of("srv", "ov")
    bare_ip = _bare_vxlan(h, a, b)
    ov, bare, shares = [], [], []
    for _ in range(ctx.iperf_reps):
        o = _client(client, srv_ip, 5201, ctx.iperf_seconds)
        r = _client(b.ns, bare_ip, 5202, ctx.iperf_seconds)
        ov.append(o)
        bare.append(r)
        shares.append(o / r)
    o_med, r_med, s_med = statistics.median(ov), statistics.median(bare), statistics.median(shares)
    fig.row(measure="cross-host TCP, sandbox to sandbox", value=o_med, unit="Gbit/s", reps=f"{len(ov)}x{ctx.iperf_seconds}s",
            peer="bare VXLAN pair", peer_value=r_med, ratio=s_med, ratio_text=f"{s_med * 100:.0f}% of peer",
            target=">= 90% of bare VXLAN", verdict=verdict(s_med >= 0.9))

    # attach through the API on A, and convergence seen from B's sandbox
    a.create_network("base")   # each probe runs on a local network first; attach = connecting it to the overlay
    attach, ping, dns = _attach_and_converge(h, client, n, a, "base", lambda name: a.ip_of(name, "ov"))
    def med(values):
        ok = [v for v in values if v >= 0]
        return (statistics.median(ok), _pct(ok, 0.99), len(ok)) if ok else (None, None, 0)
    pa = med(peer.get("attach", []))
    fig.row(measure="overlay attach through the API (p50)", value=statistics.median(attach), unit="ms",
            p95=_pct(attach, 0.95), reps=str(n), peer="Docker Swarm" if peer else "", peer_value=pa[0],
            target="<= 10 ms", verdict=verdict(statistics.median(attach) <= 10))
    for what, mine, theirs in (("ping from B answers", ping, peer.get("ping", [])),
                               ("name resolves on B", dns, peer.get("dns", []))):
        m, t = med(mine), med(theirs)
        fig.row(measure=f"attach on A -> {what} (p50)", value=m[0], unit="ms", p95=m[1], reps=f"{m[2]}/{n}",
                peer="Docker Swarm" if peer else "", peer_value=t[0], peer_p95=t[1],
                note=f"p95 column: p99{'; Docker answered ' + str(t[2]) + '/' + str(n) if peer else ''}",
                target="p50 <= 50, p99 <= 200 ms",
                verdict=verdict(m[2] == n and m[0] <= 50 and m[1] <= 200))
    if peer:
        g = statistics.median(peer["gbps"])
        r, text = share(o_med, g)
        fig.row(measure="cross-host TCP beside Docker Swarm's overlay", value=o_med, unit="Gbit/s",
                reps=f"{len(ov)}x{ctx.iperf_seconds}s", peer="Docker Swarm", peer_value=g, ratio=r, ratio_text=text)
        fig.data.update(swarm=peer)
    fig.data.update(overlay_gbps=ov, bare_gbps=bare, attach_ms=attach, ping_ms=ping, dns_ms=dns)

    # a dead host: B's daemon killed; A's forwarding entries for B's sandboxes gone after...
    vni = a.api.get("/networks/ov")["Options"]["com.docker.network.driver.overlay.vxlanid_list"]
    (holder, _), = a.overlay_holders()   # A's overlay namespace (the network's own)
    os.kill(b.daemon_pid, signal.SIGKILL)
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < 20:
        if f"dst {NET}.3" not in sh(["bridge", "fdb", "show", "dev", f"nsovx{vni}"], holder, check=False).stdout:
            break
        time.sleep(0.05)
    gone = ms_since(t0) / 1000
    fig.row(measure="dead host leaves the others' entries", value=gone, unit="s", target="<= TTL + 1 s (11 s)",
            verdict=verdict(gone <= 11))
    b.daemon_pid = None   # killed on purpose: its stop() must not report it
    h.close_upto(mark)
    _scale(ctx, fig)
    return fig


def _scale(ctx, fig: Figure) -> None:
    h = ctx.h
    n_hosts, per_host = (4, 10) if ctx.quick else (10, 50)
    _, hosts = swarm_of(h, "f8ssw", [f"f8s{i}" for i in range(n_hosts)], [f"h{i}" for i in range(n_hosts)])
    # 500 sandboxes need more than the pool's /24
    hosts[0].create_network("ov", subnet="10.128.0.0/20", Driver="overlay", Attachable=True)
    for eng in hosts:
        eng.create_network("base")
    time.sleep(0.2)
    rss0 = sum(eng.rss_kb() or 0 for eng in hosts)
    last = hosts[-1]
    probe = last.run("probe", "ov")
    prober = h.spawn([PY, os.path.join(HERE, "overlay_probe.py")], probe, stdin=subprocess.PIPE,
                     stdout=subprocess.PIPE, text=True)
    attach: dict[str, list] = {}
    conv: dict[str, list] = {}
    others_cpu: dict[str, float] = {}   # ms of CPU the other daemons spent per attach (the same 2 cores)

    def measure(phase: str) -> None:
        """Ten sandboxes more on the first host: each one's attach, and its convergence on the last host."""
        before = sum(cpu_s(eng.daemon_pid) or 0 for eng in hosts[1:])
        for m in range(10):
            name = f"m{phase}{m}"
            hosts[0].run(name, "base")
            t0 = time.perf_counter()
            hosts[0].connect("ov", name)
            attach.setdefault(phase, []).append(ms_since(t0))
            prober.stdin.write(f"{hosts[0].ip_of(name, 'ov')} {name}\n")
            prober.stdin.flush()
            conv.setdefault(phase, []).append(float(prober.stdout.readline().split()[0]))
        others_cpu[phase] = (sum(cpu_s(eng.daemon_pid) or 0 for eng in hosts[1:]) - before) * 100

    def fill(j: int) -> None:
        for i, eng in enumerate(hosts):
            eng.run(f"s{i}-{j}", "base")
            eng.connect("ov", f"s{i}-{j}")
    fill(0)
    measure("first")
    for j in range(1, per_host - 1):
        fill(j)
    measure("last")
    total = n_hosts * (per_host - 1) + 20
    rss1 = sum(eng.rss_kb() or 0 for eng in hosts)
    prober.stdin.close()
    for phase, at in (("first", n_hosts), ("last", total - 10)):
        fig.row(measure=f"scale {n_hosts} hosts: attach at ~{at} sandboxes (p50)", value=statistics.median(attach[phase]),
                unit="ms", p95=_pct(attach[phase], 0.95), reps=str(len(attach[phase])), target="report",
                note=f"the other {n_hosts - 1} daemons used {others_cpu[phase]:.1f} ms of CPU per attach meanwhile, "
                     f"on the same {os.cpu_count()} cores")
        c = [v for v in conv.get(phase, []) if v >= 0]
        if c:
            fig.row(measure=f"scale {n_hosts} hosts: convergence at ~{at} sandboxes (p50)", value=statistics.median(c),
                    unit="ms", p95=max(c), reps=str(len(c)), note="p95 column: max", target="p50 <= 50 ms",
                    verdict=verdict(statistics.median(c) <= 50))
    fig.row(measure=f"scale {n_hosts} hosts: daemon memory per sandbox", value=(rss1 - rss0) / total, unit="KiB",
            reps=f"{total} sandboxes", note=f"all {n_hosts} daemons: {rss0 / 1024:.0f} -> {rss1 / 1024:.0f} MiB")
    fig.data.update(scale_attach_ms=attach, scale_convergence_ms=conv, scale_others_cpu_ms=others_cpu)
