"""CNI plugins, one plugin process per ADD / DEL as a runtime calls them, inside a throwaway host namespace:
the reference plugins (Debian's containernetworking-plugins: `bridge` with `host-local` IPAM) and nsnet's."""
from __future__ import annotations

import json
import os

from common import PY, REPO, Harness, Skip, have, timed

CNI_PATH = "/usr/lib/cni"


class Cni:
    def __init__(self, h: Harness, tag: str, subnet: str = "10.88.0.0/16"):
        if not have(f"{CNI_PATH}/bridge") or not have(f"{CNI_PATH}/host-local"):
            raise Skip(f"{CNI_PATH}/bridge or host-local is missing (apt-get install containernetworking-plugins)")
        self.h = h
        self.tag = tag
        self.host = h.netns(f"{tag}-h")
        self.dir = h.tempdir(tag)
        self.conf = json.dumps({
            "cniVersion": "1.0.0", "name": "benchnet", "type": "bridge", "bridge": f"cnibr-{tag[-6:]}",
            "isGateway": True, "ipMasq": True,
            "ipam": {"type": "host-local", "ranges": [[{"subnet": subnet}]], "routes": [{"dst": "0.0.0.0/0"}],
                     "dataDir": os.path.join(self.dir, "ipam")}})
        self.containers: dict[int, str] = {}

    def prepare(self, ids: list[int]) -> None:
        todo = [i for i in ids if i not in self.containers]
        for i, ns in zip(todo, self.h.netns_many([f"{self.tag}-c{i}" for i in todo])):
            self.containers[i] = ns

    def _call(self, command: str, i: int) -> float:
        env = dict(os.environ, CNI_COMMAND=command, CNI_CONTAINERID=f"c{i}", CNI_NETNS=f"/run/netns/{self.containers[i]}",
                   CNI_IFNAME="eth0", CNI_PATH=CNI_PATH)
        return timed([f"{CNI_PATH}/bridge"], self.host, env=env, input=self.conf)

    def add_ms(self, i: int) -> float:
        return self._call("ADD", i)

    def del_ms(self, i: int) -> float:
        return self._call("DEL", i)


class NsnetCni:
    """nsnet's CNI plugin, called as the reference plugins are above (one process per ADD / DEL, what a runtime
    sees), through the launcher setup.sh installs, on an engine of its own (NsnetEngine: its namespace, root
    and daemon). The network is made first, as the bridge plugin's first ADD makes its bridge."""

    def __init__(self, h: Harness, tag: str, subnet: str = "10.89.0.0/16"):
        from nsnet.cniplugin import launcher
        from peer_nsnet import NsnetEngine

        self.h = h
        self.tag = tag
        self.eng = NsnetEngine(h, tag)
        self.eng.create_network("benchnet", subnet)
        self.plugin = os.path.join(h.tempdir(f"{tag}-bin"), "nsnet")
        with open(self.plugin, "w") as f:
            f.write(launcher("/usr/bin/python3" if have("/usr/bin/python3") else PY, os.path.join(REPO, "src"), PY))
        os.chmod(self.plugin, 0o755)
        self.conf = json.dumps({"cniVersion": "1.1.0", "name": "benchnet", "type": "nsnet", "root": self.eng.root})
        self.containers: dict[int, str] = {}

    def prepare(self, ids: list[int]) -> None:
        todo = [i for i in ids if i not in self.containers]
        for i, ns in zip(todo, self.h.netns_many([f"{self.tag}-c{i}" for i in todo])):
            self.containers[i] = ns

    def _call(self, command: str, i: int) -> float:
        env = dict(os.environ, CNI_COMMAND=command, CNI_CONTAINERID=f"c{i}", CNI_NETNS=f"/run/netns/{self.containers[i]}",
                   CNI_IFNAME="eth0", CNI_PATH=os.path.dirname(self.plugin))
        return timed([self.plugin], self.eng.ns, env=env, input=self.conf)

    def add_ms(self, i: int) -> float:
        return self._call("ADD", i)

    def del_ms(self, i: int) -> float:
        return self._call("DEL", i)
