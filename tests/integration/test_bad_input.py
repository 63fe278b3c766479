"""Bad input is refused at the edge: once, in one line, before anything is saved or built.

The battery drives the real CLI (and, for what a shell cannot pass, the API) against one engine; after
each refusal the host must be exactly as before. Then a published port without a host port gets a free
ephemeral one, as Docker's, and real packets reach the sandbox through it.
"""
import json
import os
import sys

from conftest import changes, sh, wait_for

from nsnet.client import _Connection

NETCHECK = os.path.join(os.path.dirname(__file__), "netcheck.py")
PY = sys.executable
BR = "com.docker.network.bridge.name"
RUN = ("run", "-d", "--network", "good")
SLEEP = ("--", "sleep", "300")

BAD_CLI = [
    # 1. interface names: what nftables, /proc/sys and the kernel would choke on
    ("network", "create", "-o", f'{BR}=br"x', "x"),
    ("network", "create", "-o", f"{BR}=br*", "x"),
    ("network", "create", "-o", f"{BR}=br x", "x"),
    ("network", "create", "-o", f"{BR}=br\n", "x"),
    ("network", "create", "-o", f"{BR}=all", "x"),
    ("network", "create", "-o", f"{BR}=brü", "x"),
    ("network", "create", "-d", "macvlan", "-o", 'parent=eth"0', "--subnet", "10.98.0.0/24", "x"),
    ("network", "create", "-d", "ipvlan", "-o", "parent=eth*", "--subnet", "10.98.0.0/24", "x"),
    ("network", "create", "-d", "macvlan", "-o", "parent=a-very-long-parent", "--subnet", "10.98.0.0/24", "x"),
    # 3. subnets and addresses
    ("network", "create", "--allow-overlap", "--subnet", "127.0.0.0/8", "x"),
    ("network", "create", "--allow-overlap", "--subnet", "224.0.0.0/4", "x"),
    ("network", "create", "--allow-overlap", "--subnet", "169.254.0.0/16", "x"),
    ("network", "create", "--allow-overlap", "--subnet", "0.0.0.0/0", "x"),
    ("network", "create", "--allow-overlap", "--subnet", "10.98.0.1/32", "x"),
    ("network", "create", "--allow-overlap", "--subnet", "10.98.0.0/31", "x"),
    ("network", "create", "--allow-overlap", "--ipv6", "--subnet", "::1/128", "x"),
    ("network", "create", "--allow-overlap", "--ipv6", "--subnet", "ff00::/8", "x"),
    ("network", "create", "--allow-overlap", "--ipv6", "--subnet", "fe80::/64", "x"),
    ("network", "create", "--allow-overlap", "--ipv6", "--subnet", "fd00:98::/127", "x"),
    ("network", "create", "--subnet", "10.98.0.0/24", "--aux-address", "a=10.98.0.255", "x"),
    ("network", "create", "--subnet", "10.98.0.0/24", "--aux-address", "a=10.98.0.0", "x"),
    ("network", "create", "--subnet", "10.98.0.0/24", "--gateway", "10.98.0.0", "x"),
    ("network", "create", "--subnet", "10.98.0.0/24", "--ip-range", "10.97.0.0/25", "x"),
    RUN + ("--ip", "127.0.0.11") + SLEEP,                     # the sandboxes' resolver
    RUN + ("--ip", "172.30.0.0") + SLEEP,                     # network address
    RUN + ("--ip", "172.30.0.255") + SLEEP,                   # broadcast address
    RUN + ("--ip", "172.30.0.1") + SLEEP,                     # the gateway
    ("run", "-d", "--network", "dual", "--ip6", "fd00:77::") + SLEEP,   # subnet-router anycast
    ("run", "-d", "--network", "dual", "--ip6", "::1") + SLEEP,
    ("network", "connect", "--ip", "127.0.0.11", "dual", "holder"),
    # 4. names, aliases, hostnames, --dns, labels
    ("network", "create", "web\n"),
    ("network", "create", "a" * 64),
    ("run", "-d", "--name", "box\n", "--network", "good") + SLEEP,
    ("run", "-d", "--name", "a" * 64, "--network", "good") + SLEEP,
    ("run", "-d", "--name", "a..b", "--network", "good") + SLEEP,
    RUN + ("-h", "a" * 70) + SLEEP,
    RUN + ("-h", "a" * 64) + SLEEP,
    RUN + ("-h", "ok\n10.0.0.66 injected") + SLEEP,
    RUN + ("-h", "under_score") + SLEEP,
    ("run", "--network", "good", "-h", "ok\n10.0.0.66 injected", "--", "true"),   # foreground: the CLI's child
    RUN + ("--network-alias", "www\n") + SLEEP,
    RUN + ("--network-alias", "a" * 64) + SLEEP,
    RUN + ("--dns", "not-an-ip") + SLEEP,
    RUN + ("--dns", "") + SLEEP,
    ("network", "connect", "--alias", "x\n", "dual", "holder"),
    ("network", "create", "--label", "team=a\nb", "x"),
    ("network", "create", "-o", "com.docker.network.bridge.enable_ipv6=maybe", "x"),
    # 7. published ports
    RUN + ("-p", "[::1]:8081:80") + SLEEP,
    RUN + ("-p", "[::]:8081:80") + SLEEP,
    RUN + ("-p", "8000-8010:80") + SLEEP,
    RUN + ("-p", "8080:80/sctp") + SLEEP,
    RUN + ("-p", "127.0.0.1:80") + SLEEP,
    RUN + ("-p", "0:80") + SLEEP,
    RUN + ("-p", "70000:80") + SLEEP,
    RUN + ("-p", "224.0.0.1:8080:80") + SLEEP,
]

