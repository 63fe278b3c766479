"""nftables through libnftables (the library behind the `nft` command), without a subprocess."""
from __future__ import annotations

import ctypes
import threading

from ..errors import NsnetError

# One context for the engine's namespace, made at the first render (at start, while fds are low:
# libnftables select()s on its socket and aborts on an fd above 1023).
_lib = None
_ctx = None
_lock = threading.Lock()

# libnftables 1.0.6 reads a buffer as JSON only with JSON output on (1.0.7 added an input flag); a text
# buffer still parses: the JSON reader refuses it and nft's own takes it.
NFT_CTX_OUTPUT_JSON = 1 << 4

OR = "\n# or else\n"   # between alternative rulesets in one text: run_first() applies the first nftables takes


def _context():
    global _lib, _ctx
    if _ctx is None:
        try:
            _lib = ctypes.CDLL("libnftables.so.1")
        except OSError as e:
            raise NsnetError("libnftables is missing: install Debian's nftables package") from e
        _lib.nft_ctx_new.restype = ctypes.c_void_p
        _lib.nft_ctx_get_error_buffer.restype = ctypes.c_char_p
        _lib.nft_ctx_get_output_buffer.restype = ctypes.c_char_p
        _lib.nft_ctx_output_set_flags.argtypes = [ctypes.c_void_p, ctypes.c_uint]
        for fn in ("nft_ctx_buffer_output", "nft_ctx_buffer_error", "nft_run_cmd_from_buffer",
                   "nft_ctx_get_error_buffer", "nft_ctx_get_output_buffer"):
            getattr(_lib, fn).argtypes = [ctypes.c_void_p] + ([ctypes.c_char_p] if fn == "nft_run_cmd_from_buffer" else [])
        ctx = _lib.nft_ctx_new(0)
        _lib.nft_ctx_buffer_output(ctx)
        _lib.nft_ctx_buffer_error(ctx)
        _lib.nft_ctx_output_set_flags(ctx, NFT_CTX_OUTPUT_JSON)
        _ctx = ctx
    return _lib, _ctx


def run(commands: str) -> str:
    """Apply `commands` as one nft transaction (all or nothing); returns nft's output."""
    with _lock:
        lib, ctx = _context()
        rc = lib.nft_run_cmd_from_buffer(ctx, commands.encode())
        out = (lib.nft_ctx_get_output_buffer(ctx) or b"").decode()
        err = (lib.nft_ctx_get_error_buffer(ctx) or b"").decode()
    if rc != 0:
        lines = dict.fromkeys(" ".join(line.split()) for line in err.splitlines() if line.strip())  # once each
        raise NsnetError("nftables refused the ruleset: " + " ".join(lines)[:400])
    return out


def run_first(text: str) -> str:
    """Apply the first of the alternative rulesets in `text` (separated by OR) that nftables takes,
    e.g. one on a hook this kernel may lack, then one every kernel has."""
    *preferred, last = text.split(OR)
    for ruleset in preferred:
        try:
            return run(ruleset)
        except NsnetError:
            pass
    return run(last)


def run_first_in(netns_path: str, text: str) -> None:
    """run_first() inside another network namespace (a CNI runtime's), by the `nft` command under nsenter: a
    context of this process's libnftables would need a socket made in there, and the daemon's fds run past
    the 1023 that libnftables' select() takes."""
    import subprocess

    *preferred, last = text.split(OR)
    for ruleset in preferred + [last]:
        p = subprocess.run(["nsenter", f"--net={netns_path}", "nft", "-j", "-f", "-"], input=ruleset, text=True,
                           capture_output=True, timeout=30)
        if p.returncode == 0:
            return
    lines = dict.fromkeys(" ".join(line.split()) for line in p.stderr.splitlines() if line.strip())
    raise NsnetError("nftables refused the ruleset: " + " ".join(lines)[:400])
