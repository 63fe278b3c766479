"""The store protocol on etcd (v3), for hosts that share networks, through etcd's JSON gateway.

The client is the standard library's http.client on kept-alive connections (design notes, "The etcd
client": as fast as the gRPC clients here, nothing to install, nothing that breaks with protobuf). Keys
live under a prefix (`/nsnet/` unless told), values are JSON; the gateway wants both base64.

- `commit` is one etcd Txn: each `Op.expect` becomes a compare (0: create_revision == 0, the key is absent;
  N: mod_revision == N), the ops the success branch. The failure branch reads the compared keys back, so a
  failed commit names the first key whose compare failed without another round trip.
- `watch` opens a watch stream per call from `after + 1`. When the store is already past `after`, etcd
  replays that history from a loop that runs every 100 ms and says nothing when none of it is under the
  prefix, so such a call waits at least CATCHUP seconds for it; a call that returns [] early loses nothing
  (the caller watches again from the same revision).
- Endpoints are tried in order; a connection error (refused, no route, no answer within `connect_timeout`)
  moves to the next one, and when none answers the error is one line naming them all. A request that was
  sent and got no answer within `request_timeout` is not retried elsewhere: it may have been applied. Only
  `commit` sends it once more (a write in flight when the leader died waits out etcd's 7 s), and tells by
  reading back whether the first one was applied.
- TLS (`ca`, `cert`, `key`) for https endpoints; `user`/`password` take a token from /v3/auth/authenticate
  and take a new one when etcd says it expired.
etcd refuses a Txn of more than 128 writes (its --max-txn-ops) or 1.5 MiB (--max-request-bytes) by default.
"""
from __future__ import annotations

import base64
import http.client
import json
import socket
import ssl
import threading
import time
from typing import Iterable
from urllib.parse import urlsplit

from ..errors import NsnetError
from . import CompareFailed, Compacted, Entry, Event, Op

CATCHUP = 0.3          # s: etcd's replay of history to a new watcher runs every 100 ms
PAGE = 1000            # keys per range request of a list
UNAUTHENTICATED = 16   # gRPC status: the auth token is missing, invalid or expired
UNAVAILABLE = 14       # gRPC status: e.g. "etcdserver: leader changed", "no leader"
ELECTION = 3.0         # s: how long a call waits out an election before it fails


class EtcdError(NsnetError):
    """etcd answered with an error, or no endpoint answered. One line, naming the endpoint."""

    status = 503   # the request was fine; the cluster store is not there to take it


class _Unavailable(EtcdError):
    """etcd has no leader for the moment (an election): worth asking again."""


class _NoAnswer(EtcdError):
    """A request sent that got no answer in time: it may have been applied."""


class _Unauthenticated(EtcdError):
    """The auth token is missing, invalid or expired (etcd forgets them: --auth-token-ttl)."""


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def _unb64(text: str) -> str:
    return base64.b64decode(text).decode()


_load = json.JSONDecoder().decode   # json.loads without its per-call checks: a list decodes every value


def prefix_end(key: str) -> str:
    """etcd's range end for "every key starting with `key`": its last byte plus one."""
    raw = bytearray(key.encode())
    while raw:
        if raw[-1] < 0xFF:
            raw[-1] += 1
            return base64.b64encode(bytes(raw)).decode()
        raw.pop()
    return base64.b64encode(b"\0").decode()   # all keys


class _Endpoint:
    def __init__(self, url: str, context: ssl.SSLContext | None):
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise NsnetError(f"etcd endpoint {url!r}: want http(s)://host:port")
        self.url = f"{parts.scheme}://{parts.netloc}"
        self.host, self.port = parts.hostname, parts.port or 2379
        self.context = (context or ssl.create_default_context()) if parts.scheme == "https" else None

    def connect(self, connect_timeout: float, request_timeout: float) -> http.client.HTTPConnection:
        if self.context is not None:
            conn = http.client.HTTPSConnection(self.host, self.port, timeout=connect_timeout, context=self.context)
        else:
            conn = http.client.HTTPConnection(self.host, self.port, timeout=connect_timeout)
        conn.connect()
        conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn.sock.settimeout(request_timeout)
        return conn


