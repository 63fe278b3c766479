"""Tiny real peers for tests: `netcheck.py serve tcp|udp PORT` answers every connection or datagram
with "peer=<the address it saw>", `netcheck.py whoami PORT` answers every TCP connection with
"host=<its host name>,env=<$NETCHECK_ENV>" (a service's task saying which one it is), and `netcheck.py ask tcp|udp HOST PORT` prints that answer
(exit 1 when nothing answers within the timeout)."""
import socket
import sys


def serve(proto: str, port: int) -> None:
    family = socket.AF_INET6
    kind = socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM
    s = socket.socket(family, kind)
    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)  # IPv4 and IPv6 on one socket
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("::", port))
    if proto == "tcp":
        s.listen(64)
        print("listening", flush=True)
        while True:
            conn, peer = s.accept()
            conn.sendall(f"peer={_plain(peer[0])}\n".encode())
            conn.close()
    print("listening", flush=True)
    while True:
        _, peer = s.recvfrom(2048)
        s.sendto(f"peer={_plain(peer[0])}\n".encode(), peer)


def whoami(port: int) -> None:
    import os
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", port))
    s.listen(256)
    answer = f"host={socket.gethostname()},env={os.environ.get('NETCHECK_ENV', '')}\n".encode()
    while True:
        conn, _ = s.accept()
        conn.sendall(answer)
        conn.close()


def _plain(addr: str) -> str:
    return addr[7:] if addr.startswith("::ffff:") else addr


def ask(proto: str, host: str, port: int, timeout: float = 3.0) -> int:
    try:
        if proto == "tcp":
            with socket.create_connection((host, port), timeout=timeout) as c:
                data = c.recv(200)
        else:
            family = socket.AF_INET6 if ":" in host else socket.AF_INET
            with socket.socket(family, socket.SOCK_DGRAM) as c:
                c.settimeout(timeout)
                c.sendto(b"hi", (host, port))
                data = c.recv(200)
    except OSError as e:
        print(f"no answer: {e}")
        return 1
    print(data.decode().strip())
    return 0


if __name__ == "__main__":
    if sys.argv[1] == "serve":
        serve(sys.argv[2], int(sys.argv[3]))
    elif sys.argv[1] == "whoami":
        whoami(int(sys.argv[2]))
    else:
        sys.exit(ask(sys.argv[2], sys.argv[3], int(sys.argv[4])))
