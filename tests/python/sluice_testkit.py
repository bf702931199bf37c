"""What the Python tests share: the server process, assignments, a producer, error decoding.

Fixtures (`pb`, `server`) are in conftest.py.
"""

import os
import queue
import re
import signal
import subprocess
import threading
import time
from pathlib import Path

from google.rpc import error_details_pb2
from grpc_status import rpc_status

ROOT = Path(__file__).resolve().parents[2]
TIMEOUT = 30


class Server:
    """`sluice standalone` on a free port and a data directory of its own."""

    def __init__(self, data_dir, env=None):
        self.data_dir = data_dir
        self.env = env or {}
        self.proc = None
        self.address = None
        # The Milvus-compatible API (pymilvus connects here), on a port of its own.
        self.milvus = None

    def start(self):
        binary = os.environ.get("SLUICE_BIN")
        assert binary, "SLUICE_BIN must name the sluice binary"
        self.proc = subprocess.Popen(
            [
                binary,
                "standalone",
                "--data-dir",
                str(self.data_dir),
                "--listen",
                "127.0.0.1:0",
                "--milvus-listen",
                "127.0.0.1:0",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, **self.env},
        )
        deadline = time.monotonic() + TIMEOUT
        lines = []
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                break
            lines.append(line)
            m = re.search(r"^sluice standalone listening on (\S+)", line)
            if m:
                self.address = m.group(1)
            m = re.search(r"^Milvus API listening on (\S+)", line)
            if m:
                self.milvus = m.group(1)
            if self.address and self.milvus:
                # Keep draining its output so it never blocks on a full pipe.
                threading.Thread(target=self.proc.stdout.read, daemon=True).start()
                return
        raise AssertionError("standalone did not start:\n" + "".join(lines))

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                assert self.proc.wait(timeout=TIMEOUT) == 0, "standalone failed on SIGTERM"
            finally:
                if self.proc.poll() is None:
                    self.proc.kill()


def assignment(pb, channel, name=None, above_term=0):
    """The assignment of pchannel `name` (default: the first listed by name) from
    WatchAssignments, at a term above `above_term`."""
    coord = pb.coord_grpc.CoordinatorStub(channel)
    stream = coord.WatchAssignments(pb.coord.WatchAssignmentsRequest(), timeout=TIMEOUT)
    try:
        for update in stream:
            listed = sorted(update.assignments, key=lambda a: a.pchannel.name)
            if name is not None:
                listed = [a for a in listed if a.pchannel.name == name]
            if listed and listed[0].pchannel.term > above_term:
                return listed[0]
    finally:
        stream.cancel()
    raise AssertionError("no assignment arrived")


def error_info(err):
    """(grpc code, ErrorInfo) of a failed call, decoded with grpc_status."""
    status = rpc_status.from_call(err)
    assert status is not None, f"no status details on {err}"
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            return err.code(), info
    raise AssertionError(f"no ErrorInfo in {status}")


class Producer:
    """One Produce stream: requests from a queue, responses collected by request id."""

    def __init__(self, pb, channel, a):
        self.pb = pb
        self.requests = queue.Queue()
        self.sent = 0
        self.answered = 0
        self.max_in_flight = 0
        self.lock = threading.Lock()
        self.requests.put(
            pb.node.ProduceRequest(open=pb.node.ProduceOpen(pchannel=a.pchannel))
        )
        node = pb.node_grpc.StreamingNodeStub(channel)
        self.responses = node.Produce(self._requests(), timeout=120)
        first = next(self.responses)
        assert first.WhichOneof("response") == "opened", first

    def _requests(self):
        while True:
            r = self.requests.get()
            if r is None:
                return
            if r.WhichOneof("request") == "append":
                with self.lock:
                    self.sent += 1
                    self.max_in_flight = max(self.max_in_flight, self.sent - self.answered)
            yield r

    def send(self, request_id, message):
        self.requests.put(
            self.pb.node.ProduceRequest(
                append=self.pb.node.ProduceAppend(request_id=request_id, message=message)
            )
        )

    def wait_sent(self, n):
        """Waits until `n` appends went to the stream (before reading any answer to them)."""
        deadline = time.monotonic() + TIMEOUT
        while self.sent < n:
            assert time.monotonic() < deadline, f"only {self.sent} of {n} appends sent"
            time.sleep(0.005)

    def collect(self, n):
        """The next `n` outcomes: request id -> AppendResult or StreamingError."""
        out = {}
        while len(out) < n:
            r = next(self.responses)
            kind = r.WhichOneof("response")
            assert kind == "appended", f"producer answered {r}"
            with self.lock:
                self.answered += 1
            out[r.appended.request_id] = getattr(r.appended, r.appended.WhichOneof("outcome"))
        return out

    def close(self):
        self.requests.put(None)
        rest = list(self.responses)
        assert [r.WhichOneof("response") for r in rest] == ["closed"], rest
