"""pymilvus against Sluice: the MilvusClient quickstart runs unchanged against `sluice
standalone`, and the same calls answer the same as milvus-lite (the embedded Milvus).

Every differential test runs one function against both servers and compares what it returns;
where Sluice deliberately differs, the test says so and checks Sluice's own answer.
"""

import json
import math
import random
import re
import tempfile
import time

import pytest

from sluice_testkit import Server

pymilvus = pytest.importorskip("pymilvus")
from pymilvus import DataType, MilvusClient, MilvusException  # noqa: E402

DIM = 8


def rows(n, seed=1, start=0):
    rnd = random.Random(seed)
    return [
        {
            "id": start + i,
            "vector": [rnd.random() for _ in range(DIM)],
            "color": rnd.choice(["red", "blue", "green"]),
            "size": rnd.randint(0, 100),
        }
        for i in range(n)
    ]


@pytest.fixture(scope="module")
def sluice_server():
    with tempfile.TemporaryDirectory(prefix="sluice-milvus-") as d:
        from pathlib import Path

        s = Server(Path(d))
        s.start()
        try:
            yield s
        finally:
            s.stop()


@pytest.fixture(scope="module")
def sluice(sluice_server):
    return MilvusClient(uri=f"http://{sluice_server.milvus}")


@pytest.fixture(scope="module")
def lite():
    with tempfile.TemporaryDirectory(prefix="milvus-lite-") as d:
        c = MilvusClient(f"{d}/lite.db")
        try:
            yield c
        finally:
            c.close()


def both(sluice, lite, f):
    """`f(client)` on each: (Sluice's answer, milvus-lite's answer); an exception is an answer
    too: ("error", code)."""

    def run(c):
        try:
            return f(c)
        except MilvusException as e:
            return ("error", e.code)

    return run(sluice), run(lite)


def drop_if_exists(c, name):
    if c.has_collection(name):
        c.drop_collection(name)


def fresh(c, name, **kw):
    drop_if_exists(c, name)
    c.create_collection(collection_name=name, dimension=DIM, **kw)


def reindex(c, name, index_type, params):
    """A fresh collection `name` whose default index is replaced by an L2 one of `index_type`
    with `params` (the create_index call's error, if any, is raised); loaded again."""
    fresh(c, name)
    c.release_collection(name)
    c.drop_index(name, c.list_indexes(name)[0])
    index = c.prepare_index_params()
    index.add_index(field_name="vector", index_type=index_type, metric_type="L2", params=params)
    c.create_index(name, index)
    c.load_collection(name)


def hit_ids(result, pk="id"):
    return [[h[pk] for h in hits] for hits in result]


def close(a, b, eps=1e-4):
    return all(math.isclose(x, y, rel_tol=eps, abs_tol=eps) for x, y in zip(a, b))


# --- the quickstart, unchanged -------------------------------------------------------------


def test_the_pymilvus_quickstart_runs_unchanged_against_sluice(sluice):
    client = sluice
    if client.has_collection("quick_setup"):
        client.drop_collection("quick_setup")
    client.create_collection(collection_name="quick_setup", dimension=5)
    data = [
        {"id": i, "vector": [random.random() for _ in range(5)], "color": random.choice(["red", "blue"])}
        for i in range(1000)
    ]
    res = client.insert(collection_name="quick_setup", data=data)
    assert res["insert_count"] == 1000
    res = client.search(
        collection_name="quick_setup",
        data=[[0.3, -0.6, 0.1, 0.2, 0.5]],
        filter='color == "red"',
        limit=5,
        output_fields=["color"],
    )
    assert len(res) == 1 and len(res[0]) == 5
    assert all(h["entity"]["color"] == "red" for h in res[0])
    distances = [h["distance"] for h in res[0]]
    assert distances == sorted(distances, reverse=True), "COSINE: most similar first"
    res = client.query(collection_name="quick_setup", filter="id in [0, 1, 2]", output_fields=["color", "vector"])
    assert sorted(r["id"] for r in res) == [0, 1, 2]
    assert all(len(r["vector"]) == 5 and r["color"] in ("red", "blue") for r in res)
    client.delete(collection_name="quick_setup", ids=[0, 1])
    res = client.query(collection_name="quick_setup", filter="", output_fields=["count(*)"])
    assert res[0]["count(*)"] == 998
    client.drop_collection(collection_name="quick_setup")
    assert not client.has_collection("quick_setup")


# --- differential: the same calls against milvus-lite --------------------------------------


def test_describe_after_a_quick_create(sluice, lite):
    def f(c):
        fresh(c, "d_describe")
        d = c.describe_collection("d_describe")
        return (
            d["collection_name"],
            d["auto_id"],
            d["enable_dynamic_field"],
            [(x["name"], x["type"], x.get("params", {}), x.get("is_primary", False)) for x in d["fields"]],
        )

    s, l = both(sluice, lite, f)
    assert s == l


def test_list_and_has_collections(sluice, lite):
    def f(c):
        fresh(c, "d_list_a")
        fresh(c, "d_list_b")
        names = c.list_collections()
        out = ("d_list_a" in names, "d_list_b" in names, c.has_collection("d_list_a"), c.has_collection("d_nope"))
        c.drop_collection("d_list_b")
        return out + ("d_list_b" in c.list_collections(),)

    s, l = both(sluice, lite, f)
    assert s == l == (True, True, True, False, False)


def test_insert_answers_count_and_ids(sluice, lite):
    def f(c):
        fresh(c, "d_insert")
        r = c.insert("d_insert", rows(100))
        return r["insert_count"], list(r["ids"])

    s, l = both(sluice, lite, f)
    assert s == l == (100, list(range(100)))


def test_search_top_hits_match(sluice, lite):
    q = [[0.5] * DIM, [0.1 * i for i in range(DIM)]]

    def f(c):
        fresh(c, "d_search")
        c.insert("d_search", rows(500, seed=2))
        return c.search("d_search", data=q, limit=10, output_fields=["size"])

    s, l = both(sluice, lite, f)
    assert hit_ids(s) == hit_ids(l)
    for hs, hl in zip(s, l):
        assert close([h["distance"] for h in hs], [h["distance"] for h in hl])
        assert [h["entity"]["size"] for h in hs] == [h["entity"]["size"] for h in hl]


def test_search_scores_are_rounded_like_milvus(sluice, lite):
    q = [[0.5] * DIM]

    def f(c):
        fresh(c, "d_round")
        c.insert("d_round", rows(50, seed=3))
        return [h["distance"] for h in c.search("d_round", data=q, limit=5, round_decimal=2)[0]]

    s, l = both(sluice, lite, f)
    assert s == l, (s, l)
    assert all(round(d, 2) == d for d in s), s
    with pytest.raises(MilvusException):
        sluice.search("d_round", data=q, limit=5, round_decimal=9)


@pytest.mark.parametrize(
    "flt",
    [
        'color == "red"',
        "size > 50",
        'size <= 20 and color != "blue"',
        "id in [1, 5, 9, 200, 301]",
        'color in ["red", "green"] or size == 7',
        "not (size < 90)",
    ],
)
def test_filtered_search_matches(sluice, lite, flt):
    def f(c):
        name = "d_fsearch"
        if not c.has_collection(name):
            fresh(c, name)
            c.insert(name, rows(400, seed=3))
        return c.search(name, data=[[0.2] * DIM], filter=flt, limit=7, output_fields=["color", "size"])

    s, l = both(sluice, lite, f)
    assert hit_ids(s) == hit_ids(l), flt
    assert [[h["entity"] for h in x] for x in s] == [[h["entity"] for h in x] for x in l]


def test_search_with_offset_matches(sluice, lite):
    def f(c):
        fresh(c, "d_offset")
        c.insert("d_offset", rows(300, seed=4))
        return c.search("d_offset", data=[[0.9] * DIM], limit=5, search_params={"offset": 3})

    s, l = both(sluice, lite, f)
    assert hit_ids(s) == hit_ids(l)


def test_l2_metric_collection_matches(sluice, lite):
    def f(c):
        fresh(c, "d_l2", metric_type="L2")
        c.insert("d_l2", rows(300, seed=5))
        return c.search("d_l2", data=[[0.3] * DIM], limit=10)

    s, l = both(sluice, lite, f)
    assert hit_ids(s) == hit_ids(l)
    assert close([h["distance"] for h in s[0]], [h["distance"] for h in l[0]])


@pytest.mark.parametrize(
    "flt,limit,offset",
    [("size > 90", 0, 0), ('color == "green" and id < 100', 0, 0), ("id >= 0", 10, 0), ("id >= 0", 10, 5), ("", 7, 0)],
)
def test_query_matches(sluice, lite, flt, limit, offset):
    def f(c):
        name = "d_query"
        if not c.has_collection(name):
            fresh(c, name)
            c.insert(name, rows(300, seed=6))
        kw = {"limit": limit} if limit else {}
        if offset:
            kw["offset"] = offset
        r = c.query(name, filter=flt, output_fields=["color", "size"], **kw)
        return sorted((x["id"], x["color"], x["size"]) for x in r)

    s, l = both(sluice, lite, f)
    assert s == l, (flt, limit, offset)


def test_get_by_ids_matches(sluice, lite):
    def f(c):
        fresh(c, "d_get")
        c.insert("d_get", rows(50, seed=7))
        r = c.get("d_get", ids=[3, 4, 49, 77], output_fields=["color", "vector"])
        return sorted((x["id"], x["color"], tuple(round(v, 6) for v in x["vector"])) for x in r)

    s, l = both(sluice, lite, f)
    assert s == l and len(s) == 3


def test_count_with_a_filter_matches(sluice, lite):
    def f(c):
        fresh(c, "d_count")
        c.insert("d_count", rows(250, seed=8))
        return [
            c.query("d_count", filter=flt, output_fields=["count(*)"])[0]["count(*)"]
            for flt in ["", "size < 50", 'color == "red"']
        ]

    s, l = both(sluice, lite, f)
    assert s == l and s[0] == 250


def test_delete_by_ids_and_by_filter_match(sluice, lite):
    def f(c):
        fresh(c, "d_delete")
        c.insert("d_delete", rows(200, seed=9))
        c.delete("d_delete", ids=[0, 1, 2])
        c.delete("d_delete", filter="size > 80")
        left = c.query("d_delete", filter="", output_fields=["count(*)"])[0]["count(*)"]
        ids = sorted(x["id"] for x in c.query("d_delete", filter="id < 10", output_fields=["size"]))
        return left, ids

    s, l = both(sluice, lite, f)
    assert s == l


def test_upsert_replaces_rows(sluice, lite):
    def f(c):
        fresh(c, "d_upsert")
        c.insert("d_upsert", rows(20, seed=10))
        c.upsert("d_upsert", [{"id": 5, "vector": [0.0] * DIM, "color": "black", "size": 1000}])
        r = c.query("d_upsert", filter="id == 5", output_fields=["color", "size"])
        n = c.query("d_upsert", filter="", output_fields=["count(*)"])[0]["count(*)"]
        return [(x["id"], x["color"], x["size"]) for x in r], n

    s, l = both(sluice, lite, f)
    assert s == l == ([(5, "black", 1000)], 20)


def test_a_partial_upsert_keeps_the_fields_it_leaves_out(sluice, lite):
    """upsert(partial_update=True): a row with a stored key keeps the fields (and dynamic keys)
    the update leaves out, sealed or growing; a new key is a new row; a field given as None
    becomes null; a new row missing a required field is refused."""

    def f(c):
        name = "d_partial"
        drop_if_exists(c, name)
        schema = c.create_schema(auto_id=False, enable_dynamic_field=True)
        schema.add_field("id", DataType.INT64, is_primary=True)
        schema.add_field("vector", DataType.FLOAT_VECTOR, dim=DIM)
        schema.add_field("title", DataType.VARCHAR, max_length=16)
        schema.add_field("n", DataType.INT64, nullable=True)
        schema.add_field("tags", DataType.ARRAY, element_type=DataType.INT64, max_capacity=4)
        index = c.prepare_index_params()
        index.add_index(field_name="vector", index_type="FLAT", metric_type="L2")
        c.create_collection(name, schema=schema, index_params=index)
        c.insert(
            name,
            [
                {"id": i, "vector": [i / 10] * DIM, "title": f"t{i}", "n": i, "tags": [i], "color": "red", "k": i}
                for i in range(6)
            ],
        )
        c.flush(name)
        c.insert(name, [{"id": 6, "vector": [0.6] * DIM, "title": "t6", "n": 6, "tags": [6], "color": "red"}])
        # pymilvus sends one set of fields per call.
        for row in [
            {"id": 1, "title": "new1"},
            {"id": 2, "n": None, "color": "blue"},
            {"id": 6, "tags": [1, 2, 3]},
            {"id": 9, "vector": [0.9] * DIM, "title": "t9", "tags": []},
        ]:
            c.upsert(name, [row], partial_update=True)
        refused = "ok"
        try:
            c.upsert(name, [{"id": 10, "title": "no vector"}], partial_update=True)
        except MilvusException:
            refused = "refused"
        got = c.query(
            name,
            filter="id in [0, 1, 2, 6, 9, 10]",
            output_fields=["title", "n", "tags", "color", "k", "vector"],
            consistency_level="Strong",
        )
        count = c.query(name, filter="", output_fields=["count(*)"], consistency_level="Strong")
        return (
            sorted(
                (r["id"], r["title"], r["n"], r["tags"], r.get("color"), r.get("k"), [round(x, 4) for x in r["vector"]])
                for r in got
            ),
            count[0]["count(*)"],
            refused,
        )

    s, l = both(sluice, lite, f)
    v = lambda x: [x] * DIM
    assert s[0] == [
        (0, "t0", 0, [0], "red", 0, v(0.0)),
        (1, "new1", 1, [1], "red", 1, v(0.1)),
        (2, "t2", None, [2], "blue", 2, v(0.2)),
        (6, "t6", 6, [1, 2, 3], "red", None, v(0.6)),
        (9, "t9", None, [], None, None, v(0.9)),
    ], s
    assert s[1:] == (8, "refused"), s
    assert s == l, (s, l)


def test_partial_upserts_append_to_and_remove_from_arrays(sluice):
    """field_ops ARRAY_APPEND / ARRAY_REMOVE in a partial upsert: elements appended to the
    stored array or every equal one removed; the result keeps max_capacity. (milvus-lite
    3.2.2 takes the operations as REPLACE, so Sluice is checked on its own.)"""

    def f(c):
        name = "d_array_ops"
        array_collection(c, name)
        c.insert(name, array_rows(6))
        c.flush(name)
        c.upsert(name, [{"id": 3, "nums": [30, 31]}], partial_update=True, field_ops={"nums": "array_append"})
        c.upsert(name, [{"id": 4, "nums": [4, 99]}], partial_update=True, field_ops={"nums": "array_remove"})
        c.upsert(name, [{"id": 5, "tags": ["cyan"]}], partial_update=True, field_ops={"tags": "array_append"})
        refused = "ok"
        try:
            c.upsert(name, [{"id": 3, "nums": [1, 2, 3]}], partial_update=True, field_ops={"nums": "array_append"})
        except MilvusException:
            refused = "refused"
        got = c.query(name, filter="id >= 3", output_fields=["nums", "tags"], consistency_level="Strong")
        return sorted((r["id"], r["nums"], r["tags"]) for r in got), refused

    s = f(sluice)
    stored = {r["id"]: r for r in array_rows(6)}
    assert s[0] == [
        (3, stored[3]["nums"] + [30, 31], stored[3]["tags"]),
        (4, [x for x in stored[4]["nums"] if x not in (4, 99)], stored[4]["tags"]),
        (5, stored[5]["nums"], stored[5]["tags"] + ["cyan"]),
    ], s
    assert s[1] == "refused", s
    with pytest.raises(MilvusException) as e:
        sluice.upsert(
            "d_array_ops",
            [{"id": 3, "vector": [0.5] * DIM}],
            partial_update=True,
            field_ops={"vector": "array_append"},
        )
    assert "apply to ARRAY fields" in e.value.message, e.value
    # An array operation alone makes the upsert a partial one.
    sluice.upsert("d_array_ops", [{"id": 3, "nums": [7]}], field_ops={"nums": "array_remove"})
    got = sluice.query("d_array_ops", filter="id == 3", output_fields=["nums", "tags"], consistency_level="Strong")
    assert [(r["nums"], r["tags"]) for r in got] == [([3, 30, 31], stored[3]["tags"])], got


def test_an_explicit_schema_with_varchar_and_float_fields(sluice, lite):
    def f(c):
        name = "d_schema"
        drop_if_exists(c, name)
        schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field("pk", DataType.VARCHAR, is_primary=True, max_length=32)
        schema.add_field("title", DataType.VARCHAR, max_length=64)
        schema.add_field("score", DataType.DOUBLE)
        schema.add_field("vec", DataType.FLOAT_VECTOR, dim=4)
        index = c.prepare_index_params()
        index.add_index(field_name="vec", index_type="FLAT", metric_type="L2")
        c.create_collection(name, schema=schema, index_params=index)
        rnd = random.Random(11)
        data = [
            {"pk": f"k{i}", "title": f"t{i % 7}", "score": i / 3, "vec": [rnd.random() for _ in range(4)]}
            for i in range(120)
        ]
        c.insert(name, data)
        q = sorted(
            (x["pk"], x["title"], round(x["score"], 9))
            for x in c.query(name, filter='title == "t3" and score > 10', output_fields=["title", "score"])
        )
        hits = c.search(name, data=[[0.5, 0.5, 0.5, 0.5]], limit=6, filter='title != "t0"', output_fields=["title"])
        d = c.describe_collection(name)
        return q, hit_ids(hits, "pk"), [(x["name"], x["type"]) for x in d["fields"]]

    s, l = both(sluice, lite, f)
    assert s == l


# --- bad input: both refuse ------------------------------------------------------------------


def test_errors_for_bad_input_match(sluice, lite):
    def f(c):
        fresh(c, "d_errors")
        c.insert("d_errors", rows(10, seed=12))
        out = []
        for call in [
            lambda: c.search("d_no_such_collection", data=[[0.1] * DIM], limit=3),
            lambda: c.query("d_no_such_collection", filter="id > 0"),
            lambda: c.describe_collection("d_no_such_collection"),
        ]:
            try:
                call()
                out.append("ok")
            except MilvusException as e:
                out.append(e.code)
        for call in [
            lambda: c.insert("d_errors", [{"id": 1, "color": "red"}]),
            lambda: c.search("d_errors", data=[[0.1] * (DIM + 1)], limit=3),
            lambda: c.query("d_errors", filter="id >>> 3"),
            lambda: c.query("d_errors", filter="id == \"abc\""),
        ]:
            try:
                call()
                out.append("ok")
            except MilvusException:
                out.append("refused")
        # An empty filter without a limit reads every row (as milvus-lite does).
        out.append(len(c.query("d_errors", filter="")))
        return out

    s, l = both(sluice, lite, f)
    assert s[:3] == [100, 100, 100], s
    assert s == l


def test_like_patterns_match(sluice, lite):
    def f(c):
        fresh(c, "d_like", enable_dynamic_field=True)
        data = rows(40, seed=19)
        for i, r in enumerate(data):
            r["tag"] = ["alpha", "beta", "gamma_1", "50%"][i % 4]
        c.insert("d_like", data)
        out = []
        for expr in [
            'color like "r%"',
            'color like "%e%"',
            'color like "gr__n"',
            'tag like "%a\\\\_%"',
            'tag like "50\\\\%"',
            'tag like "a_b"',
            'tag like "%a" and size > 50',
        ]:
            got = c.query("d_like", filter=expr, output_fields=["id"])
            out.append(sorted(r["id"] for r in got))
        return out

    s, l = both(sluice, lite, f)
    assert s == l
    assert all(s[:2]) and s[3] and s[4], s


def test_range_search_matches(sluice, lite):
    def f(c):
        out = []
        for metric, bounds in [
            ("L2", [{"radius": 0.5}, {"radius": 0.5, "range_filter": 0.1}]),
            ("COSINE", [{"radius": 0.9}, {"radius": 0.8, "range_filter": 0.95}]),
        ]:
            name = f"d_range_{metric.lower()}"
            fresh(c, name, metric_type=metric)
            data = rows(300, seed=21)
            c.insert(name, data)
            for b in bounds:
                hits = c.search(
                    name,
                    data=[data[3]["vector"], data[4]["vector"]],
                    limit=20,
                    search_params={"metric_type": metric, "params": b},
                )
                out.append([[h["id"] for h in q] for q in hits])
        return out

    s, l = both(sluice, lite, f)
    assert s == l
    # Some hits in every range, and the ranges that skip the nearest leave out the query row.
    assert all(all(q) for q in s), s
    assert 3 not in s[1][0] and 3 not in s[3][0], s


def test_grouped_search_matches(sluice, lite):
    def f(c):
        drop_if_exists(c, "d_group")
        schema = MilvusClient.create_schema(auto_id=False)
        schema.add_field("id", DataType.INT64, is_primary=True)
        schema.add_field("vector", DataType.FLOAT_VECTOR, dim=DIM)
        schema.add_field("doc", DataType.INT64)
        schema.add_field("tag", DataType.VARCHAR, max_length=16)
        index = c.prepare_index_params()
        index.add_index(field_name="vector", index_type="FLAT", metric_type="L2")
        c.create_collection("d_group", schema=schema, index_params=index)
        data = rows(200, seed=22)
        for i, r in enumerate(data):
            r["doc"] = i % 7
            r["tag"] = f"t{i % 3}"
            del r["color"], r["size"]
        c.insert("d_group", data)
        out = []
        for kw in [
            {"group_by_field": "doc"},
            {"group_by_field": "doc", "group_size": 3},
            {"group_by_field": "tag", "group_size": 2},
        ]:
            hits = c.search(
                "d_group",
                data=[data[5]["vector"], data[6]["vector"]],
                limit=3,
                output_fields=["doc", "tag"],
                **kw,
            )
            out.append([[(h["id"], h["entity"]["doc"], h["entity"]["tag"]) for h in q] for q in hits])
        return out

    s, l = both(sluice, lite, f)
    assert s == l
    # One hit per doc, then three per doc, then two per tag: three groups each time.
    assert [len(q) for r in s for q in r] == [3, 3, 9, 9, 6, 6], s
    assert len({d for _, d, _ in s[0][0]}) == 3, s


def test_filter_templates_answer_as_the_filter_written_out(sluice):
    """Milvus's expression templates (filter_params), which milvus-lite does not read: each
    answer equals that of the same filter with the values written in."""
    fresh(sluice, "d_template")
    data = rows(80, seed=23)
    sluice.insert("d_template", data)

    def ids(rows_):
        return sorted(r["id"] for r in rows_)

    q = sluice.query(
        "d_template",
        filter="size > {low} and color in {colors}",
        filter_params={"low": 40, "colors": ["red", "green"]},
    )
    assert q and ids(q) == ids(
        sluice.query("d_template", filter='size > 40 and color in ["red", "green"]')
    )
    hits = sluice.search(
        "d_template",
        data=[data[2]["vector"]],
        limit=5,
        filter="id in {ids} or color == {c}",
        filter_params={"ids": [2, 3, 4], "c": 'bl"ue'},
    )
    # The query row first; no row's color is bl"ue, so only the three ids.
    assert hits[0][0]["id"] == 2, hits
    assert sorted(h["id"] for h in hits[0]) == [2, 3, 4], hits
    before = ids(sluice.query("d_template", filter="size >= 30.5"))
    sluice.delete("d_template", filter="size < {s}", filter_params={"s": 30.5})
    assert ids(sluice.query("d_template", filter="")) == before
    with pytest.raises(MilvusException) as e:
        sluice.query("d_template", filter="size > {missing}", filter_params={"low": 1})
    assert e.value.code == 1100 and "missing" in e.value.message


def test_writes_to_a_missing_partition_are_refused_and_change_nothing(sluice, lite):
    def f(c):
        fresh(c, "d_part_writes")
        c.insert("d_part_writes", rows(5, seed=14), partition_name="_default")
        codes = []
        for call in [
            lambda: c.insert("d_part_writes", rows(3, seed=15, start=10), partition_name="p1"),
            lambda: c.upsert("d_part_writes", rows(2, seed=16), partition_name="p1"),
            lambda: c.delete("d_part_writes", ids=[0, 1], partition_name="p1"),
        ]:
            try:
                call()
                codes.append("ok")
            except MilvusException as e:
                codes.append(e.code)
        kept = c.query("d_part_writes", filter="id >= 0", output_fields=["size"])
        return codes, sorted((r["id"], r["size"]) for r in kept)

    s, l = both(sluice, lite, f)
    assert s[0] == [200, 200, 200], s
    assert [i for i, _ in s[1]] == [0, 1, 2, 3, 4], s
    assert s == l


def two_vector_collection(c, name, metrics=("L2", "IP"), rows=60, seed=41, t=lambda i: i % 3):
    """A fresh collection `name` with vector fields `a` and `b` (FLAT, by `metrics`), an int64
    `t` (`t(i)` in row `i`) and `rows` rows; the rows inserted."""
    drop_if_exists(c, name)
    schema = MilvusClient.create_schema(auto_id=False)
    schema.add_field("id", DataType.INT64, is_primary=True)
    schema.add_field("a", DataType.FLOAT_VECTOR, dim=DIM)
    schema.add_field("b", DataType.FLOAT_VECTOR, dim=DIM)
    schema.add_field("t", DataType.INT64)
    index = c.prepare_index_params()
    index.add_index(field_name="a", index_type="FLAT", metric_type=metrics[0])
    index.add_index(field_name="b", index_type="FLAT", metric_type=metrics[1])
    c.create_collection(name, schema=schema, index_params=index)
    rnd = random.Random(seed)
    data = [
        {
            "id": i,
            "a": [rnd.random() for _ in range(DIM)],
            "b": [rnd.random() for _ in range(DIM)],
            "t": t(i),
        }
        for i in range(rows)
    ]
    c.insert(name, data)
    return data


