"""The CNI plugin `nsnet` (installed as /opt/cni/bin/nsnet): a runtime's call, handed to the nsnet daemon.

A runtime runs it once per ADD/DEL/CHECK/STATUS/GC/VERSION, with the call in CNI_* variables and the network
configuration on stdin (CNI spec 1.1). It checks what the spec has every plugin check (the command, the
variables it needs, the JSON, the version), then posts the call to the daemon of the configuration's "root"
(starting one when none answers, as the CLI does) and prints the daemon's answer: a result on stdout and exit
0, or the spec's error object on stdout and exit 1. VERSION is answered here, without a daemon.

Its start-up is on every container's path, and a Python process's imports are most of it: `json` (with `re`)
and `socket` cost ~8 ms each here, so this module speaks to the daemon with their C cores (`_json`,
`_socket`) and `posix`, and the launcher runs Python with -I -S (design notes, "The CNI plugin's start-up").
"""
import _json
import _socket
import posix
import sys

SUPPORTED = ("0.4.0", "1.0.0", "1.1.0")
LATEST = SUPPORTED[-1]

# The spec's error codes (section 5, "Error").
INCOMPATIBLE_VERSION, INVALID_ENV, IO_FAILURE, DECODING_FAILURE, INVALID_CONFIG, TRY_AGAIN = 1, 4, 5, 6, 7, 11
NOT_AVAILABLE = 50

# The variables each command needs (section 2); the rest are optional.
REQUIRED = {
    "ADD": ("CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME"),
    "CHECK": ("CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME"),
    "DEL": ("CNI_CONTAINERID", "CNI_IFNAME"),
    "GC": ("CNI_PATH",),
    "STATUS": (),
    "VERSION": (),
}
NEEDS_1_1 = ("STATUS", "GC")   # added in 1.1.0: an older configuration does not allow them (as libcni's skel)
ID_FIRST = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789")
ID_REST = ID_FIRST | frozenset("_.-")
DEFAULT_ROOT = "/var/lib/nsnet"   # nsnet.DEFAULT_ROOT (importing nsnet costs nothing, but say it once here)
DAEMON_PYTHON = sys.executable   # the launcher names the Python with nsnet's dependencies


class CniError(Exception):
    def __init__(self, code: int, msg: str, details: str = ""):
        super().__init__(msg)
        self.code, self.msg, self.details = code, msg, details


# ---- JSON through json's C core -----------------------------------------------------------------------

class _Decoding:
    """What json's C scanner reads off its decoder."""
    strict, object_hook, object_pairs_hook = True, None, None
    parse_float = parse_constant = float
    parse_int = int


_scan = _json.make_scanner(_Decoding())
_quote = _json.encode_basestring_ascii
_SPACE = " \t\n\r"


def loads(text: str):
    start = len(text) - len(text.lstrip(_SPACE))
    try:
        value, end = _scan(text, start)
    except StopIteration:
        raise ValueError(f"expecting a value at character {start}") from None
    if text[end:].strip(_SPACE):
        raise ValueError(f"extra data at character {end}")
    return value


def dumps(value) -> str:
    if isinstance(value, str):
        return _quote(value)
    if value is True or value is False or value is None:
        return {True: "true", False: "false", None: "null"}[value]
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_quote(str(k))}: {dumps(v)}" for k, v in value.items()) + "}"
    return "[" + ", ".join(dumps(v) for v in value) + "]"


# ---- the call -----------------------------------------------------------------------------------------

def _version_key(v: str) -> tuple:
    return tuple(int(p) for p in v.split("."))


def _is_version(v) -> bool:
    parts = v.split(".") if isinstance(v, str) else []
    return len(parts) == 3 and all(p.isdigit() and p.isascii() for p in parts)


def parse(env: dict, raw: str) -> tuple:
    """(command, configuration, the call's variables), or CniError as the spec shapes it."""
    command = env.get("CNI_COMMAND", "")
    if not command:
        raise CniError(INVALID_ENV, "required env variables [CNI_COMMAND] missing")
    if command not in REQUIRED:
        raise CniError(INVALID_ENV, f"unknown CNI_COMMAND: {command[:40]}")
    try:
        conf = loads(raw) if raw.strip(_SPACE) or command != "VERSION" else {}
    except (ValueError, RecursionError) as e:
        raise CniError(DECODING_FAILURE, f"error unmarshalling network config: {e}") from None
    if not isinstance(conf, dict):
        raise CniError(DECODING_FAILURE, "error unmarshalling network config: not a JSON object")
    version = conf.get("cniVersion", "")
    if version != "" and not _is_version(version):
        raise CniError(DECODING_FAILURE, f"invalid cniVersion {str(version)[:40]!r}")
    if command == "VERSION":
        return command, conf, {}
    if version not in SUPPORTED:
        raise CniError(INCOMPATIBLE_VERSION, "incompatible CNI versions",
                       f"config is {version or 'unversioned'}, plugin supports {list(SUPPORTED)}")
    if command in NEEDS_1_1 and _version_key(version) < (1, 1, 0):
        raise CniError(INCOMPATIBLE_VERSION, f"config version does not allow {command}")
    missing = [v for v in REQUIRED[command] if not env.get(v)]
    if missing:
        raise CniError(INVALID_ENV, f"required env variables [{','.join(missing)}] missing")
    cid = env.get("CNI_CONTAINERID", "")
    if cid and (cid[0] not in ID_FIRST or not set(cid) <= ID_REST):
        raise CniError(INVALID_ENV, f"invalid CNI_CONTAINERID {cid[:80]!r}: it must start with a letter or digit, "
                                    "then letters, digits, '_', '.' or '-'")
    for key in ("name", "type"):
        if not isinstance(conf.get(key), str) or not conf.get(key):
            raise CniError(INVALID_CONFIG, f"the network configuration needs a string {key!r}")
    root = conf.get("root")
    if root is not None and (not isinstance(root, str) or not root.startswith("/")):
        raise CniError(INVALID_CONFIG, f"invalid \"root\" {str(root)[:80]!r}: give an absolute path")
    call = {"Command": command, "ContainerID": cid, "Netns": env.get("CNI_NETNS", ""),
            "IfName": env.get("CNI_IFNAME", ""), "Args": env.get("CNI_ARGS", ""), "Path": env.get("CNI_PATH", "")}
    return command, conf, call


