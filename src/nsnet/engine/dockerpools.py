"""Docker's IPAM driver answered by nsnet's allocation: the pools (subnets) Docker's networks take and the
addresses in them.

Pools and addresses are records in nsnet's store (kinds `dockerpool`, `dockeraddress`): Docker does not
replay its networks or pools when a plugin restarts (its first call may be a RequestAddress on an old pool
ID), so everything must be there already. A pool's subnet is evidence for every later subnet choice, nsnet's
own networks' and other pools' alike (`evidence()`), and a pool is chosen, or an explicit one refused, on
the same evidence as `nsnet network create`.
"""
from __future__ import annotations

import ipaddress
import itertools
import logging
from typing import Callable

from .. import requests as rq
from ..drivers.base import SIZE_KEY
from ..errors import Conflict, NotFound, NsnetError
from ..facts import Evidence
from ..ipam.addresses import AddressPool, default_gateway
from ..ipam.evidence import overlapping, refusal
from ..ipam.pools import pick_subnet
from ..model import now_rfc3339
from ..store.records import Records
from . import plans
from .thread import on_kernel_thread

log = logging.getLogger("nsnet.engine")

# Record kinds: one host's (a Docker engine is), so under local/, never in a store hosts share.
POOL, ADDRESS = "local/dockerpool", "local/dockeraddress"
LOCAL_SPACE, GLOBAL_SPACE = "nsnet-local", "nsnet-global"   # Docker's address spaces, as this driver names them
# Docker asks for a network's gateway with this option (libnetwork's ipamapi.RequestAddressType).
REQUEST_TYPE, GATEWAY = "RequestAddressType", "com.docker.network.gateway"
# `--ipam-opt` keys: the prefix length from the pools (as `nsnet network create -o size=24`), and
# taking a subnet despite the evidence (as --allow-overlap).
ALLOW_OVERLAP = "allow-overlap"
_NSNET_HINT, _DOCKER_HINT = "pass --allow-overlap.", f"pass --ipam-opt {ALLOW_OVERLAP}=true."


