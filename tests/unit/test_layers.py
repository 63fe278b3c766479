"""The layers of docs/architecture.md, checked on the source: every import of nsnet's own modules points
down (or sideways where the table allows it), and only kernel/ speaks pyroute2."""
import ast
import os

SRC = os.path.join(os.path.dirname(__file__), "..", "..", "src", "nsnet")

BASE = {"nsnet", "errors", "model", "facts", "resolvconf", "names"}
# What each part of nsnet may import besides the base (a part always may import itself).
ALLOWED = {
    **{b: BASE for b in BASE},
    "kernel": BASE,
    "store": BASE,
    "firewall": BASE | {"kernel"},
    "dns": BASE | {"kernel"},
    "ipam": BASE,
    "requests": BASE,
    "config": BASE | {"ipam"},
    "doctor": BASE | {"ipam"},
    "drivers": BASE | {"kernel", "firewall", "requests", "store"},   # store: the view a driver gets (Scoped)
    "cluster": BASE | {"store"},   # a host's swarm membership, in the etcd the hosts share
    "engine": BASE | {"kernel", "store", "firewall", "dns", "ipam", "requests", "config", "drivers", "crashpoints",
                      "cluster"},
    "crashpoints": BASE,
    "daemon": BASE | {"kernel", "store", "firewall", "dns", "ipam", "requests", "config", "drivers", "engine",
                      "crashpoints", "cluster"},
    "client": BASE,
    "cniplugin": BASE | {"client"},   # the CNI plugin: a thin client of the daemon, like the CLI
    "cli": BASE | {"client", "config", "ipam", "doctor", "kernel", "daemon"},   # kernel/daemon: lazily, per command
    "__main__": {"cli"},
}


def _modules():
    for folder, _, files in os.walk(SRC):
        for f in files:
            if f.endswith(".py"):
                path = os.path.join(folder, f)
                rel = os.path.relpath(path, SRC)[:-3].split(os.sep)
                yield path, [p for p in rel if p != "__init__"], f == "__init__.py"


def _is_module(name):
    """`from nsnet import X`: X is one of nsnet's parts, or just a name its __init__ defines."""
    return os.path.exists(os.path.join(SRC, name + ".py")) or os.path.isdir(os.path.join(SRC, name))


def _imports(path, parts, is_pkg):
    """(part of nsnet imported, line) for every import of nsnet's own code, and pyroute2 imports as 'pyroute2'."""
    tree = ast.parse(open(path).read())
    package = ["nsnet"] + (parts if is_pkg else parts[:-1])
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[:len(package) - node.level + 1]
                target = base + (node.module.split(".") if node.module else [])
                names = [a.name for a in node.names] if not node.module and len(target) == 1 else [None]
            else:
                target, names = (node.module or "").split("."), [None]
            for name in names:
                full = target + ([name] if name and _is_module(name) else [])
                if full[0] == "nsnet":
                    yield (full[1] if len(full) > 1 else "nsnet"), node.lineno
                elif full[0] == "pyroute2":
                    yield "pyroute2", node.lineno
        elif isinstance(node, ast.Import):
            for a in node.names:
                first = a.name.split(".")
                if first[0] == "nsnet":
                    yield (first[1] if len(first) > 1 else "nsnet"), node.lineno
                elif first[0] == "pyroute2":
                    yield "pyroute2", node.lineno


def _violations():
    out = []
    for path, parts, is_pkg in _modules():
        part = parts[0] if parts else "nsnet"
        for target, line in _imports(path, parts, is_pkg):
            if target == "pyroute2":
                if part != "kernel":
                    out.append(f"{os.path.relpath(path, SRC)}:{line} imports pyroute2 (only kernel/ may)")
            elif target != part and target not in ALLOWED.get(part, set()):
                out.append(f"{os.path.relpath(path, SRC)}:{line}: {part} imports {target}")
    return out


def test_every_part_of_nsnet_is_in_the_table():
    parts = {(p[0] if p else "nsnet") for _, p, _ in _modules()}
    assert parts <= set(ALLOWED), sorted(parts - set(ALLOWED))


def test_imports_point_down_and_only_kernel_speaks_pyroute2():
    assert _violations() == []


def test_the_check_sees_a_violation(tmp_path, monkeypatch):
    """The check itself can fail: a kernel module importing the engine is caught."""
    pkg = tmp_path / "kernel"
    pkg.mkdir()
    (pkg / "bad.py").write_text("from ..engine import Engine\nfrom pyroute2 import IPRoute\n")
    (tmp_path / "engine.py").write_text("from pyroute2 import IPRoute\n")
    monkeypatch.setattr(__import__(__name__), "SRC", str(tmp_path))
    got = _violations()
    assert any("kernel imports engine" in v for v in got) and any("engine.py:1 imports pyroute2" in v for v in got)


