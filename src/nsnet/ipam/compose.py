"""Predict the subnets Docker would give a Compose file's networks on this host, flag the ones
that collide with our evidence, and suggest a fix.

How Docker Compose v2 behaves (docker/compose pkg/compose/create.go, compose-go):
- it creates only networks some enabled service uses (Project.WithoutUnnecessaryResources);
  a service without `networks:` (and without `network_mode:`) joins `default`;
- `external: true` networks are looked up, never created; an existing network with the same
  name is reused;
- ensureNetworks ranges over a Go map, so the creation order of pool-allocated networks is not
  fixed. We predict them in name order, and the fix pins every pool-allocated network when any
  of them collides, since any of them may land on the colliding subnet;
- Docker's allocator takes the first default-pool subnet overlapping no existing network, no
  IPv4 on-link route and no nameserver (libnetwork netutils.InferReservedNetworks). It knows
  nothing of live peers, neighbours or reserved office ranges: that is what we flag.
"""

from __future__ import annotations

import ipaddress
import json
import re
from dataclasses import dataclass, field

from nsnet.errors import NsnetError
from nsnet.facts import Evidence, Network, as_network
from nsnet.ipam.evidence import overlapping
from nsnet.ipam.pools import DEFAULT_POOLS, Pool, parse_network, pick_subnet

_NO_SUBNET_DRIVERS = {"host", "none", "null"}
# Where a fix may look beyond the configured pools, most Docker-like first.
_FIX_SPACE = (Pool(ipaddress.ip_network("172.16.0.0/12"), 16), Pool(ipaddress.ip_network("10.0.0.0/8"), 16),
              Pool(ipaddress.ip_network("192.168.0.0/16"), 20))


@dataclass(frozen=True)
class Prediction:
    network_name: str                 # the key under `networks:` in the Compose file
    subnet: Network
    source: str                       # "explicit" (ipam block), "pool" (Docker picks), "existing" (reused)
    collisions: list[Evidence] = field(default_factory=list)
    docker_name: str = ""             # the name Docker gives it, e.g. myproj_default

    def as_dict(self) -> dict:
        return {"Network": self.network_name, "Name": self.docker_name, "Subnet": str(self.subnet),
                "Source": self.source,
                "Collisions": [{"Kind": e.kind, "Range": str(e.network), "Detail": e.detail} for e in self.collisions]}


@dataclass(frozen=True)
class Fix:
    subnets: dict[str, Network]       # network key -> subnet for its ipam block
    compose_yaml: str                 # the `networks:` ipam blocks to merge into the Compose file
    pool: Pool | None                 # a default-address-pools entry for Docker's daemon.json
    daemon_json: str


def _load(compose_text: str) -> dict:
    import yaml  # PyYAML costs ~20 ms to import: only when a Compose file is read

    try:
        doc = yaml.safe_load(compose_text)
    except yaml.YAMLError as e:
        first = str(e).splitlines()[0] if str(e) else "syntax error"
        raise NsnetError(f"cannot parse the Compose file: {first}; check its YAML syntax") from None
    if doc is None:
        doc = {}
    if not isinstance(doc, dict):
        raise NsnetError("the Compose file is not a mapping; it should start with keys such as services:")
    return doc


def _project_name(name: str) -> str:
    # Compose's normalisation: lower case, only [a-z0-9_-].
    return re.sub(r"[^a-z0-9_-]", "", name.lower())


def _mapping(value, what: str) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise NsnetError(f"{what} in the Compose file must be a mapping")
    return value


def _service_networks(service: dict) -> list[str]:
    if service.get("network_mode"):
        return []  # host, none, bridge, service:x, container:x: no project network
    nets = service.get("networks")
    if not nets:
        return ["default"]
    if isinstance(nets, list):
        return [str(n) for n in nets]
    return [str(n) for n in _mapping(nets, "a service's networks")]


def networks_to_create(doc: dict, project: str, profiles=()) -> list[tuple[str, str, dict]]:
    """(key, Docker name, config) of the networks Compose would create, in name order."""
    services = _mapping(doc.get("services"), "services")
    declared = _mapping(doc.get("networks"), "networks")
    used: set[str] = set()
    for sname, service in services.items():
        service = service or {}
        wanted = service.get("profiles") or []
        if wanted and not set(wanted) & set(profiles) and "*" not in profiles:
            continue  # disabled by profiles
        for key in _service_networks(service):
            if key != "default" and key not in declared:
                raise NsnetError(f"service {sname} refers to undefined network {key}; declare it under networks:")
            used.add(key)
    out = []
    for key in sorted(used):
        cfg = declared.get(key) or {}
        if cfg.get("external"):
            continue
        if str(cfg.get("driver") or "bridge") in _NO_SUBNET_DRIVERS:
            continue
        out.append((key, str(cfg.get("name") or f"{project}_{key}"), cfg))
    return out


def _explicit_subnets(key: str, cfg: dict) -> list[Network]:
    ipam = _mapping(cfg.get("ipam"), f"networks.{key}.ipam")
    subnets = []
    for entry in ipam.get("config") or []:
        if not isinstance(entry, dict) or not entry.get("subnet"):
            continue
        text = str(entry["subnet"])
        if "$" in text:
            raise NsnetError(f"network {key}: subnet {text!r} uses variables; pass the output of "
                             "`docker compose config` instead")
        subnets.append(parse_network(text, f"subnet of network {key}"))
    return subnets


def docker_reserved(evidence) -> list[Evidence]:
    """The evidence Docker's own allocator also avoids: its networks, IPv4 on-link routes, nameservers."""
    return [e for e in evidence if e.kind in ("docker", "resolver") or (e.kind == "route" and e.onlink)]


