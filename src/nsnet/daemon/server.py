"""`nsnet daemon`: one engine per NSNET_ROOT, serving its API on <root>/nsnet.sock."""
from __future__ import annotations

import fcntl
import json
import logging
import os
import resource
import signal
import socketserver
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler

from ..dns.server import DnsServer
from ..engine import Engine
from ..kernel.procs import Launch, alive
from . import api
from .watcher import Watcher

log = logging.getLogger("nsnet.daemon")


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def _serve(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        try:
            status, result = api.dispatch(self.server.daemon, self.command, self.path, body)
        except Exception as e:  # a bug: say it in one line, keep serving, log the trace
            log.exception("%s %s failed", self.command, self.path)
            status, result = 500, {"message": f"internal error: {e}"}
        data = json.dumps(result).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = do_DELETE = _serve

    def log_message(self, fmt, *args) -> None:
        log.debug("api: " + fmt, *args)

    def address_string(self) -> str:
        return "unix"


class Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True
    allow_reuse_address = True


class Daemon:
    def __init__(self, root: str):
        self.root = root
        self.engine = Engine(root)
        self.watcher = Watcher(self.engine.sandbox_exited)
        self.engine.on_sandbox_running = self._watch

    def _watch(self, sb, proc) -> None:
        self.watcher.watch(sb.id, sb.pid, proc)

    def run_sandbox(self, spec: dict):
        return self.engine.run_sandbox(spec, self._launch_detached)

    def _launch_detached(self, sb, files: str) -> Launch:
        out = open(os.path.join(files, "log"), "ab")
        try:
            return Launch(sb.cmd, netmode="host" if sb.netmode == "host" else "own",
                          stdin=subprocess.DEVNULL, stdout=out, stderr=out, new_session=True)
        finally:
            out.close()

    def start(self) -> None:
        self.engine.start()
        for sb in self.engine.list_sandboxes():
            if alive(sb.pid, sb.pid_start):
                self.watcher.watch(sb.id, sb.pid)
        dns = DnsServer(log=logging.getLogger("nsnet.dns"), port=0)  # random ports, 127.0.0.11:53 redirected to them
        dns.start()
        self.engine.serve_dns(dns)


def serve(root: str) -> int:
    os.makedirs(root, exist_ok=True)
    lock = open(os.path.join(root, "daemon.lock"), "w")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        print(f"nsnet: a daemon already runs for {root}", file=sys.stderr)
        return 1
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    # Each sandbox holds a few fds (its namespace, netlink and resolver sockets, a pidfd): a thousand
    # sandboxes need more than the usual soft limit of 1024.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    daemon = Daemon(root)
    daemon.start()
    sock = os.path.join(root, "nsnet.sock")
    if os.path.exists(sock):
        os.unlink(sock)
    server = Server(sock, Handler)
    server.daemon = daemon
    os.chmod(sock, 0o660)
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown).start())
    log.info("nsnet daemon %s serving %s", os.getpid(), sock)
    try:
        server.serve_forever(poll_interval=0.5)
    finally:
        server.server_close()
        if os.path.exists(sock):
            os.unlink(sock)
        log.info("nsnet daemon stopped; sandboxes keep running and are picked up by the next start")
    return 0
