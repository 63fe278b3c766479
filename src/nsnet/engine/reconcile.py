"""Reconcile: make the kernel match the records after a restart or crash, as named steps in order
(RECONCILE_STEPS). As netavark's teardown, a step (or one record in it) that fails is one line of the
report and the rest goes on: one bad record must not keep the daemon from starting."""
from __future__ import annotations

import contextlib
import logging
from dataclasses import replace

from ..crashpoints import crashpoint
from ..kernel import ports, procs
from ..model import OWNER_ALIAS, Endpoint, NetworkRequest, Sandbox, owner_alias
from . import cni, endpoints

log = logging.getLogger("nsnet.engine")

# In order: records first (what is dead, what never started, what nobody asks for), then the host's side
# (networks, bridges), the sandboxes' side, ports, leftovers, the firewall.
RECONCILE_STEPS = ("forget_dead_sandboxes", "undo_unstarted_runs", "drop_orphan_endpoints", "rebuild_networks",
                   "mend_fabric", "check_sandbox_side", "rehold_ports", "remove_stray_links", "remove_stray_files",
                   "apply_firewall")


def run(engine) -> list[str]:
    """Every step in order (the caller holds the engine's lock, on the kernel thread); what was done."""
    done: list[str] = []
    for step in RECONCILE_STEPS:
        first = len(done)
        with reported(done, step):
            globals()[step](engine, done)
        for line in done[first:]:
            log.info("reconcile: %s", line)
        crashpoint("reconcile.after-" + step)
    return done


@contextlib.contextmanager
def reported(done: list[str], what: str):
    """A failure in the block becomes a line of reconcile's report; the caller goes on."""
    try:
        yield
    except Exception as e:
        log.debug("reconcile: %s failed", what, exc_info=True)
        done.append(f"{what}: failed: {e}")


def forget_dead_sandboxes(e, done: list[str]) -> None:
    """Sandboxes whose process ended while no daemon watched: exited, their network freed."""
    for sb in list(e.state.sbs.values()):
        # A CNI attachment lives as long as the runtime's namespace (a reboot ends it), not a process.
        if sb.state == "running" and not (cni.attached(sb) if sb.cni else procs.alive(sb.pid, sb.pid_start)):
            with reported(done, f"sandbox {sb.name}"):
                e.sandbox_exited(sb.id, None)
                gone = f"network namespace {sb.cni['netns']}" if sb.cni else f"process {sb.pid}"
                done.append(f"sandbox {sb.name}: {gone} is gone; freed its network")


def undo_unstarted_runs(e, done: list[str]) -> None:
    """A run cut off before its command was told to run: undone whole, as a failed run is."""
    for sb in [s for s in e.state.sbs.values() if s.state == "created"]:
        with reported(done, f"sandbox {sb.name}"):
            procs.terminate(sb.pid, sb.pid_start, timeout=0)
            endpoints.teardown(e, sb)
            with e.state.transaction():
                e.state.drop_sandbox(sb)
            e.files.remove(sb.id)
            done.append(f"sandbox {sb.name}: its run never started; removed")


def drop_orphan_endpoints(e, done: list[str]) -> None:
    """Endpoints no running sandbox asks for (a crash between the steps of a run, connect, exit)."""
    for ep in list(e.state.eps.values()):
        sb, net = e.state.sbs.get(ep.sandbox_id), e.state.nets.get(ep.network_id)
        running = sb is not None and sb.state == "running"
        if running and net is not None and e.state.requested(sb, net):
            continue
        with reported(done, f"endpoint {ep.ifname} of sandbox {ep.sandbox_id[:12]}"):
            if net is not None:
                e.driver(net).leave(net, ep, e.kernel.sandbox(sb.pid) if running else None)
            e.state.drop_endpoint(ep)
            done.append(f"endpoint {ep.ifname} of sandbox {ep.sandbox_id[:12]}: no running sandbox asks "
                        f"for it; removed")


def rebuild_networks(e, done: list[str]) -> None:
    links = e.kernel.links()
    for net in e.state.nets.values():
        with reported(done, f"network {net.name}"):
            missing = ", ".join(sorted(e.driver(net).kernel_names(net) - links.keys()))
            if missing:
                e.driver(net).create_network(net)
                done.append(f"network {net.name}: {missing} was missing; rebuilt")


