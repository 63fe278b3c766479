"""The overlay driver: one network across the hosts of a swarm, over VXLAN.

On each host that has sandboxes on the network, in a network namespace of the network's own
(kernel/overlayns.py; Docker's overlay has one too): a bridge with no address (the host is not on the
network: no route to it, nothing to collide with), the sandboxes' veths and a VXLAN link on it, VNI per
network, sending from the node's advertise address to the swarm's data path port, with learning off and
ARP answered by the link itself (`proxy`) from its neighbour table. The namespace is why it is as fast as
a bare VXLAN pair: the host's br_netfilter switches (on wherever Docker or kube-proxy run) are off in it.
Every other node's live sandbox on the network is one forwarding entry (its MAC behind its host's address)
and one neighbour entry (its IP at that MAC), programmed from the swarm's records in etcd with replace
semantics (engine/swarm.py), removed when it goes or its node dies. Nothing is flooded and nothing learnt.
Built when the host's first sandbox joins, removed with its last.

The VNI is chosen at create (the lowest from 4097 that no swarm network has, or
`-o com.docker.network.driver.overlay.vxlanid_list=N`) and claimed in the swarm's store under
`drivers/overlay/vni/<n>`, so two hosts creating at once never share one. MTU: the underlay link's minus
VXLAN's 50 bytes, unless given. A sandbox reaches the outside through the engine's gateway bridge
(`needs_gateway_bridge`), not through the overlay.

Encrypted (`-o encrypted`, Docker's option): the VXLAN link sends from the node's WireGuard tunnel address
and its forwarding entries point at the other nodes' tunnel addresses (drivers/tunnel.py), so its frames
travel only inside WireGuard. It fails closed: a node whose WireGuard peer is not configured here gets no
forwarding entry, and the firewall drops any datagram of the network's VNI to the data path port that would
leave (or arrive) by any link but the tunnel. There is no plaintext fallback. MTU: minus WireGuard's 60 too.
"""
from __future__ import annotations

import logging
import os

from ..errors import Conflict, KernelError, NsnetError
from ..firewall import FwNetwork
from ..model import Endpoint, Network, owner_alias
from ..store import CompareFailed, Op
from ..store.scoped import Scoped
from .base import MTU_KEY, Driver, DriverContext
from .tunnel import OVERHEAD as WIREGUARD_OVERHEAD, Tunnel

VNI_KEY = "com.docker.network.driver.overlay.vxlanid_list"
ENCRYPTED = "encrypted"   # Docker's: `--opt encrypted`, shown as {"encrypted": ""}
FIRST_VNI = 4097          # as Docker's overlay (4096 and below are left to the user)
MAX_VNI = (1 << 24) - 1
VXLAN_OVERHEAD = 50       # outer Ethernet 14 + IPv4 20 + UDP 8 + VXLAN 8
PREFIX = "nsov"           # every link of this driver: bridge, VXLAN link, sandboxes' near ends
ENODEV = 19
NS_FOLDER = "overlay"     # under $NSNET_ROOT: a record per network namespace of this driver


log = logging.getLogger("nsnet.overlay")


def vni_of(net: Network) -> int:
    return int(net.options[VNI_KEY])


def encrypted(net: Network) -> bool:
    return ENCRYPTED in net.options


def bridge_name(net: Network) -> str:
    return f"{PREFIX}b{vni_of(net)}"


def vxlan_name(net: Network) -> str:
    return f"{PREFIX}x{vni_of(net)}"


def port_name(ep: Endpoint) -> str:
    """The near end of a sandbox's veth, on the bridge in the network's namespace."""
    return PREFIX + ep.id[:11]


