//! Typed row data: Insert and Delete bodies as Arrow IPC streams, checked against the
//! collection's schema.
//!
//! * An **Insert** body is an Arrow IPC stream (schema, one or more record batches, end) whose
//!   columns are the collection's fields in force, by name, in any order: every field that is
//!   not nullable must be there; a nullable field may be left out (it reads as null — this is
//!   how rows written before a SchemaChange added a field look); a column the schema does not
//!   name is refused. The primary key is never null.
//! * A **Delete** body is an Arrow IPC stream of one column named after the primary key field,
//!   of its type, with no nulls.
//!
//! | field type | Arrow type |
//! |---|---|
//! | BOOL | Boolean |
//! | INT32 | Int32 |
//! | INT64 | Int64 |
//! | FLOAT | Float32 |
//! | DOUBLE | Float64 |
//! | VARCHAR | Utf8 (each value at most `max_length` bytes) |
//! | JSON | Utf8 (each value a JSON document) |
//! | FLOAT_VECTOR | FixedSizeList(Float32, `dim`), no null elements |
//! | SPARSE_FLOAT_VECTOR | Binary (each value a row as [`sluice_types::sparse`] lays it out) |
//!
//! The row counts the header claims must be the body's.

use std::sync::Arc;

use arrow_array::cast::AsArray;
use arrow_array::{Array, ArrayRef, RecordBatch, new_null_array};
use arrow_schema::{DataType as ArrowType, Field, Schema, SchemaRef};
use sluice_types::schema::{CollectionSchema, DataType, FieldSchema};

/// Why a body was refused.
#[derive(Debug, thiserror::Error)]
pub enum RowError {
    /// The body is not what the schema asks for.
    #[error("{0}")]
    Invalid(String),
}

fn invalid(what: impl Into<String>) -> RowError {
    RowError::Invalid(what.into())
}

/// The Arrow type of a field.
pub fn arrow_type(field: &FieldSchema) -> Result<ArrowType, RowError> {
    let ty = DataType::try_from(field.data_type).map_err(|_| {
        invalid(format!(
            "field {} has an unknown type {}",
            field.name, field.data_type
        ))
    })?;
    Ok(match ty {
        DataType::Bool => ArrowType::Boolean,
        DataType::Int32 => ArrowType::Int32,
        DataType::Int64 => ArrowType::Int64,
        DataType::Float => ArrowType::Float32,
        DataType::Double => ArrowType::Float64,
        DataType::Varchar | DataType::Json => ArrowType::Utf8,
        DataType::FloatVector => ArrowType::FixedSizeList(
            Arc::new(Field::new("item", ArrowType::Float32, false)),
            i32::try_from(field.dim).map_err(|_| invalid("vector dimension too large"))?,
        ),
        DataType::SparseFloatVector => ArrowType::Binary,
        DataType::Unspecified => {
            return Err(invalid(format!("field {} has no type", field.name)));
        }
    })
}

/// The Arrow schema of a collection's rows as stored: its fields in schema order, but for
/// functions' outputs (computed, never stored).
pub fn arrow_schema(schema: &CollectionSchema) -> Result<SchemaRef, RowError> {
    let fields = sluice_types::schema::stored_fields(schema)
        .map(|f| {
            let nullable = f.nullable && !f.is_primary_key;
            Ok(Field::new(&f.name, arrow_type(f)?, nullable))
        })
        .collect::<Result<Vec<_>, RowError>>()?;
    Ok(Arc::new(Schema::new(fields)))
}

/// The primary key field.
pub fn primary_key(schema: &CollectionSchema) -> Result<&FieldSchema, RowError> {
    schema
        .fields
        .iter()
        .find(|f| f.is_primary_key)
        .ok_or_else(|| invalid("the collection's schema has no primary key"))
}

/// Reads every batch of an Arrow IPC stream, without copying the body's buffers (when they are
/// aligned as Arrow wants; otherwise the decoder copies them).
fn read_stream(body: &[u8], max_bytes: usize) -> Result<Vec<RecordBatch>, RowError> {
    read_stream_bytes(&bytes::Bytes::copy_from_slice(body), max_bytes)
}

