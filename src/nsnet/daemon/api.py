"""HTTP routes of the daemon's API (JSON over a unix socket), mapped onto the engine's use cases."""
from __future__ import annotations

import json
import os
import re
from urllib.parse import parse_qs, unquote, urlparse

from ..cluster import request as swarm_request
from ..engine import ingress, servicelogs
from ..engine.cni import DECODING_FAILURE as CNI_DECODING, SUPPORTED as CNI_VERSIONS, CniError
from ..errors import Conflict, NsnetError, NotFound
from ..kernel import procs
from ..model import to_dict
from . import schema

ROUTES = []   # (method, path regex, handler, the endpoint's schemas)


def route(method: str, path: str):
    """Register a handler for `path` ({ref} stands for one path segment); its schemas come from schema.ENDPOINTS."""
    spec = schema.ENDPOINTS[(method, path)]

    def register(fn):
        ROUTES.append((method, re.compile("^" + path.replace("{ref}", "([^/]+)") + "$"), fn, spec))
        return fn
    return register


def dispatch(daemon, method: str, raw_path: str, body: bytes, peer=None) -> tuple[int, object]:
    """`peer` is the calling process, (pid, start time), from the socket's credentials."""
    url = urlparse(raw_path)
    allowed = []
    for m, pattern, fn, spec in ROUTES:
        match = pattern.match(url.path)
        if not match:
            continue
        if m != method:
            allowed.append(m)
            continue
        try:
            query = schema.query(spec["query"], parse_qs(url.query, keep_blank_values=True))
            data = schema.body(spec["body"], body)
            return 200, fn(daemon, *[unquote(g) for g in match.groups()], query=query, body=data, peer=peer)
        except NsnetError as e:
            return e.status, {"message": str(e)}
    if allowed:
        return 405, {"message": f"{method[:20]} is not allowed on {url.path[:200]}: use {' or '.join(allowed)}"}
    return 404, {"message": f"no such API: {method[:20]} {url.path[:200]}"}


@route("GET", "/_ping")
def ping(d, query, body, peer):
    return {"ok": True, "pid": os.getpid()}


@route("GET", "/info")
def info(d, query, body, peer):
    return {**d.engine.info(), "DaemonPid": os.getpid(), "Swarm": d.cluster.info()}


@route("GET", "/networks")
def networks(d, query, body, peer):
    filters = query.get("filters") or {}
    return [d.engine.inspect_network(n.id) for n in d.engine.list_networks(filters)]


@route("POST", "/networks")
def network_create(d, query, body, peer):
    net = d.engine.create_network(body)
    return {"Id": net.id, "Warning": ""}


@route("POST", "/networks/prune")
def network_prune(d, query, body, peer):
    return {"NetworksDeleted": d.engine.prune_networks()}


@route("GET", "/networks/{ref}")
def network_inspect(d, ref, query, body, peer):
    return d.engine.inspect_network(ref)


@route("DELETE", "/networks/{ref}")
def network_remove(d, ref, query, body, peer):
    return {"Id": d.engine.remove_network(ref).id}


@route("POST", "/networks/{ref}/connect")
def network_connect(d, ref, query, body, peer):
    ep = d.engine.connect(ref, body.get("Sandbox", ""), body.get("IP"), body.get("IP6"), body.get("Aliases"))
    return to_dict(ep) if ep else {}


@route("POST", "/networks/{ref}/disconnect")
def network_disconnect(d, ref, query, body, peer):
    d.engine.disconnect(ref, body.get("Sandbox", ""), bool(body.get("Force")))
    return {}


@route("GET", "/sandboxes")
def sandboxes(d, query, body, peer):
    docs = []
    for s in d.engine.list_sandboxes(query.get("all", False)):
        if ingress.hidden(s):
            continue   # nsnet's own, as Docker's: `ps` never lists it (inspect and `network inspect` show it)
        try:
            docs.append(d.engine.inspect_sandbox(s.id))
        except NotFound:
            pass   # removed between the list and its inspect (a service's task, stopped by its node)
    return docs


@route("POST", "/sandboxes")
def sandbox_run(d, query, body, peer):
    if body.get("Pid") is not None:
        _check_owned(body["Pid"], peer)
    run = d.run_sandbox(body)
    sb = run.sandbox
    return {"Id": sb.id, "Name": sb.name, "Pid": sb.pid, "Files": run.files, "Hostname": sb.hostname, "Nft": run.nft}


@route("GET", "/sandboxes/{ref}")
def sandbox_inspect(d, ref, query, body, peer):
    return d.engine.inspect_sandbox(ref)


@route("POST", "/sandboxes/{ref}/stop")
def sandbox_stop(d, ref, query, body, peer):
    return {"Id": d.engine.stop_sandbox(ref, query.get("t", 10.0)).id}


