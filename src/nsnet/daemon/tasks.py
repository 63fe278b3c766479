"""The swarm's tasks that are this node's (engine/services.py), each run as a sandbox on its service's
networks. One thread, woken by the swarm watch (services, tasks, nodes alive or not), by a sandbox's exit,
and once a second; each step makes the node match etcd:
- a task of ours that wants to run and has no running sandbox gets one (again, per its restart condition,
  no sooner than RESTART_DELAY after its last start); its state goes to etcd: starting, then running (in
  rotation) once its namespace holds a listening TCP socket, or READY_GRACE after its start if none ever does;
- a task told to shut down is stopped DRAIN after this node first saw it so (every node takes it out of
  rotation as soon as it sees that), and its key deleted; so is a task whose service is gone (a removal cut
  short between its commits);
- a task sandbox whose task is not ours any more (moved while this node was Down, or gone) is stopped;
- the tasks of Down nodes are moved to Ready ones (engine/services.move_orphans; etcd's compare picks one
  mover), and a rolling update whose driving daemon is Down (or was this one, before a restart) is driven
  from here on (Services.take_over: the same compare);
- the VIP tables of the local sandboxes and the routing mesh's table in the ingress sandbox follow the
  rotation (Services.sync_lb), on a thread of their own (`swarm-lb`): a step that starts or stops sandboxes
  takes longer than DRAIN, and a table must not wait for it;
- the `service logs` asks addressed to this node are answered on a thread of their own (`swarm-logs`:
  engine/servicelogs.Answerer), which reads logs while a step starts or stops sandboxes;
- this node's ingress sandbox is there while any service publishes an ingress port (engine/ingress.py), and
  the ports its own sandboxes publish are written to `ports/<node>` (a service never takes one of them).
"""
from __future__ import annotations

import logging
import threading
import time

from ..engine import ingress, publish, servicelogs
from ..engine.services import TASK_SANDBOX, local_ports, move_orphans, task_name, update_task
from ..engine.thread import woken_loop
from ..errors import NsnetError
from ..store import CompareFailed, Op

log = logging.getLogger("nsnet.tasks")

TICK = 1.0            # s: a step at least this often
DRAIN = 0.5           # s: from a task leaving the rotation (desired shutdown) to its sandbox being stopped
RESTART_DELAY = 1.0   # s: a task that keeps exiting is started again at most this often
STOP_TIMEOUT = 2.0    # s: SIGTERM, then SIGKILL
READY_GRACE = 2.0     # s: a task that never listens on TCP counts as running after this long


def should_restart(condition: str, code: int | None) -> bool:
    """Docker's restart conditions; a task killed (no exit code) counts as failed."""
    return condition == "any" or (condition == "on-failure" and code != 0)


def listening(pid: int, ignore: set[int]) -> bool:
    """Does the process's network namespace hold a listening TCP socket on a port not in `ignore` (the
    resolver's own, which the daemon opens in there)?"""
    for table in ("tcp", "tcp6"):
        try:
            with open(f"/proc/{pid}/net/{table}") as f:
                for line in f.readlines()[1:]:
                    local, state = line.split()[1:4:2]
                    if state == "0A" and int(local.rsplit(":", 1)[1], 16) not in ignore:   # 0A: TCP_LISTEN
                        return True
        except (OSError, IndexError):
            pass
    return False


def command(spec: dict) -> list[str]:
    """The task's command, with its environment (a sandbox's process inherits none of its own)."""
    return (["env", "--", *spec["env"]] if spec["env"] else []) + spec["cmd"]


