"""Figure 3: network create / rm latency, nsnet (API and CLI) vs Docker (API and CLI).

Networks are created without a subnet, as `docker network create NAME` is usually run: each engine picks
the next free pool from its default address pools (both follow Docker's order). netavark has no notion of
creating a network (Podman keeps networks as JSON; netavark builds the bridge on the first setup).
"""
from __future__ import annotations

import time

from common import Figure, faster, ms_since, summary
from peer_nsnet import NsnetEngine


def _t(fn, *a) -> float:
    t0 = time.perf_counter()
    fn(*a)
    return ms_since(t0)


def run(ctx) -> Figure:
    h, m = ctx.h, ctx.create_n
    fig = Figure("3", f"Network create / rm ({m} networks, default pools)")
    fig.skipped.append("netavark: no network create/rm of its own (Podman keeps the network as JSON; the bridge "
                       "is built by the first setup)")
    s: dict[str, dict] = {}
    mark = h.mark()
    try:
        eng = NsnetEngine(h, "f3")
        s["nsnet API"] = {"create": [_t(eng.create_network, f"n{i}") for i in range(m)]}
        s["nsnet API"]["rm"] = [_t(eng.remove_network, f"n{i}") for i in range(m)]
        k = min(m, ctx.cli_reps)
        s["nsnet CLI"] = {"create": [eng.cli_ms(["network", "create", f"c{i}"]) for i in range(k)]}
        s["nsnet CLI"]["rm"] = [eng.cli_ms(["network", "rm", f"c{i}"]) for i in range(k)]
    finally:
        h.close_upto(mark)

    docker = ctx.docker()
    if docker is None:
        fig.skipped.append(f"Docker: {ctx.docker_skip}")
    else:
        try:
            s["Docker API"] = {"create": [_t(docker.create_network, f"n{i}") for i in range(m)]}
            s["Docker API"]["rm"] = [_t(docker.remove_network, f"n{i}") for i in range(m)]
            k = min(m, ctx.cli_reps)
            s["Docker CLI"] = {"create": [docker.cli(["network", "create", f"c{i}"]) for i in range(k)]}
            s["Docker CLI"]["rm"] = [docker.cli(["network", "rm", f"c{i}"]) for i in range(k)]
        finally:
            docker.clear()

    stats = {k: {op: summary(v) for op, v in ops.items()} for k, ops in s.items()}
    fig.data = {"samples_ms": s, "stats": stats}
    for front in ("API", "CLI"):
        mine = stats.get(f"nsnet {front}")
        if not mine:
            continue
        peer = stats.get(f"Docker {front}")
        for op in ("create", "rm"):
            a = mine[op]
            row = dict(measure=f"network {op}, nsnet {front}", value=a["p50"], p95=a["p95"], unit="ms", reps=str(a["n"]))
            if peer:
                r, txt = faster(a["p50"], peer[op]["p50"])
                row.update(peer=f"docker network {op} ({front})", peer_value=peer[op]["p50"], peer_p95=peer[op]["p95"],
                           ratio=r, ratio_text=txt, reps=f"{a['n']}+{peer[op]['n']}")
            fig.row(**row)
    return fig
