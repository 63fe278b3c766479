"""The kernel face (kernel/host.py's Kernel and SandboxNs verbs) in memory, with a fault hook.

Each verb does what the real one asks of the kernel, one step per netlink message or /proc/sys write,
so that `fail_at=k` can fail the k-th mutating step exactly where the real kernel could: that step
raises KernelError and changes nothing, the steps before it stay done. A batch (one sendmsg on the
attach path: plug_in, configure) runs every message as the kernel does, and the verb raises the first
error after the batch. Links live in namespaces (the host's, each sandbox's); a veth's two ends may be in
two of them, and deleting either end deletes both, as in the kernel.
"""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

from nsnet.errors import KernelError

ENODEV, EEXIST, EINVAL, EIO, ESRCH = 19, 17, 22, 5, 3


@dataclass
class Link:
    index: int
    name: str
    kind: str | None
    ns: "Namespace"
    master: int | None = None
    alias: str | None = None
    addresses: set = field(default_factory=set)
    up: bool = False
    isolated: bool = False
    mtu: int | None = None
    mac: str | None = None
    peer: "Link | None" = None          # the other end of a veth
    parent: str | None = None           # macvlan/ipvlan/vlan: the host link it sits on
    attrs: dict = field(default_factory=dict)
    sysctls: dict = field(default_factory=dict)


class Namespace:
    def __init__(self, label: str, faults: "Faults"):
        self.label, self.faults = label, faults
        self.links: dict[str, Link] = {}
        self.routes: dict[str, str] = {}    # destination -> "via GW" or "dev NAME"

    def by_index(self, index: int) -> Link | None:
        return next((lk for lk in self.links.values() if lk.index == index), None)

    def add(self, name: str, kind: str | None, **kw) -> Link:
        if name in self.links:
            raise KernelError(EEXIST, f"link {name} exists")
        link = self.links[name] = Link(self.faults.next_index(), name, kind, self, **kw)
        return link

    def remove(self, link: Link) -> None:
        for end in (link, link.peer):
            if end is None or end.ns.links.get(end.name) is not end:
                continue
            del end.ns.links[end.name]
            for other in end.ns.links.values():   # a bridge's ports are let go
                if other.master == end.index:
                    other.master = None
            for dst in [d for d, via in end.ns.routes.items() if via.endswith(f"dev {end.name}")]:
                del end.ns.routes[dst]

    def state(self) -> dict:
        names = {lk.index: lk.name for lk in self.links.values()}
        links = {name: {
            "kind": lk.kind, "master": names.get(lk.master, lk.master), "alias": lk.alias,
            "addresses": sorted(lk.addresses), "up": lk.up, "isolated": lk.isolated, "mtu": lk.mtu,
            "mac": lk.mac, "peer": (lk.peer.ns.label, lk.peer.name) if lk.peer else None,
            "parent": lk.parent, "attrs": dict(lk.attrs), "sysctls": dict(lk.sysctls),
        } for name, lk in self.links.items()}
        return {"links": links, "routes": dict(self.routes)}


class Faults:
    """Counts mutating steps across all namespaces; fails the `fail_at`-th one (once)."""

    def __init__(self):
        self.fail_at: int | None = None
        self.fail_code = EIO
        self.steps = 0
        self.log: list[str] = []
        self._index = 100

    def next_index(self) -> int:
        self._index += 1
        return self._index

    def step(self, what: str) -> None:
        self.steps += 1
        self.log.append(what)
        if self.steps == self.fail_at:
            raise KernelError(self.fail_code, f"injected fault at kernel call {self.steps} ({what})")

    def batch(self, *steps) -> None:
        """(what, do) pairs sent in one sendmsg: each runs unless it fails; the first error is raised last."""
        first = None
        for what, do in steps:
            try:
                self.step(what)
                do()
            except KernelError as e:
                first = first or e
        if first is not None:
            raise first


def _add_address(link: Link, cidr: str) -> None:
    link.addresses.add(str(ipaddress.ip_interface(cidr)))   # one already there is fine (EEXIST ignored)


def _set(obj, **kw):
    return lambda: [setattr(obj, k, v) for k, v in kw.items()]


