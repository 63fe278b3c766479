"""Embedded DNS: 127.0.0.11 inside every sandbox, answered by the daemon (see server.py)."""

from .records import Record, RecordSet
from .server import DnsServer

__all__ = ["DnsServer", "Record", "RecordSet"]
