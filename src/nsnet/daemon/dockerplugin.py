"""Docker's plugin protocol on <root>/docker-plugin.sock: JSON over HTTP, POST /Plugin.Activate then
/NetworkDriver.* (answered by the engine's DockerNets, engine/dockernet.py) and /IpamDriver.* (its
DockerPools, engine/dockerpools.py). Driver and IPAM driver name `nsnet`.

Field names are libnetwork's (moby: libnetwork/drivers/remote/api/api.go, libnetwork/ipams/remote/api/api.go).
Every answer is 200; a refusal is one line, `{"Err": …}` for the network driver and `{"Error": …}` for the
IPAM driver (their APIs differ), which Docker shows as `remote: <line>` or the line itself.
"""
from __future__ import annotations

import json
import logging

from ..engine.dockernet import PORTMAP
from ..engine.dockerpools import GLOBAL_SPACE, LOCAL_SPACE
from ..errors import NsnetError
from .httpd import Handler

log = logging.getLogger("nsnet.daemon")

SOCKET = "docker-plugin.sock"
IMPLEMENTS = ["NetworkDriver", "IpamDriver"]


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


# ---- NetworkDriver ---------------------------------------------------------------------------------

def _net_capabilities(d, body):
    return {"Scope": "local", "ConnectivityScope": "local"}


def _create_network(d, body):
    f = _fields(body, NetworkID=str, Options=OBJECT, IPv4Data=list, IPv6Data=list)
    d.engine.docker_nets.create_network(f["NetworkID"], f["Options"], f["IPv4Data"], f["IPv6Data"])
    return {}


def _delete_network(d, body):
    d.engine.docker_nets.delete_network(_fields(body, NetworkID=str)["NetworkID"])
    return {}


def _create_endpoint(d, body):
    f = _fields(body, NetworkID=str, EndpointID=str, Interface=OBJECT)
    d.engine.docker_nets.create_endpoint(f["NetworkID"], f["EndpointID"], f["Interface"])
    return {"Interface": {}}   # Docker gave the addresses (and the MAC, when it has one): nothing to add


def _delete_endpoint(d, body):
    d.engine.docker_nets.delete_endpoint(_fields(body, EndpointID=str)["EndpointID"])
    return {}


def _endpoint_info(d, body):
    return {"Value": d.engine.docker_nets.info(_fields(body, EndpointID=str)["EndpointID"])}


def _join(d, body):
    return d.engine.docker_nets.join(_fields(body, EndpointID=str)["EndpointID"])


def _leave(d, body):
    d.engine.docker_nets.leave(_fields(body, EndpointID=str)["EndpointID"])
    return {}


def _program_external(d, body):
    f = _fields(body, EndpointID=str, Options=OBJECT)
    portmap = f["Options"].get(PORTMAP) or []
    if not isinstance(portmap, list):
        raise NsnetError(f"{PORTMAP} must be a list of port bindings")
    d.engine.docker_nets.publish(f["EndpointID"], portmap)
    return {}


def _revoke_external(d, body):
    d.engine.docker_nets.unpublish(_fields(body, EndpointID=str)["EndpointID"])
    return {}


def _nothing(d, body):
    return {}


ROUTES = {
    "/NetworkDriver.GetCapabilities": _net_capabilities,
    "/NetworkDriver.CreateNetwork": _create_network,
    "/NetworkDriver.DeleteNetwork": _delete_network,
    "/NetworkDriver.CreateEndpoint": _create_endpoint,
    "/NetworkDriver.DeleteEndpoint": _delete_endpoint,
    "/NetworkDriver.EndpointOperInfo": _endpoint_info,
    "/NetworkDriver.Join": _join,
    "/NetworkDriver.Leave": _leave,
    "/NetworkDriver.ProgramExternalConnectivity": _program_external,
    "/NetworkDriver.RevokeExternalConnectivity": _revoke_external,
    "/NetworkDriver.DiscoverNew": _nothing,      # local scope: no peers to hear of
    "/NetworkDriver.DiscoverDelete": _nothing,
    "/Plugin.Activate": _activate,
    "/IpamDriver.GetCapabilities": _capabilities,
    "/IpamDriver.GetDefaultAddressSpaces": _spaces,
    "/IpamDriver.RequestPool": _request_pool,
    "/IpamDriver.ReleasePool": _release_pool,
    "/IpamDriver.RequestAddress": _request_address,
    "/IpamDriver.ReleaseAddress": _release_address,
}
OBJECT = "object"   # a JSON object of any values (a dict is one of strings to strings)
_ZERO = {str: "", dict: {}, bool: False, list: [], OBJECT: {}}
_TYPE = {OBJECT: dict}
MAX_TEXT = 255
_WHAT = {str: f"a string of at most {MAX_TEXT} characters", dict: "a JSON object", bool: "true or false",
         list: "a JSON list", OBJECT: "a JSON object"}


def _fields(body, **types) -> dict:
    """The named fields, typed, absent or null ones as their zero value; other fields are left alone
    (newer Dockers send more). Options must map strings to strings."""
    out = {}
    for name, typ in types.items():
        value = body.get(name)
        if value is None:
            value = _ZERO[typ]
        if not isinstance(value, _TYPE.get(typ, typ)) or (typ is str and len(value) > MAX_TEXT):
            raise NsnetError(f"{name} must be {_WHAT[typ]}")
        if typ is dict and not all(isinstance(k, str) and isinstance(v, str) and len(k) <= MAX_TEXT
                                   and len(v) <= 4096 for k, v in value.items()):
            raise NsnetError(f"{name} must map strings to strings")
        out[name] = value
    return out


def dispatch(daemon, method: str, path: str, raw: bytes, peer=None) -> tuple[int, dict]:
    err = "Err" if path.startswith("/NetworkDriver.") else "Error"
    fn = ROUTES.get(path)
    if fn is None:
        # Docker asks a plugin for what it may not implement: say so, in one line.
        return 200, {err: f"nsnet's plugin does not implement {path[:100]!r}: "
                          f"it implements {', '.join(IMPLEMENTS)}"}
    if method != "POST":
        return 405, {err: f"{method[:20]} is not allowed on {path}: use POST"}
    try:
        body = json.loads(raw or b"null")
    except (ValueError, UnicodeDecodeError):
        return 200, {err: "the body is not JSON"}
    if body is None:
        body = {}
    if not isinstance(body, dict):
        return 200, {err: "the body must be a JSON object"}
    try:
        return 200, fn(daemon, body)
    except NsnetError as e:
        log.info("docker plugin %s refused: %s", path, e)
        return 200, {err: " ".join(str(e).split())}


class PluginHandler(Handler):
    dispatch = staticmethod(dispatch)
