"""`service logs` across the nodes of a swarm (issue 17): each node reads its own tasks' logs and answers through
etcd (engine/servicelogs.py). Three hosts in namespaces, one etcd: the command on the host that runs no task
shows every task's lines behind Docker's prefixes; a killed node's tasks are said on stderr; a log too big for
an etcd request arrives cut, its end kept; no `logs/` key outlives a command, nor a dead requester past the
request lease's TTL."""
import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import changes, wait_for
from nsnet.engine.servicelogs import LEASE_TTL
from swarmnet import form, needs_etcd, swarm_hosts
from test_services import etcd_keys, replicas, running_tasks

pytestmark = needs_etcd

SCRIPT = "echo hello from $(hostname); echo bye from $(hostname); sleep 300"


@pytest.fixture
def three(tag):
    with swarm_hosts(tag, count=3) as (etcd, hosts):
        form(hosts)
        yield (etcd, *hosts)


def lines_of(host, *args):
    p = host.nsnet("service", "logs", *args)
    return p.stdout.splitlines(), p.stderr


def expected(tasks, *, which=("hello", "bye"), ids=12):
    return [f"lg.{t['Slot']}{'.' + t['ID'][:ids] if ids else ''}@{t['Node']}    | {w} from lg-{t['Slot']}"
            for t in tasks for w in which]


