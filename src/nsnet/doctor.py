"""`nsnet doctor`: the address collisions of a host as it is, what each one breaks, how to fix it.

Pure logic over a HostView (links, routes, neighbours, evidence) that nsnet.kernel.hostview reads,
so every diagnosis is unit-testable. A route is judged by where it sends packets, whoever made it;
nsnet and Docker are only named when a link carries their mark (alias, bridge name, subnet).
"""
from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field

from .errors import NsnetError
from .facts import (MAIN_TABLE, ROUTE_TYPE_NAMES, RTN_UNICAST, Address, Evidence, HostFacts, KernelAnswer,
                    Link, Neighbour, Network, Route)
from .ipam.evidence import overlapping, ranked, short
from .ipam.pools import DEFAULT_POOLS, Pool, pick_subnet
from .model import OWNER_ALIAS, owner_alias

# Links that lead to containers (or nowhere), not to other machines, unless they carry a default route.
_LOCAL_KINDS = {"bridge", "veth", "dummy"}
_DOCKER_BRIDGE = re.compile(r"^(docker0|br-[0-9a-f]{12})$")
# Evidence of hosts that talk to this one: replies to them must leave by the right link.
_TRAFFIC = ("peer", "conntrack", "resolver", "neighbour")


# -- the host as doctor sees it: the kernel's facts (nsnet.facts) and nsnet's own networks -------------------------------------------------------

@dataclass(frozen=True)
class NsnetNetwork:
    id: str
    name: str
    bridge: str | None
    subnets: tuple = ()
    members: tuple = ()              # sandbox addresses on it
    who: tuple = ()                  # (address, what it is: a sandbox's name, a CNI container's ID and netns)
    scope: str = "local"             # swarm: an overlay across hosts (no route on the host; one in each sandbox)


@dataclass
class HostView(HostFacts):
    """The host as doctor judges it: what the kernel says (HostFacts) and nsnet's own networks."""
    nsnet: list[NsnetNetwork] = field(default_factory=list)
    pools: tuple[Pool, ...] = DEFAULT_POOLS     # where a fix may look for a free subnet


# -- who owns a link -----------------------------------------------------------------------------

@dataclass(frozen=True)
class Owner:
    kind: str                        # "nsnet", "docker", "other" (someone else's bridge), "host"
    name: str | None                 # the network's name, when known
    text: str                        # "bridge nsbr-1 of nsnet network 'web'"


def owner(view: HostView, dev: str | None) -> Owner:
    dev = dev or "?"
    link = view.links.get(dev) or Link(dev)
    alias = link.alias or ""
    for n in view.nsnet:
        # Only bridges nsnet made carry its alias; an adopted (flat LAN) bridge is the LAN's, not ours.
        if alias == owner_alias(n.id) or (n.bridge == dev and alias.startswith(OWNER_ALIAS)):
            return Owner("nsnet", n.name, f"bridge {dev} of nsnet network '{n.name}'")
    if alias.startswith(OWNER_ALIAS):  # no daemon answered: the alias still says whose it is
        nid = alias[len(OWNER_ALIAS):][:12]
        return Owner("nsnet", nid, f"bridge {dev} of nsnet network {nid}")
    mine = {r.network for r in view.routes if r.dev == dev}
    for d in view.docker:
        if (dev == "br-" + d.id[:12]) or (dev == "docker0" and d.name == "bridge") or mine & set(d.subnets):
            return Owner("docker", d.name, f"bridge {dev} of Docker network '{d.name}'")
    if _DOCKER_BRIDGE.match(dev):
        name = "bridge" if dev == "docker0" else None
        text = f"bridge {dev} of Docker network 'bridge'" if name else f"bridge {dev} of a Docker network"
        return Owner("docker", name, text)
    if link.kind == "bridge":
        return Owner("other", None, f"bridge {dev}, made neither by nsnet nor by Docker")
    return Owner("host", None, f"{link.kind or 'interface'} {dev}")


def _uplinks(view: HostView) -> set[str]:
    """Links that lead to other machines: they carry a default route or a route via a gateway."""
    return {r.dev for r in view.routes if r.dev and (r.network.prefixlen == 0 or r.gateway)}