def hits(result, field=None):
    return [
        [(h["id"], round(h["distance"], 4)) + ((h["entity"][field],) if field else ()) for h in q]
        for q in result
    ]


def test_a_collection_with_two_vector_fields_is_indexed_and_searched_on_each(sluice, lite):
    def f(c):
        data = two_vector_collection(c, "d_two_vectors")
        indexes = sorted(c.list_indexes("d_two_vectors"))
        metrics = [c.describe_index("d_two_vectors", i)["metric_type"] for i in indexes]
        on_a = c.search("d_two_vectors", [data[3]["a"]], anns_field="a", limit=4, output_fields=["t"])
        on_b = c.search(
            "d_two_vectors", [data[3]["b"]], anns_field="b", limit=4, filter="t == 0", output_fields=["t"]
        )
        c.release_collection("d_two_vectors")
        c.drop_index("d_two_vectors", "a")
        left = c.list_indexes("d_two_vectors")
        return indexes, metrics, hits(on_a, "t"), hits(on_b, "t"), left

    s, l = both(sluice, lite, f)
    # After dropping one of two indexes, milvus-lite lists none; Milvus and Sluice the other.
    assert s[:4] == l[:4]
    assert s[0] == ["a", "b"] and s[1] == ["L2", "IP"] and s[4] == ["b"]
    assert s[2][0][0][:2] == (3, 0.0)


def test_hybrid_search_fuses_like_milvus(sluice, lite):
    from pymilvus import AnnSearchRequest, RRFRanker, WeightedRanker

    def f(c):
        data = two_vector_collection(c, "d_hybrid")
        queries_a = [data[5]["a"], data[8]["a"]]
        queries_b = [data[5]["b"], data[8]["b"]]
        on_a = AnnSearchRequest(queries_a, "a", {"metric_type": "L2"}, limit=5)
        on_b = AnnSearchRequest(queries_b, "b", {"metric_type": "IP"}, limit=5, expr="t != 1")
        # Every hit of both searches is kept: ties in RRF scores cannot make the answers differ.
        rrf = c.hybrid_search("d_hybrid", [on_a, on_b], RRFRanker(30), limit=10, output_fields=["t"])
        rrf = [sorted(q) for q in hits(rrf, "t")]
        weighted = c.hybrid_search("d_hybrid", [on_a, on_b], WeightedRanker(0.3, 0.7), limit=4)
        raw = c.hybrid_search(
            "d_hybrid", [on_a, on_b], WeightedRanker(0.5, 0.5, norm_score=False), limit=3
        )
        return rrf, hits(weighted), hits(raw)

    s, l = both(sluice, lite, f)
    assert s == l
    assert all(len(q) >= 5 for q in s[0]) and [len(q) for q in s[1]] == [4, 4]
    # A hit both searches found ranks above what one found alone.
    assert all(q[0][1] > 0.5 for q in s[1]), s[1]
    # Deliberate difference: milvus-lite ignores a hybrid search's offset; Milvus and Sluice
    # skip that many of the fused hits.
    from pymilvus import AnnSearchRequest, WeightedRanker

    data = two_vector_collection(sluice, "d_hybrid")
    reqs = [
        AnnSearchRequest([data[5]["a"]], "a", {"metric_type": "L2"}, limit=5),
        AnnSearchRequest([data[5]["b"]], "b", {"metric_type": "IP"}, limit=5),
    ]
    whole = hits(sluice.hybrid_search("d_hybrid", reqs, WeightedRanker(0.2, 0.8), limit=6))
    skipped = hits(sluice.hybrid_search("d_hybrid", reqs, WeightedRanker(0.2, 0.8), limit=4, offset=2))
    assert skipped == [whole[0][2:6]]


def test_hybrid_search_errors_in_sluice(sluice):
    from pymilvus import AnnSearchRequest, RRFRanker, WeightedRanker

    data = two_vector_collection(sluice, "d_hybrid_errors")
    on_a = AnnSearchRequest([data[0]["a"]], "a", {"metric_type": "L2"}, limit=3)
    on_b = AnnSearchRequest([data[0]["b"], data[1]["b"]], "b", {"metric_type": "IP"}, limit=3)
    for reqs, ranker, why in [
        ([on_a, on_a], WeightedRanker(0.5), "one weight per search"),
        ([on_a, on_b], RRFRanker(), "the same number"),
        ([AnnSearchRequest([data[0]["b"]], "b", {"metric_type": "L2"}, limit=3)], RRFRanker(), "metric type not match"),
    ]:
        with pytest.raises(MilvusException) as e:
            sluice.hybrid_search("d_hybrid_errors", reqs, ranker, limit=3)
        assert e.value.code == 1100 and why in e.value.message, e.value
    # With two vector fields, a search names the one it searches.
    with pytest.raises(MilvusException) as e:
        sluice.search("d_hybrid_errors", [data[0]["a"]], limit=3)
    assert "anns_field" in e.value.message, e.value


# --- deliberate differences, checked on Sluice alone ------------------------------------------


def test_search_by_primary_keys_uses_their_vectors(sluice):
    """Milvus 2.6's search by primary keys (milvus-lite refuses it): the vectors of the rows
    named are the query vectors, in that order; a key with no row is an error."""
    data = two_vector_collection(sluice, "d_search_ids")
    by_ids = sluice.search("d_search_ids", ids=[7, 2], anns_field="b", limit=4, output_fields=["t"])
    by_vectors = sluice.search(
        "d_search_ids", [data[7]["b"], data[2]["b"]], anns_field="b", limit=4, output_fields=["t"]
    )
    assert hits(by_ids, "t") == hits(by_vectors, "t")
    assert len(by_ids) == 2 and all(len(q) == 4 for q in by_ids)
    with pytest.raises(MilvusException) as e:
        sluice.search("d_search_ids", ids=[7, 999], anns_field="a", limit=4)
    assert e.value.code == 1100 and "999" in e.value.message, e.value


def test_unsupported_requests_get_a_clear_error_not_a_silent_success(sluice):
    """Sluice has one ANN index kind (HNSW, or FLAT for exact search), built with M and
    efConstruction, which also answers the IVF types, SCANN and DISKANN: asking for more is an
    error, never ignored."""
    fresh(sluice, "d_unsupported_target")
    schema = MilvusClient.create_schema(auto_id=False)
    schema.add_field("id", DataType.INT64, is_primary=True)
    schema.add_field("v", DataType.FLOAT_VECTOR, dim=4)
    drop_if_exists(sluice, "d_unsupported")
    sluice.create_collection("d_unsupported", schema=schema)
    for index_type, params in [
        ("GPU_CAGRA", {}),
        ("HNSW", {"nlist": 8}),
        ("FLAT", {"M": 8}),
        ("IVF_FLAT", {"M": 8}),
    ]:
        index = sluice.prepare_index_params()
        index.add_index(field_name="v", index_type=index_type, metric_type="L2", params=params)
        with pytest.raises(MilvusException) as e:
            sluice.create_index("d_unsupported", index)
        assert "not supported" in e.value.message
    # A MilvusService method Sluice does not have is named in the answer, not left blank.
    import grpc

    with pytest.raises(grpc.RpcError) as e:
        sluice.create_resource_group("d_group")
    assert e.value.code() == grpc.StatusCode.UNIMPLEMENTED
    assert "CreateResourceGroup is not supported by Sluice" in e.value.details()
    bad = MilvusClient.create_schema(auto_id=False)
    bad.add_field("id", DataType.INT64, is_primary=True)
    bad.add_field("v", DataType.FLOAT_VECTOR, dim=4)
    bad.add_field("g", DataType.GEOMETRY)
    with pytest.raises(MilvusException) as e:
        sluice.create_collection("d_geometry", schema=bad)
    assert "not supported" in e.value.message


def test_stats_load_release_and_load_state_match(sluice, lite):
    def f(c):
        fresh(c, "d_load")
        c.insert("d_load", rows(60, seed=13))
        stats = c.get_collection_stats("d_load")["row_count"]
        loaded = str(c.get_load_state("d_load")["state"])
        c.release_collection("d_load")
        released = str(c.get_load_state("d_load")["state"])
        try:
            c.query("d_load", filter="id < 5")
            read_released = "ok"
        except MilvusException:
            read_released = "refused"
        c.load_collection("d_load")
        again = str(c.get_load_state("d_load")["state"])
        n = len(c.query("d_load", filter="id < 5"))
        return stats, loaded, released, read_released, again, n

    s, l = both(sluice, lite, f)
    assert s == l
    assert s[0] == 60 and s[3] == "refused" and s[5] == 5


def test_indexes_are_described_listed_and_dropped(sluice, lite):
    def f(c):
        fresh(c, "d_index")
        listed = c.list_indexes("d_index")
        d = c.describe_index("d_index", listed[0])
        described = (d["field_name"], d["index_type"], d["metric_type"])
        c.release_collection("d_index")
        c.drop_index("d_index", listed[0])
        after = c.list_indexes("d_index")
        return len(listed), described, after

    s, l = both(sluice, lite, f)
    assert s == l
    assert s[1] == ("vector", "AUTOINDEX", "COSINE")


def test_scalar_indexes_are_taken_described_and_dropped_like_milvus(sluice, lite):
    """INVERTED indexes on scalar fields next to the vector index: created with the collection
    and later, listed, described, dropped; filtered reads answer the same with them."""

    def f(c):
        name = "d_scalar_index"
        drop_if_exists(c, name)
        schema = c.create_schema(auto_id=False, enable_dynamic_field=True)
        schema.add_field("id", DataType.INT64, is_primary=True)
        schema.add_field("vector", DataType.FLOAT_VECTOR, dim=DIM)
        schema.add_field("color", DataType.VARCHAR, max_length=16)
        schema.add_field("size", DataType.INT64)
        schema.add_field("tags", DataType.ARRAY, element_type=DataType.VARCHAR, max_capacity=4, max_length=8)
        index = c.prepare_index_params()
        index.add_index(field_name="vector", index_type="FLAT", metric_type="L2")
        index.add_index(field_name="color", index_type="INVERTED", index_name="color_idx")
        c.create_collection(name, schema=schema, index_params=index)
        data = [dict(r, tags=[r["color"]]) for r in rows(50, seed=61)]
        c.insert(name, data[:25])
        c.flush(name)
        c.insert(name, data[25:])
        later = c.prepare_index_params()
        later.add_index(field_name="size", index_type="INVERTED")
        c.release_collection(name)
        c.create_index(name, later)
        c.load_collection(name)
        listed = sorted(c.list_indexes(name))
        described = sorted(
            (d["field_name"], d["index_type"]) for d in (c.describe_index(name, i) for i in listed)
        )
        by_field = len(c.list_indexes(name, field_name="color"))
        q = sorted(
            r["id"]
            for r in c.query(
                name,
                filter='color in ["red", "blue"] and size > 40 and array_contains(tags, "red")',
                consistency_level="Strong",
            )
        )
        c.release_collection(name)
        c.drop_index(name, "color_idx")
        after = sorted(c.describe_index(name, i)["field_name"] for i in c.list_indexes(name))
        return listed, described, by_field, q, after

    s, l = both(sluice, lite, f)
    # milvus-lite lists a scalar index created with the collection by its field's name, not
    # the name it was given; Sluice lists it by the name given.
    assert s[1:] == l[1:], (s, l)
    assert s[0] == ["color_idx", "size", "vector"], s
    assert s[1] == [("color", "INVERTED"), ("size", "INVERTED"), ("vector", "FLAT")], s
    assert s[3] and s[4] == ["size", "vector"], s
    d = sluice.describe_index("d_scalar_index", "size")
    assert "metric_type" not in d and d["index_type"] == "INVERTED", d


def test_scalar_index_types_are_checked_against_the_field(sluice):
    """STL_SORT, Trie, BITMAP, ARRAY and JSON path indexes (milvus-lite has INVERTED on
    scalars only): each on the field types Milvus allows it, refused with a reason on others;
    reads unchanged."""
    name = "s_scalar_index"
    drop_if_exists(sluice, name)
    schema = sluice.create_schema(auto_id=False)
    schema.add_field("id", DataType.INT64, is_primary=True)
    schema.add_field("vector", DataType.FLOAT_VECTOR, dim=DIM)
    schema.add_field("color", DataType.VARCHAR, max_length=16)
    schema.add_field("size", DataType.INT64)
    schema.add_field("score", DataType.DOUBLE)
    schema.add_field("meta", DataType.JSON)
    schema.add_field("tags", DataType.ARRAY, element_type=DataType.INT64, max_capacity=4)
    index = sluice.prepare_index_params()
    index.add_index(field_name="vector", index_type="HNSW", metric_type="IP", params={"M": 8})
    index.add_index(field_name="size", index_type="STL_SORT")
    index.add_index(field_name="color", index_type="Trie")
    index.add_index(field_name="tags", index_type="BITMAP")
    index.add_index(
        field_name="meta",
        index_type="INVERTED",
        index_name="meta_a",
        params={"json_path": 'meta["a"]', "json_cast_type": "double"},
    )
    index.add_index(
        field_name="meta",
        index_type="INVERTED",
        index_name="meta_b",
        params={"json_path": 'meta["b"]', "json_cast_type": "varchar"},
    )
    sluice.create_collection(name, schema=schema, index_params=index)
    described = {
        i: sluice.describe_index(name, i) for i in sluice.list_indexes(name)
    }
    assert {i: d["index_type"] for i, d in described.items()} == {
        "vector": "HNSW",
        "size": "STL_SORT",
        "color": "Trie",
        "tags": "BITMAP",
        "meta_a": "INVERTED",
        "meta_b": "INVERTED",
    }, described
    assert described["meta_a"]["json_path"] == 'meta["a"]', described["meta_a"]
    assert described["meta_a"]["json_cast_type"] == "DOUBLE", described["meta_a"]
    # The vector index still sets the graphs' metric: an IP search answers IP scores.
    data = [
        dict(r, score=r["size"] / 2, meta={"a": r["size"], "b": r["color"]}, tags=[r["size"]])
        for r in rows(20, seed=62)
    ]
    sluice.insert(name, data)
    hits = sluice.search(name, data=[[1.0] * DIM], limit=1, consistency_level="Strong")
    best = max(data, key=lambda r: sum(r["vector"]))
    assert hits[0][0]["id"] == best["id"], (hits, best["id"])
    assert abs(hits[0][0]["distance"] - sum(best["vector"])) < 1e-4, hits

    for field, kind, params, why in [
        ("color", "STL_SORT", {}, "does not index"),
        ("score", "BITMAP", {}, "does not index"),
        ("id", "BITMAP", {}, "the primary key"),
        ("size", "NGRAM", {}, "scalar index type NGRAM"),
        ("meta", "INVERTED", {}, "needs json_path"),
        ("meta", "INVERTED", {"json_path": 'meta["c"]', "json_cast_type": "int"}, "json_cast_type"),
        ("size", "INVERTED", {"nlist": 8}, "takes none"),
        ("size", "INVERTED", {}, "at most one distinct index"),
    ]:
        bad = sluice.prepare_index_params()
        bad.add_index(field_name=field, index_type=kind, index_name=f"bad_{field}", params=params)
        sluice.release_collection(name)
        with pytest.raises(MilvusException) as e:
            sluice.create_index(name, bad)
        assert why in e.value.message, (field, kind, e.value)
    assert sorted(sluice.list_indexes(name)) == ["color", "meta_a", "meta_b", "size", "tags", "vector"]
    sluice.load_collection(name)
    got = sorted(r["id"] for r in sluice.query(name, filter='meta["a"] > 50 and color == "red"'))
    assert got == sorted(r["id"] for r in data if r["size"] > 50 and r["color"] == "red")


def test_an_hnsw_index_with_build_parameters_is_kept_and_searched(sluice, lite):
    """HNSW's M and efConstruction (as numbers or text) are taken, described back and used for
    the collection's sealed segments; searches answer as milvus-lite's."""

    def f(c):
        reindex(c, "d_hnsw", "HNSW", {"M": 8, "efConstruction": "64"})
        data = rows(300, seed=18)
        c.insert("d_hnsw", data)
        c.flush("d_hnsw")
        hits = c.search(
            "d_hnsw",
            data=[data[7]["vector"]],
            limit=3,
            search_params={"metric_type": "L2", "params": {"ef": 64}},
        )
        return [h["id"] for h in hits[0]]

    s, l = both(sluice, lite, f)
    assert s == l
    assert s[0] == 7
    d = sluice.describe_index("d_hnsw", sluice.list_indexes("d_hnsw")[0])
    assert (d["index_type"], d["metric_type"]) == ("HNSW", "L2")
    assert d["params"] == {"M": 8, "efConstruction": 64}, d
    for params in [{"M": 1}, {"M": 4096}, {"efConstruction": 0}, {"M": "many"}]:
        with pytest.raises(MilvusException) as e:
            reindex(sluice, "d_hnsw_bad", "HNSW", params)
        assert e.value.code == 1100, e.value
        assert list(params)[0] in e.value.message


def test_field_properties_are_altered_and_described_in_sluice(sluice, sluice_server):
    """alter_collection_field (milvus-lite has no AlterCollectionField): a VARCHAR field's
    max_length grows and a longer value is then accepted, an ARRAY's max_capacity changes
    what inserts may hold, mmap.enabled is described among the field's params and reset by
    delete_keys (sent as other SDKs send it); a lower max_length, an ARRAY's max_length, a
    property of the primary key, another key, a missing field are refused and change
    nothing."""
    name = "d_alter_field"
    drop_if_exists(sluice, name)
    schema = sluice.create_schema(auto_id=False)
    schema.add_field("id", DataType.INT64, is_primary=True)
    schema.add_field("vector", DataType.FLOAT_VECTOR, dim=DIM)
    schema.add_field("title", DataType.VARCHAR, max_length=4)
    schema.add_field("tags", DataType.ARRAY, element_type=DataType.INT64, max_capacity=2)
    index = sluice.prepare_index_params()
    index.add_index(field_name="vector", index_type="FLAT", metric_type="L2")
    sluice.create_collection(name, schema=schema, index_params=index)

    def row(i, title, tags):
        return {"id": i, "vector": [0.1] * DIM, "title": title, "tags": tags}

    def params():
        fields = sluice.describe_collection(name)["fields"]
        return {f["name"]: f.get("params", {}) for f in fields}

    def refused(call, text):
        with pytest.raises(MilvusException) as e:
            call()
        assert text in e.value.message, e.value.message

    sluice.insert(name, [row(0, "abcd", [1, 2])])
    refused(lambda: sluice.insert(name, [row(1, "abcdefgh", [1])]), "max_length")
    sluice.alter_collection_field(name, "title", field_params={"max_length": 16})
    assert params()["title"]["max_length"] == 16, params()
    sluice.insert(name, [row(1, "abcdefgh", [1])])
    refused(lambda: sluice.insert(name, [row(2, "a" * 17, [1])]), "max_length")

    refused(lambda: sluice.insert(name, [row(2, "x", [1, 2, 3])]), "max_capacity")
    sluice.alter_collection_field(name, "tags", field_params={"max_capacity": 3})
    assert params()["tags"]["max_capacity"] == 3, params()
    sluice.insert(name, [row(2, "x", [1, 2, 3])])

    sluice.alter_collection_field(name, "title", field_params={"mmap.enabled": True})
    assert params()["title"]["mmap_enabled"] is True, params()
    sluice.alter_collection_field(name, "title", field_params={"mmap_enabled": False})
    assert params()["title"]["mmap_enabled"] is False, params()

    before = params()
    for field, change, text in [
        ("title", {"max_length": 8}, "only grows"),
        ("tags", {"max_length": 8}, "only its max_capacity"),
        ("title", {"max_capacity": 8}, "not an ARRAY"),
        ("id", {"mmap.enabled": True}, "primary key"),
        ("tags", {"max_capacity": 0}, "1-4096"),
        ("title", {"nullable": True}, "not a field property"),
        ("nope", {"max_length": 99}, "does not exist"),
    ]:
        refused(lambda: sluice.alter_collection_field(name, field, field_params=change), text)
    assert params() == before

    import grpc
    from pymilvus.grpc_gen import milvus_pb2, milvus_pb2_grpc

    with grpc.insecure_channel(sluice_server.milvus) as ch:
        stub = milvus_pb2_grpc.MilvusServiceStub(ch)

        def delete(key):
            request = milvus_pb2.AlterCollectionFieldRequest(
                collection_name=name, field_name="title", delete_keys=[key]
            )
            return stub.AlterCollectionField(request, timeout=10)

        refused_delete = delete("max_length")
        assert refused_delete.code == 1100, refused_delete
        assert "cannot be deleted" in refused_delete.reason, refused_delete
        assert params() == before
        assert delete("mmap.enabled").code == 0
        assert "mmap_enabled" not in params()["title"], params()
    found = sluice.query(name, filter="id >= 0", output_fields=["title", "tags"])
    assert sorted((r["id"], r["title"], list(r["tags"])) for r in found) == [
        (0, "abcd", [1, 2]),
        (1, "abcdefgh", [1]),
        (2, "x", [1, 2, 3]),
    ]


def test_index_properties_are_altered_and_described_in_sluice(sluice):
    """alter_index_properties / drop_index_properties (AlterIndex, which milvus-lite lacks):
    mmap.enabled is set, described among the index's parameters and reset; another key, a
    value that is not a boolean and an unknown index are refused and change nothing; searches
    answer as before."""
    name = "d_index_props"
    reindex(sluice, name, "HNSW", {"M": 8, "efConstruction": 64})
    sluice.insert(name, rows(60, seed=3))
    q = [rows(1, seed=4)[0]["vector"]]

    def hits():
        return hit_ids(sluice.search(name, data=q, limit=5))

    before = hits()
    index = sluice.list_indexes(name)[0]
    described = sluice.describe_index(name, index)
    assert "mmap.enabled" not in described, described
    sluice.alter_index_properties(name, index, {"mmap.enabled": True})
    d = sluice.describe_index(name, index)
    assert d["mmap.enabled"] == "true", d
    assert d == {**described, "mmap.enabled": "true"}, d
    for props in [{"foo": 1}, {"mmap.enabled": "sometimes"}, {"mmap.enabled": False, "foo": 1}]:
        with pytest.raises(MilvusException) as e:
            sluice.alter_index_properties(name, index, props)
        assert e.value.code == 1100, e.value
        assert ("foo" if "foo" in props else "sometimes") in e.value.message, e.value
    with pytest.raises(MilvusException, match="index not found"):
        sluice.alter_index_properties(name, "no_such_index", {"mmap.enabled": False})
    with pytest.raises(MilvusException) as e:
        sluice.drop_index_properties(name, index, ["foo"])
    assert e.value.code == 1100, e.value
    assert sluice.describe_index(name, index)["mmap.enabled"] == "true"
    assert hits() == before
    sluice.drop_index_properties(name, index, ["mmap.enabled"])
    assert sluice.describe_index(name, index) == described
    assert hits() == before


def test_the_hello_milvus_ivf_flat_index_is_taken_and_searched(sluice, lite):
    """pymilvus's hello_milvus example indexes with IVF_FLAT (nlist) and searches with nprobe:
    Sluice answers it with its HNSW graphs and describes the index as created."""

    def f(c):
        reindex(c, "d_ivf", "IVF_FLAT", {"nlist": 128})
        data = rows(200, seed=20)
        c.insert("d_ivf", data)
        hits = c.search(
            "d_ivf",
            data=[data[11]["vector"]],
            limit=4,
            search_params={"metric_type": "L2", "params": {"nprobe": 16}},
        )
        d = c.describe_index("d_ivf", c.list_indexes("d_ivf")[0])
        return [h["id"] for h in hits[0]], d["index_type"], d["metric_type"]

    s, l = both(sluice, lite, f)
    assert s == l
    assert s[0][0] == 11 and s[1:] == ("IVF_FLAT", "L2"), s
    d = sluice.describe_index("d_ivf", sluice.list_indexes("d_ivf")[0])
    assert d["params"] == {"nlist": 128}, d
    for index_type, params in [
        ("IVF_FLAT", {"nlist": 0}),
        ("IVF_PQ", {"nlist": 8, "nbits": 99}),
        ("IVF_SQ8", {"nlist": "many"}),
    ]:
        with pytest.raises(MilvusException) as e:
            reindex(sluice, "d_ivf_bad", index_type, params)
        assert e.value.code == 1100, e.value


def test_partitions_of_a_new_collection_match(sluice, lite):
    def f(c):
        fresh(c, "d_parts")
        return c.list_partitions("d_parts"), c.has_partition("d_parts", "_default"), c.has_partition("d_parts", "p9")

    s, l = both(sluice, lite, f)
    assert s == l == (["_default"], True, False)


def test_partitions_are_created_written_searched_and_dropped(sluice, lite):
    def f(c):
        fresh(c, "d_parts_life")
        c.create_partition("d_parts_life", "p1")
        c.create_partition("d_parts_life", "p2")
        data = rows(30, seed=21)
        c.insert("d_parts_life", data[:10])
        c.insert("d_parts_life", data[10:20], partition_name="p1")
        c.insert("d_parts_life", data[20:], partition_name="p2")
        listed = sorted(c.list_partitions("d_parts_life"))
        has = [c.has_partition("d_parts_life", p) for p in ["p1", "p2", "p3"]]

        def ids(**kw):
            return sorted(r["id"] for r in c.query("d_parts_life", filter="id >= 0", **kw))

        scoped = [ids(partition_names=["p1"]), ids(partition_names=["p2", "_default"])]
        hits = c.search(
            "d_parts_life", data=[data[25]["vector"]], limit=5, partition_names=["p1"]
        )
        in_p1 = all(10 <= h["id"] < 20 for h in hits[0]) and len(hits[0]) == 5
        c.drop_partition("d_parts_life", "p2")
        after = (
            sorted(c.list_partitions("d_parts_life")),
            c.has_partition("d_parts_life", "p2"),
            ids(),
        )
        # A partition of the same name again is a new, empty one.
        c.create_partition("d_parts_life", "p2")
        empty = ids(partition_names=["p2"])
        return listed, has, scoped, in_p1, after, empty

    s, l = both(sluice, lite, f)
    assert s == l
    assert s[0] == ["_default", "p1", "p2"] and s[1] == [True, True, False]
    assert s[2] == [list(range(10, 20)), list(range(10)) + list(range(20, 30))]
    assert s[3] is True
    assert s[4] == (["_default", "p1"], False, list(range(20)))
    assert s[5] == []


