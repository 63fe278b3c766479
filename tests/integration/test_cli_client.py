"""The CLI's side of the API: names travel as one quoted path segment, and a daemon that dies at start
is reported at once, with its reason."""
import os
import time


def test_a_daemon_that_dies_at_start_is_reported_at_once_with_its_last_line(host):
    with open(os.path.join(host.root, "config.toml"), "w") as f:
        f.write('reserved = ["172.22.0.0/16"]\nreserverd = ["10.8.0.0/24"]\n')
    t0 = time.monotonic()
    p = host.nsnet("network", "ls", check=False)
    took = time.monotonic() - t0
    assert p.returncode != 0 and took < 5, (p.returncode, took)
    err = p.stderr.strip()
    assert len(err.splitlines()) == 1 and err.startswith("Error: the nsnet daemon exited at start"), err
    assert "unknown key 'reserverd'" in err, err
    assert host.daemon_pid() is None


def test_names_are_one_path_segment_whatever_they_hold(host):
    host.nsnet("network", "create", "red")
    host.nsnet("run", "-d", "--name", "web", "--network", "red", "--", "sleep", "300")
    for args in (("rm", "web?force=1"), ("rm", "web#x"), ("stop", "web/stop?t=0"), ("network", "inspect", "a b"),
                 ("network", "rm", "red?x=1"), ("inspect", "../networks/red"), ("logs", "web/../web"),
                 ("network", "inspect", "%2e%2e")):
        p = host.nsnet(*args, check=False)
        err = p.stderr.strip()
        assert p.returncode == 1 and err.startswith("Error:") and len(err.splitlines()) == 1, (args, p.stderr)
    assert host.json("inspect", "web")[0]["State"]["Running"]
    assert len(host.nsnet("network", "ls", "-q", "-f", "name=re").stdout.split()) == 1   # filters still quoted
    assert "red" in [n["Name"] for n in host.json("network", "ls", "--format", "json")]
