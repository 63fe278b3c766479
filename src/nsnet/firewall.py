"""nsnet's whole nftables state, rendered from the store as one libnftables JSON document and applied
atomically.

One table is ours: `inet nsnet` (isolation, NAT, published ports). The render deletes and recreates
it in one transaction, so after a crash the next render is the repair, and nothing else's rules are
touched. (ICC off is traffic that never leaves the bridge: the bridge driver isolates those ports.)

JSON, not nft's text: an interface name is a JSON string, so no name (a quote, a brace, a newline…)
can break the ruleset's syntax. The few that libnftables still reads as something else are refused
by name (unwritable), never left to fail the whole ruleset.

Frames bridged between two sandboxes of one network are not tracked. Without br_netfilter they never
reach the IP hooks; with it (Docker and kube-proxy load it, and it is host-wide) each such frame would
otherwise pass conntrack. Nothing here needs their state: the hairpin path to a published port goes to a
host address, which stays tracked, and so do the gateway's own flows.
"""
from __future__ import annotations

import ipaddress
import json
from dataclasses import dataclass, field

from .errors import NsnetError
from .kernel.nft import OR


@dataclass
class FwNetwork:
    bridge: str | None   # None: nothing of it on the host's bridges (an overlay's is in its own namespace)
    subnets: list[str]
    internal: bool = False
    icc: bool = True
    masquerade: bool = True
    gateways: list[str] = field(default_factory=list)
    leaves: str | None = None   # interface-name pattern of its leaf bridges (see drivers/fabric.py)
    # (UDP port, VNI, tunnel link): its VXLAN datagrams may leave and arrive by that link only (an
    # encrypted overlay: drivers/overlay.py); any other way they are dropped
    sealed: tuple[int, int, str] | None = None


@dataclass
class FwPort:
    host_ip: str          # "0.0.0.0" / "::" / "" = every host address
    host_port: int
    proto: str
    target_ip: str
    target_port: int
    bridge: str


@dataclass
class Ruleset:
    networks: list[FwNetwork] = field(default_factory=list)
    ports: list[FwPort] = field(default_factory=list)


# ---- expressions (the shapes `nft -j list ruleset` prints; see man libnftables-json) ----------------

ACCEPT, DROP, NOTRACK, MASQUERADE = {"accept": None}, {"drop": None}, {"notrack": None}, {"masquerade": None}
IIF, OIF = {"meta": {"key": "iifname"}}, {"meta": {"key": "oifname"}}
IIF_OIF = {"concat": [IIF, OIF]}
CT_STATE, CT_STATUS = {"ct": {"key": "state"}}, {"ct": {"key": "status"}}
LOOPBACK = ipaddress.ip_network("127.0.0.0/8")
PRIO_RAW, PRIO_DSTNAT, PRIO_FILTER, PRIO_SRCNAT = -300, -100, 0, 100   # nft's named priorities, as numbers


def _match(left, right, op: str = "==") -> dict:
    return {"match": {"op": op, "left": left, "right": right}}


def _field(proto: str, name: str) -> dict:
    return {"payload": {"protocol": proto, "field": name}}


def _family(addr) -> str:
    return "ip" if addr.version == 4 else "ip6"


def _prefix(net) -> dict:
    return {"prefix": {"addr": str(net.network_address), "len": net.prefixlen}}


IFNAME_MAX = 15   # bytes: the kernel's IFNAMSIZ less the NUL
# What libnftables' JSON reader takes for something else than a string (json_parse_immediate in
# parser_json.c): "@name" is a set, these words constants of other types. No escape exists for them.
NOT_STRINGS = frozenset({"tcp", "udp", "udplite", "esp", "ah", "icmp", "icmpv6", "comp", "dccp", "sctp", "redirect"})


def unwritable(name: str) -> str | None:
    """Why no libnftables JSON string stands for exactly the interface `name`, or None."""
    if len(name.encode()) > IFNAME_MAX:
        return f"it is longer than {IFNAME_MAX} bytes, the most an interface name has"
    if name.startswith("@") or name in NOT_STRINGS:
        return "nftables reads it as a set or a keyword"
    if name.endswith("*") and ("\\" in name or len(_ifname(name).encode()) > IFNAME_MAX):
        # its final * is a wildcard unless escaped, and the escape removes every backslash and takes a byte
        return "nftables reads its final * as a wildcard"
    return None


def _ifname(name: str) -> str:
    """An interface name as the JSON string libnftables takes for that exact name: one ending in `*` is
    a wildcard to nftables (the leaf patterns are), `\\*` a literal star."""
    return name[:-1] + "\\*" if name.endswith("*") else name


