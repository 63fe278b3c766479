"""This node's WireGuard tunnel to the other nodes of its swarm, which encrypted overlays send their VXLAN
frames through (drivers/overlay.py).

One WireGuard link per node, `nswg` + the node id's first 8 hex digits (unique on the machine: wireguard-go's
control sockets share one folder across namespaces), on UDP `PORT` of the advertise address, holding the
node's tunnel address in the swarm's tunnel range. In etcd, under `drivers/overlay/`:

- `wg/range`: the tunnel range, taken once from the swarm's pools clear of every node's evidence (claimed with
  a compare, and published as `evidence/swarm-tunnels` so no network takes it later);
- `wg/address/<ip>`: who holds a tunnel address (a claim of a node no longer listed is taken over);
- `node/<node id>`: the node's public key, endpoint, tunnel address and tunnel kind. The private key stays in
  `$NSNET_ROOT/wireguard/private.key` (0600), never in etcd.

Every node programs its peers from the swarm's watch (`sync`, from the driver's `nodes_changed`): each listed
node's record is one WireGuard peer (its key, its endpoint, its tunnel address /32); a node removed from the
swarm is gone from the list at once, and so is its peer. `peered` says which nodes are configured: an encrypted
network programs a forwarding entry only towards those (fails closed). Keys rotate every `ctx.key_rotation`
seconds: the new key is set, then published; each peer swaps it in on the watch's event, and the first
packet either way makes the new handshake (sessions are not torn down: a TCP connection only waits).
Up with the host's first encrypted network, down with its last.
"""
from __future__ import annotations

import ipaddress
import logging
import os
import threading
import time

from ..errors import KernelError, NsnetError
from ..store import CompareFailed, Op
from ..store.scoped import Scoped

log = logging.getLogger("nsnet.tunnel")

PORT = 51820              # WireGuard's usual port, on the advertise address
OVERHEAD = 60             # WireGuard over IPv4: IPv4 20 + UDP 8 + its header 16 + its tag 16
PREFIX = "nswg"
RANGE_KEY, EVIDENCE_KEY = "wg/range", "evidence/swarm-tunnels"


def link_name(node: str) -> str:
    return PREFIX + node[:8]


