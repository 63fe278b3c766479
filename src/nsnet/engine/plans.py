"""Plans: a request checked against the state, the drivers and the host's evidence, turned into the
records to build. Everything checked, nothing built."""
from __future__ import annotations

import ipaddress
import logging
import secrets

from .. import requests as rq
from ..drivers import DEFAULT, driver_class
from ..drivers.base import SIZE_KEY
from ..errors import Conflict, NsnetError
from ..ipam.addresses import AddressPool, default_gateway
from ..ipam.evidence import overlapping, refusal
from ..ipam.pools import pick_subnet
from ..model import Network, NetworkRequest, Sandbox, SubnetConfig, now_rfc3339
from ..names import random_name
from .addresses import Allocator
from .state import State

log = logging.getLogger("nsnet.engine")


def new_id() -> str:
    return secrets.token_hex(32)


def missing_builtins(state: State, drivers: dict, evidence, pools) -> list[Network]:
    """The drivers' built-in networks (Driver.builtin) not made yet, in the drivers' order."""
    out = []
    for driver in drivers.values():
        spec = driver.builtin()
        if spec and not any(n.name == spec["name"] and n.builtin for n in state.nets.values()):
            out.append(_builtin_network(driver, spec, evidence, pools))
    return out


def _builtin_network(driver, spec: dict, evidence, pools) -> Network:
    """An addressed one gets its subnet, or one from the pools when that one is in use on the host."""
    net = Network(id=new_id(), name=spec["name"], driver=driver.name, created=now_rfc3339(), builtin=True)
    if "subnet" in spec:
        net.bridge = spec.get("bridge")
        net.options = dict(spec.get("options") or {})
        subnet = ipaddress.ip_network(spec["subnet"])
        found = evidence()
        if overlapping(subnet, found):
            subnet, skipped = pick_subnet(pools, found)
            log_skipped(skipped)
        net.subnets = [SubnetConfig(subnet=str(subnet), gateway=str(default_gateway(subnet)))]
    return net


def log_skipped(skipped) -> None:
    for subnet, why in skipped:
        log.info("pool candidate %s skipped: %s", subnet, "; ".join(e.detail for e in why))


def network(state: State, drivers: dict, evidence, pools, req: dict, swarm=None) -> Network:
    """A new network. One of a swarm (`scope` cluster) driver needs the host in a swarm (`swarm`: the
    engine's SwarmLink): its subnet comes from the swarm's pools, clear of every node's evidence."""
    name = req.get("Name") or ""
    rq.check_name(name, "network")
    if any(n.name == name for n in state.nets.values()):
        raise Conflict(f"network with name {name} already exists")
    driver = drivers[driver_class(req.get("Driver") or DEFAULT).name]
    if driver.singleton:
        raise Conflict(f'only one instance of "{driver.name}" network is allowed')
    net = Network(id=new_id(), name=name, driver=driver.name, created=now_rfc3339(),
                  ipv6=bool(req.get("EnableIPv6")), internal=bool(req.get("Internal")),
                  attachable=bool(req.get("Attachable")), options=dict(req.get("Options") or {}),
                  labels=dict(req.get("Labels") or {}), dns=True)
    if driver.scope == "cluster":
        if swarm is None:
            raise NsnetError(f"{driver.name} networks need a swarm: this node is not part of one "
                             f"(nsnet swarm init or nsnet swarm join)")
        net.scope, pools = "swarm", swarm.pools()
        evidence = (lambda here=evidence: here() + swarm.evidence())
    driver.validate(net)
    others = list(state.nets.values())
    driver.claim(net, others)
    net.subnets = _subnets(state, driver, evidence, pools, net, req)
    driver.plan(net, others)
    return net


