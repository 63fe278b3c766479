"""The engine's use cases as a member of a swarm (a part of `Engine`, kept apart so that engine/__init__.py
holds the host's own use cases): joining and leaving the swarm's store, applying what its watch read
(engine/swarm.py), and what the cluster drivers are told about the other nodes."""
from __future__ import annotations

import logging

from ..errors import NsnetError
from ..facts import Evidence
from ..model import Network
from . import ingress, swarm
from .thread import on_kernel_thread

log = logging.getLogger("nsnet.engine")


class SwarmCases:
    """Mixed into Engine: uses its state, drivers, store, lock, feed and kernel thread."""

    def share(self, kv, member) -> None:
        """This host is in a swarm now (or again, at start): its networks come and go with the swarm's store."""
        with self.lock:
            self.store.share(kv)
            self.swarm = swarm.SwarmLink(self, kv, member)
        self.swarm.start()

    @on_kernel_thread
    def unshare(self, force: bool = False) -> None:
        """This host left its swarm: refused while a sandbox of the user's here is on a swarm network
        (`force`: it was removed, and its sandboxes lose those networks); the ingress sandbox goes; the
        swarm's networks leave this host (not the store: but the last node takes `ingress` with it)."""
        with self.lock:
            if force:
                swarm.drop_local_endpoints(self)
            swarm.check_can_leave(self.state)
            mesh = ingress.sandbox(self.state)
            if mesh is not None:
                self.remove_sandbox(mesh.id, force=True)
            if not force:
                self._drop_ingress_if_last()
            link, self.swarm = self.swarm, None
        if link is not None:
            link.stop()
        with self.lock:
            swarm.forget_all(self)
            self.store.share(None)

    def _drop_ingress_if_last(self) -> None:
        """The last node leaves: the swarm goes, and the ingress network it made at init with it (a user's
        networks stay in the store, as ever)."""
        net = ingress.network(self.state)
        if net is None or self.swarm is None:
            return
        try:
            if any(e.key != f"nodes/{self.state.node}" for e in self.swarm.kv.list("nodes/")):
                return
            self.remove_network(net.id)
        except NsnetError as e:   # etcd away (leave says so next), or a service still publishes on it
            log.warning("swarm leave: the ingress network stays in the store: %s", e)

    @on_kernel_thread
    def apply_swarm(self, link, view, gone: set[str] | None) -> None:
        """What `link`'s watch read: the networks deleted since (`gone`), or None: a full read of the swarm's
        state, after a start or a broken watch."""
        with self.lock:
            if link is not self.swarm:
                return   # this host left that swarm meanwhile
            if swarm.apply(self, view, gone) and gone is not None:
                self._apply_firewall()   # (a full read reconciles, which applies it)
            if gone is None:   # e.g. a sandbox that died while etcd was away: its endpoint goes now
                link.loaded.set()
                self.reconcile()
                for sb in self.state.sbs.values():   # those on swarm networks only: names from now on
                    if sb.state == "running":
                        self.feed.attach(sb)
            self.feed.notify()

    def swarm_evidence(self) -> list[Evidence]:
        """What a range the swarm takes must avoid: this host's evidence, its networks and every node's."""
        return self._evidence(ask_docker=False) + (self.swarm.evidence() if self.swarm else [])

    @on_kernel_thread
    def host_evidence(self) -> list[Evidence]:
        return self._host_evidence(ask_docker=True)

    # ---- what cluster drivers are told (their DriverContext and the state's listeners) ---------------

    def _peers(self, net: Network) -> set[tuple[str, str, str]]:
        return {(e.mac, e.ipv4.split("/")[0], self.state.vteps[e.node]) for e in self.state.peers_of(net)
                if e.mac and e.ipv4 and e.node in self.state.vteps}

    def _node_records(self, driver: str) -> dict[str, dict]:
        """What the swarm's listed nodes publish for `driver` (a removed node's record is no one's)."""
        out = {}
        for key, record in self.state.records.items():
            name, _, node = key.partition("/")
            if name == driver and node in self.state.vteps:
                out[node] = record
        return out

    def _nodes_changed(self) -> None:
        """The swarm's nodes or their records changed: each cluster driver follows (e.g. its tunnels to
        them), then programs its networks' peers again."""
        for name, driver in self.drivers.items():
            if driver.scope != "cluster":
                continue
            try:
                driver.nodes_changed()
                for net in [n for n in self.state.nets.values() if n.driver == name]:
                    driver.peers_changed(net)
            except Exception:
                log.exception("driver %s: following the swarm's nodes failed; retried at the next change", name)

    def _peers_changed(self, net_ids: set[str]) -> None:
        for net in [self.state.nets[i] for i in net_ids if i in self.state.nets]:
            try:
                self.driver(net).peers_changed(net)
            except Exception:
                log.exception("network %s: programming its peers failed; retried at the next change", net.name)
