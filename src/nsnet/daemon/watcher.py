"""Tells the engine when a sandbox's process ends, whether or not the daemon is its parent (pidfds)."""
from __future__ import annotations

import logging
import os
import select
import threading

from ..kernel.procs import start_time

log = logging.getLogger("nsnet.watcher")


class Watcher:
    def __init__(self, on_exit):
        self._on_exit = on_exit          # (sandbox_id, exit_code | None)
        self._poll = select.poll()
        self._watched: dict[int, tuple[str, object]] = {}   # pidfd -> (sandbox id, Popen | None)
        self._lock = threading.Lock()
        self._wake_r, self._wake_w = os.pipe()
        self._poll.register(self._wake_r, select.POLLIN)
        self._thread = threading.Thread(target=self._run, name="watcher", daemon=True)
        self._thread.start()

    def watch(self, sandbox_id: str, pid: int, started: int | None, proc=None) -> None:
        """Report when process `pid` that started at `started` (clock ticks) ends; if it is gone already, now."""
        try:
            fd = os.pidfd_open(pid)
        except ProcessLookupError:
            fd = None
        if fd is not None and start_time(pid) != started:   # the PID is another process's by now
            os.close(fd)
            fd = None
        if fd is None:
            self._on_exit(sandbox_id, proc.wait() if proc else None)
            return
        with self._lock:
            self._watched[fd] = (sandbox_id, proc)
            self._poll.register(fd, select.POLLIN)
        os.write(self._wake_w, b"x")

    def _run(self) -> None:
        while True:
            for fd, _ in self._poll.poll():
                if fd == self._wake_r:
                    os.read(self._wake_r, 512)
                    continue
                with self._lock:
                    sandbox_id, proc = self._watched.pop(fd)
                    self._poll.unregister(fd)
                os.close(fd)
                code = proc.wait() if proc is not None else None
                try:
                    self._on_exit(sandbox_id, code)
                except Exception:
                    log.exception("cleaning up after sandbox %s failed", sandbox_id)
