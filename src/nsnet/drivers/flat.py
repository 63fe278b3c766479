"""The flat bridge: an existing Linux bridge that the host's NIC is enslaved to (as on a VM host),
adopted by a bridge network named after it. Its subnet and router are the LAN's; nsnet attaches
sandboxes' veths to it and nothing else: no address of ours on it, no NAT, no isolation rules (the
sandboxes are machines of the LAN), and it stays when the network is removed.
"""
from __future__ import annotations

from ..errors import Conflict, NsnetError
from ..model import OWNER_ALIAS, Network

# bridge.py's keys, repeated: bridge.py imports this module.
NAME_KEY = "com.docker.network.bridge.name"
MASQ_KEY = "com.docker.network.bridge.enable_ip_masquerade"


def adopt(net: Network, link: dict) -> None:
    """`net.bridge` names an existing interface: adopt it when it is a bridge nsnet did not make."""
    if link.get("kind") != "bridge":
        raise Conflict(f"an interface named {net.bridge} already exists on this host and is not a bridge: "
                       f"pick another {NAME_KEY}")
    if (link.get("alias") or "").startswith(OWNER_ALIAS):
        raise Conflict(f"bridge {net.bridge} belongs to another nsnet network (its alias says so): "
                       f"pick another {NAME_KEY}")
    net.adopted = True


def plan(net: Network) -> None:
    if not net.subnets:
        raise NsnetError(f"bridge {net.bridge} exists and is used as it is (a flat bridge on the LAN): give the "
                         f"LAN's subnet with --subnet, its router with --gateway, and what sandboxes may take "
                         f"with --ip-range")
    if net.internal:
        raise NsnetError(f"--internal cannot apply to the existing bridge {net.bridge}: it is the LAN itself")
    if net.flag(MASQ_KEY, False):
        raise NsnetError(f"{MASQ_KEY}=true cannot apply to the existing bridge {net.bridge}: its sandboxes are "
                         f"on the LAN with their own addresses")


def address_taken(kernel, net: Network, addr) -> str | None:
    if addr.version != 4:
        return None
    return kernel.taken_on_lan(net.bridge, str(addr))


def notes(net: Network) -> list[str]:
    return [f"nsnet uses the existing bridge {net.bridge} as it is: it gives it no address, does not masquerade "
            f"or isolate its traffic, and leaves it in place when the network is removed."]