@route("POST", "/sandboxes/{ref}/exited")
def sandbox_exited(d, ref, query, body, peer):
    """The exit code of a foreground sandbox, from the client that waited for it. The daemon sees the exit
    itself (watcher.py); this only records the code, and only once the process is really gone."""
    try:
        sb = d.engine.sandbox(ref)
    except NotFound:
        return {}  # --rm sandboxes are gone already
    if procs.alive(sb.pid, sb.pid_start):
        raise Conflict(f"sandbox {sb.name} is still running: the daemon sees by itself when it exits")
    d.engine.sandbox_exited(sb.id, body.get("ExitCode"))
    return {}


@route("DELETE", "/sandboxes/{ref}")
def sandbox_remove(d, ref, query, body, peer):
    return {"Id": d.engine.remove_sandbox(ref, query.get("force", False)).id}


@route("GET", "/sandboxes/{ref}/logs")
def sandbox_logs(d, ref, query, body, peer):
    try:
        with open(d.engine.log_path(ref), errors="replace") as f:
            return {"Log": f.read()}
    except FileNotFoundError:
        return {"Log": ""}


@route("POST", "/reconcile")
def reconcile(d, query, body, peer):
    return {"Done": d.engine.reconcile()}


@route("POST", "/cni")
def cni(d, query, body, peer):
    """A CNI plugin's call: {"Result": …} (ADD), {} (the others), or {"Error": the spec's code, msg, details}."""
    try:
        conf = json.loads(body["Config"])
        if not isinstance(conf, dict) or not isinstance(conf.get("name"), str) or conf.get("cniVersion") not in CNI_VERSIONS:
            raise CniError(CNI_DECODING, "the network configuration needs a name and a supported cniVersion")
        result = d.engine.cni.call(dict(body, Config=conf))
    except ValueError as e:
        return {"Error": {"code": CNI_DECODING, "msg": f"invalid network configuration: {e}", "details": ""}}
    except CniError as e:
        return {"Error": e.as_dict()}
    return {"Result": result} if result is not None else {}


@route("POST", "/swarm/init")
def swarm_init(d, query, body, peer):
    node = d.cluster.init(swarm_request(body, join=False))
    ingress.make_at_init(d.engine)   # the swarm's routing-mesh network, as Docker's swarm init makes it
    return {"NodeID": node}


@route("POST", "/swarm/join")
def swarm_join(d, query, body, peer):
    return {"NodeID": d.cluster.join(swarm_request(body, join=True))}


@route("POST", "/swarm/leave")
def swarm_leave(d, query, body, peer):
    d.cluster.leave(query.get("force", False))
    return {}


@route("GET", "/nodes")
def nodes(d, query, body, peer):
    return d.cluster.nodes()


@route("GET", "/nodes/{ref}")
def node_inspect(d, ref, query, body, peer):
    return d.cluster.node(ref)


@route("DELETE", "/nodes/{ref}")
def node_remove(d, ref, query, body, peer):
    return {"ID": d.cluster.remove_node(ref, query.get("force", False))}


@route("GET", "/services")
def services(d, query, body, peer):
    return d.engine.services.list()


@route("POST", "/services")
def service_create(d, query, body, peer):
    return {"ID": d.engine.services.create(body)["id"]}


@route("GET", "/services/{ref}")
def service_inspect(d, ref, query, body, peer):
    return d.engine.services.inspect(ref)


@route("DELETE", "/services/{ref}")
def service_remove(d, ref, query, body, peer):
    return {"ID": d.engine.services.remove(ref)}


@route("POST", "/services/{ref}/scale")
def service_scale(d, ref, query, body, peer):
    return {"ID": d.engine.services.scale(ref, body["Replicas"])["id"]}


@route("POST", "/services/{ref}/update")
def service_update(d, ref, query, body, peer):
    return {"ID": d.engine.services.update(ref, body)["id"]}


@route("GET", "/services/{ref}/tasks")
def service_tasks(d, ref, query, body, peer):
    return d.engine.services.ps(ref)


@route("GET", "/services/{ref}/logs")
def service_logs(d, ref, query, body, peer):
    return servicelogs.collect(d.engine, ref, query.get("tail"))


def _check_owned(pid: int, peer) -> None:
    """A client may hand over only a process of its own: itself or one of its descendants. Otherwise any
    PID, in any namespace (PID 1: the machine's own), would get plumbed. Start times guard against a PID
    reused along the way: a parent never starts after its child, and the peer is the one that connected."""
    if peer is None:
        raise NsnetError("Pid is only accepted from a caller whose credentials the socket tells", 403)
    peer_pid, peer_start = peer
    cur, node = pid, _parent_and_start(pid)
    while node is not None:
        ppid, start = node
        if cur == peer_pid:
            if start == peer_start:
                return
            break
        parent = _parent_and_start(ppid) if ppid > 0 else None
        if parent is None or parent[1] > start:
            break
        cur, node = ppid, parent
    raise NsnetError(f"process {pid} is neither the caller (pid {peer_pid}) nor one of its children: "
                     "hand over only a process you started", 403)


def _parent_and_start(pid: int) -> tuple[int, int] | None:
    """(parent PID, start time) of a process, from /proc/PID/stat; None when there is none."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return int(fields[1]), int(fields[19])
