"""The resolver's log cannot flood: one line per cause per interval, the rest counted."""

import logging

from nsnet.dns.ratelog import RateLimitedLog, exception_site


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def make(caplog):
    caplog.set_level(logging.INFO, logger="test.ratelog")
    clock = Clock()
    return RateLimitedLog(logging.getLogger("test.ratelog"), interval=60.0, clock=clock), clock


def test_one_line_per_cause_per_interval_then_the_count(caplog):
    rl, clock = make(caplog)
    for i in range(1000):
        rl.warning(("timeout", "192.0.2.53:53"), "dns: upstream %s did not answer (%d)", "192.0.2.53:53", i)
    rl.warning(("timeout", "198.51.100.53:53"), "dns: upstream %s did not answer (%d)", "198.51.100.53:53", 0)
    assert [r.getMessage() for r in caplog.records] == ["dns: upstream 192.0.2.53:53 did not answer (0)",
                                                        "dns: upstream 198.51.100.53:53 did not answer (0)"]
    clock.now += 30
    rl.flush()  # the interval is not over: nothing yet
    assert len(caplog.records) == 2
    clock.now += 31
    rl.flush()
    assert caplog.records[2].getMessage() == "dns: upstream 192.0.2.53:53 did not answer (999) (and 999 more like it, not logged)"
    rl.flush()
    assert len(caplog.records) == 3  # reported once, the causes forgotten
    rl.warning(("timeout", "192.0.2.53:53"), "dns: again")
    assert caplog.records[-1].getMessage() == "dns: again"


def test_the_count_also_goes_out_with_the_causes_next_line(caplog):
    rl, clock = make(caplog)
    for _ in range(3):
        rl.warning("c", "dns: x")
    clock.now += 61
    rl.warning("c", "dns: x")
    assert [r.getMessage() for r in caplog.records] == ["dns: x", "dns: x (and 2 more like it, not logged)", "dns: x"]


def test_a_traceback_once_per_site(caplog):
    rl, _ = make(caplog)

    def fails(what):
        try:
            {}[what]
        except KeyError as e:
            rl.exception(exception_site(e), "dns: handler failed")

    for i in range(100):
        fails(i)
    try:
        raise ValueError("elsewhere")
    except ValueError as e:
        rl.exception(exception_site(e), "dns: handler failed")
    assert [bool(r.exc_info) for r in caplog.records] == [True, True]  # two sites, two tracebacks
    assert exception_site(KeyError()) == ("KeyError",)
