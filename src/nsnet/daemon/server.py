"""`nsnet daemon`: one engine per NSNET_ROOT, serving its API on <root>/nsnet.sock."""
from __future__ import annotations

import fcntl
import logging
import os
import resource
import signal
import subprocess
import sys
import threading

from .. import crashpoints
from ..cluster import Cluster
from ..dns.server import DnsServer
from ..engine import Engine
from ..engine.swarm import Member
from ..errors import NsnetError
from ..kernel.probe import docker_socket
from ..kernel.procs import Launch, alive
from . import dockerkick, dockersweep
from .dockerplugin import SOCKET as PLUGIN_SOCKET, PluginHandler
from .httpd import Handler, Server
from .tasks import TaskRunner
from .watcher import Watcher

log = logging.getLogger("nsnet.daemon")


class Daemon:
    def __init__(self, root: str):
        self.root = root
        self.engine = Engine.open(root)
        self.watcher = Watcher(self._exited)
        self.engine.on_sandbox_running = self._watch
        self.cluster = Cluster(root, self.engine.state.node, on_join=self._joined, on_leave=self.engine.unshare,
                               on_removed=lambda: self.engine.unshare(force=True))
        self.tasks = TaskRunner(self)   # the swarm's tasks assigned to this node

    def _exited(self, sid: str, code) -> None:
        self.engine.sandbox_exited(sid, code)
        self.tasks.poke()   # a task's sandbox may have ended: restarted per its condition

    def _joined(self, kv, s) -> None:
        self.engine.share(kv, Member(s.advertise_addr, s.data_path_port, s.pools, s.mask))

    def _watch(self, sb, proc) -> None:
        self.watcher.watch(sb.id, sb.pid, sb.pid_start, proc)

    def run_sandbox(self, spec: dict):
        return self.engine.run_sandbox(spec, self._launch_detached)

    def _launch_detached(self, sb, files: str) -> Launch:
        out = os.open(os.path.join(files, "log"), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            return Launch(sb.cmd, netmode="own" if self.engine.needs_netns(sb) else "host",
                          stdin=subprocess.DEVNULL, stdout=out, stderr=out, new_session=True)
        finally:
            os.close(out)

    def start(self) -> None:
        self.engine.start()
        self.engine.docker_nets.mend()   # Docker replays nothing: its endpoints are mended from the records
        for sb in self.engine.list_sandboxes():
            if alive(sb.pid, sb.pid_start):
                self.watcher.watch(sb.id, sb.pid, sb.pid_start)
        dns = DnsServer(log=logging.getLogger("nsnet.dns"), port=0)  # random ports, 127.0.0.11:53 redirected to them
        dns.start()
        self.engine.serve_dns(dns)
        self.tasks.start()
        self.cluster.start()   # a swarm member rejoins in the background; local networks never wait for etcd


# What only root may read: the state, and what sandboxes printed (their logs may hold secrets).
PRIVATE_FILES = ("swarm.json", "state.db", "state.db-wal", "state.db-shm", "daemon.log", "daemon.lock")


def make_private(root: str) -> None:
    """The root is 0700 and its files 0600; roots made before that was so are fixed here, at each start.
    A sandbox's hosts, resolv.conf and hostname stay 0644: they are bind-mounted over its /etc, where
    its non-root users read them, and the bind mount is made by path, so the 0700 root does not hide them."""
    os.makedirs(root, mode=0o700, exist_ok=True)
    os.chmod(root, 0o700)
    logs = [os.path.join(root, "sandboxes", sid, "log") for sid in _listdir(os.path.join(root, "sandboxes"))]
    for path in [os.path.join(root, name) for name in PRIVATE_FILES] + logs:
        try:
            os.chmod(path, 0o600)
        except FileNotFoundError:
            pass


def _listdir(path: str) -> list[str]:
    try:
        return os.listdir(path)
    except FileNotFoundError:
        return []


def _listen(path: str, handler, daemon: Daemon, mode: int) -> Server:
    if os.path.exists(path):
        os.unlink(path)
    server = Server(path, handler)
    server.daemon = daemon
    os.chmod(path, mode)
    return server


def serve(root: str) -> int:
    # Files are kept private by the root's mode and explicit modes, not the umask: the sandboxes' /etc
    # files must stay readable inside, and detached sandboxes' processes start with Docker's umask.
    os.umask(0o022)
    make_private(root)
    lock = os.fdopen(os.open(os.path.join(root, "daemon.lock"), os.O_WRONLY | os.O_CREAT, 0o600), "w")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        print(f"nsnet: a daemon already runs for {root}", file=sys.stderr)
        return 1
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    crashpoints.arm(os.environ.pop(crashpoints.ENV, None))  # popped: its sandboxes must not inherit it
    gap, period = dockersweep.timings(os.environ.pop(dockersweep.ENV, None))
    # Each sandbox holds a few fds (its namespace, netlink and resolver sockets, a pidfd): a thousand
    # sandboxes need more than the usual soft limit of 1024.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    try:
        daemon = Daemon(root)
        daemon.start()
    except NsnetError as e:   # e.g. a config.toml it refuses: one line, the last of the log, for the CLI
        log.error("cannot start: %s", e)
        return 1
    sock = os.path.join(root, "nsnet.sock")
    server = _listen(sock, Handler, daemon, 0o660)
    # Docker's plugin protocol (IPAM driver `nsnet`) on its own socket: dockerd runs as root, so 0600.
    plugin_sock = os.path.join(root, PLUGIN_SOCKET)
    plugin = _listen(plugin_sock, PluginHandler, daemon, 0o600)
    threading.Thread(target=plugin.serve_forever, kwargs={"poll_interval": 0.5}, name="docker-plugin",
                     daemon=True).start()
    # Containers dockerd left exited because this daemon was not running when it started: started now.
    threading.Thread(target=dockerkick.start_stranded, args=(docker_socket(), plugin_sock), name="docker-kick",
                     daemon=True).start()
    # Endpoints and addresses Docker forgot (its clean-up found nsnet down): released once Docker shows them nowhere.
    threading.Thread(target=dockersweep.run, args=(daemon.engine, docker_socket(), gap, period), name="docker-sweep",
                     daemon=True).start()
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown).start())
    log.info("nsnet daemon %s serving %s and Docker's plugin protocol on %s", os.getpid(), sock, plugin_sock)
    try:
        server.serve_forever(poll_interval=0.5)
    finally:
        plugin.shutdown()
        for srv, path in ((server, sock), (plugin, plugin_sock)):
            srv.server_close()
            if os.path.exists(path):
                os.unlink(path)
        log.info("nsnet daemon stopped; sandboxes keep running and are picked up by the next start")
    return 0
