"""`service logs` (issue 17): the logs of a service's tasks, read on the nodes that run them, through etcd.

Nodes share only etcd (no node-to-node channel), so a request and its answers are etcd keys, all on one
lease the requesting daemon grants (LEASE_TTL):
- `logs/ask/<node>/<reqid>`: {"tasks": [task ids], "tail": lines or null, "lease": the lease's id}, one per
  other node that is alive and runs a task of the service;
- `logs/answer/<reqid>/<node>`: {"logs": {task id: text}, "missing": [task ids without a sandbox there]},
  that node's answer, on the same lease.
The requester reads its own node's tasks itself, polls for the answers (POLL, up to ANSWER_WAIT), then
revokes the lease: asks and answers vanish with it, and those of a requester that died vanish after
LEASE_TTL. An ask whose lease is gone is never answered (the answer's put fails; the ask is gone too).

A node sees the asks addressed to it in its swarm watch (engine/swarm.py: View.asks) and answers them on a
thread of its task runner's (daemon/tasks.py: `Answerer`), never on the kernel thread.

etcd takes 1.5 MiB per request: an answer holds at most ANSWER_CAP bytes of JSON text, shared fairly between
its tasks (what one needs less of goes to the others), each keeping the END of its log and starting with
CUT when earlier lines were left out.
"""
from __future__ import annotations

import json
import logging
import os
import secrets
import threading
import time

from ..errors import NsnetError
from .services import TASK_SANDBOX
from .thread import woken_loop

log = logging.getLogger("nsnet.servicelogs")

LEASE_TTL = 30            # s: what a request's keys outlive their requester by, at most
ANSWER_WAIT = 5.0         # s: how long the requester waits for the other nodes' answers
POLL = 0.02               # s: between two looks for them
ANSWER_CAP = 1 << 20      # bytes of JSON log text in one answer (etcd's request limit is 1.5 MiB)
CUT = "[nsnet: earlier lines of this task's log are cut: a node's answer holds at most 1 MiB]\n"
TICK = 1.0                # s: the answerer looks at least this often, even unwoken


# ---- pure parts: tail, fair shares, the cut --------------------------------------------------------------

def tail_lines(text: str, n: int | None) -> str:
    """The last `n` lines of `text` (None: all); a last line without its newline counts as one. Lines end
    at "\n" only, as Docker's."""
    if n is None:
        return text
    if n <= 0:
        return ""
    start = len(text) - 1 if text.endswith("\n") else len(text)
    for _ in range(n):
        start = text.rfind("\n", 0, start)
        if start < 0:
            return text
    return text[start + 1:]


