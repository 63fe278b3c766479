"""Two floors for one attach, measured here in the same run:

- pyroute2: one Python process doing only the netlink work (veth with its peer made inside the
  container's namespace, enslaved, address and default route inside), no state, no firewall, no DNS;
- kernel: `ip -batch` making veths (peer in the container's namespace) and enslaving them, for many
  containers in one process (the kernel's own cost).
"""
from __future__ import annotations

import os
import time

from common import Harness, made_in_netns, ms_since, netns_path, sh


def _iproute_in(path: str):
    """An IPRoute whose socket lives in the namespace at `path`."""
    from pyroute2 import IPRoute

    return made_in_netns(path, IPRoute)


def pyroute2_floor(h: Harness, n: int) -> tuple[list[float], list[float]]:
    """Per-container attach and detach times (ms) of the pyroute2 floor."""
    host = h.netns("floor-h")
    conts = h.netns_many([f"floor-c{i}" for i in range(n)])
    ipr = _iproute_in(netns_path(host))
    try:
        seen = {link.get("ifname") for link in ipr.get_links()}
        if seen != {"lo"}:  # a fresh namespace has only lo: anything else means the wrong one
            raise RuntimeError(f"floor: the host socket sees {sorted(seen)}, not a fresh namespace")
        ipr.link("add", ifname="flbr0", kind="bridge")
        br = ipr.link_lookup(ifname="flbr0")[0]
        ipr.addr("add", index=br, address="10.90.0.1", prefixlen=16)
        ipr.link("set", index=br, state="up")
        attach, detach = [], []
        for i, ns in enumerate(conts):
            t0 = time.perf_counter()
            fd = os.open(netns_path(ns), os.O_RDONLY)
            ipr.link("add", ifname=f"vf{i}h", kind="veth", peer={"ifname": "eth0", "net_ns_fd": fd},
                     master=br, state="up")
            os.close(fd)
            c = _iproute_in(netns_path(ns))
            ci = c.link_lookup(ifname="eth0")[0]
            c.addr("add", index=ci, address=f"10.90.{(i + 2) // 250}.{(i + 2) % 250 + 1}", prefixlen=16)
            c.link("set", index=ci, state="up")
            c.route("add", dst="0.0.0.0/0", gateway="10.90.0.1")
            c.close()
            attach.append(ms_since(t0))
        for i in range(n):
            t0 = time.perf_counter()
            ipr.link("del", index=ipr.link_lookup(ifname=f"vf{i}h")[0])
            detach.append(ms_since(t0))
        return attach, detach
    finally:
        ipr.close()


def kernel_floor(h: Harness, n: int) -> float:
    """ms per container when one `ip -batch` process builds n attachments: a veth whose peer goes into the
    container's namespace, enslaved to a bridge and up (the anchors' kernel-only floor)."""
    host = h.netns("kfloor-h")
    conts = h.netns_many([f"kfloor-c{i}" for i in range(n)])
    sh(["ip", "link", "add", "kbr0", "type", "bridge"], host)
    sh(["ip", "link", "set", "kbr0", "up"], host)
    lines = []
    for i, ns in enumerate(conts):
        lines += [f"link add vk{i}h type veth peer name eth0 netns {ns}", f"link set vk{i}h master kbr0 up"]
    t0 = time.perf_counter()
    sh(["ip", "-batch", "-"], host, input="\n".join(lines) + "\n")
    return ms_since(t0) / n
