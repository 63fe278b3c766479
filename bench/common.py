"""Shared pieces of the benchmark suite: throwaway namespaces, processes and folders that are always
cleaned up, timing statistics, and the shape of a figure's result.

Nothing here touches the machine's own network namespace: every link, route, rule and sysctl is made
inside a namespace this suite created (all named with PREFIX), and every process that needs a network
runs inside one.
"""
from __future__ import annotations

import ctypes
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass, field

from nsnet.kernel.procs import terminate

PREFIX = "nsb-"  # every network namespace this suite makes starts with it
TMP_PREFIX = "nsbench-"  # and every folder under /tmp
BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(BENCH_DIR)
PY = sys.executable

CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


class Skip(Exception):
    """A peer or a figure cannot run here; the message says why (it is reported, not raised further)."""


# ---- statistics --------------------------------------------------------------------------------------

def percentile(samples: list[float], q: float) -> float | None:
    if not samples:
        return None
    s = sorted(samples)
    if len(s) == 1:
        return s[0]
    k = (len(s) - 1) * q / 100.0
    lo = int(k)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def summary(samples_ms: list[float]) -> dict:
    """p50/p95/min/max/mean of a list of milliseconds, plus how many there were."""
    if not samples_ms:
        return {"n": 0}
    return {"n": len(samples_ms), "p50": percentile(samples_ms, 50), "p95": percentile(samples_ms, 95),
            "p99": percentile(samples_ms, 99), "min": min(samples_ms), "max": max(samples_ms),
            "mean": sum(samples_ms) / len(samples_ms)}


def ms_since(t0: float) -> float:
    return (time.perf_counter() - t0) * 1000.0


def timed_ms(fn, *args) -> float:
    """Milliseconds one call of fn(*args) takes."""
    t0 = time.perf_counter()
    fn(*args)
    return ms_since(t0)


# ---- results -------------------------------------------------------------------------------------

@dataclass
class Row:
    """One line of the table: nsnet's figure, the peer's figure taken in the same run, and the verdict."""
    figure: str
    measure: str
    value: float | None
    unit: str
    reps: str = ""
    peer: str = ""
    peer_value: float | None = None
    p95: float | None = None        # latencies: nsnet's p95 next to its p50 (value)
    peer_p95: float | None = None
    ratio: float | None = None      # >1 is good for nsnet, whatever the unit
    ratio_text: str = ""
    target: str = ""
    verdict: str = "INFO"           # PASS, MISS, INFO, SKIP
    note: str = ""


@dataclass
class Figure:
    key: str
    title: str
    rows: list[Row] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    data: dict = field(default_factory=dict)   # raw series for the JSON and the plots

    def row(self, **kw) -> Row:
        r = Row(figure=self.key, **kw)
        self.rows.append(r)
        return r


def faster(nsnet_ms: float | None, peer_ms: float | None) -> tuple[float | None, str]:
    """Latency ratio: how many times faster nsnet is than the peer (peer / nsnet)."""
    if not nsnet_ms or peer_ms is None:
        return None, ""
    r = peer_ms / nsnet_ms
    return r, (f"{r:.1f}x faster" if r >= 1 else f"{1 / r:.1f}x slower")


def share(nsnet_v: float | None, peer_v: float | None) -> tuple[float | None, str]:
    """Throughput ratio: nsnet's share of the peer's figure."""
    if nsnet_v is None or not peer_v:
        return None, ""
    r = nsnet_v / peer_v
    return r, f"{r * 100:.0f}% of peer" if r < 10 else f"{r:.1f}x peer"


def verdict(ok: bool | None) -> str:
    return "INFO" if ok is None else ("PASS" if ok else "MISS")


# ---- namespaces, processes, folders --------------------------------------------------------------

