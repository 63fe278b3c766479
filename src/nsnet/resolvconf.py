"""The nameservers of a resolv.conf: the one parser for the resolver's upstreams, the lockout evidence and
the sandboxes' own resolv.conf."""
from __future__ import annotations


def nameservers(path: str = "/etc/resolv.conf") -> list[str]:
    """The `nameserver` values in file order, as written (an IPv6 one may carry a %zone); [] if unreadable."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            lines = f.read().splitlines()
    except OSError:
        return []
    out = []
    for line in lines:
        words = line.split("#", 1)[0].split(";", 1)[0].split()
        if len(words) >= 2 and words[0] == "nameserver":
            out.append(words[1])
    return out