def container_side(view: HostView, dev: str | None) -> bool:
    """Does `dev` lead to containers (or nowhere) rather than to other machines?"""
    if not dev:
        return False
    if owner(view, dev).kind in ("nsnet", "docker"):
        return True
    link = view.links.get(dev)
    return link is not None and link.kind in _LOCAL_KINDS and dev not in _uplinks(view)


# -- route lookups -------------------------------------------------------------------------------

def best_route(view: HostView, ip, *, avoid_dev: str | None = None, table: int = MAIN_TABLE) -> Route | None:
    """Longest prefix match (then lowest metric), as the kernel does within one table."""
    ip = ipaddress.ip_address(ip)
    found = None
    for r in view.routes:
        if r.table != table or r.network.version != ip.version or ip not in r.network or r.dev == avoid_dev:
            continue
        if found is None or (r.network.prefixlen, -r.metric) > (found.network.prefixlen, -found.metric):
            found = r
    return found


def _home(view: HostView, ip, dev: str | None = None) -> Neighbour | None:
    """Where `ip` answers ARP/NDP, preferring `dev` when it answers on several links."""
    homes = [n for n in view.neighbours if n.ip == ip]
    return next((n for n in homes if n.dev == dev), homes[0] if homes else None)


def _member(view: HostView, ip, dev: str | None) -> NsnetNetwork | None:
    return next((n for n in view.nsnet if n.bridge == dev and ip in n.members), None)


def misrouted(view: HostView, ip, dev: str | None, gateway=None, rtype: int = RTN_UNICAST) -> str | None:
    """Why packets to `ip` sent out of `dev` (directly, or via `gateway`) do not reach it; None when
    they should. A host lives where its neighbour entry is; with none, a container-side link that
    does not hold it as a sandbox is the wrong place."""
    if rtype != RTN_UNICAST:
        return f"the route is {ROUTE_TYPE_NAMES.get(rtype, 'not unicast')}: the kernel drops them"
    if gateway is not None or not dev:
        return None
    home = _home(view, ip, dev)
    if home is not None:
        return None if home.dev == dev else f"{ip} is a neighbour on {home.dev}, not on {dev}"
    if _member(view, ip, dev) is None and container_side(view, dev):
        return f"no host {ip} is on {dev}"
    return None


# -- fixes ---------------------------------------------------------------------------------------

def free_subnet(view: HostView, route: Route) -> Network | None:
    """A subnet of the route's size that collides with nothing once this route is gone."""
    # Its own route, address and record go with it; other links' routes to the same range stay.
    own = {(k, route.network) for k in ("route", "address", "nsnet", "docker")}
    ev = [e for e in view.evidence if (e.kind, e.network) not in own]
    ev += [Evidence("route", r.network, str(r)) for r in view.routes
           if r.network.prefixlen and r.dev != route.dev and r.type == RTN_UNICAST]
    try:
        return pick_subnet(view.pools, ev, size=route.network.prefixlen)[0]
    except NsnetError:
        return None


def fix_for(view: HostView, route: Route, clash: str) -> str:
    """How to move the network behind `route` off `clash`."""
    o = owner(view, route.dev)
    free = free_subnet(view, route)
    new = f"--subnet {free}" if free else "--subnet <a free range>"
    if o.kind == "nsnet":
        return (f"move nsnet network '{o.name}' off {clash}: `nsnet network rm {o.name}` (stop its sandboxes "
                f"first), then `nsnet network create {new} {o.name}`")
    if o.kind == "docker":
        name = o.name or "NAME"  # Docker did not answer: `docker network ls` names it
        label = f"'{name}'" if o.name else f"NAME (`docker network ls --filter id={route.dev[3:]}` shows it)"
        return (f"move Docker network {label} off {clash}: `docker network rm {name}`, then "
                f"`docker network create {new} {name}` (Compose: an ipam block, see `nsnet doctor --compose`); "
                f"keep Docker off {clash} for good with default-address-pools in /etc/docker/daemon.json")
    if o.kind == "other":
        link = view.links.get(route.dev)
        addrs = [a for a in (link.addresses if link else ()) if a.network.overlaps(route.network)]
        cmd = f"`ip addr del {addrs[0]} dev {route.dev}`" if addrs else f"`ip route del {route}`"
        return (f"{route.dev} was made by neither nsnet nor Docker (libvirt, LXD, a script?): {cmd} or "
                f"`ip link del {route.dev}` removes the route; give it {free or 'a free range'} instead, "
                f"and tell whoever made it")
    return f"the route {route} sends it out of {route.dev}: delete or narrow it (`ip route del {route}`)"


