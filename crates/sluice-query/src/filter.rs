//! The filter language: Milvus-style boolean expressions over a collection's scalar fields,
//! parsed and type-checked against a [`CollectionSchema`] and evaluated over Arrow
//! [`RecordBatch`]es with Arrow compute kernels.
//!
//! # Grammar
//!
//! Keywords (`and`, `or`, `not`, `in`, `is`, `like`, `null`, `true`, `false`) are case-insensitive
//! (a field named like a keyword cannot be used in a filter); field names are case-sensitive.
//!
//! ```text
//! expr       := or_expr
//! or_expr    := and_expr (("or" | "||") and_expr)*
//! and_expr   := not_expr (("and" | "&&") not_expr)*
//! not_expr   := ("not" | "!") not_expr | primary
//! primary    := "(" expr ")" | comparison | range | in_expr | null_test | like | function
//!             | "exists" path | "true" | "false"
//! comparison := field OP literal | literal OP field       OP: == != < <= > >=
//!             | field ARITH number OP number               ARITH: + - * / %
//! field      := name | path
//! path       := name ("[" (string | index) "]")*           (a key path in a JSON field; an
//!                                                          index steps into an array;
//!                                                          `$meta` names the dynamic field)
//! function   := ("json_contains" | "array_contains") "(" path "," json ")"
//!             | ("json_contains_any" | "json_contains_all" | "array_contains_any"
//!                | "array_contains_all") "(" path "," "[" [json ("," json)*] "]" ")"
//!             | ("array_length" | "json_length") "(" path ")" OP integer
//!             | "text_match" "(" field "," string ["," "minimum_should_match" "=" integer] ")"
//!             | "phrase_match" "(" field "," string ["," integer] ")"
//! json       := literal | "[" [json ("," json)*] "]"
//! range      := literal ("<" | "<=") field ("<" | "<=") literal
//!             | literal (">" | ">=") field (">" | ">=") literal
//! in_expr    := field ["not"] "in" "[" [literal ("," literal)*] "]"
//! null_test  := field "is" ["not"] "null"
//! like       := field "like" string     (`%`: any run of characters, `_`: any one character,
//!                                        `\%` `\_` `\\`: themselves)
//! literal    := integer (i64, optional sign) | float (`1.5`, `-2e3`, `.5`)
//!             | string ('…' or "…", escapes \" \' \\ \n \t \r) | "true" | "false"
//! ```
//!
//! `=` is rejected (use `==`); comparing two fields, or two literals, is rejected.
//!
//! # Types
//!
//! * INT32, INT64, FLOAT, DOUBLE fields compare with integer and float literals. Integer
//!   fields compare exactly with any literal (`age > 2.5`, `i32_field < 10000000000` work).
//!   For FLOAT and DOUBLE fields the literal is converted to the field's type (rounded to
//!   nearest) and compared with IEEE 754 semantics: NaN values match only `!=`, `-0.0 == 0.0`.
//! * VARCHAR fields compare with string literals, all six operators, in byte order, and match
//!   `like` patterns (a JSON key or a dynamic field's key too, read as a string).
//! * BOOL fields compare with `true` / `false`, `==` and `!=` only.
//! * Arithmetic on a numeric field (or a JSON key, read as DOUBLE) before a comparison,
//!   `price * 2 > 10`: exact on integers when the field and both numbers are integers (`/`
//!   truncates, `%` keeps the dividend's sign), in f64 otherwise; `%` takes integers only; a
//!   division by zero is refused. A `-` or `+` right after a value is arithmetic, elsewhere a
//!   sign (`age - -5`).
//! * `in` lists hold literals that could be compared with the field by `==`.
//! * A JSON field is filtered through a key of its objects: `meta["color"] == "red"`, or a path
//!   of keys into nested objects: `meta["dims"]["w"] > 2`. The
//!   literal decides how the key's values are read — numbers as DOUBLE, strings as VARCHAR,
//!   `true` / `false` as BOOL — and a row whose value is missing, not an object's key, or of
//!   another JSON type reads as null (so it matches only `is null`). `meta["k"] is null` is
//!   true when the key is absent or JSON null.
//! * The schema's dynamic field (`FieldSchema.is_dynamic`) answers for names that are not
//!   fields: `color == "red"` reads `dynamic["color"]`, `dims["w"]` reads
//!   `dynamic["dims"]["w"]`; `$meta["color"]` (Milvus's name for the dynamic field) reads
//!   `dynamic["color"]` too.
//! * `true` and `false` alone are conditions: every row, none.
//! * The JSON functions read the value at a path as JSON: `json_contains(path, v)` is true when
//!   it is an array holding `v` (numbers equal by value, `1 == 1.0`), `_any` / `_all` when it
//!   holds any / every value of a list, and false when it is not an array or missing (as in
//!   Milvus: never unknown, so `not json_contains(...)` matches rows without the key);
//!   `array_length(path) OP n` compares an array's length (unknown when not an array).
//!   `exists path` is true when the key is there and does not hold JSON null (as in Milvus:
//!   `path is not null`). Function names are case-insensitive.
//! * `text_match(field, 'some words')` (a VARCHAR field with `enable_match`) is true when the
//!   field's text holds any of the terms the field's analyzer splits the string into (at least
//!   `minimum_should_match` of them, when given); false for a null value or a string without
//!   terms, as in Milvus. `phrase_match(field, 'some words', slop)` is true when the text holds
//!   the string's terms as a phrase: each term at its own position, the terms' positions less
//!   their places in the phrase differing by at most `slop` (0 by default: in order and side
//!   by side; 1 lets one word in between; 2 lets two terms swap), as Lucene and Tantivy count.
//! * A JSON field itself cannot be compared (only `is [not] null`, true for SQL null and JSON
//!   null alike, and the functions); FLOAT_VECTOR fields cannot be filtered on.
//!
//! # Nulls
//!
//! A comparison or `in` test on a null value is unknown, and `and` / `or` / `not` follow SQL's
//! three-valued (Kleene) logic, so `not (x == 1)` does not match a row where `x` is null, and
//! `x not in []` matches every row where `x` is not null. Only `is null` / `is not null` are
//! ever true or false on a null. At the top an unknown result counts as no match. A batch with
//! no column for a nullable field (added after the batch was written) reads it as all null.
//!
//! # The empty filter
//!
//! [`Filter::parse`] rejects an empty (or whitespace-only) expression: callers treat an empty
//! filter as "no filter" and skip filtering instead of parsing it.

use std::collections::HashSet;
use std::fmt;
use std::sync::Arc;

use arrow_arith::boolean::{and_kleene, is_not_null, is_null, not, or_kleene};
use arrow_array::cast::AsArray;
use arrow_array::types::{Float32Type, Float64Type, Int32Type, Int64Type};
use arrow_array::{
    Array, ArrayRef, ArrowPrimitiveType, BooleanArray, Int32Array, Int64Array, PrimitiveArray,
    RecordBatch, Scalar, StringArray,
};
use arrow_buffer::BooleanBuffer;
use arrow_schema::{ArrowError, DataType as ArrowType};
use sluice_types::schema::{CollectionSchema, DataType};

/// Deepest nesting of parentheses and `not`s an expression may have.
pub const MAX_DEPTH: usize = 128;

/// Most values in a JSON function's list literal.
const MAX_JSON_LIST: usize = 65_536;

/// Longest token text a [`FilterError`] quotes.
const MAX_TOKEN_QUOTE: usize = 40;

/// Why an expression could not be parsed or type-checked, or a batch could not be evaluated.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct FilterError {
    /// What is wrong.
    pub message: String,
    /// Byte offset of the offending token in the expression (its length at the end of input).
    pub offset: usize,
    /// The offending token's text (empty at the end of input).
    pub token: String,
}

impl FilterError {
    /// An error about `token` at byte `offset`.
    pub fn new(message: impl Into<String>, offset: usize, token: impl Into<String>) -> Self {
        let token: String = token.into();
        let token = if token.len() > MAX_TOKEN_QUOTE {
            let mut end = MAX_TOKEN_QUOTE;
            while !token.is_char_boundary(end) {
                end -= 1;
            }
            format!("{}…", &token[..end])
        } else {
            token
        };
        FilterError {
            message: message.into(),
            offset,
            token,
        }
    }
}

impl fmt::Display for FilterError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.token.is_empty() {
            write!(
                f,
                "filter error at offset {} (end of input): {}",
                self.offset, self.message
            )
        } else {
            write!(
                f,
                "filter error at offset {} near {:?}: {}",
                self.offset, self.token, self.message
            )
        }
    }
}

/// A parsed, type-checked filter expression, ready to evaluate over batches of rows.
#[derive(Debug, Clone)]
pub struct Filter {
    text: String,
    columns: Vec<Column>,
    root: Node,
}

impl Filter {
    /// Parses and type-checks `expr` against `schema`.
    ///
    /// An empty or whitespace-only expression is an error: callers skip filtering when the
    /// filter is empty rather than parsing it.
    pub fn parse(expr: &str, schema: &CollectionSchema) -> Result<Filter, FilterError> {
        let tokens = lex(expr)?;
        if tokens.len() == 1 {
            return Err(FilterError::new(
                "empty filter expression (skip filtering instead of parsing an empty filter)",
                expr.len(),
                "",
            ));
        }
        let mut parser = Parser {
            tokens,
            pos: 0,
            depth: 0,
            schema,
            columns: Vec::new(),
        };
        let root = parser.parse_or()?;
        let end = parser.peek();
        if end.tok != Tok::End {
            let message = if end.tok == Tok::RParen {
                "unbalanced ')': no '(' to close".to_string()
            } else {
                format!(
                    "unexpected {} after a complete expression (missing 'and' / 'or'?)",
                    end.tok.describe()
                )
            };
            return Err(FilterError::new(message, end.offset, end.text.clone()));
        }
        Ok(Filter {
            text: expr.to_string(),
            columns: parser.columns,
            root,
        })
    }

    /// Which rows of `batch` match (true = keep). The result has no nulls: a row whose result
    /// is unknown (three-valued logic over nulls) does not match.
    ///
    /// Columns are found by field name; a missing column of a nullable field reads as all null,
    /// other columns (such as system columns) are ignored.
    pub fn evaluate(&self, batch: &RecordBatch) -> Result<BooleanArray, FilterError> {
        self.evaluate_with(batch, &|_, _, _| None)
    }

    /// [`Filter::evaluate`], taking `text_match(field, terms, min)`'s answer for the batch's
    /// rows from `hits` when it has one (a term index's; `terms` sorted and distinct).
    pub fn evaluate_with(
        &self,
        batch: &RecordBatch,
        hits: &TextHits<'_>,
    ) -> Result<BooleanArray, FilterError> {
        let mut arrays = Vec::with_capacity(self.columns.len());
        for col in &self.columns {
            arrays.push(col.resolve(batch)?);
        }
        let result = self
            .root
            .eval(&self.columns, &arrays, batch.num_rows(), &self.text, hits)?;
        Ok(match result.nulls() {
            Some(nulls) if nulls.null_count() > 0 => {
                BooleanArray::new(result.values() & nulls.inner(), None)
            }
            Some(_) => BooleanArray::new(result.values().clone(), None),
            None => result,
        })
    }

    /// The field names the expression reads, each once, in order of first appearance.
    pub fn fields(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for c in &self.columns {
            if !out.contains(&c.name) {
                out.push(c.name.clone());
            }
        }
        out
    }

    /// The expression text it was parsed from.
    pub fn text(&self) -> &str {
        &self.text
    }
}

impl fmt::Display for Filter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

// ---------------------------------------------------------------------------------------------
// Lexer
// ---------------------------------------------------------------------------------------------

/// A comparison operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CmpOp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

impl CmpOp {
    /// The operator with its operands swapped: `lit < field` is `field > lit`.
    fn flip(self) -> CmpOp {
        match self {
            CmpOp::Eq => CmpOp::Eq,
            CmpOp::Ne => CmpOp::Ne,
            CmpOp::Lt => CmpOp::Gt,
            CmpOp::Le => CmpOp::Ge,
            CmpOp::Gt => CmpOp::Lt,
            CmpOp::Ge => CmpOp::Le,
        }
    }

    /// Whether `a op b` holds, given how `a` compares with `b`.
    fn holds(self, ord: std::cmp::Ordering) -> bool {
        use std::cmp::Ordering::{Equal, Greater, Less};
        match self {
            CmpOp::Eq => ord == Equal,
            CmpOp::Ne => ord != Equal,
            CmpOp::Lt => ord == Less,
            CmpOp::Le => ord != Greater,
            CmpOp::Gt => ord == Greater,
            CmpOp::Ge => ord != Less,
        }
    }

    fn symbol(self) -> &'static str {
        match self {
            CmpOp::Eq => "==",
            CmpOp::Ne => "!=",
            CmpOp::Lt => "<",
            CmpOp::Le => "<=",
            CmpOp::Gt => ">",
            CmpOp::Ge => ">=",
        }
    }
}

/// An arithmetic operator: `field OP number CMP number`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ArithOp {
    Add,
    Sub,
    Mul,
    Div,
    Mod,
}

impl ArithOp {
    fn symbol(self) -> &'static str {
        match self {
            ArithOp::Add => "+",
            ArithOp::Sub => "-",
            ArithOp::Mul => "*",
            ArithOp::Div => "/",
            ArithOp::Mod => "%",
        }
    }

    /// `x op y` on integers, exactly (`None`: division by zero, or out of i128).
    fn int(self, x: i128, y: i128) -> Option<i128> {
        match self {
            ArithOp::Add => x.checked_add(y),
            ArithOp::Sub => x.checked_sub(y),
            ArithOp::Mul => x.checked_mul(y),
            ArithOp::Div => x.checked_div(y),
            ArithOp::Mod => x.checked_rem(y),
        }
    }

    fn float(self, x: f64, y: f64) -> f64 {
        match self {
            ArithOp::Add => x + y,
            ArithOp::Sub => x - y,
            ArithOp::Mul => x * y,
            ArithOp::Div => x / y,
            ArithOp::Mod => x % y,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Ident(String),
    Int(i64),
    Float(f64),
    Str(String),
    Bool(bool),
    Null,
    And,
    Or,
    Not,
    In,
    Is,
    Like,
    Op(CmpOp),
    Arith(ArithOp),
    LParen,
    RParen,
    LBracket,
    RBracket,
    Comma,
    End,
}

impl Tok {
    fn describe(&self) -> String {
        match self {
            Tok::Ident(name) => format!("field {name:?}"),
            Tok::Int(_) | Tok::Float(_) | Tok::Str(_) | Tok::Bool(_) => "literal".to_string(),
            Tok::Null => "'null'".to_string(),
            Tok::And => "'and'".to_string(),
            Tok::Or => "'or'".to_string(),
            Tok::Not => "'not'".to_string(),
            Tok::In => "'in'".to_string(),
            Tok::Is => "'is'".to_string(),
            Tok::Like => "'like'".to_string(),
            Tok::Op(op) => format!("'{}'", op.symbol()),
            Tok::Arith(op) => format!("'{}'", op.symbol()),
            Tok::LParen => "'('".to_string(),
            Tok::RParen => "')'".to_string(),
            Tok::LBracket => "'['".to_string(),
            Tok::RBracket => "']'".to_string(),
            Tok::Comma => "','".to_string(),
            Tok::End => "end of input".to_string(),
        }
    }
}

#[derive(Debug, Clone)]
struct Token {
    tok: Tok,
    offset: usize,
    text: String,
}

/// How Milvus filters name the dynamic field itself.
const DYNAMIC_META: &str = "$meta";

fn is_ident_start(c: u8) -> bool {
    c.is_ascii_alphabetic() || c == b'_'
}

fn is_ident_char(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_'
}

/// Whether a token ends an operand (so a `-` or `+` after it is arithmetic, not a sign).
fn ends_operand(token: Option<&Token>) -> bool {
    token.is_some_and(|t| {
        matches!(
            t.tok,
            Tok::Ident(_)
                | Tok::Int(_)
                | Tok::Float(_)
                | Tok::Str(_)
                | Tok::Bool(_)
                | Tok::RParen
                | Tok::RBracket
        )
    })
}

/// Splits `src` into tokens, ending with [`Tok::End`].
fn lex(src: &str) -> Result<Vec<Token>, FilterError> {
    let bytes = src.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let c = bytes[i];
        if c.is_ascii_whitespace() {
            i += 1;
            continue;
        }
        let start = i;
        let next = bytes.get(i + 1).copied();
        let at_number = |j: usize| {
            bytes.get(j).is_some_and(u8::is_ascii_digit)
                || (bytes.get(j) == Some(&b'.') && bytes.get(j + 1).is_some_and(u8::is_ascii_digit))
        };
        let simple = |tok: Tok, len: usize| Token {
            tok,
            offset: start,
            text: src[start..start + len].to_string(),
        };
        let token = match c {
            b'(' => simple(Tok::LParen, 1),
            b')' => simple(Tok::RParen, 1),
            b'[' => simple(Tok::LBracket, 1),
            b']' => simple(Tok::RBracket, 1),
            b',' => simple(Tok::Comma, 1),
            b'=' if next == Some(b'=') => simple(Tok::Op(CmpOp::Eq), 2),
            // `text_match(..., minimum_should_match=2)`: an argument's name and value.
            b'=' if matches!(
                out.last().map(|t: &Token| &t.tok),
                Some(Tok::Ident(name)) if name.eq_ignore_ascii_case("minimum_should_match")
            ) =>
            {
                simple(Tok::Op(CmpOp::Eq), 1)
            }
            b'=' => {
                return Err(FilterError::new(
                    "'=' is not an operator: use '==' to test equality",
                    start,
                    "=",
                ));
            }
            b'!' if next == Some(b'=') => simple(Tok::Op(CmpOp::Ne), 2),
            b'!' => simple(Tok::Not, 1),
            b'<' if next == Some(b'=') => simple(Tok::Op(CmpOp::Le), 2),
            b'<' if next == Some(b'>') => {
                return Err(FilterError::new(
                    "'<>' is not an operator: use '!=' to test inequality",
                    start,
                    "<>",
                ));
            }
            b'<' => simple(Tok::Op(CmpOp::Lt), 1),
            b'>' if next == Some(b'=') => simple(Tok::Op(CmpOp::Ge), 2),
            b'>' => simple(Tok::Op(CmpOp::Gt), 1),
            b'&' if next == Some(b'&') => simple(Tok::And, 2),
            b'|' if next == Some(b'|') => simple(Tok::Or, 2),
            b'&' | b'|' => {
                let want = if c == b'&' { "&&" } else { "||" };
                return Err(FilterError::new(
                    format!("'{}' is not an operator: use '{want}'", c as char),
                    start,
                    (c as char).to_string(),
                ));
            }
            b'"' | b'\'' => lex_string(src, start)?,
            b'-' | b'+' if at_number(i + 1) && !ends_operand(out.last()) => lex_number(src, start)?,
            b'+' => simple(Tok::Arith(ArithOp::Add), 1),
            b'-' => simple(Tok::Arith(ArithOp::Sub), 1),
            b'*' => simple(Tok::Arith(ArithOp::Mul), 1),
            b'/' => simple(Tok::Arith(ArithOp::Div), 1),
            b'%' => simple(Tok::Arith(ArithOp::Mod), 1),
            _ if at_number(i) => lex_number(src, start)?,
            // Milvus's name for the dynamic field: `$meta["key"]` is the dynamic key `key`.
            b'$' if src[start..].starts_with(DYNAMIC_META)
                && !bytes
                    .get(start + DYNAMIC_META.len())
                    .is_some_and(|&b| is_ident_char(b)) =>
            {
                simple(Tok::Ident(DYNAMIC_META.to_owned()), DYNAMIC_META.len())
            }
            _ if is_ident_start(c) => {
                let mut end = i + 1;
                while end < bytes.len() && is_ident_char(bytes[end]) {
                    end += 1;
                }
                let text = &src[start..end];
                let tok = match text.to_ascii_lowercase().as_str() {
                    "and" => Tok::And,
                    "or" => Tok::Or,
                    "not" => Tok::Not,
                    "in" => Tok::In,
                    "is" => Tok::Is,
                    "like" => Tok::Like,
                    "null" => Tok::Null,
                    "true" => Tok::Bool(true),
                    "false" => Tok::Bool(false),
                    _ => Tok::Ident(text.to_string()),
                };
                simple(tok, end - start)
            }
            _ => {
                let ch = src[start..].chars().next().unwrap_or('?');
                return Err(FilterError::new(
                    format!("unexpected character {ch:?}"),
                    start,
                    ch.to_string(),
                ));
            }
        };
        i = start + token.text.len();
        out.push(token);
    }
    out.push(Token {
        tok: Tok::End,
        offset: src.len(),
        text: String::new(),
    });
    Ok(out)
}