def setns_path(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        if _libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns {path}: {os.strerror(err)}")
    finally:
        os.close(fd)


def netns_path(ns: str | int) -> str:
    """A namespace by name (/run/netns/NAME), by the pid of a process inside it, or by path."""
    if isinstance(ns, int):
        return f"/proc/{ns}/ns/net"
    return ns if ns.startswith("/") else f"/run/netns/{ns}"


def _preexec(ns):
    if ns is None:
        return None
    path = netns_path(ns)

    def enter():  # runs in the child between fork and exec: only the child moves
        setns_path(path)
    return enter


def sh(cmd: list[str], ns=None, *, check: bool = True, timeout: float = 120, env=None, input=None,
       capture: bool = True) -> subprocess.CompletedProcess:
    """Run `cmd` inside namespace `ns` (a name under /run/netns, or a pid), never in the machine's own."""
    cp = subprocess.run(cmd, preexec_fn=_preexec(ns), timeout=timeout, env=env, input=input,
                        stdout=subprocess.PIPE if capture else subprocess.DEVNULL,
                        stderr=subprocess.PIPE if capture else subprocess.DEVNULL, text=True)
    if check and cp.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:6])}... exited {cp.returncode}: {(cp.stderr or cp.stdout or '').strip()[-600:]}")
    return cp


def timed(cmd: list[str], ns=None, **kw) -> float:
    """Wall time of one command in ms (it must succeed)."""
    t0 = time.perf_counter()
    sh(cmd, ns, **kw)
    return ms_since(t0)


def _cpu_times() -> tuple[int, int]:
    """(idle, total) jiffies of all CPUs since boot."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    return fields[3] + fields[4], sum(fields)


def wait_until_idle(busy_max: float = 0.10, timeout: float = 90.0) -> float:
    """Wait until the CPUs are idle (busy less than `busy_max` over one second), at most `timeout` s;
    returns the seconds waited. Namespaces that earlier figures removed are torn down by the kernel in
    the background for a while, and a throughput figure taken meanwhile shares the CPUs with it."""
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < timeout:
        idle0, total0 = _cpu_times()
        time.sleep(1.0)
        idle1, total1 = _cpu_times()
        if total1 > total0 and 1 - (idle1 - idle0) / (total1 - total0) < busy_max:
            break
    return time.perf_counter() - t0


def proc_start(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[19])
    except (OSError, ValueError, IndexError):
        return None


def cpu_s(pid: int) -> float | None:
    """The CPU time (user + system) process `pid` has used, in seconds."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def rss_kb(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def have(path_or_cmd: str) -> str | None:
    if os.path.sep in path_or_cmd:
        return path_or_cmd if os.access(path_or_cmd, os.X_OK) else None
    return shutil.which(path_or_cmd)


