"""Sandboxes find each other by name through the engine's embedded resolver (real lookups)."""
import os
import shlex
import signal
import sys



FAKEDNS = os.path.join(os.path.dirname(__file__), "fakedns.py")


def getent(host, sandbox: str, name: str) -> list[str]:
    out = host.exec(sandbox, f"getent ahostsv4 {name}", check=False).stdout
    return sorted({line.split()[0] for line in out.splitlines()})


def dig(host, sandbox: str, *args: str) -> str:
    return host.exec(sandbox, "dig +short +time=2 +tries=1 @127.0.0.11 " + " ".join(args), check=False).stdout


def ip_on(host, sandbox, net):
    return host.json("inspect", sandbox)[0]["NetworkSettings"]["Networks"][net]["IPAddress"]


def test_names_aliases_networks_and_reverse(host):
    host.nsnet("network", "create", "red")
    host.nsnet("network", "create", "blue")
    host.nsnet("run", "-d", "--name", "web1", "--network", "red", "--network-alias", "web", "--", "sleep", "300")
    host.nsnet("run", "-d", "--name", "web2", "--network", "red", "--network-alias", "web", "--hostname", "w2",
               "--", "sleep", "300")
    host.nsnet("run", "-d", "--name", "client", "--network", "red", "--", "sleep", "300")
    host.nsnet("run", "-d", "--name", "stranger", "--network", "blue", "--", "sleep", "300")
    host.nsnet("run", "-d", "--name", "bridged", "--", "sleep", "300")      # default bridge: no names

    w1, w2 = ip_on(host, "web1", "red"), ip_on(host, "web2", "red")
    assert getent(host, "client", "web1") == [w1]
    assert getent(host, "client", "WEB1") == [w1]                           # case-insensitive
    assert getent(host, "client", "web") == sorted([w1, w2])               # alias: every holder
    assert getent(host, "client", "w2") == [w2]                            # hostname
    assert getent(host, "client", "web1.red") == [w1]
    assert getent(host, "client", "stranger") == []                        # another network: invisible
    assert getent(host, "stranger", "web1") == []
    assert dig(host, "client", "-x", w1).strip() == "web1.red."
    assert host.exec("client", "ping -c1 -W1 web2", check=False).returncode == 0
    assert "nameserver 127.0.0.11" not in host.exec("bridged", "cat /etc/resolv.conf").stdout
    # A sandbox on two networks is found on each by the address it has there.
    host.nsnet("network", "connect", "blue", "web1")
    assert getent(host, "stranger", "web1") == [ip_on(host, "web1", "blue")]
    names = host.json("network", "inspect", "red")[0]["Containers"]
    assert any(c["Name"] == "web2" and "web" in c["DNSNames"] and "w2" in c["DNSNames"] for c in names.values())


def test_records_follow_rm_and_survive_a_daemon_restart(host):
    host.nsnet("network", "create", "red")
    host.nsnet("run", "-d", "--name", "a", "--network", "red", "--", "sleep", "300")
    host.nsnet("run", "-d", "--name", "b", "--network", "red", "--", "sleep", "300")
    assert getent(host, "b", "a") == [ip_on(host, "a", "red")]
    host.nsnet("rm", "-f", "a")
    assert getent(host, "b", "a") == []                                     # gone at once
    host.nsnet("run", "-d", "--name", "c", "--network", "red", "--", "sleep", "300")
    os.kill(host.daemon_pid(), signal.SIGKILL)
    host.nsnet("ps")                                                        # a new daemon
    assert getent(host, "b", "c") == [ip_on(host, "c", "red")]
    assert getent(host, "c", "b") == [ip_on(host, "b", "red")]


