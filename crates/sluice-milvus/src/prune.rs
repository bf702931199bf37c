//! Partition pruning in partition key mode: a filter that pins the partition key
//! (`key == 3`, `"a" == key`, `key in [1, 2]`, as one of the terms joined by `and` at its top
//! level) can only match rows in the partitions those values hash to, so a read skips the
//! others. Anything this does not recognise (an `or` or a `not` at the top level, parentheses,
//! escapes, another comparison) prunes nothing: the filter still decides every row, pruning
//! only saves the work.

use std::collections::BTreeSet;

/// A literal of the filter.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Literal {
    Int(i64),
    Str(String),
}

#[derive(Clone, Debug, PartialEq)]
enum Tok {
    Ident(String),
    Lit(Literal),
    /// Any other symbol or operator, as written.
    Sym(String),
}

/// The tokens of `expr`, `None` when it holds something this module does not read (an escape
/// in a string, an unterminated string, a character it does not know).
fn tokens(expr: &str) -> Option<Vec<Tok>> {
    let chars: Vec<char> = expr.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c.is_whitespace() {
            i += 1;
        } else if c == '"' || c == '\'' {
            let end = chars[i + 1..].iter().position(|&x| x == c)? + i + 1;
            let body: String = chars[i + 1..end].iter().collect();
            if body.contains('\\') {
                return None;
            }
            out.push(Tok::Lit(Literal::Str(body)));
            i = end + 1;
        } else if c.is_ascii_alphabetic() || c == '_' || c == '$' {
            let start = i;
            while i < chars.len()
                && (chars[i].is_ascii_alphanumeric() || chars[i] == '_' || chars[i] == '$')
            {
                i += 1;
            }
            out.push(Tok::Ident(chars[start..i].iter().collect()));
        } else if c.is_ascii_digit()
            || (c == '-'
                && chars.get(i + 1).is_some_and(char::is_ascii_digit)
                && !ends_operand(&out))
        {
            let start = i;
            i += 1;
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '.') {
                i += 1;
            }
            let text: String = chars[start..i].iter().collect();
            match text.parse::<i64>() {
                Ok(v) => out.push(Tok::Lit(Literal::Int(v))),
                // A float or a hex number: a literal this module does not compare.
                Err(_) => out.push(Tok::Sym(text)),
            }
        } else {
            let two: String = chars[i..(i + 2).min(chars.len())].iter().collect();
            if ["==", "!=", "<=", ">=", "&&", "||", "**"].contains(&two.as_str()) {
                out.push(Tok::Sym(two));
                i += 2;
            } else {
                out.push(Tok::Sym(c.to_string()));
                i += 1;
            }
        }
    }
    Some(out)
}

/// Whether the last token ends an operand (then a `-` is a minus, not a sign).
fn ends_operand(out: &[Tok]) -> bool {
    match out.last() {
        Some(Tok::Ident(w)) => {
            !is_word(w, "and") && !is_word(w, "or") && !is_word(w, "not") && !is_word(w, "in")
        }
        Some(Tok::Lit(_)) => true,
        Some(Tok::Sym(s)) => s == ")" || s == "]",
        None => false,
    }
}

fn is_word(w: &str, word: &str) -> bool {
    w.eq_ignore_ascii_case(word)
}