def mend_fabric(e, done: list[str]) -> None:
    """E.g. sandbox ports cut off from a bridge that was deleted meanwhile."""
    links = e.kernel.links()
    for net in e.state.nets.values():
        with reported(done, f"network {net.name}"):
            done += [f"network {net.name}: {line}" for line in e.driver(net).mend(net, links)]


def check_sandbox_side(e, done: list[str]) -> None:
    """Every endpoint of a running sandbox has its host link, and inside the sandbox its link up with its
    addresses (the first one with a gateway, the default route too); one that lacks any is plumbed again."""
    host_links = e.kernel.links()
    for sb in e.state.sbs.values():
        eps = e.state.endpoints_of_sandbox(sb)
        if sb.state != "running" or not eps or sb.cni:  # a CNI runtime checks its own (CHECK)
            continue
        with reported(done, f"sandbox {sb.name}"):
            ns = e.kernel.sandbox(sb.pid)
            inside = ns.view()
            router = next((ep for ep in eps if ep.gateway4), None)
            for ep in eps:
                line = _plumb_again(e, sb, ep, ns, inside, host_links, default_route=ep is router)
                if line:
                    done.append(f"sandbox {sb.name}: {line}")


def _plumb_again(e, sb: Sandbox, ep: Endpoint, ns, inside: dict, host_links: dict, default_route: bool):
    """An endpoint with a link gone (either end) is built again, with its addresses; one whose link inside
    lacks an address, up or its default route is configured again. Says what was done, or None."""
    net = e.state.nets[ep.network_id]
    link = inside["links"].get(ep.ifname)
    if link is None or (ep.host_ifname and ep.host_ifname not in host_links):
        req = next((r for r in sb.requests if r.network_id == net.id), NetworkRequest(net.id))
        e.driver(net).leave(net, ep, ns)
        e.state.drop_endpoint(ep)
        endpoints.join(e, sb, net, replace(req, ip=ep.ipv4.split("/")[0] if ep.ipv4 else None,
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


def rehold_ports(e, done: list[str]) -> None:
    for sb in e.state.sbs.values():
        if sb.state != "running" or not sb.ports or sb.id in e.port_sockets:
            continue
        held = []
        for p in sb.ports:
            with reported(done, f"sandbox {sb.name}"):
                held.append(ports.hold(p, shared=bool(sb.cni)))
        e.port_sockets[sb.id] = held


def remove_stray_links(e, done: list[str]) -> None:
    """Links with nsnet's mark (alias, or a driver's link prefix on a veth) that no record owns, and what a
    driver keeps elsewhere for networks that are gone (Driver.remove_strays)."""
    ours = {ep.host_ifname for ep in e.state.eps.values() if ep.host_ifname}
    for n in e.state.nets.values():
        with reported(done, f"network {n.name}"):
            ours |= e.driver(n).kernel_names(n)
    live = {owner_alias(n.id) for n in e.state.nets.values()}  # e.g. a bridge network's leaves and uplinks
    prefixes = tuple(d.link_prefix for d in e.drivers.values() if d.link_prefix)
    # A swarm network's records are in etcd: until they are read, its links here are nobody's to judge.
    unread = () if e.swarm is not None and e.swarm.loaded.is_set() else \
        tuple(d.link_prefix for d in e.drivers.values() if d.scope == "cluster" and d.link_prefix)
    if not unread:
        for d in e.drivers.values():
            with reported(done, f"driver {d.name}"):
                done += d.remove_strays(list(e.state.nets.values()))
    for name, info in e.kernel.links().items():
        if unread and name.startswith(unread):
            continue
        alias = info["alias"] or ""
        mine = alias.startswith(OWNER_ALIAS) or (name.startswith(prefixes) and info["kind"] == "veth")
        if mine and name not in ours and alias not in live:
            with reported(done, f"link {name}"):
                e.kernel.delete_link(name)
                done.append(f"link {name}: carries nsnet's mark but has no record; removed")


def remove_stray_files(e, done: list[str]) -> None:
    """Folders of sandboxes that have no record (a crash between a sandbox's removal and its folder's)."""
    for sid in sorted(e.files.ids() - e.state.sbs.keys()):
        e.files.remove(sid)
        done.append(f"sandboxes/{sid[:12]}: no sandbox has it; removed")


def apply_firewall(e, done: list[str]) -> None:
    e._apply_firewall()