def test_other_names_are_forwarded_to_the_hosts_resolver(host, machines):
    inet = machines.add("inet")
    machines.wire(host.ns, "203.0.113.1/24", inet, host.RESOLVER + "/24")
    upstream = machines.spawn(inet, f"{sys.executable} {FAKEDNS} {host.RESOLVER}")
    assert upstream.stdout.readline().strip() == "listening"
    host.nsnet("network", "create", "red")
    host.nsnet("run", "-d", "--name", "a", "--network", "red", "--", "sleep", "300")
    assert dig(host, "a", "example.test").strip() == "192.0.2.7"
    assert "status: NXDOMAIN" in host.exec("a", "dig +time=2 +tries=1 @127.0.0.11 nosuchbox", check=False).stdout
    upstream.kill()
    upstream.wait()
    out = host.exec("a", "dig +time=3 +tries=1 @127.0.0.11 other.test", check=False, timeout=10).stdout
    assert "status: SERVFAIL" in out
    assert getent(host, "a", "a") == [ip_on(host, "a", "red")]             # local names still answer


def test_malformed_packets_then_a_good_query(host):
    host.nsnet("network", "create", "red")
    host.nsnet("run", "-d", "--name", "a", "--network", "red", "--", "sleep", "300")
    junk = ("import socket; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); "
            "[s.sendto(p, ('127.0.0.11', 53)) for p in (b'', b'x', b'\\xff'*12, b'\\x00'*512, bytes(range(256))*2)]")
    host.exec("a", f"{sys.executable} -c \"{junk}\"")
    assert getent(host, "a", "a") == [ip_on(host, "a", "red")]


def test_the_resolver_answers_udp_and_tcp_beside_a_sandboxs_own_port_53_without_tracking_its_flows(host):
    """127.0.0.11:53 reaches the resolver over UDP and TCP, while the sandbox's own program keeps port 53
    on its other addresses (as Docker). The redirect is stateless: the sandbox's flows are not tracked."""
    netcheck = os.path.join(os.path.dirname(__file__), "netcheck.py")
    host.nsnet("network", "create", "red")
    host.nsnet("run", "-d", "--name", "dns", "--network", "red", "--", sys.executable, netcheck, "serve", "tcp", "53")
    host.nsnet("run", "-d", "--name", "b", "--network", "red", "--", "sleep", "300")
    dns_ip, b_ip = ip_on(host, "dns", "red"), ip_on(host, "b", "red")
    assert dig(host, "b", "dns").strip() == dns_ip
    assert dig(host, "b", "+tcp", "dns").strip() == dns_ip
    assert dig(host, "dns", "+tcp", "b").strip() == b_ip                   # beside its own :53 listener
    asked = host.exec("b", f"{sys.executable} {netcheck} ask tcp {dns_ip} 53", check=False).stdout.strip()
    assert asked == f"peer={b_ip}"                                          # its :53 is its own
    assert host.exec("b", "cat /proc/net/nf_conntrack").stdout.strip() == ""
    if tuple(map(int, os.uname().release.split(".")[:2])) >= (5, 16):   # the egress hook is there
        assert "table netdev nsnet_dns" in host.exec("b", "nft list tables").stdout   # loopback only


def test_a_ruleset_nftables_refuses_gives_way_to_the_next_alternative(host):
    """The resolver's redirect on a kernel without the loopback's egress hook: the output chain instead."""
    script = ("from nsnet.kernel.nft import OR, run_first\n"
              "run_first('table netdev t { chain c { type filter hook nosuchhook device lo priority 0; } }'"
              " + OR + 'table ip fallback { }')\n")
    host.sh(f"{sys.executable} -c {shlex.quote(script)}")
    tables = host.sh("nft list tables").stdout
    assert "table ip fallback" in tables and "table netdev t" not in tables


def lines_until(stream, enough, seconds: float) -> list[list[str]]:
    """Words of each line a child prints, until `enough(lines)` or the time is up. Read from the fd
    itself: the stream's buffer could hold lines that select() no longer reports."""
    import select
    import time

    lines, rest, deadline = [], b"", time.monotonic() + seconds
    while not enough(lines) and select.select([stream], [], [], max(0.0, deadline - time.monotonic()))[0]:
        chunk = os.read(stream.fileno(), 65536)
        if not chunk:
            break
        *done, rest = (rest + chunk).split(b"\n")
        lines += [line.decode().split() for line in done]
    return lines


