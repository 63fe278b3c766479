"""Services across the hosts of a swarm (issue 17): hosts are namespaces with their own daemons wired to etcd's
namespace (swarmnet.py). Real packets: each task answers with its own host name (netcheck.py whoami), the
service's name resolves to its VIP, connections to the VIP reach every task, `tasks.NAME` lists them, scaling
and removal follow on every host, and a dead node's tasks run again elsewhere."""
import ipaddress
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import changes, wait_for
from swarmnet import form, needs_etcd, network_names, swarm_hosts

pytestmark = needs_etcd
HERE = os.path.dirname(__file__)
NETCHECK = os.path.join(HERE, "netcheck.py")
PORT = 8080
TTL = 10   # cluster/membership.py


@pytest.fixture
def two(tag):
    with swarm_hosts(tag) as (etcd, (a, b)):
        form([a, b])
        yield etcd, a, b


def etcd_keys(etcd, prefix: str) -> dict:
    from nsnet.kernel import netns
    from nsnet.store.etcd import EtcdKV
    with netns.entered(f"/run/netns/{etcd.ns}"):
        kv = EtcdKV(etcd.endpoints)
        try:
            return {e.key: e.value for e in kv.list(prefix)}
        finally:
            kv.close()


def service_claims(etcd, net_id: str) -> dict:
    """The addresses claimed on a network by services (their VIPs), not by endpoints."""
    return {k: v for k, v in etcd_keys(etcd, f"addresses/{net_id}/").items() if v["id"].startswith("service:")}


def overlay(a, b, *args):
    a.nsnet("network", "create", "-d", "overlay", *args)
    assert wait_for(lambda: args[-1] in network_names(b), timeout=2)
    return a.json("network", "inspect", args[-1])[0]


def create(host, name, *args, replicas=3):
    return host.nsnet("service", "create", "--name", name, "--replicas", str(replicas), *args, "--",
                      sys.executable, NETCHECK, "whoami", str(PORT)).stdout.strip()


def replicas(host, name) -> str:
    rows = [line.split() for line in host.nsnet("service", "ls").stdout.splitlines()[1:]]
    return next((r[3] for r in rows if r[1] == name), "")


def running_tasks(host, name) -> list[dict]:
    return [t for t in host.json("service", "ps", name, "--format", "json")
            if t["DesiredState"] == "running" and t["Status"]["State"] == "running"]


def task_ips(host, name, net_id) -> list[str]:
    return sorted(a["Addresses"][0] for t in running_tasks(host, name) for a in t["NetworksAttachments"]
                  if a["Network"]["ID"] == net_id)


def getent(host, sandbox, name):
    out = host.exec(sandbox, f"getent ahostsv4 {name}", check=False).stdout
    return sorted({line.split()[0] for line in out.splitlines()})


def ask_many(host, sandbox, target, n) -> list[str]:
    """n connections from `sandbox` to target:PORT; each answer (host=...,env=...) or 'fail'."""
    script = (f"import socket\nfor i in range({n}):\n"
              f"    try:\n        c = socket.create_connection(({target!r}, {PORT}), timeout=2)\n"
              f"        print(c.recv(100).decode().strip()); c.close()\n"
              f"    except OSError as e:\n        print('fail', e)\n")
    return host.exec(sandbox, f"{sys.executable} -c \"{script}\"", timeout=120).stdout.splitlines()


def hosts_of(answers) -> set[str]:
    return {a.split(",")[0].removeprefix("host=") for a in answers}


def test_a_service_across_two_hosts_vip_names_scale_rm(two):
    etcd, a, b = two
    ov = overlay(a, b, "--attachable", "ov")
    sid = create(a, "web", "--network", "ov", "-e", "NETCHECK_ENV=blue")
    assert wait_for(lambda: replicas(b, "web") == "3/3", timeout=10), b.nsnet("service", "ps", "web").stdout
    tasks = running_tasks(b, "web")
    nodes = sorted(t["Node"] for t in tasks)
    assert nodes in (["host-a", "host-a", "host-b"], ["host-a", "host-b", "host-b"]), nodes   # fewest first

    doc = b.json("service", "inspect", "web")[0]
    assert doc["ID"] == sid and doc["Spec"]["Name"] == "web"
    assert doc["Spec"]["TaskTemplate"]["Networks"] == [{"Target": ov["Id"]}]
    assert doc["Spec"]["Mode"]["Replicated"]["Replicas"] == 3 and doc["Endpoint"]["Spec"]["Mode"] == "vip"
    [vip] = doc["Endpoint"]["VirtualIPs"]
    assert vip["NetworkID"] == ov["Id"] and vip["Addr"].startswith("10.0.1.") and vip["Addr"].endswith("/24")
    vip_ip = vip["Addr"].split("/")[0]
    ips = task_ips(b, "web", ov["Id"])
    assert len(set(ips)) == 3 and vip_ip not in ips

    # a standalone client on each host: the name is the VIP, tasks.web the tasks; the VIP reaches every task
    a.nsnet("run", "-d", "--name", "ca", "--network", "ov", "--", "sleep", "300")
    b.nsnet("run", "-d", "--name", "cb", "--network", "ov", "--", "sleep", "300")
    for h, c in ((a, "ca"), (b, "cb")):
        assert wait_for(lambda: getent(h, c, "web") == [vip_ip], timeout=3), getent(h, c, "web")
        assert getent(h, c, "tasks.web") == ips
        assert wait_for(lambda: hosts_of(ask_many(h, c, vip_ip, 30)) == {"web-1", "web-2", "web-3"}, timeout=5)
    answers = ask_many(a, "ca", "web", 20)
    assert all(x.endswith(",env=blue") for x in answers), answers

    # scale up: two more tasks, in rotation everywhere
    a.nsnet("service", "scale", "web=5")
    assert wait_for(lambda: replicas(a, "web") == "5/5", timeout=10)
    assert wait_for(lambda: len(getent(b, "cb", "tasks.web")) == 5, timeout=3)
    assert wait_for(lambda: hosts_of(ask_many(b, "cb", vip_ip, 60)) == {f"web-{i}" for i in range(1, 6)}, timeout=5)

    # scale down while a client keeps connecting through the VIP: no connection fails
    loop = subprocess.Popen(["ip", "netns", "exec", a.ns, sys.executable, "-m", "nsnet", "--root", a.root, "exec", "ca",
                             "--", sys.executable, "-c",
                             f"import socket,time\nend=time.time()+6\nwhile time.time()<end:\n"
                             f"    try:\n        c=socket.create_connection(('{vip_ip}',{PORT}),timeout=2); print(c.recv(100).decode().strip(), flush=True); c.close()\n"
                             f"    except OSError as e:\n        print('fail', e, flush=True)\n    time.sleep(0.01)\n"],
                            stdout=subprocess.PIPE, text=True)
    time.sleep(1)
    b.nsnet("service", "scale", "web=2")
    out = loop.communicate(timeout=30)[0].splitlines()
    assert out and not [x for x in out if x.startswith("fail")], [x for x in out if x.startswith("fail")][:5]
    assert wait_for(lambda: replicas(a, "web") == "2/2" and len(b.json("service", "ps", "web", "--format", "json")) == 2,
                    timeout=10)
    assert hosts_of(ask_many(a, "ca", vip_ip, 30)) == {"web-1", "web-2"}
    assert len(getent(a, "ca", "tasks.web")) == 2

    # rm: gone everywhere, its tasks' sandboxes, names and VIP too
    a.nsnet("service", "rm", "web")
    for h in (a, b):
        assert wait_for(lambda: [s["Name"] for s in h.json("ps", "-a", "--format", "json")] in (["/ca"], ["/cb"], ["ca"], ["cb"]),
                        timeout=10), h.nsnet("ps", "-a").stdout
        assert "web" not in h.nsnet("service", "ls").stdout
    assert etcd_keys(etcd, "tasks/") == {} and etcd_keys(etcd, "services/") == {}
    assert f"addresses/{ov['Id']}/{vip_ip}" not in etcd_keys(etcd, "addresses/")
    assert wait_for(lambda: getent(a, "ca", "web") == [] and getent(b, "cb", "tasks.web") == [], timeout=3)


