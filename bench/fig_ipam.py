"""Figure 5: IPAM, addresses allocated and released per second by nsnet.ipam.addresses.AddressPool, in a /16 and
in a /8, in process (no daemon, no kernel).

- fill: allocate N lowest-free addresses into one `used` set (the pool's bitmap reused), then release them all;
- churn: with the pool holding N addresses, release a random one and allocate again (the lowest free comes back);
- fresh pool: a new AddressPool per allocation handed the network's `used` set, so its bitmap is rebuilt
  from that set every time (what keeping one pool per subnet, as the engine does, saves).
Each rate is the median of `reps` runs.
"""
from __future__ import annotations

import ipaddress
import random
import statistics
import time

from common import Figure

from nsnet.ipam.addresses import AddressPool


def _fill(subnet: str, n: int) -> tuple[float, float]:
    pool = AddressPool(subnet)
    used: set = set()
    t0 = time.perf_counter()
    for _ in range(n):
        used.add(pool.allocate(used))
    t1 = time.perf_counter()
    order = list(used)
    random.Random(1).shuffle(order)
    t2 = time.perf_counter()
    for ip in order:
        used.discard(ip)
        pool.release(ip)
    t3 = time.perf_counter()
    return n / (t1 - t0), n / (t3 - t2)


def _churn(subnet: str, n: int, ops: int) -> float:
    pool = AddressPool(subnet)
    used: set = set()
    for _ in range(n):
        used.add(pool.allocate(used))
    rnd = random.Random(2)
    held = list(used)
    t0 = time.perf_counter()
    for _ in range(ops):
        k = rnd.randrange(len(held))
        ip = held[k]
        used.discard(ip)
        pool.release(ip)
        new = pool.allocate(used)
        used.add(new)
        held[k] = new
    return ops / (time.perf_counter() - t0)  # release+allocate pairs per second


def _fresh_pool(subnet: str, n: int, ops: int) -> float:
    """allocations/s when every allocation builds a new pool over a `used` set of n addresses."""
    net = ipaddress.ip_network(subnet)
    used = {net.network_address + 2 + i for i in range(n)}
    t0 = time.perf_counter()
    for _ in range(ops):
        pool = AddressPool(net)
        ip = pool.allocate(used)
        used.add(ip)
        used.discard(ip)
    return ops / (time.perf_counter() - t0)


def run(ctx) -> Figure:
    reps = ctx.ipam_reps
    fig = Figure("5", "IPAM: addresses allocated / released per second (AddressPool, in process)")
    sizes = {"/16": ("10.0.0.0/16", 65533), "/8": ("10.0.0.0/8", ctx.ipam_n8)}
    data: dict = {}
    for label, (subnet, n) in sizes.items():
        runs = [_fill(subnet, n) for _ in range(reps)]
        alloc = statistics.median(r[0] for r in runs)
        rel = statistics.median(r[1] for r in runs)
        churn = statistics.median(_churn(subnet, min(n, 50000), ctx.ipam_churn_ops) for _ in range(reps))
        data[label] = {"subnet": subnet, "n": n, "alloc_per_s": alloc, "release_per_s": rel, "churn_pairs_per_s": churn}
        fill_what = "the whole /16" if label == "/16" else f"{n:,} addresses"
        fig.row(measure=f"allocate, {label} (fill {fill_what})", value=alloc, unit="/s", reps=str(reps))
        fig.row(measure=f"release, {label} (random order)", value=rel, unit="/s", reps=str(reps))
        fig.row(measure=f"churn release+allocate, {label} at {min(n, 50000):,} used", value=churn, unit="pairs/s",
                reps=str(reps))
    eng = {}
    for used_n in ctx.ipam_engine_levels:
        eng[used_n] = statistics.median(_fresh_pool("10.0.0.0/16", used_n, ctx.ipam_engine_ops) for _ in range(reps))
    data["fresh_pool"] = eng
    lo, hi = min(eng), max(eng)
    for used_n, rate in eng.items():
        fig.row(measure=f"fresh pool per allocation, {used_n:,} used", value=rate, unit="/s",
                reps=str(reps), note=f"{1000 / rate:.3f} ms per allocation")
    fig.notes.append(f"a pool rebuilt for every allocation costs O(addresses in use): {1000 / eng[lo]:.3f} ms at "
                     f"{lo:,}, {1000 / eng[hi]:.3f} ms at {hi:,} - the reason to keep one AddressPool per subnet")
    fig.data = data
    fig.notes.append("no peer here: CNI host-local and netavark take addresses from files or the caller, not an "
                     "in-process allocator")
    return fig
