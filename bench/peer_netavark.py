"""netavark (Podman's network backend, Debian's package): bridge setup / teardown per container, run the
way Podman runs it: one process per call, the network described in JSON, inside a throwaway host namespace."""
from __future__ import annotations

import json
import os

from common import Harness, Skip, have, sh, timed

NETAVARK = "/usr/lib/podman/netavark"


class Netavark:
    def __init__(self, h: Harness, tag: str, subnet_prefix: str = "10.89"):
        if not have(NETAVARK):
            raise Skip(f"{NETAVARK} is missing (apt-get install netavark)")
        self.h = h
        self.tag = tag
        self.host = h.netns(f"{tag}-h")
        self.dir = h.tempdir(f"{tag}")
        self.prefix = subnet_prefix
        self.containers: dict[int, str] = {}
        self.version = sh([NETAVARK, "--version"]).stdout.strip()

    def _config(self, i: int) -> str:
        o2, o3 = divmod(i, 250)
        cfg = {"container_id": f"{i:064x}", "container_name": f"c{i}",
               "networks": {"benchnet": {"static_ips": [f"{self.prefix}.{o2}.{o3 + 2}"], "interface_name": "eth0"}},
               "network_info": {"benchnet": {
                   "dns_enabled": False, "driver": "bridge", "id": f"{7:064x}", "internal": False,
                   "ipv6_enabled": False, "name": "benchnet", "network_interface": f"nvbr-{self.tag[-6:]}",
                   "subnets": [{"subnet": f"{self.prefix}.0.0/16", "gateway": f"{self.prefix}.0.1"}]}}}
        path = os.path.join(self.dir, f"c{i}.json")
        with open(path, "w") as f:
            json.dump(cfg, f)
        return path

    def prepare(self, ids: list[int]) -> None:
        """A namespace and a JSON file per container (not timed)."""
        todo = [i for i in ids if i not in self.containers]
        names = self.h.netns_many([f"{self.tag}-c{i}" for i in todo])
        for i, ns in zip(todo, names):
            self._config(i)
            self.containers[i] = ns

    def setup_ms(self, i: int) -> float:
        return timed([NETAVARK, "--config", self.dir, "-f", os.path.join(self.dir, f"c{i}.json"), "setup",
                      f"/run/netns/{self.containers[i]}"], self.host)

    def teardown_ms(self, i: int) -> float:
        return timed([NETAVARK, "--config", self.dir, "-f", os.path.join(self.dir, f"c{i}.json"), "teardown",
                      f"/run/netns/{self.containers[i]}"], self.host)
