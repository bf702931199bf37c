"""Historical data is readable without Sluice.

A client built from the .proto files creates a collection with a schema, inserts rows as Arrow
IPC streams written by pyarrow, deletes a few, and asks for a flush. Then pyarrow alone reads
the Parquet files the flusher wrote, at the layout `proto/sluice/v1/storage.proto` documents,
and finds the schema and every row that was inserted (and the deleted keys in the delete file).
A body that does not fit the schema is refused with INVALID_ARGUMENT.

Environment: SLUICE_BIN, the sluice binary to run (scripts/test.sh builds it).
"""

import os
import subprocess
import time

import grpc
import pyarrow as pa
import pyarrow.parquet as pq

from sluice_testkit import TIMEOUT, Producer, assignment

COLLECTION = 31
PARTITION = 1
DIM = 4
INSERTS = 20
ROWS_PER_INSERT = 25


def ipc(table):
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as w:
        w.write_table(table)
    return sink.getvalue().to_pybytes()


def rows(first, n, dim=DIM):
    ids = list(range(first, first + n))
    vectors = [[float(i) + d / 10 for d in range(dim)] for i in ids]
    return pa.table(
        {
            "id": pa.array(ids, pa.int64()),
            "title": pa.array([f"title {i}" for i in ids], pa.string()),
            "vec": pa.array(vectors, pa.list_(pa.float32(), dim)),
        }
    )


def schema(pb):
    m = pb.message
    return m.CollectionSchema(
        name="docs",
        fields=[
            m.FieldSchema(field_id=1, name="id", data_type=m.DATA_TYPE_INT64, is_primary_key=True),
            m.FieldSchema(field_id=2, name="title", data_type=m.DATA_TYPE_VARCHAR, max_length=64),
            m.FieldSchema(field_id=3, name="vec", data_type=m.DATA_TYPE_FLOAT_VECTOR, dim=DIM),
            m.FieldSchema(field_id=4, name="note", data_type=m.DATA_TYPE_JSON, nullable=True),
        ],
        shards=1,
        version=1,
    )


