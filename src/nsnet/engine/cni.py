"""The CNI plugin's calls, daemon side: a runtime's container attached to an nsnet network (ADD), detached
(DEL), checked (CHECK), the plugin's readiness (STATUS) and the attachments the runtime no longer knows
removed (GC).

An attachment is a sandbox record with netmode "cni" and no process: its namespace is the runtime's (a
path), its interface the runtime's CNI_IFNAME, its identity (network name, container ID, interface), and
`Sandbox.cni` holds those. So `nsnet ps`/`inspect`, the allocator, published ports and the firewall see it
as any sandbox, and a restarted daemon neither leaks nor gives out its address again: reconcile drops it
only when its namespace is gone (a reboot), and DEL is what removes it otherwise.

With "resolver": true the container gets nsnet's resolver at 127.0.0.11 (the network's names, the rest
forwarded), as nsnet's own sandboxes do, and the result's DNS points there; it costs the ADD an `nft` run
in the container's namespace (~5 ms), so it is asked for, not the default.
"""
from __future__ import annotations

import hashlib
import ipaddress
import logging
import os
import re

from .. import requests as rq
from ..drivers.base import MTU_KEY
from ..drivers.bridge import ICC_KEY, MASQ_KEY
from ..errors import KernelError, NsnetError
from ..kernel import ports as host_ports
from ..kernel.nft import run_first_in
from ..model import PortMapping, Sandbox, now_rfc3339
from . import cniresult, endpoints, plans
from .thread import on_kernel_thread

log = logging.getLogger("nsnet.engine")

# The spec's error codes (section 5), and nsnet's own (100 and up).
INVALID_ENV, UNKNOWN_CONTAINER, DECODING_FAILURE, INVALID_CONFIG, NOT_AVAILABLE = 4, 3, 6, 7, 50
REFUSED, CHECK_FAILED, EXISTS = 100, 101, 102
SUPPORTED = ("0.4.0", "1.0.0", "1.1.0")   # as the plugin says (cniplugin.py)
COMMANDS = ("ADD", "DEL", "CHECK", "STATUS", "GC")
CNI_LABEL = "nsnet.cni"     # on the networks a CNI ADD made
MAC_RE = re.compile(r"[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}")


class CniError(NsnetError):
    def __init__(self, code: int, msg: str, details: str = ""):
        super().__init__(msg)
        self.code, self.msg, self.details = code, msg, details

    def as_dict(self) -> dict:
        return {"code": self.code, "msg": self.msg, "details": self.details}


def attachment_id(network: str, container_id: str, ifname: str) -> str:
    """The sandbox ID of an attachment: the same for every call about it, whichever daemon answers."""
    return hashlib.sha256(f"cni\0{network}\0{container_id}\0{ifname}".encode()).hexdigest()


def netns_identity(path: str) -> tuple[int, int]:
    st = os.stat(path)
    return st.st_dev, st.st_ino


def attached(sb: Sandbox) -> bool:
    """Is the attachment's namespace still the one it was made in (not gone, not made anew at that path)?"""
    try:
        return list(netns_identity(sb.cni["netns"])) == list(sb.cni["netns_id"])
    except OSError:
        return False