def test_partition_ddl_follows_milvus_in_sluice(sluice):
    """Deliberate differences from milvus-lite, as Milvus answers: creating a partition that
    exists and dropping one that does not are no change; names follow Milvus's rules; the
    default partition stays."""
    fresh(sluice, "d_parts_ddl")
    sluice.create_partition("d_parts_ddl", "p1")
    sluice.create_partition("d_parts_ddl", "p1")
    sluice.drop_partition("d_parts_ddl", "nope")
    assert sorted(sluice.list_partitions("d_parts_ddl")) == ["_default", "p1"]
    for bad in ["1p", "p-1", "x" * 256]:
        with pytest.raises(MilvusException) as e:
            sluice.create_partition("d_parts_ddl", bad)
        assert e.value.code == 1100 and "partition name" in e.value.message, e.value
    with pytest.raises(MilvusException) as e:
        sluice.drop_partition("d_parts_ddl", "_default")
    assert e.value.code == 1100 and "default partition" in e.value.message, e.value
    with pytest.raises(MilvusException) as e:
        sluice.create_partition("d_no_such_collection", "p1")
    assert e.value.code == 100, e.value
    assert sorted(sluice.list_partitions("d_parts_ddl")) == ["_default", "p1"]


def test_released_partitions_are_skipped_until_loaded_again(sluice):
    """Partition-level load and release, as Milvus answers (milvus-lite has neither)."""
    fresh(sluice, "d_parts_load")
    sluice.create_partition("d_parts_load", "p1")
    data = rows(20, seed=22)
    sluice.insert("d_parts_load", data[:10])
    sluice.insert("d_parts_load", data[10:], partition_name="p1")

    def ids(**kw):
        return sorted(r["id"] for r in sluice.query("d_parts_load", filter="id >= 0", **kw))

    def state(**kw):
        return str(sluice.get_load_state("d_parts_load", **kw)["state"])

    sluice.release_partitions("d_parts_load", ["p1"])
    assert ids() == list(range(10))
    assert state(partition_name="p1") == "NotLoad" and state() == "Loaded"
    with pytest.raises(MilvusException) as e:
        sluice.search("d_parts_load", data=[data[15]["vector"]], limit=3, partition_names=["p1"])
    assert e.value.code == 201 and "p1" in e.value.message, e.value
    hits = sluice.search("d_parts_load", data=[data[15]["vector"]], limit=3)
    assert all(h["id"] < 10 for h in hits[0])
    sluice.load_partitions("d_parts_load", ["p1"])
    assert ids() == list(range(20)) and state(partition_name="p1") == "Loaded"
    # Releasing every partition releases the collection; loading one loads only that one.
    sluice.release_partitions("d_parts_load", ["_default", "p1"])
    assert state() == "NotLoad"
    with pytest.raises(MilvusException) as e:
        ids()
    assert e.value.code == 101, e.value
    sluice.load_partitions("d_parts_load", ["p1"])
    assert ids() == list(range(10, 20))
    assert state(partition_name="_default") == "NotLoad"
    sluice.load_collection("d_parts_load")
    assert ids() == list(range(20))
    with pytest.raises(MilvusException) as e:
        sluice.release_partitions("d_parts_load", ["p9"])
    assert e.value.code == 200, e.value


def test_a_dropped_partition_stays_dropped_after_a_restart():
    """The rows of a dropped partition, also those already sealed into Parquet, do not come back
    when the server restarts and reloads the collection's segments."""
    from pathlib import Path

    with tempfile.TemporaryDirectory(prefix="sluice-parts-restart-") as d:
        s = Server(Path(d))
        s.start()
        try:
            c = MilvusClient(uri=f"http://{s.milvus}")
            c.create_collection("parts_restart", dimension=DIM)
            c.create_partition("parts_restart", "p1")
            data = rows(40, seed=23)
            c.insert("parts_restart", data[:20])
            c.insert("parts_restart", data[20:], partition_name="p1")
            c.flush("parts_restart")
            c.drop_partition("parts_restart", "p1")
            # More writes and a flush after the drop: the restart starts past it.
            c.insert("parts_restart", rows(5, seed=24, start=100))
            c.flush("parts_restart")
            before = sorted(r["id"] for r in c.query("parts_restart", filter="id >= 0"))
            c.close()
        finally:
            s.stop()
        assert before == list(range(20)) + list(range(100, 105))
        s = Server(Path(d))
        s.start()
        try:
            c = MilvusClient(uri=f"http://{s.milvus}")
            after = sorted(
                r["id"]
                for r in c.query(
                    "parts_restart", filter="id >= 0", consistency_level="Strong"
                )
            )
            assert after == before
            assert c.list_partitions("parts_restart") == ["_default"]
            c.close()
        finally:
            s.stop()


def test_aliases_name_collections_and_switch_between_them(sluice, lite):
    def f(c):
        for name in ["d_alias_a", "d_alias_b"]:
            fresh(c, name)
        c.insert("d_alias_a", rows(5, seed=31))
        c.insert("d_alias_b", rows(3, seed=32, start=100))
        c.create_alias("d_alias_a", "d_live")

        def ids():
            return sorted(r["id"] for r in c.query("d_live", filter="id >= 0"))

        described = c.describe_alias("d_live")
        listed = c.list_aliases("d_alias_a")["aliases"]
        first = ids()
        c.insert("d_live", rows(1, seed=33, start=50))
        written = sorted(r["id"] for r in c.query("d_alias_a", filter="id >= 0"))
        name = c.describe_collection("d_live")["collection_name"]
        hits = c.search("d_live", data=[rows(1, seed=33)[0]["vector"]], limit=1)
        c.alter_alias("d_alias_b", "d_live")
        switched = ids()
        c.drop_alias("d_live")
        c.drop_alias("d_live")
        try:
            c.query("d_live", filter="id >= 0")
            gone = "ok"
        except MilvusException as e:
            gone = e.code
        return (
            (described["alias"], described["collection_name"]),
            listed,
            first,
            written,
            name,
            hits[0][0]["id"],
            switched,
            gone,
        )

    s, l = both(sluice, lite, f)
    assert s == l
    assert s[0] == ("d_live", "d_alias_a") and s[1] == ["d_live"]
    assert s[2] == list(range(5)) and s[3] == list(range(5)) + [50]
    assert s[4] == "d_alias_a" and s[5] == 50
    assert s[6] == [100, 101, 102] and s[7] == 100


def test_alias_rules_follow_milvus_in_sluice(sluice):
    """Deliberate differences from milvus-lite, as Milvus answers: an alias the collection has
    already is no change; a collection with aliases is not dropped (nor through an alias);
    describe_collection lists the aliases; a missing alias is AliasNotFound (1600)."""
    for name in ["d_alias_r1", "d_alias_r2"]:
        fresh(sluice, name)
    sluice.create_alias("d_alias_r1", "d_ar")
    sluice.create_alias("d_alias_r1", "d_ar")
    assert sluice.describe_collection("d_alias_r1")["aliases"] == ["d_ar"]
    assert sluice.has_collection("d_ar")
    assert "d_ar" not in sluice.list_collections()
    for call, code in [
        (lambda: sluice.create_alias("d_alias_r2", "d_ar"), 1100),
        (lambda: sluice.create_alias("d_alias_r1", "d_alias_r2"), 1100),
        (lambda: sluice.create_alias("d_alias_r1", "9x"), 1100),
        (lambda: sluice.create_alias("d_nope", "d_ar2"), 100),
        (lambda: sluice.alter_alias("d_alias_r2", "d_nope_alias"), 1600),
        (lambda: sluice.describe_alias("d_nope_alias"), 1600),
        (lambda: sluice.drop_collection("d_ar"), 1100),
        (lambda: sluice.drop_collection("d_alias_r1"), 1100),
        (lambda: sluice.create_collection("d_ar", dimension=DIM), 1100),
    ]:
        with pytest.raises(MilvusException) as e:
            call()
        assert e.value.code == code, e.value
    assert "d_ar" in sluice.list_aliases()["aliases"]
    assert sluice.describe_alias("d_ar")["collection_name"] == "d_alias_r1"
    # Once its aliases are gone, the collection drops.
    sluice.drop_alias("d_ar")
    sluice.drop_collection("d_alias_r1")
    assert not sluice.has_collection("d_alias_r1")


def test_reads_of_a_missing_partition_are_an_error_in_sluice(sluice):
    """Deliberate difference: a search, query or get naming a partition the collection does not
    have fails with PartitionNotFound (200), as Milvus answers; milvus-lite answers nothing.
    Naming `_default` reads what was written there."""
    fresh(sluice, "d_part_reads")
    data = rows(6, seed=17)
    sluice.insert("d_part_reads", data)
    for call in [
        lambda: sluice.search("d_part_reads", data=[data[0]["vector"]], limit=3, partition_names=["p1"]),
        lambda: sluice.query("d_part_reads", filter="id >= 0", partition_names=["_default", "p1"]),
        lambda: sluice.get("d_part_reads", ids=[1], partition_names=["p1"]),
    ]:
        with pytest.raises(MilvusException) as e:
            call()
        assert e.value.code == 200, e.value
        assert "p1" in e.value.message
    hits = sluice.search(
        "d_part_reads", data=[data[0]["vector"]], limit=3, partition_names=["_default"]
    )
    assert hits[0][0]["id"] == 0
    got = sluice.query("d_part_reads", filter="id >= 0", partition_names=["_default"])
    assert sorted(r["id"] for r in got) == list(range(6))


def test_a_truncated_collection_is_empty_and_keeps_everything_else_like_milvus(sluice, lite):
    """truncate_collection: every row goes — sealed and growing, in every partition — while the
    schema, partitions, index, alias, properties and load state stay; rows written after it
    are read as usual. The same in Sluice and milvus-lite."""
    name = "d_truncate"

    def run(c):
        drop_if_exists(c, name)
        schema = c.create_schema(auto_id=False, enable_dynamic_field=True)
        schema.add_field("id", DataType.INT64, is_primary=True)
        schema.add_field("vector", DataType.FLOAT_VECTOR, dim=DIM)
        schema.add_field("tag", DataType.VARCHAR, max_length=8)
        index = c.prepare_index_params()
        index.add_index(field_name="vector", index_type="FLAT", metric_type="L2")
        c.create_collection(name, schema=schema, index_params=index)
        c.create_partition(name, "recent")
        c.create_alias(name, "d_truncate_alias")
        c.alter_collection_properties(name, properties={"collection.ttl.seconds": 3600})
        data = [dict(r, tag="old") for r in rows(30, seed=81)]
        c.insert(name, data[:20])
        c.flush(name)
        c.insert(name, data[20:25])
        c.insert(name, data[25:], partition_name="recent")
        before = c.describe_collection(name)
        c.truncate_collection("d_truncate_alias")
        out = {
            "count": c.query(name, filter="", output_fields=["count(*)"])[0]["count(*)"],
            "rows": c.query(name, filter="id >= 0", output_fields=["tag"]),
            "search": hit_ids(c.search(name, data=[data[0]["vector"]], limit=5)),
            "partitions": c.list_partitions(name),
            "indexes": c.list_indexes(name),
            "load": str(c.get_load_state(name)["state"]),
            "alias": c.describe_alias("d_truncate_alias")["collection_name"],
        }
        after = c.describe_collection(name)
        out["schema"] = after["fields"] == before["fields"]
        out["ttl"] = after["properties"].get("collection.ttl.seconds")
        fresh_rows = [dict(r, tag="new") for r in rows(6, seed=82, start=100)]
        c.insert(name, fresh_rows[:4])
        c.insert(name, fresh_rows[4:], partition_name="recent")
        c.flush(name)
        found = c.query(name, filter="id >= 0", output_fields=["tag"])
        out["after"] = sorted((r["id"], r["tag"]) for r in found)
        found = c.query(name, filter="id >= 0", output_fields=["tag"], partition_names=["recent"])
        out["recent"] = sorted(r["id"] for r in found)
        out["search_after"] = hit_ids(c.search(name, data=[fresh_rows[0]["vector"]], limit=3))
        c.drop_alias("d_truncate_alias")
        return out

    mine, theirs = run(sluice), run(lite)
    assert mine == theirs
    assert mine["count"] == 0 and mine["rows"] == [] and mine["search"] == [[]], mine
    assert mine["after"] == [(i, "new") for i in range(100, 106)], mine
    assert mine["recent"] == [104, 105] and mine["search_after"][0][0] == 100, mine
    with pytest.raises(MilvusException):
        sluice.truncate_collection("d_truncate_missing")
    # A released partition stays released under its new id.
    sluice.release_partitions(name, ["recent"])
    sluice.truncate_collection(name)
    with pytest.raises(MilvusException) as e:
        sluice.query(name, filter="id >= 0", partition_names=["recent"])
    assert e.value.code == 201, e.value
    assert sluice.query(name, filter="id >= 0") == []
    sluice.load_partitions(name, ["recent"])
    assert sluice.query(name, filter="id >= 0", partition_names=["recent"]) == []


def test_collections_are_renamed_like_milvus(sluice, lite):
    """A renamed collection keeps its rows, partitions, index and aliases and takes writes and
    reads under its new name at once; the old name is free again. Renaming to a name in use, or
    a collection that does not exist, is an error that changes nothing."""

    def f(c):
        for n in ["d_rename", "d_renamed", "d_rename_taken"]:
            for a in c.list_aliases(n)["aliases"] if c.has_collection(n) else []:
                c.drop_alias(a)
            drop_if_exists(c, n)
        fresh(c, "d_rename")
        fresh(c, "d_rename_taken")
        data = rows(6, seed=23)
        c.insert("d_rename", data)
        c.create_partition("d_rename", "p1")
        c.insert("d_rename", rows(8, seed=29)[6:], partition_name="p1")
        c.create_alias("d_rename", "d_rename_alias")
        c.rename_collection("d_rename", "d_renamed")
        out = {
            "names": (c.has_collection("d_rename"), c.has_collection("d_renamed")),
            "described": c.describe_collection("d_renamed")["collection_name"],
            "listed": sorted(n for n in c.list_collections() if n.startswith("d_rename")),
            "partitions": sorted(c.list_partitions("d_renamed")),
            "alias": c.describe_alias("d_rename_alias")["collection_name"],
        }
        c.insert("d_renamed", rows(10, seed=31)[8:])
        # milvus-lite releases a renamed collection (Sluice keeps it loaded): load it for both.
        c.load_collection("d_renamed")
        got = c.query("d_renamed", filter="id >= 0", output_fields=["id"])
        out["ids"] = sorted(r["id"] for r in got)
        out["via alias"] = len(c.query("d_rename_alias", filter="id >= 0"))
        out["in p1"] = sorted(
            r["id"] for r in c.query("d_renamed", filter="id >= 0", partition_names=["p1"])
        )
        out["nearest"] = hit_ids(c.search("d_renamed", data=[data[3]["vector"]], limit=1))
        c.delete("d_renamed", ids=[0])
        out["count"] = c.query("d_renamed", filter="", output_fields=["count(*)"])[0]["count(*)"]
        errors = []
        for old, new in [("d_renamed", "d_rename_taken"), ("d_renamed", "d_rename_alias"),
                         ("d_missing", "d_other")]:
            try:
                c.rename_collection(old, new)
                errors.append("renamed")
            except MilvusException:
                errors.append("error")
        out["errors"] = errors
        # The old name is free again; the renamed collection is as it was.
        fresh(c, "d_rename")
        out["after"] = (len(c.query("d_rename", filter="id >= 0")),
                        len(c.query("d_renamed", filter="id >= 0")))
        c.drop_alias("d_rename_alias")
        return out

    s, l = both(sluice, lite, f)
    assert s == l, (s, l)
    assert s["names"] == (False, True) and s["ids"] == list(range(10)) and s["count"] == 9
    assert s["errors"] == ["error"] * 3 and s["after"] == (0, 9)
    # Sluice keeps a renamed collection loaded: reads under the new name answer at once.
    drop_if_exists(sluice, "d_rename2")
    for old, new in [("d_renamed", "d_rename2"), ("d_rename2", "d_renamed")]:
        sluice.rename_collection(old, new)
        assert sluice.query(new, filter="", output_fields=["count(*)"])[0]["count(*)"] == 9
        assert hit_ids(sluice.search(new, data=[rows(6, seed=23)[3]["vector"]], limit=1)) == [[3]]
        assert not sluice.has_collection(old)


def test_auto_id_collections_get_fresh_keys(sluice, lite):
    def f(c):
        fresh(c, "d_auto", auto_id=True)
        r = c.insert("d_auto", [{"vector": [0.1 * i] * DIM, "k": i} for i in range(1, 6)])
        ids = list(r["ids"])
        got = c.query("d_auto", filter="k >= 1", output_fields=["k"])
        return r["insert_count"], len(set(ids)), sorted(x["k"] for x in got), sorted(x["id"] for x in got) == sorted(ids)

    s, l = both(sluice, lite, f)
    assert s == l == (5, 5, [1, 2, 3, 4, 5], True)


def test_the_default_database_is_listed_and_described_like_milvus(sluice, lite):
    def f(c):
        described = c.describe_database("default")
        c.use_database("default")
        try:
            c.use_database("d_no_such_db")
            missing = "ok"
        except MilvusException:
            missing = "refused"
        return c.list_databases(), described["name"], missing

    s, l = both(sluice, lite, f)
    assert s == l == (["default"], "default", "refused")
    with pytest.raises(MilvusException) as e:
        sluice.describe_database("d_no_such_db")
    assert e.value.code == 800 and "d_no_such_db" in e.value.message


def test_a_client_bound_to_a_missing_database_creates_nothing(sluice, sluice_server):
    """A client bound to a database that does not exist (`db_name=`) gets DatabaseNotFound and
    must not create or write anything in `default` as if it were that database."""
    import grpc

    drop_if_exists(sluice, "d_other_db")
    try:
        other = MilvusClient(uri=f"http://{sluice_server.milvus}", db_name="tenant_a")
        other.create_collection("d_other_db", dimension=DIM)
        made = "created"
    except (MilvusException, grpc.RpcError) as e:
        made = str(e)
    assert "database not found[database=tenant_a]" in made, made
    assert not sluice.has_collection("d_other_db")


DATABASES = ("d_tenant_a", "d_tenant_b", "d_props", "d_quota")
# The collections and aliases of the database tests (`default` holds other tests' too).
OURS = ("d_same", "d_nick", "d_moved")


def drop_databases(c):
    """Drops the test's databases with everything in them; the client is left in `default`."""
    for db in DATABASES:
        if db in c.list_databases():
            c.use_database(db)
            for alias in c.list_aliases()["aliases"]:
                c.drop_alias(alias)
            for name in c.list_collections():
                c.drop_collection(name)
            c.use_database("default")
            c.drop_database(db)
    c.use_database("default")


def test_databases_hold_their_own_collections_like_milvus(sluice, lite):
    """Three collections of one name in three databases, each with its own rows; aliases stay
    in their database; a database with collections is not dropped — Sluice and milvus-lite
    answer alike. Then (Sluice only: milvus-lite loses a collection renamed into another
    database) a rename moves a collection to another database, rows and all."""

    def f(c):
        drop_databases(c)
        try:
            c.create_database("d_tenant_a")
            c.create_database("d_tenant_b")
            try:
                c.create_database("d_tenant_a")
                again = "created"
            except MilvusException:
                again = "refused"
            counts, listed = [], []
            for db, n in (("default", 3), ("d_tenant_a", 5), ("d_tenant_b", 7)):
                c.use_database(db)
                fresh(c, "d_same")
                c.insert("d_same", rows(n, seed=n))
            for db in ("default", "d_tenant_a", "d_tenant_b"):
                c.use_database(db)
                got = c.query("d_same", filter="id >= 0", output_fields=["id"])
                counts.append(len(got))
                listed.append(sorted(n for n in c.list_collections() if n in OURS))
            c.use_database("d_tenant_a")
            c.create_alias("d_same", "d_nick")
            aliases = c.list_aliases()["aliases"]
            by_alias = len(c.query("d_nick", filter="id >= 0", output_fields=["id"]))
            described = c.describe_collection("d_same")["collection_name"]
            c.use_database("d_tenant_b")
            elsewhere = c.has_collection("d_nick"), c.list_aliases()["aliases"]
            try:
                c.drop_database("d_tenant_b")
                dropped = "dropped"
            except MilvusException:
                dropped = "refused"
            c.use_database("default")
            c.drop_collection("d_same")
            return again, counts, listed, aliases, by_alias, described, elsewhere, dropped
        finally:
            if c is lite:
                drop_databases(c)
            c.use_database("default")

    s, l = both(sluice, lite, f)
    assert s == l, (s, l)
    assert s == (
        "refused",
        [3, 5, 7],
        [["d_same"]] * 3,
        ["d_nick"],
        5,
        "d_same",
        (False, []),
        "refused",
    ), s
    try:
        sluice.use_database("d_tenant_b")
        with pytest.raises(MilvusException) as e:
            sluice.rename_collection("d_same", "d_moved", target_db="d_nowhere")
        assert e.value.code == 800, e.value
        sluice.rename_collection("d_same", "d_moved", target_db="d_tenant_a")
        assert sluice.list_collections() == []
        sluice.drop_database("d_tenant_b")
        assert sluice.list_databases() == ["default", "d_tenant_a"]
        sluice.use_database("d_tenant_a")
        assert sorted(sluice.list_collections()) == ["d_moved", "d_same"]
        assert len(sluice.query("d_moved", filter="id >= 0", output_fields=["id"])) == 7
    finally:
        drop_databases(sluice)
    assert sluice.list_databases() == ["default"]


def test_databases_are_described_altered_and_named_by_header_or_request(sluice, sluice_server):
    """Sluice-only: a database's properties are kept, altered and described; a client bound by
    `db_name=` and a call naming `db_name` in its request both reach the database; a dot in a
    name cannot reach another database's collection."""
    import grpc
    from pymilvus.grpc_gen import milvus_pb2, milvus_pb2_grpc

    drop_databases(sluice)
    try:
        sluice.create_database("d_tenant_a", properties={"owner": "team-a"})
        described = sluice.describe_database("d_tenant_a")
        assert described["name"] == "d_tenant_a" and described["owner"] == "team-a", described
        sluice.alter_database_properties("d_tenant_a", {"tier": "gold"})
        sluice.drop_database_properties("d_tenant_a", ["owner"])
        described = sluice.describe_database("d_tenant_a")
        assert described.get("tier") == "gold" and "owner" not in described, described
        with pytest.raises(MilvusException):
            sluice.drop_database("default")

        tenant = MilvusClient(uri=f"http://{sluice_server.milvus}", db_name="d_tenant_a")
        tenant.create_collection("d_secret", dimension=DIM)
        tenant.insert("d_secret", rows(4))
        assert not sluice.has_collection("d_secret")
        with pytest.raises(MilvusException) as e:
            sluice.query("d_tenant_a.d_secret", filter="id >= 0")
        assert "d_tenant_a.d_secret" in e.value.message

        # The request's db_name, with no header: what SDKs other than pymilvus send.
        stub = milvus_pb2_grpc.MilvusServiceStub(grpc.insecure_channel(sluice_server.milvus))
        shown = stub.ShowCollections(milvus_pb2.ShowCollectionsRequest(db_name="d_tenant_a"))
        assert list(shown.collection_names) == ["d_secret"], shown
        has = stub.HasCollection(
            milvus_pb2.HasCollectionRequest(db_name="d_tenant_a", collection_name="d_secret")
        )
        assert has.value, has
        described = stub.DescribeCollection(
            milvus_pb2.DescribeCollectionRequest(db_name="d_tenant_a", collection_name="d_secret")
        )
        assert (described.db_name, described.collection_name) == ("d_tenant_a", "d_secret")
        assert described.schema.name == "d_secret", described.schema
        missing = stub.ShowCollections(milvus_pb2.ShowCollectionsRequest(db_name="d_nowhere"))
        assert missing.status.code == 800, missing
        listed = stub.ListDatabases(milvus_pb2.ListDatabasesRequest())
        assert list(listed.db_names) == ["default", "d_tenant_a"], listed
        assert listed.db_ids[0] == 1 and listed.created_timestamp[1] > 0, listed
    finally:
        drop_databases(sluice)


