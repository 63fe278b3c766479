"""Which etcd client for the store: p50/p99 of a one-key compare-and-swap Txn and of a range over 500 keys,
for nsnet's own (`store/etcd.py`: etcd's JSON gateway over http.client) and Python clients from PyPI,
one after the other against the same etcd, in the same run.

    sudo .venv/bin/python bench/etcd_clients.py [NAME=PYTHON ...]

NAME is one of MEASURE's keys, PYTHON a python that has that client installed (they are not nsnet's
dependencies: give each its own venv). etcd (Debian's etcd-server) runs in a throwaway namespace
(tests/integration/etcdserver.py) and each client runs inside it. Values are JSON documents of ~150 bytes,
decoded as the store decodes them.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid

TXNS, RANGES, KEYS = 1000, 200, 500
DOC = {"id": "0" * 64, "name": "web", "ipv4": "10.0.0.2/24", "mac": "02:42:0a:00:00:02", "node": "host-1"}


def _stats(samples: list[float]) -> dict:
    s = sorted(samples)
    return {"p50_ms": round(s[len(s) // 2] * 1000, 3), "p99_ms": round(s[int(len(s) * 0.99)] * 1000, 3)}


def _time(fn, n: int) -> dict:
    for _ in range(20):
        fn()
    samples = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t)
    return _stats(samples)


def nsnet(endpoint: str, prefix: str) -> dict:
    from nsnet.store import Op
    from nsnet.store.etcd import EtcdKV
    kv = EtcdKV([endpoint], prefix=prefix)
    kv.commit([Op(f"r/{i:04}", DOC) for i in range(100)])
    for start in range(100, KEYS, 100):
        kv.commit([Op(f"r/{i:04}", DOC) for i in range(start, start + 100)])
    rev = [kv.commit([Op("cas", DOC)])]

    def txn():
        rev[0] = kv.commit([Op("cas", DOC, expect=rev[0])])
    return {"txn": _time(txn, TXNS), "range500": _time(lambda: kv.list("r/"), RANGES)}


def etcd3gw(endpoint: str, prefix: str) -> dict:
    import base64
    import etcd3gw as gw
    host, port = endpoint.split("//")[1].split(":")
    c = gw.client(host=host, port=int(port))
    value = json.dumps(DOC)
    for i in range(KEYS):
        c.put(f"{prefix}r/{i:04}", value)
    key = base64.b64encode(f"{prefix}cas".encode()).decode()
    rev = [int(c.transaction({"success": [{"request_put": {"key": key, "value": base64.b64encode(value.encode()).decode()}}]})["header"]["revision"])]

    def txn():
        r = c.transaction({"compare": [{"key": key, "target": "MOD", "result": "EQUAL", "mod_revision": str(rev[0])}],
                           "success": [{"request_put": {"key": key, "value": base64.b64encode(value.encode()).decode()}}]})
        assert r.get("succeeded")
        rev[0] = int(r["header"]["revision"])

    def rng():
        return [json.loads(v) for v, _ in c.get_prefix(f"{prefix}r/")]
    return {"txn": _time(txn, TXNS), "range500": _time(rng, RANGES)}


def _grpc(module: str):
    def measure(endpoint: str, prefix: str) -> dict:
        mod = __import__(module)
        host, port = endpoint.split("//")[1].split(":")
        c = mod.client(host=host, port=int(port))
        value = json.dumps(DOC)
        for i in range(KEYS):
            c.put(f"{prefix}r/{i:04}", value)
        key = f"{prefix}cas"
        c.put(key, value)
        rev = [c.get(key)[1].mod_revision]

        def txn():
            ok, responses = c.transaction(compare=[c.transactions.mod(key) == rev[0]],
                                          success=[c.transactions.put(key, value)], failure=[])
            assert ok
            rev[0] += 1   # the only writer: each Txn is the next revision

        def rng():
            return [json.loads(v) for v, _ in c.get_prefix(f"{prefix}r/")]
        return {"txn": _time(txn, TXNS), "range500": _time(rng, RANGES)}
    return measure


MEASURE = {"nsnet": nsnet, "etcd3gw": etcd3gw, "python3-etcd3": _grpc("etcd3"), "etcd-sdk-python": _grpc("pyetcd")}


def main(argv: list[str]) -> None:
    if argv[:1] == ["--measure"]:
        name, endpoint = argv[1:3]
        print(json.dumps(MEASURE[name](endpoint, f"/bench/{uuid.uuid4().hex}/")))
        return
    here = os.path.dirname(os.path.abspath(__file__))
    sys.path.insert(0, os.path.join(here, "..", "tests", "integration"))
    from etcdserver import EtcdCluster
    clients = [("nsnet", sys.executable)] + [tuple(a.split("=", 1)) for a in argv]
    cluster = EtcdCluster(f"nsb-etcd-{uuid.uuid4().hex[:6]}")
    try:
        cluster.start()
        for name, python in clients:
            p = subprocess.run(["ip", "netns", "exec", cluster.ns, python, os.path.abspath(__file__), "--measure",
                                name, cluster.endpoint(0)], capture_output=True, text=True)
            result = json.loads(p.stdout) if p.returncode == 0 else {"error": p.stderr.strip().splitlines()[-1:]}
            print(f"{name:16} {json.dumps(result)}", flush=True)
    finally:
        cluster.stop()


if __name__ == "__main__":
    main(sys.argv[1:])
