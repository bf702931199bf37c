"""Fixtures of the Python tests: stubs generated from proto/ and a running server."""

import sys
import tempfile
from pathlib import Path

import pytest

from sluice_testkit import ROOT, Server


@pytest.fixture(scope="session")
def pb(tmp_path_factory):
    """Generated stubs: (message_pb2, common_pb2, node_pb2, node_pb2_grpc, coord_pb2,
    coord_pb2_grpc)."""
    out = tmp_path_factory.mktemp("stubs")
    protos = sorted(str(p) for p in (ROOT / "proto").rglob("*.proto"))
    from grpc_tools import protoc

    args = ["protoc", f"-I{ROOT / 'proto'}", f"--python_out={out}", f"--grpc_python_out={out}"]
    assert protoc.main(args + protos) == 0, "grpcio-tools could not compile proto/"
    sys.path.insert(0, str(out))
    from sluice.v1 import (  # noqa: E402  (generated just now)
        common_pb2,
        coord_pb2,
        coord_pb2_grpc,
        message_pb2,
        node_pb2,
        node_pb2_grpc,
        query_pb2,
        query_pb2_grpc,
        storage_pb2,
    )

    class Stubs:
        pass

    s = Stubs()
    s.message, s.common, s.node, s.node_grpc = message_pb2, common_pb2, node_pb2, node_pb2_grpc
    s.coord, s.coord_grpc = coord_pb2, coord_pb2_grpc
    s.storage = storage_pb2
    s.query, s.query_grpc = query_pb2, query_pb2_grpc
    return s


@pytest.fixture
def server():
    with tempfile.TemporaryDirectory(prefix="sluice-py-") as d:
        s = Server(Path(d))
        s.start()
        try:
            yield s
        finally:
            if s.proc.poll() is None:
                s.proc.kill()
                s.proc.wait()