class EtcdKV:
    def __init__(self, endpoints: list[str] | str, prefix: str = "/nsnet/", *, ca: str | None = None,
                 cert: str | None = None, key: str | None = None, user: str | None = None,
                 password: str | None = None, connect_timeout: float = 1.0, request_timeout: float = 5.0):
        if isinstance(endpoints, str):
            endpoints = [e for e in endpoints.split(",") if e]
        if not endpoints:
            raise NsnetError("etcd: no endpoint given")
        context = None
        if ca or cert:
            context = ssl.create_default_context(cafile=ca)
            if cert:
                context.load_cert_chain(cert, key)
        self._endpoints = [_Endpoint(url, context) for url in endpoints]
        self.prefix = prefix
        self._user, self._password = user, password
        self._connect_timeout, self._request_timeout = connect_timeout, request_timeout
        self._lock = threading.Lock()
        self._current = 0                                   # the endpoint that answered last
        self._idle: list[tuple[_Endpoint, http.client.HTTPConnection]] = []
        self._token: str | None = None

    # ---- the protocol --------------------------------------------------------------------------------

    def revision(self) -> int:
        return int(self._call("/v3/kv/range", {"key": _b64(self.prefix)})["header"]["revision"])

    def get(self, key: str) -> Entry | None:
        kvs = self._call("/v3/kv/range", {"key": _b64(self.prefix + key)}).get("kvs", [])
        return self._entry(kvs[0]) if kvs else None

    def list(self, prefix: str) -> list[Entry]:
        full = self.prefix + prefix
        body = {"key": _b64(full), "range_end": prefix_end(full), "limit": PAGE}
        entries: list[Entry] = []
        while True:
            reply = self._call("/v3/kv/range", body)
            kvs = reply.get("kvs", [])
            entries += [self._entry(kv) for kv in kvs]
            if not reply.get("more"):
                break
            # the next page from just after the last key, at the first page's revision: one snapshot
            body = {**body, "key": base64.b64encode(base64.b64decode(kvs[-1]["key"]) + b"\0").decode(),
                    "revision": body.get("revision", reply["header"]["revision"])}
        entries.sort(key=lambda e: (e.create_revision, e.key))
        return entries

    def commit(self, ops: Iterable[Op]) -> int:
        ops = list(ops)
        compares, success, checked = [], [], []
        for op in ops:
            key = _b64(self.prefix + op.key)
            if op.expect is not None:
                if op.expect == 0:
                    compares.append({"key": key, "target": "CREATE", "result": "EQUAL", "create_revision": "0"})
                else:
                    compares.append({"key": key, "target": "MOD", "result": "EQUAL", "mod_revision": str(op.expect)})
                checked.append(op)
            if not op.write:
                continue
            if op.value is None:
                success.append({"request_delete_range": {"key": key}})
            else:
                value = _b64(json.dumps(op.value, separators=(",", ":")))
                success.append({"request_put": {"key": key, "value": value}})
        failure = [{"request_range": {"key": _b64(self.prefix + op.key)}} for op in checked]
        retried: list = []
        reply = self._call("/v3/kv/txn", {"compare": compares, "success": success, "failure": failure}, retried)
        if reply.get("succeeded") or not compares:
            return int(reply["header"]["revision"])
        if retried and self._holds(ops):   # the attempt that got the error was applied after all
            return int(reply["header"]["revision"])
        for op, response in zip(checked, reply.get("responses", [])):
            kvs = response.get("response_range", {}).get("kvs", [])
            if (int(kvs[0]["mod_revision"]) if kvs else 0) != op.expect:
                raise CompareFailed(op.key)
        raise CompareFailed(checked[0].key)   # not reached: the reads saw what the compares saw

    def _holds(self, ops: list[Op]) -> bool:
        """Does the store hold what `ops` write (each put's value there, each deleted key gone)?"""
        for op in (op for op in ops if op.write):
            entry = self.get(op.key)
            if (entry.value if entry else None) != op.value:
                return False
        return True

    def watch(self, prefix: str, after: int, timeout: float) -> list[Event]:
        try:
            return self._watch(prefix, after, timeout)
        except _Unauthenticated:
            if not self._user:
                raise
            self._token = None   # take a new one, once
            return self._watch(prefix, after, timeout)

    def _watch(self, prefix: str, after: int, timeout: float) -> list[Event]:
        full = self.prefix + prefix
        body = {"create_request": {"key": _b64(full), "range_end": prefix_end(full), "start_revision": str(after + 1)}}
        conn, endpoint, created = None, None, None
        deadline = time.monotonic() + timeout
        try:
            endpoint, conn = self._connection(fresh=True)
            response = self._send(conn, "/v3/watch", body)
            if response.status != 200:
                self._raise(endpoint, response.status, response.read())
            while True:
                result = _watch_result(endpoint, full, response.readline())
                if result.get("events"):
                    return [self._event(e) for e in result["events"]]
                if result.get("created"):
                    created = int(result["header"]["revision"])
                    if created > after:   # history to replay: give etcd's replay loop its time
                        deadline = max(deadline, time.monotonic() + CATCHUP)
                left = deadline - time.monotonic()
                if left <= 0:
                    return []
                conn.sock.settimeout(left)
        except (TimeoutError, socket.timeout):
            if created is None:
                raise EtcdError(f"etcd at {endpoint.url} did not start a watch within "
                                f"{self._request_timeout:.1f} s") from None
            return []
        except (OSError, http.client.HTTPException) as e:
            raise EtcdError(f"etcd at {endpoint.url if endpoint else self._endpoints[0].url}: watch failed: {e}") from None
        finally:
            if conn is not None:
                conn.close()

    def stream(self, prefix: str, after: int) -> "Stream":
        """One watch kept open: the changes under `prefix` after revision `after`, batch by batch, as etcd
        sends them (no gap between two batches, unlike `watch`). See Stream."""
        return Stream(self, prefix, after)

    # ---- leases: keys that vanish when their holder stops renewing them (a node's liveness) ---------------

    def grant(self, ttl: int) -> int:
        """A new lease of `ttl` seconds; its id."""
        return int(self._call("/v3/lease/grant", {"TTL": str(ttl)})["ID"])

    def keepalive(self, lease: int) -> int:
        """Renew a lease; its TTL in seconds, 0 when it has expired (its keys are gone)."""
        result = self._call("/v3/lease/keepalive", {"ID": str(lease)}).get("result", {})
        return int(result.get("TTL", 0))

    def revoke(self, lease: int) -> None:
        """End a lease now, deleting its keys; one that expired already is no error."""
        try:
            self._call("/v3/lease/revoke", {"ID": str(lease)})
        except EtcdError as e:
            if "requested lease not found" not in str(e):
                raise

    def put_leased(self, key: str, value, lease: int) -> int:
        """Write `key`, bound to `lease`: etcd deletes it when the lease ends."""
        reply = self._call("/v3/kv/put", {"key": _b64(self.prefix + key), "lease": str(lease),
                                          "value": _b64(json.dumps(value, separators=(",", ":")))})
        return int(reply["header"]["revision"])

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for _, conn in idle:
            conn.close()

    # ---- etcd's answers ------------------------------------------------------------------------------

    def _entry(self, kv: dict) -> Entry:
        return Entry(_unb64(kv["key"])[len(self.prefix):], _load(_unb64(kv["value"])),
                     int(kv["create_revision"]), int(kv["mod_revision"]))

    def _event(self, event: dict) -> Event:
        kv = event["kv"]
        deleted = event.get("type") == "DELETE"
        value = None if deleted else _load(_unb64(kv["value"]))
        return Event(int(kv["mod_revision"]), _unb64(kv["key"])[len(self.prefix):], value)

    # ---- requests ------------------------------------------------------------------------------------

    def _call(self, path: str, body: dict, retried: list | None = None) -> dict:
        """POST `body`; etcd's answer. While the cluster has no leader (a member died, an election runs)
        etcd answers UNAVAILABLE: the call is sent again for up to ELECTION seconds (`retried` gets a mark:
        a write may then have been applied by the attempt that got the error)."""
        deadline = time.monotonic() + ELECTION
        while True:
            try:
                return self._call_once(path, body)
            except _NoAnswer:
                # A write in flight when the leader died gets no answer until etcd's own timeout (7 s, "request
                # timed out, possibly due to previous leader failure"): sent once more, by a caller that can
                # tell whether the first one was applied (`retried`), to a cluster that has a leader again.
                if retried is None or retried:
                    raise
                retried.append(True)
                deadline = time.monotonic() + ELECTION   # and wait out that election
            except _Unavailable:
                if time.monotonic() > deadline:
                    raise
                if retried is not None:
                    retried.append(True)
                time.sleep(0.1)

    def _call_once(self, path: str, body: dict) -> dict:
        fresh = False
        for attempt in range(2):
            endpoint, conn = self._connection(fresh)
            try:
                response = self._send(conn, path, body)
                data = response.read()
            except (TimeoutError, socket.timeout):
                conn.close()
                raise _NoAnswer(f"etcd at {endpoint.url} did not answer {path} within "
                                f"{self._request_timeout:.1f} s") from None
            except (OSError, http.client.HTTPException) as e:
                # The kept-alive connection was closed under us (etcd restarted, idle timeout): once more on a
                # new one, to this or the next endpoint.
                conn.close()
                if attempt == 0:
                    self.close()   # the other kept-alive ones are likely dead too
                    fresh = True
                    continue
                raise EtcdError(f"etcd at {endpoint.url}: {path} failed: {e}") from None
            if response.status == 200:
                with self._lock:
                    self._idle.append((endpoint, conn))
                return json.loads(data)
            conn.close()
            error = self._error(data)
            if error.get("code") == UNAUTHENTICATED and self._user and attempt == 0:
                self._token = None   # expired: take a new one
                continue
            if error.get("code") == UNAVAILABLE:
                self._raise(endpoint, response.status, data, _Unavailable)
            self._raise(endpoint, response.status, data)
        raise AssertionError("unreachable")

    def _send(self, conn: http.client.HTTPConnection, path: str, body: dict) -> http.client.HTTPResponse:
        headers = {"Content-Type": "application/json"}
        if self._token:
            headers["Authorization"] = self._token
        conn.request("POST", path, json.dumps(body).encode(), headers)   # bytes: headers and body in one send
        return conn.getresponse()

    def _connection(self, fresh: bool = False) -> tuple[_Endpoint, http.client.HTTPConnection]:
        """A kept-alive connection (or a new one), to the endpoint that answered last or the next that does."""
        if not fresh:
            with self._lock:
                if self._idle:
                    return self._idle.pop()
        if self._user and self._token is None:
            self._authenticate()
        return self._dial()

    def _dial(self) -> tuple[_Endpoint, http.client.HTTPConnection]:
        failures = []
        n = len(self._endpoints)
        for i in range(n):
            index = (self._current + i) % n
            endpoint = self._endpoints[index]
            try:
                conn = endpoint.connect(self._connect_timeout, self._request_timeout)
            except (TimeoutError, socket.timeout):
                failures.append(f"{endpoint.url}: no answer within {self._connect_timeout:.1f} s")
                continue
            except OSError as e:
                failures.append(f"{endpoint.url}: {e.strerror or e}")
                continue
            if index != self._current:
                self._current = index
                self.close()   # kept-alive connections to the endpoint that failed
            return endpoint, conn
        raise EtcdError("etcd does not answer at " + "; ".join(failures))

    def _authenticate(self) -> None:
        endpoint, conn = self._dial()
        try:
            conn.request("POST", "/v3/auth/authenticate",
                         json.dumps({"name": self._user, "password": self._password}).encode(),
                         {"Content-Type": "application/json"})
            response = conn.getresponse()
            data = response.read()
        except (OSError, http.client.HTTPException) as e:
            raise EtcdError(f"etcd at {endpoint.url}: authentication failed: {e}") from None
        finally:
            conn.close()
        if response.status != 200:
            self._raise(endpoint, response.status, data)
        self._token = json.loads(data)["token"]

    @staticmethod
    def _error(data: bytes) -> dict:
        try:
            return json.loads(data)
        except ValueError:
            return {"message": data.decode(errors="replace")[:200]}

    def _raise(self, endpoint: _Endpoint, status: int, data: bytes, kind: type = None):
        error = self._error(data)
        message = " ".join(str(error.get("message") or error.get("error") or f"HTTP {status}").split())
        raise (kind or EtcdError)(f"etcd at {endpoint.url}: {message}")


