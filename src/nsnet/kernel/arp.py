"""Is an IPv4 address already taken on a LAN? Ask it with an ARP probe, as arping -D does.

The probe (RFC 5227: sender address 0.0.0.0) is sent on the host's interface with a packet socket,
which belongs to the calling thread's network namespace: call it on the kernel thread. The sender
address 0.0.0.0 keeps the question from teaching anyone's ARP cache a wrong answer. A host never
answers its own probe, so the host's own addresses are checked apart (own_address).
"""
from __future__ import annotations

import ipaddress
import select
import socket
import struct
import time

ETH_P_ARP = 0x0806
ARPOP_REQUEST, ARPOP_REPLY = 1, 2
BROADCAST = b"\xff" * 6
TIMEOUT = 0.2


def probe_frame(src_mac: bytes, target: str) -> bytes:
    """Ethernet frame: who has `target`? tell 0.0.0.0 (at src_mac)."""
    eth = BROADCAST + src_mac + struct.pack("!H", ETH_P_ARP)
    arp = struct.pack("!HHBBH6s4s6s4s", 1, 0x0800, 6, 4, ARPOP_REQUEST, src_mac, b"\0" * 4, b"\0" * 6,
                      ipaddress.IPv4Address(target).packed)
    return eth + arp


def announce_frame(mac: str, ip: str) -> bytes:
    """Ethernet broadcast: `ip` is at `mac` (an unsolicited ARP reply). A neighbour entry already waiting
    for `ip` takes it at once; none is made where there was none (arp_accept off)."""
    sha, spa = bytes.fromhex(mac.replace(":", "")), ipaddress.IPv4Address(ip).packed
    eth = BROADCAST + sha + struct.pack("!H", ETH_P_ARP)
    return eth + struct.pack("!HHBBH6s4s6s4s", 1, 0x0800, 6, 4, ARPOP_REPLY, sha, spa, BROADCAST, spa)


def reply_from(frame: bytes, target: str) -> str | None:
    """The MAC in `frame` if it is an ARP reply saying it owns `target`."""
    if len(frame) < 42 or frame[12:14] != b"\x08\x06":
        return None
    op, sha, spa = struct.unpack("!6xH6s4s", frame[14:32])
    if op != ARPOP_REPLY or spa != ipaddress.IPv4Address(target).packed:
        return None
    return ":".join(f"{b:02x}" for b in sha)


def who_has(ifname: str, target: str, timeout: float = TIMEOUT) -> str | None:
    """The MAC of the machine on `ifname`'s LAN answering for `target`, or None (nobody in `timeout`,
    or the interface cannot send: down, no carrier — then there is nobody to clash with either)."""
    try:
        s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ARP))
    except OSError:
        return None
    with s:
        try:
            s.bind((ifname, ETH_P_ARP))
            src_mac = s.getsockname()[4]
            s.send(probe_frame(src_mac, target))
        except OSError:
            return None
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            if not select.select([s], [], [], left)[0]:
                break
            mac = reply_from(s.recv(128), target)
            if mac:
                return mac
    return None


def own_address(ipr, target: str) -> str | None:
    """The host's own interface holding `target` (a probe would not hear the host itself)."""
    for msg in ipr.get_addr(family=socket.AF_INET):
        if msg.get("local") == target or msg.get("address") == target:
            return msg.get("label") or f"interface {msg['index']}"
    return None


def taken_on_lan(ipr, ifname: str, target: str) -> str | None:
    """Why `target` is not free on the LAN behind `ifname`, or None."""
    own = own_address(ipr, target)
    if own:
        return f"{target} is this host's own address (on {own})"
    mac = who_has(ifname, target)
    if mac:
        return f"{target} already answers ARP on the LAN of {ifname} (from {mac})"
    return None
