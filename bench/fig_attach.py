"""Figure 1: attach / detach latency per sandbox, p50 and p95, on the same bridge-network shape.

nsnet through its daemon API (what a runtime pays) and through its CLI; netavark setup / teardown;
CNI bridge ADD / DEL; Docker network connect / disconnect (API, and a few through its CLI); and two
floors: pyroute2 doing only the netlink work in one process, and the kernel alone (`ip -batch`).
Every peer attaches the same number of sandboxes, one after the other, to one network, then detaches them.
"""
from __future__ import annotations


from common import Figure, Skip, faster, summary, timed_ms, verdict
from peer_cni import Cni, NsnetCni
from peer_floor import kernel_floor, pyroute2_floor
from peer_netavark import Netavark
from peer_nsnet import NsnetEngine


def run(ctx) -> Figure:
    h, n = ctx.h, ctx.attach_n
    fig = Figure("1", f"Attach / detach latency per sandbox ({n} sandboxes, one network)")
    series: dict[str, dict] = {}

    # ---- nsnet ------------------------------------------------------------------------------------
    with h.scope():
        eng = NsnetEngine(h, "f1")
        eng.create_network("bn", "10.31.0.0/16")
        eng.create_network("bn2", "10.33.0.0/16")
        eng.create_network("pbase", "10.32.0.0/16")
        base = eng.probe_base("pbase", "p0")
        for i in range(1, n):
            eng.run(f"p{i}", base)
        if base != "none":
            fig.notes.append("nsnet refuses to connect a sandbox that runs on the `none` network (as Docker does): "
                             "probes run on a small network of their own and attach = connecting them to a second "
                             "network (eth1), the shape Docker's `network connect` is measured in too")
        probes = [f"p{i}" for i in range(n)]
        for p in probes[:2]:  # warm-up, not counted
            eng.connect("bn", p)
            eng.disconnect("bn", p)
        att = [timed_ms(eng.connect, "bn", p) for p in probes]
        det = [timed_ms(eng.disconnect, "bn", p) for p in probes]
        series["nsnet API"] = {"attach": att, "detach": det}
        catt = [eng.cli_ms(["network", "connect", "bn2", p]) for p in probes]
        cdet = [eng.cli_ms(["network", "disconnect", "bn2", p]) for p in probes]
        series["nsnet CLI"] = {"attach": catt, "detach": cdet}
        if ctx.profile:
            _profile(ctx, fig, eng)

    # ---- netavark, CNI -------------------------------------------------------------------------------
    for label, make, up, down in (("netavark", lambda: Netavark(h, "f1nv"), "setup_ms", "teardown_ms"),
                                  ("CNI bridge", lambda: Cni(h, "f1cni"), "add_ms", "del_ms"),
                                  ("nsnet CNI", lambda: NsnetCni(h, "f1ncni"), "add_ms", "del_ms")):
        with h.scope(fig, label):
            peer = make()
            peer.prepare(list(range(n)))
            att = [getattr(peer, up)(i) for i in range(n)]
            det = [getattr(peer, down)(i) for i in range(n)]
            series[label] = {"attach": att, "detach": det}

    # ---- Docker ---------------------------------------------------------------------------------------
    docker = ctx.docker()
    if docker is None:
        fig.skipped.append(f"Docker: {ctx.docker_skip}")
    else:
        try:
            docker.create_network("dbase", "10.34.0.0/16")
            docker.create_network("dbn", "10.35.0.0/16")
            docker.create_network("dbn2", "10.36.0.0/16")
            names = [f"d{i}" for i in range(n)]
            for c in names:
                docker.run(c, "dbase")
            att = [timed_ms(docker.connect, "dbn", c) for c in names]
            det = [timed_ms(docker.disconnect, "dbn", c) for c in names]
            series["Docker API"] = {"attach": att, "detach": det}
            k = min(n, ctx.cli_reps)
            catt = [docker.cli(["network", "connect", "dbn2", c]) for c in names[:k]]
            cdet = [docker.cli(["network", "disconnect", "dbn2", c]) for c in names[:k]]
            series["Docker CLI"] = {"attach": catt, "detach": cdet}
        finally:
            docker.clear()

    # ---- floors -----------------------------------------------------------------------------------------
    # A floor is a reference, never the point of the run: any failure is a skip.
    with h.scope(fig, "pyroute2 floor", catch=Exception):
        att, det = pyroute2_floor(h, n)
        series["floor: pyroute2"] = {"attach": att, "detach": det}
    with h.scope(fig, "kernel floor", catch=Exception):
        per = kernel_floor(h, max(n, 50))
        series["floor: kernel"] = {"attach": [per], "detach": []}

    # ---- rows -------------------------------------------------------------------------------------------
    stats = {k: {"attach": summary(v["attach"]), "detach": summary(v["detach"])} for k, v in series.items()}
    fig.data = {"samples_ms": series, "stats": stats}
    api = stats.get("nsnet API")
    a50 = api["attach"]["p50"] if api else None
    if api:
        fig.row(measure="attach, nsnet daemon API", value=a50, p95=api["attach"]["p95"], unit="ms",
                reps=f"{n}", target="p50 <= 5 ms", verdict=verdict(a50 <= 5.0))
        for peer, label in (("netavark", "netavark setup"), ("CNI bridge", "CNI bridge ADD")):
            if peer in stats:
                p = stats[peer]["attach"]
                r, txt = faster(a50, p["p50"])
                fig.row(measure=f"attach, nsnet API vs {label}", value=a50, p95=api["attach"]["p95"], unit="ms",
                        reps=f"{n}+{n}", peer=label, peer_value=p["p50"], peer_p95=p["p95"], ratio=r, ratio_text=txt,
                        target=">= 9x faster", verdict=verdict(r >= 9))
        if "Docker API" in stats:
            p = stats["Docker API"]["attach"]
            r, txt = faster(a50, p["p50"])
            fig.row(measure="attach, nsnet API vs Docker connect (API)", value=a50, p95=api["attach"]["p95"], unit="ms",
                    reps=f"{n}+{n}", peer="docker connect", peer_value=p["p50"], peer_p95=p["p95"], ratio=r, ratio_text=txt)
        d50 = api["detach"]["p50"]
        for peer, label in (("netavark", "netavark teardown"), ("CNI bridge", "CNI bridge DEL"),
                            ("Docker API", "docker disconnect"), ("floor: pyroute2", "floor: pyroute2 link del")):
            if peer in stats:
                p = stats[peer]["detach"]
                r, txt = faster(d50, p["p50"])
                fig.row(measure=f"detach, nsnet API vs {label}", value=d50, p95=api["detach"]["p95"], unit="ms",
                        reps=f"{n}+{n}", peer=label, peer_value=p["p50"], peer_p95=p["p95"], ratio=r, ratio_text=txt)
        for floor in ("floor: pyroute2", "floor: kernel"):
            if floor in stats:
                p = stats[floor]["attach"]
                r, txt = faster(a50, p["p50"])
                fig.row(measure=f"attach, nsnet API vs {floor}", value=a50, p95=api["attach"]["p95"], unit="ms",
                        reps=f"{n}+{p['n'] if floor.endswith('pyroute2') else 'batch'}", peer=floor,
                        peer_value=p["p50"], peer_p95=p.get("p95"), ratio=r, ratio_text=txt)
    _cni_rows(fig, stats, n)
    cli = stats.get("nsnet CLI")
    if cli:
        c50 = cli["attach"]["p50"]
        row = dict(measure="attach, nsnet CLI `network connect`", value=c50, p95=cli["attach"]["p95"], unit="ms",
                   reps=f"{n}", target="p50 <= 60 ms", verdict=verdict(c50 <= 60.0))
        if "Docker CLI" in stats:
            p = stats["Docker CLI"]["attach"]
            r, txt = faster(c50, p["p50"])
            row.update(peer="docker network connect (CLI)", peer_value=p["p50"], peer_p95=p["p95"], ratio=r,
                       ratio_text=txt, reps=f"{n}+{p['n']}")
        fig.row(**row)
        fig.row(measure="detach, nsnet CLI `network disconnect`", value=cli["detach"]["p50"], p95=cli["detach"]["p95"],
                unit="ms", reps=f"{n}")
    return fig


