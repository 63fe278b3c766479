"""Figure 9: encrypted overlay networks (issue 16), beside the same tunnel kind carrying a bare VXLAN pair.

Two nsnet hosts on a switch namespace that runs etcd (figure 8's underlay), `swarm init` / `join`; an
encrypted overlay (`--opt encrypted`: VXLAN inside WireGuard, wireguard-go on this kernel) and a plain one.
- Throughput: iperf3 TCP (one stream) from a sandbox on host B to one on host A on the encrypted overlay,
  against a bare VXLAN pair inside a WireGuard tunnel of the same kind (wireguard-go, with the socket buffers
  nsnet gives its own) built by hand between the same two host namespaces: what nsnet adds to the crypto's
  own cost. Beside it: the same bare pair in wireguard-go as Debian ships it, and the plain overlay.
- Latency: ping p50 sandbox to sandbox on the encrypted overlay, against the same ping across the bare
  VXLAN-in-WireGuard pair.
"""
from __future__ import annotations

import os
import re
import statistics
import time

from common import Figure, Skip, have, sh, verdict
from fig_dataplane import _client
from fig_overlay import NET, seen_by, swarm_of
from peer_nsnet import NsnetEngine

from nsnet.kernel import wireguard


def _bare_tunnel(h, a: NsnetEngine, b: NsnetEngine, tag: str, port: int, net: int, widen: bool) -> str:
    """wireguard-go between the two host namespaces on UDP `port` (links f9<tag>a, f9<tag>b: wireguard-go's
    control sockets are machine-wide; nsnet's own tunnel is on 51820 of the same addresses), a VXLAN pair
    inside it (10.<net>.0.0/24 on the tunnel, 10.<net+1>.0.0/24 on VXLAN); A's address on the VXLAN link, with
    an iperf3 server on `port`. `widen`: the sockets get upstream wireguard-go's 7 MiB buffers, as nsnet's."""
    keys = []
    for eng in (a, b):
        private = sh(["wg", "genkey"], eng.ns).stdout.strip()
        path = os.path.join(h.tempdir("f9key"), "key")
        with open(path, "w") as f:
            f.write(private + "\n")
        public = sh(["wg", "pubkey"], eng.ns, input=private).stdout.strip()
        keys.append((path, public))
    vxlan = f"f9{tag}x"
    for i, eng in enumerate((a, b)):
        peer, name = f"{NET}.{3 - i}", f"f9{tag}{'ab'[i]}"
        # not captured: the process that stays would hold the pipes open
        sh(["wireguard-go", name], eng.ns, env={**os.environ, "LOG_LEVEL": "error"}, capture=False)
        h.defer(lambda ns=eng.ns, name=name: sh(["ip", "link", "del", name], ns, check=False))
        sh(["wg", "set", name, "private-key", keys[i][0], "listen-port", str(port), "peer", keys[1 - i][1],
            "endpoint", f"{peer}:{port}", "allowed-ips", f"10.{net}.0.{2 - i}/32"], eng.ns)
        sh(["ip", "addr", "add", f"10.{net}.0.{1 + i}/24", "dev", name], eng.ns)
        sh(["ip", "link", "set", name, "mtu", "1440", "up"], eng.ns)
        if widen:
            wireguard.widen_buffers(name, port)
        sh(["ip", "link", "add", vxlan, "type", "vxlan", "id", str(net), "local", f"10.{net}.0.{1 + i}",
            "dstport", str(port - 47000), "nolearning"], eng.ns)
        sh(["bridge", "fdb", "append", "00:00:00:00:00:00", "dev", vxlan, "dst", f"10.{net}.0.{2 - i}"], eng.ns)
        sh(["ip", "link", "set", vxlan, "mtu", "1390", "up"], eng.ns)
        sh(["ip", "addr", "add", f"10.{net + 1}.0.{1 + i}/24", "dev", vxlan], eng.ns)
    h.spawn(["iperf3", "-s", "-p", str(port)], a.ns)
    return f"10.{net + 1}.0.1"


def _ping_ms(ns, addr: str, n: int) -> list[float]:
    out = sh(["ping", "-c", str(n), "-i", "0.05", "-W", "1", addr], ns, check=False, timeout=n + 30).stdout
    return [float(t) for t in re.findall(r"time=([\d.]+) ms", out)]


WG_RUN = "/run/wireguard"


def _remove_if_empty(path: str) -> None:
    try:
        os.rmdir(path)
    except OSError:
        pass   # absent, or someone else's sockets in it