def shares(sizes: dict[str, int], cap: int) -> dict[str, int]:
    """Each key's part of `cap`: an equal part each, and what a small one leaves goes to the bigger ones
    (water-filling). Never more than a key's own size."""
    out, left = {}, cap
    order = sorted(sizes, key=lambda k: (sizes[k], k))
    for i, k in enumerate(order):
        out[k] = max(min(sizes[k], left // (len(order) - i)), 0)
        left -= out[k]
    return out


def json_len(text: str) -> int:
    """Bytes `text` takes in the answer's JSON (escapes make a byte of log up to 6 or 12)."""
    return len(json.dumps(text)) - 2


def keep_end(text: str, budget: int, cut: bool = False) -> str:
    """The end of `text` that fits in `budget` bytes of JSON, from a line's start (unless one line alone is
    longer), behind CUT when anything was left out (or `cut`: the caller left some out already)."""
    if not cut and json_len(text) <= budget:
        return text
    room, end = budget - json_len(CUT), text
    while end and json_len(end) > room:
        keep = max(room, 0) * len(end) // json_len(end)   # < len(end): shrinks every turn
        end = end[len(end) - keep:] if keep else ""
    if len(end) < len(text) and text[-len(end) - 1] != "\n":   # started inside a line: from the next one
        nl = end.find("\n")
        if nl >= 0 and nl + 1 < len(end):
            end = end[nl + 1:]
    return CUT + end


def read_tail(paths: list[str], limit: int) -> tuple[str, bool]:
    """The last `limit` bytes of the files one after the other (decoded; bad UTF-8 replaced), and whether
    anything came before."""
    chunks: list[bytes] = []
    before = False
    for path in reversed(paths):
        with open(path, "rb") as f:
            size = f.seek(0, os.SEEK_END)
            start = max(size - limit, 0)
            f.seek(start)
            chunks.append(f.read(size - start))
        limit -= size - start
        if start > 0 or (limit <= 0 and path != paths[0]):
            before = True
            break
    return b"".join(reversed(chunks)).decode(errors="replace"), before


def read_logs(paths: dict[str, str | list[str]], tail: int | None, cap: int = ANSWER_CAP) -> dict:
    """An answer for the tasks whose log files are `paths` (task id -> its path, or its paths in order):
    {"logs", "missing"}, at most `cap` bytes of JSON text in all. Reads no more than `cap` bytes of the files
    altogether."""
    files = {tid: [p] if isinstance(p, str) else p for tid, p in paths.items()}
    sizes, missing = {}, []
    for tid, names in files.items():
        try:
            sizes[tid] = sum(os.path.getsize(name) for name in names)
        except OSError:
            missing.append(tid)
    texts, cut = {}, {}
    for tid, limit in shares(sizes, cap).items():
        try:
            text, before = read_tail(files[tid], limit)
        except OSError:
            missing.append(tid)
            continue
        if before and "\n" in text:   # the first line read is a part of one
            text = text[text.index("\n") + 1:]
        texts[tid] = tail_lines(text, tail)
        got = texts[tid].count("\n") + (not texts[tid].endswith("\n") and texts[tid] != "")
        cut[tid] = before and (tail is None or got < tail)   # the lines asked for were not all read
    room = shares({tid: json_len(t) + (json_len(CUT) if cut[tid] else 0) for tid, t in texts.items()}, cap)
    return {"logs": {tid: keep_end(t, room[tid], cut[tid]) for tid, t in texts.items()}, "missing": sorted(missing)}


# ---- this node's task logs ---------------------------------------------------------------------------------
# A task's sandbox goes when it exits (a restart makes a new one), and its log with it: its runner first adds
# that log to the task's earlier runs (`keep`), shown before the current run's, as Docker shows the logs of a
# task's exited containers. Kept on the task's node while the task exists there, at most KEPT_CAP bytes.

KEPT_CAP = 1 << 20


def kept_path(root: str, task_id: str) -> str:
    return os.path.join(root, "tasklogs", f"{task_id}.log")


def keep(root: str, task_id: str, log_path: str) -> None:
    """The ended run's log (`log_path`) added to the task's earlier runs, the last KEPT_CAP bytes of them
    kept from a whole line."""
    path = kept_path(root, task_id)
    try:
        text, _ = read_tail([p for p in (path, log_path) if os.path.exists(p)], KEPT_CAP)
    except OSError:
        return
    if len(text.encode()) >= KEPT_CAP and "\n" in text:
        text = text[text.index("\n") + 1:]
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path + ".new", "w") as f:
        f.write(text)
    os.replace(path + ".new", path)


def forget_kept(root: str, task_ids: set[str]) -> None:
    """The kept logs of tasks not in `task_ids` (gone, or moved to another node) removed."""
    folder = os.path.join(root, "tasklogs")
    try:
        names = os.listdir(folder)
    except FileNotFoundError:
        return
    for name in names:
        if name.removesuffix(".log") not in task_ids:
            try:
                os.unlink(os.path.join(folder, name))
            except FileNotFoundError:
                pass


def local_logs(engine, task_ids: list[str], tail: int | None) -> dict:
    """An answer for these tasks from this node: each one's earlier runs kept here, then its sandbox's log (a
    task with neither here is missing)."""
    wanted = set(task_ids)
    with engine.lock:
        current = {m.group(1): engine.log_path(sb.id) for sb in engine.state.sbs.values()
                   if (m := TASK_SANDBOX.match(sb.name)) and m.group(1) in wanted}
    paths = {}
    for tid in wanted:
        names = [p for p in (kept_path(engine.root, tid),) if os.path.exists(p)] + ([current[tid]] if tid in current else [])
        if names:
            paths[tid] = names
    answer = read_logs(paths, tail)
    answer["missing"] = sorted(set(answer["missing"]) | (wanted - paths.keys()))
    return answer


# ---- the requester (an API thread of the daemon that takes the command) -----------------------------------

def collect(engine, ref: str, tail: int | None) -> dict:
    """The service's task logs from every node: {"Service", "Replicas", "Tasks": [{"ID", "Slot", "Node",
    "Log"}] in slot order, "Warnings": [one line per node whose tasks' logs are not there]}."""
    view = engine.services.task_view(ref)
    kv, svc, tasks, name = view.kv, view.svc, view.tasks, view.node_name
    alive = view.alive()
    me = engine.state.node
    by_node: dict[str, list[str]] = {}
    for t in tasks:
        by_node.setdefault(t["node"], []).append(t["id"])
    warnings = [f"node {name(n)} is down: logs of its tasks are not available" for n in by_node
                if n != me and n not in alive]
    logs = {}
    remote = [n for n in by_node if n != me and n in alive]
    lease = None
    try:
        if remote:
            rid, lease = secrets.token_hex(8), kv.grant(LEASE_TTL)
            for n in remote:
                kv.put_leased(f"logs/ask/{n}/{rid}", {"tasks": by_node[n], "tail": tail, "lease": lease}, lease)
        if me in by_node:   # while the others read theirs
            logs.update(local_logs(engine, by_node[me], tail)["logs"])
        pending, deadline = set(remote), time.monotonic() + ANSWER_WAIT
        while pending:
            for n in sorted(pending):
                entry = kv.get(f"logs/answer/{rid}/{n}")
                if entry is not None:
                    logs.update(entry.value["logs"])
                    pending.discard(n)
            if not pending or time.monotonic() > deadline:
                break
            time.sleep(POLL)
        warnings += [f"node {name(n)} did not answer within {ANSWER_WAIT:g} s: logs of its tasks are not available"
                     for n in sorted(pending, key=name)]
    finally:
        if lease is not None:
            try:
                kv.revoke(lease)
            except NsnetError as e:   # its keys go by themselves after LEASE_TTL
                log.warning("service logs: the request's lease could not be revoked: %s", e)
    return {"Service": svc["name"], "Replicas": svc["spec"]["replicas"], "Warnings": warnings,
            "Tasks": [{"ID": t["id"], "Slot": t["slot"], "Node": name(t["node"]), "Log": logs[t["id"]]}
                      for t in tasks if t["id"] in logs]}


# ---- the answering side (a node's task runner owns it) ---------------------------------------------------

class Answerer:
    """Answers the asks addressed to this node, each once, on a thread of its own (reading logs must not
    wait for a task start, nor hold the kernel thread). Woken with the task runner at every swarm batch."""

    def __init__(self, engine):
        self.engine = engine
        self._wake = threading.Event()
        self._answered: set[str] = set()   # request ids answered, forgotten when their ask vanishes
        self._thread = threading.Thread(target=self._run, name="swarm-logs", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def poke(self) -> None:
        self._wake.set()

    def _run(self) -> None:
        woken_loop(self._wake, TICK, self.step, log, "service logs: answering")

    def step(self) -> None:
        link = self.engine.swarm
        if link is None or not link.loaded.is_set():
            return
        me, asks = link.node, {}
        for key, ask in link.view.asks.items():
            node, _, rid = key.partition("/")
            if node == me:
                asks[rid] = ask
        self._answered &= asks.keys()
        for rid, ask in asks.items():
            if rid in self._answered:
                continue
            answer = local_logs(self.engine, ask["tasks"], ask.get("tail"))
            try:
                link.kv.put_leased(f"logs/answer/{rid}/{me}", answer, ask["lease"])
            except NsnetError as e:
                if "lease not found" not in str(e):
                    raise
                log.debug("service logs: request %s ended before its answer", rid)   # its ask goes with it
            self._answered.add(rid)