# Drivers touch the kernel only through its face: the verbs of the `Kernel` and `SandboxNs` objects they are
# handed (kernel/host.py). From kernel/ a driver may import only `features`, what validate asks of the kernel
# before anything is built (until validate, too, asks `self.kernel.require`).
DRIVER_KERNEL_IMPORTS = {"features"}
RAW_KERNEL = (".ipr", ".rtnl", ".fd", "pyroute2", "NetlinkError")


def _kernel_modules_imported(path):
    """(kernel submodule, line) for every import a module makes of nsnet.kernel (None: the package itself)."""
    tree = ast.parse(open(path).read())
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            target = (node.module or "").split(".")
            if target[0] == "nsnet":
                target = target[1:]
            if not target or target[0] != "kernel":
                continue
            if len(target) > 1:
                yield target[1], node.lineno
            else:
                for a in node.names:
                    yield a.name, node.lineno
        elif isinstance(node, ast.Import):
            for a in node.names:
                parts = a.name.split(".")
                if parts[:2] == ["nsnet", "kernel"]:
                    yield (parts[2] if len(parts) > 2 else None), node.lineno


def _driver_violations(src):
    out = []
    folder = os.path.join(src, "drivers")
    for f in sorted(os.listdir(folder)):
        if not f.endswith(".py"):
            continue
        path = os.path.join(folder, f)
        for module, line in _kernel_modules_imported(path):
            if module not in DRIVER_KERNEL_IMPORTS:
                out.append(f"drivers/{f}:{line} imports kernel.{module}")
        for n, text in enumerate(open(path).read().splitlines(), 1):
            for word in RAW_KERNEL:
                if word in text:
                    out.append(f"drivers/{f}:{n} speaks {word}")
    return out


def test_drivers_touch_the_kernel_only_through_its_verbs():
    assert _driver_violations(SRC) == []


def test_the_driver_check_sees_a_raw_channel(tmp_path):
    (tmp_path / "drivers").mkdir()
    (tmp_path / "drivers" / "bad.py").write_text(
        "from ..kernel import links, features\nfrom nsnet.kernel.lan import ensure_vlan\n"
        "def join(self, sandbox):\n    links.delete_link(self.kernel.rtnl, sandbox.fd)\n")
    got = _driver_violations(str(tmp_path))
    assert got == ["drivers/bad.py:1 imports kernel.links", "drivers/bad.py:2 imports kernel.lan",
                   "drivers/bad.py:4 speaks .rtnl", "drivers/bad.py:4 speaks .fd"]


# The engine and the daemon branch on driver attributes (singleton, needs_netns, sandbox_mode, ...), never
# on driver names: an overlay driver must fit without touching them (docs/architecture.md, the driver
# protocol). A driver's name is compared, listed or used as a table's key only inside drivers/.
DRIVER_NAMES = {"bridge", "host", "null", "none", "macvlan", "ipvlan", "overlay"}
NAME_BLIND = ("engine", "daemon")


def _driver_name_uses(src):
    out = []
    for part in NAME_BLIND:
        folder = os.path.join(src, part)
        paths = [os.path.join(folder, f) for f in sorted(os.listdir(folder)) if f.endswith(".py")] \
            if os.path.isdir(folder) else [folder + ".py"]
        for path in paths:
            tree = ast.parse(open(path).read())
            for node in ast.walk(tree):
                if isinstance(node, ast.Compare):
                    sides = [node.left, *node.comparators]
                elif isinstance(node, (ast.Set, ast.Tuple, ast.List)):
                    sides = node.elts
                elif isinstance(node, ast.Dict):
                    sides = [k for k in node.keys if k is not None]
                else:
                    continue
                names = sorted({c.value for side in sides for c in ast.walk(side)
                                if isinstance(c, ast.Constant) and c.value in DRIVER_NAMES})
                if names:
                    out.append(f"{os.path.relpath(path, src)}:{node.lineno} names driver {', '.join(names)}")
    return sorted(set(out))


def test_the_engine_and_the_daemon_never_name_a_driver():
    assert _driver_name_uses(SRC) == []


def test_the_driver_name_check_sees_a_name(tmp_path):
    (tmp_path / "daemon").mkdir()
    (tmp_path / "engine.py").write_text(
        'if net.driver == "bridge" or cls.name in ("host", "null"):\n    pass\n'
        'MODES = {"host": "host", "null": "none"}\nok = spec.get("bridge")\n')
    (tmp_path / "daemon" / "x.py").write_text('if sb.netmode != "host":\n    pass\n')
    assert _driver_name_uses(str(tmp_path)) == [
        "daemon/x.py:1 names driver host", "engine.py:1 names driver bridge", "engine.py:1 names driver host, null",
        "engine.py:3 names driver host, null"]