def test_a_dead_nodes_tasks_run_again_elsewhere(two):
    etcd, a, b = two
    ov = overlay(a, b, "--attachable", "ov")
    create(a, "web", "--network", "ov", replicas=2)
    assert wait_for(lambda: replicas(a, "web") == "2/2", timeout=10)
    assert sorted(t["Node"] for t in running_tasks(a, "web")) == ["host-a", "host-b"]
    a.nsnet("run", "-d", "--name", "ca", "--network", "ov", "--", "sleep", "300")
    vip = a.json("service", "inspect", "web")[0]["Endpoint"]["VirtualIPs"][0]["Addr"].split("/")[0]

    os.kill(b.daemon_pid(), signal.SIGKILL)
    b.sh("ip link set up0 down")                  # and cut off: its sandboxes keep running, unreachable
    killed = time.monotonic()
    assert wait_for(lambda: replicas(a, "web") == "2/2" and
                    [t["Node"] for t in running_tasks(a, "web")] == ["host-a", "host-a"], timeout=TTL + 10, interval=0.2)
    took = time.monotonic() - killed
    print(f"B's task ran again on A after {took:.1f} s")
    assert took <= TTL + 5, f"B's task ran again on A only after {took:.1f} s"
    # in rotation: the VIP reaches both tasks, now both on A; the dead one is no longer in tasks.web
    assert wait_for(lambda: hosts_of(ask_many(a, "ca", vip, 20)) == {"web-1", "web-2"}, timeout=3)
    assert getent(a, "ca", "tasks.web") == task_ips(a, "web", ov["Id"])

    # B comes back: its daemon (started again by any call) finds its old task moved and stops that sandbox
    b.sh("ip link set up0 up")
    b.nsnet("ps")
    assert wait_for(lambda: b.json("ps", "-a", "--format", "json") == [], timeout=10), b.nsnet("ps", "-a").stdout
    assert replicas(b, "web") == "2/2" and [t["Node"] for t in running_tasks(b, "web")] == ["host-a", "host-a"]


def test_dnsrr_restart_conditions_and_a_killed_task(two):
    etcd, a, b = two
    overlay(a, b, "--attachable", "ov")
    create(a, "rr", "--network", "ov", "--endpoint-mode", "dnsrr", replicas=2)
    assert wait_for(lambda: replicas(a, "rr") == "2/2", timeout=10)
    a.nsnet("run", "-d", "--name", "ca", "--network", "ov", "--", "sleep", "300")
    ips = task_ips(a, "rr", a.json("network", "inspect", "ov")[0]["Id"])
    assert wait_for(lambda: getent(a, "ca", "rr") == ips, timeout=3)   # dnsrr: the name is the tasks
    assert a.json("service", "inspect", "rr")[0]["Endpoint"]["VirtualIPs"] == []
    assert hosts_of(ask_many(a, "ca", "rr", 10)) <= {"rr-1", "rr-2"}

    # a task whose process is killed runs again (restart condition any, the default)
    [mine] = [t for t in running_tasks(a, "rr") if t["Node"] == "host-a"]
    pid = a.json("inspect", f"rr.{mine['Slot']}.{mine['ID']}")[0]["State"]["Pid"]
    os.kill(pid, signal.SIGKILL)
    assert wait_for(lambda: any(s["Name"].lstrip("/") == f"rr.{mine['Slot']}.{mine['ID']}" and s["State"]["Running"]
                                and s["State"]["Pid"] != pid for s in a.json("ps", "--format", "json")), timeout=8)
    assert wait_for(lambda: replicas(a, "rr") == "2/2", timeout=5)

    # exits 0 with --restart-condition on-failure: complete, not started again; exits 3: restarted
    for name, code, cond, want in (("ok", 0, "on-failure", "complete"), ("once", 0, "none", "complete"),
                                   ("bad", 3, "none", "failed")):
        a.nsnet("service", "create", "--name", name, "--replicas", "1", "--network", "ov", "--restart-condition", cond,
                "--", "sh", "-c", f"sleep 0.5; exit {code}")
        assert wait_for(lambda: [t["Status"]["State"] for t in a.json("service", "ps", name, "--format", "json")] == [want],
                        timeout=10), a.nsnet("service", "ps", name).stdout
        time.sleep(1.5)   # longer than the runner's restart delay: still not started again
        assert [t["Status"]["State"] for t in a.json("service", "ps", name, "--format", "json")] == [want]
    a.nsnet("service", "create", "--name", "flaky", "--replicas", "1", "--network", "ov", "--restart-condition",
            "on-failure", "--", "sh", "-c", "echo run $$ failing; sleep 0.3; exit 3")
    [flaky] = a.json("service", "ps", "flaky", "--format", "json")
    assert wait_for(lambda: etcd_keys(etcd, f"tasks/{flaky['ID']}")[f"tasks/{flaky['ID']}"]["restarts"] >= 2, timeout=10)
    # service logs shows the runs that exited too (each sandbox goes with its run), from the other host
    runs = [line for line in b.nsnet("service", "logs", "flaky").stdout.splitlines() if "failing" in line]
    assert len(runs) >= 2 and len({line.split()[-2] for line in runs}) == len(runs), runs
    kept = os.path.join((a if flaky["Node"] == "host-a" else b).root, "tasklogs", f"{flaky['ID']}.log")
    assert os.path.exists(kept)
    a.nsnet("service", "rm", "flaky")   # and its kept log goes with its task
    assert wait_for(lambda: not os.path.exists(kept), timeout=10)