# -- findings ------------------------------------------------------------------------------------

@dataclass
class Finding:
    problem: str                     # "misrouted", "reserved", "overlap", "overlay"
    route: Route
    owner: Owner
    evidence: list[Evidence]         # what the route collides with, worst first
    what: str                        # what overlaps what
    breaks: str                      # which traffic it breaks
    fix: str

    def as_dict(self) -> dict:
        return {"Problem": self.problem, **self.route.as_dict(), "Owner": self.owner.text,
                "OwnerKind": self.owner.kind, "Network": self.owner.name,
                "CollidesWith": [{"Kind": e.kind, "Range": str(e.network), "Detail": e.detail} for e in self.evidence],
                "What": self.what, "Breaks": self.breaks, "Fix": self.fix}


def _fallback_text(view: HostView, ip, dev: str | None) -> str:
    """Where packets to `ip` would go without the routes of `dev`."""
    other = best_route(view, ip, avoid_dev=dev)
    if other is None:
        return "nowhere (the host has no other route to it)"
    if other.network.prefixlen == 0:
        return f"out by the default route ({str(other).removeprefix('default ')})"
    return f"out by the route {other}"


_BREAKS = {
    "peer": "replies to {ip} go into {dev} instead of {fallback}: {ip} gets no answer, so its session hangs "
            "and it cannot open new connections to this host",
    "conntrack": "replies to {ip} go into {dev} instead of {fallback}: the tracked connection stalls",
    "resolver": "DNS queries to {ip} go into {dev} instead of {fallback}: name lookups on this host time out",
    "neighbour": "traffic to {ip} goes into {dev} instead of {fallback}: this host cannot reach it",
}


def _misrouted_findings(view: HostView) -> list[Finding]:
    by_route: dict[Route, list[tuple[Evidence, str]]] = {}
    seen: set = set()
    for e in ranked(x for x in view.evidence if x.kind in _TRAFFIC and x.network.num_addresses == 1):
        ip = e.network.network_address
        if ip in seen:
            continue
        seen.add(ip)
        route = best_route(view, ip)
        if route is None:
            continue
        why = misrouted(view, ip, route.dev, route.gateway, route.type)
        if why:
            by_route.setdefault(route, []).append((e, why))
    out = []
    for route, hits in by_route.items():
        e, why = hits[0]
        ip = e.network.network_address
        o = owner(view, route.dev)
        more = f" (and {len(hits) - 1} more: {', '.join(short(h.network) for h, _ in hits[1:4])})" if len(hits) > 1 else ""
        what = f"{route} ({o.text}) contains {ip}, {e.detail}{more}"
        breaks = _BREAKS[e.kind].format(ip=ip, dev=route.dev, fallback=_fallback_text(view, ip, route.dev))
        out.append(Finding("misrouted", route, o, [h for h, _ in hits], what, f"{breaks} ({why})",
                           fix_for(view, route, short(e.network))))
    return out


def _reserved_findings(view: HostView) -> list[Finding]:
    reserved = [e for e in view.evidence if e.kind == "reserved"]
    out = []
    for route in view.routes:
        if route.network.prefixlen == 0 or not container_side(view, route.dev):
            continue
        for e in overlapping(route.network, reserved):
            o = owner(view, route.dev)
            what = f"{route} ({o.text}) overlaps {e.network}, {e.detail}"
            breaks = (f"this host sends whatever it sends to hosts in {_overlap(route.network, e.network)} into "
                      f"{route.dev}: the office/VPN machines kept in that range cannot reach it, nor it them")
            out.append(Finding("reserved", route, o, [e], what, breaks, fix_for(view, route, str(e.network))))
    return out


def _overlap(a: Network, b: Network) -> Network:
    return a if a.subnet_of(b) else b


