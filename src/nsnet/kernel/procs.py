"""Processes of sandboxes: starting them through sandbox_init, and telling whether one still lives."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys


def _stat(pid: int) -> list[str] | None:
    """Fields of /proc/PID/stat after the command name (state first)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None


def start_time(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (field 22 of /proc/PID/stat)."""
    fields = _stat(pid)
    return int(fields[19]) if fields else None


def alive(pid: int | None, started: int | None) -> bool:
    """Is this still our process? A zombie is not: its namespaces are already gone."""
    fields = _stat(pid) if pid else None
    return bool(fields) and fields[0] not in ("Z", "X") and int(fields[19]) == started


class Launch:
    """A sandbox's first process, held between 'namespaces exist' and 'go'."""

    def __init__(self, cmd: list[str], *, netmode: str, stdin=None, stdout=None, stderr=None,
                 new_session: bool = False):
        ready_r, ready_w = os.pipe()
        go_r, self._go_w = os.pipe()
        args = [sys.executable, "-m", "nsnet.kernel.sandbox_init", "--netmode", netmode,
                "--ready-fd", str(ready_w), "--go-fd", str(go_r)]
        self.proc = subprocess.Popen(args + ["--"] + list(cmd), pass_fds=(ready_w, go_r), stdin=stdin,
                                     stdout=stdout, stderr=stderr, start_new_session=new_session)
        os.close(ready_w)
        os.close(go_r)
        try:
            ready = os.read(ready_r, 1)
        finally:
            os.close(ready_r)
        if ready != b"1":
            self.proc.wait()
            os.close(self._go_w)
            raise OSError("the sandbox process failed to create its namespaces")
        self.pid = self.proc.pid
        self.started = start_time(self.pid)

    def go(self, files: str, hostname: str, nft: str | None = None) -> None:
        """The network is built: apply `nft` inside (the resolver's port redirect), bind `files` over /etc, set the
        hostname, run the command."""
        os.write(self._go_w, json.dumps({"files": files, "hostname": hostname, "nft": nft}).encode())
        os.close(self._go_w)

    def abort(self) -> None:
        os.close(self._go_w)
        self.proc.wait()


def terminate(pid: int, started: int | None, timeout: float = 10.0) -> None:
    """SIGTERM, then SIGKILL after `timeout` seconds, as `docker stop` does."""
    import time

    if not alive(pid, started):
        return
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not alive(pid, started):
            return
        time.sleep(0.02)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
