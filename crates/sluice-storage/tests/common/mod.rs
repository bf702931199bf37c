//! Shared helpers: a schema with every field type, rows for it, and messages.
#![allow(dead_code)]

use std::sync::Arc;

use arrow_array::builder::{FixedSizeListBuilder, Float32Builder};
use arrow_array::{
    ArrayRef, BooleanArray, Float32Array, Float64Array, Int32Array, Int64Array, RecordBatch,
    StringArray,
};
use arrow_schema::{DataType as ArrowType, Field, Schema};
use sluice_storage::rows::encode_stream;
use sluice_types::message::{
    CreateCollectionHeader, DeleteHeader, InsertHeader, PartitionSegmentAssignment,
};
use sluice_types::schema::{CollectionSchema, DataType, FieldSchema};
use sluice_types::{MutableMessage, VChannel};

pub(crate) const DIM: usize = 4;

pub(crate) fn field(id: i64, name: &str, ty: DataType) -> FieldSchema {
    FieldSchema {
        field_id: id,
        name: name.into(),
        data_type: ty as i32,
        ..Default::default()
    }
}

/// Every field type: id (int64 pk), flag, small, score, ratio, title (varchar 16), meta (json),
/// vec (float vector, dim 4), note (nullable varchar).
pub(crate) fn schema() -> CollectionSchema {
    CollectionSchema {
        name: "items".into(),
        fields: vec![
            FieldSchema {
                is_primary_key: true,
                ..field(1, "id", DataType::Int64)
            },
            field(2, "flag", DataType::Bool),
            field(3, "small", DataType::Int32),
            field(4, "score", DataType::Float),
            field(5, "ratio", DataType::Double),
            FieldSchema {
                max_length: 16,
                ..field(6, "title", DataType::Varchar)
            },
            field(7, "meta", DataType::Json),
            FieldSchema {
                dim: DIM as u32,
                ..field(8, "vec", DataType::FloatVector)
            },
            FieldSchema {
                max_length: 64,
                nullable: true,
                ..field(9, "note", DataType::Varchar)
            },
        ],
        shards: 1,
        version: 1,
        ..Default::default()
    }
}

pub(crate) fn vectors(rows: usize, dim: usize, seed: f32) -> ArrayRef {
    let mut b = FixedSizeListBuilder::new(Float32Builder::new(), dim as i32);
    for r in 0..rows {
        for d in 0..dim {
            b.values().append_value(seed + r as f32 + d as f32 / 10.0);
        }
        b.append(true);
    }
    Arc::new(b.finish())
}

/// `ids.len()` rows of [`schema`], without the nullable `note` column.
pub(crate) fn batch(ids: &[i64]) -> RecordBatch {
    let n = ids.len();
    let cols: Vec<(&str, ArrayRef)> = vec![
        ("id", Arc::new(Int64Array::from(ids.to_vec()))),
        ("flag", Arc::new(BooleanArray::from(vec![true; n]))),
        ("small", Arc::new(Int32Array::from(vec![7; n]))),
        ("score", Arc::new(Float32Array::from(vec![0.5; n]))),
        ("ratio", Arc::new(Float64Array::from(vec![0.25; n]))),
        (
            "title",
            Arc::new(StringArray::from_iter_values(
                ids.iter().map(|i| format!("t{i}")),
            )),
        ),
        (
            "meta",
            Arc::new(StringArray::from_iter_values(
                ids.iter().map(|i| format!("{{\"k\":{i}}}")),
            )),
        ),
        (
            "vec",
            vectors(n, DIM, ids.first().copied().unwrap_or(0) as f32),
        ),
    ];
    RecordBatch::try_from_iter(cols).unwrap()
}

/// Replaces (or adds) column `name` of `b`.
pub(crate) fn with_column(b: &RecordBatch, name: &str, col: ArrayRef) -> RecordBatch {
    let mut fields: Vec<Field> = Vec::new();
    let mut cols: Vec<ArrayRef> = Vec::new();
    let mut replaced = false;
    for (f, c) in b.schema().fields().iter().zip(b.columns()) {
        if f.name() == name {
            fields.push(Field::new(name, col.data_type().clone(), true));
            cols.push(col.clone());
            replaced = true;
        } else {
            fields.push(f.as_ref().clone());
            cols.push(c.clone());
        }
    }
    if !replaced {
        fields.push(Field::new(name, col.data_type().clone(), true));
        cols.push(col);
    }
    RecordBatch::try_new(Arc::new(Schema::new(fields)), cols).unwrap()
}

/// `b` without column `name`.
pub(crate) fn without(b: &RecordBatch, name: &str) -> RecordBatch {
    let i = b.schema().index_of(name).unwrap();
    let mut b = b.clone();
    b.remove_column(i);
    b
}

pub(crate) fn body(b: &RecordBatch) -> Vec<u8> {
    encode_stream(std::slice::from_ref(b)).unwrap()
}

pub(crate) fn delete_body(ids: &[i64]) -> Vec<u8> {
    let b =
        RecordBatch::try_from_iter([("id", Arc::new(Int64Array::from(ids.to_vec())) as ArrayRef)])
            .unwrap();
    body(&b)
}

pub(crate) const PARTITION: i64 = 10;

pub(crate) fn create(v: &VChannel, schema: Option<CollectionSchema>) -> MutableMessage {
    MutableMessage::builder(CreateCollectionHeader {
        collection_id: v.collection().0,
        partition_ids: vec![PARTITION],
        db_id: 1,
        schema,
    })
    .vchannel(v)
    .build()
    .unwrap()
}

pub(crate) fn insert(v: &VChannel, rows: u64, body: Vec<u8>) -> MutableMessage {
    MutableMessage::builder(InsertHeader {
        collection_id: v.collection().0,
        partitions: vec![PartitionSegmentAssignment {
            partition_id: PARTITION,
            rows,
            binary_size: body.len() as u64,
            segment_id: 0,
        }],
    })
    .vchannel(v)
    .payload(body)
    .build()
    .unwrap()
}

pub(crate) fn delete(v: &VChannel, rows: u64, body: Vec<u8>) -> MutableMessage {
    MutableMessage::builder(DeleteHeader {
        collection_id: v.collection().0,
        rows,
    })
    .vchannel(v)
    .payload(body)
    .build()
    .unwrap()
}

pub(crate) fn float_array(v: Vec<f32>) -> ArrayRef {
    Arc::new(Float32Array::from(v))
}

pub(crate) fn wrong_dim(rows: usize) -> ArrayRef {
    vectors(rows, DIM + 1, 0.0)
}

pub(crate) fn arrow_utf8() -> ArrowType {
    ArrowType::Utf8
}
