"""Docker's network driver answered by nsnet (`docker network create -d nsnet`): Docker's networks are nsnet
bridge networks, built through the engine's own use case; Docker's endpoints are veths on their bridge.

Docker keeps the containers: it gives the addresses (from its IPAM driver, nsnet's or its own), moves the
container's end of the veth into the container, names it eth0 and sets its addresses and routes. nsnet makes
the veth (both ends in the host's namespace, the host's end plugged into the network's bridge), the bridge,
the firewall (isolation, NAT, internal) and the published ports (Docker installs no NAT for remote drivers).

Docker replays nothing after a plugin restart, so every endpoint is a record (kind `local/dockerendpoint`);
a Docker network is the nsnet network labelled with Docker's network ID (NETWORK_LABEL), named
`docker-<its first 12 hex digits>` (Docker never tells a driver the name it shows).
"""
from __future__ import annotations

import ipaddress
import logging
from types import SimpleNamespace

from ..drivers.bridge import HOST_IP_KEY, ICC_KEY, IPV6_KEY, MASQ_KEY, NAME_KEY
from ..drivers.base import MTU_KEY
from ..errors import Conflict, NotFound, NsnetError
from ..kernel import ports as host_ports
from ..model import Network, PortMapping, now_rfc3339, owner_alias
from .thread import on_kernel_thread

log = logging.getLogger("nsnet.engine")

ENDPOINT = "local/dockerendpoint"                       # a host's own records: Docker is one host's
NETWORK_LABEL = "com.nsnet.docker.network-id"           # marks an nsnet network as Docker's
NAME_PREFIX = "docker-"
GENERIC, INTERNAL, ENABLE_IPV6 = "com.docker.network.generic", "com.docker.network.internal", "com.docker.network.enable_ipv6"
PORTMAP = "com.docker.network.portmap"
# `-o` keys Docker users know from its bridge driver (and the short ones of `docker network create -o`),
# as nsnet's bridge driver names them.
OPTION_KEYS = {MTU_KEY: MTU_KEY, "mtu": MTU_KEY, ICC_KEY: ICC_KEY, "icc": ICC_KEY,
               MASQ_KEY: MASQ_KEY, "masquerade": MASQ_KEY, NAME_KEY: NAME_KEY, HOST_IP_KEY: HOST_IP_KEY}
PROTOCOLS = {6: "tcp", 17: "udp", "tcp": "tcp", "udp": "udp"}   # Docker sends IANA numbers (types.Protocol)
HOST_PREFIX, PEER_PREFIX = "nsd", "nsdc"   # the veth's ends: nsd + 12 hex digits, nsdc + 11