class TaskRunner:
    def __init__(self, daemon):
        self.d, self.engine = daemon, daemon.engine
        self._wake = threading.Event()
        self._lb_wake = threading.Event()
        self._shutdown_seen: dict[str, float] = {}   # task id -> when this node first saw it told to stop
        self._last_start: dict[str, float] = {}
        self._exits: dict[str, int | None] = {}      # task id -> exit code of its sandbox this node reaped
        self._ports_written = None                   # what `ports/<node>` says, as this node last wrote it
        self.ingress = ingress.IngressSandbox(self.engine, daemon.run_sandbox, self._remove)
        self.logs = servicelogs.Answerer(self.engine)
        self.engine.services.listeners.append(self.poke)
        self._thread = threading.Thread(target=self._run, name="swarm-tasks", daemon=True)
        self._lb_thread = threading.Thread(target=self._run_lb, name="swarm-lb", daemon=True)

    def start(self) -> None:
        self._thread.start()
        self._lb_thread.start()
        self.logs.start()

    def poke(self) -> None:
        self._wake.set()
        self._lb_wake.set()
        self.logs.poke()

    def _run(self) -> None:
        woken_loop(self._wake, TICK, self.step, log, "tasks: a step")

    def _run_lb(self) -> None:
        woken_loop(self._lb_wake, TICK, self.engine.services.sync_lb, log, "tasks: writing the VIP tables")

    def step(self) -> None:
        link = self.engine.swarm
        if link is None:   # left the swarm (a plain leave removed its ingress sandbox; --force took it off `ingress`)
            self._ports_written = None   # (leaving deleted its `ports/<node>`)
            with self.engine.lock:
                sb = ingress.sandbox(self.engine.state)
            if sb is not None:
                self._remove(sb)
            return
        if not link.loaded.is_set():
            return
        kv, me = link.kv, self.engine.state.node
        with self.engine.lock:
            services = dict(self.engine.services.services)
            tasks = dict(self.engine.services.tasks)
            local = {m.group(1): sb for sb in self.engine.state.sbs.values() if (m := TASK_SANDBOX.match(sb.name))}
            alive = set(self.engine.state.alive)
        if any(t["node"] not in alive for t in tasks.values()):
            move_orphans(kv, me)
        for sid, svc in services.items():
            u = svc.get("update")
            if (u and u["state"] == "updating" and self.engine.services.driving.get(sid) != u["version"]
                    and (u["driver"] == me or u["driver"] not in alive)):
                self._resume_update(kv, sid)
        for tid, t in tasks.items():
            if t["node"] != me:
                continue
            svc, sb = services.get(t["service_id"]), local.pop(tid, None)
            if t["desired"] != "running" or svc is None:
                self._shut(kv, t, sb)
            else:
                self._keep_running(kv, svc, t, sb)
        servicelogs.forget_kept(self.engine.root, {tid for tid, t in tasks.items() if t["node"] == me})
        for sb in local.values():   # its task is not this node's any more, or gone
            log.info("tasks: sandbox %s runs no task of this node: stopping it", sb.name)
            self._remove(sb)
        self.ingress.sync(services)
        self._write_ports(kv, me)

    def _write_ports(self, kv, me: str) -> None:
        """`ports/<node>` says what this node's own sandboxes publish; no key while they publish nothing (a
        node that never publishes writes nothing). Read back once, after a start."""
        with self.engine.lock:
            mine = local_ports(self.engine.state)
        if self._ports_written is None:
            entry = kv.get(f"ports/{me}")
            self._ports_written = entry.value["ports"] if entry is not None else []
        if mine != self._ports_written:
            kv.commit([Op(f"ports/{me}", {"ports": mine} if mine else None)])
            self._ports_written = mine

    def _resume_update(self, kv, sid: str) -> None:
        """A rolling update whose driver died (or was this daemon before its restart) goes on from here, on a
        thread of its own: a batch waits for its tasks, which this runner starts."""
        svc = self.engine.services.take_over(kv, sid)
        if svc is None:
            return

        def drive():
            try:
                self.engine.services.drive(kv, svc)
            except NsnetError as e:
                log.warning("tasks: %s", e)
            except Exception:
                log.exception("tasks: driving the update of service %s failed", svc["name"])
        threading.Thread(target=drive, name=f"update-{sid[:12]}", daemon=True).start()

    # ---- one task ------------------------------------------------------------------------------------

    def _keep_running(self, kv, svc: dict, t: dict, sb) -> None:
        tid, ours = t["id"], (lambda doc: doc["node"] == self.engine.state.node)
        if sb is not None and sb.state == "running":
            # In rotation ("running") once its server listens, so that no one is sent to a port not yet open.
            started = self._last_start.get(tid)
            if t["state"] != "running" and not listening(sb.pid, set(sb.dns_ports or ())) and started and time.monotonic() - started < READY_GRACE:
                threading.Timer(0.02, self.poke).start()
                return
            addrs = self._addresses(sb, svc)
            if t["state"] != "running" or t["addresses"] != addrs or t.get("sandbox") != sb.id:
                update_task(kv, tid, {"state": "running", "addresses": addrs, "sandbox": sb.id, "error": ""}, ours)
            return
        if sb is not None:   # exited: reaped here (its log kept for `service logs`), and told to etcd
            code = sb.exit_code
            servicelogs.keep(self.engine.root, tid, self.engine.log_path(sb.id))
            self._remove(sb)
            self._exits[tid] = code
            update_task(kv, tid, {"state": "complete" if code == 0 else "failed", "exit_code": code, "addresses": {},
                                  "error": "" if code == 0 else f"task exited with code {code}"}, ours)
            log.info("tasks: %s exited (code %s)", sb.name, code)
        if tid in self._exits or t["state"] in ("complete", "failed"):
            code = self._exits.get(tid, t.get("exit_code"))
            if not should_restart(svc["spec"]["restart"], code):
                return   # finished for good (restart condition)
        wait = self._last_start.get(tid, 0) + RESTART_DELAY - time.monotonic()
        if wait > 0:
            threading.Timer(wait, self.poke).start()
            return
        self._start(kv, svc, t)

    def _start(self, kv, svc: dict, t: dict) -> None:
        tid, spec = t["id"], svc["spec"]
        self._last_start[tid] = time.monotonic()
        self._exits.pop(tid, None)
        nets = [{"Network": n, "ServiceTask": True} for n in self._networks(spec)]
        body = {"Name": task_name(svc["name"], t), "Hostname": f"{svc['name']}-{t['slot']}", "Cmd": command(spec),
                **({"Networks": nets} if nets else {}),
                "Ports": [f"{p['PublishedPort']}:{p['TargetPort']}/{p['Protocol']}" for p in publish.host(spec.get("ports", []))]}
        ours = lambda doc: doc["node"] == self.engine.state.node and doc["desired"] == "running"
        try:
            sb = self.d.run_sandbox(body).sandbox
        except NsnetError as e:
            log.warning("tasks: %s could not start: %s", body["Name"], e)
            update_task(kv, tid, {"state": "failed", "error": str(e), "addresses": {}}, ours)
            return
        restarts = t.get("restarts", 0) + (0 if t["state"] == "assigned" else 1)
        update_task(kv, tid, {"state": "starting", "addresses": self._addresses(sb, svc), "sandbox": sb.id,
                              "error": "", "exit_code": None, "restarts": restarts}, ours)
        log.info("tasks: %s started", sb.name)
        self.poke()   # running (in rotation) once it listens: the next step looks

    def _shut(self, kv, t: dict, sb) -> None:
        """Stopped once every node had DRAIN to take it out of rotation; then its key goes."""
        tid = t["id"]
        first = self._shutdown_seen.setdefault(tid, time.monotonic())
        if sb is not None and sb.state == "running":
            left = first + DRAIN - time.monotonic()
            if left > 0:
                threading.Timer(left, self.poke).start()
                return
        if sb is not None:
            self._remove(sb)
        entry = kv.get(f"tasks/{tid}")
        if entry is not None and entry.value["node"] == self.engine.state.node and (
                entry.value["desired"] != "running" or kv.get(f"services/{t['service_id']}") is None):   # rm cut short
            try:
                kv.commit([Op(entry.key, None, expect=entry.mod_revision)])
            except CompareFailed:
                return   # changed meanwhile: the next step looks again
        for table in (self._shutdown_seen, self._last_start, self._exits):
            table.pop(tid, None)

    def _remove(self, sb) -> None:
        if sb.state == "running":
            self.engine.stop_sandbox(sb.id, STOP_TIMEOUT)
        self.engine.remove_sandbox(sb.id, force=True)

    def _networks(self, spec: dict) -> list[str]:
        """The service's networks, and `ingress` when it publishes a port there (the routing mesh reaches its
        tasks on it)."""
        with self.engine.lock:
            mesh = ingress.network(self.engine.state)
        on_mesh = mesh is not None and publish.ingress(spec.get("ports", [])) and mesh.id not in spec["networks"]
        return spec["networks"] + ([mesh.id] if on_mesh else [])

    def _addresses(self, sb, svc: dict) -> dict[str, str]:
        nets = self._networks(svc["spec"])
        with self.engine.lock:
            return {ep.network_id: ep.ipv4.split("/")[0] for ep in self.engine.state.endpoints_of_sandbox(sb)
                    if ep.network_id in nets and ep.ipv4}
