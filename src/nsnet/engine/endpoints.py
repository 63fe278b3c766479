"""A sandbox's endpoints: joining a network (addresses, the driver's kernel objects, the record; undone
whole on failure) and the teardown of them all when the sandbox ends. `e` is the engine (its state,
allocator, kernel, drivers, resolver feed)."""
from __future__ import annotations

import ipaddress
import logging

from ..crashpoints import crashpoint
from ..errors import Conflict
from ..model import Endpoint, Network, NetworkRequest, Sandbox, dns_names
from .addresses import address, endpoint_addresses
from .plans import new_id

log = logging.getLogger("nsnet.engine")


def join(e, sb: Sandbox, net: Network, req: NetworkRequest, default_route: bool | None = None, *,
         ifname: str | None = None, ns=None, mac: str | None = None) -> Endpoint | None:
    """Give `sb` an endpoint on `net`. The default route goes through it when asked, or else when no other
    endpoint has a gateway. A CNI attachment names its interface, namespace (a SandboxNs) and MAC."""
    driver = e.driver(net)
    if not driver.builds_endpoints:
        return None
    mine = e.state.endpoints_of_sandbox(sb)
    taken_names = {ep.ifname for ep in mine}
    ifname = ifname or next(f"eth{i}" for i in range(len(taken_names) + 1) if f"eth{i}" not in taken_names)
    ep = Endpoint(id=new_id(), network_id=net.id, sandbox_id=sb.id, ifname=ifname, host_ifname=None, mac=None,
                  ipv4=None, ipv6=None, gateway4=None, gateway6=None, aliases=list(req.aliases), node=e.state.node)
    if e.state.shared(net):   # other nodes' resolvers answer these names from the record
        ep.names = dns_names(net, sb, ep)
    if default_route is None:
        default_route = not any(other.gateway4 for other in mine)
    sandbox = None
    try:
        _address_and_record(e, driver, net, ep, req, mac)
        crashpoint("join.after-record")
        sandbox = ns or e.kernel.sandbox(sb.pid)
        driver.join(net, ep, sandbox, default_route)
    except BaseException:
        if ep.id in e.state.eps:
            driver.leave(net, ep, sandbox)
            e.state.drop_endpoint(ep)   # gives its addresses back
        else:
            e.alloc.release(net, endpoint_addresses(ep))
        raise
    return ep


RACES = 5   # a swarm network: attempts when another node took the same address in the same moment


def _address_and_record(e, driver, net: Network, ep: Endpoint, req: NetworkRequest, mac: str | None) -> None:
    """Give `ep` its addresses and save it. On a swarm network another node may take the same free address
    at the same moment: etcd's compare refuses one of the two, which takes the next free one."""
    for attempt in range(RACES):
        address(e.alloc, net, ep, req, lambda addr: driver.address_taken(net, addr))
        ep.mac = mac or ep.mac   # a runtime's own (CNI's "mac")
        driver.plan_endpoint(net, ep)
        try:
            with e.state.transaction():
                e.state.save_endpoint(ep)
            return
        except BaseException as err:
            lost = endpoint_addresses(ep)
            if ep.id in e.state.eps:
                e.state.forget_endpoint(ep)   # the commit failed: written nowhere; gives its addresses back
            else:
                e.alloc.release(net, lost)
            ep.ipv4 = ep.ipv6 = ep.gateway4 = ep.gateway6 = ep.mac = None
            if not isinstance(err, Conflict) or not e.state.shared(net) or req.ip or req.ip6 or attempt == RACES - 1:
                raise
            # This host's view of the other nodes lags (their records arrive by the watch): take every
            # address claimed right now as used, so the next try picks one that was free a moment ago.
            e.alloc.mark_taken(net, map(ipaddress.ip_address, e.store.addresses(net.id, shared=True)))
            log.info("network %s: %s was taken by another node at the same moment; taking the next",
                     net.name, ", ".join(map(str, lost)))


def teardown(e, sb: Sandbox) -> None:
    """Remove every endpoint of `sb` (kernel objects and records) and let go of its namespace."""
    for ep in e.state.endpoints_of_sandbox(sb):
        net = e.state.nets.get(ep.network_id)
        if net is not None:
            try:
                e.driver(net).leave(net, ep)
            except Exception:
                log.exception("leaving %s failed; reconcile will retry", net.name)
        e.state.drop_endpoint(ep)
    for s in e.port_sockets.pop(sb.id, []):
        s.close()
    e.feed.detach(sb)
    if sb.pid:
        e.kernel.forget(sb.pid)
