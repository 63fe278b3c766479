"""Addresses inside one subnet, handed out as Docker does: the lowest free host address of the
ip-range (or the subnet), never the network/broadcast address, the gateway or an aux address.

AddressPool keeps a bitmap (one byte per address of the range, grown on demand) next to the
caller's `used` set, so an allocation is a memchr over the bitmap from a "lowest maybe free"
hint instead of a walk over `used`. The caller's set stays the authority: every answer is
checked against it, so a stale bitmap can cost a lowest-free slot, never a duplicate address.
"""

from __future__ import annotations

import ipaddress

from nsnet.errors import Conflict, NsnetError
from nsnet.ipam.pools import parse_network

Address = ipaddress.IPv4Address | ipaddress.IPv6Address

_BITMAP_CAP = 1 << 24  # offsets beyond this (huge IPv6 ranges) live in a set instead


def default_gateway(subnet) -> Address:
    """Docker's default gateway: the first host address of the subnet."""
    subnet = parse_network(subnet)
    if subnet.num_addresses <= 2:  # /31, /32 (and /127, /128): no network address to skip
        return subnet.network_address
    return subnet.network_address + 1


def mac_for(ipv4) -> str:
    """Docker's MAC for an IPv4 address: 02:42 followed by the four address bytes."""
    packed = ipaddress.IPv4Address(ipv4).packed
    return "02:42:" + ":".join(f"{b:02x}" for b in packed)


def _ip(value) -> Address:
    if isinstance(value, (ipaddress.IPv4Address, ipaddress.IPv6Address)):
        return value
    try:
        return ipaddress.ip_address(str(value).strip())
    except ValueError:
        raise NsnetError(f"invalid IP address {value!r}: expected e.g. 172.30.0.5") from None


