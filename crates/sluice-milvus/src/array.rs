//! Milvus ARRAY fields. Sluice's data model has no array type: an ARRAY field is kept as a JSON
//! field holding one JSON array per row (null for a null row), and its Milvus description (the
//! element type, `max_capacity`, the elements' `max_length`) as its entry in the collection's
//! [`PROP_TYPES`](crate::convert::PROP_TYPES) property. Inserts are checked against that
//! description, answers are Milvus's typed `ArrayArray`s, and filters read the field as JSON, so
//! `array_contains(tags, "x")`, `array_contains_any`, `array_contains_all`,
//! `array_length(tags) > 2` and `tags[0] == "x"` work as in Milvus.

use serde_json::Value;

use crate::convert::{is_plain_scalar, param};
use crate::pb::common::KeyValuePair;
use crate::pb::schema::{self as ms, DataType as MDataType, ScalarField, scalar_field};
use crate::status::Failure;

/// The most elements an ARRAY field may be declared to hold (Milvus's limit).
pub(crate) const MAX_CAPACITY: u32 = 4096;
/// The longest a VARCHAR element may be declared (bytes; Milvus's limit for VARCHAR).
const MAX_ELEMENT_LENGTH: u32 = 65_535;

/// `max_capacity` of ARRAY field `name`, checked: 1-[`MAX_CAPACITY`].
pub(crate) fn check_capacity(name: &str, max_capacity: u32) -> Result<u32, Failure> {
    if max_capacity == 0 || max_capacity > MAX_CAPACITY {
        return Err(Failure::invalid(format!(
            "ARRAY field {name:?} needs max_capacity 1-{MAX_CAPACITY}, not {max_capacity}"
        )));
    }
    Ok(max_capacity)
}

/// What a Milvus ARRAY field is declared to hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ArraySpec {
    pub(crate) element: MDataType,
    pub(crate) max_capacity: u32,
    /// VARCHAR elements: the most bytes each may have (0 for other element types).
    pub(crate) max_length: u32,
}

impl ArraySpec {
    /// The declaration of Milvus ARRAY field `f`, checked: a scalar element type other than
    /// JSON, `max_capacity` 1-[`MAX_CAPACITY`], and for VARCHAR elements `max_length`
    /// 1-65535.
    pub(crate) fn of(f: &ms::FieldSchema) -> Result<ArraySpec, Failure> {
        let name = &f.name;
        let element = MDataType::try_from(f.element_type).unwrap_or(MDataType::None);
        if !is_plain_scalar(element) {
            return Err(Failure::invalid(format!(
                "ARRAY field {name:?}: element type {} is not one an array holds (BOOL, INT8, \
                 INT16, INT32, INT64, FLOAT, DOUBLE, VARCHAR)",
                element.as_str_name()
            )));
        }
        let number = |key: &str| -> Result<Option<u32>, Failure> {
            param(&f.type_params, key)
                .map(|v| {
                    v.trim().parse::<u32>().map_err(|_| {
                        Failure::invalid(format!(
                            "ARRAY field {name:?}: {key} {v:?} is not a number"
                        ))
                    })
                })
                .transpose()
        };
        let max_capacity = check_capacity(name, number("max_capacity")?.unwrap_or(0))?;
        let max_length = if element == MDataType::VarChar {
            match number("max_length")? {
                Some(n @ 1..=MAX_ELEMENT_LENGTH) => n,
                n => {
                    return Err(Failure::invalid(format!(
                        "ARRAY field {name:?} of VARCHAR needs max_length 1-{MAX_ELEMENT_LENGTH}, \
                         not {}",
                        n.unwrap_or(0)
                    )));
                }
            }
        } else {
            0
        };
        Ok(ArraySpec {
            element,
            max_capacity,
            max_length,
        })
    }

    /// Its entry in the `PROP_TYPES` property.
    pub(crate) fn to_json(self) -> Value {
        serde_json::json!({
            "type": MDataType::Array as i32,
            "element_type": self.element as i32,
            "max_capacity": self.max_capacity,
            "max_length": self.max_length,
        })
    }

    /// The declaration a `PROP_TYPES` entry holds, if it is an ARRAY's.
    pub(crate) fn from_json(v: &Value) -> Option<ArraySpec> {
        let number = |key: &str| v.get(key).and_then(Value::as_u64);
        if number("type")? != MDataType::Array as u64 {
            return None;
        }
        Some(ArraySpec {
            element: MDataType::try_from(i32::try_from(number("element_type")?).ok()?).ok()?,
            max_capacity: u32::try_from(number("max_capacity")?).ok()?,
            max_length: u32::try_from(number("max_length").unwrap_or(0)).ok()?,
        })
    }

