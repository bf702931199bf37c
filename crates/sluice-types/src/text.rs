//! Full-text search's vocabulary: the analyzer that splits a VARCHAR field's text into terms
//! (Milvus's `analyzer_params`), the 32-bit term ids a BM25 function's sparse output is keyed
//! by, and Okapi BM25's parts (term statistics, IDF, a row's term weight).
//!
//! The standard tokenizer takes maximal runs of Unicode letters and digits (`char::
//! is_alphanumeric`), as Milvus's default `standard` tokenizer does; the standard analyzer adds
//! the lowercase filter; the english analyzer adds the Snowball English stemmer and English
//! stop words after it, as Milvus's does. Filters apply in the order given.

use std::collections::HashSet;

use rust_stemmers::Algorithm;
use serde_json::Value;

/// Analyzer parameters that are not valid.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("analyzer_params: {0}")]
pub struct AnalyzerError(pub String);

fn bad(what: impl Into<String>) -> AnalyzerError {
    AnalyzerError(what.into())
}

/// English stop words (`_english_`; the english analyzer's), as Milvus lists them.
pub const ENGLISH_STOP_WORDS: &[&str] = &[
    "a", "an", "and", "are", "as", "at", "be", "but", "by", "for", "if", "in", "into", "is", "it",
    "no", "not", "of", "on", "or", "such", "that", "the", "their", "then", "there", "these",
    "they", "this", "to", "was", "will", "with",
];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Tokenizer {
    /// Runs of letters and digits.
    Standard,
    /// Runs of characters other than white space.
    Whitespace,
}

/// One step terms go through, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Filter {
    Lowercase,
    /// Drops these terms.
    Stop(HashSet<String>),
    /// Drops terms longer than this many characters.
    Length(usize),
    /// Snowball stemming.
    Stemmer(Algorithm),
}

/// A term of a text and where it is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Token {
    /// The term (after the filters).
    pub text: String,
    /// Its first byte in the text.
    pub start: usize,
    /// The byte after its last.
    pub end: usize,
    /// Its place among the tokenizer's tokens, from 0.
    pub position: usize,
}

/// Splits text into terms.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Analyzer {
    tokenizer: Tokenizer,
    filters: Vec<Filter>,
}

impl Default for Analyzer {
    /// The standard analyzer: the standard tokenizer and the lowercase filter.
    fn default() -> Self {
        Analyzer {
            tokenizer: Tokenizer::Standard,
            filters: vec![Filter::Lowercase],
        }
    }
}

/// A stop word list: words, and `_english_` for the English list.
fn stop_words(list: &Value) -> Result<HashSet<String>, AnalyzerError> {
    let words = list
        .as_array()
        .ok_or_else(|| bad("stop_words must be a list of words"))?;
    let mut out = HashSet::new();
    for w in words {
        match w.as_str() {
            Some("_english_") => out.extend(ENGLISH_STOP_WORDS.iter().map(|w| (*w).to_owned())),
            // Milvus's other named lists (`_french_`, ...).
            Some(s) if s.len() > 2 && s.starts_with('_') && s.ends_with('_') => {
                return Err(bad(format!(
                    "the stop word list {s} is not supported (_english_ is): give the words"
                )));
            }
            Some(s) => {
                out.insert(s.to_owned());
            }
            None => return Err(bad("stop_words must be a list of words")),
        }
    }
    Ok(out)
}

/// The Snowball stemmer for a language, as Milvus names them.
fn stemmer(language: &str) -> Result<Algorithm, AnalyzerError> {
    Ok(match language.to_ascii_lowercase().as_str() {
        "arabic" => Algorithm::Arabic,
        "danish" => Algorithm::Danish,
        "dutch" => Algorithm::Dutch,
        "english" => Algorithm::English,
        "finnish" => Algorithm::Finnish,
        "french" => Algorithm::French,
        "german" => Algorithm::German,
        "greek" => Algorithm::Greek,
        "hungarian" => Algorithm::Hungarian,
        "italian" => Algorithm::Italian,
        "norwegian" => Algorithm::Norwegian,
        "portuguese" => Algorithm::Portuguese,
        "romanian" => Algorithm::Romanian,
        "russian" => Algorithm::Russian,
        "spanish" => Algorithm::Spanish,
        "swedish" => Algorithm::Swedish,
        "tamil" => Algorithm::Tamil,
        "turkish" => Algorithm::Turkish,
        other => return Err(bad(format!("no stemmer for the language {other:?}"))),
    })
}