class AddressPool:
    """The address plan of one subnet: subnet, gateway, optional ip-range and aux addresses."""

    def __init__(self, subnet, gateway=None, ip_range=None, aux=None):
        self.subnet = parse_network(subnet, "subnet")
        self.gateway = _ip(gateway) if gateway is not None else default_gateway(self.subnet)
        self.ip_range = parse_network(ip_range, "ip-range") if ip_range is not None else None
        self.aux = {name: _ip(ip) for name, ip in (aux or {}).items()}
        self.validate()
        rng = self.ip_range or self.subnet
        self._lo = int(rng.network_address)
        self._size = rng.num_addresses
        self._cls = type(self.subnet.network_address)
        self._sub_lo, self._sub_hi = int(self.subnet.network_address), int(self.subnet.broadcast_address)
        # Addresses no container may get: network/broadcast, gateway, aux.
        excluded = {int(self.gateway)} | {int(ip) for ip in self.aux.values()}
        if self.subnet.num_addresses > 2:
            excluded.add(int(self.subnet.network_address))  # IPv6: subnet-router anycast
            if self.subnet.version == 4:
                excluded.add(int(self.subnet.broadcast_address))
        self._excluded = frozenset(excluded)
        self._src = None  # the caller's `used` set the bitmap was last built from
        self._reset(())

    # -- configuration ---------------------------------------------------------------------

    def validate(self) -> None:
        """Gateway, ip-range and aux addresses must sit inside the subnet, like Docker's checks."""
        s = self.subnet
        if self.gateway.version != s.version or self.gateway not in s:
            raise NsnetError(f"gateway {self.gateway} is outside subnet {s}; pick a gateway inside it or leave --gateway out")
        if s.num_addresses > 2 and self.gateway in (s.network_address, s.broadcast_address):
            which = "network" if self.gateway == s.network_address else "broadcast"
            raise NsnetError(f"gateway {self.gateway} is the {which} address of {s}; pick a host address such as {default_gateway(s)}")
        if self.ip_range is not None and (self.ip_range.version != s.version or not self.ip_range.subnet_of(s)):
            raise NsnetError(f"ip-range {self.ip_range} is not inside subnet {s}; pick a range inside the subnet")
        seen: dict[Address, str] = {}
        for name, ip in self.aux.items():
            if ip.version != s.version or ip not in s:
                raise NsnetError(f"aux-address {name}={ip} is outside subnet {s}; pick an address inside it")
            if ip == self.gateway:
                raise NsnetError(f"aux-address {name}={ip} is the gateway; pick another address")
            if ip in seen:
                raise NsnetError(f"aux-addresses {seen[ip]} and {name} are both {ip}; give each its own address")
            seen[ip] = name

    @property
    def range(self):
        return self.ip_range or self.subnet

    # -- bitmap --------------------------------------------------------------------------

    def _reset(self, used) -> None:
        self._bm = bytearray()
        self._far: set[int] = set()        # offsets >= _BITMAP_CAP
        self._outside: set[int] = set()    # static addresses inside the subnet but outside ip-range
        self._hint = 0                     # no free offset below this
        self._strs = False
        lo, size, version = self._lo, self._size, self.subnet.version
        offsets = []
        for value in used:  # the hot loop when a pool is built per request: keep it lean
            if isinstance(value, str):
                self._strs = True
                try:
                    value = ipaddress.ip_address(value)
                except ValueError:
                    continue
            if value.version == version:
                off = int(value) - lo
                if 0 <= off < size:
                    offsets.append(off)
                else:
                    self._mark_int(int(value))
        if offsets:
            top = max(offsets)
            if top < _BITMAP_CAP:
                self._bm = bytearray(top + 1)
                bm = self._bm
                for off in offsets:
                    bm[off] = 1
            else:
                for off in offsets:
                    self._mark(off)

    def _sync(self, used) -> None:
        if used is not None and used is not self._src:
            self._src = used
            self._reset(used)

    def _mark_int(self, value: int) -> None:
        off = value - self._lo
        if 0 <= off < self._size:
            self._mark(off)
        elif self._sub_lo <= value <= self._sub_hi:
            self._outside.add(value)

    def _mark(self, off: int) -> None:
        if off >= _BITMAP_CAP:
            self._far.add(off)
            return
        bm = self._bm
        if off >= len(bm):  # grow geometrically: amortised O(1) per address
            bm.extend(bytes(min(max(off + 1 - len(bm), len(bm), 4096), _BITMAP_CAP - len(bm))))
        bm[off] = 1

    def _marked(self, off: int) -> bool:
        if off >= _BITMAP_CAP:
            return off in self._far
        return off < len(self._bm) and self._bm[off] == 1

    def _in_used(self, ip: Address, used) -> bool:
        return used is not None and (ip in used or (self._strs and str(ip) in used))

    # -- allocation ------------------------------------------------------------------------

    def allocate(self, used=None) -> Address:
        """The lowest free host address of the range. `used` is the caller's set of addresses in
        use (ipaddress objects or strings); pass the same set object each time so the bitmap is
        reused, and call release() when an address is freed."""
        self._sync(used)
        off = self._hint
        while True:
            if off < len(self._bm):
                off = self._bm.find(0, off)
                if off == -1:
                    off = len(self._bm)
            if off >= self._size:
                raise NsnetError(f"no free address left in {self.range}; remove unused containers from this "
                                 "network or create it with a larger --subnet/--ip-range")
            if (off >= _BITMAP_CAP and off in self._far) or self._lo + off in self._excluded:
                self._mark(off)  # excluded ones are marked when first met, keeping the bitmap short
                off += 1
                continue
            ip = self._cls(self._lo + off)
            self._mark(off)
            if self._in_used(ip, used):  # added behind our back: now marked, keep looking
                off += 1
                continue
            self._hint = off + 1
            return ip

    def reserve(self, ip, used=None) -> Address:
        """Claim a static address (--ip). Docker allows it outside ip-range but inside the subnet."""
        self._sync(used)
        ip = _ip(ip)
        s = self.subnet
        if ip.version != s.version or ip not in s:
            raise NsnetError(f"address {ip} is outside subnet {s}; pick an --ip inside it")
        if s.num_addresses > 2 and ip == s.network_address:
            raise NsnetError(f"address {ip} is the network address of {s}; pick a host address")
        if s.version == 4 and s.num_addresses > 2 and ip == s.broadcast_address:
            raise NsnetError(f"address {ip} is the broadcast address of {s}; pick a host address")
        if ip == self.gateway:
            raise NsnetError(f"address {ip} is the gateway of {s}; pick another --ip")
        for name, aux in self.aux.items():
            if ip == aux:
                raise NsnetError(f"address {ip} is reserved as aux-address {name}; pick another --ip")
        off = int(ip) - self._lo
        inside = 0 <= off < self._size
        taken = self._marked(off) if inside else int(ip) in self._outside
        if taken or self._in_used(ip, used):
            raise Conflict(f"address {ip} is already in use on this network; pick another --ip or leave it out")
        if inside:
            self._mark(off)
        else:
            self._outside.add(int(ip))
        return ip

    def release(self, ip) -> None:
        """Give an address back (also remove it from your `used` set)."""
        value = int(_ip(ip))
        if value in self._excluded:
            return
        off = value - self._lo
        if 0 <= off < self._size:
            if off >= _BITMAP_CAP:
                self._far.discard(off)
            elif off < len(self._bm):
                self._bm[off] = 0
            self._hint = min(self._hint, off)
        else:
            self._outside.discard(value)

    def __repr__(self) -> str:
        extra = f", ip_range={self.ip_range}" if self.ip_range else ""
        return f"AddressPool({self.subnet}, gateway={self.gateway}{extra})"
