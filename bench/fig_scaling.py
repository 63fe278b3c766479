"""Figure 2: attach latency as one network fills (10, 100, 500, 1,000 sandboxes), nsnet's daemon memory at each
step, and what happens at the Linux bridge's port limit (1,024 ports, port 0 reserved).

At each level the network holds that many sandboxes; probe sandboxes (not counted) are then attached and
detached one at a time, so each sample is "the (level+1)-th sandbox joins".
"""
from __future__ import annotations

import time

from common import Figure, Skip, summary, timed_ms, verdict
from peer_cni import Cni
from peer_kernel import KernelOnly
from peer_netavark import Netavark
from peer_nsnet import NsnetEngine

from nsnet.client import ApiError


KERNEL = "kernel alone"


def _cycles(connect, disconnect, net: str, probes: list[str]) -> tuple[list[float], list[float]]:
    """Connect and disconnect each probe once (after two uncounted warm-up cycles): attach and detach ms."""
    for p in probes[:2]:
        connect(net, p)
        disconnect(net, p)
    att, det = [], []
    for p in probes:
        att.append(timed_ms(connect, net, p))
        det.append(timed_ms(disconnect, net, p))
    return att, det


def run(ctx) -> Figure:
    h, levels, reps = ctx.h, ctx.levels, ctx.scale_reps
    fig = Figure("2", f"Scaling: attach latency vs sandboxes on one network ({', '.join(map(str, levels))})")
    curves: dict[str, dict] = {}

    # ---- nsnet -----------------------------------------------------------------------------------------
    with h.scope():
        eng = NsnetEngine(h, "f2")
        eng.create_network("scale", "10.40.0.0/16")
        eng.create_network("pbase", "10.41.0.0/16")
        base = eng.probe_base("pbase", "q0")
        probes = ["q0"] + [f"q{i}" for i in range(1, reps)]
        for p in probes[1:]:
            eng.run(p, base)
        curve, filled, run_ms = {}, 0, []
        rss0 = eng.rss_kb()
        for level in levels:
            t_fill = time.perf_counter()
            while filled < level:
                run_ms.append(timed_ms(eng.run, f"f{filled}", "scale"))
                filled += 1
            fill_s = time.perf_counter() - t_fill
            att, det = _cycles(eng.connect, eng.disconnect, "scale", probes)
            curve[level] = {"attach": summary(att), "detach": summary(det), "rss_kb": eng.rss_kb(),
                            "fill_s": fill_s, "attach_ms": att}
            ctx.log(f"    nsnet  {level:5d} sandboxes: attach p50 {curve[level]['attach']['p50']:.2f} ms, "
                    f"daemon RSS {curve[level]['rss_kb'] / 1024:.0f} MiB")
        curves["nsnet API"] = curve
        if filled >= 100:
            fig.data["in_turns"] = _in_turns(eng, probes, filled)
        if ctx.profile:
            _profile_full(ctx, fig, eng, probes[0], filled)
        fig.data["nsnet_rss_kb_empty"] = rss0
        fig.data["nsnet_run_ms"] = summary(run_ms)
        fig.row(measure="sandbox start (`run -d` on a bridge network), API", value=summary(run_ms)["p50"],
                p95=summary(run_ms)["p95"], unit="ms", reps=str(len(run_ms)),
                note="includes starting the sandbox's process")
        if ctx.bridge_limit and levels[-1] >= 1000:
            _bridge_limit(ctx, fig, eng, filled)
        elif not ctx.bridge_limit or levels[-1] < 1000:
            fig.skipped.append("bridge port limit (1,024): probed only in the full run (needs 1,000+ sandboxes)")

    # ---- netavark, CNI, and the kernel alone (the floor: nsnet's netlink messages from one process) ---------
    for label, make, up, down in (("netavark", lambda: Netavark(h, "f2nv", "10.89"), "setup_ms", "teardown_ms"),
                                  ("CNI bridge", lambda: Cni(h, "f2cni", "10.88.0.0/16"), "add_ms", "del_ms"),
                                  (KERNEL, lambda: KernelOnly(h, "f2k", "10.87"), "setup_ms", "teardown_ms")):
        with h.scope(fig, label):
            peer = make()
            curve, filled = {}, 0
            probe_ids = list(range(60000, 60000 + reps))  # addresses 10.x.240.y: clear of the fill
            for level in levels:
                peer.prepare(list(range(filled, level)) + probe_ids)
                while filled < level:
                    getattr(peer, up)(filled)
                    filled += 1
                for p in probe_ids[:2]:  # warm-up, not counted
                    getattr(peer, up)(p)
                    getattr(peer, down)(p)
                att, det = [], []
                for p in probe_ids:
                    att.append(getattr(peer, up)(p))
                    det.append(getattr(peer, down)(p))
                curve[level] = {"attach": summary(att), "detach": summary(det), "attach_ms": att}
                ctx.log(f"    {label:12s} {level:5d}: attach p50 {curve[level]['attach']['p50']:.2f} ms")
            curves[label] = curve

    # ---- Docker -----------------------------------------------------------------------------------------
    docker = ctx.docker()
    if docker is None:
        fig.skipped.append(f"Docker: {ctx.docker_skip}")
    else:
        dl = [lv for lv in levels if lv <= ctx.docker_scale_max]
        if len(dl) < len(levels):
            fig.skipped.append(f"Docker beyond {ctx.docker_scale_max} sandboxes: each `docker run` costs about half a "
                               f"second here, so filling {levels[-1]} would take minutes (raise --docker-scale-max)")
        try:
            docker.create_network("dscale", "10.42.0.0/16")
            docker.create_network("dpbase", "10.43.0.0/16")
            probes = [f"dq{i}" for i in range(reps)]
            for p in probes:
                docker.run(p, "dpbase")
            curve, filled = {}, 0
            for level in dl:
                while filled < level:
                    docker.run(f"df{filled}", "dscale")
                    filled += 1
                att, det = _cycles(docker.connect, docker.disconnect, "dscale", probes)
                curve[level] = {"attach": summary(att), "detach": summary(det), "rss_kb": docker.rss_kb(),
                                "attach_ms": att}
                ctx.log(f"    Docker     {level:5d}: attach p50 {curve[level]['attach']['p50']:.1f} ms")
            curves["Docker API"] = curve
        finally:
            docker.clear()

    fig.data["curves"] = {k: {str(lv): v for lv, v in c.items()} for k, c in curves.items()}

    # ---- rows --------------------------------------------------------------------------------------------
    ns = curves.get("nsnet API")
    if ns:
        lo, hi = levels[0], levels[-1]
        a_lo, a_hi = ns[lo]["attach"]["p50"], ns[hi]["attach"]["p50"]
        growth = a_hi / a_lo if a_lo else None
        for lv in levels:
            row = dict(measure=f"attach at {lv} sandboxes, nsnet API", value=ns[lv]["attach"]["p50"],
                       p95=ns[lv]["attach"]["p95"], unit="ms", reps=str(reps),
                       note=f"daemon RSS {ns[lv]['rss_kb'] / 1024:.0f} MiB" if ns[lv]["rss_kb"] else "")
            peers = [(curves[p][lv]["attach"], p) for p in ("netavark", "CNI bridge", "Docker API")
                     if p in curves and lv in curves[p]]
            if peers:  # the fastest peer at this level (all of them are in the JSON and the plot)
                p, name = min(peers, key=lambda x: x[0]["p50"])
                r = p["p50"] / ns[lv]["attach"]["p50"]
                row.update(peer=f"{name} (fastest peer)", peer_value=p["p50"], peer_p95=p["p95"], ratio=r,
                           ratio_text=f"{r:.1f}x faster" if r >= 1 else f"{1 / r:.1f}x slower")
            fig.row(**row)
        target = "<= 1.5x at 1,000 vs 10" if hi >= 1000 else f"<= 1.5x ({hi} vs {lo}; 1,000 in the full run)"
        fig.row(measure=f"attach growth {lo} -> {hi} sandboxes, nsnet", value=growth, unit="x", reps=str(reps),
                target=target, verdict=verdict(growth <= 1.5) if growth else "INFO")
        for peer in ("netavark", "CNI bridge", "Docker API", KERNEL):
            c = curves.get(peer)
            if c and lo in c:
                top = max(c)
                g = c[top]["attach"]["p50"] / c[lo]["attach"]["p50"]
                note = ("nsnet's attach messages from one process, no daemon: the kernel's own growth "
                        f"({c[lo]['attach']['p50']:.2f} -> {c[top]['attach']['p50']:.2f} ms)"
                        if peer == KERNEL else "peer, for comparison")
                fig.row(measure=f"attach growth {lo} -> {top}, {peer}", value=g, unit="x", reps=str(reps), note=note)
        turns = fig.data.get("in_turns")
        if turns:
            b, sm = turns["big"]["p50"], turns["small"]["p50"]
            fig.row(measure=f"attach to a {turns['filled']}-sandbox network vs a 10-sandbox one, in turns", value=b / sm,
                    unit="x", reps=f"{turns['big']['n']}+{turns['small']['n']}",
                    note=f"{b:.2f} vs {sm:.2f} ms, one daemon holding both: the bridge's size alone, free of drift")
        mem = [(lv, ns[lv]["rss_kb"]) for lv in levels if ns[lv]["rss_kb"]]
        if len(mem) >= 2:
            (l0, m0), (l1, m1) = mem[0], mem[-1]
            fig.row(measure=f"nsnet daemon memory per sandbox ({l0} -> {l1})", value=(m1 - m0) / (l1 - l0),
                    unit="KiB", reps="1", note=f"RSS {m0 / 1024:.0f} -> {m1 / 1024:.0f} MiB")
    return fig


