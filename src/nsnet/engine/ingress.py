"""The routing mesh on each node (issue 17): the swarm's `ingress` overlay and this node's ingress sandbox.

Docker's shape, with nftables for IPVS. The swarm's overlay named `ingress` carries the mesh (Docker's
Ingress network). As Docker's, it is made at `swarm init` (`make_at_init`), from the first clear /24 of the
swarm's pool (10.0.0.0/24 with the default pool: the first other overlay gets 10.0.1.0/24) and with Docker's
VXLAN ID 4096, and every node lists it; but nothing is built for it on any node (no overlay namespace, no
sandbox) until a service publishes a port in ingress mode. `network rm ingress` is refused while a service
publishes one (engine/services.py), allowed otherwise (Docker asks first; nsnet does not); the next service
that publishes an ingress port makes it again (`ensure_network`). The last node to leave the swarm takes it
with it (engine/swarmcases.py).

While any service publishes an ingress port, every node of the swarm runs one sandbox, `ingress-sbox`, on
`ingress` and on the node's gateway bridge (which any overlay sandbox gets). It is nsnet's own, as Docker's:
`ps` does not list it and `swarm leave` does not count it (it goes with the swarm's networks). It publishes
each ingress port P as P:P, as any sandbox's `-p`: the host holds P with a socket and DNATs it to the
sandbox's gateway-bridge address. Inside it, firewall.render_ingress DNATs P to one of the service's running
tasks on `ingress` (port T) and masquerades to its own `ingress` address, so that the reply comes back
through it; its command turns forwarding on in its namespace. The tasks of a service with an ingress port
join `ingress`. When the last publishing service goes, each node's ingress sandbox goes; the network stays.

Repair is the task runner's step (daemon/tasks.py, every second and at each change): a node that joined
before the ingress existed, or whose ingress sandbox died, gets one; after a daemon restart the sandbox is
found running (reconcile holds its ports again) and its table is written again.
"""
from __future__ import annotations

import logging
import socket

from ..drivers.overlay import VNI_KEY
from ..errors import Conflict, NsnetError
from ..kernel import ports as host_ports
from ..model import Network, PortMapping, Sandbox
from . import publish

log = logging.getLogger("nsnet.ingress")

NETWORK = "ingress"
SANDBOX = "ingress-sbox"
# Forwarding on in its own namespace (/proc/sys/net is the writer's network namespace), then wait.
COMMAND = ["sh", "-c", "echo 1 > /proc/sys/net/ipv4/ip_forward && exec sleep infinity"]
VNI = "4096"        # Docker's ingress VXLAN ID (its other overlays, as nsnet's, start at 4097)
LOAD_WAIT = 5.0     # s: at swarm init, for the first read of the swarm's state (its networks and names)


def network(state) -> Network | None:
    return next((n for n in state.nets.values() if n.name == NETWORK and state.shared(n)), None)


def hidden(sb: Sandbox) -> bool:
    """nsnet's own ingress sandbox, as Docker's: `ps` does not list it and `info` does not count it."""
    return sb.name == SANDBOX


def sandbox(state) -> Sandbox | None:
    return next((s for s in state.sbs.values() if s.name == SANDBOX), None)


def ensure_network(e) -> Network:
    """The swarm's `ingress` network; made now when there is none (removed by `network rm ingress`, or not
    made at swarm init)."""
    with e.lock:
        net = network(e.state)
        if net is not None:
            return net
        local = next((n for n in e.state.nets.values() if n.name == NETWORK), None)
        vni_taken = any(n.options.get(VNI_KEY) == VNI for n in e.state.nets.values())
    if local is not None:
        raise Conflict(f"a network of this node is named {NETWORK}: the routing mesh needs that name for the "
                       f"swarm's ingress network; remove it, or publish with mode=host")
    net = e.create_network({"Name": NETWORK, "Driver": "overlay", "Options": {} if vni_taken else {VNI_KEY: VNI}})
    log.info("made the swarm's ingress network %s (%s)", net.id[:12], net.subnets[0].subnet)
    return net


def make_at_init(e) -> None:
    """`swarm init`: the swarm's ingress network, as Docker's. When it cannot be made (e.g. a local network
    of that name), init stands and the first service that publishes an ingress port tries again."""
    link = e.swarm
    try:
        if link is None or not link.loaded.wait(LOAD_WAIT):
            raise NsnetError("the swarm's state was not read in time")
        ensure_network(e)
    except NsnetError as err:
        log.warning("swarm init: the ingress network was not made: %s; the first service that publishes an "
                    "ingress port makes it", err)


def wanted_ports(services: dict[str, dict]) -> list[PortMapping]:
    """Every ingress port of every service, as the ingress sandbox publishes it (P:P)."""
    keys = sorted({(p["Protocol"], p["PublishedPort"]) for s in services.values()
                   for p in publish.ingress(s["spec"].get("ports", []))})
    return [PortMapping("0.0.0.0", port, port, proto) for proto, port in keys]


def _key(s: socket.socket) -> tuple[str, int]:
    return ("tcp" if s.type == socket.SOCK_STREAM else "udp", s.getsockname()[1])


def set_ports(e, sid: str, want: list[PortMapping]) -> list[str]:
    """The ingress sandbox publishes `want` from now on: new ports held, gone ones let go, its record and the
    host's DNAT rules follow. A port something else on this host holds is left out (said in the result,
    tried again at the next call); the others are published all the same. Kernel thread."""
    problems = []
    with e.lock:
        sb = e.state.sbs.get(sid)
        if sb is None or sb.state != "running":
            return problems
        held = {_key(s): s for s in e.port_sockets.get(sid, [])}
        keep = []
        for p in want:
            if (p.proto, p.host_port) not in held:
                try:
                    held[(p.proto, p.host_port)] = host_ports.hold(p)
                except (Conflict, OSError) as err:
                    problems.append(str(err))
                    continue
            keep.append(p)
        wanted = {(p.proto, p.host_port) for p in keep}
        for key in [k for k in held if k not in wanted]:
            held.pop(key).close()
        e.port_sockets[sid] = list(held.values())
        if keep != sb.ports:
            sb.ports = keep
            with e.state.transaction():
                e.state.save_sandbox(sb)
            e._apply_firewall()
    return problems


class IngressSandbox:
    """This node's ingress sandbox, kept as the services want it (the task runner's thread calls `sync`)."""

    def __init__(self, engine, run_sandbox, remove):
        self.e, self._run, self._remove = engine, run_sandbox, remove
        self._said: set[str] = set()   # problems logged once each

    def sync(self, services: dict[str, dict]) -> None:
        want = wanted_ports(services)
        with self.e.lock:
            net, sb = network(self.e.state), sandbox(self.e.state)
        if sb is not None and (not want or net is None or sb.state != "running"
                               or not any(r.network_id == net.id for r in sb.requests)):
            log.info("ingress: %s %s", SANDBOX, "removed: no service publishes an ingress port" if not want
                     else "is not running on the ingress network: made again")
            self._remove(sb)
            sb = None
        if not want or net is None:
            return
        if sb is None:
            sb = self._run({"Name": SANDBOX, "Hostname": SANDBOX, "Cmd": COMMAND,
                            "Networks": [{"Network": net.id, "ServiceTask": True}]}).sandbox
            log.info("ingress: %s running on network %s", SANDBOX, net.name)
        call = self.e.thread.call if self.e.thread else (lambda fn, *a: fn(*a))
        for why in call(set_ports, self.e, sb.id, want):
            if why not in self._said:
                self._said.add(why)
                log.warning("ingress: this node does not publish a port of the routing mesh: %s", why)
