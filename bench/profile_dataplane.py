"""Where the CPU goes while iperf3 runs through a path: perf samples the whole machine (the bridging is
done in softirq context, not in a process of the path), the idle loop is left out, and the kernel's
functions are grouped so that what netfilter's hooks cost under br_netfilter shows next to the rest."""
from __future__ import annotations

import os
import re
import subprocess
import threading

from common import Skip, have

BR_NETFILTER = "br_netfilter (br_nf_*)"
NETFILTER = "netfilter hooks, rules, conntrack, NAT"
# Group of a kernel function, by name. First match wins.
GROUPS = [
    (BR_NETFILTER, re.compile(r"^(br_nf_|nf_bridge_|brnf_)")),
    (NETFILTER, re.compile(r"^(nf_|__nf_|nft_|ipv4_conntrack|ipv4_confirm|ipt_)")),
    ("bridge (br_*)", re.compile(r"^(br_|__br_)")),
    ("veth", re.compile(r"^veth_")),
]
_IDLE = re.compile(r"(idle|safe_halt|cpu_startup_entry|do_idle|mwait)")
_LINE = re.compile(r"^\s*([\d.]+)%\s+\[(.)\]\s+(\S+)")


def _perf() -> str:
    found = have("perf")
    if not found:
        raise Skip("perf is not installed (apt-get install linux-perf)")
    return found


def sample(run_traffic, seconds: float, data_path: str) -> dict:
    """perf record -a for `seconds` while run_traffic() (which must last longer) sends; the busy
    samples by group and the top functions, in % of busy samples."""
    perf = _perf()
    traffic = threading.Thread(target=run_traffic)
    traffic.start()
    try:
        threading.Event().wait(1.0)   # past the connection's start
        cp = subprocess.run([perf, "record", "-q", "-a", "-o", data_path, "--", "sleep", str(seconds)],
                            capture_output=True, text=True, timeout=seconds + 60)
    finally:
        traffic.join()
    if cp.returncode != 0 or not os.path.exists(data_path):
        raise Skip("perf record failed: " + (cp.stderr.strip().splitlines() or ["?"])[-1][:200])
    rep = subprocess.run([perf, "report", "-i", data_path, "--no-children", "--sort", "sym", "--stdio"],
                         capture_output=True, text=True, timeout=120)
    event = subprocess.run([perf, "evlist", "-i", data_path], capture_output=True, text=True).stdout.strip()
    os.unlink(data_path)
    funcs = {}
    for line in rep.stdout.splitlines():
        m = _LINE.match(line)
        if m and not _IDLE.search(m.group(3)):
            funcs[m.group(3)] = funcs.get(m.group(3), 0.0) + float(m.group(1))
    busy = sum(funcs.values())
    if not busy:
        raise Skip("perf recorded no busy samples")
    groups = {name: 0.0 for name, _ in GROUPS}
    for fn, pct in funcs.items():
        for name, pattern in GROUPS:
            if pattern.match(fn):
                groups[name] += pct * 100 / busy
                break
    top = sorted(funcs.items(), key=lambda kv: -kv[1])[:30]
    return {"event": event, "groups": groups, "top": [(fn, pct * 100 / busy) for fn, pct in top]}


def render(profiles: dict[str, dict], seconds: float) -> str:
    out = [f"perf record -a, {seconds:g} s per path while iperf3 runs through it; shares of busy samples "
           "(the idle loop left out)."]
    event = next(iter(profiles.values()))["event"]
    if "cpu-clock" in event:
        out.append("Event cpu-clock: this VM has no hardware counters, and a timer cannot sample code that runs "
                   "with interrupts off, so such code is charged where they are turned back on "
                   "(_raw_spin_unlock_irqrestore). Groups are comparable between paths, not exact.")
    for path, prof in profiles.items():
        out += ["", f"== {path}"]
        out += [f"  {pct:5.1f}%  {name}" for name, pct in prof["groups"].items()]
        out.append("  top functions:")
        out += [f"  {pct:5.1f}%  {fn}" for fn, pct in prof["top"]]
    return "\n".join(out) + "\n"