class Cni:
    def __init__(self, engine):
        self.e, self.thread = engine, engine.thread

    @on_kernel_thread
    def call(self, call: dict) -> dict | None:
        """One plugin call (the plugin's body: Command, ContainerID, Netns, IfName, Args, Path, Config)."""
        conf = call["Config"]
        if call["Command"] not in COMMANDS:
            raise CniError(INVALID_ENV, f"unknown CNI_COMMAND: {call['Command'][:40]}")
        with self.e.lock:
            try:
                return getattr(self, "_" + call["Command"].lower())(call, conf)
            except CniError:
                raise
            except NsnetError as e:
                raise CniError(REFUSED, str(e)) from None

    # ---- ADD -------------------------------------------------------------------------------------

    def _add(self, call: dict, conf: dict) -> dict:
        e = self.e
        cid, ifname, path = call["ContainerID"], call["IfName"], call["Netns"]
        why = rq.ifname_problem(ifname)
        if why:
            raise CniError(INVALID_ENV, f"invalid CNI_IFNAME: {why}")
        sid = attachment_id(conf["name"], cid, ifname)
        if sid in e.state.sbs:
            raise CniError(EXISTS, f"container {cid} already has {ifname} on network {conf['name']}: DEL it first")
        ns_id = self._netns(path)
        net = self._network(conf)
        driver = e.driver(net)
        if not driver.builds_endpoints or driver.singleton:
            raise CniError(INVALID_CONFIG, f"network {net.name} is a {net.driver} network: a CNI attachment needs "
                                           f"one that builds interfaces (bridge, macvlan, ipvlan)")
        resolver = _bool_value(conf.get("resolver", False), "resolver")
        args = _cni_args(call["Args"])
        rc = conf.get("runtimeConfig") or {}
        ip4, ip6 = _static_ips(rc.get("ips") or ([args["IP"]] if args.get("IP") else []))
        mac = rc.get("mac") or args.get("MAC")
        if mac is not None and not (isinstance(mac, str) and MAC_RE.fullmatch(mac)):
            raise CniError(INVALID_CONFIG, f"invalid mac {str(mac)[:40]!r}: give six hex pairs, e.g. 02:42:ac:11:00:02")
        req = plans.request(driver, e.alloc, net, {"IP": ip4, "IP6": ip6})
        sb = Sandbox(id=sid, name=self._name(args.get("K8S_POD_NAME"), cid, ifname, sid), hostname="", created=now_rfc3339(), cmd=[],
                     auto_remove=True, netmode="cni", requests=[req], ports=self._ports(rc.get("portMappings")),
                     cni={"container_id": cid, "ifname": ifname, "netns": path, "netns_id": list(ns_id),
                          "network": conf["name"], "resolver": resolver and net.dns})
        sb.hostname = sb.name if _hostname_ok(sb.name) else sid[:12]
        sockets, ns, applied = [], None, False
        try:
            for p in sb.ports:
                sockets.append(host_ports.hold(p, shared=True))
            with e.store.transaction():
                e.state.save_sandbox(sb)   # "created": a restart undoes an ADD cut off before it ended
            ns = e.kernel.netns(path)
            if ns.index(ifname) is not None:
                raise CniError(EXISTS, f"interface {ifname} already exists in {path}")
            ep = endpoints.join(e, sb, net, req, default_route=True, ifname=ifname, ns=ns,
                                mac=mac.lower() if mac else None)
            if sb.cni["resolver"]:   # 127.0.0.11 inside, as in nsnet's own sandboxes
                ns.loopback_up()
                redirect = e.feed.attach(sb)
                if redirect:
                    run_first_in(path, redirect)
            sb.state, sb.started = "running", now_rfc3339()
            e.port_sockets[sb.id] = sockets
            with e.store.transaction():
                e.state.save_sandbox(sb)
            if sb.ports:
                applied = True
                e._apply_firewall()
        except BaseException:
            for s in sockets:
                s.close()
            endpoints.teardown(e, sb)
            if sb.id in e.state.sbs:
                with e.store.transaction():
                    e.state.drop_sandbox(sb)
            if applied:
                e._apply_firewall()
            raise
        finally:
            if ns is not None:
                ns.close()
        e.feed.notify()
        log.info("cni: %s %s attached to %s (%s)", cid, ifname, net.name, ep.ipv4)
        mtu = net.options.get(MTU_KEY)
        mine = cniresult.attachment(
            bridge=net.bridge, host_ifname=ep.host_ifname, ifname=ifname, mac=ep.mac, netns=path,
            addresses=[(a, g) for a, g in ((ep.ipv4, ep.gateway4), (ep.ipv6, ep.gateway6)) if a],
            mtu=int(mtu) if mtu else None,
            dns=[e.feed.server.address] if sb.cni["resolver"] and e.feed.server else [])
        return cniresult.shaped(conf["cniVersion"], cniresult.chained(_prev(conf), mine))

    def _netns(self, path: str) -> tuple[int, int]:
        """The identity of the runtime's namespace; refused when it is missing or this daemon's own."""
        if not path.startswith("/"):
            raise CniError(INVALID_ENV, f"invalid CNI_NETNS {path[:80]!r}: give the path of a network namespace")
        try:
            ident = netns_identity(path)
        except OSError as e:
            raise CniError(UNKNOWN_CONTAINER, f"network namespace {path} does not exist: {e.strerror}") from None
        if ident[1] == self.e.kernel.own_netns_inode:
            raise CniError(INVALID_ENV, f"CNI_NETNS {path} is the nsnet daemon's own network namespace")
        return ident

    def _network(self, conf: dict):
        """The nsnet network named by the configuration, made on first use (from the pools, or "subnet")."""
        e = self.e
        name, subnet = conf["name"], conf.get("subnet")
        if subnet is not None and not isinstance(subnet, str):
            raise CniError(INVALID_CONFIG, f"invalid subnet {str(subnet)[:40]!r}: give a CIDR string")
        net = next((n for n in e.state.nets.values() if n.name == name), None)
        if net is not None:
            if subnet and not any(_same_subnet(s.subnet, subnet) for s in net.subnets):
                raise CniError(INVALID_CONFIG, f"network {name} exists with subnet "
                                               f"{', '.join(s.subnet for s in net.subnets)}, not {subnet}")
            return net
        options = {}
        if "ipMasq" in conf:
            options[MASQ_KEY] = _bool(conf["ipMasq"], "ipMasq")
        if "isolation" in conf:  # isolated: its containers do not reach each other (Docker's ICC off)
            options[ICC_KEY] = _bool(not _bool_value(conf["isolation"], "isolation"), "isolation")
        if "mtu" in conf:
            options[MTU_KEY] = _mtu(conf["mtu"], "mtu")
        try:
            return e.create_network({"Name": name, "Driver": "bridge", "Subnets": [subnet] if subnet else [],
                                     "Options": options, "Labels": {CNI_LABEL: "true"}})
        except NsnetError as err:
            raise CniError(INVALID_CONFIG, f"cannot create network {name}: {err}") from None

    def _name(self, pod: str | None, cid: str, ifname: str, sid: str) -> str:
        """The runtime's name for the container (CNI_ARGS K8S_POD_NAME: the CRI's and Podman's), else its ID,
        when that is a valid, free name (others on its network resolve it)."""
        taken = {s.name for s in self.e.state.sbs.values()}
        for name in filter(None, (pod, cid, cid[:12], f"{cid[:12]}-{ifname}")):
            try:
                rq.check_name(name, "sandbox")
            except NsnetError:
                continue
            if name not in taken:
                return name
        return "cni-" + sid[:12]

    def _ports(self, mappings) -> list[PortMapping]:
        """runtimeConfig.portMappings, checked as `nsnet run -p` is."""
        if mappings is None:
            return []
        if not isinstance(mappings, list):
            raise CniError(INVALID_CONFIG, "runtimeConfig.portMappings must be a list")
        out = []
        for m in mappings:
            try:
                hport, cport = int(m["hostPort"]), int(m["containerPort"])
                proto = str(m.get("protocol") or "tcp").lower()
                host_ip = str(m.get("hostIP") or "0.0.0.0")
            except (KeyError, TypeError, ValueError):
                raise CniError(INVALID_CONFIG, f"invalid port mapping {str(m)[:80]}: needs hostPort and containerPort")
            spec = f"{host_ip}:{hport}:{cport}/{proto}" if ":" not in host_ip else f"[{host_ip}]:{hport}:{cport}/{proto}"
            try:
                p = rq.parse_port(spec)
            except NsnetError as e:
                raise CniError(INVALID_CONFIG, str(e)) from None
            for q in out:
                if rq.ports_clash(p, q):
                    raise CniError(INVALID_CONFIG, f"port {p.host_port}/{p.proto} is published twice")
            for other in self.e.state.sbs.values():
                if other.state == "running" and any(rq.ports_clash(p, q) for q in other.ports):
                    raise CniError(REFUSED, f"port {p.host_ip}:{p.host_port}/{p.proto} is already published by "
                                            f"sandbox {other.name}")
            out.append(p)
        return out

    # ---- DEL, CHECK, STATUS, GC ------------------------------------------------------------------

    def _del(self, call: dict, conf: dict) -> None:
        """Best effort and idempotent: nothing to remove is success, with or without the namespace."""
        sb = self.e.state.sbs.get(attachment_id(conf["name"], call["ContainerID"], call["IfName"]))
        if sb is not None:
            self._remove(sb)
        return None

    def _remove(self, sb: Sandbox) -> None:
        e = self.e
        if sb.state == "running":
            e.sandbox_exited(sb.id, None)   # endpoints, ports, firewall; the record goes (auto_remove)
        else:
            endpoints.teardown(e, sb)
            with e.store.transaction():
                e.state.drop_sandbox(sb)
            e.feed.notify()
        log.info("cni: %s %s detached from %s", sb.cni["container_id"], sb.cni["ifname"], sb.cni["network"])

    def _check(self, call: dict, conf: dict) -> None:
        e = self.e
        sb = e.state.sbs.get(attachment_id(conf["name"], call["ContainerID"], call["IfName"]))
        if sb is None or sb.state != "running":
            raise CniError(UNKNOWN_CONTAINER, f"container {call['ContainerID']} has no {call['IfName']} on "
                                              f"network {conf['name']}")
        if not attached(sb):
            raise CniError(CHECK_FAILED, f"network namespace {sb.cni['netns']} is gone")
        eps = e.state.endpoints_of_sandbox(sb)
        if not eps:
            raise CniError(CHECK_FAILED, f"{call['IfName']} has no endpoint on network {conf['name']}")
        ep = eps[0]
        if ep.host_ifname and e.kernel.index(ep.host_ifname) is None:
            raise CniError(CHECK_FAILED, f"host interface {ep.host_ifname} is gone")
        ns = e.kernel.netns(sb.cni["netns"])
        try:
            inside = ns.view()
        finally:
            ns.close()
        link = inside["links"].get(ep.ifname)
        if link is None:
            raise CniError(CHECK_FAILED, f"interface {ep.ifname} is gone from {sb.cni['netns']}")
        missing = [a for a in (ep.ipv4, ep.ipv6) if a and (link[0], a) not in inside["addrs"]]
        if not link[1]:
            missing.append("up")
        if ep.gateway4 and ep.gateway4 not in inside["gateways"]:
            missing.append(f"default route via {ep.gateway4}")
        prev = _prev(conf) or {}
        listed = {ip.get("address") for ip in prev.get("ips") or []}
        if prev and ep.ipv4 and ep.ipv4 not in listed:
            missing.append(f"{ep.ipv4} in prevResult")
        if missing:
            raise CniError(CHECK_FAILED, f"{ep.ifname} in {sb.cni['netns']} lacks {', '.join(missing)}")
        return None

    def _status(self, call: dict, conf: dict) -> None:
        """Ready unless the network exists and has no address left."""
        e = self.e
        net = next((n for n in e.state.nets.values() if n.name == conf["name"]), None)
        if net is None:
            return None
        for cfg in net.subnets:
            if ipaddress.ip_network(cfg.subnet).version != 4:
                continue
            try:
                e.alloc.release(net, [e.alloc.allocate(net, cfg, lambda a: None)])
            except NsnetError as err:
                raise CniError(NOT_AVAILABLE, f"network {net.name} cannot take another container: {err}") from None
        return None

    def _gc(self, call: dict, conf: dict) -> None:
        valid = conf.get("cni.dev/valid-attachments") or []
        if not isinstance(valid, list) or not all(isinstance(a, dict) for a in valid):
            raise CniError(INVALID_CONFIG, "cni.dev/valid-attachments must be a list of objects")
        keep = {(a.get("containerID"), a.get("ifname")) for a in valid}
        failed = []
        for sb in [s for s in self.e.state.sbs.values() if s.cni and s.cni["network"] == conf["name"]]:
            if (sb.cni["container_id"], sb.cni["ifname"]) in keep:
                continue
            try:
                self._remove(sb)
            except (NsnetError, KernelError, OSError) as err:
                failed.append(f"{sb.cni['container_id']} {sb.cni['ifname']}: {err}")
        if failed:
            raise CniError(REFUSED, f"GC could not remove {len(failed)} attachments", "; ".join(failed))
        return None


