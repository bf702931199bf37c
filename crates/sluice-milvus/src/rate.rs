//! Milvus's per-collection rate limits, set as collection properties:
//! `collection.insertRate.max.mb`, `collection.upsertRate.max.mb`,
//! `collection.deleteRate.max.mb` (MB of request a second), `collection.queryRate.max.qps`
//! (queries a second) and `collection.searchRate.max.vps` (query vectors a second).
//!
//! Each front keeps a token bucket per collection and kind holding at most one second of the
//! rate: a call takes its cost (a call costing more than a second's worth waits for a full
//! bucket and leaves it in debt, so the average holds); a call finding too little is refused
//! with Milvus's retriable rate-limit code (8) — pymilvus backs off and retries it — and
//! changes nothing. A negative value is no limit; 0 refuses every such call. Fronts count
//! apart: with several, a collection's rate is each front's limit.

use std::collections::HashMap;
use std::time::Instant;

use parking_lot::Mutex;

use crate::status::Failure;

/// What a call does, and the property limiting it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Kind {
    /// Inserts, by MB.
    Insert,
    /// Upserts, by MB.
    Upsert,
    /// Deletes, by MB.
    Delete,
    /// Queries, by call.
    Query,
    /// Searches, by query vector.
    Search,
}

impl Kind {
    /// The Milvus property limiting it.
    pub(crate) fn property(self) -> &'static str {
        match self {
            Kind::Insert => "collection.insertRate.max.mb",
            Kind::Upsert => "collection.upsertRate.max.mb",
            Kind::Delete => "collection.deleteRate.max.mb",
            Kind::Query => "collection.queryRate.max.qps",
            Kind::Search => "collection.searchRate.max.vps",
        }
    }

    const ALL: [Kind; 5] = [
        Kind::Insert,
        Kind::Upsert,
        Kind::Delete,
        Kind::Query,
        Kind::Search,
    ];
}

/// Whether `key` is a rate-limit property Sluice acts on.
pub(crate) fn is_limit(key: &str) -> bool {
    Kind::ALL.iter().any(|k| k.property() == key)
}

/// A rate-limit property's value: a number (negative: no limit).
pub(crate) fn check_value(key: &str, value: &str) -> Result<f64, Failure> {
    match value.trim().parse::<f64>() {
        Ok(v) if v.is_finite() => Ok(v),
        _ => Err(Failure::invalid(format!(
            "collection property {key:?} is {value:?}: a number (negative: no limit)"
        ))),
    }
}

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// The buckets of one front.
#[derive(Debug, Default)]
pub(crate) struct Limits(Mutex<HashMap<(i64, Kind), Bucket>>);

impl Limits {
    /// Takes `cost` from collection `collection`'s bucket of `kind` limited to `rate` a second
    /// (`None`: no limit), or refuses the call.
    pub(crate) fn take(
        &self,
        collection: i64,
        kind: Kind,
        rate: Option<f64>,
        cost: f64,
    ) -> Result<(), Failure> {
        let Some(rate) = rate.filter(|r| *r >= 0.0) else {
            return Ok(());
        };
        let now = Instant::now();
        let mut buckets = self.0.lock();
        let bucket = buckets.entry((collection, kind)).or_insert(Bucket {
            tokens: rate,
            at: now,
        });
        bucket.tokens =
            (bucket.tokens + rate * now.duration_since(bucket.at).as_secs_f64()).min(rate);
        bucket.at = now;
        if rate > 0.0 && bucket.tokens >= cost.min(rate) {
            bucket.tokens -= cost;
            return Ok(());
        }
        Err(Failure::rate_limited(format!(
            "rate limit exceeded[{} = {rate}]",
            kind.property()
        )))
    }
}

/// The limit of `kind` a collection's Sluice properties set (kept under `kept_prefix`).
pub(crate) fn limit(props: &HashMap<String, String>, kept_prefix: &str, kind: Kind) -> Option<f64> {
    let v = props.get(&format!("{kept_prefix}{}", kind.property()))?;
    v.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_holds_one_second_and_refuses_beyond_it() {
        let limits = Limits::default();
        // 10 a second: ten calls of 1 pass at once, the eleventh does not.
        for _ in 0..10 {
            limits.take(1, Kind::Query, Some(10.0), 1.0).unwrap();
        }
        let e = limits.take(1, Kind::Query, Some(10.0), 1.0).unwrap_err();
        assert!(
            e.reason().contains("collection.queryRate.max.qps"),
            "{}",
            e.reason()
        );
        // Other collections and kinds have buckets of their own; no limit passes everything.
        limits.take(2, Kind::Query, Some(10.0), 1.0).unwrap();
        limits.take(1, Kind::Search, Some(10.0), 5.0).unwrap();
        limits.take(1, Kind::Query, None, 1e9).unwrap();
        limits.take(1, Kind::Query, Some(-1.0), 1e9).unwrap();
        // 0 refuses everything; a call bigger than a second's worth passes on a full bucket.
        assert!(limits.take(3, Kind::Insert, Some(0.0), 0.001).is_err());
        limits.take(4, Kind::Insert, Some(1.0), 5.0).unwrap();
        assert!(limits.take(4, Kind::Insert, Some(1.0), 0.1).is_err());
    }

    #[test]
    fn limits_are_read_from_kept_properties() {
        let props = HashMap::from([(
            "milvus.property.collection.insertRate.max.mb".to_owned(),
            " 2.5".to_owned(),
        )]);
        assert_eq!(limit(&props, "milvus.property.", Kind::Insert), Some(2.5));
        assert_eq!(limit(&props, "milvus.property.", Kind::Delete), None);
        assert!(is_limit("collection.searchRate.max.vps"));
        assert!(!is_limit("collection.searchRate.min.vps"));
        assert!(check_value("k", "fast").is_err() && check_value("k", "-1").is_ok());
    }
}
