#!/usr/bin/env python3
"""Vector-search benchmark: Sluice vs milvus-lite (vs a raw usearch HNSW baseline).

What it does
------------
1. Generates (or reuses from --workdir) a fixed-seed clustered data set:
   --rows vectors of --dim float32 (256 centres ~ N(0,1), point = centre +
   0.15*N(0,1)), ids 0..N-1 (int64), tag = id % 10 (int64), --queries query
   vectors from the same distribution (separate RNG stream) and exact L2
   top-10 ground truth.  Written with pyarrow (uncompressed parquet):
     data.parquet     id: int64, tag: int64, vec: fixed_size_list<float32>[dim]
     queries.parquet  vec: fixed_size_list<float32>[dim]
     truth.parquet    ids: fixed_size_list<int64>[10]   (row i = query i,
                                                          nearest first)
   Cached by (rows, dim, queries, seed, clusters, noise) via dataset.json.
2. milvus-lite (through pymilvus.MilvusClient(<workdir>/milvus_lite.db)):
   explicit schema, HNSW/L2 index, load, batched insert, flush, wait for the
   index, search QPS + latency at 1 and 8 concurrent clients, recall@10,
   insert->searchable latency.
3. Optional Sluice run: `SLUICE_BIN bench search --data D --queries Q
   --truth T --json` must print ONE JSON object (see "Sluice JSON contract").
4. Optional raw usearch HNSW baseline ("usearch-raw"), if usearch imports.
5. Prints a comparison table; --json-out writes everything.

Sluice JSON contract (one object on stdout; extra keys are allowed and kept)
---------------------------------------------------------------------------
  system                   str    e.g. "sluice"
  rows                     int    rows loaded from --data
  dim                      int    vector dimension
  insert_rows_per_s        float  rows/s inserting all of --data in batches
                                  (ingest only; report flush/index build
                                  separately in extra keys if relevant)
  search_qps_1             float  searches/s, 1 client, 1 query vector per
                                  request, limit/top-k = 10, L2
  search_qps_8             float  same with 8 concurrent clients
  p50_ms_1, p99_ms_1       float  per-request latency percentiles (ms), 1 client
  p50_ms_8, p99_ms_8       float  same, 8 clients
  recall_at_10             float  mean over all queries of
                                  |returned top-10 ids & truth ids| / 10
  insert_to_searchable_ms  float  median over 5 tries of: insert one new row
                                  with a distinctive vector, then search for
                                  it in a loop until its id is returned
  index                    str    description of the index and parameters
Any numeric key may be null when not measured.  A non-zero exit status,
unparsable stdout or a missing key makes this script exit non-zero after
printing the subprocess's stderr.

Notes
-----
* milvus-lite >= 3 is pure Python and, for a local .db path, runs its gRPC
  server in THIS process (threads), so benchmark clients and server share
  one GIL.  Use --milvus-uri http://127.0.0.1:PORT against a separately
  started `milvus-lite server --data-dir DIR --port PORT` to avoid that.
* Without an explicit flush milvus-lite keeps up to 128 MiB in its memtable
  and answers from it by brute force; the script therefore flushes after the
  insert and waits for the background HNSW build (flush_s / index_ready_s).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

GENERATOR_VERSION = 1
TOP_K = 10
COLLECTION = "bench_search"
RESULT_KEYS = [
    "system",
    "rows",
    "dim",
    "insert_rows_per_s",
    "search_qps_1",
    "search_qps_8",
    "p50_ms_1",
    "p99_ms_1",
    "p50_ms_8",
    "p99_ms_8",
    "recall_at_10",
    "insert_to_searchable_ms",
    "index",
]
_T0 = time.perf_counter()


def log(msg: str) -> None:
    print(f"[{time.perf_counter() - _T0:7.1f}s] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------
# Data set
# --------------------------------------------------------------------------


def _fsl(values: np.ndarray, width: int, value_type: pa.DataType) -> pa.FixedSizeListArray:
    flat = pa.array(np.ascontiguousarray(values).reshape(-1), type=value_type)
    return pa.FixedSizeListArray.from_arrays(flat, width)


def _read_fsl(path: Path, column: str, dtype) -> np.ndarray:
    col = pq.read_table(path, columns=[column]).column(column).combine_chunks()
    width = col.type.list_size
    return col.flatten().to_numpy(zero_copy_only=False).astype(dtype, copy=False).reshape(-1, width)


def exact_topk(data: np.ndarray, queries: np.ndarray, k: int, chunk: int = 64) -> np.ndarray:
    """Exact L2 top-k ids (nearest first, ties broken by id).

    float32 matmul to pick candidates, then exact float64 re-rank."""
    n = data.shape[0]
    k = min(k, n)
    cand_k = min(n, k + 40)
    xx = np.einsum("ij,ij->i", data, data)
    out = np.empty((queries.shape[0], k), dtype=np.int64)
    for s in range(0, queries.shape[0], chunk):
        q = queries[s : s + chunk]
        d2 = xx[None, :] - 2.0 * (q @ data.T)
        cand = np.argpartition(d2, cand_k - 1, axis=1)[:, :cand_k]
        diff = data[cand].astype(np.float64) - q[:, None, :].astype(np.float64)
        dist = np.einsum("bcd,bcd->bc", diff, diff)
        for r in range(q.shape[0]):
            order = np.lexsort((cand[r], dist[r]))[:k]
            out[s + r] = cand[r][order]
    return out


def prepare_dataset(args) -> dict:
    wd = Path(args.workdir)
    wd.mkdir(parents=True, exist_ok=True)
    files = {n: wd / f"{n}.parquet" for n in ("data", "queries", "truth")}
    meta_path = wd / "dataset.json"
    want = {
        "generator_version": GENERATOR_VERSION,
        "rows": args.rows,
        "dim": args.dim,
        "queries": args.queries,
        "seed": args.seed,
        "clusters": args.clusters,
        "noise": args.noise,
        "top_k": TOP_K,
    }
    cached = False
    if meta_path.exists() and all(p.exists() for p in files.values()):
        try:
            cached = json.loads(meta_path.read_text()) == want
        except ValueError:
            cached = False
    if cached:
        log(f"reusing cached data set in {wd}")
    else:
        log(f"generating data set rows={args.rows} dim={args.dim} queries={args.queries} seed={args.seed}")
        meta_path.unlink(missing_ok=True)
        rng = np.random.default_rng(args.seed)
        centres = rng.standard_normal((args.clusters, args.dim), dtype=np.float32)
        data = np.empty((args.rows, args.dim), dtype=np.float32)
        step = 100_000
        for s in range(0, args.rows, step):
            e = min(args.rows, s + step)
            assign = rng.integers(0, args.clusters, size=e - s)
            data[s:e] = centres[assign] + np.float32(args.noise) * rng.standard_normal(
                (e - s, args.dim), dtype=np.float32
            )
        # Different stream for the queries (same centres/distribution).
        qrng = np.random.default_rng([args.seed, 1])
        qassign = qrng.integers(0, args.clusters, size=args.queries)
        queries = centres[qassign] + np.float32(args.noise) * qrng.standard_normal(
            (args.queries, args.dim), dtype=np.float32
        )
        queries = queries.astype(np.float32)
        t = time.perf_counter()
        truth = exact_topk(data, queries, TOP_K)
        log(f"ground truth computed in {time.perf_counter() - t:.1f}s")
        ids = np.arange(args.rows, dtype=np.int64)
        pq.write_table(
            pa.table(
                {
                    "id": pa.array(ids, type=pa.int64()),
                    "tag": pa.array(ids % 10, type=pa.int64()),
                    "vec": _fsl(data, args.dim, pa.float32()),
                }
            ),
            files["data"],
            compression="none",
            row_group_size=65536,
        )
        pq.write_table(
            pa.table({"vec": _fsl(queries, args.dim, pa.float32())}),
            files["queries"],
            compression="none",
        )
        pq.write_table(
            pa.table({"ids": _fsl(truth, truth.shape[1], pa.int64())}),
            files["truth"],
            compression="none",
        )
        meta_path.write_text(json.dumps(want, indent=2) + "\n")
    tbl = pq.read_table(files["data"], columns=["id", "tag"])
    ds = {
        "ids": tbl.column("id").to_numpy(),
        "tags": tbl.column("tag").to_numpy(),
        "vecs": _read_fsl(files["data"], "vec", np.float32),
        "queries": _read_fsl(files["queries"], "vec", np.float32),
        "truth": _read_fsl(files["truth"], "ids", np.int64),
        "files": {k: str(v.resolve()) for k, v in files.items()},
        "cached": cached,
    }
    assert ds["vecs"].shape == (args.rows, args.dim), ds["vecs"].shape
    assert ds["queries"].shape == (args.queries, args.dim)
    assert ds["truth"].shape == (args.queries, TOP_K)
    return ds


def recall_at_k(found: list, truth: np.ndarray) -> float:
    hits = 0
    for i, ids in enumerate(found):
        hits += len(set(int(x) for x in ids[:TOP_K]) & set(truth[i].tolist()))
    return hits / (len(found) * TOP_K)


def pct_ms(lat_s: list, p: float):
    return float(np.percentile(np.asarray(lat_s), p) * 1e3) if lat_s else None


# --------------------------------------------------------------------------
# Generic concurrent search driver
# --------------------------------------------------------------------------


def run_search_level(make_searcher, queries: np.ndarray, clients: int, seconds: float,
                     fixed_queries: int, warmup: int, collect: bool):
    """Run `clients` threads, each with its own searcher (callable q -> ids).

    Duration-based (seconds) unless fixed_queries > 0 (total over all
    clients).  Returns (qps, latencies_s, {query_index: ids} if collect)."""
    nq = queries.shape[0]
    searchers = [make_searcher() for _ in range(clients)]
    lat = [[] for _ in range(clients)]
    got = [dict() for _ in range(clients)]
    errors = []
    barrier = threading.Barrier(clients + 1)
    starts = [0.0] * clients
    ends = [0.0] * clients
    per_thread = None
    if fixed_queries > 0:
        per_thread = [fixed_queries // clients + (1 if c < fixed_queries % clients else 0) for c in range(clients)]

    def worker(c: int):
        try:
            s = searchers[c]
            base = (c * nq) // clients
            for w in range(warmup):
                s(queries[(base + nq // 2 + w) % nq])
            barrier.wait()
            starts[c] = time.perf_counter()
            deadline = starts[c] + seconds
            i = 0
            while True:
                if per_thread is not None:
                    if i >= per_thread[c]:
                        break
                elif i % 8 == 0 and time.perf_counter() >= deadline:
                    break
                qi = (base + i) % nq
                t = time.perf_counter()
                ids = s(queries[qi])
                lat[c].append(time.perf_counter() - t)
                if collect and qi not in got[c]:
                    got[c][qi] = ids
                i += 1
        except BaseException as e:  # noqa: BLE001
            errors.append(e)
            try:
                barrier.abort()
            except Exception:
                pass
        finally:
            ends[c] = time.perf_counter()

    threads = [threading.Thread(target=worker, args=(c,), daemon=True) for c in range(clients)]
    for t in threads:
        t.start()
    try:
        barrier.wait()
    except threading.BrokenBarrierError:
        pass
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    elapsed = max(ends) - min(starts)
    all_lat = [x for l in lat for x in l]
    merged = {}
    for g in got:
        merged.update(g)
    qps = len(all_lat) / elapsed if elapsed > 0 else None
    return qps, all_lat, merged


def measure_search(name: str, make_searcher, ds: dict, args, levels=(1, 8)) -> dict:
    out = {}
    queries, truth = ds["queries"], ds["truth"]
    for clients in levels:
        log(f"{name}: searching with {clients} client(s) "
            + (f"for {args.search_queries} queries" if args.search_queries > 0 else f"for {args.search_seconds:g}s"))
        qps, lat, got = run_search_level(
            make_searcher, queries, clients, args.search_seconds, args.search_queries,
            warmup=args.warmup, collect=(clients == levels[0]),
        )
        out[f"search_qps_{clients}"] = qps
        out[f"p50_ms_{clients}"] = pct_ms(lat, 50)
        out[f"p99_ms_{clients}"] = pct_ms(lat, 99)
        out[f"searches_{clients}"] = len(lat)
        log(f"{name}: {clients} client(s): {len(lat)} searches, {qps:.1f} QPS, "
            f"p50 {out[f'p50_ms_{clients}']:.2f} ms, p99 {out[f'p99_ms_{clients}']:.2f} ms")
        if clients == levels[0]:
            missing = [i for i in range(queries.shape[0]) if i not in got]
            if missing:
                s = make_searcher()
                for i in missing:
                    got[i] = s(queries[i])
            out["recall_at_10"] = recall_at_k([got[i] for i in range(queries.shape[0])], truth)
            log(f"{name}: recall@10 = {out['recall_at_10']:.4f}")
    return out


# --------------------------------------------------------------------------
# milvus-lite
# --------------------------------------------------------------------------


def _milvus_index_ready(client, uri: str, local_db: bool) -> str:
    """Block until the post-flush background index build has finished.

    milvus-lite 3.x builds segment indexes on a background worker after a
    flush and reports no progress over the API (describe_index always says
    Finished).  For the in-process server we drain that worker through the
    engine object; otherwise release + load (load builds missing indexes
    synchronously)."""
    if local_db:
        try:
            from milvus_lite.server_manager import server_manager_instance as mgr

            entry = mgr._servers.get(os.path.abspath(uri))  # noqa: SLF001
            if entry is not None:
                col = entry[1].get_collection(COLLECTION)
                col._wait_for_bg()  # noqa: SLF001
                return "drained background index worker"
        except Exception as e:  # noqa: BLE001
            log(f"milvus-lite: could not drain background worker ({e!r}); using release+load")
    client.release_collection(COLLECTION)
    client.load_collection(COLLECTION)
    return "release_collection + load_collection"


def bench_milvus(ds: dict, args) -> dict:
    from pymilvus import DataType, MilvusClient

    local_db = args.milvus_uri is None
    uri = str(Path(args.workdir).resolve() / "milvus_lite.db") if local_db else args.milvus_uri
    dim = args.dim
    log(f"milvus-lite: connecting to {uri}")
    client = MilvusClient(uri)
    if client.has_collection(COLLECTION):
        client.drop_collection(COLLECTION)
    schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
    schema.add_field("id", DataType.INT64, is_primary=True)
    schema.add_field("tag", DataType.INT64)
    schema.add_field("vec", DataType.FLOAT_VECTOR, dim=dim)
    index_params = client.prepare_index_params()
    if args.milvus_index == "HNSW":
        build = {"M": args.hnsw_m, "efConstruction": args.ef_construction}
        search_params = {"metric_type": "L2", "params": {"ef": args.ef_search}}
        index_desc = (f"HNSW (faiss IndexHNSWFlat per segment) M={args.hnsw_m} "
                      f"efConstruction={args.ef_construction} ef={args.ef_search} metric=L2")
    elif args.milvus_index == "IVF_FLAT":
        build = {"nlist": args.nlist}
        search_params = {"metric_type": "L2", "params": {"nprobe": args.nprobe}}
        index_desc = f"IVF_FLAT nlist={args.nlist} nprobe={args.nprobe} metric=L2"
    else:
        build = {}
        search_params = {"metric_type": "L2", "params": {}}
        index_desc = f"{args.milvus_index} metric=L2"
    index_params.add_index(field_name="vec", index_type=args.milvus_index, metric_type="L2", params=build)
    client.create_collection(COLLECTION, schema=schema, index_params=index_params)
    client.load_collection(COLLECTION)

    # ---- insert
    ids, tags, vecs = ds["ids"], ds["tags"], ds["vecs"]
    n = len(ids)
    log(f"milvus-lite: inserting {n} rows in batches of {args.batch}")
    insert_s = 0.0
    for s in range(0, n, args.batch):
        e = min(n, s + args.batch)
        rows = [
            {"id": i, "tag": t, "vec": v}
            for i, t, v in zip(ids[s:e].tolist(), tags[s:e].tolist(), vecs[s:e].tolist())
        ]
        t = time.perf_counter()
        res = client.insert(COLLECTION, rows)
        insert_s += time.perf_counter() - t
        if res.get("insert_count") != e - s:
            raise RuntimeError(f"milvus-lite insert returned {res.get('insert_count')} for {e - s} rows")
    t = time.perf_counter()
    client.flush(COLLECTION)
    flush_s = time.perf_counter() - t
    t = time.perf_counter()
    how = _milvus_index_ready(client, uri, local_db)
    index_ready_s = time.perf_counter() - t
    log(f"milvus-lite: insert {insert_s:.2f}s ({n / insert_s:.0f} rows/s), flush {flush_s:.2f}s, "
        f"index ready {index_ready_s:.2f}s ({how})")
    stats = client.get_collection_stats(COLLECTION)
    if int(stats.get("row_count", n)) != n:
        log(f"milvus-lite: WARNING row_count={stats.get('row_count')} expected {n}")

    # ---- search
    def make_searcher():
        c = MilvusClient(uri)

        def search(q: np.ndarray):
            r = c.search(
                COLLECTION, data=[q.tolist()], limit=TOP_K, anns_field="vec",
                search_params=search_params, output_fields=["id"],
            )
            return [h["id"] for h in r[0]]

        return search

    out = measure_search("milvus-lite", make_searcher, ds, args)

    # ---- insert -> searchable
    lat_ms = []
    for k in range(args.searchable_tries):
        key = n + 1_000_000 + k
        vec = np.full(dim, 50.0 + 7.0 * k, dtype=np.float32)
        vec[k % dim] = -50.0  # distinctive and far from every cluster
        vlist = vec.tolist()
        t = time.perf_counter()
        client.insert(COLLECTION, [{"id": key, "tag": key % 10, "vec": vlist}])
        found = False
        while time.perf_counter() - t < args.searchable_timeout:
            r = client.search(
                COLLECTION, data=[vlist], limit=1, anns_field="vec", search_params=search_params,
                output_fields=["id"], consistency_level="Strong",
            )
            if r[0] and r[0][0]["id"] == key:
                found = True
                break
        dt = (time.perf_counter() - t) * 1e3
        if not found:
            log(f"milvus-lite: row {key} not searchable after {args.searchable_timeout}s")
            dt = float("inf")
        lat_ms.append(dt)
    finite = [x for x in lat_ms if x != float("inf")]
    client.close()
    import pymilvus

    try:
        from milvus_lite import __version__ as mlv
    except Exception:  # noqa: BLE001
        mlv = _pkg_version("milvus-lite")
    result = {
        "system": "milvus-lite",
        "rows": n,
        "dim": dim,
        "insert_rows_per_s": n / insert_s,
        **{k: out.get(k) for k in RESULT_KEYS if k in out},
        "insert_to_searchable_ms": statistics.median(lat_ms) if len(finite) == len(lat_ms) else None,
        "index": index_desc,
        # extras
        "version": f"milvus-lite {mlv}, pymilvus {pymilvus.__version__}",
        "batch": args.batch,
        "insert_s": insert_s,
        "flush_s": flush_s,
        "index_ready_s": index_ready_s,
        "index_ready_method": how,
        "insert_to_searchable_tries_ms": [x if x != float("inf") else None for x in lat_ms],
        "searches_1": out.get("searches_1"),
        "searches_8": out.get("searches_8"),
        "server": "in-process (shares GIL with clients)" if local_db else f"external {uri}",
    }
    return result


# --------------------------------------------------------------------------
# usearch raw baseline
# --------------------------------------------------------------------------


def bench_usearch(ds: dict, args):
    try:
        import usearch
        from usearch.index import Index
    except Exception as e:  # noqa: BLE001
        log(f"usearch not available ({e!r}); skipping usearch-raw")
        return None
    n, dim = ds["vecs"].shape
    idx = Index(
        ndim=dim, metric="l2sq", dtype="f32", connectivity=args.hnsw_m,
        expansion_add=args.ef_construction, expansion_search=args.ef_search,
    )
    threads = args.usearch_threads or (os.cpu_count() or 1)
    log(f"usearch: building HNSW over {n} vectors with {threads} thread(s)")
    t = time.perf_counter()
    idx.add(ds["ids"], ds["vecs"], threads=threads)
    build_s = time.perf_counter() - t
    log(f"usearch: built in {build_s:.2f}s ({n / build_s:.0f} vectors/s)")

    def make_searcher():
        def search(q: np.ndarray):
            return idx.search(q, TOP_K, threads=1).keys.tolist()

        return search

    out = measure_search("usearch-raw", make_searcher, ds, args, levels=(1,))
    return {
        "system": "usearch-raw",
        "rows": n,
        "dim": dim,
        "insert_rows_per_s": None,
        "search_qps_1": out["search_qps_1"],
        "search_qps_8": None,
        "p50_ms_1": out["p50_ms_1"],
        "p99_ms_1": out["p99_ms_1"],
        "p50_ms_8": None,
        "p99_ms_8": None,
        "recall_at_10": out["recall_at_10"],
        "insert_to_searchable_ms": None,
        "index": (f"usearch HNSW connectivity={args.hnsw_m} expansion_add={args.ef_construction} "
                  f"expansion_search={args.ef_search} metric=l2sq dtype=f32"),
        "version": f"usearch {usearch.__version__}",
        "build_s": build_s,
        "build_threads": threads,
        "build_rows_per_s": n / build_s,
        "searches_1": out.get("searches_1"),
    }


# --------------------------------------------------------------------------
# Sluice
# --------------------------------------------------------------------------


def _parse_one_json_object(text: str):
    text = text.strip()
    try:
        obj = json.loads(text)
        if isinstance(obj, dict):
            return obj
    except ValueError:
        pass
    for line in reversed(text.splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                obj = json.loads(line)
            except ValueError:
                continue
            if isinstance(obj, dict):
                return obj
    return None


def bench_sluice(ds: dict, args) -> dict:
    f = ds["files"]
    cmd = [args.sluice_bin, "bench", "search", "--data", f["data"], "--queries", f["queries"],
           "--truth", f["truth"], "--json",
           "--hnsw-m", str(args.hnsw_m), "--ef-construction", str(args.ef_construction),
           "--ef-search", str(args.sluice_ef_search or args.ef_search)]
    log(f"sluice: running {shlex.join(cmd)}")

    def fail(why: str, proc=None):
        print(f"error: sluice benchmark failed: {why}", file=sys.stderr)
        print(f"command: {shlex.join(cmd)}", file=sys.stderr)
        if proc is not None:
            print("---- sluice stderr ----", file=sys.stderr)
            print(proc.stderr if isinstance(proc.stderr, str) else (proc.stderr or b"").decode(errors="replace"),
                  file=sys.stderr)
            print("---- sluice stdout ----", file=sys.stderr)
            print(proc.stdout if isinstance(proc.stdout, str) else (proc.stdout or b"").decode(errors="replace"),
                  file=sys.stderr)
        sys.exit(3)

    t = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.sluice_timeout)
    except FileNotFoundError as e:
        fail(f"cannot execute {args.sluice_bin!r}: {e}")
    except PermissionError as e:
        fail(f"cannot execute {args.sluice_bin!r}: {e}")
    except subprocess.TimeoutExpired as e:
        fail(f"timed out after {args.sluice_timeout}s", e)
    wall = time.perf_counter() - t
    if proc.returncode != 0:
        fail(f"exit status {proc.returncode}", proc)
    obj = _parse_one_json_object(proc.stdout)
    if obj is None:
        fail("stdout did not contain a JSON object", proc)
    missing = [k for k in RESULT_KEYS if k not in obj]
    if missing:
        fail(f"JSON object is missing keys {missing}", proc)
    if obj.get("rows") != len(ds["ids"]) or obj.get("dim") != ds["vecs"].shape[1]:
        log(f"sluice: WARNING rows/dim {obj.get('rows')}/{obj.get('dim')} differ from data set "
            f"{len(ds['ids'])}/{ds['vecs'].shape[1]}")
    if args.verbose and proc.stderr:
        print(proc.stderr, file=sys.stderr)
    obj.setdefault("wall_s", wall)
    log(f"sluice: done in {wall:.1f}s")
    return obj


# --------------------------------------------------------------------------
# Output
# --------------------------------------------------------------------------


def _fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, int) and not isinstance(v, bool):
        return str(v)
    if isinstance(v, float):
        if v != v or v in (float("inf"), float("-inf")):
            return str(v)
        if abs(v) >= 1000:
            return f"{v:,.0f}"
        if abs(v) >= 100:
            return f"{v:.1f}"
        return f"{v:.3f}" if abs(v) < 10 else f"{v:.2f}"
    return str(v)


def print_table(results: list) -> None:
    rows = [
        ("rows", "rows"),
        ("dim", "dim"),
        ("insert rows/s", "insert_rows_per_s"),
        ("search QPS (1 client)", "search_qps_1"),
        ("p50 ms (1 client)", "p50_ms_1"),
        ("p99 ms (1 client)", "p99_ms_1"),
        ("search QPS (8 clients)", "search_qps_8"),
        ("p50 ms (8 clients)", "p50_ms_8"),
        ("p99 ms (8 clients)", "p99_ms_8"),
        ("recall@10", "recall_at_10"),
        ("insert->searchable ms", "insert_to_searchable_ms"),
    ]
    names = [r.get("system", "?") for r in results]
    w0 = max(len(r[0]) for r in rows)
    ws = [max(12, len(nm)) for nm in names]
    print(f"{'metric':<{w0}}  " + "  ".join(f"{nm:>{w}}" for nm, w in zip(names, ws)))
    print("-" * (w0 + 2 + sum(w + 2 for w in ws)))
    for label, key in rows:
        print(f"{label:<{w0}}  " + "  ".join(f"{_fmt(r.get(key)):>{w}}" for r, w in zip(results, ws)))
    print()
    for r in results:
        print(f"{r.get('system')}: index: {r.get('index')}")
        extra = {k: r[k] for k in ("version", "flush_s", "index_ready_s", "build_s", "server") if k in r}
        if extra:
            print("  " + ", ".join(f"{k}={_fmt(v)}" for k, v in extra.items()))


def _pkg_version(name: str):
    try:
        from importlib.metadata import version

        return version(name)
    except Exception:  # noqa: BLE001
        return None


def _json_safe(o):
    if isinstance(o, float) and (o != o or o in (float("inf"), float("-inf"))):
        return None
    if isinstance(o, dict):
        return {k: _json_safe(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_json_safe(v) for v in o]
    if isinstance(o, np.generic):
        return o.item()
    return o


# --------------------------------------------------------------------------
# main
# --------------------------------------------------------------------------


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0]
        + " Generates a cached clustered data set, benchmarks milvus-lite (and optionally"
        " Sluice and a raw usearch HNSW index) on insert throughput, search QPS/latency at"
        " 1 and 8 clients, recall@10 and insert->searchable latency.",
        epilog="Sluice contract: SLUICE_BIN bench search --data D --queries Q --truth T --json must print "
        "one JSON object with keys: " + ", ".join(RESULT_KEYS) + " (numeric keys may be null; "
        "see the module docstring for exact semantics). Example: "
        "~/.cache/sluice-venv/bin/python scripts/bench_search.py --rows 20000 --json-out /tmp/bench.json",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    g = p.add_argument_group("data set")
    g.add_argument("--rows", type=int, default=100_000, help="number of data vectors")
    g.add_argument("--dim", type=int, default=128, help="vector dimension")
    g.add_argument("--queries", type=int, default=1000, help="number of query vectors")
    g.add_argument("--seed", type=int, default=42, help="RNG seed")
    g.add_argument("--clusters", type=int, default=256, help="number of cluster centres")
    g.add_argument("--noise", type=float, default=0.15, help="stddev of points around their centre")
    g.add_argument("--workdir", default=None,
                   help="directory for the parquet files, dataset.json and milvus_lite.db; "
                        "None means $TMPDIR/sluice-bench-search/r<rows>-d<dim>-q<queries>-s<seed>")
    g = p.add_argument_group("workload")
    g.add_argument("--batch", type=int, default=1000, help="insert batch size (rows)")
    g.add_argument("--search-seconds", type=float, default=10.0,
                   help="duration of each search concurrency level")
    g.add_argument("--search-queries", type=int, default=0,
                   help="if > 0, run this many searches per concurrency level instead of --search-seconds")
    g.add_argument("--warmup", type=int, default=20, help="untimed warm-up searches per client")
    g.add_argument("--searchable-tries", type=int, default=5, help="insert->searchable repetitions (median)")
    g.add_argument("--searchable-timeout", type=float, default=30.0, help="give up on one try after this many s")
    g = p.add_argument_group("index")
    g.add_argument("--milvus-index", default="HNSW",
                   choices=["HNSW", "FLAT", "IVF_FLAT", "BRUTE_FORCE", "AUTOINDEX"],
                   help="milvus-lite index type")
    g.add_argument("--hnsw-m", type=int, default=16, help="HNSW M / usearch connectivity")
    g.add_argument("--ef-construction", type=int, default=128,
                   help="HNSW efConstruction / usearch expansion_add")
    g.add_argument("--ef-search", type=int, default=64, help="HNSW ef / usearch expansion_search")
    g.add_argument("--nlist", type=int, default=1024, help="IVF_FLAT nlist")
    g.add_argument("--nprobe", type=int, default=16, help="IVF_FLAT nprobe")
    g = p.add_argument_group("systems")
    g.add_argument("--sluice-bin", default=None, help="path to the sluice binary; enables the Sluice run")
    g.add_argument("--sluice-ef-search", type=int, default=None,
                   help="Sluice's HNSW ef (default: --ef-search), to compare at equal recall")
    g.add_argument("--sluice-timeout", type=float, default=1800.0, help="timeout for the Sluice subprocess (s)")
    g.add_argument("--milvus-uri", default=None,
                   help="use an already running milvus(-lite) server, e.g. one started with "
                        "`milvus-lite server --data-dir DIR --host 127.0.0.1 --port 19530` and given as "
                        "http://127.0.0.1:19530, instead of the in-process <workdir>/milvus_lite.db")
    g.add_argument("--skip-milvus", action="store_true", help="do not run milvus-lite")
    g.add_argument("--skip-usearch", action="store_true", help="do not run the usearch-raw baseline")
    g.add_argument("--usearch-threads", type=int, default=0, help="threads for the usearch build (0 = all cores)")
    g = p.add_argument_group("output")
    g.add_argument("--json-out", default=None, help="write all results (and run metadata) to this JSON file")
    g.add_argument("--verbose", action="store_true", help="echo the Sluice subprocess's stderr on success")
    args = p.parse_args(argv)
    if args.rows < TOP_K or args.dim < 1 or args.queries < 1 or args.batch < 1:
        p.error("need --rows >= 10, --dim >= 1, --queries >= 1, --batch >= 1")
    if args.workdir is None:
        args.workdir = str(Path(tempfile.gettempdir()) / "sluice-bench-search"
                           / f"r{args.rows}-d{args.dim}-q{args.queries}-s{args.seed}")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    started = time.time()
    load_before = os.getloadavg()
    ds = prepare_dataset(args)
    log(f"data: {ds['files']['data']}")
    results = []
    if args.sluice_bin:
        results.append(bench_sluice(ds, args))  # fail fast
    if not args.skip_milvus:
        results.append(bench_milvus(ds, args))
    if not args.skip_usearch:
        r = bench_usearch(ds, args)
        if r is not None:
            results.append(r)
    wall = time.time() - started
    print_table(results)
    print(f"\ntotal wall time {wall:.1f}s; load average before {load_before[0]:.2f}, "
          f"after {os.getloadavg()[0]:.2f} (cpus={os.cpu_count()})")
    if args.json_out:
        doc = {
            "meta": {
                "argv": sys.argv,
                "args": vars(args),
                "started_unix": started,
                "wall_s": wall,
                "dataset_cached": ds["cached"],
                "files": ds["files"],
                "host": platform.node(),
                "platform": platform.platform(),
                "python": platform.python_version(),
                "cpus": os.cpu_count(),
                "loadavg_before": load_before,
                "loadavg_after": os.getloadavg(),
                "versions": {k: _pkg_version(k) for k in
                             ("numpy", "pyarrow", "pymilvus", "milvus-lite", "usearch", "faiss-cpu", "grpcio")},
                "result_keys": RESULT_KEYS,
            },
            "results": results,
        }
        Path(args.json_out).write_text(json.dumps(_json_safe(doc), indent=2) + "\n")
        log(f"wrote {args.json_out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