def test_database_properties_deny_writes_and_reads_and_cap_collections(sluice, sluice_server, pb):
    """Sluice-only (milvus-lite keeps no database properties): `database.force.deny.writing`
    and `database.force.deny.reading` refuse the database's writes and reads with Milvus's
    quota code 9 and change nothing, other databases go on; `database.max.collections` refuses
    one collection more with code 102; `database.replica.number` is the replica count of a load
    naming none."""
    import grpc

    drop_databases(sluice)
    try:
        sluice.create_database("d_props", properties={"database.max.collections": "2"})
        tenant = MilvusClient(uri=f"http://{sluice_server.milvus}", db_name="d_props")
        tenant.create_collection("d_one", dimension=DIM)
        tenant.insert("d_one", rows(4))
        drop_if_exists(sluice, "d_free")
        sluice.create_collection("d_free", dimension=DIM)

        sluice.alter_database_properties("d_props", {"database.force.deny.writing": "true"})
        refused = [
            lambda: tenant.insert("d_one", rows(2, start=100)),
            lambda: tenant.upsert("d_one", rows(1)),
            lambda: tenant.delete("d_one", ids=[0]),
        ]
        for call in refused:
            with pytest.raises(MilvusException) as e:
                call()
            assert e.value.code == 9 and "database.force.deny.writing" in e.value.message, e.value
        sluice.insert("d_free", rows(3))  # another database writes on
        got = tenant.query("d_one", filter="id >= 0", output_fields=["id"],
                           consistency_level="Strong")
        assert sorted(r["id"] for r in got) == [0, 1, 2, 3], got

        sluice.alter_database_properties("d_props", {"database.force.deny.reading": "true"})
        sluice.drop_database_properties("d_props", ["database.force.deny.writing"])
        tenant.insert("d_one", rows(1, start=100))
        for call in [
            lambda: tenant.query("d_one", filter="id >= 0"),
            lambda: tenant.search("d_one", [[0.5] * DIM], limit=3),
            lambda: tenant.get("d_one", ids=[0]),
        ]:
            with pytest.raises(MilvusException) as e:
                call()
            assert e.value.code == 9 and "database.force.deny.reading" in e.value.message, e.value
        sluice.drop_database_properties("d_props", ["database.force.deny.reading"])
        got = tenant.query("d_one", filter="id >= 0", output_fields=["id"],
                           consistency_level="Strong")
        assert sorted(r["id"] for r in got) == [0, 1, 2, 3, 100], got

        with pytest.raises(MilvusException):
            sluice.alter_database_properties("d_props", {"database.force.deny.reading": "maybe"})
        tenant.create_collection("d_two", dimension=DIM)
        with pytest.raises(MilvusException) as e:
            tenant.create_collection("d_three", dimension=DIM)
        assert e.value.code == 102, e.value
        assert sorted(tenant.list_collections()) == ["d_one", "d_two"]

        # With no query worker a second replica waits unplaced: the catalog shows the count.
        coord = pb.coord_grpc.CoordinatorStub(grpc.insecure_channel(sluice_server.address))

        def replicas():
            described = pb.coord.DescribeCollectionRequest(name="d_props.d_two")
            return coord.DescribeCollection(described).replicas

        tenant.release_collection("d_two")
        sluice.alter_database_properties("d_props", {"database.replica.number": "2"})
        tenant.load_collection("d_two")
        assert replicas() == 2
        tenant.load_collection("d_two", replica_number=1)
        assert replicas() == 1
        # The collection's own `collection.replica.number` comes before the database's.
        tenant.alter_collection_properties("d_two", {"collection.replica.number": "3"})
        tenant.load_collection("d_two")
        assert replicas() == 3
        tenant.drop_collection_properties("d_two", ["collection.replica.number"])
        tenant.load_collection("d_two")
        assert replicas() == 2
        for name in ["d_one", "d_two"]:
            tenant.drop_collection(name)
    finally:
        drop_if_exists(sluice, "d_free")
        drop_databases(sluice)


def test_older_index_and_collection_calls_answer_as_describe_does(sluice, sluice_server):
    """The calls older SDKs (Java, Node, Go v1) and tools make — GetIndexState,
    GetIndexBuildProgress, GetIndexStatistics, BatchDescribeCollection, GetComponentStates —
    answer what DescribeIndex / DescribeCollection / CheckHealth say."""
    import grpc
    from pymilvus.grpc_gen import common_pb2, milvus_pb2, milvus_pb2_grpc

    fresh(sluice, "d_older")
    fresh(sluice, "d_older_too")
    sluice.insert("d_older", rows(30))
    sluice.flush("d_older")
    stub = milvus_pb2_grpc.MilvusServiceStub(grpc.insecure_channel(sluice_server.milvus))
    state = stub.GetIndexState(
        milvus_pb2.GetIndexStateRequest(collection_name="d_older", field_name="vector")
    )
    assert state.status.code == 0 and state.state == common_pb2.IndexState.Finished, state
    # The flushed rows count once their segment is committed to storage.
    deadline = time.monotonic() + 30
    while True:
        progress = stub.GetIndexBuildProgress(
            milvus_pb2.GetIndexBuildProgressRequest(collection_name="d_older", field_name="vector")
        )
        if progress.total_rows == 30 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert (progress.indexed_rows, progress.total_rows) == (30, 30), progress
    described = sluice.describe_index("d_older", "vector")
    assert described["indexed_rows"] == 30 and described["total_rows"] == 30, described
    stats = stub.GetIndexStatistics(milvus_pb2.GetIndexStatisticsRequest(collection_name="d_older"))
    assert [d.index_name for d in stats.index_descriptions] == [described["index_name"]], stats
    missing = stub.GetIndexState(milvus_pb2.GetIndexStateRequest(collection_name="d_nowhere"))
    assert missing.status.code == 100, missing

    too_id = sluice.describe_collection("d_older_too")["collection_id"]
    batch = stub.BatchDescribeCollection(
        milvus_pb2.BatchDescribeCollectionRequest(
            collection_name=["d_older"], collectionID=[too_id]
        )
    )
    assert batch.status.code == 0, batch.status
    assert [r.collection_name for r in batch.responses] == ["d_older", "d_older_too"]
    assert batch.responses[1].collectionID == too_id
    assert [f.name for f in batch.responses[0].schema.fields][:2] == ["id", "vector"]
    bad = stub.BatchDescribeCollection(
        milvus_pb2.BatchDescribeCollectionRequest(collection_name=["d_older", "d_nowhere"])
    )
    assert bad.status.code == 100 and not bad.responses, bad

    states = stub.GetComponentStates(milvus_pb2.GetComponentStatesRequest())
    assert states.state.state_code == common_pb2.StateCode.Healthy, states
    assert states.state.role == "Proxy"
    sluice.drop_collection("d_older")
    sluice.drop_collection("d_older_too")


def test_collection_rate_limits_refuse_calls_beyond_them_and_pymilvus_retries(sluice):
    """Sluice-only (milvus-lite has no rate limits): `collection.queryRate.max.qps`,
    `collection.searchRate.max.vps` and `collection.insertRate.max.mb` refuse calls beyond
    them with Milvus's retriable code 8 — nothing written — and pymilvus, retrying, gets
    through; a value that is no number is refused; dropping the property lifts the limit."""
    fresh(sluice, "d_rated")
    sluice.insert("d_rated", rows(10))
    sluice.alter_collection_properties(
        "d_rated",
        {
            "collection.queryRate.max.qps": "2",
            "collection.searchRate.max.vps": "4",
            "collection.insertRate.max.mb": "0.001",
        },
    )
    described = sluice.describe_collection("d_rated")["properties"]
    assert described["collection.queryRate.max.qps"] == "2", described

    def refused_now(call):
        with pytest.raises(MilvusException) as e:
            call()
        assert e.value.code == 8 and "rate limit exceeded" in e.value.message, e.value

    # The bucket holds a second's worth: two queries pass at once, the third waits for it.
    for _ in range(2):
        sluice.query("d_rated", filter="id >= 0", retry_on_rate_limit=False)
    refused_now(lambda: sluice.query("d_rated", filter="id >= 0", retry_on_rate_limit=False))
    # pymilvus backs off and retries a rate-limited call until it passes.
    assert len(sluice.query("d_rated", filter="id >= 0", consistency_level="Strong")) == 10
    # Four query vectors a second: one search of four passes, the next does not.
    sluice.search("d_rated", [[0.5] * DIM] * 4, limit=2, retry_on_rate_limit=False)
    refused_now(lambda: sluice.search("d_rated", [[0.5] * DIM], limit=2, retry_on_rate_limit=False))
    # About 1 KB a second: one insert of 50 rows (more than that) passes on a full bucket
    # and leaves it in debt; the next is refused and not written.
    sluice.insert("d_rated", rows(50, seed=3, start=100), retry_on_rate_limit=False)
    refused_now(
        lambda: sluice.insert("d_rated", rows(1, start=500), retry_on_rate_limit=False)
    )
    with pytest.raises(MilvusException):
        sluice.alter_collection_properties("d_rated", {"collection.queryRate.max.qps": "fast"})
    with pytest.raises(MilvusException):
        sluice.alter_collection_properties("d_rated", {"collection.queryRate.min.qps": "1"})
    sluice.drop_collection_properties(
        "d_rated",
        ["collection.queryRate.max.qps", "collection.insertRate.max.mb"],
    )
    for _ in range(5):
        sluice.query("d_rated", filter="id >= 0", retry_on_rate_limit=False)
    got = sluice.query("d_rated", filter="id >= 0", output_fields=["id"], consistency_level="Strong")
    assert sorted(r["id"] for r in got) == list(range(10)) + list(range(100, 150))
    sluice.drop_collection("d_rated")


def test_disk_quotas_refuse_inserts_once_flushed_segments_hold_more(sluice, sluice_server):
    """Sluice-only: `collection.diskProtection.diskQuota.mb` and the database's
    `database.diskQuota.mb` refuse inserts and upserts (Milvus's quota code 9, nothing written)
    once the flushed segment files hold more MB — counted at most 2 s ago — while deletes and
    reads go on; raising the quota lets writes in again."""
    drop_databases(sluice)

    def flushed(c, name, rows_expected):
        c.flush(name)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if sum(s.num_rows for s in c.list_persistent_segments(name)) >= rows_expected:
                break
            time.sleep(0.2)
        time.sleep(2.2)  # older than the front's count

    def refused(call):
        with pytest.raises(MilvusException) as e:
            call()
        assert e.value.code == 9 and "disk quota exceeded" in e.value.message, e.value

    try:
        fresh(sluice, "d_quota_coll")
        sluice.alter_collection_properties(
            "d_quota_coll", {"collection.diskProtection.diskQuota.mb": "0.0001"}
        )
        sluice.insert("d_quota_coll", rows(20))
        flushed(sluice, "d_quota_coll", 20)
        refused(lambda: sluice.insert("d_quota_coll", rows(1, start=100)))
        refused(lambda: sluice.upsert("d_quota_coll", rows(1)))
        sluice.delete("d_quota_coll", ids=[0])
        got = sluice.query("d_quota_coll", filter="id >= 0", consistency_level="Strong")
        assert len(got) == 19
        sluice.alter_collection_properties(
            "d_quota_coll", {"collection.diskProtection.diskQuota.mb": "100"}
        )
        sluice.insert("d_quota_coll", rows(1, start=100))
        sluice.drop_collection("d_quota_coll")

        sluice.create_database("d_quota", properties={"database.diskQuota.mb": "0.0001"})
        tenant = MilvusClient(uri=f"http://{sluice_server.milvus}", db_name="d_quota")
        tenant.create_collection("d_first", dimension=DIM)
        tenant.insert("d_first", rows(20))
        flushed(tenant, "d_first", 20)
        # Another collection of the database is refused too: the database's files count.
        tenant.create_collection("d_second", dimension=DIM)
        refused(lambda: tenant.insert("d_second", rows(1)))
        sluice.alter_database_properties("d_quota", {"database.diskQuota.mb": "-1"})
        tenant.insert("d_second", rows(1))
        with pytest.raises(MilvusException):
            sluice.alter_database_properties("d_quota", {"database.diskQuota.mb": "lots"})
    finally:
        drop_if_exists(sluice, "d_quota_coll")
        drop_databases(sluice)


def decay_collection(c, name, metric):
    """`name` with an int64 `ts`, a double `price`, an int8 `rank` and a nullable `maybe`;
    40 rows, searched by `metric`."""
    drop_if_exists(c, name)
    schema = MilvusClient.create_schema(auto_id=False)
    schema.add_field("id", DataType.INT64, is_primary=True)
    schema.add_field("vector", DataType.FLOAT_VECTOR, dim=DIM)
    schema.add_field("ts", DataType.INT64)
    schema.add_field("price", DataType.DOUBLE)
    schema.add_field("rank", DataType.INT8)
    schema.add_field("maybe", DataType.DOUBLE, nullable=True)
    index = c.prepare_index_params()
    index.add_index(field_name="vector", index_type="FLAT", metric_type=metric)
    c.create_collection(name, schema=schema, index_params=index)
    rnd = random.Random(77)
    c.insert(
        name,
        [
            {
                "id": i,
                "vector": [rnd.random() for _ in range(DIM)],
                "ts": 1000 + 10 * i,
                "price": rnd.uniform(0, 50),
                "rank": rnd.randint(-5, 5),
                "maybe": None,
            }
            for i in range(40)
        ],
    )


def decay_ranker(field, function, **params):
    from pymilvus import Function, FunctionType

    return Function(
        name="decay",
        input_field_names=[field],
        function_type=FunctionType.RERANK,
        params={"reranker": "decay", "function": function, **params},
    )


def test_decay_rankers_rerank_like_milvus(sluice, lite):
    """Milvus 2.6's decay rankers (gauss, exp, linear on int64, double and int8 fields, after
    COSINE, IP and L2 searches): with every row a candidate, Sluice and milvus-lite rank and
    score alike."""
    cases = [
        ("COSINE", "ts", "gauss", {"origin": 1200, "scale": 50, "offset": 10, "decay": 0.5}),
        ("IP", "price", "exp", {"origin": 25.5, "scale": 5, "decay": 0.3}),
        ("L2", "rank", "linear", {"origin": 0, "scale": 3, "offset": 1, "decay": 0.2}),
        ("L2", "ts", "gauss", {"origin": 1000, "scale": 100}),
    ]

    def f(c):
        out = []
        for metric, field, function, params in cases:
            decay_collection(c, "d_decay", metric)
            hits = c.search(
                "d_decay",
                data=[[0.5] * DIM, [0.1] * DIM],
                limit=40,
                ranker=decay_ranker(field, function, **params),
                output_fields=[field],
            )
            out.append(
                [[(h["id"], round(h["distance"], 4), h["entity"][field]) for h in q] for q in hits]
            )
        return out

    s, l = both(sluice, lite, f)
    assert s == l, (s, l)
    assert len(s) == len(cases) and all(len(q) == 40 for case in s for q in case), s


def reranked_collection(c, name):
    """`name` with vectors `a` (COSINE) and `b` (L2) and `t` = 10 × id, 30 rows; the two
    searches of a hybrid search over every row."""
    from pymilvus import AnnSearchRequest

    two_vector_collection(c, name, metrics=("COSINE", "L2"), rows=30, seed=5, t=lambda i: 10 * i)
    return [
        AnnSearchRequest(data=[[0.5] * DIM], anns_field="a", param={}, limit=30),
        AnnSearchRequest(data=[[0.2] * DIM], anns_field="b", param={}, limit=30),
    ]


def test_rankers_as_functions_fuse_like_their_classes_and_milvus(sluice, lite):
    """Milvus 2.6's rankers written as functions (`Function(..., params={"reranker": "rrf"
    or "weighted", ...})`) fuse a hybrid search as RRFRanker and WeightedRanker do — Sluice
    and milvus-lite alike; a bad one is refused."""
    from pymilvus import Function, FunctionType, RRFRanker, WeightedRanker

    def function(**params):
        return Function(
            name="fuse", input_field_names=[], function_type=FunctionType.RERANK, params=params
        )

    pairs = [
        (function(reranker="rrf", k=30), RRFRanker(30)),
        (function(reranker="rrf"), RRFRanker()),
        # As a function, norm_score is off unless asked for; WeightedRanker's is on.
        (
            function(reranker="weighted", weights=[0.7, 0.3]),
            WeightedRanker(0.7, 0.3, norm_score=False),
        ),
        (
            function(reranker="weighted", weights=[0.7, 0.3], norm_score=True),
            WeightedRanker(0.7, 0.3),
        ),
        (
            function(reranker="weighted", weights=[0.2, 0.9], norm_score=False),
            WeightedRanker(0.2, 0.9, norm_score=False),
        ),
    ]

    def f(c):
        searches = reranked_collection(c, "d_fuse_functions")
        out = []
        for as_function, as_class in pairs:
            for ranker in (as_function, as_class):
                hits = c.hybrid_search("d_fuse_functions", searches, ranker=ranker, limit=10)[0]
                out.append([(h["id"], round(h["distance"], 4)) for h in hits])
        return out

    s, l = both(sluice, lite, f)
    assert s == l, (s, l)
    for i in range(0, len(s), 2):
        assert s[i] == s[i + 1] and len(s[i]) == 10, (i, s[i], s[i + 1])
    searches = reranked_collection(sluice, "d_fuse_functions")
    with pytest.raises(MilvusException) as e:
        sluice.hybrid_search(
            "d_fuse_functions", searches, ranker=function(reranker="weighted", weights=[1]), limit=3
        )
    assert "one weight per search" in e.value.message


def test_decay_rankers_rerank_hybrid_searches_like_milvus(sluice, lite):
    """A decay ranker in a hybrid search: each hit's best score over the searches (L2 made
    larger-is-nearer) times its decay — Sluice and milvus-lite alike, with every row a
    candidate; then a page of it (offset) is that ranking's slice."""

    def f(c):
        searches = reranked_collection(c, "d_decay_hybrid")
        ranker = decay_ranker("t", "exp", origin=150, scale=40, offset=5, decay=0.6)
        pages = []
        for limit, offset in ((30, 0), (5, 3)):
            hits = c.hybrid_search(
                "d_decay_hybrid",
                searches,
                ranker=ranker,
                limit=limit,
                offset=offset,
                output_fields=["t"],
            )[0]
            pages.append([(h["id"], round(h["distance"], 4)) for h in hits])
        return pages

    s, l = both(sluice, lite, f)
    assert s == l, (s, l)
    assert len(s[0]) == 30 and s[1] == s[0][3:8], s


def test_decay_rankers_rerank_the_nearest_limit_plus_offset(sluice):
    """Sluice-only (milvus-lite reranks per segment): a decay ranker reorders the search's
    nearest limit + offset hits, as Milvus's proxy does after merging shards, then pages; bad
    rankers are refused with the reason."""
    decay_collection(sluice, "d_decay", "L2")
    query = [0.3] * DIM
    plain = sluice.search("d_decay", data=[query], limit=7, output_fields=["ts"])[0]
    origin, scale, decay = 1200, 80, 0.4

    def factor(x):
        d = max(0.0, abs(x - origin)) / scale
        return decay ** (d * d)

    expected = sorted(
        (
            ((1 - 2 * math.atan(h["distance"]) / math.pi) * factor(h["entity"]["ts"]), h["id"])
            for h in plain
        ),
        key=lambda t: -t[0],
    )[2:7]
    got = sluice.search(
        "d_decay",
        data=[query],
        limit=5,
        offset=2,
        ranker=decay_ranker("ts", "gauss", origin=origin, scale=scale, decay=decay),
    )[0]
    assert [h["id"] for h in got] == [i for _, i in expected], (got, expected)
    for h, (score, _) in zip(got, expected):
        assert abs(h["distance"] - score) < 1e-5, (h, score)
    for field, params, why in [
        ("maybe", {"origin": 1, "scale": 1}, "nullable"),
        ("vector", {"origin": 1, "scale": 1}, "numeric field"),
        ("ts", {"origin": 1, "scale": 0}, "scale must be > 0"),
        ("ts", {"scale": 1}, "needs an origin"),
    ]:
        with pytest.raises(MilvusException) as e:
            sluice.search(
                "d_decay", data=[query], limit=3, ranker=decay_ranker(field, "exp", **params)
            )
        assert why in e.value.message, (why, e.value.message)


def test_int8_vectors_are_searched_and_read_back(sluice):
    """INT8_VECTOR fields (one signed byte a dimension; milvus-lite has none, so the answers
    are checked against distances computed here) by L2, IP and COSINE: inserted from numpy
    int8 arrays, searched with int8 query vectors (every row, a filter, an offset), read back
    as the same bytes also once flushed, and described."""
    import numpy as np

    rng = np.random.default_rng(5)
    dim = 16
    data = [
        {"id": i, "iv": rng.integers(-128, 128, dim, dtype=np.int8), "k": i % 3}
        for i in range(50)
    ]
    queries = [rng.integers(-128, 128, dim, dtype=np.int8) for _ in range(2)]

    def l2(a, b):
        d = a.astype(np.float64) - b.astype(np.float64)
        return float(d @ d)

    def ip(a, b):
        return float(a.astype(np.float64) @ b.astype(np.float64))

    def cosine(a, b):
        a, b = a.astype(np.float64), b.astype(np.float64)
        return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))

    s = MilvusClient.create_schema(auto_id=False)
    s.add_field("id", DataType.INT64, is_primary=True)
    s.add_field("iv", DataType.INT8_VECTOR, dim=dim)
    s.add_field("k", DataType.INT64)

    def close(got, expected):
        return len(got) == len(expected) and all(
            abs(g - e) <= 1e-4 * max(1.0, abs(e)) for g, e in zip(got, expected)
        )

    for metric, distance, nearest_first in (
        ("L2", l2, False),
        ("IP", ip, True),
        ("COSINE", cosine, True),
    ):
        drop_if_exists(sluice, "d_int8")
        index = sluice.prepare_index_params()
        index.add_index(field_name="iv", index_type="HNSW", metric_type=metric,
                        params={"M": 16, "efConstruction": 64})
        sluice.create_collection("d_int8", schema=s, index_params=index)
        sluice.insert("d_int8", data)
        found = sluice.search("d_int8", data=queries, limit=50)
        for q, hits in zip(queries, found):
            expected = {r["id"]: distance(q, r["iv"]) for r in data}
            assert sorted(h["id"] for h in hits) == list(range(50)), metric
            for h in hits:
                e = expected[h["id"]]
                assert abs(h["distance"] - e) <= 1e-4 * max(1.0, abs(e)), (metric, h, e)
            ordered = sorted(expected.values(), reverse=nearest_first)
            assert close([h["distance"] for h in hits], ordered), metric
        q = queries[0]
        everything = sorted((distance(q, r["iv"]) for r in data), reverse=nearest_first)
        near = sorted((distance(q, r["iv"]) for r in data if r["k"] == 1), reverse=nearest_first)
        filtered = sluice.search("d_int8", data=[q], limit=5, filter="k == 1")[0]
        assert close([h["distance"] for h in filtered], near[:5]), metric
        paged = sluice.search("d_int8", data=[q], limit=4, offset=3)[0]
        assert close([h["distance"] for h in paged], everything[3:7]), metric
        field = sluice.describe_collection("d_int8")["fields"][1]
        assert field["type"] == DataType.INT8_VECTOR and field["params"]["dim"] == dim
    for flushed in (False, True):
        if flushed:
            sluice.flush("d_int8")
        got = sluice.query("d_int8", filter="id in [3, 7]", output_fields=["iv"],
                           consistency_level="Strong")
        back = {r["id"]: np.frombuffer(bytes(r["iv"][0]), dtype=np.int8) for r in got}
        assert sorted(back) == [3, 7], got
        for i in (3, 7):
            assert (back[i] == data[i]["iv"]).all(), (flushed, back[i], data[i]["iv"])
    with pytest.raises(MilvusException):
        sluice.search("d_int8", data=[np.zeros(dim + 1, dtype=np.int8)], limit=3)
    drop_if_exists(sluice, "d_int8")