def test_flushed_segments_are_parquet_that_pyarrow_reads(pb, server):
    channel = grpc.insecure_channel(server.address)
    a = assignment(pb, channel)
    vc = f"{a.pchannel.name}_{COLLECTION}v0"
    m, c = pb.message, pb.common
    producer = Producer(pb, channel, a)

    create = c.Message(
        type=m.MESSAGE_TYPE_CREATE_COLLECTION,
        vchannel=vc,
        create_collection=m.CreateCollectionHeader(
            collection_id=COLLECTION, partition_ids=[PARTITION], db_id=1, schema=schema(pb)
        ),
    )
    producer.send(1, create)
    assert producer.collect(1)[1].DESCRIPTOR.name == "AppendResult"

    def insert(table):
        return c.Message(
            type=m.MESSAGE_TYPE_INSERT,
            vchannel=vc,
            insert=m.InsertHeader(
                collection_id=COLLECTION,
                partitions=[
                    m.PartitionSegmentAssignment(partition_id=PARTITION, rows=table.num_rows)
                ],
            ),
            payload=ipc(table),
        )

    inserted = []
    for i in range(INSERTS):
        t = rows(i * ROWS_PER_INSERT, ROWS_PER_INSERT)
        inserted.append(t)
        producer.send(100 + i, insert(t))
    outcomes = producer.collect(INSERTS)
    assert all(o.DESCRIPTOR.name == "AppendResult" for o in outcomes.values()), outcomes

    # Bodies that do not fit the schema are refused and the producer goes on.
    wrong_dim = rows(10_000, 3, dim=DIM + 1)
    missing_pk = rows(10_000, 3).drop(["id"])
    producer.send(200, insert(wrong_dim))
    producer.send(201, insert(missing_pk))
    refused = producer.collect(2)
    for o in refused.values():
        assert o.DESCRIPTOR.name == "StreamingError", o
        assert o.code == c.ERROR_CODE_INVALID_ARGUMENT, o

    deleted = [3, 4, 77]
    delete = c.Message(
        type=m.MESSAGE_TYPE_DELETE,
        vchannel=vc,
        delete=m.DeleteHeader(collection_id=COLLECTION, rows=len(deleted)),
        payload=ipc(pa.table({"id": pa.array(deleted, pa.int64())})),
    )
    flush = c.Message(
        type=m.MESSAGE_TYPE_MANUAL_FLUSH,
        vchannel=vc,
        manual_flush=m.ManualFlushHeader(collection_id=COLLECTION),
    )
    # The delete is acknowledged before the flush is sent, so the flush point follows it (two
    # appends in flight at once may be ordered either way).
    producer.send(300, delete)
    done = producer.collect(1)
    producer.send(301, flush)
    done.update(producer.collect(1))
    assert all(o.DESCRIPTOR.name == "AppendResult" for o in done.values()), done
    assert list(done[301].flushed_segments), "the flush names the growing segment"
    producer.close()

    # The layout storage.proto documents, under the standalone storage root.
    root = server.data_dir / "storage" / "storage"
    segments = root / "segments" / str(COLLECTION) / str(PARTITION)
    deletes = root / "deletes" / str(COLLECTION) / vc
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        if list(segments.glob("*/data.parquet")) and list(deletes.glob("*.parquet")):
            break
        time.sleep(0.1)
    files = sorted(segments.glob("*/data.parquet"))
    assert files, f"no segment under {segments}"

    table = pa.concat_tables(pq.read_table(f) for f in files)
    s = table.schema
    assert s.names == ["id", "title", "vec", "note", "_ts"]
    assert s.field("id").type == pa.int64() and not s.field("id").nullable
    assert s.field("title").type == pa.string()
    assert s.field("vec").type == pa.list_(pa.field("item", pa.float32(), nullable=False), DIM)
    assert s.field("note").type == pa.string()
    assert s.field("_ts").type == pa.int64()

    expected = pa.concat_tables(inserted)
    got = table.sort_by("id")
    assert got.column("id").to_pylist() == expected.column("id").to_pylist()
    assert got.column("title").to_pylist() == expected.column("title").to_pylist()
    assert got.column("vec").to_pylist() == expected.column("vec").to_pylist()
    assert got.column("note").null_count == got.num_rows
    assert all(ts > 0 for ts in got.column("_ts").to_pylist())

    # Parquet statistics carry the primary key's range.
    meta = pq.ParquetFile(files[0]).metadata
    stats = meta.row_group(0).column(0).statistics
    assert stats.has_min_max and stats.min >= 0 and stats.max < INSERTS * ROWS_PER_INSERT

    delete_files = sorted(deletes.glob("*.parquet"))
    assert delete_files, f"no delete file under {deletes}"
    d = pa.concat_tables(pq.read_table(f) for f in delete_files)
    assert d.schema.names == ["id", "_ts"]
    assert sorted(d.column("id").to_pylist()) == deleted

    # The coordinator lists the manifests: the same files, rows and key range.
    coord = pb.coord_grpc.CoordinatorStub(channel)
    listed = coord.ListSegments(pb.coord.ListSegmentsRequest(collection_id=COLLECTION), timeout=TIMEOUT)
    assert sum(m.rows for m in listed.segments) == INSERTS * ROWS_PER_INSERT
    assert sorted(root / m.data.path for m in listed.segments) == files
    for m in listed.segments:
        assert m.vchannel == vc and m.schema_version == 1 and m.partition_id == PARTITION
        assert m.pk_min_int >= 0 and m.pk_max_int < INSERTS * ROWS_PER_INSERT
        assert 0 < m.min_timestamp <= m.max_timestamp < m.flush_timestamp
        assert len(m.start_position) == 32 and len(m.end_position) == 32
    assert [sorted(root / x.file.path for x in listed.deletes)] == [delete_files]
    assert sum(x.rows for x in listed.deletes) == len(deleted)

    # And `sluice ctl segments` prints them.
    out = subprocess.run(
        [os.environ["SLUICE_BIN"], "ctl", "segments", "--coord", f"http://{server.address}",
         "--collection", str(COLLECTION)],
        capture_output=True, text=True, timeout=TIMEOUT, check=True,
    ).stdout
    assert f"{len(listed.segments)} segments, {INSERTS * ROWS_PER_INSERT} rows" in out, out
    assert f"1 delete files, {len(deleted)} deletes" in out, out
