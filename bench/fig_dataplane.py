"""Figure 7: data plane, iperf3 TCP throughput (one stream) between two namespaces:

- nsnet bridge: two sandboxes on one nsnet bridge network (nsnet's nftables table is live in that host);
  and two sandboxes on two leaf bridges of a network past 128 sandboxes (drivers/fabric.py);
- nsnet published port: a client in another namespace, routed to the nsnet host over a veth, reaching a
  sandbox through `-p 15201:5201` (DNAT); and the same port from the host itself through 127.0.0.1;
- Docker: two containers on one Docker bridge network (where its engine can start);
- then both hosts filled up to MANY bridge networks, with two more sandboxes on the last one: what
  the other networks cost a frame (rounds of their own, with the bare bridge again);
- references built by hand in the same run: a bare veth pair, and two namespaces on a bare Linux bridge
  with no rules at all (the kernel's own cost of bridging).
Each figure is the median of `reps` rounds (9 in a full run) of `seconds` s runs; a round runs every configuration once, so
a drift of the machine shows in all of them alike, and a share of the bare bridge is the median of the
shares within each round. Client and server are pinned to CPUs 0 and 1
(iperf3 -A) so that every configuration gets the same placement: unpinned, the scheduler's choice moved
the figures by 20 % from run to run on 2 cores.
"""
from __future__ import annotations

import json
import os
import statistics
import time
from contextlib import contextmanager, nullcontext

from common import Figure, Skip, have, sh, share, verdict, wait_until_idle
from peer_nsnet import NsnetEngine

from nsnet.drivers.fabric import PORTS_PER_BRIDGE


def _client(ns, addr: str, port: int, seconds: float) -> float:
    """Gbit/s received by the server, one iperf3 client run inside `ns` (retries while the server starts)."""
    last = ""
    for _ in range(20):
        pin = ["-A", "0,1"] if (os.cpu_count() or 1) >= 2 else []
        cp = sh(["iperf3", "-c", addr, "-p", str(port), "-t", str(seconds), "-J", *pin], ns, check=False,
                timeout=seconds + 60)
        try:
            doc = json.loads(cp.stdout)
        except ValueError:
            doc = {}
        if cp.returncode == 0 and "end" in doc:
            return doc["end"]["sum_received"]["bits_per_second"] / 1e9
        last = doc.get("error") or cp.stderr.strip() or cp.stdout.strip()[:200]
        time.sleep(0.25)
    raise RuntimeError(f"iperf3 to {addr}:{port} failed: {last}")


def _references(h) -> list:
    """A bare veth pair and two namespaces on a bare bridge, built by hand: the kernel's own figures."""
    va, vb = h.netns("f7va"), h.netns("f7vb")
    sh(["ip", "link", "add", "eth0", "type", "veth", "peer", "name", "eth0", "netns", vb], va)
    sh(["ip", "addr", "add", "10.72.0.1/24", "dev", "eth0"], va)
    sh(["ip", "addr", "add", "10.72.0.2/24", "dev", "eth0"], vb)
    sh(["ip", "link", "set", "eth0", "up"], va)
    sh(["ip", "link", "set", "eth0", "up"], vb)
    h.spawn(["iperf3", "-s", "-p", "5201"], va)

    br, b1, b2 = h.netns("f7br"), h.netns("f7b1"), h.netns("f7b2")
    sh(["ip", "link", "add", "br0", "type", "bridge"], br)
    sh(["ip", "link", "set", "br0", "up"], br)
    for i, ns in ((1, b1), (2, b2)):
        sh(["ip", "link", "add", f"v{i}", "type", "veth", "peer", "name", "eth0", "netns", ns], br)
        sh(["ip", "link", "set", f"v{i}", "master", "br0", "up"], br)
        sh(["ip", "addr", "add", f"10.73.0.{i}/24", "dev", "eth0"], ns)
        sh(["ip", "link", "set", "eth0", "up"], ns)
    h.spawn(["iperf3", "-s", "-p", "5201"], b1)
    return [("bare veth pair", vb, "10.72.0.1", 5201, nullcontext),
            ("bare bridge", b2, "10.73.0.1", 5201, nullcontext)]