/// One entry of a custom analyzer's `filter` list.
fn filter(f: &Value) -> Result<Filter, AnalyzerError> {
    let unsupported = || {
        bad(format!(
            "the filter {f} is not supported (\"lowercase\", stop, length and stemmer are)"
        ))
    };
    match f {
        Value::String(s) if s == "lowercase" => Ok(Filter::Lowercase),
        Value::Object(o) => match o.get("type").and_then(Value::as_str) {
            Some("lowercase") => Ok(Filter::Lowercase),
            Some("stop") => Ok(Filter::Stop(stop_words(
                o.get("stop_words")
                    .ok_or_else(|| bad("a stop filter needs stop_words"))?,
            )?)),
            Some("length") => {
                let max = o
                    .get("max")
                    .and_then(Value::as_u64)
                    .filter(|&m| m > 0)
                    .ok_or_else(|| bad("a length filter needs a positive max"))?;
                Ok(Filter::Length(usize::try_from(max).unwrap_or(usize::MAX)))
            }
            Some("stemmer") => Ok(Filter::Stemmer(stemmer(
                o.get("language")
                    .and_then(Value::as_str)
                    .ok_or_else(|| bad("a stemmer filter needs a language"))?,
            )?)),
            _ => Err(unsupported()),
        },
        _ => Err(unsupported()),
    }
}

impl Analyzer {
    /// The analyzer `params` (a JSON object, Milvus's `analyzer_params`; empty: the standard
    /// analyzer) describe: a built-in analyzer, `{"type": "standard" | "english",
    /// "stop_words": [...]}`, or `{"tokenizer": "standard" | "whitespace", "filter": [...]}`
    /// with the filters `"lowercase"`, `{"type": "stop", "stop_words": [...]}` (`_english_`
    /// names the English list), `{"type": "length", "max": n}` and `{"type": "stemmer",
    /// "language": "english"}` (Snowball's languages). Anything else is refused.
    pub fn from_params(params: &str) -> Result<Analyzer, AnalyzerError> {
        if params.trim().is_empty() {
            return Ok(Analyzer::default());
        }
        let v: Value =
            serde_json::from_str(params).map_err(|e| bad(format!("not JSON ({e}): {params}")))?;
        let obj = v
            .as_object()
            .ok_or_else(|| bad(format!("a JSON object expected, not {params}")))?;
        if obj.is_empty() {
            return Ok(Analyzer::default());
        }
        if let Some(ty) = obj.get("type") {
            if let Some(k) = obj
                .keys()
                .find(|k| !matches!(k.as_str(), "type" | "stop_words"))
            {
                return Err(bad(format!("a built-in analyzer takes no {k:?}")));
            }
            let mut filters = vec![Filter::Lowercase];
            match ty.as_str() {
                Some("standard") => {}
                Some("english") => {
                    filters.push(Filter::Stemmer(Algorithm::English));
                    filters.push(Filter::Stop(
                        ENGLISH_STOP_WORDS.iter().map(|w| (*w).to_owned()).collect(),
                    ));
                }
                _ => {
                    return Err(bad(format!(
                        "the built-in analyzer {ty} is not supported (\"standard\" and \
                         \"english\" are)"
                    )));
                }
            }
            if let Some(list) = obj.get("stop_words") {
                filters.push(Filter::Stop(stop_words(list)?));
            }
            return Ok(Analyzer {
                tokenizer: Tokenizer::Standard,
                filters,
            });
        }
        if let Some(k) = obj
            .keys()
            .find(|k| !matches!(k.as_str(), "tokenizer" | "filter"))
        {
            return Err(bad(format!("unknown key {k:?}")));
        }
        let tokenizer = match obj.get("tokenizer") {
            None => return Err(bad("a custom analyzer needs a tokenizer")),
            Some(t) => {
                let name = match t {
                    Value::String(s) => Some(s.as_str()),
                    Value::Object(o) if o.len() == 1 => o.get("type").and_then(Value::as_str),
                    _ => None,
                };
                match name {
                    Some("standard") => Tokenizer::Standard,
                    Some("whitespace") => Tokenizer::Whitespace,
                    _ => {
                        return Err(bad(format!(
                            "the tokenizer {t} is not supported (\"standard\" and \
                             \"whitespace\" are)"
                        )));
                    }
                }
            }
        };
        let filters = match obj.get("filter") {
            None => Vec::new(),
            Some(Value::Array(list)) => list.iter().map(filter).collect::<Result<_, _>>()?,
            Some(other) => return Err(bad(format!("filter must be a list, not {other}"))),
        };
        Ok(Analyzer { tokenizer, filters })
    }

