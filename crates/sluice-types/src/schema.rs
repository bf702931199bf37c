//! Collection schemas: the typed fields a collection's rows have (the types are generated from
//! `proto/sluice/v1/message.proto`), the rules a schema must keep, and the changes a schema
//! may undergo (a nullable scalar field added, a VARCHAR field's `max_length` raised, the
//! collection renamed).

pub use crate::message::pb::{
    CollectionSchema, DataType, FieldSchema, FunctionSchema, FunctionType,
};

/// Longest field or collection name.
pub const MAX_NAME_LEN: usize = 255;
/// Largest VARCHAR `max_length`.
pub const MAX_VARCHAR_LENGTH: u32 = 65_535;
/// Largest FLOAT_VECTOR `dim`.
pub const MAX_VECTOR_DIM: u32 = 32_768;
/// Most shards a collection may have.
pub const MAX_SHARDS: u32 = 64;

/// A schema, or a change to one, that breaks a rule.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid schema: {0}")]
pub struct SchemaError(pub String);

fn bad(what: impl Into<String>) -> SchemaError {
    SchemaError(what.into())
}

/// Checks a collection, field or partition name: 1-[`MAX_NAME_LEN`] characters of
/// `[A-Za-z0-9_]`, not starting with a digit; `kind` names what it is in the error.
pub fn check_name(kind: &str, name: &str) -> Result<(), SchemaError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
        && !name.as_bytes()[0].is_ascii_digit();
    if ok {
        Ok(())
    } else {
        Err(bad(format!(
            "{kind} name {name:?} must be 1-{MAX_NAME_LEN} characters of [A-Za-z0-9_], not \
             starting with a digit"
        )))
    }
}

/// The database every collection is in unless its name says another.
pub const DEFAULT_DATABASE: &str = "default";

/// A collection name (or an alias) split into its database and its name there: `db.name` is
/// `name` in database `db`; a name without a dot is in the [`DEFAULT_DATABASE`]. Names are
/// checked by [`check_collection_name`], which allows at most one dot.
pub fn split_database(name: &str) -> (&str, &str) {
    match name.split_once('.') {
        Some((db, local)) => (db, local),
        None => (DEFAULT_DATABASE, name),
    }
}

/// `name` in database `database`: qualified unless that is the [`DEFAULT_DATABASE`].
pub fn in_database(database: &str, name: &str) -> String {
    if database == DEFAULT_DATABASE || database.is_empty() {
        name.to_owned()
    } else {
        format!("{database}.{name}")
    }
}

/// Checks a collection name or alias: a name ([`check_name`]) in the default database, or
/// `database.name` with both parts names and the database not `default` (a collection of the
/// default database has one spelling). `kind` names what it is in the error.
pub fn check_collection_name(kind: &str, name: &str) -> Result<(), SchemaError> {
    match name.split_once('.') {
        None => check_name(kind, name),
        Some((db, local)) => {
            check_name("database", db)?;
            check_name(kind, local)?;
            if db == DEFAULT_DATABASE {
                return Err(bad(format!(
                    "{kind} name {name:?}: a collection of the default database is named \
                     without it ({local:?})"
                )));
            }
            Ok(())
        }
    }
}

/// The field's data type, if it is a known one.
pub fn data_type(field: &FieldSchema) -> Result<DataType, SchemaError> {
    match DataType::try_from(field.data_type) {
        Ok(DataType::Unspecified) | Err(_) => Err(bad(format!(
            "field {:?} has no known data type ({})",
            field.name, field.data_type
        ))),
        Ok(t) => Ok(t),
    }
}

