//! Insert and Delete bodies against a schema: what passes, what is refused and why — and that a
//! WAL with the Arrow row check refuses them before anything is written.

mod common;

use std::sync::Arc;

use arrow_array::{Array, ArrayRef, Int64Array, StringArray};
use common::*;
use sluice_log::memory::{MemoryConfig, MemoryProvider};
use sluice_log::{DeliverPolicy, LogProvider, OpenOptions, ReadOptions};
use sluice_storage::rows::{ArrowRowCheck, decode_delete, decode_insert};
use sluice_types::{CollectionId, ErrorCode, MessageType, PChannel, Term};
use sluice_wal::shard::NodeGrowingBytes;
use sluice_wal::tso::LocalOracle;
use sluice_wal::{Wal, WalConfig, WalDeps};

const MAX: usize = 1 << 20;

fn refused(body: Vec<u8>, rows: u64) -> String {
    decode_insert(&schema(), &body, rows, MAX)
        .unwrap_err()
        .to_string()
}

#[test]
fn a_well_formed_insert_is_stored_in_schema_order_with_absent_nullable_columns_as_nulls() {
    let b = batch(&[1, 2, 3]);
    // Columns in another order are fine.
    let shuffled = {
        let s = b.schema();
        let order: Vec<usize> = (0..s.fields().len()).rev().collect();
        b.project(&order).unwrap()
    };
    let out = decode_insert(&schema(), &body(&shuffled), 3, MAX).unwrap();
    let names: Vec<_> = out
        .schema()
        .fields()
        .iter()
        .map(|f| f.name().clone())
        .collect();
    assert_eq!(
        names,
        [
            "id", "flag", "small", "score", "ratio", "title", "meta", "vec", "note"
        ]
    );
    assert_eq!(out.num_rows(), 3);
    assert_eq!(out.column_by_name("note").unwrap().null_count(), 3);
    assert_eq!(
        out.column_by_name("id").unwrap().as_ref(),
        &Int64Array::from(vec![1, 2, 3]) as &dyn Array
    );
}

#[test]
fn every_kind_of_bad_insert_is_refused_with_a_reason() {
    let b = batch(&[1, 2]);
    let cases: Vec<(&str, Vec<u8>, u64, &str)> = vec![
        (
            "wrong type",
            body(&with_column(&b, "small", float_array(vec![1.0, 2.0]))),
            2,
            "column small is Float32, the field needs Int32",
        ),
        (
            "missing primary key",
            body(&without(&b, "id")),
            2,
            "column id is missing; the field is the primary key",
        ),
        (
            "null primary key",
            body(&with_column(
                &b,
                "id",
                Arc::new(Int64Array::from(vec![Some(1), None])) as ArrayRef,
            )),
            2,
            "null values; it is the primary key",
        ),
        (
            "vector of the wrong dimension",
            body(&with_column(&b, "vec", wrong_dim(2))),
            2,
            "column vec is FixedSizeList",
        ),
        (
            "unknown column",
            body(&with_column(&b, "extra", float_array(vec![1.0, 2.0]))),
            2,
            "column extra is not a field of the collection",
        ),
        (
            "missing field that is not nullable",
            body(&without(&b, "score")),
            2,
            "column score is missing; the field is not nullable",
        ),
        (
            "varchar over max_length",
            body(&with_column(
                &b,
                "title",
                Arc::new(StringArray::from(vec!["ok", "this title is too long"])) as ArrayRef,
            )),
            2,
            "more than max_length 16",
        ),
        (
            "json that is not json",
            body(&with_column(
                &b,
                "meta",
                Arc::new(StringArray::from(vec!["{}", "{not json"])) as ArrayRef,
            )),
            2,
            "column meta row 1 is not JSON",
        ),
        (
            "row count unlike the header's",
            body(&b),
            3,
            "the header says 3 rows, the body holds 2",
        ),
        (
            "not arrow",
            b"garbage".to_vec(),
            2,
            "not an Arrow IPC stream",
        ),
        ("empty", Vec::new(), 0, "the body is empty"),
    ];
    for (what, body, rows, expect) in cases {
        let text = refused(body, rows);
        assert!(text.contains(expect), "{what}: {text}");
    }
    let big = body(&batch(&(0..2000).collect::<Vec<_>>()));
    let err = decode_insert(&schema(), &big, 2000, 1000)
        .unwrap_err()
        .to_string();
    assert!(err.contains("more than the limit of 1000"), "{err}");
}