/// Lexes the number starting at `start` (an optional sign, digits, an optional fraction and
/// an optional exponent).
fn lex_number(src: &str, start: usize) -> Result<Token, FilterError> {
    let bytes = src.as_bytes();
    let mut i = start;
    if matches!(bytes[i], b'-' | b'+') {
        i += 1;
    }
    let digits = |mut j: usize| {
        while j < bytes.len() && bytes[j].is_ascii_digit() {
            j += 1;
        }
        j
    };
    i = digits(i);
    let mut is_float = false;
    if bytes.get(i) == Some(&b'.') {
        is_float = true;
        i = digits(i + 1);
    }
    if matches!(bytes.get(i), Some(b'e' | b'E')) {
        let mut j = i + 1;
        if matches!(bytes.get(j), Some(b'+' | b'-')) {
            j += 1;
        }
        if bytes.get(j).is_some_and(u8::is_ascii_digit) {
            is_float = true;
            i = digits(j);
        }
    }
    // A number runs into a letter, digit, '_' or '.': `12abc`, `1.2.3`, `1e`.
    if i < bytes.len() && (is_ident_char(bytes[i]) || bytes[i] == b'.') {
        let mut end = i;
        while end < bytes.len() && (is_ident_char(bytes[end]) || bytes[end] == b'.') {
            end += 1;
        }
        return Err(FilterError::new(
            "malformed number",
            start,
            &src[start..end],
        ));
    }
    let text = &src[start..i];
    let tok = if is_float {
        match text.parse::<f64>() {
            Ok(v) => Tok::Float(v),
            Err(_) => return Err(FilterError::new("malformed number", start, text)),
        }
    } else {
        match text.parse::<i64>() {
            Ok(v) => Tok::Int(v),
            Err(_) => {
                return Err(FilterError::new(
                    "integer literal out of the INT64 range",
                    start,
                    text,
                ));
            }
        }
    };
    Ok(Token {
        tok,
        offset: start,
        text: text.to_string(),
    })
}

/// Lexes the quoted string starting at `start`, resolving its escapes.
fn lex_string(src: &str, start: usize) -> Result<Token, FilterError> {
    let quote = src.as_bytes()[start] as char;
    let mut value = String::new();
    let mut chars = src[start + 1..].char_indices();
    while let Some((rel, ch)) = chars.next() {
        let at = start + 1 + rel;
        if ch == quote {
            let end = at + 1;
            return Ok(Token {
                tok: Tok::Str(value),
                offset: start,
                text: src[start..end].to_string(),
            });
        }
        if ch != '\\' {
            value.push(ch);
            continue;
        }
        match chars.next() {
            Some((_, '"')) => value.push('"'),
            Some((_, '\'')) => value.push('\''),
            Some((_, '\\')) => value.push('\\'),
            Some((_, 'n')) => value.push('\n'),
            Some((_, 't')) => value.push('\t'),
            Some((_, 'r')) => value.push('\r'),
            Some((_, other)) => {
                return Err(FilterError::new(
                    format!(
                        "unknown escape '\\{other}' in a string (known: \\\" \\' \\\\ \\n \\t \\r)"
                    ),
                    at,
                    format!("\\{other}"),
                ));
            }
            None => break,
        }
    }
    Err(FilterError::new(
        format!("unterminated string: no closing {quote}"),
        start,
        &src[start..],
    ))
}

// ---------------------------------------------------------------------------------------------
// The parsed form
// ---------------------------------------------------------------------------------------------

/// The scalar field types a filter can read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Bool,
    Int32,
    Int64,
    Float,
    Double,
    Varchar,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Bool => "BOOL",
            Kind::Int32 => "INT32",
            Kind::Int64 => "INT64",
            Kind::Float => "FLOAT",
            Kind::Double => "DOUBLE",
            Kind::Varchar => "VARCHAR",
        }
    }

    fn arrow(self) -> ArrowType {
        match self {
            Kind::Bool => ArrowType::Boolean,
            Kind::Int32 => ArrowType::Int32,
            Kind::Int64 => ArrowType::Int64,
            Kind::Float => ArrowType::Float32,
            Kind::Double => ArrowType::Float64,
            Kind::Varchar => ArrowType::Utf8,
        }
    }

    /// The range of an integer kind.
    fn int_range(self) -> (i64, i64) {
        match self {
            Kind::Int32 => (i32::MIN.into(), i32::MAX.into()),
            _ => (i64::MIN, i64::MAX),
        }
    }
}

/// One step down a JSON document: an object's key or an array's index.
#[derive(Debug, Clone, PartialEq)]
enum Step {
    Key(String),
    Index(usize),
}

/// The JSON text of the value at `path` in the document `text`, or `None` when the text is not
/// JSON or the path leads nowhere. Each step reads one object or array with its members left
/// as text (checked, not built), so only the value found is ever parsed into a `Value`. A
/// repeated key means its last value, as in a parsed object.
fn json_at<'a>(text: &'a str, path: &[Step]) -> Option<&'a str> {
    use serde::Deserializer as _;
    use serde_json::value::RawValue;
    let mut at: &'a RawValue = serde_json::from_str(text).ok()?;
    for step in path {
        let mut de = serde_json::Deserializer::from_str(at.get());
        at = match step {
            Step::Key(k) => de.deserialize_map(Member(k)).ok()??,
            Step::Index(i) => de.deserialize_seq(Item(*i)).ok()??,
        };
    }
    Some(at.get())
}

/// Reads an object, keeping the text of the last value of one key.
struct Member<'k>(&'k str);

impl<'de> serde::de::Visitor<'de> for Member<'_> {
    type Value = Option<&'de serde_json::value::RawValue>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut found = None;
        while let Some(key) = map.next_key::<Key<'de>>()? {
            let value = map.next_value()?;
            if key.0 == self.0 {
                found = Some(value);
            }
        }
        Ok(found)
    }
}

/// Reads an array, keeping the text of one item.
struct Item(usize);

impl<'de> serde::de::Visitor<'de> for Item {
    type Value = Option<&'de serde_json::value::RawValue>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON array")
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut found = None;
        let mut i = 0;
        while let Some(item) = seq.next_element::<&'de serde_json::value::RawValue>()? {
            if i == self.0 {
                found = Some(item);
            }
            i += 1;
        }
        Ok(found)
    }
}

/// An object's key: borrowed from the text, or unescaped into a new string.
struct Key<'de>(std::borrow::Cow<'de, str>);

impl<'de> serde::Deserialize<'de> for Key<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl<'de> serde::de::Visitor<'de> for KeyVisitor {
            type Value = Key<'de>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }

            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Key<'de>, E> {
                Ok(Key(v.into()))
            }

            fn visit_str<E>(self, v: &str) -> Result<Key<'de>, E> {
                Ok(Key(v.to_owned().into()))
            }

            fn visit_string<E>(self, v: String) -> Result<Key<'de>, E> {
                Ok(Key(v.into()))
            }
        }
        d.deserialize_str(KeyVisitor)
    }
}

/// A key of a JSON field's objects, read as a column of one kind.
#[derive(Debug, Clone, PartialEq)]
struct JsonKey {
    /// Steps from the document down (`meta["a"][0]`: key `a`, then index 0).
    path: Vec<Step>,
    /// Any non-null value counts (as its JSON text): for `is [not] null`.
    any: bool,
    /// The value itself as JSON text (JSON null as `null`; a missing value as a null): for the
    /// JSON functions and `exists`.
    raw: bool,
}

/// A field the filter reads.
#[derive(Debug, Clone)]
struct Column {
    name: String,
    kind: Kind,
    nullable: bool,
    /// Where the field first appears in the expression.
    offset: usize,
    /// A key of this JSON field, not the field itself.
    json: Option<JsonKey>,
}

impl Column {
    /// The batch's column for this field, checked; `None` for a missing nullable field.
    fn resolve(&self, batch: &RecordBatch) -> Result<Option<ArrayRef>, FilterError> {
        if let Some(json) = &self.json {
            return self.resolve_json(batch, json);
        }
        match batch.column_by_name(&self.name) {
            Some(array) if array.data_type() == &self.kind.arrow() => Ok(Some(array.clone())),
            Some(array) => Err(FilterError::new(
                format!(
                    "the batch's column for {} field {:?} has Arrow type {}, not {}",
                    self.kind.name(),
                    self.name,
                    array.data_type(),
                    self.kind.arrow()
                ),
                self.offset,
                &self.name,
            )),
            None if self.nullable => Ok(None),
            None => Err(FilterError::new(
                format!(
                    "the batch has no column for non-nullable field {:?}",
                    self.name
                ),
                self.offset,
                &self.name,
            )),
        }
    }
}

impl Column {
    /// The values of a JSON field's key as a column of this column's kind.
    fn resolve_json(
        &self,
        batch: &RecordBatch,
        json: &JsonKey,
    ) -> Result<Option<ArrayRef>, FilterError> {
        let Some(array) = batch.column_by_name(&self.name) else {
            return Ok(None);
        };
        let Some(texts) = array.as_string_opt::<i32>() else {
            return Err(FilterError::new(
                format!(
                    "the batch's column for JSON field {:?} has Arrow type {}, not Utf8",
                    self.name,
                    array.data_type()
                ),
                self.offset,
                &self.name,
            ));
        };
        if json.raw && json.path.is_empty() {
            // The whole document as JSON text is the column itself: the JSON functions parse
            // each row once, and treat text that is not JSON as they treat a null.
            return Ok(Some(array.clone()));
        }
        let found = |t: Option<&str>| -> Option<serde_json::Value> {
            serde_json::from_str(json_at(t?, &json.path)?).ok()
        };
        if json.raw {
            let out: StringArray = texts.iter().map(|t| json_at(t?, &json.path)).collect();
            return Ok(Some(Arc::new(out)));
        }
        let values = texts.iter().map(|t| match found(t)? {
            serde_json::Value::Null => None,
            v => Some(v),
        });
        let out: ArrayRef = match self.kind {
            _ if json.any => Arc::new(
                values
                    .map(|v| {
                        v.map(|v| match v {
                            serde_json::Value::String(s) => s,
                            other => other.to_string(),
                        })
                    })
                    .collect::<StringArray>(),
            ),
            // Booleans and numbers meet as Milvus's engine has them meet: true and false are
            // 1 and 0 to a number, and 1 and 0 (only) are true and false to a boolean.
            Kind::Double => Arc::new(
                values
                    .map(|v| v.and_then(|v| v.as_f64().or_else(|| Some(v.as_bool()? as u8 as f64))))
                    .collect::<PrimitiveArray<Float64Type>>(),
            ),
            Kind::Bool => Arc::new(
                values
                    .map(|v| {
                        v.and_then(|v| match v.as_f64() {
                            Some(1.0) => Some(true),
                            Some(0.0) => Some(false),
                            _ => v.as_bool(),
                        })
                    })
                    .collect::<BooleanArray>(),
            ),
            _ => Arc::new(
                values
                    .map(|v| match v {
                        Some(serde_json::Value::String(s)) => Some(s),
                        _ => None,
                    })
                    .collect::<StringArray>(),
            ),
        };
        Ok(Some(out))
    }
}

/// What a leaf tests about one field's value.
#[derive(Debug, Clone)]
enum Pred {
    /// `is null` (`false`) or `is not null` (`true`).
    IsNull {
        negated: bool,
    },
    /// The same answer for every non-null value (e.g. `int32_field < 1e12`).
    Const(bool),
    /// An INT32 / INT64 field against a value in the field's range.
    Int(CmpOp, i64),
    F32(CmpOp, f32),
    F64(CmpOp, f64),
    Str(CmpOp, String),
    /// A VARCHAR value matches a `like` pattern (as an anchored regular expression).
    Like(regex::Regex),
    /// A BOOL field equals this value.
    Bool(bool),
    /// Sorted, deduplicated values in the field's range.
    InInt(Vec<i64>),
    /// Sorted (total order), deduplicated, no NaN, no -0.0.
    InF32(Vec<f32>),
    /// Sorted (total order), deduplicated, no NaN, no -0.0.
    InF64(Vec<f64>),
    InStr(HashSet<String>),
    InBool {
        has_true: bool,
        has_false: bool,
    },
    /// A JSON value (as text) is an array holding any (`all`: every one) of these values.
    JsonContains {
        values: Vec<serde_json::Value>,
        all: bool,
    },
    /// A JSON value (as text) is an array whose length compares so.
    ArrayLength(CmpOp, i64),
    /// A VARCHAR value's terms (by `analyzer`) hold the phrase `terms` (each with its place
    /// in the phrase) within `slop`.
    PhraseMatch {
        analyzer: Arc<sluice_types::text::Analyzer>,
        terms: Vec<(String, usize)>,
        slop: usize,
    },
    /// A VARCHAR value's terms (by `analyzer`) hold at least `min` of `terms` (sorted,
    /// distinct).
    TextMatch {
        analyzer: Arc<sluice_types::text::Analyzer>,
        terms: Vec<String>,
        min: usize,
    },
    /// `value op by cmp against`, on a numeric field: exactly on integers (truncating `/`)
    /// when the field and both numbers are integers, else in f64.
    Arith {
        op: ArithOp,
        by: LitValue,
        cmp: CmpOp,
        against: LitValue,
    },
}

#[derive(Debug, Clone)]
enum Node {
    And(Vec<Node>),
    Or(Vec<Node>),
    Not(Box<Node>),
    Leaf {
        column: usize,
        pred: Pred,
    },
    /// An equality test (`==`, `!=`, `in`) of a JSON value read as one type, where a value of
    /// another JSON type is there: `answer` (false for `==` and `in`, true for `!=`), as Milvus
    /// answers; a missing value or JSON null stays unknown. `present` is the column of the
    /// same key with every non-null value.
    OtherType {
        test: Box<Node>,
        present: usize,
        answer: bool,
    },
    /// `true` or `false` written as a condition: every row, or none.
    Const(bool),
}

// ---------------------------------------------------------------------------------------------
// Parser
// ---------------------------------------------------------------------------------------------

/// A literal with the token it came from.
#[derive(Debug, Clone)]
struct Lit {
    value: LitValue,
    offset: usize,
    text: String,
}

#[derive(Debug, Clone, PartialEq)]
enum LitValue {
    Int(i64),
    Float(f64),
    Str(String),
    Bool(bool),
}

impl LitValue {
    fn describe(&self) -> &'static str {
        match self {
            LitValue::Int(_) => "an integer",
            LitValue::Float(_) => "a float",
            LitValue::Str(_) => "a string",
            LitValue::Bool(_) => "a boolean",
        }
    }
}

enum Operand {
    /// Index into the parser's columns, and the field token.
    Field(usize, Token),
    Lit(Lit),
}

struct Parser<'a> {
    tokens: Vec<Token>,
    pos: usize,
    depth: usize,
    schema: &'a CollectionSchema,
    columns: Vec<Column>,
}

fn err_at(token: &Token, message: impl Into<String>) -> FilterError {
    FilterError::new(message, token.offset, token.text.clone())
}