fn check_field(f: &FieldSchema) -> Result<DataType, SchemaError> {
    check_name("field", &f.name)?;
    let ty = data_type(f)?;
    match ty {
        DataType::Varchar if f.max_length == 0 || f.max_length > MAX_VARCHAR_LENGTH => {
            return Err(bad(format!(
                "VARCHAR field {:?} needs max_length 1-{MAX_VARCHAR_LENGTH}, not {}",
                f.name, f.max_length
            )));
        }
        DataType::FloatVector if f.dim == 0 || f.dim > MAX_VECTOR_DIM => {
            return Err(bad(format!(
                "FLOAT_VECTOR field {:?} needs dim 1-{MAX_VECTOR_DIM}, not {}",
                f.name, f.dim
            )));
        }
        DataType::SparseFloatVector if f.dim != 0 => {
            return Err(bad(format!(
                "SPARSE_FLOAT_VECTOR field {:?} has no dim (it has {})",
                f.name, f.dim
            )));
        }
        DataType::FloatVector | DataType::SparseFloatVector if f.nullable => {
            return Err(bad(format!("vector field {:?} cannot be nullable", f.name)));
        }
        _ => {}
    }
    if f.enable_analyzer {
        if ty != DataType::Varchar {
            return Err(bad(format!(
                "field {:?}: only a VARCHAR field has an analyzer",
                f.name
            )));
        }
        crate::text::Analyzer::from_params(&f.analyzer_params)
            .map_err(|e| bad(format!("field {:?}: {e}", f.name)))?;
    } else if f.enable_match {
        return Err(bad(format!(
            "field {:?}: enable_match needs enable_analyzer",
            f.name
        )));
    } else if !f.analyzer_params.is_empty() {
        return Err(bad(format!(
            "field {:?} has analyzer_params without enable_analyzer",
            f.name
        )));
    }
    if f.is_function_output
        && (ty != DataType::SparseFloatVector || f.is_primary_key || f.is_dynamic)
    {
        return Err(bad(format!(
            "function output field {:?} must be a SPARSE_FLOAT_VECTOR field",
            f.name
        )));
    }
    if f.auto_id && !(f.is_primary_key && matches!(ty, DataType::Int64 | DataType::Varchar)) {
        return Err(bad(format!(
            "auto_id is for an INT64 or VARCHAR primary key, not field {:?}",
            f.name
        )));
    }
    Ok(ty)
}

/// Checks every rule of a schema: a valid name, 1-`MAX_SHARDS` shards (0 means 1), unique valid
/// field names, known types with their parameters, exactly one primary key (INT64 or VARCHAR,
/// not nullable) and at least one vector field.
pub fn validate(schema: &CollectionSchema) -> Result<(), SchemaError> {
    check_collection_name("collection", &schema.name)?;
    if schema.shards > MAX_SHARDS {
        return Err(bad(format!(
            "{} shards: at most {MAX_SHARDS}",
            schema.shards
        )));
    }
    let mut names = std::collections::HashSet::new();
    let (mut primary, mut vectors, mut dynamic) = (Vec::new(), 0, 0);
    for f in &schema.fields {
        let ty = check_field(f)?;
        if f.is_dynamic {
            if ty != DataType::Json || !f.nullable || f.is_primary_key {
                return Err(bad(format!(
                    "dynamic field {:?} must be a nullable JSON field",
                    f.name
                )));
            }
            dynamic += 1;
        }
        if !names.insert(f.name.as_str()) {
            return Err(bad(format!("field name {:?} is used twice", f.name)));
        }
        if f.is_primary_key {
            primary.push((f, ty));
        }
        if is_vector(ty) {
            vectors += 1;
        }
    }
    match primary.as_slice() {
        [(f, ty)] => {
            if !matches!(ty, DataType::Int64 | DataType::Varchar) {
                return Err(bad(format!(
                    "primary key {:?} must be INT64 or VARCHAR, not {}",
                    f.name,
                    ty.as_str_name()
                )));
            }
            if f.nullable {
                return Err(bad(format!("primary key {:?} cannot be nullable", f.name)));
            }
        }
        [] => return Err(bad("no field is the primary key")),
        more => {
            return Err(bad(format!(
                "{} fields are marked primary key; exactly one may be",
                more.len()
            )));
        }
    }
    if vectors == 0 {
        return Err(bad(
            "a collection needs at least one vector field (FLOAT_VECTOR or SPARSE_FLOAT_VECTOR)",
        ));
    }
    if dynamic > 1 {
        return Err(bad(format!(
            "{dynamic} dynamic fields: a collection has at most one"
        )));
    }
    check_functions(schema)
}