    /// The `type_params` Milvus describes the field with.
    pub(crate) fn type_params(self) -> Vec<KeyValuePair> {
        let mut params = vec![KeyValuePair {
            key: "max_capacity".into(),
            value: self.max_capacity.to_string(),
        }];
        if self.max_length > 0 {
            params.push(KeyValuePair {
                key: "max_length".into(),
                value: self.max_length.to_string(),
            });
        }
        params
    }

    /// Checks row `row`'s value of field `field`: null, or an array of at most `max_capacity`
    /// elements of the element type (integers within its width, VARCHARs within
    /// `max_length`).
    pub(crate) fn check(self, field: &str, row: usize, v: &Value) -> Result<(), Failure> {
        let items = match v {
            Value::Null => return Ok(()),
            Value::Array(items) => items,
            other => {
                return Err(Failure::invalid(format!(
                    "field {field:?} row {row}: an ARRAY field takes an array, not {other}"
                )));
            }
        };
        if items.len() > self.max_capacity as usize {
            return Err(Failure::invalid(format!(
                "field {field:?} row {row}: {} elements, more than max_capacity {}",
                items.len(),
                self.max_capacity
            )));
        }
        for (i, item) in items.iter().enumerate() {
            let ok = match self.element {
                MDataType::Bool => item.is_boolean(),
                MDataType::VarChar => item
                    .as_str()
                    .is_some_and(|s| s.len() <= self.max_length as usize),
                MDataType::Float => item.as_f64().is_some_and(|x| (x as f32).is_finite()),
                MDataType::Double => item.as_f64().is_some_and(f64::is_finite),
                ty => item.as_i64().is_some_and(|x| fits(ty, x)),
            };
            if !ok {
                let what = match self.element {
                    MDataType::VarChar => {
                        format!("a VARCHAR of at most {} bytes", self.max_length)
                    }
                    ty => format!("of type {}", ty.as_str_name()),
                };
                return Err(Failure::invalid(format!(
                    "field {field:?} row {row} element {i}: {item} is not {what}"
                )));
            }
        }
        Ok(())
    }

    /// One row's elements (`None`: a null row, no elements) as Milvus's column of the element
    /// type.
    pub(crate) fn scalar_field(self, items: Option<&[Value]>) -> Result<ScalarField, Failure> {
        let items = items.unwrap_or_default();
        let wrong = |v: &Value| {
            Failure::unexpected(format!(
                "a stored {} array holds {v}",
                self.element.as_str_name()
            ))
        };
        fn each<T>(
            items: &[Value],
            get: impl Fn(&Value) -> Option<T>,
            wrong: impl Fn(&Value) -> Failure,
        ) -> Result<Vec<T>, Failure> {
            items
                .iter()
                .map(|v| get(v).ok_or_else(|| wrong(v)))
                .collect()
        }
        let data = match self.element {
            MDataType::Bool => scalar_field::Data::BoolData(ms::BoolArray {
                data: each(items, Value::as_bool, wrong)?,
            }),
            MDataType::Int64 => scalar_field::Data::LongData(ms::LongArray {
                data: each(items, Value::as_i64, wrong)?,
            }),
            MDataType::Float => scalar_field::Data::FloatData(ms::FloatArray {
                data: each(items, |v| v.as_f64().map(|x| x as f32), wrong)?,
            }),
            MDataType::Double => scalar_field::Data::DoubleData(ms::DoubleArray {
                data: each(items, Value::as_f64, wrong)?,
            }),
            MDataType::VarChar => scalar_field::Data::StringData(ms::StringArray {
                data: each(items, |v| v.as_str().map(str::to_owned), wrong)?,
            }),
            // INT8, INT16 and INT32 travel as 32-bit integers.
            _ => scalar_field::Data::IntData(ms::IntArray {
                data: each(
                    items,
                    |v| v.as_i64().and_then(|x| i32::try_from(x).ok()),
                    wrong,
                )?,
            }),
        };
        Ok(ScalarField { data: Some(data) })
    }
}

