"""Plain records of what nsnet manages, and the one place that renders them as Docker's JSON."""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field


def now_rfc3339() -> str:
    t = time.time()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t % 1 * 1e9):09d}Z"


# The alias on every link nsnet makes for a network (its bridge, leaves, uplinks, VLAN sub-interfaces, shims):
# reconcile and doctor tell whose a link is by it.
OWNER_ALIAS = "nsnet network "


def owner_alias(net_id: str) -> str:
    return OWNER_ALIAS + net_id


@dataclass
class SubnetConfig:
    subnet: str
    gateway: str | None = None
    ip_range: str | None = None
    aux: dict[str, str] = field(default_factory=dict)


@dataclass
class Network:
    id: str
    name: str
    driver: str
    created: str
    subnets: list[SubnetConfig] = field(default_factory=list)
    ipv6: bool = False
    internal: bool = False
    attachable: bool = False
    options: dict[str, str] = field(default_factory=dict)
    labels: dict[str, str] = field(default_factory=dict)
    bridge: str | None = None        # kernel name of the bridge, for the bridge driver
    builtin: bool = False            # bridge/host/none: exist from the start, cannot be removed
    dns: bool = False                # embedded name resolution (user-defined networks only, as Docker)
    adopted: bool = False            # bridge: an existing (flat LAN) bridge nsnet uses but does not own
    scope: str = "local"             # local: this host's; swarm: shared by the hosts of a swarm (overlay)

    def option(self, key: str, default: str | None = None) -> str | None:
        return self.options.get(key, default)

    def flag(self, key: str, default: bool) -> bool:
        value = self.options.get(key)
        return default if value is None else value.lower() in ("1", "true", "yes", "on")


@dataclass
class PortMapping:
    host_ip: str
    host_port: int
    port: int
    proto: str = "tcp"

    def key(self) -> str:
        return f"{self.port}/{self.proto}"


@dataclass
class Endpoint:
    id: str
    network_id: str
    sandbox_id: str
    ifname: str                 # name inside the sandbox: eth0, eth1, ...
    host_ifname: str | None     # host end of the veth (bridge driver)
    mac: str | None
    ipv4: str | None            # "172.18.0.2/16"
    ipv6: str | None
    gateway4: str | None
    gateway6: str | None
    aliases: list[str] = field(default_factory=list)
    node: str = ""              # the node (engine id) whose sandbox it is
    names: list[str] = field(default_factory=list)  # on a swarm network: what it answers to, for other hosts


@dataclass
class NetworkRequest:
    """What the user asked for on one network: kept while the sandbox is stopped, like Docker."""
    network_id: str
    ip: str | None = None
    ip6: str | None = None
    aliases: list[str] = field(default_factory=list)


@dataclass
class Sandbox:
    id: str
    name: str
    hostname: str
    created: str
    cmd: list[str]
    state: str = "created"      # created | running | exited
    pid: int | None = None
    pid_start: int | None = None  # process start time, so a reused pid is not mistaken for ours
    exit_code: int | None = None
    auto_remove: bool = False
    dns: list[str] = field(default_factory=list)
    ports: list[PortMapping] = field(default_factory=list)
    requests: list[NetworkRequest] = field(default_factory=list)
    netmode: str = "bridge"     # bridge (own netns) | host | none
    started: str | None = None
    finished: str | None = None
    dns_ports: list[int] | None = None  # UDP, TCP ports of its resolver; 127.0.0.11:53 is redirected to them
    # A CNI attachment (netmode "cni", no process of its own): the runtime's container ID, interface and
    # network namespace (path, and its device and inode, so that a namespace made anew there is not ours).
    cni: dict | None = None


# The fields only the host that runs a sandbox can use: its process, its resolver's sockets, its host links'
# names. They are saved apart from the rest (store/records.py: under local/), which is what a store shared by
# hosts holds; the engine's objects carry both. The table, field by field, is in docs/architecture.md.
HOST_ONLY = {
    "sandbox": ("pid", "pid_start", "dns_ports", "cni"),
    "endpoint": ("host_ifname",),
}


def to_dict(obj) -> dict:
    return dataclasses.asdict(obj)


def from_dict(cls, data: dict):
    """Inverse of to_dict for the records above (nested lists of records included)."""
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name not in data:
            continue
        value = data[f.name]
        nested = _NESTED.get((cls, f.name))
        if nested is not None and value is not None:
            value = [from_dict(nested, v) for v in value]
        kwargs[f.name] = value
    return cls(**kwargs)


