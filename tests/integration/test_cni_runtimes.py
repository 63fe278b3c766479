"""Real runtimes on nsnet's CNI plugin, in a test's host namespace, their containers on a busybox root:
containerd (Debian's, `ctr run --cni` with runc) and Podman 4.3 with its CNI backend. The machine's own
/etc/cni, /opt/cni, /etc/containers and runtimes are left alone: the runtimes run in private mount
namespaces whose /etc, /opt (and /var) are overlays of the machine's, holding the test's CNI configuration
and plugin folder (writes go to the test's folder)."""
import json
import os
import shutil
import signal
import subprocess
import sys

import pytest

from nsnet.cniplugin import launcher

from conftest import sh, wait_for

BUSYBOX = "/bin/busybox"
REFERENCE = "/usr/lib/cni"
PLUGIN_PYTHON = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else sys.executable   # as setup.sh
SRC = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", "src"))   # this tree's nsnet, as setup.sh installs it
if not (shutil.which("containerd") and shutil.which("ctr") and shutil.which("runc") and os.path.exists(BUSYBOX)):
    pytest.skip("needs containerd, ctr, runc and busybox (Debian's containerd and busybox-static)",
                allow_module_level=True)


class Containerd:
    """containerd in the host's namespace with its state under `w`, and ctr calls that see `w`'s CNI
    configuration as /etc/cni/net.d and `w`'s plugins as /opt/cni/bin."""

    def __init__(self, host, w: str):
        self.host, self.w = host, w
        self.sock = os.path.join(w, "ctd", "containerd.sock")
        for d in ("ctd", "etc-up/cni/net.d", "etc-work", "opt-up/cni/bin", "opt-work", "rootfs/www"):
            os.makedirs(os.path.join(w, d))
        for d in ("bin", "proc", "sys", "dev", "etc", "tmp"):
            os.makedirs(os.path.join(w, "rootfs", d), exist_ok=True)
        shutil.copy(BUSYBOX, os.path.join(w, "rootfs/bin/busybox"))
        for app in ("sh", "ping", "wget", "httpd", "sleep"):
            os.symlink("busybox", os.path.join(w, "rootfs/bin", app))
        with open(os.path.join(w, "rootfs/www/index.html"), "w") as f:
            f.write("hello from a containerd container\n")
        bin_ = os.path.join(w, "opt-up/cni/bin")
        with open(os.path.join(bin_, "nsnet"), "w") as f:
            f.write(launcher(PLUGIN_PYTHON, SRC, sys.executable))
        os.chmod(os.path.join(bin_, "nsnet"), 0o755)
        for name in os.listdir(REFERENCE) if os.path.isdir(REFERENCE) else ():
            os.symlink(os.path.join(REFERENCE, name), os.path.join(bin_, name))
        with open(os.path.join(w, "ctd/config.toml"), "w") as f:
            f.write(f'version = 2\nroot = "{w}/ctd/root"\nstate = "{w}/ctd/state"\n'
                    f'disabled_plugins = ["io.containerd.grpc.v1.cri"]\n[grpc]\n  address = "{self.sock}"\n'
                    f'[ttrpc]\n  address = "{self.sock}.ttrpc"\n[debug]\n  address = "{w}/ctd/debug.sock"\n'
                    f'[plugins."io.containerd.internal.v1.opt"]\n  path = "{w}/ctd/opt"\n')
        # nsenter, not `ip netns exec`: that remounts /sys, and runc then finds no cgroup mount. containerd, its
        # shims and every ctr call share one private mount namespace with a tmpfs over /run (containerd 1.6 keeps
        # shim sockets, fifos and runc's state under /run/containerd, whatever its config says) and overlays of
        # /etc and /opt (ctr reads CNI configs from /etc/cni/net.d and plugins from /opt/cni/bin): the
        # machine's own /run, /etc and /opt stay untouched.
        inner = (f"mount -t tmpfs tmpfs /run && "
                 f"mount -t overlay overlay -o lowerdir=/etc,upperdir={w}/etc-up,workdir={w}/etc-work /etc && "
                 f"mount -t overlay overlay -o lowerdir=/opt,upperdir={w}/opt-up,workdir={w}/opt-work /opt && "
                 f"exec containerd --config {w}/ctd/config.toml")
        with open(os.path.join(w, "ctd/log"), "w") as log:
            self.proc = subprocess.Popen(["nsenter", f"--net=/run/netns/{host.ns}", "--", "unshare", "-m",
                                          "--propagation", "private", "sh", "-c", inner], stdout=log, stderr=log,
                                         start_new_session=True)
        if not wait_for(lambda: self.ctr("version", check=False).returncode == 0, timeout=20):
            pytest.skip(f"containerd did not start here: {open(os.path.join(w, 'ctd/log')).read()[-400:]}")

    def configure(self, plugin: dict) -> None:
        """The CNI configuration ctr reads, written through the overlay (not into its upper folder under it)."""
        conflist = {"cniVersion": "1.0.0", "name": "ctrnet", "plugins": [plugin]}
        subprocess.run(self._inside() + ["sh", "-c", "cat > /etc/cni/net.d/10-nsnet.conflist"],
                       input=json.dumps(conflist), text=True, check=True)

    def _inside(self) -> list[str]:
        """Enter containerd's namespaces (its mounts: /run, /etc, /opt; its network: the test's host)."""
        return ["nsenter", "-t", str(self.proc.pid), "-m", "-n", "--"]

    def ctr(self, *args: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
        p = subprocess.run(self._inside() + ["ctr", "--address", self.sock, "-n", "test", *args], capture_output=True,
                           text=True, timeout=timeout)
        assert not check or p.returncode == 0, p.stderr
        return p

    def run(self, flags: list[str], name: str, *cmd: str, check: bool = True) -> subprocess.CompletedProcess:
        p = subprocess.run(self._inside() + ["ctr", "--address", self.sock, "-n", "test", "run", *flags, "--cni",
                                             "--rootfs", f"{self.w}/rootfs", name, *cmd],
                           capture_output=True, text=True, timeout=60)
        assert not check or p.returncode == 0, p.stdout + p.stderr
        return p

    def stop(self) -> None:
        for task in self.ctr("task", "ls", "-q", check=False).stdout.split():
            self.ctr("task", "kill", "-s", "KILL", task, check=False)
        wait_for(lambda: not self.ctr("task", "ls", "-q", check=False).stdout.strip() or None, timeout=10)
        for task in self.ctr("task", "ls", "-q", check=False).stdout.split():
            self.ctr("task", "rm", "-f", task, check=False)
        for c in self.ctr("container", "ls", "-q", check=False).stdout.split():
            self.ctr("container", "rm", c, check=False)
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        sh(f"umount -R {self.w}/ctd/root", check=False)


@pytest.fixture
def containerd(host, tmp_path):
    host.nsnet("info")   # the engine's daemon, started outside ctr's private mount namespace
    c = Containerd(host, str(tmp_path))
    try:
        yield c
    finally:
        c.stop()


def ip_of(host, name: str) -> str:
    return host.json("inspect", name)[0]["NetworkSettings"]["Networks"]["ctrnet"]["IPAddress"]


def test_containerd_containers_ping_each_other_and_a_published_port_answers(host, machines, containerd):
    pc = machines.add("pc")
    machines.wire(host.ns, "203.0.113.1/24", pc, "203.0.113.2/24")
    before = (os.path.exists("/etc/cni"), os.path.exists("/opt/cni"))
    # ctr has no -p: a runtime that publishes ports (nerdctl, the CRI, Podman) passes them as the
    # portMappings capability; here the configuration carries them, and libcni passes them on as they are.
    containerd.configure({"type": "nsnet", "root": host.root, "runtimeConfig": {
        "portMappings": [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}]}})
    containerd.run(["-d"], "web", "/bin/httpd", "-f", "-p", "80", "-h", "/www")
    web = ip_of(host, "test-web")   # containerd's container ID is namespace-id
    assert host.json("inspect", "test-web")[0]["Cni"]["Netns"].startswith("/proc/")

    containerd.configure({"type": "nsnet", "root": host.root})
    p = containerd.run(["--rm"], "client", "/bin/sh", "-c", f"ping -c1 -W2 {web} && wget -qO- http://{web}/")
    assert "1 packets received" in p.stdout and "hello from a containerd container" in p.stdout
    # The foreground run ended: ctr called DEL, and the client's attachment is gone.
    assert [s["Name"] for s in host.json("ps", "-a", "--format", "json")] == ["/test-web"]

    got = sh(f"ip netns exec {pc} wget -qO- -T 3 http://203.0.113.1:8080/", check=False).stdout
    assert "hello from a containerd container" in got
    assert (os.path.exists("/etc/cni"), os.path.exists("/opt/cni")) == before


