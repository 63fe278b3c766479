"""Services across the hosts of a swarm (issue 17): replicated tasks, a virtual IP per network, tasks.NAME.

etcd holds it all, beside the swarm's networks (keys under EtcdKV's prefix):
- `services/<id>`: the spec (command, env, replicas, networks, endpoint mode, restart condition) and its
  virtual IPs, one address per network, each claimed as `addresses/<network id>/<ip>` as an endpoint's is;
- `names/service/<name>`: the name's claim;
- `tasks/<id>`: one replica: service, slot, `node`, desired state (running | shutdown) and the current
  state the node that runs it writes (running, its addresses per network, failed with an error, complete);
- `published/<proto>/<port>`: a published port's claim (engine/publish.py: a port is the whole swarm's), and
  `ports/<node>`: the ports that node's own sandboxes publish with `-p`, written by its task runner, so that
  a service never takes one of them. The routing mesh itself is engine/ingress.py.

Placement is decided once, by the writer of the task, in an etcd transaction: `service create` and `scale`
create tasks with a compare (the key must not exist) in the same commit as the service's new revision
(compared too, so two scales never both count the same tasks); a Down node's task is moved by whichever
node commits first, with a compare on the task's revision. Fewest tasks first over the Ready nodes.

etcd takes at most TXN_OPS operations in a transaction, so many tasks take several commits (`chunks`):
- the first is the atomic part: the service's new revision (or its creation with its name, VIP and port
  claims; or its deletion) and as many task writes as fit;
- the writer then reads the service's tasks again and writes what is still missing (`converge`), each
  later commit on condition that the service is still at the revision its first one left (compare_only).
  A newer `scale`, `update` or `rm` bumps or deletes the service: the older writer's next commit fails and
  it stops; the newer one read the tasks after its own first commit, so it counts every task the older one
  wrote, and converges from there. Two writers never interleave their later commits.
- A writer that dies between commits leaves fewer tasks than `replicas` (or, scaling down, more wanting to
  run): nothing fills them by itself (every node doing so would race a create still in progress); the next
  `service scale`/`update --replicas` counts what exists and converges, and `service ls` shows the gap
  (REPLICAS 127/300). A removal cut short leaves tasks of a service that is gone: their nodes stop and
  delete them (daemon/tasks.py; move_orphans deletes a Down node's), as for the tasks `rm` itself told.

Every node learns services and tasks from the engine's one swarm watch (engine/swarm.py → `learn`); its
task runner (daemon/tasks.py) runs the tasks assigned to it. The data plane follows the same facts: the
resolver's records (`tasks.NAME`; `NAME` → the VIP, or the tasks with dnsrr) and, in every local sandbox
on a network with a VIP, the DNAT table that spreads the VIP over the running tasks (`sync_lb`). A task is
in rotation only while it runs, wants to run and its node is Ready: a task told to stop leaves the
rotation on every node before its own node stops it (DRAIN).
"""
from __future__ import annotations

import ipaddress
import logging
import re
import secrets
import time
from dataclasses import dataclass

from .. import requests as rq
from ..dns.records import Record
from ..errors import Conflict, NotFound, NsnetError
from ..firewall import render_ingress, render_no_vips, render_vips
from ..kernel import ports as host_ports
from ..kernel.nft import run_first_in
from ..model import PortMapping
from ..store import CompareFailed, Op, compare_only
from ..store.records import address_key
from . import ingress, publish

log = logging.getLogger("nsnet.services")

NOT_IN_SWARM = "this node is not part of a swarm: use nsnet swarm init or nsnet swarm join first"
MODES = ("vip", "dnsrr")
MAX_REPLICAS = 10_000  # a sane cap: each task is a sandbox and a key every node's watch holds
TXN_OPS = 128          # etcd's --max-txn-ops: compares and writes of one transaction, each
BATCH_WAIT = 30.0      # s: a rolling update waits this long for a batch's new tasks to run, then pauses
RACES = 5              # commits retried when another node wrote the same keys at the same moment
TASK_SANDBOX = re.compile(r"^[^.]+\.\d+\.([0-9a-f]{25})$")   # task_name(): NAME.SLOT.TASKID


def new_id() -> str:
    """Docker's service and task IDs are 25 characters."""
    return secrets.token_hex(13)[:25]


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def chunks(ops: list[Op], first: int, size: int = TXN_OPS - 1) -> list[list[Op]]:
    """`ops` cut for commits: `first` of them beside the first commit's atomic part, then `size` at a time
    (beside each later commit's condition). Always one part at least (the first, maybe empty)."""
    if first < 0 or size < 1:
        raise ValueError(f"no room for operations in a commit ({first}, {size})")
    return [ops[:first]] + [ops[i:i + size] for i in range(first, len(ops), size)]


def plan(kv, doc: dict, replicas: int) -> list[Op]:
    """The writes that bring service `doc`'s tasks that want to run to `replicas`, from what etcd holds now:
    new tasks in the lowest free slots (spread over the Ready nodes), or the highest slots told to shut down
    (each leaves the rotation first: the runner's DRAIN)."""
    entries = kv.list("tasks/")
    live = sorted((t for t in entries if t.value["service_id"] == doc["id"] and t.value["desired"] == "running"),
                  key=lambda t: t.value["slot"])
    if replicas <= len(live):
        return [Op(t.key, {**t.value, "desired": "shutdown"}, expect=t.mod_revision)
                for t in live[replicas:]]
    taken = {t.value["slot"] for t in live}
    slots = [s for s in range(1, replicas + len(taken) + 1) if s not in taken][:replicas - len(live)]
    alive = {_tail(e.key) for e in kv.list("alive/")}
    ready = {_tail(e.key): e.value.get("name", "") for e in kv.list("nodes/") if _tail(e.key) in alive}
    nodes = spread(len(slots), ready, [t.value for t in entries], one_per_node(doc))
    return [Op(f"tasks/{t['id']}", t, expect=0) for t in (new_task(doc, s, n) for s, n in zip(slots, nodes))]