class Harness:
    """Owns everything the run makes: undone in reverse order on close(), on error and on Ctrl-C."""

    def __init__(self, run_id: str, log=print):
        self.run_id = run_id
        self.log = log
        self._undo: list[tuple[str, object]] = []
        self._closed = False

    # namespaces --------------------------------------------------------------------------------
    def netns(self, name: str) -> str:
        """A fresh named namespace (loopback up), deleted at the end."""
        name = PREFIX + name
        if len(name) > 60:
            raise ValueError(name)
        subprocess.run(["ip", "netns", "del", name], stderr=subprocess.DEVNULL)
        subprocess.run(["ip", "netns", "add", name], check=True)
        self._undo.append(("netns", name))
        sh(["ip", "link", "set", "lo", "up"], name)
        return name

    def netns_many(self, names: list[str]) -> list[str]:
        """Many namespaces at once through `ip -batch` (one process instead of one per namespace)."""
        full = [PREFIX + n for n in names]
        for n in full:
            self._undo.append(("netns", n))
        for i in range(0, len(full), 500):
            batch = "".join(f"netns add {n}\n" for n in full[i:i + 500])
            sh(["ip", "-force", "-batch", "-"], input=batch)
        return full

    # processes ---------------------------------------------------------------------------------
    def spawn(self, cmd: list[str], ns=None, **kw) -> subprocess.Popen:
        """A background process of ours (inside `ns`), killed at the end if still running."""
        kw.setdefault("stdout", subprocess.DEVNULL)
        kw.setdefault("stderr", subprocess.DEVNULL)
        p = subprocess.Popen(cmd, preexec_fn=_preexec(ns), start_new_session=True, **kw)
        self._undo.append(("popen", p))
        return p

    def adopt(self, pid: int) -> None:
        """A process we caused to exist but did not fork (a daemon): killed at the end, checked by start time."""
        self._undo.append(("pid", (pid, proc_start(pid))))

    # folders -----------------------------------------------------------------------------------
    def tempdir(self, what: str) -> str:
        d = tempfile.mkdtemp(prefix=f"{TMP_PREFIX}{what}-")
        self._undo.append(("dir", d))
        return d

    def defer(self, fn, *args) -> None:
        """Call fn(*args) at the end (before the namespaces and folders made earlier go)."""
        self._undo.append(("call", (fn, args)))

    # the end -----------------------------------------------------------------------------------
    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        old = signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second ^C must not stop the clean-up
        try:
            while self._undo:
                kind, obj = self._undo.pop()
                try:
                    self._undo_one(kind, obj)
                except Exception as e:  # carry on: the rest must still go
                    self.log(f"  clean-up: {kind} {obj!r}: {e}")
        finally:
            signal.signal(signal.SIGINT, old)

    def close_upto(self, mark: int) -> None:
        """Undo everything registered after `mark` (a figure's own things), keep the rest."""
        while len(self._undo) > mark:
            kind, obj = self._undo.pop()
            try:
                self._undo_one(kind, obj)
            except Exception as e:
                self.log(f"  clean-up: {kind} {obj!r}: {e}")

    def mark(self) -> int:
        return len(self._undo)

    @contextmanager
    def scope(self, fig=None, label: str = "", catch=Skip):
        """What the block makes is removed when it ends. With a figure, an exception of `catch` ends the
        block as a line in the figure's skipped list ("label: why") instead of ending the figure."""
        mark = self.mark()
        try:
            yield
        except catch as e:
            if fig is None:
                raise
            fig.skipped.append(f"{label}: {e}")
        finally:
            self.close_upto(mark)

    def _undo_one(self, kind: str, obj) -> None:
        if kind == "call":
            fn, args = obj
            fn(*args)
        elif kind == "popen":
            p: subprocess.Popen = obj
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(3)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait(3)
        elif kind == "pid":
            terminate(*obj, timeout=3)
        elif kind == "netns":
            subprocess.run(["ip", "netns", "del", obj], stderr=subprocess.DEVNULL)
        elif kind == "dir":
            unmount_under(obj)
            shutil.rmtree(obj, ignore_errors=True)


def unmount_under(path: str) -> None:
    """Lazily unmount whatever a peer left mounted under one of our folders (Docker's netns files)."""
    path = os.path.realpath(path)
    try:
        with open("/proc/self/mounts") as f:
            targets = [line.split()[1] for line in f]
    except OSError:
        return
    for t in sorted((t for t in targets if t == path or t.startswith(path + "/")), key=len, reverse=True):
        subprocess.run(["umount", "-l", t], stderr=subprocess.DEVNULL)


def sweep_leftovers(log=print) -> None:
    """Namespaces and folders of an earlier run that was killed too hard to clean up (ours by prefix)."""
    try:
        names = [line.split()[0] for line in sh(["ip", "netns", "list"]).stdout.splitlines() if line.strip()]
    except Exception:
        names = []
    stale = [n for n in names if n.startswith(PREFIX)]
    for n in stale:
        subprocess.run(["ip", "netns", "del", n], stderr=subprocess.DEVNULL)
    if stale:
        log(f"  removed {len(stale)} namespaces left by an earlier run")


def write_json(path: str, obj) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2, default=str)
    os.replace(tmp, path)


SIOCGSKNS = 0x894C  # ioctl: the network namespace a socket lives in


def socket_netns_inode(fd: int) -> int:
    import fcntl

    nsfd = fcntl.ioctl(fd, SIOCGSKNS)
    try:
        return os.fstat(nsfd).st_ino
    finally:
        os.close(nsfd)


def made_in_netns(ns, fn):
    """fn() called with this thread inside namespace `ns` (name, pid or path), then back home; the socket it
    returns (anything with fileno(): a socket, a pyroute2 IPRoute) is checked to live in `ns`, so that no
    request meant for a test namespace can ever reach the machine's own."""
    path = netns_path(ns)
    target = os.stat(path).st_ino
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    try:
        setns_path(path)
        try:
            value = fn()
        finally:
            setns_path(f"/proc/self/fd/{home}")
    finally:
        os.close(home)
    if hasattr(value, "fileno") and socket_netns_inode(value.fileno()) != target:
        value.close()
        raise RuntimeError(f"a socket meant for {path} was made in another namespace: refusing to use it")
    return value
