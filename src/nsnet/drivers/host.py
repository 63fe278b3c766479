"""`host` (the sandbox shares the engine's network namespace) and `null` (loopback only)."""
from __future__ import annotations

from .base import Driver


class HostDriver(Driver):
    name = "host"
    needs_netns = False
    builds_endpoints = False
    singleton = True
    sandbox_mode = "host"

    def builtin(self) -> dict:
        return {"name": "host"}


class NullDriver(Driver):
    name = "null"
    builds_endpoints = False
    singleton = True
    sandbox_mode = "none"

    def builtin(self) -> dict:
        return {"name": "none"}
