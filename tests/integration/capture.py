"""A capture on one link (run inside its namespace): counts the UDP datagrams to PORT that cross IFACE for
SECONDS, and how many of them carry MARKER (bytes, hex) anywhere in the frame. Prints "ready" once
listening, then one JSON line {"udp": n, "marker": m}. AF_PACKET: no tcpdump needed."""
import json
import socket
import struct
import sys
import time

ETH_P_ALL = 3


def main(iface: str, port: int, seconds: float, marker: bytes) -> None:
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.ntohs(ETH_P_ALL))
    s.bind((iface, 0))
    s.settimeout(0.2)
    print("ready", flush=True)
    udp = seen = 0
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        try:
            frame = s.recv(65535)
        except socket.timeout:
            continue
        if frame[12:14] != b"\x08\x00" or frame[23] != 17:   # IPv4, UDP
            continue
        ihl = (frame[14] & 0x0F) * 4
        if struct.unpack("!H", frame[14 + ihl + 2:14 + ihl + 4])[0] == port:
            udp += 1
            seen += marker in frame
    print(json.dumps({"udp": udp, "marker": seen}), flush=True)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), bytes.fromhex(sys.argv[4]) if len(sys.argv) > 4 else b"\0" * 64)