def test_bad_input_one_line_nothing_changed(two, host):
    etcd, a, b = two
    overlay(a, b, "ov")                        # not attachable: fine for services
    a.nsnet("network", "create", "loc")        # a bridge network
    create(a, "web", "--network", "ov", replicas=1)
    assert wait_for(lambda: replicas(a, "web") == "1/1", timeout=10)
    for args, says in (
            (["service", "create", "--name", "x", "--network", "loc", "--", "sleep", "1"], "not an overlay network"),
            (["service", "create", "--name", "x", "--replicas", "-1", "--network", "ov", "--", "sleep", "1"], "invalid replicas -1"),
            (["service", "create", "--name", "x", "--network", "nope", "--", "sleep", "1"], "nope"),
            (["service", "create", "--name", "web", "--network", "ov", "--", "sleep", "1"], "service web already exists"),
            (["service", "create", "--name", "x", "--network", "ov"], "no command given"),
            (["service", "scale", "web=-1"], "invalid replicas -1"),
            (["service", "scale", "nosuch=2"], "no such service: nosuch"),
            (["service", "ps", "nosuch"], "no such service: nosuch"),
            (["service", "inspect", "nosuch"], "no such service: nosuch"),
            (["service", "rm", "nosuch"], "no such service: nosuch"),
            (["network", "rm", "ov"], "network ov is in use by service web")):
        before, keys = a.state(), etcd_keys(etcd, "")
        p = a.nsnet(*args, check=False)
        assert p.returncode != 0 and says in p.stderr and len(p.stderr.strip().splitlines()) == 1, (args, p.stderr)
        assert changes(before, a.state()) == {}
        assert {k: v for k, v in etcd_keys(etcd, "").items() if not k.startswith(("alive/", "evidence/"))} == \
               {k: v for k, v in keys.items() if not k.startswith(("alive/", "evidence/"))}, args
    # not in a swarm: every service command says so in one line
    host.nsnet("info")   # its daemon runs (and has made its default bridge) before the first look
    for args in (["service", "ls"], ["service", "ps", "web"], ["service", "inspect", "web"], ["service", "scale", "web=2"],
                 ["service", "rm", "web"], ["service", "create", "--name", "x", "--", "sleep", "1"]):
        before = host.state()
        p = host.nsnet(*args, check=False)
        assert p.returncode != 0 and "not part of a swarm" in p.stderr and len(p.stderr.strip().splitlines()) == 1, p.stderr
        assert changes(before, host.state()) == {}


def loop_over(host, sandbox, target, seconds):
    """A client connecting to target:PORT over and over for `seconds`, printing each answer or 'fail'."""
    return subprocess.Popen(
        ["ip", "netns", "exec", host.ns, sys.executable, "-m", "nsnet", "--root", host.root, "exec", sandbox, "--",
         sys.executable, "-c",
         f"import socket,time\nend=time.time()+{seconds}\nwhile time.time()<end:\n"
         f"    try:\n        c=socket.create_connection(('{target}',{PORT}),timeout=2); print(c.recv(100).decode().strip(), flush=True); c.close()\n"
         f"    except OSError as e:\n        print('fail', e, flush=True)\n    time.sleep(0.01)\n"],
        stdout=subprocess.PIPE, text=True)


