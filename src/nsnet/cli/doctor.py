"""`nsnet doctor`: wiring and printing.

It runs in the CLI process, not in the daemon: it must also diagnose hosts where no nsnet daemon
runs (broken by Docker or by hand). So it is the one command that imports pyroute2, lazily. The
daemon is only asked, never started, for the names of nsnet's networks.
"""
from __future__ import annotations

import ipaddress
import json
import os
import sys

from ..client import ApiError, Client

DOCKER_DAEMON_JSON = "/etc/docker/daemon.json"


def add_parser(sub) -> None:
    d = sub.add_parser("doctor", help="find the address collisions on this host and explain them")
    d.add_argument("--client", metavar="IP", help="explain the path replies to this client take")
    d.add_argument("--compose", metavar="FILE", help="predict the subnets Docker would give this Compose file")
    d.add_argument("--project", metavar="NAME", help="the Compose project name (default: the file's name:, "
                                                     "else its folder's name)")
    d.add_argument("--format", choices=["json"], help="json: the report as JSON")


def cmd_doctor(client: Client, args) -> int:
    """Exit status: 0 healthy, 1 something is broken, 2 could not diagnose."""
    from .. import config, doctor
    from ..errors import NsnetError

    try:
        target = ipaddress.ip_address(args.client) if args.client else None
        cfg = config.load(client.root)
        compose_text = _read(args.compose) if args.compose else None
        docker_pools = _docker_pools() if args.compose else None
    except OSError as e:
        print(f"Error: cannot read {e.filename}: {e.strerror}", file=sys.stderr)
        return 2
    except (NsnetError, ValueError) as e:
        print(f"Error: {e}", file=sys.stderr)
        return 2
    from ..kernel import hostview

    nsnet = _nsnet_networks(client.root)
    facts, kernel = hostview.read(reserved=cfg.reserved, nsnet_subnets=[(n.name, s) for n in nsnet for s in n.subnets],
                                  route_to=target)
    view = doctor.HostView(**vars(facts), nsnet=nsnet)
    if cfg.pools:
        view.pools = tuple(cfg.pools)
    report = doctor.Report(doctor.diagnose(view))
    if target:
        report.client = doctor.client_path(view, target, kernel)
    if compose_text is not None:
        folder = os.path.basename(os.path.dirname(os.path.abspath(args.compose)))
        try:
            report.compose = doctor.check_compose(view, compose_text, args.compose, args.project, docker_pools, folder)
        except NsnetError as e:
            print(f"Error: {args.compose}: {e}", file=sys.stderr)
            return 2
    if args.format == "json":
        print(json.dumps(report.as_dict(), indent=2))
    else:
        print_report(report)
    return 1 if report.broken else 0


def _read(path: str) -> str:
    with open(path) as f:
        return f.read()


def _docker_pools():
    """Docker's pools on this host: its daemon.json's default-address-pools, else its defaults."""
    from ..ipam.pools import DEFAULT_POOLS, parse_pools

    try:
        doc = json.loads(_read(DOCKER_DAEMON_JSON))
    except FileNotFoundError:
        return DEFAULT_POOLS
    except ValueError as e:
        raise ValueError(f"cannot parse {DOCKER_DAEMON_JSON}: {e}") from None
    pools = doc.get("default-address-pools") if isinstance(doc, dict) else None
    return parse_pools(pools, f"{DOCKER_DAEMON_JSON}: default-address-pools") if pools else DEFAULT_POOLS


def _nsnet_networks(root: str) -> list:
    """nsnet's networks with names, when a daemon answers; [] otherwise (the bridges' aliases still
    mark them as nsnet's)."""
    from ..doctor import NsnetNetwork

    try:
        docs = Client(root, autostart=False, timeout=5).get("/networks")
    except (ApiError, OSError):
        return []
    out = []
    for d in docs:
        subnets = tuple(ipaddress.ip_network(c["Subnet"]) for c in (d.get("IPAM") or {}).get("Config") or [])
        members = tuple(ipaddress.ip_interface(m[k]).ip for m in (d.get("Containers") or {}).values()
                        for k in ("IPv4Address", "IPv6Address") if m.get(k))
        who = tuple((ipaddress.ip_interface(m[k]).ip, _who(m)) for m in (d.get("Containers") or {}).values()
                    for k in ("IPv4Address", "IPv6Address") if m.get(k))
        bridge = (d.get("Options") or {}).get("com.docker.network.bridge.name")
        out.append(NsnetNetwork(d["Id"], d["Name"], bridge, subnets, members, who=who, scope=d.get("Scope", "local")))
    return out


def _who(member: dict) -> str:
    cni = member.get("Cni")
    if cni:
        return f"CNI container {cni['ContainerID']} (netns {cni['Netns']}, sandbox {member['Name']})"
    return f"sandbox {member['Name']}"


# -- printing ------------------------------------------------------------------------------------

def print_report(report) -> None:
    if report.findings:
        n = len(report.findings)
        print(f"{n} address collision{'s' if n > 1 else ''} on this host:")
        for i, f in enumerate(report.findings, 1):
            print(f"\n{i}. {f.what}.")
            print(f"   breaks: {f.breaks}.")
            print(f"   fix:    {f.fix}.")
    else:
        print("No address collisions on this host.")
    if report.client:
        _print_client(report.client)
    if report.compose:
        _print_compose(report.compose)


def _print_client(c) -> None:
    print(f"\nReplies to {c.client}:")
    if c.route:
        print(f"  route:     {c.route} (longest prefix match in the main table)")
    else:
        print("  route:     none matches in the main table")
    if c.kernel:
        print(f"  kernel:    {c.kernel} (ip route get {c.client})")
    if c.owner:
        print(f"  interface: {c.owner.text}")
    for e in c.known_as:
        print(f"  known as:  {e.detail}")
    print(f"  reachable: {c.why}.")
    if c.fix:
        print(f"  fix:       {c.fix}.")


def _print_compose(cc) -> None:
    from ..ipam.evidence import explain, ranked

    print(f"\nCompose file {cc.file}: the subnets Docker would give its networks on this host")
    for p in cc.predictions:
        source = {"explicit": "its ipam block", "pool": "Docker's pools", "existing": "exists already"}[p.source]
        print(f"  {p.network_name:<12} {p.docker_name:<24} {str(p.subnet):<18} ({source})")
        worst = {}  # one line per range: the worst reason it is in use
        for e in ranked(p.collisions):
            worst.setdefault(e.network, e)
        for e in list(worst.values())[:3]:
            print(f"      collides: {explain(p.subnet, e)}")
        if len(worst) > 3:
            print(f"      collides: … and {len(worst) - 3} more (--format json lists them)")
    if cc.fix is None:
        return
    print("\nFix: pin these subnets in the Compose file (merge into its top-level networks:)")
    print("".join(f"    {line}\n" for line in cc.fix.compose_yaml.splitlines()), end="")
    if cc.fix.daemon_json:
        print(f"and keep Docker's next networks clear too, in {DOCKER_DAEMON_JSON} (then restart Docker):")
        print("".join(f"    {line}\n" for line in cc.fix.daemon_json.splitlines()), end="")
