"""The use cases, written once for every frontend: networks, sandboxes, connect, prune, reconcile.

The engine takes its collaborators as arguments (kernel, store, firewall applier, evidence source);
`Engine.open(root)` builds the real ones. Every mutation runs under one lock, checks everything it can
before it builds anything (plans.py), and undoes what it built when a later step fails.
"""
from __future__ import annotations

import ipaddress
import logging
import os
import threading
from typing import Callable

from .. import config as config_mod
from ..crashpoints import crashpoint
from ..drivers import registered
from ..drivers.base import DriverContext
from ..errors import Conflict, NsnetError
from ..facts import Evidence, as_network
from ..firewall import Ruleset, render
from ..kernel import nft, ports, probe, procs
from ..model import Endpoint, Network, NetworkRequest, Sandbox, now_rfc3339
from ..store.records import Records
from ..store.scoped import Scoped
from ..store.sqlite import SqliteKV
from . import endpoints, fwinput, plans, reconcile as reconciling, views
from .views import Started
from .addresses import Allocator, LocalAllocator, endpoint_addresses
from .cni import Cni
from .dnsfeed import DnsFeed
from .dockernet import DockerNets
from .dockerpools import DockerPools
from .files import SandboxFiles
from .services import Services
from .state import State
from .swarmcases import SwarmCases
from .thread import KernelThread, on_kernel_thread

log = logging.getLogger("nsnet.engine")