def test_update_moves_a_service_to_another_network_without_downtime(two):
    etcd, a, b = two
    ov1, ov2 = overlay(a, b, "--attachable", "ov1"), overlay(a, b, "--attachable", "ov2")
    create(a, "web", "--network", "ov1")
    assert wait_for(lambda: replicas(a, "web") == "3/3", timeout=10)
    a.nsnet("run", "-d", "--name", "c1", "--network", "ov1", "--", "sleep", "300")
    b.nsnet("run", "-d", "--name", "c2", "--network", "ov2", "--", "sleep", "300")
    vip1 = a.json("service", "inspect", "web")[0]["Endpoint"]["VirtualIPs"][0]["Addr"].split("/")[0]
    assert wait_for(lambda: getent(a, "c1", "web") == [vip1], timeout=3)

    loop = loop_over(a, "c1", vip1, 8)
    time.sleep(0.5)
    a.nsnet("service", "update", "--network-add", "ov2", "--update-parallelism", "2", "web")
    out = loop.communicate(timeout=60)[0].splitlines()
    assert out and not [x for x in out if x.startswith("fail")], [x for x in out if x.startswith("fail")][:5]
    doc = b.json("service", "inspect", "web")[0]
    assert [n["Target"] for n in doc["Spec"]["TaskTemplate"]["Networks"]] == [ov1["Id"], ov2["Id"]]
    vips = {v["NetworkID"]: v["Addr"].split("/")[0] for v in doc["Endpoint"]["VirtualIPs"]}
    assert vips[ov1["Id"]] == vip1 and set(vips) == {ov1["Id"], ov2["Id"]}
    assert wait_for(lambda: replicas(a, "web") == "3/3" and len(a.json("service", "ps", "web", "--format", "json")) == 3,
                    timeout=10)
    assert all(len(t["NetworksAttachments"]) == 2 for t in running_tasks(a, "web"))     # every task replaced
    # on the new network: its own VIP, reaching every task; tasks.web its addresses there
    assert wait_for(lambda: getent(b, "c2", "web") == [vips[ov2["Id"]]], timeout=3)
    assert getent(b, "c2", "tasks.web") == task_ips(b, "web", ov2["Id"])
    assert wait_for(lambda: hosts_of(ask_many(b, "c2", "web", 30)) == {"web-1", "web-2", "web-3"}, timeout=5)

    # and off the first one, again without a failed request on the network that stays
    loop = loop_over(b, "c2", vips[ov2["Id"]], 8)
    time.sleep(0.5)
    b.nsnet("service", "update", "--network-rm", "ov1", "web")
    out = loop.communicate(timeout=60)[0].splitlines()
    assert out and not [x for x in out if x.startswith("fail")], [x for x in out if x.startswith("fail")][:5]
    assert wait_for(lambda: getent(a, "c1", "web") == [] and getent(a, "c1", "tasks.web") == [], timeout=5)
    assert [v["NetworkID"] for v in a.json("service", "inspect", "web")[0]["Endpoint"]["VirtualIPs"]] == [ov2["Id"]]
    assert f"addresses/{ov1['Id']}/{vip1}" not in etcd_keys(etcd, "addresses/")

    # bad updates: one line, nothing changed
    a.nsnet("network", "create", "loc")
    for args, says in ((["--network-add", "loc"], "not an overlay network"), (["--network-rm", "ov1"], "is not on network ov1"),
                       (["--network-add", "ov2"], "on network ov2 already"), (["--replicas", "-1"], "invalid replicas -1")):
        before, keys = a.state(), etcd_keys(etcd, "services/")
        p = a.nsnet("service", "update", *args, "web", check=False)
        assert p.returncode != 0 and says in p.stderr and len(p.stderr.strip().splitlines()) == 1, (args, p.stderr)
        assert changes(before, a.state()) == {} and etcd_keys(etcd, "services/") == keys


def envs_of(answers) -> set[str]:
    return {a.split(",env=")[1] if ",env=" in a else a for a in answers}


def test_update_of_env_command_and_force_rolls_without_a_failed_request(two):
    etcd, a, b = two
    overlay(a, b, "--attachable", "ov")
    create(a, "web", "--network", "ov", "-e", "NETCHECK_ENV=blue", "-e", "KEEP=1")
    assert wait_for(lambda: replicas(a, "web") == "3/3", timeout=10)
    a.nsnet("run", "-d", "--name", "c1", "--network", "ov", "--", "sleep", "300")
    vip = a.json("service", "inspect", "web")[0]["Endpoint"]["VirtualIPs"][0]["Addr"].split("/")[0]
    assert wait_for(lambda: envs_of(ask_many(a, "c1", vip, 10)) == {"blue"}, timeout=5)

    loop = loop_over(a, "c1", vip, 8)
    time.sleep(0.5)
    b.nsnet("service", "update", "--env-add", "NETCHECK_ENV=green", "web")   # from the node that did not create it
    out = loop.communicate(timeout=60)[0].splitlines()
    assert out and not [x for x in out if x.startswith("fail")], [x for x in out if x.startswith("fail")][:5]
    assert envs_of(out[-20:]) == {"green"}, out[-20:]
    assert a.json("service", "inspect", "web")[0]["Spec"]["TaskTemplate"]["ContainerSpec"]["Env"] == \
        ["NETCHECK_ENV=green", "KEEP=1"]   # replaced in place, the other kept

    # --force replaces every task with nothing changed; --env-rm, then --args (the command) roll too
    first = {t["ID"] for t in running_tasks(a, "web")}
    a.nsnet("service", "update", "--force", "--update-parallelism", "3", "web")
    assert wait_for(lambda: len(running_tasks(a, "web")) == 3 and not first & {t["ID"] for t in running_tasks(a, "web")},
                    timeout=10)
    a.nsnet("service", "update", "--env-rm", "NETCHECK_ENV", "--update-parallelism", "3", "web")
    assert wait_for(lambda: envs_of(ask_many(a, "c1", vip, 10)) == {""}, timeout=10)
    a.nsnet("service", "update", "--update-parallelism", "3", "--args",
            f"env NETCHECK_ENV='red now' {sys.executable} {NETCHECK} whoami {PORT}", "web")
    assert wait_for(lambda: envs_of(ask_many(a, "c1", vip, 10)) == {"red now"}, timeout=10)
    assert a.json("service", "inspect", "web")[0]["Spec"]["TaskTemplate"]["ContainerSpec"]["Command"][:2] == \
        ["env", "NETCHECK_ENV=red now"]
    assert wait_for(lambda: len(a.json("service", "ps", "web", "--format", "json")) == 3, timeout=10)   # old ones gone

    for args, says in ((["--env-add", "NOVALUE"], "invalid env 'NOVALUE'"), (["--env-rm", "A=B"], "invalid --env-rm"),
                       (["--args", ""], "the tasks need a command"), (["--args", "sh -c 'open"], "invalid command")):
        before, keys = a.state(), etcd_keys(etcd, "")
        p = a.nsnet("service", "update", *args, "web", check=False)
        assert p.returncode != 0 and says in p.stderr and len(p.stderr.strip().splitlines()) == 1, (args, p.stderr)
        assert changes(before, a.state()) == {}
        assert {k: v for k, v in etcd_keys(etcd, "").items() if not k.startswith(("alive/", "evidence/"))} == \
               {k: v for k, v in keys.items() if not k.startswith(("alive/", "evidence/"))}, args