def converge(kv, doc: dict, replicas: int, check: Op) -> bool:
    """After a first commit that left the service's key as `check` says: the tasks still missing or in excess
    (read again: the first commit may have held only part of them, or counted before an older writer's last
    commit), in commits of TXN_OPS, each only while `check` holds. False when it stopped holding (a newer
    scale, update or rm took the service over; its own count stands). A task changed under a commit (its
    node wrote its state) makes it read again."""
    misses = 0
    while misses < RACES:
        ops = plan(kv, doc, replicas)
        if not ops:
            return True
        try:
            for part in chunks(ops, 0)[1:]:
                kv.commit([check, *part])
                misses = 0
        except CompareFailed as e:
            if e.key == check.key:
                return False
            misses += 1
    raise Conflict(f"service {doc['name']}: its tasks kept changing while they were being written; run "
                   f"`service scale {doc['name']}={replicas}` to finish")


def check_replicas(n) -> int:
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise NsnetError(f"invalid replicas {n!r}: give a number of tasks, 0 or more")
    if n > MAX_REPLICAS:
        raise NsnetError(f"invalid replicas {n}: at most {MAX_REPLICAS}")
    return n


def parse_spec(body: dict) -> dict:
    """The API's create body, checked (everything but the networks, which need the engine's state)."""
    name = body.get("Name") or ""
    rq.check_name(name, "service")
    if "." in name:
        raise NsnetError(f"invalid service name {name!r}: no dots (tasks.{name} and {name}.SLOT are built on it)")
    mode = body.get("EndpointMode") or "vip"
    if mode not in MODES:
        raise NsnetError(f"invalid endpoint mode {mode!r}: use vip or dnsrr")
    restart = body.get("RestartCondition") or "any"
    if restart not in rq.RESTART_CONDITIONS:
        raise NsnetError(f"invalid restart condition {restart!r}: use any, on-failure or none")
    check_env(body.get("Env") or [])
    if not body.get("Cmd"):
        raise NsnetError("no command given: nsnet service create [OPTIONS] -- CMD [ARGS...]")
    replicas = 1 if body.get("Replicas") is None else body["Replicas"]
    ports = [publish.parse(s) for s in body.get("Publish") or []]
    publish.check_own(ports)
    return {"replicas": check_replicas(replicas), "endpoint_mode": mode, "restart": restart,
            "env": list(body.get("Env") or []), "cmd": list(body["Cmd"]), "networks": [], "ports": ports}


def check_env(pairs: list[str]) -> None:
    for kv in pairs:
        if not kv.partition("=")[0] or "=" not in kv:
            raise NsnetError(f"invalid env {kv!r}: use KEY=VALUE")


def updated_env(env: list[str], add: list[str], remove: list[str]) -> list[str]:
    """Docker's --env-rm KEY (every KEY=…) then --env-add KEY=VALUE (replacing KEY's value in place, else
    appended)."""
    check_env(add)
    for key in remove:
        if not key or "=" in key:
            raise NsnetError(f"invalid --env-rm {key!r}: give a variable's name")
    out = [kv for kv in env if kv.partition("=")[0] not in remove]
    for kv in add:
        key = kv.partition("=")[0]
        at = next((i for i, old in enumerate(out) if old.partition("=")[0] == key), None)
        if at is None:
            out.append(kv)
        else:
            out[at] = kv
    return out


def spread(count: int, ready: dict[str, str], tasks: list[dict], one_per_node: str | None = None) -> list[str]:
    """The nodes for `count` new tasks: each to the Ready node (id -> name) running the fewest tasks that
    want to run, ties by name. `one_per_node`: that service's ID, whose tasks publish host-mode ports, so
    that no node runs two of them (each holds the port on its node). Pure: the caller commits the choice
    with a compare."""
    if not ready:
        raise NsnetError("no node is Ready to run tasks", 503)
    load = {n: 0 for n in ready}
    for t in tasks:
        if t["desired"] == "running" and t["node"] in load:
            load[t["node"]] += 1
    free = set(ready) - {t["node"] for t in tasks if t["desired"] == "running" and t.get("service_id") == one_per_node}
    out = []
    for _ in range(count):
        if one_per_node and not free:
            raise NsnetError(f"no node left for a task: a port published in mode=host is held by one task per node, "
                             f"and the {len(ready)} Ready nodes run one each", 503)
        node = min(free if one_per_node else ready, key=lambda n: (load[n], ready[n], n))
        load[node] += 1
        free.discard(node)
        out.append(node)
    return out


def one_per_node(svc: dict) -> str | None:
    """The service's ID when its tasks publish host-mode ports (spread's constraint), else None."""
    return svc["id"] if publish.host(svc["spec"].get("ports", [])) else None


def task_shape(spec: dict) -> tuple:
    """What a task's sandbox is built with besides the networks: on `ingress` or not, its host-mode ports.
    A change of either replaces the tasks (an update of the ingress ports alone does not)."""
    ports = spec.get("ports", [])
    return bool(publish.ingress(ports)), sorted((p["Protocol"], p["PublishedPort"], p["TargetPort"]) for p in publish.host(ports))


def serves_swarm(name: str) -> bool:
    """Is a sandbox of this name a task or the ingress sandbox (its ports are a service's, not the host's)?"""
    return name == ingress.SANDBOX or TASK_SANDBOX.match(name) is not None


def local_ports(state) -> list[list]:
    """The ports this node's own sandboxes publish (not tasks'): [proto, port, sandbox name], what the node
    writes to `ports/<node>` so that a service never publishes a port some node's sandbox holds."""
    return sorted([p.proto, p.host_port, sb.name] for sb in state.sbs.values()
                  if sb.state == "running" and not serves_swarm(sb.name) for p in sb.ports if p.host_port)


