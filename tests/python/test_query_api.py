"""Search, Query and Get from the .proto files alone, against a real `sluice standalone`.

A client creates a collection through the coordinator's CreateCollection, inserts rows written
by pyarrow (Arrow IPC bodies), deletes some, and reads back with STRONG consistency: a filtered
Query, a Get by keys, an exact Search whose hits are checked against numpy-free brute force, and
a search with output fields decoded by pyarrow. Then it flushes (the rows move to Parquet
segments with HNSW indexes) and reads the same answers again. Bad requests get
INVALID_ARGUMENT (a filter error names its offset) or COLLECTION_NOT_FOUND.

Environment: SLUICE_BIN, the sluice binary to run (scripts/test.sh builds it).
"""

import math
import random
import time

import grpc
import pyarrow as pa

from sluice_testkit import TIMEOUT, Producer, assignment, error_info

DIM = 8
ROWS = 400


def ipc(table):
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as w:
        w.write_table(table)
    return sink.getvalue().to_pybytes()


def rows_of(stream):
    if not stream:
        return []
    return pa.ipc.open_stream(stream).read_all().to_pylist()


def strong(pb):
    return pb.query.ReadOptions(consistency=pb.query.CONSISTENCY_LEVEL_STRONG, timeout_ms=20000)


def test_search_query_and_get_over_the_wire(pb, server):
    channel = grpc.insecure_channel(server.address)
    m, c, q = pb.message, pb.common, pb.query
    coord = pb.coord_grpc.CoordinatorStub(channel)
    schema = m.CollectionSchema(
        name="wire",
        fields=[
            m.FieldSchema(name="id", data_type=m.DATA_TYPE_INT64, is_primary_key=True),
            m.FieldSchema(name="color", data_type=m.DATA_TYPE_VARCHAR, max_length=16),
            m.FieldSchema(name="n", data_type=m.DATA_TYPE_INT64, nullable=True),
            m.FieldSchema(name="vec", data_type=m.DATA_TYPE_FLOAT_VECTOR, dim=DIM),
        ],
        shards=2,
    )
    info = coord.CreateCollection(pb.coord.CreateCollectionRequest(schema=schema), timeout=TIMEOUT)
    assert len(info.vchannels) == 2

    rnd = random.Random(5)
    data = {
        i: {
            "id": i,
            "color": ["red", "green", "blue"][i % 3],
            "n": None if i % 7 == 0 else i % 10,
            "vec": [rnd.uniform(-1, 1) for _ in range(DIM)],
        }
        for i in range(ROWS)
    }
    # One producer per shard's pchannel; rows go to shard id % 2.
    producers = {}
    for shard, vc in enumerate(info.vchannels):
        pchannel = vc.rsplit("_", 1)[0]
        producers[shard] = (vc, Producer(pb, channel, assignment(pb, channel, name=pchannel)))
    rid = 0
    for shard, (vc, producer) in producers.items():
        ids = [i for i in data if i % 2 == shard]
        for chunk in range(0, len(ids), 50):
            part = [data[i] for i in ids[chunk : chunk + 50]]
            table = pa.table(
                {
                    "id": pa.array([r["id"] for r in part], pa.int64()),
                    "color": pa.array([r["color"] for r in part], pa.string()),
                    "n": pa.array([r["n"] for r in part], pa.int64()),
                    "vec": pa.array([r["vec"] for r in part], pa.list_(pa.float32(), DIM)),
                }
            )
            rid += 1
            producer.send(
                rid,
                c.Message(
                    type=m.MESSAGE_TYPE_INSERT,
                    vchannel=vc,
                    insert=m.InsertHeader(
                        collection_id=info.collection_id,
                        partitions=[
                            m.PartitionSegmentAssignment(
                                partition_id=info.partitions[0].partition_id, rows=len(part)
                            )
                        ],
                    ),
                    payload=ipc(table),
                ),
            )
            outcome = producer.collect(1)
            assert all(o.DESCRIPTOR.name == "AppendResult" for o in outcome.values()), outcome
    deleted = [0, 1, 2, 3, 10, 11]
    for shard, (vc, producer) in producers.items():
        keys = [k for k in deleted if k % 2 == shard]
        rid += 1
        producer.send(
            rid,
            c.Message(
                type=m.MESSAGE_TYPE_DELETE,
                vchannel=vc,
                delete=m.DeleteHeader(collection_id=info.collection_id, rows=len(keys)),
                payload=ipc(pa.table({"id": pa.array(keys, pa.int64())})),
            ),
        )
        outcome = producer.collect(1)
        assert all(o.DESCRIPTOR.name == "AppendResult" for o in outcome.values()), outcome
    for i in deleted:
        del data[i]

    stub = pb.query_grpc.QueryStub(channel)

    def check_reads():
        # A filtered query, in key order.
        r = stub.Query(
            q.QueryRequest(
                collection="wire",
                filter='color in ["red", "blue"] and (n >= 5 or n is null)',
                output_fields=["color", "n"],
                read=strong(pb),
            ),
            timeout=TIMEOUT,
        )
        want = [
            {"id": i, "color": d["color"], "n": d["n"]}
            for i, d in sorted(data.items())
            if d["color"] in ("red", "blue") and (d["n"] is None or d["n"] >= 5)
        ]
        assert rows_of(r.rows) == want
        assert r.row_count == len(want) and r.mvcc_timestamp > 0
        # Get: the order asked, missing and deleted keys left out.
        r = stub.Get(
            q.GetRequest(
                collection="wire",
                keys=q.PrimaryKeys(int_keys=q.Int64List(values=[42, 3, 99999, 7])),
                output_fields=["color"],
                read=strong(pb),
            ),
            timeout=TIMEOUT,
        )
        assert rows_of(r.rows) == [
            {"id": 42, "color": data[42]["color"]},
            {"id": 7, "color": data[7]["color"]},
        ]
        # Exact search against brute force, two query vectors at once.
        queries = [[rnd.uniform(-1, 1) for _ in range(DIM)] for _ in range(2)]
        r = stub.Search(
            q.SearchRequest(
                collection="wire",
                vectors=[q.FloatVector(values=v) for v in queries],
                top_k=5,
                metric=q.METRIC_TYPE_L2,
                filter='color != "green"',
                output_fields=["color"],
                read=strong(pb),
                exact=True,
            ),
            timeout=TIMEOUT,
        )
        assert r.metric == q.METRIC_TYPE_L2
        assert len(r.results) == 2
        for v, hits in zip(queries, r.results):
            f32 = [float(pa.scalar(x, pa.float32()).as_py()) for x in v]
            dist = sorted(
                (sum((a - float(pa.scalar(b, pa.float32()).as_py())) ** 2 for a, b in zip(f32, d["vec"])), i)
                for i, d in data.items()
                if d["color"] != "green"
            )[:5]
            assert list(hits.keys.int_keys.values) == [i for _, i in dist]
            for s, (d, _) in zip(hits.scores, dist):
                assert math.isclose(s, d, rel_tol=1e-4, abs_tol=1e-5)
            got = rows_of(hits.rows)
            assert [g["id"] for g in got] == [i for _, i in dist]
            assert all(g["color"] != "green" for g in got)

    check_reads()
    # Flush: rows move to Parquet segments (indexed); the answers stay the same.
    for shard, (vc, producer) in producers.items():
        rid += 1
        producer.send(
            rid,
            c.Message(
                type=m.MESSAGE_TYPE_MANUAL_FLUSH,
                vchannel=vc,
                manual_flush=m.ManualFlushHeader(collection_id=info.collection_id),
            ),
        )
        producer.collect(1)
        producer.close()
    time.sleep(1.0)
    check_reads()

    # Bad requests.
    def code_of(call):
        try:
            call()
        except grpc.RpcError as e:
            _, info = error_info(e)
            return info.reason, info.metadata, e.details()
        raise AssertionError("the call succeeded")

    reason, meta, message = code_of(
        lambda: stub.Query(q.QueryRequest(collection="wire", filter="n >> 3"), timeout=TIMEOUT)
    )
    assert reason == "INVALID_ARGUMENT" and "offset" in message, message
    reason, _, message = code_of(
        lambda: stub.Search(
            q.SearchRequest(collection="wire", vectors=[q.FloatVector(values=[1.0])], top_k=3),
            timeout=TIMEOUT,
        )
    )
    assert reason == "INVALID_ARGUMENT" and "dimension" in message, message
    reason, _, message = code_of(
        lambda: stub.Search(
            q.SearchRequest(
                collection="wire", vectors=[q.FloatVector(values=[float("nan")] * DIM)], top_k=3
            ),
            timeout=TIMEOUT,
        )
    )
    assert reason == "INVALID_ARGUMENT" and "NaN" in message, message
    reason, _, _ = code_of(
        lambda: stub.Query(q.QueryRequest(collection="nope"), timeout=TIMEOUT)
    )
    assert reason == "COLLECTION_NOT_FOUND"