def _ensure(faults: "Faults", ns: Namespace, name: str, kind: str, alias: str, **kw) -> tuple[Link, bool]:
    """Link `name` in `ns`, made if missing and marked with `alias` (links.add_marked: a link that cannot be
    marked as ours is removed again)."""
    link = ns.links.get(name)
    if link is not None:
        return link, False
    faults.step(f"add {kind} {name} in {ns.label}")
    link = ns.add(name, kind, **kw)
    try:
        faults.step(f"alias {name}")
    except KernelError:
        ns.remove(link)
        raise
    link.alias = alias
    return link, True


def _new_veth(faults: "Faults", ns: Namespace, name: str, sandbox, peer_name: str, *, mac, mtu) -> tuple[Link, Link]:
    faults.step(f"veth {name} / {peer_name}")
    if peer_name in sandbox.ns.links:
        raise KernelError(EEXIST, f"{peer_name} exists in the sandbox")
    near = ns.add(name, "veth", mtu=mtu)
    peer = sandbox.ns.add(peer_name, "veth", mtu=mtu, mac=mac)
    near.peer, peer.peer = peer, near
    return near, peer


def _plug_in(faults: "Faults", ns: Namespace, index: int, bridge_index: int, isolated: bool) -> None:
    port, bridge = ns.by_index(index), ns.by_index(bridge_index)

    def enslave():
        if port is None:
            raise KernelError(ENODEV, f"no link {index}")
        if bridge is None or bridge.kind != "bridge":
            raise KernelError(EINVAL, f"no bridge {bridge_index}")
        port.master = bridge_index

    def needs_port(**kw):
        def do():
            if port is None:
                raise KernelError(ENODEV, f"no link {index}")
            _set(port, **kw)()
        return do

    steps = [(f"enslave {index} to {bridge_index}", enslave)]
    if isolated:
        steps.append((f"isolate {index}", needs_port(isolated=True)))
    steps.append((f"up {index}", needs_port(up=True)))
    faults.batch(*steps)


class FakeSandboxNs:
    def __init__(self, pid: int, faults: Faults):
        self.pid = pid
        self.ns = Namespace(f"sandbox {pid}", faults)
        self.faults = faults
        self.ns.add("lo", None).up = True

    def _link(self, index: int) -> Link:
        link = self.ns.by_index(index)
        if link is None:
            raise KernelError(ENODEV, f"no link {index} in the sandbox")
        return link

    def index(self, name: str) -> int | None:
        link = self.ns.links.get(name)
        return link.index if link else None

    def configure(self, index, *, addresses, gateway4, gateway6, ipv6) -> None:
        link = self._link(index)
        steps = [(f"sandbox: address {a}", lambda a=a: _add_address(link, a)) for a in addresses]
        if not ipv6:
            steps.append(("sandbox: no link-local", lambda: link.sysctls.__setitem__("addr_gen_mode", "none")))
        steps.append(("sandbox: link up", _set(link, up=True)))
        for gw, dst in ((gateway4, "0.0.0.0/0"), (gateway6, "::/0")):
            if gw:
                steps.append((f"sandbox: default via {gw}", lambda gw=gw, dst=dst: self.ns.routes.__setitem__(dst, f"via {gw} dev {link.name}")))
        self.faults.batch(*steps)

    def ready(self, index) -> None:
        """A read (the real one syncs the link's carrier change): noted with whether its far end was up."""
        link = self._link(index)
        self.readied = getattr(self, "readied", []) + [(link.name, bool(link.peer and link.peer.up))]

    def default_routes_on(self, index, *, ipv4, ipv6) -> None:
        link = self._link(index)
        for want, dst in ((ipv4, "0.0.0.0/0"), (ipv6, "::/0")):
            if want:
                self.faults.step(f"sandbox: default dev {link.name}")
                self.ns.routes[dst] = f"dev {link.name}"

    def delete_link(self, name: str) -> bool:
        return _delete(self, name, f"sandbox: delete {name}")

    def loopback_up(self) -> None:
        self.faults.step("sandbox: lo up")
        self.ns.links["lo"].up = True

    def view(self) -> dict:
        self.faults.step("sandbox: view")
        route = self.ns.routes.get("0.0.0.0/0", "")
        return {"links": {name: (link.index, link.up) for name, link in self.ns.links.items()},
                "addrs": {(link.index, a) for link in self.ns.links.values() for a in link.addresses},
                "gateways": {route.split()[1]} if route.startswith("via ") else set()}