impl Parser<'_> {
    fn peek(&self) -> &Token {
        &self.tokens[self.pos]
    }

    fn bump(&mut self) -> Token {
        let token = self.tokens[self.pos].clone();
        if token.tok != Tok::End {
            self.pos += 1;
        }
        token
    }

    fn enter(&mut self) -> Result<(), FilterError> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(err_at(
                self.peek(),
                format!("expression nested more than {MAX_DEPTH} levels deep"),
            ));
        }
        Ok(())
    }

    fn parse_or(&mut self) -> Result<Node, FilterError> {
        let mut terms = vec![self.parse_and()?];
        while self.peek().tok == Tok::Or {
            self.bump();
            terms.push(self.parse_and()?);
        }
        Ok(if terms.len() == 1 {
            terms.remove(0)
        } else {
            Node::Or(terms)
        })
    }

    fn parse_and(&mut self) -> Result<Node, FilterError> {
        let mut terms = vec![self.parse_not()?];
        while self.peek().tok == Tok::And {
            self.bump();
            terms.push(self.parse_not()?);
        }
        Ok(if terms.len() == 1 {
            terms.remove(0)
        } else {
            Node::And(terms)
        })
    }

    fn parse_not(&mut self) -> Result<Node, FilterError> {
        if self.peek().tok == Tok::Not {
            self.bump();
            self.enter()?;
            let inner = self.parse_not()?;
            self.depth -= 1;
            return Ok(Node::Not(Box::new(inner)));
        }
        self.parse_primary()
    }

    fn parse_primary(&mut self) -> Result<Node, FilterError> {
        let token = self.peek().clone();
        match token.tok {
            Tok::LParen => {
                if let Some(arith) = self.parenthesized_arith()? {
                    return Ok(arith);
                }
                self.bump();
                self.enter()?;
                let inner = self.parse_or()?;
                self.depth -= 1;
                self.expect_tok(
                    Tok::RParen,
                    "')'",
                    &format!("to close the '(' at offset {}", token.offset),
                )?;
                Ok(inner)
            }
            Tok::Ident(ref name)
                if self.tokens.get(self.pos + 1).map(|t| &t.tok) == Some(&Tok::LParen) =>
            {
                let name = name.to_ascii_lowercase();
                self.parse_function(&name, &token)
            }
            Tok::Ident(ref name)
                if name.eq_ignore_ascii_case("exists")
                    && matches!(
                        self.tokens.get(self.pos + 1).map(|t| &t.tok),
                        Some(Tok::Ident(_))
                    ) =>
            {
                // `exists path`: the key is there and does not hold JSON null (as in Milvus,
                // where `exists k` is `k is not null`).
                self.bump();
                let column = self.json_operand(true)?;
                Ok(Node::Leaf {
                    column,
                    pred: Pred::IsNull { negated: true },
                })
            }
            Tok::Bool(b)
                if matches!(
                    self.tokens.get(self.pos + 1).map(|t| &t.tok),
                    Some(Tok::End | Tok::And | Tok::Or | Tok::RParen)
                ) =>
            {
                self.bump();
                Ok(Node::Const(b))
            }
            Tok::Ident(_)
            | Tok::Int(_)
            | Tok::Float(_)
            | Tok::Str(_)
            | Tok::Bool(_)
            | Tok::Null => self.parse_predicate(),
            Tok::End => Err(err_at(
                &token,
                "expected a condition (a comparison, 'in', 'is null', 'not' or '('), found end of input",
            )),
            _ => Err(err_at(
                &token,
                format!(
                    "expected a condition (a comparison, 'in', 'is null', 'not' or '('), found {}",
                    token.tok.describe()
                ),
            )),
        }
    }

    /// A JSON value named by a path (`meta["tags"]`, a dynamic key `tags`, a JSON field
    /// `meta`), read as JSON text; `exists`: a key, read as a value that is there (null when
    /// missing or JSON null).
    fn json_operand(&mut self, exists: bool) -> Result<usize, FilterError> {
        let token = self.bump();
        let Tok::Ident(name) = &token.tok else {
            return Err(err_at(
                &token,
                format!(
                    "expected a JSON field or key, found {}",
                    token.tok.describe()
                ),
            ));
        };
        let (field, path) = self.json_path(name)?;
        if exists && path.is_empty() {
            return Err(err_at(
                &token,
                format!(
                    "exists takes a key (field[\"key\"] or a dynamic key), not JSON field \
                     {field:?} itself: use '{field} is not null'"
                ),
            ));
        }
        let json = JsonKey {
            path,
            any: exists,
            raw: !exists,
        };
        self.add_json_column(&field, json, Kind::Varchar, &token)
    }

    /// A literal as a JSON value: a number, string or boolean, or a list of them in `[...]`.
    fn json_literal(&mut self) -> Result<serde_json::Value, FilterError> {
        let token = self.bump();
        Ok(match token.tok {
            Tok::Int(v) => serde_json::Value::from(v),
            Tok::Float(v) => serde_json::Number::from_f64(v)
                .map(serde_json::Value::Number)
                .ok_or_else(|| err_at(&token, "a number that JSON cannot hold"))?,
            Tok::Str(v) => serde_json::Value::String(v),
            Tok::Bool(v) => serde_json::Value::Bool(v),
            Tok::LBracket => {
                let mut items = Vec::new();
                if self.peek().tok == Tok::RBracket {
                    self.bump();
                    return Ok(serde_json::Value::Array(items));
                }
                // Lists nest as deep as parentheses may.
                self.enter()?;
                loop {
                    if items.len() >= MAX_JSON_LIST {
                        return Err(err_at(
                            self.peek(),
                            format!("a list of at most {MAX_JSON_LIST} values"),
                        ));
                    }
                    items.push(self.json_literal()?);
                    let next = self.bump();
                    match next.tok {
                        Tok::Comma => continue,
                        Tok::RBracket => break,
                        _ => {
                            return Err(err_at(
                                &next,
                                format!(
                                    "expected ',' or ']' in a list, found {}",
                                    next.tok.describe()
                                ),
                            ));
                        }
                    }
                }
                self.depth -= 1;
                serde_json::Value::Array(items)
            }
            _ => {
                return Err(err_at(
                    &token,
                    format!("expected a literal, found {}", token.tok.describe()),
                ));
            }
        })
    }

    /// `name(...)`, its name (lowercase) at `token`: `json_contains(path, value)`,
    /// `json_contains_any(path, [values])`, `json_contains_all(path, [values])`, the same
    /// `array_*` ones, and `array_length(path) OP integer`.
    fn parse_function(&mut self, name: &str, token: &Token) -> Result<Node, FilterError> {
        const FUNCTIONS: [&str; 10] = [
            "json_contains",
            "json_contains_any",
            "json_contains_all",
            "array_contains",
            "array_contains_any",
            "array_contains_all",
            "array_length",
            "json_length",
            "text_match",
            "phrase_match",
        ];
        let unknown = || {
            err_at(
                token,
                format!("unknown function {name:?} ({})", FUNCTIONS.join(", ")),
            )
        };
        // Before its arguments, which only these functions' are.
        if !FUNCTIONS.contains(&name) {
            return Err(unknown());
        }
        self.bump(); // the name
        self.bump(); // (
        if name == "text_match" || name == "phrase_match" {
            return self.parse_text_match(name);
        }
        let column = self.json_operand(false)?;
        let expect = |p: &mut Self, tok: Tok, what: &str| -> Result<(), FilterError> {
            let t = p.bump();
            if t.tok == tok {
                Ok(())
            } else {
                Err(err_at(
                    &t,
                    format!("expected {what} in {name}(...), found {}", t.tok.describe()),
                ))
            }
        };
        let pred = match name {
            "json_contains" | "array_contains" => {
                expect(self, Tok::Comma, "','")?;
                let value = self.json_literal()?;
                expect(self, Tok::RParen, "')'")?;
                Pred::JsonContains {
                    values: vec![value],
                    all: false,
                }
            }
            "json_contains_any" | "array_contains_any" | "json_contains_all"
            | "array_contains_all" => {
                expect(self, Tok::Comma, "','")?;
                let list_token = self.peek().clone();
                let serde_json::Value::Array(values) = self.json_literal()? else {
                    return Err(err_at(
                        &list_token,
                        format!("{name} takes a list of values: {name}(field, [v1, v2])"),
                    ));
                };
                expect(self, Tok::RParen, "')'")?;
                Pred::JsonContains {
                    values,
                    all: name.ends_with("_all"),
                }
            }
            "array_length" | "json_length" => {
                expect(self, Tok::RParen, "')'")?;
                let (op, _) = self.expect_op(&format!("{name}(...)"))?;
                let n = self.bump();
                let Tok::Int(n) = n.tok else {
                    return Err(err_at(
                        &n,
                        format!(
                            "{name}(...) compares with an integer, not {}",
                            n.tok.describe()
                        ),
                    ));
                };
                Pred::ArrayLength(op, n)
            }
            _ => return Err(unknown()),
        };
        Ok(Node::Leaf { column, pred })
    }

    /// `text_match(` already read: `field, 'terms' [, minimum_should_match=n])`; or
    /// `phrase_match(`: `field, 'phrase' [, slop]`.
    fn parse_text_match(&mut self, function: &str) -> Result<Node, FilterError> {
        let token = self.bump();
        let Tok::Ident(name) = &token.tok else {
            return Err(err_at(
                &token,
                format!(
                    "{function}(field, 'terms') takes a field first, not {}",
                    token.tok.describe()
                ),
            ));
        };
        let field = self.schema.fields.iter().find(|f| &f.name == name).cloned();
        let Some(field) = field.filter(|f| f.enable_match) else {
            return Err(err_at(
                &token,
                format!("{function} needs a VARCHAR field with enable_match; {name:?} is not one"),
            ));
        };
        let analyzer = sluice_types::text::Analyzer::from_params(&field.analyzer_params)
            .map_err(|e| err_at(&token, e.to_string()))?;
        let column = self.resolve_field(name, &token)?;
        self.expect_tok(Tok::Comma, "','", &format!("after {function}'s field"))?;
        let text = self.bump();
        let Tok::Str(text) = text.tok else {
            return Err(err_at(
                &text,
                format!(
                    "{function}(field, 'terms') takes a string, not {}",
                    text.tok.describe()
                ),
            ));
        };
        if function == "phrase_match" {
            let mut slop = 0;
            if self.peek().tok == Tok::Comma {
                self.bump();
                let n = self.bump();
                slop = match n.tok {
                    Tok::Int(n) if (0..=MAX_SLOP).contains(&n) => n as usize,
                    _ => {
                        return Err(err_at(
                            &n,
                            format!(
                                "phrase_match's third argument is the slop, an integer 0 to \
                                 {MAX_SLOP}"
                            ),
                        ));
                    }
                };
            }
            self.expect_tok(Tok::RParen, "')'", "to close phrase_match(...)")?;
            let terms: Vec<(String, usize)> = analyzer
                .tokens(&text)
                .into_iter()
                .map(|t| (t.text, t.position))
                .collect();
            if terms.len() > MAX_PHRASE_TERMS {
                return Err(err_at(
                    &token,
                    format!(
                        "a phrase of {} terms: phrase_match takes at most {MAX_PHRASE_TERMS}",
                        terms.len()
                    ),
                ));
            }
            return Ok(Node::Leaf {
                column,
                pred: Pred::PhraseMatch {
                    analyzer: Arc::new(analyzer),
                    terms,
                    slop,
                },
            });
        }
        let mut min = 1;
        if self.peek().tok == Tok::Comma {
            self.bump();
            let key = self.bump();
            let n = match (&key.tok, self.bump().tok, self.bump().tok) {
                (Tok::Ident(k), Tok::Op(CmpOp::Eq), Tok::Int(n))
                    if k.eq_ignore_ascii_case("minimum_should_match") && n >= 1 =>
                {
                    n
                }
                _ => {
                    return Err(err_at(
                        &key,
                        "text_match's third argument is minimum_should_match=n, n at least 1",
                    ));
                }
            };
            min = usize::try_from(n).unwrap_or(usize::MAX);
        }
        self.expect_tok(Tok::RParen, "')'", "to close text_match(...)")?;
        let mut terms = analyzer.terms(&text);
        terms.sort_unstable();
        terms.dedup();
        Ok(Node::Leaf {
            column,
            pred: Pred::TextMatch {
                analyzer: Arc::new(analyzer),
                terms,
                min,
            },
        })
    }

    /// A field (or a JSON field's key) or a literal.
    fn operand(&mut self) -> Result<Operand, FilterError> {
        let start = self.pos;
        let token = self.bump();
        let value = match &token.tok {
            Tok::Ident(name)
                if self.peek().tok == Tok::LBracket
                    || (!self.schema.fields.iter().any(|f| &f.name == name)
                        && sluice_types::schema::dynamic_field(self.schema).is_some()) =>
            {
                let (field, path) = self.json_path(name)?;
                let column = self.json_column(&field, path, start, &token)?;
                return Ok(Operand::Field(column, token));
            }
            Tok::Ident(name)
                if self.peek().tok == Tok::Is
                    && self.schema.fields.iter().any(|f| {
                        &f.name == name && DataType::try_from(f.data_type) == Ok(DataType::Json)
                    }) =>
            {
                // `meta is [not] null`: the JSON field itself.
                let column = self.json_column(name, Vec::new(), start, &token)?;
                return Ok(Operand::Field(column, token));
            }
            Tok::Ident(name) => {
                let column = self.resolve_field(name, &token)?;
                return Ok(Operand::Field(column, token));
            }
            Tok::Int(v) => LitValue::Int(*v),
            Tok::Float(v) => LitValue::Float(*v),
            Tok::Str(s) => LitValue::Str(s.clone()),
            Tok::Bool(b) => LitValue::Bool(*b),
            Tok::Null => {
                return Err(err_at(
                    &token,
                    "null is not a value to compare with: use 'field is null' or 'field is not null'",
                ));
            }
            other => {
                return Err(err_at(
                    &token,
                    format!("expected a field or a literal, found {}", other.describe()),
                ));
            }
        };
        Ok(Operand::Lit(Lit {
            value,
            offset: token.offset,
            text: token.text,
        }))
    }

    /// The JSON field and the path into it that `name` (just read) and the `["key"]` / `[index]`
    /// steps after it name: a field of the schema, or else a key of the dynamic field.
    fn json_path(&mut self, name: &str) -> Result<(String, Vec<Step>), FilterError> {
        // Just read: the token naming the field.
        let at = self.tokens[self.pos.saturating_sub(1)].offset;
        let mut path = Vec::new();
        while self.peek().tok == Tok::LBracket {
            path.push(self.json_key()?);
        }
        if name == DYNAMIC_META {
            let Some(d) = sluice_types::schema::dynamic_field(self.schema) else {
                return Err(FilterError::new(
                    "$meta names the dynamic field, and the collection has none",
                    at,
                    DYNAMIC_META,
                ));
            };
            return Ok((d.name.clone(), path));
        }
        let dynamic = sluice_types::schema::dynamic_field(self.schema)
            .filter(|_| !self.schema.fields.iter().any(|f| f.name == name));
        Ok(match dynamic {
            Some(d) => {
                path.insert(0, Step::Key(name.to_owned()));
                (d.name.clone(), path)
            }
            None => (name.to_owned(), path),
        })
    }

    /// `["key"]` or `[index]` after a JSON field's name.
    fn json_key(&mut self) -> Result<Step, FilterError> {
        self.bump();
        let key = self.bump();
        let step = match &key.tok {
            Tok::Str(k) => Step::Key(k.clone()),
            Tok::Int(i) if *i >= 0 => Step::Index(*i as usize),
            _ => {
                return Err(err_at(
                    &key,
                    format!(
                        "expected a string key or an array index after '[', found {}",
                        key.tok.describe()
                    ),
                ));
            }
        };
        let close = self.bump();
        if close.tok != Tok::RBracket {
            return Err(err_at(
                &close,
                format!(
                    "expected ']' after a JSON key, found {}",
                    close.tok.describe()
                ),
            ));
        }
        Ok(step)
    }

    /// The column for the value at `path` in JSON field `name` (its first token at `start`),
    /// read as the kind the literal it is compared with asks for.
    fn json_column(
        &mut self,
        name: &str,
        path: Vec<Step>,
        start: usize,
        token: &Token,
    ) -> Result<usize, FilterError> {
        let lit_kind = |t: Option<&Token>| match t.map(|t| &t.tok) {
            Some(Tok::Int(_) | Tok::Float(_)) => Some(Kind::Double),
            Some(Tok::Str(_)) => Some(Kind::Varchar),
            Some(Tok::Bool(_)) => Some(Kind::Bool),
            _ => None,
        };
        let at = |i: usize| self.tokens.get(i);
        let next = self.pos;
        let before = start
            .checked_sub(2)
            .and_then(|i| matches!(at(i + 1).map(|t| &t.tok), Some(Tok::Op(_))).then(|| at(i))?);
        let (kind, any) = match at(next).map(|t| &t.tok) {
            Some(Tok::Op(_)) => (lit_kind(at(next + 1)), false),
            Some(Tok::Arith(_)) => (Some(Kind::Double), false),
            Some(Tok::In) => (lit_kind(at(next + 2)), false),
            Some(Tok::Not) => (lit_kind(at(next + 3)), false),
            Some(Tok::Is) => (Some(Kind::Varchar), true),
            Some(Tok::Like) => (Some(Kind::Varchar), false),
            _ => (lit_kind(before), false),
        };
        let kind = kind.unwrap_or(Kind::Varchar);
        self.add_json_column(
            name,
            JsonKey {
                path,
                any,
                raw: false,
            },
            kind,
            token,
        )
    }

    /// The column for `json` in JSON field `name` (checked to be one) read as `kind`.
    fn add_json_column(
        &mut self,
        name: &str,
        json: JsonKey,
        kind: Kind,
        token: &Token,
    ) -> Result<usize, FilterError> {
        let Some(field) = self.schema.fields.iter().find(|f| f.name == name) else {
            return Err(err_at(token, format!("unknown field {name:?}")));
        };
        if DataType::try_from(field.data_type) != Ok(DataType::Json) {
            return Err(err_at(
                token,
                format!("field {name:?} is not JSON: it has no keys to filter on"),
            ));
        }
        let json = Some(json);
        if let Some(i) = self
            .columns
            .iter()
            .position(|c| c.name == name && c.kind == kind && c.json == json)
        {
            return Ok(i);
        }
        self.columns.push(Column {
            name: name.to_string(),
            kind,
            nullable: true,
            offset: token.offset,
            json,
        });
        Ok(self.columns.len() - 1)
    }

    /// The index of field `name` in `self.columns`, adding it on first use.
    fn resolve_field(&mut self, name: &str, token: &Token) -> Result<usize, FilterError> {
        if let Some(i) = self
            .columns
            .iter()
            .position(|c| c.name == name && c.json.is_none())
        {
            return Ok(i);
        }
        let Some(field) = self.schema.fields.iter().find(|f| f.name == name) else {
            let hint = self
                .schema
                .fields
                .iter()
                .find(|f| f.name.eq_ignore_ascii_case(name))
                .map(|f| {
                    format!(
                        " (did you mean {:?}? field names are case-sensitive)",
                        f.name
                    )
                })
                .unwrap_or_default();
            return Err(err_at(token, format!("unknown field {name:?}{hint}")));
        };
        let kind = match DataType::try_from(field.data_type) {
            Ok(DataType::Bool) => Kind::Bool,
            Ok(DataType::Int32) => Kind::Int32,
            Ok(DataType::Int64) => Kind::Int64,
            Ok(DataType::Float) => Kind::Float,
            Ok(DataType::Double) => Kind::Double,
            Ok(DataType::Varchar) => Kind::Varchar,
            Ok(DataType::Json) => {
                return Err(err_at(
                    token,
                    format!(
                        "cannot compare JSON field {name:?} itself: filter on a key, \
                         {name}[\"key\"]"
                    ),
                ));
            }
            Ok(t @ (DataType::FloatVector | DataType::SparseFloatVector)) => {
                return Err(err_at(
                    token,
                    format!(
                        "cannot filter on {} field {name:?}",
                        t.as_str_name().trim_start_matches("DATA_TYPE_")
                    ),
                ));
            }
            Ok(DataType::Unspecified) | Err(_) => {
                return Err(err_at(
                    token,
                    format!(
                        "field {name:?} has no known data type ({})",
                        field.data_type
                    ),
                ));
            }
        };
        self.columns.push(Column {
            name: name.to_string(),
            kind,
            nullable: field.nullable,
            offset: token.offset,
            json: None,
        });
        Ok(self.columns.len() - 1)
    }

    fn expect_op(&mut self, after: &str) -> Result<(CmpOp, Token), FilterError> {
        let token = self.peek().clone();
        match token.tok {
            Tok::Op(op) => {
                self.bump();
                Ok((op, token))
            }
            ref other => Err(err_at(
                &token,
                format!(
                    "expected a comparison operator (== != < <= > >=) after {after}, found {}",
                    other.describe()
                ),
            )),
        }
    }

    fn parse_predicate(&mut self) -> Result<Node, FilterError> {
        match self.operand()? {
            Operand::Field(column, field_token) => self.parse_field_predicate(column, &field_token),
            Operand::Lit(lit) => {
                let (op, op_token) = self.expect_op("a literal")?;
                let (column, field_token) = match self.operand()? {
                    Operand::Field(column, token) => (column, token),
                    Operand::Lit(other) => {
                        return Err(FilterError::new(
                            "a comparison needs a field: both sides are literals",
                            other.offset,
                            other.text,
                        ));
                    }
                };
                let first = self.comparison(column, op.flip(), &op_token, &lit)?;
                let Tok::Op(op2) = self.peek().tok else {
                    return Ok(first);
                };
                // A range: `lit < field < lit` or `lit > field > lit`.
                let op2_token = self.bump();
                let ascending = |o: CmpOp| matches!(o, CmpOp::Lt | CmpOp::Le);
                let descending = |o: CmpOp| matches!(o, CmpOp::Gt | CmpOp::Ge);
                if !((ascending(op) && ascending(op2)) || (descending(op) && descending(op2))) {
                    return Err(err_at(
                        &op2_token,
                        format!(
                            "a range must be 'low < {0} < high' or 'high > {0} > low' \
                             (with < <= or > >=), not '{1} {0} {2}'",
                            field_token.text,
                            op.symbol(),
                            op2.symbol()
                        ),
                    ));
                }
                let hi = match self.operand()? {
                    Operand::Lit(hi) => hi,
                    Operand::Field(_, token) => {
                        return Err(err_at(
                            &token,
                            "comparing two fields is not supported: a range's bounds are literals",
                        ));
                    }
                };
                let second = self.comparison(column, op2, &op2_token, &hi)?;
                if let Tok::Op(_) = self.peek().tok {
                    return Err(err_at(
                        self.peek(),
                        "a range has two bounds: 'low < field < high'",
                    ));
                }
                Ok(Node::And(vec![first, second]))
            }
        }
    }

    fn parse_field_predicate(
        &mut self,
        column: usize,
        field_token: &Token,
    ) -> Result<Node, FilterError> {
        let token = self.peek().clone();
        match token.tok {
            Tok::Op(op) => {
                self.bump();
                let lit = match self.operand()? {
                    Operand::Lit(lit) => lit,
                    Operand::Field(_, other) => {
                        return Err(err_at(
                            &other,
                            format!(
                                "comparing two fields ({} {} {}) is not supported: compare a \
                                 field with a literal",
                                field_token.text,
                                op.symbol(),
                                other.text
                            ),
                        ));
                    }
                };
                let node = self.comparison(column, op, &token, &lit)?;
                if let Tok::Op(_) = self.peek().tok {
                    return Err(err_at(
                        self.peek(),
                        "comparisons do not chain this way: write a range as \
                         'low < field < high', or join comparisons with 'and'",
                    ));
                }
                Ok(node)
            }
            Tok::Arith(op) => {
                self.bump();
                self.parse_arith(column, op, field_token, false)
            }
            Tok::In => {
                self.bump();
                self.parse_in(column)
            }
            Tok::Like => {
                self.bump();
                self.parse_like(column, &token)
            }
            Tok::Not => {
                self.bump();
                self.expect_tok(Tok::In, "'in'", "after 'not'")?;
                Ok(Node::Not(Box::new(self.parse_in(column)?)))
            }
            Tok::Is => {
                self.bump();
                let negated = self.peek().tok == Tok::Not;
                if negated {
                    self.bump();
                }
                let after = if negated {
                    "after 'is not'"
                } else {
                    "after 'is'"
                };
                self.expect_tok(Tok::Null, "'null'", after)?;
                Ok(Node::Leaf {
                    column,
                    pred: Pred::IsNull { negated },
                })
            }
            ref other => Err(err_at(
                &token,
                format!(
                    "expected a comparison operator (== != < <= > >=), 'in', 'not in', \
                     'like' or 'is [not] null' after field {:?}, found {}",
                    field_token.text,
                    other.describe()
                ),
            )),
        }
    }

    /// Reads the next token, which must be `want` (`what`, as an error names it) expected
    /// `context` (e.g. "after 'not'").
    fn expect_tok(&mut self, want: Tok, what: &str, context: &str) -> Result<(), FilterError> {
        let next = self.peek();
        if next.tok != want {
            return Err(err_at(
                next,
                format!("expected {what} {context}, found {}", next.tok.describe()),
            ));
        }
        self.bump();
        Ok(())
    }

    /// The token `n` after the next one's (0: the next one).
    fn ahead(&self, n: usize) -> Option<&Tok> {
        self.tokens.get(self.pos + n).map(|t| &t.tok)
    }

    /// `(field op number) cmp number`, as Milvus takes it too; `None` (nothing read) when the
    /// parenthesis opens anything else.
    fn parenthesized_arith(&mut self) -> Result<Option<Node>, FilterError> {
        if !matches!(self.ahead(1), Some(Tok::Ident(_))) || self.ahead(2) == Some(&Tok::LParen) {
            return Ok(None);
        }
        let (pos, columns) = (self.pos, self.columns.len());
        self.bump();
        // `( field op number )`, then the comparison.
        let found = match self.operand() {
            Ok(Operand::Field(column, field_token)) => match self.peek().tok {
                Tok::Arith(op)
                    if matches!(self.ahead(1), Some(Tok::Int(_) | Tok::Float(_)))
                        && self.ahead(2) == Some(&Tok::RParen) =>
                {
                    Some((column, op, field_token))
                }
                _ => None,
            },
            _ => None,
        };
        let Some((column, op, field_token)) = found else {
            // Anything else (`(age + 1 > 2)` too): read again as a parenthesized condition.
            self.pos = pos;
            self.columns.truncate(columns);
            return Ok(None);
        };
        self.bump();
        self.parse_arith(column, op, &field_token, true).map(Some)
    }

    /// `field op number cmp number`, the field and `op` read; `parenthesized`: `(field op
    /// number)`, its `(` read.
    fn parse_arith(
        &mut self,
        column: usize,
        op: ArithOp,
        field_token: &Token,
        parenthesized: bool,
    ) -> Result<Node, FilterError> {
        let number = |p: &mut Self, what: &str| -> Result<Lit, FilterError> {
            match p.operand()? {
                Operand::Lit(lit) if matches!(lit.value, LitValue::Int(_) | LitValue::Float(_)) => {
                    Ok(lit)
                }
                Operand::Lit(lit) => Err(FilterError::new(
                    format!("{what} must be a number, not {}", lit.value.describe()),
                    lit.offset,
                    lit.text,
                )),
                Operand::Field(_, token) => Err(err_at(
                    &token,
                    format!("{what} must be a number: arithmetic between fields is not supported"),
                )),
            }
        };
        let by = number(self, &format!("the right side of '{}'", op.symbol()))?;
        if parenthesized {
            self.expect_tok(
                Tok::RParen,
                "')'",
                &format!("after '{} {} {}'", field_token.text, op.symbol(), by.text),
            )?;
        }
        let (cmp, _) = self.expect_op(&format!(
            "'{} {} {}'",
            field_token.text,
            op.symbol(),
            by.text
        ))?;
        let against = number(self, "the value compared with")?;
        let col = &self.columns[column];
        let numeric = matches!(
            col.kind,
            Kind::Int32 | Kind::Int64 | Kind::Float | Kind::Double
        );
        if !numeric {
            return Err(err_at(
                field_token,
                format!(
                    "arithmetic needs a numeric field; {:?} is {}",
                    col.name,
                    col.kind.name()
                ),
            ));
        }
        let zero = match by.value {
            LitValue::Int(0) => true,
            LitValue::Float(f) => f == 0.0,
            _ => false,
        };
        if zero && matches!(op, ArithOp::Div | ArithOp::Mod) {
            return Err(FilterError::new(
                format!("'{}' by zero", op.symbol()),
                by.offset,
                by.text,
            ));
        }
        if op == ArithOp::Mod
            && !(matches!(col.kind, Kind::Int32 | Kind::Int64)
                && matches!(by.value, LitValue::Int(_)))
        {
            return Err(FilterError::new(
                "'%' takes an integer field and an integer",
                by.offset,
                by.text,
            ));
        }
        if let Tok::Op(_) | Tok::Arith(_) = self.peek().tok {
            return Err(err_at(
                self.peek(),
                "one arithmetic operation and one comparison: 'field * 2 > 10'",
            ));
        }
        Ok(Node::Leaf {
            column,
            pred: Pred::Arith {
                op,
                by: by.value,
                cmp,
                against: against.value,
            },
        })
    }

    fn mismatch(&self, column: usize, lit: &Lit) -> FilterError {
        let col = &self.columns[column];
        let (name, kind, value) = (&col.name, col.kind.name(), lit.value.describe());
        let message = if col.json.is_some() {
            format!(
                "a key of JSON field {name:?} is read as {kind} here (the first literal's type) \
                 and cannot be compared with {value} ({}): write literals of one type",
                lit.text
            )
        } else {
            format!(
                "field {name:?} is {kind} and cannot be compared with {value} ({})",
                lit.text
            )
        };
        FilterError::new(message, lit.offset, lit.text.clone())
    }

    /// `field op lit`, type-checked.
    fn comparison(
        &mut self,
        column: usize,
        op: CmpOp,
        op_token: &Token,
        lit: &Lit,
    ) -> Result<Node, FilterError> {
        let kind = self.columns[column].kind;
        let pred = match (kind, &lit.value) {
            (Kind::Int32 | Kind::Int64, LitValue::Int(v)) => {
                int_pred(kind, op, IntBound::Exact(*v))
            }
            (Kind::Int32 | Kind::Int64, LitValue::Float(v)) => {
                int_pred(kind, op, float_to_int_bound(op, *v))
            }
            (Kind::Float, LitValue::Int(v)) => Pred::F32(op, *v as f32),
            (Kind::Float, LitValue::Float(v)) => Pred::F32(op, *v as f32),
            (Kind::Double, LitValue::Int(v)) => Pred::F64(op, *v as f64),
            (Kind::Double, LitValue::Float(v)) => Pred::F64(op, *v),
            (Kind::Varchar, LitValue::Str(s)) => Pred::Str(op, s.clone()),
            (Kind::Bool, LitValue::Bool(b)) => match op {
                CmpOp::Eq => Pred::Bool(*b),
                CmpOp::Ne => Pred::Bool(!*b),
                _ => {
                    return Err(err_at(
                        op_token,
                        format!(
                            "BOOL field {:?} supports only == and !=, not {}",
                            self.columns[column].name, op_token.text
                        ),
                    ));
                }
            },
            _ => return Err(self.mismatch(column, lit)),
        };
        let leaf = Node::Leaf { column, pred };
        Ok(match op {
            CmpOp::Eq | CmpOp::Ne => self.other_types(leaf, column, op == CmpOp::Ne),
            _ => leaf,
        })
    }

    /// `test` (an equality test of `column`) answering `answer` for a JSON value of another
    /// type than the one `column` reads (see [`Node::OtherType`]); `test` itself for a column
    /// that is not a JSON key.
    fn other_types(&mut self, test: Node, column: usize, answer: bool) -> Node {
        let col = &self.columns[column];
        let Some(json) = col.json.as_ref().filter(|j| !j.any && !j.raw) else {
            return test;
        };
        let present = Column {
            name: col.name.clone(),
            kind: Kind::Varchar,
            nullable: true,
            offset: col.offset,
            json: Some(JsonKey {
                path: json.path.clone(),
                any: true,
                raw: false,
            }),
        };
        let present = match self.columns.iter().position(|c| {
            c.name == present.name && c.kind == present.kind && c.json == present.json
        }) {
            Some(i) => i,
            None => {
                self.columns.push(present);
                self.columns.len() - 1
            }
        };
        Node::OtherType {
            test: Box::new(test),
            present,
            answer,
        }
    }

    /// `field like "pattern"`, after `like`.
    fn parse_like(&mut self, column: usize, like: &Token) -> Result<Node, FilterError> {
        let token = self.peek().clone();
        let Tok::Str(pattern) = &token.tok else {
            return Err(err_at(
                &token,
                format!(
                    "expected a string pattern after 'like', found {}",
                    token.tok.describe()
                ),
            ));
        };
        let col = &self.columns[column];
        if col.kind != Kind::Varchar {
            return Err(err_at(
                like,
                format!(
                    "field {:?} is {}: 'like' matches VARCHAR values only",
                    col.name,
                    col.kind.name()
                ),
            ));
        }
        let regex = like_regex(pattern).map_err(|e| err_at(&token, e))?;
        self.bump();
        Ok(Node::Leaf {
            column,
            pred: Pred::Like(regex),
        })
    }

    /// `[lit, ...]` after `in`, type-checked.
    fn parse_in(&mut self, column: usize) -> Result<Node, FilterError> {
        let open = self.peek();
        if open.tok != Tok::LBracket {
            return Err(err_at(
                open,
                format!(
                    "expected '[' to start the list after 'in', found {}",
                    open.tok.describe()
                ),
            ));
        }
        self.bump();
        let mut lits = Vec::new();
        if self.peek().tok == Tok::RBracket {
            self.bump();
        } else {
            loop {
                match self.operand()? {
                    Operand::Lit(lit) => lits.push(lit),
                    Operand::Field(_, token) => {
                        return Err(err_at(&token, "an 'in' list holds literals, not fields"));
                    }
                }
                let sep = self.bump();
                match sep.tok {
                    Tok::Comma => {}
                    Tok::RBracket => break,
                    ref other => {
                        return Err(err_at(
                            &sep,
                            format!(
                                "expected ',' or ']' in the 'in' list, found {}",
                                other.describe()
                            ),
                        ));
                    }
                }
            }
        }
        let kind = self.columns[column].kind;
        let pred = match kind {
            Kind::Int32 | Kind::Int64 => {
                let (lo, hi) = kind.int_range();
                let mut values = Vec::new();
                for lit in &lits {
                    let v = match lit.value {
                        LitValue::Int(v) => Some(v),
                        LitValue::Float(f) => match float_to_int_bound(CmpOp::Eq, f) {
                            IntBound::Exact(v) => Some(v),
                            _ => None,
                        },
                        _ => return Err(self.mismatch(column, lit)),
                    };
                    values.extend(v.filter(|v| (lo..=hi).contains(v)));
                }
                values.sort_unstable();
                values.dedup();
                Pred::InInt(values)
            }
            Kind::Float => {
                let mut values = Vec::new();
                for lit in &lits {
                    let v = match lit.value {
                        LitValue::Int(v) => v as f32,
                        LitValue::Float(f) => f as f32,
                        _ => return Err(self.mismatch(column, lit)),
                    };
                    if !v.is_nan() {
                        values.push(v + 0.0); // -0.0 + 0.0 == +0.0
                    }
                }
                values.sort_unstable_by(f32::total_cmp);
                values.dedup_by(|a, b| a.total_cmp(b).is_eq());
                Pred::InF32(values)
            }
            Kind::Double => {
                let mut values = Vec::new();
                for lit in &lits {
                    let v = match lit.value {
                        LitValue::Int(v) => v as f64,
                        LitValue::Float(f) => f,
                        _ => return Err(self.mismatch(column, lit)),
                    };
                    if !v.is_nan() {
                        values.push(v + 0.0);
                    }
                }
                values.sort_unstable_by(f64::total_cmp);
                values.dedup_by(|a, b| a.total_cmp(b).is_eq());
                Pred::InF64(values)
            }
            Kind::Varchar => {
                let mut values = HashSet::with_capacity(lits.len());
                for lit in &lits {
                    match &lit.value {
                        LitValue::Str(s) => values.insert(s.clone()),
                        _ => return Err(self.mismatch(column, lit)),
                    };
                }
                Pred::InStr(values)
            }
            Kind::Bool => {
                let (mut has_true, mut has_false) = (false, false);
                for lit in &lits {
                    match lit.value {
                        LitValue::Bool(true) => has_true = true,
                        LitValue::Bool(false) => has_false = true,
                        _ => return Err(self.mismatch(column, lit)),
                    }
                }
                Pred::InBool {
                    has_true,
                    has_false,
                }
            }
        };
        Ok(self.other_types(Node::Leaf { column, pred }, column, false))
    }
}

