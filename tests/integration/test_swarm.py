"""A swarm of two hosts sharing one etcd (Debian's etcd-server): each host a namespace with its own daemon and
NSNET_ROOT, wired to etcd's namespace by veths on a bridge there (192.168.213.0/24). Membership, liveness
(Down within the lease's TTL + 1 s when a daemon is killed or its host cut off, Ready again when it restarts
or is reconnected, without a new join),
the swarm's `ingress` network made at init (as Docker's) and gone with the last node,
leave, and bad input refused in one line with nothing changed."""
import json
import os
import re
import signal
import time

import pytest

from nsnet.kernel import netns
from nsnet.store.etcd import EtcdKV

from conftest import Host, changes, wait_for
from etcdserver import ETCD
from swarmnet import NET, STORE, network_names, swarm_hosts

if not os.path.exists(ETCD):
    pytest.skip("etcd is not installed (Debian's etcd-server: scripts/setup.sh)", allow_module_level=True)


@pytest.fixture
def swarm(tag):
    with swarm_hosts(tag) as (etcd, (a, b)):
        yield etcd, a, b


def node_ls(host: Host) -> dict[str, tuple[str, str]]:
    """HOSTNAME -> (STATUS, ADVERTISE ADDRESS), from the table."""
    lines = host.nsnet("node", "ls").stdout.splitlines()
    assert re.split(r"\s{2,}", lines[0]) == ["ID", "HOSTNAME", "STATUS", "ADVERTISE ADDRESS"]
    return {row[1]: (row[2], row[3]) for row in (re.split(r"\s{2,}", line) for line in lines[1:])}


def etcd_keys(etcd) -> dict[str, int]:
    """Every key and its revision, but the nodes' published evidence: what a host observes of itself (its
    live connections: etcd's too), refreshed as that changes, whatever a command did."""
    with netns.entered(f"/run/netns/{etcd.ns}"):
        kv = EtcdKV(etcd.endpoints)
        try:
            return {e.key: e.mod_revision for e in kv.list("") if not e.key.startswith("evidence/")}
        finally:
            kv.close()


def swarm_file(host: Host) -> str | None:
    try:
        with open(os.path.join(host.root, "swarm.json")) as f:
            return f.read()
    except FileNotFoundError:
        return None


def refused(host: Host, *args: str, says: str) -> None:
    p = host.nsnet(*args, check=False)
    assert p.returncode != 0, p.stdout
    assert len(p.stderr.strip().splitlines()) == 1, p.stderr
    assert says in p.stderr, p.stderr


