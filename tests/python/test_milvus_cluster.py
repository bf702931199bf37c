"""A pymilvus workload through a SIGKILL of the WAL owner: a cluster of `sluice coord` and two
`sluice node` processes on etcd; pymilvus talks to node 1's Milvus API while node 2 owns every
WAL; node 2 is SIGKILLed mid-workload. Inserts keep being acknowledged (after the failover),
none acknowledged is lost or doubled, and searches answer again.

Needs etcd (SLUICE_TEST_ETCD, set by the test command) and a binary built with the etcd feature
(SLUICE_CLUSTER_BIN, else SLUICE_BIN).
"""

import os
import random
import re
import signal
import subprocess
import tempfile
import threading
import time
import uuid
from pathlib import Path

import pytest

pymilvus = pytest.importorskip("pymilvus")
from pymilvus import MilvusClient  # noqa: E402

DIM = 8
TIMEOUT = 60


def need(var):
    value = os.environ.get(var)
    if not value:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true but {var} is not set")
        pytest.skip(f"{var} is not set")
    return value


class Proc:
    def __init__(self, args, env, log):
        self.log = open(log, "w")
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=self.log, text=True, env=env)
        self.lines = []

    def wait_for(self, pattern):
        deadline = time.monotonic() + TIMEOUT
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                break
            self.lines.append(line)
            m = re.search(pattern, line)
            if m:
                return m.group(1)
        raise AssertionError(f"no {pattern!r} in {self.lines}")

    def drain(self):
        threading.Thread(target=self.proc.stdout.read, daemon=True).start()

    def kill(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()


def free_port():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_pymilvus_workload_survives_a_sigkill_of_the_wal_owner():
    etcd = need("SLUICE_TEST_ETCD")
    binary = os.environ.get("SLUICE_CLUSTER_BIN") or need("SLUICE_BIN")
    procs = []
    with tempfile.TemporaryDirectory(prefix="sluice-milvus-ha-") as d:
        d = Path(d)
        env = {
            **os.environ,
            "SLUICE_META__ROOT": f"/milvus-ha-{uuid.uuid4().hex[:8]}",
            "SLUICE_STORAGE__DIR": str(d / "storage"),
            "SLUICE_COORD__ELECTION_TTL_MS": "2000",
        }
        coord_addr = f"127.0.0.1:{free_port()}"
        try:
            coord = Proc(
                [binary, "coord", "--meta-backend", "etcd", "--etcd", etcd, "--listen", coord_addr, "--pchannels", "2"],
                env,
                d / "coord.stderr",
            )
            procs.append(coord)
            coord.wait_for(r"listening on (\S+)")
            coord.drain()
            nodes = {}
            for n in (1, 2):
                p = Proc(
                    [
                        binary, "node", "--meta-backend", "etcd", "--etcd", etcd,
                        "--listen", "127.0.0.1:0", "--data-dir", str(d / f"node-{n}"),
                        "--log-dir", str(d / "log"), "--node-id", str(n), "--lease-ttl-ms", "2000",
                        "--coord", f"http://{coord_addr}", "--milvus-listen", "127.0.0.1:0",
                    ],
                    env,
                    d / f"node-{n}.stderr",
                )
                procs.append(p)
                p.wait_for(r"listening on (\S+)")
                nodes[n] = (p, p.wait_for(r"^Milvus API listening on (\S+)"))
                p.drain()

            def ctl(*args):
                out = subprocess.run(
                    [binary, "ctl", *args, "--coord", f"http://{coord_addr}"],
                    capture_output=True, text=True, timeout=TIMEOUT,
                )
                assert out.returncode == 0, out.stderr
                return out.stdout

            # Node 2 owns every WAL; pymilvus talks to node 1.
            for pch in ("sluice-dml_0", "sluice-dml_1"):
                deadline = time.monotonic() + TIMEOUT
                while True:
                    out = subprocess.run(
                        [binary, "ctl", "move", pch, "2", "--coord", f"http://{coord_addr}"],
                        capture_output=True, text=True, timeout=TIMEOUT,
                    )
                    if out.returncode == 0:
                        break
                    assert time.monotonic() < deadline, out.stderr
                    time.sleep(0.2)
            c = MilvusClient(uri=f"http://{nodes[1][1]}")
            c.create_collection("ha", dimension=DIM, consistency_level="Strong")
            rnd = random.Random(5)
            acked = []
            killed_at = None
            next_id = 0
            started = time.monotonic()
            while True:
                batch = [{"id": next_id + i, "vector": [rnd.random() for _ in range(DIM)], "tag": "x"} for i in range(20)]
                next_id += 20
                r = c.insert("ha", batch)
                assert r["insert_count"] == 20
                acked.extend(x["id"] for x in batch)
                if killed_at is None and len(acked) >= 400:
                    nodes[2][0].kill()
                    killed_at = time.monotonic()
                    acked_before_kill = len(acked)
                if killed_at is not None and len(acked) >= acked_before_kill + 400:
                    break
                assert time.monotonic() - started < 120, "the workload stalled"
            resumed = time.monotonic() - killed_at
            hits = c.search("ha", data=[[0.5] * DIM], limit=5)
            assert len(hits[0]) == 5, "searches answer after the failover"
            count = c.query("ha", filter="", output_fields=["count(*)"])[0]["count(*)"]
            assert count == len(acked), f"{count} rows for {len(acked)} acknowledged inserts"
            got = set()
            for i in range(0, len(acked), 500):
                chunk = acked[i : i + 500]
                got.update(x["id"] for x in c.query("ha", filter=f"id in {chunk}", output_fields=["tag"]))
            assert got == set(acked), f"{len(set(acked) - got)} acknowledged inserts lost"
            print(
                f"pymilvus through a WAL owner SIGKILL: {len(acked)} rows acknowledged, all read back "
                f"once; the workload went on {resumed:.1f} s after the kill with 400 more rows"
            )
        finally:
            for p in reversed(procs):
                p.kill()