/// An integer field compared with a literal, in integer terms.
#[derive(Debug, Clone, Copy, PartialEq)]
enum IntBound {
    /// Compare with this integer.
    Exact(i64),
    /// The literal is below every INT64.
    Below,
    /// The literal is above every INT64.
    Above,
    /// Every non-null value compares this way.
    Always(bool),
}

/// Turns `x op v` for an integer `x` and a float `v` into an integer comparison with the same
/// answer for every integer `x`: `x < 2.5` is `x < 3`, `x <= 2.5` is `x <= 2`, `x == 2.5` is
/// never true.
fn float_to_int_bound(op: CmpOp, v: f64) -> IntBound {
    if v.is_nan() {
        return IntBound::Always(op == CmpOp::Ne);
    }
    let rounded = match op {
        CmpOp::Eq | CmpOp::Ne => {
            if v.fract() != 0.0 {
                return IntBound::Always(op == CmpOp::Ne);
            }
            v
        }
        CmpOp::Lt | CmpOp::Ge => v.ceil(),
        CmpOp::Le | CmpOp::Gt => v.floor(),
    };
    // i64 covers [-2^63, 2^63); `rounded` is a whole number (or infinite) here.
    const TWO_63: f64 = 9_223_372_036_854_775_808.0;
    if rounded >= TWO_63 {
        IntBound::Above
    } else if rounded < -TWO_63 {
        IntBound::Below
    } else {
        IntBound::Exact(rounded as i64)
    }
}

/// The predicate for an integer field of `kind` compared with `bound`.
fn int_pred(kind: Kind, op: CmpOp, bound: IntBound) -> Pred {
    let (lo, hi) = kind.int_range();
    let below = |op: CmpOp| Pred::Const(matches!(op, CmpOp::Ne | CmpOp::Gt | CmpOp::Ge));
    let above = |op: CmpOp| Pred::Const(matches!(op, CmpOp::Ne | CmpOp::Lt | CmpOp::Le));
    match bound {
        IntBound::Always(b) => Pred::Const(b),
        IntBound::Below => below(op),
        IntBound::Above => above(op),
        IntBound::Exact(v) if v < lo => below(op),
        IntBound::Exact(v) if v > hi => above(op),
        IntBound::Exact(v) => Pred::Int(op, v),
    }
}

// ---------------------------------------------------------------------------------------------
// Evaluation
// ---------------------------------------------------------------------------------------------

/// An Arrow kernel failure not tied to one field: reported against the whole expression.
fn arrow_err(text: &str) -> impl Fn(ArrowError) -> FilterError + '_ {
    move |e| FilterError::new(format!("evaluation failed: {e}"), 0, text)
}

/// `f(value)` for each slot of `array`, null where `array` is null.
fn map_primitive<T: ArrowPrimitiveType>(
    array: &PrimitiveArray<T>,
    f: impl Fn(T::Native) -> bool,
) -> BooleanArray {
    let values = array.values();
    let bits = BooleanBuffer::collect_bool(array.len(), |i| f(values[i]));
    BooleanArray::new(bits, array.nulls().cloned())
}

/// IEEE 754 comparison of every value with `v` (NaN matches only `!=`; `-0.0 == 0.0`).
fn cmp_float<T>(array: &PrimitiveArray<T>, op: CmpOp, v: T::Native) -> BooleanArray
where
    T: ArrowPrimitiveType,
    T::Native: PartialOrd,
{
    match op {
        CmpOp::Eq => map_primitive(array, |x| x == v),
        CmpOp::Ne => map_primitive(array, |x| x != v),
        CmpOp::Lt => map_primitive(array, |x| x < v),
        CmpOp::Le => map_primitive(array, |x| x <= v),
        CmpOp::Gt => map_primitive(array, |x| x > v),
        CmpOp::Ge => map_primitive(array, |x| x >= v),
    }
}

/// An Arrow comparison kernel of `array` with the one-element `scalar`.
fn cmp_kernel(array: &ArrayRef, op: CmpOp, scalar: ArrayRef) -> Result<BooleanArray, ArrowError> {
    use arrow_ord::cmp;
    let scalar = Scalar::new(scalar);
    match op {
        CmpOp::Eq => cmp::eq(array, &scalar),
        CmpOp::Ne => cmp::neq(array, &scalar),
        CmpOp::Lt => cmp::lt(array, &scalar),
        CmpOp::Le => cmp::lt_eq(array, &scalar),
        CmpOp::Gt => cmp::gt(array, &scalar),
        CmpOp::Ge => cmp::gt_eq(array, &scalar),
    }
}

/// Whether `values` (sorted by total order, no NaN, no -0.0) holds `x` (with -0.0 made +0.0):
/// IEEE equality, as NaN is in no list.
fn contains_float<F: Copy + PartialEq>(
    values: &[F],
    x: F,
    cmp: impl Fn(&F, &F) -> std::cmp::Ordering,
) -> bool {
    if values.len() <= 8 {
        values.contains(&x)
    } else {
        values.binary_search_by(|v| cmp(v, &x)).is_ok()
    }
}

/// A `like` pattern as an anchored regular expression: `%` any run of characters (newlines
/// too), `_` any one character, a backslash makes the next character itself.
fn like_regex(pattern: &str) -> Result<regex::Regex, String> {
    let mut re = String::with_capacity(pattern.len() + 8);
    re.push_str("^(?s:");
    let mut chars = pattern.chars();
    while let Some(c) = chars.next() {
        match c {
            '%' => re.push_str(".*"),
            '_' => re.push('.'),
            '\\' => match chars.next() {
                Some(c) => re.push_str(&regex::escape(&c.to_string())),
                None => return Err("a 'like' pattern cannot end with a lone backslash".into()),
            },
            c => re.push_str(&regex::escape(&c.to_string())),
        }
    }
    re.push_str(")$");
    regex::RegexBuilder::new(&re)
        .size_limit(1 << 20)
        .build()
        .map_err(|e| format!("'like' pattern {pattern:?}: {e}"))
}

impl Pred {
    fn eval(&self, array: &ArrayRef) -> Result<BooleanArray, ArrowError> {
        let len = array.len();
        Ok(match self {
            Pred::IsNull { negated: false } => is_null(array)?,
            Pred::IsNull { negated: true } => is_not_null(array)?,
            Pred::Const(b) => {
                let bits = if *b {
                    BooleanBuffer::new_set(len)
                } else {
                    BooleanBuffer::new_unset(len)
                };
                BooleanArray::new(bits, array.nulls().cloned())
            }
            Pred::Int(op, v) => match array.data_type() {
                ArrowType::Int32 => {
                    // In range: checked when parsed.
                    let v = i32::try_from(*v).map_err(|e| ArrowError::CastError(e.to_string()))?;
                    cmp_kernel(array, *op, Arc::new(Int32Array::from(vec![v])))?
                }
                _ => cmp_kernel(array, *op, Arc::new(Int64Array::from(vec![*v])))?,
            },
            Pred::F32(op, v) => cmp_float(array.as_primitive::<Float32Type>(), *op, *v),
            Pred::F64(op, v) => cmp_float(array.as_primitive::<Float64Type>(), *op, *v),
            Pred::Str(op, v) => {
                cmp_kernel(array, *op, Arc::new(StringArray::from(vec![v.as_str()])))?
            }
            Pred::Like(re) => array
                .as_string::<i32>()
                .iter()
                .map(|v| v.map(|v| re.is_match(v)))
                .collect(),
            Pred::Bool(true) => array.as_boolean().clone(),
            Pred::Bool(false) => not(array.as_boolean())?,
            Pred::InInt(values) => {
                let has = |x: i64| {
                    if values.len() <= 8 {
                        values.contains(&x)
                    } else {
                        values.binary_search(&x).is_ok()
                    }
                };
                match array.data_type() {
                    ArrowType::Int32 => {
                        map_primitive(array.as_primitive::<Int32Type>(), |x| has(x.into()))
                    }
                    _ => map_primitive(array.as_primitive::<Int64Type>(), has),
                }
            }
            Pred::InF32(values) => map_primitive(array.as_primitive::<Float32Type>(), |x| {
                contains_float(values, x + 0.0, f32::total_cmp)
            }),
            Pred::InF64(values) => map_primitive(array.as_primitive::<Float64Type>(), |x| {
                contains_float(values, x + 0.0, f64::total_cmp)
            }),
            Pred::InStr(values) => {
                let strings = array.as_string::<i32>();
                let bits = BooleanBuffer::collect_bool(len, |i| values.contains(strings.value(i)));
                BooleanArray::new(bits, strings.nulls().cloned())
            }
            Pred::InBool {
                has_true,
                has_false,
            } => {
                let bools = array.as_boolean();
                match (has_true, has_false) {
                    (true, true) => Pred::Const(true).eval(array)?,
                    (false, false) => Pred::Const(false).eval(array)?,
                    (true, false) => bools.clone(),
                    (false, true) => not(bools)?,
                }
            }
            // Known for every row, as in Milvus: a missing value holds nothing.
            Pred::JsonContains { values, all } => array
                .as_string::<i32>()
                .iter()
                .map(|t| {
                    let doc: Option<serde_json::Value> =
                        t.and_then(|t| serde_json::from_str(t).ok());
                    let Some(serde_json::Value::Array(items)) = doc else {
                        return Some(false);
                    };
                    let has = |v: &serde_json::Value| items.iter().any(|i| json_eq(i, v));
                    Some(if *all {
                        values.iter().all(has)
                    } else {
                        values.iter().any(has)
                    })
                })
                .collect(),
            Pred::PhraseMatch { .. } => self.phrase_match(array, None),
            // Known for every row, as in Milvus: a null value holds no term.
            Pred::TextMatch {
                analyzer,
                terms,
                min,
            } => {
                // Which terms a row holds, cleared per row; a row stops being read once it
                // holds `min` of them.
                let mut held = vec![false; terms.len()];
                array
                    .as_string::<i32>()
                    .iter()
                    .map(|t| {
                        let Some(t) = t.filter(|_| !terms.is_empty()) else {
                            return Some(false);
                        };
                        held.iter_mut().for_each(|h| *h = false);
                        let mut count = 0;
                        analyzer.each_term(t, |term, _, _, _| {
                            if let Ok(i) = terms.binary_search_by(|q| q.as_str().cmp(term))
                                && !held[i]
                            {
                                held[i] = true;
                                count += 1;
                            }
                            count < *min
                        });
                        Some(count >= *min)
                    })
                    .collect()
            }
            Pred::Arith {
                op,
                by,
                cmp,
                against,
            } => {
                let ints = match (by, against) {
                    (LitValue::Int(b), LitValue::Int(a)) => Some((i128::from(*b), i128::from(*a))),
                    _ => None,
                };
                let num = |l: &LitValue| match l {
                    LitValue::Int(v) => *v as f64,
                    LitValue::Float(v) => *v,
                    _ => f64::NAN,
                };
                let (b, a) = (num(by), num(against));
                let float = |x: f64| {
                    let v = op.float(x, b);
                    match cmp {
                        CmpOp::Ne => v != a,
                        _ => v.partial_cmp(&a).is_some_and(|o| cmp.holds(o)),
                    }
                };
                let int = |x: i64| match ints {
                    Some((b, a)) => op.int(i128::from(x), b).map(|v| cmp.holds(v.cmp(&a))),
                    None => Some(float(x as f64)),
                };
                match array.data_type() {
                    ArrowType::Int32 => array
                        .as_primitive::<Int32Type>()
                        .iter()
                        .map(|x| int(i64::from(x?)))
                        .collect(),
                    ArrowType::Int64 => array
                        .as_primitive::<Int64Type>()
                        .iter()
                        .map(|x| int(x?))
                        .collect(),
                    ArrowType::Float32 => {
                        map_primitive(array.as_primitive::<Float32Type>(), |x| float(f64::from(x)))
                    }
                    _ => map_primitive(array.as_primitive::<Float64Type>(), float),
                }
            }
            Pred::ArrayLength(op, n) => array
                .as_string::<i32>()
                .iter()
                .map(|t| {
                    let doc: serde_json::Value = serde_json::from_str(t?).ok()?;
                    let len = i64::try_from(doc.as_array()?.len()).ok()?;
                    Some(op.holds(len.cmp(n)))
                })
                .collect(),
        })
    }
}

