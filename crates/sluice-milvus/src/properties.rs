//! Milvus collection properties (`AlterCollection`, `CreateCollection`'s `properties`,
//! `DescribeCollection`) and how Sluice keeps them among its own collection properties:
//!
//! * `collection.ttl.seconds` is Sluice's `ttl.seconds`: reads skip rows older than it.
//! * The rate limits `collection.{insert,upsert,delete}Rate.max.mb`,
//!   `collection.queryRate.max.qps` and `collection.searchRate.max.vps` are kept as the others
//!   below and act in the front (`crate::rate`); their value must be a number.
//! * `collection.diskProtection.diskQuota.mb` (a number) refuses the collection's inserts and
//!   upserts while its flushed segment files hold more MB.
//! * `collection.replica.number` (1-16) is the replicas of a load naming none (before the
//!   database's `database.replica.number`).
//! * Properties whose Milvus meaning Sluice does not have — the other rate limits, disk
//!   protection, resource groups,
//!   partition-key isolation, turning the dynamic field on or off — are refused, never silently
//!   kept.
//! * Any other key (`mmap.enabled`, `collection.autocompaction.enabled`, a user's own) is kept
//!   as `milvus.property.<key>` and described back; Sluice gives it no meaning (loaded rows stay
//!   in memory; segments are not compacted).

use std::collections::HashMap;

use sluice_types::ttl::PROP_TTL_SECONDS;

use crate::pb::common::KeyValuePair;
use crate::status::Failure;

/// Milvus's time-to-live key.
pub(crate) const MILVUS_TTL: &str = "collection.ttl.seconds";
/// The replicas a load naming none gives the collection (before its database's
/// `database.replica.number`).
pub(crate) const REPLICA_NUMBER: &str = "collection.replica.number";

/// A `collection.replica.number` value: 1 to the most replicas a load takes.
pub(crate) fn replica_number(value: &str) -> Result<u32, Failure> {
    use sluice_types::database::MAX_REPLICAS;
    match value.trim().parse::<u32>() {
        Ok(n) if (1..=MAX_REPLICAS).contains(&n) => Ok(n),
        _ => Err(Failure::invalid(format!(
            "collection property {REPLICA_NUMBER:?} is {value:?}: a whole number from 1 to \
             {MAX_REPLICAS}"
        ))),
    }
}

/// The `collection.replica.number` a collection's Sluice properties hold.
pub(crate) fn replicas_of(props: &HashMap<String, String>) -> Option<u32> {
    replica_number(props.get(&format!("{KEPT}{REPLICA_NUMBER}"))?).ok()
}

/// The most MB of flushed segment files the collection holds before its inserts and upserts
/// are refused (negative: no quota).
pub(crate) const DISK_QUOTA_MB: &str = "collection.diskProtection.diskQuota.mb";

/// The `collection.diskProtection.diskQuota.mb` a collection's Sluice properties hold.
pub(crate) fn disk_quota_mb(props: &HashMap<String, String>) -> Option<f64> {
    let q: f64 = props
        .get(&format!("{KEPT}{DISK_QUOTA_MB}"))?
        .trim()
        .parse()
        .ok()?;
    (q >= 0.0).then_some(q)
}

/// Where other Milvus properties are kept.
pub(crate) const KEPT: &str = "milvus.property.";

/// Key prefixes whose Milvus meaning Sluice does not have.
const REFUSED: [&str; 11] = [
    "collection.insertRate.",
    "collection.upsertRate.",
    "collection.deleteRate.",
    "collection.bulkLoadRate.",
    "collection.queryRate.",
    "collection.searchRate.",
    "collection.diskProtection.",
    "collection.resource_groups",
    "partitionkey.isolation",
    "dynamicfield.enabled",
    "database.",
];

/// The Sluice key of Milvus property `key`.
fn sluice_key(key: &str) -> Result<String, Failure> {
    if key.is_empty() {
        return Err(Failure::invalid("a collection property needs a key"));
    }
    if key == MILVUS_TTL {
        return Ok(PROP_TTL_SECONDS.to_owned());
    }
    if REFUSED.iter().any(|p| key.starts_with(p))
        && !crate::rate::is_limit(key)
        && key != DISK_QUOTA_MB
    {
        return Err(Failure::unsupported(format!(
            "the collection property {key:?}"
        )));
    }
    Ok(format!("{KEPT}{key}"))
}