def test_two_hosts_join_see_each_other_and_a_killed_daemon_goes_down(swarm):
    etcd, a, b = swarm
    a.nsnet("swarm", "init", "--advertise-addr", "up0", "--store", STORE, "--node-name", "host-a")
    b.nsnet("swarm", "join", "--advertise-addr", f"{NET}.3", "--store", STORE, "--node-name", "host-b")
    both = {"host-a": ("Ready", f"{NET}.2"), "host-b": ("Ready", f"{NET}.3")}
    assert node_ls(a) == both and node_ls(b) == both
    assert os.stat(os.path.join(a.root, "swarm.json")).st_mode & 0o777 == 0o600
    info = a.json("info")["Swarm"]
    assert (info["LocalNodeState"], info["Nodes"], info["NodeAddr"]) == ("active", 2, f"{NET}.2")
    b_id = b.json("info")["Swarm"]["NodeID"]
    assert a.json("node", "inspect", "host-b")[0]["ID"] == b_id

    # as Docker's swarm init: the swarm's `ingress` overlay, from the first /24 of the pool, listed on every
    # node; nothing is built for it anywhere until a service publishes a port
    for h in (a, b):
        mesh = {n["Name"]: n for n in h.json("network", "ls", "--format", "json")}.get("ingress")
        assert mesh is not None and (mesh["Driver"], mesh["Scope"]) == ("overlay", "swarm"), h.nsnet("network", "ls").stdout
        doc = h.json("network", "inspect", "ingress")[0]
        assert doc["Ingress"] is True and doc["IPAM"]["Config"][0]["Subnet"] == "10.0.0.0/24"
        assert doc["Options"]["com.docker.network.driver.overlay.vxlanid_list"] == "4096"   # Docker's
        assert not h.overlay_holders() and h.nsnet("inspect", "ingress-sbox", check=False).returncode != 0

    # kill -9: B's lease is no longer renewed, and A sees B Down within the TTL (10 s) + 1 s
    os.kill(b.daemon_pid(), signal.SIGKILL)
    killed = time.monotonic()
    assert wait_for(lambda: node_ls(a).get("host-b", ("",))[0] == "Down", timeout=12, interval=0.05)
    down_after = time.monotonic() - killed
    assert down_after <= 11, f"B went Down only {down_after:.1f} s after its daemon was killed"
    refused(b, "swarm", "join", "--advertise-addr", f"{NET}.3", "--store", STORE,
            says="already part of a swarm")   # any call restarts B's daemon, which rejoins by itself
    assert wait_for(lambda: node_ls(a) == both, timeout=5, interval=0.2), node_ls(a)
    assert b.json("info")["Swarm"]["NodeID"] == b_id

    # cut off: B's daemon runs but reaches no etcd; Down within the TTL + 1 s, Ready again once reconnected
    b.sh("ip link set up0 down")
    cut = time.monotonic()
    assert wait_for(lambda: node_ls(a).get("host-b", ("",))[0] == "Down", timeout=12, interval=0.05)
    assert time.monotonic() - cut <= 11
    b.sh("ip link set up0 up")   # a renewal sent while cut off may wait out its 5 s request timeout first
    assert wait_for(lambda: node_ls(a) == both, timeout=10, interval=0.2), node_ls(a)

    b.nsnet("swarm", "leave")
    assert node_ls(a) == {"host-a": ("Ready", f"{NET}.2")}
    assert swarm_file(b) is None and b.json("info")["Swarm"]["LocalNodeState"] == "inactive"
    assert "ingress" not in network_names(b)
    a.nsnet("swarm", "leave")   # the last node: the swarm goes too (its ingress network), the store takes a new one
    assert etcd_keys(etcd) == {}


def test_bad_input_is_one_line_and_changes_nothing(swarm):
    etcd, a, b = swarm
    a.nsnet("info")   # the daemon runs (its built-in networks made) before the snapshot
    before = a.state()
    refused(a, "swarm", "init", "--advertise-addr", "up0", "--store", f"http://{NET}.1:2379", says="unknown store URL")
    refused(a, "swarm", "init", "--advertise-addr", "up0", "--store", "etcd://192.0.2.1:2379",
            says="etcd does not answer")
    refused(a, "swarm", "init", "--advertise-addr", "nosuch0", "--store", STORE, says="no such interface")
    refused(a, "swarm", "join", "--advertise-addr", "up0", "--store", STORE, says="holds no swarm")
    refused(a, "node", "ls", says="not part of a swarm")
    refused(a, "swarm", "leave", says="not part of a swarm")
    assert swarm_file(a) is None and etcd_keys(etcd) == {}
    assert changes(before, a.state()) == {}

    a.nsnet("swarm", "init", "--advertise-addr", "up0", "--store", STORE, "--node-name", "host-a")
    b.nsnet("swarm", "join", "--advertise-addr", "up0", "--store", STORE, "--node-name", "host-b")
    keys, files = etcd_keys(etcd), (swarm_file(a), swarm_file(b))
    refused(a, "swarm", "init", "--advertise-addr", "up0", "--store", STORE, says="already part of a swarm")
    refused(b, "swarm", "join", "--advertise-addr", "up0", "--store", STORE, says="already part of a swarm")
    refused(a, "node", "rm", "host-b", says="is not down and can't be removed")
    refused(a, "node", "rm", "host-a", says="is this node")
    refused(a, "node", "rm", "nosuch", says="no such node")
    assert (etcd_keys(etcd), (swarm_file(a), swarm_file(b))) == (keys, files)
    b.nsnet("swarm", "leave")
    # a third host (B, left) cannot init a second swarm on the same store
    refused(b, "swarm", "init", "--advertise-addr", "up0", "--store", STORE, says="already holds a swarm")
    assert swarm_file(b) is None
    assert json.loads(swarm_file(a))["node_name"] == "host-a"