    /// The terms of `text`, in order, each as often as it occurs.
    pub fn terms(&self, text: &str) -> Vec<String> {
        self.tokens(text).into_iter().map(|t| t.text).collect()
    }

    /// The terms of `text` with where each is: its byte range in `text` and its position among
    /// the tokenizer's tokens (a token a filter drops leaves a gap).
    pub fn tokens(&self, text: &str) -> Vec<Token> {
        let mut out = Vec::new();
        self.each_term(text, |term, start, end, position| {
            out.push(Token {
                text: term.to_owned(),
                start,
                end,
                position,
            });
            true
        });
        out
    }

    /// Calls `f(term, start, end, position)` for each term of `text`, in order (as
    /// [`Analyzer::tokens`] lists them, without keeping them), until it returns false.
    pub fn each_term(&self, text: &str, mut f: impl FnMut(&str, usize, usize, usize) -> bool) {
        let word = |c: char| match self.tokenizer {
            Tokenizer::Standard => c.is_alphanumeric(),
            Tokenizer::Whitespace => !c.is_whitespace(),
        };
        let mut term = String::new();
        let mut position = 0;
        let mut start = None;
        // A trailing sentinel ends the last run.
        for (i, c) in text.char_indices().chain([(text.len(), ' ')]) {
            match (word(c) && i < text.len(), start) {
                (true, None) => start = Some(i),
                (false, Some(s)) => {
                    start = None;
                    let keep = self.filter_into(&text[s..i], &mut term);
                    if keep && !f(&term, s, i, position) {
                        return;
                    }
                    position += 1;
                }
                _ => {}
            }
        }
    }

    /// `raw` through the filters, into `term`; false when a filter drops it.
    fn filter_into(&self, raw: &str, term: &mut String) -> bool {
        term.clear();
        term.push_str(raw);
        for f in &self.filters {
            match f {
                // ASCII without capitals is its own lowercase: no copy.
                Filter::Lowercase => {
                    if !term
                        .bytes()
                        .all(|b| b.is_ascii() && !b.is_ascii_uppercase())
                    {
                        *term = term.to_lowercase();
                    }
                }
                Filter::Stop(words) if words.contains(term.as_str()) => return false,
                Filter::Length(max) if term.chars().count() > *max => return false,
                Filter::Stemmer(algorithm) => {
                    let stemmed = rust_stemmers::Stemmer::create(*algorithm)
                        .stem(term)
                        .into_owned();
                    *term = stemmed;
                }
                Filter::Stop(_) | Filter::Length(_) => {}
            }
        }
        true
    }

    /// `text`'s term frequencies keyed by [`term_id`], by increasing id: a BM25 function's
    /// output row (and a text query's terms).
    pub fn term_frequencies(&self, text: &str) -> Vec<(u32, f32)> {
        let mut ids: Vec<u32> = Vec::new();
        self.each_term(text, |term, _, _, _| {
            ids.push(term_id(term));
            true
        });
        ids.sort_unstable();
        let mut out: Vec<(u32, f32)> = Vec::new();
        for id in ids {
            match out.last_mut() {
                Some((last, n)) if *last == id => *n += 1.0,
                _ => out.push((id, 1.0)),
            }
        }
        out
    }
}