/// Every batch of an Arrow IPC stream of at most `max_bytes` (row bodies, and the rows read
/// answers carry), without copying aligned buffers.
pub fn read_stream_bytes(
    body: &bytes::Bytes,
    max_bytes: usize,
) -> Result<Vec<RecordBatch>, RowError> {
    if body.len() > max_bytes {
        return Err(invalid(format!(
            "the body is {} bytes, more than the limit of {max_bytes}",
            body.len()
        )));
    }
    if body.is_empty() {
        return Err(invalid(
            "the body is empty: an Arrow IPC stream is required",
        ));
    }
    let not_ipc =
        |e: arrow_schema::ArrowError| invalid(format!("the body is not an Arrow IPC stream: {e}"));
    let mut decoder = arrow_ipc::reader::StreamDecoder::new();
    let mut buffer = arrow_buffer::Buffer::from(body.clone());
    let mut out = Vec::new();
    while !buffer.is_empty() {
        match decoder.decode(&mut buffer).map_err(not_ipc)? {
            Some(batch) => out.push(batch),
            None => break,
        }
    }
    decoder.finish().map_err(not_ipc)?;
    Ok(out)
}

/// Checks one column against its field.
fn check_column(field: &FieldSchema, col: &ArrayRef) -> Result<(), RowError> {
    let want = arrow_type(field)?;
    let name = &field.name;
    if col.data_type() != &want {
        // A vector's list item may be named anything and be nullable in the type; its values
        // are checked below.
        let vector_ok = matches!(
            (col.data_type(), &want),
            (ArrowType::FixedSizeList(got, n), ArrowType::FixedSizeList(_, m))
                if got.data_type() == &ArrowType::Float32 && n == m
        );
        if !vector_ok {
            return Err(invalid(format!(
                "column {name} is {}, the field needs {want}",
                col.data_type()
            )));
        }
    }
    if col.null_count() > 0 && (field.is_primary_key || !field.nullable) {
        let what = if field.is_primary_key {
            "the primary key"
        } else {
            "a field that is not nullable"
        };
        return Err(invalid(format!(
            "column {name} has {} null values; it is {what}",
            col.null_count()
        )));
    }
    match DataType::try_from(field.data_type) {
        Ok(DataType::Varchar) => {
            let max = field.max_length as usize;
            if let Some((i, v)) = col
                .as_string::<i32>()
                .iter()
                .enumerate()
                .find_map(|(i, v)| v.filter(|v| v.len() > max).map(|v| (i, v)))
            {
                return Err(invalid(format!(
                    "column {name} row {i}: {} bytes, more than max_length {max}",
                    v.len()
                )));
            }
        }
        Ok(DataType::Json) => {
            for (i, v) in col.as_string::<i32>().iter().enumerate() {
                if let Some(v) = v
                    && let Err(e) = serde_json::from_str::<serde::de::IgnoredAny>(v)
                {
                    return Err(invalid(format!("column {name} row {i} is not JSON: {e}")));
                }
            }
        }
        Ok(DataType::FloatVector) => {
            let list = col.as_fixed_size_list();
            if list.values().null_count() > 0 {
                return Err(invalid(format!("column {name} has null vector elements")));
            }
        }
        Ok(DataType::SparseFloatVector) => {
            for (i, v) in col.as_binary::<i32>().iter().enumerate() {
                if let Some(Err(e)) = v.map(sluice_types::sparse::check) {
                    return Err(invalid(format!("column {name} row {i}: {e}")));
                }
            }
        }
        _ => {}
    }
    Ok(())
}

/// Checks an Insert body against `schema` and returns its rows as stored: the schema's
/// columns in schema order (absent nullable ones as nulls), in one batch.
pub fn decode_insert(
    schema: &CollectionSchema,
    body: &[u8],
    rows: u64,
    max_bytes: usize,
) -> Result<RecordBatch, RowError> {
    decode_insert_batches(schema, read_stream(body, max_bytes)?, rows)
}

/// [`decode_insert`] of a body held in [`bytes::Bytes`] (a message's payload), without copying
/// its buffers.
pub fn decode_insert_bytes(
    schema: &CollectionSchema,
    body: &bytes::Bytes,
    rows: u64,
    max_bytes: usize,
) -> Result<RecordBatch, RowError> {
    decode_insert_batches(schema, read_stream_bytes(body, max_bytes)?, rows)
}