def _pair(name: str) -> dict:
    return {"concat": [_ifname(name), _ifname(name)]}


# ---- the nsnet table ---------------------------------------------------------------------------------

def render(rs: Ruleset) -> str:
    # Under br_netfilter every frame between two sandboxes passes the forward and raw chains: they look
    # the network up in sets and a map (one lookup each), so a frame costs the same on a host of one
    # network as on a host of fifty. A rule per network made it grow with each network (30 networks:
    # netfilter took 17 % of the CPU of a sandbox-to-sandbox stream, against 4 % with one).
    sealed = [n.sealed for n in rs.networks if n.sealed]
    bridged = [n for n in rs.networks if n.bridge]
    for n in bridged:
        why = unwritable(n.bridge)
        if why:
            raise NsnetError(f"bridge name {n.bridge!r} cannot be written into the nftables ruleset: {why}")
    t = _Table("inet", "nsnet")
    t.declare("bridges", "ifname", [_ifname(n.bridge) for n in bridged])
    t.declare("within", ["ifname", "ifname"], [_pair(n.bridge) for n in bridged if n.icc])
    t.declare("isolated", ["ifname", "ifname"], [_pair(n.bridge) for n in bridged if not n.icc])
    # Leaf bridges (drivers/fabric.py), by name pattern: they forward nothing but their network's frames.
    t.declare("leaves", "ifname", sorted({n.leaves for n in bridged if n.leaves}), interval=True)
    t.declare("untracked", "ifname", [[_ifname(n.bridge), {"jump": {"target": f"untracked-{i}"}}]
                                      for i, n in enumerate(bridged)], map_to="verdict")

    forward = [[_match(IIF_OIF, "@within"), ACCEPT],      # within one network, ICC on
               [_match(IIF, "@leaves"), ACCEPT]]
    for n in bridged:
        if n.internal:  # nothing in or out, whatever else allows it
            b = _ifname(n.bridge)
            forward.append([_match(IIF, b), _match(OIF, b, "!="), DROP])
            forward.append([_match(OIF, b), _match(IIF, b, "!="), DROP])
    forward += [
        [_match(CT_STATE, ["established", "related"], "in"), ACCEPT],
        [_match(CT_STATE, "invalid", "in"), DROP],
        [_match(CT_STATUS, "dnat", "in"), ACCEPT],   # published ports, from anywhere (other networks' sandboxes included)
        [_match(IIF_OIF, "@isolated"), DROP],                       # within one network, ICC off
        [_match(IIF, "@bridges"), _match(OIF, "@bridges"), DROP],   # no traffic between two networks
        [_match(IIF, "@bridges"), ACCEPT],                          # out to the world
        [_match(OIF, "@bridges"), DROP],                            # unsolicited traffic into a network
    ]
    t.chain("forward", forward, hook=("filter", "forward", PRIO_FILTER))
    t.chain("raw", [[_match(IIF, "@leaves"), NOTRACK],
                    [{"vmap": {"key": IIF, "data": "@untracked"}}]], hook=("filter", "prerouting", PRIO_RAW))
    for i, n in enumerate(bridged):
        t.chain(f"untracked-{i}", _untracked_within(n))

    to_published = [[_match({"fib": {"result": "type", "flags": ["daddr"]}}, "local"), {"jump": {"target": "published"}}]]
    t.chain("prerouting", to_published, hook=("nat", "prerouting", PRIO_DSTNAT))
    t.chain("output", to_published, hook=("nat", "output", -100))
    t.chain("published", [_dnat(p) for p in rs.ports])

    # NAT chains see the first packet of a connection only: a rule per network costs nothing per frame.
    postrouting = []
    for n in bridged:
        b = _ifname(n.bridge)
        subnets = [ipaddress.ip_network(s) for s in n.subnets]
        # The host reaching a published port through 127.0.0.1, and a sandbox reaching a published port
        # of its own network through the host (hairpin): replies must come back through the host to be
        # un-NATed. Matched by source, not by iifname: under br_netfilter a hairpin is bridged, not
        # routed, and has no input interface at this hook.
        postrouting.append([_match(OIF, b), _match(_field("ip", "saddr"), _prefix(LOOPBACK)), MASQUERADE])
        for s in subnets:
            postrouting.append([_match(OIF, b), _match(_field(_family(s), "saddr"), _prefix(s)),
                                _match(CT_STATUS, "dnat", "in"), MASQUERADE])
        if n.masquerade and not n.internal:
            for s in subnets:
                postrouting.append([_match(_field(_family(s), "saddr"), _prefix(s)), _match(OIF, b, "!="), MASQUERADE])
    t.chain("postrouting", postrouting, hook=("nat", "postrouting", PRIO_SRCNAT))
    if sealed:
        # Matched on the VXLAN header itself (the VNI: 24 bits, 32 bits into it), whatever route or device
        # the kernel picked: the second guard behind the forwarding entries (design notes, "Encrypted").
        def rules(way) -> list[list[dict]]:
            return [[_match(_field("udp", "dport"), port),
                     _match({"payload": {"base": "th", "offset": 64 + 32, "len": 24}}, vni),
                     _match(way, _ifname(tunnel), "!="), DROP] for port, vni, tunnel in sealed]
        t.chain("sealed-out", rules(OIF), hook=("filter", "postrouting", PRIO_FILTER))
        t.chain("sealed-in", rules(IIF), hook=("filter", "input", PRIO_FILTER))
    return t.text()


