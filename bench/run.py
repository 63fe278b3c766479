#!/usr/bin/env python3
"""nsnet's benchmark suite: nsnet against netavark, the CNI plugins, Docker and aardvark-dns, in one run.

    sudo .venv/bin/python bench/run.py [--quick] [--only 1,2,...] [--no-install] [--no-docker]

Installs missing peers from Debian's packages, runs every figure inside throwaway network namespaces,
prints a table (nsnet's figure, the peer's figure from the same run, the ratio, the target, PASS/MISS,
the repetitions) and writes results.json, table.txt and PNG plots under bench/results/.
A benchmark reports, it does not fail: the exit code is 0 unless the harness itself broke.
"""
from __future__ import annotations

import argparse
import os
import platform
import signal
import subprocess
import sys
import time
import traceback
from dataclasses import asdict

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "src"))  # nsnet itself, even without the editable install

import common  # noqa: E402
from common import Figure, Harness, Skip, sweep_leftovers, write_json  # noqa: E402

FIGURES = {
    "1": "fig_attach", "2": "fig_scaling", "3": "fig_netcreate", "4": "fig_cli",
    "5": "fig_ipam", "6": "fig_dns", "7": "fig_dataplane", "8": "fig_overlay", "9": "fig_encrypted",
    "10": "fig_services",
}
# The data plane first, on a machine not yet busy tearing down earlier figures' namespaces; then the cheap
# ones; the long scaling run last.
RUN_ORDER = ["7", "8", "9", "10", "5", "1", "3", "4", "6", "2"]
DOCKER_FIGS = {"1", "2", "3", "4", "7"}


LOCK = "/tmp/nsnet-bench.lock"


