//! Milvus scalar indexes (INVERTED, STL_SORT, Trie, BITMAP, AUTOINDEX, and INVERTED on a JSON
//! path). Sluice answers filters by evaluating them over the rows of each segment, with or
//! without an index: a scalar index is checked as Milvus checks it (the index type against the
//! field's type, its parameters), recorded with the collection's indexes, described, listed and
//! dropped, and changes no answer. Code that creates scalar indexes next to its vector index
//! runs unchanged.

use serde_json::Value;
use sluice_types::schema::FieldSchema;

use crate::array::ArraySpec;
use crate::pb::schema::DataType as MDataType;
use crate::status::Failure;

/// The types a JSON path index may cast the value at its path to (Milvus's `json_cast_type`).
const JSON_CAST_TYPES: &[&str] = &[
    "BOOL",
    "DOUBLE",
    "VARCHAR",
    "ARRAY_BOOL",
    "ARRAY_DOUBLE",
    "ARRAY_VARCHAR",
];

fn is_integer(t: MDataType) -> bool {
    matches!(
        t,
        MDataType::Int8 | MDataType::Int16 | MDataType::Int32 | MDataType::Int64
    )
}

fn is_number(t: MDataType) -> bool {
    is_integer(t) || matches!(t, MDataType::Float | MDataType::Double)
}

/// Whether index type `index_type` indexes a field of Milvus type `ty` (for an ARRAY, of
/// element type `element`).
fn indexes(index_type: &str, ty: MDataType, element: Option<MDataType>, pk: bool) -> bool {
    let bitmap = |t: MDataType| is_integer(t) || matches!(t, MDataType::Bool | MDataType::VarChar);
    match index_type {
        "AUTOINDEX" | "INVERTED" => ty != MDataType::Json,
        "STL_SORT" => is_number(ty),
        "TRIE" => ty == MDataType::VarChar,
        "BITMAP" => !pk && (bitmap(ty) || (ty == MDataType::Array && element.is_some_and(bitmap))),
        _ => false,
    }
}