def _subnets(state: State, driver, evidence, pools, net: Network, req: dict) -> list:
    configs = rq.subnet_configs(list(req.get("Subnets") or []), list(req.get("Gateways") or []),
                                list(req.get("IPRanges") or []), dict(req.get("AuxAddresses") or {}), net.ipv6)
    if net.ipv6 and not any(ipaddress.ip_network(c.subnet).version == 6 for c in configs):
        raise NsnetError("--ipv6 needs an IPv6 --subnet (for example --subnet fd00:1::/64)")
    found = evidence()
    lan = driver.on_lan(net)  # the LAN's own subnet: its addresses are checked on the LAN instead
    others = [ipaddress.ip_network(s.subnet) for n in state.nets.values() for s in n.subnets]
    for c in configs:
        subnet = ipaddress.ip_network(c.subnet)
        for o in others:
            if subnet.overlaps(o):
                raise Conflict(f"subnet {subnet} overlaps {o} of another nsnet network: pick another subnet")
        hits = [e for e in overlapping(subnet, found) if e.kind != "nsnet"]
        if hits and not req.get("AllowOverlap") and not lan:
            raise Conflict(refusal(subnet, hits))
    if not lan and not any(ipaddress.ip_network(c.subnet).version == 4 for c in configs):
        size = net.options.get(SIZE_KEY)
        subnet, skipped = pick_subnet(pools, found, size=int(size) if size else None)
        log_skipped(skipped)
        configs.insert(0, SubnetConfig(subnet=str(subnet)))
    for c in configs:
        subnet = ipaddress.ip_network(c.subnet)
        if not c.gateway:
            c.gateway = str(default_gateway(subnet))
        AddressPool(subnet, gateway=c.gateway, ip_range=c.ip_range, aux=c.aux)  # validates
    return configs


def sandbox(state: State, drivers: dict, alloc: Allocator, spec: dict) -> tuple[Sandbox, list[NetworkRequest]]:
    name = spec.get("Name") or _free_name(state)
    rq.check_name(name, "sandbox")
    other = next((s for s in state.sbs.values() if s.name == name), None)
    if other is not None:
        raise Conflict(f'the name "{name}" is already in use by sandbox {other.id[:12]}: remove it or pick '
                       f"another name")
    cmd = list(spec.get("Cmd") or [])
    if not cmd:
        raise NsnetError("no command given: nsnet run [OPTIONS] -- CMD [ARGS...]")
    hostname = spec.get("Hostname") or ""
    if hostname:
        rq.check_hostname(hostname)
    sid = new_id()
    sb = Sandbox(id=sid, name=name, hostname=hostname or sid[:12], created=now_rfc3339(), cmd=cmd,
                 auto_remove=bool(spec.get("AutoRemove")), dns=list(spec.get("Dns") or []))
    for d in sb.dns:
        rq.parse_address(d, "DNS server")
    reqs = []
    for w in spec.get("Networks") or [{"Network": DEFAULT}]:
        net = state.network(w.get("Network", ""))
        if any(r.network_id == net.id for r in reqs):
            raise Conflict(f"sandbox is already connected to network {net.name}")
        reqs.append(request(drivers[net.driver], alloc, net, w))
    first = drivers[state.nets[reqs[0].network_id].driver]
    if len(reqs) > 1 and any(drivers[state.nets[r.network_id].driver].singleton for r in reqs):
        raise NsnetError("a sandbox on the host or none network cannot join other networks")
    sb.netmode = first.sandbox_mode
    sb.requests = reqs
    sb.ports = [rq.parse_port(p) if isinstance(p, str) else p for p in spec.get("Ports") or []]
    if sb.ports and first.singleton:
        raise NsnetError(f"published ports make no sense on the {sb.netmode} network: drop -p or use a bridge network")
    for i, p in enumerate(sb.ports):
        for q in sb.ports[:i]:
            if rq.ports_clash(p, q):
                raise Conflict(f"port {p.host_port}/{p.proto} is published twice")
        for other in state.sbs.values():
            if other.state == "running" and any(rq.ports_clash(p, q) for q in other.ports):
                raise Conflict(f"port {p.host_ip}:{p.host_port}/{p.proto} is already published by sandbox "
                               f"{other.name}")
    return sb, reqs


def removable(state: State, net: Network) -> None:
    """Refuse to remove a built-in network, or one that a sandbox is on or asks for (on any node)."""
    if net.builtin:
        raise Conflict(f"{net.name} is a pre-defined network and cannot be removed")
    users = {state.sbs[e.sandbox_id].name for e in state.endpoints_of_network(net) if e.sandbox_id in state.sbs}
    users |= {f"{e.names[0] if e.names else e.sandbox_id[:12]} (node {state.vteps.get(e.node, e.node[:12])})"
              for e in state.remote.values() if e.network_id == net.id}
    users |= {sb.name for sb in state.sbs.values() if state.requested(sb, net)}
    if users:
        raise Conflict(f"network {net.name} has sandboxes attached: {', '.join(sorted(users))}; "
                       f"remove them or disconnect them first")