def _watch_result(endpoint: _Endpoint, full: str, line: bytes) -> dict:
    """One line of etcd's watch stream, as its `result`; what ends the watch raises (closed, an error of the
    gateway, history compacted: Compacted, canceled: EtcdError, or _Unauthenticated for an expired token)."""
    if not line:
        raise EtcdError(f"etcd at {endpoint.url} closed the watch on {full!r}")
    message = json.loads(line)
    if "error" in message:   # the gateway's own error object, in place of a result
        error = message["error"]
        text = error.get("message", error) if isinstance(error, dict) else error
        raise EtcdError(f"etcd at {endpoint.url}: watch on {full!r}: {text}")
    result = message.get("result", {})
    if int(result.get("compact_revision", 0)):
        raise Compacted(f"etcd at {endpoint.url}: revisions up to {result['compact_revision']} "
                        f"are compacted: read {full!r} again")
    if result.get("canceled"):
        reason = result.get("cancel_reason", "no reason given")
        kind = _Unauthenticated if "code = Unauthenticated" in reason else EtcdError
        raise kind(f"etcd at {endpoint.url} canceled the watch on {full!r}: {reason}")
    return result


class Stream:
    """An etcd watch on one connection, read as it comes: `batches()` yields each list of events; it ends
    with EtcdError when the connection breaks (etcd restarted, or `close()` from another thread), Compacted
    when the history asked for is gone. Nothing is lost between batches: it is one watch."""

    def __init__(self, kv: EtcdKV, prefix: str, after: int):
        self.kv, self.full, self.after = kv, kv.prefix + prefix, after
        self._conn: http.client.HTTPConnection | None = None
        self._closed = False

    def close(self) -> None:
        self._closed = True
        conn = self._conn
        if conn is not None and conn.sock is not None:
            try:
                conn.sock.shutdown(socket.SHUT_RDWR)   # wakes the reader: its readline ends
            except OSError:
                pass

    def batches(self):
        body = {"create_request": {"key": _b64(self.full), "range_end": prefix_end(self.full),
                                   "start_revision": str(self.after + 1)}}
        endpoint, conn = self.kv._connection(fresh=True)
        self._conn = conn
        try:
            response = self.kv._send(conn, "/v3/watch", body)
            if response.status != 200:
                self.kv._raise(endpoint, response.status, response.read())
            # A quiet swarm sends nothing for hours: that is no failure. A dead peer (etcd's host cut off)
            # is found by TCP's keepalive instead, within about 10 s.
            conn.sock.settimeout(None)
            conn.sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
            for opt, value in ((socket.TCP_KEEPIDLE, 4), (socket.TCP_KEEPINTVL, 2), (socket.TCP_KEEPCNT, 3)):
                conn.sock.setsockopt(socket.IPPROTO_TCP, opt, value)
            while not self._closed:
                result = _watch_result(endpoint, self.full, response.readline())
                if result.get("events"):
                    yield [self.kv._event(e) for e in result["events"]]
        except _Unauthenticated:
            self.kv._token = None   # expired: the next connection takes a new one
            raise
        except (OSError, http.client.HTTPException, ValueError) as e:
            raise EtcdError(f"etcd at {endpoint.url}: watch failed: {e}") from None
        finally:
            conn.close()