def test_binary_vectors_are_searched_by_hamming_and_jaccard(sluice):
    """BINARY_VECTOR fields (bytes, 8 bits each; milvus-lite has none, so the answers are
    checked against distances computed here) with BIN_FLAT and BIN_IVF_FLAT indexes by
    HAMMING and BIN_FLAT by JACCARD: inserted, searched (every row, a filter, an offset, a
    radius), read back and described; other binary metrics and a dim that is not whole bytes
    are refused."""
    rnd = random.Random(11)
    bits = 64
    data = [
        {"id": i, "bv": bytes(rnd.getrandbits(8) for _ in range(bits // 8)), "k": i % 3}
        for i in range(50)
    ]
    queries = [bytes(rnd.getrandbits(8) for _ in range(bits // 8)) for _ in range(2)]

    def hamming(a, b):
        return bin(int.from_bytes(a, "big") ^ int.from_bytes(b, "big")).count("1")

    def jaccard(a, b):
        x, y = int.from_bytes(a, "big"), int.from_bytes(b, "big")
        either = bin(x | y).count("1")
        return 1 - bin(x & y).count("1") / either if either else 0.0

    def schema(dim=bits):
        s = MilvusClient.create_schema(auto_id=False)
        s.add_field("id", DataType.INT64, is_primary=True)
        s.add_field("bv", DataType.BINARY_VECTOR, dim=dim)
        s.add_field("k", DataType.INT64)
        return s

    def same(got, expected):
        return len(got) == len(expected) and all(abs(g - e) < 1e-6 for g, e in zip(got, expected))

    for index_type, params, metric, distance in (
        ("BIN_FLAT", {}, "HAMMING", hamming),
        ("BIN_IVF_FLAT", {"nlist": 8}, "HAMMING", hamming),
        ("BIN_FLAT", {}, "JACCARD", jaccard),
    ):
        case = (index_type, metric)
        drop_if_exists(sluice, "d_binary")
        index = sluice.prepare_index_params()
        index.add_index(field_name="bv", index_type=index_type, metric_type=metric, params=params)
        sluice.create_collection("d_binary", schema=schema(), index_params=index)
        sluice.insert("d_binary", data)
        found = sluice.search("d_binary", data=queries, limit=50)
        for q, hits in zip(queries, found):
            expected = {r["id"]: distance(q, r["bv"]) for r in data}
            assert sorted(h["id"] for h in hits) == list(range(50)), case
            for h in hits:
                assert abs(h["distance"] - expected[h["id"]]) < 1e-6, (case, h, expected[h["id"]])
            assert same([h["distance"] for h in hits], sorted(expected.values())), case
        q = queries[0]
        near = sorted(distance(q, r["bv"]) for r in data if r["k"] == 1)
        filtered = sluice.search("d_binary", data=[q], limit=5, filter="k == 1")[0]
        assert same([h["distance"] for h in filtered], near[:5]), case
        paged = sluice.search("d_binary", data=[q], limit=4, offset=3)[0]
        everything = sorted(distance(q, r["bv"]) for r in data)
        assert same([h["distance"] for h in paged], everything[3:7]), case
        radius = everything[10]
        ranged = sluice.search(
            "d_binary", data=[q], limit=50, search_params={"params": {"radius": radius}}
        )[0]
        inside = [d for d in everything if d < radius - 1e-6]
        assert same([h["distance"] for h in ranged], inside), (case, ranged, inside)
        got = sluice.query("d_binary", filter="id in [3, 7]", output_fields=["bv"])
        assert sorted((r["id"], bytes(r["bv"][0])) for r in got) == [
            (3, data[3]["bv"]),
            (7, data[7]["bv"]),
        ]
        field = sluice.describe_collection("d_binary")["fields"][1]
        assert field["type"] == DataType.BINARY_VECTOR and field["params"]["dim"] == bits
        assert sluice.describe_index("d_binary", "bv")["metric_type"] == metric
    drop_if_exists(sluice, "d_binary")
    index = sluice.prepare_index_params()
    index.add_index(field_name="bv", index_type="BIN_FLAT", metric_type="SUBSTRUCTURE")
    with pytest.raises(MilvusException) as e:
        sluice.create_collection("d_binary", schema=schema(), index_params=index)
    assert "SUBSTRUCTURE" in e.value.message
    drop_if_exists(sluice, "d_binary")
    with pytest.raises(MilvusException) as e:
        sluice.create_collection("d_binary", schema=schema(dim=12))
    assert "multiple of 8" in e.value.message
    drop_if_exists(sluice, "d_binary")


def test_partition_statistics_match(sluice, lite):
    def f(c):
        fresh(c, "d_part_stats")
        c.create_partition("d_part_stats", "p1")
        c.insert("d_part_stats", rows(7, seed=31))
        c.insert("d_part_stats", rows(3, seed=32, start=100), partition_name="p1")
        c.delete("d_part_stats", ids=[100])
        got = (
            c.get_partition_stats("d_part_stats", "_default")["row_count"],
            c.get_partition_stats("d_part_stats", "p1")["row_count"],
            c.get_collection_stats("d_part_stats")["row_count"],
        )
        try:
            c.get_partition_stats("d_part_stats", "p_missing")
            return got, "ok"
        except MilvusException as e:
            return got, e.code

    s, l = both(sluice, lite, f)
    assert s == l == ((7, 2, 9), 200)


def test_flush_all_seals_every_collection_and_health_is_reported():
    """FlushAll writes the growing rows of every collection to Parquet (milvus-lite has no
    FlushAll), list_persistent_segments lists them; CheckHealth answers healthy while the
    coordinator and the oracle answer."""
    from pathlib import Path

    from pymilvus.grpc_gen import milvus_pb2, milvus_pb2_grpc
    import grpc

    with tempfile.TemporaryDirectory(prefix="sluice-flush-all-") as d:
        s = Server(Path(d))
        s.start()
        try:
            c = MilvusClient(uri=f"http://{s.milvus}")
            for name in ("flush_all_a", "flush_all_b"):
                c.create_collection(name, dimension=DIM)
                c.insert(name, rows(12, seed=41))
            assert sorted(Path(d).rglob("*.parquet")) == []
            c.flush_all()
            # FlushAll answers once the segments are sealed (durable in the WAL); the flusher
            # writes them to Parquet next. Nothing else would seal them this soon (the idle
            # policy waits 10 minutes), so one file per collection (one shard each) shows it.
            deadline = time.monotonic() + 60
            # (storage/segments/<collection>/<partition>/<segment>/data.parquet)
            collections = set()
            while len(collections) < 2:
                assert time.monotonic() < deadline, collections
                time.sleep(0.2)
                collections = {p.parts[-4] for p in Path(d).rglob("*.parquet")}
            assert len(c.query("flush_all_a", filter="id >= 0")) == 12
            # The segments in Parquet, as list_persistent_segments reports them.
            deadline = time.monotonic() + 60
            while not (segments := c.list_persistent_segments("flush_all_a")):
                assert time.monotonic() < deadline
                time.sleep(0.2)
            assert sum(x.num_rows for x in segments) == 12, segments
            assert {x.state_name for x in segments} == {"Flushed"}, segments
            from pymilvus.client.types import SegmentState

            assert c.list_persistent_segments("flush_all_a", states=[SegmentState.Growing]) == []
            with pytest.raises(MilvusException) as e:
                c.list_persistent_segments("flush_all_missing")
            assert e.value.code == 100
            with grpc.insecure_channel(s.milvus) as ch:
                health = milvus_pb2_grpc.MilvusServiceStub(ch).CheckHealth(
                    milvus_pb2.CheckHealthRequest(), timeout=10
                )
            assert health.status.code == 0
            assert health.isHealthy and list(health.reasons) == [], health
            c.close()
        finally:
            s.stop()


def test_inconsistent_requests_are_refused_and_insert_nothing(sluice, sluice_server):
    """Requests pymilvus would not build, sent by other clients: a row count that is not the
    columns', a field given twice, a dynamic field that is not a JSON object per row, a search
    whose nq is not its number of query vectors."""
    import grpc
    from pymilvus.grpc_gen import milvus_pb2 as mm, milvus_pb2_grpc, schema_pb2 as ms

    fresh(sluice, "d_bad_insert")
    ids = lambda keys: ms.FieldData(  # noqa: E731
        field_name="id", type=ms.DataType.Int64, scalars=ms.ScalarField(long_data=ms.LongArray(data=keys))
    )
    vectors = lambda n: ms.FieldData(  # noqa: E731
        field_name="vector",
        type=ms.DataType.FloatVector,
        vectors=ms.VectorField(dim=DIM, float_vector=ms.FloatArray(data=[0.5] * (DIM * n))),
    )
    meta = lambda docs: ms.FieldData(  # noqa: E731
        field_name="$meta",
        type=ms.DataType.JSON,
        is_dynamic=True,
        scalars=ms.ScalarField(json_data=ms.JSONArray(data=docs)),
    )
    cases = {
        "num_rows": mm.InsertRequest(
            collection_name="d_bad_insert", num_rows=1000, fields_data=[ids([1, 2]), vectors(2)]
        ),
        "given more than once": mm.InsertRequest(
            collection_name="d_bad_insert", num_rows=1, fields_data=[ids([1]), ids([2]), vectors(1)]
        ),
        "JSON object per row": mm.InsertRequest(
            collection_name="d_bad_insert",
            num_rows=2,
            fields_data=[ids([1, 2]), vectors(2), meta([b'{"a": 1}', b"[1, 2]"])],
        ),
    }
    with grpc.insecure_channel(sluice_server.milvus) as ch:
        stub = milvus_pb2_grpc.MilvusServiceStub(ch)
        for words, request in cases.items():
            r = stub.Insert(request, timeout=10)
            assert r.status.code == 1100 and words in r.status.reason, (words, r.status)
        # The same columns, consistent, are taken.
        ok = stub.Insert(
            mm.InsertRequest(
                collection_name="d_bad_insert",
                num_rows=2,
                fields_data=[ids([7, 8]), vectors(2), meta([b'{"a": 1}', b"{}"])],
            ),
            timeout=10,
        )
        assert ok.status.code == 0, ok.status
        # A search whose nq is not the number of query vectors it holds.
        import struct

        from pymilvus.grpc_gen import common_pb2 as mc

        group = mc.PlaceholderGroup(
            placeholders=[
                mc.PlaceholderValue(
                    tag="$0", type=mc.FloatVector, values=[struct.pack(f"{DIM}f", *([0.5] * DIM))]
                )
            ]
        )
        kv = lambda k, v: mc.KeyValuePair(key=k, value=str(v))  # noqa: E731
        r = stub.Search(
            mm.SearchRequest(
                collection_name="d_bad_insert",
                placeholder_group=group.SerializeToString(),
                dsl_type=1,
                nq=5,
                search_params=[kv("anns_field", "vector"), kv("topk", 3), kv("params", "{}")],
            ),
            timeout=10,
        )
        assert r.status.code == 1100 and "nq is 5" in r.status.reason, r.status
    got = sluice.query("d_bad_insert", filter="id >= 0", consistency_level="Strong")
    assert sorted(r["id"] for r in got) == [7, 8]


def test_iterators_read_one_snapshot_while_rows_change_in_sluice(sluice):
    """query_iterator and search_iterator pin every page to the first answer's session_ts:
    rows inserted or deleted while an iterator runs neither appear in nor vanish from its later
    pages (milvus-lite answers without a session_ts, so pymilvus falls back to its clock)."""
    name = "d_iterator_snapshot"
    fresh(sluice, name)
    sluice.insert(name, rows(100, seed=61))
    it = sluice.query_iterator(name, batch_size=30, filter="id >= 0", output_fields=["id"])
    seen = [r["id"] for r in it.next()]
    assert seen == list(range(30))
    # Rows the next pages would cover: new keys among them, and old ones deleted.
    sluice.insert(name, rows(50, seed=62, start=1000))
    sluice.delete(name, ids=list(range(50, 60)))
    while page := it.next():
        seen.extend(r["id"] for r in page)
    it.close()
    assert seen == list(range(100))
    assert sluice.query(name, filter="", output_fields=["count(*)"])[0]["count(*)"] == 140

    # New rows sitting exactly on the query vector would be the nearest hits if visible.
    probe = [0.5] * DIM
    it = sluice.search_iterator(
        name, data=[probe], batch_size=20, limit=60, search_params={"metric_type": "COSINE"}
    )
    first = it.next()
    assert len(first) == 20
    sluice.insert(
        name, [{"id": 2000 + i, "vector": probe, "color": "red", "size": 1} for i in range(10)]
    )
    found = [h["id"] for h in first]
    while page := it.next():
        found.extend(h["id"] for h in page)
    it.close()
    assert len(found) == 60 and len(set(found)) == 60, found
    assert all(i < 100 or 1000 <= i < 1050 for i in found), found
    # A fresh search sees them.
    assert {h["id"] for h in sluice.search(name, data=[probe], limit=10)[0]} == set(
        range(2000, 2010)
    )


def test_the_search_iterator_pages_through_every_hit_in_order_in_sluice(sluice, caplog):
    """pymilvus's search iterator (v2: the server pages past the last bound; no fallback to
    v1) returns every row once, nearest first, in pages of the batch size."""
    import logging

    name = "d_search_iterator"
    fresh(sluice, name)
    sluice.insert(name, rows(130, seed=63))
    probe = rows(1, seed=64)[0]["vector"]
    everything = sluice.search(name, data=[probe], limit=130)[0]
    with caplog.at_level(logging.WARNING):
        it = sluice.search_iterator(name, data=[probe], batch_size=25)
        pages = []
        while page := it.next():
            pages.append([(h["id"], h["distance"]) for h in page])
        it.close()
    assert not [r for r in caplog.records if "Search Iterator V2" in r.getMessage()], caplog.text
    assert [len(p) for p in pages] == [25, 25, 25, 25, 25, 5]
    got = [h for p in pages for h in p]
    assert [i for i, _ in got] == [h["id"] for h in everything]
    scores = [d for _, d in got]
    assert scores == sorted(scores, reverse=True)  # COSINE: most similar first
    # Within a radius (COSINE: more similar than it): the hits before it, in pages.
    radius = everything[60]["distance"]
    it = sluice.search_iterator(
        name, data=[probe], batch_size=25, search_params={"params": {"radius": radius}}
    )
    within = []
    while page := it.next():
        within.extend(h["id"] for h in page)
    it.close()
    assert within == [h["id"] for h in everything[:60]]


def test_replicas_and_loaded_segments_are_described_in_sluice(sluice, sluice_server):
    """describe_replica: one replica (no query workers here), a leader for each shard — the
    standalone node; get_query_segment_info: the flushed segments with the node holding them;
    both refuse a released collection."""
    from pymilvus import Collection, connections, utility

    connections.connect(alias="d_replicas", uri=f"http://{sluice_server.milvus}")
    name = "d_replicas"
    drop_if_exists(sluice, name)
    sluice.create_collection(name, dimension=DIM, num_shards=2)
    sluice.insert(name, rows(40, seed=71))
    replicas = sluice.describe_replica(name)
    assert len(replicas) == 1, replicas
    channels = sorted(s.channel_name for s in replicas[0].shards)
    assert len(channels) == 2 and channels[0] != channels[1], replicas
    leaders = {s.shard_leader for s in replicas[0].shards}
    assert len(leaders) == 1 and 0 not in leaders, replicas
    assert set(replicas[0].group_nodes) == leaders
    assert replicas[0].resource_group == "__default_resource_group"
    assert len(Collection(name, using="d_replicas").get_replicas().groups) == 1

    sluice.flush(name)
    # Flush answers once the segments are sealed; they are listed once written to Parquet.
    deadline = time.monotonic() + 60
    while True:
        infos = utility.get_query_segment_info(name, using="d_replicas")
        if sum(i.num_rows for i in infos) >= 40:
            break
        assert time.monotonic() < deadline, infos
        time.sleep(0.2)
    assert sum(i.num_rows for i in infos) == 40, infos
    assert {i.collectionID for i in infos} == {sluice.describe_collection(name)["collection_id"]}
    assert {tuple(i.nodeIds) for i in infos} == {tuple(leaders)}, infos
    assert {i.state for i in infos} == {3}, infos  # SegmentState.Sealed

    sluice.release_collection(name)
    with pytest.raises(MilvusException) as e:
        sluice.describe_replica(name)
    assert e.value.code == 101
    with pytest.raises(MilvusException) as e:
        utility.get_query_segment_info(name, using="d_replicas")
    assert e.value.code == 101
    sluice.load_collection(name)
    assert len(sluice.describe_replica(name)) == 1
    connections.disconnect("d_replicas")


def _hello_milvus(uri):
    """pymilvus's classic ORM example (connections, FieldSchema, Collection, utility) with its
    iterators, as existing applications use it; what it reads, in comparable form."""
    from pymilvus import Collection, CollectionSchema, FieldSchema, connections, utility

    alias = f"orm_{abs(hash(uri))}"
    connections.connect(alias=alias, uri=uri)
    name = "d_hello_orm"
    try:
        if utility.has_collection(name, using=alias):
            utility.drop_collection(name, using=alias)
        fields = [
            FieldSchema("pk", DataType.VARCHAR, is_primary=True, auto_id=False, max_length=100),
            FieldSchema("random", DataType.DOUBLE),
            FieldSchema("embeddings", DataType.FLOAT_VECTOR, dim=DIM),
        ]
        schema = CollectionSchema(fields, "the simplest demo")
        coll = Collection(name, schema, consistency_level="Strong", using=alias)
        rnd = random.Random(99)
        n = 300
        entities = [
            [str(i) for i in range(n)],
            [round(rnd.random(), 4) for _ in range(n)],
            [[round(rnd.random(), 3) for _ in range(DIM)] for _ in range(n)],
        ]
        inserted = coll.insert(entities)
        out = {"insert_count": inserted.insert_count, "keys": inserted.primary_keys[:3]}
        coll.flush()
        out["num_entities"] = coll.num_entities
        coll.create_index("embeddings", {"index_type": "FLAT", "metric_type": "L2", "params": {}})
        utility.wait_for_index_building_complete(name, using=alias)
        out["has_index"] = coll.has_index()
        coll.load()
        utility.wait_for_loading_complete(name, using=alias)
        out["loading"] = utility.loading_progress(name, using=alias)["loading_progress"]
        out["listed"] = name in utility.list_collections(using=alias)
        params = {"metric_type": "L2", "params": {}}
        queries = entities[-1][-2:]
        found = coll.search(queries, "embeddings", params, limit=3, output_fields=["random"])
        out["search"] = [
            [(h.id, round(h.distance, 3), h.entity.get("random")) for h in hits] for hits in found
        ]
        found = coll.search(
            queries, "embeddings", params, limit=3, expr="random > 0.5", output_fields=["random"]
        )
        out["filtered"] = [[h.id for h in hits] for hits in found]
        rows_ = coll.query(expr="random > 0.9", output_fields=["random"])
        out["query"] = sorted((r["pk"], r["random"]) for r in rows_)
        out["query_limit"] = len(coll.query(expr="random > 0.5", limit=4, output_fields=["random"]))
        expr = 'pk in ["0", "1"]'
        coll.delete(expr)
        out["deleted"] = coll.query(expr=expr, output_fields=["random"])
        it = coll.query_iterator(batch_size=40, expr="random < 0.7", output_fields=["random"])
        seen, batches = [], 0
        while page := it.next():
            seen.extend(r["pk"] for r in page)
            batches += 1
        it.close()
        out["query_iterator"] = (sorted(seen), len(seen) == len(set(seen)), batches > 1)
        it = coll.search_iterator(queries[:1], "embeddings", params, batch_size=20, limit=90)
        hits_ = []
        while page := it.next():
            hits_.extend((h.id, round(h.distance, 3)) for h in page)
        it.close()
        out["search_iterator"] = (len(hits_), len({h[0] for h in hits_}), hits_[:10])
        coll.release()
        utility.drop_collection(name, using=alias)
        out["dropped"] = not utility.has_collection(name, using=alias)
        return out
    finally:
        connections.disconnect(alias)


@pytest.mark.filterwarnings("ignore::FutureWarning")  # the ORM is deprecated, still in use
def test_the_classic_orm_example_with_iterators_matches_milvus_lite(sluice_server, lite):
    """Code written against the ORM (pymilvus's `hello_milvus` example: connections,
    FieldSchema, Collection, utility; column-wise inserts, flush, num_entities, an index,
    wait_for_* helpers, search, query, delete by expression) plus query and search iterators
    reads the same in Sluice and milvus-lite."""
    with tempfile.TemporaryDirectory(prefix="milvus-lite-orm-") as d:
        theirs = _hello_milvus(f"{d}/lite.db")
    mine = _hello_milvus(f"http://{sluice_server.milvus}")
    assert mine == theirs
    assert mine["num_entities"] == 300 and mine["deleted"] == [], mine
    assert mine["query_iterator"][2], "the iterator read more than one page"
    assert mine["search_iterator"][0] == 90 == mine["search_iterator"][1], mine


def test_fields_added_to_a_collection_read_null_for_older_rows_and_survive_a_restart():
    """add_collection_field (milvus-lite answers UNIMPLEMENTED): a nullable scalar field joins
    the schema; rows sealed into Parquet and growing rows from before read it as null, rows
    inserted after carry it and filters see it; a field that is not nullable, a name in use, a
    vector field are refused and change nothing; after a restart all of it reads the same."""
    from pathlib import Path

    name = "added_fields"
    with tempfile.TemporaryDirectory(prefix="sluice-add-field-") as d:
        s = Server(Path(d))
        s.start()
        try:
            c = MilvusClient(uri=f"http://{s.milvus}")
            c.create_collection(name, dimension=DIM)
            c.insert(name, rows(10, seed=81))
            c.flush(name)
            c.insert(name, rows(5, seed=82, start=10))
            c.add_collection_field(name, "tag", DataType.VARCHAR, max_length=16, nullable=True)
            c.add_collection_field(name, "small", DataType.INT8, nullable=True)
            for bad in [
                dict(field_name="plain", data_type=DataType.INT64),
                dict(field_name="tag", data_type=DataType.INT64, nullable=True),
                dict(field_name="v2", data_type=DataType.FLOAT_VECTOR, dim=DIM, nullable=True),
            ]:
                with pytest.raises(MilvusException) as e:
                    c.add_collection_field(name, **bad)
                assert e.value.code == 1100, (bad, e.value)
            fields = {f["name"]: f for f in c.describe_collection(name)["fields"]}
            assert fields["tag"]["type"] == DataType.VARCHAR and fields["tag"]["nullable"]
            assert fields["small"]["type"] == DataType.INT8
            assert set(fields) == {"id", "vector", "tag", "small"}, fields
            new = [dict(r, tag=f"t{i}", small=i) for i, r in enumerate(rows(3, seed=83, start=20))]
            c.insert(name, new)

            def state(c):
                got = c.query(
                    name,
                    filter="id >= 0",
                    output_fields=["tag", "small"],
                    consistency_level="Strong",
                )
                return (
                    sorted((r["id"], r["tag"], r["small"]) for r in got),
                    sorted(r["id"] for r in c.query(name, filter='tag like "t%"')),
                    c.query(name, filter="small is null", output_fields=["count(*)"])[0][
                        "count(*)"
                    ],
                )

            before = state(c)
            assert before == (
                [(i, None, None) for i in range(15)] + [(20 + i, f"t{i}", i) for i in range(3)],
                [20, 21, 22],
                15,
            ), before
            hits = c.search(name, data=[new[1]["vector"]], limit=1, output_fields=["tag"])
            assert hits[0][0]["entity"]["tag"] == "t1"
            c.close()
        finally:
            s.stop()
        s = Server(Path(d))
        s.start()
        try:
            c = MilvusClient(uri=f"http://{s.milvus}")
            assert state(c) == before
            assert [f["name"] for f in c.describe_collection(name)["fields"]] == [
                "id",
                "vector",
                "tag",
                "small",
            ]
            c.close()
        finally:
            s.stop()


def test_collection_properties_and_a_ttl_in_sluice(sluice):
    """Collection properties through alter_collection_properties, drop_collection_properties
    and create_collection(properties=...), described back; collection.ttl.seconds hides rows
    older than it from query, search and count; properties whose Milvus meaning Sluice does not
    have are refused (milvus-lite answers AlterCollection UNIMPLEMENTED)."""
    name = "d_ttl"
    drop_if_exists(sluice, name)
    sluice.create_collection(name, dimension=DIM, properties={"collection.ttl.seconds": 3})
    assert sluice.describe_collection(name)["properties"] == {"collection.ttl.seconds": "3"}
    sluice.insert(name, rows(10, seed=91))
    count = lambda: sluice.query(name, filter="", output_fields=["count(*)"])[0]["count(*)"]  # noqa: E731
    assert count() == 10
    time.sleep(3.3)
    sluice.insert(name, rows(4, seed=92, start=100))
    assert count() == 4
    assert sorted(r["id"] for r in sluice.query(name, filter="id >= 0")) == [100, 101, 102, 103]
    hits = sluice.search(name, data=[rows(1, seed=91)[0]["vector"]], limit=20)
    assert sorted(h["id"] for h in hits[0]) == [100, 101, 102, 103]

    sluice.alter_collection_properties(
        name, properties={"collection.ttl.seconds": 0, "mmap.enabled": True}
    )
    assert sluice.describe_collection(name)["properties"] == {
        "collection.ttl.seconds": "0",
        "mmap.enabled": "True",
    }
    assert count() == 14  # no TTL: the rows were only hidden
    sluice.drop_collection_properties(name, property_keys=["mmap.enabled"])
    assert sluice.describe_collection(name)["properties"] == {"collection.ttl.seconds": "0"}
    for bad in [
        {"collection.ttl.seconds": -1},
        {"collection.ttl.seconds": "soon"},
        {"collection.insertRate.max.mb": "lots"},
        {"collection.insertRate.min.mb": 1},
        {"collection.replica.number": 0},
        {"collection.resource_groups": "rg1"},
    ]:
        with pytest.raises(MilvusException) as e:
            sluice.alter_collection_properties(name, properties=bad)
        assert e.value.code == 1100, (bad, e.value)
    with pytest.raises(MilvusException):
        sluice.create_collection("d_ttl_bad", dimension=DIM, properties={"collection.ttl.seconds": -3})
    assert not sluice.has_collection("d_ttl_bad")
    assert sluice.describe_collection(name)["properties"] == {"collection.ttl.seconds": "0"}


def test_default_values_fill_rows_without_a_value_like_milvus(sluice, lite):
    """Fields with a default value: an insert leaving it out, or giving None to a nullable one,
    stores the default; describe_collection shows it; a default of the wrong type is refused."""

    def run(c):
        name = "d_defaults"
        drop_if_exists(c, name)
        schema = c.create_schema(auto_id=False)
        schema.add_field("id", DataType.INT64, is_primary=True)
        schema.add_field("vector", DataType.FLOAT_VECTOR, dim=DIM)
        schema.add_field("n", DataType.INT64, default_value=7)
        schema.add_field("small", DataType.INT16, default_value=-3)
        schema.add_field("s", DataType.VARCHAR, max_length=8, nullable=True, default_value="dflt")
        schema.add_field("f", DataType.FLOAT, default_value=1.5)
        schema.add_field("b", DataType.BOOL, default_value=True)
        index = c.prepare_index_params()
        index.add_index(field_name="vector", index_type="FLAT", metric_type="L2")
        c.create_collection(name, schema=schema, index_params=index)
        vec = [0.25] * DIM
        c.insert(
            name,
            [
                {"id": 1, "vector": vec},
                {"id": 2, "vector": vec, "n": 5, "small": 9, "s": None, "f": 2.5, "b": False},
                {"id": 3, "vector": vec, "s": "set"},
            ],
        )
        got = c.query(
            name,
            filter="id >= 0",
            output_fields=["n", "small", "s", "f", "b"],
            consistency_level="Strong",
        )
        fields = {f["name"]: f.get("default_value") for f in c.describe_collection(name)["fields"]}
        filtered = sorted(r["id"] for r in c.query(name, filter="n == 7", consistency_level="Strong"))
        return sorted((r["id"], r["n"], r["small"], r["s"], r["f"], r["b"]) for r in got), filtered, fields

    mine, theirs = both(sluice, lite, run)
    assert mine[0] == [
        (1, 7, -3, "dflt", 1.5, True),
        (2, 5, 9, "dflt", 2.5, False),
        (3, 7, -3, "set", 1.5, True),
    ], mine
    assert mine[:2] == theirs[:2], (mine, theirs)
    assert {k: v for k, v in mine[2].items() if v is not None} == {
        k: v for k, v in theirs[2].items() if v is not None
    }, (mine[2], theirs[2])

    bad = MilvusClient.create_schema(auto_id=False)
    bad.add_field("id", DataType.INT64, is_primary=True)
    bad.add_field("vector", DataType.FLOAT_VECTOR, dim=DIM)
    bad.add_field("s", DataType.VARCHAR, max_length=3, default_value="too long")
    with pytest.raises(MilvusException) as e:
        sluice.create_collection("d_defaults_bad", schema=bad)
    assert e.value.code == 1100
    assert not sluice.has_collection("d_defaults_bad")
    # An INT16 value out of its range is refused (Sluice keeps it in 32 bits).
    with pytest.raises(MilvusException) as e:
        sluice.insert("d_defaults", [{"id": 9, "vector": [0.5] * DIM, "small": 40000}])
    assert e.value.code == 1100 and "Int16" in e.value.message, e.value
    assert sluice.query("d_defaults", filter="id == 9", consistency_level="Strong") == []
    with pytest.raises(MilvusException) as e:
        sluice.add_collection_field(
            "d_defaults", "later", DataType.INT64, nullable=True, default_value=1
        )
    assert "default value" in e.value.message


def array_collection(c, name):
    """A collection with ARRAY fields of VARCHAR, INT64, nullable INT8 and DOUBLE elements."""
    drop_if_exists(c, name)
    schema = c.create_schema(auto_id=False)
    schema.add_field("id", DataType.INT64, is_primary=True)
    schema.add_field("vector", DataType.FLOAT_VECTOR, dim=DIM)
    schema.add_field("tags", DataType.ARRAY, element_type=DataType.VARCHAR, max_capacity=4, max_length=8)
    schema.add_field("nums", DataType.ARRAY, element_type=DataType.INT64, max_capacity=5)
    schema.add_field("small", DataType.ARRAY, element_type=DataType.INT8, max_capacity=3, nullable=True)
    schema.add_field("weights", DataType.ARRAY, element_type=DataType.DOUBLE, max_capacity=2)
    index = c.prepare_index_params()
    index.add_index(field_name="vector", index_type="FLAT", metric_type="L2")
    c.create_collection(name, schema=schema, index_params=index)


ARRAY_FILTERS = [
    'array_contains(tags, "red")',
    'ARRAY_CONTAINS_ANY(tags, ["blue", "cyan"])',
    'array_contains_all(tags, ["red", "green"])',
    "array_length(tags) == 0",
    "array_length(nums) >= 2",
    'tags[0] == "blue"',
    "nums[1] > 40",
    "small is null",
    "array_contains(small, 3)",
    "weights[0] > 10",
    'not array_contains(tags, "red") and id < 20',
]


def array_rows(n, start=0):
    rnd = random.Random(41 + start)
    words = ["red", "blue", "green", "cyan"]
    return [
        {
            "id": i,
            "vector": [rnd.random() for _ in range(DIM)],
            "tags": rnd.sample(words, i % 4),
            "nums": [i, i * 2, i % 5][: 1 + i % 3],
            "small": None if i % 5 == 0 else [i % 100, -(i % 100)],
            "weights": [i / 4, 0.5],
        }
        for i in range(start, start + n)
    ]


def test_array_fields_are_written_filtered_and_read_like_milvus(sluice, lite):
    """ARRAY fields (kept by Sluice as JSON arrays): described with their element type and
    capacity, written sealed and growing, filtered with the array functions and indexes,
    returned typed by query and search; inserts that break the declaration are refused."""

    def run(c):
        name = "d_arrays"
        array_collection(c, name)
        c.insert(name, array_rows(30))
        c.flush(name)
        c.insert(name, array_rows(30, start=30))

        def ids(flt):
            got = c.query(name, filter=flt, output_fields=["id"], consistency_level="Strong")
            return sorted(r["id"] for r in got)

        filtered = [ids(f) for f in ARRAY_FILTERS]
        got = c.query(
            name,
            filter="id < 12",
            output_fields=["tags", "nums", "small", "weights"],
            consistency_level="Strong",
        )
        hits = c.search(
            name,
            data=[[0.5] * DIM],
            limit=5,
            filter='array_contains(tags, "green")',
            output_fields=["tags", "nums"],
        )
        fields = [
            (
                f["name"],
                f["type"],
                f.get("element_type"),
                f.get("params", {}).get("max_capacity"),
            )
            for f in c.describe_collection(name)["fields"]
        ]
        refused = []
        vec = [0.1] * DIM
        for bad in [{"tags": ["a", "b", "c", "d", "e"]}, {"nums": [1, 2, 3, 4, 5, 6]}]:
            row = dict({"id": 1000, "vector": vec, "tags": [], "nums": [], "small": None, "weights": []}, **bad)
            try:
                c.insert(name, [row])
                refused.append("ok")
            except MilvusException:
                refused.append("refused")
        return (
            filtered,
            sorted((r["id"], r["tags"], r["nums"], r["small"], r["weights"]) for r in got),
            [(h["id"], h["entity"]["tags"], h["entity"]["nums"]) for h in hits[0]],
            fields,
            refused,
            ids("id == 1000"),
        )

    mine, theirs = both(sluice, lite, run)
    assert mine == theirs, (mine, theirs)
    # milvus-lite describes an ARRAY of VARCHAR without the max_length it was created with.
    tags = [f for f in sluice.describe_collection("d_arrays")["fields"] if f["name"] == "tags"]
    assert tags[0]["params"] == {"max_capacity": 4, "max_length": 8}, tags
    # Not vacuous: each filter picks some rows but not all, and the rows read back as written.
    for flt, got in zip(ARRAY_FILTERS, mine[0]):
        assert 0 < len(got) < 60, (flt, got)
    written = {r["id"]: r for r in array_rows(12)}
    assert mine[1] == [
        (i, written[i]["tags"], written[i]["nums"], written[i]["small"], written[i]["weights"])
        for i in range(12)
    ]
    assert mine[4] == ["refused"] * 2 and mine[5] == []


def test_array_values_outside_the_element_type_are_refused(sluice):
    """What pymilvus lets through but the declaration forbids (milvus-lite takes the VARCHAR
    element over max_length): INT8 elements out of range, too many of them, a VARCHAR element
    longer than max_length; an ARRAY of JSON is refused at create."""
    name = "s_arrays_bad"
    array_collection(sluice, name)
    vec = [0.1] * DIM
    base = {"id": 1, "vector": vec, "tags": [], "nums": [], "small": None, "weights": []}
    for bad, why in [
        ({"small": [127, 128]}, "type Int8"),
        ({"small": [1, 2, 3, 4]}, "max_capacity 3"),
        ({"tags": ["ok", "far too long"]}, "at most 8 bytes"),
    ]:
        with pytest.raises(MilvusException) as e:
            sluice.insert(name, [dict(base, **bad)])
        assert e.value.code == 1100 and why in e.value.message, (bad, e.value)
    assert sluice.query(name, filter="id >= 0", consistency_level="Strong") == []
    sluice.insert(name, [dict(base, small=[-128, 127, 0])])
    got = sluice.query(name, filter="id == 1", output_fields=["small"], consistency_level="Strong")
    assert [r["small"] for r in got] == [[-128, 127, 0]]

    # An ARRAY field added later: older rows read null, its declaration holds for new ones.
    sluice.add_collection_field(
        name, "labels", DataType.ARRAY, element_type=DataType.VARCHAR, max_capacity=2, max_length=4, nullable=True
    )
    with pytest.raises(MilvusException) as e:
        sluice.insert(name, [dict(base, id=2, labels=["a", "b", "c"])])
    assert "max_capacity 2" in e.value.message, e.value
    sluice.insert(name, [dict(base, id=2, labels=["ab", "cd"])])
    got = sluice.query(
        name, filter='array_contains(labels, "cd") or id == 1', output_fields=["labels"], consistency_level="Strong"
    )
    assert sorted((r["id"], r["labels"]) for r in got) == [(1, None), (2, ["ab", "cd"])], got

    schema = MilvusClient.create_schema(auto_id=False)
    schema.add_field("id", DataType.INT64, is_primary=True)
    schema.add_field("vector", DataType.FLOAT_VECTOR, dim=DIM)
    schema.add_field("a", DataType.ARRAY, element_type=DataType.JSON, max_capacity=2)
    with pytest.raises(MilvusException) as e:
        sluice.create_collection("s_arrays_json", schema=schema)
    assert e.value.code == 1100 and "element type" in e.value.message, e.value
    assert not sluice.has_collection("s_arrays_json")


JSON_FILTERS = [
    'json_contains(meta["tags"], "a")',
    'json_contains_any(meta["tags"], ["a", "b"])',
    'json_contains_all(meta["tags"], ["a", "b"])',
    'not json_contains(meta["tags"], "c")',
    'array_contains(nums, 5)',
    'array_length(nums) == 2',
    'exists meta["n"]',
    'meta is null',
    'meta is not null',
    'meta["tags"][0] == "a"',
    'nums[0] == 3',
    'meta["inner"]["x"] == 1 and json_contains(meta["tags"], "d")',
    "id * 2 > 60",
    "id + 1 == 10 or id - 3 < 2",
    'meta["n"] * 2 >= 6',
    "id / 4 == 2.5",
    # A value of another JSON type is not equal (== false, != true); a missing key or JSON
    # null is unknown, also under `not` (milvus-lite takes no `in` on JSON keys).
    "mixed != 3",
    'not (mixed == "5")',
    'meta["inner"] != 1',
    'meta["n"] != "2"',
    "not (mixed > 10)",
    # Arithmetic in parentheses.
    "(id + 1) < 10",
    "not ((id * 2) > 60) and (id - 3) >= 20",
    # `exists` is false for a key holding JSON null; `$meta` names the dynamic field.
    "exists mixed",
    'not exists $meta["mixed"]',
    '$meta["mixed"] == 8 or $meta["mixed"] == "9"',
    # true and false as conditions.
    "id > 30 and true",
    "false or id < 3",
]


@pytest.mark.parametrize("flt", JSON_FILTERS)
def test_json_filters_match(sluice, lite, flt):
    """Milvus's JSON filter functions, `exists`, array indexes, `is null` on a JSON field,
    comparisons with values of other JSON types and arithmetic before a comparison, over
    fields, a JSON field and dynamic-field keys: the same rows as milvus-lite."""

    def run(c):
        name = "d_json_filters"
        if not c.has_collection(name):
            schema = c.create_schema(auto_id=False, enable_dynamic_field=True)
            schema.add_field("id", DataType.INT64, is_primary=True)
            schema.add_field("vector", DataType.FLOAT_VECTOR, dim=DIM)
            schema.add_field("meta", DataType.JSON, nullable=True)
            index = c.prepare_index_params()
            index.add_index(field_name="vector", index_type="FLAT", metric_type="L2")
            c.create_collection(name, schema=schema, index_params=index)
            rnd = random.Random(5)
            c.insert(
                name,
                [
                    {
                        "id": i,
                        "vector": [rnd.random() for _ in range(DIM)],
                        "meta": {
                            "tags": rnd.sample(["a", "b", "c", "d"], rnd.randint(0, 3)),
                            "n": i % 5,
                            "inner": {"x": i % 3},
                        }
                        if i % 7
                        else None,
                        "nums": [i, i + 1] if i % 4 else [i],
                        # A number, a string, a list, JSON null, or no key (i % 5 == 4).
                        **({} if i % 5 == 4 else {"mixed": [i, str(i), [i], None][i % 4]}),
                    }
                    for i in range(40)
                ],
            )
        return sorted(
            r["id"] for r in c.query(name, filter=flt, limit=100, consistency_level="Strong")
        )

    mine, theirs = both(sluice, lite, run)
    assert mine == theirs, (flt, mine, theirs)
    assert mine and mine != list(range(40)), (flt, mine)  # the filter selects something


def _random_filter(rnd, depth=0):
    """A random filter over `d_random_filters`' fields, within what milvus-lite parses and
    answers as Milvus does (no `%`, no escaped `like` patterns, no `in` on JSON keys, no
    repeated primary keys in an `in` list, no `not` around `in` on a nullable field)."""
    if depth < 3 and rnd.random() < 0.5:
        kind = rnd.random()
        if kind < 0.25:
            return f"not ({_random_filter(rnd, depth + 1)})".replace("not (not (", "not ((")
        joiner = " and " if kind < 0.6 else " or "
        return f"({_random_filter(rnd, depth + 1)}){joiner}({_random_filter(rnd, depth + 1)})"
    op = rnd.choice(["==", "!=", "<", "<=", ">", ">="])
    eq = rnd.choice(["==", "!="])
    text = rnd.choice(['"a"', '"ab1"', '""', '"b2"'])
    pattern = rnd.choice(['"a%"', '"%1"', '"%b%"', '"_b%"'])
    key_value = rnd.choice(["1", "2.5", '"s"', "true"])
    mixed_value = rnd.choice(["1", '"s"', "false"])
    listed = ", ".join(str(i) for i in rnd.sample(range(60), rnd.randint(1, 4)))
    return rnd.choice(
        [
            f"id {op} {rnd.randint(0, 60)}",
            f"n {op} {rnd.choice(['0', '1', '2', '1.5'])}",
            "n is null",
            "n is not null",
            f"t {op} {text}",
            f"t like {pattern}",
            f"id in [{listed}]",
            f"b {eq} {rnd.choice(['true', 'false'])}",
            f"array_contains(a, {rnd.randint(0, 3)})",
            f"array_length(a) {op} {rnd.randint(0, 3)}",
            f'meta["k"] {eq if key_value == "true" else op} {key_value}',
            f'json_contains(meta["l"], {rnd.randint(0, 3)})',
            f"mixed {eq} {mixed_value}",
            f"(id {rnd.choice(['+', '-', '*'])} {rnd.randint(1, 3)}) {op} {rnd.randint(0, 60)}",
        ]
    )


def test_random_filters_match_milvus_lite(sluice, lite):
    """Seeded random filters (comparisons, `in`, `like`, nulls, arrays, JSON keys and a
    dynamic key holding values of every JSON type, arithmetic, joined by and / or / not) select
    the same rows in Sluice and milvus-lite, over sealed and growing rows."""
    name = "d_random_filters"
    data_rnd = random.Random(21)
    data = []
    for i in range(60):
        row = {
            "id": i,
            "vector": [data_rnd.random() for _ in range(DIM)],
            "n": data_rnd.choice([None, 0, 1, 2]),
            "t": data_rnd.choice(["a", "ab", "b", ""]) + str(data_rnd.randint(1, 2)),
            "b": data_rnd.random() < 0.5,
            "a": [data_rnd.randint(0, 3) for _ in range(data_rnd.randint(0, 3))],
            "meta": data_rnd.choice(
                [{"k": 1, "l": [0, 1]}, {"k": "s"}, {"k": 2.5, "l": [3]}, {"k": [1]}, {}, None]
            ),
        }
        mixed = data_rnd.choice([1, "s", False, [1], {"x": 1}, None, "absent"])
        if mixed != "absent":
            row["mixed"] = mixed
        data.append(row)
    for c in (sluice, lite):
        drop_if_exists(c, name)
        schema = c.create_schema(auto_id=False, enable_dynamic_field=True)
        schema.add_field("id", DataType.INT64, is_primary=True)
        schema.add_field("vector", DataType.FLOAT_VECTOR, dim=DIM)
        schema.add_field("n", DataType.INT64, nullable=True)
        schema.add_field("t", DataType.VARCHAR, max_length=8)
        schema.add_field("b", DataType.BOOL)
        schema.add_field("a", DataType.ARRAY, element_type=DataType.INT64, max_capacity=4)
        schema.add_field("meta", DataType.JSON, nullable=True)
        index = c.prepare_index_params()
        index.add_index(field_name="vector", index_type="FLAT", metric_type="L2")
        c.create_collection(name, schema=schema, index_params=index)
        c.insert(name, data[:30])
        c.flush(name)
        c.insert(name, data[30:])

    def ids(c, flt):
        try:
            found = c.query(name, filter=flt, output_fields=["id"], limit=100)
            return sorted(r["id"] for r in found)
        except MilvusException as e:
            return ("error", e.message)

    rnd = random.Random(8)
    differ = []
    selective = 0
    for _ in range(150):
        flt = _random_filter(rnd)
        mine, theirs = ids(sluice, flt), ids(lite, flt)
        if mine != theirs:
            differ.append((flt, mine, theirs))
        elif mine and len(mine) < 60:
            selective += 1
    assert not differ, "\n".join(
        f"{flt}\n  sluice {mine}\n  lite   {theirs}" for flt, mine, theirs in differ[:5]
    )
    assert selective > 50, selective  # most filters select some rows, not all


def test_random_writes_leave_the_same_rows_as_milvus_lite(sluice, lite):
    """Seeded random inserts, upserts, deletes by key and by filter, flushes and compactions
    (Sluice only: milvus-lite has neither) over a VARCHAR-keyed collection with a nullable field
    and a dynamic key: after every step both hold the same rows with the same values."""
    name = "d_random_writes"
    for c in (sluice, lite):
        drop_if_exists(c, name)
        schema = c.create_schema(auto_id=False, enable_dynamic_field=True)
        schema.add_field("pk", DataType.VARCHAR, is_primary=True, max_length=8)
        schema.add_field("vector", DataType.FLOAT_VECTOR, dim=DIM)
        schema.add_field("n", DataType.INT64)
        schema.add_field("p", DataType.VARCHAR, max_length=8, nullable=True)
        index = c.prepare_index_params()
        index.add_index(field_name="vector", index_type="FLAT", metric_type="L2")
        c.create_collection(name, schema=schema, index_params=index)
    rnd = random.Random(5)

    def row():
        r = {
            "pk": f"k{rnd.randint(0, 40)}",
            "vector": [rnd.random() for _ in range(DIM)],
            "n": rnd.randint(0, 9),
            # Every row has the dynamic key: a full upsert of a row without it keeps the old
            # row's key in milvus-lite, while Sluice (and a Milvus server) replaces the row.
            "extra": rnd.randint(0, 3),
        }
        if rnd.random() < 0.7:
            r["p"] = rnd.choice(["a", "b", None])
        return r

    def batch():
        return list({r["pk"]: r for r in (row() for _ in range(rnd.randint(1, 5)))}.values())

    def state(c):
        found = c.query(
            name,
            filter='pk != ""',
            output_fields=["pk", "n", "p", "extra"],
            limit=1000,
            consistency_level="Strong",
        )
        return sorted((r["pk"], r["n"], r.get("p"), r.get("extra")) for r in found)

    steps, kinds = [], set()
    for _ in range(120):
        op = rnd.random()
        if op < 0.35:
            # Inserting a key that has a row duplicates it in both; upserts cover replacing.
            present = {r[0] for r in state(lite)}
            rows_ = [r for r in batch() if r["pk"] not in present]
            if not rows_:
                continue
            step = ("insert", [r["pk"] for r in rows_])
            for c in (sluice, lite):
                c.insert(name, rows_)
        elif op < 0.6:
            rows_ = batch()
            step = ("upsert", [r["pk"] for r in rows_])
            for c in (sluice, lite):
                c.upsert(name, rows_)
        elif op < 0.75:
            keys = [f"k{rnd.randint(0, 40)}" for _ in range(rnd.randint(1, 4))]
            step = ("delete ids", keys)
            for c in (sluice, lite):
                c.delete(name, ids=keys)
        elif op < 0.85:
            flt = rnd.choice(
                ["n > 6", 'p == "a"', "extra == 1", 'pk like "k1%"', "p is null", "n in [0, 1]"]
            )
            step = ("delete filter", flt)
            for c in (sluice, lite):
                c.delete(name, filter=flt)
        elif op < 0.92:
            step = ("flush",)
            sluice.flush(name)
        else:
            step = ("compact",)
            sluice.flush(name)
            sluice.compact(name)
        steps.append(step)
        kinds.add(step[0])
        mine, theirs = state(sluice), state(lite)
        assert mine == theirs, (
            f"after {steps[-3:]}: sluice only {sorted(set(mine) - set(theirs))}, "
            f"lite only {sorted(set(theirs) - set(mine))}"
        )
    assert kinds == {"insert", "upsert", "delete ids", "delete filter", "flush", "compact"}, kinds
    assert state(sluice), "the steps leave some rows"


def test_random_searches_match_milvus_lite(sluice, lite):
    """Seeded random exact (FLAT) searches over each metric — one to three query vectors,
    limits, offsets, output fields and filters — over sealed and growing rows answer the same
    hits with the same distances in Sluice and milvus-lite. (Range and grouped searches are
    compared in their own tests: lite's answers differ there, see the closing notes.)"""
    data_rnd = random.Random(13)
    data = [
        {
            "id": i,
            "vector": [round(data_rnd.uniform(-1, 1), 3) for _ in range(DIM)],
            "g": data_rnd.randint(0, 5),
            "t": data_rnd.choice(["a", "b", "c"]),
            "x": round(data_rnd.uniform(0, 10), 2),
        }
        for i in range(200)
    ]
    metrics = ["L2", "IP", "COSINE"]
    for metric in metrics:
        name = f"d_random_search_{metric.lower()}"
        for c in (sluice, lite):
            drop_if_exists(c, name)
            schema = c.create_schema(auto_id=False)
            schema.add_field("id", DataType.INT64, is_primary=True)
            schema.add_field("vector", DataType.FLOAT_VECTOR, dim=DIM)
            schema.add_field("g", DataType.INT64)
            schema.add_field("t", DataType.VARCHAR, max_length=4)
            schema.add_field("x", DataType.DOUBLE)
            index = c.prepare_index_params()
            index.add_index(field_name="vector", index_type="FLAT", metric_type=metric)
            c.create_collection(name, schema=schema, index_params=index)
            c.insert(name, data[:120])
            c.flush(name)
            c.insert(name, data[120:])

    def run(c, name, queries, kw):
        try:
            found = c.search(name, data=queries, **kw)
        except MilvusException as e:
            return ("error", e.code)
        keep = set(kw["output_fields"])
        # Hits at equal distances may come in either order: each query's hits by id.
        return [
            {
                h["id"]: (h["distance"], sorted((k, v) for k, v in h["entity"].items() if k in keep))
                for h in hits
            }
            for hits in found
        ]

    def same(a, b):
        """The same hits with the same fields, distances equal up to float32 rounding."""
        if isinstance(a, tuple) or isinstance(b, tuple) or len(a) != len(b):
            return a == b
        return all(
            x.keys() == y.keys()
            and all(x[k][1] == y[k][1] and close([x[k][0]], [y[k][0]], 1e-4) for k in x)
            for x, y in zip(a, b)
        )

    def only(a, b):
        if isinstance(a, tuple) or isinstance(b, tuple) or len(a) != len(b):
            return a
        return [{k: v for k, v in x.items() if y.get(k) != v} for x, y in zip(a, b)]

    rnd = random.Random(3)
    differ, hits = [], 0
    for _ in range(120):
        metric = rnd.choice(metrics)
        name = f"d_random_search_{metric.lower()}"
        queries = [
            [round(rnd.uniform(-1, 1), 3) for _ in range(DIM)] for _ in range(rnd.randint(1, 3))
        ]
        kw = {
            "limit": rnd.choice([1, 3, 10, 50]),
            "output_fields": rnd.sample(["g", "t", "x"], rnd.randint(0, 3)),
            "search_params": {"metric_type": metric},
        }
        if rnd.random() < 0.5:
            kw["filter"] = rnd.choice(
                [
                    "g > 2",
                    't == "a"',
                    "x < 5 and g != 1",
                    "id < 100",
                    't in ["b", "c"]',
                    "not (g == 0)",
                ]
            )
        if rnd.random() < 0.3:
            kw["offset"] = rnd.choice([0, 2, 5])
        mine, theirs = run(sluice, name, queries, kw), run(lite, name, queries, kw)
        if not same(mine, theirs):
            differ.append((name, kw, mine, theirs))
        elif not isinstance(mine, tuple):
            hits += sum(len(q) for q in mine)
    assert not differ, "\n".join(
        f"{name} {kw}\n  sluice only {only(mine, theirs)}\n  lite only   {only(theirs, mine)}"
        for name, kw, mine, theirs in differ[:3]
    )
    assert hits > 1000, hits


def test_partition_key_mode_spreads_rows_over_its_partitions_in_sluice(sluice):
    """A partition key (milvus-lite names its partitions otherwise and ignores num_partitions):
    the collection gets `_default_0` … `_default_{n-1}`, rows are spread over them by their
    key, reads and deletes cover them all, and naming a partition — in an insert, a search, or
    partition DDL — is refused as in Milvus."""
    name = "d_partition_key"
    drop_if_exists(sluice, name)
    schema = sluice.create_schema(auto_id=False)
    schema.add_field("id", DataType.INT64, is_primary=True)
    schema.add_field("vector", DataType.FLOAT_VECTOR, dim=DIM)
    schema.add_field("tenant", DataType.VARCHAR, max_length=16, is_partition_key=True)
    index = sluice.prepare_index_params()
    index.add_index(field_name="vector", index_type="FLAT", metric_type="L2")
    sluice.create_collection(name, schema=schema, index_params=index, num_partitions=4)
    parts = sluice.list_partitions(name)
    assert parts == ["_default_0", "_default_1", "_default_2", "_default_3"], parts
    described = sluice.describe_collection(name)
    assert {f["name"]: f.get("is_partition_key") for f in described["fields"]}["tenant"] is True
    assert described["num_partitions"] == 4
    data = rows(30, seed=101)
    sluice.insert(name, [dict(id=r["id"], vector=r["vector"], tenant=f"t{r['id'] % 5}") for r in data])
    assert sorted(r["id"] for r in sluice.query(name, filter='tenant == "t1"')) == [1, 6, 11, 16, 21, 26]
    per_partition = [int(sluice.get_partition_stats(name, p)["row_count"]) for p in parts]
    assert sum(per_partition) == 30 and sum(1 for n in per_partition if n) > 1, per_partition
    hits = sluice.search(name, data=[data[3]["vector"]], limit=1, filter='tenant == "t3"')
    assert hits[0][0]["id"] == 3
    for call in [
        lambda: sluice.insert(name, [dict(id=99, vector=data[0]["vector"], tenant="x")], partition_name="_default_0"),
        lambda: sluice.search(name, data=[data[0]["vector"]], limit=1, partition_names=["_default_0"]),
        lambda: sluice.query(name, filter="id >= 0", partition_names=["_default_1"]),
        lambda: sluice.create_partition(name, "extra"),
        lambda: sluice.drop_partition(name, "_default_1"),
        lambda: sluice.load_partitions(name, ["_default_1"]),
    ]:
        with pytest.raises(MilvusException) as e:
            call()
        assert "partition key mode" in e.value.message, e.value
    assert sluice.list_partitions(name) == parts
    sluice.delete(name, filter='tenant == "t2"')
    assert sluice.query(name, filter="", output_fields=["count(*)"])[0]["count(*)"] == 24
    # Without num_partitions: 16, as in Milvus.
    drop_if_exists(sluice, "d_partition_key_16")
    sluice.create_collection("d_partition_key_16", schema=schema, index_params=index)
    assert len(sluice.list_partitions("d_partition_key_16")) == 16
    bad = sluice.create_schema(auto_id=False)
    bad.add_field("id", DataType.INT64, is_primary=True)
    bad.add_field("vector", DataType.FLOAT_VECTOR, dim=DIM)
    bad.add_field("score", DataType.FLOAT, is_partition_key=True)
    with pytest.raises(MilvusException):
        sluice.create_collection("d_partition_key_bad", schema=bad)
    assert not sluice.has_collection("d_partition_key_bad")


@pytest.mark.parametrize(
    "flt",
    [
        "owner == 7",
        "7 == owner",
        "owner == -3",
        "owner in [1, 2, 40]",
        "owner in [5, 6] and id > 20",
        "id < 50 && owner == 11",
        "owner in [1, 2, 3] and owner in [3, 4]",
        "owner == 1 and owner == 2",
        "owner in []",
        "owner == 7 or id < 5",
        "not owner == 7",
        "(owner == 7) and id >= 0",
        "owner + 1 == 8",
        'owner == 7 and color like "r%"',
    ],
)
def test_partition_key_filters_read_the_same_rows_as_milvus(sluice, lite, flt):
    """A filter that pins an INT64 partition key reads only the partitions its values hash to;
    the rows found, by query and by search, are milvus-lite's (which reads every partition)."""
    name = "d_pkey_prune"

    def setup(c):
        if not c.has_collection(name):
            schema = c.create_schema(auto_id=False)
            schema.add_field("id", DataType.INT64, is_primary=True)
            schema.add_field("vector", DataType.FLOAT_VECTOR, dim=DIM)
            schema.add_field("owner", DataType.INT64, is_partition_key=True)
            schema.add_field("color", DataType.VARCHAR, max_length=8)
            index = c.prepare_index_params()
            index.add_index(field_name="vector", index_type="FLAT", metric_type="L2")
            c.create_collection(name, schema=schema, index_params=index, num_partitions=8)
            data = [
                dict(id=r["id"], vector=r["vector"], color=r["color"], owner=(r["id"] % 23) - 3)
                for r in rows(80, seed=103)
            ]
            assert c.insert(name, data[:40])["insert_count"] == 40
            c.flush(name)
            assert c.insert(name, data[40:])["insert_count"] == 40

    def f(c):
        setup(c)
        found = sorted(r["id"] for r in c.query(name, filter=flt, output_fields=["owner"], limit=100))
        hits = c.search(name, data=[[0.5] * DIM], limit=5, filter=flt)
        return found, [h["id"] for h in hits[0]]

    got, want = both(sluice, lite, f)
    assert got == want
    assert got[0] != "error", got


def test_float16_and_bfloat16_vectors_are_searched_and_returned_in_sluice(sluice):
    """FLOAT16_VECTOR and BFLOAT16_VECTOR fields (milvus-lite refuses both): kept as 32-bit
    floats, described with their type, searched with 16-bit query vectors, and returned as the
    16-bit bytes that were inserted."""
    import struct

    import numpy as np

    def bf16(values):
        """bfloat16 bytes: the high halves of the float32s (exact for the values used here)."""
        return b"".join(struct.pack("<f", v)[2:] for v in values)

    rnd = np.random.default_rng(7)
    for ty, name in [(DataType.FLOAT16_VECTOR, "d_f16"), (DataType.BFLOAT16_VECTOR, "d_bf16")]:
        drop_if_exists(sluice, name)
        schema = sluice.create_schema(auto_id=False)
        schema.add_field("id", DataType.INT64, is_primary=True)
        schema.add_field("v", ty, dim=4)
        index = sluice.prepare_index_params()
        index.add_index(field_name="v", index_type="FLAT", metric_type="L2")
        sluice.create_collection(name, schema=schema, index_params=index)
        assert sluice.describe_collection(name)["fields"][1]["type"] == ty
        if ty == DataType.FLOAT16_VECTOR:
            vecs = [rnd.random(4).astype(np.float16) for _ in range(20)]
            raw = [v.tobytes() for v in vecs]
        else:
            # Multiples of 1/8 are exact in bfloat16.
            floats = [[float(x) / 8 for x in rnd.integers(0, 8, 4)] for _ in range(20)]
            raw = [bf16(f) for f in floats]
            vecs = raw
        sluice.insert(name, [{"id": i, "v": vecs[i]} for i in range(20)])
        hits = sluice.search(name, data=[vecs[3]], anns_field="v", limit=1, output_fields=["v"])
        assert hits[0][0]["id"] == 3 and hits[0][0]["distance"] == 0.0, hits
        assert hits[0][0]["entity"]["v"] == raw[3]
        got = sluice.query(name, filter="id == 5", output_fields=["v"])
        assert got[0]["v"] == [raw[5]], got


def _parquet_files(data_dir, collection_id):
    """The data files of a collection's segments: {segment id: [file names]}."""
    root = data_dir / "storage" / "storage" / "segments" / str(collection_id)
    out = {}
    for f in root.glob("*/*/*.parquet"):
        out.setdefault(int(f.parent.name), []).append(f.name)
    return {k: sorted(v) for k, v in out.items()}


def _delete_files(data_dir, collection_id):
    """The names of a collection's delete files, every vchannel."""
    root = data_dir / "storage" / "storage" / "deletes" / str(collection_id)
    return sorted(f.name for f in root.glob("*/*.parquet"))


def _wait_for(what, check, timeout=30):
    """`check()` once it is truthy; fails with `what` and the last value after `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        got = check()
        if got:
            return got
        assert time.monotonic() < deadline, (what, got)
        time.sleep(0.2)


def _persisted(c, name, ready, timeout=60):
    """{segment id: rows} of the collection's segments in Parquet, once `ready` holds of it."""
    deadline = time.monotonic() + timeout
    while True:
        got = {seg.segment_id: seg.num_rows for seg in c.list_persistent_segments(name)}
        if ready(got):
            return got
        assert time.monotonic() < deadline, got
        time.sleep(0.2)


def _wait_compacted(c, job, timeout=60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if c.get_compaction_state(job) == "Completed":
            return
        time.sleep(0.2)
    raise AssertionError(f"compaction {job} did not complete")


def test_compaction_removes_deleted_rows_from_storage_and_reads_stay_the_same():
    """compact / get_compaction_state / get_compaction_plans: segments flushed with rows that
    flushed deletes removed are rewritten without them (smaller files, fewer rows listed; the
    replaced files deleted a moment later), the deletes, needless now, go from storage too, and
    every query and search answers as before — also after a restart. A varchar primary key; an
    upsert's new row stays."""
    from pathlib import Path

    env = {"SLUICE_STORAGE__COMPACTION_SWEEP_AFTER_MS": "300"}
    with tempfile.TemporaryDirectory(prefix="sluice-compact-") as d:
        s = Server(Path(d), env=env)
        s.start()
        name = "compact_varchar"
        try:
            c = MilvusClient(uri=f"http://{s.milvus}")
            schema = c.create_schema(auto_id=False)
            schema.add_field("pk", DataType.VARCHAR, is_primary=True, max_length=16)
            schema.add_field("vector", DataType.FLOAT_VECTOR, dim=DIM)
            schema.add_field("n", DataType.INT64)
            c.create_collection(name, schema=schema)
            rnd = random.Random(5)
            data = [
                {"pk": f"k{i:04}", "vector": [rnd.random() for _ in range(DIM)], "n": i}
                for i in range(600)
            ]
            c.insert(name, data)
            c.flush(name)
            c.delete(name, filter="n < 400")
            c.upsert(name, [{"pk": "k0450", "vector": [0.5] * DIM, "n": -1}])
            c.flush(name)
            cid = c.describe_collection(name)["collection_id"]
            before_files = _parquet_files(Path(d), cid)
            before_rows = _persisted(c, name, lambda rows_: sum(rows_.values()) == 601)
            # Written just after the segments' manifests.
            _wait_for("the deletes flushed to a file", lambda: _delete_files(Path(d), cid))
            q = [[0.5] * DIM, [0.1] * DIM]

            def reads():
                rows_ = c.query(name, filter="n >= -10", output_fields=["pk", "n"], limit=1000)
                hits = c.search(name, q, limit=10, output_fields=["n"])
                return (
                    sorted((r["pk"], r["n"]) for r in rows_),
                    [[(h["pk"], round(h["distance"], 5)) for h in hs] for hs in hits],
                )

            want = reads()
            assert len(want[0]) == 200 and ("k0450", -1) in want[0]

            with pytest.raises(MilvusException):
                c.compact(name, is_clustering=True)
            job = c.compact(name)
            _wait_compacted(c, job)
            plans = c.get_compaction_plans(job)
            rewritten = {p.sources[0] for p in plans.plans}
            assert rewritten, plans
            assert reads() == want
            after_rows = _persisted(c, name, lambda rows_: True)
            assert sum(after_rows.values()) < sum(before_rows.values())
            # The segment holding the 600 first rows kept 199 of them (k0450's old row went too).
            assert sorted(after_rows.values()) == sorted(
                [199 if before_rows[k] == 600 else v for k, v in before_rows.items()]
            ), (before_rows, after_rows)
            # Within the sweep delay the replaced files go; the compacted ones are smaller.
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                files = _parquet_files(Path(d), cid)
                if all(len(files.get(seg, [])) == 1 for seg in rewritten):
                    break
                time.sleep(0.2)
            for seg in rewritten:
                assert files[seg][0].startswith("data.c"), files
                new = Path(d) / "storage" / "storage" / "segments" / str(cid)
                (path,) = list(new.glob(f"*/{seg}/data.c*.parquet"))
                assert path.stat().st_size > 0
            assert before_files != files
            # Every deleted row was left out, so no delete is needed any more: the delete files
            # are merged into none and deleted too.
            _wait_for("delete files swept", lambda: _delete_files(Path(d), cid) == [])
            # Nothing left to remove: a second compaction rewrites nothing.
            job2 = c.compact(name)
            _wait_compacted(c, job2)
            assert list(c.get_compaction_plans(job2).plans) == []
            # list_compaction_tasks: the collection's compactions, their plans together.
            tasks = c.list_compaction_tasks(name)
            assert tasks.state.name == "Completed", tasks
            assert sorted((p.trigger_id, p.sources[0]) for p in tasks.plans) == sorted(
                (job, s) for s in rewritten
            ), tasks
            assert all(p.state.name == "Completed" for p in tasks.plans), tasks
            c.create_collection("compact_none", dimension=DIM)
            assert list(c.list_compaction_tasks("compact_none").plans) == []
            with pytest.raises(MilvusException, match="not found"):
                c.list_compaction_tasks("compact_missing")
            c.close()
        finally:
            s.stop()
        s = Server(Path(d), env=env)
        s.start()
        try:
            c = MilvusClient(uri=f"http://{s.milvus}")
            c.load_collection(name)
            assert reads() == want
            c.close()
        finally:
            s.stop()


def _metric(addr, name):
    """The sum of every sample of `name` on the Prometheus endpoint at `addr`."""
    import urllib.request

    with urllib.request.urlopen(f"http://{addr}/metrics", timeout=10) as r:
        body = r.read().decode()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in body.splitlines()
        if line.startswith(name + "{") or line.startswith(name + " ")
    )


def test_delegator_memory_is_reported_and_deletes_of_compacted_rows_are_forgotten():
    """The delegators' rows, segments and deletes held are Prometheus gauges; after a
    compaction leaves the deleted rows out, the delegator forgets their deletes (they hide
    nothing any more) and holds only the rows left."""
    import socket
    from pathlib import Path

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        metrics = f"127.0.0.1:{sock.getsockname()[1]}"
    env = {
        "SLUICE_METRICS_LISTEN": metrics,
        "SLUICE_STORAGE__COMPACTION_SWEEP_AFTER_MS": "300",
    }
    with tempfile.TemporaryDirectory(prefix="sluice-mem-") as d:
        s = Server(Path(d), env=env)
        s.start()
        try:
            c = MilvusClient(uri=f"http://{s.milvus}")
            c.create_collection("mem_c", dimension=DIM)
            c.insert("mem_c", rows(200, seed=51))
            c.flush("mem_c")
            c.delete("mem_c", ids=list(range(0, 200, 2)))
            c.flush("mem_c")
            held = lambda: (  # noqa: E731
                _metric(metrics, "sluice_query_rows"),
                _metric(metrics, "sluice_query_deletes_held"),
                _metric(metrics, "sluice_query_segments"),
            )
            _wait_for("200 rows and 100 deletes held", lambda: held()[:2] == (200, 100))
            assert held()[2] >= 1
            job = c.compact("mem_c")
            _wait_compacted(c, job)
            _wait_for("100 rows and no delete held", lambda: held()[:2] == (100, 0))
            got = sorted(r["id"] for r in c.query("mem_c", filter="id >= 0", limit=1000))
            assert got == list(range(1, 200, 2))
            c.close()
        finally:
            s.stop()


def test_storage_garbage_no_manifest_names_is_collected():
    """Objects no manifest names (a crash's leftovers: a dropped collection's files, an
    unnamed segment directory, an unnamed delete file) are deleted by the node's garbage
    collection once older than the grace period; committed data stays and reads the same,
    also after a restart."""
    from pathlib import Path

    env = {
        "SLUICE_STORAGE__GC_INTERVAL_MS": "300",
        "SLUICE_STORAGE__GC_GRACE_MS": "1000",
        "SLUICE_STORAGE__COMPACTION_SWEEP_AFTER_MS": "1000",
    }
    with tempfile.TemporaryDirectory(prefix="sluice-gc-") as d:
        root = Path(d) / "storage" / "storage"
        s = Server(Path(d), env=env)
        s.start()
        try:
            c = MilvusClient(uri=f"http://{s.milvus}")
            c.create_collection("gc_c", dimension=DIM)
            c.insert("gc_c", rows(40, seed=41))
            c.flush("gc_c")
            c.delete("gc_c", ids=[1, 2, 3])
            c.flush("gc_c")
            _persisted(c, "gc_c", lambda rows_: sum(rows_.values()) == 40)
            cid = c.describe_collection("gc_c")["collection_id"]
            # The delete file is written just after the segment's manifest is listed.
            _wait_for("the deletes flushed", lambda: list(root.glob("deletes/*/*/*.parquet")))
            committed = sorted(p.relative_to(root) for p in root.rglob("*.parquet"))
            (live,) = list((root / "segments" / str(cid)).iterdir())
            orphans = [
                root / "segments" / "999999" / "1" / "5" / "data.parquet",
                live / "888888" / "data.parquet",
                root / "deletes" / "999999" / "x_999999v0" / "7.parquet",
                root / "deletes" / str(cid) / "orphan_v0" / "9.parquet",
            ]
            for o in orphans:
                o.parent.mkdir(parents=True, exist_ok=True)
                o.write_bytes(b"left by a crash")
            _wait_for("orphans collected", lambda: not any(o.exists() for o in orphans))
            left = sorted(p.relative_to(root) for p in root.rglob("*.parquet"))
            assert left == committed, (committed, left)
            want = sorted(r["id"] for r in c.query("gc_c", filter="id >= 0", limit=100))
            assert want == [i for i in range(40) if i not in (1, 2, 3)]
            c.close()
        finally:
            s.stop()
        s = Server(Path(d), env=env)
        s.start()
        try:
            c = MilvusClient(uri=f"http://{s.milvus}")
            c.load_collection("gc_c")
            assert sorted(r["id"] for r in c.query("gc_c", filter="id >= 0", limit=100)) == want
            c.close()
        finally:
            s.stop()


def test_compaction_on_its_own_and_of_expired_rows():
    """With compaction on its own every half second (no retention, 30% removable), a segment
    with half its rows deleted is rewritten without anyone asking and its delete file goes; two
    delete files of too few rows for a rewrite merge into one that still applies after a
    restart; a collection whose TTL expired every row compacts to empty segments, and reads
    still answer nothing."""
    from pathlib import Path

    env = {
        "SLUICE_STORAGE__COMPACTION_INTERVAL_MS": "500",
        "SLUICE_STORAGE__COMPACTION_RETENTION_MS": "0",
        "SLUICE_STORAGE__COMPACTION_MIN_REMOVED_RATIO": "0.3",
        "SLUICE_STORAGE__COMPACTION_SWEEP_AFTER_MS": "300",
    }
    with tempfile.TemporaryDirectory(prefix="sluice-autocompact-") as d:
        s = Server(Path(d), env=env)
        s.start()
        try:
            c = MilvusClient(uri=f"http://{s.milvus}")
            c.create_collection("auto_c", dimension=DIM)
            c.insert("auto_c", rows(100, seed=31))
            c.flush("auto_c")
            c.delete("auto_c", ids=list(range(0, 100, 2)))
            c.flush("auto_c")
            _persisted(c, "auto_c", lambda rows_: list(rows_.values()) == [50], timeout=30)
            # The index counts the committed rows, none pending.
            (index,) = c.list_indexes("auto_c")
            described = c.describe_index("auto_c", index)
            assert (described["total_rows"], described["indexed_rows"]) == (50, 50), described
            assert described["pending_index_rows"] == 0, described
            got = sorted(r["id"] for r in c.query("auto_c", filter="id >= 0", limit=1000))
            assert got == list(range(1, 100, 2))
            cid = c.describe_collection("auto_c")["collection_id"]
            _wait_for("auto_c's deletes merged away", lambda: _delete_files(Path(d), cid) == [])

            # Two delete files of 10% each: too few rows for a rewrite, but the two files merge
            # into one still holding all 20 deletes, which keep applying after a restart.
            c.create_collection("few_c", dimension=DIM)
            c.insert("few_c", rows(100, seed=33))
            c.flush("few_c")
            c.delete("few_c", ids=list(range(10)))
            c.flush("few_c")
            c.delete("few_c", ids=list(range(50, 60)))
            c.flush("few_c")
            few = c.describe_collection("few_c")["collection_id"]
            merged = _wait_for(
                "few_c's two delete files merged into one",
                lambda: (lambda f: f if len(f) == 1 and ".m" in f[0] else None)(
                    _delete_files(Path(d), few)
                ),
            )
            listed = _persisted(c, "few_c", lambda rows_: True)
            assert list(listed.values()) == [100], ("no segment was rewritten", listed)
            c.close()
        finally:
            s.stop()
        s = Server(Path(d), env=env)
        s.start()
        try:
            c = MilvusClient(uri=f"http://{s.milvus}")
            c.load_collection("few_c")
            got = sorted(r["id"] for r in c.query("few_c", filter="id >= 0", limit=1000))
            assert got == [i for i in range(100) if not (i < 10 or 50 <= i < 60)]
            assert _delete_files(Path(d), few) == merged

            c.create_collection("ttl_c", dimension=DIM, properties={"collection.ttl.seconds": 1})
            c.insert("ttl_c", rows(30, seed=32))
            c.flush("ttl_c")
            _persisted(c, "ttl_c", lambda rows_: sum(rows_.values()) == 30)
            time.sleep(2)
            assert c.query("ttl_c", filter="id >= 0") == []
            job = c.compact("ttl_c")
            _wait_compacted(c, job)
            listed = _persisted(c, "ttl_c", lambda rows_: True)
            assert listed and all(n == 0 for n in listed.values()), listed
            assert c.query("ttl_c", filter="id >= 0") == []
            assert c.search("ttl_c", [[0.5] * DIM], limit=5) == [[]]
            c.close()
        finally:
            s.stop()


def test_pymilvus_authenticates_with_the_servers_token():
    """With `auth.token` set, pymilvus connects with that token as its `token` (or as `user` and
    `password` when the token is `user:password`, as Milvus's are); without it, or with another,
    calls fail with UNAUTHENTICATED and change nothing."""
    from pathlib import Path

    import grpc

    with tempfile.TemporaryDirectory(prefix="sluice-milvus-auth-") as d:
        s = Server(Path(d), env={"SLUICE_AUTH__TOKEN": "root:Milvus"})
        s.start()
        try:
            uri = f"http://{s.milvus}"
            c = MilvusClient(uri=uri, token="root:Milvus")
            c.create_collection(collection_name="auth_c", dimension=DIM)
            c.insert("auth_c", rows(4, seed=3))
            by_user = MilvusClient(uri=uri, user="root", password="Milvus")
            got = by_user.query("auth_c", filter="id >= 0", output_fields=["count(*)"])
            assert got[0]["count(*)"] == 4

            for kw in [{}, {"token": "root:wrong"}, {"user": "root", "password": "milvus"}]:
                with pytest.raises(Exception) as e:
                    bad = MilvusClient(uri=uri, timeout=5, **kw)
                    bad.create_collection(collection_name="auth_bad", dimension=DIM)
                # pymilvus wraps the refusal of its first call (connect) in a MilvusException.
                # (pymilvus raises some errors `from` themselves: each link is looked at once.)
                cause, codes, seen = e.value, [], set()
                while cause is not None and id(cause) not in seen:
                    seen.add(id(cause))
                    if isinstance(cause, grpc.RpcError):
                        codes.append(cause.code())
                    cause = cause.__cause__
                assert grpc.StatusCode.UNAUTHENTICATED in codes, (kw, repr(e.value), codes)
            assert c.list_collections() == ["auth_c"]
            c.close()
            by_user.close()
        finally:
            s.stop()


# --- sparse float vectors ----------------------------------------------------------------------


def sparse_collection(c, name, data, index_type="SPARSE_INVERTED_INDEX", params=None):
    """A collection of an INT64 key, a dense vector, a sparse vector and a tag; `data` written
    in two parts with a flush between (sealed and growing rows)."""
    drop_if_exists(c, name)
    schema = c.create_schema(auto_id=False)
    schema.add_field("id", DataType.INT64, is_primary=True)
    schema.add_field("dense", DataType.FLOAT_VECTOR, dim=DIM)
    schema.add_field("sparse", DataType.SPARSE_FLOAT_VECTOR)
    schema.add_field("tag", DataType.INT64)
    index = c.prepare_index_params()
    index.add_index(field_name="dense", index_type="FLAT", metric_type="L2")
    index.add_index(
        field_name="sparse", index_type=index_type, metric_type="IP", params=params or {}
    )
    c.create_collection(name, schema=schema, index_params=index)
    c.insert(name, data[: len(data) // 2])
    c.flush(name)
    c.insert(name, data[len(data) // 2 :])


def sparse_rows(n, seed):
    rnd = random.Random(seed)
    return [
        {
            "id": i,
            "dense": [round(rnd.uniform(-1, 1), 3) for _ in range(DIM)],
            # 1-6 weights over 40 indices (0 to 1, none 0), so rows share indices.
            "sparse": {
                k: round(rnd.uniform(0.01, 1), 3) for k in rnd.sample(range(40), rnd.randint(1, 6))
            },
            "tag": i % 4,
        }
        for i in range(n)
    ]


def test_sparse_vectors_are_stored_and_searched_like_milvus(sluice, lite):
    """SPARSE_FLOAT_VECTOR fields: written as {index: weight}, read back the same, searched by
    inner product (over sealed and growing rows, with filters, limits, offsets and output
    fields), fused with a dense field in a hybrid search, and described — as milvus-lite does."""
    from pymilvus import AnnSearchRequest, RRFRanker

    data = sparse_rows(120, seed=21)
    rnd = random.Random(22)
    queries = [
        {k: round(rnd.uniform(0.1, 1), 3) for k in rnd.sample(range(40), rnd.randint(1, 8))}
        for _ in range(12)
    ]

    def f(c):
        sparse_collection(c, "d_sparse", data)
        out = {}
        got = c.query("d_sparse", "id in [0, 7, 64, 119]", output_fields=["sparse", "tag"])
        out["rows"] = sorted(
            (r["id"], sorted((int(k), v) for k, v in r["sparse"].items()), r["tag"]) for r in got
        )
        searches = []
        for i, q in enumerate(queries):
            kw = dict(anns_field="sparse", limit=1 + i % 6, output_fields=["tag"])
            if i % 3 == 1:
                kw["filter"] = f"tag != {i % 4}"
            if i % 4 == 2:
                kw["search_params"] = {"offset": 2}
            found = c.search("d_sparse", data=[q, queries[(i + 5) % 12]], **kw)
            # Equal scores may come in either order: each query's hits as a map.
            searches.append(
                [{h["id"]: (round(h["distance"], 4), h["entity"]["tag"]) for h in hits} for hits in found]
            )
        out["searches"] = searches
        # A weight of 0 matches nothing.
        out["zero"] = c.search("d_sparse", data=[{1: 0.0}], anns_field="sparse", limit=5)[0]
        out["zero"] = [h["id"] for h in out["zero"]]
        reqs = [
            AnnSearchRequest([data[3]["dense"]], "dense", {"metric_type": "L2"}, limit=8),
            AnnSearchRequest([data[3]["sparse"]], "sparse", {"metric_type": "IP"}, limit=8),
        ]
        fused = c.hybrid_search("d_sparse", reqs, RRFRanker(), limit=20)
        out["hybrid"] = sorted(h["id"] for h in fused[0])
        field = {f["name"]: f for f in c.describe_collection("d_sparse")["fields"]}["sparse"]
        out["type"] = field["type"]
        index = c.describe_index("d_sparse", "sparse")
        out["index"] = (index["index_type"], index["metric_type"])
        return out

    s, l = both(sluice, lite, f)
    assert s == l
    first = s["rows"][0]
    assert first[0] == 0 and [(k, round(v, 3)) for k, v in first[1]] == sorted(data[0]["sparse"].items())
    assert s["type"] == DataType.SPARSE_FLOAT_VECTOR
    assert all(len(q) > 0 for search in s["searches"] for q in search)
    # The top hit of a row's own sparse vector scores at least its own squared norm.
    own = sluice.search("d_sparse", data=[data[9]["sparse"]], anns_field="sparse", limit=1)
    assert own[0][0]["distance"] >= sum(w * w for w in data[9]["sparse"].values()) - 1e-4
    assert 3 in s["hybrid"]


def test_sparse_vectors_are_checked_and_drop_ratio_search_is_taken_in_sluice(sluice):
    """Bad sparse rows and queries are refused with a reason and write nothing; a sparse field
    takes only sparse indexes by IP; drop_ratio_search leaves out a query's smallest weights;
    a search by primary keys uses the rows' sparse vectors; the rows outlive a release and load
    of the collection (read back from their segments)."""
    data = sparse_rows(40, seed=5)
    sparse_collection(
        sluice, "s_sparse_checks", data, "SPARSE_WAND", {"drop_ratio_build": 0.2, "inverted_index_algo": "DAAT_MAXSCORE"}
    )
    name = "s_sparse_checks"
    for bad in [{1: -0.5}, {2**32 - 1: 1.0}, {3: float("nan")}]:
        with pytest.raises(MilvusException):
            sluice.insert(name, [{**data[0], "id": 1000, "sparse": bad}])
    assert sluice.query(name, "id == 1000") == []
    for index_type, metric, params in [
        ("HNSW", "IP", {}),
        ("SPARSE_INVERTED_INDEX", "L2", {}),
        ("SPARSE_INVERTED_INDEX", "BM25", {}),
        ("SPARSE_INVERTED_INDEX", "IP", {"drop_ratio_build": 1.5}),
        ("SPARSE_INVERTED_INDEX", "IP", {"inverted_index_algo": "FAST"}),
        ("SPARSE_INVERTED_INDEX", "IP", {"M": 8}),
    ]:
        index = sluice.prepare_index_params()
        index.add_index(field_name="sparse", index_type=index_type, metric_type=metric, params=params)
        with pytest.raises(MilvusException):
            sluice.create_index(name, index)
    described = sluice.describe_index(name, "sparse")
    assert (described["index_type"], described["metric_type"]) == ("SPARSE_WAND", "IP")
    assert described["params"] == {"drop_ratio_build": 0.2, "inverted_index_algo": "DAAT_MAXSCORE"}, described
    with pytest.raises(MilvusException):
        sluice.search(name, data=[{1: 1.0}], anns_field="sparse", search_params={"metric_type": "L2"})
    with pytest.raises(MilvusException):
        sluice.search(name, data=[{1: 1.0}], anns_field="dense")
    with pytest.raises(MilvusException):
        sluice.search(name, data=[[0.1] * DIM], anns_field="sparse")
    with pytest.raises(MilvusException):
        sluice.search(name, data=[{1: 1.0}], anns_field="sparse", search_params={"params": {"drop_ratio_search": 1}})
    with pytest.raises(MilvusException):
        sluice.search(name, data=[{1: 1.0}], anns_field="sparse", filter="sparse is null")

    # Index 7 carries 0.9 of the query, index 11 0.1: with half the weights dropped only
    # rows with index 7 score, and each by its weight there.
    q = {7: 0.9, 11: 0.1}
    whole = sluice.search(name, data=[q], anns_field="sparse", limit=40, output_fields=["sparse"])[0]
    dropped = sluice.search(
        name, data=[q], anns_field="sparse", limit=40, output_fields=["sparse"],
        search_params={"params": {"drop_ratio_search": 0.5}},
    )[0]
    with_7 = {r["id"]: r["sparse"][7] for r in data if 7 in r["sparse"]}
    with_11 = {r["id"] for r in data if 11 in r["sparse"]}
    assert with_7 and with_11 - set(with_7)
    assert {h["id"] for h in whole} == set(with_7) | with_11
    assert {h["id"]: round(h["distance"], 4) for h in dropped} == {
        i: round(0.9 * w, 4) for i, w in with_7.items()
    }

    by_key = sluice.search(name, ids=[3], anns_field="sparse", limit=1)
    assert by_key[0][0]["id"] == 3 or by_key[0][0]["distance"] >= sum(
        w * w for w in data[3]["sparse"].values()
    ) - 1e-4

    # A partial update of another field keeps the stored sparse vector.
    sluice.upsert(name, [{"id": 5, "tag": 99}], partial_update=True)
    got = sluice.query(name, "id == 5", output_fields=["sparse", "tag"])
    assert got[0]["tag"] == 99
    assert {int(k): round(v, 3) for k, v in got[0]["sparse"].items()} == data[5]["sparse"]

    sluice.flush(name)
    sluice.release_collection(name)
    sluice.load_collection(name)
    back = sluice.query(name, "id >= 0", output_fields=["sparse"], limit=100)
    assert {r["id"]: {int(k): v for k, v in r["sparse"].items()} for r in back} == {
        r["id"]: {k: pytest.approx(v, abs=1e-6) for k, v in r["sparse"].items()} for r in data
    }


def test_a_varchar_primary_key_takes_generated_values_as_in_milvus(sluice):
    """auto_id on a VARCHAR primary key (Milvus's hybrid search tutorials create one): each row
    gets the generated integer's decimal text, returned by insert, readable and deletable by
    it; a generated key longer than max_length is refused like any other value. (milvus-lite
    refuses the schema; Milvus has taken it since 2.3.)"""

    def generated_key_collection(name, max_length, add_vector):
        drop_if_exists(sluice, name)
        schema = sluice.create_schema(auto_id=True)
        schema.add_field("pk", DataType.VARCHAR, is_primary=True, max_length=max_length)
        add_vector(schema)
        sluice.create_collection(name, schema=schema)

    def dense(s):
        s.add_field("vector", DataType.FLOAT_VECTOR, dim=DIM)

    name = "s_varchar_auto_id"
    generated_key_collection(name, 100, dense)
    assert sluice.describe_collection(name)["auto_id"] is True
    got = sluice.insert(name, [{"vector": [0.1 * i] * DIM} for i in range(5)])
    ids = list(got["ids"])
    assert len(ids) == 5 and len(set(ids)) == 5
    assert all(isinstance(i, str) and int(i) > 0 for i in ids)
    more = list(sluice.insert(name, [{"vector": [0.9] * DIM}])["ids"])
    assert int(more[0]) > max(int(i) for i in ids)
    rows = sluice.query(name, f"pk in {json.dumps(ids[:2])}", output_fields=["pk"])
    assert sorted(r["pk"] for r in rows) == sorted(ids[:2])
    sluice.delete(name, ids=ids[:3])
    assert sorted(r["pk"] for r in sluice.query(name, "pk != ''")) == sorted(ids[3:] + more)

    # A generated key and one vector field of each kind but FLOAT_VECTOR: the rows are
    # counted from the vectors alone.
    for field, make, value in [
        ("sparse", lambda s: s.add_field("sparse", DataType.SPARSE_FLOAT_VECTOR), {3: 0.5}),
        ("half", lambda s: s.add_field("half", DataType.FLOAT16_VECTOR, dim=DIM), [0.5] * DIM),
    ]:
        only = f"s_auto_id_only_{field}"
        generated_key_collection(only, 100, make)
        got = sluice.insert(only, [{field: value}, {field: value}])
        assert got["insert_count"] == 2 and len(set(got["ids"])) == 2, got

    short = "s_varchar_auto_id_short"
    generated_key_collection(short, 1, dense)
    with pytest.raises(MilvusException, match="max_length"):
        sluice.insert(short, [{"vector": [0.5] * DIM}])
    assert sluice.query(short, "", output_fields=["count(*)"])[0]["count(*)"] == 0


WORDS = (
    "river stone bridge lantern harbor meadow signal copper orchard canyon glacier "
    "ember falcon prairie tundra".split()
)


def text_rows(n, seed, start=0):
    rnd = random.Random(seed)
    out = []
    for i in range(start, start + n):
        words = [rnd.choice(WORDS) for _ in range(rnd.randint(1, 14))]
        # Capitals and punctuation: the standard analyzer lowercases and splits on them.
        words = [w.upper() if rnd.random() < 0.1 else w for w in words]
        out.append({"id": i, "text": ", ".join(words) + ".", "tag": i % 4, "dense": [rnd.random() for _ in range(4)]})
    return out


def bm25_collection(c, name, data, k1=1.5, b=0.75):
    """A collection with a BM25 function from `text` to `sparse` (and a dense field), holding
    `data`; k1 1.5 because milvus-lite takes no other."""
    from pymilvus import Function, FunctionType

    drop_if_exists(c, name)
    schema = c.create_schema()
    schema.add_field("id", DataType.INT64, is_primary=True)
    schema.add_field("text", DataType.VARCHAR, max_length=2000, enable_analyzer=True)
    schema.add_field("sparse", DataType.SPARSE_FLOAT_VECTOR)
    schema.add_field("tag", DataType.INT64)
    schema.add_field("dense", DataType.FLOAT_VECTOR, dim=4)
    schema.add_function(
        Function(name="text_bm25", function_type=FunctionType.BM25, input_field_names=["text"], output_field_names=["sparse"])
    )
    index = c.prepare_index_params()
    index.add_index(
        field_name="sparse",
        index_type="SPARSE_INVERTED_INDEX",
        metric_type="BM25",
        params={"inverted_index_algo": "DAAT_MAXSCORE", "bm25_k1": k1, "bm25_b": b},
    )
    index.add_index(field_name="dense", index_type="FLAT", metric_type="L2")
    c.create_collection(name, schema=schema, index_params=index)
    c.insert(name, data)


def test_full_text_search_scores_like_milvus(sluice, lite):
    """A BM25 function: text rows in, text queries scored by BM25 (one segment's statistics
    in milvus-lite, the shard's in Sluice: the same here), with limits, offsets and output
    fields; milvus-lite answers BM25 distances negated, Milvus (and Sluice) as they are."""
    data = text_rows(200, seed=31)
    queries = ["river stone", "COPPER copper lantern!", "tundra", "nothing here", "ember, falcon; prairie glacier"]

    def f(c):
        bm25_collection(c, "d_bm25", data)
        out = []
        for i, q in enumerate(queries):
            kw = dict(anns_field="sparse", limit=3 + i, output_fields=["text", "tag"])
            if i % 2 == 1:
                kw["search_params"] = {"offset": 2}
            found = c.search("d_bm25", data=[q, queries[(i + 2) % 5]], **kw)
            # Equal scores may come in either order, and the limit may cut between them: each
            # query's scores, and its hits but those scored as the last.
            for hits in found:
                scores = [round(abs(h["distance"]), 4) for h in hits]
                sure = {h["id"]: h["entity"]["tag"] for h, s in zip(hits, scores) if s != scores[-1]}
                out.append((scores, sure))
        return out

    s, l = both(sluice, lite, f)
    assert s == l
    # Two queries per search: "nothing here" (no term in any row) is the 4th and the 7th.
    assert [i for i, (scores, _) in enumerate(s) if not scores] == [3, 6]
    hits = sluice.search("d_bm25", data=["harbor"], anns_field="sparse", limit=5, output_fields=["text"])[0]
    assert hits and all(h["distance"] > 0 and "harbor" in h["entity"]["text"].lower() for h in hits)
    assert [h["distance"] for h in hits] == sorted((h["distance"] for h in hits), reverse=True)


def test_full_text_search_in_sluice_reads_the_shards_statistics_and_refuses_what_milvus_refuses(sluice):
    """Sluice's BM25: rows flushed and growing and deleted all count in the statistics (as
    Milvus's per-shard statistics do), filters pick hits without changing scores, release and
    load answer the same, hybrid search with a dense field works; the output field is
    described as a function output, never returned, never written; text on another field, a
    vector on the BM25 field, another metric and enable_match without an analyzer are refused."""
    from pymilvus import AnnSearchRequest, Function, FunctionType, MilvusException, RRFRanker

    data = text_rows(120, seed=41)
    bm25_collection(sluice, "s_bm25", data[:80], k1=1.2, b=0.75)
    sluice.flush("s_bm25")
    sluice.insert("s_bm25", data[80:])
    sluice.delete("s_bm25", ids=[3, 90])

    def search(**kw):
        got = sluice.search("s_bm25", data=["river copper"], anns_field="sparse", limit=200, **kw)[0]
        return {h["id"]: h["distance"] for h in got}

    every = search()
    assert every and 3 not in every and 90 not in every
    # By hand: BM25 over all 120 rows (the deleted two counted), k1 1.2, b 0.75.
    docs = {r["id"]: re.findall(r"[a-z0-9]+", r["text"].lower()) for r in data}
    avgdl = sum(len(t) for t in docs.values()) / len(docs)
    want = {}
    for i, terms in docs.items():
        if i in (3, 90):
            continue
        score = 0.0
        for term in ("river", "copper"):
            tf = terms.count(term)
            if tf:
                df = sum(term in t for t in docs.values())
                idf = math.log(1 + (len(docs) - df + 0.5) / (df + 0.5))
                score += idf * tf * 2.2 / (tf + 1.2 * (0.25 + 0.75 * len(terms) / avgdl))
        if score:
            want[i] = score
    assert every.keys() == want.keys()
    assert all(abs(every[i] - want[i]) < 1e-4 for i in want)
    # A filter picks the hits; the scores stay.
    odd = search(filter="tag == 1")
    assert odd == {i: s for i, s in every.items() if i % 4 == 1}
    sluice.release_collection("s_bm25")
    sluice.load_collection("s_bm25")
    assert search() == every
    reqs = [
        AnnSearchRequest(["river copper"], "sparse", {"metric_type": "BM25"}, limit=10),
        AnnSearchRequest([data[5]["dense"]], "dense", {"metric_type": "L2"}, limit=10),
    ]
    fused = sluice.hybrid_search("s_bm25", reqs, RRFRanker(), limit=30)[0]
    assert 5 in {h["id"] for h in fused}
    assert max(every, key=every.get) in {h["id"] for h in fused}

    # Upserts, partial ones too, re-derive the output from the stored or given text.
    sluice.upsert("s_bm25", [{"id": 500, "text": "zephyr zephyr", "tag": 1, "dense": [0.0] * 4}])
    sluice.upsert("s_bm25", [{"id": 500, "tag": 2}], partial_update=True)
    got = sluice.search("s_bm25", data=["zephyr"], anns_field="sparse", limit=3, output_fields=["tag", "text"])[0]
    assert [(h["id"], h["entity"]["tag"], h["entity"]["text"]) for h in got] == [(500, 2, "zephyr zephyr")]
    sluice.upsert("s_bm25", [{"id": 500, "text": "quasar"}], partial_update=True)
    got = sluice.search("s_bm25", data=["quasar"], anns_field="sparse", limit=3, output_fields=["tag"])[0]
    assert [(h["id"], h["entity"]["tag"]) for h in got] == [(500, 2)]
    sluice.delete("s_bm25", ids=[500])

    described = sluice.describe_collection("s_bm25")
    fields = {f["name"]: f for f in described["fields"]}
    assert fields["sparse"].get("is_function_output") is True
    assert fields["text"]["params"].get("enable_analyzer") in (True, "true")
    assert described["functions"][0]["input_field_names"] == ["text"]
    assert described["functions"][0]["output_field_names"] == ["sparse"]
    assert "sparse" not in sluice.query("s_bm25", filter="id == 1", output_fields=["*"])[0]
    assert sluice.describe_index("s_bm25", "sparse")["metric_type"] == "BM25"

    with pytest.raises(MilvusException, match="not allowed to retrieve"):
        sluice.query("s_bm25", filter="id == 1", output_fields=["sparse"])
    with pytest.raises(MilvusException, match="BM25"):
        sluice.search("s_bm25", data=[{1: 0.5}], anns_field="sparse", limit=3)
    with pytest.raises(MilvusException):
        sluice.search("s_bm25", data=["river"], anns_field="dense", limit=3)
    with pytest.raises(MilvusException, match="metric"):
        sluice.search("s_bm25", data=["river"], anns_field="sparse", limit=3, search_params={"metric_type": "IP"})
    before = sluice.query("s_bm25", filter="", output_fields=["count(*)"])[0]["count(*)"]
    with pytest.raises(MilvusException):
        sluice.insert("s_bm25", [{"id": 999, "text": "x", "tag": 0, "dense": [0.0] * 4, "sparse": {1: 1.0}}])
    assert sluice.query("s_bm25", filter="", output_fields=["count(*)"])[0]["count(*)"] == before

    def refused(edit):
        drop_if_exists(sluice, "s_bm25_bad")
        schema = sluice.create_schema()
        schema.add_field("id", DataType.INT64, is_primary=True)
        schema.add_field("text", DataType.VARCHAR, max_length=100, **edit.get("text", {"enable_analyzer": True}))
        schema.add_field("sparse", DataType.SPARSE_FLOAT_VECTOR)
        schema.add_function(
            Function(name="f", function_type=FunctionType.BM25, input_field_names=[edit.get("input", "text")], output_field_names=["sparse"])
        )
        with pytest.raises(MilvusException):
            sluice.create_collection("s_bm25_bad", schema=schema)
        assert not sluice.has_collection("s_bm25_bad")

    refused({"text": {}})  # no analyzer
    refused({"text": {"enable_match": True}})  # TEXT_MATCH needs an analyzer too
    refused({"text": {"enable_analyzer": True, "analyzer_params": {"tokenizer": "jieba"}}})
    refused({"input": "id"})


def index_for(c, field):
    """Index params with a BM25 AUTOINDEX on `field`."""
    index = c.prepare_index_params()
    index.add_index(field_name=field, index_type="AUTOINDEX", metric_type="BM25")
    return index


def test_run_analyzer_shows_the_terms_a_bm25_function_indexes(sluice):
    """run_analyzer: the standard analyzer by default, given analyzer_params, or a collection
    field's analyzer; with_hash gives the ids a BM25 output is keyed by (two texts with the same
    terms, the same ids), with_detail offsets and positions; unknown analyzers are refused."""
    from pymilvus import Function, FunctionType, MilvusException

    got = sluice.run_analyzer(["The Quick brown-fox!", "fox QUICK"], with_hash=True, with_detail=True)
    first = [(t.token, t.dict["start_offset"], t.dict["end_offset"], t.dict["position"]) for t in got[0].tokens]
    assert first == [("the", 0, 3, 0), ("quick", 4, 9, 1), ("brown", 10, 15, 2), ("fox", 16, 19, 3)]
    ids = {t.token: t.dict["hash"] for t in got[0].tokens}
    assert {t.token: t.dict["hash"] for t in got[1].tokens} == {"fox": ids["fox"], "quick": ids["quick"]}
    assert len(set(ids.values())) == 4
    assert sluice.run_analyzer("Hello World", analyzer_params={"tokenizer": "whitespace"}).tokens == ["Hello", "World"]

    drop_if_exists(sluice, "s_analyzed")
    schema = sluice.create_schema()
    schema.add_field("id", DataType.INT64, is_primary=True)
    params = {"tokenizer": "standard", "filter": ["lowercase", {"type": "stop", "stop_words": ["of", "the"]}]}
    schema.add_field("text", DataType.VARCHAR, max_length=100, enable_analyzer=True, analyzer_params=params)
    schema.add_field("sparse", DataType.SPARSE_FLOAT_VECTOR)
    schema.add_function(
        Function(name="f", function_type=FunctionType.BM25, input_field_names=["text"], output_field_names=["sparse"])
    )
    sluice.create_collection("s_analyzed", schema=schema)
    got = sluice.run_analyzer("The Age of Wonders", collection_name="s_analyzed", field_name="text")
    assert got.tokens == ["age", "wonders"]
    # The collection's analyzer is the one its searches use: a stop word matches nothing.
    sluice.insert("s_analyzed", [{"id": 1, "text": "the age of wonders"}])
    sluice.create_index("s_analyzed", index_for(sluice, "sparse"))
    sluice.load_collection("s_analyzed")
    assert sluice.search("s_analyzed", data=["the of"], anns_field="sparse", limit=3)[0] == []
    assert [h["id"] for h in sluice.search("s_analyzed", data=["AGE"], anns_field="sparse", limit=3)[0]] == [1]

    # With the english analyzer, a search for "running" finds "runs" (both stem to "run").
    drop_if_exists(sluice, "s_english")
    schema = sluice.create_schema()
    schema.add_field("id", DataType.INT64, is_primary=True)
    schema.add_field("text", DataType.VARCHAR, max_length=100, enable_analyzer=True, analyzer_params={"type": "english"})
    schema.add_field("sparse", DataType.SPARSE_FLOAT_VECTOR)
    schema.add_function(
        Function(name="f", function_type=FunctionType.BM25, input_field_names=["text"], output_field_names=["sparse"])
    )
    sluice.create_collection("s_english", schema=schema, index_params=index_for(sluice, "sparse"))
    sluice.insert("s_english", [{"id": 1, "text": "she runs daily"}, {"id": 2, "text": "a quiet walk"}])
    assert [h["id"] for h in sluice.search("s_english", data=["running"], anns_field="sparse", limit=3)[0]] == [1]
    # The english analyzer stems (Snowball), then drops English stop words, as Milvus's does.
    english = sluice.run_analyzer("The runners were running to connected networks", analyzer_params={"type": "english"})
    assert english.tokens == ["runner", "were", "run", "connect", "network"]
    for bad in ({"tokenizer": "jieba"}, {"type": "chinese"}, {"tokenizer": "standard", "filter": ["stemmer"]}):
        with pytest.raises(MilvusException, match="analyzer_params"):
            sluice.run_analyzer("x", analyzer_params=bad)
    with pytest.raises(MilvusException):
        sluice.run_analyzer("x", collection_name="s_analyzed", field_name="id")


def test_text_match_filters_like_milvus(sluice, lite):
    """TEXT_MATCH(field, 'terms') on a VARCHAR field with enable_match: rows holding any of
    the terms, in query, search and delete filters, joined with other conditions — as
    milvus-lite answers."""
    data = text_rows(80, seed=51)

    def f(c):
        drop_if_exists(c, "d_match")
        schema = c.create_schema()
        schema.add_field("id", DataType.INT64, is_primary=True)
        schema.add_field("text", DataType.VARCHAR, max_length=2000, enable_analyzer=True, enable_match=True)
        schema.add_field("tag", DataType.INT64)
        schema.add_field("dense", DataType.FLOAT_VECTOR, dim=4)
        index = c.prepare_index_params()
        index.add_index(field_name="dense", index_type="FLAT", metric_type="L2")
        c.create_collection("d_match", schema=schema, index_params=index)
        c.insert("d_match", data)
        out = {}
        for q in ["TEXT_MATCH(text, 'river')", "text_match(text, 'COPPER Glacier')", "TEXT_MATCH(text, 'river') and tag == 2", "not TEXT_MATCH(text, 'stone ember')", "TEXT_MATCH(text, 'nothing')"]:
            out[q] = sorted(r["id"] for r in c.query("d_match", filter=q, output_fields=["id"]))
        hits = c.search("d_match", data=[data[0]["dense"]], limit=10, filter="TEXT_MATCH(text, 'harbor meadow')", output_fields=["text"])
        out["search"] = sorted(h["id"] for h in hits[0])
        c.delete("d_match", filter="TEXT_MATCH(text, 'tundra')")
        out["left"] = c.query("d_match", filter="", output_fields=["count(*)"])[0]["count(*)"]
        return out

    s, l = both(sluice, lite, f)
    assert s == l
    assert 0 < len(s["TEXT_MATCH(text, 'river')"]) < 80 and s["TEXT_MATCH(text, 'nothing')"] == []
    assert all("harbor" in data[i]["text"].lower() or "meadow" in data[i]["text"].lower() for i in s["search"])
    assert s["left"] < 80
    # Sluice: minimum_should_match, and the field must have enable_match.
    got = sluice.query("d_match", filter="TEXT_MATCH(text, 'river copper glacier', minimum_should_match=2)", output_fields=["text"])
    assert got and all(sum(w in r["text"].lower() for w in ("river", "copper", "glacier")) >= 2 for r in got)
    from pymilvus import MilvusException

    bm25_collection(sluice, "s_nomatch", data[:5])
    with pytest.raises(MilvusException, match="enable_match"):
        sluice.query("s_nomatch", filter="TEXT_MATCH(text, 'river')")


def test_phrase_match_filters_as_milvus_documents_them(sluice):
    """PHRASE_MATCH(field, 'phrase', slop) on a field with enable_match: the examples of
    Milvus's phrase match guide — slop 0 needs the terms side by side in order, slop 1 lets a
    word in between, slop 2 lets them swap — in query and search filters."""
    from pymilvus import MilvusException

    drop_if_exists(sluice, "s_phrase")
    schema = sluice.create_schema()
    schema.add_field("id", DataType.INT64, is_primary=True)
    schema.add_field("text", DataType.VARCHAR, max_length=500, enable_analyzer=True, enable_match=True)
    schema.add_field("dense", DataType.FLOAT_VECTOR, dim=2)
    index = sluice.prepare_index_params()
    index.add_index(field_name="dense", index_type="FLAT", metric_type="L2")
    sluice.create_collection("s_phrase", schema=schema, index_params=index)
    texts = [
        "Machine learning boosts efficiency",
        "Learning machine models",
        "Deep learning machine",
        "Machine deep learning",
        "Machines that learn",
    ]
    sluice.insert("s_phrase", [{"id": i + 1, "text": t, "dense": [float(i), 0.0]} for i, t in enumerate(texts)])

    def ids(flt):
        return sorted(r["id"] for r in sluice.query("s_phrase", filter=flt, output_fields=["id"]))

    assert ids("PHRASE_MATCH(text, 'machine learning')") == [1]
    assert ids("PHRASE_MATCH(text, 'machine learning', 1)") == [1, 4]
    assert ids("PHRASE_MATCH(text, 'machine learning', 2)") == [1, 2, 3, 4]
    assert ids("PHRASE_MATCH(text, 'machine learning', 2) and id > 2") == [3, 4]
    hits = sluice.search("s_phrase", data=[[0.0, 0.0]], limit=5, filter="PHRASE_MATCH(text, 'deep learning')")
    assert sorted(h["id"] for h in hits[0]) == [3, 4]
    with pytest.raises(MilvusException, match="slop"):
        sluice.query("s_phrase", filter="PHRASE_MATCH(text, 'machine learning', -1)")