def _across_leaves(eng: NsnetEngine) -> tuple[int, str]:
    """Client and server on two different leaf bridges of one network (past PORTS_PER_BRIDGE ports a
    network's sandboxes go on leaves): what the two uplinks cost. Returns (client pid, server address)."""
    eng.create_network("wide", "10.68.0.0/16")
    for i in range(PORTS_PER_BRIDGE):                      # the network's own bridge: full
        eng.run(f"wf{i}", "wide")
    eng.run("wsrv", "wide", cmd=["iperf3", "-s", "-p", "5201"])   # leaf 1: its uplink, then this one
    for i in range(PORTS_PER_BRIDGE - 2):                  # leaf 1: full
        eng.run(f"wg{i}", "wide")
    return eng.run("wcli", "wide"), eng.ip_of("wsrv", "wide")     # leaf 2


def _nsnet_paths(h, fig) -> tuple[list, NsnetEngine]:
    """Two sandboxes on one nsnet network; a published port reached from another namespace and from
    the host through 127.0.0.1. Returns the paths and the engine."""
    eng = NsnetEngine(h, "f7")
    eng.create_network("dp", "10.70.0.0/24")
    eng.run("srv", "dp", cmd=["iperf3", "-s", "-p", "5201"])
    cli = eng.run("cli", "dp")
    srv_ip = eng.ip_of("srv", "dp")
    paths = [("nsnet bridge", cli, srv_ip, 5201, nullcontext)]
    brnf = sh(["sysctl", "-n", "net.bridge.bridge-nf-call-iptables"], eng.ns, check=False).stdout.strip()
    if brnf == "1":
        # nsnet does not need br_netfilter and leaves the host-wide switch alone (Docker and kube-proxy
        # want it on); this throwaway host shows what it costs.
        fig.notes.append("br_netfilter is loaded and net.bridge.bridge-nf-call-iptables=1 in nsnet's host (the "
                         "default in a new namespace once Docker has loaded the module): frames bridged between "
                         "two sandboxes also pass the IP hooks and nsnet's forward chain (not conntrack: nsnet "
                         "marks them notrack); the bare bridge's namespace has no ruleset, so no hooks. "
                         "Measured again with it set to 0")

        @contextmanager
        def no_br_netfilter():
            sh(["sysctl", "-qw", "net.bridge.bridge-nf-call-iptables=0"], eng.ns)
            try:
                yield
            finally:
                sh(["sysctl", "-qw", "net.bridge.bridge-nf-call-iptables=1"], eng.ns)
        paths.append(("nsnet bridge, no br_netfilter", cli, srv_ip, 5201, no_br_netfilter))

    leaf_cli, leaf_srv = _across_leaves(eng)
    paths.append(("nsnet bridge, across two leaf bridges", leaf_cli, leaf_srv, 5201, nullcontext))
    if brnf == "1":  # each of the three bridges on the way runs the IP hooks
        paths.append(("nsnet bridge, across two leaf bridges, no br_netfilter", leaf_cli, leaf_srv, 5201,
                      no_br_netfilter))

    eng.run("pub", "dp", cmd=["iperf3", "-s", "-p", "5201"], ports=["15201:5201"])
    x = h.netns("f7x")
    sh(["ip", "link", "add", "nsbx0", "type", "veth", "peer", "name", "eth0", "netns", x], eng.ns)
    sh(["ip", "addr", "add", "10.71.0.1/30", "dev", "nsbx0"], eng.ns)
    sh(["ip", "link", "set", "nsbx0", "up"], eng.ns)
    sh(["ip", "addr", "add", "10.71.0.2/30", "dev", "eth0"], x)
    sh(["ip", "link", "set", "eth0", "up"], x)
    sh(["ip", "route", "add", "default", "via", "10.71.0.1"], x)
    return paths + [("nsnet published port", x, "10.71.0.1", 15201, nullcontext),
                    ("nsnet published port, host 127.0.0.1", eng.ns, "127.0.0.1", 15201, nullcontext)], eng