/// A schema's functions: valid unique names, BM25 from a VARCHAR field with an analyzer to a
/// function output field, each such field the output of exactly one function.
fn check_functions(schema: &CollectionSchema) -> Result<(), SchemaError> {
    let field = |name: &str| schema.fields.iter().find(|f| f.name == name);
    let mut names = std::collections::HashSet::new();
    let mut outputs = std::collections::HashSet::new();
    for func in &schema.functions {
        check_name("function", &func.name)?;
        if !names.insert(func.name.as_str()) {
            return Err(bad(format!("function name {:?} is used twice", func.name)));
        }
        if FunctionType::try_from(func.r#type) != Ok(FunctionType::Bm25) {
            return Err(bad(format!(
                "function {:?} has no known type ({}): BM25 is the one",
                func.name, func.r#type
            )));
        }
        match field(&func.input_field) {
            Some(f) if f.data_type == DataType::Varchar as i32 && f.enable_analyzer => {}
            _ => {
                return Err(bad(format!(
                    "BM25 function {:?}: its input {:?} must be a VARCHAR field with                      enable_analyzer",
                    func.name, func.input_field
                )));
            }
        }
        match field(&func.output_field) {
            Some(f) if f.is_function_output => {}
            _ => {
                return Err(bad(format!(
                    "BM25 function {:?}: its output {:?} must be a SPARSE_FLOAT_VECTOR field                      with is_function_output",
                    func.name, func.output_field
                )));
            }
        }
        if !outputs.insert(func.output_field.as_str()) {
            return Err(bad(format!(
                "field {:?} is the output of two functions",
                func.output_field
            )));
        }
    }
    if let Some(f) = schema
        .fields
        .iter()
        .find(|f| f.is_function_output && !outputs.contains(f.name.as_str()))
    {
        return Err(bad(format!(
            "field {:?} is a function output but no function outputs it",
            f.name
        )));
    }
    Ok(())
}

/// The BM25 function whose output is field `name`, if there is one.
pub fn bm25_of<'a>(schema: &'a CollectionSchema, name: &str) -> Option<&'a FunctionSchema> {
    schema
        .functions
        .iter()
        .find(|f| f.output_field == name && f.r#type == FunctionType::Bm25 as i32)
}

/// The fields rows are written with (every field but functions' outputs).
pub fn stored_fields(schema: &CollectionSchema) -> impl Iterator<Item = &FieldSchema> {
    schema.fields.iter().filter(|f| !f.is_function_output)
}

/// Whether fields of this type hold vectors (searched, never filtered on).
pub fn is_vector(ty: DataType) -> bool {
    matches!(ty, DataType::FloatVector | DataType::SparseFloatVector)
}

/// The collection's dynamic field, if it has one.
pub fn dynamic_field(schema: &CollectionSchema) -> Option<&FieldSchema> {
    schema.fields.iter().find(|f| f.is_dynamic)
}

/// The schema after a SCHEMA_CHANGE that adds `field`: a nullable scalar field with a new name
/// (existing rows have no value for it), which gets the next field id; the version goes up by
/// one.
pub fn add_field(
    schema: &CollectionSchema,
    field: FieldSchema,
) -> Result<CollectionSchema, SchemaError> {
    let ty = check_field(&field)?;
    if field.is_primary_key || is_vector(ty) || field.is_dynamic || field.is_function_output {
        return Err(bad(format!(
            "field {:?}: only scalar, non-key fields can be added",
            field.name
        )));
    }
    if !field.nullable {
        return Err(bad(format!(
            "added field {:?} must be nullable: existing rows have no value for it",
            field.name
        )));
    }
    if schema.fields.iter().any(|f| f.name == field.name) {
        return Err(bad(format!("field name {:?} is used already", field.name)));
    }
    let next_id = schema.fields.iter().map(|f| f.field_id).max().unwrap_or(0) + 1;
    let mut out = schema.clone();
    out.fields.push(FieldSchema {
        field_id: next_id,
        ..field
    });
    out.version = schema.version + 1;
    Ok(out)
}

