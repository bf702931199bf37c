#!/usr/bin/env python3
"""The same pymilvus workload against `sluice standalone` and against milvus-lite, in one run on
this machine: insert rate, search QPS and latency, recall@10 against exact results.

    python3 -m venv /tmp/mv && /tmp/mv/bin/pip install pymilvus==3.0.2 milvus-lite==3.2.2 numpy
    cargo build --release -p sluice
    /tmp/mv/bin/python scripts/bench_milvus.py [--rows 20000] [--dim 128] [--queries 500]

Workload: a quick-setup collection (`dimension`, COSINE), `--rows` rows with a scalar field
inserted in batches of `--batch` by `--writers` threads, a flush, then `--queries` searches (limit
10, half of them with a filter on the scalar field) by `--readers` threads. Recall@10 compares
each search's ids with the exact top 10 computed here with numpy over the inserted vectors.
"""

import argparse
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from pymilvus import MilvusClient

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def start_sluice(data_dir):
    binary = os.environ.get("SLUICE_BIN") or os.path.join(
        os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target")), "release", "sluice"
    )
    proc = subprocess.Popen(
        [binary, "standalone", "--data-dir", data_dir, "--listen", "127.0.0.1:0", "--milvus-listen", "127.0.0.1:0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        m = re.search(r"^Milvus API listening on (\S+)", line)
        if m:
            threading.Thread(target=proc.stdout.read, daemon=True).start()
            return proc, f"http://{m.group(1)}"
        if not line:
            break
    proc.kill()
    sys.exit("sluice standalone did not start")


def run(name, client, vectors, colors, queries, args):
    coll = "bench"
    if client.has_collection(coll):
        client.drop_collection(coll)
    client.create_collection(coll, dimension=args.dim, consistency_level="Strong")
    n = len(vectors)
    batches = [
        [{"id": i, "vector": vectors[i].tolist(), "color": colors[i]} for i in range(s, min(s + args.batch, n))]
        for s in range(0, n, args.batch)
    ]
    t0 = time.perf_counter()
    with ThreadPoolExecutor(args.writers) as pool:
        for r in pool.map(lambda b: client.insert(coll, b), batches):
            assert r["insert_count"] > 0
    insert_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    client.flush(coll)
    flush_s = time.perf_counter() - t0
    # Warm up (loads, caches), then measure.
    client.search(coll, data=[queries[0].tolist()], limit=10)
    latencies = []
    results = [None] * len(queries)

    def one(i):
        flt = 'color == "red"' if i % 2 else ""
        t = time.perf_counter()
        r = client.search(coll, data=[queries[i].tolist()], limit=10, filter=flt)
        latencies.append(time.perf_counter() - t)
        results[i] = [h["id"] for h in r[0]]

    t0 = time.perf_counter()
    with ThreadPoolExecutor(args.readers) as pool:
        list(pool.map(one, range(len(queries))))
    search_s = time.perf_counter() - t0
    # Exact top 10 (cosine), with the filter where the search had one.
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    red = np.array([c == "red" for c in colors])
    hits = 0
    for i, q in enumerate(queries):
        sims = unit @ (q / np.linalg.norm(q))
        if i % 2:
            sims = np.where(red, sims, -np.inf)
        exact = set(np.argsort(-sims)[:10].tolist())
        hits += len(exact & set(results[i]))
    recall = hits / (10 * len(queries))
    lat = sorted(latencies)
    p = lambda q: lat[min(len(lat) - 1, int(q * len(lat)))] * 1000
    print(
        f"{name:<10} insert {n / insert_s:10.0f} rows/s   flush {flush_s:6.2f} s   search "
        f"{len(queries) / search_s:8.1f} QPS  p50 {p(0.5):7.2f} ms  p99 {p(0.99):7.2f} ms   "
        f"recall@10 {recall:.3f}",
        flush=True,
    )
    client.drop_collection(coll)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=20000)
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--batch", type=int, default=500)
    ap.add_argument("--writers", type=int, default=4)
    ap.add_argument("--queries", type=int, default=500)
    ap.add_argument("--readers", type=int, default=4)
    args = ap.parse_args()
    rng = np.random.default_rng(7)
    vectors = rng.random((args.rows, args.dim), dtype=np.float32)
    colors = [("red", "blue", "green")[i % 3] for i in range(args.rows)]
    queries = rng.random((args.queries, args.dim), dtype=np.float32)
    print(f"$ {' '.join(sys.argv)}")
    print(
        f"{args.rows} rows of dim {args.dim} in batches of {args.batch} by {args.writers} writers; "
        f"{args.queries} searches (limit 10, half filtered) by {args.readers} readers"
    )
    with tempfile.TemporaryDirectory(prefix="bench-milvus-") as d:
        proc, uri = start_sluice(os.path.join(d, "sluice"))
        try:
            run("sluice", MilvusClient(uri=uri), vectors, colors, queries, args)
        finally:
            proc.terminate()
            proc.wait()
        lite = MilvusClient(os.path.join(d, "lite.db"))
        run("milvus-lite", lite, vectors, colors, queries, args)
        lite.close()


if __name__ == "__main__":
    main()