/// JSON equality with numbers compared by value (`1 == 1.0`).
impl Pred {
    /// `phrase_match` over `array`'s texts, reading only the rows `candidates` marks (those
    /// holding every term of the phrase; `None`: every row).
    fn phrase_match(&self, array: &ArrayRef, candidates: Option<&BooleanArray>) -> BooleanArray {
        let Pred::PhraseMatch {
            analyzer,
            terms,
            slop,
        } = self
        else {
            return BooleanArray::new_null(array.len());
        };
        array
            .as_string::<i32>()
            .iter()
            .enumerate()
            .map(|(i, t)| {
                if candidates.is_some_and(|c| !c.value(i)) {
                    return Some(false);
                }
                Some(t.is_some_and(|t| {
                    // Only the phrase's terms matter: the others are not kept.
                    let mut doc = Vec::new();
                    analyzer.each_term(t, |term, start, end, position| {
                        if terms.iter().any(|(q, _)| q == term) {
                            doc.push(sluice_types::text::Token {
                                text: term.to_owned(),
                                start,
                                end,
                                position,
                            });
                        }
                        true
                    });
                    holds_phrase(&doc, terms, *slop)
                }))
            })
            .collect()
    }
}

/// The largest slop `phrase_match` takes.
const MAX_SLOP: i64 = 1 << 16;
/// The most terms a `phrase_match` phrase may have.
const MAX_PHRASE_TERMS: usize = 256;

/// Whether `doc`'s terms hold the phrase `terms` (each with its place in the phrase) within
/// `slop`: every term at a position of its own in `doc`, the differences position − place
/// spanning at most `slop`.
fn holds_phrase(doc: &[sluice_types::text::Token], terms: &[(String, usize)], slop: usize) -> bool {
    if terms.is_empty() {
        return false;
    }
    // (position − place, which term, position), by the difference.
    let mut events: Vec<(i64, usize, usize)> = Vec::new();
    for (i, (term, place)) in terms.iter().enumerate() {
        let before = events.len();
        for t in doc.iter().filter(|t| &t.text == term) {
            events.push((t.position as i64 - *place as i64, i, t.position));
        }
        if events.len() == before {
            return false;
        }
    }
    events.sort_unstable();
    let distinct = {
        let mut seen: Vec<&str> = terms.iter().map(|t| t.0.as_str()).collect();
        seen.sort_unstable();
        seen.dedup();
        seen.len() == terms.len()
    };
    (0..events.len()).any(|s| {
        let end = events.partition_point(|e| e.0 <= events[s].0 + slop as i64);
        let window = &events[s..end];
        if distinct {
            // Distinct terms sit at distinct positions: each term in the window is enough.
            let mut covered = vec![false; terms.len()];
            window.iter().for_each(|e| covered[e.1] = true);
            covered.iter().all(|&c| c)
        } else {
            assigns_positions(window, terms.len())
        }
    })
}

/// Whether each of `n` terms can take a position of its own among `window`'s (term, position)
/// pairs: a bipartite matching, grown one augmenting path per term.
fn assigns_positions(window: &[(i64, usize, usize)], n: usize) -> bool {
    fn augment(
        term: usize,
        window: &[(i64, usize, usize)],
        owner: &mut std::collections::HashMap<usize, usize>,
        seen: &mut HashSet<usize>,
    ) -> bool {
        for &(_, t, position) in window.iter().filter(|e| e.1 == term) {
            if !seen.insert(position) {
                continue;
            }
            let free = match owner.get(&position).copied() {
                None => true,
                Some(other) => augment(other, window, owner, seen),
            };
            if free {
                owner.insert(position, t);
                return true;
            }
        }
        false
    }
    let mut owner = std::collections::HashMap::new();
    (0..n).all(|term| augment(term, window, &mut owner, &mut HashSet::new()))
}

fn json_eq(a: &serde_json::Value, b: &serde_json::Value) -> bool {
    match (a, b) {
        (serde_json::Value::Number(x), serde_json::Value::Number(y)) => {
            match (x.as_i64(), y.as_i64()) {
                (Some(x), Some(y)) => x == y,
                _ => x.as_f64() == y.as_f64(),
            }
        }
        (serde_json::Value::Array(x), serde_json::Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(x, y)| json_eq(x, y))
        }
        _ => a == b,
    }
}

/// Where `text_match` may read its answer for a batch's rows: (field, the query's sorted,
/// distinct terms, how many a row must hold) → one answer per row, or `None` to read the text.
pub type TextHits<'a> = dyn Fn(&str, &[String], usize) -> Option<BooleanArray> + 'a;

