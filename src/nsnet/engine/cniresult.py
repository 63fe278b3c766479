"""CNI results as the spec shapes them per version (pure): an attachment's interfaces, IPs, routes and DNS,
appended to a `prevResult` when nsnet runs later in a chain."""
from __future__ import annotations

import ipaddress


def shaped(version: str, result: dict) -> dict:
    """`result` (1.x shape) in `version`'s shape: 0.4.0's IPs carry "version"; 1.x's do not."""
    out = {k: v for k, v in result.items() if k != "cniVersion"}
    ips = []
    for ip in result.get("ips") or []:
        ip = {k: v for k, v in ip.items() if k != "version"}
        if version.startswith("0."):
            ip = {"version": str(ipaddress.ip_interface(ip["address"]).version), **ip}
        ips.append(ip)
    if "ips" in result:
        out["ips"] = ips
    return {"cniVersion": version, **out}


def attachment(*, bridge: str | None, host_ifname: str | None, ifname: str, mac: str | None, netns: str,
               addresses: list[tuple[str, str | None]], mtu: int | None, dns: list[str]) -> dict:
    """The result of one attachment (1.x shape): the bridge and the host end (sandbox ""), the interface
    inside, its addresses ((cidr, gateway)), a default route per family through the gateway."""
    interfaces = []
    if bridge:
        interfaces.append({"name": bridge})
    if host_ifname:
        interfaces.append({"name": host_ifname})
    inside = {"name": ifname, "sandbox": netns}
    if mac:
        inside["mac"] = mac
    if mtu:
        inside["mtu"] = mtu
    interfaces.append(inside)
    index = len(interfaces) - 1
    ips, routes = [], []
    for cidr, gateway in addresses:
        ip = {"address": cidr, "interface": index}
        if gateway:
            ip["gateway"] = gateway
            routes.append({"dst": "0.0.0.0/0" if ipaddress.ip_interface(cidr).version == 4 else "::/0",
                           "gw": gateway})
        ips.append(ip)
    out = {"interfaces": interfaces, "ips": ips, "routes": routes}
    if dns:
        out["dns"] = {"nameservers": dns}
    return out


def chained(prev: dict | None, mine: dict) -> dict:
    """`mine` after the interfaces, IPs and routes of `prev` (a prevResult of an earlier plugin), its IPs'
    interface indexes moved on by the interfaces before them; prev's DNS stays unless it has none."""
    if not prev:
        return mine
    before = list(prev.get("interfaces") or [])
    out = {k: v for k, v in prev.items() if k not in ("cniVersion",)}
    out["interfaces"] = before + mine["interfaces"]
    out["ips"] = list(prev.get("ips") or []) + [dict(ip, interface=ip["interface"] + len(before))
                                                  for ip in mine["ips"]]
    out["routes"] = list(prev.get("routes") or []) + mine["routes"]
    if mine.get("dns") and not (prev.get("dns") or {}).get("nameservers"):
        out["dns"] = mine["dns"]
    return out
