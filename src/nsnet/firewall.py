"""nsnet's whole nftables state, rendered from the store as one text and applied atomically.

One table is ours: `inet nsnet` (isolation, NAT, published ports). The render deletes and recreates
it in one transaction, so after a crash the next render is the repair, and nothing else's rules are
touched. (ICC off is traffic that never leaves the bridge: the bridge driver isolates those ports.)

Frames bridged between two sandboxes of one network are not tracked. Without br_netfilter they never
reach the IP hooks; with it (Docker and kube-proxy load it, and it is host-wide) each such frame would
otherwise pass conntrack. Nothing here needs their state: the hairpin path to a published port goes to a
host address, which stays tracked, and so do the gateway's own flows.
"""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

from .kernel.nft import OR


@dataclass
class FwNetwork:
    bridge: str
    subnets: list[str]
    internal: bool = False
    icc: bool = True
    masquerade: bool = True
    gateways: list[str] = field(default_factory=list)
    leaves: str | None = None   # interface-name pattern of its leaf bridges (see drivers/fabric.py)


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


def _q(name: str) -> str:
    return '"' + name + '"'


def render(rs: Ruleset) -> str:
    # Under br_netfilter every frame between two sandboxes passes the forward and raw chains: they look
    # the network up in sets and a map (one lookup each), so a frame costs the same on a host of one
    # network as on a host of fifty. A rule per network made it grow with each network (30 networks:
    # netfilter took 17 % of the CPU of a sandbox-to-sandbox stream, against 4 % with one).
    out = [
        # "add" then "delete" makes the delete valid whether or not the table exists yet.
        "add table inet nsnet", "delete table inet nsnet",
        "table inet nsnet {",
        _declare("bridges", "ifname", [_q(n.bridge) for n in rs.networks]),
        _declare("within", "ifname . ifname", [f"{_q(n.bridge)} . {_q(n.bridge)}" for n in rs.networks if n.icc]),
        _declare("isolated", "ifname . ifname", [f"{_q(n.bridge)} . {_q(n.bridge)}" for n in rs.networks if not n.icc]),
        # Leaf bridges (drivers/fabric.py), by name pattern: they forward nothing but their network's frames.
        _declare("leaves", "ifname", sorted({_q(n.leaves) for n in rs.networks if n.leaves}), interval=True),
        _declare("untracked", "ifname : verdict", [f"{_q(n.bridge)} : jump untracked-{i}" for i, n in enumerate(rs.networks)]),
    ]

    out += ["  chain forward {", "    type filter hook forward priority filter; policy accept;",
            "    iifname . oifname @within accept",   # within one network, ICC on
            "    iifname @leaves accept"]
    for n in rs.networks:
        if n.internal:  # nothing in or out, whatever else allows it
            out.append(f"    iifname {_q(n.bridge)} oifname != {_q(n.bridge)} drop")
            out.append(f"    oifname {_q(n.bridge)} iifname != {_q(n.bridge)} drop")
    out += [
        "    ct state established,related accept",
        "    ct state invalid drop",
        "    ct status dnat accept",   # published ports, from anywhere (other networks' sandboxes included)
        "    iifname . oifname @isolated drop",         # within one network, ICC off
        "    iifname @bridges oifname @bridges drop",   # no traffic between two networks
        "    iifname @bridges accept",                  # out to the world
        "    oifname @bridges drop",                    # unsolicited traffic into a network
        "  }",
    ]

    out += ["  chain raw {", "    type filter hook prerouting priority raw; policy accept;",
            "    iifname @leaves notrack",
            "    iifname vmap @untracked", "  }"]
    for i, n in enumerate(rs.networks):
        out += [f"  chain untracked-{i} {{"] + ["    " + rule for rule in _untracked_within(n)] + ["  }"]

    out += ["  chain prerouting {", "    type nat hook prerouting priority dstnat; policy accept;",
            "    fib daddr type local jump published", "  }",
            "  chain output {", "    type nat hook output priority -100; policy accept;",
            "    fib daddr type local jump published", "  }",
            "  chain published {"]
    for p in rs.ports:
        out.append("    " + _dnat_rule(p))
    out.append("  }")

    # NAT chains see the first packet of a connection only: a rule per network costs nothing per frame.
    out += ["  chain postrouting {", "    type nat hook postrouting priority srcnat; policy accept;"]
    for n in rs.networks:
        b = _q(n.bridge)
        # The host reaching a published port through 127.0.0.1, and a sandbox reaching a published port
        # of its own network through the host (hairpin): replies must come back through the host to be
        # un-NATed. Matched by source, not by iifname: under br_netfilter a hairpin is bridged, not
        # routed, and has no input interface at this hook.
        out.append(f"    oifname {b} ip saddr 127.0.0.0/8 masquerade")
        for s in n.subnets:
            fam = "ip" if ipaddress.ip_network(s).version == 4 else "ip6"
            out.append(f"    oifname {b} {fam} saddr {s} ct status dnat masquerade")
        if n.masquerade and not n.internal:
            for s in n.subnets:
                fam = "ip" if ipaddress.ip_network(s).version == 4 else "ip6"
                out.append(f"    {fam} saddr {s} oifname != {b} masquerade")
    out += ["  }", "}"]

    return "\n".join(out) + "\n"