def test_service_logs_from_every_node_tail_ids_a_killed_node_and_a_cut(three):
    etcd, a, b, c = three
    a.nsnet("service", "create", "--name", "lg", "--replicas", "2", "--", "sh", "-c", SCRIPT)
    assert wait_for(lambda: replicas(c, "lg") == "2/2", timeout=10), c.nsnet("service", "ps", "lg").stdout
    tasks = sorted(running_tasks(c, "lg"), key=lambda t: t["Slot"])
    assert [t["Node"] for t in tasks] == ["host-a", "host-b"]   # fewest first, ties by name: C runs none

    # on C, which runs no task: both tasks' lines, slot order, Docker's prefix (task ID cut to 12)
    want = expected(tasks)
    assert wait_for(lambda: lines_of(c, "lg")[0] == want, timeout=5), lines_of(c, "lg")
    out, err = lines_of(c, "lg")
    assert err == ""
    assert lines_of(a, "lg")[0] == want          # on A, which reads its own task and asks B
    assert lines_of(b, tasks[0]["ServiceID"])[0] == want   # by ID
    assert lines_of(c, "--tail", "1", "lg")[0] == expected(tasks, which=("bye",))
    assert lines_of(c, "-n", "0", "lg")[0] == []
    assert lines_of(c, "--no-task-ids", "lg")[0] == expected(tasks, ids=0)
    assert lines_of(c, "--no-trunc", "lg")[0] == expected(tasks, ids=25)
    assert lines_of(c, "--no-trunc", "--no-task-ids", "--tail", "1", "lg")[0] == expected(tasks, which=("bye",), ids=0)
    assert etcd_keys(etcd, "logs/") == {}        # the request's lease revoked: its asks and answers are gone

    for verb in ("logs", "ps"):   # ps: a CLI call that reads etcd alone, for comparison
        took = []
        for host in (c, a, c, a, c, a):
            start = time.monotonic()
            host.nsnet("service", verb, "lg")
            took.append(time.monotonic() - start)
        print(f"service {verb} on C, A, ...: " + ", ".join(f"{t * 1000:.0f} ms" for t in took))
    api = ("import time\nfrom nsnet.client import Client\nc = Client()\nfor path in ('/services/lg/logs', "
           "'/services/lg/tasks'):\n    took = []\n    for i in range(20):\n        t = time.perf_counter(); c.get(path)\n"
           "        took.append(time.perf_counter() - t)\n    took.sort()\n"
           "    print(path, 'API p50 %.1f ms, max %.1f ms' % (took[10] * 1000, took[-1] * 1000))")
    print(c.sh(f"env NSNET_ROOT={c.root} {sys.executable} -c \"{api}\"").stdout, end="")

    # a log bigger than an etcd request (1.5 MiB): its end arrives, behind a line saying it is cut
    a.nsnet("service", "create", "--name", "big", "--replicas", "1", "--", "sh", "-c",
            "i=0; while [ $i -lt 30000 ]; do echo \"line $i $(printf '%070d' 0)\"; i=$((i+1)); done; "
            "echo last line; sleep 300")
    assert wait_for(lambda: replicas(a, "big") == "1/1", timeout=10)
    assert [t["Node"] for t in running_tasks(a, "big")] == ["host-c"]
    [bt] = running_tasks(a, "big")
    big = lambda: lines_of(a, "big")[0]
    assert wait_for(lambda: big()[-1:] == [f"big.1.{bt['ID'][:12]}@host-c    | last line"], timeout=20), big()[-2:]
    out = big()
    assert out[0].endswith("| [nsnet: earlier lines of this task's log are cut: a node's answer holds at most 1 MiB]")
    assert out[1].split("| ", 1)[1].startswith("line ") and 900_000 < sum(len(x.split("| ", 1)[1]) + 1 for x in out) <= 1 << 20
    assert lines_of(a, "--tail", "2", "big")[0] == [f"big.1.{bt['ID'][:12]}@host-c    | line 29999 {0:070d}",
                                                    f"big.1.{bt['ID'][:12]}@host-c    | last line"]
    assert etcd_keys(etcd, "logs/") == {}

    # B's daemon killed: its lease key stays until its TTL (renewed every TTL/3), and it never answers.
    os.kill(b.daemon_pid(), signal.SIGKILL)
    # A requester that dies while it waits (C's daemon, killed with its CLI): its keys outlive it by the
    # request lease's TTL, no longer.
    cli = subprocess.Popen(["ip", "netns", "exec", c.ns, sys.executable, "-m", "nsnet", "--root", c.root, "service",
                            "logs", "lg"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    asks_b = lambda: [k for k in etcd_keys(etcd, "logs/ask/") if k.startswith(f"logs/ask/{tasks[1]['NodeID']}/")]
    assert wait_for(asks_b, timeout=3)
    [dead_ask] = asks_b()
    cli.kill()
    cli.wait()
    os.kill(c.daemon_pid(), signal.SIGKILL)
    # A asks B too (still listed alive), in vain: A's own lines, one line for B on stderr, exit 0
    p = a.nsnet("service", "logs", "lg")
    assert p.returncode == 0, p.stderr
    assert p.stdout.splitlines() == expected(tasks[:1])
    assert p.stderr.splitlines() == ["Warning: node host-b did not answer within 5 s: logs of its tasks are not available"]
    assert dead_ask in etcd_keys(etcd, "logs/")   # A's request left nothing; the dead one's ask is still there
    dead = time.monotonic()
    assert wait_for(lambda: etcd_keys(etcd, "logs/") == {}, timeout=LEASE_TTL + 5, interval=0.5)
    print(f"the dead requester's keys vanished {time.monotonic() - dead:.1f} s after A's command (lease TTL {LEASE_TTL} s)")


def test_service_logs_bad_input_one_line_nothing_changed(three, host):
    etcd, a, b, c = three
    a.nsnet("service", "create", "--name", "web", "--replicas", "1", "--", "sleep", "300")
    assert wait_for(lambda: replicas(a, "web") == "1/1", timeout=10)
    for args, says in ((["service", "logs", "nosuch"], "no such service: nosuch"),
                       (["service", "logs", "--tail", "-1", "web"], "invalid --tail '-1'"),
                       (["service", "logs", "--tail", "x", "web"], "invalid --tail 'x'"),
                       (["service", "logs", "--follow", "web"], "--follow is not supported yet"),
                       (["service", "logs", "-f", "nosuch"], "--follow is not supported yet")):
        before, keys = a.state(), etcd_keys(etcd, "")
        p = a.nsnet(*args, check=False)
        assert p.returncode != 0 and says in p.stderr and len(p.stderr.strip().splitlines()) == 1, (args, p.stderr)
        assert p.stdout == ""
        assert changes(before, a.state()) == {}
        assert {k: v for k, v in etcd_keys(etcd, "").items() if not k.startswith(("alive/", "evidence/"))} == \
               {k: v for k, v in keys.items() if not k.startswith(("alive/", "evidence/"))}, args
    # not in a swarm: one line, as every service command
    host.nsnet("info")
    before = host.state()
    p = host.nsnet("service", "logs", "web", check=False)
    assert p.returncode != 0 and "not part of a swarm" in p.stderr and len(p.stderr.strip().splitlines()) == 1, p.stderr
    assert changes(before, host.state()) == {}
