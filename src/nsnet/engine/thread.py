"""The engine's one kernel thread (design notes, "One kernel thread")."""
from __future__ import annotations

import functools
import threading
from concurrent.futures import ThreadPoolExecutor


class KernelThread:
    """The engine's one kernel thread. pyroute2 gives every thread its own netlink socket, opened in the
    namespace that thread is in at first use; confining all netlink work to one thread keeps one socket
    per namespace, reused."""

    def __init__(self):
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="kernel")
        self.ident = self._pool.submit(threading.get_ident).result()

    def call(self, fn, *args, **kwargs):
        if threading.get_ident() == self.ident:
            return fn(*args, **kwargs)
        return self._pool.submit(fn, *args, **kwargs).result()


def on_kernel_thread(method):
    """Run a use case on the engine's kernel thread (inline when the engine has none: unit tests)."""
    @functools.wraps(method)
    def call(self, *args, **kwargs):
        if self.thread is None:
            return method(self, *args, **kwargs)
        return self.thread.call(method, self, *args, **kwargs)
    return call


def woken_loop(wake: threading.Event, tick: float, step, log, what: str) -> None:
    """Run `step` each time `wake` is set, and every `tick` seconds anyway, for ever (a thread's body). An
    NsnetError (etcd away: the membership's lease thread says so) is logged at debug, any other error with
    its traceback; neither ends the loop."""
    from ..errors import NsnetError
    while True:
        wake.wait(tick)
        wake.clear()
        try:
            step()
        except NsnetError as e:
            log.debug("%s: %s", what, e)
        except Exception:
            log.exception("%s failed; trying again", what)
