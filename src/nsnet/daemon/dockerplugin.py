"""Docker's plugin protocol on <root>/docker-plugin.sock: JSON over HTTP, POST /Plugin.Activate then
/IpamDriver.*, answered by the engine's Docker pools (engine/dockerpools.py). Driver name `nsnet`.

IPAM only so far: Activate says `Implements: ["IpamDriver"]`; the network driver is the next slice.
Field names are libnetwork's (moby: libnetwork/ipams/remote/api/api.go, libnetwork/docs/ipam.md).
Every answer is 200; a refusal is `{"Error": "one line"}`, which Docker shows as `remote: <line>`.
"""
from __future__ import annotations

import json
import logging

from ..engine.dockerpools import GLOBAL_SPACE, LOCAL_SPACE
from ..errors import NsnetError
from .httpd import Handler

log = logging.getLogger("nsnet.daemon")

SOCKET = "docker-plugin.sock"
IMPLEMENTS = ["IpamDriver"]


def _activate(d, body):
    return {"Implements": IMPLEMENTS}


def _capabilities(d, body):
    # No replay wanted: the pools and addresses are in nsnet's store already.
    return {"RequiresMACAddress": False, "RequiresRequestReplay": False}


def _spaces(d, body):
    return {"LocalDefaultAddressSpace": LOCAL_SPACE, "GlobalDefaultAddressSpace": GLOBAL_SPACE}


def _request_pool(d, body):
    f = _fields(body, AddressSpace=str, Pool=str, SubPool=str, Options=dict, V6=bool)
    pool = d.engine.docker_pools.request_pool(f["AddressSpace"], f["Pool"], f["SubPool"], f["Options"], f["V6"])
    return {"PoolID": pool["id"], "Pool": pool["subnet"], "Data": {}}


def _release_pool(d, body):
    d.engine.docker_pools.release_pool(_fields(body, PoolID=str)["PoolID"])
    return {}


def _request_address(d, body):
    f = _fields(body, PoolID=str, Address=str, Options=dict)
    return {"Address": d.engine.docker_pools.request_address(f["PoolID"], f["Address"], f["Options"]), "Data": {}}


def _release_address(d, body):
    f = _fields(body, PoolID=str, Address=str)
    d.engine.docker_pools.release_address(f["PoolID"], f["Address"])
    return {}


ROUTES = {
    "/Plugin.Activate": _activate,
    "/IpamDriver.GetCapabilities": _capabilities,
    "/IpamDriver.GetDefaultAddressSpaces": _spaces,
    "/IpamDriver.RequestPool": _request_pool,
    "/IpamDriver.ReleasePool": _release_pool,
    "/IpamDriver.RequestAddress": _request_address,
    "/IpamDriver.ReleaseAddress": _release_address,
}
_ZERO = {str: "", dict: {}, bool: False}
MAX_TEXT = 255
_WHAT = {str: f"a string of at most {MAX_TEXT} characters", dict: "a JSON object", bool: "true or false"}


def _fields(body, **types) -> dict:
    """The named fields, typed, absent or null ones as their zero value; other fields are left alone
    (newer Dockers send more). Options must map strings to strings."""
    out = {}
    for name, typ in types.items():
        value = body.get(name)
        if value is None:
            value = _ZERO[typ]
        if not isinstance(value, typ) or (typ is str and len(value) > MAX_TEXT):
            raise NsnetError(f"{name} must be {_WHAT[typ]}")
        if typ is dict and not all(isinstance(k, str) and isinstance(v, str) and len(k) <= MAX_TEXT
                                   and len(v) <= 4096 for k, v in value.items()):
            raise NsnetError(f"{name} must map strings to strings")
        out[name] = value
    return out


def dispatch(daemon, method: str, path: str, raw: bytes, peer=None) -> tuple[int, dict]:
    fn = ROUTES.get(path)
    if fn is None:
        # Docker asks a plugin for what it may not implement (e.g. NetworkDriver.*): say so, as an Error.
        return 200, {"Error": f"nsnet's plugin does not implement {path[:100]!r}: "
                              f"it implements {', '.join(IMPLEMENTS)}"}
    if method != "POST":
        return 405, {"Error": f"{method[:20]} is not allowed on {path}: use POST"}
    try:
        body = json.loads(raw or b"null")
    except (ValueError, UnicodeDecodeError):
        return 200, {"Error": "the body is not JSON"}
    if body is None:
        body = {}
    if not isinstance(body, dict):
        return 200, {"Error": "the body must be a JSON object"}
    try:
        return 200, fn(daemon, body)
    except NsnetError as e:
        log.info("docker plugin %s refused: %s", path, e)
        return 200, {"Error": " ".join(str(e).split())}


class PluginHandler(Handler):
    dispatch = staticmethod(dispatch)