def version_result(conf: dict) -> dict:
    return {"cniVersion": conf.get("cniVersion") or LATEST, "supportedVersions": list(SUPPORTED)}


# ---- the daemon ---------------------------------------------------------------------------------------

def _post(sock_path: str, body: bytes) -> tuple:
    """One POST /cni over the daemon's socket: (status, decoded JSON answer)."""
    s = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    try:
        s.settimeout(120)
        s.connect(sock_path)
        s.sendall(b"POST /cni HTTP/1.1\r\nHost: nsnet\r\nContent-Type: application/json\r\nContent-Length: "
                  + str(len(body)).encode() + b"\r\n\r\n" + body)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = s.recv(65536)
            if not chunk:
                raise ConnectionResetError("the daemon closed the connection")
            data += chunk
        head, payload = data.split(b"\r\n\r\n", 1)
        lines = head.decode("latin-1").split("\r\n")
        length = next((int(l.split(":", 1)[1]) for l in lines[1:] if l.lower().startswith("content-length:")), 0)
        while len(payload) < length:
            chunk = s.recv(65536)
            if not chunk:
                raise ConnectionResetError("the daemon closed the connection")
            payload += chunk
    finally:
        s.close()
    return int(lines[0].split()[1]), loads(payload[:length].decode()) if length else {}


def ask_daemon(command: str, conf: dict, call: dict, raw: str):
    """The daemon's answer: a result (ADD), or None; CniError as the daemon shaped it."""
    root = conf.get("root") or posix.environ.get(b"NSNET_ROOT", b"").decode() or DEFAULT_ROOT
    sock = root.rstrip("/") + "/nsnet.sock"
    body = ("{" + ", ".join(f"{_quote(k)}: {_quote(v)}" for k, v in call.items())
            + f", \"Config\": {_quote(raw)}}}").encode()
    down = NOT_AVAILABLE if command == "STATUS" else TRY_AGAIN
    try:
        try:
            status, answer = _post(sock, body)
        except (FileNotFoundError, ConnectionRefusedError):
            from .client import ApiError, Client  # the cold path: no daemon yet

            try:
                Client(root).start_daemon(python=DAEMON_PYTHON)
            except ApiError as e:
                raise CniError(down, str(e)) from None
            try:
                status, answer = _post(sock, body)
            except ConnectionResetError:
                # Seen under load in the test suite, once per ~10 full runs, right after a start; the call
                # changes nothing before the daemon reads it whole, so it is sent once more.
                status, answer = _post(sock, body)
    except OSError as e:
        raise CniError(down, f"the nsnet daemon of {root} does not answer: {e}") from None
    if status >= 400:
        raise CniError(INVALID_CONFIG, (answer or {}).get("message", f"the daemon answered HTTP {status}"))
    error = answer.get("Error")
    if error:
        raise CniError(error["code"], error["msg"], error.get("details", ""))
    return answer.get("Result")


def launcher(interpreter: str, src: str, daemon_python: str) -> str:
    """The executable a runtime runs (/opt/cni/bin/nsnet): `interpreter` without site (-S: ~3 ms) and without
    the caller's PYTHON* variables (-I), nsnet's source folder `src` on its path. The plugin needs the standard
    library only, so the interpreter may be the one that starts fastest (Debian's: ~1 ms before a pyenv
    build); a daemon it starts runs on `daemon_python`, which has nsnet's dependencies."""
    return (f"#!{interpreter} -IS\nimport sys\nsys.path.insert(0, {src!r})\n"
            f"from nsnet import cniplugin\ncniplugin.DAEMON_PYTHON = {daemon_python!r}\ncniplugin.run()\n")


def run() -> None:
    """main(), then out without the interpreter's finalization (~1 ms of every call)."""
    code = main()
    sys.stdout.flush()
    posix._exit(code)


def main(env=None, stdin=None, stdout=None) -> int:
    if env is None:
        env = {k.decode(errors="replace"): v.decode(errors="replace") for k, v in posix.environ.items()
               if k.startswith(b"CNI_")}
    stdout = stdout or sys.stdout
    version = LATEST
    try:
        try:
            raw = (stdin if stdin is not None else sys.stdin.buffer.read()).decode()
        except OSError as e:
            raise CniError(IO_FAILURE, f"error reading from stdin: {e}") from None
        except UnicodeDecodeError as e:
            raise CniError(DECODING_FAILURE, f"error unmarshalling network config: not UTF-8 ({e.reason})") from None
        try:  # the error's version is the configuration's, when it has a well-formed one
            v = loads(raw).get("cniVersion")
            version = v if v in SUPPORTED else version
        except Exception:
            pass
        command, conf, call = parse(env, raw)
        result = version_result(conf) if command == "VERSION" else ask_daemon(command, conf, call, raw)
    except CniError as e:
        stdout.write(dumps({"cniVersion": version, "code": e.code, "msg": e.msg, "details": e.details}) + "\n")
        return 1
    if result is not None:
        stdout.write(dumps(result) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