def _overlap_findings(view: HostView) -> list[Finding]:
    direct = [r for r in view.routes if r.network.prefixlen and r.gateway is None and r.type == RTN_UNICAST and r.dev]
    out = []
    for i, a in enumerate(direct):
        for b in direct[i + 1:]:
            if a.dev == b.dev or a.table != b.table or a.network.version != b.network.version \
                    or not a.network.overlaps(b.network):
                continue
            if not (container_side(view, a.dev) or container_side(view, b.dev)):
                continue
            # The container-side one (the later one when both are) is what to move.
            culprit, other = (b, a) if container_side(view, b.dev) else (a, b)
            winner = max((a, b), key=lambda r: (r.network.prefixlen, -r.metric))
            loser = b if winner is a else a
            both = _overlap(a.network, b.network)
            o, oo = owner(view, culprit.dev), owner(view, other.dev)
            what = f"{culprit} ({o.text}) overlaps {other} ({oo.text})"
            breaks = (f"the host sends everything for {both} to {winner.dev}: whatever lives on {loser.dev} "
                      f"in that range is unreachable from this host")
            ev = Evidence("route", other.network, f"a route to {other.network} dev {other.dev}")
            out.append(Finding("overlap", culprit, o, [ev], what, breaks, fix_for(view, culprit, str(other.network))))
    return out


def _swarm_findings(view: HostView) -> list[Finding]:
    """A swarm network's subnet has no route on the host (its bridge has no address), but each of its
    sandboxes has one: what this host's evidence puts in that subnet, those sandboxes cannot reach."""
    out = []
    found = [e for e in view.evidence if e.kind != "nsnet"]
    for n in view.nsnet:
        if n.scope != "swarm":
            continue
        for subnet in n.subnets:
            hits = ranked(overlapping(subnet, found))
            if not hits:
                continue
            e = hits[0]
            route = Route(subnet, n.bridge or f"overlay {n.name}")
            o = Owner("nsnet", n.name, f"overlay network '{n.name}' of the swarm")
            what = f"{subnet} ({o.text}) overlaps {short(e.network)}, {e.detail}"
            breaks = (f"its sandboxes send what they send to {_overlap(subnet, e.network)} into the overlay: "
                      f"they cannot reach {short(e.network)} (this host itself still does)")
            fix = (f"recreate it with a subnet no node uses: nsnet network rm {n.name}, then nsnet network "
                   f"create -d overlay without --subnet (nsnet picks one clear of every node's evidence)")
            out.append(Finding("overlay", route, o, hits, what, breaks, fix))
    return out


def diagnose(view: HostView) -> list[Finding]:
    """Every collision on the host: misrouted talkers first, then reserved ranges, then overlaps, then swarm
    networks that cut their sandboxes off from what this host talks to."""
    return _misrouted_findings(view) + _reserved_findings(view) + _overlap_findings(view) + _swarm_findings(view)


# -- one client's path ---------------------------------------------------------------------------

@dataclass
class ClientPath:
    client: Address
    route: Route | None              # the longest prefix match in the main table
    kernel: KernelAnswer | None      # the kernel's own answer (policy rules included)
    dev: str | None                  # where replies leave: the kernel's answer wins
    owner: Owner | None
    reachable: bool
    why: str
    fix: str | None = None
    known_as: list[Evidence] = field(default_factory=list)   # what the host knows of the client

    def as_dict(self) -> dict:
        return {"Client": str(self.client), "Route": self.route.as_dict() if self.route else None,
                "Kernel": ({"Dev": self.kernel.dev, "Gateway": str(self.kernel.gateway) if self.kernel.gateway else None,
                            "Source": str(self.kernel.source) if self.kernel.source else None,
                            "Error": self.kernel.error} if self.kernel else None),
                "Dev": self.dev, "Owner": self.owner.text if self.owner else None,
                "OwnerKind": self.owner.kind if self.owner else None,
                "Network": self.owner.name if self.owner else None,
                "Reachable": self.reachable, "Why": self.why, "Fix": self.fix,
                "KnownAs": [e.detail for e in self.known_as]}