def claim_key(p: dict) -> str:
    """A published port's claim in etcd: two services committing the same port at once, one wins."""
    return f"published/{p['Protocol']}/{p['PublishedPort']}"


def in_rotation(t: dict, alive: set[str]) -> bool:
    return t["desired"] == "running" and t["state"] == "running" and t["node"] in alive


def task_name(svc_name: str, t: dict) -> str:
    """Its sandbox's name, as Docker names a task's container: NAME.SLOT.TASKID."""
    return f"{svc_name}.{t['slot']}.{t['id']}"


def _tail(key: str) -> str:
    return key.split("/", 1)[1]


def new_task(svc: dict, slot: int, node: str) -> dict:
    return {"id": new_id(), "service_id": svc["id"], "version": svc["version"], "slot": slot, "node": node,
            "desired": "running",
            "state": "assigned", "error": "", "exit_code": None, "addresses": {}, "restarts": 0, "updated": _now()}


@dataclass
class TaskView:
    kv: object
    svc: dict
    tasks: list[dict]              # slot order; in a slot, the task that wants to run first
    names: dict[str, str]          # node id -> node name

    def node_name(self, node: str) -> str:
        return self.names.get(node) or node[:12]

    def alive(self) -> set[str]:
        return {_tail(e.key) for e in self.kv.list("alive/")}