/// A term's 32-bit id: FNV-1a of its UTF-8 bytes.
pub fn term_id(term: &str) -> u32 {
    term.bytes().fold(0x811c_9dc5u32, |h, b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    })
}

/// BM25's default `k1` (term frequency saturation), as Milvus's.
pub const DEFAULT_BM25_K1: f32 = 1.2;
/// BM25's default `b` (document length normalization), as Milvus's.
pub const DEFAULT_BM25_B: f32 = 0.75;

/// Checks BM25's `k1` (0–3; Milvus advises 1.2–2) and `b` (0–1).
pub fn check_bm25_params(k1: f32, b: f32) -> Result<(), String> {
    if !(0.0..=3.0).contains(&k1) {
        return Err(format!("bm25_k1 {k1}: it must be in [0, 3]"));
    }
    if !(0.0..=1.0).contains(&b) {
        return Err(format!("bm25_b {b}: it must be in [0, 1]"));
    }
    Ok(())
}

/// A term's inverse document frequency among `rows` rows, `with_term` of which hold it:
/// `ln(1 + (N − n + 0.5) / (n + 0.5))`.
pub fn idf(rows: u64, with_term: u64) -> f32 {
    let (n, q) = (rows as f64, with_term as f64);
    (1.0 + (n - q + 0.5) / (q + 0.5)).ln() as f32
}

