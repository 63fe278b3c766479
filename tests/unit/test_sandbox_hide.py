"""Which host paths a sandbox covers: existing ones, resolved, the outermost of nested ones, never /."""
import os

from nsnet.kernel.sandbox_init import paths_to_hide


def test_existing_resolved_outermost_only(tmp_path):
    run = tmp_path / "run"
    (run / "netns").mkdir(parents=True)
    (run / "docker" / "netns").mkdir(parents=True)
    (run / "docker.sock").touch()
    (run / "user" / "1000" / "podman").mkdir(parents=True)
    (tmp_path / "var").mkdir()
    os.symlink(run, tmp_path / "var" / "run")            # /var/run -> /run: one path, covered once
    root = tmp_path / "state"
    (root / "sandboxes").mkdir(parents=True)
    escapes = [str(d / e) for d in (run, tmp_path / "var" / "run")
               for e in ("netns", "docker", "docker/netns", "docker.sock", "crio", "user/*/podman")]
    got = paths_to_hide([str(root), str(root / "sandboxes"), str(tmp_path / "missing")], escapes)
    assert got == sorted(str(p) for p in (run / "netns", run / "docker", run / "docker.sock",
                                          run / "user" / "1000" / "podman", root))


def test_never_the_root_of_the_file_system(tmp_path):
    assert paths_to_hide(["/", str(tmp_path / "..") + "/" + tmp_path.name], []) == [str(tmp_path)]


def test_an_engine_root_is_a_path_not_a_pattern(tmp_path):
    (tmp_path / "a1").mkdir()
    assert paths_to_hide([str(tmp_path / "a[0-9]")], []) == []