class FakeOverlayNs(FakeSandboxNs):
    """An overlay network's namespace (kernel/overlayns.py): its bridge, VXLAN link and sandboxes' near ends."""

    def __init__(self, record: str, faults: Faults):
        super().__init__(record, faults)
        self.ns.label = f"overlay {record}"
        self.removed = False

    def remove(self) -> None:
        self.removed = True   # its holder killed: cannot fail

    def links(self) -> dict[str, dict]:
        return {n: {"index": lk.index, "kind": lk.kind, "alias": lk.alias, "master": lk.master}
                for n, lk in self.ns.links.items()}

    def ensure_bridge(self, name, *, mtu, alias):
        link, created = _ensure(self.faults, self.ns, name, "bridge", alias, mtu=mtu)
        self.faults.step(f"overlay: up {name}")
        link.up = True
        return link.index, created

    def new_veth(self, name, sandbox, peer_name, *, mac, mtu):
        near, peer = _new_veth(self.faults, self.ns, name, sandbox, peer_name, mac=mac, mtu=mtu)
        return near.index, peer.index

    def plug_in(self, index, bridge_index):
        _plug_in(self.faults, self.ns, index, bridge_index, isolated=False)

    def announce(self, bridge, mac, ip):
        self.announced = getattr(self, "announced", []) + [(bridge, mac, ip)]   # a frame sent: changes no state

    def _vxlan(self, index) -> Link:
        link = self.ns.by_index(index)
        if link is None:
            raise KernelError(ENODEV, f"no link {index}")
        return link

    def set_peer(self, index, *, mac, ip, vtep):
        link = self._vxlan(index)
        self.faults.step(f"peer {ip} on {link.name}")
        peers = [p for p in link.attrs["peers"] if p[0] != mac and p[1] != ip]
        link.attrs["peers"] = sorted(peers + [(mac, ip, vtep)])

    def remove_peer(self, index, *, mac, ip, vtep):
        link = self._vxlan(index)
        self.faults.step(f"no peer {ip} on {link.name}")
        link.attrs["peers"] = [p for p in link.attrs["peers"] if p != (mac, ip, vtep)]

    def peers(self, index):
        return set(self._vxlan(index).attrs["peers"])


