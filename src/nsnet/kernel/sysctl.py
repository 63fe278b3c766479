"""Sysctls of the namespace the calling thread is in (/proc/sys/net is per network namespace)."""


def write(key: str, value: str) -> None:
    path = "/proc/sys/" + key.replace(".", "/")
    with open(path) as f:
        if f.read().strip() == value:
            return
    with open(path, "w") as f:
        f.write(value)


def write_iface(family: str, ifname: str, key: str, value: str) -> None:
    # Interface names may contain dots, so build the path directly.
    path = f"/proc/sys/net/{family}/conf/{ifname}/{key}"
    with open(path, "w") as f:
        f.write(value)