class Tunnel:
    def __init__(self, kernel, ctx, driver: str):
        self.kernel, self.ctx, self.driver = kernel, ctx, driver
        self.name = link_name(ctx.node)
        self.address: str | None = None          # this node's tunnel address, while up
        self.peered: dict[str, str] = {}         # node id -> its tunnel address, configured as a peer here
        self._lock = threading.Lock()            # the link and the record: the kernel thread and the rotation
        self._stop: threading.Event | None = None

    @property
    def up(self) -> bool:
        return self.address is not None

    def _key_path(self) -> str:
        folder = os.path.join(self.ctx.root, "wireguard")
        os.makedirs(folder, mode=0o700, exist_ok=True)
        return os.path.join(folder, "private.key")

    def _store(self):
        swarm = self.ctx.swarm()
        if swarm is None:
            raise NsnetError("this node is not part of a swarm: use nsnet swarm init or nsnet swarm join")
        return swarm, Scoped(swarm.kv, f"drivers/{self.driver}/")

    # ---- up and down (the kernel thread) ------------------------------------------------------------------

    def ensure(self, underlay_mtu: int) -> None:
        """The link up, keyed, addressed and published; its peers programmed."""
        if self.up:
            return
        missing = self.kernel.wireguard_missing()
        if missing:
            raise NsnetError(f"cannot encrypt: {missing}")
        swarm, store = self._store()
        subnet = self._range(swarm, store)
        address = self._claim(store, subnet)
        key = self._key_path()
        with self._lock:
            public = self.kernel.wireguard_public_key(key) if os.path.exists(key) else self.kernel.wireguard_key(key)
            made = self.kernel.ensure_wireguard(self.name, key=key, port=PORT, address=f"{address}/{subnet.prefixlen}",
                                                mtu=underlay_mtu - OVERHEAD)
            try:
                self._publish(store, public, swarm.member.advertise_addr, address)
            except BaseException:
                if made:
                    self.kernel.delete_link(self.name)
                raise
            self.address = address
        self.sync()
        self._stop = threading.Event()
        threading.Thread(target=self._rotate_every, args=(self._stop,), name="tunnel-keys", daemon=True).start()

    def remove(self) -> None:
        """The link, its record and its address claim go (this host's last encrypted network went)."""
        with self._lock:
            if self._stop is not None:
                self._stop.set()
                self._stop = None
            self.kernel.delete_link(self.name)
            address, self.address, self.peered = self.address, None, {}
        swarm = self.ctx.swarm()
        if swarm is None or address is None:
            return
        store = Scoped(swarm.kv, f"drivers/{self.driver}/")
        try:
            store.commit([Op(f"node/{self.ctx.node}", None), Op(f"wg/address/{address}", None)])
        except NsnetError as e:   # etcd away: a later claim takes a listed node's address only from itself
            log.warning("tunnel: could not withdraw this node's record: %s", e)

    def _range(self, swarm, store) -> ipaddress.IPv4Network:
        held = store.get(RANGE_KEY)
        if held is None:
            subnet = swarm.free_subnet()
            ranges = {"ranges": [[subnet, "nsnet", "the encrypted overlays' WireGuard tunnels"]]}
            try:
                swarm.kv.commit([Op(f"drivers/{self.driver}/{RANGE_KEY}", {"subnet": subnet}, expect=0),
                                 Op(EVIDENCE_KEY, ranges)])
            except CompareFailed:
                pass   # another node's, just taken
            held = store.get(RANGE_KEY)
        return ipaddress.ip_network(held.value["subnet"])

    def _claim(self, store, subnet) -> str:
        """This node's tunnel address: the one it holds, else the lowest free one (a claim of a node no
        longer in the swarm counts as free), claimed with a compare."""
        # Read from etcd, not the watch's view: a claim is taken over only from a node surely gone.
        listed = {e.key.split("/", 1)[1] for e in self.ctx.swarm().kv.list("nodes/")}
        for _ in range(5):
            claims = {e.key.rsplit("/", 1)[1]: e for e in store.list("wg/address/")}
            for ip, e in claims.items():
                if e.value["node"] == self.ctx.node:
                    return ip
            for host in subnet.hosts():
                e = claims.get(str(host))
                if e is None or e.value["node"] not in listed:
                    try:
                        store.commit([Op(f"wg/address/{host}", {"node": self.ctx.node},
                                         expect=0 if e is None else e.mod_revision)])
                        return str(host)
                    except CompareFailed:
                        break   # taken meanwhile: read again
            else:
                raise NsnetError(f"the swarm's tunnel range {subnet} is full")
        raise NsnetError("could not claim a tunnel address: other nodes kept taking them; try again")

    def _publish(self, store, public: str, advertise: str, address: str) -> None:
        store.commit([Op(f"node/{self.ctx.node}", {
            "public_key": public, "endpoint": f"{advertise}:{PORT}", "address": address,
            "kind": self.kernel.wireguard_kind(), "rotated": time.time()})])

    # ---- peers (the kernel thread, from the swarm's watch) ---------------------------------------------------

    def sync(self) -> None:
        """Every other listed node's record is a peer here; nothing else is. Until it is, `peered` lacks it."""
        if not self.up:
            return
        want = {node: rec for node, rec in self.ctx.node_records().items()
                if node != self.ctx.node and rec.get("public_key") and rec.get("address")}
        with self._lock:
            if not self.up:
                return
            try:
                have = self.kernel.wireguard_peers(self.name)
                keys = {rec["public_key"] for rec in want.values()}
                add = [(rec["public_key"], rec["endpoint"], f"{rec['address']}/32") for rec in want.values()
                       if have.get(rec["public_key"]) != (rec["endpoint"], f"{rec['address']}/32")]
                self.kernel.wireguard_set_peers(self.name, add, [pub for pub in have if pub not in keys])
            except (KernelError, OSError):
                self.peered = {}   # unknown: no encrypted forwarding entry until a sync succeeds
                raise
            self.peered = {node: rec["address"] for node, rec in want.items()}

    # ---- key rotation (its own thread) ---------------------------------------------------------------------

    def _rotate_every(self, stop: threading.Event) -> None:
        while not stop.wait(self.ctx.key_rotation):
            try:
                self.rotate(stop)
            except Exception as e:   # etcd away, say: the old key stays in force; tried again next period
                log.warning("tunnel: key rotation failed: %s", e)

    def rotate(self, stop: threading.Event | None = None) -> None:
        """A new key pair: set here first, then published (each peer swaps it in on the watch's event)."""
        with self._lock:
            if not self.up or (stop is not None and stop.is_set()):
                return
            swarm, store = self._store()
            key = self._key_path()
            public = self.kernel.wireguard_key(key)
            self.kernel.wireguard_set_key(self.name, key)
            self._publish(store, public, swarm.member.advertise_addr, self.address)
        log.info("tunnel %s: new key %s…", self.name, public[:8])