/// Milvus properties to set, as Sluice properties; a TTL that is not a whole number of seconds
/// is an error (Milvus's own check).
pub(crate) fn to_sluice(kvs: &[KeyValuePair]) -> Result<HashMap<String, String>, Failure> {
    let mut out = HashMap::new();
    for kv in kvs {
        let key = sluice_key(&kv.key)?;
        if key == PROP_TTL_SECONDS {
            sluice_types::ttl::ttl_ms(&HashMap::from([(key.clone(), kv.value.clone())])).map_err(
                |_| {
                    Failure::invalid(format!(
                        "{MILVUS_TTL} {:?}: a whole number of seconds, 0 for none",
                        kv.value
                    ))
                },
            )?;
        }
        if crate::rate::is_limit(&kv.key) {
            crate::rate::check_value(&kv.key, &kv.value)?;
        }
        if kv.key == REPLICA_NUMBER {
            replica_number(&kv.value)?;
        }
        if kv.key == DISK_QUOTA_MB {
            crate::rate::check_value(&kv.key, &kv.value)?;
        }
        out.insert(key, kv.value.trim().to_owned());
    }
    Ok(out)
}

/// Milvus property keys to delete, as Sluice keys (a key Sluice refuses is not kept, so there
/// is nothing to delete: left out).
pub(crate) fn keys_to_sluice(keys: &[String]) -> Result<Vec<String>, Failure> {
    let mut out = Vec::new();
    for k in keys {
        match sluice_key(k) {
            Ok(key) => out.push(key),
            Err(_) if !k.is_empty() => {}
            Err(f) => return Err(f),
        }
    }
    Ok(out)
}

/// The Milvus properties kept among Sluice's `props`, by key.
pub(crate) fn to_milvus(props: &HashMap<String, String>) -> Vec<KeyValuePair> {
    let mut out: Vec<KeyValuePair> = props
        .iter()
        .filter_map(|(k, v)| {
            let key = if k == PROP_TTL_SECONDS {
                MILVUS_TTL
            } else {
                k.strip_prefix(KEPT)?
            };
            Some(KeyValuePair {
                key: key.to_owned(),
                value: v.clone(),
            })
        })
        .collect();
    out.sort_by(|a, b| a.key.cmp(&b.key));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::service::kv;

    #[test]
    fn milvus_properties_round_trip_and_unknown_meanings_are_refused() {
        let set = to_sluice(&[
            kv(MILVUS_TTL, "60"),
            kv("mmap.enabled", "True"),
            kv("owner", "team-a"),
        ])
        .unwrap();
        assert_eq!(set["ttl.seconds"], "60");
        assert_eq!(set["milvus.property.mmap.enabled"], "True");
        let mut back = to_milvus(&set);
        back.retain(|p| p.key != "owner");
        assert_eq!(back, vec![kv(MILVUS_TTL, "60"), kv("mmap.enabled", "True")]);
        // Sluice's own properties are not Milvus's.
        assert!(to_milvus(&HashMap::from([("index.metric".into(), "L2".into())])).is_empty());
        for bad in [
            kv(MILVUS_TTL, "-1"),
            kv(MILVUS_TTL, "soon"),
            kv("collection.insertRate.max.mb", "lots"),
            kv("collection.insertRate.min.mb", "1"),
            kv("collection.replica.number", "0"),
            kv("collection.resource_groups", "rg1"),
            kv("collection.diskProtection.diskQuota.mb", "full"),
            kv("collection.diskProtection.diskQuotaPerPartition.mb", "1"),
            kv("", "x"),
        ] {
            assert!(to_sluice(std::slice::from_ref(&bad)).is_err(), "{bad:?}");
        }
        assert_eq!(
            keys_to_sluice(&[
                MILVUS_TTL.into(),
                "collection.queryRate.max.qps".into(),
                "collection.queryRate.min.qps".into(),
                "owner".into()
            ])
            .unwrap(),
            vec![
                "ttl.seconds".to_owned(),
                "milvus.property.collection.queryRate.max.qps".to_owned(),
                "milvus.property.owner".to_owned()
            ]
        );
        let limited = to_sluice(&[kv("collection.searchRate.max.vps", " 40")]).unwrap();
        assert_eq!(
            limited["milvus.property.collection.searchRate.max.vps"],
            "40"
        );
    }
}