def _in_turns(eng: NsnetEngine, probes: list[str], filled: int) -> dict:
    """With the daemon full, attach in turns to the full network and to a new one of 10 sandboxes: what
    the bridge's size alone costs, both figures taken at the same moment (no drift between levels)."""
    eng.create_network("small", "10.44.0.0/16")
    for i in range(10):
        eng.run(f"s{i}", "small")
    small, big = [], []
    for p in probes:
        small.append(timed_ms(eng.connect, "small", p))
        eng.disconnect("small", p)
        big.append(timed_ms(eng.connect, "scale", p))
        eng.disconnect("scale", p)
    return {"filled": filled, "small": summary(small), "big": summary(big)}


def _bridge_limit(ctx, fig: Figure, eng: NsnetEngine, filled: int) -> None:
    """Keep adding sandboxes past 1,023 bridge ports and record what nsnet says."""
    msg, ok = None, filled
    for i in range(filled, 1030):
        try:
            eng.run(f"f{i}", "scale")
            ok = i + 1
        except ApiError as e:
            msg = str(e)
            break
    fig.data["bridge_limit"] = {"sandboxes_ok": ok, "error": msg}
    if msg:
        clear = any(w in msg.lower() for w in ("1024", "1,024", "port", "full", "limit"))
        fig.row(measure="bridge port limit: sandboxes that joined one network", value=ok, unit="sandboxes", reps="1",
                target="a clear error at the limit", verdict=verdict(clear), note=f"then: {msg[:160]}")
    else:
        fig.row(measure="bridge port limit: sandboxes that joined one network", value=ok, unit="sandboxes", reps="1",
                target="a clear error at the limit, or no limit", verdict=verdict(ok >= 1030),
                note="all joined: past 128 ports a network's sandboxes go on leaf bridges")


def _profile_full(ctx, fig: Figure, eng: NsnetEngine, probe: str, level: int) -> None:
    """py-spy over connect+disconnect cycles with the network at its fullest: what grows with the fill."""
    from profile_attach import profile, summary_line

    def cycle():
        eng.connect("scale", probe)
        eng.disconnect("scale", probe)
    try:
        top = profile(ctx.h, eng.daemon_pid, cycle, max(30, ctx.profile_cycles // 3), ctx.out, tag=f"attach_at_{level}")
    except Skip as e:
        fig.skipped.append(f"profile at {level} sandboxes: {e}")
        return
    fig.data[f"profile_at_{level}"] = top
    fig.notes.append(f"py-spy at {level} sandboxes ({top['cycles']} cycles, {top['samples']} samples): "
                     f"{summary_line(top)} - full list in profile_attach_at_{level}.txt")
