"""The use cases, written once for every frontend: networks, sandboxes, connect, prune, reconcile.

State lives in the store; the dicts below are a write-through copy of it (rebuilt at start), so the
attach path never scans the store. Every mutation runs under one lock, checks everything it can
before it builds anything, and undoes what it built when a later step fails.
"""
from __future__ import annotations

import contextlib
import functools
import ipaddress
import logging
import os
import secrets
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

from . import config as config_mod
from . import requests as rq
from .crashpoints import crashpoint
from .drivers import driver_class
from .drivers.base import SIZE_KEY
from .drivers.bridge import HOST_IP_KEY, NAME_KEY, bridge_name_for
from .errors import Conflict, NotFound, NsnetError
from .firewall import FwPort, Ruleset, render, render_dns_redirect
from .ipam.addresses import AddressPool, default_gateway, mac_for
from .facts import Evidence
from .ipam.evidence import overlapping, refusal
from .ipam.pools import pick_subnet
from .kernel import nft, probe, ports, procs
from .kernel.host import Kernel
from .kernel.links import loopback_up
from .dns.records import Record, RecordSet
from .model import (OWNER_ALIAS, Endpoint, Network, NetworkRequest, Sandbox, SubnetConfig, dns_names, from_dict,
                    network_json, now_rfc3339, owner_alias, sandbox_json, to_dict)
from .names import random_name
from .resolvconf import nameservers
from .store.records import Records
from .store.sqlite import SqliteKV

log = logging.getLogger("nsnet.engine")

BUILTIN = {
    "bridge": dict(driver="bridge", bridge="nsnet0", subnet="172.17.0.0/16"),
    "host": dict(driver="host"),
    "none": dict(driver="null"),
}
VETH_PREFIX = "nsv"


def new_id() -> str:
    return secrets.token_hex(32)


def on_kernel_thread(method):
    """Run a use case on the engine's one kernel thread.

    pyroute2 gives every thread its own netlink socket, opened in the namespace that thread is in
    at first use; confining all netlink work to one thread keeps one socket per namespace, reused.
    """
    @functools.wraps(method)
    def call(self, *args, **kwargs):
        if threading.get_ident() == self.kernel_thread:
            return method(self, *args, **kwargs)
        return self._worker.submit(method, self, *args, **kwargs).result()
    return call


