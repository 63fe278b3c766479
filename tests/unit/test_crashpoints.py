"""The crash points: every declared name is placed in the code, every placed name is declared, and arming."""
import pathlib
import re

import pytest

from nsnet import crashpoints
from nsnet.engine.reconcile import RECONCILE_STEPS

SRC = pathlib.Path(crashpoints.__file__).parent


def placed() -> list[str]:
    names = []
    for path in SRC.rglob("*.py"):
        text = path.read_text()
        names += re.findall(r'crashpoint\("([^"]+)"\)', text)  # the engine's, and drivers' self.crashpoint
        if 'crashpoint("reconcile.after-" + step)' in text:  # reconcile's loop over its steps
            names += ["reconcile.after-" + step for step in RECONCILE_STEPS]
    return names


def test_every_declared_point_is_placed_once_and_every_placed_one_declared():
    found = placed()
    assert sorted(found) == sorted(crashpoints.NAMES)
    assert len(set(crashpoints.NAMES)) == len(crashpoints.NAMES)


def test_arming_counts_passes_and_refuses_unknown_names(monkeypatch):
    kills = []
    monkeypatch.setattr(crashpoints.os, "kill", lambda pid, sig: kills.append(sig))
    crashpoints.arm("run.after-join,2")
    crashpoints.crashpoint("run.after-record")
    crashpoints.crashpoint("run.after-join")
    assert kills == []
    crashpoints.crashpoint("run.after-join")
    assert kills == [crashpoints.signal.SIGKILL]
    with pytest.raises(ValueError):
        crashpoints.arm("run.after-nothing")
    crashpoints.arm(None)
    crashpoints.crashpoint("run.after-join")
    assert len(kills) == 1