impl Node {
    fn eval(
        &self,
        columns: &[Column],
        arrays: &[Option<ArrayRef>],
        len: usize,
        text: &str,
        hits: &TextHits<'_>,
    ) -> Result<BooleanArray, FilterError> {
        if let Node::Leaf {
            column,
            pred: Pred::TextMatch { terms, min, .. },
        } = self
            && let Some(answer) = hits(&columns[*column].name, terms, *min)
            && answer.len() == len
        {
            return Ok(answer);
        }
        // A phrase is read only in the rows holding all its terms.
        if let Node::Leaf {
            column,
            pred: pred @ Pred::PhraseMatch { terms, .. },
        } = self
            && let Some(array) = &arrays[*column]
        {
            let mut all: Vec<String> = terms.iter().map(|t| t.0.clone()).collect();
            all.sort_unstable();
            all.dedup();
            let candidates = hits(&columns[*column].name, &all, all.len());
            return Ok(pred.phrase_match(array, candidates.as_ref().filter(|c| c.len() == len)));
        }
        match self {
            Node::And(terms) | Node::Or(terms) => {
                let is_and = matches!(self, Node::And(_));
                let mut acc = terms[0].eval(columns, arrays, len, text, hits)?;
                for term in &terms[1..] {
                    let next = term.eval(columns, arrays, len, text, hits)?;
                    acc = if is_and {
                        and_kleene(&acc, &next)
                    } else {
                        or_kleene(&acc, &next)
                    }
                    .map_err(arrow_err(text))?;
                }
                Ok(acc)
            }
            Node::Not(inner) => {
                not(&inner.eval(columns, arrays, len, text, hits)?).map_err(arrow_err(text))
            }
            Node::Const(b) => Ok(BooleanArray::from(vec![*b; len])),
            Node::OtherType {
                test,
                present,
                answer,
            } => {
                let tested = test.eval(columns, arrays, len, text, hits)?;
                let Some(present) = &arrays[*present] else {
                    return Ok(tested);
                };
                Ok((0..len)
                    .map(|i| {
                        if tested.is_valid(i) {
                            Some(tested.value(i))
                        } else {
                            present.is_valid(i).then_some(*answer)
                        }
                    })
                    .collect())
            }
            Node::Leaf { column, pred } => match &arrays[*column] {
                // A missing (all-null) column.
                None => Ok(match pred {
                    Pred::IsNull { negated } => {
                        let bits = if *negated {
                            BooleanBuffer::new_unset(len)
                        } else {
                            BooleanBuffer::new_set(len)
                        };
                        BooleanArray::new(bits, None)
                    }
                    // No text holds no term: false, never unknown.
                    Pred::TextMatch { .. } | Pred::PhraseMatch { .. } => {
                        BooleanArray::new(BooleanBuffer::new_unset(len), None)
                    }
                    _ => BooleanArray::new_null(len),
                }),
                Some(array) => pred.eval(array).map_err(|e| {
                    let col = &columns[*column];
                    FilterError::new(
                        format!("evaluating a condition on field {:?} failed: {e}", col.name),
                        col.offset,
                        &col.name,
                    )
                }),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use arrow_array::{
        BooleanArray, FixedSizeListArray, Float32Array, Float64Array, Int32Array, Int64Array,
        StringArray,
    };
    use arrow_schema::{Field, Schema};
    use proptest::prelude::*;
    use sluice_types::schema::FieldSchema;
    use std::cmp::Ordering;

    fn field(name: &str, ty: DataType, nullable: bool) -> FieldSchema {
        FieldSchema {
            name: name.into(),
            data_type: ty as i32,
            nullable,
            max_length: if ty == DataType::Varchar { 64 } else { 0 },
            dim: if ty == DataType::FloatVector { 2 } else { 0 },
            ..FieldSchema::default()
        }
    }

    /// `added` and `note` are nullable fields no test batch has a column for.
    fn schema() -> CollectionSchema {
        CollectionSchema {
            name: "docs".into(),
            fields: vec![
                FieldSchema {
                    is_primary_key: true,
                    ..field("id", DataType::Int64, false)
                },
                field("vec", DataType::FloatVector, false),
                field("meta", DataType::Json, true),
                field("age", DataType::Int32, true),
                field("big", DataType::Int64, true),
                field("score", DataType::Float, true),
                field("ratio", DataType::Double, true),
                field("name", DataType::Varchar, true),
                field("flag", DataType::Bool, true),
                field("added", DataType::Int64, true),
                field("note", DataType::Varchar, true),
            ],
            shards: 1,
            version: 2,
            ..CollectionSchema::default()
        }
    }

    #[derive(Debug, Clone, Default)]
    struct Row {
        age: Option<i32>,
        big: Option<i64>,
        score: Option<f32>,
        ratio: Option<f64>,
        name: Option<String>,
        flag: Option<bool>,
    }

    /// A batch of `rows` (ids 1..), with a vector, a JSON and a system column, and no column
    /// for `added` or `note`.
    fn batch(rows: &[Row]) -> RecordBatch {
        let n = rows.len();
        let ids: Int64Array = (1..=n as i64).map(Some).collect();
        let vecs = FixedSizeListArray::from_iter_primitive::<Float32Type, _, _>(
            (0..n).map(|i| Some(vec![Some(i as f32), Some(0.5)])),
            2,
        );
        let columns: Vec<(&str, ArrayRef, bool)> = vec![
            ("_ts", Arc::new(Int64Array::from(vec![7; n])), false),
            ("id", Arc::new(ids), false),
            ("vec", Arc::new(vecs), false),
            (
                "meta",
                Arc::new(StringArray::from(vec![Some("{}"); n])),
                true,
            ),
            (
                "age",
                Arc::new(rows.iter().map(|r| r.age).collect::<Int32Array>()),
                true,
            ),
            (
                "big",
                Arc::new(rows.iter().map(|r| r.big).collect::<Int64Array>()),
                true,
            ),
            (
                "score",
                Arc::new(rows.iter().map(|r| r.score).collect::<Float32Array>()),
                true,
            ),
            (
                "ratio",
                Arc::new(rows.iter().map(|r| r.ratio).collect::<Float64Array>()),
                true,
            ),
            (
                "name",
                Arc::new(
                    rows.iter()
                        .map(|r| r.name.as_deref())
                        .collect::<StringArray>(),
                ),
                true,
            ),
            (
                "flag",
                Arc::new(rows.iter().map(|r| r.flag).collect::<BooleanArray>()),
                true,
            ),
        ];
        let fields: Vec<Field> = columns
            .iter()
            .map(|(name, array, nullable)| Field::new(*name, array.data_type().clone(), *nullable))
            .collect();
        RecordBatch::try_new(
            Arc::new(Schema::new(fields)),
            columns.into_iter().map(|(_, a, _)| a).collect(),
        )
        .unwrap()
    }

    fn small_rows() -> Vec<Row> {
        vec![
            Row {
                age: Some(10),
                big: Some(1),
                score: Some(1.5),
                ratio: Some(2.5),
                name: Some("alice".into()),
                flag: Some(true),
            },
            Row {
                age: None,
                big: Some(i64::MAX),
                score: Some(-0.0),
                ratio: None,
                name: Some("bob".into()),
                flag: Some(false),
            },
            Row {
                age: Some(30),
                big: None,
                score: None,
                ratio: Some(0.1),
                name: None,
                flag: None,
            },
            Row {
                age: Some(-5),
                big: Some(i64::MIN),
                score: Some(f32::NAN),
                ratio: Some(-1e300),
                name: Some("it's \"q\"".into()),
                flag: Some(true),
            },
            Row {
                age: Some(i32::MAX),
                big: Some(-7),
                score: Some(0.1),
                ratio: Some(0.0),
                name: Some(String::new()),
                flag: Some(false),
            },
        ]
    }

    /// The ids (1-based) of the small batch's rows that `expr` matches.
    fn ids(expr: &str) -> Vec<i64> {
        let filter = Filter::parse(expr, &schema()).unwrap_or_else(|e| panic!("{expr}: {e}"));
        let mask = filter.evaluate(&batch(&small_rows())).unwrap();
        assert_eq!(mask.null_count(), 0, "{expr}");
        assert_eq!(mask.len(), 5);
        (0..mask.len())
            .filter(|&i| mask.value(i))
            .map(|i| i as i64 + 1)
            .collect()
    }

    fn check(cases: &[(&str, &[i64])]) {
        for (expr, want) in cases {
            assert_eq!(ids(expr), *want, "{expr}");
        }
    }

    fn parse_err(expr: &str) -> FilterError {
        match Filter::parse(expr, &schema()) {
            Ok(f) => panic!("{expr:?} parsed: {f:?}"),
            Err(e) => e,
        }
    }

    /// `expr` fails at `offset` near `token` with a message containing `want`.
    fn check_err(expr: &str, offset: usize, token: &str, want: &str) {
        let e = parse_err(expr);
        assert_eq!(e.offset, offset, "{expr:?}: {e}");
        assert_eq!(e.token, token, "{expr:?}: {e}");
        assert!(e.message.contains(want), "{expr:?}: {e} (wanted {want:?})");
    }

    /// `true` and `false` are conditions too (every row, none), as in Milvus; an unknown
    /// function is named before its arguments are read; `$meta` needs a dynamic field.
    #[test]
    fn boolean_constants_unknown_functions_and_meta_without_a_dynamic_field() {
        check(&[
            ("true", &[1, 2, 3, 4, 5]),
            ("false", &[]),
            ("not false", &[1, 2, 3, 4, 5]),
            ("(true) and not (false or false)", &[1, 2, 3, 4, 5]),
            ("false or true", &[1, 2, 3, 4, 5]),
        ]);
        check_err(
            r#"STARTS_WITH(name, "a")"#,
            0,
            "STARTS_WITH",
            "unknown function",
        );
        check_err(r#"$meta["k"] == 1"#, 0, "$meta", "has none");
        check_err("true true", 5, "true", "");
    }

    #[test]
    fn integer_comparisons_every_operator_both_orders() {
        check(&[
            ("age > 10", &[3, 5]),
            ("age >= 10", &[1, 3, 5]),
            ("age == 30", &[3]),
            ("age != 30", &[1, 4, 5]),
            ("age < 10", &[4]),
            ("age <= -5", &[4]),
            ("10 < age", &[3, 5]),
            ("10 <= age", &[1, 3, 5]),
            ("30 == age", &[3]),
            ("30 != age", &[1, 4, 5]),
            ("-5 >= age", &[4]),
            ("0 > age", &[4]),
            ("big == 9223372036854775807", &[2]),
            ("big == -9223372036854775808", &[4]),
            ("big > 0", &[1, 2]),
            ("id == 3", &[3]),
        ]);
    }

    #[test]
    fn numeric_comparisons_across_types() {
        check(&[
            // An integer field against a float literal compares exactly.
            ("age > 2.5", &[1, 3, 5]),
            ("age < -4.5", &[4]),
            ("age <= -5.0", &[4]),
            ("age >= 10.0", &[1, 3, 5]),
            ("age == 10.0", &[1]),
            ("age == 10.5", &[]),
            ("age != 10.5", &[1, 3, 4, 5]),
            ("age > 1e1", &[3, 5]),
            ("age <= 2147483647.5", &[1, 3, 4, 5]),
            ("age > 2147483646.5", &[5]),
            // An INT32 field against literals outside its range.
            ("age < 10000000000", &[1, 3, 4, 5]),
            ("age > -10000000000", &[1, 3, 4, 5]),
            ("age > 10000000000", &[]),
            ("age == 10000000000", &[]),
            ("age != 10000000000", &[1, 3, 4, 5]),
            ("age >= -1e300", &[1, 3, 4, 5]),
            ("age < -2147483648", &[]),
            ("age == 2147483647", &[5]),
            ("age > 2147483647", &[]),
            // INT64 against floats beyond its range.
            ("big > 9.3e18", &[]),
            ("big < 9.3e18", &[1, 2, 4, 5]),
            ("big >= 9.2e18", &[2]),
            ("big < -9.2e18", &[4]),
            ("big > -1e300", &[1, 2, 4, 5]),
            ("big == 9223372036854775807.0", &[]),
            ("big < 9223372036854775807.0", &[1, 2, 4, 5]),
            // FLOAT: the literal is rounded to f32; -0.0 == 0.0; NaN matches only !=.
            ("score == 1.5", &[1]),
            ("score == 0.1", &[5]),
            ("score == 0", &[2]),
            ("score == -0.0", &[2]),
            ("score >= 0", &[1, 2, 5]),
            ("score < 0", &[]),
            ("score != 1.5", &[2, 4, 5]),
            ("score < 1e39", &[1, 2, 5]),
            ("score > 1", &[1]),
            // DOUBLE
            ("ratio == 0.1", &[3]),
            ("ratio == 0", &[5]),
            ("ratio > -1", &[1, 3, 5]),
            ("ratio < -1e299", &[4]),
            ("ratio >= 2", &[1]),
            ("ratio != 0.1", &[1, 4, 5]),
        ]);
    }

    #[test]
    fn in_lists_of_numbers() {
        check(&[
            ("age in [10, 30.0, 2.5, 10000000000]", &[1, 3]),
            ("age not in [10, 30.0, 2.5, 10000000000]", &[4, 5]),
            ("age in [2147483647, -5]", &[4, 5]),
            ("big in [-7, 9223372036854775807]", &[2, 5]),
            ("big in [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, -7, 11]", &[1, 5]),
            ("score in [0, 1.5]", &[1, 2]),
            ("score in [0.1]", &[5]),
            ("score not in [0.1]", &[1, 2, 4]),
            (
                "score in [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 0.1, -0.0]",
                &[2, 5],
            ),
            ("ratio in [0.1, -0.0]", &[3, 5]),
            (
                "ratio in [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 2.5, 0.1]",
                &[1, 3],
            ),
            ("age in []", &[]),
            ("age not in []", &[1, 3, 4, 5]),
        ]);
    }

    #[test]
    fn strings_compare_in_byte_order_with_escapes() {
        check(&[
            ("name == \"alice\"", &[1]),
            ("name == 'alice'", &[1]),
            ("name != 'bob'", &[1, 4, 5]),
            ("name > 'b'", &[2, 4]),
            ("name >= 'bob'", &[2, 4]),
            ("name < 'b'", &[1, 5]),
            ("name <= 'bob'", &[1, 2, 5]),
            ("name >= ''", &[1, 2, 4, 5]),
            ("name == ''", &[5]),
            ("'bob' == name", &[2]),
            ("'b' < name", &[2, 4]),
            (r#"name == 'it\'s "q"'"#, &[4]),
            (r#"name == "it's \"q\"""#, &[4]),
            (r#"name == "it\'s \"q\"""#, &[4]),
            ("name in ['bob', '']", &[2, 5]),
            ("name not in ['bob']", &[1, 4, 5]),
            ("name in []", &[]),
            ("name not in []", &[1, 2, 4, 5]),
            ("'a' < name < 'c'", &[1, 2]),
        ]);
        let tokens = lex(r#""a\nb\tc\\d\"e'f" 'x\'y"z'"#).unwrap();
        assert_eq!(tokens[0].tok, Tok::Str("a\nb\tc\\d\"e'f".into()));
        assert_eq!(tokens[1].tok, Tok::Str("x'y\"z".into()));
        assert_eq!(tokens[1].offset, 18);
        assert_eq!(tokens[2].tok, Tok::End);

        // Escaped control characters and non-ASCII text reach the comparison.
        let rows = [
            Row {
                name: Some("line\nbreak".into()),
                ..Row::default()
            },
            Row {
                name: Some("tab\there \\ é".into()),
                ..Row::default()
            },
        ];
        let b = batch(&rows);
        for (expr, want) in [
            (r#"name == "line\nbreak""#, [true, false]),
            (r"name == 'tab\there \\ é'", [false, true]),
            (r"name in ['tab\there \\ é', 'x']", [false, true]),
            (r"name > 'line\n'", [true, true]),
            (r"name > 'line\t'", [true, true]),
            (r"name < 'line\t'", [false, false]),
        ] {
            let got = Filter::parse(expr, &schema())
                .unwrap()
                .evaluate(&b)
                .unwrap();
            assert_eq!(got, BooleanArray::from(want.to_vec()), "{expr}");
        }
    }

    #[test]
    fn literal_syntax() {
        let toks = |s: &str| {
            lex(s)
                .unwrap()
                .into_iter()
                .map(|t| t.tok)
                .collect::<Vec<_>>()
        };
        // A sign where no operand ends before it (after a value, `-` and `+` are arithmetic).
        let signed = |s: &str| {
            let mut t = toks(s);
            t.retain(|t| *t != Tok::Comma);
            t
        };
        assert_eq!(
            signed("-2e3, 1.5, .5, -.5, +7, -9223372036854775808, 1E+2, 2e-1"),
            vec![
                Tok::Float(-2000.0),
                Tok::Float(1.5),
                Tok::Float(0.5),
                Tok::Float(-0.5),
                Tok::Int(7),
                Tok::Int(i64::MIN),
                Tok::Float(100.0),
                Tok::Float(0.2),
                Tok::End,
            ]
        );
        assert_eq!(
            toks("a-1 a - -1 (a)+2 a[0]*3"),
            vec![
                Tok::Ident("a".into()),
                Tok::Arith(ArithOp::Sub),
                Tok::Int(1),
                Tok::Ident("a".into()),
                Tok::Arith(ArithOp::Sub),
                Tok::Int(-1),
                Tok::LParen,
                Tok::Ident("a".into()),
                Tok::RParen,
                Tok::Arith(ArithOp::Add),
                Tok::Int(2),
                Tok::Ident("a".into()),
                Tok::LBracket,
                Tok::Int(0),
                Tok::RBracket,
                Tok::Arith(ArithOp::Mul),
                Tok::Int(3),
                Tok::End,
            ]
        );
        assert_eq!(
            toks("TRUE False nUlL AND Or NOT In iS && || !"),
            vec![
                Tok::Bool(true),
                Tok::Bool(false),
                Tok::Null,
                Tok::And,
                Tok::Or,
                Tok::Not,
                Tok::In,
                Tok::Is,
                Tok::And,
                Tok::Or,
                Tok::Not,
                Tok::End,
            ]
        );
        assert_eq!(
            toks("a<=b>=c<d>e==f!=g"),
            vec![
                Tok::Ident("a".into()),
                Tok::Op(CmpOp::Le),
                Tok::Ident("b".into()),
                Tok::Op(CmpOp::Ge),
                Tok::Ident("c".into()),
                Tok::Op(CmpOp::Lt),
                Tok::Ident("d".into()),
                Tok::Op(CmpOp::Gt),
                Tok::Ident("e".into()),
                Tok::Op(CmpOp::Eq),
                Tok::Ident("f".into()),
                Tok::Op(CmpOp::Ne),
                Tok::Ident("g".into()),
                Tok::End,
            ]
        );
    }

    #[test]
    fn booleans() {
        check(&[
            ("flag == true", &[1, 4]),
            ("flag == TRUE", &[1, 4]),
            ("flag != true", &[2, 5]),
            ("flag == false", &[2, 5]),
            ("flag != False", &[1, 4]),
            ("true == flag", &[1, 4]),
            ("flag in [true]", &[1, 4]),
            ("flag in [false]", &[2, 5]),
            ("flag in [true, false]", &[1, 2, 4, 5]),
            ("flag not in [true, false]", &[]),
            ("flag not in [true]", &[2, 5]),
            ("flag in []", &[]),
            ("flag not in []", &[1, 2, 4, 5]),
        ]);
    }

    #[test]
    fn nulls_and_missing_columns_follow_three_valued_logic() {
        check(&[
            ("age is null", &[2]),
            ("age IS NOT NULL", &[1, 3, 4, 5]),
            ("id is null", &[]),
            ("id is not null", &[1, 2, 3, 4, 5]),
            ("added is null", &[1, 2, 3, 4, 5]),
            ("added is not null", &[]),
            ("added == 1", &[]),
            ("added != 1", &[]),
            ("not (added == 1)", &[]),
            ("not added == 1", &[]),
            ("added in []", &[]),
            ("added not in []", &[]),
            ("note == 'x'", &[]),
            ("note not in ['x']", &[]),
            ("note is null and id < 3", &[1, 2]),
            // `not` over a null stays excluded.
            ("not (age == 10)", &[3, 4, 5]),
            ("!(age == 10)", &[3, 4, 5]),
            ("not (flag == true)", &[2, 5]),
            ("not not (age == 10)", &[1]),
            // true or unknown = true; false or unknown = unknown.
            ("age == 10 or added == 1", &[1]),
            ("not (age == 10 or added == 1)", &[]),
            // false and unknown = false; true and unknown = unknown.
            ("age > 0 and added == 1", &[]),
            ("not (age > 100 and added == 1)", &[1, 3, 4]),
            ("age == 10 and added is null", &[1]),
            ("age is null or age > 20", &[2, 3, 5]),
            ("not (age is null or age > 20)", &[1, 4]),
        ]);
    }

    #[test]
    fn connectives_and_precedence() {
        check(&[
            ("id == 1 or id == 2 and id == 3", &[1]),
            ("(id == 1 or id == 2) and id == 2", &[2]),
            ("id == 1 || id == 2 && id == 3", &[1]),
            ("id == 1 OR id == 2 AND id == 2", &[1, 2]),
            ("not id == 1 and id < 3", &[2]),
            ("NOT id == 1 AND id < 3 OR id == 5", &[2, 5]),
            ("!(id > 2)", &[1, 2]),
            ("!id > 2", &[1, 2]),
            ("not (id > 2 or id == 1)", &[2]),
            ("((id == 4))", &[4]),
            ("id > 1 and id < 5 and id != 3", &[2, 4]),
            ("id == 1 or id == 3 or id == 5", &[1, 3, 5]),
            ("id==1||id==2", &[1, 2]),
        ]);
    }

    #[test]
    fn chained_ranges() {
        check(&[
            ("1 < id < 4", &[2, 3]),
            ("1 <= id <= 4", &[1, 2, 3, 4]),
            ("1 < id <= 4", &[2, 3, 4]),
            ("1 <= id < 4", &[1, 2, 3]),
            ("4 > id > 1", &[2, 3]),
            ("4 >= id > 1", &[2, 3, 4]),
            ("0 < age < 2.5e9", &[1, 3, 5]),
            ("-1.5 <= score <= 1", &[2, 5]),
            ("not 1 < id < 4", &[1, 4, 5]),
            ("1 < id < 4 and 2 < id", &[3]),
        ]);
    }

    #[test]
    fn fields_and_text() {
        let text = "age > 1 and (name == 'x' or age < 0) and added is null";
        let f = Filter::parse(text, &schema()).unwrap();
        assert_eq!(f.fields(), vec!["age", "name", "added"]);
        assert_eq!(f.text(), text);
        assert_eq!(f.to_string(), text);
        let g = f.clone();
        assert_eq!(g.fields(), f.fields());
    }

    #[test]
    fn errors_point_at_the_offending_token() {
        check_err("", 0, "", "empty");
        check_err("   ", 3, "", "empty");
        check_err("foo > 1", 0, "foo", "unknown field \"foo\"");
        check_err("id > 1 and foo > 1", 11, "foo", "unknown field");
        check_err("Age > 1", 0, "Age", "did you mean \"age\"");
        check_err(
            "vec is null",
            0,
            "vec",
            "cannot filter on FLOAT_VECTOR field \"vec\"",
        );
        check_err(
            "meta == 'x'",
            0,
            "meta",
            "cannot compare JSON field \"meta\" itself",
        );
        check_err("age = 1", 4, "=", "'=='");
        check_err("age <> 1", 4, "<>", "'!='");
        check_err("age > 1 & id > 1", 8, "&", "'&&'");
        check_err("age > 1 | id > 1", 8, "|", "'||'");
        check_err("age @ 1", 4, "@", "unexpected character");
        check_err(
            "age > 1 garbage",
            8,
            "garbage",
            "after a complete expression",
        );
        check_err("age > 1 2", 8, "2", "after a complete expression");
        check_err("(age > 1", 8, "", "expected ')'");
        check_err("((age > 1) or id == 2", 21, "", "'(' at offset 0");
        check_err("age > 1)", 7, ")", "unbalanced ')'");
        check_err("()", 1, ")", "expected a condition");
        check_err("age > 1 and", 11, "", "end of input");
        check_err("and age > 1", 0, "and", "expected a condition");
        check_err("age", 3, "", "after field \"age\"");
        check_err("age age", 4, "age", "after field \"age\"");
        check_err("age > name", 6, "name", "comparing two fields");
        check_err("1 < 2", 4, "2", "both sides are literals");
        check_err("1 2", 2, "2", "comparison operator");
        check_err("age > >", 6, ">", "expected a field or a literal");
        check_err("age == null", 7, "null", "is null");
        check_err("age is 1", 7, "1", "expected 'null'");
        check_err("age is not 1", 11, "1", "expected 'null' after 'is not'");
        check_err("age not 1", 8, "1", "expected 'in'");
        check_err("age in 1", 7, "1", "expected '['");
        check_err("age in [1 2]", 10, "2", "expected ',' or ']'");
        check_err("age in [1,]", 10, "]", "expected a field or a literal");
        check_err("age in [1, id]", 11, "id", "literals, not fields");
        check_err("age in [1", 9, "", "expected ',' or ']'");
        check_err("name == \"abc", 8, "\"abc", "unterminated string");
        check_err(r#"name == "a\qb""#, 10, r"\q", "unknown escape");
        check_err("age > 12abc", 6, "12abc", "malformed number");
        check_err("age > 1.2.3", 6, "1.2.3", "malformed number");
        check_err(
            "age > 99999999999999999999",
            6,
            "99999999999999999999",
            "INT64 range",
        );
        check_err("1 < age > 3", 8, ">", "a range must be");
        check_err("1 < age < id", 10, "id", "comparing two fields");
        check_err("1 < age < 2 < 3", 12, "<", "two bounds");
        check_err("age < 1 < 2", 8, "<", "do not chain");
        // Offsets are in bytes.
        check_err("name == \"é\" and x == 1", 17, "x", "unknown field");
    }

    #[test]
    fn type_errors_name_the_field_its_type_and_the_literal() {
        check_err("age > \"x\"", 6, "\"x\"", "field \"age\" is INT32");
        check_err("age > 'x'", 6, "'x'", "a string");
        check_err(
            "big == true",
            7,
            "true",
            "INT64 and cannot be compared with a boolean",
        );
        check_err("score < 'x'", 8, "'x'", "FLOAT");
        check_err("ratio in [1, 'x']", 13, "'x'", "DOUBLE");
        check_err("name == 1", 8, "1", "field \"name\" is VARCHAR");
        check_err("name in ['a', 2.5]", 14, "2.5", "a float");
        check_err("'x' < age", 0, "'x'", "INT32");
        check_err("flag == 1", 8, "1", "BOOL");
        check_err("flag in [true, 0]", 15, "0", "BOOL");
        check_err("flag < true", 5, "<", "only == and !=");
        check_err("true > flag", 5, ">", "only == and !=, not >");
        check_err("false < flag < true", 6, "<", "only == and !=");
        check_err("1 < name < 'z'", 0, "1", "VARCHAR");
    }

    #[test]
    fn nesting_is_limited() {
        let deep = |n: usize| format!("{}id == 1{}", "(".repeat(n), ")".repeat(n));
        assert_eq!(
            Filter::parse(&deep(MAX_DEPTH), &schema())
                .unwrap()
                .evaluate(&batch(&small_rows()))
                .unwrap(),
            BooleanArray::from(vec![true, false, false, false, false])
        );
        let e = parse_err(&deep(MAX_DEPTH + 1));
        assert!(e.message.contains("nested"), "{e}");
        assert_eq!(e.offset, MAX_DEPTH + 1);
        let e = parse_err(&format!("{}id == 1", "not ".repeat(MAX_DEPTH + 1)));
        assert!(e.message.contains("nested"), "{e}");
        assert_eq!(
            ids(&format!("{}id == 1", "not ".repeat(MAX_DEPTH))),
            vec![1]
        );
    }

    #[test]
    fn error_display_names_the_token_and_offset() {
        assert_eq!(
            FilterError::new("unknown field \"foo\"", 12, "foo").to_string(),
            "filter error at offset 12 near \"foo\": unknown field \"foo\""
        );
        assert_eq!(
            FilterError::new("expected ')'", 8, "").to_string(),
            "filter error at offset 8 (end of input): expected ')'"
        );
        let long = FilterError::new("x", 0, "y".repeat(100));
        assert!(
            long.token.starts_with("yyyy") && long.token.len() < 50,
            "{long}"
        );
        let e = parse_err("id > 1 and foo > 1").to_string();
        assert!(e.contains("offset 11") && e.contains("\"foo\""), "{e}");
    }

    #[test]
    fn evaluation_checks_the_batch_columns() {
        // `age` as Int64 instead of Int32.
        let batch_wrong = RecordBatch::try_from_iter(vec![
            ("id", Arc::new(Int64Array::from(vec![1])) as ArrayRef),
            ("age", Arc::new(Int64Array::from(vec![1])) as ArrayRef),
        ])
        .unwrap();
        let f = Filter::parse("id > 0 and age > 0", &schema()).unwrap();
        let e = f.evaluate(&batch_wrong).unwrap_err();
        assert_eq!(e.offset, 11, "{e}");
        assert!(
            e.message.contains("Int64") && e.message.contains("Int32"),
            "{e}"
        );
        // A non-nullable field's column is missing.
        let no_id = RecordBatch::try_from_iter(vec![(
            "age",
            Arc::new(Int32Array::from(vec![1])) as ArrayRef,
        )])
        .unwrap();
        let e = f.evaluate(&no_id).unwrap_err();
        assert!(
            e.message
                .contains("no column for non-nullable field \"id\""),
            "{e}"
        );
        // A missing nullable field is all null.
        let f = Filter::parse("age > 0 or big is null", &schema()).unwrap();
        assert_eq!(f.evaluate(&no_id).unwrap(), BooleanArray::from(vec![true]));
    }

    #[test]
    fn empty_and_sliced_batches() {
        let f = Filter::parse("age > 0 or name in ['bob']", &schema()).unwrap();
        assert_eq!(f.evaluate(&batch(&[])).unwrap().len(), 0);
        let full = batch(&small_rows());
        let whole = f.evaluate(&full).unwrap();
        assert_eq!(
            whole,
            BooleanArray::from(vec![true, true, true, false, true])
        );
        for (offset, len) in [(1, 3), (2, 3), (4, 1), (0, 0)] {
            let got = f.evaluate(&full.slice(offset, len)).unwrap();
            let want = whole.slice(offset, len);
            assert_eq!(got, want, "slice {offset}+{len}");
        }
    }

    #[test]
    fn a_large_batch() {
        let n: i64 = 100_000;
        let rows: Vec<Row> = (0..n)
            .map(|i| Row {
                age: (i % 7 != 0).then_some((i % 100) as i32),
                big: Some(i),
                score: Some(i as f32 / 10.0),
                ratio: None,
                name: (i % 5 != 0).then(|| format!("n{}", i % 13)),
                flag: Some(i % 2 == 0),
            })
            .collect();
        let b = batch(&rows);
        let f = Filter::parse(
            "(age >= 50 and name in ['n1', 'n2', 'n3']) or (big > 99990 and flag == true)",
            &schema(),
        )
        .unwrap();
        let got = f.evaluate(&b).unwrap();
        let want: Vec<bool> = (0..n)
            .map(|i| {
                let a = i % 7 != 0 && i % 100 >= 50 && i % 5 != 0 && (1..=3).contains(&(i % 13));
                a || (i > 99_990 && i % 2 == 0)
            })
            .collect();
        assert_eq!(got, BooleanArray::from(want));
        assert!(got.true_count() > 1000);
    }

    // --- A naive row-by-row evaluator to compare with -------------------------------------

    #[derive(Debug, Clone)]
    enum TLit {
        I(i64),
        F(f64),
        S(String),
        B(bool),
    }

    #[derive(Debug, Clone)]
    enum TExpr {
        Cmp {
            field: &'static str,
            op: CmpOp,
            lit: TLit,
            flipped: bool,
        },
        Range {
            field: &'static str,
            lo: TLit,
            lo_op: CmpOp,
            hi: TLit,
            hi_op: CmpOp,
            descending: bool,
        },
        In {
            field: &'static str,
            list: Vec<TLit>,
            negated: bool,
        },
        IsNull {
            field: &'static str,
            negated: bool,
        },
        Not(Box<TExpr>, u8),
        And(Vec<TExpr>, u8),
        Or(Vec<TExpr>, u8),
    }

    #[derive(Debug, Clone)]
    enum TVal {
        Null,
        I(i64),
        F32(f32),
        F64(f64),
        S(String),
        B(bool),
    }

    fn value(row: &Row, field: &str) -> TVal {
        let v = match field {
            "age" => row.age.map(|v| TVal::I(v.into())),
            "big" => row.big.map(TVal::I),
            "score" => row.score.map(TVal::F32),
            "ratio" => row.ratio.map(TVal::F64),
            "name" => row.name.clone().map(TVal::S),
            "flag" => row.flag.map(TVal::B),
            "added" | "note" => None,
            other => panic!("no field {other}"),
        };
        v.unwrap_or(TVal::Null)
    }

    /// Exact comparison of an integer with a float.
    fn cmp_int_float(x: i64, v: f64) -> Option<Ordering> {
        if v.is_nan() {
            return None;
        }
        if v >= 9_223_372_036_854_775_808.0 {
            return Some(Ordering::Less);
        }
        if v < -9_223_372_036_854_775_808.0 {
            return Some(Ordering::Greater);
        }
        let t = v.trunc();
        match x.cmp(&(t as i64)) {
            Ordering::Equal => (0.0).partial_cmp(&(v - t)),
            o => Some(o),
        }
    }

    fn naive_cmp(v: &TVal, op: CmpOp, lit: &TLit) -> Option<bool> {
        let ord = match (v, lit) {
            (TVal::Null, _) => return None,
            (TVal::I(x), TLit::I(y)) => Some(x.cmp(y)),
            (TVal::I(x), TLit::F(y)) => cmp_int_float(*x, *y),
            (TVal::F32(x), TLit::I(y)) => x.partial_cmp(&(*y as f32)),
            (TVal::F32(x), TLit::F(y)) => x.partial_cmp(&(*y as f32)),
            (TVal::F64(x), TLit::I(y)) => x.partial_cmp(&(*y as f64)),
            (TVal::F64(x), TLit::F(y)) => x.partial_cmp(y),
            (TVal::S(x), TLit::S(y)) => Some(x.as_bytes().cmp(y.as_bytes())),
            (TVal::B(x), TLit::B(y)) => Some(x.cmp(y)),
            other => panic!("ill-typed test expression {other:?}"),
        };
        Some(match ord {
            None => op == CmpOp::Ne,
            Some(o) => match op {
                CmpOp::Eq => o == Ordering::Equal,
                CmpOp::Ne => o != Ordering::Equal,
                CmpOp::Lt => o == Ordering::Less,
                CmpOp::Le => o != Ordering::Greater,
                CmpOp::Gt => o == Ordering::Greater,
                CmpOp::Ge => o != Ordering::Less,
            },
        })
    }

    fn and3(a: Option<bool>, b: Option<bool>) -> Option<bool> {
        match (a, b) {
            (Some(false), _) | (_, Some(false)) => Some(false),
            (Some(true), Some(true)) => Some(true),
            _ => None,
        }
    }

    fn naive(e: &TExpr, row: &Row) -> Option<bool> {
        match e {
            TExpr::Cmp { field, op, lit, .. } => naive_cmp(&value(row, field), *op, lit),
            TExpr::Range {
                field,
                lo,
                lo_op,
                hi,
                hi_op,
                ..
            } => {
                let v = value(row, field);
                and3(naive_cmp(&v, lo_op.flip(), lo), naive_cmp(&v, *hi_op, hi))
            }
            TExpr::In {
                field,
                list,
                negated,
            } => {
                let v = value(row, field);
                if matches!(v, TVal::Null) {
                    return None;
                }
                let found = list
                    .iter()
                    .any(|l| naive_cmp(&v, CmpOp::Eq, l) == Some(true));
                Some(found != *negated)
            }
            TExpr::IsNull { field, negated } => {
                Some(matches!(value(row, field), TVal::Null) != *negated)
            }
            TExpr::Not(inner, _) => naive(inner, row).map(|b| !b),
            TExpr::And(terms, _) | TExpr::Or(terms, _) => {
                // Kleene: a deciding value (false for and, true for or) wins, else unknown
                // wins, else the neutral value.
                let decider = matches!(e, TExpr::Or(..));
                let values: Vec<Option<bool>> = terms.iter().map(|t| naive(t, row)).collect();
                if values.contains(&Some(decider)) {
                    Some(decider)
                } else if values.contains(&None) {
                    None
                } else {
                    Some(!decider)
                }
            }
        }
    }

    fn render_lit(lit: &TLit, out: &mut String) {
        match lit {
            TLit::I(v) => out.push_str(&v.to_string()),
            // `{:?}` is the shortest text that reads back as the same f64, always with a '.'
            // or an exponent.
            TLit::F(v) => out.push_str(&format!("{v:?}")),
            TLit::B(b) => out.push_str(match (b, out.len() % 3) {
                (true, 0) => "true",
                (true, 1) => "TRUE",
                (true, _) => "True",
                (false, 0) => "false",
                (false, 1) => "FALSE",
                (false, _) => "fAlse",
            }),
            TLit::S(s) => {
                let quote = if s.len() % 2 == 0 { '"' } else { '\'' };
                out.push(quote);
                for c in s.chars() {
                    match c {
                        '\\' => out.push_str("\\\\"),
                        '\n' => out.push_str("\\n"),
                        '\t' => out.push_str("\\t"),
                        c if c == quote => {
                            out.push('\\');
                            out.push(c);
                        }
                        c => out.push(c),
                    }
                }
                out.push(quote);
            }
        }
    }

    fn prec(e: &TExpr) -> u8 {
        match e {
            TExpr::Or(..) => 1,
            TExpr::And(..) => 2,
            TExpr::Not(..) => 3,
            _ => 4,
        }
    }

    /// Renders `e` with the parentheses precedence needs (and some it does not), in varying
    /// keyword spellings.
    fn render(e: &TExpr, min_prec: u8, out: &mut String) {
        let style = match e {
            TExpr::Not(_, s) | TExpr::And(_, s) | TExpr::Or(_, s) => *s,
            _ => 0,
        };
        let paren = prec(e) < min_prec || style % 5 == 4;
        if paren {
            out.push('(');
        }
        match e {
            TExpr::Cmp {
                field,
                op,
                lit,
                flipped: false,
            } => {
                out.push_str(&format!("{field} {} ", op.symbol()));
                render_lit(lit, out);
            }
            TExpr::Cmp {
                field,
                op,
                lit,
                flipped: true,
            } => {
                render_lit(lit, out);
                out.push_str(&format!(" {} {field}", op.flip().symbol()));
            }
            TExpr::Range {
                field,
                lo,
                lo_op,
                hi,
                hi_op,
                descending: false,
            } => {
                render_lit(lo, out);
                out.push_str(&format!(" {} {field} {} ", lo_op.symbol(), hi_op.symbol()));
                render_lit(hi, out);
            }
            TExpr::Range {
                field,
                lo,
                lo_op,
                hi,
                hi_op,
                descending: true,
            } => {
                render_lit(hi, out);
                let (a, b) = (hi_op.flip().symbol(), lo_op.flip().symbol());
                out.push_str(&format!(" {a} {field} {b} "));
                render_lit(lo, out);
            }
            TExpr::In {
                field,
                list,
                negated,
            } => {
                let kw = match (negated, list.len() % 2) {
                    (false, 0) => "in",
                    (false, _) => "IN",
                    (true, 0) => "not in",
                    (true, _) => "NOT In",
                };
                out.push_str(&format!("{field} {kw} ["));
                for (i, lit) in list.iter().enumerate() {
                    if i > 0 {
                        out.push_str(", ");
                    }
                    render_lit(lit, out);
                }
                out.push(']');
            }
            TExpr::IsNull { field, negated } => {
                out.push_str(field);
                out.push_str(if *negated { " is not null" } else { " IS NULL" });
            }
            TExpr::Not(inner, s) => {
                out.push_str(["not ", "NOT ", "!", "Not  "][usize::from(*s % 4)]);
                render(inner, 3, out);
            }
            TExpr::And(terms, s) | TExpr::Or(terms, s) => {
                let is_and = matches!(e, TExpr::And(..));
                let word = if is_and {
                    [" and ", " AND ", " && ", "&&"][usize::from(*s % 4)]
                } else {
                    [" or ", " OR ", " || ", "||"][usize::from(*s % 4)]
                };
                for (i, t) in terms.iter().enumerate() {
                    if i > 0 {
                        out.push_str(word);
                    }
                    render(t, if is_and { 2 } else { 1 }, out);
                }
            }
        }
        if paren {
            out.push(')');
        }
    }

    fn collect_fields(e: &TExpr, out: &mut Vec<&'static str>) {
        match e {
            TExpr::Cmp { field, .. }
            | TExpr::Range { field, .. }
            | TExpr::In { field, .. }
            | TExpr::IsNull { field, .. } => {
                if !out.contains(field) {
                    out.push(field);
                }
            }
            TExpr::Not(inner, _) => collect_fields(inner, out),
            TExpr::And(terms, _) | TExpr::Or(terms, _) => {
                terms.iter().for_each(|t| collect_fields(t, out));
            }
        }
    }

    fn num_lit() -> BoxedStrategy<TLit> {
        prop_oneof![
            (-4i64..=4).prop_map(TLit::I),
            prop::sample::select(vec![
                i64::from(i32::MAX),
                i64::from(i32::MIN),
                i64::from(i32::MAX) + 1,
                i64::from(i32::MIN) - 1,
                i64::MAX,
                i64::MIN,
                (1 << 53) + 1,
                -100,
            ])
            .prop_map(TLit::I),
            (-9i32..=9).prop_map(|k| TLit::F(f64::from(k) / 2.0)),
            prop::sample::select(vec![
                -0.0,
                0.1,
                -0.1,
                1e20,
                -1e20,
                2147483647.5,
                2147483648.0,
                -2147483648.5,
                9.3e18,
                -9.3e18,
                9007199254740993.0,
                9.223_372_036_854_776e18,
                1e-300,
                3.4e38,
                1e39,
            ])
            .prop_map(TLit::F),
        ]
        .boxed()
    }

    const STRINGS: &[&str] = &[
        "",
        "a",
        "b",
        "ab",
        "B",
        "é",
        "a\"b",
        "it's",
        "x\\y",
        "line\nbreak",
        "\t",
        "ba",
    ];

    fn str_lit() -> BoxedStrategy<TLit> {
        prop::sample::select(STRINGS)
            .prop_map(|s| TLit::S(s.to_string()))
            .boxed()
    }

    fn any_op() -> impl Strategy<Value = CmpOp> {
        prop::sample::select(vec![
            CmpOp::Eq,
            CmpOp::Ne,
            CmpOp::Lt,
            CmpOp::Le,
            CmpOp::Gt,
            CmpOp::Ge,
        ])
    }

    fn lower_op() -> impl Strategy<Value = CmpOp> {
        prop::sample::select(vec![CmpOp::Lt, CmpOp::Le])
    }

    fn ordered_leaf(
        field: &'static str,
        lit: impl Strategy<Value = TLit> + Clone + 'static,
    ) -> BoxedStrategy<TExpr> {
        prop_oneof![
            3 => (any_op(), lit.clone(), any::<bool>()).prop_map(move |(op, lit, flipped)| {
                TExpr::Cmp { field, op, lit, flipped }
            }),
            1 => (lit.clone(), lower_op(), lit.clone(), lower_op(), any::<bool>()).prop_map(
                move |(lo, lo_op, hi, hi_op, descending)| TExpr::Range {
                    field, lo, lo_op, hi, hi_op, descending,
                }
            ),
            1 => (prop::collection::vec(lit, 0..12), any::<bool>())
                .prop_map(move |(list, negated)| TExpr::In { field, list, negated }),
        ]
        .boxed()
    }

    fn leaf() -> BoxedStrategy<TExpr> {
        let bool_leaf = prop_oneof![
            (
                prop::sample::select(vec![CmpOp::Eq, CmpOp::Ne]),
                any::<bool>(),
                any::<bool>()
            )
                .prop_map(|(op, b, flipped)| TExpr::Cmp {
                    field: "flag",
                    op,
                    lit: TLit::B(b),
                    flipped,
                }),
            (prop::collection::vec(any::<bool>(), 0..3), any::<bool>()).prop_map(
                |(list, negated)| TExpr::In {
                    field: "flag",
                    list: list.into_iter().map(TLit::B).collect(),
                    negated,
                }
            ),
        ];
        let is_null = (
            prop::sample::select(vec![
                "age", "big", "score", "ratio", "name", "flag", "added", "note",
            ]),
            any::<bool>(),
        )
            .prop_map(|(field, negated)| TExpr::IsNull { field, negated });
        prop_oneof![
            2 => ordered_leaf("age", num_lit()),
            2 => ordered_leaf("big", num_lit()),
            2 => ordered_leaf("score", num_lit()),
            2 => ordered_leaf("ratio", num_lit()),
            2 => ordered_leaf("name", str_lit()),
            1 => ordered_leaf("added", num_lit()),
            1 => ordered_leaf("note", str_lit()),
            2 => bool_leaf,
            1 => is_null,
        ]
        .boxed()
    }

    fn expr() -> impl Strategy<Value = TExpr> {
        leaf().prop_recursive(4, 24, 4, |inner| {
            prop_oneof![
                (inner.clone(), any::<u8>()).prop_map(|(e, s)| TExpr::Not(Box::new(e), s)),
                (prop::collection::vec(inner.clone(), 2..4), any::<u8>())
                    .prop_map(|(t, s)| TExpr::And(t, s)),
                (prop::collection::vec(inner, 2..4), any::<u8>())
                    .prop_map(|(t, s)| TExpr::Or(t, s)),
            ]
        })
    }

    fn row() -> impl Strategy<Value = Row> {
        let ages = prop_oneof![
            -3i32..=3,
            prop::sample::select(vec![i32::MAX, i32::MIN, -100])
        ];
        let bigs = prop_oneof![
            -3i64..=3,
            prop::sample::select(vec![
                i64::MAX,
                i64::MIN,
                (1 << 53) + 1,
                9_223_372_036_854_775_000,
                i64::from(i32::MAX) + 1,
            ])
        ];
        let scores = prop::sample::select(vec![
            -2.0f32,
            -1.5,
            -0.0,
            0.0,
            0.1,
            1.0,
            1.5,
            2.5,
            f32::NAN,
            f32::INFINITY,
            f32::NEG_INFINITY,
            3.4e38,
            2147483648.0,
        ]);
        let ratios = prop::sample::select(vec![
            -2.0f64,
            -0.0,
            0.0,
            0.1,
            1.5,
            f64::NAN,
            f64::INFINITY,
            f64::NEG_INFINITY,
            1e20,
            9007199254740992.0,
            2147483647.5,
            -4.0,
        ]);
        let names = prop::sample::select(STRINGS).prop_map(str::to_string);
        (
            prop::option::weighted(0.75, ages),
            prop::option::weighted(0.75, bigs),
            prop::option::weighted(0.75, scores),
            prop::option::weighted(0.75, ratios),
            prop::option::weighted(0.75, names),
            prop::option::weighted(0.75, any::<bool>()),
        )
            .prop_map(|(age, big, score, ratio, name, flag)| Row {
                age,
                big,
                score,
                ratio,
                name,
                flag,
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn evaluate_matches_a_naive_row_by_row_evaluator(
            e in expr(),
            rows in prop::collection::vec(row(), 0..10),
        ) {
            let mut text = String::new();
            render(&e, 0, &mut text);
            let filter = Filter::parse(&text, &schema());
            prop_assert!(filter.is_ok(), "{text}: {:?}", filter.err());
            let filter = filter.unwrap();

            let mut want_fields = Vec::new();
            collect_fields(&e, &mut want_fields);
            prop_assert_eq!(filter.fields(), want_fields, "{}", text);

            let b = batch(&rows);
            let got = filter.evaluate(&b).unwrap();
            prop_assert_eq!(got.null_count(), 0);
            let want: Vec<bool> = rows.iter().map(|r| naive(&e, r) == Some(true)).collect();
            prop_assert_eq!(&got, &BooleanArray::from(want.clone()), "{}", text);

            if rows.len() >= 2 {
                let sliced = filter.evaluate(&b.slice(1, rows.len() - 1)).unwrap();
                prop_assert_eq!(sliced, BooleanArray::from(want[1..].to_vec()), "{}", text);
            }
        }
    }

    /// The test schema with a dynamic field `dyn`, and a filter over a batch of `docs` as both
    /// `meta` and `dyn`: the ids (1-based) of the rows an expression matches.
    fn json_docs(docs: &[Option<&str>]) -> (CollectionSchema, impl Fn(&str) -> Vec<i64>) {
        let mut schema = schema();
        schema.fields.push(FieldSchema {
            is_dynamic: true,
            ..field("dyn", DataType::Json, true)
        });
        let n = docs.len();
        let b = RecordBatch::try_from_iter([
            (
                "id",
                Arc::new(Int64Array::from_iter_values(1..=n as i64)) as ArrayRef,
            ),
            (
                "meta",
                Arc::new(StringArray::from(docs.to_vec())) as ArrayRef,
            ),
            (
                "dyn",
                Arc::new(StringArray::from(docs.to_vec())) as ArrayRef,
            ),
        ])
        .unwrap();
        let parse_with = schema.clone();
        let ids = move |expr: &str| -> Vec<i64> {
            let f = Filter::parse(expr, &parse_with).unwrap_or_else(|e| panic!("{expr}: {e}"));
            let mask = f.evaluate(&b).unwrap();
            (0..n)
                .filter(|&i| mask.is_valid(i) && mask.value(i))
                .map(|i| i as i64 + 1)
                .collect()
        };
        (schema, ids)
    }

    /// Keys of a JSON field, and of the dynamic field by bare name: read as the literal asks;
    /// a value of another JSON type is not equal to the literal (`==` and `in` false, `!=`
    /// and `not in` true, as Milvus answers) and unknown to an order comparison, `like` and
    /// arithmetic; a missing value (or not an object, or JSON null) is null.
    #[test]
    fn json_keys_and_dynamic_fields_filter_by_the_literal_type() {
        let (schema, ids) = json_docs(&[
            Some(r#"{"color": "red", "n": 5, "ok": true, "dims": {"w": 3, "tags": {"x": "y"}}}"#),
            Some(r#"{"color": "blue", "n": 2.5}"#),
            Some(r#"{"color": 7, "n": "5"}"#),
            Some("[1, 2]"),
            None,
            Some(r#"{"color": null}"#),
        ]);
        assert_eq!(ids(r#"meta["color"] == "red""#), [1]);
        assert_eq!(
            ids(r#"meta["color"] != "red""#),
            [2, 3],
            "7 is not \"red\"; a null color is unknown"
        );
        assert_eq!(ids(r#"not (meta["color"] == "red")"#), [2, 3]);
        assert_eq!(ids(r#""red" != meta["color"]"#), [2, 3]);
        assert_eq!(ids(r#"meta["color"] == 7"#), [3]);
        assert_eq!(ids(r#"meta["color"] != 7"#), [1, 2]);
        assert_eq!(ids(r#"meta["n"] != 5"#), [2, 3], "\"5\" is a string");
        assert_eq!(ids(r#"meta["n"] != true"#), [1, 2, 3]);
        assert_eq!(ids(r#"meta["n"] in [true]"#), Vec::<i64>::new());
        assert_eq!(ids(r#"meta["n"] not in [true]"#), [1, 2, 3]);
        assert_eq!(
            ids(r#"not (meta["n"] > 2)"#),
            Vec::<i64>::new(),
            "ordered: unknown"
        );
        assert_eq!(ids(r#"meta["dims"] != 3"#), [1], "an object is not 3");
        assert_eq!(ids(r#"color != "red" and n != 2.5"#), [3]);
        // Booleans and numbers: true and false are 1 and 0; 1 and 0 are true and false.
        let (_, flags) = json_docs(&[
            Some(r#"{"k": 1}"#),
            Some(r#"{"k": 0}"#),
            Some(r#"{"k": 2.5}"#),
            Some(r#"{"k": true}"#),
            Some(r#"{"k": false}"#),
            Some(r#"{"k": 1.0}"#),
            Some(r#"{"k": "true"}"#),
        ]);
        assert_eq!(flags(r#"meta["k"] == true"#), [1, 4, 6]);
        assert_eq!(flags(r#"meta["k"] != true"#), [2, 3, 5, 7]);
        assert_eq!(flags(r#"meta["k"] == false"#), [2, 5]);
        assert_eq!(flags(r#"meta["k"] == 1"#), [1, 4, 6]);
        assert_eq!(flags(r#"meta["k"] > 0"#), [1, 3, 4, 6]);
        assert_eq!(flags(r#"meta["k"] < 1"#), [2, 5]);
        assert_eq!(flags(r#"meta["k"] + 1 == 2"#), [1, 4, 6]);
        let err = Filter::parse(r#"meta["n"] in [1, "a"]"#, &schema).unwrap_err();
        assert!(
            err.message
                .contains("JSON field \"meta\" is read as DOUBLE"),
            "{err}"
        );
        assert_eq!(ids(r#"meta["n"] > 2"#), [1, 2]);
        assert_eq!(ids(r#"3 <= meta["n"]"#), [1]);
        assert_eq!(ids(r#"meta["n"] in [2.5, 9]"#), [2]);
        assert_eq!(
            ids(r#"meta["n"] not in ["5"]"#),
            [1, 2],
            "#3's n is \"5\"; the others are numbers"
        );
        assert_eq!(ids(r#"meta["ok"] == true"#), [1]);
        assert_eq!(ids(r#"meta["color"] is null"#), [4, 5, 6]);
        assert_eq!(ids(r#"meta["color"] is not null"#), [1, 2, 3]);
        // The dynamic field answers for names that are not fields.
        assert_eq!(ids(r#"color == "red" or n == 2.5"#), [1, 2]);
        assert_eq!(ids(r#"color in ["red", "blue"] and id > 1"#), [2]);
        // `$meta` is Milvus's name for the dynamic field itself.
        assert_eq!(ids(r#"$meta["color"] == "red""#), [1]);
        assert_eq!(ids(r#"$meta["dims"]["w"] == 3"#), [1]);
        assert_eq!(ids(r#"exists $meta["color"]"#), [1, 2, 3]);
        assert_eq!(
            ids(r#"json_contains($meta["color"], 7)"#),
            Vec::<i64>::new()
        );
        for bad in [r#"$metax["color"] == 1"#, r#"$other["color"] == 1"#] {
            let err = Filter::parse(bad, &schema).unwrap_err();
            assert!(err.message.contains("unexpected character"), "{bad}: {err}");
        }
        assert_eq!(
            Filter::parse(r#"color == "red""#, &schema)
                .unwrap()
                .fields(),
            ["dyn"]
        );
        // A field that is not JSON has no keys; a key must be a string.
        let err = Filter::parse(r#"age["x"] == 1"#, &schema).unwrap_err();
        assert!(err.message.contains("not JSON"), "{err}");
        let err = Filter::parse("meta[-1] == 1", &schema).unwrap_err();
        assert!(
            err.message.contains("string key or an array index"),
            "{err}"
        );
        let err = Filter::parse("meta[1.5] == 1", &schema).unwrap_err();
        assert!(
            err.message.contains("string key or an array index"),
            "{err}"
        );
        // An index steps into an array.
        assert_eq!(ids("meta[0] == 1"), [4]);
        assert_eq!(ids("meta[1] == 2 and meta[2] is null"), [4]);
        // Without a dynamic field an unknown name is an error, as before.
        let err = Filter::parse(r#"color == "red""#, &super::tests::schema()).unwrap_err();
        assert!(err.message.contains("unknown field"), "{err}");
        // Key paths reach into nested objects, of a JSON field or of a dynamic field's key.
        assert_eq!(ids(r#"meta["dims"]["w"] > 2"#), [1]);
        assert_eq!(ids(r#"dims["w"] == 3 and dims["tags"]["x"] == "y""#), [1]);
        assert_eq!(ids(r#"meta["dims"]["w"] is null"#), [2, 3, 4, 5, 6]);
        assert_eq!(ids(r#"meta["color"]["w"] == 1"#), Vec::<i64>::new());
        assert_eq!(ids(r#"meta["dims"]["tags"]["x"] like "y%""#), [1]);
        // `like` reads a key as a string (7 and null are not).
        assert_eq!(ids(r#"meta["color"] like "%e%""#), [1, 2]);
        assert_eq!(ids(r#"color like "b%" or n like "5""#), [2, 3]);
    }

    /// `text_match(field, 'terms')`: any of the terms (by the field's analyzer: lowercased,
    /// split on what is not a letter or digit, its stop words dropped), or at least
    /// `minimum_should_match` of them; never unknown; only on a field with enable_match.
    #[test]
    fn text_match_finds_rows_holding_the_terms_by_the_fields_analyzer() {
        let mut schema = schema();
        schema.fields.push(FieldSchema {
            enable_analyzer: true,
            enable_match: true,
            analyzer_params: r#"{"type": "standard", "stop_words": ["the"]}"#.into(),
            ..field("body", DataType::Varchar, true)
        });
        let bodies = [
            Some("The quick brown fox"),
            Some("lazy dogs, quick cats"),
            None,
            Some("BROWN-bread; the end"),
            Some(""),
        ];
        let body: ArrayRef = Arc::new(StringArray::from(bodies.to_vec()));
        let ids: ArrayRef = Arc::new(Int64Array::from_iter_values(1..=5));
        let batch = RecordBatch::try_new(
            Arc::new(Schema::new(vec![
                Field::new("id", ArrowType::Int64, false),
                Field::new("body", ArrowType::Utf8, true),
            ])),
            vec![ids, body],
        )
        .unwrap();
        let ids = |expr: &str| -> Vec<i64> {
            let filter = Filter::parse(expr, &schema).unwrap_or_else(|e| panic!("{expr}: {e}"));
            let mask = filter.evaluate(&batch).unwrap();
            assert_eq!(mask.null_count(), 0, "{expr}");
            (0..mask.len())
                .filter(|&i| mask.value(i))
                .map(|i| i as i64 + 1)
                .collect()
        };
        assert_eq!(ids("text_match(body, 'quick')"), [1, 2]);
        assert_eq!(ids("TEXT_MATCH(body, 'Brown dogs')"), [1, 2, 4]);
        assert_eq!(
            ids("text_match(body, 'the')"),
            Vec::<i64>::new(),
            "a stop word"
        );
        assert_eq!(ids("not text_match(body, 'quick')"), [3, 4, 5]);
        assert_eq!(
            ids("text_match(body, 'quick brown fox', minimum_should_match=2)"),
            [1]
        );
        assert_eq!(
            ids("text_match(body, 'quick cats', minimum_should_match = 2) or id == 5"),
            [2, 5]
        );
        assert_eq!(ids("text_match(body, '!!')"), Vec::<i64>::new());
        assert_eq!(ids("phrase_match(body, 'quick brown')"), [1]);
        assert_eq!(ids("PHRASE_MATCH(body, 'brown quick', 2)"), [1]);
        assert_eq!(
            ids("phrase_match(body, 'quick fox', 1) or phrase_match(body, 'brown bread')"),
            [1, 4]
        );
        assert_eq!(ids("not phrase_match(body, 'quick cats')"), [1, 3, 4, 5]);
        for (bad, why) in [
            ("text_match(name, 'x')", "enable_match"),
            ("text_match(body, 3)", "takes a string"),
            ("text_match(body 'x')", "expected ','"),
            (
                "text_match(body, 'x', minimum_should_match=0)",
                "at least 1",
            ),
            ("text_match(body, 'x', other=2)", "is not an operator"),
            ("text_match(body, 'x', id)", "minimum_should_match"),
            ("text_match(body, 'x'", "expected ')'"),
            ("age = 3", "use '=='"),
            ("phrase_match(body, 'x', -1)", "the slop"),
            ("phrase_match(body, 'x', 'y')", "the slop"),
            ("phrase_match(name, 'x')", "enable_match"),
        ] {
            let e = Filter::parse(bad, &schema).expect_err(bad).to_string();
            assert!(e.contains(why), "{bad}: {e}");
        }
    }

    /// `phrase_match(field, 'phrase', slop)`: the terms in order and side by side, or within
    /// the slop as Lucene counts it (a word between costs 1, two terms swapped 2); a term given
    /// twice needs two positions; stop words keep their places.
    #[test]
    fn phrase_match_finds_the_terms_in_order_within_the_slop() {
        use sluice_types::text::Analyzer;
        let a = Analyzer::from_params(r#"{"type": "standard", "stop_words": ["the"]}"#).unwrap();
        let holds = |doc: &str, phrase: &str, slop: usize| {
            let terms: Vec<(String, usize)> = a
                .tokens(phrase)
                .into_iter()
                .map(|t| (t.text, t.position))
                .collect();
            holds_phrase(&a.tokens(doc), &terms, slop)
        };
        assert!(holds(
            "machine learning boosts efficiency",
            "machine learning",
            0
        ));
        assert!(!holds("machine deep learning", "machine learning", 0));
        assert!(holds("machine deep learning", "machine learning", 1));
        assert!(!holds("learning machine", "machine learning", 1));
        assert!(holds("learning machine", "machine learning", 2));
        assert!(holds("x learning machine", "machine learning", 2));
        assert!(!holds("machine x y learning", "machine learning", 1));
        assert!(holds("Machine-Learning!", "MACHINE learning", 0));
        // The stop word keeps its place, in the text and in the phrase.
        assert!(holds("end of the road", "of the road", 0));
        assert!(holds("end of the road", "of road", 1));
        assert!(!holds("end of the road", "of road", 0));
        // A term given twice needs two positions.
        assert!(!holds("go now", "go go", 5));
        assert!(holds("go go now", "go go", 0));
        assert!(holds("go now go", "go go", 1));
        assert!(!holds("go now go", "go go now", 0));
        assert!(holds("go now go", "go now go", 0));
        assert!(!holds("anything", "the", 3), "no term");
        assert!(!holds("machine", "machine learning", 9));
    }

    /// `field OP number CMP number`: exact on integers (truncating `/`, `%` with the dividend's
    /// sign), f64 otherwise; nulls stay unknown.
    #[test]
    fn arithmetic_on_a_field_before_a_comparison() {
        // ages 10, null, 30, -5, i32::MAX; bigs 1, MAX, null, MIN, -7; ratios 2.5, null, 0.1,
        // -1e300, 0.0; scores 1.5, -0.0, null, NaN, 0.1.
        check(&[
            ("age + 5 == 15", &[1]),
            ("age - 5 == 25", &[3]),
            ("age-5 == -10", &[4]),
            ("age * 2 > 50", &[3, 5]),
            ("age / 3 == 3", &[1]),
            ("age / 3 == -1", &[4]),
            ("age % 2 == 0", &[1, 3]),
            ("age % 2 == -1", &[4]),
            ("age % 2 != 0", &[4, 5]),
            ("age * 2.5 == 25", &[1]),
            ("big + 1 < 0", &[4, 5]),
            ("big * 2 > 0", &[1, 2]),
            ("big - 1 == 9223372036854775806", &[2]),
            ("ratio * 2 == 5", &[1]),
            ("ratio / 2 > 0.01", &[1, 3]),
            ("score + 1 > 1", &[1, 5]),
            ("score * 0 != 0", &[4]),
            ("not (age + 1 > 20)", &[1, 4]),
            ("age + -5 == 5", &[1]),
            ("age >= -5 and age - -5 == 0", &[4]),
            // Parenthesized, as Milvus takes it too.
            ("(age + 5) == 15", &[1]),
            ("(age % 2) != 0", &[4, 5]),
            ("(age - -5) == 0 or (big * 2) > 0", &[1, 2, 4]),
            ("not ((age + 1) > 20)", &[1, 4]),
            ("((age + 5) == 15)", &[1]),
            ("(age + 1 > 20)", &[3, 5]),
            ("(age + 1 > 20) and (age / 3 == 10)", &[3]),
        ]);
        for (bad, why) in [
            ("age / 0 == 1", "by zero"),
            ("age % 0 == 1", "by zero"),
            ("ratio % 2 == 1", "'%' takes an integer"),
            ("age % 1.5 == 1", "'%' takes an integer"),
            ("name + 1 == 2", "numeric field"),
            ("age + big == 2", "arithmetic between fields"),
            ("age + 1 + 1 == 2", "comparison operator"),
            ("age + 1 == 2 + 1", "one arithmetic operation"),
            ("age + 1 == big", "must be a number"),
            (r#"age + "1" == 2"#, "must be a number"),
            ("age + 1", "comparison operator"),
            ("30 < age * 2", "expected"),
            ("(age + 1) + 1 == 2", "comparison operator"),
            ("(age + 1 == 2", "expected ')'"),
            ("(age / 0) == 1", "by zero"),
            ("(name + 1) == 2", "numeric field"),
            ("(age + 1)", "comparison operator"),
        ] {
            let err = parse_err(bad);
            assert!(err.message.contains(why), "{bad}: {err}");
        }
    }

    /// Milvus's JSON functions over a JSON field's values, a dynamic field's keys and the JSON
    /// field itself; `exists`; `is null` on the JSON field itself.
    #[test]
    fn json_functions_exists_and_indexes() {
        let (schema, ids) = json_docs(&[
            Some(r#"{"tags": ["a", "b"], "nums": [1, 2.0, 3], "n": null}"#),
            Some(r#"{"tags": ["c"], "nums": [], "deep": {"list": [["x"], 1]}}"#),
            Some(r#"{"tags": "a", "nums": [5]}"#),
            None,
            Some("null"),
            Some(r#"["a", 1]"#),
        ]);
        assert_eq!(ids(r#"json_contains(meta["tags"], "a")"#), [1]);
        assert_eq!(ids(r#"JSON_CONTAINS(tags, "c")"#), [2], "a dynamic key");
        assert_eq!(ids(r#"json_contains(meta, "a")"#), [6], "the field itself");
        assert_eq!(ids(r#"json_contains(meta["nums"], 2)"#), [1], "2 == 2.0");
        assert_eq!(ids(r#"array_contains(nums, 5)"#), [3]);
        assert_eq!(ids(r#"json_contains(meta["deep"]["list"], ["x"])"#), [2]);
        assert_eq!(
            ids(r#"json_contains_any(meta["tags"], ["b", "c"])"#),
            [1, 2]
        );
        assert_eq!(ids(r#"json_contains_all(meta["tags"], ["a", "b"])"#), [1]);
        assert_eq!(
            ids(r#"json_contains_all(meta["tags"], [])"#),
            [1, 2],
            "arrays only"
        );
        assert_eq!(
            ids(r#"json_contains_any(meta["tags"], [])"#),
            Vec::<i64>::new()
        );
        assert_eq!(
            ids(r#"not json_contains(meta["tags"], "a")"#),
            [2, 3, 4, 5, 6],
            "a missing value holds nothing"
        );
        assert_eq!(ids(r#"array_length(meta["nums"]) == 3"#), [1]);
        assert_eq!(ids(r#"array_length(nums) < 2"#), [2, 3]);
        assert_eq!(ids(r#"array_length(meta) >= 2"#), [6]);
        assert_eq!(
            ids(r#"exists meta["n"]"#),
            Vec::<i64>::new(),
            "a key holding JSON null does not exist, as in Milvus"
        );
        assert_eq!(ids(r#"exists meta["nums"]"#), [1, 2, 3]);
        assert_eq!(ids(r#"not exists meta["n"]"#), [1, 2, 3, 4, 5, 6]);
        assert_eq!(ids(r#"exists deep["list"] or exists meta["zz"]"#), [2]);
        assert_eq!(ids("meta is null"), [4, 5]);
        assert_eq!(ids("meta is not null"), [1, 2, 3, 6]);
        assert_eq!(ids(r#"meta["deep"]["list"][0][0] == "x""#), [2]);
        for (bad, why) in [
            (r#"json_contains(meta["tags"])"#, "expected ','"),
            (r#"json_contains_any(meta["tags"], "a")"#, "takes a list"),
            (r#"json_contains(age, 1)"#, "not JSON"),
            (r#"array_length(meta["nums"]) == "3""#, "with an integer"),
            (r#"json_frob(meta, 1)"#, "unknown function"),
            ("exists meta", "takes a key"),
            (r#"json_contains(meta["tags"], "a""#, "expected ')'"),
        ] {
            let err = Filter::parse(bad, &schema).unwrap_err();
            assert!(err.message.contains(why), "{bad}: {err}");
        }
        // List literals nest no deeper than parentheses.
        let deep = format!(
            "json_contains(meta, {}1{})",
            "[".repeat(200),
            "]".repeat(200)
        );
        let err = Filter::parse(&deep, &schema).unwrap_err();
        assert!(err.message.contains("nested more than"), "{err}");
    }

    /// A JSON document with keys from a small set (one of them needs escapes, so that steps
    /// meet repeated and escaped keys).
    fn json_doc() -> impl Strategy<Value = serde_json::Value> {
        use serde_json::Value;
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            (-5i64..5).prop_map(Value::from),
            (-5i32..5).prop_map(|x| Value::from(f64::from(x) / 2.0)),
            "[ab\"]{0,3}".prop_map(Value::from),
        ];
        leaf.prop_recursive(3, 24, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                prop::collection::vec(
                    (prop::sample::select(vec!["a", "b", "a\"b\n"]), inner),
                    0..4
                )
                .prop_map(|kv| Value::Object(
                    kv.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()
                )),
            ]
        })
    }

    fn json_step() -> impl Strategy<Value = Step> {
        prop_oneof![
            prop::sample::select(vec!["a", "b", "a\"b\n", "c"]).prop_map(|k| Step::Key(k.into())),
            (0usize..4).prop_map(Step::Index),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        /// Reading a path from the text finds what navigating the parsed document finds.
        #[test]
        fn json_at_finds_what_the_parsed_document_holds(
            doc in json_doc(),
            path in prop::collection::vec(json_step(), 0..4),
            pretty in any::<bool>(),
        ) {
            let text = if pretty {
                serde_json::to_string_pretty(&doc).unwrap()
            } else {
                doc.to_string()
            };
            let mut want = Some(&doc);
            for step in &path {
                want = want.and_then(|v| match step {
                    Step::Key(k) => v.get(k.as_str()),
                    Step::Index(i) => v.get(*i),
                });
            }
            let got = json_at(&text, &path)
                .map(|t| serde_json::from_str::<serde_json::Value>(t).unwrap());
            prop_assert_eq!(got.as_ref(), want, "{} at {:?}", text, path);
        }
    }

    /// A repeated key means its last value; text that is not JSON, or breaks off after the
    /// value found, finds nothing.
    #[test]
    fn json_at_takes_the_last_repeated_key_and_refuses_bad_text() {
        let key = |k: &str| Step::Key(k.into());
        assert_eq!(json_at(r#"{"a": 1, "a": [2]}"#, &[key("a")]), Some("[2]"));
        assert_eq!(json_at(r#"{"a\u0062": 3}"#, &[key("ab")]), Some("3"));
        assert_eq!(json_at(r#"{"a": 1, "b": }"#, &[key("a")]), None);
        assert_eq!(json_at(r#"[1, 2"#, &[Step::Index(0)]), None);
        assert_eq!(json_at(r#"{"a": 1} x"#, &[]), None);
        assert_eq!(json_at("not json", &[]), None);
    }

    /// The JSON functions over a JSON field itself read its text as it is stored: text that
    /// is not JSON (never written by an insert, which checks it) holds nothing, as a null does.
    #[test]
    fn json_functions_over_the_field_itself_treat_bad_text_as_null() {
        let (_, ids) = json_docs(&[
            Some(r#"["a", 1]"#),
            Some("not json"),
            None,
            Some(r#"["a"#),
            Some(r#"{"a": 1}"#),
        ]);
        assert_eq!(ids(r#"json_contains(meta, "a")"#), [1]);
        assert_eq!(ids(r#"not json_contains(meta, "a")"#), [2, 3, 4, 5]);
        assert_eq!(ids(r#"json_contains_any(dyn, ["b", 1])"#), [1]);
        assert_eq!(ids(r#"array_length(meta) >= 0"#), [1]);
        assert_eq!(ids(r#"not (array_length(meta) >= 0)"#), Vec::<i64>::new());
    }

    #[test]
    fn like_matches_patterns_of_varchar_values() {
        check(&[
            ("name like 'alice'", &[1]),
            ("name like 'ALICE'", &[]),
            ("name like 'a%'", &[1]),
            ("name like '%b'", &[2]),
            ("name like '%o%'", &[2]),
            ("name like '_ob'", &[2]),
            ("name like '___'", &[2]),
            ("name like '%'", &[1, 2, 4, 5]),
            ("name like ''", &[5]),
            ("name LIKE 'a%' or name like 'b%'", &[1, 2]),
            // A null value matches no pattern, and `not` keeps it out.
            ("not (name like 'a%')", &[2, 4, 5]),
            // Regular-expression characters are themselves; `\` escapes % and _.
            (r#"name like "it's \"q\"""#, &[4]),
            (r#"name like "it.s%""#, &[]),
            (r#"name like "%\\%%""#, &[]),
            (r#"name like "al\\ice""#, &[1]),
        ]);
        let mut schema = schema();
        schema.fields.push(field("pct", DataType::Varchar, true));
        let b = RecordBatch::try_from_iter([(
            "pct",
            Arc::new(StringArray::from(vec!["50%", "5_0", "500"])) as ArrayRef,
        )])
        .unwrap();
        let ids = |expr: &str| -> Vec<usize> {
            let mask = Filter::parse(expr, &schema).unwrap().evaluate(&b).unwrap();
            (0..3).filter(|&i| mask.value(i)).collect()
        };
        assert_eq!(ids(r#"pct like "%\\%""#), [0]);
        assert_eq!(ids(r#"pct like "5\\_0""#), [1]);
        assert_eq!(ids(r#"pct like "5_0""#), [1, 2]);
        check_err("age like '1%'", 4, "like", "VARCHAR values only");
        check_err("name like 5", 10, "5", "string pattern");
        check_err("name like", 9, "", "string pattern");
        check_err(r#"name like "a\\""#, 10, r#""a\\""#, "lone backslash");
    }
}