class OverlayDriver(Driver):
    name = "overlay"
    scope = "cluster"
    options = frozenset({MTU_KEY, VNI_KEY, ENCRYPTED})
    link_prefix = PREFIX
    needs_gateway_bridge = True

    def __init__(self, kernel, ctx: DriverContext | None = None):
        super().__init__(kernel, ctx)
        self._ns: dict[str, object] = {}                          # network id -> its namespace, once open
        self._bridges: dict[str, int] = {}                        # network id -> its bridge's index, once built
        self._vxlans: dict[str, int] = {}                         # network id -> its VXLAN link's index
        self._mtus: dict[str, int] = {}                           # network id -> its links' MTU, once built
        self._programmed: dict[str, set[tuple[str, str, str]]] = {}  # network id -> (mac, ip, vtep) set
        self._sealed: set[str] = set()                            # encrypted networks built here
        self.tunnel = Tunnel(kernel, self.ctx, self.name)         # this node's WireGuard link, while any is

    def _member(self):
        swarm = self.ctx.swarm()
        if swarm is None:
            raise NsnetError("this node is not part of a swarm: use nsnet swarm init or nsnet swarm join")
        return swarm

    def validate(self, net: Network) -> None:
        super().validate(net)
        vni = net.options.get(VNI_KEY)
        if vni is not None and not (vni.isdigit() and 1 <= int(vni) <= MAX_VNI):
            raise NsnetError(f"invalid {VNI_KEY} {vni!r}: give one VXLAN ID from 1 to {MAX_VNI}")
        if encrypted(net):
            if net.options[ENCRYPTED] not in ("", "true"):
                raise NsnetError(f"invalid {ENCRYPTED} value {net.options[ENCRYPTED]!r}: use --opt encrypted "
                                 f"(or -o encrypted=true)")
            missing = self.kernel.wireguard_missing()
            if missing:
                raise NsnetError(f"cannot create an encrypted overlay network: {missing}")
            net.options[ENCRYPTED] = ""

    def plan(self, net: Network, others: list[Network]) -> None:
        taken = {vni_of(n) for n in others if n.driver == self.name and VNI_KEY in n.options}
        if VNI_KEY in net.options:
            if vni_of(net) in taken:
                raise Conflict(f"VXLAN ID {vni_of(net)} is already used by another overlay network")
        else:
            net.options[VNI_KEY] = str(next(v for v in range(FIRST_VNI, MAX_VNI + 1) if v not in taken))
        if net.ipv6:
            raise NsnetError("IPv6 on overlay networks is not supported yet")

    def plan_endpoint(self, net: Network, ep: Endpoint) -> None:
        # As Docker's overlay: no gateway on it; the default route goes through the gateway bridge. No host
        # link either: the veth's near end is in the network's namespace (port_name).
        ep.gateway4 = ep.gateway6 = None

    # ---- the network --------------------------------------------------------------------------------

    def _claims(self) -> Scoped:
        return Scoped(self._member().kv, "drivers/overlay/")

    def create_network(self, net: Network) -> None:
        claims, key = self._claims(), f"vni/{vni_of(net)}"
        held = claims.get(key)
        if held is None:
            try:
                claims.commit([Op(key, {"id": net.id}, expect=0)])
            except CompareFailed:
                raise Conflict(f"VXLAN ID {vni_of(net)} was just taken by another overlay network: try again") from None
        elif held.value["id"] != net.id:
            raise Conflict(f"VXLAN ID {vni_of(net)} is already used by another overlay network")

    def delete_network(self, net: Network) -> None:
        self._teardown(net)
        swarm = self.ctx.swarm()
        if swarm is None:
            return
        claims, key = Scoped(swarm.kv, "drivers/overlay/"), f"vni/{vni_of(net)}"
        held = claims.get(key)
        if held is not None and held.value["id"] == net.id:
            try:
                claims.commit([Op(key, None, expect=held.mod_revision)])
            except CompareFailed:
                pass   # someone else's by now

    def _mtu(self, net: Network) -> int:
        given = self.mtu(net)
        if given:
            return given
        return self._underlay_mtu() - VXLAN_OVERHEAD - (WIREGUARD_OVERHEAD if encrypted(net) else 0)

    def _underlay_mtu(self) -> int:
        return self.kernel.mtu_of_address(self._member().member.advertise_addr) or 1500

    def _record(self, net_id: str) -> str:
        return os.path.join(self.ctx.root, NS_FOLDER, f"{net_id}.json")

    def _netns(self, net: Network, make: bool):
        """The network's namespace on this host: open already, found again (after a restart), or made."""
        ns = self._ns.get(net.id)
        if ns is None:
            ns = self.kernel.overlay_ns(self._record(net.id), make=make)
            if ns is not None:
                self._ns[net.id] = ns
        return ns

    def _ensure(self, net: Network) -> int:
        """The network's namespace, bridge and VXLAN link on this host, built if missing, with its peers;
        the bridge's index."""
        if net.id in self._bridges:
            return self._bridges[net.id]
        member = self._member().member
        local = member.advertise_addr
        if encrypted(net):
            self.tunnel.ensure(self._underlay_mtu())
            local = self.tunnel.address   # VXLAN between tunnel addresses: only inside WireGuard
            self._sealed.add(net.id)
        mtu = self._mtus[net.id] = self._mtu(net)   # the underlay's read once per build: a dump of addresses
        alias = owner_alias(net.id)
        ns = self._netns(net, make=True)
        bridge, _ = ns.ensure_bridge(bridge_name(net), mtu=mtu, alias=alias)
        vx, created = self.kernel.ensure_vxlan(vxlan_name(net), vni=vni_of(net), local=local,
                                               port=member.data_path_port, mtu=mtu, master=bridge, alias=alias,
                                               inside=ns)
        if created or self._vxlans.get(net.id) != vx:
            self._vxlans[net.id] = vx
            self._programmed.pop(net.id, None)   # read back from the kernel
        try:
            # Also when the link was found (mend, after a restart): an encrypted one's entries waited for the tunnel.
            self.peers_changed(net)
        except BaseException:
            self._vxlans.pop(net.id, None)   # the next join programs them again
            raise
        self._bridges[net.id] = bridge
        return bridge

    def _teardown(self, net: Network) -> None:
        """The network's namespace goes, and everything in it. Its VXLAN link is deleted first, at once: a
        dead namespace's links go later, and a new link of the same VNI and port would be refused till then."""
        self._bridges.pop(net.id, None)
        self._vxlans.pop(net.id, None)
        self._programmed.pop(net.id, None)
        self._mtus.pop(net.id, None)
        ns = self._netns(net, make=False)
        if ns is not None:
            ns.delete_link(vxlan_name(net))
            del self._ns[net.id]
            ns.remove()
        self._sealed.discard(net.id)
        if encrypted(net) and not self._sealed and self.tunnel.up:
            self.tunnel.remove()   # this host's last encrypted network: no tunnel left behind

    def peers_changed(self, net: Network) -> None:
        """Program the other nodes' live sandboxes on `net` (if it is built here): add and replace what is
        new or moved, remove what is gone."""
        index, ns = self._vxlans.get(net.id), self._ns.get(net.id)
        if index is None or ns is None:
            return
        want = self._wanted(net)
        have = self._programmed.get(net.id)
        if have is None:
            have = ns.peers(index)
        try:
            for mac, ip, vtep in have - want:
                ns.remove_peer(index, mac=mac, ip=ip, vtep=vtep)
            added = want - have
            for mac, ip, vtep in added:
                ns.set_peer(index, mac=mac, ip=ip, vtep=vtep)
        except KernelError:
            self._programmed.pop(net.id, None)   # read back from the kernel next time
            raise
        self._programmed[net.id] = set(want)
        self._announce(net, ns, added)

    def _announce(self, net: Network, ns, added) -> None:
        """The new peers announced on the bridge: a sandbox whose ARP for one came before its entry (a ping
        sent the moment the attach returned on another host) is answered now, not after 1 s. Best effort."""
        for mac, ip, _ in added:
            try:
                ns.announce(bridge_name(net), mac, ip)
            except KernelError as e:
                log.debug("overlay %s: announcing %s failed: %s", net.name, ip, e)

    def _wanted(self, net: Network) -> set[tuple[str, str, str]]:
        """(mac, ip, vtep) of the peers to program. Encrypted: the vtep is the node's tunnel address, and a
        node whose WireGuard peer is not configured here gets nothing (fails closed)."""
        peers = self.ctx.peers(net)
        if not encrypted(net):
            return peers
        node_of = {addr: node for node, addr in self.ctx.nodes().items()}
        tunnels = self.tunnel.peered if self.tunnel.up else {}
        return {(mac, ip, tunnels[node_of[vtep]]) for mac, ip, vtep in peers if node_of.get(vtep) in tunnels}

    def nodes_changed(self) -> None:
        if self._sealed and not self.tunnel.up and self.ctx.swarm() is not None:
            self.tunnel.ensure(self._underlay_mtu())   # after a restart: the tunnel (and its key) adopted
        self.tunnel.sync()

    # ---- endpoints ----------------------------------------------------------------------------------

    def join(self, net: Network, ep: Endpoint, sandbox, default_route: bool) -> None:
        bridge = self._ensure(net)
        ns = self._ns[net.id]
        near, peer_index = ns.new_veth(port_name(ep), sandbox, ep.ifname, mac=ep.mac,
                                       mtu=self._mtus.get(net.id) or self._mtu(net))
        sandbox.configure(peer_index, addresses=[a for a in (ep.ipv4, ep.ipv6) if a], gateway4=None,
                          gateway6=None, ipv6=net.ipv6)
        try:
            ns.plug_in(near, bridge)
        except KernelError as e:
            if e.code != ENODEV:
                raise
            self._bridges.pop(net.id, None)   # deleted behind our back: build it again
            ns.plug_in(near, self._ensure(net))
        sandbox.ready(peer_index)

    def leave(self, net: Network, ep: Endpoint, sandbox=None) -> None:
        ns = self._netns(net, make=False)
        if ns is not None:
            ns.delete_link(port_name(ep))
        if not [e for e in self.ctx.endpoints_of(net) if e.id != ep.id]:
            self._teardown(net)   # its last sandbox here: nothing of the network stays on this host

    def mend(self, net: Network, linkmap: dict[str, dict]) -> list[str]:
        """After a restart: the network's namespace found again (its links and the sandboxes' traffic lived
        on in it), its peers read back and brought up to date; or, with no sandbox here, removed."""
        ns = self._netns(net, make=False)
        if ns is None:
            return []   # none, or gone with its holder: the sandboxes' side is rebuilt (check_sandbox_side)
        if not self.ctx.endpoints_of(net):
            self._teardown(net)
            return ["its namespace had no sandbox left; removed"]
        found = ns.links()
        if vxlan_name(net) not in found or bridge_name(net) not in found:
            self._bridges.pop(net.id, None)
            self._ensure(net)
            return [f"{vxlan_name(net)} or {bridge_name(net)} was missing in its namespace; rebuilt"]
        self._bridges[net.id] = found[bridge_name(net)]["index"]
        self._vxlans[net.id] = found[vxlan_name(net)]["index"]
        if encrypted(net):
            self._sealed.add(net.id)
            if not self.tunnel.up:
                return []   # its entries stay as they were until the swarm's view adopts the tunnel
        self.peers_changed(net)
        return []

    def remove_strays(self, nets: list[Network]) -> list[str]:
        """Namespaces of networks this host no longer has (a crash between a last leave and its teardown, or a
        network removed meanwhile)."""
        folder = os.path.join(self.ctx.root, NS_FOLDER)
        known = {n.id for n in nets}
        done = []
        for name in sorted(os.listdir(folder)) if os.path.isdir(folder) else []:
            net_id = name.removesuffix(".json")
            if name.endswith(".json") and net_id not in known:
                self.kernel.discard_overlay_ns(os.path.join(folder, name))
                done.append(f"overlay namespace of network {net_id[:12]}: no such network here; removed")
        return done

    def firewall(self, net: Network) -> FwNetwork | None:
        """Nothing of it is in the host's namespace but, encrypted, its VXLAN datagrams: those leave and
        arrive only through the tunnel. (No NAT: the gateway bridge is its sandboxes' way out.)"""
        if not encrypted(net):
            return None
        swarm = self.ctx.swarm()
        port = swarm.member.data_path_port if swarm is not None else 4789
        return FwNetwork(bridge=None, subnets=[s.subnet for s in net.subnets], masquerade=False,
                         sealed=(port, vni_of(net), self.tunnel.name))

    def notes(self, net: Network) -> list[str]:
        """Encrypted: each node's tunnel, and its kind (kernel WireGuard or wireguard-go)."""
        if not encrypted(net):
            return []
        nodes = self.ctx.nodes()
        return [f"encrypted: VXLAN inside WireGuard between nodes; node {node[:12]} ({nodes.get(node)}): "
                f"{rec.get('kind')}, tunnel address {rec.get('address')}"
                for node, rec in sorted(self.ctx.node_records().items())]

    def shown_options(self, net: Network) -> dict[str, str]:
        return {VNI_KEY: net.options[VNI_KEY]}
