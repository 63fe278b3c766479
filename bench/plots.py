"""PNG plots of a run's figures (matplotlib, no display)."""
from __future__ import annotations

import os


def make(figs: dict, out: str) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []

    def save(fig, name):
        path = os.path.join(out, name)
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)

    def bars(ax, labels, p50, p95, unit, title):
        xs = range(len(labels))
        err = [[0] * len(labels), [max(0.0, (b or a) - a) for a, b in zip(p50, p95)]]
        ax.bar(xs, p50, yerr=err, capsize=3, color=["#1f77b4" if l.startswith("nsnet") else
                                                   "#999999" if l.startswith("floor") else "#ff7f0e" for l in labels])
        ax.set_xticks(list(xs))
        ax.set_xticklabels(labels, rotation=30, ha="right", fontsize=8)
        ax.set_ylabel(unit)
        ax.set_title(title, fontsize=10)
        for x, v in zip(xs, p50):
            ax.annotate(f"{v:.1f}", (x, v), ha="center", va="bottom", fontsize=7)

    f1 = figs.get("1")
    if f1 and f1.data.get("stats"):
        st = f1.data["stats"]
        fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
        for ax, op in zip(axes, ("attach", "detach")):
            labels = [k for k in st if st[k][op].get("n")]
            bars(ax, labels, [st[k][op]["p50"] for k in labels], [st[k][op].get("p95") for k in labels], "ms",
                 f"{op} per sandbox: p50 (bar), p95 (whisker)")
            ax.set_yscale("log")
        save(fig, "fig1_attach_detach.png")

    f2 = figs.get("2")
    if f2 and f2.data.get("curves"):
        curves = f2.data["curves"]
        fig, (ax, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
        for name, c in curves.items():
            lv = sorted(int(k) for k in c)
            ax.plot(lv, [c[str(l)]["attach"]["p50"] for l in lv], marker="o", label=name)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("sandboxes on the network")
        ax.set_ylabel("attach p50, ms")
        ax.set_title("attach latency as the network fills", fontsize=10)
        ax.legend(fontsize=8)
        ns = curves.get("nsnet API", {})
        lv = sorted(int(k) for k in ns if ns[k].get("rss_kb"))
        if lv:
            ax2.plot(lv, [ns[str(l)]["rss_kb"] / 1024 for l in lv], marker="o", color="#1f77b4")
            ax2.set_xscale("log")
            ax2.set_xlabel("sandboxes on the network")
            ax2.set_ylabel("nsnet daemon RSS, MiB")
            ax2.set_title("nsnet daemon memory", fontsize=10)
        save(fig, "fig2_scaling.png")

    for key, name, title in (("3", "fig3_network_create_rm.png", "network create / rm"),):
        f = figs.get(key)
        if f and f.data.get("stats"):
            st = f.data["stats"]
            fig, axes = plt.subplots(1, 2, figsize=(10, 4))
            for ax, op in zip(axes, ("create", "rm")):
                labels = [k for k in st if st[k][op].get("n")]
                bars(ax, labels, [st[k][op]["p50"] for k in labels], [st[k][op]["p95"] for k in labels], "ms",
                     f"network {op}: p50, p95")
            save(fig, name)

    f4 = figs.get("4")
    if f4 and f4.data.get("stats"):
        st = f4.data["stats"]
        fig, ax = plt.subplots(figsize=(7, 4))
        labels = list(st)
        bars(ax, labels, [st[k]["p50"] for k in labels], [st[k]["p95"] for k in labels], "ms",
             "CLI wall time, warm daemon: p50, p95")
        ax.axhline(60, color="red", lw=0.8, ls="--")
        save(fig, "fig4_cli_startup.png")

    f5 = figs.get("5")
    if f5 and f5.data:
        d = f5.data
        fig, ax = plt.subplots(figsize=(8, 4))
        labels, vals = [], []
        for size in ("/16", "/8"):
            if size in d:
                labels += [f"alloc {size}", f"release {size}", f"churn {size}"]
                vals += [d[size]["alloc_per_s"], d[size]["release_per_s"], d[size]["churn_pairs_per_s"]]
        for n, v in (d.get("fresh_pool") or {}).items():
            labels.append(f"fresh pool, {n} used")
            vals.append(v)
        ax.bar(range(len(vals)), vals, color="#1f77b4")
        ax.set_xticks(range(len(vals)))
        ax.set_xticklabels(labels, rotation=30, ha="right", fontsize=8)
        ax.set_yscale("log")
        ax.set_ylabel("operations / s")
        ax.set_title("IPAM (AddressPool)", fontsize=10)
        save(fig, "fig5_ipam.png")

    f6 = figs.get("6")
    if f6 and f6.data:
        d = f6.data
        fig, (ax, ax2) = plt.subplots(1, 2, figsize=(9, 4))
        names = list(d)
        ax.bar(range(len(names)), [d[n]["qps"] or 0 for n in names], color=["#1f77b4" if n == "nsnet" else "#ff7f0e" for n in names])
        ax.set_xticks(range(len(names)))
        ax.set_xticklabels(names)
        ax.set_ylabel("queries / s (dnsperf)")
        for i, n in enumerate(names):
            lat = d[n].get("latency", {})
            if lat.get("p50"):
                ax2.bar([i - 0.2, i + 0.2], [lat["p50"], lat["p99"]], width=0.4,
                        color=["#1f77b4", "#aec7e8"] if n == "nsnet" else ["#ff7f0e", "#ffbb78"])
        ax2.set_xticks(range(len(names)))
        ax2.set_xticklabels(names)
        ax2.set_ylabel("latency p50 / p99, ms (unloaded)")
        if "nsnet" not in d:
            ax.set_title("nsnet resolver: not available in this run", fontsize=9)
        save(fig, "fig6_dns.png")

    f7 = figs.get("7")
    if f7 and f7.data.get("median_gbit_s"):
        med = f7.data["median_gbit_s"]
        fig, ax = plt.subplots(figsize=(11, 5))
        labels = list(med)
        ax.bar(range(len(labels)), [med[k] for k in labels],
               color=["#1f77b4" if k.startswith("nsnet") else "#999999" for k in labels])
        ax.set_xticks(range(len(labels)))
        ax.set_xticklabels(labels, rotation=20, ha="right", fontsize=8)
        ax.set_ylabel("Gbit/s (median)")
        ax.set_title("iperf3 TCP throughput", fontsize=10)
        save(fig, "fig7_dataplane.png")
    return written