class _Table:
    """The commands that replace one table, in the order nft orders them itself: its chains, its sets,
    then the rules (a map's element or a rule names only what exists already)."""

    def __init__(self, family: str, name: str):
        self.ref = {"family": family, "table": name}
        table = {"table": {"family": family, "name": name}}
        # "add" then "delete" makes the delete valid whether or not the table exists yet.
        self.replace = [{"add": table}, {"delete": table}, {"add": table}]
        self.chains, self.sets, self.rules = [], [], []

    def declare(self, name: str, key, elements: list, interval: bool = False, map_to: str | None = None) -> None:
        """A named set, or a map when `map_to` is its value type."""
        obj = {**self.ref, "name": name, "type": key}
        if map_to:
            obj["map"] = map_to
        if interval:
            obj["flags"] = ["interval"]
        if elements:
            obj["elem"] = elements
        self.sets.append({"add": {"map" if map_to else "set": obj}})

    def chain(self, name: str, rules: list[list[dict]], hook: tuple[str, str, int] | None = None,
              device: str | None = None) -> None:
        obj = {**self.ref, "name": name}
        if hook:
            obj.update(type=hook[0], hook=hook[1], prio=hook[2], policy="accept")
            if device:
                obj["dev"] = device
        self.chains.append({"add": {"chain": obj}})
        self.rules += [{"add": {"rule": {**self.ref, "chain": name, "expr": expr}}} for expr in rules]

    def text(self) -> str:
        return json.dumps({"nftables": self.replace + self.chains + self.sets + self.rules}, separators=(",", ":"))


def _untracked_within(n: FwNetwork) -> list[list[dict]]:
    """Sandbox-to-sandbox traffic of a network's bridge: both ends in a subnet, the gateway not one of
    them (the raw chain jumps here by the frame's bridge). All that a leaf bridge sees (under
    br_netfilter) is untracked too, by the raw chain: a leaf is layer 2 only. Tracked there, a sandbox's
    hairpin was DNATed in the leaf's bridge context and routed from the leaf, and its reply dropped;
    untracked, both are tracked and NATed on the network's own bridge, as for its own ports."""
    rules = []
    for s in n.subnets:
        net = ipaddress.ip_network(s)
        fam = _family(net)
        own = [g for g in n.gateways if ipaddress.ip_address(g) in net]
        rules.append([_match(_field(fam, "saddr"), _prefix(net)), _match(_field(fam, "daddr"), _prefix(net))]
                     + [_match(_field(fam, "daddr"), g, "!=") for g in own] + [NOTRACK])
    return rules


def _dnat(p: FwPort) -> list[dict]:
    fam = _family(ipaddress.ip_address(p.target_ip))
    rule = [_match({"meta": {"key": "nfproto"}}, "ipv4" if fam == "ip" else "ipv6")]
    if p.host_ip and p.host_ip not in ("0.0.0.0", "::"):
        rule.append(_match(_field(fam, "daddr"), p.host_ip))
    return rule + [_match(_field(p.proto, "dport"), p.host_port),
                   {"dnat": {"family": fam, "addr": p.target_ip, "port": p.target_port}}]


