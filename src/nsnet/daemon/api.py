"""HTTP routes of the daemon's API (JSON over a unix socket), mapped onto the engine's use cases."""
from __future__ import annotations

import json
import os
import re
from urllib.parse import parse_qs, unquote, urlparse

from ..errors import NsnetError, NotFound
from ..firewall import render_dns_redirect
from ..model import to_dict

ROUTES = []


def route(method: str, pattern: str):
    def register(fn):
        ROUTES.append((method, re.compile("^" + pattern + "$"), fn))
        return fn
    return register


def dispatch(daemon, method: str, raw_path: str, body: bytes) -> tuple[int, object]:
    url = urlparse(raw_path)
    query = {k: v[-1] for k, v in parse_qs(url.query).items()}
    data = json.loads(body) if body else {}
    for m, pattern, fn in ROUTES:
        match = pattern.match(url.path)
        if match and m == method:
            try:
                return 200, fn(daemon, *[unquote(g) for g in match.groups()], query=query, body=data)
            except NsnetError as e:
                return e.status, {"message": str(e)}
    return 404, {"message": f"no such API: {method} {url.path}"}


@route("GET", "/_ping")
def ping(d, query, body):
    return {"ok": True, "pid": os.getpid()}


@route("GET", "/info")
def info(d, query, body):
    e = d.engine
    return {"Root": e.root, "Networks": len(e.nets), "Sandboxes": len(e.sbs),
            "Running": sum(1 for s in e.sbs.values() if s.state == "running"),
            "Config": e.config.as_dict(), "DaemonPid": os.getpid()}


@route("GET", "/networks")
def networks(d, query, body):
    filters = json.loads(query.get("filters") or "{}")
    return [d.engine.inspect_network(n.id) for n in d.engine.list_networks(filters)]


@route("POST", "/networks")
def network_create(d, query, body):
    net = d.engine.create_network(body)
    return {"Id": net.id, "Warning": ""}


@route("POST", "/networks/prune")
def network_prune(d, query, body):
    return {"NetworksDeleted": d.engine.prune_networks()}


@route("GET", "/networks/([^/]+)")
def network_inspect(d, ref, query, body):
    return d.engine.inspect_network(ref)


@route("DELETE", "/networks/([^/]+)")
def network_remove(d, ref, query, body):
    return {"Id": d.engine.remove_network(ref).id}


@route("POST", "/networks/([^/]+)/connect")
def network_connect(d, ref, query, body):
    ep = d.engine.connect(ref, body.get("Sandbox", ""), body.get("IP"), body.get("IP6"), body.get("Aliases"))
    return to_dict(ep) if ep else {}


@route("POST", "/networks/([^/]+)/disconnect")
def network_disconnect(d, ref, query, body):
    d.engine.disconnect(ref, body.get("Sandbox", ""), bool(body.get("Force")))
    return {}


@route("GET", "/sandboxes")
def sandboxes(d, query, body):
    return [d.engine.inspect_sandbox(s.id) for s in d.engine.list_sandboxes(query.get("all") == "1")]


@route("POST", "/sandboxes")
def sandbox_run(d, query, body):
    sb = d.run_sandbox(body)
    files = os.path.join(d.engine.root, "sandboxes", sb.id)
    nft = render_dns_redirect(d.engine.dns.address, *sb.dns_ports) if sb.dns_ports and d.engine.dns else None
    return {"Id": sb.id, "Name": sb.name, "Pid": sb.pid, "Files": files, "Hostname": sb.hostname, "Nft": nft}


@route("GET", "/sandboxes/([^/]+)")
def sandbox_inspect(d, ref, query, body):
    return d.engine.inspect_sandbox(ref)


@route("POST", "/sandboxes/([^/]+)/stop")
def sandbox_stop(d, ref, query, body):
    return {"Id": d.engine.stop_sandbox(ref, float(query.get("t", 10))).id}


@route("POST", "/sandboxes/([^/]+)/exited")
def sandbox_exited(d, ref, query, body):
    try:
        sb = d.engine.sandbox(ref)
    except NotFound:
        return {}  # --rm sandboxes are gone already
    d.engine.sandbox_exited(sb.id, body.get("ExitCode"))
    return {}


@route("DELETE", "/sandboxes/([^/]+)")
def sandbox_remove(d, ref, query, body):
    return {"Id": d.engine.remove_sandbox(ref, query.get("force") == "1").id}


@route("GET", "/sandboxes/([^/]+)/logs")
def sandbox_logs(d, ref, query, body):
    sb = d.engine.sandbox(ref)
    try:
        with open(os.path.join(d.engine.root, "sandboxes", sb.id, "log"), errors="replace") as f:
            return {"Log": f.read()}
    except FileNotFoundError:
        return {"Log": ""}


@route("POST", "/reconcile")
def reconcile(d, query, body):
    return {"Done": d.engine.reconcile()}