def _cni_rows(fig: Figure, stats: dict, n: int) -> None:
    """nsnet's CNI plugin against the reference bridge + host-local, both as a runtime sees them: one plugin
    process per call, from its start to its exit."""
    mine, ref = stats.get("nsnet CNI"), stats.get("CNI bridge")
    if not mine or not ref:
        return
    for step, label in (("attach", "ADD"), ("detach", "DEL")):
        m, p = mine[step], ref[step]
        r, txt = faster(m["p50"], p["p50"])
        fig.row(measure=f"CNI {label}, nsnet plugin vs bridge + host-local", value=m["p50"], p95=m["p95"], unit="ms",
                reps=f"{n}+{n}", peer=f"CNI bridge {label}", peer_value=p["p50"], peer_p95=p["p95"], ratio=r,
                ratio_text=txt, target="p50 <= half the peer's", verdict=verdict(r is not None and r >= 2))


def _profile(ctx, fig: Figure, eng: NsnetEngine) -> None:
    from profile_attach import profile

    def cycle():
        eng.connect("bn", "p0")
        eng.disconnect("bn", "p0")
    try:
        top = profile(ctx.h, eng.daemon_pid, cycle, ctx.profile_cycles, ctx.out)
    except Skip as e:
        fig.skipped.append(f"attach profile: {e}")
        return
    fig.data["profile"] = top
    from profile_attach import summary_line

    fig.notes.append(f"py-spy profile of {top['cycles']} connect+disconnect cycles in the daemon ({top['samples']} "
                     f"samples in Engine use cases, inclusive): {summary_line(top)} - full list in profile_attach.txt")
