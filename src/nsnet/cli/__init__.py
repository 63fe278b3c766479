"""`nsnet`: Docker's networking commands, answered by the nsnet daemon.

Thin on purpose: parse, call the API, print. It imports no netlink library, so it starts fast.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

from .. import DEFAULT_ROOT
from ..client import ApiError, Client, api_path
from . import doctor, output


def _kv(items: list[str], what: str, bare: bool = False) -> dict[str, str]:
    """KEY=VALUE items as a dict; `bare`: a KEY alone means KEY="" (Docker's `--opt encrypted`)."""
    out = {}
    for item in items or []:
        k, sep, v = item.partition("=")
        if not k or not (sep or bare):
            raise SystemExit(f"nsnet: invalid {what} {item!r}: use KEY=VALUE")
        out[k] = v
    return out


class Parser(argparse.ArgumentParser):
    """Bad usage in one line, as every refused command (argparse's own prints the whole usage first)."""

    def error(self, message: str):
        self.exit(2, f"Error: {self.prog}: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="nsnet", description="Container networks from the kernel's own parts.")
    p.add_argument("--root", default=None, help="state folder (default $NSNET_ROOT or /var/lib/nsnet)")
    sub = p.add_subparsers(dest="cmd", required=True)

    sub.add_parser("daemon", help="run the engine in the foreground")
    sub.add_parser("info", help="what is in force")

    net = sub.add_parser("network", help="manage networks").add_subparsers(dest="netcmd", required=True)
    c = net.add_parser("create")
    c.add_argument("name")
    c.add_argument("-d", "--driver", default="bridge")
    c.add_argument("--subnet", action="append", default=[])
    c.add_argument("--gateway", action="append", default=[])
    c.add_argument("--ip-range", action="append", default=[])
    c.add_argument("--aux-address", action="append", default=[])
    c.add_argument("-o", "--opt", action="append", default=[])
    c.add_argument("--label", action="append", default=[])
    c.add_argument("--internal", action="store_true")
    c.add_argument("--attachable", action="store_true")
    c.add_argument("--ipv6", action="store_true")
    c.add_argument("--allow-overlap", action="store_true",
                   help="create it even when the subnet collides with addresses this host uses")
    ls = net.add_parser("ls", aliases=["list"])
    ls.add_argument("-q", "--quiet", action="store_true")
    ls.add_argument("--format")
    ls.add_argument("-f", "--filter", action="append", default=[])
    ls.add_argument("--no-trunc", action="store_true")
    i = net.add_parser("inspect")
    i.add_argument("names", nargs="+")
    r = net.add_parser("rm", aliases=["remove"])
    r.add_argument("names", nargs="+")
    pr = net.add_parser("prune")
    pr.add_argument("-f", "--force", action="store_true")
    for verb in ("connect", "disconnect"):
        x = net.add_parser(verb)
        x.add_argument("network")
        x.add_argument("sandbox")
        if verb == "connect":
            x.add_argument("--ip")
            x.add_argument("--ip6")
            x.add_argument("--alias", action="append", default=[])
        else:
            x.add_argument("-f", "--force", action="store_true")

    # add_help=False: `run -h` is --hostname, as in Docker.
    run = sub.add_parser("run", help="run a command in a new sandbox", add_help=False)
    run.add_argument("--help", action="help")
    run.add_argument("-d", "--detach", action="store_true")
    run.add_argument("--name")
    run.add_argument("--network", "--net", action="append", default=[])
    run.add_argument("--ip")
    run.add_argument("--ip6")
    run.add_argument("--network-alias", "--net-alias", action="append", default=[])
    run.add_argument("-p", "--publish", action="append", default=[])
    run.add_argument("-h", "--hostname")
    run.add_argument("--dns", action="append", default=[])
    run.add_argument("--rm", action="store_true")
    run.add_argument("command", nargs=argparse.REMAINDER)

    ex = sub.add_parser("exec", help="run a command inside a running sandbox")
    ex.add_argument("sandbox")
    ex.add_argument("command", nargs=argparse.REMAINDER)
    ps = sub.add_parser("ps")
    ps.add_argument("-a", "--all", action="store_true")
    ps.add_argument("-q", "--quiet", action="store_true")
    ps.add_argument("--format")
    ins = sub.add_parser("inspect")
    ins.add_argument("names", nargs="+")
    st = sub.add_parser("stop")
    st.add_argument("-t", "--time", type=float, default=10)
    st.add_argument("names", nargs="+")
    rm = sub.add_parser("rm")
    rm.add_argument("-f", "--force", action="store_true")
    rm.add_argument("names", nargs="+")
    lg = sub.add_parser("logs")
    lg.add_argument("sandbox")
    dp = sub.add_parser("docker-plugin", help="let Docker use nsnet as its network and IPAM driver (-d nsnet, --ipam-driver nsnet)")
    dpv = dp.add_subparsers(dest="dpcmd", required=True)
    for verb, what in (("enable", "write DIR/nsnet.spec pointing Docker at the daemon's plugin socket"),
                       ("disable", "remove DIR/nsnet.spec")):
        v = dpv.add_parser(verb, help=what)
        v.add_argument("--dir", default=PLUGIN_DIRS[0], help=f"Docker's plugin folder (default {PLUGIN_DIRS[0]})")
    _swarm_parsers(sub)
    _service_parsers(sub)
    doctor.add_parser(sub)
    return p


def _swarm_parsers(sub) -> None:
    sw = sub.add_parser("swarm", help="join hosts that share networks through one etcd")
    swv = sw.add_subparsers(dest="swarmcmd", required=True)
    for verb in ("init", "join"):
        v = swv.add_parser(verb)
        v.add_argument("--advertise-addr", required=True, help="this host's address, or an interface name")
        v.add_argument("--store", required=True, metavar="etcd://HOST:PORT[,HOST:PORT...]")
        v.add_argument("--store-ca")
        v.add_argument("--store-cert")
        v.add_argument("--store-key")
        v.add_argument("--store-user")
        v.add_argument("--store-password", default=os.environ.get("NSNET_STORE_PASSWORD"),
                       help="etcd's password (default $NSNET_STORE_PASSWORD: out of the process list)")
        v.add_argument("--node-name", help="default: the host's hostname")
        if verb == "init":
            v.add_argument("--default-addr-pool", action="append", default=[])
            v.add_argument("--default-addr-pool-mask-length", type=int)
            v.add_argument("--data-path-port", type=int)
    lv = swv.add_parser("leave")
    lv.add_argument("-f", "--force", action="store_true")
    node = sub.add_parser("node", help="the swarm's hosts").add_subparsers(dest="nodecmd", required=True)
    ls = node.add_parser("ls", aliases=["list"])
    ls.add_argument("-q", "--quiet", action="store_true")
    ls.add_argument("--format")
    ni = node.add_parser("inspect")
    ni.add_argument("names", nargs="+")
    nr = node.add_parser("rm", aliases=["remove"])
    nr.add_argument("-f", "--force", action="store_true")
    nr.add_argument("names", nargs="+")


def _service_parsers(sub) -> None:
    sv = sub.add_parser("service", help="replicated tasks across the swarm, behind one name").add_subparsers(
        dest="svccmd", required=True)
    c = sv.add_parser("create")
    c.add_argument("--name", required=True)
    c.add_argument("--replicas", type=int)
    c.add_argument("--network", action="append", default=[])
    c.add_argument("--endpoint-mode", choices=["vip", "dnsrr"])
    c.add_argument("-e", "--env", action="append", default=[])
    c.add_argument("--restart-condition", choices=["any", "on-failure", "none"])
    c.add_argument("-p", "--publish", action="append", default=[], metavar="SPEC",
                   help="published=P,target=T[,protocol=tcp|udp][,mode=ingress|host], or P:T[/tcp|udp]")
    c.add_argument("command", nargs=argparse.REMAINDER)
    ls = sv.add_parser("ls", aliases=["list"])
    ls.add_argument("-q", "--quiet", action="store_true")
    ls.add_argument("--format")
    ps = sv.add_parser("ps")
    ps.add_argument("service")
    ps.add_argument("--format")
    lg = sv.add_parser("logs")
    lg.add_argument("service")
    lg.add_argument("-n", "--tail", default="all", help='lines from the end of each task\'s log (default "all")')
    lg.add_argument("--no-task-ids", action="store_true")
    lg.add_argument("--no-trunc", action="store_true")
    lg.add_argument("-f", "--follow", action="store_true", help="not supported yet")
    i = sv.add_parser("inspect")
    i.add_argument("names", nargs="+")
    sc = sv.add_parser("scale")
    sc.add_argument("pairs", nargs="+", metavar="SERVICE=REPLICAS")
    r = sv.add_parser("rm", aliases=["remove"])
    r.add_argument("names", nargs="+")
    u = sv.add_parser("update")
    u.add_argument("service")
    u.add_argument("--replicas", type=int)
    u.add_argument("--network-add", action="append", default=[])
    u.add_argument("--network-rm", action="append", default=[])
    u.add_argument("--publish-add", action="append", default=[], metavar="SPEC")
    u.add_argument("--publish-rm", action="append", default=[], metavar="SPEC",
                   help="a published port, by its target port (and its published port, when given)")
    u.add_argument("--env-add", action="append", default=[], metavar="KEY=VALUE")
    u.add_argument("--env-rm", action="append", default=[], metavar="KEY")
    u.add_argument("--args", type=_split_args, help="the tasks' new command, one string split as a shell splits it")
    u.add_argument("--force", action="store_true", help="replace the tasks even when nothing changed")
    u.add_argument("--update-parallelism", type=int)
    u.add_argument("--update-delay", type=_duration_ms, metavar="DURATION", help="e.g. 2s, 500ms (default 0s)")


def _split_args(text: str) -> list[str]:
    import shlex
    try:
        return shlex.split(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"invalid command {text!r}: {e}") from None


def _duration_ms(text: str) -> int:
    """Docker's durations as far as an update's delay needs them: 500ms, 2s, 1m, or plain seconds."""
    for unit, factor in (("ms", 1), ("s", 1000), ("m", 60000)):
        if text.endswith(unit) and text[:-len(unit)].replace(".", "", 1).isdigit():
            return int(float(text[:-len(unit)]) * factor)
    if text.replace(".", "", 1).isdigit():
        return int(float(text) * 1000)
    raise argparse.ArgumentTypeError(f"invalid duration {text!r}: e.g. 2s or 500ms")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    if args.root:
        os.environ["NSNET_ROOT"] = args.root
    if args.cmd == "daemon":
        from ..daemon.server import serve

        return serve(os.environ.get("NSNET_ROOT") or DEFAULT_ROOT)
    client = Client()
    try:
        return COMMANDS[args.cmd](client, args)
    except ApiError as e:
        print(f"Error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


# Where Docker looks for a plugin's spec file (moby: pkg/plugins/discovery_unix.go), and the name it
# finds nsnet by (`--ipam-driver nsnet`).
PLUGIN_DIRS = ("/etc/docker/plugins", "/usr/lib/docker/plugins")
PLUGIN_SPEC = "nsnet.spec"


def _plugin_url() -> str:
    root = os.path.abspath(os.environ.get("NSNET_ROOT") or DEFAULT_ROOT)
    return f"unix://{os.path.join(root, 'docker-plugin.sock')}"


def _spec_points_here(path: str) -> bool:
    try:
        with open(path) as f:
            return f.read().strip() == _plugin_url()
    except OSError:
        return False


def cmd_info(client: Client, args) -> int:
    doc = client.get("/info")
    enabled = [d for d in PLUGIN_DIRS if _spec_points_here(os.path.join(d, PLUGIN_SPEC))]
    doc["DockerPlugin"] = {"Socket": _plugin_url()[len("unix://"):], "Implements": ["NetworkDriver", "IpamDriver"],
                           "Enabled": bool(enabled), "SpecFiles": [os.path.join(d, PLUGIN_SPEC) for d in enabled]}
    print(json.dumps(doc, indent=2))
    return 0


def cmd_docker_plugin(client: Client, args) -> int:
    spec = os.path.join(args.dir, PLUGIN_SPEC)
    if args.dpcmd == "disable":
        try:
            os.unlink(spec)
        except FileNotFoundError:
            pass
        return 0
    client.get("/_ping")   # the daemon runs (started if need be) before Docker asks it anything
    os.makedirs(args.dir, exist_ok=True)
    tmp = f"{spec}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        f.write(_plugin_url() + "\n")
    os.replace(tmp, spec)   # Docker never reads half a file
    print(spec)
    return 0


def cmd_network(client: Client, args) -> int:
    verb = {"list": "ls", "remove": "rm"}.get(args.netcmd, args.netcmd)
    if verb == "create":
        body = {"Name": args.name, "Driver": args.driver, "Subnets": args.subnet, "Gateways": args.gateway,
                "IPRanges": args.ip_range, "AuxAddresses": _kv(args.aux_address, "--aux-address"),
                "Options": _kv(args.opt, "option", bare=True), "Labels": _kv(args.label, "label"),
                "Internal": args.internal, "Attachable": args.attachable, "EnableIPv6": args.ipv6,
                "AllowOverlap": args.allow_overlap}
        print(client.post("/networks", body)["Id"])
    elif verb == "ls":
        filters = _kv(args.filter, "filter")
        nets = client.get(api_path("networks", filters=json.dumps(filters) if filters else None))
        output.networks(nets, quiet=args.quiet, fmt=args.format, no_trunc=args.no_trunc)
    elif verb == "inspect":
        return _inspect_many(client, "networks", args.names)
    elif verb == "rm":
        code = 0
        for name in args.names:
            try:
                client.delete(api_path("networks", name))
                print(name)
            except ApiError as e:
                print(f"Error: {e}", file=sys.stderr)
                code = 1
        return code
    elif verb == "prune":
        if not args.force and sys.stdin.isatty():
            answer = input("WARNING! This will remove all custom networks not used by at least one sandbox.\n"
                           "Are you sure you want to continue? [y/N] ")
            if answer.strip().lower() not in ("y", "yes"):
                return 0
        deleted = client.post("/networks/prune")["NetworksDeleted"]
        if deleted:
            print("Deleted Networks:\n" + "\n".join(deleted))
    elif verb == "connect":
        client.post(api_path("networks", args.network, "connect"),
                    {"Sandbox": args.sandbox, "IP": args.ip, "IP6": args.ip6, "Aliases": args.alias})
    elif verb == "disconnect":
        client.post(api_path("networks", args.network, "disconnect"),
                    {"Sandbox": args.sandbox, "Force": args.force})
    return 0


def cmd_swarm(client: Client, args) -> int:
    if args.swarmcmd == "leave":
        client.post(api_path("swarm", "leave", force=args.force))
        print("Node left the swarm.")
        return 0
    # TLS files are read by the daemon, which runs elsewhere: absolute paths
    files = {k: os.path.abspath(v) if v else None
             for k, v in (("StoreCA", args.store_ca), ("StoreCert", args.store_cert), ("StoreKey", args.store_key))}
    body = {"Store": args.store, "AdvertiseAddr": args.advertise_addr, "NodeName": args.node_name, **files,
            "StoreUser": args.store_user, "StorePassword": args.store_password}
    if args.swarmcmd == "init":
        body.update(DefaultAddrPool=args.default_addr_pool or None, SubnetSize=args.default_addr_pool_mask_length,
                    DataPathPort=args.data_path_port)
    node = client.post(f"/swarm/{args.swarmcmd}", body)["NodeID"]
    if args.swarmcmd == "init":
        print(f"Swarm initialized: current node ({node[:12]}) is a member.\n\nTo add a host to this swarm, run:\n\n"
              f"    nsnet swarm join --advertise-addr ADDR --store {args.store}\n")
    else:
        print("This node joined a swarm.")
    return 0


def cmd_node(client: Client, args) -> int:
    verb = {"list": "ls", "remove": "rm"}.get(args.nodecmd, args.nodecmd)
    if verb == "ls":
        output.nodes(client.get("/nodes"), quiet=args.quiet, fmt=args.format)
    elif verb == "inspect":
        return _inspect_many(client, "nodes", args.names)
    else:
        return _each(client, args.names, lambda n: client.delete(api_path("nodes", n, force=args.force)))
    return 0


def cmd_service(client: Client, args) -> int:
    verb = {"list": "ls", "remove": "rm"}.get(args.svccmd, args.svccmd)
    if verb == "create":
        command = args.command[1:] if args.command[:1] == ["--"] else args.command
        body = {"Name": args.name, "Replicas": args.replicas, "Networks": args.network, "Env": args.env,
                "EndpointMode": args.endpoint_mode, "RestartCondition": args.restart_condition, "Cmd": command,
                "Publish": args.publish}
        print(client.post("/services", body)["ID"])
    elif verb == "ls":
        output.services(client.get("/services"), quiet=args.quiet, fmt=args.format)
    elif verb == "ps":
        output.tasks(client.get(api_path("services", args.service, "tasks")), fmt=args.format)
    elif verb == "inspect":
        return _inspect_many(client, "services", args.names)
    elif verb == "logs":
        return _service_logs(client, args)
    elif verb == "update":
        client.post(api_path("services", args.service, "update"),
                    {"Replicas": args.replicas, "NetworkAdd": args.network_add, "NetworkRm": args.network_rm,
                     "PublishAdd": args.publish_add, "PublishRm": args.publish_rm,
                     "EnvAdd": args.env_add, "EnvRm": args.env_rm, "Force": args.force,
                     "Args": args.args,
                     "Parallelism": args.update_parallelism, "DelayMs": args.update_delay})
        print(args.service)
    elif verb == "scale":
        pairs = []
        for pair in args.pairs:
            name, sep, n = pair.partition("=")
            if not sep or not name or not n.lstrip("-").isdigit():
                print(f"Error: invalid scale {pair!r}: use SERVICE=REPLICAS", file=sys.stderr)
                return 1
            pairs.append((name, int(n)))
        code = 0
        for name, n in pairs:
            try:
                client.post(api_path("services", name, "scale"), {"Replicas": n})
                print(f"{name} scaled to {n}")
            except ApiError as e:
                print(f"Error: {e}", file=sys.stderr)
                code = 1
        return code
    else:
        return _each(client, args.names, lambda n: client.delete(api_path("services", n)))
    return 0


def _service_logs(client: Client, args) -> int:
    """Every task's log lines behind Docker's prefix; a node whose tasks' logs are not there: a line on stderr."""
    if args.follow:
        print("Error: service logs --follow is not supported yet", file=sys.stderr)
        return 1
    if args.tail != "all" and not (args.tail.isascii() and args.tail.isdigit()):
        print(f"Error: invalid --tail {args.tail!r}: give a number of lines, 0 or more, or all", file=sys.stderr)
        return 1
    doc = client.get(api_path("services", args.service, "logs", tail=None if args.tail == "all" else args.tail))
    text = output.service_logs(doc, task_ids=not args.no_task_ids, trunc=not args.no_trunc)
    sys.stdout.write(text)
    sys.stdout.flush()
    for line in doc["Warnings"]:
        print(f"Warning: {line}", file=sys.stderr)
    return 1 if doc["Warnings"] and not text else 0


def _inspect_many(client: Client, kind: str, names: list[str]) -> int:
    docs, code = [], 0
    for name in names:
        try:
            docs.append(client.get(api_path(kind, name)))
        except ApiError as e:
            print(f"Error: {e}", file=sys.stderr)
            code = 1
    print(json.dumps(docs, indent=4))
    return code


def cmd_run(client: Client, args) -> int:
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        print("Error: no command given: nsnet run [OPTIONS] -- CMD [ARGS...]", file=sys.stderr)
        return 125
    networks = args.network or ["bridge"]
    spec = {"Name": args.name, "Hostname": args.hostname, "Cmd": command, "Ports": args.publish, "Dns": args.dns,
            "AutoRemove": args.rm,
            "Networks": [{"Network": n} for n in networks]}
    first = spec["Networks"][0]
    first.update({"IP": args.ip, "IP6": args.ip6, "Aliases": args.network_alias})
    if args.detach:
        try:
            print(client.post("/sandboxes", spec)["Id"])
        except ApiError as e:
            print(f"Error: {e}", file=sys.stderr)
            return 125
        return 0
    return _run_foreground(client, spec, host=networks == ["host"])


def _run_foreground(client: Client, spec: dict, host: bool) -> int:
    """The command runs as our child, with our terminal; the daemon builds its network first."""
    import signal

    from ..kernel.procs import Launch

    launch = Launch(spec["Cmd"], netmode="host" if host else "own")
    try:
        made = client.post("/sandboxes", dict(spec, Pid=launch.pid))
    except BaseException as e:
        launch.abort()
        if isinstance(e, ApiError):
            print(f"Error: {e}", file=sys.stderr)
            return 125
        raise
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the child gets the terminal's ^C; we wait for it
    launch.go(made["Files"], made["Hostname"], made.get("Nft"))
    code = launch.proc.wait()
    code = 128 - code if code < 0 else code
    try:
        client.post(api_path("sandboxes", made["Id"], "exited"), {"ExitCode": code})
    except ApiError:
        pass
    return code


def cmd_exec(client: Client, args) -> int:
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        print("Error: no command given: nsnet exec SANDBOX -- CMD [ARGS...]", file=sys.stderr)
        return 125
    doc = client.get(api_path("sandboxes", args.sandbox))
    if not doc["State"]["Running"]:
        print(f"Error: sandbox {args.sandbox} is not running", file=sys.stderr)
        return 125
    from ..kernel.netns import CLONE_NEWNET, CLONE_NEWNS, CLONE_NEWUTS, setns

    pid = doc["State"]["Pid"]
    for ns, flag in (("net", CLONE_NEWNET), ("uts", CLONE_NEWUTS), ("mnt", CLONE_NEWNS)):
        fd = os.open(f"/proc/{pid}/ns/{ns}", os.O_RDONLY)
        try:
            setns(fd, flag)
        finally:
            os.close(fd)
    try:
        os.execvp(command[0], command)
    except OSError as e:
        print(f"Error: cannot run {command[0]}: {e.strerror}", file=sys.stderr)
        return 127


def cmd_ps(client: Client, args) -> int:
    output.sandboxes(client.get(api_path("sandboxes", all=args.all)), quiet=args.quiet, fmt=args.format)
    return 0


def cmd_inspect(client: Client, args) -> int:
    return _inspect_many(client, "sandboxes", args.names)


def _each(client: Client, names: list[str], call) -> int:
    code = 0
    for name in names:
        try:
            call(name)
            print(name)
        except ApiError as e:
            print(f"Error: {e}", file=sys.stderr)
            code = 1
    return code


def cmd_stop(client: Client, args) -> int:
    return _each(client, args.names, lambda n: client.post(api_path("sandboxes", n, "stop", t=args.time)))


def cmd_rm(client: Client, args) -> int:
    return _each(client, args.names, lambda n: client.delete(api_path("sandboxes", n, force=args.force)))


def cmd_logs(client: Client, args) -> int:
    sys.stdout.write(client.get(api_path("sandboxes", args.sandbox, "logs"))["Log"])
    return 0


COMMANDS = {"info": cmd_info, "network": cmd_network, "run": cmd_run, "exec": cmd_exec, "ps": cmd_ps,
            "inspect": cmd_inspect, "stop": cmd_stop, "rm": cmd_rm, "logs": cmd_logs,
            "swarm": cmd_swarm, "node": cmd_node, "service": cmd_service, "doctor": doctor.cmd_doctor, "docker-plugin": cmd_docker_plugin}
