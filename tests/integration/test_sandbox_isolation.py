"""What a sandbox's processes cannot reach on the host's file system: the engine's root and socket, the named
network namespaces, container engines' sockets; while its own /etc/hosts, resolv.conf and names keep working,
and nothing it mounts shows in the host's mount namespace."""
import json
import os
import shlex
import subprocess
import sys

from conftest import wait_for

# Run inside a sandbox: what it can reach. argv[1] is the engine's root.
PROBE = r"""
import json, os, socket, subprocess, sys
root = sys.argv[1]
def connect(path):
    s = socket.socket(socket.AF_UNIX)
    try:
        s.connect(path)
        return "connected"
    except OSError as e:
        return e.strerror
    finally:
        s.close()
def read(path):
    try:
        with open(path, "rb") as f:
            return "read %d bytes" % len(f.read())
    except OSError as e:
        return e.strerror
def listdir(path):
    try:
        return sorted(os.listdir(path))
    except OSError:
        return []
print(json.dumps({
    "sock": connect(os.path.join(root, "nsnet.sock")),
    "db": read(os.path.join(root, "state.db")),
    "root": listdir(root),
    "cwd": listdir("."),
    "netns": listdir("/run/netns") + listdir("/var/run/netns"),
    "ip_netns": subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout,
    "docker": connect("/run/docker.sock"),
    "containerd": listdir("/run/containerd"),
    "rootless": listdir("/run/user/4242/podman"),
}))
"""


def probe_cmd(root: str) -> list[str]:
    return [sys.executable, "-c", PROBE, root]


def assert_hidden(seen: dict) -> None:
    assert seen["sock"] != "connected", seen
    assert not seen["db"].startswith("read"), seen
    assert seen["root"] == [], seen
    assert seen["netns"] == [] and seen["ip_netns"] == "", seen


def test_detached_exec_and_foreground_sandboxes_see_no_engine_and_no_netns(host, machines):
    probe_ns = machines.add("probe")                       # a named netns that would show in /run/netns
    assert probe_ns in os.listdir("/run/netns")
    host.nsnet("network", "create", "red")
    host.nsnet("run", "-d", "--name", "a", "--network", "red", "--", "sleep", "300")
    host.nsnet("run", "-d", "--name", "b", "--network", "red", "--", "sleep", "300")

    # The sandbox's own first process (-d)...
    host.nsnet("run", "-d", "--name", "p", "--network", "red", "--", *probe_cmd(host.root))
    out = wait_for(lambda: host.nsnet("logs", "p").stdout.strip())
    assert_hidden(json.loads(out))
    # ...a process entering a running one...
    assert_hidden(json.loads(host.exec("a", shlex.join(probe_cmd(host.root))).stdout))
    # ...a foreground one, started by the CLI, and one on the host's network.
    assert_hidden(json.loads(host.nsnet("run", "--rm", "--network", "red", "--", *probe_cmd(host.root)).stdout))
    assert_hidden(json.loads(host.nsnet("run", "--rm", "--network", "host", "--", *probe_cmd(host.root)).stdout))

    # The engine's files over /etc were bound before the root was covered: they and the names still work.
    hostname = host.json("inspect", "a")[0]["Config"]["Hostname"]
    assert host.exec("a", "hostname").stdout.strip() == hostname
    assert hostname in host.exec("a", "cat /etc/hosts").stdout.split()
    assert "nameserver 127.0.0.11" in host.exec("a", "cat /etc/resolv.conf").stdout
    assert host.exec("a", "ping -c1 -W2 b", check=False).returncode == 0


# Runs in a mount namespace of its own under the test's netns, made shared so that a mount leaking from a sandbox
# started here would show in it; over /run it puts a tmpfs with stand-ins for container engines' sockets. Prints
# what the sandbox saw, and whether this namespace's mounts changed.
STAGE = r"""
import json, os, socket, subprocess, sys
root, cmd = sys.argv[1], sys.argv[2:]
subprocess.run(["mount", "--make-rshared", "/"], check=True)
subprocess.run(["mount", "-t", "tmpfs", "nsnt-stage", "/run"], check=True)
held = []
for path in ("/run/docker.sock", "/run/containerd/containerd.sock", "/run/user/4242/podman/podman.sock"):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    s = socket.socket(socket.AF_UNIX)
    s.bind(path)
    s.listen()
    held.append(s)
os.makedirs("/run/netns")
open("/run/netns/stand-in", "w").close()
def mounts():
    # Named netns made by other tests meanwhile reach this namespace beneath /run's tmpfs: not ours.
    with open("/proc/self/mountinfo") as f:
        return sorted(l.split(" - ")[0].split(" ", 4)[4] for l in f if " /run/netns/" not in l)
before = mounts()
c = socket.socket(socket.AF_UNIX)
c.connect("/run/docker.sock")                   # reachable here, so a refusal in the sandbox is the cover's
c.close()
p = subprocess.run(cmd, capture_output=True, text=True, cwd=root)
print(json.dumps({"code": p.returncode, "out": p.stdout, "err": p.stderr, "before": before, "after": mounts()}))
"""


def test_engine_sockets_hidden_cwd_looked_up_again_and_no_mount_leaks(host, tmp_path):
    host.nsnet("network", "create", "red")
    host.nsnet("run", "-d", "--name", "a", "--network", "red", "--", "sleep", "300")
    stage = tmp_path / "stage.py"
    stage.write_text(STAGE)
    # The CLI runs from inside the engine's root: the sandbox starts with its working directory there.
    run = [sys.executable, "-m", "nsnet", "--root", host.root, "run", "--rm", "--network", "red", "--",
           "sh", "-c", shlex.join(probe_cmd(host.root)) + " && ping -c1 -W2 a >/dev/null && echo pinged"]
    p = subprocess.run(["ip", "netns", "exec", host.ns, "unshare", "--mount", "--propagation", "unchanged",
                        sys.executable, str(stage), host.root, *run], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    result = json.loads(p.stdout)
    assert result["code"] == 0, result
    seen_text, pinged = result["out"].rsplit("\n", 2)[:2]
    seen = json.loads(seen_text)
    assert_hidden(seen)
    assert seen["cwd"] == [], seen                  # not the root's files through the working directory
    assert seen["docker"] != "connected" and seen["containerd"] == [] and seen["rootless"] == [], seen
    assert pinged == "pinged"
    assert result["after"] == result["before"]