def update_status(host, name) -> dict:
    return host.json("service", "inspect", name)[0].get("UpdateStatus", {})


def test_a_rolling_update_outlives_the_daemon_that_drove_it(two):
    """B's daemon drives an update and dies midway (cut off too): after its lease ends, A's task runner takes
    the update over and finishes it; `UpdateStatus` says how it went, as Docker's does."""
    etcd, a, b = two
    overlay(a, b, "--attachable", "ov")
    create(a, "web", "--network", "ov", "-e", "NETCHECK_ENV=blue", replicas=4)
    assert wait_for(lambda: replicas(a, "web") == "4/4", timeout=10)
    a.nsnet("run", "-d", "--name", "c1", "--network", "ov", "--", "sleep", "300")
    vip = a.json("service", "inspect", "web")[0]["Endpoint"]["VirtualIPs"][0]["Addr"].split("/")[0]
    assert "UpdateStatus" not in a.json("service", "inspect", "web")[0]   # never updated

    driver = subprocess.Popen(["ip", "netns", "exec", b.ns, sys.executable, "-m", "nsnet", "--root", b.root,
                               "service", "update", "--env-add", "NETCHECK_ENV=green", "--update-delay", "1s", "web"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert wait_for(lambda: "green" in envs_of(ask_many(a, "c1", vip, 8)), timeout=10)   # one batch done
        assert update_status(a, "web")["State"] == "updating"
        os.kill(b.daemon_pid(), signal.SIGKILL)
        b.sh("ip link set up0 down")
        assert driver.wait(timeout=10) != 0                    # its CLI lost its daemon
    finally:
        driver.kill()
        driver.wait()
    assert wait_for(lambda: update_status(a, "web").get("State") == "completed", timeout=TTL + 30, interval=0.5), \
        update_status(a, "web")
    assert wait_for(lambda: replicas(a, "web") == "4/4", timeout=10)
    assert envs_of(ask_many(a, "c1", vip, 20)) == {"green"}
    assert [t["Node"] for t in running_tasks(a, "web")] == ["host-a"] * 4   # B's moved, B being Down
    b.sh("ip link set up0 up")
    b.nsnet("ps")   # B again: it stops its old sandboxes (their tasks moved), and takes nothing back
    assert wait_for(lambda: b.json("ps", "-a", "--format", "json") == [], timeout=10), b.nsnet("ps", "-a").stdout
    assert update_status(b, "web")["State"] == "completed"


# ---- published ports: the routing mesh (ingress) and mode=host ---------------------------------------------

SWITCH = "192.168.213"   # swarmnet.py's underlay: the switch (etcd's namespace) at .1, host i at .2+i


@pytest.fixture
def three(tag):
    with swarm_hosts(tag, count=3) as (etcd, hosts):
        form(hosts)
        yield (etcd, *hosts)


def address_of(host) -> str:
    """The host's underlay address: where a client outside the hosts reaches its published ports."""
    return host.sh("ip -4 -o addr show dev up0").stdout.split()[3].split("/")[0]


def ask_from_outside(etcd, target: str, port: int, n: int) -> list[str]:
    """n connections from the switch's namespace (a client on none of the hosts) to target:port; each
    answer, 'refused', or 'fail ...'."""
    script = (f"import socket\nfor i in range({n}):\n"
              f"    try:\n        c = socket.create_connection(({target!r}, {port}), timeout=2)\n"
              f"        print(c.recv(100).decode().strip() or 'empty'); c.close()\n"
              f"    except ConnectionRefusedError:\n        print('refused')\n"
              f"    except OSError as e:\n        print('fail', e)\n")
    return subprocess.run(["ip", "netns", "exec", etcd.ns, sys.executable, "-c", script], capture_output=True,
                          text=True, timeout=120).stdout.splitlines()


def mesh_sandbox(host) -> dict | None:
    """The host's ingress sandbox (nsnet's own: `ps` does not list it, as `docker ps` does not Docker's)."""
    p = host.nsnet("inspect", "ingress-sbox", check=False)
    return json.loads(p.stdout)[0] if p.returncode == 0 else None


def node_of_tasks(host, name) -> list[str]:
    return sorted(t["Node"] for t in running_tasks(host, name))


def test_the_routing_mesh_answers_on_every_node_and_reaches_every_task(three):
    etcd, a, b, c = three
    ov = overlay(a, b, "--attachable", "ov")
    # the ingress network is there from swarm init (Docker's shape), but nothing is built for it yet
    doc = c.json("network", "inspect", "ingress")[0]
    assert doc["Ingress"] is True and doc["Driver"] == "overlay" and doc["Scope"] == "swarm"
    assert not any(h.overlay_holders() or mesh_sandbox(h) for h in (a, b, c))
    create(a, "web", "--network", "ov", "--publish", "published=8080,target=8080", replicas=2)
    assert wait_for(lambda: replicas(c, "web") == "2/2", timeout=15), c.nsnet("service", "ps", "web").stdout
    assert node_of_tasks(a, "web") == ["host-a", "host-b"]        # host-c runs none

    # Docker's shapes: the PORTS column, Endpoint.Ports and Spec.EndpointSpec.Ports; no ingress-sbox in `ps`
    assert c.json("network", "inspect", "ingress")[0]["Id"] == doc["Id"]
    assert wait_for(lambda: mesh_sandbox(c) is not None, timeout=10)
    assert "ingress-sbox" not in c.nsnet("ps", "-a").stdout + json.dumps(c.json("ps", "-a", "--format", "json"))
    assert "*:8080->8080/tcp" in a.nsnet("service", "ls").stdout
    port = {"Protocol": "tcp", "TargetPort": 8080, "PublishedPort": 8080, "PublishMode": "ingress"}
    svc = b.json("service", "inspect", "web")[0]
    assert svc["Endpoint"]["Ports"] == [port] and svc["Spec"]["EndpointSpec"]["Ports"] == [port]
    assert svc["Endpoint"]["Spec"]["Ports"] == [port]
    # a VIP on `ingress` too, as Docker lists one: claimed in etcd (no task gets it), in ingress's subnet
    vips = {v["NetworkID"]: v["Addr"] for v in svc["Endpoint"]["VirtualIPs"]}
    assert set(vips) == {ov["Id"], doc["Id"]}, vips
    mesh_vip = vips[doc["Id"]].split("/")[0]
    assert ipaddress.ip_interface(vips[doc["Id"]]).network == ipaddress.ip_network(doc["IPAM"]["Config"][0]["Subnet"])
    assert etcd_keys(etcd, f"addresses/{doc['Id']}/{mesh_vip}") and mesh_vip not in task_ips(a, "web", doc["Id"])
    # `info` counts what `ps -a` lists: not the ingress sandbox
    for h in (a, c):
        listed = h.json("ps", "-a", "--format", "json")
        assert {k: h.json("info")[k] for k in ("Sandboxes", "Running")} == {"Sandboxes": len(listed), "Running": len(listed)}
    assert c.json("info")["Sandboxes"] == 0 and mesh_sandbox(c)["State"]["Running"]   # c: the ingress sandbox only

    # from outside the hosts: every node answers, the one without a task too, and reaches both tasks
    for h in (c, a, b):
        assert wait_for(lambda: hosts_of(ask_from_outside(etcd, address_of(h), 8080, 30)) == {"web-1", "web-2"},
                        timeout=10), (h.ns, ask_from_outside(etcd, address_of(h), 8080, 10))
    answers = ask_from_outside(etcd, address_of(c), 8080, 60)
    assert all(x.startswith("host=web-") for x in answers), [x for x in answers if not x.startswith("host=")][:5]
    # and from the node itself, through its loopback
    local = c.sh(f"{sys.executable} {NETCHECK} ask tcp 127.0.0.1 8080", check=False).stdout
    assert local.startswith("host=web-"), local

    # host-c leaves while the port is published: its ingress sandbox is nsnet's own, not counted (as Docker's)
    c.nsnet("swarm", "leave")
    assert set(ask_from_outside(etcd, address_of(c), 8080, 1)) == {"refused"}
    assert mesh_sandbox(c) is None and "ingress" not in network_names(c) and not c.overlay_holders()
    assert hosts_of(ask_from_outside(etcd, address_of(a), 8080, 20)) == {"web-1", "web-2"}
    c.nsnet("swarm", "join", "--advertise-addr", address_of(c), "--store", f"etcd://{SWITCH}.1:2379",
            "--node-name", "host-c")

    # a task on host-c too (scale up): in rotation through the mesh as well
    a.nsnet("service", "scale", "web=3")
    assert wait_for(lambda: replicas(a, "web") == "3/3", timeout=15)
    assert wait_for(lambda: hosts_of(ask_from_outside(etcd, address_of(a), 8080, 45)) == {"web-1", "web-2", "web-3"},
                    timeout=10)

    # rm: the port stops answering everywhere, each node's ingress sandbox goes with the last ingress port;
    # the network stays (as Docker's)
    a.nsnet("service", "rm", "web")
    for h in (a, b, c):
        assert wait_for(lambda: set(ask_from_outside(etcd, address_of(h), 8080, 1)) == {"refused"}, timeout=10)
        assert wait_for(lambda: mesh_sandbox(h) is None, timeout=10)
        assert "ingress" in network_names(h)
    assert etcd_keys(etcd, "published/") == {} and not service_claims(etcd, doc["Id"])


def test_mode_host_publishes_only_where_a_task_runs(two):
    etcd, a, b = two
    overlay(a, b, "ov")
    create(a, "hw", "--network", "ov", "--publish", "published=8081,target=8080,mode=host", replicas=1)
    assert wait_for(lambda: replicas(a, "hw") == "1/1", timeout=15)
    [node] = node_of_tasks(a, "hw")
    there, elsewhere = (a, b) if node == "host-a" else (b, a)
    assert wait_for(lambda: hosts_of(ask_from_outside(etcd, address_of(there), 8081, 5)) == {"hw-1"}, timeout=10)
    assert set(ask_from_outside(etcd, address_of(elsewhere), 8081, 5)) == {"refused"}
    assert mesh_sandbox(a) is None and mesh_sandbox(b) is None   # no mesh for host mode
    assert "PORTS" in a.nsnet("service", "ls").stdout and "8081" not in a.nsnet("service", "ls").stdout   # as Docker's
    assert a.json("service", "inspect", "hw")[0]["Endpoint"]["Ports"] == [
        {"Protocol": "tcp", "TargetPort": 8080, "PublishedPort": 8081, "PublishMode": "host"}]

    # one task per node: a second replica goes to the other node and publishes there too
    a.nsnet("service", "scale", "hw=2")
    assert wait_for(lambda: replicas(a, "hw") == "2/2", timeout=15)
    assert node_of_tasks(a, "hw") == ["host-a", "host-b"]
    for h in (a, b):
        assert wait_for(lambda: len(hosts_of(ask_from_outside(etcd, address_of(h), 8081, 3))) == 1, timeout=10)
    p = a.nsnet("service", "scale", "hw=3", check=False)
    assert p.returncode != 0 and "mode=host" in p.stderr and len(p.stderr.strip().splitlines()) == 1, p.stderr

    # a host-mode port added: every task replaced (the old one stops first: it may hold a port on that node)
    old = sorted(t["ID"] for t in running_tasks(a, "hw"))
    a.nsnet("service", "update", "--publish-add", "published=8086,target=8080,mode=host", "hw")
    assert wait_for(lambda: replicas(a, "hw") == "2/2" and len(a.json("service", "ps", "hw", "--format", "json")) == 2,
                    timeout=15)
    assert not set(old) & {t["ID"] for t in running_tasks(a, "hw")}
    for h in (a, b):
        for port in (8081, 8086):
            assert wait_for(lambda: len(hosts_of(ask_from_outside(etcd, address_of(h), port, 3))) == 1, timeout=10)


def test_publish_add_and_rm(two):
    etcd, a, b = two
    ov = overlay(a, b, "ov")
    create(a, "web", "--network", "ov", replicas=2)
    assert wait_for(lambda: replicas(a, "web") == "2/2", timeout=15)
    assert set(ask_from_outside(etcd, address_of(b), 8082, 1)) == {"refused"}

    a.nsnet("service", "update", "--publish-add", "8082:8080", "web")      # the tasks join ingress (replaced)
    assert wait_for(lambda: replicas(a, "web") == "2/2" and len(b.json("service", "ps", "web", "--format", "json")) == 2,
                    timeout=20)
    mesh = a.json("network", "inspect", "ingress")[0]["Id"]
    assert {v["NetworkID"] for v in a.json("service", "inspect", "web")[0]["Endpoint"]["VirtualIPs"]} == {ov["Id"], mesh}
    for h in (a, b):
        assert wait_for(lambda: hosts_of(ask_from_outside(etcd, address_of(h), 8082, 30)) == {"web-1", "web-2"},
                        timeout=10), ask_from_outside(etcd, address_of(h), 8082, 5)
    # a second ingress port: no task replaced, answers at once on both
    ids = sorted(t["ID"] for t in running_tasks(a, "web"))
    b.nsnet("service", "update", "--publish-add", "published=8083,target=8080", "web")
    for h in (a, b):
        assert wait_for(lambda: hosts_of(ask_from_outside(etcd, address_of(h), 8083, 20)) == {"web-1", "web-2"},
                        timeout=10)
    assert sorted(t["ID"] for t in running_tasks(a, "web")) == ids
    assert "*:8082->8080/tcp, *:8083->8080/tcp" in a.nsnet("service", "ls").stdout

    a.nsnet("service", "update", "--publish-rm", "published=8082,target=8080", "web")
    for h in (a, b):
        assert wait_for(lambda: set(ask_from_outside(etcd, address_of(h), 8082, 1)) == {"refused"}, timeout=10)
        assert hosts_of(ask_from_outside(etcd, address_of(h), 8083, 10)) <= {"web-1", "web-2"}
    assert [p["PublishedPort"] for p in a.json("service", "inspect", "web")[0]["Endpoint"]["Ports"]] == [8083]
    a.nsnet("service", "update", "--publish-rm", "8080", "web")            # by target port, as Docker
    for h in (a, b):
        assert wait_for(lambda: set(ask_from_outside(etcd, address_of(h), 8083, 1)) == {"refused"}, timeout=10)
        assert wait_for(lambda: mesh_sandbox(h) is None, timeout=10)
    assert etcd_keys(etcd, "published/") == {} and not service_claims(etcd, mesh)
    assert [v["NetworkID"] for v in a.json("service", "inspect", "web")[0]["Endpoint"]["VirtualIPs"]] == [ov["Id"]]

    # nothing publishes: `network rm ingress` is allowed (Docker asks first), on every node; the next ingress
    # port makes it again
    assert wait_for(lambda: a.nsnet("network", "rm", "ingress", check=False).returncode == 0, timeout=2)
    assert wait_for(lambda: "ingress" not in network_names(b), timeout=2)
    b.nsnet("service", "update", "--publish-add", "8087:8080", "web")
    assert b.json("network", "inspect", "ingress")[0]["Ingress"] is True
    assert wait_for(lambda: replicas(a, "web") == "2/2" and len(b.json("service", "ps", "web", "--format", "json")) == 2,
                    timeout=20)
    for h in (a, b):
        assert wait_for(lambda: hosts_of(ask_from_outside(etcd, address_of(h), 8087, 20)) == {"web-1", "web-2"},
                        timeout=10), ask_from_outside(etcd, address_of(h), 8087, 5)


def test_a_taken_port_and_bad_publish_specs_are_refused(two):
    etcd, a, b = two
    overlay(a, b, "ov")
    b.nsnet("run", "-d", "--name", "local", "-p", "9090:80", "--", "sleep", "300")   # a sandbox of host-b's own
    create(a, "web", "--network", "ov", "-p", "9091:8080", replicas=1)
    assert wait_for(lambda: replicas(a, "web") == "1/1", timeout=15)
    assert wait_for(lambda: mesh_sandbox(a) is not None and mesh_sandbox(b) is not None, timeout=10)
    assert wait_for(lambda: any(["tcp", 9090, "local"] in v["ports"] for v in etcd_keys(etcd, "ports/").values()),
                    timeout=5)   # host-b's runner wrote its sandboxes' ports (ports/<node>)
    for args, says in (
            (["service", "create", "--name", "x", "-p", "9090:8080", "--", "sleep", "1"],
             "port 9090/tcp is already in use by sandbox local on node host-b"),
            (["service", "create", "--name", "x", "-p", "published=9091,target=80", "--", "sleep", "1"],
             "port 9091/tcp is already in use by service web as an ingress port"),
            (["service", "create", "--name", "x", "-p", "9091:80,mode=host", "--", "sleep", "1"], "invalid publish spec"),
            (["service", "create", "--name", "x", "-p", "published=1,target=2,mode=bridge", "--", "sleep", "1"],
             "must be either 'ingress' or 'host'"),
            (["service", "create", "--name", "x", "-p", "published=1,proto=udp,target=2", "--", "sleep", "1"],
             "invalid field key 'proto'"),
            (["service", "create", "--name", "x", "-p", "published=80", "--", "sleep", "1"], "missing mandatory field 'target'"),
            (["service", "create", "--name", "x", "-p", "80:70000", "--", "sleep", "1"], "not a port"),
            (["service", "create", "--name", "x", "-p", "80-81:80-81", "--", "sleep", "1"], "port ranges"),
            (["service", "create", "--name", "x", "-p", "127.0.0.1:80:80", "--", "sleep", "1"], "host IP"),
            (["service", "create", "--name", "x", "-p", "80:80/sctp", "--", "sleep", "1"], "invalid protocol"),
            (["service", "create", "--name", "x", "-p", "9095:80", "-p", "9095:81", "--", "sleep", "1"], "published twice"),
            (["service", "update", "--publish-add", "9090:8080", "web"], "sandbox local on node host-b"),
            (["service", "update", "--publish-rm", "9999", "web"], "no published port 9999/tcp to remove"),
            (["run", "-d", "--name", "y", "-p", "9091:80", "--", "sleep", "1"], "9091"),
            (["network", "rm", "ingress"], "network ingress is in use by service web"),
    ):
        before, before_b, keys = a.state(), b.state(), etcd_keys(etcd, "")
        p = a.nsnet(*args, check=False)
        assert p.returncode != 0 and says in p.stderr and len(p.stderr.strip().splitlines()) == 1, (args, p.stderr)
        assert changes(before, a.state()) == {} and changes(before_b, b.state()) == {}, args
        assert {k: v for k, v in etcd_keys(etcd, "").items() if not k.startswith(("alive/", "evidence/"))} == \
               {k: v for k, v in keys.items() if not k.startswith(("alive/", "evidence/"))}, args
    # a port some program of host-a's holds (not nsnet's): refused on host-a, where it is checked
    holder = subprocess.Popen(["ip", "netns", "exec", a.ns, sys.executable, "-c",
                               "import socket,time\ns=socket.socket(); s.bind(('0.0.0.0', 9092)); s.listen(); time.sleep(60)"])
    try:
        time.sleep(0.5)
        before, keys = a.state(), etcd_keys(etcd, "services/")
        p = a.nsnet("service", "create", "--name", "x", "-p", "9092:80", "--", "sleep", "1", check=False)
        assert p.returncode != 0 and "9092/tcp is already in use on the host" in p.stderr, p.stderr
        assert changes(before, a.state()) == {} and etcd_keys(etcd, "services/") == keys
    finally:
        holder.kill()
        holder.wait()


def test_the_mesh_is_repaired_a_late_node_a_restart_a_killed_ingress_sandbox(tag):
    with swarm_hosts(tag, count=3) as (etcd, (a, b, c)):
        form([a, b])
        overlay(a, b, "ov")
        create(a, "web", "--network", "ov", "-p", "8084:8080", replicas=1)
        assert wait_for(lambda: replicas(a, "web") == "1/1", timeout=15)
        assert wait_for(lambda: hosts_of(ask_from_outside(etcd, address_of(b), 8084, 3)) == {"web-1"}, timeout=10)

        # a node that joins once the mesh exists gets its ingress sandbox, and answers
        c.nsnet("swarm", "join", "--advertise-addr", f"{SWITCH}.4", "--store", f"etcd://{SWITCH}.1:2379",
                "--node-name", "host-c")
        assert wait_for(lambda: hosts_of(ask_from_outside(etcd, address_of(c), 8084, 3)) == {"web-1"}, timeout=15)

        # b's daemon killed: the data plane goes on; started again, it holds the port again and follows changes
        os.kill(b.daemon_pid(), signal.SIGKILL)
        assert hosts_of(ask_from_outside(etcd, address_of(b), 8084, 5)) == {"web-1"}
        b.nsnet("ps")
        assert wait_for(lambda: b.nsnet("run", "--rm", "-p", "8084:80", "--", "true", check=False).returncode != 0, timeout=5)
        a.nsnet("service", "update", "--publish-add", "8085:8080", "web")
        for h in (a, b, c):
            assert wait_for(lambda: hosts_of(ask_from_outside(etcd, address_of(h), 8085, 3)) == {"web-1"}, timeout=10)

        # b's ingress sandbox killed: made again
        sbox = mesh_sandbox(b)
        os.kill(sbox["State"]["Pid"], signal.SIGKILL)
        assert wait_for(lambda: (mesh_sandbox(b) or sbox)["Id"] != sbox["Id"], timeout=10)
        assert wait_for(lambda: hosts_of(ask_from_outside(etcd, address_of(b), 8084, 3)) == {"web-1"}, timeout=10)


MANY = 140   # more than one etcd transaction takes (128 operations), few enough for two sandboxes a second


def test_more_tasks_than_one_etcd_transaction_takes(two):
    etcd, a, b = two
    ov = overlay(a, b, "--attachable", "ov")
    start = time.monotonic()
    a.nsnet("service", "create", "--name", "many", "--replicas", str(MANY), "--network", "ov", "--", "sleep", "300")
    assert wait_for(lambda: replicas(b, "many") == f"{MANY}/{MANY}", timeout=90), replicas(b, "many")
    took = time.monotonic() - start
    slots = sorted(t["Slot"] for t in b.json("service", "ps", "many", "--format", "json"))
    assert slots == list(range(1, MANY + 1))
    print(f"{MANY} tasks running {took:.1f} s after create was called")

    # every task is in the VIP's table of a client's sandbox, and tasks.many answers (as much as fits)
    a.nsnet("run", "-d", "--name", "ca", "--network", "ov", "--", "sleep", "300")
    vip = b.json("service", "inspect", "many")[0]["Endpoint"]["VirtualIPs"][0]["Addr"].split("/")[0]
    backends = lambda: set(a.exec("ca", "nft -j list table ip nsnet_vip", check=False).stdout.split('"')) & set(task_ips(a, "many", ov["Id"]))
    assert wait_for(lambda: len(backends()) == MANY, timeout=10)
    assert wait_for(lambda: getent(a, "ca", "many") == [vip], timeout=3)
    answered = getent(a, "ca", "tasks.many")
    assert answered and set(answered) <= set(task_ips(a, "many", ov["Id"]))

    # down and up by more than a transaction takes; rm right after the scale up: every task told, none left
    b.nsnet("service", "scale", "many=3")
    keys = etcd_keys(etcd, "tasks/")
    assert sorted(t["slot"] for t in keys.values() if t["desired"] == "running") == [1, 2, 3]
    assert wait_for(lambda: replicas(a, "many") == "3/3" and len(etcd_keys(etcd, "tasks/")) == 3, timeout=60)
    a.nsnet("service", "scale", f"many={MANY}")
    assert sorted(t["slot"] for t in etcd_keys(etcd, "tasks/").values()) == list(range(1, MANY + 1))
    b.nsnet("service", "rm", "many")
    assert wait_for(lambda: etcd_keys(etcd, "tasks/") == {}, timeout=60)
    assert wait_for(lambda: not [s for h in (a, b) for s in h.json("ps", "-a", "--format", "json")
                                 if s["Name"].lstrip("/").startswith("many.")], timeout=30)
