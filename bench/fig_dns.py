"""Figure 6: DNS, nsnet's embedded resolver vs aardvark-dns (Podman's), the same 200 names.

Throughput: dnsperf (4 clients, unbounded rate) for `dns_seconds`, run inside the client's namespace: for nsnet
inside a sandbox on a user-defined network, against 127.0.0.11; for aardvark-dns inside a throwaway namespace
against the address it serves, as ../shared/anchors/aardvark_bench.sh does.
Latency p50/p99: one client asking the 200 names in turn, one query in flight (unloaded), measured in process
with a UDP socket opened inside the same namespace.
"""
from __future__ import annotations

import os
import re
import socket
import subprocess
import time

from common import Figure, Harness, Skip, _preexec, have, made_in_netns, sh, share, summary, verdict
from peer_nsnet import NsnetEngine

AARDVARK = "/usr/lib/podman/aardvark-dns"
NAMES = 200


def _queries(d: str) -> str:
    path = os.path.join(d, "queries.txt")
    with open(path, "w") as f:
        f.writelines(f"c{i} A\n" for i in range(1, NAMES + 1))
    return path


def _dnsperf(ns, server: str, qfile: str, seconds: float) -> dict:
    cp = sh(["dnsperf", "-s", server, "-d", qfile, "-l", str(seconds), "-c", "4", "-Q", "200000", "-t", "2"], ns,
            timeout=seconds + 60)
    out = cp.stdout + cp.stderr

    def num(pat):
        m = re.search(pat, out)
        return float(m.group(1)) if m else None
    codes = dict((c, float(p)) for c, p in re.findall(r"(NOERROR|NXDOMAIN|SERVFAIL|REFUSED|FORMERR)\s+\d+\s+\(([\d.]+)%\)", out))
    return {"qps": num(r"Queries per second:\s+([\d.]+)"), "avg_latency_ms": (num(r"Average Latency \(s\):\s+([\d.]+)") or 0) * 1000,
            "lost_pct": num(r"Queries lost:\s+\d+ \(([\d.]+)%\)"), "completed_pct": num(r"Queries completed:\s+\d+ \(([\d.]+)%\)"),
            "rcodes_pct": codes}


def _wire(name: str) -> bytes:
    import dns.message

    return dns.message.make_query(name + ".", "A").to_wire()


def _udp(ns, server: str):
    def make():
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.connect((server, 53))
        return s
    return made_in_netns(ns, make)


def _ask(sock, q: bytes, timeout: float) -> bytes | None:
    sock.settimeout(timeout)
    try:
        sock.send(q)
        while True:
            r = sock.recv(4096)
            if r[:2] == q[:2]:
                return r
    except (socket.timeout, OSError):
        return None


def _answers(resp: bytes | None) -> str:
    """'ok' (NOERROR with an answer), the rcode's name, or 'no answer'."""
    if resp is None:
        return "no answer"
    import dns.message
    import dns.rcode

    try:
        m = dns.message.from_wire(resp)
    except Exception as e:
        return f"malformed reply ({e.__class__.__name__})"
    if m.rcode() == 0 and m.answer:
        return "ok"
    return dns.rcode.to_text(m.rcode()) + ("" if m.answer else " (no answer records)")


def _latency(ns, server: str, count: int) -> dict:
    sock = _udp(ns, server)
    try:
        qs = [_wire(f"c{i}") for i in range(1, NAMES + 1)]
        for q in qs[:20]:  # warm
            _ask(sock, q, 1.0)
        lat, lost = [], 0
        for k in range(count):
            q = qs[k % NAMES]
            t0 = time.perf_counter_ns()
            r = _ask(sock, q, 1.0)
            if r is None:
                lost += 1
            else:
                lat.append((time.perf_counter_ns() - t0) / 1e6)
        out = summary(lat)
        out["lost"] = lost
        return out
    finally:
        sock.close()