fn decode_insert_batches(
    schema: &CollectionSchema,
    batches: Vec<RecordBatch>,
    rows: u64,
) -> Result<RecordBatch, RowError> {
    let target = arrow_schema(schema)?;
    let Some(first) = batches.first() else {
        return Err(invalid("the body holds no record batch"));
    };
    let got = first.schema();
    for f in got.fields() {
        if let Some(out) = schema
            .fields
            .iter()
            .find(|s| &s.name == f.name() && s.is_function_output)
        {
            return Err(invalid(format!(
                "column {} is a function's output: it is computed from the function's input, \
                 never written",
                out.name
            )));
        }
        if !schema.fields.iter().any(|s| &s.name == f.name()) {
            return Err(invalid(format!(
                "column {} is not a field of the collection (schema version {})",
                f.name(),
                schema.version
            )));
        }
    }
    let total: usize = batches.iter().map(RecordBatch::num_rows).sum();
    if total as u64 != rows {
        return Err(invalid(format!(
            "the header says {rows} rows, the body holds {total}"
        )));
    }
    let mut columns = Vec::with_capacity(target.fields().len());
    for (field, target_field) in sluice_types::schema::stored_fields(schema).zip(target.fields()) {
        let parts: Vec<ArrayRef> = match got.index_of(&field.name) {
            Ok(i) => batches.iter().map(|b| b.column(i).clone()).collect(),
            Err(_) if field.nullable && !field.is_primary_key => {
                vec![new_null_array(target_field.data_type(), total)]
            }
            Err(_) => {
                return Err(invalid(format!(
                    "column {} is missing; the field is {}",
                    field.name,
                    if field.is_primary_key {
                        "the primary key"
                    } else {
                        "not nullable"
                    }
                )));
            }
        };
        for p in &parts {
            check_column(field, p)?;
        }
        let refs: Vec<&dyn Array> = parts.iter().map(|a| a.as_ref()).collect();
        let joined = if refs.len() == 1 {
            parts[0].clone()
        } else {
            arrow_select::concat::concat(&refs).map_err(|e| invalid(e.to_string()))?
        };
        // Vectors arrive with any item name; store them under the schema's.
        let joined = if joined.data_type() == target_field.data_type() {
            joined
        } else {
            let list = joined.as_fixed_size_list();
            Arc::new(
                arrow_array::FixedSizeListArray::try_new(
                    Arc::new(Field::new("item", ArrowType::Float32, false)),
                    field.dim as i32,
                    list.values().clone(),
                    list.nulls().cloned(),
                )
                .map_err(|e| invalid(format!("column {}: {e}", field.name)))?,
            )
        };
        columns.push(joined);
    }
    RecordBatch::try_new(target, columns).map_err(|e| invalid(e.to_string()))
}

/// Checks a Delete body against `schema` and returns its primary keys.
pub fn decode_delete(
    schema: &CollectionSchema,
    body: &[u8],
    rows: u64,
    max_bytes: usize,
) -> Result<ArrayRef, RowError> {
    let batches = read_stream(body, max_bytes)?;
    let pk = primary_key(schema)?;
    let mut parts = Vec::with_capacity(batches.len());
    for b in &batches {
        if b.num_columns() != 1 || b.schema().field(0).name() != &pk.name {
            return Err(invalid(format!(
                "a delete body is one column named after the primary key ({}); this one has {:?}",
                pk.name,
                b.schema()
                    .fields()
                    .iter()
                    .map(|f| f.name().clone())
                    .collect::<Vec<_>>()
            )));
        }
        check_column(pk, b.column(0))?;
        parts.push(b.column(0).clone());
    }
    let total: usize = parts.iter().map(|a| a.len()).sum();
    if total as u64 != rows {
        return Err(invalid(format!(
            "the header says {rows} rows, the body holds {total}"
        )));
    }
    let refs: Vec<&dyn Array> = parts.iter().map(|a| a.as_ref()).collect();
    match refs.len() {
        0 => Ok(new_null_array(&arrow_type(pk)?, 0)),
        1 => Ok(parts[0].clone()),
        _ => arrow_select::concat::concat(&refs).map_err(|e| invalid(e.to_string())),
    }
}

/// Encodes batches as an Arrow IPC stream (what clients send as an Insert or Delete body).
pub fn encode_stream(batches: &[RecordBatch]) -> Result<Vec<u8>, RowError> {
    let Some(first) = batches.first() else {
        return Err(invalid("nothing to encode"));
    };
    let mut out = Vec::new();
    let mut w = arrow_ipc::writer::StreamWriter::try_new(&mut out, &first.schema())
        .map_err(|e| invalid(e.to_string()))?;
    for b in batches {
        w.write(b).map_err(|e| invalid(e.to_string()))?;
    }
    w.finish().map_err(|e| invalid(e.to_string()))?;
    drop(w);
    Ok(out)
}

/// The WAL's row check, with Arrow: refuses an Insert or Delete whose body does not fit the
/// schema in force.
#[derive(Debug, Clone)]
pub struct ArrowRowCheck {
    /// The largest body accepted, in bytes.
    pub max_body_bytes: usize,
}

impl Default for ArrowRowCheck {
    fn default() -> Self {
        ArrowRowCheck {
            max_body_bytes: 64 << 20,
        }
    }
}

