"""The embedded resolver's feed: its records from the state, sent as changes only (records added and
removed), and which sandboxes it serves (127.0.0.11 inside each, redirected to its ports)."""
from __future__ import annotations

from ..dns.records import Record, RecordSet
from ..firewall import render_dns_redirect
from ..model import Endpoint, Network, Sandbox, dns_names
from .state import State


class DnsFeed:
    def __init__(self, state: State):
        self.state = state
        self.server = None        # the resolver (dns.server.DnsServer), once the daemon serves names
        self._whole = False       # the resolver has every record: from then on it gets changes only
        self._pending: dict[tuple, Record | None] = {}  # (sandbox, network) -> record, None = gone
        self.sources: list = []   # callables giving more records (engine/services.py: tasks.NAME, VIPs); refresh() when they change
        state.endpoint_saved.append(self._saved)
        state.endpoint_dropped.append(self._dropped)
        state.network_saved.append(self._network_saved)

    def _saved(self, ep: Endpoint) -> None:
        self._pending[(ep.sandbox_id, ep.network_id)] = self._record(ep)

    def _dropped(self, ep: Endpoint, net: Network | None) -> None:
        self._pending[(ep.sandbox_id, ep.network_id)] = None

    def _network_saved(self, net: Network) -> None:
        self._whole = False  # its name joins the resolver's domains at the next change

    def peer_changed(self, ep: Endpoint, live: bool) -> None:
        """Another node's endpoint came, changed (`live`) or went: the resolver's next change has it."""
        self._pending[(ep.sandbox_id, ep.network_id)] = self._record(ep) if live else None

    def refresh(self) -> None:
        """Other nodes' endpoints changed: the resolver gets every record again at the next notify."""
        self._whole = False

    def _record(self, ep: Endpoint) -> Record | None:
        net, sb = self.state.nets.get(ep.network_id), self.state.sbs.get(ep.sandbox_id)
        if net is None or not net.dns:
            return None
        # Another node's sandbox (a swarm network): the names its node recorded with the endpoint.
        names = dns_names(net, sb, ep) if sb is not None else ep.names
        if not names:
            return None
        return Record(ep.sandbox_id, net.id, tuple(n.lower() for n in names),
                      ipv4=ep.ipv4.split("/")[0] if ep.ipv4 else None, ipv6=ep.ipv6.split("/")[0] if ep.ipv6 else None)

    def notify(self) -> None:
        """Sandboxes or endpoints changed: the resolver answers from the new state before we return."""
        pending, self._pending = self._pending, {}
        if self.server is None:
            return
        if not self._whole:
            live = list(self.state.eps.values()) + [ep for ep in self.state.remote.values() if ep.node in self.state.alive]
            records = [r for r in map(self._record, live) if r is not None] + [r for fn in self.sources for r in fn()]
            self.server.set_records(RecordSet(records, {n.id: n.name for n in self.state.nets.values() if n.dns}))
            self._whole = True
        elif pending:
            self.server.change_records(add=[r for r in pending.values() if r is not None],
                                       remove=[k for k, r in pending.items() if r is None])

    def serve(self, server) -> None:
        """Answer names through `server` from now on, for the sandboxes running already too."""
        self.server, self._whole = server, False
        for sb in self.state.sbs.values():
            if sb.state == "running":
                self.attach(sb)
        self.notify()

    def attach(self, sb: Sandbox) -> str | None:
        """Serve 127.0.0.11 inside `sb` when it is on a network with name resolution. As Docker does, the
        resolver listens on random ports, kept in the record so a restarted daemon binds the same ones, and
        127.0.0.11:53 is redirected to them inside the sandbox (stateless port rewrites, not NAT), so its
        own programs can still bind port 53. Returns that ruleset for a new sandbox (its first process
        applies it), else None."""
        if self.server is None or sb.id in self.server.sandboxes():
            return None
        if not any(n.dns for n in self.state.networks_of(sb)) or (sb.cni and not sb.cni.get("resolver")):
            return None
        netns = sb.cni["netns"] if sb.cni else f"/proc/{sb.pid}/ns/net"   # a CNI runtime's namespace, or its process's
        self.server.add_sandbox(sb.id, netns, upstreams=sb.dns or None,
                                ports=tuple(sb.dns_ports) if sb.dns_ports else None)
        if sb.dns_ports:
            return None
        sb.dns_ports = list(self.server.ports(sb.id))
        return render_dns_redirect(self.server.address, *sb.dns_ports)

    def detach(self, sb: Sandbox) -> None:
        if self.server is not None:
            self.server.remove_sandbox(sb.id)  # its sockets would keep the namespace alive