/// The values of `key` a row matching `expr` can have, when `expr` pins them: `None` when it
/// does not (or cannot be read here).
pub(crate) fn key_values(expr: &str, key: &str) -> Option<Vec<Literal>> {
    let toks = tokens(expr)?;
    // The terms joined by `and` at depth 0; an `or` or `not` there pins nothing.
    let mut terms: Vec<&[Tok]> = Vec::new();
    let (mut depth, mut start) = (0i32, 0usize);
    for (i, t) in toks.iter().enumerate() {
        match t {
            Tok::Sym(s) if s == "(" || s == "[" => depth += 1,
            Tok::Sym(s) if s == ")" || s == "]" => depth -= 1,
            Tok::Sym(s) if depth == 0 && (s == "||" || s == "!") => return None,
            Tok::Ident(w) if depth == 0 && (is_word(w, "or") || is_word(w, "not")) => return None,
            Tok::Sym(s) if depth == 0 && s == "&&" => {
                terms.push(&toks[start..i]);
                start = i + 1;
            }
            Tok::Ident(w) if depth == 0 && is_word(w, "and") => {
                terms.push(&toks[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    terms.push(&toks[start..]);
    let mut pinned: Option<Vec<Literal>> = None;
    for term in terms {
        let Some(values) = term_values(term, key) else {
            continue;
        };
        pinned = Some(match pinned {
            None => values,
            Some(before) => before.into_iter().filter(|v| values.contains(v)).collect(),
        });
    }
    pinned
}

/// The values one term allows `key`: `key == v`, `v == key`, `key in [v, …]`.
fn term_values(term: &[Tok], key: &str) -> Option<Vec<Literal>> {
    let is_key = |t: &Tok| matches!(t, Tok::Ident(w) if w == key);
    let eq = |t: &Tok| matches!(t, Tok::Sym(s) if s == "==");
    match term {
        [k, op, Tok::Lit(v)] | [Tok::Lit(v), op, k] if is_key(k) && eq(op) => Some(vec![v.clone()]),
        [k, Tok::Ident(w), Tok::Sym(open), rest @ .., Tok::Sym(close)]
            if is_key(k) && is_word(w, "in") && open == "[" && close == "]" =>
        {
            let mut out = Vec::new();
            for (i, t) in rest.iter().enumerate() {
                match (i % 2, t) {
                    (0, Tok::Lit(v)) => out.push(v.clone()),
                    (1, Tok::Sym(s)) if s == "," => {}
                    _ => return None,
                }
            }
            Some(out)
        }
        _ => None,
    }
}

/// The partition indexes (of `n`) rows with these key values are in, as inserts place them
/// (`sluice_storage::rows::shards_of_keys`); `None` when a value's type is not the key's
/// (`int_key`: an INT64 key, else VARCHAR).
pub(crate) fn partitions_of(
    values: &[Literal],
    int_key: bool,
    n: usize,
) -> Option<BTreeSet<usize>> {
    use arrow_array::{ArrayRef, Int64Array, StringArray};
    let keys: ArrayRef = if int_key {
        let ints: Option<Vec<i64>> = values
            .iter()
            .map(|v| match v {
                Literal::Int(i) => Some(*i),
                Literal::Str(_) => None,
            })
            .collect();
        std::sync::Arc::new(Int64Array::from(ints?))
    } else {
        let strs: Option<Vec<&str>> = values
            .iter()
            .map(|v| match v {
                Literal::Str(s) => Some(s.as_str()),
                Literal::Int(_) => None,
            })
            .collect();
        std::sync::Arc::new(StringArray::from(strs?))
    };
    let picked = sluice_storage::rows::shards_of_keys(keys.as_ref(), n).ok()?;
    Some(picked.into_iter().collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ints(v: &[i64]) -> Option<Vec<Literal>> {
        Some(v.iter().map(|&i| Literal::Int(i)).collect())
    }

    #[test]
    fn pinned_keys_are_read_from_top_level_conjunctions_only() {
        assert_eq!(key_values("k == 3", "k"), ints(&[3]));
        assert_eq!(key_values("3 == k", "k"), ints(&[3]));
        assert_eq!(key_values("k == -3", "k"), ints(&[-3]));
        assert_eq!(key_values("k in [1, 2, 3]", "k"), ints(&[1, 2, 3]));
        assert_eq!(key_values("k IN [1,2] and x > 1", "k"), ints(&[1, 2]));
        assert_eq!(key_values("x > 1 && k == 2", "k"), ints(&[2]));
        assert_eq!(key_values("k in [1, 2] and k in [2, 3]", "k"), ints(&[2]));
        assert_eq!(key_values("k == 1 and k == 2", "k"), ints(&[]));
        assert_eq!(
            key_values(r#"k == "a b" and (x == 1 or y == 2)"#, "k"),
            Some(vec![Literal::Str("a b".into())])
        );
        assert_eq!(
            key_values("k in ['x', \"y\"]", "k"),
            Some(vec![Literal::Str("x".into()), Literal::Str("y".into())])
        );
        // Nothing pinned: another field, another operator, an or / not at the top, nesting,
        // arithmetic, floats, escapes, an empty or broken filter.
        for expr in [
            "",
            "x == 3",
            "k != 3",
            "k >= 3",
            "k == 3 or x == 1",
            "k == 3 || x == 1",
            "not k == 3",
            "!(k == 3)",
            "(k == 3)",
            "k + 1 == 3",
            "k - 1 == 3",
            "k == 3.0",
            "k == 0x10",
            r#"k == "a\"b""#,
            "k == \"open",
            "k in [1, x]",
            "k in [1 2]",
            "kk == 3",
            "k not in [1]",
            "k == k",
        ] {
            assert_eq!(key_values(expr, "k"), None, "{expr}");
        }
        // A minus after an operand is a subtraction, not a sign.
        assert_eq!(key_values("x -1 == 2 and k == 1", "k"), ints(&[1]));
    }

    #[test]
    fn partitions_follow_the_insert_placement_and_types_must_match() {
        let placed = |vals: &[Literal], int_key| partitions_of(vals, int_key, 16);
        assert_eq!(
            placed(&[Literal::Int(3), Literal::Int(19), Literal::Int(-1)], true),
            Some([3, 15].into_iter().collect())
        );
        let s = Literal::Str("tenant".into());
        let want = sluice_storage::rows::shards_of_keys(
            &arrow_array::StringArray::from(vec!["tenant"]),
            16,
        )
        .unwrap();
        assert_eq!(
            placed(std::slice::from_ref(&s), false),
            Some(want.into_iter().collect())
        );
        assert_eq!(placed(&[s], true), None);
        assert_eq!(placed(&[Literal::Int(1)], false), None);
        assert_eq!(placed(&[], true), Some(BTreeSet::new()));
    }
}
