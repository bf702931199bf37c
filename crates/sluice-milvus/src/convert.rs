//! Milvus schemas and columns to and from Sluice's.

use std::collections::HashMap;

use arrow_array::cast::AsArray;
use arrow_array::types::{Float32Type, Float64Type, Int32Type, Int64Type};
use arrow_array::{Array, ArrayRef, RecordBatch};
use arrow_schema::DataType as ArrowType;
use serde_json::Value;
use sluice_types::schema::{CollectionSchema, DataType, FieldSchema};

use crate::DYNAMIC_FIELD;
use crate::array::{ArraySpec, fits};
use crate::pb::common::KeyValuePair;
use crate::pb::schema::{
    self as ms, DataType as MDataType, FieldData, ScalarField, VectorField, field_data,
    scalar_field, vector_field,
};
use crate::status::Failure;

/// Collection property: the Milvus types of fields Sluice stores otherwise (INT8 and INT16 as
/// INT32, FLOAT16, BFLOAT16, INT8 and BINARY vectors as float vectors — a binary one as one 0 or 1
/// per bit, see [`unpack_bits`] —, ARRAY as JSON), as a JSON object of
/// field name → Milvus type number, or for an ARRAY field its declaration
/// ([`ArraySpec::to_json`]).
pub(crate) const PROP_TYPES: &str = "milvus.field_types";
/// Collection property: the consistency level (Milvus's enum number).
pub(crate) const PROP_CONSISTENCY: &str = "milvus.consistency_level";
/// Collection property: the partitions released (Milvus's ReleasePartitions) while the
/// collection stays loaded, as a JSON array of partition ids; reads skip them.
pub(crate) const PROP_RELEASED: &str = "milvus.released_partitions";
/// Collection property: the index (a JSON object: field, name, type, metric, params).
pub(crate) const PROP_INDEX: &str = "milvus.index";
/// Collection property: the partition key field's name (Milvus's `is_partition_key`): rows go
/// to the partitions `_default_0` … `_default_{n-1}` by a hash of their key.
pub(crate) const PROP_PARTITION_KEY: &str = "milvus.partition_key";
/// Collection property: the fields' default values (Milvus's `default_value`), as a JSON object
/// of field name → value; an insert without a value (or with null) for such a field gets it.
pub(crate) const PROP_DEFAULTS: &str = "milvus.field_defaults";
/// Collection property: fields' `mmap.enabled` (Milvus's AlterCollectionField), as a JSON
/// object of field name → `"true"` or `"false"`; described among the field's params. Sluice
/// keeps field data in memory either way.
pub(crate) const PROP_FIELD_MMAP: &str = "milvus.field_mmap";
/// The name Milvus gives the dynamic field.
pub(crate) const MILVUS_DYNAMIC: &str = "$meta";

pub(crate) fn param<'a>(params: &'a [KeyValuePair], key: &str) -> Option<&'a str> {
    params
        .iter()
        .find(|p| p.key == key)
        .map(|p| p.value.as_str())
}

/// A Milvus schema as a Sluice schema named `name` with `shards`, and the properties that keep
/// what Sluice's schema does not.
pub(crate) fn schema_to_sluice(
    m: &ms::CollectionSchema,
    name: &str,
    shards: u32,
) -> Result<(CollectionSchema, HashMap<String, String>), Failure> {
    if !m.struct_array_fields.is_empty() {
        return Err(Failure::unsupported("a struct array field"));
    }
    let mut fields = Vec::new();
    let mut narrow = serde_json::Map::new();
    let mut defaults = serde_json::Map::new();
    let mut partition_key = None;
    for f in &m.fields {
        if f.is_dynamic {
            continue;
        }
        if f.is_partition_key {
            let ty = MDataType::try_from(f.data_type).unwrap_or(MDataType::None);
            if partition_key.is_some() {
                return Err(Failure::invalid(
                    "a collection has at most one partition key",
                ));
            }
            if f.is_primary_key
                || f.nullable
                || !matches!(ty, MDataType::Int64 | MDataType::VarChar)
            {
                return Err(Failure::invalid(format!(
                    "partition key {:?}: an INT64 or VARCHAR field, not the primary key, not \
                     nullable",
                    f.name
                )));
            }
            partition_key = Some(f.name.clone());
        }
        let field = field_to_sluice(f, m.auto_id_legacy(), &mut narrow)?;
        if let Some(v) = default_of(f, &field)? {
            defaults.insert(f.name.clone(), v);
        }
        fields.push(field);
    }
    let functions = m
        .functions
        .iter()
        .map(function_to_sluice)
        .collect::<Result<Vec<_>, _>>()?;
    for f in &mut fields {
        f.is_function_output = functions.iter().any(|func| func.output_field == f.name);
    }
    if m.enable_dynamic_field {
        fields.push(FieldSchema {
            name: DYNAMIC_FIELD.into(),
            data_type: DataType::Json as i32,
            nullable: true,
            is_dynamic: true,
            ..FieldSchema::default()
        });
    }
    let mut props = HashMap::new();
    if !narrow.is_empty() {
        props.insert(PROP_TYPES.to_owned(), Value::Object(narrow).to_string());
    }
    if !defaults.is_empty() {
        props.insert(
            PROP_DEFAULTS.to_owned(),
            Value::Object(defaults).to_string(),
        );
    }
    if let Some(key) = partition_key {
        props.insert(PROP_PARTITION_KEY.to_owned(), key);
    }
    Ok((
        CollectionSchema {
            name: name.to_owned(),
            description: m.description.clone(),
            fields,
            shards,
            version: 0,
            functions,
        },
        props,
    ))
}

