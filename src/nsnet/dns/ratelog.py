"""Log lines that cannot flood the log: one per cause per interval, and a count of the rest.

Whatever goes wrong per query (a dead upstream under a flood, a bug that raises for one record)
would otherwise write a line, or a traceback, per query: megabytes a second, with the loop that
answers every sandbox waiting on the disk. A cause is whatever the caller names it by (a site and
an upstream, a sandbox); the first line of a cause goes out at once, the others in its interval
are counted, and the count goes out when the interval ends (`flush`, or the cause's next line).
"""

from __future__ import annotations

import logging
import time
from typing import Callable, Hashable

INTERVAL = 60.0


class _Cause:
    __slots__ = ("until", "suppressed", "level", "fmt", "args")

    def __init__(self, until: float, level: int, fmt: str, args: tuple):
        self.until, self.suppressed, self.level, self.fmt, self.args = until, 0, level, fmt, args


class RateLimitedLog:
    def __init__(self, log: logging.Logger, interval: float = INTERVAL,
                 clock: Callable[[], float] = time.monotonic):
        self.log, self.interval, self._clock = log, interval, clock
        self._causes: dict[Hashable, _Cause] = {}

    def warning(self, cause: Hashable, fmt: str, *args: object) -> None:
        self._emit(cause, logging.WARNING, fmt, args, False)

    def exception(self, cause: Hashable, fmt: str, *args: object) -> None:
        """An error with the traceback being handled (on the cause's first line only)."""
        self._emit(cause, logging.ERROR, fmt, args, True)

    def _emit(self, cause: Hashable, level: int, fmt: str, args: tuple, exc_info: bool) -> None:
        now = self._clock()
        c = self._causes.get(cause)
        if c is not None and now < c.until:
            c.suppressed += 1
            c.fmt, c.args = fmt, args  # the count is reported with the latest wording
            return
        if c is not None and c.suppressed:
            self._report(c)
        self._causes[cause] = _Cause(now + self.interval, level, fmt, args)
        self.log.log(level, fmt, *args, exc_info=exc_info)

    def flush(self) -> None:
        """Report the counts of causes whose interval is over, and forget those causes."""
        now = self._clock()
        for cause in [k for k, c in self._causes.items() if now >= c.until]:
            c = self._causes.pop(cause)
            if c.suppressed:
                self._report(c)

    def _report(self, c: _Cause) -> None:
        self.log.log(c.level, c.fmt + " (and %d more like it, not logged)", *c.args, c.suppressed)


def exception_site(e: BaseException) -> tuple:
    """A cause for an exception: its type and the line that raised it."""
    tb = e.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    where = (tb.tb_frame.f_code.co_filename, tb.tb_lineno) if tb is not None else ()
    return (type(e).__name__, *where)