class Services:
    """The engine's services (`e.services`): the use cases (API threads; etcd is read directly, so a
    command sees what it wrote), and what the swarm watch says, for the data plane and the task runner."""

    def __init__(self, engine):
        self.e = engine
        self.services: dict[str, dict] = {}   # id -> record, as the watch says (applied on the kernel thread)
        self.tasks: dict[str, dict] = {}
        self.listeners: list = []             # called (no arguments) when services, tasks or endpoints changed
        self._applied: dict[str, str | None] = {}   # sandbox id -> the VIP ruleset in force in it
        self._mesh_applied = None                    # (sandbox id, pid, ruleset) in force in the ingress sandbox
        self._mesh_error = ""                        # the last reason it could not be written, said once
        self.driving: dict[str, int] = {}            # service id -> the version a thread of this daemon rolls it to
        engine.feed.sources.append(self.records)
        engine.state.endpoint_saved.append(lambda ep: self._poke())

    def _poke(self) -> None:
        for fn in self.listeners:
            fn()

    def _kv(self):
        link = self.e.swarm
        if link is None:
            raise NsnetError(NOT_IN_SWARM, 503)
        return link.kv

    # ---- what the watch says (kernel thread, engine's lock) ----------------------------------------------

    def learn(self, services: dict[str, dict], tasks: dict[str, dict]) -> None:
        if services != self.services or tasks != self.tasks:
            self.services, self.tasks = services, tasks
            self.e.feed.refresh()   # names from the new facts at the engine's next notify
        self._poke()   # nodes alive or not change the rotation too

    def forget(self) -> None:
        self.learn({}, {})

    def check_unused(self, net) -> None:
        """A network a service is on is not removed (its VIP and its tasks' requests name it), as Docker."""
        mesh = ingress.network(self.e.state)
        users = sorted(s["name"] for s in self.services.values() if net.id in s["spec"]["networks"]
                       or (mesh is not None and net.id == mesh.id and publish.ingress(s["spec"].get("ports", []))))
        if users:
            raise Conflict(f"network {net.name} is in use by service {', '.join(users)}: remove the service "
                           f"or update it with --network-rm first")

    def records(self) -> list[Record]:
        """The resolver's records: `tasks.NAME` for every running task (and `NAME` with dnsrr), `NAME` for
        the VIP on each of the service's networks."""
        st, out = self.e.state, []
        mesh = ingress.network(st)   # no names on the routing mesh's network, as Docker's
        for t in self.tasks.values():
            svc = self.services.get(t["service_id"])
            if svc is None or not in_rotation(t, st.alive):
                continue
            names = (f"tasks.{svc['name']}".lower(),) + ((svc["name"].lower(),) if svc["spec"]["endpoint_mode"] == "dnsrr" else ())
            out += [Record(f"task:{t['id']}", net_id, names, ipv4=ip) for net_id, ip in t["addresses"].items()
                    if net_id in st.nets and (mesh is None or net_id != mesh.id)]
        for svc in self.services.values():
            out += [Record(f"vip:{svc['id']}", net_id, (svc["name"].lower(),), ipv4=vip.split("/")[0])
                    for net_id, vip in svc["vips"].items() if net_id in st.nets and (mesh is None or net_id != mesh.id)]
        return out

    def rotation(self) -> dict[str, dict[str, list[str]]]:
        """network id -> VIP -> the addresses of its running tasks on that network. Not the VIPs on `ingress`:
        the mesh reaches the tasks straight from the ingress sandbox (_mesh_table), nothing connects to those."""
        out: dict[str, dict[str, list[str]]] = {}
        mesh = ingress.network(self.e.state)
        for svc in self.services.values():
            for net_id, vip in svc["vips"].items():
                if mesh is not None and net_id == mesh.id:
                    continue
                out.setdefault(net_id, {})[vip.split("/")[0]] = sorted(
                    t["addresses"][net_id] for t in self.tasks.values()
                    if t["service_id"] == svc["id"] and in_rotation(t, self.e.state.alive) and net_id in t["addresses"])
        return out

    def sync_lb(self) -> None:
        """Every local running sandbox on a network with a VIP gets the DNAT table of the VIPs it can reach;
        only those whose table changed are written (the task runner's thread calls this)."""
        st, todo = self.e.state, []
        with self.e.lock:
            table = self.rotation()
            for sb in st.sbs.values():
                if sb.state != "running" or not sb.pid or sb.cni:
                    continue
                vips = {vip: be for ep in st.endpoints_of_sandbox(sb) for vip, be in table.get(ep.network_id, {}).items()}
                want = render_vips(vips) if vips else None
                if want != self._applied.get(sb.id):
                    todo.append((sb.id, sb.pid, want))
            for sid in [s for s in self._applied if s not in st.sbs or st.sbs[s].state != "running"]:
                del self._applied[sid]
            mesh = self._mesh_table()
        for sid, pid, want in todo:
            try:
                run_first_in(f"/proc/{pid}/ns/net", want or render_no_vips())
                self._applied[sid] = want
            except (NsnetError, OSError) as e:
                log.warning("sandbox %s: its service VIPs could not be written: %s", sid[:12], e)
        if mesh is not None and mesh != self._mesh_applied:
            try:
                run_first_in(f"/proc/{mesh[1]}/ns/net", mesh[2])
                self._mesh_applied = mesh
            except (NsnetError, OSError) as e:
                if str(e) != self._mesh_error:   # once per cause: this is tried again at every change and tick
                    log.warning("ingress: the routing mesh's table could not be written: %s", e)
                self._mesh_error = str(e)

    def _mesh_table(self):
        """(sandbox id, pid, ruleset) for this node's running ingress sandbox: each ingress port to the
        addresses on `ingress` of its service's tasks in rotation; None when there is no such sandbox."""
        st = self.e.state
        sb, net = ingress.sandbox(st), ingress.network(st)
        if sb is None or net is None or sb.state != "running" or not sb.pid:
            return None
        ports = {}
        for svc in self.services.values():
            backends = sorted(t["addresses"][net.id] for t in self.tasks.values()
                              if t["service_id"] == svc["id"] and in_rotation(t, st.alive) and net.id in t["addresses"])
            for p in publish.ingress(svc["spec"].get("ports", [])):
                ports[(p["Protocol"], p["PublishedPort"])] = (p["TargetPort"], backends)
        return sb.id, sb.pid, render_ingress(ports)

    # ---- use cases (API threads) -------------------------------------------------------------------------

    def create(self, body: dict) -> dict:
        kv = self._kv()
        spec = parse_spec(body)
        name = body["Name"]
        with self.e.lock:
            nets = [self._network(ref) for ref in body.get("Networks") or []]
        if len({n.id for n in nets}) != len(nets):
            raise Conflict("a network is given twice")
        spec["networks"] = [n.id for n in nets]
        if kv.get(f"names/service/{name}") is not None:
            raise Conflict(f"service {name} already exists")
        sid = new_id()
        spec["ports"] = self._publishable(kv, spec["ports"], [], sid)
        for attempt in range(RACES):
            nodes = spread(spec["replicas"], self._ready(kv), [t.value for t in kv.list("tasks/")],
                           sid if publish.host(spec["ports"]) else None)
            if attempt == 0 and publish.ingress(spec["ports"]):
                ingress.ensure_network(self.e)   # last: everything else is checked (bad input changes nothing)
            vips = self._take_vips(kv, nets + self._mesh(spec["ports"])) if spec["endpoint_mode"] == "vip" else {}
            now = _now()
            doc = {"id": sid, "name": name, "created": now, "updated": now, "version": 1, "spec": spec, "vips": vips}
            head = ([Op(f"names/service/{name}", {"id": sid}, expect=0), Op(f"services/{sid}", doc, expect=0)]
                    + [Op(address_key(n, v.split("/")[0]), {"id": f"service:{sid}"}, expect=0) for n, v in vips.items()]
                    + [Op(claim_key(p), {"id": sid}, expect=0) for p in spec["ports"]])
            first = [Op(f"tasks/{t['id']}", t, expect=0)   # with the claims; `converge` writes the rest
                     for t in (new_task(doc, slot, node) for slot, node in enumerate(nodes[:TXN_OPS - len(head)], start=1))]
            try:
                rev = kv.commit(head + first)
                break
            except CompareFailed:
                self._give_back(vips)
                if kv.get(f"names/service/{name}") is not None:
                    raise Conflict(f"service {name} already exists") from None
                taken = next((p for p in spec["ports"] if kv.get(claim_key(p)) is not None), None)
                if taken is not None:
                    raise Conflict(f"port {taken['PublishedPort']}/{taken['Protocol']} was just published by "
                                   f"another service") from None
                # a VIP another node took at the same moment: read the claims again (in _take_vips)
        else:
            raise Conflict(f"service {name}: its addresses kept being taken by other nodes; try again")
        if not converge(kv, doc, spec["replicas"], compare_only(f"services/{sid}", rev)):
            if kv.get(f"services/{sid}") is None:
                raise NotFound(f"service {name} was removed while its tasks were being created")
            log.info("service %s: scaled or updated while its tasks were being created: that count stands", name)
        log.info("service %s (%s) created: %d tasks", name, sid, spec["replicas"])
        return doc

    def _publishable(self, kv, ports: list[dict], kept: list[dict], sid: str) -> list[dict]:
        """`ports` (new to service `sid`, which keeps `kept`) checked free on every node and given their
        published ports: not another service's (etcd), not a sandbox's `-p` on any node (each node's
        `ports/<node>`, this node's own state), not held on this node's host by anything else."""
        if not ports:
            return []
        taken = self._taken(kv, sid)
        taken.update({(p["Protocol"], p["PublishedPort"]): "this service" for p in kept})
        out = publish.assign(ports, taken)
        for p in out:
            self._check_free_here(p)
        return out

    @staticmethod
    def _check_free_here(p: dict) -> None:
        """Held by no program of this node's host (bound, then let go at once)."""
        try:
            host_ports.hold(PortMapping("0.0.0.0", p["PublishedPort"], p["PublishedPort"], p["Protocol"])).close()
        except Conflict:
            raise Conflict(f"port {p['PublishedPort']}/{p['Protocol']} is already in use on the host of this "
                           f"node") from None

    def _taken(self, kv, sid: str) -> dict[tuple[str, int], str]:
        """(proto, port) -> who publishes it in the swarm, besides service `sid`."""
        taken = {}
        for e in kv.list("services/"):
            if e.value["id"] != sid:
                for p in e.value["spec"].get("ports", []):
                    mode = "an ingress" if p["PublishMode"] == publish.INGRESS else "a host-mode"
                    taken[(p["Protocol"], p["PublishedPort"])] = f"service {e.value['name']} as {mode} port"
        names = {_tail(e.key): e.value.get("name", "") for e in kv.list("nodes/")}
        for e in kv.list("ports/"):
            if _tail(e.key) in names:
                for proto, port, who in e.value.get("ports", []):
                    taken[(proto, port)] = f"sandbox {who} on node {names[_tail(e.key)]}"
        with self.e.lock:   # this node's own, as they are now (its record may be a second old)
            for proto, port, who in local_ports(self.e.state):
                taken[(proto, port)] = f"sandbox {who} on node {names.get(self.e.state.node, 'here')}"
        return taken

    def scale(self, ref: str, replicas) -> dict:
        """The service's new revision and the first of its new (or stopped) tasks in one commit, compared on
        its revision (two scales never both count the same tasks); the rest after it (`converge`)."""
        kv = self._kv()
        replicas = check_replicas(replicas)
        for attempt in range(RACES):
            entry = self._entry(kv, ref)
            doc = entry.value
            new = {**doc, "spec": {**doc["spec"], "replicas": replicas}, "version": doc["version"] + 1, "updated": _now()}
            try:
                rev = kv.commit([Op(entry.key, new, expect=entry.mod_revision)] + chunks(plan(kv, doc, replicas), TXN_OPS - 1)[0])
                break
            except CompareFailed:
                continue
        else:
            raise Conflict(f"service {ref} kept changing under this scale; try again")
        if not converge(kv, doc, replicas, compare_only(entry.key, rev)):
            if kv.get(entry.key) is None:
                raise NotFound(f"service {doc['name']} was removed during this scale")
            log.info("service %s: scaled or updated again during this scale: that count stands", doc["name"])
        return new

    def update(self, ref: str, body: dict) -> dict:
        """`--replicas` alone scales. `--network-add/--network-rm`, `--env-add/--env-rm`, `--args` (the
        command), `--force` and changes of the host-mode ports make a new version of the spec (the VIPs of
        added networks claimed, those of removed ones let go, in the same commit) and roll the tasks over to
        it, `Parallelism` at a time: new tasks first, each batch's old tasks told to shut down (out of
        rotation everywhere, then stopped: the runner's DRAIN) only once its new ones run, `DelayMs` between
        batches. A batch whose new task fails or does not run within BATCH_WAIT pauses the update (one
        line); the tasks already replaced stay so."""
        kv = self._kv()
        parallelism = body.get("Parallelism") or 1
        if parallelism < 1:
            raise NsnetError(f"invalid update parallelism {parallelism}: 1 or more")
        delay = (body.get("DelayMs") or 0) / 1000
        replicas = body.get("Replicas")
        if replicas is not None:
            check_replicas(replicas)
        entry = self._entry(kv, ref)
        doc = entry.value
        nets = list(doc["spec"]["networks"])
        with self.e.lock:
            added = [self._network(r) for r in body.get("NetworkAdd") or []]
            removed = [self.e.state.network(r) for r in body.get("NetworkRm") or []]
        for net in added:
            if net.id in nets:
                raise Conflict(f"service {doc['name']} is on network {net.name} already")
        for net in removed:
            if net.id not in nets:
                raise NsnetError(f"service {doc['name']} is not on network {net.name}")
        if len({n.id for n in added}) != len(added) or len({n.id for n in removed}) != len(removed):
            raise Conflict("a network is given twice")
        old_ports = doc["spec"].get("ports", [])
        unpublish = [publish.parse(x) for x in body.get("PublishRm") or []]
        kept = publish.removing(old_ports, unpublish)
        fresh = self._publishable(kv, [publish.parse(x) for x in body.get("PublishAdd") or []], kept, doc["id"])
        env = updated_env(doc["spec"]["env"], body.get("EnvAdd") or [], body.get("EnvRm") or [])
        cmd = doc["spec"]["cmd"] if body.get("Args") is None else list(body["Args"])
        if not cmd:
            raise NsnetError("invalid --args: the tasks need a command")
        rerun = (body.get("Force") or env != doc["spec"]["env"] or cmd != doc["spec"]["cmd"]
                 or (doc.get("update") or {}).get("state") == "paused")   # any update starts a paused one again
        if not added and not removed and not unpublish and not fresh and not rerun:
            return self.scale(doc["id"], replicas) if replicas is not None else doc
        ports = kept + fresh
        if publish.ingress(fresh):
            ingress.ensure_network(self.e)   # last: everything else is checked (bad input changes nothing)
        mesh = self._mesh(ports)   # a VIP on `ingress` while an ingress port is published, as Docker
        gone = {n.id for n in removed} | (set() if mesh else {n for n in doc["vips"] if n not in nets})
        vips = self._take_vips(kv, added + [n for n in mesh if n.id not in doc["vips"]]) \
            if doc["spec"]["endpoint_mode"] == "vip" else {}
        new = {**doc, "version": doc["version"] + 1, "updated": _now(),
               "spec": {**doc["spec"], "networks": [n for n in nets if n not in gone] + [n.id for n in added],
                        "ports": ports, "env": env, "cmd": cmd},
               "vips": {**{n: v for n, v in doc["vips"].items() if n not in gone}, **vips}}
        roll = bool(added or removed or rerun or task_shape(doc["spec"]) != task_shape(new["spec"]))
        if roll:
            new["update"] = {"state": "updating", "driver": self.e.state.node, "version": new["version"],
                             "parallelism": parallelism, "delay": delay, "started": _now(), "message": "",
                             "stop_first": bool(publish.host(old_ports) or publish.host(ports))}
        ops = ([Op(entry.key, new, expect=entry.mod_revision)]
               + [Op(address_key(n, v.split("/")[0]), {"id": f"service:{doc['id']}"}, expect=0) for n, v in vips.items()]
               + [Op(address_key(n, v.split("/")[0]), None) for n, v in doc["vips"].items() if n in gone]
               + [Op(claim_key(p), {"id": doc["id"]}, expect=0) for p in fresh]
               + [Op(claim_key(p), None) for p in old_ports if p not in kept])
        if roll:   # before the commit: this node's task runner must not take it for an orphan
            self.driving[doc["id"]] = new["version"]
        try:
            kv.commit(ops)
        except BaseException as e:   # etcd away too: nothing is driven, no address kept
            self._give_back(vips)
            self.driving.pop(doc["id"], None)
            if isinstance(e, CompareFailed):
                raise Conflict(f"service {doc['name']} changed meanwhile (or its addresses or ports were taken); "
                               f"try again") from None
            raise
        self._give_back({n: v for n, v in doc["vips"].items() if n in gone})
        if roll:
            self.drive(kv, new)
        return self.scale(doc["id"], replicas) if replicas is not None else new

    def drive(self, kv, svc: dict) -> None:
        """Roll `svc`'s tasks over as its `update` record says, then write how it ended there: completed, or
        paused with the reason (raised too). The record makes the update outlive this daemon: if it dies
        midway, another node's task runner takes it over (`take_over`), or this one's after its restart."""
        u, sid = svc["update"], svc["id"]
        self.driving[sid] = u["version"]
        try:
            self._roll(kv, svc, u["parallelism"], u["delay"], u["stop_first"], u["version"])
        except NsnetError as e:
            self._end_update(kv, sid, u["version"], "paused", str(e))
            raise
        finally:
            if self.driving.get(sid) == u["version"]:
                del self.driving[sid]
        self._end_update(kv, sid, u["version"], "completed", "update completed")

    def take_over(self, kv, sid: str) -> dict | None:
        """The service `sid` with this node written as its update's driver, when the update is under way and
        its driver is Down (or is this node, restarted); None when there is nothing to take (another node
        committed first, or it ended)."""
        me = self.e.state.node
        for attempt in range(RACES):
            entry = kv.get(f"services/{sid}")
            u = entry.value.get("update") if entry is not None else None
            if (not u or u["state"] != "updating" or self.driving.get(sid) == u["version"]
                    or (u["driver"] != me and u["driver"] in self._alive(kv))):
                return None
            doc = {**entry.value, "update": {**u, "driver": me}}
            try:
                kv.commit([Op(entry.key, doc, expect=entry.mod_revision)])
                log.info("service %s: its update is driven from this node now", doc["name"])
                return doc
            except CompareFailed:
                continue
        return None

    def _end_update(self, kv, sid: str, version: int, state: str, message: str) -> None:
        """The update record of `sid` says `state` (unless a later update or another driver has it now)."""
        for attempt in range(RACES):
            entry = kv.get(f"services/{sid}")
            u = entry.value.get("update") if entry is not None else None
            if not u or u["version"] != version or u["driver"] != self.e.state.node:
                return
            doc = {**entry.value, "update": {**u, "state": state, "message": message, "completed": _now()}}
            try:
                kv.commit([Op(entry.key, doc, expect=entry.mod_revision)])
                return
            except CompareFailed:
                continue

    def _roll(self, kv, svc: dict, parallelism: int, delay: float, stop_first: bool, version: int) -> None:
        """The running tasks older than `version` replaced. `stop_first`: a batch's old tasks stop before its
        new ones start (host-mode ports: an old task holds its port on its node, where the new one may have
        to run)."""
        while True:
            entries = [t for t in kv.list("tasks/") if t.value["service_id"] == svc["id"]]
            old = sorted((t.value for t in entries if t.value["desired"] == "running"
                          and t.value.get("version", 1) < version), key=lambda t: t["slot"])
            if not old:
                return
            now = kv.get(f"services/{svc['id']}")
            if now is None:
                raise NotFound(f"service {svc['name']} was removed during its update")
            if now.value.get("update", {}).get("version") != version:
                return   # a later update took over: it rolls every task older than its own version
            svc = now.value   # its tasks take the service's version as it is now (a scale may have moved it)
            batch = old[:parallelism]
            if stop_first:
                for t in batch:
                    update_task(kv, t["id"], {"desired": "shutdown"}, lambda doc: doc["desired"] == "running")
                self._wait(lambda: all(kv.get(f"tasks/{t['id']}") is None for t in batch),
                           f"update of service {svc['name']} paused: an old task did not stop")
            nodes = spread(len(batch), self._ready(kv), [t.value for t in kv.list("tasks/")], one_per_node(svc))
            fresh = [new_task(svc, t["slot"], node) for t, node in zip(batch, nodes)]
            self._add_tasks(kv, svc, [Op(f"tasks/{t['id']}", t, expect=0) for t in fresh])
            deadline = time.monotonic() + BATCH_WAIT
            while True:
                now = [kv.get(f"tasks/{t['id']}") for t in fresh]
                bad = next((e.value for e in now if e is not None and e.value["state"] == "failed"), None)
                if bad is not None or time.monotonic() > deadline or any(e is None for e in now):
                    why = bad["error"] if bad else "did not run within %.0f s" % BATCH_WAIT
                    raise NsnetError(f"update of service {svc['name']} paused: a new task {why}", 500)
                if all(e.value["state"] == "running" for e in now):
                    break
                time.sleep(0.05)
            for t in [] if stop_first else batch:
                update_task(kv, t["id"], {"desired": "shutdown"}, lambda doc: doc["desired"] == "running")
            time.sleep(delay)

    @staticmethod
    def _add_tasks(kv, svc: dict, ops: list[Op]) -> None:
        """A batch's new tasks in commits of TXN_OPS, each while the service is as read just before it: its
        removal stops the update (no task outlives it), a scale meanwhile does not."""
        key, misses = f"services/{svc['id']}", 0
        for part in chunks(ops, 0)[1:]:
            while True:
                entry = kv.get(key)
                if entry is None:
                    raise NotFound(f"service {svc['name']} was removed during its update")
                try:
                    kv.commit([compare_only(key, entry.mod_revision), *part])
                    break
                except CompareFailed:
                    misses += 1
                    if misses >= RACES:
                        raise Conflict(f"update of service {svc['name']} paused: the service kept changing; "
                                       f"run the update again") from None

    @staticmethod
    def _wait(done, why: str) -> None:
        deadline = time.monotonic() + BATCH_WAIT
        while not done():
            if time.monotonic() > deadline:
                raise NsnetError(f"{why} within {BATCH_WAIT:.0f} s", 500)
            time.sleep(0.05)

    def remove(self, ref: str) -> str:
        """The service, its name and VIPs go at once, with the first of its tasks: told to shut down (each
        node stops its own and deletes the task), those of Down nodes deleted here. The rest are told after
        that commit (`converge` to 0: read after it, so a create or scale cut off by it is counted too)."""
        kv = self._kv()
        for attempt in range(RACES):
            entry = self._entry(kv, ref)
            doc = entry.value
            alive = self._alive(kv)
            head = [Op(entry.key, None, expect=entry.mod_revision), Op(f"names/service/{doc['name']}", None)]
            head += [Op(address_key(n, v.split("/")[0]), None) for n, v in doc["vips"].items()]
            head += [Op(claim_key(p), None) for p in doc["spec"].get("ports", [])]
            tasks = [Op(t.key, None) if t.value["node"] not in alive
                     else Op(t.key, {**t.value, "desired": "shutdown"}, expect=t.mod_revision)
                     for t in kv.list("tasks/") if t.value["service_id"] == doc["id"]
                     and (t.value["node"] not in alive or t.value["desired"] == "running")]
            try:
                kv.commit(head + chunks(tasks, TXN_OPS - len(head))[0])
                break
            except CompareFailed:
                continue
        else:
            raise Conflict(f"service {ref} kept changing; try again")
        self._give_back(doc["vips"])
        try:
            converge(kv, doc, 0, compare_only(entry.key, 0))
        except Conflict as e:   # what is left is stopped by its nodes all the same: the service is gone
            log.warning("service %s: %s", doc["name"], e)
        log.info("service %s (%s) removed", doc["name"], doc["id"])
        return doc["id"]

    def list(self) -> list[dict]:
        kv = self._kv()
        tasks, alive = [t.value for t in kv.list("tasks/")], self._alive(kv)
        return [dict(self._doc(e.value), Running=sum(1 for t in tasks if t["service_id"] == e.value["id"] and in_rotation(t, alive)))
                for e in kv.list("services/")]

    def inspect(self, ref: str) -> dict:
        return self._doc(self._entry(self._kv(), ref).value)

    def task_view(self, ref: str) -> "TaskView":
        """What `service ps` and `service logs` read of a service, from etcd."""
        kv = self._kv()
        doc = self._entry(kv, ref).value
        tasks = sorted((t.value for t in kv.list("tasks/") if t.value["service_id"] == doc["id"]),
                       key=lambda t: (t["slot"], t["desired"] != "running"))
        return TaskView(kv, doc, tasks, {_tail(e.key): e.value.get("name", "") for e in kv.list("nodes/")})

    def ps(self, ref: str) -> list[dict]:
        view = self.task_view(ref)
        doc, tasks = view.svc, view.tasks
        return [{"ID": t["id"], "Name": f"{doc['name']}.{t['slot']}", "ServiceID": doc["id"], "Slot": t["slot"],
                 "NodeID": t["node"], "Node": view.node_name(t["node"]), "DesiredState": t["desired"],
                 "Status": {"State": t["state"], "Err": t.get("error", ""), "Timestamp": t.get("updated", ""),
                            "ExitCode": t.get("exit_code")},
                 "NetworksAttachments": [{"Network": {"ID": n}, "Addresses": [a]} for n, a in t["addresses"].items()]}
                for t in tasks]

    # ---- pieces -----------------------------------------------------------------------------------------

    def _network(self, ref: str):
        net = self.e.state.network(ref)
        if not self.e.state.shared(net) or self.e.driver(net).scope != "cluster":
            raise NsnetError(f"network {net.name} is not an overlay network: a service's networks must be "
                             f"overlays (network create -d overlay)")
        return net

    def _mesh(self, ports: list[dict]) -> list:
        """[`ingress`] for a service that publishes an ingress port, else []. Its VIP there is claimed and shown
        as Docker's (service inspect's Endpoint.VirtualIPs), no task takes it; nothing answers it (rotation)."""
        with self.e.lock:
            mesh = ingress.network(self.e.state)
        return [mesh] if mesh is not None and publish.ingress(ports) else []

    def _take_vips(self, kv, nets) -> dict[str, str]:
        """One address per network from its allocator, clear of every address claimed in etcd right now."""
        vips: dict[str, str] = {}
        with self.e.lock:
            try:
                for net in nets:
                    cfg = next((c for c in net.subnets if ipaddress.ip_network(c.subnet).version == 4), None)
                    if cfg is None:
                        continue
                    self.e.alloc.mark_taken(net, map(ipaddress.ip_address, self.e.store.addresses(net.id, shared=True)))
                    addr = self.e.alloc.allocate(net, cfg, lambda a: None)
                    vips[net.id] = f"{addr}/{ipaddress.ip_network(cfg.subnet).prefixlen}"
            except BaseException:
                self._give_back(vips)
                raise
        return vips

    def _give_back(self, vips: dict[str, str]) -> None:
        with self.e.lock:
            for net_id, vip in vips.items():
                net = self.e.state.nets.get(net_id)
                if net is not None:
                    self.e.alloc.release(net, [ipaddress.ip_interface(vip).ip])

    @staticmethod
    def _alive(kv) -> set[str]:
        return {_tail(e.key) for e in kv.list("alive/")}

    def _ready(self, kv) -> dict[str, str]:
        alive = self._alive(kv)
        return {_tail(e.key): e.value.get("name", "") for e in kv.list("nodes/") if _tail(e.key) in alive}

    @staticmethod
    def _entry(kv, ref: str):
        """A service by ID, name or unique ID prefix."""
        if not ref:
            raise NotFound("no such service: give its name or ID")
        claim = kv.get(f"names/service/{ref}")
        entry = kv.get(f"services/{claim.value['id'] if claim else ref}")
        if entry is not None:
            return entry
        found = [e for e in kv.list("services/") if _tail(e.key).startswith(ref)]
        if len(found) == 1:
            return found[0]
        if found:
            raise NsnetError(f"service {ref!r} is ambiguous: {len(found)} services match; use its ID")
        raise NotFound(f"no such service: {ref}")

    @staticmethod
    def _doc(svc: dict) -> dict:
        """Docker's service inspect document, as far as it applies."""
        spec, ports = svc["spec"], svc["spec"].get("ports", [])
        return {"ID": svc["id"], "Version": {"Index": svc["version"]}, "CreatedAt": svc["created"],
                "UpdatedAt": svc["updated"],
                "Spec": {"Name": svc["name"], "Labels": {},
                         "TaskTemplate": {"ContainerSpec": {"Command": spec["cmd"], "Env": spec["env"]},
                                          "RestartPolicy": {"Condition": spec["restart"]},
                                          "Networks": [{"Target": n} for n in spec["networks"]]},
                         "Mode": {"Replicated": {"Replicas": spec["replicas"]}},
                         "EndpointSpec": {"Mode": spec["endpoint_mode"], "Ports": ports}},
                "Endpoint": {"Spec": {"Mode": spec["endpoint_mode"], "Ports": ports}, "Ports": ports,
                             "VirtualIPs": [{"NetworkID": n, "Addr": v} for n, v in svc["vips"].items()]},
                **({"UpdateStatus": {"State": u["state"], "StartedAt": u["started"], "Message": u["message"],
                                     **({"CompletedAt": u["completed"]} if u.get("completed") else {})}}
                   if (u := svc.get("update")) else {})}