/// The index to record for a scalar index of `index_type` (upper case) on `field` (Milvus type
/// `ty`, `array` its declaration when it is an ARRAY), with the `metric_type` and parameters
/// (`given`) the request carried: `{"field", "index_type", "params"}`. A JSON field takes
/// INVERTED or AUTOINDEX with `json_path` (the field, then `["key"]` steps) and
/// `json_cast_type`; other fields take no parameters.
pub(crate) fn scalar_index(
    field: &FieldSchema,
    ty: MDataType,
    array: Option<ArraySpec>,
    index_type: &str,
    metric_type: Option<&str>,
    given: &serde_json::Map<String, Value>,
) -> Result<serde_json::Map<String, Value>, Failure> {
    let name = &field.name;
    if metric_type.is_some_and(|m| !m.is_empty()) {
        return Err(Failure::invalid(format!(
            "an index on scalar field {name:?} takes no metric type"
        )));
    }
    let mut params = serde_json::Map::new();
    if ty == MDataType::Json {
        if !matches!(index_type, "INVERTED" | "AUTOINDEX") {
            return Err(Failure::invalid(format!(
                "index type {index_type} on JSON field {name:?}: a JSON field takes INVERTED (or \
                 AUTOINDEX) with json_path and json_cast_type"
            )));
        }
        let text = |key: &str| -> Result<String, Failure> {
            given
                .get(key)
                .and_then(Value::as_str)
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .ok_or_else(|| {
                    Failure::invalid(format!(
                        "an index on JSON field {name:?} needs {key} (json_path like \
                         {name}[\"key\"], json_cast_type one of {})",
                        JSON_CAST_TYPES.join(", ")
                    ))
                })
        };
        let path = text("json_path")?;
        let cast = text("json_cast_type")?.to_ascii_uppercase();
        let steps = path.strip_prefix(name.as_str()).unwrap_or("\u{0}");
        if !(steps.is_empty() || steps.starts_with('[')) {
            return Err(Failure::invalid(format!(
                "json_path {path:?} of an index on {name:?} starts with the field's name"
            )));
        }
        if !JSON_CAST_TYPES.contains(&cast.as_str()) {
            return Err(Failure::invalid(format!(
                "json_cast_type {cast:?}: one of {}",
                JSON_CAST_TYPES.join(", ")
            )));
        }
        params.insert("json_path".into(), path.into());
        params.insert("json_cast_type".into(), cast.into());
    } else if let Some(key) = given.keys().next() {
        return Err(Failure::unsupported(format!(
            "index parameter {key:?} with index type {index_type} on scalar field {name:?} (it \
             takes none)"
        )));
    }
    let element = array.map(|a| a.element);
    if ty != MDataType::Json && !indexes(index_type, ty, element, field.is_primary_key) {
        let what = match element {
            Some(e) => format!("an ARRAY of {}", e.as_str_name()),
            None => ty.as_str_name().to_owned(),
        };
        return Err(
            if indexes(index_type, MDataType::VarChar, None, false)
                || indexes(index_type, MDataType::Int64, None, false)
            {
                Failure::invalid(format!(
                    "index type {index_type} does not index field {name:?} ({what}{})",
                    if field.is_primary_key {
                        ", the primary key"
                    } else {
                        ""
                    }
                ))
            } else {
                Failure::unsupported(format!(
                    "scalar index type {index_type} (Sluice takes INVERTED, STL_SORT, Trie, BITMAP \
                 and AUTOINDEX on scalar fields)"
                ))
            },
        );
    }
    let mut index = serde_json::Map::new();
    index.insert("field".into(), name.clone().into());
    // Milvus spells it so (and describes it back so).
    let spelled = if index_type == "TRIE" {
        "Trie"
    } else {
        index_type
    };
    index.insert("index_type".into(), spelled.into());
    index.insert("params".into(), Value::Object(params));
    Ok(index)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field(name: &str, pk: bool) -> FieldSchema {
        FieldSchema {
            name: name.into(),
            is_primary_key: pk,
            ..FieldSchema::default()
        }
    }

    fn params(pairs: &[(&str, &str)]) -> serde_json::Map<String, Value> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), Value::from(*v)))
            .collect()
    }

    #[test]
    fn index_types_take_the_field_types_milvus_gives_them() {
        let none = serde_json::Map::new();
        let ints = ArraySpec {
            element: MDataType::Int64,
            max_capacity: 4,
            max_length: 0,
        };
        let floats = ArraySpec {
            element: MDataType::Double,
            ..ints
        };
        let ok = [
            ("INVERTED", MDataType::VarChar, None, false),
            ("INVERTED", MDataType::Int8, None, true),
            ("INVERTED", MDataType::Array, Some(floats), false),
            ("AUTOINDEX", MDataType::Double, None, false),
            ("STL_SORT", MDataType::Float, None, false),
            ("STL_SORT", MDataType::Int64, None, true),
            ("TRIE", MDataType::VarChar, None, false),
            ("BITMAP", MDataType::Bool, None, false),
            ("BITMAP", MDataType::Array, Some(ints), false),
        ];
        for (t, ty, array, pk) in ok {
            let i = scalar_index(&field("f", pk), ty, array, t, None, &none)
                .unwrap_or_else(|e| panic!("{t} on {ty:?}: {}", e.reason()));
            assert_eq!(i["index_type"], if t == "TRIE" { "Trie" } else { t });
            assert_eq!(i["field"], "f");
        }
        let refused = [
            (
                "STL_SORT",
                MDataType::VarChar,
                None,
                false,
                "does not index",
            ),
            ("TRIE", MDataType::Int64, None, false, "does not index"),
            ("BITMAP", MDataType::Double, None, false, "does not index"),
            ("BITMAP", MDataType::Int64, None, true, "the primary key"),
            (
                "BITMAP",
                MDataType::Array,
                Some(floats),
                false,
                "ARRAY of Double",
            ),
            (
                "NGRAM",
                MDataType::VarChar,
                None,
                false,
                "scalar index type NGRAM",
            ),
            (
                "STL_SORT",
                MDataType::Json,
                None,
                false,
                "a JSON field takes INVERTED",
            ),
        ];
        for (t, ty, array, pk, why) in refused {
            let e = scalar_index(&field("f", pk), ty, array, t, None, &none).unwrap_err();
            assert!(e.reason().contains(why), "{t} on {ty:?}: {}", e.reason());
        }
        let e = scalar_index(
            &field("f", false),
            MDataType::Int64,
            None,
            "INVERTED",
            Some("L2"),
            &none,
        )
        .unwrap_err();
        assert!(e.reason().contains("no metric type"), "{}", e.reason());
        let e = scalar_index(
            &field("f", false),
            MDataType::Int64,
            None,
            "INVERTED",
            None,
            &params(&[("nlist", "8")]),
        )
        .unwrap_err();
        assert!(e.reason().contains("\"nlist\""), "{}", e.reason());
    }

    #[test]
    fn a_json_index_names_a_path_and_a_cast_type() {
        let meta = field("meta", false);
        let i = scalar_index(
            &meta,
            MDataType::Json,
            None,
            "INVERTED",
            Some(""),
            &params(&[("json_path", "meta[\"a\"]"), ("json_cast_type", "varchar")]),
        )
        .unwrap();
        assert_eq!(
            Value::Object(i["params"].as_object().unwrap().clone()),
            serde_json::json!({"json_path": "meta[\"a\"]", "json_cast_type": "VARCHAR"})
        );
        for (given, why) in [
            (params(&[("json_cast_type", "double")]), "needs json_path"),
            (
                params(&[("json_path", "meta[\"a\"]")]),
                "needs json_cast_type",
            ),
            (
                params(&[("json_path", "other[\"a\"]"), ("json_cast_type", "double")]),
                "starts with the field's name",
            ),
            (
                params(&[("json_path", "metadata"), ("json_cast_type", "double")]),
                "starts with the field's name",
            ),
            (
                params(&[("json_path", "meta"), ("json_cast_type", "int")]),
                "json_cast_type \"INT\"",
            ),
        ] {
            let e =
                scalar_index(&meta, MDataType::Json, None, "INVERTED", None, &given).unwrap_err();
            assert!(e.reason().contains(why), "{}", e.reason());
        }
    }
}