def client_path(view: HostView, client, kernel: KernelAnswer | None = None) -> ClientPath:
    """The path replies to `client` take, and whether they get there."""
    ip = ipaddress.ip_address(client)
    route = best_route(view, ip)
    known = [e for e in ranked(view.evidence) if e.kind in _TRAFFIC and ip in e.network]
    if kernel is not None and kernel.error:
        return ClientPath(ip, route, kernel, None, None, False,
                          f"no: the kernel has no usable route to {ip} ({kernel.error}), so it never gets a reply",
                          None, known)
    if kernel is not None and kernel.dev:
        dev, gateway, rtype = kernel.dev, kernel.gateway, RTN_UNICAST
    elif route is not None:
        dev, gateway, rtype = route.dev, route.gateway, route.type
    else:
        return ClientPath(ip, None, kernel, None, None, False,
                          f"no: no route matches {ip}, so it never gets a reply", None, known)
    o = owner(view, dev)
    why = misrouted(view, ip, dev, gateway, rtype)
    if why:
        culprit = route if route is not None and route.dev == dev else Route(ipaddress.ip_network(ip), dev)
        text = (f"no: replies to {ip} go into {o.text} ({why}); {ip} can send to this host but never gets an "
                f"answer (SSH hangs, ping fails). Without {culprit} they would go {_fallback_text(view, ip, dev)}")
        return ClientPath(ip, route, kernel, dev, o, False, text, fix_for(view, culprit, str(ip)), known)
    home, member = _home(view, ip, dev), _member(view, ip, dev)
    what = (dict(member.who).get(ip) or "a sandbox") if member is not None else None
    if gateway is not None:
        text = f"yes: replies leave {dev} for the gateway {gateway}, which forwards them (beyond it this host cannot see)"
    elif home is not None:
        text = f"yes: {ip} is a neighbour on {dev} ({home.state})" + \
            (f": {what} on nsnet network '{member.name}'" if member is not None else "")
    elif member is not None:
        text = f"yes: {ip} is {what} on nsnet network '{member.name}'"
    else:
        text = f"probably: {dev} leads to other machines and {ip} is on its link (no neighbour entry yet)"
    return ClientPath(ip, route, kernel, dev, o, True, text, None, known)


# -- Compose files -------------------------------------------------------------------------------

@dataclass
class ComposeCheck:
    file: str
    predictions: list            # ipam.compose.Prediction
    fix: object | None           # ipam.compose.Fix, when something collides

    @property
    def broken(self) -> bool:
        return any(p.collisions for p in self.predictions)

    def as_dict(self) -> dict:
        fix = None
        if self.fix is not None:
            fix = {"Subnets": {k: str(v) for k, v in self.fix.subnets.items()}, "ComposeYaml": self.fix.compose_yaml,
                   "DaemonJson": self.fix.daemon_json}
        return {"File": self.file, "Networks": [p.as_dict() for p in self.predictions], "Fix": fix}


def check_compose(view: HostView, text: str, file: str, project: str | None, docker_pools=DEFAULT_POOLS,
                  fallback_project: str | None = None) -> ComposeCheck:
    """What Docker would give each network of the file here, and a fix when any of them collides.
    The project name is Compose's: `project`, else the file's `name:`, else `fallback_project`
    (the folder the file is in)."""
    from .ipam.compose import predict, suggest_fix  # PyYAML: only when a Compose file is read

    existing = [(d.name, s) for d in view.docker for s in d.subnets]
    preds = predict(text, project, existing, docker_pools, view.evidence, fallback_project=fallback_project)
    fix = None
    if any(p.collisions for p in preds):
        fix = suggest_fix(preds, docker_pools, view.evidence, existing)
    return ComposeCheck(file, preds, fix)


@dataclass
class Report:
    findings: list[Finding]
    client: ClientPath | None = None
    compose: ComposeCheck | None = None

    @property
    def broken(self) -> bool:
        return bool(self.findings) or (self.client is not None and not self.client.reachable) or \
            (self.compose is not None and self.compose.broken)

    def as_dict(self) -> dict:
        return {"Broken": self.broken, "Findings": [f.as_dict() for f in self.findings],
                "Client": self.client.as_dict() if self.client else None,
                "Compose": self.compose.as_dict() if self.compose else None}