class Engine:
    def __init__(self, root: str):
        self.root = root
        self.config = config_mod.load(root)
        self.store = Records(SqliteKV(os.path.join(root, "state.db")))
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="kernel")
        self.kernel_thread = self._worker.submit(threading.get_ident).result()
        self.kernel = self._worker.submit(Kernel).result()
        self.lock = threading.RLock()
        self.drivers = {name: driver_class(name)(self.kernel)
                        for name in ("bridge", "host", "null", "macvlan", "ipvlan")}
        for driver in self.drivers.values():
            driver.ports_of = lambda net: [e.host_ifname for e in self.endpoints_of_network(net) if e.host_ifname]
            driver.crashpoint = crashpoint
        self.nets: dict[str, Network] = {d["id"]: from_dict(Network, d) for d in self.store.list("network")}
        self.sbs: dict[str, Sandbox] = {d["id"]: from_dict(Sandbox, d) for d in self.store.list("sandbox")}
        self.eps: dict[str, Endpoint] = {d["id"]: from_dict(Endpoint, d) for d in self.store.list("endpoint")}
        self._eps_of: dict[str, dict[str, Endpoint]] = {}  # sandbox id -> its endpoints (an index of self.eps)
        for ep in self.eps.values():
            self._eps_of.setdefault(ep.sandbox_id, {})[ep.id] = ep
        self._used: dict[str, set] = {}        # network id -> addresses taken (derived from self.eps)
        self._pools: dict[tuple, AddressPool] = {}  # (network id, subnet) -> its allocator over _used
        self._port_sockets: dict[str, list] = {}  # sandbox id -> sockets holding its published ports
        self.dns = None                         # the embedded resolver (dns.server.DnsServer), set by the daemon
        self._dns_whole = False   # the resolver has every record: from then on it gets changes only
        self._dns_pending: dict[tuple, Record | None] = {}  # (sandbox, network) -> record, None = gone
        self.on_sandbox_running = None          # watcher hook: (sandbox, popen|None)

    # ---- lookups ---------------------------------------------------------------------------------

    def _driver(self, net: Network):
        return self.drivers[net.driver]

    def network(self, ref: str) -> Network:
        return self._lookup(self.nets, ref, "network")

    def sandbox(self, ref: str) -> Sandbox:
        return self._lookup(self.sbs, ref, "sandbox")

    @staticmethod
    def _lookup(table: dict, ref: str, what: str):
        """By name, full ID or unique ID prefix, as Docker does."""
        if not ref:
            raise NotFound(f"{what} name is empty")
        if ref in table:
            return table[ref]
        for obj in table.values():
            if obj.name == ref:
                return obj
        matches = [obj for key, obj in table.items() if key.startswith(ref)]
        if len(matches) == 1:
            return matches[0]
        if len(matches) > 1:
            raise NsnetError(f"{what} {ref} is ambiguous ({len(matches)} matches): give more of the ID")
        raise NotFound(f"{what} {ref} not found")

    def endpoints_of_sandbox(self, sb: Sandbox) -> list[Endpoint]:
        return sorted(self._eps_of.get(sb.id, {}).values(), key=lambda e: int(e.ifname[3:] or 0))

    def endpoints_of_network(self, net: Network) -> list[Endpoint]:
        return [e for e in self.eps.values() if e.network_id == net.id]

    def _used_addresses(self, net: Network) -> set:
        used = self._used.get(net.id)
        if used is None:
            used = self._used[net.id] = set()
            for ep in self.endpoints_of_network(net):
                for a in (ep.ipv4, ep.ipv6):
                    if a:
                        used.add(ipaddress.ip_interface(a).ip)
        return used

    # ---- persistence (write-through) ------------------------------------------------------------

    def _save_network(self, net: Network) -> None:
        self.store.put("network", net.id, to_dict(net))
        self.nets[net.id] = net

    def _save_sandbox(self, sb: Sandbox) -> None:
        self.store.put("sandbox", sb.id, to_dict(sb))
        self.sbs[sb.id] = sb

    def _save_endpoint(self, ep: Endpoint) -> None:
        self.store.put("endpoint", ep.id, to_dict(ep))
        self.eps[ep.id] = ep
        self._eps_of.setdefault(ep.sandbox_id, {})[ep.id] = ep
        self._dns_pending[(ep.sandbox_id, ep.network_id)] = self._dns_record(ep)

    def _drop_endpoint(self, ep: Endpoint) -> None:
        self.store.delete("endpoint", ep.id)
        self.eps.pop(ep.id, None)
        mine = self._eps_of.get(ep.sandbox_id, {})
        mine.pop(ep.id, None)
        if not mine:
            self._eps_of.pop(ep.sandbox_id, None)
        self._dns_pending[(ep.sandbox_id, ep.network_id)] = None
        used = self._used.get(ep.network_id)
        net = self.nets.get(ep.network_id)
        given_up = [ipaddress.ip_interface(a).ip for a in (ep.ipv4, ep.ipv6) if a]
        if given_up:
            self.kernel.forget_flows(given_up)
        for ip in given_up:
            if used is not None:
                used.discard(ip)
            if net is not None:
                cfg = self._subnet_for(net, ip)
                if cfg is not None and (net.id, cfg.subnet) in self._pools:
                    self._pools[(net.id, cfg.subnet)].release(ip)

    def _notify(self) -> None:
        """Sandboxes or endpoints changed: the resolver answers from the new state before we return."""
        pending, self._dns_pending = self._dns_pending, {}
        if self.dns is None:
            return
        if not self._dns_whole:
            records = [r for r in map(self._dns_record, self.eps.values()) if r is not None]
            self.dns.set_records(RecordSet(records, {n.id: n.name for n in self.nets.values() if n.dns}))
            self._dns_whole = True
        elif pending:
            self.dns.change_records(add=[r for r in pending.values() if r is not None],
                                    remove=[k for k, r in pending.items() if r is None])

    def _dns_record(self, ep: Endpoint) -> Record | None:
        net, sb = self.nets.get(ep.network_id), self.sbs.get(ep.sandbox_id)
        if net is None or sb is None or not net.dns:
            return None
        return Record(sb.id, net.id, tuple(n.lower() for n in dns_names(net, sb, ep)),
                      ipv4=ep.ipv4.split("/")[0] if ep.ipv4 else None, ipv6=ep.ipv6.split("/")[0] if ep.ipv6 else None)

    def serve_dns(self, server) -> None:
        """Answer names through `server` from now on, for the sandboxes running already too."""
        with self.lock:
            self.dns, self._dns_whole = server, False
            for sb in self.sbs.values():
                if sb.state == "running":
                    self._dns_attach(sb)
            self._notify()

    def _dns_attach(self, sb: Sandbox) -> str | None:
        """Serve 127.0.0.11 inside `sb` when it is on a network with name resolution. As Docker does, the
        resolver listens on random ports, kept in the record so a restarted daemon binds the same ones, and
        127.0.0.11:53 is redirected to them inside the sandbox (stateless port rewrites, not NAT), so its
        own programs can still bind port 53. Returns that ruleset for a new sandbox (its first process
        applies it), else None."""
        if self.dns is None or sb.id in self.dns.sandboxes():
            return None
        if not any(self.nets[e.network_id].dns for e in self.endpoints_of_sandbox(sb) if e.network_id in self.nets):
            return None
        self.dns.add_sandbox(sb.id, f"/proc/{sb.pid}/ns/net", upstreams=sb.dns or None,
                             ports=tuple(sb.dns_ports) if sb.dns_ports else None)
        if sb.dns_ports:
            return None
        sb.dns_ports = list(self.dns.ports(sb.id))
        return render_dns_redirect(self.dns.address, *sb.dns_ports)

    # ---- start-up --------------------------------------------------------------------------------

    @on_kernel_thread
    def start(self) -> None:
        """Create the built-in networks, then make the kernel match the store."""
        with self.lock:
            if not self.store.meta("engine_id"):
                self.store.set_meta("engine_id", new_id())
            for name, spec in BUILTIN.items():
                if not any(n.name == name and n.builtin for n in self.nets.values()):
                    self._create_builtin(name, spec)
            self.reconcile()

    def _create_builtin(self, name: str, spec: dict) -> None:
        net = Network(id=new_id(), name=name, driver=spec["driver"], created=now_rfc3339(), builtin=True)
        if spec["driver"] == "bridge":
            net.bridge = spec["bridge"]
            net.options = {"com.docker.network.bridge.default_bridge": "true",
                           "com.docker.network.bridge.enable_icc": "true",
                           "com.docker.network.bridge.enable_ip_masquerade": "true",
                           "com.docker.network.bridge.host_binding_ipv4": "0.0.0.0",
                           NAME_KEY: spec["bridge"]}
            subnet = ipaddress.ip_network(spec["subnet"])
            evidence = self._evidence(exclude=None)
            if overlapping(subnet, evidence):
                subnet, skipped = pick_subnet(self.config.pools, evidence)
                self._log_skipped(skipped)
            net.subnets = [SubnetConfig(subnet=str(subnet), gateway=str(default_gateway(subnet)))]
        with self.store.transaction():
            self._save_network(net)
        log.info("created built-in network %s", name)

    # ---- networks --------------------------------------------------------------------------------

    def _evidence(self, exclude: Network | None) -> list[Evidence]:
        own = [s.subnet for n in self.nets.values() if n is not exclude for s in n.subnets]
        return probe.gather(self.kernel.ipr, reserved=self.config.reserved, nsnet_subnets=own,
                            docker_socket=probe.docker_socket())

    def _log_skipped(self, skipped) -> None:
        for subnet, why in skipped:
            log.info("pool candidate %s skipped: %s", subnet, "; ".join(e.detail for e in why))

    @on_kernel_thread
    def create_network(self, req: dict) -> Network:
        with self.lock:
            net = self._plan_network(req)
            driver = self._driver(net)
            with self.store.transaction():
                self._save_network(net)
                try:
                    driver.create_network(net)
                    crashpoint("network-create.after-build")
                    # Inside the transaction: a ruleset nftables refuses (it changes nothing) undoes the
                    # record too, so no network is left that every later apply would fail on.
                    self._apply_firewall()
                    crashpoint("network-create.after-firewall")
                except Exception as e:
                    self.nets.pop(net.id, None)
                    driver.delete_network(net)
                    raise NsnetError(f"could not create network {net.name}: {e}") from e
            self._dns_whole = False  # its name joins the resolver's domains at the next change
            log.info("created network %s (%s) %s", net.name, net.driver, ",".join(s.subnet for s in net.subnets))
            return net

    def _plan_network(self, req: dict) -> Network:
        """Everything checked, nothing built."""
        name = req.get("Name") or ""
        rq.check_name(name, "network")
        if any(n.name == name for n in self.nets.values()):
            raise Conflict(f"network with name {name} already exists")
        driver_name = req.get("Driver") or "bridge"
        cls = driver_class(driver_name)
        if cls.name in ("host", "null"):
            raise Conflict(f'only one instance of "{cls.name}" network is allowed')
        net = Network(id=new_id(), name=name, driver=cls.name, created=now_rfc3339(),
                      ipv6=bool(req.get("EnableIPv6")), internal=bool(req.get("Internal")),
                      attachable=bool(req.get("Attachable")), options=dict(req.get("Options") or {}),
                      labels=dict(req.get("Labels") or {}), dns=True)
        driver = self.drivers[cls.name]
        driver.validate(net)
        if cls.name == "bridge":
            net.bridge = net.options.get(NAME_KEY) or bridge_name_for(net.id)
            if net.bridge in {n.bridge for n in self.nets.values()}:
                raise Conflict(f"bridge {net.bridge} is already used by another nsnet network")
            link = self.kernel.links().get(net.bridge)
            if link is not None:  # a bridge nsnet did not make is adopted (a flat LAN bridge); anything else refused
                driver.adopt(net, link)
        net.subnets = self._plan_subnets(net, req)
        driver.plan(net, list(self.nets.values()))
        return net

    def _plan_subnets(self, net: Network, req: dict) -> list:
        subnets = list(req.get("Subnets") or [])
        configs = rq.subnet_configs(subnets, list(req.get("Gateways") or []), list(req.get("IPRanges") or []),
                                    dict(req.get("AuxAddresses") or {}), net.ipv6)
        if net.ipv6 and not any(ipaddress.ip_network(c.subnet).version == 6 for c in configs):
            raise NsnetError("--ipv6 needs an IPv6 --subnet (for example --subnet fd00:1::/64)")
        evidence = self._evidence(exclude=None)
        lan = self._driver(net).on_lan(net)  # the LAN's own subnet: its addresses are checked on the LAN instead
        others = [ipaddress.ip_network(s.subnet) for n in self.nets.values() for s in n.subnets]
        for c in configs:
            subnet = ipaddress.ip_network(c.subnet)
            for o in others:
                if subnet.overlaps(o):
                    raise Conflict(f"subnet {subnet} overlaps {o} of another nsnet network: pick another subnet")
            hits = [e for e in overlapping(subnet, evidence) if e.kind != "nsnet"]
            if hits and not req.get("AllowOverlap") and not lan:
                raise Conflict(refusal(subnet, hits))
        if not lan and not any(ipaddress.ip_network(c.subnet).version == 4 for c in configs):
            size = net.options.get(SIZE_KEY)
            subnet, skipped = pick_subnet(self.config.pools, evidence, size=int(size) if size else None)
            self._log_skipped(skipped)
            configs.insert(0, SubnetConfig(subnet=str(subnet)))
        for c in configs:
            subnet = ipaddress.ip_network(c.subnet)
            if not c.gateway:
                c.gateway = str(default_gateway(subnet))
            AddressPool(subnet, gateway=c.gateway, ip_range=c.ip_range, aux=c.aux)  # validates
        return configs

    def list_networks(self, filters: dict | None = None) -> list[Network]:
        with self.lock:
            nets = sorted(self.nets.values(), key=lambda n: n.created)
        for key, value in (filters or {}).items():
            if key == "name":
                nets = [n for n in nets if value in n.name]
            elif key == "driver":
                nets = [n for n in nets if n.driver == driver_class(value).name]
            elif key == "id":
                nets = [n for n in nets if n.id.startswith(value)]
            elif key == "label":
                k, _, v = value.partition("=")
                nets = [n for n in nets if k in n.labels and (not v or n.labels[k] == v)]
            elif key == "type":
                nets = [n for n in nets if n.builtin == (value == "builtin")]
            else:
                raise NsnetError(f"invalid filter {key!r}: use name=, driver=, id=, label= or type=")
        return nets

    def inspect_network(self, ref: str) -> dict:
        with self.lock:
            net = self.network(ref)
            members = [(self.sbs[e.sandbox_id], e) for e in self.endpoints_of_network(net) if e.sandbox_id in self.sbs]
            doc = network_json(net, members)
            if net.driver == "bridge":
                doc["Options"].setdefault(NAME_KEY, net.bridge)
            notes = self._driver(net).notes(net)
            if notes:  # not Docker's: what a user of this network should know (e.g. macvlan's host limit)
                doc["Notes"] = notes
            return doc

    @on_kernel_thread
    def remove_network(self, ref: str) -> Network:
        with self.lock:
            net = self.network(ref)
            if net.builtin:
                raise Conflict(f"{net.name} is a pre-defined network and cannot be removed")
            users = [self.sbs[e.sandbox_id].name for e in self.endpoints_of_network(net) if e.sandbox_id in self.sbs]
            users += [sb.name for sb in self.sbs.values()
                      if sb.name not in users and any(r.network_id == net.id for r in sb.requests)]
            if users:
                raise Conflict(f"network {net.name} has sandboxes attached: {', '.join(sorted(users))}; "
                               f"remove them or disconnect them first")
            self._driver(net).delete_network(net)
            crashpoint("network-rm.after-unbuild")
            self.kernel.forget_flows([ipaddress.ip_address(s.gateway) for s in net.subnets if s.gateway])
            with self.store.transaction():
                self.store.delete("network", net.id)
            crashpoint("network-rm.after-record")
            self.nets.pop(net.id, None)
            self._used.pop(net.id, None)
            for key in [k for k in self._pools if k[0] == net.id]:
                del self._pools[key]
            self._apply_firewall()
            log.info("removed network %s", net.name)
            return net

    @on_kernel_thread
    def prune_networks(self) -> list[str]:
        removed = []
        with self.lock:
            for net in list(self.nets.values()):
                if net.builtin:
                    continue
                try:
                    self.remove_network(net.id)
                    removed.append(net.name)
                except Conflict:
                    pass
        return removed

    # ---- firewall --------------------------------------------------------------------------------

    def _ruleset(self) -> Ruleset:
        rs = Ruleset()
        for net in sorted(self.nets.values(), key=lambda n: n.created):
            fw = self._driver(net).firewall(net)
            if fw is not None:
                rs.networks.append(fw)
        for sb in self.sbs.values():
            if sb.state != "running" or not sb.ports:
                continue
            target = self._port_target(sb)
            if target is None:
                continue
            net, ep = target
            default_ip = net.option(HOST_IP_KEY, "0.0.0.0")
            for p in sb.ports:
                host_ip = p.host_ip if p.host_ip not in ("0.0.0.0", "") else default_ip
                rs.ports.append(FwPort(host_ip, p.host_port, p.proto, ep.ipv4.split("/")[0], p.port, net.bridge))
        return rs

    def _port_target(self, sb: Sandbox):
        for ep in self.endpoints_of_sandbox(sb):
            net = self.nets.get(ep.network_id)
            if net is not None and net.driver == "bridge" and ep.ipv4:
                return net, ep
        return None

    def _apply_firewall(self) -> None:
        nft.run(render(self._ruleset()))

    # ---- sandboxes -------------------------------------------------------------------------------

    @on_kernel_thread
    def run_sandbox(self, spec: dict, launch_detached) -> Sandbox:
        """Create a sandbox and start its process. `spec["Pid"]` is a process the client started in fresh
        namespaces (foreground run); without it, `launch_detached(sandbox, files)` starts one here.

        The record says "created" until everything is built and the command told to run: a restart
        undoes a run that got no further, its process and files too (reconcile's undo_unstarted_runs)."""
        with self.lock:
            sb, reqs = self._plan_sandbox(spec)
            files = self._files_dir(sb)
            sockets = []
            launch, went, fw_applied = None, False, False
            try:
                for p in sb.ports:
                    sockets.append(ports.hold(p))
                with self.store.transaction():
                    self._save_sandbox(sb)
                crashpoint("run.after-record")
                if spec.get("Pid"):
                    pid = int(spec["Pid"])
                    sb.pid, sb.pid_start = pid, procs.start_time(pid)
                else:
                    launch = launch_detached(sb, files)
                    sb.pid, sb.pid_start = launch.pid, launch.started
                with self.store.transaction():
                    self._save_sandbox(sb)  # with its process, which a restart must end
                crashpoint("run.after-launch")
                if sb.netmode != "host" and self.kernel.is_own_netns(sb.pid):
                    raise NsnetError(f"process {sb.pid} is not in a network namespace of its own")
                if sb.netmode != "host":
                    loopback_up(self.kernel.sandbox(sb.pid).rtnl)
                for req in reqs:
                    self._join(sb, self.nets[req.network_id], req)
                crashpoint("run.after-join")
                sb_nft = self._dns_attach(sb)
                self._notify()
                self._write_files(sb, files)
                crashpoint("run.after-files")
                sb.state, sb.started = "running", now_rfc3339()
                self._port_sockets[sb.id] = sockets
                if sb.ports:
                    self._apply_firewall()
                    fw_applied = True
                crashpoint("run.after-firewall")
                if launch is not None:
                    launch.go(files, sb.hostname, sb_nft)
                    went = True
                    crashpoint("run.after-go")
                with self.store.transaction():
                    self._save_sandbox(sb)
                crashpoint("run.after-running")
            except BaseException:
                for s in sockets:
                    s.close()
                self._port_sockets.pop(sb.id, None)
                self._teardown(sb)
                with self.store.transaction():
                    self.store.delete("sandbox", sb.id)
                self.sbs.pop(sb.id, None)
                _rmtree(files)
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
            return sb

    def _plan_sandbox(self, spec: dict) -> tuple[Sandbox, list[NetworkRequest]]:
        name = spec.get("Name") or self._free_name()
        rq.check_name(name, "sandbox")
        if any(s.name == name for s in self.sbs.values()):
            other = next(s for s in self.sbs.values() if s.name == name)
            raise Conflict(f'the name "{name}" is already in use by sandbox {other.id[:12]}: remove it or pick '
                           f"another name")
        cmd = list(spec.get("Cmd") or [])
        if not cmd:
            raise NsnetError("no command given: nsnet run [OPTIONS] -- CMD [ARGS...]")
        hostname = spec.get("Hostname") or ""
        if hostname:
            rq.check_hostname(hostname)
        sid = new_id()
        sb = Sandbox(id=sid, name=name, hostname=hostname or sid[:12], created=now_rfc3339(), cmd=cmd,
                     auto_remove=bool(spec.get("AutoRemove")),
                     dns=list(spec.get("Dns") or []))
        for d in sb.dns:
            rq.parse_address(d, "DNS server")
        wanted = spec.get("Networks") or [{"Network": "bridge"}]
        reqs = []
        for w in wanted:
            net = self.network(w.get("Network", ""))
            if any(r.network_id == net.id for r in reqs):
                raise Conflict(f"sandbox is already connected to network {net.name}")
            reqs.append(self._plan_request(sb, net, w))
        modes = {self.nets[r.network_id].driver for r in reqs}
        if modes & {"host", "null"} and len(reqs) > 1:
            raise NsnetError("a sandbox on the host or none network cannot join other networks")
        sb.netmode = {"host": "host", "null": "none"}.get(self.nets[reqs[0].network_id].driver, "bridge")
        sb.requests = reqs
        sb.ports = [rq.parse_port(p) if isinstance(p, str) else p for p in spec.get("Ports") or []]
        if sb.ports and sb.netmode != "bridge":
            raise NsnetError(f"published ports make no sense on the {sb.netmode} network: drop -p or use a bridge network")
        for i, p in enumerate(sb.ports):
            for q in sb.ports[:i]:
                if rq.ports_clash(p, q):
                    raise Conflict(f"port {p.host_port}/{p.proto} is published twice")
            for other in self.sbs.values():
                if other.state == "running" and any(rq.ports_clash(p, q) for q in other.ports):
                    raise Conflict(f"port {p.host_ip}:{p.host_port}/{p.proto} is already published by sandbox "
                                   f"{other.name}")
        return sb, reqs

    def _plan_request(self, sb: Sandbox, net: Network, w: dict) -> NetworkRequest:
        req = NetworkRequest(network_id=net.id, ip=w.get("IP") or None, ip6=w.get("IP6") or None,
                             aliases=list(w.get("Aliases") or []))
        if req.aliases and not net.dns:
            raise NsnetError(f"network-scoped aliases are only supported on user-defined networks, not {net.name}")
        for a in req.aliases:
            rq.check_name(a, "alias")
        if (req.ip or req.ip6) and net.builtin:
            raise NsnetError("user specified IP address is supported on user defined networks only")
        used = self._used_addresses(net)
        for ip, fam in ((req.ip, 4), (req.ip6, 6)):
            if not ip:
                continue
            addr = rq.parse_address(ip, "IP address")
            if addr.version != fam:
                raise NsnetError(f"{ip} is not an IPv{fam} address")
            cfg = self._subnet_for(net, addr)
            if cfg is None:
                raise NsnetError(f"{ip} is not in any subnet of network {net.name}")
            pool = self._pool(net, cfg)
            pool.reserve(addr, used)  # raises when taken, reserved or outside; then give it back until the join
            pool.release(addr)
            why = self._driver(net).address_taken(net, addr)
            if why:
                raise Conflict(f"{why}: pick another --ip")
        return req

    def _free_name(self) -> str:
        taken = {s.name for s in self.sbs.values()}
        while True:
            name = random_name()
            if name not in taken:
                return name

    def _pool(self, net: Network, cfg: SubnetConfig) -> AddressPool:
        """One AddressPool per subnet, kept: it indexes the network's `used` set once, not per attach."""
        key = (net.id, cfg.subnet)
        pool = self._pools.get(key)
        if pool is None:
            pool = self._pools[key] = AddressPool(cfg.subnet, gateway=cfg.gateway, ip_range=cfg.ip_range,
                                                  aux=cfg.aux)
        return pool

    @staticmethod
    def _subnet_for(net: Network, addr):
        for cfg in net.subnets:
            if addr in ipaddress.ip_network(cfg.subnet):
                return cfg
        return None

    def _allocate(self, net: Network, pool: AddressPool, used: set):
        """The lowest free address; on a LAN, the lowest one nobody there answers for (ARP)."""
        skipped = []
        try:
            while True:
                addr = pool.allocate(used)
                why = self._driver(net).address_taken(net, addr)
                if not why:
                    return addr
                log.info("network %s: skipping %s: %s", net.name, addr, why)
                skipped.append(addr)
        finally:
            for a in skipped:  # asked again next time: the machine may have left the LAN
                pool.release(a)

    def _join(self, sb: Sandbox, net: Network, req: NetworkRequest, default_route: bool | None = None) -> Endpoint | None:
        """Give `sb` an endpoint on `net`: addresses, kernel objects, record. Undone on failure. The default
        route goes through it when asked, or else when no other endpoint has a gateway."""
        driver = self._driver(net)
        if not driver.builds_endpoints:
            return None
        used = self._used_addresses(net)
        taken_names = {e.ifname for e in self.endpoints_of_sandbox(sb)}
        ifname = next(f"eth{i}" for i in range(len(taken_names) + 1) if f"eth{i}" not in taken_names)
        ep_id = new_id()
        ep = Endpoint(id=ep_id, network_id=net.id, sandbox_id=sb.id, ifname=ifname,
                      host_ifname=VETH_PREFIX + ep_id[:12], mac=None, ipv4=None, ipv6=None, gateway4=None,
                      gateway6=None, aliases=list(req.aliases))
        for cfg in net.subnets:
            subnet = ipaddress.ip_network(cfg.subnet)
            pool = self._pool(net, cfg)
            static = req.ip if subnet.version == 4 else req.ip6
            if static:
                addr = ipaddress.ip_address(static)
                if addr not in subnet:
                    continue
                pool.reserve(addr, used)
            else:
                addr = self._allocate(net, pool, used)
            used.add(addr)
            if subnet.version == 4 and ep.ipv4 is None:
                ep.ipv4, ep.gateway4 = f"{addr}/{subnet.prefixlen}", cfg.gateway
                ep.mac = mac_for(addr)
            elif subnet.version == 6 and ep.ipv6 is None:
                ep.ipv6, ep.gateway6 = f"{addr}/{subnet.prefixlen}", cfg.gateway
        driver.plan_endpoint(net, ep)
        if default_route is None:
            default_route = not any(e.gateway4 for e in self.endpoints_of_sandbox(sb))
        sandbox = None
        try:
            with self.store.transaction():
                self._save_endpoint(ep)
            crashpoint("join.after-record")
            sandbox = self.kernel.sandbox(sb.pid)
            driver.join(net, ep, sandbox, default_route)
        except BaseException:
            driver.leave(net, ep, sandbox)
            self._drop_endpoint(ep)
            raise
        return ep

    def _teardown(self, sb: Sandbox) -> None:
        """Remove every endpoint of `sb` (kernel objects and records) and let go of its namespace."""
        for ep in self.endpoints_of_sandbox(sb):
            net = self.nets.get(ep.network_id)
            if net is not None:
                try:
                    self._driver(net).leave(net, ep)
                except Exception:
                    log.exception("leaving %s failed; reconcile will retry", net.name)
            self._drop_endpoint(ep)
        for s in self._port_sockets.pop(sb.id, []):
            s.close()
        if self.dns is not None:
            self.dns.remove_sandbox(sb.id)  # its sockets would keep the namespace alive
        if sb.pid:
            self.kernel.forget(sb.pid)

    def _files_dir(self, sb: Sandbox) -> str:
        path = os.path.join(self.root, "sandboxes", sb.id)
        os.makedirs(path, exist_ok=True)
        return path

    def _write_files(self, sb: Sandbox, files: str) -> None:
        eps = self.endpoints_of_sandbox(sb)
        hosts = ["127.0.0.1\tlocalhost", "::1\tlocalhost ip6-localhost ip6-loopback"]
        for ep in eps[:1]:
            for a in (ep.ipv4, ep.ipv6):
                if a:
                    hosts.append(f"{a.split('/')[0]}\t{sb.hostname}")
        if sb.netmode == "host":
            hosts.append(f"127.0.1.1\t{sb.hostname}")
        resolv = self._resolv_conf(sb, eps)
        for name, text in (("hosts", "\n".join(hosts) + "\n"), ("resolv.conf", resolv), ("hostname", sb.hostname + "\n")):
            with open(os.path.join(files, name), "w") as f:
                f.write(text)

    def _resolv_conf(self, sb: Sandbox, eps: list[Endpoint]) -> str:
        if any(self.nets[e.network_id].dns for e in eps if e.network_id in self.nets):
            # The embedded resolver answers inside the sandbox; it forwards the rest upstream.
            return "nameserver 127.0.0.11\noptions ndots:0\n"
        servers = sb.dns or nameservers()
        if sb.netmode != "host":
            servers = [s for s in servers if not ipaddress.ip_address(s).is_loopback]
        return "".join(f"nameserver {s}\n" for s in servers[:3])

    def list_sandboxes(self, all_: bool = False) -> list[Sandbox]:
        with self.lock:
            sbs = sorted(self.sbs.values(), key=lambda s: s.created, reverse=True)
        return [s for s in sbs if all_ or s.state == "running"]

    def inspect_sandbox(self, ref: str) -> dict:
        with self.lock:
            sb = self.sandbox(ref)
            members = [(self.nets[e.network_id], e) for e in self.endpoints_of_sandbox(sb) if e.network_id in self.nets]
            doc = sandbox_json(sb, members)
            if not members:
                doc["NetworkSettings"]["Networks"] = {
                    self.nets[r.network_id].name: {"NetworkID": r.network_id, "IPAddress": "", "Aliases": r.aliases}
                    for r in sb.requests if r.network_id in self.nets}
            return doc

    @on_kernel_thread
    def sandbox_exited(self, sid: str, code: int | None) -> None:
        """The sandbox's process is gone: free its network, keep the record unless --rm."""
        with self.lock:
            sb = self.sbs.get(sid)
            if sb is None:
                return
            if sb.state != "running":
                if code is not None and sb.exit_code is None:
                    sb.exit_code = code
                    with self.store.transaction():
                        self._save_sandbox(sb)
                return
            had_ports = bool(sb.ports)
            self._teardown(sb)
            crashpoint("exited.after-teardown")
            sb.state, sb.exit_code, sb.finished = "exited", code, now_rfc3339()
            with self.store.transaction():
                if sb.auto_remove:
                    self.store.delete("sandbox", sb.id)
                    self.sbs.pop(sb.id, None)
                else:
                    self._save_sandbox(sb)
            crashpoint("exited.after-record")
            if had_ports:
                self._apply_firewall()
            self._notify()
            log.info("sandbox %s exited (code %s)", sb.name, code)

    def stop_sandbox(self, ref: str, timeout: float = 10.0) -> Sandbox:
        with self.lock:
            sb = self.sandbox(ref)
            pid, started = sb.pid, sb.pid_start
        if sb.state == "running":
            procs.terminate(pid, started, timeout)
            crashpoint("stop.after-kill")
            self.sandbox_exited(sb.id, None)
        return sb

    @on_kernel_thread
    def remove_sandbox(self, ref: str, force: bool = False) -> Sandbox:
        with self.lock:
            sb = self.sandbox(ref)
            if sb.state == "running" and not force:
                raise Conflict(f"cannot remove sandbox {sb.name}: it is running; stop it first or use rm -f")
        if sb.state == "running":
            procs.terminate(sb.pid, sb.pid_start, timeout=0)
            self.sandbox_exited(sb.id, None)
        with self.lock:
            if sb.id in self.sbs:
                with self.store.transaction():
                    self.store.delete("sandbox", sb.id)
                self.sbs.pop(sb.id, None)
            crashpoint("rm.after-record")
            _rmtree(os.path.join(self.root, "sandboxes", sb.id))
            self._notify()
        return sb

    @on_kernel_thread
    def connect(self, net_ref: str, sb_ref: str, ip: str | None = None, ip6: str | None = None,
                aliases: list[str] | None = None) -> Endpoint | None:
        with self.lock:
            net, sb = self.network(net_ref), self.sandbox(sb_ref)
            if any(r.network_id == net.id for r in sb.requests):
                raise Conflict(f"sandbox {sb.name} is already connected to network {net.name}")
            if sb.netmode != "bridge" or net.driver in ("host", "null"):
                raise NsnetError("cannot connect: a sandbox on the host or none network has no network of its own")
            req = self._plan_request(sb, net, {"IP": ip, "IP6": ip6, "Aliases": aliases or []})
            ep = None
            if sb.state == "running":
                ep = self._join(sb, net, req)
            crashpoint("connect.after-join")  # an endpoint no request asks for: a restart undoes it
            sb.requests.append(req)
            with self.store.transaction():
                self._save_sandbox(sb)
            crashpoint("connect.after-record")
            self._notify()
            return ep

    @on_kernel_thread
    def disconnect(self, net_ref: str, sb_ref: str, force: bool = False) -> None:
        with self.lock:
            net, sb = self.network(net_ref), self.sandbox(sb_ref)
            if not any(r.network_id == net.id for r in sb.requests):
                raise NsnetError(f"sandbox {sb.name} is not connected to network {net.name}")
            gone = [ep for ep in self.endpoints_of_sandbox(sb) if ep.network_id == net.id]
            for ep in gone:
                # The sandbox lives on: links inside it (macvlan's) must go too.
                self._driver(net).leave(net, ep, self.kernel.sandbox(sb.pid) if sb.state == "running" else None)
            crashpoint("disconnect.after-leave")  # the records still say connected: a restart plumbs it again
            sb.requests = [r for r in sb.requests if r.network_id != net.id]
            with self.store.transaction():  # endpoint and request go together
                for ep in gone:
                    self._drop_endpoint(ep)
                self._save_sandbox(sb)
            crashpoint("disconnect.after-record")
            if sb.ports:
                self._apply_firewall()
            self._notify()

    # ---- reconcile -------------------------------------------------------------------------------

    @on_kernel_thread
    def reconcile(self) -> list[str]:
        """Make the kernel match the store after a restart or crash, in RECONCILE_STEPS' order; say what
        was done. As netavark's teardown, a step (or one record in it) that fails is reported and the
        rest goes on: one bad record must not keep the daemon from starting."""
        done: list[str] = []
        with self.lock:
            for step in RECONCILE_STEPS:  # each a method below, in this order
                first = len(done)
                with _reported(done, step):
                    getattr(self, step)(done)
                for line in done[first:]:
                    log.info("reconcile: %s", line)
                crashpoint("reconcile.after-" + step)
        self._notify()
        return done

    def forget_dead_sandboxes(self, done: list[str]) -> None:
        """Sandboxes whose process ended while no daemon watched: exited, their network freed."""
        for sb in list(self.sbs.values()):
            if sb.state == "running" and not procs.alive(sb.pid, sb.pid_start):
                with _reported(done, f"sandbox {sb.name}"):
                    self.sandbox_exited(sb.id, None)
                    done.append(f"sandbox {sb.name}: process {sb.pid} is gone; freed its network")

    def undo_unstarted_runs(self, done: list[str]) -> None:
        """A run cut off before its command was told to run: undone whole, as a failed run is."""
        for sb in [s for s in self.sbs.values() if s.state == "created"]:
            with _reported(done, f"sandbox {sb.name}"):
                procs.terminate(sb.pid, sb.pid_start, timeout=0)
                self._teardown(sb)
                with self.store.transaction():
                    self.store.delete("sandbox", sb.id)
                self.sbs.pop(sb.id, None)
                _rmtree(os.path.join(self.root, "sandboxes", sb.id))
                done.append(f"sandbox {sb.name}: its run never started; removed")

    def drop_orphan_endpoints(self, done: list[str]) -> None:
        """Endpoints no running sandbox asks for (a crash between the steps of a run, connect, exit)."""
        for ep in list(self.eps.values()):
            sb, net = self.sbs.get(ep.sandbox_id), self.nets.get(ep.network_id)
            running = sb is not None and sb.state == "running"
            if running and net is not None and any(r.network_id == net.id for r in sb.requests):
                continue
            with _reported(done, f"endpoint {ep.ifname} of sandbox {ep.sandbox_id[:12]}"):
                if net is not None:
                    self._driver(net).leave(net, ep, self.kernel.sandbox(sb.pid) if running else None)
                self._drop_endpoint(ep)
                done.append(f"endpoint {ep.ifname} of sandbox {ep.sandbox_id[:12]}: no running sandbox asks "
                            f"for it; removed")

    def rebuild_networks(self, done: list[str]) -> None:
        links = self.kernel.links()
        for net in self.nets.values():
            with _reported(done, f"network {net.name}"):
                missing = ", ".join(sorted(self._driver(net).kernel_names(net) - links.keys()))
                if missing:
                    self._driver(net).create_network(net)
                    done.append(f"network {net.name}: {missing} was missing; rebuilt")

    def mend_fabric(self, done: list[str]) -> None:
        """E.g. sandbox ports cut off from a bridge that was deleted meanwhile."""
        links = self.kernel.links()
        for net in self.nets.values():
            with _reported(done, f"network {net.name}"):
                done += [f"network {net.name}: {line}" for line in self._driver(net).mend(net, links)]

    def check_sandbox_side(self, done: list[str]) -> None:
        """Every endpoint of a running sandbox has its host link, and inside the sandbox its link up with its
        addresses (the first one with a gateway, the default route too); one that lacks any is plumbed again."""
        host_links = self.kernel.links()
        for sb in self.sbs.values():
            eps = self.endpoints_of_sandbox(sb)
            if sb.state != "running" or not eps:
                continue
            with _reported(done, f"sandbox {sb.name}"):
                ns = self.kernel.sandbox(sb.pid)
                inside = ns.view()
                router = next((e for e in eps if e.gateway4), None)
                for ep in eps:
                    line = self._plumb_again(sb, ep, ns, inside, host_links, default_route=ep is router)
                    if line:
                        done.append(f"sandbox {sb.name}: {line}")

    def _plumb_again(self, sb: Sandbox, ep: Endpoint, ns, inside: dict, host_links: dict, default_route: bool):
        """An endpoint with a link gone (either end) is built again, with its addresses; one whose link inside
        lacks an address, up or its default route is configured again. Says what was done, or None."""
        net = self.nets[ep.network_id]
        link = inside["links"].get(ep.ifname)
        if link is None or (ep.host_ifname and ep.host_ifname not in host_links):
            req = next((r for r in sb.requests if r.network_id == net.id), NetworkRequest(net.id))
            self._driver(net).leave(net, ep, ns)
            self._drop_endpoint(ep)
            self._join(sb, net, replace(req, ip=ep.ipv4.split("/")[0] if ep.ipv4 else None,
                                        ip6=ep.ipv6.split("/")[0] if ep.ipv6 else None), default_route)
            return f"{ep.ifname} on {net.name} was missing; rebuilt"
        index, up = link
        addrs = [a for a in (ep.ipv4, ep.ipv6) if a]
        lacks = [a for a in addrs if (index, a) not in inside["addrs"]] + ([] if up else ["up"])
        if default_route and ep.gateway4 not in inside["gateways"]:
            lacks.append(f"default route via {ep.gateway4}")
        if not lacks:
            return None
        ns.configure(index, addresses=addrs, gateway4=ep.gateway4 if default_route else None,
                     gateway6=ep.gateway6 if default_route else None, ipv6=net.ipv6)
        return f"{ep.ifname} on {net.name} lacked {', '.join(lacks)}; plumbed again"

    def rehold_ports(self, done: list[str]) -> None:
        for sb in self.sbs.values():
            if sb.state != "running" or not sb.ports or sb.id in self._port_sockets:
                continue
            held = []
            for p in sb.ports:
                with _reported(done, f"sandbox {sb.name}"):
                    held.append(ports.hold(p))
            self._port_sockets[sb.id] = held

    def remove_stray_links(self, done: list[str]) -> None:
        """Links with nsnet's mark (alias or veth prefix) that no record owns."""
        ours = {e.host_ifname for e in self.eps.values() if e.host_ifname}
        for n in self.nets.values():
            with _reported(done, f"network {n.name}"):
                ours |= self._driver(n).kernel_names(n)
        live = {owner_alias(n.id) for n in self.nets.values()}  # e.g. a bridge network's leaves and uplinks
        for name, info in self.kernel.links().items():
            alias = info["alias"] or ""
            mine = alias.startswith(OWNER_ALIAS) or (name.startswith(VETH_PREFIX) and info["kind"] == "veth")
            if mine and name not in ours and alias not in live:
                with _reported(done, f"link {name}"):
                    self.kernel.delete_link(name)
                    done.append(f"link {name}: carries nsnet's mark but has no record; removed")

    def remove_stray_files(self, done: list[str]) -> None:
        """Folders of sandboxes that have no record (a crash between a sandbox's removal and its folder's)."""
        top = os.path.join(self.root, "sandboxes")
        for sid in sorted(set(os.listdir(top) if os.path.isdir(top) else ()) - self.sbs.keys()):
            _rmtree(os.path.join(top, sid))
            done.append(f"sandboxes/{sid[:12]}: no sandbox has it; removed")

    def apply_firewall(self, done: list[str]) -> None:
        self._apply_firewall()

    @on_kernel_thread
    def close(self) -> None:
        self.kernel.close()
        self.store.close()


# reconcile's steps, in order: records first (what is dead, what never started, what nobody asks for),
# then the host's side (networks, bridges), the sandboxes' side, ports, leftovers, the firewall.
RECONCILE_STEPS = ("forget_dead_sandboxes", "undo_unstarted_runs", "drop_orphan_endpoints", "rebuild_networks",
                   "mend_fabric", "check_sandbox_side", "rehold_ports", "remove_stray_links", "remove_stray_files",
                   "apply_firewall")


@contextlib.contextmanager
def _reported(done: list[str], what: str):
    """A failure in the block becomes a line of reconcile's report; the caller goes on."""
    try:
        yield
    except Exception as e:
        log.debug("reconcile: %s failed", what, exc_info=True)
        done.append(f"{what}: failed: {e}")


def _rmtree(path: str) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)