class Engine(SwarmCases):
    def __init__(self, *, kernel, store: Records, firewall: Callable[[Ruleset], object],
                 evidence: Callable[..., list[Evidence]], config, root: str,
                 allocator: Allocator | None = None, thread: KernelThread | None = None):
        self.kernel, self.store, self.config, self.root, self.thread = kernel, store, config, root, thread
        self._apply, self._host_evidence = firewall, evidence
        self.lock = threading.RLock()
        self.state = State(store)
        self.swarm = None   # the SwarmLink while this host is in a swarm (engine/swarm.py)
        # A swarm network's addresses are held by every node's endpoints; etcd's compares keep them unique.
        self.alloc = allocator or LocalAllocator(self.state.all_endpoints_of_network)
        self.feed = DnsFeed(self.state)
        # Docker waits on its IPAM driver: asked back for its networks it would stall the call (their bridges'
        # routes are in the host's evidence anyway).
        self.docker_pools = DockerPools(store, lambda: self._evidence(ask_docker=False), config.pools, self.lock,
                                        thread, kernel.forget_flows)
        self.files = SandboxFiles(root)
        self.state.endpoint_dropped.append(self._addresses_given_up)
        self.state.network_dropped.append(self.alloc.forget)
        self.state.peers_changed.append(self._peers_changed)
        self.state.nodes_changed.append(self._nodes_changed)
        self.drivers = {name: cls(kernel, self._driver_context(name)) for name, cls in registered().items()}
        self.port_sockets: dict[str, list] = {}  # sandbox id -> sockets holding its published ports
        self.on_sandbox_running = None          # watcher hook: (sandbox, popen|None)
        self.cni = Cni(self)                    # the CNI plugin's calls (engine/cni.py)
        self.docker_nets = DockerNets(self)     # Docker's networks and endpoints (`-d nsnet`)
        self.services = Services(self)          # the swarm's services and tasks (engine/services.py)

    @classmethod
    def open(cls, root: str) -> "Engine":
        """The engine of `root` with the real collaborators: the kernel (made on the kernel thread), the
        SQLite store, nftables, and the host's evidence (netlink, /proc, Docker's socket)."""
        config = config_mod.load(root)
        store = Records(SqliteKV(os.path.join(root, "state.db")))
        thread = KernelThread()
        from ..kernel.host import Kernel  # imports pyroute2: only where the real kernel is made
        kernel = thread.call(Kernel)

        def evidence(ask_docker: bool = True) -> list[Evidence]:
            return kernel.evidence(reserved=config.reserved, docker_socket=probe.docker_socket() if ask_docker else None)
        return cls(kernel=kernel, store=store, firewall=lambda rs: nft.run(render(rs)), evidence=evidence,
                   config=config, root=root, thread=thread)

    def _driver_context(self, name: str) -> DriverContext:
        return DriverContext(ports_of=lambda net: [e.host_ifname for e in self.state.endpoints_of_network(net)
                                                   if e.host_ifname],
                             endpoints_of=self.state.endpoints_of_network, crashpoint=crashpoint,
                             store=Scoped(self.store.kv, f"drivers/{name}/"), node=self.state.node,
                             swarm=lambda: self.swarm, peers=self._peers, nodes=lambda: dict(self.state.vteps),
                             node_records=lambda: self._node_records(name), root=self.root,
                             key_rotation=self.config.key_rotation)

    def driver(self, net: Network):
        return self.drivers[net.driver]

    def _evidence(self, ask_docker: bool = True) -> list[Evidence]:
        """The host's, nsnet's own networks' subnets and its Docker IPAM pools'."""
        own = [Evidence("nsnet", as_network(s.subnet), "the subnet of an nsnet network")
               for n in self.state.nets.values() for s in n.subnets]
        return self._host_evidence(ask_docker=ask_docker) + own + self.docker_pools.evidence()

    def _addresses_given_up(self, ep: Endpoint, net: Network | None) -> None:
        """Tracked flows die with their address (design notes); the allocator may give it out again."""
        given_up = endpoint_addresses(ep)
        if given_up:
            self.kernel.forget_flows(given_up)
        self.alloc.release(net, given_up)

    def _apply_firewall(self) -> None:
        self._apply(fwinput.ruleset(self.state, self.driver, self.docker_nets.published()))

    # ---- reads (API threads) ---------------------------------------------------------------------

    def sandbox(self, ref: str) -> Sandbox:
        return self.state.sandbox(ref)

    def list_networks(self, filters: dict | None = None) -> list[Network]:
        with self.lock:
            return views.networks(self.state, filters)

    def inspect_network(self, ref: str) -> dict:
        with self.lock:
            net = self.state.network(ref)
            doc = views.network_doc(self.state, self.driver(net), net)
            doc["Containers"].update(self.docker_nets.members(net))
            return doc

    def list_sandboxes(self, all_: bool = False) -> list[Sandbox]:
        with self.lock:
            return views.sandboxes(self.state, all_)

    def inspect_sandbox(self, ref: str) -> dict:
        with self.lock:
            return views.sandbox_doc(self.state, self.state.sandbox(ref))

    def info(self) -> dict:
        with self.lock:
            return {"Root": self.root, **views.counts(self.state), "Config": self.config.as_dict()}

    def needs_netns(self, sb: Sandbox) -> bool:
        """Does `sb` get a network namespace of its own (its first network's driver says)?"""
        return not sb.requests or self.drivers[self.state.nets[sb.requests[0].network_id].driver].needs_netns

    def log_path(self, ref: str) -> str:
        return os.path.join(self.files.path(self.state.sandbox(ref).id), "log")

    # ---- start-up --------------------------------------------------------------------------------

    @on_kernel_thread
    def start(self) -> None:
        """Create the built-in networks, then make the kernel match the store."""
        with self.lock:
            for net in plans.missing_builtins(self.state, self.drivers, self._evidence, self.config.pools):
                with self.store.transaction():
                    self.state.save_network(net)
                log.info("created built-in network %s", net.name)
            self.reconcile()

    def serve_dns(self, server) -> None:
        """Answer names through `server` from now on, for the sandboxes running already too."""
        with self.lock:
            self.feed.serve(server)

    # ---- networks --------------------------------------------------------------------------------

    @on_kernel_thread
    def create_network(self, req: dict, ask_docker: bool = True) -> Network:
        """`ask_docker`: False when Docker waits on this call (its plugin protocol): it would not answer."""
        with self.lock:
            return self._build_network(plans.network(self.state, self.drivers, lambda: self._evidence(ask_docker),
                                                     self.config.pools, req, self.swarm))

    def _build_network(self, net: Network) -> Network:
        with self.lock:
            driver = self.driver(net)
            applied = False
            try:
                with self.store.transaction():
                    self.state.save_network(net)
                    driver.create_network(net)
                    crashpoint("network-create.after-build")
                    # Inside the transaction: a ruleset nftables refuses (it changes nothing) undoes the
                    # record too, so no network is left that every later apply would fail on.
                    self._apply_firewall()
                    applied = True
                    crashpoint("network-create.after-firewall")
            except Exception as e:
                # A kernel call, nftables, or the commit at the end (another writer took the name first)
                # refused: the transaction wrote nothing; the state, the kernel and the firewall go back.
                with self.store.transaction():
                    self.state.drop_network(net)
                driver.delete_network(net)
                if applied:
                    self._apply_firewall()
                raise NsnetError(f"could not create network {net.name}: {e}") from e
            log.info("created network %s (%s) %s", net.name, net.driver, ",".join(s.subnet for s in net.subnets))
            return net

    @on_kernel_thread
    def remove_network(self, ref: str, by_docker: bool = False) -> Network:
        with self.lock:
            net = self.state.network(ref)
            self.services.check_unused(net)   # first: its tasks would be named below, the service is the why
            plans.removable(self.state, net)
            if not by_docker:
                self.docker_nets.refuse_removal(net)
            self.driver(net).delete_network(net)
            crashpoint("network-rm.after-unbuild")
            self.kernel.forget_flows([ipaddress.ip_address(s.gateway) for s in net.subnets if s.gateway])
            with self.store.transaction():
                self.state.drop_network(net)
            crashpoint("network-rm.after-record")
            self._apply_firewall()
            log.info("removed network %s", net.name)
            return net

    @on_kernel_thread
    def prune_networks(self) -> list[str]:
        removed = []
        with self.lock:
            for net in [n for n in self.state.nets.values() if not n.builtin]:
                try:
                    self.remove_network(net.id)
                    removed.append(net.name)
                except Conflict:
                    pass
        return removed

    # ---- sandboxes -------------------------------------------------------------------------------

    @on_kernel_thread
    def run_sandbox(self, spec: dict, launch_detached) -> Started:
        """Create a sandbox and start its process. `spec["Pid"]` is a process the client started in fresh
        namespaces (foreground run); without it, `launch_detached(sandbox, files)` starts one here.

        The record says "created" until everything is built and the command told to run: a restart
        undoes a run that got no further, its process and files too (reconcile's undo_unstarted_runs)."""
        with self.lock:
            sb, reqs = plans.sandbox(self.state, self.drivers, self.alloc, spec)
            self.docker_nets.refuse_sandbox([self.state.nets[r.network_id] for r in reqs])
            if plans.needs_gateway_bridge(self.state, self.drivers, reqs):
                reqs.append(NetworkRequest(self._gateway_bridge().id))
            files = self.files.make(sb)
            sockets = []
            launch, went, fw_applied = None, False, False
            try:
                for p in sb.ports:
                    sockets.append(ports.hold(p))
                with self.store.transaction():
                    self.state.save_sandbox(sb)
                crashpoint("run.after-record")
                if spec.get("Pid"):
                    pid = int(spec["Pid"])
                    sb.pid, sb.pid_start = pid, procs.start_time(pid)
                else:
                    launch = launch_detached(sb, files)
                    sb.pid, sb.pid_start = launch.pid, launch.started
                with self.store.transaction():
                    self.state.save_sandbox(sb)  # with its process, which a restart must end
                crashpoint("run.after-launch")
                if self.needs_netns(sb):
                    if self.kernel.is_own_netns(sb.pid):
                        raise NsnetError(f"process {sb.pid} is not in a network namespace of its own")
                    self.kernel.sandbox(sb.pid).loopback_up()
                for req in reqs:
                    endpoints.join(self, sb, self.state.nets[req.network_id], req)
                crashpoint("run.after-join")
                sb_nft = self.feed.attach(sb)
                self.feed.notify()
                self.files.write(sb, self.state.endpoints_of_sandbox(sb), resolver=self._resolver_in(sb),
                                 own_netns=self.needs_netns(sb))
                crashpoint("run.after-files")
                sb.state, sb.started = "running", now_rfc3339()
                self.port_sockets[sb.id] = sockets
                if sb.ports:
                    self._apply_firewall()
                    fw_applied = True
                crashpoint("run.after-firewall")
                if launch is not None:
                    launch.go(files, sb.hostname, sb_nft)
                    went = True
                    crashpoint("run.after-go")
                with self.store.transaction():
                    self.state.save_sandbox(sb)
                crashpoint("run.after-running")
            except BaseException:
                for s in sockets:
                    s.close()
                endpoints.teardown(self, sb)
                with self.store.transaction():
                    self.state.drop_sandbox(sb)
                self.files.remove(sb.id)
                self.feed.notify()
                if fw_applied:  # its published ports go again
                    self._apply_firewall()
                if went:  # its command runs already: end it
                    procs.terminate(sb.pid, sb.pid_start, timeout=0)
                    launch.proc.wait()
                elif launch is not None:
                    launch.abort()
                raise
            if self.on_sandbox_running:
                self.on_sandbox_running(sb, launch.proc if launch else None)
            log.info("sandbox %s (%s) running, pid %s", sb.name, sb.id[:12], sb.pid)
            return Started(sb, files, sb_nft)

    def _gateway_bridge(self) -> Network:
        """The host's gateway bridge network (Docker's docker_gwbridge), made at its first use."""
        found = next((n for n in self.state.nets.values() if n.name == plans.GATEWAY_BRIDGE), None)
        return found or self._build_network(plans.gateway_bridge(self.drivers, self._evidence, self.config.pools))

    def _resolver_in(self, sb: Sandbox) -> bool:
        return any(n.dns for n in self.state.networks_of(sb))

    @on_kernel_thread
    def sandbox_exited(self, sid: str, code: int | None) -> None:
        """The sandbox's process is gone: free its network, keep the record unless --rm."""
        with self.lock:
            sb = self.state.sbs.get(sid)
            if sb is None:
                return
            if sb.state != "running":
                if code is not None and sb.exit_code is None:
                    sb.exit_code = code
                    with self.store.transaction():
                        self.state.save_sandbox(sb)
                return
            endpoints.teardown(self, sb)
            crashpoint("exited.after-teardown")
            sb.state, sb.exit_code, sb.finished = "exited", code, now_rfc3339()
            with self.store.transaction():
                if sb.auto_remove:
                    self.state.drop_sandbox(sb)
                else:
                    self.state.save_sandbox(sb)
            crashpoint("exited.after-record")
            if sb.ports:
                self._apply_firewall()
            self.feed.notify()
            log.info("sandbox %s exited (code %s)", sb.name, code)

    def stop_sandbox(self, ref: str, timeout: float = 10.0) -> Sandbox:
        with self.lock:
            sb = self.state.sandbox(ref)
            pid, started = sb.pid, sb.pid_start
        if sb.state == "running":
            procs.terminate(pid, started, timeout)
            crashpoint("stop.after-kill")
            self.sandbox_exited(sb.id, None)
        return sb

    @on_kernel_thread
    def remove_sandbox(self, ref: str, force: bool = False) -> Sandbox:
        with self.lock:
            sb = self.state.sandbox(ref)
            if sb.state == "running" and not force:
                raise Conflict(f"cannot remove sandbox {sb.name}: it is running; stop it first or use rm -f")
        if sb.state == "running":
            procs.terminate(sb.pid, sb.pid_start, timeout=0)
            self.sandbox_exited(sb.id, None)
        with self.lock:
            if sb.id in self.state.sbs:
                with self.store.transaction():
                    self.state.drop_sandbox(sb)
            crashpoint("rm.after-record")
            self.files.remove(sb.id)
            self.feed.notify()
        return sb

    @on_kernel_thread
    def connect(self, net_ref: str, sb_ref: str, ip: str | None = None, ip6: str | None = None,
                aliases: list[str] | None = None) -> Endpoint | None:
        with self.lock:
            net, sb = self.state.network(net_ref), self.state.sandbox(sb_ref)
            req = plans.connection(self.state, self.drivers, self.alloc, net, sb,
                                   {"IP": ip, "IP6": ip6, "Aliases": aliases or []})
            self.docker_nets.refuse_sandbox([net])
            ep = None
            if sb.state == "running":
                ep = endpoints.join(self, sb, net, req)
            crashpoint("connect.after-join")  # an endpoint no request asks for: a restart undoes it
            sb.requests.append(req)
            try:
                with self.store.transaction():
                    self.state.save_sandbox(sb)
            except BaseException:
                sb.requests.remove(req)
                if ep is not None:
                    self.driver(net).leave(net, ep, self.kernel.sandbox(sb.pid))
                    self.state.drop_endpoint(ep)
                raise
            crashpoint("connect.after-record")
            self.feed.notify()
            return ep

    @on_kernel_thread
    def disconnect(self, net_ref: str, sb_ref: str, force: bool = False) -> None:
        with self.lock:
            net, sb = self.state.network(net_ref), self.state.sandbox(sb_ref)
            if not self.state.requested(sb, net):
                raise NsnetError(f"sandbox {sb.name} is not connected to network {net.name}")
            gone = [ep for ep in self.state.endpoints_of_sandbox(sb) if ep.network_id == net.id]
            for ep in gone:
                # The sandbox lives on: links inside it (macvlan's) must go too.
                self.driver(net).leave(net, ep, self.kernel.sandbox(sb.pid) if sb.state == "running" else None)
            crashpoint("disconnect.after-leave")  # the records still say connected: a restart plumbs it again
            sb.requests = [r for r in sb.requests if r.network_id != net.id]
            with self.store.transaction():  # endpoint and request go together
                for ep in gone:
                    self.state.drop_endpoint(ep)
                self.state.save_sandbox(sb)
            crashpoint("disconnect.after-record")
            if sb.ports:
                self._apply_firewall()
            self.feed.notify()

    # ---- reconcile -------------------------------------------------------------------------------

    @on_kernel_thread
    def reconcile(self) -> list[str]:
        """Make the kernel match the store after a restart or crash (reconcile.py: its steps in order);
        say what was done."""
        with self.lock:
            done = reconciling.run(self)
        self.feed.notify()
        return done

    @on_kernel_thread
    def close(self) -> None:
        self.kernel.close()
        self.store.close()