def _round_shares(res: dict[str, list[float]], what: str, ref: str) -> list[float]:
    """WHAT's share of REF in each round (the two ran in the same round)."""
    return [a / b for a, b in zip(res.get(what, []), res.get(ref, [])) if b]


def _share_in_rounds(res: dict[str, list[float]], what: str, ref: str = "bare bridge") -> tuple[float | None, str]:
    """WHAT's share of REF: the median over rounds of the two figures' ratio in the same round, so that
    a drift of the machine between rounds (+-15 % here) cancels out instead of landing in the ratio."""
    pairs = _round_shares(res, what, ref)
    return share(statistics.median(pairs) if pairs else None, 1.0)   # the median share, worded as share() does


def _spread(res: dict[str, list[float]], what: str, ref: str = "bare bridge") -> str:
    """How far WHAT's share of REF moved from round to round: the noise a single figure carries."""
    pairs = sorted(_round_shares(res, what, ref))
    if len(pairs) < 4:
        return ""
    q1, _, q3 = statistics.quantiles(pairs, n=4)
    return (f"shares in the {len(pairs)} rounds: {pairs[0]:.0%} to {pairs[-1]:.0%}, "
            f"the middle half {q1:.0%} to {q3:.0%}")


def _profile(ctx, fig, paths) -> dict:
    """perf over one run of each path: what netfilter's hooks cost nsnet's path, next to the bare bridge."""
    from profile_dataplane import BR_NETFILTER, NETFILTER, render, sample

    seconds = 4
    profiles = {}
    try:
        for name, client_ns, addr, port, setting in paths:
            with setting():
                profiles[name] = sample(lambda: _client(client_ns, addr, port, seconds + 2), seconds,
                                        os.path.join(ctx.out, "perf.data"))
    except Skip as e:
        fig.skipped.append(f"data-plane profile: {e}")
        return {}
    with open(os.path.join(ctx.out, "profile_dataplane.txt"), "w") as f:
        f.write(render(profiles, seconds))
    if len(profiles) == 2:
        mine, bare = profiles["nsnet bridge"]["groups"], profiles["bare bridge"]["groups"]
        nf, brnf = NETFILTER, BR_NETFILTER
        fig.notes.append(f"perf, whole machine, one {seconds} s run each (shares of busy samples): {nf} "
                         f"{mine[nf]:.1f}% in the nsnet bridge's run, {bare[nf]:.1f}% in the bare bridge's; "
                         f"{brnf} {mine[brnf]:.1f}% and {bare[brnf]:.1f}% - full list in profile_dataplane.txt")
    return profiles


def _docker_path(h, docker, label: str = "Docker bridge", net: str = "ddp", subnet: str = "10.67.0.0/24") -> list:
    """Two containers on one Docker bridge network, iperf3 run in their namespaces (the image has no
    iperf3): the peer's figure, under the same br_netfilter setting in its own host namespace."""
    docker.create_network(net, subnet)
    srv, cli = (docker.get(f"/containers/{docker.run(net + n, net)}/json") for n in ("srv", "cli"))
    h.spawn(["iperf3", "-s", "-p", "5201"], srv["State"]["Pid"])
    return [(label, cli["State"]["Pid"], srv["NetworkSettings"]["Networks"][net]["IPAddress"], 5201, nullcontext)]


MANY = 30  # networks on the host, in the rows that show what a full host costs a frame
BARE_AGAIN = "bare bridge, beside the full hosts"  # the reference in the rounds on full hosts


