"""A Compose file (Debian's docker-compose 1.29, a client of the real dockerd of dockerd.py) with
`driver: nsnet` and `ipam: {driver: nsnet}` comes up and down."""
from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from conftest import wait_for
from dockerd import IMAGE, docker  # noqa: F401 (a fixture)
from test_docker_ipam import records
from test_docker_network import http_get

from nsnet.engine.dockernet import ENDPOINT
from nsnet.engine.dockerpools import POOL

if not shutil.which("docker-compose"):
    pytest.skip("needs docker-compose (Debian's, v1: scripts/setup.sh installs it)", allow_module_level=True)

COMPOSE = f"""version: "2.4"
services:
  web:
    image: {IMAGE}
    hostname: web-1
    command: [sh, -c, "mkdir -p /www && hostname > /www/index.html && exec httpd -f -p 80 -h /www"]
    ports: ["8081:80"]
    networks: [front]
  client:
    image: {IMAGE}
    command: [sleep, "3600"]
    networks:
      front:
        aliases: [cl]
      back: {{}}
networks:
  front:
    driver: nsnet
    ipam: {{driver: nsnet}}
  back:
    ipam: {{driver: nsnet}}
"""


def compose(docker, *args: str) -> subprocess.CompletedProcess:
    p = subprocess.run(["docker-compose", "-p", "proj", "-f", os.path.join(docker.w, "compose.yml"), *args],
                       capture_output=True, text=True, timeout=120,
                       env={**os.environ, "DOCKER_HOST": f"unix://{docker.w}/docker.sock"})
    assert p.returncode == 0, f"docker-compose {' '.join(args)}:\n{p.stdout}\n{p.stderr}"
    return p


def test_a_compose_file_on_nsnet_comes_up_and_down(host, docker):
    with open(os.path.join(docker.w, "compose.yml"), "w") as f:
        f.write(COMPOSE)
    compose(docker, "up", "-d")
    front = docker.inspect("network", "proj_front")
    assert front["Driver"] == "nsnet" and front["IPAM"]["Driver"] == "nsnet"
    assert docker.inspect("network", "proj_back")["IPAM"]["Driver"] == "nsnet"
    assert compose(docker, "exec", "-T", "client", "ping", "-c1", "-W2", "web").returncode == 0
    assert docker.docker("exec", "proj_web_1", "ping", "-c1", "-W2", "cl").returncode == 0
    assert wait_for(lambda: http_get(host, 8081) == "web-1")
    assert len(records(host, POOL)) == 2 and len(records(host, ENDPOINT)) == 2
    compose(docker, "down")
    assert records(host, POOL) == [] and records(host, ENDPOINT) == []
    assert not [n for n in host.nsnet("network", "ls", "--format", "{{.Name}}").stdout.split() if n.startswith("docker-")]
    assert http_get(host, 8081) == ""
