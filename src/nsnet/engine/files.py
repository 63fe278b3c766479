"""A sandbox's own files under <root>/sandboxes/ID: the hosts, resolv.conf and hostname its first process
bind-mounts over /etc, and the log of a detached run. The folder is 0700 (its log may hold secrets); the
three /etc files are 0644, read inside the sandbox through the bind mount, made by path as root."""
from __future__ import annotations

import ipaddress
import os
import shutil

from ..model import Endpoint, Sandbox
from ..resolvconf import nameservers


class SandboxFiles:
    def __init__(self, root: str):
        self.top = os.path.join(root, "sandboxes")

    def path(self, sid: str) -> str:
        return os.path.join(self.top, sid)

    def make(self, sb: Sandbox) -> str:
        path = self.path(sb.id)
        os.makedirs(path, mode=0o700, exist_ok=True)
        return path

    def write(self, sb: Sandbox, eps: list[Endpoint], *, resolver: bool, own_netns: bool) -> None:
        """`eps`: its endpoints, in order; `resolver`: the embedded resolver answers inside it; `own_netns`:
        it has a network namespace of its own (else it shares the host's)."""
        hosts = ["127.0.0.1\tlocalhost", "::1\tlocalhost ip6-localhost ip6-loopback"]
        for ep in eps[:1]:
            for a in (ep.ipv4, ep.ipv6):
                if a:
                    hosts.append(f"{a.split('/')[0]}\t{sb.hostname}")
        if not own_netns:
            hosts.append(f"127.0.1.1\t{sb.hostname}")
        for name, text in (("hosts", "\n".join(hosts) + "\n"), ("resolv.conf", _resolv_conf(sb, resolver, own_netns)),
                           ("hostname", sb.hostname + "\n")):
            with open(os.path.join(self.path(sb.id), name), "w") as f:
                f.write(text)

    def remove(self, sid: str) -> None:
        shutil.rmtree(self.path(sid), ignore_errors=True)

    def ids(self) -> set[str]:
        """The sandboxes that have a folder."""
        return set(os.listdir(self.top)) if os.path.isdir(self.top) else set()


def _resolv_conf(sb: Sandbox, resolver: bool, own_netns: bool) -> str:
    if resolver:
        # The embedded resolver answers inside the sandbox; it forwards the rest upstream.
        return "nameserver 127.0.0.11\noptions ndots:0\n"
    servers = sb.dns or nameservers()
    if own_netns:  # the host's loopback resolver is not reachable from there
        servers = [s for s in servers if not ipaddress.ip_address(s).is_loopback]
    return "".join(f"nameserver {s}\n" for s in servers[:3])
