"""Containers Docker gave up on because nsnet's daemon was not running when dockerd started: started again.

What dockerd 20.10 does then (seen with this repo's tests): every lookup of the plugin (the IPAM driver of
each network, each container's network driver) is retried for 15 s (1+2+4+8 s), one after the other, and its
API answers only after that (45 s with one network and two containers); the containers stay exited with
`State.Error` "legacy plugin: … docker-plugin.sock: connect: …", restart policy or not: Docker's restart
manager never retries a start that failed while it restored its containers.

So at its start nsnet's daemon waits (in the background) for Docker's API, then starts the exited containers
whose restart policy says they should run and whose error names nsnet's plugin socket: exactly those Docker
tried to start and would have started had nsnet been there. Never one Docker left alone (its Error is empty:
one with no policy, an `unless-stopped` one a user stopped). Docker is found as its own clients find it (DOCKER_HOST, else /var/run/docker.sock).

`on-failure` too: a start that failed is no exit, and nsnet does not count it as one; but Docker tries an
`on-failure` container at its start only when its last run did end non-zero (dockerd 20.10: one killed by
dockerd's own shutdown, exit 137, is tried; one that exited 0 is not, and keeps an empty Error), so the error
marks the start Docker had decided on. Docker's own quirk comes along: it tries a user-stopped `on-failure`
container too (a manual stop only holds back `unless-stopped`), as it does on its own bridge driver.
"""
from __future__ import annotations

import http.client
import json
import logging
import os
import socket
import time
import urllib.parse

log = logging.getLogger("nsnet.daemon")

POLICIES = ("always", "unless-stopped", "on-failure")   # those Docker tries at its start
WAIT = 180.0   # s: Docker's start-up, stalled 15 s per plugin lookup, may take minutes with many containers


class _UnixHTTP(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float):
        super().__init__("docker", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self._path)


def call(sock: str, method: str, path: str, timeout: float = 10.0):
    conn = _UnixHTTP(sock, timeout)
    try:
        conn.request(method, path)
        resp = conn.getresponse()
        body = resp.read()
        if "json" in (resp.getheader("Content-Type") or "") and resp.status < 300:
            return resp.status, json.loads(body)
        return resp.status, body.decode(errors="replace").strip()   # /_ping's OK, an error's text
    finally:
        conn.close()


def stranded(sock: str, plugin_sock: str) -> list[dict]:
    """The containers Docker could not start for want of nsnet's plugin (one inspect each)."""
    filters = urllib.parse.quote(json.dumps({"status": ["exited", "created"]}))
    _, listing = call(sock, "GET", f"/containers/json?all=1&filters={filters}")
    out = []
    for c in listing:
        status, doc = call(sock, "GET", f"/containers/{c['Id']}/json")
        if status != 200:
            continue
        if should_start(doc, plugin_sock):
            out.append(doc)
    return out


def should_start(doc: dict, plugin_sock: str) -> bool:
    """Would Docker have started this container (its inspect document) had nsnet's plugin answered?"""
    policy = ((doc.get("HostConfig") or {}).get("RestartPolicy") or {}).get("Name")
    state = doc.get("State") or {}
    return policy in POLICIES and not state.get("Running") and plugin_sock in (state.get("Error") or "")


def start_stranded(sock: str | None, plugin_sock: str, wait: float = WAIT) -> list[str]:
    """Wait for Docker's API (at most `wait` s; none: nothing to do), then start the stranded containers.
    Their names, as started. A background thread's: it never raises."""
    try:
        return _start_stranded(sock, plugin_sock, wait)
    except Exception as e:
        log.warning("docker: could not start the containers Docker left exited without nsnet: %s", e)
        return []


def answers(sock: str | None, wait: float, every: float = 1.0) -> bool:
    """Whether Docker's API answers on `sock` within `wait` s."""
    if not sock:
        return False
    deadline = time.monotonic() + wait
    while True:
        try:
            if os.path.exists(sock) and call(sock, "GET", "/_ping", timeout=2)[0] == 200:
                return True
        except (OSError, http.client.HTTPException):
            pass
        if time.monotonic() > deadline:
            return False
        time.sleep(every)


def _start_stranded(sock: str | None, plugin_sock: str, wait: float) -> list[str]:
    if not answers(sock, wait):
        return []
    started = []
    for doc in stranded(sock, plugin_sock):
        name = doc.get("Name", "").lstrip("/") or doc["Id"][:12]
        status, body = call(sock, "POST", f"/containers/{doc['Id']}/start", timeout=60)
        if status in (204, 304):
            started.append(name)
            log.info("docker: started container %s, which Docker could not start without nsnet", name)
        else:
            log.warning("docker: container %s did not start: %s", name, str(body)[:200])
    return started
