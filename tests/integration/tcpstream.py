"""One TCP connection kept busy, for tests that change things under it: `tcpstream.py echo PORT` echoes
every connection; `tcpstream.py send HOST PORT SECONDS` sends 1 KiB every 20 ms on one connection for
SECONDS, reads each back, and prints one JSON line {"sent": bytes, "echoed": bytes, "stall": longest
wait in s, "error": null or what broke the connection}."""
import json
import socket
import sys
import threading
import time


def echo(port: int) -> None:
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", port))
    s.listen(8)
    print("listening", flush=True)
    while True:
        conn, _ = s.accept()
        threading.Thread(target=_echo, args=(conn,), daemon=True).start()


def _echo(conn) -> None:
    with conn:
        while data := conn.recv(65536):
            conn.sendall(data)


def send(host: str, port: int, seconds: float) -> None:
    chunk = b"x" * 1024
    sent = echoed = 0
    stall, error = 0.0, None
    try:
        with socket.create_connection((host, port), timeout=30) as c:
            end = time.monotonic() + seconds
            while time.monotonic() < end:
                t = time.monotonic()
                c.sendall(chunk)
                sent += len(chunk)
                got = 0
                while got < len(chunk):
                    data = c.recv(len(chunk) - got)
                    if not data:
                        raise ConnectionError("closed by the peer")
                    got += len(data)
                echoed += got
                stall = max(stall, time.monotonic() - t)
                time.sleep(0.02)
    except OSError as e:
        error = str(e)
    print(json.dumps({"sent": sent, "echoed": echoed, "stall": round(stall, 3), "error": error}), flush=True)


if __name__ == "__main__":
    if sys.argv[1] == "echo":
        echo(int(sys.argv[2]))
    else:
        send(sys.argv[2], int(sys.argv[3]), float(sys.argv[4]))
