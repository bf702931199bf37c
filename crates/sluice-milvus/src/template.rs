//! Expression templates (`filter="age > {age}"`, `filter_params={"age": 10}` in pymilvus): the
//! values come apart from the text, as `expr_template_values`, and are written into it here as
//! literals of the filter language, so the filter is parsed and checked as if typed in full.

use std::collections::HashMap;
use std::fmt::Write as _;

use crate::pb::schema::{TemplateArrayValue, TemplateValue, template_array_value, template_value};
use crate::status::Failure;

/// Most values one placeholder may expand to (an `in` list).
const MAX_LIST: usize = 1 << 20;

/// `expr` with each `{name}` outside string literals replaced by the literal of
/// `values[name]`; an expression without placeholders is returned as it is.
pub(crate) fn render(
    expr: &str,
    values: &HashMap<String, TemplateValue>,
) -> Result<String, Failure> {
    if values.is_empty() {
        return Ok(expr.to_owned());
    }
    let mut out = String::with_capacity(expr.len());
    let mut chars = expr.char_indices().peekable();
    let mut quote: Option<char> = None;
    while let Some((at, c)) = chars.next() {
        match (quote, c) {
            (Some(_), '\\') => {
                out.push(c);
                if let Some((_, next)) = chars.next() {
                    out.push(next);
                }
            }
            (Some(q), c) if c == q => {
                quote = None;
                out.push(c);
            }
            (None, '"' | '\'') => {
                quote = Some(c);
                out.push(c);
            }
            (None, '{') => {
                let rest = &expr[at + 1..];
                let Some(end) = rest.find('}') else {
                    return Err(Failure::invalid(format!(
                        "the filter has a '{{' without a '}}' at offset {at}"
                    )));
                };
                let name = rest[..end].trim();
                let value = values.get(name).ok_or_else(|| {
                    Failure::invalid(format!("the filter's placeholder {{{name}}} has no value"))
                })?;
                literal(value, &mut out)
                    .map_err(|e| Failure::invalid(format!("placeholder {{{name}}}: {e}")))?;
                for _ in 0..=rest[..end].chars().count() {
                    chars.next();
                }
            }
            _ => out.push(c),
        }
    }
    Ok(out)
}

fn string(s: &str, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c => out.push(c),
        }
    }
    out.push('"');
}

fn float(x: f64, out: &mut String) -> Result<(), String> {
    if !x.is_finite() {
        return Err(format!("{x} is not a finite number"));
    }
    // Debug keeps a decimal point or an exponent, so the text reads back as a float.
    let _ = write!(out, "{x:?}");
    Ok(())
}

fn literal(v: &TemplateValue, out: &mut String) -> Result<(), String> {
    match &v.val {
        Some(template_value::Val::BoolVal(b)) => out.push_str(if *b { "true" } else { "false" }),
        Some(template_value::Val::Int64Val(n)) => {
            let _ = write!(out, "{n}");
        }
        Some(template_value::Val::FloatVal(x)) => float(*x, out)?,
        Some(template_value::Val::StringVal(s)) => string(s, out),
        Some(template_value::Val::ArrayVal(a)) => list(a, out)?,
        Some(template_value::Val::BytesVal(_)) => return Err("bytes are not a filter value".into()),
        None => return Err("no value".into()),
    }
    Ok(())
}

fn list(a: &TemplateArrayValue, out: &mut String) -> Result<(), String> {
    let mut items: Vec<String> = Vec::new();
    let mut push = |f: &mut dyn FnMut(&mut String) -> Result<(), String>| {
        let mut s = String::new();
        f(&mut s)?;
        items.push(s);
        Ok::<(), String>(())
    };
    match &a.data {
        Some(template_array_value::Data::BoolData(b)) => {
            for x in &b.data {
                push(&mut |s| {
                    s.push_str(if *x { "true" } else { "false" });
                    Ok(())
                })?;
            }
        }
        Some(template_array_value::Data::LongData(l)) => {
            for x in &l.data {
                push(&mut |s| {
                    let _ = write!(s, "{x}");
                    Ok(())
                })?;
            }
        }
        Some(template_array_value::Data::DoubleData(d)) => {
            for x in &d.data {
                push(&mut |s| float(*x, s))?;
            }
        }
        Some(template_array_value::Data::StringData(t)) => {
            for x in &t.data {
                push(&mut |s| {
                    string(x, s);
                    Ok(())
                })?;
            }
        }
        Some(
            template_array_value::Data::ArrayData(_) | template_array_value::Data::JsonData(_),
        ) => {
            return Err("a list of lists or of JSON values is not a filter value".into());
        }
        None => {}
    }
    if items.len() > MAX_LIST {
        return Err(format!("{} values: at most {MAX_LIST}", items.len()));
    }
    out.push('[');
    out.push_str(&items.join(", "));
    out.push(']');
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pb::schema::{LongArray, StringArray};

    fn v(val: template_value::Val) -> TemplateValue {
        TemplateValue { val: Some(val) }
    }

    #[test]
    fn placeholders_become_literals_outside_strings_only() {
        let values: HashMap<String, TemplateValue> = [
            ("age".to_owned(), v(template_value::Val::Int64Val(-3))),
            ("r".into(), v(template_value::Val::FloatVal(2.0))),
            ("ok".into(), v(template_value::Val::BoolVal(true))),
            (
                "name".into(),
                v(template_value::Val::StringVal("a \"b\" \\ c".into())),
            ),
            (
                "ids".into(),
                v(template_value::Val::ArrayVal(TemplateArrayValue {
                    data: Some(template_array_value::Data::LongData(LongArray {
                        data: vec![1, 2],
                    })),
                })),
            ),
            (
                "tags".into(),
                v(template_value::Val::ArrayVal(TemplateArrayValue {
                    data: Some(template_array_value::Data::StringData(StringArray {
                        data: vec!["x".into(), "y'z".into()],
                    })),
                })),
            ),
        ]
        .into();
        let got = render(
            "age > {age} and r <= { r } and ok == {ok} and name == {name} and id in {ids} \
             and tag in {tags} and note == \"{age} is text\" and n == 'it\\'s {r}'",
            &values,
        )
        .unwrap();
        assert_eq!(
            got,
            "age > -3 and r <= 2.0 and ok == true and name == \"a \\\"b\\\" \\\\ c\" and id in [1, 2] \
             and tag in [\"x\", \"y'z\"] and note == \"{age} is text\" and n == 'it\\'s {r}'"
        );
        assert_eq!(render("a > {x}", &HashMap::new()).unwrap(), "a > {x}");
    }

    #[test]
    fn a_missing_or_unusable_value_is_refused() {
        let values: HashMap<String, TemplateValue> = [
            ("x".to_owned(), v(template_value::Val::FloatVal(f64::NAN))),
            ("b".into(), v(template_value::Val::BytesVal(vec![1]))),
            ("e".into(), TemplateValue { val: None }),
        ]
        .into();
        for expr in ["a > {y}", "a > {x}", "a == {b}", "a == {e}", "a > {x"] {
            assert!(render(expr, &values).is_err(), "{expr}");
        }
    }
}
