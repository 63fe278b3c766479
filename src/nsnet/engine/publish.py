"""A service's published ports (issue 17's routing mesh): Docker's `--publish` forms parsed into Docker's
PortConfig shape, which is what the spec stores and `service inspect` shows:
{"Protocol": "tcp", "TargetPort": 80, "PublishedPort": 8080, "PublishMode": "ingress"}.

- Long form `published=P,target=T[,protocol=tcp|udp][,mode=ingress|host]` (target mandatory, as Docker);
  short form `[P:]T[/proto]` (Docker's `-p`: no host IP, no range here).
- Ingress mode without a published port gets the lowest free one of Docker's dynamic range (30000-32767).
- One published port per protocol per swarm: a port is the whole cluster's, whether ingress (every node
  holds it) or host (each node that runs a task holds it), so two services never publish the same one.
Pure: what is taken comes from the caller (engine/services.py reads etcd and the host)."""
from __future__ import annotations

import re

from ..errors import Conflict, NsnetError

PROTOCOLS = ("tcp", "udp")
INGRESS = "ingress"   # Docker's publish modes
HOST = "host"
MODES = (INGRESS, HOST)
DYNAMIC = range(30000, 32768)   # Docker's range for an ingress port given without a published one
SHORT = re.compile(r"(?:(?P<published>\d+):)?(?P<target>\d+)(?:/(?P<proto>\w+))?")
LONG_KEYS = ("published", "target", "protocol", "mode")


def _port(text: str, what: str, spec: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise NsnetError(f"invalid publish spec {spec!r}: {what} port {text!r} is not a port (1 to 65535)")
    return int(text)


def parse(spec) -> dict:
    """One `--publish` / `-p` value as a PortConfig; PublishedPort 0 when not given."""
    if not isinstance(spec, str) or not spec.strip():
        raise NsnetError(f"invalid publish spec {spec!r}: use published=P,target=T[,protocol=tcp|udp]"
                         f"[,mode=ingress|host] or P:T[/tcp|udp]")
    spec = spec.strip()
    if "=" in spec:
        fields: dict[str, str] = {}
        for field in spec.split(","):
            key, sep, value = field.partition("=")
            key = key.strip().lower()
            if not sep or not key:
                raise NsnetError(f"invalid publish spec {spec!r}: invalid field {field!r}")
            if key not in LONG_KEYS:
                raise NsnetError(f"invalid publish spec {spec!r}: invalid field key {key!r} (use "
                                 f"{', '.join(LONG_KEYS)})")
            if key in fields:
                raise NsnetError(f"invalid publish spec {spec!r}: {key} is given twice")
            fields[key] = value.strip().lower()
        if "target" not in fields:
            raise NsnetError(f"invalid publish spec {spec!r}: missing mandatory field 'target'")
        proto, mode = fields.get("protocol", "tcp"), fields.get("mode", INGRESS)
        target = _port(fields["target"], "target", spec)
        published = _port(fields["published"], "published", spec) if fields.get("published") else 0
    else:
        m = SHORT.fullmatch(spec)
        if not m:
            why = ("port ranges are not supported; publish each port on its own" if "-" in spec else
                   "a host IP is not supported (a published port is every node's)" if spec.count(":") > 1 else
                   "use P:T[/tcp|udp] or published=P,target=T")
            raise NsnetError(f"invalid publish spec {spec!r}: {why}")
        proto, mode = (m["proto"] or "tcp").lower(), INGRESS
        target = _port(m["target"], "target", spec)
        published = _port(m["published"], "published", spec) if m["published"] else 0
    if proto not in PROTOCOLS:
        raise NsnetError(f"invalid publish spec {spec!r}: invalid protocol {proto!r} (use tcp or udp)")
    if mode not in MODES:
        raise NsnetError(f"invalid publish spec {spec!r}: invalid publish mode {mode!r}: must be either "
                         f"'ingress' or 'host'")
    if mode == HOST and not published:
        raise NsnetError(f"invalid publish spec {spec!r}: mode=host needs a published port")
    return {"Protocol": proto, "TargetPort": target, "PublishedPort": published, "PublishMode": mode}


def check_own(ports: list[dict]) -> None:
    """No published port twice in one service."""
    seen = set()
    for p in ports:
        key = (p["Protocol"], p["PublishedPort"])
        if p["PublishedPort"] and key in seen:
            raise Conflict(f"port {p['PublishedPort']}/{p['Protocol']} is published twice")
        seen.add(key)


def assign(ports: list[dict], taken: dict[tuple[str, int], str]) -> list[dict]:
    """`ports` with every published port checked against `taken` ((proto, port) -> who holds it, for the
    one-line refusal) and the missing ones picked from the dynamic range."""
    check_own(ports)
    out, mine = [], {(p["Protocol"], p["PublishedPort"]) for p in ports}
    for p in ports:
        key = (p["Protocol"], p["PublishedPort"])
        if p["PublishedPort"] and key in taken:
            raise Conflict(f"port {key[1]}/{key[0]} is already in use by {taken[key]}")
        if not p["PublishedPort"]:
            free = next((n for n in DYNAMIC if (p["Protocol"], n) not in taken and (p["Protocol"], n) not in mine), None)
            if free is None:
                raise Conflict(f"no free port left in {DYNAMIC.start}-{DYNAMIC.stop - 1} to publish {p['TargetPort']}")
            mine.add((p["Protocol"], free))
            p = {**p, "PublishedPort": free}
        out.append(p)
    return out


def removing(ports: list[dict], specs: list[dict]) -> list[dict]:
    """`ports` less those `--publish-rm` names: by target port and protocol (Docker removes by target
    port), and by published port and mode too when the spec gives them. One that names nothing is refused."""
    left = list(ports)
    for rm in specs:
        hit = [p for p in left if p["TargetPort"] == rm["TargetPort"] and p["Protocol"] == rm["Protocol"]
               and (not rm["PublishedPort"] or p["PublishedPort"] == rm["PublishedPort"])]
        if not hit:
            shown = f"{rm['PublishedPort']}:" if rm["PublishedPort"] else ""
            raise NsnetError(f"no published port {shown}{rm['TargetPort']}/{rm['Protocol']} to remove")
        left = [p for p in left if p not in hit]
    return left


def ingress(ports: list[dict]) -> list[dict]:
    return [p for p in ports if p["PublishMode"] == INGRESS]


def host(ports: list[dict]) -> list[dict]:
    return [p for p in ports if p["PublishMode"] == HOST]