def test_without_etcd_local_networks_keep_working_and_the_node_rejoins_when_it_answers(swarm):
    etcd, a, b = swarm
    a.nsnet("swarm", "init", "--advertise-addr", "up0", "--store", STORE, "--node-name", "host-a")
    b.nsnet("swarm", "join", "--advertise-addr", "up0", "--store", STORE, "--node-name", "host-b")
    etcd.kill(0)
    os.kill(b.daemon_pid(), signal.SIGKILL)
    started = time.monotonic()
    b.nsnet("network", "create", "--subnet", "10.77.0.0/24", "local1")   # restarts B's daemon: etcd is not waited for
    assert time.monotonic() - started < 5
    assert b.json("info")["Swarm"]["Error"].startswith("etcd does not answer")
    refused(b, "node", "ls", says="etcd does not answer")
    time.sleep(2.5)   # the background retries (every second) log their outage once
    with open(os.path.join(b.root, "daemon.log")) as f:
        assert len([line for line in f if "swarm: etcd does not answer" in line]) == 1
    etcd.start()
    both = {"host-a": ("Ready", f"{NET}.2"), "host-b": ("Ready", f"{NET}.3")}
    assert wait_for(lambda: b.nsnet("node", "ls", check=False).returncode == 0 and node_ls(b) == both,
                    timeout=15, interval=0.5)


def test_settings_that_cannot_be_used_leave_the_daemon_serving_its_local_networks(host):
    """swarm.json naming a TLS file that is gone: the daemon starts, says why in one line, and leaves by --force."""
    with open(os.path.join(host.root, "swarm.json"), "w") as f:
        json.dump({"endpoints": ["https://192.0.2.1:2379"], "advertise_addr": "192.0.2.2", "node_name": "h",
                   "ca": os.path.join(host.root, "gone-ca.pem")}, f)
    host.nsnet("network", "create", "--subnet", "10.78.0.0/24", "local1")
    assert "cannot be used" in host.json("info")["Swarm"]["Error"]
    refused(host, "node", "ls", says="cannot be used")
    refused(host, "swarm", "leave", says="use --force")
    host.nsnet("swarm", "leave", "--force")
    assert swarm_file(host) is None and host.json("info")["Swarm"]["LocalNodeState"] == "inactive"


def test_etcd_with_user_and_password(swarm):
    import urllib.request

    etcd, a, b = swarm
    with netns.entered(f"/run/netns/{etcd.ns}"):
        for path, body in (("/v3/auth/user/add", {"name": "root", "password": "s3cret"}),
                           ("/v3/auth/user/grant", {"user": "root", "role": "root"}), ("/v3/auth/enable", {})):
            req = urllib.request.Request(etcd.endpoint(0) + path, json.dumps(body).encode(),
                                         {"Content-Type": "application/json"})
            urllib.request.urlopen(req, timeout=5).close()
    refused(a, "swarm", "init", "--advertise-addr", "up0", "--store", STORE, says="etcd at")
    assert swarm_file(a) is None
    a.nsnet("swarm", "init", "--advertise-addr", "up0", "--store", STORE, "--node-name", "host-a",
            "--store-user", "root", "--store-password", "s3cret")
    time.sleep(11)   # past the lease's TTL: only renewals (with the token) keep it Ready
    assert node_ls(a) == {"host-a": ("Ready", f"{NET}.2")}
