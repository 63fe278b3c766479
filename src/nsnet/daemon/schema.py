"""The shape of every API request, as data: one schema per endpoint, checked by one function.

Shape and types only (a string where a string goes, real JSON booleans, bounded sizes); what the
values mean (names, subnets, ports) is checked by nsnet.requests and the engine.

A schema is a dict {"type": T, ...}; T is one of
  "string"  "max": longest length
  "bool"    a JSON true or false, nothing else ("no", 0 and 1 are refused)
  "int"     "min"/"max"; a JSON integer, never a boolean
  "number"  (query values only) a decimal string such as "10" or "0.5"; "min"/"max"
  "flag"    (query values only) 1/0/true/false
  "json"    (query values only) a JSON text whose value has the shape "value"
  "list"    "items": the schema of each; "max": most items
  "map"     a JSON object with string keys of up to KEY_MAX characters; "values": the schema of each; "max"
  "object"  "fields": {name: schema}; a field with "required": True must be there and not null, the
            others may be absent or null (the CLI sends null for an option not given).
Unknown fields and query parameters are refused, not ignored (Docker ignores them): our clients are
our own CLI and scripts, and a misspelled "Internel" silently dropped would build something else
than what was asked, the way a typo in config.toml would.
"""
from __future__ import annotations

import json
import math

from ..errors import NsnetError

KEY_MAX = 255
SHORT = {"type": "string", "max": 255}                     # names, addresses, drivers, hostnames
SHORTS = {"type": "list", "items": SHORT, "max": 256}
LABELS = {"type": "map", "values": {"type": "string", "max": 4096}, "max": 256}   # labels, options
BOOL = {"type": "bool"}
NO_BODY = {"type": "object", "fields": {}}
FLAG = {"type": "flag"}

NETWORK_CREATE = {"type": "object", "fields": {
    "Name": dict(SHORT, required=True), "Driver": SHORT,
    "Subnets": SHORTS, "Gateways": SHORTS, "IPRanges": SHORTS,
    "AuxAddresses": {"type": "map", "values": SHORT, "max": 256},
    "Options": LABELS, "Labels": LABELS,
    "Internal": BOOL, "Attachable": BOOL, "EnableIPv6": BOOL, "AllowOverlap": BOOL,
}}

ATTACHMENT = {"IP": SHORT, "IP6": SHORT, "Aliases": SHORTS}

SANDBOX_RUN = {"type": "object", "fields": {
    "Name": SHORT, "Hostname": SHORT,
    "Cmd": {"type": "list", "items": {"type": "string", "max": 131072}, "max": 4096, "required": True},
    "Ports": SHORTS, "Dns": SHORTS, "AutoRemove": BOOL,
    "Networks": {"type": "list", "max": 64, "items": {"type": "object", "fields": {
        "Network": dict(SHORT, required=True), **ATTACHMENT}}},
    # A process the caller started and hands over (foreground `run`): it must be the caller's own.
    "Pid": {"type": "int", "min": 1, "max": 2**22},
}}

PATH = {"type": "string", "max": 4096}
# A CNI plugin's call: its CNI_* variables, and the network configuration as the runtime wrote it (any JSON
# object; engine/cni.py reads it as CNI's spec says).
CNI_CALL = {"type": "object", "fields": {
    "Command": dict(SHORT, required=True), "ContainerID": SHORT, "Netns": PATH, "IfName": SHORT,
    "Args": {"type": "string", "max": 65536}, "Path": PATH, "Config": {"type": "string", "max": 1 << 20, "required": True},
}}
_SWARM = {
    "Store": dict(SHORT, max=4096, required=True), "AdvertiseAddr": dict(SHORT, required=True), "NodeName": SHORT,
    "StoreCA": PATH, "StoreCert": PATH, "StoreKey": PATH, "StoreUser": SHORT, "StorePassword": SHORT,
}
SWARM_INIT = {"type": "object", "fields": {
    **_SWARM, "DefaultAddrPool": {"type": "list", "items": SHORT, "max": 64},
    "SubnetSize": {"type": "int", "min": 1, "max": 128}, "DataPathPort": {"type": "int", "min": 1, "max": 65535},
}}
SWARM_JOIN = {"type": "object", "fields": _SWARM}
# Replicas: any integer here; engine/services.py says in one line what it takes (0 to 10,000).
REPLICAS = {"type": "int", "min": -2**31, "max": 2**31}
ARGV = {"type": "list", "items": {"type": "string", "max": 131072}, "max": 4096}   # a command, an environment
SERVICE_CREATE = {"type": "object", "fields": {
    "Name": dict(SHORT, required=True), "Replicas": REPLICAS, "Networks": {"type": "list", "items": SHORT, "max": 64},
    "EndpointMode": SHORT, "RestartCondition": SHORT, "Env": ARGV, "Cmd": dict(ARGV, required=True),
    "Publish": SHORTS,   # Docker's --publish / -p forms, parsed by engine/publish.py
}}

