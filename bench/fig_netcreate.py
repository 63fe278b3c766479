"""Figure 3: network create / rm latency, nsnet (API and CLI) vs Docker (API and CLI).

Networks are created without a subnet, as `docker network create NAME` is usually run: each engine picks
the next free pool from its default address pools (both follow Docker's order). netavark has no notion of
creating a network (Podman keeps networks as JSON; netavark builds the bridge on the first setup).
"""
from __future__ import annotations


from common import Figure, faster, summary, timed_ms
from peer_nsnet import NsnetEngine, NsnetFailed

from nsnet.client import ApiError


def run(ctx) -> Figure:
    h, m = ctx.h, ctx.create_n
    fig = Figure("3", f"Network create / rm ({m} networks, default pools)")
    fig.skipped.append("netavark: no network create/rm of its own (Podman keeps the network as JSON; the bridge "
                       "is built by the first setup)")
    s: dict[str, dict] = {}
    # Each front door gets an engine (a host) of its own: default pools are ~30 networks per host, and the
    # two rounds together would ask for more.
    k = min(m, ctx.cli_reps)
    for front, count, create, remove in (
            ("API", m, lambda e, n: e.create_network(n), lambda e, n: e.remove_network(n)),
            ("CLI", k, lambda e, n: e.cli(["network", "create", n]), lambda e, n: e.cli(["network", "rm", n]))):
        with h.scope():
            eng = NsnetEngine(h, f"f3{front.lower()}")
            made, cr, rm = [], [], []
            try:
                for i in range(count):
                    cr.append(timed_ms(create, eng, f"n{i}"))
                    made.append(f"n{i}")
            except (ApiError, NsnetFailed) as e:
                fig.notes.append(f"nsnet {front}: network create #{len(made) + 1} failed: {e}")
            first = eng.api.get("/networks/n0")["IPAM"]["Config"][0]["Subnet"] if made else None
            for n in made:
                rm.append(timed_ms(remove, eng, n))
            s[f"nsnet {front}"] = {"create": cr, "rm": rm}
            if front == "API" and first:
                _pool_reuse(fig, eng, first)

    docker = ctx.docker()
    if docker is None:
        fig.skipped.append(f"Docker: {ctx.docker_skip}")
    else:
        try:
            s["Docker API"] = {"create": [timed_ms(docker.create_network, f"n{i}") for i in range(m)]}
            s["Docker API"]["rm"] = [timed_ms(docker.remove_network, f"n{i}") for i in range(m)]
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
            if not a.get("n"):
                continue
            row = dict(measure=f"network {op}, nsnet {front}", value=a["p50"], p95=a["p95"], unit="ms", reps=str(a["n"]))
            if peer and peer[op].get("n"):
                r, txt = faster(a["p50"], peer[op]["p50"])
                row.update(peer=f"docker network {op} ({front})", peer_value=peer[op]["p50"], peer_p95=peer[op]["p95"],
                           ratio=r, ratio_text=txt, reps=f"{a['n']}+{peer[op]['n']}")
            fig.row(**row)
    fig.rows.sort(key=lambda r: r.measure.startswith("pool of"))  # the reuse check after the timings
    return fig


def _pool_reuse(fig: Figure, eng: NsnetEngine, first: str) -> None:
    """After every network is removed, the next `network create` should get the first pool again (Docker does)."""
    try:
        eng.create_network("again")
        got = eng.api.get("/networks/again")["IPAM"]["Config"][0]["Subnet"]
        eng.remove_network("again")
    except ApiError as e:
        got, err = None, str(e)
    else:
        err = None
    ok = got == first
    fig.row(measure="pool of a removed network is given out again", value=None, unit="",
            reps="1", target=f"next create gets {first}", verdict="PASS" if ok else "MISS",
            note=f"got {got}" if got else f"create failed: {err[:160]}")
    if not ok:
        fig.notes.append(f"after `network rm` of every network, the next create got {got or 'nothing'} instead of "
                         f"{first}: see the skip reasons in the daemon's log (a removed bridge's own traffic, "
                         f"e.g. its IGMP reports to 224.0.0.22, stays in conntrack and counts as evidence)")