# ---- the configuration's pieces ----------------------------------------------------------------------

def _prev(conf: dict) -> dict | None:
    prev = conf.get("prevResult")
    if prev is not None and not isinstance(prev, dict):
        raise CniError(DECODING_FAILURE, "prevResult must be an object")
    return prev


def _cni_args(text: str) -> dict[str, str]:
    """CNI_ARGS: "K=V;K=V" (IP and MAC are the conventional ones nsnet reads)."""
    out = {}
    for pair in filter(None, (text or "").split(";")):
        k, sep, v = pair.partition("=")
        if not sep:
            raise CniError(INVALID_ENV, f"invalid CNI_ARGS pair {pair[:40]!r}: use KEY=VALUE")
        out[k] = v
    return out


def _static_ips(ips) -> tuple[str | None, str | None]:
    """runtimeConfig.ips (or CNI_ARGS IP=): at most one address per family, prefix length ignored."""
    if not isinstance(ips, list):
        raise CniError(INVALID_CONFIG, "runtimeConfig.ips must be a list")
    v4 = v6 = None
    for text in ips:
        try:
            addr = ipaddress.ip_interface(str(text)).ip
        except ValueError:
            raise CniError(INVALID_CONFIG, f"invalid IP {str(text)[:60]!r} in runtimeConfig.ips") from None
        if addr.version == 4:
            v4 = str(addr) if v4 is None else _twice(addr)
        else:
            v6 = str(addr) if v6 is None else _twice(addr)
    return v4, v6


def _twice(addr) -> None:
    raise CniError(INVALID_CONFIG, f"runtimeConfig.ips asks for two IPv{addr.version} addresses; nsnet gives one")


def _bool_value(v, key: str) -> bool:
    if not isinstance(v, bool):
        raise CniError(INVALID_CONFIG, f"{key} must be true or false, not {str(v)[:40]!r}")
    return v


def _bool(v, key: str) -> str:
    return "true" if _bool_value(v, key) else "false"


def _mtu(v, key: str) -> str:
    if not isinstance(v, int) or isinstance(v, bool) or not 68 <= v <= 65535:
        raise CniError(INVALID_CONFIG, f"mtu must be an integer from 68 to 65535, not {str(v)[:40]!r}")
    return str(v)


def _same_subnet(a: str, b: str) -> bool:
    try:
        return ipaddress.ip_network(a, strict=False) == ipaddress.ip_network(b, strict=False)
    except ValueError:
        return False


def _hostname_ok(name: str) -> bool:
    try:
        rq.check_hostname(name)
        return True
    except NsnetError:
        return False