# (method, path) -> {"query": {name: schema}, "body": schema or None (no body at all)}.
# Paths are api.py's routes; {ref} is a network's or a sandbox's name or id.
ENDPOINTS = {
    ("GET", "/_ping"): {"query": {}, "body": None},
    ("GET", "/info"): {"query": {}, "body": None},
    ("GET", "/networks"): {"query": {"filters": {"type": "json", "value": {
        "type": "map", "values": SHORT, "max": 16}}}, "body": None},
    ("POST", "/networks"): {"query": {}, "body": NETWORK_CREATE},
    ("POST", "/networks/prune"): {"query": {}, "body": NO_BODY},
    ("GET", "/networks/{ref}"): {"query": {}, "body": None},
    ("DELETE", "/networks/{ref}"): {"query": {}, "body": None},
    ("POST", "/networks/{ref}/connect"): {"query": {}, "body": {"type": "object", "fields": {
        "Sandbox": dict(SHORT, required=True), **ATTACHMENT}}},
    ("POST", "/networks/{ref}/disconnect"): {"query": {}, "body": {"type": "object", "fields": {
        "Sandbox": dict(SHORT, required=True), "Force": BOOL}}},
    ("GET", "/sandboxes"): {"query": {"all": FLAG}, "body": None},
    ("POST", "/sandboxes"): {"query": {}, "body": SANDBOX_RUN},
    ("GET", "/sandboxes/{ref}"): {"query": {}, "body": None},
    ("POST", "/sandboxes/{ref}/stop"): {"query": {"t": {"type": "number", "min": 0, "max": 3600}},
                                        "body": NO_BODY},
    ("POST", "/sandboxes/{ref}/exited"): {"query": {}, "body": {"type": "object", "fields": {
        "ExitCode": {"type": "int", "min": 0, "max": 255}}}},
    ("DELETE", "/sandboxes/{ref}"): {"query": {"force": FLAG}, "body": None},
    ("GET", "/sandboxes/{ref}/logs"): {"query": {}, "body": None},
    ("POST", "/reconcile"): {"query": {}, "body": NO_BODY},
    ("POST", "/cni"): {"query": {}, "body": CNI_CALL},
    ("POST", "/swarm/init"): {"query": {}, "body": SWARM_INIT},
    ("POST", "/swarm/join"): {"query": {}, "body": SWARM_JOIN},
    ("POST", "/swarm/leave"): {"query": {"force": FLAG}, "body": NO_BODY},
    ("GET", "/nodes"): {"query": {}, "body": None},
    ("GET", "/nodes/{ref}"): {"query": {}, "body": None},   # {ref}: a node's ID, unique ID prefix or name
    ("DELETE", "/nodes/{ref}"): {"query": {"force": FLAG}, "body": None},
    ("GET", "/services"): {"query": {}, "body": None},
    ("POST", "/services"): {"query": {}, "body": SERVICE_CREATE},
    ("GET", "/services/{ref}"): {"query": {}, "body": None},   # {ref}: a service's ID, unique ID prefix or name
    ("DELETE", "/services/{ref}"): {"query": {}, "body": None},
    ("POST", "/services/{ref}/scale"): {"query": {}, "body": {"type": "object", "fields": {
        "Replicas": dict(REPLICAS, required=True)}}},
    ("GET", "/services/{ref}/tasks"): {"query": {}, "body": None},
    # tail: the last lines of each task's log (absent: all of it)
    ("GET", "/services/{ref}/logs"): {"query": {"tail": {"type": "json", "value": {"type": "int", "min": 0,
                                                                                   "max": 2**31}}}, "body": None},
    ("POST", "/services/{ref}/update"): {"query": {}, "body": {"type": "object", "fields": {
        "Replicas": REPLICAS, "NetworkAdd": SHORTS, "NetworkRm": SHORTS, "PublishAdd": SHORTS, "PublishRm": SHORTS,
        "EnvAdd": ARGV, "EnvRm": SHORTS, "Args": ARGV, "Force": BOOL,
        "Parallelism": {"type": "int", "min": -2**31, "max": 2**31}, "DelayMs": {"type": "int", "min": 0, "max": 3600_000}}}},
}