def test_catalog_ddl_goes_through_the_coordinator(pb, server):
    """A collection created with CreateCollection is dropped, and its partitions changed, only
    through the coordinator's catalog calls: the same DDL appended by a producer, or broadcast
    with Broadcast, is INVALID_ARGUMENT and changes nothing (the collection stays readable, and
    DropCollection still drops it)."""
    channel = grpc.insecure_channel(server.address)
    m, c, q = pb.message, pb.common, pb.query
    coord = pb.coord_grpc.CoordinatorStub(channel)
    schema = m.CollectionSchema(
        name="ddl_guard",
        fields=[
            m.FieldSchema(name="id", data_type=m.DATA_TYPE_INT64, is_primary_key=True),
            m.FieldSchema(name="vec", data_type=m.DATA_TYPE_FLOAT_VECTOR, dim=DIM),
        ],
        shards=1,
    )
    info = coord.CreateCollection(pb.coord.CreateCollectionRequest(schema=schema), timeout=TIMEOUT)
    vc = info.vchannels[0]
    producer = Producer(pb, channel, assignment(pb, channel, name=vc.rsplit("_", 1)[0]))
    ddl = [
        c.Message(
            type=m.MESSAGE_TYPE_DROP_COLLECTION,
            vchannel=vc,
            drop_collection=m.DropCollectionHeader(collection_id=info.collection_id),
        ),
        c.Message(
            type=m.MESSAGE_TYPE_DROP_PARTITION,
            vchannel=vc,
            drop_partition=m.DropPartitionHeader(
                collection_id=info.collection_id, partition_id=info.partitions[0].partition_id
            ),
        ),
        c.Message(
            type=m.MESSAGE_TYPE_SCHEMA_CHANGE,
            vchannel=vc,
            schema_change=m.SchemaChangeHeader(
                collection_id=info.collection_id,
                schema=m.CollectionSchema(
                    name="ddl_guard",
                    fields=list(info.schema.fields)
                    + [m.FieldSchema(name="note", data_type=m.DATA_TYPE_INT64, nullable=True)],
                    shards=1,
                    version=info.schema.version + 1,
                ),
            ),
        ),
    ]
    for i, message in enumerate(ddl):
        producer.send(i + 1, message)
        (outcome,) = producer.collect(1).values()
        assert outcome.DESCRIPTOR.name == "StreamingError", outcome
        assert outcome.code == c.ERROR_CODE_INVALID_ARGUMENT, outcome
        assert "through the coordinator" in outcome.cause, outcome
        try:
            coord.Broadcast(pb.coord.BroadcastRequest(message=message, vchannels=[vc]), timeout=TIMEOUT)
            raise AssertionError("the broadcast was taken")
        except grpc.RpcError as e:
            assert e.code() == grpc.StatusCode.INVALID_ARGUMENT, e
            assert "is in the catalog" in e.details(), e.details()
    producer.close()
    read = pb.query_grpc.QueryStub(channel).Query(
        q.QueryRequest(collection="ddl_guard", filter="id >= 0", read=strong(pb)), timeout=TIMEOUT
    )
    assert rows_of(read.rows) == []
    # A field is added through the catalog: the next id, the next schema version.
    note = m.FieldSchema(name="note", data_type=m.DATA_TYPE_INT64, nullable=True)
    added = coord.AddCollectionField(
        pb.coord.AddCollectionFieldRequest(name="ddl_guard", field=note), timeout=TIMEOUT
    )
    assert added.schema.version == info.schema.version + 1, added.schema
    assert [f.name for f in added.schema.fields] == ["id", "vec", "note"]
    assert added.schema.fields[-1].field_id == max(f.field_id for f in info.schema.fields) + 1
    for bad in [
        m.FieldSchema(name="plain", data_type=m.DATA_TYPE_INT64),
        note,
        m.FieldSchema(name="v2", data_type=m.DATA_TYPE_FLOAT_VECTOR, dim=DIM, nullable=True),
    ]:
        try:
            coord.AddCollectionField(
                pb.coord.AddCollectionFieldRequest(name="ddl_guard", field=bad), timeout=TIMEOUT
            )
            raise AssertionError(f"{bad} was added")
        except grpc.RpcError as e:
            assert e.code() == grpc.StatusCode.INVALID_ARGUMENT, e
    described = coord.DescribeCollection(
        pb.coord.DescribeCollectionRequest(name="ddl_guard"), timeout=TIMEOUT
    )
    assert described.schema == added.schema
    read = pb.query_grpc.QueryStub(channel).Query(
        q.QueryRequest(
            collection="ddl_guard", filter="note is null", output_fields=["note"], read=strong(pb)
        ),
        timeout=TIMEOUT,
    )
    assert rows_of(read.rows) == []
    coord.DropCollection(pb.coord.DropCollectionRequest(name="ddl_guard"), timeout=TIMEOUT)
