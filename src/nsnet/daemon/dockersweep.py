"""Reclaims the endpoints and addresses Docker has forgotten (the decision: engine/dockerreclaim.py).

A background thread of the daemon: once Docker's API answers after the daemon's start (the crash that leaks
is repaired at the next start), then every PERIOD while it answers, it takes two looks GAP apart at nsnet's
records and at Docker's networks, and releases what both looks show Docker no longer uses. Each release is
one line of the daemon's log. Docker unreachable or answering an error at a look: nothing is reclaimed.
"""
from __future__ import annotations

import http.client
import logging
import time

from ..engine.dockerreclaim import GAP, Held, forgotten, view_of
from .dockerkick import answers, call

log = logging.getLogger("nsnet.daemon")

PERIOD = 600.0   # s between rounds: a leak needs both dockerd and nsnet down, so it is rare
ENV = "NSNET_DOCKER_RECLAIM"   # GAP[,PERIOD] in seconds, read once at the daemon's start (the tests shorten them)


def timings(text: str | None) -> tuple[float, float]:
    """GAP and PERIOD from the environment's `GAP[,PERIOD]`; the defaults for anything else."""
    try:
        parts = [float(p) for p in (text or "").split(",")]
    except ValueError:
        return GAP, PERIOD
    if not text or not 1 <= len(parts) <= 2 or any(p <= 0 for p in parts):
        return GAP, PERIOD
    return parts[0], parts[1] if len(parts) == 2 else PERIOD


def docker_view(sock: str) -> dict | None:
    """Docker's networks that use nsnet (its driver or its IPAM driver), inspected; None when Docker
    did not answer them all (a network removed between the list and its inspect is simply not there)."""
    status, listing = call(sock, "GET", "/networks")
    if status != 200 or not isinstance(listing, list):
        return None
    docs = []
    for net in listing:
        if net.get("Driver") != "nsnet" and (net.get("IPAM") or {}).get("Driver") != "nsnet":
            continue
        status, doc = call(sock, "GET", f"/networks/{net.get('Id')}")
        if status == 404:
            continue
        if status != 200 or not isinstance(doc, dict):
            return None
        docs.append(doc)
    return view_of(docs)


def look(engine, sock: str) -> tuple[Held, dict | None]:
    """nsnet's records, then Docker's view: a record made after this look's records is in neither."""
    addresses, subnets = engine.docker_pools.held()
    held = Held(endpoints=engine.docker_nets.held(), addresses=addresses, subnets=subnets)
    return held, docker_view(sock)


def sweep(engine, sock: str, gap: float = GAP, sleep=time.sleep) -> tuple[list, list]:
    """One round: two looks `gap` s apart, then what Docker forgot released. What was released."""
    first, view1 = look(engine, sock)
    if view1 is None:
        return [], []
    sleep(gap)
    second, view2 = look(engine, sock)
    if view2 is None:
        return [], []
    endpoints, addresses = forgotten((first, second), (view1, view2))
    done_eps = [eid for eid in endpoints if engine.docker_nets.reclaim(eid)]
    done_addrs = [key for key in addresses if engine.docker_pools.reclaim(*key, first.addresses[key])]
    if done_eps or done_addrs:
        log.info("docker: reclaimed %d endpoint(s) and %d address(es) Docker had forgotten (absent from its "
                 "networks at two looks %.0f s apart)", len(done_eps), len(done_addrs), gap)
    return done_eps, done_addrs


def run(engine, sock: str | None, gap: float = GAP, period: float = PERIOD) -> None:
    """The thread's loop: a round whenever Docker answers, then the next one `period` s later. Never raises."""
    if not sock:
        return   # DOCKER_HOST names no unix socket: no view of Docker to judge by
    while True:
        if not answers(sock, period):
            continue
        try:
            sweep(engine, sock, gap)
        except (OSError, http.client.HTTPException, ValueError) as e:
            log.warning("docker: could not compare nsnet's records with Docker's view: %s", e)
        except Exception:
            log.exception("docker: the reclaim of what Docker forgot failed")
        time.sleep(period)
