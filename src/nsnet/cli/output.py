"""Tables for people, JSON for programs (`--format json`)."""
from __future__ import annotations

import json


def table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(headers, *rows)] if rows else [len(h) for h in headers]
    lines = ["   ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip() for r in [headers] + rows]
    return "\n".join(lines)


def networks(nets: list[dict], *, quiet: bool, fmt: str | None, no_trunc: bool = False) -> None:
    if quiet:
        print("\n".join(n["Id"] if no_trunc else n["Id"][:12] for n in nets))
    elif fmt == "json":
        print(json.dumps(nets, indent=2))
    elif fmt:
        for n in nets:
            print(fmt.replace("{{.Name}}", n["Name"]).replace("{{.ID}}", n["Id"][:12]).replace("{{.Driver}}", n["Driver"]))
    else:
        rows = [[n["Id"] if no_trunc else n["Id"][:12], n["Name"], n["Driver"], n["Scope"]] for n in nets]
        print(table(["NETWORK ID", "NAME", "DRIVER", "SCOPE"], rows))


def sandboxes(docs: list[dict], *, quiet: bool, fmt: str | None) -> None:
    if quiet:
        print("\n".join(d["Id"][:12] for d in docs))
        return
    if fmt == "json":
        print(json.dumps(docs, indent=2))
        return
    rows = []
    for d in docs:
        state = d["State"]
        status = "Up" if state["Running"] else ("Exited" if state["ExitCode"] < 0 else f"Exited ({state['ExitCode']})")
        ports = ", ".join(f"{b['HostIp']}:{b['HostPort']}->{k}" for k, v in d["NetworkSettings"]["Ports"].items()
                          for b in v or [])
        nets = ",".join(d["NetworkSettings"]["Networks"]) or d["HostConfig"]["NetworkMode"]
        cmd = " ".join(d["Config"]["Cmd"])
        rows.append([d["Id"][:12], d["Name"].lstrip("/"), (cmd[:30] + "…") if len(cmd) > 31 else cmd, status, ports, nets])
    print(table(["SANDBOX ID", "NAME", "COMMAND", "STATUS", "PORTS", "NETWORKS"], rows))


def nodes(docs: list[dict], *, quiet: bool, fmt: str | None) -> None:
    if quiet:
        print("\n".join(d["ID"][:12] for d in docs))
    elif fmt == "json":
        print(json.dumps(docs, indent=2))
    else:
        # Docker's `node ls`: this node's ID marked with " *"
        rows = [[d["ID"][:12] + (" *" if d["Self"] else ""), d["Description"]["Hostname"],
                 d["Status"]["State"].capitalize(), d["Status"]["Addr"]] for d in docs]
        print(table(["ID", "HOSTNAME", "STATUS", "ADVERTISE ADDRESS"], rows))


def services(docs: list[dict], *, quiet: bool, fmt: str | None) -> None:
    if quiet:
        print("\n".join(d["ID"][:12] for d in docs))
    elif fmt == "json":
        print(json.dumps(docs, indent=2))
    else:
        rows = [[d["ID"][:12], d["Spec"]["Name"], "replicated",
                 f"{d['Running']}/{d['Spec']['Mode']['Replicated']['Replicas']}", _ingress_ports(d)] for d in docs]
        print(table(["ID", "NAME", "MODE", "REPLICAS", "PORTS"], rows))


def _ingress_ports(doc: dict) -> str:
    """As Docker's PORTS column: the routing mesh's ports (host-mode ones are each node's, not shown)."""
    return ", ".join(f"*:{p['PublishedPort']}->{p['TargetPort']}/{p['Protocol']}"
                     for p in doc["Endpoint"]["Ports"] if p["PublishMode"] == "ingress")


def tasks(docs: list[dict], *, fmt: str | None) -> None:
    if fmt == "json":
        print(json.dumps(docs, indent=2))
        return
    rows = [[d["ID"][:12], d["Name"], d["Node"], d["DesiredState"].capitalize(), d["Status"]["State"].capitalize(),
             d["Status"]["Err"]] for d in docs]
    print(table(["ID", "NAME", "NODE", "DESIRED STATE", "CURRENT STATE", "ERROR"], rows))


def log_prefix(service: str, slot: int, task_id: str, node: str, replicas: int, *, task_ids: bool = True,
               trunc: bool = True) -> str:
    """Docker's `service logs` prefix: NAME.SLOT.TASKID@NODE, padded so that the slots of up to `replicas`
    line up, then "    | "."""
    name = f"{service}.{slot}" + (f".{task_id[:12] if trunc else task_id}" if task_ids else "")
    return f"{name}@{node}" + " " * max(len(str(replicas)) - len(str(slot)), 0) + "    | "


def service_logs(doc: dict, *, task_ids: bool = True, trunc: bool = True) -> str:
    """Each task's lines (tasks in slot order, as the daemon sends them) behind its prefix."""
    out = []
    for t in doc["Tasks"]:
        prefix = log_prefix(doc["Service"], t["Slot"], t["ID"], t["Node"], doc["Replicas"], task_ids=task_ids, trunc=trunc)
        lines = t["Log"].split("\n")
        out += [prefix + line + "\n" for line in (lines[:-1] if lines[-1] == "" else lines)]
    return "".join(out)