/// Whether integer `x` fits Milvus integer type `ty`.
pub(crate) fn fits(ty: MDataType, x: i64) -> bool {
    match ty {
        MDataType::Int8 => i8::try_from(x).is_ok(),
        MDataType::Int16 => i16::try_from(x).is_ok(),
        MDataType::Int32 => i32::try_from(x).is_ok(),
        MDataType::Int64 => true,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field(element: MDataType, params: &[(&str, &str)]) -> ms::FieldSchema {
        ms::FieldSchema {
            name: "tags".into(),
            data_type: MDataType::Array as i32,
            element_type: element as i32,
            type_params: params
                .iter()
                .map(|(k, v)| KeyValuePair {
                    key: (*k).into(),
                    value: (*v).into(),
                })
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn declarations_are_checked_and_survive_the_property() {
        let spec = ArraySpec::of(&field(
            MDataType::VarChar,
            &[("max_capacity", "3"), ("max_length", "4")],
        ))
        .unwrap();
        assert_eq!(
            spec,
            ArraySpec {
                element: MDataType::VarChar,
                max_capacity: 3,
                max_length: 4
            }
        );
        assert_eq!(ArraySpec::from_json(&spec.to_json()), Some(spec));
        assert_eq!(ArraySpec::from_json(&Value::from(2)), None, "an INT8 entry");
        for (f, why) in [
            (field(MDataType::Int64, &[]), "max_capacity 1-4096"),
            (
                field(MDataType::Int64, &[("max_capacity", "5000")]),
                "max_capacity 1-4096",
            ),
            (
                field(MDataType::Int64, &[("max_capacity", "x")]),
                "is not a number",
            ),
            (
                field(MDataType::VarChar, &[("max_capacity", "2")]),
                "max_length 1-65535",
            ),
            (
                field(MDataType::Json, &[("max_capacity", "2")]),
                "element type JSON",
            ),
            (
                field(MDataType::FloatVector, &[("max_capacity", "2")]),
                "element type FloatVector",
            ),
        ] {
            let e = ArraySpec::of(&f).unwrap_err();
            assert!(e.reason().contains(why), "{} (wanted {why:?})", e.reason());
        }
    }

    #[test]
    fn rows_are_checked_against_the_declaration() {
        let spec = |element, max_length| ArraySpec {
            element,
            max_capacity: 3,
            max_length,
        };
        let ok = [
            (spec(MDataType::Int8, 0), serde_json::json!([1, -128, 127])),
            (spec(MDataType::Int64, 0), serde_json::json!([])),
            (spec(MDataType::VarChar, 2), serde_json::json!(["ab", ""])),
            (spec(MDataType::Bool, 0), serde_json::json!([true])),
            (spec(MDataType::Double, 0), serde_json::json!([1, 2.5])),
            (spec(MDataType::Int32, 0), Value::Null),
        ];
        for (s, v) in ok {
            s.check("tags", 0, &v).unwrap();
        }
        let bad = [
            (
                spec(MDataType::Int8, 0),
                serde_json::json!([128]),
                "type Int8",
            ),
            (
                spec(MDataType::Int16, 0),
                serde_json::json!([1.5]),
                "type Int16",
            ),
            (
                spec(MDataType::Int64, 0),
                serde_json::json!([1, 2, 3, 4]),
                "max_capacity 3",
            ),
            (
                spec(MDataType::VarChar, 2),
                serde_json::json!(["abc"]),
                "at most 2 bytes",
            ),
            (
                spec(MDataType::Bool, 0),
                serde_json::json!([1]),
                "type Bool",
            ),
            (
                spec(MDataType::Float, 0),
                serde_json::json!([1e300]),
                "type Float",
            ),
            (
                spec(MDataType::Int64, 0),
                serde_json::json!({"a": 1}),
                "takes an array",
            ),
            (
                spec(MDataType::Int64, 0),
                serde_json::json!([null]),
                "type Int64",
            ),
        ];
        for (s, v, why) in bad {
            let e = s.check("tags", 7, &v).unwrap_err().reason().to_owned();
            assert!(
                e.contains(why) && e.contains("row 7"),
                "{e} (wanted {why:?})"
            );
        }
    }

    #[test]
    fn rows_come_back_typed() {
        let spec = |element| ArraySpec {
            element,
            max_capacity: 4,
            max_length: 8,
        };
        let items = |v: Value| v.as_array().unwrap().clone();
        let cases = [
            (
                spec(MDataType::Int16),
                items(serde_json::json!([1, -2])),
                scalar_field::Data::IntData(ms::IntArray { data: vec![1, -2] }),
            ),
            (
                spec(MDataType::Int64),
                items(serde_json::json!([1, 1_i64 << 40])),
                scalar_field::Data::LongData(ms::LongArray {
                    data: vec![1, 1_i64 << 40],
                }),
            ),
            (
                spec(MDataType::VarChar),
                items(serde_json::json!(["a", "b"])),
                scalar_field::Data::StringData(ms::StringArray {
                    data: vec!["a".into(), "b".into()],
                }),
            ),
            (
                spec(MDataType::Float),
                items(serde_json::json!([0.5])),
                scalar_field::Data::FloatData(ms::FloatArray { data: vec![0.5] }),
            ),
        ];
        for (s, v, want) in cases {
            assert_eq!(s.scalar_field(Some(&v)).unwrap().data, Some(want));
        }
        assert_eq!(
            spec(MDataType::Bool).scalar_field(None).unwrap().data,
            Some(scalar_field::Data::BoolData(ms::BoolArray { data: vec![] })),
            "a null row is an empty column of the element type"
        );
        assert!(
            spec(MDataType::Int32)
                .scalar_field(Some(&items(serde_json::json!(["x"]))))
                .is_err()
        );
    }
}