def _existing(existing) -> tuple[dict[str, Network], list[Evidence]]:
    named, ev = {}, []
    for item in existing:
        if isinstance(item, tuple):
            name, net = item[0], as_network(item[1])
            named[name] = net
            ev.append(Evidence("docker", net, f"the subnet of Docker network '{name}'"))
        else:
            ev.append(Evidence("docker", as_network(item), "the subnet of an existing Docker network"))
    return named, ev


def predict(compose_text: str, project: str | None, existing=(), pools=DEFAULT_POOLS, evidence=(),
            profiles=(), fallback_project: str | None = None) -> list[Prediction]:
    """The subnet each network of the Compose file would get from Docker here, with collisions.
    `existing` lists Docker's current networks as subnets or (name, subnet) pairs. The project
    name is `project`, else the file's `name:`, else `fallback_project` (Compose: the folder)."""
    doc = _load(compose_text)
    project = _project_name(project or str(doc.get("name") or "") or fallback_project or "")
    if not project:
        raise NsnetError("the Compose project has no name; pass the project name (the directory name Compose would use)")
    evidence = list(evidence)
    named, taken = _existing(existing)
    taken += docker_reserved(evidence)
    out: list[Prediction] = []
    for key, name, cfg in networks_to_create(doc, project, profiles):
        if name in named:  # Compose reuses it; its own Docker evidence is not a collision
            net = named[name]
            mine = [e for e in overlapping(net, evidence) if not (e.kind == "docker" and e.network == net)]
            out.append(Prediction(key, net, "existing", mine, name))
            continue
        explicit = _explicit_subnets(key, cfg)
        for net in explicit:
            # Docker refuses an explicit subnet overlapping another network: report that too.
            clash = [e for e in overlapping(net, taken) if e.kind == "docker" and e not in evidence]
            out.append(Prediction(key, net, "explicit", overlapping(net, evidence) + clash, name))
            taken.append(Evidence("docker", net, f"the subnet Compose gives network '{name}'"))
        if any(n.version == 4 for n in explicit) or cfg.get("enable_ipv4") is False:
            continue
        try:
            net, _ = pick_subnet(pools, taken)
        except NsnetError:
            raise NsnetError(f"Docker would fail to create network {name}: no default address pool is free; "
                             "give it an ipam subnet or add default-address-pools to daemon.json") from None
        out.append(Prediction(key, net, "pool", overlapping(net, evidence), name))
        taken.append(Evidence("docker", net, f"the subnet Docker would give network '{name}'"))
    return out


def suggest_fix(predictions, pools=DEFAULT_POOLS, evidence=(), existing=()) -> Fix:
    """Subnets for the colliding networks (and, if a pool-allocated one collides, for every
    pool-allocated one, since their order is not fixed) plus a daemon.json pool, all avoiding
    every evidence, the existing networks and each other."""
    evidence = list(evidence)
    _, avoid = _existing(existing)
    avoid += evidence
    pool_collides = any(p.collisions and p.source == "pool" for p in predictions)
    fix_keys = {p.network_name for p in predictions if p.collisions or (pool_collides and p.source == "pool")}
    for p in predictions:
        if p.network_name not in fix_keys:
            avoid.append(Evidence("docker", p.subnet, f"the subnet of network '{p.network_name}'"))
    subnets: dict[str, Network] = {}
    todo = [p for p in sorted(predictions, key=lambda p: p.network_name)
            if p.network_name in fix_keys and p.subnet.version == 4]
    for p in todo:
        if not p.collisions:  # pinned only because the order is not fixed: keep what it would get
            subnets[p.network_name] = p.subnet
            avoid.append(Evidence("nsnet", p.subnet, f"the subnet kept for network '{p.network_name}'"))
    for p in todo:
        if p.collisions and p.network_name not in subnets:
            # Never suggest a subnet larger than its pool hands out (no 192.168.0.0/16 for a /16).
            want = p.subnet.prefixlen
            space = [Pool(q.base, want) for q in tuple(pools) + _FIX_SPACE if q.size <= want]
            net, _ = pick_subnet(space, avoid)
            subnets[p.network_name] = net
            avoid.append(Evidence("nsnet", net, f"the subnet suggested for network '{p.network_name}'"))
    subnets = dict(sorted(subnets.items()))
    try:
        base, _ = pick_subnet(_FIX_SPACE, avoid, size=16)
        pool = Pool(base, 24)
    except NsnetError:
        pool = None
    import yaml

    blocks = {k: {"ipam": {"config": [{"subnet": str(v)}]}} for k, v in subnets.items()}
    compose_yaml = yaml.safe_dump({"networks": blocks}, sort_keys=False, default_flow_style=False) if blocks else ""
    daemon_json = json.dumps({"default-address-pools": [pool.as_dict()]}, indent=2) if pool else ""
    return Fix(subnets, compose_yaml, pool, daemon_json)


def apply_fix(compose_text: str, fix: Fix) -> str:
    """The Compose file with the fix's ipam blocks merged in (comments are not kept)."""
    import yaml

    doc = _load(compose_text)
    nets = doc.setdefault("networks", {}) or {}
    doc["networks"] = nets
    for key, subnet in fix.subnets.items():
        cfg = nets.get(key) or {}
        ipam = cfg.setdefault("ipam", {}) or {}
        cfg["ipam"] = ipam
        keep = [c for c in ipam.get("config") or [] if isinstance(c, dict) and c.get("subnet")
                and ipaddress.ip_network(str(c["subnet"]), strict=False).version != 4]
        ipam["config"] = [{"subnet": str(subnet)}] + keep
        nets[key] = cfg
    return yaml.safe_dump(doc, sort_keys=False, default_flow_style=False)