def render_dns_redirect(address: str, udp_port: int, tcp_port: int) -> str:
    """Inside a sandbox: queries to ADDRESS:53 reach the resolver's real ports, and its answers leave
    from port 53. Rewritten both ways without NAT: a NAT rule would make the kernel track every
    connection of the sandbox, which cost ~5 % of its TCP throughput in the data-plane benchmark.
    The rewrites sit on the loopback's egress hook, which sees loopback packets only; in an output
    chain they ran for every packet the sandbox sends (perf: ~0.6 % of a TCP stream's CPU, gone
    here). A kernel without the egress hook (before 5.16) gets the output chain: two alternatives,
    for nft.run_first()."""
    def rewrite(end: str, port: str, proto: str, old: int, new: int) -> list[dict]:
        return [_match(_field("ip", end), address), _match(_field(proto, port), old),
                {"mangle": {"key": _field(proto, port), "value": new}}]
    rewrites = [rewrite("daddr", "dport", "udp", 53, udp_port), rewrite("daddr", "dport", "tcp", 53, tcp_port),
                rewrite("saddr", "sport", "udp", udp_port, 53), rewrite("saddr", "sport", "tcp", tcp_port, 53)]
    # Replacing the table replaces the ports of a previous daemon.
    on_loopback = _Table("netdev", "nsnet_dns")
    on_loopback.chain("egress", rewrites, hook=("filter", "egress", PRIO_FILTER), device="lo")
    on_output = _Table("ip", "nsnet_dns")
    on_output.chain("output", rewrites, hook=("filter", "output", PRIO_FILTER))
    return on_loopback.text() + OR + on_output.text()


# ---- a service's virtual IPs, inside a sandbox (engine/services.py) --------------------------------------

VIP_TABLE = "nsnet_vip"


def render_vips(vips: dict[str, list[str]]) -> str:
    """Inside a sandbox: a connection to a service's virtual IP goes to one of its running tasks, picked at
    random (kube-proxy's nftables mode: a verdict map from the VIP to a chain per service, `numgen random`
    into a map of the tasks' addresses). DNAT on the output hook, in the sandbox's own namespace: before
    routing, so the packet leaves towards a task's address (which the overlay's neighbour entries answer)
    and never asks who has the VIP, which nobody holds. A VIP with no running task refuses at once.
    `vips`: VIP -> the tasks' addresses. Replaces the table whole."""
    t = _Table("ip", VIP_TABLE)
    elements = []
    for i, (vip, backends) in enumerate(sorted(vips.items())):
        chain = f"svc{i}"
        elements.append([vip, {"goto": {"target": chain}}])
        if backends:
            pick = {"map": {"key": {"numgen": {"mode": "random", "mod": len(backends), "offset": 0}},
                            "data": {"set": [[k, ip] for k, ip in enumerate(backends)]}}}
            t.chain(chain, [[{"dnat": {"family": "ip", "addr": pick}}]])
        else:
            t.chain(chain, [[{"reject": {"type": "icmp", "expr": "port-unreachable"}}]])
    t.chain("output", [[{"vmap": {"key": _field("ip", "daddr"), "data": "@vips"}}]],
            hook=("nat", "output", PRIO_DSTNAT))
    t.declare("vips", "ipv4_addr", elements, map_to="verdict")
    return t.text()


def render_no_vips() -> str:
    """The VIP table gone from a sandbox (no service on its networks any more)."""
    table = {"table": {"family": "ip", "name": VIP_TABLE}}
    return json.dumps({"nftables": [{"add": table}, {"delete": table}]})


# ---- the routing mesh, inside a node's ingress sandbox (engine/ingress.py) ------------------------------

INGRESS_TABLE = "nsnet_ingress"


def render_ingress(ports: dict[tuple[str, int], tuple[int, list[str]]]) -> str:
    """Inside the ingress sandbox: a connection to published port P (the host DNATed it here, to P) goes to
    one of the service's running tasks on the `ingress` network, port T, picked at random (as render_vips),
    and leaves from the sandbox's own `ingress` address (masquerade), so that the task's reply comes back
    through here to be un-NATed. `ports`: (proto, P) -> (T, the tasks' addresses). A port with no task in
    rotation refuses at once. Replaces the table whole."""
    t = _Table("ip", INGRESS_TABLE)
    prerouting = []
    for i, ((proto, port), (target, backends)) in enumerate(sorted(ports.items())):
        chain = f"port{i}"
        prerouting.append([_match(_field(proto, "dport"), port), {"goto": {"target": chain}}])
        if backends:
            pick = {"map": {"key": {"numgen": {"mode": "random", "mod": len(backends), "offset": 0}},
                            "data": {"set": [[k, ip] for k, ip in enumerate(backends)]}}}
            # the protocol matched again: a DNAT to a port needs it in its own rule
            t.chain(chain, [[_match({"meta": {"key": "l4proto"}}, proto),
                             {"dnat": {"family": "ip", "addr": pick, "port": target}}]])
        else:
            t.chain(chain, [[{"reject": {"type": "icmp", "expr": "port-unreachable"}}]])
    t.chain("prerouting", prerouting, hook=("nat", "prerouting", PRIO_DSTNAT))
    t.chain("postrouting", [[_match(CT_STATUS, "dnat", "in"), MASQUERADE]], hook=("nat", "postrouting", PRIO_SRCNAT))
    return t.text()