#[test]
fn a_delete_carries_the_primary_keys_only() {
    let keys = decode_delete(&schema(), &delete_body(&[5, 6]), 2, MAX).unwrap();
    assert_eq!(keys.len(), 2);
    let err = decode_delete(&schema(), &body(&batch(&[1])), 1, MAX)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("one column named after the primary key (id)"),
        "{err}"
    );
    let err = decode_delete(&schema(), &delete_body(&[5]), 2, MAX)
        .unwrap_err()
        .to_string();
    assert!(err.contains("the header says 2 rows"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_wal_refuses_a_bad_body_and_writes_nothing() {
    let provider = MemoryProvider::new(MemoryConfig::default());
    let p = PChannel::new("rows-test_0").unwrap();
    let v = p.vchannel(CollectionId(100), 0).unwrap();
    let oracle = LocalOracle::new();
    let wal = Wal::open(
        &provider,
        p.clone(),
        Term(1),
        WalConfig::default(),
        WalDeps {
            oracle: oracle.clone(),
            ids: oracle,
            node_growing: NodeGrowingBytes::new(),
            pressure: sluice_wal::Pressure::unlimited(),
            checkpoints: None,
            rows: Some(Arc::new(ArrowRowCheck::default())),
        },
    )
    .await
    .unwrap();
    wal.append(create(&v, Some(schema()))).await.unwrap();
    wal.append(insert(&v, 2, body(&batch(&[1, 2]))))
        .await
        .unwrap();
    wal.append(delete(&v, 1, delete_body(&[1]))).await.unwrap();
    let bad = [
        insert(&v, 2, body(&without(&batch(&[3, 4]), "id"))),
        insert(&v, 2, b"not arrow".to_vec()),
        delete(&v, 1, body(&batch(&[1]))),
    ];
    for m in bad {
        let err = wal.append(m).await.unwrap_err();
        assert_eq!(err.code(), ErrorCode::InvalidArgument, "{err}");
    }
    // A collection without a schema takes any body, as before.
    let plain = p.vchannel(CollectionId(101), 0).unwrap();
    wal.append(create(&plain, None)).await.unwrap();
    wal.append(insert(&plain, 1, b"opaque".to_vec()))
        .await
        .unwrap();
    wal.close().await;

    let log = provider
        .open(OpenOptions::read_only(p, Term(1)))
        .await
        .unwrap();
    let mut s = log
        .read(ReadOptions::new(DeliverPolicy::All))
        .await
        .unwrap();
    let mut data = Vec::new();
    while let Ok(Some(Ok(m))) =
        tokio::time::timeout(std::time::Duration::from_millis(300), s.next()).await
    {
        let ty = m.message_type().unwrap();
        if matches!(ty, MessageType::Insert | MessageType::Delete) {
            data.push(ty);
        }
    }
    assert_eq!(
        data,
        [
            MessageType::Insert,
            MessageType::Delete,
            MessageType::Insert
        ],
        "only the good bodies reached the log"
    );
    let _: &dyn LogProvider = &provider;
}

#[test]
fn sparse_vectors_are_stored_as_milvus_lays_them_out_and_checked() {
    use arrow_array::BinaryArray;
    use arrow_array::cast::AsArray;
    use sluice_storage::rows::batch_from_json;
    use sluice_types::schema::{CollectionSchema, DataType, FieldSchema};
    let schema = CollectionSchema {
        name: "docs".into(),
        fields: vec![
            FieldSchema {
                is_primary_key: true,
                ..field(1, "id", DataType::Int64)
            },
            field(2, "sv", DataType::SparseFloatVector),
        ],
        ..Default::default()
    };
    sluice_types::schema::validate(&schema).unwrap();
    let rows: Vec<serde_json::Value> = vec![
        serde_json::json!({"id": 1, "sv": {"17": 0.25, "3": 1.5}}),
        serde_json::json!({"id": 2, "sv": {}}),
    ];
    let b = batch_from_json(&schema, &rows).unwrap();
    let stored = decode_insert(&schema, &body(&b), 2, MAX).unwrap();
    let sv = stored.column_by_name("sv").unwrap().as_binary::<i32>();
    let first: Vec<(u32, f32)> = sluice_types::sparse::pairs(sv.value(0)).collect();
    assert_eq!(first, vec![(3, 1.5), (17, 0.25)]);
    assert!(sv.value(1).is_empty());

    for (json, want) in [
        (
            serde_json::json!({"id": 3, "sv": {"1": -1.0}}),
            "not negative",
        ),
        (
            serde_json::json!({"id": 3, "sv": {"x": 1.0}}),
            "an object of index",
        ),
        (
            serde_json::json!({"id": 3, "sv": [1.0, 2.0]}),
            "an object of index",
        ),
        (
            serde_json::json!({"id": 3, "sv": {"4294967295": 1.0}}),
            "below",
        ),
        (serde_json::json!({"id": 3}), "not nullable"),
    ] {
        let e = batch_from_json(&schema, std::slice::from_ref(&json))
            .unwrap_err()
            .to_string();
        assert!(e.contains(want), "{json}: {e} should say {want}");
    }
    // Raw bytes out of order, or a torn pair, are refused when the body is read.
    let unsorted: Vec<u8> = [(5u32, 1.0f32), (2, 1.0)]
        .iter()
        .flat_map(|(i, w)| i.to_le_bytes().into_iter().chain(w.to_le_bytes()))
        .collect();
    for (raw, want) in [(unsorted, "increase"), (vec![0u8; 5], "bytes")] {
        let cols: Vec<ArrayRef> = vec![
            Arc::new(Int64Array::from(vec![9])),
            Arc::new(BinaryArray::from(vec![raw.as_slice()])),
        ];
        let b = arrow_array::RecordBatch::try_new(
            sluice_storage::rows::arrow_schema(&schema).unwrap(),
            cols,
        )
        .unwrap();
        let e = decode_insert(&schema, &body(&b), 1, MAX)
            .unwrap_err()
            .to_string();
        assert!(e.contains(want), "{e} should say {want}");
    }
}
