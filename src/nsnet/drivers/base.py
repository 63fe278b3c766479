"""The protocol every driver implements. A driver owns its kernel objects and nothing else."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from ..errors import NsnetError
from ..firewall import FwNetwork, FwPort
from ..model import Endpoint, Network, PortMapping
from ..requests import check_labels
from ..store.scoped import Scoped

MTU_KEY = "com.docker.network.driver.mtu"
SIZE_KEY = "size"  # prefix length of the subnet taken from the pools (`-o size=24`), when none is given


@dataclass
class DriverContext:
    """What the engine hands a driver at construction, besides the kernel."""
    # The host links of a network's endpoints (what a rebuilt bridge must carry).
    ports_of: Callable[[Network], list[str]] = field(default=lambda net: [])
    # This host's endpoints on a network (an overlay's near ends are in its own namespace, not host links).
    endpoints_of: Callable[[Network], list[Endpoint]] = field(default=lambda net: [])
    # The engine's crash points (nsnet.crashpoints), for the steps inside a driver's join.
    crashpoint: Callable[[str], None] = field(default=lambda name: None)
    # The store under drivers/<its name>/ (store.scoped.Scoped: get, list, commit, watch), what a cluster
    # driver keeps and hears its peers by; None: no store (a driver built alone, in a test).
    store: Scoped | None = None
    # This host's node id: whose entries under the driver's prefix are its own.
    node: str = ""
    # The engine's link to its swarm (engine.swarm.SwarmLink: the shared store `kv`, the `member`'s advertise
    # address and data path port), or None when this host is not in one.
    swarm: Callable[[], object | None] = field(default=lambda: None)
    # A swarm network's endpoints on the other nodes that are alive, as (mac, ip, that node's address).
    peers: Callable[[Network], set[tuple[str, str, str]]] = field(default=lambda net: set())
    # The swarm's nodes (this one too) -> their advertise addresses; a node removed (node rm, swarm leave)
    # is gone from it at once.
    nodes: Callable[[], dict[str, str]] = field(default=lambda: {})
    # What each of those nodes publishes for this driver under drivers/<its name>/node/<node id>.
    node_records: Callable[[], dict[str, dict]] = field(default=lambda: {})
    # The engine's root ($NSNET_ROOT): a driver's files (e.g. a private key) go under it.
    root: str = ""
    # s between two WireGuard key rotations (config `swarm-key-rotation`).
    key_rotation: float = 43200.0


class Driver:
    name = ""
    options: frozenset[str] = frozenset()   # the -o keys this driver understands
    scope = "local"                         # local: one host's; cluster: shared by hosts (an overlay)
    needs_netns = True                      # does a sandbox on it get its own network namespace?
    builds_endpoints = True                 # does joining make an interface (and take an address)?
    singleton = False                       # only its built-in network (host, none): no other, no second one
    sandbox_mode = "bridge"                 # a sandbox's netmode on it (Docker's NetworkMode): bridge|host|none
    link_prefix: str | None = None          # its host links' names start so: reconcile removes strays
    needs_gateway_bridge = False            # its sandboxes reach outside through the engine's gateway bridge

    def __init__(self, kernel, ctx: DriverContext | None = None):
        self.kernel = kernel
        self.ctx = ctx or DriverContext()

    def builtin(self) -> dict | None:
        """The built-in network this driver brings (`name`, and for an addressed one `subnet`, `bridge`,
        `options`), made at the engine's first start; None: none."""
        return None

    def validate(self, net: Network) -> None:
        """Refuse options this driver does not know, and values no driver can use, before anything is built."""
        check_labels(net.labels)
        check_labels(net.options, "option")
        unknown = sorted(set(net.options) - self.options)
        if unknown:
            known = ", ".join(sorted(self.options)) or "none"
            raise NsnetError(f"unknown option {unknown[0]!r} for the {self.name} driver (it takes: {known})")
        mtu = net.options.get(MTU_KEY)
        if mtu is not None and not (mtu.isdigit() and 68 <= int(mtu) <= 65535):
            raise NsnetError(f"invalid MTU {mtu!r}: give a number from 68 to 65535")
        size = net.options.get(SIZE_KEY)
        if size is not None and not (size.isdigit() and 8 <= int(size) <= 30):
            raise NsnetError(f"invalid size {size!r}: give a prefix length from 8 to 30, e.g. -o size=24")

    @staticmethod
    def mtu(net: Network) -> int | None:
        """The MTU asked for with -o com.docker.network.driver.mtu (checked by validate), else None."""
        mtu = net.options.get(MTU_KEY)
        return int(mtu) if mtu else None

    def on_lan(self, net: Network) -> bool:
        """Is the subnet the LAN's own (macvlan, flat bridge)? Then host evidence does not refuse it, and
        addresses are checked on the LAN instead (address_taken)."""
        return False

    def claim(self, net: Network, others: list[Network]) -> None:
        """Before the subnets are planned: name this network's own links (e.g. its bridge), refusing names
        another network holds; nothing built."""

    def plan(self, net: Network, others: list[Network]) -> None:
        """Checks (and choices) that need the planned subnets and the other networks; nothing built."""

    def address_taken(self, net: Network, addr) -> str | None:
        """Why `addr` is not free outside nsnet's records (e.g. it answers ARP on the LAN), or None."""
        return None

    def plan_endpoint(self, net: Network, ep: Endpoint) -> None:
        """Adjust a new endpoint before it is recorded (no host link, another MAC...)."""

    def notes(self, net: Network) -> list[str]:
        """Facts a user should know about this network (shown by `network inspect` as Notes)."""
        return []

    def create_network(self, net: Network) -> None: ...

    def delete_network(self, net: Network) -> None: ...

    def join(self, net: Network, ep: Endpoint, sandbox, default_route: bool) -> None: ...

    def mend(self, net: Network, linkmap: dict[str, dict]) -> list[str]:
        """After a restart, with the host's links (a dump): repair what changed while no daemon ran;
        say what was done."""
        return []

    def remove_strays(self, nets: list[Network]) -> list[str]:
        """After a restart, with every network this host has: remove what the driver keeps outside the host's
        links for networks not among them (reconcile removes stray links itself); say what was done."""
        return []

    def leave(self, net: Network, ep: Endpoint, sandbox=None) -> None:
        """Undo join. `sandbox` is given when the sandbox lives on (disconnect), so links inside it go too."""

    def peers_changed(self, net: Network) -> None:
        """A swarm network's endpoints on other nodes changed (ctx.peers says what they are now)."""

    def nodes_changed(self) -> None:
        """The swarm's nodes or their records for this driver changed (ctx.nodes, ctx.node_records); the
        engine then tells each of its networks peers_changed."""

    def firewall(self, net: Network) -> FwNetwork | None:
        return None

    def published(self, net: Network, ep: Endpoint, ports: list[PortMapping]) -> list[FwPort] | None:
        """The firewall's rules for a sandbox's published ports when `ep` can take them, else None (the
        engine asks the sandbox's endpoints in order; the first that can takes them all)."""
        return None

    def shown_options(self, net: Network) -> dict[str, str]:
        """Options `network inspect` shows although nobody gave them (e.g. the bridge's name)."""
        return {}

    def kernel_names(self, net: Network) -> set[str]:
        """Names of the host links this network owns (reconcile keeps these)."""
        return set()