class DockerNets:
    def __init__(self, engine):
        self.e, self.thread, self.lock = engine, engine.thread, engine.lock
        self.eps: dict[str, dict] = {d["id"]: d for d in engine.store.list(ENDPOINT)}
        self.sockets: dict[str, list] = {}   # endpoint id -> the sockets holding its published ports

    # ---- networks --------------------------------------------------------------------------------

    def network_of(self, docker_id: str) -> Network:
        for net in list(self.e.state.nets.values()):
            if net.labels.get(NETWORK_LABEL) == docker_id:
                return net
        raise NotFound(f"network {docker_id[:12]!r} is not one of nsnet's Docker networks")

    @on_kernel_thread   # the engine's use case runs inline, under the lock this takes
    def create_network(self, docker_id: str, options: dict, ipv4: list, ipv6: list) -> Network:
        with self.lock:
            try:
                return self.network_of(docker_id)   # Docker asks again after an error it did not see answered
            except NotFound:
                return self._create_network(docker_id, options, ipv4, ipv6)

    def _create_network(self, docker_id: str, options: dict, ipv4: list, ipv6: list) -> Network:
        generic = options.get(GENERIC) or {}
        if not isinstance(generic, dict):
            raise NsnetError(f"{GENERIC} must be a JSON object")
        mapped = {}
        for key, value in generic.items():
            if key not in OPTION_KEYS:
                raise NsnetError(f"unknown option {key[:60]!r} for the nsnet driver (it takes: "
                                 f"{', '.join(sorted(k for k in OPTION_KEYS if '.' not in k))} or Docker's "
                                 f"bridge keys for them)")
            mapped[OPTION_KEYS[key]] = str(value)
        subnets, gateways = [], []
        for data in list(ipv4) + list(ipv6):
            if not isinstance(data, dict) or not isinstance(data.get("Pool"), str):
                raise NsnetError("IPv4Data and IPv6Data must be lists of objects with a Pool")
            subnets.append(data["Pool"])
            if isinstance(data.get("Gateway"), str) and data["Gateway"]:
                gateways.append(data["Gateway"].split("/")[0])
        if not any(":" not in s for s in subnets):
            raise NsnetError("Docker gave no IPv4 subnet: use an IPAM driver that gives one (nsnet's or Docker's default)")
        if ipv6:
            mapped[IPV6_KEY] = "true"
        # A subnet nsnet's IPAM driver gave Docker was checked against the host then: it is its own evidence now.
        pools = {p["subnet"] for p in self.e.docker_pools.pools.values()}
        req = {"Name": NAME_PREFIX + docker_id[:12], "Driver": "bridge", "Options": mapped,
               "Labels": {NETWORK_LABEL: docker_id}, "Internal": options.get(INTERNAL) in (True, "true"),
               "EnableIPv6": bool(ipv6), "Subnets": subnets, "Gateways": gateways,
               "AllowOverlap": all(_canonical(s) in pools for s in subnets)}
        return self.e.create_network(req, ask_docker=False)

    @on_kernel_thread
    def delete_network(self, docker_id: str) -> None:
        with self.lock:
            try:
                net = self.network_of(docker_id)
            except NotFound:
                return   # gone already: Docker's `network rm` must still work
            for ep in [d for d in self.eps.values() if d["network"] == net.id]:
                self._drop(ep)
            self.e.remove_network(net.id, by_docker=True)

    def refuse_removal(self, net: Network) -> None:
        """Docker's networks are removed through Docker (it keeps them too): never by nsnet's rm or prune."""
        if NETWORK_LABEL in net.labels:
            raise Conflict(f"network {net.name} is Docker's (docker network create -d nsnet): remove it with "
                           f"docker network rm")

    def refuse_sandbox(self, nets: list[Network]) -> None:
        """nsnet's sandboxes stay off Docker's networks: Docker hands out their addresses, and nsnet's
        allocator would give a sandbox one of them."""
        for net in nets:
            if NETWORK_LABEL in net.labels:
                raise Conflict(f"network {net.name} is Docker's (docker network create -d nsnet): nsnet's "
                               f"sandboxes cannot join it; use one of nsnet's networks")

    # ---- endpoints -------------------------------------------------------------------------------

    @on_kernel_thread
    def create_endpoint(self, docker_id: str, eid: str, iface: dict) -> None:
        with self.lock:
            net = self.network_of(docker_id)
            if eid in self.eps:
                return
            if not iface.get("Address"):
                raise NsnetError("Docker gave the endpoint no IPv4 address: nsnet's driver takes Docker's addresses")
            try:
                ipaddress.ip_interface(iface["Address"])
            except ValueError:
                raise NsnetError(f"invalid endpoint address {iface['Address'][:60]!r}: give ADDRESS/PREFIX") from None
            doc = {"id": eid, "network": net.id, "ipv4": iface["Address"], "ipv6": iface.get("AddressIPv6") or None,
                   "host_ifname": HOST_PREFIX + eid[:12], "peer": PEER_PREFIX + eid[:11], "joined": False,
                   "ports": [], "created": now_rfc3339()}
            self._save(doc)

    @on_kernel_thread
    def delete_endpoint(self, eid: str) -> None:
        with self.lock:
            ep = self.eps.get(eid)
            if ep is not None:
                self._drop(ep)

    @on_kernel_thread
    def join(self, eid: str) -> dict:
        """The veth, the host's end on the bridge; what Docker moves into the container, and the gateway."""
        with self.lock:
            ep, net = self._endpoint(eid)
            driver, kernel = self.e.driver(net), self.e.kernel
            kernel.delete_link(ep["host_ifname"])   # a veth of an earlier join Docker never left
            bridge = kernel.index(net.bridge)
            if bridge is None:                       # deleted behind nsnet's back: built again
                driver.create_network(net)
                bridge = kernel.index(net.bridge)
            try:   # a veth cut off midway (made, not yet marked) goes too: deleting one end deletes both
                host, _ = kernel.veth_pair(ep["host_ifname"], ep["peer"], mtu=driver.mtu(net), alias=owner_alias(net.id))
                kernel.plug_in(host, bridge, isolated=not net.flag(ICC_KEY, True))
                self._save(dict(ep, joined=True))
            except BaseException:
                kernel.delete_link(ep["host_ifname"])
                raise
            gateway = next((s.gateway for s in net.subnets if s.gateway and ":" not in s.gateway), None)
            gateway6 = next((s.gateway for s in net.subnets if s.gateway and ":" in s.gateway), None)
            answer = {"InterfaceName": {"SrcName": ep["peer"], "DstPrefix": "eth"}}
            if net.internal:   # no way out, and no docker_gwbridge either
                answer["DisableGatewayService"] = True
            else:
                answer["Gateway"] = gateway
                if gateway6 and ep["ipv6"]:
                    answer["GatewayIPv6"] = gateway6
            return answer

    @on_kernel_thread
    def leave(self, eid: str) -> None:
        with self.lock:
            ep = self.eps.get(eid)
            if ep is None:
                return
            self._unpublish(ep)
            self.e.kernel.delete_link(ep["host_ifname"])
            self._save(dict(ep, joined=False, ports=[]))
            if ep["ports"]:
                self.e._apply_firewall()

    def members(self, net: Network) -> dict:
        """Docker's endpoints on `net`, as `network inspect` lists containers (Docker never tells a driver
        its containers' names or IDs: keyed by endpoint)."""
        return {ep["id"]: {"Name": f"docker-endpoint-{ep['id'][:12]}", "EndpointID": ep["id"], "MacAddress": "",
                           "IPv4Address": ep["ipv4"], "IPv6Address": ep["ipv6"] or "", "DNSNames": None}
                for ep in list(self.eps.values()) if ep["network"] == net.id}

    def info(self, eid: str) -> dict:
        ep, net = self._endpoint(eid)
        return {"HostInterface": ep["host_ifname"], "Bridge": net.bridge, "Network": net.name}

    # ---- published ports ---------------------------------------------------------------------------

    @on_kernel_thread
    def publish(self, eid: str, portmap: list) -> None:
        with self.lock:
            ep, net = self._endpoint(eid)
            wanted = [_mapping(b) for b in portmap or []]
            self._unpublish(ep)
            held = []
            try:
                for p in wanted:
                    held.append(host_ports.hold(p))
                self._save(dict(ep, ports=[[p.host_ip, p.host_port, p.port, p.proto] for p in wanted]))
                self.e._apply_firewall()
            except BaseException:
                for s in held:
                    s.close()
                self._save(dict(ep, ports=[]))
                raise
            self.sockets[eid] = held

    @on_kernel_thread
    def unpublish(self, eid: str) -> None:
        with self.lock:
            ep = self.eps.get(eid)
            if ep is not None and ep["ports"]:
                self._unpublish(ep)
                self._save(dict(ep, ports=[]))
                self.e._apply_firewall()

    def published(self) -> list:
        """The firewall's published ports of Docker's endpoints (the caller holds the engine's lock)."""
        out = []
        for ep in self.eps.values():
            net = self.e.state.nets.get(ep["network"])
            if net is None or not ep["ports"] or not ep["joined"]:
                continue
            ports = [PortMapping(*p) for p in ep["ports"]]
            out += self.e.driver(net).published(net, SimpleNamespace(ipv4=ep["ipv4"]), ports) or []
        return out

    # ---- after a restart ---------------------------------------------------------------------------

    @on_kernel_thread
    def mend(self) -> list[str]:
        """After nsnet's restart: joined endpoints' host ends back on their bridge (it may have been built
        again), their published ports held again; records of networks gone, dropped. Says what it did."""
        done = []
        with self.lock:
            links = self.e.kernel.links()
            for ep in list(self.eps.values()):
                net = self.e.state.nets.get(ep["network"])
                if net is None:
                    self._drop(ep)
                    done.append(f"docker endpoint {ep['id'][:12]}: its network is gone; dropped")
                    continue
                link = links.get(ep["host_ifname"])
                if ep["joined"] and link is not None and not link.get("master"):
                    bridge = self.e.kernel.index(net.bridge)
                    if bridge is not None:
                        self.e.kernel.plug_in(link["index"], bridge, isolated=not net.flag(ICC_KEY, True))
                        done.append(f"docker endpoint {ep['id'][:12]}: {ep['host_ifname']} plugged back into {net.bridge}")
                if ep["ports"] and ep["id"] not in self.sockets:
                    try:
                        self.sockets[ep["id"]] = [host_ports.hold(PortMapping(*p)) for p in ep["ports"]]
                    except NsnetError as e:
                        done.append(f"docker endpoint {ep['id'][:12]}: {e}")
        for line in done:
            log.info("docker network driver: %s", line)
        return done

    # ---- what Docker forgot (engine/dockerreclaim.py) ------------------------------------------------

    def held(self) -> dict[str, str]:
        """Docker's endpoints nsnet holds: endpoint id -> Docker's id of its network."""
        with self.lock:
            return {eid: net.labels.get(NETWORK_LABEL) for eid, ep in self.eps.items()
                    if (net := self.e.state.nets.get(ep["network"])) is not None}

    @on_kernel_thread
    def reclaim(self, eid: str) -> bool:
        """Drop an endpoint Docker forgot: its record, its veth, its published ports."""
        with self.lock:
            ep = self.eps.get(eid)
            if ep is None:
                return False
            self._drop(ep)
            log.info("docker network driver: endpoint %s (%s, %s) reclaimed: Docker shows it nowhere", eid[:12],
                     ep["ipv4"], ep["host_ifname"])
            return True

    # ---- records ---------------------------------------------------------------------------------

    def _endpoint(self, eid: str) -> tuple[dict, Network]:
        ep = self.eps.get(eid)
        if ep is None:
            raise NotFound(f"endpoint {eid[:12]!r} is not one of nsnet's Docker endpoints")
        net = self.e.state.nets.get(ep["network"])
        if net is None:
            raise NotFound(f"the network of endpoint {eid[:12]!r} is gone")
        return ep, net

    def _save(self, doc: dict) -> None:
        self.e.store.put(ENDPOINT, doc["id"], doc)
        self.eps[doc["id"]] = doc

    def _drop(self, ep: dict) -> None:
        self._unpublish(ep)
        self.e.kernel.delete_link(ep["host_ifname"])
        self.e.kernel.delete_link(ep["peer"])   # never moved: Docker failed before it took it
        self.e.store.delete(ENDPOINT, ep["id"])
        self.eps.pop(ep["id"], None)
        addr = ipaddress.ip_interface(ep["ipv4"]).ip
        self.e.kernel.forget_flows([addr])
        if ep["ports"]:
            self.e._apply_firewall()

    def _unpublish(self, ep: dict) -> None:
        for s in self.sockets.pop(ep["id"], []):
            s.close()


def _canonical(subnet: str) -> str | None:
    try:
        return str(ipaddress.ip_network(subnet))
    except ValueError:
        return None   # refused in one line by the engine's plan


def _mapping(binding) -> PortMapping:
    """Docker's PortBinding (libnetwork types): Proto as a number, HostPort 0 when none was asked for."""
    if not isinstance(binding, dict):
        raise NsnetError(f"{PORTMAP} must be a list of port bindings")
    proto = PROTOCOLS.get(binding.get("Proto"))
    port, host_port = binding.get("Port"), binding.get("HostPort") or 0
    if proto is None or not isinstance(port, int) or not isinstance(host_port, int) or not 0 < port < 65536 \
            or not 0 <= host_port < 65536:
        raise NsnetError(f"invalid port binding {str(binding)[:80]}: give tcp or udp ports from 1 to 65535")
    host_ip = binding.get("HostIP") or "0.0.0.0"
    try:
        ipaddress.ip_address(host_ip)
    except ValueError:
        raise NsnetError(f"invalid host address {str(host_ip)[:40]!r} in a port binding") from None
    return PortMapping(host_ip=host_ip, host_port=host_port, port=port, proto=proto)