def one_run_at_a_time(log) -> None:
    """Wait for any other run of the suite to end: two at once would sweep each other's namespaces (ours are
    found by prefix) and share two cores. Held until this process ends, whatever way it ends."""
    import fcntl
    fd = os.open(LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        log("waiting for another run of the benchmark suite to end")
        fcntl.flock(fd, fcntl.LOCK_EX)


class Ctx:
    """What every figure needs: the harness, the sizes of this run, the shared Docker daemon."""

    def __init__(self, args, h: Harness, out: str, log):
        q = args.quick
        self.h, self.out, self.log, self.quick = h, out, log, q
        self.attach_n = args.n or (20 if q else 50)
        self.cli_reps = 15 if q else 30
        self.levels = [10, 100] if q else [10, 100, 500, 1000]
        if args.levels:
            self.levels = sorted(int(x) for x in args.levels.split(","))
        self.scale_reps = 10 if q else 50
        self.bridge_limit = not q
        self.docker_scale_max = args.docker_scale_max
        self.create_n = 10 if q else 25
        self.ipam_reps = 3
        self.ipam_n8 = 200_000 if q else 1_000_000
        self.ipam_churn_ops = 20_000
        self.ipam_engine_levels = [10, 1000, 10000]
        self.ipam_engine_ops = 300 if q else 1000
        self.dns_seconds = 5 if q else 10
        self.dns_lat_queries = 2000 if q else 5000
        # One iperf3 run now and then loses a third of its figure on this shared VM: nine short rounds give
        # a median of per-round shares that such a run does not move (five long ones moved it by 8 points).
        self.iperf_seconds = 3
        self.iperf_reps = 1 if q else 9
        self.profile = not args.no_profile
        self.profile_cycles = 100 if q else 300
        self._docker = None
        self.docker_skip = "not started"

    def start_docker(self, allowed: bool) -> None:
        if not allowed:
            self.docker_skip = "left out (--no-docker)"
            return
        from peer_docker import Docker

        t0 = time.perf_counter()
        try:
            self._docker = Docker(self.h)
            self.log(f"  dockerd {self._docker.version} up in its own namespace ({time.perf_counter() - t0:.1f} s)")
        except Skip as e:
            self.docker_skip = str(e)
            self.log(f"  Docker skipped: {e}")
        except Exception as e:  # Docker's engine could not start here: its figures are skipped, not the run
            self.docker_skip = f"dockerd could not start here: {e}"
            self.log(f"  Docker skipped: {self.docker_skip}")

    def docker(self):
        return self._docker


# ---- the table ---------------------------------------------------------------------------------------

def _fmt(v, unit: str, p95=None) -> str:
    if v is None:
        return "-"
    if unit in ("/s", "pairs/s", "q/s"):
        s = f"{v / 1e6:.2f}M" if v >= 1e6 else f"{v / 1e3:.1f}k" if v >= 1e4 else f"{v:.0f}"
        return f"{s} {unit}"
    if unit == "ms":
        s = f"{v:.2f}" if v < 10 else f"{v:.1f}" if v < 100 else f"{v:.0f}"
        if p95 is not None:
            s += "/" + (f"{p95:.2f}" if p95 < 10 else f"{p95:.1f}" if p95 < 100 else f"{p95:.0f}")
        return s + " ms"
    if unit == "x":
        return f"{v:.2f}x"
    if unit == "Gbit/s":
        return f"{v:.2f} Gbit/s"
    if unit == "KiB":
        return f"{v:.0f} KiB"
    return f"{v:g} {unit}"


def _order(key: str) -> int:
    return int(key) if key.isdigit() else 1000   # figure 10 after 9, not after 1


def table(figs: dict[str, Figure]) -> str:
    head = ("Fig", "Measure", "nsnet", "Peer", "Peer figure", "Ratio", "Target", "Verdict", "Reps")
    rows = []
    for key in sorted(figs, key=_order):
        for r in figs[key].rows:
            rows.append((r.figure, r.measure, _fmt(r.value, r.unit, r.p95), r.peer or "",
                         _fmt(r.peer_value, r.unit, r.peer_p95) if r.peer else "", r.ratio_text, r.target,
                         r.verdict if r.target or r.verdict == "SKIP" else "", r.reps))
    widths = [max(len(str(x)) for x in col) for col in zip(head, *rows)] if rows else [len(h) for h in head]
    widths[1] = min(widths[1], 58)
    widths[3] = min(widths[3], 30)

    def line(cells):
        out = []
        for c, w in zip(cells, widths):
            c = str(c)
            out.append((c[: w - 1] + "~") if len(c) > w else c.ljust(w))
        return " | ".join(out).rstrip()
    lines = [line(head), "-+-".join("-" * w for w in widths)]
    last = None
    for r in rows:
        if last is not None and r[0] != last:
            lines.append("-+-".join("-" * w for w in widths))
        lines.append(line(r))
        last = r[0]
    lines.append("")
    lines.append("Latencies are p50/p95 ms. Ratio: how nsnet compares with the peer on that line (faster/slower, or "
                 "nsnet's share of the peer's throughput).")
    for key in sorted(figs, key=_order):
        f = figs[key]
        for s in f.skipped:
            lines.append(f"[fig {key}] skipped: {s}")
        for n in f.notes:
            lines.append(f"[fig {key}] note: {n}")
    return "\n".join(lines)


# ---- environment ------------------------------------------------------------------------------------------

def _version(cmd, env=None) -> str:
    try:
        cp = subprocess.run(cmd, capture_output=True, text=True, timeout=10, env=env)
        return (cp.stdout or cp.stderr).strip().splitlines()[0][:80]
    except Exception:
        return "missing"


def environment() -> dict:
    git = subprocess.run(["git", "-C", common.REPO, "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    dirty = subprocess.run(["git", "-C", common.REPO, "status", "--porcelain", "--", "src"], capture_output=True, text=True)
    return {
        "kernel": platform.release(), "cpus": os.cpu_count(), "python": platform.python_version(),
        "nsnet_commit": git.stdout.strip() + (" (src has uncommitted changes)" if dirty.stdout.strip() else ""),
        "netavark": _version(["/usr/lib/podman/netavark", "--version"]),
        "aardvark-dns": _version(["/usr/lib/podman/aardvark-dns", "--version"]),
        "cni-bridge": _version(["/usr/lib/cni/bridge"], env=dict(os.environ, CNI_COMMAND="VERSION")),
        "dockerd": _version(["/usr/sbin/dockerd", "--version"]),
        "dnsperf": _dnsperf_version(),
        "iperf3": _version(["iperf3", "--version"]),
        "time": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }


def _dnsperf_version() -> str:
    try:
        cp = subprocess.run(["dnsperf", "-h"], capture_output=True, text=True, timeout=10)
        for line in (cp.stdout + cp.stderr).splitlines():
            if line.startswith("Version"):
                return line.strip()
    except Exception:
        pass
    return "missing"


# ---- main ---------------------------------------------------------------------------------------------------

def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer repetitions; scaling stops at 100 sandboxes")
    ap.add_argument("--only", help="comma-separated figure numbers (default: all 7)")
    ap.add_argument("--no-install", action="store_true", help="do not apt-get/pip install missing peers and tools")
    ap.add_argument("--no-docker", action="store_true", help="leave Docker out")
    ap.add_argument("--no-profile", action="store_true", help="skip the profiles (py-spy of the attach path, perf of the data plane)")
    ap.add_argument("--n", type=int, help="sandboxes per attach figure (default 20 quick, 50 full)")
    ap.add_argument("--levels", help="scaling levels, e.g. 10,100,500,1000")
    ap.add_argument("--docker-scale-max", type=int, default=100,
                    help="largest scaling level Docker is filled to (each docker run costs ~0.5 s; default 100)")
    ap.add_argument("--out", default=os.path.join(HERE, "results"), help="results folder (default bench/results)")
    args = ap.parse_args(argv)

    def log(msg=""):
        print(msg, flush=True)

    if os.geteuid() != 0:
        log("bench: needs root (it builds network namespaces): run it with sudo")
        return 2
    for tool in ("ip", "nsenter"):
        if not common.have(tool):
            log(f"bench: `{tool}` is missing (apt-get install iproute2 util-linux)")
            return 2
    wanted = [f for f in (args.only.split(",") if args.only else RUN_ORDER)]
    bad = [f for f in wanted if f not in FIGURES]
    if bad:
        log(f"bench: no figure {', '.join(bad)}: pick from 1-{len(FIGURES)}")
        return 2
    order = [f for f in RUN_ORDER if f in wanted]
    os.makedirs(args.out, exist_ok=True)

    # SIGTERM / SIGHUP end the run like ^C: everything made so far is cleaned up.
    def stop(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGHUP, stop)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even when started in the background with ^C ignored

    one_run_at_a_time(log)
    t_start = time.time()
    load0 = os.getloadavg()
    log(f"nsnet bench ({'quick' if args.quick else 'full'}), figures {', '.join(order)}; "
        f"load average {load0[0]:.2f} on {os.cpu_count()} CPUs")
    if load0[0] > 0.5:
        log("  note: other work is running on this machine: figures will be noisier than on an idle one")
    sweep_leftovers(log)
    install_failed = {}
    if not args.no_install:
        from install import debian_peers, python_tools

        install_failed.update(debian_peers(log))
        install_failed.update(python_tools(log))
        for pkg, why in install_failed.items():
            log(f"  not installed: {pkg}: {why}")

    h = Harness(run_id=str(os.getpid()), log=log)
    ctx = Ctx(args, h, args.out, log)
    figs: dict[str, Figure] = {}
    harness_broke = False
    interrupted = False
    try:
        if DOCKER_FIGS & set(order):
            ctx.start_docker(not args.no_docker)
        for key in order:
            mod = __import__(FIGURES[key])
            log(f"- figure {key} ({FIGURES[key]})")
            t0 = time.perf_counter()
            mark = h.mark()
            try:
                figs[key] = mod.run(ctx)
            except KeyboardInterrupt:
                raise
            except Exception as e:
                from peer_nsnet import NsnetFailed

                from nsnet.client import ApiError

                f = Figure(key, FIGURES[key])
                if isinstance(e, (ApiError, NsnetFailed)):
                    f.skipped.append(f"nsnet failed during this figure: {e}")
                else:
                    harness_broke = True
                    f.skipped.append(f"harness error: {e.__class__.__name__}: {e}")
                    log(traceback.format_exc())
                figs[key] = f
            finally:
                h.close_upto(mark)
            log(f"  done in {time.perf_counter() - t0:.1f} s")
    except KeyboardInterrupt:
        interrupted = True
        log("interrupted: cleaning up and reporting what was measured")
    finally:
        h.close()

    load1 = os.getloadavg()
    text = table(figs) + (f"\nmode {'quick' if args.quick else 'full'}; load average (1 min) at start {load0[0]:.2f}, "
                          f"at end {load1[0]:.2f}, {os.cpu_count()} CPUs; {time.time() - t_start:.0f} s")
    log("")
    log(text)
    with open(os.path.join(args.out, "table.txt"), "w") as f:
        f.write(text + "\n")
    doc = {"mode": "quick" if args.quick else "full", "environment": environment(), "install_failed": install_failed,
           "loadavg_start": load0, "loadavg_end": load1,
           "duration_s": round(time.time() - t_start, 1), "interrupted": interrupted,
           "figures": {k: asdict(v) for k, v in sorted(figs.items())}}
    write_json(os.path.join(args.out, "results.json"), doc)
    try:
        import plots

        written = plots.make(figs, args.out)
        log(f"\nwrote {os.path.join(args.out, 'results.json')}, table.txt and {len(written)} plots "
            f"({time.time() - t_start:.0f} s in all)")
    except ImportError:
        log(f"\nwrote {os.path.join(args.out, 'results.json')} and table.txt (no plots: matplotlib is missing)")
    except Exception as e:
        log(f"\nplots failed: {e}")
    if interrupted:
        return 130
    return 1 if harness_broke else 0


if __name__ == "__main__":
    sys.exit(main())
