"""Convergence prober, run inside a sandbox's namespace: for each line "IP NAME" on stdin, how long until
IP answers an ICMP echo and NAME resolves at 127.0.0.11 (ms each, from the line's arrival; one output line
"PING_MS DNS_MS", -1 when not within 5 s). Raw sockets and one DNS query per try: no process per try."""
import os
import select
import socket
import struct
import sys
import time

TIMEOUT = 5.0
TRY = 0.005   # s: one ping or query waits this long for its answer


def _checksum(data: bytes) -> int:
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    s = (s >> 16) + (s & 0xFFFF)
    return ~(s + (s >> 16)) & 0xFFFF


def ping_ms(ip: str, t0: float) -> float:
    s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
    ident, seq = os.getpid() & 0xFFFF, 0
    try:
        while time.monotonic() - t0 < TIMEOUT:
            seq += 1
            head = struct.pack("!BBHHH", 8, 0, 0, ident, seq)
            s.sendto(struct.pack("!BBHHH", 8, 0, _checksum(head), ident, seq), (ip, 0))
            end = time.monotonic() + TRY
            while (left := end - time.monotonic()) > 0:
                if not select.select([s], [], [], left)[0]:
                    break
                data, addr = s.recvfrom(1500)
                ihl = (data[0] & 0x0F) * 4
                if addr[0] == ip and data[ihl] == 0 and struct.unpack("!H", data[ihl + 4:ihl + 6])[0] == ident:
                    return (time.monotonic() - t0) * 1000
        return -1
    finally:
        s.close()


def dns_ms(name: str, t0: float) -> float:
    query = struct.pack("!HHHHHH", 0x4242, 0x0100, 1, 0, 0, 0)
    query += b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\0" + struct.pack("!HH", 1, 1)
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(TRY)
    try:
        while time.monotonic() - t0 < TIMEOUT:
            s.sendto(query, ("127.0.0.11", 53))
            try:
                data = s.recv(1500)
            except socket.timeout:
                continue
            if struct.unpack("!H", data[6:8])[0] > 0:   # an answer, not NXDOMAIN: the record is there
                return (time.monotonic() - t0) * 1000
            time.sleep(TRY)
        return -1
    finally:
        s.close()


for line in sys.stdin:
    ip, name = line.split()
    t0 = time.monotonic()
    p = ping_ms(ip, t0)
    d = dns_ms(name, t0)
    print(f"{p:.2f} {d:.2f}", flush=True)