class FakeKernel:
    """The host's namespace (with a loopback and a NIC `lan0`), the sandboxes' (`sandbox(pid)`) and the
    overlay networks' (`overlays`, by record)."""

    def __init__(self):
        self.faults = Faults()
        self.ns = Namespace("host", self.faults)
        self.ns.add("lo", None).up = True
        self.ns.add("lan0", "veth", up=True, mac="aa:bb:cc:00:00:01", addresses={"192.168.50.2/24"})
        self.sysctls: dict[str, str] = {}
        self.sandboxes: dict[int, FakeSandboxNs] = {}
        self.overlays: dict[str, FakeOverlayNs] = {}
        self.lan: dict[str, str] = {}       # address -> MAC of the machines answering ARP on the LAN
        self.missing: set[str] = set()      # link kinds this kernel cannot build
        self.flows_forgotten: list[str] = []  # addresses whose tracked flows were flushed (best effort)

    @property
    def fail_at(self):
        return self.faults.fail_at

    @fail_at.setter
    def fail_at(self, k: int | None) -> None:
        self.faults.fail_at, self.faults.steps, self.faults.log = k, 0, []

    def sandbox(self, pid: int) -> FakeSandboxNs:
        if pid not in self.sandboxes:
            self.sandboxes[pid] = FakeSandboxNs(pid, self.faults)
        return self.sandboxes[pid]

    def netns(self, path: str) -> FakeSandboxNs:
        """A CNI runtime's namespace, by its path."""
        if path not in self.sandboxes:
            self.sandboxes[path] = FakeSandboxNs(path, self.faults)
        return self.sandboxes[path]

    # ---- the engine's own calls (not verbs): a sandbox's lifetime, conntrack --------------------

    def forget(self, pid) -> None:
        """Let go of a sandbox's handles (its namespace lives as long as its process)."""

    def is_own_netns(self, pid) -> bool:
        return False

    def forget_flows(self, ips) -> None:
        self.flows_forgotten += [str(ip) for ip in ips]   # best effort in the kernel: never fails

    def close(self) -> None:
        pass

    def state(self) -> dict:
        """Everything the kernel holds, by name (indexes change when a link is made again)."""
        return {"host": self.ns.state(), "sysctls": dict(self.sysctls),
                "sandboxes": {pid: sb.ns.state() for pid, sb in self.sandboxes.items()},
                "overlays": {rec: ov.ns.state() for rec, ov in self.overlays.items() if not ov.removed}}

    def _link(self, name: str) -> Link:
        link = self.ns.links.get(name)
        if link is None:
            raise KernelError(ENODEV, f"no link {name}")
        return link

    # ---- reads ----------------------------------------------------------------------------------

    def links(self) -> dict[str, dict]:
        return {n: {"index": lk.index, "kind": lk.kind, "alias": lk.alias, "master": lk.master}
                for n, lk in self.ns.links.items()}

    def index(self, name):
        link = self.ns.links.get(name)
        return link.index if link else None

    def mac_of(self, name):
        link = self.ns.links.get(name)
        return link.mac if link else None

    def alias_of(self, name):
        link = self.ns.links.get(name)
        return link.alias if link else None

    def ipv4_addresses(self, name):
        link = self.ns.links.get(name)
        return sorted(a for a in link.addresses if ":" not in a) if link else []

    def taken_on_lan(self, ifname, address):
        mac = self.lan.get(address)
        return f"{address} already answers ARP on the LAN of {ifname} (from {mac})" if mac else None

    def require(self, kind, what):
        if kind in self.missing:
            raise KernelError(95, f"cannot create {what}: no {kind}")

    # ---- writes ---------------------------------------------------------------------------------

    def sysctl(self, key, value):
        if self.sysctls.get(key) == value:   # sysctl.write reads first: nothing written
            return
        self.faults.step(f"sysctl {key}={value}")
        self.sysctls[key] = value

    def link_sysctl(self, family, name, key, value):
        link = self._link(name)
        self.faults.step(f"sysctl {family} {name} {key}={value}")
        link.sysctls[f"{family}.{key}"] = value

    def no_ipv6(self, name):
        link = self.ns.links.get(name)
        if link is None:   # links.no_ipv6 lets a missing file be
            return
        self.faults.step(f"no ipv6 on {name}")
        link.sysctls["ipv6.disable_ipv6"] = "1"

    def delete_link(self, name):
        return _delete(self, name, f"delete {name}")

    def evidence(self, *, reserved, docker_socket) -> list:
        return []   # an empty host: the tests give their evidence to the engine directly

    def delete_if_alias(self, name, alias):
        if self.alias_of(name) != alias:
            return False
        return self.delete_link(name)

    def ensure_bridge(self, name, *, mtu, addresses, alias):
        link, created = _ensure(self.faults, self.ns, name, "bridge", alias, mtu=mtu)
        for a in addresses:
            self.faults.step(f"address {a} on {name}")
            _add_address(link, a)
        self.faults.step(f"up {name}")
        link.up = True
        return link.index, created

    def new_veth(self, host_name, sandbox, peer_name, *, mac, mtu):
        host, peer = _new_veth(self.faults, self.ns, host_name, sandbox, peer_name, mac=mac, mtu=mtu)
        self.no_ipv6(host_name)
        return host.index, peer.index

    def plug_in(self, index, bridge_index, *, isolated):
        _plug_in(self.faults, self.ns, index, bridge_index, isolated)

    def veth_pair(self, name, peer, *, mtu, alias):
        self.faults.step(f"veth {name} / {peer}")
        if peer in self.ns.links:
            raise KernelError(EEXIST, f"{peer} exists")
        a = self.ns.add(name, "veth", mtu=mtu)
        b = self.ns.add(peer, "veth", mtu=mtu)
        a.peer, b.peer = b, a
        for end in (a, b):
            self.faults.step(f"alias {end.name}")
            end.alias = alias
            self.no_ipv6(end.name)
        return a.index, b.index

    def add_in_netns(self, kind, name, parent_index, sandbox, *, mtu, **attrs):
        parent = self.ns.by_index(parent_index)
        self.faults.step(f"{kind} {name} in sandbox {sandbox.pid}")
        if parent is None:
            raise KernelError(ENODEV, f"no parent {parent_index}")
        sandbox.ns.add(name, kind, mtu=mtu, parent=parent.name, mac=attrs.pop("address", None), attrs=attrs)

    def ensure_vlan(self, name, base, vid, *, alias):
        link, _ = _ensure(self.faults, self.ns, name, "vlan", alias, parent=base, attrs={"vlan_id": vid})
        self.faults.step(f"up {name}")
        link.up = True
        return link.index

    def ensure_shim(self, name, parent, address, *, alias):
        link, _ = _ensure(self.faults, self.ns, name, "macvlan", alias, parent=parent, attrs={"macvlan_mode": "bridge"})
        self.faults.step(f"address {address}/32 on {name}")
        _add_address(link, f"{address}/32")
        self.faults.step(f"up {name}")
        link.up = True
        return link.index

    def ensure_vxlan(self, name, *, vni, local, port, mtu, master, alias, inside):
        link, created = _ensure(self.faults, inside.ns, name, "vxlan", alias, mtu=mtu,
                                attrs={"vni": vni, "local": local, "port": port, "peers": []})
        self.faults.batch((f"enslave {name} to {master}", _set(link, master=master)), (f"up {name}", _set(link, up=True)))
        return link.index, created

    def overlay_ns(self, record, *, make):
        ov = self.overlays.get(record)
        if ov is not None and not ov.removed:
            return ov
        if not make:
            return None
        self.faults.step(f"overlay namespace {record}")
        ov = self.overlays[record] = FakeOverlayNs(record, self.faults)
        return ov

    def discard_overlay_ns(self, record):
        if record in self.overlays:
            self.overlays[record].removed = True

    def mtu_of_address(self, address):
        return 1500

    # WireGuard: a link holding its key, address and peers (public key -> (endpoint, allowed ips)).
    def wireguard_missing(self):
        return None

    def wireguard_kind(self):
        return "wireguard-go"

    def wireguard_key(self, path):
        with open(path, "w") as f:
            f.write(f"private-{len(self.ns.links)}-{id(path)}")
        return self.wireguard_public_key(path)

    def wireguard_public_key(self, path):
        with open(path) as f:
            return "public-" + f.read()

    def ensure_wireguard(self, name, *, key, port, address, mtu):
        link = self.ns.links.get(name)
        made = link is None
        if made:
            self.faults.step(f"add wireguard {name}")
            link = self.ns.add(name, "wireguard", mtu=mtu, attrs={"peers": {}})
        link.attrs.update(key=key, port=port)
        _add_address(link, address)
        link.up = True
        return made

    def wireguard_set_key(self, name, key):
        self.ns.links[name].attrs["key"] = key

    def wireguard_peers(self, name):
        return dict(self.ns.links[name].attrs["peers"])

    def wireguard_set_peers(self, name, add, remove):
        link = self.ns.links[name]
        self.faults.step(f"peers of {name}")
        for pub in remove:
            link.attrs["peers"].pop(pub, None)
        for pub, endpoint, allowed in add:
            link.attrs["peers"][pub] = (endpoint, allowed)

    def route_to(self, ifname, cidr):
        if ifname not in self.ns.links:
            return
        self.faults.step(f"route {cidr} dev {ifname}")
        self.ns.routes[str(ipaddress.ip_interface(cidr).ip)] = f"dev {ifname}"

    def unroute(self, ifname, cidr):
        if ifname not in self.ns.links:
            return
        self.faults.step(f"unroute {cidr} dev {ifname}")
        self.ns.routes.pop(str(ipaddress.ip_interface(cidr).ip), None)


def _delete(owner, name: str, step: str) -> bool:
    """A link deleted from `owner`'s namespace (the host's or a sandbox's): one kernel call, which may fail."""
    owner.faults.step(step)
    link = owner.ns.links.get(name)
    if link is None:
        return False
    owner.ns.remove(link)
    return True
