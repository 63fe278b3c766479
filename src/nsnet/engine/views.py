"""What the frontends read: lists and Docker's inspect documents, from the state (the caller holds the
engine's lock)."""
from __future__ import annotations

from dataclasses import dataclass

from ..drivers import driver_class
from ..errors import NsnetError
from ..model import Network, Sandbox, network_json, sandbox_json
from . import ingress
from .state import State


@dataclass
class Started:
    """A sandbox that runs: its record, its files' folder, and the nft ruleset its first process applies
    (127.0.0.11:53 redirected to its resolver), None when it needs none."""
    sandbox: Sandbox
    files: str
    nft: str | None


def networks(state: State, filters: dict | None) -> list[Network]:
    nets = sorted(state.nets.values(), key=lambda n: n.created)
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


def network_doc(state: State, driver, net: Network) -> dict:
    members = [(state.sbs[e.sandbox_id], e) for e in state.endpoints_of_network(net) if e.sandbox_id in state.sbs]
    doc = network_json(net, members)
    for key, value in driver.shown_options(net).items():
        doc["Options"].setdefault(key, value)
    notes = driver.notes(net)
    if notes:  # not Docker's: what a user of this network should know (e.g. macvlan's host limit)
        doc["Notes"] = notes
    return doc


def sandboxes(state: State, all_: bool) -> list[Sandbox]:
    sbs = sorted(state.sbs.values(), key=lambda s: s.created, reverse=True)
    return [s for s in sbs if all_ or s.state == "running"]


def sandbox_doc(state: State, sb: Sandbox) -> dict:
    members = [(state.nets[e.network_id], e) for e in state.endpoints_of_sandbox(sb) if e.network_id in state.nets]
    doc = sandbox_json(sb, members)
    if not members:
        doc["NetworkSettings"]["Networks"] = {
            state.nets[r.network_id].name: {"NetworkID": r.network_id, "IPAddress": "", "Aliases": r.aliases}
            for r in sb.requests if r.network_id in state.nets}
    return doc


def counts(state: State) -> dict:
    """As `ps -a` lists them: not the swarm's ingress sandbox."""
    sbs = [s for s in state.sbs.values() if not ingress.hidden(s)]
    return {"Networks": len(state.nets), "Sandboxes": len(sbs), "Running": sum(1 for s in sbs if s.state == "running")}