class DockerPools:
    def __init__(self, store: Records, evidence: Callable[[], list[Evidence]], pools, lock, thread=None,
                 forget_flows: Callable[[list], None] = lambda ips: None):
        """`evidence`: the engine's (the host's and nsnet's networks', these pools' included).
        `forget_flows`: the kernel's; the tracked flows of an address given up would be evidence against
        its subnet for minutes (a bridge's IGMP joins are tracked too), so they go with it, as nsnet's own."""
        self.store, self._evidence, self._pools, self.lock, self.thread = store, evidence, pools, lock, thread
        self._forget_flows = forget_flows
        self.pools: dict[str, dict] = {d["id"]: d for d in store.list(POOL)}
        self.used: dict[str, set] = {pid: set() for pid in self.pools}
        # Each grant of an address gets a serial: the reclaim (dockerreclaim.py) tells an address held since
        # its first look from the same address released and given again meanwhile.
        self._serials = itertools.count()
        self.serial: dict[tuple, int] = {}   # (pool id, address) -> the serial of its grant
        for d in store.list(ADDRESS):
            if d["pool"] in self.used:
                self.used[d["pool"]].add(ipaddress.ip_address(d["address"]))
                self.serial[(d["pool"], d["address"])] = next(self._serials)
        self._plans: dict[str, AddressPool] = {}   # pool id -> its address plan over used[pool id]

    def evidence(self) -> list[Evidence]:
        return [Evidence("docker", ipaddress.ip_network(p["subnet"]),
                         f"the subnet of Docker IPAM pool {p['id'][:12]} (nsnet's IPAM driver)")
                for p in list(self.pools.values())]

    # ---- pools -----------------------------------------------------------------------------------

    @on_kernel_thread   # the host's evidence is read over netlink
    def request_pool(self, space: str, pool: str, sub_pool: str, options: dict, v6: bool) -> dict:
        if space not in (LOCAL_SPACE, ""):
            raise NsnetError(f"address space {space[:64]!r} is not served: nsnet's IPAM driver serves local "
                             f"networks ({LOCAL_SPACE}) only")
        with self.lock:
            found = self._evidence()
            if pool:
                subnet = rq.parse_network(pool, "subnet")
                rq.check_subnet(subnet)
                if subnet.version != (6 if v6 else 4):
                    raise NsnetError(f"subnet {subnet} is not an IPv{6 if v6 else 4} subnet")
                hits = overlapping(subnet, found)
                if hits and options.get(ALLOW_OVERLAP) != "true":
                    raise Conflict(refusal(subnet, hits).replace(_NSNET_HINT, _DOCKER_HINT))
            elif sub_pool:
                raise NsnetError("an ip-range needs a subnet: pass --subnet too")
            elif v6:
                raise NsnetError("nsnet has no IPv6 pools: pass an IPv6 --subnet")
            else:
                size = options.get(SIZE_KEY)
                if size is not None and not size.isdigit():
                    raise NsnetError(f"invalid ipam option {SIZE_KEY}={size[:20]!r}: give a prefix length such as 24")
                try:
                    subnet, skipped = pick_subnet(self._pools, found, size=int(size) if size else None)
                except NsnetError as e:   # its hints in Docker's words
                    raise NsnetError(str(e).replace("(-o size=24)", f"(--ipam-opt {SIZE_KEY}=24)")) from None
                plans.log_skipped(skipped)
            ip_range = str(rq.parse_network(sub_pool, "ip-range")) if sub_pool else None
            AddressPool(subnet, ip_range=ip_range)   # validates the ip-range
            doc = {"id": plans.new_id(), "subnet": str(subnet), "ip_range": ip_range, "gateway": None,
                   "created": now_rfc3339()}
            self.store.put(POOL, doc["id"], doc)
            self.pools[doc["id"]] = doc
            self.used[doc["id"]] = set()
            log.info("docker ipam: pool %s is %s", doc["id"][:12], doc["subnet"])
            return doc

    @on_kernel_thread
    def release_pool(self, pool_id: str) -> None:
        with self.lock:
            pool = self._pool(pool_id)
            with self.store.transaction():
                for addr in self.used[pool_id]:
                    self.store.delete(ADDRESS, _address_id(pool_id, addr))
                    self.serial.pop((pool_id, str(addr)), None)
                self.store.delete(POOL, pool_id)
            given_up = list(self.used.pop(pool_id))
            if pool["gateway"]:
                given_up.append(ipaddress.ip_address(pool["gateway"]))
            del self.pools[pool_id]
            self._plans.pop(pool_id, None)
            self._forget_flows(given_up)
            log.info("docker ipam: pool %s (%s) released", pool_id[:12], pool["subnet"])

    # ---- addresses -------------------------------------------------------------------------------

    def request_address(self, pool_id: str, address: str, options: dict) -> str:
        """The address as `ADDR/PREFIXLEN`: the one asked for, else the lowest free one."""
        with self.lock:
            pool = self._pool(pool_id)
            subnet = ipaddress.ip_network(pool["subnet"])
            ip = rq.parse_address(address, "address") if address else None
            if options.get(REQUEST_TYPE) == GATEWAY:
                ip = self._gateway(pool, subnet, ip)
            else:
                plan, used = self._plan(pool), self.used[pool_id]
                ip = plan.reserve(ip, used) if ip is not None else plan.allocate(used)
                self.store.put(ADDRESS, _address_id(pool_id, ip), {"pool": pool_id, "address": str(ip)})
                used.add(ip)
                self.serial[(pool_id, str(ip))] = next(self._serials)
            return f"{ip}/{subnet.prefixlen}"

    def _gateway(self, pool: dict, subnet, ip):
        ip = ip or default_gateway(subnet)
        if pool["gateway"] not in (None, str(ip)):
            raise Conflict(f"pool {pool['id'][:12]} has gateway {pool['gateway']} already")
        if ip in self.used[pool["id"]]:
            raise Conflict(f"address {ip} is already in use in {subnet}; pick another gateway")
        AddressPool(subnet, gateway=ip, ip_range=pool["ip_range"])   # validates: inside, not network/broadcast
        self.store.put(POOL, pool["id"], dict(pool, gateway=str(ip)))
        pool["gateway"] = str(ip)
        self._plans.pop(pool["id"], None)
        return ip

    @on_kernel_thread
    def release_address(self, pool_id: str, address: str) -> None:
        with self.lock:
            pool = self._pool(pool_id)
            ip = rq.parse_address(address, "address")
            if ip not in ipaddress.ip_network(pool["subnet"]):
                raise NsnetError(f"address {ip} is not in pool {pool['subnet']}")
            if str(ip) == pool["gateway"]:
                self.store.put(POOL, pool_id, dict(pool, gateway=None))
                pool["gateway"] = None
                self._plans.pop(pool_id, None)
            elif ip in self.used[pool_id]:
                self._release(pool, ip)
            else:
                return
            self._forget_flows([ip])

    def _release(self, pool: dict, ip) -> None:
        self.store.delete(ADDRESS, _address_id(pool["id"], ip))
        self.used[pool["id"]].discard(ip)
        self.serial.pop((pool["id"], str(ip)), None)
        self._plan(pool).release(ip)

    # ---- what Docker forgot (engine/dockerreclaim.py) ----------------------------------------------

    def held(self) -> tuple[dict, dict]:
        """The addresses given to Docker, (pool id, address) -> serial, and the pools' subnets."""
        with self.lock:
            return dict(self.serial), {pid: p["subnet"] for pid, p in self.pools.items()}

    @on_kernel_thread
    def reclaim(self, pool_id: str, address: str, serial: int) -> bool:
        """Release an address Docker forgot, if it is still the grant the looks saw."""
        with self.lock:
            if self.serial.get((pool_id, address)) != serial:
                return False
            self._release(self.pools[pool_id], ipaddress.ip_address(address))
            self._forget_flows([ipaddress.ip_address(address)])
            log.info("docker ipam: address %s of pool %s (%s) reclaimed: Docker shows it nowhere", address,
                     pool_id[:12], self.pools[pool_id]["subnet"])
            return True

    # ---- lookups ---------------------------------------------------------------------------------

    def _pool(self, pool_id: str) -> dict:
        pool = self.pools.get(pool_id)
        if pool is None:
            raise NotFound(f"pool {pool_id[:80]!r} is not one of nsnet's IPAM pools")
        return pool

    def _plan(self, pool: dict) -> AddressPool:
        plan = self._plans.get(pool["id"])
        if plan is None:
            plan = self._plans[pool["id"]] = AddressPool(pool["subnet"], gateway=pool["gateway"],
                                                         ip_range=pool["ip_range"])
        return plan


def _address_id(pool_id: str, ip) -> str:
    return f"{pool_id}/{ip}"