def _many_networks(h, eng: NsnetEngine | None, docker) -> list:
    """Fill nsnet's host and Docker's daemon up to MANY bridge networks, the last one with two
    sandboxes: what every other network costs a frame between them (Docker puts a rule per network in
    its isolation chain, and its newest network's rules first: created last, ours is its best case)."""
    paths = []
    if eng is not None:
        bridges_now = sum(1 for n in eng.api.get("/networks") if n["Driver"] == "bridge")
        for i in range(MANY - bridges_now - 1):
            eng.create_network(f"filler{i}", f"10.{100 + i}.0.0/24")
        eng.create_network("dpm", "10.99.0.0/24")
        eng.run("msrv", "dpm", cmd=["iperf3", "-s", "-p", "5201"])
        paths.append((f"nsnet bridge, host with {MANY} networks", eng.run("mcli", "dpm"), eng.ip_of("msrv", "dpm"),
                      5201, nullcontext))
    if docker is not None:
        bridges_now = sum(1 for n in docker.get("/networks") if n["Driver"] == "bridge")
        for i in range(MANY - bridges_now - 1):
            docker.create_network(f"filler{i}", f"10.{100 + i}.0.0/24")
        paths += _docker_path(h, docker, f"Docker bridge, host with {MANY} networks", "ddpm", "10.98.0.0/24")
    return paths


def _rounds(paths: list, reps: int, seconds: float, res: dict[str, list[float]], fig) -> None:
    """Rounds: each configuration once per round, so that a drift of the machine (another tenant, a
    frequency change) shows in all of them alike instead of in whichever ran last; each round starts
    one configuration further on, so that none always runs first, or right after another."""
    for r in range(reps):
        k = r % len(paths)
        for name, client_ns, addr, port, setting in paths[k:] + paths[:k]:
            try:
                with setting():
                    res.setdefault(name, []).append(_client(client_ns, addr, port, seconds))
            except RuntimeError as e:
                fig.skipped.append(f"{name}: {e}")
                paths = [p for p in paths if p[0] != name]


