"""Where an attach spends its time inside nsnet's daemon: py-spy samples the running daemon (from outside,
without pausing it) while the bench connects and disconnects a sandbox in a loop; the samples taken inside
the engine's use cases are folded into a top list of functions (inclusive and self share)."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from collections import Counter

from common import Harness, Skip, have

_FRAME = re.compile(r"^(?P<fn>.*?) \((?P<file>[^:()]*)(?::\d+)?\)$")


def _py_spy() -> str:
    import sys

    cand = os.path.join(os.path.dirname(sys.executable), "py-spy")
    found = have(cand) or have("py-spy")
    if not found:
        raise Skip("py-spy is not installed (pip install py-spy into the venv)")
    return found


def profile(h: Harness, daemon_pid: int, cycle, cycles: int, out_dir: str, tag: str = "attach") -> dict:
    """Run cycle() `cycles` times under py-spy; write the folded stacks and a top list; return the top list."""
    spy = _py_spy()
    raw = os.path.join(out_dir, f"profile_{tag}.folded")
    proc = subprocess.Popen([spy, "record", "-p", str(daemon_pid), "--format", "raw", "-o", raw, "--rate", "997",
                             "--nonblocking", "--idle", "--threads"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)
    h.defer(lambda: proc.poll() is None and proc.kill())
    time.sleep(1.0)  # py-spy attaches
    if proc.poll() is not None:
        raise Skip("py-spy could not sample the daemon: " + (proc.stderr.read() or "").strip()[-300:])
    t0 = time.perf_counter()
    for _ in range(cycles):
        cycle()
    wall = time.perf_counter() - t0
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise Skip("py-spy did not stop")
    if not os.path.exists(raw):
        raise Skip("py-spy wrote no samples: " + (proc.stderr.read() or "").strip()[-300:])
    top = fold(raw)
    top["cycles"], top["wall_s"] = cycles, wall
    with open(os.path.join(out_dir, f"profile_{tag}.txt"), "w") as f:
        f.write(render(top))
    return top


_GENERIC = ("threading.py", "concurrent/futures", "socketserver.py", "<frozen runpy>")


def fold(path: str, busy_marker: str = "Engine.") -> dict:
    """Samples taken while the engine was running a use case (a frame `Engine.*` on the stack, on whichever
    thread runs it), waits for the kernel included; split by use case (the outermost Engine.* frame);
    plus how many samples the API handler threads took outside the engine."""
    incl, self_, total, handler = Counter(), Counter(), 0, 0
    per: dict[str, dict] = {}
    with open(path) as f:
        for line in f:
            stack, _, count = line.rstrip("\n").rpartition(" ")
            try:
                n = int(count)
            except ValueError:
                continue
            raw = stack.split(";")
            busy = any(busy_marker in fr for fr in raw)
            if any("_serve (" in fr for fr in raw) and not busy:
                handler += n  # HTTP, JSON, or waiting for the engine's thread
            if not busy:
                continue
            start = min(i for i, fr in enumerate(raw) if busy_marker in fr)
            frames = [_name(fr) for fr in raw[start:]]
            frames = [fr for fr in frames if not any(g in fr for g in _GENERIC)] or frames[-1:]
            total += n
            for fr in set(frames):
                incl[fr] += n
            self_[frames[-1]] += n
            case = per.setdefault(frames[0].split(" (")[0], {"samples": 0, "incl": Counter(), "self": Counter()})
            case["samples"] += n
            for fr in set(frames):
                case["incl"][fr] += n
            case["self"][frames[-1]] += n

    def top(counter, n, k):
        return [(fn, c / n) for fn, c in counter.most_common(k)] if n else []
    return {"samples": total, "handler_only_samples": handler,
            "inclusive": top(incl, total, 30), "self": top(self_, total, 15),
            "use_cases": {name: {"samples": c["samples"], "inclusive": top(c["incl"], c["samples"], 30),
                                 "self": top(c["self"], c["samples"], 10)}
                          for name, c in sorted(per.items(), key=lambda kv: -kv[1]["samples"])}}


def _name(frame: str) -> str:
    """`function (where)`: nsnet's own frames as nsnet/<module path>, others by their last two path parts."""
    m = _FRAME.match(frame.strip())
    if not m:
        return frame.strip()
    file = m.group("file")
    if file.startswith("nsnet/") or "/nsnet/" in file:
        short = "nsnet/" + file.split("nsnet/", 1)[1]
    else:
        short = "/".join(file.split("/")[-2:]) if file else ""
    return f"{m.group('fn')} ({short})" if short else m.group("fn")


def summary_line(top: dict, k: int = 6) -> str:
    """Per use case: its share, nsnet's own functions by inclusive share, and the leaf where the time goes."""
    parts = []
    for name, case in top.get("use_cases", {}).items():
        share = case["samples"] / max(top["samples"], 1)
        if share < 0.02:
            continue
        own = [(fn, s) for fn, s in case["inclusive"] if "(nsnet/" in fn and not fn.startswith(name + " ")][:k]
        leaf = case["self"][0] if case["self"] else None
        text = f"{name} {share * 100:.0f}% of engine time [" + ", ".join(
            f"{fn.split(' (')[0]} {s * 100:.0f}%" for fn, s in own) + "]"
        if leaf:
            what = " = blocking netlink call, the kernel at work" if "AsyncCoreSocket.send" in leaf[0] else ""
            text += f", top leaf {leaf[0].split(' (')[0]} {leaf[1] * 100:.0f}%{what}"
        parts.append(text)
    return "; ".join(parts)


def render(top: dict) -> str:
    lines = [f"py-spy at ~1 kHz on nsnet's daemon over {top.get('cycles', '?')} connect+disconnect cycles "
             f"({top.get('wall_s', 0):.1f} s): {top['samples']} samples inside Engine use cases (waits for the kernel "
             f"included), {top.get('handler_only_samples', 0)} more in API handler threads outside them",
             "", "inclusive  function"]
    lines += [f"  {share * 100:5.1f}%   {fn}" for fn, share in top["inclusive"]]
    lines += ["", "self       function (where the time is spent, leaf frames)"]
    lines += [f"  {share * 100:5.1f}%   {fn}" for fn, share in top["self"]]
    for name, case in top.get("use_cases", {}).items():
        lines += ["", f"== {name}: {case['samples']} samples ({case['samples'] / max(top['samples'], 1) * 100:.0f}%); "
                      "nsnet's functions, inclusive share of this use case"]
        lines += [f"  {share * 100:5.1f}%   {fn}" for fn, share in case["inclusive"] if "(nsnet/" in fn]
        lines += ["   leaf frames:"]
        lines += [f"  {share * 100:5.1f}%   {fn}" for fn, share in case["self"][:6]]
    return "\n".join(lines) + "\n"