/// The schema after a SCHEMA_CHANGE that renames the collection to `name`: the fields as they
/// are; the version goes up by one.
pub fn rename(schema: &CollectionSchema, name: &str) -> Result<CollectionSchema, SchemaError> {
    check_collection_name("collection", name)?;
    if schema.name == name {
        return Err(bad(format!("the collection is named {name:?} already")));
    }
    let mut out = schema.clone();
    out.name = name.to_owned();
    out.version = schema.version + 1;
    Ok(out)
}

/// The schema after a SCHEMA_CHANGE that raises VARCHAR field `name`'s `max_length` to
/// `max_length` (at most [`MAX_VARCHAR_LENGTH`]; not the primary key's). It only grows: every
/// row written under the old limit stays valid under the new one. The version goes up by one.
pub fn raise_max_length(
    schema: &CollectionSchema,
    name: &str,
    max_length: u32,
) -> Result<CollectionSchema, SchemaError> {
    let mut out = schema.clone();
    let Some(field) = out.fields.iter_mut().find(|f| f.name == name) else {
        return Err(bad(format!("the collection has no field {name:?}")));
    };
    if data_type(field)? != DataType::Varchar {
        return Err(bad(format!(
            "field {name:?} is not VARCHAR: only a VARCHAR field has a max_length"
        )));
    }
    if field.is_primary_key {
        return Err(bad(format!(
            "field {name:?} is the primary key, whose max_length stays as created"
        )));
    }
    if max_length < field.max_length || max_length > MAX_VARCHAR_LENGTH {
        return Err(bad(format!(
            "field {name:?}: max_length {max_length} is not in {}-{MAX_VARCHAR_LENGTH} (it only \
             grows, so that rows written under the old limit stay valid)",
            field.max_length
        )));
    }
    if max_length == field.max_length {
        return Err(bad(format!(
            "field {name:?} has max_length {max_length} already"
        )));
    }
    field.max_length = max_length;
    out.version = schema.version + 1;
    Ok(out)
}