_NESTED = {
    (Network, "subnets"): SubnetConfig,
    (Sandbox, "ports"): PortMapping,
    (Sandbox, "requests"): NetworkRequest,
}


# ---- Docker's JSON shapes -------------------------------------------------------------------------

def network_json(net: Network, members: list[tuple[Sandbox, Endpoint]]) -> dict:
    containers = {}
    for sb, ep in members:
        containers[sb.id] = {
            "Name": sb.name,
            "EndpointID": ep.id,
            "MacAddress": ep.mac or "",
            "IPv4Address": ep.ipv4 or "",
            "IPv6Address": ep.ipv6 or "",
            "DNSNames": dns_names(net, sb, ep) if net.dns else None,
        }
        if sb.cni:   # a CNI runtime's container: who it is there
            containers[sb.id]["Cni"] = {"ContainerID": sb.cni["container_id"], "Netns": sb.cni["netns"]}
    config = []
    for s in net.subnets:
        c = {"Subnet": s.subnet}
        if s.gateway:
            c["Gateway"] = s.gateway
        if s.ip_range:
            c["IPRange"] = s.ip_range
        if s.aux:
            c["AuxiliaryAddresses"] = dict(s.aux)
        config.append(c)
    return {
        "Name": net.name,
        "Id": net.id,
        "Created": net.created,
        "Scope": net.scope,
        "Driver": net.driver,
        "EnableIPv4": True,
        "EnableIPv6": net.ipv6,
        "IPAM": {"Driver": "default", "Options": {}, "Config": config},
        "Internal": net.internal,
        "Attachable": net.attachable,
        "Ingress": net.scope == "swarm" and net.name == "ingress",   # the routing mesh's (engine/ingress.py)
        "ConfigFrom": {"Network": ""},
        "ConfigOnly": False,
        "Containers": containers,
        "Options": dict(net.options),
        "Labels": dict(net.labels),
    }


def dns_names(net: Network, sb: Sandbox, ep: Endpoint) -> list[str]:
    names = [sb.name]
    for n in ep.aliases + [sb.hostname, sb.id[:12]]:
        if n and n not in names:
            names.append(n)
    return names


def sandbox_json(sb: Sandbox, members: list[tuple[Network, Endpoint]]) -> dict:
    networks = {}
    for net, ep in members:
        v4, _, plen4 = (ep.ipv4 or "").partition("/")
        v6, _, plen6 = (ep.ipv6 or "").partition("/")
        networks[net.name] = {
            "NetworkID": net.id,
            "EndpointID": ep.id,
            "Gateway": ep.gateway4 or "",
            "IPAddress": v4,
            "IPPrefixLen": int(plen4) if plen4 else 0,
            "IPv6Gateway": ep.gateway6 or "",
            "GlobalIPv6Address": v6,
            "GlobalIPv6PrefixLen": int(plen6) if plen6 else 0,
            "MacAddress": ep.mac or "",
            "Aliases": list(ep.aliases),
            "DNSNames": dns_names(net, sb, ep) if net.dns else None,
        }
    ports: dict[str, list | None] = {}
    for p in sb.ports if sb.state == "running" else ():  # as Docker: bound while it runs, kept in PortBindings
        ports.setdefault(p.key(), []).append({"HostIp": p.host_ip, "HostPort": str(p.host_port)})
    return {
        "Id": sb.id,
        "Name": "/" + sb.name,
        "Created": sb.created,
        "Path": sb.cmd[0] if sb.cmd else "",
        "Args": sb.cmd[1:],
        "State": {
            "Status": sb.state,
            "Running": sb.state == "running",
            "Pid": sb.pid or 0,
            "ExitCode": sb.exit_code if sb.exit_code is not None else -1,  # -1: nobody saw it end
            "StartedAt": sb.started or "",
            "FinishedAt": sb.finished or "",
        },
        "Config": {"Hostname": sb.hostname, "Cmd": list(sb.cmd)},
        "HostConfig": {
            "NetworkMode": sb.netmode if sb.netmode != "bridge" else _first_network_name(members),
            "AutoRemove": sb.auto_remove,
            "Dns": list(sb.dns),
            "PortBindings": {p.key(): [{"HostIp": p.host_ip, "HostPort": str(p.host_port)}] for p in sb.ports},
        },
        "NetworkSettings": {"Ports": ports, "Networks": networks},
        **({"Cni": {"ContainerID": sb.cni["container_id"], "IfName": sb.cni["ifname"], "Netns": sb.cni["netns"],
                    "Network": sb.cni["network"]}} if sb.cni else {}),
    }


def _first_network_name(members) -> str:
    return members[0][0].name if members else "none"
