"""The firewall's input, from the state: each network's part (its driver's `firewall`) and the running
sandboxes' published ports (their targets from the driver of the first endpoint that can take them), and
those of Docker's containers (`extra_ports`: engine/dockernet.py)."""
from __future__ import annotations

from ..firewall import Ruleset
from .state import State


def ruleset(state: State, driver_of, extra_ports=()) -> Ruleset:
    rs = Ruleset(ports=list(extra_ports))
    for net in sorted(state.nets.values(), key=lambda n: n.created):
        fw = driver_of(net).firewall(net)
        if fw is not None:
            rs.networks.append(fw)
    for sb in state.sbs.values():
        if sb.state != "running" or not sb.ports:
            continue
        for ep in state.endpoints_of_sandbox(sb):
            net = state.nets.get(ep.network_id)
            ports = driver_of(net).published(net, ep, sb.ports) if net is not None else None
            if ports is not None:
                rs.ports += ports
                break
    return rs