/// Whether `next` is what one SCHEMA_CHANGE may lead to from `current`: one field added (see
/// [`add_field`]), one VARCHAR field's `max_length` raised (see [`raise_max_length`]) or the
/// collection renamed (see [`rename`]); else why not.
pub fn check_change(
    current: &CollectionSchema,
    next: &CollectionSchema,
) -> Result<(), SchemaError> {
    let (expected, rule) = if current.name != next.name {
        (
            rename(current, &next.name)?,
            "a renamed schema must be version {v} with the fields as they are".to_owned(),
        )
    } else if next.fields.len() == current.fields.len() {
        let Some((field, max_length)) = current
            .fields
            .iter()
            .zip(&next.fields)
            .find(|(a, b)| a != b)
            .map(|(a, b)| (a.name.as_str(), b.max_length))
        else {
            return Err(bad("a schema change that changes nothing"));
        };
        (
            raise_max_length(current, field, max_length)?,
            format!(
                "the schema after the change must be version {{v}} with only field {field:?}'s \
                 max_length raised"
            ),
        )
    } else {
        let added = add_field(current, next.fields.last().cloned().unwrap_or_default())?;
        let id = added.fields.last().map_or(0, |f| f.field_id);
        (
            added,
            format!(
                "the schema after the change must be version {{v}} with one field added at the \
                 end (field id {id}), the rest as it is"
            ),
        )
    };
    if expected == *next {
        return Ok(());
    }
    Err(bad(rule.replace("{v}", &expected.version.to_string())))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field(name: &str, ty: DataType) -> FieldSchema {
        FieldSchema {
            name: name.into(),
            data_type: ty as i32,
            ..FieldSchema::default()
        }
    }

    #[test]
    fn collection_names_may_name_their_database() {
        assert_eq!(split_database("docs"), ("default", "docs"));
        assert_eq!(split_database("tenant_a.docs"), ("tenant_a", "docs"));
        assert_eq!(in_database("default", "docs"), "docs");
        assert_eq!(in_database("", "docs"), "docs");
        assert_eq!(in_database("tenant_a", "docs"), "tenant_a.docs");
        for ok in ["docs", "tenant_a.docs", "_t._d"] {
            assert!(check_collection_name("collection", ok).is_ok(), "{ok}");
        }
        for bad in [
            "a.b.c",
            ".docs",
            "tenant.",
            "default.docs",
            "9db.docs",
            "db.9docs",
            "db-x.docs",
        ] {
            assert!(check_collection_name("collection", bad).is_err(), "{bad}");
        }
        let mut s = good();
        s.name = "tenant_a.docs".into();
        validate(&s).unwrap();
        assert_eq!(rename(&s, "tenant_b.docs").unwrap().name, "tenant_b.docs");
        assert!(rename(&s, "default.docs").is_err());
    }

    fn good() -> CollectionSchema {
        CollectionSchema {
            name: "docs".into(),
            fields: vec![
                FieldSchema {
                    is_primary_key: true,
                    auto_id: true,
                    field_id: 1,
                    ..field("id", DataType::Int64)
                },
                FieldSchema {
                    dim: 128,
                    field_id: 2,
                    ..field("vec", DataType::FloatVector)
                },
                FieldSchema {
                    max_length: 64,
                    field_id: 3,
                    ..field("title", DataType::Varchar)
                },
                FieldSchema {
                    field_id: 4,
                    ..field("meta", DataType::Json)
                },
            ],
            shards: 2,
            version: 1,
            ..CollectionSchema::default()
        }
    }

    #[test]
    fn a_schema_change_adds_one_field_or_renames_and_nothing_else() {
        let current = good();
        let renamed = rename(&current, "papers").unwrap();
        assert_eq!((renamed.name.as_str(), renamed.version), ("papers", 2));
        assert_eq!(renamed.fields, current.fields);
        check_change(&current, &renamed).unwrap();
        let added = add_field(
            &current,
            FieldSchema {
                nullable: true,
                ..field("score", DataType::Float)
            },
        )
        .unwrap();
        check_change(&current, &added).unwrap();

        let bad = |next: &CollectionSchema| check_change(&current, next).unwrap_err().0;
        assert!(rename(&current, "docs").unwrap_err().0.contains("already"));
        assert!(
            rename(&current, "9lives")
                .unwrap_err()
                .0
                .contains("must be 1-")
        );
        // A rename that also adds, drops or changes a field, or skips a version.
        let mut more = rename(&current, "papers").unwrap();
        more.fields.push(added.fields.last().unwrap().clone());
        assert!(bad(&more).contains("fields as they are"), "{}", bad(&more));
        let mut fewer = renamed.clone();
        fewer.fields.pop();
        assert!(bad(&fewer).contains("fields as they are"));
        let mut skipped = renamed.clone();
        skipped.version = 3;
        assert!(bad(&skipped).contains("version 2"));
        // An added field under the old name with a wrong id.
        let mut wrong_id = added.clone();
        wrong_id.fields.last_mut().unwrap().field_id = 9;
        assert!(bad(&wrong_id).contains("field id 5"), "{}", bad(&wrong_id));
    }

    #[test]
    fn a_varchar_max_length_only_grows_in_a_schema_change() {
        let current = good();
        let raised = raise_max_length(&current, "title", 100).unwrap();
        assert_eq!((raised.fields[2].max_length, raised.version), (100, 2));
        assert_eq!(raised.fields[..2], current.fields[..2]);
        check_change(&current, &raised).unwrap();

        let err = |name: &str, n: u32| raise_max_length(&current, name, n).unwrap_err().0;
        assert!(
            err("title", 63).contains("only grows"),
            "{}",
            err("title", 63)
        );
        assert!(
            err("title", 65_536).contains("64-65535"),
            "{}",
            err("title", 65_536)
        );
        assert!(err("title", 64).contains("already"));
        assert!(err("meta", 100).contains("not VARCHAR"));
        assert!(err("nope", 100).contains("no field"));
        let mut varchar_pk = current.clone();
        varchar_pk.fields[0] = FieldSchema {
            is_primary_key: true,
            max_length: 36,
            field_id: 1,
            ..field("id", DataType::Varchar)
        };
        let e = raise_max_length(&varchar_pk, "id", 64).unwrap_err().0;
        assert!(e.contains("primary key"), "{e}");

        let bad = |next: &CollectionSchema| check_change(&current, next).unwrap_err().0;
        // Lowered, or raised together with another change, or a version skipped.
        let mut lowered = current.clone();
        lowered.fields[2].max_length = 10;
        lowered.version = 2;
        assert!(bad(&lowered).contains("only grows"), "{}", bad(&lowered));
        let mut two = raised.clone();
        two.fields[3].nullable = true;
        assert!(bad(&two).contains("only field \"title\""), "{}", bad(&two));
        let mut skipped = raised.clone();
        skipped.version = 5;
        assert!(bad(&skipped).contains("version 2"), "{}", bad(&skipped));
        let mut same = current.clone();
        same.version = 2;
        assert!(bad(&same).contains("changes nothing"), "{}", bad(&same));
    }

    #[test]
    fn a_valid_schema_passes() {
        validate(&good()).unwrap();
        let mut varchar_pk = good();
        varchar_pk.fields[0] = FieldSchema {
            is_primary_key: true,
            max_length: 36,
            ..field("id", DataType::Varchar)
        };
        validate(&varchar_pk).unwrap();
    }

    #[test]
    fn every_broken_rule_is_an_error_naming_it() {
        type Edit = fn(&mut CollectionSchema);
        let cases: Vec<(&str, Edit)> = vec![
            ("collection name", |s| s.name = "9lives".into()),
            ("collection name", |s| s.name = String::new()),
            ("shards", |s| s.shards = 65),
            ("field name", |s| s.fields[2].name = "has space".into()),
            ("used twice", |s| s.fields[3].name = "title".into()),
            ("no known data type", |s| s.fields[3].data_type = 0),
            ("no known data type", |s| s.fields[3].data_type = 77),
            ("max_length", |s| s.fields[2].max_length = 0),
            ("max_length", |s| s.fields[2].max_length = 70_000),
            ("dim", |s| s.fields[1].dim = 0),
            ("dim", |s| s.fields[1].dim = 40_000),
            ("nullable", |s| s.fields[1].nullable = true),
            ("no field is the primary key", |s| {
                s.fields[0].is_primary_key = false;
                s.fields[0].auto_id = false;
            }),
            ("exactly one", |s| s.fields[2].is_primary_key = true),
            ("INT64 or VARCHAR", |s| {
                s.fields[0].data_type = DataType::Double as i32;
                s.fields[0].auto_id = false;
            }),
            ("cannot be nullable", |s| s.fields[0].nullable = true),
            ("auto_id", |s| s.fields[3].auto_id = true),
            ("at least one vector field", |s| {
                s.fields.remove(1).name.clear()
            }),
            ("has no dim", |s| {
                s.fields[1].data_type = DataType::SparseFloatVector as i32;
            }),
            ("cannot be nullable", |s| {
                s.fields[1].data_type = DataType::SparseFloatVector as i32;
                s.fields[1].dim = 0;
                s.fields[1].nullable = true;
            }),
            ("INT64 or VARCHAR", |s| {
                s.fields[0].data_type = DataType::SparseFloatVector as i32;
                s.fields[0].auto_id = false;
            }),
        ];
        for (want, edit) in cases {
            let mut s = good();
            edit(&mut s);
            let e = validate(&s).expect_err(want).to_string();
            assert!(e.contains(want), "{want}: {e}");
        }
        // A VARCHAR primary key may have generated values too.
        let mut varchar_auto = good();
        varchar_auto.fields[0].data_type = DataType::Varchar as i32;
        varchar_auto.fields[0].max_length = 64;
        validate(&varchar_auto).unwrap();
        // A sparse vector field alone is the collection's vector field; none can be added.
        let mut sparse_only = good();
        sparse_only.fields[1].data_type = DataType::SparseFloatVector as i32;
        sparse_only.fields[1].dim = 0;
        validate(&sparse_only).unwrap();
        let added = FieldSchema {
            nullable: true,
            ..field("sv2", DataType::SparseFloatVector)
        };
        assert!(add_field(&good(), added).is_err());
    }

    /// `good()` with a BM25 function from `title` (with the standard analyzer) to `sparse`.
    fn with_bm25() -> CollectionSchema {
        let mut s = good();
        s.fields[2].enable_analyzer = true;
        s.fields.push(FieldSchema {
            is_function_output: true,
            ..field("sparse", DataType::SparseFloatVector)
        });
        s.functions.push(FunctionSchema {
            name: "title_bm25".into(),
            r#type: FunctionType::Bm25 as i32,
            input_field: "title".into(),
            output_field: "sparse".into(),
        });
        s
    }

    #[test]
    fn a_bm25_function_reads_an_analyzed_varchar_field_into_its_own_output_field() {
        let s = with_bm25();
        validate(&s).unwrap();
        assert_eq!(bm25_of(&s, "sparse").unwrap().input_field, "title");
        assert!(bm25_of(&s, "title").is_none());
        assert_eq!(
            stored_fields(&s)
                .map(|f| f.name.as_str())
                .collect::<Vec<_>>(),
            ["id", "vec", "title", "meta"]
        );
        type Edit = fn(&mut CollectionSchema);
        let cases: Vec<(&str, Edit)> = vec![
            ("enable_analyzer", |s| s.fields[2].enable_analyzer = false),
            ("only a VARCHAR field", |s| {
                s.fields[3].enable_analyzer = true
            }),
            ("tokenizer", |s| {
                s.fields[2].analyzer_params = r#"{"tokenizer": "jieba"}"#.into()
            }),
            ("without enable_analyzer", |s| {
                s.fields[3].analyzer_params = "{}".into()
            }),
            ("enable_match needs enable_analyzer", |s| {
                s.fields[2].enable_analyzer = false;
                s.fields[2].enable_match = true;
                s.functions.clear();
                s.fields.pop();
            }),
            ("must be a SPARSE_FLOAT_VECTOR", |s| {
                s.fields[4].data_type = DataType::FloatVector as i32;
                s.fields[4].dim = 4;
            }),
            ("no function outputs it", |s| s.functions.clear()),
            ("is_function_output", |s| {
                s.fields[4].is_function_output = false
            }),
            ("input", |s| s.functions[0].input_field = "nope".into()),
            ("no known type", |s| s.functions[0].r#type = 0),
            ("function name", |s| s.functions[0].name = "a b".into()),
            ("used twice", |s| {
                let again = s.functions[0].clone();
                s.functions.push(again);
            }),
            ("output of two functions", |s| {
                let mut again = s.functions[0].clone();
                again.name = "other".into();
                s.functions.push(again);
            }),
        ];
        for (want, edit) in cases {
            let mut s = with_bm25();
            edit(&mut s);
            let e = validate(&s).expect_err(want).to_string();
            assert!(e.contains(want), "{want}: {e}");
        }
        let output = FieldSchema {
            nullable: true,
            is_function_output: true,
            ..field("more", DataType::Bool)
        };
        assert!(add_field(&s, output).is_err());
    }

    #[test]
    fn a_schema_change_adds_one_nullable_scalar_field() {
        let s = good();
        let added = add_field(
            &s,
            FieldSchema {
                nullable: true,
                ..field("score", DataType::Float)
            },
        )
        .unwrap();
        assert_eq!(added.version, 2);
        assert_eq!(added.fields.last().unwrap().field_id, 5);
        validate(&added).unwrap();
        for (want, f) in [
            ("nullable", field("score", DataType::Float)),
            (
                "used already",
                FieldSchema {
                    nullable: true,
                    ..field("title", DataType::Bool)
                },
            ),
            (
                "only scalar",
                FieldSchema {
                    dim: 4,
                    ..field("v2", DataType::FloatVector)
                },
            ),
        ] {
            let e = add_field(&s, f).expect_err(want).to_string();
            assert!(e.contains(want), "{want}: {e}");
        }
    }
}