# What no shell passes in an argument (a NUL), straight to the API.
BAD_API = [
    ("POST", "/sandboxes", {"Name": "nul", "Hostname": "ok\x00", "Cmd": ["sleep", "300"],
                            "Networks": [{"Network": "good"}]}),
    ("POST", "/sandboxes", {"Name": "box\x00", "Cmd": ["sleep", "300"], "Networks": [{"Network": "good"}]}),
    ("POST", "/networks", {"Name": "xa", "Labels": {"k\x00": "v"}}),
    ("POST", "/networks", {"Name": "xb", "Options": {BR: "br\x00"}}),
    ("POST", "/sandboxes", {"Name": "argv", "Cmd": ["sleep", "3\x000"], "Networks": [{"Network": "good"}]}),
]


def test_bad_input_is_refused_once_in_one_line_and_changes_nothing(host):
    host.nsnet("network", "create", "--subnet", "172.30.0.0/24", "good")
    host.nsnet("network", "create", "--ipv6", "--subnet", "172.31.0.0/24", "--subnet", "fd00:77::/64", "dual")
    host.nsnet("run", "-d", "--name", "holder", "--network", "good", "--", "sleep", "300")
    failed = []   # every input that got through, not just the first: the report says which

    def check(what, ok: bool, why: str, before: dict) -> dict:
        after = host.state()
        if not ok or after != before:
            failed.append((what, why, changes(before, after)))
        return after

    state = host.state()
    for i, args in enumerate(BAD_CLI):
        # each network its own name: one that got through must not hide the next behind "already exists"
        args = tuple(f"x{i}" if a == "x" else a for a in args)
        p = host.nsnet(*args, check=False)
        err = p.stderr.strip()
        one_line = err.startswith("Error:") and len(err.splitlines()) == 1 and "Traceback" not in err
        state = check(args, p.returncode != 0 and one_line, f"exit {p.returncode}: {err[-300:]}", state)
    for method, path, body in BAD_API:
        conn = _Connection(os.path.join(host.root, "nsnet.sock"), timeout=30)
        try:
            status, payload = conn.request(method, path, json.dumps(body).encode())
        finally:
            conn.close()
        message = json.loads(payload).get("message", "")
        state = check(body, status == 400 and len(message.splitlines()) == 1, f"{status}: {message}", state)
    assert not failed, f"{len(failed)} of {len(BAD_CLI) + len(BAD_API)} got through:\n" + "\n".join(map(repr, failed))
    # Refused before anything was built: nothing failed half-way inside the daemon.
    with open(os.path.join(host.root, "daemon.log")) as f:
        assert "Traceback" not in f.read()


def test_a_port_without_host_port_gets_a_free_ephemeral_one_and_answers(host, machines):
    """`-p 127.0.0.1::80` and `-p 80`, as Docker: a free port from the kernel's ephemeral range, shown by
    inspect and ps, and real connections reach the sandbox through it."""
    pc = machines.add("pc")
    machines.wire(host.ns, "203.0.113.1/24", pc, "203.0.113.2/24")
    host.nsnet("network", "create", "red")
    for name, spec in (("local", "127.0.0.1::80"), ("all", "80")):
        host.nsnet("run", "-d", "--name", name, "--network", "red", "-p", spec, "--", PY, NETCHECK, "serve", "tcp", "80")
        assert wait_for(lambda: "listening" in host.nsnet("logs", name).stdout), host.nsnet("logs", name).stdout
    low, high = map(int, host.sh("cat /proc/sys/net/ipv4/ip_local_port_range").stdout.split())
    bound = {}
    for name, host_ip in (("local", "127.0.0.1"), ("all", "0.0.0.0")):
        (binding,) = host.json("inspect", name)[0]["NetworkSettings"]["Ports"]["80/tcp"]
        assert binding["HostIp"] == host_ip
        bound[name] = int(binding["HostPort"])
        assert low <= bound[name] <= high, binding
        assert f"{host_ip}:{bound[name]}->80/tcp" in host.nsnet("ps").stdout
    assert bound["local"] != bound["all"]
    ask = f"{PY} {NETCHECK} ask tcp"
    assert host.sh(f"{ask} 127.0.0.1 {bound['local']}", check=False).stdout.startswith("peer=")
    assert sh(f"ip netns exec {pc} {ask} 203.0.113.1 {bound['all']}", check=False).stdout.strip() == "peer=203.0.113.2"
    # 127.0.0.1 only: another machine does not get in through the local one's port.
    assert sh(f"ip netns exec {pc} {ask} 203.0.113.1 {bound['local']}", check=False).stdout.startswith("no answer")
    # Stopped, as Docker shows it: no port bound any more, the binding asked for kept in HostConfig.
    host.nsnet("stop", "-t", "0", "all")
    doc = host.json("inspect", "all")[0]
    assert doc["NetworkSettings"]["Ports"] == {} and "80/tcp" in doc["HostConfig"]["PortBindings"]
    assert "->80/tcp" not in next(line for line in host.nsnet("ps", "-a").stdout.splitlines() if " all " in f" {line} ")