/// A row's weight for a term it holds `tf` times, the row holding `len` terms in all where
/// rows hold `avgdl` on average: `tf · (k1 + 1) / (tf + k1 · (1 − b + b · len / avgdl))`.
pub fn tf_weight(tf: f32, len: f32, avgdl: f32, k1: f32, b: f32) -> f32 {
    let norm = if avgdl > 0.0 { len / avgdl } else { 1.0 };
    tf * (k1 + 1.0) / (tf + k1 * (1.0 - b + b * norm))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_standard_analyzer_splits_on_what_is_not_a_letter_or_digit_and_lowercases() {
        let a = Analyzer::default();
        assert_eq!(
            a.terms("The 2 QUICK Brown-Foxes dog's 32.3 Straße_x"),
            [
                "the", "2", "quick", "brown", "foxes", "dog", "s", "32", "3", "straße", "x"
            ]
        );
        assert!(a.terms("  --  ").is_empty());
        assert_eq!(Analyzer::from_params("").unwrap(), a);
        assert_eq!(Analyzer::from_params("{}").unwrap(), a);
        assert_eq!(Analyzer::from_params(r#"{"type": "standard"}"#).unwrap(), a);
    }

    #[test]
    fn custom_analyzers_take_their_tokenizer_and_filters() {
        let plain = Analyzer::from_params(r#"{"tokenizer": "standard"}"#).unwrap();
        assert_eq!(plain.terms("Hello World"), ["Hello", "World"]);
        let ws = Analyzer::from_params(
            r#"{"tokenizer": {"type": "whitespace"}, "filter": ["lowercase",
                {"type": "stop", "stop_words": ["a", "the"]}, {"type": "length", "max": 5}]}"#,
        )
        .unwrap();
        assert_eq!(ws.terms("The cat-dog ate A banana!"), ["ate"]);
        let stop = Analyzer::from_params(r#"{"type": "standard", "stop_words": ["of"]}"#).unwrap();
        assert_eq!(stop.terms("Out of Order"), ["out", "order"]);
        let tokens = stop.tokens("Out of Ordér!");
        assert_eq!(
            tokens
                .iter()
                .map(|t| (t.text.as_str(), t.start, t.end, t.position))
                .collect::<Vec<_>>(),
            [("out", 0, 3, 0), ("ordér", 7, 13, 2)]
        );
    }

    #[test]
    fn unknown_analyzer_params_are_refused() {
        for bad in [
            "[1]",
            "not json",
            r#"{"type": "chinese"}"#,
            r#"{"tokenizer": "standard", "filter": [{"type": "stemmer", "language": "klingon"}]}"#,
            r#"{"tokenizer": "standard", "filter": [{"type": "stemmer"}]}"#,
            r#"{"type": "standard", "stop_words": ["_french_"]}"#,
            r#"{"tokenizer": "jieba"}"#,
            r#"{"tokenizer": "standard", "filter": ["stemmer"]}"#,
            r#"{"tokenizer": "standard", "filter": "lowercase"}"#,
            r#"{"tokenizer": "standard", "x": 1}"#,
            r#"{"filter": ["lowercase"]}"#,
            r#"{"type": "standard", "stop_words": [1]}"#,
            r#"{"tokenizer": "standard", "filter": [{"type": "length", "max": 0}]}"#,
        ] {
            assert!(Analyzer::from_params(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_english_analyzer_stems_then_drops_english_stop_words() {
        let english = Analyzer::from_params(r#"{"type": "english"}"#).unwrap();
        assert_eq!(
            english.terms("The Runners were running to the connected networks, and it is fine"),
            ["runner", "were", "run", "connect", "network", "fine"]
        );
        // The same by a custom analyzer, filters in that order.
        let custom = Analyzer::from_params(
            r#"{"tokenizer": "standard", "filter": ["lowercase",
                {"type": "stemmer", "language": "english"}, {"type": "stop", "stop_words": ["_english_"]}]}"#,
        )
        .unwrap();
        assert_eq!(
            custom.terms("The Runners were running"),
            english.terms("The Runners were running")
        );
        // Before lowercasing, a capital is no stop word.
        let order = Analyzer::from_params(
            r#"{"tokenizer": "standard", "filter": [{"type": "stop", "stop_words": ["the"]}, "lowercase"]}"#,
        )
        .unwrap();
        assert_eq!(order.terms("The end the"), ["the", "end"]);
        let extra =
            Analyzer::from_params(r#"{"type": "english", "stop_words": ["fine"]}"#).unwrap();
        assert_eq!(extra.terms("it is fine"), Vec::<String>::new());
        let french = Analyzer::from_params(
            r#"{"tokenizer": "standard", "filter": ["lowercase", {"type": "stemmer", "language": "French"}]}"#,
        )
        .unwrap();
        assert_eq!(french.terms("continuellement"), ["continuel"]);
    }

    #[test]
    fn term_frequencies_count_each_term_by_its_id() {
        let tf = Analyzer::default().term_frequencies("b a B c b");
        let mut want = vec![
            (term_id("a"), 1.0),
            (term_id("b"), 3.0),
            (term_id("c"), 1.0),
        ];
        want.sort_by_key(|p| p.0);
        assert_eq!(tf, want);
        assert_ne!(term_id("a"), term_id("b"));
        // FNV-1a's published value for "a".
        assert_eq!(term_id("a"), 0xe40c_292c);
    }

    #[test]
    fn bm25_parts_follow_the_okapi_formula() {
        // 10 rows, 2 with the term.
        let want = (1.0f64 + 8.5 / 2.5).ln() as f32;
        assert!((idf(10, 2) - want).abs() < 1e-6);
        // A row of average length: tf (k1 + 1) / (tf + k1).
        assert!((tf_weight(2.0, 5.0, 5.0, 1.2, 0.75) - 2.0 * 2.2 / 3.2).abs() < 1e-6);
        // b = 0 ignores the length.
        assert_eq!(
            tf_weight(1.0, 50.0, 5.0, 1.5, 0.0),
            tf_weight(1.0, 1.0, 5.0, 1.5, 0.0)
        );
        assert!(check_bm25_params(1.2, 0.75).is_ok());
        assert!(check_bm25_params(3.5, 0.75).is_err());
        assert!(check_bm25_params(1.5, 1.5).is_err());
    }
}