def run(ctx) -> Figure:
    h, q = ctx.h, ctx.quick
    fig = Figure("9", "Encrypted overlay across two hosts (VXLAN inside WireGuard)")
    for tool in ("iperf3", "wg", "wireguard-go"):
        if not have(tool):
            raise Skip(f"{tool} is not installed")
    if not os.path.isdir(WG_RUN):   # wireguard-go makes it for its control sockets: gone with the figure
        h.defer(_remove_if_empty, WG_RUN)
    mark = h.mark()
    _, (a, b) = swarm_of(h, "f9sw", ["f9a", "f9b"], ["a", "b"])
    a.create_network("sec", Driver="overlay", Attachable=True, Options={"encrypted": ""})
    a.create_network("ov", Driver="overlay", Attachable=True)
    for eng in (a, b):   # nsnet's tunnels: wireguard-go outlives its namespace, it ends with its link
        h.defer(lambda ns=eng.ns: [sh(["ip", "link", "del", n], ns, check=False) for n in
                                   re.findall(r"^\d+: (nswg\w+):", sh(["ip", "-o", "link"], ns, check=False).stdout, re.M)])
    seen_by(b, {"sec", "ov"})

    a.run("srv", "sec", ["iperf3", "-s", "-p", "5201"])
    a.run("psrv", "ov", ["iperf3", "-s", "-p", "5201"])
    client, pclient = b.run("cli", "sec"), b.run("pcli", "ov")
    srv_ip, psrv_ip = a.ip_of("srv", "sec"), a.ip_of("psrv", "ov")
    # The same tunnel kind with the buffers nsnet gives its own (the target's peer), and as Debian ships it.
    bare_ip = _bare_tunnel(h, a, b, "ww", 51821, 97, widen=True)
    stock_ip = _bare_tunnel(h, a, b, "wg", 51822, 95, widen=False)
    deadline = time.monotonic() + 10
    while not _ping_ms(client, srv_ip, 1) and time.monotonic() < deadline:
        time.sleep(0.1)

    enc, bare, stock, plain, shares = [], [], [], [], []
    for _ in range(ctx.iperf_reps):
        e = _client(client, srv_ip, 5201, ctx.iperf_seconds)
        r = _client(b.ns, bare_ip, 51821, ctx.iperf_seconds)
        enc.append(e)
        bare.append(r)
        stock.append(_client(b.ns, stock_ip, 51822, ctx.iperf_seconds))
        plain.append(_client(pclient, psrv_ip, 5201, ctx.iperf_seconds))
        shares.append(e / r)
    e_med, r_med, s_med = statistics.median(enc), statistics.median(bare), statistics.median(shares)
    fig.row(measure="cross-host TCP on the encrypted overlay", value=e_med, unit="Gbit/s",
            reps=f"{len(enc)}x{ctx.iperf_seconds}s", peer="bare VXLAN in wireguard-go, same buffers", peer_value=r_med, ratio=s_med,
            ratio_text=f"{s_med * 100:.0f}% of peer", target=">= 90% of the bare tunnel", verdict=verdict(s_med >= 0.9))
    fig.row(measure="cross-host TCP, bare VXLAN in wireguard-go as Debian ships it (beside)",
            value=statistics.median(stock), unit="Gbit/s", reps=f"{len(stock)}x{ctx.iperf_seconds}s",
            note="wireguard-go 0.0.20220316 keeps 208 KiB socket buffers; its receiver drops datagrams")
    fig.row(measure="cross-host TCP on the plain overlay (beside)", value=statistics.median(plain), unit="Gbit/s",
            reps=f"{len(plain)}x{ctx.iperf_seconds}s", note="no encryption: the price of WireGuard is the gap")

    n = 50 if q else 200
    e_ping, r_ping = _ping_ms(client, srv_ip, n), _ping_ms(b.ns, bare_ip, n)
    e50 = statistics.median(e_ping) if e_ping else None
    r50 = statistics.median(r_ping) if r_ping else None
    fig.row(measure="ping p50 on the encrypted overlay", value=e50, unit="ms", reps=f"{len(e_ping)}/{n}",
            peer="bare VXLAN in wireguard-go", peer_value=r50, target="extra <= the tunnel's own",
            note="extra = encrypted p50 - bare p50; the tunnel's own = bare p50",
            verdict=verdict(e50 is not None and r50 is not None and e50 - r50 <= r50))
    fig.data.update(encrypted_gbps=enc, bare_tunnel_gbps=bare, stock_tunnel_gbps=stock, plain_gbps=plain, encrypted_ping_ms=e_ping,
                    bare_tunnel_ping_ms=r_ping)
    h.close_upto(mark)
    return fig
