"""One thread, one epoll: every resolver socket of every sandbox is served here.

Plain epoll rather than asyncio: the hot path is recvfrom -> dict lookup -> sendto, and
asyncio's transports and futures would cost more than that whole path. Other threads never
touch the loop's state; they hand it functions (`post`, `call`) through an eventfd.
"""

from __future__ import annotations

import collections
import heapq
import itertools
import logging
import os
import select
import threading
import time
from typing import Any, Callable

from .ratelog import RateLimitedLog, exception_site

IN, OUT, ERR, HUP = select.EPOLLIN, select.EPOLLOUT, select.EPOLLERR, select.EPOLLHUP


class Timer:
    __slots__ = ("when", "fn", "cancelled")

    def __init__(self, when: float, fn: Callable[[], None]):
        self.when, self.fn, self.cancelled = when, fn, False

    def cancel(self) -> None:
        self.cancelled = True


class EventLoop:
    def __init__(self, log: logging.Logger, name: str = "nsnet-dns"):
        self.log = log
        # Everything logged on the loop's thread while it answers goes through this (see ratelog.py).
        self.ratelog = RateLimitedLog(log)
        self._name = name
        self._ep = select.epoll()
        self._handlers: dict[int, Callable[[int], None]] = {}
        self._timers: list[tuple[float, int, Timer]] = []
        self._seq = itertools.count()
        self._inbox: collections.deque[Callable[[], None]] = collections.deque()
        self._wake = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._thread: threading.Thread | None = None
        self._running = False
        self.register(self._wake, self._on_wake)

    # --- used on the loop thread (or before start / after stop) ---------------------------
    def register(self, fd: int, handler: Callable[[int], None], events: int = IN) -> None:
        self._handlers[fd] = handler
        self._ep.register(fd, events)

    def modify(self, fd: int, events: int) -> None:
        self._ep.modify(fd, events)

    def unregister(self, fd: int) -> None:
        if self._handlers.pop(fd, None) is not None:
            try:
                self._ep.unregister(fd)
            except (OSError, ValueError):
                pass

    def call_later(self, delay: float, fn: Callable[[], None]) -> Timer:
        t = Timer(time.monotonic() + delay, fn)
        heapq.heappush(self._timers, (t.when, next(self._seq), t))
        return t

    # --- safe from any thread ----------------------------------------------------------------
    def post(self, fn: Callable[[], None]) -> None:
        """Run `fn` on the loop thread soon; do not wait."""
        self._inbox.append(fn)
        os.eventfd_write(self._wake, 1)

    def call(self, fn: Callable[[], Any], timeout: float = 10.0) -> Any:
        """Run `fn` on the loop thread and return its result (raise its exception). Before
        start, after stop, or on the loop thread itself: run it right here."""
        t = self._thread
        if t is None or not t.is_alive() or t is threading.current_thread():
            return fn()
        done = threading.Event()
        box: list = [None, None]

        def job() -> None:
            try:
                box[0] = fn()
            except BaseException as e:  # handed back to the caller
                box[1] = e
            finally:
                done.set()

        self.post(job)
        if not done.wait(timeout):
            raise TimeoutError("DNS server loop did not answer")
        if box[1] is not None:
            raise box[1]
        return box[0]

    def start(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            return
        self._running = True
        self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        t = self._thread
        if t is None:
            return

        def halt() -> None:
            self._running = False

        self.post(halt)
        if t is not threading.current_thread():
            t.join(10)
        self._thread = None

    def close(self) -> None:
        self._ep.close()
        os.close(self._wake)

    # --- the loop ----------------------------------------------------------------------------
    def _on_wake(self, _events: int) -> None:
        try:
            os.eventfd_read(self._wake)
        except BlockingIOError:
            pass
        while self._inbox:
            fn = self._inbox.popleft()
            try:
                fn()
            except Exception as e:
                self.ratelog.exception(exception_site(e), "dns: posted job failed")

    def _run(self) -> None:
        poll, handlers, timers, ratelog = self._ep.poll, self._handlers, self._timers, self.ratelog
        while self._running:
            timeout = 1.0
            if timers:
                timeout = min(timeout, max(0.0, timers[0][0] - time.monotonic()))
            try:
                events = poll(timeout)
            except InterruptedError:
                continue
            for fd, ev in events:
                handler = handlers.get(fd)
                if handler is None:
                    continue
                try:
                    handler(ev)
                except Exception as e:  # one bad packet or socket must never stop the resolver
                    ratelog.exception(exception_site(e), "dns: handler for fd %d failed", fd)
            if timers and timers[0][0] <= time.monotonic():
                now = time.monotonic()
                while timers and timers[0][0] <= now:
                    t = heapq.heappop(timers)[2]
                    if not t.cancelled:
                        try:
                            t.fn()
                        except Exception as e:
                            ratelog.exception(exception_site(e), "dns: timer failed")