def _declare(name: str, key: str, elements: list[str], interval: bool = False) -> str:
    """A named set, or a map when `key` has a value type ("ifname : verdict")."""
    kind = "map" if ":" in key else "set"
    flags = " flags interval;" if interval else ""
    items = f" elements = {{ {', '.join(elements)} }}" if elements else ""
    return f"  {kind} {name} {{ type {key};{flags}{items} }}"


def _untracked_within(n: FwNetwork) -> list[str]:
    """Sandbox-to-sandbox traffic of a network's bridge: both ends in a subnet, the gateway not one of
    them (the raw chain jumps here by the frame's bridge). All that a leaf bridge sees (under
    br_netfilter) is untracked too, by the raw chain: a leaf is layer 2 only. Tracked there, a sandbox's
    hairpin was DNATed in the leaf's bridge context and routed from the leaf, and its reply dropped;
    untracked, both are tracked and NATed on the network's own bridge, as for its own ports."""
    rules = []
    for s in n.subnets:
        net = ipaddress.ip_network(s)
        fam = "ip" if net.version == 4 else "ip6"
        own = [g for g in n.gateways if ipaddress.ip_address(g) in net]
        not_gw = "".join(f" {fam} daddr != {g}" for g in own)
        rules.append(f"{fam} saddr {s} {fam} daddr {s}{not_gw} notrack")
    return rules


def _dnat_rule(p: FwPort) -> str:
    target = ipaddress.ip_address(p.target_ip)
    fam = "ip" if target.version == 4 else "ip6"
    match = f"meta nfproto {'ipv4' if fam == 'ip' else 'ipv6'} "
    if p.host_ip and p.host_ip not in ("0.0.0.0", "::"):
        match += f"{fam} daddr {p.host_ip} "
    dest = f"{p.target_ip}:{p.target_port}" if fam == "ip" else f"[{p.target_ip}]:{p.target_port}"
    return f"{match}{p.proto} dport {p.host_port} dnat {fam} to {dest}"


def render_dns_redirect(address: str, udp_port: int, tcp_port: int) -> str:
    """Inside a sandbox: queries to ADDRESS:53 reach the resolver's real ports, and its answers leave
    from port 53. Rewritten both ways without NAT: a NAT rule would make the kernel track every
    connection of the sandbox, which cost ~5 % of its TCP throughput in the data-plane benchmark.
    The rewrites sit on the loopback's egress hook, which sees loopback packets only; in an output
    chain they ran for every packet the sandbox sends (perf: ~0.6 % of a TCP stream's CPU, gone
    here). A kernel without the egress hook (before 5.16) gets the output chain: two alternatives,
    for nft.run_first()."""
    rewrites = (f"    ip daddr {address} udp dport 53 udp dport set {udp_port}\n"
                f"    ip daddr {address} tcp dport 53 tcp dport set {tcp_port}\n"
                f"    ip saddr {address} udp sport {udp_port} udp sport set 53\n"
                f"    ip saddr {address} tcp sport {tcp_port} tcp sport set 53\n")
    # "add" then "delete": replaces the ports of a previous daemon
    on_loopback = ("add table netdev nsnet_dns\ndelete table netdev nsnet_dns\n"
                   "table netdev nsnet_dns {\n"
                   f'  chain egress {{\n    type filter hook egress device "lo" priority 0; policy accept;\n{rewrites}  }}\n}}\n')
    on_output = ("add table ip nsnet_dns\ndelete table ip nsnet_dns\n"
                 "table ip nsnet_dns {\n"
                 f"  chain output {{\n    type filter hook output priority 0; policy accept;\n{rewrites}  }}\n}}\n")
    return on_loopback + OR + on_output
