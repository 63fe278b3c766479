"""The CNI plugin's own checks (before any daemon): the spec's error codes and shapes, and VERSION."""
import io
import json
import subprocess
import sys

import pytest

from nsnet import cniplugin

CONF = {"cniVersion": "1.1.0", "name": "net1", "type": "nsnet"}
ADD = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "c1", "CNI_NETNS": "/run/netns/x", "CNI_IFNAME": "eth0"}


def call(env, conf):
    out = io.StringIO()
    raw = conf if isinstance(conf, bytes) else json.dumps(conf).encode()
    rc = cniplugin.main(env=env, stdin=raw, stdout=out)
    return rc, json.loads(out.getvalue()) if out.getvalue() else None


@pytest.mark.parametrize("version", ["0.4.0", "1.0.0", "1.1.0"])
def test_version_answers_with_the_callers_version_and_the_supported_ones(version):
    rc, out = call({"CNI_COMMAND": "VERSION"}, {"cniVersion": version})
    assert rc == 0 and out == {"cniVersion": version, "supportedVersions": ["0.4.0", "1.0.0", "1.1.0"]}


@pytest.mark.parametrize("env, conf, code, words", [
    ({}, CONF, 4, "CNI_COMMAND"),
    ({"CNI_COMMAND": "FROB"}, CONF, 4, "unknown CNI_COMMAND"),
    (ADD, b"{not json", 6, "unmarshalling"),
    (ADD, b"[1]", 6, "not a JSON object"),
    (ADD, dict(CONF, cniVersion="one"), 6, "invalid cniVersion"),
    (ADD, dict(CONF, cniVersion="0.3.1"), 1, "incompatible"),
    (ADD, dict(CONF, cniVersion="2.0.0"), 1, "incompatible"),
    ({"CNI_COMMAND": "STATUS"}, dict(CONF, cniVersion="1.0.0"), 1, "does not allow STATUS"),
    ({"CNI_COMMAND": "GC", "CNI_PATH": "/opt/cni/bin"}, dict(CONF, cniVersion="0.4.0"), 1, "does not allow GC"),
    ({"CNI_COMMAND": "GC"}, CONF, 4, "CNI_PATH"),
    ({"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "c1"}, CONF, 4, "[CNI_NETNS,CNI_IFNAME]"),
    ({"CNI_COMMAND": "DEL", "CNI_IFNAME": "eth0"}, CONF, 4, "[CNI_CONTAINERID]"),
    (dict(ADD, CNI_CONTAINERID="-bad/id"), CONF, 4, "CNI_CONTAINERID"),
    (ADD, {"cniVersion": "1.0.0", "type": "nsnet"}, 7, "'name'"),
])
def test_bad_calls_get_the_specs_error_object_and_exit_1(env, conf, code, words):
    rc, out = call(env, conf)
    assert rc == 1
    assert set(out) == {"cniVersion", "code", "msg", "details"} and out["code"] == code and words in out["msg"]


def test_the_error_carries_the_configurations_version():
    rc, out = call({"CNI_COMMAND": "DEL"}, dict(CONF, cniVersion="0.4.0"))
    assert out["cniVersion"] == "0.4.0" and out["code"] == 4


def test_the_plugin_starts_without_the_engine_or_pyroute2():
    code = ("import sys, nsnet.cniplugin; bad = [m for m in sys.modules if m.startswith(('pyroute2', "
            "'nsnet.engine', 'nsnet.kernel', 'nsnet.firewall', 'nsnet.daemon'))]; print(bad)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
