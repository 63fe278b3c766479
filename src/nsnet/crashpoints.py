"""Named points between the steps of the engine's use cases where a test can kill the daemon (kill -9).

`NSNET_CRASH_AT=NAME[,COUNT]`, read once when the daemon starts, makes it SIGKILL itself the COUNT-th
time (default: the first) it reaches `crashpoint(NAME)`. Unarmed, a crash point is one dict lookup.
tests/integration/test_crash_points.py walks every name below, restarts, and checks that the restart
leaves the host as the records say; tests/unit/test_crashpoints.py checks that each name is placed in
the code and each placed name is declared here.
"""
from __future__ import annotations

import logging
import os
import signal

ENV = "NSNET_CRASH_AT"

NAMES = (
    "network-create.after-build", "network-create.after-firewall",
    "network-rm.after-unbuild", "network-rm.after-record",
    "run.after-record", "run.after-launch", "run.after-join", "run.after-files", "run.after-firewall",
    "run.after-go", "run.after-running",
    "join.after-record", "join.after-veth", "join.after-inside",
    "connect.after-join", "connect.after-record",
    "disconnect.after-leave", "disconnect.after-record",
    "stop.after-kill", "exited.after-teardown", "exited.after-record",
    "rm.after-record",
    # reconcile's own steps (engine.reconcile.RECONCILE_STEPS), each followed by one
    "reconcile.after-forget_dead_sandboxes", "reconcile.after-undo_unstarted_runs",
    "reconcile.after-drop_orphan_endpoints", "reconcile.after-rebuild_networks", "reconcile.after-mend_fabric",
    "reconcile.after-check_sandbox_side", "reconcile.after-rehold_ports", "reconcile.after-remove_stray_links",
    "reconcile.after-remove_stray_files", "reconcile.after-apply_firewall",
)

_armed: dict[str, int] = {}  # name -> passes left before the kill


def arm(spec: str | None) -> None:
    """Arm the point named in `spec` ("NAME" or "NAME,COUNT"); None or "" arms nothing."""
    _armed.clear()
    if not spec:
        return
    name, _, count = spec.partition(",")
    if name not in NAMES:
        raise ValueError(f"{ENV}: no crash point named {name!r}")
    _armed[name] = int(count or 1)


def crashpoint(name: str) -> None:
    if name not in _armed:
        return
    _armed[name] -= 1
    if _armed[name] <= 0:
        logging.getLogger("nsnet.crash").warning("crash point %s reached: killing the daemon", name)
        os.kill(os.getpid(), signal.SIGKILL)