impl sluice_wal::RowCheck for ArrowRowCheck {
    fn check_insert(
        &self,
        schema: &CollectionSchema,
        rows: u64,
        body: &[u8],
    ) -> Result<(), String> {
        decode_insert(schema, body, rows, self.max_body_bytes)
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    fn check_delete(
        &self,
        schema: &CollectionSchema,
        rows: u64,
        body: &[u8],
    ) -> Result<(), String> {
        decode_delete(schema, body, rows, self.max_body_bytes)
            .map(|_| ())
            .map_err(|e| e.to_string())
    }
}

/// Rows given as JSON objects (one per row, fields by name) as a batch of `schema`'s columns,
/// in schema order: numbers for numeric fields, strings for VARCHAR, any JSON value for JSON
/// (stored as its text), arrays of numbers for vectors. A field that is absent or null is null
/// (refused for the primary key and fields that are not nullable); a key that is not a field
/// is refused.
pub fn batch_from_json(
    schema: &CollectionSchema,
    rows: &[serde_json::Value],
) -> Result<RecordBatch, RowError> {
    use arrow_array::builder::{
        BooleanBuilder, FixedSizeListBuilder, Float32Builder, Float64Builder, Int32Builder,
        Int64Builder, StringBuilder,
    };
    let target = arrow_schema(schema)?;
    for (i, row) in rows.iter().enumerate() {
        let obj = row
            .as_object()
            .ok_or_else(|| invalid(format!("row {i} is not a JSON object")))?;
        if let Some(k) = obj.keys().find(|k| {
            schema
                .fields
                .iter()
                .any(|f| &f.name == *k && f.is_function_output)
        }) {
            return Err(invalid(format!(
                "row {i}: {k:?} is a function's output: it is computed from the function's \
                 input, never written"
            )));
        }
        if let Some(k) = obj
            .keys()
            .find(|k| !sluice_types::schema::stored_fields(schema).any(|f| &f.name == *k))
        {
            return Err(invalid(format!(
                "row {i}: {k:?} is not a field of the collection"
            )));
        }
    }
    let mut columns: Vec<ArrayRef> = Vec::with_capacity(target.fields().len());
    for field in sluice_types::schema::stored_fields(schema) {
        let name = &field.name;
        let values = rows.iter().map(|r| r.get(name).filter(|v| !v.is_null()));
        let bad = |i: usize, want: &str| invalid(format!("row {i}: {name} must be {want}"));
        let col: ArrayRef = match DataType::try_from(field.data_type) {
            Ok(DataType::Bool) => {
                let mut b = BooleanBuilder::new();
                for (i, v) in values.enumerate() {
                    match v {
                        None => b.append_null(),
                        Some(v) => b.append_value(v.as_bool().ok_or_else(|| bad(i, "a boolean"))?),
                    }
                }
                Arc::new(b.finish())
            }
            Ok(DataType::Int32) => {
                let mut b = Int32Builder::new();
                for (i, v) in values.enumerate() {
                    match v {
                        None => b.append_null(),
                        Some(v) => b.append_value(
                            v.as_i64()
                                .and_then(|n| i32::try_from(n).ok())
                                .ok_or_else(|| bad(i, "a 32-bit integer"))?,
                        ),
                    }
                }
                Arc::new(b.finish())
            }
            Ok(DataType::Int64) => {
                let mut b = Int64Builder::new();
                for (i, v) in values.enumerate() {
                    match v {
                        None => b.append_null(),
                        Some(v) => b.append_value(v.as_i64().ok_or_else(|| bad(i, "an integer"))?),
                    }
                }
                Arc::new(b.finish())
            }
            Ok(DataType::Float) => {
                let mut b = Float32Builder::new();
                for (i, v) in values.enumerate() {
                    match v {
                        None => b.append_null(),
                        Some(v) => {
                            b.append_value(v.as_f64().ok_or_else(|| bad(i, "a number"))? as f32)
                        }
                    }
                }
                Arc::new(b.finish())
            }
            Ok(DataType::Double) => {
                let mut b = Float64Builder::new();
                for (i, v) in values.enumerate() {
                    match v {
                        None => b.append_null(),
                        Some(v) => b.append_value(v.as_f64().ok_or_else(|| bad(i, "a number"))?),
                    }
                }
                Arc::new(b.finish())
            }
            Ok(DataType::Varchar) => {
                let mut b = StringBuilder::new();
                for (i, v) in values.enumerate() {
                    match v {
                        None => b.append_null(),
                        Some(v) => b.append_value(v.as_str().ok_or_else(|| bad(i, "a string"))?),
                    }
                }
                Arc::new(b.finish())
            }
            Ok(DataType::Json) => {
                let mut b = StringBuilder::new();
                for v in values {
                    match v {
                        None => b.append_null(),
                        Some(v) => b.append_value(v.to_string()),
                    }
                }
                Arc::new(b.finish())
            }
            Ok(DataType::FloatVector) => {
                let dim = field.dim as usize;
                let mut b =
                    FixedSizeListBuilder::new(Float32Builder::new(), dim as i32).with_field(
                        Arc::new(arrow_schema::Field::new("item", ArrowType::Float32, false)),
                    );
                for (i, v) in values.enumerate() {
                    match v {
                        None => {
                            b.values().append_nulls(dim);
                            b.append(false);
                        }
                        Some(v) => {
                            let items = v
                                .as_array()
                                .filter(|a| a.len() == dim)
                                .ok_or_else(|| bad(i, &format!("an array of {dim} numbers")))?;
                            for x in items {
                                b.values().append_value(
                                    x.as_f64().ok_or_else(|| bad(i, "an array of numbers"))? as f32,
                                );
                            }
                            b.append(true);
                        }
                    }
                }
                Arc::new(b.finish())
            }
            Ok(DataType::SparseFloatVector) => {
                let mut b = arrow_array::builder::BinaryBuilder::new();
                for (i, v) in values.enumerate() {
                    match v {
                        None => b.append_null(),
                        Some(v) => b.append_value(sparse_from_json(v).map_err(|e| bad(i, &e))?),
                    }
                }
                Arc::new(b.finish())
            }
            _ => return Err(invalid(format!("field {name} has no supported type"))),
        };
        check_column(field, &col)?;
        columns.push(col);
    }
    RecordBatch::try_new(target, columns).map_err(|e| invalid(e.to_string()))
}

/// A sparse vector written in JSON as Milvus writes it: an object of index → weight
/// (`{"3": 0.5, "17": 1.25}`).
fn sparse_from_json(v: &serde_json::Value) -> Result<Vec<u8>, String> {
    const WANT: &str = "an object of index (0 to 4294967294) to weight (a number)";
    let obj = v.as_object().ok_or(WANT)?;
    let pairs = obj
        .iter()
        .map(|(k, w)| Some((k.parse::<u32>().ok()?, w.as_f64()? as f32)))
        .collect::<Option<Vec<_>>>()
        .ok_or(WANT)?;
    sluice_types::sparse::encode(pairs).map_err(|e| format!("a valid sparse vector ({e})"))
}

/// `b` with one more column, `field`, holding `column` (as long as `b`).
pub fn with_column(
    b: &RecordBatch,
    field: Field,
    column: ArrayRef,
) -> Result<RecordBatch, arrow_schema::ArrowError> {
    let mut fields: Vec<Field> = b
        .schema()
        .fields()
        .iter()
        .map(|f| f.as_ref().clone())
        .collect();
    fields.push(field);
    let mut columns = b.columns().to_vec();
    columns.push(column);
    RecordBatch::try_new(Arc::new(Schema::new(fields)), columns)
}

/// The shard (of `shards`) of every row of `batch` by its primary key column `pk`: INT64 keys
/// by value (Euclidean remainder), VARCHAR keys by a CRC-32C of their bytes. Inserts and deletes
/// of one key must go to the same shard: every writer routes with this.
pub fn shards_of(batch: &RecordBatch, pk: &str, shards: usize) -> Result<Vec<usize>, RowError> {
    let col = batch
        .column_by_name(pk)
        .ok_or_else(|| invalid(format!("the rows have no primary key column {pk:?}")))?;
    shards_of_keys(col.as_ref(), shards)
}

/// [`shards_of`] for a column of primary keys.
pub fn shards_of_keys(keys: &dyn Array, shards: usize) -> Result<Vec<usize>, RowError> {
    let n = shards.max(1) as u64;
    Ok(match keys.data_type() {
        ArrowType::Int64 => keys
            .as_primitive::<arrow_array::types::Int64Type>()
            .iter()
            .map(|k| (k.unwrap_or(0).rem_euclid(n as i64)) as usize)
            .collect(),
        ArrowType::Utf8 => keys
            .as_string::<i32>()
            .iter()
            .map(|k| (u64::from(crc32c::crc32c(k.unwrap_or("").as_bytes())) % n) as usize)
            .collect(),
        other => {
            return Err(invalid(format!(
                "primary keys are int64 or utf8, not {other}"
            )));
        }
    })
}
