"""The CNI plugin `nsnet` (installed as /opt/cni/bin/nsnet): a runtime's call, handed to the nsnet daemon.

A runtime runs it once per ADD/DEL/CHECK/STATUS/GC/VERSION, with the call in CNI_* variables and the network
configuration on stdin (CNI spec 1.1). It checks what the spec has every plugin check (the command, the
variables it needs, the JSON, the version), then posts the call to the daemon of the configuration's "root"
(starting one when none answers, as the CLI does) and prints the daemon's answer: a result on stdout and exit
0, or the spec's error object on stdout and exit 1. VERSION is answered here, without a daemon.

Its start-up is on every container's path: standard library and nsnet.client only.
"""
from __future__ import annotations

import json
import os
import re
import sys

SUPPORTED = ("0.4.0", "1.0.0", "1.1.0")
LATEST = SUPPORTED[-1]

# The spec's error codes (section 5, "Error").
INCOMPATIBLE_VERSION, UNSUPPORTED_FIELD, UNKNOWN_CONTAINER, INVALID_ENV = 1, 2, 3, 4
IO_FAILURE, DECODING_FAILURE, INVALID_CONFIG, TRY_AGAIN = 5, 6, 7, 11
NOT_AVAILABLE = 50

# The variables each command needs (section 2); the rest are optional.
REQUIRED = {
    "ADD": ("CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME"),
    "CHECK": ("CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME"),
    "DEL": ("CNI_CONTAINERID", "CNI_IFNAME"),
    "GC": ("CNI_PATH",),
    "STATUS": (),
    "VERSION": (),
}
NEEDS_1_1 = ("STATUS", "GC")   # added in 1.1.0: an older configuration does not allow them (as libcni's skel)
CONTAINER_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]*")
VERSION_RE = re.compile(r"\d+\.\d+\.\d+")


class CniError(Exception):
    def __init__(self, code: int, msg: str, details: str = ""):
        super().__init__(msg)
        self.code, self.msg, self.details = code, msg, details


def _version_key(v: str) -> tuple[int, ...]:
    return tuple(int(p) for p in v.split("."))


def parse(env, stdin: bytes) -> tuple[str, dict, dict]:
    """(command, configuration, the call's variables), or CniError as the spec shapes it."""
    command = env.get("CNI_COMMAND", "")
    if not command:
        raise CniError(INVALID_ENV, "required env variables [CNI_COMMAND] missing")
    if command not in REQUIRED:
        raise CniError(INVALID_ENV, f"unknown CNI_COMMAND: {command[:40]}")
    try:
        conf = json.loads(stdin) if stdin.strip() or command != "VERSION" else {}
    except (ValueError, RecursionError) as e:
        raise CniError(DECODING_FAILURE, f"error unmarshalling network config: {str(e).splitlines()[0]}") from None
    if not isinstance(conf, dict):
        raise CniError(DECODING_FAILURE, "error unmarshalling network config: not a JSON object")
    version = conf.get("cniVersion", "")
    if not isinstance(version, str) or (version and not VERSION_RE.fullmatch(version)):
        raise CniError(DECODING_FAILURE, f"invalid cniVersion {str(version)[:40]!r}")
    if command == "VERSION":
        return command, conf, {}
    if version not in SUPPORTED:
        raise CniError(INCOMPATIBLE_VERSION, "incompatible CNI versions",
                       f"config is {version or 'unversioned'}, plugin supports {list(SUPPORTED)}")
    if command in NEEDS_1_1 and _version_key(version) < (1, 1, 0):
        raise CniError(INCOMPATIBLE_VERSION, f"config version does not allow {command}")
    missing = [v for v in REQUIRED[command] if not env.get(v)]
    if missing:
        raise CniError(INVALID_ENV, f"required env variables [{','.join(missing)}] missing")
    cid = env.get("CNI_CONTAINERID", "")
    if cid and not CONTAINER_ID_RE.fullmatch(cid):
        raise CniError(INVALID_ENV, f"invalid CNI_CONTAINERID {cid[:80]!r}: it must start with a letter or digit, "
                                    "then letters, digits, '_', '.' or '-'")
    for key in ("name", "type"):
        if not isinstance(conf.get(key), str) or not conf.get(key):
            raise CniError(INVALID_CONFIG, f"the network configuration needs a string {key!r}")
    call = {"Command": command, "ContainerID": cid, "Netns": env.get("CNI_NETNS", ""),
            "IfName": env.get("CNI_IFNAME", ""), "Args": env.get("CNI_ARGS", ""), "Path": env.get("CNI_PATH", "")}
    return command, conf, call


def version_result(conf: dict) -> dict:
    return {"cniVersion": conf.get("cniVersion") or LATEST, "supportedVersions": list(SUPPORTED)}


def ask_daemon(command: str, conf: dict, call: dict):
    """The daemon's answer: a result (ADD), or None; CniError as the daemon shaped it."""
    from .client import ApiError, Client  # after the checks: a bad call costs no import

    root = conf.get("root")
    if root is not None and (not isinstance(root, str) or not root.startswith("/")):
        raise CniError(INVALID_CONFIG, f"invalid \"root\" {str(root)[:80]!r}: give an absolute path")
    client = Client(root or os.environ.get("NSNET_ROOT") or None)
    try:
        answer = client.post("/cni", dict(call, Config=json.dumps(conf)))
    except ApiError as e:
        code = NOT_AVAILABLE if command == "STATUS" else TRY_AGAIN if e.status == 503 else INVALID_CONFIG
        raise CniError(code, str(e)) from None
    except OSError as e:
        raise CniError(NOT_AVAILABLE if command == "STATUS" else TRY_AGAIN,
                       f"the nsnet daemon of {client.root} does not answer: {e}") from None
    error = answer.get("Error")
    if error:
        raise CniError(error["code"], error["msg"], error.get("details", ""))
    return answer.get("Result")


def main(env=None, stdin=None, stdout=None) -> int:
    env = os.environ if env is None else env
    stdout = stdout or sys.stdout
    version = LATEST
    try:
        try:
            raw = stdin if stdin is not None else sys.stdin.buffer.read()
        except OSError as e:
            raise CniError(IO_FAILURE, f"error reading from stdin: {e}") from None
        try:  # the error's version is the configuration's, when it has a well-formed one
            v = json.loads(raw).get("cniVersion")
            version = v if v in SUPPORTED else version
        except Exception:
            pass
        command, conf, call = parse(env, raw)
        result = version_result(conf) if command == "VERSION" else ask_daemon(command, conf, call)
    except CniError as e:
        json.dump({"cniVersion": version, "code": e.code, "msg": e.msg, "details": e.details}, stdout)
        stdout.write("\n")
        return 1
    if result is not None:
        json.dump(result, stdout)
        stdout.write("\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