def test_one_sandboxs_flood_of_unanswered_names_leaves_anothers_lookups_alone(host, machines):
    """Sandbox a floods names the upstream never answers, more than its 1,024 queries in flight (Docker's
    limit, per container); b's lookups, forwarded and local, are still answered. Each forwarded query
    leaves from a port of its own, and the flood's timeouts cost the log a line, not one per query."""
    import time

    inet = machines.add("inet")
    machines.wire(host.ns, "203.0.113.1/24", inet, host.RESOLVER + "/24")
    upstream = machines.spawn(inet, f"{sys.executable} {FAKEDNS} {host.RESOLVER} --silent .flood.test --log")
    assert upstream.stdout.readline().strip() == "listening"
    host.nsnet("network", "create", "red")
    for name in ("a", "b"):
        host.nsnet("run", "-d", "--name", name, "--network", "red", "--", "sleep", "300")
    flood = ("import socket, time, dns.message; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); "
             "[s.sendto(dns.message.make_query(f'n{i}.flood.test', 'A').to_wire(), ('127.0.0.11', 53)) "
             "or i % 50 or time.sleep(0.005) for i in range(1200)]")  # paced: no socket buffer overflows
    # first one lookup: the host's neighbour entry for the upstream is resolved (until then the kernel
    # queues at most 212992 bytes of packets to it, and drops the rest of a flood)
    assert dig(host, "a", "warm.example.test").strip() == "192.0.2.7"
    seen = lines_until(upstream.stdout, lambda lines: lines and lines[-1][1] == "warm.example.test", 5)
    t0 = time.monotonic()
    host.exec("a", f"{sys.executable} -c \"{flood}\"")
    seen = lines_until(upstream.stdout, lambda lines: len(lines) >= 1000, 5)
    assert len(seen) >= 1000                              # a's share is in flight, for the 4 s timeout
    assert time.monotonic() - t0 < 3.5
    assert dig(host, "b", "www.example.test").strip() == "192.0.2.7"
    assert getent(host, "b", "a") == [ip_on(host, "a", "red")]
    assert len({port for port, _ in seen}) == len(seen)   # a port of its own per forwarded query
    time.sleep(max(0.0, t0 + 6 - time.monotonic()))       # the flood's queries time out
    with open(os.path.join(host.root, "daemon.log")) as f:
        log = f.read()
    assert log.count("did not answer") == 1 and "Traceback" not in log, log[-3000:]


def test_a_sandbox_name_too_long_for_dns_breaks_no_lookup(host):
    """A 64-character sandbox name (written to the state directly: the CLI and API refuse it) cannot be
    a DNS label: its PTR answers give its next name that fits (its hostname), every other lookup is
    answered as before, and the log says so once, not once per query."""
    from nsnet.store.records import Records
    from nsnet.store.sqlite import SqliteKV

    host.nsnet("network", "create", "red")
    for name in ("a", "b"):
        host.nsnet("run", "-d", "--name", name, "--network", "red", "--", "sleep", "300")
    a_ip, b_ip = ip_on(host, "a", "red"), ip_on(host, "b", "red")
    os.kill(host.daemon_pid(), signal.SIGKILL)
    records = Records(SqliteKV(os.path.join(host.root, "state.db")))
    doc = next(d for d in records.list("sandbox") if d["name"] == "a")
    sid = doc["id"]
    records.put("sandbox", sid, {**doc, "name": "x" * 64})
    records.close()
    host.nsnet("ps")                                                        # a new daemon reads it
    for _ in range(10):
        for asker in (sid, "b"):
            assert dig(host, asker, "-x", a_ip).strip() == f"{sid[:12]}.red."
            assert dig(host, asker, "-x", b_ip).strip() == "b.red."
    assert getent(host, sid, "b") == [b_ip] and getent(host, "b", sid[:12]) == [a_ip]
    with open(os.path.join(host.root, "daemon.log")) as f:
        log = f.read()
    assert log.count("names DNS cannot carry") == 1 and "Traceback" not in log, log[-3000:]