# ---- Podman -------------------------------------------------------------------------------------------

PODMAN_TREE = os.path.join(os.path.dirname(SRC), ".podman")   # setup.sh unpacks Debian's podman there


class Podman:
    """Podman 4.3 with its CNI backend in the host's namespace. One private mount namespace (held by a
    `sleep`) is the test's machine: overlays of /etc and /var, tmpfs /run and /dev/shm, so Podman's
    state, its network namespaces (/run/netns) and locks stay in it. Podman calls and nsnet's daemon
    enter it (the daemon opens the container namespaces by Podman's paths)."""

    def __init__(self, host, w: str):
        self.host, self.w = host, w
        system = shutil.which("podman")
        self.tree = "" if system else PODMAN_TREE
        self.podman = system or os.path.join(PODMAN_TREE, "usr/bin/podman")
        if not os.access(self.podman, os.X_OK):
            pytest.skip("needs podman (scripts/setup.sh unpacks Debian's under .podman/)")
        for d in ("etc-up", "etc-work", "var-up", "var-work", "net.d", "bin", "rootfs/www"):
            os.makedirs(os.path.join(w, d))
        for d in ("bin", "proc", "sys", "dev", "etc", "tmp"):
            os.makedirs(os.path.join(w, "rootfs", d), exist_ok=True)
        shutil.copy(BUSYBOX, os.path.join(w, "rootfs/bin/busybox"))
        for app in ("sh", "ping", "wget", "httpd", "sleep"):
            os.symlink("busybox", os.path.join(w, "rootfs/bin", app))
        with open(os.path.join(w, "rootfs/www/index.html"), "w") as f:
            f.write("hello from a podman container\n")
        with open(os.path.join(w, "bin/nsnet"), "w") as f:
            f.write(launcher(PLUGIN_PYTHON, SRC, sys.executable))
        os.chmod(os.path.join(w, "bin/nsnet"), 0o755)
        with open(os.path.join(w, "net.d/nsnetpod.conflist"), "w") as f:
            json.dump({"cniVersion": "1.0.0", "name": "nsnetpod", "plugins": [
                {"type": "nsnet", "root": host.root, "capabilities": {"portMappings": True}}]}, f)
        conmon = shutil.which("conmon") or os.path.join(PODMAN_TREE, "usr/bin/conmon")
        seccomp = next(p for p in ("/usr/share/containers/seccomp.json",
                                   os.path.join(PODMAN_TREE, "usr/share/containers/seccomp.json")) if os.path.exists(p))
        with open(os.path.join(w, "containers.conf"), "w") as f:
            f.write(f'[containers]\ndefault_ulimits = ["nofile=1024:1024", "nproc=4096:4096"]\n'
                    f'seccomp_profile = "{seccomp}"\n[network]\nnetwork_backend = "cni"\n'
                    f'network_config_dir = "{w}/net.d"\ncni_plugin_dirs = ["{w}/bin"]\n'
                    f'[engine]\ncgroup_manager = "cgroupfs"\nevents_logger = "file"\nconmon_path = ["{conmon}"]\n')
        mounts = (f"mount -t overlay overlay -o lowerdir=/etc,upperdir={w}/etc-up,workdir={w}/etc-work /etc && "
                  f"mount -t overlay overlay -o lowerdir=/var,upperdir={w}/var-up,workdir={w}/var-work /var && "
                  "mount -t tmpfs tmpfs /run && mount -t tmpfs tmpfs /dev/shm && exec sleep infinity")
        self.holder = subprocess.Popen(["nsenter", f"--net=/run/netns/{host.ns}", "--", "unshare", "-m",
                                        "--propagation", "private", "sh", "-c", mounts])
        assert wait_for(lambda: _is_sleeping(self.holder.pid)), "the test's mount namespace was not made"   # mounted
        # nsnet's daemon inside the test's machine: it must see Podman's /run/netns.
        self.inside([sys.executable, "-m", "nsnet", "--root", host.root, "info"])

    def inside(self, cmd: list[str], check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
        env = {**os.environ, "CONTAINERS_CONF": os.path.join(self.w, "containers.conf"),
               "DOCKER_HOST": f"unix://{self.host.root}/no-docker.sock"}
        if self.tree:
            env["LD_LIBRARY_PATH"] = os.path.join(self.tree, "usr/lib/x86_64-linux-gnu")
        p = subprocess.run(["nsenter", f"--mount=/proc/{self.holder.pid}/ns/mnt", f"--net=/run/netns/{self.host.ns}",
                            "--wd=/", *cmd], capture_output=True, text=True, env=env, timeout=timeout)
        assert not check or p.returncode == 0, p.stdout + p.stderr
        return p

    def __call__(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return self.inside([self.podman, "--storage-driver", "vfs", *args], check=check)

    def stop(self) -> None:
        self("rm", "-a", "-f", "-t", "0", check=False)
        self.holder.kill()
        self.holder.wait()


def _is_sleeping(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip() == "sleep"
    except OSError:
        return False


@pytest.fixture
def podman(host, tmp_path):
    p = Podman(host, str(tmp_path))
    try:
        yield p
    finally:
        p.stop()


def test_podman_containers_ping_each_other_and_a_published_port_answers(host, machines, podman):
    pc = machines.add("pc")
    machines.wire(host.ns, "203.0.113.1/24", pc, "203.0.113.2/24")
    before = (os.path.exists("/etc/cni"), os.path.exists("/opt/cni"), os.path.exists("/etc/containers"))
    rootfs = os.path.join(podman.w, "rootfs")
    podman("run", "-d", "--name", "web", "--network", "nsnetpod", "-p", "8080:80", "--rootfs", rootfs,
           "/bin/httpd", "-f", "-p", "80", "-h", "/www")
    web = host.json("inspect", "web")[0]   # Podman's name (CNI_ARGS K8S_POD_NAME) is the sandbox's
    ip = web["NetworkSettings"]["Networks"]["nsnetpod"]["IPAddress"]
    assert web["Cni"]["Netns"].startswith("/run/netns/netns-")
    assert web["NetworkSettings"]["Ports"] == {"80/tcp": [{"HostIp": "0.0.0.0", "HostPort": "8080"}]}

    # Detached: Podman 4.3's attached run waits 20 s for conmon here (its exit file), whatever the network.
    podman("run", "-d", "--name", "client", "--network", "nsnetpod", "--rootfs", rootfs, "/bin/sh", "-c",
           f"ping -c1 -W2 {ip} > /tmp/client.out && wget -qO- http://{ip}/ >> /tmp/client.out; echo done >> /tmp/client.out")
    out = os.path.join(rootfs, "tmp/client.out")
    assert wait_for(lambda: os.path.exists(out) and "done" in open(out).read(), timeout=20)
    got = open(out).read()
    assert "1 packets received" in got and "hello from a podman container" in got, got

    answer = sh(f"ip netns exec {pc} wget -qO- -T 3 http://203.0.113.1:8080/", check=False).stdout
    assert "hello from a podman container" in answer
    podman("rm", "-f", "-t", "0", "web")   # Podman's DEL
    names = [s["Name"] for s in host.json("ps", "-a", "--format", "json")]
    assert "/web" not in names
    assert sh(f"ip netns exec {pc} wget -qO- -T 2 http://203.0.113.1:8080/", check=False).returncode != 0
    assert (os.path.exists("/etc/cni"), os.path.exists("/opt/cni"), os.path.exists("/etc/containers")) == before