def _latency_under_load(ns, server: str, qfile: str, qps: float, count: int) -> dict:
    """Single-query latency while dnsperf keeps `qps` queries/s going: the issue's target is p99 < 2 ms at
    half of 2x aardvark-dns's rate, i.e. at aardvark-dns's own rate."""
    bg = subprocess.Popen(["dnsperf", "-s", server, "-d", qfile, "-l", "60", "-c", "4", "-Q", str(int(qps)), "-t", "2"],
                          preexec_fn=_preexec(ns), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(0.5)  # let the load settle
        return _latency(ns, server, count)
    finally:
        bg.terminate()
        bg.wait()


def _probe(ns, server: str, name: str, tries: int = 3) -> str:
    sock = _udp(ns, server)
    try:
        result = "no answer"
        for _ in range(tries):
            result = _answers(_ask(sock, _wire(name), 1.0))
            if result == "ok":
                break
        return result
    finally:
        sock.close()


# ---- peers ----------------------------------------------------------------------------------------------

def _aardvark(ctx, qfile: str) -> dict:
    h: Harness = ctx.h
    if not have(AARDVARK):
        raise Skip(f"{AARDVARK} is missing (apt-get install aardvark-dns)")
    ns = h.netns("f6aa")
    sh(["ip", "addr", "add", "10.77.0.1/24", "dev", "lo"], ns)
    d = h.tempdir("aardvark")
    os.makedirs(os.path.join(d, "aardvark-dns"))
    with open(os.path.join(d, "aardvark-dns", "benchnet"), "w") as f:
        f.write("10.77.0.1\n")
        for i in range(1, NAMES + 1):
            f.write(f"{i:064x} 10.77.{i // 250}.{i % 250 + 2}  c{i},alias{i}\n")
    # It daemonises: no pipes to it, or waiting for their end would wait for the daemon.
    sh([AARDVARK, "--config", os.path.join(d, "aardvark-dns"), "-p", "53", "run"], ns, timeout=30, capture=False)
    pid = None
    for _ in range(50):  # it daemonises: find it by the folder in its command line
        pid = _pid_with(d)
        if pid and _probe(ns, "10.77.0.1", "c1", tries=1) == "ok":
            break
        time.sleep(0.1)
    if pid:
        h.adopt(pid)
    state = _probe(ns, "10.77.0.1", "c1")
    if state != "ok":
        raise Skip(f"aardvark-dns did not answer c1 ({state})")
    res = _dnsperf(ns, "10.77.0.1", qfile, ctx.dns_seconds)
    res["latency"] = _latency(ns, "10.77.0.1", ctx.dns_lat_queries)
    res["version"] = sh([AARDVARK, "--version"], check=False).stdout.strip()
    return res


def _pid_with(text: str) -> int | None:
    for d in os.listdir("/proc"):
        if d.isdigit() and int(d) != os.getpid():
            try:
                with open(f"/proc/{d}/cmdline", "rb") as f:
                    if text.encode() in f.read():
                        return int(d)
            except OSError:
                pass
    return None


def _nsnet(ctx, qfile: str, fig: Figure, load_qps: float | None = None) -> dict | None:
    h = ctx.h
    eng = NsnetEngine(h, "f6")
    eng.create_network("dn", "10.60.0.0/16")
    pid = eng.run("c1", "dn")
    time.sleep(0.2)
    state = _probe(pid, "127.0.0.11", "c1")
    if state != "ok":
        fig.skipped.append(f"nsnet DNS: not available - a sandbox on a user-defined network asked 127.0.0.11 for "
                           f"its own name c1 and got: {state}")
        return None
    for i in range(2, NAMES + 1):
        eng.run(f"c{i}", "dn")
    time.sleep(0.2)
    bad = [n for n in ("c2", f"c{NAMES}") if _probe(pid, "127.0.0.11", n) != "ok"]
    if bad:
        fig.notes.append(f"nsnet DNS: {', '.join(bad)} not answered right after the sandboxes started")
    res = _dnsperf(pid, "127.0.0.11", qfile, ctx.dns_seconds)
    res["latency"] = _latency(pid, "127.0.0.11", ctx.dns_lat_queries)
    if load_qps:
        res["latency_loaded"] = _latency_under_load(pid, "127.0.0.11", qfile, load_qps, ctx.dns_lat_queries)
        res["latency_loaded"]["qps"] = load_qps
    res["daemon_rss_kb"] = eng.rss_kb()
    return res


def run(ctx) -> Figure:
    h = ctx.h
    fig = Figure("6", f"DNS: nsnet's resolver vs aardvark-dns ({NAMES} names, dnsperf {ctx.dns_seconds} s, 4 clients)")
    if not have("dnsperf"):
        fig.skipped.append("dnsperf is missing (apt-get install dnsperf)")
        return fig
    qdir = h.tempdir("dnsq")
    qfile = _queries(qdir)
    res = {}
    with h.scope(fig, "aardvark-dns"):
        res["aardvark-dns"] = _aardvark(ctx, qfile)
    with h.scope():
        r = _nsnet(ctx, qfile, fig, load_qps=(res.get("aardvark-dns") or {}).get("qps"))
        if r:
            res["nsnet"] = r
    fig.data = res
    mine, peer = res.get("nsnet"), res.get("aardvark-dns")
    if mine:
        r, txt = share(mine["qps"], peer["qps"] if peer else None)
        fig.row(measure="queries/s, nsnet resolver", value=mine["qps"], unit="q/s", reps=f"{ctx.dns_seconds} s",
                peer="aardvark-dns" if peer else "", peer_value=peer["qps"] if peer else None, ratio=r,
                ratio_text=(f"{r:.2f}x" if r else ""), target=">= 2x aardvark-dns",
                verdict=verdict(r >= 2) if r else "INFO",
                note=f"lost {mine['lost_pct']}%, rcodes {mine['rcodes_pct']}")
        lat, plat = mine["latency"], (peer or {}).get("latency", {})
        for q in ("p50", "p99"):
            if lat.get(q) is None:
                continue
            row = dict(measure=f"query latency {q} (unloaded), nsnet", value=lat[q], unit="ms", reps=str(lat["n"]))
            if plat.get(q):
                row.update(peer="aardvark-dns", peer_value=plat[q], ratio=plat[q] / lat[q],
                           ratio_text=f"{plat[q] / lat[q]:.1f}x faster" if plat[q] >= lat[q] else f"{lat[q] / plat[q]:.1f}x slower")
            fig.row(**row)
        loaded = mine.get("latency_loaded")
        if loaded and loaded.get("p99") is not None:
            fig.row(measure=f"query latency p99 at {loaded['qps'] / 1000:.1f}k q/s (half of 2x aardvark-dns), nsnet",
                    value=loaded["p99"], unit="ms", reps=str(loaded["n"]), target="p99 < 2 ms",
                    verdict=verdict(loaded["p99"] < 2.0))
        fig.row(measure="mean latency under dnsperf load, nsnet", value=mine["avg_latency_ms"], unit="ms",
                reps=f"{ctx.dns_seconds} s", peer="aardvark-dns" if peer else "",
                peer_value=peer["avg_latency_ms"] if peer else None)
    elif peer:
        fig.row(measure="queries/s, aardvark-dns (nsnet: not available)", value=None, unit="q/s",
                reps=f"{ctx.dns_seconds} s", peer="aardvark-dns", peer_value=peer["qps"], target=">= 2x aardvark-dns",
                verdict="SKIP")
        fig.row(measure="query latency p50 / p99 (unloaded), aardvark-dns", value=None, unit="ms",
                reps=str(peer["latency"]["n"]), peer="aardvark-dns", peer_value=peer["latency"]["p50"],
                peer_p95=peer["latency"]["p99"], verdict="SKIP", note="peer column: p50 / p99")
    return fig
