"""An overlay network's own network namespace on this host: the network's bridge, its VXLAN link and the
bridge's ends of its sandboxes' veths live there, not in the host's namespace.

Why a namespace of its own (as Docker's overlay has): under br_netfilter (Docker and kube-proxy load it,
and once loaded it is on in every namespace) each frame a bridge forwards passes the IP hooks. On an overlay
in the host's namespace that cost cross-host TCP 12 % (design notes, "Overlay"). Here bridge-nf-call-* is off,
and so is IPv6: nothing in this namespace has an address, it is layer 2 only, whatever the host has.

A process of its own holds the namespace (`sleep infinity`, entered by nsenter, in a session of its own), so
the namespace and the sandboxes' traffic outlive a daemon; the record (a JSON file: pid, start time, the
namespace's inode) finds it again. The VXLAN link is made from the host's netlink socket straight into it
(Kernel.ensure_vxlan), so its UDP socket stays in the host's namespace, on the underlay.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import threading

import socket

from . import arp, links, netns, procs, sysctl, vxlan
from .host import SandboxNs, verb

# Written once inside, where they exist (br_netfilter's only when the kernel has it).
QUIET = {"net/bridge/bridge-nf-call-iptables": "0", "net/bridge/bridge-nf-call-ip6tables": "0",
         "net/bridge/bridge-nf-call-arptables": "0", "net/ipv6/conf/all/disable_ipv6": "1",
         "net/ipv6/conf/default/disable_ipv6": "1"}


def _new_netns() -> int:
    """An fd of a new, empty network namespace, made by a short-lived thread (unshare moves only the
    calling thread, and that thread is gone afterwards)."""
    made: dict = {}

    def make():
        try:
            netns.unshare(netns.CLONE_NEWNET)
            made["fd"] = netns.own_netns()
        except OSError as e:
            made["error"] = e
    t = threading.Thread(target=make, name="overlay-netns")
    t.start()
    t.join()
    if "error" in made:
        raise made["error"]
    return made["fd"]


def _quiet(fd: int) -> None:
    with netns.inside(fd):
        for key, value in QUIET.items():
            try:
                sysctl.write(key, value)
            except FileNotFoundError:   # no br_netfilter, or no IPv6, in this kernel: nothing to turn off
                pass


def _read(record: str) -> dict | None:
    try:
        with open(record) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


class OverlayNs(SandboxNs):
    """An open handle on an overlay network's namespace, with the verbs its driver uses in there."""

    def __init__(self, record: str, pid: int, started: int | None, path: str, holder=None):
        super().__init__(pid, path)
        self.record, self.started = record, started
        self._holder = holder   # our child (a Popen) when this daemon made it: reaped when removed
        self._packets: socket.socket | None = None   # for announcements, opened at first use

    @classmethod
    def make(cls, record: str) -> "OverlayNs":
        fd = _new_netns()
        try:
            _quiet(fd)
            holder = subprocess.Popen(["nsenter", f"--net=/proc/self/fd/{fd}", "--", "sleep", "infinity"],
                                      pass_fds=(fd,), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                      stderr=subprocess.DEVNULL, start_new_session=True)
            ns = cls(record, holder.pid, procs.start_time(holder.pid), f"/proc/self/fd/{fd}", holder)
        finally:
            os.close(fd)
        try:
            os.makedirs(os.path.dirname(record), exist_ok=True)
            with open(record + ".tmp", "w") as f:
                json.dump({"pid": ns.pid, "started": ns.started, "inode": os.fstat(ns.fd).st_ino}, f)
            os.replace(record + ".tmp", record)
        except BaseException:
            ns.remove()
            raise
        return ns

    @classmethod
    def adopt(cls, record: str) -> "OverlayNs | None":
        """The namespace of `record` when its holder still lives (after a restart), else None."""
        rec = _read(record)
        if not rec or not procs.alive(rec.get("pid"), rec.get("started")):
            return None
        try:
            ns = cls(record, rec["pid"], rec["started"], f"/proc/{rec['pid']}/ns/net")
        except OSError:
            return None
        if os.fstat(ns.fd).st_ino != rec.get("inode"):   # the holder had not entered it yet when we died
            ns.close()
            return None
        _quiet(ns.fd)   # e.g. br_netfilter loaded since: its switches start on in every namespace
        return ns

    @staticmethod
    def discard(record: str) -> None:
        """Kill the holder of `record` (if it is still ours) and remove the record."""
        rec = _read(record) or {}
        if procs.alive(rec.get("pid"), rec.get("started")):
            os.kill(rec["pid"], signal.SIGKILL)
        try:
            os.unlink(record)
        except FileNotFoundError:
            pass

    def remove(self) -> None:
        """The namespace goes with everything left in it (delete what must go at once first: the kernel
        dismantles a dead namespace's links later, on its own)."""
        if procs.alive(self.pid, self.started):
            os.kill(self.pid, signal.SIGKILL)
        if self._holder is not None:
            self._holder.wait()
        try:
            os.unlink(self.record)
        except FileNotFoundError:
            pass
        self.close()

    def close(self) -> None:
        if self._packets is not None:
            self._packets.close()
        super().close()

    # ---- verbs --------------------------------------------------------------------------------------

    @verb
    def announce(self, bridge: str, mac: str, ip: str) -> None:
        """Tell the sandboxes on `bridge` that `ip` is at `mac` (a peer just programmed): one that already asked
        for it, and would otherwise ask again only after the kernel's 1 s retransmit, has its answer now."""
        if self._packets is None:
            self._packets = netns.socket_in(self.fd, socket.AF_PACKET, socket.SOCK_RAW)
        self._packets.sendto(arp.announce_frame(mac, ip), (bridge, arp.ETH_P_ARP))

    @verb
    def links(self) -> dict[str, dict]:
        return links.link_names(self.ipr)

    @verb
    def ensure_bridge(self, name: str, *, mtu: int | None, alias: str) -> tuple[int, bool]:
        return links.ensure_bridge(self.ipr, self.rtnl, name, mtu=mtu, addresses=[], alias=alias)

    @verb
    def new_veth(self, name: str, sandbox: SandboxNs, peer_name: str, *, mac: str | None,
                 mtu: int | None) -> tuple[int, int]:
        """A veth from here into `sandbox` (no IPv6 here: none in this namespace)."""
        return links.new_veth(self.rtnl, name, sandbox.fd, peer_name, mac=mac, mtu=mtu)

    @verb
    def plug_in(self, index: int, bridge_index: int) -> None:
        links.plug_in(self.rtnl, index, bridge_index, isolated=False)

    @verb
    def set_peer(self, index: int, *, mac: str, ip: str, vtep: str) -> None:
        vxlan.set_peer(self.ipr, index, mac=mac, ip=ip, vtep=vtep)

    @verb
    def remove_peer(self, index: int, *, mac: str, ip: str, vtep: str) -> None:
        vxlan.remove_peer(self.ipr, index, mac=mac, ip=ip, vtep=vtep)

    @verb
    def peers(self, index: int) -> set[tuple[str, str, str]]:
        return vxlan.peers(self.ipr, index)