class BadRequest(NsnetError):
    status = 400


def _kind(value) -> str:
    """The JSON name of a value's type, for messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    return "a list" if isinstance(value, list) else "an object"


_WANTED = {"string": "a string", "bool": "true or false", "int": "an integer", "list": "a list",
           "map": "an object", "object": "an object"}


def check(schema: dict, value, where: str) -> None:
    """Raise BadRequest (one line, naming the field) unless `value` has the shape `schema` says."""
    t = schema["type"]
    ok = {"string": isinstance(value, str), "bool": isinstance(value, bool),
          "int": isinstance(value, int) and not isinstance(value, bool), "list": isinstance(value, list),
          "map": isinstance(value, dict), "object": isinstance(value, dict)}[t]
    if not ok:
        raise BadRequest(f"{where} must be {_WANTED[t]}, not {_kind(value)}")
    if t == "string":
        if len(value) > schema.get("max", math.inf):
            raise BadRequest(f"{where} is too long: at most {schema['max']} characters")
        if "\0" in value:  # no field of Docker's API holds one, and the kernel takes none (argv, paths, names)
            raise BadRequest(f"{where} contains a NUL character")
    elif t == "int":
        _bounds(schema, value, where)
    elif t in ("list", "map"):
        if len(value) > schema.get("max", math.inf):
            raise BadRequest(f"{where} has too many entries: at most {schema['max']}")
        if t == "list":
            for i, item in enumerate(value):
                check(schema["items"], item, f"{where}[{i}]")
        else:
            for key, item in value.items():
                if len(key) > KEY_MAX:
                    raise BadRequest(f"{where} has a key longer than {KEY_MAX} characters")
                check(schema["values"], item, f"{where}[{key[:40]!r}]")
    elif t == "object":
        fields = schema["fields"]
        for name, item in value.items():
            if name not in fields:
                known = ", ".join(fields) or "none"
                raise BadRequest(f"unknown field {name[:40]!r} in {where}: the fields are {known}")
            if item is None and not fields[name].get("required"):
                continue
            check(fields[name], item, f"{where}.{name}" if where != "the body" else name)
        for name, field in fields.items():
            if field.get("required") and value.get(name) is None:
                raise BadRequest(f"{where} needs the field {name}")


def _bounds(schema: dict, value, where: str) -> None:
    if not schema.get("min", -math.inf) <= value <= schema.get("max", math.inf):
        raise BadRequest(f"{where} must be between {schema.get('min')} and {schema.get('max')}, not {value}")


def body(schema: dict | None, raw: bytes):
    """The request's JSON body, checked against the endpoint's schema."""
    if schema is None:
        if raw.strip():
            raise BadRequest("this request takes no body")
        return {}
    if not raw.strip():
        value = {}
    else:
        try:
            value = json.loads(raw)
        except (ValueError, RecursionError) as e:
            raise BadRequest(f"the body is not valid JSON: {str(e).splitlines()[0]}") from None
    check(schema, value, "the body")
    return value


def query(schema: dict, params: dict[str, list[str]]) -> dict:
    """The query parameters, checked and converted (flags to bool, numbers to float, JSON decoded)."""
    out = {}
    for name, values in params.items():
        if name not in schema:
            known = ", ".join(schema) or "none"
            raise BadRequest(f"unknown query parameter {name[:40]!r}: the parameters are {known}")
        if len(values) > 1:
            raise BadRequest(f"query parameter {name} is given {len(values)} times")
        out[name] = _query_value(schema[name], values[0], name)
    return out


def _query_value(schema: dict, text: str, name: str):
    t = schema["type"]
    if t == "flag":
        if text.lower() not in ("1", "0", "true", "false"):
            raise BadRequest(f"query parameter {name} must be 1, 0, true or false, not {text[:40]!r}")
        return text.lower() in ("1", "true")
    if t == "number":
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not math.isfinite(value):
            raise BadRequest(f"query parameter {name} must be a number, not {text[:40]!r}")
        _bounds(schema, value, f"query parameter {name}")
        return value
    try:
        value = json.loads(text)
    except (ValueError, RecursionError) as e:
        raise BadRequest(f"query parameter {name} is not valid JSON: {str(e).splitlines()[0]}") from None
    check(schema["value"], value, f"query parameter {name}")
    return value
