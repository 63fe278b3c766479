"""Figure 4: CLI start-up, `nsnet network ls` wall time with a warm daemon, next to `docker network ls` and to
two floors of the same interpreter: starting Python at all, and importing nsnet's CLI."""
from __future__ import annotations

from common import PY, Figure, faster, sh, summary, timed, verdict
from peer_nsnet import NsnetEngine


def run(ctx) -> Figure:
    h, reps = ctx.h, ctx.cli_reps
    fig = Figure("4", "CLI start-up: `network ls` with a warm daemon")
    s: dict[str, list[float]] = {}
    with h.scope():
        eng = NsnetEngine(h, "f4")
        for i in range(5):
            eng.create_network(f"n{i}", f"10.5{i}.0.0/16")
        for _ in range(3):  # warm: daemon, page cache, bytecode
            eng.cli(["network", "ls"])
        s["nsnet network ls"] = [eng.cli_ms(["network", "ls"]) for _ in range(reps)]
        s["floor: python -c pass"] = [timed([PY, "-c", "pass"], eng.ns) for _ in range(reps)]
        s["floor: python -c 'import nsnet.cli'"] = [timed([PY, "-c", "import nsnet.cli"], eng.ns) for _ in range(reps)]
        imp = None
        try:  # what the CLI imports, slowest first (python -X importtime)
            cp = sh([PY, "-X", "importtime", "-m", "nsnet", "--root", eng.root, "network", "ls"], eng.ns)
            rows = []
            for line in cp.stderr.splitlines():
                if line.startswith("import time:") and "|" in line:
                    parts = [p.strip() for p in line[len("import time:"):].split("|")]
                    if parts[0].isdigit():
                        rows.append((int(parts[1]), parts[2]))
            rows.sort(reverse=True)
            imp = [(name.strip(), us / 1000) for us, name in rows[:8]]
        except Exception:
            imp = None

    docker = ctx.docker()
    if docker is None:
        fig.skipped.append(f"Docker: {ctx.docker_skip}")
    else:
        for _ in range(3):
            docker.cli(["network", "ls"])
        s["docker network ls"] = [docker.cli(["network", "ls"]) for _ in range(reps)]

    stats = {k: summary(v) for k, v in s.items()}
    fig.data = {"samples_ms": s, "stats": stats, "imports_ms": imp}
    a = stats["nsnet network ls"]
    row = dict(measure="`nsnet network ls`, warm daemon", value=a["p50"], p95=a["p95"], unit="ms", reps=str(a["n"]),
               target="p50 <= 60 ms", verdict=verdict(a["p50"] <= 60))
    if "docker network ls" in stats:
        p = stats["docker network ls"]
        r, txt = faster(a["p50"], p["p50"])
        row.update(peer="docker network ls", peer_value=p["p50"], peer_p95=p["p95"], ratio=r, ratio_text=txt,
                   reps=f"{a['n']}+{p['n']}")
    fig.row(**row)
    for floor in ("floor: python -c pass", "floor: python -c 'import nsnet.cli'"):
        p = stats[floor]
        fig.row(measure=f"`nsnet network ls` vs {floor}", value=a["p50"], p95=a["p95"], unit="ms",
                reps=f"{a['n']}+{p['n']}", peer=floor, peer_value=p["p50"], peer_p95=p["p95"],
                ratio=p["p50"] / a["p50"], ratio_text=f"{a['p50'] - p['p50']:+.1f} ms vs floor")
    if imp:
        fig.notes.append("slowest imports of the CLI (cumulative ms, python -X importtime, one cold-ish run): "
                         + ", ".join(f"{n} {ms:.1f}" for n, ms in imp[:6]))
    return fig