/// A Milvus function as Sluice's: BM25 from one input field to one output field (its fields'
/// rules are checked with the schema's).
fn function_to_sluice(
    f: &ms::FunctionSchema,
) -> Result<sluice_types::schema::FunctionSchema, Failure> {
    use sluice_types::schema::FunctionType;
    if ms::FunctionType::try_from(f.r#type) != Ok(ms::FunctionType::Bm25) {
        return Err(Failure::unsupported(format!(
            "function {:?} of type {}: BM25 is the function Sluice runs",
            f.name,
            ms::FunctionType::try_from(f.r#type).map_or("unknown", |t| t.as_str_name())
        )));
    }
    let ([input], [output]) = (
        f.input_field_names.as_slice(),
        f.output_field_names.as_slice(),
    ) else {
        return Err(Failure::invalid(format!(
            "BM25 function {:?} needs exactly one input and one output field",
            f.name
        )));
    };
    if let Some(p) = f.params.first() {
        return Err(Failure::invalid(format!(
            "BM25 function {:?} takes no params (it has {:?})",
            f.name, p.key
        )));
    }
    Ok(sluice_types::schema::FunctionSchema {
        name: f.name.clone(),
        r#type: FunctionType::Bm25 as i32,
        input_field: input.clone(),
        output_field: output.clone(),
    })
}

/// One Milvus field as a Sluice field (its id left 0); a field Sluice stores as another type
/// (INT8 or INT16 as INT32, an ARRAY as JSON, ...) is noted in `narrow` (its [`PROP_TYPES`]
/// entry). Its default value is [`default_of`]'s.
pub(crate) fn field_to_sluice(
    f: &ms::FieldSchema,
    auto_id_legacy: bool,
    narrow: &mut serde_json::Map<String, Value>,
) -> Result<FieldSchema, Failure> {
    if f.name == DYNAMIC_FIELD {
        return Err(Failure::invalid(format!(
            "field name {DYNAMIC_FIELD:?} is reserved for the dynamic field"
        )));
    }
    let mt = MDataType::try_from(f.data_type).unwrap_or(MDataType::None);
    let data_type = match mt {
        MDataType::Bool => DataType::Bool,
        MDataType::Int8 | MDataType::Int16 => {
            narrow.insert(f.name.clone(), Value::from(f.data_type));
            DataType::Int32
        }
        MDataType::Int32 => DataType::Int32,
        MDataType::Int64 => DataType::Int64,
        MDataType::Float => DataType::Float,
        MDataType::Double => DataType::Double,
        MDataType::VarChar => DataType::Varchar,
        MDataType::Json => DataType::Json,
        MDataType::FloatVector => DataType::FloatVector,
        MDataType::SparseFloatVector => DataType::SparseFloatVector,
        // Kept as 32-bit floats; the Milvus type is noted, and answers are in it.
        MDataType::Float16Vector | MDataType::BFloat16Vector | MDataType::Int8Vector => {
            narrow.insert(f.name.clone(), Value::from(f.data_type));
            DataType::FloatVector
        }
        // One float (0 or 1) per bit: the HAMMING distance of two is their squared L2 one.
        MDataType::BinaryVector => {
            let bits: Option<u32> = param(&f.type_params, "dim").and_then(|d| d.parse().ok());
            if !bits.is_some_and(|b| b > 0 && b % 8 == 0) {
                return Err(Failure::invalid(format!(
                    "binary vector field {:?}: dim must be a positive multiple of 8",
                    f.name
                )));
            }
            narrow.insert(f.name.clone(), Value::from(f.data_type));
            DataType::FloatVector
        }
        MDataType::Array => {
            narrow.insert(f.name.clone(), ArraySpec::of(f)?.to_json());
            DataType::Json
        }
        other => {
            return Err(Failure::unsupported(format!(
                "data type {} (field {:?})",
                other.as_str_name(),
                f.name
            )));
        }
    };
    let flag = |key: &str| -> Result<bool, Failure> {
        match param(&f.type_params, key) {
            None => Ok(false),
            Some(v) if v.eq_ignore_ascii_case("true") => Ok(true),
            Some(v) if v.eq_ignore_ascii_case("false") => Ok(false),
            Some(v) => Err(Failure::invalid(format!(
                "field {:?}: {key} {v:?} is not true or false",
                f.name
            ))),
        }
    };
    let number = |key: &str| -> Result<u32, Failure> {
        match param(&f.type_params, key) {
            None => Ok(0),
            Some(v) => v.parse().map_err(|_| {
                Failure::invalid(format!("field {:?}: {key} {v:?} is not a number", f.name))
            }),
        }
    };
    Ok(FieldSchema {
        field_id: 0,
        name: f.name.clone(),
        data_type: data_type as i32,
        is_primary_key: f.is_primary_key,
        auto_id: f.auto_id || (f.is_primary_key && auto_id_legacy),
        // An ARRAY's max_length bounds its VARCHAR elements (kept in its declaration).
        max_length: if mt == MDataType::Array {
            0
        } else {
            number("max_length")?
        },
        dim: number("dim")?,
        nullable: f.nullable,
        description: f.description.clone(),
        is_dynamic: false,
        enable_analyzer: flag("enable_analyzer")?,
        analyzer_params: param(&f.type_params, "analyzer_params")
            .unwrap_or_default()
            .to_owned(),
        is_function_output: f.is_function_output,
        enable_match: flag("enable_match")?,
    })
}

/// The default value of Milvus field `f` (Sluice field `field`) as JSON, checked against the
/// field: BOOL, the integers (within their Milvus width), FLOAT, DOUBLE and VARCHAR (within
/// its max length) take one of their type.
pub(crate) fn default_of(
    f: &ms::FieldSchema,
    field: &FieldSchema,
) -> Result<Option<Value>, Failure> {
    use ms::value_field::Data;
    let Some(data) = f.default_value.as_ref().and_then(|d| d.data.as_ref()) else {
        return Ok(None);
    };
    let mt = MDataType::try_from(f.data_type).unwrap_or(MDataType::None);
    let wrong = || {
        Failure::invalid(format!(
            "field {:?}: its default value {data:?} is not a {}",
            f.name,
            mt.as_str_name()
        ))
    };
    if f.is_primary_key || field.is_dynamic {
        return Err(Failure::invalid(format!(
            "field {:?}: a primary key or dynamic field has no default value",
            f.name
        )));
    }
    // Clients send integers as int or long data, and floats as float or double data.
    let int = match data {
        Data::IntData(i) => Some(i64::from(*i)),
        Data::LongData(l) => Some(*l),
        _ => None,
    };
    let float = match data {
        Data::FloatData(x) => Some(f64::from(*x)),
        Data::DoubleData(x) => Some(*x),
        _ => None,
    };
    let value = match (mt, data) {
        (MDataType::Bool, Data::BoolData(b)) => Value::from(*b),
        (MDataType::Int8, _) if int.is_some_and(|i| i8::try_from(i).is_ok()) => Value::from(int),
        (MDataType::Int16, _) if int.is_some_and(|i| i16::try_from(i).is_ok()) => Value::from(int),
        (MDataType::Int32, _) if int.is_some_and(|i| i32::try_from(i).is_ok()) => Value::from(int),
        (MDataType::Int64, _) if int.is_some() => Value::from(int),
        (MDataType::Float, _) if float.is_some_and(|x| x.is_finite() && (x as f32).is_finite()) => {
            Value::from(float)
        }
        (MDataType::Double, _) if float.is_some_and(f64::is_finite) => Value::from(float),
        (MDataType::VarChar, Data::StringData(v))
            if field.max_length == 0 || v.len() <= field.max_length as usize =>
        {
            Value::from(v.clone())
        }
        (t, _) if is_plain_scalar(t) => return Err(wrong()),
        _ => {
            return Err(Failure::unsupported(format!(
                "a default value for field {:?} of type {}",
                f.name,
                mt.as_str_name()
            )));
        }
    };
    Ok(Some(value))
}

/// Whether `t` is one of Milvus's plain scalar types: BOOL, the integers, FLOAT, DOUBLE and
/// VARCHAR (what a default value or an ARRAY element may be).
pub(crate) fn is_plain_scalar(t: MDataType) -> bool {
    matches!(
        t,
        MDataType::Bool
            | MDataType::Int8
            | MDataType::Int16
            | MDataType::Int32
            | MDataType::Int64
            | MDataType::Float
            | MDataType::Double
            | MDataType::VarChar
    )
}

/// The default value kept for field `name` (see [`PROP_DEFAULTS`]) as Milvus's.
fn default_to_milvus(
    name: &str,
    ty: MDataType,
    props: &HashMap<String, String>,
) -> Option<ms::ValueField> {
    use ms::value_field::Data;
    let defaults = defaults(props);
    let v = defaults.get(name)?;
    let data = match ty {
        MDataType::Bool => Data::BoolData(v.as_bool()?),
        MDataType::Int8 | MDataType::Int16 | MDataType::Int32 => {
            Data::IntData(i32::try_from(v.as_i64()?).ok()?)
        }
        MDataType::Int64 => Data::LongData(v.as_i64()?),
        MDataType::Float => Data::FloatData(v.as_f64()? as f32),
        MDataType::Double => Data::DoubleData(v.as_f64()?),
        MDataType::VarChar => Data::StringData(v.as_str()?.to_owned()),
        _ => return None,
    };
    Some(ms::ValueField { data: Some(data) })
}

/// Binary vectors (Milvus's BINARY_VECTOR: 8 bits a byte, the first bit the byte's highest, as
/// numpy's `packbits` lays them out) as one float per bit, 0 or 1.
pub(crate) fn unpack_bits(bytes: &[u8]) -> Vec<f32> {
    bytes
        .iter()
        .flat_map(|b| (0..8).rev().map(move |i| f32::from((b >> i) & 1)))
        .collect()
}

/// [`unpack_bits`] undone: a float above one half is a set bit.
pub(crate) fn pack_bits(values: &[f32]) -> Vec<u8> {
    values
        .chunks(8)
        .map(|bits| {
            bits.iter()
                .enumerate()
                .fold(0u8, |b, (i, &x)| b | (u8::from(x > 0.5) << (7 - i)))
        })
        .collect()
}

/// `values`, `dim` at a time, as JSON arrays of numbers (one per vector; `dim` > 0).
fn vector_values(values: &[f32], dim: i64) -> Vec<Value> {
    values
        .chunks(dim as usize)
        .map(|c| Value::Array(c.iter().map(|x| f64::from(*x).into()).collect()))
        .collect()
}

/// Int8 vectors (Milvus's INT8_VECTOR: one signed byte a dimension) as 32-bit floats.
pub(crate) fn int8s(bytes: &[u8]) -> Vec<f32> {
    bytes.iter().map(|&b| f32::from(b as i8)).collect()
}

/// 16-bit floats (IEEE half, or `brain` float16), little-endian, as 32-bit ones (an odd last
/// byte is left out).
pub(crate) fn half_floats(bytes: &[u8], brain: bool) -> Vec<f32> {
    bytes
        .chunks_exact(2)
        .map(|b| {
            let b = [b[0], b[1]];
            if brain {
                half::bf16::from_le_bytes(b).to_f32()
            } else {
                half::f16::from_le_bytes(b).to_f32()
            }
        })
        .collect()
}

/// The default values kept in `props` (see [`PROP_DEFAULTS`]).
pub(crate) fn defaults(props: &HashMap<String, String>) -> serde_json::Map<String, Value> {
    props
        .get(PROP_DEFAULTS)
        .and_then(|v| serde_json::from_str(v).ok())
        .unwrap_or_default()
}

trait LegacyAutoId {
    fn auto_id_legacy(&self) -> bool;
}

impl LegacyAutoId for ms::CollectionSchema {
    #[allow(deprecated)]
    fn auto_id_legacy(&self) -> bool {
        self.auto_id
    }
}

/// The [`PROP_TYPES`] entries of `props`.
fn kept_types(props: &HashMap<String, String>) -> serde_json::Map<String, Value> {
    json_object(props, PROP_TYPES)
}

/// Collection property `key` of `props` as the JSON object it holds (empty if none).
pub(crate) fn json_object(
    props: &HashMap<String, String>,
    key: &str,
) -> serde_json::Map<String, Value> {
    props
        .get(key)
        .and_then(|t| serde_json::from_str(t).ok())
        .unwrap_or_default()
}

/// The Milvus type a [`PROP_TYPES`] entry names: a type number, or an object whose `type` is
/// one.
fn kept_type(entry: &Value) -> Option<MDataType> {
    let t = entry.as_i64().or_else(|| entry.get("type")?.as_i64())?;
    MDataType::try_from(i32::try_from(t).ok()?).ok()
}

/// The declaration of Sluice field `f` if it is a Milvus ARRAY field.
pub(crate) fn array_spec(f: &FieldSchema, props: &HashMap<String, String>) -> Option<ArraySpec> {
    ArraySpec::from_json(kept_types(props).get(&f.name)?)
}

/// The Milvus type of Sluice field `f`.
pub(crate) fn milvus_type(f: &FieldSchema, props: &HashMap<String, String>) -> MDataType {
    if let Some(t) = kept_types(props).get(&f.name).and_then(kept_type) {
        return t;
    }
    match DataType::try_from(f.data_type) {
        Ok(DataType::Bool) => MDataType::Bool,
        Ok(DataType::Int32) => MDataType::Int32,
        Ok(DataType::Int64) => MDataType::Int64,
        Ok(DataType::Float) => MDataType::Float,
        Ok(DataType::Double) => MDataType::Double,
        Ok(DataType::Varchar) => MDataType::VarChar,
        Ok(DataType::Json) => MDataType::Json,
        Ok(DataType::FloatVector) => MDataType::FloatVector,
        Ok(DataType::SparseFloatVector) => MDataType::SparseFloatVector,
        _ => MDataType::None,
    }
}

/// A Sluice schema as Milvus describes it.
pub(crate) fn schema_to_milvus(
    s: &CollectionSchema,
    props: &HashMap<String, String>,
) -> ms::CollectionSchema {
    let kv = |k: &str, v: String| KeyValuePair {
        key: k.into(),
        value: v,
    };
    // The dynamic field is not listed (as Milvus does not): `enable_dynamic_field` says it is there.
    let fields = s
        .fields
        .iter()
        .filter(|f| !f.is_dynamic)
        .map(|f| {
            let mut type_params = Vec::new();
            if f.dim > 0 {
                type_params.push(kv("dim", f.dim.to_string()));
            }
            if f.max_length > 0 {
                type_params.push(kv("max_length", f.max_length.to_string()));
            }
            let array = array_spec(f, props);
            if let Some(a) = array {
                type_params.extend(a.type_params());
            }
            if f.enable_analyzer {
                type_params.push(kv("enable_analyzer", "true".into()));
                if !f.analyzer_params.is_empty() {
                    type_params.push(kv("analyzer_params", f.analyzer_params.clone()));
                }
            }
            if f.enable_match {
                type_params.push(kv("enable_match", "true".into()));
            }
            if let Some(v) = json_object(props, PROP_FIELD_MMAP)
                .get(&f.name)
                .and_then(Value::as_str)
            {
                type_params.push(kv("mmap.enabled", v.to_owned()));
            }
            ms::FieldSchema {
                field_id: 100 + f.field_id,
                name: if f.is_dynamic {
                    MILVUS_DYNAMIC.into()
                } else {
                    f.name.clone()
                },
                is_primary_key: f.is_primary_key,
                description: f.description.clone(),
                data_type: milvus_type(f, props) as i32,
                type_params,
                auto_id: f.auto_id,
                is_dynamic: f.is_dynamic,
                nullable: f.nullable && !f.is_dynamic,
                default_value: default_to_milvus(&f.name, milvus_type(f, props), props),
                is_partition_key: props.get(PROP_PARTITION_KEY) == Some(&f.name),
                element_type: array.map_or(0, |a| a.element as i32),
                is_function_output: f.is_function_output,
                ..Default::default()
            }
        })
        .collect();
    let id_of = |name: &str| {
        s.fields
            .iter()
            .find(|f| f.name == name)
            .map_or(0, |f| 100 + f.field_id)
    };
    let functions = s
        .functions
        .iter()
        .enumerate()
        .map(|(i, func)| ms::FunctionSchema {
            name: func.name.clone(),
            id: 100 + i as i64,
            r#type: ms::FunctionType::Bm25 as i32,
            input_field_names: vec![func.input_field.clone()],
            input_field_ids: vec![id_of(&func.input_field)],
            output_field_names: vec![func.output_field.clone()],
            output_field_ids: vec![id_of(&func.output_field)],
            ..Default::default()
        })
        .collect();
    #[allow(deprecated)]
    ms::CollectionSchema {
        name: s.name.clone(),
        description: s.description.clone(),
        auto_id: s.fields.iter().any(|f| f.is_primary_key && f.auto_id),
        fields,
        functions,
        enable_dynamic_field: s.fields.iter().any(|f| f.is_dynamic),
        ..Default::default()
    }
}

/// The number of rows in a Milvus column.
pub(crate) fn column_len(fd: &FieldData) -> usize {
    match &fd.field {
        Some(field_data::Field::Scalars(s)) => match &s.data {
            Some(scalar_field::Data::BoolData(a)) => a.data.len(),
            Some(scalar_field::Data::IntData(a)) => a.data.len(),
            Some(scalar_field::Data::LongData(a)) => a.data.len(),
            Some(scalar_field::Data::FloatData(a)) => a.data.len(),
            Some(scalar_field::Data::DoubleData(a)) => a.data.len(),
            Some(scalar_field::Data::StringData(a)) => a.data.len(),
            Some(scalar_field::Data::JsonData(a)) => a.data.len(),
            Some(scalar_field::Data::ArrayData(a)) => a.data.len(),
            _ => 0,
        },
        Some(field_data::Field::Vectors(v)) => match &v.data {
            Some(vector_field::Data::FloatVector(a)) if v.dim > 0 => a.data.len() / v.dim as usize,
            Some(vector_field::Data::Float16Vector(b) | vector_field::Data::Bfloat16Vector(b))
                if v.dim > 0 =>
            {
                b.len() / (2 * v.dim as usize)
            }
            Some(vector_field::Data::SparseFloatVector(a)) => a.contents.len(),
            Some(vector_field::Data::Int8Vector(b)) if v.dim > 0 => b.len() / v.dim as usize,
            Some(vector_field::Data::BinaryVector(b)) if v.dim >= 8 => {
                b.len() / (v.dim as usize / 8)
            }
            _ => 0,
        },
        _ => 0,
    }
}

/// The values of a Milvus scalar column (`name`'s), one JSON value per row.
fn scalar_values(name: &str, data: &scalar_field::Data) -> Result<Vec<Value>, Failure> {
    Ok(match data {
        scalar_field::Data::BoolData(a) => a.data.iter().map(|v| (*v).into()).collect(),
        scalar_field::Data::IntData(a) => a.data.iter().map(|v| (*v).into()).collect(),
        scalar_field::Data::LongData(a) => a.data.iter().map(|v| (*v).into()).collect(),
        scalar_field::Data::FloatData(a) => a.data.iter().map(|v| f64::from(*v).into()).collect(),
        scalar_field::Data::DoubleData(a) => a.data.iter().map(|v| (*v).into()).collect(),
        scalar_field::Data::StringData(a) => a.data.iter().map(|v| v.clone().into()).collect(),
        scalar_field::Data::JsonData(a) => a
            .data
            .iter()
            .enumerate()
            .map(|(i, b)| {
                serde_json::from_slice::<Value>(b)
                    .map_err(|e| Failure::invalid(format!("field {name:?} row {i}: not JSON: {e}")))
            })
            .collect::<Result<_, _>>()?,
        _ => {
            return Err(Failure::unsupported(format!(
                "the data of field {name:?} (a Milvus type Sluice does not hold)"
            )));
        }
    })
}

/// The values of a Milvus column, one JSON value per row (null where `valid_data` says so).
fn column_values(fd: &FieldData) -> Result<Vec<Value>, Failure> {
    let name = &fd.field_name;
    let values: Vec<Value> = match &fd.field {
        Some(field_data::Field::Scalars(s)) => match &s.data {
            Some(scalar_field::Data::ArrayData(a)) => a
                .data
                .iter()
                .enumerate()
                .map(|(i, row)| match &row.data {
                    Some(scalar_field::Data::ArrayData(_) | scalar_field::Data::JsonData(_))
                    | None => Err(Failure::invalid(format!(
                        "field {name:?} row {i}: an array holds scalars"
                    ))),
                    Some(data) => Ok(Value::Array(scalar_values(name, data)?)),
                })
                .collect::<Result<_, _>>()?,
            Some(data) => scalar_values(name, data)?,
            None => {
                return Err(Failure::unsupported(format!(
                    "the data of field {name:?} ({})",
                    MDataType::try_from(fd.r#type).map_or("unknown type", |t| t.as_str_name())
                )));
            }
        },
        Some(field_data::Field::Vectors(v)) => match &v.data {
            Some(vector_field::Data::FloatVector(a)) if v.dim > 0 => vector_values(&a.data, v.dim),
            Some(vector_field::Data::Float16Vector(b) | vector_field::Data::Bfloat16Vector(b))
                if v.dim > 0 =>
            {
                let brain = matches!(v.data, Some(vector_field::Data::Bfloat16Vector(_)));
                if b.len() % (2 * v.dim as usize) != 0 {
                    return Err(Failure::invalid(format!(
                        "the vectors of field {name:?}: {} bytes is not a whole number of \
                         {}-dimensional 16-bit vectors",
                        b.len(),
                        v.dim
                    )));
                }
                vector_values(&half_floats(b, brain), v.dim)
            }
            Some(vector_field::Data::Int8Vector(b)) if v.dim > 0 => {
                if b.len() % v.dim as usize != 0 {
                    return Err(Failure::invalid(format!(
                        "the vectors of field {name:?}: {} bytes is not a whole number of \
                         {}-dimensional int8 vectors",
                        b.len(),
                        v.dim
                    )));
                }
                vector_values(&int8s(b), v.dim)
            }
            Some(vector_field::Data::BinaryVector(b)) if v.dim > 0 => {
                if v.dim % 8 != 0 || b.len() % (v.dim as usize / 8) != 0 {
                    return Err(Failure::invalid(format!(
                        "the vectors of field {name:?}: {} bytes is not a whole number of \
                         {}-bit binary vectors",
                        b.len(),
                        v.dim
                    )));
                }
                vector_values(&unpack_bits(b), v.dim)
            }
            Some(vector_field::Data::SparseFloatVector(a)) => a
                .contents
                .iter()
                .enumerate()
                .map(|(i, row)| {
                    sluice_types::sparse::check(row)
                        .map_err(|e| Failure::invalid(format!("field {name:?} row {i}: {e}")))?;
                    Ok(Value::Object(
                        sluice_types::sparse::pairs(row)
                            .map(|(k, w)| (k.to_string(), f64::from(w).into()))
                            .collect(),
                    ))
                })
                .collect::<Result<_, Failure>>()?,
            _ => {
                return Err(Failure::unsupported(format!(
                    "the vectors of field {name:?} (float, float16, bfloat16, int8, binary and sparse \
                     float vectors are)"
                )));
            }
        },
        _ => return Err(Failure::invalid(format!("field {name:?} carries no data"))),
    };
    if fd.valid_data.is_empty() {
        return Ok(values);
    }
    // Nullable columns: Milvus sends only the valid values, or one per row; both appear.
    let valid = &fd.valid_data;
    if values.len() == valid.len() {
        return Ok(values
            .into_iter()
            .zip(valid)
            .map(|(v, ok)| if *ok { v } else { Value::Null })
            .collect());
    }
    let mut it = values.into_iter();
    Ok(valid
        .iter()
        .map(|ok| {
            if *ok {
                it.next().unwrap_or(Value::Null)
            } else {
                Value::Null
            }
        })
        .collect())
}

/// Milvus columns as a batch of `schema`'s rows (the dynamic field's JSON objects go into
/// [`DYNAMIC_FIELD`]). `num_rows` is the request's row count (0: not given); every column must
/// have that many rows, and name a field at most once. Values of fields Sluice stores as
/// another type (`props`' [`PROP_TYPES`]) must fit the Milvus type ([`check_kept`]); fields with
/// a default value ([`PROP_DEFAULTS`]) get it where a row has none.
pub(crate) fn rows_from_milvus(
    schema: &CollectionSchema,
    props: &HashMap<String, String>,
    columns: &[FieldData],
    num_rows: u32,
) -> Result<RecordBatch, Failure> {
    let rows = json_rows_from_milvus(schema, props, columns, num_rows)?;
    batch_of_rows(schema, props, rows)
}

/// A row as JSON: Sluice field name → value (the dynamic field's object under
/// [`DYNAMIC_FIELD`]).
pub(crate) type JsonRow = serde_json::Map<String, Value>;

/// [`rows_from_milvus`]'s rows before default values: a row has a key for each field a column
/// was given for.
pub(crate) fn json_rows_from_milvus(
    schema: &CollectionSchema,
    props: &HashMap<String, String>,
    columns: &[FieldData],
    num_rows: u32,
) -> Result<Vec<JsonRow>, Failure> {
    let kept = kept_types(props);
    let n = columns.iter().map(column_len).max().unwrap_or(0);
    if n == 0 {
        return Err(Failure::invalid("no rows to insert"));
    }
    if num_rows != 0 && num_rows as usize != n {
        return Err(Failure::invalid(format!(
            "num_rows is {num_rows} but the fields hold {n} rows"
        )));
    }
    let mut rows: Vec<serde_json::Map<String, Value>> = vec![serde_json::Map::new(); n];
    let mut seen = std::collections::HashSet::new();
    for fd in columns {
        let dynamic = fd.is_dynamic || fd.field_name == MILVUS_DYNAMIC;
        let target = if dynamic {
            if sluice_types::schema::dynamic_field(schema).is_none() {
                return Err(Failure::invalid(
                    "the collection has no dynamic field: every key must be a field",
                ));
            }
            DYNAMIC_FIELD.to_owned()
        } else {
            if !schema.fields.iter().any(|f| f.name == fd.field_name) {
                return Err(Failure::invalid(format!(
                    "field {:?} does not exist in the collection",
                    fd.field_name
                )));
            }
            if let Some(func) = sluice_types::schema::bm25_of(schema, &fd.field_name) {
                return Err(Failure::invalid(format!(
                    "field {:?} is the output of BM25 function {:?}: it is computed from field \
                     {:?}; give that text instead",
                    fd.field_name, func.name, func.input_field
                )));
            }
            fd.field_name.clone()
        };
        if !seen.insert(target.clone()) {
            return Err(Failure::invalid(format!(
                "field {:?} is given more than once",
                fd.field_name
            )));
        }
        let values = column_values(fd)?;
        if dynamic && let Some(i) = values.iter().position(|v| !(v.is_object() || v.is_null())) {
            return Err(Failure::invalid(format!(
                "field {:?} row {i}: the dynamic field holds a JSON object per row",
                fd.field_name
            )));
        }
        if values.len() != n {
            return Err(Failure::invalid(format!(
                "field {:?} has {} rows, others {n}",
                fd.field_name,
                values.len()
            )));
        }
        if let Some(entry) = kept.get(&target).filter(|_| !dynamic) {
            check_kept(&target, entry, &values)?;
        }
        for (row, v) in rows.iter_mut().zip(values) {
            row.insert(target.clone(), v);
        }
    }
    Ok(rows)
}

/// `rows` as a batch of `schema`'s rows, fields with a default value ([`PROP_DEFAULTS`]) given
/// it where a row has none.
pub(crate) fn batch_of_rows(
    schema: &CollectionSchema,
    props: &HashMap<String, String>,
    mut rows: Vec<JsonRow>,
) -> Result<RecordBatch, Failure> {
    // A field with a default value: rows without a value for it get the default.
    for (field, default) in &defaults(props) {
        for row in &mut rows {
            if row.get(field).is_none_or(Value::is_null) {
                row.insert(field.clone(), default.clone());
            }
        }
    }
    let rows: Vec<Value> = rows.into_iter().map(Value::Object).collect();
    sluice_storage::rows::batch_from_json(schema, &rows)
        .map_err(|e| Failure::invalid(e.to_string()))
}

/// The rows of `batches` as JSON (every stored field of `schema` the batches hold: not
/// functions' outputs), values as Milvus would answer them and [`json_rows_from_milvus`] would
/// take them back.
pub(crate) fn json_rows_of(
    schema: &CollectionSchema,
    props: &HashMap<String, String>,
    batches: &[RecordBatch],
) -> Result<Vec<JsonRow>, Failure> {
    let n = batches.iter().map(RecordBatch::num_rows).sum();
    let mut rows = vec![JsonRow::new(); n];
    let names: Vec<String> = sluice_types::schema::stored_fields(schema)
        .map(|f| f.name.clone())
        .collect();
    let columns = batches_to_milvus(schema, props, batches, &names)?;
    for (f, column) in sluice_types::schema::stored_fields(schema).zip(columns) {
        let values = column_values(&column)?;
        if values.len() != n {
            return Err(Failure::unexpected(format!(
                "field {:?}: {} values for {n} rows",
                f.name,
                values.len()
            )));
        }
        for (row, v) in rows.iter_mut().zip(values) {
            row.insert(f.name.clone(), v);
        }
    }
    Ok(rows)
}

/// Checks values of field `name` against its Milvus type where Sluice keeps it as another
/// ([`check_kept`]); other fields' values need no check here.
pub(crate) fn check_values(
    props: &HashMap<String, String>,
    name: &str,
    values: &[Value],
) -> Result<(), Failure> {
    match kept_types(props).get(name) {
        Some(entry) => check_kept(name, entry, values),
        None => Ok(()),
    }
}

/// Checks the values of field `name`, kept as another type than its Milvus one (its
/// [`PROP_TYPES`] `entry`), against the Milvus type: INT8 and INT16 values within their width,
/// ARRAY values as [`ArraySpec::check`] says.
fn check_kept(name: &str, entry: &Value, values: &[Value]) -> Result<(), Failure> {
    if let Some(spec) = ArraySpec::from_json(entry) {
        return values
            .iter()
            .enumerate()
            .try_for_each(|(row, v)| spec.check(name, row, v));
    }
    let Some(ty @ (MDataType::Int8 | MDataType::Int16)) = kept_type(entry) else {
        return Ok(());
    };
    match values
        .iter()
        .position(|v| !v.is_null() && !v.as_i64().is_some_and(|x| fits(ty, x)))
    {
        None => Ok(()),
        Some(row) => Err(Failure::invalid(format!(
            "field {name:?} row {row}: {} is not of type {}",
            values[row],
            ty.as_str_name()
        ))),
    }
}

/// A Sluice result column as a Milvus column named `name` of Milvus type `ty`.
pub(crate) fn column_to_milvus(
    name: &str,
    ty: MDataType,
    array: Option<ArraySpec>,
    dynamic: bool,
    col: &dyn Array,
) -> Result<FieldData, Failure> {
    let n = col.len();
    let valid: Vec<bool> = if col.null_count() > 0 && !dynamic {
        (0..n).map(|i| col.is_valid(i)).collect()
    } else {
        Vec::new()
    };
    let scalars = |data| Some(field_data::Field::Scalars(ScalarField { data: Some(data) }));
    let field = match col.data_type() {
        ArrowType::Boolean => {
            let a = col.as_boolean();
            scalars(scalar_field::Data::BoolData(ms::BoolArray {
                data: (0..n).map(|i| a.is_valid(i) && a.value(i)).collect(),
            }))
        }
        ArrowType::Int32 => {
            let a = col.as_primitive::<Int32Type>();
            scalars(scalar_field::Data::IntData(ms::IntArray {
                data: (0..n).map(|i| a.value(i)).collect(),
            }))
        }
        ArrowType::Int64 => {
            let a = col.as_primitive::<Int64Type>();
            scalars(scalar_field::Data::LongData(ms::LongArray {
                data: (0..n).map(|i| a.value(i)).collect(),
            }))
        }
        ArrowType::Float32 => {
            let a = col.as_primitive::<Float32Type>();
            scalars(scalar_field::Data::FloatData(ms::FloatArray {
                data: (0..n).map(|i| a.value(i)).collect(),
            }))
        }
        ArrowType::Float64 => {
            let a = col.as_primitive::<Float64Type>();
            scalars(scalar_field::Data::DoubleData(ms::DoubleArray {
                data: (0..n).map(|i| a.value(i)).collect(),
            }))
        }
        ArrowType::Utf8 if let Some(spec) = array => {
            let a = col.as_string::<i32>();
            let data = (0..n)
                .map(|i| {
                    if !a.is_valid(i) {
                        return spec.scalar_field(None);
                    }
                    match serde_json::from_str::<Value>(a.value(i)) {
                        Ok(Value::Array(items)) => spec.scalar_field(Some(&items)),
                        _ => Err(Failure::unexpected(format!(
                            "ARRAY field {name:?} row {i} is stored as {:?}",
                            a.value(i)
                        ))),
                    }
                })
                .collect::<Result<_, _>>()?;
            scalars(scalar_field::Data::ArrayData(ms::ArrayArray {
                data,
                element_type: spec.element as i32,
            }))
        }
        ArrowType::Utf8 if ty == MDataType::Json => {
            let a = col.as_string::<i32>();
            let data = (0..n)
                .map(|i| {
                    if a.is_valid(i) {
                        a.value(i).as_bytes().to_vec()
                    } else if dynamic {
                        b"{}".to_vec()
                    } else {
                        Vec::new()
                    }
                })
                .collect();
            scalars(scalar_field::Data::JsonData(ms::JsonArray { data }))
        }
        ArrowType::Utf8 => {
            let a = col.as_string::<i32>();
            scalars(scalar_field::Data::StringData(ms::StringArray {
                data: (0..n)
                    .map(|i| {
                        if a.is_valid(i) {
                            a.value(i).to_owned()
                        } else {
                            String::new()
                        }
                    })
                    .collect(),
            }))
        }
        ArrowType::FixedSizeList(_, dim) => {
            let a = col.as_fixed_size_list();
            let values = a.values().as_primitive::<Float32Type>().values();
            let data = match ty {
                MDataType::Float16Vector => vector_field::Data::Float16Vector(
                    values
                        .iter()
                        .flat_map(|x| half::f16::from_f32(*x).to_le_bytes())
                        .collect(),
                ),
                MDataType::BFloat16Vector => vector_field::Data::Bfloat16Vector(
                    values
                        .iter()
                        .flat_map(|x| half::bf16::from_f32(*x).to_le_bytes())
                        .collect(),
                ),
                MDataType::BinaryVector => vector_field::Data::BinaryVector(pack_bits(values)),
                MDataType::Int8Vector => vector_field::Data::Int8Vector(
                    // Every value was an int8 (inserts go through [`int8s`]).
                    values.iter().map(|x| (x.round() as i8) as u8).collect(),
                ),
                _ => vector_field::Data::FloatVector(ms::FloatArray {
                    data: values.to_vec(),
                }),
            };
            Some(field_data::Field::Vectors(VectorField {
                dim: i64::from(*dim),
                data: Some(data),
            }))
        }
        ArrowType::Binary if ty == MDataType::SparseFloatVector => {
            let a = col.as_binary::<i32>();
            let contents: Vec<Vec<u8>> = a.iter().map(|r| r.unwrap_or_default().to_vec()).collect();
            let dim = sluice_types::sparse::dim(contents.iter().map(Vec::as_slice)) as i64;
            Some(field_data::Field::Vectors(VectorField {
                dim,
                data: Some(vector_field::Data::SparseFloatVector(
                    ms::SparseFloatArray { dim, contents },
                )),
            }))
        }
        other => {
            return Err(Failure::unexpected(format!(
                "field {name:?} came back as {other}"
            )));
        }
    };
    Ok(FieldData {
        r#type: ty as i32,
        field_name: name.to_owned(),
        field,
        field_id: 0,
        is_dynamic: dynamic,
        valid_data: valid,
    })
}

/// The columns of `batches` (rows in order) as Milvus columns, for the Sluice fields `names`.
pub(crate) fn batches_to_milvus(
    schema: &CollectionSchema,
    props: &HashMap<String, String>,
    batches: &[RecordBatch],
    names: &[String],
) -> Result<Vec<FieldData>, Failure> {
    let mut out = Vec::new();
    for name in names {
        let Some(f) = schema.fields.iter().find(|f| &f.name == name) else {
            continue;
        };
        let col = column(f, batches)?;
        let milvus_name = if f.is_dynamic {
            MILVUS_DYNAMIC
        } else {
            name.as_str()
        };
        out.push(column_to_milvus(
            milvus_name,
            milvus_type(f, props),
            array_spec(f, props),
            f.is_dynamic,
            col.as_ref(),
        )?);
    }
    Ok(out)
}

/// Field `f`'s column over `batches`, concatenated (empty, of its Arrow type, when no batch has
/// it).
pub(crate) fn column(f: &FieldSchema, batches: &[RecordBatch]) -> Result<ArrayRef, Failure> {
    let parts: Vec<&dyn Array> = batches
        .iter()
        .filter_map(|b| b.column_by_name(&f.name).map(|a| a.as_ref()))
        .collect();
    if parts.is_empty() {
        let ty =
            sluice_storage::rows::arrow_type(f).map_err(|e| Failure::unexpected(e.to_string()))?;
        return Ok(arrow_array::new_empty_array(&ty));
    }
    arrow_select::concat::concat(&parts).map_err(|e| Failure::unexpected(e.to_string()))
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// id (INT64 key), vec (2 floats), small (INT8), tags (ARRAY of ≤ 2 VARCHARs of ≤ 3 bytes,
    /// nullable), note (nullable VARCHAR), and a dynamic field; as Milvus describes it.
    fn collection() -> (CollectionSchema, HashMap<String, String>) {
        let f = |name: &str, ty: MDataType| ms::FieldSchema {
            name: name.into(),
            data_type: ty as i32,
            ..Default::default()
        };
        let kv = |k: &str, v: &str| KeyValuePair {
            key: k.into(),
            value: v.into(),
        };
        let m = ms::CollectionSchema {
            fields: vec![
                ms::FieldSchema {
                    is_primary_key: true,
                    ..f("id", MDataType::Int64)
                },
                ms::FieldSchema {
                    type_params: vec![kv("dim", "2")],
                    ..f("vec", MDataType::FloatVector)
                },
                f("small", MDataType::Int8),
                ms::FieldSchema {
                    element_type: MDataType::VarChar as i32,
                    type_params: vec![kv("max_capacity", "2"), kv("max_length", "3")],
                    nullable: true,
                    ..f("tags", MDataType::Array)
                },
                ms::FieldSchema {
                    type_params: vec![kv("max_length", "4")],
                    nullable: true,
                    ..f("note", MDataType::VarChar)
                },
            ],
            enable_dynamic_field: true,
            ..Default::default()
        };
        let (mut schema, props) = schema_to_sluice(&m, "c", 1).unwrap();
        for (i, f) in schema.fields.iter_mut().enumerate() {
            f.field_id = i as i64 + 1;
        }
        sluice_types::schema::validate(&schema).unwrap();
        (schema, props)
    }

    fn scalar_data() -> impl Strategy<Value = scalar_field::Data> {
        let word = proptest::string::string_regex("[a-z]{0,5}").unwrap();
        let leaf = prop_oneof![
            prop::collection::vec(any::<bool>(), 0..4)
                .prop_map(|data| scalar_field::Data::BoolData(ms::BoolArray { data })),
            prop::collection::vec(-300i32..300, 0..4)
                .prop_map(|data| scalar_field::Data::IntData(ms::IntArray { data })),
            prop::collection::vec(any::<i64>(), 0..4)
                .prop_map(|data| scalar_field::Data::LongData(ms::LongArray { data })),
            prop::collection::vec(any::<f32>(), 0..4)
                .prop_map(|data| scalar_field::Data::FloatData(ms::FloatArray { data })),
            prop::collection::vec(word, 0..4)
                .prop_map(|data| scalar_field::Data::StringData(ms::StringArray { data })),
            prop::collection::vec(
                prop_oneof![
                    Just(b"{\"k\": 1}".to_vec()),
                    Just(b"[1, 2]".to_vec()),
                    Just(b"null".to_vec()),
                    prop::collection::vec(any::<u8>(), 0..6),
                ],
                0..4
            )
            .prop_map(|data| scalar_field::Data::JsonData(ms::JsonArray { data })),
        ];
        leaf.prop_recursive(2, 8, 3, |inner| {
            (
                prop::collection::vec(prop::option::of(inner), 0..4),
                0i32..30,
            )
                .prop_map(|(rows, element_type)| {
                    scalar_field::Data::ArrayData(ms::ArrayArray {
                        data: rows.into_iter().map(|data| ScalarField { data }).collect(),
                        element_type,
                    })
                })
        })
    }

    fn column_named(name: &'static str) -> impl Strategy<Value = FieldData> {
        let field = prop_oneof![
            scalar_data().prop_map(|d| field_data::Field::Scalars(ScalarField { data: Some(d) })),
            (0i64..4, prop::collection::vec(-2.0f32..2.0, 0..9)).prop_map(|(dim, data)| {
                field_data::Field::Vectors(VectorField {
                    dim,
                    data: Some(vector_field::Data::FloatVector(ms::FloatArray { data })),
                })
            }),
        ];
        (
            prop::option::of(field),
            prop::collection::vec(any::<bool>(), 0..5),
        )
            .prop_map(move |(field, valid_data)| FieldData {
                field_name: name.into(),
                is_dynamic: name == "$meta",
                field,
                valid_data,
                ..Default::default()
            })
    }

    /// A column of `n` rows for field `name` as a client that follows the schema sends it,
    /// with values near or past the declarations' edges.
    fn good_column(name: &'static str, n: usize) -> BoxedStrategy<FieldData> {
        let scalars =
            |d: scalar_field::Data| Some(field_data::Field::Scalars(ScalarField { data: Some(d) }));
        let word = || proptest::string::string_regex("[a-z]{0,4}").unwrap();
        let data = match name {
            "id" => prop::collection::vec(any::<i64>(), n)
                .prop_map(move |data| scalars(scalar_field::Data::LongData(ms::LongArray { data })))
                .boxed(),
            "vec" => prop::collection::vec(-2.0f32..2.0, 2 * n)
                .prop_map(|data| {
                    Some(field_data::Field::Vectors(VectorField {
                        dim: 2,
                        data: Some(vector_field::Data::FloatVector(ms::FloatArray { data })),
                    }))
                })
                .boxed(),
            "small" => prop::collection::vec(-130i32..130, n)
                .prop_map(move |data| scalars(scalar_field::Data::IntData(ms::IntArray { data })))
                .boxed(),
            "tags" => prop::collection::vec(prop::collection::vec(word(), 0..4), n)
                .prop_map(move |rows| {
                    scalars(scalar_field::Data::ArrayData(ms::ArrayArray {
                        data: rows
                            .into_iter()
                            .map(|data| ScalarField {
                                data: Some(scalar_field::Data::StringData(ms::StringArray {
                                    data,
                                })),
                            })
                            .collect(),
                        element_type: MDataType::VarChar as i32,
                    }))
                })
                .boxed(),
            "note" => prop::collection::vec(word(), n)
                .prop_map(move |data| {
                    scalars(scalar_field::Data::StringData(ms::StringArray { data }))
                })
                .boxed(),
            _ => prop::collection::vec(prop::sample::select(vec!["{\"k\": 1}", "{}", "[1]"]), n)
                .prop_map(move |rows| {
                    scalars(scalar_field::Data::JsonData(ms::JsonArray {
                        data: rows.into_iter().map(|r| r.as_bytes().to_vec()).collect(),
                    }))
                })
                .boxed(),
        };
        let nullable = matches!(name, "tags" | "note");
        (
            data,
            prop::collection::vec(any::<bool>(), if nullable { 0..=n } else { 0..=0 }),
        )
            .prop_map(move |(field, valid_data)| FieldData {
                field_name: name.into(),
                is_dynamic: name == "$meta",
                field,
                valid_data: if valid_data.len() == n {
                    valid_data
                } else {
                    Vec::new()
                },
                ..Default::default()
            })
            .boxed()
    }

    /// Columns for some of the fields (and one no schema has), mostly as a client following the
    /// schema sends them, now and then anything at all.
    fn columns() -> impl Strategy<Value = Vec<FieldData>> {
        const NAMES: [&str; 7] = ["id", "vec", "small", "tags", "note", "$meta", "x"];
        (1usize..4).prop_flat_map(|n| {
            let each: Vec<_> = NAMES
                .iter()
                .map(|&name| {
                    let column =
                        prop_oneof![4 => good_column(name, n), 1 => column_named(name).boxed()];
                    let present = if name == "x" { 0.1 } else { 0.9 };
                    prop::option::weighted(present, column)
                })
                .collect();
            each.prop_map(|cols| cols.into_iter().flatten().collect::<Vec<_>>())
        })
    }

    #[test]
    fn rows_following_the_declarations_read_back_as_written() {
        let (schema, props) = collection();
        let scalars = |d| Some(field_data::Field::Scalars(ScalarField { data: Some(d) }));
        let column = |name: &str, field| FieldData {
            field_name: name.into(),
            field,
            ..Default::default()
        };
        let strings = |w: &[&str]| ScalarField {
            data: Some(scalar_field::Data::StringData(ms::StringArray {
                data: w.iter().map(|s| (*s).to_owned()).collect(),
            })),
        };
        let columns = vec![
            column(
                "id",
                scalars(scalar_field::Data::LongData(ms::LongArray {
                    data: vec![7, 8],
                })),
            ),
            column(
                "vec",
                Some(field_data::Field::Vectors(VectorField {
                    dim: 2,
                    data: Some(vector_field::Data::FloatVector(ms::FloatArray {
                        data: vec![0.5, 1.0, -1.0, 0.0],
                    })),
                })),
            ),
            column(
                "small",
                scalars(scalar_field::Data::IntData(ms::IntArray {
                    data: vec![-128, 127],
                })),
            ),
            // Only the valid row's array, as pymilvus sends a nullable column.
            FieldData {
                valid_data: vec![false, true],
                ..column(
                    "tags",
                    scalars(scalar_field::Data::ArrayData(ms::ArrayArray {
                        data: vec![strings(&["abc", ""])],
                        element_type: MDataType::VarChar as i32,
                    })),
                )
            },
        ];
        let batch = rows_from_milvus(&schema, &props, &columns, 2).unwrap();
        let names = ["small".to_owned(), "tags".to_owned()];
        let out = batches_to_milvus(&schema, &props, &[batch], &names).unwrap();
        assert_eq!(out[0].r#type, MDataType::Int8 as i32);
        assert_eq!(
            column_values(&out[0]).unwrap(),
            [Value::from(-128), Value::from(127)]
        );
        assert_eq!(out[1].r#type, MDataType::Array as i32);
        assert_eq!(out[1].valid_data, [false, true]);
        assert_eq!(
            column_values(&out[1]).unwrap(),
            [Value::Null, serde_json::json!(["abc", ""])]
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        /// Whatever columns a client sends, an insert is refused with a reason or gives rows
        /// that hold to the schema and the Milvus declarations, and read back as Milvus columns.
        #[test]
        fn any_columns_are_refused_or_rows_that_keep_the_declarations(
            columns in columns(),
            num_rows in 0u32..4,
        ) {
            let (schema, props) = collection();
            let Ok(batch) = rows_from_milvus(&schema, &props, &columns, num_rows) else {
                return Ok(());
            };
            let names: Vec<String> = schema.fields.iter().map(|f| f.name.clone()).collect();
            let out = batches_to_milvus(&schema, &props, std::slice::from_ref(&batch), &names)
                .expect("stored rows read back");
            let spec = array_spec(&schema.fields[3], &props).unwrap();
            let small = column_values(&out[2]).unwrap();
            let tags = column_values(&out[3]).unwrap();
            prop_assert_eq!(small.len(), batch.num_rows());
            for (row, (s, t)) in small.iter().zip(&tags).enumerate() {
                prop_assert!(s.as_i64().is_some_and(|x| fits(MDataType::Int8, x)), "{s}");
                prop_assert!(spec.check("tags", row, t).is_ok(), "{t}");
            }
        }
    }
}