def run(ctx) -> Figure:
    h = ctx.h
    fig = Figure("7", f"Data plane: iperf3 TCP throughput ({ctx.iperf_reps} x {ctx.iperf_seconds} s, one stream)")
    if not have("iperf3"):
        fig.skipped.append("iperf3 is missing (apt-get install iperf3)")
        return fig
    res: dict[str, list[float]] = {}
    with h.scope():
        paths, eng = _references(h), None
        try:
            nsnet_paths, eng = _nsnet_paths(h, fig)
            paths += nsnet_paths
        except Skip as e:
            fig.skipped.append(f"nsnet: {e}")
        docker = ctx.docker()
        if docker is None:
            fig.skipped.append(f"Docker: {ctx.docker_skip}")
        else:
            paths += _docker_path(h, docker)
        waited = wait_until_idle()
        if waited > 1.5:
            fig.notes.append(f"waited {waited:.0f} s for the CPUs to go idle before the first round (the kernel "
                             "tears down the namespaces of earlier figures in the background)")
        _rounds(paths, ctx.iperf_reps, ctx.iperf_seconds, res, fig)
        profiles = _profile(ctx, fig, [p for p in paths if p[0] in ("bare bridge", "nsnet bridge")]) if ctx.profile else {}
        # Then the same hosts, filled up with networks: rounds of their own, with the bare bridge again.
        bare = [(BARE_AGAIN, *p[1:]) for p in paths if p[0] == "bare bridge"]
        _rounds(bare + _many_networks(h, eng, docker), ctx.iperf_reps, ctx.iperf_seconds, res, fig)
        if docker is not None:
            docker.clear()

    med = {k: statistics.median(v) for k, v in res.items()}
    fig.data = {"gbit_s": res, "median_gbit_s": med, "profile": profiles}
    ref = med.get("bare bridge")
    for what, target in (("nsnet bridge", 0.95), ("nsnet published port", 0.85)):
        if what in med:
            r, txt = _share_in_rounds(res, what)
            fig.row(measure=f"{what}" + (" (client in another namespace)" if "port" in what else " (sandbox to sandbox)"),
                    value=med[what], unit="Gbit/s", reps=f"{ctx.iperf_reps}x{ctx.iperf_seconds}s", peer="bare bridge",
                    peer_value=ref, ratio=r, ratio_text=txt, target=f">= {target * 100:.0f}% of bare bridge",
                    verdict=verdict(r >= target) if r else "INFO", note=_spread(res, what))
    if "Docker bridge" in med and "nsnet bridge" in med:
        r, txt = _share_in_rounds(res, "nsnet bridge", "Docker bridge")
        fig.row(measure="nsnet bridge vs Docker's (sandbox to sandbox)", value=med["nsnet bridge"], unit="Gbit/s",
                reps=f"{ctx.iperf_reps}x{ctx.iperf_seconds}s", peer="Docker bridge", peer_value=med["Docker bridge"],
                ratio=r, ratio_text=txt, note="Docker in its own host namespace, br_netfilter as there")
    if "nsnet bridge, no br_netfilter" in med:
        r, txt = _share_in_rounds(res, "nsnet bridge, no br_netfilter")
        fig.row(measure="nsnet bridge, bridge-nf-call-iptables=0 in its host", value=med["nsnet bridge, no br_netfilter"],
                unit="Gbit/s", reps=f"{ctx.iperf_reps}x{ctx.iperf_seconds}s", peer="bare bridge", peer_value=ref,
                ratio=r, ratio_text=txt, note="what br_netfilter costs on top of nsnet's own path")
    if "nsnet bridge, across two leaf bridges" in med:
        r, txt = _share_in_rounds(res, "nsnet bridge, across two leaf bridges")
        fig.row(measure=f"nsnet bridge, sandboxes on two leaf bridges (a network past {PORTS_PER_BRIDGE} sandboxes)",
                value=med["nsnet bridge, across two leaf bridges"], unit="Gbit/s",
                reps=f"{ctx.iperf_reps}x{ctx.iperf_seconds}s", peer="bare bridge", peer_value=ref, ratio=r,
                ratio_text=txt, note="two more bridges and veth pairs on the way: the cost of leaves")
    if "nsnet bridge, across two leaf bridges, no br_netfilter" in med:
        r, txt = _share_in_rounds(res, "nsnet bridge, across two leaf bridges, no br_netfilter")
        fig.row(measure="nsnet bridge, two leaf bridges, bridge-nf-call-iptables=0 in its host",
                value=med["nsnet bridge, across two leaf bridges, no br_netfilter"], unit="Gbit/s",
                reps=f"{ctx.iperf_reps}x{ctx.iperf_seconds}s", peer="bare bridge", peer_value=ref, ratio=r,
                ratio_text=txt, note="under br_netfilter each bridge on the way runs the IP hooks")
    if "nsnet published port, host 127.0.0.1" in med:
        r, txt = _share_in_rounds(res, "nsnet published port, host 127.0.0.1")
        fig.row(measure="nsnet published port (from the host, 127.0.0.1)", value=med["nsnet published port, host 127.0.0.1"],
                unit="Gbit/s", reps=f"{ctx.iperf_reps}x{ctx.iperf_seconds}s", peer="bare bridge", peer_value=ref,
                ratio=r, ratio_text=txt)
    mine, theirs = (f"{e} bridge, host with {MANY} networks" for e in ("nsnet", "Docker"))
    for what in (mine, theirs):
        if what in med:
            r, txt = _share_in_rounds(res, what, BARE_AGAIN)
            fig.row(measure=what, value=med[what], unit="Gbit/s", reps=f"{ctx.iperf_reps}x{ctx.iperf_seconds}s",
                    peer="bare bridge", peer_value=med.get(BARE_AGAIN), ratio=r, ratio_text=txt,
                    note="rounds of their own, after the others; " + _spread(res, what, BARE_AGAIN))
    if mine in med and theirs in med:
        r, txt = _share_in_rounds(res, mine, theirs)
        fig.row(measure=f"nsnet bridge vs Docker's, host with {MANY} networks", value=med[mine], unit="Gbit/s",
                reps=f"{ctx.iperf_reps}x{ctx.iperf_seconds}s", peer="Docker bridge", peer_value=med[theirs],
                ratio=r, ratio_text=txt)
    if "bare veth pair" in med and ref:
        r, txt = _share_in_rounds(res, "bare bridge", "bare veth pair")
        fig.row(measure="reference: bare bridge vs bare veth pair", value=ref, unit="Gbit/s",
                reps=f"{ctx.iperf_reps}x{ctx.iperf_seconds}s", peer="bare veth pair", peer_value=med["bare veth pair"],
                ratio=r, ratio_text=txt, note="the kernel's own cost of bridging")
    return fig