def connection(state: State, drivers: dict, alloc: Allocator, net: Network, sb: Sandbox, w: dict) -> NetworkRequest:
    """`sb`'s request to join `net` (connect), checked."""
    if state.requested(sb, net):
        raise Conflict(f"sandbox {sb.name} is already connected to network {net.name}")
    if drivers[net.driver].singleton or any(drivers[n.driver].singleton for n in state.requested_networks(sb)):
        raise NsnetError("cannot connect: a sandbox on the host or none network has no network of its own")
    return request(drivers[net.driver], alloc, net, w)


def request(driver, alloc: Allocator, net: Network, w: dict) -> NetworkRequest:
    """A sandbox's request to be on `net` (static addresses, aliases), checked."""
    req = NetworkRequest(network_id=net.id, ip=w.get("IP") or None, ip6=w.get("IP6") or None,
                         aliases=list(w.get("Aliases") or []))
    if driver.scope == "cluster" and not net.attachable and not w.get("ServiceTask"):   # (not in the API's schema)
        raise NsnetError(f"could not attach to network {net.name}: network {net.name} not manually attachable", 403)
    if req.aliases and not net.dns:
        raise NsnetError(f"network-scoped aliases are only supported on user-defined networks, not {net.name}")
    for a in req.aliases:
        rq.check_name(a, "alias")
    if (req.ip or req.ip6) and net.builtin:
        raise NsnetError("user specified IP address is supported on user defined networks only")
    for ip, fam in ((req.ip, 4), (req.ip6, 6)):
        if not ip:
            continue
        addr = rq.parse_address(ip, "IP address")
        if addr.version != fam:
            raise NsnetError(f"{ip} is not an IPv{fam} address")
        alloc.check(net, addr)
        why = driver.address_taken(net, addr)
        if why:
            raise Conflict(f"{why}: pick another --ip")
    return req


def _free_name(state: State) -> str:
    taken = {s.name for s in state.sbs.values()}
    while True:
        name = random_name()
        if name not in taken:
            return name


GATEWAY_BRIDGE = "docker_gwbridge"        # Docker's name for it: a Docker user looks for this one
GATEWAY_BRIDGE_LINK = "nsgwbridge"
ICC_KEY, MASQ_KEY, NAME_KEY = ("com.docker.network.bridge.enable_icc", "com.docker.network.bridge.enable_ip_masquerade",
                               "com.docker.network.bridge.name")


def needs_gateway_bridge(state: State, drivers: dict, reqs: list[NetworkRequest]) -> bool:
    """Does a sandbox asking for `reqs` reach outside only through the gateway bridge (as a container on
    Docker's overlays only does, through docker_gwbridge)? Not when one of its networks is internal-free
    and routed already (a bridge network), nor when all its overlays are internal."""
    nets = [state.nets[r.network_id] for r in reqs]
    if any(n.name == GATEWAY_BRIDGE for n in nets):
        return False
    wants = any(drivers[n.driver].needs_gateway_bridge and not n.internal for n in nets)
    routed = any(not drivers[n.driver].needs_gateway_bridge and drivers[n.driver].builds_endpoints
                 and not n.internal for n in nets)
    return wants and not routed


def gateway_bridge(drivers: dict, evidence, pools) -> Network:
    """The host's gateway bridge network (Docker's docker_gwbridge): NAT out, no traffic between its
    sandboxes, no names; its subnet from the local pools, clear of the host's evidence."""
    net = Network(id=new_id(), name=GATEWAY_BRIDGE, driver=DEFAULT, created=now_rfc3339(),
                  options={NAME_KEY: GATEWAY_BRIDGE_LINK, ICC_KEY: "false", MASQ_KEY: "true"})
    drivers[DEFAULT].validate(net)
    drivers[DEFAULT].claim(net, [])
    net.subnets = _subnets_from_pools(evidence, pools, net)
    return net


def _subnets_from_pools(evidence, pools, net: Network) -> list[SubnetConfig]:
    subnet, skipped = pick_subnet(pools, evidence())
    log_skipped(skipped)
    return [SubnetConfig(subnet=str(subnet), gateway=str(default_gateway(subnet)))]