# ---- the task side: what the node that runs a task writes (daemon/tasks.py) ---------------------------

def update_task(kv, task_id: str, changes: dict, only_if=lambda t: True) -> dict | None:
    """Write `changes` into a task with a compare on its revision (the API may have changed its desired
    state meanwhile: read again, try again). None when the task is gone or `only_if` says no."""
    for attempt in range(RACES):
        entry = kv.get(f"tasks/{task_id}")
        if entry is None or not only_if(entry.value):
            return None
        doc = {**entry.value, **changes, "updated": _now()}
        try:
            kv.commit([Op(entry.key, doc, expect=entry.mod_revision)])
            return doc
        except CompareFailed:
            continue
    return None


def delete_task(kv, task_id: str) -> None:
    kv.commit([Op(f"tasks/{task_id}", None)])


def move_orphans(kv, node: str) -> int:
    """The tasks of Down nodes that want to run go to Ready nodes (fewest first; a task with host-mode ports
    only to a node that runs none of its service's, else it stays `pending` on its node, as Docker's waits
    for a suitable node); those told to shut down, or whose service is gone (a removal cut short), are
    deleted. Every node may do it: the compare on each task's revision lets one commit win. How many moved."""
    alive = {_tail(e.key) for e in kv.list("alive/")}
    if node not in alive:
        return 0   # this node itself is cut off: it must not decide for the others
    entries = kv.list("tasks/")
    orphans = [t for t in entries if t.value["node"] not in alive]
    if not orphans:
        return 0
    ready = {_tail(e.key): e.value.get("name", "") for e in kv.list("nodes/") if _tail(e.key) in alive}
    tasks = [t.value for t in entries if t.value["node"] in alive]
    services = {_tail(e.key): e.value for e in kv.list("services/")}
    moved = 0
    for t in orphans:
        try:
            if t.value["desired"] != "running" or t.value["service_id"] not in services:
                kv.commit([Op(t.key, None, expect=t.mod_revision)])
                continue
            try:
                target = spread(1, ready, tasks, one_per_node(services[t.value["service_id"]]))[0]
            except NsnetError as e:   # host-mode ports: every Ready node runs one; it waits for its node
                if t.value["state"] != "pending":
                    kv.commit([Op(t.key, {**t.value, "state": "pending", "error": str(e), "updated": _now()},
                                  expect=t.mod_revision)])
                continue
            doc = {**t.value, "node": target, "state": "assigned", "error": "", "addresses": {}, "exit_code": None,
                   "updated": _now()}
            kv.commit([Op(t.key, doc, expect=t.mod_revision)])
            tasks.append(doc)
            moved += 1
        except CompareFailed:
            continue   # another node moved it first
    return moved
